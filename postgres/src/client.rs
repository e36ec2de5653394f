//! [`Postgres`]: a component's connection settings, ready to connect.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;

use crate::sql::chain;
use crate::tls::MakeTls;
use crate::{DEFAULT_CONNECT_TIMEOUT, PostgresConfig, PostgresError, PostgresTls, TlsMode};

/// libpq's TLS options, which tokio-postgres does not know (or, for
/// `sslmode`, knows only in part): an unparsable URL that mentions one gets
/// a hint to the `tls` table.
const LIBPQ_TLS_OPTIONS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl"];

/// A PostgreSQL URL with its settings applied (TLS, connect and statement
/// timeouts, the component's `application_name`): what
/// [`Postgres::connect`] connects with, and what [`Postgres::pool`] (with
/// the `pool` feature) builds a connection pool from.
///
/// Cheap to clone. Its `Debug` shows no password (tokio-postgres redacts
/// it).
#[derive(Debug, Clone)]
pub struct Postgres {
    config: Arc<tokio_postgres::Config>,
    tls: MakeTls,
}

impl Postgres {
    /// Checks `settings` ([`PostgresConfig::validate`]), parses the URL and
    /// applies the settings: TLS, the connect timeout (the key, else the
    /// URL's, else [`DEFAULT_CONNECT_TIMEOUT`]), the statement timeout (set
    /// for every session) and `application_name`, the component's name for
    /// its connections (e.g. `fleetpipe-sink`) unless the URL sets one.
    /// `section` is where the settings live (e.g. `sink.timescale`), for
    /// error messages.
    ///
    /// With a TLS mode other than `disable`, tokio-postgres is told to
    /// require TLS, and the TLS files are read once here, so that a missing
    /// or bad file fails at start (and in `fleetpipe config check`) rather
    /// than at the first connection; they are read again for every
    /// connection.
    ///
    /// # Errors
    ///
    /// [`PostgresError`] naming the key: invalid settings, an unparsable
    /// URL, a URL that sets `sslmode` (TLS is set by `tls.mode` alone), a
    /// URL that sets a timeout its key sets too, an unreadable or unusable
    /// TLS file.
    pub fn from_config(
        section: &'static str,
        settings: &PostgresConfig,
        application_name: &str,
    ) -> Result<Self, PostgresError> {
        settings.validate(section)?;
        let PostgresConfig {
            url,
            tls,
            connect_timeout,
            statement_timeout,
        } = settings;
        let mut config: tokio_postgres::Config = url.parse().map_err(|source| {
            let mut detail = chain(&source);
            if LIBPQ_TLS_OPTIONS.iter().any(|o| url.contains(o)) {
                detail.push_str(&format!(
                    " (TLS is set in {section}.tls, not in the URL: mode, ca_file, \
                     client_cert_file, client_key_file)"
                ));
            }
            PostgresError::Url {
                section,
                detail,
                source,
            }
        })?;
        // `Prefer` is tokio-postgres' default, so an explicit
        // `sslmode=prefer` cannot be told from none; it guarantees nothing
        // either way, and `tls.mode` decides. The others would contradict
        // or duplicate `tls.mode`.
        if config.get_ssl_mode() != SslMode::Prefer {
            return Err(PostgresError::Config {
                section,
                key: "url",
                reason: format!(
                    "sets sslmode: TLS is set by {section}.tls.mode alone (now \"{}\"); \
                     remove sslmode from the URL",
                    tls.mode
                ),
            });
        }
        config.ssl_mode(match tls.mode {
            TlsMode::Disable => SslMode::Disable,
            // Never `Prefer`: it would fall back to plaintext when the
            // server (or someone in between) says it has no TLS.
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        let twice = |key: &'static str| PostgresError::Config {
            section,
            key,
            reason: format!("is set, and so is {key} in {section}.url: set one of them"),
        };
        match (connect_timeout, config.get_connect_timeout()) {
            (Some(_), Some(_)) => return Err(twice("connect_timeout")),
            (Some(t), None) => {
                config.connect_timeout(*t);
            }
            (None, Some(_)) => {}
            (None, None) => {
                config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
            }
        }
        if let Some(t) = statement_timeout {
            // A server option of every session (`-c`), so that pooled
            // connections cannot lose it the way a `SET` after connecting
            // could be lost to a `RESET ALL`.
            let existing = config.get_options().unwrap_or_default();
            if existing.contains("statement_timeout") {
                return Err(twice("statement_timeout"));
            }
            let ms = t.as_millis();
            let options = format!("{existing} -c statement_timeout={ms}");
            config.options(options.trim_start());
        }
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        let tls = MakeTls::new(section, tls.clone());
        tls.check()?;
        Ok(Self {
            config: Arc::new(config),
            tls,
        })
    }

    /// [`Postgres::from_config`] for a `url` and its `tls` settings with
    /// the default timeouts: for configurations that hold only these two
    /// keys.
    ///
    /// # Errors
    ///
    /// As [`Postgres::from_config`].
    pub fn new(
        section: &'static str,
        url: &str,
        tls: &PostgresTls,
        application_name: &str,
    ) -> Result<Self, PostgresError> {
        let settings = PostgresConfig {
            tls: tls.clone(),
            ..PostgresConfig::new(url)
        };
        Self::from_config(section, &settings, application_name)
    }

    /// The connection settings (URL, defaults and `sslmode` applied).
    #[must_use]
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector to connect with, e.g. for
    /// `deadpool_postgres::Manager::from_config(postgres.config().clone(),
    /// postgres.tls(), ...)`.
    #[must_use]
    pub fn tls(&self) -> MakeTls {
        self.tls.clone()
    }

    /// A connection pool of at most `max_size` connections, each made with
    /// these settings (TLS, timeouts, `application_name`) and opened on
    /// first use; add hooks and `build()` it. Connections are recycled
    /// with a cheap check (`RecyclingMethod::Fast`). Making a connection
    /// takes at most [`Postgres::connect_timeout`], as with
    /// [`Postgres::connect`] (the pool's create timeout); waiting for a
    /// free connection is not bounded, as waiting for a lock is not.
    #[cfg(feature = "pool")]
    pub fn pool(&self, max_size: usize) -> deadpool_postgres::PoolBuilder {
        use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

        let manager = Manager::from_config(
            (*self.config).clone(),
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(self.connect_timeout()))
    }

    /// The TLS mode in use.
    #[must_use]
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.mode()
    }

    /// How long establishing a connection may take: the `connect_timeout`
    /// key, else the URL's, else [`DEFAULT_CONNECT_TIMEOUT`].
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Connects, and runs the connection in a task of its own (which ends
    /// when the client is dropped or the connection fails; an error is
    /// logged at debug level, since the client's next call reports it).
    ///
    /// The whole of it (TCP, TLS, authentication) takes at most
    /// [`Postgres::connect_timeout`]: tokio-postgres applies its own
    /// `connect_timeout` to the TCP connect alone, so a server (or a
    /// proxy) that accepts the connection and then says nothing would
    /// otherwise hold the caller for good.
    ///
    /// # Errors
    ///
    /// tokio-postgres' error: unreachable server, the connect timeout
    /// (`timeout waiting for server`), TLS refused or not trusted (the
    /// message names the `tls` key and says why), a TLS file that no longer
    /// loads, authentication.
    pub async fn connect(&self) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let connecting = self.config.connect(self.tls.clone());
        let (client, connection) = tokio::time::timeout(self.connect_timeout(), connecting)
            .await
            // tokio-postgres' error type has no public constructor; this
            // one is what it provides for wrappers that bound its calls
            // (its own blocking `postgres` crate does).
            .map_err(|_| tokio_postgres::Error::__private_api_timeout())??;
        let section = self.tls.section();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(section, error = %chain(&e), "PostgreSQL connection ended");
            }
        });
        Ok((client, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "postgresql://postgres@127.0.0.1:5432/test";

    #[test]
    fn defaults_apply_unless_the_url_sets_them_and_the_mode_sets_sslmode() {
        let pg = Postgres::new("sink.timescale", URL, &PostgresTls::default(), "fleetpipe")
            .expect("valid");
        assert_eq!(
            pg.config().get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
        assert_eq!(pg.config().get_application_name(), Some("fleetpipe"));
        assert_eq!(pg.config().get_ssl_mode(), SslMode::Disable);

        let pg = Postgres::new(
            "sink.timescale",
            &format!("{URL}?connect_timeout=3&application_name=mine"),
            &PostgresTls::default(),
            "fleetpipe",
        )
        .expect("valid");
        assert_eq!(
            pg.config().get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert_eq!(pg.config().get_application_name(), Some("mine"));

        let require = PostgresTls::new(TlsMode::Require, None);
        let pg = Postgres::new("sink.timescale", URL, &require, "fleetpipe").expect("valid");
        assert_eq!(pg.config().get_ssl_mode(), SslMode::Require);
        assert_eq!(pg.tls_mode(), TlsMode::Require);
        // An explicit `prefer` (libpq's default) is the same as none.
        let pg = Postgres::new(
            "sink.timescale",
            &format!("{URL}?sslmode=prefer"),
            &require,
            "fleetpipe",
        )
        .expect("valid");
        assert_eq!(pg.config().get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn the_timeout_keys_apply_and_may_not_contradict_the_url() {
        let settings = PostgresConfig {
            connect_timeout: Some(Duration::from_secs(3)),
            statement_timeout: Some(Duration::from_millis(250)),
            ..PostgresConfig::new(URL)
        };
        let pg =
            Postgres::from_config("sink.timescale", &settings, "fleetpipe-sink").expect("valid");
        assert_eq!(pg.connect_timeout(), Duration::from_secs(3));
        assert_eq!(pg.config().get_options(), Some("-c statement_timeout=250"));
        assert_eq!(pg.config().get_application_name(), Some("fleetpipe-sink"));
        // The URL's connect_timeout still applies without the key.
        let pg = Postgres::from_config(
            "sink.timescale",
            &PostgresConfig::new(format!("{URL}?connect_timeout=4")),
            "x",
        )
        .expect("valid");
        assert_eq!(pg.connect_timeout(), Duration::from_secs(4));

        for (url, key) in [
            (format!("{URL}?connect_timeout=4"), "connect_timeout"),
            (
                format!("{URL}?options=-c%20statement_timeout%3D5"),
                "statement_timeout",
            ),
        ] {
            let e = Postgres::from_config(
                "sink.timescale",
                &PostgresConfig {
                    url,
                    ..settings.clone()
                },
                "x",
            )
            .expect_err("set twice")
            .to_string();
            assert_eq!(
                e,
                format!(
                    "sink.timescale.{key} is set, and so is {key} in sink.timescale.url: \
                     set one of them"
                )
            );
        }
        // Validation comes first and names the key.
        let e = Postgres::from_config(
            "geofence.postgres",
            &PostgresConfig {
                connect_timeout: Some(Duration::ZERO),
                ..PostgresConfig::new(URL)
            },
            "x",
        )
        .expect_err("refused")
        .to_string();
        assert!(e.starts_with("geofence.postgres.connect_timeout "), "{e}");
    }

    #[test]
    fn sslmode_in_the_url_is_refused_naming_the_key() {
        for (mode, tls) in [
            ("disable", PostgresTls::new(TlsMode::Require, None)),
            ("require", PostgresTls::default()),
            ("require", PostgresTls::new(TlsMode::Require, None)),
        ] {
            let e = Postgres::new(
                "geofence.postgres",
                &format!("{URL}?sslmode={mode}"),
                &tls,
                "x",
            )
            .expect_err("refused")
            .to_string();
            assert!(
                e.starts_with("geofence.postgres.url sets sslmode: TLS is set by geofence.postgres.tls.mode alone"),
                "{e}"
            );
        }
        // libpq's verify modes are not URL options here: a hint says where
        // they go.
        let e = Postgres::new(
            "sink.timescale",
            &format!("{URL}?sslmode=verify-full&sslrootcert=/ca.pem"),
            &PostgresTls::default(),
            "x",
        )
        .expect_err("refused");
        assert!(matches!(e, PostgresError::Url { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with("sink.timescale.url is not a valid PostgreSQL URL: ")
                && e.contains("TLS is set in sink.timescale.tls"),
            "{e}"
        );
    }

    #[test]
    fn tls_files_are_read_at_setup_and_a_missing_one_names_key_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-ca.pem");
        let tls = PostgresTls::new(TlsMode::VerifyFull, Some(missing.clone()));
        let e = Postgres::new("sink.timescale", URL, &tls, "x")
            .expect_err("refused")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "sink.timescale.tls.ca_file = {}: cannot read: ",
                missing.display()
            )),
            "{e}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let tls = PostgresTls::new(TlsMode::VerifyCa, Some(garbage.clone()));
        let e = Postgres::new("sink.timescale", URL, &tls, "x")
            .expect_err("refused")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "sink.timescale.tls.ca_file = {}: no certificate in the file",
                garbage.display()
            )),
            "{e}"
        );
        // Settings are checked before any file.
        let e = Postgres::new(
            "sink.timescale",
            URL,
            &PostgresTls::new(TlsMode::VerifyFull, None),
            "x",
        )
        .expect_err("refused")
        .to_string();
        assert!(
            e.starts_with("sink.timescale.tls.ca_file is required"),
            "{e}"
        );
    }
}
