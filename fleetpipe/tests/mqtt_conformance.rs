//! MQTT conformance of the embedded broker, driven as devices drive it:
//! with stock clients (paho-mqtt for Python, mosquitto_pub/mosquitto_sub)
//! where they can express the case, with raw packets where they cannot,
//! on MQTT 3.1.1 and 5 (wire contract §9).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::raw_mqtt::*;
use common::stock_clients::*;
use common::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
/// Longest a stock client program may run.
const CLIENT: Duration = Duration::from_secs(30);

/// The last line a client program printed, as JSON.
fn result(run: &Run) -> Value {
    let last = run.lines().last().copied().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// paho-mqtt: connects with keep alive 0 (`sys.argv`: host port version
/// client_id topic payload), publishes one QoS 1 message, prints the CONNACK
/// (reason code, Server Keep Alive) and whether the PUBACK came.
const PAHO_KEEP_ALIVE_0: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
host, port, version, client_id, topic, payload = sys.argv[1:7]
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
out = {}
def on_connect(client, userdata, flags, reason_code, properties):
    out["connack"] = reason_code.value
    out["server_keep_alive"] = getattr(properties, "ServerKeepAlive", None)
c.on_connect = on_connect
c.connect(host, int(port), keepalive=0)
c.loop_start()
info = c.publish(topic, payload, qos=1)
info.wait_for_publish(timeout=10)
out["puback"] = info.is_published()
c.disconnect()
c.loop_stop()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_0_is_accepted_and_a_silent_connection_closed_after_the_server_keep_alive() {
    let mut p = TestPipeline::start(|c| {
        broker(c).server_keep_alive = Duration::from_secs(2);
    })
    .await;
    let host = "127.0.0.1";
    for (version, addr, vehicle) in [("3.1.1", p.mqtt, "van-4"), ("5", p.mqtt_v5, "van-5")] {
        let port = addr.unwrap().port().to_string();
        let topic = format!("fleet/{vehicle}/telemetry");
        let ping = json_ping(vehicle, 1);
        let run = paho(
            PAHO_KEEP_ALIVE_0,
            &[host, &port, version, vehicle, &topic, &ping],
            CLIENT,
        )
        .await;
        assert!(run.success, "{run:?}");
        let out = result(&run);
        assert_eq!(out["connack"], 0, "MQTT {version}: {out}");
        assert_eq!(out["puback"], true, "MQTT {version}: {out}");
        // MQTT 5 tells the device the keep alive it must use instead.
        let told = if version == "5" {
            Value::from(2)
        } else {
            Value::Null
        };
        assert_eq!(out["server_keep_alive"], told, "MQTT {version}: {out}");
    }
    p.wait_telemetry(2, T).await;

    // A device that turned keep alive off and then goes silent is closed
    // after 1.5 x the server's keep alive (3 s), not before.
    let mut c4 = RawMqtt::open(p.mqtt.unwrap()).await;
    let mut connect = connect_v4("van-4", None, None, true);
    if let v4::Packet::Connect(c) = &mut connect {
        c.keep_alive = 0;
    }
    c4.send_v4(connect).await;
    assert!(accepted_v4(&c4.next_v4(T).await));
    let mut c5 = RawMqtt::open(p.mqtt_v5.unwrap()).await;
    let mut connect = connect_v5("van-5", None, None);
    if let v5::Packet::Connect(c, _, _) = &mut connect {
        c.keep_alive = 0;
    }
    c5.send_v5(connect).await;
    assert!(accepted_v5(&c5.next_v5(T).await));
    let started = std::time::Instant::now();
    assert!(
        !c4.closed_within(Duration::from_secs(2)).await,
        "closed early (3.1.1)"
    );
    assert!(
        c4.closed_within(Duration::from_secs(5)).await,
        "never closed (3.1.1)"
    );
    assert!(
        c5.closed_within(Duration::from_secs(2)).await,
        "never closed (5)"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    p.stop().await;
    assert_eq!(
        keys(&p.telemetry()),
        vec![("van-4".to_string(), 1), ("van-5".to_string(), 1)]
    );
}

// ------------------------------------------------ refusals with reason codes

/// A CONNECT (client id, login, will) and the CONNACK codes it must get on
/// MQTT 3.1.1 and 5.
type ConnectCase<'a> = (
    &'a str,
    (&'a str, &'a str),
    Will<'a>,
    v4::ConnectReturnCode,
    v5::ConnectReturnCode,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_gets_a_connack_with_the_reason() {
    let (mut p, _dir) = token_pipeline().await;
    // A stock client says why, on both versions.
    let port = p.mqtt.unwrap().port().to_string();
    let port5 = p.mqtt_v5.unwrap().port().to_string();
    for (port, version) in [(&port, "mqttv311"), (&port5, "mqttv5")] {
        let run = mosquitto(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-V",
                version,
                "-i",
                "van-1",
                "-u",
                "van-1",
                "-P",
                "wrong",
                "-q",
                "1",
                "-t",
                "fleet/van-1/telemetry",
                "-m",
                "{}",
            ],
            CLIENT,
        )
        .await;
        assert!(!run.success, "{version}: {run:?}");
        assert!(
            run.stderr
                .to_lowercase()
                .contains("bad user name or password"),
            "{version}: {run:?}"
        );
    }

    // The codes on the wire: bad credentials, someone else's client id, a
    // will the device may not publish.
    let forged = json_ping("van-2", 1);
    let cases: [ConnectCase<'_>; 3] = [
        (
            "van-1",
            ("van-1", "wrong"),
            None,
            v4::ConnectReturnCode::BadUserNamePassword,
            v5::ConnectReturnCode::BadUserNamePassword,
        ),
        (
            "van-2",
            ("van-1", "tok-1"),
            None,
            v4::ConnectReturnCode::BadClientId,
            v5::ConnectReturnCode::ClientIdentifierNotValid,
        ),
        (
            "van-1",
            ("van-1", "tok-1"),
            Some(("fleet/van-2/telemetry", forged.as_bytes())),
            v4::ConnectReturnCode::NotAuthorized,
            v5::ConnectReturnCode::NotAuthorized,
        ),
    ];
    for (client_id, login, will, code4, code5) in cases {
        let mut c = RawMqtt::open(p.mqtt.unwrap()).await;
        match c.connect_v4(client_id, Some(login), will, true).await {
            Next::Packet(v4::Packet::ConnAck(ack)) => assert_eq!(ack.code, code4),
            other => panic!("{client_id} {login:?} (3.1.1): {other:?}"),
        }
        assert!(
            c.closed_within(T).await,
            "{client_id} {login:?} (3.1.1) not closed"
        );
        let mut c = RawMqtt::open(p.mqtt_v5.unwrap()).await;
        match c.connect_v5(client_id, Some(login), will).await {
            Next::Packet(v5::Packet::ConnAck(ack)) => assert_eq!(ack.code, code5),
            other => panic!("{client_id} {login:?} (5): {other:?}"),
        }
        assert!(
            c.closed_within(T).await,
            "{client_id} {login:?} (5) not closed"
        );
    }
    p.stop().await;
}

/// paho-mqtt (`sys.argv`: host port version): van-1 subscribes to van-2's
/// ack topic and its own in one SUBSCRIBE; on MQTT 5 publishes QoS 1 to
/// van-2's telemetry, then its own, then QoS 0 to van-2's; prints the
/// reason codes it got.
const PAHO_REFUSALS: &str = r#"
import json, sys, threading
import paho.mqtt.client as mqtt
host, port, version = sys.argv[1:4]
v5 = version == "5"
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="van-1",
                protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
c.username_pw_set("van-1", "tok-1")
c.reconnect_delay_set(60, 60)
out = {}
events = {name: threading.Event() for name in ["connect", "suback", "disconnect"]}
def on_connect(client, userdata, flags, reason_code, properties):
    events["connect"].set()
def on_subscribe(client, userdata, mid, reason_codes, properties):
    out["suback"] = [r.value for r in reason_codes]
    events["suback"].set()
def on_disconnect(client, userdata, flags, reason_code, properties):
    out["disconnect"] = reason_code.value
    events["disconnect"].set()
c.on_connect, c.on_subscribe, c.on_disconnect = on_connect, on_subscribe, on_disconnect
c.connect(host, int(port), keepalive=30)
c.loop_start()
assert events["connect"].wait(10)
c.subscribe([("fleet/van-2/ack", 1), ("fleet/van-1/ack", 1)])
assert events["suback"].wait(10)
import time
ping = '{"vehicle_id":"van-1","seq":%d,"ts":%d,"lat":52.5,"lon":13.4}' % (
    2 if v5 else 1, int(time.time() * 1000) - 1000)
codes = {}
def on_publish(client, userdata, mid, reason_code, properties):
    codes[mid] = reason_code.value
c.on_publish = on_publish
if v5:
    refused = c.publish("fleet/van-2/telemetry", ping, qos=1)
    refused.wait_for_publish(10)
    own = c.publish("fleet/van-1/telemetry", ping, qos=1)
    own.wait_for_publish(10)
    out["refused_puback"] = codes.get(refused.mid)
    out["own_puback"] = codes.get(own.mid)
    c.publish("fleet/van-2/telemetry", ping, qos=0)
    out["disconnected"] = events["disconnect"].wait(10)
else:
    own = c.publish("fleet/van-1/telemetry", ping, qos=1)
    own.wait_for_publish(10)
    out["own_puback"] = codes.get(own.mid)
    out["disconnected"] = events["disconnect"].wait(1)
c.loop_stop()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_or_subscription_gets_a_reason_code_and_the_connection_stays() {
    let (mut p, _dir) = token_pipeline().await;
    let port = p.mqtt.unwrap().port().to_string();
    let port5 = p.mqtt_v5.unwrap().port().to_string();

    let out = result(&paho(PAHO_REFUSALS, &["127.0.0.1", &port, "3.1.1"], CLIENT).await);
    // SUBACK: 0x80 for van-2's ack topic, QoS 1 for its own; the connection
    // stays up and its own publish is acknowledged.
    assert_eq!(out["suback"], serde_json::json!([0x80, 1]), "{out}");
    assert_eq!(out["own_puback"], 0, "{out}");
    assert_eq!(out["disconnected"], false, "{out}");

    let out = result(&paho(PAHO_REFUSALS, &["127.0.0.1", &port5, "5"], CLIENT).await);
    assert_eq!(out["suback"], serde_json::json!([0x87, 1]), "{out}");
    // PUBACK 0x87 for the refused QoS 1 publish, the connection stays up and
    // the next publish is acknowledged; a refused QoS 0 publish has no ack
    // to carry a reason: DISCONNECT 0x87.
    assert_eq!(out["refused_puback"], 0x87, "{out}");
    assert_eq!(out["own_puback"], 0, "{out}");
    assert_eq!(out["disconnected"], true, "{out}");
    assert_eq!(out["disconnect"], 0x87, "{out}");

    // Both refused publishes are dead-lettered; only van-1's own are stored.
    let dead = p.wait_dead_letters(2, T).await;
    assert_eq!(reasons(&dead), ["unauthorized", "unauthorized"]);
    p.wait_telemetry(2, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.stop().await;
    assert_eq!(
        keys(&p.telemetry()),
        vec![("van-1".to_string(), 1), ("van-1".to_string(), 2)]
    );
}

/// An MQTT 5 QoS 1 publish with a topic alias (and the topic, or an empty
/// one to use the alias).
fn aliased_v5(topic: &str, alias: u16, payload: String, pkid: u16) -> v5::Packet {
    let properties = v5::PublishProperties {
        topic_alias: Some(alias),
        ..Default::default()
    };
    let mut publish = v5::Publish::new(
        topic,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        payload,
        Some(properties),
    );
    publish.pkid = pkid;
    v5::Packet::Publish(publish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_are_held_to_the_topic_rules() {
    let (mut p, _dir) = token_pipeline().await;
    let mut c = RawMqtt::open(p.mqtt_v5.unwrap()).await;
    assert!(accepted_v5(
        &c.connect_v5("van-1", Some(("van-1", "tok-1")), None).await
    ));
    let reason = |next: Next<v5::Packet>| match next {
        Next::Packet(v5::Packet::PubAck(ack)) => ack.reason,
        other => panic!("no PUBACK: {other:?}"),
    };
    // Alias 1 for the device's own telemetry topic, then used alone.
    c.send_v5(aliased_v5(
        "fleet/van-1/telemetry",
        1,
        json_ping("van-1", 1),
        1,
    ))
    .await;
    assert_eq!(reason(c.next_v5(T).await), v5::PubAckReason::Success);
    c.send_v5(aliased_v5("", 1, json_ping("van-1", 2), 2)).await;
    assert_eq!(reason(c.next_v5(T).await), v5::PubAckReason::Success);
    // An alias set on a refused publish is not set: using it is a protocol
    // error, and nothing reaches van-2's topic.
    c.send_v5(aliased_v5(
        "fleet/van-2/telemetry",
        2,
        json_ping("van-2", 3),
        3,
    ))
    .await;
    assert_eq!(reason(c.next_v5(T).await), v5::PubAckReason::NotAuthorized);
    c.send_v5(aliased_v5("", 2, json_ping("van-2", 4), 4)).await;
    assert!(c.closed_within(T).await);
    p.wait_telemetry(2, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.stop().await;
    assert_eq!(
        keys(&p.telemetry()),
        vec![("van-1".to_string(), 1), ("van-1".to_string(), 2)]
    );
}

// ------------------------------------------------------------ QoS downgrade

/// Runs `mosquitto_sub` in the background.
fn spawn_sub(args: Vec<String>) -> tokio::task::JoinHandle<Run> {
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mosquitto("mosquitto_sub", &args, CLIENT).await
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// From `mosquitto_sub -d` output: the QoS its SUBACK granted, and (DUP,
/// QoS) of each PUBLISH it received, in order.
fn granted_and_received(run: &Run) -> (Option<u8>, Vec<(bool, u8)>) {
    let granted = run.lines().iter().find_map(|l| {
        l.strip_prefix("Subscribed (mid: 1): ")
            .and_then(|q| q.trim().parse().ok())
    });
    let received = run
        .lines()
        .iter()
        .filter_map(|l| l.split_once("received PUBLISH (").map(|(_, rest)| rest))
        .map(|rest| {
            let mut flags = rest.split(", ");
            let dup = flags.next() == Some("d1");
            let qos = flags
                .next()
                .and_then(|q| q.strip_prefix('q'))
                .and_then(|q| q.parse().ok())
                .unwrap_or(u8::MAX);
            (dup, qos)
        })
        .collect();
    (granted, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_goes_out_at_the_lower_of_its_publish_and_subscription_qos() {
    // Anonymous mode: any topic.
    let mut p = TestPipeline::start(|_| {}).await;
    for (addr, version) in [(p.mqtt, "mqttv311"), (p.mqtt_v5, "mqttv5")] {
        let port = addr.unwrap().port().to_string();
        let topic = format!("qos/{version}");
        let mut subs = Vec::new();
        for qos in [0u8, 1, 2] {
            let id = format!("sub-{qos}-{version}");
            let q = qos.to_string();
            let args = strings(&[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-i",
                &id,
                "-q",
                &q,
                "-t",
                &topic,
                "-C",
                "2",
                "-W",
                "15",
                "-d",
            ]);
            subs.push((qos, spawn_sub(args)));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (qos, message) in [("0", "a"), ("1", "b")] {
            let run = mosquitto(
                "mosquitto_pub",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-q",
                    qos,
                    "-t",
                    &topic,
                    "-m",
                    message,
                ],
                CLIENT,
            )
            .await;
            assert!(run.success, "{run:?}");
        }
        for (qos, sub) in subs {
            let run = sub.await.unwrap();
            let (granted, received) = granted_and_received(&run);
            // QoS 2 is not part of the wire contract: a QoS 2 subscription
            // is granted QoS 1.
            assert_eq!(granted, Some(qos.min(1)), "{version} q{qos}: {run:?}");
            let expected = vec![(false, 0), (false, qos.min(1))];
            assert_eq!(received, expected, "{version} q{qos}: {run:?}");
        }
    }

    // fleetpipe's own acks are published at QoS 1: a QoS 1 subscriber gets
    // them at QoS 1 (retried until acknowledged).
    let port = p.mqtt.unwrap().port().to_string();
    let sub = spawn_sub(strings(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "van-9",
        "-q",
        "1",
        "-t",
        "fleet/van-9/ack",
        "-C",
        "1",
        "-W",
        "15",
        "-d",
    ]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ping = json_ping("van-9", 7);
    let run = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-t",
            "fleet/van-9/telemetry",
            "-m",
            &ping,
        ],
        CLIENT,
    )
    .await;
    assert!(run.success, "{run:?}");
    let run = sub.await.unwrap();
    assert_eq!(granted_and_received(&run).1, vec![(false, 1)], "{run:?}");
    assert!(run.stdout.contains(r#"{"ack":7}"#), "{run:?}");
    p.stop().await;
}

// ------------------------------------------ MQTT 5 session expiry interval

/// `mosquitto_sub` on the MQTT 5 port with `args`, then what it received.
async fn sub_v5(port: &str, args: &[&str]) -> Run {
    let mut all = vec!["-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-q", "1"];
    all.extend_from_slice(args);
    mosquitto("mosquitto_sub", &all, CLIENT).await
}

async fn pub_v5(port: &str, topic: &str, message: &str) {
    let run = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
        ],
        CLIENT,
    )
    .await;
    assert!(run.success, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_session_lives_exactly_as_long_as_its_session_expiry_interval() {
    let mut p = TestPipeline::start(|_| {}).await;
    let port = p.mqtt_v5.unwrap().port().to_string();

    // Clean Start 1 with an expiry of 300 s (paho-mqtt's v5 default): the
    // session, its subscription and what arrives meanwhile outlive the
    // connection (the issue's repro).
    sub_v5(
        &port,
        &["-i", "s1-dev", "-x", "300", "-t", "fleet/s1/ack", "-W", "2"],
    )
    .await;
    pub_v5(&port, "fleet/s1/ack", "kept").await;
    let run = sub_v5(
        &port,
        &[
            "-i",
            "s1-dev",
            "-c",
            "-x",
            "300",
            "-t",
            "fleet/s1/ack",
            "-C",
            "1",
            "-W",
            "5",
        ],
    )
    .await;
    assert_eq!(run.stdout.trim(), "kept", "{run:?}");

    // Expiry 2 s: gone 4 s after the disconnect.
    sub_v5(
        &port,
        &[
            "-i",
            "s2-dev",
            "-c",
            "-x",
            "2",
            "-t",
            "fleet/s2/ack",
            "-W",
            "2",
        ],
    )
    .await;
    pub_v5(&port, "fleet/s2/ack", "expired").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let run = sub_v5(
        &port,
        &[
            "-i",
            "s2-dev",
            "-c",
            "-x",
            "300",
            "-t",
            "fleet/s2/ack",
            "-C",
            "1",
            "-W",
            "2",
        ],
    )
    .await;
    assert_eq!(run.stdout.trim(), "", "{run:?}");

    // Expiry 0 with Clean Start 0: the session ends with the connection.
    // (mosquitto_sub's -c alone asks for a session that never expires.)
    sub_v5(
        &port,
        &[
            "-i",
            "s3-dev",
            "-c",
            "-x",
            "0",
            "-t",
            "fleet/s3/ack",
            "-W",
            "2",
        ],
    )
    .await;
    pub_v5(&port, "fleet/s3/ack", "ended").await;
    let run = sub_v5(
        &port,
        &[
            "-i",
            "s3-dev",
            "-c",
            "-x",
            "300",
            "-t",
            "fleet/s3/ack",
            "-C",
            "1",
            "-W",
            "2",
        ],
    )
    .await;
    assert_eq!(run.stdout.trim(), "", "{run:?}");

    // Within its expiry a session resumed with Clean Start 1 is discarded.
    sub_v5(
        &port,
        &[
            "-i",
            "s4-dev",
            "-c",
            "-x",
            "300",
            "-t",
            "fleet/s4/ack",
            "-W",
            "2",
        ],
    )
    .await;
    pub_v5(&port, "fleet/s4/ack", "discarded").await;
    let run = sub_v5(
        &port,
        &[
            "-i",
            "s4-dev",
            "-x",
            "300",
            "-t",
            "fleet/s4/other",
            "-C",
            "1",
            "-W",
            "2",
        ],
    )
    .await;
    assert_eq!(run.stdout.trim(), "", "{run:?}");

    // MQTT 3.1.1 clean session 0 is kept as before.
    let port4 = p.mqtt.unwrap().port().to_string();
    let sub4 = |extra: &'static [&'static str]| {
        let port4 = port4.clone();
        async move {
            let mut all = vec![
                "-h",
                "127.0.0.1",
                "-p",
                &port4,
                "-q",
                "1",
                "-i",
                "s5-dev",
                "-c",
                "-t",
                "fleet/s5/ack",
            ];
            all.extend_from_slice(extra);
            mosquitto("mosquitto_sub", &all, CLIENT).await
        }
    };
    sub4(&["-W", "2"]).await;
    let run = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port4,
            "-q",
            "1",
            "-t",
            "fleet/s5/ack",
            "-m",
            "v3",
        ],
        CLIENT,
    )
    .await;
    assert!(run.success, "{run:?}");
    assert_eq!(sub4(&["-C", "1", "-W", "5"]).await.stdout.trim(), "v3");
    p.stop().await;
}

// ----------------------------------------------------- DUP on redelivery

/// A persistent session's CONNECT: 3.1.1 clean session 0, or MQTT 5 clean
/// start 0 with a session expiry of 300 s.
async fn resume(c: &mut RawMqtt, v5: bool, client_id: &str) -> bool {
    if v5 {
        let mut properties = v5::ConnectProperties::new();
        properties.session_expiry_interval = Some(300);
        let connect = v5::Connect {
            keep_alive: 30,
            client_id: client_id.to_owned(),
            clean_start: false,
            properties: Some(properties),
        };
        c.send_v5(v5::Packet::Connect(connect, None, None)).await;
        accepted_v5(&c.next_v5(T).await)
    } else {
        accepted_v4(&c.connect_v4(client_id, None, None, false).await)
    }
}

/// (DUP, packet id, payload) of the next `n` publishes, unacknowledged.
async fn publishes(c: &mut RawMqtt, v5: bool, n: usize) -> Vec<(bool, u16, Vec<u8>)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        if v5 {
            match c.next_v5(T).await {
                Next::Packet(v5::Packet::Publish(p)) => {
                    seen.push((p.dup, p.pkid, p.payload.to_vec()))
                }
                Next::Packet(_) => {}
                other => panic!("after {seen:?}: {other:?}"),
            }
        } else {
            match c.next_v4(T).await {
                Next::Packet(v4::Packet::Publish(p)) => {
                    seen.push((p.dup, p.pkid, p.payload.to_vec()))
                }
                Next::Packet(_) => {}
                other => panic!("after {seen:?}: {other:?}"),
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_1_messages_redelivered_after_a_reconnect_carry_dup_and_their_packet_ids() {
    let mut p = TestPipeline::start(|_| {}).await;
    for v5 in [false, true] {
        let addr = if v5 { p.mqtt_v5 } else { p.mqtt }.unwrap();
        let id = format!("dup-{v5}");
        let topic = format!("dup/{v5}");
        let mut sub = RawMqtt::open(addr).await;
        assert!(resume(&mut sub, v5, &id).await);
        if v5 {
            sub.send_v5(subscribe_v5(&topic, 1)).await;
        } else {
            sub.send_v4(subscribe_v4(&topic, 1)).await;
        }
        // The SUBACK, then three QoS 1 messages the device never acknowledges.
        let port = addr.port().to_string();
        let version = if v5 { "mqttv5" } else { "mqttv311" };
        tokio::time::sleep(Duration::from_millis(500)).await;
        for m in ["m1", "m2", "m3"] {
            let run = mosquitto(
                "mosquitto_pub",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-q",
                    "1",
                    "-t",
                    &topic,
                    "-m",
                    m,
                ],
                CLIENT,
            )
            .await;
            assert!(run.success, "{run:?}");
        }
        let first = publishes(&mut sub, v5, 3).await;
        assert!(first.iter().all(|(dup, ..)| !dup), "{first:?}");
        drop(sub);
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut again = RawMqtt::open(addr).await;
        assert!(resume(&mut again, v5, &id).await);
        let redelivered = publishes(&mut again, v5, 3).await;
        let expected: Vec<_> = first
            .iter()
            .map(|(_, pkid, m)| (true, *pkid, m.clone()))
            .collect();
        assert_eq!(redelivered, expected, "v5 = {v5}");
    }
    p.stop().await;
}

// ------------------------------------- Receive Maximum, Maximum Packet Size

/// paho-mqtt, MQTT 5 (`sys.argv`: host port topic receive_maximum
/// max_packet_size): a subscriber announcing Receive Maximum and Maximum
/// Packet Size that acknowledges nothing by itself; a publisher sends 30
/// QoS 1 messages of 10 bytes and one of 200 bytes first. Prints how many
/// arrived unacknowledged, how many after one acknowledgement, and the
/// payload sizes that arrived.
const PAHO_FLOW_CONTROL: &str = r#"
import json, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, topic, receive_max, max_packet = sys.argv[1:6]
sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fc-sub", protocol=mqtt.MQTTv5, manual_ack=True)
props = Properties(PacketTypes.CONNECT)
props.ReceiveMaximum = int(receive_max)
props.MaximumPacketSize = int(max_packet)
received = []
subscribed = threading.Event()
sub.on_message = lambda client, userdata, msg: received.append(msg)
sub.on_subscribe = lambda client, userdata, mid, codes, properties: subscribed.set()
sub.connect(host, int(port), keepalive=30, properties=props)
sub.loop_start()
sub.subscribe(topic, qos=1)
assert subscribed.wait(10)
pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fc-pub", protocol=mqtt.MQTTv5)
pub.connect(host, int(port), keepalive=30)
pub.loop_start()
infos = [pub.publish(topic, b"x" * 200, qos=1)]
infos += [pub.publish(topic, b"%010d" % i, qos=1) for i in range(30)]
for info in infos:
    info.wait_for_publish(10)
time.sleep(2)
out = {"unacknowledged": len(received)}
if received:
    sub.ack(received[0].mid, received[0].qos)
time.sleep(2)
out["after_one_ack"] = len(received)
out["sizes"] = sorted(set(len(m.payload) for m in received))
pub.loop_stop()
sub.loop_stop()
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_receive_maximum_and_maximum_packet_size_are_honoured() {
    let mut p = TestPipeline::start(|_| {}).await;
    let port = p.mqtt_v5.unwrap().port().to_string();
    let out = result(
        &paho(
            PAHO_FLOW_CONTROL,
            &["127.0.0.1", &port, "fc/t", "10", "64"],
            CLIENT,
        )
        .await,
    );
    // At most 10 unacknowledged QoS 1 messages in flight; one more per ack.
    assert_eq!(out["unacknowledged"], 10, "{out}");
    assert_eq!(out["after_one_ack"], 11, "{out}");
    // The 200-byte message is larger than the 64 bytes the client takes:
    // it is not sent to it (MQTT 5 §3.1.2.11.4).
    assert_eq!(out["sizes"], serde_json::json!([10]), "{out}");
    p.stop().await;
}

// ------------------------------------------- MQTT 5 publish properties

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publish_properties_reach_v5_subscribers_and_a_3_1_1_subscriber_gets_the_message_without_them()
 {
    // Anonymous mode: any topic. Both listeners share one router, so a
    // message an MQTT 5 client publishes with properties reaches MQTT 3.1.1
    // subscribers too, which have no way to carry them.
    let mut p = TestPipeline::start(|_| {}).await;
    let port_v5 = p.mqtt_v5.unwrap().port().to_string();
    let port_311 = p.mqtt.unwrap().port().to_string();
    let topic = "props/t";
    let sub = |port: &str, version: &str, format: &str| {
        spawn_sub(strings(&[
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-V",
            version,
            "-q",
            "1",
            "-t",
            topic,
            "-C",
            "2",
            "-W",
            "15",
            "-F",
            format,
        ]))
    };
    let v5 = sub(&port_v5, "mqttv5", "%p|%P|%F|%C");
    let v311 = sub(&port_311, "mqttv311", "%p");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_properties = mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port_v5,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            "first",
            "-D",
            "publish",
            "user-property",
            "a",
            "2",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
            "-D",
            "publish",
            "content-type",
            "text/plain",
        ],
        CLIENT,
    )
    .await;
    assert!(with_properties.success, "{with_properties:?}");
    pub_v5(&port_v5, topic, "second").await;

    // The MQTT 5 subscriber gets the publisher's properties as they were
    // (MQTT 5 §3.3.2.3: user properties, payload format indicator and
    // content type are forwarded unaltered).
    let run = v5.await.unwrap();
    assert_eq!(
        run.lines(),
        vec!["first|a:2|1|text/plain", "second|||"],
        "{run:?}"
    );
    // The MQTT 3.1.1 subscriber gets both messages, without the properties
    // its protocol cannot carry, and its connection stays up.
    let run = v311.await.unwrap();
    assert_eq!(run.lines(), vec!["first", "second"], "{run:?}");
    p.stop().await;
}

// ------------------------------------------------- QoS 2 with properties

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_pubrel_with_properties_completes_the_qos_2_flow() {
    let mut p = TestPipeline::start(|_| {}).await;
    let mut c = RawMqtt::open(p.mqtt_v5.unwrap()).await;
    let connack = c.connect_v5("van-7", None, None).await;
    assert!(accepted_v5(&connack), "{connack:?}");
    let mut publish = v5::Publish::new(
        "fleet/van-7/telemetry",
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        json_ping("van-7", 1),
        None,
    );
    publish.pkid = 9;
    c.send_v5(v5::Packet::Publish(publish)).await;
    match c.next_v5(T).await {
        Next::Packet(v5::Packet::PubRec(rec)) => assert_eq!(rec.pkid, 9),
        other => panic!("no PUBREC: {other:?}"),
    }
    // PUBREL for packet id 9, reason 0x00, with a Reason String property
    // (MQTT 5 §3.6.2.2): the broker ignored a PUBREL that had properties,
    // so the device never got its PUBCOMP and resent PUBREL for ever.
    c.send_bytes(&[
        0x62, 0x09, 0x00, 0x09, 0x00, 0x05, 0x1F, 0x00, 0x02, b'o', b'k',
    ])
    .await;
    match c.next_v5(T).await {
        Next::Packet(v5::Packet::PubComp(comp)) => assert_eq!(comp.pkid, 9),
        other => panic!("no PUBCOMP: {other:?}"),
    }
    p.wait_telemetry(1, T).await;
    p.stop().await;
}

// ------------------------------------------ MQTT 5 DISCONNECT, shortest form

/// A 3.1.1 subscriber to `topic` on `p`'s broker.
async fn subscriber(p: &TestPipeline, client_id: &str, topic: &str) -> RawMqtt {
    let mut s = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = s.connect_v4(client_id, None, None, true).await;
    assert!(accepted_v4(&connack), "{connack:?}");
    s.send_v4(subscribe_v4(topic, 1)).await;
    match s.next_v4(T).await {
        Next::Packet(v4::Packet::SubAck(_)) => s,
        other => panic!("no SUBACK: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_disconnect_with_only_a_reason_code_is_read() {
    // MQTT 5 §3.14.2.2.1: with a Remaining Length of 1 the Property Length
    // is left out. The broker asked for one more byte, so it never read
    // such a DISCONNECT: 0x04 did not publish the will, 0x00 did not end
    // the session cleanly.
    let mut p = TestPipeline::start(|_| {}).await;
    let mut watcher = subscriber(&p, "will-watcher", "wills/#").await;
    for (reason, will_expected) in [(0x04u8, true), (0x00, false)] {
        let topic = format!("wills/{reason}");
        let mut c = RawMqtt::open(p.mqtt_v5.unwrap()).await;
        let connack = c
            .connect_v5(&format!("willer-{reason}"), None, Some((&topic, b"gone")))
            .await;
        assert!(accepted_v5(&connack), "{connack:?}");
        c.send_bytes(&[0xE0, 0x01, reason]).await;
        // The broker closes the connection itself once it has read it.
        assert!(
            c.closed_within(T).await,
            "DISCONNECT {reason:#04x} not read"
        );
        match watcher.next_v4(Duration::from_secs(2)).await {
            Next::Packet(v4::Packet::Publish(will)) => {
                assert!(will_expected, "DISCONNECT {reason:#04x} published the will");
                assert_eq!(will.topic, topic);
                assert_eq!(&will.payload[..], b"gone");
            }
            other => assert!(!will_expected, "no will after 0x04: {other:?}"),
        }
    }
    p.stop().await;
}
