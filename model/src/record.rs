//! Records that flow between stages.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::ack::Ack;
use crate::event::VehicleEvent;
use crate::ping::{Ping, VehicleId, deserialize_ts_ms, serialize_ts_ms};
use crate::reason::RejectReason;

/// The gateway a record entered through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gateway {
    /// The embedded MQTT broker.
    Mqtt,
    /// An external MQTT broker, through fleetpipe's shared subscription.
    MqttExternal,
    /// `GET /v1/ws`.
    Websocket,
    /// `POST /v1/pings`.
    Http,
    /// Not a device gateway: a record the `writer` role read from an output
    /// topic and could not decode, kept as a dead letter.
    Kafka,
}

impl Gateway {
    /// Every gateway devices reach (used to pre-register ingest metrics).
    pub const ALL: [Gateway; 4] = [
        Gateway::Mqtt,
        Gateway::MqttExternal,
        Gateway::Websocket,
        Gateway::Http,
    ];

    /// The name used in metrics labels and records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Gateway::Mqtt => "mqtt",
            Gateway::MqttExternal => "mqtt_external",
            Gateway::Websocket => "websocket",
            Gateway::Http => "http",
            Gateway::Kafka => "kafka",
        }
    }

    /// The gateway [`Gateway::as_str`] names, if any.
    pub fn from_name(name: &str) -> Option<Gateway> {
        Gateway::ALL
            .into_iter()
            .chain([Gateway::Kafka])
            .find(|g| g.as_str() == name)
    }
}

/// Where and when a record was received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Gateway it arrived through.
    #[serde(rename = "source")]
    pub gateway: Gateway,
    /// The authenticated device of a WebSocket/HTTP request, or the MQTT
    /// client id of a publish refused by the topic ACL; absent otherwise
    /// (the embedded broker's link does not say which client published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Arc<str>>,
    /// Receive time on the fleetpipe host, epoch milliseconds.
    #[serde(
        serialize_with = "serialize_ts_ms",
        deserialize_with = "deserialize_ts_ms"
    )]
    pub received_at: i64,
}

/// A ping that passed validation, on its way to enrichment.
#[derive(Debug)]
pub struct Accepted {
    /// The validated ping.
    pub ping: Ping,
    /// Where it came from.
    pub origin: Origin,
    /// Settled by the sinks.
    pub ack: Ack,
}

/// An enriched ping, ready for the sinks.
///
/// It serializes as the telemetry record of the output schema
/// (docs/output-format.md §4) and deserializes from it, with an untracked
/// [`Ack`] ([`Ack::none`]); [`crate::topic_record::decode`] also checks the
/// record's headers and key.
#[derive(Debug, Serialize, Deserialize)]
pub struct TelemetryRecord {
    /// Output schema version ([`crate::SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// The ping as validated.
    #[serde(flatten)]
    pub ping: Ping,
    /// Where it came from.
    #[serde(flatten)]
    pub origin: Origin,
    /// H3 cells of the position, one per configured resolution, as
    /// `(resolution, cell index)` in hex.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_cells",
        deserialize_with = "deserialize_cells"
    )]
    pub h3: Vec<(u8, u64)>,
    /// What enrichment derived from the vehicle's history.
    #[serde(flatten)]
    pub enrichment: Enrichment,
    /// Settled by the sinks.
    #[serde(skip, default = "Ack::none")]
    pub ack: Ack,
}

impl TelemetryRecord {
    /// `accepted` as a record with nothing derived yet: no H3 cells, empty
    /// enrichment (what a gateway forwards, and where enrichment starts).
    pub fn unenriched(accepted: Accepted) -> Self {
        let Accepted { ping, origin, ack } = accepted;
        TelemetryRecord {
            schema_version: crate::SCHEMA_VERSION,
            ping,
            origin,
            h3: Vec::new(),
            enrichment: Enrichment::default(),
            ack,
        }
    }
}

/// Per-ping facts derived from the vehicle's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Enrichment {
    /// Ids of the geofences containing the position (exact test), in the
    /// order of the fence file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fences: Vec<Arc<str>>,
    /// Great-circle distance from the vehicle's previous ping in device time,
    /// metres; absent for its first ping and for late pings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
    /// Speed implied by `distance_m` over the time since the previous ping,
    /// km/h; only when the ping carries no `speed_kmh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_speed_kmh: Option<f64>,
    /// Quality flags.
    #[serde(default, skip_serializing_if = "PingFlags::is_empty")]
    pub flags: PingFlags,
}

/// Quality flags of a ping, serialized as a list of names
/// (`["late", "jump"]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PingFlags {
    /// Older (device time) than what already drove the vehicle's state: it
    /// is stored but changes no state and emits no event.
    pub late: bool,
    /// Same (vehicle, ts, seq) as a ping already seen.
    pub duplicate: bool,
    /// Implies a speed above the plausible maximum from the previous ping: a
    /// GPS outlier, ignored by the state machine.
    pub jump: bool,
}

impl PingFlags {
    /// No flag set.
    pub const fn is_empty(&self) -> bool {
        !(self.late || self.duplicate || self.jump)
    }

    /// Names of the set flags, in a fixed order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.late, "late"),
            (self.duplicate, "duplicate"),
            (self.jump, "jump"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
    }
}

impl Serialize for PingFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// Reads the list of names [`PingFlags`] serializes as, in any order; an
/// unknown name is an error.
impl<'de> Deserialize<'de> for PingFlags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Flag {
            Late,
            Duplicate,
            Jump,
        }
        struct FlagsVisitor;
        impl<'de> Visitor<'de> for FlagsVisitor {
            type Value = PingFlags;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of flag names (late, duplicate, jump)")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PingFlags, A::Error> {
                let mut flags = PingFlags::default();
                while let Some(flag) = seq.next_element::<Flag>()? {
                    match flag {
                        Flag::Late => flags.late = true,
                        Flag::Duplicate => flags.duplicate = true,
                        Flag::Jump => flags.jump = true,
                    }
                }
                Ok(flags)
            }
        }
        d.deserialize_seq(FlagsVisitor)
    }
}

fn serialize_cells<S: serde::Serializer>(cells: &[(u8, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(cells.len()))?;
    for (res, cell) in cells {
        // Written straight into the output: no string allocated per cell.
        map.serialize_entry(&Displayed(res), &Displayed(format_args!("{cell:x}")))?;
    }
    map.end()
}

/// Serializes as the string its `Display` writes.
struct Displayed<T>(T);

impl<T: std::fmt::Display> Serialize for Displayed<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Reads the `h3` object [`serialize_cells`] writes, keeping its order:
/// keys are resolutions in decimal, values cell indexes in hex.
fn deserialize_cells<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u8, u64)>, D::Error> {
    struct CellsVisitor;
    impl<'de> Visitor<'de> for CellsVisitor {
        type Value = Vec<(u8, u64)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of H3 cells: resolution (decimal) to cell index (hex)")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut cells = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
            while let Some((Parsed(res), Parsed(cell))) =
                map.next_entry::<Parsed<Resolution>, Parsed<CellIndex>>()?
            {
                cells.push((res.0, cell.0));
            }
            Ok(cells)
        }
    }
    d.deserialize_map(CellsVisitor)
}

/// A value deserialized from a string by its [`FromStr`](std::str::FromStr).
struct Parsed<T>(T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: std::str::FromStr<Err = &'static str>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ParsedVisitor<T>(std::marker::PhantomData<T>);
        impl<T: std::str::FromStr<Err = &'static str>> Visitor<'_> for ParsedVisitor<T> {
            type Value = Parsed<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed<T>, E> {
                v.parse()
                    .map(Parsed)
                    .map_err(|why| E::custom(format_args!("{v:?}: {why}")))
            }
        }
        d.deserialize_str(ParsedVisitor(std::marker::PhantomData))
    }
}

/// An H3 resolution as an `h3` key: decimal digits.
struct Resolution(u8);

impl std::str::FromStr for Resolution {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("an H3 resolution is written in decimal digits");
        }
        s.parse()
            .map(Resolution)
            .map_err(|_| "H3 resolution out of range")
    }
}

/// An H3 cell index as an `h3` value: 1 to 16 hex digits.
struct CellIndex(u64);

impl std::str::FromStr for CellIndex {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("an H3 cell index is written in 1 to 16 hex digits");
        }
        u64::from_str_radix(s, 16)
            .map(CellIndex)
            .map_err(|_| "H3 cell index out of range")
    }
}

/// Input that was refused, kept with its reason so nothing is lost silently.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    /// Output schema version ([`crate::SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Reason code.
    pub reason: RejectReason,
    /// Human-readable explanation, e.g. `lat 91.5 is outside [-90, 90]`.
    pub detail: String,
    /// The vehicle, when known: from the payload, else from the MQTT topic or
    /// the authenticated device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vehicle_id: Option<VehicleId>,
    /// MQTT topic, when it came through MQTT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Where it came from.
    #[serde(flatten)]
    pub origin: Origin,
    /// The refused bytes exactly as received (one element of a batch, or the
    /// whole message when the message itself was refused).
    #[serde(serialize_with = "serialize_base64")]
    pub raw: Bytes,
    /// Settled by the sinks.
    #[serde(skip)]
    pub ack: Ack,
}

fn serialize_base64<S: serde::Serializer>(raw: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(raw))
}

/// What the gateways hand to enrichment: an accepted ping or a dead letter.
/// In one process they travel on separate queues; between a `gateway` and
/// an `enrich` role, both go through the raw topic
/// ([`crate::topic_record::encode_raw`]).
#[derive(Debug)]
pub enum RawRecord {
    /// A ping that passed validation.
    Ping(Accepted),
    /// A rejected input.
    DeadLetter(DeadLetter),
}

impl RawRecord {
    /// The record's acknowledgement handle.
    pub fn into_ack(self) -> Ack {
        match self {
            RawRecord::Ping(a) => a.ack,
            RawRecord::DeadLetter(d) => d.ack,
        }
    }
}

/// Everything a sink writes.
// Telemetry is by far the most common variant; boxing it would cost an
// allocation per ping to save moving ~200 bytes through a channel.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SinkRecord {
    /// An accepted, enriched ping.
    Telemetry(TelemetryRecord),
    /// A rejected input.
    DeadLetter(DeadLetter),
    /// A state-change event derived by enrichment.
    Event(VehicleEvent),
}

impl SinkRecord {
    /// The record with `ack` as its acknowledgement (a record read back
    /// from a topic, whose offset waits for it).
    pub fn with_ack(self, ack: Ack) -> SinkRecord {
        match self {
            SinkRecord::Telemetry(r) => SinkRecord::Telemetry(TelemetryRecord { ack, ..r }),
            SinkRecord::DeadLetter(r) => SinkRecord::DeadLetter(DeadLetter { ack, ..r }),
            SinkRecord::Event(mut e) => {
                e.ack = ack;
                SinkRecord::Event(e)
            }
        }
    }

    /// A copy of the record for another sink. Its ack is split from this
    /// one's, so the sender hears "delivered" only when every copy is.
    pub fn fork(&self) -> SinkRecord {
        match self {
            SinkRecord::Telemetry(r) => SinkRecord::Telemetry(TelemetryRecord {
                schema_version: r.schema_version,
                ping: r.ping.clone(),
                origin: r.origin.clone(),
                h3: r.h3.clone(),
                enrichment: r.enrichment.clone(),
                ack: r.ack.split(),
            }),
            SinkRecord::DeadLetter(r) => SinkRecord::DeadLetter(DeadLetter {
                schema_version: r.schema_version,
                reason: r.reason,
                detail: r.detail.clone(),
                vehicle_id: r.vehicle_id.clone(),
                topic: r.topic.clone(),
                origin: r.origin.clone(),
                raw: r.raw.clone(),
                ack: r.ack.split(),
            }),
            SinkRecord::Event(e) => SinkRecord::Event(e.fork()),
        }
    }

    /// The record's acknowledgement handle.
    pub fn into_ack(self) -> Ack {
        match self {
            SinkRecord::Telemetry(r) => r.ack,
            SinkRecord::DeadLetter(r) => r.ack,
            SinkRecord::Event(e) => e.ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{AckStatus, BatchAck};

    fn record(ack: Ack) -> SinkRecord {
        SinkRecord::DeadLetter(DeadLetter {
            schema_version: crate::SCHEMA_VERSION,
            reason: RejectReason::Oversize,
            detail: "too big".into(),
            vehicle_id: None,
            topic: None,
            origin: Origin {
                gateway: Gateway::Http,
                client: None,
                received_at: 0,
            },
            raw: Bytes::from_static(b"x"),
            ack,
        })
    }

    fn status(batch: BatchAck) -> AckStatus {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|rt| rt.block_on(batch.wait()))
            .unwrap_or(AckStatus::Failed)
    }

    #[test]
    fn a_fork_must_be_delivered_too() {
        let batch = BatchAck::new();
        let original = record(batch.ack());
        let copy = original.fork();
        original.into_ack().delivered();
        copy.into_ack().failed();
        assert_eq!(status(batch), AckStatus::Failed);

        let batch = BatchAck::new();
        let original = record(batch.ack());
        let copy = original.fork();
        original.into_ack().delivered();
        copy.into_ack().delivered();
        assert_eq!(status(batch), AckStatus::Delivered);
    }
}
