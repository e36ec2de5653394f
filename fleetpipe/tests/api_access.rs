//! Who may read what, attacked through the query API's real interface: no
//! token, wrong tokens, a token for vehicle A reaching for B by every
//! route, a fence-scoped token reaching outside its fences, and share links
//! read before their start, after their expiry, after revocation, for
//! another vehicle, forged, and used to make more share links.
//!
//! The rule under test: what a token may not see does not exist for it (404
//! like an unknown vehicle, left out of lists), and a share link sees one
//! vehicle within its window only.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::api::{ApiTest, IN_DEPOT, Scope, ids, ping};
use common::now_ms;
use serde_json::Value;

const FLEET: &str = "fleet-token";
const A_ONLY: &str = "token-of-a";
const DEPOT_ONLY: &str = "token-of-the-depot";

/// `a-1` stands in the depot, `b-1` east of it (and in the yard); both
/// have a track of ten pings and their events.
async fn two_vehicles() -> ApiTest {
    let t = ApiTest::start(
        &[
            ("dispatch", FLEET, Scope::Fleet),
            ("customer-a", A_ONLY, Scope::Vehicles(&["a-1"])),
            ("depot-staff", DEPOT_ONLY, Scope::Fences(&["depot"])),
        ],
        |api| api.share_max_lifetime = Duration::from_secs(3600),
    )
    .await;
    let start = now_ms() - 600_000;
    let mut pings = Vec::new();
    for i in 0..10u64 {
        pings.push(ping("a-1", i, start + i as i64 * 1000, IN_DEPOT));
        // b-1 drives from the depot into the yard, so it has depot events
        // (entered, exited) and yard events.
        let at = if i < 3 { IN_DEPOT } else { (52.60, 13.60) };
        let mut p = ping("b-1", i, start + i as i64 * 1000, at);
        p["dtcs"] = serde_json::json!(["P0420"]);
        pings.push(p);
    }
    t.send(&pings, 20).await;
    t.wait_rows("vehicle_latest", 2).await;
    t.settle_events().await;
    t
}

/// The 404 body of an unknown vehicle, to compare a hidden one with.
async fn unknown_vehicle_answer(t: &ApiTest, token: &str) -> (u16, Value) {
    let (status, body) = t.get(Some(token), "/v1/vehicles/no-such-vehicle").await;
    let detail = body["detail"]
        .as_str()
        .unwrap()
        .replace("no-such-vehicle", "b-1");
    (
        status.as_u16(),
        serde_json::json!({"error": body["error"], "detail": detail}),
    )
}

const ROUTES: [&str; 7] = [
    "/v1/vehicles",
    "/v1/vehicles/a-1",
    "/v1/vehicles/a-1/track",
    "/v1/events",
    "/v1/trips",
    "/v1/fences",
    "/v1/openapi.json",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_nothing_is_readable() {
    let t = two_vehicles().await;
    let forged_share = format!("fps_{}", "A".repeat(43));
    let hash_of_fleet = {
        use sha2::Digest as _;
        sha2::Sha256::digest(FLEET.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    for route in ROUTES {
        let (status, body) = t.get(None, route).await;
        assert_eq!(status, 401, "{route} without a token: {body}");
        assert_eq!(body["error"], "unauthorized");
        for wrong in [
            "nope",
            "fleet-token-",
            "FLEET-TOKEN",
            "fleet-toke",
            hash_of_fleet.as_str(),
            forged_share.as_str(),
        ] {
            let (status, body) = t.get(Some(wrong), route).await;
            assert_eq!(status, 401, "{route} with {wrong:?}: {body}");
            assert!(body.to_string().contains("unauthorized"));
        }
        // Another scheme, or the token as a query parameter, is no bearer
        // token.
        let r = t
            .http
            .get(format!("{}{route}", t.base))
            .basic_auth(FLEET, None::<&str>)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{route} with Basic");
        assert!(r.headers().contains_key("www-authenticate"));
        let (status, _) = t.get(None, &format!("{route}?token={FLEET}")).await;
        assert_eq!(status, 401, "{route}?token=");
    }
    let r = t
        .http
        .post(format!("{}/v1/share-links", t.base))
        .json(&serde_json::json!({"vehicle_id": "a-1", "expires_in": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_token_never_sees_another_vehicle() {
    let t = two_vehicles().await;
    // The fleet token sees both: the data is there to be hidden.
    let (_, all) = t.get(Some(FLEET), "/v1/vehicles").await;
    assert_eq!(
        ids(all["vehicles"].as_array().unwrap(), "vehicle_id"),
        ["a-1", "b-1"]
    );
    let (status, _) = t.get(Some(FLEET), "/v1/vehicles/b-1").await;
    assert_eq!(status, 200);

    // Single vehicle, track: exactly the answer of a vehicle that does not
    // exist.
    let unknown = unknown_vehicle_answer(&t, A_ONLY).await;
    assert_eq!(unknown.0, 404);
    for path in ["/v1/vehicles/b-1", "/v1/vehicles/b-1/track"] {
        let (status, body) = t.get(Some(A_ONLY), path).await;
        assert_eq!((status.as_u16(), body), unknown, "{path}");
    }
    let (status, _) = t.get(Some(A_ONLY), "/v1/vehicles/a-1").await;
    assert_eq!(status, 200);
    let (status, track) = t
        .get(
            Some(A_ONLY),
            "/v1/vehicles/a-1/track?from=2000-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(
        (status.as_u16(), track["properties"]["points_read"].as_u64()),
        (200, Some(10))
    );

    // Lists: B is left out, whatever the filter asks for.
    for path in [
        "/v1/vehicles",
        "/v1/vehicles?bbox=13.0,52.0,14.0,53.0",
        "/v1/vehicles?bbox=13.59,52.59,13.61,52.61",
        "/v1/vehicles?fence=yard",
        "/v1/vehicles?state=parked",
    ] {
        let got = t
            .walk(
                A_ONLY,
                &format!(
                    "{path}{}limit=1",
                    if path.contains('?') { '&' } else { '?' }
                ),
                "vehicles",
            )
            .await;
        assert!(
            ids(&got, "vehicle_id").iter().all(|v| v == "a-1"),
            "{path}: {got:?}"
        );
    }
    let b_events = t
        .walk(FLEET, "/v1/events?vehicle_id=b-1&limit=50", "events")
        .await;
    assert!(!b_events.is_empty(), "b-1 has events");
    for path in [
        "/v1/events?vehicle_id=b-1",
        "/v1/events?fence=yard",
        "/v1/events",
        "/v1/trips?vehicle_id=b-1",
    ] {
        let key = if path.starts_with("/v1/trips") {
            "trips"
        } else {
            "events"
        };
        let got = t
            .walk(
                A_ONLY,
                &format!(
                    "{path}{}limit=2",
                    if path.contains('?') { '&' } else { '?' }
                ),
                key,
            )
            .await;
        assert!(
            ids(&got, "vehicle_id").iter().all(|v| v == "a-1"),
            "{path}: {got:?}"
        );
    }
    let mine = t.walk(A_ONLY, "/v1/events?limit=50", "events").await;
    assert!(!mine.is_empty(), "a-1's own events are readable");
    // Occupancy counts only what the token sees: b-1 is not in the yard
    // for it.
    let (_, fences) = t.get(Some(A_ONLY), "/v1/fences").await;
    let occupancy = |fences: &Value, id: &str| {
        fences["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| f["properties"]["occupancy"].as_i64().unwrap())
    };
    assert_eq!(occupancy(&fences, "yard"), Some(0));
    assert_eq!(occupancy(&fences, "depot"), Some(1));
    let (_, fences) = t.get(Some(FLEET), "/v1/fences").await;
    assert_eq!(occupancy(&fences, "yard"), Some(1));

    // Share links: not for a vehicle the token cannot see.
    let (status, _) = t.share(A_ONLY, "b-1", "1h").await;
    assert_eq!(status, 404);
    let (status, _) = t.share(A_ONLY, "a-1", "1h").await;
    assert_eq!(status, 201);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_token_sees_only_vehicles_in_its_fences_and_what_happened_there() {
    let t = two_vehicles().await;
    let (_, list) = t.get(Some(DEPOT_ONLY), "/v1/vehicles").await;
    assert_eq!(
        ids(list["vehicles"].as_array().unwrap(), "vehicle_id"),
        ["a-1"]
    );
    let unknown = unknown_vehicle_answer(&t, DEPOT_ONLY).await;
    for path in ["/v1/vehicles/b-1", "/v1/vehicles/b-1/track"] {
        let (status, body) = t.get(Some(DEPOT_ONLY), path).await;
        assert_eq!((status.as_u16(), body), unknown, "{path}");
    }
    // Events: only those of the depot (b-1's entering and leaving it
    // included), never the yard's.
    let events = t.walk(DEPOT_ONLY, "/v1/events?limit=3", "events").await;
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e["data"]["fence_id"] == "depot"),
        "{events:?}"
    );
    let yard = t.walk(DEPOT_ONLY, "/v1/events?fence=yard", "events").await;
    assert!(yard.is_empty(), "{yard:?}");
    let (_, fleet_yard) = t.get(Some(FLEET), "/v1/events?fence=yard").await;
    assert!(
        !fleet_yard["events"].as_array().unwrap().is_empty(),
        "the yard has events"
    );
    // Fences: only its own.
    let (_, fences) = t.get(Some(DEPOT_ONLY), "/v1/fences").await;
    assert_eq!(ids(fences["features"].as_array().unwrap(), "id"), ["depot"]);
    // b-1's open code is there, for the fleet token.
    let (_, b) = t.get(Some(FLEET), "/v1/vehicles/b-1").await;
    assert_eq!(b["open_dtcs"][0]["code"], "P0420", "{b}");

    // c-1 drives into the depot: visible now, and of its track only the
    // points inside the depot.
    let start = now_ms() - 60_000;
    let pings: Vec<Value> = (0..6u64)
        .map(|i| {
            let at = if i < 4 { (52.505, 13.45) } else { IN_DEPOT };
            ping("c-1", i, start + i as i64 * 1000, at)
        })
        .collect();
    t.send(&pings, 26).await;
    t.wait_rows("vehicle_latest", 3).await;
    let track = "/v1/vehicles/c-1/track?from=2000-01-01T00:00:00Z";
    let (status, mine) = t.get(Some(DEPOT_ONLY), track).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["properties"]["points_read"], 2, "{mine}");
    let (_, all) = t.get(Some(FLEET), track).await;
    assert_eq!(all["properties"]["points_read"], 6, "{all}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_link_reads_its_vehicle_within_its_window_only() {
    let t = two_vehicles().await;
    // Made after a-1's ten pings: its window starts now.
    let (status, link) = t.share(FLEET, "a-1", "1h").await;
    assert_eq!(status, 201, "{link}");
    let token = link["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("fps_"));
    // Only a hash is stored.
    let stored: i64 = t
        .db
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\".api_share_links WHERE token_sha256 = sha256($1::bytea) AND id = $2",
                t.schema
            ),
            &[&token.as_bytes(), &link["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);

    // Before any ping in its window: the vehicle, without its position
    // (older than the link), no history.
    let (status, v) = t.get(Some(&token), "/v1/vehicles/a-1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["position"], Value::Null, "{v}");
    assert_eq!(v["fences"], Value::Null);
    assert_eq!(v["last_event"], Value::Null, "{v}");
    let (_, track) = t
        .get(
            Some(&token),
            "/v1/vehicles/a-1/track?from=2000-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(track["properties"]["points_read"], 0, "{track}");
    let (_, events) = t
        .get(Some(&token), "/v1/events?from=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(events["events"], serde_json::json!([]), "{events}");

    // New pings in its window are visible; the old ones stay hidden.
    let now = now_ms();
    t.send(
        &[
            ping("a-1", 100, now, (52.52, 13.42)),
            ping("a-1", 101, now + 1000, (52.521, 13.421)),
        ],
        22,
    )
    .await;
    t.wait_rows("vehicle_latest", 2).await;
    let (_, v) = t.get(Some(&token), "/v1/vehicles/a-1").await;
    assert_eq!(v["position"]["lat"], 52.521, "{v}");
    let (_, track) = t
        .get(
            Some(&token),
            "/v1/vehicles/a-1/track?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(track["properties"]["points_read"], 2, "{track}");
    let (_, fleet_track) = t
        .get(
            Some(FLEET),
            "/v1/vehicles/a-1/track?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(fleet_track["properties"]["points_read"], 12);
    t.settle_events().await;
    let events = t.walk(&token, "/v1/events?limit=2", "events").await;
    let start = link["created_at"].as_str().unwrap();
    let start =
        time::OffsetDateTime::parse(start, &time::format_description::well_known::Rfc3339).unwrap();
    for e in &events {
        assert_eq!(e["vehicle_id"], "a-1");
        let at = time::OffsetDateTime::parse(
            e["time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(at >= start, "an event before the link: {e}");
    }

    // Another vehicle does not exist for it; lists and fences are not for it.
    for path in ["/v1/vehicles/b-1", "/v1/vehicles/b-1/track"] {
        let (status, body) = t.get(Some(&token), path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    for path in ["/v1/events?vehicle_id=b-1", "/v1/trips?vehicle_id=b-1"] {
        let (status, body) = t.get(Some(&token), path).await;
        assert_eq!(status, 200);
        let key = if path.starts_with("/v1/trips") {
            "trips"
        } else {
            "events"
        };
        assert_eq!(body[key], serde_json::json!([]), "{path}");
    }
    for path in [
        "/v1/vehicles",
        "/v1/vehicles?bbox=13.0,52.0,14.0,53.0",
        "/v1/fences",
    ] {
        let (status, body) = t.get(Some(&token), path).await;
        assert_eq!(
            (status.as_u16(), body["error"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
    }
    // It cannot make or revoke share links, for its vehicle or any other.
    for vehicle in ["a-1", "b-1"] {
        let (status, _) = t.share(&token, vehicle, "1h").await;
        assert_eq!(status, 403, "{vehicle}");
    }
    assert_eq!(t.revoke(&token, link["id"].as_str().unwrap()).await, 403);
    // A forged token next to it: one character changed, or cut.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for wrong in [forged.as_str(), &token[..token.len() - 1], &token[4..]] {
        let (status, _) = t.get(Some(wrong), "/v1/vehicles/a-1").await;
        assert_eq!(status, 401, "{wrong}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_link_stops_at_its_expiry_and_at_revocation() {
    let t = two_vehicles().await;
    let (status, short) = t.share(FLEET, "a-1", "2s").await;
    assert_eq!(status, 201, "{short}");
    let short = short["token"].as_str().unwrap().to_owned();
    let (_, long) = t.share(A_ONLY, "a-1", "1h").await;
    let long_id = long["id"].as_str().unwrap().to_owned();
    let long = long["token"].as_str().unwrap().to_owned();
    let (_, other) = t.share(FLEET, "b-1", "1h").await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    for token in [&short, &long] {
        let (status, _) = t.get(Some(token), "/v1/vehicles/a-1").await;
        assert_eq!(status, 200);
    }

    // Expired: 401 everywhere, as an unknown token.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for route in ["/v1/vehicles/a-1", "/v1/vehicles/a-1/track", "/v1/events"] {
        let (status, body) = t.get(Some(&short), route).await;
        assert_eq!(status, 401, "{route}: {body}");
    }

    // Revoked: a token that does not see its vehicle cannot revoke it
    // (and learns nothing: 404); its creator can, and from then on it is
    // 401. Revoking again is no error.
    assert_eq!(t.revoke(A_ONLY, &other_id).await, 404);
    assert_eq!(t.revoke(DEPOT_ONLY, "no-such-link").await, 404);
    let (status, _) = t.get(Some(&long), "/v1/vehicles/a-1").await;
    assert_eq!(status, 200);
    assert_eq!(t.revoke(A_ONLY, &long_id).await, 204);
    for route in ["/v1/vehicles/a-1", "/v1/vehicles/a-1/track", "/v1/events"] {
        let (status, _) = t.get(Some(&long), route).await;
        assert_eq!(status, 401, "{route}");
    }
    assert_eq!(t.revoke(A_ONLY, &long_id).await, 204);
    // The fleet token may revoke any link.
    assert_eq!(t.revoke(FLEET, &other_id).await, 204);
    t.stop().await;
}
