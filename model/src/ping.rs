//! The validated ping: one position and state report of one vehicle.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

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

/// A scalar value of a ping's `attrs` map.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ping {
    /// Vehicle the ping belongs to.
    pub vehicle_id: VehicleId,
    /// Sequence number, increasing per device boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Device time, milliseconds since the Unix epoch (UTC).
    #[serde(rename = "ts", serialize_with = "serialize_ts_ms")]
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dtcs: Vec<String>,
    /// Extra scalar values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
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

/// Displays epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
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
}
