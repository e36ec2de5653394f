//! State-change events: the facts enrichment derives from a vehicle's pings
//! ("entered depot 7", "battery critical", "went offline"), as CloudEvents 1.0.
//!
//! An event's id is a function of what it says, not of when or where it was
//! computed: UUIDv5 over (vehicle, type, key, device time), where the key
//! names what the event is about within the vehicle (a fence id, a DTC code,
//! or empty). Replaying the same pings therefore yields the same ids, and a
//! consumer (or the `vehicle_events` table's primary key) drops the copies a
//! redelivery or a restart produces.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ack::Ack;
use crate::ping::{VehicleId, deserialize_ts_ms, serialize_ts_ms};

/// CloudEvents spec version written into every event.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";

/// The `datacontenttype` of every event: `data` is JSON.
pub const EVENT_DATA_CONTENT_TYPE: &str = "application/json";

/// Namespace of event ids (UUIDv5), fixed forever: changing it changes every
/// id and breaks consumers' deduplication across the change.
const EVENT_ID_NAMESPACE: uuid::Uuid = uuid::uuid!("5d1f0e4c-9a63-4b8e-8f43-2f6c1b7a9e10");

/// What happened. The CloudEvents `type` is [`EventType::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// The vehicle is inside a geofence it was outside of.
    #[serde(rename = "geofence.entered")]
    GeofenceEntered,
    /// The vehicle left a geofence it was inside of.
    #[serde(rename = "geofence.exited")]
    GeofenceExited,
    /// The vehicle has been inside a geofence for its `dwell_s`.
    #[serde(rename = "geofence.dwell")]
    GeofenceDwell,
    /// Stopped inside an arrival geofence.
    #[serde(rename = "vehicle.arrived")]
    VehicleArrived,
    /// Left an arrival geofence it had arrived at.
    #[serde(rename = "vehicle.departed")]
    VehicleDeparted,
    /// A trip started.
    #[serde(rename = "vehicle.motion_started")]
    MotionStarted,
    /// A trip ended.
    #[serde(rename = "vehicle.motion_stopped")]
    MotionStopped,
    /// State of charge fell below the low threshold.
    #[serde(rename = "battery.low")]
    BatteryLow,
    /// State of charge fell below the critical threshold.
    #[serde(rename = "battery.critical")]
    BatteryCritical,
    /// State of charge is back above the recovery threshold.
    #[serde(rename = "battery.recovered")]
    BatteryRecovered,
    /// The vehicle started charging.
    #[serde(rename = "charging.started")]
    ChargingStarted,
    /// The vehicle stopped charging.
    #[serde(rename = "charging.stopped")]
    ChargingStopped,
    /// A diagnostic trouble code became active.
    #[serde(rename = "diagnostics.dtc_set")]
    DtcSet,
    /// A diagnostic trouble code is no longer active.
    #[serde(rename = "diagnostics.dtc_cleared")]
    DtcCleared,
    /// Above the speed limit for the configured minimum time.
    #[serde(rename = "vehicle.overspeed")]
    Overspeed,
    /// The vehicle reported again after being offline (or for the first time).
    #[serde(rename = "vehicle.online")]
    Online,
    /// No ping arrived for the configured time.
    #[serde(rename = "vehicle.offline")]
    Offline,
    /// The overall state (offline, parked, idle, moving, charging) changed.
    #[serde(rename = "vehicle.state_changed")]
    StateChanged,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 18] = [
        EventType::GeofenceEntered,
        EventType::GeofenceExited,
        EventType::GeofenceDwell,
        EventType::VehicleArrived,
        EventType::VehicleDeparted,
        EventType::MotionStarted,
        EventType::MotionStopped,
        EventType::BatteryLow,
        EventType::BatteryCritical,
        EventType::BatteryRecovered,
        EventType::ChargingStarted,
        EventType::ChargingStopped,
        EventType::DtcSet,
        EventType::DtcCleared,
        EventType::Overspeed,
        EventType::Online,
        EventType::Offline,
        EventType::StateChanged,
    ];

    /// The CloudEvents `type` attribute.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::GeofenceEntered => "geofence.entered",
            EventType::GeofenceExited => "geofence.exited",
            EventType::GeofenceDwell => "geofence.dwell",
            EventType::VehicleArrived => "vehicle.arrived",
            EventType::VehicleDeparted => "vehicle.departed",
            EventType::MotionStarted => "vehicle.motion_started",
            EventType::MotionStopped => "vehicle.motion_stopped",
            EventType::BatteryLow => "battery.low",
            EventType::BatteryCritical => "battery.critical",
            EventType::BatteryRecovered => "battery.recovered",
            EventType::ChargingStarted => "charging.started",
            EventType::ChargingStopped => "charging.stopped",
            EventType::DtcSet => "diagnostics.dtc_set",
            EventType::DtcCleared => "diagnostics.dtc_cleared",
            EventType::Overspeed => "vehicle.overspeed",
            EventType::Online => "vehicle.online",
            EventType::Offline => "vehicle.offline",
            EventType::StateChanged => "vehicle.state_changed",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state-change event, serialized as a CloudEvents 1.0 JSON object
/// (structured mode):
///
/// ```json
/// {"specversion":"1.0","id":"…","source":"fleetpipe","type":"geofence.entered",
///  "subject":"van-42","time":"2026-11-23T08:00:00.000Z",
///  "datacontenttype":"application/json","data":{"fence_id":"depot-7",…}}
/// ```
///
/// It deserializes from that object (from JSON only: `data` is kept as the
/// raw JSON it was), with an untracked [`Ack`]; a `specversion` other than
/// [`CLOUDEVENTS_SPEC_VERSION`] or a `datacontenttype` other than
/// [`EVENT_DATA_CONTENT_TYPE`] is refused, other (extension) attributes
/// are ignored.
#[derive(Debug, Serialize)]
pub struct VehicleEvent {
    /// Always [`CLOUDEVENTS_SPEC_VERSION`].
    pub specversion: &'static str,
    /// Deterministic id, see [`event_id`].
    pub id: String,
    /// CloudEvents `source`: the configured name of this fleetpipe
    /// deployment (`enrich.events.source`).
    pub source: std::sync::Arc<str>,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The vehicle.
    pub subject: VehicleId,
    /// Device time of the ping that caused the event (for `vehicle.offline`,
    /// the last ping's time plus the offline timeout), epoch milliseconds.
    #[serde(rename = "time", serialize_with = "serialize_ts_ms")]
    pub time_ms: i64,
    /// Always `application/json`.
    pub datacontenttype: &'static str,
    /// Type-specific payload, serialized once by enrichment so every sink
    /// writes the same bytes.
    pub data: Box<RawValue>,
    /// Settled by the sinks.
    #[serde(skip)]
    pub ack: Ack,
}

impl VehicleEvent {
    /// An event with its deterministic id. `key` names what the event is
    /// about within the vehicle (fence id, DTC code) or is empty.
    pub fn new(
        source: std::sync::Arc<str>,
        event_type: EventType,
        subject: VehicleId,
        key: &str,
        time_ms: i64,
        data: Box<RawValue>,
        ack: Ack,
    ) -> Self {
        let id = event_id(&subject, event_type, key, time_ms);
        Self {
            specversion: CLOUDEVENTS_SPEC_VERSION,
            id,
            source,
            event_type,
            subject,
            time_ms,
            datacontenttype: EVENT_DATA_CONTENT_TYPE,
            data,
            ack,
        }
    }

    /// A copy for another sink, its ack split from this one's.
    pub fn fork(&self) -> Self {
        Self {
            specversion: self.specversion,
            id: self.id.clone(),
            source: self.source.clone(),
            event_type: self.event_type,
            subject: self.subject.clone(),
            time_ms: self.time_ms,
            datacontenttype: self.datacontenttype,
            data: self.data.clone(),
            ack: self.ack.split(),
        }
    }

    /// The event as one line of CloudEvents JSON.
    pub fn to_json(&self) -> String {
        // Every field serializes infallibly (strings, numbers, raw JSON).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What an event's JSON holds, read before [`VehicleEvent`]'s fixed
/// attributes are checked.
#[derive(Deserialize)]
struct EventJson {
    specversion: String,
    id: String,
    source: std::sync::Arc<str>,
    #[serde(rename = "type")]
    event_type: EventType,
    subject: VehicleId,
    #[serde(rename = "time", deserialize_with = "deserialize_ts_ms")]
    time_ms: i64,
    datacontenttype: String,
    data: Box<RawValue>,
}

impl<'de> Deserialize<'de> for VehicleEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        VehicleEvent::try_from(EventJson::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<EventJson> for VehicleEvent {
    type Error = String;

    fn try_from(e: EventJson) -> Result<Self, String> {
        if e.specversion != CLOUDEVENTS_SPEC_VERSION {
            return Err(format!(
                "specversion {:?} is not {CLOUDEVENTS_SPEC_VERSION:?}",
                e.specversion
            ));
        }
        if e.datacontenttype != EVENT_DATA_CONTENT_TYPE {
            return Err(format!(
                "datacontenttype {:?} is not {EVENT_DATA_CONTENT_TYPE:?}",
                e.datacontenttype
            ));
        }
        Ok(VehicleEvent {
            specversion: CLOUDEVENTS_SPEC_VERSION,
            id: e.id,
            source: e.source,
            event_type: e.event_type,
            subject: e.subject,
            time_ms: e.time_ms,
            datacontenttype: EVENT_DATA_CONTENT_TYPE,
            data: e.data,
            ack: Ack::none(),
        })
    }
}

/// The id of the event of `event_type` about `key` of `vehicle` at device
/// time `time_ms`: a UUIDv5 of those four, separated by a byte no vehicle id,
/// fence id or DTC may contain.
pub fn event_id(vehicle: &VehicleId, event_type: EventType, key: &str, time_ms: i64) -> String {
    let name = format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        vehicle.as_str(),
        event_type.as_str(),
        key,
        time_ms
    );
    uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vehicle(id: &str) -> VehicleId {
        VehicleId::parse(id).unwrap_or_else(|e| panic!("{e}"))
    }

    fn data(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn serializes_as_a_cloudevent() {
        let event = VehicleEvent::new(
            "fleetpipe".into(),
            EventType::GeofenceEntered,
            vehicle("van-42"),
            "depot-7",
            1_795_420_800_123,
            data(r#"{"fence_id":"depot-7"}"#),
            Ack::none(),
        );
        let json: serde_json::Value =
            serde_json::from_str(&event.to_json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "geofence.entered");
        assert_eq!(json["subject"], "van-42");
        assert_eq!(json["source"], "fleetpipe");
        assert_eq!(json["time"], "2026-11-23T08:00:00.123Z");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["fence_id"], "depot-7");
        assert_eq!(json["id"].as_str().map(str::len), Some(36));
    }

    #[test]
    fn ids_are_deterministic_and_tell_events_apart() {
        let v = vehicle("van-42");
        let a = event_id(&v, EventType::GeofenceEntered, "depot-7", 1000);
        assert_eq!(a, event_id(&v, EventType::GeofenceEntered, "depot-7", 1000));
        let others = [
            event_id(
                &vehicle("van-43"),
                EventType::GeofenceEntered,
                "depot-7",
                1000,
            ),
            event_id(&v, EventType::GeofenceExited, "depot-7", 1000),
            event_id(&v, EventType::GeofenceEntered, "depot-8", 1000),
            event_id(&v, EventType::GeofenceEntered, "depot-7", 1001),
            // The separator keeps "ab"+"c" apart from "a"+"bc".
            event_id(
                &vehicle("van-4"),
                EventType::GeofenceEntered,
                "2depot-7",
                1000,
            ),
        ];
        for other in others {
            assert_ne!(a, other);
        }
        // Pinned: the id of a given event never changes between releases.
        assert_eq!(
            event_id(&vehicle("van-42"), EventType::Offline, "", 0),
            uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, b"van-42\x1fvehicle.offline\x1f\x1f0")
                .to_string()
        );
    }

    #[test]
    fn type_names_match_serde_names() {
        for t in EventType::ALL {
            let json = serde_json::to_string(&t).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
    }
}
