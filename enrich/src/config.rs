//! Configuration of the enrichment stage (the `[enrich]` section).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::EnrichError;

/// Highest resolution H3 defines.
const MAX_H3_RESOLUTION: u8 = 15;

/// Resolutions indexed when none are configured: 7 (~5 km², districts) for
/// coarse aggregation and 9 (~0.1 km², blocks) for street-level analysis.
const DEFAULT_H3_RESOLUTIONS: [u8; 2] = [7, 9];

/// Settings of the enrichment stage.
///
/// Every field has a default, so an empty or missing `[enrich]` section is
/// valid. Call [`EnrichConfig::validate`] (done by [`crate::Enricher::new`]
/// and [`crate::EnrichService::start`]) before use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Worker tasks; each vehicle always goes to the same worker, so its pings
    /// stay in order. 0 = one per CPU core.
    pub workers: usize,
    /// Capacity of each worker's input queue (pings). Bounded: a full queue
    /// stops the dispatcher, which stops ingest.
    pub queue_capacity: usize,
    /// H3 resolutions (0-15) to index every position at, in output order.
    /// Empty disables H3 indexing.
    pub h3_resolutions: Vec<u8>,
    /// CloudEvents `source` of every event: a name for this deployment.
    /// Part of no event id, so renaming it does not break deduplication.
    pub source: String,
    /// Pings of a vehicle arriving out of device-time order are held this
    /// long (device time, and at most this long in wall time) and put back in
    /// order before they drive the state machine. Telemetry records are not
    /// held; only events wait. `0s` drives the state machine in arrival order.
    #[serde(with = "humantime_serde")]
    pub reorder_window: Duration,
    /// A ping implying a speed above this from the previous one is a GPS
    /// outlier: flagged `jump` and ignored by the state machine, km/h.
    pub max_speed_kmh: f64,
    /// How often per-vehicle state is checkpointed (to the `vehicle_state`
    /// table when the TimescaleDB sink is configured, else to `state_dir`).
    /// It is always checkpointed on shutdown.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Directory of the state checkpoint when no database is configured.
    pub state_dir: PathBuf,
    /// Geofence membership.
    pub geofence: GeofenceRules,
    /// Trip start and end.
    pub motion: MotionRules,
    /// Arrival at arrival fences.
    pub arrival: ArrivalRules,
    /// Battery levels.
    pub battery: BatteryRules,
    /// Speeding.
    pub overspeed: OverspeedRules,
    /// Online / offline.
    pub connectivity: ConnectivityRules,
    /// Diagnostic trouble codes.
    pub diagnostics: DiagnosticsRules,
}

/// Hysteresis of geofence membership (`[enrich.geofence]`): GPS jitter at a
/// boundary gives one enter and one exit, not a flurry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeofenceRules {
    /// A vehicle inside a fence only counts as outside again once it is
    /// farther than this from the fence (or than its fix's `accuracy_m`, if
    /// larger), metres.
    pub margin_m: f64,
    /// Fixes less accurate than this (`accuracy_m` above it) change no
    /// membership, metres.
    pub max_accuracy_m: f64,
    /// Inside for at least this long before `geofence.entered` (device time).
    #[serde(with = "humantime_serde")]
    pub min_inside: Duration,
    /// Outside (beyond the margin) for at least this long before
    /// `geofence.exited` (device time).
    #[serde(with = "humantime_serde")]
    pub min_outside: Duration,
}

impl GeofenceRules {
    /// Default of [`GeofenceRules::margin_m`].
    pub const fn default_margin_m() -> f64 {
        25.0
    }
    /// Default of [`GeofenceRules::max_accuracy_m`].
    pub const fn default_max_accuracy_m() -> f64 {
        100.0
    }
}

impl Default for GeofenceRules {
    fn default() -> Self {
        Self {
            margin_m: Self::default_margin_m(),
            max_accuracy_m: Self::default_max_accuracy_m(),
            min_inside: Duration::ZERO,
            min_outside: Duration::ZERO,
        }
    }
}

/// Trip detection (`[enrich.motion]`), by distance and time rather than
/// speed, so a car creeping in traffic keeps its trip.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MotionRules {
    /// A stopped vehicle starts a trip once it is this far from where it
    /// stopped, metres.
    pub start_distance_m: f64,
    /// A moving vehicle has stopped once it stayed within this radius ...
    pub stop_radius_m: f64,
    /// ... for this long (device time).
    #[serde(with = "humantime_serde")]
    pub stop_after: Duration,
}

impl MotionRules {
    /// Default of [`MotionRules::start_distance_m`].
    pub const fn default_start_distance_m() -> f64 {
        50.0
    }
    /// Default of [`MotionRules::stop_radius_m`].
    pub const fn default_stop_radius_m() -> f64 {
        30.0
    }
    /// Default of [`MotionRules::stop_after`].
    pub const fn default_stop_after() -> Duration {
        Duration::from_secs(120)
    }
}

impl Default for MotionRules {
    fn default() -> Self {
        Self {
            start_distance_m: Self::default_start_distance_m(),
            stop_radius_m: Self::default_stop_radius_m(),
            stop_after: Self::default_stop_after(),
        }
    }
}

/// Arrival at fences with `arrival: true` (`[enrich.arrival]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArrivalRules {
    /// Slower than this counts as stopped, km/h.
    pub max_speed_kmh: f64,
    /// Stopped inside the fence for this long gives `vehicle.arrived`.
    #[serde(with = "humantime_serde")]
    pub min_stopped: Duration,
}

impl ArrivalRules {
    /// Default of [`ArrivalRules::max_speed_kmh`].
    pub const fn default_max_speed_kmh() -> f64 {
        5.0
    }
    /// Default of [`ArrivalRules::min_stopped`].
    pub const fn default_min_stopped() -> Duration {
        Duration::from_secs(60)
    }
}

impl Default for ArrivalRules {
    fn default() -> Self {
        Self {
            max_speed_kmh: Self::default_max_speed_kmh(),
            min_stopped: Self::default_min_stopped(),
        }
    }
}

/// Battery thresholds on `soc_pct` (`[enrich.battery]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatteryRules {
    /// Below this: `battery.low`, percent.
    pub low_pct: f64,
    /// Below this: `battery.critical`, percent.
    pub critical_pct: f64,
    /// At or above this after low or critical: `battery.recovered`, percent.
    /// Above `low_pct`, so a charge hovering at the threshold does not flap.
    pub recovered_pct: f64,
}

impl BatteryRules {
    /// Default of [`BatteryRules::low_pct`].
    pub const fn default_low_pct() -> f64 {
        20.0
    }
    /// Default of [`BatteryRules::critical_pct`].
    pub const fn default_critical_pct() -> f64 {
        10.0
    }
    /// Default of [`BatteryRules::recovered_pct`].
    pub const fn default_recovered_pct() -> f64 {
        25.0
    }
}

impl Default for BatteryRules {
    fn default() -> Self {
        Self {
            low_pct: Self::default_low_pct(),
            critical_pct: Self::default_critical_pct(),
            recovered_pct: Self::default_recovered_pct(),
        }
    }
}

/// Speeding (`[enrich.overspeed]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverspeedRules {
    /// Limit outside fences with a `speed_limit_kmh` (inside, the lowest
    /// limit of the fences the vehicle is in applies), km/h. 0 = none.
    pub limit_kmh: f64,
    /// Above the limit for this long gives one `vehicle.overspeed`.
    #[serde(with = "humantime_serde")]
    pub min_duration: Duration,
    /// The episode ends once the speed is this far below the limit, km/h.
    pub hysteresis_kmh: f64,
}

impl OverspeedRules {
    /// Default of [`OverspeedRules::limit_kmh`].
    pub const fn default_limit_kmh() -> f64 {
        130.0
    }
    /// Default of [`OverspeedRules::min_duration`].
    pub const fn default_min_duration() -> Duration {
        Duration::from_secs(10)
    }
    /// Default of [`OverspeedRules::hysteresis_kmh`].
    pub const fn default_hysteresis_kmh() -> f64 {
        5.0
    }
}

impl Default for OverspeedRules {
    fn default() -> Self {
        Self {
            limit_kmh: Self::default_limit_kmh(),
            min_duration: Self::default_min_duration(),
            hysteresis_kmh: Self::default_hysteresis_kmh(),
        }
    }
}

/// Online / offline (`[enrich.connectivity]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectivityRules {
    /// No ping received for this long (wall time) gives `vehicle.offline`,
    /// fired by a timer even if no further ping arrives.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
}

impl ConnectivityRules {
    /// Default of [`ConnectivityRules::offline_after`].
    pub const fn default_offline_after() -> Duration {
        Duration::from_secs(300)
    }
}

impl Default for ConnectivityRules {
    fn default() -> Self {
        Self {
            offline_after: Self::default_offline_after(),
        }
    }
}

/// Diagnostic trouble codes (`[enrich.diagnostics]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsRules {
    /// An active code missing from the vehicle's pings for this long (device
    /// time) is cleared. Devices that leave `dtcs` out of some pings (a
    /// phone next to the vehicle's telematics unit) then do not flap codes.
    #[serde(with = "humantime_serde")]
    pub clear_after: Duration,
}

impl DiagnosticsRules {
    /// Default of [`DiagnosticsRules::clear_after`].
    pub const fn default_clear_after() -> Duration {
        Duration::from_secs(60)
    }
}

impl Default for DiagnosticsRules {
    fn default() -> Self {
        Self {
            clear_after: Self::default_clear_after(),
        }
    }
}

impl EnrichConfig {
    /// Default of [`EnrichConfig::workers`]: one per CPU core.
    pub const fn default_workers() -> usize {
        0
    }

    /// Default of [`EnrichConfig::queue_capacity`].
    pub const fn default_queue_capacity() -> usize {
        4096
    }

    /// Default of [`EnrichConfig::h3_resolutions`].
    pub const fn default_h3_resolutions() -> [u8; 2] {
        DEFAULT_H3_RESOLUTIONS
    }

    /// Default of [`EnrichConfig::source`].
    pub const fn default_source() -> &'static str {
        "fleetpipe"
    }

    /// Default of [`EnrichConfig::reorder_window`].
    pub const fn default_reorder_window() -> Duration {
        Duration::from_secs(2)
    }

    /// Default of [`EnrichConfig::max_speed_kmh`].
    pub const fn default_max_speed_kmh() -> f64 {
        300.0
    }

    /// Default of [`EnrichConfig::snapshot_interval`].
    pub const fn default_snapshot_interval() -> Duration {
        Duration::from_secs(10)
    }

    /// Default of [`EnrichConfig::state_dir`].
    pub fn default_state_dir() -> PathBuf {
        PathBuf::from("data/state")
    }

    /// Checks the settings, naming the offending key on error.
    ///
    /// # Errors
    ///
    /// A resolution above 15 or listed twice, or a `queue_capacity` of 0.
    pub fn validate(&self) -> Result<(), EnrichError> {
        if self.queue_capacity == 0 {
            return Err(EnrichError::ZeroQueueCapacity);
        }
        // At most 16 distinct values are valid, so a bitset finds duplicates.
        let mut seen: u16 = 0;
        for &res in &self.h3_resolutions {
            if res > MAX_H3_RESOLUTION {
                return Err(EnrichError::ResolutionOutOfRange(res));
            }
            let bit = 1u16 << res;
            if seen & bit != 0 {
                return Err(EnrichError::DuplicateResolution(res));
            }
            seen |= bit;
        }
        let positive = [
            ("enrich.max_speed_kmh", self.max_speed_kmh),
            (
                "enrich.geofence.max_accuracy_m",
                self.geofence.max_accuracy_m,
            ),
            (
                "enrich.motion.start_distance_m",
                self.motion.start_distance_m,
            ),
            ("enrich.motion.stop_radius_m", self.motion.stop_radius_m),
            ("enrich.arrival.max_speed_kmh", self.arrival.max_speed_kmh),
        ];
        let non_negative = [
            ("enrich.geofence.margin_m", self.geofence.margin_m),
            ("enrich.overspeed.limit_kmh", self.overspeed.limit_kmh),
            (
                "enrich.overspeed.hysteresis_kmh",
                self.overspeed.hysteresis_kmh,
            ),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(EnrichError::Invalid {
                    key,
                    reason: format!("{value} is not a positive number"),
                });
            }
        }
        for (key, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(EnrichError::Invalid {
                    key,
                    reason: format!("{value} is negative or not a number"),
                });
            }
        }
        let b = &self.battery;
        if !(0.0 <= b.critical_pct
            && b.critical_pct <= b.low_pct
            && b.low_pct < b.recovered_pct
            && b.recovered_pct <= 100.0)
        {
            return Err(EnrichError::Invalid {
                key: "enrich.battery",
                reason: format!(
                    "need 0 <= critical_pct ({}) <= low_pct ({}) < recovered_pct ({}) <= 100",
                    b.critical_pct, b.low_pct, b.recovered_pct
                ),
            });
        }
        if self.connectivity.offline_after.is_zero() {
            return Err(EnrichError::Invalid {
                key: "enrich.connectivity.offline_after",
                reason: "must be longer than 0s".into(),
            });
        }
        if self.snapshot_interval.is_zero() {
            return Err(EnrichError::Invalid {
                key: "enrich.snapshot_interval",
                reason: "must be longer than 0s".into(),
            });
        }
        Ok(())
    }
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            workers: Self::default_workers(),
            queue_capacity: Self::default_queue_capacity(),
            h3_resolutions: Self::default_h3_resolutions().to_vec(),
            source: Self::default_source().to_owned(),
            reorder_window: Self::default_reorder_window(),
            max_speed_kmh: Self::default_max_speed_kmh(),
            snapshot_interval: Self::default_snapshot_interval(),
            state_dir: Self::default_state_dir(),
            geofence: GeofenceRules::default(),
            motion: MotionRules::default(),
            arrival: ArrivalRules::default(),
            battery: BatteryRules::default(),
            overspeed: OverspeedRules::default(),
            connectivity: ConnectivityRules::default(),
            diagnostics: DiagnosticsRules::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values_and_valid() {
        let config = EnrichConfig::default();
        assert_eq!(config.workers, 0);
        assert_eq!(config.queue_capacity, 4096);
        assert_eq!(config.h3_resolutions, vec![7, 9]);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn all_resolutions_zero_to_fifteen_are_accepted() {
        let config = EnrichConfig {
            h3_resolutions: (0..=15).rev().collect(),
            ..EnrichConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn empty_resolutions_are_accepted() {
        let config = EnrichConfig {
            h3_resolutions: Vec::new(),
            ..EnrichConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn resolution_above_fifteen_is_rejected_naming_the_key() {
        let config = EnrichConfig {
            h3_resolutions: vec![7, 16],
            ..EnrichConfig::default()
        };
        let err = config.validate();
        assert_eq!(err, Err(EnrichError::ResolutionOutOfRange(16)));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("enrich.h3_resolutions"), "{msg}");
        assert!(msg.contains("16"), "{msg}");
    }

    #[test]
    fn duplicate_resolution_is_rejected_naming_the_key() {
        let config = EnrichConfig {
            h3_resolutions: vec![9, 7, 9],
            ..EnrichConfig::default()
        };
        let err = config.validate();
        assert_eq!(err, Err(EnrichError::DuplicateResolution(9)));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("enrich.h3_resolutions"), "{msg}");
    }

    #[test]
    fn missing_keys_take_defaults() {
        let config: Result<EnrichConfig, _> = serde_json::from_str(r#"{"workers": 3}"#);
        assert_eq!(
            config.ok(),
            Some(EnrichConfig {
                workers: 3,
                ..EnrichConfig::default()
            })
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let config: Result<EnrichConfig, _> = serde_json::from_str(r#"{"worker": 3}"#);
        let msg = config.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("unknown field `worker`"), "{msg}");
    }

    #[test]
    fn zero_queue_capacity_is_rejected_naming_the_key() {
        let config = EnrichConfig {
            queue_capacity: 0,
            ..EnrichConfig::default()
        };
        let err = config.validate();
        assert_eq!(err, Err(EnrichError::ZeroQueueCapacity));
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("enrich.queue_capacity"), "{msg}");
    }
}
