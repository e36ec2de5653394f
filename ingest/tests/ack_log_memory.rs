//! With `ack_segment_bytes` set, the embedded broker's memory does not grow
//! with the acks it delivers.
//!
//! rumqttd keeps every publish it routes in the log of each matching
//! subscription until that log evicts its oldest segment. Every vehicle
//! subscribes to its own ack topic, so with the telemetry subscription's
//! log sizes (32 MiB segments) every ack ever delivered would stay in
//! memory; `ingest.mqtt.ack_segment_bytes` bounds those logs. This drives a
//! router configured exactly as the embedded broker configures it
//! ([`router_config`]) and measures the heap with a counting allocator: its
//! own test binary, so no other test allocates meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetpipe_ingest::mqtt::EmbeddedConfig;
use fleetpipe_ingest::mqtt::embedded::router_config;
use rumqttd::Notification;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};

#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const VEHICLES: [&str; 4] = ["van-1", "van-2", "van-3", "van-4"];

/// Publishes `n` acks round-robin over [`VEHICLES`] in chunks and waits,
/// chunk by chunk, until each vehicle's newest ack has reached the devices'
/// link. (An ack log that rolls over while the link is behind drops what
/// the link has not read yet; the newest ack, which covers those, always
/// arrives.)
fn route(acker: &mut LinkTx, devices: &mut LinkRx, n: u64, next_seq: &mut u64) {
    const CHUNK: u64 = 100 * VEHICLES.len() as u64;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(CHUNK);
        for _ in 0..chunk {
            let vehicle = VEHICLES[(*next_seq % VEHICLES.len() as u64) as usize];
            acker
                .publish(
                    format!("fleet/{vehicle}/ack"),
                    format!("{{\"ack\":{next_seq}}}"),
                )
                .expect("router takes the ack");
            *next_seq += 1;
        }
        // The last ack of each vehicle in this chunk.
        let mut newest: HashSet<String> = (1..=VEHICLES.len() as u64)
            .map(|k| format!("{{\"ack\":{}}}", *next_seq - k))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !newest.is_empty() {
            match devices.recv_deadline(deadline) {
                Ok(Some(Notification::Forward(f))) => {
                    newest.remove(std::str::from_utf8(&f.publish.payload).expect("utf-8"));
                }
                Ok(Some(Notification::Unschedule)) => devices.ready().expect("wake the link"),
                Ok(_) => {}
                Err(e) => {
                    panic!("newest acks {newest:?} did not arrive before seq {next_seq}: {e}")
                }
            }
        }
        left -= chunk;
    }
}

#[test]
fn delivering_acks_does_not_grow_the_heap() {
    // As config/fleetpipe.toml suggests for devices on their own ack topic.
    let config = EmbeddedConfig {
        ack_segment_bytes: Some(32 * 1024),
        ..EmbeddedConfig::default()
    };
    let router_tx = rumqttd::Router::new(0, router_config(&config)).spawn();
    let (mut acker, _acker_rx, _) = LinkBuilder::new("acker", router_tx.clone())
        .build()
        .expect("acker link");
    // One link subscribed the way devices subscribe: each to its own topic.
    let (mut devices_tx, mut devices, _) = LinkBuilder::new("devices", router_tx)
        .dynamic_filters(true)
        .build()
        .expect("device link");
    for vehicle in VEHICLES {
        devices_tx
            .subscribe(format!("fleet/{vehicle}/ack"))
            .expect("subscribe");
    }

    // Subscriptions take effect when the router gets to them; until every
    // vehicle's probe comes back, an ack could find no subscriber yet.
    let mut subscribed = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribed.len() < VEHICLES.len() {
        for vehicle in VEHICLES {
            acker
                .publish(format!("fleet/{vehicle}/ack"), "probe")
                .expect("router takes the probe");
        }
        let round = Instant::now() + Duration::from_millis(100);
        while let Ok(notification) = devices.recv_deadline(round) {
            match notification {
                Some(Notification::Forward(f)) => {
                    subscribed.insert(f.publish.topic);
                }
                Some(Notification::Unschedule) => devices.ready().expect("wake the link"),
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "subscriptions never took effect");
    }

    let mut seq = 0;
    // Warm up: every vehicle's ack log has rolled over at least once.
    route(&mut acker, &mut devices, 10_000, &mut seq);
    let before = HEAP.allocated();
    route(&mut acker, &mut devices, 50_000, &mut seq);
    let grown = HEAP.allocated().saturating_sub(before);

    // Kept whole, 50,000 acks hold over 15 MiB (a rumqttd log entry is ~260
    // bytes plus the topic and payload); the bounded logs only trade an
    // evicted segment for a new one (~266 KB each).
    assert!(
        grown < 2 * 1024 * 1024,
        "the heap grew by {grown} bytes while delivering 50,000 acks"
    );
    drop(devices_tx);
}
