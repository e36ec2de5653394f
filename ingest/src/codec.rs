//! Decoding of wire contract v1 messages: bytes in, validated pings out.
//!
//! A message is JSON (one object, or an array = a batch) or Protobuf (a
//! `Ping` or a `PingBatch`). Decoding never panics and never fails a whole
//! batch for one bad element: each element becomes either a [`Ping`] or a
//! [`Rejection`] that keeps the element's raw bytes for the dead-letter output.
//! The transport (MQTT, WebSocket, HTTP) is not this module's business.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use fleetpipe_model::proto;
use fleetpipe_model::{AttrValue, Ping, RejectReason, VehicleId};
use prost::Message as _;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;

use crate::validate::{Candidate, Validator, Violation};

pub use fleetpipe_model::wire::Encoding;

/// Which vehicle the pings of a message must belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VehicleScope<'a> {
    /// The MQTT topic names the vehicle; a different payload id is `vehicle_mismatch`.
    Topic(&'a str),
    /// The authenticated device; a ping for another vehicle is `unauthorized`.
    Device(&'a str),
    /// No identity is known (anonymous access): a batch must still be of one
    /// vehicle, the first ping's; others are `vehicle_mismatch`.
    FirstPing,
}

/// A refused ping, or a refused whole message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Reason code.
    pub reason: RejectReason,
    /// What exactly is wrong.
    pub detail: String,
    /// The vehicle, when it could be read.
    pub vehicle_id: Option<VehicleId>,
    /// The refused bytes: the batch element, or the whole message.
    pub raw: Bytes,
}

impl Rejection {
    /// A rejection of a whole message.
    pub fn message(reason: RejectReason, detail: impl Into<String>, raw: &Bytes) -> Self {
        Self {
            reason,
            detail: detail.into(),
            vehicle_id: None,
            raw: raw.clone(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Outcome per element of a message, in the order sent.
pub type DecodedMessage = Vec<Result<Ping, Rejection>>;

/// Decodes and validates one message.
///
/// `Err` means the whole message was refused (not decodable, too large,
/// empty or too long a batch); otherwise every element has its own outcome.
pub fn decode_message(
    payload: &Bytes,
    encoding: Encoding,
    scope: VehicleScope<'_>,
    validator: &Validator,
    now_ms: i64,
) -> Result<DecodedMessage, Rejection> {
    let limits = validator.config();
    if payload.len() > limits.max_payload_bytes {
        return Err(Rejection::message(
            RejectReason::Oversize,
            format!(
                "message is {} bytes, at most {} are allowed",
                payload.len(),
                limits.max_payload_bytes
            ),
            payload,
        ));
    }
    // Split first (cheap: no element is decoded), so an oversize batch is
    // refused before any work is spent on its elements.
    let elements = match encoding {
        Encoding::Json => json_elements(payload)?,
        Encoding::Protobuf => proto_elements(payload)?,
    };
    if elements.is_empty() {
        return Err(Rejection::message(
            RejectReason::SchemaInvalid,
            "empty batch",
            payload,
        ));
    }
    if elements.len() > limits.max_batch {
        return Err(Rejection::message(
            RejectReason::Oversize,
            format!(
                "batch of {} pings, at most {} are allowed",
                elements.len(),
                limits.max_batch
            ),
            payload,
        ));
    }
    let mut batch_vehicle: Option<String> = None;
    let out = elements
        .into_iter()
        .map(|raw| {
            let candidate = match encoding {
                Encoding::Json => json_candidate(&raw)?,
                Encoding::Protobuf => proto_candidate(&raw)?,
            };
            let expected = match scope {
                VehicleScope::Topic(id) | VehicleScope::Device(id) => Some(id),
                VehicleScope::FirstPing => batch_vehicle.as_deref(),
            };
            if let Some(expected) = expected
                && candidate.vehicle_id != expected
            {
                let reason = match scope {
                    VehicleScope::Device(_) => RejectReason::Unauthorized,
                    _ => RejectReason::VehicleMismatch,
                };
                let detail = match scope {
                    VehicleScope::Topic(_) => format!(
                        "vehicle_id {:?} differs from the topic's {expected:?}",
                        candidate.vehicle_id
                    ),
                    VehicleScope::Device(_) => format!(
                        "device {expected:?} may not publish for vehicle {:?}",
                        candidate.vehicle_id
                    ),
                    VehicleScope::FirstPing => format!(
                        "vehicle_id {:?} differs from the batch's {expected:?}",
                        candidate.vehicle_id
                    ),
                };
                return Err(reject(Violation::new(reason, detail), &candidate, raw));
            }
            // Only a valid id can define the batch's vehicle.
            if batch_vehicle.is_none() && VehicleId::check(&candidate.vehicle_id).is_ok() {
                batch_vehicle = Some(candidate.vehicle_id.clone());
            }
            validator
                .validate(candidate, now_ms)
                .map_err(|e| reject(e.0, &e.1, raw))
        })
        .collect();
    Ok(out)
}

/// A refusal of one element, keeping the element's exact bytes.
fn reject(violation: Violation, candidate: &Candidate, raw: Bytes) -> Rejection {
    Rejection {
        reason: violation.reason,
        detail: violation.detail,
        vehicle_id: VehicleId::parse(&candidate.vehicle_id).ok(),
        raw,
    }
}

// ---------------------------------------------------------------- JSON

fn json_error(e: &serde_json::Error) -> RejectReason {
    match e.classify() {
        serde_json::error::Category::Data => RejectReason::SchemaInvalid,
        _ => RejectReason::DecodeFailed,
    }
}

/// The exact bytes of each ping of a JSON message.
fn json_elements(payload: &Bytes) -> Result<Vec<Bytes>, Rejection> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(payload).map_err(|e| {
                Rejection::message(json_error(&e), format!("invalid JSON batch: {e}"), payload)
            })?;
            Ok(items
                .into_iter()
                .map(|item| payload.slice_ref(item.get().as_bytes()))
                .collect())
        }
        Some(b'{') => Ok(vec![payload.clone()]),
        Some(_) => {
            // Let serde_json say what it is (a number, a string, garbage).
            let reason = match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
                Ok(_) => RejectReason::SchemaInvalid,
                Err(e) => json_error(&e),
            };
            Err(Rejection::message(
                reason,
                "expected a JSON object (one ping) or an array (a batch)",
                payload,
            ))
        }
        None => Err(Rejection::message(
            RejectReason::DecodeFailed,
            "empty message",
            payload,
        )),
    }
}

fn json_candidate(raw: &Bytes) -> Result<Candidate, Rejection> {
    let wire: JsonPing<'_> = serde_json::from_slice(raw).map_err(|e| Rejection {
        reason: json_error(&e),
        detail: format!("invalid ping: {e}"),
        vehicle_id: None,
        raw: raw.clone(),
    })?;
    Ok(Candidate {
        vehicle_id: wire.vehicle_id.map(Cow::into_owned).unwrap_or_default(),
        seq: wire.seq,
        ts_ms: wire.ts.map(|t| t.0),
        lat: wire.lat,
        lon: wire.lon,
        alt_m: wire.alt_m,
        speed_kmh: wire.speed_kmh,
        heading_deg: wire.heading_deg,
        accuracy_m: wire.accuracy_m,
        soc_pct: wire.soc_pct,
        battery_v: wire.battery_v,
        charging: wire.charging,
        odometer_km: wire.odometer_km,
        ignition: wire.ignition,
        dtcs: wire
            .dtcs
            .unwrap_or_default()
            .into_iter()
            .map(Cow::into_owned)
            .collect(),
        attrs: wire.attrs.map(|a| a.0).unwrap_or_default(),
    })
}

/// A ping as JSON carries it. Unknown fields are ignored so that newer
/// firmware can talk to an older fleetpipe (extra data belongs in `attrs`).
#[derive(Deserialize)]
struct JsonPing<'a> {
    #[serde(borrow, default)]
    vehicle_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    ts: Option<JsonTs>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    alt_m: Option<f64>,
    #[serde(default)]
    speed_kmh: Option<f64>,
    #[serde(default)]
    heading_deg: Option<f64>,
    #[serde(default)]
    accuracy_m: Option<f64>,
    #[serde(default)]
    soc_pct: Option<f64>,
    #[serde(default)]
    battery_v: Option<f64>,
    #[serde(default)]
    charging: Option<bool>,
    #[serde(default)]
    odometer_km: Option<f64>,
    #[serde(default)]
    ignition: Option<bool>,
    #[serde(borrow, default)]
    dtcs: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    attrs: Option<JsonAttrs>,
}

/// `ts`: an RFC 3339 string or integer epoch milliseconds.
struct JsonTs(i64);

impl<'de> Deserialize<'de> for JsonTs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TsVisitor;
        impl Visitor<'_> for TsVisitor {
            type Value = JsonTs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp string or integer epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonTs, E> {
                Ok(JsonTs(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonTs, E> {
                i64::try_from(v)
                    .map(JsonTs)
                    .map_err(|_| E::custom(format!("ts {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonTs, E> {
                parse_rfc3339_ms(v)
                    .map(JsonTs)
                    .ok_or_else(|| E::custom(format!("ts {v:?} is not an RFC 3339 timestamp")))
            }
        }
        d.deserialize_any(TsVisitor)
    }
}

/// Parses an RFC 3339 timestamp into epoch milliseconds (sub-millisecond
/// digits are truncated).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// `attrs`: an object of scalar values, kept in the order sent so duplicate
/// keys can be reported.
struct JsonAttrs(Vec<(String, AttrValue)>);

impl<'de> Deserialize<'de> for JsonAttrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AttrsVisitor;
        impl<'de> Visitor<'de> for AttrsVisitor {
            type Value = JsonAttrs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of scalar values")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<JsonAttrs, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, JsonAttrValue>()? {
                    out.push((k, v.0));
                }
                Ok(JsonAttrs(out))
            }
        }
        d.deserialize_map(AttrsVisitor)
    }
}

struct JsonAttrValue(AttrValue);

impl<'de> Deserialize<'de> for JsonAttrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = JsonAttrValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsonAttrValue, E> {
                Ok(JsonAttrValue(AttrValue::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonAttrValue, E> {
                Ok(JsonAttrValue(AttrValue::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonAttrValue, E> {
                Ok(JsonAttrValue(match i64::try_from(v) {
                    Ok(i) => AttrValue::Int(i),
                    Err(_) => AttrValue::Float(v as f64),
                }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonAttrValue, E> {
                Ok(JsonAttrValue(AttrValue::Float(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonAttrValue, E> {
                Ok(JsonAttrValue(AttrValue::Str(v.to_owned())))
            }
        }
        d.deserialize_any(ValueVisitor)
    }
}

// ------------------------------------------------------------ Protobuf

/// The exact bytes of each ping of a Protobuf message: the whole payload for
/// a `Ping`, each field-32 entry for a `PingBatch` (unknown fields skipped).
fn proto_elements(payload: &Bytes) -> Result<Vec<Bytes>, Rejection> {
    if payload.is_empty() {
        return Err(Rejection::message(
            RejectReason::DecodeFailed,
            "empty message",
            payload,
        ));
    }
    if !payload.starts_with(&proto::PING_BATCH_PREFIX) {
        return Ok(vec![payload.clone()]);
    }
    proto_batch_entries(payload).map_err(|e| {
        Rejection::message(
            RejectReason::DecodeFailed,
            format!("invalid Protobuf batch: {e}"),
            payload,
        )
    })
}

/// Walks a `PingBatch` without decoding its pings.
fn proto_batch_entries(payload: &Bytes) -> Result<Vec<Bytes>, String> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut buf = &payload[..];
    let mut entries = Vec::new();
    let advance = |buf: &mut &[u8], n: u64| -> Result<(), String> {
        let n = usize::try_from(n).map_err(|_| "field length overflows".to_owned())?;
        *buf = buf
            .get(n..)
            .ok_or("field runs past the end of the message")?;
        Ok(())
    };
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|e| e.to_string())?;
            }
            WireType::SixtyFourBit => advance(&mut buf, 8)?,
            WireType::ThirtyTwoBit => advance(&mut buf, 4)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
                let start = payload.len() - buf.len();
                advance(&mut buf, len)?;
                if tag == 32 {
                    entries.push(payload.slice(start..payload.len() - buf.len()));
                }
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err("groups are not supported".into());
            }
        }
    }
    Ok(entries)
}

/// Decodes one Protobuf `Ping` element.
fn proto_candidate(raw: &Bytes) -> Result<Candidate, Rejection> {
    let element_err = |reason, detail: String| Rejection {
        reason,
        detail,
        vehicle_id: None,
        raw: raw.clone(),
    };
    let ping = proto::Ping::decode(raw.clone()).map_err(|e| {
        element_err(
            RejectReason::DecodeFailed,
            format!("invalid Protobuf ping: {e}"),
        )
    })?;
    from_proto(ping).map_err(|v| element_err(v.reason, v.detail))
}

/// Protobuf maps keep the last of duplicate keys (Protobuf semantics), so a
/// duplicate key cannot be detected here as it is in JSON.
fn from_proto(p: proto::Ping) -> Result<Candidate, Violation> {
    use proto::attr_value::Kind;
    let mut attrs = Vec::with_capacity(p.attrs.len());
    for (k, v) in p.attrs {
        let value = match v.kind {
            Some(Kind::StringValue(s)) => AttrValue::Str(s),
            Some(Kind::DoubleValue(d)) => AttrValue::Float(d),
            Some(Kind::IntValue(i)) => AttrValue::Int(i),
            Some(Kind::BoolValue(b)) => AttrValue::Bool(b),
            None => {
                return Err(Violation::new(
                    RejectReason::SchemaInvalid,
                    format!("attrs[{k:?}] has no value"),
                ));
            }
        };
        attrs.push((k, value));
    }
    Ok(Candidate {
        vehicle_id: p.vehicle_id,
        seq: p.seq,
        ts_ms: p.ts_ms,
        lat: p.lat,
        lon: p.lon,
        alt_m: p.alt_m,
        speed_kmh: p.speed_kmh,
        heading_deg: p.heading_deg,
        accuracy_m: p.accuracy_m,
        soc_pct: p.soc_pct,
        battery_v: p.battery_v,
        charging: p.charging,
        odometer_km: p.odometer_km,
        ignition: p.ignition,
        dtcs: p.dtcs,
        attrs,
    })
}

/// Re-encodes a validated ping in `encoding`, for dead-lettering a ping that
/// was refused after decoding (rate limit): the same data, not necessarily
/// the same bytes.
pub fn encode_ping(ping: &Ping, encoding: Encoding) -> Bytes {
    match encoding {
        // Serializing a Ping (plain data, string keys) cannot fail.
        Encoding::Json => Bytes::from(serde_json::to_vec(ping).unwrap_or_default()),
        Encoding::Protobuf => Bytes::from(proto::Ping::from(ping).encode_to_vec()),
    }
}

#[cfg(test)]
mod tests;
