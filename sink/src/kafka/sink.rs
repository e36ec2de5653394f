//! The Kafka sink's async loop: records from the input queue, sent in input
//! order, each acknowledged by its own delivery report.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{Gauge, Histogram};
use fleetpipe_model::topic_record::{self, Encoded};
use fleetpipe_model::{Accepted, Ack, RawRecord, SinkRecord};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::service::{self, EmbeddedCluster, ErrorSignal, Producer};
use super::{KafkaConfig, KafkaError, KafkaFormat};
use crate::metrics::{self, StreamCounters};
use crate::stream::Stream;

/// Value of the `sink` label of every metric this sink records.
const SINK: &str = "kafka";

/// Longest wait before retrying a record librdkafka refused because its
/// local queue is full; a delivery report ends the wait sooner.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(50);

/// Sends every record it receives to Kafka (telemetry, dead letters and
/// events to their topics, keyed by vehicle) through an idempotent producer,
/// and acknowledges each record only once its delivery report says the
/// cluster has it (`acks=all`).
///
/// Create it with [`KafkaSink::new`] (which creates the producer, and in
/// embedded mode the cluster, so a bad configuration fails at startup) and
/// drive it with [`KafkaSink::run`].
pub struct KafkaSink {
    producer: Producer,
    errors: Arc<ErrorSignal>,
    routing: Routing,
    format: KafkaFormat,
    max_in_flight: usize,
    bootstrap: String,
    /// `fleetpipe_sink_inflight`: raised per record sent, lowered by the
    /// producer's delivery callback.
    in_flight: Gauge,
    /// The mock cluster in embedded mode; it lives until the sink and every
    /// clone of this handle are gone.
    embedded: Option<Arc<EmbeddedCluster>>,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("bootstrap", &self.bootstrap)
            .field("routing", &self.routing)
            .field("format", &self.format)
            .field("max_in_flight", &self.max_in_flight)
            .field("embedded", &self.embedded.is_some())
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Validates `config` and creates the producer (`enable.idempotence`,
    /// `acks=all`, the compression, linger and batch options, then the
    /// pass-through map, which wins).
    ///
    /// With `brokers = "embedded"` it first starts librdkafka's mock cluster
    /// (3 brokers) with the three topics and logs its bootstrap address, so
    /// any Kafka client (kcat, ...) can read what the sink writes.
    ///
    /// # Errors
    ///
    /// An invalid setting, a mock cluster that cannot start, or options
    /// librdkafka refuses (e.g. an unknown pass-through key).
    pub async fn new(config: KafkaConfig) -> Result<Self, KafkaError> {
        let routing = Routing::Outputs {
            telemetry: config.telemetry_topic.clone(),
            events: config.events_topic.clone(),
            dead_letters: config.dlq_topic.clone(),
        };
        Self::build(config, routing).await
    }

    /// A sink that produces every record to the raw topic `topic` instead
    /// (the `gateway` role): telemetry records as the accepted pings they
    /// are (no enrichment yet), dead letters as they are, each with the raw
    /// topic's `record` header (see `fleetpipe_model::topic_record`).
    ///
    /// # Errors
    ///
    /// As [`KafkaSink::new`].
    pub async fn raw(config: KafkaConfig, topic: String) -> Result<Self, KafkaError> {
        Self::build(config, Routing::Raw { topic }).await
    }

    async fn build(config: KafkaConfig, routing: Routing) -> Result<Self, KafkaError> {
        config.validate()?;
        let embedded = if config.is_embedded() {
            let topics = routing.topics();
            let cluster = EmbeddedCluster::start(
                service::EMBEDDED_BROKERS,
                topics,
                config.embedded_partitions,
            )
            .await?;
            tracing::info!(
                bootstrap = cluster.bootstrap_servers(),
                brokers = service::EMBEDDED_BROKERS,
                partitions = config.embedded_partitions,
                "embedded Kafka (librdkafka mock cluster) listening"
            );
            Some(Arc::new(cluster))
        } else {
            None
        };
        let brokers = embedded
            .as_ref()
            .map_or(config.brokers.as_str(), |c| c.bootstrap_servers());
        // The pass-through map wins, so it may name other servers.
        let bootstrap = config
            .librdkafka
            .get("bootstrap.servers")
            .map_or(brokers, String::as_str)
            .to_owned();
        let reports = DeliveryMetrics::new();
        let in_flight = reports.in_flight.clone();
        let (producer, errors) = service::create_producer(&config, brokers, reports)?;
        Ok(Self {
            producer,
            errors,
            in_flight,
            routing,
            format: config.format,
            max_in_flight: config.max_in_flight,
            bootstrap,
            embedded,
        })
    }

    /// The bootstrap servers actually used (the mock cluster's address in
    /// embedded mode).
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap.clone()
    }

    /// The embedded mock cluster, for tests that take its brokers down or
    /// read from it after the sink is gone.
    #[cfg(test)]
    pub(crate) fn embedded_cluster(&self) -> Option<Arc<EmbeddedCluster>> {
        self.embedded.clone()
    }

    /// A handle on the embedded mock cluster (`brokers = "embedded"`), for
    /// development and fault-injection tests; `None` with real brokers.
    pub fn embedded(&self) -> Option<EmbeddedKafka> {
        self.embedded.clone().map(EmbeddedKafka)
    }

    /// Runs until `input` is closed and drained (every sender dropped) and
    /// every delivery report is in, then returns.
    ///
    /// Records are sent in input order, so a vehicle's records keep their
    /// order in its partition. A record's ack is marked delivered only by its
    /// successful delivery report; a record that fails (librdkafka retries
    /// transient errors for up to 5 minutes first) fails only its own ack and
    /// is logged and counted. While librdkafka's queue is full, or
    /// `max_in_flight` reports are pending, the sink stops reading `input`,
    /// which pushes back on the stages before it.
    ///
    /// # Errors
    ///
    /// [`KafkaError::Fatal`] when the producer hits a fatal error; it returns
    /// at once, and every record not yet delivered, or still in `input`,
    /// reports `Failed`.
    pub async fn run(self, mut input: mpsc::Receiver<SinkRecord>) -> Result<(), KafkaError> {
        let KafkaSink {
            producer,
            errors,
            routing,
            format,
            max_in_flight,
            bootstrap: _,
            in_flight,
            embedded,
        } = self;
        let sender = Sender {
            producer: &producer,
            routing: &routing,
            format,
            max_in_flight,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            report_arrived: Arc::new(Notify::new()),
            in_flight,
        };
        let fatal = tokio::select! {
            // A fatal error first: nothing sent after it can succeed.
            biased;
            fatal = service::fatal_error(&producer, &errors) => Some(fatal),
            () = sender.run(&mut input) => None,
        };

        let result = if let Some((code, reason)) = fatal {
            tracing::error!(
                code = %code,
                reason,
                "kafka sink: stopping; records not yet delivered report Failed"
            );
            count_error(ErrorKind::Fatal);
            // The records still queued fail now; those librdkafka holds fail
            // when the producer is dropped below, which purges them.
            drop(input);
            Err(KafkaError::Fatal { code, reason })
        } else {
            Ok(())
        };
        // Dropping the producer purges what it still holds (each purged
        // record's report fails its ack), flushes for up to 500 ms and joins
        // librdkafka's threads, the cluster joins its own: keep that off the
        // runtime's workers.
        drop(sender);
        let _ = tokio::task::spawn_blocking(move || {
            drop(producer);
            drop(embedded);
        })
        .await;
        result
    }
}

/// Which topics the sink produces to, and in which records.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Routing {
    /// The output topics (roles `all` and, later, `enrich`): each stream
    /// to its own topic.
    Outputs {
        telemetry: String,
        events: String,
        dead_letters: String,
    },
    /// Everything to the raw topic (role `gateway`).
    Raw { topic: String },
}

impl Routing {
    /// Every topic it writes (created in the embedded mock cluster).
    fn topics(&self) -> Vec<String> {
        match self {
            Routing::Outputs {
                telemetry,
                events,
                dead_letters,
            } => vec![telemetry.clone(), events.clone(), dead_letters.clone()],
            Routing::Raw { topic } => vec![topic.clone()],
        }
    }

    /// The topic of a record of `stream`.
    fn topic(&self, stream: Stream) -> &str {
        match (self, stream) {
            (Routing::Raw { topic }, _) => topic,
            (Routing::Outputs { telemetry, .. }, Stream::Telemetry) => telemetry,
            (Routing::Outputs { events, .. }, Stream::Event) => events,
            (Routing::Outputs { dead_letters, .. }, Stream::DeadLetter) => dead_letters,
        }
    }

    /// `record` as produced, and its ack.
    fn encode(
        &self,
        record: SinkRecord,
        format: KafkaFormat,
    ) -> Result<(Encoded, Ack), EncodeError> {
        match self {
            Routing::Outputs { .. } => {
                let encoded = topic_record::encode(&record, format)?;
                Ok((encoded, record.into_ack()))
            }
            Routing::Raw { .. } => {
                let raw = match record {
                    SinkRecord::Telemetry(t) => RawRecord::Ping(Accepted {
                        ping: t.ping,
                        origin: t.origin,
                        ack: t.ack,
                    }),
                    SinkRecord::DeadLetter(d) => RawRecord::DeadLetter(d),
                    // Events come from enrichment, which a gateway does not run.
                    SinkRecord::Event(_) => return Err(EncodeError::EventOnRawTopic),
                };
                let encoded = topic_record::encode_raw(&raw)?;
                Ok((encoded, raw.into_ack()))
            }
        }
    }
}

/// Why a record could not be encoded.
#[derive(Debug, thiserror::Error)]
enum EncodeError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("an event has no place on the raw topic")]
    EventOnRawTopic,
}

/// The sending half of a running sink.
struct Sender<'a> {
    producer: &'a Producer,
    routing: &'a Routing,
    format: KafkaFormat,
    /// Permits of `permits` in all.
    max_in_flight: usize,
    /// One permit per record in flight (sent, report pending).
    permits: Arc<Semaphore>,
    /// Signalled by every delivery report: room in librdkafka's queue.
    report_arrived: Arc<Notify>,
    /// `fleetpipe_sink_inflight`.
    in_flight: Gauge,
}

impl Sender<'_> {
    /// Sends every record of `input` in order and returns once `input` is
    /// closed and every delivery report is in.
    async fn run(&self, input: &mut mpsc::Receiver<SinkRecord>) {
        while let Some(record) = input.recv().await {
            // The semaphore is never closed.
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                break;
            };
            let stream = Stream::of(&record);
            let (encoded, ack) = match self.routing.encode(record, self.format) {
                Ok(encoded) => encoded,
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        stream = stream.as_str(),
                        "kafka sink: record could not be serialized; it is dropped and its ack fails"
                    );
                    count_error(ErrorKind::Serialize);
                    continue;
                }
            };
            let delivery = Box::new(Delivery {
                ack,
                stream,
                bytes: encoded.value.len() as u64,
                sent_at: Instant::now(),
                _in_flight: InFlight::new(
                    permit,
                    Arc::clone(&self.report_arrived),
                    self.in_flight.clone(),
                ),
            });
            if let Err(e) = self.send(stream, &encoded, delivery).await {
                let kind = ErrorKind::of(&e);
                tracing::error!(
                    error = %e,
                    kind = kind.as_str(),
                    stream = stream.as_str(),
                    key = encoded.key.as_ref().map(|k| k.as_str()),
                    "kafka sink: librdkafka refused the record; its ack fails"
                );
                count_error(kind);
            }
        }
        // Every report is in once every permit is back.
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _ = self.permits.acquire_many(all).await;
    }

    /// Hands `record` (of `stream`) to librdkafka, waiting while its queue
    /// is full. A refused record's `delivery` is dropped, which fails its
    /// ack.
    async fn send(
        &self,
        stream: Stream,
        record: &Encoded,
        delivery: Box<Delivery>,
    ) -> Result<(), RdKafkaError> {
        let topic = self.routing.topic(stream);
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut message: BaseRecord<'_, str, [u8], Box<Delivery>> =
            BaseRecord::with_opaque_to(topic, delivery)
                .payload(&record.value[..])
                .headers(headers);
        if let Some(timestamp_ms) = record.timestamp_ms {
            message = message.timestamp(timestamp_ms);
        }
        if let Some(key) = &record.key {
            message = message.key(key.as_str());
        }
        loop {
            match self.producer.send(message) {
                Ok(()) => return Ok(()),
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's queue holds records until their reports
                    // are served: wait for one (or a short while) and retry
                    // the same record, so input order is kept.
                    metrics::retried(SINK);
                    message = back;
                    let _ =
                        tokio::time::timeout(QUEUE_FULL_BACKOFF, self.report_arrived.notified())
                            .await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

/// The metrics a delivery report updates, registered once (the reports
/// arrive on librdkafka's thread, one per record).
#[derive(Debug, Clone)]
pub(crate) struct DeliveryMetrics {
    /// `fleetpipe_sink_records_total` and `fleetpipe_sink_bytes_total`.
    written: StreamCounters,
    /// `fleetpipe_sink_delivery_seconds`: from send to report.
    seconds: Histogram,
    /// `fleetpipe_sink_inflight`.
    in_flight: Gauge,
}

impl DeliveryMetrics {
    fn new() -> Self {
        Self {
            written: StreamCounters::new(SINK),
            seconds: metrics::delivery_seconds(SINK),
            in_flight: metrics::inflight(SINK),
        }
    }
}

/// One record in flight: holds its permit and counts it in the gauge until
/// its report is in (or librdkafka refused it).
struct InFlight {
    _permit: OwnedSemaphorePermit,
    report_arrived: Arc<Notify>,
    gauge: Gauge,
}

impl InFlight {
    fn new(permit: OwnedSemaphorePermit, report_arrived: Arc<Notify>, gauge: Gauge) -> Self {
        gauge.increment(1.0);
        Self {
            _permit: permit,
            report_arrived,
            gauge,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        self.report_arrived.notify_one();
    }
}

/// What a record's delivery report settles. It travels through librdkafka
/// with the record (the producer's delivery opaque) and comes back in
/// [`Delivery::settle`]; dropped unsettled, its ack fails.
pub(crate) struct Delivery {
    ack: Ack,
    stream: Stream,
    /// Size of the value, for `fleetpipe_sink_bytes_total`.
    bytes: u64,
    sent_at: Instant,
    _in_flight: InFlight,
}

impl Delivery {
    /// Settles the ack from the record's delivery report: delivered only if
    /// the cluster has the record.
    pub(crate) fn settle(self, report: &DeliveryResult<'_>, metrics: &DeliveryMetrics) {
        let Delivery {
            ack,
            stream,
            bytes,
            sent_at,
            _in_flight: in_flight,
        } = self;
        drop(in_flight);
        metrics.seconds.record(sent_at.elapsed().as_secs_f64());
        match report {
            Ok(_) => {
                metrics.written.written(stream, 1, bytes);
                fleetpipe_kafka::crash_point("sink.kafka.delivered");
                ack.delivered();
            }
            Err((e, message)) => {
                let kind = ErrorKind::of(e);
                if matches!(
                    e,
                    RdKafkaError::MessageProduction(
                        RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
                    )
                ) {
                    // Purged by a stopping producer, which logged why once.
                    tracing::debug!(
                        stream = stream.as_str(),
                        "kafka sink: record purged; its ack fails"
                    );
                } else {
                    let key = rdkafka::Message::key(message).map(String::from_utf8_lossy);
                    tracing::error!(
                        error = %e,
                        kind = kind.as_str(),
                        stream = stream.as_str(),
                        key = key.as_deref(),
                        "kafka sink: record not delivered; its ack fails"
                    );
                }
                count_error(kind);
                drop(ack);
            }
        }
    }
}

/// The `kind` label of `fleetpipe_sink_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Transient: the same record may well succeed later (timeouts, brokers
    /// unreachable, leader elections). librdkafka already retried it until
    /// `message.timeout.ms`.
    Retriable,
    /// Permanent: retrying the same record cannot help (too large, not
    /// authorized, producer fenced or in a fatal state).
    Fatal,
    /// The record could not be encoded.
    Serialize,
}

impl ErrorKind {
    /// How to count a produce or delivery error.
    pub(crate) fn of(error: &RdKafkaError) -> Self {
        match error {
            RdKafkaError::MessageProduction(code) if is_retriable(*code) => ErrorKind::Retriable,
            _ => ErrorKind::Fatal,
        }
    }

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Retriable => "retriable",
            ErrorKind::Fatal => "fatal",
            ErrorKind::Serialize => "serialize",
        }
    }
}

/// Whether a record that failed with `code` might succeed if sent again.
pub(crate) const fn is_retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        // librdkafka's local conditions.
        C::MessageTimedOut
            | C::QueueFull
            | C::OperationTimedOut
            | C::TimedOutQueue
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::WaitCache
            | C::Retry
            | C::PurgeQueue
            | C::PurgeInflight
            | C::NodeUpdate
            // Broker answers Kafka marks retriable.
            | C::UnknownTopicOrPartition
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::RequestTimedOut
            | C::BrokerNotAvailable
            | C::ReplicaNotAvailable
            | C::NetworkException
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::KafkaStorageError
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
            | C::PreferredLeaderNotAvailable
            | C::ThrottlingQuotaExceeded
    )
}

fn count_error(kind: ErrorKind) {
    metrics::error(SINK, kind.as_str());
}

/// The embedded mock cluster of a [`KafkaSink`]: its address, and a switch
/// that takes every broker down and back up (to rehearse an outage). It
/// keeps the cluster alive for as long as it is held.
#[derive(Debug, Clone)]
pub struct EmbeddedKafka(Arc<EmbeddedCluster>);

impl EmbeddedKafka {
    /// The brokers' `host:port` list.
    pub fn bootstrap_servers(&self) -> &str {
        self.0.bootstrap_servers()
    }

    /// Takes every broker down (`up = false`: connections closed, new ones
    /// refused) or brings them all back.
    pub async fn set_brokers_up(&self, up: bool) -> Result<(), KafkaError> {
        self.0
            .set_brokers_up(up)
            .await
            .map_err(KafkaError::Embedded)
    }
}
