//! Fuzz target for the geofence loader and index:
//! `FenceSet::from_geojson_slice` on arbitrary bytes and, when it loads,
//! `GeofenceIndex::build` and lookups that must agree with `brute_force`.
//!
//! Input layout: byte 0 selects the index's cell size, bytes 1..=8 are two
//! query positions (u16 pairs, fractions of a fence's bounding box grown by
//! half its size on every side), the rest is the GeoJSON text. Besides those
//! points, every fence's vertices (or circle centre) are looked up: points
//! on a boundary are where a conservative index would go wrong.
//! Inputs above 64 KiB are skipped (big fences are legitimately slow to
//! index: the cost is cells × edges).
#![no_main]

use fleetpipe_geofence::{FenceId, FenceSet, GeofenceIndex, Shape, brute_force};
use geo::{BoundingRect, Coord};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 9;
const MAX_INPUT: usize = 64 * 1024;
const CELL_SIZES_M: [f64; 8] = [1.0, 7.5, 50.0, 100.0, 333.0, 2_500.0, 20_000.0, 100_000.0];
/// Vertices looked up per fence, at most.
const MAX_VERTICES: usize = 64;
/// Fences whose points are looked up, at most.
const MAX_FENCES: usize = 64;

fn check(index: &GeofenceIndex, set: &FenceSet, lat: f64, lon: f64, what: &str) {
    let got = index.lookup(lat, lon);
    let want = brute_force(set, lat, lon);
    assert_eq!(
        got, want,
        "lookup({lat}, {lon}) [{what}]: index {got:?}, brute force {want:?}"
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "lookup({lat}, {lon}) not sorted: {got:?}"
    );
    for (i, fence) in set.fences().iter().enumerate() {
        let inside = got.contains(&FenceId(i as u32));
        assert_eq!(
            fence.contains(lat, lon),
            inside,
            "fence {i} at ({lat}, {lon})"
        );
        // Inside means distance 0. Not the converse: a point on a hole's
        // ring that lies outside the exterior (the loader accepts such
        // invalid polygons) is at distance 0 but outside (README.md).
        let d = fence.distance_m(lat, lon);
        assert!(
            d >= 0.0 && (!inside || d == 0.0),
            "fence {i} at ({lat}, {lon}) inside: {inside}, distance {d}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER || data.len() > MAX_INPUT {
        return;
    }
    let (header, json) = data.split_at(HEADER);
    let Ok(set) = FenceSet::from_geojson_slice(json) else {
        return;
    };
    let cell = CELL_SIZES_M[usize::from(header[0]) % CELL_SIZES_M.len()];
    let fraction =
        |k: usize| f64::from(u16::from_le_bytes([header[k], header[k + 1]])) / 65535.0 * 2.0 - 0.5;
    let queries = [(fraction(1), fraction(3)), (fraction(5), fraction(7))];

    // Positions to look up, from each fence: its vertices (or centre) and
    // the two query points relative to its bounding box.
    let mut points: Vec<(f64, f64, &'static str)> = Vec::new();
    for fence in set.fences().iter().take(MAX_FENCES) {
        let (bbox, vertices): (Option<geo::Rect<f64>>, Vec<Coord<f64>>) = match fence.shape() {
            Shape::Polygon(mp) => {
                let vertices =
                    mp.0.iter()
                        .flat_map(|p| std::iter::once(p.exterior()).chain(p.interiors()))
                        .flat_map(|ring| ring.0.iter().copied())
                        .take(MAX_VERTICES)
                        .collect();
                (mp.bounding_rect(), vertices)
            }
            Shape::Circle { center, radius_m } => {
                // A circle always holds its centre.
                assert!(
                    fence.contains(center.y(), center.x()),
                    "circle {} misses its centre",
                    fence.id
                );
                let d = radius_m / 111_320.0 / center.y().to_radians().cos().max(0.05);
                let c = Coord {
                    x: center.x(),
                    y: center.y(),
                };
                let r = geo::Rect::new(
                    Coord {
                        x: c.x - d,
                        y: c.y - radius_m / 111_320.0,
                    },
                    Coord {
                        x: c.x + d,
                        y: c.y + radius_m / 111_320.0,
                    },
                );
                (Some(r), vec![c])
            }
        };
        for v in vertices {
            points.push((v.y, v.x, "vertex"));
        }
        if let Some(b) = bbox {
            for (fx, fy) in queries {
                points.push((
                    b.min().y + fy * b.height(),
                    b.min().x + fx * b.width(),
                    "box point",
                ));
            }
        }
    }
    // Invalid queries match nothing.
    points.extend([
        (f64::NAN, 0.0, "invalid"),
        (0.0, f64::INFINITY, "invalid"),
        (90.5, 0.0, "invalid"),
        (0.0, -180.5, "invalid"),
    ]);

    let built = GeofenceIndex::build(set.clone(), cell);
    let index = match built {
        Ok(index) => index,
        Err(e) => panic!("building the index of a loaded set (cell {cell} m): {e}"),
    };
    assert_eq!(index.len(), set.len());
    for (lat, lon, what) in points {
        check(&index, &set, lat, lon, what);
    }
});
