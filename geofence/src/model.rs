//! The fence model: [`Fence`] (its attributes, geometry and the exact
//! membership test), [`FenceKind`], [`Shape`], [`FenceId`] and
//! [`FenceSet`], the fences of one load in order. Parsing lives in
//! [`crate::geojson`], indexing in [`crate::index`].
//!
//! # Membership rule (the exact predicate)
//!
//! * Polygons / multipolygons are **closed** sets: a point on an exterior
//!   ring or on a hole's ring counts as inside; a point strictly inside a hole
//!   is outside. The test is planar in (longitude, latitude) degrees, as
//!   GeoJSON geometries are conventionally interpreted (`geo`'s
//!   `CoordinatePosition` != `Outside`).
//! * Circles (GeoJSON `Point` + `properties.radius_m`): haversine distance
//!   (`geo::Haversine`, mean earth radius 6 371 008.8 m) from the centre
//!   `<= radius_m`.
//!
//! [`crate::brute_force`] and [`crate::GeofenceIndex::lookup`] use exactly this predicate,
//! so they return identical answers.

use std::collections::{HashMap, HashSet};

use geo::coordinate_position::{CoordPos, coord_pos_relative_to_ring};
use geo::{
    Coord, CoordinatePosition, Distance, Haversine, Line, LineString, MultiPolygon, Point, Rect,
};

use crate::GeofenceError;

/// Maximum absolute latitude (degrees) of any fence vertex.
pub const MAX_ABS_LAT: f64 = 85.0;
/// Maximum circle radius in metres.
pub const MAX_RADIUS_M: f64 = 1_000_000.0;

/// Fence category (`properties.kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceKind {
    /// `"depot"`
    Depot,
    /// `"customer"`
    Customer,
    /// `"charging_station"`
    ChargingStation,
    /// `"restricted"`
    Restricted,
    /// `"zone"`; also the default when `kind` is absent.
    Zone,
    /// Any other string.
    Other(String),
}

/// Geometry of a fence.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Polygon(s) with holes, x = longitude, y = latitude, degrees.
    Polygon(MultiPolygon<f64>),
    /// Spherical circle (haversine distance).
    Circle {
        /// Centre, x = longitude, y = latitude, degrees.
        center: Point<f64>,
        /// Radius in metres.
        radius_m: f64,
    },
}

/// A fence as loaded.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Unique id (`properties.id`).
    pub id: String,
    /// Display name (`properties.name`, defaults to the id).
    pub name: String,
    /// Category (`properties.kind`, default [`FenceKind::Zone`]).
    pub kind: FenceKind,
    /// Speed limit inside the fence, km/h.
    pub speed_limit_kmh: Option<f64>,
    /// Dwell threshold in seconds.
    pub dwell_s: Option<u32>,
    /// Whether entering the fence counts as an arrival (default `false`).
    pub arrival: bool,
    pub(crate) shape: Shape,
    /// Bounding box, degrees: exact for polygons, a little larger than
    /// exact for circles ([`circle_bbox`]). The exact test's first, cheap
    /// rejection, and the extent the index covers.
    pub(crate) bbox: Rect<f64>,
}

impl Fence {
    /// The fence geometry.
    #[must_use]
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The exact membership test (see the module docs for the rule).
    #[must_use]
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        if !valid_query(lat, lon) {
            return false;
        }
        self.contains_unchecked(lat, lon)
    }

    /// Distance in metres from the point to the fence: 0 inside (or on the
    /// boundary), else to the nearest boundary point.
    ///
    /// Polygons are measured in a local equirectangular projection centred on
    /// the point, accurate to well under 1% within tens of kilometres, which
    /// is what hysteresis margins need; circles use haversine. Returns
    /// infinity for a query outside the valid coordinate range.
    #[must_use]
    pub fn distance_m(&self, lat: f64, lon: f64) -> f64 {
        if !valid_query(lat, lon) {
            return f64::INFINITY;
        }
        if self.contains_unchecked(lat, lon) {
            return 0.0;
        }
        match &self.shape {
            Shape::Polygon(mp) => {
                // Metres per degree at the query's latitude (WGS84 means).
                let ky = 110_574.0;
                let kx = 111_320.0 * lat.to_radians().cos();
                let project = |c: Coord<f64>| ((c.x - lon) * kx, (c.y - lat) * ky);
                let ring_distance = |ring: &LineString<f64>| {
                    ring.lines()
                        .map(|line| {
                            segment_distance_to_origin(project(line.start), project(line.end))
                        })
                        .fold(f64::INFINITY, f64::min)
                };
                let c = Coord { x: lon, y: lat };
                // The nearest point of an area the query is not in lies on
                // the ring that separates them: the exterior when the query
                // is outside it, else the hole it is in. For valid polygons
                // this is the nearest of all rings; it also keeps a hole
                // that strays outside its exterior (which the loader does
                // not refuse) from putting an outside point at distance 0.
                mp.0.iter()
                    .map(|polygon| {
                        if coord_pos_relative_to_ring(c, polygon.exterior()) == CoordPos::Outside {
                            ring_distance(polygon.exterior())
                        } else {
                            polygon
                                .interiors()
                                .iter()
                                .filter(|hole| {
                                    coord_pos_relative_to_ring(c, hole) != CoordPos::Outside
                                })
                                .map(ring_distance)
                                .fold(f64::INFINITY, f64::min)
                        }
                    })
                    .fold(f64::INFINITY, f64::min)
            }
            Shape::Circle { center, radius_m } => {
                (Haversine.distance(*center, Point::new(lon, lat)) - radius_m).max(0.0)
            }
        }
    }

    #[inline]
    pub(crate) fn contains_unchecked(&self, lat: f64, lon: f64) -> bool {
        let (min, max) = (self.bbox.min(), self.bbox.max());
        if lon < min.x || lon > max.x || lat < min.y || lat > max.y {
            return false;
        }
        match &self.shape {
            Shape::Polygon(mp) => polygons_contain(mp, Coord { x: lon, y: lat }),
            Shape::Circle { center, radius_m } => {
                Haversine.distance(*center, Point::new(lon, lat)) <= *radius_m
            }
        }
    }
}

/// Every edge of every ring (exteriors and holes) of the polygons.
pub(crate) fn edges(mp: &MultiPolygon<f64>) -> impl Iterator<Item = Line<f64>> + '_ {
    mp.0.iter()
        .flat_map(|p| std::iter::once(p.exterior()).chain(p.interiors()))
        .flat_map(LineString::lines)
}

/// The membership rule for polygons (closed sets: a point on a ring counts
/// as inside, one strictly inside a hole does not).
pub(crate) fn polygons_contain(mp: &MultiPolygon<f64>, c: Coord<f64>) -> bool {
    mp.0.iter()
        .any(|p| p.coordinate_position(&c) != CoordPos::Outside)
}

/// Distance from (0, 0) to the segment a-b, planar.
fn segment_distance_to_origin(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (-(a.0 * dx + a.1 * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (a.0 + t * dx).hypot(a.1 + t * dy)
}

pub(crate) fn valid_query(lat: f64, lon: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

/// Index of a fence in its [`FenceSet`] / [`crate::GeofenceIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FenceId(pub u32);

impl FenceId {
    /// The position as `usize`.
    #[must_use]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A set of fences parsed from a GeoJSON `FeatureCollection`.
#[derive(Debug, Clone, Default)]
pub struct FenceSet {
    pub(crate) fences: Vec<Fence>,
}

impl FenceSet {
    /// The union of two sets: `self`'s fences, then `other`'s.
    ///
    /// # Errors
    ///
    /// [`GeofenceError::DuplicateAcrossSources`] if an id is in both;
    /// [`GeofenceError::TooManyFences`].
    pub fn merge(mut self, other: FenceSet) -> Result<Self, GeofenceError> {
        let total = self.fences.len() + other.fences.len();
        if total > i32::MAX as usize {
            return Err(GeofenceError::TooManyFences(total));
        }
        let ids: HashSet<&str> = self.fences.iter().map(|f| f.id.as_str()).collect();
        if let Some(dup) = other.fences.iter().find(|f| ids.contains(f.id.as_str())) {
            return Err(GeofenceError::DuplicateAcrossSources { id: dup.id.clone() });
        }
        self.fences.extend(other.fences);
        Ok(self)
    }

    /// Parsed fences in order, checking the count and that ids are unique.
    pub(crate) fn collect(
        len: usize,
        parsed: impl Iterator<Item = Result<Fence, GeofenceError>>,
    ) -> Result<Self, GeofenceError> {
        if len > i32::MAX as usize {
            return Err(GeofenceError::TooManyFences(len));
        }
        let mut fences = Vec::with_capacity(len);
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(len);
        for (index, fence) in parsed.enumerate() {
            let fence = fence?;
            if let Some(&first) = seen.get(&fence.id) {
                return Err(GeofenceError::DuplicateId {
                    id: fence.id,
                    first,
                    second: index,
                });
            }
            if fences.len() >= i32::MAX as usize {
                return Err(GeofenceError::TooManyFences(fences.len() + 1));
            }
            seen.insert(fence.id.clone(), index);
            fences.push(fence);
        }
        Ok(Self { fences })
    }

    /// The fences, in input order (position = [`FenceId`]).
    #[must_use]
    pub fn fences(&self) -> &[Fence] {
        &self.fences
    }

    /// Number of fences.
    #[must_use]
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }
}

/// A box (degrees) holding every point of a circle fence, a little larger
/// than exact: the spherical cap of angular radius `δ = radius / R` around
/// latitude `φ₀` spans `±δ` of latitude and `±asin(sin δ / cos φ₀)` of
/// longitude. Refuses circles that reach past [`MAX_ABS_LAT`] or across the
/// antimeridian.
pub(crate) fn circle_bbox(center: Point<f64>, radius_m: f64) -> Result<Rect<f64>, String> {
    let delta = radius_m / Haversine.radius();
    let dlat = delta.to_degrees() * (1.0 + 1e-6) + 1e-9;
    let (lat_lo, lat_hi) = (center.y() - dlat, center.y() + dlat);
    if lat_lo < -MAX_ABS_LAT || lat_hi > MAX_ABS_LAT {
        return Err(format!(
            "circle reaches beyond {MAX_ABS_LAT} degrees latitude (polar fences are not supported)"
        ));
    }
    let dlon = (delta.sin() / center.y().to_radians().cos())
        .min(1.0)
        .asin()
        .to_degrees()
        * (1.0 + 1e-6)
        + 1e-9;
    let (lon_lo, lon_hi) = (center.x() - dlon, center.x() + dlon);
    if lon_lo < -180.0 || lon_hi > 180.0 {
        return Err("circle crosses the antimeridian (not supported)".into());
    }
    Ok(Rect::new(
        Coord {
            x: lon_lo,
            y: lat_lo,
        },
        Coord {
            x: lon_hi,
            y: lat_hi,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A circle's box holds the points at its radius in every direction.
    #[test]
    fn circle_bbox_holds_the_circle() {
        use geo::Destination;
        for (cx, cy, r) in [
            (10.0, 50.0, 300.0),
            (-70.0, -60.0, 50_000.0),
            (0.0, 0.0, 1.0),
        ] {
            let center = Point::new(cx, cy);
            let b = circle_bbox(center, r).unwrap();
            for k in 0..360 {
                let p = Haversine.destination(center, f64::from(k), r);
                assert!(
                    b.min().x <= p.x()
                        && p.x() <= b.max().x
                        && b.min().y <= p.y()
                        && p.y() <= b.max().y,
                    "{p:?} outside {b:?}"
                );
            }
        }
    }
}
