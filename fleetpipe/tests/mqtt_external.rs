//! External broker mode against the real Mosquitto on 127.0.0.1:1883.
//!
//! Each test uses its own topic prefix, share group and client ids, so runs
//! (and the other tests) never see each other's traffic on the shared broker.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fleetpipe_ingest::mqtt::MqttMode;

const T: Duration = Duration::from_secs(20);
const MOSQUITTO: &str = "127.0.0.1:1883";

/// A name no other test (of this run or an earlier one) uses. The counter
/// matters: two tests of this binary running in parallel can ask in the same
/// millisecond, and Mosquitto disconnects the older of two clients with the
/// same id (seen: a publisher cut off mid-test).
fn unique(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{}-{n}", std::process::id(), now_ms())
}

fn external(c: &mut fleetpipe::Config, prefix: &str, group: &str, client_id: &str) {
    c.ingest.mqtt.mode = MqttMode::External;
    c.ingest.mqtt.broker_url = format!("mqtt://{MOSQUITTO}");
    c.ingest.mqtt.topic_prefix = prefix.into();
    c.ingest.mqtt.share_group = group.into();
    c.ingest.mqtt.client_id = client_id.into();
}

async fn mosquitto_publisher() -> MqttClient {
    let addr: SocketAddr = MOSQUITTO.parse().unwrap();
    let mut c = mqtt_client(addr, &unique("pub"), None).await;
    c.wait_connected(T).await;
    c
}

/// Waits until Mosquitto routes to every consumer of the group: probes
/// must come out of every member (shared subscriptions deliver each message
/// to one member, round robin), so all subscriptions are in place. Probes
/// are published in rounds until then: one published before a member's
/// SUBSCRIBE reached Mosquitto (a busy machine) is simply not delivered.
/// Returns the number of probes published (and acknowledged by Mosquitto).
async fn settle(pubr: &MqttClient, prefix: &str, pipelines: &[&TestPipeline]) -> usize {
    let total = || pipelines.iter().map(|p| p.telemetry().len()).sum::<usize>();
    let every_member = || pipelines.iter().all(|p| !p.telemetry().is_empty());
    let want = pipelines.len() * 4;
    let deadline = tokio::time::Instant::now() + T;
    let mut seq = 0u64;
    while !(total() >= want && every_member()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "probes not delivered to every member: {} of {want}",
            total()
        );
        for _ in 0..pipelines.len() * 4 {
            pubr.publish(
                &format!("{prefix}/probe/telemetry"),
                json_ping("probe", seq),
            )
            .await;
            seq += 1;
        }
        // Let this round arrive before judging it.
        let _ = wait_for(Duration::from_millis(500), || {
            (total() >= want && every_member()).then_some(())
        })
        .await;
    }
    // Every probe acknowledged by Mosquitto and no more arriving, so the
    // caller can count them: a late one must not pass for its own message.
    pubr.wait_pubacks(seq as usize, T).await;
    let mut last = total();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = total();
        if now == last {
            break;
        }
        last = now;
    }
    seq as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_the_load_and_delivers_each_message_once() {
    let (prefix, group) = (unique("fpx"), unique("grp"));
    let mut a = TestPipeline::start(|c| external(c, &prefix, &group, &unique("fp-a"))).await;
    let mut b = TestPipeline::start(|c| external(c, &prefix, &group, &unique("fp-b"))).await;
    let pubr = mosquitto_publisher().await;
    let probes_sent = settle(&pubr, &prefix, &[&a, &b]).await;
    let probes = a.telemetry().len() + b.telemetry().len();

    let n = 300u64;
    for s in 0..n {
        let vehicle = format!("veh-{}", s % 7);
        pubr.publish(
            &format!("{prefix}/{vehicle}/telemetry"),
            json_ping(&vehicle, s),
        )
        .await;
    }
    pubr.wait_pubacks(probes_sent + n as usize, T).await;
    let all = wait_for(T, || {
        let all: Vec<_> = a.telemetry().into_iter().chain(b.telemetry()).collect();
        (all.len() >= probes + n as usize).then_some(all)
    })
    .await
    .expect("not every message arrived");
    let (in_a, in_b) = (a.telemetry().len(), b.telemetry().len());
    a.stop().await;
    b.stop().await;

    let mut got: Vec<(String, u64)> = keys(&all)
        .into_iter()
        .filter(|(v, _)| v != "probe")
        .collect();
    got.sort();
    let mut want: Vec<(String, u64)> = (0..n).map(|s| (format!("veh-{}", s % 7), s)).collect();
    want.sort();
    assert_eq!(got, want, "each message exactly once across the group");
    assert!(
        in_a > probes / 4 && in_b > probes / 4,
        "both members took a share: {in_a} / {in_b}"
    );
    assert!(all.iter().all(|l| l["source"] == "mqtt_external"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_waits_for_durability_and_unstored_publishes_are_redelivered() {
    let (prefix, group, client_id) = (unique("fpd"), unique("grp"), unique("fp-d"));
    let mut first = TestPipeline::start(|c| {
        external(c, &prefix, &group, &client_id);
        // Rotate after every batch, so each batch opens a new file.
        c.sink.file.as_mut().unwrap().max_file_bytes = 1;
    })
    .await;
    let pubr = mosquitto_publisher().await;
    let probes_sent = settle(&pubr, &prefix, &[&first]).await;

    // The telemetry directory becomes unusable: writes fail, nothing is durable.
    let telemetry_dir = first.dir.path().join("telemetry");
    std::fs::remove_dir_all(&telemetry_dir).unwrap();
    std::fs::write(&telemetry_dir, b"").unwrap();
    for s in 0..5 {
        pubr.publish(&format!("{prefix}/van-9/telemetry"), json_ping("van-9", s))
            .await;
    }
    pubr.wait_pubacks(probes_sent + 5, T).await; // Mosquitto has them...
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = first.metrics().await;
    assert!(
        failures
            .lines()
            .any(|l| l.starts_with("fleetpipe_mqtt_unacked_total") && !l.ends_with(" 0")),
        "...but fleetpipe did not acknowledge them:\n{failures}"
    );
    first.stop().await;

    // Same client id (same persistent session), a working sink: Mosquitto
    // redelivers what fleetpipe never acknowledged.
    let second = TestPipeline::start(|c| external(c, &prefix, &group, &client_id)).await;
    let lines = second.wait_telemetry(5, T).await;
    let mut second = second;
    second.stop().await;
    assert_eq!(
        keys(&lines),
        (0..5).map(|s| ("van-9".to_string(), s)).collect::<Vec<_>>(),
        "every unacknowledged publish came back, once"
    );
}
