//! The per-vehicle state machine: pure, no I/O, no clock of its own.
//!
//! [`VehicleState::apply`] takes one [`Sample`] (a ping reduced to what the
//! rules look at) in device-time order and appends the events it causes to a
//! buffer. Everything that decides *whether* an event happens lives here; the
//! [`crate::tracker::Tracker`] decides *which* pings reach it (in order, no
//! duplicates, no outliers) and wraps the drafts into CloudEvents.
//!
//! Within one sample, events come in a fixed order: online, motion,
//! geofence exits (departed before exited), enters, dwell, arrival,
//! overspeed, battery, charging, diagnostics, and the overall state last.

use std::sync::Arc;

use fleetpipe_model::EventType;
use geo::{Distance, Haversine, Point};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::EnrichConfig;
use crate::fence_lookup::FenceSnapshot;

/// The configured rules in the units the state machine computes in
/// (milliseconds, metres, km/h).
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) margin_m: f64,
    pub(crate) max_accuracy_m: f64,
    pub(crate) min_inside_ms: i64,
    pub(crate) min_outside_ms: i64,
    pub(crate) start_distance_m: f64,
    pub(crate) stop_radius_m: f64,
    pub(crate) stop_after_ms: i64,
    pub(crate) arrival_max_speed_kmh: f64,
    pub(crate) arrival_min_stopped_ms: i64,
    pub(crate) battery_low_pct: f64,
    pub(crate) battery_critical_pct: f64,
    pub(crate) battery_recovered_pct: f64,
    pub(crate) overspeed_limit_kmh: Option<f64>,
    pub(crate) overspeed_min_ms: i64,
    pub(crate) overspeed_hysteresis_kmh: f64,
    pub(crate) offline_after_ms: i64,
    pub(crate) dtc_clear_after_ms: i64,
    pub(crate) reorder_window_ms: i64,
    pub(crate) max_speed_kmh: f64,
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Rules {
    pub(crate) fn new(c: &EnrichConfig) -> Self {
        Self {
            margin_m: c.geofence.margin_m,
            max_accuracy_m: c.geofence.max_accuracy_m,
            min_inside_ms: millis(c.geofence.min_inside),
            min_outside_ms: millis(c.geofence.min_outside),
            start_distance_m: c.motion.start_distance_m,
            stop_radius_m: c.motion.stop_radius_m,
            stop_after_ms: millis(c.motion.stop_after),
            arrival_max_speed_kmh: c.arrival.max_speed_kmh,
            arrival_min_stopped_ms: millis(c.arrival.min_stopped),
            battery_low_pct: c.battery.low_pct,
            battery_critical_pct: c.battery.critical_pct,
            battery_recovered_pct: c.battery.recovered_pct,
            overspeed_limit_kmh: (c.overspeed.limit_kmh > 0.0).then_some(c.overspeed.limit_kmh),
            overspeed_min_ms: millis(c.overspeed.min_duration),
            overspeed_hysteresis_kmh: c.overspeed.hysteresis_kmh,
            offline_after_ms: millis(c.connectivity.offline_after),
            dtc_clear_after_ms: millis(c.diagnostics.clear_after),
            reorder_window_ms: millis(c.reorder_window),
            max_speed_kmh: c.max_speed_kmh,
        }
    }
}

/// A position at a device time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pos {
    pub(crate) ts: i64,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

impl Pos {
    /// Great-circle distance in metres.
    pub(crate) fn distance_m(&self, other: &Pos) -> f64 {
        Haversine.distance(
            Point::new(self.lon, self.lat),
            Point::new(other.lon, other.lat),
        )
    }
}

/// What the state machine needs of one ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub(crate) pos: Pos,
    // Absent fields are left out of checkpoints: a pending sample is most of
    // a vehicle's checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) speed_kmh: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) accuracy_m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) soc_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) charging: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ignition: Option<bool>,
    /// Sorted, without repeats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) dtcs: Vec<String>,
    /// Ids of the fences containing the position (exact test).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) fences: Vec<Arc<str>>,
    /// Wall time the ping was received, epoch ms.
    pub(crate) received_at: i64,
}

impl Sample {
    /// Order of pings of one vehicle: device time, then sequence number.
    pub(crate) fn key(&self) -> (i64, u64) {
        (self.pos.ts, self.seq.unwrap_or(u64::MAX))
    }
}

/// An event before it is wrapped into a CloudEvent.
#[derive(Debug)]
pub(crate) struct Draft {
    pub(crate) event_type: EventType,
    /// What the event is about within the vehicle (fence id, code) or "".
    pub(crate) key: Arc<str>,
    pub(crate) time_ms: i64,
    pub(crate) data: Box<RawValue>,
}

/// The vehicle's overall state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Overall {
    /// Not heard from for `offline_after` (also before the first ping).
    #[default]
    Offline,
    /// Stopped, ignition off or unknown.
    Parked,
    /// Stopped, ignition on.
    Idle,
    /// On a trip.
    Moving,
    /// Charging.
    Charging,
}

impl Overall {
    const fn as_str(self) -> &'static str {
        match self {
            Overall::Offline => "offline",
            Overall::Parked => "parked",
            Overall::Idle => "idle",
            Overall::Moving => "moving",
            Overall::Charging => "charging",
        }
    }
}

/// Battery level band.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BatteryLevel {
    #[default]
    Normal,
    Low,
    Critical,
}

/// Membership of one fence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Membership {
    fence: Arc<str>,
    entered_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outside_since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arrived_at: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dwelled: bool,
}

/// A trip in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Trip {
    started_at: i64,
    distance_m: f64,
    max_speed_kmh: f64,
}

/// A charging session in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Charging {
    since: i64,
    soc_pct: Option<f64>,
}

/// A speeding episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Overspeed {
    since: i64,
    reported: bool,
}

/// Everything the rules remember about one vehicle. Serialized as-is into
/// the state checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct VehicleState {
    /// The last sample applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<Pos>,
    /// Key of the last sample applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_key: Option<(i64, u64)>,
    #[serde(default)]
    online: bool,
    /// Time of the `vehicle.offline` event while offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offline_at: Option<i64>,
    #[serde(default)]
    overall: Overall,
    #[serde(default)]
    moving: bool,
    /// Where the vehicle is (stopped) or last stayed within the stop radius
    /// (moving), and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anchor: Option<Pos>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trip: Option<Trip>,
    /// Slower than the arrival speed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slow_since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ignition: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    charging: Option<Charging>,
    #[serde(default)]
    battery: BatteryLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overspeed: Option<Overspeed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    inside: Vec<Membership>,
    /// Fences the vehicle is inside of but not yet for `min_inside`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    candidates: Vec<(Arc<str>, i64)>,
    /// Active DTCs and when each was last reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dtcs: Vec<(Box<str>, i64)>,
}

/// Appends drafts for one vehicle.
struct Emitter<'a> {
    out: &'a mut Vec<Draft>,
}

impl Emitter<'_> {
    fn emit(&mut self, event_type: EventType, key: &Arc<str>, time_ms: i64, data: impl Serialize) {
        // The data types below serialize infallibly (numbers, strings,
        // options); an error would mean a bug, and loses only the payload.
        let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".to_owned());
        let data = RawValue::from_string(json)
            .unwrap_or_else(|_| RawValue::from_string("{}".to_owned()).unwrap_or_default());
        self.out.push(Draft {
            event_type,
            key: Arc::clone(key),
            time_ms,
            data,
        });
    }
}

/// Seconds between two epoch-millisecond times, as a number with ms
/// precision.
fn secs(from: i64, to: i64) -> f64 {
    (to - from) as f64 / 1000.0
}

/// RFC 3339 string of epoch ms, for event payloads.
fn rfc3339(ts: i64) -> String {
    fleetpipe_model::ping::Rfc3339Millis(ts).to_string()
}

impl VehicleState {
    /// Key of the last sample applied (device time, seq).
    pub(crate) fn last_key(&self) -> Option<(i64, u64)> {
        self.last_key
    }

    /// Whether the vehicle is online.
    pub(crate) fn is_online(&self) -> bool {
        self.online
    }

    /// Marks the vehicle offline at device time `time_ms` (the newest ping's
    /// time plus `offline_after`).
    pub(crate) fn go_offline(&mut self, time_ms: i64, last_ping_ms: i64, out: &mut Vec<Draft>) {
        if !self.online {
            return;
        }
        let mut em = Emitter { out };
        self.online = false;
        self.offline_at = Some(time_ms);
        em.emit(
            EventType::Offline,
            &empty_key(),
            time_ms,
            OfflineData {
                last_ping_at: rfc3339(last_ping_ms),
            },
        );
        self.update_overall(time_ms, &mut em);
    }

    /// Applies one sample, newer (by [`Sample::key`]) than every sample
    /// applied before, and appends the events it causes to `out`.
    pub(crate) fn apply(
        &mut self,
        s: &Sample,
        rules: &Rules,
        fences: &FenceSnapshot<'_>,
        out: &mut Vec<Draft>,
    ) {
        let mut em = Emitter { out };
        let ts = s.pos.ts;
        let step = self.last.map(|p| p.distance_m(&s.pos));
        let speed = s.speed_kmh.or_else(|| {
            let last = self.last?;
            let dt = ts - last.ts;
            (dt > 0).then(|| step.unwrap_or(0.0) / (dt as f64 / 3_600_000.0) / 1000.0)
        });

        if !self.online {
            self.online = true;
            // Never before the offline event it ends (a buffered upload can
            // carry device times from before the timeout fired).
            let time = self.offline_at.map_or(ts, |at| at.max(ts));
            em.emit(
                EventType::Online,
                &empty_key(),
                time,
                OnlineData {
                    offline_since: self.offline_at.map(rfc3339),
                },
            );
            self.offline_at = None;
        }

        self.motion(s, speed, rules, &mut em);
        self.slow_since = match speed {
            Some(v) if v < rules.arrival_max_speed_kmh => Some(self.slow_since.unwrap_or(ts)),
            Some(_) => None,
            None => self.slow_since,
        };
        self.geofences(s, rules, fences, &mut em);
        self.overspeed(ts, speed, rules, fences, &mut em);
        self.battery(s, rules, &mut em);
        self.diagnostics(s, rules, &mut em);
        if s.ignition.is_some() {
            self.ignition = s.ignition;
        }
        self.last = Some(s.pos);
        self.last_key = Some(s.key());
        self.update_overall(ts, &mut em);
    }

    fn motion(&mut self, s: &Sample, speed: Option<f64>, rules: &Rules, em: &mut Emitter<'_>) {
        let Some(anchor) = self.anchor else {
            self.anchor = Some(s.pos);
            return;
        };
        let ts = s.pos.ts;
        let from_anchor = anchor.distance_m(&s.pos);
        if !self.moving {
            if from_anchor >= rules.start_distance_m {
                self.moving = true;
                self.trip = Some(Trip {
                    started_at: anchor.ts.max(self.last.map_or(anchor.ts, |p| p.ts)),
                    distance_m: from_anchor,
                    max_speed_kmh: speed.unwrap_or(0.0),
                });
                em.emit(
                    EventType::MotionStarted,
                    &empty_key(),
                    ts,
                    MotionStartedData {
                        lat: s.pos.lat,
                        lon: s.pos.lon,
                        from_lat: anchor.lat,
                        from_lon: anchor.lon,
                    },
                );
                self.anchor = Some(s.pos);
            }
            return;
        }
        if let Some(trip) = &mut self.trip {
            trip.max_speed_kmh = trip.max_speed_kmh.max(speed.unwrap_or(0.0));
        }
        if from_anchor > rules.stop_radius_m {
            // The trip is measured in hops of at least the stop radius, so
            // GPS jitter while standing adds nothing to it.
            if let Some(trip) = &mut self.trip {
                trip.distance_m += from_anchor;
            }
            self.anchor = Some(s.pos);
        } else if ts - anchor.ts >= rules.stop_after_ms {
            self.moving = false;
            let trip = self.trip.take().unwrap_or(Trip {
                started_at: anchor.ts,
                distance_m: 0.0,
                max_speed_kmh: 0.0,
            });
            em.emit(
                EventType::MotionStopped,
                &empty_key(),
                ts,
                MotionStoppedData {
                    lat: anchor.lat,
                    lon: anchor.lon,
                    started_at: rfc3339(trip.started_at),
                    stopped_at: rfc3339(anchor.ts),
                    duration_s: secs(trip.started_at, anchor.ts),
                    distance_m: round1(trip.distance_m),
                    max_speed_kmh: round1(trip.max_speed_kmh),
                },
            );
        }
    }

    fn geofences(
        &mut self,
        s: &Sample,
        rules: &Rules,
        fences: &FenceSnapshot<'_>,
        em: &mut Emitter<'_>,
    ) {
        let ts = s.pos.ts;
        let accuracy = s.accuracy_m.unwrap_or(0.0);
        if accuracy <= rules.max_accuracy_m {
            // Exits first: leaving A and entering B on one ping reads A, B.
            let margin = rules.margin_m.max(accuracy);
            let mut i = 0;
            while i < self.inside.len() {
                let m = &mut self.inside[i];
                if s.fences.contains(&m.fence) {
                    m.outside_since = None;
                    i += 1;
                    continue;
                }
                let exit = match fences.get(&m.fence) {
                    // Removed by a reload: the membership cannot hold.
                    None => Some("fence_removed"),
                    Some(fence) if fence.distance_m(s.pos.lat, s.pos.lon) > margin => {
                        let since = *m.outside_since.get_or_insert(ts);
                        (ts - since >= rules.min_outside_ms).then_some("left")
                    }
                    // In the margin band: no evidence either way.
                    Some(_) => {
                        m.outside_since = None;
                        None
                    }
                };
                match exit {
                    Some(reason) => {
                        let m = self.inside.remove(i);
                        if let Some(arrived_at) = m.arrived_at {
                            em.emit(
                                EventType::VehicleDeparted,
                                &m.fence,
                                ts,
                                DepartedData {
                                    fence_id: &m.fence,
                                    arrived_at: rfc3339(arrived_at),
                                    stay_s: secs(arrived_at, ts),
                                },
                            );
                        }
                        em.emit(
                            EventType::GeofenceExited,
                            &m.fence,
                            ts,
                            ExitedData {
                                fence_id: &m.fence,
                                entered_at: rfc3339(m.entered_at),
                                duration_s: secs(m.entered_at, ts),
                                lat: s.pos.lat,
                                lon: s.pos.lon,
                                reason,
                            },
                        );
                    }
                    None => i += 1,
                }
            }
            self.candidates.retain(|(f, _)| s.fences.contains(f));
            for fence in &s.fences {
                if self.inside.iter().any(|m| &m.fence == fence) {
                    continue;
                }
                let since = match self.candidates.iter().find(|(f, _)| f == fence) {
                    Some(&(_, since)) => since,
                    None => {
                        self.candidates.push((Arc::clone(fence), ts));
                        ts
                    }
                };
                if ts - since < rules.min_inside_ms {
                    continue;
                }
                self.candidates.retain(|(f, _)| f != fence);
                em.emit(
                    EventType::GeofenceEntered,
                    fence,
                    ts,
                    EnteredData {
                        fence_id: fence,
                        fence_name: fences.get(fence).map(|f| f.name.as_str()),
                        lat: s.pos.lat,
                        lon: s.pos.lon,
                    },
                );
                self.inside.push(Membership {
                    fence: Arc::clone(fence),
                    entered_at: ts,
                    outside_since: None,
                    arrived_at: None,
                    dwelled: false,
                });
            }
        }
        for m in &mut self.inside {
            let Some(fence) = fences.get(&m.fence) else {
                continue;
            };
            if let Some(dwell_s) = fence.dwell_s
                && !m.dwelled
                && ts - m.entered_at >= i64::from(dwell_s) * 1000
            {
                m.dwelled = true;
                em.emit(
                    EventType::GeofenceDwell,
                    &m.fence,
                    ts,
                    DwellData {
                        fence_id: &m.fence,
                        entered_at: rfc3339(m.entered_at),
                        dwell_s,
                    },
                );
            }
            if fence.arrival
                && m.arrived_at.is_none()
                && let Some(slow_since) = self.slow_since
                && ts - slow_since.max(m.entered_at) >= rules.arrival_min_stopped_ms
            {
                m.arrived_at = Some(ts);
                em.emit(
                    EventType::VehicleArrived,
                    &m.fence,
                    ts,
                    ArrivedData {
                        fence_id: &m.fence,
                        entered_at: rfc3339(m.entered_at),
                        stopped_since: rfc3339(slow_since.max(m.entered_at)),
                        lat: s.pos.lat,
                        lon: s.pos.lon,
                    },
                );
            }
        }
    }

    fn overspeed(
        &mut self,
        ts: i64,
        speed: Option<f64>,
        rules: &Rules,
        fences: &FenceSnapshot<'_>,
        em: &mut Emitter<'_>,
    ) {
        let Some(speed) = speed else {
            return;
        };
        // The lowest limit of the fences the vehicle is in, else the global.
        let fenced = self
            .inside
            .iter()
            .filter_map(|m| {
                let limit = fences.get(&m.fence)?.speed_limit_kmh?;
                Some((limit, &m.fence))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let (limit, fence) = match (fenced, rules.overspeed_limit_kmh) {
            (Some((limit, fence)), _) => (limit, Some(fence)),
            (None, Some(limit)) => (limit, None),
            (None, None) => {
                self.overspeed = None;
                return;
            }
        };
        if speed > limit {
            let episode = self.overspeed.get_or_insert(Overspeed {
                since: ts,
                reported: false,
            });
            if !episode.reported && ts - episode.since >= rules.overspeed_min_ms {
                episode.reported = true;
                let since = episode.since;
                em.emit(
                    EventType::Overspeed,
                    &empty_key(),
                    ts,
                    OverspeedData {
                        speed_kmh: round1(speed),
                        limit_kmh: limit,
                        fence_id: fence.map(|f| &**f),
                        since: rfc3339(since),
                    },
                );
            }
        } else if speed <= limit - rules.overspeed_hysteresis_kmh {
            self.overspeed = None;
        }
    }

    fn battery(&mut self, s: &Sample, rules: &Rules, em: &mut Emitter<'_>) {
        let ts = s.pos.ts;
        if let Some(soc) = s.soc_pct {
            let (next, event, threshold) = match self.battery {
                _ if soc < rules.battery_critical_pct && self.battery != BatteryLevel::Critical => {
                    (
                        BatteryLevel::Critical,
                        Some(EventType::BatteryCritical),
                        rules.battery_critical_pct,
                    )
                }
                BatteryLevel::Normal if soc < rules.battery_low_pct => (
                    BatteryLevel::Low,
                    Some(EventType::BatteryLow),
                    rules.battery_low_pct,
                ),
                BatteryLevel::Low | BatteryLevel::Critical
                    if soc >= rules.battery_recovered_pct =>
                {
                    (
                        BatteryLevel::Normal,
                        Some(EventType::BatteryRecovered),
                        rules.battery_recovered_pct,
                    )
                }
                level => (level, None, 0.0),
            };
            self.battery = next;
            if let Some(event) = event {
                em.emit(
                    event,
                    &empty_key(),
                    ts,
                    BatteryData {
                        soc_pct: soc,
                        threshold_pct: threshold,
                    },
                );
            }
        }
        match (s.charging, &self.charging) {
            (Some(true), None) => {
                self.charging = Some(Charging {
                    since: ts,
                    soc_pct: s.soc_pct,
                });
                em.emit(
                    EventType::ChargingStarted,
                    &empty_key(),
                    ts,
                    ChargingStartedData { soc_pct: s.soc_pct },
                );
            }
            (Some(false), Some(session)) => {
                let added = match (session.soc_pct, s.soc_pct) {
                    (Some(a), Some(b)) => Some(round1(b - a)),
                    _ => None,
                };
                let data = ChargingStoppedData {
                    started_at: rfc3339(session.since),
                    duration_s: secs(session.since, ts),
                    soc_start_pct: session.soc_pct,
                    soc_end_pct: s.soc_pct,
                    soc_added_pct: added,
                };
                self.charging = None;
                em.emit(EventType::ChargingStopped, &empty_key(), ts, data);
            }
            _ => {}
        }
    }

    fn diagnostics(&mut self, s: &Sample, rules: &Rules, em: &mut Emitter<'_>) {
        let ts = s.pos.ts;
        for code in &s.dtcs {
            match self.dtcs.iter_mut().find(|(c, _)| **c == **code) {
                Some(active) => active.1 = ts,
                None => {
                    self.dtcs.push((code.as_str().into(), ts));
                    let key: Arc<str> = Arc::from(code.as_str());
                    em.emit(EventType::DtcSet, &key, ts, DtcData { code });
                }
            }
        }
        let mut i = 0;
        while i < self.dtcs.len() {
            let (code, last_seen) = &self.dtcs[i];
            if !s.dtcs.iter().any(|c| **c == **code) && ts - last_seen >= rules.dtc_clear_after_ms {
                let (code, last_seen) = self.dtcs.remove(i);
                let key: Arc<str> = Arc::from(&*code);
                em.emit(
                    EventType::DtcCleared,
                    &key,
                    ts,
                    DtcClearedData {
                        code: &code,
                        last_reported_at: rfc3339(last_seen),
                    },
                );
            } else {
                i += 1;
            }
        }
    }

    fn update_overall(&mut self, ts: i64, em: &mut Emitter<'_>) {
        let next = if !self.online {
            Overall::Offline
        } else if self.charging.is_some() {
            Overall::Charging
        } else if self.moving {
            Overall::Moving
        } else if self.ignition == Some(true) {
            Overall::Idle
        } else {
            Overall::Parked
        };
        if next != self.overall {
            let from = self.overall;
            self.overall = next;
            // Two changes can share a device time (offline, then online at
            // the same instant); the key keeps their ids apart.
            let key: Arc<str> = Arc::from(format!("{}>{}", from.as_str(), next.as_str()));
            em.emit(
                EventType::StateChanged,
                &key,
                ts,
                StateChangedData {
                    from: from.as_str(),
                    to: next.as_str(),
                },
            );
        }
    }
}

fn empty_key() -> Arc<str> {
    Arc::from("")
}

/// Rounds to 0.1, so payloads do not carry float noise.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Serialize)]
struct OnlineData {
    #[serde(skip_serializing_if = "Option::is_none")]
    offline_since: Option<String>,
}

#[derive(Serialize)]
struct OfflineData {
    last_ping_at: String,
}

#[derive(Serialize)]
struct MotionStartedData {
    lat: f64,
    lon: f64,
    from_lat: f64,
    from_lon: f64,
}

#[derive(Serialize)]
struct MotionStoppedData {
    lat: f64,
    lon: f64,
    started_at: String,
    stopped_at: String,
    duration_s: f64,
    distance_m: f64,
    max_speed_kmh: f64,
}

#[derive(Serialize)]
struct EnteredData<'a> {
    fence_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fence_name: Option<&'a str>,
    lat: f64,
    lon: f64,
}

#[derive(Serialize)]
struct ExitedData<'a> {
    fence_id: &'a str,
    entered_at: String,
    duration_s: f64,
    lat: f64,
    lon: f64,
    /// `left`, or `fence_removed` when a reload removed the fence.
    reason: &'static str,
}

#[derive(Serialize)]
struct DwellData<'a> {
    fence_id: &'a str,
    entered_at: String,
    dwell_s: u32,
}

#[derive(Serialize)]
struct ArrivedData<'a> {
    fence_id: &'a str,
    entered_at: String,
    stopped_since: String,
    lat: f64,
    lon: f64,
}

#[derive(Serialize)]
struct DepartedData<'a> {
    fence_id: &'a str,
    arrived_at: String,
    stay_s: f64,
}

#[derive(Serialize)]
struct OverspeedData<'a> {
    speed_kmh: f64,
    limit_kmh: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fence_id: Option<&'a str>,
    since: String,
}

#[derive(Serialize)]
struct BatteryData {
    soc_pct: f64,
    threshold_pct: f64,
}

#[derive(Serialize)]
struct ChargingStartedData {
    #[serde(skip_serializing_if = "Option::is_none")]
    soc_pct: Option<f64>,
}

#[derive(Serialize)]
struct ChargingStoppedData {
    started_at: String,
    duration_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    soc_start_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    soc_end_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    soc_added_pct: Option<f64>,
}

#[derive(Serialize)]
struct DtcData<'a> {
    code: &'a str,
}

#[derive(Serialize)]
struct DtcClearedData<'a> {
    code: &'a str,
    last_reported_at: String,
}

#[derive(Serialize)]
struct StateChangedData {
    from: &'static str,
    to: &'static str,
}
