//! `ingest.mqtt`: the MQTT gateway's settings. `mode` selects a variant of
//! [`MqttConfig`] that holds only that mode's settings: [`EmbeddedConfig`]
//! for the broker inside fleetpipe, [`ExternalConfig`] for a subscription
//! to another broker, nothing for `off`.
//!
//! `mode` is read first and picks the variant; the rest of the table is then
//! read into that variant with `deny_unknown_fields`, so a key of another
//! mode is refused like any unknown key, with a message that says which mode
//! it belongs to (the shipped `config/fleetpipe.toml` keeps the external
//! mode's keys commented out). Each error names its key.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::MqttTlsConfig;
use super::external::broker_address;
use super::server_keep_alive_secs;
use crate::source::IngestConfigError;
use crate::tls::{ServerTls, TlsGateway};

/// rumqttd's smallest log segment, bytes: it panics on a smaller one.
pub const MIN_SEGMENT_BYTES: usize = 1024;

/// Where fleetpipe gets MQTT traffic from: the value of `ingest.mqtt.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    /// Run the rumqttd broker inside fleetpipe; vehicles connect to it.
    #[default]
    Embedded,
    /// Subscribe to an existing broker (`broker_url`) with a shared subscription.
    External,
    /// No MQTT gateway.
    Off,
}

/// `ingest.mqtt`: the MQTT gateway, the variant `mode` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttConfig {
    /// `mode = "embedded"` (the default).
    Embedded(EmbeddedConfig),
    /// `mode = "external"`.
    External(ExternalConfig),
    /// `mode = "off"`: no MQTT gateway.
    Off,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig::Embedded(EmbeddedConfig::default())
    }
}

impl MqttConfig {
    /// The mode (`ingest.mqtt.mode`).
    pub fn mode(&self) -> MqttMode {
        match self {
            MqttConfig::Embedded(_) => MqttMode::Embedded,
            MqttConfig::External(_) => MqttMode::External,
            MqttConfig::Off => MqttMode::Off,
        }
    }

    /// The embedded broker's settings, in embedded mode.
    pub fn embedded(&self) -> Option<&EmbeddedConfig> {
        match self {
            MqttConfig::Embedded(c) => Some(c),
            _ => None,
        }
    }

    /// The embedded broker's settings, in embedded mode, to change them.
    pub fn embedded_mut(&mut self) -> Option<&mut EmbeddedConfig> {
        match self {
            MqttConfig::Embedded(c) => Some(c),
            _ => None,
        }
    }

    /// The external consumer's settings, in external mode.
    pub fn external(&self) -> Option<&ExternalConfig> {
        match self {
            MqttConfig::External(c) => Some(c),
            _ => None,
        }
    }

    /// The external consumer's settings, in external mode, to change them.
    pub fn external_mut(&mut self) -> Option<&mut ExternalConfig> {
        match self {
            MqttConfig::External(c) => Some(c),
            _ => None,
        }
    }
}

/// `ingest.mqtt` with `mode = "embedded"`: the rumqttd broker inside fleetpipe.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// First topic level of every telemetry topic.
    pub topic_prefix: String,
    /// MQTT 3.1.1 listener; `"off"` disables it (for example when devices
    /// must use the TLS listeners only).
    #[serde(deserialize_with = "super::address_or_off")]
    pub listen: Option<SocketAddr>,
    /// MQTT 5 listener (rumqttd serves each protocol version on its own
    /// port); `"off"` disables it.
    #[serde(deserialize_with = "super::address_or_off")]
    pub listen_v5: Option<SocketAddr>,
    /// Publish `{"ack": N}` on `{prefix}/{vehicle_id}/ack` once every ping
    /// of the vehicle with `seq <= N` is durable (rumqttd's own PUBACK only
    /// means "received"). Devices subscribe to their own ack topic.
    pub ack_topic: bool,
    /// TLS listeners (`[ingest.mqtt.tls]`), with device authentication by
    /// client certificate when `client_ca_file` is set. Unset: no TLS listener.
    pub tls: Option<MqttTlsConfig>,
    /// Most simultaneous device connections, on all listeners together; a
    /// connection over the limit is closed at once.
    pub max_connections: usize,
    /// Time a new connection has for its TLS handshake (TLS listeners), and
    /// then again to send CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The keep alive a device gets when its CONNECT turns MQTT keep alive
    /// off (keep alive 0). Its connection is then closed after 1.5 times
    /// this without a packet from it, like any device's after 1.5 times its
    /// own keep alive, so a dead connection does not hold its place for
    /// ever; an MQTT 5 device is told in the CONNACK (Server Keep Alive),
    /// which it must use. 1 s to 65535 s, whole seconds.
    #[serde(with = "humantime_serde")]
    pub server_keep_alive: Duration,
    /// Unacknowledged QoS 1 publishes per connection.
    pub max_inflight: usize,
    /// Size of one segment of the broker's in-memory log per subscription.
    /// The log holds `segment_bytes * segment_count` bytes; if fleetpipe
    /// falls further behind, rumqttd drops the oldest segment. At least 1024
    /// (rumqttd's smallest segment).
    pub segment_bytes: usize,
    /// Segments kept per subscription (see `segment_bytes`); at least 1.
    pub segment_count: usize,
    /// Size of one segment of the log behind each vehicle's ack
    /// subscription (`{prefix}/{vehicle_id}/ack`), at least 1024; unset, ack
    /// subscriptions get `segment_bytes` like every other. rumqttd keeps
    /// what it routed to a subscription until its segment is evicted, and
    /// counts an ack as ~35 bytes, so with `segment_bytes` a vehicle's acks
    /// are in practice never evicted: memory grows ~350 bytes per ack
    /// delivered. Set it (32768 fills the 1,024 entries, ~266 KB, rumqttd
    /// preallocates per segment) when devices subscribe to their own ack
    /// topic; leave it unset when something subscribes to `{prefix}/+/ack`,
    /// which would get the same small log for every vehicle's acks and miss
    /// some. A subscriber that falls behind the log skips to the oldest ack
    /// kept; a newer ack covers the older ones.
    pub ack_segment_bytes: Option<usize>,
    /// Segments kept per ack subscription when `ack_segment_bytes` is set.
    pub ack_segment_count: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            listen_v5: Some(SocketAddr::from(([0, 0, 0, 0], 1884))),
            ack_topic: true,
            tls: None,
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
            server_keep_alive: Duration::from_secs(600),
            max_inflight: 100,
            segment_bytes: 32 * 1024 * 1024,
            segment_count: 8,
            ack_segment_bytes: None,
            ack_segment_count: 1,
        }
    }
}

impl EmbeddedConfig {
    /// Every key of `ingest.mqtt` in this mode besides `mode` (to tell a key
    /// of another mode from an unknown one).
    pub const KEYS: &'static [&'static str] = &[
        "topic_prefix",
        "listen",
        "listen_v5",
        "ack_topic",
        "tls",
        "max_connections",
        "connect_timeout",
        "server_keep_alive",
        "max_inflight",
        "segment_bytes",
        "segment_count",
        "ack_segment_bytes",
        "ack_segment_count",
    ];

    /// Logs rumqttd accepts, a keep alive MQTT can carry, at least one
    /// listener, and TLS files that load.
    ///
    /// # Errors
    ///
    /// The first rule broken; the message names the key.
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        validate_prefix(&self.topic_prefix)?;
        // rumqttd panics on a smaller log; say which key instead.
        let logs = [
            ("segment", Some(self.segment_bytes), self.segment_count),
            (
                "ack_segment",
                self.ack_segment_bytes,
                self.ack_segment_count,
            ),
        ];
        for (key, bytes, count) in logs {
            if bytes.is_some_and(|b| b < MIN_SEGMENT_BYTES) || count == 0 {
                return Err(IngestConfigError::Segment {
                    key,
                    min: MIN_SEGMENT_BYTES,
                });
            }
        }
        if server_keep_alive_secs(self.server_keep_alive).is_none() {
            return Err(IngestConfigError::ServerKeepAlive);
        }
        let tls_listeners = self
            .tls
            .as_ref()
            .is_some_and(|t| t.listen.is_some() || t.listen_v5.is_some());
        if self.listen.is_none() && self.listen_v5.is_none() && !tls_listeners {
            return Err(IngestConfigError::NoMqttListener);
        }
        if let Some(tls) = &self.tls {
            // Reads the certificate, key and client CA files, so that
            // `config check` catches what would otherwise fail at start.
            ServerTls::load(TlsGateway::Mqtt, &tls.files())?;
        }
        Ok(())
    }
}

/// `ingest.mqtt` with `mode = "external"`: a shared subscription on an
/// existing broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalConfig {
    /// First topic level of every telemetry topic.
    pub topic_prefix: String,
    /// Broker address, `mqtt://host:port`.
    pub broker_url: String,
    /// Client id; keep it stable per instance, it names the persistent session.
    pub client_id: String,
    /// Shared subscription group; instances with the same group split the load.
    pub share_group: String,
    /// Username for the broker, if it wants one.
    pub username: Option<String>,
    /// Password for the broker.
    pub password: Option<String>,
    /// MQTT keep-alive interval.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// QoS 1 messages the broker may have in flight to fleetpipe
    /// unacknowledged (the broker's own limit applies too; Mosquitto's
    /// `max_inflight_messages` defaults to 20).
    pub max_unacked: usize,
}

impl Default for ExternalConfig {
    fn default() -> Self {
        Self {
            topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
            broker_url: "mqtt://127.0.0.1:1883".into(),
            client_id: "fleetpipe-1".into(),
            share_group: "fleetpipe".into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            max_unacked: 1024,
        }
    }
}

impl ExternalConfig {
    /// Every key of `ingest.mqtt` in this mode besides `mode`.
    pub const KEYS: &'static [&'static str] = &[
        "topic_prefix",
        "broker_url",
        "client_id",
        "share_group",
        "username",
        "password",
        "keep_alive",
        "max_unacked",
    ];

    /// A group that keeps the shared subscription's shape, and a broker URL
    /// the consumer can connect to.
    ///
    /// # Errors
    ///
    /// The first rule broken; the message names the key.
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        validate_prefix(&self.topic_prefix)?;
        if self.share_group.contains(['/', '+', '#']) {
            return Err(IngestConfigError::ShareGroup);
        }
        broker_address(&self.broker_url)?;
        Ok(())
    }
}

/// The rule of every mode: a prefix that can start a topic filter.
fn validate_prefix(prefix: &str) -> Result<(), IngestConfigError> {
    if prefix.is_empty()
        || prefix.contains(['+', '#'])
        || prefix.starts_with('/')
        || prefix.ends_with('/')
    {
        return Err(IngestConfigError::TopicPrefix);
    }
    Ok(())
}

/// First topic level of every telemetry topic, unless `topic_prefix` says otherwise.
const DEFAULT_TOPIC_PREFIX: &str = "fleet";

/// `mode` first (default `embedded`), then the rest of the table as that
/// mode's variant, each with `deny_unknown_fields`.
impl<'de> Deserialize<'de> for MqttConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let mode = match table.remove("mode") {
            None => MqttMode::default(),
            Some(mode) => MqttMode::deserialize(mode)
                .map_err(|e| D::Error::custom(format!("ingest.mqtt.mode: {e}")))?,
        };
        refuse_other_modes_keys(mode, &table).map_err(D::Error::custom)?;
        let rest = toml::Value::Table(table);
        match mode {
            MqttMode::Embedded => variant(rest).map(MqttConfig::Embedded),
            MqttMode::External => variant(rest).map(MqttConfig::External),
            MqttMode::Off => Ok(MqttConfig::Off),
        }
        .map_err(D::Error::custom)
    }
}

/// The first key of `table` that belongs to a mode other than `mode`, as
/// an error that says so (a plain "unknown field" would suggest a typo).
fn refuse_other_modes_keys(mode: MqttMode, table: &toml::Table) -> Result<(), String> {
    let own: &[&str] = match mode {
        MqttMode::Embedded => EmbeddedConfig::KEYS,
        MqttMode::External => ExternalConfig::KEYS,
        MqttMode::Off => &[],
    };
    let others = [
        ("embedded", EmbeddedConfig::KEYS),
        ("external", ExternalConfig::KEYS),
    ];
    for key in table.keys().filter(|k| !own.contains(&k.as_str())) {
        let owners: Vec<String> = others
            .iter()
            .filter(|(_, keys)| keys.contains(&key.as_str()))
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        if !owners.is_empty() {
            return Err(format!(
                "ingest.mqtt.{key} is a key of mode {}, not of mode {:?}: remove it or comment it out",
                owners.join(" and "),
                mode_name(mode),
            ));
        }
    }
    Ok(())
}

fn mode_name(mode: MqttMode) -> &'static str {
    match mode {
        MqttMode::Embedded => "embedded",
        MqttMode::External => "external",
        MqttMode::Off => "off",
    }
}

/// `rest` as a mode's settings; an error names the key it is about.
fn variant<T: serde::de::DeserializeOwned>(rest: toml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(rest).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("ingest.mqtt: {}", e.inner())
        } else {
            format!("ingest.mqtt.{path}: {}", e.inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<MqttConfig, String> {
        toml::from_str(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn mode_selects_a_variant_with_only_its_own_settings() {
        assert_eq!(parse("").unwrap(), MqttConfig::default());
        assert_eq!(parse("").unwrap().mode(), MqttMode::Embedded);
        let embedded = parse("topic_prefix = \"depot\"\nlisten = \"off\"\n").unwrap();
        let broker = embedded.embedded().unwrap();
        assert_eq!(
            (broker.topic_prefix.as_str(), broker.listen),
            ("depot", None)
        );
        let external =
            parse("mode = \"external\"\ntopic_prefix = \"depot\"\nbroker_url = \"mqtt://b:1\"\n")
                .unwrap();
        let consumer = external.external().unwrap();
        assert_eq!(
            (consumer.topic_prefix.as_str(), consumer.broker_url.as_str()),
            ("depot", "mqtt://b:1")
        );
        assert!(external.embedded().is_none());
        assert_eq!(parse("mode = \"off\"\n").unwrap(), MqttConfig::Off);
    }

    #[test]
    fn unknown_keys_and_other_modes_keys_are_refused_naming_the_key() {
        let e = parse("listen_port = 1\n").unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
        let e = parse("mode = \"sideways\"\n").unwrap_err();
        assert!(e.contains("sideways"), "{e}");
        // The external keys of an older shipped file, under an embedded broker.
        let e = parse("broker_url = \"mqtt://elsewhere:1883\"\n").unwrap_err();
        assert!(
            e.contains(
                "ingest.mqtt.broker_url is a key of mode \"external\", not of mode \"embedded\""
            ),
            "{e}"
        );
        let e = parse("mode = \"external\"\nlisten = \"off\"\n").unwrap_err();
        assert!(
            e.contains(
                "ingest.mqtt.listen is a key of mode \"embedded\", not of mode \"external\""
            ),
            "{e}"
        );
        let e = parse("mode = \"off\"\ntopic_prefix = \"fleet\"\n").unwrap_err();
        assert!(
            e.contains("ingest.mqtt.topic_prefix is a key of mode \"embedded\" and \"external\", not of mode \"off\""),
            "{e}"
        );
        // A bad value names its key, nested ones too.
        let e = parse("listen = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("ingest.mqtt.listen: "), "{e}");
        let e = parse("[tls]\ncert_file = 1\n").unwrap_err();
        assert!(e.contains("ingest.mqtt.tls.cert_file: "), "{e}");
    }

    /// `KEYS` (used only to name a key's mode) lists exactly the fields
    /// serde accepts, as serde's own unknown-field message enumerates them.
    #[test]
    fn each_modes_key_list_is_its_fields() {
        let expected = |toml: &str| -> Vec<String> {
            let e = parse(toml).unwrap_err();
            let list = e.split("expected one of ").nth(1).unwrap_or_default();
            list.split(", ")
                .map(|k| k.trim().trim_matches('`').to_owned())
                .collect()
        };
        assert_eq!(expected("no_such_key = 1\n"), EmbeddedConfig::KEYS);
        assert_eq!(
            expected("mode = \"external\"\nno_such_key = 1\n"),
            ExternalConfig::KEYS
        );
    }

    #[test]
    fn each_mode_validates_its_own_rules() {
        let external = ExternalConfig {
            share_group: "a/b".into(),
            ..ExternalConfig::default()
        };
        assert!(matches!(
            external.validate(),
            Err(IngestConfigError::ShareGroup)
        ));
        let external = ExternalConfig {
            broker_url: "http://broker".into(),
            ..ExternalConfig::default()
        };
        assert!(matches!(
            external.validate(),
            Err(IngestConfigError::External(_))
        ));
        let embedded = EmbeddedConfig {
            segment_count: 0,
            ..EmbeddedConfig::default()
        };
        assert!(matches!(
            embedded.validate(),
            Err(IngestConfigError::Segment { key: "segment", .. })
        ));
        let embedded = EmbeddedConfig {
            topic_prefix: "fleet/".into(),
            ..EmbeddedConfig::default()
        };
        assert!(matches!(
            embedded.validate(),
            Err(IngestConfigError::TopicPrefix)
        ));
        EmbeddedConfig::default().validate().unwrap();
        ExternalConfig::default().validate().unwrap();
    }
}
