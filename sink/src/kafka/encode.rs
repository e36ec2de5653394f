//! What the Kafka sink produces for a record: stream, key, value and
//! headers. Everything here is pure, so it is tested on fixtures without a
//! broker.
//!
//! - Telemetry: key = vehicle id; value = the JSON output schema (the file
//!   sink's line without its newline) or a Protobuf `fleetpipe.v1.Ping`;
//!   headers `schema_version` and `content-type`.
//! - Dead letters: key = vehicle id when known, else none; value = the
//!   refused bytes exactly as received; headers `reason`, `detail`,
//!   `source`, `received_at` (RFC 3339), `topic` and `vehicle_id` when
//!   known, and `schema_version`.
//! - Events: key = vehicle id (the CloudEvents `subject`); value = the
//!   CloudEvents JSON object (structured content mode) whatever the
//!   telemetry format; headers `content-type:
//!   application/cloudevents+json`, `ce_id` and `ce_type`, so consumers can
//!   route and deduplicate without parsing the value.

use bytes::Bytes;
use fleetpipe_model::ping::Rfc3339Millis;
use fleetpipe_model::{DeadLetter, SinkRecord, TelemetryRecord, VehicleEvent, VehicleId, proto};

use super::KafkaFormat;
use prost::Message as _;

/// Header carrying the output schema version ([`fleetpipe_model::SCHEMA_VERSION`]).
pub(crate) const HEADER_SCHEMA_VERSION: &str = "schema_version";
/// Header carrying the value's media type (telemetry and events).
pub(crate) const HEADER_CONTENT_TYPE: &str = "content-type";
/// Event header: the CloudEvents `id` (deterministic, for deduplication).
pub(crate) const HEADER_CE_ID: &str = "ce_id";
/// Event header: the CloudEvents `type`, e.g. `geofence.entered`.
pub(crate) const HEADER_CE_TYPE: &str = "ce_type";
/// Media type of an event value: a CloudEvent in structured content mode.
pub(crate) const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// Dead-letter header: the reject reason code, e.g. `coord_invalid`.
pub(crate) const HEADER_REASON: &str = "reason";
/// Dead-letter header: the human-readable explanation.
pub(crate) const HEADER_DETAIL: &str = "detail";
/// Dead-letter header: the gateway it came through, e.g. `mqtt`.
pub(crate) const HEADER_SOURCE: &str = "source";
/// Dead-letter header: receive time, RFC 3339 UTC with milliseconds.
pub(crate) const HEADER_RECEIVED_AT: &str = "received_at";
/// Dead-letter header: the MQTT topic, when it came through MQTT.
pub(crate) const HEADER_TOPIC: &str = "topic";
/// Dead-letter header: the vehicle, when known.
pub(crate) const HEADER_VEHICLE_ID: &str = "vehicle_id";

pub(crate) use crate::stream::Stream;

/// One record as it is produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Encoded {
    /// Which topic it goes to.
    pub(crate) stream: Stream,
    /// Partitioning key: the vehicle, so a vehicle's records stay in order
    /// in one partition. `None` only for dead letters of an unknown vehicle.
    pub(crate) key: Option<VehicleId>,
    /// The record value.
    pub(crate) value: Bytes,
    /// Headers, in this order.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// Record timestamp, epoch milliseconds: when fleetpipe received the
    /// data. `None` (events, which derive from data rather than arrive):
    /// librdkafka stamps the time the record is produced.
    pub(crate) timestamp_ms: Option<i64>,
}

/// Encodes `record` in `format` (which applies to telemetry only).
///
/// # Errors
///
/// The telemetry record or event cannot be serialized as JSON (it always
/// can with the model's types; the error is handled rather than assumed
/// away).
pub(crate) fn encode(
    record: &SinkRecord,
    format: KafkaFormat,
) -> Result<Encoded, serde_json::Error> {
    match record {
        SinkRecord::Telemetry(r) => telemetry(r, format),
        SinkRecord::DeadLetter(r) => Ok(dead_letter(r)),
        SinkRecord::Event(e) => event(e),
    }
}

/// Telemetry in `format`.
fn telemetry(record: &TelemetryRecord, format: KafkaFormat) -> Result<Encoded, serde_json::Error> {
    let value = match format {
        KafkaFormat::Json => serde_json::to_vec(record)?,
        KafkaFormat::Protobuf => {
            // The model owns the wire mapping (`From<&Ping> for proto::Ping`).
            proto::Ping::from(&record.ping).encode_to_vec()
        }
    };
    Ok(Encoded {
        stream: Stream::Telemetry,
        key: Some(record.ping.vehicle_id.clone()),
        value: Bytes::from(value),
        headers: vec![
            (HEADER_SCHEMA_VERSION, record.schema_version.to_string()),
            (HEADER_CONTENT_TYPE, format.content_type().to_owned()),
        ],
        timestamp_ms: Some(record.origin.received_at),
    })
}

/// A dead letter: its raw bytes, its metadata in headers.
fn dead_letter(record: &DeadLetter) -> Encoded {
    let mut headers = vec![
        (HEADER_REASON, record.reason.as_str().to_owned()),
        (HEADER_DETAIL, record.detail.clone()),
        (HEADER_SOURCE, record.origin.gateway.as_str().to_owned()),
        (
            HEADER_RECEIVED_AT,
            Rfc3339Millis(record.origin.received_at).to_string(),
        ),
    ];
    if let Some(topic) = &record.topic {
        headers.push((HEADER_TOPIC, topic.clone()));
    }
    if let Some(vehicle_id) = &record.vehicle_id {
        headers.push((HEADER_VEHICLE_ID, vehicle_id.as_str().to_owned()));
    }
    headers.push((HEADER_SCHEMA_VERSION, record.schema_version.to_string()));
    Encoded {
        stream: Stream::DeadLetter,
        key: record.vehicle_id.clone(),
        // A reference-counted view of the same bytes: nothing is copied
        // until librdkafka takes its copy.
        value: record.raw.clone(),
        headers,
        timestamp_ms: Some(record.origin.received_at),
    }
}

/// An event: the CloudEvents JSON object (the file sink's line without its
/// newline), whatever the telemetry format.
fn event(event: &VehicleEvent) -> Result<Encoded, serde_json::Error> {
    Ok(Encoded {
        stream: Stream::Event,
        key: Some(event.subject.clone()),
        value: Bytes::from(serde_json::to_vec(event)?),
        headers: vec![
            (HEADER_CONTENT_TYPE, CLOUDEVENTS_JSON.to_owned()),
            (HEADER_CE_ID, event.id.clone()),
            (HEADER_CE_TYPE, event.event_type.as_str().to_owned()),
        ],
        // The event's own `time` is device time, possibly days old (a
        // backlog); as the record timestamp it would skew time-based
        // retention and lookups, so the produce time is used.
        timestamp_ms: None,
    })
}
