//! Fences from table rows (`FenceRow`, `FenceSet::from_rows`), from loose
//! features, and merged from two sources.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fleetpipe_geofence::{
    DEFAULT_CELL_SIZE_M, FenceId, FenceKind, FenceRow, FenceSet, GeofenceError, GeofenceIndex,
    brute_force,
};
use serde_json::{Value, json};

fn row(id: &str, geometry: Value) -> FenceRow {
    FenceRow {
        id: id.into(),
        name: None,
        kind: None,
        speed_limit_kmh: None,
        dwell_s: None,
        arrival: false,
        radius_m: None,
        geometry,
    }
}

fn square_with_hole() -> Value {
    json!({"type": "Polygon", "coordinates": [
        [[10.0, 50.0], [10.01, 50.0], [10.01, 50.01], [10.0, 50.01], [10.0, 50.0]],
        [[10.004, 50.004], [10.006, 50.004], [10.006, 50.006], [10.004, 50.006], [10.004, 50.004]]
    ]})
}

fn two_parts() -> Value {
    json!({"type": "MultiPolygon", "coordinates": [
        [[[11.0, 51.0], [11.02, 51.0], [11.02, 51.02], [11.0, 51.0]]],
        [[[12.0, 51.0], [12.02, 51.0], [12.02, 51.02], [12.0, 51.02], [12.0, 51.0]]]
    ]})
}

fn circle() -> Value {
    json!({"type": "Point", "coordinates": [13.0, 52.0]})
}

/// The same three fences as rows and as a GeoJSON document.
fn rows_and_geojson() -> (Vec<FenceRow>, String) {
    let rows = vec![
        FenceRow {
            name: Some("Main depot".into()),
            kind: Some("depot".into()),
            speed_limit_kmh: Some(20.0),
            dwell_s: Some(300),
            arrival: true,
            ..row("depot-1", square_with_hole())
        },
        FenceRow {
            kind: Some("weird".into()),
            ..row("zone-2", two_parts())
        },
        FenceRow {
            kind: Some("charging_station".into()),
            radius_m: Some(500.0),
            ..row("charger-3", circle())
        },
    ];
    let geojson = json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": square_with_hole(), "properties":
            {"id": "depot-1", "name": "Main depot", "kind": "depot", "speed_limit_kmh": 20.0,
             "dwell_s": 300, "arrival": true}},
        {"type": "Feature", "geometry": two_parts(), "properties": {"id": "zone-2", "kind": "weird"}},
        {"type": "Feature", "geometry": circle(), "properties":
            {"id": "charger-3", "kind": "charging_station", "radius_m": 500.0}}
    ]});
    (rows, geojson.to_string())
}

fn err_text(rows: Vec<FenceRow>) -> String {
    match FenceSet::from_rows(rows) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn rows_load_like_the_equivalent_geojson_features() {
    let (rows, geojson) = rows_and_geojson();
    let from_rows = FenceSet::from_rows(rows).unwrap();
    let from_file = FenceSet::from_geojson_str(&geojson).unwrap();
    assert_eq!(from_rows.len(), 3);
    for (a, b) in from_rows.fences().iter().zip(from_file.fences()) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.name, b.name);
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.speed_limit_kmh, b.speed_limit_kmh);
        assert_eq!(a.dwell_s, b.dwell_s);
        assert_eq!(a.arrival, b.arrival);
        assert_eq!(a.shape(), b.shape());
    }
    let f = from_rows.fences();
    assert_eq!(f[0].kind, FenceKind::Depot);
    assert_eq!(f[1].name, "zone-2", "a NULL name defaults to the id");
    assert!(!f[1].arrival);
    // Indexed, rows answer exactly like the file: hole, second part, circle.
    let index = GeofenceIndex::build(from_rows.clone(), DEFAULT_CELL_SIZE_M).unwrap();
    for (lat, lon, expected) in [
        (50.002, 10.002, vec![FenceId(0)]),
        (50.005, 10.005, vec![]),
        (51.002, 12.002, vec![FenceId(1)]),
        (52.0, 13.0, vec![FenceId(2)]),
    ] {
        assert_eq!(index.lookup(lat, lon), expected, "({lat}, {lon})");
        assert_eq!(
            brute_force(&from_file, lat, lon),
            expected,
            "({lat}, {lon})"
        );
    }
}

#[test]
fn null_columns_take_the_feature_defaults() {
    let set = FenceSet::from_rows([row("z", square_with_hole())]).unwrap();
    let f = &set.fences()[0];
    assert_eq!(
        (
            f.name.as_str(),
            &f.kind,
            f.speed_limit_kmh,
            f.dwell_s,
            f.arrival
        ),
        ("z", &FenceKind::Zone, None, None, false)
    );
    assert!(FenceSet::from_rows(Vec::new()).unwrap().is_empty());
}

#[test]
fn bad_rows_are_refused_naming_the_row_and_its_id() {
    let e = err_text(vec![row("ok", square_with_hole()), row("c", circle())]);
    assert!(
        e.contains("feature #1 (id \"c\")") && e.contains("radius_m"),
        "{e}"
    );
    let e = err_text(vec![FenceRow {
        dwell_s: Some(-1),
        ..row("neg", square_with_hole())
    }]);
    assert!(e.contains("(id \"neg\")") && e.contains("dwell_s"), "{e}");
    let e = err_text(vec![FenceRow {
        dwell_s: Some(1 << 40),
        ..row("huge", square_with_hole())
    }]);
    assert!(e.contains("dwell_s"), "{e}");
    for bad in [f64::NAN, f64::INFINITY, -5.0] {
        let e = err_text(vec![FenceRow {
            speed_limit_kmh: Some(bad),
            ..row("s", square_with_hole())
        }]);
        assert!(e.contains("speed_limit_kmh"), "{bad}: {e}");
        let e = err_text(vec![FenceRow {
            radius_m: Some(bad),
            ..row("r", circle())
        }]);
        assert!(e.contains("radius_m"), "{bad}: {e}");
    }
    let e = err_text(vec![row("g", json!("POLYGON((0 0, 1 0, 1 1, 0 0))"))]);
    assert!(e.contains("geometry is not an object"), "{e}");
    let e = err_text(vec![row(
        "line",
        json!({"type": "LineString", "coordinates": [[1.0, 1.0], [2.0, 2.0]]}),
    )]);
    assert!(e.contains("unsupported geometry type"), "{e}");
    let e = err_text(vec![row("", square_with_hole())]);
    assert!(e.contains("properties.id is empty"), "{e}");
    // An id repeated within the rows (no primary key on the table).
    let e = FenceSet::from_rows([row("d", square_with_hole()), row("d", two_parts())]).unwrap_err();
    assert!(
        matches!(
            e,
            GeofenceError::DuplicateId {
                first: 0,
                second: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn loose_features_use_the_feature_rules() {
    let set = FenceSet::from_features([(json!({"id": "a"}), square_with_hole())]).unwrap();
    assert_eq!(set.fences()[0].id, "a");
    let e = FenceSet::from_features([(Value::Null, square_with_hole())]).unwrap_err();
    assert!(e.to_string().contains("missing properties.id"), "{e}");
    let e = FenceSet::from_features([(json!([1]), square_with_hole())]).unwrap_err();
    assert!(
        e.to_string().contains("\"properties\" is not an object"),
        "{e}"
    );
    let e = FenceSet::from_features([(json!({"id": "n"}), Value::Null)]).unwrap_err();
    assert!(e.to_string().contains("missing geometry"), "{e}");
}

#[test]
fn merge_keeps_order_and_refuses_an_id_in_both_sources() {
    let (rows, geojson) = rows_and_geojson();
    let file = FenceSet::from_geojson_str(&geojson).unwrap();
    let extra = FenceSet::from_rows([row("extra", square_with_hole())]).unwrap();
    let merged = file.clone().merge(extra).unwrap();
    let ids: Vec<&str> = merged.fences().iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["depot-1", "zone-2", "charger-3", "extra"]);
    let table = FenceSet::from_rows(rows.into_iter().skip(2)).unwrap();
    let e = file.merge(table).unwrap_err();
    assert!(
        matches!(&e, GeofenceError::DuplicateAcrossSources { id } if id == "charger-3"),
        "{e}"
    );
    assert!(e.to_string().contains("\"charger-3\""), "{e}");
    let empty = FenceSet::default().merge(FenceSet::default()).unwrap();
    assert!(empty.is_empty());
}

#[test]
fn bytes_that_are_not_utf8_are_a_json_error() {
    let e = FenceSet::from_geojson_slice(b"{\"type\": \"\xff\"}").unwrap_err();
    assert!(matches!(e, GeofenceError::Json(_)), "{e}");
    let (_, geojson) = rows_and_geojson();
    assert_eq!(
        FenceSet::from_geojson_slice(geojson.as_bytes())
            .unwrap()
            .len(),
        3
    );
}
