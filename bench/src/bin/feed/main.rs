//! The live feed's fan-out benchmark: fleetpipe (the release binary, a
//! child process, role `all`) with the query API and `[api.feed]`; the
//! fleet simulator's vehicles send pings over the devices' WebSocket
//! (`GET /v1/ws`, each frame answered once its pings are durable), and
//! `--clients` WebSocket clients of `GET /v1/feed`, each subscribed to a
//! different bounding box over the simulated city, read what the feed
//! pushes. All in this process, on one clock.
//!
//! ```text
//! scripts/bench-feed.sh      # builds, ensures PostgreSQL, runs this
//! target/release/fleetpipe-feed-bench --help
//! ```
//!
//! Phases:
//!
//! 1. fleetpipe starts (the file sink by default; PostgreSQL only for the
//!    API's share-link table), the devices connect, and `--prime-secs` of
//!    pings at the target rate make every vehicle known to the feed;
//!    then the pings pause and fleetpipe's RSS is read (no clients).
//! 2. The clients connect and subscribe (the city cut into one tile per
//!    client, each widened by `--overlap` per side, so a ping matches a
//!    few); once every first snapshot is read, fleetpipe's RSS again: the
//!    difference over the clients is the memory per client.
//! 3. Pings at `--rate` for `--warmup-secs`, then the measured window of
//!    `--measure-secs`: fleetpipe's CPU (utime + stime) and `/metrics`
//!    (the feed's counters; its queue gauges sampled every second) at
//!    both ends. Then the pings stop and the last deliveries are awaited.
//!
//! Every position a client reads is matched with its ping by (vehicle,
//! device time) (the feed's messages carry no `seq`). Latency is delivery
//! time − the time the ping's answer (durable acknowledgement) was read,
//! **signed**: the feed takes each record from the fan-out like a sink, so
//! a position often reaches a client before the sink has made it durable
//! and the device has its answer. The report also gives send → delivery
//! and send → ack. Results: `summary.md`, `result.json`, `fleetpipe.log`
//! in `--out`.

mod dashboards;
mod devices;
mod fleetpipe;
mod report;
mod tiles;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use clap::Parser;
use fleetpipe_bench::procfs::{machine_busy_s, proc_sample};
use fleetpipe_bench::{host, peers};
use fleetpipe_sim::{Fleet, Node, SimConfig};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::dashboards::{Dashboards, Ready};
use crate::devices::Devices;
use crate::fleetpipe::{Fleetpipe, Metrics, RunConfig, Sink};
use crate::report::Run;
use crate::tiles::Tiles;

/// The schema of the run (the API's share-link table; the sink's tables
/// with `--sink timescale`), dropped first and at the end.
const SCHEMA: &str = "fp_feed_bench";
/// The fleet token the clients present.
const TOKEN: &str = "feed-bench-token";
/// Feed handshakes at once while the clients connect.
const CONNECTING: usize = 64;

#[derive(Debug, Parser)]
#[command(about = "fleetpipe's live feed: fan-out to many WebSocket clients under ingest load")]
struct Args {
    /// A short run: 100 clients, 200 vehicles, 2,000 pings/s, 3 s + 8 s.
    #[arg(long)]
    quick: bool,
    /// Output directory.
    #[arg(long, default_value = "target/feed-bench")]
    out: PathBuf,
    /// The fleetpipe binary (build it with `cargo build --release -p fleetpipe`).
    #[arg(long, default_value = "target/release/fleetpipe")]
    fleetpipe: PathBuf,
    /// PostgreSQL of the API (and of the TimescaleDB sink).
    #[arg(
        long,
        env = "FLEETPIPE_BENCH_PG_URL",
        default_value = "postgresql://postgres@127.0.0.1:5432/test"
    )]
    pg_url: String,
    /// Where fleetpipe makes pings durable before it answers.
    #[arg(long, value_enum, default_value = "file")]
    sink: Sink,
    /// Feed clients, each with its own box (default 1,000).
    #[arg(long)]
    clients: Option<usize>,
    /// Simulated vehicles, one device connection each (default 1,000).
    #[arg(long)]
    vehicles: Option<u32>,
    /// Offered pings/s (default 10,000).
    #[arg(long)]
    rate: Option<f64>,
    /// Widening of each client's tile on every side, share of its size (0–1).
    #[arg(long, default_value_t = 0.25)]
    overlap: f64,
    /// Seconds of pings before the clients connect (so snapshots hold every vehicle).
    #[arg(long)]
    prime_secs: Option<f64>,
    /// Seconds at the rate before the measured window (default 10).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// Seconds measured (default 30).
    #[arg(long)]
    measure_secs: Option<f64>,
    /// Frames per device connection awaiting their answer.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// How far in the past the simulation starts, hours (simulated time
    /// runs faster than the clock and may never pass it).
    #[arg(long, default_value_t = 12.0)]
    backdate_hours: f64,
    /// The simulation's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Record fleetpipe with `perf record --call-graph dwarf` over the measured window into
    /// this file (`perf report -i FILE` shows where its time goes).
    #[arg(long)]
    perf: Option<PathBuf>,
}

/// The settings after `--quick` and the defaults.
#[derive(Debug, Clone, Copy)]
struct Plan {
    clients: usize,
    vehicles: u32,
    rate: f64,
    prime: f64,
    warmup: f64,
    measure: f64,
}

impl Args {
    fn plan(&self) -> Plan {
        let q = self.quick;
        Plan {
            clients: self.clients.unwrap_or(if q { 100 } else { 1_000 }),
            vehicles: self.vehicles.unwrap_or(if q { 200 } else { 1_000 }),
            rate: self.rate.unwrap_or(if q { 2_000.0 } else { 10_000.0 }),
            prime: self.prime_secs.unwrap_or(if q { 2.0 } else { 3.0 }),
            warmup: self.warmup_secs.unwrap_or(if q { 3.0 } else { 10.0 }),
            measure: self.measure_secs.unwrap_or(if q { 8.0 } else { 30.0 }),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn micros_since(t0: Instant) -> i64 {
    i64::try_from(t0.elapsed().as_micros()).unwrap_or(i64::MAX)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let plan = args.plan();
    ensure!(
        plan.clients > 0 && plan.vehicles > 0 && plan.rate > 0.0 && plan.measure > 0.0,
        "--clients, --vehicles, --rate and --measure-secs must be positive"
    );
    ensure!(
        args.fleetpipe.exists(),
        "{} does not exist: cargo build --release -p fleetpipe (or --fleetpipe)",
        args.fleetpipe.display()
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {:?}", args.out))?;
    let out = std::fs::canonicalize(&args.out)?;
    let started = time::OffsetDateTime::now_utc();
    let load_before = loadavg();
    let t0 = Instant::now();

    let db = peers::connect(&args.pg_url).await.context("connect")?;
    db.batch_execute(&format!(
        "SET client_min_messages = warning; DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}"
    ))
    .await?;

    // The city and its fleet; fences from the simulator, as the demo has them.
    let sim = SimConfig {
        vehicles: plan.vehicles,
        seed: args.seed,
        ..SimConfig::default()
    };
    #[allow(clippy::cast_possible_truncation)]
    let backdate_ms = (args.backdate_hours * 3_600_000.0) as i64;
    let mut fleet = Fleet::new(&sim, wall_ms() - backdate_ms)?;
    let city = fleet.city();
    let blocks = city.grid_blocks();
    let (south, west) = city.node_lat_lon(Node { x: 0, y: 0 });
    let (north, east) = city.node_lat_lon(Node {
        x: blocks,
        y: blocks,
    });
    let tiles = Tiles::new([west, south, east, north], plan.clients, args.overlap)
        .map_err(anyhow::Error::msg)?;
    let fences = out.join("fences.geojson");
    std::fs::write(&fences, city.geofences_geojson())?;
    let data_dir = out.join("data");
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;

    let config = RunConfig {
        sink: args.sink,
        pg_url: args.pg_url.clone(),
        schema: SCHEMA.to_owned(),
        fences,
        data_dir: data_dir.clone(),
        token_sha256: fleetpipe_query::auth::token_hash(TOKEN).iter().fold(
            String::new(),
            |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            },
        ),
        max_clients: plan.clients.max(1000),
    };
    let config_path = out.join("fleetpipe.toml");
    std::fs::write(&config_path, config.to_toml())?;
    let fp = Fleetpipe::start(&args.fleetpipe, &config_path, &out.join("fleetpipe.log")).await?;
    eprintln!(
        "feed bench: fleetpipe {} running (pid {}), devices on {}, feed on {}, sink {}",
        args.fleetpipe.display(),
        fp.pid,
        fp.http,
        fp.api,
        args.sink.as_str()
    );
    let http = reqwest::Client::new();

    // ---- 1. devices, prime, RSS without clients ----
    let devices = Devices::connect(
        &format!("ws://{}/v1/ws", fp.http),
        plan.vehicles,
        args.window,
        t0,
    );
    let (rate_tx, rate_rx) = watch::channel(plan.rate);
    let produced = Arc::new(AtomicU64::new(0));
    let stop_driver = CancellationToken::new();
    let driver = {
        let (stop, produced) = (stop_driver.clone(), Arc::clone(&produced));
        tokio::spawn(async move {
            devices
                .drive(&mut fleet, rate_rx, stop, wall_ms(), &produced)
                .await;
            devices
        })
    };
    tokio::time::sleep(secs(plan.prime)).await;
    rate_tx.send_replace(0.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let primed = fp.metrics(&http).await?;
    let known = primed.sum("fleetpipe_feed_vehicles");
    let rss_no_clients = proc_sample(fp.pid).context("fleetpipe is gone")?.rss_bytes;
    eprintln!(
        "feed bench: primed with {} pings, {known} vehicles in the feed; RSS {} MiB",
        produced.load(Ordering::Relaxed),
        rss_no_clients >> 20
    );

    // ---- 2. clients ----
    let ready = Arc::new(Ready::default());
    let stop_clients = CancellationToken::new();
    let dash = Dashboards {
        url: format!("ws://{}/v1/feed", fp.api),
        token: TOKEN.to_owned(),
        prefix: sim.prefix().to_owned(),
        t0,
        ready: Arc::clone(&ready),
        stop: stop_clients.clone(),
        gate: Arc::new(Semaphore::new(CONNECTING)),
    };
    let connecting = Instant::now();
    let clients: Vec<_> = (0..plan.clients)
        .map(|i| tokio::spawn(dash.clone().client(tiles.bbox(i))))
        .collect();
    let n_ready = ready
        .wait(
            plan.clients,
            tokio::time::Instant::now() + Duration::from_secs(120),
        )
        .await;
    let ready_s = connecting.elapsed().as_secs_f64();
    eprintln!(
        "feed bench: {n_ready} of {} clients subscribed in {ready_s:.1} s",
        plan.clients
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_subscribed = proc_sample(fp.pid).context("fleetpipe is gone")?.rss_bytes;

    // ---- 3. load: warm-up, measured window ----
    rate_tx.send_replace(plan.rate);
    tokio::time::sleep(secs(plan.warmup)).await;
    let before = fp.metrics(&http).await?;
    let cpu0 = proc_sample(fp.pid).context("fleetpipe is gone")?.cpu_s;
    let own0 = proc_sample(std::process::id()).map_or(0.0, |p| p.cpu_s);
    let machine0 = machine_busy_s();
    let produced0 = produced.load(Ordering::Relaxed);
    let w0 = micros_since(t0);
    let perf = match &args.perf {
        Some(path) => Some(
            tokio::process::Command::new("perf")
                .args(["record", "-F", "99", "--call-graph", "dwarf,16384", "-o"])
                .arg(path)
                .args(["-p", &fp.pid.to_string(), "--", "sleep"])
                .arg(format!("{}", plan.measure))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("perf record")?,
        ),
        None => None,
    };
    let (mut max_bytes, mut max_messages) = (0.0_f64, 0.0_f64);
    let window_end = tokio::time::Instant::now() + secs(plan.measure);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(window_end) => break,
            _ = tick.tick() => {
                if let Ok(m) = fp.metrics(&http).await {
                    max_bytes = max_bytes.max(m.sum("fleetpipe_feed_queued_bytes"));
                    max_messages = max_messages.max(m.sum("fleetpipe_feed_queued_messages"));
                }
            }
        }
    }
    let w1 = micros_since(t0);
    let fp_end = proc_sample(fp.pid).context("fleetpipe is gone")?;
    let own1 = proc_sample(std::process::id()).map_or(0.0, |p| p.cpu_s);
    let machine1 = machine_busy_s();
    let produced1 = produced.load(Ordering::Relaxed);
    let after = fp.metrics(&http).await?;
    let load_after = loadavg();
    if let Some(mut perf) = perf {
        let status = tokio::time::timeout(Duration::from_secs(30), perf.wait()).await;
        eprintln!("feed bench: perf record: {status:?}");
    }
    eprintln!("feed bench: window done; draining");

    // ---- the end: last answers and deliveries ----
    rate_tx.send_replace(0.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_driver.cancel();
    let devices = driver.await.context("the driver")?;
    let device_outcomes = devices.finish(Duration::from_secs(15)).await;
    stop_clients.cancel();
    let mut client_outcomes = Vec::with_capacity(clients.len());
    for c in clients {
        client_outcomes.push(c.await.context("a client")?);
    }
    let status = fp.stop(Duration::from_secs(30)).await;
    db.batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    let _ = std::fs::remove_dir_all(&data_dir);

    // ---- the report ----
    let acked: Vec<_> = device_outcomes
        .iter()
        .flat_map(|o| o.acked.iter().copied())
        .collect();
    let joined = report::join(
        &acked,
        (w0, w1),
        &tiles,
        client_outcomes.iter().flat_map(|o| o.deliveries.iter()),
    );
    let mut refused = BTreeMap::new();
    for o in &device_outcomes {
        for (code, n) in &o.refused {
            *refused.entry(code.clone()).or_default() += n;
        }
    }
    let mut client_messages = BTreeMap::new();
    let mut client_closes = BTreeMap::new();
    for o in &client_outcomes {
        for (kind, n) in &o.messages {
            *client_messages.entry(kind.clone()).or_default() += n;
        }
        if let Some((code, reason)) = &o.closed {
            *client_closes.entry(format!("{code} {reason}")).or_default() += 1;
        }
    }
    let feed_counters = [
        "fleetpipe_feed_records_total",
        "fleetpipe_feed_messages_total",
        "fleetpipe_feed_coalesced_total",
        "fleetpipe_feed_dropped_total",
        "fleetpipe_feed_disconnects_total",
    ]
    .iter()
    .flat_map(|name| {
        after
            .grown(&before, name)
            .into_iter()
            .map(move |(labels, d)| (format!("{name}{labels}"), d))
    })
    .collect();
    let feed_gauges = gauges(&after);
    let sink_batches = after
        .grown(&before, "fleetpipe_sink_batch_seconds_count")
        .into_iter()
        .map(|(labels, n)| {
            let grown = |name: &str| {
                let series = format!("{name}{labels}");
                after.0.get(&series).copied().unwrap_or(0.0)
                    - before.0.get(&series).copied().unwrap_or(0.0)
            };
            let seconds = grown("fleetpipe_sink_batch_seconds_sum");
            let records = grown("fleetpipe_sink_batch_records_sum");
            (labels, n, seconds / n, records / n)
        })
        .collect();
    let m_per_deg_lat = 111_320.0;
    let m_per_deg_lon = m_per_deg_lat * south.to_radians().cos();
    #[allow(clippy::cast_precision_loss)]
    let tile_m = (
        (east - west) * m_per_deg_lon / tiles.cols as f64,
        (north - south) * m_per_deg_lat / tiles.rows as f64,
    );
    let run = Run {
        started: started
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        commit: host::command("git", &["describe", "--always", "--dirty"]),
        cpu: host::this_cpu(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: host::memory_gib(),
        kernel: host::command("uname", &["-sr"]),
        load_before,
        load_after,
        sink: args.sink.as_str().to_owned(),
        clients: plan.clients,
        vehicles: plan.vehicles,
        rate: plan.rate,
        overlap: args.overlap,
        tiles: (tiles.cols, tiles.rows),
        tile_m,
        warmup_s: plan.warmup,
        #[allow(clippy::cast_precision_loss)]
        measure_s: (w1 - w0) as f64 / 1e6,
        ready: n_ready,
        ready_s,
        snapshot_positions: client_outcomes.iter().map(|o| o.snapshot_positions).sum(),
        joined,
        produced: produced1 - produced0,
        refused,
        unanswered: device_outcomes.iter().map(|o| o.unanswered).sum(),
        device_errors: device_outcomes
            .iter()
            .filter_map(|o| o.error.clone())
            .collect(),
        client_messages,
        client_closes,
        client_errors: client_outcomes
            .iter()
            .filter_map(|o| o.error.clone())
            .collect(),
        fleetpipe_cpu_s: fp_end.cpu_s - cpu0,
        bench_cpu_s: own1 - own0,
        machine_cpu_s: machine1 - machine0,
        rss_no_clients,
        rss_subscribed,
        rss_loaded: fp_end.rss_bytes,
        rss_peak: fp_end.peak_rss_bytes,
        max_queued_bytes: max_bytes,
        max_queued_messages: max_messages,
        feed_counters,
        feed_gauges,
        sink_batches,
    };
    let summary = run.summary();
    std::fs::write(out.join("summary.md"), &summary)?;
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(&run.json())?,
    )?;
    println!("{summary}");
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => anyhow::bail!("fleetpipe exited with {s} after SIGTERM; see fleetpipe.log"),
        Err(e) => Err(e),
    }
}

/// The feed's gauges.
fn gauges(m: &Metrics) -> Vec<(String, f64)> {
    [
        "fleetpipe_feed_clients",
        "fleetpipe_feed_queued_bytes",
        "fleetpipe_feed_queued_messages",
        "fleetpipe_feed_vehicles",
        "fleetpipe_feed_window_messages",
    ]
    .iter()
    .flat_map(|name| {
        m.series(name)
            .map(move |(labels, v)| (format!("{name}{labels}"), v))
    })
    .collect()
}
