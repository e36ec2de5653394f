//! fleetpipe's PostgreSQL access: the one place that turns a component's
//! connection settings into connections and pools, and that quotes
//! identifiers and describes PostgreSQL errors, for the TimescaleDB sink
//! (`[sink.timescale]`, application name `fleetpipe-sink`), enrichment's
//! state checkpoints (the same settings, `fleetpipe-state`) and the fence
//! table (`[geofence.postgres]`).
//!
//! - [`PostgresConfig`]: the keys of a connection (`url`, `tls`,
//!   `connect_timeout`, `statement_timeout`), validated by
//!   [`PostgresConfig::validate`] naming the key at fault.
//!   [`PostgresTls`] / [`TlsMode`]: its `tls` table, with libpq's
//!   `sslmode` meanings (`disable`, `require`, `verify-ca`,
//!   `verify-full`) and a CA file. Always available (configurations hold
//!   them without an I/O stack).
//! - [`sql`]: [`quote_ident`] / [`quote_qualified`], the advisory lock of
//!   a schema and, with `connect`, [`describe`] (an error with its SQLSTATE, detail and
//!   context, not just `db error`).
//! - With the `connect` feature, [`Postgres`]: the settings applied to the
//!   parsed URL, with the component's `application_name`;
//!   [`Postgres::connect`], and [`MakeTls`], the TLS connector. TLS is
//!   rustls (the ring provider, as everywhere in fleetpipe) via
//!   tokio-postgres-rustls, which also provides `tls-server-end-point`
//!   channel binding for SCRAM. With the `pool` feature,
//!   `Postgres::pool`: a deadpool-postgres pool of the same connections.
//!
//! Every mode but `disable` makes tokio-postgres require TLS: a server that
//! answers the TLS request with "no" is refused, never used in plaintext.
//! The CA and client certificate files are read for each new connection,
//! so renewed files apply without a restart.
//!
//! With the `test-support` feature, `test_support` sets the local test
//! server up for TLS.

#[cfg(feature = "connect")]
mod client;
mod config;
pub mod sql;
#[cfg(feature = "connect")]
mod tls;

#[cfg(feature = "test-support")]
pub mod test_support;

use std::path::PathBuf;

#[cfg(feature = "connect")]
pub use client::Postgres;
pub use config::{DEFAULT_CONNECT_TIMEOUT, PostgresConfig, PostgresTls, TlsMode};
#[cfg(feature = "connect")]
pub use sql::describe;
pub use sql::{MAX_IDENTIFIER_LEN, check_identifier, quote_ident, quote_qualified};
#[cfg(feature = "connect")]
pub use tls::{MakeTls, TlsConnector};

/// Why a PostgreSQL connection could not be set up. Every message is one
/// line that names the configuration key (`{section}.url`,
/// `{section}.tls.ca_file`, ...) and, for a file, its path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// A setting is out of its domain.
    #[error("{section}.{key} {reason}")]
    Config {
        /// The section the settings belong to, e.g. `sink.timescale`.
        section: &'static str,
        /// The key within it, e.g. `tls.ca_file`.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The URL cannot be parsed.
    #[cfg(feature = "connect")]
    #[error("{section}.url is not a valid PostgreSQL URL: {detail}")]
    Url {
        /// The section of the URL.
        section: &'static str,
        /// tokio-postgres' reason, with a hint for libpq's TLS options.
        detail: String,
        /// tokio-postgres' error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A TLS file cannot be read or holds nothing usable.
    #[error("{section}.{key} = {}: {detail}", path.display())]
    File {
        /// The section, e.g. `sink.timescale`.
        section: &'static str,
        /// The key, e.g. `tls.ca_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The files load but make no TLS configuration (e.g. the client key
    /// does not belong to the client certificate).
    #[error("{section}.tls: {detail}")]
    Tls {
        /// The section, e.g. `sink.timescale`.
        section: &'static str,
        /// Why.
        detail: String,
    },
}
