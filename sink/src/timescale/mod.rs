//! The TimescaleDB / PostgreSQL sink: telemetry, latest positions, events
//! and dead letters in batched, idempotent transactions.
//!
//! Tables (in the configured schema, created by [`migrate`]):
//!
//! - `telemetry`: one row per ping, deduplicated on
//!   `(vehicle_id, ts, seq)`, so replays and retries add nothing. No key
//!   column is NULL: a ping without `seq` has `seq = -1` ([`SEQ_NONE`]). A hypertable with compression, retention and the
//!   `telemetry_1m` continuous aggregate when TimescaleDB is active; BRIN on
//!   `ts` otherwise.
//! - `vehicle_latest`: the newest ping per vehicle by device time (pages
//!   half empty, so its updates stay on their page: HOT updates).
//! - `dead_letters`: rejected input, and pings and events the database
//!   refused (reason `db_refused`).
//! - `vehicle_events`: state-change events, one row per event id (the id
//!   is deterministic, so a replayed event adds nothing).
//!
//! Enrichment's `vehicle_state` lives in the same schema but is created by
//! the enrichment stage (`fleetpipe_enrich::StateStore`); migration
//! `0004_enrichment` created it up to fleetpipe 0.1 and no longer does.
//!
//! Modules:
//!
//! - [`config`](TimescaleConfig): the `[sink.timescale]` settings; its
//!   connection keys make a `fleetpipe_postgres::PostgresConfig`.
//! - `migrate`: versioned migrations from `sink/migrations/` and the choice
//!   of [`StorageMode`].
//! - `writer`: one part of a batch in one transaction: binary COPY straight
//!   into `telemetry` (or, when the part holds a row that is already stored,
//!   into a per-connection staging table and `INSERT ... ON CONFLICT DO
//!   NOTHING`), the `vehicle_latest` upsert, the events' `unnest` insert
//!   (`ON CONFLICT (id) DO NOTHING`), dead letters, commit.
//! - `service`: [`TimescaleSink::run`], which cuts the input into batches,
//!   splits each by vehicle over `writers` lanes that write in parallel
//!   (backpressure when a lane falls behind), retries retriable errors with
//!   backoff, isolates refused rows by splitting parts, settles the
//!   acknowledgements after commit and records metrics.

mod config;
mod error;
mod migrate;
mod service;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{APPLICATION_NAME, SECTION, TimescaleConfig, TimescaleMode};
pub use error::TimescaleError;
pub use migrate::{StorageMode, migrate};
pub use service::TimescaleSink;
pub use writer::{SEQ_NONE, TELEMETRY_COPY_COLUMNS, TELEMETRY_COPY_TYPES};
