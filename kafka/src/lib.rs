//! fleetpipe's Kafka infrastructure, shared by every role that talks to
//! Kafka (gateway, enrich, writer, read, and the Kafka sink): the one place that
//! decides how records are partitioned and that provisions topics.
//!
//! - Partitioning: [`producer_config`] is the configuration every fleetpipe
//!   producer starts from; it fixes librdkafka's partitioner to
//!   [`PARTITIONER`] (`murmur2_random`, the Java client's murmur2), so that
//!   all producers of a topic, fleetpipe's and Java/Kafka Streams ones,
//!   send a vehicle's records to the same partition. [`partition_for`]
//!   computes that partition without a client, [`murmur2`] the hash.
//!   [`client_config`] is the same configuration for consumers and admin
//!   clients (without the producer-only option).
//! - Topics: [`ensure_topics`] creates the topics of a set of
//!   [`TopicSpec`]s that are missing, with their configs, and refuses an
//!   existing topic whose partition count differs
//!   ([`TopicError::PartitionMismatch`]: per-vehicle state is owned by
//!   partition, so fleetpipe never repartitions); each [`TopicOutcome`]
//!   says whether the topic was created and how its configs compare.
//!
//! - Changelogs: [`changelog::Changelog`] writes per-vehicle state to a
//!   compacted topic partitioned like the input, and restores the
//!   partitions a member is assigned (last value per vehicle wins).
//! - Consumer groups: [`group::GroupConsumer`] is a group member whose
//!   offsets follow the data's acknowledgements (cooperative-sticky
//!   assignment, optional static membership), for the roles that share
//!   the work of a topic.
//! - Tails: [`tail::Tail`] reads every partition of some topics from their
//!   end, outside any group, committing nothing: for the read nodes, each
//!   of which must see the whole fleet.
//!
//! With the `test-support` feature, `test_support` runs brokers for tests:
//! Tansu in a process of its own, and librdkafka's mock cluster.

pub mod changelog;
mod crash_point;
pub mod group;
pub mod metrics;
mod partitioner;
pub mod tail;
mod topics;

#[cfg(feature = "test-support")]
pub mod test_support;

/// librdkafka client options, as [`client_config`] and [`producer_config`] make them.
pub use crash_point::{CRASH_AT, crash_point};
pub use partitioner::{
    ClientConfigError, PARTITIONER, client_config, murmur2, partition_for, producer_config,
};
pub use rdkafka::ClientConfig;
pub use topics::{
    ConfigCheck, ConfigDifference, TopicError, TopicOutcome, TopicSpec, TopicStatus,
    check_topic_name, ensure_topics,
};
