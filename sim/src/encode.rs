//! Wire contract v1 encodings of a [`SimMessage`] (docs/wire-contract.md,
//! §2-§4), and the MQTT topic it goes to (§9).
//!
//! JSON: one object for a one-ping message, an array for a batch; `ts` as
//! an RFC 3339 UTC string with milliseconds (a phone app's style), keys in
//! the contract's order, numbers in Rust's shortest round-trip form.
//! Protobuf: `fleetpipe.v1.Ping` for one ping, `fleetpipe.v1.PingBatch`
//! (which starts with the bytes `0x82 0x02`) for a batch.

use std::io::Write as _;

use bytes::Bytes;
use fleetpipe_model::ping::Rfc3339Millis;
use fleetpipe_model::proto;
use prost::Message as _;

use crate::{SimMessage, SimPing};

pub use fleetpipe_model::wire::Encoding;

/// Encodes a message in `encoding`.
pub fn encode(msg: &SimMessage, encoding: Encoding) -> Bytes {
    match encoding {
        Encoding::Json => encode_json(msg),
        Encoding::Protobuf => encode_protobuf(msg),
    }
}

/// The MQTT topic of a message: `{prefix}/{vehicle_id}/telemetry` for
/// JSON, `{prefix}/{vehicle_id}/telemetry/pb` for Protobuf.
pub fn mqtt_topic(prefix: &str, vehicle_id: &str, encoding: Encoding) -> String {
    fleetpipe_model::wire::telemetry_topic(prefix, vehicle_id, encoding)
}

/// JSON: one object, or an array when the message holds more than one ping.
pub fn encode_json(msg: &SimMessage) -> Bytes {
    let mut out = Vec::with_capacity(msg.pings.len() * 320 + 2);
    // The id as a JSON string literal; escaped in case a caller built a
    // message by hand (the fleet's ids never need escaping).
    let id = serde_json::to_string(&msg.vehicle_id).unwrap_or_else(|_| "\"\"".to_owned());
    if let [one] = msg.pings.as_slice() {
        json_object(&mut out, &id, one);
    } else {
        out.push(b'[');
        for (i, p) in msg.pings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_object(&mut out, &id, p);
        }
        out.push(b']');
    }
    Bytes::from(out)
}

/// Writes one ping object. Writing to a `Vec` cannot fail, so the results
/// of `write!` are ignored.
fn json_object(out: &mut Vec<u8>, id: &str, p: &SimPing) {
    let _ = write!(
        out,
        r#"{{"vehicle_id":{id},"seq":{},"ts":"{}","lat":{},"lon":{}"#,
        p.seq,
        Rfc3339Millis(p.ts_ms),
        p.lat,
        p.lon
    );
    // Every number is finite by construction; a non-finite one is left
    // out rather than written as invalid JSON.
    fn num(out: &mut Vec<u8>, name: &str, v: f64) {
        if v.is_finite() {
            let _ = write!(out, r#","{name}":{v}"#);
        }
    }
    num(out, "alt_m", p.alt_m);
    num(out, "speed_kmh", p.speed_kmh);
    if let Some(h) = p.heading_deg {
        num(out, "heading_deg", h);
    }
    num(out, "accuracy_m", p.accuracy_m);
    num(out, "soc_pct", p.soc_pct);
    num(out, "battery_v", p.battery_v);
    let _ = write!(out, r#","charging":{}"#, p.charging);
    num(out, "odometer_km", p.odometer_km);
    let _ = write!(out, r#","ignition":{}"#, p.ignition);
    if let Some(dtc) = p.dtc {
        let _ = write!(out, r#","dtcs":["{dtc}"]"#);
    }
    out.push(b'}');
}

/// Protobuf: a `Ping` for one ping, a `PingBatch` for more.
pub fn encode_protobuf(msg: &SimMessage) -> Bytes {
    if let [one] = msg.pings.as_slice() {
        Bytes::from(to_proto(&msg.vehicle_id, one).encode_to_vec())
    } else {
        let batch = proto::PingBatch {
            pings: msg
                .pings
                .iter()
                .map(|p| to_proto(&msg.vehicle_id, p))
                .collect(),
        };
        Bytes::from(batch.encode_to_vec())
    }
}

/// The Protobuf form of one ping of `vehicle_id`.
pub fn to_proto(vehicle_id: &str, p: &SimPing) -> proto::Ping {
    proto::Ping {
        vehicle_id: vehicle_id.to_owned(),
        seq: Some(p.seq),
        ts_ms: Some(p.ts_ms),
        lat: Some(p.lat),
        lon: Some(p.lon),
        alt_m: Some(p.alt_m),
        speed_kmh: Some(p.speed_kmh),
        heading_deg: p.heading_deg,
        accuracy_m: Some(p.accuracy_m),
        soc_pct: Some(p.soc_pct),
        battery_v: Some(p.battery_v),
        charging: Some(p.charging),
        odometer_km: Some(p.odometer_km),
        ignition: Some(p.ignition),
        dtcs: p.dtc.iter().map(|d| (*d).to_owned()).collect(),
        attrs: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(seq: u64) -> SimPing {
        SimPing {
            seq,
            ts_ms: 1_795_420_800_123,
            lat: 52.520008,
            lon: 13.404954,
            alt_m: 34.5,
            speed_kmh: 48.0,
            heading_deg: Some(271.5),
            accuracy_m: 4.2,
            soc_pct: 81.5,
            battery_v: 14.05,
            charging: false,
            odometer_km: 12345.678,
            ignition: true,
            dtc: Some("P0301"),
        }
    }

    #[test]
    fn json_matches_the_contract_example() {
        let msg = SimMessage {
            vehicle: 1,
            vehicle_id: "van-1".into(),
            pings: vec![ping(42)],
        };
        let text = encode_json(&msg);
        assert_eq!(
            std::str::from_utf8(&text).unwrap_or_default(),
            r#"{"vehicle_id":"van-1","seq":42,"ts":"2026-11-23T08:00:00.123Z","lat":52.520008,"lon":13.404954,"alt_m":34.5,"speed_kmh":48,"heading_deg":271.5,"accuracy_m":4.2,"soc_pct":81.5,"battery_v":14.05,"charging":false,"odometer_km":12345.678,"ignition":true,"dtcs":["P0301"]}"#
        );
        let batch = SimMessage {
            pings: vec![ping(1), ping(2)],
            ..msg
        };
        let v: serde_json::Value = serde_json::from_slice(&encode_json(&batch)).unwrap_or_default();
        assert_eq!(v[1]["seq"], 2);
        assert_eq!(&encode_protobuf(&batch)[..2], &proto::PING_BATCH_PREFIX);
    }
}
