//! Deterministic inputs for the peers: the same arguments give the same
//! pings, fences and points on every run and machine.
//!
//! - [`fixture_pings`]: a fleet's pings, each one a [`crate::fixtures`]
//!   payload decoded and validated by fleetpipe's ingest codec, so they are
//!   pings fleetpipe itself would accept.
//! - [`city_fences_geojson`]: a city of fences (squares, squares with a
//!   hole, two-part multipolygons and circles) as the GeoJSON
//!   `FeatureCollection` fleetpipe's geofence crate reads.
//! - [`city_points`]: positions in that city, half of them close to a fence
//!   (vehicles spend their time at depots and customers, and points near
//!   edges are where two geofencing implementations can disagree).

use bytes::Bytes;
use fleetpipe_ingest::codec::{Encoding, VehicleScope, decode_message};
use fleetpipe_ingest::validate::{ValidationConfig, Validator};
use fleetpipe_model::Ping;
use serde_json::{Value, json};

use super::PeerError;
use crate::fixtures::{
    PING_INTERVAL_MS, REFERENCE_NOW_MS, XorShift64, json_ping_of, proto_ping_of,
};

/// `pings_per_vehicle` pings of each of `vehicles` vehicles, round-robin
/// (ping 0 of every vehicle, then ping 1, ...), as a fleet reporting once a
/// second arrives.
///
/// Even vehicles (`phone-berlin-NNNNN`) are phones sending JSON, odd ones
/// (`truck-berlin-NNNNN`) firmware units sending Protobuf; both drive loops
/// around central Berlin. Ping `i` of a vehicle has `seq = i` and device
/// time [`REFERENCE_NOW_MS`] + `i` seconds, so `(vehicle_id, ts, seq)` is
/// unique across the whole result.
///
/// # Errors
///
/// [`PeerError::Fixture`] if the codec refuses a fixture (a bug).
pub fn fixture_pings(vehicles: usize, pings_per_vehicle: usize) -> Result<Vec<Ping>, PeerError> {
    let validator = Validator::new(ValidationConfig::default());
    let ids: Vec<String> = (0..vehicles)
        .map(|v| {
            let kind = if v % 2 == 0 { "phone" } else { "truck" };
            format!("{kind}-berlin-{v:05}")
        })
        .collect();
    let mut pings = Vec::with_capacity(vehicles.saturating_mul(pings_per_vehicle));
    for i in 0..pings_per_vehicle as u64 {
        // A fixture ping is stamped one interval before the `now` it is
        // built (and validated) with.
        let step = i64::try_from(i + 1)
            .map_err(|_| PeerError::Fixture(format!("ping index {i} out of range")))?;
        let now = REFERENCE_NOW_MS + step * PING_INTERVAL_MS;
        for (v, id) in ids.iter().enumerate() {
            let (payload, encoding) = if v % 2 == 0 {
                (json_ping_of(id, i, now), Encoding::Json)
            } else {
                (proto_ping_of(id, i, now), Encoding::Protobuf)
            };
            let decoded = decode_message(
                &Bytes::from(payload),
                encoding,
                VehicleScope::Topic(id),
                &validator,
                now,
            )
            .map_err(|r| PeerError::Fixture(format!("{id} ping {i} refused: {r}")))?;
            for ping in decoded {
                pings.push(
                    ping.map_err(|r| PeerError::Fixture(format!("{id} ping {i} refused: {r}")))?,
                );
            }
        }
    }
    Ok(pings)
}

/// Centre of the city, degrees (central Berlin, as the fixtures' loops).
const CITY_CENTER: (f64, f64) = (52.52, 13.40);
/// Side of the (square) city, metres.
const CITY_M: f64 = 20_000.0;
/// Metres per degree of latitude (WGS84 mean).
const M_PER_DEG_LAT: f64 = 110_574.0;
/// Metres per degree of longitude at the equator.
const M_PER_DEG_LON_EQ: f64 = 111_320.0;

/// One generated fence, in metres east / north of the city centre.
#[derive(Debug, Clone, Copy)]
struct FenceSpec {
    east_m: f64,
    north_m: f64,
    /// Half the side of a square, or the radius of a circle.
    half_m: f64,
    shape: SpecShape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecShape {
    Square,
    SquareWithHole,
    TwoSquares,
    Circle,
}

/// The fences of [`city_fences_geojson`] for `count` and `seed`.
fn fence_specs(count: usize, seed: u64) -> Vec<FenceSpec> {
    let mut rng = XorShift64::new(seed);
    let half_city = CITY_M / 2.0 - 500.0;
    (0..count)
        .map(|i| FenceSpec {
            east_m: rng.range(-half_city, half_city),
            north_m: rng.range(-half_city, half_city),
            half_m: rng.range(50.0, 150.0),
            // Mostly plain squares, as depots and customers are drawn; every
            // fourth fence is one of the shapes that exercise holes, parts
            // and great-circle distance.
            shape: match i % 8 {
                3 => SpecShape::SquareWithHole,
                5 => SpecShape::TwoSquares,
                1 | 7 => SpecShape::Circle,
                _ => SpecShape::Square,
            },
        })
        .collect()
}

/// Metres east / north of the city centre as `[lon, lat]` degrees.
fn position(east_m: f64, north_m: f64) -> (f64, f64) {
    let lat = CITY_CENTER.0 + north_m / M_PER_DEG_LAT;
    let lon = CITY_CENTER.1 + east_m / (M_PER_DEG_LON_EQ * CITY_CENTER.0.to_radians().cos());
    (lon, lat)
}

/// A closed counter-clockwise ring of the square of half side `half`
/// centred `(e, n)` metres from the city centre.
fn square_ring(e: f64, n: f64, half: f64) -> Value {
    let corners = [
        (e - half, n - half),
        (e + half, n - half),
        (e + half, n + half),
        (e - half, n + half),
        (e - half, n - half),
    ];
    Value::Array(
        corners
            .iter()
            .map(|&(e, n)| {
                let (lon, lat) = position(e, n);
                json!([lon, lat])
            })
            .collect(),
    )
}

/// `count` fences spread over a 20 × 20 km city centred on Berlin, as a
/// GeoJSON `FeatureCollection` with ids `fence-0`, `fence-1`, ...
///
/// Per 8 fences: 4 squares of 100-300 m, 1 square with a square hole of
/// half its side, 1 `MultiPolygon` of two such squares side by side and 2
/// circles (`Point` + `radius_m`) of 50-150 m. Fences may overlap, as real
/// ones do.
#[must_use]
pub fn city_fences_geojson(count: usize, seed: u64) -> String {
    let features: Vec<Value> = fence_specs(count, seed)
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (e, n, h) = (f.east_m, f.north_m, f.half_m);
            let mut properties = json!({
                "id": format!("fence-{i}"),
                "kind": if i % 4 == 0 { "depot" } else { "customer" },
            });
            let geometry = match f.shape {
                SpecShape::Square => json!({
                    "type": "Polygon",
                    "coordinates": [square_ring(e, n, h)],
                }),
                SpecShape::SquareWithHole => json!({
                    "type": "Polygon",
                    "coordinates": [square_ring(e, n, h), square_ring(e, n, h / 2.0)],
                }),
                SpecShape::TwoSquares => json!({
                    "type": "MultiPolygon",
                    "coordinates": [
                        [square_ring(e - 1.5 * h, n, h / 2.0)],
                        [square_ring(e + 1.5 * h, n, h / 2.0)],
                    ],
                }),
                SpecShape::Circle => {
                    properties["radius_m"] = json!(h);
                    let (lon, lat) = position(e, n);
                    json!({ "type": "Point", "coordinates": [lon, lat] })
                }
            };
            json!({ "type": "Feature", "properties": properties, "geometry": geometry })
        })
        .collect();
    json!({ "type": "FeatureCollection", "features": features }).to_string()
}

/// `count` positions `(lat, lon)` in the city of
/// [`city_fences_geojson`]`(fence_count, seed)`: even ones uniformly over
/// the city, odd ones within three half-sides (or radii) east and north of
/// a random fence's centre, which reaches past every shape's edge (all
/// uniform when `fence_count` is 0).
#[must_use]
pub fn city_points(count: usize, fence_count: usize, seed: u64) -> Vec<(f64, f64)> {
    let fences = fence_specs(fence_count, seed);
    // Another stream than the fences', so points do not sit on fence centres.
    let mut rng = XorShift64::new(seed ^ 0x5EED_F0F0_5EED_F0F0);
    let half_city = CITY_M / 2.0;
    (0..count)
        .map(|k| {
            let pick = (rng.next_u64() % fences.len().max(1) as u64) as usize;
            let (e, n) = match fences.get(pick) {
                Some(f) if k % 2 == 1 => {
                    // Two-square multipolygons reach 2 half-sides out.
                    let reach = 3.0 * f.half_m;
                    (
                        f.east_m + rng.range(-reach, reach),
                        f.north_m + rng.range(-reach, reach),
                    )
                }
                _ => (
                    rng.range(-half_city, half_city),
                    rng.range(-half_city, half_city),
                ),
            };
            let (lon, lat) = position(e, n);
            (lat, lon)
        })
        .collect()
}
