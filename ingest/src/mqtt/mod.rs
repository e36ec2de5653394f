//! MQTT gateways: the embedded rumqttd broker (default) or a subscription to
//! an external broker through rumqttc.
//!
//! Topics (wire contract v1), `{prefix}` = `ingest.mqtt.topic_prefix`:
//! - `{prefix}/{vehicle_id}/telemetry`: JSON (one ping or a batch);
//! - `{prefix}/{vehicle_id}/telemetry/pb`: Protobuf (`Ping` or `PingBatch`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

pub mod acl;
mod config;
pub mod embedded;
pub mod external;
pub mod tls;
pub mod watermark;

pub use acl::INTERNAL_CLIENT_ID;
pub use config::{EmbeddedConfig, ExternalConfig, MIN_SEGMENT_BYTES, MqttConfig, MqttMode};
pub use embedded::{EmbeddedBroker, EmbeddedBrokerError, ListenAddrs};
pub use external::{ExternalConsumer, ExternalConsumerError};
pub use tls::MqttTlsConfig;

/// An address, or `"off"`.
pub(crate) fn address_or_off<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|e| {
        serde::de::Error::custom(format!("{s:?} is neither an address nor \"off\": {e}"))
    })
}

pub use fleetpipe_model::wire::{TelemetryTopic, ack_topic, parse_topic, telemetry_filters};

/// [`EmbeddedConfig::server_keep_alive`] in seconds, as MQTT carries it; `None`
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
