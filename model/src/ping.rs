//! The validated ping: one position and state report of one vehicle.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Longest vehicle id wire contract v1 accepts.
pub const VEHICLE_ID_MAX_LEN: usize = 64;

/// A vehicle's identifier: 1-64 characters of `[A-Za-z0-9_.:-]`.
///
/// Cheap to clone (shared), because every record, event and per-vehicle
/// state of a vehicle carries it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VehicleId(Arc<str>);

/// Why a string is not a valid [`VehicleId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VehicleIdError {
    /// Empty string.
    #[error("vehicle_id is empty")]
    Empty,
    /// More than 64 bytes.
    #[error("vehicle_id is {0} bytes long, at most 64 are allowed")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9_.:-]`.
    #[error("vehicle_id contains {0:?}; only [A-Za-z0-9_.:-] are allowed")]
    BadChar(char),
}

impl VehicleId {
    /// Checks `s` against the contract without allocating.
    pub fn check(s: &str) -> Result<(), VehicleIdError> {
        if s.is_empty() {
            return Err(VehicleIdError::Empty);
        }
        if s.len() > VEHICLE_ID_MAX_LEN {
            return Err(VehicleIdError::TooLong(s.len()));
        }
        match s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            Some(c) => Err(VehicleIdError::BadChar(c)),
            None => Ok(()),
        }
    }

    /// Validates and wraps `s`.
    pub fn parse(s: &str) -> Result<Self, VehicleIdError> {
        Self::check(s)?;
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard, in `0..shards`, that owns this vehicle wherever work is
    /// split by vehicle (enrichment workers, database writers), so one
    /// vehicle's records always take the same path, in order. `shards` of 0
    /// counts as 1.
    pub fn shard(&self, shards: usize) -> usize {
        shard_of(self.as_str(), shards)
    }
}

/// [`VehicleId::shard`] of a string.
///
/// The hash is spelled out here rather than taken from std: `DefaultHasher`'s
/// algorithm may change between Rust releases, and routing must not move
/// vehicles between workers (and their state) just because the toolchain did.
fn shard_of(vehicle_id: &str, shards: usize) -> usize {
    (fmix64(fnv1a64(vehicle_id.as_bytes())) % shards.max(1) as u64) as usize
}

/// 64-bit FNV-1a: simple and fast on short ids.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// MurmurHash3's 64-bit finalizer. FNV's low bits mix poorly (ids differing
/// in their last character would cluster on a power-of-two shard count);
/// this spreads every input bit over the whole word.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

impl fmt::Debug for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for VehicleId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for VehicleId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Reads a string and validates it ([`VehicleId::parse`]): an invalid id is
/// a deserialization error naming the rule it breaks.
impl<'de> Deserialize<'de> for VehicleId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = VehicleId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a vehicle id string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VehicleId, E> {
                VehicleId::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(IdVisitor)
    }
}

/// A scalar value of a ping's `attrs` map.
///
/// Read back (untagged) in variant order: a JSON integer is an `Int` when
/// it fits `i64`, a number with a fraction or exponent (`21.5`, `1.0`, as
/// `Float` is always written) or a larger integer is a `Float`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number with a fraction (or too large for `i64`).
    Float(f64),
    /// A string.
    Str(String),
}

/// One validated report of a vehicle. Every field satisfies wire contract v1:
/// coordinates are finite and in range, the timestamp is inside the accepted
/// window, lists and strings are within their limits.
///
/// It serializes as the ping fields of the output schema
/// (docs/output-format.md §4) and deserializes from them (absent optional
/// fields are `None` or empty, `ts` is read as an RFC 3339 timestamp).
/// Deserializing checks the vehicle id but not the rest of the wire
/// contract: it reads records fleetpipe wrote
/// ([`crate::topic_record::decode`]), not device input, which only the
/// ingest crate's validation turns into a `Ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// Vehicle the ping belongs to.
    pub vehicle_id: VehicleId,
    /// Sequence number, increasing per device boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Device time, milliseconds since the Unix epoch (UTC).
    #[serde(
        rename = "ts",
        serialize_with = "serialize_ts_ms",
        deserialize_with = "deserialize_ts_ms"
    )]
    pub ts_ms: i64,
    /// Latitude, WGS84 degrees.
    pub lat: f64,
    /// Longitude, WGS84 degrees.
    pub lon: f64,
    /// Altitude above the ellipsoid, metres.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alt_m: Option<f64>,
    /// Speed reported by the device, km/h.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_kmh: Option<f64>,
    /// Course over ground, degrees clockwise from north, `[0, 360)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heading_deg: Option<f64>,
    /// Horizontal accuracy of the fix, metres (radius).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    /// Battery state of charge, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soc_pct: Option<f64>,
    /// Battery voltage, volts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_v: Option<f64>,
    /// Whether the vehicle is charging.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
    /// Odometer, kilometres.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub odometer_km: Option<f64>,
    /// Whether the ignition is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignition: Option<bool>,
    /// Active OBD-II diagnostic trouble codes, e.g. `P0301`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dtcs: Vec<String>,
    /// Extra scalar values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, AttrValue>,
}

impl Ping {
    /// A ping of `vehicle_id` at `ts_ms` and (`lat`, `lon`) with every
    /// optional field absent; set the others with struct update syntax. It
    /// checks nothing: input from devices becomes a `Ping` only through
    /// validation (the ingest crate), this is for code that makes pings
    /// itself (tests, benchmarks, replay tools).
    pub fn new(vehicle_id: VehicleId, ts_ms: i64, lat: f64, lon: f64) -> Self {
        Self {
            vehicle_id,
            seq: None,
            ts_ms,
            lat,
            lon,
            alt_m: None,
            speed_kmh: None,
            heading_deg: None,
            accuracy_m: None,
            soc_pct: None,
            battery_v: None,
            charging: None,
            odometer_km: None,
            ignition: None,
            dtcs: Vec::new(),
            attrs: BTreeMap::new(),
        }
    }
}

/// Serializes epoch milliseconds as an RFC 3339 UTC timestamp with
/// millisecond precision, e.g. `2026-11-23T08:00:00.123Z`.
pub fn serialize_ts_ms<S: Serializer>(ts_ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Rfc3339Millis(*ts_ms))
}

/// Deserializes an RFC 3339 timestamp (as [`serialize_ts_ms`] writes it)
/// to epoch milliseconds: the inverse of [`serialize_ts_ms`]. See
/// [`parse_rfc3339_ms`] for what it accepts.
pub fn deserialize_ts_ms<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct TsVisitor;
    impl Visitor<'_> for TsVisitor {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            parse_rfc3339_ms(v).map_err(E::custom)
        }
    }
    d.deserialize_str(TsVisitor)
}

/// Why a string is not a timestamp [`parse_rfc3339_ms`] reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 timestamp: {reason}")]
pub struct TimestampError {
    /// The refused string (its first 40 characters).
    input: String,
    /// What is wrong with it.
    reason: String,
}

/// Reads an RFC 3339 timestamp, e.g. `2026-11-23T08:00:00.123Z`, as epoch
/// milliseconds: the inverse of [`Rfc3339Millis`] for years 0000 to 9999.
/// Any offset is accepted (and applied); a fraction finer than milliseconds
/// is rounded down (towards the past).
///
/// # Errors
///
/// Anything that is not an RFC 3339 date-time (e.g. epoch numbers in a
/// string, a missing offset, a year outside 0000 to 9999).
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, TimestampError> {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(s, &Rfc3339) {
        // Years 0000 to 9999 are within ±2^53 ms: the conversion cannot fail.
        Ok(t) => i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).map_err(|_| {
            TimestampError {
                input: s.chars().take(40).collect(),
                reason: "out of range".to_owned(),
            }
        }),
        Err(e) => Err(TimestampError {
            input: s.chars().take(40).collect(),
            reason: e.to_string(),
        }),
    }
}

/// Displays epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`
/// ([`parse_rfc3339_ms`] reads it back).
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339Millis(pub i64);

impl fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

/// Gregorian date from days since 1970-01-01 (Howard Hinnant's algorithm);
/// formatting is on the hot output path, so no calendar library round trip.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn sharding_is_pinned() {
        // Computed independently (Python); a change here moves vehicles
        // between enrichment workers (and their state) and database writers.
        assert_eq!(fmix64(fnv1a64(b"van-1")), 0xffee_6e92_42c5_200a);
        assert_eq!(shard_of("van-1", 3), 1);
        assert_eq!(shard_of("van-2", 3), 2);
        assert_eq!(shard_of("van-1", 8), 2);
        assert_eq!(shard_of("van-2", 8), 7);
        assert_eq!(shard_of("truck:0042", 3), 0);
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0);
        let van = VehicleId::parse("van-2").map(|v| v.shard(8));
        assert_eq!(van, Ok(7));
    }

    #[test]
    fn sharding_spreads_similar_ids_evenly() {
        for shards in [2, 3, 8, 12] {
            let mut counts = vec![0usize; shards];
            for i in 0..6000 {
                let index = shard_of(&format!("veh-{i}"), shards);
                assert!(index < shards);
                counts[index] += 1;
            }
            let mean = 6000 / shards;
            for (index, &count) in counts.iter().enumerate() {
                assert!(
                    count.abs_diff(mean) * 100 <= mean * 15,
                    "shard {index} of {shards} got {count}, mean {mean}"
                );
            }
        }
    }

    #[test]
    fn vehicle_id_rules() {
        assert!(VehicleId::parse("van-42.a:b_c").is_ok());
        assert_eq!(VehicleId::parse(""), Err(VehicleIdError::Empty));
        assert_eq!(
            VehicleId::parse(&"x".repeat(65)),
            Err(VehicleIdError::TooLong(65))
        );
        assert!(VehicleId::parse(&"x".repeat(64)).is_ok());
        assert_eq!(VehicleId::parse("a/b"), Err(VehicleIdError::BadChar('/')));
        assert_eq!(VehicleId::parse("vé"), Err(VehicleIdError::BadChar('é')));
    }

    #[test]
    fn rfc3339_millis_matches_known_instants() {
        assert_eq!(Rfc3339Millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339Millis(1_795_420_800_123).to_string(),
            "2026-11-23T08:00:00.123Z"
        );
        assert_eq!(
            Rfc3339Millis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(Rfc3339Millis(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_reads_back_what_rfc3339_millis_writes() {
        for ms in [
            0,
            -1,
            1_795_420_800_123,
            951_782_400_000,
            -62_167_219_200_000,
            253_402_300_799_999,
        ] {
            assert_eq!(parse_rfc3339_ms(&Rfc3339Millis(ms).to_string()), Ok(ms));
        }
        // Other offsets, precisions and the separators RFC 3339 allows
        // (lower case; a space for the `T`, its §5.6 note).
        let t = 1_795_420_800_123;
        for text in [
            "2026-11-23T09:00:00.123+01:00",
            "2026-11-23T03:30:00.123-04:30",
            "2026-11-23T08:00:00.123456789Z",
            "2026-11-23t08:00:00.123z",
            "2026-11-23 08:00:00.123Z",
        ] {
            assert_eq!(parse_rfc3339_ms(text), Ok(t), "{text}");
        }
        assert_eq!(parse_rfc3339_ms("2026-11-23T08:00:00Z"), Ok(t - 123));
        // Sub-millisecond fractions round towards the past, also before 1970.
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.9995Z"), Ok(-1));
    }

    #[test]
    fn rfc3339_refuses_what_is_not_a_timestamp() {
        for text in [
            "",
            "1795420800123",
            "2026-11-23",
            "2026-11-23T08:00:00.123",
            "2026-13-01T00:00:00.000Z",
            "2026-02-30T00:00:00.000Z",
            "10000-01-01T00:00:00.000Z",
            "-001-01-01T00:00:00.000Z",
        ] {
            let error = parse_rfc3339_ms(text).expect_err(text);
            assert!(
                error.to_string().contains("is not an RFC 3339 timestamp"),
                "{error}"
            );
        }
        let long = "9".repeat(1000);
        let message = parse_rfc3339_ms(&long).map_err(|e| e.to_string());
        assert!(message.is_err_and(|m| m.len() < 200));
    }

    #[test]
    fn vehicle_ids_are_validated_when_read() {
        let id: Result<VehicleId, _> = serde_json::from_str("\"van-42\"");
        assert_eq!(id.map(|v| v.to_string()).ok().as_deref(), Some("van-42"));
        for bad in ["\"\"", "\"a/b\"", "42", "null"] {
            let id: Result<VehicleId, _> = serde_json::from_str(bad);
            assert!(id.is_err(), "{bad}");
        }
    }
}
