//! The Kafka side of the sink: the producer (its options and the librdkafka
//! callbacks) and, in embedded mode, the mock cluster it talks to.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use tokio::sync::{Notify, oneshot};

use super::sink::{Delivery, DeliveryMetrics};
use super::{KafkaConfig, KafkaError};

/// Brokers of the embedded mock cluster.
pub(crate) const EMBEDDED_BROKERS: i32 = 3;

/// How long librdkafka keeps retrying a record before failing its delivery
/// (`message.timeout.ms`): long enough to ride out a broker restart or a
/// short network partition without failing any ack.
pub(crate) const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The producer the sink sends through. Its own thread serves the delivery
/// reports by calling [`SinkContext::delivery`]: no task, channel or wakeup
/// per record.
pub(crate) type Producer = ThreadedProducer<SinkContext>;

/// Signalled by every error librdkafka reports. librdkafka reports a fatal
/// error with the code of its cause (not `__FATAL`), so the sink answers
/// each signal by asking the producer whether it is in a fatal state
/// ([`fatal_error`]).
#[derive(Debug, Default)]
pub(crate) struct ErrorSignal(Notify);

/// Waits until the producer is in a fatal state; returns the error code and
/// reason librdkafka gives.
pub(crate) async fn fatal_error(
    producer: &Producer,
    signal: &ErrorSignal,
) -> (RDKafkaErrorCode, String) {
    loop {
        // librdkafka sets the fatal state before it reports the error, and
        // a report between this check and the wait leaves a permit behind,
        // so no fatal error goes unnoticed.
        if let Some(fatal) = producer.client().fatal_error() {
            return fatal;
        }
        signal.0.notified().await;
    }
}

/// librdkafka callbacks: logs go to `tracing`, errors also signal the sink
/// to check for a fatal state, delivery reports settle their record's ack.
#[derive(Debug)]
pub(crate) struct SinkContext {
    errors: Arc<ErrorSignal>,
    reports: DeliveryMetrics,
}

impl ProducerContext for SinkContext {
    /// Carried through librdkafka with each record, handed back with its report.
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, report: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        delivery.settle(report, &self.reports);
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{log_message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility = fac, "{log_message}");
            }
        }
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        // Mostly transient (brokers down, timeouts, name resolution), which
        // librdkafka rides out by itself; a fatal error is logged by
        // librdkafka at the highest level and by the sink when it stops.
        tracing::warn!(%error, reason, "kafka sink: producer error");
        self.errors.0.notify_one();
    }
}

/// The producer options: fleetpipe's, then the pass-through map, which wins.
pub(crate) fn producer_config(config: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        // One partitioner for every producer of a topic: the Java client's
        // murmur2 (see fleetpipe-kafka), which the roles' consumers and any
        // Kafka Streams application co-partitioning by vehicle agree with.
        .set("partitioner", fleetpipe_kafka::PARTITIONER)
        .set("client.id", "fleetpipe")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &config.compression)
        // librdkafka takes fractional milliseconds.
        .set(
            "linger.ms",
            (config.linger.as_secs_f64() * 1000.0).to_string(),
        )
        .set("batch.size", config.batch_bytes.to_string())
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        );
    for (key, value) in &config.librdkafka {
        client.set(key, value);
    }
    client
}

/// Creates the producer for `bootstrap` and the signal its errors raise.
/// Delivery reports are counted in `reports`.
pub(crate) fn create_producer(
    config: &KafkaConfig,
    bootstrap: &str,
    reports: DeliveryMetrics,
) -> Result<(Producer, Arc<ErrorSignal>), KafkaError> {
    let errors = Arc::new(ErrorSignal::default());
    let context = SinkContext {
        errors: Arc::clone(&errors),
        reports,
    };
    let producer = producer_config(config, bootstrap)
        .create_with_context(context)
        .map_err(KafkaError::Producer)?;
    Ok((producer, errors))
}

/// librdkafka's mock cluster, running for as long as this handle lives.
///
/// A `MockCluster` may not leave the thread that created it, so a thread of
/// its own creates it, creates the topics, and keeps it until the handle is
/// dropped; the handle itself can go anywhere.
#[derive(Debug)]
pub(crate) struct EmbeddedCluster {
    bootstrap: String,
    /// Closing it tells the thread to destroy the cluster.
    commands: Option<std::sync::mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

/// A request to the thread owning the cluster.
#[derive(Debug)]
enum Command {
    /// Takes every broker down (`false`) or up again (`true`).
    SetBrokersUp {
        up: bool,
        reply: oneshot::Sender<Result<(), RdKafkaError>>,
    },
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` brokers with `topics`, each of
    /// `partitions` partitions.
    pub(crate) async fn start(
        brokers: i32,
        topics: Vec<String>,
        partitions: i32,
    ) -> Result<Self, KafkaError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (commands, commands_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fleetpipe-kafka-embedded".to_owned())
            .spawn(move || serve(brokers, &topics, partitions, ready_tx, &commands_rx))
            .map_err(KafkaError::EmbeddedThread)?;
        let mut cluster = Self {
            bootstrap: String::new(),
            commands: Some(commands),
            thread: Some(thread),
        };
        // The thread always answers before it ends; a panic drops the sender.
        let bootstrap = ready_rx
            .await
            .unwrap_or(Err(RdKafkaError::MockCluster(RDKafkaErrorCode::Fail)))
            .map_err(KafkaError::Embedded)?;
        cluster.bootstrap = bootstrap;
        Ok(cluster)
    }

    /// The brokers' `host:port` list.
    pub(crate) fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Takes every broker down (`up = false`: connections are closed, new
    /// ones refused) or brings them back.
    pub(crate) async fn set_brokers_up(&self, up: bool) -> Result<(), RdKafkaError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .as_ref()
            .and_then(|c| c.send(Command::SetBrokersUp { up, reply }).ok())
            .ok_or(RdKafkaError::MockCluster(RDKafkaErrorCode::Fail))?;
        answer
            .await
            .unwrap_or(Err(RdKafkaError::MockCluster(RDKafkaErrorCode::Fail)))
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            // Destroying the cluster only stops its thread and closes its
            // sockets; waiting for it keeps a stopped sink from leaving
            // ports open behind it.
            let _ = thread.join();
        }
    }
}

/// The cluster thread: creates the cluster and the topics, reports the
/// bootstrap address, serves commands until the handle is dropped.
fn serve(
    brokers: i32,
    topics: &[String],
    partitions: i32,
    ready: oneshot::Sender<Result<String, RdKafkaError>>,
    commands: &std::sync::mpsc::Receiver<Command>,
) {
    let cluster = match MockCluster::new(brokers) {
        Ok(cluster) => cluster,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    for topic in topics {
        if let Err(e) = cluster.create_topic(topic, partitions, brokers) {
            let _ = ready.send(Err(e));
            return;
        }
    }
    if ready.send(Ok(cluster.bootstrap_servers())).is_err() {
        return;
    }
    #[allow(clippy::never_loop, reason = "outside tests there is no command")]
    while let Ok(command) = commands.recv() {
        match command {
            Command::SetBrokersUp { up, reply } => {
                // -1: every broker.
                let result = if up {
                    cluster.broker_up(-1)
                } else {
                    cluster.broker_down(-1)
                };
                let _ = reply.send(result);
            }
        }
    }
}
