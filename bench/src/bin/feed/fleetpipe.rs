//! fleetpipe as a child process for the feed benchmark: its config (the
//! devices' HTTP listener, a sink, the query API with `[api.feed]`), its
//! start (addresses from its JSON log), its `/metrics`, its stop (SIGTERM).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use fleetpipe_bench::process::{FleetpipeProcess, addr};

/// Where acknowledged pings are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sink {
    /// `[sink.file]`, fsync per batch: the ack costs a disk flush, not
    /// PostgreSQL's CPU on the shared cores.
    File,
    /// `[sink.timescale]` on the local PostgreSQL (the schema of the run).
    Timescale,
}

impl Sink {
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::File => "file",
            Sink::Timescale => "timescale",
        }
    }
}

/// What goes into fleetpipe's config.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub sink: Sink,
    pub pg_url: String,
    /// The API's schema (and the sink's, with the TimescaleDB sink).
    pub schema: String,
    /// The simulated city's fences.
    pub fences: PathBuf,
    /// The file sink's directory and enrichment's state directory live here.
    pub data_dir: PathBuf,
    /// SHA-256 (hex) of the fleet token the clients present.
    pub token_sha256: String,
    /// `api.feed.max_clients`.
    pub max_clients: usize,
}

impl RunConfig {
    /// fleetpipe's TOML. Everything on port 0 of loopback; no MQTT (the
    /// devices use the HTTP listener's WebSocket); the per-vehicle rate
    /// limit off, because the simulator runs simulated time many times
    /// faster than the clock (a device's real rate would be a fraction of
    /// what it sends here); the feed's limits at their defaults but
    /// `max_clients`.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            r#"[ingest.mqtt]
mode = "off"
[ingest.http]
listen = "127.0.0.1:0"
[ingest.rate_limit]
enabled = false
[ops]
listen = "127.0.0.1:0"
[enrich]
state_dir = {state:?}
[geofence]
file = {fences:?}
[log]
format = "json"
filter = "info"
[api]
listen = "127.0.0.1:0"
url = {url:?}
schema = {schema:?}
max_connections = {api_connections}
[[api.tokens]]
name = "feed-bench"
sha256 = {sha:?}
scope = "fleet"
[api.feed]
max_clients = {max_clients}
"#,
            state = self.data_dir.join("state"),
            fences = self.fences,
            url = self.pg_url,
            schema = self.schema,
            // The clients, and room for a few more requests.
            api_connections = self.max_clients + 64,
            sha = self.token_sha256,
            max_clients = self.max_clients,
        );
        match self.sink {
            Sink::File => {
                let _ = write!(s, "[sink.file]\ndir = {:?}\n", self.data_dir.join("sink"));
            }
            Sink::Timescale => {
                let _ = write!(
                    s,
                    "[sink.timescale]\nurl = {:?}\nschema = {:?}\n",
                    self.pg_url, self.schema
                );
            }
        }
        s
    }
}

/// A running fleetpipe.
#[derive(Debug)]
pub struct Fleetpipe {
    process: FleetpipeProcess,
    pub pid: u32,
    /// The devices' listener (`/v1/ws`, `/v1/pings`).
    pub http: SocketAddr,
    /// The query API's listener (`/v1/feed`).
    pub api: SocketAddr,
    /// The operations listener (`/metrics`).
    pub ops: SocketAddr,
}

impl Fleetpipe {
    /// Starts `bin run --config config`, its output into `log`, and waits
    /// (up to a minute) for "fleetpipe is running", whose fields hold its
    /// addresses.
    pub async fn start(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let (process, lines) = FleetpipeProcess::start(bin, config, log).await?;
        let fields = lines.last().context("no start line")?;
        let get = |key: &str| {
            addr(&fields[key]).with_context(|| {
                format!(
                    "fleetpipe's start line has no {key} address; see {}",
                    log.display()
                )
            })
        };
        Ok(Self {
            pid: process.pid,
            http: get("http")?,
            api: get("api")?,
            ops: get("ops")?,
            process,
        })
    }

    /// SIGTERM, then waits for the exit (fleetpipe drains and flushes).
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.process.stop(timeout).await?)
    }

    /// `/metrics`, parsed.
    pub async fn metrics(&self, http: &reqwest::Client) -> anyhow::Result<Metrics> {
        let text = http
            .get(format!("http://{}/metrics", self.ops))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Metrics::parse(&text))
    }
}

/// Prometheus text: every sample by its series (`name{labels}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            // The value is the last field (no timestamps here).
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Ok(v) = value.parse::<f64>() {
                out.insert(series.trim().to_owned(), v);
            }
        }
        Self(out)
    }

    /// The sum over every label set of metric `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series.as_str() == name
                    || series
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series of metric `name` with its label text (`{…}` or empty).
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.iter().filter_map(move |(series, v)| {
            let rest = series.strip_prefix(name)?;
            (rest.is_empty() || rest.starts_with('{')).then_some((rest, *v))
        })
    }

    /// What grew from `before` to `self`, per series of metric `name`.
    pub fn grown(&self, before: &Metrics, name: &str) -> Vec<(String, f64)> {
        self.series(name)
            .map(|(labels, v)| {
                let was = before
                    .0
                    .get(&format!("{name}{labels}"))
                    .copied()
                    .unwrap_or(0.0);
                (labels.to_owned(), v - was)
            })
            .filter(|(_, d)| *d != 0.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_parsed_summed_and_differenced() {
        let before = Metrics::parse(
            "# HELP fleetpipe_feed_dropped_total x\n# TYPE fleetpipe_feed_dropped_total counter\n\
             fleetpipe_feed_dropped_total{kind=\"event\"} 1\n",
        );
        let after = Metrics::parse(
            "fleetpipe_feed_dropped_total{kind=\"event\"} 3\n\
             fleetpipe_feed_dropped_total{kind=\"position\"} 5\n\
             fleetpipe_feed_dropped_totalx 9\n\
             fleetpipe_feed_queued_bytes 1024\n",
        );
        assert_eq!(after.sum("fleetpipe_feed_dropped_total"), 8.0);
        assert_eq!(after.sum("fleetpipe_feed_queued_bytes"), 1024.0);
        assert_eq!(
            after.grown(&before, "fleetpipe_feed_dropped_total"),
            vec![
                ("{kind=\"event\"}".to_owned(), 2.0),
                ("{kind=\"position\"}".to_owned(), 5.0)
            ]
        );
    }

    #[test]
    fn the_config_has_the_feed_the_token_and_one_sink() {
        let c = RunConfig {
            sink: Sink::File,
            pg_url: "postgresql://postgres@127.0.0.1:5432/test".to_owned(),
            schema: "fp_feed_bench".to_owned(),
            fences: "/tmp/f.geojson".into(),
            data_dir: "/tmp/d".into(),
            token_sha256: "ab".repeat(32),
            max_clients: 1000,
        };
        let toml = c.to_toml();
        assert!(toml.contains("[api.feed]\nmax_clients = 1000\n"), "{toml}");
        assert!(toml.contains("max_connections = 1064"));
        assert!(toml.contains("[sink.file]\ndir = \"/tmp/d/sink\""));
        assert!(!toml.contains("[sink.timescale]"));
        let t = RunConfig {
            sink: Sink::Timescale,
            ..c
        }
        .to_toml();
        assert!(t.contains("[sink.timescale]") && !t.contains("[sink.file]"));
    }
}
