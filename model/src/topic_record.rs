//! The records of fleetpipe's Kafka topics, both ways: what is produced for
//! a model record ([`encode`], [`encode_raw`]: stream, key, value and
//! headers) and the model record a consumed one holds ([`decode`]).
//!
//! This module is the single place the topics' record format is defined.
//! The Kafka sink produces with it, and so do the scale-out roles (the
//! `gateway` role to the raw topic, `enrich` to the telemetry, events and
//! dead-letter topics), which consume with [`decode`]. It lives in the model
//! crate because every role needs it and stages never import each other.
//! Everything here is pure (no I/O, no Kafka client), so it is tested on
//! fixtures without a broker.
//!
//! Every record's key is its vehicle id, so a vehicle's records stay in
//! order in one partition; only dead letters of an unknown vehicle have no
//! key.
//!
//! - [`Stream::Telemetry`]: value = the JSON output schema (the file sink's
//!   line without its newline, docs/output-format.md §4) or, with
//!   [`TelemetryFormat::Protobuf`], a Protobuf `fleetpipe.v1.Ping`; headers
//!   `schema_version` and `content-type`.
//! - [`Stream::DeadLetter`]: value = the refused bytes exactly as received;
//!   headers `reason`, `detail`, `source`, `received_at` (RFC 3339),
//!   `topic` and `vehicle_id` when known, and `schema_version`. The
//!   origin's `client` is not carried.
//! - [`Stream::Event`]: value = the CloudEvents JSON object (structured
//!   content mode) whatever the telemetry format; headers `content-type:
//!   application/cloudevents+json`, `ce_id` and `ce_type`, so consumers can
//!   route and deduplicate without parsing the value.
//! - [`Stream::Raw`], internal between the `gateway` and `enrich` roles: an
//!   accepted ping is encoded exactly like JSON telemetry without H3 cells
//!   or enrichment (so the raw topic is in the public output schema) with
//!   the header `record: ping` first; a dead letter exactly like one on the
//!   dead-letter topic, with the header `record: dead_letter` first.
//!
//! [`decode`] reads all of these back except Protobuf telemetry, which
//! lacks the origin and enrichment of a [`TelemetryRecord`]. It checks the
//! headers it needs and the key, and refuses anything else with a
//! [`DecodeError`] naming what is wrong; decoded records carry an untracked
//! [`Ack`](crate::Ack) ([`Ack::none`](crate::Ack::none)), the consumer
//! attaches its own.

use bytes::Bytes;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::ping::Rfc3339Millis;
use crate::{
    Accepted, DeadLetter, Origin, Ping, RawRecord, SCHEMA_VERSION, SinkRecord, TelemetryRecord,
    VehicleEvent, VehicleId, proto,
};

mod decode;
#[cfg(test)]
mod tests;

pub use decode::{DecodeError, Decoded, decode};

/// Header carrying the output schema version ([`crate::SCHEMA_VERSION`]).
pub const HEADER_SCHEMA_VERSION: &str = "schema_version";
/// Header carrying the value's media type (telemetry, raw pings and events).
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Event header: the CloudEvents `id` (deterministic, for deduplication).
pub const HEADER_CE_ID: &str = "ce_id";
/// Event header: the CloudEvents `type`, e.g. `geofence.entered`.
pub const HEADER_CE_TYPE: &str = "ce_type";
/// Media type of an event value: a CloudEvent in structured content mode.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// Dead-letter header: the reject reason code, e.g. `coord_invalid`.
pub const HEADER_REASON: &str = "reason";
/// Dead-letter header: the human-readable explanation.
pub const HEADER_DETAIL: &str = "detail";
/// Dead-letter header: the gateway it came through, e.g. `mqtt`.
pub const HEADER_SOURCE: &str = "source";
/// Dead-letter header: receive time, RFC 3339 UTC with milliseconds.
pub const HEADER_RECEIVED_AT: &str = "received_at";
/// Dead-letter header: the MQTT topic, when it came through MQTT.
pub const HEADER_TOPIC: &str = "topic";
/// Dead-letter header: the vehicle, when known.
pub const HEADER_VEHICLE_ID: &str = "vehicle_id";
/// Raw-topic header: which record the value holds, [`RECORD_PING`] or
/// [`RECORD_DEAD_LETTER`].
pub const HEADER_RECORD: &str = "record";
/// Value of [`HEADER_RECORD`] for an accepted ping.
pub const RECORD_PING: &str = "ping";
/// Value of [`HEADER_RECORD`] for a dead letter.
pub const RECORD_DEAD_LETTER: &str = "dead_letter";

/// A topic's kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Accepted, enriched pings: [`SinkRecord::Telemetry`].
    Telemetry,
    /// Rejected input: [`SinkRecord::DeadLetter`].
    DeadLetter,
    /// State-change events: [`SinkRecord::Event`].
    Event,
    /// What the gateways accepted and refused, before enrichment
    /// ([`RawRecord`]): internal between the `gateway` and `enrich` roles.
    Raw,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 4] = [
        Stream::Telemetry,
        Stream::DeadLetter,
        Stream::Event,
        Stream::Raw,
    ];

    /// Its name (as the sinks' `stream` metrics label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Stream::Telemetry => "telemetry",
            Stream::DeadLetter => "dead_letter",
            Stream::Event => "events",
            Stream::Raw => "raw",
        }
    }

    /// The stream a sink record goes to.
    pub const fn of(record: &SinkRecord) -> Self {
        match record {
            SinkRecord::Telemetry(_) => Stream::Telemetry,
            SinkRecord::DeadLetter(_) => Stream::DeadLetter,
            SinkRecord::Event(_) => Stream::Event,
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Encoding of telemetry values (the Kafka sink's `[sink.kafka] format`,
/// which is this type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelemetryFormat {
    /// Telemetry as the JSON output schema (the file sink's lines, without
    /// the newline); content type `application/json`.
    #[default]
    Json,
    /// Telemetry as a Protobuf `fleetpipe.v1.Ping` (the model crate's
    /// `proto/fleetpipe/v1/telemetry.proto`); content type
    /// `application/x-protobuf`. It carries the ping only, not the origin,
    /// H3 cells or enrichment, so [`decode`] cannot read it back. Dead
    /// letters keep their raw bytes and events are CloudEvents JSON either
    /// way.
    Protobuf,
}

impl TelemetryFormat {
    /// The `content-type` header of telemetry records.
    pub const fn content_type(self) -> &'static str {
        match self {
            TelemetryFormat::Json => "application/json",
            TelemetryFormat::Protobuf => "application/x-protobuf",
        }
    }
}

/// One record as it is produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Which topic it goes to.
    pub stream: Stream,
    /// Partitioning key: the vehicle, so a vehicle's records stay in order
    /// in one partition. `None` only for dead letters of an unknown vehicle.
    pub key: Option<VehicleId>,
    /// The record value.
    pub value: Bytes,
    /// Headers, in this order.
    pub headers: Vec<(&'static str, String)>,
    /// Record timestamp, epoch milliseconds: when fleetpipe received the
    /// data. `None` (events, which derive from data rather than arrive):
    /// the producer stamps the time the record is produced.
    pub timestamp_ms: Option<i64>,
}

impl Encoded {
    /// The headers as [`decode`] takes them: name and value bytes.
    pub fn header_bytes(&self) -> Vec<(&'static str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect()
    }

    /// Reads the record back, as a consumer of its topic would.
    ///
    /// # Errors
    ///
    /// As [`decode`]: Protobuf telemetry cannot be read back.
    pub fn decode(&self) -> Result<Decoded, DecodeError> {
        decode(
            self.stream,
            self.key.as_ref().map(|k| k.as_str().as_bytes()),
            &self.value,
            &self.header_bytes(),
        )
    }
}

/// Encodes `record` in `format` (which applies to telemetry only).
///
/// # Errors
///
/// The telemetry record or event cannot be serialized as JSON (it always
/// can with the model's types; the error is handled rather than assumed
/// away).
pub fn encode(record: &SinkRecord, format: TelemetryFormat) -> Result<Encoded, serde_json::Error> {
    match record {
        SinkRecord::Telemetry(r) => telemetry(r, format),
        SinkRecord::DeadLetter(r) => Ok(dead_letter(r)),
        SinkRecord::Event(e) => event(e),
    }
}

/// Encodes `record` for the raw topic ([`Stream::Raw`]).
///
/// # Errors
///
/// The ping cannot be serialized as JSON (it always can; handled rather
/// than assumed away).
pub fn encode_raw(record: &RawRecord) -> Result<Encoded, serde_json::Error> {
    match record {
        RawRecord::Ping(accepted) => raw_ping(accepted),
        RawRecord::DeadLetter(r) => {
            let mut encoded = dead_letter(r);
            encoded.stream = Stream::Raw;
            encoded
                .headers
                .insert(0, (HEADER_RECORD, RECORD_DEAD_LETTER.to_owned()));
            Ok(encoded)
        }
    }
}

/// Telemetry in `format`.
fn telemetry(
    record: &TelemetryRecord,
    format: TelemetryFormat,
) -> Result<Encoded, serde_json::Error> {
    let value = match format {
        TelemetryFormat::Json => serde_json::to_vec(record)?,
        TelemetryFormat::Protobuf => {
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

/// The fields of a [`TelemetryRecord`] an accepted ping has: serialized,
/// the same bytes as a telemetry record without H3 cells or enrichment.
#[derive(Serialize)]
struct RawPingJson<'a> {
    schema_version: u32,
    #[serde(flatten)]
    ping: &'a Ping,
    #[serde(flatten)]
    origin: &'a Origin,
}

/// An accepted ping for the raw topic: JSON telemetry with nothing derived.
fn raw_ping(accepted: &Accepted) -> Result<Encoded, serde_json::Error> {
    let value = serde_json::to_vec(&RawPingJson {
        schema_version: SCHEMA_VERSION,
        ping: &accepted.ping,
        origin: &accepted.origin,
    })?;
    Ok(Encoded {
        stream: Stream::Raw,
        key: Some(accepted.ping.vehicle_id.clone()),
        value: Bytes::from(value),
        headers: vec![
            (HEADER_RECORD, RECORD_PING.to_owned()),
            (HEADER_SCHEMA_VERSION, SCHEMA_VERSION.to_string()),
            (
                HEADER_CONTENT_TYPE,
                TelemetryFormat::Json.content_type().to_owned(),
            ),
        ],
        timestamp_ms: Some(accepted.origin.received_at),
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
        // until the producer takes its copy.
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
