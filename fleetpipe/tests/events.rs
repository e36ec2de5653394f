//! State-change events through the whole pipeline: pings in over HTTP,
//! CloudEvents out of the file sink, and vehicle state surviving a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestPipeline, now_ms, read_stream};
use serde_json::Value;

/// A depot of about 110 m x 110 m around (52.5200, 13.4050).
const DEPOT: &str = r#"{"type":"FeatureCollection","features":[
  {"type":"Feature","properties":{"id":"depot-1","kind":"depot","arrival":true},
   "geometry":{"type":"Polygon","coordinates":[[[13.4042,52.5195],[13.4058,52.5195],[13.4058,52.5205],[13.4042,52.5205],[13.4042,52.5195]]]}}]}"#;

/// A JSON batch of pings of `vehicle`, `(seq, seconds after t0, lon)` each.
fn batch(t0: i64, vehicle: &str, pings: &[(u64, i64, f64)]) -> String {
    let items: Vec<String> = pings
        .iter()
        .map(|(seq, ago, lon)| {
            format!(
                r#"{{"vehicle_id":"{vehicle}","seq":{seq},"ts":{},"lat":52.52,"lon":{lon},"speed_kmh":20.0,"accuracy_m":5.0}}"#,
                t0 + ago * 1000
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

async fn post(p: &TestPipeline, body: String) {
    let r = reqwest::Client::new()
        .post(p.url("/v1/pings"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

fn start(shared: &Path) -> impl std::future::Future<Output = TestPipeline> {
    let fences = shared.join("fences.geojson");
    let state = shared.join("state");
    TestPipeline::start(move |c| {
        c.geofence.file = Some(fences);
        c.enrich.state_dir = state;
        // Events as soon as their ping is processed, so the HTTP answer
        // covers them.
        c.enrich.reorder_window = Duration::ZERO;
    })
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_sink_and_a_restart_re_emits_no_enter() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("fences.geojson"), DEPOT).unwrap();

    // West of the depot, then inside it.
    let t0 = now_ms() - 120_000;
    let mut first = start(shared.path()).await;
    post(
        &first,
        batch(
            t0,
            "van-1",
            &[(1, 60, 13.4030), (2, 70, 13.4045), (3, 80, 13.4050)],
        ),
    )
    .await;
    // The 200 means the events of those pings are stored too.
    let events = read_stream(first.dir.path(), "events");
    assert_eq!(
        types(&events),
        [
            "vehicle.online",
            "vehicle.state_changed",
            // 1 -> 2 is 100 m in 10 s: a trip starts.
            "vehicle.motion_started",
            "geofence.entered",
            "vehicle.state_changed"
        ],
        "{events:#?}"
    );
    assert_eq!(events[1]["data"]["to"], "parked", "{events:#?}");
    assert_eq!(events[4]["data"]["to"], "moving", "{events:#?}");
    let entered = &events[3];
    assert_eq!(entered["specversion"], "1.0");
    assert_eq!(entered["subject"], "van-1");
    assert_eq!(entered["data"]["fence_id"], "depot-1");
    assert_eq!(entered["id"].as_str().map(str::len), Some(36));
    let telemetry = first.telemetry();
    assert_eq!(telemetry.len(), 3);
    assert_eq!(telemetry[2]["fences"], serde_json::json!(["depot-1"]));
    assert!(telemetry[1]["distance_m"].as_f64().unwrap() > 90.0);
    first.stop().await;
    assert!(shared.path().join("state/vehicle-state.jsonl").exists());

    // Restarted: still inside, so no enter and no online; then it leaves.
    let mut second = start(shared.path()).await;
    post(
        &second,
        batch(t0, "van-1", &[(4, 90, 13.4051), (5, 100, 13.4052)]),
    )
    .await;
    post(&second, batch(t0, "van-1", &[(6, 110, 13.4080)])).await;
    second.stop().await;
    let events = read_stream(second.dir.path(), "events");
    let kinds = types(&events);
    // Restored state: neither online nor a second enter, nor a second
    // motion start for the trip already under way.
    for absent in [
        "vehicle.online",
        "geofence.entered",
        "vehicle.motion_started",
    ] {
        assert!(!kinds.iter().any(|k| k == absent), "{events:#?}");
    }
    let fence_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("geofence."))
        .collect();
    assert_eq!(fence_events.len(), 1, "{events:#?}");
    assert_eq!(fence_events[0]["type"], "geofence.exited");
    assert_eq!(fence_events[0]["data"]["fence_id"], "depot-1");

    // A replayed ping is stored again (deduplicated by the database) but
    // gives no event.
    let mut third = start(shared.path()).await;
    post(&third, batch(t0, "van-1", &[(6, 110, 13.4080)])).await;
    third.stop().await;
    assert!(read_stream(third.dir.path(), "events").is_empty());
    let replayed = third.telemetry();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0]["flags"], serde_json::json!(["duplicate"]));
}
