//! fleetpipe as a child process, as the runners start it: `run --config`,
//! its output (JSON log lines) copied to a log file, its start awaited on
//! the "fleetpipe is running" line, and stopped with SIGTERM like an
//! operator would. Each runner reads the addresses it needs from the lines.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// How long a start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why fleetpipe did not start or stop as asked.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The binary could not be run, or the log file not written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No "fleetpipe is running" line within a minute.
    #[error("fleetpipe did not report running within 60 s (exit: {status:?}); see {}", log.display())]
    NotRunning {
        /// Its exit status, if it exited.
        status: Option<ExitStatus>,
        /// Its log.
        log: PathBuf,
    },
    /// `kill -TERM` failed.
    #[error("kill -TERM {0} failed")]
    Signal(u32),
    /// It did not exit within the time given after SIGTERM (it was killed).
    #[error("fleetpipe did not stop within {0:?} after SIGTERM")]
    StopTimeout(Duration),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProcessError {
    let what = what.into();
    move |source| ProcessError::Io { what, source }
}

/// A running fleetpipe.
#[derive(Debug)]
pub struct FleetpipeProcess {
    child: Child,
    /// Process id, for /proc.
    pub pid: u32,
}

impl FleetpipeProcess {
    /// Starts `bin run --config config`, both output streams into `log`
    /// (drained for as long as it runs, so a full pipe never blocks it),
    /// and waits for its "fleetpipe is running" line. Returns the process
    /// and the `fields` of every JSON log line up to that one, that line
    /// last.
    ///
    /// # Errors
    ///
    /// [`ProcessError`]: not started, or not running within a minute.
    pub async fn start(
        bin: &Path,
        config: &Path,
        log: &Path,
    ) -> Result<(Self, Vec<Value>), ProcessError> {
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        let missing = |what: &str| ProcessError::Io {
            what: what.to_owned(),
            source: std::io::Error::other("fleetpipe exited at once"),
        };
        let pid = child.id().ok_or_else(|| missing("its pid"))?;
        let stdout = child.stdout.take().ok_or_else(|| missing("its stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| missing("its stderr"))?;
        let mut file = tokio::fs::File::create(log)
            .await
            .map_err(io(format!("creating {}", log.display())))?;
        let (ready_tx, ready_rx) = oneshot::channel::<Vec<Value>>();
        let (line_tx, mut lines) = mpsc::channel::<String>(1024);
        tokio::spawn(forward(stdout, line_tx.clone()));
        tokio::spawn(forward(stderr, line_tx));
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut seen = Vec::new();
            while let Some(line) = lines.recv().await {
                let _ = file.write_all(line.as_bytes()).await;
                let _ = file.write_all(b"\n").await;
                if ready_tx.is_none() {
                    continue;
                }
                let Ok(mut v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let fields = v["fields"].take();
                let running = fields["message"] == "fleetpipe is running";
                seen.push(fields);
                if running && let Some(tx) = ready_tx.take() {
                    let _ = tx.send(std::mem::take(&mut seen));
                }
            }
            let _ = file.flush().await;
        });
        match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(lines)) => Ok((Self { child, pid }, lines)),
            _ => Err(ProcessError::NotRunning {
                status: child.try_wait().ok().flatten(),
                log: log.to_owned(),
            }),
        }
    }

    /// SIGTERM, then waits for the exit (fleetpipe drains and flushes); kills
    /// it after `timeout`.
    ///
    /// # Errors
    ///
    /// [`ProcessError`]: the signal failed, or it did not exit in time.
    pub async fn stop(mut self, timeout: Duration) -> Result<ExitStatus, ProcessError> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .map_err(io("kill -TERM"))?;
        if !status.success() {
            return Err(ProcessError::Signal(self.pid));
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.map_err(io("waiting for fleetpipe")),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(ProcessError::StopTimeout(timeout))
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

/// An address as a log line holds it: `"127.0.0.1:1"`, or tracing's Debug
/// of an `Option`: `"Some(127.0.0.1:1)"`.
pub fn addr(v: &Value) -> Option<SocketAddr> {
    let s = v.as_str()?;
    let s = s
        .strip_prefix("Some(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(s);
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_plain_and_as_options() {
        let a: SocketAddr = "127.0.0.1:1883".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(addr(&Value::from("127.0.0.1:1883")), Some(a));
        assert_eq!(addr(&Value::from("Some(127.0.0.1:1883)")), Some(a));
        assert_eq!(addr(&Value::from("None")), None);
        assert_eq!(addr(&Value::Null), None);
    }
}
