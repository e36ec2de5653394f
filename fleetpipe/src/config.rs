//! fleetpipe's configuration: one TOML file, every key overridable by an
//! environment variable (`FLEETPIPE_` + the key path in upper case with `__`
//! between levels, e.g. `FLEETPIPE_INGEST__MQTT__LISTEN=0.0.0.0:1883`).
//!
//! Each component owns its config struct (next to its code); this module
//! only assembles them. Every key is documented in `config/fleetpipe.toml`.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use fleetpipe_enrich::{EnrichConfig, EnrichError};
use fleetpipe_geofence::GeofenceConfig;
use fleetpipe_ingest::IngestConfigError;
use fleetpipe_query::{ApiConfig, QueryError};
use fleetpipe_sink::SinkError;
use serde::Deserialize;

pub use fleetpipe_ingest::IngestConfig;
pub use fleetpipe_sink::SinksConfig as SinkConfig;

use crate::cluster::{ClusterConfig, ClusterConfigError, Role};
use crate::ops::{OpsConfig, OpsConfigError};
use fleetpipe_geofence::service::LoadError;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Gateways and input rules.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Enrichment stage.
    #[serde(default)]
    pub enrich: EnrichConfig,
    /// Outputs.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Geofences: the fence file and/or table, index cell size, reloads.
    #[serde(default)]
    pub geofence: GeofenceConfig,
    /// Queues between the stages, shutdown.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The operations listener: health, readiness, metrics, admin.
    #[serde(default)]
    pub ops: OpsConfig,
    /// `[api]`: the query API (its own listener, database and tokens). On
    /// when the table is present, in any role.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// `[cluster]`: the role of this process and the Kafka topics and
    /// groups between the roles.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `pipeline`: the bounded queues between stages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Capacity of the queue from the gateways to enrichment, in pings.
    pub ping_queue: usize,
    /// Capacity of the queue into the sinks, in records.
    pub sink_queue: usize,
    /// Most payload bytes whose records are in the pipeline at once (queued,
    /// being enriched or written, awaiting acknowledgement). When reached,
    /// gateways stop reading until records settle.
    pub max_inflight_bytes: usize,
    /// Longest a graceful shutdown may take before fleetpipe gives up and exits non-zero.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            ping_queue: 8192,
            sink_queue: 8192,
            max_inflight_bytes: 256 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl PipelineConfig {
    /// Queues that can hold something: a queue of 0 would block for ever.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig::ZeroQueue`].
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.ping_queue == 0 || self.sink_queue == 0 {
            return Err(InvalidConfig::ZeroQueue);
        }
        Ok(())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `log`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive; `RUST_LOG` wins when set.
    pub filter: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info,rumqttd=off".into(),
            format: LogFormat::Text,
        }
    }
}

/// A configuration that cannot be used. Every message is one line and
/// names the key (or the file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist or cannot be read.
    #[error("config file {path}: {source}")]
    File {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read, and its content is refused.
    #[error("config: {0}")]
    Invalid(#[from] InvalidConfig),
}

/// A configuration refused by a rule: what [`Config::check`] finds.
#[derive(Debug, thiserror::Error)]
pub enum InvalidConfig {
    /// A key is unknown, missing or of the wrong type (figment's message,
    /// on one line).
    #[error("{0}")]
    Parse(String),
    /// `pipeline.ping_queue` or `pipeline.sink_queue` is 0.
    #[error("pipeline.ping_queue and pipeline.sink_queue must be at least 1")]
    ZeroQueue,
    /// A rule of `[ingest]`.
    #[error(transparent)]
    Ingest(#[from] IngestConfigError),
    /// A rule of `[enrich]`.
    #[error(transparent)]
    Enrich(#[from] EnrichError),
    /// A rule of `[geofence]`, or a fence file that does not parse.
    #[error(transparent)]
    Geofence(#[from] LoadError),
    /// A rule of `[sink]`.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A rule of `[ops]`.
    #[error(transparent)]
    Ops(#[from] OpsConfigError),
    /// A rule of `[api]`.
    #[error(transparent)]
    Api(#[from] QueryError),
    /// A rule of `[cluster]`, or between the role and `[sink]`.
    #[error(transparent)]
    Cluster(#[from] ClusterConfigError),
}

impl Config {
    /// Loads `path`, then applies `FLEETPIPE_*` environment overrides, then checks.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_as(path, None)
    }

    /// [`Config::load`], with `cluster.role` set to `role` when given (it
    /// wins over the file and the environment: `fleetpipe run --role`).
    pub fn load_as(path: &Path, role: Option<Role>) -> Result<Self, ConfigError> {
        // FLEETPIPE_CRASH_AT arms a crash point for the kill tests
        // (fleetpipe_kafka::CRASH_AT); it is no configuration key.
        let env = Env::prefixed("FLEETPIPE_")
            .ignore(&["crash_at"])
            .split("__");
        Self::load_with_env(path, env, role)
    }

    fn load_with_env(path: &Path, env: Env, role: Option<Role>) -> Result<Self, ConfigError> {
        // Read it ourselves: figment would silently treat a missing file as empty.
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            path: path.display().to_string(),
            source,
        })?;
        let mut figment = Figment::new().merge(Toml::string(&text)).merge(env);
        if let Some(role) = role {
            figment = figment.merge(Serialized::default("cluster.role", role.as_str()));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| InvalidConfig::Parse(one_line(&e)))?;
        config.check()?;
        Ok(config)
    }

    /// Every rule serde cannot express, each kept next to its config type;
    /// the one validation: `fleetpipe config check` and the start of
    /// [`crate::Pipeline`] (so `fleetpipe run`) both run it before anything
    /// is bound. Files the configuration names (TLS, credentials, JWKS, the
    /// fence file, PostgreSQL TLS) are read as the start reads them.
    ///
    /// # Errors
    ///
    /// The first rule broken.
    pub fn check(&self) -> Result<(), InvalidConfig> {
        self.pipeline.validate()?;
        self.ingest.validate()?;
        self.ops.validate()?;
        if let Some(api) = &self.api {
            api.validate()?;
        }
        self.enrich.validate()?;
        // Parses the fence file (without indexing it).
        fleetpipe_geofence::service::check_config(&self.geofence)?;
        self.sink.validate(self.ingest.limits.max_past)?;
        self.cluster.validate(&self.sink)?;
        let feed = self.api.as_ref().is_some_and(|api| api.feed.is_some());
        let refuse = |reason: String| QueryError::Config {
            key: "feed".to_owned(),
            reason,
        };
        match self.cluster.role {
            Role::All | Role::Read if feed => {}
            Role::Read => return Err(ClusterConfigError::ReadWithoutFeed.into()),
            // A writer is one member of a consumer group: it reads only the
            // partitions the group gives it, so its feed would show a share
            // of the fleet, and another share after each rebalance.
            Role::Writer if feed => {
                return Err(refuse(
                    "is not served by cluster.role = \"writer\": a writer reads only the \
                     partitions its consumer group gives it, so its feed would show part of the \
                     fleet; serve the feed from read nodes (cluster.role = \"read\")"
                        .to_owned(),
                )
                .into());
            }
            role if feed => {
                return Err(refuse(format!(
                    "needs cluster.role = \"all\" or \"read\" (the roles that see every \
                     enriched record), not {:?}",
                    role.as_str()
                ))
                .into());
            }
            _ => {}
        }
        Ok(())
    }
}

/// figment's error as one line that names the key, without figment's
/// internal "default." profile prefix.
fn one_line(e: &figment::Error) -> String {
    let mut msg = e.to_string().replace("default.", "");
    if let Some(first) = msg.lines().next() {
        msg = first.to_owned();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetpipe_ingest::mqtt::{EmbeddedConfig, MqttConfig, MqttMode, server_keep_alive_secs};

    /// The embedded broker's settings of `c` (embedded mode).
    fn broker(c: &Config) -> &EmbeddedConfig {
        c.ingest.mqtt.embedded().expect("embedded mode")
    }
    use figment::Jail;

    const MINIMAL: &str = "[sink.file]\ndir = \"data\"\n";

    // figment's Jail API fixes the closure's (large) error type.
    #[allow(clippy::result_large_err)]
    /// Loads `toml` as a file inside a figment Jail (isolated cwd and
    /// environment), with `env` set, and returns the result as a string error.
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        load_beside(&[], toml, env)
    }

    /// [`load`] with more `(name, content)` files beside the config.
    #[allow(clippy::result_large_err)]
    fn load_beside(
        files: &[(&str, &str)],
        toml: &str,
        env: &[(&str, &str)],
    ) -> Result<Config, String> {
        let mut out = Err(String::new());
        Jail::expect_with(|jail| {
            for (name, content) in files {
                jail.create_file(name, content)?;
            }
            jail.create_file("fleetpipe.toml", toml)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = Config::load(Path::new("fleetpipe.toml")).map_err(|e| e.to_string());
            Ok(())
        });
        out
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.ingest.mqtt.mode(), MqttMode::Embedded);
        assert_eq!(broker(&c).listen.map(|a| a.port()), Some(1883));
        assert_eq!(c.ingest.http.listen.port(), 8080);
        assert_eq!(c.ingest.limits.max_past, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load(
            &format!("{MINIMAL}[ingest.mqtt]\nlisten = \"127.0.0.1:1000\"\n"),
            &[
                ("FLEETPIPE_INGEST__MQTT__LISTEN", "127.0.0.1:2000"),
                ("FLEETPIPE_INGEST__AUTH__MODE", "jwt"),
                ("FLEETPIPE_INGEST__AUTH__JWT_SECRET", "s3cret"),
                ("FLEETPIPE_INGEST__LIMITS__MAX_FUTURE", "1m"),
                ("FLEETPIPE_PIPELINE__PING_QUEUE", "7"),
            ],
        )
        .unwrap();
        assert_eq!(broker(&c).listen.map(|a| a.port()), Some(2000));
        assert_eq!(c.ingest.auth.mode, fleetpipe_ingest::auth::AuthMode::Jwt);
        assert_eq!(c.ingest.limits.max_future, Duration::from_secs(60));
        assert_eq!(c.pipeline.ping_queue, 7);
    }

    /// The paragraph of the shipped `config/fleetpipe.toml` that starts at
    /// the first line `starts` accepts, uncommented: its `[table]` headers
    /// and `key = value` lines (prose dropped), in order.
    fn shipped_commented(starts: impl Fn(&str) -> bool) -> Vec<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/fleetpipe.toml");
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .skip_while(|l| !starts(l))
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                (l.starts_with('[') && l.ends_with(']'))
                    || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
            })
            .map(str::to_owned)
            .collect()
    }

    /// [`shipped_commented`] as TOML text, one line each.
    fn lines(block: &[String]) -> String {
        block.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn the_commented_timescale_table_documents_its_defaults() {
        // Uncomment the [sink.timescale] block: its header and its `# key = value` lines.
        let block = lines(&shipped_commented(|l| l == "# [sink.timescale]"));
        assert!(block.starts_with("[sink.timescale]\nurl = "), "{block}");
        let c = load(&block, &[]).unwrap();
        let ts = c.sink.timescale.unwrap();
        assert_eq!(ts, fleetpipe_sink::TimescaleConfig::new(ts.url.clone()));
    }

    /// The commented `[api]` block, uncommented, is a valid query API
    /// configuration with the documented defaults and its one token.
    #[test]
    fn the_commented_api_table_documents_its_defaults() {
        let block = lines(&shipped_commented(|l| l == "# [api]"));
        assert!(block.starts_with("[api]\nlisten = "), "{block}");
        let c = load(&format!("{MINIMAL}{block}"), &[]).unwrap();
        let api = c.api.unwrap();
        let expected = fleetpipe_query::ApiConfig {
            tokens: api.tokens.clone(),
            ..fleetpipe_query::ApiConfig::new(api.url.clone())
        };
        assert_eq!(api, expected);
        assert_eq!(api.tokens.len(), 1);
        assert_eq!(api.tokens[0].name, "dispatch");
    }

    /// The commented `[api.feed]` block, uncommented after `[api]`, lists
    /// every key of the feed with its default (so a key added without its
    /// documentation, or a changed default, fails here), and is valid in
    /// the role it is documented for.
    #[test]
    fn the_commented_feed_table_documents_every_key_and_its_default() {
        let api = lines(&shipped_commented(|l| l == "# [api]"));
        let block = shipped_commented(|l| l == "# [api.feed]");
        assert_eq!(block.first().map(String::as_str), Some("[api.feed]"));
        let keys: Vec<&str> = block[1..]
            .iter()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .collect();
        // Every field of FeedConfig, in the order of the struct.
        assert_eq!(
            keys,
            [
                "max_clients",
                "client_max_events",
                "client_max_bytes",
                "max_total_bytes",
                "resume_max_messages",
                "resume_max_age",
                "max_vehicles",
                "max_subscribe_bytes",
                "max_filter_items",
                "max_subscribes_per_minute",
                "share_check_interval",
                "keepalive",
                "write_timeout",
            ]
        );
        let c = load(&format!("{MINIMAL}{api}{}", lines(&block)), &[]).unwrap();
        assert_eq!(
            c.api.unwrap().feed,
            Some(fleetpipe_query::feed::FeedConfig::default())
        );
    }

    /// The commented connection timeouts of `[sink.timescale]` (a
    /// paragraph of their own, as they have no defaults) are keys of that
    /// table, valid as documented, and `config check` names them when
    /// they are out of range.
    #[test]
    fn the_commented_timescale_timeouts_are_keys_of_the_table() {
        let keys = lines(&shipped_commented(|l| {
            l.starts_with("# Timeouts of every connection to sink.timescale.url")
        }));
        assert_eq!(
            keys,
            "connect_timeout = \"5s\"\nstatement_timeout = \"30s\"\n"
        );
        let table = format!("[sink.timescale]\nurl = \"postgresql://db/fleet\"\n{keys}");
        let ts = load(&table, &[]).unwrap().sink.timescale.unwrap();
        assert_eq!(ts.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(ts.statement_timeout, Some(Duration::from_secs(30)));

        let zero = table.replace("\"5s\"", "\"0s\"");
        let e = load(&zero, &[]).unwrap_err();
        assert!(
            e.contains("sink.timescale.connect_timeout must be whole seconds"),
            "{e}"
        );
    }

    /// The commented `[sink.timescale.tls]` and `[geofence.postgres.tls]`
    /// blocks list every key, with the default mode; filled in for
    /// `verify-full`, they make a valid configuration.
    #[test]
    fn the_commented_postgres_tls_tables_document_every_key() {
        for header in ["# [sink.timescale.tls]", "# [geofence.postgres.tls]"] {
            let block = shipped_commented(|l| l == header);
            assert_eq!(Some(&header[2..]), block.first().map(String::as_str));
            let keys = lines(&block[1..]);
            let tls: fleetpipe_postgres::PostgresTls = toml::from_str(&keys).unwrap();
            assert_eq!(
                tls.mode,
                fleetpipe_postgres::PostgresTls::default().mode,
                "{header}"
            );
            assert!(
                tls.ca_file.is_some()
                    && tls.client_cert_file.is_some()
                    && tls.client_key_file.is_some(),
                "{header}: {keys}"
            );
            let verify_full = keys.replace("mode = \"disable\"", "mode = \"verify-full\"");
            let tls: fleetpipe_postgres::PostgresTls = toml::from_str(&verify_full).unwrap();
            tls.validate("x").unwrap();
        }
    }

    /// The commented external-mode keys of `[ingest.mqtt]`, uncommented
    /// with `mode = "external"`, make a valid external consumer with the
    /// documented defaults (the credentials, which have none, aside).
    #[test]
    fn the_commented_external_mqtt_keys_document_their_defaults() {
        let keys: Vec<String> = shipped_commented(|l| l.starts_with("# External: the broker"))
            .into_iter()
            .filter(|l| !l.starts_with("username") && !l.starts_with("password"))
            .collect();
        let keys = lines(&keys);
        assert_eq!(keys.lines().count(), 5, "{keys}");
        let table = format!("{MINIMAL}[ingest.mqtt]\nmode = \"external\"\n{keys}");
        let c = load(&table, &[]).unwrap();
        let external = c.ingest.mqtt.external().unwrap();
        assert_eq!(*external, fleetpipe_ingest::mqtt::ExternalConfig::default());
        // Under the shipped embedded mode they are refused, naming their mode.
        let e = load(&format!("{MINIMAL}[ingest.mqtt]\n{keys}"), &[]).unwrap_err();
        assert!(
            e.contains("ingest.mqtt.broker_url is a key of mode \"external\""),
            "{e}"
        );
    }

    /// The shipped role configurations pass the check, in their role.
    #[test]
    fn the_shipped_role_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/roles");
        for (file, role) in [
            ("gateway.toml", Role::Gateway),
            ("enrich.toml", Role::Enrich),
            ("writer.toml", Role::Writer),
            ("read.toml", Role::Read),
        ] {
            let c = Config::load(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(c.cluster.role, role, "{file}");
        }
    }

    #[test]
    fn mqtt5_listener_can_be_turned_off() {
        let off = load(
            &format!("{MINIMAL}[ingest.mqtt]\nlisten_v5 = \"off\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(broker(&off).listen_v5, None);
        let bad = load(
            &format!("{MINIMAL}[ingest.mqtt]\nlisten_v5 = \"nope\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(bad.contains("ingest.mqtt.listen_v5"), "{bad}");
    }

    #[test]
    fn errors_are_one_line_and_name_the_key() {
        let unknown = load(&format!("{MINIMAL}[ingest.mqtt]\nlisten_port = 1\n"), &[]).unwrap_err();
        assert!(
            unknown.contains("listen_port") && unknown.contains("ingest.mqtt"),
            "{unknown}"
        );
        let bad_type = load(
            &format!("{MINIMAL}[ingest.http]\nlisten = \"nowhere\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(bad_type.contains("ingest.http.listen"), "{bad_type}");
        let bad_mode =
            load(&format!("{MINIMAL}[ingest.auth]\nmode = \"maybe\"\n"), &[]).unwrap_err();
        assert!(bad_mode.contains("ingest.auth.mode"), "{bad_mode}");
        let no_sink = load("", &[]).unwrap_err();
        assert!(no_sink.contains("no sink"), "{no_sink}");
        for e in [unknown, bad_type, bad_mode, no_sink] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_log_segment_rumqttd_would_refuse_is_a_config_error() {
        for (key, value) in [
            ("segment_bytes", "100"),
            ("segment_count", "0"),
            ("ack_segment_bytes", "1023"),
            ("ack_segment_count", "0"),
        ] {
            let e = load(&format!("{MINIMAL}[ingest.mqtt]\n{key} = {value}\n"), &[]).unwrap_err();
            assert!(
                e.contains(&format!("ingest.mqtt.{key}")),
                "{key} = {value}: {e}"
            );
        }
        assert!(
            load(
                &format!("{MINIMAL}[ingest.mqtt]\nsegment_bytes = 1024\n"),
                &[]
            )
            .is_ok()
        );
        // Only the embedded broker has this log: in external mode the key
        // itself is refused, whatever its value.
        let external = format!("{MINIMAL}[ingest.mqtt]\nmode = \"external\"\nsegment_bytes = 1\n");
        let e = load(&external, &[]).unwrap_err();
        assert!(
            e.contains("ingest.mqtt.segment_bytes is a key of mode \"embedded\""),
            "{e}"
        );
    }

    #[test]
    fn server_keep_alive_is_whole_seconds_that_mqtt_can_carry() {
        for bad in ["0s", "1500ms", "65536s"] {
            let e = load(
                &format!("{MINIMAL}[ingest.mqtt]\nserver_keep_alive = \"{bad}\"\n"),
                &[],
            )
            .unwrap_err();
            assert!(e.contains("ingest.mqtt.server_keep_alive"), "{bad}: {e}");
        }
        for good in ["1s", "10m", "65535s"] {
            let c = load(
                &format!("{MINIMAL}[ingest.mqtt]\nserver_keep_alive = \"{good}\"\n"),
                &[],
            )
            .unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(server_keep_alive_secs(broker(&c).server_keep_alive).is_some());
        }
    }

    /// A JWKS with one P-256 public key made now.
    fn jwks_text() -> String {
        use p256::pkcs8::EncodePrivateKey as _;
        let private = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let signing =
            jsonwebtoken::EncodingKey::from_ec_der(private.to_pkcs8_der().unwrap().as_bytes());
        let jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        serde_json::json!({ "keys": [jwk] }).to_string()
    }

    /// As [`load`], with `jwks.json` (one usable key) next to the file.
    fn load_with_jwks(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        load_beside(&[("jwks.json", &jwks_text())], toml, env)
    }

    #[test]
    fn jwt_settings_that_do_not_fit_are_refused_naming_the_key() {
        let jwt = format!("{MINIMAL}[ingest.auth]\nmode = \"jwt\"\n");
        let secret = format!("{jwt}jwt_secret = \"s\"\n");
        let jwks = format!("{jwt}jwks_file = \"jwks.json\"\n");
        let cases = [
            // Neither a secret nor a key set.
            (jwt.clone(), "ingest.auth.jwks_file"),
            (jwt.clone(), "ingest.auth.jwt_secret"),
            (
                format!("{jwks}jwt_algorithms = [\"RS256\", \"RS257\"]\n"),
                "ingest.auth.jwt_algorithms: unknown algorithm \"RS257\"",
            ),
            (
                format!("{jwks}jwt_algorithms = [\"HS256\"]\n"),
                "ingest.auth.jwt_algorithms: HS256 needs ingest.auth.jwt_secret",
            ),
            (
                format!("{secret}jwt_algorithms = [\"HS256\", \"ES256\"]\n"),
                "ingest.auth.jwt_algorithms: ES256 needs ingest.auth.jwks_file",
            ),
            (
                format!("{secret}jwt_algorithms = []\n"),
                "ingest.auth.jwt_algorithms: must list",
            ),
            (
                format!("{jwt}jwks_file = \"missing.json\"\n"),
                "ingest.auth.jwks_file missing.json: cannot read",
            ),
            (
                format!("{jwks}jwks_reload_interval = \"0s\"\n"),
                "ingest.auth.jwks_reload_interval",
            ),
            (
                format!("{secret}jwt_leeway_s = 100000\n"),
                "ingest.auth.jwt_leeway_s",
            ),
        ];
        for (toml, needle) in cases {
            let e = load_with_jwks(&toml, &[]).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // What fits loads, also from the environment.
        let c = load_with_jwks(&jwks, &[]).unwrap();
        assert_eq!(c.ingest.auth.jwks_file, Some("jwks.json".into()));
        let c = load_with_jwks(
            &jwks,
            &[
                ("FLEETPIPE_INGEST__AUTH__JWT_ALGORITHMS", "[\"ES256\"]"),
                ("FLEETPIPE_INGEST__AUTH__JWKS_RELOAD_INTERVAL", "1m"),
            ],
        )
        .unwrap();
        assert_eq!(c.ingest.auth.jwt_algorithms, Some(vec!["ES256".to_owned()]));
        assert_eq!(c.ingest.auth.jwks_reload_interval, Duration::from_secs(60));
        let e = load_with_jwks(
            &jwks,
            &[("FLEETPIPE_INGEST__AUTH__JWT_ALGORITHMS", "[\"ES512\"]")],
        )
        .unwrap_err();
        assert!(e.contains("ingest.auth.jwt_algorithms"), "{e}");
    }

    #[test]
    fn the_commented_mqtt_tls_table_documents_its_defaults_and_is_checked() {
        use fleetpipe_ingest::mqtt::MqttTlsConfig;
        let block = shipped_commented(|l| l == "# [ingest.mqtt.tls]");
        assert_eq!(
            block.first().map(String::as_str),
            Some("[ingest.mqtt.tls]"),
            "{block:?}"
        );
        let body = block[1..].join("\n");
        let tls: MqttTlsConfig = toml::from_str(&body).unwrap();
        assert_eq!(
            tls,
            MqttTlsConfig::new(
                tls.cert_file.clone(),
                tls.key_file.clone(),
                tls.client_ca_file.clone()
            )
        );
        assert!(tls.client_ca_file.is_some());
        // As a config, its files are read: the example paths do not exist here.
        let e = load(&format!("{MINIMAL}{}\n", block.join("\n")), &[]).unwrap_err();
        assert!(e.contains("ingest.mqtt.tls.cert_file"), "{e}");
        // Unknown keys are refused; listeners can be turned off.
        let e = toml::from_str::<MqttTlsConfig>(&format!("{body}\ncertfile = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("certfile"), "{e}");
        let off: MqttTlsConfig =
            toml::from_str("cert_file = \"c\"\nkey_file = \"k\"\nlisten = \"off\"\n").unwrap();
        assert_eq!((off.listen, off.client_ca_file), (None, None));
        assert!(off.listen_v5.is_some());
    }

    #[test]
    fn the_commented_http_tls_table_documents_its_defaults_and_is_checked() {
        use fleetpipe_ingest::tls::TlsConfig;
        let block = shipped_commented(|l| l == "# [ingest.http.tls]");
        assert_eq!(
            block.first().map(String::as_str),
            Some("[ingest.http.tls]"),
            "{block:?}"
        );
        let body = block[1..].join("\n");
        let tls: TlsConfig = toml::from_str(&body).unwrap();
        assert_eq!(
            tls,
            TlsConfig::new(
                tls.cert_file.clone(),
                tls.key_file.clone(),
                tls.client_ca_file.clone()
            )
        );
        assert!(tls.client_ca_file.is_some());
        // As a config, its files are read: the example paths do not exist here.
        let e = load(&format!("{MINIMAL}{}\n", block.join("\n")), &[]).unwrap_err();
        assert!(e.contains("ingest.http.tls.cert_file"), "{e}");
        // Unknown keys are refused.
        let e = toml::from_str::<TlsConfig>(&format!("{body}\nlisten = \"0.0.0.0:443\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        // Files that load make a valid config; the environment sets keys too.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let key = key.serialize_pem();
        let files = [("server.pem", cert.as_str()), ("server.key", key.as_str())];
        let toml = format!(
            "{MINIMAL}[ingest.http.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n"
        );
        let c = load_beside(
            &files,
            &toml,
            &[("FLEETPIPE_INGEST__HTTP__TLS__RELOAD_INTERVAL", "1m")],
        )
        .unwrap();
        let tls = c.ingest.http.tls.unwrap();
        assert_eq!(
            (tls.client_ca_file, tls.reload_interval),
            (None, Duration::from_secs(60))
        );
        let e = load_beside(
            &files,
            &toml,
            &[("FLEETPIPE_INGEST__HTTP__TLS__RELOAD_INTERVAL", "0s")],
        )
        .unwrap_err();
        assert!(e.contains("ingest.http.tls.reload_interval"), "{e}");
    }

    #[test]
    fn an_embedded_broker_needs_a_listener() {
        let e = load(
            &format!("{MINIMAL}[ingest.mqtt]\nlisten = \"off\"\nlisten_v5 = \"off\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("no listener"), "{e}");
        let off = load(&format!("{MINIMAL}[ingest.mqtt]\nmode = \"off\"\n"), &[]).unwrap();
        assert_eq!(off.ingest.mqtt, MqttConfig::Off);
        // "off" has no keys of its own.
        let e = load(
            &format!("{MINIMAL}[ingest.mqtt]\nmode = \"off\"\nlisten = \"off\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("not of mode \"off\""), "{e}");
    }

    #[test]
    fn http_edge_and_ops_keys_have_defaults_and_are_checked() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.ops.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(c.ops.admin_token, None);
        assert_eq!(c.ops.reload_min_interval, Duration::from_secs(10));
        assert_eq!(c.ingest.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.ingest.http.max_connections, 20_000);
        let c = load(
            &format!("{MINIMAL}[ingest.http]\nidle_timeout = \"250ms\"\n[ops]\nreload_min_interval = \"0s\"\n"),
            &[("FLEETPIPE_OPS__ADMIN_TOKEN", "t0ken")],
        )
        .unwrap();
        assert_eq!(c.ingest.http.idle_timeout, Duration::from_millis(250));
        assert_eq!(c.ops.reload_min_interval, Duration::ZERO);
        assert_eq!(c.ops.admin_token.as_deref(), Some("t0ken"));
        for (body, needle) in [
            (
                "[ingest.http]\nbody_timeout = \"0s\"\n",
                "ingest.http.idle_timeout",
            ),
            (
                "[ingest.http]\nmax_connections = 0\n",
                "ingest.http.max_connections",
            ),
            ("[ops]\nmax_connections = 0\n", "ops.max_connections"),
            ("[ops]\nadmin_token = \" \"\n", "ops.admin_token"),
            ("[ops]\nlisten = \"loopback\"\n", "ops.listen"),
            ("[ops]\nport = 1\n", "ops"),
        ] {
            let e = load(&format!("{MINIMAL}{body}"), &[]).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/fleetpipe.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file /nonexistent/fleetpipe.toml:"),
            "{e}"
        );
    }

    #[test]
    fn shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/fleetpipe.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // The shipped Kafka table spells out every default.
        let kafka = c.sink.kafka.clone().unwrap();
        assert_eq!(kafka, fleetpipe_sink::KafkaConfig::new("embedded"));
        assert_eq!(c, {
            // The shipped file documents the defaults: it must not drift from them.
            let mut defaults = load(MINIMAL, &[]).unwrap();
            // Only the quick-start listeners differ from the built-in defaults.
            defaults.sink.file = c.sink.file.clone();
            defaults.sink.kafka = c.sink.kafka.clone();
            if let Some(d) = defaults.ingest.mqtt.embedded_mut() {
                d.listen = broker(&c).listen;
                d.listen_v5 = broker(&c).listen_v5;
            }
            defaults.ingest.http.listen = c.ingest.http.listen;
            defaults
        });
    }
}
