//! Scripted tracks through the pure core ([`Tracker`]), asserting exact event
//! sequences: no tokio, no clock but the one the script gives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fleetpipe_enrich::{EnrichConfig, Tracker};
use fleetpipe_geofence::{FenceSet, GeofenceIndex, SharedIndex, shared};
use fleetpipe_model::{Accepted, Ack, Gateway, Origin, Ping, SinkRecord, VehicleId};
use serde_json::Value;

/// A depot about 111 m (north-south) by 108 m (east-west) in Berlin, with
/// arrival detection, and a customer fence far away.
const FENCES: &str = r#"{"type":"FeatureCollection","features":[
  {"type":"Feature","properties":{"id":"depot-7","name":"Depot 7","kind":"depot","arrival":true},
   "geometry":{"type":"Polygon","coordinates":[[[13.4000,52.5200],[13.4016,52.5200],[13.4016,52.5210],[13.4000,52.5210],[13.4000,52.5200]]]}},
  {"type":"Feature","properties":{"id":"customer-1","kind":"customer","radius_m":50},
   "geometry":{"type":"Point","coordinates":[13.5,52.6]}}]}"#;

/// Start of every script: 2026-11-23T08:00:00Z.
const T0: i64 = 1_795_420_800_000;
/// Degrees of longitude per metre at the depot's latitude.
const LON_PER_M: f64 = 1.0 / (111_320.0 * 0.608_7);
/// Degrees of latitude per metre.
const LAT_PER_M: f64 = 1.0 / 110_574.0;

fn fences() -> SharedIndex {
    let set = FenceSet::from_geojson_str(FENCES).unwrap();
    shared(GeofenceIndex::build(set, 50.0).unwrap())
}

fn tracker() -> Tracker {
    Tracker::new(&EnrichConfig::default(), fences()).unwrap()
}

/// One scripted ping.
#[derive(Clone)]
struct Step {
    ts: i64,
    seq: u64,
    lat: f64,
    lon: f64,
    speed_kmh: f64,
    received_at: i64,
}

fn accepted(vehicle: &str, s: &Step) -> Accepted {
    Accepted {
        ping: Ping {
            seq: Some(s.seq),
            speed_kmh: Some(s.speed_kmh),
            accuracy_m: Some(5.0),
            ..Ping::new(VehicleId::parse(vehicle).unwrap(), s.ts, s.lat, s.lon)
        },
        origin: Origin {
            gateway: Gateway::Mqtt,
            client: None,
            received_at: s.received_at,
        },
        ack: Ack::none(),
    }
}

/// What came out: telemetry records and events, in output order.
#[derive(Default)]
struct Output {
    /// (seq, flags) of each telemetry record.
    telemetry: Vec<(u64, Vec<String>)>,
    /// Each event as its CloudEvents JSON line.
    events: Vec<String>,
}

impl Output {
    fn take(&mut self, records: &mut Vec<SinkRecord>) {
        for record in records.drain(..) {
            match record {
                SinkRecord::Telemetry(t) => self.telemetry.push((
                    t.ping.seq.unwrap(),
                    t.enrichment.flags.names().map(str::to_owned).collect(),
                )),
                SinkRecord::Event(e) => self.events.push(e.to_json()),
                SinkRecord::DeadLetter(d) => panic!("dead letter from enrichment: {d:?}"),
            }
        }
    }

    /// `type` or `type:key` of each event (key = fence id or DTC code).
    fn types(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap();
                let t = v["type"].as_str().unwrap().to_owned();
                match v["data"]["fence_id"].as_str() {
                    Some(fence) => format!("{t}:{fence}"),
                    None => t,
                }
            })
            .collect()
    }

    fn of_type(&self, prefix: &str) -> Vec<Value> {
        self.events
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["type"].as_str().unwrap().starts_with(prefix))
            .collect()
    }
}

/// Feeds `steps` to `tracker` in the given order, then flushes.
fn run(tracker: &mut Tracker, vehicle: &str, steps: &[Step], out: &mut Output) {
    let mut records = Vec::new();
    for s in steps {
        tracker.ingest(accepted(vehicle, s), &mut records);
        out.take(&mut records);
    }
    tracker.flush(&mut records);
    out.take(&mut records);
}

/// A van: west of the depot, drives east into it at 36 km/h, parks in the
/// middle for 3 minutes (a little GPS jitter), then drives on east and out.
/// One ping every 5 s, received 300 ms after its device time.
fn van_track() -> Vec<Step> {
    let lat = 52.5205;
    let mut steps = Vec::new();
    let mut t = T0;
    let mut seq = 0;
    let mut push = |t: i64, lat: f64, lon: f64, speed: f64| {
        steps.push(Step {
            ts: t,
            seq,
            lat,
            lon,
            speed_kmh: speed,
            received_at: t + 300,
        });
        seq += 1;
    };
    // Parked 300 m west of the depot, then 55 m per 5 s (39.6 km/h) east.
    let mut lon = 13.4000 - 300.0 * LON_PER_M;
    push(t, lat, lon, 0.0);
    while lon < 13.4008 {
        t += 5_000;
        lon += 55.0 * LON_PER_M;
        push(t, lat, lon, 39.6);
    }
    // Parked 3 minutes, jittering by up to 3 m.
    let parked = lon;
    for i in 0..36 {
        t += 5_000;
        let j = f64::from(i % 3) - 1.0;
        push(
            t,
            lat + 3.0 * j * LAT_PER_M,
            parked + 2.0 * j * LON_PER_M,
            0.0,
        );
    }
    // Drive on east, well out of the depot.
    for _ in 0..10 {
        t += 5_000;
        lon += 55.0 * LON_PER_M;
        push(t, lat, lon, 39.6);
    }
    steps
}

#[test]
fn a_van_entering_stopping_and_leaving_a_depot_gives_the_exact_story() {
    let mut out = Output::default();
    run(&mut tracker(), "van-42", &van_track(), &mut out);
    assert_eq!(
        out.types(),
        [
            "vehicle.online",
            "vehicle.state_changed", // offline > parked
            "vehicle.motion_started",
            "vehicle.state_changed", // parked > moving
            "geofence.entered:depot-7",
            "vehicle.arrived:depot-7",
            "vehicle.motion_stopped",
            "vehicle.state_changed", // moving > parked
            // Leaving: one ping is 50 m from where the van stood and 25 m
            // beyond the fence; the overall state comes last in a ping.
            "vehicle.motion_started",
            "vehicle.departed:depot-7",
            "geofence.exited:depot-7",
            "vehicle.state_changed", // parked > moving
        ],
        "{:#?}",
        out.events
    );
    let changes: Vec<(String, String)> = out
        .of_type("vehicle.state_changed")
        .iter()
        .map(|v| {
            (
                v["data"]["from"].as_str().unwrap().into(),
                v["data"]["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    let pairs = [
        ("offline", "parked"),
        ("parked", "moving"),
        ("moving", "parked"),
        ("parked", "moving"),
    ];
    assert_eq!(changes, pairs.map(|(a, b)| (a.to_owned(), b.to_owned())));

    // Times are device times of the causing pings, and in order.
    let times: Vec<String> = out
        .events
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["time"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);

    // Arrival a minute after stopping; the trip had its distance and speed.
    let arrived = &out.of_type("vehicle.arrived")[0];
    let stopped = &out.of_type("vehicle.motion_stopped")[0];
    assert_eq!(stopped["data"]["max_speed_kmh"], 39.6);
    let distance = stopped["data"]["distance_m"].as_f64().unwrap();
    assert!((340.0..420.0).contains(&distance), "{distance}");
    let departed = &out.of_type("vehicle.departed")[0];
    let stay = departed["data"]["stay_s"].as_f64().unwrap();
    assert!((100.0..200.0).contains(&stay), "{stay}");
    assert_eq!(arrived["subject"], "van-42");
    assert_eq!(arrived["source"], "fleetpipe");
    // No record is flagged on a clean track.
    assert!(out.telemetry.iter().all(|(_, flags)| flags.is_empty()));
}

#[test]
fn jitter_along_a_depot_boundary_gives_one_enter_and_one_exit() {
    let lat = 52.5205;
    let edge = 13.4016; // the depot's east edge
    let mut steps = Vec::new();
    let mut t = T0;
    // Parked on the edge for 10 minutes, fixes alternating 8 m outside and
    // 8 m inside, every 10 s.
    for i in 0..60u64 {
        let side = if i % 2 == 0 { 8.0 } else { -8.0 };
        steps.push(Step {
            ts: t,
            seq: i,
            lat,
            lon: edge + side * LON_PER_M,
            speed_kmh: 0.0,
            received_at: t + 100,
        });
        t += 10_000;
    }
    // Then drives 200 m east.
    for i in 0..5u64 {
        steps.push(Step {
            ts: t,
            seq: 60 + i,
            lat,
            lon: edge + 40.0 * (i + 1) as f64 * LON_PER_M,
            speed_kmh: 30.0,
            received_at: t + 100,
        });
        t += 5_000;
    }
    let mut out = Output::default();
    run(&mut tracker(), "van-1", &steps, &mut out);
    let fence_events: Vec<String> = out
        .types()
        .into_iter()
        .filter(|t| t.starts_with("geofence."))
        .collect();
    assert_eq!(
        fence_events,
        ["geofence.entered:depot-7", "geofence.exited:depot-7"]
    );
}

#[test]
fn a_tunnel_gap_uploaded_late_gives_no_out_of_order_enter_or_exit() {
    // Live pings stop west of the depot; the vehicle crosses the depot in a
    // tunnel while the phone buffers; live pings resume east of it; then the
    // buffered pings arrive.
    let lat = 52.5205;
    let step = |seq: u64, dt_s: i64, metres_east: f64, received_at: i64| Step {
        ts: T0 + dt_s * 1000,
        seq,
        lat,
        lon: 13.4000 + metres_east * LON_PER_M,
        speed_kmh: 36.0,
        received_at,
    };
    let wall = T0 + 3_600_000; // the upload comes an hour later
    let mut steps = vec![step(0, 0, -300.0, T0), step(1, 10, -200.0, T0 + 10_000)];
    // Resumed live, east of the depot.
    for (i, dt) in [40, 50, 60, 70].into_iter().enumerate() {
        let i = i as u64;
        steps.push(step(10 + i, dt, 200.0 + 100.0 * (i as f64), T0 + dt * 1000));
    }
    // The tunnel's buffered pings, through the depot, uploaded late.
    for (i, (dt, east)) in [
        (20, -100.0),
        (25, 0.0),
        (28, 50.0),
        (31, 100.0),
        (35, 150.0),
    ]
    .into_iter()
    .enumerate()
    {
        steps.push(step(2 + i as u64, dt, east, wall + i as i64));
    }
    let mut out = Output::default();
    run(&mut tracker(), "van-2", &steps, &mut out);
    let fence_events = out.of_type("geofence.");
    assert!(fence_events.is_empty(), "{fence_events:#?}");
    for (seq, flags) in &out.telemetry {
        let expected: &[&str] = if (2..=6).contains(seq) {
            &["late"]
        } else {
            &[]
        };
        assert_eq!(flags, expected, "seq {seq}");
    }
    assert_eq!(out.telemetry.len(), steps.len(), "every ping is stored");
}

#[test]
fn buffered_data_uploaded_before_live_data_drives_the_state_in_order() {
    // The same tunnel, but the phone uploads its buffer before going live
    // again: the pings are in order, so the depot visit is told, in order.
    let lat = 52.5205;
    let wall = T0 + 600_000;
    let steps: Vec<Step> = [
        (0, -300.0),
        (10, -200.0),
        (20, -100.0),
        (25, 0.0),
        (28, 50.0),
        (31, 100.0),
        (35, 150.0),
        (40, 250.0),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (dt, east))| Step {
        ts: T0 + dt * 1000,
        seq: i as u64,
        lat,
        lon: 13.4000 + east * LON_PER_M,
        speed_kmh: 36.0,
        received_at: if i < 2 {
            T0 + dt * 1000
        } else {
            wall + i as i64
        },
    })
    .collect();
    let mut out = Output::default();
    run(&mut tracker(), "van-3", &steps, &mut out);
    let fence: Vec<String> = out
        .types()
        .into_iter()
        .filter(|t| t.starts_with("geofence."))
        .collect();
    assert_eq!(
        fence,
        ["geofence.entered:depot-7", "geofence.exited:depot-7"]
    );
    assert!(out.telemetry.iter().all(|(_, f)| f.is_empty()));
}

#[test]
fn out_of_order_pings_within_the_window_are_put_back_in_order() {
    let track = van_track();
    // Swap neighbours pairwise in arrival order (device times unchanged).
    // They are 5 s apart in device time, so a 10 s window reorders them.
    let mut shuffled = track.clone();
    for pair in shuffled.chunks_mut(2) {
        if pair.len() == 2 {
            let (a, b) = (pair[0].received_at, pair[1].received_at);
            pair.swap(0, 1);
            pair[0].received_at = a;
            pair[1].received_at = b;
        }
    }
    let config = EnrichConfig {
        reorder_window: std::time::Duration::from_secs(10),
        ..EnrichConfig::default()
    };
    let mut in_order = Output::default();
    run(
        &mut Tracker::new(&config, fences()).unwrap(),
        "van-4",
        &track,
        &mut in_order,
    );
    let mut reordered = Output::default();
    run(
        &mut Tracker::new(&config, fences()).unwrap(),
        "van-4",
        &shuffled,
        &mut reordered,
    );
    assert_eq!(reordered.events, in_order.events);
    assert!(
        reordered.telemetry.iter().all(|(_, f)| f.is_empty()),
        "none is late"
    );
}

#[test]
fn a_duplicated_ping_gives_no_duplicate_event() {
    let track = van_track();
    let mut once = Output::default();
    run(&mut tracker(), "van-5", &track, &mut once);

    // Every ping twice in a row, and a few again much later.
    let mut doubled: Vec<Step> = track.iter().flat_map(|s| [s.clone(), s.clone()]).collect();
    for s in track.iter().step_by(9) {
        let mut again = s.clone();
        again.received_at = track.last().unwrap().received_at + 1;
        doubled.push(again);
    }
    let mut twice = Output::default();
    run(&mut tracker(), "van-5", &doubled, &mut twice);
    assert_eq!(twice.events, once.events, "same events, same ids");
    let duplicates = twice
        .telemetry
        .iter()
        .filter(|(_, f)| f.iter().any(|f| f == "duplicate"))
        .count();
    // The immediate copies are recognised as duplicates; the much later
    // copies of old pings are flagged late (or duplicate) and change nothing.
    assert!(duplicates >= track.len(), "{duplicates}");
    assert_eq!(twice.telemetry.len(), doubled.len(), "every copy is stored");
}

#[test]
fn the_same_input_replayed_gives_byte_identical_events() {
    let track = van_track();
    let mut first = Output::default();
    run(&mut tracker(), "van-6", &track, &mut first);
    let mut second = Output::default();
    run(&mut tracker(), "van-6", &track, &mut second);
    assert!(!first.events.is_empty());
    assert_eq!(
        first.events.join("\n").as_bytes(),
        second.events.join("\n").as_bytes()
    );
}

#[test]
fn a_silent_vehicle_goes_offline_on_time_and_comes_back() {
    let mut tracker = tracker();
    let mut records = Vec::new();
    let mut out = Output::default();
    let last = Step {
        ts: T0,
        seq: 0,
        lat: 52.5,
        lon: 13.3,
        speed_kmh: 0.0,
        received_at: T0 + 500,
    };
    tracker.ingest(accepted("van-7", &last), &mut records);
    tracker.flush(&mut records);
    out.take(&mut records);
    let before = out.events.len();
    // offline_after is 5 minutes (wall time, from the last receipt).
    tracker.tick(T0 + 500 + 299_999, &mut records);
    out.take(&mut records);
    assert_eq!(out.events.len(), before, "not yet");
    tracker.tick(T0 + 500 + 300_000, &mut records);
    out.take(&mut records);
    let offline = out.of_type("vehicle.offline");
    assert_eq!(offline.len(), 1);
    // Its time is device time: the last ping's plus the timeout.
    assert_eq!(offline[0]["time"], "2026-11-23T08:05:00.000Z");
    assert_eq!(
        offline[0]["data"]["last_ping_at"],
        "2026-11-23T08:00:00.000Z"
    );
    let last_change = out.of_type("vehicle.state_changed").pop().unwrap();
    assert_eq!(last_change["data"]["to"], "offline");
    // Ticking again does not repeat it.
    tracker.tick(T0 + 3_600_000, &mut records);
    out.take(&mut records);
    assert_eq!(out.of_type("vehicle.offline").len(), 1);

    // Back an hour later.
    let back = Step {
        ts: T0 + 3_600_000,
        seq: 1,
        received_at: T0 + 3_600_100,
        ..last
    };
    tracker.ingest(accepted("van-7", &back), &mut records);
    tracker.flush(&mut records);
    out.take(&mut records);
    let online = out.of_type("vehicle.online");
    assert_eq!(online.len(), 2);
    assert_eq!(
        online[1]["data"]["offline_since"],
        "2026-11-23T08:05:00.000Z"
    );
}

#[test]
fn a_replay_without_timers_still_tells_the_offline_period() {
    // The same silence, but nothing ticks (e.g. a replay from files): the
    // next ping's receive time shows the gap, and the events are the same.
    let mut tracker = tracker();
    let mut records = Vec::new();
    let mut out = Output::default();
    let first = Step {
        ts: T0,
        seq: 0,
        lat: 52.5,
        lon: 13.3,
        speed_kmh: 0.0,
        received_at: T0 + 500,
    };
    let back = Step {
        ts: T0 + 3_600_000,
        seq: 1,
        received_at: T0 + 3_600_100,
        ..first.clone()
    };
    tracker.ingest(accepted("van-8", &first), &mut records);
    tracker.ingest(accepted("van-8", &back), &mut records);
    tracker.flush(&mut records);
    out.take(&mut records);
    let offline = out.of_type("vehicle.offline");
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0]["time"], "2026-11-23T08:05:00.000Z");
    assert_eq!(out.of_type("vehicle.online").len(), 2);
}

#[test]
fn a_restart_in_the_middle_gives_no_duplicate_enter_and_the_same_story() {
    let track = van_track();
    let mut uninterrupted = Output::default();
    run(&mut tracker(), "van-9", &track, &mut uninterrupted);

    // Stop after the van entered the depot (step 8), checkpoint, restore into
    // a new tracker, go on.
    let (before, after) = track.split_at(9);
    let mut first = tracker();
    let mut out = Output::default();
    run(&mut first, "van-9", before, &mut out);
    assert!(out.types().contains(&"geofence.entered:depot-7".to_owned()));
    let checkpoint = first.snapshot_all();
    drop(first);
    let mut second = tracker();
    for (vehicle, json) in checkpoint {
        second
            .restore(vehicle, &json, after[0].received_at)
            .unwrap();
    }
    run(&mut second, "van-9", after, &mut out);
    let enters = out
        .types()
        .iter()
        .filter(|t| t.starts_with("geofence.entered"))
        .count();
    assert_eq!(enters, 1);
    assert_eq!(out.events, uninterrupted.events);
}

#[test]
fn one_vehicle_state_is_small() {
    // The checkpoint of a vehicle in a fence, mid-trip, is well under 1 KiB.
    let mut t = tracker();
    let mut out = Output::default();
    run(&mut t, "van-10", &van_track()[..12], &mut out);
    let snapshot = t.snapshot_all();
    assert_eq!(snapshot.len(), 1);
    assert!(snapshot[0].1.len() < 1024, "{}", snapshot[0].1);
}
