//! Device isolation on the embedded broker, attacked with raw MQTT packets
//! (3.1.1 and 5): no device can displace fleetpipe's own link, shed its
//! topic rules with a second CONNECT, take over another device's session,
//! publish through a will, subscribe or publish outside its own topics, or
//! go on after its JWT expired.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::raw_mqtt::*;
use common::*;
use fleetpipe_ingest::auth::AuthMode;
use fleetpipe_ingest::mqtt::INTERNAL_CLIENT_ID;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

const T: Duration = Duration::from_secs(10);
/// How long a refused connection has to be closed by.
const CLOSE: Duration = Duration::from_secs(3);

/// A connected MQTT 3.1.1 device.
async fn device_v4(p: &TestPipeline, client_id: &str, login: Option<(&str, &str)>) -> RawMqtt {
    let mut c = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = c.connect_v4(client_id, login, None, true).await;
    assert!(accepted_v4(&connack), "{client_id}: {connack:?}");
    c
}

/// A connected MQTT 5 device.
async fn device_v5(p: &TestPipeline, client_id: &str, login: Option<(&str, &str)>) -> RawMqtt {
    let mut c = RawMqtt::open(p.mqtt_v5.unwrap()).await;
    let connack = c.connect_v5(client_id, login, None).await;
    assert!(accepted_v5(&connack), "{client_id}: {connack:?}");
    c
}

/// Publishes one ping of `vehicle` with `seq` and waits for its PUBACK.
async fn publish_acked_v4(c: &mut RawMqtt, vehicle: &str, seq: u64) {
    c.send_v4(publish_v4(
        &format!("fleet/{vehicle}/telemetry"),
        json_ping(vehicle, seq),
        1,
    ))
    .await;
    match c.next_v4(T).await {
        Next::Packet(v4::Packet::PubAck(_)) => {}
        other => panic!("no PUBACK for {vehicle} seq {seq}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_can_displace_fleetpipes_own_link() {
    // Anonymous mode: any client id but fleetpipe's own.
    let mut p = TestPipeline::start(|_| {}).await;
    // The id fleetpipe's link had before (now an ordinary id), and the one it has.
    let _squatter = device_v4(&p, "fleetpipe-ingest", None).await;
    let mut c = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = c.connect_v4(INTERNAL_CLIENT_ID, None, None, true).await;
    assert!(!accepted_v4(&connack), "{connack:?}");
    assert!(c.closed_within(CLOSE).await);
    let mut c5 = RawMqtt::open(p.mqtt_v5.unwrap()).await;
    let connack = c5.connect_v5(INTERNAL_CLIENT_ID, None, None).await;
    assert!(!accepted_v5(&connack), "{connack:?}");
    assert!(c5.closed_within(CLOSE).await);

    // MQTT ingestion goes on: a device's ping is stored.
    let mut d = device_v4(&p, "dev-1", None).await;
    publish_acked_v4(&mut d, "van-1", 1).await;
    p.wait_telemetry(1, T).await;
    p.stop().await;
    assert_eq!(keys(&p.telemetry()), vec![("van-1".to_string(), 1)]);

    // Token mode: a valid device cannot claim the link's id either.
    let (mut p, _dir) = token_pipeline().await;
    let mut c = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = c
        .connect_v4(INTERNAL_CLIENT_ID, Some(("van-1", "tok-1")), None, true)
        .await;
    assert!(!accepted_v4(&connack), "{connack:?}");
    let mut d = device_v4(&p, "van-2", Some(("van-2", "tok-2"))).await;
    publish_acked_v4(&mut d, "van-2", 7).await;
    p.wait_telemetry(1, T).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_closes_the_connection() {
    let (mut p, _dir) = token_pipeline().await;
    // MQTT 3.1.1: a second CONNECT without credentials, then an attempt to
    // read the whole fleet and to publish as van-2.
    let mut c = device_v4(&p, "van-1", Some(("van-1", "tok-1"))).await;
    c.send_v4(connect_v4("van-1", None, None, true)).await;
    c.send_v4(subscribe_v4("fleet/#", 1)).await;
    c.send_v4(publish_v4(
        "fleet/van-2/telemetry",
        json_ping("van-2", 800),
        2,
    ))
    .await;
    assert!(
        c.closed_within(CLOSE).await,
        "second CONNECT must close (3.1.1)"
    );

    // MQTT 5 likewise.
    let mut c5 = device_v5(&p, "van-1", Some(("van-1", "tok-1"))).await;
    c5.send_v5(connect_v5("van-1", None, None)).await;
    c5.send_v5(publish_v5(
        "fleet/van-2/telemetry",
        json_ping("van-2", 801),
        1,
    ))
    .await;
    assert!(
        c5.closed_within(CLOSE).await,
        "second CONNECT must close (5)"
    );

    // van-2 itself still works, and nothing was stored as van-2's but its own.
    let mut van2 = device_v4(&p, "van-2", Some(("van-2", "tok-2"))).await;
    publish_acked_v4(&mut van2, "van-2", 1).await;
    p.wait_telemetry(1, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.stop().await;
    assert_eq!(keys(&p.telemetry()), vec![("van-2".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_take_over_another_devices_session() {
    let (mut p, _dir) = token_pipeline().await;
    // van-2 has a persistent session subscribed to its acks.
    let mut van2 = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = van2
        .connect_v4("van-2", Some(("van-2", "tok-2")), None, false)
        .await;
    assert!(accepted_v4(&connack), "{connack:?}");
    van2.send_v4(subscribe_v4("fleet/van-2/ack", 1)).await;
    assert!(matches!(
        van2.next_v4(T).await,
        Next::Packet(v4::Packet::SubAck(_))
    ));

    // van-1, with its own valid token, asks for van-2's client id (3.1.1 and 5).
    let mut thief = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = thief
        .connect_v4("van-2", Some(("van-1", "tok-1")), None, false)
        .await;
    assert!(!accepted_v4(&connack), "{connack:?}");
    assert!(thief.closed_within(CLOSE).await);
    let mut thief5 = RawMqtt::open(p.mqtt_v5.unwrap()).await;
    let connack = thief5
        .connect_v5("van-2", Some(("van-1", "tok-1")), None)
        .await;
    assert!(!accepted_v5(&connack), "{connack:?}");
    // Nor a look-alike: vehicle ids may contain ':', so that is no separator.
    let mut thief = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = thief
        .connect_v4("van-2:x", Some(("van-1", "tok-1")), None, false)
        .await;
    assert!(!accepted_v4(&connack), "{connack:?}");

    // van-2 was not disconnected and still gets its own ack.
    publish_acked_v4(&mut van2, "van-2", 5).await;
    let ack = loop {
        match van2.next_v4(T).await {
            Next::Packet(v4::Packet::Publish(p)) => break p,
            Next::Packet(_) => {}
            other => panic!("van-2 lost its session: {other:?}"),
        }
    };
    assert_eq!(ack.topic, "fleet/van-2/ack");
    assert_eq!(&ack.payload[..], br#"{"ack":5}"#);

    // The documented scheme works: {vehicle} and {vehicle}@{suffix}.
    let mut own = device_v4(&p, "van-1@phone", Some(("van-1", "tok-1"))).await;
    publish_acked_v4(&mut own, "van-1", 1).await;
    p.wait_telemetry(2, T).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_held_to_the_rules_of_a_publish() {
    let (mut p, _dir) = token_pipeline().await;
    let forged = json_ping("van-2", 900);
    // van-1 leaves a will on van-2's telemetry topic, then drops the connection.
    let mut c = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = c
        .connect_v4(
            "van-1",
            Some(("van-1", "tok-1")),
            Some(("fleet/van-2/telemetry", forged.as_bytes())),
            true,
        )
        .await;
    assert!(!accepted_v4(&connack), "{connack:?}");
    drop(c);
    let mut c5 = RawMqtt::open(p.mqtt_v5.unwrap()).await;
    let connack = c5
        .connect_v5(
            "van-1",
            Some(("van-1", "tok-1")),
            Some(("fleet/van-2/telemetry", forged.as_bytes())),
        )
        .await;
    assert!(!accepted_v5(&connack), "{connack:?}");
    drop(c5);

    // A will on the device's own telemetry topic is a publish it may make.
    let own = json_ping("van-1", 3);
    let mut c = RawMqtt::open(p.mqtt.unwrap()).await;
    let connack = c
        .connect_v4(
            "van-1",
            Some(("van-1", "tok-1")),
            Some(("fleet/van-1/telemetry", own.as_bytes())),
            true,
        )
        .await;
    assert!(accepted_v4(&connack), "{connack:?}");
    drop(c); // abrupt close: the broker publishes the will
    p.wait_telemetry(1, T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.stop().await;
    assert_eq!(keys(&p.telemetry()), vec![("van-1".to_string(), 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_subscribes_only_to_its_own_ack_topic_and_publishes_only_to_its_own_telemetry() {
    let (mut p, _dir) = token_pipeline().await;
    let refused = [
        "fleet/#",
        "#",
        "+/van-2/ack",
        "fleet/+/ack",
        "fleet/van-2/ack",
        "fleet/van-2/#",
        "$SYS/#",
        "fleet/van-1/telemetry",
        "fleet/van-1/#",
    ];
    // Each refused filter gets its SUBACK failure code (3.1.1: 0x80, 5:
    // 0x87 Not authorized) and no subscription; the connection stays up.
    let mut c = device_v4(&p, "van-1@a", Some(("van-1", "tok-1"))).await;
    let mut c5 = device_v5(&p, "van-1@b", Some(("van-1", "tok-1"))).await;
    for (pkid, filter) in (1..).zip(refused) {
        c.send_v4(subscribe_v4(filter, pkid)).await;
        match c.next_v4(T).await {
            Next::Packet(v4::Packet::SubAck(ack)) => assert_eq!(
                ack.return_codes,
                [v4::SubscribeReasonCode::Failure],
                "subscribe {filter} (3.1.1)"
            ),
            other => panic!("subscribe {filter} (3.1.1): {other:?}"),
        }
        c5.send_v5(subscribe_v5(filter, pkid)).await;
        match c5.next_v5(T).await {
            Next::Packet(v5::Packet::SubAck(ack)) => assert_eq!(
                ack.return_codes,
                [v5::SubscribeReasonCode::NotAuthorized],
                "subscribe {filter} (5)"
            ),
            other => panic!("subscribe {filter} (5): {other:?}"),
        }
    }
    // Had any of them been granted, the device would get its own ping back
    // (`fleet/#`, `fleet/van-1/telemetry`, ...) or its ack (`fleet/+/ack`,
    // ...): it gets the PUBACK and nothing else.
    publish_acked_v4(&mut c, "van-1", 1).await;
    assert!(matches!(
        c.next_v4(Duration::from_secs(1)).await,
        Next::Quiet
    ));
    c5.send_v5(publish_v5(
        "fleet/van-1/telemetry",
        json_ping("van-1", 2),
        1,
    ))
    .await;
    match c5.next_v5(T).await {
        Next::Packet(v5::Packet::PubAck(ack)) => {
            assert_eq!(ack.reason, v5::PubAckReason::Success);
        }
        other => panic!("no PUBACK (5): {other:?}"),
    }
    assert!(matches!(
        c5.next_v5(Duration::from_secs(1)).await,
        Next::Quiet
    ));
    drop((c, c5));
    let mut c = device_v4(&p, "van-1", Some(("van-1", "tok-1"))).await;
    c.send_v4(subscribe_v4("fleet/van-1/ack", 1)).await;
    assert!(matches!(
        c.next_v4(T).await,
        Next::Packet(v4::Packet::SubAck(_))
    ));

    for topic in [
        "fleet/van-2/telemetry",
        "fleet/van-1/ack",
        "fleet/van-1/other",
        "other/van-1/telemetry",
    ] {
        let mut c = device_v4(&p, "van-1", Some(("van-1", "tok-1"))).await;
        c.send_v4(publish_v4(topic, json_ping("van-1", 9), 1)).await;
        match c.next_v4(CLOSE).await {
            Next::Closed => {}
            other => panic!("publish to {topic}: {other:?}"),
        }
        // MQTT 5 has a reason code for it: PUBACK 0x87 Not authorized,
        // the publish not routed (it used to close the connection).
        let mut c5 = device_v5(&p, "van-1", Some(("van-1", "tok-1"))).await;
        c5.send_v5(publish_v5(topic, json_ping("van-1", 9), 1))
            .await;
        match c5.next_v5(CLOSE).await {
            Next::Packet(v5::Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized, "{topic} (5)");
            }
            other => panic!("publish to {topic} (5): {other:?}"),
        }
    }
    p.stop().await;
    // Only the device's own pings, none of the refused ones.
    assert_eq!(
        keys(&p.telemetry()),
        vec![("van-1".to_string(), 1), ("van-1".to_string(), 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_session_ends_when_its_jwt_expires() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let mut p = TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Jwt;
        c.ingest.auth.jwt_secret = Some("secret".into());
        c.ingest.auth.jwt_leeway_s = 0;
    })
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &Claims { sub: "van-1", exp },
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    let mut c = device_v4(&p, "van-1", Some(("van-1", &token))).await;
    publish_acked_v4(&mut c, "van-1", 1).await;
    // Past `exp`: the next packet closes the connection, unacknowledged.
    let wait = std::time::UNIX_EPOCH + Duration::from_secs(exp) + Duration::from_millis(300);
    tokio::time::sleep(
        wait.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    c.send_v4(publish_v4(
        "fleet/van-1/telemetry",
        json_ping("van-1", 2),
        2,
    ))
    .await;
    match c.next_v4(CLOSE).await {
        Next::Closed => {}
        other => panic!("expired session went on: {other:?}"),
    }
    p.wait_telemetry(1, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.stop().await;
    assert_eq!(keys(&p.telemetry()), vec![("van-1".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_right_after_the_old_connection_closed_takes_over_its_client_id() {
    // The old connection's close and the new connection's takeover of the
    // same client id race in the router; the new one must always win.
    let (mut p, _dir) = token_pipeline().await;
    for round in 0..40 {
        let old = if round % 2 == 0 {
            device_v4(&p, "van-1", Some(("van-1", "tok-1"))).await
        } else {
            device_v5(&p, "van-1", Some(("van-1", "tok-1"))).await
        };
        drop(old);
        let mut new = device_v4(&p, "van-1", Some(("van-1", "tok-1"))).await;
        publish_acked_v4(&mut new, "van-1", round).await;
    }
    p.wait_telemetry(40, T).await;
    p.stop().await;
}

/// Panics raised in the broker's code (the vendored rumqttd) since
/// [`watch_broker_panics`] was first called. A panic in a connection task
/// only ends that task, so from the socket it looks like any close: the
/// hook is how a test tells a refusal from a crash.
fn watch_broker_panics() -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    static PANICS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<String>>>> =
        std::sync::OnceLock::new();
    PANICS
        .get_or_init(|| {
            let panics = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = panics.clone();
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if let Some(at) = info.location().filter(|l| l.file().contains("rumqttd")) {
                    seen.lock().unwrap().push(format!("{at}: {info}"));
                }
                previous(info);
            }));
            panics
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_only_a_server_may_send_close_the_sender_and_crash_nothing() {
    let panics = watch_broker_panics();
    let (mut p, _dir) = token_pipeline().await;
    // (name, bytes) of packets a client must never send: server-to-client
    // packets, with and without a body, and the reserved types 0 and 15.
    let v4_packets: &[(&str, &[u8])] = &[
        ("CONNACK", &[0x20, 0x02, 0x00, 0x00]),
        ("SUBACK", &[0x90, 0x03, 0x00, 0x01, 0x01]),
        ("UNSUBACK", &[0xB0, 0x02, 0x00, 0x01]),
        ("PINGRESP with a body", &[0xD0, 0x01, 0x00]),
        ("reserved 0", &[0x00, 0x00]),
        ("reserved 15", &[0xF0, 0x00]),
    ];
    // MQTT 5: a packet that decodes is answered with DISCONNECT 0x82
    // Protocol Error (exactly these bytes: no property length, as the
    // Remaining Length of 1 says) before the close; one the broker's MQTT 5
    // decoder does not read at all (it has no CONNACK or UNSUBACK reader:
    // these two panicked it) is just closed.
    let protocol_error: &[u8] = &[0xE0, 0x01, 0x82];
    let v5_packets: &[(&str, &[u8], &[u8])] = &[
        ("CONNACK", &[0x20, 0x03, 0x00, 0x00, 0x00], &[]),
        (
            "SUBACK",
            &[0x90, 0x04, 0x00, 0x01, 0x00, 0x01],
            protocol_error,
        ),
        ("UNSUBACK", &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x00], &[]),
        ("PINGRESP", &[0xD0, 0x00], protocol_error),
        ("reserved 0", &[0x00, 0x00], &[]),
        ("AUTH", &[0xF0, 0x02, 0x00, 0x00], &[]),
    ];
    for (name, bytes) in v4_packets {
        let mut c = device_v4(&p, "van-1", Some(("van-1", "tok-1"))).await;
        c.send_bytes(bytes).await;
        assert!(c.closed_within(CLOSE).await, "3.1.1 {name} must close");
    }
    for (name, bytes, answer) in v5_packets {
        let mut c = device_v5(&p, "van-1", Some(("van-1", "tok-1"))).await;
        c.send_bytes(bytes).await;
        let sent = c.bytes_until_closed(CLOSE).await;
        assert_eq!(sent.as_deref(), Some(*answer), "5 {name} must close");
    }
    assert_eq!(*panics.lock().unwrap(), Vec::<String>::new());

    // The broker serves everyone else, and van-1 again, as before.
    let mut van2 = device_v4(&p, "van-2", Some(("van-2", "tok-2"))).await;
    publish_acked_v4(&mut van2, "van-2", 1).await;
    let mut van1 = device_v4(&p, "van-1", Some(("van-1", "tok-1"))).await;
    publish_acked_v4(&mut van1, "van-1", 1).await;
    p.wait_telemetry(2, T).await;
    p.stop().await;
}
