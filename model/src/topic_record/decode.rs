//! Reading a topic's record back into the model: the inverse of
//! [`super::encode`] and [`super::encode_raw`].

use bytes::Bytes;

use super::{
    CLOUDEVENTS_JSON, HEADER_CE_ID, HEADER_CE_TYPE, HEADER_CONTENT_TYPE, HEADER_DETAIL,
    HEADER_REASON, HEADER_RECEIVED_AT, HEADER_RECORD, HEADER_SCHEMA_VERSION, HEADER_SOURCE,
    HEADER_TOPIC, HEADER_VEHICLE_ID, RECORD_DEAD_LETTER, RECORD_PING, Stream, TelemetryFormat,
};
use crate::ping::parse_rfc3339_ms;
use crate::{
    Accepted, Ack, DeadLetter, Enrichment, Gateway, Origin, RawRecord, RejectReason,
    SCHEMA_VERSION, SinkRecord, TelemetryRecord, VehicleEvent, VehicleId,
};

/// Longest excerpt of a refused key or header value an error repeats.
const EXCERPT_CHARS: usize = 64;

/// A record read back from a topic.
#[derive(Debug)]
pub enum Decoded {
    /// From the telemetry, events or dead-letter topic.
    Sink(SinkRecord),
    /// From the raw topic.
    Raw(RawRecord),
}

/// Why a topic's record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A header the stream's records always carry is absent.
    #[error("header `{0}` is missing")]
    MissingHeader(&'static str),
    /// A header appears more than once.
    #[error("header `{0}` appears more than once")]
    DuplicateHeader(&'static str),
    /// A header's value is not UTF-8.
    #[error("header `{0}` is not UTF-8")]
    HeaderNotUtf8(&'static str),
    /// A header's value does not parse.
    #[error("header `{header}` = {value:?}: {reason}")]
    InvalidHeader {
        /// The header.
        header: &'static str,
        /// Its value (at most 64 characters of it).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `reason` header is no reject reason code
    /// ([`RejectReason::as_str`]).
    #[error("header `reason` = {0:?} is not a known reject reason code")]
    UnknownReason(String),
    /// The `source` header names no gateway ([`Gateway::as_str`]).
    #[error("header `source` = {0:?} is not a known gateway")]
    UnknownSource(String),
    /// The raw topic's `record` header is neither `ping` nor `dead_letter`.
    #[error("header `record` = {0:?}: the raw topic holds `ping` and `dead_letter` records")]
    UnknownRecord(String),
    /// The record is of a schema version this build does not read.
    #[error("schema version {0} is not supported (this build reads {SCHEMA_VERSION})")]
    UnsupportedSchemaVersion(u32),
    /// The `schema_version` header and the value disagree.
    #[error("header `schema_version` is {header} but the value's schema_version is {value}")]
    SchemaVersionMismatch {
        /// The header's version.
        header: u32,
        /// The value's version.
        value: u32,
    },
    /// The value is not of the media type the stream's records have.
    #[error("{stream} record: content type {content_type:?} is not {expected:?}")]
    UnsupportedContentType {
        /// The stream read.
        stream: Stream,
        /// The `content-type` header.
        content_type: String,
        /// What the stream's records have.
        expected: &'static str,
    },
    /// Telemetry in Protobuf ([`TelemetryFormat::Protobuf`]): a
    /// `fleetpipe.v1.Ping` has neither origin nor H3 cells nor enrichment,
    /// so it cannot become a [`TelemetryRecord`].
    #[error(
        "telemetry record: Protobuf telemetry (fleetpipe.v1.Ping) has no origin, H3 cells or \
         enrichment and cannot be read back into a telemetry record; produce telemetry with \
         format = \"json\" for consumers that need it"
    )]
    ProtobufTelemetry,
    /// The value is not valid JSON of the stream's schema (serde's message
    /// says where and why).
    #[error("{stream} record: the value is not a valid record: {source}")]
    Json {
        /// The stream read.
        stream: Stream,
        /// serde's error.
        source: serde_json::Error,
    },
    /// The record's key is not its vehicle id (or one of them is absent).
    #[error(
        "record key {} does not match its vehicle id {}",
        shown(.key),
        shown(.vehicle_id)
    )]
    KeyMismatch {
        /// The key (at most 64 characters of it), `None` if absent.
        key: Option<String>,
        /// The record's vehicle id, `None` if it has none.
        vehicle_id: Option<String>,
    },
    /// A header that repeats part of the value (`ce_id`, `ce_type`) says
    /// something else than the value.
    #[error("header `{header}` = {header_value:?} but the value says {value:?}")]
    HeaderMismatch {
        /// The header.
        header: &'static str,
        /// Its value (at most 64 characters of it).
        header_value: String,
        /// What the value says.
        value: String,
    },
    /// A ping on the raw topic carries H3 cells or enrichment fields, which
    /// only enriched telemetry has.
    #[error("raw ping: carries H3 cells or enrichment fields, which only enriched telemetry has")]
    RawPingEnriched,
}

/// An optional string for an error message: quoted, or `none`.
fn shown(s: &Option<String>) -> String {
    s.as_ref()
        .map_or_else(|| "none".to_owned(), |s| format!("{s:?}"))
}

/// At most [`EXCERPT_CHARS`] characters of `bytes`, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Reads the record a consumer of `stream`'s topic got back into the model:
/// its `key`, `value` and `headers` (name and value bytes, in any order;
/// pass a Kafka header without a value as empty; headers of other names are
/// ignored).
///
/// - [`Stream::Telemetry`] → [`SinkRecord::Telemetry`] (JSON only:
///   Protobuf telemetry is [`DecodeError::ProtobufTelemetry`]).
/// - [`Stream::Event`] → [`SinkRecord::Event`], its `data` the raw JSON it
///   was.
/// - [`Stream::DeadLetter`] → [`SinkRecord::DeadLetter`], from the value
///   (the refused bytes) and the headers; its origin has no `client` (the
///   topic does not carry it).
/// - [`Stream::Raw`] → [`RawRecord::Ping`] or [`RawRecord::DeadLetter`], as
///   the `record` header says.
///
/// Every record gets an untracked [`Ack`] ([`Ack::none`]). The headers the
/// stream's records always carry are required, a header that repeats the
/// value must agree with it, and the key must be the record's vehicle id
/// (absent only for a dead letter without one). Nothing is assumed about
/// the input: anything else is a [`DecodeError`].
///
/// # Errors
///
/// See [`DecodeError`]: a missing, duplicated or malformed header, a value
/// that is not a record of the stream, a key that is not its vehicle id,
/// an unsupported schema version, or Protobuf telemetry.
pub fn decode(
    stream: Stream,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<Decoded, DecodeError> {
    let headers = Headers(headers);
    match stream {
        Stream::Telemetry => {
            telemetry(key, value, &headers).map(|r| Decoded::Sink(SinkRecord::Telemetry(r)))
        }
        Stream::Event => event(key, value, &headers).map(|e| Decoded::Sink(SinkRecord::Event(e))),
        Stream::DeadLetter => {
            dead_letter(key, value, &headers).map(|d| Decoded::Sink(SinkRecord::DeadLetter(d)))
        }
        Stream::Raw => match headers.required(HEADER_RECORD)? {
            RECORD_PING => raw_ping(key, value, &headers).map(|a| Decoded::Raw(RawRecord::Ping(a))),
            RECORD_DEAD_LETTER => {
                dead_letter(key, value, &headers).map(|d| Decoded::Raw(RawRecord::DeadLetter(d)))
            }
            other => Err(DecodeError::UnknownRecord(excerpt(other.as_bytes()))),
        },
    }
}

/// A record's headers, looked up by name.
struct Headers<'h, 'a>(&'h [(&'a str, &'a [u8])]);

impl<'a> Headers<'_, 'a> {
    /// The value of header `name`, if present once.
    fn get(&self, name: &'static str) -> Result<Option<&'a str>, DecodeError> {
        let mut found = None;
        for &(key, value) in self.0 {
            if key == name {
                if found.is_some() {
                    return Err(DecodeError::DuplicateHeader(name));
                }
                found =
                    Some(std::str::from_utf8(value).map_err(|_| DecodeError::HeaderNotUtf8(name))?);
            }
        }
        Ok(found)
    }

    /// The value of header `name`, which must be present once.
    fn required(&self, name: &'static str) -> Result<&'a str, DecodeError> {
        self.get(name)?.ok_or(DecodeError::MissingHeader(name))
    }

    /// The `schema_version` header, which must be present and supported.
    fn schema_version(&self) -> Result<u32, DecodeError> {
        let text = self.required(HEADER_SCHEMA_VERSION)?;
        let version: u32 = text.parse().map_err(|e| DecodeError::InvalidHeader {
            header: HEADER_SCHEMA_VERSION,
            value: excerpt(text.as_bytes()),
            reason: format!("not a schema version: {e}"),
        })?;
        if version != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedSchemaVersion(version));
        }
        Ok(version)
    }

    /// Checks that the `content-type` header is `expected`.
    fn content_type(&self, stream: Stream, expected: &'static str) -> Result<(), DecodeError> {
        let content_type = self.required(HEADER_CONTENT_TYPE)?;
        if content_type == expected {
            return Ok(());
        }
        if stream == Stream::Telemetry && content_type == TelemetryFormat::Protobuf.content_type() {
            return Err(DecodeError::ProtobufTelemetry);
        }
        Err(DecodeError::UnsupportedContentType {
            stream,
            content_type: excerpt(content_type.as_bytes()),
            expected,
        })
    }
}

/// Checks that `key` is `vehicle_id` (both may be absent).
fn check_key(key: Option<&[u8]>, vehicle_id: Option<&VehicleId>) -> Result<(), DecodeError> {
    match (key, vehicle_id) {
        (None, None) => Ok(()),
        (Some(key), Some(id)) if key == id.as_str().as_bytes() => Ok(()),
        (key, vehicle_id) => Err(DecodeError::KeyMismatch {
            key: key.map(excerpt),
            vehicle_id: vehicle_id.map(VehicleId::to_string),
        }),
    }
}

/// A JSON telemetry record of `stream` (telemetry, or a raw ping), checked
/// against its headers and key.
fn telemetry_json(
    stream: Stream,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &Headers<'_, '_>,
) -> Result<TelemetryRecord, DecodeError> {
    headers.content_type(stream, TelemetryFormat::Json.content_type())?;
    let version = headers.schema_version()?;
    let record: TelemetryRecord =
        serde_json::from_slice(value).map_err(|source| DecodeError::Json { stream, source })?;
    if record.schema_version != version {
        return Err(DecodeError::SchemaVersionMismatch {
            header: version,
            value: record.schema_version,
        });
    }
    check_key(key, Some(&record.ping.vehicle_id))?;
    Ok(record)
}

/// A record of the telemetry topic.
fn telemetry(
    key: Option<&[u8]>,
    value: &[u8],
    headers: &Headers<'_, '_>,
) -> Result<TelemetryRecord, DecodeError> {
    telemetry_json(Stream::Telemetry, key, value, headers)
}

/// An accepted ping of the raw topic: telemetry with nothing derived.
fn raw_ping(
    key: Option<&[u8]>,
    value: &[u8],
    headers: &Headers<'_, '_>,
) -> Result<Accepted, DecodeError> {
    let record = telemetry_json(Stream::Raw, key, value, headers)?;
    if !record.h3.is_empty() || record.enrichment != Enrichment::default() {
        return Err(DecodeError::RawPingEnriched);
    }
    Ok(Accepted {
        ping: record.ping,
        origin: record.origin,
        ack: Ack::none(),
    })
}

/// A record of the events topic.
fn event(
    key: Option<&[u8]>,
    value: &[u8],
    headers: &Headers<'_, '_>,
) -> Result<VehicleEvent, DecodeError> {
    headers.content_type(Stream::Event, CLOUDEVENTS_JSON)?;
    let ce_id = headers.required(HEADER_CE_ID)?;
    let ce_type = headers.required(HEADER_CE_TYPE)?;
    let event: VehicleEvent =
        serde_json::from_slice(value).map_err(|source| DecodeError::Json {
            stream: Stream::Event,
            source,
        })?;
    if ce_id != event.id {
        return Err(DecodeError::HeaderMismatch {
            header: HEADER_CE_ID,
            header_value: excerpt(ce_id.as_bytes()),
            value: event.id,
        });
    }
    if ce_type != event.event_type.as_str() {
        return Err(DecodeError::HeaderMismatch {
            header: HEADER_CE_TYPE,
            header_value: excerpt(ce_type.as_bytes()),
            value: event.event_type.as_str().to_owned(),
        });
    }
    check_key(key, Some(&event.subject))?;
    Ok(event)
}

/// A dead letter (of the dead-letter or the raw topic): the value is the
/// refused bytes, the rest is in headers.
fn dead_letter(
    key: Option<&[u8]>,
    value: &[u8],
    headers: &Headers<'_, '_>,
) -> Result<DeadLetter, DecodeError> {
    let reason_code = headers.required(HEADER_REASON)?;
    let reason = RejectReason::ALL
        .into_iter()
        .find(|r| r.as_str() == reason_code)
        .ok_or_else(|| DecodeError::UnknownReason(excerpt(reason_code.as_bytes())))?;
    let detail = headers.required(HEADER_DETAIL)?;
    let source = headers.required(HEADER_SOURCE)?;
    let gateway = Gateway::from_name(source)
        .ok_or_else(|| DecodeError::UnknownSource(excerpt(source.as_bytes())))?;
    let received_at = headers.required(HEADER_RECEIVED_AT)?;
    let received_at = parse_rfc3339_ms(received_at).map_err(|e| DecodeError::InvalidHeader {
        header: HEADER_RECEIVED_AT,
        value: excerpt(received_at.as_bytes()),
        reason: e.to_string(),
    })?;
    let topic = headers.get(HEADER_TOPIC)?;
    let vehicle_id = headers
        .get(HEADER_VEHICLE_ID)?
        .map(|id| {
            VehicleId::parse(id).map_err(|e| DecodeError::InvalidHeader {
                header: HEADER_VEHICLE_ID,
                value: excerpt(id.as_bytes()),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let schema_version = headers.schema_version()?;
    check_key(key, vehicle_id.as_ref())?;
    Ok(DeadLetter {
        schema_version,
        reason,
        detail: detail.to_owned(),
        vehicle_id,
        topic: topic.map(str::to_owned),
        origin: Origin {
            gateway,
            client: None,
            received_at,
        },
        raw: Bytes::copy_from_slice(value),
        ack: Ack::none(),
    })
}
