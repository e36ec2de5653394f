//! The HTTP listeners' edge, attacked through real sockets: connections that
//! idle, send their head or body too slowly, or exceed the connection cap;
//! WebSocket sessions that go quiet; operations endpoints kept off the
//! devices' port; the admin token and the reload rate limit; and shutdown
//! with such connections open.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;

/// Generous bound for anything expected to happen after a timeout of a few
/// hundred milliseconds.
const SOON: Duration = Duration::from_secs(5);

/// Reads until the server closes the connection; what it sent before.
/// Panics if it stays open for `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(read.is_ok(), "still open after {limit:?}; got {got:?}");
    got
}

/// Whether the connection is still open after `wait` (nothing received).
async fn still_open(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(wait, stream.read(&mut buf))
        .await
        .is_err()
}

/// A complete `POST /v1/pings` of one ping, keeping the connection alive.
fn post_request(vehicle: &str, seq: u64) -> String {
    let body = json_ping(vehicle, seq);
    format!(
        "POST /v1/pings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one HTTP/1.1 answer with a Content-Length body; its status line
/// and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(SOON, async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    let status = head.lines().next().unwrap().to_owned();
                    return (status, body.to_owned());
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-answer: {text:?}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.http.idle_timeout = Duration::from_millis(300);
        c.ingest.http.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    // Never sends anything.
    let mut silent = TcpStream::connect(p.http).await.unwrap();
    assert_eq!(read_until_closed(&mut silent, SOON).await, "");

    // Kept alive after an answer, then idle.
    let mut used = TcpStream::connect(p.http).await.unwrap();
    used.write_all(post_request("van-i", 1).as_bytes())
        .await
        .unwrap();
    let (status, body) = read_response(&mut used).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(read_until_closed(&mut used, SOON).await, "");

    // The operations listener has the same timeouts.
    let mut ops = TcpStream::connect(p.ops).await.unwrap();
    assert_eq!(read_until_closed(&mut ops, SOON).await, "");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_too_slowly_is_cut_off() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.http.idle_timeout = Duration::from_secs(30);
        c.ingest.http.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    // Slowloris: a header byte every 100 ms keeps the connection busy, but
    // the head as a whole must arrive within the header timeout.
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        writer
            .write_all(b"POST /v1/pings HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"X").await.is_err() {
                return true;
            }
        }
        false
    });
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(SOON, reader.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "not closed: {read:?}");
    trickle.abort();

    // A head that stops half-way (the partial-header connection).
    let mut partial = TcpStream::connect(p.http).await.unwrap();
    partial
        .write_all(b"POST /v1/pings HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut partial, SOON).await, "");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_is_answered_408_and_closed() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.http.body_timeout = Duration::from_millis(1500);
        c.ingest.http.idle_timeout = Duration::from_secs(30);
        c.ingest.http.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let body = json_ping("van-s", 1);
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/pings HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    // A byte every 500 ms: the body would take a minute.
    let trickle = tokio::spawn(async move {
        for byte in body.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(SOON, async {
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&got);
    assert!(closed.is_ok(), "not closed; got {answer:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    p.stop().await;
    assert!(p.telemetry().is_empty(), "the slow ping was not taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_until_one_closes() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.http.max_connections = 2;
        c.ingest.http.idle_timeout = Duration::from_secs(30);
        c.ingest.http.ws_idle_timeout = Duration::from_secs(30);
    })
    .await;
    // A WebSocket session and a plain connection take both places.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", p.http))
        .await
        .unwrap();
    let mut plain = TcpStream::connect(p.http).await.unwrap();
    plain
        .write_all(post_request("van-k", 1).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut plain).await.0, "HTTP/1.1 200 OK");

    // One more is answered 503 and closed, at once and again.
    for _ in 0..2 {
        let mut extra = TcpStream::connect(p.http).await.unwrap();
        let answer = read_until_closed(&mut extra, SOON).await;
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer:?}"
        );
        assert!(answer.contains("too many connections"), "{answer}");
    }
    // Those in place are still served.
    plain
        .write_all(post_request("van-k", 2).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut plain).await.0, "HTTP/1.1 200 OK");

    // The WebSocket session ends: its place frees.
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    let served = wait_for_async(SOON, || async {
        let mut next = TcpStream::connect(p.http).await.unwrap();
        next.write_all(post_request("van-k", 3).as_bytes())
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = next.read(&mut buf).await.ok()?;
        String::from_utf8_lossy(&buf[..n])
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
    assert!(served.is_some(), "no place freed after the session ended");
    assert!(
        still_open(&mut plain, Duration::from_millis(200)).await,
        "the plain connection stays"
    );
    p.stop().await;
    assert_eq!(
        keys(&p.telemetry()),
        [1, 2, 3].map(|s| ("van-k".to_string(), s))
    );
}

/// Polls `f` until it returns `Some`, or `None` after `timeout`.
async fn wait_for_async<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_session_is_closed() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.http.ws_idle_timeout = Duration::from_millis(1000);
    })
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", p.http))
        .await
        .unwrap();
    // Frames keep it open: pings every 200 ms for twice the timeout.
    for _ in 0..10 {
        ws.send(Ws::Ping(vec![1].into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ws.send(Ws::text(json_ping("van-w", 1))).await.unwrap();
    // Then silence: the server closes with 1001.
    let close = tokio::time::timeout(SOON, async {
        loop {
            match ws.next().await {
                Some(Ok(Ws::Close(frame))) => return frame,
                Some(Ok(Ws::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["ack"], 1, "{v}");
                }
                Some(Ok(_)) => {}
                other => panic!("closed without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("not closed");
    let frame = close.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason, "idle timeout");
    p.stop().await;
    assert_eq!(keys(&p.telemetry()), [("van-w".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_are_only_on_the_ops_listener() {
    let mut p = TestPipeline::start(|_| {}).await;
    assert!(p.ops.ip().is_loopback());
    assert_ne!(p.ops.port(), p.http.port());
    let http = reqwest::Client::new();
    let on = |addr: SocketAddr, path: &str| format!("http://{addr}{path}");
    for path in ["/metrics", "/healthz", "/readyz"] {
        let device = http.get(on(p.http, path)).send().await.unwrap();
        assert_eq!(device.status(), 404, "{path} on the device port");
        let ops = http.get(on(p.ops, path)).send().await.unwrap();
        assert_eq!(ops.status(), 200, "{path} on the ops port");
    }
    let device = http
        .post(on(p.http, "/admin/geofences/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(device.status(), 404);
    assert_eq!(
        reloads(&p),
        0,
        "nothing was reloaded through the device port"
    );
    let ops = http
        .post(on(p.ops, "/admin/geofences/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status(), 200);
    assert_eq!(reloads(&p), 1);
    // And ingest is not on the ops port.
    let ops = http
        .post(on(p.ops, "/v1/pings"))
        .body(json_ping("van-o", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status(), 404);
    p.stop().await;
}

fn reloads(p: &TestPipeline) -> u64 {
    p.pipeline.as_ref().unwrap().fence_service().reloads()
}

async fn reload(p: &TestPipeline, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(p.ops_url("/admin/geofences/reload"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_require_the_admin_token_when_set() {
    let mut p = TestPipeline::start(|c| c.ops.admin_token = Some("op-s3cret".into())).await;
    for token in [None, Some("wrong"), Some("op-s3cre"), Some("op-s3cretX")] {
        let r = reload(&p, token).await;
        assert_eq!(r.status(), 401, "{token:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("ops.admin_token"),
            "{body}"
        );
    }
    // A basic-auth header with the token is not a bearer token.
    let r = reqwest::Client::new()
        .post(p.ops_url("/admin/geofences/reload"))
        .header("authorization", "Basic op-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(reloads(&p), 0);

    let r = reload(&p, Some("op-s3cret")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["fences"], 0);
    assert_eq!(reloads(&p), 1);
    // Health and metrics need no token.
    assert_eq!(
        reqwest::get(p.ops_url("/readyz")).await.unwrap().status(),
        200
    );
    assert!(
        p.metrics()
            .await
            .contains("fleetpipe_geofence_reloads_total")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_rate_limited_with_retry_after() {
    let mut p =
        TestPipeline::start(|c| c.ops.reload_min_interval = Duration::from_secs(3600)).await;
    assert_eq!(reload(&p, None).await.status(), 200);
    for _ in 0..3 {
        let r = reload(&p, None).await;
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&retry), "{retry}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("ops.reload_min_interval"),
            "{body}"
        );
    }
    assert_eq!(reloads(&p), 1, "refused reloads did not run");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_unfinished_connections_at_once_and_drains() {
    // Timeouts far beyond the test: only shutdown can close these.
    let mut p = TestPipeline::start(|c| {
        c.ingest.http.idle_timeout = Duration::from_secs(120);
        c.ingest.http.header_read_timeout = Duration::from_secs(120);
        c.ingest.http.body_timeout = Duration::from_secs(120);
        c.pipeline.shutdown_timeout = Duration::from_secs(60);
    })
    .await;
    let mut idle = TcpStream::connect(p.http).await.unwrap();
    let mut partial = TcpStream::connect(p.http).await.unwrap();
    partial
        .write_all(b"POST /v1/pings HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut slow_body = TcpStream::connect(p.http).await.unwrap();
    slow_body
        .write_all(b"POST /v1/pings HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n[")
        .await
        .unwrap();
    let mut kept_alive = TcpStream::connect(p.http).await.unwrap();
    kept_alive
        .write_all(post_request("van-d", 1).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept_alive).await.0, "HTTP/1.1 200 OK");
    let mut ops_idle = TcpStream::connect(p.ops).await.unwrap();
    for stream in [&mut idle, &mut partial, &mut slow_body, &mut ops_idle] {
        assert!(still_open(stream, Duration::from_millis(100)).await);
    }

    // Far less than any timeout above.
    tokio::time::timeout(Duration::from_secs(15), p.stop())
        .await
        .expect("shutdown waited for unfinished connections");
    for stream in [
        &mut idle,
        &mut partial,
        &mut slow_body,
        &mut kept_alive,
        &mut ops_idle,
    ] {
        assert_eq!(read_until_closed(stream, SOON).await, "");
    }
    assert_eq!(keys(&p.telemetry()), [("van-d".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_hand_at_shutdown_is_answered() {
    let mut p = TestPipeline::start(|c| {
        c.sink.kafka = Some(fleetpipe_sink::KafkaConfig {
            librdkafka: [("reconnect.backoff.max.ms".to_owned(), "250".to_owned())].into(),
            ..fleetpipe_sink::KafkaConfig::new("embedded")
        });
    })
    .await;
    let kafka = p
        .pipeline
        .as_ref()
        .unwrap()
        .embedded_kafka()
        .unwrap()
        .clone();
    // Kafka is down: the request is read and its ping written to the file
    // sink, but its answer waits for Kafka.
    kafka.set_brokers_up(false).await.unwrap();
    let url = p.url("/v1/pings");
    let request = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .body(json_ping("van-h", 7))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    p.wait_telemetry(1, SOON).await;
    assert!(!request.is_finished());

    // Shutdown while it waits, for longer than the drain's idle grace.
    p.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!request.is_finished());
    kafka.set_brokers_up(true).await.unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!((status, body), (200, serde_json::json!({ "ack": 7 })));
    p.stop().await;
}
