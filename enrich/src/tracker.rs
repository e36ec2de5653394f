//! One worker's vehicles: the pure core between pings and the state machine.
//!
//! For every ping the [`Tracker`] produces the enriched telemetry record at
//! once (H3 cells, fences, distance, derived speed, flags) and decides what
//! reaches the [`VehicleState`]:
//!
//! - **duplicates** (same device time and sequence number as a ping already
//!   seen) are flagged and go no further, so they never emit an event twice;
//! - **late** pings (older than what already drove the state) are flagged
//!   and go no further: the vehicle's story has moved past them, and replaying
//!   them would emit enter/exit pairs out of order;
//! - **jumps** (an implied speed above `max_speed_kmh`) are flagged GPS
//!   outliers and go no further (three in a row are believed: the vehicle
//!   really was moved);
//! - everything else waits in a small per-vehicle buffer until it is
//!   `reorder_window` older (device time) than the newest ping, or has waited
//!   `reorder_window` of wall time, and is then applied in device-time order.
//!
//! Time comes from the inputs only: a ping's `received_at` and the `now`
//! given to [`Tracker::tick`], so the same inputs give the same outputs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use fleetpipe_geofence::SharedIndex;
use fleetpipe_model::{
    Accepted, Ack, Enrichment, PingFlags, SCHEMA_VERSION, SinkRecord, TelemetryRecord,
    VehicleEvent, VehicleId,
};
use serde::{Deserialize, Serialize};

use crate::config::EnrichConfig;
use crate::enricher::Enricher;
use crate::error::EnrichError;
use crate::fence_lookup::FenceLookup;
use crate::vehicle::{Draft, Pos, Rules, Sample, VehicleState};

/// Keys of the last pings applied, remembered to flag duplicates.
const RECENT: usize = 4;
/// Consecutive jumps after which the new position is believed.
const JUMPS_BELIEVED: u8 = 3;

/// Everything a worker keeps about one vehicle; also its checkpoint form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    state: VehicleState,
    /// Waiting to be applied, sorted by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<Sample>,
    /// Newest believed position seen (device time), applied or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    newest: Option<Pos>,
    /// Newest device time seen, outliers included.
    #[serde(default)]
    max_ts: i64,
    #[serde(default)]
    jumps: u8,
    /// Keys of the last pings applied, newest last.
    #[serde(default)]
    recent: Vec<(i64, u64)>,
    /// Wall time of the last ping received.
    #[serde(default)]
    last_received: i64,
    #[serde(skip)]
    timer_armed: bool,
    /// Listed in [`Tracker::holding`]. Flags on the entry rather than hash
    /// sets keyed by vehicle spare two hash lookups per ping.
    #[serde(skip)]
    holding: bool,
    /// Listed in [`Tracker::dirty`].
    #[serde(skip)]
    dirty: bool,
}

/// Lists `vehicle` in `dirty` unless it is already.
fn mark_dirty(entry: &mut Entry, vehicle: &VehicleId, dirty: &mut Vec<VehicleId>) {
    if !entry.dirty {
        entry.dirty = true;
        dirty.push(vehicle.clone());
    }
}

/// The per-worker core. See the module docs.
#[derive(Debug)]
pub struct Tracker {
    enricher: Enricher,
    rules: Rules,
    source: Arc<str>,
    fence_lookup: FenceLookup,
    /// Boxed: the table has up to twice as many buckets as vehicles (its
    /// size is a power of two), and a bucket holding the ~500-byte entry
    /// itself would cost ~1 KiB per vehicle at 1M vehicles; a box costs 8.
    vehicles: HashMap<VehicleId, Box<Entry>, foldhash::fast::RandomState>,
    /// (deadline, vehicle) of offline timers, at most one per vehicle.
    timers: BinaryHeap<Reverse<(i64, VehicleId)>>,
    /// Vehicles that may have pings waiting in their buffer (each once: the
    /// entry's `holding` flag says whether it is listed).
    holding: Vec<VehicleId>,
    /// Vehicles changed since the last checkpoint (each once, see `dirty`).
    dirty: Vec<VehicleId>,
    drafts: Vec<Draft>,
}

impl Tracker {
    /// A tracker with no vehicles.
    ///
    /// # Errors
    ///
    /// Whatever [`EnrichConfig::validate`] rejects.
    pub fn new(config: &EnrichConfig, fences: SharedIndex) -> Result<Self, EnrichError> {
        Ok(Self {
            enricher: Enricher::new(config)?,
            rules: Rules::new(config),
            source: Arc::from(config.source.as_str()),
            fence_lookup: FenceLookup::new(fences),
            vehicles: HashMap::default(),
            timers: BinaryHeap::new(),
            holding: Vec::new(),
            dirty: Vec::new(),
            drafts: Vec::new(),
        })
    }

    /// Number of vehicles tracked.
    pub fn vehicles(&self) -> usize {
        self.vehicles.len()
    }

    /// Enriches one ping: appends its telemetry record, then the events it
    /// caused (carrying a share of the ping's ack, so the sender hears
    /// "stored" only once they are stored too).
    pub fn ingest(&mut self, accepted: Accepted, out: &mut Vec<SinkRecord>) {
        let Accepted { ping, origin, ack } = accepted;
        let now = origin.received_at;
        self.fence_lookup.refresh();
        let h3 = self.enricher.cells(ping.lat, ping.lon);
        let fences = self.fence_lookup.lookup(ping.lat, ping.lon);
        let rules = &self.rules;
        let entry = match self.vehicles.get_mut(&ping.vehicle_id) {
            Some(entry) => entry,
            None => self.vehicles.entry(ping.vehicle_id.clone()).or_default(),
        };

        // A vehicle silent for `offline_after` went offline before this ping,
        // whether or not a timer noticed it (a replay has no timers).
        let silent = now - entry.last_received >= rules.offline_after_ms;
        if silent && (entry.state.is_online() || !entry.pending.is_empty()) {
            release_all(entry, rules, &self.fence_lookup, &mut self.drafts);
            let last = entry.max_ts;
            entry
                .state
                .go_offline(last + rules.offline_after_ms, last, &mut self.drafts);
        }
        entry.last_received = entry.last_received.max(now);
        if !entry.timer_armed {
            entry.timer_armed = true;
            self.timers.push(Reverse((
                entry.last_received + rules.offline_after_ms,
                ping.vehicle_id.clone(),
            )));
        }

        let pos = Pos {
            ts: ping.ts_ms,
            lat: ping.lat,
            lon: ping.lon,
        };
        let key = (ping.ts_ms, ping.seq.unwrap_or(u64::MAX));
        let duplicate = entry.recent.contains(&key) || entry.pending.iter().any(|s| s.key() == key);
        let late = !duplicate && entry.state.last_key().is_some_and(|last| key < last);

        // Distance and speed from the newest believed position.
        let mut distance_m = None;
        let mut implied_kmh = None;
        let mut jump = false;
        match entry.newest {
            Some(prev) if pos.ts > prev.ts => {
                let d = prev.distance_m(&pos);
                let kmh = d / ((pos.ts - prev.ts) as f64 / 3_600_000.0) / 1000.0;
                if kmh > rules.max_speed_kmh && entry.jumps + 1 < JUMPS_BELIEVED {
                    entry.jumps += 1;
                    jump = true;
                } else {
                    entry.jumps = 0;
                    entry.newest = Some(pos);
                    distance_m = Some(d);
                    implied_kmh = Some(kmh);
                }
            }
            Some(_) => {}
            None => entry.newest = Some(pos),
        }
        entry.max_ts = entry.max_ts.max(pos.ts);

        let flags = PingFlags {
            late,
            duplicate,
            jump,
        };
        if flags.is_empty() {
            let mut dtcs = ping.dtcs.clone();
            dtcs.sort_unstable();
            dtcs.dedup();
            let sample = Sample {
                pos,
                seq: ping.seq,
                speed_kmh: ping.speed_kmh,
                accuracy_m: ping.accuracy_m,
                soc_pct: ping.soc_pct,
                charging: ping.charging,
                ignition: ping.ignition,
                dtcs,
                fences: fences.clone(),
                received_at: now,
            };
            let at = entry.pending.partition_point(|s| s.key() < key);
            // Grow one sample at a time: Vec's first allocation holds four
            // (~600 bytes) where a vehicle pinging every second within a 2 s
            // reorder window holds one or two. Per-vehicle memory is the
            // budget at 1M vehicles (BENCHMARKS.md, "End-to-end").
            if entry.pending.len() == entry.pending.capacity() {
                entry.pending.reserve_exact(1);
            }
            entry.pending.insert(at, sample);
        }
        let window = rules.reorder_window_ms;
        release(
            entry,
            rules,
            &self.fence_lookup,
            &mut self.drafts,
            |s, e| e.max_ts - s.pos.ts >= window || now - s.received_at >= window,
        );
        if !entry.pending.is_empty() && !entry.holding {
            entry.holding = true;
            self.holding.push(ping.vehicle_id.clone());
        }
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(ping.vehicle_id.clone());
        }

        let events_ack: Vec<Ack> = self.drafts.iter().map(|_| ack.split()).collect();
        let subject = ping.vehicle_id.clone();
        out.push(SinkRecord::Telemetry(TelemetryRecord {
            schema_version: SCHEMA_VERSION,
            enrichment: Enrichment {
                fences,
                distance_m,
                derived_speed_kmh: if ping.speed_kmh.is_none() {
                    implied_kmh
                } else {
                    None
                },
                flags,
            },
            ping,
            origin,
            h3,
            ack,
        }));
        self.wrap(&subject, events_ack.into_iter(), out);
    }

    /// Advances wall time to `now` (epoch ms): applies pings that waited
    /// `reorder_window`, and takes vehicles silent for `offline_after`
    /// offline. Events from here carry no ack: no sender waits for them.
    pub fn tick(&mut self, now: i64, out: &mut Vec<SinkRecord>) {
        self.fence_lookup.refresh();
        let window = self.rules.reorder_window_ms;
        let holding = std::mem::take(&mut self.holding);
        for vehicle in holding {
            let Some(entry) = self.vehicles.get_mut(&vehicle) else {
                continue;
            };
            release(
                entry,
                &self.rules,
                &self.fence_lookup,
                &mut self.drafts,
                |s, _| now - s.received_at >= window,
            );
            mark_dirty(entry, &vehicle, &mut self.dirty);
            if entry.pending.is_empty() {
                entry.holding = false;
                self.wrap_unacked(&vehicle, out);
            } else {
                self.wrap_unacked(&vehicle, out);
                self.holding.push(vehicle);
            }
        }
        while let Some(Reverse((deadline, _))) = self.timers.peek()
            && *deadline <= now
        {
            let Some(Reverse((_, vehicle))) = self.timers.pop() else {
                break;
            };
            let Some(entry) = self.vehicles.get_mut(&vehicle) else {
                continue;
            };
            let due = entry.last_received + self.rules.offline_after_ms;
            if due > now {
                self.timers.push(Reverse((due, vehicle)));
                continue;
            }
            entry.timer_armed = false;
            if entry.state.is_online() || !entry.pending.is_empty() {
                // Its `holding` listing, if any, goes at the next tick.
                release_all(entry, &self.rules, &self.fence_lookup, &mut self.drafts);
                let last = entry.max_ts;
                entry
                    .state
                    .go_offline(last + self.rules.offline_after_ms, last, &mut self.drafts);
                mark_dirty(entry, &vehicle, &mut self.dirty);
                self.wrap_unacked(&vehicle, out);
            }
        }
    }

    /// Applies every waiting ping (on shutdown, before the checkpoint).
    pub fn flush(&mut self, out: &mut Vec<SinkRecord>) {
        let holding = std::mem::take(&mut self.holding);
        for vehicle in holding {
            if let Some(entry) = self.vehicles.get_mut(&vehicle) {
                entry.holding = false;
                release_all(entry, &self.rules, &self.fence_lookup, &mut self.drafts);
                mark_dirty(entry, &vehicle, &mut self.dirty);
                self.wrap_unacked(&vehicle, out);
            }
        }
    }

    /// Checkpoints of the vehicles changed since the last call, as
    /// `(vehicle, JSON)`.
    pub fn take_dirty(&mut self) -> Vec<(VehicleId, String)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|v| {
                let entry = self.vehicles.get_mut(&v)?;
                entry.dirty = false;
                let json = serde_json::to_string(entry).ok()?;
                Some((v, json))
            })
            .collect()
    }

    /// Checkpoints of every vehicle, as `(vehicle, JSON)`; clears the dirty
    /// set.
    pub fn snapshot_all(&mut self) -> Vec<(VehicleId, String)> {
        self.dirty.clear();
        self.vehicles
            .iter_mut()
            .filter_map(|(v, e)| {
                e.dirty = false;
                Some((v.clone(), serde_json::to_string(e).ok()?))
            })
            .collect()
    }

    /// Forgets a vehicle (its partition moved to another member). Its timer
    /// and listings are skipped when they come up.
    pub fn remove(&mut self, vehicle: &VehicleId) {
        self.vehicles.remove(vehicle);
    }

    /// Restores a vehicle from its checkpoint. Its offline timer starts at
    /// `now`: the time fleetpipe itself was down is not held against it.
    ///
    /// # Errors
    ///
    /// A checkpoint that does not parse (the vehicle then starts fresh).
    pub fn restore(&mut self, vehicle: VehicleId, json: &str, now: i64) -> Result<(), String> {
        let mut entry: Entry = serde_json::from_str(json).map_err(|e| e.to_string())?;
        entry.last_received = entry.last_received.max(now);
        if entry.state.is_online() {
            entry.timer_armed = true;
            self.timers.push(Reverse((
                entry.last_received + self.rules.offline_after_ms,
                vehicle.clone(),
            )));
        }
        // Keep the listings of an entry this one replaces: each vehicle is
        // listed at most once, exactly when its flag says so.
        let old = self.vehicles.get(&vehicle);
        entry.holding = old.is_some_and(|e| e.holding);
        entry.dirty = old.is_some_and(|e| e.dirty);
        if !entry.pending.is_empty() && !entry.holding {
            entry.holding = true;
            self.holding.push(vehicle.clone());
        }
        self.vehicles.insert(vehicle, Box::new(entry));
        Ok(())
    }

    fn wrap_unacked(&mut self, vehicle: &VehicleId, out: &mut Vec<SinkRecord>) {
        let n = self.drafts.len();
        self.wrap(vehicle, (0..n).map(|_| Ack::none()), out);
    }

    fn wrap(
        &mut self,
        vehicle: &VehicleId,
        acks: impl Iterator<Item = Ack>,
        out: &mut Vec<SinkRecord>,
    ) {
        for (draft, ack) in self.drafts.drain(..).zip(acks) {
            out.push(SinkRecord::Event(VehicleEvent::new(
                Arc::clone(&self.source),
                draft.event_type,
                vehicle.clone(),
                &draft.key,
                draft.time_ms,
                draft.data,
                ack,
            )));
        }
    }
}

/// Applies the waiting pings from the oldest while `ready` says so.
fn release(
    entry: &mut Entry,
    rules: &Rules,
    fence_lookup: &FenceLookup,
    out: &mut Vec<Draft>,
    ready: impl Fn(&Sample, &Entry) -> bool,
) {
    let mut n = 0;
    while n < entry.pending.len() && ready(&entry.pending[n], entry) {
        n += 1;
    }
    apply_first(entry, n, rules, fence_lookup, out);
}

/// Applies every waiting ping.
fn release_all(entry: &mut Entry, rules: &Rules, fence_lookup: &FenceLookup, out: &mut Vec<Draft>) {
    let n = entry.pending.len();
    apply_first(entry, n, rules, fence_lookup, out);
}

fn apply_first(
    entry: &mut Entry,
    n: usize,
    rules: &Rules,
    fence_lookup: &FenceLookup,
    out: &mut Vec<Draft>,
) {
    if n == 0 {
        return;
    }
    let snapshot = fence_lookup.snapshot();
    for sample in entry.pending.drain(..n) {
        entry.state.apply(&sample, rules, &snapshot, out);
        if entry.recent.len() == RECENT {
            entry.recent.remove(0);
        }
        entry.recent.push(sample.key());
    }
}
