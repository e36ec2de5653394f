#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use super::*;
use crate::PostgresFencesConfig;

const PG: &str = "postgresql://postgres@127.0.0.1:5432/test";

const ONE: &str = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
    "properties":{"id":"a","radius_m":100},"geometry":{"type":"Point","coordinates":[13.4,52.5]}}]}"#;

const TWO: &str = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
    "properties":{"id":"a","radius_m":100},"geometry":{"type":"Point","coordinates":[13.4,52.5]}},
    {"type":"Feature","properties":{"id":"b","radius_m":100},
    "geometry":{"type":"Point","coordinates":[13.5,52.6]}}]}"#;

#[test]
fn check_config_reads_and_parses_the_file_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.geojson");
    let config = GeofenceConfig {
        file: Some(path.clone()),
        ..GeofenceConfig::default()
    };
    let e = check_config(&config).unwrap_err().to_string();
    assert!(e.starts_with("geofence.file = "), "{e}");
    assert!(e.contains("cannot read"), "{e}");
    std::fs::write(&path, "{\"type\": \"FeatureCollection\"").unwrap();
    let e = check_config(&config).unwrap_err().to_string();
    assert!(e.contains("invalid GeoJSON") && !e.contains('\n'), "{e}");
    std::fs::write(&path, ONE).unwrap();
    check_config(&config).unwrap();
    check_config(&GeofenceConfig::default()).unwrap();
}

#[test]
fn check_config_refuses_a_bad_url_and_range() {
    let config = GeofenceConfig {
        postgres: Some(PostgresFencesConfig::new("postgresql://h:notaport/db")),
        ..GeofenceConfig::default()
    };
    let e = check_config(&config).unwrap_err().to_string();
    assert!(e.contains("geofence.postgres.url"), "{e}");
    let config = GeofenceConfig {
        cell_size_m: 0,
        ..GeofenceConfig::default()
    };
    let e = check_config(&config).unwrap_err().to_string();
    assert!(e.starts_with("geofence.cell_size_m"), "{e}");
}

/// The watcher's owner hears when it dies, with the reason, and a watcher
/// that ended normally is `Ok`.
#[tokio::test]
async fn a_dead_watcher_is_reported_to_its_owner() {
    let e = supervised(async { panic!("boom") }).await.unwrap_err();
    assert!(matches!(e, LoadError::Watcher(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.starts_with("geofence: the watcher of geofence.file stopped: ") && e.contains("boom"),
        "{e}"
    );
    supervised(async {}).await.unwrap();
}

/// Dropping the owner's future (e.g. its task set, on a failed start)
/// stops the watcher too: nothing runs without an owner.
#[tokio::test]
async fn an_abandoned_watcher_is_aborted() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let run = supervised(async move {
        let _tx = tx;
        std::future::pending::<()>().await;
    });
    // Started, then abandoned.
    let run = tokio::spawn(run);
    tokio::time::sleep(Duration::from_millis(50)).await;
    run.abort();
    let closed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(
        closed,
        Ok(None),
        "the watcher's task still holds its sender"
    );
}

#[tokio::test]
async fn the_watcher_reloads_a_changed_file_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.geojson");
    std::fs::write(&path, ONE).unwrap();
    let shutdown = CancellationToken::new();
    let config = GeofenceConfig {
        file: Some(path.clone()),
        watch_interval: Duration::from_millis(50),
        ..GeofenceConfig::default()
    };
    let mut service = FenceService::start(&config, shutdown.clone())
        .await
        .unwrap();
    assert_eq!(service.index().load().len(), 1);
    let watcher = service.take_watcher().expect("a watched file");
    assert!(service.take_watcher().is_none(), "taken once");
    let running = tokio::spawn(watcher.run());

    std::fs::write(&path, TWO).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.index().load().len() != 2 {
        assert!(Instant::now() < deadline, "the change was not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(service.reloads(), 1);
    assert_eq!(service.reload_errors(), 0);

    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), running).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the watcher did not end cleanly: {ended:?}"
    );
}

#[tokio::test]
async fn an_unwatched_file_has_no_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.geojson");
    std::fs::write(&path, ONE).unwrap();
    for config in [
        GeofenceConfig {
            file: Some(path.clone()),
            watch_interval: Duration::ZERO,
            ..GeofenceConfig::default()
        },
        GeofenceConfig::default(),
    ] {
        let mut service = FenceService::start(&config, CancellationToken::new())
            .await
            .unwrap();
        assert!(service.take_watcher().is_none(), "{config:?}");
    }
}

fn unique_table(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("geofences_{tag}_{}_{nanos}", std::process::id())
}

/// The table as `sql/fence_table.sql` creates it holds what the service
/// reads; creating it again changes nothing.
#[tokio::test]
async fn the_table_is_created_from_its_sql_and_read() {
    let config = PostgresFencesConfig {
        table: unique_table("create"),
        ..PostgresFencesConfig::new(PG)
    };
    let table = FenceTable::new(&config).unwrap();
    table.create().await.unwrap();
    let (db, connection) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432, database test");
    tokio::spawn(connection);
    let result = async {
        assert_eq!(table.read().await?.len(), 0);
        db.execute(
            &format!(
                "INSERT INTO {} (id, kind, radius_m, geometry) VALUES ('c', 'depot', 50, $1)",
                config.quoted_table()
            ),
            &[&serde_json::json!({"type": "Point", "coordinates": [10.0, 50.0]})],
        )
        .await
        .unwrap();
        table.create().await?;
        let set = table.read().await?;
        Ok::<_, LoadError>(
            set.fences()
                .iter()
                .map(|f| (f.id.clone(), f.kind.clone()))
                .collect::<Vec<_>>(),
        )
    }
    .await;
    db.batch_execute(&format!("DROP TABLE {}", config.quoted_table()))
        .await
        .unwrap();
    assert_eq!(result.unwrap(), [("c".to_owned(), crate::FenceKind::Depot)]);
}

#[tokio::test]
async fn a_missing_table_is_an_error_naming_it() {
    let config = PostgresFencesConfig {
        table: unique_table("missing"),
        ..PostgresFencesConfig::new(PG)
    };
    let e = FenceTable::new(&config).unwrap().read().await.unwrap_err();
    assert!(matches!(e, LoadError::Query { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.starts_with(&format!(
            "geofence.postgres (table {}): cannot read the table: ",
            config.table
        )) && e.contains("does not exist"),
        "{e}"
    );
}
