//! HTTPS and WSS on the devices' HTTP listener (`[ingest.http.tls]`), with
//! certificates generated here (rcgen) for every run: both on the one TLS
//! port with token authentication, plaintext refused there, mutual TLS
//! binding a device to the vehicle its certificate names (the same isolation
//! rule as for tokens), clients refused at the handshake (no, foreign or
//! expired certificate), the handshake bounded by `header_read_timeout` and
//! counted under `max_connections`, certificates reloaded on change, and
//! start errors that name the key.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::*;
use common::*;
use fleetpipe::ops::MetricValues;
use fleetpipe_ingest::auth::AuthMode;
use fleetpipe_ingest::tls::TlsConfig;
use futures::{SinkExt as _, StreamExt as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message as Ws, client::IntoClientRequest as _};

const T: Duration = Duration::from_secs(10);
/// How long a refused connection has to be closed by.
const CLOSE: Duration = Duration::from_secs(3);

/// Writes the listener's TLS files into `dir`; `client_ca` turns on mutual TLS.
fn write_tls_files(dir: &Path, server: &Identity, client_ca: Option<&Ca>) -> TlsConfig {
    let files = write_server_files(dir, server, client_ca);
    TlsConfig::new(files.cert, files.key, files.client_ca)
}

/// A pipeline in token mode (van-1: tok-1, van-2: tok-2) with this TLS.
async fn tls_pipeline(dir: &Path, tls: TlsConfig) -> TestPipeline {
    let creds = credentials(dir);
    TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Token;
        c.ingest.auth.credentials_file = Some(creds);
        c.ingest.http.tls = Some(tls);
    })
    .await
}

/// An HTTPS client trusting `ca`, presenting `identity` if given, offering
/// ALPN `http/1.1` as browsers and HTTP libraries do.
fn https(ca: &Ca, identity: Option<&Identity>) -> TlsConnector {
    let mut config = client_config(ca, identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Opens TLS to `addr` (server name `localhost`); `Err` when the handshake
/// fails on the client's side.
async fn open(addr: SocketAddr, connector: &TlsConnector) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(T, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Sends `POST /v1/pings` with `body`, keeping the connection alive.
async fn send_post<S: AsyncWrite + Unpin>(s: &mut S, body: &str, token: Option<&str>) {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /v1/pings HTTP/1.1\r\nhost: localhost\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
}

/// What came back for a request.
#[derive(Debug)]
enum Reply {
    /// An HTTP answer: status code and JSON body.
    Http(u16, Value),
    /// The connection was closed (or failed: a TLS alert) before a whole
    /// answer; the bytes that came first.
    Closed(Vec<u8>),
}

/// Reads one HTTP/1.1 answer with a Content-Length body.
async fn read_reply<S: AsyncRead + Unpin>(s: &mut S) -> Reply {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(T, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                let body = &got[end + 4..];
                if body.len() >= length {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    let json = serde_json::from_slice(&body[..length]).unwrap_or(Value::Null);
                    return Reply::Http(status, json);
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Reply::Closed(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("neither an answer nor closed")
}

/// `POST /v1/pings` of one ping over `s`; the answer.
async fn post<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    vehicle: &str,
    seq: u64,
    token: Option<&str>,
) -> Reply {
    send_post(s, &json_ping(vehicle, seq), token).await;
    read_reply(s).await
}

/// Posts one ping over a new connection and expects `200 {"ack": seq}`.
async fn post_acked(addr: SocketAddr, connector: &TlsConnector, vehicle: &str, seq: u64) {
    let mut s = open(addr, connector).await.unwrap();
    match post(&mut s, vehicle, seq, None).await {
        Reply::Http(200, body) => assert_eq!(body, json!({ "ack": seq })),
        other => panic!("{vehicle} seq {seq}: {other:?}"),
    }
}

/// Whether the listener refuses a client with `connector` in the TLS
/// handshake: it fails on the client's side, or (TLS 1.3, where the server
/// checks the client's certificate after the client is done) a request
/// sent over it gets no answer, only the connection closed.
async fn refused_at_handshake(addr: SocketAddr, connector: &TlsConnector) -> Result<(), String> {
    let Ok(mut s) = open(addr, connector).await else {
        return Ok(());
    };
    let _ = s
        .write_all(b"GET /v1/ws HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let _ = s.flush().await;
    match tokio::time::timeout(CLOSE, read_reply(&mut s)).await {
        Ok(Reply::Closed(bytes)) if bytes.is_empty() => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A WebSocket session over TLS (`wss://`), with a bearer token if given.
async fn wss(
    addr: SocketAddr,
    connector: &TlsConnector,
    token: Option<&str>,
) -> Result<Wss, tungstenite::Error> {
    let tls = open(addr, connector).await?;
    let mut req = "wss://localhost/v1/ws".into_client_request().unwrap();
    if let Some(token) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, _)| ws)
}

async fn send_and_answer(ws: &mut Wss, text: String) -> Value {
    ws.send(Ws::text(text)).await.unwrap();
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

/// The counter `name` with exactly `labels`, read in process (0 until
/// recorded).
fn metric(values: &MetricValues, name: &str, labels: &[(&str, &str)]) -> f64 {
    values.counter(name, labels).map_or(0.0, |n| n as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_share_the_tls_port_and_plaintext_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let tls = write_tls_files(dir.path(), &ca.server(), None);
    let mut p = tls_pipeline(dir.path(), tls).await;
    let client = https(&ca, None);

    // HTTPS: acknowledged as over plain HTTP, on a kept-alive connection.
    let mut s = open(p.http, &client).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    for seq in [1, 2] {
        match post(&mut s, "van-1", seq, Some("tok-1")).await {
            Reply::Http(200, body) => assert_eq!(body, json!({ "ack": seq })),
            other => panic!("seq {seq}: {other:?}"),
        }
    }
    // The token rules hold over TLS: none, or van-1's token for van-2's ping.
    match post(&mut s, "van-1", 50, None).await {
        Reply::Http(401, body) => assert_eq!(body["error"]["code"], "unauthorized"),
        other => panic!("no token: {other:?}"),
    }
    match post(&mut s, "van-2", 51, Some("tok-1")).await {
        Reply::Http(403, body) => assert_eq!(body["error"]["code"], "unauthorized"),
        other => panic!("van-2's ping with van-1's token: {other:?}"),
    }

    // WSS on the same port: every frame acknowledged.
    let mut ws = wss(p.http, &client, Some("tok-2")).await.unwrap();
    for seq in [3, 4] {
        let answer = send_and_answer(&mut ws, json_ping("van-2", seq)).await;
        assert_eq!(answer, json!({ "ack": seq }));
    }
    match wss(p.http, &client, None).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("WSS without a token: {:?}", other.map(|_| ())),
    }

    // Plaintext HTTP to the TLS port: no HTTP answer, the connection closed,
    // the ping not taken.
    let mut plain = TcpStream::connect(p.http).await.unwrap();
    match post(&mut plain, "van-1", 99, Some("tok-1")).await {
        Reply::Closed(bytes) => assert!(!bytes.starts_with(b"HTTP"), "{bytes:?}"),
        other => panic!("plaintext answered: {other:?}"),
    }
    // Nor does a plaintext WebSocket get a session.
    let ws_plain = format!("ws://{}/v1/ws", p.http)
        .into_client_request()
        .unwrap();
    assert!(tokio_tungstenite::connect_async(ws_plain).await.is_err());
    // A client that does not trust the server's CA does not connect, and
    // one that speaks only h2 finds no protocol in common.
    assert!(
        open(p.http, &https(&Ca::new("other CA"), None))
            .await
            .is_err()
    );
    let mut h2_only = client_config(&ca, None);
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    assert!(
        open(p.http, &TlsConnector::from(Arc::new(h2_only)))
            .await
            .is_err()
    );
    // A client without ALPN is served (HTTP/1.1).
    let mut no_alpn = open(p.http, &connector(&ca, None)).await.unwrap();
    assert!(matches!(
        post(&mut no_alpn, "van-1", 5, Some("tok-1")).await,
        Reply::Http(200, _)
    ));

    drop((s, ws, no_alpn));
    p.stop().await;
    let stored = p.telemetry();
    assert_eq!(
        keys(&stored),
        [
            ("van-1".to_owned(), 1),
            ("van-1".to_owned(), 2),
            ("van-1".to_owned(), 5),
            ("van-2".to_owned(), 3),
            ("van-2".to_owned(), 4)
        ]
    );
    let sources: Vec<&str> = stored
        .iter()
        .map(|l| l["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources.iter().filter(|s| **s == "websocket").count(),
        2,
        "{sources:?}"
    );
    assert_eq!(reasons(&p.dead_letters()), ["unauthorized"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_vehicle_over_https_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let devices = Ca::new("device CA");
    let tls = write_tls_files(dir.path(), &ca.server(), Some(&devices));
    // Token mode: the certificate stands in for the token.
    let mut p = tls_pipeline(dir.path(), tls).await;
    let van1 = https(&ca, Some(&devices.device("van-1", &[])));

    let mut s = open(p.http, &van1).await.unwrap();
    // No token needed; a token, even a wrong one, is not looked at.
    for (seq, token) in [(1, None), (2, Some("wrong"))] {
        match post(&mut s, "van-1", seq, token).await {
            Reply::Http(200, body) => assert_eq!(body, json!({ "ack": seq })),
            other => panic!("seq {seq} {token:?}: {other:?}"),
        }
    }
    // van-2's pings are refused as a van-1 token's would be, even with
    // van-2's own token: the certificate decides who the device is.
    for (seq, token) in [(3, None), (4, Some("tok-2"))] {
        match post(&mut s, "van-2", seq, token).await {
            Reply::Http(403, body) => {
                assert_eq!(body["error"]["code"], "unauthorized");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains("van-1"), "{message}");
            }
            other => panic!("van-2's ping over van-1's certificate ({token:?}): {other:?}"),
        }
    }

    // WSS: the same.
    let mut ws = wss(p.http, &van1, None).await.unwrap();
    assert_eq!(
        send_and_answer(&mut ws, json_ping("van-1", 5)).await,
        json!({ "ack": 5 })
    );
    let other = send_and_answer(&mut ws, json_ping("van-2", 6)).await;
    assert_eq!(other["error"]["code"], "unauthorized");
    assert_eq!(
        send_and_answer(&mut ws, json_ping("van-1", 7)).await,
        json!({ "ack": 7 })
    );

    // The first DNS name, when there is one, is the vehicle, not the CN.
    let san = https(&ca, Some(&devices.device("van-1", &["van-2"])));
    let mut s2 = open(p.http, &san).await.unwrap();
    assert!(matches!(
        post(&mut s2, "van-1", 8, None).await,
        Reply::Http(403, _)
    ));
    assert!(matches!(
        post(&mut s2, "van-2", 9, None).await,
        Reply::Http(200, _)
    ));
    // A certificate naming no valid vehicle id: 401, as a bad token.
    let invalid = https(&ca, Some(&devices.device("van 1", &[])));
    let mut s3 = open(p.http, &invalid).await.unwrap();
    match post(&mut s3, "van-1", 10, Some("tok-1")).await {
        Reply::Http(401, body) => {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("client certificate"), "{message}");
        }
        other => panic!("invalid vehicle name: {other:?}"),
    }
    match wss(p.http, &invalid, Some("tok-1")).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("WSS, invalid vehicle name: {:?}", other.map(|_| ())),
    }

    drop((s, ws, s2, s3));
    p.stop().await;
    let stored = p.telemetry();
    assert_eq!(
        keys(&stored),
        [
            ("van-1".to_owned(), 1),
            ("van-1".to_owned(), 2),
            ("van-1".to_owned(), 5),
            ("van-1".to_owned(), 7),
            ("van-2".to_owned(), 9)
        ]
    );
    // Each ping is recorded as sent by the certificate's vehicle.
    assert!(
        stored.iter().all(|l| l["client"] == l["vehicle_id"]),
        "{stored:?}"
    );
    assert_eq!(
        reasons(&p.dead_letters()),
        [
            "unauthorized",
            "unauthorized",
            "unauthorized",
            "unauthorized"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_valid_device_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let devices = Ca::new("device CA");
    let tls = write_tls_files(dir.path(), &ca.server(), Some(&devices));
    // ingest.auth.mode "none": only the certificate stands between anyone
    // and the pipeline.
    let mut p = TestPipeline::start(|c| c.ingest.http.tls = Some(tls)).await;

    let rogue = Ca::new("rogue CA");
    let mut expired = device_params("van-1", &[]);
    expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let mut not_yet = device_params("van-1", &[]);
    not_yet.not_before = rcgen::date_time_ymd(2090, 1, 1);
    not_yet.not_after = rcgen::date_time_ymd(2091, 1, 1);
    let clients = [
        ("no certificate", https(&ca, None)),
        ("rogue CA", https(&ca, Some(&rogue.device("van-1", &[])))),
        ("server CA", https(&ca, Some(&ca.device("van-1", &[])))),
        ("expired", https(&ca, Some(&devices.sign(expired)))),
        ("not yet valid", https(&ca, Some(&devices.sign(not_yet)))),
    ];
    for (what, client) in &clients {
        if let Err(e) = refused_at_handshake(p.http, client).await {
            panic!("{what}: not refused: {e}");
        }
        // Nor does a POST or a WebSocket over it get anywhere.
        if let Ok(mut s) = open(p.http, client).await {
            let reply = post(&mut s, "van-1", 66, None).await;
            assert!(
                matches!(&reply, Reply::Closed(b) if b.is_empty()),
                "{what}: {reply:?}"
            );
        }
        assert!(wss(p.http, client, None).await.is_err(), "{what}: WSS");
    }
    // The device CA's current certificate does get in.
    post_acked(
        p.http,
        &https(&ca, Some(&devices.device("van-1", &[]))),
        "van-1",
        1,
    )
    .await;
    let metrics = common::metric_values();
    let failures = metric(
        &metrics,
        "fleetpipe_http_tls_handshake_failures_total",
        &[("reason", "error")],
    );
    assert!(failures >= 15.0, "{failures}: {metrics}");

    p.stop().await;
    assert_eq!(keys(&p.telemetry()), [("van-1".to_owned(), 1)]);
    assert!(p.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_is_bounded_by_header_read_timeout_and_holds_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let tls = write_tls_files(dir.path(), &ca.server(), None);
    let mut p = TestPipeline::start(|c| {
        c.ingest.http.tls = Some(tls);
        c.ingest.http.header_read_timeout = Duration::from_secs(2);
        // Far longer: a plaintext connection that sends nothing would be
        // open this long.
        c.ingest.http.idle_timeout = Duration::from_secs(60);
        c.ingest.http.max_connections = 2;
    })
    .await;
    let client = https(&ca, None);
    let start = Instant::now();
    // One sends nothing, one the first bytes of a ClientHello record and
    // then nothing: together they hold both places.
    let mut silent = TcpStream::connect(p.http).await.unwrap();
    let mut slow = TcpStream::connect(p.http).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third is closed at once, without a handshake.
    assert!(open(p.http, &client).await.is_err());
    // Both are closed once header_read_timeout is up, with nothing sent.
    for (what, stream) in [("silent", &mut silent), ("slow", &mut slow)] {
        let mut got = Vec::new();
        let read = tokio::time::timeout(T, stream.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "{what}: still open after {:?}",
            start.elapsed()
        );
        assert!(got.is_empty(), "{what}: {got:?}");
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    // Their places are free again.
    post_acked(p.http, &client, "van-1", 1).await;
    let metrics = common::metric_values();
    let timeouts = metric(
        &metrics,
        "fleetpipe_http_tls_handshake_failures_total",
        &[("reason", "timeout")],
    );
    // (At least: the tests of this file share one metrics registry.)
    assert!(timeouts >= 2.0, "{timeouts}: {metrics}");
    p.stop().await;
    assert_eq!(keys(&p.telemetry()), [("van-1".to_owned(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_keys_are_reloaded_on_change_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, devices1) = (Ca::new("server CA 1"), Ca::new("device CA 1"));
    let mut tls = write_tls_files(dir.path(), &ca1.server(), Some(&devices1));
    tls.reload_interval = Duration::from_millis(200);
    let mut p = tls_pipeline(dir.path(), tls).await;
    let old = https(&ca1, Some(&devices1.device("van-1", &[])));
    post_acked(p.http, &old, "van-1", 1).await;
    // A connection opened before the change, kept alive through it.
    let mut kept = open(p.http, &old).await.unwrap();

    // A new server certificate from a new CA, a new device CA.
    let (ca2, devices2) = (Ca::new("server CA 2"), Ca::new("device CA 2"));
    let server2 = ca2.server();
    let server2_der = CertificateDer::from_pem_slice(server2.cert.as_bytes()).unwrap();
    write_tls_files(dir.path(), &server2, Some(&devices2));
    let new = https(&ca2, Some(&devices2.device("van-1", &[])));
    let deadline = Instant::now() + T;
    let mut s = loop {
        if let Ok(s) = open(p.http, &new).await {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The new handshake presents the new certificate.
    assert_eq!(
        s.get_ref().1.peer_certificates().unwrap()[0],
        server2_der,
        "not the new server certificate"
    );
    assert!(matches!(
        post(&mut s, "van-1", 2, None).await,
        Reply::Http(200, _)
    ));
    let mut ws = wss(p.http, &new, None).await.unwrap();
    assert_eq!(
        send_and_answer(&mut ws, json_ping("van-1", 3)).await,
        json!({ "ack": 3 })
    );
    // The old ones are gone for new connections: a client trusting only the
    // old CA does not connect, devices of the old device CA are refused.
    assert!(open(p.http, &old).await.is_err());
    let old_device_new_trust = https(&ca2, Some(&devices1.device("van-1", &[])));
    if let Err(e) = refused_at_handshake(p.http, &old_device_new_trust).await {
        panic!("a device of the old CA: {e}");
    }
    // The connection from before goes on.
    assert!(matches!(
        post(&mut kept, "van-1", 4, None).await,
        Reply::Http(200, _)
    ));

    // A key that does not load keeps the current certificate.
    replace_file(&dir.path().join("server.key"), "not a key");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut s = open(p.http, &new).await.unwrap();
    assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], server2_der);
    assert!(matches!(
        post(&mut s, "van-1", 5, None).await,
        Reply::Http(200, _)
    ));
    let metrics = common::metric_values();
    assert!(
        metric(&metrics, "fleetpipe_http_tls_reload_errors_total", &[]) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "fleetpipe_http_tls_reloads_total", &[]) >= 1.0,
        "{metrics}"
    );
    drop((s, ws, kept));
    p.stop().await;
    assert_eq!(
        keys(&p.telemetry()),
        (1..=5)
            .map(|seq| ("van-1".to_owned(), seq))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_start_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let devices = Ca::new("device CA");
    let good = write_tls_files(dir.path(), &ca.server(), Some(&devices));
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    type Tweak<'a> = Box<dyn Fn(&mut TlsConfig) + 'a>;
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "ingest.http.tls.cert_file",
            Box::new(|c| c.cert_file = missing.clone()),
        ),
        (
            "ingest.http.tls.key_file",
            Box::new(|c| c.key_file = not_pem.clone()),
        ),
        (
            "ingest.http.tls.client_ca_file",
            Box::new(|c| c.client_ca_file = Some(not_pem.clone())),
        ),
        (
            "ingest.http.tls.reload_interval",
            Box::new(|c| c.reload_interval = Duration::ZERO),
        ),
    ];
    for (key, tweak) in cases {
        let mut config = test_config(dir.path());
        let mut tls = good.clone();
        tweak(&mut tls);
        config.ingest.http.tls = Some(tls);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let err = match fleetpipe::Pipeline::start(&config, shutdown.clone()).await {
            Ok(_) => panic!("{key}: started"),
            Err(e) => e.to_string(),
        };
        shutdown.cancel();
        assert!(err.contains(key), "{key}: {err}");
    }
}
