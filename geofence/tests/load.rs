//! Loading and exactness unit tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fleetpipe_geofence::{
    DEFAULT_CELL_SIZE_M, FenceId, FenceKind, FenceSet, GeofenceError, GeofenceIndex, Shape,
    brute_force,
};
use geo::{Destination, Haversine, Point};
use serde_json::json;

/// Square 10.00..10.01 lon, 50.00..50.01 lat with hole 10.004..10.006 / 50.004..50.006;
/// a two-part MultiPolygon; a 500 m circle.
fn sample() -> serde_json::Value {
    json!({
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"id": "depot-1", "name": "Main depot", "kind": "depot",
                               "speed_limit_kmh": 20.0, "dwell_s": 300, "arrival": true},
                "geometry": {"type": "Polygon", "coordinates": [
                    [[10.0, 50.0], [10.01, 50.0], [10.01, 50.01], [10.0, 50.01], [10.0, 50.0]],
                    [[10.004, 50.004], [10.006, 50.004], [10.006, 50.006], [10.004, 50.006], [10.004, 50.004]]
                ]}
            },
            {
                "type": "Feature",
                "properties": {"id": "zone-2", "kind": "weird"},
                "geometry": {"type": "MultiPolygon", "coordinates": [
                    [[[11.0, 51.0], [11.02, 51.0], [11.02, 51.02], [11.0, 51.0]]],
                    [[[12.0, 51.0], [12.02, 51.0], [12.02, 51.02], [12.0, 51.02], [12.0, 51.0]],
                     [[12.005, 51.005], [12.015, 51.005], [12.015, 51.015], [12.005, 51.015], [12.005, 51.005]]]
                ]}
            },
            {
                "type": "Feature",
                "properties": {"id": "charger-3", "kind": "charging_station", "radius_m": 500.0},
                "geometry": {"type": "Point", "coordinates": [13.0, 52.0]}
            }
        ]
    })
}

fn load(v: &serde_json::Value) -> Result<FenceSet, GeofenceError> {
    FenceSet::from_geojson_str(&v.to_string())
}

fn err_text(v: &serde_json::Value) -> String {
    match load(v) {
        Ok(_) => panic!("expected an error for {v}"),
        Err(e) => e.to_string(),
    }
}

fn with_feature(feature: serde_json::Value) -> serde_json::Value {
    let mut v = sample();
    v["features"].as_array_mut().unwrap().push(feature);
    v
}

#[test]
fn loads_polygon_multipolygon_circle() {
    let set = load(&sample()).unwrap();
    let f = set.fences();
    assert_eq!(f.len(), 3);
    assert_eq!(f[0].id, "depot-1");
    assert_eq!(f[0].name, "Main depot");
    assert_eq!(f[0].kind, FenceKind::Depot);
    assert_eq!(f[0].speed_limit_kmh, Some(20.0));
    assert_eq!(f[0].dwell_s, Some(300));
    assert!(f[0].arrival);
    match f[0].shape() {
        Shape::Polygon(mp) => {
            assert_eq!(mp.0.len(), 1);
            assert_eq!(mp.0[0].interiors().len(), 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(f[1].name, "zone-2", "name defaults to id");
    assert_eq!(f[1].kind, FenceKind::Other("weird".into()));
    assert!(!f[1].arrival, "arrival defaults to false");
    match f[1].shape() {
        Shape::Polygon(mp) => {
            assert_eq!(mp.0.len(), 2);
            assert_eq!(mp.0[1].interiors().len(), 1);
            // unclosed ring was closed
            assert_eq!(mp.0[0].exterior().0.first(), mp.0[0].exterior().0.last());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(f[2].kind, FenceKind::ChargingStation);
    match f[2].shape() {
        Shape::Circle { center, radius_m } => {
            assert_eq!((center.x(), center.y(), *radius_m), (13.0, 52.0, 500.0));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn file_loader() {
    let dir = std::env::temp_dir().join(format!("geofence-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fences.geojson");
    std::fs::write(&path, sample().to_string()).unwrap();
    assert_eq!(FenceSet::from_geojson_file(&path).unwrap().len(), 3);
    let missing = dir.join("nope.geojson");
    let e = FenceSet::from_geojson_file(&missing).unwrap_err();
    assert!(matches!(e, GeofenceError::Io { .. }), "{e}");
    assert!(e.to_string().contains("nope.geojson"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn error_missing_id() {
    let e = err_text(&with_feature(json!({
        "type": "Feature", "properties": {"name": "x"},
        "geometry": {"type": "Point", "coordinates": [1.0, 1.0]}
    })));
    assert!(
        e.contains("feature #3") && e.contains("missing properties.id"),
        "{e}"
    );
}

#[test]
fn error_duplicate_id() {
    let e = err_text(&with_feature(json!({
        "type": "Feature", "properties": {"id": "depot-1", "radius_m": 10},
        "geometry": {"type": "Point", "coordinates": [1.0, 1.0]}
    })));
    assert!(
        e.contains("duplicate fence id \"depot-1\"") && e.contains("#0") && e.contains("#3"),
        "{e}"
    );
}

#[test]
fn error_point_without_radius() {
    let e = err_text(&with_feature(json!({
        "type": "Feature", "properties": {"id": "p"},
        "geometry": {"type": "Point", "coordinates": [1.0, 1.0]}
    })));
    assert!(
        e.contains("feature #3 (id \"p\")") && e.contains("radius_m"),
        "{e}"
    );
}

#[test]
fn error_unsupported_geometry() {
    let e = err_text(&with_feature(json!({
        "type": "Feature", "properties": {"id": "road"},
        "geometry": {"type": "LineString", "coordinates": [[1.0, 1.0], [2.0, 2.0]]}
    })));
    assert!(
        e.contains("(id \"road\")") && e.contains("unsupported geometry type \"LineString\""),
        "{e}"
    );
}

#[test]
fn error_invalid_json() {
    let e = FenceSet::from_geojson_str("{\"type\": \"FeatureCollection\", ").unwrap_err();
    assert!(matches!(e, GeofenceError::Json(_)));
    assert!(e.to_string().starts_with("invalid GeoJSON"), "{e}");
    let e = FenceSet::from_geojson_str("{\"type\": \"Feature\"}").unwrap_err();
    assert!(e.to_string().contains("FeatureCollection"), "{e}");
}

#[test]
fn error_antimeridian_and_polar() {
    let e = err_text(&with_feature(json!({
        "type": "Feature", "properties": {"id": "am"},
        "geometry": {"type": "Polygon", "coordinates": [[[179.9, 0.0], [-179.9, 0.0], [-179.9, 1.0], [179.9, 0.0]]]}
    })));
    assert!(e.contains("antimeridian"), "{e}");
    let e = err_text(&with_feature(json!({
        "type": "Feature", "properties": {"id": "amc", "radius_m": 5000},
        "geometry": {"type": "Point", "coordinates": [179.99, 10.0]}
    })));
    assert!(e.contains("antimeridian"), "{e}");
    let e = err_text(&with_feature(json!({
        "type": "Feature", "properties": {"id": "pole"},
        "geometry": {"type": "Polygon", "coordinates": [[[0.0, 86.0], [1.0, 86.0], [1.0, 87.0], [0.0, 86.0]]]}
    })));
    assert!(e.contains("polar"), "{e}");
    let e = err_text(&with_feature(json!({
        "type": "Feature", "properties": {"id": "polec", "radius_m": 200000},
        "geometry": {"type": "Point", "coordinates": [0.0, 84.0]}
    })));
    assert!(e.contains("polar"), "{e}");
}

fn indexes(set: &FenceSet) -> Vec<GeofenceIndex> {
    [5.0, 37.5, 100.0, 1_000.0, 20_000.0]
        .into_iter()
        .map(|m| GeofenceIndex::build(set.clone(), m).unwrap())
        .collect()
}

/// Asserts index == brute force == `expected` at every cell size.
fn check(set: &FenceSet, idx: &[GeofenceIndex], lat: f64, lon: f64, expected: &[u32]) {
    let expected: Vec<FenceId> = expected.iter().copied().map(FenceId).collect();
    assert_eq!(
        brute_force(set, lat, lon),
        expected,
        "brute force at ({lat}, {lon})"
    );
    for i in idx {
        assert_eq!(
            i.lookup(lat, lon),
            expected,
            "index with {} m cells at ({lat}, {lon})",
            i.cell_size_m()
        );
    }
}

#[test]
fn polygon_hole_and_edges() {
    let set = load(&sample()).unwrap();
    let idx = indexes(&set);
    // Interior, hole, and around the hole's edge.
    check(&set, &idx, 50.002, 10.002, &[0]);
    check(&set, &idx, 50.005, 10.005, &[]);
    check(&set, &idx, 50.005, 10.004 - 1e-7, &[0]);
    check(&set, &idx, 50.005, 10.004 + 1e-7, &[]);
    // Exterior edges: just inside / just outside.
    for eps in [1e-9, 1e-7, 1e-5] {
        check(&set, &idx, 50.005, 10.0 + eps, &[0]);
        check(&set, &idx, 50.005, 10.0 - eps, &[]);
        check(&set, &idx, 50.01 - eps, 10.002, &[0]);
        check(&set, &idx, 50.01 + eps, 10.002, &[]);
    }
    // Closed-set rule: exactly on the boundary counts as inside.
    check(&set, &idx, 50.005, 10.0, &[0]);
    check(&set, &idx, 50.0, 10.0, &[0]);
    // MultiPolygon: both parts, and the hole of the second part.
    check(&set, &idx, 51.001, 11.015, &[1]);
    check(&set, &idx, 51.002, 12.002, &[1]);
    check(&set, &idx, 51.01, 12.01, &[]);
    // Invalid queries match nothing.
    check(&set, &idx, f64::NAN, 10.0, &[]);
    check(&set, &idx, 50.005, 370.005, &[]);
}

#[test]
fn circle_edge() {
    let set = load(&sample()).unwrap();
    let idx = indexes(&set);
    let center = Point::new(13.0, 52.0);
    check(&set, &idx, 52.0, 13.0, &[2]);
    for bearing in [0.0, 33.0, 90.0, 145.0, 180.0, 271.0] {
        let p = Haversine.destination(center, bearing, 499.0);
        check(&set, &idx, p.y(), p.x(), &[2]);
        let p = Haversine.destination(center, bearing, 501.0);
        check(&set, &idx, p.y(), p.x(), &[]);
    }
}

#[test]
fn index_accessors() {
    let set = load(&sample()).unwrap();
    let idx = GeofenceIndex::build(set, DEFAULT_CELL_SIZE_M).unwrap();
    assert_eq!(idx.len(), 3);
    assert!(!idx.is_empty());
    assert_eq!(
        idx.fence(FenceId(2)).map(|f| f.id.as_str()),
        Some("charger-3")
    );
    assert!(idx.fence(FenceId(3)).is_none());
    let mut buf = vec![FenceId(99)];
    idx.lookup_into(50.002, 10.002, &mut buf);
    assert_eq!(buf, vec![FenceId(0)]);
    let stats = idx.stats();
    assert_eq!(stats.cell_size_m, DEFAULT_CELL_SIZE_M);
    assert!(stats.levels.iter().any(|&(l, _, _)| l == 0), "{stats:?}");
    // A 20 km circle: cells inside it stay coarse, only its boundary is
    // refined, and no finer than MAX_DEPTH below its top level.
    let big = load(&json!({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"id": "big", "radius_m": 20000},
        "geometry": {"type": "Point", "coordinates": [5.0, 45.0]}}]}))
    .unwrap();
    let idx = GeofenceIndex::build(big, DEFAULT_CELL_SIZE_M).unwrap();
    let stats = idx.stats();
    let finest = stats.levels.iter().map(|&(l, _, _)| l).min().unwrap();
    let coarsest = stats.levels.iter().map(|&(l, _, _)| l).max().unwrap();
    assert!(
        finest >= 1,
        "40 km across = 2^9 cells: refined to level 2: {stats:?}"
    );
    assert!(
        coarsest > finest + 1,
        "inside cells at coarser levels: {stats:?}"
    );
    let cells: usize = stats.levels.iter().map(|&(_, c, _)| c).sum();
    assert!(cells < 2_000, "bounded cell count: {stats:?}");
    assert_eq!(idx.lookup(45.0, 5.0), vec![FenceId(0)]);
    // Out-of-range cell sizes are refused, naming the key.
    for bad in [0.0, 0.5, 100_001.0, f64::NAN, f64::INFINITY] {
        let e = GeofenceIndex::build(load(&sample()).unwrap(), bad).unwrap_err();
        assert!(e.to_string().starts_with("geofence.cell_size_m: "), "{e}");
    }
}

#[test]
fn distance_is_zero_inside_and_metres_to_the_edge_outside() {
    // A square of about 1.1 km around (0.005, 0.005).
    let json = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"id":"sq"},"geometry":{"type":"Polygon",
        "coordinates":[[[0,0],[0.01,0],[0.01,0.01],[0,0.01],[0,0]]]}},
      {"type":"Feature","properties":{"id":"c","radius_m":100},"geometry":{"type":"Point","coordinates":[1,1]}}]}"#;
    let set = FenceSet::from_geojson_str(json).unwrap();
    let square = &set.fences()[0];
    let circle = &set.fences()[1];
    assert_eq!(square.distance_m(0.005, 0.005), 0.0);
    assert_eq!(square.distance_m(0.0, 0.005), 0.0, "on the boundary");
    // 0.0002 degrees of latitude south of the edge: about 22.1 m.
    let d = square.distance_m(-0.0002, 0.005);
    assert!((d - 22.11).abs() < 0.1, "{d}");
    // East of the east edge by 0.0003 degrees of longitude: about 33.4 m.
    let d = square.distance_m(0.005, 0.0103);
    assert!((d - 33.4).abs() < 0.1, "{d}");
    // Diagonal from the corner.
    let d = square.distance_m(-0.0003, 0.0104);
    let expected = (33.17f64.powi(2) + 44.53f64.powi(2)).sqrt();
    assert!((d - expected).abs() < 0.5, "{d} vs {expected}");
    assert_eq!(circle.distance_m(1.0, 1.0), 0.0);
    // 0.001 degrees north of the centre: about 111.2 m, so 11.2 m out.
    let d = circle.distance_m(1.001, 1.0);
    assert!((d - 11.19).abs() < 0.1, "{d}");
    assert!(square.distance_m(f64::NAN, 0.0).is_infinite());
}

/// Found by the `geofence` fuzz target: a hole reaching outside its
/// exterior ring is loaded, and a point on that hole's ring, outside the
/// fence, was at distance 0 from it (so a hysteresis margin kept a vehicle
/// 600 km away "inside"). Distance now goes to the ring that separates the
/// point from the area.
#[test]
fn a_point_outside_is_not_at_distance_zero() {
    let json = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"id":"depot-1"},"geometry":{"type":"Polygon","coordinates":[
        [[10.0,50.0],[10.01,50.0],[10.01,50.01],[10.0,50.01],[10.0,50.0]],
        [[1,50.004],[10.006,50.006],[10.004,50.006],[10.004,50.004]]]}}]}"#;
    let set = FenceSet::from_geojson_str(json).unwrap();
    let fence = &set.fences()[0];
    assert!(!fence.contains(50.004, 1.0));
    assert!(fence.distance_m(50.004, 1.0) > 0.0);
}
