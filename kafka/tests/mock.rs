//! fleetpipe-kafka against librdkafka's mock cluster (in process). The mock
//! answers Metadata and Produce but neither CreateTopics nor
//! DescribeConfigs, so topics are made with `MockKafka::create_topic` and
//! these tests cover what it supports: present topics, the partition check,
//! where records land, and how the unanswered requests fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use fleetpipe_kafka::test_support::MockKafka;
use fleetpipe_kafka::{
    ConfigCheck, TopicError, TopicSpec, TopicStatus, client_config, ensure_topics, producer_config,
};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use common::{TIMEOUT, assert_partitioned_by_key, delivered_partitions, vehicle_keys};

fn admin(mock: &MockKafka) -> ClientConfig {
    client_config(mock.bootstrap(), &BTreeMap::new()).unwrap()
}

#[tokio::test]
async fn present_topics_are_reported_present() {
    let mock = MockKafka::start(3).unwrap();
    mock.create_topic("fleet.telemetry.v1", 6).unwrap();
    mock.create_topic("fleet.events.v1", 3).unwrap();
    let specs = [
        TopicSpec::new("fleet.telemetry.v1", 6, 3),
        TopicSpec::new("fleet.events.v1", 3, 3),
    ];
    let outcomes = ensure_topics(&admin(&mock), &specs, TIMEOUT).await.unwrap();
    assert_eq!(outcomes.len(), 2);
    for (outcome, spec) in outcomes.iter().zip(&specs) {
        assert_eq!(outcome.name, spec.name);
        assert_eq!(outcome.status, TopicStatus::AlreadyPresent);
        assert_eq!(outcome.partitions, spec.partitions);
        assert_eq!(outcome.configs, ConfigCheck::Matches);
    }
}

#[tokio::test]
async fn a_different_partition_count_is_refused() {
    let mock = MockKafka::start(1).unwrap();
    mock.create_topic("fleet.telemetry.v1", 6).unwrap();
    let error = ensure_topics(
        &admin(&mock),
        &[TopicSpec::new("fleet.telemetry.v1", 12, 1)],
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            TopicError::PartitionMismatch { ref topic, expected: 12, actual: 6 }
                if topic == "fleet.telemetry.v1"
        ),
        "{error:?}"
    );
    assert!(!error.is_retriable());
    let message = error.to_string();
    assert!(
        message.contains("\"fleet.telemetry.v1\" has 6 partitions but 12 are configured"),
        "{message}"
    );
}

/// How long the tests wait for a request the mock never answers.
const UNANSWERED: Duration = Duration::from_secs(3);

/// librdkafka sends CreateTopics (and DescribeConfigs of a topic) to the
/// controller, which it never finds in the mock: the request is not sent
/// and fails with librdkafka's timeout at the caller's bound. A missing
/// topic is an error, not a silently auto-created topic.
#[tokio::test]
async fn a_missing_topic_cannot_be_created_in_the_mock() {
    let mock = MockKafka::start(1).unwrap();
    let error = ensure_topics(
        &admin(&mock),
        &[TopicSpec::new("fleet.state.v1", 4, 1)],
        UNANSWERED,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &error,
            TopicError::Admin { operation: "CreateTopics", source: KafkaError::AdminOp(code) }
                if *code == RDKafkaErrorCode::OperationTimedOut
        ),
        "{error:?}: {error}"
    );
    // A timeout is what a slow broker also produces.
    assert!(error.is_retriable(), "{error}");
    // Nothing was auto-created by the metadata requests either.
    let again = ensure_topics(
        &admin(&mock),
        &[TopicSpec::new("fleet.state.v1", 4, 1)],
        UNANSWERED,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            again,
            TopicError::Admin {
                operation: "CreateTopics",
                ..
            }
        ),
        "{again}"
    );
}

/// The same for reading configs back: a present topic with configs asked
/// for cannot be checked in the mock, and ensure_topics says so rather
/// than reporting them as matching.
#[tokio::test]
async fn configs_cannot_be_read_back_from_the_mock() {
    let mock = MockKafka::start(1).unwrap();
    mock.create_topic("fleet.state.v1", 4).unwrap();
    let spec = TopicSpec::new("fleet.state.v1", 4, 1).config("cleanup.policy", "compact");
    let error = ensure_topics(&admin(&mock), &[spec], UNANSWERED)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            TopicError::Admin { operation: "DescribeConfigs", source: KafkaError::AdminOp(code) }
                if *code == RDKafkaErrorCode::OperationTimedOut
        ),
        "{error:?}: {error}"
    );
}

#[tokio::test]
async fn records_land_in_partition_for_their_key() {
    let mock = MockKafka::start(3).unwrap();
    mock.create_topic("fleet.telemetry.v1", 6).unwrap();
    let keys = vehicle_keys(60);
    let producer = producer_config(mock.bootstrap(), &BTreeMap::new()).unwrap();
    let delivered = delivered_partitions(&producer, "fleet.telemetry.v1", &keys).await;
    assert_partitioned_by_key(&keys, &delivered, 6);

    // librdkafka's default (CRC32) places some of the same keys elsewhere:
    // the partitioner setting is what makes the difference.
    let mut default = ClientConfig::new();
    default.set("bootstrap.servers", mock.bootstrap());
    let elsewhere = delivered_partitions(&default, "fleet.telemetry.v1", &keys).await;
    assert_ne!(elsewhere, delivered);
}
