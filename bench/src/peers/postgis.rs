//! Geofencing in the database: PostGIS answering "which fences contain this
//! point" for the same fences and points as fleetpipe's in-process index.
//!
//! # The PostGIS side
//!
//! [`PostgisFences::load`] parses the GeoJSON with fleetpipe's own parser
//! ([`FenceSet::from_geojson_str`], so both sides see exactly the same
//! fences, unclosed rings closed the same way) and loads them into a fresh
//! schema (dropped first if it exists, **left in place** afterwards;
//! [`super::drop_schema`] removes it), next to the `postgis` extension it
//! creates in the database if missing:
//!
//! - `fence_polygons (ord, id, geom geometry(MultiPolygon, 4326))` with a
//!   GiST index on `geom`, loaded from WKB (bit-exact coordinates) and
//!   tested with `ST_Intersects(geom, point)`: a closed set, so a point on
//!   an outer or a hole's ring is inside, as in fleetpipe; planar in
//!   degrees, as in fleetpipe.
//! - `fence_circles (ord, id, center geography(Point, 4326), radius_m,
//!   bounds geometry(Polygon, 4326))` tested with `ST_DWithin(center,
//!   point::geography, radius_m, false)`: great-circle distance on PostGIS's
//!   sphere of mean radius 6 371 008.77 m against fleetpipe's haversine on
//!   6 371 008.8 m, the same predicate up to micrometres. (`true`, the
//!   default, would measure on the spheroid, a different predicate that
//!   disagrees with fleetpipe by up to ~0.3 % of the radius, and is slower.)
//!   An index on `center` cannot serve a radius that differs per row, so the
//!   GiST index is on `bounds`, a lon/lat box around each circle computed
//!   here with a safety margin, and the query tests `bounds && point`
//!   first.
//!
//! After loading, the tables are `ANALYZE`d so the planner uses the indexes.
//!
//! # What is timed
//!
//! [`PostgisFences::lookup_batched`]: one query per batch of points, the
//! points sent as two `float8[]` (`unnest ... WITH ORDINALITY`, joined
//! `LATERAL` against both tables), answering `(point number, fence id)`
//! pairs; timed from the first query until the last batch's rows are read,
//! after one untimed warm-up batch. [`PostgisFences::lookup_each`] sends one
//! query per point instead (a round trip each), the way an application
//! asking per ping would.
//!
//! [`fleetpipe_lookup`] builds [`GeofenceIndex`] with the pipeline's default
//! cell size (untimed;
//! reported as `setup`) and times `lookup_into` for every point on one
//! thread, after an untimed warm-up over the first points. Both sides run
//! single-threaded: one connection, one backend, one core.
//!
//! # Do they agree?
//!
//! [`compare_answers`] lists every point where the two answers differ with
//! the point's distance to the disputed fences' boundaries, so numerical
//! differences within centimetres of an edge can be told from real ones
//! and are reported rather than hidden.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fleetpipe_geofence::{DEFAULT_CELL_SIZE_M, Fence, FenceId, FenceSet, GeofenceIndex, Shape};
use tokio_postgres::{Client, Statement};

use super::{PeerError, connect, quote_ident};

/// Points looked up untimed before the clock starts (fleetpipe), or the
/// first batch (PostGIS).
const WARM_UP_POINTS: usize = 1_000;

/// Mean earth radius of fleetpipe's haversine (`geo::Haversine`), metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Advisory lock key serialising `CREATE EXTENSION postgis` between
/// concurrent loads (two sessions creating it at once collide on the
/// catalog's unique index instead of one waiting for the other).
const EXTENSION_LOCK: i64 = 0x4650_4749_5321; // "FPGIS!"

/// Answers and timing of one geofencing engine over a list of points.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupResult {
    /// Which engine and mode, e.g. `postgis batched (1000 points/query)`.
    pub engine: String,
    /// Points looked up.
    pub points: usize,
    /// (point, fence) pairs found, i.e. the sum of the answers' lengths.
    pub hits: usize,
    /// Untimed preparation: building the index, or loading and indexing
    /// the tables.
    pub setup: Duration,
    /// The timed lookups.
    pub elapsed: Duration,
    /// `elapsed / points`, nanoseconds.
    pub per_point_ns: f64,
    /// Per point (in input order), the ids of the fences containing it,
    /// sorted.
    pub answers: Vec<Vec<String>>,
}

impl LookupResult {
    fn new(
        engine: String,
        setup: Duration,
        elapsed: Duration,
        mut answers: Vec<Vec<String>>,
    ) -> Self {
        for answer in &mut answers {
            answer.sort_unstable();
        }
        let points = answers.len();
        Self {
            engine,
            points,
            hits: answers.iter().map(Vec::len).sum(),
            setup,
            elapsed,
            per_point_ns: elapsed.as_nanos() as f64 / points.max(1) as f64,
            answers,
        }
    }
}

/// Fences loaded into PostGIS, ready to be queried (see the module docs).
#[derive(Debug)]
pub struct PostgisFences {
    client: Client,
    batched: Statement,
    each: Statement,
    fences: usize,
    setup: Duration,
}

impl PostgisFences {
    /// Creates the `postgis` extension if missing, drops and recreates
    /// `schema`, loads the fences of `fences_geojson` into it and indexes
    /// them. The schema is left in place.
    ///
    /// # Errors
    ///
    /// [`PeerError::Geofence`] for fences fleetpipe refuses;
    /// [`PeerError::Db`] for database failures, e.g. PostGIS not installed
    /// (Debian: `postgresql-15-postgis-3`).
    pub async fn load(url: &str, schema: &str, fences_geojson: &str) -> Result<Self, PeerError> {
        let set = FenceSet::from_geojson_str(fences_geojson)?;
        let started = Instant::now();
        let mut client = connect(url).await?;
        let txn = client.transaction().await.map_err(PeerError::db("begin"))?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&EXTENSION_LOCK])
            .await
            .map_err(PeerError::db("extension lock"))?;
        txn.batch_execute("CREATE EXTENSION IF NOT EXISTS postgis")
            .await
            .map_err(PeerError::db(
                "CREATE EXTENSION postgis (is PostGIS installed? Debian: postgresql-15-postgis-3)",
            ))?;
        txn.commit()
            .await
            .map_err(PeerError::db("commit CREATE EXTENSION"))?;

        let s = quote_ident(schema);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {s} CASCADE; \
                 CREATE SCHEMA {s}; \
                 CREATE TABLE {s}.fence_polygons (\
                     ord integer PRIMARY KEY, \
                     id text NOT NULL UNIQUE, \
                     geom geometry(MultiPolygon, 4326) NOT NULL); \
                 CREATE TABLE {s}.fence_circles (\
                     ord integer PRIMARY KEY, \
                     id text NOT NULL UNIQUE, \
                     center geography(Point, 4326) NOT NULL, \
                     radius_m double precision NOT NULL, \
                     bounds geometry(Polygon, 4326) NOT NULL)"
            ))
            .await
            .map_err(PeerError::db("create fence tables"))?;

        let mut polygons = PolygonColumns::default();
        let mut circles = CircleColumns::default();
        for (ord, fence) in set.fences().iter().enumerate() {
            let ord = i32::try_from(ord)
                .map_err(|_| PeerError::InvalidArgument(format!("fence #{ord}: too many")))?;
            match fence.shape() {
                Shape::Polygon(_) => polygons.push(ord, fence),
                Shape::Circle { center, radius_m } => {
                    circles.push(ord, fence, center.y(), center.x(), *radius_m);
                }
            }
        }
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.fence_polygons (ord, id, geom) \
                     SELECT o, i, ST_Multi(ST_GeomFromWKB(w, 4326)) \
                     FROM unnest($1::int4[], $2::text[], $3::bytea[]) AS t(o, i, w)"
                ),
                &[&polygons.ord, &polygons.id, &polygons.wkb],
            )
            .await
            .map_err(PeerError::db("insert polygons"))?;
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.fence_circles (ord, id, center, radius_m, bounds) \
                     SELECT o, i, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography, r, \
                            ST_MakeEnvelope(lon - dlon, lat - dlat, lon + dlon, lat + dlat, 4326) \
                     FROM unnest($1::int4[], $2::text[], $3::float8[], $4::float8[], \
                                 $5::float8[], $6::float8[], $7::float8[]) \
                          AS t(o, i, lat, lon, r, dlat, dlon)"
                ),
                &[
                    &circles.ord,
                    &circles.id,
                    &circles.lat,
                    &circles.lon,
                    &circles.radius_m,
                    &circles.dlat,
                    &circles.dlon,
                ],
            )
            .await
            .map_err(PeerError::db("insert circles"))?;
        client
            .batch_execute(&format!(
                "CREATE INDEX ON {s}.fence_polygons USING gist (geom); \
                 CREATE INDEX ON {s}.fence_circles USING gist (bounds); \
                 ANALYZE {s}.fence_polygons; \
                 ANALYZE {s}.fence_circles"
            ))
            .await
            .map_err(PeerError::db("index fences"))?;

        // The point is built once per point and reused by both tables; the
        // geography cast happens only for circles whose box holds it.
        let batched = client
            .prepare(&format!(
                "SELECT p.i, h.id \
                 FROM unnest($1::float8[], $2::float8[]) WITH ORDINALITY AS p(lat, lon, i) \
                 CROSS JOIN LATERAL \
                     (SELECT ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326) AS g) AS q \
                 CROSS JOIN LATERAL ( \
                     SELECT f.id FROM {s}.fence_polygons AS f \
                     WHERE ST_Intersects(f.geom, q.g) \
                     UNION ALL \
                     SELECT c.id FROM {s}.fence_circles AS c \
                     WHERE c.bounds && q.g \
                       AND ST_DWithin(c.center, q.g::geography, c.radius_m, false) \
                 ) AS h"
            ))
            .await
            .map_err(PeerError::db("prepare batched lookup"))?;
        let each = client
            .prepare(&format!(
                "WITH q AS (SELECT ST_SetSRID(ST_MakePoint($2::float8, $1::float8), 4326) AS g) \
                 SELECT f.id FROM {s}.fence_polygons AS f, q \
                 WHERE ST_Intersects(f.geom, q.g) \
                 UNION ALL \
                 SELECT c.id FROM {s}.fence_circles AS c, q \
                 WHERE c.bounds && q.g \
                   AND ST_DWithin(c.center, q.g::geography, c.radius_m, false)"
            ))
            .await
            .map_err(PeerError::db("prepare per-point lookup"))?;
        Ok(Self {
            client,
            batched,
            each,
            fences: set.len(),
            setup: started.elapsed(),
        })
    }

    /// Fences loaded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.fences
    }

    /// Whether no fence was loaded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.fences == 0
    }

    /// Looks up every `(lat, lon)` of `points`, `batch` points per query
    /// (see the module docs). `setup` in the result is the load's.
    ///
    /// # Errors
    ///
    /// [`PeerError::InvalidArgument`] for a zero batch; [`PeerError::Db`].
    pub async fn lookup_batched(
        &self,
        points: &[(f64, f64)],
        batch: usize,
    ) -> Result<LookupResult, PeerError> {
        if batch == 0 {
            return Err(PeerError::InvalidArgument(
                "batch must be at least 1".into(),
            ));
        }
        let mut answers = vec![Vec::new(); points.len()];
        if let Some(first) = points.chunks(batch).next() {
            black_box(self.query_batch(first).await?);
        }
        let started = Instant::now();
        for (n, chunk) in points.chunks(batch).enumerate() {
            for (i, id) in self.query_batch(chunk).await? {
                // WITH ORDINALITY counts from 1.
                let slot = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| answers.get_mut(n * batch + i))
                    .ok_or_else(|| {
                        PeerError::Unexpected(format!("PostGIS answered for point #{i}"))
                    })?;
                slot.push(id);
            }
        }
        let elapsed = started.elapsed();
        Ok(LookupResult::new(
            format!("postgis batched ({batch} points/query)"),
            self.setup,
            elapsed,
            answers,
        ))
    }

    /// Looks up every `(lat, lon)` of `points` with one query each, one
    /// after another. `setup` in the result is the load's.
    ///
    /// # Errors
    ///
    /// [`PeerError::Db`].
    pub async fn lookup_each(&self, points: &[(f64, f64)]) -> Result<LookupResult, PeerError> {
        if let Some(&(lat, lon)) = points.first() {
            black_box(
                self.client
                    .query(&self.each, &[&lat, &lon])
                    .await
                    .map_err(PeerError::db("per-point lookup"))?,
            );
        }
        let mut answers = Vec::with_capacity(points.len());
        let started = Instant::now();
        for &(lat, lon) in points {
            let rows = self
                .client
                .query(&self.each, &[&lat, &lon])
                .await
                .map_err(PeerError::db("per-point lookup"))?;
            answers.push(rows.iter().map(|row| row.get::<_, String>(0)).collect());
        }
        let elapsed = started.elapsed();
        Ok(LookupResult::new(
            "postgis one query per point".into(),
            self.setup,
            elapsed,
            answers,
        ))
    }

    /// One batched query: `(point number from 1, fence id)` pairs.
    async fn query_batch(&self, points: &[(f64, f64)]) -> Result<Vec<(i64, String)>, PeerError> {
        let (lat, lon): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
        let rows = self
            .client
            .query(&self.batched, &[&lat, &lon])
            .await
            .map_err(PeerError::db("batched lookup"))?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }
}

/// Loads `fences_geojson` into PostGIS in `schema` ([`PostgisFences::load`];
/// the schema is left in place) and looks up `points` (`(lat, lon)`),
/// `batch` per query ([`PostgisFences::lookup_batched`]).
///
/// # Errors
///
/// As [`PostgisFences::load`] and [`PostgisFences::lookup_batched`].
pub async fn postgis_lookup(
    url: &str,
    schema: &str,
    fences_geojson: &str,
    points: &[(f64, f64)],
    batch: usize,
) -> Result<LookupResult, PeerError> {
    PostgisFences::load(url, schema, fences_geojson)
        .await?
        .lookup_batched(points, batch)
        .await
}

/// fleetpipe's own lookup of `points` (`(lat, lon)`) in `fences_geojson`:
/// [`GeofenceIndex::build`] with [`DEFAULT_CELL_SIZE_M`] (untimed, reported
/// as `setup`), then [`GeofenceIndex::lookup_into`] per point, in-process on
/// the calling thread.
///
/// # Errors
///
/// [`PeerError::Geofence`] if the fences cannot be parsed or indexed.
pub fn fleetpipe_lookup(
    fences_geojson: &str,
    points: &[(f64, f64)],
) -> Result<LookupResult, PeerError> {
    let set = FenceSet::from_geojson_str(fences_geojson)?;
    let started = Instant::now();
    let index = GeofenceIndex::build(set, DEFAULT_CELL_SIZE_M)?;
    let setup = started.elapsed();
    let lookup = |i: usize, out: &mut Vec<FenceId>| {
        let (lat, lon) = points[i];
        index.lookup_into(lat, lon, out);
    };

    let mut out = Vec::new();
    for i in 0..points.len().min(WARM_UP_POINTS) {
        lookup(i, &mut out);
        black_box(&out);
    }
    // The hits go to one flat buffer while timing, so the loop measures the
    // lookups rather than allocating a vector per point.
    let mut hits: Vec<FenceId> = Vec::with_capacity(points.len());
    let mut ends: Vec<usize> = Vec::with_capacity(points.len());
    let started = Instant::now();
    for i in 0..points.len() {
        lookup(i, &mut out);
        hits.extend_from_slice(&out);
        ends.push(hits.len());
    }
    let elapsed = started.elapsed();

    let mut start = 0;
    let answers = ends
        .iter()
        .map(|&end| {
            let answer = hits[start..end]
                .iter()
                .filter_map(|&id| index.fence(id).map(|f| f.id.clone()))
                .collect();
            start = end;
            answer
        })
        .collect();
    Ok(LookupResult::new(
        format!("fleetpipe GeofenceIndex ({DEFAULT_CELL_SIZE_M} m cells)"),
        setup,
        elapsed,
        answers,
    ))
}

/// How two engines' answers for the same points compare.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Points compared.
    pub points: usize,
    /// Points both answered identically.
    pub agreeing: usize,
    /// Every point where they did not.
    pub disagreements: Vec<Disagreement>,
}

impl Comparison {
    /// Disagreements whose point lies within `tolerance_m` of every
    /// disputed fence's boundary: numerical differences (e.g. PostGIS's
    /// sphere against fleetpipe's haversine) rather than different answers.
    #[must_use]
    pub fn near_boundary(&self, tolerance_m: f64) -> usize {
        self.disagreements
            .iter()
            .filter(|d| d.boundary_m <= tolerance_m)
            .count()
    }

    /// Disagreements farther than `tolerance_m` from a disputed fence's
    /// boundary: real differences.
    #[must_use]
    pub fn beyond(&self, tolerance_m: f64) -> usize {
        self.disagreements.len() - self.near_boundary(tolerance_m)
    }
}

/// One point the engines answered differently.
#[derive(Debug, Clone, PartialEq)]
pub struct Disagreement {
    /// Position of the point in the input.
    pub index: usize,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Fence ids only fleetpipe's answer has.
    pub only_fleetpipe: Vec<String>,
    /// Fence ids only the other engine's answer has.
    pub only_other: Vec<String>,
    /// The largest distance from the point to the boundary of a disputed
    /// fence, metres (great-circle for circles; for polygons in a local
    /// equirectangular projection, good to well under 1 % nearby).
    pub boundary_m: f64,
}

/// Compares fleetpipe's answers with another engine's (e.g. PostGIS's) for
/// the same `points` (`(lat, lon)`) and fences; answers as in
/// [`LookupResult::answers`] (sorted ids per point).
///
/// # Errors
///
/// [`PeerError::InvalidArgument`] if the lengths differ;
/// [`PeerError::Geofence`] if the fences cannot be parsed.
pub fn compare_answers(
    fences_geojson: &str,
    points: &[(f64, f64)],
    fleetpipe: &[Vec<String>],
    other: &[Vec<String>],
) -> Result<Comparison, PeerError> {
    if fleetpipe.len() != points.len() || other.len() != points.len() {
        return Err(PeerError::InvalidArgument(format!(
            "{} points, but {} and {} answers",
            points.len(),
            fleetpipe.len(),
            other.len()
        )));
    }
    let set = FenceSet::from_geojson_str(fences_geojson)?;
    let by_id: std::collections::HashMap<&str, &Fence> =
        set.fences().iter().map(|f| (f.id.as_str(), f)).collect();
    let mut disagreements = Vec::new();
    for (index, ((&(lat, lon), ours), theirs)) in
        points.iter().zip(fleetpipe).zip(other).enumerate()
    {
        if ours == theirs {
            continue;
        }
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|id| !b.contains(id)).cloned().collect()
        };
        let only_fleetpipe = only(ours, theirs);
        let only_other = only(theirs, ours);
        let boundary_m = only_fleetpipe
            .iter()
            .chain(&only_other)
            .map(|id| {
                by_id
                    .get(id.as_str())
                    .map_or(f64::INFINITY, |f| boundary_distance_m(f, lat, lon))
            })
            .fold(0.0, f64::max);
        disagreements.push(Disagreement {
            index,
            lat,
            lon,
            only_fleetpipe,
            only_other,
            boundary_m,
        });
    }
    Ok(Comparison {
        points: points.len(),
        agreeing: points.len() - disagreements.len(),
        disagreements,
    })
}

/// Distance from the point to the fence's boundary (not to the fence: a
/// point inside is as far from the edge as it is), metres.
fn boundary_distance_m(fence: &Fence, lat: f64, lon: f64) -> f64 {
    match fence.shape() {
        Shape::Circle { center, radius_m } => {
            (haversine_m(center.y(), center.x(), lat, lon) - radius_m).abs()
        }
        Shape::Polygon(mp) => {
            // Metres per degree at the point's latitude (WGS84 means), as
            // fleetpipe's `Fence::distance_m` measures polygons.
            let ky = 110_574.0;
            let kx = 111_320.0 * lat.to_radians().cos();
            let mut best = f64::INFINITY;
            for polygon in mp.iter() {
                for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
                    for pair in ring.0.windows(2) {
                        let a = ((pair[0].x - lon) * kx, (pair[0].y - lat) * ky);
                        let b = ((pair[1].x - lon) * kx, (pair[1].y - lat) * ky);
                        best = best.min(segment_distance_to_origin(a, b));
                    }
                }
            }
            best
        }
    }
}

/// Great-circle distance on fleetpipe's sphere, metres (the formula of
/// `geo::Haversine`).
fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let dphi = (lat2 - lat1).to_radians();
    let dlambda = (lon2 - lon1).to_radians();
    let a = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().asin()
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

/// The polygon fences' columns, as arrays for one `INSERT ... unnest`.
#[derive(Debug, Default)]
struct PolygonColumns {
    ord: Vec<i32>,
    id: Vec<String>,
    wkb: Vec<Vec<u8>>,
}

impl PolygonColumns {
    fn push(&mut self, ord: i32, fence: &Fence) {
        let Shape::Polygon(mp) = fence.shape() else {
            return;
        };
        // WKB, little-endian: byte order, type, then counts and raw f64s,
        // so PostGIS gets the very bits fleetpipe parsed (no decimal text
        // round trip).
        let mut wkb = Vec::new();
        let put_u32 = |out: &mut Vec<u8>, v: usize| {
            out.extend_from_slice(&u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes());
        };
        wkb.push(1);
        put_u32(&mut wkb, 6); // MultiPolygon
        put_u32(&mut wkb, mp.0.len());
        for polygon in mp.iter() {
            wkb.push(1);
            put_u32(&mut wkb, 3); // Polygon
            put_u32(&mut wkb, 1 + polygon.interiors().len());
            for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
                put_u32(&mut wkb, ring.0.len());
                for c in &ring.0 {
                    wkb.extend_from_slice(&c.x.to_le_bytes());
                    wkb.extend_from_slice(&c.y.to_le_bytes());
                }
            }
        }
        self.ord.push(ord);
        self.id.push(fence.id.clone());
        self.wkb.push(wkb);
    }
}

/// The circle fences' columns, as arrays for one `INSERT ... unnest`.
#[derive(Debug, Default)]
struct CircleColumns {
    ord: Vec<i32>,
    id: Vec<String>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    radius_m: Vec<f64>,
    /// Half the height of the bounding box, degrees.
    dlat: Vec<f64>,
    /// Half the width of the bounding box, degrees.
    dlon: Vec<f64>,
}

impl CircleColumns {
    fn push(&mut self, ord: i32, fence: &Fence, lat: f64, lon: f64, radius_m: f64) {
        // The circle's angular radius, 1 % and 1 m larger so no point that
        // either sphere counts as inside falls outside the box.
        let delta = (radius_m * 1.01 + 1.0) / EARTH_RADIUS_M;
        let dlat = delta.to_degrees();
        // A spherical cap of angular radius d around latitude phi spans
        // asin(sin d / cos phi) of longitude; cos is taken at the cap's edge
        // nearest a pole, which only widens the box. Near a pole the box is
        // the whole band.
        let edge = (lat.abs() + dlat).min(90.0).to_radians().cos();
        let dlon = if delta.sin() < edge {
            (delta.sin() / edge).asin().to_degrees()
        } else {
            180.0
        };
        self.ord.push(ord);
        self.id.push(fence.id.clone());
        self.lat.push(lat);
        self.lon.push(lon);
        self.radius_m.push(radius_m);
        self.dlat.push(dlat);
        self.dlon.push(dlon);
    }
}
