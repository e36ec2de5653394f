//! Validation of a decoded ping against wire contract v1.
//!
//! Pure and synchronous: the caller passes the current time, so the rules are
//! tested without a clock or a runtime.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetpipe_model::{AttrValue, Ping, RejectReason, VehicleId};
use serde::Deserialize;

/// Limits and rules applied to every ping on every gateway.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest message (MQTT payload, WebSocket frame, HTTP body) accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Most pings in one batch.
    pub max_batch: usize,
    /// Most diagnostic trouble codes in one ping.
    pub max_dtcs: usize,
    /// Most entries in one ping's `attrs`.
    pub max_attrs: usize,
    /// Longest `attrs` key or string value, in bytes.
    pub max_string_len: usize,
    /// How far in the past device time may be (a phone uploading a day of buffered data is normal).
    #[serde(with = "humantime_serde")]
    pub max_past: Duration,
    /// How far in the future device time may be (clock skew).
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Accept (0, 0) ("null island"); almost always a GPS without a fix, so off by default.
    pub allow_null_island: bool,
}

impl ValidationConfig {
    const fn defaults() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_batch: 1000,
            max_dtcs: 32,
            max_attrs: 32,
            max_string_len: 256,
            max_past: Duration::from_secs(7 * 24 * 3600),
            max_future: Duration::from_secs(5 * 60),
            allow_null_island: false,
        }
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self::defaults()
    }
}

/// A ping as decoded from JSON or Protobuf, before any rule is checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidate {
    /// As sent; checked against the vehicle id rules.
    pub vehicle_id: String,
    /// Sequence number.
    pub seq: Option<u64>,
    /// Device time, epoch milliseconds; `None` when missing.
    pub ts_ms: Option<i64>,
    /// Latitude; `None` when missing.
    pub lat: Option<f64>,
    /// Longitude; `None` when missing.
    pub lon: Option<f64>,
    /// Altitude, metres.
    pub alt_m: Option<f64>,
    /// Speed, km/h.
    pub speed_kmh: Option<f64>,
    /// Heading, degrees.
    pub heading_deg: Option<f64>,
    /// Fix accuracy, metres.
    pub accuracy_m: Option<f64>,
    /// State of charge, percent.
    pub soc_pct: Option<f64>,
    /// Battery voltage.
    pub battery_v: Option<f64>,
    /// Charging flag.
    pub charging: Option<bool>,
    /// Odometer, km.
    pub odometer_km: Option<f64>,
    /// Ignition flag.
    pub ignition: Option<bool>,
    /// Diagnostic trouble codes.
    pub dtcs: Vec<String>,
    /// Extra values, in the order sent (duplicates are refused).
    pub attrs: Vec<(String, AttrValue)>,
}

/// A rule a candidate broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Reason code.
    pub reason: RejectReason,
    /// What exactly is wrong, for the sender.
    pub detail: String,
}

impl Violation {
    pub(crate) fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Checks candidates against a [`ValidationConfig`].
#[derive(Debug, Clone)]
pub struct Validator {
    config: ValidationConfig,
    max_past_ms: i64,
    max_future_ms: i64,
}

/// Inclusive range check for an optional measurement.
fn check_range(name: &str, value: Option<f64>, min: f64, max: f64) -> Result<(), Violation> {
    match value {
        Some(v) if !(v.is_finite() && v >= min && v <= max) => Err(Violation::new(
            RejectReason::SchemaInvalid,
            format!("{name} {v} is outside [{min}, {max}]"),
        )),
        _ => Ok(()),
    }
}

/// OBD-II trouble code: a system letter, then 4 hex digits (`P0301`, `U0100`).
fn is_obd2_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 5
        && matches!(b[0], b'P' | b'C' | b'B' | b'U')
        && matches!(b[1], b'0'..=b'3')
        && b[2..]
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
}

impl Validator {
    /// A validator for `config`.
    pub fn new(config: ValidationConfig) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            max_past_ms: ms(config.max_past),
            max_future_ms: ms(config.max_future),
            config,
        }
    }

    /// The rules in force.
    pub fn config(&self) -> &ValidationConfig {
        &self.config
    }

    /// Checks every rule; `now_ms` is the receive time (epoch ms).
    ///
    /// Order matters for the reported reason: identity first, then required
    /// fields, coordinates, time, sizes, then the optional measurements.
    pub fn check(&self, c: &Candidate, now_ms: i64) -> Result<(), Violation> {
        VehicleId::check(&c.vehicle_id)
            .map_err(|e| Violation::new(RejectReason::SchemaInvalid, e.to_string()))?;
        let (Some(lat), Some(lon)) = (c.lat, c.lon) else {
            let missing = if c.lat.is_none() { "lat" } else { "lon" };
            return Err(Violation::new(
                RejectReason::SchemaInvalid,
                format!("missing required field {missing}"),
            ));
        };
        let Some(ts_ms) = c.ts_ms else {
            return Err(Violation::new(
                RejectReason::SchemaInvalid,
                "missing required field ts",
            ));
        };
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(Violation::new(
                RejectReason::CoordInvalid,
                format!("lat {lat} is outside [-90, 90]"),
            ));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(Violation::new(
                RejectReason::CoordInvalid,
                format!("lon {lon} is outside [-180, 180]"),
            ));
        }
        if lat == 0.0 && lon == 0.0 && !self.config.allow_null_island {
            return Err(Violation::new(
                RejectReason::CoordInvalid,
                "position (0, 0) is refused: the device most likely has no GPS fix",
            ));
        }
        if ts_ms > now_ms.saturating_add(self.max_future_ms) {
            return Err(Violation::new(
                RejectReason::TsFuture,
                format!(
                    "ts is {} ms ahead of server time, at most {} ms are allowed",
                    ts_ms.saturating_sub(now_ms),
                    self.max_future_ms
                ),
            ));
        }
        if ts_ms < now_ms.saturating_sub(self.max_past_ms) {
            return Err(Violation::new(
                RejectReason::TsPast,
                format!(
                    "ts is {} ms behind server time, at most {} ms are allowed",
                    now_ms.saturating_sub(ts_ms),
                    self.max_past_ms
                ),
            ));
        }
        self.check_sizes(c)?;
        check_range("alt_m", c.alt_m, -1_000.0, 100_000.0)?;
        check_range("speed_kmh", c.speed_kmh, 0.0, 1_000.0)?;
        check_range("accuracy_m", c.accuracy_m, 0.0, 1_000_000.0)?;
        check_range("soc_pct", c.soc_pct, 0.0, 100.0)?;
        check_range("battery_v", c.battery_v, 0.0, 2_000.0)?;
        check_range("odometer_km", c.odometer_km, 0.0, 100_000_000.0)?;
        if let Some(h) = c.heading_deg
            && !(h.is_finite() && (0.0..360.0).contains(&h))
        {
            return Err(Violation::new(
                RejectReason::SchemaInvalid,
                format!("heading_deg {h} is outside [0, 360)"),
            ));
        }
        if let Some(code) = c.dtcs.iter().find(|d| !is_obd2_code(d)) {
            return Err(Violation::new(
                RejectReason::SchemaInvalid,
                format!("dtc {code:?} is not an OBD-II code like \"P0301\""),
            ));
        }
        Ok(())
    }

    fn check_sizes(&self, c: &Candidate) -> Result<(), Violation> {
        let cfg = &self.config;
        if c.dtcs.len() > cfg.max_dtcs {
            return Err(Violation::new(
                RejectReason::Oversize,
                format!(
                    "{} dtcs, at most {} are allowed",
                    c.dtcs.len(),
                    cfg.max_dtcs
                ),
            ));
        }
        if c.attrs.len() > cfg.max_attrs {
            return Err(Violation::new(
                RejectReason::Oversize,
                format!(
                    "{} attrs, at most {} are allowed",
                    c.attrs.len(),
                    cfg.max_attrs
                ),
            ));
        }
        for (key, value) in &c.attrs {
            if key.is_empty() {
                return Err(Violation::new(
                    RejectReason::SchemaInvalid,
                    "attrs has an empty key",
                ));
            }
            if key.len() > cfg.max_string_len {
                return Err(Violation::new(
                    RejectReason::Oversize,
                    format!(
                        "attrs key of {} bytes, at most {} are allowed",
                        key.len(),
                        cfg.max_string_len
                    ),
                ));
            }
            match value {
                AttrValue::Str(s) if s.len() > cfg.max_string_len => {
                    return Err(Violation::new(
                        RejectReason::Oversize,
                        format!(
                            "attrs[{key:?}] is {} bytes, at most {} are allowed",
                            s.len(),
                            cfg.max_string_len
                        ),
                    ));
                }
                AttrValue::Float(f) if !f.is_finite() => {
                    return Err(Violation::new(
                        RejectReason::SchemaInvalid,
                        format!("attrs[{key:?}] is not a finite number"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks `c` and turns it into a [`Ping`].
    pub fn validate(&self, c: Candidate, now_ms: i64) -> Result<Ping, Box<(Violation, Candidate)>> {
        if let Err(v) = self.check(&c, now_ms) {
            return Err(Box::new((v, c)));
        }
        let mut attrs = BTreeMap::new();
        for (k, v) in c.attrs.iter() {
            if attrs.insert(k.clone(), v.clone()).is_some() {
                let v = Violation::new(
                    RejectReason::SchemaInvalid,
                    format!("attrs key {k:?} appears twice"),
                );
                return Err(Box::new((v, c)));
            }
        }
        // `check` proved these are present and valid.
        let (Ok(vehicle_id), Some(ts_ms), Some(lat), Some(lon)) =
            (VehicleId::parse(&c.vehicle_id), c.ts_ms, c.lat, c.lon)
        else {
            let v = Violation::new(RejectReason::SchemaInvalid, "incomplete ping");
            return Err(Box::new((v, c)));
        };
        Ok(Ping {
            vehicle_id,
            seq: c.seq,
            ts_ms,
            lat,
            lon,
            alt_m: c.alt_m,
            speed_kmh: c.speed_kmh,
            heading_deg: c.heading_deg,
            accuracy_m: c.accuracy_m,
            soc_pct: c.soc_pct,
            battery_v: c.battery_v,
            charging: c.charging,
            odometer_km: c.odometer_km,
            ignition: c.ignition,
            dtcs: c.dtcs,
            attrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_420_800_000;

    fn good() -> Candidate {
        Candidate {
            vehicle_id: "van-1".into(),
            seq: Some(1),
            ts_ms: Some(NOW - 1_000),
            lat: Some(52.52),
            lon: Some(13.405),
            ..Candidate::default()
        }
    }

    fn reason(c: Candidate) -> Option<RejectReason> {
        Validator::new(ValidationConfig::default())
            .check(&c, NOW)
            .err()
            .map(|v| v.reason)
    }

    #[test]
    fn accepts_a_good_ping() {
        let ping = Validator::new(ValidationConfig::default()).validate(good(), NOW);
        assert_eq!(
            ping.map(|p| p.vehicle_id.to_string()).ok(),
            Some("van-1".into())
        );
    }

    #[test]
    fn each_rule_gives_its_reason() {
        use RejectReason::*;
        let cases: Vec<(Candidate, RejectReason)> = vec![
            (
                Candidate {
                    vehicle_id: "".into(),
                    ..good()
                },
                SchemaInvalid,
            ),
            (
                Candidate {
                    vehicle_id: "a b".into(),
                    ..good()
                },
                SchemaInvalid,
            ),
            (
                Candidate {
                    lat: None,
                    ..good()
                },
                SchemaInvalid,
            ),
            (
                Candidate {
                    ts_ms: None,
                    ..good()
                },
                SchemaInvalid,
            ),
            (
                Candidate {
                    lat: Some(90.0001),
                    ..good()
                },
                CoordInvalid,
            ),
            (
                Candidate {
                    lon: Some(-180.5),
                    ..good()
                },
                CoordInvalid,
            ),
            (
                Candidate {
                    lat: Some(f64::NAN),
                    ..good()
                },
                CoordInvalid,
            ),
            (
                Candidate {
                    lon: Some(f64::INFINITY),
                    ..good()
                },
                CoordInvalid,
            ),
            (
                Candidate {
                    lat: Some(0.0),
                    lon: Some(0.0),
                    ..good()
                },
                CoordInvalid,
            ),
            (
                Candidate {
                    ts_ms: Some(NOW + 5 * 60_000 + 1),
                    ..good()
                },
                TsFuture,
            ),
            (
                Candidate {
                    ts_ms: Some(NOW - 7 * 86_400_000 - 1),
                    ..good()
                },
                TsPast,
            ),
            (
                Candidate {
                    dtcs: vec!["P0301".into(); 33],
                    ..good()
                },
                Oversize,
            ),
            (
                Candidate {
                    dtcs: vec!["X0301".into()],
                    ..good()
                },
                SchemaInvalid,
            ),
            (
                Candidate {
                    dtcs: vec!["p0301".into()],
                    ..good()
                },
                SchemaInvalid,
            ),
            (
                Candidate {
                    attrs: vec![("k".into(), AttrValue::Str("v".repeat(257)))],
                    ..good()
                },
                Oversize,
            ),
            (
                Candidate {
                    attrs: (0..33)
                        .map(|i| (format!("k{i}"), AttrValue::Bool(true)))
                        .collect(),
                    ..good()
                },
                Oversize,
            ),
            (
                Candidate {
                    soc_pct: Some(100.5),
                    ..good()
                },
                SchemaInvalid,
            ),
            (
                Candidate {
                    speed_kmh: Some(-1.0),
                    ..good()
                },
                SchemaInvalid,
            ),
            (
                Candidate {
                    heading_deg: Some(360.0),
                    ..good()
                },
                SchemaInvalid,
            ),
        ];
        for (c, expected) in cases {
            assert_eq!(reason(c.clone()), Some(expected), "{c:?}");
        }
    }

    #[test]
    fn boundaries_are_inclusive() {
        assert_eq!(
            reason(Candidate {
                lat: Some(-90.0),
                lon: Some(180.0),
                ..good()
            }),
            None
        );
        assert_eq!(
            reason(Candidate {
                ts_ms: Some(NOW + 5 * 60_000),
                ..good()
            }),
            None
        );
        assert_eq!(
            reason(Candidate {
                ts_ms: Some(NOW - 7 * 86_400_000),
                ..good()
            }),
            None
        );
        assert_eq!(
            reason(Candidate {
                dtcs: vec!["U0100".into(), "P0A0F".into()],
                ..good()
            }),
            None
        );
    }

    #[test]
    fn null_island_allowed_by_config() {
        let v = Validator::new(ValidationConfig {
            allow_null_island: true,
            ..ValidationConfig::default()
        });
        assert!(
            v.check(
                &Candidate {
                    lat: Some(0.0),
                    lon: Some(0.0),
                    ..good()
                },
                NOW
            )
            .is_ok()
        );
    }

    #[test]
    fn duplicate_attr_keys_are_refused() {
        let c = Candidate {
            attrs: vec![
                ("k".into(), AttrValue::Int(1)),
                ("k".into(), AttrValue::Int(2)),
            ],
            ..good()
        };
        let err = Validator::new(ValidationConfig::default())
            .validate(c, NOW)
            .err();
        assert_eq!(err.map(|e| e.0.reason), Some(RejectReason::SchemaInvalid));
    }
}
