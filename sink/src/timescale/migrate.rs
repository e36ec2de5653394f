//! Versioned schema migrations and the choice between TimescaleDB and plain
//! PostgreSQL.
//!
//! The SQL lives in `sink/migrations/`: `NNNN_name.sql` files are applied
//! once each, in version order, each in its own transaction together with
//! its row in `{schema}.fleetpipe_migrations`; `R__*.sql` files are
//! re-applied on every start. `{schema}` in the SQL stands for the
//! configured schema as a quoted identifier.
//!
//! Some migrations apply only to one storage mode: `0002_plain_indexes`
//! only without TimescaleDB, `0003_timescaledb` only with it. Once
//! `0003_timescaledb` is applied the schema stays in TimescaleDB mode. A
//! migration of both modes may carry TimescaleDB-only statements
//! (`NNNN_name.timescaledb.sql`), run first in the same transaction in that
//! mode only: `0007_telemetry_seq_not_null` decompresses the chunks there
//! before it changes `seq`.
//!
//! Everything runs under a session advisory lock keyed by the schema, so
//! several fleetpipe instances can start at once: the first migrates, the
//! others wait and then find nothing left to do.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use humantime_serde::re::humantime::format_duration;
use tokio_postgres::Client;

use super::error::describe;
use super::{TimescaleConfig, TimescaleError, TimescaleMode};

/// The schema's advisory lock (`'FPMG'` and a hash of the schema name),
/// fleetpipe-postgres': enrichment takes the same lock to create its
/// `vehicle_state` table in the schema.
pub(crate) use fleetpipe_postgres::sql::{
    SCHEMA_LOCK_CLASS as LOCK_CLASS, quote_ident, schema_lock_key as lock_key,
};

/// The storage layout in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// Plain PostgreSQL: BRIN on `ts`, btree on `(vehicle_id, ts)`, no
    /// policies.
    Plain,
    /// TimescaleDB 2.x: hypertable, compression, retention and the
    /// `telemetry_1m` continuous aggregate.
    TimescaleDb,
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageMode::Plain => "plain PostgreSQL",
            StorageMode::TimescaleDb => "TimescaleDB",
        })
    }
}

/// Which storage modes a migration belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applies {
    /// Both.
    Always,
    /// Plain PostgreSQL only.
    PlainOnly,
    /// TimescaleDB only.
    TimescaleOnly,
}

impl Applies {
    /// Whether a migration of this kind belongs to `mode`.
    pub(crate) const fn to(self, mode: StorageMode) -> bool {
        matches!(
            (self, mode),
            (Applies::Always, _)
                | (Applies::PlainOnly, StorageMode::Plain)
                | (Applies::TimescaleOnly, StorageMode::TimescaleDb)
        )
    }
}

/// One versioned migration.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Recorded in `fleetpipe_migrations.version`.
    pub(crate) version: i32,
    /// The file name without `.sql`.
    pub(crate) name: &'static str,
    /// Which modes it belongs to.
    pub(crate) applies: Applies,
    /// The SQL, with `{schema}` placeholders.
    pub(crate) sql: &'static str,
    /// In TimescaleDB mode only: SQL run first, in the same transaction
    /// (e.g. decompressing chunks before a change TimescaleDB does not make
    /// on compressed data). Never run in plain mode.
    pub(crate) timescale_prelude: Option<&'static str>,
}

/// Every versioned migration, in version order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_core",
        applies: Applies::Always,
        sql: include_str!("../../migrations/0001_core.sql"),
        timescale_prelude: None,
    },
    Migration {
        version: 2,
        name: "0002_plain_indexes",
        applies: Applies::PlainOnly,
        sql: include_str!("../../migrations/0002_plain_indexes.sql"),
        timescale_prelude: None,
    },
    Migration {
        version: TIMESCALE_VERSION,
        name: "0003_timescaledb",
        applies: Applies::TimescaleOnly,
        sql: include_str!("../../migrations/0003_timescaledb.sql"),
        timescale_prelude: None,
    },
    Migration {
        version: 4,
        name: "0004_enrichment",
        applies: Applies::Always,
        sql: include_str!("../../migrations/0004_enrichment.sql"),
        timescale_prelude: None,
    },
    Migration {
        version: 5,
        name: "0005_drop_telemetry_vehicle_ts",
        applies: Applies::Always,
        sql: include_str!("../../migrations/0005_drop_telemetry_vehicle_ts.sql"),
        timescale_prelude: None,
    },
    Migration {
        version: 6,
        name: "0006_vehicle_latest_fillfactor",
        applies: Applies::Always,
        sql: include_str!("../../migrations/0006_vehicle_latest_fillfactor.sql"),
        timescale_prelude: None,
    },
    Migration {
        version: 7,
        name: "0007_telemetry_seq_not_null",
        applies: Applies::Always,
        sql: include_str!("../../migrations/0007_telemetry_seq_not_null.sql"),
        timescale_prelude: Some(include_str!(
            "../../migrations/0007_telemetry_seq_not_null.timescaledb.sql"
        )),
    },
    Migration {
        version: 8,
        name: "0008_vehicle_latest_fences",
        applies: Applies::Always,
        sql: include_str!("../../migrations/0008_vehicle_latest_fences.sql"),
        timescale_prelude: None,
    },
    Migration {
        version: 9,
        name: "0009_api_event_indexes",
        applies: Applies::Always,
        sql: include_str!("../../migrations/0009_api_event_indexes.sql"),
        timescale_prelude: None,
    },
];

/// Version of the migration that turns `telemetry` into a hypertable.
const TIMESCALE_VERSION: i32 = 3;

/// Re-applied on every start in TimescaleDB mode, with `{compress_after}`
/// and `{retention}` from the configuration.
const TIMESCALE_POLICIES: &str = include_str!("../../migrations/R__timescaledb_policies.sql");

/// Applies the pending migrations and reports the storage mode in use.
///
/// Idempotent: versions already recorded in `{schema}.fleetpipe_migrations`
/// are skipped. Creates the schema if missing. Holds an advisory lock keyed
/// by the schema for the whole run, so concurrent calls (several instances
/// starting together) are serialized.
///
/// With `timescaledb = "auto"` TimescaleDB is used when the extension is
/// installed or can be created; `on` fails without it; `off` never uses it
/// (but cannot undo a schema that already is in TimescaleDB mode, which is
/// then kept with a warning).
///
/// # Errors
///
/// An invalid setting, a failed connection, a failed migration (which then
/// left nothing of itself behind) or `on` without TimescaleDB.
pub async fn migrate(config: &TimescaleConfig) -> Result<StorageMode, TimescaleError> {
    config.validate()?;
    let (mut client, connection) = config
        .postgres()?
        .connect()
        .await
        .map_err(TimescaleError::Connect)?;
    let result = migrate_locked(&mut client, config).await;
    // Closing the connection also releases the advisory lock if unlocking
    // failed.
    drop(client);
    let _ = connection.await;
    result
}

/// Takes the advisory lock, migrates, releases the lock.
async fn migrate_locked(
    client: &mut Client,
    config: &TimescaleConfig,
) -> Result<StorageMode, TimescaleError> {
    let step = |step| move |source| TimescaleError::Migration { step, source };
    // Only warnings and errors: "already exists, skipping" notices are
    // expected on every start. No statement timeout: waiting for another
    // instance's migrations (the advisory lock) and a migration itself
    // (0007 decompresses every chunk) may take longer than
    // sink.timescale.statement_timeout, which bounds the writers.
    client
        .batch_execute("SET client_min_messages = warning; SET statement_timeout = 0")
        .await
        .map_err(step("session setup"))?;
    let key = lock_key(&config.schema);
    client
        .execute("SELECT pg_advisory_lock($1, $2)", &[&LOCK_CLASS, &key])
        .await
        .map_err(step("advisory lock"))?;
    let result = apply(client, config).await;
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&LOCK_CLASS, &key])
        .await
    {
        tracing::debug!(error = %describe(&e), "timescale sink: advisory unlock failed");
    }
    result
}

/// Everything that happens under the lock.
async fn apply(
    client: &mut Client,
    config: &TimescaleConfig,
) -> Result<StorageMode, TimescaleError> {
    let step = |step| move |source| TimescaleError::Migration { step, source };
    let schema = quote_ident(&config.schema);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {schema}.fleetpipe_migrations (\
                 version integer PRIMARY KEY, \
                 name text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(step("create schema"))?;
    let applied: BTreeSet<i32> = client
        .query(
            &format!("SELECT version FROM {schema}.fleetpipe_migrations"),
            &[],
        )
        .await
        .map_err(step("read applied versions"))?
        .iter()
        .map(|row| row.get(0))
        .collect();

    let (mode, version) = choose_mode(client, config, &applied).await?;
    for migration in plan(&applied, mode) {
        let sql = render(migration.sql, &schema, config);
        let txn = client.transaction().await.map_err(step(migration.name))?;
        if let (StorageMode::TimescaleDb, Some(prelude)) = (mode, migration.timescale_prelude) {
            txn.batch_execute(&render(prelude, &schema, config))
                .await
                .map_err(step(migration.name))?;
        }
        txn.batch_execute(&sql)
            .await
            .map_err(step(migration.name))?;
        txn.execute(
            &format!("INSERT INTO {schema}.fleetpipe_migrations (version, name) VALUES ($1, $2)"),
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(step(migration.name))?;
        txn.commit().await.map_err(step(migration.name))?;
        tracing::info!(
            migration = migration.name,
            schema = %config.schema,
            "timescale sink: migration applied"
        );
    }

    match mode {
        StorageMode::TimescaleDb => {
            let txn = client
                .transaction()
                .await
                .map_err(step("timescaledb policies"))?;
            txn.batch_execute(&render(TIMESCALE_POLICIES, &schema, config))
                .await
                .map_err(step("timescaledb policies"))?;
            txn.commit().await.map_err(step("timescaledb policies"))?;
            tracing::info!(
                schema = %config.schema,
                retention = %format_duration(config.retention),
                compress_after = %format_duration(config.compress_after),
                "timescale sink: TimescaleDB {}: hypertable, compression, retention, continuous aggregate",
                version.as_deref().unwrap_or("2.x")
            );
        }
        StorageMode::Plain => tracing::info!(
            schema = %config.schema,
            "timescale sink: plain PostgreSQL: BRIN on ts, btree on (vehicle_id, ts); no policies"
        ),
    }
    Ok(mode)
}

/// Decides the storage mode, creating the extension when it is available
/// but not yet installed. Returns the extension's version when TimescaleDB
/// is used.
async fn choose_mode(
    client: &mut Client,
    config: &TimescaleConfig,
    applied: &BTreeSet<i32>,
) -> Result<(StorageMode, Option<String>), TimescaleError> {
    let step = |step| move |source| TimescaleError::Migration { step, source };
    let row = client
        .query_opt(
            "SELECT default_version, installed_version FROM pg_available_extensions \
             WHERE name = 'timescaledb'",
            &[],
        )
        .await
        .map_err(step("detect timescaledb"))?;
    let (available, installed) = match &row {
        Some(row) => (
            row.get::<_, Option<String>>(0),
            row.get::<_, Option<String>>(1),
        ),
        None => (None, None),
    };

    if applied.contains(&TIMESCALE_VERSION) {
        if config.timescaledb == TimescaleMode::Off {
            tracing::warn!(
                schema = %config.schema,
                "timescale sink: sink.timescale.timescaledb is `off`, but this schema already \
                 uses TimescaleDB; keeping it"
            );
        }
        return Ok((StorageMode::TimescaleDb, installed));
    }
    if config.timescaledb == TimescaleMode::Off {
        return Ok((StorageMode::Plain, None));
    }
    if installed.is_some() {
        return Ok((StorageMode::TimescaleDb, installed));
    }
    let unavailable = |why: String| {
        if config.timescaledb == TimescaleMode::On {
            Err(TimescaleError::TimescaleUnavailable(why))
        } else {
            tracing::info!(reason = %why, "timescale sink: TimescaleDB not used");
            Ok((StorageMode::Plain, None))
        }
    };
    if available.is_none() {
        return unavailable("the timescaledb extension is not available in this database".into());
    }
    // Its own transaction: a failure (not preloaded, no privilege) must not
    // abort anything else.
    let created = async {
        let txn = client.transaction().await?;
        txn.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            .await?;
        let version: String = txn
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await?
            .get(0);
        txn.commit().await?;
        Ok::<_, tokio_postgres::Error>(version)
    }
    .await;
    match created {
        Ok(version) => Ok((StorageMode::TimescaleDb, Some(version))),
        Err(e) => unavailable(format!(
            "CREATE EXTENSION timescaledb failed: {}",
            describe(&e)
        )),
    }
}

/// The migrations still to apply in `mode`, in version order.
pub(crate) fn plan(applied: &BTreeSet<i32>, mode: StorageMode) -> Vec<&'static Migration> {
    MIGRATIONS
        .iter()
        .filter(|m| m.applies.to(mode) && !applied.contains(&m.version))
        .collect()
}

/// `sql` with its placeholders replaced.
pub(crate) fn render(sql: &str, schema: &str, config: &TimescaleConfig) -> String {
    sql.replace("{schema}", schema)
        .replace("{compress_after}", &interval(config.compress_after))
        .replace("{retention}", &interval(config.retention))
}

/// A duration as an SQL interval literal of whole seconds.
pub(crate) fn interval(d: Duration) -> String {
    format!("INTERVAL '{} seconds'", d.as_secs())
}
