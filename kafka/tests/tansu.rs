//! fleetpipe-kafka against Tansu 0.6.0 (in-memory storage) in a process of
//! its own: topic provisioning, the partitioner, and the test broker's own
//! life cycle. A missing `tansu` binary fails these tests (scripts/test.sh
//! installs it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use fleetpipe_kafka::test_support::{Tansu, TestBrokerError};
use fleetpipe_kafka::{
    ConfigCheck, ConfigDifference, TopicError, TopicSpec, TopicStatus, client_config,
    ensure_topics, producer_config,
};
use rdkafka::ClientConfig;

use common::{TIMEOUT, assert_partitioned_by_key, delivered_partitions, vehicle_keys};

fn admin(tansu: &Tansu) -> ClientConfig {
    client_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap()
}

fn start() -> Tansu {
    Tansu::start().unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test]
async fn topics_are_created_once_then_reported_present() {
    let tansu = start();
    let specs = [
        TopicSpec::new("fleet.telemetry.v1", 6, 1),
        TopicSpec::new("fleet.events.v1", 3, 1),
    ];
    let first = ensure_topics(&admin(&tansu), &specs, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        first
            .iter()
            .map(|o| (o.name.as_str(), o.status, o.partitions))
            .collect::<Vec<_>>(),
        [
            ("fleet.telemetry.v1", TopicStatus::Created, 6),
            ("fleet.events.v1", TopicStatus::Created, 3),
        ]
    );
    assert!(first.iter().all(|o| o.configs == ConfigCheck::Matches));

    // Again, with one more topic: the two are left as they are, the new
    // one is created.
    let more = [
        specs[0].clone(),
        specs[1].clone(),
        TopicSpec::new("fleet.dlq.v1", 1, 1),
    ];
    let second = ensure_topics(&admin(&tansu), &more, TIMEOUT).await.unwrap();
    assert_eq!(
        second
            .iter()
            .map(|o| (o.name.as_str(), o.status))
            .collect::<Vec<_>>(),
        [
            ("fleet.telemetry.v1", TopicStatus::AlreadyPresent),
            ("fleet.events.v1", TopicStatus::AlreadyPresent),
            ("fleet.dlq.v1", TopicStatus::Created),
        ]
    );
}

#[tokio::test]
async fn a_different_partition_count_is_refused_and_nothing_is_created() {
    let tansu = start();
    ensure_topics(
        &admin(&tansu),
        &[TopicSpec::new("fleet.telemetry.v1", 6, 1)],
        TIMEOUT,
    )
    .await
    .unwrap();
    let specs = [
        TopicSpec::new("fleet.events.v1", 3, 1),
        TopicSpec::new("fleet.telemetry.v1", 12, 1),
    ];
    let error = ensure_topics(&admin(&tansu), &specs, TIMEOUT)
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
        message.contains("\"fleet.telemetry.v1\" has 6 partitions but 12 are configured")
            && message.contains("hash(vehicle_id)"),
        "{message}"
    );
    // The mismatch was found before anything was created: the events
    // topic is still missing, so asking for it alone creates it now.
    let outcomes = ensure_topics(&admin(&tansu), &specs[..1], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(outcomes[0].status, TopicStatus::Created);
}

/// Two clients ensuring the same topics at once: one creates each topic,
/// the other sees TOPIC_ALREADY_EXISTS (or the topic) and reports it
/// present; neither fails.
#[tokio::test]
async fn concurrent_ensures_agree() {
    let tansu = start();
    let specs: Vec<TopicSpec> = (0..4)
        .map(|i| TopicSpec::new(format!("fleet.race.{i}"), 4, 1))
        .collect();
    let config = admin(&tansu);
    let (a, b) = tokio::join!(
        ensure_topics(&config, &specs, TIMEOUT),
        ensure_topics(&config, &specs, TIMEOUT)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.name, y.name);
        assert_eq!((x.partitions, y.partitions), (4, 4));
        let created = [x.status, y.status]
            .iter()
            .filter(|s| **s == TopicStatus::Created)
            .count();
        assert!(created <= 1, "{} created twice: {x:?} {y:?}", x.name);
    }
}

#[tokio::test]
async fn a_compacted_topic_keeps_its_config() {
    let tansu = start();
    let spec = TopicSpec::new("fleet.state.v1", 6, 1)
        .config("cleanup.policy", "compact")
        .config("min.compaction.lag.ms", "60000");
    let created = ensure_topics(&admin(&tansu), std::slice::from_ref(&spec), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(created[0].status, TopicStatus::Created);
    assert_eq!(created[0].configs, ConfigCheck::Matches);
    let again = ensure_topics(&admin(&tansu), &[spec], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(again[0].status, TopicStatus::AlreadyPresent);
    assert_eq!(again[0].configs, ConfigCheck::Matches);
}

/// A topic made with other configs, or none, reports the differences
/// (Tansu reports only the configs a topic was created with: none for the
/// second topic).
#[tokio::test]
async fn a_topic_made_otherwise_reports_its_config_differences() {
    let tansu = start();
    ensure_topics(
        &admin(&tansu),
        &[
            TopicSpec::new("fleet.state.v1", 6, 1).config("cleanup.policy", "delete"),
            TopicSpec::new("fleet.geofence.v1", 6, 1),
        ],
        TIMEOUT,
    )
    .await
    .unwrap();
    let outcomes = ensure_topics(
        &admin(&tansu),
        &[
            TopicSpec::new("fleet.state.v1", 6, 1).config("cleanup.policy", "compact"),
            TopicSpec::new("fleet.geofence.v1", 6, 1).config("cleanup.policy", "compact"),
        ],
        TIMEOUT,
    )
    .await
    .unwrap();
    let wanted_compact = |actual: Option<&str>| {
        ConfigCheck::Differs(vec![ConfigDifference {
            key: "cleanup.policy".to_owned(),
            wanted: "compact".to_owned(),
            actual: actual.map(str::to_owned),
        }])
    };
    assert_eq!(outcomes[0].status, TopicStatus::AlreadyPresent);
    assert_eq!(outcomes[0].configs, wanted_compact(Some("delete")));
    assert_eq!(outcomes[1].configs, wanted_compact(None));
}

#[tokio::test]
async fn records_land_in_partition_for_their_key() {
    let tansu = start();
    ensure_topics(
        &admin(&tansu),
        &[TopicSpec::new("fleet.telemetry.v1", 6, 1)],
        TIMEOUT,
    )
    .await
    .unwrap();
    let keys = vehicle_keys(60);
    let mut options = BTreeMap::new();
    options.insert("enable.idempotence".to_owned(), "true".to_owned());
    let producer = producer_config(&tansu.bootstrap(), &options).unwrap();
    let delivered = delivered_partitions(&producer, "fleet.telemetry.v1", &keys).await;
    assert_partitioned_by_key(&keys, &delivered, 6);
}

/// The test broker's life cycle: killed, it refuses connections; restarted,
/// it answers on the same port, empty (in-memory storage).
#[tokio::test]
async fn tansu_restarts_on_the_same_port_empty() {
    let mut tansu = start();
    let bootstrap = tansu.bootstrap();
    let spec = TopicSpec::new("fleet.telemetry.v1", 2, 1);
    let created = ensure_topics(&admin(&tansu), std::slice::from_ref(&spec), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(created[0].status, TopicStatus::Created);

    tansu.kill().unwrap();
    assert!(!tansu.is_running());
    assert!(std::net::TcpStream::connect(&bootstrap).is_err());

    tansu.restart().unwrap();
    assert!(tansu.is_running());
    assert_eq!(tansu.bootstrap(), bootstrap);
    let again = ensure_topics(&admin(&tansu), &[spec], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(again[0].status, TopicStatus::Created, "{}", tansu.output());

    tansu.stop().unwrap();
    assert!(!tansu.is_running());
}

#[test]
fn a_missing_binary_is_an_error() {
    let error = Tansu::start_with("/nonexistent/tansu").unwrap_err();
    assert!(
        matches!(error, TestBrokerError::Spawn { ref binary, .. } if binary.ends_with("tansu")),
        "{error}"
    );
    assert!(error.to_string().contains("/nonexistent/tansu"), "{error}");
}

/// Durable storage, the broker-restart tests' footing: killed with
/// SIGKILL and started again, Tansu still has the topic with its config,
/// every acknowledged record, and a group's committed offset, and an
/// idempotent producer that lived through the crash goes on producing
/// without a gap or a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_tansu_comes_back_with_what_it_acknowledged() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::Message as _;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{Offset, TopicPartitionList};

    let mut tansu = Tansu::start_durable().unwrap_or_else(|error| panic!("{error}"));
    let topic = "fleet.durable.v1";
    let spec = TopicSpec::new(topic, 1, 1).config("cleanup.policy", "compact");
    ensure_topics(&admin(&tansu), std::slice::from_ref(&spec), TIMEOUT)
        .await
        .unwrap();
    let mut options = BTreeMap::new();
    options.insert("enable.idempotence".to_owned(), "true".to_owned());
    let producer: FutureProducer = producer_config(&tansu.bootstrap(), &options)
        .unwrap()
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let produce = |range: std::ops::Range<u32>| {
        let producer = producer.clone();
        async move {
            for i in range {
                let key = format!("vehicle-{i:03}");
                let payload = i.to_string();
                producer
                    .send(FutureRecord::to(topic).key(&key).payload(&payload), TIMEOUT)
                    .await
                    .unwrap_or_else(|(error, _)| panic!("record {i}: {error}"));
            }
        }
    };
    produce(0..20).await;
    let group = |tansu: &Tansu| -> BaseConsumer {
        admin(tansu)
            .set("group.id", "fleet.durable")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    };
    let mut committed = TopicPartitionList::new();
    committed
        .add_partition_offset(topic, 0, Offset::Offset(10))
        .unwrap();
    group(&tansu)
        .commit(&committed, rdkafka::consumer::CommitMode::Sync)
        .unwrap();

    tansu.kill().unwrap();
    tansu.restart().unwrap();

    let again = ensure_topics(&admin(&tansu), &[spec], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        (again[0].status, &again[0].configs),
        (TopicStatus::AlreadyPresent, &ConfigCheck::Matches),
        "{}",
        tansu.output()
    );
    let consumer = group(&tansu);
    let mut partition = TopicPartitionList::new();
    partition.add_partition(topic, 0);
    let offsets = consumer.committed_offsets(partition, TIMEOUT).unwrap();
    assert_eq!(
        offsets.find_partition(topic, 0).unwrap().offset(),
        Offset::Offset(10)
    );

    // The producer that lived through the crash goes on.
    produce(20..25).await;
    let mut from_start = TopicPartitionList::new();
    from_start
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&from_start).unwrap();
    let mut payloads = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while payloads.len() < 25 && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(std::time::Duration::from_millis(200)) {
            let message = message.unwrap();
            payloads.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
        }
    }
    // Read past the 25: a record stored twice would show.
    while let Some(message) = consumer.poll(std::time::Duration::from_secs(2)) {
        let message = message.unwrap();
        payloads.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
    }
    let expected: Vec<String> = (0..25).map(|i: u32| i.to_string()).collect();
    assert_eq!(payloads, expected, "{}", tansu.output());
}
