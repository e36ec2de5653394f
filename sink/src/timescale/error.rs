//! Errors of the TimescaleDB / PostgreSQL sink.

use std::error::Error as _;
use std::fmt::Write as _;

/// Why the TimescaleDB sink could not start or stopped.
///
/// Errors while writing a batch are not here: a batch is retried until it is
/// written (or its bad rows are dead-lettered), so they never end the sink.
/// They are logged and counted instead.
#[derive(Debug, thiserror::Error)]
pub enum TimescaleError {
    /// A setting is out of its domain.
    #[error("sink.timescale.{key} {reason}")]
    InvalidConfig {
        /// The key at fault, e.g. `writers`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `sink.timescale.url` cannot be parsed.
    #[error("sink.timescale.url is not a valid PostgreSQL URL: {}", describe(.0))]
    Url(#[source] tokio_postgres::Error),
    /// The migration connection could not be made.
    #[error("timescale sink: cannot connect to PostgreSQL: {}", describe(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// A migration step failed; nothing of that step was applied.
    #[error("timescale sink: migration {step} failed: {}", describe(.source))]
    Migration {
        /// The migration (e.g. `0001_core`) or step (e.g. `advisory lock`).
        step: &'static str,
        /// PostgreSQL's answer.
        #[source]
        source: tokio_postgres::Error,
    },
    /// `sink.timescale.timescaledb` is `on` but the extension cannot be used.
    #[error("sink.timescale.timescaledb is `on` but {0}")]
    TimescaleUnavailable(String),
    /// The connection pool could not be built.
    #[error("timescale sink: cannot build the connection pool: {0}")]
    Pool(#[source] deadpool_postgres::BuildError),
    /// A writer task panicked; the records it held report `Failed`.
    #[error("timescale sink: writer task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// A PostgreSQL error as one line an operator can act on.
///
/// `tokio_postgres::Error` displays server errors as just `db error`; this
/// adds the SQLSTATE, message, detail and context, or the underlying cause
/// of a client-side error.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            let _ = write!(s, " (detail: {detail})");
        }
        if let Some(context) = db.where_() {
            let _ = write!(s, " (context: {context})");
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(s, ": {cause}");
        source = cause.source();
    }
    s
}
