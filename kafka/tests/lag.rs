//! The consumer lag gauge against Tansu 0.6.0: records handed out but not
//! yet stored count as lag, and stop counting once their acks come back.
//! (A test binary of its own: the recorder is process-wide.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleetpipe_kafka::group::{GroupConfig, GroupConsumer};
use fleetpipe_kafka::metrics::CONSUMER_LAG;
use fleetpipe_kafka::test_support::Tansu;
use fleetpipe_kafka::{TopicSpec, client_config, ensure_topics, producer_config};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::{TIMEOUT, delivered_partitions, vehicle_keys};

/// The sum of the lag gauge over the partitions of `topic`.
fn lag(snapshotter: &Snapshotter, topic: &str) -> f64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == CONSUMER_LAG
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "topic" && l.value() == topic)
        })
        .map(|(.., value)| match value {
            DebugValue::Gauge(g) => g.into_inner(),
            _ => 0.0,
        })
        .sum()
}

async fn until(snapshotter: &Snapshotter, topic: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = lag(snapshotter, topic);
        if (now - want).abs() < f64::EPSILON {
            return;
        }
        assert!(Instant::now() < deadline, "lag stayed {now}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_what_is_not_stored_yet() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let tansu = Tansu::start().unwrap_or_else(|e| panic!("{e}"));
    let admin = client_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    ensure_topics(&admin, &[TopicSpec::new("lagged", 3, 1)], TIMEOUT)
        .await
        .unwrap();
    let keys = vehicle_keys(30);
    let producer = producer_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    delivered_partitions(&producer, "lagged", &keys).await;

    let mut client = admin.clone();
    client.set("statistics.interval.ms", "200");
    let consumer =
        GroupConsumer::start(client, "laggers", &GroupConfig::default(), &["lagged"]).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let run = tokio::spawn(consumer.run(tx, stop.clone()));
    // Everything handed out, nothing stored: all 30 are lag.
    let mut held = Vec::new();
    while held.len() < keys.len() {
        held.push(
            tokio::time::timeout(TIMEOUT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    until(&snapshotter, "lagged", 30.0).await;
    // Stored: no lag left.
    for delivery in held {
        delivery.ack.delivered();
    }
    until(&snapshotter, "lagged", 0.0).await;
    stop.cancel();
    run.await.unwrap().unwrap();
}
