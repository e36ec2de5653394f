//! The fleet: vehicles driving delivery tours through the [`City`], and what
//! their devices publish.
//!
//! Each vehicle repeats: wait at its home depot (charging slowly) → visit a
//! few customers (stopping several minutes at each, ignition off) → return
//! to the depot; when its battery runs low it detours to the nearest charging
//! station and charges there. On the road it follows the street grid at the
//! street's speed limit (times its driver's style), accelerates and brakes,
//! waits at red lights, crawls through traffic jams, slows down in the
//! restricted zone unless its driver is a speeder, and drains its battery by
//! distance. Now and then a diagnostic trouble code (DTC) is set and later
//! cleared, and the device goes silent (a tunnel) for a while: it keeps
//! sampling, and uploads the buffered pings late, as one or more batches with
//! their original timestamps, when it is back.
//!
//! # Time and determinism
//!
//! Every vehicle has its own time-ordered ticks (a ping every
//! `ping_interval_ms` with the ignition on, every `parked_ping_interval_ms`
//! when parked); a binary heap of `(next tick, vehicle)` orders them, so a
//! step costs O(log n) per vehicle that is due and nothing for the others.
//! A vehicle's randomness comes from its own ChaCha8 stream (stream =
//! vehicle index, key from the seed), which is only consumed by its own
//! ticks: the ping stream depends on the seed and config alone, not on how
//! [`Fleet::advance`] calls are sliced.
//!
//! # Memory
//!
//! A vehicle is 128 bytes plus 16 in the heap; pings a device holds (a
//! silence's backlog, or a batch being filled when `pings_per_message` > 1)
//! are extra, ~120 bytes each, and freed when published.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::city::{City, Node, PlaceKind, round7};
use crate::rng::{Rand, trait01};
use crate::{SimConfig, SimError};

/// OBD-II codes the simulated vehicles report (all valid per wire contract v1).
const DTC_CODES: [&str; 10] = [
    "P0301", "P0420", "P0171", "P0128", "P0442", "U0100", "C0035", "B1000", "P0A0F", "P0300",
];
/// Comfortable acceleration, m/s².
const ACCEL: f64 = 1.5;
/// Ordinary deceleration, m/s².
const DECEL: f64 = 3.0;
/// Deceleration used to plan a stop at an intersection, m/s².
const BRAKE: f64 = 2.0;
/// Longest integration step of the motion model, ms.
const SUBSTEP_MS: i64 = 1_000;
/// State of charge below which a vehicle abandons its tour for a charger.
const CRITICAL_SOC: f64 = 8.0;

/// One ping as a device reports it (wire contract v1 fields; the vehicle id
/// is the message's). Values are rounded as a device prints them and always
/// within the contract's ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct SimPing {
    /// Sequence number, from 1, increasing per vehicle.
    pub seq: u64,
    /// Device time, epoch milliseconds.
    pub ts_ms: i64,
    /// Latitude with GPS error, degrees (7 decimals).
    pub lat: f64,
    /// Longitude with GPS error, degrees (7 decimals).
    pub lon: f64,
    /// Altitude, metres.
    pub alt_m: f64,
    /// GPS speed, km/h (0 when stopped).
    pub speed_kmh: f64,
    /// Course, degrees clockwise from north, `[0, 360)`; absent before the first drive.
    pub heading_deg: Option<f64>,
    /// Horizontal accuracy of the fix, metres.
    pub accuracy_m: f64,
    /// Traction battery state of charge, percent.
    pub soc_pct: f64,
    /// 12 V battery voltage, volts.
    pub battery_v: f64,
    /// Whether the vehicle is charging.
    pub charging: bool,
    /// Odometer, kilometres.
    pub odometer_km: f64,
    /// Whether the ignition is on (on while driving, off while parked).
    pub ignition: bool,
    /// The active diagnostic trouble code, if any.
    pub dtc: Option<&'static str>,
}

/// What one device publishes at one moment: one MQTT message or WebSocket
/// frame. `pings` holds one ping, a configured batch, or a late upload of
/// buffered pings (at most `max_batch`; a longer backlog is split over
/// several messages).
#[derive(Debug, Clone, PartialEq)]
pub struct SimMessage {
    /// Vehicle index, `0..vehicles`.
    pub vehicle: u32,
    /// Vehicle id (`id_prefix` + index).
    pub vehicle_id: String,
    /// The pings, in `seq` order.
    pub pings: Vec<SimPing>,
}

/// A simulated fleet in a simulated city, advanced in simulated time.
#[derive(Debug)]
pub struct Fleet {
    cfg: SimConfig,
    key: [u8; 32],
    city: City,
    vehicles: Vec<Vehicle>,
    /// Next tick per vehicle, earliest first; ties by vehicle index.
    queue: BinaryHeap<Reverse<(i64, u32)>>,
    now_ms: i64,
}

/// Per-vehicle state. Kept small on purpose (see the module docs): f32
/// where a few digits are enough, grid nodes as u16, routes recomputed at
/// each intersection instead of stored.
#[derive(Debug, Clone)]
struct Vehicle {
    /// Word position in the vehicle's ChaCha8 stream.
    rng_pos: u64,
    odometer_m: f64,
    /// Time of the previous tick.
    last_ms: i64,
    /// Parked: when the vehicle leaves.
    until_ms: i64,
    /// Driving: end of the current red light or jam.
    slow_until_ms: i64,
    /// The device publishes nothing before this (it buffers).
    silent_until_ms: i64,
    /// When the active DTC clears.
    dtc_clear_ms: i64,
    /// Last `seq` used.
    seq: u64,
    /// Pings not yet published.
    buffer: Vec<SimPing>,
    /// Metres travelled along the edge `from` → `to`.
    progress_m: f32,
    speed_mps: f32,
    soc: f32,
    /// Speed cap during a red light (0) or a jam, km/h.
    slow_kmh: f32,
    /// This street's speed factor (drivers vary per street).
    cruise: f32,
    from: Node,
    to: Node,
    /// Place driving to, or parked at.
    target: u32,
    /// Customers left in the tour after the current target.
    stops_left: u8,
    /// 0 = none, else index + 1 into `DTC_CODES`.
    dtc: u8,
    flags: u8,
}

/// Vehicle flags.
const DRIVING: u8 = 1;
const CHARGING: u8 = 2;
/// A red light at the end of the current street.
const STOP_NEXT: u8 = 4;
/// The buffer holds a silence's backlog: publish it at the next chance.
const BACKLOG: u8 = 8;
/// Whether the driver ignores the restricted zone's limit.
const SPEEDER: u8 = 16;

impl Fleet {
    /// A fleet of `cfg.vehicles` vehicles, parked at their depots at
    /// `start_ms` (epoch ms), leaving over the following minutes.
    pub fn new(cfg: &SimConfig, start_ms: i64) -> Result<Fleet, SimError> {
        cfg.validate()?;
        let key = Rand::key(cfg.seed);
        let city = City::new(cfg, key);
        let n = cfg.vehicles;
        let mut vehicles = Vec::with_capacity(n as usize);
        let mut queue = BinaryHeap::with_capacity(n as usize);
        for v in 0..n {
            let mut rng = Rand::at(key, u64::from(v), 0);
            let home = city.home_depot(v);
            let node = city.place(home).map_or(Node { x: 0, y: 0 }, |p| p.node);
            let leave_s = rng.range_u([0, cfg.depot_stop_s[1]]);
            let mut flags = CHARGING;
            if trait01(cfg.seed, v, 1) < cfg.speeder_share {
                flags |= SPEEDER;
            }
            let vehicle = Vehicle {
                odometer_m: rng.range(5_000.0, 150_000.0) * 1_000.0,
                last_ms: start_ms,
                until_ms: start_ms.saturating_add(i64::from(leave_s) * 1_000),
                slow_until_ms: 0,
                silent_until_ms: 0,
                dtc_clear_ms: 0,
                seq: 0,
                buffer: Vec::new(),
                progress_m: 0.0,
                speed_mps: 0.0,
                soc: rng.range(cfg.start_soc_pct[0], cfg.start_soc_pct[1]) as f32,
                slow_kmh: 0.0,
                cruise: 1.0,
                from: node,
                to: node,
                target: home,
                stops_left: 0,
                dtc: 0,
                flags,
                rng_pos: 0,
            };
            // Spread first pings over one interval, as real devices boot at
            // different moments.
            let first = start_ms.saturating_add(i64::from(rng.below(cfg.ping_interval_ms)));
            let vehicle = Vehicle {
                rng_pos: rng.pos(),
                ..vehicle
            };
            vehicles.push(vehicle);
            queue.push(Reverse((first, v)));
        }
        Ok(Fleet {
            cfg: cfg.clone(),
            key,
            city,
            vehicles,
            queue,
            now_ms: start_ms,
        })
    }

    /// The city the fleet drives in.
    pub fn city(&self) -> &City {
        &self.city
    }

    /// The config the fleet was built from.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Number of vehicles.
    pub fn len(&self) -> usize {
        self.vehicles.len()
    }

    /// Whether the fleet has no vehicles.
    pub fn is_empty(&self) -> bool {
        self.vehicles.is_empty()
    }

    /// Simulated time reached, epoch ms.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// When the next vehicle is due, epoch ms (`None` for an empty fleet).
    pub fn next_due_ms(&self) -> Option<i64> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// The id of vehicle `vehicle` (`id_prefix` + at least 6 digits).
    pub fn vehicle_id(&self, vehicle: u32) -> String {
        vehicle_id(&self.cfg, vehicle)
    }

    /// Bytes held by the fleet's per-vehicle state (vehicles, schedule and
    /// buffered pings), for sizing large runs.
    pub fn memory_bytes(&self) -> usize {
        let buffered: usize = self
            .vehicles
            .iter()
            .map(|v| v.buffer.capacity() * size_of::<SimPing>())
            .sum();
        self.vehicles.capacity() * size_of::<Vehicle>()
            + self.queue.capacity() * size_of::<Reverse<(i64, u32)>>()
            + buffered
    }

    /// Advances simulated time by `dt_ms`; see [`Fleet::advance_to`].
    pub fn advance(&mut self, dt_ms: i64, out: &mut Vec<SimMessage>) -> usize {
        self.advance_to(self.now_ms.saturating_add(dt_ms.max(0)), out)
    }

    /// Runs every vehicle tick due at or before `until_ms`, in time order,
    /// appending what devices publish to `out`; returns the number of pings
    /// appended. Simulated time is then `until_ms` (it never goes back).
    pub fn advance_to(&mut self, until_ms: i64, out: &mut Vec<SimMessage>) -> usize {
        let pings = self.advance_pings(usize::MAX, until_ms, out);
        self.now_ms = self.now_ms.max(until_ms);
        pings
    }

    /// Like [`Fleet::advance_to`], but stops as soon as at least `max_pings`
    /// pings were appended (a late upload may overshoot by one message), so a
    /// caller can produce an exact ping rate; simulated time is then the
    /// last tick's.
    pub fn advance_pings(
        &mut self,
        max_pings: usize,
        until_ms: i64,
        out: &mut Vec<SimMessage>,
    ) -> usize {
        let mut produced = 0;
        while produced < max_pings {
            let Some(&Reverse((t, v))) = self.queue.peek() else {
                break;
            };
            if t > until_ms {
                break;
            }
            self.queue.pop();
            self.now_ms = self.now_ms.max(t);
            let (pings, next) = self.tick(v, t, out);
            produced += pings;
            self.queue.push(Reverse((next, v)));
        }
        produced
    }

    /// One tick of vehicle `v` at `t`: move, maybe change plans, sample a
    /// ping, publish or buffer it. Returns (pings published, next tick time).
    fn tick(&mut self, v: u32, t: i64, out: &mut Vec<SimMessage>) -> (usize, i64) {
        let Fleet {
            cfg,
            key,
            city,
            vehicles,
            ..
        } = self;
        let Some(veh) = vehicles.get_mut(v as usize) else {
            return (0, i64::MAX);
        };
        let mut rng = Rand::at(*key, u64::from(v), veh.rng_pos);
        let dt_ms = t.saturating_sub(veh.last_ms).max(0);
        veh.last_ms = t;
        let dt_h = dt_ms as f64 / 3_600_000.0;

        if veh.flags & DRIVING == 0 {
            veh.park(cfg, city, dt_ms);
            if t >= veh.until_ms {
                veh.depart(cfg, city, &mut rng, v, t);
            }
        } else {
            veh.drive(cfg, city, &mut rng, v, t - dt_ms, dt_ms);
        }

        // Faults happen on the road: jams and tunnels.
        if veh.flags & DRIVING != 0 {
            if t >= veh.slow_until_ms && rng.chance(cfg.jams_per_hour * dt_h) {
                veh.slow_until_ms = t.saturating_add(i64::from(rng.range_u(cfg.jam_s)) * 1_000);
                veh.slow_kmh = rng.range(2.0, 10.0) as f32;
            }
            if t >= veh.silent_until_ms && rng.chance(cfg.silences_per_hour * dt_h) {
                veh.silent_until_ms =
                    t.saturating_add(i64::from(rng.range_u(cfg.silence_s)) * 1_000);
                veh.flags |= BACKLOG;
            }
            if veh.dtc == 0 && rng.chance(cfg.dtcs_per_hour * dt_h) {
                veh.dtc = u8::try_from(rng.below(DTC_CODES.len() as u32) + 1).unwrap_or(1);
                veh.dtc_clear_ms =
                    t.saturating_add(i64::from(rng.range_u(cfg.dtc_active_s)) * 1_000);
            }
        }
        if veh.dtc != 0 && t >= veh.dtc_clear_ms {
            veh.dtc = 0;
        }

        veh.seq += 1;
        let ping = veh.sample(cfg, city, &mut rng, t);
        if veh.buffer.capacity() == 0 {
            // Exactly one message's worth: a Vec's default first growth
            // (4 pings) would waste ~400 bytes per message at batch size 1.
            veh.buffer.reserve_exact(cfg.pings_per_message as usize);
        }
        veh.buffer.push(ping);
        let mut published = 0;
        if t >= veh.silent_until_ms
            && (veh.buffer.len() >= cfg.pings_per_message as usize || veh.flags & BACKLOG != 0)
        {
            veh.flags &= !BACKLOG;
            let pings = std::mem::take(&mut veh.buffer);
            published = pings.len();
            let vehicle_id = vehicle_id(cfg, v);
            let max = (cfg.max_batch as usize).max(1);
            if pings.len() <= max {
                out.push(SimMessage {
                    vehicle: v,
                    vehicle_id,
                    pings,
                });
            } else {
                for chunk in pings.chunks(max) {
                    out.push(SimMessage {
                        vehicle: v,
                        vehicle_id: vehicle_id.clone(),
                        pings: chunk.to_vec(),
                    });
                }
            }
        }

        let next = if veh.flags & DRIVING != 0 {
            t.saturating_add(i64::from(cfg.ping_interval_ms))
        } else {
            // Wake up exactly at departure, not up to one parked interval late.
            let parked = t.saturating_add(i64::from(cfg.parked_ping_interval_ms));
            if veh.until_ms > t {
                parked.min(veh.until_ms)
            } else {
                t.saturating_add(i64::from(cfg.ping_interval_ms))
            }
        };
        veh.rng_pos = rng.pos();
        (published, next)
    }
}

impl Vehicle {
    /// Parked for `dt_ms`: charge if plugged in.
    fn park(&mut self, cfg: &SimConfig, city: &City, dt_ms: i64) {
        if self.flags & CHARGING == 0 {
            return;
        }
        let minutes = dt_ms as f64 / 60_000.0;
        // At a charger the stop is sized to reach charge_to_pct; at the
        // depot the car simply tops up while it waits.
        let at_charger = city
            .place(self.target)
            .is_some_and(|p| p.kind == PlaceKind::ChargingStation);
        let (rate, cap) = if at_charger {
            (cfg.fast_charge_pct_per_min, cfg.charge_to_pct)
        } else {
            (cfg.depot_charge_pct_per_min, 100.0)
        };
        let soc = f64::from(self.soc);
        let next = (soc + rate * minutes).min(cap.max(soc)).min(100.0);
        self.soc = next as f32;
        if next >= cap {
            self.flags &= !CHARGING;
        }
    }

    /// Leaves the place it is parked at for the next one of its plan: the
    /// nearest charger when the battery is low, else the tour's next
    /// customer, else the home depot.
    fn depart(&mut self, cfg: &SimConfig, city: &City, rng: &mut Rand, v: u32, t: i64) {
        let Some(here) = city.place(self.target) else {
            return;
        };
        let (here_node, here_kind) = (here.node, here.kind);
        let low = f64::from(self.soc) < cfg.charge_below_pct;
        // A detour to a charger keeps `stops_left`, so the tour resumes after.
        let charger = if low && here_kind != PlaceKind::ChargingStation {
            city.nearest_charger(here_node)
        } else {
            None
        };
        let next = match charger {
            Some(c) => c,
            None => match here_kind {
                PlaceKind::Depot => {
                    let stops = rng.range_u(cfg.stops_per_tour).clamp(1, 200);
                    self.stops_left = u8::try_from(stops - 1).unwrap_or(199);
                    city.pick_customer(rng, here_node)
                }
                _ if self.stops_left > 0 => {
                    self.stops_left -= 1;
                    city.pick_customer(rng, here_node)
                }
                _ => city.home_depot(v),
            },
        };
        self.target = next;
        self.flags = (self.flags | DRIVING) & !(CHARGING | STOP_NEXT);
        self.speed_mps = 0.0;
        self.slow_until_ms = 0;
        if city.place(next).is_none_or(|p| p.node == here_node) {
            // Picked the place it is at (a one-customer city): stop again.
            self.arrive(cfg, city, rng, t);
            return;
        }
        self.start_street(cfg, city, rng, here_node);
    }

    /// Parks at the target: a delivery stop, a depot stop (charging
    /// slowly) or a charging stop sized to reach `charge_to_pct`.
    fn arrive(&mut self, cfg: &SimConfig, city: &City, rng: &mut Rand, t: i64) {
        self.flags &= !(DRIVING | STOP_NEXT | CHARGING);
        self.speed_mps = 0.0;
        self.slow_until_ms = 0;
        let kind = city.place(self.target).map(|p| p.kind);
        let stay_ms = match kind {
            Some(PlaceKind::Depot) => {
                if cfg.depot_charge_pct_per_min > 0.0 && self.soc < 100.0 {
                    self.flags |= CHARGING;
                }
                i64::from(rng.range_u(cfg.depot_stop_s)) * 1_000
            }
            Some(PlaceKind::ChargingStation) => {
                self.flags |= CHARGING;
                let need = (cfg.charge_to_pct - f64::from(self.soc)).max(0.0);
                // One minute to plug in and pay, then charge to the target.
                60_000 + (need / cfg.fast_charge_pct_per_min * 60_000.0) as i64
            }
            Some(PlaceKind::Customer) | None => i64::from(rng.range_u(cfg.customer_stop_s)) * 1_000,
        };
        self.until_ms = t.saturating_add(stay_ms);
    }

    /// Starts down the next street from intersection `at` towards the target.
    fn start_street(&mut self, cfg: &SimConfig, city: &City, rng: &mut Rand, at: Node) {
        let target = city.place(self.target).map_or(at, |p| p.node);
        self.from = at;
        self.to = city.next_hop(at, target);
        self.progress_m = 0.0;
        self.flags &= !STOP_NEXT;
        if self.to != target && rng.chance(cfg.red_light_prob) {
            self.flags |= STOP_NEXT;
        }
        self.cruise = rng.range(0.9, 1.05) as f32;
    }

    /// Drives for `dt_ms` from `t0`, in steps of at most a second:
    /// accelerate towards the street's speed, brake for red lights and the
    /// destination, turn at intersections, arrive.
    fn drive(&mut self, cfg: &SimConfig, city: &City, rng: &mut Rand, v: u32, t0: i64, dt_ms: i64) {
        let block = city.block_m();
        // Driving style: 85-110 % of the limit, constant per vehicle.
        let style = 0.85 + 0.25 * trait01(cfg.seed, v, 2);
        let mut elapsed = 0;
        while elapsed < dt_ms && self.flags & DRIVING != 0 {
            let h_ms = SUBSTEP_MS.min(dt_ms - elapsed);
            elapsed += h_ms;
            let now = t0.saturating_add(elapsed);
            let h = h_ms as f64 / 1_000.0;
            let slowed = now < self.slow_until_ms;
            if slowed && self.slow_kmh <= 0.0 {
                self.speed_mps = 0.0; // waiting at a red light
                continue;
            }
            let target = city.place(self.target).map_or(self.to, |p| p.node);
            let (x, y) = self.position(city);
            let mut limit =
                city.edge_limit_kmh(self.from, self.to) * style * f64::from(self.cruise);
            if self.flags & SPEEDER == 0
                && let Some(zone) = city.zone_limit_kmh(x, y)
            {
                limit = limit.min(zone * 0.95);
            }
            if slowed {
                limit = limit.min(f64::from(self.slow_kmh));
            }
            let rem = block - f64::from(self.progress_m);
            let brake_cap = if self.to == target || self.flags & STOP_NEXT != 0 {
                (2.0 * BRAKE * rem.max(0.0)).sqrt().max(1.0)
            } else {
                f64::INFINITY
            };
            let v_target = (limit / 3.6).min(brake_cap);
            let v0 = f64::from(self.speed_mps);
            let v1 = if v_target > v0 {
                v_target.min(v0 + ACCEL * h)
            } else {
                v_target.max(v0 - DECEL * h)
            }
            .min(brake_cap);
            self.speed_mps = v1 as f32;
            let mut dist = (v0 + v1) / 2.0 * h;
            while dist > 0.0 {
                let rem = block - f64::from(self.progress_m);
                if dist < rem {
                    self.progress_m = (f64::from(self.progress_m) + dist) as f32;
                    self.travel(cfg, dist);
                    break;
                }
                self.travel(cfg, rem.max(0.0));
                dist -= rem.max(0.0);
                self.progress_m = block as f32;
                if self.to == target {
                    self.arrive(cfg, city, rng, now);
                    return;
                }
                if self.flags & STOP_NEXT != 0 {
                    self.slow_until_ms =
                        now.saturating_add(i64::from(rng.range_u(cfg.red_light_s)) * 1_000);
                    self.slow_kmh = 0.0;
                    self.speed_mps = 0.0;
                    dist = 0.0;
                }
                let at = self.to;
                self.start_street(cfg, city, rng, at);
            }
            // Nearly empty: abandon the tour for the nearest charger.
            if f64::from(self.soc) < CRITICAL_SOC
                && city
                    .place(self.target)
                    .is_some_and(|p| p.kind != PlaceKind::ChargingStation)
                && let Some(c) = city.nearest_charger(self.to)
            {
                self.target = c;
            }
        }
    }

    fn travel(&mut self, cfg: &SimConfig, metres: f64) {
        self.odometer_m += metres;
        let soc = f64::from(self.soc) - cfg.drain_pct_per_km * metres / 1_000.0;
        self.soc = soc.max(0.0) as f32;
    }

    /// True position in grid metres.
    fn position(&self, city: &City) -> (f64, f64) {
        let (fx, fy) = city.node_m(self.from);
        let (tx, ty) = city.node_m(self.to);
        let f = (f64::from(self.progress_m) / city.block_m()).clamp(0.0, 1.0);
        (fx + (tx - fx) * f, fy + (ty - fy) * f)
    }

    /// Compass direction of the current (or last) street, if any.
    fn direction(&self) -> Option<f64> {
        use std::cmp::Ordering::*;
        match (self.to.x.cmp(&self.from.x), self.to.y.cmp(&self.from.y)) {
            (Greater, _) => Some(90.0),
            (Less, _) => Some(270.0),
            (Equal, Greater) => Some(0.0),
            (Equal, Less) => Some(180.0),
            (Equal, Equal) => None,
        }
    }

    /// The ping the device samples now: the true state seen through a GPS
    /// (position error of about half the fix's accuracy, speed and course
    /// noise) and rounded as devices print it.
    fn sample(&self, cfg: &SimConfig, city: &City, rng: &mut Rand, t: i64) -> SimPing {
        let (x, y) = self.position(city);
        let accuracy = if rng.chance(cfg.gps_bad_fix_prob) {
            rng.range(15.0, 60.0)
        } else {
            rng.range(cfg.gps_accuracy_m[0], cfg.gps_accuracy_m[1])
        };
        let sigma = accuracy / 2.0;
        let (lat, lon) = city.lat_lon(x + rng.normal() * sigma, y + rng.normal() * sigma);
        let driving = self.flags & DRIVING != 0;
        let speed_kmh = if driving && self.speed_mps > 0.05 {
            round_to(
                (f64::from(self.speed_mps) * 3.6 + rng.normal() * 0.3).max(0.0),
                1,
            )
        } else {
            0.0
        };
        let heading_deg = self.direction().map(|d| {
            // Rounding 359.96 gives 360.0, which the contract refuses: wrap again.
            round_to((d + rng.normal() * 1.5).rem_euclid(360.0), 1).rem_euclid(360.0)
        });
        let alt_m = round_to(34.0 + rng.normal() * 1.5, 1);
        let battery_v = round_to(
            if driving {
                rng.range(13.8, 14.4)
            } else {
                rng.range(12.3, 12.7)
            },
            2,
        );
        SimPing {
            seq: self.seq,
            ts_ms: t,
            lat: round7(lat.clamp(-90.0, 90.0)),
            lon: round7(lon.clamp(-180.0, 180.0)),
            alt_m,
            speed_kmh,
            heading_deg,
            accuracy_m: round_to(accuracy, 1),
            soc_pct: round_to(f64::from(self.soc).clamp(0.0, 100.0), 1),
            battery_v,
            charging: self.flags & CHARGING != 0,
            odometer_km: round_to(self.odometer_m / 1_000.0, 3),
            ignition: driving,
            dtc: DTC_CODES
                .get(usize::from(self.dtc).wrapping_sub(1))
                .copied(),
        }
    }
}

fn vehicle_id(cfg: &SimConfig, vehicle: u32) -> String {
    format!("{}{vehicle:06}", cfg.prefix())
}

/// Rounds to `digits` decimals.
fn round_to(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (x * k).round() / k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicle_state_is_small() {
        assert!(size_of::<Vehicle>() <= 128, "{}", size_of::<Vehicle>());
    }

    #[test]
    fn slicing_time_does_not_change_the_stream() {
        let cfg = SimConfig {
            vehicles: 20,
            ..SimConfig::default()
        };
        let mut a = Fleet::new(&cfg, 0).unwrap_or_else(|e| panic!("{e}"));
        let mut b = Fleet::new(&cfg, 0).unwrap_or_else(|e| panic!("{e}"));
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        a.advance(600_000, &mut out_a);
        for _ in 0..600 {
            b.advance(1_000, &mut out_b);
        }
        assert_eq!(out_a, out_b);
        assert!(out_a.len() > 1_000);
    }
}
