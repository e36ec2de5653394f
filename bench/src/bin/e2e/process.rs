//! fleetpipe as a child process: start it on a generated config, learn its
//! addresses from its JSON log, read its CPU time and memory from /proc, and
//! stop it with SIGTERM like an operator would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetpipe_bench::process::{FleetpipeProcess, addr};

// Kept under this module's name for the e2e runner's call sites.
pub use fleetpipe_bench::procfs::{ProcSample, machine_busy_s, own_rss, proc_sample};

/// What the benchmark needs to know about a running fleetpipe.
#[derive(Debug)]
pub struct Fleetpipe {
    process: FleetpipeProcess,
    /// Process id, for /proc.
    pub pid: u32,
    /// Embedded MQTT 3.1.1 listener.
    pub mqtt: SocketAddr,
    /// Operations listener (`/metrics`).
    pub ops: SocketAddr,
    /// The embedded Kafka mock cluster's bootstrap servers.
    pub kafka: String,
}

/// The settings of the run that go into fleetpipe's config.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// PostgreSQL URL of the TimescaleDB sink.
    pub pg_url: String,
    /// Schema of the sink's tables (dropped and recreated by the caller).
    pub schema: String,
    /// The simulator's fences.
    pub fences: PathBuf,
    /// Enrichment's state directory (unused with the database, kept apart).
    pub state_dir: PathBuf,
}

impl RunConfig {
    /// fleetpipe's TOML: embedded MQTT, HTTP and operations on port 0, the TimescaleDB
    /// sink and the Kafka sink (embedded mock cluster), no file sink, JSON
    /// logs.
    pub fn to_toml(&self) -> String {
        format!(
            r#"[ingest.mqtt]
listen = "127.0.0.1:0"
listen_v5 = "127.0.0.1:0"
[ingest.http]
listen = "127.0.0.1:0"
[ops]
listen = "127.0.0.1:0"
[enrich]
state_dir = {state:?}
[sink.kafka]
brokers = "embedded"
[sink.timescale]
url = {url:?}
schema = {schema:?}
[geofence]
file = {fences:?}
[log]
format = "json"
filter = "info,rumqttd=off"
"#,
            state = self.state_dir,
            url = self.pg_url,
            schema = self.schema,
            fences = self.fences,
        )
    }
}

impl Fleetpipe {
    /// Starts `bin run --config config`, copying its output to `log`, and
    /// waits (up to a minute) until it says it is running; its addresses
    /// and the mock cluster's bootstrap come from its log lines.
    pub async fn start(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let (process, lines) = FleetpipeProcess::start(bin, config, log).await?;
        let running = lines.last().context("no start line")?;
        let (Some(mqtt), Some(ops)) = (addr(&running["mqtt"]), addr(&running["ops"])) else {
            bail!(
                "fleetpipe's start line has no mqtt or ops address; see {}",
                log.display()
            );
        };
        let Some(kafka) = lines.iter().find_map(|f| f["bootstrap"].as_str()) else {
            bail!(
                "fleetpipe logged no Kafka bootstrap address; see {}",
                log.display()
            );
        };
        Ok(Self {
            pid: process.pid,
            kafka: kafka.to_owned(),
            process,
            mqtt,
            ops,
        })
    }

    /// SIGTERM, then waits for the exit (fleetpipe drains and flushes).
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.process.stop(timeout).await?)
    }
}
