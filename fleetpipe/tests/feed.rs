//! The live feed through real sockets: a whole pipeline with the query API
//! and `[api.feed]`, pings sent over HTTP, subscribers on WebSocket
//! (tokio-tungstenite) and SSE (reqwest, streamed).
//!
//! Security tests each break one rule of who may read what; each was seen
//! to fail with the rule broken once (notes in the commit and
//! docs/feed.md).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::api::{ApiTest, IN_DEPOT, Scope, drive_out_of_the_depot, ping};
use common::now_ms;
use fleetpipe_query::feed::FeedConfig;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const FLEET: &str = "feed-fleet-token";
const A_ONLY: &str = "feed-token-of-a";
const DEPOT_ONLY: &str = "feed-token-of-the-depot";
const YARD: (f64, f64) = (52.60, 13.60);
/// A box around the depot only.
const DEPOT_BOX: [f64; 4] = [13.39, 52.49, 13.42, 52.52];

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn feed_test(tweak: impl FnOnce(&mut FeedConfig)) -> ApiTest {
    let mut feed = FeedConfig {
        share_check_interval: Duration::from_millis(200),
        ..FeedConfig::default()
    };
    tweak(&mut feed);
    ApiTest::start(
        &[
            ("dispatch", FLEET, Scope::Fleet),
            ("customer-a", A_ONLY, Scope::Vehicles(&["a-1"])),
            ("depot-staff", DEPOT_ONLY, Scope::Fences(&["depot"])),
        ],
        |api| {
            api.share_max_lifetime = Duration::from_secs(3600);
            api.feed = Some(feed);
        },
    )
    .await
}

fn ws_url(t: &ApiTest) -> String {
    t.base.replace("http://", "ws://") + "/v1/feed"
}

/// A WebSocket to the feed with `token` in the Authorization header.
async fn connect(t: &ApiTest, token: &str) -> Ws {
    let mut request = ws_url(t).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// The handshake's HTTP status for `request`.
async fn refused(request: tokio_tungstenite::tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

async fn subscribe(ws: &mut Ws, body: Value) {
    let mut body = body;
    body["type"] = json!("subscribe");
    ws.send(Message::Text(body.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message, or `None` on close / after `wait`.
async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Every message until none came for `quiet`.
async fn drain(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = next(ws, quiet).await {
        out.push(m);
    }
    out
}

/// The close frame's code and reason after the messages before it.
async fn close_frame(ws: &mut Ws) -> (Vec<Value>, Option<(u16, String)>) {
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => messages.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(f)))) => {
                return (
                    messages,
                    f.map(|f| (u16::from(f.code), f.reason.to_string())),
                );
            }
            Ok(Some(Ok(_))) => {}
            _ => return (messages, None),
        }
    }
}

fn vehicles_of(messages: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = messages
        .iter()
        .flat_map(|m| match m["type"].as_str() {
            Some("snapshot") => m["positions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["vehicle_id"].as_str().unwrap().to_owned())
                .collect(),
            Some("position") => vec![m["vehicle_id"].as_str().unwrap().to_owned()],
            Some("event") => vec![m["event"]["vehicle_id"].as_str().unwrap().to_owned()],
            _ => vec![],
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn types(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect()
}

/// `a-1` in the depot, `b-1` in the yard: one ping each.
async fn seed(t: &ApiTest) -> i64 {
    let start = now_ms() - 60_000;
    t.send(
        &[ping("a-1", 0, start, IN_DEPOT), ping("b-1", 0, start, YARD)],
        2,
    )
    .await;
    start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_a_snapshot_then_exactly_the_matching_changes() {
    let t = feed_test(|_| {}).await;
    let start = seed(&t).await;
    let mut ws = connect(&t, FLEET).await;
    subscribe(
        &mut ws,
        json!({"bbox": DEPOT_BOX, "positions": true, "events": false}),
    )
    .await;
    let first = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(vehicles_of(std::slice::from_ref(&first)), ["a-1"]);
    // b-1 drives into the depot box, a-1 leaves it for the yard.
    t.send(
        &[
            ping("b-1", 1, start + 1000, IN_DEPOT),
            ping("a-1", 1, start + 1000, YARD),
        ],
        4,
    )
    .await;
    let got = drain(&mut ws, Duration::from_secs(2)).await;
    assert_eq!(types(&got), ["position"], "{got:?}");
    assert_eq!(got[0]["vehicle_id"], "b-1");
    assert!(got[0]["resume"].as_str().unwrap().contains('-'));

    // H3: a cell at resolution 9 around the yard.
    let cell = h3o::LatLng::new(YARD.0, YARD.1)
        .unwrap()
        .to_cell(h3o::Resolution::Nine)
        .to_string();
    subscribe(&mut ws, json!({"h3": [cell], "events": false})).await;
    let snap = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (
            snap["type"].as_str(),
            vehicles_of(std::slice::from_ref(&snap))
        ),
        (Some("snapshot"), vec!["a-1".to_owned()])
    );

    // Events only, of one type, of one vehicle: a-1's trouble code.
    subscribe(
        &mut ws,
        json!({"positions": false, "vehicles": ["a-1"], "event_types": ["diagnostics.dtc_set"]}),
    )
    .await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(10)).await.unwrap()["type"],
        "snapshot"
    );
    let mut a = ping("a-1", 2, start + 2000, IN_DEPOT);
    a["dtcs"] = json!(["P0420"]);
    let mut b = ping("b-1", 2, start + 2000, IN_DEPOT);
    b["dtcs"] = json!(["P0420"]);
    t.send(&[a, b], 6).await;
    let got = drain(&mut ws, Duration::from_secs(2)).await;
    assert_eq!(types(&got), ["event"], "{got:?}");
    assert_eq!(got[0]["event"]["type"], "diagnostics.dtc_set");
    assert_eq!(got[0]["event"]["vehicle_id"], "a-1");
    assert_eq!(got[0]["event"]["data"]["code"], "P0420", "{}", got[0]);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_hold_on_the_feed() {
    let t = feed_test(|_| {}).await;
    let start = seed(&t).await;
    // No token, a wrong one, a token in the wrong place: refused 401.
    let url = ws_url(&t);
    assert_eq!(
        refused(url.clone().into_client_request().unwrap()).await,
        401
    );
    let mut wrong = url.clone().into_client_request().unwrap();
    wrong
        .headers_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(refused(wrong).await, 401);
    // The token as a subprotocol and as access_token works; the server
    // never echoes the token.
    let mut proto = url.clone().into_client_request().unwrap();
    proto.headers_mut().insert(
        "sec-websocket-protocol",
        format!("fleetpipe.feed.v1, bearer.{FLEET}")
            .parse()
            .unwrap(),
    );
    let (_, answer) = tokio_tungstenite::connect_async(proto).await.unwrap();
    assert_eq!(
        answer.headers()["sec-websocket-protocol"],
        "fleetpipe.feed.v1"
    );
    let query = format!("{url}?access_token={FLEET}")
        .into_client_request()
        .unwrap();
    assert_eq!(refused(query).await, 101);

    // A vehicle-scoped token asking for b-1, for the whole world, for
    // everything: only ever a-1.
    let mut asks = Vec::new();
    for sub in [
        json!({"vehicles": ["b-1"]}),
        json!({"bbox": [-180, -90, 180, 90]}),
        json!({}),
    ] {
        let mut ws = connect(&t, A_ONLY).await;
        subscribe(&mut ws, sub.clone()).await;
        asks.push((sub, ws));
    }
    // A fence-scoped token: vehicles while in the depot, depot events.
    let mut depot = connect(&t, DEPOT_ONLY).await;
    subscribe(&mut depot, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.send(
        &[
            ping("b-1", 1, start + 1000, (52.61, 13.61)),
            ping("a-1", 1, start + 1000, IN_DEPOT),
        ],
        4,
    )
    .await;
    for (sub, mut ws) in asks {
        let got = drain(&mut ws, Duration::from_secs(2)).await;
        let seen = vehicles_of(&got);
        assert!(seen.iter().all(|v| v == "a-1"), "{sub}: {got:?}");
        assert!(!mentions(&got, "b-1"), "{sub}: {got:?}");
    }
    let got = drain(&mut depot, Duration::from_secs(2)).await;
    assert_eq!(vehicles_of(&got), ["a-1"], "{got:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_see_one_vehicle_from_their_start_and_end_with_the_link() {
    let t = feed_test(|_| {}).await;
    let start = seed(&t).await;
    let (status, link) = t.share(FLEET, "a-1", "1h").await;
    assert_eq!(status, 201, "{link}");
    let token = link["token"].as_str().unwrap().to_owned();
    let mut ws = connect(&t, &token).await;
    subscribe(
        &mut ws,
        json!({"vehicles": ["b-1", "a-1"], "bbox": [-180, -90, 180, 90]}),
    )
    .await;
    // The snapshot holds nothing from before the link's start.
    let snap = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["positions"], json!([]), "{snap}");
    let now = now_ms();
    t.send(
        &[
            ping("a-1", 1, now, IN_DEPOT),
            ping("b-1", 1, now, IN_DEPOT),
            // Before the link: never shown.
            ping("a-1", 2, start + 500, IN_DEPOT),
        ],
        5,
    )
    .await;
    let got = drain(&mut ws, Duration::from_secs(2)).await;
    assert_eq!(vehicles_of(&got), ["a-1"], "{got:?}");
    assert!(
        got.iter()
            .all(|m| m["type"] != "position" || m["ts"].as_str().unwrap() >= "2000")
    );
    // Revoked while streaming: the stream ends with the reason.
    let id = link["id"].as_str().unwrap();
    assert_eq!(t.revoke(FLEET, id).await, 204);
    let (messages, frame) = close_frame(&mut ws).await;
    assert_eq!(frame, Some((4403, "revoked".to_owned())), "{messages:?}");
    assert_eq!(messages.last().unwrap()["reason"], "revoked");
    // And it cannot come back.
    let mut again = ws_url(&t).into_client_request().unwrap();
    again
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(refused(again).await, 401);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_with_filters_and_resumes_from_last_event_id() {
    let t = feed_test(|_| {}).await;
    let start = seed(&t).await;
    let url = format!("{}/v1/feed/sse?vehicles=a-1&events=false", t.base);
    let r = t.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = t
        .http
        .get(format!("{url}&bbox=1,2,3"))
        .bearer_auth(FLEET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let mut r = t.http.get(&url).bearer_auth(FLEET).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    t.send(
        &[
            ping("a-1", 1, start + 1000, YARD),
            ping("b-1", 1, start + 1000, IN_DEPOT),
        ],
        4,
    )
    .await;
    let mut text = String::new();
    while !text.contains("event: position") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.starts_with("event: snapshot") || text.contains("event: snapshot"),
        "{text}"
    );
    assert!(!text.contains("b-1"), "{text}");
    let id = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .to_owned();
    drop(r);
    // Dropped; a ping meanwhile; reconnect with Last-Event-ID.
    t.send(&[ping("a-1", 2, start + 2000, IN_DEPOT)], 5).await;
    let mut r = t
        .http
        .get(&url)
        .bearer_auth(FLEET)
        .header("last-event-id", &id)
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while text.matches("\n\n").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: resumed"), "{text}");
    assert!(
        text.contains("event: position") && text.contains("a-1"),
        "{text}"
    );
    assert!(
        !text.contains("event: snapshot"),
        "a resume is no snapshot: {text}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscribe_messages_are_answered_and_floods_closed() {
    let t = feed_test(|f| {
        f.max_subscribe_bytes = 1024;
        f.max_subscribes_per_minute = 5;
    })
    .await;
    seed(&t).await;
    // Malformed: an error message, and the connection stays usable.
    let mut ws = connect(&t, FLEET).await;
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let e = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["error"].as_str()),
        (Some("error"), Some("bad_subscription")),
        "{e}"
    );
    subscribe(&mut ws, json!({"bbox": [14, 52, 13, 53]})).await;
    let e = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(e["field"], "bbox", "{e}");
    subscribe(&mut ws, json!({})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "snapshot"
    );
    // A flood: the sixth message in a minute closes it (1008).
    for _ in 0..3 {
        subscribe(&mut ws, json!({})).await;
    }
    let (_, frame) = close_frame(&mut ws).await;
    assert_eq!(frame, Some((1008, "flood".to_owned())));
    // Oversized: closed with 1009 and the reason.
    let mut ws = connect(&t, FLEET).await;
    let ids: Vec<String> = (0..200).map(|i| format!("vehicle-{i}")).collect();
    subscribe(&mut ws, json!({"vehicles": ids})).await;
    let (messages, frame) = close_frame(&mut ws).await;
    assert_eq!(frame, Some((1009, "oversized".to_owned())), "{messages:?}");
    assert!(
        messages.last().unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("max_subscribe_bytes")
    );
    t.stop().await;
}

/// A box around the yard only (where `b-1` is).
const YARD_BOX: [f64; 4] = [13.55, 52.55, 13.65, 52.65];

/// A WebSocket request to the feed with `token` in the Authorization
/// header.
fn request(t: &ApiTest, token: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut r = ws_url(t).into_client_request().unwrap();
    r.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Whether any message mentions `vehicle`.
fn mentions(messages: &[Value], vehicle: &str) -> bool {
    messages.iter().any(|m| m.to_string().contains(vehicle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_share_link_ends_its_stream_and_is_refused_after() {
    let t = feed_test(|_| {}).await;
    seed(&t).await;
    let (status, link) = t.share(FLEET, "a-1", "3s").await;
    assert_eq!(status, 201, "{link}");
    let token = link["token"].as_str().unwrap().to_owned();
    let mut ws = connect(&t, &token).await;
    subscribe(&mut ws, json!({})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "snapshot"
    );
    // Live until it expires: then the close message and 4401 "expired",
    // within a share check or so of the expiry (not at the next ping).
    let (messages, frame) = close_frame(&mut ws).await;
    assert_eq!(frame, Some((4401, "expired".to_owned())), "{messages:?}");
    let last = messages.last().unwrap();
    assert_eq!(
        (&last["type"], &last["reason"]),
        (&json!("close"), &json!("expired"))
    );
    // Expired: refused at connect, on both endpoints.
    assert_eq!(refused(request(&t, &token)).await, 401);
    let r = t
        .http
        .get(format!("{}/v1/feed/sse", t.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_link_asking_for_another_vehicle_gets_nothing_of_it() {
    let t = feed_test(|_| {}).await;
    seed(&t).await;
    let (status, link) = t.share(FLEET, "a-1", "1h").await;
    assert_eq!(status, 201, "{link}");
    let token = link["token"].as_str().unwrap().to_owned();
    // b-1 by name, b-1 by where it is, and by both.
    let mut asks = Vec::new();
    for sub in [
        json!({"vehicles": ["b-1"]}),
        json!({"bbox": YARD_BOX}),
        json!({"vehicles": ["b-1"], "bbox": YARD_BOX}),
    ] {
        let mut ws = connect(&t, &token).await;
        subscribe(&mut ws, sub.clone()).await;
        asks.push((sub, ws));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // After the link's start: b-1 in the yard with a trouble code, and a-1
    // into the yard too (what the bbox asks may show, for the link's own
    // vehicle).
    let now = now_ms();
    let mut b = ping("b-1", 1, now, YARD);
    b["dtcs"] = json!(["P0420"]);
    t.send(&[b, ping("a-1", 1, now, YARD)], 4).await;
    for (sub, mut ws) in asks {
        let got = drain(&mut ws, Duration::from_secs(2)).await;
        assert!(!mentions(&got, "b-1"), "{sub}: {got:?}");
        if sub.get("vehicles").is_none() {
            assert_eq!(vehicles_of(&got), ["a-1"], "{sub}: {got:?}");
        }
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_token_with_a_box_around_another_vehicle_gets_only_its_own() {
    let t = feed_test(|_| {}).await;
    let start = seed(&t).await;
    let mut ws = connect(&t, A_ONLY).await;
    subscribe(&mut ws, json!({"bbox": YARD_BOX})).await;
    // The snapshot: b-1 is in the box, a-1 is not; nothing.
    let snap = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["positions"], json!([]), "{snap}");
    // b-1 moves within the box with a trouble code; a-1 drives into it.
    let mut b = ping("b-1", 1, start + 1000, (52.601, 13.601));
    b["dtcs"] = json!(["P0420"]);
    t.send(&[b, ping("a-1", 1, start + 1000, YARD)], 4).await;
    let got = drain(&mut ws, Duration::from_secs(2)).await;
    assert!(!mentions(&got, "b-1"), "{got:?}");
    assert_eq!(vehicles_of(&got), ["a-1"], "{got:?}");
    t.stop().await;
}

/// A socket to the API whose receive buffer is as small as the kernel
/// allows, so that once its reader stops, the kernel's buffers between it
/// and the feed are full after the server's send buffer (a few MiB at most,
/// net.ipv4.tcp_wmem) rather than megabytes more.
async fn small_socket(t: &ApiTest) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = t.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A WebSocket to the feed on [`small_socket`].
async fn connect_small(t: &ApiTest, token: &str) -> Ws {
    let stream = small_socket(t).await;
    tokio_tungstenite::client_async(
        request(t, token),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap()
    .0
}

/// An SSE stream of hot-1's positions on [`small_socket`], its status line
/// read; the caller reads nothing more.
async fn sse_small(t: &ApiTest) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = small_socket(t).await;
    let head = format!(
        "GET /v1/feed/sse?vehicles=hot-1&events=false HTTP/1.1\r\nhost: fleetpipe\r\nauthorization: Bearer {FLEET}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "the SSE stream started");
    stream
}

/// The test fences and 100 more around the yard whose ids are 200 bytes
/// long: every position of a vehicle standing in the yard names them all,
/// some 21 KB a message, so a few MiB of kernel buffers between the feed
/// and a client that stopped reading are full after a few hundred.
fn crowded_fences(dir: &std::path::Path) -> std::path::PathBuf {
    let mut fences: Value = serde_json::from_str(common::api::FENCES).unwrap();
    let features = fences["features"].as_array_mut().unwrap();
    for i in 0..100 {
        features.push(json!({
            "type": "Feature",
            "properties": {"id": format!("crowd-{i:03}-{}", "x".repeat(190)), "kind": "zone", "radius_m": 500},
            "geometry": {"type": "Point", "coordinates": [YARD.1, YARD.0]},
        }));
    }
    let path = dir.join("crowded.geojson");
    std::fs::write(&path, fences.to_string()).unwrap();
    path
}

/// A feed test on [`crowded_fences`], with `tweak` applied to `[api.feed]`
/// and `tweak_config` to the rest.
async fn crowded_test(
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut FeedConfig),
    tweak_config: impl FnOnce(&mut fleetpipe::Config),
) -> ApiTest {
    let fences = crowded_fences(dir.path());
    let mut feed = FeedConfig {
        // The feed's own per-message limit far off: the tests are about
        // what happens before it.
        write_timeout: Duration::from_secs(300),
        ..FeedConfig::default()
    };
    tweak(&mut feed);
    ApiTest::start_with(
        &[("dispatch", FLEET, Scope::Fleet)],
        |api| api.feed = Some(feed),
        |c| {
            c.geofence.file = Some(fences);
            tweak_config(c);
        },
    )
    .await
}

/// Pings of `hot-1` standing in the yard (each position ~21 KB, see
/// [`crowded_fences`]): many times what the kernel's buffers hold.
const FILL: u64 = 10_000;

/// [`FILL`] pings of `hot-1` 10 ms apart from `start`, sent (500 a
/// request) and stored; the newest one's time.
async fn fill(t: &ApiTest, start: i64) -> i64 {
    let pings: Vec<Value> = (0..FILL)
        .map(|i| ping("hot-1", i, start + i as i64 * 10, YARD))
        .collect();
    t.send(&pings, FILL as i64).await;
    start + (FILL as i64 - 1) * 10
}

fn ts_ms(m: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        m["ts"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_the_newest_position_and_holds_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    let t = crowded_test(&dir, |_| {}, |_| {}).await;
    let mut ws = connect_small(&t, FLEET).await;
    subscribe(&mut ws, json!({"vehicles": ["hot-1"], "events": false})).await;
    let first = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(first["type"], "snapshot", "{first}");
    // The client reads nothing while the pings are stored: the pipeline is
    // not held up by it (fill waits for every row).
    let newest = fill(&t, now_ms() - 600_000).await;
    let got = drain(&mut ws, Duration::from_secs(3)).await;
    assert!(
        got.iter().all(|m| m["type"] == "position"),
        "{:?}",
        types(&got)
    );
    let ts: Vec<i64> = got.iter().map(ts_ms).collect();
    // What the kernel held, then the newest: never an older one after a
    // newer one, and far fewer than were sent.
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert!(
        (ts.len() as u64) < FILL / 2,
        "{} of {FILL} positions: not coalesced",
        ts.len()
    );
    assert_eq!(ts.last(), Some(&newest), "the newest position came last");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_for_its_events_is_told_what_it_missed_and_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let t = crowded_test(
        &dir,
        |f| {
            f.client_max_events = 10;
            f.resume_max_age = Duration::from_secs(600);
        },
        |_| {},
    )
    .await;
    // Not the crowd's geofence events: these, of hot-1 and the drivers.
    let types_wanted = [
        "vehicle.online",
        "vehicle.state_changed",
        "vehicle.motion_started",
        "vehicle.motion_stopped",
    ];
    let mut slow = connect_small(&t, FLEET).await;
    subscribe(&mut slow, json!({"event_types": types_wanted})).await;
    assert_eq!(
        next(&mut slow, Duration::from_secs(10)).await.unwrap()["type"],
        "snapshot"
    );
    let start = now_ms() - 600_000;
    fill(&t, start).await;
    // The kernel's buffers are full: the events of eight vehicles driving
    // out of the depot wait in the client's queue, more than 10 of them.
    let drivers = ["d-1", "d-2", "d-3", "d-4", "d-5", "d-6", "d-7", "d-8"];
    let drive_start = start + FILL as i64 * 10;
    t.send(
        &drive_out_of_the_depot(&drivers, drive_start),
        FILL as i64 + 40 * drivers.len() as i64,
    )
    .await;
    t.settle_events().await;

    let (before, frame) = close_frame(&mut slow).await;
    let overflow = before.last().unwrap();
    assert_eq!(overflow["type"], "overflow", "{overflow}");
    assert!(
        overflow["missed_events"].as_u64().unwrap() > 0,
        "{overflow}"
    );
    assert_eq!(frame.map(|f| f.0), Some(1013));
    // Resumed from where it was cut off, it gets everything it missed.
    let mut ws = connect(&t, FLEET).await;
    subscribe(
        &mut ws,
        json!({"event_types": types_wanted, "resume": overflow["resume"]}),
    )
    .await;
    let after = drain(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(after.first().map(|m| &m["type"]), Some(&json!("resumed")));
    let mut seen: Vec<String> = before
        .iter()
        .chain(&after)
        .filter(|m| m["type"] == "event")
        .map(|m| m["event"]["id"].as_str().unwrap().to_owned())
        .collect();
    let delivered = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), delivered, "an event was delivered twice");
    let rows =
        t.db.query(
            &format!(
                "SELECT id FROM \"{}\".vehicle_events WHERE type = ANY($1) ORDER BY id",
                t.schema
            ),
            &[&types_wanted.to_vec()],
        )
        .await
        .unwrap();
    let stored: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(stored.len() > 10, "{} events", stored.len());
    assert_eq!(seen, stored, "every stored event, once");
    // And every driver's newest position (40 pings a second apart, each
    // driver 0.5 s after the one before).
    for (n, d) in drivers.iter().enumerate() {
        let last = after
            .iter()
            .filter(|m| m["type"] == "position" && m["vehicle_id"] == *d)
            .map(ts_ms)
            .max();
        assert_eq!(last, Some(drive_start + n as i64 * 500 + 39_000), "{d}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reader_stopped_is_closed_after_idle_timeout() {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let t = crowded_test(
        &dir,
        |_| {},
        |c| c.ingest.http.idle_timeout = Duration::from_secs(3),
    )
    .await;
    let mut sse = sse_small(&t).await;
    fill(&t, now_ms() - 600_000).await;
    // The stream's writes have taken nothing for longer than idle_timeout
    // (the feed's own write_timeout is far off): the connection is closed,
    // so reading finds what the kernel held, then the end.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match sse.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled stream was left open");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_a_stream_whose_reader_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let t = crowded_test(&dir, |_| {}, |_| {}).await;
    let _sse = sse_small(&t).await;
    let mut ws = connect_small(&t, FLEET).await;
    subscribe(&mut ws, json!({"vehicles": ["hot-1"]})).await;
    fill(&t, now_ms() - 600_000).await;
    // Both streams are stalled, idle_timeout (1 min) and write_timeout far
    // off: the drain closes them and shutdown ends within
    // pipeline.shutdown_timeout (20 s here), or stop() panics.
    t.stop().await;
}
