//! The tail (a read node's consumer) against librdkafka's mock cluster:
//! two tails started side by side each read every partition, from the end
//! as it was at their start, and nothing before it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleetpipe_kafka::tail::Tail;
use fleetpipe_kafka::test_support::MockKafka;
use fleetpipe_kafka::{client_config, producer_config};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::{TIMEOUT, delivered_partitions, vehicle_keys};

async fn start(mock: &MockKafka, id: &str) -> Tail {
    let client = client_config(mock.bootstrap(), &BTreeMap::new()).unwrap();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || Tail::start(client, &id, &["telemetry", "events"], TIMEOUT))
        .await
        .unwrap()
        .unwrap()
}

/// Reads `tail` until `want` (topic, key) pairs came or 30 s passed.
async fn read(tail: Tail, want: usize) -> (BTreeSet<(String, String)>, BTreeSet<(String, i32)>) {
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(tail.run(tx, shutdown.clone()));
    let mut keys = BTreeSet::new();
    let mut partitions = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while keys.len() < want {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let record = delivery.record;
        let key = String::from_utf8(record.key.unwrap().to_vec()).unwrap();
        partitions.insert((record.topic.clone(), record.partition));
        keys.insert((record.topic, key));
    }
    // What else arrived within a moment would be a record read twice or
    // one from before the start.
    while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
    {
        let record = delivery.record;
        let key = String::from_utf8(record.key.unwrap().to_vec()).unwrap();
        assert!(keys.insert((record.topic, key.clone())), "{key} read twice");
    }
    shutdown.cancel();
    run.await.unwrap().unwrap();
    (keys, partitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tail_reads_every_partition_from_its_start_on() {
    let mock = MockKafka::start(1).unwrap();
    mock.create_topic("telemetry", 4).unwrap();
    mock.create_topic("events", 2).unwrap();
    let producer = producer_config(mock.bootstrap(), &BTreeMap::new()).unwrap();
    let before: Vec<String> = vehicle_keys(40)
        .into_iter()
        .map(|k| format!("before-{k}"))
        .collect();
    delivered_partitions(&producer, "telemetry", &before).await;

    let tails = [start(&mock, "tail-a").await, start(&mock, "tail-b").await];
    for tail in &tails {
        let starts: Vec<_> = tail
            .starts()
            .iter()
            .map(|((topic, partition), _)| (topic.as_str(), *partition))
            .collect();
        assert_eq!(
            starts,
            [
                ("telemetry", 0),
                ("telemetry", 1),
                ("telemetry", 2),
                ("telemetry", 3),
                ("events", 0),
                ("events", 1)
            ]
        );
        let at: i64 = tail.starts().iter().map(|(_, offset)| offset).sum();
        assert_eq!(at, 40, "each partition starts at its end");
    }

    let keys = vehicle_keys(40);
    let landed = delivered_partitions(&producer, "telemetry", &keys).await;
    assert_eq!(landed.iter().collect::<BTreeSet<_>>().len(), 4);
    let events: Vec<String> = vehicle_keys(10)
        .into_iter()
        .map(|k| format!("event-{k}"))
        .collect();
    delivered_partitions(&producer, "events", &events).await;
    let want: BTreeSet<(String, String)> = keys
        .iter()
        .map(|k| ("telemetry".to_owned(), k.clone()))
        .chain(events.iter().map(|k| ("events".to_owned(), k.clone())))
        .collect();

    let [a, b] = tails;
    let ((got_a, parts_a), (got_b, parts_b)) =
        tokio::join!(read(a, want.len()), read(b, want.len()));
    for (got, partitions) in [(got_a, parts_a), (got_b, parts_b)] {
        assert_eq!(
            got, want,
            "a tail reads everything produced after its start, and only that"
        );
        assert_eq!(partitions.len(), 6, "{partitions:?}");
    }
}

#[tokio::test]
async fn a_missing_topic_is_a_start_error_naming_it() {
    let mock = MockKafka::start(1).unwrap();
    mock.create_topic("telemetry", 2).unwrap();
    let mut client = client_config(mock.bootstrap(), &BTreeMap::new()).unwrap();
    // A consumer asks for no auto-creation (librdkafka's default), and the
    // mock honours it: said here, since the mock would create it otherwise.
    client.set("allow.auto.create.topics", "false");
    let error = tokio::task::spawn_blocking(move || {
        Tail::start(
            client,
            "tail",
            &["telemetry", "nowhere"],
            Duration::from_secs(2),
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(error.to_string().contains("topic \"nowhere\""), "{error}");
}
