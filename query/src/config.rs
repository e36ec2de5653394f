//! The `[api]` section: the query API's listener, its database, its tokens
//! and its limits.
//!
//! The API has a listener of its own rather than routes on the devices'
//! one: dashboards and devices are different trust zones (a device's
//! credential must never read the fleet, and the API's port can be put on
//! another network). It only reads PostgreSQL (and writes its share links),
//! so it runs in any role that can reach the database the sink writes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use fleetpipe_postgres::{Postgres, PostgresConfig, PostgresTls};
use serde::Deserialize;

use crate::QueryError;

/// Where these settings live, for error messages (`api.url`, ...).
pub const SECTION: &str = "api";

/// Name the API's connections carry in `pg_stat_activity` when the URL sets
/// none.
pub const APPLICATION_NAME: &str = "fleetpipe-api";

/// Most rows a page may ask for (`api.max_limit` is refused above it).
const LIMIT_CEILING: usize = 10_000;

/// `[api]`: the query API. Present means on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the API's own listener (not the devices' `ingest.http`
    /// one: dashboards and devices are different trust zones).
    #[serde(default = "ApiConfig::default_listen")]
    pub listen: SocketAddr,
    /// PostgreSQL URL of the database the TimescaleDB sink writes (usually
    /// `sink.timescale.url`; a read replica works for everything but share
    /// links, which the API writes). TLS is set in `tls`, not here. See
    /// [`PostgresConfig::url`].
    pub url: String,
    /// TLS of every connection to `url` (`[api.tls]`), see [`PostgresTls`].
    /// Plaintext when absent.
    #[serde(default)]
    pub tls: PostgresTls,
    /// Longest establishing a connection may take, whole seconds; without
    /// it the URL's `connect_timeout`, else 10 s.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest one query may run before the server cancels it (the request
    /// then fails with 503). Without it the server's setting.
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// Schema the sink's tables live in (`sink.timescale.schema`); the
    /// API creates its `api_share_links` table there. 1-63 characters of
    /// `[A-Za-z0-9_]`, not starting with a digit.
    #[serde(default = "ApiConfig::default_schema")]
    pub schema: String,
    /// Connections in the API's pool: at most this many queries run at
    /// once, further requests wait for a connection.
    #[serde(default = "ApiConfig::default_pool_size")]
    pub pool_size: usize,
    /// Most connections open at once on `listen`; one more is answered 503
    /// and closed. The idle and header timeouts are `ingest.http`'s.
    #[serde(default = "ApiConfig::default_max_connections")]
    pub max_connections: usize,
    /// Who may read what: each token's name, the SHA-256 of the token (hex;
    /// the token itself is never in the configuration: `printf %s "$TOKEN" |
    /// sha256sum`) and its scope: `scope = "fleet"` (everything),
    /// `vehicles = [...]` (those vehicles only) or `fences = [...]`
    /// (vehicles while their latest ping is inside one of those fences, and
    /// what happened inside them). At least one.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Page size of the lists when the request gives no `limit`.
    #[serde(default = "ApiConfig::default_default_limit")]
    pub default_limit: usize,
    /// Largest `limit` a request may ask for (a larger one is refused 400).
    #[serde(default = "ApiConfig::default_max_limit")]
    pub max_limit: usize,
    /// Largest `max_points` a track request may ask for; also the number of
    /// points when it asks for none.
    #[serde(default = "ApiConfig::default_max_track_points")]
    pub max_track_points: usize,
    /// Most pings one track request may read before simplifying (a day at
    /// 1 Hz is 86,400); a range holding more is refused 400 (narrow it).
    #[serde(default = "ApiConfig::default_max_track_rows")]
    pub max_track_rows: usize,
    /// A vehicle whose latest ping (device time) is older than this is
    /// `offline`, e.g. `"5m"` (enrichment's default `offline_after`).
    #[serde(default = "ApiConfig::default_offline_after", with = "humantime_serde")]
    pub offline_after: Duration,
    /// A vehicle (online, not charging) whose latest speed is at least this
    /// is `moving`, below it `parked`, km/h.
    #[serde(default = "ApiConfig::default_moving_speed_kmh")]
    pub moving_speed_kmh: f64,
    /// Longest `expires_in` a share link may be created with, e.g. `"7d"`.
    #[serde(
        default = "ApiConfig::default_share_max_lifetime",
        with = "humantime_serde"
    )]
    pub share_max_lifetime: Duration,
    /// `[api.feed]`: the live feed (WebSocket and SSE on `listen`). Present
    /// means on; only in the roles that see enriched records (`all`,
    /// `writer`).
    #[serde(default)]
    pub feed: Option<crate::feed::FeedConfig>,
}

/// One entry of `api.tokens` (`[[api.tokens]]`): exactly one of `scope`,
/// `vehicles` and `fences`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name of the token, in logs and as the creator of its share links.
    pub name: String,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
    /// `"fleet"`: every vehicle, event and fence.
    #[serde(default)]
    pub scope: Option<FleetScope>,
    /// Only these vehicles (others answer 404, lists leave them out).
    #[serde(default)]
    pub vehicles: Option<Vec<String>>,
    /// Only vehicles whose latest ping is inside one of these fences, and
    /// only the track points and events inside them.
    #[serde(default)]
    pub fences: Option<Vec<String>>,
}

/// The one value of `scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetScope {
    /// Everything.
    Fleet,
}

impl ApiConfig {
    /// A configuration reading `url` with every other key at its default
    /// (and no tokens, which [`ApiConfig::validate`] refuses).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            listen: Self::default_listen(),
            url: url.into(),
            tls: PostgresTls::default(),
            connect_timeout: None,
            statement_timeout: None,
            schema: Self::default_schema(),
            pool_size: Self::default_pool_size(),
            max_connections: Self::default_max_connections(),
            tokens: Vec::new(),
            default_limit: Self::default_default_limit(),
            max_limit: Self::default_max_limit(),
            max_track_points: Self::default_max_track_points(),
            max_track_rows: Self::default_max_track_rows(),
            offline_after: Self::default_offline_after(),
            moving_speed_kmh: Self::default_moving_speed_kmh(),
            share_max_lifetime: Self::default_share_max_lifetime(),
            feed: None,
        }
    }

    /// Default of [`ApiConfig::listen`]: `127.0.0.1:8082`.
    pub fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8082))
    }
    /// Default of [`ApiConfig::schema`]: `public`.
    pub fn default_schema() -> String {
        "public".to_owned()
    }
    /// Default of [`ApiConfig::pool_size`].
    pub const fn default_pool_size() -> usize {
        8
    }
    /// Default of [`ApiConfig::max_connections`].
    pub const fn default_max_connections() -> usize {
        1024
    }
    /// Default of [`ApiConfig::default_limit`].
    pub const fn default_default_limit() -> usize {
        100
    }
    /// Default of [`ApiConfig::max_limit`].
    pub const fn default_max_limit() -> usize {
        1000
    }
    /// Default of [`ApiConfig::max_track_points`].
    pub const fn default_max_track_points() -> usize {
        2000
    }
    /// Default of [`ApiConfig::max_track_rows`]: two days at 1 Hz.
    pub const fn default_max_track_rows() -> usize {
        172_800
    }
    /// Default of [`ApiConfig::offline_after`]: 5 minutes.
    pub const fn default_offline_after() -> Duration {
        Duration::from_secs(300)
    }
    /// Default of [`ApiConfig::moving_speed_kmh`].
    pub const fn default_moving_speed_kmh() -> f64 {
        5.0
    }
    /// Default of [`ApiConfig::share_max_lifetime`]: 7 days.
    pub const fn default_share_max_lifetime() -> Duration {
        Duration::from_secs(7 * 86_400)
    }

    /// The connection keys as fleetpipe-postgres' settings.
    pub fn connection(&self) -> PostgresConfig {
        PostgresConfig {
            url: self.url.clone(),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
        }
    }

    /// The connection settings ready to connect; reads the TLS files.
    ///
    /// # Errors
    ///
    /// [`QueryError::Postgres`], naming the `api.` key.
    pub fn postgres(&self) -> Result<Postgres, QueryError> {
        Ok(Postgres::from_config(
            SECTION,
            &self.connection(),
            APPLICATION_NAME,
        )?)
    }

    /// Checks every key, naming the first one at fault as `api.<key>`, and
    /// reads the TLS files as the start does.
    ///
    /// # Errors
    ///
    /// [`QueryError::Config`] or [`QueryError::Postgres`].
    pub fn validate(&self) -> Result<(), QueryError> {
        let invalid = |key: &str, reason: String| {
            Err(QueryError::Config {
                key: key.to_owned(),
                reason,
            })
        };
        fleetpipe_postgres::check_identifier(&self.schema).or_else(|reason| {
            invalid(
                "schema",
                format!("{:?} is not a valid schema name: {reason}", self.schema),
            )
        })?;
        if self.pool_size == 0 {
            return invalid("pool_size", "must be at least 1".to_owned());
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1".to_owned());
        }
        if self.max_limit == 0 || self.max_limit > LIMIT_CEILING {
            return invalid("max_limit", format!("must be 1 to {LIMIT_CEILING}"));
        }
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            return invalid(
                "default_limit",
                format!("must be 1 to api.max_limit ({})", self.max_limit),
            );
        }
        if self.max_track_points < 2 {
            return invalid(
                "max_track_points",
                "must be at least 2 (a line has two ends)".to_owned(),
            );
        }
        if self.max_track_rows < self.max_track_points {
            return invalid(
                "max_track_rows",
                format!(
                    "must be at least api.max_track_points ({})",
                    self.max_track_points
                ),
            );
        }
        if self.offline_after.is_zero() {
            return invalid("offline_after", "must be longer than 0s".to_owned());
        }
        if !self.moving_speed_kmh.is_finite() || self.moving_speed_kmh <= 0.0 {
            return invalid(
                "moving_speed_kmh",
                "must be a number above 0 (km/h)".to_owned(),
            );
        }
        if self.share_max_lifetime < Duration::from_secs(1) {
            return invalid("share_max_lifetime", "must be at least 1s".to_owned());
        }
        self.validate_tokens()?;
        if let Some(feed) = &self.feed {
            feed.validate()?;
        }
        self.postgres()?;
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), QueryError> {
        let invalid = |i: usize, key: &str, reason: String| {
            Err(QueryError::Config {
                key: format!("tokens[{i}].{key}"),
                reason,
            })
        };
        if self.tokens.is_empty() {
            return Err(QueryError::Config {
                key: "tokens".to_owned(),
                reason: "must list at least one token ([[api.tokens]] with name, sha256 and \
                         a scope): without one nothing can be read"
                    .to_owned(),
            });
        }
        let (mut names, mut hashes) = (HashSet::new(), HashSet::new());
        for (i, token) in self.tokens.iter().enumerate() {
            if token.name.trim().is_empty() {
                return invalid(i, "name", "must not be empty".to_owned());
            }
            if !names.insert(token.name.as_str()) {
                return invalid(i, "name", format!("{:?} is used twice", token.name));
            }
            let Some(hash) = crate::auth::parse_sha256(&token.sha256) else {
                return invalid(
                    i,
                    "sha256",
                    "must be 64 hex digits: the SHA-256 of the token (printf %s \"$TOKEN\" | \
                     sha256sum), never the token itself"
                        .to_owned(),
                );
            };
            if !hashes.insert(hash) {
                return invalid(
                    i,
                    "sha256",
                    "is the hash of another token too: each token must be distinct".to_owned(),
                );
            }
            let set = [
                token.scope.is_some(),
                token.vehicles.is_some(),
                token.fences.is_some(),
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                return invalid(
                    i,
                    "scope",
                    "needs exactly one of scope = \"fleet\", vehicles = [...] or fences = [...]"
                        .to_owned(),
                );
            }
            for (key, list) in [("vehicles", &token.vehicles), ("fences", &token.fences)] {
                if let Some(list) = list {
                    if list.is_empty() {
                        return invalid(i, key, "must not be empty".to_owned());
                    }
                    if list.iter().any(|id| id.is_empty()) {
                        return invalid(i, key, "must not hold an empty id".to_owned());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<ApiConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        parse(text)
            .expect("parses")
            .validate()
            .expect_err("refused")
            .to_string()
    }

    fn valid() -> String {
        format!(
            "url = \"postgresql://db/fleet\"\n[[tokens]]\nname = \"ops\"\nsha256 = \"{HASH}\"\nscope = \"fleet\"\n"
        )
    }

    #[test]
    fn defaults_parse_and_validate() {
        let c = parse(&valid()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen, ApiConfig::default_listen());
        assert_eq!(c.default_limit, 100);
        assert_eq!(c.offline_after, Duration::from_secs(300));
    }

    #[test]
    fn every_rule_names_its_key() {
        let base = valid();
        for (extra, expect) in [
            ("schema = \"1x\"\n", "api.schema "),
            ("pool_size = 0\n", "api.pool_size "),
            ("max_connections = 0\n", "api.max_connections "),
            ("max_limit = 0\n", "api.max_limit "),
            ("default_limit = 2000\n", "api.default_limit "),
            ("max_track_points = 1\n", "api.max_track_points "),
            ("max_track_rows = 10\n", "api.max_track_rows "),
            ("offline_after = \"0s\"\n", "api.offline_after "),
            ("moving_speed_kmh = -1.0\n", "api.moving_speed_kmh "),
            ("share_max_lifetime = \"0s\"\n", "api.share_max_lifetime "),
        ] {
            // Top-level keys must come before the [[tokens]] table.
            let text = format!("{extra}{base}");
            let e = err(&text);
            assert!(e.starts_with(expect), "{extra}: {e}");
        }
    }

    #[test]
    fn tokens_are_hashed_distinct_and_scoped_once() {
        let url = "url = \"postgresql://db/fleet\"\n";
        assert!(err(url).starts_with("api.tokens must list"));
        let token = |body: &str| format!("{url}[[tokens]]\nname = \"a\"\n{body}");
        let e = err(&token("sha256 = \"secret\"\nscope = \"fleet\"\n"));
        assert!(e.starts_with("api.tokens[0].sha256 must be 64 hex"), "{e}");
        let e = err(&token(&format!("sha256 = \"{HASH}\"\n")));
        assert!(
            e.starts_with("api.tokens[0].scope needs exactly one"),
            "{e}"
        );
        let e = err(&token(&format!(
            "sha256 = \"{HASH}\"\nscope = \"fleet\"\nvehicles = [\"v\"]\n"
        )));
        assert!(
            e.starts_with("api.tokens[0].scope needs exactly one"),
            "{e}"
        );
        let e = err(&token(&format!("sha256 = \"{HASH}\"\nvehicles = []\n")));
        assert!(
            e.starts_with("api.tokens[0].vehicles must not be empty"),
            "{e}"
        );
        let twice = format!(
            "{}[[tokens]]\nname = \"b\"\nsha256 = \"{}\"\nfences = [\"f\"]\n",
            token(&format!("sha256 = \"{HASH}\"\nscope = \"fleet\"\n")),
            HASH.to_uppercase()
        );
        let e = err(&twice);
        assert!(
            e.starts_with("api.tokens[1].sha256 is the hash of another"),
            "{e}"
        );
        assert!(parse(&token("sha256 = \"x\"\nscope = \"all\"\n")).is_err());
        assert!(parse(&token("sha256 = \"x\"\ntoken = \"clear\"\n")).is_err());
    }

    #[test]
    fn the_connection_keys_are_checked_as_the_sinks_are() {
        let e = err(&format!("connect_timeout = \"500ms\"\n{}", valid()));
        assert!(
            e.starts_with("api.connect_timeout must be whole seconds"),
            "{e}"
        );
        let e = err(&valid().replace(
            "postgresql://db/fleet",
            "postgresql://db/fleet?sslmode=require",
        ));
        assert!(e.starts_with("api.url sets sslmode"), "{e}");
    }
}
