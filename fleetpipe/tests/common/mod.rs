//! Test harness: a whole pipeline on loopback ports chosen by the OS, with a
//! file sink in a temporary directory, and helpers to read what it wrote.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetpipe::{Config, Pipeline};
use fleetpipe_sink::FileSinkConfig;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub struct TestPipeline {
    pub pipeline: Option<Pipeline>,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    /// The operations listener (health, readiness, metrics, admin).
    pub ops: SocketAddr,
    pub mqtt: Option<SocketAddr>,
    pub mqtt_v5: Option<SocketAddr>,
    /// MQTT 3.1.1 over TLS, when `ingest.mqtt.tls` is configured.
    pub mqtt_tls: Option<SocketAddr>,
    /// MQTT 5 over TLS, when `ingest.mqtt.tls` is configured.
    pub mqtt_v5_tls: Option<SocketAddr>,
}

pub mod api;
pub mod feed;
pub mod raw_mqtt;
pub mod stock_clients;
pub mod tls;

/// A token-mode credentials file in `dir`: van-1 has tok-1, van-2 tok-2.
pub fn credentials(dir: &Path) -> PathBuf {
    let path = dir.join("credentials.toml");
    std::fs::write(
        &path,
        "[[device]]\nvehicle_id = \"van-1\"\ntoken = \"tok-1\"\n[[device]]\nvehicle_id = \"van-2\"\ntoken = \"tok-2\"\n",
    )
    .unwrap();
    path
}

/// A pipeline in token mode with [`credentials`] (van-1: tok-1, van-2:
/// tok-2); keep the directory while the pipeline runs.
pub async fn token_pipeline() -> (TestPipeline, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(dir.path());
    let p = TestPipeline::start(|c| {
        c.ingest.auth.mode = fleetpipe_ingest::auth::AuthMode::Token;
        c.ingest.auth.credentials_file = Some(creds);
    })
    .await;
    (p, dir)
}

/// The embedded broker's settings of `config` (embedded mode).
pub fn broker(config: &mut Config) -> &mut fleetpipe_ingest::mqtt::EmbeddedConfig {
    config
        .ingest
        .mqtt
        .embedded_mut()
        .expect("the embedded broker is configured")
}

/// A config with every listener on 127.0.0.1:0 and the file sink in `dir`.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    broker(&mut config).listen = Some("127.0.0.1:0".parse().unwrap());
    broker(&mut config).listen_v5 = Some("127.0.0.1:0".parse().unwrap());
    config.ingest.http.listen = "127.0.0.1:0".parse().unwrap();
    config.ops.listen = "127.0.0.1:0".parse().unwrap();
    // Tests reload as often as they need.
    config.ops.reload_min_interval = Duration::ZERO;
    config.sink.file = Some(FileSinkConfig {
        dir: dir.to_path_buf(),
        ..toml_file_sink()
    });
    config.enrich.state_dir = dir.join("state");
    config.pipeline.shutdown_timeout = Duration::from_secs(20);
    config
}

fn toml_file_sink() -> FileSinkConfig {
    toml::from_str("dir = \"unused\"").unwrap()
}

impl TestPipeline {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let pipeline = Pipeline::start(&config, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("pipeline failed to start: {e}"));
        Self {
            http: pipeline.http_addr(),
            ops: pipeline.ops_addr(),
            mqtt: pipeline.mqtt_addr(),
            mqtt_v5: pipeline.mqtt_v5_addr(),
            mqtt_tls: pipeline.mqtt_tls_addr(),
            mqtt_v5_tls: pipeline.mqtt_v5_tls_addr(),
            pipeline: Some(pipeline),
            shutdown,
            dir,
        }
    }

    /// Requests shutdown and waits until everything is drained.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(p) = self.pipeline.take() {
            p.wait()
                .await
                .unwrap_or_else(|e| panic!("shutdown failed: {e}"));
        }
    }

    pub fn telemetry(&self) -> Vec<Value> {
        read_stream(self.dir.path(), "telemetry")
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        read_stream(self.dir.path(), "dead_letter")
    }

    /// Polls the sink's files until `n` telemetry lines exist (or panics after `timeout`).
    pub async fn wait_telemetry(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(timeout, || {
            let lines = self.telemetry();
            (lines.len() >= n).then_some(lines)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "expected {n} telemetry lines, have {}",
                self.telemetry().len()
            )
        })
    }

    pub async fn wait_dead_letters(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(timeout, || {
            let lines = self.dead_letters();
            (lines.len() >= n).then_some(lines)
        })
        .await
        .unwrap_or_else(|| panic!("expected {n} dead letters, have {:?}", self.dead_letters()))
    }

    /// A URL on the devices' listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// A URL on the operations listener.
    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    /// The text of the pipeline's `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.ops_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The metric values of this process (every pipeline a test binary starts
/// records into the same recorder), read in process rather than parsed out
/// of `/metrics`, which tests read only to check what it serves.
pub fn metric_values() -> fleetpipe::ops::MetricValues {
    fleetpipe::ops::metric_values().expect("the recorder keeps in-process values")
}

pub async fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every JSON line of every file of a stream, files in name (= write) order.
pub fn read_stream(dir: &Path, stream: &str) -> Vec<Value> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir.join(stream)) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    serde_json::from_str::<Value>(l)
                        .unwrap_or_else(|e| panic!("bad line {l:?}: {e}"))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A valid JSON ping.
pub fn json_ping(vehicle: &str, seq: u64) -> String {
    format!(
        r#"{{"vehicle_id":"{vehicle}","seq":{seq},"ts":{},"lat":52.52,"lon":13.405,"speed_kmh":31.5}}"#,
        now_ms() - 1000
    )
}

/// A valid Protobuf ping.
pub fn proto_ping(vehicle: &str, seq: u64) -> fleetpipe_model::proto::Ping {
    fleetpipe_model::proto::Ping {
        vehicle_id: vehicle.into(),
        seq: Some(seq),
        ts_ms: Some(now_ms() - 1000),
        lat: Some(48.137),
        lon: Some(11.575),
        ignition: Some(true),
        ..Default::default()
    }
}

/// (vehicle_id, seq) of every line.
pub fn keys(lines: &[Value]) -> Vec<(String, u64)> {
    let mut k: Vec<(String, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["vehicle_id"].as_str().unwrap_or_default().to_owned(),
                l["seq"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    k.sort();
    k
}

pub fn reasons(lines: &[Value]) -> Vec<String> {
    let mut r: Vec<String> = lines
        .iter()
        .map(|l| l["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    r.sort();
    r
}

// ----------------------------------------------------------------- MQTT

/// Publishes a client received: (topic, payload).
pub type Inbox = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT 3.1.1 client; its event loop runs in a task that records PUBACKs
/// and reports a closed connection.
pub struct MqttClient {
    pub client: rumqttc::AsyncClient,
    pub pubacks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub closed: tokio::sync::watch::Receiver<Option<String>>,
    pub connected: tokio::sync::watch::Receiver<bool>,
    /// Publishes received on the client's subscriptions: (topic, payload).
    pub received: Inbox,
    /// The return codes of each SUBACK received.
    pub subacks:
        std::sync::Arc<std::sync::Mutex<Vec<Vec<rumqttc::mqttbytes::v4::SubscribeReasonCode>>>>,
}

pub async fn mqtt_client(
    addr: SocketAddr,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> MqttClient {
    use std::sync::atomic::Ordering;
    let mut opts = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(4 << 20, 4 << 20)
        .set_inflight(1000);
    if let Some((u, p)) = login {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10_000);
    let pubacks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (closed_tx, closed) = tokio::sync::watch::channel(None);
    let (connected_tx, connected) = tokio::sync::watch::channel(false);
    let counter = pubacks.clone();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let inbox = received.clone();
    let subacks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let suback_box = subacks.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = connected_tx.send(true);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(s))) => {
                    suback_box.lock().unwrap().push(s.return_codes);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    inbox
                        .lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = closed_tx.send(Some(e.to_string()));
                    return;
                }
            }
        }
    });
    MqttClient {
        client,
        pubacks,
        closed,
        connected,
        received,
        subacks,
    }
}

impl MqttClient {
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    pub async fn wait_pubacks(&self, n: usize, timeout: Duration) {
        let ok = wait_for(timeout, || {
            (self.pubacks.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(())
        })
        .await;
        assert!(
            ok.is_some(),
            "expected {n} PUBACKs, got {}",
            self.pubacks.load(std::sync::atomic::Ordering::SeqCst)
        );
    }

    /// Waits until the connection is closed (by the server), returning why.
    pub async fn wait_closed(&mut self, timeout: Duration) -> String {
        let closed = tokio::time::timeout(timeout, self.closed.wait_for(Option::is_some)).await;
        match closed {
            Ok(Ok(v)) => v.clone().unwrap_or_default(),
            _ => panic!("connection was not closed within {timeout:?}"),
        }
    }

    pub async fn wait_connected(&mut self, timeout: Duration) {
        let ok = tokio::time::timeout(timeout, self.connected.wait_for(|c| *c)).await;
        assert!(
            matches!(ok, Ok(Ok(_))),
            "not connected within {timeout:?}: {:?}",
            *self.closed.borrow()
        );
    }
}
