//! Reading fences: GeoJSON `FeatureCollection`s
//! ([`FenceSet::from_geojson_str`]) and rows of a fences table
//! ([`FenceRow`], [`FenceSet::from_rows`]), read as the features they
//! describe. Every error names the feature (or row) and its id.

use std::path::Path;

use geo::{BoundingRect, Coord, LineString, MultiPolygon, Point, Polygon};
use serde_json::{Map, Value};

use crate::model::circle_bbox;
use crate::{Fence, FenceKind, FenceSet, GeofenceError, MAX_ABS_LAT, MAX_RADIUS_M, Shape};

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

    /// Reads and parses a GeoJSON file (the only I/O of this crate without
    /// its `service` feature).
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
}

/// One row of a fences table (`geofence.postgres`; no PostGIS needed), as
/// `geofence/sql/fence_table.sql` creates it (`{table}` being the table's
/// name):
///
/// ```sql
#[doc = include_str!("../sql/fence_table.sql")]
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
