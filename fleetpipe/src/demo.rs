//! `fleetpipe demo`: the pipeline on a configuration (by default the quick
//! start's) with a simulated fleet driving through it, so a newcomer sees
//! pings flow in and state-change events come out on one machine.
//!
//! The fleet is `fleetpipe-sim`'s synthetic city: vans driving delivery
//! tours between depots, customers and charging stations, publishing over
//! MQTT (QoS 1, wire contract v1 JSON) to the embedded broker and waiting
//! for fleetpipe's durable acknowledgements on their ack topics. The city's
//! fences replace `geofence.file`, so geofence, arrival and overspeed events
//! happen. A summary line is printed every `report_every`.
//!
//! With `--database` the demo also stores what the fleet sends in
//! PostgreSQL (`[sink.timescale]`, in a schema of its own) and serves the
//! query API, the live feed and the live map page on loopback (`[api]`,
//! `[api.feed]`) with a fleet token made for the run, and prints the map's
//! address with that token in its fragment. Without a database (none given,
//! or the one given cannot be reached) it runs as before and says in one
//! line how to get the map.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetpipe_ingest::auth::AuthMode;
use fleetpipe_ingest::mqtt::EmbeddedConfig;
use fleetpipe_sim::{
    AckMode, Encoding, Fleet, MqttConfig, Publisher, PublisherConfig, Rate, SimConfig, Stats,
    Transport,
};
use tokio_util::sync::CancellationToken;

use crate::ops::{self, MetricValues};
use crate::{Config, Pipeline};

/// What the demo simulates and for how long (the `fleetpipe demo` flags).
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Simulated vehicles.
    #[arg(long, default_value_t = 200)]
    pub vehicles: u32,
    /// Seed of the simulated city and fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// "realtime" (the fleet lives at wall-clock speed), "max" (as fast as
    /// acknowledgements allow) or pings per second.
    #[arg(long, default_value = "realtime")]
    pub rate: Rate,
    /// Stop after this long (e.g. 60s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Where the simulated city's fences are written (they become
    /// `geofence.file`).
    #[arg(long, default_value = "data/demo/fences.geojson")]
    pub fences_out: PathBuf,
    /// Interval between summary lines.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub report_every: Duration,
    /// PostgreSQL for the live map: the demo stores the fleet's pings and
    /// events there and serves the query API, the feed and the map page.
    /// `--database` alone means postgresql://postgres@127.0.0.1:5432/test.
    /// Without it (or when it cannot be reached) there is no map.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = DEFAULT_DATABASE)]
    pub database: Option<String>,
    /// Schema of the demo's tables in `--database` (created when missing,
    /// kept between runs).
    #[arg(long, default_value = "fleetpipe_demo")]
    pub database_schema: String,
    /// Where the query API and the map listen with `--database`; when that
    /// port is taken, a free one (the printed address says which).
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub map_listen: SocketAddr,
}

/// The database `--database` without a value means: the local PostgreSQL
/// of the development machines and of `scripts/test.sh`.
pub const DEFAULT_DATABASE: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// How long the demo waits for `--database` before going on without a map.
const DATABASE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The demo's outcome: what the fleet published and what came out.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The publisher's totals.
    pub fleet: Stats,
    /// Events emitted, by CloudEvents type, sorted by type.
    pub events: Vec<(String, u64)>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The configuration does not let a simulated fleet in.
    #[error("{0}")]
    Config(String),
    /// The simulator refused its settings or failed.
    #[error("simulator: {0}")]
    Sim(#[from] fleetpipe_sim::SimError),
    /// The fences file could not be written.
    #[error("writing {path}: {source}")]
    Fences {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The pipeline failed to start or to stop cleanly.
    #[error(transparent)]
    Pipeline(#[from] crate::PipelineError),
}

/// Runs the pipeline with a simulated fleet until `options.duration` has
/// passed or `stop` fires, then stops the fleet first (it waits for its last
/// acknowledgements, so what it sent is durable) and drains the pipeline.
/// Summary lines go to `out`.
pub async fn run(
    mut config: Config,
    options: DemoOptions,
    stop: CancellationToken,
    mut out: impl std::io::Write + Send,
) -> Result<DemoSummary, DemoError> {
    let broker = demo_broker(&config)?;
    let sim = demo_fleet(&options);
    write_fences(&sim, &options.fences_out)?;
    config.geofence.file = Some(options.fences_out.clone());
    config.geofence.postgres = None;
    let map = map_or_why(&mut config, &options).await?;

    // The event counts are read back in process.
    let values = ops::metric_values().ok_or_else(|| {
        DemoError::Config("a metrics recorder without in-process values is installed".into())
    })?;
    let shutdown = CancellationToken::new();
    let pipeline = Pipeline::start(&config, shutdown.clone()).await?;
    let mqtt = pipeline
        .mqtt_addr()
        .ok_or_else(|| DemoError::Config("the embedded MQTT broker did not start".into()))?;
    let publisher = Publisher::new(publisher_config(sim, &broker, mqtt, &options))?;
    let stats = publisher.stats();
    let mut fleet = tokio::spawn(publisher.run(stop));
    banner(&mut out, &options, &pipeline, mqtt, &map)?;

    let started = Instant::now();
    let mut ticker = tokio::time::interval(options.report_every);
    ticker.tick().await;
    // The fleet stops on its own after `duration`, or on `stop`.
    let finished = loop {
        tokio::select! {
            done = &mut fleet => break done,
            _ = ticker.tick() => {
                let events = events_by_type(&values);
                let _ = writeln!(out, "{}", summary_line(started.elapsed(), &stats.snapshot()));
                let _ = writeln!(out, "         {}", events_line(&events));
            }
        }
    };
    // The fleet has its acknowledgements (or gave up on them): the pipeline
    // drains whatever is still queued.
    shutdown.cancel();
    pipeline.wait().await?;
    let fleet_stats = match finished {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => {
            return Err(DemoError::Config(format!(
                "the simulated fleet's task failed: {e}"
            )));
        }
    };
    let events = events_by_type(&values);
    let _ = writeln!(out, "{}", summary_line(started.elapsed(), &fleet_stats));
    let _ = writeln!(out, "{}", events_line(&events));
    Ok(DemoSummary {
        fleet: fleet_stats,
        events,
    })
}

/// With `--database`: the map added to `config` (see [`add_map`]), its
/// token returned; otherwise the line that says why there is no map.
async fn map_or_why(
    config: &mut Config,
    options: &DemoOptions,
) -> Result<Result<String, String>, DemoError> {
    let Some(url) = &options.database else {
        return Ok(Err(format!(
            "map: off (it needs PostgreSQL): fleetpipe demo --database [{DEFAULT_DATABASE}]"
        )));
    };
    match probe_database(url).await {
        Ok(()) => Ok(Ok(add_map(config, url, options)?)),
        Err(reason) => Ok(Err(format!(
            "map: off: the database {} cannot be reached ({reason}); \
             the map needs PostgreSQL: --database postgresql://USER@HOST:PORT/DB",
            redact(url)
        ))),
    }
}

/// The lines that tell a newcomer where everything is: the broker, the
/// metrics, the events and the map (or why there is none).
fn banner(
    out: &mut impl std::io::Write,
    options: &DemoOptions,
    pipeline: &Pipeline,
    mqtt: std::net::SocketAddr,
    map: &Result<String, String>,
) -> Result<(), DemoError> {
    let _ = writeln!(
        out,
        "fleetpipe demo: {} simulated vehicles publishing to mqtt://{mqtt} (fences: {}); \
         metrics at http://{}/metrics{}",
        options.vehicles,
        options.fences_out.display(),
        pipeline.ops_addr(),
        pipeline
            .kafka_bootstrap()
            .map(|b| format!("; events: kcat -b {b} -t fleet.events.v1 -C"))
            .unwrap_or_default(),
    );
    match (map, pipeline.api_addr()) {
        (Ok(token), Some(api)) => {
            let _ = writeln!(out, "map: http://{api}/map#token={token}");
        }
        (Ok(_), None) => {
            return Err(DemoError::Config(
                "the query API did not start for the map".into(),
            ));
        }
        (Err(why), _) => {
            let _ = writeln!(out, "{why}");
        }
    }
    Ok(())
}

/// The embedded broker's settings, when the configuration lets a
/// simulated fleet in: the embedded broker, and no device credentials.
fn demo_broker(config: &Config) -> Result<EmbeddedConfig, DemoError> {
    let Some(broker) = config.ingest.mqtt.embedded().cloned() else {
        return Err(DemoError::Config(
            "the demo's fleet publishes to the embedded MQTT broker: set ingest.mqtt.mode = \"embedded\"".into(),
        ));
    };
    if config.ingest.auth.mode != AuthMode::None {
        return Err(DemoError::Config(
            "the demo's vehicles have no credentials: set ingest.auth.mode = \"none\"".into(),
        ));
    }
    Ok(broker)
}

/// Whether `url` answers a connection within [`DATABASE_PROBE_TIMEOUT`];
/// why not, in words.
async fn probe_database(url: &str) -> Result<(), String> {
    let settings = fleetpipe_postgres::PostgresConfig {
        connect_timeout: Some(DATABASE_PROBE_TIMEOUT),
        ..fleetpipe_postgres::PostgresConfig::new(url)
    };
    let postgres =
        fleetpipe_postgres::Postgres::from_config("demo.database", &settings, "fleetpipe-demo")
            .map_err(|e| e.to_string())?;
    let (client, task) = postgres
        .connect()
        .await
        .map_err(|e| fleetpipe_postgres::describe(&e))?;
    drop(client);
    task.abort();
    Ok(())
}

/// The URL without its password, for a line on the terminal.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Adds what the map needs to `config`: the TimescaleDB sink on `url` in
/// the demo's schema, the query API with the live feed on
/// `options.map_listen` (a free port when that one is taken), and one
/// fleet token made for this run. Returns the token: it is shown once, in
/// the map's address, and only its hash is in the configuration.
fn add_map(config: &mut Config, url: &str, options: &DemoOptions) -> Result<String, DemoError> {
    let schema = options.database_schema.clone();
    fleetpipe_postgres::sql::check_identifier(&schema)
        .map_err(|e| DemoError::Config(format!("--database-schema: {e}")))?;
    config.sink.timescale = Some(fleetpipe_sink::TimescaleConfig {
        schema: schema.clone(),
        ..fleetpipe_sink::TimescaleConfig::new(url)
    });
    let token = fleetpipe_query::auth::new_api_token();
    let sha256: String = fleetpipe_query::auth::token_hash(&token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // A quick start on a busy machine: when the usual port is taken, any
    // free one (the printed address names it).
    let listen = match std::net::TcpListener::bind(options.map_listen) {
        Ok(probe) => {
            drop(probe);
            options.map_listen
        }
        Err(_) => SocketAddr::new(options.map_listen.ip(), 0),
    };
    config.api = Some(fleetpipe_query::ApiConfig {
        listen,
        schema,
        tokens: vec![fleetpipe_query::TokenConfig {
            name: "demo".to_owned(),
            sha256,
            scope: Some(fleetpipe_query::config::FleetScope::Fleet),
            vehicles: None,
            fences: None,
        }],
        feed: Some(fleetpipe_query::feed::FeedConfig::default()),
        ..fleetpipe_query::ApiConfig::new(url)
    });
    Ok(token)
}

/// The simulated city and fleet.
fn demo_fleet(options: &DemoOptions) -> SimConfig {
    SimConfig {
        seed: options.seed,
        vehicles: options.vehicles,
        // Vans start their day parked at the depot; the simulator's default
        // stop there (5-30 min) would show a newcomer half an hour of
        // parked vans at wall-clock speed. Short depot stops get them
        // driving within two minutes (still long enough to count as an
        // arrival at the end of a tour).
        depot_stop_s: [30, 120],
        ..SimConfig::default()
    }
}

/// Writes the simulated city's fences to `path` (they become `geofence.file`).
fn write_fences(sim: &SimConfig, path: &Path) -> Result<(), DemoError> {
    let geojson = Fleet::new(sim, 0)?.city().geofences_geojson();
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, geojson)
    };
    write().map_err(|source| DemoError::Fences {
        path: path.to_path_buf(),
        source,
    })
}

/// The fleet publishes over MQTT (QoS 1, JSON) to the embedded broker at
/// `mqtt`, waiting for durable acknowledgements the way the broker gives them.
fn publisher_config(
    sim: SimConfig,
    broker: &EmbeddedConfig,
    mqtt: std::net::SocketAddr,
    options: &DemoOptions,
) -> PublisherConfig {
    PublisherConfig {
        sim,
        transport: Transport::Mqtt(MqttConfig {
            addr: mqtt.to_string(),
            qos: 1,
            connections: options.vehicles.clamp(1, 4),
            topic_prefix: broker.topic_prefix.clone(),
            client_id_prefix: "fleetpipe-demo".to_owned(),
            ack: if broker.ack_topic {
                AckMode::AckTopic
            } else {
                AckMode::Puback
            },
            ..MqttConfig::default()
        }),
        encoding: Encoding::Json,
        rate: options.rate,
        duration: options.duration,
        max_pings: None,
        max_backdate: Duration::from_secs(3600),
        drain_timeout: Duration::from_secs(30),
    }
}

fn summary_line(elapsed: Duration, s: &Stats) -> String {
    format!(
        "[{:>5.0}s] pings sent {} · durable {} · rejected {} · publish→durable p50 {:.0} ms p99 {:.0} ms",
        elapsed.as_secs_f64(),
        s.sent_pings,
        s.acked_pings,
        s.rejected_pings,
        s.latency.p50.as_secs_f64() * 1e3,
        s.latency.p99.as_secs_f64() * 1e3,
    )
}

fn events_line(events: &[(String, u64)]) -> String {
    if events.is_empty() {
        return "events: none yet".to_owned();
    }
    let list: Vec<String> = events.iter().map(|(t, n)| format!("{t} {n}")).collect();
    format!("events: {}", list.join(", "))
}

/// The events emitted so far, by type (enrich's events counter).
fn events_by_type(values: &MetricValues) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = values
        .counters(fleetpipe_enrich::metrics::EVENTS_TOTAL)
        .into_iter()
        .filter_map(|(labels, n)| {
            let (_, ty) = labels.into_iter().find(|(k, _)| k == "type")?;
            Some((ty, n))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_by_type_from_the_in_process_values() {
        use fleetpipe_enrich::metrics::{EVENTS_TOTAL, PINGS_TOTAL};
        let values = MetricValues::default();
        metrics::with_local_recorder(&values, || {
            metrics::counter!(EVENTS_TOTAL, "type" => "vehicle.arrived").increment(3);
            metrics::counter!(EVENTS_TOTAL, "type" => "geofence.entered").increment(12);
            metrics::counter!(PINGS_TOTAL).increment(99);
        });
        let text = &values;
        assert_eq!(
            events_by_type(text),
            vec![
                ("geofence.entered".to_owned(), 12),
                ("vehicle.arrived".to_owned(), 3)
            ]
        );
        assert_eq!(
            events_line(&events_by_type(text)),
            "events: geofence.entered 12, vehicle.arrived 3"
        );
        assert_eq!(events_line(&[]), "events: none yet");
    }

    #[test]
    fn a_printed_database_url_has_no_password() {
        assert_eq!(
            redact("postgresql://fleet:s3cr@t@db:5432/x"),
            "postgresql://fleet:***@db:5432/x"
        );
        assert_eq!(redact(DEFAULT_DATABASE), DEFAULT_DATABASE);
        assert_eq!(redact("host=db user=x"), "host=db user=x");
    }
}
