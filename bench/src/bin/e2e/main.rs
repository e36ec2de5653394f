//! The end-to-end load benchmark: fleetpipe (release binary, a child
//! process) with the TimescaleDB sink on the local PostgreSQL and the Kafka
//! sink on its embedded mock cluster, driven over MQTT by the fleet
//! simulator on the same machine; then the peers (a Mosquitto relay, a raw
//! COPY into the same table, PostGIS geofencing) in the same run.
//!
//! ```text
//! scripts/bench.sh            # builds, runs the criterion benches, then this
//! target/release/fleetpipe-e2e --help
//! ```
//!
//! Phases, one fleetpipe process for the first three:
//!
//! Every publisher waits for fleetpipe's durable acknowledgements (`{"ack":N}`
//! on the vehicle's ack topic, up to [`MAX_PENDING`] messages per connection):
//! end-to-end flow control, so the broker never holds more than that window.
//!
//! 1. **Ramp**: QoS 1, one ping per message, offered rate raised step by
//!    step; a step's result is what became durable in *both* sinks per second
//!    (fleetpipe's per-sink counters). The ramp stops once a step falls short
//!    of its offered rate by more than 10 %; the highest durable rate of any
//!    step, or of a final step "as fast as acknowledgements allow", is the
//!    saturated rate.
//! 2. **Batched**: the same, `--batch` pings per message, as fast as
//!    acknowledgements allow.
//! 3. **Latency** at half the saturated rate: publish → fleetpipe's durable
//!    acknowledgement.
//!
//! Then the totals are checked against `count(*)` of the table and the
//! Kafka topic's watermarks, and fleetpipe stops (SIGTERM: it drains). Memory
//! per vehicle is the enrichment state of `--memory-vehicles` vehicles
//! tracked in this process. Results: `result.json`, `summary.md`,
//! `throughput.svg`, `latency.svg` in `--out`.

mod counts;
mod process;
mod report;
mod soak;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fleetpipe_bench::{host, peers};
use fleetpipe_sim::{
    AckMode, Encoding, Fleet, MqttConfig, Publisher, PublisherConfig, Rate, SimConfig, StatsHandle,
    Transport,
};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::counts::Durable;
use crate::process::{Fleetpipe, ProcSample, RunConfig, proc_sample};
use crate::report::{
    LatencyResult, Machine, MemoryResult, Micro, Peers, Report, Sample, Settings, Step, Target,
    Totals,
};

// The allocator of the fleetpipe binary, so the in-process memory
// measurement is the binary's; `Cap` counts the bytes live on the heap.
#[global_allocator]
static GLOBAL: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

/// fleetpipe's end-to-end load benchmark and its peers.
#[derive(Debug, Parser)]
struct Args {
    /// Short steps and fewer vehicles (a few minutes instead of ~15).
    #[arg(long)]
    quick: bool,
    /// Output directory.
    #[arg(long, default_value = "target/e2e")]
    out: PathBuf,
    /// The fleetpipe binary (build it with `cargo build --release -p fleetpipe`).
    #[arg(long, default_value = "target/release/fleetpipe")]
    fleetpipe: PathBuf,
    /// PostgreSQL for the TimescaleDB sink and the peers.
    #[arg(long, default_value = "postgresql://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Mosquitto for the relay peer.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mosquitto: String,
    /// Simulated vehicles (default 10,000; 5,000 with --quick).
    #[arg(long)]
    vehicles: Option<u32>,
    /// Seconds per ramp step (default 20; 8 with --quick).
    #[arg(long)]
    step_secs: Option<u64>,
    /// First offered rate of the ramp, pings/s.
    #[arg(long, default_value_t = 5_000.0)]
    start_rate: f64,
    /// Factor between ramp steps.
    #[arg(long, default_value_t = 1.5)]
    ramp_factor: f64,
    /// Pings per message in the batched phase.
    #[arg(long, default_value_t = 10)]
    batch: u32,
    /// MQTT connections of the publisher.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Payload encoding: json or protobuf.
    #[arg(long, default_value = "json")]
    encoding: String,
    /// Vehicles for the memory-per-vehicle measurement (default 1,000,000;
    /// 200,000 with --quick).
    #[arg(long)]
    memory_vehicles: Option<u64>,
    /// Criterion's output directory to summarise (skipped if absent).
    #[arg(long, default_value = "target/criterion")]
    criterion: PathBuf,
    /// Leave out the peers.
    #[arg(long)]
    no_peers: bool,
    /// Instead of the benchmark, a soak run of this many minutes at half
    /// the saturated rate (found by a ramp first, as the benchmark's), with
    /// both sinks: `soak.json`, `soak.md`, `soak.svg` in `--out`.
    #[arg(long)]
    soak_minutes: Option<u64>,
    /// The soak's offered rate, pings/s, instead of half the ramp's.
    #[arg(long, requires = "soak_minutes")]
    soak_rate: Option<f64>,
    /// Seconds between the soak's samples.
    #[arg(long, default_value_t = 10, requires = "soak_minutes")]
    soak_sample_secs: u64,
}

/// Messages per connection awaiting their durable acknowledgement: the
/// publisher's window. 8 connections × 2,000 messages keeps fleetpipe busy
/// up to ~16,000 messages in flight, far beyond what saturates it, and
/// bounds what the broker holds (so nothing is dropped on the way).
const MAX_PENDING: u32 = 2_000;

/// What the fleetpipe phases produce.
struct FleetpipeRuns {
    ramp: Vec<Step>,
    saturated: f64,
    batched: Step,
    latency: LatencyResult,
    totals: Totals,
    peak_rss: u64,
    timeline: Vec<Sample>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started_at = now_rfc3339();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let vehicles = args
        .vehicles
        .unwrap_or(if args.quick { 5_000 } else { 10_000 });
    let step = Duration::from_secs(args.step_secs.unwrap_or(if args.quick { 8 } else { 20 }));
    let encoding = match args.encoding.as_str() {
        "json" => Encoding::Json,
        "protobuf" => Encoding::Protobuf,
        other => bail!("--encoding {other:?}: json or protobuf"),
    };
    if !args.fleetpipe.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p fleetpipe)",
            args.fleetpipe.display()
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let sim = SimConfig {
        vehicles,
        ..SimConfig::default()
    };
    let fences_geojson = Fleet::new(&sim, 0)?.city().geofences_geojson();
    let fences = args.out.join("fences.geojson");
    std::fs::write(&fences, &fences_geojson)?;

    let progress = ProgressBar::new_spinner();
    progress.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {msg}",
    )?);
    progress.enable_steady_tick(Duration::from_millis(200));

    if let Some(minutes) = args.soak_minutes {
        let report = soak::run(&args, minutes, &sim, encoding, step, &fences, &progress).await?;
        progress.finish_and_clear();
        println!("{}", report.markdown());
        println!(
            "results: {}/soak.json, soak.md, soak.svg",
            args.out.display()
        );
        return Ok(());
    }

    let runs = fleetpipe_runs(&args, &sim, encoding, step, &fences, &progress).await?;

    progress.set_message("memory per vehicle (enrichment state)");
    let memory_vehicles =
        args.memory_vehicles
            .unwrap_or(if args.quick { 200_000 } else { 1_000_000 });
    let memory = tokio::task::spawn_blocking(move || memory_per_vehicle(memory_vehicles)).await??;

    let peers = if args.no_peers {
        Peers {
            notes: vec!["peers not run (--no-peers)".to_owned()],
            ..Peers::default()
        }
    } else {
        run_peers(&args, &sim, encoding, step, &fences_geojson, &progress).await
    };
    progress.finish_and_clear();

    let micro = read_criterion(&args.criterion);
    let targets = targets(&runs, &memory, &peers, &micro);
    let report = Report {
        machine: machine(&args.pg_url).await,
        started_at,
        command,
        settings: Settings {
            vehicles,
            connections: args.connections,
            encoding: args.encoding.clone(),
            step_s: step.as_secs_f64(),
            batch: args.batch,
            quick: args.quick,
        },
        saturated_per_s: runs.saturated,
        ramp: runs.ramp,
        batched: Some(runs.batched),
        latency: runs.latency,
        peak_rss_bytes: runs.peak_rss,
        memory,
        totals: runs.totals,
        peers,
        targets,
        micro,
        timeline: runs.timeline,
    };
    report.write(&args.out)?;
    println!("{}", report.markdown());
    println!(
        "results: {}/result.json, summary.md, throughput.svg, latency.svg",
        args.out.display()
    );
    Ok(())
}

/// fleetpipe started on a fresh `schema` with the run's fences, and the
/// sampler reading it.
async fn start_fleetpipe(
    args: &Args,
    schema: &str,
    fences: &Path,
    progress: &ProgressBar,
) -> anyhow::Result<(Fleetpipe, Sampler)> {
    peers::drop_schema(&args.pg_url, schema).await?;
    let run_cfg = RunConfig {
        pg_url: args.pg_url.clone(),
        schema: schema.to_owned(),
        fences: std::path::absolute(fences)?,
        state_dir: std::path::absolute(args.out.join("state"))?,
    };
    let config = args.out.join("fleetpipe.toml");
    std::fs::write(&config, run_cfg.to_toml())?;
    progress.set_message("starting fleetpipe");
    let fp = Fleetpipe::start(&args.fleetpipe, &config, &args.out.join("fleetpipe.log")).await?;
    let sampler = Sampler::new(fp.pid, fp.ops);
    Ok((fp, sampler))
}

/// The publisher of one phase: the run's fleet with its own vehicles (id
/// `prefix`, so no phase's sequence numbers or device times collide with
/// another's), QoS 1 over `mqtt`, waiting for durable acknowledgements.
fn publisher_config(
    args: &Args,
    sim: &SimConfig,
    encoding: Encoding,
    mqtt: std::net::SocketAddr,
    prefix: &str,
    rate: Rate,
    pings_per_message: u32,
) -> PublisherConfig {
    PublisherConfig {
        sim: SimConfig {
            id_prefix: prefix.to_owned(),
            pings_per_message,
            max_batch: pings_per_message.max(1),
            ..sim.clone()
        },
        transport: Transport::Mqtt(MqttConfig {
            addr: mqtt.to_string(),
            qos: 1,
            connections: args.connections,
            ack: AckMode::AckTopic,
            max_pending: MAX_PENDING,
            ..MqttConfig::default()
        }),
        encoding,
        rate,
        duration: None,
        max_pings: None,
        max_backdate: Duration::from_secs(6 * 3600),
        drain_timeout: Duration::from_secs(30),
    }
}

/// What the ramp found.
struct Ramp {
    steps: Vec<Step>,
    /// The highest durable rate of any step.
    saturated: f64,
    /// Pings the ramp's publisher had acknowledged.
    published: u64,
}

/// Phase 1, the ramp. Flow control is MQTT's own (PUBACK on receipt, 100
/// in flight per connection), as firmware publishes; what counts is what
/// the sinks report durable, not what was sent. Returns once fleetpipe has
/// worked off the ramp's backlog.
async fn ramp(
    args: &Args,
    sampler: &mut Sampler,
    config: PublisherConfig,
    step: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<Ramp> {
    let publisher = Publisher::new(config)?;
    let stats = publisher.stats();
    let control = publisher.rate_control();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(publisher_run(publisher, cancel.clone()));
    let mut steps = Vec::new();
    let mut rate = args.start_rate;
    loop {
        control.set(Rate::PerSecond(rate));
        let r = sampler
            .step(&stats, &format!("ramp {rate:.0}/s"), rate, step, progress)
            .await?;
        let short = r.durable_per_s < 0.9 * rate;
        steps.push(r);
        if short || rate > 1_000_000.0 {
            break;
        }
        rate *= args.ramp_factor;
    }
    control.set(Rate::Max);
    steps.push(
        sampler
            .step(&stats, "ramp max", 0.0, step, progress)
            .await?,
    );
    cancel.cancel();
    let published = handle.await??.acked_pings;
    let saturated = steps.iter().map(|r| r.durable_per_s).fold(0.0, f64::max);
    progress.set_message("fleetpipe catching up with the ramp's backlog");
    sampler
        .wait_durable(published, Duration::from_secs(300))
        .await?;
    Ok(Ramp {
        steps,
        saturated,
        published,
    })
}

/// Phases 1–3 against one fleetpipe process.
async fn fleetpipe_runs(
    args: &Args,
    sim: &SimConfig,
    encoding: Encoding,
    step: Duration,
    fences: &Path,
    progress: &ProgressBar,
) -> anyhow::Result<FleetpipeRuns> {
    let schema = "fleetpipe_e2e";
    let (fp, mut sampler) = start_fleetpipe(args, schema, fences, progress).await?;
    let publisher_cfg = |prefix: &str, rate: Rate, pings_per_message: u32| {
        publisher_config(
            args,
            sim,
            encoding,
            fp.mqtt,
            prefix,
            rate,
            pings_per_message,
        )
    };

    // 1. Ramp.
    let Ramp {
        steps: ramp,
        saturated,
        mut published,
    } = ramp(
        args,
        &mut sampler,
        publisher_cfg("sim-", Rate::PerSecond(args.start_rate), 1),
        step,
        progress,
    )
    .await?;

    // 2. Batched, as fast as MQTT's flow control allows.
    let batched_publisher = Publisher::new(publisher_cfg("simb-", Rate::Max, args.batch))?;
    let batched_stats = batched_publisher.stats();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(publisher_run(batched_publisher, cancel.clone()));
    let batched = sampler
        .step(
            &batched_stats,
            &format!("batched ×{}", args.batch),
            0.0,
            step,
            progress,
        )
        .await?;
    cancel.cancel();
    published += handle.await??.acked_pings;
    progress.set_message("fleetpipe catching up with the batched backlog");
    sampler
        .wait_durable(published, Duration::from_secs(300))
        .await?;

    // 3. Latency at half the saturated rate: each message is timed from
    // its publish to fleetpipe's durable acknowledgement on the vehicle's
    // ack topic (every ping of the vehicle up to that seq is in both sinks).
    let half = (saturated / 2.0).max(100.0);
    let latency_publisher = Publisher::new(publisher_cfg("siml-", Rate::PerSecond(half), 1))?;
    let latency_stats = latency_publisher.stats();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(publisher_run(latency_publisher, cancel.clone()));
    let l = sampler
        .step(&latency_stats, "latency", half, step * 2, progress)
        .await?;
    let window = sampler.last_histogram();
    let latency = LatencyResult {
        offered_per_s: half,
        durable_per_s: l.durable_per_s,
        samples: window.len(),
        p50_ms: quantile_ms(&window, 0.5),
        p99_ms: quantile_ms(&window, 0.99),
        max_ms: window.max() as f64 / 1000.0,
    };
    cancel.cancel();
    published += handle.await??.acked_pings;

    // Count what the sinks hold while the embedded Kafka (inside fleetpipe)
    // is still up.
    progress.set_message("counting what the database and Kafka hold");
    sampler
        .wait_durable(published, Duration::from_secs(120))
        .await?;
    let totals = Totals {
        acked_pings: published,
        db_rows: counts::db_rows(&args.pg_url, schema).await?,
        database_mode: counts::database_mode(&args.pg_url, schema).await?,
        kafka_messages: counts::kafka_messages(&fp.kafka, "fleet.telemetry.v1").await?,
    };
    progress.set_message("stopping fleetpipe (SIGTERM: it drains)");
    let peak_rss = sampler.peak_rss();
    let status = fp.stop(Duration::from_secs(120)).await?;
    if !status.success() {
        bail!("fleetpipe exited with {status}");
    }
    peers::drop_schema(&args.pg_url, schema).await?;
    Ok(FleetpipeRuns {
        ramp,
        saturated,
        batched,
        latency,
        totals,
        peak_rss,
        timeline: sampler.timeline,
    })
}

async fn publisher_run(
    publisher: Publisher,
    cancel: CancellationToken,
) -> anyhow::Result<fleetpipe_sim::Stats> {
    Ok(publisher.run(cancel).await?)
}

/// Samples fleetpipe and the publisher once a second.
struct Sampler {
    pid: u32,
    http: std::net::SocketAddr,
    client: reqwest::Client,
    t0: Instant,
    timeline: Vec<Sample>,
    peak_rss: u64,
    last_histogram: Histogram<u64>,
}

/// One reading.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    durable: Durable,
    proc: ProcSample,
    /// This process's CPU seconds: the simulator publishing and timing.
    own_cpu_s: f64,
    /// The machine's busy CPU seconds (fleetpipe, simulator, PostgreSQL, ...).
    machine_busy_s: f64,
    sent: u64,
}

impl Sampler {
    fn new(pid: u32, http: std::net::SocketAddr) -> Self {
        Self {
            pid,
            http,
            client: reqwest::Client::new(),
            t0: Instant::now(),
            timeline: Vec::new(),
            peak_rss: 0,
            last_histogram: new_histogram(),
        }
    }

    async fn read(&mut self, stats: &StatsHandle) -> anyhow::Result<Reading> {
        let durable = counts::scrape(&self.client, self.http).await?;
        let proc = proc_sample(self.pid).context("fleetpipe is gone")?;
        self.peak_rss = self.peak_rss.max(proc.peak_rss_bytes);
        Ok(Reading {
            at: Instant::now(),
            durable,
            proc,
            own_cpu_s: proc_sample(std::process::id()).map_or(0.0, |p| p.cpu_s),
            machine_busy_s: process::machine_busy_s(),
            sent: stats.snapshot().sent_pings,
        })
    }

    /// Runs one phase for `length`, a sample per second; the phase's rates
    /// leave out its first quarter (the queues of the previous rate drain).
    async fn step(
        &mut self,
        stats: &StatsHandle,
        phase: &str,
        offered: f64,
        length: Duration,
        progress: &ProgressBar,
    ) -> anyhow::Result<Step> {
        let start = Instant::now();
        let mut prev = self.read(stats).await?;
        let _ = stats.take_window_histogram();
        let mut hist = new_histogram();
        let mut settled: Option<Reading> = None;
        while start.elapsed() < length {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.read(stats).await?;
            let window = stats.take_window_histogram().unwrap_or_else(new_histogram);
            let dt = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
            let sample = Sample {
                t_s: now.at.duration_since(self.t0).as_secs_f64(),
                phase: phase.to_owned(),
                offered_per_s: offered,
                sent_per_s: now.sent.saturating_sub(prev.sent) as f64 / dt,
                timescale_per_s: now.durable.timescale.saturating_sub(prev.durable.timescale)
                    as f64
                    / dt,
                kafka_per_s: now.durable.kafka.saturating_sub(prev.durable.kafka) as f64 / dt,
                p50_ms: quantile_ms(&window, 0.5),
                p99_ms: quantile_ms(&window, 0.99),
                cpu_cores: (now.proc.cpu_s - prev.proc.cpu_s) / dt,
                rss_mib: now.proc.rss_bytes as f64 / 1048576.0,
            };
            progress.set_message(format!(
                "{phase}: sent {:.0}/s, durable {:.0}/s (db) {:.0}/s (kafka), p99 {:.0} ms, cpu {:.2} cores, rss {:.0} MiB",
                sample.sent_per_s, sample.timescale_per_s, sample.kafka_per_s, sample.p99_ms, sample.cpu_cores, sample.rss_mib
            ));
            self.timeline.push(sample);
            if settled.is_some() {
                hist.add(&window).context("merging latency histograms")?;
            } else if start.elapsed() >= length / 4 {
                settled = Some(now);
            }
            prev = now;
        }
        let from = settled.unwrap_or(prev);
        let dt = prev.at.duration_since(from.at).as_secs_f64().max(1e-3);
        let durable = prev.durable.both().saturating_sub(from.durable.both()) as f64;
        let cpu = prev.proc.cpu_s - from.proc.cpu_s;
        let step = Step {
            offered_per_s: offered,
            sent_per_s: prev.sent.saturating_sub(from.sent) as f64 / dt,
            durable_per_s: durable / dt,
            cpu_s_per_1k: if durable > 0.0 {
                cpu / durable * 1000.0
            } else {
                0.0
            },
            cpu_cores: cpu / dt,
            simulator_cores: (prev.own_cpu_s - from.own_cpu_s) / dt,
            machine_cores: (prev.machine_busy_s - from.machine_busy_s) / dt,
            p99_ms: quantile_ms(&hist, 0.99),
        };
        self.last_histogram = hist;
        Ok(step)
    }

    /// The latency histogram of the last step (after its first quarter).
    fn last_histogram(&self) -> Histogram<u64> {
        self.last_histogram.clone()
    }

    fn peak_rss(&self) -> u64 {
        self.peak_rss
    }

    /// Waits until both sinks report at least `pings` telemetry records
    /// durable (fleetpipe has worked off what the broker buffered).
    async fn wait_durable(&mut self, pings: u64, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let now = counts::scrape(&self.client, self.http).await?;
            if now.both() >= pings {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "after {limit:?}, {} of {pings} published pings are durable in both sinks ({now:?})",
                    now.both()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 h, 3 significant digits (as the simulator's).
    // The bounds are constants that hdrhistogram accepts.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Resident memory per vehicle of enrichment's state: `n` vehicles, two
/// pings each (so each has a previous position, a reorder buffer and
/// offline timer), tracked in this process with the binary's allocator.
fn memory_per_vehicle(n: u64) -> anyhow::Result<MemoryResult> {
    use fleetpipe_enrich::{EnrichConfig, Tracker};
    use fleetpipe_model::{Accepted, Ack, Gateway, Origin, Ping, VehicleId};

    let index = fleetpipe_geofence::shared(fleetpipe_geofence::GeofenceIndex::default());
    let before = process::own_rss();
    let heap_before = GLOBAL.allocated();
    let mut tracker = Tracker::new(&EnrichConfig::default(), index)?;
    let mut out = Vec::with_capacity(64);
    let t0 = 1_795_420_800_000_i64;
    for round in 0..2_i64 {
        for i in 0..n {
            let ts = t0 + round * 1000;
            let ping = Ping {
                seq: Some(round as u64),
                speed_kmh: Some(30.0),
                accuracy_m: Some(5.0),
                soc_pct: Some(80.0),
                ignition: Some(true),
                ..Ping::new(
                    VehicleId::parse(&format!("veh-{i:07}"))?,
                    ts,
                    52.4 + (i % 1000) as f64 * 1e-4,
                    13.3 + (i / 1000) as f64 * 1e-4 + round as f64 * 1e-4,
                )
            };
            let origin = Origin {
                gateway: Gateway::Mqtt,
                client: None,
                received_at: ts,
            };
            tracker.ingest(
                Accepted {
                    ping,
                    origin,
                    ack: Ack::none(),
                },
                &mut out,
            );
            out.clear();
        }
    }
    drop(out);
    let after = process::own_rss();
    let heap_after = GLOBAL.allocated();
    let vehicles = tracker.vehicles() as u64;
    drop(tracker);
    let per_vehicle = |bytes: u64| bytes as f64 / vehicles.max(1) as f64;
    Ok(MemoryResult {
        vehicles,
        bytes_per_vehicle: per_vehicle(heap_after.saturating_sub(heap_before) as u64),
        rss_bytes_per_vehicle: per_vehicle(after.saturating_sub(before)),
    })
}

/// Criterion's results under `dir` (`*/new/estimates.json` with their
/// `benchmark.json`).
fn read_criterion(dir: &Path) -> Vec<Micro> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some(m) = read_micro(&p) {
                        out.push(m);
                    }
                } else if p
                    .file_name()
                    .is_none_or(|n| n != "base" && n != "change" && n != "report")
                {
                    stack.push(p);
                }
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn read_micro(new: &Path) -> Option<Micro> {
    let bench: serde_json::Value =
        serde_json::from_slice(&std::fs::read(new.join("benchmark.json")).ok()?).ok()?;
    let est: serde_json::Value =
        serde_json::from_slice(&std::fs::read(new.join("estimates.json")).ok()?).ok()?;
    Some(Micro {
        id: bench["full_id"].as_str()?.to_owned(),
        mean_ns: est["mean"]["point_estimate"].as_f64()?,
        elements: bench["throughput"]["Elements"].as_u64(),
    })
}

fn targets(
    runs: &FleetpipeRuns,
    memory: &MemoryResult,
    peers: &Peers,
    micro: &[Micro],
) -> Vec<Target> {
    let mut t = vec![
        Target {
            target: "≥ 50,000 pings/s end to end (QoS 1, one ping per message)".into(),
            measured: format!("{:.0} pings/s", runs.saturated),
            met: Some(runs.saturated >= 50_000.0),
        },
        Target {
            target: "more with batched messages".into(),
            measured: format!("{:.0} pings/s", runs.batched.durable_per_s),
            met: Some(runs.batched.durable_per_s > runs.saturated),
        },
        Target {
            target: "p99 publish → durable ≤ 250 ms at half the saturated rate".into(),
            measured: format!(
                "{:.1} ms at {:.0} pings/s",
                runs.latency.p99_ms, runs.latency.offered_per_s
            ),
            met: Some(runs.latency.samples > 0 && runs.latency.p99_ms <= 250.0),
        },
        Target {
            target: "≤ 1 KiB of state per vehicle".into(),
            measured: format!(
                "{:.0} bytes live on the heap ({:.0} bytes of RSS) per vehicle, {} vehicles",
                memory.bytes_per_vehicle, memory.rss_bytes_per_vehicle, memory.vehicles
            ),
            met: Some(memory.bytes_per_vehicle <= 1024.0),
        },
        Target {
            target: "nothing acknowledged is lost".into(),
            measured: format!(
                "{} acknowledged, {} in the database, {} in Kafka",
                runs.totals.acked_pings, runs.totals.db_rows, runs.totals.kafka_messages
            ),
            met: Some(
                runs.totals.db_rows >= runs.totals.acked_pings
                    && runs.totals.kafka_messages >= runs.totals.acked_pings,
            ),
        },
    ];
    let ratio = |target: &str, value: Option<f64>, min: f64| Target {
        target: target.into(),
        measured: value.map_or_else(|| "not measured".into(), |v| format!("{v:.2}×")),
        met: value.map(|v| v >= min),
    };
    t.push(ratio(
        "end-to-end rate ≥ 1.0× the Mosquitto relay",
        peers.mosquitto_relay_per_s.map(|r| runs.saturated / r),
        1.0,
    ));
    // The writer measured alone, against the ceiling on the same rows: the
    // end-to-end rate over the COPY peer (in the peers table) is bounded by
    // everything else on the machine, not by the writer.
    let mean_ns = |id: &str| micro.iter().find(|m| m.id == id).map(|m| m.mean_ns);
    t.push(ratio(
        "database writer ≥ 0.5× the raw COPY ceiling (measured alone: criterion `timescale/sink_rows` vs `timescale/raw_copy`, same rows)",
        mean_ns("timescale/raw_copy")
            .zip(mean_ns("timescale/sink_rows"))
            .map(|(copy, sink)| copy / sink),
        0.5,
    ));
    t.push(ratio(
        "geofence lookup ≥ 100× faster than PostGIS (from lat/lon)",
        peers
            .postgis_us_per_point
            .zip(peers.fleetpipe_lookup_us_per_point)
            .map(|(pg, fp)| pg / fp),
        100.0,
    ));
    t
}

async fn machine(pg_url: &str) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (postgres, postgres_settings) = async {
        let client = peers::connect(pg_url).await.ok()?;
        let row = client.query_one("SELECT version()", &[]).await.ok()?;
        let v: String = row.get(0);
        let settings = client
            .query(
                "SELECT name || '=' || setting || coalesce(' ' || unit, '') \
                 FROM pg_settings WHERE name = ANY($1) ORDER BY array_position($1, name)",
                &[&&report::PG_SETTINGS[..]],
            )
            .await
            .ok()?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        Some((v.split(" on ").next().unwrap_or(&v).to_owned(), settings))
    }
    .await
    .unwrap_or_default();
    Machine {
        cpu: host::this_cpu(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: host::memory_gib(),
        kernel: host::command("uname", &["-sr"]),
        rustc: host::command("rustc", &["--version"]),
        postgres,
        postgres_settings,
        kernel_writeback: report::WRITEBACK_SYSCTLS
            .iter()
            .map(|name| format!("vm.{name}={}", read(&format!("/proc/sys/vm/{name}")).trim()))
            .collect(),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The peers, each measured on the simulator's own pings and fences.
/// A peer that fails is reported as a note, not as a failed run.
async fn run_peers(
    args: &Args,
    sim: &SimConfig,
    encoding: Encoding,
    step: Duration,
    fences_geojson: &str,
    progress: &ProgressBar,
) -> Peers {
    let mut peers = Peers::default();
    progress.set_message("peer: Mosquitto relay");
    match mosquitto_relay(args, sim, encoding, step, &mut peers.notes).await {
        Ok(rate) => peers.mosquitto_relay_per_s = Some(rate),
        Err(e) => peers.notes.push(format!("Mosquitto relay failed: {e:#}")),
    }
    let n = if args.quick { 200_000 } else { 1_000_000 };
    let pings = sim_pings(sim, n);
    progress.set_message(format!("peer: raw COPY of {} rows", pings.len()));
    match peers::copy_ceiling(&args.pg_url, COPY_PEER_SCHEMA, &pings, 4, 10_000).await {
        Ok(r) => peers.copy_rows_per_s = Some(r.rows_per_sec),
        Err(e) => peers.notes.push(format!("raw COPY failed: {e:#}")),
    }
    drop_peer_schema(&args.pg_url, COPY_PEER_SCHEMA, &mut peers.notes).await;
    let points: Vec<(f64, f64)> = pings.iter().take(50_000).map(|p| (p.lat, p.lon)).collect();
    progress.set_message(format!("peer: PostGIS on {} points", points.len()));
    let postgis = peers::postgis_lookup(
        &args.pg_url,
        POSTGIS_PEER_SCHEMA,
        fences_geojson,
        &points,
        1_000,
    )
    .await;
    drop_peer_schema(&args.pg_url, POSTGIS_PEER_SCHEMA, &mut peers.notes).await;
    match postgis {
        Ok(pg) => match peers::fleetpipe_lookup(fences_geojson, &points) {
            Ok(fp) => {
                peers.postgis_us_per_point = Some(pg.per_point_ns / 1000.0);
                peers.fleetpipe_lookup_us_per_point = Some(fp.per_point_ns / 1000.0);
                peers.geofence_disagreements = Some(
                    pg.answers
                        .iter()
                        .zip(&fp.answers)
                        .filter(|(a, b)| a != b)
                        .count() as u64,
                );
            }
            Err(e) => peers.notes.push(format!("fleetpipe lookup failed: {e:#}")),
        },
        Err(e) => peers.notes.push(format!("PostGIS failed: {e:#}")),
    }
    peers
}

/// Schema of the raw COPY peer's table (dropped after the measurement).
const COPY_PEER_SCHEMA: &str = "fleetpipe_e2e_copy";
/// Schema of the PostGIS peer's fences (dropped after the measurement).
const POSTGIS_PEER_SCHEMA: &str = "fleetpipe_e2e_postgis";

/// Drops a peer's schema, so a run leaves no tables behind (the COPY peer's
/// holds a million rows); a failure becomes a note of the report.
async fn drop_peer_schema(url: &str, schema: &str, notes: &mut Vec<String>) {
    if let Err(e) = peers::drop_schema(url, schema).await {
        notes.push(format!("could not drop the peer schema {schema}: {e:#}"));
    }
}

/// The ramp's publisher and payloads against Mosquitto (QoS 1, one ping per
/// message, PUBACK flow control) and one QoS 1 subscriber counting what
/// Mosquitto delivers. The offered rate is raised as in fleetpipe's ramp; a
/// step counts only if every acknowledged publish reached the subscriber
/// (Mosquitto drops QoS 1 messages for a subscriber more than
/// `max_queued_messages`, 1000 by default, behind). The result is the
/// highest rate delivered without loss, messages/s.
async fn mosquitto_relay(
    args: &Args,
    sim: &SimConfig,
    encoding: Encoding,
    length: Duration,
    notes: &mut Vec<String>,
) -> anyhow::Result<f64> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use std::sync::atomic::{AtomicU64, Ordering};

    let prefix = format!("fleetpipe-e2e-{}", std::process::id());
    let (host, port) = args
        .mosquitto
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .context("--mosquitto is host:port")?;
    let mut opts = MqttOptions::new(format!("{prefix}-sub"), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(1000);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 10_000);
    client
        .subscribe(format!("{prefix}/+/telemetry"), QoS::AtLeastOnce)
        .await?;
    // Wait for the SUBACK so nothing published is missed.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            break;
        }
    }
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let sub = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let mut best = 0.0_f64;
    let mut rate = Some(args.start_rate);
    let mut step_no = 0u32;
    loop {
        step_no += 1;
        let publisher = Publisher::new(PublisherConfig {
            sim: SimConfig {
                id_prefix: format!("m{step_no}-"),
                ..sim.clone()
            },
            transport: Transport::Mqtt(MqttConfig {
                addr: args.mosquitto.clone(),
                qos: 1,
                connections: args.connections,
                topic_prefix: prefix.clone(),
                client_id_prefix: format!("{prefix}-{step_no}"),
                ack: AckMode::Puback,
                ..MqttConfig::default()
            }),
            encoding,
            rate: rate.map_or(Rate::Max, Rate::PerSecond),
            duration: Some(length),
            max_pings: None,
            max_backdate: Duration::from_secs(6 * 3600),
            drain_timeout: Duration::from_secs(30),
        })?;
        let before = received.load(Ordering::Relaxed);
        let started = Instant::now();
        let stats = publisher.run(CancellationToken::new()).await?;
        // Everything acknowledged must arrive: wait for the tail.
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            let got = received.load(Ordering::Relaxed) - before;
            if got >= stats.acked_messages || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let delivered = got as f64 / started.elapsed().as_secs_f64();
        let lossless = got >= stats.acked_messages;
        let offered = rate.map_or_else(|| "max".to_owned(), |r| format!("{r:.0}/s"));
        notes.push(format!(
            "Mosquitto relay at {offered}: {got} of {} acknowledged publishes delivered, {delivered:.0}/s",
            stats.acked_messages
        ));
        if lossless {
            best = best.max(delivered);
        }
        match rate {
            Some(r) if lossless && delivered >= 0.9 * r && r < 1_000_000.0 => {
                rate = Some(r * args.ramp_factor);
            }
            Some(_) => rate = None,
            None => break,
        }
    }
    let _ = client.disconnect().await;
    sub.abort();
    if best == 0.0 {
        bail!("no step was delivered without loss");
    }
    Ok(best)
}

/// `n` pings of the simulated fleet as fleetpipe's model pings.
fn sim_pings(sim: &SimConfig, n: usize) -> Vec<fleetpipe_model::Ping> {
    let Ok(mut fleet) = Fleet::new(sim, 1_795_420_800_000) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(n);
    let mut msgs = Vec::new();
    while out.len() < n {
        msgs.clear();
        if fleet.advance(1_000, &mut msgs) == 0 && fleet.next_due_ms().is_none() {
            break;
        }
        for m in &msgs {
            let Ok(vehicle_id) = fleetpipe_model::VehicleId::parse(&m.vehicle_id) else {
                continue;
            };
            for p in &m.pings {
                out.push(fleetpipe_model::Ping {
                    vehicle_id: vehicle_id.clone(),
                    seq: Some(p.seq),
                    ts_ms: p.ts_ms,
                    lat: p.lat,
                    lon: p.lon,
                    alt_m: Some(p.alt_m),
                    speed_kmh: Some(p.speed_kmh),
                    heading_deg: p.heading_deg,
                    accuracy_m: Some(p.accuracy_m),
                    soc_pct: Some(p.soc_pct),
                    battery_v: Some(p.battery_v),
                    charging: Some(p.charging),
                    odometer_km: Some(p.odometer_km),
                    ignition: Some(p.ignition),
                    dtcs: p.dtc.map(|d| vec![d.to_owned()]).unwrap_or_default(),
                    attrs: Default::default(),
                });
            }
        }
    }
    out.truncate(n);
    out
}
