//! The synthetic city: a square street grid around a centre point, with
//! depots, customers and charging stations at intersections and one
//! restricted zone, and the GeoJSON fences that describe it to fleetpipe.
//!
//! Coordinates: intersection `(x, y)` (`x` eastwards, `y` northwards, both
//! `0..=grid_blocks`) lies at `(x * block_m, y * block_m)` metres from the
//! south-west corner; the grid's middle is the configured centre. Metres map
//! to degrees with an equirectangular projection, exact enough for a city of
//! a few kilometres (and the same one the fences use, so a vehicle parked at
//! a customer's intersection is at the centre of its circle).
//!
//! Every street is a road; every `arterial_every`th street (in each
//! direction) is an arterial with a higher speed limit.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::SimConfig;
use crate::rng::{CITY_STREAM, Rand};

/// Metres per degree of latitude (and of longitude at the equator).
pub(crate) const M_PER_DEG: f64 = 111_320.0;

/// An intersection of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// Column, `0..=grid_blocks`, west to east.
    pub x: u16,
    /// Row, `0..=grid_blocks`, south to north.
    pub y: u16,
}

impl Node {
    /// Grid (Manhattan) distance to `other`, in blocks.
    pub fn blocks_to(self, other: Node) -> u32 {
        u32::from(self.x.abs_diff(other.x)) + u32::from(self.y.abs_diff(other.y))
    }
}

/// What a place is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceKind {
    /// Home of vehicles: tours start and end here; vehicles charge slowly.
    Depot,
    /// A delivery stop.
    Customer,
    /// A fast charger.
    ChargingStation,
}

impl PlaceKind {
    /// The fence `kind` property.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Depot => "depot",
            Self::Customer => "customer",
            Self::ChargingStation => "charging_station",
        }
    }
}

/// A place vehicles drive to, at an intersection; also a geofence.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    /// Fence id: `depot-N`, `customer-N` or `charger-N` (N from 1, stable per seed).
    pub id: String,
    /// Display name.
    pub name: String,
    /// What it is.
    pub kind: PlaceKind,
    /// Where it is.
    pub node: Node,
    /// Latitude of the intersection, degrees.
    pub lat: f64,
    /// Longitude of the intersection, degrees.
    pub lon: f64,
}

/// The restricted zone: a square of blocks with a lower speed limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RestrictedZone {
    /// Fence id (`restricted-1`).
    pub id: String,
    /// Speed limit, km/h.
    pub speed_limit_kmh: f64,
    /// West, south, east, north edges in grid metres; they cut streets
    /// mid-block, so vehicles cross the boundary cleanly.
    pub bounds_m: [f64; 4],
}

/// The street grid and its places. Built from the config and seed alone.
#[derive(Debug, Clone)]
pub struct City {
    center_lat: f64,
    center_lon: f64,
    blocks: u16,
    block_m: f64,
    arterial_every: u16,
    street_kmh: f64,
    arterial_kmh: f64,
    m_per_deg_lon: f64,
    depot_size_m: f64,
    customer_radius_m: f64,
    charger_radius_m: f64,
    dwell: [u32; 2],
    places: Vec<Place>,
    depots: Vec<u32>,
    customers: Vec<u32>,
    chargers: Vec<u32>,
    restricted: Option<RestrictedZone>,
}

impl City {
    /// Lays out the city of a validated config.
    pub(crate) fn new(cfg: &SimConfig, key: [u8; 32]) -> City {
        let mut rng = Rand::at(key, CITY_STREAM, 0);
        let mut city = City {
            center_lat: cfg.center_lat,
            center_lon: cfg.center_lon,
            blocks: cfg.grid_blocks,
            block_m: cfg.block_m,
            arterial_every: cfg.arterial_every,
            street_kmh: cfg.street_kmh,
            arterial_kmh: cfg.arterial_kmh,
            m_per_deg_lon: M_PER_DEG * cfg.center_lat.to_radians().cos(),
            depot_size_m: cfg.depot_size_m,
            customer_radius_m: cfg.customer_radius_m,
            charger_radius_m: cfg.charger_radius_m,
            dwell: [cfg.customer_stop_s[0], cfg.depot_stop_s[0]],
            places: Vec::new(),
            depots: Vec::new(),
            customers: Vec::new(),
            chargers: Vec::new(),
            restricted: None,
        };
        let mut taken = HashSet::new();
        let side = u32::from(cfg.grid_blocks) + 1;
        for (kind, count) in [
            (PlaceKind::Depot, cfg.depots),
            (PlaceKind::Customer, cfg.customers),
            (PlaceKind::ChargingStation, cfg.charging_stations),
        ] {
            for n in 1..=count {
                // Validation leaves at least half the intersections free,
                // so this takes two draws on average.
                let node = loop {
                    let node = Node {
                        x: u16::try_from(rng.below(side)).unwrap_or(0),
                        y: u16::try_from(rng.below(side)).unwrap_or(0),
                    };
                    if taken.insert(node) {
                        break node;
                    }
                };
                let (lat, lon) = city.node_lat_lon(node);
                let (id, name) = match kind {
                    PlaceKind::Depot => (format!("depot-{n}"), format!("Depot {n}")),
                    PlaceKind::Customer => (format!("customer-{n}"), format!("Customer {n}")),
                    PlaceKind::ChargingStation => {
                        (format!("charger-{n}"), format!("Charging station {n}"))
                    }
                };
                let index = u32::try_from(city.places.len()).unwrap_or(u32::MAX);
                match kind {
                    PlaceKind::Depot => city.depots.push(index),
                    PlaceKind::Customer => city.customers.push(index),
                    PlaceKind::ChargingStation => city.chargers.push(index),
                }
                city.places.push(Place {
                    id,
                    name,
                    kind,
                    node,
                    lat,
                    lon,
                });
            }
        }
        if cfg.restricted_blocks > 0 {
            let rb = u32::from(cfg.restricted_blocks);
            // Origin in [1, blocks - rb]: a block of ordinary city on every side.
            let x0 = 1 + rng.below(u32::from(cfg.grid_blocks) - rb);
            let y0 = 1 + rng.below(u32::from(cfg.grid_blocks) - rb);
            let b = cfg.block_m;
            let (x0, y0, rb) = (f64::from(x0), f64::from(y0), f64::from(rb));
            city.restricted = Some(RestrictedZone {
                id: "restricted-1".to_owned(),
                speed_limit_kmh: cfg.restricted_kmh,
                bounds_m: [
                    (x0 - 0.5) * b,
                    (y0 - 0.5) * b,
                    (x0 + rb - 0.5) * b,
                    (y0 + rb - 0.5) * b,
                ],
            });
        }
        city
    }

    /// All places: depots, then customers, then charging stations.
    pub fn places(&self) -> &[Place] {
        &self.places
    }

    /// The restricted zone, if the config has one.
    pub fn restricted_zone(&self) -> Option<&RestrictedZone> {
        self.restricted.as_ref()
    }

    /// Blocks per side of the grid.
    pub fn grid_blocks(&self) -> u16 {
        self.blocks
    }

    /// Position of grid metres `(x_m, y_m)` in degrees `(lat, lon)`.
    pub fn lat_lon(&self, x_m: f64, y_m: f64) -> (f64, f64) {
        let half = f64::from(self.blocks) * self.block_m / 2.0;
        (
            self.center_lat + (y_m - half) / M_PER_DEG,
            self.center_lon + (x_m - half) / self.m_per_deg_lon,
        )
    }

    /// Position of an intersection in degrees `(lat, lon)`.
    pub fn node_lat_lon(&self, node: Node) -> (f64, f64) {
        let (x, y) = self.node_m(node);
        self.lat_lon(x, y)
    }

    /// The GeoJSON `FeatureCollection` of the city's fences, in the format
    /// `geofence.file` takes (README, "Geofences"): depots as square
    /// `Polygon`s, customers and charging stations as `Point` + `radius_m`
    /// circles, and the restricted zone as a `Polygon` with
    /// `speed_limit_kmh`. Ids and geometry depend only on the config.
    pub fn geofences_geojson(&self) -> String {
        let mut features: Vec<Value> = Vec::with_capacity(self.places.len() + 1);
        for p in &self.places {
            let feature = match p.kind {
                PlaceKind::Depot => {
                    let (x, y) = self.node_m(p.node);
                    let h = self.depot_size_m / 2.0;
                    json!({
                        "type": "Feature",
                        "properties": {"id": p.id, "name": p.name, "kind": "depot",
                                       "arrival": true, "dwell_s": self.dwell[1]},
                        "geometry": {"type": "Polygon", "coordinates": [self.ring([x - h, y - h, x + h, y + h])]},
                    })
                }
                PlaceKind::Customer | PlaceKind::ChargingStation => {
                    let radius = if p.kind == PlaceKind::Customer {
                        self.customer_radius_m
                    } else {
                        self.charger_radius_m
                    };
                    json!({
                        "type": "Feature",
                        "properties": {"id": p.id, "name": p.name, "kind": p.kind.as_str(),
                                       "arrival": true, "dwell_s": self.dwell[0], "radius_m": radius},
                        "geometry": {"type": "Point", "coordinates": [round7(p.lon), round7(p.lat)]},
                    })
                }
            };
            features.push(feature);
        }
        if let Some(z) = &self.restricted {
            features.push(json!({
                "type": "Feature",
                "properties": {"id": z.id, "name": "Restricted zone", "kind": "restricted",
                               "speed_limit_kmh": z.speed_limit_kmh, "arrival": false},
                "geometry": {"type": "Polygon", "coordinates": [self.ring(z.bounds_m)]},
            }));
        }
        json!({"type": "FeatureCollection", "features": features}).to_string()
    }

    /// A closed, counter-clockwise ring of the rectangle `[w, s, e, n]` (grid metres).
    fn ring(&self, [w, s, e, n]: [f64; 4]) -> Vec<[f64; 2]> {
        [(w, s), (e, s), (e, n), (w, n), (w, s)]
            .into_iter()
            .map(|(x, y)| {
                let (lat, lon) = self.lat_lon(x, y);
                [round7(lon), round7(lat)]
            })
            .collect()
    }

    pub(crate) fn node_m(&self, node: Node) -> (f64, f64) {
        (
            f64::from(node.x) * self.block_m,
            f64::from(node.y) * self.block_m,
        )
    }

    pub(crate) fn block_m(&self) -> f64 {
        self.block_m
    }

    pub(crate) fn place(&self, index: u32) -> Option<&Place> {
        self.places.get(index as usize)
    }

    /// Home depot of vehicle `v` (vehicles are spread over the depots).
    pub(crate) fn home_depot(&self, v: u32) -> u32 {
        let n = u32::try_from(self.depots.len()).unwrap_or(1).max(1);
        self.depots.get((v % n) as usize).copied().unwrap_or(0)
    }

    /// The next customer from `from`: the nearest of three random ones, so
    /// tours are local-ish without a route planner.
    pub(crate) fn pick_customer(&self, rng: &mut Rand, from: Node) -> u32 {
        let n = u32::try_from(self.customers.len()).unwrap_or(0);
        let mut best: Option<(u32, u32)> = None;
        for _ in 0..3 {
            let Some(&c) = self.customers.get(rng.below(n) as usize) else {
                continue;
            };
            let d = self.place(c).map_or(u32::MAX, |p| p.node.blocks_to(from));
            if best.is_none_or(|(_, bd)| d < bd) {
                best = Some((c, d));
            }
        }
        best.map_or(0, |(c, _)| c)
    }

    /// The charging station nearest to `from`, if there is one.
    pub(crate) fn nearest_charger(&self, from: Node) -> Option<u32> {
        self.chargers
            .iter()
            .copied()
            .min_by_key(|&c| self.place(c).map_or(u32::MAX, |p| p.node.blocks_to(from)))
    }

    /// Speed limit of the street between two adjacent intersections, km/h.
    pub(crate) fn edge_limit_kmh(&self, from: Node, to: Node) -> f64 {
        // A horizontal edge runs along row y, a vertical one along column x.
        let street = if from.y == to.y { from.y } else { from.x };
        if street % self.arterial_every == 0 {
            self.arterial_kmh
        } else {
            self.street_kmh
        }
    }

    /// Speed limit of the restricted zone if `(x_m, y_m)` lies in it.
    pub(crate) fn zone_limit_kmh(&self, x_m: f64, y_m: f64) -> Option<f64> {
        let z = self.restricted.as_ref()?;
        let [w, s, e, n] = z.bounds_m;
        (x_m >= w && x_m <= e && y_m >= s && y_m <= n).then_some(z.speed_limit_kmh)
    }

    /// The next intersection on the way from `at` to `target` (or `at`
    /// itself when there). The route needs no state: head along the longer
    /// axis, but first reach an arterial that lies on the way, as drivers
    /// do.
    pub(crate) fn next_hop(&self, at: Node, target: Node) -> Node {
        let step = |a: u16, b: u16| if b > a { a + 1 } else { a - 1 };
        let a = self.arterial_every;
        // Is there an arterial street strictly between `from` and `to`, or at `to`?
        let arterial_ahead = |from: u16, to: u16| {
            let (lo, hi) = if from < to {
                (from + 1, to)
            } else {
                (to, from - 1)
            };
            lo <= hi && (hi / a) * a >= lo
        };
        let (dx, dy) = (at.x != target.x, at.y != target.y);
        match (dx, dy) {
            (false, false) => at,
            (true, false) => Node {
                x: step(at.x, target.x),
                ..at
            },
            (false, true) => Node {
                y: step(at.y, target.y),
                ..at
            },
            (true, true) => {
                let along_x = at.x.abs_diff(target.x) >= at.y.abs_diff(target.y);
                if along_x {
                    if at.y.is_multiple_of(a) || !arterial_ahead(at.y, target.y) {
                        Node {
                            x: step(at.x, target.x),
                            ..at
                        }
                    } else {
                        Node {
                            y: step(at.y, target.y),
                            ..at
                        }
                    }
                } else if at.x.is_multiple_of(a) || !arterial_ahead(at.x, target.x) {
                    Node {
                        y: step(at.y, target.y),
                        ..at
                    }
                } else {
                    Node {
                        x: step(at.x, target.x),
                        ..at
                    }
                }
            }
        }
    }
}

/// Rounds degrees to 7 decimals (~1 cm), as GPS receivers print them.
pub(crate) fn round7(x: f64) -> f64 {
    (x * 1e7).round() / 1e7
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rand;

    fn city(seed: u64) -> City {
        let cfg = SimConfig {
            seed,
            ..SimConfig::default()
        };
        City::new(&cfg, Rand::key(seed))
    }

    #[test]
    fn places_are_distinct_and_ids_stable() {
        let c = city(3);
        assert_eq!(c.places().len(), 2 + 200 + 6);
        let nodes: HashSet<Node> = c.places().iter().map(|p| p.node).collect();
        assert_eq!(nodes.len(), c.places().len());
        assert_eq!(c.places()[0].id, "depot-1");
        assert_eq!(c.places()[2].id, "customer-1");
        assert_eq!(c.geofences_geojson(), city(3).geofences_geojson());
        assert_ne!(c.geofences_geojson(), city(4).geofences_geojson());
    }

    #[test]
    fn routes_reach_their_target_by_a_shortest_path() {
        let c = city(1);
        let b = c.grid_blocks();
        let targets = [
            Node { x: 0, y: 0 },
            Node { x: b, y: b },
            Node { x: 7, y: 33 },
        ];
        for from in [
            Node { x: 3, y: 2 },
            Node { x: b, y: 0 },
            Node { x: 17, y: 21 },
        ] {
            for to in targets {
                let mut at = from;
                let mut hops = 0;
                while at != to {
                    let next = c.next_hop(at, to);
                    assert_eq!(next.blocks_to(at), 1);
                    assert_eq!(next.blocks_to(to) + 1, at.blocks_to(to));
                    at = next;
                    hops += 1;
                }
                assert_eq!(hops, from.blocks_to(to));
            }
        }
    }

    #[test]
    fn node_positions_are_around_the_centre() {
        let c = city(1);
        let (lat, lon) = c.node_lat_lon(Node { x: 20, y: 20 });
        assert!((lat - 52.52).abs() < 1e-9 && (lon - 13.405).abs() < 1e-9);
        let (lat, _) = c.node_lat_lon(Node { x: 20, y: 21 });
        assert!(((lat - 52.52) * M_PER_DEG - 150.0).abs() < 1e-6);
    }
}
