//! MQTT gateways: the embedded rumqttd broker (default) or a subscription to
//! an external broker through rumqttc.
//!
//! Topics (wire contract v1), `{prefix}` = `ingest.mqtt.topic_prefix`:
//! - `{prefix}/{vehicle_id}/telemetry`: JSON (one ping or a batch);
//! - `{prefix}/{vehicle_id}/telemetry/pb`: Protobuf (`Ping` or `PingBatch`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::codec::Encoding;
use crate::source::IngestConfigError;
use crate::tls::{ServerTls, TlsGateway};

pub mod acl;
pub mod embedded;
pub mod external;
pub mod tls;
pub mod watermark;

pub use acl::INTERNAL_CLIENT_ID;
pub use embedded::{EmbeddedBroker, EmbeddedBrokerError, ListenAddrs};
pub use external::{ExternalConsumer, ExternalConsumerError};
pub use tls::MqttTlsConfig;

/// Where fleetpipe gets MQTT traffic from.
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

/// rumqttd's smallest log segment, bytes: it panics on a smaller one.
pub const MIN_SEGMENT_BYTES: usize = 1024;

/// `ingest.mqtt`: the MQTT gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `embedded`, `external` or `off`.
    pub mode: MqttMode,
    /// Embedded: MQTT 3.1.1 listener; `"off"` disables it (for example
    /// when devices must use the TLS listeners only).
    #[serde(deserialize_with = "address_or_off")]
    pub listen: Option<SocketAddr>,
    /// Embedded: MQTT 5 listener (rumqttd serves each protocol version on its
    /// own port); `"off"` disables it.
    #[serde(deserialize_with = "address_or_off")]
    pub listen_v5: Option<SocketAddr>,
    /// First topic level of every telemetry topic.
    pub topic_prefix: String,
    /// Embedded: publish `{"ack": N}` on `{prefix}/{vehicle_id}/ack` once every
    /// ping of the vehicle with `seq <= N` is durable (rumqttd's own PUBACK
    /// only means "received"). Devices subscribe to their own ack topic.
    pub ack_topic: bool,
    /// Embedded: TLS listeners (`[ingest.mqtt.tls]`), with device
    /// authentication by client certificate when `client_ca_file` is set.
    /// Unset: no TLS listener.
    pub tls: Option<MqttTlsConfig>,
    /// Embedded: most simultaneous device connections, on all listeners
    /// together; a connection over the limit is closed at once.
    pub max_connections: usize,
    /// Embedded: time a new connection has for its TLS handshake (TLS
    /// listeners), and then again to send CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Embedded: the keep alive a device gets when its CONNECT turns MQTT
    /// keep alive off (keep alive 0). Its connection is then closed after
    /// 1.5 times this without a packet from it, like any device's after 1.5
    /// times its own keep alive, so a dead connection does not hold its
    /// place for ever; an MQTT 5 device is told in the CONNACK (Server Keep
    /// Alive), which it must use. 1 s to 65535 s, whole seconds.
    #[serde(with = "humantime_serde")]
    pub server_keep_alive: Duration,
    /// Embedded: unacknowledged QoS 1 publishes per connection.
    pub max_inflight: usize,
    /// Embedded: size of one segment of the broker's in-memory log per
    /// subscription. The log holds `segment_bytes * segment_count` bytes;
    /// if fleetpipe falls further behind, rumqttd drops the oldest segment.
    /// At least 1024 (rumqttd's smallest segment).
    pub segment_bytes: usize,
    /// Embedded: segments kept per subscription (see `segment_bytes`); at least 1.
    pub segment_count: usize,
    /// Embedded: size of one segment of the log behind each vehicle's ack
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
    /// Embedded: segments kept per ack subscription when `ack_segment_bytes`
    /// is set.
    pub ack_segment_count: usize,
    /// External: broker address, `mqtt://host:port`.
    pub broker_url: String,
    /// External: client id; keep it stable per instance, it names the persistent session.
    pub client_id: String,
    /// External: shared subscription group; instances with the same group split the load.
    pub share_group: String,
    /// External: username for the broker, if it wants one.
    pub username: Option<String>,
    /// External: password for the broker.
    pub password: Option<String>,
    /// External: MQTT keep-alive interval.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// External: QoS 1 messages the broker may have in flight to fleetpipe
    /// unacknowledged (the broker's own limit applies too; Mosquitto's
    /// `max_inflight_messages` defaults to 20).
    pub max_unacked: usize,
}

impl MqttConfig {
    fn defaults() -> Self {
        Self {
            mode: MqttMode::Embedded,
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            listen_v5: Some(SocketAddr::from(([0, 0, 0, 0], 1884))),
            topic_prefix: "fleet".into(),
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

impl MqttConfig {
    /// The rule of every mode: a prefix that can start a topic filter.
    pub(crate) fn validate_prefix(&self) -> Result<(), IngestConfigError> {
        let prefix = &self.topic_prefix;
        if prefix.is_empty()
            || prefix.contains(['+', '#'])
            || prefix.starts_with('/')
            || prefix.ends_with('/')
        {
            return Err(IngestConfigError::TopicPrefix);
        }
        Ok(())
    }

    /// The embedded broker's rules: logs rumqttd accepts, a keep alive MQTT
    /// can carry, at least one listener, and TLS files that load.
    pub(crate) fn validate_embedded(&self) -> Result<(), IngestConfigError> {
        self.validate_prefix()?;
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

    /// The external consumer's rules: a group that keeps the shared
    /// subscription's shape, and a broker URL it can connect to.
    pub(crate) fn validate_external(&self) -> Result<(), IngestConfigError> {
        self.validate_prefix()?;
        if self.share_group.contains(['/', '+', '#']) {
            return Err(IngestConfigError::ShareGroup);
        }
        external::broker_address(&self.broker_url)?;
        Ok(())
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self::defaults()
    }
}

/// An address, or `"off"`.
fn address_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!("{s:?} is neither an address nor \"off\": {e}"))
    })
}

/// A telemetry topic, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryTopic<'a> {
    /// The vehicle the topic names (not yet validated).
    pub vehicle: &'a str,
    /// Payload encoding the topic implies.
    pub encoding: Encoding,
}

/// Parses `{prefix}/{vehicle}/telemetry[/pb]`; `None` for any other topic.
pub fn parse_topic<'a>(prefix: &str, topic: &'a str) -> Option<TelemetryTopic<'a>> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (vehicle, kind) = rest.split_once('/')?;
    let encoding = match kind {
        "telemetry" => Encoding::Json,
        "telemetry/pb" => Encoding::Protobuf,
        _ => return None,
    };
    (!vehicle.is_empty()).then_some(TelemetryTopic { vehicle, encoding })
}

/// The acknowledgement topic of a vehicle (embedded broker).
pub fn ack_topic(prefix: &str, vehicle: &str) -> String {
    format!("{prefix}/{vehicle}/ack")
}

/// Subscription filters for the telemetry topics.
pub fn telemetry_filters(prefix: &str) -> [String; 2] {
    [
        format!("{prefix}/+/telemetry"),
        format!("{prefix}/+/telemetry/pb"),
    ]
}

/// [`MqttConfig::server_keep_alive`] in seconds, as MQTT carries it; `None`
/// when it is not 1 to 65535 whole seconds.
pub fn server_keep_alive_secs(keep_alive: Duration) -> Option<u16> {
    if keep_alive.subsec_nanos() != 0 {
        return None;
    }
    u16::try_from(keep_alive.as_secs()).ok().filter(|s| *s > 0)
}

/// Largest MQTT packet fleetpipe's MQTT stacks read: well above the
/// payload limit, so an oversize payload still reaches the validator and is
/// dead-lettered with reason `oversize` instead of just closing the connection.
pub(crate) fn hard_packet_limit(max_payload_bytes: usize) -> usize {
    max_payload_bytes.saturating_mul(4).max(1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(
            parse_topic("fleet", "fleet/van-1/telemetry"),
            Some(TelemetryTopic {
                vehicle: "van-1",
                encoding: Encoding::Json
            })
        );
        assert_eq!(
            parse_topic("fleet", "fleet/van-1/telemetry/pb"),
            Some(TelemetryTopic {
                vehicle: "van-1",
                encoding: Encoding::Protobuf
            })
        );
        assert_eq!(
            parse_topic("a/b", "a/b/v/telemetry").map(|t| t.vehicle),
            Some("v")
        );
        for bad in [
            "fleet/van-1/ack",
            "fleet//telemetry",
            "fleetx/v/telemetry",
            "other/v/telemetry",
            "fleet/v/telemetry/json",
            "fleet",
        ] {
            assert_eq!(parse_topic("fleet", bad), None, "{bad}");
        }
    }
}
