//! Where the wire contract puts things (docs/wire-contract.md §2-§4, §9):
//! the payload [`Encoding`]s and the MQTT topic layout. The gateways parse
//! topics with it and the simulator builds them with it, so the two cannot
//! drift apart.
//!
//! - `{prefix}/{vehicle_id}/telemetry`: JSON (one ping or a batch);
//! - `{prefix}/{vehicle_id}/telemetry/pb`: Protobuf (`Ping` or `PingBatch`);
//! - `{prefix}/{vehicle_id}/ack`: fleetpipe's acknowledgements (embedded broker).

use serde::{Deserialize, Serialize};

/// How a message's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 JSON: one ping object or an array of them (MQTT topic
    /// `…/telemetry`, WebSocket text frames, `application/json`).
    #[default]
    Json,
    /// Protobuf `fleetpipe.v1.Ping` or `fleetpipe.v1.PingBatch` (MQTT topic
    /// `…/telemetry/pb`, WebSocket binary frames, `application/x-protobuf`).
    Protobuf,
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Self::Json),
            "protobuf" | "proto" | "pb" => Ok(Self::Protobuf),
            other => Err(format!("unknown encoding {other:?} (json or protobuf)")),
        }
    }
}

/// A telemetry topic, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryTopic<'a> {
    /// The vehicle the topic names (not yet validated).
    pub vehicle: &'a str,
    /// Payload encoding the topic implies.
    pub encoding: Encoding,
}

/// The level after the vehicle id in a telemetry topic of `encoding`.
const fn telemetry_suffix(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Json => "telemetry",
        Encoding::Protobuf => "telemetry/pb",
    }
}

/// Parses `{prefix}/{vehicle}/telemetry[/pb]`; `None` for any other topic.
pub fn parse_topic<'a>(prefix: &str, topic: &'a str) -> Option<TelemetryTopic<'a>> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (vehicle, kind) = rest.split_once('/')?;
    let encoding = [Encoding::Json, Encoding::Protobuf]
        .into_iter()
        .find(|e| telemetry_suffix(*e) == kind)?;
    (!vehicle.is_empty()).then_some(TelemetryTopic { vehicle, encoding })
}

/// The telemetry topic a vehicle publishes `encoding` payloads to.
pub fn telemetry_topic(prefix: &str, vehicle: &str, encoding: Encoding) -> String {
    format!("{prefix}/{vehicle}/{}", telemetry_suffix(encoding))
}

/// The acknowledgement topic of a vehicle (embedded broker).
pub fn ack_topic(prefix: &str, vehicle: &str) -> String {
    format!("{prefix}/{vehicle}/ack")
}

/// Subscription filters for every vehicle's telemetry topics.
pub fn telemetry_filters(prefix: &str) -> [String; 2] {
    [Encoding::Json, Encoding::Protobuf].map(|e| telemetry_topic(prefix, "+", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let topic = telemetry_topic("a/b", "van-1", encoding);
            assert_eq!(
                parse_topic("a/b", &topic),
                Some(TelemetryTopic {
                    vehicle: "van-1",
                    encoding
                })
            );
        }
        assert_eq!(
            telemetry_topic("fleet", "v", Encoding::Json),
            "fleet/v/telemetry"
        );
        assert_eq!(
            telemetry_topic("fleet", "v", Encoding::Protobuf),
            "fleet/v/telemetry/pb"
        );
        assert_eq!(ack_topic("fleet", "v"), "fleet/v/ack");
        assert_eq!(
            telemetry_filters("fleet"),
            ["fleet/+/telemetry", "fleet/+/telemetry/pb"]
        );
    }

    #[test]
    fn encodings_parse_by_name() {
        assert_eq!("pb".parse(), Ok(Encoding::Protobuf));
        assert_eq!("json".parse(), Ok(Encoding::Json));
        assert!("xml".parse::<Encoding>().is_err());
    }
}
