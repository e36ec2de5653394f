//! The pipeline: gateways → (bounded queue) → enrichment workers → (bounded
//! queue) → sinks, with dead letters going from the gateways straight to the
//! sinks' queue.
//!
//! Shutdown is one [`CancellationToken`]: the gateways stop accepting and
//! finish what they took; dropping their queue senders lets enrichment drain
//! and close its output, which lets the sinks drain, flush and return. Only
//! then is the pipeline done, so nothing accepted is lost. The operations
//! listener stays up through the drain (`/readyz` answers 503, `/metrics`
//! shows the drain) and closes last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetpipe_enrich::{EnrichService, StageSetup, StateStore};
use fleetpipe_geofence::service::{FenceService, LoadError};
use fleetpipe_ingest::gateway::InflightProbe;
use fleetpipe_ingest::http::{routes as ingest_routes, serve};
use fleetpipe_ingest::mqtt::{EmbeddedBroker, ExternalConsumer, MqttMode};
use fleetpipe_ingest::tls::{ServerTls, TlsGateway};
use fleetpipe_ingest::{Authenticator, IngestOutput, Ingestor, RateLimiter, Validator};
use fleetpipe_model::{Accepted, SinkRecord};
use fleetpipe_sink::{EmbeddedKafka, FileSink, KafkaSink, TimescaleSink};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::Config;
use crate::ops::{self, Readiness};

/// Longest the operations listener may take to answer its requests in hand
/// once the pipeline has drained (a geofence reload takes seconds).
const OPS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often idle vehicles are dropped from the rate limiter.
const RATE_LIMIT_SWEEP: Duration = Duration::from_secs(60);

/// The pipeline could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A component refused its configuration or could not bind.
    #[error("{0}")]
    Start(String),
    /// Shutdown did not finish within `pipeline.shutdown_timeout`.
    #[error("shutdown did not finish within {0:?}; records still queued may not be written")]
    ShutdownTimeout(Duration),
    /// A sink failed for good.
    #[error("sink failed: {0}")]
    Sink(String),
    /// A gateway stopped on its own while the pipeline was running.
    #[error("gateway failed: {0}")]
    Gateway(String),
    /// The geofences could not be loaded at start, or their file watcher
    /// died while the pipeline was running.
    #[error(transparent)]
    Geofence(#[from] LoadError),
}

/// The first failure of a task that must not end before shutdown. Recording
/// it starts the shutdown (so readiness turns false at once and what was
/// accepted is drained), and [`Pipeline::wait`] then returns it, so the
/// process exits non-zero and its supervisor restarts it.
#[derive(Debug, Clone)]
struct Failure {
    first: Arc<std::sync::Mutex<Option<PipelineError>>>,
    shutdown: CancellationToken,
}

impl Failure {
    fn new(shutdown: CancellationToken) -> Self {
        Self {
            first: Arc::default(),
            shutdown,
        }
    }

    fn fail(&self, error: PipelineError) {
        tracing::error!(error = %error, "stopping fleetpipe");
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert(error);
        }
        self.shutdown.cancel();
    }

    fn take(&self) -> Option<PipelineError> {
        self.first.lock().ok().and_then(|mut first| first.take())
    }
}

fn start_err(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Start(e.to_string())
}

fn sink_failed(name: &str, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Sink(format!("{name}: {e}"))
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    http_addr: SocketAddr,
    ops_addr: SocketAddr,
    ops: JoinHandle<()>,
    ops_stop: DropGuard,
    mqtt_addr: Option<SocketAddr>,
    mqtt_v5_addr: Option<SocketAddr>,
    mqtt_tls_addrs: (Option<SocketAddr>, Option<SocketAddr>),
    kafka_bootstrap: Option<String>,
    embedded_kafka: Option<EmbeddedKafka>,
    inflight: InflightProbe,
    shutdown: CancellationToken,
    failure: Failure,
    shutdown_timeout: Duration,
    fences: FenceService,
    gateways: JoinSet<()>,
    stages: JoinSet<Result<(), PipelineError>>,
}

impl Pipeline {
    /// Starts every stage. The pipeline runs until `shutdown` is cancelled;
    /// then [`Pipeline::wait`] drains it.
    pub async fn start(
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<Self, PipelineError> {
        // Stages create their metric handles at start: the recorder must exist first.
        ops::prometheus();
        fleetpipe_ingest::metrics::describe();
        fleetpipe_enrich::metrics::describe();
        fleetpipe_sink::metrics::describe();
        crate::metrics::describe();
        let auth = Arc::new(Authenticator::from_config(&config.ingest.auth).map_err(start_err)?);
        // Everything that can fail on configuration or a taken port comes
        // first, so a failed start prints one error and nothing else.
        let file_sink = config
            .sink
            .file
            .clone()
            .map(FileSink::new)
            .transpose()
            .map_err(start_err)?;
        let http_tls = config
            .ingest
            .http
            .tls
            .as_ref()
            .map(|c| ServerTls::load(TlsGateway::Http, c).map(Arc::new))
            .transpose()
            .map_err(start_err)?;
        let http_listener = tokio::net::TcpListener::bind(config.ingest.http.listen)
            .await
            .map_err(|e| {
                PipelineError::Start(format!(
                    "ingest.http.listen = {}: cannot listen: {e}",
                    config.ingest.http.listen
                ))
            })?;
        let http_addr = http_listener.local_addr().map_err(start_err)?;
        let ops_listener = tokio::net::TcpListener::bind(config.ops.listen)
            .await
            .map_err(|e| {
                PipelineError::Start(format!(
                    "ops.listen = {}: cannot listen: {e}",
                    config.ops.listen
                ))
            })?;
        let ops_addr = ops_listener.local_addr().map_err(start_err)?;
        // Loaded and indexed before any gateway accepts: a bad fence file is
        // a failed start. Reloaded at run time, until `shutdown`.
        let mut fences = FenceService::start(&config.geofence, shutdown.clone()).await?;

        let (ping_tx, ping_rx) = mpsc::channel::<Accepted>(config.pipeline.ping_queue);
        let (sink_tx, sink_rx) = mpsc::channel::<SinkRecord>(config.pipeline.sink_queue);

        let limiter = RateLimiter::new(&config.ingest.rate_limit);
        let ingestor = Ingestor::new(
            Validator::new(config.ingest.limits.clone()),
            limiter.clone(),
            IngestOutput {
                pings: ping_tx,
                dead_letters: sink_tx.clone(),
            },
            config.pipeline.max_inflight_bytes,
        );

        let failure = Failure::new(shutdown.clone());
        let mut gateways = JoinSet::new();
        // JWT mode with a JWKS file: its keys are re-read when it changes.
        if let Some(watcher) = auth.jwks_watcher(shutdown.clone()) {
            gateways.spawn(watcher);
        }
        // The fence file's watcher: stops with `shutdown`; dying before is a failure.
        if let Some(watcher) = fences.take_watcher() {
            let failure = failure.clone();
            gateways.spawn(async move {
                if let Err(e) = watcher.run().await {
                    failure.fail(PipelineError::Geofence(e));
                }
            });
        }
        let (mut mqtt_addr, mut mqtt_v5_addr) = (None, None);
        let mut mqtt_tls_addrs = (None, None);
        match config.ingest.mqtt.mode {
            MqttMode::Embedded => {
                let broker = EmbeddedBroker::start(
                    &config.ingest.mqtt,
                    Arc::clone(&auth),
                    ingestor.clone(),
                    shutdown.clone(),
                )
                .await
                .map_err(start_err)?;
                mqtt_addr = broker.local_addr();
                mqtt_v5_addr = broker.local_addr_v5();
                mqtt_tls_addrs = (broker.addrs().v311_tls, broker.addrs().v5_tls);
                let failure = failure.clone();
                gateways.spawn(async move {
                    if let Err(e) = broker.join().await {
                        failure.fail(PipelineError::Gateway(e.to_string()));
                    }
                });
            }
            MqttMode::External => {
                let consumer = ExternalConsumer::start(
                    &config.ingest.mqtt,
                    ingestor.clone(),
                    shutdown.clone(),
                )
                .map_err(start_err)?;
                gateways.spawn(consumer.join());
            }
            MqttMode::Off => {}
        }

        // Sinks that connect somewhere (and may wait for it) start after the
        // listeners are bound, so a taken port still fails fast.
        let kafka_sink = match &config.sink.kafka {
            Some(c) => Some(KafkaSink::new(c.clone()).await.map_err(start_err)?),
            None => None,
        };
        let kafka_bootstrap = kafka_sink.as_ref().map(KafkaSink::bootstrap_servers);
        let embedded_kafka = kafka_sink.as_ref().and_then(KafkaSink::embedded);
        let timescale_sink = match &config.sink.timescale {
            Some(c) => Some(TimescaleSink::connect(c.clone()).await.map_err(start_err)?),
            None => None,
        };
        let mut stages = JoinSet::new();
        let mut sink_inputs: Vec<(&'static str, mpsc::Sender<SinkRecord>)> = Vec::new();
        let queue = config.pipeline.sink_queue;
        if let Some(sink) = file_sink {
            let (tx, rx) = mpsc::channel::<SinkRecord>(queue);
            sink_inputs.push(("file", tx));
            stages.spawn(async move { sink.run(rx).await.map_err(|e| sink_failed("file", e)) });
        }
        if let Some(sink) = kafka_sink {
            let (tx, rx) = mpsc::channel::<SinkRecord>(queue);
            sink_inputs.push(("kafka", tx));
            stages.spawn(async move { sink.run(rx).await.map_err(|e| sink_failed("kafka", e)) });
        }
        if let Some(sink) = timescale_sink {
            let (tx, rx) = mpsc::channel::<SinkRecord>(queue);
            sink_inputs.push(("timescale", tx));
            stages
                .spawn(async move { sink.run(rx).await.map_err(|e| sink_failed("timescale", e)) });
        }
        stages.spawn(fan_out(sink_rx, sink_inputs));
        // Vehicle state lives next to the data: in the database when there
        // is one (reached as the sink reaches it: same URL, same TLS), else
        // in `enrich.state_dir`.
        let store = match &config.sink.timescale {
            Some(c) => StateStore::postgres(
                fleetpipe_sink::timescale::SECTION,
                &c.connection(),
                &c.schema,
            )
            .map_err(start_err)?,
            None => StateStore::Dir(config.enrich.state_dir.clone()),
        };
        let restored = store.load().await.map_err(start_err)?;
        let setup = StageSetup {
            fences: fences.index(),
            store: Some(store),
            restored,
        };
        let enrich =
            EnrichService::start(&config.enrich, setup, ping_rx, sink_tx).map_err(start_err)?;
        stages.spawn(async move {
            enrich
                .join()
                .await
                .map_err(|e| PipelineError::Sink(format!("enrichment: {e}")))
        });

        let auth_is_anonymous = auth.is_anonymous();
        let readiness = Readiness::new(shutdown.clone());
        let inflight = ingestor.inflight_probe();
        let probe = inflight.clone();
        let http = &config.ingest.http;
        let app = ingest_routes(ingestor, auth, http, shutdown.clone());
        if let Some(tls) = &http_tls {
            tokio::spawn(Arc::clone(tls).watch(shutdown.clone()));
        }
        gateways.spawn(serve(
            http_listener,
            app,
            http.limits("device"),
            http_tls,
            shutdown.clone(),
        ));
        // The operations listener outlives `shutdown`: it stops when the
        // drain is over (or this pipeline is dropped).
        let ops_stop = CancellationToken::new();
        let ops_app = ops::router(readiness.clone(), fences.reloader(), &config.ops);
        let ops_limits = fleetpipe_ingest::http::ServeLimits {
            max_connections: config.ops.max_connections,
            ..http.limits("ops")
        };
        let ops = tokio::spawn(serve(
            ops_listener,
            ops_app,
            ops_limits,
            None,
            ops_stop.clone(),
        ));
        if config.ops.admin_token.is_none() && !config.ops.listen.ip().is_loopback() {
            tracing::warn!(
                ops = %ops_addr,
                "ops.listen is not loopback and ops.admin_token is not set: anyone who reaches it can reload geofences"
            );
        }
        let sweep_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RATE_LIMIT_SWEEP);
            loop {
                tokio::select! {
                    () = sweep_shutdown.cancelled() => break,
                    _ = tick.tick() => limiter.forget_idle(),
                }
            }
        });
        let gauge_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let gauge = metrics::gauge!("fleetpipe_pipeline_inflight_bytes");
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = gauge_shutdown.cancelled() => break,
                    _ = tick.tick() => gauge.set(probe.bytes() as f64),
                }
            }
        });

        if auth_is_anonymous {
            tracing::warn!(
                "ingest.auth.mode = \"none\": any device may publish for any vehicle; use only for development"
            );
        }
        fences.log_loaded();
        readiness.set(true);
        tracing::info!(http = %http_addr, ops = %ops_addr, mqtt = ?mqtt_addr, mqtt_v5 = ?mqtt_v5_addr, "fleetpipe is running");
        Ok(Self {
            http_addr,
            ops_addr,
            ops,
            ops_stop: ops_stop.drop_guard(),
            mqtt_addr,
            mqtt_v5_addr,
            mqtt_tls_addrs,
            kafka_bootstrap,
            embedded_kafka,
            inflight,
            shutdown,
            failure,
            shutdown_timeout: config.pipeline.shutdown_timeout,
            fences,
            gateways,
            stages,
        })
    }

    /// Address of the devices' HTTP listener (WebSocket, HTTP ingest).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address of the operations listener (health, readiness, metrics, admin).
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// Address of the embedded broker's MQTT 3.1.1 listener.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// Address of the embedded broker's MQTT 5 listener.
    pub fn mqtt_v5_addr(&self) -> Option<SocketAddr> {
        self.mqtt_v5_addr
    }

    /// Address of the embedded broker's MQTT 3.1.1 over TLS listener.
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt_tls_addrs.0
    }

    /// Address of the embedded broker's MQTT 5 over TLS listener.
    pub fn mqtt_v5_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt_tls_addrs.1
    }

    /// Bootstrap servers of the Kafka sink (the mock cluster's address with
    /// `brokers = "embedded"`).
    pub fn kafka_bootstrap(&self) -> Option<&str> {
        self.kafka_bootstrap.as_deref()
    }

    /// The embedded Kafka mock cluster (`sink.kafka.brokers = "embedded"`),
    /// e.g. to rehearse a broker outage.
    pub fn embedded_kafka(&self) -> Option<&EmbeddedKafka> {
        self.embedded_kafka.as_ref()
    }

    /// The geofence index in use (swapped whole on every reload).
    pub fn fences(&self) -> fleetpipe_geofence::SharedIndex {
        self.fences.index()
    }

    /// The geofence service: reloads, reload counts.
    pub fn fence_service(&self) -> &FenceService {
        &self.fences
    }

    /// Payload bytes whose records are in the pipeline now (see
    /// `pipeline.max_inflight_bytes`).
    pub fn inflight_bytes(&self) -> usize {
        self.inflight.bytes()
    }

    /// Waits for shutdown to be requested, then drains every stage.
    pub async fn wait(mut self) -> Result<(), PipelineError> {
        // Readiness turned false with the token itself.
        self.shutdown.cancelled().await;
        tracing::info!("shutting down: gateways stop accepting, queued records are drained");
        let drain = async {
            while self.gateways.join_next().await.is_some() {}
            tracing::info!("gateways stopped; draining enrichment and sinks");
            let mut result = Ok(());
            while let Some(done) = self.stages.join_next().await {
                match done {
                    Ok(Err(e)) => result = Err(e),
                    Err(e) => result = Err(PipelineError::Sink(e.to_string())),
                    Ok(Ok(())) => {}
                }
            }
            result
        };
        let drained = tokio::time::timeout(self.shutdown_timeout, drain).await;
        // The operations listener last: it answers the requests in hand.
        drop(self.ops_stop);
        let _ = tokio::time::timeout(OPS_STOP_TIMEOUT, self.ops).await;
        match drained {
            Ok(result) => {
                tracing::info!("fleetpipe stopped");
                match self.failure.take() {
                    Some(failure) => Err(failure),
                    None => result,
                }
            }
            Err(_) => Err(PipelineError::ShutdownTimeout(self.shutdown_timeout)),
        }
    }
}

/// Copies every record to every sink's own bounded queue. A record's copies
/// share its acknowledgement, so the sender hears "delivered" only when every
/// sink holds it; a slow sink slows everything (backpressure), it never loses
/// records. Ends when the input is closed and drained, closing the sinks'
/// queues in turn.
async fn fan_out(
    mut input: mpsc::Receiver<SinkRecord>,
    sinks: Vec<(&'static str, mpsc::Sender<SinkRecord>)>,
) -> Result<(), PipelineError> {
    let depth: Vec<_> = sinks
        .iter()
        .map(|(name, _)| metrics::gauge!("fleetpipe_sink_queue_depth", "sink" => *name))
        .collect();
    let Some(((_, last), others)) = sinks.split_last() else {
        return Ok(());
    };
    let closed = || PipelineError::Sink("a sink stopped taking records".into());
    let mut sent: u64 = 0;
    while let Some(record) = input.recv().await {
        for (_, sink) in others {
            sink.send(record.fork()).await.map_err(|_| closed())?;
        }
        last.send(record).await.map_err(|_| closed())?;
        sent += 1;
        if sent.is_multiple_of(256) || input.is_empty() {
            for ((_, sink), gauge) in sinks.iter().zip(&depth) {
                gauge.set((sink.max_capacity() - sink.capacity()) as f64);
            }
        }
    }
    Ok(())
}
