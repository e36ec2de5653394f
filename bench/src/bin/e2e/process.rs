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

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
    /// Resident set size now, bytes.
    pub rss_bytes: u64,
    /// Peak resident set size so far (VmHWM), bytes.
    pub peak_rss_bytes: u64,
}

/// Reads `/proc/{pid}/stat` and `/proc/{pid}/status`; `None` once the
/// process is gone.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ")".
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        cpu_s: ticks as f64 / clock_ticks() as f64,
        rss_bytes: kib("VmRSS:") * 1024,
        peak_rss_bytes: kib("VmHWM:") * 1024,
    })
}

/// `getconf CLK_TCK` (100 on Linux unless the kernel says otherwise).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU seconds the whole machine has spent busy (every core, everything but
/// idle and iowait), from `/proc/stat`.
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal ...
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: u64 = f
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4 && i < 8)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / clock_ticks() as f64
}

/// Resident set size of this process, bytes.
pub fn own_rss() -> u64 {
    proc_sample(std::process::id()).map_or(0, |s| s.rss_bytes)
}
