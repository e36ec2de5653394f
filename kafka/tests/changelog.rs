//! The changelog against Tansu 0.6.0: snapshots land in their vehicle's
//! partition, and a restore of some partitions gives exactly those
//! partitions' vehicles with their latest state (Tansu never compacts, so
//! the last value of a key must win in the restore itself).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetpipe_kafka::changelog::Changelog;
use fleetpipe_kafka::test_support::Tansu;
use fleetpipe_kafka::{client_config, ensure_topics, partition_for, producer_config};

use common::{TIMEOUT, vehicle_keys};

const TOPIC: &str = "fleet.state.v1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_gives_each_partitions_vehicles_their_latest_state() {
    let tansu = Tansu::start().unwrap_or_else(|e| panic!("{e}"));
    let admin = client_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    ensure_topics(&admin, &[Changelog::spec(TOPIC, 3, 1)], TIMEOUT)
        .await
        .unwrap();
    let producer = producer_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    let changelog = Changelog::new(TOPIC, producer, admin).unwrap();

    let vehicles = vehicle_keys(30);
    let first: Vec<_> = vehicles
        .iter()
        .map(|v| (v.clone(), Some(Bytes::from(format!("{v}:1")))))
        .collect();
    changelog.write(first).await.unwrap();
    // Ten move on, five are forgotten.
    let later: Vec<_> = vehicles[..10]
        .iter()
        .map(|v| (v.clone(), Some(Bytes::from(format!("{v}:2")))))
        .chain(vehicles[10..15].iter().map(|v| (v.clone(), None)))
        .collect();
    changelog.write(later).await.unwrap();
    let want: BTreeMap<String, Bytes> = vehicles
        .iter()
        .enumerate()
        .filter(|(i, _)| !(10..15).contains(i))
        .map(|(i, v)| {
            let version = if i < 10 { 2 } else { 1 };
            (v.clone(), Bytes::from(format!("{v}:{version}")))
        })
        .collect();

    let left = Arc::new(AtomicI64::new(-1));
    let seen = Arc::clone(&left);
    let all = changelog
        .restore(&[0, 1, 2], TIMEOUT, move |n| {
            seen.store(n, Ordering::SeqCst)
        })
        .await
        .unwrap();
    let values: BTreeMap<_, _> = all
        .iter()
        .map(|(vehicle, restored)| (vehicle.clone(), restored.value.clone()))
        .collect();
    assert_eq!(values, want);
    assert_eq!(
        left.load(Ordering::SeqCst),
        0,
        "progress ends at 0 records left"
    );

    // Each partition holds exactly its vehicles (partition_for, the one
    // partitioner), so a member restores only what it was assigned.
    let mut union = BTreeMap::new();
    for partition in 0..3 {
        let part = changelog
            .restore(&[partition], TIMEOUT, |_| {})
            .await
            .unwrap();
        for (vehicle, restored) in part {
            assert_eq!(
                partition_for(vehicle.as_bytes(), 3),
                Some(partition),
                "{vehicle}"
            );
            assert_eq!(restored.partition, partition, "{vehicle}");
            union.insert(vehicle, restored.value);
        }
    }
    assert_eq!(union, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_changelog_restores_nothing_at_once() {
    let tansu = Tansu::start().unwrap_or_else(|e| panic!("{e}"));
    let admin = client_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    ensure_topics(&admin, &[Changelog::spec(TOPIC, 3, 1)], TIMEOUT)
        .await
        .unwrap();
    let producer = producer_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap();
    let changelog = Changelog::new(TOPIC, producer, admin).unwrap();
    let restored = changelog
        .restore(&[0, 1, 2], Duration::from_secs(10), |_| {})
        .await
        .unwrap();
    assert!(restored.is_empty());
}
