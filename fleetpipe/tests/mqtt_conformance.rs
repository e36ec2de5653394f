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
        c.ingest.mqtt.server_keep_alive = Duration::from_secs(2);
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
        let told = if version == "5" { Value::from(2) } else { Value::Null };
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
    assert!(!c4.closed_within(Duration::from_secs(2)).await, "closed early (3.1.1)");
    assert!(c4.closed_within(Duration::from_secs(5)).await, "never closed (3.1.1)");
    assert!(c5.closed_within(Duration::from_secs(2)).await, "never closed (5)");
    assert!(started.elapsed() >= Duration::from_secs(2));
    p.stop().await;
    assert_eq!(
        keys(&p.telemetry()),
        vec![("van-4".to_string(), 1), ("van-5".to_string(), 1)]
    );
}
