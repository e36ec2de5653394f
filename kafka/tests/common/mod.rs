//! Helpers shared by the tests against Tansu and the mock cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Bound of every `ensure_topics` call in the tests: generous for a loaded
/// machine; a broker that answers takes milliseconds.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Vehicle ids as the pipeline keys records: enough of them that every
/// partition of a small topic gets some.
pub fn vehicle_keys(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("vehicle-{i:05}")).collect()
}

/// Produces one record per key with `config` and returns the partition
/// each was delivered to, in the order of `keys`.
pub async fn delivered_partitions(config: &ClientConfig, topic: &str, keys: &[String]) -> Vec<i32> {
    let producer: FutureProducer = config
        .clone()
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer");
    let mut partitions = Vec::with_capacity(keys.len());
    for key in keys {
        let delivery = producer
            .send(
                FutureRecord::to(topic).key(key.as_bytes()).payload(b"ping"),
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|(error, _)| panic!("record {key:?} to {topic}: {error}"));
        partitions.push(delivery.partition);
    }
    partitions
}

/// Each of `keys` was delivered to `partition_for(key, partitions)`, and the
/// keys spread over every partition, so a partitioner that disagreed with
/// `partition_for` could not pass by luck.
pub fn assert_partitioned_by_key(keys: &[String], delivered: &[i32], partitions: i32) {
    for (key, partition) in keys.iter().zip(delivered) {
        assert_eq!(
            Some(*partition),
            fleetpipe_kafka::partition_for(key.as_bytes(), partitions),
            "record {key:?}"
        );
    }
    let mut used = delivered.to_vec();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, (0..partitions).collect::<Vec<_>>());
}
