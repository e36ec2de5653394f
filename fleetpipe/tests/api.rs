//! The query API through its real interface: a pipeline with the
//! TimescaleDB sink (the real PostgreSQL, in the mode it offers) and
//! `[api]`, pings sent over the devices' HTTP listener and enriched,
//! answers read over HTTP. Filters, states, pagination walks, track
//! simplification, events and trips, fences and their occupancy, every 400.
//! Who may read what is `api_access.rs`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::api::{ApiTest, IN_DEPOT, Scope, drive_out_of_the_depot, ids, ping};
use common::now_ms;
use serde_json::Value;

const TOKEN: &str = "fleet-token";

fn fleet() -> [(&'static str, &'static str, Scope); 1] {
    [("dispatch", TOKEN, Scope::Fleet)]
}

/// The vehicles of the list tests: `v-00` … `v-24`. v-00…v-09 stand in
/// the depot, the rest east of it. Even ones drive (30 km/h), odd ones stand;
/// v-20 charges, v-21 and v-22 last reported two hours ago (offline with
/// api.offline_after = 1h).
fn fleet_pings() -> Vec<Value> {
    let now = now_ms();
    (0..25u64)
        .map(|i| {
            let vehicle = format!("v-{i:02}");
            let at = if i < 10 {
                (IN_DEPOT.0 + i as f64 * 0.0001, IN_DEPOT.1)
            } else {
                (52.505, 13.5 + i as f64 * 0.01)
            };
            let ts = if i == 21 || i == 22 {
                now - 2 * 3600 * 1000
            } else {
                now - 60_000
            };
            let mut p = ping(&vehicle, 1, ts, at);
            p["speed_kmh"] = Value::from(if i % 2 == 0 { 30.0 } else { 0.0 });
            p["soc_pct"] = Value::from(50.0 + i as f64);
            if i == 20 {
                p["charging"] = Value::from(true);
            }
            p
        })
        .collect()
}

/// The state each of [`fleet_pings`]' vehicles is in.
fn expected_state(i: u64) -> &'static str {
    match i {
        21 | 22 => "offline",
        20 => "charging",
        i if i % 2 == 0 => "moving",
        _ => "parked",
    }
}

fn vehicles(range: impl Iterator<Item = u64>) -> Vec<String> {
    range.map(|i| format!("v-{i:02}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicles_filter_derive_their_state_and_walk_every_page_once() {
    let t = ApiTest::start(&fleet(), |api| {
        api.offline_after = std::time::Duration::from_secs(3600);
    })
    .await;
    t.send(&fleet_pings(), 25).await;
    t.wait_rows("vehicle_latest", 25).await;

    // Every vehicle once, in vehicle_id order, over pages of 7.
    let all = t.walk(TOKEN, "/v1/vehicles?limit=7", "vehicles").await;
    assert_eq!(ids(&all, "vehicle_id"), vehicles(0..25));
    for (i, v) in (0..25u64).zip(&all) {
        assert_eq!(v["state"], expected_state(i), "{v}");
        assert_eq!(v["soc_pct"], 50.0 + i as f64);
    }
    let depot: Vec<String> = vehicles(0..10);
    for (i, v) in all.iter().enumerate() {
        let fences: Vec<&str> = v["fences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(fences, if i < 10 { vec!["depot"] } else { vec![] }, "{v}");
    }

    for (query, expected) in [
        (
            "state=moving",
            (0..25)
                .filter(|i| expected_state(*i) == "moving")
                .collect::<Vec<_>>(),
        ),
        (
            "state=parked",
            (0..25).filter(|i| expected_state(*i) == "parked").collect(),
        ),
        ("state=charging", vec![20]),
        ("state=offline", vec![21, 22]),
        ("stale_after=30m", vec![21, 22]),
        ("fence=depot", (0..10).collect()),
        ("fence=yard", vec![]),
        ("bbox=13.40,52.50,13.41,52.51", (0..10).collect()),
        ("bbox=13.595,52.5,13.645,52.51", (10..15).collect()),
        ("fence=depot&state=parked", vec![1, 3, 5, 7, 9]),
    ] {
        // Small pages, so every filter is also walked across pages.
        let got = t
            .walk(TOKEN, &format!("/v1/vehicles?limit=2&{query}"), "vehicles")
            .await;
        assert_eq!(
            ids(&got, "vehicle_id"),
            vehicles(expected.into_iter()),
            "{query}"
        );
    }
    assert_eq!(depot.len(), 10);

    // A cursor belongs to its filters: with others it is refused, and so
    // is a tampered one.
    let (_, page) = t.get(Some(TOKEN), "/v1/vehicles?limit=2&fence=depot").await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (status, body) = t
        .get(
            Some(TOKEN),
            &format!("/v1/vehicles?limit=2&cursor={cursor}"),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["parameter"].as_str()),
        (400, Some("cursor")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("other filters"),
        "{body}"
    );
    let mut tampered = cursor.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (status, body) = t
        .get(
            Some(TOKEN),
            &format!("/v1/vehicles?limit=2&fence=depot&cursor={tampered}"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_parameter");
    assert_eq!(body["parameter"], "cursor");
    // An events cursor is no vehicles cursor.
    let (_, events) = t.get(Some(TOKEN), "/v1/events?limit=1").await;
    if let Some(c) = events["next_cursor"].as_str() {
        let (status, _) = t
            .get(Some(TOKEN), &format!("/v1/vehicles?cursor={c}"))
            .await;
        assert_eq!(status, 400);
    }

    // Rows added during a walk: the walk still sees each row at most once
    // and every row that existed throughout.
    let (_, first) = t.get(Some(TOKEN), "/v1/vehicles?limit=5").await;
    let c = first["next_cursor"].as_str().unwrap().to_owned();
    t.send(
        &[
            ping("v-99", 1, now_ms(), IN_DEPOT),
            ping("a-0", 1, now_ms(), IN_DEPOT),
        ],
        27,
    )
    .await;
    t.wait_rows("vehicle_latest", 27).await;
    let rest = t
        .walk_from(TOKEN, "/v1/vehicles?limit=5", "vehicles", Some(c))
        .await;
    let mut seen = ids(first["vehicles"].as_array().unwrap(), "vehicle_id");
    seen.extend(ids(&rest, "vehicle_id"));
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a vehicle twice: {seen:?}");
    for v in vehicles(0..25) {
        assert!(seen.contains(&v), "{v} missing");
    }
    assert!(
        seen.contains(&"v-99".to_owned()),
        "added ahead of the cursor"
    );
    assert!(!seen.contains(&"a-0".to_owned()), "added behind the cursor");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vehicle_with_its_fences_battery_open_codes_and_last_event() {
    let t = ApiTest::start(&fleet(), |_| {}).await;
    let now = now_ms();
    let mut first = ping("van-1", 1, now - 5000, IN_DEPOT);
    first["dtcs"] = serde_json::json!(["P0301", "U0100"]);
    let mut second = ping("van-1", 2, now - 4000, IN_DEPOT);
    // The latest ping reports one code only: the other stays open until
    // enrich.diagnostics.clear_after passes without it.
    second["dtcs"] = serde_json::json!(["U0100"]);
    second["soc_pct"] = Value::from(81.5);
    second["charging"] = Value::from(true);
    t.send(&[first, second], 2).await;
    t.settle_events().await;

    let (status, v) = t.get(Some(TOKEN), "/v1/vehicles/van-1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["vehicle_id"], "van-1");
    assert_eq!(v["state"], "charging");
    assert_eq!(v["fences"], serde_json::json!(["depot"]));
    assert_eq!(v["battery"]["soc_pct"], 81.5);
    assert_eq!(v["battery"]["charging"], true);
    assert_eq!(v["position"]["lat"], IN_DEPOT.0);
    let codes: Vec<&str> = v["open_dtcs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["P0301", "U0100"], "{v}");
    // The last event is the newest stored one.
    let newest: String =
        t.db.query_one(
            &format!(
                "SELECT id FROM \"{}\".vehicle_events WHERE vehicle_id = 'van-1' \
                 ORDER BY time DESC, id DESC LIMIT 1",
                t.schema
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v["last_event"]["id"], newest.as_str(), "{v}");

    let (status, body) = t.get(Some(TOKEN), "/v1/vehicles/nobody").await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (404, Some("not_found"))
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_is_simplified_to_the_bound_keeping_its_ends_and_times() {
    let t = ApiTest::start(&fleet(), |api| {
        api.max_track_points = 500;
        api.max_track_rows = 2500;
    })
    .await;
    // 3000 pings a second apart: a zigzag heading east.
    let start = now_ms() - 3_600_000;
    let pings: Vec<Value> = (0..3000u64)
        .map(|i| {
            let zig = if (i / 100) % 2 == 0 {
                (i % 100) as f64
            } else {
                (100 - i % 100) as f64
            };
            let mut p = ping(
                "trk",
                i,
                start + i as i64 * 1000,
                (52.5 + zig * 0.0001, 13.3 + i as f64 * 0.00005),
            );
            p["speed_kmh"] = Value::from(20.0);
            p
        })
        .collect();
    t.send(&pings, 3000).await;
    let time = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };

    // 2000 pings in range, at most 50 points.
    let (from, to) = (time(start), time(start + 2_000_000));
    let (status, track) = t
        .get(
            Some(TOKEN),
            &format!("/v1/vehicles/trk/track?from={from}&to={to}&max_points=50"),
        )
        .await;
    assert_eq!(status, 200, "{track}");
    assert_eq!(track["type"], "Feature");
    assert_eq!(track["geometry"]["type"], "LineString");
    let coords = track["geometry"]["coordinates"].as_array().unwrap();
    let times = track["properties"]["times"].as_array().unwrap();
    assert!(coords.len() <= 50 && coords.len() >= 20, "{}", coords.len());
    assert_eq!(coords.len(), times.len());
    assert_eq!(track["properties"]["points_read"], 2000);
    let lonlat = |p: &Value| [p["lon"].as_f64().unwrap(), p["lat"].as_f64().unwrap()];
    let as_pair = |c: &Value| [c[0].as_f64().unwrap(), c[1].as_f64().unwrap()];
    assert_eq!(as_pair(&coords[0]), lonlat(&pings[0]));
    assert_eq!(as_pair(&coords[coords.len() - 1]), lonlat(&pings[1999]));
    assert_eq!(times[0].as_str().unwrap(), time(start));
    assert_eq!(
        times[times.len() - 1].as_str().unwrap(),
        time(start + 1_999_000)
    );
    // Every kept point is a ping, with that ping's time.
    for (c, ts) in coords.iter().zip(times) {
        let ts = time::OffsetDateTime::parse(
            ts.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let i = ((ts.unix_timestamp_nanos() / 1_000_000) as i64 - start) / 1000;
        assert_eq!(as_pair(c), lonlat(&pings[i as usize]), "point {i}");
    }

    // Under the bound: every ping, unchanged.
    let (from, to) = (time(start + 10_000), time(start + 30_000));
    let (_, small) = t
        .get(
            Some(TOKEN),
            &format!("/v1/vehicles/trk/track?from={from}&to={to}&max_points=100"),
        )
        .await;
    assert_eq!(
        small["geometry"]["coordinates"].as_array().unwrap().len(),
        20
    );
    // Without max_points: api.max_track_points.
    let (from, to) = (time(start), time(start + 2_400_000));
    let (_, default) = t
        .get(
            Some(TOKEN),
            &format!("/v1/vehicles/trk/track?from={from}&to={to}"),
        )
        .await;
    // The zigzag's 25 corners (legs of 100 pings) are its shape.
    let n = default["geometry"]["coordinates"].as_array().unwrap().len();
    assert!((25..=500).contains(&n), "{n}");
    // More than api.max_track_rows pings: refused, naming the range.
    let (from, to) = (time(start), time(start + 3_000_000));
    let (status, body) = t
        .get(
            Some(TOKEN),
            &format!("/v1/vehicles/trk/track?from={from}&to={to}"),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["parameter"].as_str()),
        (400, Some("from")),
        "{body}"
    );
    // An empty range: no geometry.
    let (from, to) = (time(start - 10_000), time(start - 5_000));
    let (_, empty) = t
        .get(
            Some(TOKEN),
            &format!("/v1/vehicles/trk/track?from={from}&to={to}"),
        )
        .await;
    assert_eq!(empty["geometry"], Value::Null);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_trips_walk_in_time_order_with_their_filters() {
    let t = ApiTest::start(&fleet(), |_| {}).await;
    let pings = drive_out_of_the_depot(&["ev-1", "ev-2"], now_ms() - 600_000);
    t.send(&pings, 80).await;
    let stored = t.settle_events().await;
    assert!(stored > 4, "{stored} events");
    let db_order = |filter: &str| {
        let sql = format!(
            "SELECT id FROM \"{}\".vehicle_events {filter} ORDER BY time, id",
            t.schema
        );
        let db = &t.db;
        async move {
            db.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<String>>()
        }
    };

    let all = t.walk(TOKEN, "/v1/events?limit=3", "events").await;
    assert_eq!(ids(&all, "id"), db_order("").await);
    for (query, filter) in [
        ("vehicle_id=ev-2", "WHERE vehicle_id = 'ev-2'"),
        ("type=geofence.exited", "WHERE type = 'geofence.exited'"),
        ("fence=depot", "WHERE data->>'fence_id' = 'depot'"),
        (
            "vehicle_id=ev-1&type=vehicle.state_changed",
            "WHERE vehicle_id = 'ev-1' AND type = 'vehicle.state_changed'",
        ),
    ] {
        let got = t
            .walk(TOKEN, &format!("/v1/events?limit=2&{query}"), "events")
            .await;
        let expected = db_order(filter).await;
        assert!(!expected.is_empty(), "{query}: nothing to compare");
        assert_eq!(ids(&got, "id"), expected, "{query}");
    }
    let exited = t
        .walk(
            TOKEN,
            "/v1/events?limit=50&fence=depot&type=geofence.exited",
            "events",
        )
        .await;
    assert_eq!(exited.len(), 2);
    assert!(exited.iter().all(|e| e["data"]["fence_id"] == "depot"));

    // Trips: the motion_stopped summaries.
    let trips = t.walk(TOKEN, "/v1/trips?limit=1", "trips").await;
    assert_eq!(
        ids(&trips, "event_id"),
        db_order("WHERE type = 'vehicle.motion_stopped'").await
    );
    assert_eq!(trips.len(), 2, "{trips:?}");
    for trip in &trips {
        assert!(trip["distance_m"].as_f64().unwrap() > 500.0, "{trip}");
        assert!(
            trip["started_at"].is_string() && trip["stopped_at"].is_string(),
            "{trip}"
        );
    }
    let one = t.walk(TOKEN, "/v1/trips?vehicle_id=ev-1", "trips").await;
    assert_eq!(ids(&one, "vehicle_id"), ["ev-1"]);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_are_geojson_with_their_occupancy() {
    let t = ApiTest::start(&fleet(), |_| {}).await;
    let now = now_ms();
    t.send(
        &[
            ping("f-1", 1, now, IN_DEPOT),
            ping("f-2", 1, now, IN_DEPOT),
            ping("f-3", 1, now, (52.60, 13.60)),
            ping("f-4", 1, now, (52.0, 13.0)),
        ],
        4,
    )
    .await;
    t.wait_rows("vehicle_latest", 4).await;
    let (status, fences) = t.get(Some(TOKEN), "/v1/fences").await;
    assert_eq!(status, 200, "{fences}");
    assert_eq!(fences["type"], "FeatureCollection");
    let features = fences["features"].as_array().unwrap();
    assert_eq!(ids(features, "id"), ["depot", "yard"]);
    assert_eq!(features[0]["geometry"]["type"], "Polygon");
    assert_eq!(features[0]["properties"]["occupancy"], 2);
    assert_eq!(features[0]["properties"]["kind"], "depot");
    assert_eq!(features[1]["geometry"]["type"], "Point");
    assert_eq!(features[1]["properties"]["radius_m"], 200.0);
    assert_eq!(features[1]["properties"]["occupancy"], 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_parameter_is_a_400_naming_it() {
    let t = ApiTest::start(&fleet(), |api| {
        api.max_limit = 50;
        api.default_limit = 10;
    })
    .await;
    t.send(&[ping("van-1", 1, now_ms(), IN_DEPOT)], 1).await;
    t.settle_events().await;
    for (path, parameter) in [
        ("/v1/vehicles?bbox=1,2,3", "bbox"),
        ("/v1/vehicles?bbox=13,52,12,53", "bbox"),
        ("/v1/vehicles?bbox=13,52,14,91", "bbox"),
        ("/v1/vehicles?state=idle", "state"),
        ("/v1/vehicles?stale_after=soon", "stale_after"),
        ("/v1/vehicles?stale_after=0s", "stale_after"),
        ("/v1/vehicles?limit=0", "limit"),
        ("/v1/vehicles?limit=51", "limit"),
        ("/v1/vehicles?limit=ten", "limit"),
        ("/v1/vehicles?fence=", "fence"),
        ("/v1/vehicles?cursor=!!!", "cursor"),
        ("/v1/vehicles?cursor=eyJrIjoidmVoaWNsZXMifQ", "cursor"),
        ("/v1/vehicles?vehicle_id=van-1", "vehicle_id"),
        ("/v1/vehicles?limit=1&limit=2", "limit"),
        ("/v1/vehicles/van-1/track?from=yesterday", "from"),
        ("/v1/vehicles/van-1/track?to=2026-13-01T00:00:00Z", "to"),
        (
            "/v1/vehicles/van-1/track?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
        ),
        ("/v1/vehicles/van-1/track?max_points=1", "max_points"),
        ("/v1/vehicles/van-1/track?max_points=100000", "max_points"),
        ("/v1/vehicles/van-1/track?bbox=1,2,3,4", "bbox"),
        ("/v1/events?type=geofence.teleported", "type"),
        ("/v1/events?from=2026-01-01", "from"),
        (
            "/v1/events?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
        ),
        ("/v1/events?limit=-1", "limit"),
        ("/v1/events?cursor=abc", "cursor"),
        ("/v1/events?vehicle=van-1", "vehicle"),
        ("/v1/trips?type=vehicle.arrived", "type"),
        ("/v1/trips?cursor=e30", "cursor"),
        ("/v1/trips?to=now", "to"),
    ] {
        let (status, body) = t.get(Some(TOKEN), path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_parameter", "{path}: {body}");
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
        assert!(!body["detail"].as_str().unwrap().is_empty(), "{path}");
    }
    // A cursor of one list on another.
    let (_, page) = t.get(Some(TOKEN), "/v1/events?limit=1").await;
    let c = page["next_cursor"].as_str().expect("more than one event");
    let (status, body) = t.get(Some(TOKEN), &format!("/v1/trips?cursor={c}")).await;
    assert_eq!(
        (status.as_u16(), body["parameter"].as_str()),
        (400, Some("cursor")),
        "{body}"
    );
    // Bodies of POST /v1/share-links.
    for (body, parameter) in [
        (
            serde_json::json!({"vehicle_id": "van-1", "expires_in": "soon"}),
            "expires_in",
        ),
        (
            serde_json::json!({"vehicle_id": "van-1", "expires_in": "30d"}),
            "expires_in",
        ),
        (
            serde_json::json!({"vehicle_id": "", "expires_in": "1h"}),
            "vehicle_id",
        ),
        (serde_json::json!({"vehicle_id": "van-1"}), "body"),
        (
            serde_json::json!({"vehicle_id": "van-1", "expires_in": "1h", "scope": "fleet"}),
            "body",
        ),
    ] {
        let r = t
            .http
            .post(format!("{}/v1/share-links", t.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["parameter"], parameter, "{body}: {answer}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_and_each_is_served() {
    // With the live feed on, so that its two routes are served too.
    let t = ApiTest::start(&fleet(), |api| {
        api.feed = Some(fleetpipe_query::feed::FeedConfig::default());
    })
    .await;
    t.send(&[ping("van-1", 1, now_ms(), IN_DEPOT)], 1).await;
    let (status, doc) = t.get(Some(TOKEN), "/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 11, "{:?}", paths.keys());
    for (path, item) in paths {
        let url = path.replace("{id}", "van-1");
        for method in item.as_object().unwrap().keys() {
            let r = t
                .http
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{}{url}", t.base),
                )
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({"vehicle_id": "van-1", "expires_in": "1m"}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            // The feed's streams: served by their handlers (a WebSocket
            // route asked without an upgrade is 400, not the fallback's
            // 404); their bodies never end, so they are not read.
            if path == "/v1/feed" {
                assert_eq!(status, 400, "{method} {url}");
                continue;
            }
            if path == "/v1/feed/sse" {
                assert_eq!(status, 200, "{method} {url}");
                continue;
            }
            let body: Value = r.json().await.unwrap_or(Value::Null);
            // Served by its handler: not the fallback's "no such endpoint".
            assert!(
                [200, 201, 204].contains(&status)
                    || (status == 404
                        && method == "delete"
                        && body["detail"].as_str().unwrap().contains("share link")),
                "{method} {url}: {status} {body}"
            );
        }
    }
    // The request metrics name the route template.
    let metrics = t.p.metrics().await;
    assert!(
        metrics.contains(
            "fleetpipe_api_requests_total{route=\"/v1/vehicles/{id}/track\",status=\"200\"}"
        ),
        "{metrics}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_api_port_or_an_unreachable_database_fails_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    let mut api = fleetpipe_query::ApiConfig {
        listen: taken.local_addr().unwrap(),
        tokens: vec![fleetpipe_query::TokenConfig {
            name: "ops".into(),
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            scope: Some(fleetpipe_query::config::FleetScope::Fleet),
            vehicles: None,
            fences: None,
        }],
        ..fleetpipe_query::ApiConfig::new(common::api::PG)
    };
    config.api = Some(api.clone());
    let start = |config: fleetpipe::Config| async move {
        fleetpipe::Pipeline::start(&config, tokio_util::sync::CancellationToken::new())
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = start(config.clone()).await;
    assert!(e.contains("api.listen"), "{e}");
    // Nothing answers there: the start fails on the pool, not at the first
    // request.
    api.listen = "127.0.0.1:0".parse().unwrap();
    api.url = "postgresql://postgres@127.0.0.1:1/test".into();
    api.connect_timeout = Some(std::time::Duration::from_secs(1));
    config.api = Some(api);
    let e = start(config).await;
    assert!(e.starts_with("api: "), "{e}");
}
