//! [`Postgres`]: a URL and its TLS settings, ready to connect.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;

use crate::tls::MakeTls;
use crate::{PostgresError, PostgresTls, TlsMode};

/// How long connecting may take when the URL sets no `connect_timeout`
/// (tokio-postgres' own default is to wait as long as the OS does, minutes
/// for an unanswered SYN).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// libpq's TLS options, which tokio-postgres does not know (or, for
/// `sslmode`, knows only in part): an unparsable URL that mentions one gets
/// a hint to the `tls` table.
const LIBPQ_TLS_OPTIONS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl"];

/// A PostgreSQL URL with fleetpipe's defaults and its TLS settings applied:
/// what [`Postgres::connect`] connects with, and what a connection pool is
/// built from ([`Postgres::config`] and [`Postgres::tls`]).
///
/// Cheap to clone. Its `Debug` shows no password (tokio-postgres redacts
/// it).
#[derive(Debug, Clone)]
pub struct Postgres {
    config: Arc<tokio_postgres::Config>,
    tls: MakeTls,
}

impl Postgres {
    /// Parses `url` and applies `tls` and fleetpipe's defaults: a
    /// `connect_timeout` of [`DEFAULT_CONNECT_TIMEOUT`] and
    /// `application_name` when the URL sets neither. `section` is where the
    /// settings live (e.g. `sink.timescale`), for error messages.
    ///
    /// With a mode other than `disable`, tokio-postgres is told to require
    /// TLS, and the TLS files are read once here, so that a missing or bad
    /// file fails at start (and in `fleetpipe config check`) rather than at
    /// the first connection; they are read again for every connection.
    ///
    /// # Errors
    ///
    /// [`PostgresError`] naming the key: invalid TLS settings, an unparsable
    /// URL, a URL that sets `sslmode=disable` or `sslmode=require` (TLS is
    /// set by `tls.mode` alone), an unreadable or unusable TLS file.
    pub fn new(
        section: &'static str,
        url: &str,
        tls: &PostgresTls,
        application_name: &str,
    ) -> Result<Self, PostgresError> {
        tls.validate(section)?;
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
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
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

    /// The TLS mode in use.
    #[must_use]
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.mode()
    }

    /// Connects, and runs the connection in a task of its own (which ends
    /// when the client is dropped or the connection fails; an error is
    /// logged at debug level, since the client's next call reports it).
    ///
    /// # Errors
    ///
    /// tokio-postgres' error: unreachable server, TLS refused or not
    /// trusted (the message names the `tls` key and says why), a TLS file
    /// that no longer loads, authentication.
    pub async fn connect(&self) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        let section = self.tls.section();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(section, error = %chain(&e), "PostgreSQL connection ended");
            }
        });
        Ok((client, task))
    }
}

/// An error and its causes, one line (tokio-postgres' `Display` leaves the
/// cause out).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
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
