//! Geofences in a running pipeline: loaded at start from a file and/or a
//! PostgreSQL table, reloaded when the file changes and on
//! `POST /admin/geofences/reload`, a bad version refused while the old index
//! stays in use; and the one-line errors of a bad fence file at start and in
//! `config check`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use fleetpipe::{Config, Pipeline};
use fleetpipe_geofence::service::FenceTable;
use fleetpipe_geofence::{GeofenceConfig, PostgresFencesConfig};
use futures::FutureExt as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PG: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// A square fence of about 1.1 km at (lat0, lon0)..(lat0 + 0.01, lon0 + 0.01).
fn square(id: &str, lat0: f64, lon0: f64) -> Value {
    json!({"type": "Feature", "properties": {"id": id, "kind": "depot"},
           "geometry": {"type": "Polygon", "coordinates": [[
               [lon0, lat0], [lon0 + 0.01, lat0], [lon0 + 0.01, lat0 + 0.01],
               [lon0, lat0 + 0.01], [lon0, lat0]]]}})
}

fn collection(features: &[Value]) -> String {
    json!({"type": "FeatureCollection", "features": features}).to_string()
}

/// Sorted ids of the fences in the pipeline's index now.
fn ids(p: &TestPipeline) -> Vec<String> {
    let index = p.pipeline.as_ref().unwrap().fences().load_full();
    let mut ids: Vec<String> = index.fences().iter().map(|f| f.id.clone()).collect();
    ids.sort();
    ids
}

/// Ids of the fences containing the point, per the pipeline's index.
fn hits(p: &TestPipeline, lat: f64, lon: f64) -> Vec<String> {
    let index = p.pipeline.as_ref().unwrap().fences().load_full();
    index
        .lookup(lat, lon)
        .into_iter()
        .map(|id| index.fence(id).unwrap().id.clone())
        .collect()
}

fn errors(p: &TestPipeline) -> u64 {
    p.pipeline.as_ref().unwrap().fence_service().reload_errors()
}

fn reloads(p: &TestPipeline) -> u64 {
    p.pipeline.as_ref().unwrap().fence_service().reloads()
}

/// A directory holding `fences.geojson` with `features`.
fn fence_dir(features: &[Value]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fences.geojson");
    std::fs::write(&path, collection(features)).unwrap();
    (dir, path)
}

async fn start_with(geofence: GeofenceConfig) -> TestPipeline {
    TestPipeline::start(move |c| c.geofence = geofence).await
}

async fn wait_ids(p: &TestPipeline, expected: &[&str]) {
    let ok = wait_for(Duration::from_secs(10), || {
        (ids(p) == expected).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "expected fences {expected:?}, have {:?}",
        ids(p)
    );
}

async fn post_reload(p: &TestPipeline) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(p.ops_url("/admin/geofences/reload"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The value of an unlabelled gauge or counter, read in process (every
/// pipeline of this binary records into it, `p`'s included).
async fn metric(_p: &TestPipeline, name: &str) -> f64 {
    let values = common::metric_values();
    values
        .gauge(name, &[])
        .or_else(|| values.counter(name, &[]).map(|n| n as f64))
        .unwrap_or_else(|| panic!("{name} not recorded:\n{values}"))
}

#[tokio::test]
async fn a_changed_file_is_reloaded_within_seconds() {
    let (_dir, path) = fence_dir(&[square("a", 50.0, 10.0)]);
    let mut p = start_with(GeofenceConfig {
        file: Some(path.clone()),
        watch_interval: Duration::from_millis(100),
        ..GeofenceConfig::default()
    })
    .await;
    assert_eq!(ids(&p), ["a"]);
    assert_eq!(hits(&p, 50.005, 10.005), ["a"]);

    // In place, a new fence added.
    std::fs::write(
        &path,
        collection(&[square("a", 50.0, 10.0), square("b", 51.0, 11.0)]),
    )
    .unwrap();
    wait_ids(&p, &["a", "b"]).await;
    assert_eq!(hits(&p, 51.005, 11.005), ["b"]);

    // Right away again (within the same timestamp tick on file systems with
    // coarse timestamps): "b" moves, keeping its id.
    std::fs::write(
        &path,
        collection(&[square("a", 50.0, 10.0), square("b", 52.0, 11.0)]),
    )
    .unwrap();
    let moved = wait_for(Duration::from_secs(10), || {
        (hits(&p, 52.005, 11.005) == ["b"]).then_some(())
    })
    .await;
    assert!(moved.is_some(), "the same-size rewrite was not picked up");
    assert!(hits(&p, 51.005, 11.005).is_empty());

    // Replaced by a rename (how editors and config management write files).
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, collection(&[square("c", 53.0, 12.0)])).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_ids(&p, &["c"]).await;

    // Touching it without changing the content does not reload.
    let before = reloads(&p);
    assert!(before >= 3, "{before}");
    let content = std::fs::read(&path).unwrap();
    std::fs::write(&path, content).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(reloads(&p), before);
    assert_eq!(errors(&p), 0);
    // The gauge is process-wide (tests run pipelines side by side): it exists.
    assert!(metric(&p, "fleetpipe_geofence_fences").await >= 0.0);
    p.stop().await;
}

#[tokio::test]
async fn a_broken_file_keeps_the_old_fences_and_is_counted_once() {
    let (_dir, path) = fence_dir(&[square("a", 50.0, 10.0), square("b", 51.0, 11.0)]);
    let mut p = start_with(GeofenceConfig {
        file: Some(path.clone()),
        watch_interval: Duration::from_millis(100),
        ..GeofenceConfig::default()
    })
    .await;
    let old = p.pipeline.as_ref().unwrap().fences().load_full();

    std::fs::write(&path, "{\"type\": \"FeatureCollection\", \"features\": [").unwrap();
    let counted = wait_for(Duration::from_secs(10), || (errors(&p) == 1).then_some(())).await;
    assert!(counted.is_some(), "the broken file was not reported");
    // The same index object stays in use, and lookups go on.
    let current = p.pipeline.as_ref().unwrap().fences().load_full();
    assert!(std::sync::Arc::ptr_eq(&old, &current));
    assert_eq!(hits(&p, 51.005, 11.005), ["b"]);
    assert!(metric(&p, "fleetpipe_geofence_reload_errors_total").await >= 1.0);
    // Polling on does not count the same broken content again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(errors(&p), 1);

    // A fence the parser refuses (a circle without radius) is refused too.
    std::fs::write(
        &path,
        collection(&[json!({"type": "Feature", "properties": {"id": "p"},
                            "geometry": {"type": "Point", "coordinates": [10.0, 50.0]}})]),
    )
    .unwrap();
    let counted = wait_for(Duration::from_secs(10), || (errors(&p) == 2).then_some(())).await;
    assert!(counted.is_some());
    assert_eq!(ids(&p), ["a", "b"]);

    // A vanished file is one more error, and the fences stay.
    std::fs::remove_file(&path).unwrap();
    let counted = wait_for(Duration::from_secs(10), || (errors(&p) == 3).then_some(())).await;
    assert!(counted.is_some());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(errors(&p), 3);
    assert_eq!(ids(&p), ["a", "b"]);

    // Fixed: reloaded.
    std::fs::write(&path, collection(&[square("c", 52.0, 12.0)])).unwrap();
    wait_ids(&p, &["c"]).await;
    assert_eq!(errors(&p), 3);
    p.stop().await;
}

#[tokio::test]
async fn the_admin_endpoint_reloads_and_answers_counts_or_422() {
    let (_dir, path) = fence_dir(&[square("a", 50.0, 10.0)]);
    let mut p = start_with(GeofenceConfig {
        file: Some(path.clone()),
        // No polling: only the endpoint reloads.
        watch_interval: Duration::ZERO,
        cell_size_m: 250,
        ..GeofenceConfig::default()
    })
    .await;
    std::fs::write(
        &path,
        collection(&[
            square("a", 50.0, 10.0),
            square("b", 51.0, 11.0),
            square("c", 52.0, 12.0),
        ]),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&p), ["a"], "not watched");

    let (status, body) = post_reload(&p).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fences"], 3, "{body}");
    assert_eq!(body["cell_size_m"], 250, "{body}");
    assert!(body["took_ms"].is_u64(), "{body}");
    assert_eq!(ids(&p), ["a", "b", "c"]);

    std::fs::write(&path, "not json").unwrap();
    let (status, body) = post_reload(&p).await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("geofence.file = ") && error.contains("invalid GeoJSON"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");
    assert_eq!(ids(&p), ["a", "b", "c"], "the old fences stay");
    assert_eq!(errors(&p), 1);

    // Concurrent requests are serialized and all succeed.
    std::fs::write(&path, collection(&[square("d", 53.0, 13.0)])).unwrap();
    let answers = futures::future::join_all((0..4).map(|_| post_reload(&p))).await;
    for (status, body) in answers {
        assert_eq!((status, body["fences"].as_u64()), (200, Some(1)), "{body}");
    }
    assert_eq!(ids(&p), ["d"]);

    let get = reqwest::get(p.ops_url("/admin/geofences/reload"))
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    p.stop().await;
}

/// The watcher is the pipeline's task: it is joined when the pipeline
/// stops, so a change after that is not loaded (nothing runs on unowned).
#[tokio::test]
async fn the_watcher_stops_with_the_pipeline() {
    let (_dir, path) = fence_dir(&[square("a", 50.0, 10.0)]);
    let mut p = start_with(GeofenceConfig {
        file: Some(path.clone()),
        watch_interval: Duration::from_millis(50),
        ..GeofenceConfig::default()
    })
    .await;
    let index = p.pipeline.as_ref().unwrap().fences();
    p.stop().await;
    std::fs::write(&path, collection(&[square("b", 51.0, 11.0)])).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = index.load().fences().iter().map(|f| f.id.clone()).collect();
    assert_eq!(ids, ["a"], "reloaded after the pipeline stopped");
}

#[tokio::test]
async fn without_sources_there_are_no_fences_and_reload_answers_zero() {
    let mut p = TestPipeline::start(|_| {}).await;
    assert!(ids(&p).is_empty());
    let (status, body) = post_reload(&p).await;
    assert_eq!((status, body["fences"].as_u64()), (200, Some(0)), "{body}");
    p.stop().await;
}

// ------------------------------------------------------------- PostgreSQL

async fn pg() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432, database test");
    tokio::spawn(connection);
    client
}

fn unique_table(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("geofences_{tag}_{}_{nanos}", std::process::id())
}

/// Creates the table (as the geofence crate defines it) under a unique
/// name, runs `body`, drops it.
async fn with_table<F, Fut>(tag: &str, body: F)
where
    F: FnOnce(tokio_postgres::Client, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = pg().await;
    let table = unique_table(tag);
    FenceTable::new(&PostgresFencesConfig {
        table: table.clone(),
        ..PostgresFencesConfig::new(PG)
    })
    .unwrap()
    .create()
    .await
    .unwrap();
    let result = std::panic::AssertUnwindSafe(body(pg().await, table.clone()))
        .catch_unwind()
        .await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn insert(
    db: &tokio_postgres::Client,
    table: &str,
    id: &str,
    radius_m: Option<f64>,
    geometry: Value,
) {
    db.execute(
        &format!(
            "INSERT INTO {table} (id, name, kind, speed_limit_kmh, dwell_s, arrival, radius_m, geometry)
             VALUES ($1, $2, 'customer', 30, 120, true, $3, $4)"
        ),
        &[&id, &format!("Fence {id}"), &radius_m, &geometry],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn fences_load_from_a_postgres_table_with_the_file() {
    with_table("load", |db, table| async move {
        // A square with a hole, and a 300 m circle.
        insert(&db, &table, "t-hole", None, json!({"type": "Polygon", "coordinates": [
            [[10.0, 60.0], [10.01, 60.0], [10.01, 60.01], [10.0, 60.01], [10.0, 60.0]],
            [[10.004, 60.004], [10.006, 60.004], [10.006, 60.006], [10.004, 60.006], [10.004, 60.004]]]}))
        .await;
        insert(&db, &table, "t-circle", Some(300.0),
            json!({"type": "Point", "coordinates": [11.0, 61.0]})).await;
        let (_dir, path) = fence_dir(&[square("f-1", 50.0, 10.0)]);
        let mut p = start_with(GeofenceConfig {
            file: Some(path.clone()),
            postgres: Some(PostgresFencesConfig {
                table: table.clone(),
                ..PostgresFencesConfig::new(PG)
            }),
            ..GeofenceConfig::default()
        })
        .await;
        // The union: the file's fences first, then the table's by id.
        let index = p.pipeline.as_ref().unwrap().fences().load_full();
        let order: Vec<&str> = index.fences().iter().map(|f| f.id.as_str()).collect();
        assert_eq!(order, ["f-1", "t-circle", "t-hole"]);
        let hole = &index.fences()[2];
        assert_eq!(hole.name, "Fence t-hole");
        assert_eq!(hole.speed_limit_kmh, Some(30.0));
        assert_eq!(hole.dwell_s, Some(120));
        assert!(hole.arrival);
        assert_eq!(hits(&p, 60.002, 10.002), ["t-hole"]);
        assert!(hits(&p, 60.005, 10.005).is_empty(), "inside the hole");
        assert_eq!(hits(&p, 61.001, 11.0), ["t-circle"]);
        assert_eq!(hits(&p, 50.005, 10.005), ["f-1"]);

        // A row added: picked up on request (the table is not watched).
        insert(&db, &table, "t-new", Some(50.0), json!({"type": "Point", "coordinates": [12.0, 62.0]})).await;
        let (status, body) = post_reload(&p).await;
        assert_eq!((status, body["fences"].as_u64()), (200, Some(4)), "{body}");
        assert_eq!(hits(&p, 62.0, 12.0), ["t-new"]);

        // An id in both sources is refused, naming it.
        insert(&db, &table, "f-1", Some(50.0), json!({"type": "Point", "coordinates": [13.0, 63.0]})).await;
        let (status, body) = post_reload(&p).await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"].as_str().unwrap().contains("\"f-1\""), "{body}");
        db.execute(&format!("DELETE FROM {table} WHERE id = 'f-1'"), &[]).await.unwrap();

        // A bad row is refused naming the table, the row and its id.
        insert(&db, &table, "t-bad", None, json!({"type": "Point", "coordinates": [13.0, 63.0]})).await;
        let (status, body) = post_reload(&p).await;
        assert_eq!(status, 422, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("geofence.postgres (table {table}): row #"))
                && error.contains("(id \"t-bad\")")
                && error.contains("radius_m"),
            "{error}"
        );
        assert_eq!(ids(&p), ["f-1", "t-circle", "t-hole", "t-new"], "the old fences stay");
        assert_eq!(errors(&p), 2);
        p.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_table_alone_is_a_source_and_a_missing_table_fails_the_start() {
    with_table("alone", |db, table| async move {
        insert(
            &db,
            &table,
            "only",
            Some(100.0),
            json!({"type": "Point", "coordinates": [10.0, 50.0]}),
        )
        .await;
        let mut p = start_with(GeofenceConfig {
            postgres: Some(PostgresFencesConfig {
                table: table.clone(),
                ..PostgresFencesConfig::new(PG)
            }),
            ..GeofenceConfig::default()
        })
        .await;
        assert_eq!(ids(&p), ["only"]);
        p.stop().await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let missing = unique_table("missing");
    config.geofence.postgres = Some(PostgresFencesConfig {
        table: missing.clone(),
        ..PostgresFencesConfig::new(PG)
    });
    let e = start_error(config).await;
    assert!(
        e.starts_with(&format!(
            "geofence.postgres (table {missing}): cannot read the table"
        )) && e.contains("does not exist"),
        "{e}"
    );
}

/// `[geofence.postgres.tls]`: the table is read over `verify-full` (the
/// test server set up for TLS with a CA of the run's own), at start and on
/// reload; with a CA that did not issue the server's certificate the start
/// fails naming the section and why.
#[tokio::test]
async fn fences_load_from_the_table_over_verified_tls() {
    use fleetpipe_postgres::TlsMode;
    use fleetpipe_postgres::test_support::{TestCa, tls_server};

    let server = tls_server().expect("the test PostgreSQL is set up for TLS");
    with_table("tls", |db, table| async move {
        insert(
            &db,
            &table,
            "t-tls",
            Some(100.0),
            json!({"type": "Point", "coordinates": [10.0, 50.0]}),
        )
        .await;
        let pg = PostgresFencesConfig {
            table: table.clone(),
            tls: server.tls(TlsMode::VerifyFull),
            ..PostgresFencesConfig::new(PG)
        };
        let mut p = start_with(GeofenceConfig {
            postgres: Some(pg.clone()),
            ..GeofenceConfig::default()
        })
        .await;
        assert_eq!(ids(&p), ["t-tls"]);
        insert(
            &db,
            &table,
            "t-tls-2",
            Some(50.0),
            json!({"type": "Point", "coordinates": [11.0, 51.0]}),
        )
        .await;
        let (status, body) = post_reload(&p).await;
        assert_eq!((status, body["fences"].as_u64()), (200, Some(2)), "{body}");
        p.stop().await;

        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other-ca.pem");
        std::fs::write(&other, TestCa::new("not the server's").unwrap().pem()).unwrap();
        let mut config = test_config(dir.path());
        config.geofence.postgres = Some(PostgresFencesConfig {
            tls: fleetpipe_postgres::PostgresTls::new(TlsMode::VerifyFull, Some(other)),
            ..pg
        });
        let e = start_error(config).await;
        assert!(
            e.starts_with(&format!(
                "geofence.postgres (table {table}): cannot connect: "
            )) && e.contains("the server's certificate is not trusted")
                && e.contains("geofence.postgres.tls.ca_file"),
            "{e}"
        );
    })
    .await;
}

// ------------------------------------------------------------ start, CLI

async fn start_error(config: Config) -> String {
    match Pipeline::start(&config, CancellationToken::new()).await {
        Ok(_) => panic!("the pipeline started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_bad_fence_file_fails_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fences.geojson");
    std::fs::write(
        &path,
        collection(&[square("a", 50.0, 10.0), square("a", 51.0, 10.0)]),
    )
    .unwrap();
    let mut config = test_config(dir.path());
    config.geofence.file = Some(path.clone());
    let e = start_error(config.clone()).await;
    assert_eq!(
        e,
        format!(
            "geofence.file = {}: duplicate fence id \"a\" (features #0 and #1)",
            path.display()
        )
    );
    config.geofence.file = Some(dir.path().join("missing.geojson"));
    let e = start_error(config).await;
    assert!(e.contains("missing.geojson: cannot read: "), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

fn fleetpipe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetpipe"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETPIPE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn write_config(dir: &Path, geofence: &str) -> PathBuf {
    let path = dir.join("fleetpipe.toml");
    let data = dir.join("data");
    std::fs::write(
        &path,
        format!(
            "[ingest.mqtt]\nlisten = \"127.0.0.1:0\"\nlisten_v5 = \"127.0.0.1:0\"\n[ingest.http]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n[sink.file]\ndir = {data:?}\n[geofence]\n{geofence}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn config_check_and_run_refuse_a_bad_fence_file_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let fences = dir.path().join("fences.geojson");
    std::fs::write(
        &fences,
        collection(&[json!({"type": "Feature", "properties": {"id": "far"},
            "geometry": {"type": "Polygon", "coordinates": [[[0.0, 86.0], [1.0, 86.0], [1.0, 87.0], [0.0, 86.0]]]}})]),
    )
    .unwrap();
    let config = write_config(dir.path(), &format!("file = {fences:?}\n"));
    for args in [&["config", "check"][..], &["run", "--config"][..]] {
        let out = fleetpipe().args(args).arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: config: geofence.file = ")
                && stderr.contains("fences.geojson: feature #0 (id \"far\")")
                && stderr.contains("polar"),
            "{args:?}: {stderr}"
        );
    }
    // Keys are checked too, naming them.
    for (body, needle) in [
        ("cell_size_m = 0\n", "geofence.cell_size_m"),
        // The H3 index's key, gone since the grid index replaced it.
        ("resolution = 9\n", "unknown field: found `resolution`"),
        ("watch_interval = \"often\"\n", "geofence.watch_interval"),
        ("fle = \"x\"\n", "fle"),
        (
            "[geofence.postgres]\nurl = \"postgresql://h/db\"\ntable = \"a b\"\n",
            "geofence.postgres.table",
        ),
    ] {
        let config = write_config(dir.path(), body);
        let out = fleetpipe()
            .args(["config", "check"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // A good file passes.
    std::fs::write(&fences, collection(&[square("a", 50.0, 10.0)])).unwrap();
    let config = write_config(
        dir.path(),
        &format!("file = {fences:?}\nwatch_interval = \"off\"\n"),
    );
    let out = fleetpipe()
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_geofence_section_documents_the_defaults() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/fleetpipe.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    let config = Config::load(&shipped).unwrap();
    assert_eq!(config.geofence, GeofenceConfig::default());
    // Uncommented, the [geofence.postgres] block sets only its URL.
    let block: String = text
        .lines()
        .skip_while(|l| *l != "# [geofence.postgres]")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.starts_with("[geofence.postgres]\nurl = "), "{block}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("[sink.file]\ndir = \"d\"\n{block}")).unwrap();
    let pg = Config::load(&path).unwrap().geofence.postgres.unwrap();
    assert_eq!(pg, PostgresFencesConfig::new(pg.url.clone()));
    // And `file` is documented with an example path.
    assert!(text.contains("\n# file = \"config/fences.geojson\"\n"));
}
