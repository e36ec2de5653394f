//! The numbers of a run: pings matched with their deliveries, signed
//! latency percentiles, and the report (`summary.md`, `result.json`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::tiles::Tiles;

/// A ping fleetpipe acknowledged as durable, µs since the run's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Acked {
    pub vehicle: u32,
    /// Device time, epoch ms: with the vehicle, what identifies the ping
    /// in the feed (whose messages carry no `seq`).
    pub ts_ms: i64,
    pub lon: f64,
    pub lat: f64,
    /// The frame was written to the socket.
    pub sent_us: i64,
    /// Its answer was read.
    pub acked_us: i64,
}

/// A position a client read, µs since the run's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub vehicle: u32,
    pub ts_ms: i64,
    pub at_us: i64,
}

/// A distribution of signed values (µs), nearest-rank percentiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signed(Vec<i64>);

impl Signed {
    pub fn new(mut values: Vec<i64>) -> Self {
        values.sort_unstable();
        Self(values)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The smallest value with at least `q` of all at or below it.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = (q.clamp(0.0, 1.0) * self.0.len() as f64).ceil() as usize;
        self.0.get(rank.max(1) - 1).copied()
    }

    pub fn min(&self) -> Option<i64> {
        self.0.first().copied()
    }

    pub fn max(&self) -> Option<i64> {
        self.0.last().copied()
    }

    /// Values below zero.
    pub fn negative(&self) -> usize {
        self.0.partition_point(|&v| v < 0)
    }

    /// `q` in ms with two decimals, or "–".
    fn ms(&self, q: f64) -> String {
        self.quantile(q).map_or_else(|| "–".to_owned(), ms)
    }
}

#[allow(clippy::cast_precision_loss)] // µs, far below 2^52
fn ms(us: i64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The pings acknowledged within the measured window and what the clients
/// got of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined {
    /// Pings acknowledged in the window.
    pub pings: usize,
    /// Deliveries of those pings (positions read by a client).
    pub delivered: usize,
    /// Deliveries the boxes call for: for each such ping, the boxes that
    /// hold it.
    pub expected: usize,
    /// Deliveries of pings acknowledged outside the window (not counted).
    pub outside: usize,
    /// Deliveries of no acknowledged ping (should be none).
    pub unknown: usize,
    /// Delivery time − acknowledgement time, µs (negative: delivered
    /// before the device had its answer).
    pub after_ack: Signed,
    /// Delivery time − send time, µs.
    pub after_send: Signed,
    /// Acknowledgement time − send time of the window's pings, µs.
    pub ack: Signed,
}

/// Matches every delivery with its ping by (vehicle, device time).
pub fn join<'a>(
    acked: &[Acked],
    window: (i64, i64),
    tiles: &Tiles,
    deliveries: impl IntoIterator<Item = &'a Delivery>,
) -> Joined {
    let by_key: HashMap<(u32, i64), &Acked> =
        acked.iter().map(|a| ((a.vehicle, a.ts_ms), a)).collect();
    let inside = |a: &Acked| (window.0..window.1).contains(&a.acked_us);
    let mut j = Joined::default();
    let mut ack = Vec::new();
    for a in acked.iter().filter(|a| inside(a)) {
        j.pings += 1;
        j.expected += tiles.containing(a.lon, a.lat);
        ack.push(a.acked_us - a.sent_us);
    }
    let (mut after_ack, mut after_send) = (Vec::new(), Vec::new());
    for d in deliveries {
        match by_key.get(&(d.vehicle, d.ts_ms)) {
            Some(a) if inside(a) => {
                j.delivered += 1;
                after_ack.push(d.at_us - a.acked_us);
                after_send.push(d.at_us - a.sent_us);
            }
            Some(_) => j.outside += 1,
            None => j.unknown += 1,
        }
    }
    j.after_ack = Signed::new(after_ack);
    j.after_send = Signed::new(after_send);
    j.ack = Signed::new(ack);
    j
}

/// Everything the report says.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub started: String,
    pub commit: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub load_before: String,
    pub load_after: String,
    pub sink: String,
    pub clients: usize,
    pub vehicles: u32,
    pub rate: f64,
    pub overlap: f64,
    pub tiles: (usize, usize),
    pub tile_m: (f64, f64),
    pub warmup_s: f64,
    pub measure_s: f64,
    /// Clients whose first snapshot arrived, and how long that took.
    pub ready: usize,
    pub ready_s: f64,
    pub snapshot_positions: u64,
    pub joined: Joined,
    /// Pings the driver produced in the window.
    pub produced: u64,
    pub refused: BTreeMap<String, u64>,
    pub unanswered: u64,
    pub device_errors: Vec<String>,
    /// Messages the clients read, by type (whole run).
    pub client_messages: BTreeMap<String, u64>,
    /// Close frames from fleetpipe, by "code reason".
    pub client_closes: BTreeMap<String, u64>,
    pub client_errors: Vec<String>,
    /// fleetpipe's CPU seconds over the window, the bench's, the machine's.
    pub fleetpipe_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub machine_cpu_s: f64,
    /// fleetpipe's RSS (bytes): no clients, clients subscribed, end of
    /// the window, peak.
    pub rss_no_clients: u64,
    pub rss_subscribed: u64,
    pub rss_loaded: u64,
    pub rss_peak: u64,
    /// The feed's gauges: largest sampled in the window.
    pub max_queued_bytes: f64,
    pub max_queued_messages: f64,
    /// The feed's counters, grown over the window (series, delta).
    pub feed_counters: Vec<(String, f64)>,
    /// The feed's gauges at the end of the window.
    pub feed_gauges: Vec<(String, f64)>,
    /// The sinks' batches over the window: (labels, batches, mean
    /// seconds, mean records); a batch's time is what an ack waits for.
    pub sink_batches: Vec<(String, f64, f64, f64)>,
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

impl Run {
    pub fn ingest_rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = self.joined.pings as f64;
        n / self.measure_s
    }

    pub fn delivery_rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = self.joined.delivered as f64;
        n / self.measure_s
    }

    /// fleetpipe's CPU µs per delivered position (the window's CPU over
    /// the window's deliveries: ingest, enrichment, the sink and the feed
    /// all in it).
    pub fn cpu_us_per_delivery(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = self.joined.delivered.max(1) as f64;
        self.fleetpipe_cpu_s * 1e6 / n
    }

    pub fn cpu_us_per_ping(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = self.joined.pings.max(1) as f64;
        self.fleetpipe_cpu_s * 1e6 / n
    }

    /// (RSS subscribed − RSS without clients) / clients, bytes.
    pub fn rss_per_client(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let d = self.rss_subscribed as f64 - self.rss_no_clients as f64;
        #[allow(clippy::cast_precision_loss)]
        let n = self.clients.max(1) as f64;
        d / n
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let j = &self.joined;
        let _ = writeln!(s, "# Live feed fan-out\n");
        let _ = writeln!(
            s,
            "Run of {} UTC, commit {}; {}, {} cores, {:.0} GiB, {}; load average before {}, after {}.\n",
            self.started,
            self.commit,
            self.cpu,
            self.cores,
            self.memory_gib,
            self.kernel,
            self.load_before,
            self.load_after
        );
        let _ = writeln!(
            s,
            "fleetpipe (release, own process, role all, sink: {}) with `[api.feed]`; {} simulated \
             vehicles send one ping per frame over `GET /v1/ws` (one connection each), each \
             frame answered once durable; {} feed clients on `GET /v1/feed`, each subscribed to \
             its own box: the city cut into {} × {} tiles of ~{:.0} × {:.0} m, each widened by \
             {:.0} % per side. Offered {:.0} pings/s; warm-up {:.0} s, measured {:.0} s.\n",
            self.sink,
            self.vehicles,
            self.clients,
            self.tiles.0,
            self.tiles.1,
            self.tile_m.0,
            self.tile_m.1,
            self.overlap * 100.0,
            self.rate,
            self.warmup_s,
            self.measure_s
        );
        #[allow(clippy::cast_precision_loss)]
        let per_ping = j.expected as f64 / j.pings.max(1) as f64;
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| clients subscribed (first snapshot read) | {} of {} in {:.1} s ({} positions in snapshots) |",
            self.ready, self.clients, self.ready_s, self.snapshot_positions
        );
        let _ = writeln!(
            s,
            "| pings acknowledged in the window | {} ({:.0}/s; produced {}) |",
            j.pings,
            self.ingest_rate(),
            self.produced
        );
        let _ = writeln!(
            s,
            "| positions delivered (of those pings) | {} ({:.0}/s); the boxes call for {} ({per_ping:.2} per ping) |",
            j.delivered,
            self.delivery_rate(),
            j.expected
        );
        let _ = writeln!(
            s,
            "| ack → delivery p50 / p90 / p99 / max | {} / {} / {} / {} ms (min {} ms; {} of {} deliveries before the ack) |",
            j.after_ack.ms(0.5),
            j.after_ack.ms(0.9),
            j.after_ack.ms(0.99),
            j.after_ack.ms(1.0),
            j.after_ack.min().map_or_else(|| "–".to_owned(), ms),
            j.after_ack.negative(),
            j.after_ack.len()
        );
        let _ = writeln!(
            s,
            "| send → delivery p50 / p90 / p99 / max | {} / {} / {} / {} ms |",
            j.after_send.ms(0.5),
            j.after_send.ms(0.9),
            j.after_send.ms(0.99),
            j.after_send.ms(1.0)
        );
        let _ = writeln!(
            s,
            "| send → durable ack p50 / p99 / max | {} / {} / {} ms |",
            j.ack.ms(0.5),
            j.ack.ms(0.99),
            j.ack.ms(1.0)
        );
        let _ = writeln!(
            s,
            "| fleetpipe CPU | {:.2} s over {:.0} s ({:.2} cores): **{:.1} µs per delivered position**, {:.1} µs per ping |",
            self.fleetpipe_cpu_s,
            self.measure_s,
            self.fleetpipe_cpu_s / self.measure_s,
            self.cpu_us_per_delivery(),
            self.cpu_us_per_ping()
        );
        let _ = writeln!(
            s,
            "| the benchmark's CPU / the machine's | {:.2} / {:.2} cores |",
            self.bench_cpu_s / self.measure_s,
            self.machine_cpu_s / self.measure_s
        );
        let _ = writeln!(
            s,
            "| fleetpipe RSS | {:.1} MiB without clients, {:.1} MiB with {} subscribed: **{:.1} KiB per client**; {:.1} MiB at the window's end, peak {:.1} MiB |",
            mib(self.rss_no_clients),
            mib(self.rss_subscribed),
            self.clients,
            self.rss_per_client() / 1024.0,
            mib(self.rss_loaded),
            mib(self.rss_peak)
        );
        let _ = writeln!(
            s,
            "| feed queues (largest sampled each second) | {:.0} bytes, {:.0} messages |",
            self.max_queued_bytes, self.max_queued_messages
        );
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_owned()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(
            s,
            "| pings refused / unanswered | {} / {} |",
            list(&self.refused),
            self.unanswered
        );
        let _ = writeln!(
            s,
            "| messages the clients read (whole run) | {} |",
            list(&self.client_messages)
        );
        let _ = writeln!(
            s,
            "| disconnects (close frames) | {} |",
            list(&self.client_closes)
        );
        let _ = writeln!(
            s,
            "| deliveries outside the window / of no acknowledged ping | {} / {} |",
            j.outside, j.unknown
        );
        for (labels, n, seconds, records) in &self.sink_batches {
            let _ = writeln!(
                s,
                "| sink batches `{labels}` | {n:.0}, {:.1} ms and {records:.0} records each on average |",
                seconds * 1000.0
            );
        }
        let _ = writeln!(s, "\nThe feed's metrics, grown over the window:\n");
        for (series, d) in &self.feed_counters {
            let _ = writeln!(s, "- `{series}` +{d}");
        }
        let _ = writeln!(s, "\nThe feed's gauges at the window's end:\n");
        for (series, v) in &self.feed_gauges {
            let _ = writeln!(s, "- `{series}` {v}");
        }
        for (what, errors) in [
            ("device connections", &self.device_errors),
            ("clients", &self.client_errors),
        ] {
            if !errors.is_empty() {
                let _ = writeln!(s, "\n{} {what} failed; first: {}", errors.len(), errors[0]);
            }
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let j = &self.joined;
        let dist = |d: &Signed| {
            serde_json::json!({
                "n": d.len(),
                "p50_ms": d.quantile(0.5).map(|v| v as f64 / 1000.0),
                "p90_ms": d.quantile(0.9).map(|v| v as f64 / 1000.0),
                "p99_ms": d.quantile(0.99).map(|v| v as f64 / 1000.0),
                "max_ms": d.max().map(|v| v as f64 / 1000.0),
                "min_ms": d.min().map(|v| v as f64 / 1000.0),
                "negative": d.negative(),
            })
        };
        let mut v = serde_json::json!({
            "started": self.started,
            "commit": self.commit,
            "cpu": self.cpu,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "sink": self.sink,
            "clients": self.clients,
            "vehicles": self.vehicles,
            "offered_rate": self.rate,
            "overlap": self.overlap,
            "tiles": [self.tiles.0, self.tiles.1],
            "warmup_s": self.warmup_s,
            "measure_s": self.measure_s,
            "ready": self.ready,
            "ready_s": self.ready_s,
            "pings": j.pings,
            "ingest_rate": self.ingest_rate(),
            "delivered": j.delivered,
            "expected": j.expected,
            "delivery_rate": self.delivery_rate(),
            "ack_to_delivery": dist(&j.after_ack),
            "send_to_delivery": dist(&j.after_send),
            "send_to_ack": dist(&j.ack),
            "fleetpipe_cpu_s": self.fleetpipe_cpu_s,
            "cpu_us_per_delivery": self.cpu_us_per_delivery(),
            "cpu_us_per_ping": self.cpu_us_per_ping(),
            "bench_cpu_s": self.bench_cpu_s,
            "machine_cpu_s": self.machine_cpu_s,
            "rss_no_clients": self.rss_no_clients,
            "rss_subscribed": self.rss_subscribed,
            "rss_per_client": self.rss_per_client(),
            "rss_loaded": self.rss_loaded,
            "rss_peak": self.rss_peak,
            "max_queued_bytes": self.max_queued_bytes,
            "max_queued_messages": self.max_queued_messages,
            "refused": self.refused,
            "unanswered": self.unanswered,
            "client_messages": self.client_messages,
            "client_closes": self.client_closes,
            "feed_counters": self.feed_counters,
            "feed_gauges": self.feed_gauges,
        });
        // Past serde_json::json!'s recursion limit in one literal.
        v["sink_batches"] = serde_json::json!(self.sink_batches);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_and_keep_the_sign() {
        let d = Signed::new((1..=100).rev().map(|v| v - 11).collect());
        assert_eq!(d.quantile(0.5), Some(39));
        assert_eq!(d.quantile(0.99), Some(88));
        assert_eq!(d.quantile(1.0), Some(89));
        assert_eq!(d.quantile(0.0), Some(-10));
        assert_eq!(d.min(), Some(-10));
        assert_eq!(d.negative(), 10);
        assert_eq!(Signed::new(vec![]).quantile(0.5), None);
        assert_eq!(Signed::new(vec![7]).quantile(0.99), Some(7));
    }

    #[test]
    fn deliveries_are_matched_by_vehicle_and_device_time_within_the_window() {
        let tiles = Tiles::new([0.0, 0.0, 2.0, 1.0], 2, 0.0).unwrap();
        let ping = |vehicle, ts_ms, lon, acked_us| Acked {
            vehicle,
            ts_ms,
            lon,
            lat: 0.5,
            sent_us: acked_us - 100,
            acked_us,
        };
        let acked = [
            ping(1, 10, 0.5, 1_000), // in the window, box 0
            ping(1, 11, 1.0, 2_000), // in the window, on the edge: both boxes
            ping(2, 10, 1.5, 9_000), // after the window
            ping(3, 10, 5.0, 1_500), // in the window, in no box
        ];
        let at = |vehicle, ts_ms, at_us| Delivery {
            vehicle,
            ts_ms,
            at_us,
        };
        let deliveries = [
            at(1, 10, 950),   // before its ack: −50 µs
            at(1, 11, 2_300), // +300
            at(1, 11, 2_400), // +400
            at(2, 10, 9_100), // outside
            at(4, 10, 1_000), // unknown
        ];
        let j = join(&acked, (1_000, 5_000), &tiles, &deliveries);
        assert_eq!((j.pings, j.delivered, j.expected), (3, 3, 3));
        assert_eq!((j.outside, j.unknown), (1, 1));
        assert_eq!(j.after_ack, Signed::new(vec![-50, 300, 400]));
        assert_eq!(j.after_ack.negative(), 1);
        assert_eq!(j.after_send, Signed::new(vec![50, 400, 500]));
        assert_eq!(j.ack, Signed::new(vec![100, 100, 100]));
    }

    #[test]
    fn the_summary_states_the_per_client_memory_and_the_cpu_per_delivery() {
        let run = Run {
            clients: 1000,
            measure_s: 10.0,
            fleetpipe_cpu_s: 5.0,
            rss_no_clients: 100 << 20,
            rss_subscribed: (100 << 20) + 1000 * 20 * 1024,
            joined: Joined {
                pings: 1000,
                delivered: 250_000,
                ..Joined::default()
            },
            ..Run::default()
        };
        assert_eq!(run.cpu_us_per_delivery(), 20.0);
        assert_eq!(run.rss_per_client(), 20.0 * 1024.0);
        let s = run.summary();
        assert!(s.contains("**20.0 µs per delivered position**"), "{s}");
        assert!(s.contains("**20.0 KiB per client**"), "{s}");
        assert!(s.contains("(25000/s)"), "{s}");
    }
}
