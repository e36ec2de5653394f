//! The results of a run: one serde struct written as JSON, a Markdown
//! summary, and two SVG plots (throughput and latency over time).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine it ran on.
    pub machine: Machine,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    /// The command that produced it.
    pub command: String,
    /// What was offered and how.
    pub settings: Settings,
    /// The ramp, one entry per offered rate (QoS 1, one ping per message).
    pub ramp: Vec<Step>,
    /// Highest sustained rate with every ping durable in both sinks.
    pub saturated_per_s: f64,
    /// The same at full speed with batched messages.
    pub batched: Option<Step>,
    /// Publish-to-durable latency at half the saturated rate.
    pub latency: LatencyResult,
    /// fleetpipe's peak resident memory over the whole run.
    pub peak_rss_bytes: u64,
    /// Memory per tracked vehicle, enrichment state of `vehicles` vehicles.
    pub memory: MemoryResult,
    /// What was acknowledged vs what the sinks hold at the end.
    pub totals: Totals,
    /// The peers, measured in the same run.
    pub peers: Peers,
    /// Each target of the issue with where we stand.
    pub targets: Vec<Target>,
    /// Criterion's micro-benchmarks (mean per iteration), when run.
    pub micro: Vec<Micro>,
    /// One sample per second of the fleetpipe runs.
    pub timeline: Vec<Sample>,
}

/// The machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `/proc/cpuinfo` model name, family, model and cache size.
    pub cpu: String,
    /// Cores available.
    pub cores: usize,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// `uname -sr`.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
    /// PostgreSQL `SELECT version()`.
    pub postgres: String,
    /// PostgreSQL settings that shape write latency ([`PG_SETTINGS`]), as
    /// `name=value unit`, read when the run started.
    pub postgres_settings: Vec<String>,
    /// The kernel's page-cache writeback settings ([`WRITEBACK_SYSCTLS`])
    /// as `name=value`: when dirty pages are written decides how large the
    /// write bursts are that the database's WAL fsyncs wait behind.
    pub kernel_writeback: Vec<String>,
}

/// The `vm.*` settings a run records (`/proc/sys/vm/<name>`).
pub const WRITEBACK_SYSCTLS: [&str; 4] = [
    "dirty_background_bytes",
    "dirty_background_ratio",
    "dirty_expire_centisecs",
    "dirty_writeback_centisecs",
];

/// The PostgreSQL settings a run records: memory, WAL and checkpoints,
/// and commit durability, which decide how the database writer's
/// latency behaves under sustained load.
pub const PG_SETTINGS: [&str; 5] = [
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "synchronous_commit",
    "fsync",
];

/// Run settings.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Simulated vehicles.
    pub vehicles: u32,
    /// MQTT connections of the publisher.
    pub connections: u32,
    /// Payload encoding.
    pub encoding: String,
    /// Seconds per ramp step.
    pub step_s: f64,
    /// Pings per message in the batched run.
    pub batch: u32,
    /// Whether this was the short version.
    pub quick: bool,
}

/// One step of offered load.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Offered pings/s (0 = as fast as acknowledgements allow).
    pub offered_per_s: f64,
    /// Pings/s the publisher sent.
    pub sent_per_s: f64,
    /// Pings/s that became durable in both sinks.
    pub durable_per_s: f64,
    /// fleetpipe CPU seconds per 1,000 durable pings.
    pub cpu_s_per_1k: f64,
    /// fleetpipe CPU utilisation, cores (2.0 = both cores busy).
    pub cpu_cores: f64,
    /// The simulator's (this process's) CPU utilisation, cores.
    pub simulator_cores: f64,
    /// The whole machine's CPU utilisation, cores (fleetpipe, the simulator,
    /// PostgreSQL and everything else).
    pub machine_cores: f64,
    /// Publish-to-durable p99 over the step, ms.
    pub p99_ms: f64,
}

/// Latency at a fixed load.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    /// Offered pings/s.
    pub offered_per_s: f64,
    /// Durable pings/s measured meanwhile.
    pub durable_per_s: f64,
    /// Messages measured.
    pub samples: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

/// Memory per tracked vehicle.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    /// Vehicles tracked.
    pub vehicles: u64,
    /// Heap bytes live after tracking them, per vehicle (requested sizes, as
    /// counted by the global allocator): the state itself.
    pub bytes_per_vehicle: f64,
    /// Resident memory they added, bytes per vehicle: the heap plus what the
    /// allocator keeps around it (free space left by the hash table's growth).
    pub rss_bytes_per_vehicle: f64,
}

/// Acknowledged vs stored.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Pings the publisher saw acknowledged as durable.
    pub acked_pings: u64,
    /// Rows in the telemetry table.
    pub db_rows: u64,
    /// Messages in the Kafka telemetry topic.
    pub kafka_messages: u64,
    /// What the run's telemetry table was in: "TimescaleDB (hypertable)"
    /// or "plain PostgreSQL", read from the server after the run.
    pub database_mode: String,
}

/// The peers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peers {
    /// Mosquitto relaying the same publishes to one QoS 1 subscriber, msgs/s.
    pub mosquitto_relay_per_s: Option<f64>,
    /// Plain binary COPY into the same table, rows/s.
    pub copy_rows_per_s: Option<f64>,
    /// PostGIS per point (batched queries), µs.
    pub postgis_us_per_point: Option<f64>,
    /// fleetpipe's geofence lookup on the same points and fences, µs.
    pub fleetpipe_lookup_us_per_point: Option<f64>,
    /// Points where PostGIS and fleetpipe disagree.
    pub geofence_disagreements: Option<u64>,
    /// Why a peer is missing, if one is.
    pub notes: Vec<String>,
}

/// One target.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What the issue asks.
    pub target: String,
    /// What we measured.
    pub measured: String,
    /// Met or not (`None`: not measured).
    pub met: Option<bool>,
}

/// One criterion benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Micro {
    /// Criterion's full id.
    pub id: String,
    /// Mean time per iteration, ns.
    pub mean_ns: f64,
    /// Elements per iteration when criterion knew (pings, records).
    pub elements: Option<u64>,
}

/// One second of a fleetpipe run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since fleetpipe started.
    pub t_s: f64,
    /// Phase name.
    pub phase: String,
    /// Offered pings/s (0 = max).
    pub offered_per_s: f64,
    /// Sent pings/s.
    pub sent_per_s: f64,
    /// Durable in TimescaleDB, rows/s.
    pub timescale_per_s: f64,
    /// Durable in Kafka, records/s.
    pub kafka_per_s: f64,
    /// Publish-to-durable latency of this second's acknowledgements, ms.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// fleetpipe CPU, cores.
    pub cpu_cores: f64,
    /// fleetpipe resident memory, MiB.
    pub rss_mib: f64,
}

impl Report {
    /// Writes `result.json`, `summary.md`, `throughput.svg` and `latency.svg`
    /// into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("result.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("summary.md"), self.markdown())?;
        plot_throughput(&self.timeline, &dir.join("throughput.svg"))
            .context("plotting throughput")?;
        plot_latency(&self.timeline, &dir.join("latency.svg")).context("plotting latency")?;
        Ok(())
    }

    /// The Markdown summary (also what BENCHMARKS.md quotes).
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "### End-to-end run of {}\n", self.started_at);
        let _ = writeln!(
            s,
            "Machine: {} ({} cores), {:.0} GiB, {} ({}); {}; {} ({}).\n",
            m.cpu,
            m.cores,
            m.memory_gib,
            m.kernel,
            m.kernel_writeback.join(", "),
            m.rustc,
            m.postgres,
            m.postgres_settings.join(", ")
        );
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let st = &self.settings;
        let _ = writeln!(
            s,
            "fleetpipe (release) with the TimescaleDB sink (this run: {}) and the Kafka \
             sink (embedded mock cluster), embedded MQTT broker; the simulator ({} vehicles, {} \
             MQTT connections, QoS 1, {}) on the same machine. Durable = counted by both sinks; \
             checked against `count(*)` and the Kafka watermarks at the end.\n",
            self.totals.database_mode, st.vehicles, st.connections, st.encoding
        );
        let _ = writeln!(s, "| target | measured | met |\n|---|---|---|");
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(s, "| {} | {} | {met} |", t.target, t.measured);
        }
        let _ = writeln!(
            s,
            "\nRamp (QoS 1, one ping per message, {} s per step):\n\n\
             | offered pings/s | sent/s | durable/s (both sinks) | fleetpipe CPU (cores) | simulator CPU (cores) | machine CPU (cores) | fleetpipe CPU s / 1k pings | p99 ms |\n\
             |---|---|---|---|---|---|---|---|",
            st.step_s
        );
        for r in self.ramp.iter().chain(self.batched.iter()) {
            let offered = if r.offered_per_s > 0.0 {
                format!("{:.0}", r.offered_per_s)
            } else {
                "max".to_owned()
            };
            let _ = writeln!(
                s,
                "| {offered} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.0} |",
                r.sent_per_s,
                r.durable_per_s,
                r.cpu_cores,
                r.simulator_cores,
                r.machine_cores,
                r.cpu_s_per_1k,
                r.p99_ms
            );
        }
        if let Some(b) = &self.batched {
            let _ = writeln!(
                s,
                "\n(last row: as fast as acknowledgements allow, {} pings per message: {:.0} pings/s)",
                st.batch, b.durable_per_s
            );
        }
        let l = &self.latency;
        let _ = writeln!(
            s,
            "\nLatency publish → durable at {:.0} pings/s offered ({:.0} durable/s): p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms over {} messages.",
            l.offered_per_s, l.durable_per_s, l.p50_ms, l.p99_ms, l.max_ms, l.samples
        );
        let t = &self.totals;
        let _ = writeln!(
            s,
            "\nTotals: {} pings acknowledged durable to the publisher; {} rows in `telemetry`; {} \
             messages in the Kafka telemetry topic. Peak RSS of fleetpipe: {:.0} MiB. Enrichment \
             state: {:.0} bytes per vehicle live on the heap ({:.0} bytes of RSS) with {} vehicles.",
            t.acked_pings,
            t.db_rows,
            t.kafka_messages,
            self.peak_rss_bytes as f64 / 1048576.0,
            self.memory.bytes_per_vehicle,
            self.memory.rss_bytes_per_vehicle,
            self.memory.vehicles
        );
        let p = &self.peers;
        let _ = writeln!(
            s,
            "\nPeers (same run, same machine):\n\n| peer | result | fleetpipe | ratio (fleetpipe / peer) |\n|---|---|---|---|"
        );
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                "–".into()
            }
        };
        if let Some(r) = p.mosquitto_relay_per_s {
            let _ = writeln!(
                s,
                "| Mosquitto relay (QoS 1 in, one QoS 1 subscriber) | {r:.0} msgs/s | {:.0} pings/s durable | {} |",
                self.saturated_per_s,
                ratio(self.saturated_per_s, r)
            );
        }
        if let Some(r) = p.copy_rows_per_s {
            let db = self.saturated_per_s;
            let _ = writeln!(
                s,
                "| Raw binary COPY into `telemetry` | {r:.0} rows/s | {db:.0} rows/s | {} |",
                ratio(db, r)
            );
        }
        if let (Some(pg), Some(fp)) = (p.postgis_us_per_point, p.fleetpipe_lookup_us_per_point) {
            let _ = writeln!(
                s,
                "| PostGIS `ST_Contains`/`ST_DWithin`, GiST, batched | {pg:.2} µs/point | {fp:.3} µs/point (from lat/lon) | {} faster |",
                ratio(pg, fp)
            );
        }
        if let Some(d) = p.geofence_disagreements {
            let _ = writeln!(
                s,
                "\nGeofence answers where PostGIS and fleetpipe differ: {d}."
            );
        }
        for n in &p.notes {
            let _ = writeln!(s, "\nNote: {n}");
        }
        if !self.micro.is_empty() {
            let _ = writeln!(
                s,
                "\nCriterion micro-benchmarks (mean per iteration):\n\n| benchmark | mean | per element |\n|---|---|---|"
            );
            for m in &self.micro {
                let per = m
                    .elements
                    .filter(|&e| e > 0)
                    .map_or_else(|| "–".to_owned(), |e| format_ns(m.mean_ns / e as f64));
                let _ = writeln!(s, "| `{}` | {} | {per} |", m.id, format_ns(m.mean_ns));
            }
        }
        let _ = writeln!(
            s,
            "\n![throughput](throughput.svg)\n\n![latency](latency.svg)"
        );
        s
    }
}

fn format_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// A point of a timeline: its time since fleetpipe started.
pub trait Timed {
    /// Seconds since fleetpipe started.
    fn t_s(&self) -> f64;
}

impl Timed for Sample {
    fn t_s(&self) -> f64 {
        self.t_s
    }
}

/// One line of a chart: its legend, colour and value at each point.
pub type Series<'a, T> = (&'a str, RGBColor, Box<dyn Fn(&T) -> f64 + 'a>);

/// One chart of `timeline` in its own SVG file.
fn plot<T: Timed>(
    timeline: &[T],
    path: &Path,
    caption: &str,
    y_desc: &str,
    series: Vec<Series<'_, T>>,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    draw_chart(&root, timeline, caption, y_desc, &series)?;
    root.present()?;
    Ok(())
}

/// Draws one chart of `timeline` into `area`: time on x, the series on y
/// from 0 to a tenth above their largest value.
pub fn draw_chart<T: Timed>(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    timeline: &[T],
    caption: &str,
    y_desc: &str,
    series: &[Series<'_, T>],
) -> anyhow::Result<()> {
    let t_max = timeline.last().map_or(1.0, Timed::t_s).max(1.0);
    let y_max = timeline
        .iter()
        .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since fleetpipe started")
        .y_desc(y_desc)
        .draw()?;
    for (name, color, f) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                timeline.iter().map(|s| (s.t_s(), f(s))),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn plot_throughput(timeline: &[Sample], path: &Path) -> anyhow::Result<()> {
    plot(
        timeline,
        path,
        "Throughput: offered, sent, durable per sink",
        "pings/s",
        vec![
            (
                "offered",
                RGBColor(160, 160, 160),
                Box::new(|s: &Sample| s.offered_per_s),
            ),
            ("sent", BLUE, Box::new(|s: &Sample| s.sent_per_s)),
            (
                "durable in TimescaleDB",
                RGBColor(0, 150, 0),
                Box::new(|s: &Sample| s.timescale_per_s),
            ),
            (
                "durable in Kafka",
                RED,
                Box::new(|s: &Sample| s.kafka_per_s),
            ),
        ],
    )
}

fn plot_latency(timeline: &[Sample], path: &Path) -> anyhow::Result<()> {
    plot(
        timeline,
        path,
        "Latency publish → durable (per second of acknowledgements)",
        "ms",
        vec![
            ("p50", BLUE, Box::new(|s: &Sample| s.p50_ms)),
            ("p99", RED, Box::new(|s: &Sample| s.p99_ms)),
        ],
    )
}
