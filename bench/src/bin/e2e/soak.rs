//! The soak run (`--soak-minutes N`): fleetpipe on its embedded broker with
//! both sinks, driven by the simulator at half the saturated rate for a long
//! time, sampled every `--soak-sample-secs`. What it shows is whether
//! anything grows that should not: resident memory, open file descriptors,
//! the queues between stages, the database pool. A leak or an unbounded
//! queue shows up as a slope over an hour that a five-minute benchmark
//! cannot see.
//!
//! The saturated rate is measured first, in the same process, by the ramp of
//! the end-to-end benchmark (or given with `--soak-rate`). At the end the
//! totals are checked like the benchmark's: every acknowledged ping is in the
//! database and in Kafka. Results: `soak.json`, `soak.md` and `soak.svg` in
//! `--out`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetpipe_sim::{Encoding, Publisher, Rate, SimConfig};
use indicatif::ProgressBar;
use plotters::prelude::*;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::counts::{self, Durable};
use crate::process::{ProcSample, proc_sample};
use crate::report::{Machine, Series, Step, Timed, Totals, draw_chart};
use crate::{
    Args, Ramp, machine, new_histogram, now_rfc3339, publisher_config, publisher_run, quantile_ms,
    ramp, start_fleetpipe,
};

/// What a soak run measured.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    /// The machine it ran on.
    pub machine: Machine,
    /// RFC 3339 UTC start time.
    pub started_at: String,
    /// The command that produced it.
    pub command: String,
    /// Simulated vehicles of the soak phase.
    pub vehicles: u32,
    /// Publisher connections.
    pub connections: u32,
    /// Payload encoding.
    pub encoding: String,
    /// The ramp that found the saturated rate (empty with `--soak-rate`).
    pub ramp: Vec<Step>,
    /// Highest durable rate of the ramp (0 with `--soak-rate`).
    pub saturated_per_s: f64,
    /// Offered rate of the soak, pings/s.
    pub rate_per_s: f64,
    /// Length of the soak phase, seconds.
    pub soak_s: f64,
    /// Seconds between samples.
    pub sample_s: f64,
    /// Leading part of the soak left out of the trends (queues, caches and
    /// pools fill up), seconds.
    pub warm_up_s: f64,
    /// Acknowledged vs stored, at the end.
    pub totals: Totals,
    /// Size of the telemetry table and its indexes at the end, bytes (data,
    /// which grows by design; not part of the process's footprint).
    pub table_bytes: u64,
    /// First vs last window and slope of every series.
    pub trends: Vec<Trend>,
    /// Every sample of the soak phase.
    pub samples: Vec<SoakSample>,
}

/// One reading of fleetpipe during the soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since fleetpipe started.
    pub t_s: f64,
    /// Pings the simulator sent per second since the previous sample.
    pub sent_per_s: f64,
    /// Pings durable in both sinks per second since the previous sample.
    pub durable_per_s: f64,
    /// 99th percentile publish → durable acknowledgement since the previous
    /// sample, ms.
    pub p99_ms: f64,
    /// fleetpipe CPU since the previous sample, cores.
    pub cpu_cores: f64,
    /// fleetpipe resident memory, MiB.
    pub rss_mib: f64,
    /// fleetpipe's open file descriptors (sockets included).
    pub fds: f64,
    /// Accepted pings not yet acknowledged by every sink, bytes
    /// (`fleetpipe_pipeline_inflight_bytes`), as MiB.
    pub inflight_mib: f64,
    /// Pings waiting in enrichment's worker queues (all workers).
    pub enrich_queue: f64,
    /// Records waiting in front of the TimescaleDB sink.
    pub timescale_queue: f64,
    /// Records waiting in front of the Kafka sink.
    pub kafka_queue: f64,
    /// Records produced to Kafka awaiting their delivery report.
    pub kafka_inflight: f64,
    /// Database connections checked out by writers.
    pub pool_in_use: f64,
    /// Database connections open and idle.
    pub pool_idle: f64,
    /// Writers waiting for a database connection.
    pub pool_waiting: f64,
    /// Vehicles whose state enrichment keeps.
    pub vehicles: f64,
}

impl Timed for SoakSample {
    fn t_s(&self) -> f64 {
        self.t_s
    }
}

/// How one series moved over the soak, after the warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    /// What was measured, with its unit.
    pub series: String,
    /// Mean over the first window after the warm-up.
    pub first: f64,
    /// Mean over the last window.
    pub last: f64,
    /// Largest sample after the warm-up.
    pub max: f64,
    /// Least-squares slope after the warm-up, per hour.
    pub slope_per_hour: f64,
}

/// The series the trends and the summary report, with how each is read.
type Column = (&'static str, fn(&SoakSample) -> f64);

const COLUMNS: [Column; 13] = [
    ("durable pings/s", |s| s.durable_per_s),
    ("p99 publish → durable, ms", |s| s.p99_ms),
    ("fleetpipe CPU, cores", |s| s.cpu_cores),
    ("RSS, MiB", |s| s.rss_mib),
    ("open file descriptors", |s| s.fds),
    ("in-flight pings, MiB", |s| s.inflight_mib),
    ("enrichment queues, pings", |s| s.enrich_queue),
    ("TimescaleDB sink queue, records", |s| s.timescale_queue),
    ("Kafka sink queue, records", |s| s.kafka_queue),
    ("Kafka awaiting delivery, records", |s| s.kafka_inflight),
    ("pool connections in use", |s| s.pool_in_use),
    ("writers waiting for a connection", |s| s.pool_waiting),
    ("vehicles tracked", |s| s.vehicles),
];

/// Runs the soak and writes its report into `args.out`.
pub async fn run(
    args: &Args,
    minutes: u64,
    sim: &SimConfig,
    encoding: Encoding,
    step: Duration,
    fences: &Path,
    progress: &ProgressBar,
) -> anyhow::Result<SoakReport> {
    let started_at = now_rfc3339();
    let schema = "fleetpipe_soak";
    let (fp, mut sampler) = start_fleetpipe(args, schema, fences, progress).await?;

    let (ramp_steps, saturated, mut published, rate) = match args.soak_rate {
        Some(rate) => (Vec::new(), 0.0, 0, rate),
        None => {
            let config = publisher_config(
                args,
                sim,
                encoding,
                fp.mqtt,
                "sim-",
                Rate::PerSecond(args.start_rate),
                1,
            );
            let Ramp {
                steps,
                saturated,
                published,
            } = ramp(args, &mut sampler, config, step, progress).await?;
            (steps, saturated, published, (saturated / 2.0).max(100.0))
        }
    };

    let publisher = Publisher::new(publisher_config(
        args,
        sim,
        encoding,
        fp.mqtt,
        "sims-",
        Rate::PerSecond(rate),
        1,
    ))?;
    let stats = publisher.stats();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(publisher_run(publisher, cancel.clone()));
    let length = Duration::from_secs(minutes * 60);
    let every = Duration::from_secs(args.soak_sample_secs.max(1));
    let client = reqwest::Client::new();
    let t0 = sampler.t0;
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut prev = Reading::take(&client, &fp, stats.snapshot().sent_pings).await?;
    let _ = stats.take_window_histogram();
    while start.elapsed() < length {
        tokio::time::sleep(every).await;
        let now = Reading::take(&client, &fp, stats.snapshot().sent_pings).await?;
        let window = stats.take_window_histogram().unwrap_or_else(new_histogram);
        let sample = now.sample(&prev, t0, quantile_ms(&window, 0.99));
        progress.set_message(format!(
            "soak {:.0}/{minutes} min at {rate:.0}/s: durable {:.0}/s, p99 {:.0} ms, rss {:.0} MiB, fds {:.0}, queues {:.0}/{:.0}/{:.0}, pool {:.0} in use",
            start.elapsed().as_secs_f64() / 60.0,
            sample.durable_per_s,
            sample.p99_ms,
            sample.rss_mib,
            sample.fds,
            sample.enrich_queue,
            sample.timescale_queue,
            sample.kafka_queue,
            sample.pool_in_use,
        ));
        samples.push(sample);
        prev = now;
    }
    cancel.cancel();
    published += handle.await??.acked_pings;

    progress.set_message("counting what the database and Kafka hold");
    sampler
        .wait_durable(published, Duration::from_secs(300))
        .await?;
    let totals = Totals {
        acked_pings: published,
        db_rows: counts::db_rows(&args.pg_url, schema).await?,
        database_mode: counts::database_mode(&args.pg_url, schema).await?,
        kafka_messages: counts::kafka_messages(&fp.kafka, "fleet.telemetry.v1").await?,
    };
    let table_bytes = counts::table_bytes(&args.pg_url, schema).await?;
    progress.set_message("stopping fleetpipe (SIGTERM: it drains)");
    let status = fp.stop(Duration::from_secs(120)).await?;
    if !status.success() {
        bail!("fleetpipe exited with {status}");
    }
    fleetpipe_bench::peers::drop_schema(&args.pg_url, schema).await?;

    // The first tenth (at least one sample, at most ten minutes) is the
    // warm-up: enrichment learns its vehicles, queues and the pool fill.
    let soak_s = length.as_secs_f64();
    let warm_up_s = (soak_s / 10.0).min(600.0);
    let report = SoakReport {
        machine: machine(&args.pg_url).await,
        started_at,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        vehicles: sim.vehicles,
        connections: args.connections,
        encoding: args.encoding.clone(),
        ramp: ramp_steps,
        saturated_per_s: saturated,
        rate_per_s: rate,
        soak_s,
        sample_s: every.as_secs_f64(),
        warm_up_s,
        totals,
        table_bytes,
        trends: trends(&samples, warm_up_s),
        samples,
    };
    report.write(&args.out)?;
    Ok(report)
}

/// Everything read at one moment.
struct Reading {
    at: Instant,
    sent: u64,
    durable: Durable,
    metrics: String,
    proc: ProcSample,
    fds: usize,
}

impl Reading {
    async fn take(
        client: &reqwest::Client,
        fp: &crate::process::Fleetpipe,
        sent: u64,
    ) -> anyhow::Result<Self> {
        let metrics = counts::metrics_text(client, fp.ops).await?;
        Ok(Self {
            at: Instant::now(),
            sent,
            durable: Durable::from_text(&metrics),
            proc: proc_sample(fp.pid).context("fleetpipe is gone")?,
            fds: std::fs::read_dir(format!("/proc/{}/fd", fp.pid))
                .context("fleetpipe's file descriptors")?
                .count(),
            metrics,
        })
    }

    fn sample(&self, prev: &Reading, t0: Instant, p99_ms: f64) -> SoakSample {
        let dt = self.at.duration_since(prev.at).as_secs_f64().max(1e-3);
        let m = |name: &str, labels: &[(&str, &str)]| counts::sum(&self.metrics, name, labels);
        let sink_queue = |sink: &str| m("fleetpipe_sink_queue_depth", &[("sink", sink)]);
        let pool = |state: &str| {
            m(
                "fleetpipe_sink_pool_connections",
                &[("sink", "timescale"), ("state", state)],
            )
        };
        SoakSample {
            t_s: self.at.duration_since(t0).as_secs_f64(),
            sent_per_s: self.sent.saturating_sub(prev.sent) as f64 / dt,
            durable_per_s: self.durable.both().saturating_sub(prev.durable.both()) as f64 / dt,
            p99_ms,
            cpu_cores: (self.proc.cpu_s - prev.proc.cpu_s) / dt,
            rss_mib: self.proc.rss_bytes as f64 / 1048576.0,
            fds: self.fds as f64,
            inflight_mib: m("fleetpipe_pipeline_inflight_bytes", &[]) / 1048576.0,
            enrich_queue: m("fleetpipe_enrich_queue_depth", &[]),
            timescale_queue: sink_queue("timescale"),
            kafka_queue: sink_queue("kafka"),
            kafka_inflight: m("fleetpipe_sink_inflight", &[("sink", "kafka")]),
            pool_in_use: pool("in_use"),
            pool_idle: pool("idle"),
            pool_waiting: m("fleetpipe_sink_pool_waiting", &[("sink", "timescale")]),
            vehicles: m("fleetpipe_enrich_vehicles", &[]),
        }
    }
}

/// Each column's first and last window (a tenth of the samples after the
/// warm-up, at least one), largest value and slope per hour.
fn trends(samples: &[SoakSample], warm_up_s: f64) -> Vec<Trend> {
    let t_start = samples.first().map_or(0.0, |s| s.t_s);
    let settled: Vec<&SoakSample> = samples
        .iter()
        .filter(|s| s.t_s - t_start >= warm_up_s)
        .collect();
    let window = (settled.len() / 10).max(1).min(settled.len());
    let mean = |xs: &[&SoakSample], f: fn(&SoakSample) -> f64| {
        xs.iter().map(|s| f(s)).sum::<f64>() / xs.len().max(1) as f64
    };
    COLUMNS
        .iter()
        .map(|&(series, f)| Trend {
            series: series.to_owned(),
            first: mean(&settled[..window], f),
            last: mean(&settled[settled.len() - window..], f),
            max: settled.iter().map(|s| f(s)).fold(0.0, f64::max),
            slope_per_hour: slope(settled.iter().map(|s| (s.t_s, f(s)))) * 3600.0,
        })
        .collect()
}

/// Least-squares slope of `points` (0 for fewer than two distinct x).
fn slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let points: Vec<(f64, f64)> = points.collect();
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx > 0.0 { sxy / sxx } else { 0.0 }
}

impl SoakReport {
    /// Writes `soak.json`, `soak.md` and `soak.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("soak.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("soak.md"), self.markdown())?;
        self.plot(&dir.join("soak.svg"))
            .context("plotting the soak")
    }

    /// The Markdown summary (what BENCHMARKS.md quotes).
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "### Soak run of {}\n", self.started_at);
        let _ = writeln!(
            s,
            "Machine: {} ({} cores), {:.0} GiB, {}; {}; {}.\n",
            m.cpu, m.cores, m.memory_gib, m.kernel, m.rustc, m.postgres
        );
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let _ = writeln!(
            s,
            "{:.0} min at {:.0} pings/s offered ({}), {} vehicles over {} MQTT connections, QoS 1, {}, both sinks; one sample every {:.0} s; trends leave out the first {:.0} min.\n",
            self.soak_s / 60.0,
            self.rate_per_s,
            if self.saturated_per_s > 0.0 {
                format!(
                    "half of the {:.0} pings/s the ramp saturated at",
                    self.saturated_per_s
                )
            } else {
                "given with --soak-rate".to_owned()
            },
            self.vehicles,
            self.connections,
            self.encoding,
            self.sample_s,
            self.warm_up_s / 60.0,
        );
        let _ = writeln!(
            s,
            "| series | first window | last window | max | slope per hour |\n|---|---|---|---|---|"
        );
        for t in &self.trends {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} | {:.1} | {:+.2} |",
                t.series, t.first, t.last, t.max, t.slope_per_hour
            );
        }
        let _ = writeln!(
            s,
            "\nTotals: {} pings acknowledged, {} rows in the database, {} records in Kafka; telemetry table and indexes {:.1} GiB at the end.",
            self.totals.acked_pings,
            self.totals.db_rows,
            self.totals.kafka_messages,
            self.table_bytes as f64 / 1073741824.0
        );
        let _ = writeln!(s, "\n![soak](soak.svg)");
        s
    }

    fn plot(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (1000, 1400)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((4, 1));
        let grey = RGBColor(120, 120, 120);
        let green = RGBColor(0, 150, 0);
        let charts: [(&str, &str, Vec<Series<'_, SoakSample>>); 4] = [
            (
                "Memory and descriptors",
                "MiB / count",
                vec![
                    ("RSS, MiB", BLUE, Box::new(|s: &SoakSample| s.rss_mib)),
                    ("open fds", RED, Box::new(|s: &SoakSample| s.fds)),
                ],
            ),
            (
                "Queues between stages",
                "records",
                vec![
                    (
                        "enrichment",
                        BLUE,
                        Box::new(|s: &SoakSample| s.enrich_queue),
                    ),
                    (
                        "TimescaleDB sink",
                        green,
                        Box::new(|s: &SoakSample| s.timescale_queue),
                    ),
                    ("Kafka sink", RED, Box::new(|s: &SoakSample| s.kafka_queue)),
                    (
                        "Kafka awaiting delivery",
                        grey,
                        Box::new(|s: &SoakSample| s.kafka_inflight),
                    ),
                ],
            ),
            (
                "Database pool",
                "connections",
                vec![
                    ("in use", BLUE, Box::new(|s: &SoakSample| s.pool_in_use)),
                    ("idle", green, Box::new(|s: &SoakSample| s.pool_idle)),
                    (
                        "writers waiting",
                        RED,
                        Box::new(|s: &SoakSample| s.pool_waiting),
                    ),
                ],
            ),
            (
                "Throughput and latency",
                "pings/s ÷ 100 / ms",
                vec![
                    (
                        "durable pings/s ÷ 100",
                        green,
                        Box::new(|s: &SoakSample| s.durable_per_s / 100.0),
                    ),
                    ("p99 ms", RED, Box::new(|s: &SoakSample| s.p99_ms)),
                ],
            ),
        ];
        for (panel, (caption, y_desc, series)) in panels.iter().zip(charts) {
            draw_chart(panel, &self.samples, caption, y_desc, &series)?;
        }
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_mib: f64) -> SoakSample {
        SoakSample {
            t_s,
            sent_per_s: 0.0,
            durable_per_s: 0.0,
            p99_ms: 0.0,
            cpu_cores: 0.0,
            rss_mib,
            fds: 0.0,
            inflight_mib: 0.0,
            enrich_queue: 0.0,
            timescale_queue: 0.0,
            kafka_queue: 0.0,
            kafka_inflight: 0.0,
            pool_in_use: 0.0,
            pool_idle: 0.0,
            pool_waiting: 0.0,
            vehicles: 0.0,
        }
    }

    #[test]
    fn slope_is_per_second_of_the_points() {
        let points = (0..10).map(|i| (f64::from(i) * 10.0, 5.0 + f64::from(i)));
        assert!((slope(points) - 0.1).abs() < 1e-9);
        assert_eq!(slope([(1.0, 1.0), (1.0, 5.0)].into_iter()), 0.0);
    }

    #[test]
    fn trends_leave_out_the_warm_up_and_compare_first_and_last_windows() {
        // 100 MiB growing during a 100 s warm-up, then flat at 200 for
        // 1000 s, except the last 100 s at 210.
        let samples: Vec<SoakSample> = (0..=110)
            .map(|i| {
                let t = f64::from(i) * 10.0;
                let rss = if t < 100.0 {
                    100.0 + t
                } else if t > 1000.0 {
                    210.0
                } else {
                    200.0
                };
                sample(t, rss)
            })
            .collect();
        let rss = trends(&samples, 100.0)
            .into_iter()
            .find(|t| t.series == "RSS, MiB")
            .expect("RSS trend");
        assert_eq!(rss.first, 200.0);
        assert_eq!(rss.last, 210.0);
        assert_eq!(rss.max, 210.0);
        assert!(rss.slope_per_hour > 0.0);
    }
}
