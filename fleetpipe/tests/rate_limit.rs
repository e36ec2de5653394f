//! A rate limit never costs a device data: no acknowledgement covers a
//! ping refused as `rate_limited`, so a device following the wire contract
//! keeps it and sends it again; over HTTP the answer is 429 with
//! `Retry-After`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(15);

/// The highest `{"ack":N}` the client has received on `topic`.
fn highest_ack(c: &MqttClient, topic: &str) -> Option<u64> {
    c.received
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == topic)
        .filter_map(|(_, body)| {
            serde_json::from_slice::<serde_json::Value>(body).ok()?["ack"].as_u64()
        })
        .max()
}

fn stored_seqs(p: &TestPipeline, vehicle: &str) -> BTreeSet<u64> {
    keys(&p.telemetry())
        .into_iter()
        .filter(|(v, _)| v == vehicle)
        .map(|(_, s)| s)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_ack_never_covers_a_rate_limited_ping_and_a_resend_completes_it() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.rate_limit.pings_per_second = 50;
        c.ingest.rate_limit.burst = 10;
    })
    .await;
    let ack_topic = "fleet/van-1/ack";
    let mut c = mqtt_client(p.mqtt.unwrap(), "van-1", None).await;
    c.wait_connected(T).await;
    c.client
        .subscribe(ack_topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A backlog of 30 in a burst: the bucket holds 10, the rest is refused.
    for seq in 1..=30 {
        c.publish("fleet/van-1/telemetry", json_ping("van-1", seq))
            .await;
    }
    c.wait_pubacks(30, T).await;
    // The bucket refills; the next ping is accepted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.publish("fleet/van-1/telemetry", json_ping("van-1", 31))
        .await;
    c.wait_pubacks(31, T).await;
    let dead = wait_for(T, || {
        let stored = stored_seqs(&p, "van-1");
        let dead = p.dead_letters();
        (stored.contains(&31) && stored.len() + dead.len() == 31).then_some(dead)
    })
    .await
    .expect("every ping stored or dead-lettered");
    assert!(!dead.is_empty(), "the burst was over the limit");
    assert!(reasons(&dead).iter().all(|r| r == "rate_limited"));
    // Give the acker time to publish whatever it would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = stored_seqs(&p, "van-1");
    let acked = highest_ack(&c, ack_topic).unwrap_or(0);
    assert!(
        (1..=acked).all(|s| stored.contains(&s)),
        "ack {acked} covers pings that are not stored: stored {stored:?}"
    );
    assert!(acked < 31, "seq 31 is stored, but pings below it are not");

    // The device does what the wire contract says: it resends from its
    // last ack, slowly enough for the bucket, until everything is acked.
    for _round in 0..20 {
        let acked = highest_ack(&c, ack_topic).unwrap_or(0);
        if acked >= 31 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        for seq in (acked + 1..=31).take(8) {
            c.publish("fleet/van-1/telemetry", json_ping("van-1", seq))
                .await;
        }
        wait_for(Duration::from_secs(3), || {
            (highest_ack(&c, ack_topic).unwrap_or(0) > acked).then_some(())
        })
        .await;
    }
    assert_eq!(highest_ack(&c, ack_topic), Some(31));
    p.stop().await;
    assert_eq!(stored_seqs(&p, "van-1"), (1..=31).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_batch_over_the_rate_limit_is_answered_429_with_retry_after() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.rate_limit.pings_per_second = 1;
        c.ingest.rate_limit.burst = 10;
    })
    .await;
    let batch: Vec<String> = (1..=30).map(|s| json_ping("van-1", s)).collect();
    let response = reqwest::Client::new()
        .post(p.url("/v1/pings"))
        .body(format!("[{}]", batch.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // The first ten are stored, and the ack says exactly that much.
    assert_eq!(body["ack"], 10, "{body}");
    let refused: Vec<u64> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["code"], "rate_limited");
            r["index"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(refused, (10..30).collect::<Vec<_>>());
    p.stop().await;
    assert_eq!(stored_seqs(&p, "van-1"), (1..=10).collect());
}
