//! The TLS settings of a PostgreSQL connection (`[sink.timescale.tls]`,
//! `[geofence.postgres.tls]`), and their validation.

use std::fmt;
use std::path::PathBuf;

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
}
