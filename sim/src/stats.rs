//! Live measurements of a [`Publisher`](crate::Publisher) run.
//!
//! Counters are atomics and latencies go into HdrHistograms behind a mutex,
//! so a [`StatsHandle`] can be cloned to another task and read while the run
//! goes on: [`StatsHandle::snapshot`] for totals (e.g. a progress line, or
//! throughput sampled over time by differencing two snapshots) and
//! [`StatsHandle::take_window`] for the latency of the last interval only
//! (e.g. per step of a rate ramp).
//!
//! Latency is measured per message, from the moment the transport writes it
//! (MQTT: rumqttc's outgoing-publish event; WebSocket: the frame written) to
//! its acknowledgement (see [`AckMode`](crate::AckMode) for what that is).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Totals of a run so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Wall time since the run started.
    pub elapsed: Duration,
    /// Simulated time reached, epoch ms (device timestamps are at most this).
    pub sim_time_ms: i64,
    /// Pings the fleet produced and handed to the transport.
    pub generated_pings: u64,
    /// Messages written to the network.
    pub sent_messages: u64,
    /// Pings in the messages written.
    pub sent_pings: u64,
    /// Messages acknowledged (MQTT QoS 1 only; never for QoS 0).
    pub acked_messages: u64,
    /// Pings in acknowledged messages, less those refused one by one.
    pub acked_pings: u64,
    /// Pings fleetpipe refused individually (WebSocket answers list them).
    pub rejected_pings: u64,
    /// Messages that will not be acknowledged: error answers, connection
    /// lost before the acknowledgement, or still unacknowledged when the run
    /// ended.
    pub failed_messages: u64,
    /// Pings in failed messages.
    pub failed_pings: u64,
    /// Connection attempts that failed or connections that broke.
    pub connection_errors: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Publish-to-acknowledgement latency of every acknowledged message.
    pub latency: Latency,
    /// Whether the run has ended.
    pub finished: bool,
}

impl Stats {
    /// Messages written and not yet acknowledged or failed.
    pub fn in_flight_messages(&self) -> u64 {
        self.sent_messages
            .saturating_sub(self.acked_messages)
            .saturating_sub(self.failed_messages)
    }
}

/// A latency distribution summary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = Duration::from_micros;
        Self {
            count: h.len(),
            mean: us(h.mean() as u64),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// A cloneable, thread-safe view of a run's measurements.
#[derive(Debug, Clone, Default)]
pub struct StatsHandle(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    started: Mutex<Option<Instant>>,
    sim_time_ms: AtomicI64,
    generated_pings: AtomicU64,
    sent_messages: AtomicU64,
    sent_pings: AtomicU64,
    acked_messages: AtomicU64,
    acked_pings: AtomicU64,
    rejected_pings: AtomicU64,
    failed_messages: AtomicU64,
    failed_pings: AtomicU64,
    connection_errors: AtomicU64,
    open_connections: AtomicU64,
    finished: AtomicBool,
    hist: Mutex<Hists>,
}

/// Microsecond histograms, 1 µs to 1 h, 3 significant digits.
#[derive(Debug)]
struct Hists {
    total: Option<Histogram<u64>>,
    window: Option<Histogram<u64>>,
}

impl Default for Hists {
    fn default() -> Self {
        let new = || Histogram::new_with_bounds(1, 3_600_000_000, 3).ok();
        Self {
            total: new(),
            window: new(),
        }
    }
}

impl StatsHandle {
    /// Totals so far.
    pub fn snapshot(&self) -> Stats {
        let s = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let latency = self
            .hists()
            .total
            .as_ref()
            .map(Latency::of)
            .unwrap_or_default();
        let started = *s.started.lock().unwrap_or_else(|e| e.into_inner());
        Stats {
            elapsed: started.map(|t| t.elapsed()).unwrap_or_default(),
            sim_time_ms: s.sim_time_ms.load(Ordering::Relaxed),
            generated_pings: get(&s.generated_pings),
            sent_messages: get(&s.sent_messages),
            sent_pings: get(&s.sent_pings),
            acked_messages: get(&s.acked_messages),
            acked_pings: get(&s.acked_pings),
            rejected_pings: get(&s.rejected_pings),
            failed_messages: get(&s.failed_messages),
            failed_pings: get(&s.failed_pings),
            connection_errors: get(&s.connection_errors),
            open_connections: get(&s.open_connections),
            latency,
            finished: s.finished.load(Ordering::Relaxed),
        }
    }

    /// Latency of the messages acknowledged since the previous call (or
    /// the start), and a fresh window.
    pub fn take_window(&self) -> Latency {
        let mut h = self.hists();
        let out = h.window.as_ref().map(Latency::of).unwrap_or_default();
        if let Some(w) = h.window.as_mut() {
            w.reset();
        }
        out
    }

    /// Like [`take_window`](Self::take_window) but the full histogram (µs),
    /// for callers that merge or plot distributions.
    pub fn take_window_histogram(&self) -> Option<Histogram<u64>> {
        let mut h = self.hists();
        let out = h.window.clone();
        if let Some(w) = h.window.as_mut() {
            w.reset();
        }
        out
    }

    fn hists(&self) -> MutexGuard<'_, Hists> {
        // A panic while holding the lock cannot leave a histogram invalid.
        self.0.hist.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn start(&self) {
        *self.0.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    pub(crate) fn finish(&self) {
        self.0.finished.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_sim_time(&self, ms: i64) {
        self.0.sim_time_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn generated(&self, pings: usize) {
        self.0
            .generated_pings
            .fetch_add(pings as u64, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, pings: usize) {
        self.0.sent_messages.fetch_add(1, Ordering::Relaxed);
        self.0.sent_pings.fetch_add(pings as u64, Ordering::Relaxed);
    }

    /// A message acknowledged after `latency`, `rejected` of its `pings` refused.
    pub(crate) fn acked(&self, pings: usize, rejected: usize, latency: Duration) {
        let s = &self.0;
        s.acked_messages.fetch_add(1, Ordering::Relaxed);
        s.acked_pings
            .fetch_add(pings.saturating_sub(rejected) as u64, Ordering::Relaxed);
        s.rejected_pings
            .fetch_add(rejected as u64, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut h = self.hists();
        let Hists { total, window } = &mut *h;
        for hist in [total, window].into_iter().flatten() {
            hist.saturating_record(us);
        }
    }

    /// `messages` messages with `pings` pings failed, `rejected` of them
    /// refused individually.
    pub(crate) fn failed(&self, messages: usize, pings: usize, rejected: usize) {
        let s = &self.0;
        s.failed_messages
            .fetch_add(messages as u64, Ordering::Relaxed);
        s.failed_pings.fetch_add(pings as u64, Ordering::Relaxed);
        s.rejected_pings
            .fetch_add(rejected as u64, Ordering::Relaxed);
    }

    pub(crate) fn connection_error(&self) {
        self.0.connection_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.0.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        // Saturating: a close is only counted after an open, but never wrap.
        let _ = self
            .0
            .open_connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }
}
