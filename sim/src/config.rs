//! [`SimConfig`]: everything that shapes the simulated city and fleet.
//!
//! All times are integer milliseconds or seconds and all probabilities are
//! plain numbers, so the simulation core stays free of clocks and parsers and
//! a config file (TOML, JSON) maps onto it one to one. Every field has a
//! default; [`SimConfig::validate`] checks ranges once, so the core can assume
//! them and never panics on odd input.

use fleetpipe_model::VehicleId;
use serde::{Deserialize, Serialize};

use crate::SimError;

/// How the simulated city and fleet behave. Same config + same seed = the
/// same city and byte-identical pings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed of every random choice: city layout, routes, noise, faults.
    pub seed: u64,
    /// Number of simulated vehicles.
    pub vehicles: u32,
    /// Vehicle ids are this prefix followed by a 6+ digit index
    /// (`sim-000042`); empty = `sim-`. Prefix + digits must be a valid
    /// vehicle id (`[A-Za-z0-9_.:-]`, at most 64 characters).
    pub id_prefix: String,

    /// Latitude of the city centre, degrees.
    pub center_lat: f64,
    /// Longitude of the city centre, degrees.
    pub center_lon: f64,
    /// Blocks per side of the square street grid (streets = blocks + 1 per direction).
    pub grid_blocks: u16,
    /// Length of one block, metres.
    pub block_m: f64,
    /// Every Nth street (in each direction) is an arterial road.
    pub arterial_every: u16,
    /// Speed limit of ordinary streets, km/h.
    pub street_kmh: f64,
    /// Speed limit of arterial roads, km/h.
    pub arterial_kmh: f64,

    /// Number of depots (vehicles start at and return to their home depot).
    pub depots: u32,
    /// Number of customers (delivery stops).
    pub customers: u32,
    /// Number of public charging stations.
    pub charging_stations: u32,
    /// Side length of a depot's square fence, metres (less than `block_m`).
    pub depot_size_m: f64,
    /// Radius of a customer's circular fence, metres.
    pub customer_radius_m: f64,
    /// Radius of a charging station's circular fence, metres.
    pub charger_radius_m: f64,
    /// Side of the square restricted zone, in blocks; 0 = no restricted zone.
    pub restricted_blocks: u16,
    /// Speed limit inside the restricted zone, km/h.
    pub restricted_kmh: f64,
    /// Share of drivers who ignore the restricted zone's limit (overspeeding).
    pub speeder_share: f64,

    /// Interval between pings while the ignition is on, milliseconds.
    pub ping_interval_ms: u32,
    /// Interval between pings while parked with the ignition off, milliseconds.
    pub parked_ping_interval_ms: u32,
    /// Pings a device collects before it publishes them as one message
    /// (1 = every ping is its own message).
    pub pings_per_message: u32,
    /// Most pings in one message when a device uploads its backlog after a
    /// silence. fleetpipe accepts 1000 per message and 256 KiB per payload;
    /// a JSON ping is ~300 bytes, so 500 stays clear of both.
    pub max_batch: u32,

    /// Usual horizontal accuracy of a fix, metres: `[min, max]`.
    pub gps_accuracy_m: [f64; 2],
    /// Probability that a fix is degraded (urban canyon): accuracy 15-60 m.
    pub gps_bad_fix_prob: f64,

    /// Customers visited per tour, `[min, max]`.
    pub stops_per_tour: [u32; 2],
    /// Stop at a customer, seconds: `[min, max]`.
    pub customer_stop_s: [u32; 2],
    /// Stop at the depot between tours, seconds: `[min, max]`.
    pub depot_stop_s: [u32; 2],
    /// Probability that the light at the next intersection is red.
    pub red_light_prob: f64,
    /// Wait at a red light, seconds: `[min, max]`.
    pub red_light_s: [u32; 2],
    /// Traffic jams (crawling at 2-10 km/h) starting per driving hour.
    pub jams_per_hour: f64,
    /// Duration of a jam, seconds: `[min, max]`.
    pub jam_s: [u32; 2],

    /// State of charge at the start, percent: `[min, max]`.
    pub start_soc_pct: [f64; 2],
    /// Battery drain per driven kilometre, percent.
    pub drain_pct_per_km: f64,
    /// Below this state of charge a vehicle drives to a charging station after its current stop, percent.
    pub charge_below_pct: f64,
    /// A charging stop ends at this state of charge, percent.
    pub charge_to_pct: f64,
    /// Charging speed at a charging station, percent per minute.
    pub fast_charge_pct_per_min: f64,
    /// Charging speed at the depot, percent per minute.
    pub depot_charge_pct_per_min: f64,

    /// Diagnostic trouble codes set per driving hour (per vehicle).
    pub dtcs_per_hour: f64,
    /// How long a DTC stays active before it is cleared, seconds: `[min, max]`.
    pub dtc_active_s: [u32; 2],
    /// Silences (tunnel, dead zone) starting per driving hour (per vehicle);
    /// the device buffers its pings and uploads them late when it is back.
    pub silences_per_hour: f64,
    /// Duration of a silence, seconds: `[min, max]`.
    pub silence_s: [u32; 2],
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl SimConfig {
    /// The defaults: 100 vehicles delivering in a 6 x 6 km grid around
    /// central Berlin, pinging every second while driving.
    pub const DEFAULT: SimConfig = SimConfig {
        seed: 1,
        vehicles: 100,
        id_prefix: String::new(),
        center_lat: 52.52,
        center_lon: 13.405,
        grid_blocks: 40,
        block_m: 150.0,
        arterial_every: 5,
        street_kmh: 30.0,
        arterial_kmh: 50.0,
        depots: 2,
        customers: 200,
        charging_stations: 6,
        depot_size_m: 120.0,
        customer_radius_m: 40.0,
        charger_radius_m: 30.0,
        restricted_blocks: 4,
        restricted_kmh: 20.0,
        speeder_share: 0.1,
        ping_interval_ms: 1_000,
        parked_ping_interval_ms: 30_000,
        pings_per_message: 1,
        max_batch: 500,
        gps_accuracy_m: [3.0, 10.0],
        gps_bad_fix_prob: 0.02,
        stops_per_tour: [3, 8],
        customer_stop_s: [180, 600],
        depot_stop_s: [300, 1_800],
        red_light_prob: 0.25,
        red_light_s: [10, 45],
        jams_per_hour: 2.0,
        jam_s: [30, 180],
        start_soc_pct: [35.0, 100.0],
        drain_pct_per_km: 0.3,
        charge_below_pct: 30.0,
        charge_to_pct: 90.0,
        fast_charge_pct_per_min: 1.5,
        depot_charge_pct_per_min: 0.3,
        dtcs_per_hour: 0.05,
        dtc_active_s: [300, 3_600],
        silences_per_hour: 0.5,
        silence_s: [30, 600],
    };

    /// The vehicle id prefix in use: `id_prefix`, or `sim-` when empty.
    pub fn prefix(&self) -> &str {
        if self.id_prefix.is_empty() {
            "sim-"
        } else {
            &self.id_prefix
        }
    }

    /// Checks every field's range; the simulation assumes a validated config.
    pub fn validate(&self) -> Result<(), SimError> {
        fn bad(key: &'static str, reason: impl Into<String>) -> Result<(), SimError> {
            Err(SimError::Config {
                key,
                reason: reason.into(),
            })
        }
        fn finite_in(key: &'static str, v: f64, lo: f64, hi: f64) -> Result<(), SimError> {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                bad(key, format!("{v} is outside [{lo}, {hi}]"))
            }
        }
        fn range_f(key: &'static str, r: [f64; 2], lo: f64, hi: f64) -> Result<(), SimError> {
            finite_in(key, r[0], lo, hi)?;
            finite_in(key, r[1], lo, hi)?;
            if r[0] > r[1] {
                return bad(key, "min is above max");
            }
            Ok(())
        }
        fn range_u(key: &'static str, r: [u32; 2], lo: u32, hi: u32) -> Result<(), SimError> {
            if r[0] < lo || r[1] > hi || r[0] > r[1] {
                return bad(key, format!("{r:?} must be min <= max within [{lo}, {hi}]"));
            }
            Ok(())
        }

        let last = format!("{}{:06}", self.prefix(), self.vehicles.saturating_sub(1));
        if let Err(e) = VehicleId::check(&last) {
            return bad("id_prefix", format!("vehicle id {last:?} is invalid: {e}"));
        }
        finite_in("center_lat", self.center_lat, -80.0, 80.0)?;
        finite_in("center_lon", self.center_lon, -179.0, 179.0)?;
        if !(2..=2_000).contains(&self.grid_blocks) {
            return bad("grid_blocks", "must be within [2, 2000]");
        }
        finite_in("block_m", self.block_m, 20.0, 5_000.0)?;
        if f64::from(self.grid_blocks) * self.block_m > 200_000.0 {
            return bad("grid_blocks", "the city may be at most 200 km wide");
        }
        if self.arterial_every == 0 {
            return bad("arterial_every", "must be at least 1");
        }
        finite_in("street_kmh", self.street_kmh, 5.0, 200.0)?;
        finite_in("arterial_kmh", self.arterial_kmh, 5.0, 200.0)?;
        if self.depots == 0 {
            return bad("depots", "at least one depot is needed");
        }
        if self.customers == 0 {
            return bad("customers", "at least one customer is needed");
        }
        let nodes = (u64::from(self.grid_blocks) + 1).pow(2);
        let places =
            u64::from(self.depots) + u64::from(self.customers) + u64::from(self.charging_stations);
        if places > nodes / 2 {
            return bad(
                "customers",
                format!("{places} places need more than half of the grid's {nodes} intersections"),
            );
        }
        finite_in("depot_size_m", self.depot_size_m, 10.0, self.block_m * 0.95)?;
        finite_in("customer_radius_m", self.customer_radius_m, 5.0, 1_000.0)?;
        finite_in("charger_radius_m", self.charger_radius_m, 5.0, 1_000.0)?;
        if self.restricted_blocks > 0 && self.restricted_blocks + 2 > self.grid_blocks {
            return bad(
                "restricted_blocks",
                "must leave at least one block on each side",
            );
        }
        finite_in("restricted_kmh", self.restricted_kmh, 5.0, 200.0)?;
        finite_in("speeder_share", self.speeder_share, 0.0, 1.0)?;
        if !(100..=3_600_000).contains(&self.ping_interval_ms) {
            return bad("ping_interval_ms", "must be within [100, 3600000]");
        }
        if self.parked_ping_interval_ms < self.ping_interval_ms
            || self.parked_ping_interval_ms > 3_600_000
        {
            return bad(
                "parked_ping_interval_ms",
                "must be within [ping_interval_ms, 3600000]",
            );
        }
        if !(1..=1_000).contains(&self.max_batch) {
            return bad(
                "max_batch",
                "must be within [1, 1000] (fleetpipe's max_batch)",
            );
        }
        if self.pings_per_message == 0 || self.pings_per_message > self.max_batch {
            return bad("pings_per_message", "must be within [1, max_batch]");
        }
        range_f("gps_accuracy_m", self.gps_accuracy_m, 0.5, 100.0)?;
        finite_in("gps_bad_fix_prob", self.gps_bad_fix_prob, 0.0, 1.0)?;
        range_u("stops_per_tour", self.stops_per_tour, 1, 100)?;
        range_u("customer_stop_s", self.customer_stop_s, 0, 86_400)?;
        range_u("depot_stop_s", self.depot_stop_s, 0, 86_400)?;
        finite_in("red_light_prob", self.red_light_prob, 0.0, 1.0)?;
        range_u("red_light_s", self.red_light_s, 0, 600)?;
        finite_in("jams_per_hour", self.jams_per_hour, 0.0, 3_600.0)?;
        range_u("jam_s", self.jam_s, 0, 86_400)?;
        range_f("start_soc_pct", self.start_soc_pct, 0.0, 100.0)?;
        finite_in("drain_pct_per_km", self.drain_pct_per_km, 0.0, 100.0)?;
        finite_in("charge_below_pct", self.charge_below_pct, 0.0, 100.0)?;
        finite_in(
            "charge_to_pct",
            self.charge_to_pct,
            self.charge_below_pct,
            100.0,
        )?;
        finite_in(
            "fast_charge_pct_per_min",
            self.fast_charge_pct_per_min,
            0.01,
            100.0,
        )?;
        finite_in(
            "depot_charge_pct_per_min",
            self.depot_charge_pct_per_min,
            0.0,
            100.0,
        )?;
        finite_in("dtcs_per_hour", self.dtcs_per_hour, 0.0, 3_600.0)?;
        range_u("dtc_active_s", self.dtc_active_s, 1, 86_400 * 7)?;
        finite_in("silences_per_hour", self.silences_per_hour, 0.0, 3_600.0)?;
        // A silence longer than a day would upload pings fleetpipe may
        // already find too old (max_past) once the run itself is backdated.
        range_u("silence_s", self.silence_s, 1, 86_400)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(
            SimConfig::default().validate().map_err(|e| e.to_string()),
            Ok(())
        );
    }

    type Breaker = fn(&mut SimConfig);

    #[test]
    fn bad_values_name_their_key() {
        let cases: [(&str, Breaker); 6] = [
            ("id_prefix", |c| c.id_prefix = "a/b".into()),
            ("center_lat", |c| c.center_lat = f64::NAN),
            ("pings_per_message", |c| c.pings_per_message = 0),
            ("customers", |c| c.customers = 10_000),
            ("stops_per_tour", |c| c.stops_per_tour = [5, 2]),
            ("depot_size_m", |c| c.depot_size_m = 1_000.0),
        ];
        for (key, f) in cases {
            let mut c = SimConfig::default();
            f(&mut c);
            match c.validate() {
                Err(SimError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let ok: Result<SimConfig, _> = serde_json::from_str(r#"{"seed": 7, "vehicles": 3}"#);
        assert!(ok.is_ok_and(|c| c.seed == 7 && c.vehicles == 3 && c.block_m == 150.0));
        let bad: Result<SimConfig, _> = serde_json::from_str(r#"{"sed": 7}"#);
        assert!(bad.is_err());
    }
}
