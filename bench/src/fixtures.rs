//! Deterministic, realistic telemetry payloads (wire contract v1).
//!
//! Two kinds of sender are modelled:
//!
//! - a **phone** app that posts JSON ([`json_ping`], [`json_batch`]): an RFC
//!   3339 `ts` string, position with fix accuracy, speed and heading, the
//!   car's state of charge and two `attrs` entries;
//! - a **firmware** unit that publishes Protobuf ([`proto_ping`],
//!   [`proto_batch`]): epoch-millisecond `ts_ms`, ignition, odometer,
//!   12 V battery voltage and, now and then, an OBD-II trouble code.
//!
//! Ping `i` of a vehicle is a pure function of the vehicle id, `i` and
//! `now_ms`: no clock and no global random state are read, so the same
//! arguments give the same bytes on every run and machine. The vehicle drives
//! a slow loop of roughly 2 km radius around central Berlin; small
//! pseudo-random jitter comes from [`XorShift64`] seeded with the vehicle id
//! and `i`.
//!
//! Every fixture built with a given `now_ms` is valid under the default
//! [`fleetpipe_ingest::validate::ValidationConfig`] when decoded with the same
//! `now_ms` and a scope that names its vehicle (or
//! [`fleetpipe_ingest::codec::VehicleScope::FirstPing`]): a single ping is
//! stamped one second before `now_ms`, and the pings of a batch of `n` are one
//! second apart, the last one second before `now_ms`. Keep `n` within the
//! validator's `max_batch` (1000 by default) for an accepted batch.

use fleetpipe_model::ping::Rfc3339Millis;
use fleetpipe_model::proto;
use prost::Message as _;
use serde_json::Value;

/// Vehicle id of the phone-style JSON fixtures ([`json_ping`], [`json_batch`]).
pub const JSON_VEHICLE: &str = "phone-berlin-0001";

/// Vehicle id of the firmware-style Protobuf fixtures ([`proto_ping`], [`proto_batch`]).
pub const PROTO_VEHICLE: &str = "truck-berlin-0042";

/// A fixed receive time for reproducible runs: 2026-11-23T08:00:00Z in epoch
/// milliseconds (the instant the ingest tests use as well).
pub const REFERENCE_NOW_MS: i64 = 1_795_420_800_000;

/// Interval between consecutive pings of a batch, milliseconds.
pub const PING_INTERVAL_MS: i64 = 1_000;

/// Centre of the loop the fixture vehicles drive (Berlin, Alexanderplatz), degrees.
const CENTER: (f64, f64) = (52.5219, 13.4132);
/// Radius of the loop, degrees of latitude (~2 km).
const LOOP_RADIUS_DEG: f64 = 0.018;
/// How far along the loop a vehicle moves per ping, radians.
const STEP_RAD: f64 = 0.004;

/// A tiny xorshift64* pseudo-random generator: deterministic and dependency-free,
/// good enough for jitter in fixtures and simulations (not for cryptography).
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator seeded with `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        // SplitMix64 finaliser: spreads close seeds apart and never yields 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform value in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform value in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

/// FNV-1a of a vehicle id, so that each vehicle gets its own jitter stream.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Rounds to `digits` decimal places, as devices do when they print numbers.
fn round_to(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (x * k).round() / k
}

/// The state shared by both encodings for ping `i` of `vehicle`.
struct Motion {
    lat: f64,
    lon: f64,
    heading_deg: f64,
    speed_kmh: f64,
    accuracy_m: f64,
    alt_m: f64,
    rng: XorShift64,
}

fn motion(vehicle: &str, i: u64) -> Motion {
    let mut rng = XorShift64::new(fnv1a(vehicle) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Each vehicle starts at its own point of the loop.
    let start = (fnv1a(vehicle) % 628) as f64 / 100.0;
    let angle = start + (i % 1_000_000) as f64 * STEP_RAD;
    let (sin, cos) = angle.sin_cos();
    // Longitude degrees are shorter at this latitude: stretch to keep a circle.
    let lon_scale = 1.0 / CENTER.0.to_radians().cos();
    let lat = CENTER.0 + LOOP_RADIUS_DEG * sin + rng.range(-2e-5, 2e-5);
    let lon = CENTER.1 + LOOP_RADIUS_DEG * lon_scale * cos + rng.range(-2e-5, 2e-5);
    // Counter-clockwise travel: velocity (east, north) = (-sin, cos), whose
    // compass course (clockwise from north) is -angle.
    let heading = (-angle.to_degrees()).rem_euclid(360.0);
    Motion {
        lat: round_to(lat, 7),
        lon: round_to(lon, 7),
        heading_deg: round_to(heading, 1).rem_euclid(360.0),
        speed_kmh: round_to(rng.range(18.0, 55.0), 1),
        accuracy_m: round_to(rng.range(3.0, 15.0), 1),
        alt_m: round_to(34.0 + rng.range(-3.0, 3.0), 1),
        rng,
    }
}

/// Device time of element `index` of a batch of `n` received at `now_ms`.
fn batch_ts(now_ms: i64, n: usize, index: usize) -> i64 {
    let back = i64::try_from(n - index).unwrap_or(i64::MAX);
    now_ms.saturating_sub(back.saturating_mul(PING_INTERVAL_MS))
}

/// The JSON object of ping `i` of phone `vehicle`, stamped `ts_ms`.
///
/// Written by hand rather than through `serde_json::Value` so that the keys
/// come in the order a phone app's serializer emits them (`vehicle_id`
/// first), not alphabetically.
fn json_object(vehicle: &str, i: u64, ts_ms: i64) -> String {
    let mut m = motion(vehicle, i);
    // The car discharges from 90 % to 20 % and starts over, charging at the bottom.
    let cycle = i % 700;
    let soc = round_to(90.0 - cycle as f64 * 0.1, 1);
    let charging = cycle >= 690;
    let sats = 6 + m.rng.next_u64() % 10;
    // A JSON string literal, escaped as needed (ids are usually plain ASCII).
    let vehicle = Value::from(vehicle);
    let ts = Rfc3339Millis(ts_ms);
    let Motion {
        lat,
        lon,
        speed_kmh,
        heading_deg,
        accuracy_m,
        ..
    } = m;
    format!(
        r#"{{"vehicle_id":{vehicle},"seq":{i},"ts":"{ts}","lat":{lat},"lon":{lon},"speed_kmh":{speed_kmh},"heading_deg":{heading_deg},"accuracy_m":{accuracy_m},"soc_pct":{soc},"charging":{charging},"attrs":{{"app_version":"4.2.1","gps_sats":{sats}}}}}"#
    )
}

/// Ping `i` of firmware unit `vehicle`, stamped `ts_ms`.
fn proto_value(vehicle: &str, i: u64, ts_ms: i64) -> proto::Ping {
    use proto::attr_value::Kind;
    let mut m = motion(vehicle, i);
    let battery_v = round_to(m.rng.range(13.6, 14.4), 2);
    let rssi = -50 - (m.rng.next_u64() % 40) as i64;
    // A misfire is reported now and then, as real fleets see.
    let dtcs = if i % 50 == 7 {
        vec!["P0301".to_owned()]
    } else {
        Vec::new()
    };
    let attrs = [
        ("fw".to_owned(), Kind::StringValue("2.7.0-rc1".to_owned())),
        ("rssi_dbm".to_owned(), Kind::IntValue(rssi)),
    ]
    .into_iter()
    .map(|(k, kind)| (k, proto::AttrValue { kind: Some(kind) }))
    .collect();
    proto::Ping {
        vehicle_id: vehicle.to_owned(),
        seq: Some(i),
        ts_ms: Some(ts_ms),
        lat: Some(m.lat),
        lon: Some(m.lon),
        alt_m: Some(m.alt_m),
        speed_kmh: Some(m.speed_kmh),
        heading_deg: Some(m.heading_deg),
        accuracy_m: Some(m.accuracy_m),
        soc_pct: None,
        battery_v: Some(battery_v),
        charging: None,
        odometer_km: Some(round_to(84_512.3 + (i % 10_000_000) as f64 * 0.012, 3)),
        ignition: Some(true),
        dtcs,
        attrs,
    }
}

/// Ping `i` of phone `vehicle` as a JSON object, stamped one second before `now_ms`.
pub fn json_ping_of(vehicle: &str, i: u64, now_ms: i64) -> Vec<u8> {
    json_object(vehicle, i, now_ms.saturating_sub(PING_INTERVAL_MS)).into_bytes()
}

/// A JSON array of pings `0..n` of phone `vehicle`, one second apart, the
/// last one second before `now_ms`.
pub fn json_batch_of(vehicle: &str, n: usize, now_ms: i64) -> Vec<u8> {
    let mut out = String::with_capacity(n * 256 + 2);
    out.push('[');
    for k in 0..n {
        if k > 0 {
            out.push(',');
        }
        out.push_str(&json_object(vehicle, k as u64, batch_ts(now_ms, n, k)));
    }
    out.push(']');
    out.into_bytes()
}

/// Ping `i` of firmware unit `vehicle` as a Protobuf `Ping`, stamped one
/// second before `now_ms`.
pub fn proto_ping_of(vehicle: &str, i: u64, now_ms: i64) -> Vec<u8> {
    proto_value(vehicle, i, now_ms.saturating_sub(PING_INTERVAL_MS)).encode_to_vec()
}

/// A Protobuf `PingBatch` of pings `0..n` of firmware unit `vehicle`, one
/// second apart, the last one second before `now_ms`.
pub fn proto_batch_of(vehicle: &str, n: usize, now_ms: i64) -> Vec<u8> {
    proto::PingBatch {
        pings: (0..n)
            .map(|k| proto_value(vehicle, k as u64, batch_ts(now_ms, n, k)))
            .collect(),
    }
    .encode_to_vec()
}

/// Ping `i` of [`JSON_VEHICLE`], a phone, as one JSON object (see [`json_ping_of`]).
///
/// Carries `vehicle_id`, `seq`, an RFC 3339 `ts`, `lat`/`lon`, `speed_kmh`,
/// `heading_deg`, `accuracy_m`, `soc_pct`, `charging` and two `attrs`.
pub fn json_ping(i: u64, now_ms: i64) -> Vec<u8> {
    json_ping_of(JSON_VEHICLE, i, now_ms)
}

/// A JSON array of `n` pings of [`JSON_VEHICLE`] (see [`json_batch_of`]).
pub fn json_batch(n: usize, now_ms: i64) -> Vec<u8> {
    json_batch_of(JSON_VEHICLE, n, now_ms)
}

/// Ping `i` of [`PROTO_VEHICLE`], a firmware unit, as a Protobuf
/// `fleetpipe.v1.Ping` (see [`proto_ping_of`]).
///
/// Carries `ts_ms`, position, altitude, speed, heading, accuracy, `ignition`,
/// `odometer_km`, `battery_v`, two `attrs` and, for every 50th `i` (`i % 50 == 7`),
/// the trouble code `P0301`.
pub fn proto_ping(i: u64, now_ms: i64) -> Vec<u8> {
    proto_ping_of(PROTO_VEHICLE, i, now_ms)
}

/// A Protobuf `fleetpipe.v1.PingBatch` of `n` pings of [`PROTO_VEHICLE`]
/// (see [`proto_batch_of`]).
pub fn proto_batch(n: usize, now_ms: i64) -> Vec<u8> {
    proto_batch_of(PROTO_VEHICLE, n, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fleetpipe_ingest::codec::{DecodedMessage, Encoding, VehicleScope, decode_message};
    use fleetpipe_ingest::validate::{ValidationConfig, Validator};

    const NOW: i64 = REFERENCE_NOW_MS;

    fn decode(payload: Vec<u8>, encoding: Encoding, vehicle: &str) -> DecodedMessage {
        let validator = Validator::new(ValidationConfig::default());
        let payload = Bytes::from(payload);
        decode_message(
            &payload,
            encoding,
            VehicleScope::Topic(vehicle),
            &validator,
            NOW,
        )
        .unwrap_or_else(|r| panic!("message refused: {r}"))
    }

    fn assert_all_ok(out: &DecodedMessage, n: usize) {
        assert_eq!(out.len(), n);
        for (k, outcome) in out.iter().enumerate() {
            assert!(outcome.is_ok(), "element {k}: {outcome:?}");
        }
    }

    #[test]
    fn single_pings_decode_to_valid_pings() {
        for i in [0, 1, 7, 57, 689, 690, 999, 123_456, u64::MAX] {
            let json = decode(json_ping(i, NOW), Encoding::Json, JSON_VEHICLE);
            assert_all_ok(&json, 1);
            let pb = decode(proto_ping(i, NOW), Encoding::Protobuf, PROTO_VEHICLE);
            assert_all_ok(&pb, 1);
        }
    }

    #[test]
    fn batches_decode_to_n_valid_pings() {
        for n in [1, 2, 100, 1000] {
            let json = decode(json_batch(n, NOW), Encoding::Json, JSON_VEHICLE);
            assert_all_ok(&json, n);
            let pb = decode(proto_batch(n, NOW), Encoding::Protobuf, PROTO_VEHICLE);
            assert_all_ok(&pb, n);
        }
    }

    #[test]
    fn pings_carry_the_documented_fields() {
        let json = decode(json_ping(3, NOW), Encoding::Json, JSON_VEHICLE);
        let p = json[0].as_ref().unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(p.vehicle_id.as_str(), JSON_VEHICLE);
        assert_eq!((p.seq, p.ts_ms), (Some(3), NOW - PING_INTERVAL_MS));
        assert!(p.speed_kmh.is_some() && p.heading_deg.is_some() && p.accuracy_m.is_some());
        assert!(p.soc_pct.is_some() && p.charging.is_some());
        assert_eq!(p.attrs.len(), 2);

        let pb = decode(proto_ping(7, NOW), Encoding::Protobuf, PROTO_VEHICLE);
        let p = pb[0].as_ref().unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(p.ignition, Some(true));
        assert!(p.odometer_km.is_some() && p.battery_v.is_some());
        assert_eq!(p.dtcs, vec!["P0301".to_owned()]);
        let pb = decode(proto_ping(8, NOW), Encoding::Protobuf, PROTO_VEHICLE);
        assert!(pb[0].as_ref().is_ok_and(|p| p.dtcs.is_empty()));
    }

    #[test]
    fn batch_pings_are_ordered_and_one_second_apart() {
        let out = decode(json_batch(5, NOW), Encoding::Json, JSON_VEHICLE);
        let ts: Vec<i64> = out
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|p| p.ts_ms))
            .collect();
        assert_eq!(
            ts,
            (1..=5)
                .rev()
                .map(|k| NOW - k * PING_INTERVAL_MS)
                .collect::<Vec<_>>()
        );
        assert_eq!(&proto_batch(3, NOW)[..2], &proto::PING_BATCH_PREFIX);
    }

    #[test]
    fn fixtures_are_deterministic_and_vary_with_i() {
        assert_eq!(json_batch(10, NOW), json_batch(10, NOW));
        assert_eq!(proto_batch(10, NOW), proto_batch(10, NOW));
        assert_ne!(json_ping(1, NOW), json_ping(2, NOW));
        assert_ne!(proto_ping(1, NOW), proto_ping(2, NOW));
        assert_ne!(json_ping_of("a", 1, NOW), json_ping_of("b", 1, NOW));
    }

    #[test]
    fn json_is_well_formed_with_vehicle_id_first() {
        let one = json_ping(9, NOW);
        assert!(one.starts_with(br#"{"vehicle_id":"phone-berlin-0001","seq":9,"ts":""#));
        let v: Value = serde_json::from_slice(&one).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["attrs"].as_object().map(|a| a.len()), Some(2));
        let odd = json_batch_of("quote\"and\\slash", 2, NOW);
        let v: Value = serde_json::from_slice(&odd).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v[1]["vehicle_id"], "quote\"and\\slash");
        assert_eq!(json_batch(0, NOW), b"[]");
    }

    #[test]
    fn xorshift_stays_in_range() {
        let mut rng = XorShift64::new(0);
        for _ in 0..10_000 {
            let x = rng.range(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&x));
        }
    }
}
