//! Errors of the TimescaleDB / PostgreSQL sink.

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
    /// `sink.timescale.url` or `[sink.timescale.tls]` is invalid, or a
    /// TLS file does not load; the message names the key (and file).
    #[error(transparent)]
    Postgres(#[from] fleetpipe_postgres::PostgresError),
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

/// A PostgreSQL error as one line an operator can act on (SQLSTATE,
/// message, detail and context, not just `db error`): fleetpipe-postgres'.
pub(crate) use fleetpipe_postgres::describe;
