//! Geofence index for fleetpipe.
//!
//! Fences are loaded from a GeoJSON `FeatureCollection` ([`FenceSet`]), or
//! from rows of a database table ([`FenceRow`], [`FenceSet::from_rows`]) read
//! as the same features, and indexed on a grid of latitude/longitude cells
//! ([`GeofenceIndex`]). [`GeofenceConfig`] is the `[geofence]`
//! configuration section. The index:
//!
//! * the finest cells are squares of `cell_size_m / 111 320` degrees; a cell
//!   of level `k` is `2^k` finest cells wide. A point's cell at every level
//!   follows from its finest cell by bit shifts, so the levels nest exactly
//!   and a lookup needs no projection: two multiplications and one hash
//!   probe per level present;
//! * every fence is covered by a region quadtree over its bounding box: from
//!   the level at which the box spans at most 2 × 2 cells, a cell wholly
//!   inside the fence is stored as an "inside" cell (a point in it is
//!   answered without geometry), a cell wholly outside is dropped, and a
//!   cell the boundary crosses is split, down to the finest level (or at
//!   most seven levels, so a large fence gets coarser boundary cells rather
//!   than more of them), where it is stored as a "boundary" cell: a point
//!   in it is decided by the exact test [`Fence::contains`], after a
//!   bounding-box check;
//! * the classification is conservative: cells are grown by a margin far
//!   above rounding before they are tested, "inside" and "outside" are
//!   claimed only when they hold for every point of the grown cell
//!   (polygons: no ring touches the cell; circles: all four corners within
//!   the radius, or a lower bound of the distance beyond it), and
//!   everything else is a boundary cell. So the index answers exactly what
//!   the exact test answers.
//!
//! A lookup only touches the fences registered on the point's cells, so
//! its cost does not grow with the number of fences.
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

use geo::coordinate_position::{CoordPos, coord_pos_relative_to_ring};
use geo::{
    BoundingRect, Coord, CoordinatePosition, Distance, Haversine, Intersects, Line, LineString,
    MultiPolygon, Point, Polygon, Rect,
};
use serde_json::{Map, Value};

mod config;

pub use config::{GeofenceConfig, PostgresFencesConfig};

/// Maximum absolute latitude (degrees) of any fence vertex.
pub const MAX_ABS_LAT: f64 = 85.0;
/// Maximum circle radius in metres.
pub const MAX_RADIUS_M: f64 = 1_000_000.0;

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
    /// `geofence.postgres.tls` is invalid (the message names the key).
    #[error(transparent)]
    PostgresTls(#[from] fleetpipe_postgres::PostgresError),
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
    /// Bounding box, degrees: exact for polygons, a little larger than
    /// exact for circles ([`circle_bbox`]). The exact test's first, cheap
    /// rejection, and the extent the index covers.
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
    fn contains_unchecked(&self, lat: f64, lon: f64) -> bool {
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
fn edges(mp: &MultiPolygon<f64>) -> impl Iterator<Item = Line<f64>> + '_ {
    mp.0.iter()
        .flat_map(|p| std::iter::once(p.exterior()).chain(p.interiors()))
        .flat_map(LineString::lines)
}

/// The membership rule for polygons (closed sets: a point on a ring counts
/// as inside, one strictly inside a hole does not).
fn polygons_contain(mp: &MultiPolygon<f64>, c: Coord<f64>) -> bool {
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
            Shape::Circle {
                center: Point::from(center),
                radius_m,
            }
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
        Shape::Circle { center, radius_m } => {
            circle_bbox(*center, *radius_m).map_err(|p| ctx.err(p))?
        }
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

/// A box (degrees) holding every point of a circle fence, a little larger
/// than exact: the spherical cap of angular radius `δ = radius / R` around
/// latitude `φ₀` spans `±δ` of latitude and `±asin(sin δ / cos φ₀)` of
/// longitude. Refuses circles that reach past [`MAX_ABS_LAT`] or across the
/// antimeridian.
fn circle_bbox(center: Point<f64>, radius_m: f64) -> Result<Rect<f64>, String> {
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

/// Default edge of the index's finest cells, metres
/// ([`GeofenceIndex::build`], `geofence.cell_size_m`).
pub const DEFAULT_CELL_SIZE_M: f64 = 100.0;
/// Smallest accepted finest-cell edge, metres.
pub const MIN_CELL_SIZE_M: f64 = 1.0;
/// Largest accepted finest-cell edge, metres.
pub const MAX_CELL_SIZE_M: f64 = 100_000.0;
/// Metres per degree of longitude at the equator: a cell of `cell_size_m`
/// spans `cell_size_m / M_PER_DEG` degrees on both axes (it is narrower in
/// metres away from the equator, which only makes it finer).
const M_PER_DEG: f64 = 111_320.0;
/// How many levels below its top level (the level at which its bounding box
/// spans at most 2 × 2 cells) a fence's boundary is refined: at most
/// 2^7 = 128 cells per axis, which bounds the cells of a fence whatever its
/// size. A large fence gets coarser boundary cells, not more of them.
const MAX_DEPTH: u32 = 7;
/// Margin (degrees, about 0.1 mm) by which a cell is grown before it is
/// classified against a fence. Mapping a point to its cell and computing a
/// cell's bounds both round, by at most ~1e-13 degrees; the margin dwarfs
/// that, so every point the lookup maps to a cell lies in the grown cell.
const CELL_MARGIN_DEG: f64 = 1e-9;

/// Hasher for packed cell keys (folded 128-bit multiply: the keys are two
/// small integers side by side, which identity hashing would cluster).
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

/// The grid every level shares: a point's finest cell is
/// `(floor((lon + 180) · scale), floor((lat + 90) · scale))`, and its cell
/// at level `k` is that pair shifted right by `k`. Deriving every level
/// from the one finest pair by shifts is what makes the levels nest exactly:
/// no second rounding can put a point in a coarse cell that does not hold
/// its fine one.
#[derive(Debug, Clone, Copy)]
struct Grid {
    /// Finest cells per degree.
    scale: f64,
}

impl Grid {
    /// The grid of finest cells `cell_size_m` wide (at the equator).
    fn new(cell_size_m: f64) -> Self {
        Self {
            scale: M_PER_DEG / cell_size_m,
        }
    }

    /// The finest cell of a valid point. Rounding is monotone, so a point
    /// inside a box maps between the cells of the box's corners.
    #[inline]
    fn cell(self, lat: f64, lon: f64) -> (u32, u32) {
        // Valid coordinates make both values non-negative and below
        // 360 · scale <= 4.1e7, so the casts truncate (= floor) exactly.
        (
            ((lon + 180.0) * self.scale) as u32,
            ((lat + 90.0) * self.scale) as u32,
        )
    }

    /// Cell `(x, y)` of `level`, in degrees, grown by [`CELL_MARGIN_DEG`].
    fn rect(self, level: u32, x: u32, y: u32) -> Rect<f64> {
        let lo = |c: u32| (u64::from(c) << level) as f64 / self.scale;
        let hi = |c: u32| ((u64::from(c) + 1) << level) as f64 / self.scale;
        Rect::new(
            Coord {
                x: lo(x) - 180.0 - CELL_MARGIN_DEG,
                y: lo(y) - 90.0 - CELL_MARGIN_DEG,
            },
            Coord {
                x: hi(x) - 180.0 + CELL_MARGIN_DEG,
                y: hi(y) - 90.0 + CELL_MARGIN_DEG,
            },
        )
    }
}

/// A cell's two coordinates as one hash key.
#[inline]
fn cell_key(x: u32, y: u32) -> u64 {
    (u64::from(x) << 32) | u64::from(y)
}

#[derive(Debug)]
struct Level {
    /// Cells of this level are `2^level` finest cells wide.
    level: u32,
    /// cell key -> (start, len) into `entries`.
    slots: CellMap<(u32, u32)>,
    /// fence id | INSIDE flag.
    entries: Vec<u32>,
}

/// Size statistics of a [`GeofenceIndex`].
#[derive(Debug, Clone, PartialEq)]
pub struct IndexStats {
    /// (level, distinct cells, entries) for every level present; cells of
    /// level `k` are `2^k` finest cells wide.
    pub levels: Vec<(u8, usize, usize)>,
    /// Edge of the finest cells, metres (at the equator).
    pub cell_size_m: f64,
    /// Approximate heap bytes of the cell maps (excluding the fences).
    pub approx_heap_bytes: usize,
}

/// The index: cells fully inside a fence answer without geometry, boundary
/// cells fall back to the exact test (see the crate docs).
#[derive(Debug)]
pub struct GeofenceIndex {
    fences: Vec<Fence>,
    grid: Grid,
    cell_size_m: f64,
    /// Only levels that hold entries, the one with most entries first.
    levels: Vec<Level>,
}

impl GeofenceIndex {
    /// Builds the index with finest cells of about `cell_size_m` metres
    /// (see [`DEFAULT_CELL_SIZE_M`]). The cell size changes speed and
    /// memory, never the answers: a cell a little larger than the typical
    /// fence suits depot- and customer-sized fences.
    ///
    /// # Errors
    ///
    /// [`GeofenceError::Config`] if `cell_size_m` is not in
    /// [`MIN_CELL_SIZE_M`]`..=`[`MAX_CELL_SIZE_M`];
    /// [`GeofenceError::TooManyFences`].
    pub fn build(set: FenceSet, cell_size_m: f64) -> Result<Self, GeofenceError> {
        check_cell_size(cell_size_m)?;
        let fences = set.fences;
        if fences.len() > (INSIDE - 1) as usize {
            return Err(GeofenceError::TooManyFences(fences.len()));
        }
        let grid = Grid::new(cell_size_m);
        // Per level: (cell key, entry) pairs.
        let mut pairs: Vec<Vec<(u64, u32)>> = Vec::new();
        for (i, fence) in fences.iter().enumerate() {
            let id = i as u32;
            cover_fence(fence, grid, &mut |level, key, inside| {
                let level = level as usize;
                if pairs.len() <= level {
                    pairs.resize_with(level + 1, Vec::new);
                }
                pairs[level].push((key, if inside { id | INSIDE } else { id }));
            });
        }
        let mut levels = Vec::new();
        for (level, mut p) in pairs.into_iter().enumerate() {
            if p.is_empty() {
                continue;
            }
            p.sort_unstable();
            let mut slots: CellMap<(u32, u32)> = CellMap::default();
            let mut entries = Vec::with_capacity(p.len());
            for run in p.chunk_by(|a, b| a.0 == b.0) {
                slots.insert(run[0].0, (entries.len() as u32, run.len() as u32));
                entries.extend(run.iter().map(|&(_, e)| e));
            }
            slots.shrink_to_fit();
            levels.push(Level {
                level: level as u32,
                slots,
                entries,
            });
        }
        // Most points are answered by the busiest level; probing it first
        // keeps its map warm.
        levels.sort_by_key(|l| std::cmp::Reverse(l.entries.len()));
        Ok(Self {
            fences,
            grid,
            cell_size_m,
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
        let (x, y) = self.grid.cell(lat, lon);
        for level in &self.levels {
            let key = cell_key(x >> level.level, y >> level.level);
            let Some(&(start, len)) = level.slots.get(&key) else {
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
        // A fence's cells are disjoint, so no id repeats; several levels
        // can answer, so the ids need sorting.
        if out.len() > 1 {
            out.sort_unstable();
        }
    }

    /// The fence with this id (`None` if out of range).
    #[must_use]
    pub fn fence(&self, id: FenceId) -> Option<&Fence> {
        self.fences.get(id.index())
    }

    /// Every fence, indexed by [`FenceId`].
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

    /// Edge of the finest cells, metres, as given to
    /// [`GeofenceIndex::build`].
    #[must_use]
    pub fn cell_size_m(&self) -> f64 {
        self.cell_size_m
    }

    /// Cell / entry counts per level and approximate memory.
    #[must_use]
    pub fn stats(&self) -> IndexStats {
        let mut bytes = 0;
        let mut levels: Vec<(u8, usize, usize)> = self
            .levels
            .iter()
            .map(|l| {
                // hashbrown: key + value + 1 control byte per bucket.
                bytes += l.slots.capacity() * (8 + 8 + 1) + l.entries.capacity() * 4;
                (l.level as u8, l.slots.len(), l.entries.len())
            })
            .collect();
        levels.sort_unstable();
        IndexStats {
            levels,
            cell_size_m: self.cell_size_m,
            approx_heap_bytes: bytes,
        }
    }
}

fn check_cell_size(cell_size_m: f64) -> Result<(), GeofenceError> {
    if (MIN_CELL_SIZE_M..=MAX_CELL_SIZE_M).contains(&cell_size_m) {
        Ok(())
    } else {
        Err(GeofenceError::Config {
            key: "geofence.cell_size_m",
            reason: format!(
                "{cell_size_m} is out of range (allowed: {MIN_CELL_SIZE_M} to {MAX_CELL_SIZE_M} metres)"
            ),
        })
    }
}

/// How a cell relates to a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellClass {
    /// No point of the cell is in the fence.
    Outside,
    /// Every point of the cell is in the fence.
    Inside,
    /// Either may hold: points in it need the exact test.
    Boundary,
}

/// Reports the cells covering `fence` as `(level, key, inside)`: a
/// region quadtree over the fence's bounding box, from the top level (the
/// box spans at most 2 × 2 cells) down to at most [`MAX_DEPTH`] levels
/// below it, never finer than level 0. Cells inside the fence stop there,
/// cells outside are dropped, boundary cells are split until the finest
/// level, where they are reported for the exact test. The cells reported
/// are disjoint and cover every point of the fence.
fn cover_fence(fence: &Fence, grid: Grid, out: &mut impl FnMut(u32, u64, bool)) {
    let (min, max) = (fence.bbox.min(), fence.bbox.max());
    let (x0, y0) = grid.cell(min.y, min.x);
    let (x1, y1) = grid.cell(max.y, max.x);
    let mut top = 0u32;
    while (x1 >> top) - (x0 >> top) > 1 || (y1 >> top) - (y0 >> top) > 1 {
        top += 1;
    }
    let finest = top.saturating_sub(MAX_DEPTH);
    for x in (x0 >> top)..=(x1 >> top) {
        for y in (y0 >> top)..=(y1 >> top) {
            refine(fence, grid, (top, x, y), finest, out);
        }
    }
}

fn refine(
    fence: &Fence,
    grid: Grid,
    (level, x, y): (u32, u32, u32),
    finest: u32,
    out: &mut impl FnMut(u32, u64, bool),
) {
    match classify(fence, grid.rect(level, x, y)) {
        CellClass::Outside => {}
        CellClass::Inside => out(level, cell_key(x, y), true),
        CellClass::Boundary if level <= finest => out(level, cell_key(x, y), false),
        CellClass::Boundary => {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                refine(
                    fence,
                    grid,
                    (level - 1, 2 * x + dx, 2 * y + dy),
                    finest,
                    out,
                );
            }
        }
    }
}

/// Classifies a (grown) cell against a fence, conservatively: `Inside` and
/// `Outside` only when they hold for every point of the cell.
fn classify(fence: &Fence, cell: Rect<f64>) -> CellClass {
    let (b, c) = (fence.bbox, cell);
    if c.max().x < b.min().x
        || c.min().x > b.max().x
        || c.max().y < b.min().y
        || c.min().y > b.max().y
    {
        return CellClass::Outside;
    }
    match &fence.shape {
        Shape::Polygon(mp) => {
            // No ring touches the cell: the cell (connected) lies wholly on
            // one side of the fence's boundary, and its centre tells which.
            if edges(mp).any(|line| cell.intersects(&line)) {
                CellClass::Boundary
            } else if polygons_contain(mp, cell.center()) {
                CellClass::Inside
            } else {
                CellClass::Outside
            }
        }
        Shape::Circle { center, radius_m } => {
            // Rounding of the haversine distance is below a micrometre at
            // these scales; the margins are a millimetre.
            let margin = 1e-3 + radius_m * 1e-9;
            // On the sphere, the farthest point of a latitude/longitude
            // rectangle from a point is one of its corners.
            let corners = [
                cell.min(),
                cell.max(),
                Coord {
                    x: cell.min().x,
                    y: cell.max().y,
                },
                Coord {
                    x: cell.max().x,
                    y: cell.min().y,
                },
            ];
            if corners
                .iter()
                .all(|&p| Haversine.distance(*center, Point::from(p)) <= radius_m - margin)
            {
                CellClass::Inside
            } else if circle_distance_lower_bound(*center, cell) > radius_m + margin {
                CellClass::Outside
            } else {
                CellClass::Boundary
            }
        }
    }
}

/// A lower bound of the haversine distance (metres) from `center` to any
/// point of `rect`. Haversine's `a = sin²(Δφ/2) + cos φ₀ cos φ sin²(Δλ/2)`
/// is at least the sum of each term's minimum over the rectangle: the
/// smallest latitude and longitude gaps, and the smallest `cos φ`.
fn circle_distance_lower_bound(center: Point<f64>, rect: Rect<f64>) -> f64 {
    let gap = |v: f64, lo: f64, hi: f64| (lo - v).max(v - hi).max(0.0);
    let dlat = gap(center.y(), rect.min().y, rect.max().y).to_radians();
    let dlon = gap(center.x(), rect.min().x, rect.max().x).to_radians();
    let cos_min = rect
        .min()
        .y
        .to_radians()
        .cos()
        .min(rect.max().y.to_radians().cos())
        .max(0.0);
    let a = (dlat / 2.0).sin().powi(2)
        + center.y().to_radians().cos() * cos_min * (dlon / 2.0).sin().powi(2);
    2.0 * Haversine.radius() * a.min(1.0).sqrt().asin()
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
            grid: Grid::new(DEFAULT_CELL_SIZE_M),
            cell_size_m: DEFAULT_CELL_SIZE_M,
            levels: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lower bound never exceeds the distance to any point of the
    /// rectangle (else the index would drop cells holding fence points), and
    /// is tight enough to be worth having for a rectangle well away.
    #[test]
    fn circle_distance_lower_bound_is_a_lower_bound() {
        let centers: [(f64, f64); 4] = [(10.0, 50.0), (-70.3, -33.4), (139.7, 35.7), (0.0, 84.0)];
        for (cx, cy) in centers {
            let center = Point::new(cx, cy);
            for (dx, dy, w) in [
                (0.01, 0.0, 0.02),
                (-0.5, 0.3, 0.1),
                (2.0, -1.0, 0.7),
                (-0.001, -0.001, 0.002),
                (0.0, 0.4, 0.05),
            ] {
                let rect = Rect::new(
                    Coord {
                        x: cx + dx,
                        y: cy + dy,
                    },
                    Coord {
                        x: cx + dx + w,
                        y: (cy + dy + w).min(85.0),
                    },
                );
                let lb = circle_distance_lower_bound(center, rect);
                let mut nearest = f64::INFINITY;
                for i in 0..=20 {
                    for j in 0..=20 {
                        let p = Point::new(
                            rect.min().x + rect.width() * f64::from(i) / 20.0,
                            rect.min().y + rect.height() * f64::from(j) / 20.0,
                        );
                        nearest = nearest.min(Haversine.distance(center, p));
                    }
                }
                assert!(
                    lb <= nearest + 1e-6,
                    "{center:?} {rect:?}: {lb} > {nearest}"
                );
                if nearest > 1_000.0 {
                    assert!(lb > 0.5 * nearest, "{center:?} {rect:?}: {lb} vs {nearest}");
                }
            }
        }
    }

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
