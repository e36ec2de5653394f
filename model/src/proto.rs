//! Rust types generated from `proto/fleetpipe/v1/telemetry.proto`, the
//! Protobuf half of wire contract v1.
#![allow(missing_docs, clippy::all, missing_debug_implementations)]

include!(concat!(env!("OUT_DIR"), "/fleetpipe.v1.rs"));

/// First two bytes of every encoded [`PingBatch`]: the tag of field 32,
/// wire type 2 (`32 << 3 | 2 = 258`, as a varint). A [`Ping`] never has
/// field 32, so this prefix tells the two messages apart.
pub const PING_BATCH_PREFIX: [u8; 2] = [0x82, 0x02];

impl From<&crate::Ping> for Ping {
    /// The wire form of a validated ping (e.g. for a Protobuf output topic).
    fn from(p: &crate::Ping) -> Self {
        use attr_value::Kind;
        Ping {
            vehicle_id: p.vehicle_id.to_string(),
            seq: p.seq,
            ts_ms: Some(p.ts_ms),
            lat: Some(p.lat),
            lon: Some(p.lon),
            alt_m: p.alt_m,
            speed_kmh: p.speed_kmh,
            heading_deg: p.heading_deg,
            accuracy_m: p.accuracy_m,
            soc_pct: p.soc_pct,
            battery_v: p.battery_v,
            charging: p.charging,
            odometer_km: p.odometer_km,
            ignition: p.ignition,
            dtcs: p.dtcs.clone(),
            attrs: p
                .attrs
                .iter()
                .map(|(k, v)| {
                    let kind = match v {
                        crate::AttrValue::Str(s) => Kind::StringValue(s.clone()),
                        crate::AttrValue::Float(d) => Kind::DoubleValue(*d),
                        crate::AttrValue::Int(i) => Kind::IntValue(*i),
                        crate::AttrValue::Bool(b) => Kind::BoolValue(*b),
                    };
                    (k.clone(), AttrValue { kind: Some(kind) })
                })
                .collect(),
        }
    }
}
