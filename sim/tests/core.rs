//! The simulation core against fleetpipe's own rules: its decoder and
//! validator accept every message, and its geofence index sees the vehicles
//! visit the fences the city exports. No tokio, no network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use fleetpipe_geofence::{DEFAULT_CELL_SIZE_M, FenceKind, FenceSet, GeofenceIndex};
use fleetpipe_ingest::codec::{self, VehicleScope};
use fleetpipe_ingest::validate::{ValidationConfig, Validator};
use fleetpipe_sim::{Encoding, Fleet, SimConfig, SimMessage, encode};

/// 2026-11-23T08:00:00Z.
const START: i64 = 1_795_420_800_000;

fn run(cfg: &SimConfig, minutes: i64) -> (Fleet, Vec<SimMessage>) {
    let mut fleet = Fleet::new(cfg, START).unwrap();
    let mut out = Vec::new();
    fleet.advance(minutes * 60_000, &mut out);
    (fleet, out)
}

fn bytes(out: &[SimMessage], encoding: Encoding) -> Vec<u8> {
    out.iter()
        .flat_map(|m| encode(m, encoding).to_vec())
        .collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let cfg = SimConfig {
        vehicles: 40,
        ..SimConfig::default()
    };
    let (_, a) = run(&cfg, 30);
    let (_, b) = run(&cfg, 30);
    assert!(a.len() > 10_000, "{} messages", a.len());
    assert_eq!(bytes(&a, Encoding::Json), bytes(&b, Encoding::Json));
    assert_eq!(bytes(&a, Encoding::Protobuf), bytes(&b, Encoding::Protobuf));
    let (_, c) = run(&SimConfig { seed: 2, ..cfg }, 30);
    assert_ne!(bytes(&a, Encoding::Json), bytes(&c, Encoding::Json));
}

#[test]
fn every_message_is_accepted_by_fleetpipe() {
    let cfg = SimConfig {
        vehicles: 25,
        // Plenty of faults and batches, to validate those shapes too.
        dtcs_per_hour: 4.0,
        silences_per_hour: 4.0,
        ..SimConfig::default()
    };
    let validator = Validator::new(ValidationConfig::default());
    for pings_per_message in [1, 7] {
        let (fleet, out) = run(
            &SimConfig {
                pings_per_message,
                ..cfg.clone()
            },
            90,
        );
        // Received right after the last simulated moment.
        let now = fleet.now_ms() + 100;
        let mut pings = 0;
        for msg in &out {
            for encoding in [Encoding::Json, Encoding::Protobuf] {
                let payload = encode(msg, encoding);
                let enc = match encoding {
                    Encoding::Json => codec::Encoding::Json,
                    Encoding::Protobuf => codec::Encoding::Protobuf,
                };
                let decoded = codec::decode_message(
                    &payload,
                    enc,
                    VehicleScope::Topic(&msg.vehicle_id),
                    &validator,
                    now,
                )
                .unwrap_or_else(|r| panic!("message refused: {r}"));
                assert_eq!(decoded.len(), msg.pings.len());
                for (got, want) in decoded.iter().zip(&msg.pings) {
                    let p = got.as_ref().unwrap_or_else(|r| panic!("ping refused: {r}"));
                    assert_eq!((p.seq, p.ts_ms), (Some(want.seq), want.ts_ms));
                    assert_eq!((p.lat, p.lon), (want.lat, want.lon));
                    assert_eq!(p.dtcs.len(), usize::from(want.dtc.is_some()));
                }
            }
            pings += msg.pings.len();
        }
        assert!(pings > 20_000, "{pings} pings");
    }
}

#[test]
fn the_geojson_loads_and_matches_the_city() {
    let (fleet, _) = run(&SimConfig::default(), 0);
    let set = FenceSet::from_geojson_str(&fleet.city().geofences_geojson()).unwrap();
    assert_eq!(set.len(), fleet.city().places().len() + 1);
    let kinds = |k: FenceKind| set.fences().iter().filter(|f| f.kind == k).count();
    assert_eq!(kinds(FenceKind::Depot), 2);
    assert_eq!(kinds(FenceKind::Customer), 200);
    assert_eq!(kinds(FenceKind::ChargingStation), 6);
    let zone = set
        .fences()
        .iter()
        .find(|f| f.kind == FenceKind::Restricted)
        .unwrap();
    assert_eq!(zone.speed_limit_kmh, Some(20.0));
    assert!(
        set.fences()
            .iter()
            .all(|f| f.kind == FenceKind::Restricted || f.arrival)
    );
    for p in fleet.city().places() {
        let fence = set.fences().iter().find(|f| f.id == p.id).unwrap();
        assert!(
            fence.contains(p.lat, p.lon),
            "{} misses its own place",
            p.id
        );
    }
}

#[test]
fn vehicles_stop_at_depots_customers_and_chargers() {
    let cfg = SimConfig {
        vehicles: 30,
        // Low batteries, so chargers are visited within the run.
        start_soc_pct: [28.0, 40.0],
        ..SimConfig::default()
    };
    let (fleet, out) = run(&cfg, 120);
    let set = FenceSet::from_geojson_str(&fleet.city().geofences_geojson()).unwrap();
    let index = GeofenceIndex::build(set, DEFAULT_CELL_SIZE_M).unwrap();
    // Stopped, ignition-off pings per fence kind, and vehicles seen there.
    let mut stopped: HashMap<&str, usize> = HashMap::new();
    let mut charging_at_charger = 0;
    let mut in_zone = 0;
    let mut fences = Vec::new();
    for msg in &out {
        for p in &msg.pings {
            index.lookup_into(p.lat, p.lon, &mut fences);
            for id in &fences {
                let fence = index.fence(*id).unwrap();
                let kind = match fence.kind {
                    FenceKind::Depot => "depot",
                    FenceKind::Customer => "customer",
                    FenceKind::ChargingStation => "charger",
                    FenceKind::Restricted => {
                        in_zone += 1;
                        continue;
                    }
                    _ => continue,
                };
                if p.speed_kmh == 0.0 && !p.ignition {
                    *stopped.entry(kind).or_default() += 1;
                    if kind == "charger" && p.charging {
                        charging_at_charger += 1;
                    }
                }
            }
        }
    }
    for kind in ["depot", "customer", "charger"] {
        assert!(
            stopped.get(kind).copied().unwrap_or(0) > 10,
            "{kind}: {stopped:?}"
        );
    }
    assert!(charging_at_charger > 0);
    assert!(in_zone > 0, "nobody drove through the restricted zone");
    // And they really drive: a good share of pings is moving at street speeds.
    let moving = out
        .iter()
        .flat_map(|m| &m.pings)
        .filter(|p| p.speed_kmh > 20.0)
        .count();
    assert!(moving > 10_000, "{moving} moving pings");
}

#[test]
fn silent_devices_upload_late_with_original_timestamps() {
    let cfg = SimConfig {
        vehicles: 30,
        silences_per_hour: 6.0,
        ..SimConfig::default()
    };
    let (_, out) = run(&cfg, 90);
    let mut latest = i64::MIN;
    let mut last_seq: HashMap<u32, u64> = HashMap::new();
    let mut late = 0;
    for msg in &out {
        let first = &msg.pings[0];
        let last = &msg.pings[msg.pings.len() - 1];
        if msg.pings.len() > 1 {
            // A backlog: older than what the fleet has already published.
            assert!(first.ts_ms < latest, "backlog not late");
            assert!(last.ts_ms - first.ts_ms >= 29_000);
            late += 1;
        }
        // seq increases per vehicle, across messages and within them.
        let prev = last_seq.insert(msg.vehicle, last.seq).unwrap_or(0);
        assert!(first.seq == prev + 1, "seq gap for {}", msg.vehicle_id);
        assert!(
            msg.pings
                .windows(2)
                .all(|w| w[1].seq == w[0].seq + 1 && w[1].ts_ms > w[0].ts_ms)
        );
        latest = latest.max(last.ts_ms);
    }
    assert!(late >= 5, "{late} late uploads");
}

#[test]
fn trouble_codes_are_set_and_cleared() {
    let cfg = SimConfig {
        vehicles: 20,
        dtcs_per_hour: 3.0,
        dtc_active_s: [60, 300],
        ..SimConfig::default()
    };
    let (_, out) = run(&cfg, 120);
    let mut active: HashMap<u32, bool> = HashMap::new();
    let (mut set, mut cleared) = (0, 0);
    for msg in &out {
        for p in &msg.pings {
            let was = active.insert(msg.vehicle, p.dtc.is_some()).unwrap_or(false);
            match (was, p.dtc.is_some()) {
                (false, true) => set += 1,
                (true, false) => cleared += 1,
                _ => {}
            }
        }
    }
    assert!(set >= 3 && cleared >= 3, "set {set}, cleared {cleared}");
}

#[test]
fn batches_hold_the_configured_number_of_pings() {
    let cfg = SimConfig {
        vehicles: 10,
        pings_per_message: 10,
        silences_per_hour: 0.0,
        ..SimConfig::default()
    };
    let (_, out) = run(&cfg, 30);
    assert!(!out.is_empty());
    assert!(out.iter().all(|m| m.pings.len() == 10));
}

#[test]
fn a_million_vehicles_fit_in_little_memory() {
    let cfg = SimConfig {
        vehicles: 1_000_000,
        customers: 2_000,
        grid_blocks: 200,
        ..SimConfig::default()
    };
    let mut fleet = Fleet::new(&cfg, START).unwrap();
    let per_vehicle = fleet.memory_bytes() / fleet.len();
    assert!(per_vehicle < 200, "{per_vehicle} bytes per vehicle");
    let mut out = Vec::new();
    // First pings are spread over the first interval: a tenth of the fleet
    // is due in its first 100 ms (a debug build steps the rest too slowly).
    let pings = fleet.advance(99, &mut out);
    assert!((90_000..110_000).contains(&pings), "{pings}");
    assert_eq!(out.len(), pings);
}
