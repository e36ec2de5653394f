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
use fleetpipe_ingest::mqtt::{ExternalConfig, MqttConfig};

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
    c.ingest.mqtt = MqttConfig::External(ExternalConfig {
        broker_url: format!("mqtt://{MOSQUITTO}"),
        topic_prefix: prefix.into(),
        share_group: group.into(),
        client_id: client_id.into(),
        ..ExternalConfig::default()
    });
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
    let failures = common::metric_values();
    assert!(
        failures
            .counters("fleetpipe_mqtt_unacked_total")
            .iter()
            .any(|(_, n)| *n != 0),
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

/// A Mosquitto of the test's own, run with deploy/mosquitto/mosquitto.conf
/// (its persistence directory and `include_dir` pointed at the test's
/// folder, where a listener on a free loopback port is configured).
struct OwnMosquitto {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl OwnMosquitto {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/mosquitto/mosquitto.conf"),
        )
        .unwrap();
        let (data, conf_d) = (dir.path().join("data"), dir.path().join("conf.d"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&conf_d).unwrap();
        let mut swapped = 0;
        let conf: String = shipped
            .lines()
            .map(|line| match line.split_whitespace().next() {
                Some("persistence_location") => {
                    swapped += 1;
                    format!("persistence_location {}/", data.display())
                }
                Some("include_dir") => {
                    swapped += 1;
                    format!("include_dir {}", conf_d.display())
                }
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(swapped, 2, "the shipped config names both paths");
        std::fs::write(
            conf_d.join("listener.conf"),
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .unwrap();
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/test.sh installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = wait_for(T, || std::net::TcpStream::connect(addr).ok()).await;
        assert!(
            up.is_some(),
            "mosquitto did not start with the shipped config"
        );
        Self {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_mosquitto_config_rides_out_a_fleetpipe_outage() {
    let broker = OwnMosquitto::start().await;
    let (prefix, group, client_id) = (unique("fpo"), unique("grp"), unique("fp-o"));
    let configure = |c: &mut fleetpipe::Config| {
        external(c, &prefix, &group, &client_id);
        if let Some(external) = c.ingest.mqtt.external_mut() {
            external.broker_url = format!("mqtt://{}", broker.addr);
        }
    };
    let mut first = TestPipeline::start(configure).await;
    let mut pubr = mqtt_client(broker.addr, &unique("pub"), None).await;
    pubr.wait_connected(T).await;
    let probes = settle(&pubr, &prefix, &[&first]).await;

    // 400 publishes/s for 14 s from 20 vehicles (20/s each, under the rate
    // limit); fleetpipe is away for 6 s in the middle, so ~2,400 queue up
    // at Mosquitto, more than its default queue of 1,000.
    let (rate, seconds, vehicles) = (400u64, 14u64, 20u64);
    let publisher = {
        let client = pubr.client.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for seq in 0..rate * seconds {
                tick.tick().await;
                let vehicle = format!("veh-{}", seq % vehicles);
                client
                    .publish(
                        format!("{prefix}/{vehicle}/telemetry"),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        json_ping(&vehicle, seq),
                    )
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.stop().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut second = TestPipeline::start(configure).await;
    publisher.await.unwrap();
    let sent = (rate * seconds) as usize;
    pubr.wait_pubacks(probes + sent, T).await;

    // Every publish Mosquitto acknowledged is stored, by one run or the other.
    let stored = |runs: [&TestPipeline; 2]| {
        let mut keys: Vec<(String, u64)> = runs
            .iter()
            .flat_map(|p| keys(&p.telemetry()))
            .filter(|(v, _)| v != "probe")
            .collect();
        keys.sort();
        keys.dedup();
        keys
    };
    let complete = wait_for(Duration::from_secs(30), || {
        (stored([&first, &second]).len() >= sent).then_some(())
    })
    .await;
    second.stop().await;
    let stored = stored([&first, &second]);
    assert!(
        complete.is_some(),
        "{} of {sent} acknowledged publishes stored",
        stored.len()
    );
    let want: Vec<(String, u64)> = {
        let mut w: Vec<_> = (0..rate * seconds)
            .map(|s| (format!("veh-{}", s % vehicles), s))
            .collect();
        w.sort();
        w
    };
    assert_eq!(stored, want);
    pubr.client.disconnect().await.ok();
    drop(broker);
}
