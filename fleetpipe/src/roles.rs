//! The topology of each role (`cluster.role`), assembled from the same
//! components:
//!
//! ```text
//! all:     sources ─▶ enrichment ─▶ fan-out ─▶ sinks
//! gateway: sources ─▶ raw ─────────▶ fan-out ─▶ Kafka (raw topic)
//! enrich:  Kafka group (raw topic) ─▶ decode ─▶ partitioned enrichment ─▶ Kafka (outputs)
//!                                                      └▶ changelog topic
//! writer:  Kafka group (telemetry, events, dead letters) ─▶ decode ─▶ fan-out ─▶ sinks
//! read:    Kafka tail (telemetry, events; every partition) ─▶ decode ─▶ live feed
//! ```
//!
//! Each returns its tasks in two sets: those that take data in (the
//! sources, the consumer group, the tail), which stop first at shutdown,
//! and the stages behind them, which drain after.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use fleetpipe_enrich::partitioned::{
    PartitionedEnrich, PartitionedError, PartitionedInput, PartitionedSetup,
};
use fleetpipe_geofence::service::FenceService;
use fleetpipe_ingest::gateway::InflightProbe;
use fleetpipe_ingest::{Authenticator, SourceContext};
use fleetpipe_kafka::changelog::Changelog;
use fleetpipe_kafka::group::{Delivery, GroupConsumer, OwnershipListener};
use fleetpipe_kafka::tail::Tail;
use fleetpipe_kafka::{TopicSpec, ensure_topics, producer_config};
use fleetpipe_model::topic_record::{Decoded, Stream, decode};
use fleetpipe_model::{Accepted, DeadLetter, Gateway, Origin, RawRecord, RejectReason, SinkRecord};
use fleetpipe_sink::{KafkaEndpoint, SinkConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Role, consumer_client};
use crate::config::Config;
use crate::pipeline::{
    PipelineError, Queues, build_sinks, build_sources, run_housekeeping, run_sinks, run_sources,
    start_enrichment,
};
use crate::tasks::{Failure, Tasks};

/// What a role's topology runs.
pub(crate) struct Running {
    /// What takes data in: ends first at shutdown.
    pub(crate) intake: Tasks,
    /// The stages behind it: they drain after.
    pub(crate) stages: Tasks,
    /// Every bound listener of the sources: configuration key, address.
    pub(crate) listeners: Vec<(&'static str, SocketAddr)>,
    /// Where Kafka readers find what the Kafka sink writes.
    pub(crate) kafka: Option<KafkaEndpoint>,
    /// Bytes of the sources' messages in the pipeline (none without sources).
    pub(crate) inflight: Option<InflightProbe>,
    /// Restores in progress (enrich role): not ready while above 0.
    pub(crate) restoring: Option<Arc<AtomicUsize>>,
}

impl Running {
    /// A role that reads Kafka: no listeners of its own, no sources.
    fn consuming(intake: Tasks, stages: Tasks) -> Self {
        Self {
            intake,
            stages,
            listeners: Vec::new(),
            kafka: None,
            inflight: None,
            restoring: None,
        }
    }
}

/// What turns accepted pings into records in the roles that ingest.
#[derive(Debug, Clone, Copy)]
enum Transform {
    /// Enrichment (role `all`).
    Enrichment,
    /// None: the pings as accepted, for the raw topic (role `gateway`).
    Raw,
}

/// The stage between the sources and the fan-out.
type Stage = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PipelineError>> + Send>>;

/// What every role starts from.
pub(crate) struct RoleContext<'a> {
    pub(crate) config: &'a Config,
    pub(crate) auth: &'a Arc<Authenticator>,
    pub(crate) fences: &'a FenceService,
    pub(crate) shutdown: &'a CancellationToken,
    pub(crate) failure: &'a Failure,
    /// The live feed (`[api.feed]`): fed by the roles that see every
    /// enriched record (`all`, `read`).
    pub(crate) feed: Option<&'a fleetpipe_query::feed::Feed>,
    /// The query API (`[api]`): a read node seeds the feed from its
    /// database.
    pub(crate) api: Option<&'a fleetpipe_query::QueryApi>,
}

impl RoleContext<'_> {
    /// Starts the topology of `cluster.role`.
    pub(crate) async fn start(&self) -> Result<Running, PipelineError> {
        match self.config.cluster.role {
            Role::All => self.ingest(Transform::Enrichment).await,
            Role::Gateway => self.ingest(Transform::Raw).await,
            Role::Enrich => self.enrich().await,
            Role::Writer => self.writer().await,
            Role::Read => self.read().await,
        }
    }

    /// The roles that ingest: sources → `transform` → fan-out → sinks. With
    /// enrichment (`all`), every configured sink; raw (`gateway`), the raw
    /// topic only, so a device hears "stored" when the raw record is in
    /// Kafka.
    async fn ingest(&self, transform: Transform) -> Result<Running, PipelineError> {
        let config = self.config;
        let queues = Queues::new(config);
        let sources = build_sources(config, &self.source_context(&queues)).await?;
        // Sinks that connect somewhere (and may wait for it) are built after
        // the listeners are bound, so a taken port still fails fast.
        let sinks = match transform {
            Transform::Enrichment => config.sink.configured(),
            Transform::Raw => {
                let kafka = config.sink.kafka.as_ref().ok_or(PipelineError::NoKafka)?;
                self.ensure(kafka, &[&config.cluster.raw_topic]).await?;
                vec![SinkConfig::RawKafka {
                    kafka: kafka.clone(),
                    topic: config.cluster.raw_topic.clone(),
                }]
            }
        };
        let feed = match transform {
            Transform::Enrichment => self.feed,
            Transform::Raw => None,
        };
        let sinks = build_sinks(config, sinks, feed).await?;
        let Queues {
            ingestor,
            pings,
            enriched,
            records,
        } = queues;
        let (name, stage): (&'static str, Stage) = match transform {
            Transform::Enrichment => {
                let enrich = start_enrichment(config, self.fences, pings, enriched).await?;
                let join =
                    async move { enrich.join().await.map_err(PipelineError::FinalCheckpoint) };
                ("enrichment", Box::pin(join))
            }
            Transform::Raw => ("raw", Box::pin(forward_raw(pings, enriched))),
        };
        let mut stages = Tasks::new(self.failure.clone());
        let kafka = sinks.iter().find_map(|sink| sink.kafka.clone());
        run_sinks(&mut stages, records, sinks);
        stages.spawn(name, stage);
        let (intake, listeners, inflight) = self.run_intake(&ingestor, sources);
        Ok(Running {
            intake,
            stages,
            listeners,
            kafka,
            inflight: Some(inflight),
            restoring: None,
        })
    }

    /// A member of the enrich group: the raw topic's owned partitions,
    /// enriched into the output topics, each vehicle's state in the
    /// changelog; a raw offset is committed once the outputs and the
    /// snapshot of what it changed are in Kafka.
    async fn enrich(&self) -> Result<Running, PipelineError> {
        let config = self.config;
        let cluster = &config.cluster;
        let kafka = config.sink.kafka.as_ref().ok_or(PipelineError::NoKafka)?;
        let topics = [
            cluster.topic_spec(&cluster.raw_topic),
            cluster.topic_spec(&kafka.telemetry_topic),
            cluster.topic_spec(&kafka.events_topic),
            cluster.topic_spec(&kafka.dlq_topic),
            Changelog::spec(
                &cluster.changelog_topic,
                cluster.partitions,
                cluster.replication_factor,
            ),
        ];
        self.ensure_specs(kafka, &topics).await?;
        let sinks = build_sinks(config, vec![SinkConfig::Kafka(kafka.clone())], None).await?;
        let client = consumer_client(kafka)?;
        let changelog = Changelog::new(
            &cluster.changelog_topic,
            producer_config(&kafka.brokers, &kafka.librdkafka)?,
            client.clone(),
        )?;
        let (records_tx, records) = mpsc::channel(config.pipeline.sink_queue);
        let setup = PartitionedSetup {
            fences: self.fences.index(),
            changelog,
            changelog_interval: cluster.changelog_interval,
            restore_timeout: cluster.restore_timeout,
        };
        let stage = PartitionedEnrich::start(&config.enrich, setup, records_tx.clone())?;
        let restoring = stage.ownership.restoring();
        let listener: Arc<dyn OwnershipListener> = stage.ownership;
        let group = cluster.group_id(Role::Enrich);
        let consumer = GroupConsumer::start_with(
            client,
            &group,
            &cluster.group,
            &[&cluster.raw_topic],
            Some(listener),
        )?;
        let (deliveries_tx, deliveries) = mpsc::channel(config.pipeline.ping_queue);
        let mut stages = Tasks::new(self.failure.clone());
        run_sinks(&mut stages, records, sinks);
        stages.spawn(
            "decode raw",
            decode_raw(deliveries, stage.input, records_tx),
        );
        let mut enrich_tasks = stage.tasks;
        stages.spawn("partitioned enrichment", async move {
            while let Some(outcome) = enrich_tasks.join_next().await {
                match outcome {
                    Ok(result) => result?,
                    Err(e) => return Err(PartitionedError::Task(e.to_string()).into()),
                }
            }
            Ok(())
        });
        let intake = self.run_consumer(consumer, deliveries_tx);
        tracing::info!(%group, changelog = %cluster.changelog_topic, "enrich: consuming the raw topic");
        Ok(Running {
            restoring: Some(restoring),
            ..Running::consuming(intake, stages)
        })
    }

    /// A member of the writer group: the output topics into the file and
    /// database sinks, each offset committed once every sink holds its record.
    async fn writer(&self) -> Result<Running, PipelineError> {
        let config = self.config;
        let kafka = config.sink.kafka.as_ref().ok_or(PipelineError::NoKafka)?;
        let local: Vec<SinkConfig> = config
            .sink
            .configured()
            .into_iter()
            .filter(|sink| !matches!(sink, SinkConfig::Kafka(_)))
            .collect();
        // No live feed here: a writer sees only its group's share of the
        // partitions (the configuration check refuses [api.feed]).
        let sinks = build_sinks(config, local, None).await?;
        let topics = OutputTopics {
            telemetry: kafka.telemetry_topic.clone(),
            events: kafka.events_topic.clone(),
            dead_letters: kafka.dlq_topic.clone(),
        };
        self.ensure(
            kafka,
            &[&topics.telemetry, &topics.events, &topics.dead_letters],
        )
        .await?;
        let client = consumer_client(kafka)?;
        let group = config.cluster.group_id(Role::Writer);
        let consumer = GroupConsumer::start(
            client,
            &group,
            &config.cluster.group,
            &[&topics.telemetry, &topics.events, &topics.dead_letters],
        )?;
        let (deliveries_tx, deliveries) = mpsc::channel(config.pipeline.ping_queue);
        let (records_tx, records) = mpsc::channel(config.pipeline.sink_queue);
        let mut stages = Tasks::new(self.failure.clone());
        run_sinks(&mut stages, records, sinks);
        stages.spawn("decode", decode_outputs(deliveries, records_tx, topics));
        let intake = self.run_consumer(consumer, deliveries_tx);
        tracing::info!(%group, "writer: consuming the output topics");
        Ok(Running::consuming(intake, stages))
    }

    /// A read node: every partition of the telemetry and events topics,
    /// from their end, outside any consumer group, into the live feed
    /// only; the feed's latest positions seeded from the database.
    async fn read(&self) -> Result<Running, PipelineError> {
        let config = self.config;
        let kafka = config.sink.kafka.as_ref().ok_or(PipelineError::NoKafka)?;
        let feed = self.feed.ok_or(PipelineError::NoFeed)?;
        let topics = OutputTopics {
            telemetry: kafka.telemetry_topic.clone(),
            events: kafka.events_topic.clone(),
            dead_letters: kafka.dlq_topic.clone(),
        };
        // Created when missing (as a writer does), so a read node may start
        // first; an existing topic with another partition count is refused.
        self.ensure(kafka, &[&topics.telemetry, &topics.events])
            .await?;
        let client = consumer_client(kafka)?;
        let consumer_id = config.cluster.read_consumer_id();
        let names = [topics.telemetry.clone(), topics.events.clone()];
        let timeout = config.cluster.topic_timeout;
        let tail = {
            let consumer_id = consumer_id.clone();
            // Metadata and watermark requests block: off the workers.
            tokio::task::spawn_blocking(move || {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                Tail::start(client, &consumer_id, &names, timeout)
            })
            .await
            .map_err(|_| PipelineError::TaskPanicked { task: "kafka tail" })??
        };
        // Seeded after the ends were read, so all the seed can miss is what
        // the writers had not stored yet (it shows with the vehicle's next
        // ping). Positions only move forward in device time: the seed and
        // the records read meanwhile may reach the table in either order.
        let seeded = match self.api {
            Some(api) => api.seed_feed().await?,
            None => 0,
        };
        let sinks = build_sinks(config, Vec::new(), Some(feed)).await?;
        let (deliveries_tx, deliveries) = mpsc::channel(config.pipeline.ping_queue);
        let (records_tx, records) = mpsc::channel(config.pipeline.sink_queue);
        let mut stages = Tasks::new(self.failure.clone());
        run_sinks(&mut stages, records, sinks);
        stages.spawn("decode", decode_outputs(deliveries, records_tx, topics));
        let partitions = tail.starts().len();
        let mut intake = Tasks::new(self.failure.clone());
        let shutdown = self.shutdown.clone();
        intake.spawn("kafka tail", async move {
            tail.run(deliveries_tx, shutdown)
                .await
                .map_err(PipelineError::Tail)
        });
        tracing::info!(
            consumer = %consumer_id,
            partitions,
            seeded,
            "read: serving the live feed from every partition of the telemetry and events topics"
        );
        Ok(Running::consuming(intake, stages))
    }

    /// The intake of the roles that read Kafka: the group member, handing
    /// its records to `deliveries` until shutdown.
    fn run_consumer(&self, consumer: GroupConsumer, deliveries: mpsc::Sender<Delivery>) -> Tasks {
        let mut intake = Tasks::new(self.failure.clone());
        let shutdown = self.shutdown.clone();
        intake.spawn("kafka consumer", async move {
            consumer
                .run(deliveries, shutdown)
                .await
                .map_err(PipelineError::Consumer)
        });
        intake
    }

    fn source_context(&self, queues: &Queues) -> SourceContext {
        SourceContext {
            ingestor: queues.ingestor.clone(),
            auth: Arc::clone(self.auth),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Runs the sources and the housekeeping beside them.
    fn run_intake(
        &self,
        ingestor: &fleetpipe_ingest::Ingestor,
        sources: Vec<fleetpipe_ingest::BuiltSource>,
    ) -> (Tasks, Vec<(&'static str, SocketAddr)>, InflightProbe) {
        let mut intake = Tasks::new(self.failure.clone());
        let listeners = run_sources(&mut intake, sources);
        let inflight = ingestor.inflight_probe();
        let limiter = ingestor.limiter().clone();
        run_housekeeping(&mut intake, self.auth, limiter, &inflight, self.shutdown);
        (intake, listeners, inflight)
    }

    /// Creates `topics` where missing, and checks the partition count of
    /// those that exist (`cluster.partitions`).
    async fn ensure(
        &self,
        kafka: &fleetpipe_sink::KafkaConfig,
        topics: &[&str],
    ) -> Result<(), PipelineError> {
        let cluster = &self.config.cluster;
        let specs: Vec<_> = topics.iter().map(|t| cluster.topic_spec(t)).collect();
        self.ensure_specs(kafka, &specs).await
    }

    /// Creates the topics of `specs` where missing and checks the rest.
    async fn ensure_specs(
        &self,
        kafka: &fleetpipe_sink::KafkaConfig,
        specs: &[TopicSpec],
    ) -> Result<(), PipelineError> {
        let client = consumer_client(kafka)?;
        let timeout = self.config.cluster.topic_timeout;
        for outcome in ensure_topics(&client, specs, timeout).await? {
            tracing::info!(topic = %outcome.name, partitions = outcome.partitions, status = ?outcome.status, "kafka topic");
        }
        Ok(())
    }
}

/// Accepted pings as they are, for the raw topic: enrichment happens in the
/// enrich role.
async fn forward_raw(
    mut pings: mpsc::Receiver<Accepted>,
    records: mpsc::Sender<SinkRecord>,
) -> Result<(), PipelineError> {
    while let Some(accepted) = pings.recv().await {
        let record = SinkRecord::Telemetry(fleetpipe_model::TelemetryRecord::unenriched(accepted));
        if records.send(record).await.is_err() {
            return Err(PipelineError::SinkClosed { sink: "kafka" });
        }
    }
    Ok(())
}

/// Turns each raw record back into the accepted ping (for enrichment) or
/// the dead letter (straight to the dead-letter topic) it was, with the
/// delivery's acknowledgement. A record that does not decode becomes a
/// `decode_failed` dead letter.
async fn decode_raw(
    mut deliveries: mpsc::Receiver<Delivery>,
    pings: mpsc::Sender<PartitionedInput>,
    records: mpsc::Sender<SinkRecord>,
) -> Result<(), PipelineError> {
    let stopped = |sink| PipelineError::SinkClosed { sink };
    while let Some(Delivery { record, ack }) = deliveries.recv().await {
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_ref()))
            .collect();
        let decoded = decode(Stream::Raw, record.key.as_deref(), &record.value, &headers);
        let dead_letter = match decoded {
            Ok(Decoded::Raw(RawRecord::Ping(accepted))) => {
                let input = PartitionedInput::Ping {
                    accepted: Accepted { ack, ..accepted },
                    partition: record.partition,
                    offset: record.offset,
                };
                pings.send(input).await.map_err(|_| stopped("enrichment"))?;
                continue;
            }
            Ok(Decoded::Raw(RawRecord::DeadLetter(dead))) => {
                SinkRecord::DeadLetter(DeadLetter { ack, ..dead })
            }
            Ok(Decoded::Sink(_)) => undecodable(&record, ack, "an output record on the raw topic"),
            Err(e) => undecodable(&record, ack, &e.to_string()),
        };
        records
            .send(dead_letter)
            .await
            .map_err(|_| stopped("kafka"))?;
    }
    Ok(())
}

/// The topics a writer or a read node reads, to tell which stream a
/// record came from.
struct OutputTopics {
    telemetry: String,
    events: String,
    dead_letters: String,
}

impl OutputTopics {
    fn stream(&self, topic: &str) -> Stream {
        if topic == self.telemetry {
            Stream::Telemetry
        } else if topic == self.events {
            Stream::Event
        } else {
            Stream::DeadLetter
        }
    }
}

/// Turns each consumed record back into the record it was, with the
/// delivery's acknowledgement. A record that does not decode is not lost:
/// it becomes a dead letter (`decode_failed`, the value kept as its raw
/// bytes, the topic, partition and offset in its detail), which a writer
/// stores and the live feed skips.
async fn decode_outputs(
    mut deliveries: mpsc::Receiver<Delivery>,
    records: mpsc::Sender<SinkRecord>,
    topics: OutputTopics,
) -> Result<(), PipelineError> {
    while let Some(Delivery { record, ack }) = deliveries.recv().await {
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_ref()))
            .collect();
        let stream = topics.stream(&record.topic);
        let decoded = decode(stream, record.key.as_deref(), &record.value, &headers);
        let out = match decoded {
            Ok(Decoded::Sink(decoded)) => decoded.with_ack(ack),
            Ok(Decoded::Raw(_)) => undecodable(&record, ack, "a raw record on an output topic"),
            Err(e) => undecodable(&record, ack, &e.to_string()),
        };
        if records.send(out).await.is_err() {
            return Err(PipelineError::SinkClosed { sink: "fan-out" });
        }
    }
    Ok(())
}

fn undecodable(
    record: &fleetpipe_kafka::group::ConsumedRecord,
    ack: fleetpipe_model::Ack,
    why: &str,
) -> SinkRecord {
    crate::metrics::writer_undecodable(&record.topic);
    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, error = why, "a record of an output topic does not decode; it becomes a decode_failed dead letter");
    SinkRecord::DeadLetter(DeadLetter {
        schema_version: fleetpipe_model::SCHEMA_VERSION,
        reason: RejectReason::DecodeFailed,
        detail: format!(
            "{}/{}@{}: {why}",
            record.topic, record.partition, record.offset
        ),
        vehicle_id: None,
        topic: Some(record.topic.clone()),
        origin: Origin {
            gateway: Gateway::Kafka,
            client: None,
            received_at: record.timestamp_ms.unwrap_or_default(),
        },
        raw: record.value.clone(),
        ack,
    })
}
