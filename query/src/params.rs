//! Query parameters, parsed and checked before any query runs. Pure.
//!
//! Every endpoint names the parameters it takes; an unknown one, one given
//! twice, or one out of its domain is refused 400 naming it, so a typo
//! (`vehicle=` for `vehicle_id=`) is an error rather than a silently
//! unfiltered answer.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;

/// The parameters of one request.
#[derive(Debug)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// `pairs` as given, checked against the names the endpoint takes.
    ///
    /// # Errors
    ///
    /// An unknown or repeated parameter.
    pub fn new(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut map = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad(
                    name,
                    format!(
                        "is not a parameter of this endpoint (it takes: {})",
                        allowed.join(", ")
                    ),
                ));
            }
            if map.contains_key(&name) {
                return Err(ApiError::bad(name, "is given more than once"));
            }
            map.insert(name, value);
        }
        Ok(Self(map))
    }

    /// The raw value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A non-empty string.
    ///
    /// # Errors
    ///
    /// An empty value.
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("") => Err(ApiError::bad(name, "must not be empty")),
            Some(v) => Ok(Some(v.to_owned())),
        }
    }

    /// An RFC 3339 instant, e.g. `2026-11-23T08:00:00Z`.
    ///
    /// # Errors
    ///
    /// Anything else.
    pub fn time(&self, name: &str) -> Result<Option<OffsetDateTime>, ApiError> {
        self.get(name)
            .map(|v| {
                OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                    ApiError::bad(
                        name,
                        format!("{v:?} is not an RFC 3339 time (e.g. 2026-11-23T08:00:00Z)"),
                    )
                })
            })
            .transpose()
    }

    /// A duration, e.g. `10m`, `2h 30m`, above zero.
    ///
    /// # Errors
    ///
    /// Anything else.
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, ApiError> {
        self.get(name).map(|v| duration(name, v)).transpose()
    }

    /// A count in `1..=max`, `default` when absent.
    ///
    /// # Errors
    ///
    /// Anything else.
    pub fn count(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        let Some(v) = self.get(name) else {
            return Ok(default);
        };
        match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(
                name,
                format!("{v:?} is not a whole number from 1 to {max}"),
            )),
        }
    }
}

/// A duration value of parameter `name` (or body field), above zero.
///
/// # Errors
///
/// Not a duration, or zero.
pub fn duration(name: &str, v: &str) -> Result<Duration, ApiError> {
    match humantime::parse_duration(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(ApiError::bad(
            name,
            format!("{v:?} is not a duration above zero (e.g. 10m, 2h, 1d)"),
        )),
    }
}

/// `[from, to)`, checked: `from` before `to`.
///
/// # Errors
///
/// `from` at or after `to`.
pub fn range(
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), ApiError> {
    if from >= to {
        return Err(ApiError::bad("from", "must be before to"));
    }
    Ok((from, to))
}

/// A bounding box: `minLon,minLat,maxLon,maxLat`, degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    /// West edge.
    pub min_lon: f64,
    /// South edge.
    pub min_lat: f64,
    /// East edge.
    pub max_lon: f64,
    /// North edge.
    pub max_lat: f64,
}

impl BBox {
    /// Parses `minLon,minLat,maxLon,maxLat`.
    ///
    /// # Errors
    ///
    /// Not four numbers, out of range, or min above max (a box across the
    /// antimeridian is not supported: ask for its two halves).
    pub fn parse(v: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::bad("bbox", format!("{v:?} {why}"));
        let parts: Vec<f64> = v
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("is not minLon,minLat,maxLon,maxLat (four numbers)"))?;
        let [min_lon, min_lat, max_lon, max_lat] = parts[..] else {
            return Err(bad("is not minLon,minLat,maxLon,maxLat (four numbers)"));
        };
        let lon = |x: f64| x.is_finite() && (-180.0..=180.0).contains(&x);
        let lat = |y: f64| y.is_finite() && (-90.0..=90.0).contains(&y);
        if !(lon(min_lon) && lon(max_lon) && lat(min_lat) && lat(max_lat)) {
            return Err(bad(
                "is out of range: longitudes -180 to 180, latitudes -90 to 90",
            ));
        }
        if min_lon > max_lon || min_lat > max_lat {
            return Err(bad(
                "has a minimum above its maximum (a box across the antimeridian is not \
                 supported: ask for its two halves)",
            ));
        }
        Ok(Self {
            min_lon,
            min_lat,
            max_lon,
            max_lat,
        })
    }
}

/// The state a vehicle is in (see `sql/state.sql`, the one place it is
/// derived).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VehicleState {
    /// Its latest ping is older than `api.offline_after`.
    Offline,
    /// Else: that ping says it is charging.
    Charging,
    /// Else: that ping's speed is at least `api.moving_speed_kmh`.
    Moving,
    /// Otherwise.
    Parked,
}

impl VehicleState {
    /// The value, as the SQL derives it and the API writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            VehicleState::Offline => "offline",
            VehicleState::Charging => "charging",
            VehicleState::Moving => "moving",
            VehicleState::Parked => "parked",
        }
    }

    /// The state named `v`.
    pub fn parse(v: &str) -> Option<Self> {
        [
            VehicleState::Offline,
            VehicleState::Charging,
            VehicleState::Moving,
            VehicleState::Parked,
        ]
        .into_iter()
        .find(|s| s.as_str() == v)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<Params, ApiError> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Params::new(pairs, &["limit", "from", "stale_after", "id"])
    }

    fn parameter(e: ApiError) -> String {
        match e {
            ApiError::BadParameter { parameter, .. } => parameter,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused_by_name() {
        assert_eq!(
            parameter(params(&[("vehicle", "x")]).unwrap_err()),
            "vehicle"
        );
        assert_eq!(
            parameter(params(&[("limit", "1"), ("limit", "2")]).unwrap_err()),
            "limit"
        );
    }

    #[test]
    fn values_are_checked_by_name() {
        let p = params(&[
            ("limit", "0"),
            ("from", "yesterday"),
            ("stale_after", "0s"),
            ("id", ""),
        ])
        .unwrap();
        assert_eq!(parameter(p.count("limit", 10, 100).unwrap_err()), "limit");
        assert_eq!(parameter(p.time("from").unwrap_err()), "from");
        assert_eq!(
            parameter(p.duration("stale_after").unwrap_err()),
            "stale_after"
        );
        assert_eq!(parameter(p.text("id").unwrap_err()), "id");
        let p = params(&[("limit", "101")]).unwrap();
        assert!(p.count("limit", 10, 100).is_err());
        let p = params(&[
            ("limit", "100"),
            ("from", "2026-11-23T08:00:00Z"),
            ("stale_after", "1h 30m"),
        ])
        .unwrap();
        assert_eq!(p.count("limit", 10, 100).unwrap(), 100);
        assert_eq!(params(&[]).unwrap().count("limit", 10, 100).unwrap(), 10);
        assert!(p.time("from").unwrap().is_some());
        assert_eq!(
            p.duration("stale_after").unwrap(),
            Some(Duration::from_secs(5400))
        );
    }

    #[test]
    fn bboxes_are_four_numbers_in_range_and_in_order() {
        let b = BBox::parse("13.0,52.0,14.0,53.0").unwrap();
        assert_eq!((b.min_lon, b.max_lat), (13.0, 53.0));
        for bad in [
            "13,52,14",
            "13,52,14,53,1",
            "a,b,c,d",
            "13,52,14,95",
            "-181,0,0,0",
            "14,52,13,53",
            "NaN,52,14,53",
            "",
        ] {
            assert_eq!(parameter(BBox::parse(bad).unwrap_err()), "bbox", "{bad}");
        }
    }

    #[test]
    fn states_parse_by_their_names() {
        for s in ["offline", "charging", "moving", "parked"] {
            assert_eq!(VehicleState::parse(s).unwrap().as_str(), s);
        }
        assert!(VehicleState::parse("idle").is_none());
    }
}
