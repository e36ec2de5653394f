//! The embedded broker, driven by real MQTT clients over TCP.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use fleetpipe_ingest::auth::AuthMode;
use prost::Message as _;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_protobuf_over_mqtt_311_and_5() {
    let mut p = TestPipeline::start(|_| {}).await;
    let c = mqtt_client(p.mqtt.unwrap(), "dev-1", None).await;
    c.publish("fleet/van-1/telemetry", json_ping("van-1", 1))
        .await;
    c.publish(
        "fleet/van-1/telemetry",
        format!("[{},{}]", json_ping("van-1", 2), json_ping("van-1", 3)),
    )
    .await;
    c.publish(
        "fleet/van-1/telemetry/pb",
        proto_ping("van-1", 4).encode_to_vec(),
    )
    .await;
    let batch = fleetpipe_model::proto::PingBatch {
        pings: vec![proto_ping("van-1", 5), proto_ping("van-1", 6)],
    };
    c.publish("fleet/van-1/telemetry/pb", batch.encode_to_vec())
        .await;
    c.wait_pubacks(4, T).await;

    // MQTT 5 on its own listener.
    let addr = p.mqtt_v5.unwrap();
    let opts = rumqttc::v5::MqttOptions::new("dev-5", addr.ip().to_string(), addr.port());
    let (c5, mut el5) = rumqttc::v5::AsyncClient::new(opts, 10);
    c5.publish(
        "fleet/van-5/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        json_ping("van-5", 1),
    )
    .await
    .unwrap();
    let acked = tokio::time::timeout(T, async {
        loop {
            if let Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))) =
                el5.poll().await
            {
                break;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "no PUBACK over MQTT 5");

    let lines = p.wait_telemetry(7, T).await;
    let want: Vec<(String, u64)> = (1..=6)
        .map(|s| ("van-1".to_string(), s))
        .chain([("van-5".into(), 1)])
        .collect();
    assert_eq!(keys(&lines), want);
    let pb = lines.iter().find(|l| l["seq"] == 4).unwrap();
    assert_eq!(pb["lat"], 48.137);
    assert_eq!(pb["ignition"], true);
    assert_eq!(pb["source"], "mqtt");
    assert!(pb["h3"]["9"].is_string(), "enriched with H3: {pb}");
    p.stop().await;
    assert_eq!(p.telemetry().len(), 7, "nothing written twice");
    assert!(p.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_dead_lettered_with_its_reason_and_the_connection_stays_up() {
    let mut p = TestPipeline::start(|c| c.ingest.limits.max_payload_bytes = 4096).await;
    let c = mqtt_client(p.mqtt.unwrap(), "dev-1", None).await;
    let now = now_ms();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("fleet/v1/telemetry", b"{not json".to_vec(), "decode_failed"),
        (
            "fleet/v1/telemetry/pb",
            vec![0x0a, 0xff, 0xff],
            "decode_failed",
        ),
        (
            "fleet/v1/telemetry",
            br#"{"vehicle_id":"v1","lat":1,"lon":2}"#.to_vec(),
            "schema_invalid",
        ),
        (
            "fleet/v1/telemetry",
            format!(r#"{{"vehicle_id":"v1","ts":{now},"lat":91,"lon":2}}"#).into_bytes(),
            "coord_invalid",
        ),
        (
            "fleet/v1/telemetry",
            format!(r#"{{"vehicle_id":"v1","ts":{now},"lat":0,"lon":0}}"#).into_bytes(),
            "coord_invalid",
        ),
        (
            "fleet/v1/telemetry",
            format!(
                r#"{{"vehicle_id":"v1","ts":{},"lat":1,"lon":2}}"#,
                now + 3_600_000
            )
            .into_bytes(),
            "ts_future",
        ),
        (
            "fleet/v1/telemetry",
            format!(
                r#"{{"vehicle_id":"v1","ts":{},"lat":1,"lon":2}}"#,
                now - 30 * 86_400_000
            )
            .into_bytes(),
            "ts_past",
        ),
        ("fleet/v1/telemetry", vec![b' '; 5000], "oversize"),
        (
            "fleet/v1/telemetry",
            json_ping("v2", 1).into_bytes(),
            "vehicle_mismatch",
        ),
    ];
    for (topic, payload, _) in &cases {
        c.publish(topic, payload.clone()).await;
    }
    // The same connection still works after all of that.
    c.publish("fleet/v1/telemetry", json_ping("v1", 42)).await;
    c.wait_pubacks(cases.len() + 1, T).await;
    let lines = p.wait_telemetry(1, T).await;
    assert_eq!(keys(&lines), vec![("v1".to_string(), 42)]);
    let dead = p.wait_dead_letters(cases.len(), T).await;
    let mut expected: Vec<String> = cases.iter().map(|c| c.2.to_string()).collect();
    expected.sort();
    assert_eq!(reasons(&dead), expected);
    let mismatch = dead
        .iter()
        .find(|d| d["reason"] == "vehicle_mismatch")
        .unwrap();
    assert_eq!(mismatch["topic"], "fleet/v1/telemetry");
    assert_eq!(mismatch["source"], "mqtt");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(mismatch["raw"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, json_ping_bytes_shape(&raw), "raw bytes kept");
    assert!(c.closed.borrow().is_none(), "connection still open");

    let metrics = common::metric_values();
    for reason in [
        "decode_failed",
        "schema_invalid",
        "coord_invalid",
        "ts_future",
        "ts_past",
        "oversize",
        "vehicle_mismatch",
    ] {
        let line = format!("fleetpipe_rejected_total{{reason=\"{reason}\",gateway=\"mqtt\"}}");
        assert!(
            metrics
                .counter(
                    "fleetpipe_rejected_total",
                    &[("reason", reason), ("gateway", "mqtt")]
                )
                .is_some_and(|n| n != 0),
            "{line} missing in\n{metrics}"
        );
    }
    p.stop().await;
}

/// The raw bytes of a dead letter are the bytes sent (here: a JSON ping of v2).
fn json_ping_bytes_shape(raw: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(v["vehicle_id"], "v2");
    raw.to_vec()
}

fn token_auth(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("credentials.toml");
    std::fs::write(
        &path,
        "[[device]]\nvehicle_id = \"van-a\"\ntoken = \"tok-a\"\n[[device]]\nvehicle_id = \"van-b\"\ntoken = \"tok-b\"\n",
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_and_a_device_may_publish_only_for_itself() {
    let creds_dir = tempfile::tempdir().unwrap();
    let creds = token_auth(creds_dir.path());
    let mut p = TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Token;
        c.ingest.auth.credentials_file = Some(creds.clone());
    })
    .await;
    let addr = p.mqtt.unwrap();

    // Wrong token, token of another vehicle, no credentials: refused at CONNECT.
    for (id, login) in [
        ("x1", Some(("van-a", "wrong"))),
        ("x2", Some(("van-a", "tok-b"))),
        ("x3", None),
    ] {
        let mut c = mqtt_client(addr, id, login).await;
        let why = c.wait_closed(T).await;
        assert!(!*c.connected.borrow(), "{id} must not be connected ({why})");
    }

    // A good device publishes for itself...
    let mut a = mqtt_client(addr, "van-a", Some(("van-a", "tok-a"))).await;
    a.wait_connected(T).await;
    a.publish("fleet/van-a/telemetry", json_ping("van-a", 1))
        .await;
    a.wait_pubacks(1, T).await;
    p.wait_telemetry(1, T).await;
    // ...but publishing on van-b's topic closes its connection, unacknowledged.
    a.publish("fleet/van-b/telemetry", json_ping("van-b", 1))
        .await;
    a.wait_closed(T).await;
    assert_eq!(
        a.pubacks.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "refused publish was not acknowledged"
    );
    let dead = p.wait_dead_letters(1, T).await;
    assert_eq!(dead[0]["reason"], "unauthorized");
    assert_eq!(dead[0]["topic"], "fleet/van-b/telemetry");
    assert_eq!(dead[0]["vehicle_id"], "van-a");

    // Subscribing to the whole fleet is refused too: SUBACK 0x80 for the
    // filter (it used to close the connection), and nothing of it arrives
    // (van-a's next ping and its ack would match it).
    let mut spy = mqtt_client(addr, "van-b@spy", Some(("van-b", "tok-b"))).await;
    spy.wait_connected(T).await;
    spy.client
        .subscribe("fleet/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let subacks = wait_for(T, || {
        let subacks = spy.subacks.lock().unwrap().clone();
        (!subacks.is_empty()).then_some(subacks)
    })
    .await;
    assert_eq!(
        subacks,
        Some(vec![vec![
            rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure
        ]])
    );
    let mut a = mqtt_client(addr, "van-a", Some(("van-a", "tok-a"))).await;
    a.wait_connected(T).await;
    a.publish("fleet/van-a/telemetry", json_ping("van-a", 2))
        .await;
    a.wait_pubacks(1, T).await;
    p.wait_telemetry(2, T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(spy.received.lock().unwrap().is_empty());
    assert!(
        spy.closed.borrow().is_none(),
        "the spy's connection stays up"
    );

    p.stop().await;
    assert_eq!(
        keys(&p.telemetry()),
        vec![("van-a".to_string(), 1), ("van-a".to_string(), 2)],
        "nothing of van-b's topic was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_pings_are_rejected_not_dropped() {
    let mut p = TestPipeline::start(|c| {
        c.ingest.rate_limit.pings_per_second = 1;
        c.ingest.rate_limit.burst = 3;
    })
    .await;
    let c = mqtt_client(p.mqtt.unwrap(), "dev-1", None).await;
    let batch: Vec<String> = (1..=5).map(|s| json_ping("van-1", s)).collect();
    c.publish("fleet/van-1/telemetry", format!("[{}]", batch.join(",")))
        .await;
    c.publish("fleet/van-2/telemetry", json_ping("van-2", 1))
        .await;
    c.wait_pubacks(2, T).await;
    let dead = p.wait_dead_letters(2, T).await;
    let lines = p.wait_telemetry(4, T).await;
    p.stop().await;
    assert_eq!(reasons(&dead), vec!["rate_limited", "rate_limited"]);
    assert_eq!(
        keys(&dead),
        vec![
            ("van-1".to_string(), u64::MAX),
            ("van-1".to_string(), u64::MAX)
        ]
    );
    // The rate-limited pings are kept, re-encoded, in the dead letter.
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(dead[0]["raw"].as_str().unwrap())
        .unwrap();
    let ping: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert!(ping["seq"] == 4 || ping["seq"] == 5);
    assert_eq!(
        keys(&lines),
        vec![
            ("van-1".into(), 1),
            ("van-1".into(), 2),
            ("van-1".into(), 3),
            ("van-2".into(), 1)
        ],
        "each vehicle has its own bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_nothing_that_was_acknowledged() {
    let mut p = TestPipeline::start(|c| c.pipeline.ping_queue = 64).await;
    let addr = p.mqtt.unwrap();
    let (clients, per_client) = (4usize, 500u64);
    let mut conns = Vec::new();
    for i in 0..clients {
        let c = mqtt_client(addr, &format!("dev-{i}"), None).await;
        for s in 0..per_client {
            c.publish(
                &format!("fleet/veh-{i}/telemetry"),
                json_ping(&format!("veh-{i}"), s),
            )
            .await;
        }
        conns.push(c);
    }
    for c in &conns {
        c.wait_pubacks(per_client as usize, T).await;
    }
    // Every publish is acknowledged by the broker: stop at once.
    p.stop().await;
    let lines = p.telemetry();
    let mut want: Vec<(String, u64)> = (0..clients)
        .flat_map(|i| (0..per_client).map(move |s| (format!("veh-{i}"), s)))
        .collect();
    want.sort();
    assert_eq!(
        keys(&lines),
        want,
        "exactly the acknowledged pings, once each"
    );
    // New connections are refused once shut down.
    let mut late = mqtt_client(addr, "late", None).await;
    late.wait_closed(T).await;
}

/// The broker owns its connections: at shutdown, once the drain is done, a
/// device that is connected and silent is disconnected, on both protocol
/// versions (rather than left open until the process, or here the test's
/// runtime, ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connected_devices_after_the_drain() {
    use common::raw_mqtt::{RawMqtt, accepted_v4, accepted_v5};
    let mut p = TestPipeline::start(|_| {}).await;
    let mut v4 = RawMqtt::open(p.mqtt.unwrap()).await;
    assert!(accepted_v4(&v4.connect_v4("dev-a", None, None, true).await));
    let mut v5 = RawMqtt::open(p.mqtt_v5.unwrap()).await;
    assert!(accepted_v5(&v5.connect_v5("dev-b", None, None).await));
    p.stop().await;
    assert!(v4.closed_within(Duration::from_secs(3)).await);
    assert!(v5.closed_within(Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_topic_reports_the_highest_durable_seq() {
    let creds_dir = tempfile::tempdir().unwrap();
    let creds = token_auth(creds_dir.path());
    let mut p = TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Token;
        c.ingest.auth.credentials_file = Some(creds.clone());
    })
    .await;
    let mut a = mqtt_client(p.mqtt.unwrap(), "van-a", Some(("van-a", "tok-a"))).await;
    a.wait_connected(T).await;
    a.client
        .subscribe("fleet/van-a/ack", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for s in 1..=3 {
        a.publish("fleet/van-a/telemetry", json_ping("van-a", s))
            .await;
    }
    a.publish(
        "fleet/van-a/telemetry",
        format!("[{},{}]", json_ping("van-a", 4), json_ping("van-a", 5)),
    )
    .await;
    let acked = wait_for(T, || {
        let got = a.received.lock().unwrap().clone();
        got.iter()
            .filter(|(t, _)| t == "fleet/van-a/ack")
            .map(|(_, body)| {
                serde_json::from_slice::<serde_json::Value>(body).unwrap()["ack"]
                    .as_u64()
                    .unwrap()
            })
            .max()
            .filter(|&max| max == 5)
            .map(|_| got)
    })
    .await
    .expect("no ack for seq 5");
    // Acks only ever go up, and when seq 5 is acknowledged, 1..=5 are on disk.
    let acks: Vec<u64> = acked
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["ack"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(acks.windows(2).all(|w| w[0] < w[1]), "{acks:?}");
    let on_disk: Vec<u64> = keys(&p.telemetry()).into_iter().map(|(_, s)| s).collect();
    assert_eq!(on_disk, vec![1, 2, 3, 4, 5]);
    p.stop().await;
}
