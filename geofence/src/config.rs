//! Configuration of the geofences (the `[geofence]` section).

use std::path::PathBuf;
use std::time::Duration;

use fleetpipe_postgres::PostgresTls;
use serde::Deserialize;

use crate::GeofenceError;

/// Longest PostgreSQL identifier (`NAMEDATALEN - 1`).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Where the fences come from and how they are indexed.
///
/// Sources: the GeoJSON file ([`GeofenceConfig::file`]) and/or a PostgreSQL
/// table ([`GeofenceConfig::postgres`]). With both, the fences are the union
/// of the two (the file's first, then the table's rows ordered by id); an id
/// defined in both is an error, like a duplicate id within one source. With
/// neither, there are no fences (every lookup answers "none").
///
/// Every field has a default, so an empty or missing `[geofence]` section is
/// valid. Call [`GeofenceConfig::validate`] before use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeofenceConfig {
    /// GeoJSON `FeatureCollection` of the fences (see
    /// [`crate::FenceSet::from_geojson_str`] for the accepted features).
    /// `None`: no fences from a file. Stable public key `geofence.file`.
    /// The file is watched (see [`GeofenceConfig::watch_interval`]) and
    /// reloaded when its content changes.
    pub file: Option<PathBuf>,
    /// Edge, in metres, of the index's finest cells (1..=100000). A cell a
    /// little larger than the typical fence suits depot- and customer-sized
    /// fences. Affects only speed and memory, never the answers.
    pub cell_size_m: u32,
    /// Load fences from a PostgreSQL table too (see [`crate::FenceRow`] for
    /// the table's columns). Read at start and on every reload; the table is
    /// not watched: after changing it, request a reload.
    pub postgres: Option<PostgresFencesConfig>,
    /// How often the file's modification time and size are checked (and,
    /// when they changed, its content hash); a changed content is reloaded.
    /// `"0s"` or `"off"` disables polling (reloads then happen only on
    /// request).
    #[serde(deserialize_with = "duration_or_off")]
    pub watch_interval: Duration,
}

impl GeofenceConfig {
    /// Default of [`GeofenceConfig::cell_size_m`]: 100 m
    /// ([`crate::DEFAULT_CELL_SIZE_M`]).
    pub const fn default_cell_size_m() -> u32 {
        crate::DEFAULT_CELL_SIZE_M as u32
    }

    /// Default of [`GeofenceConfig::watch_interval`]: 2 s.
    pub const fn default_watch_interval() -> Duration {
        Duration::from_secs(2)
    }

    /// The finest cell edge as [`crate::GeofenceIndex::build`] takes it.
    #[must_use]
    pub fn cell_size(&self) -> f64 {
        f64::from(self.cell_size_m)
    }

    /// Whether any source of fences is configured.
    #[must_use]
    pub fn has_sources(&self) -> bool {
        self.file.is_some() || self.postgres.is_some()
    }

    /// Checks the settings, naming the offending key on error. Reads nothing.
    ///
    /// # Errors
    ///
    /// [`GeofenceError::Config`]: a cell size out of 1..=100000, an empty
    /// file path,
    /// an empty PostgreSQL URL or a table name that is not `name` or
    /// `schema.name` (letters, digits, `_`, `$`; not starting with a digit).
    pub fn validate(&self) -> Result<(), GeofenceError> {
        crate::index::check_cell_size(self.cell_size())?;
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(GeofenceError::Config {
                key: "geofence.file",
                reason: "must not be empty (leave it out for no fence file)".into(),
            });
        }
        if let Some(pg) = &self.postgres {
            pg.validate()?;
        }
        Ok(())
    }
}

impl Default for GeofenceConfig {
    fn default() -> Self {
        Self {
            file: None,
            cell_size_m: Self::default_cell_size_m(),
            postgres: None,
            watch_interval: Self::default_watch_interval(),
        }
    }
}

/// `geofence.postgres`: fences from a PostgreSQL table.
///
/// The table needs no PostGIS; its columns are those of [`crate::FenceRow`]
/// (`geofence/sql/fence_table.sql`; with the `service` feature,
/// `FenceTable::create` creates it).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFencesConfig {
    /// PostgreSQL URL, e.g. `postgresql://fleetpipe@db:5432/fleet`
    /// (prefer the environment for passwords:
    /// `FLEETPIPE_GEOFENCE__POSTGRES__URL`). Required. TLS is set in
    /// [`PostgresFencesConfig::tls`], not here (a URL that sets `sslmode`
    /// is refused).
    pub url: String,
    /// TLS of the connections to `url`: `[geofence.postgres.tls]`, see
    /// [`PostgresTls`]. Plaintext when absent.
    #[serde(default)]
    pub tls: PostgresTls,
    /// The table, `name` or `schema.name`. Used as written (quoted, so
    /// case-sensitive).
    #[serde(default = "PostgresFencesConfig::default_table")]
    pub table: String,
}

// The URL may hold a password: keep it out of logs and error messages.
impl std::fmt::Debug for PostgresFencesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresFencesConfig")
            .field("url", &"<redacted>")
            .field("tls", &self.tls)
            .field("table", &self.table)
            .finish()
    }
}

impl PostgresFencesConfig {
    /// A configuration for `url` with the default table.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: PostgresTls::default(),
            table: Self::default_table(),
        }
    }

    /// Default of [`PostgresFencesConfig::table`]: `geofences`.
    pub fn default_table() -> String {
        "geofences".to_owned()
    }

    /// The table as a quoted SQL identifier (`"name"` or `"schema"."name"`),
    /// safe to put in a query once [`PostgresFencesConfig::validate`] passed.
    #[must_use]
    pub fn quoted_table(&self) -> String {
        fleetpipe_postgres::quote_qualified(&self.table)
    }

    /// Checks the URL is present, the table name is an identifier and the
    /// TLS settings fit together. Reads no file.
    ///
    /// # Errors
    ///
    /// [`GeofenceError::Config`] naming `geofence.postgres.url` or
    /// `geofence.postgres.table`; [`GeofenceError::PostgresTls`] naming the
    /// `geofence.postgres.tls` key.
    pub fn validate(&self) -> Result<(), GeofenceError> {
        if self.url.trim().is_empty() {
            return Err(GeofenceError::Config {
                key: "geofence.postgres.url",
                reason: "must not be empty".into(),
            });
        }
        let parts: Vec<&str> = self.table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
            return Err(GeofenceError::Config {
                key: "geofence.postgres.table",
                reason: format!(
                    "{:?} is not a table name: expected `name` or `schema.name` \
                     (letters, digits, '_' or '$', not starting with a digit, at most \
                     {MAX_IDENTIFIER_BYTES} bytes each)",
                    self.table
                ),
            });
        }
        self.tls.validate("geofence.postgres")?;
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    s.len() <= MAX_IDENTIFIER_BYTES
        && (first.is_alphabetic() || first == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// A humantime duration (`"2s"`, `"500ms"`), or `"off"` / `0` for zero.
fn duration_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"2s\", or \"off\"")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
            if s.trim().eq_ignore_ascii_case("off") {
                return Ok(Duration::ZERO);
            }
            humantime_serde::re::humantime::parse_duration(s.trim()).map_err(|e| {
                E::custom(format!(
                    "{s:?} is neither a duration (like \"2s\") nor \"off\": {e}"
                ))
            })
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
            if n == 0 {
                Ok(Duration::ZERO)
            } else {
                Err(E::custom(format!(
                    "{n} has no unit: write a duration such as \"{n}s\", or \"off\""
                )))
            }
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
            match u64::try_from(n) {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::custom(format!("{n} is negative"))),
            }
        }
    }

    d.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(json: &str) -> Result<GeofenceConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_documented_values_and_valid() {
        let c = GeofenceConfig::default();
        assert_eq!(c.file, None);
        assert_eq!(c.cell_size_m, 100);
        assert_eq!(c.cell_size(), crate::DEFAULT_CELL_SIZE_M);
        assert_eq!(c.postgres, None);
        assert_eq!(c.watch_interval, Duration::from_secs(2));
        assert!(!c.has_sources());
        assert!(c.validate().is_ok());
        assert_eq!(
            parse("{}").unwrap(),
            c,
            "an empty section takes the defaults"
        );
    }

    #[test]
    fn keys_parse() {
        let c = parse(
            r#"{"file": "fences.geojson", "cell_size_m": 250, "watch_interval": "500ms",
                "postgres": {"url": "postgresql://u@h/db"}}"#,
        )
        .unwrap();
        assert_eq!(c.file, Some(PathBuf::from("fences.geojson")));
        assert_eq!(c.cell_size(), 250.0);
        assert_eq!(c.watch_interval, Duration::from_millis(500));
        let pg = c.postgres.clone().unwrap();
        assert_eq!(pg, PostgresFencesConfig::new("postgresql://u@h/db"));
        assert_eq!(pg.table, "geofences");
        assert!(c.has_sources());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn watch_interval_off_and_zero_disable_polling() {
        for v in [r#""off""#, r#""OFF""#, r#""0s""#, r#""0""#, "0"] {
            let c = parse(&format!(r#"{{"watch_interval": {v}}}"#)).unwrap();
            assert_eq!(c.watch_interval, Duration::ZERO, "{v}");
        }
        let e = parse(r#"{"watch_interval": "soon"}"#).unwrap_err();
        assert!(e.contains("\"soon\" is neither a duration"), "{e}");
        let e = parse(r#"{"watch_interval": 5}"#).unwrap_err();
        assert!(e.contains("no unit"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse(r#"{"files": "x"}"#).unwrap_err();
        assert!(e.contains("unknown field `files`"), "{e}");
        let e = parse(r#"{"postgres": {"url": "u", "tabel": "t"}}"#).unwrap_err();
        assert!(e.contains("unknown field `tabel`"), "{e}");
        let e = parse(r#"{"postgres": {"table": "t"}}"#).unwrap_err();
        assert!(e.contains("missing field `url`"), "{e}");
    }

    #[test]
    fn cell_size_out_of_range_is_rejected_naming_the_key() {
        for bad in [0, 100_001, u32::MAX] {
            let c = GeofenceConfig {
                cell_size_m: bad,
                ..GeofenceConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("geofence.cell_size_m: {bad} is out of range")),
                "{e}"
            );
        }
        for good in [1, 100, 100_000] {
            let c = GeofenceConfig {
                cell_size_m: good,
                ..GeofenceConfig::default()
            };
            assert!(c.validate().is_ok(), "{good}");
        }
    }

    #[test]
    fn empty_file_and_url_are_rejected() {
        let c = GeofenceConfig {
            file: Some(PathBuf::new()),
            ..GeofenceConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("geofence.file: "), "{e}");
        let c = GeofenceConfig {
            postgres: Some(PostgresFencesConfig::new(" ")),
            ..GeofenceConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("geofence.postgres.url: "), "{e}");
    }

    #[test]
    fn table_names_are_identifiers_and_quoted() {
        let table = |t: &str| PostgresFencesConfig {
            table: t.into(),
            ..PostgresFencesConfig::new("postgresql://h/db")
        };
        for ok in ["geofences", "fleet.geofences", "_x$1", "Zones"] {
            assert!(table(ok).validate().is_ok(), "{ok}");
        }
        assert_eq!(table("geofences").quoted_table(), "\"geofences\"");
        assert_eq!(table("fleet.Zones").quoted_table(), "\"fleet\".\"Zones\"");
        let long = "a".repeat(64);
        for bad in [
            "",
            "a.b.c",
            ".x",
            "1abc",
            "x; drop table y",
            "x\"y",
            "a-b",
            long.as_str(),
        ] {
            let e = table(bad).validate().unwrap_err().to_string();
            assert!(e.starts_with("geofence.postgres.table: "), "{bad}: {e}");
        }
    }

    #[test]
    fn tls_keys_parse_and_are_validated_naming_the_key() {
        let c = parse(
            r#"{"postgres": {"url": "postgresql://u@h/db",
                "tls": {"mode": "verify-full", "ca_file": "/etc/ca.pem"}}}"#,
        )
        .unwrap();
        let pg = c.postgres.as_ref().unwrap();
        assert_eq!(
            pg.tls,
            PostgresTls::new(
                fleetpipe_postgres::TlsMode::VerifyFull,
                Some(PathBuf::from("/etc/ca.pem"))
            )
        );
        assert!(c.validate().is_ok());
        let c =
            parse(r#"{"postgres": {"url": "postgresql://u@h/db", "tls": {"mode": "verify-ca"}}}"#)
                .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("geofence.postgres.tls.ca_file is required"),
            "{e}"
        );
        assert!(
            parse(r#"{"postgres": {"url": "u", "tls": {"mode": "prefer"}}}"#).is_err(),
            "prefer may fall back to plaintext: not offered"
        );
    }

    #[test]
    fn debug_hides_the_url() {
        let pg = PostgresFencesConfig::new("postgresql://u:s3cret@h/db");
        assert!(!format!("{pg:?}").contains("s3cret"));
    }
}
