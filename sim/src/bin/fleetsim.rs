//! `fleetsim`: write the simulated city's geofences, print sample pings, or
//! publish a simulated fleet to fleetpipe and report throughput and
//! latency.
//!
//! ```text
//! fleetsim geofences --out fences.geojson --seed 1
//! fleetsim sample --vehicles 2 --seconds 30
//! fleetsim publish --mqtt 127.0.0.1:11883 --qos 1 --vehicles 1000 --rate 5000 --duration 60s
//! fleetsim publish --ws ws://127.0.0.1:8080/v1/ws --vehicles 200 --rate max --count 100000
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use fleetpipe_sim::{
    AckMode, Encoding, Fleet, Latency, MqttConfig, Publisher, PublisherConfig, Rate, SimConfig,
    Stats, Transport, WsConfig, encode,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "fleetpipe's fleet simulator and load publisher")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the simulated city's fences as GeoJSON (for `geofence.file`).
    Geofences {
        /// Output file; `-` for stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Print the messages the fleet publishes, one JSON message per line,
    /// simulated from `--seconds` ago until now.
    Sample {
        /// Simulated seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Publish the simulated fleet to fleetpipe.
    Publish(PublishArgs),
}

#[derive(Args)]
struct SimArgs {
    /// Simulation config file (TOML, the fields of `SimConfig`); the flags
    /// below override it.
    #[arg(long)]
    sim_config: Option<PathBuf>,
    /// Random seed (city layout and everything vehicles do).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of vehicles.
    #[arg(long)]
    vehicles: Option<u32>,
    /// Pings per message (a device batches this many).
    #[arg(long)]
    batch: Option<u32>,
}

impl SimArgs {
    fn load(&self) -> anyhow::Result<SimConfig> {
        let mut cfg = match &self.sim_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => SimConfig::default(),
        };
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        if let Some(v) = self.vehicles {
            cfg.vehicles = v;
        }
        if let Some(b) = self.batch {
            cfg.pings_per_message = b;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum AckArg {
    /// The broker's PUBACK (fleetpipe's embedded broker: in memory, not durable).
    Puback,
    /// fleetpipe's durable `{"ack":N}` on `{prefix}/{vehicle}/ack`.
    Topic,
}

#[derive(Args)]
struct PublishArgs {
    /// MQTT broker `host:port` (the default transport, 127.0.0.1:11883).
    #[arg(long, conflicts_with = "ws")]
    mqtt: Option<String>,
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/v1/ws (one connection per vehicle).
    #[arg(long)]
    ws: Option<String>,
    /// MQTT QoS, 0 or 1.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// MQTT connections (vehicles are spread over them).
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// MQTT topic prefix (`ingest.mqtt.topic_prefix`).
    #[arg(long, default_value = "fleet")]
    topic_prefix: String,
    /// What acknowledges an MQTT message.
    #[arg(long, value_enum, default_value = "puback")]
    ack: AckArg,
    /// Unacknowledged messages per connection (MQTT: QoS 1 in flight; WebSocket: frames).
    #[arg(long)]
    inflight: Option<u32>,
    /// Pings per second, `max`, or `realtime` (simulated time = wall time).
    #[arg(long, default_value = "realtime")]
    rate: Rate,
    /// Stop after this long, e.g. 60s, 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many pings.
    #[arg(long)]
    count: Option<u64>,
    /// json or protobuf.
    #[arg(long, default_value = "json")]
    encoding: Encoding,
    /// How far before now the simulation may start, e.g. 6h.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "6h")]
    max_backdate: Duration,
    /// How long to wait for outstanding acknowledgements at the end.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain: Duration,
    /// Also write the city's fences to this file before publishing.
    #[arg(long)]
    fences_out: Option<PathBuf>,
    #[command(flatten)]
    sim: SimArgs,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Geofences { out, sim } => {
            let fleet = Fleet::new(
                &SimConfig {
                    vehicles: 0,
                    ..sim.load()?
                },
                0,
            )?;
            write_out(&out, &fleet.city().geofences_geojson())
        }
        Command::Sample { seconds, sim } => sample(&sim.load()?, seconds),
        Command::Publish(args) => tokio::runtime::Runtime::new()?.block_on(publish(args)),
    }
}

fn write_out(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        println!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn sample(cfg: &SimConfig, seconds: u32) -> anyhow::Result<()> {
    let span = i64::from(seconds) * 1_000;
    let mut fleet = Fleet::new(cfg, now_ms() - span)?;
    let mut out = Vec::new();
    fleet.advance(span, &mut out);
    for msg in &out {
        println!("{}", String::from_utf8_lossy(&encode(msg, Encoding::Json)));
    }
    Ok(())
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let sim = args.sim.load()?;
    if let Some(path) = &args.fences_out {
        let fleet = Fleet::new(
            &SimConfig {
                vehicles: 0,
                ..sim.clone()
            },
            0,
        )?;
        write_out(path, &fleet.city().geofences_geojson())?;
    }
    let transport = match &args.ws {
        Some(url) => Transport::Ws(WsConfig {
            url: url.clone(),
            max_connections: sim.vehicles.max(WsConfig::default().max_connections),
            inflight: args.inflight.unwrap_or(WsConfig::default().inflight),
        }),
        None => Transport::Mqtt(MqttConfig {
            addr: args
                .mqtt
                .clone()
                .unwrap_or_else(|| MqttConfig::default().addr),
            qos: args.qos,
            connections: args.connections,
            topic_prefix: args.topic_prefix.clone(),
            inflight: args.inflight.map_or(MqttConfig::default().inflight, |n| {
                u16::try_from(n).unwrap_or(u16::MAX)
            }),
            ack: match args.ack {
                AckArg::Puback => AckMode::Puback,
                AckArg::Topic => AckMode::AckTopic,
            },
            ..MqttConfig::default()
        }),
    };
    if let Rate::PerSecond(r) = args.rate {
        // fleetpipe's default per-vehicle limit is 50 pings/s sustained.
        if r / f64::from(sim.vehicles.max(1)) > 50.0 {
            eprintln!(
                "warning: {r} pings/s over {} vehicles is above fleetpipe's default per-vehicle rate limit (50/s)",
                sim.vehicles
            );
        }
    }
    let publisher = Publisher::new(PublisherConfig {
        sim,
        transport,
        encoding: args.encoding,
        rate: args.rate,
        duration: args.duration,
        max_pings: args.count,
        max_backdate: args.max_backdate,
        drain_timeout: args.drain,
    })?;
    let stats = publisher.stats();
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: draining");
            on_signal.cancel();
        }
    });
    let reporter = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut prev = stats.snapshot();
            loop {
                tick.tick().await;
                let now = stats.snapshot();
                if now.finished {
                    break;
                }
                println!("{}", progress_line(&prev, &now, &stats.take_window()));
                prev = now;
            }
        })
    };
    let total = publisher.run(cancel).await?;
    reporter.abort();
    println!("{}", summary_line(&total));
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1_000.0)
}

fn progress_line(prev: &Stats, now: &Stats, window: &Latency) -> String {
    let dt = (now.elapsed.saturating_sub(prev.elapsed))
        .as_secs_f64()
        .max(1e-3);
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt;
    format!(
        "{:>5.0}s sent {} pings ({:.0}/s) acked {} ({:.0}/s) in-flight {} failed {} conns {} | p50 {} p99 {} max {} | sim lag {}s",
        now.elapsed.as_secs_f64(),
        now.sent_pings,
        rate(now.sent_pings, prev.sent_pings),
        now.acked_pings,
        rate(now.acked_pings, prev.acked_pings),
        now.in_flight_messages(),
        now.failed_messages,
        now.open_connections,
        ms(window.p50),
        ms(window.p99),
        ms(window.max),
        (now_ms() - now.sim_time_ms) / 1_000,
    )
}

fn summary_line(s: &Stats) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-3);
    let l = &s.latency;
    format!(
        "done in {secs:.1}s: sent {} pings in {} messages ({:.0} pings/s), acked {} pings in {} messages ({:.0} pings/s), rejected {}, failed {} messages, connection errors {} | latency p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        s.sent_pings,
        s.sent_messages,
        s.sent_pings as f64 / secs,
        s.acked_pings,
        s.acked_messages,
        s.acked_pings as f64 / secs,
        s.rejected_pings,
        s.failed_messages,
        s.connection_errors,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        l.count,
    )
}
