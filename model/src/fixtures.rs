//! Records for tests of the crates that make or read them (the topic
//! record codec here, the Kafka sink): one set of fixtures, so every test
//! pins the same bytes.

#![allow(
    clippy::expect_used,
    reason = "test support: a bad fixture is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::{
    Ack, AttrValue, DeadLetter, Enrichment, EventType, Gateway, Origin, Ping, PingFlags,
    RejectReason, SCHEMA_VERSION, SinkRecord, TelemetryRecord, VehicleEvent, VehicleId,
};

/// 2026-11-23T08:00:00.000Z.
pub const T0_MS: i64 = 1_795_420_800_000;
/// Raw bytes of dead letters: not UTF-8, so nothing may re-encode them.
pub const RAW: &[u8] = b"{\"lat\":91.5,\xff\x00\x80}";

/// The origin of every fixture record.
pub fn origin() -> Origin {
    Origin {
        gateway: Gateway::Mqtt,
        client: Some(Arc::from("dev-7")),
        received_at: T0_MS + 500,
    }
}

/// Vehicle `veh-{v:03}`.
pub fn vehicle(v: usize) -> VehicleId {
    VehicleId::parse(&format!("veh-{v:03}")).expect("valid id")
}

/// A ping with several optional fields set.
pub fn ping(vehicle_id: VehicleId, seq: u64) -> Ping {
    Ping {
        seq: Some(seq),
        speed_kmh: Some(42.5),
        soc_pct: Some(81.25),
        ignition: Some(true),
        dtcs: vec!["P0301".to_owned()],
        attrs: BTreeMap::from([("door".to_owned(), AttrValue::Str("open".to_owned()))]),
        ..Ping::new(vehicle_id, T0_MS + seq as i64, 52.52, 13.405)
    }
}

/// A telemetry record of [`ping`], with one H3 cell.
pub fn telemetry_record(vehicle_id: VehicleId, seq: u64, ack: Ack) -> TelemetryRecord {
    TelemetryRecord {
        schema_version: SCHEMA_VERSION,
        ping: ping(vehicle_id, seq),
        origin: origin(),
        h3: vec![(7, 0x871f_1d48_9fff_ffff)],
        enrichment: Enrichment::default(),
        ack,
    }
}

/// What enrichment derived, with every field set.
pub fn enrichment() -> Enrichment {
    Enrichment {
        fences: vec![Arc::from("depot-7"), Arc::from("city-centre")],
        distance_m: Some(152.25),
        derived_speed_kmh: Some(54.81),
        flags: PingFlags {
            late: false,
            duplicate: true,
            jump: true,
        },
    }
}

/// Event number `n` of vehicle `v`: every type in turn.
pub fn event(v: usize, n: u64, ack: Ack) -> SinkRecord {
    let data =
        RawValue::from_string(format!(r#"{{"n":{n},"fence_id":"depot-7"}}"#)).expect("valid JSON");
    SinkRecord::Event(VehicleEvent::new(
        Arc::from("fleetpipe-test"),
        EventType::ALL[n as usize % EventType::ALL.len()],
        vehicle(v),
        &format!("key-{n}"),
        T0_MS + n as i64,
        data,
        ack,
    ))
}

/// [`telemetry_record`] of vehicle `v`.
pub fn telemetry(v: usize, seq: u64, ack: Ack) -> SinkRecord {
    SinkRecord::Telemetry(telemetry_record(vehicle(v), seq, ack))
}

/// Dead letter number `n`.
pub fn dead_letter(n: u64, vehicle_id: Option<VehicleId>, ack: Ack) -> SinkRecord {
    SinkRecord::DeadLetter(DeadLetter {
        schema_version: SCHEMA_VERSION,
        reason: RejectReason::CoordInvalid,
        detail: format!("dead letter {n}: lat 91.5 is outside [-90, 90]"),
        topic: vehicle_id
            .as_ref()
            .map(|v| format!("fleet/v1/{v}/telemetry")),
        vehicle_id,
        origin: origin(),
        raw: Bytes::from_static(RAW),
        ack,
    })
}

/// A ping exercising every field kind, and the bytes prost 0.14 encodes for
/// its `fleetpipe.v1.Ping`, pinned so an accidental change of the wire
/// encoding shows.
pub fn full_ping() -> (Ping, &'static str) {
    let ping = Ping {
        vehicle_id: VehicleId::parse("van-42").expect("valid id"),
        seq: Some(300),
        ts_ms: 1_795_420_800_123,
        lat: 52.52,
        lon: 13.405,
        alt_m: Some(-12.5),
        speed_kmh: Some(42.5),
        heading_deg: Some(359.9),
        accuracy_m: Some(3.0),
        soc_pct: Some(81.25),
        battery_v: Some(12.6),
        charging: Some(false),
        odometer_km: Some(123_456.7),
        ignition: Some(true),
        dtcs: vec!["P0301".to_owned(), String::new()],
        attrs: BTreeMap::from([
            (String::new(), AttrValue::Str(String::new())),
            ("door".to_owned(), AttrValue::Str("open".to_owned())),
            ("neg".to_owned(), AttrValue::Int(-3)),
            ("temp".to_owned(), AttrValue::Float(-4.25)),
            ("big".to_owned(), AttrValue::Int(i64::MIN)),
            ("ok".to_owned(), AttrValue::Bool(false)),
        ]),
    };
    let prost = "0a0676616e2d343210ac0218fb88adbba03421c3f5285c8f424a40298fc2f5285ccf2a40\
                 3100000000000029c03900000000004045404166666666667e76404900000000000008\
                 40510000000000505440593333333333332940600069333333330b24fe4070017a0550\
                 303330317a0082010412020a008201120a03626967120b18ffffffffffffffffff0182\
                 010e0a04646f6f7212060a046f70656e8201090a036e6567120218058201080a026f6b\
                 120220008201110a0474656d7012091100000000000011c0";
    (ping, prost)
}

/// `bytes` as lower-case hex, to compare with a pinned encoding.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
