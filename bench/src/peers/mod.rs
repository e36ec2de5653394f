//! Peers: what fleetpipe is compared with in the end-to-end benchmark,
//! measured on the same machine in the same run.
//!
//! A throughput figure for fleetpipe means little on its own; next to it the
//! benchmark puts what the building blocks manage without fleetpipe around
//! them:
//!
//! - [`copy`]: the **raw database ceiling**. The same telemetry rows written
//!   by plain binary `COPY` into the same `telemetry` table fleetpipe's
//!   TimescaleDB / PostgreSQL sink writes (created by the sink's own
//!   migrations), on one or more connections, one transaction per batch: no
//!   ingest, no enrichment, no staging table, no `ON CONFLICT`. fleetpipe's
//!   sink cannot be faster than this; the gap is the price of its pipeline
//!   and its idempotent writes.
//! - [`postgis`]: **geofencing in the database**. The same fences and points
//!   checked by PostGIS (GiST indexes, `ST_Intersects` for polygons,
//!   `ST_DWithin` on `geography` for circles), one query per batch of points,
//!   next to fleetpipe's in-process H3 index on the same input, plus a check
//!   that both give the same answers.
//! - [`inputs`]: deterministic inputs for both: a fleet's pings decoded from
//!   [`crate::fixtures`], and a city of fences with points around them.
//!
//! Every function that creates database objects does so in a schema of the
//! caller's choosing, dropped first if it exists and **left in place**
//! afterwards so the caller can inspect it; [`drop_schema`] removes it.
//! PostgreSQL is reached without TLS, as fleetpipe's sink does.

pub mod copy;
pub mod inputs;
pub mod postgis;

use tokio_postgres::{Client, NoTls};

pub use copy::{CopyResult, CopyRow, copy_batch, copy_ceiling, copy_ceiling_with};
pub use inputs::{city_fences_geojson, city_points, fixture_pings};
pub use postgis::{
    Comparison, Disagreement, LookupResult, PostgisFences, compare_answers, fleetpipe_lookup,
    postgis_lookup,
};

/// Why a peer could not run.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// An argument is out of range (e.g. zero connections).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// PostgreSQL refused or failed a step.
    #[error("{step}: {detail}")]
    Db {
        /// What was being done.
        step: &'static str,
        /// PostgreSQL's message (the server's, when it sent one).
        detail: String,
        /// The underlying error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// fleetpipe's migrations failed.
    #[error("fleetpipe migrations: {0}")]
    Migrate(#[from] fleetpipe_sink::TimescaleError),
    /// The fences could not be parsed or indexed.
    #[error("fences: {0}")]
    Geofence(#[from] fleetpipe_geofence::GeofenceError),
    /// A ping cannot be represented in the `telemetry` table (fleetpipe
    /// would dead-letter it; the peer refuses the whole input instead, so
    /// its row count stays comparable).
    #[error("ping #{index} cannot be stored: {reason}")]
    Row {
        /// Position of the ping in the input.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A fixture failed to decode (a bug in the fixtures).
    #[error("fixture: {0}")]
    Fixture(String),
    /// The database answered something the peer did not ask for.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// A worker task panicked or was cancelled.
    #[error("worker task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl PeerError {
    /// Maps a PostgreSQL error of `step`, keeping the server's message:
    /// `tokio_postgres::Error`'s own display is just "db error".
    pub(crate) fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| {
            let detail = match source.as_db_error() {
                Some(db) => match db.detail() {
                    Some(more) => format!("{} ({more})", db.message()),
                    None => db.message().to_owned(),
                },
                None => source.to_string(),
            };
            PeerError::Db {
                step,
                detail,
                source,
            }
        }
    }
}

/// Connects to `url` without TLS; the connection is driven by a task on
/// the current runtime until the client is dropped.
///
/// # Errors
///
/// [`PeerError::Db`] if the URL is invalid or the server unreachable.
pub async fn connect(url: &str) -> Result<Client, PeerError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(PeerError::db("connect"))?;
    tokio::spawn(async move {
        // The error surfaces on the client's next call; nothing to add here.
        let _ = connection.await;
    });
    client
        .batch_execute("SET client_min_messages = warning")
        .await
        .map_err(PeerError::db("session setup"))?;
    Ok(client)
}

/// Drops `schema` and everything in it, if it exists.
///
/// # Errors
///
/// [`PeerError::Db`] if connecting or dropping fails.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), PeerError> {
    let client = connect(url).await?;
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(schema)
        ))
        .await
        .map_err(PeerError::db("drop schema"))
}

/// `name` as a quoted SQL identifier, as the sink quotes it.
pub(crate) use fleetpipe_postgres::quote_ident;
