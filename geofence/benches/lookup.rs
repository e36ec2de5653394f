//! Lookup benchmarks: the grid index vs brute force.
//!
//! Fences: deterministic depots (small polygons, 100–600 m) and customers
//! (circles, 50–300 m) spread over a ~1000 km × 1000 km region
//! (lat 45..54, lon 0..13). Queries: uniform points over the region
//! ("uniform", mostly misses) and points within ~500 m of a random fence
//! centre ("near", mostly boundary cells / hits). `index_lookup` is the
//! whole lookup from lat/lon at the default cell size; `cell_size/<m>`
//! repeats the "near" case at 10,000 fences for other cell sizes, the
//! speed/memory trade-off `geofence.cell_size_m` sets.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fleetpipe_geofence::{DEFAULT_CELL_SIZE_M, FenceId, FenceSet, GeofenceIndex, brute_force};
use serde_json::{Value, json};

const M_PER_DEG: f64 = 111_320.0;

struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn fences(n: usize) -> (FenceSet, Vec<(f64, f64)>) {
    let mut rng = Rng(42);
    let mut centers = Vec::with_capacity(n);
    let features: Vec<Value> = (0..n)
        .map(|i| {
            let lat = rng.f(45.0, 54.0);
            let lon = rng.f(0.0, 13.0);
            centers.push((lat, lon));
            if i % 2 == 0 {
                let size = rng.f(100.0, 600.0);
                let k = rng.next_u64() % 4 + 4;
                let ring: Vec<[f64; 2]> = (0..=k)
                    .map(|j| {
                        let a = std::f64::consts::TAU * (j % k) as f64 / k as f64;
                        let r = size * 0.5;
                        [
                            lon + r * a.cos() / (M_PER_DEG * lat.to_radians().cos()),
                            lat + r * a.sin() / M_PER_DEG,
                        ]
                    })
                    .collect();
                json!({"type": "Feature",
                       "properties": {"id": format!("depot-{i}"), "kind": "depot"},
                       "geometry": {"type": "Polygon", "coordinates": [ring]}})
            } else {
                json!({"type": "Feature",
                       "properties": {"id": format!("cust-{i}"), "kind": "customer",
                                      "radius_m": rng.f(50.0, 300.0)},
                       "geometry": {"type": "Point", "coordinates": [lon, lat]}})
            }
        })
        .collect();
    let gj = json!({"type": "FeatureCollection", "features": features}).to_string();
    (FenceSet::from_geojson_str(&gj).unwrap(), centers)
}

fn queries(centers: &[(f64, f64)], near: bool) -> Vec<(f64, f64)> {
    let mut rng = Rng(7);
    (0..8192)
        .map(|_| {
            if near {
                let (lat, lon) = centers[(rng.next_u64() % centers.len() as u64) as usize];
                let d = 500.0 / M_PER_DEG;
                (
                    lat + rng.f(-d, d),
                    lon + rng.f(-d, d) / lat.to_radians().cos(),
                )
            } else {
                (rng.f(45.0, 54.0), rng.f(0.0, 13.0))
            }
        })
        .collect()
}

/// Builds the index, printing its build time and size.
fn build(set: &FenceSet, cell_size_m: f64) -> GeofenceIndex {
    let t = Instant::now();
    let index = GeofenceIndex::build(set.clone(), cell_size_m).unwrap();
    let stats = index.stats();
    eprintln!(
        "build n={} cell={cell_size_m} m: {:.3} s, levels (level, cells, entries) = {:?}, cell maps ≈ {:.1} MiB",
        set.len(),
        t.elapsed().as_secs_f64(),
        stats.levels,
        stats.approx_heap_bytes as f64 / (1024.0 * 1024.0)
    );
    index
}

/// Times `lookup_into` over the queries, round robin.
fn bench_lookup(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    index: &GeofenceIndex,
    qs: &[(f64, f64)],
) {
    let mut out: Vec<FenceId> = Vec::new();
    let mut i = 0usize;
    group.bench_function(id, |b| {
        b.iter(|| {
            let (lat, lon) = qs[i % qs.len()];
            i += 1;
            index.lookup_into(black_box(lat), black_box(lon), &mut out);
            black_box(out.len())
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("geofence");
    group.throughput(Throughput::Elements(1));
    for n in [100usize, 10_000, 100_000] {
        let (set, centers) = fences(n);
        let index = build(&set, DEFAULT_CELL_SIZE_M);
        for near in [false, true] {
            let qs = queries(&centers, near);
            let hits = qs
                .iter()
                .filter(|&&(la, lo)| !index.lookup(la, lo).is_empty())
                .count();
            let label = if near { "near" } else { "uniform" };
            eprintln!("  n={n} {label}: {hits}/{} queries hit a fence", qs.len());
            bench_lookup(
                &mut group,
                BenchmarkId::new(format!("index_lookup/{label}"), n),
                &index,
                &qs,
            );
            if n == 100 {
                let mut i = 0usize;
                group.bench_with_input(
                    BenchmarkId::new(format!("brute_force/{label}"), n),
                    &n,
                    |b, _| {
                        b.iter(|| {
                            let (lat, lon) = qs[i % qs.len()];
                            i += 1;
                            black_box(brute_force(&set, black_box(lat), black_box(lon)).len())
                        })
                    },
                );
            }
        }
        if n == 10_000 {
            let qs = queries(&centers, true);
            for cell_size_m in [25.0, 50.0, 200.0, 400.0] {
                let index = build(&set, cell_size_m);
                bench_lookup(
                    &mut group,
                    BenchmarkId::new("cell_size/near", cell_size_m as u32),
                    &index,
                    &qs,
                );
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
