//! The live feed: positions and events as they happen, over WebSocket
//! (`GET /v1/feed`) and Server-Sent Events (`GET /v1/feed/sse`) on the
//! query API's listener, filtered on the server, scoped like the API,
//! resumable (docs/feed.md).
//!
//! The feed is fed like a sink: [`Feed::intake`] gives the fan-out a queue
//! and a task that takes each enriched record, hands it to the feed's
//! in-memory structures and acknowledges it at once. It promises nothing
//! durable and never holds the pipeline up: what it does with a record is
//! synchronous, bounded work under one lock (no I/O, no waiting on a
//! client):
//!
//! - the **latest-position table** (one entry per vehicle, at most
//!   `api.feed.max_vehicles`), that snapshots are made of;
//! - the **resume window** ([`ring`]: the recent messages, bounded by
//!   count and age);
//! - each client's **queue** ([`queue`]: positions coalesced per vehicle,
//!   events bounded; an overflow disconnects the client with what it
//!   missed and where to resume).
//!
//! The pure cores ([`filter`], [`queue`], [`ring`]) are tested without
//! tokio; `session` (the per-client loop) and `http` (the two endpoints)
//! are the thin async shells.

pub mod config;
pub mod filter;
pub(crate) mod http;
pub mod queue;
pub mod ring;
pub(crate) mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fleetpipe_model::{SinkRecord, TelemetryRecord, VehicleEvent};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use config::FeedConfig;
use filter::{EventFacts, Grant, PositionFacts, Spot, Subscription};
use queue::{ClientQueue, Offer, Overflow, Queued};
use ring::{Gap, ResumeToken, Ring};

use crate::metrics;

/// Positions per snapshot message.
const SNAPSHOT_CHUNK: usize = 500;

/// The live feed: cheap to clone, one per process.
#[derive(Debug, Clone)]
pub struct Feed {
    hub: Arc<Hub>,
}

#[derive(Debug)]
struct Hub {
    config: FeedConfig,
    epoch: u64,
    state: Mutex<HubState>,
    queued_bytes: AtomicIsize,
    queued_messages: AtomicIsize,
    shutdown: CancellationToken,
}

#[derive(Debug)]
struct HubState {
    ring: Ring<Arc<Item>>,
    latest: HashMap<Arc<str>, Latest>,
    clients: HashMap<u64, Arc<Client>>,
    next_client: u64,
}

/// A vehicle's latest position: what the filters read and its JSON.
#[derive(Debug)]
struct Latest {
    facts: PositionFacts,
    view: Arc<str>,
}

/// A vehicle's latest position as the database holds it
/// (`vehicle_latest`), to seed the latest-position table with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KnownPosition {
    pub(crate) vehicle_id: String,
    /// Device time, ms since the epoch.
    pub(crate) ts_ms: i64,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    pub(crate) speed_kmh: Option<f64>,
    pub(crate) heading_deg: Option<f64>,
    pub(crate) soc_pct: Option<f64>,
    pub(crate) charging: Option<bool>,
    pub(crate) ignition: Option<bool>,
    pub(crate) fences: Vec<String>,
}

/// A message of the stream, as the window keeps it.
#[derive(Debug)]
enum Item {
    Position {
        facts: PositionFacts,
        message: Queued,
    },
    Event {
        facts: EventFacts,
        message: Queued,
    },
}

#[derive(Debug)]
struct Client {
    state: Mutex<ClientState>,
    notify: Notify,
}

#[derive(Debug)]
struct ClientState {
    grant: Grant,
    subscription: Option<Subscription>,
    queue: ClientQueue,
    /// Resuming: the sequence number of the last message of the resume
    /// window taken into the queue. The window is replayed a queue's worth
    /// at a time as the client takes it (a client that overflowed missed
    /// more than its queue holds), and live messages are left to the
    /// window meanwhile; `None` once caught up.
    replay: Option<u64>,
}

/// A position as clients get it.
#[derive(Debug, Serialize)]
struct PositionView<'a> {
    vehicle_id: &'a str,
    ts: String,
    lat: f64,
    lon: f64,
    speed_kmh: Option<f64>,
    heading_deg: Option<f64>,
    soc_pct: Option<f64>,
    charging: Option<bool>,
    ignition: Option<bool>,
    fences: Vec<&'a str>,
}

/// An event as clients get it (the query API's shape).
#[derive(Debug, Serialize)]
struct EventView<'a> {
    id: &'a str,
    vehicle_id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    time: String,
    data: &'a serde_json::value::RawValue,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    filter::ms(time::OffsetDateTime::now_utc())
}

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A JSON string literal.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// What a subscribe starts with, before the queue's messages.
#[derive(Debug)]
pub(crate) struct Start {
    /// Messages to send first: (kind, resume token, JSON).
    pub(crate) messages: Vec<(&'static str, String, String)>,
}

/// What a client's queue gave.
#[derive(Debug)]
pub(crate) enum Popped {
    Message(Queued),
    Overflow(Overflow),
    Empty,
}

/// A registered client; unregisters itself when dropped.
#[derive(Debug)]
pub(crate) struct ClientHandle {
    hub: Arc<Hub>,
    id: u64,
    client: Arc<Client>,
    transport: &'static str,
}

impl Feed {
    /// A feed with `config`'s bounds; its streams end when `shutdown` is
    /// cancelled.
    pub fn new(config: FeedConfig, shutdown: CancellationToken) -> Self {
        let age = i64::try_from(config.resume_max_age.as_millis()).unwrap_or(i64::MAX);
        let state = HubState {
            ring: Ring::new(config.resume_max_messages, age),
            latest: HashMap::new(),
            clients: HashMap::new(),
            next_client: 0,
        };
        Self {
            hub: Arc::new(Hub {
                config,
                epoch: rand::random(),
                state: Mutex::new(state),
                queued_bytes: AtomicIsize::new(0),
                queued_messages: AtomicIsize::new(0),
                shutdown,
            }),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &FeedConfig {
        &self.hub.config
    }

    /// The feed's input for the fan-out: a queue of `capacity` records and
    /// the task that drains it. The task takes each record into the feed
    /// and acknowledges it at once (the feed stores nothing durable); it
    /// ends when the queue is closed and drained.
    pub fn intake(
        &self,
        capacity: usize,
    ) -> (
        mpsc::Sender<SinkRecord>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, mut rx) = mpsc::channel::<SinkRecord>(capacity.max(1));
        let feed = self.clone();
        let run = async move {
            while let Some(record) = rx.recv().await {
                feed.publish(&record);
                record.into_ack().delivered();
            }
        };
        (tx, run)
    }

    /// Takes one record in: the table, the window, every matching client.
    pub fn publish(&self, record: &SinkRecord) {
        match record {
            SinkRecord::Telemetry(r) => self.hub.position(r),
            SinkRecord::Event(e) => self.hub.event(e),
            SinkRecord::DeadLetter(_) => {}
        }
    }

    /// Puts `known` positions into the latest-position table (what
    /// snapshots are made of), without streaming them: a vehicle the table
    /// already holds at the same or a newer time keeps its position, and
    /// the table's bound (`api.feed.max_vehicles`) holds. Returns how many
    /// were taken.
    pub(crate) fn seed(&self, known: &[KnownPosition]) -> usize {
        let hub = &self.hub;
        let mut st = lock(&hub.state);
        let mut taken = 0;
        for p in known {
            let vehicle: Arc<str> = Arc::from(p.vehicle_id.as_str());
            let held = st.latest.get(&vehicle).map(|l| l.facts.ts_ms);
            if held.is_some_and(|ts| ts >= p.ts_ms)
                || (held.is_none() && st.latest.len() >= hub.config.max_vehicles)
            {
                continue;
            }
            let fences: Vec<Arc<str>> = p.fences.iter().map(|f| Arc::from(f.as_str())).collect();
            let view = serde_json::to_string(&PositionView {
                vehicle_id: &vehicle,
                ts: rfc3339_ms(p.ts_ms),
                lat: p.lat,
                lon: p.lon,
                speed_kmh: p.speed_kmh,
                heading_deg: p.heading_deg,
                soc_pct: p.soc_pct,
                charging: p.charging,
                ignition: p.ignition,
                fences: p.fences.iter().map(String::as_str).collect(),
            })
            .unwrap_or_default();
            let facts = PositionFacts {
                vehicle: Arc::clone(&vehicle),
                ts_ms: p.ts_ms,
                spot: Spot::new(p.lat, p.lon),
                fences,
            };
            st.latest.insert(
                vehicle,
                Latest {
                    facts,
                    view: view.into(),
                },
            );
            taken += 1;
        }
        hub.gauges(&st);
        taken
    }

    /// Registers a client of `transport` (`ws`, `sse`), or `None` at
    /// `api.feed.max_clients`.
    pub(crate) fn connect(&self, grant: Grant, transport: &'static str) -> Option<ClientHandle> {
        let hub = &self.hub;
        let mut st = lock(&hub.state);
        if st.clients.len() >= hub.config.max_clients {
            return None;
        }
        st.next_client += 1;
        let id = st.next_client;
        let client = Arc::new(Client {
            state: Mutex::new(ClientState {
                grant,
                subscription: None,
                queue: ClientQueue::new(hub.config.client_max_events, hub.config.client_max_bytes),
                replay: None,
            }),
            notify: Notify::new(),
        });
        st.clients.insert(id, Arc::clone(&client));
        metrics::feed_clients(transport).increment(1.0);
        Some(ClientHandle {
            hub: Arc::clone(hub),
            id,
            client,
            transport,
        })
    }
}

impl Hub {
    fn token(&self, seq: u64) -> String {
        ResumeToken {
            epoch: self.epoch,
            seq,
        }
        .to_string()
    }

    fn position(&self, r: &TelemetryRecord) {
        let ping = &r.ping;
        let vehicle: Arc<str> = Arc::from(ping.vehicle_id.as_str());
        let mut st = lock(&self.state);
        // Positions only move forward in device time (as vehicle_latest).
        if st
            .latest
            .get(&vehicle)
            .is_some_and(|l| l.facts.ts_ms > ping.ts_ms)
        {
            metrics::feed_records("late_position").increment(1);
            return;
        }
        metrics::feed_records("position").increment(1);
        let facts = PositionFacts {
            vehicle: Arc::clone(&vehicle),
            ts_ms: ping.ts_ms,
            spot: Spot::new(ping.lat, ping.lon),
            fences: r.enrichment.fences.clone(),
        };
        let view = serde_json::to_string(&PositionView {
            vehicle_id: &vehicle,
            ts: rfc3339_ms(ping.ts_ms),
            lat: ping.lat,
            lon: ping.lon,
            speed_kmh: ping.speed_kmh,
            heading_deg: ping.heading_deg,
            soc_pct: ping.soc_pct,
            charging: ping.charging,
            ignition: ping.ignition,
            fences: r.enrichment.fences.iter().map(|f| &**f).collect(),
        })
        .unwrap_or_default();
        let seq = st.ring.next_seq();
        let json = format!(
            "{{\"type\":\"position\",\"resume\":\"{}\",{}",
            self.token(seq),
            view.get(1..).unwrap_or_default()
        );
        let message = Queued {
            seq,
            kind: "position",
            json: json.into(),
        };
        if st.latest.len() < self.config.max_vehicles || st.latest.contains_key(&vehicle) {
            st.latest.insert(
                Arc::clone(&vehicle),
                Latest {
                    facts: facts.clone(),
                    view: view.into(),
                },
            );
        }
        let item = Arc::new(Item::Position { facts, message });
        self.deliver(&st, &item);
        st.ring.push(seq, now_ms(), item);
        self.gauges(&st);
    }

    fn event(&self, e: &VehicleEvent) {
        let vehicle: Arc<str> = Arc::from(e.subject.as_str());
        let fence_id = serde_json::from_str::<serde_json::Value>(e.data.get())
            .ok()
            .and_then(|d| d.get("fence_id")?.as_str().map(str::to_owned));
        let mut st = lock(&self.state);
        metrics::feed_records("event").increment(1);
        let facts = EventFacts {
            vehicle: Arc::clone(&vehicle),
            event_type: e.event_type,
            time_ms: e.time_ms,
            fence_id,
            spot: st.latest.get(&vehicle).map(|l| l.facts.spot.clone()),
        };
        let view = serde_json::to_string(&EventView {
            id: &e.id,
            vehicle_id: &vehicle,
            event_type: e.event_type.as_str(),
            time: rfc3339_ms(e.time_ms),
            data: &e.data,
        })
        .unwrap_or_default();
        let seq = st.ring.next_seq();
        let json = format!(
            "{{\"type\":\"event\",\"resume\":\"{}\",\"event\":{view}}}",
            self.token(seq)
        );
        let message = Queued {
            seq,
            kind: "event",
            json: json.into(),
        };
        let item = Arc::new(Item::Event { facts, message });
        self.deliver(&st, &item);
        st.ring.push(seq, now_ms(), item);
        self.gauges(&st);
    }

    fn gauges(&self, st: &HubState) {
        metrics::feed_vehicles().set(st.latest.len() as f64);
        metrics::feed_window_messages().set(st.ring.len() as f64);
    }

    fn deliver(&self, st: &HubState, item: &Item) {
        for client in st.clients.values() {
            let mut c = lock(&client.state);
            if c.replay.is_some() {
                // Replaying: the window has this one too, in order.
                client.notify.notify_one();
                continue;
            }
            if self.offer(&mut c, item) {
                client.notify.notify_one();
            }
        }
    }

    /// Offers `item` to a client if it may see it and asked for it;
    /// whether it was queued (or overflowed the queue).
    fn offer(&self, c: &mut ClientState, item: &Item) -> bool {
        let Some(sub) = &c.subscription else {
            return false;
        };
        let budget = usize::try_from(
            (self.config.max_total_bytes as isize)
                .saturating_sub(self.queued_bytes.load(Ordering::Relaxed)),
        )
        .unwrap_or(0);
        let before = c.queue.len() as isize;
        let offer = match item {
            Item::Position { facts, message } => {
                if !(c.grant.position(facts) && sub.position(facts)) {
                    return false;
                }
                c.queue.position(&facts.vehicle, message.clone(), budget)
            }
            Item::Event { facts, message } => {
                if !(c.grant.event(facts) && sub.event(facts)) {
                    return false;
                }
                c.queue.event(message.clone(), budget)
            }
        };
        let bytes = match offer {
            Offer::Queued(d) => d,
            Offer::Coalesced(d) => {
                metrics::feed_coalesced().increment(1);
                d
            }
            Offer::Overflowed(d) => {
                metrics::feed_dropped(match item {
                    Item::Position { .. } => "position",
                    Item::Event { .. } => "event",
                })
                .increment(1);
                d
            }
        };
        self.account(bytes, c.queue.len() as isize - before);
        true
    }

    fn account(&self, bytes: isize, messages: isize) {
        let b = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let m = self.queued_messages.fetch_add(messages, Ordering::Relaxed) + messages;
        metrics::feed_queued_bytes().set(b as f64);
        metrics::feed_queued_messages().set(m as f64);
    }
}

impl ClientHandle {
    /// Sets the client's subscription. With `resume`, the messages after it
    /// are queued if the window holds them all; otherwise (or without
    /// `resume`) the start is a snapshot, after a gap message when a
    /// resume was asked for.
    pub(crate) fn subscribe(&self, subscription: Subscription, resume: Option<&str>) -> Start {
        let hub = &self.hub;
        let mut st = lock(&hub.state);
        st.ring.expire(now_ms());
        let mut c = lock(&self.client.state);
        let before = c.queue.len() as isize;
        c.subscription = Some(subscription);
        let last = st.ring.last();
        let mut messages = Vec::new();
        if let Some(resume) = resume {
            let outcome = match ResumeToken::parse(resume) {
                None => Err(("invalid", "the resume token is not one this feed hands out")),
                Some(t) if t.epoch != hub.epoch => Err((
                    "foreign",
                    "the resume token is of another fleetpipe process (restarted, or another node)",
                )),
                Some(t) => match st.ring.after(t.seq) {
                    Ok(_) => {
                        let freed = c.queue.restart(t.seq);
                        hub.account(freed, -before);
                        // Taken from the window as the client reads (pop).
                        c.replay = Some(t.seq);
                        Ok(t.seq)
                    }
                    Err(Gap::Foreign) => Err((
                        "foreign",
                        "the resume token points past this process's newest message",
                    )),
                    Err(Gap::TooOld) => Err((
                        "too_old",
                        "the resume token is older than the resume window (api.feed.resume_max_messages, resume_max_age)",
                    )),
                },
            };
            match outcome {
                Ok(seq) => {
                    metrics::feed_resumes("resumed").increment(1);
                    let token = hub.token(seq);
                    let json = format!("{{\"type\":\"resumed\",\"resume\":{}}}", quoted(&token));
                    messages.push(("resumed", token, json));
                    drop(c);
                    self.client.notify.notify_one();
                    return Start { messages };
                }
                Err((reason, detail)) => {
                    metrics::feed_resumes("gap").increment(1);
                    let token = hub.token(last);
                    let json = format!(
                        "{{\"type\":\"gap\",\"resume\":{},\"reason\":\"{reason}\",\"detail\":{}}}",
                        quoted(&token),
                        quoted(detail)
                    );
                    messages.push(("gap", token, json));
                }
            }
        }
        let freed = c.queue.restart(last);
        hub.account(freed, -before);
        c.replay = None;
        let sub = c.subscription.as_ref();
        let mut views: Vec<(&Arc<str>, &Latest)> = st
            .latest
            .iter()
            .filter(|(_, l)| {
                sub.is_some_and(|s| s.position(&l.facts)) && c.grant.position(&l.facts)
            })
            .collect();
        views.sort_by(|a, b| a.0.cmp(b.0));
        let token = hub.token(last);
        let chunks: Vec<_> = views.chunks(SNAPSHOT_CHUNK).collect();
        let count = chunks.len().max(1);
        for i in 0..count {
            let positions: Vec<&str> = chunks
                .get(i)
                .map(|c| c.iter().map(|(_, l)| &*l.view).collect())
                .unwrap_or_default();
            let json = format!(
                "{{\"type\":\"snapshot\",\"resume\":{},\"positions\":[{}],\"more\":{}}}",
                quoted(&token),
                positions.join(","),
                i + 1 < count
            );
            messages.push(("snapshot", token.clone(), json));
        }
        Start { messages }
    }

    /// The next message for the client, in sequence order.
    pub(crate) fn pop(&self) -> Popped {
        let mut c = lock(&self.client.state);
        if let Some(o) = c.queue.overflow() {
            return Popped::Overflow(o);
        }
        if c.queue.is_empty() && c.replay.is_some() {
            // The hub's lock first, as deliver takes them.
            drop(c);
            let st = lock(&self.hub.state);
            c = lock(&self.client.state);
            self.refill(&st, &mut c);
            if let Some(o) = c.queue.overflow() {
                return Popped::Overflow(o);
            }
        }
        match c.queue.pop() {
            Some((m, bytes)) => {
                self.hub.account(bytes, -1);
                Popped::Message(m)
            }
            None => Popped::Empty,
        }
    }

    /// Resuming: takes the next messages of the window into the empty
    /// queue, up to half its bounds (so they coalesce and never overflow
    /// it), or all the way to the newest, which ends the replay (under the
    /// hub's lock: no live message is missed or sent twice).
    fn refill(&self, st: &HubState, c: &mut ClientState) {
        let Some(mut cursor) = c.replay else {
            return;
        };
        let events = (self.hub.config.client_max_events / 2).max(1);
        let bytes = self.hub.config.client_max_bytes / 2;
        let Ok(items) = st.ring.after_seq(cursor) else {
            // The window moved past the replay: the client is too slow to
            // catch up; told so like an overflow, from what it has.
            c.replay = None;
            c.queue.fell_behind();
            return;
        };
        for (seq, item) in items {
            if c.queue.len() >= events || c.queue.bytes() >= bytes {
                c.replay = Some(cursor);
                return;
            }
            cursor = seq;
            self.hub.offer(c, item);
        }
        c.replay = None;
    }

    /// Resolves when a message may be waiting.
    pub(crate) async fn notified(&self) {
        self.client.notify.notified().await;
    }

    /// The resume token of `seq`.
    pub(crate) fn token(&self, seq: u64) -> String {
        self.hub.token(seq)
    }

    /// The resume token of the last message handed to this client.
    pub(crate) fn last_token(&self) -> String {
        self.hub.token(lock(&self.client.state).queue.last_seq())
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        let mut st = lock(&self.hub.state);
        st.clients.remove(&self.id);
        drop(st);
        let c = lock(&self.client.state);
        self.hub
            .account(-(c.queue.bytes() as isize), -(c.queue.len() as isize));
        metrics::feed_clients(self.transport).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use fleetpipe_model::{Origin, Ping, VehicleId};

    fn telemetry(vehicle: &str, ts_ms: i64, lat: f64, lon: f64) -> SinkRecord {
        let ping = Ping::new(VehicleId::parse(vehicle).unwrap(), ts_ms, lat, lon);
        SinkRecord::Telemetry(TelemetryRecord::unenriched(fleetpipe_model::Accepted {
            ping,
            origin: Origin {
                gateway: fleetpipe_model::Gateway::Http,
                client: None,
                received_at: 0,
            },
            ack: fleetpipe_model::Ack::none(),
        }))
    }

    fn drain(h: &ClientHandle) -> Vec<String> {
        let mut out = Vec::new();
        while let Popped::Message(m) = h.pop() {
            out.push(m.json.to_string());
        }
        out
    }

    #[test]
    fn snapshot_then_changes_then_resume_from_any_message() {
        let feed = Feed::new(FeedConfig::default(), CancellationToken::new());
        feed.publish(&telemetry("a", 1000, 52.5, 13.4));
        feed.publish(&telemetry("b", 1000, 10.0, 10.0));
        let h = feed.connect(Grant::Fleet, "ws").unwrap();
        let sub = Subscription::parse(
            &serde_json::from_str(r#"{"bbox":[13,52,14,53]}"#).unwrap(),
            10,
        )
        .unwrap();
        let start = h.subscribe(sub.clone(), None);
        assert_eq!(start.messages.len(), 1);
        assert!(start.messages[0].2.contains("\"vehicle_id\":\"a\""));
        assert!(!start.messages[0].2.contains("\"b\""));
        feed.publish(&telemetry("a", 2000, 52.6, 13.4));
        feed.publish(&telemetry("b", 2000, 10.0, 10.0));
        let mut got = drain(&h);
        feed.publish(&telemetry("a", 1500, 52.6, 13.4)); // late: skipped
        feed.publish(&telemetry("a", 3000, 52.7, 13.4));
        got.extend(drain(&h));
        assert_eq!(got.len(), 2, "{got:?}");
        // Not drained in between, positions of a vehicle coalesce.
        feed.publish(&telemetry("a", 4000, 52.7, 13.4));
        feed.publish(&telemetry("a", 5000, 52.7, 13.4));
        let newest = drain(&h);
        assert_eq!(newest.len(), 1);
        assert!(newest[0].contains("1970-01-01T00:00:05Z"), "{newest:?}");
        // A second client resuming from the first change gets the second.
        let first: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
        let h2 = feed.connect(Grant::Fleet, "ws").unwrap();
        let start = h2.subscribe(sub.clone(), first["resume"].as_str());
        assert_eq!(start.messages[0].0, "resumed");
        // (the replay coalesces as well: the newest position of `a`).
        assert_eq!(drain(&h2), newest);
        // A foreign epoch is a gap and a snapshot.
        let h3 = feed.connect(Grant::Fleet, "sse").unwrap();
        let start = h3.subscribe(sub, Some("0000000000000001-1"));
        let kinds: Vec<_> = start.messages.iter().map(|m| m.0).collect();
        assert_eq!(kinds, ["gap", "snapshot"]);
    }

    /// A client that overflowed missed more than its queue holds; its
    /// resume is replayed a batch at a time as it reads, so it gets every
    /// message it missed once, then the live ones, in order.
    #[test]
    fn a_resume_after_an_overflow_replays_more_than_a_queue_holds() {
        let config = FeedConfig {
            client_max_bytes: 1024,
            max_total_bytes: 1024,
            ..FeedConfig::default()
        };
        let feed = Feed::new(config, CancellationToken::new());
        let slow = feed.connect(Grant::Fleet, "ws").unwrap();
        slow.subscribe(Subscription::everything(), None);
        let mut sent = Vec::new();
        for i in 0..20 {
            let vehicle = format!("v-{i:02}");
            feed.publish(&telemetry(&vehicle, 1000, 1.0, 1.0));
            sent.push(vehicle);
        }
        let Popped::Overflow(o) = slow.pop() else {
            panic!("no overflow")
        };
        assert_eq!(o.resume_seq, 0);
        drop(slow);
        let h = feed.connect(Grant::Fleet, "ws").unwrap();
        let start = h.subscribe(
            Subscription::everything(),
            Some(&feed.hub.token(o.resume_seq)),
        );
        assert_eq!(start.messages[0].0, "resumed");
        // Half read, then a live one arrives: after the rest, not before.
        let mut got = Vec::new();
        for _ in 0..10 {
            let Popped::Message(m) = h.pop() else {
                panic!("replay stopped early")
            };
            got.push(m.json.to_string());
        }
        feed.publish(&telemetry("live", 1000, 1.0, 1.0));
        sent.push("live".to_owned());
        got.extend(drain(&h));
        let vehicles: Vec<String> = got
            .iter()
            .map(|j| {
                let v: serde_json::Value = serde_json::from_str(j).unwrap();
                v["vehicle_id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(vehicles, sent);
        assert!(h.client.state.lock().unwrap().replay.is_none());
    }

    fn known(vehicle: &str, ts_ms: i64) -> KnownPosition {
        KnownPosition {
            vehicle_id: vehicle.to_owned(),
            ts_ms,
            lat: 52.5,
            lon: 13.4,
            speed_kmh: Some(30.0),
            heading_deg: None,
            soc_pct: Some(80.0),
            charging: Some(false),
            ignition: None,
            fences: vec!["depot".to_owned()],
        }
    }

    /// Seeded positions are in snapshots, not streamed, never replace a
    /// newer position, and respect the table's bound.
    #[test]
    fn a_seed_fills_the_snapshot_without_moving_a_position_back() {
        let config = FeedConfig {
            max_vehicles: 3,
            ..FeedConfig::default()
        };
        let feed = Feed::new(config, CancellationToken::new());
        let live = feed.connect(Grant::Fleet, "ws").unwrap();
        live.subscribe(Subscription::everything(), None);
        feed.publish(&telemetry("a", 5000, 1.0, 1.0));
        drain(&live);
        let taken = feed.seed(&[
            known("a", 4000),
            known("b", 4000),
            known("c", 1),
            known("d", 1),
        ]);
        assert_eq!(taken, 2, "a is newer in the table, d beyond max_vehicles");
        assert!(drain(&live).is_empty(), "a seed is not streamed");
        let h = feed.connect(Grant::Fleet, "ws").unwrap();
        let start = h.subscribe(Subscription::everything(), None);
        let snapshot: serde_json::Value = serde_json::from_str(&start.messages[0].2).unwrap();
        let positions = snapshot["positions"].as_array().unwrap();
        let got: Vec<(&str, &str)> = positions
            .iter()
            .map(|p| (p["vehicle_id"].as_str().unwrap(), p["ts"].as_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "1970-01-01T00:00:05Z"),
                ("b", "1970-01-01T00:00:04Z"),
                ("c", "1970-01-01T00:00:00.001Z")
            ]
        );
        assert_eq!(positions[1]["fences"], serde_json::json!(["depot"]));
        assert_eq!(positions[1]["soc_pct"], 80.0);
        // A live position older than the seeded one is late.
        feed.publish(&telemetry("b", 3000, 1.0, 1.0));
        assert!(drain(&h).is_empty());
    }

    #[test]
    fn clients_are_bounded_and_unregister_on_drop() {
        let config = FeedConfig {
            max_clients: 1,
            ..FeedConfig::default()
        };
        let feed = Feed::new(config, CancellationToken::new());
        let h = feed.connect(Grant::Fleet, "ws").unwrap();
        assert!(feed.connect(Grant::Fleet, "ws").is_none());
        h.subscribe(Subscription::everything(), None);
        feed.publish(&telemetry("a", 1000, 1.0, 1.0));
        assert!(feed.hub.queued_bytes.load(Ordering::Relaxed) > 0);
        drop(h);
        assert_eq!(feed.hub.queued_bytes.load(Ordering::Relaxed), 0);
        assert!(feed.connect(Grant::Fleet, "ws").is_some());
    }
}
