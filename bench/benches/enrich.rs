//! Throughput of full enrichment per ping through the pure core
//! ([`Tracker::ingest`]): H3 cells, fence lookup, per-vehicle state machine
//! (motion, geofence, arrival, connectivity, ...) and the events it emits.
//!
//! Run with:
//! `cargo bench -p fleetpipe-bench --bench enrich -- --warm-up-time 2 --measurement-time 5`
//!
//! A fleet of [`VEHICLES`] vehicles in a ~20 × 20 km city (centred on
//! Berlin), one ping per vehicle per round, round-robin (vehicle 0, 1, ...,
//! then the next round), as a fleet reporting once a second would arrive.
//! Device time advances 1 s per round, `received_at` = device time, and each
//! ping moves its vehicle 10 m (36 km/h): back and forth along its own
//! 1 km track (100 steps out, 100 back), so the fleet stays in the city.
//!
//! - `enrich/ping/10k_vehicles_no_fences`: an empty fence index.
//! - `enrich/ping/10k_vehicles_1k_fences`: [`FENCES`] squares of ~200 m
//!   (every 4th with arrival detection, every 8th with a speed limit)
//!   spread over the city, indexed with the default cell size. Every 10th
//!   vehicle's track starts at a fence's centre, so it leaves and re-enters
//!   that fence (and crosses others on the way): the geofence rules run,
//!   not just the lookup.
//!
//! One iteration is one round ([`VEHICLES`] pings; `Throughput::Elements`
//! counts pings). The round's [`Accepted`] pings are built in
//! `iter_batched`'s untimed setup ([`Accepted`] is not `Clone`); the timed
//! part ingests them into one output `Vec` and clears it (dropping the
//! records, whose `Ack::none()` settles nothing). The tracker lives across
//! iterations and is brought to steady state (every vehicle known, its
//! reorder buffer full) by [`WARM_ROUNDS`] untimed rounds before criterion's
//! own warm-up. After those, the average size of a vehicle's checkpoint
//! JSON ([`Tracker::snapshot_all`]) is printed once per case.

// A benchmark of a broken fixture must stop loudly rather than measure errors.
#![allow(clippy::expect_used)]

// The allocator of the fleetpipe binary, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fleetpipe_bench::fixtures::REFERENCE_NOW_MS;
use fleetpipe_enrich::{EnrichConfig, Tracker};
use fleetpipe_geofence::{DEFAULT_CELL_SIZE_M, FenceSet, GeofenceIndex, SharedIndex, shared};
use fleetpipe_model::{Accepted, Ack, Gateway, Origin, Ping, SinkRecord, VehicleId};
use serde_json::{Value, json};

/// Vehicles in the fleet (pings per iteration).
const VEHICLES: usize = 10_000;
/// Fences in the `1k_fences` case.
const FENCES: usize = 1_000;
/// Untimed rounds before measuring.
const WARM_ROUNDS: u64 = 40;
/// Steps out along a vehicle's track before it turns back.
const TRACK_STEPS: u64 = 100;
/// Metres per ping.
const STEP_M: f64 = 10.0;
/// Fence side, metres.
const FENCE_M: f64 = 200.0;
/// City side, metres.
const CITY_M: f64 = 20_000.0;

/// City centre (south-west corner is centre − half the city).
const LAT0: f64 = 52.52;
const LON0: f64 = 13.40;
/// Degrees of latitude per metre.
const LAT_PER_M: f64 = 1.0 / 110_574.0;
/// Degrees of longitude per metre at [`LAT0`].
const LON_PER_M: f64 = 1.0 / (111_320.0 * 0.608_7);

/// A deterministic pseudo-random sequence (SplitMix64), in `[0, 1)`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A point in the city, metres east / north of its south-west corner.
fn to_lat_lon(east_m: f64, north_m: f64) -> (f64, f64) {
    let half = CITY_M / 2.0;
    (
        LAT0 + (north_m - half) * LAT_PER_M,
        LON0 + (east_m - half) * LON_PER_M,
    )
}

/// Fence centres (metres east / north) and the index over them.
fn fences(count: usize) -> (Vec<(f64, f64)>, SharedIndex) {
    let mut rng = Rng(7);
    let margin = FENCE_M;
    let centres: Vec<(f64, f64)> = (0..count)
        .map(|_| {
            (
                margin + rng.next() * (CITY_M - 2.0 * margin),
                margin + rng.next() * (CITY_M - 2.0 * margin),
            )
        })
        .collect();
    let half = FENCE_M / 2.0;
    let features = centres.iter().enumerate().map(|(i, &(e, n))| {
        let (s, w) = to_lat_lon(e - half, n - half);
        let (no, ea) = to_lat_lon(e + half, n + half);
        let mut props = json!({
            "id": format!("fence-{i}"),
            "kind": if i % 4 == 0 { "depot" } else { "customer" },
            "arrival": i % 4 == 0,
        });
        if i % 8 == 1 {
            props["speed_limit_kmh"] = json!(30.0);
        }
        let geometry = json!({
            "type": "Polygon",
            "coordinates": [[[w, s], [ea, s], [ea, no], [w, no], [w, s]]],
        });
        (props, geometry)
    });
    let set = FenceSet::from_features(features.collect::<Vec<(Value, Value)>>())
        .expect("generated fences are valid");
    let index = GeofenceIndex::build(set, DEFAULT_CELL_SIZE_M).expect("fence index builds");
    (centres, shared(index))
}

/// One vehicle: its id, track start (metres east / north) and direction.
struct Vehicle {
    id: VehicleId,
    start: (f64, f64),
    dir: (f64, f64),
}

fn fleet(fence_centres: &[(f64, f64)]) -> Vec<Vehicle> {
    let mut rng = Rng(42);
    let track = STEP_M * TRACK_STEPS as f64;
    (0..VEHICLES)
        .map(|i| {
            let angle = rng.next() * std::f64::consts::TAU;
            let dir = (angle.cos(), angle.sin());
            let start = if i % 10 == 0 && !fence_centres.is_empty() {
                fence_centres[(i / 10) % fence_centres.len()]
            } else {
                (
                    track + rng.next() * (CITY_M - 2.0 * track),
                    track + rng.next() * (CITY_M - 2.0 * track),
                )
            };
            Vehicle {
                id: VehicleId::parse(&format!("veh-{i:05}")).expect("valid vehicle id"),
                start,
                dir,
            }
        })
        .collect()
}

/// The pings of round `round`: one per vehicle, in fleet order.
fn round_pings(fleet: &[Vehicle], round: u64) -> Vec<Accepted> {
    let ts = REFERENCE_NOW_MS + round as i64 * 1000;
    let phase = round % (2 * TRACK_STEPS);
    let steps = if phase <= TRACK_STEPS {
        phase
    } else {
        2 * TRACK_STEPS - phase
    };
    let along = steps as f64 * STEP_M;
    fleet
        .iter()
        .map(|v| {
            let (lat, lon) = to_lat_lon(v.start.0 + v.dir.0 * along, v.start.1 + v.dir.1 * along);
            Accepted {
                ping: Ping {
                    seq: Some(round),
                    speed_kmh: Some(36.0),
                    accuracy_m: Some(5.0),
                    ..Ping::new(v.id.clone(), ts, lat, lon)
                },
                origin: Origin {
                    gateway: Gateway::Mqtt,
                    client: None,
                    received_at: ts,
                },
                ack: Ack::none(),
            }
        })
        .collect()
}

fn bench_case(c: &mut Criterion, name: &str, fence_count: usize) {
    let (centres, index) = fences(fence_count);
    let fleet = fleet(&centres);
    let mut tracker =
        Tracker::new(&EnrichConfig::default(), index).expect("default config is valid");
    let mut out: Vec<SinkRecord> = Vec::with_capacity(4 * VEHICLES);

    let mut events = 0usize;
    for round in 0..WARM_ROUNDS {
        for accepted in round_pings(&fleet, round) {
            tracker.ingest(accepted, &mut out);
        }
        events += out
            .drain(..)
            .filter(|r| matches!(r, SinkRecord::Event(_)))
            .count();
    }
    let snapshot = tracker.snapshot_all();
    let bytes: usize = snapshot.iter().map(|(_, json)| json.len()).sum();
    eprintln!(
        "{name}: {} vehicles, {events} events in {WARM_ROUNDS} warm-up rounds; \
         checkpoint JSON avg {} bytes/vehicle (max {})",
        snapshot.len(),
        bytes / snapshot.len().max(1),
        snapshot.iter().map(|(_, j)| j.len()).max().unwrap_or(0),
    );
    drop(snapshot);

    let mut group = c.benchmark_group("enrich/ping");
    group.throughput(Throughput::Elements(VEHICLES as u64));
    let mut round = WARM_ROUNDS;
    group.bench_function(name, |b| {
        b.iter_batched(
            || {
                let pings = round_pings(&fleet, round);
                round += 1;
                pings
            },
            |pings| {
                for accepted in pings {
                    tracker.ingest(accepted, &mut out);
                }
                black_box(out.len());
                out.clear();
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn enrich(c: &mut Criterion) {
    bench_case(c, "10k_vehicles_no_fences", 0);
    bench_case(c, "10k_vehicles_1k_fences", FENCES);
}

criterion_group!(benches, enrich);
criterion_main!(benches);
