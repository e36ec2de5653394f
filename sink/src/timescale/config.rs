//! Configuration of the TimescaleDB / PostgreSQL sink (the
//! `[sink.timescale]` section).

use std::time::Duration;

use fleetpipe_postgres::{Postgres, PostgresConfig, PostgresTls};
use serde::Deserialize;

use super::TimescaleError;

/// Where these settings live, for error messages (`sink.timescale.url`,
/// ...).
pub const SECTION: &str = "sink.timescale";

/// Name the sink's connections (writers and migrations) carry in
/// `pg_stat_activity` when the URL sets none.
pub const APPLICATION_NAME: &str = "fleetpipe-sink";

/// Whether to use the TimescaleDB extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimescaleMode {
    /// Use TimescaleDB when the extension is available in the database, plain
    /// PostgreSQL otherwise.
    #[default]
    Auto,
    /// Require TimescaleDB: startup fails when the extension is missing.
    On,
    /// Plain PostgreSQL, even when TimescaleDB is available.
    Off,
}

impl TimescaleMode {
    /// The configuration value, e.g. `auto`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimescaleMode::Auto => "auto",
            TimescaleMode::On => "on",
            TimescaleMode::Off => "off",
        }
    }
}

/// Settings of the TimescaleDB / PostgreSQL sink.
///
/// Only [`TimescaleConfig::url`] is required; every other key has a default.
/// [`TimescaleConfig::validate`] (called by [`super::migrate`] and
/// [`super::TimescaleSink::connect`]) checks the values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimescaleConfig {
    /// PostgreSQL connection URL, e.g.
    /// `postgresql://fleetpipe@db:5432/fleet`. Without an
    /// `application_name` in it the sink's connections are named
    /// `fleetpipe-sink` (enrichment's state checkpoints, which use the same
    /// URL, TLS and timeouts, `fleetpipe-state`). TLS is set in
    /// [`TimescaleConfig::tls`], not here (a URL that sets `sslmode` is
    /// refused). See [`PostgresConfig::url`].
    pub url: String,
    /// TLS of every connection to `url` (the writers', the migrations' and
    /// the state checkpoints'): `[sink.timescale.tls]`, see
    /// [`PostgresTls`]. Plaintext when absent.
    #[serde(default)]
    pub tls: PostgresTls,
    /// Longest establishing a connection to `url` may take (TCP, TLS and
    /// authentication), whole seconds; without it the URL's
    /// `connect_timeout`, else 10 s. See [`PostgresConfig::connect_timeout`].
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest one statement of the writers or the state checkpoints may
    /// run before the server cancels it (a cancelled batch is retried);
    /// the migrations run without it. Without it the server's setting. See
    /// [`PostgresConfig::statement_timeout`].
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// Schema the tables live in; created if missing. 1-63 characters of
    /// `[A-Za-z0-9_]`, not starting with a digit.
    #[serde(default = "TimescaleConfig::default_schema")]
    pub schema: String,
    /// Connections in the pool, which is also the number of writer lanes:
    /// each batch is split by vehicle over the lanes (a vehicle always takes
    /// the same one), and each lane writes one transaction at a time. When a
    /// lane is busy and has parts queued the sink stops reading its input,
    /// so the queue in front of it fills and applies backpressure.
    #[serde(default = "TimescaleConfig::default_writers")]
    pub writers: usize,
    /// Most rows written as one batch (one transaction). Larger batches
    /// amortise the round trips; smaller ones acknowledge sooner.
    #[serde(default = "TimescaleConfig::default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// Longest a partial batch waits for more rows before it is written
    /// (e.g. `"50ms"`).
    #[serde(
        default = "TimescaleConfig::default_batch_max_wait",
        with = "humantime_serde"
    )]
    pub batch_max_wait: Duration,
    /// `auto` (use TimescaleDB when the extension is available), `on`
    /// (require it) or `off` (plain PostgreSQL).
    #[serde(default)]
    pub timescaledb: TimescaleMode,
    /// How long raw telemetry is kept when TimescaleDB is active (e.g.
    /// `"90d"`); older chunks are dropped by a retention policy. Whole
    /// seconds; ignored in plain PostgreSQL mode.
    #[serde(
        default = "TimescaleConfig::default_retention",
        with = "humantime_serde"
    )]
    pub retention: Duration,
    /// Compress chunks older than this when TimescaleDB is active (e.g.
    /// `"8d"`). Whole seconds; ignored in plain PostgreSQL mode. Must be
    /// longer than `ingest.limits.max_past` (checked with the whole
    /// configuration), so that accepted late pings are not written into
    /// chunks the policy may already have compressed.
    #[serde(
        default = "TimescaleConfig::default_compress_after",
        with = "humantime_serde"
    )]
    pub compress_after: Duration,
    /// First backoff after a retriable error (lost connection, server
    /// shutdown, deadlock, ...). Each further attempt doubles the ceiling up
    /// to `retry_max`; the actual wait is drawn at random below it.
    #[serde(
        default = "TimescaleConfig::default_retry_initial",
        with = "humantime_serde"
    )]
    pub retry_initial: Duration,
    /// Longest backoff between two attempts of a batch. A batch is retried
    /// until it is written; only shutdown ends the attempts.
    #[serde(
        default = "TimescaleConfig::default_retry_max",
        with = "humantime_serde"
    )]
    pub retry_max: Duration,
}

impl TimescaleConfig {
    /// A configuration writing to `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: PostgresTls::default(),
            connect_timeout: None,
            statement_timeout: None,
            schema: Self::default_schema(),
            writers: Self::default_writers(),
            batch_max_rows: Self::default_batch_max_rows(),
            batch_max_wait: Self::default_batch_max_wait(),
            timescaledb: TimescaleMode::default(),
            retention: Self::default_retention(),
            compress_after: Self::default_compress_after(),
            retry_initial: Self::default_retry_initial(),
            retry_max: Self::default_retry_max(),
        }
    }

    /// Default of [`TimescaleConfig::schema`]: `public`.
    pub fn default_schema() -> String {
        "public".to_owned()
    }

    /// Default of [`TimescaleConfig::writers`].
    pub const fn default_writers() -> usize {
        4
    }

    /// Default of [`TimescaleConfig::batch_max_rows`].
    pub const fn default_batch_max_rows() -> usize {
        5000
    }

    /// Default of [`TimescaleConfig::batch_max_wait`]: 50 ms.
    pub const fn default_batch_max_wait() -> Duration {
        Duration::from_millis(50)
    }

    /// Default of [`TimescaleConfig::retention`]: 90 days.
    pub const fn default_retention() -> Duration {
        Duration::from_secs(90 * 24 * 60 * 60)
    }

    /// Default of [`TimescaleConfig::compress_after`]: 8 days, one day more
    /// than the default `ingest.limits.max_past` (7 days).
    pub const fn default_compress_after() -> Duration {
        Duration::from_secs(8 * 24 * 60 * 60)
    }

    /// Default of [`TimescaleConfig::retry_initial`]: 100 ms.
    pub const fn default_retry_initial() -> Duration {
        Duration::from_millis(100)
    }

    /// Default of [`TimescaleConfig::retry_max`]: 10 s.
    pub const fn default_retry_max() -> Duration {
        Duration::from_secs(10)
    }

    /// Checks the settings, naming the offending key on error. Reads no
    /// file; the URL is parsed and the TLS files are read by
    /// [`TimescaleConfig::postgres`].
    ///
    /// # Errors
    ///
    /// [`TimescaleError::InvalidConfig`] naming the key.
    pub fn validate(&self) -> Result<(), TimescaleError> {
        let invalid = |key, reason: &str| {
            Err(TimescaleError::InvalidConfig {
                key,
                reason: reason.to_owned(),
            })
        };
        if let Err(reason) = fleetpipe_postgres::check_identifier(&self.schema) {
            return invalid("schema", &reason);
        }
        if self.writers == 0 {
            return invalid("writers", "must be at least 1");
        }
        // A batch of at most 0 rows would make every receive return
        // nothing, which is indistinguishable from a closed input.
        if self.batch_max_rows == 0 {
            return invalid("batch_max_rows", "must be at least 1");
        }
        if self.retry_initial.is_zero() {
            return invalid("retry_initial", "must be longer than 0");
        }
        if self.retry_max < self.retry_initial {
            return invalid("retry_max", "must not be shorter than retry_initial");
        }
        if self.retention.as_secs() == 0 {
            return invalid("retention", "must be at least 1s");
        }
        if self.compress_after.as_secs() == 0 {
            return invalid("compress_after", "must be at least 1s");
        }
        self.connection().validate(SECTION)?;
        Ok(())
    }

    /// The connection keys (`url`, `tls`, `connect_timeout`,
    /// `statement_timeout`) as fleetpipe-postgres' one type for them, which
    /// validates and applies them. They are fields of this table rather
    /// than a `#[serde(flatten)]` [`PostgresConfig`] because serde's
    /// flatten buffers the values and the configuration loader then can no
    /// longer say which key (e.g. `sink.timescale.tls.mode`) is wrong.
    #[must_use]
    pub fn connection(&self) -> PostgresConfig {
        PostgresConfig {
            url: self.url.clone(),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
        }
    }

    /// The sink's connection settings ([`Postgres::from_config`] with the
    /// application name [`APPLICATION_NAME`]). Reads the TLS files once, so
    /// a missing one fails here (at start and in `fleetpipe config check`);
    /// every connection reads them again.
    ///
    /// # Errors
    ///
    /// [`TimescaleError::Postgres`] naming the `sink.timescale` key (and
    /// file) at fault.
    pub fn postgres(&self) -> Result<Postgres, TimescaleError> {
        Ok(Postgres::from_config(
            SECTION,
            &self.connection(),
            APPLICATION_NAME,
        )?)
    }
}
