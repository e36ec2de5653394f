//! The peers against a real PostgreSQL with PostGIS: the COPY ceiling stores
//! exactly the rows it reports, and PostGIS answers what fleetpipe's
//! geofence index answers.
//!
//! The server comes from `FLEETPIPE_TEST_PG_URL` (default
//! `postgresql://postgres@127.0.0.1:5432/test`), which must have PostGIS
//! installed (Debian: `postgresql-15-postgis-3`; the tests run `CREATE
//! EXTENSION IF NOT EXISTS postgis`). Nothing is skipped: without the server
//! or PostGIS the tests fail. Every test works in a schema of its own,
//! dropped at the end, also when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fleetpipe_bench::peers::{
    self, PeerError, PostgisFences, city_fences_geojson, city_points, compare_answers,
    copy_ceiling, fixture_pings, fleetpipe_lookup, postgis_lookup,
};
use fleetpipe_model::Ping;
use serde_json::json;

fn pg_url() -> String {
    std::env::var("FLEETPIPE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of this test's own, dropped when the guard is (also on panic).
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(test: &str) -> Self {
        Self {
            url: pg_url(),
            name: format!("fp_peers_{test}_{}", std::process::id()),
        }
    }

    async fn count(&self, sql_from: &str) -> i64 {
        let db = peers::connect(&self.url).await.expect("connect");
        db.query_one(
            &format!("SELECT count(*) FROM \"{}\".{sql_from}", self.name),
            &[],
        )
        .await
        .expect("count")
        .get(0)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop cannot await, and the test's runtime may be shutting down: a
        // thread with a runtime of its own can.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            if let Err(e) = runtime.block_on(peers::drop_schema(&url, &name)) {
                eprintln!("could not drop schema {name}: {e}");
            }
        });
        let _ = cleanup.join();
    }
}

// ---- COPY ceiling ------------------------------------------------------------

#[tokio::test]
async fn copy_ceiling_stores_every_row_in_fleetpipes_table() {
    let schema = Schema::new("copy_rows");
    let pings = fixture_pings(20, 25).expect("fixture pings");
    assert_eq!(pings.len(), 500);

    // 500 rows in batches of 64 over 2 connections: 8 transactions, the
    // last one partial.
    let result = copy_ceiling(&schema.url, &schema.name, &pings, 2, 64)
        .await
        .expect("copy ceiling");
    assert_eq!(result.rows, 500);
    assert_eq!(result.duplicates_skipped, 0);
    assert_eq!(result.batches, 8);
    assert_eq!(result.connections, 2);
    assert!(result.rows_per_sec > 0.0);
    assert_eq!(schema.count("telemetry").await, 500);

    // The table is fleetpipe's: created by its migrations, with its dedupe
    // key.
    assert!(schema.count("fleetpipe_migrations").await >= 2);
    let db = peers::connect(&schema.url).await.unwrap();
    let constraint: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_constraint c \
             JOIN pg_namespace n ON n.oid = c.connamespace \
             WHERE n.nspname = $1 AND c.conname = 'telemetry_dedupe'",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(constraint, 1);

    // One row read back: the ping's values, and what the peer fills in for
    // the pipeline.
    let ping: &Ping = &pings[21]; // a truck (odd vehicle): Protobuf fields
    let row = db
        .query_one(
            &format!(
                "SELECT seq, lat, lon, odometer_km, ignition, source, h3_cell, attrs::text, \
                        cardinality(fences), cardinality(flags), distance_m, \
                        (extract(epoch FROM ts) * 1000)::bigint, received_at = ts \
                 FROM \"{}\".telemetry WHERE vehicle_id = $1 AND seq = $2",
                schema.name
            ),
            &[
                &ping.vehicle_id.as_str(),
                &i64::try_from(ping.seq.unwrap()).unwrap(),
            ],
        )
        .await
        .expect("the ping's row");
    assert_eq!(row.get::<_, f64>(1), ping.lat);
    assert_eq!(row.get::<_, f64>(2), ping.lon);
    assert_eq!(row.get::<_, Option<f64>>(3), ping.odometer_km);
    assert_eq!(row.get::<_, Option<bool>>(4), ping.ignition);
    assert_eq!(row.get::<_, &str>(5), "mqtt");
    let cell = h3o::LatLng::new(ping.lat, ping.lon)
        .unwrap()
        .to_cell(h3o::Resolution::Nine);
    assert_eq!(row.get::<_, Option<i64>>(6), Some(u64::from(cell) as i64));
    let attrs: serde_json::Value = serde_json::from_str(row.get(7)).unwrap();
    assert_eq!(attrs, serde_json::to_value(&ping.attrs).unwrap());
    assert_eq!(row.get::<_, Option<i32>>(8), Some(0));
    assert_eq!(row.get::<_, Option<i32>>(9), Some(0));
    assert_eq!(row.get::<_, Option<f64>>(10), None);
    assert_eq!(row.get::<_, i64>(11), ping.ts_ms);
    assert!(row.get::<_, bool>(12));
}

#[tokio::test]
async fn copy_ceiling_skips_duplicates_of_the_dedupe_key() {
    let schema = Schema::new("copy_dupes");
    let mut pings = fixture_pings(10, 10).expect("fixture pings");
    assert_eq!(pings.len(), 100);
    // Replays of 30 pings, spread over the input so they land in other
    // batches (and on the other connection) than the originals.
    let replays: Vec<Ping> = pings.iter().step_by(3).take(30).cloned().collect();
    pings.extend(replays);
    // Two pings without seq at the same device time: one key (both have
    // seq = -1). A third without seq at another time is a new row.
    let mut no_seq = pings[0].clone();
    no_seq.seq = None;
    let mut later = no_seq.clone();
    later.ts_ms += 500;
    pings.extend([no_seq.clone(), no_seq, later]);

    let result = copy_ceiling(&schema.url, &schema.name, &pings, 2, 16)
        .await
        .expect("copy ceiling with duplicates");
    assert_eq!(result.rows, 102, "100 distinct pings + 2 without seq");
    assert_eq!(result.duplicates_skipped, 31);
    assert_eq!(schema.count("telemetry").await, 102);
    assert_eq!(schema.count("telemetry WHERE seq = -1").await, 2);
}

#[tokio::test]
async fn copy_ceiling_refuses_zero_connections_or_batch_rows() {
    let pings = fixture_pings(1, 1).unwrap();
    for (connections, batch_rows) in [(0, 10), (1, 0)] {
        let err = copy_ceiling(
            &pg_url(),
            "fp_peers_unused",
            &pings,
            connections,
            batch_rows,
        )
        .await
        .expect_err("invalid arguments");
        assert!(matches!(err, PeerError::InvalidArgument(_)), "{err}");
    }
}

// ---- PostGIS geofencing ------------------------------------------------------

/// A polygon with a hole, a two-part multipolygon (one ring left unclosed,
/// which fleetpipe closes) and a circle overlapping the polygon's east side.
fn shapes_geojson() -> String {
    json!({
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": { "id": "poly-hole" },
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[13.30, 52.50], [13.34, 52.50], [13.34, 52.52], [13.30, 52.52], [13.30, 52.50]],
                        [[13.31, 52.505], [13.33, 52.505], [13.33, 52.515], [13.31, 52.515], [13.31, 52.505]]
                    ]
                }
            },
            {
                "type": "Feature",
                "properties": { "id": "multi" },
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [
                        [[[13.40, 52.50], [13.41, 52.50], [13.41, 52.51], [13.40, 52.51], [13.40, 52.50]]],
                        [[[13.42, 52.50], [13.43, 52.50], [13.43, 52.51], [13.42, 52.51]]]
                    ]
                }
            },
            {
                "type": "Feature",
                "properties": { "id": "circle", "radius_m": 600.0 },
                "geometry": { "type": "Point", "coordinates": [13.345, 52.51] }
            }
        ]
    })
    .to_string()
}

/// Points `(lat, lon)` with the fences that contain them (sorted ids).
fn shape_cases() -> Vec<((f64, f64), Vec<&'static str>)> {
    vec![
        // The polygon's west strip, far from the circle.
        ((52.515, 13.302), vec!["poly-hole"]),
        // Inside the hole: outside the polygon.
        ((52.51, 13.32), vec![]),
        // A vertex of the hole and a point on its lower edge: the hole's
        // ring belongs to the (closed) polygon.
        ((52.505, 13.31), vec!["poly-hole"]),
        ((52.505, 13.32), vec!["poly-hole"]),
        // On the outer ring: a corner and the bottom edge.
        ((52.52, 13.30), vec!["poly-hole"]),
        ((52.50, 13.302), vec!["poly-hole"]),
        // The polygon's east strip, 540 m from the circle's centre.
        ((52.51, 13.337), vec!["circle", "poly-hole"]),
        // The circle's centre, east of the polygon.
        ((52.51, 13.345), vec!["circle"]),
        // 1 km east of the centre.
        ((52.51, 13.36), vec![]),
        // North of everything.
        ((52.53, 13.32), vec![]),
        // Each part of the multipolygon, and the gap between them.
        ((52.505, 13.405), vec!["multi"]),
        ((52.505, 13.425), vec!["multi"]),
        ((52.505, 13.415), vec![]),
    ]
}

#[tokio::test]
async fn postgis_answers_what_fleetpipe_answers_on_holes_parts_and_circles() {
    let schema = Schema::new("postgis_shapes");
    let fences = shapes_geojson();
    let cases = shape_cases();
    let points: Vec<(f64, f64)> = cases.iter().map(|(p, _)| *p).collect();
    let expected: Vec<Vec<String>> = cases
        .iter()
        .map(|(_, ids)| ids.iter().map(|id| (*id).to_owned()).collect())
        .collect();

    let ours = fleetpipe_lookup(&fences, &points).expect("fleetpipe lookup");
    assert_eq!(ours.answers, expected, "fleetpipe");
    assert_eq!(ours.points, points.len());
    assert_eq!(ours.hits, 10);

    let loaded = PostgisFences::load(&schema.url, &schema.name, &fences)
        .await
        .expect("load fences into PostGIS");
    assert_eq!(loaded.len(), 3);
    assert_eq!(schema.count("fence_polygons").await, 2);
    assert_eq!(schema.count("fence_circles").await, 1);
    // Batches of 4: several queries, the last one partial.
    let batched = loaded
        .lookup_batched(&points, 4)
        .await
        .expect("batched lookup");
    assert_eq!(batched.answers, expected, "PostGIS batched");
    let each = loaded.lookup_each(&points).await.expect("per-point lookup");
    assert_eq!(each.answers, expected, "PostGIS per point");

    let comparison = compare_answers(&fences, &points, &ours.answers, &batched.answers).unwrap();
    assert_eq!(comparison.points, points.len());
    assert_eq!(comparison.agreeing, points.len());
    assert!(comparison.disagreements.is_empty());
}

#[tokio::test]
async fn postgis_agrees_with_fleetpipe_on_a_city_of_fences() {
    let schema = Schema::new("postgis_city");
    let fences = city_fences_geojson(200, 7);
    let points = city_points(4_000, 200, 7);

    let ours = fleetpipe_lookup(&fences, &points).expect("fleetpipe lookup");
    let theirs = postgis_lookup(&schema.url, &schema.name, &fences, &points, 500)
        .await
        .expect("PostGIS lookup");
    assert_eq!(theirs.points, points.len());
    // Half the points are placed around fences, in a box of three
    // half-sides each way: a square covers a ninth of it, so ~10 % of those
    // land inside (2,000 × 0.1 ≈ 200). Plenty of hits, and of misses.
    assert!(ours.hits > 100, "{} hits", ours.hits);
    assert!(ours.answers.iter().filter(|a| a.is_empty()).count() > 500);

    let comparison = compare_answers(&fences, &points, &ours.answers, &theirs.answers).unwrap();
    eprintln!(
        "city: {} points, {} hits (fleetpipe) / {} (PostGIS), {} disagreements, {} within 1 cm \
         of an edge",
        comparison.points,
        ours.hits,
        theirs.hits,
        comparison.disagreements.len(),
        comparison.near_boundary(0.01)
    );
    // Random points land within a centimetre of an edge too rarely to
    // expect any numerical mismatch here; a real one must not exist.
    assert_eq!(
        comparison.beyond(0.01),
        0,
        "{:#?}",
        comparison.disagreements
    );
    assert_eq!(ours.answers, theirs.answers);
}

#[test]
fn compare_answers_reports_the_distance_to_the_disputed_edge() {
    let fences = shapes_geojson();
    // 600 m from the circle's centre along its parallel, give or take
    // floating point: the circle's edge.
    let edge_lon = 13.345 + 600.0 / (6_371_008.8 * 52.51_f64.to_radians().cos()).to_radians();
    let points = [(52.51, 13.302), (52.51, edge_lon), (52.51, 13.345)];
    let ours = vec![vec![], vec!["circle".to_owned()], vec!["circle".to_owned()]];
    // The other engine misses the point on the edge and claims a far one.
    let theirs = vec![
        vec![],
        vec![],
        vec!["circle".to_owned(), "multi".to_owned()],
    ];

    let comparison = compare_answers(&fences, &points, &ours, &theirs).unwrap();
    assert_eq!(comparison.agreeing, 1);
    assert_eq!(comparison.disagreements.len(), 2);
    let edge = &comparison.disagreements[0];
    assert_eq!(edge.index, 1);
    assert_eq!(edge.only_fleetpipe, vec!["circle".to_owned()]);
    assert!(edge.only_other.is_empty());
    assert!(edge.boundary_m < 0.001, "{}", edge.boundary_m);
    let far = &comparison.disagreements[1];
    assert_eq!(far.only_other, vec!["multi".to_owned()]);
    assert!(far.boundary_m > 3_000.0, "{}", far.boundary_m);
    assert_eq!(comparison.near_boundary(0.01), 1);
    assert_eq!(comparison.beyond(0.01), 1);

    let err = compare_answers(&fences, &points, &ours, &theirs[..2]).unwrap_err();
    assert!(matches!(err, PeerError::InvalidArgument(_)), "{err}");
}
