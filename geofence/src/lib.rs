//! Geofence index for fleetpipe.
//!
//! Fences are loaded from a GeoJSON `FeatureCollection` ([`FenceSet`]), or
//! from rows of a database table ([`FenceRow`], [`FenceSet::from_rows`]) read
//! as the same features, and indexed with H3 cells ([`GeofenceIndex`]).
//! [`GeofenceConfig`] is the `[geofence]` configuration section. The index:
//!
//! * every fence is covered with H3 cells at the index resolution
//!   (`h3o` [`Tiler`] in [`ContainmentMode::Covers`]), dilated by one ring of
//!   neighbours so that floating-point / projection differences between the
//!   planar cell polygons and `LatLng::to_cell` can never leave a point of the
//!   fence uncovered;
//! * cells that lie fully inside the fence *and* whose six neighbours also lie
//!   fully inside it are "interior" cells: a point in them is answered without
//!   any geometry. Interior cells are compacted (`CellIndex::compact`) and
//!   stored at coarser resolutions;
//! * every other covering cell is a "boundary" cell: a point in it is decided
//!   by the exact test [`Fence::contains`].
//!
//! A lookup computes the point's cell once, probes one hash map per
//! resolution that actually holds entries, and only touches the fences
//! registered on those cells, so its cost does not grow with the number of
//! fences.
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
//! [`brute_force`] and [`GeofenceIndex::lookup`] use exactly this predicate,
//! so they return identical answers.
//!
//! # Limits
//!
//! * **Antimeridian-crossing fences are not supported.** A polygon whose
//!   longitude span exceeds 180°, or a circle whose covering polygon would
//!   cross ±180° longitude, is rejected at load time.
//! * **Polar fences are not supported.** Any vertex (or circle covering
//!   vertex) beyond ±85° latitude is rejected at load time.
//! * Circle radius must be in `(0, 1_000_000]` m.
//! * Coordinates of queries must be finite with latitude in `[-90, 90]` and
//!   longitude in `[-180, 180]`; anything else matches no fence.
//! * At most `2^31 - 1` fences per index.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use geo::coordinate_position::CoordPos;
use geo::{
    BoundingRect, Coord, CoordinatePosition, Destination, Distance, Haversine, LineString,
    MultiPolygon, Point, Polygon, Rect,
};
use h3o::geom::{ContainmentMode, TilerBuilder};
use h3o::{CellIndex, LatLng, Resolution};
use serde_json::{Map, Value};

mod config;

pub use config::{GeofenceConfig, PostgresFencesConfig};

/// Maximum absolute latitude (degrees) of any fence vertex.
pub const MAX_ABS_LAT: f64 = 85.0;
/// Maximum circle radius in metres.
pub const MAX_RADIUS_M: f64 = 1_000_000.0;
/// Number of vertices of the polygon that covers a circle for tiling.
const CIRCLE_COVER_VERTICES: u32 = 32;

/// Errors raised while loading fences or building the index.
#[derive(Debug, thiserror::Error)]
pub enum GeofenceError {
    /// The input is not valid JSON.
    #[error("invalid GeoJSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The fence file could not be read.
    #[error("cannot read fence file {}: {source}", path.display())]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The root is not a GeoJSON `FeatureCollection`.
    #[error("GeoJSON root: {0}")]
    NotFeatureCollection(String),
    /// One feature is invalid.
    #[error("feature #{index}{}: {problem}", fmt_id(.id.as_deref()))]
    Feature {
        /// Position of the feature in `features`.
        index: usize,
        /// The feature's id, when it could be read.
        id: Option<String>,
        /// What is wrong.
        problem: String,
    },
    /// Two features share an id.
    #[error("duplicate fence id {id:?} (features #{first} and #{second})")]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// Index of the first feature with this id.
        first: usize,
        /// Index of the second feature with this id.
        second: usize,
    },
    /// H3 tiling / compaction of a fence failed.
    #[error("fence {id:?}: H3 indexing failed: {reason}")]
    Indexing {
        /// The fence id.
        id: String,
        /// What failed.
        reason: String,
    },
    /// More fences than an index can hold.
    #[error("too many fences: {0} (max {max})", max = i32::MAX)]
    TooManyFences(usize),
    /// Two fence sets being merged ([`FenceSet::merge`]) share an id.
    #[error("duplicate fence id {id:?}: defined in more than one source")]
    DuplicateAcrossSources {
        /// The repeated id.
        id: String,
    },
    /// A configuration value is out of range.
    #[error("{key}: {reason}")]
    Config {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

fn fmt_id(id: Option<&str>) -> String {
    id.map(|i| format!(" (id {i:?})")).unwrap_or_default()
}

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

impl FenceKind {
    fn parse(s: &str) -> Self {
        match s {
            "depot" => Self::Depot,
            "customer" => Self::Customer,
            "charging_station" => Self::ChargingStation,
            "restricted" => Self::Restricted,
            "zone" => Self::Zone,
            other => Self::Other(other.to_owned()),
        }
    }
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
    shape: Shape,
    /// Bounding box of the polygon (unused for circles).
    bbox: Rect<f64>,
}

impl Fence {
    /// The fence geometry.
    #[must_use]
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The exact membership test (see the crate docs for the rule).
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
                let mut best = f64::INFINITY;
                for polygon in &mp.0 {
                    for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
                        for line in ring.lines() {
                            let d =
                                segment_distance_to_origin(project(line.start), project(line.end));
                            best = best.min(d);
                        }
                    }
                }
                best
            }
            Shape::Circle { center, radius_m } => {
                (Haversine.distance(*center, Point::new(lon, lat)) - radius_m).max(0.0)
            }
        }
    }

    #[inline]
    fn contains_unchecked(&self, lat: f64, lon: f64) -> bool {
        match &self.shape {
            Shape::Polygon(mp) => {
                let (min, max) = (self.bbox.min(), self.bbox.max());
                if lon < min.x || lon > max.x || lat < min.y || lat > max.y {
                    return false;
                }
                let c = Coord { x: lon, y: lat };
                mp.0.iter()
                    .any(|p| p.coordinate_position(&c) != CoordPos::Outside)
            }
            Shape::Circle { center, radius_m } => {
                Haversine.distance(*center, Point::new(lon, lat)) <= *radius_m
            }
        }
    }
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

fn valid_query(lat: f64, lon: f64) -> bool {
    (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)
}

/// Index of a fence in its [`FenceSet`] / [`GeofenceIndex`].
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
    fences: Vec<Fence>,
}

impl FenceSet {
    /// Parses a GeoJSON `FeatureCollection`.
    ///
    /// Supported geometries: `Polygon`, `MultiPolygon` (with holes) and
    /// `Point` + `properties.radius_m` (a circle). Properties: `id` (string,
    /// required, unique), `name`, `kind`, `speed_limit_kmh`, `dwell_s`,
    /// `arrival` (bool, default `false`).
    ///
    /// # Errors
    ///
    /// [`GeofenceError`] naming the feature index / id and the problem.
    pub fn from_geojson_str(s: &str) -> Result<Self, GeofenceError> {
        Self::from_geojson_slice(s.as_bytes())
    }

    /// Like [`FenceSet::from_geojson_str`], from bytes (UTF-8 JSON), e.g. a
    /// file's content as read.
    ///
    /// # Errors
    ///
    /// As [`FenceSet::from_geojson_str`]; invalid UTF-8 is a
    /// [`GeofenceError::Json`].
    pub fn from_geojson_slice(bytes: &[u8]) -> Result<Self, GeofenceError> {
        let root: Value = serde_json::from_slice(bytes)?;
        let obj = root
            .as_object()
            .ok_or_else(|| GeofenceError::NotFeatureCollection("expected a JSON object".into()))?;
        match obj.get("type").and_then(Value::as_str) {
            Some("FeatureCollection") => {}
            Some(other) => {
                return Err(GeofenceError::NotFeatureCollection(format!(
                    "expected type \"FeatureCollection\", got {other:?}"
                )));
            }
            None => {
                return Err(GeofenceError::NotFeatureCollection(
                    "missing string member \"type\"".into(),
                ));
            }
        }
        let features = obj
            .get("features")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                GeofenceError::NotFeatureCollection("missing array member \"features\"".into())
            })?;
        Self::collect(
            features.len(),
            features
                .iter()
                .enumerate()
                .map(|(index, feature)| parse_feature(index, feature)),
        )
    }

    /// Builds a set from features given as their two members, `properties`
    /// (an object, or `null`) and `geometry`, with the same rules and errors
    /// as [`FenceSet::from_geojson_str`] (feature numbers are positions in
    /// the iteration). For sources that are not GeoJSON documents, e.g.
    /// table rows ([`FenceSet::from_rows`]).
    ///
    /// # Errors
    ///
    /// [`GeofenceError`] naming the feature index / id and the problem.
    pub fn from_features<I>(features: I) -> Result<Self, GeofenceError>
    where
        I: IntoIterator<Item = (Value, Value)>,
    {
        let features = features.into_iter();
        Self::collect(
            features.size_hint().0,
            features.enumerate().map(|(index, (properties, geometry))| {
                parse_parts(index, Some(&properties), Some(&geometry))
            }),
        )
    }

    /// Builds a set from rows of a fences table (see [`FenceRow`]), in the
    /// rows' order; each row is read as the GeoJSON feature it describes
    /// ([`FenceRow::into_feature`]).
    ///
    /// # Errors
    ///
    /// As [`FenceSet::from_features`]; "feature #i" is the i-th row (from 0).
    pub fn from_rows<I>(rows: I) -> Result<Self, GeofenceError>
    where
        I: IntoIterator<Item = FenceRow>,
    {
        Self::from_features(rows.into_iter().map(FenceRow::into_feature))
    }

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
    fn collect(
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

    /// Reads and parses a GeoJSON file (the only I/O in this crate).
    ///
    /// # Errors
    ///
    /// [`GeofenceError::Io`] if the file cannot be read, otherwise as
    /// [`FenceSet::from_geojson_str`].
    pub fn from_geojson_file(path: &Path) -> Result<Self, GeofenceError> {
        let bytes = std::fs::read(path).map_err(|source| GeofenceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_geojson_slice(&bytes)
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

/// One row of a fences table (`geofence.postgres`; no PostGIS needed):
///
/// ```sql
/// CREATE TABLE geofences (
///     id              text PRIMARY KEY,
///     name            text,
///     kind            text,
///     speed_limit_kmh double precision,
///     dwell_s         integer,
///     arrival         boolean NOT NULL DEFAULT false,
///     radius_m        double precision,
///     geometry        jsonb NOT NULL  -- a GeoJSON geometry object
/// );
/// ```
///
/// Each column means what the GeoJSON feature property of the same name
/// means ([`FenceSet::from_geojson_str`]); `geometry` is the feature's
/// geometry (`Polygon`, `MultiPolygon`, or `Point` with `radius_m`).
#[derive(Debug, Clone, PartialEq)]
pub struct FenceRow {
    /// `id`: unique fence id.
    pub id: String,
    /// `name` (defaults to the id).
    pub name: Option<String>,
    /// `kind` (default `zone`).
    pub kind: Option<String>,
    /// `speed_limit_kmh`.
    pub speed_limit_kmh: Option<f64>,
    /// `dwell_s` (0..=4294967295).
    pub dwell_s: Option<i64>,
    /// `arrival`.
    pub arrival: bool,
    /// `radius_m`: required for a `Point` geometry.
    pub radius_m: Option<f64>,
    /// `geometry`: a GeoJSON geometry object.
    pub geometry: Value,
}

impl FenceRow {
    /// The row as the GeoJSON feature it describes: (`properties`,
    /// `geometry`). `NULL` columns are left out; a non-finite number becomes
    /// a string, so that the feature parser refuses it.
    #[must_use]
    pub fn into_feature(self) -> (Value, Value) {
        fn number(x: f64) -> Value {
            serde_json::Number::from_f64(x)
                .map_or_else(|| Value::String(x.to_string()), Value::Number)
        }
        let mut props = Map::new();
        props.insert("id".into(), Value::String(self.id));
        if let Some(name) = self.name {
            props.insert("name".into(), Value::String(name));
        }
        if let Some(kind) = self.kind {
            props.insert("kind".into(), Value::String(kind));
        }
        if let Some(v) = self.speed_limit_kmh {
            props.insert("speed_limit_kmh".into(), number(v));
        }
        if let Some(v) = self.dwell_s {
            props.insert("dwell_s".into(), Value::from(v));
        }
        props.insert("arrival".into(), Value::Bool(self.arrival));
        if let Some(v) = self.radius_m {
            props.insert("radius_m".into(), number(v));
        }
        (Value::Object(props), self.geometry)
    }
}

struct FeatureCtx<'a> {
    index: usize,
    id: Option<&'a str>,
}

impl FeatureCtx<'_> {
    fn err(&self, problem: impl Into<String>) -> GeofenceError {
        GeofenceError::Feature {
            index: self.index,
            id: self.id.map(str::to_owned),
            problem: problem.into(),
        }
    }
}

fn parse_feature(index: usize, feature: &Value) -> Result<Fence, GeofenceError> {
    let ctx = FeatureCtx { index, id: None };
    let obj = feature
        .as_object()
        .ok_or_else(|| ctx.err("feature is not a JSON object"))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("Feature") => {}
        other => {
            return Err(ctx.err(format!("expected type \"Feature\", got {other:?}")));
        }
    }
    parse_parts(index, obj.get("properties"), obj.get("geometry"))
}

/// A feature from its `properties` and `geometry` members.
fn parse_parts(
    index: usize,
    properties: Option<&Value>,
    geometry: Option<&Value>,
) -> Result<Fence, GeofenceError> {
    let mut ctx = FeatureCtx { index, id: None };
    let empty = Map::new();
    let props = match properties {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(ctx.err("\"properties\" is not an object")),
    };
    let id = match props.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        Some(Value::String(_)) => return Err(ctx.err("properties.id is empty")),
        Some(_) => return Err(ctx.err("properties.id must be a string")),
        None => return Err(ctx.err("missing properties.id")),
    };
    ctx.id = Some(id);

    let name = match props.get("name") {
        None | Some(Value::Null) => id.to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ctx.err("properties.name must be a string")),
    };
    let kind = match props.get("kind") {
        None | Some(Value::Null) => FenceKind::Zone,
        Some(Value::String(s)) => FenceKind::parse(s),
        Some(_) => return Err(ctx.err("properties.kind must be a string")),
    };
    let speed_limit_kmh = match props.get("speed_limit_kmh") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Some(x),
            _ => return Err(ctx.err("properties.speed_limit_kmh must be a positive number")),
        },
    };
    let dwell_s = match props.get("dwell_s") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|x| u32::try_from(x).ok()) {
            Some(x) => Some(x),
            None => {
                return Err(ctx.err("properties.dwell_s must be an integer in 0..=4294967295"));
            }
        },
    };
    let arrival = match props.get("arrival") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ctx.err("properties.arrival must be a boolean")),
    };

    let geometry = match geometry {
        Some(Value::Object(g)) => g,
        None | Some(Value::Null) => return Err(ctx.err("missing geometry")),
        Some(_) => return Err(ctx.err("geometry is not an object")),
    };
    let gtype = geometry
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ctx.err("geometry has no string \"type\""))?;
    let coords = geometry
        .get("coordinates")
        .ok_or_else(|| ctx.err(format!("{gtype} geometry has no \"coordinates\"")))?;
    let shape = match gtype {
        "Polygon" => Shape::Polygon(MultiPolygon::new(vec![parse_polygon(&ctx, coords)?])),
        "MultiPolygon" => {
            let polys = coords
                .as_array()
                .ok_or_else(|| ctx.err("MultiPolygon coordinates must be an array"))?;
            if polys.is_empty() {
                return Err(ctx.err("MultiPolygon has no polygons"));
            }
            let polys = polys
                .iter()
                .map(|p| parse_polygon(&ctx, p))
                .collect::<Result<Vec<_>, _>>()?;
            Shape::Polygon(MultiPolygon::new(polys))
        }
        "Point" => {
            let center = parse_position(&ctx, coords)?;
            let radius_m = match props.get("radius_m") {
                None | Some(Value::Null) => {
                    return Err(ctx.err("Point geometry requires properties.radius_m"));
                }
                Some(v) => match v.as_f64() {
                    Some(r) if r.is_finite() && r > 0.0 && r <= MAX_RADIUS_M => r,
                    _ => {
                        return Err(ctx.err(format!(
                            "properties.radius_m must be a number in (0, {MAX_RADIUS_M}]"
                        )));
                    }
                },
            };
            let shape = Shape::Circle {
                center: Point::from(center),
                radius_m,
            };
            // Validates pole / antimeridian limits.
            cover_polygons(&shape).map_err(|p| ctx.err(p))?;
            shape
        }
        other => return Err(ctx.err(format!("unsupported geometry type {other:?}"))),
    };
    let bbox = match &shape {
        Shape::Polygon(mp) => {
            let bbox = mp
                .bounding_rect()
                .ok_or_else(|| ctx.err("polygon has no coordinates"))?;
            if bbox.max().x - bbox.min().x > 180.0 {
                return Err(ctx.err(
                    "polygon spans more than 180 degrees of longitude \
                     (antimeridian-crossing fences are not supported)",
                ));
            }
            bbox
        }
        Shape::Circle { center, .. } => Rect::new(center.0, center.0),
    };
    Ok(Fence {
        id: id.to_owned(),
        name,
        kind,
        speed_limit_kmh,
        dwell_s,
        arrival,
        shape,
        bbox,
    })
}

fn parse_position(ctx: &FeatureCtx<'_>, v: &Value) -> Result<Coord<f64>, GeofenceError> {
    let arr = v
        .as_array()
        .filter(|a| a.len() >= 2)
        .ok_or_else(|| ctx.err("a position must be an array [lon, lat]"))?;
    let (Some(lon), Some(lat)) = (arr[0].as_f64(), arr[1].as_f64()) else {
        return Err(ctx.err("position coordinates must be numbers"));
    };
    if !(-180.0..=180.0).contains(&lon) {
        return Err(ctx.err(format!("longitude {lon} out of [-180, 180]")));
    }
    if !(-MAX_ABS_LAT..=MAX_ABS_LAT).contains(&lat) {
        return Err(ctx.err(format!(
            "latitude {lat} out of [-{MAX_ABS_LAT}, {MAX_ABS_LAT}] (polar fences are not supported)"
        )));
    }
    Ok(Coord { x: lon, y: lat })
}

fn parse_ring(ctx: &FeatureCtx<'_>, v: &Value) -> Result<LineString<f64>, GeofenceError> {
    let arr = v
        .as_array()
        .ok_or_else(|| ctx.err("a linear ring must be an array of positions"))?;
    let coords = arr
        .iter()
        .map(|p| parse_position(ctx, p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ring = LineString::new(coords);
    ring.close();
    if ring.0.len() < 4 {
        return Err(ctx.err("a linear ring needs at least 3 distinct positions"));
    }
    Ok(ring)
}

fn parse_polygon(ctx: &FeatureCtx<'_>, v: &Value) -> Result<Polygon<f64>, GeofenceError> {
    let rings = v
        .as_array()
        .ok_or_else(|| ctx.err("Polygon coordinates must be an array of rings"))?;
    let mut rings = rings.iter().map(|r| parse_ring(ctx, r));
    let exterior = rings
        .next()
        .ok_or_else(|| ctx.err("Polygon has no exterior ring"))??;
    let interiors = rings.collect::<Result<Vec<_>, _>>()?;
    Ok(Polygon::new(exterior, interiors))
}

/// Polygons (degrees) whose union covers the whole fence. For circles: a
/// regular polygon whose inscribed circle is slightly larger than the fence.
fn cover_polygons(shape: &Shape) -> Result<Vec<Polygon<f64>>, String> {
    match shape {
        Shape::Polygon(mp) => Ok(mp.0.clone()),
        Shape::Circle { center, radius_m } => {
            let n = CIRCLE_COVER_VERTICES;
            let half_step = std::f64::consts::PI / f64::from(n);
            let r = radius_m / half_step.cos() * 1.01 + 2.0;
            let mut coords = Vec::with_capacity(n as usize + 1);
            for i in 0..n {
                let bearing = 360.0 * f64::from(i) / f64::from(n);
                let p = Haversine.destination(*center, bearing, r);
                if (p.x() - center.x()).abs() > 90.0 {
                    return Err("circle crosses the antimeridian (not supported)".into());
                }
                if p.y().abs() > MAX_ABS_LAT {
                    return Err(format!(
                        "circle reaches beyond {MAX_ABS_LAT} degrees latitude (polar fences are not supported)"
                    ));
                }
                coords.push(p.0);
            }
            let mut ring = LineString::new(coords);
            ring.close();
            Ok(vec![Polygon::new(ring, Vec::new())])
        }
    }
}

/// Brute force: every fence's exact test. The reference for the index.
#[must_use]
pub fn brute_force(set: &FenceSet, lat: f64, lon: f64) -> Vec<FenceId> {
    if !valid_query(lat, lon) {
        return Vec::new();
    }
    set.fences
        .iter()
        .enumerate()
        .filter(|(_, f)| f.contains_unchecked(lat, lon))
        .map(|(i, _)| FenceId(i as u32))
        .collect()
}

// ---------------------------------------------------------------------------
// Index

/// Hasher for H3 cell indices (folded 128-bit multiply; the low bits of an
/// H3 index are constant, so plain multiplicative hashing would be poor).
#[derive(Debug, Default, Clone, Copy)]
struct CellHasher(u64);

impl Hasher for CellHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let m = u128::from(x ^ self.0) * 0x9E37_79B9_7F4A_7C15_u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

type CellMap<V> = HashMap<u64, V, BuildHasherDefault<CellHasher>>;

/// High bit of an entry: the cell is fully inside the fence.
const INSIDE: u32 = 1 << 31;

#[derive(Debug)]
struct Level {
    resolution: Resolution,
    /// cell -> (start, len) into `entries`.
    slots: CellMap<(u32, u32)>,
    /// fence id | INSIDE flag.
    entries: Vec<u32>,
}

/// Size statistics of a [`GeofenceIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexStats {
    /// (resolution, distinct cells, entries) for every level present.
    pub levels: Vec<(u8, usize, usize)>,
    /// Approximate heap bytes of the cell maps (excluding the fences).
    pub approx_heap_bytes: usize,
}

/// The index: cells fully inside a fence answer without geometry, boundary
/// cells fall back to the exact test.
#[derive(Debug)]
pub struct GeofenceIndex {
    fences: Vec<Fence>,
    resolution: Resolution,
    /// Only resolutions that hold entries; the index resolution first.
    levels: Vec<Level>,
}

impl GeofenceIndex {
    /// Builds the index at `resolution` (7..=10 is a good range for
    /// depot/customer-sized fences).
    ///
    /// # Errors
    ///
    /// [`GeofenceError::Indexing`] if h3o rejects a geometry or compaction
    /// fails; [`GeofenceError::TooManyFences`].
    pub fn build(set: FenceSet, resolution: Resolution) -> Result<Self, GeofenceError> {
        let fences = set.fences;
        if fences.len() > (INSIDE - 1) as usize {
            return Err(GeofenceError::TooManyFences(fences.len()));
        }
        // Per resolution (0..=15): (cell, entry) pairs.
        let mut pairs: Vec<Vec<(u64, u32)>> = vec![Vec::new(); 16];
        for (i, fence) in fences.iter().enumerate() {
            let id = i as u32;
            let (interior, boundary) =
                cover_fence(fence, resolution).map_err(|reason| GeofenceError::Indexing {
                    id: fence.id.clone(),
                    reason,
                })?;
            for c in boundary {
                pairs[usize::from(u8::from(resolution))].push((u64::from(c), id));
            }
            for c in interior {
                pairs[usize::from(u8::from(c.resolution()))].push((u64::from(c), id | INSIDE));
            }
        }
        let mut levels = Vec::new();
        // Index resolution first (most entries), then finer-to-coarser.
        let order = std::iter::once(u8::from(resolution))
            .chain((0..u8::from(resolution)).rev())
            .collect::<Vec<_>>();
        for r in order {
            let mut p = std::mem::take(&mut pairs[usize::from(r)]);
            if p.is_empty() {
                continue;
            }
            let Ok(res) = Resolution::try_from(r) else {
                continue;
            };
            p.sort_unstable();
            let mut slots: CellMap<(u32, u32)> = CellMap::default();
            let mut entries = Vec::with_capacity(p.len());
            let mut start = 0usize;
            while start < p.len() {
                let cell = p[start].0;
                let mut end = start;
                while end < p.len() && p[end].0 == cell {
                    entries.push(p[end].1);
                    end += 1;
                }
                slots.insert(cell, (start as u32, (end - start) as u32));
                start = end;
            }
            slots.shrink_to_fit();
            levels.push(Level {
                resolution: res,
                slots,
                entries,
            });
        }
        Ok(Self {
            fences,
            resolution,
            levels,
        })
    }

    /// Ids of every fence containing the point, sorted. Exact: same answer as
    /// [`brute_force`].
    #[must_use]
    pub fn lookup(&self, lat: f64, lon: f64) -> Vec<FenceId> {
        let mut out = Vec::new();
        self.lookup_into(lat, lon, &mut out);
        out
    }

    /// Like [`GeofenceIndex::lookup`], filling (after clearing) the caller's
    /// buffer to avoid allocation.
    pub fn lookup_into(&self, lat: f64, lon: f64, out: &mut Vec<FenceId>) {
        out.clear();
        if !valid_query(lat, lon) {
            return;
        }
        let Ok(ll) = LatLng::new(lat, lon) else {
            return;
        };
        self.lookup_cell_into(ll.to_cell(self.resolution), lat, lon, out);
    }

    /// Like [`GeofenceIndex::lookup_into`] for a caller that already has the
    /// position's H3 cell at [`GeofenceIndex::resolution`] (enrichment
    /// computes it anyway), sparing the second projection. `cell` must be
    /// `LatLng::to_cell` of the position at that resolution; a cell of another
    /// resolution is ignored and recomputed, since a parent of a finer cell
    /// need not contain the position.
    pub fn lookup_cell_into(&self, cell: CellIndex, lat: f64, lon: f64, out: &mut Vec<FenceId>) {
        if cell.resolution() != self.resolution {
            return self.lookup_into(lat, lon, out);
        }
        out.clear();
        if !valid_query(lat, lon) {
            return;
        }
        for level in &self.levels {
            let key = if level.resolution == self.resolution {
                cell
            } else {
                match cell.parent(level.resolution) {
                    Some(c) => c,
                    None => continue,
                }
            };
            let Some(&(start, len)) = level.slots.get(&u64::from(key)) else {
                continue;
            };
            let range = start as usize..(start as usize + len as usize);
            for &e in level.entries.get(range).unwrap_or(&[]) {
                let id = e & !INSIDE;
                let hit = e & INSIDE != 0
                    || self
                        .fences
                        .get(id as usize)
                        .is_some_and(|f| f.contains_unchecked(lat, lon));
                if hit {
                    out.push(FenceId(id));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }

    /// The fence with this id (`None` if out of range).
    #[must_use]
    pub fn fence(&self, id: FenceId) -> Option<&Fence> {
        self.fences.get(id.index())
    }

    /// All fences (position = [`FenceId`]).
    #[must_use]
    pub fn fences(&self) -> &[Fence] {
        &self.fences
    }

    /// Number of fences.
    #[must_use]
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether the index holds no fence.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    /// The index resolution.
    #[must_use]
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// Cell / entry counts per level and approximate memory.
    #[must_use]
    pub fn stats(&self) -> IndexStats {
        let mut bytes = 0;
        let levels = self
            .levels
            .iter()
            .map(|l| {
                // hashbrown: key + value + 1 control byte per bucket.
                bytes += l.slots.capacity() * (8 + 8 + 1) + l.entries.capacity() * 4;
                (u8::from(l.resolution), l.slots.len(), l.entries.len())
            })
            .collect();
        IndexStats {
            levels,
            approx_heap_bytes: bytes,
        }
    }
}

/// Interior (compacted) and boundary (at `resolution`) cells of a fence.
fn cover_fence(
    fence: &Fence,
    resolution: Resolution,
) -> Result<(Vec<CellIndex>, Vec<CellIndex>), String> {
    let polys = cover_polygons(&fence.shape)?;
    let mut tiler = TilerBuilder::new(resolution)
        .containment_mode(ContainmentMode::Covers)
        .disable_transmeridian_heuristic()
        .build();
    tiler.add_batch(polys).map_err(|e| e.to_string())?;

    let mut all: HashSet<CellIndex> = HashSet::new();
    let mut fully: HashSet<CellIndex> = HashSet::new();
    for ac in tiler.into_annotated_coverage() {
        all.insert(ac.cell);
        let inside = match &fence.shape {
            Shape::Polygon(_) => ac.is_fully_contained,
            // The covering polygon is larger than the circle: check the real
            // cell (a spherical polygon with great-circle edges) against the
            // spherical cap (convex): all vertices inside, with a margin.
            Shape::Circle { center, radius_m } => {
                let limit = radius_m - (0.5 + radius_m * 1e-6);
                ac.cell
                    .boundary()
                    .iter()
                    .all(|v| Haversine.distance(*center, Point::new(v.lng(), v.lat())) <= limit)
            }
        };
        if inside {
            fully.insert(ac.cell);
        }
    }

    // Erode: interior only if the cell and all its neighbours are fully inside.
    let mut interior = Vec::new();
    for &c in &fully {
        let ring: Vec<CellIndex> = c.grid_disk(1);
        if ring.iter().all(|n| fully.contains(n)) {
            interior.push(c);
        }
    }
    let interior_set: HashSet<CellIndex> = interior.iter().copied().collect();

    // Dilate: every non-interior covering cell and its neighbours.
    let mut boundary: HashSet<CellIndex> = HashSet::new();
    for &c in &all {
        if interior_set.contains(&c) {
            continue;
        }
        let ring: Vec<CellIndex> = c.grid_disk(1);
        for n in ring {
            if !interior_set.contains(&n) {
                boundary.insert(n);
            }
        }
    }

    interior.sort_unstable();
    CellIndex::compact(&mut interior).map_err(|e| e.to_string())?;
    let mut boundary: Vec<CellIndex> = boundary.into_iter().collect();
    boundary.sort_unstable();
    Ok((interior, boundary))
}

/// The current index, shared by every enrichment worker and swapped whole on
/// reload: readers take a snapshot (`load`) per lookup and never block the
/// reloader, and a reload never blocks a lookup.
pub type SharedIndex = std::sync::Arc<arc_swap::ArcSwap<GeofenceIndex>>;

/// A [`SharedIndex`] holding `index`.
#[must_use]
pub fn shared(index: GeofenceIndex) -> SharedIndex {
    std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(index))
}

impl Default for GeofenceIndex {
    /// An index with no fences: every lookup answers "none".
    fn default() -> Self {
        Self {
            fences: Vec::new(),
            resolution: Resolution::Nine,
            levels: Vec::new(),
        }
    }
}
