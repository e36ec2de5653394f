//! `ingest.mqtt`: the MQTT gateway's settings. `mode` selects a variant of
//! [`MqttConfig`] that holds only that mode's settings: [`EmbeddedConfig`]
//! for the broker inside fleetpipe, [`ExternalConfig`] for a subscription
//! to another broker, nothing for `off`.
//!
//! The table is read as written ([`MqttKeys`]: every key of every mode,
//! unknown keys refused, each error naming its key), then `mode` picks the
//! variant. Keys of the other modes are accepted and unused, as they always
//! were, so one file can switch modes by `mode` alone (the shipped
//! `config/fleetpipe.toml` documents both modes' keys in one table).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "MqttKeys")]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// First topic level of every telemetry topic.
    pub topic_prefix: String,
    /// MQTT 3.1.1 listener; `"off"` disables it (for example when devices
    /// must use the TLS listeners only).
    pub listen: Option<SocketAddr>,
    /// MQTT 5 listener (rumqttd serves each protocol version on its own
    /// port); `"off"` disables it.
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
    pub connect_timeout: Duration,
    /// The keep alive a device gets when its CONNECT turns MQTT keep alive
    /// off (keep alive 0). Its connection is then closed after 1.5 times
    /// this without a packet from it, like any device's after 1.5 times its
    /// own keep alive, so a dead connection does not hold its place for
    /// ever; an MQTT 5 device is told in the CONNACK (Server Keep Alive),
    /// which it must use. 1 s to 65535 s, whole seconds.
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
        let keys = MqttKeys::default();
        Self::from_keys(&keys)
    }
}

impl EmbeddedConfig {
    fn from_keys(keys: &MqttKeys) -> Self {
        Self {
            topic_prefix: keys.topic_prefix.clone(),
            listen: keys.listen,
            listen_v5: keys.listen_v5,
            ack_topic: keys.ack_topic,
            tls: keys.tls.clone(),
            max_connections: keys.max_connections,
            connect_timeout: keys.connect_timeout,
            server_keep_alive: keys.server_keep_alive,
            max_inflight: keys.max_inflight,
            segment_bytes: keys.segment_bytes,
            segment_count: keys.segment_count,
            ack_segment_bytes: keys.ack_segment_bytes,
            ack_segment_count: keys.ack_segment_count,
        }
    }

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub keep_alive: Duration,
    /// QoS 1 messages the broker may have in flight to fleetpipe
    /// unacknowledged (the broker's own limit applies too; Mosquitto's
    /// `max_inflight_messages` defaults to 20).
    pub max_unacked: usize,
}

impl Default for ExternalConfig {
    fn default() -> Self {
        Self::from_keys(&MqttKeys::default())
    }
}

impl ExternalConfig {
    fn from_keys(keys: &MqttKeys) -> Self {
        Self {
            topic_prefix: keys.topic_prefix.clone(),
            broker_url: keys.broker_url.clone(),
            client_id: keys.client_id.clone(),
            share_group: keys.share_group.clone(),
            username: keys.username.clone(),
            password: keys.password.clone(),
            keep_alive: keys.keep_alive,
            max_unacked: keys.max_unacked,
        }
    }

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

/// Every key of `[ingest.mqtt]` as written, with its default; documented
/// on [`EmbeddedConfig`] and [`ExternalConfig`] (and in
/// `config/fleetpipe.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MqttKeys {
    /// `embedded`, `external` or `off`.
    mode: MqttMode,
    /// Both modes: [`EmbeddedConfig::topic_prefix`].
    topic_prefix: String,
    /// [`EmbeddedConfig::listen`].
    #[serde(deserialize_with = "super::address_or_off")]
    listen: Option<SocketAddr>,
    /// [`EmbeddedConfig::listen_v5`].
    #[serde(deserialize_with = "super::address_or_off")]
    listen_v5: Option<SocketAddr>,
    /// [`EmbeddedConfig::ack_topic`].
    ack_topic: bool,
    /// [`EmbeddedConfig::tls`].
    tls: Option<MqttTlsConfig>,
    /// [`EmbeddedConfig::max_connections`].
    max_connections: usize,
    /// [`EmbeddedConfig::connect_timeout`].
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    /// [`EmbeddedConfig::server_keep_alive`].
    #[serde(with = "humantime_serde")]
    server_keep_alive: Duration,
    /// [`EmbeddedConfig::max_inflight`].
    max_inflight: usize,
    /// [`EmbeddedConfig::segment_bytes`].
    segment_bytes: usize,
    /// [`EmbeddedConfig::segment_count`].
    segment_count: usize,
    /// [`EmbeddedConfig::ack_segment_bytes`].
    ack_segment_bytes: Option<usize>,
    /// [`EmbeddedConfig::ack_segment_count`].
    ack_segment_count: usize,
    /// [`ExternalConfig::broker_url`].
    broker_url: String,
    /// [`ExternalConfig::client_id`].
    client_id: String,
    /// [`ExternalConfig::share_group`].
    share_group: String,
    /// [`ExternalConfig::username`].
    username: Option<String>,
    /// [`ExternalConfig::password`].
    password: Option<String>,
    /// [`ExternalConfig::keep_alive`].
    #[serde(with = "humantime_serde")]
    keep_alive: Duration,
    /// [`ExternalConfig::max_unacked`].
    max_unacked: usize,
}

impl Default for MqttKeys {
    fn default() -> Self {
        Self {
            mode: MqttMode::Embedded,
            topic_prefix: "fleet".into(),
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

impl From<MqttKeys> for MqttConfig {
    fn from(keys: MqttKeys) -> Self {
        match keys.mode {
            MqttMode::Embedded => MqttConfig::Embedded(EmbeddedConfig::from_keys(&keys)),
            MqttMode::External => MqttConfig::External(ExternalConfig::from_keys(&keys)),
            MqttMode::Off => MqttConfig::Off,
        }
    }
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
    fn unknown_keys_are_refused_and_other_modes_keys_unused() {
        let e = parse("listen_port = 1\n").unwrap_err();
        assert!(e.contains("listen_port"), "{e}");
        let e = parse("mode = \"sideways\"\n").unwrap_err();
        assert!(e.contains("sideways"), "{e}");
        // An embedded broker with the external keys of the shipped file.
        let c = parse("broker_url = \"mqtt://elsewhere:1883\"\nshare_group = \"a/b\"\n").unwrap();
        assert_eq!(c, MqttConfig::default());
        c.embedded().unwrap().validate().unwrap();
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
