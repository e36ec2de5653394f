//! Where per-vehicle state is checkpointed, so a restart neither forgets
//! which vehicles are inside which fences nor re-emits their enter events.
//!
//! - [`StateStore::Postgres`]: the `vehicle_state` table, upserting only
//!   the vehicles changed since the last checkpoint. The table is this
//!   stage's: [`StateStore::load`] (at start) and [`StateStore::prepare`]
//!   create it from `enrich/sql/vehicle_state.sql` when it is missing, and
//!   leave alone the one the TimescaleDB sink's migration `0004` created in
//!   earlier versions (the same table). Each load and checkpoint opens a
//!   connection of its own, with the connection settings it was given (the
//!   sink's URL, TLS and timeouts, as [`StateStore::postgres`] applies
//!   them, named [`STATE_APPLICATION_NAME`]).
//! - [`StateStore::Dir`]: one JSON-lines file, `vehicle-state.jsonl`, in a
//!   directory, rewritten whole through a temporary file and an atomic
//!   rename, so a crash mid-write leaves the previous checkpoint.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use fleetpipe_model::VehicleId;
use fleetpipe_postgres::sql::{SCHEMA_LOCK_CLASS, schema_lock_key};
use fleetpipe_postgres::{Postgres, PostgresConfig, PostgresError, describe, quote_ident};
use serde::{Deserialize, Serialize};

/// Name of the checkpoint file of [`StateStore::Dir`].
pub const STATE_FILE: &str = "vehicle-state.jsonl";

/// Upserted per statement by [`StateStore::Postgres`].
const PG_CHUNK: usize = 2_000;

/// Name the checkpoints' connections carry in `pg_stat_activity` when the
/// URL sets none.
pub const STATE_APPLICATION_NAME: &str = "fleetpipe-state";

/// Creates `vehicle_state` (and its schema) if missing; `{schema}` is the
/// quoted schema.
const VEHICLE_STATE_SQL: &str = include_str!("../sql/vehicle_state.sql");

/// Why a checkpoint could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection settings are invalid; the message names the key.
    #[error(transparent)]
    Config(#[from] PostgresError),
    /// File system error.
    #[error("state checkpoint {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// PostgreSQL error: which step failed, and PostgreSQL's own
    /// SQLSTATE, message and detail (not just `db error`).
    #[error("state checkpoint in PostgreSQL: {step} failed: {}", describe(.source))]
    Postgres {
        /// What was attempted, naming the statement's table, e.g.
        /// `read "Fleet".vehicle_state`.
        step: String,
        /// PostgreSQL's answer.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl StoreError {
    /// A `map_err` for a PostgreSQL step.
    fn pg(step: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let step = step.into();
        move |source| StoreError::Postgres { step, source }
    }
}

/// A checkpoint store. See the module docs.
#[derive(Debug, Clone)]
pub enum StateStore {
    /// `vehicle-state.jsonl` in this directory.
    Dir(PathBuf),
    /// The `vehicle_state` table; see [`StateStore::postgres`].
    Postgres {
        /// Connection settings (the checkpoints live next to the sink's
        /// data, reached the same way).
        postgres: Postgres,
        /// Schema holding `vehicle_state`, as configured (unquoted): it is
        /// quoted in SQL exactly as the sink's migrations quote it, so a
        /// mixed-case name such as `Fleet` names the same schema.
        schema: String,
    },
}

/// One line of the checkpoint file.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    vehicle_id: &'a str,
    state: &'a serde_json::value::RawValue,
}

impl StateStore {
    /// The `vehicle_state` table in `schema`, reached with `settings` (the
    /// TimescaleDB sink's, found under `section`), the connections named
    /// [`STATE_APPLICATION_NAME`] unless the URL names them. Reads the TLS
    /// files once, so a missing one fails here.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] naming the `section` key at fault.
    pub fn postgres(
        section: &'static str,
        settings: &PostgresConfig,
        schema: &str,
    ) -> Result<Self, StoreError> {
        Ok(StateStore::Postgres {
            postgres: Postgres::from_config(section, settings, STATE_APPLICATION_NAME)?,
            schema: schema.to_owned(),
        })
    }

    /// Creates what the store needs and is missing: `vehicle_state` (and its
    /// schema) for [`StateStore::Postgres`], nothing for
    /// [`StateStore::Dir`] (its directory is created by the first
    /// checkpoint). [`StateStore::load`] does the same first; this is for
    /// preparing a database without loading (`fleetpipe db migrate`).
    ///
    /// # Errors
    ///
    /// The database cannot be reached or refuses to create the table.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        match self {
            StateStore::Dir(_) => Ok(()),
            StateStore::Postgres { postgres, schema } => {
                let mut client = connect(postgres).await?;
                ensure_table(&mut client, schema).await
            }
        }
    }

    /// Whether a checkpoint must hold every vehicle (the file) rather than
    /// the changed ones (the table).
    pub fn wants_full(&self) -> bool {
        matches!(self, StateStore::Dir(_))
    }

    /// Reads the last checkpoint: `(vehicle, state JSON)` pairs. No
    /// checkpoint yet is an empty list. Lines with an invalid vehicle id are
    /// skipped with a warning. In PostgreSQL, first creates `vehicle_state`
    /// if it is missing (as [`StateStore::prepare`]).
    ///
    /// # Errors
    ///
    /// The table cannot be created, or the file or table exists but cannot
    /// be read.
    pub async fn load(&self) -> Result<Vec<(VehicleId, String)>, StoreError> {
        match self {
            StateStore::Dir(dir) => {
                let path = dir.join(STATE_FILE);
                let text = match tokio::fs::read_to_string(&path).await {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(source) => return Err(StoreError::Io { path, source }),
                };
                Ok(text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .filter_map(|line| match serde_json::from_str::<Line<'_>>(line) {
                        Ok(l) => Some((VehicleId::parse(l.vehicle_id).ok()?, l.state.get().to_owned())),
                        Err(err) => {
                            tracing::warn!(path = %path.display(), error = %err, "unreadable state checkpoint line skipped");
                            None
                        }
                    })
                    .collect())
            }
            StateStore::Postgres { postgres, schema } => {
                let mut client = connect(postgres).await?;
                ensure_table(&mut client, schema).await?;
                let table = state_table(schema);
                let rows = client
                    .query(&format!("SELECT vehicle_id, state::text FROM {table}"), &[])
                    .await
                    .map_err(StoreError::pg(format!("read {table}")))?;
                Ok(rows
                    .iter()
                    .filter_map(|row| {
                        let id: &str = row.get(0);
                        let state: String = row.get(1);
                        Some((VehicleId::parse(id).ok()?, state))
                    })
                    .collect())
            }
        }
    }

    /// Writes a checkpoint: every vehicle for [`StateStore::Dir`], the
    /// changed ones for [`StateStore::Postgres`].
    ///
    /// # Errors
    ///
    /// The file or table cannot be written; the previous checkpoint stays.
    pub async fn save(&self, entries: Vec<(VehicleId, String)>) -> Result<(), StoreError> {
        match self {
            StateStore::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || write_file(&dir, &entries))
                    .await
                    .map_err(|e| StoreError::Io {
                        path: PathBuf::from(STATE_FILE),
                        source: std::io::Error::other(e),
                    })?
            }
            StateStore::Postgres { postgres, schema } => {
                if entries.is_empty() {
                    return Ok(());
                }
                let client = connect(postgres).await?;
                let table = state_table(schema);
                let sql = format!(
                    "INSERT INTO {table} (vehicle_id, state, updated_at) \
                     SELECT v, s::jsonb, now() FROM UNNEST($1::text[], $2::text[]) AS t(v, s) \
                     ON CONFLICT (vehicle_id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at"
                );
                let step = format!("upsert into {table}");
                let statement = client
                    .prepare(&sql)
                    .await
                    .map_err(StoreError::pg(step.clone()))?;
                for chunk in entries.chunks(PG_CHUNK) {
                    let ids: Vec<&str> = chunk.iter().map(|(v, _)| v.as_str()).collect();
                    let states: Vec<&str> = chunk.iter().map(|(_, s)| s.as_str()).collect();
                    client
                        .execute(&statement, &[&ids, &states])
                        .await
                        .map_err(StoreError::pg(step.clone()))?;
                }
                Ok(())
            }
        }
    }
}

/// `schema.vehicle_state`, the schema quoted as the sink's migrations quote
/// it (fleetpipe-postgres' [`quote_ident`]).
fn state_table(schema: &str) -> String {
    format!("{}.vehicle_state", quote_ident(schema))
}

/// Creates `vehicle_state` from [`VEHICLE_STATE_SQL`] unless a relation of
/// that name exists. Looking first needs no privilege beyond reading the
/// catalog, so a deployment whose runtime user may not create tables keeps
/// working once the table is there (e.g. made by the sink's migration in
/// earlier versions). Creating takes the schema's advisory lock for the
/// transaction, so two instances starting together do not race (a
/// concurrent `CREATE TABLE IF NOT EXISTS` can still fail on the catalog's
/// unique index), nor race the sink's migrations in the same schema.
async fn ensure_table(client: &mut tokio_postgres::Client, schema: &str) -> Result<(), StoreError> {
    let table = state_table(schema);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(StoreError::pg(format!("look up {table}")))?
        .get(0);
    if exists {
        return Ok(());
    }
    let step = format!("create {table}");
    let txn = client
        .transaction()
        .await
        .map_err(StoreError::pg(step.clone()))?;
    // Without the notice that the schema (or, after waiting for the lock,
    // the table) already exists; and without the statement timeout, which
    // bounds checkpoints, not the wait for the sink's migrations (which
    // hold the lock as long as they run).
    txn.batch_execute("SET LOCAL client_min_messages = warning; SET LOCAL statement_timeout = 0")
        .await
        .map_err(StoreError::pg(step.clone()))?;
    txn.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&SCHEMA_LOCK_CLASS, &schema_lock_key(schema)],
    )
    .await
    .map_err(StoreError::pg(step.clone()))?;
    txn.batch_execute(&VEHICLE_STATE_SQL.replace("{schema}", &quote_ident(schema)))
        .await
        .map_err(StoreError::pg(step.clone()))?;
    txn.commit().await.map_err(StoreError::pg(step))?;
    tracing::info!(schema, "state checkpoints: vehicle_state created");
    Ok(())
}

/// A connection for one load or checkpoint (closed when the client is
/// dropped).
async fn connect(postgres: &Postgres) -> Result<tokio_postgres::Client, StoreError> {
    let (client, _connection) = postgres
        .connect()
        .await
        .map_err(StoreError::pg("connect"))?;
    Ok(client)
}

fn write_file(dir: &Path, entries: &[(VehicleId, String)]) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut w = std::io::BufWriter::new(file);
    for (vehicle, state) in entries {
        // The state is JSON already; the id is [A-Za-z0-9_.:-] only.
        writeln!(
            w,
            "{{\"vehicle_id\":\"{}\",\"state\":{}}}",
            vehicle.as_str(),
            state
        )
        .map_err(io(&tmp))?;
    }
    let file = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}
