//! The pipeline: sources (the gateways) → (bounded queue) → enrichment →
//! (bounded queue) → fan-out → each sink's own bounded queue → sinks, with
//! dead letters going from the sources straight to the fan-out's queue.
//!
//! It is assembled from the configured components ([`SourceConfig`] and
//! [`SinkConfig`]): each validates and builds itself, and the wiring here
//! never names a concrete source or sink. That is the `all` role; the
//! other roles (`cluster.role`) arrange the same components around Kafka
//! topics (`roles.rs`), and this module runs whichever was chosen. Every task runs in a `Tasks`
//! set under the shutdown token; one that ends before shutdown stops the
//! pipeline (`tasks.rs`).
//!
//! Shutdown is one [`CancellationToken`]: the sources stop accepting and
//! finish what they took; dropping their queue senders lets enrichment drain
//! and close its output, which lets the sinks drain, flush and return. Only
//! then is the pipeline done, so nothing accepted is lost. The operations
//! listener stays up through the drain (`/readyz` answers 503, `/metrics`
//! shows the drain) and closes last.
//!
//! [`SourceConfig`]: fleetpipe_ingest::SourceConfig
//! [`SinkConfig`]: fleetpipe_sink::SinkConfig

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetpipe_enrich::{EnrichError, EnrichHandle, EnrichService, StageSetup, StateStore};
use fleetpipe_geofence::service::{FenceService, LoadError};
use fleetpipe_ingest::auth::AuthSetupError;
use fleetpipe_ingest::gateway::InflightProbe;
use fleetpipe_ingest::http::{ServeLimits, serve};
use fleetpipe_ingest::source::bind;
use fleetpipe_ingest::{
    Authenticator, BuiltSource, IngestOutput, Ingestor, RateLimiter, SourceContext, SourceError,
    Validator,
};
use fleetpipe_model::{Accepted, SinkRecord};
use fleetpipe_sink::{BuiltSink, EmbeddedKafka, KafkaEndpoint, SinkConfig, SinkContext, SinkError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Config, InvalidConfig};
use crate::ops::{self, Readiness};
use crate::roles::{RoleContext, Running};
use crate::tasks::{Failure, Tasks};

/// Longest the operations listener may take to answer its requests in hand
/// once the pipeline has drained (a geofence reload takes seconds).
const OPS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often idle vehicles are dropped from the rate limiter.
const RATE_LIMIT_SWEEP: Duration = Duration::from_secs(60);

/// How often `fleetpipe_pipeline_inflight_bytes` is updated.
const INFLIGHT_GAUGE: Duration = Duration::from_secs(1);

/// The pipeline could not start, or did not stop cleanly. A start failure
/// names its component, and its message the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration is refused: the check `fleetpipe config check` runs.
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    /// Device authentication could not be set up (`[ingest.auth]`).
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// The operations listener could not be bound (`ops.listen`).
    #[error(transparent)]
    OpsListener(SourceError),
    /// The query API's listener could not be bound (`api.listen`).
    #[error(transparent)]
    ApiListener(SourceError),
    /// The query API could not start: its database or its settings
    /// (`[api]`).
    #[error(transparent)]
    Api(#[from] fleetpipe_query::QueryError),
    /// The geofences could not be loaded at start (`[geofence]`), or their
    /// file watcher died while the pipeline was running.
    #[error(transparent)]
    Fences(#[from] LoadError),
    /// A source could not be built: a listener or its TLS files.
    #[error("source {source_name}: {source}")]
    SourceStart {
        /// The source, e.g. `mqtt-embedded`.
        source_name: &'static str,
        /// Why.
        source: SourceError,
    },
    /// A sink could not be built: its directory, cluster or database.
    #[error("sink {sink}: {source}")]
    SinkStart {
        /// The sink, e.g. `kafka`.
        sink: &'static str,
        /// Why.
        source: SinkError,
    },
    /// The vehicle state could not be restored or its database reached.
    #[error("enrichment: vehicle state: {0}")]
    StateStore(#[from] fleetpipe_enrich::StoreError),
    /// The enrichment stage could not start, or failed.
    #[error("enrichment: {0}")]
    Enrichment(#[from] EnrichError),
    /// The final vehicle state checkpoint could not be written at shutdown.
    #[error("enrichment: vehicle state checkpoint: {0}")]
    FinalCheckpoint(#[source] fleetpipe_enrich::StoreError),
    /// A source's task failed while the pipeline was running.
    #[error("{task} failed: {source}")]
    Source {
        /// The task, e.g. `mqtt reader`.
        task: &'static str,
        /// Why.
        source: SourceError,
    },
    /// A sink failed for good.
    #[error("sink {sink} failed: {source}")]
    Sink {
        /// The sink, e.g. `kafka`.
        sink: &'static str,
        /// Why.
        source: SinkError,
    },
    /// A sink stopped taking records while records were still coming.
    #[error("fan-out: sink {sink} stopped taking records")]
    SinkClosed {
        /// The sink.
        sink: &'static str,
    },
    /// A task that must run until shutdown returned before it.
    #[error("{task} ended unexpectedly")]
    TaskEnded {
        /// The task.
        task: &'static str,
    },
    /// A task panicked.
    #[error("{task} panicked")]
    TaskPanicked {
        /// The task.
        task: &'static str,
    },
    /// A role that reads or writes Kafka has no `[sink.kafka]` (the
    /// configuration check refuses this first).
    #[error("cluster.role needs [sink.kafka]")]
    NoKafka,
    /// The Kafka client options are refused (`sink.kafka.librdkafka`).
    #[error("sink.kafka.librdkafka: {0}")]
    KafkaClient(#[from] fleetpipe_kafka::ClientConfigError),
    /// The role's topics could not be created or are not as configured
    /// (e.g. another partition count).
    #[error("kafka topics: {0}")]
    Topics(#[from] fleetpipe_kafka::TopicError),
    /// The consumer group member could not start, or failed.
    #[error(transparent)]
    Consumer(#[from] fleetpipe_kafka::group::GroupError),
    /// A read node's consumer could not start (the topics' partitions or
    /// ends could not be read), or failed.
    #[error(transparent)]
    Tail(#[from] fleetpipe_kafka::tail::TailError),
    /// A read node has no live feed (the configuration check refuses this
    /// first).
    #[error("cluster.role = \"read\" needs [api.feed]")]
    NoFeed,
    /// The enrich role's changelog client could not be created.
    #[error(transparent)]
    Changelog(#[from] fleetpipe_kafka::changelog::ChangelogError),
    /// The enrich role's stage stopped (its outputs or snapshots were not
    /// stored; the group replays from the last commit).
    #[error("enrich role: {0}")]
    Partitioned(#[from] fleetpipe_enrich::partitioned::PartitionedError),
    /// Shutdown did not finish within `pipeline.shutdown_timeout`.
    #[error("shutdown did not finish within {0:?}; records still queued may not be written")]
    ShutdownTimeout(Duration),
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// Every bound listener of the sources: configuration key, address.
    listeners: Vec<(&'static str, SocketAddr)>,
    http_addr: SocketAddr,
    ops_addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    ops: JoinHandle<()>,
    ops_stop: DropGuard,
    kafka: Option<KafkaEndpoint>,
    inflight: Option<InflightProbe>,
    shutdown: CancellationToken,
    failure: Failure,
    shutdown_timeout: Duration,
    fences: FenceService,
    /// What takes data in (sources and what serves them, or a consumer
    /// group): it ends first at shutdown.
    intake: Tasks,
    /// Enrichment, fan-out and sinks: they drain after the intake.
    stages: Tasks,
}

/// The queues between the stages and the acknowledgement plumbing the
/// sources hand messages to.
pub(crate) struct Queues {
    pub(crate) ingestor: Ingestor,
    pub(crate) pings: mpsc::Receiver<Accepted>,
    pub(crate) enriched: mpsc::Sender<SinkRecord>,
    pub(crate) records: mpsc::Receiver<SinkRecord>,
}

impl Pipeline {
    /// Checks the configuration (as `fleetpipe config check` does), builds
    /// every component and starts every stage. The pipeline runs until
    /// `shutdown` is cancelled; then [`Pipeline::wait`] drains it.
    pub async fn start(
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<Self, PipelineError> {
        describe_metrics();
        config.check()?;
        let auth = Arc::new(Authenticator::from_config(&config.ingest.auth)?);
        // Everything that can fail on configuration or a taken port comes
        // first, so a failed start prints one error and nothing else.
        let (ops_listener, ops_addr) = bind("ops.listen", config.ops.listen)
            .await
            .map_err(PipelineError::OpsListener)?;
        let api_listener = bind_api(config).await?;
        // Loaded and indexed before any gateway accepts: a bad fence file is
        // a failed start. Reloaded at run time, until `shutdown`.
        let mut fences = FenceService::start(&config.geofence, shutdown.clone()).await?;
        let api = start_api(config, api_listener, &fences, &shutdown).await?;
        // The live feed is one more output of the fan-out (roles all and
        // read).
        let feed = api.as_ref().and_then(|(api, _, _)| api.feed());
        let failure = Failure::new(shutdown.clone());
        let role = RoleContext {
            config,
            auth: &auth,
            fences: &fences,
            shutdown: &shutdown,
            failure: &failure,
            feed: feed.as_ref(),
            api: api.as_ref().map(|(api, _, _)| api),
        };
        let Running {
            mut intake,
            stages,
            listeners,
            kafka,
            inflight,
            restoring,
        } = role.start().await?;
        if let Some(watcher) = fences.take_watcher() {
            intake.spawn("geofence file watcher", async move {
                watcher.run().await.map_err(PipelineError::Fences)
            });
        }
        let api_addr = api.map(|(api, listener, addr)| {
            serve_api(config, api.router(), listener, &shutdown, &mut intake);
            addr
        });

        let readiness = Readiness::new(shutdown.clone()).holding_while(restoring);
        let (ops, ops_stop) = run_ops(config, ops_listener, readiness.clone(), &fences, &failure);
        warn_about_open_doors(config, &auth, ops_addr);
        fences.log_loaded();
        readiness.set(true);
        let http_addr =
            listen_addr(&listeners, "ingest.http.listen").unwrap_or(config.ingest.http.listen);
        log_running(config, http_addr, ops_addr, &listeners, api_addr);
        Ok(Self {
            http_addr,
            listeners,
            ops_addr,
            api_addr,
            ops,
            ops_stop,
            kafka,
            inflight,
            shutdown,
            failure,
            shutdown_timeout: config.pipeline.shutdown_timeout,
            fences,
            intake,
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

    /// Address of the query API's listener (`[api]`), when configured.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Address of the embedded broker's MQTT 3.1.1 listener.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.listeners, "ingest.mqtt.listen")
    }

    /// Address of the embedded broker's MQTT 5 listener.
    pub fn mqtt_v5_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.listeners, "ingest.mqtt.listen_v5")
    }

    /// Address of the embedded broker's MQTT 3.1.1 over TLS listener.
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.listeners, "ingest.mqtt.tls.listen")
    }

    /// Address of the embedded broker's MQTT 5 over TLS listener.
    pub fn mqtt_v5_tls_addr(&self) -> Option<SocketAddr> {
        listen_addr(&self.listeners, "ingest.mqtt.tls.listen_v5")
    }

    /// Bootstrap servers of the Kafka sink (the mock cluster's address with
    /// `brokers = "embedded"`).
    pub fn kafka_bootstrap(&self) -> Option<&str> {
        self.kafka.as_ref().map(|k| k.bootstrap_servers.as_str())
    }

    /// The embedded Kafka mock cluster (`sink.kafka.brokers = "embedded"`),
    /// e.g. to rehearse a broker outage.
    pub fn embedded_kafka(&self) -> Option<&EmbeddedKafka> {
        self.kafka.as_ref().and_then(|k| k.embedded.as_ref())
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
        self.inflight.as_ref().map_or(0, InflightProbe::bytes)
    }

    /// Waits for shutdown to be requested, then drains every stage.
    pub async fn wait(mut self) -> Result<(), PipelineError> {
        // Readiness turned false with the token itself.
        self.shutdown.cancelled().await;
        tracing::info!("shutting down: gateways stop accepting, queued records are drained");
        let drain = async {
            self.intake.join_all().await;
            tracing::info!("intake stopped; draining enrichment and sinks");
            self.stages.join_all().await;
        };
        let drained = tokio::time::timeout(self.shutdown_timeout, drain).await;
        // The operations listener last: it answers the requests in hand.
        drop(self.ops_stop);
        let _ = tokio::time::timeout(OPS_STOP_TIMEOUT, self.ops).await;
        if drained.is_err() {
            return Err(PipelineError::ShutdownTimeout(self.shutdown_timeout));
        }
        tracing::info!("fleetpipe stopped");
        match self.failure.take() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// The query API's listener (`api.listen`), bound with the others before
/// anything is started.
async fn bind_api(config: &Config) -> Result<Option<(TcpListener, SocketAddr)>, PipelineError> {
    match &config.api {
        Some(api) => Ok(Some(
            bind("api.listen", api.listen)
                .await
                .map_err(PipelineError::ApiListener)?,
        )),
        None => Ok(None),
    }
}

/// The query API on its bound listener: its pool and share-link table
/// before anything accepts, so an unreachable database fails the start
/// before a device is answered.
async fn start_api(
    config: &Config,
    listener: Option<(TcpListener, SocketAddr)>,
    fences: &FenceService,
    shutdown: &CancellationToken,
) -> Result<Option<(fleetpipe_query::QueryApi, TcpListener, SocketAddr)>, PipelineError> {
    let (Some(api), Some((listener, addr))) = (&config.api, listener) else {
        return Ok(None);
    };
    let api = fleetpipe_query::QueryApi::start(api, fences.index(), shutdown.clone()).await?;
    Ok(Some((api, listener, addr)))
}

/// The one line that says where everything listens.
fn log_running(
    config: &Config,
    http_addr: SocketAddr,
    ops_addr: SocketAddr,
    listeners: &[(&'static str, SocketAddr)],
    api_addr: Option<SocketAddr>,
) {
    tracing::info!(
        role = config.cluster.role.as_str(),
        http = %http_addr,
        ops = %ops_addr,
        mqtt = ?listen_addr(listeners, "ingest.mqtt.listen"),
        mqtt_v5 = ?listen_addr(listeners, "ingest.mqtt.listen_v5"),
        api = ?api_addr,
        "fleetpipe is running"
    );
}

/// Metric descriptions of the stages that describe theirs. Stages create
/// their metric handles at start: the recorder must exist first.
fn describe_metrics() {
    ops::prometheus();
    fleetpipe_ingest::metrics::describe();
    fleetpipe_enrich::metrics::describe();
    fleetpipe_sink::metrics::describe();
    fleetpipe_kafka::metrics::describe();
    fleetpipe_query::metrics::describe();
    crate::metrics::describe();
}

impl Queues {
    /// The bounded queues (`pipeline.ping_queue`, `pipeline.sink_queue`)
    /// and the ingestor in front of them.
    pub(crate) fn new(config: &Config) -> Self {
        let (ping_tx, pings) = mpsc::channel(config.pipeline.ping_queue);
        let (enriched, records) = mpsc::channel(config.pipeline.sink_queue);
        let ingestor = Ingestor::new(
            Validator::new(config.ingest.limits.clone()),
            RateLimiter::new(&config.ingest.rate_limit),
            IngestOutput {
                pings: ping_tx,
                dead_letters: enriched.clone(),
            },
            config.pipeline.max_inflight_bytes,
        );
        Self {
            ingestor,
            pings,
            enriched,
            records,
        }
    }
}

/// Builds every configured source: its listeners are bound, its tasks not
/// yet running.
pub(crate) async fn build_sources(
    config: &Config,
    cx: &SourceContext,
) -> Result<Vec<BuiltSource>, PipelineError> {
    let mut built = Vec::new();
    for source in config.ingest.sources() {
        let source_name = source.name();
        let source = source
            .build(cx)
            .await
            .map_err(|source| PipelineError::SourceStart {
                source_name,
                source,
            })?;
        built.push(source);
    }
    Ok(built)
}

/// Builds `sinks`, each with its own bounded input queue, and the live
/// feed's intake beside them when there is a feed.
pub(crate) async fn build_sinks(
    config: &Config,
    sinks: Vec<SinkConfig>,
    feed: Option<&fleetpipe_query::feed::Feed>,
) -> Result<Vec<BuiltSink>, PipelineError> {
    let cx = SinkContext {
        queue: config.pipeline.sink_queue,
    };
    let mut built = Vec::new();
    for sink in sinks {
        let name = sink.name();
        let sink = sink
            .build(cx)
            .await
            .map_err(|source| PipelineError::SinkStart { sink: name, source })?;
        built.push(sink);
    }
    if let Some(feed) = feed {
        // The feed takes each record into memory and acknowledges it at
        // once: it never holds the fan-out up and promises nothing durable.
        let (input, run) = feed.intake(config.pipeline.sink_queue);
        built.push(BuiltSink {
            name: "feed",
            input,
            run: Box::pin(async move {
                run.await;
                Ok(())
            }),
            kafka: None,
        });
    }
    Ok(built)
}

/// Starts the enrichment stage, with the vehicle state restored from where
/// it lives: in the database when there is one (reached as the sink reaches
/// it: same URL, same TLS, same timeouts; the store creates its own
/// `vehicle_state` table), else in `enrich.state_dir`.
pub(crate) async fn start_enrichment(
    config: &Config,
    fences: &FenceService,
    input: mpsc::Receiver<Accepted>,
    output: mpsc::Sender<SinkRecord>,
) -> Result<EnrichHandle, PipelineError> {
    let store = match &config.sink.timescale {
        Some(c) => StateStore::postgres(
            fleetpipe_sink::timescale::SECTION,
            &c.connection(),
            &c.schema,
        )?,
        None => StateStore::Dir(config.enrich.state_dir.clone()),
    };
    let restored = store.load().await?;
    let setup = StageSetup {
        fences: fences.index(),
        store: Some(store),
        restored,
    };
    Ok(EnrichService::start(&config.enrich, setup, input, output)?)
}

/// Runs every sink, and the fan-out that copies each record into every
/// sink's queue.
pub(crate) fn run_sinks(
    stages: &mut Tasks,
    records: mpsc::Receiver<SinkRecord>,
    sinks: Vec<BuiltSink>,
) {
    let mut inputs = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let name = sink.name;
        inputs.push((name, sink.input));
        let run = sink.run;
        stages.spawn(name, async move {
            run.await
                .map_err(|source| PipelineError::Sink { sink: name, source })
        });
    }
    stages.spawn("fan-out", fan_out(records, inputs));
}

/// Runs every task of every source; returns their bound listeners.
pub(crate) fn run_sources(
    gateways: &mut Tasks,
    sources: Vec<BuiltSource>,
) -> Vec<(&'static str, SocketAddr)> {
    let mut listeners = Vec::new();
    for source in sources {
        listeners.extend(source.addrs);
        for (task, run) in source.tasks {
            gateways.spawn(task, async move {
                run.await
                    .map_err(|source| PipelineError::Source { task, source })
            });
        }
    }
    listeners
}

/// The tasks beside the sources that run until shutdown: JWKS reloads (JWT
/// mode with a key file), the rate limiter's sweep, the in-flight gauge.
pub(crate) fn run_housekeeping(
    gateways: &mut Tasks,
    auth: &Authenticator,
    limiter: RateLimiter,
    inflight: &InflightProbe,
    shutdown: &CancellationToken,
) {
    if let Some(watcher) = auth.jwks_watcher(shutdown.clone()) {
        gateways.spawn("jwks reload", async move {
            watcher.await;
            Ok(())
        });
    }
    gateways.spawn(
        "rate-limit sweep",
        sweep_rate_limiter(limiter, shutdown.clone()),
    );
    let gauge = update_inflight_gauge(inflight.clone(), shutdown.clone());
    gateways.spawn("in-flight gauge", gauge);
}

/// Serves the query API on `listener` with the accept loop of the other
/// HTTP listeners (the devices' idle and header timeouts,
/// `api.max_connections`), as an intake task: it stops accepting at
/// shutdown and answers the requests in hand.
fn serve_api(
    config: &Config,
    router: axum::Router,
    listener: tokio::net::TcpListener,
    shutdown: &CancellationToken,
    intake: &mut Tasks,
) {
    let max_connections = config.api.as_ref().map_or(1, |api| api.max_connections);
    let limits = ServeLimits {
        max_connections,
        ..config.ingest.http.limits("api")
    };
    let serving = serve(listener, router, limits, None, shutdown.clone());
    intake.spawn("api listener", async move {
        serving.await;
        Ok(())
    });
}

/// Serves the operations listener until the returned guard is dropped (it
/// outlives `shutdown`: it stops when the drain is over). Its end before
/// that is a failure.
fn run_ops(
    config: &Config,
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    fences: &FenceService,
    failure: &Failure,
) -> (JoinHandle<()>, DropGuard) {
    let stop = CancellationToken::new();
    let app = ops::router(readiness, fences.reloader(), &config.ops);
    let limits = ServeLimits {
        max_connections: config.ops.max_connections,
        ..config.ingest.http.limits("ops")
    };
    let serving = serve(listener, app, limits, None, stop.clone());
    let (failure, stopped) = (failure.clone(), stop.clone());
    let ops = tokio::spawn(async move {
        serving.await;
        if !stopped.is_cancelled() {
            failure.fail(PipelineError::TaskEnded {
                task: "ops listener",
            });
        }
    });
    (ops, stop.drop_guard())
}

/// Warns about settings that leave a door open, once everything started.
fn warn_about_open_doors(config: &Config, auth: &Authenticator, ops_addr: SocketAddr) {
    if config.ops.admin_token.is_none() && !config.ops.listen.ip().is_loopback() {
        tracing::warn!(
            ops = %ops_addr,
            "ops.listen is not loopback and ops.admin_token is not set: anyone who reaches it can reload geofences"
        );
    }
    if auth.is_anonymous() {
        tracing::warn!(
            "ingest.auth.mode = \"none\": any device may publish for any vehicle; use only for development"
        );
    }
}

/// The address the listener of configuration key `key` is bound to.
fn listen_addr(listeners: &[(&'static str, SocketAddr)], key: &str) -> Option<SocketAddr> {
    listeners.iter().find(|(k, _)| *k == key).map(|(_, a)| *a)
}

/// Drops idle vehicles from the rate limiter every [`RATE_LIMIT_SWEEP`],
/// until shutdown.
async fn sweep_rate_limiter(
    limiter: RateLimiter,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let mut tick = tokio::time::interval(RATE_LIMIT_SWEEP);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => limiter.forget_idle(),
        }
    }
}

/// Sets `fleetpipe_pipeline_inflight_bytes` every [`INFLIGHT_GAUGE`], until
/// shutdown.
async fn update_inflight_gauge(
    probe: InflightProbe,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let gauge = crate::metrics::pipeline_inflight_bytes();
    let mut tick = tokio::time::interval(INFLIGHT_GAUGE);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => gauge.set(probe.bytes() as f64),
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
        .map(|(name, _)| crate::metrics::sink_queue_depth(name))
        .collect();
    let Some(((last_name, last), others)) = sinks.split_last() else {
        return Ok(());
    };
    let mut sent: u64 = 0;
    while let Some(record) = input.recv().await {
        for (name, sink) in others {
            let closed = || PipelineError::SinkClosed { sink: name };
            sink.send(record.fork()).await.map_err(|_| closed())?;
        }
        let closed = || PipelineError::SinkClosed { sink: last_name };
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
