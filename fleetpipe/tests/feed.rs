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

use common::api::{ApiTest, IN_DEPOT, Scope, ping};
use common::feed::{close_frame, connect, drain, next, request, subscribe, types, ws_url};
use common::now_ms;
use fleetpipe_query::feed::FeedConfig;
use futures::SinkExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const FLEET: &str = "feed-fleet-token";
const A_ONLY: &str = "feed-token-of-a";
const DEPOT_ONLY: &str = "feed-token-of-the-depot";
const YARD: (f64, f64) = (52.60, 13.60);
/// A box around the depot only.
const DEPOT_BOX: [f64; 4] = [13.39, 52.49, 13.42, 52.52];

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

/// The handshake's HTTP status for `request`.
async fn refused(request: tokio_tungstenite::tungstenite::handshake::client::Request) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{e}"),
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

/// Whether any message mentions `vehicle`: a string value that is its id
/// anywhere in it (not a substring: a resume token such as `…fb-1` is not
/// vehicle `b-1`).
fn mentions(messages: &[Value], vehicle: &str) -> bool {
    fn has(v: &Value, vehicle: &str) -> bool {
        match v {
            Value::String(s) => s == vehicle,
            Value::Array(a) => a.iter().any(|v| has(v, vehicle)),
            Value::Object(o) => o.values().any(|v| has(v, vehicle)),
            _ => false,
        }
    }
    messages.iter().any(|m| has(m, vehicle))
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
