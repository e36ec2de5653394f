//! The publisher: drives a [`Fleet`] at a target rate and sends what its
//! devices publish to fleetpipe over MQTT or WebSocket, measuring
//! publish-to-acknowledgement latency.
//!
//! One driver (the future of [`Publisher::run`]) advances the fleet and
//! hands each [`SimMessage`] to the connection task of its vehicle through a
//! bounded queue; connection tasks encode, send and match acknowledgements.
//! When connections fall behind, the queues fill and the driver waits: the
//! rate is then what the acknowledgements allow.
//!
//! # Time
//!
//! Device timestamps are `start + simulated offset` and the simulation is
//! never advanced beyond the wall clock, so no ping is from the future
//! (fleetpipe refuses more than `ingest.limits.max_future` ahead). With
//! [`Rate::Realtime`] simulated time runs at wall-clock speed from now. With
//! a ping rate above what the fleet produces in real time, simulated time
//! must run faster than the clock, so the simulation starts in the past: as
//! far back as the run is estimated to need, at most `max_backdate` (keep it
//! well inside `ingest.limits.max_past`, 7 days by default). If it catches up
//! with the clock the rate drops to the fleet's real-time rate (visible as
//! `sim_time_ms` near now in [`Stats`]).
//!
//! fleetpipe also limits each vehicle to `ingest.rate_limit.pings_per_second`
//! (50) sustained: a run at N pings/s needs at least N / 50 vehicles.

mod mqtt;
mod ws;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Encoding, Fleet, SimConfig, SimError, SimMessage, Stats, StatsHandle};

/// How fast to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Simulated time runs at wall-clock speed (a live demo).
    Realtime,
    /// This many pings per second, on average (simulated time runs as fast
    /// as that needs).
    PerSecond(f64),
    /// As fast as acknowledgements allow (bounded in-flight messages per
    /// connection).
    Max,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "realtime" => Ok(Self::Realtime),
            "max" => Ok(Self::Max),
            n => match n.parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 => Ok(Self::PerSecond(r)),
                _ => Err(format!(
                    "rate {n:?}: a positive number of pings/s, \"max\" or \"realtime\""
                )),
            },
        }
    }
}

/// What counts as a message's acknowledgement over MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// The broker's QoS 1 PUBACK. With fleetpipe's embedded broker this
    /// means "in the broker's memory", **not** durable (wire contract §9);
    /// with an external broker it is that broker's receipt.
    #[default]
    Puback,
    /// fleetpipe's durable acknowledgement `{"ack":N}` on
    /// `{prefix}/{vehicle_id}/ack` (embedded broker, `ingest.mqtt.ack_topic`,
    /// anonymous mode): a message counts as acknowledged once N reaches its
    /// highest `seq`. This is publish-to-durable latency.
    AckTopic,
}

/// MQTT transport settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// Broker address, `host:port`.
    pub addr: String,
    /// QoS of the publishes: 0 or 1.
    pub qos: u8,
    /// Connections to open; vehicle `i` publishes on connection `i % connections`.
    pub connections: u32,
    /// First topic level (`ingest.mqtt.topic_prefix`).
    pub topic_prefix: String,
    /// Client ids are `{client_id_prefix}-{run}-{connection}` (unique per run).
    pub client_id_prefix: String,
    /// QoS 1 publishes on the wire without a PUBACK, per connection
    /// (fleetpipe's embedded broker allows 100).
    pub inflight: u16,
    /// Messages sent and not yet acknowledged per connection, at most (the
    /// bound that matters with [`AckMode::AckTopic`]).
    pub max_pending: u32,
    /// What acknowledges a message.
    pub ack: AckMode,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:11883".to_owned(),
            qos: 1,
            connections: 4,
            topic_prefix: "fleet".to_owned(),
            client_id_prefix: "fleetsim".to_owned(),
            inflight: 100,
            max_pending: 1_000,
            ack: AckMode::Puback,
            keep_alive: Duration::from_secs(30),
        }
    }
}

/// WebSocket transport settings. Anonymous fleetpipe (`ingest.auth.mode =
/// "none"`) binds a connection to the vehicle of its first ping, so every
/// vehicle gets its own connection, opened at its first message.
#[derive(Debug, Clone, PartialEq)]
pub struct WsConfig {
    /// `ws://host:port/v1/ws`.
    pub url: String,
    /// Most connections (= vehicles) per run; more vehicles is a config error.
    pub max_connections: u32,
    /// Frames sent and not yet answered per connection, at most.
    pub inflight: u32,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            url: "ws://127.0.0.1:8080/v1/ws".to_owned(),
            max_connections: 1_000,
            inflight: 16,
        }
    }
}

/// Where to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// MQTT 3.1.1.
    Mqtt(MqttConfig),
    /// WebSocket `GET /v1/ws`.
    Ws(WsConfig),
}

/// A publisher run.
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherConfig {
    /// The simulated fleet.
    pub sim: SimConfig,
    /// Where to send.
    pub transport: Transport,
    /// Message encoding.
    pub encoding: Encoding,
    /// How fast (changeable while running: [`Publisher::set_rate`]).
    pub rate: Rate,
    /// Stop after this long (wall time); `None` = until the ping count or
    /// cancellation.
    pub duration: Option<Duration>,
    /// Stop after exactly this many pings; `None` = no limit.
    pub max_pings: Option<u64>,
    /// How far before now the simulation may start (see the module docs).
    pub max_backdate: Duration,
    /// After the end (or cancellation), how long to wait for outstanding
    /// acknowledgements.
    pub drain_timeout: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            sim: SimConfig::default(),
            transport: Transport::Mqtt(MqttConfig::default()),
            encoding: Encoding::Json,
            rate: Rate::Realtime,
            duration: None,
            max_pings: None,
            max_backdate: Duration::from_secs(6 * 3600),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Longest `max_backdate`: a day short of fleetpipe's default `max_past`.
const MAX_BACKDATE: Duration = Duration::from_secs(6 * 86_400);
/// Queue from the driver to one connection, messages.
const CONN_QUEUE: usize = 256;
/// Driver tick: how often the rate is topped up.
const TICK: Duration = Duration::from_millis(10);
/// Most pings produced in one go at [`Rate::Max`], so the driver yields often.
const MAX_CHUNK: usize = 2_048;

/// Publishes a simulated fleet; see the module docs.
#[derive(Debug)]
pub struct Publisher {
    cfg: PublisherConfig,
    stats: StatsHandle,
    rate: RateControl,
}

/// Changes the rate of a publisher while it runs (cloneable, so a ramp can
/// keep one after [`Publisher::run`] consumed the publisher).
#[derive(Debug, Clone)]
pub struct RateControl(Arc<watch::Sender<Rate>>);

impl RateControl {
    /// Sets the rate; an invalid rate is ignored. The simulation's start
    /// time was chosen for the initial rate: raise `max_backdate` for ramps
    /// that go far above it.
    pub fn set(&self, rate: Rate) {
        if check_rate(rate).is_ok() {
            self.0.send_replace(rate);
        }
    }

    /// The rate in force.
    pub fn get(&self) -> Rate {
        *self.0.borrow()
    }
}

impl Publisher {
    /// Checks the config; nothing is connected yet.
    pub fn new(cfg: PublisherConfig) -> Result<Self, SimError> {
        cfg.sim.validate()?;
        let bad = |key: &'static str, reason: &str| {
            Err(SimError::Config {
                key,
                reason: reason.to_owned(),
            })
        };
        if cfg.max_backdate > MAX_BACKDATE {
            return bad(
                "max_backdate",
                "at most 6 days (fleetpipe refuses pings older than max_past)",
            );
        }
        check_rate(cfg.rate)?;
        match &cfg.transport {
            Transport::Mqtt(m) => {
                if m.qos > 1 {
                    return bad("qos", "0 or 1 (QoS 2 is not part of wire contract v1)");
                }
                if m.connections == 0 || m.inflight == 0 || m.max_pending == 0 {
                    return bad(
                        "connections",
                        "connections, inflight and max_pending must be positive",
                    );
                }
                if m.ack == AckMode::AckTopic && m.qos == 0 {
                    return bad(
                        "ack",
                        "the ack topic acknowledges only QoS 1 publishes with seq",
                    );
                }
                if m.topic_prefix.is_empty() || m.topic_prefix.contains(['+', '#']) {
                    return bad("topic_prefix", "must be non-empty, without + or #");
                }
                mqtt::split_addr(&m.addr).ok_or_else(|| SimError::Config {
                    key: "addr",
                    reason: format!("{:?} is not host:port", m.addr),
                })?;
            }
            Transport::Ws(w) => {
                if cfg.sim.vehicles > w.max_connections {
                    return bad(
                        "vehicles",
                        "WebSocket needs one connection per vehicle: at most max_connections vehicles",
                    );
                }
                if w.inflight == 0 {
                    return bad("inflight", "must be positive");
                }
                if !w.url.starts_with("ws://") {
                    return bad("url", "must start with ws://");
                }
            }
        }
        let (rate, _) = watch::channel(cfg.rate);
        Ok(Self {
            cfg,
            stats: StatsHandle::default(),
            rate: RateControl(Arc::new(rate)),
        })
    }

    /// A live view of the run's measurements (clone it before `run`).
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Changes the rate of a running (or not yet started) publisher, e.g.
    /// to ramp the load; an invalid rate is ignored. The simulation's start
    /// time was chosen for the initial rate: raise `max_backdate` for
    /// ramps that go far above it.
    pub fn set_rate(&self, rate: Rate) {
        self.rate.set(rate);
    }

    /// A handle that changes the rate after `run` has taken the publisher.
    pub fn rate_control(&self) -> RateControl {
        self.rate.clone()
    }

    /// Runs until the duration or ping count is reached or `cancel` fires,
    /// waits up to `drain_timeout` for outstanding acknowledgements, closes
    /// the connections and returns the final totals.
    pub async fn run(self, cancel: CancellationToken) -> Result<Stats, SimError> {
        let Publisher { cfg, stats, rate } = self;
        let start_wall_ms = wall_ms();
        let backdate = backdate_ms(&cfg);
        let mut fleet = Fleet::new(&cfg.sim, start_wall_ms - backdate)?;
        stats.start();
        stats.set_sim_time(fleet.now_ms());
        // Connection tasks stop at `stop`: on cancellation, or when the
        // driver is done and they have drained.
        let stop = cancel.child_token();
        let vehicles = fleet.len();
        let mut router = match &cfg.transport {
            Transport::Mqtt(m) => Router::Mqtt(
                mqtt::Router::start(m, &cfg.sim, cfg.encoding, &stats, &stop, cfg.drain_timeout)
                    .await?,
            ),
            Transport::Ws(w) => Router::Ws(ws::Router::new(
                w,
                cfg.encoding,
                vehicles,
                &stats,
                &stop,
                cfg.drain_timeout,
            )),
        };
        drive(
            &cfg,
            &mut fleet,
            &mut router,
            &stats,
            rate.0.subscribe(),
            &cancel,
            start_wall_ms,
        )
        .await;
        router.finish(cfg.drain_timeout, &stop).await;
        stats.finish();
        Ok(stats.snapshot())
    }
}

fn check_rate(rate: Rate) -> Result<(), SimError> {
    match rate {
        Rate::PerSecond(r) if !(r.is_finite() && r > 0.0) => Err(SimError::Config {
            key: "rate",
            reason: format!("{r} pings/s: must be positive"),
        }),
        _ => Ok(()),
    }
}

/// Where the driver sends messages: one queue per connection.
enum Router {
    Mqtt(mqtt::Router),
    Ws(ws::Router),
}

impl Router {
    /// The queue of a message's connection (opening it if needed).
    fn queue(&mut self, vehicle: u32) -> Option<&mpsc::Sender<SimMessage>> {
        match self {
            Router::Mqtt(r) => r.queue(vehicle),
            Router::Ws(r) => r.queue(vehicle),
        }
    }

    /// Closes the queues and waits for the connections to drain. A
    /// connection that cannot even reach its queue's end (broker down) is
    /// stopped after `drain`.
    async fn finish(self, drain: Duration, stop: &CancellationToken) {
        let wait = async {
            match self {
                Router::Mqtt(r) => r.finish(drain, stop).await,
                Router::Ws(r) => join_or_stop(r.into_tasks(), drain, stop).await,
            }
        };
        wait.await;
    }
}

/// The driver loop: produce pings at the rate, route them, stop at the limit.
async fn drive(
    cfg: &PublisherConfig,
    fleet: &mut Fleet,
    router: &mut Router,
    stats: &StatsHandle,
    mut rate_rx: watch::Receiver<Rate>,
    cancel: &CancellationToken,
    start_wall_ms: i64,
) {
    let t0 = Instant::now();
    let sim_start = fleet.now_ms();
    let mut produced: u64 = 0;
    // Pings owed are counted from the last rate change.
    let mut rate = *rate_rx.borrow_and_update();
    let mut base = (Instant::now(), 0u64);
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = Vec::new();
    loop {
        if cancel.is_cancelled()
            || cfg.max_pings.is_some_and(|m| produced >= m)
            || cfg.duration.is_some_and(|d| t0.elapsed() >= d)
        {
            break;
        }
        if rate_rx.has_changed().unwrap_or(false) {
            rate = *rate_rx.borrow_and_update();
            base = (Instant::now(), produced);
        }
        let elapsed_ms = i64::try_from(t0.elapsed().as_millis()).unwrap_or(i64::MAX);
        // Never simulate beyond the wall clock: no ping from the future.
        let wall_now = start_wall_ms.saturating_add(elapsed_ms);
        let remaining = cfg.max_pings.map_or(u64::MAX, |m| m - produced);
        let cap = |n: u64| usize::try_from(n.min(remaining)).unwrap_or(usize::MAX);
        buf.clear();
        let n = match rate {
            Rate::Realtime => {
                let until = sim_start.saturating_add(elapsed_ms).min(wall_now);
                fleet.advance_pings(cap(u64::MAX), until, &mut buf)
            }
            Rate::PerSecond(r) => {
                let owed = (r * base.0.elapsed().as_secs_f64()) as u64 + base.1;
                // After a stall, catch up at most a quarter second at once.
                let want = owed
                    .saturating_sub(produced)
                    .min((r / 4.0).ceil() as u64 + 1);
                fleet.advance_pings(cap(want), wall_now, &mut buf)
            }
            Rate::Max => fleet.advance_pings(cap(MAX_CHUNK as u64), wall_now, &mut buf),
        };
        // A late upload may overshoot a ping limit: cut it to the exact count.
        let n = if n as u64 > remaining {
            truncate(&mut buf, remaining);
            buf.iter().map(|m| m.pings.len()).sum()
        } else {
            n
        };
        produced += n as u64;
        stats.generated(n);
        stats.set_sim_time(fleet.now_ms());
        for msg in buf.drain(..) {
            let Some(queue) = router.queue(msg.vehicle) else {
                stats.failed(1, msg.pings.len(), 0);
                continue;
            };
            let pings = msg.pings.len();
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                sent = queue.send(msg) => if sent.is_err() {
                    // The connection task is gone (it only stops at shutdown).
                    stats.failed(1, pings, 0);
                },
            }
        }
        let full_chunk = matches!(rate, Rate::Max) && n >= MAX_CHUNK;
        if full_chunk {
            // Sending already waited for room; let the connections run.
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
                // `changed` marks the new rate seen: take it here, or the
                // check at the top of the loop would never see it.
                changed = rate_rx.changed() => if changed.is_ok() {
                    rate = *rate_rx.borrow_and_update();
                    base = (Instant::now(), produced);
                },
            }
        }
    }
}

/// Cuts `buf` to at most `limit` pings (the last message may lose its tail).
fn truncate(buf: &mut Vec<SimMessage>, limit: u64) {
    let mut left = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut keep = 0;
    for msg in buf.iter_mut() {
        if left == 0 {
            break;
        }
        msg.pings.truncate(left);
        left -= msg.pings.len();
        keep += 1;
    }
    buf.truncate(keep);
}

/// How far before now the simulation starts: enough simulated time for the
/// planned pings at the fleet's rough real-time rate (half its vehicles
/// driving at a time), plus the initial depot wait.
fn backdate_ms(cfg: &PublisherConfig) -> i64 {
    let max_ms = i64::try_from(cfg.max_backdate.as_millis()).unwrap_or(i64::MAX);
    let r = match cfg.rate {
        Rate::Realtime => return 0,
        Rate::PerSecond(r) => Some(r),
        Rate::Max => None,
    };
    let natural = f64::from(cfg.sim.vehicles) * 1_000.0 / f64::from(cfg.sim.ping_interval_ms) * 0.5;
    let planned = match (cfg.max_pings, cfg.duration, r) {
        (Some(n), _, _) => Some(n as f64),
        (None, Some(d), Some(r)) => Some(r * d.as_secs_f64()),
        _ => None,
    };
    let Some(planned) = planned else {
        return max_ms;
    };
    let wall_s = match (r, cfg.duration) {
        (Some(r), _) => planned / r,
        (None, Some(d)) => d.as_secs_f64(),
        (None, None) => 0.0,
    };
    let sim_s = planned / natural.max(1e-9) + f64::from(cfg.sim.depot_stop_s[1]) / 2.0;
    let need_ms = ((sim_s - wall_s).max(0.0) * 1_000.0).min(9e15) as i64;
    need_ms.min(max_ms)
}

/// Wall clock, epoch ms.
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A per-run nonce for client ids: the clock's nanoseconds and the pid.
fn run_nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// A message handed to a transport, awaiting its acknowledgement.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Vehicle index.
    vehicle: u32,
    /// Pings in the message.
    pings: usize,
    /// Highest `seq` in the message (for the MQTT ack topic).
    max_seq: u64,
    /// When it was written to the network (set on write).
    sent: Option<Instant>,
}

impl Pending {
    fn of(msg: &SimMessage) -> Self {
        Self {
            vehicle: msg.vehicle,
            pings: msg.pings.len(),
            max_seq: msg.pings.iter().map(|p| p.seq).max().unwrap_or(0),
            sent: None,
        }
    }
}

/// Sum of pings of pending messages.
fn pings_of<'a>(pending: impl IntoIterator<Item = &'a Pending>) -> (usize, usize) {
    pending
        .into_iter()
        .fold((0, 0), |(m, p), x| (m + 1, p + x.pings))
}

/// Shared state of a connection task.
#[derive(Debug, Clone)]
struct ConnCtx {
    encoding: Encoding,
    stats: StatsHandle,
    stop: CancellationToken,
    drain: Duration,
}

/// Waits for `tasks`; after `drain`, cancels `stop` (their shutdown
/// signal) and waits for them to finish their own drain.
async fn join_or_stop(tasks: Vec<JoinHandle<()>>, drain: Duration, stop: &CancellationToken) {
    let mut all = futures_util::future::join_all(tasks);
    tokio::select! {
        _ = &mut all => {}
        () = tokio::time::sleep(drain) => {
            stop.cancel();
            all.await;
        }
    }
}

/// After a failed connection: waits `backoff` (then doubles it, up to 5 s)
/// and returns true, or returns false at once if the run is stopping.
async fn reconnect_after(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => return false,
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse(), Ok(Rate::Max));
        assert_eq!("realtime".parse(), Ok(Rate::Realtime));
        assert_eq!("2500".parse(), Ok(Rate::PerSecond(2500.0)));
        assert!("-1".parse::<Rate>().is_err() && "NaN".parse::<Rate>().is_err());
    }

    #[test]
    fn truncate_hits_the_exact_count() {
        let msg = |n: usize| SimMessage {
            vehicle: 0,
            vehicle_id: "v".into(),
            pings: vec![
                crate::SimPing {
                    seq: 1,
                    ts_ms: 0,
                    lat: 1.0,
                    lon: 1.0,
                    alt_m: 0.0,
                    speed_kmh: 0.0,
                    heading_deg: None,
                    accuracy_m: 1.0,
                    soc_pct: 1.0,
                    battery_v: 12.0,
                    charging: false,
                    odometer_km: 1.0,
                    ignition: false,
                    dtc: None,
                };
                n
            ],
        };
        let mut buf = vec![msg(1), msg(5), msg(1)];
        truncate(&mut buf, 4);
        assert_eq!(
            buf.iter().map(|m| m.pings.len()).collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[test]
    fn backdate_covers_fast_runs_and_is_bounded() {
        let mut cfg = PublisherConfig {
            rate: Rate::PerSecond(10_000.0),
            duration: Some(Duration::from_secs(60)),
            ..PublisherConfig::default()
        };
        let b = backdate_ms(&cfg);
        assert!(b > 60_000 && b <= 6 * 3_600_000, "{b}");
        cfg.rate = Rate::Realtime;
        assert_eq!(backdate_ms(&cfg), 0);
        cfg.rate = Rate::Max;
        cfg.duration = None;
        assert_eq!(backdate_ms(&cfg), 6 * 3_600_000);
    }
}
