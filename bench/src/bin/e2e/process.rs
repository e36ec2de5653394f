//! fleetpipe as a child process: start it on a generated config, learn its
//! addresses from its JSON log, read its CPU time and memory from /proc, and
//! stop it with SIGTERM like an operator would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

// Kept under this module's name for the e2e runner's call sites.
pub use fleetpipe_bench::procfs::{ProcSample, machine_busy_s, own_rss, proc_sample};

/// What the benchmark needs to know about a running fleetpipe.
#[derive(Debug)]
pub struct Fleetpipe {
    child: Child,
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
    /// waits (up to a minute) until it says it is running.
    pub async fn start(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("fleetpipe exited at once")?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut file = tokio::fs::File::create(log)
            .await
            .with_context(|| format!("creating {}", log.display()))?;

        // Both streams go to the log file; the lines the benchmark needs are
        // picked out on the way. Draining goes on after start-up so a full
        // pipe never blocks fleetpipe.
        let (ready_tx, ready_rx) = oneshot::channel::<(SocketAddr, SocketAddr, String)>();
        let (line_tx, mut lines) = mpsc::channel::<String>(1024);
        tokio::spawn(forward(stdout, line_tx.clone()));
        tokio::spawn(forward(stderr, line_tx));
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut kafka: Option<String> = None;
            while let Some(line) = lines.recv().await {
                let _ = file.write_all(line.as_bytes()).await;
                let _ = file.write_all(b"\n").await;
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let fields = &v["fields"];
                if let Some(b) = fields["bootstrap"].as_str() {
                    kafka = Some(b.to_owned());
                }
                if fields["message"] == "fleetpipe is running"
                    && let (Some(ops), Some(mqtt)) = (addr(&fields["ops"]), addr(&fields["mqtt"]))
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send((mqtt, ops, kafka.clone().unwrap_or_default()));
                }
            }
            let _ = file.flush().await;
        });

        let (mqtt, ops, kafka) = match tokio::time::timeout(Duration::from_secs(60), ready_rx).await
        {
            Ok(Ok(ready)) => ready,
            _ => {
                let status = child.try_wait().ok().flatten();
                bail!(
                    "fleetpipe did not report running within 60 s (exit: {status:?}); see {}",
                    log.display()
                )
            }
        };
        if kafka.is_empty() {
            bail!(
                "fleetpipe logged no Kafka bootstrap address; see {}",
                log.display()
            );
        }
        Ok(Self {
            child,
            pid,
            mqtt,
            ops,
            kafka,
        })
    }

    /// SIGTERM, then waits for the exit (fleetpipe drains and flushes).
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!("fleetpipe did not stop within {timeout:?} after SIGTERM")
            }
        }
    }
}

/// Sends the lines of `stream` to `tx` until either ends.
async fn forward(stream: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).await.is_err() {
            break;
        }
    }
}

/// `"127.0.0.1:1"` or tracing's Debug of an `Option`: `"Some(127.0.0.1:1)"`.
fn addr(v: &Value) -> Option<SocketAddr> {
    let s = v.as_str()?;
    let s = s
        .strip_prefix("Some(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(s);
    s.parse().ok()
}
