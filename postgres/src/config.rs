//! The settings of a PostgreSQL connection: [`PostgresConfig`] (URL,
//! timeouts, TLS) and its `tls` table [`PostgresTls`], and their
//! validation.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::PostgresError;

/// How a connection uses TLS, with libpq's `sslmode` meanings (without its
/// `allow` and `prefer`, which may silently fall back to plaintext).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plaintext; no TLS is attempted.
    #[default]
    Disable,
    /// Encrypted, but the server's certificate is not checked: protects
    /// against eavesdropping only, not against someone who can answer in the
    /// server's place. A server without TLS is refused.
    Require,
    /// Encrypted, and the server's certificate must chain to a CA in
    /// `ca_file` (and be valid now); the host name is not compared.
    VerifyCa,
    /// As `verify-ca`, and the host of the URL (its name or IP address) must
    /// be one of the certificate's subject alternative names.
    VerifyFull,
}

impl TlsMode {
    /// The configuration value, e.g. `verify-full`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate is checked against `ca_file`.
    #[must_use]
    pub const fn verifies(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyFull)
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS of a PostgreSQL connection: the `tls` table next to a PostgreSQL URL
/// (`[sink.timescale.tls]`, `[geofence.postgres.tls]`).
///
/// TLS is decided here alone: a URL that sets `sslmode=disable` or
/// `sslmode=require` is refused (`sslmode=prefer`, libpq's default, which
/// guarantees nothing, is the same as leaving it out), and libpq's
/// `sslrootcert`/`sslcert`/`sslkey` are not URL options here. The files are
/// read again for every new connection, so a renewed CA or client
/// certificate applies without a restart. Call [`PostgresTls::validate`]
/// before use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTls {
    /// `disable` (plaintext, the default), `require` (encrypted, the
    /// server's certificate not checked), `verify-ca` (its certificate must
    /// chain to `ca_file`) or `verify-full` (and name the URL's host). With
    /// any mode but `disable` a server that does not offer TLS is refused,
    /// never used in plaintext.
    #[serde(default)]
    pub mode: TlsMode,
    /// CA certificates (PEM) the server's certificate must chain to.
    /// Required with `verify-ca` and `verify-full`, refused with the other
    /// modes (which would not use it). There is no fallback to a system or
    /// built-in root store: the server is trusted only through this file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM, leaf first) for servers that
    /// authenticate clients by certificate (`pg_hba.conf` method `cert`, or
    /// `clientcert=verify-full`). Set together with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    /// Set together with `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

impl PostgresTls {
    /// Settings of `mode` with `ca_file` and no client certificate.
    #[must_use]
    pub fn new(mode: TlsMode, ca_file: Option<PathBuf>) -> Self {
        Self {
            mode,
            ca_file,
            client_cert_file: None,
            client_key_file: None,
        }
    }

    /// Checks the keys, naming the offending one as `{section}.tls.{key}`
    /// (e.g. `sink.timescale.tls.ca_file`). Reads no file.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Config`]: `verify-ca`/`verify-full` without
    /// `ca_file`; `ca_file` with a mode that would not use it; a file with
    /// `disable`; one of `client_cert_file`/`client_key_file` without the
    /// other; an empty path.
    pub fn validate(&self, section: &'static str) -> Result<(), PostgresError> {
        let invalid = |key, reason: String| {
            Err(PostgresError::Config {
                section,
                key,
                reason,
            })
        };
        let files = [
            ("tls.ca_file", &self.ca_file),
            ("tls.client_cert_file", &self.client_cert_file),
            ("tls.client_key_file", &self.client_key_file),
        ];
        for (key, file) in files {
            if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                return invalid(key, "must not be empty (leave it out instead)".to_owned());
            }
        }
        let mode = self.mode;
        if mode == TlsMode::Disable
            && let Some((key, _)) = files.iter().find(|(_, f)| f.is_some())
        {
            // A forgotten `mode` must not quietly mean plaintext.
            return invalid(
                "tls.mode",
                format!(
                    "is \"disable\" (plaintext) but {section}.{key} is set: set mode to \
                     \"verify-full\", \"verify-ca\" or \"require\", or remove the file"
                ),
            );
        }
        match (mode.verifies(), &self.ca_file) {
            (true, None) => {
                return invalid(
                    "tls.ca_file",
                    format!(
                        "is required with tls.mode = \"{mode}\": the CA certificates (PEM) the \
                         server's certificate must chain to"
                    ),
                );
            }
            (false, Some(_)) if mode == TlsMode::Require => {
                return invalid(
                    "tls.ca_file",
                    "is set but tls.mode = \"require\" does not check the server's \
                     certificate: use \"verify-full\" (or \"verify-ca\")"
                        .to_owned(),
                );
            }
            _ => {}
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => invalid(
                "tls.client_key_file",
                "is required with tls.client_cert_file".to_owned(),
            ),
            (None, Some(_)) => invalid(
                "tls.client_cert_file",
                "is required with tls.client_key_file".to_owned(),
            ),
            _ => Ok(()),
        }
    }
}

/// The settings of connections to one PostgreSQL database, as a component's
/// configuration holds them: `url`, `tls`, `connect_timeout`,
/// `statement_timeout`. The name the connections carry
/// (`application_name`) is not a key: each component sets its own when it
/// turns these settings into a [`Postgres`](crate::Postgres)
/// (`Postgres::from_config`), so that `pg_stat_activity` tells the
/// sink's writers from the state checkpoints.
///
/// Used as a table of its own it refuses unknown keys. A component whose
/// table holds these keys next to its own (`[sink.timescale]`) declares
/// them with the same names and meanings and builds this type from them:
/// `#[serde(flatten)]` would do it with less code, but it buffers the
/// values, and the configuration loader could then no longer name the key
/// at fault (`sink.timescale.tls.mode`). Call [`PostgresConfig::validate`]
/// before use.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// PostgreSQL URL, e.g. `postgresql://fleetpipe@db:5432/fleet` (prefer
    /// the environment for passwords). Required. TLS is set in `tls`, not
    /// here (a URL that sets `sslmode` is refused). An `application_name`
    /// in the URL replaces the component's own name; a `connect_timeout` in
    /// it is used when the `connect_timeout` key is not set.
    pub url: String,
    /// TLS of every connection to `url` (the `tls` table next to it), see
    /// [`PostgresTls`]. Plaintext when absent.
    #[serde(default)]
    pub tls: PostgresTls,
    /// Longest a new connection may take to be established (TCP, TLS and
    /// authentication), e.g. `"5s"`. Whole seconds, at least 1 s. Without it
    /// the URL's `connect_timeout` applies, else
    /// [`DEFAULT_CONNECT_TIMEOUT`] (10 s): never the operating system's
    /// minutes-long wait for an unanswered connection.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest one statement may run before the server cancels it
    /// (PostgreSQL's `statement_timeout`, set for every session), e.g.
    /// `"30s"`. Whole milliseconds, at least 1 ms. Without it the server's
    /// setting applies (by default none).
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
}

/// How long connecting may take when neither the `connect_timeout` key nor
/// the URL sets it (tokio-postgres' own default is to wait as long as the
/// OS does, minutes for an unanswered SYN).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// The URL may hold a password: keep it out of logs and error messages.
impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl PostgresConfig {
    /// Settings for `url`: plaintext, default timeouts.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: PostgresTls::default(),
            connect_timeout: None,
            statement_timeout: None,
        }
    }

    /// Checks the keys, naming the offending one as `{section}.{key}` (e.g.
    /// `sink.timescale.connect_timeout`). Reads no file and does not parse
    /// the URL (that is `Postgres::from_config`).
    ///
    /// # Errors
    ///
    /// [`PostgresError::Config`]: an empty `url`; a `connect_timeout` under
    /// 1 s or not whole seconds; a `statement_timeout` under 1 ms or not
    /// whole milliseconds; the `tls` errors of [`PostgresTls::validate`].
    pub fn validate(&self, section: &'static str) -> Result<(), PostgresError> {
        let invalid = |key, reason: &str| {
            Err(PostgresError::Config {
                section,
                key,
                reason: reason.to_owned(),
            })
        };
        if self.url.trim().is_empty() {
            return invalid("url", "must not be empty");
        }
        // tokio-postgres takes any duration, but the URL's connect_timeout
        // (libpq's) counts whole seconds: the key means the same.
        if let Some(t) = self.connect_timeout
            && (t < Duration::from_secs(1) || t.subsec_nanos() != 0)
        {
            return invalid("connect_timeout", "must be whole seconds, at least 1s");
        }
        // The server counts milliseconds, and 0 would mean "no timeout".
        if let Some(t) = self.statement_timeout
            && (t < Duration::from_millis(1) || t.subsec_nanos() % 1_000_000 != 0)
        {
            return invalid(
                "statement_timeout",
                "must be whole milliseconds, at least 1ms (leave it out for none)",
            );
        }
        self.tls.validate(section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PostgresTls, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn err(tls: &PostgresTls) -> String {
        tls.validate("sink.timescale")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn verify_modes_need_a_ca_file_and_the_error_names_the_key() {
        for mode in [TlsMode::VerifyCa, TlsMode::VerifyFull] {
            let e = err(&PostgresTls::new(mode, None));
            assert!(
                e.starts_with("sink.timescale.tls.ca_file is required with tls.mode = \""),
                "{e}"
            );
            assert!(e.contains(mode.as_str()), "{e}");
            PostgresTls::new(mode, Some("ca.pem".into()))
                .validate("sink.timescale")
                .expect("valid");
        }
    }

    #[test]
    fn the_keys_parse_with_libpq_mode_names_and_unknown_keys_are_refused() {
        let tls = parse("mode = \"verify-full\"\nca_file = \"/etc/ca.pem\"\n").expect("parses");
        assert_eq!(
            tls,
            PostgresTls::new(TlsMode::VerifyFull, Some("/etc/ca.pem".into()))
        );
        for (text, mode) in [
            ("mode = \"disable\"", TlsMode::Disable),
            ("mode = \"require\"", TlsMode::Require),
            ("mode = \"verify-ca\"", TlsMode::VerifyCa),
            ("", TlsMode::Disable),
        ] {
            assert_eq!(parse(text).expect("parses").mode, mode, "{text}");
        }
        // libpq's fallback modes are not offered.
        for text in [
            "mode = \"prefer\"",
            "mode = \"allow\"",
            "mode = \"verify_full\"",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
        let e = parse("sslrootcert = \"ca.pem\"").expect_err("unknown key");
        assert!(e.contains("sslrootcert"), "{e}");
    }

    #[test]
    fn files_a_mode_would_not_use_are_refused() {
        let e = err(&PostgresTls::new(TlsMode::Require, Some("ca.pem".into())));
        assert!(
            e.starts_with("sink.timescale.tls.ca_file is set but"),
            "{e}"
        );
        let e = err(&PostgresTls::new(TlsMode::Disable, Some("ca.pem".into())));
        assert!(
            e.starts_with("sink.timescale.tls.mode is \"disable\"")
                && e.contains("sink.timescale.tls.ca_file is set"),
            "{e}"
        );
        let client_only = PostgresTls {
            client_cert_file: Some("c.pem".into()),
            client_key_file: Some("c.key".into()),
            ..PostgresTls::default()
        };
        let e = err(&client_only);
        assert!(e.contains("tls.client_cert_file is set"), "{e}");
        // Defaults: plaintext, nothing to check.
        PostgresTls::default()
            .validate("sink.timescale")
            .expect("valid");
        // A client certificate with `require` is fine: client
        // authentication does not depend on checking the server.
        PostgresTls {
            mode: TlsMode::Require,
            ..client_only
        }
        .validate("sink.timescale")
        .expect("valid");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_paths_must_not_be_empty() {
        let base = PostgresTls::new(TlsMode::VerifyFull, Some("ca.pem".into()));
        let e = err(&PostgresTls {
            client_cert_file: Some("c.pem".into()),
            ..base.clone()
        });
        assert!(
            e.starts_with("sink.timescale.tls.client_key_file is required"),
            "{e}"
        );
        let e = err(&PostgresTls {
            client_key_file: Some("c.key".into()),
            ..base.clone()
        });
        assert!(
            e.starts_with("sink.timescale.tls.client_cert_file is required"),
            "{e}"
        );
        let e = err(&PostgresTls::new(TlsMode::VerifyFull, Some("".into())));
        assert!(
            e.starts_with("sink.timescale.tls.ca_file must not be empty"),
            "{e}"
        );
    }

    #[test]
    fn connection_settings_parse_refuse_unknown_keys_and_name_the_key_at_fault() {
        let config: PostgresConfig = toml::from_str(
            "url = \"postgresql://db/fleet\"\nconnect_timeout = \"3s\"\n\
             statement_timeout = \"250ms\"\n[tls]\nmode = \"require\"\n",
        )
        .expect("parses");
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(config.statement_timeout, Some(Duration::from_millis(250)));
        assert_eq!(config.tls.mode, TlsMode::Require);
        config.validate("sink.timescale").expect("valid");
        let minimal: PostgresConfig = toml::from_str("url = \"postgresql://db/fleet\"").unwrap();
        assert_eq!(minimal, PostgresConfig::new("postgresql://db/fleet"));

        let e = toml::from_str::<PostgresConfig>("url = \"x\"\napplication_name = \"me\"\n")
            .expect_err("not a key")
            .to_string();
        assert!(e.contains("application_name"), "{e}");

        let refused = |config: PostgresConfig| {
            config
                .validate("sink.timescale")
                .expect_err("refused")
                .to_string()
        };
        let base = PostgresConfig::new("postgresql://db/fleet");
        for (config, message) in [
            (
                PostgresConfig::new("  "),
                "sink.timescale.url must not be empty",
            ),
            (
                PostgresConfig {
                    connect_timeout: Some(Duration::ZERO),
                    ..base.clone()
                },
                "sink.timescale.connect_timeout must be whole seconds, at least 1s",
            ),
            (
                PostgresConfig {
                    connect_timeout: Some(Duration::from_millis(1500)),
                    ..base.clone()
                },
                "sink.timescale.connect_timeout must be whole seconds, at least 1s",
            ),
            (
                PostgresConfig {
                    statement_timeout: Some(Duration::from_micros(10)),
                    ..base.clone()
                },
                "sink.timescale.statement_timeout must be whole milliseconds, at least 1ms",
            ),
            (
                PostgresConfig {
                    tls: PostgresTls::new(TlsMode::VerifyFull, None),
                    ..base.clone()
                },
                "sink.timescale.tls.ca_file is required",
            ),
        ] {
            let e = refused(config);
            assert!(e.starts_with(message), "{e}");
        }
        // The URL, which may hold a password, is not shown.
        let secret = PostgresConfig::new("postgresql://u:hunter2@db/fleet");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
