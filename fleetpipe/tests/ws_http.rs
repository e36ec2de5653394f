//! The WebSocket and HTTP gateways and the operational endpoints, over real sockets.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use fleetpipe_ingest::auth::AuthMode;
use futures::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message as Ws, client::IntoClientRequest as _};

const T: Duration = Duration::from_secs(15);

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(
    p: &TestPipeline,
    bearer: Option<&str>,
    query: &str,
) -> Result<WsStream, tungstenite::Error> {
    let mut req = format!("ws://{}/v1/ws{query}", p.http)
        .into_client_request()
        .unwrap();
    if let Some(token) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

async fn send_and_answer(ws: &mut WsStream, msg: Ws) -> Value {
    ws.send(msg).await.unwrap();
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("no answer")
            .expect("closed")
            .unwrap()
        {
            Ws::Text(t) => return serde_json::from_str(&t).unwrap(),
            Ws::Ping(_) | Ws::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn token_config(c: &mut fleetpipe::Config, dir: &std::path::Path) {
    let path = dir.join("credentials.toml");
    std::fs::write(
        &path,
        "[[device]]\nvehicle_id = \"ph-1\"\ntoken = \"tok-1\"\n",
    )
    .unwrap();
    c.ingest.auth.mode = AuthMode::Token;
    c.ingest.auth.credentials_file = Some(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_acks_every_frame_and_survives_bad_ones() {
    let creds = tempfile::tempdir().unwrap();
    let mut p = TestPipeline::start(|c| token_config(c, creds.path())).await;
    let mut ws = ws_connect(&p, Some("tok-1"), "").await.unwrap();

    let a = send_and_answer(&mut ws, Ws::text(json_ping("ph-1", 7))).await;
    assert_eq!(a, json!({ "ack": 7 }));
    let batch = format!("[{},{}]", json_ping("ph-1", 8), json_ping("ph-1", 9));
    assert_eq!(
        send_and_answer(&mut ws, Ws::text(batch)).await,
        json!({ "ack": 9 })
    );
    let pb = fleetpipe_model::proto::PingBatch {
        pings: vec![proto_ping("ph-1", 10), proto_ping("ph-1", 11)],
    };
    assert_eq!(
        send_and_answer(&mut ws, Ws::binary(pb.encode_to_vec())).await,
        json!({ "ack": 11 })
    );
    // Without seq, the ack counts the pings.
    let no_seq = format!(
        r#"{{"vehicle_id":"ph-1","ts":{},"lat":1.5,"lon":2.5}}"#,
        now_ms()
    );
    assert_eq!(
        send_and_answer(&mut ws, Ws::text(no_seq)).await,
        json!({ "ack": 1 })
    );

    // A bad frame gets an error answer and the connection stays open.
    let bad = send_and_answer(&mut ws, Ws::text("{oops")).await;
    assert_eq!(bad["error"]["code"], "decode_failed");
    // A partly bad batch: the good ping is acked, the bad one listed.
    let mixed = format!(
        r#"[{},{{"vehicle_id":"ph-1","seq":13,"ts":{},"lat":100,"lon":2}}]"#,
        json_ping("ph-1", 12),
        now_ms()
    );
    let a = send_and_answer(&mut ws, Ws::text(mixed)).await;
    assert_eq!(a["ack"], 12);
    assert_eq!(a["rejected"][0]["index"], 1);
    assert_eq!(a["rejected"][0]["code"], "coord_invalid");
    // Another vehicle's ping from this device is refused as unauthorized.
    let other = send_and_answer(&mut ws, Ws::text(json_ping("ph-2", 1))).await;
    assert_eq!(other["error"]["code"], "unauthorized");
    assert_eq!(
        send_and_answer(&mut ws, Ws::text(json_ping("ph-1", 14))).await,
        json!({ "ack": 14 })
    );

    // The acks above were sent only once the data was durable: it is on disk now.
    let lines = p.telemetry();
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["source"] == "websocket" && l["client"] == "ph-1")
    );
    assert_eq!(
        reasons(&p.dead_letters()),
        vec!["coord_invalid", "decode_failed", "unauthorized"]
    );

    // Shutdown closes the session with "going away".
    p.shutdown.cancel();
    let close = tokio::time::timeout(T, ws.next()).await.unwrap();
    match close {
        Some(Ok(Ws::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refuses_bad_credentials_and_accepts_a_query_token() {
    let creds = tempfile::tempdir().unwrap();
    let mut p = TestPipeline::start(|c| token_config(c, creds.path())).await;
    for (bearer, query) in [(None, ""), (Some("wrong"), ""), (None, "?token=wrong")] {
        match ws_connect(&p, bearer, query).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    let mut ws = ws_connect(&p, None, "?token=tok-1").await.unwrap();
    assert_eq!(
        send_and_answer(&mut ws, Ws::text(json_ping("ph-1", 1))).await,
        json!({ "ack": 1 })
    );
    let metrics = common::metric_values();
    assert!(
        metrics
            .counter(
                "fleetpipe_rejected_total",
                &[("reason", "unauthorized"), ("gateway", "websocket")]
            )
            .is_some_and(|n| n != 0),
        "{metrics}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_devices_over_http() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Jwt;
        c.ingest.auth.jwt_secret = Some("test-secret".into());
    })
    .await;
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: "truck-9",
            exp: now_ms() / 1000 + 600,
        },
        &jsonwebtoken::EncodingKey::from_secret(b"test-secret"),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let r = http
        .post(p.url("/v1/pings"))
        .bearer_auth(&token)
        .body(json_ping("truck-9", 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "ack": 3 }));
    let r = http
        .post(p.url("/v1/pings"))
        .bearer_auth("not-a-jwt")
        .body(json_ping("truck-9", 4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(p.url("/v1/pings"))
        .bearer_auth(&token)
        .body(json_ping("truck-1", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a device may publish only for its own vehicle"
    );
    p.stop().await;
    assert_eq!(keys(&p.telemetry()), vec![("truck-9".to_string(), 3)]);
}

/// A P-256 key pair made now: the signing half and the public JWK.
fn ec_key(kid: &str) -> (jsonwebtoken::EncodingKey, jsonwebtoken::jwk::Jwk) {
    use p256::pkcs8::EncodePrivateKey as _;
    let private = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let signing =
        jsonwebtoken::EncodingKey::from_ec_der(private.to_pkcs8_der().unwrap().as_bytes());
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, jsonwebtoken::Algorithm::ES256)
            .unwrap();
    jwk.common.key_id = Some(kid.into());
    (signing, jwk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_devices_over_http_and_key_rotation() {
    let key_dir = tempfile::tempdir().unwrap();
    let jwks = key_dir.path().join("jwks.json");
    let (sign_a, jwk_a) = ec_key("key-a");
    let (sign_b, jwk_b) = ec_key("key-b");
    std::fs::write(&jwks, json!({ "keys": [jwk_a] }).to_string()).unwrap();
    let mut p = TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Jwt;
        c.ingest.auth.jwks_file = Some(jwks.clone());
        c.ingest.auth.jwks_reload_interval = Duration::from_millis(50);
        c.ingest.auth.jwt_audience = Some("fleetpipe".into());
    })
    .await;
    let token = |kid: &str, key: &jsonwebtoken::EncodingKey, sub: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims = json!({"sub": sub, "exp": now_ms() / 1000 + 600, "aud": "fleetpipe"});
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let (token_a, token_b) = (
        token("key-a", &sign_a, "van-a"),
        token("key-b", &sign_b, "van-b"),
    );
    let http = reqwest::Client::new();
    let post = |token: String, vehicle: &'static str, seq: u64| {
        let req = http
            .post(p.url("/v1/pings"))
            .bearer_auth(token)
            .body(json_ping(vehicle, seq));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(token_a.clone(), "van-a", 1).await, 200);
    assert_eq!(post(token_b.clone(), "van-b", 1).await, 401);
    // The identity provider rotates to key B: the running pipeline picks it up.
    std::fs::write(&jwks, json!({ "keys": [jwk_b] }).to_string()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seq = 2;
    loop {
        let status = post(token_b.clone(), "van-b", seq).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(std::time::Instant::now() < deadline, "key B never accepted");
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post(token_a.clone(), "van-a", 2).await, 401);
    p.stop().await;
    assert_eq!(
        keys(&p.telemetry()),
        vec![("van-a".to_string(), 1), ("van-b".to_string(), seq)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_batches_status_codes_and_ops_endpoints() {
    let mut p = TestPipeline::start(|c| c.ingest.limits.max_payload_bytes = 2048).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(p.ops_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(p.ops_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A phone's offline backlog, one request.
    let backlog: Vec<String> = (1..=10).map(|s| json_ping("ph-7", s)).collect();
    let r = http
        .post(p.url("/v1/pings"))
        .body(format!("[{}]", backlog.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "ack": 10 }));
    // Protobuf by content type.
    let r = http
        .post(p.url("/v1/pings"))
        .header("content-type", "application/x-protobuf")
        .body(proto_ping("ph-7", 11).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "ack": 11 }));
    // Whole-message refusals map to status codes.
    let r = http
        .post(p.url("/v1/pings"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "schema_invalid"
    );
    let r = http
        .post(p.url("/v1/pings"))
        .body(vec![b' '; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "oversize"
    );
    // Anonymous batches must be of one vehicle.
    let r = http
        .post(p.url("/v1/pings"))
        .body(format!("[{},{}]", json_ping("a", 1), json_ping("b", 1)))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ack"], 1);
    assert_eq!(body["rejected"][0]["code"], "vehicle_mismatch");

    let metrics = p.metrics().await;
    assert!(
        metrics.contains("fleetpipe_ingest_pings_total{gateway=\"http\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fleetpipe_sink_records_total"),
        "{metrics}"
    );

    p.shutdown.cancel();
    // Not ready any more while draining; the listener closes after.
    let ready = http.get(p.ops_url("/readyz")).send().await;
    assert!(ready.map(|r| r.status() != 200).unwrap_or(true));
    p.stop().await;
    assert_eq!(p.telemetry().len(), 12);
    assert_eq!(
        reasons(&p.dead_letters()),
        vec!["oversize", "schema_invalid", "vehicle_mismatch"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_ends_when_its_jwt_expires() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Jwt;
        c.ingest.auth.jwt_secret = Some("test-secret".into());
        c.ingest.auth.jwt_leeway_s = 0;
    })
    .await;
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    let exp = now_ms() / 1000 + 2;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: "truck-9",
            exp,
        },
        &jsonwebtoken::EncodingKey::from_secret(b"test-secret"),
    )
    .unwrap();
    let mut ws = ws_connect(&p, Some(&token), "").await.unwrap();
    let answer = send_and_answer(&mut ws, Ws::text(json_ping("truck-9", 1))).await;
    assert_eq!(answer, json!({ "ack": 1 }));
    // At exp the server closes the session with 1008, unprompted.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Ws::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the session outlived its token");
    let frame = closed.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 1008);
    assert!(now_ms() / 1000 >= exp, "closed before exp");
    // Nothing sent after that is taken.
    let _ = ws.send(Ws::text(json_ping("truck-9", 2))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.stop().await;
    assert_eq!(keys(&p.telemetry()), vec![("truck-9".to_string(), 1)]);
}
