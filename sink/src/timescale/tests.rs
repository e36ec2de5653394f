//! Tests of the TimescaleDB sink against a real PostgreSQL.
//!
//! The server comes from `FLEETPIPE_TEST_PG_URL` (default
//! `postgresql://postgres@127.0.0.1:5432/test`). Every test works in a
//! schema of its own, `fp_test_<pid>_<n>`, dropped when the test ends (also
//! when it fails), and tags its connections with an `application_name` of
//! its own, so tests can run in parallel and kill only their own
//! connections.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fleetpipe_model::{
    Ack, AckStatus, AttrValue, BatchAck, DeadLetter, Enrichment, EventType, Gateway, Origin, Ping,
    PingFlags, RejectReason, SCHEMA_VERSION, SinkRecord, TelemetryRecord, VehicleEvent, VehicleId,
};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::migrate::{
    Applies, LOCK_CLASS, MIGRATIONS, interval, lock_key, plan, quote_ident, render,
};
use super::service::{
    Backoff, ErrorKind, LANE_QUEUE_PARTS, classify_sqlstate, collect, split_by_vehicle,
};
use super::writer::{DB_REFUSED, EVENT_SOURCE, EventRow, LatestRows, Row, StageRow, finest_cell};
use super::{StorageMode, TimescaleConfig, TimescaleError, TimescaleMode, TimescaleSink, migrate};

/// 2026-11-23T08:00:00.000Z.
const T0_MS: i64 = 1_795_420_800_000;
/// Upper bound for anything a test awaits, so a bug hangs no test run.
const PATIENCE: Duration = Duration::from_secs(30);
/// H3 cells of every ping, deliberately not sorted by resolution; the
/// finest (resolution 9) is the one stored.
const CELLS: [(u8, u64); 3] = [
    (7, 0x0871_f1d4_89ff_ffff),
    (9, 0x0891_f1d4_8987_ffff),
    (8, 0x0881_f1d4_89bf_ffff),
];
const FINEST_CELL: i64 = 0x0891_f1d4_8987_ffff;

// ---- database fixtures -----------------------------------------------------

fn base_url() -> String {
    std::env::var("FLEETPIPE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// `base_url()` with `application_name` set.
fn url_named(app: &str) -> String {
    let base = base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}application_name={app}")
}

/// A schema (and application name) of this test's own; the schema is
/// dropped when this is dropped.
struct TestDb {
    schema: String,
    app: String,
}

impl TestDb {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fp_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            schema: name.clone(),
            app: name,
        }
    }

    /// The sink's configuration for this test: small, fast settings.
    fn config(&self) -> TimescaleConfig {
        TimescaleConfig {
            schema: self.schema.clone(),
            writers: 2,
            batch_max_rows: 256,
            batch_max_wait: Duration::from_millis(5),
            retry_initial: Duration::from_millis(5),
            retry_max: Duration::from_millis(100),
            ..TimescaleConfig::new(url_named(&self.app))
        }
    }

    /// `table` qualified with this test's schema.
    fn table(&self, table: &str) -> String {
        format!("{}.{table}", quote_ident(&self.schema))
    }

    async fn count(&self, db: &Client, table: &str) -> i64 {
        db.query_one(&format!("SELECT count(*) FROM {}", self.table(table)), &[])
            .await
            .expect("count")
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = quote_ident(&self.schema);
        let apps = [self.app.clone(), observer_name(&self.app)];
        // Drop cannot await; a thread with a runtime of its own can.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let db = connect_as("fp_test_cleanup").await;
                // A failed test may leave a connection behind that holds a
                // lock (its runtime is unwinding): end this test's sessions
                // first.
                let killed = db
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name IN ($1, $2) AND pid <> pg_backend_pid()",
                        &[&apps[0], &apps[1]],
                    )
                    .await;
                let sql =
                    format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE");
                if let Err(e) = killed.and(db.batch_execute(&sql).await) {
                    eprintln!("cleanup of {schema} failed: {e:?}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Application name of a test's own connections.
fn observer_name(app: &str) -> String {
    format!("{app}_obs")
}

impl TestDb {
    /// A connection of the test itself, never killed by fault injection.
    async fn observer(&self) -> Client {
        connect_as(&observer_name(&self.app)).await
    }
}

/// A connection named `app`.
async fn connect_as(app: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(&url_named(app), NoTls)
        .await
        .expect("PostgreSQL at FLEETPIPE_TEST_PG_URL is reachable");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The storage mode `timescaledb = "auto"` gets on this server: TimescaleDB
/// when the extension is installed, or available and preloaded (so that
/// `CREATE EXTENSION` works; the tests connect as a superuser), plain
/// PostgreSQL otherwise. The tests assert this mode rather than assume one:
/// CI has no TimescaleDB, the maintainers' server has it.
async fn offered_mode(db: &Client) -> StorageMode {
    let timescale = fleetpipe_postgres::test_support::offers_timescaledb(db)
        .await
        .expect("pg_available_extensions");
    if timescale {
        StorageMode::TimescaleDb
    } else {
        StorageMode::Plain
    }
}

// ---- record fixtures -------------------------------------------------------

fn origin(received_at: i64) -> Origin {
    Origin {
        gateway: Gateway::Http,
        client: Some(Arc::from("dev-7")),
        received_at,
    }
}

/// Ping number `i` of `vehicle`: device time with a millisecond part, and
/// every third ping with every optional field, dtcs and attrs.
fn ping(vehicle: &str, seq: Option<u64>, ts_ms: i64, i: u64) -> Ping {
    let full = matches!(i % 3, 0);
    let some = |v: f64| full.then_some(v);
    let mut attrs = BTreeMap::new();
    if full {
        attrs.insert("fw".to_owned(), AttrValue::Str(format!("1.2.{i}")));
        attrs.insert("temp_c".to_owned(), AttrValue::Float(21.5));
        attrs.insert("doors".to_owned(), AttrValue::Int(4));
        attrs.insert("locked".to_owned(), AttrValue::Bool(true));
    }
    Ping {
        vehicle_id: VehicleId::parse(vehicle).expect("valid id"),
        seq,
        ts_ms,
        lat: 52.52 + i as f64 * 1e-5,
        lon: 13.405,
        alt_m: some(34.5),
        speed_kmh: Some(i as f64 / 10.0),
        heading_deg: some(270.0),
        accuracy_m: some(3.5),
        soc_pct: some(81.25),
        battery_v: some(12.6),
        charging: full.then_some(false),
        odometer_km: some(10_000.0 + i as f64),
        ignition: Some(matches!(i % 2, 0)),
        dtcs: if full {
            vec!["P0301".to_owned(), "U0100".to_owned()]
        } else {
            Vec::new()
        },
        attrs,
    }
}

/// What enrichment derived for `ping`: pings whose seq is a multiple of 3
/// have every field (every sixth one no derived speed, every other one
/// flagged late too), the others none.
fn enrichment_of(ping: &Ping) -> Enrichment {
    let Some(seq) = ping.seq.filter(|s| s % 3 == 0) else {
        return Enrichment::default();
    };
    let even = seq % 2 == 0;
    Enrichment {
        fences: vec![
            Arc::from(format!("zone-{}", seq % 5).as_str()),
            Arc::from("depot-7"),
        ],
        distance_m: Some(seq as f64 * 1.5 + 0.25),
        derived_speed_kmh: (!even).then_some(seq as f64 / 4.0),
        flags: PingFlags {
            late: even,
            duplicate: false,
            jump: true,
        },
    }
}

fn record(ping: Ping, ack: Ack) -> TelemetryRecord {
    TelemetryRecord {
        schema_version: SCHEMA_VERSION,
        origin: origin(ping.ts_ms + 250),
        enrichment: enrichment_of(&ping),
        ping,
        h3: CELLS.to_vec(),
        ack,
    }
}

fn telemetry(ping: Ping, ack: Ack) -> SinkRecord {
    SinkRecord::Telemetry(record(ping, ack))
}

/// The `i`-th ping of the standard data set: ten vehicles, `seq = i`.
fn nth(i: u64) -> Ping {
    ping(
        &format!("van-{}", i % 10),
        Some(i),
        T0_MS + i as i64 * 1000 + (i as i64 * 7) % 1000,
        i,
    )
}

/// The data of event `n`, as enrichment serializes it.
fn event_data(n: u64) -> String {
    format!(r#"{{"n":{n},"fence_id":"depot-7","soc_pct":12.5}}"#)
}

/// Event number `n` of the standard set: every type in turn, over four
/// vehicles, with distinct device times.
fn event_with(n: u64, data: &str, ack: Ack) -> VehicleEvent {
    VehicleEvent::new(
        Arc::from("fleetpipe-test"),
        EventType::ALL[n as usize % EventType::ALL.len()],
        VehicleId::parse(&format!("van-{}", n % 4)).expect("valid id"),
        &format!("key-{n}"),
        T0_MS + n as i64 * 1000 + 7,
        RawValue::from_string(data.to_owned()).expect("valid JSON"),
        ack,
    )
}

fn event(n: u64, ack: Ack) -> SinkRecord {
    SinkRecord::Event(event_with(n, &event_data(n), ack))
}

// ---- sink fixtures ---------------------------------------------------------

type RunHandle = JoinHandle<Result<(), TimescaleError>>;

async fn connect(config: TimescaleConfig) -> TimescaleSink {
    tokio::time::timeout(PATIENCE, TimescaleSink::connect(config))
        .await
        .expect("connect in time")
        .expect("sink connects")
}

/// Connects a sink on `config` and runs it, fed by a queue of `capacity`.
async fn start(config: TimescaleConfig, capacity: usize) -> (mpsc::Sender<SinkRecord>, RunHandle) {
    let sink = connect(config).await;
    let (tx, rx) = mpsc::channel(capacity);
    (tx, tokio::spawn(sink.run(rx)))
}

async fn send(tx: &mpsc::Sender<SinkRecord>, record: SinkRecord) {
    tx.send(record).await.expect("sink is running");
}

/// Closes the input and waits for the sink to drain and return.
async fn finish(tx: mpsc::Sender<SinkRecord>, run: RunHandle) {
    drop(tx);
    let result = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("sink returns once its input is closed")
        .expect("sink task did not panic");
    assert!(result.is_ok(), "sink failed: {result:?}");
}

async fn wait(batch: BatchAck) -> AckStatus {
    tokio::time::timeout(PATIENCE, batch.wait())
        .await
        .expect("batch settles")
}

/// Epoch milliseconds of a timestamp read back.
fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).expect("in range")
}

// ---- migrations ------------------------------------------------------------

/// The storage parameters of a table in the test's schema.
async fn reloptions(test: &TestDb, db: &Client, table: &str) -> Vec<String> {
    db.query_one(
        "SELECT coalesce(c.reloptions, '{}') FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        &[&test.schema, &table],
    )
    .await
    .expect("reloptions")
    .get(0)
}

async fn versions(test: &TestDb, db: &Client) -> Vec<(i32, String, OffsetDateTime)> {
    db.query(
        &format!(
            "SELECT version, name, applied_at FROM {} ORDER BY version",
            test.table("fleetpipe_migrations")
        ),
        &[],
    )
    .await
    .expect("migrations table")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The versions a fresh schema gets in `mode`.
fn fresh_versions(mode: StorageMode) -> Vec<i32> {
    match mode {
        StorageMode::Plain => vec![1, 2, 4, 5, 6, 7, 8, 9],
        StorageMode::TimescaleDb => vec![1, 3, 4, 5, 6, 7, 8, 9],
    }
}

#[tokio::test]
async fn migrate_creates_the_layout_of_the_offered_mode_and_is_idempotent() {
    let test = TestDb::new();
    let db = test.observer().await;
    let config = TimescaleConfig {
        timescaledb: TimescaleMode::Auto,
        ..test.config()
    };
    let mode = offered_mode(&db).await;
    assert_eq!(migrate(&config).await.expect("migrates"), mode);

    let first = versions(&test, &db).await;
    let applied: Vec<(i32, &str)> = first.iter().map(|(v, n, _)| (*v, n.as_str())).collect();
    let expected: Vec<(i32, &str)> = fresh_versions(mode)
        .into_iter()
        .map(|v| {
            let m = MIGRATIONS.iter().find(|m| m.version == v).expect("known");
            (v, m.name)
        })
        .collect();
    assert_eq!(applied, expected);

    let tables: BTreeSet<String> = db
        .query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'm')",
            &[&test.schema],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: BTreeSet<String> = [
        "dead_letters",
        "fleetpipe_migrations",
        "telemetry",
        "vehicle_events",
        "vehicle_latest",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // Plain: no continuous aggregate or any other TimescaleDB object.
    if mode == StorageMode::TimescaleDb {
        expected.insert("telemetry_1m".to_owned());
    }
    assert_eq!(tables, expected);

    let indexes: BTreeMap<String, String> = db
        .query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1",
            &[&test.schema],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // BRIN on ts in plain mode only: chunks partition by time already.
    match mode {
        StorageMode::Plain => assert!(
            indexes["telemetry_ts_brin"].contains("USING brin (ts)"),
            "{indexes:?}"
        ),
        StorageMode::TimescaleDb => assert!(!indexes.contains_key("telemetry_ts_brin")),
    }
    // One vehicle's track uses the dedupe index (0005 dropped the other).
    assert!(!indexes.contains_key("telemetry_vehicle_ts"), "{indexes:?}");
    assert!(
        indexes["telemetry_dedupe"].contains("UNIQUE INDEX telemetry_dedupe ON")
            && indexes["telemetry_dedupe"].contains("(vehicle_id, ts, seq) NULLS NOT DISTINCT"),
        "{indexes:?}"
    );
    assert!(
        indexes["vehicle_events_vehicle_time"].contains("(vehicle_id, \"time\")"),
        "{indexes:?}"
    );
    assert!(indexes.contains_key("vehicle_latest_pkey"), "{indexes:?}");
    assert_eq!(
        reloptions(&test, &db, "vehicle_latest").await,
        ["fillfactor=50"],
        "0006 leaves room for HOT updates"
    );
    // 0009: the query API's fleet-wide and per-fence event lists.
    assert!(
        indexes["vehicle_events_time_id"].contains("(\"time\", id)"),
        "{indexes:?}"
    );
    assert!(
        indexes["vehicle_events_fence_time"].contains("WHERE (data ? 'fence_id'::text)"),
        "{indexes:?}"
    );
    assert!(indexes.contains_key("dead_letters_pkey"), "{indexes:?}");
    assert!(indexes.contains_key("vehicle_events_pkey"), "{indexes:?}");

    // 0004: the enrichment columns (nullable, no default). Enrichment's
    // vehicle_state is not the sink's: enrichment creates it
    // (enrich/tests/state_store.rs checks its layout).
    let columns = |table: &'static str| {
        let db = &db;
        let schema = test.schema.clone();
        async move {
            db.query(
                "SELECT column_name::text, data_type::text, is_nullable::text, \
                 column_default::text FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2",
                &[&schema, &table],
            )
            .await
            .expect("columns")
            .iter()
            .map(|r| {
                let default: Option<String> = r.get(3);
                (
                    r.get::<_, String>(0),
                    (r.get::<_, String>(1), r.get::<_, String>(2), default),
                )
            })
            .collect::<BTreeMap<String, (String, String, Option<String>)>>()
        }
    };
    let telemetry = columns("telemetry").await;
    for (column, ty) in [
        ("fences", "ARRAY"),
        ("distance_m", "double precision"),
        ("derived_speed_kmh", "double precision"),
        ("flags", "ARRAY"),
    ] {
        assert_eq!(
            telemetry.get(column),
            Some(&(ty.to_owned(), "YES".to_owned(), None)),
            "{column}: {telemetry:?}"
        );
    }
    // 0007: the dedupe key holds no NULL; a ping without seq has -1.
    for column in ["vehicle_id", "ts", "seq"] {
        assert_eq!(telemetry[column].1, "NO", "{column} is NOT NULL");
    }
    assert_eq!(telemetry["seq"].0, "bigint");
    assert_eq!(telemetry["seq"].2.as_deref(), Some("'-1'::integer"));

    // Data written in between survives a second run, which applies nothing.
    db.batch_execute(&format!(
        "INSERT INTO {} (received_at, reason, detail, source, raw) \
         VALUES (now(), 'oversize', 'kept', 'http', '\\x00')",
        test.table("dead_letters")
    ))
    .await
    .expect("insert");
    assert_eq!(migrate(&config).await.expect("migrates again"), mode);
    assert_eq!(versions(&test, &db).await, first);
    assert_eq!(test.count(&db, "dead_letters").await, 1);
}

#[tokio::test]
async fn the_advisory_lock_serializes_concurrent_migrations() {
    let test = TestDb::new();
    let holder = test.observer().await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&LOCK_CLASS, &lock_key(&test.schema)],
        )
        .await
        .expect("lock");
    let config = test.config();
    let blocked = tokio::spawn(async move { migrate(&config).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "migrate ran without the lock");
    let schemas = holder
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&test.schema],
        )
        .await
        .expect("query")
        .get::<_, i64>(0);
    assert_eq!(schemas, 0, "migrate touched the schema without the lock");
    holder
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&LOCK_CLASS, &lock_key(&test.schema)],
        )
        .await
        .expect("unlock");
    let mode = tokio::time::timeout(PATIENCE, blocked)
        .await
        .expect("migrate continues once the lock is free")
        .expect("no panic")
        .expect("migrates");
    let offered = offered_mode(&holder).await;
    assert_eq!(mode, offered);

    // Several instances starting together on a fresh schema: all succeed,
    // each migration is applied once.
    let fresh = TestDb::new();
    let config = fresh.config();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { migrate(&config).await })
        })
        .collect();
    for run in runs {
        let mode = tokio::time::timeout(PATIENCE, run)
            .await
            .expect("in time")
            .expect("no panic")
            .expect("concurrent migrate succeeds");
        assert_eq!(mode, offered);
    }
    let applied: Vec<i32> = versions(&fresh, &holder)
        .await
        .iter()
        .map(|(v, _, _)| *v)
        .collect();
    assert_eq!(applied, fresh_versions(offered));
}

#[tokio::test]
async fn timescaledb_on_requires_the_extension_and_off_is_plain() {
    let test = TestDb::new();
    let db = test.observer().await;
    let on = migrate(&TimescaleConfig {
        timescaledb: TimescaleMode::On,
        ..test.config()
    })
    .await;
    match offered_mode(&db).await {
        StorageMode::Plain => {
            let err = on.expect_err("no TimescaleDB on this server");
            assert!(
                matches!(err, TimescaleError::TimescaleUnavailable(_)),
                "{err:?}"
            );
            assert!(
                err.to_string().contains("sink.timescale.timescaledb"),
                "{err}"
            );
        }
        StorageMode::TimescaleDb => {
            assert_eq!(on.expect("migrates"), StorageMode::TimescaleDb);
            let applied: Vec<i32> = versions(&test, &db).await.iter().map(|v| v.0).collect();
            assert_eq!(applied, fresh_versions(StorageMode::TimescaleDb));
        }
    }

    // A fresh schema: `off` on one already in TimescaleDB mode keeps it.
    let fresh = TestDb::new();
    let mode = migrate(&TimescaleConfig {
        timescaledb: TimescaleMode::Off,
        ..fresh.config()
    })
    .await
    .expect("migrates");
    assert_eq!(mode, StorageMode::Plain);
}

#[test]
fn the_plain_path_never_includes_timescaledb_sql() {
    let none = BTreeSet::new();
    let names = |plan: Vec<&super::migrate::Migration>| -> Vec<&str> {
        plan.iter().map(|m| m.name).collect()
    };
    assert_eq!(
        names(plan(&none, StorageMode::Plain)),
        [
            "0001_core",
            "0002_plain_indexes",
            "0004_enrichment",
            "0005_drop_telemetry_vehicle_ts",
            "0006_vehicle_latest_fillfactor",
            "0007_telemetry_seq_not_null",
            "0008_vehicle_latest_fences",
            "0009_api_event_indexes"
        ]
    );
    assert_eq!(
        names(plan(&none, StorageMode::TimescaleDb)),
        [
            "0001_core",
            "0003_timescaledb",
            "0004_enrichment",
            "0005_drop_telemetry_vehicle_ts",
            "0006_vehicle_latest_fillfactor",
            "0007_telemetry_seq_not_null",
            "0008_vehicle_latest_fences",
            "0009_api_event_indexes"
        ]
    );
    // A schema of an earlier release gets the new migrations in either mode.
    let plain: BTreeSet<i32> = [1, 2].into();
    assert_eq!(
        names(plan(&plain, StorageMode::Plain)),
        [
            "0004_enrichment",
            "0005_drop_telemetry_vehicle_ts",
            "0006_vehicle_latest_fillfactor",
            "0007_telemetry_seq_not_null",
            "0008_vehicle_latest_fences",
            "0009_api_event_indexes"
        ]
    );
    assert_eq!(
        names(plan(&plain, StorageMode::TimescaleDb)),
        [
            "0003_timescaledb",
            "0004_enrichment",
            "0005_drop_telemetry_vehicle_ts",
            "0006_vehicle_latest_fillfactor",
            "0007_telemetry_seq_not_null",
            "0008_vehicle_latest_fences",
            "0009_api_event_indexes"
        ]
    );
    let timescale: BTreeSet<i32> = [1, 3].into();
    assert_eq!(
        names(plan(&timescale, StorageMode::TimescaleDb)),
        [
            "0004_enrichment",
            "0005_drop_telemetry_vehicle_ts",
            "0006_vehicle_latest_fillfactor",
            "0007_telemetry_seq_not_null",
            "0008_vehicle_latest_fences",
            "0009_api_event_indexes"
        ]
    );
    // A current plain schema that later gains TimescaleDB gets only its
    // migration, which no longer brings the dropped index back.
    let timescale_sql = MIGRATIONS
        .iter()
        .find(|m| m.version == 3)
        .map_or("", |m| m.sql);
    assert!(
        !timescale_sql
            .lines()
            .any(|l| !l.trim_start().starts_with("--") && l.contains("telemetry_vehicle_ts")),
        "0003 must not recreate what 0005 dropped"
    );
    let plain: BTreeSet<i32> = [1, 2, 4, 5, 6, 7, 8, 9].into();
    assert!(plan(&plain, StorageMode::Plain).is_empty());
    assert_eq!(
        names(plan(&plain, StorageMode::TimescaleDb)),
        ["0003_timescaledb"]
    );

    // Whatever was applied before, plain mode never plans TimescaleDB SQL.
    for applied in [
        BTreeSet::new(),
        [1].into(),
        [1, 2].into(),
        [1, 2, 4].into(),
        [1, 2, 4, 5].into(),
        [1, 2, 4, 5, 6].into(),
    ] {
        for m in plan(&applied, StorageMode::Plain) {
            assert_ne!(m.applies, Applies::TimescaleOnly, "{}", m.name);
            let sql = m.sql.to_lowercase();
            for word in [
                "timescaledb",
                "hypertable",
                "time_bucket",
                "_policy",
                "last(",
            ] {
                let code: String = sql
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect();
                assert!(!code.contains(word), "{} uses {word}", m.name);
            }
        }
    }
    let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
        "versions must be unique and ordered"
    );
    // Only 0007 has TimescaleDB statements of its own, run before it in
    // that mode only: stopping the compression policy and decompressing.
    for m in MIGRATIONS {
        let prelude = m.timescale_prelude.map(str::to_lowercase);
        assert_eq!(prelude.is_some(), m.version == 7, "{}", m.name);
        if let Some(prelude) = prelude {
            assert!(
                prelude.contains("remove_compression_policy(")
                    && prelude.contains("decompress_chunk(c, true) from show_chunks("),
                "{prelude}"
            );
        }
    }
    let seq = MIGRATIONS.iter().find(|m| m.version == 7).expect("0007");
    assert_eq!(seq.applies, Applies::Always);
    let enrichment = MIGRATIONS.iter().find(|m| m.version == 4).expect("0004");
    assert_eq!(enrichment.applies, Applies::Always);
}

#[test]
fn migration_sql_renders_every_placeholder() {
    let config = TimescaleConfig {
        schema: "fleet".to_owned(),
        ..TimescaleConfig::new("postgresql://localhost/db")
    };
    for m in MIGRATIONS {
        for sql in std::iter::once(m.sql).chain(m.timescale_prelude) {
            let sql = render(sql, &quote_ident("fleet"), &config);
            assert!(!sql.contains("{schema}"), "{}", m.name);
            assert!(sql.contains("\"fleet\"."), "{}", m.name);
        }
    }
    let policies = render(
        include_str!("../../migrations/R__timescaledb_policies.sql"),
        &quote_ident("fleet"),
        &config,
    );
    assert!(
        policies.contains("compress_after => INTERVAL '691200 seconds'"),
        "{policies}"
    );
    assert!(
        policies.contains("drop_after => INTERVAL '7776000 seconds'"),
        "{policies}"
    );
    assert!(!policies.contains('{'), "{policies}");
    assert_eq!(
        interval(Duration::from_millis(1500)),
        "INTERVAL '1 seconds'"
    );
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    // The lock key is a fixed function of the name (FNV-1a), so instances
    // of different builds still exclude each other.
    assert_eq!(
        lock_key(""),
        i32::from_ne_bytes(0x811c_9dc5_u32.to_ne_bytes())
    );
    assert_eq!(lock_key("public"), lock_key("public"));
    assert_ne!(lock_key("public"), lock_key("fleet"));
}

// ---- writing ---------------------------------------------------------------

#[tokio::test]
async fn records_round_trip_and_are_acked_only_once_visible() {
    const N: u64 = 2000;
    const PER_ACK: u64 = 100;
    let test = TestDb::new();
    let db = Arc::new(test.observer().await);
    let sink = connect(test.config()).await;
    let (tx, rx) = mpsc::channel(N as usize);

    // Queued before the sink runs: nobody may hear "delivered" yet.
    let mut waiters = Vec::new();
    for chunk in 0..N / PER_ACK {
        let batch = BatchAck::new();
        for i in chunk * PER_ACK..(chunk + 1) * PER_ACK {
            send(&tx, telemetry(nth(i), batch.ack())).await;
        }
        let db = Arc::clone(&db);
        let table = test.table("telemetry");
        waiters.push(tokio::spawn(async move {
            let status = batch.wait().await;
            // The moment the ack resolves, another connection sees the rows.
            let visible: i64 = db
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE seq >= $1 AND seq < $2"),
                    &[
                        &((chunk * PER_ACK) as i64),
                        &(((chunk + 1) * PER_ACK) as i64),
                    ],
                )
                .await
                .expect("count")
                .get(0);
            (status, visible)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "acked before the sink ran"
    );

    let run = tokio::spawn(sink.run(rx));
    for waiter in waiters {
        let (status, visible) = tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("acks settle")
            .expect("waiter ran");
        assert_eq!(status, AckStatus::Delivered);
        assert_eq!(
            visible, PER_ACK as i64,
            "acked before the rows were visible"
        );
    }
    // Still running (input open): the rows are there because of the acks.
    assert!(!run.is_finished());
    finish(tx, run).await;
    assert_eq!(test.count(&db, "telemetry").await, N as i64);

    // Every field of every row, against what was sent.
    let rows = db
        .query(
            &format!(
                "SELECT vehicle_id, ts, seq, received_at, source, lat, lon, alt_m, speed_kmh, \
                 heading_deg, accuracy_m, soc_pct, battery_v, charging, odometer_km, ignition, \
                 h3_cell, dtcs, attrs, geofence_ids, fences, distance_m, derived_speed_kmh, \
                 flags FROM {} ORDER BY seq",
                test.table("telemetry")
            ),
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(rows.len(), N as usize);
    for (i, row) in (0..N).zip(&rows) {
        let p = nth(i);
        assert_eq!(row.get::<_, &str>("vehicle_id"), p.vehicle_id.as_str());
        assert_eq!(ms(row.get("ts")), p.ts_ms, "ts of seq {i}");
        assert_eq!(row.get::<_, Option<i64>>("seq"), Some(i as i64));
        assert_eq!(ms(row.get("received_at")), p.ts_ms + 250);
        assert_eq!(row.get::<_, &str>("source"), "http");
        assert_eq!(row.get::<_, f64>("lat"), p.lat);
        assert_eq!(row.get::<_, f64>("lon"), p.lon);
        assert_eq!(row.get::<_, Option<f64>>("alt_m"), p.alt_m);
        assert_eq!(row.get::<_, Option<f64>>("speed_kmh"), p.speed_kmh);
        assert_eq!(row.get::<_, Option<f64>>("heading_deg"), p.heading_deg);
        assert_eq!(row.get::<_, Option<f64>>("accuracy_m"), p.accuracy_m);
        assert_eq!(row.get::<_, Option<f64>>("soc_pct"), p.soc_pct);
        assert_eq!(row.get::<_, Option<f64>>("battery_v"), p.battery_v);
        assert_eq!(row.get::<_, Option<bool>>("charging"), p.charging);
        assert_eq!(row.get::<_, Option<f64>>("odometer_km"), p.odometer_km);
        assert_eq!(row.get::<_, Option<bool>>("ignition"), p.ignition);
        assert_eq!(row.get::<_, Option<i64>>("h3_cell"), Some(FINEST_CELL));
        assert_eq!(row.get::<_, Vec<String>>("dtcs"), p.dtcs);
        assert_eq!(
            row.get::<_, Value>("attrs"),
            serde_json::to_value(&p.attrs).expect("json")
        );
        assert!(row.get::<_, Vec<String>>("geofence_ids").is_empty());
        // Enrichment: empty arrays (not NULL) when nothing was derived.
        let e = enrichment_of(&p);
        assert_eq!(
            row.get::<_, Option<Vec<String>>>("fences"),
            Some(e.fences.iter().map(|f| f.to_string()).collect()),
            "fences of seq {i}"
        );
        assert_eq!(row.get::<_, Option<f64>>("distance_m"), e.distance_m);
        assert_eq!(
            row.get::<_, Option<f64>>("derived_speed_kmh"),
            e.derived_speed_kmh
        );
        assert_eq!(
            row.get::<_, Option<Vec<String>>>("flags"),
            Some(e.flags.names().map(str::to_owned).collect()),
            "flags of seq {i}"
        );
    }
    let full = &rows[3];
    assert_eq!(
        full.get::<_, Value>("attrs"),
        json!({"fw": "1.2.3", "temp_c": 21.5, "doors": 4, "locked": true})
    );
    assert_eq!(full.get::<_, Vec<String>>("dtcs"), ["P0301", "U0100"]);
    assert_eq!(ms(full.get("ts")), T0_MS + 3021);
    assert_eq!(full.get::<_, Vec<String>>("fences"), ["zone-3", "depot-7"]);
    assert_eq!(full.get::<_, Option<f64>>("distance_m"), Some(4.75));
    assert_eq!(full.get::<_, Option<f64>>("derived_speed_kmh"), Some(0.75));
    assert_eq!(full.get::<_, Vec<String>>("flags"), ["jump"]);
    let six = &rows[6];
    assert_eq!(six.get::<_, Option<f64>>("derived_speed_kmh"), None);
    assert_eq!(six.get::<_, Vec<String>>("flags"), ["late", "jump"]);
    let plain = &rows[1];
    assert!(plain.get::<_, Vec<String>>("fences").is_empty());
    assert!(plain.get::<_, Vec<String>>("flags").is_empty());
    assert_eq!(plain.get::<_, Option<f64>>("distance_m"), None);

    // vehicle_latest holds each vehicle's newest ping with its fences
    // (0008): the ping's, in order, '{}' (not NULL) for a ping in none.
    let latest = db
        .query(
            &format!(
                "SELECT vehicle_id, seq, fences FROM {} ORDER BY vehicle_id",
                test.table("vehicle_latest")
            ),
            &[],
        )
        .await
        .expect("latest rows");
    assert_eq!(latest.len(), 10);
    for row in &latest {
        let seq = row.get::<_, Option<i64>>("seq").expect("seq") as u64;
        assert_eq!(
            format!("van-{}", seq % 10),
            row.get::<_, String>("vehicle_id")
        );
        assert!(seq + 10 >= N, "the newest ping of its vehicle");
        let e = enrichment_of(&nth(seq));
        assert_eq!(
            row.get::<_, Option<Vec<String>>>("fences"),
            Some(e.fences.iter().map(|f| f.to_string()).collect()),
            "fences of the latest ping, seq {seq}"
        );
    }
    assert!(
        latest
            .iter()
            .any(|r| !r.get::<_, Vec<String>>("fences").is_empty()),
        "some latest ping is in fences"
    );
}

#[tokio::test]
async fn replays_add_no_rows() {
    let test = TestDb::new();
    let db = test.observer().await;
    let (tx, run) = start(test.config(), 64).await;
    // 200 pings with a seq, 100 without (distinct device times).
    let data = |i: u64| {
        if i < 200 {
            nth(i)
        } else {
            ping("van-x", None, T0_MS + i as i64, i)
        }
    };

    let batch = BatchAck::new();
    for i in 0..300 {
        send(&tx, telemetry(data(i), batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(test.count(&db, "telemetry").await, 300);

    // The same pings again, each twice (so also within one batch).
    let batch = BatchAck::new();
    for i in 0..300 {
        send(&tx, telemetry(data(i), batch.ack())).await;
        send(&tx, telemetry(data(i), batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(test.count(&db, "telemetry").await, 300);

    // The key is (vehicle, ts, seq): another seq, or a seq where there was
    // none, at the same device time is another ping.
    let batch = BatchAck::new();
    send(
        &tx,
        telemetry(ping("van-0", Some(9999), nth(0).ts_ms, 0), batch.ack()),
    )
    .await;
    send(
        &tx,
        telemetry(ping("van-x", Some(1), T0_MS + 250, 0), batch.ack()),
    )
    .await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(test.count(&db, "telemetry").await, 302);
    finish(tx, run).await;
    assert_eq!(test.count(&db, "dead_letters").await, 0);
}

/// Pings without `seq` replayed where the dedupe key's NULL handling cannot
/// help: into compressed chunks on TimescaleDB (whose 2.28 releases do not
/// honour `NULLS NOT DISTINCT` there), and on plain PostgreSQL under a key
/// whose NULLs are distinct, which is what that engine quirk amounts to.
/// The key holds no NULL (a ping without `seq` is stored with `seq = -1`),
/// so the replays are conflicts by plain equality and add nothing.
#[tokio::test]
async fn replays_without_seq_add_no_rows_whatever_the_engine_makes_of_nulls() {
    let test = TestDb::new();
    let db = test.observer().await;
    let config = test.config();
    let mode = migrate(&config).await.expect("migrates");
    assert_eq!(mode, offered_mode(&db).await);
    let table = test.table("telemetry");
    // 50 pings without seq, 50 with, over five vehicles.
    let data = |i: u64| {
        let seq = i.is_multiple_of(2).then_some(i);
        ping(&format!("van-{}", i % 5), seq, T0_MS + i as i64 * 1000, i)
    };
    let (tx, run) = start(config.clone(), 64).await;
    let batch = BatchAck::new();
    for i in 0..100 {
        send(&tx, telemetry(data(i), batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;
    assert_eq!(test.count(&db, "telemetry").await, 100);

    match mode {
        // The issue as reported: the chunks compressed, then the replay.
        StorageMode::TimescaleDb => {
            // (The policy may have compressed some already: their NOTICE
            // is harmless.)
            db.batch_execute(&format!(
                "SELECT compress_chunk(c, true) FROM show_chunks('{table}') AS c"
            ))
            .await
            .expect("compress_chunk");
            let compressed: i64 = db
                .query_one(
                    "SELECT count(*) FROM timescaledb_information.chunks \
                     WHERE hypertable_schema = $1 AND hypertable_name = 'telemetry' \
                     AND is_compressed",
                    &[&test.schema],
                )
                .await
                .expect("chunks")
                .get(0);
            assert!(compressed > 0, "nothing compressed");
        }
        // The same quirk on plain PostgreSQL: a key under which NULLs are
        // distinct.
        StorageMode::Plain => db
            .batch_execute(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT telemetry_dedupe, \
                 ADD CONSTRAINT telemetry_dedupe UNIQUE NULLS DISTINCT (vehicle_id, ts, seq)"
            ))
            .await
            .expect("key with distinct NULLs"),
    }

    // The same 100 pings again, each twice, by a sink started afresh.
    let (tx, run) = start(config, 64).await;
    let batch = BatchAck::new();
    for i in 0..100 {
        send(&tx, telemetry(data(i), batch.ack())).await;
        send(&tx, telemetry(data(i), batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;
    assert_eq!(
        test.count(&db, "telemetry").await,
        100,
        "replays added rows"
    );
    let without_seq: i64 = db
        .query_one(&format!("SELECT count(*) FROM {table} WHERE seq = -1"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(without_seq, 50, "a ping without seq is stored with seq -1");
    let nulls: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE seq IS NULL"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(nulls, 0);
    assert_eq!(test.count(&db, "dead_letters").await, 0);
}

#[tokio::test]
async fn vehicle_latest_never_moves_back_in_time() {
    let test = TestDb::new();
    let db = test.observer().await;
    let (tx, run) = start(test.config(), 64).await;
    let latest = |vehicle: &'static str| {
        let sql = format!(
            "SELECT ts, seq, lat, speed_kmh, h3_cell FROM {} WHERE vehicle_id = $1",
            test.table("vehicle_latest")
        );
        let db = &db;
        async move {
            let row = db.query_one(&sql, &[&vehicle]).await.expect("latest row");
            (
                ms(row.get(0)),
                row.get::<_, Option<i64>>(1),
                row.get::<_, f64>(2),
                row.get::<_, Option<f64>>(3),
                row.get::<_, Option<i64>>(4),
            )
        }
    };
    let at = |vehicle, seq: u64, offset_ms: i64| ping(vehicle, Some(seq), T0_MS + offset_ms, seq);

    // The newer pings first, in shuffled order within the batch.
    let batch = BatchAck::new();
    for seq in [15, 19, 11, 17, 13] {
        send(
            &tx,
            telemetry(at("van-1", seq, seq as i64 * 1000), batch.ack()),
        )
        .await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    let newest = at("van-1", 19, 19_000);
    assert_eq!(
        latest("van-1").await,
        (
            newest.ts_ms,
            Some(19),
            newest.lat,
            newest.speed_kmh,
            Some(FINEST_CELL)
        )
    );

    // An older batch arrives later: van-1 stays, van-2 is new.
    let batch = BatchAck::new();
    for seq in 1..=9 {
        send(
            &tx,
            telemetry(at("van-1", seq, seq as i64 * 1000), batch.ack()),
        )
        .await;
        send(
            &tx,
            telemetry(at("van-2", seq, seq as i64 * 1000), batch.ack()),
        )
        .await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(latest("van-1").await.0, newest.ts_ms);
    assert_eq!(latest("van-1").await.1, Some(19));
    assert_eq!(latest("van-2").await.0, T0_MS + 9000);

    // A newer one moves it forward; by device time, not by seq.
    let batch = BatchAck::new();
    send(&tx, telemetry(at("van-1", 3, 30_000), batch.ack())).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(latest("van-1").await.0, T0_MS + 30_000);
    assert_eq!(latest("van-1").await.1, Some(3));
    assert_eq!(test.count(&db, "vehicle_latest").await, 2);
    finish(tx, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_held_up_in_its_lane_holds_up_no_other_lane() {
    let test = TestDb::new();
    let db = test.observer().await;
    let lanes = 2;
    let (tx, run) = start(
        TimescaleConfig {
            writers: lanes,
            batch_max_wait: Duration::from_millis(200),
            ..test.config()
        },
        64,
    )
    .await;
    let van = |n: u64| format!("van-{n}");
    let stuck_lane = VehicleId::parse(&van(0)).expect("valid id").shard(lanes);
    let (same, other): (Vec<u64>, Vec<u64>) = (1..40)
        .partition(|&n| VehicleId::parse(&van(n)).expect("valid id").shard(lanes) == stuck_lane);
    assert!(
        !same.is_empty() && !other.is_empty(),
        "both lanes have vehicles"
    );

    // van-0 has a latest row; another session locks it.
    let warm = BatchAck::new();
    send(&tx, telemetry(ping(&van(0), Some(1), T0_MS, 1), warm.ack())).await;
    assert_eq!(wait(warm).await, AckStatus::Delivered);
    let locker = test.observer().await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {} WHERE vehicle_id = 'van-0' FOR UPDATE",
            test.table("vehicle_latest")
        ))
        .await
        .expect("lock van-0's latest row");

    // One batch: van-0, then vehicles of both lanes.
    let stuck = BatchAck::new();
    let free = BatchAck::new();
    send(
        &tx,
        telemetry(ping(&van(0), Some(2), T0_MS + 1000, 2), stuck.ack()),
    )
    .await;
    for &n in &same {
        send(
            &tx,
            telemetry(ping(&van(n), Some(1), T0_MS, 1), stuck.ack()),
        )
        .await;
    }
    for &n in &other {
        send(&tx, telemetry(ping(&van(n), Some(1), T0_MS, 1), free.ack())).await;
    }

    // The other lane commits while van-0's lane waits for the lock.
    assert_eq!(wait(free).await, AckStatus::Delivered);
    let stuck = tokio::spawn(stuck.wait());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !stuck.is_finished(),
        "van-0's lane did not wait for the lock"
    );
    assert_eq!(
        test.count(&db, "telemetry").await,
        1 + other.len() as i64,
        "only the free lane's rows are visible"
    );

    locker.batch_execute("COMMIT").await.expect("unlock");
    let status = tokio::time::timeout(PATIENCE, stuck)
        .await
        .expect("van-0's lane settles after the lock is released")
        .expect("waiter ran");
    assert_eq!(status, AckStatus::Delivered);
    assert_eq!(test.count(&db, "telemetry").await, 41);
    finish(tx, run).await;
}

#[test]
fn batches_split_by_vehicle_keep_each_vehicles_order() {
    let mut records = Vec::new();
    for i in 0..200u64 {
        records.push(telemetry(nth(i), Ack::none()));
        if i % 7 == 0 {
            records.push(event(i, Ack::none()));
        }
    }
    records.push(dead_letter(1, Bytes::from_static(b"{"), Ack::none()));
    records.push(dead_letter(2, Bytes::from_static(b"}"), Ack::none()));
    let total = records.len();
    for lanes in [1, 2, 3, 4] {
        let parts = split_by_vehicle(records.iter().map(SinkRecord::fork).collect(), lanes);
        assert_eq!(parts.len(), lanes);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), total);
        for (lane, part) in parts.iter().enumerate() {
            let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
            for record in part {
                match record {
                    SinkRecord::Telemetry(t) => {
                        assert_eq!(t.ping.vehicle_id.shard(lanes), lane);
                        let seq = t.ping.seq.expect("seq");
                        let last = last_seq.insert(t.ping.vehicle_id.to_string(), seq);
                        assert!(last.is_none_or(|last| last < seq), "order kept");
                    }
                    SinkRecord::Event(e) => assert_eq!(e.subject.shard(lanes), lane),
                    SinkRecord::DeadLetter(d) => {
                        assert_eq!(d.vehicle_id.as_ref().map_or(0, |v| v.shard(lanes)), lane);
                    }
                }
            }
        }
    }
}

#[test]
fn the_newest_ping_per_vehicle_is_picked_by_time_then_seq() {
    // (vehicle, seq, device time offset): in arrival order.
    let pings = [
        ("van-b", Some(5), 5_000),
        ("van-a", Some(2), 2_000),
        ("van-b", Some(9), 4_000),
        ("van-a", Some(1), 3_000),
        ("van-c", None, 7_000),
        ("van-c", Some(0), 7_000),
        ("van-c", None, 7_000),
        ("van-d", Some(3), 1_000),
        ("van-d", Some(4), 1_000),
        ("van-d", Some(2), 1_000),
    ];
    let records: Vec<TelemetryRecord> = pings
        .iter()
        .map(|&(vehicle, seq, offset)| record(ping(vehicle, seq, T0_MS + offset, 1), Ack::none()))
        .collect();
    let rows: Vec<StageRow<'_>> = records
        .iter()
        .map(|r| StageRow::new(r).expect("storable"))
        .collect();
    assert_eq!(
        LatestRows::new(rows.iter()).picked(),
        [
            ("van-a", T0_MS + 3_000, Some(1)),
            ("van-b", T0_MS + 5_000, Some(5)),
            ("van-c", T0_MS + 7_000, Some(0)),
            ("van-d", T0_MS + 1_000, Some(4)),
        ]
    );
    assert!(LatestRows::new(rows[..0].iter()).picked().is_empty());
    // Each with its fences as a JSON array (0008): van-c's seq 0 is in two.
    assert_eq!(
        LatestRows::new(rows.iter()).fences(),
        ["[]", "[]", r#"["zone-0","depot-7"]"#, "[]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_and_duplicate_nothing() {
    const N: u64 = 20_000;
    let test = TestDb::new();
    let db = test.observer().await;
    let config = TimescaleConfig {
        writers: 4,
        batch_max_rows: 500,
        ..test.config()
    };
    let (tx, run) = start(config, 1000).await;

    // Kill every connection of this test's sink, again and again, while it
    // writes.
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicU64::new(0));
    let killer = {
        let (stop, killed, app) = (Arc::clone(&stop), Arc::clone(&killed), test.app.clone());
        let killer_db = test.observer().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n: i64 = killer_db
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                         FROM pg_stat_activity WHERE datname = current_database() \
                         AND pid <> pg_backend_pid() AND application_name = $1",
                        &[&app],
                    )
                    .await
                    .expect("terminate")
                    .get(0);
                killed.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };

    let mut acks = Vec::with_capacity(N as usize);
    let mut event_acks = Vec::new();
    for i in 0..N {
        let batch = BatchAck::new();
        send(&tx, telemetry(nth(i), batch.ack())).await;
        acks.push(tokio::spawn(batch.wait()));
        if i % 10 == 0 {
            let batch = BatchAck::new();
            send(&tx, event(i / 10, batch.ack())).await;
            event_acks.push(tokio::spawn(batch.wait()));
        }
        if i % 2000 == 1999 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    let mut delivered = HashSet::new();
    for (i, ack) in acks.into_iter().enumerate() {
        let status = tokio::time::timeout(PATIENCE, ack)
            .await
            .expect("every ack settles")
            .expect("waiter ran");
        if status == AckStatus::Delivered {
            delivered.insert(i as i64);
        }
    }
    for ack in event_acks {
        let status = tokio::time::timeout(PATIENCE, ack)
            .await
            .expect("every event ack settles")
            .expect("waiter ran");
        assert_eq!(status, AckStatus::Delivered, "events are retried too");
    }
    stop.store(true, Ordering::Relaxed);
    killer.await.expect("killer ran");
    finish(tx, run).await;

    assert!(
        killed.load(Ordering::Relaxed) > 0,
        "the fault injection never hit a connection"
    );
    let seqs: Vec<i64> = db
        .query(&format!("SELECT seq FROM {}", test.table("telemetry")), &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stored: HashSet<i64> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), stored.len(), "a row was written twice");
    assert!(
        delivered.is_subset(&stored),
        "a delivered record is missing"
    );
    assert_eq!(
        delivered.len(),
        N as usize,
        "every record is eventually delivered"
    );
    assert_eq!(stored.len(), N as usize);
    assert_eq!(test.count(&db, "vehicle_events").await, (N / 10) as i64);
    // A lost connection is never mistaken for a refused row.
    assert_eq!(test.count(&db, "dead_letters").await, 0);
}

/// A ping whose attrs hold a NUL character, which jsonb refuses.
fn nul_in_attrs(i: u64) -> Ping {
    let mut p = nth(i);
    p.attrs
        .insert("note".to_owned(), AttrValue::Str("a\u{0}b".to_owned()));
    p
}

#[tokio::test]
async fn a_refused_row_is_isolated_and_dead_lettered() {
    const BAD: u64 = 37;
    let test = TestDb::new();
    let db = test.observer().await;
    let sink = connect(TimescaleConfig {
        batch_max_rows: 100,
        ..test.config()
    })
    .await;
    let (tx, rx) = mpsc::channel(100);
    let batch = BatchAck::new();
    for i in 0..100 {
        let p = if i == BAD { nul_in_attrs(i) } else { nth(i) };
        send(&tx, telemetry(p, batch.ack())).await;
    }
    // Everything is queued before the sink runs: one batch of 100.
    let run = tokio::spawn(sink.run(rx));
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    assert_eq!(test.count(&db, "telemetry").await, 99);
    let missing: i64 = db
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE seq = $1",
                test.table("telemetry")
            ),
            &[&(BAD as i64)],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(missing, 0);
    let dead = db
        .query(
            &format!(
                "SELECT reason, detail, source, vehicle_id, topic, raw, received_at FROM {}",
                test.table("dead_letters")
            ),
            &[],
        )
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 1);
    let row = &dead[0];
    assert_eq!(row.get::<_, &str>("reason"), DB_REFUSED);
    let detail: &str = row.get("detail");
    assert!(
        detail.contains("22P05") && detail.contains("Unicode"),
        "PostgreSQL's error is the detail: {detail}"
    );
    assert_eq!(row.get::<_, &str>("source"), "http");
    assert_eq!(row.get::<_, Option<&str>>("vehicle_id"), Some("van-7"));
    assert_eq!(row.get::<_, Option<&str>>("topic"), None);
    assert_eq!(ms(row.get("received_at")), nth(BAD).ts_ms + 250);
    let raw: Value = serde_json::from_slice(row.get("raw")).expect("raw is the record's JSON");
    assert_eq!(raw["seq"], BAD);
    assert_eq!(raw["vehicle_id"], "van-7");
    assert_eq!(raw["attrs"]["note"], "a\u{0}b");
    assert_eq!(raw["schema_version"], SCHEMA_VERSION);
}

#[tokio::test]
async fn unstorable_pings_are_dead_lettered_too() {
    let test = TestDb::new();
    let db = test.observer().await;
    let (tx, run) = start(test.config(), 16).await;
    let batch = BatchAck::new();
    let mut nul_text = nth(1);
    nul_text.dtcs = vec!["P0\u{0}01".to_owned()];
    let mut huge_seq = nth(2);
    huge_seq.seq = Some(u64::MAX);
    send(&tx, telemetry(nth(0), batch.ack())).await;
    send(&tx, telemetry(nul_text, batch.ack())).await;
    send(&tx, telemetry(huge_seq, batch.ack())).await;
    send(&tx, telemetry(nth(3), batch.ack())).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    assert_eq!(test.count(&db, "telemetry").await, 2);
    let details: Vec<String> = db
        .query(
            &format!(
                "SELECT detail FROM {} WHERE reason = 'db_refused' ORDER BY detail",
                test.table("dead_letters")
            ),
            &[],
        )
        .await
        .expect("dead letters")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(
        details.iter().any(|d| d.contains("22021")),
        "NUL in text: {details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains(&u64::MAX.to_string()) && d.contains("bigint")),
        "seq beyond bigint: {details:?}"
    );
}

#[tokio::test]
async fn a_locked_table_stops_acks_and_backpressures_the_input() {
    let test = TestDb::new();
    let db = test.observer().await;
    let (tx, run) = start(
        TimescaleConfig {
            writers: 2,
            batch_max_rows: 10,
            ..test.config()
        },
        5,
    )
    .await;
    // Warm up: the pool has a connection and its staging table.
    let warm = BatchAck::new();
    send(&tx, telemetry(nth(0), warm.ack())).await;
    assert_eq!(wait(warm).await, AckStatus::Delivered);

    let locker = test.observer().await;
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            test.table("telemetry")
        ))
        .await
        .expect("lock");

    // Send until the queue is full: each lane stuck in a transaction with
    // parts queued, the collector waiting on a full lane, five queued.
    let pending = BatchAck::new();
    let mut sent = 1u64;
    let mut blocked = false;
    while sent < 200 {
        match tokio::time::timeout(Duration::from_millis(500), tx.reserve()).await {
            Ok(permit) => {
                permit
                    .expect("sink is running")
                    .send(telemetry(nth(sent), pending.ack()));
                sent += 1;
            }
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "the input never filled up ({sent} sent)");
    // Per lane: the batch being written, a part held back and the queued
    // parts (each at most a batch); then the batch being split and the
    // input queue.
    let bound = 2 * (2 + LANE_QUEUE_PARTS as u64) * 10 + 10 + 5;
    assert!(
        sent <= bound + 1,
        "{sent} records were taken while the table was locked (bound {bound})"
    );

    // Nothing is acknowledged while the lock is held.
    let waiter = tokio::spawn(pending.wait());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !waiter.is_finished(),
        "acknowledged while the table was locked"
    );
    let (status, visible): (AckStatus, i64) = {
        assert_eq!(test.count(&locker, "telemetry").await, 1);
        locker.batch_execute("COMMIT").await.expect("unlock");
        let status = tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("acks settle after the lock is released")
            .expect("waiter ran");
        (status, test.count(&db, "telemetry").await)
    };
    assert_eq!(status, AckStatus::Delivered);
    assert_eq!(visible, sent as i64);

    // And the input flows again.
    let batch = BatchAck::new();
    for i in sent..sent + 30 {
        send(&tx, telemetry(nth(i), batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;
    assert_eq!(test.count(&db, "telemetry").await, sent as i64 + 30);
}

fn dead_letter(n: u64, raw: Bytes, ack: Ack) -> SinkRecord {
    SinkRecord::DeadLetter(DeadLetter {
        schema_version: SCHEMA_VERSION,
        reason: RejectReason::ALL[n as usize % RejectReason::ALL.len()],
        detail: format!("dead letter {n}: lat 91.5 is outside [-90, 90]"),
        vehicle_id: matches!(n % 2, 0).then(|| VehicleId::parse("van-42").expect("valid id")),
        topic: matches!(n % 2, 0).then(|| "fleet/v1/van-42/pings".to_owned()),
        origin: Origin {
            gateway: Gateway::Mqtt,
            client: None,
            received_at: T0_MS + n as i64,
        },
        raw,
        ack,
    })
}

#[tokio::test]
async fn dead_letters_keep_their_raw_bytes() {
    let test = TestDb::new();
    let db = test.observer().await;
    let (tx, run) = start(test.config(), 16).await;
    let every_byte: Vec<u8> = (0..=255u8).rev().collect();
    let raws = [
        Bytes::from(every_byte),
        Bytes::from_static(b"{\"lat\":91.5}"),
        Bytes::from_static(b"\0\0\xff not utf-8 \xc3\x28"),
        Bytes::new(),
    ];
    let batch = BatchAck::new();
    for (n, raw) in raws.iter().enumerate() {
        send(&tx, dead_letter(n as u64, raw.clone(), batch.ack())).await;
    }
    // A detail with a NUL (which text cannot hold) is kept, NUL replaced.
    let mut odd = dead_letter(4, Bytes::from_static(b"x"), batch.ack());
    if let SinkRecord::DeadLetter(d) = &mut odd {
        d.detail = "bad \u{0} byte".to_owned();
    }
    send(&tx, odd).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    let rows = db
        .query(
            &format!(
                "SELECT received_at, reason, detail, source, vehicle_id, topic, raw FROM {} \
                 ORDER BY received_at",
                test.table("dead_letters")
            ),
            &[],
        )
        .await
        .expect("dead letters");
    assert_eq!(rows.len(), 5);
    for (n, row) in rows.iter().take(4).enumerate() {
        assert_eq!(row.get::<_, &[u8]>("raw"), &raws[n][..], "raw of {n}");
        assert_eq!(ms(row.get("received_at")), T0_MS + n as i64);
        assert_eq!(
            row.get::<_, &str>("reason"),
            RejectReason::ALL[n % RejectReason::ALL.len()].as_str()
        );
        assert_eq!(
            row.get::<_, &str>("detail"),
            format!("dead letter {n}: lat 91.5 is outside [-90, 90]")
        );
        assert_eq!(row.get::<_, &str>("source"), "mqtt");
        let even = n % 2 == 0;
        assert_eq!(
            row.get::<_, Option<&str>>("vehicle_id"),
            even.then_some("van-42")
        );
        assert_eq!(
            row.get::<_, Option<&str>>("topic"),
            even.then_some("fleet/v1/van-42/pings")
        );
    }
    assert_eq!(rows[4].get::<_, &str>("detail"), "bad \u{fffd} byte");
    assert_eq!(test.count(&db, "telemetry").await, 0);
}

// ---- events ----------------------------------------------------------------

/// Every row of `vehicle_events`, by id: (vehicle_id, type, time, data,
/// received_at).
async fn event_rows(
    test: &TestDb,
    db: &Client,
) -> BTreeMap<String, (String, String, i64, Value, OffsetDateTime)> {
    db.query(
        &format!(
            "SELECT id, vehicle_id, type, time, data, received_at FROM {}",
            test.table("vehicle_events")
        ),
        &[],
    )
    .await
    .expect("events")
    .iter()
    .map(|r| {
        (
            r.get(0),
            (r.get(1), r.get(2), ms(r.get(3)), r.get(4), r.get(5)),
        )
    })
    .collect()
}

#[tokio::test]
async fn events_are_written_once_acked_once_visible_and_replays_add_no_rows() {
    const N: u64 = 3 * EventType::ALL.len() as u64;
    let test = TestDb::new();
    let db = test.observer().await;
    let sink = connect(test.config()).await;
    let (tx, rx) = mpsc::channel(256);

    // Queued (with telemetry in between) before the sink runs: nobody may
    // hear "delivered" yet. A timer event carries no sender's ack; it is
    // written all the same.
    send(&tx, event(N, Ack::none())).await;
    let batch = BatchAck::new();
    for n in 0..N {
        send(&tx, event(n, batch.ack())).await;
        if n % 3 == 0 {
            send(&tx, telemetry(nth(n), batch.ack())).await;
        }
    }
    let waiter = tokio::spawn(batch.wait());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "acked before the sink ran");
    let started = OffsetDateTime::now_utc();
    let run = tokio::spawn(sink.run(rx));
    let status = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("acks settle")
        .expect("waiter ran");
    assert_eq!(status, AckStatus::Delivered);
    // The input is still open: the rows are there because of the ack (all
    // were queued before the sink ran, so they were one batch).
    assert!(!run.is_finished());
    assert_eq!(test.count(&db, "vehicle_events").await, (N + 1) as i64);
    assert_eq!(test.count(&db, "telemetry").await, (N / 3) as i64);

    let first = event_rows(&test, &db).await;
    assert_eq!(first.len() as u64, N + 1);
    for n in 0..=N {
        let SinkRecord::Event(e) = event(n, Ack::none()) else {
            unreachable!()
        };
        let (vehicle, ty, time, data, received_at) = first
            .get(&e.id)
            .unwrap_or_else(|| panic!("event {n} ({}) missing", e.id));
        assert_eq!(vehicle, e.subject.as_str(), "event {n}");
        assert_eq!(ty, e.event_type.as_str(), "event {n}");
        assert_eq!(*time, e.time_ms, "event {n}");
        assert_eq!(
            *data,
            serde_json::from_str::<Value>(&event_data(n)).expect("json")
        );
        // received_at is the database's time of the insert.
        assert!(
            *received_at >= started - time::Duration::seconds(5)
                && *received_at <= OffsetDateTime::now_utc() + time::Duration::seconds(5),
            "received_at {received_at} of event {n}"
        );
    }

    // The same events again, each twice (so also within one batch): no new
    // row, every ack delivered, the first rows untouched.
    let replay = BatchAck::new();
    for n in 0..=N {
        send(&tx, event(n, replay.ack())).await;
        send(&tx, event(n, replay.ack())).await;
    }
    assert_eq!(wait(replay).await, AckStatus::Delivered);
    assert_eq!(test.count(&db, "vehicle_events").await, (N + 1) as i64);
    assert_eq!(event_rows(&test, &db).await, first);

    // The id is of (vehicle, type, key, time): another key or another time
    // of the same event is another event.
    let batch = BatchAck::new();
    let base = event_with(0, &event_data(0), Ack::none());
    for (key, time_ms) in [("key-x", base.time_ms), ("key-0", base.time_ms + 1)] {
        send(
            &tx,
            SinkRecord::Event(VehicleEvent::new(
                base.source.clone(),
                base.event_type,
                base.subject.clone(),
                key,
                time_ms,
                base.data.clone(),
                batch.ack(),
            )),
        )
        .await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(test.count(&db, "vehicle_events").await, (N + 3) as i64);
    finish(tx, run).await;
    assert_eq!(test.count(&db, "dead_letters").await, 0);
}

#[tokio::test]
async fn a_refused_event_is_isolated_and_dead_lettered() {
    const BAD: u64 = 11;
    let test = TestDb::new();
    let db = test.observer().await;
    let sink = connect(TimescaleConfig {
        batch_max_rows: 100,
        ..test.config()
    })
    .await;
    let (tx, rx) = mpsc::channel(100);
    let batch = BatchAck::new();
    let bad_data = r#"{"note":"a\u0000b"}"#;
    for n in 0..40 {
        let record = if n == BAD {
            // jsonb cannot hold U+0000: refused for good (22P05).
            SinkRecord::Event(event_with(n, bad_data, batch.ack()))
        } else {
            event(n, batch.ack())
        };
        send(&tx, record).await;
        send(&tx, telemetry(nth(n), batch.ack())).await;
    }
    // An event whose time no timestamptz holds never reaches the database.
    let mut far = event_with(99, &event_data(99), batch.ack());
    far.time_ms = i64::MAX;
    let far_id = far.id.clone();
    send(&tx, SinkRecord::Event(far)).await;
    // Everything is queued before the sink runs: one batch.
    let run = tokio::spawn(sink.run(rx));
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    assert_eq!(test.count(&db, "vehicle_events").await, 39);
    assert_eq!(test.count(&db, "telemetry").await, 40);
    let bad = event_with(BAD, bad_data, Ack::none());
    assert!(!event_rows(&test, &db).await.contains_key(&bad.id));
    let dead = db
        .query(
            &format!(
                "SELECT reason, detail, source, vehicle_id, topic, raw, received_at FROM {} \
                 ORDER BY id",
                test.table("dead_letters")
            ),
            &[],
        )
        .await
        .expect("dead letters");
    assert_eq!(dead.len(), 2);
    let mut seen = BTreeSet::new();
    for row in &dead {
        assert_eq!(row.get::<_, &str>("reason"), DB_REFUSED);
        assert_eq!(row.get::<_, &str>("source"), EVENT_SOURCE);
        assert_eq!(row.get::<_, Option<&str>>("topic"), None);
        let raw: Value = serde_json::from_slice(row.get("raw")).expect("raw is the event's JSON");
        assert_eq!(raw["specversion"], "1.0");
        assert_eq!(
            row.get::<_, Option<&str>>("vehicle_id"),
            raw["subject"].as_str()
        );
        let detail: &str = row.get("detail");
        let id = raw["id"].as_str().expect("id").to_owned();
        if id == bad.id {
            assert_eq!(
                raw,
                serde_json::from_str::<Value>(&bad.to_json()).expect("json")
            );
            assert_eq!(raw["data"]["note"], "a\u{0}b");
            assert!(
                detail.contains("22P05"),
                "PostgreSQL's error is the detail: {detail}"
            );
        } else {
            assert_eq!(id, far_id);
            assert!(detail.contains("out of range"), "{detail}");
        }
        seen.insert(id);
    }
    assert_eq!(seen.len(), 2);
}

// ---- upgrade -----------------------------------------------------------------

#[tokio::test]
async fn a_schema_of_the_previous_release_is_upgraded_in_place() {
    let test = TestDb::new();
    let db = test.observer().await;
    let config = test.config();
    let schema = quote_ident(&test.schema);
    // What the previous release left: 0001 and 0002, and a row.
    db.batch_execute(&format!(
        "CREATE SCHEMA {schema}; \
         CREATE TABLE {schema}.fleetpipe_migrations (version integer PRIMARY KEY, \
             name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .expect("old schema");
    for m in MIGRATIONS.iter().filter(|m| m.version <= 2) {
        db.batch_execute(&render(m.sql, &schema, &config))
            .await
            .expect("old migration");
        db.execute(
            &format!("INSERT INTO {schema}.fleetpipe_migrations (version, name) VALUES ($1, $2)"),
            &[&m.version, &m.name],
        )
        .await
        .expect("record");
    }
    // Two rows: one with a seq, one without (NULL, as that release stored
    // it), 10 days old.
    let old_ts = T0_MS - 10 * 86_400_000;
    db.batch_execute(&format!(
        "INSERT INTO {schema}.telemetry (vehicle_id, ts, seq, received_at, source, lat, lon) \
         VALUES ('old-1', now(), 1, now(), 'http', 1, 2), \
                ('old-2', to_timestamp({old_ts} / 1000.0), NULL, now(), 'http', 1, 2)"
    ))
    .await
    .expect("old rows");

    let mode = offered_mode(&db).await;
    let (tx, run) = start(config, 16).await;
    let applied: Vec<i32> = versions(&test, &db)
        .await
        .iter()
        .map(|(v, _, _)| *v)
        .collect();
    // Switching to TimescaleDB (auto, where it is offered) is one more.
    let expected: Vec<i32> = match mode {
        StorageMode::Plain => vec![1, 2, 4, 5, 6, 7, 8, 9],
        StorageMode::TimescaleDb => vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
    };
    assert_eq!(applied, expected);
    let old_index: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = 'telemetry_vehicle_ts'",
            &[&test.schema],
        )
        .await
        .expect("indexes")
        .get(0);
    assert_eq!(old_index, 0, "0005 drops the index 0002 created");
    assert_eq!(
        reloptions(&test, &db, "vehicle_latest").await,
        ["fillfactor=50"]
    );
    let batch = BatchAck::new();
    send(&tx, telemetry(nth(3), batch.ack())).await;
    send(&tx, event(3, batch.ack())).await;
    // A replay of the old ping without seq: 0007 gave it seq -1, so it is
    // the same key and adds nothing.
    send(&tx, telemetry(ping("old-2", None, old_ts, 1), batch.ack())).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    let seqs: Vec<(String, i64)> = db
        .query(
            &format!(
                "SELECT vehicle_id, seq FROM {} ORDER BY vehicle_id",
                test.table("telemetry")
            ),
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        seqs,
        [
            ("old-1".to_owned(), 1),
            ("old-2".to_owned(), -1),
            ("van-3".to_owned(), 3)
        ]
    );

    // The old rows have NULL enrichment, the new one its values.
    let rows = db
        .query(
            &format!(
                "SELECT vehicle_id, fences, distance_m, derived_speed_kmh, flags FROM {} \
                 WHERE vehicle_id <> 'old-2' ORDER BY vehicle_id",
                test.table("telemetry")
            ),
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2);
    let old = &rows[0];
    assert_eq!(old.get::<_, &str>(0), "old-1");
    assert_eq!(old.get::<_, Option<Vec<String>>>(1), None);
    assert_eq!(old.get::<_, Option<f64>>(2), None);
    assert_eq!(old.get::<_, Option<f64>>(3), None);
    assert_eq!(old.get::<_, Option<Vec<String>>>(4), None);
    let new = &rows[1];
    assert_eq!(
        new.get::<_, Option<Vec<String>>>(1),
        Some(vec!["zone-3".to_owned(), "depot-7".to_owned()])
    );
    assert_eq!(
        new.get::<_, Option<Vec<String>>>(4),
        Some(vec!["jump".to_owned()])
    );
    assert_eq!(test.count(&db, "vehicle_events").await, 1);
}

// ---- metrics ---------------------------------------------------------------

#[test]
fn metrics_follow_the_contract() {
    use metrics_util::debugging::DebuggingRecorder;

    let test = TestDb::new();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Everything runs on this thread, where the local recorder is installed.
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let sink = connect(test.config()).await;
            let (tx, rx) = mpsc::channel(32);
            let batch = BatchAck::new();
            for i in 0..10 {
                send(&tx, telemetry(nth(i), batch.ack())).await;
            }
            send(&tx, telemetry(nul_in_attrs(10), batch.ack())).await;
            send(&tx, dead_letter(0, Bytes::from_static(b"raw"), batch.ack())).await;
            send(&tx, dead_letter(1, Bytes::from_static(b"raw"), batch.ack())).await;
            for n in 0..4 {
                send(&tx, event(n, batch.ack())).await;
            }
            let run = tokio::spawn(sink.run(rx));
            assert_eq!(wait(batch).await, AckStatus::Delivered);
            // A replay takes the staging path.
            let replay = BatchAck::new();
            send(&tx, telemetry(nth(0), replay.ack())).await;
            assert_eq!(wait(replay).await, AckStatus::Delivered);
            // One refresh of the pool gauges after the writes returned
            // their connections.
            tokio::time::sleep(Duration::from_millis(1300)).await;
            finish(tx, run).await;
        });
    });

    let metrics = crate::test_metrics::Snapshot::take(&snapshotter);
    let counter = |name: &str, labels: &[(&str, &str)]| metrics.counter(name, labels);
    let gauge = |name: &str| metrics.gauge(name, &[("sink", "timescale")]);
    let histogram = |name: &str| metrics.histogram(name, &[("sink", "timescale")]);

    let tel = [("sink", "timescale"), ("stream", "telemetry")];
    let dl = [("sink", "timescale"), ("stream", "dead_letter")];
    let ev = [("sink", "timescale"), ("stream", "events")];
    assert_eq!(counter("fleetpipe_sink_records_total", &tel), 11);
    assert_eq!(
        counter(
            "fleetpipe_sink_staged_parts_total",
            &[("sink", "timescale")]
        ),
        1,
        "only the replay is staged"
    );
    assert_eq!(counter("fleetpipe_sink_records_total", &ev), 4);
    assert!(counter("fleetpipe_sink_bytes_total", &ev) > 4 * 50);
    // Two dead letters and the refused ping.
    assert_eq!(counter("fleetpipe_sink_records_total", &dl), 3);
    assert!(counter("fleetpipe_sink_bytes_total", &tel) > 10 * 100);
    assert!(counter("fleetpipe_sink_bytes_total", &dl) > 0);
    assert!(
        counter(
            "fleetpipe_sink_errors_total",
            &[("sink", "timescale"), ("kind", "permanent")]
        ) >= 1
    );
    let sizes = histogram("fleetpipe_sink_batch_records");
    assert_eq!(sizes.iter().sum::<f64>(), 18.0, "{sizes:?}");
    let seconds = histogram("fleetpipe_sink_batch_seconds");
    assert_eq!(seconds.len(), sizes.len());
    assert!(
        seconds.iter().all(|s| *s >= 0.0 && *s < 60.0),
        "{seconds:?}"
    );
    assert_eq!(gauge("fleetpipe_sink_inflight_batches"), 0.0);
    assert_eq!(gauge("fleetpipe_sink_oldest_unacked_seconds"), 0.0);
    let pool = |state: &str| {
        metrics.gauge(
            "fleetpipe_sink_pool_connections",
            &[("sink", "timescale"), ("state", state)],
        )
    };
    assert_eq!(pool("in_use"), 0.0, "every connection is back in the pool");
    assert!(pool("idle") >= 1.0, "the writes opened connections");
    assert_eq!(gauge("fleetpipe_sink_pool_waiting"), 0.0);
}

// ---- configuration ---------------------------------------------------------

#[test]
fn config_defaults_match_the_documentation() {
    let config: TimescaleConfig =
        serde_json::from_str(r#"{"url": "postgresql://db/fleet"}"#).expect("parses");
    assert_eq!(config, TimescaleConfig::new("postgresql://db/fleet"));
    assert_eq!(config.schema, "public");
    assert_eq!(config.writers, 4);
    assert_eq!(config.batch_max_rows, 5000);
    assert_eq!(config.batch_max_wait, Duration::from_millis(50));
    assert_eq!(config.timescaledb, TimescaleMode::Auto);
    assert_eq!(config.retention, Duration::from_secs(90 * 86_400));
    assert_eq!(config.compress_after, Duration::from_secs(8 * 86_400));
    assert_eq!(config.retry_initial, Duration::from_millis(100));
    assert_eq!(config.retry_max, Duration::from_secs(10));
    assert!(config.validate().is_ok());
}

#[test]
fn config_reads_every_key() {
    let config: TimescaleConfig = serde_json::from_str(
        r#"{"url": "postgresql://db/fleet", "schema": "fleet", "writers": 8,
            "batch_max_rows": 1000, "batch_max_wait": "20ms", "timescaledb": "on",
            "retention": "30days", "compress_after": "1day", "retry_initial": "1s",
            "retry_max": "1m", "tls": {"mode": "verify-ca", "ca_file": "ca.pem",
            "client_cert_file": "c.pem", "client_key_file": "c.key"}}"#,
    )
    .expect("parses");
    assert_eq!(
        config,
        TimescaleConfig {
            url: "postgresql://db/fleet".to_owned(),
            tls: fleetpipe_postgres::PostgresTls {
                mode: fleetpipe_postgres::TlsMode::VerifyCa,
                ca_file: Some("ca.pem".into()),
                client_cert_file: Some("c.pem".into()),
                client_key_file: Some("c.key".into()),
            },
            connect_timeout: None,
            statement_timeout: None,
            schema: "fleet".to_owned(),
            writers: 8,
            batch_max_rows: 1000,
            batch_max_wait: Duration::from_millis(20),
            timescaledb: TimescaleMode::On,
            retention: Duration::from_secs(30 * 86_400),
            compress_after: Duration::from_secs(86_400),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    );
    for (text, mode) in [
        ("auto", TimescaleMode::Auto),
        ("on", TimescaleMode::On),
        ("off", TimescaleMode::Off),
    ] {
        let config: TimescaleConfig =
            serde_json::from_value(json!({"url": "u", "timescaledb": text})).expect("parses");
        assert_eq!(config.timescaledb, mode);
        assert_eq!(mode.as_str(), text);
    }
}

#[test]
fn config_rejects_unknown_keys_bad_values_and_requires_url() {
    let err = serde_json::from_str::<TimescaleConfig>(r#"{"url": "u", "batch_size": 5}"#)
        .expect_err("unknown key");
    assert!(
        err.to_string().contains("unknown field `batch_size`"),
        "{err}"
    );
    let err = serde_json::from_str::<TimescaleConfig>(r#"{"writers": 2}"#).expect_err("no url");
    assert!(err.to_string().contains("missing field `url`"), "{err}");
    let err = serde_json::from_str::<TimescaleConfig>(r#"{"url": "u", "timescaledb": "yes"}"#)
        .expect_err("bad mode");
    assert!(err.to_string().contains("unknown variant `yes`"), "{err}");

    let base = TimescaleConfig::new("postgresql://db/fleet");
    let cases = [
        (
            "writers",
            TimescaleConfig {
                writers: 0,
                ..base.clone()
            },
        ),
        (
            "batch_max_rows",
            TimescaleConfig {
                batch_max_rows: 0,
                ..base.clone()
            },
        ),
        (
            "schema",
            TimescaleConfig {
                schema: String::new(),
                ..base.clone()
            },
        ),
        (
            "schema",
            TimescaleConfig {
                schema: "a-b".to_owned(),
                ..base.clone()
            },
        ),
        (
            "schema",
            TimescaleConfig {
                schema: "1abc".to_owned(),
                ..base.clone()
            },
        ),
        (
            "schema",
            TimescaleConfig {
                schema: "x".repeat(64),
                ..base.clone()
            },
        ),
        (
            "retry_initial",
            TimescaleConfig {
                retry_initial: Duration::ZERO,
                ..base.clone()
            },
        ),
        (
            "retry_max",
            TimescaleConfig {
                retry_max: Duration::from_millis(1),
                ..base.clone()
            },
        ),
        (
            "retention",
            TimescaleConfig {
                retention: Duration::from_millis(10),
                ..base.clone()
            },
        ),
        (
            "compress_after",
            TimescaleConfig {
                compress_after: Duration::ZERO,
                ..base.clone()
            },
        ),
    ];
    for (key, config) in cases {
        let err = config.validate().expect_err(key);
        assert!(
            matches!(&err, TimescaleError::InvalidConfig { key: k, .. } if *k == key),
            "{key}: {err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("sink.timescale.{key} ")),
            "{err}"
        );
    }
    assert!(
        TimescaleConfig {
            schema: "Fleet_2".to_owned(),
            ..base.clone()
        }
        .validate()
        .is_ok()
    );

    // [sink.timescale.tls]: parsed with libpq's mode names, validated with
    // the rest, naming the key.
    let config: TimescaleConfig = serde_json::from_value(
        json!({"url": "u", "tls": {"mode": "verify-full", "ca_file": "/etc/ca.pem"}}),
    )
    .expect("parses");
    assert_eq!(
        config.tls,
        fleetpipe_postgres::PostgresTls::new(
            fleetpipe_postgres::TlsMode::VerifyFull,
            Some("/etc/ca.pem".into())
        )
    );
    config.validate().expect("valid");
    let config: TimescaleConfig =
        serde_json::from_value(json!({"url": "u", "tls": {"mode": "verify-full"}}))
            .expect("parses");
    let err = config.validate().expect_err("no ca_file").to_string();
    assert!(
        err.starts_with("sink.timescale.tls.ca_file is required with tls.mode = \"verify-full\""),
        "{err}"
    );
    let err = serde_json::from_value::<TimescaleConfig>(
        json!({"url": "u", "tls": {"mode": "verify-full", "sslrootcert": "x"}}),
    )
    .expect_err("unknown key");
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}

/// The connection keys of fleetpipe-postgres sit in `[sink.timescale]`
/// itself (where `url` and `tls` always were), are validated with the rest
/// naming the key, and the sink's connections are named `fleetpipe-sink`.
#[test]
fn the_connection_keys_parse_in_the_sinks_table_and_are_validated() {
    let config: TimescaleConfig = serde_json::from_value(json!({
        "url": "postgresql://db/fleet", "connect_timeout": "3s",
        "statement_timeout": "30s", "writers": 2
    }))
    .expect("parses");
    assert_eq!(config.connect_timeout, Some(Duration::from_secs(3)));
    assert_eq!(config.statement_timeout, Some(Duration::from_secs(30)));
    assert_eq!(config.writers, 2);
    config.validate().expect("valid");
    let postgres = config.postgres().expect("valid");
    assert_eq!(
        postgres.config().get_application_name(),
        Some("fleetpipe-sink")
    );
    assert_eq!(postgres.connect_timeout(), Duration::from_secs(3));

    let err =
        serde_json::from_value::<TimescaleConfig>(json!({"url": "u", "application_name": "me"}))
            .expect_err("not a key");
    assert!(
        err.to_string().contains("unknown field `application_name`"),
        "{err}"
    );
    let err = serde_json::from_value::<TimescaleConfig>(json!({"writers": 2})).expect_err("no url");
    assert!(err.to_string().contains("missing field `url`"), "{err}");

    let mut config = TimescaleConfig::new("postgresql://db/fleet");
    config.statement_timeout = Some(Duration::ZERO);
    let err = config.validate().expect_err("refused").to_string();
    assert!(
        err.starts_with("sink.timescale.statement_timeout must be whole milliseconds"),
        "{err}"
    );
    let config = TimescaleConfig::new("postgresql://db/fleet?connect_timeout=2");
    let mut both = config.clone();
    both.connect_timeout = Some(Duration::from_secs(5));
    let err = both.postgres().expect_err("set twice").to_string();
    assert!(
        err.starts_with(
            "sink.timescale.connect_timeout is set, and so is connect_timeout in sink.timescale.url"
        ),
        "{err}"
    );
}

/// `statement_timeout` bounds the writers' statements, not the migrations:
/// waiting for another instance's migrations (the schema's advisory lock)
/// takes longer than it here, and the migrations still run.
#[tokio::test]
async fn the_statement_timeout_does_not_cut_the_migrations_short() {
    let test = TestDb::new();
    let holder = test.observer().await;
    let key = lock_key(&test.schema);
    holder
        .execute("SELECT pg_advisory_lock($1, $2)", &[&LOCK_CLASS, &key])
        .await
        .expect("lock");
    let mut config = test.config();
    config.statement_timeout = Some(Duration::from_millis(50));
    let blocked = tokio::spawn(async move { migrate(&config).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&LOCK_CLASS, &key])
        .await
        .expect("unlock");
    let mode = tokio::time::timeout(PATIENCE, blocked)
        .await
        .expect("migrate continues once the lock is free")
        .expect("no panic")
        .expect("migrates although it waited longer than statement_timeout");
    assert_eq!(mode, offered_mode(&holder).await);
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_server_fails_at_startup() {
    let err = TimescaleSink::connect(TimescaleConfig::new("postgresql://db:notaport/x"))
        .await
        .expect_err("bad url");
    assert!(
        matches!(
            err,
            TimescaleError::Postgres(fleetpipe_postgres::PostgresError::Url { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("sink.timescale.url"), "{err}");

    // Nothing listens on port 1.
    let err = TimescaleSink::connect(TimescaleConfig::new(
        "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2",
    ))
    .await
    .expect_err("unreachable");
    assert!(matches!(err, TimescaleError::Connect(_)), "{err:?}");
    assert!(err.to_string().contains("refused"), "{err}");
}

// ---- TLS -------------------------------------------------------------------

/// Over `verify-full` (the test server set up for TLS with a CA of the
/// run's own): the migrations run, a write is acknowledged and visible, and
/// every connection of the sink is encrypted. With a CA that did not issue
/// the server's certificate the sink fails at start, saying so.
#[tokio::test]
async fn writes_over_verified_tls_and_refuses_an_untrusted_server_at_start() {
    use fleetpipe_postgres::test_support::{TestCa, tls_server};
    use fleetpipe_postgres::{PostgresTls, TlsMode};

    let server = tls_server().expect("the test PostgreSQL is set up for TLS");
    let test = TestDb::new();
    let db = test.observer().await;
    let config = TimescaleConfig {
        tls: server.tls(TlsMode::VerifyFull),
        ..test.config()
    };
    let (tx, run) = start(config.clone(), 16).await;
    let batch = BatchAck::new();
    for i in 0..10 {
        send(&tx, telemetry(nth(i), batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(test.count(&db, "telemetry").await, 10);
    let sessions: Vec<bool> = db
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&test.app],
        )
        .await
        .expect("pg_stat_ssl")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|ssl| *ssl),
        "the sink's sessions: {sessions:?}"
    );
    finish(tx, run).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, TestCa::new("not the server's").expect("CA").pem()).expect("write");
    let err = TimescaleSink::connect(TimescaleConfig {
        tls: PostgresTls::new(TlsMode::VerifyFull, Some(other)),
        ..test.config()
    })
    .await
    .expect_err("untrusted server");
    assert!(matches!(err, TimescaleError::Connect(_)), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with("timescale sink: cannot connect to PostgreSQL: ")
            && err.contains("the server's certificate is not trusted")
            && err.contains("sink.timescale.tls.ca_file"),
        "{err}"
    );

    // A missing CA file is a start error naming the key and the file.
    let missing = dir.path().join("missing.pem");
    let err = TimescaleSink::connect(TimescaleConfig {
        tls: PostgresTls::new(TlsMode::VerifyFull, Some(missing.clone())),
        ..test.config()
    })
    .await
    .expect_err("no CA file")
    .to_string();
    assert!(
        err.starts_with(&format!(
            "sink.timescale.tls.ca_file = {}: cannot read",
            missing.display()
        )),
        "{err}"
    );
}

// ---- internals -------------------------------------------------------------

#[test]
fn sqlstates_are_classified() {
    for code in [
        "08006", "08001", "57P01", "57P02", "57014", "40001", "40P01", "53300", "55P03", "23505",
        "42P01", "XX000",
    ] {
        assert_eq!(classify_sqlstate(code), ErrorKind::Retriable, "{code}");
    }
    for code in [
        "22P05", "22021", "22003", "23502", "23514", "23503", "54000",
    ] {
        assert_eq!(classify_sqlstate(code), ErrorKind::Permanent, "{code}");
    }
}

#[test]
fn backoff_grows_with_jitter_between_initial_and_max() {
    let initial = Duration::from_millis(100);
    let max = Duration::from_secs(2);
    for _ in 0..50 {
        let mut backoff = Backoff::new(initial, max);
        assert_eq!(backoff.next_delay(), initial);
        let mut ceiling = initial;
        for _ in 0..10 {
            ceiling = (ceiling * 2).min(max);
            let delay = backoff.next_delay();
            assert!(
                delay >= initial && delay <= ceiling,
                "{delay:?} > {ceiling:?}"
            );
        }
    }
    // Jitter: later delays are not all equal.
    let mut backoff = Backoff::new(initial, max);
    let delays: BTreeSet<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
    assert!(delays.len() > 5, "{delays:?}");
}

#[test]
fn the_finest_cell_is_stored() {
    assert_eq!(finest_cell(&CELLS), Some(FINEST_CELL));
    assert_eq!(finest_cell(&[]), None);
}

#[test]
fn copy_size_matches_the_binary_encoding() {
    use tokio_postgres::types::Type;
    for i in [0, 1, 3] {
        let r = record(nth(i), Ack::none());
        let row = StageRow::new(&r).expect("storable");
        let p = &r.ping;
        let seq = p.seq.map(|s| s as i64);
        let attrs = serde_json::to_value(&p.attrs).expect("json");
        let e = &r.enrichment;
        let fences: Vec<&str> = e.fences.iter().map(|f| &**f).collect();
        let flags: Vec<&str> = e.flags.names().collect();
        // Timestamps are 8 bytes, like a bigint.
        let values: [(&(dyn ToSql + Sync), Type); 23] = [
            (&p.vehicle_id.as_str(), Type::TEXT),
            (&0i64, Type::INT8),
            (&seq, Type::INT8),
            (&0i64, Type::INT8),
            (&"http", Type::TEXT),
            (&p.lat, Type::FLOAT8),
            (&p.lon, Type::FLOAT8),
            (&p.alt_m, Type::FLOAT8),
            (&p.speed_kmh, Type::FLOAT8),
            (&p.heading_deg, Type::FLOAT8),
            (&p.accuracy_m, Type::FLOAT8),
            (&p.soc_pct, Type::FLOAT8),
            (&p.battery_v, Type::FLOAT8),
            (&p.charging, Type::BOOL),
            (&p.odometer_km, Type::FLOAT8),
            (&p.ignition, Type::BOOL),
            (&Some(FINEST_CELL), Type::INT8),
            (&p.dtcs, Type::TEXT_ARRAY),
            (&attrs, Type::JSONB),
            (&fences, Type::TEXT_ARRAY),
            (&e.distance_m, Type::FLOAT8),
            (&e.derived_speed_kmh, Type::FLOAT8),
            (&flags, Type::TEXT_ARRAY),
        ];
        let mut encoded = 2;
        for (value, ty) in &values {
            let mut buf = BytesMut::new();
            let null = value.to_sql_checked(ty, &mut buf).expect("encodes");
            encoded += 4 + match null {
                tokio_postgres::types::IsNull::Yes => 0,
                tokio_postgres::types::IsNull::No => buf.len() as u64,
            };
        }
        assert_eq!(row.copy_len(), encoded, "ping {i}");
    }

    for n in [0, 5] {
        let SinkRecord::Event(e) = event(n, Ack::none()) else {
            unreachable!()
        };
        let row = EventRow::new(&e).expect("storable");
        let data: Value = serde_json::from_str(e.data.get()).expect("json");
        let values: [(&(dyn ToSql + Sync), Type); 5] = [
            (&e.id, Type::TEXT),
            (&e.subject.as_str(), Type::TEXT),
            (&e.event_type.as_str(), Type::TEXT),
            (&0i64, Type::INT8),
            (&data, Type::JSONB),
        ];
        // serde_json::Value re-serializes compactly: the same length as the
        // compact data of the fixture.
        let mut encoded = 2;
        for (value, ty) in &values {
            let mut buf = BytesMut::new();
            value.to_sql_checked(ty, &mut buf).expect("encodes");
            encoded += 4 + buf.len() as u64;
        }
        assert_eq!(row.copy_len(), encoded, "event {n}");
    }
}

#[test]
fn a_seq_beyond_bigint_is_refused_before_the_database() {
    let mut p = nth(1);
    p.seq = Some(i64::MAX as u64 + 1);
    let r = SinkRecord::Telemetry(record(p, Ack::none()));
    assert!(matches!(Row::prepare(&r), Row::Dead(_)));
    let r = SinkRecord::Telemetry(record(nth(1), Ack::none()));
    assert!(matches!(Row::prepare(&r), Row::Telemetry(_)));
}

#[test]
fn an_event_time_beyond_timestamptz_is_refused_before_the_database() {
    let mut e = event_with(1, &event_data(1), Ack::none());
    e.time_ms = i64::MAX;
    let r = SinkRecord::Event(e);
    assert!(matches!(Row::prepare(&r), Row::Dead(_)));
    let r = event(1, Ack::none());
    assert!(matches!(Row::prepare(&r), Row::Event(_)));
}

#[tokio::test]
async fn batches_are_cut_by_size_and_by_wait() {
    let (tx, mut rx) = mpsc::channel(16);
    for i in 0..5 {
        send(&tx, telemetry(nth(i), Ack::none())).await;
    }
    let mut batch = Vec::new();
    assert!(!collect(&mut rx, &mut batch, 3, Duration::from_secs(5)).await);
    assert_eq!(batch.len(), 3, "cut at batch_max_rows without waiting");

    batch.clear();
    let started = tokio::time::Instant::now();
    assert!(!collect(&mut rx, &mut batch, 3, Duration::from_millis(50)).await);
    assert_eq!(batch.len(), 2);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // Closed while a partial batch waits: it is returned with the news.
    send(&tx, telemetry(nth(9), Ack::none())).await;
    drop(tx);
    batch.clear();
    assert!(collect(&mut rx, &mut batch, 3, Duration::from_secs(5)).await);
    assert_eq!(batch.len(), 1);
    batch.clear();
    assert!(collect(&mut rx, &mut batch, 3, Duration::from_secs(5)).await);
    assert!(batch.is_empty());
}
