//! `[cluster]`: which part of the pipeline this process runs, and the
//! Kafka topics and consumer groups that connect the parts when they run
//! in separate processes.
//!
//! - `all` (the default): the whole pipeline in one process.
//! - `gateway`: the sources only; each accepted ping and each dead letter
//!   is produced to the raw topic (keyed by vehicle), and a device hears
//!   "stored" when the raw record's delivery report is in.
//! - `enrich`: a member of the consumer group `{group_prefix}.enrich` on
//!   the raw topic; enriches the pings of the partitions it owns into the
//!   output topics of `[sink.kafka]`, with each vehicle's state in the
//!   compacted changelog topic, restored when a partition moves to it.
//! - `writer`: a member of the consumer group `{group_prefix}.writer` on
//!   the telemetry, events and dead-letter topics of `[sink.kafka]`, writing
//!   them to `[sink.file]` and/or `[sink.timescale]`; a record's offset is
//!   committed only once every sink holds it.
//! - `read`: a read node serving the live feed (`[api.feed]`): every
//!   partition of the telemetry and events topics, from their end, outside
//!   any consumer group (each read node sees the whole fleet, however many
//!   there are), into the feed only; nothing is committed or written.
//!
//! Every role reads the same Kafka cluster: `[sink.kafka]` (its `brokers`,
//! topic names and `librdkafka` options).

use std::time::Duration;

use fleetpipe_kafka::group::{GroupConfig, GroupError};
use fleetpipe_kafka::{ClientConfig, TopicSpec, client_config};
use fleetpipe_sink::{KafkaConfig, SinksConfig};
use serde::Deserialize;

/// What one fleetpipe process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The whole pipeline in one process.
    #[default]
    All,
    /// Sources, authentication, validation and rate limits; output to the
    /// raw topic.
    Gateway,
    /// The raw topic's partitions this member owns, enriched into the
    /// telemetry, events and dead-letter topics.
    Enrich,
    /// The telemetry, events and dead-letter topics into the database and
    /// files.
    Writer,
    /// Every partition of the telemetry and events topics into the live
    /// feed, outside any consumer group: as many read nodes as the clients
    /// need, each with the whole fleet.
    Read,
}

impl Role {
    /// Its name, as configured.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Gateway => "gateway",
            Role::Enrich => "enrich",
            Role::Writer => "writer",
            Role::Read => "read",
        }
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// What this process runs (`fleetpipe run --role` wins over it).
    pub role: Role,
    /// Topic of what the gateways accepted and refused, keyed by vehicle,
    /// read by the enrichment members. Internal between the roles.
    pub raw_topic: String,
    /// Compacted topic of the enrich members' per-vehicle state, one record
    /// per vehicle (its latest snapshot), partitioned like the raw topic.
    /// Internal to the enrich role.
    pub changelog_topic: String,
    /// How often an enrich worker writes the snapshots of its changed
    /// vehicles. The raw offsets are committed after them, so this is also
    /// about how much a new owner of a partition reads again.
    #[serde(with = "humantime_serde")]
    pub changelog_interval: Duration,
    /// Longest an enrich member may take to restore the partitions it was
    /// assigned from the changelog (it reads nothing meanwhile). Below
    /// `cluster.group.max_poll_interval`; a restore that does not finish
    /// stops the member, so the group gives the partitions to another.
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
    /// Partitions of the topics fleetpipe creates (the raw topic at a
    /// gateway's start, the output topics at a writer's): the unit of
    /// per-vehicle ownership. An existing topic with another count is a
    /// start error; fleetpipe never repartitions.
    pub partitions: i32,
    /// Replication factor of the topics fleetpipe creates. With 3, and the
    /// cluster's `min.insync.replicas = 2`, a record acknowledged with
    /// `acks=all` survives the loss of one broker.
    pub replication_factor: i32,
    /// Consumer groups are named `{group_prefix}.{role}` (a read node's
    /// consumer, in no group, `{group_prefix}.read.{unique}`).
    pub group_prefix: String,
    /// Consumer group membership (`[cluster.group]`).
    pub group: GroupConfig,
    /// Longest creating or checking the topics at start may take.
    #[serde(with = "humantime_serde")]
    pub topic_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            role: Role::All,
            raw_topic: "fleet.raw.v1".into(),
            changelog_topic: "fleet.enrich.changelog.v1".into(),
            changelog_interval: Duration::from_millis(250),
            restore_timeout: Duration::from_secs(60),
            partitions: 12,
            replication_factor: 3,
            group_prefix: "fleetpipe".into(),
            group: GroupConfig::default(),
            topic_timeout: Duration::from_secs(30),
        }
    }
}

/// A `[cluster]` rule broken: the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    /// The role needs a Kafka cluster other processes share.
    #[error(
        "cluster.role = \"{0}\" needs [sink.kafka] with brokers other processes reach (not \"embedded\", which lives and dies with this process)"
    )]
    NoSharedKafka(&'static str),
    /// The gateway writes only to the raw topic.
    #[error(
        "cluster.role = \"gateway\" writes only the raw topic: [sink.file] and [sink.timescale] belong to the writer role (or to role \"all\")"
    )]
    GatewaySinks,
    /// The enrich role writes only to Kafka.
    #[error(
        "cluster.role = \"enrich\" writes only the output topics: [sink.file] and [sink.timescale] belong to the writer role (or to role \"all\")"
    )]
    EnrichSinks,
    /// The changelog topic is one of the others.
    #[error(
        "cluster.changelog_topic = {0:?} is also the raw topic or one of [sink.kafka]'s topics"
    )]
    ChangelogTopic(String),
    /// A duration out of range.
    #[error("cluster.{key}: {rule}")]
    Duration {
        /// The key.
        key: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// A read node writes nothing.
    #[error(
        "cluster.role = \"read\" serves the live feed and writes nothing: [sink.file] and [sink.timescale] belong to the writer role (or to role \"all\")"
    )]
    ReadSinks,
    /// A read node is there for the live feed.
    #[error("cluster.role = \"read\" serves the live feed: it needs [api] with [api.feed]")]
    ReadWithoutFeed,
    /// The writer needs somewhere to write.
    #[error("cluster.role = \"writer\" needs [sink.file] or [sink.timescale] to write to")]
    WriterSinks,
    /// A topic name is used twice.
    #[error("cluster.raw_topic = {0:?} is also one of [sink.kafka]'s topics")]
    RawTopic(String),
    /// Partitions or replication out of range.
    #[error("cluster.{0} must be at least 1")]
    Count(&'static str),
    /// A group setting.
    #[error(transparent)]
    Group(#[from] GroupError),
}

impl ClusterConfig {
    /// The rules of `[cluster]` and those between the role and `[sink]`.
    ///
    /// # Errors
    ///
    /// The first rule broken.
    pub fn validate(&self, sinks: &SinksConfig) -> Result<(), ClusterConfigError> {
        if self.partitions < 1 {
            return Err(ClusterConfigError::Count("partitions"));
        }
        if self.replication_factor < 1 {
            return Err(ClusterConfigError::Count("replication_factor"));
        }
        self.group.validate("cluster.group")?;
        if self.changelog_interval.is_zero() {
            return Err(ClusterConfigError::Duration {
                key: "changelog_interval",
                rule: "longer than 0s",
            });
        }
        let role = self.role;
        // Only an enrich member restores (a writer may poll more often).
        if role == Role::Enrich
            && (self.restore_timeout.is_zero()
                || self.restore_timeout >= self.group.max_poll_interval)
        {
            return Err(ClusterConfigError::Duration {
                key: "restore_timeout",
                rule: "longer than 0s and below cluster.group.max_poll_interval (a restore blocks polling)",
            });
        }
        if role == Role::All {
            return Ok(());
        }
        let kafka = match &sinks.kafka {
            Some(kafka) if !kafka.is_embedded() => kafka,
            _ => return Err(ClusterConfigError::NoSharedKafka(role.as_str())),
        };
        let topics = [
            &kafka.telemetry_topic,
            &kafka.events_topic,
            &kafka.dlq_topic,
        ];
        if topics.contains(&&self.raw_topic) {
            return Err(ClusterConfigError::RawTopic(self.raw_topic.clone()));
        }
        if topics.contains(&&self.changelog_topic) || self.changelog_topic == self.raw_topic {
            return Err(ClusterConfigError::ChangelogTopic(
                self.changelog_topic.clone(),
            ));
        }
        let local = sinks.file.is_some() || sinks.timescale.is_some();
        match role {
            Role::Gateway if local => Err(ClusterConfigError::GatewaySinks),
            Role::Enrich if local => Err(ClusterConfigError::EnrichSinks),
            Role::Writer if !local => Err(ClusterConfigError::WriterSinks),
            Role::Read if local => Err(ClusterConfigError::ReadSinks),
            _ => Ok(()),
        }
    }

    /// The consumer group of `role`.
    pub fn group_id(&self, role: Role) -> String {
        format!("{}.{}", self.group_prefix, role.as_str())
    }

    /// The `group.id` of a read node's consumer: its own (a process id
    /// and the start time), since librdkafka assigns partitions only to a
    /// consumer with one. No group is joined under it and nothing is
    /// committed (`fleetpipe_kafka::tail`).
    pub fn read_consumer_id(&self) -> String {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!(
            "{}.{}.{}-{started}",
            self.group_prefix,
            Role::Read.as_str(),
            std::process::id()
        )
    }

    /// `topic` as fleetpipe creates it (the raw topic at a gateway's
    /// start, the output topics at a writer's).
    pub fn topic_spec(&self, topic: &str) -> TopicSpec {
        TopicSpec::new(topic, self.partitions, self.replication_factor)
    }
}

/// A client of `[sink.kafka]`'s cluster for consumers and admin requests.
///
/// # Errors
///
/// The pass-through options set what fleetpipe must decide itself.
pub fn consumer_client(
    kafka: &KafkaConfig,
) -> Result<ClientConfig, fleetpipe_kafka::ClientConfigError> {
    client_config(&kafka.brokers, &kafka.librdkafka)
}
