//! Enrichment's state checkpoints in PostgreSQL own their table: on a fresh
//! schema the store creates `vehicle_state` (and the schema) itself, with
//! the layout the checkpoints rely on; a schema where the TimescaleDB
//! sink's migration `0004_enrichment` created the table in earlier
//! versions keeps that table and its rows; stores starting together do not
//! race. Against the real local PostgreSQL.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use fleetpipe_enrich::{STATE_APPLICATION_NAME, StateStore};
use fleetpipe_model::VehicleId;
use fleetpipe_postgres::test_support::TEST_URL;
use fleetpipe_postgres::{Postgres, PostgresConfig, PostgresTls, quote_ident};
use serde_json::{Value, json};

const SECTION: &str = "sink.timescale";

/// A schema name of this test's own, mixed case (kept only when quoted).
fn schema_name(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("Fp_state_{test}_{}_{nanos}", std::process::id())
}

async fn admin() -> tokio_postgres::Client {
    let pg = Postgres::new(SECTION, TEST_URL, &PostgresTls::default(), "fp-test-admin").unwrap();
    pg.connect().await.unwrap().0
}

fn store(schema: &str) -> StateStore {
    StateStore::postgres(SECTION, &PostgresConfig::new(TEST_URL), schema).unwrap()
}

fn entries(n: usize, seq: u64) -> Vec<(VehicleId, String)> {
    (0..n)
        .map(|i| {
            (
                VehicleId::parse(&format!("van-{i}")).unwrap(),
                format!(r#"{{"seq": {seq}}}"#),
            )
        })
        .collect()
}

/// `vehicle_state`'s oid, or None without the table.
async fn table_oid(db: &tokio_postgres::Client, schema: &str) -> Option<u32> {
    let table = format!("{}.vehicle_state", quote_ident(schema));
    db.query_one("SELECT to_regclass($1)::oid", &[&table])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_store_creates_its_table_on_a_fresh_schema() {
    let db = admin().await;
    let schema = schema_name("fresh");
    let store = store(&schema);
    let StateStore::Postgres { postgres, .. } = &store else {
        panic!("a PostgreSQL store")
    };
    assert_eq!(
        postgres.config().get_application_name(),
        Some(STATE_APPLICATION_NAME)
    );
    assert_eq!(STATE_APPLICATION_NAME, "fleetpipe-state");
    assert_eq!(table_oid(&db, &schema).await, None);

    // The first load creates schema and table, and finds no checkpoint.
    assert!(store.load().await.unwrap().is_empty());
    let oid = table_oid(&db, &schema).await.expect("created");
    // Its layout (moved here from the sink's migration test).
    let state: BTreeMap<String, (String, String, Option<String>)> = db
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text, \
             column_default::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'vehicle_state'",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(state.len(), 3, "{state:?}");
    assert_eq!(state["vehicle_id"].0, "text");
    assert_eq!(state["vehicle_id"].1, "NO");
    assert_eq!(state["state"].0, "jsonb");
    assert_eq!(state["state"].1, "NO");
    assert_eq!(state["updated_at"].0, "timestamp with time zone");
    assert_eq!(state["updated_at"].1, "NO");
    assert_eq!(state["updated_at"].2.as_deref(), Some("now()"));
    let pkey: String = db
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 \
             AND indexname = 'vehicle_state_pkey'",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pkey.contains("(vehicle_id)"), "{pkey}");

    // Checkpoints round-trip; later loads leave the table as it is.
    store.save(entries(3, 1)).await.unwrap();
    store.save(entries(2, 2)).await.unwrap();
    let mut restored = store.load().await.unwrap();
    restored.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let mut expected = entries(2, 2);
    expected.extend(entries(3, 1).into_iter().skip(2));
    assert_eq!(restored, expected);
    store.prepare().await.unwrap();
    assert_eq!(table_oid(&db, &schema).await, Some(oid));

    // One row per vehicle, and a state is required (moved here from the
    // sink's upgrade test).
    let state = format!("{}.vehicle_state", quote_ident(&schema));
    db.batch_execute(&format!(
        "INSERT INTO {state} (vehicle_id, state) VALUES ('van-9', '{{\"soc\": 50}}'); \
         INSERT INTO {state} (vehicle_id, state) VALUES ('van-9', '{{\"soc\": 40}}') \
         ON CONFLICT (vehicle_id) DO UPDATE SET state = excluded.state, updated_at = now()"
    ))
    .await
    .expect("upsert state");
    let row = db
        .query_one(
            &format!("SELECT state, updated_at FROM {state} WHERE vehicle_id = 'van-9'"),
            &[],
        )
        .await
        .expect("one state row");
    assert_eq!(row.get::<_, Value>(0), json!({"soc": 40}));
    let err = db
        .batch_execute(&format!(
            "INSERT INTO {state} (vehicle_id) VALUES ('van-10')"
        ))
        .await
        .expect_err("state is required");
    assert_eq!(err.code().map(|c| c.code()), Some("23502"));

    db.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
        .await
        .unwrap();
}

/// A deployment of an earlier version: the sink's migration 0004 created
/// `vehicle_state` (this is its statement as it was) and checkpoints are in
/// it. The store uses that table as it is: same table, rows restored.
#[tokio::test]
async fn a_table_the_old_sink_migration_created_is_kept_with_its_checkpoints() {
    let db = admin().await;
    let schema = schema_name("old");
    let quoted = quote_ident(&schema);
    db.batch_execute(&format!(
        "CREATE SCHEMA {quoted}; \
         CREATE TABLE {quoted}.vehicle_state (\n\
             vehicle_id text        PRIMARY KEY,\n\
             state      jsonb       NOT NULL,\n\
             updated_at timestamptz NOT NULL DEFAULT now()\n\
         ); \
         INSERT INTO {quoted}.vehicle_state (vehicle_id, state) \
             VALUES ('van-old', '{{\"seq\": 7}}')"
    ))
    .await
    .unwrap();
    let oid = table_oid(&db, &schema).await.expect("the old table");

    let store = store(&schema);
    store.prepare().await.unwrap();
    let restored = store.load().await.unwrap();
    assert_eq!(
        restored,
        [(
            VehicleId::parse("van-old").unwrap(),
            r#"{"seq": 7}"#.to_owned()
        )]
    );
    store.save(entries(1, 3)).await.unwrap();
    assert_eq!(store.load().await.unwrap().len(), 2);
    assert_eq!(table_oid(&db, &schema).await, Some(oid), "the same table");

    db.batch_execute(&format!("DROP SCHEMA {quoted} CASCADE"))
        .await
        .unwrap();
}

/// Instances starting together on a fresh schema all start: creating the
/// table is serialized by the schema's advisory lock (an unguarded
/// `CREATE TABLE IF NOT EXISTS` may fail on the catalog when two run at
/// once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_starting_together_on_a_fresh_schema_all_start() {
    let db = admin().await;
    for round in 0..5 {
        let schema = schema_name(&format!("race{round}"));
        let loads: Vec<_> = (0..4)
            .map(|_| {
                let store = store(&schema);
                tokio::spawn(async move { store.load().await.map(|rows| rows.len()) })
            })
            .collect();
        for load in loads {
            assert_eq!(load.await.unwrap().unwrap(), 0);
        }
        assert!(table_oid(&db, &schema).await.is_some());
        db.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
            .await
            .unwrap();
    }
}

/// Creating the table waits for the schema's advisory lock (held by the
/// sink's migrations while they run), however long that takes: the
/// statement timeout bounds checkpoints, not that wait. The store does not
/// create the table while the lock is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_the_table_waits_for_the_schema_lock_beyond_the_statement_timeout() {
    use fleetpipe_postgres::sql::{SCHEMA_LOCK_CLASS, schema_lock_key};

    let db = admin().await;
    let schema = schema_name("locked");
    let key = schema_lock_key(&schema);
    db.execute(
        "SELECT pg_advisory_lock($1, $2)",
        &[&SCHEMA_LOCK_CLASS, &key],
    )
    .await
    .unwrap();
    let settings = PostgresConfig {
        statement_timeout: Some(std::time::Duration::from_millis(50)),
        ..PostgresConfig::new(TEST_URL)
    };
    let store = StateStore::postgres(SECTION, &settings, &schema).unwrap();
    let load = tokio::spawn(async move { store.load().await.map(|rows| rows.len()) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !load.is_finished(),
        "stopped waiting for the lock (gave up, or created the table without it)"
    );
    assert_eq!(table_oid(&db, &schema).await, None);
    db.execute(
        "SELECT pg_advisory_unlock($1, $2)",
        &[&SCHEMA_LOCK_CLASS, &key],
    )
    .await
    .unwrap();
    let rows = tokio::time::timeout(std::time::Duration::from_secs(20), load)
        .await
        .expect("continues once the lock is free")
        .unwrap()
        .expect("loads although it waited longer than statement_timeout");
    assert_eq!(rows, 0);
    assert!(table_oid(&db, &schema).await.is_some());
    db.batch_execute(&format!("DROP SCHEMA {} CASCADE", quote_ident(&schema)))
        .await
        .unwrap();
}
