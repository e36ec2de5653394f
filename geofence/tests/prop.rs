//! Property test: `GeofenceIndex::lookup == brute_force` on random fence sets
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! with many query points sampled near boundaries.

use fleetpipe_geofence::{FenceSet, GeofenceIndex, brute_force};
use geo::{Destination, Haversine, Point};
use proptest::prelude::*;
use serde_json::{Value, json};

const M_PER_DEG: f64 = 111_320.0;

#[derive(Debug, Clone)]
enum Spec {
    /// Star polygon: centre offset (deg), size (m), vertex radius factors, optional hole factor.
    Star {
        dlat: f64,
        dlon: f64,
        size: f64,
        radii: Vec<f64>,
        hole: Option<f64>,
    },
    /// Two star polygons (second one offset by ~2.5 sizes east), first with optional hole.
    Multi {
        dlat: f64,
        dlon: f64,
        size: f64,
        radii: Vec<f64>,
        hole: Option<f64>,
    },
    Circle {
        dlat: f64,
        dlon: f64,
        radius: f64,
    },
}

fn size_m() -> impl Strategy<Value = f64> {
    // log-uniform 50 m .. 20 km
    (50f64.ln()..20_000f64.ln()).prop_map(f64::exp)
}

fn spec() -> impl Strategy<Value = Spec> {
    let off = -0.15f64..0.15;
    let radii = prop::collection::vec(0.5f64..1.0, 5..14);
    let hole = prop::option::of(0.05f64..0.3);
    prop_oneof![
        (
            off.clone(),
            off.clone(),
            size_m(),
            radii.clone(),
            hole.clone()
        )
            .prop_map(|(dlat, dlon, size, radii, hole)| Spec::Star {
                dlat,
                dlon,
                size,
                radii,
                hole
            }),
        (off.clone(), off.clone(), size_m(), radii, hole).prop_map(
            |(dlat, dlon, size, radii, hole)| Spec::Multi {
                dlat,
                dlon,
                size,
                radii,
                hole
            }
        ),
        (off.clone(), off, size_m()).prop_map(|(dlat, dlon, radius)| Spec::Circle {
            dlat,
            dlon,
            radius
        }),
    ]
}

/// Ring (lon, lat) around `c` with vertex i at angle 2πi/n (+ rotation), radius factors[i]·size.
fn ring(c: (f64, f64), size: f64, factors: &[f64], rot: f64, reverse: bool) -> Vec<[f64; 2]> {
    let n = factors.len();
    let mut pts: Vec<[f64; 2]> = factors
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let a = rot + std::f64::consts::TAU * i as f64 / n as f64;
            let r = f * size;
            let dlat = r * a.sin() / M_PER_DEG;
            let dlon = r * a.cos() / (M_PER_DEG * c.1.to_radians().cos());
            [c.0 + dlon, c.1 + dlat]
        })
        .collect();
    if reverse {
        pts.reverse();
    }
    pts.push(pts[0]);
    pts
}

fn star_rings(c: (f64, f64), size: f64, radii: &[f64], hole: Option<f64>) -> Vec<Vec<[f64; 2]>> {
    let mut rings = vec![ring(c, size, radii, 0.1, false)];
    if let Some(h) = hole {
        rings.push(ring(c, size, &[h; 7], 0.3, true));
    }
    rings
}

fn to_geojson(base: (f64, f64), specs: &[Spec]) -> Value {
    let features: Vec<Value> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            Spec::Star { dlat, dlon, size, radii, hole } => {
                let c = (base.0 + dlon, base.1 + dlat);
                json!({"type": "Feature", "properties": {"id": format!("f{i}")},
                       "geometry": {"type": "Polygon", "coordinates": star_rings(c, *size, radii, *hole)}})
            }
            Spec::Multi { dlat, dlon, size, radii, hole } => {
                let c = (base.0 + dlon, base.1 + dlat);
                let c2 = (c.0 + 2.5 * size / (M_PER_DEG * c.1.to_radians().cos()), c.1);
                let second: Vec<f64> = radii.iter().rev().copied().collect();
                json!({"type": "Feature", "properties": {"id": format!("f{i}")},
                       "geometry": {"type": "MultiPolygon", "coordinates": [
                           star_rings(c, *size, radii, *hole),
                           star_rings(c2, *size * 0.7, &second, None)]}})
            }
            Spec::Circle { dlat, dlon, radius } => {
                json!({"type": "Feature", "properties": {"id": format!("f{i}"), "radius_m": radius},
                       "geometry": {"type": "Point", "coordinates": [base.0 + dlon, base.1 + dlat]}})
            }
        })
        .collect();
    json!({"type": "FeatureCollection", "features": features})
}

/// All vertices (lon, lat) of the fences' rings, and circles.
type Rings = Vec<Vec<[f64; 2]>>;
type Circles = Vec<([f64; 2], f64)>;

fn features_geometry(v: &Value) -> (Rings, Circles) {
    let mut rings = Vec::new();
    let mut circles = Vec::new();
    for f in v["features"].as_array().unwrap() {
        let g = &f["geometry"];
        let polys: Vec<Value> = match g["type"].as_str().unwrap() {
            "Polygon" => vec![g["coordinates"].clone()],
            "MultiPolygon" => g["coordinates"].as_array().unwrap().clone(),
            _ => {
                let c = &g["coordinates"];
                circles.push((
                    [c[0].as_f64().unwrap(), c[1].as_f64().unwrap()],
                    f["properties"]["radius_m"].as_f64().unwrap(),
                ));
                continue;
            }
        };
        for p in polys {
            for r in p.as_array().unwrap() {
                rings.push(serde_json::from_value::<Vec<[f64; 2]>>(r.clone()).unwrap());
            }
        }
    }
    (rings, circles)
}

/// Query selector: (mode, which, t, jitter scale exponent, jitter direction).
type Sel = (u8, usize, f64, f64, f64);

fn point(
    base: (f64, f64),
    rings: &[Vec<[f64; 2]>],
    circles: &[([f64; 2], f64)],
    s: Sel,
) -> (f64, f64) {
    let (mode, which, t, exp, dir) = s;
    let jitter = 10f64.powf(exp); // degrees, 1e-9 .. 1e-2
    let (jx, jy) = (jitter * dir.cos(), jitter * dir.sin());
    match mode % 4 {
        0 if !rings.is_empty() => {
            // near a vertex
            let r = &rings[which % rings.len()];
            let v = r[(t * 1000.0) as usize % (r.len() - 1)];
            (v[1] + jy, v[0] + jx)
        }
        1 if !rings.is_empty() => {
            // near an edge
            let r = &rings[which % rings.len()];
            let i = (t * 1000.0) as usize % (r.len() - 1);
            let (a, b) = (r[i], r[i + 1]);
            let u = (t * 7919.0).fract();
            (a[1] + u * (b[1] - a[1]) + jy, a[0] + u * (b[0] - a[0]) + jx)
        }
        2 if !circles.is_empty() => {
            // near a circle's radius
            let (c, radius) = circles[which % circles.len()];
            let d = radius * (1.0 + (t - 0.5) * 1e-3) + (dir - 3.0) * 0.3;
            let p = Haversine.destination(Point::new(c[0], c[1]), t * 360.0, d.max(0.0));
            (p.y(), p.x())
        }
        _ => (base.1 + (t - 0.5) * 0.5, base.0 + (dir / 6.3 - 0.5) * 0.5),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn index_equals_brute_force(
        base_lat in 40.0f64..60.0,
        base_lon in -10.0f64..30.0,
        specs in prop::collection::vec(spec(), 1..7),
        // Log-uniform 5 m .. 5 km: finest cells from far smaller than the
        // fences to far larger.
        cell_size in (5f64.ln()..5_000f64.ln()).prop_map(f64::exp),
        sels in prop::collection::vec((0u8..4, 0usize..64, 0.0f64..1.0, -9.0f64..-2.0, 0.0f64..6.3), 300),
    ) {
        let base = (base_lon, base_lat);
        let gj = to_geojson(base, &specs);
        let set = FenceSet::from_geojson_str(&gj.to_string()).unwrap();
        let index = GeofenceIndex::build(set.clone(), cell_size).unwrap();
        let (rings, circles) = features_geometry(&gj);
        let mut hits = 0usize;
        for s in sels {
            let (lat, lon) = point(base, &rings, &circles, s);
            let expected = brute_force(&set, lat, lon);
            hits += usize::from(!expected.is_empty());
            prop_assert_eq!(index.lookup(lat, lon), expected, "cell {} m, point ({}, {})", cell_size, lat, lon);
        }
        // The sampling must actually exercise fences.
        prop_assert!(hits > 0);
    }
}
