//! The consumer group member against Tansu 0.6.0 in a process of its own:
//! offsets are committed only for records whose acknowledgement came back
//! delivered, so what was not stored is read again by the next member.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleetpipe_kafka::group::{Delivery, GroupConfig, GroupConsumer};
use fleetpipe_kafka::test_support::Tansu;
use fleetpipe_kafka::{TopicSpec, client_config, ensure_topics, producer_config};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{TIMEOUT, delivered_partitions, vehicle_keys};

const TOPIC: &str = "fleet.raw.v1";

fn group_settings() -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_secs(6),
        revoke_timeout: Duration::from_secs(3),
        commit_interval: Duration::from_millis(200),
        ..GroupConfig::default()
    }
}

async fn setup(records: usize) -> (Tansu, Vec<String>) {
    let tansu = Tansu::start().unwrap_or_else(|error| panic!("{error}"));
    let admin = client_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    ensure_topics(&admin, &[TopicSpec::new(TOPIC, 3, 1)], TIMEOUT)
        .await
        .unwrap();
    let keys = vehicle_keys(records);
    let producer = producer_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    delivered_partitions(&producer, TOPIC, &keys).await;
    (tansu, keys)
}

/// A member of group `group` running until the returned token is cancelled.
fn member(
    tansu: &Tansu,
    group: &str,
) -> (mpsc::Receiver<Delivery>, CancellationToken, JoinHandle<()>) {
    let client = client_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    let consumer = GroupConsumer::start(client, group, &group_settings(), &[TOPIC]).unwrap();
    let (tx, rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { consumer.run(tx, stop).await.unwrap() }
    });
    (rx, stop, run)
}

/// Takes deliveries until `count` arrived (or none for `quiet`); `settle`
/// decides each one's fate (true: delivered).
async fn take(
    rx: &mut mpsc::Receiver<Delivery>,
    count: usize,
    quiet: Duration,
    mut settle: impl FnMut(&Delivery) -> bool,
) -> Vec<String> {
    let mut keys = Vec::new();
    while keys.len() < count {
        let Ok(Some(delivery)) = tokio::time::timeout(quiet, rx.recv()).await else {
            break;
        };
        keys.push(String::from_utf8(delivery.record.key.clone().unwrap().to_vec()).unwrap());
        if settle(&delivery) {
            delivery.ack.delivered();
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_follow_delivered_acks_only() {
    let (tansu, keys) = setup(60).await;
    // The first member acknowledges everything but the records of one
    // vehicle, which it drops unacknowledged (a sink could not hold them).
    let (mut rx, stop, run) = member(&tansu, "writers");
    let refused = keys[7].clone();
    let first = take(&mut rx, keys.len(), Duration::from_secs(20), |d| {
        d.record.key.as_deref() != Some(refused.as_bytes())
    })
    .await;
    assert_eq!(
        first.iter().collect::<BTreeSet<_>>(),
        keys.iter().collect::<BTreeSet<_>>()
    );
    stop.cancel();
    run.await.unwrap();

    // The next member of the group reads again exactly from the refused
    // record on, in its partition only: everything before it, and every
    // other partition, was committed.
    let (mut rx, stop, run) = member(&tansu, "writers");
    let again = take(&mut rx, keys.len(), Duration::from_secs(10), |_| true).await;
    stop.cancel();
    run.await.unwrap();
    assert!(again.contains(&refused), "{again:?}");
    let refused_partition = fleetpipe_kafka::partition_for(refused.as_bytes(), 3).unwrap();
    let position = keys.iter().position(|k| *k == refused).unwrap();
    let expected: Vec<&String> = keys
        .iter()
        .skip(position)
        .filter(|k| fleetpipe_kafka::partition_for(k.as_bytes(), 3) == Some(refused_partition))
        .collect();
    assert_eq!(again.iter().collect::<Vec<_>>(), expected);

    // A third member finds nothing left: the second committed it all.
    let (mut rx, stop, run) = member(&tansu, "writers");
    let none = take(&mut rx, 1, Duration::from_secs(8), |_| true).await;
    stop.cancel();
    run.await.unwrap();
    assert_eq!(none, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_member_takes_partitions_over_without_rereading_what_was_stored() {
    let (tansu, keys) = setup(60).await;
    let (mut rx_a, stop_a, run_a) = member(&tansu, "enrichers");
    let mut seen_a = take(&mut rx_a, keys.len(), Duration::from_secs(20), |_| true).await;
    assert_eq!(seen_a.len(), keys.len());
    // A second member joins; A gives partitions up (committing what it
    // stored), then more records arrive for both.
    let (mut rx_b, stop_b, run_b) = member(&tansu, "enrichers");
    let mut seen_b = Vec::new();
    for _ in 0..20 {
        seen_a.extend(take(&mut rx_a, usize::MAX, Duration::from_millis(250), |_| true).await);
        seen_b.extend(take(&mut rx_b, usize::MAX, Duration::from_millis(250), |_| true).await);
    }
    let later: Vec<String> = (0..60).map(|i| format!("later-{i:03}")).collect();
    let producer = producer_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    delivered_partitions(&producer, TOPIC, &later).await;
    for _ in 0..40 {
        seen_a.extend(take(&mut rx_a, usize::MAX, Duration::from_millis(250), |_| true).await);
        seen_b.extend(take(&mut rx_b, usize::MAX, Duration::from_millis(250), |_| true).await);
        if seen_a.len() + seen_b.len() >= keys.len() + later.len() {
            break;
        }
    }
    stop_a.cancel();
    stop_b.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    assert!(
        seen_b.iter().any(|k| k.starts_with("later-")),
        "the second member got partitions: {seen_b:?}"
    );
    let mut all: Vec<&String> = seen_a.iter().chain(&seen_b).collect();
    all.sort();
    let mut want: Vec<&String> = keys.iter().chain(&later).collect();
    want.sort();
    // Every record exactly once: A committed what it stored when its
    // partitions were revoked, so B started after it.
    assert_eq!(all, want);
}

/// Records what the listener was told, and refuses take-overs when asked.
#[derive(Default)]
struct Recorder {
    events: std::sync::Mutex<Vec<String>>,
    refuse: bool,
}

impl fleetpipe_kafka::group::OwnershipListener for Recorder {
    fn assigned(&self, partitions: &[(String, i32)]) -> Result<(), String> {
        // Slow on purpose: nothing of these partitions may be handed out
        // while this runs.
        std::thread::sleep(Duration::from_millis(500));
        let mut events = self.events.lock().unwrap();
        for (_, partition) in partitions {
            events.push(format!("assigned {partition}"));
        }
        if self.refuse {
            Err("state not restored".into())
        } else {
            Ok(())
        }
    }

    fn revoked(&self, partitions: &[(String, i32)], lost: bool) {
        let mut events = self.events.lock().unwrap();
        for (_, partition) in partitions {
            events.push(format!("revoked {partition} lost={lost}"));
        }
    }
}

/// A member of `group` telling `listener`, and the channel it hands to.
fn listened(
    tansu: &Tansu,
    group: &str,
    listener: std::sync::Arc<Recorder>,
) -> (
    GroupConsumer,
    mpsc::Sender<Delivery>,
    mpsc::Receiver<Delivery>,
) {
    let client = client_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    let listener: std::sync::Arc<dyn fleetpipe_kafka::group::OwnershipListener> = listener;
    let consumer =
        GroupConsumer::start_with(client, group, &group_settings(), &[TOPIC], Some(listener))
            .unwrap();
    let (tx, rx) = mpsc::channel(64);
    (consumer, tx, rx)
}

/// The listener hears of every partition before any of its records is
/// handed out, and of its revoke at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_takes_partitions_over_before_their_records_flow() {
    let (tansu, keys) = setup(30).await;
    let recorder = std::sync::Arc::new(Recorder::default());
    let (consumer, tx, mut rx) = listened(&tansu, "listened", recorder.clone());
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { consumer.run(tx, stop).await }
    });
    let mut seen = 0;
    while seen < keys.len() {
        let delivery = tokio::time::timeout(TIMEOUT, rx.recv())
            .await
            .expect("records flow")
            .expect("the member runs");
        let assigned = format!("assigned {}", delivery.record.partition);
        assert!(
            recorder.events.lock().unwrap().contains(&assigned),
            "a record of partition {} before the listener took it over",
            delivery.record.partition
        );
        delivery.ack.delivered();
        seen += 1;
    }
    stop.cancel();
    run.await.unwrap().unwrap();
    let events = recorder.events.lock().unwrap().clone();
    for partition in 0..3 {
        assert!(
            events.contains(&format!("assigned {partition}")),
            "{events:?}"
        );
        assert!(
            events.contains(&format!("revoked {partition} lost=false")),
            "{events:?}"
        );
    }
}

/// A listener that cannot take its partitions over stops the member with
/// the reason, and nothing of them is handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_take_over_stops_the_member_and_hands_out_nothing() {
    let (tansu, _keys) = setup(10).await;
    let refusing = std::sync::Arc::new(Recorder {
        refuse: true,
        ..Recorder::default()
    });
    let (consumer, tx, mut rx) = listened(&tansu, "refusing", refusing);
    let stop = CancellationToken::new();
    let result = tokio::time::timeout(TIMEOUT, consumer.run(tx, stop))
        .await
        .expect("the member stops on its own");
    let error = result.expect_err("a refused take-over is an error");
    assert!(error.to_string().contains("state not restored"), "{error}");
    assert!(rx.try_recv().is_err(), "a record was handed out");
}
