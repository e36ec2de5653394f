//! MQTT over TLS on the embedded broker, with certificates generated here
//! (rcgen) for every run: token authentication over TLS (3.1.1 and 5),
//! mutual TLS binding a device to the vehicle its certificate names (and
//! the same isolation rules as for tokens), handshakes that cannot hold
//! each other up, the connection limit, certificates reloaded on change,
//! and start errors that name the key.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::raw_mqtt::*;
use common::tls::*;
use common::*;
use fleetpipe_ingest::auth::AuthMode;
use fleetpipe_ingest::mqtt::MqttTlsConfig;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const T: Duration = Duration::from_secs(10);
/// How long a refused connection has to be closed by.
const CLOSE: Duration = Duration::from_secs(3);

/// Writes the broker's TLS files into `dir`; `client_ca` turns on mutual TLS.
fn write_tls_files(dir: &Path, server: &Identity, client_ca: Option<&Ca>) -> MqttTlsConfig {
    let files = write_server_files(dir, server, client_ca);
    let mut config = MqttTlsConfig::new(files.cert, files.key, files.client_ca);
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.listen_v5 = Some("127.0.0.1:0".parse().unwrap());
    config
}

/// A pipeline in token mode (van-1: tok-1, van-2: tok-2) with these TLS settings.
async fn tls_pipeline(dir: &Path, tls: MqttTlsConfig) -> TestPipeline {
    let creds = credentials(dir);
    TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Token;
        c.ingest.auth.credentials_file = Some(creds);
        broker(c).tls = Some(tls);
    })
    .await
}

/// Opens TLS to the broker; `Err` when the handshake fails on the client's
/// side (with TLS 1.3 a refused client certificate only shows on the first
/// read: see [`refused_at_handshake`]).
async fn open_tls(addr: SocketAddr, connector: &TlsConnector) -> std::io::Result<RawMqtt> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(T, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
    Ok(RawMqtt::over(tls))
}

/// Whether the broker refuses a client with `connector` in the TLS
/// handshake: it fails on the client's side, or (TLS 1.3, where the server
/// checks the client's certificate after the client is done) the broker
/// closes the connection before the client sent anything over it.
async fn refused_at_handshake(addr: SocketAddr, connector: &TlsConnector) -> bool {
    match open_tls(addr, connector).await {
        Err(_) => true,
        Ok(mut c) => matches!(c.next_v4(CLOSE).await, Next::Closed),
    }
}

async fn tls_device_v4(
    addr: SocketAddr,
    connector: &TlsConnector,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> RawMqtt {
    let mut c = open_tls(addr, connector).await.unwrap();
    let connack = c.connect_v4(client_id, login, None, true).await;
    assert!(accepted_v4(&connack), "{client_id} {login:?}: {connack:?}");
    c
}

async fn tls_device_v5(
    addr: SocketAddr,
    connector: &TlsConnector,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> RawMqtt {
    let mut c = open_tls(addr, connector).await.unwrap();
    let connack = c.connect_v5(client_id, login, None).await;
    assert!(accepted_v5(&connack), "{client_id} {login:?}: {connack:?}");
    c
}

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

async fn publish_acked_v5(c: &mut RawMqtt, vehicle: &str, seq: u64) {
    c.send_v5(publish_v5(
        &format!("fleet/{vehicle}/telemetry"),
        json_ping(vehicle, seq),
        1,
    ))
    .await;
    match c.next_v5(T).await {
        Next::Packet(v5::Packet::PubAck(_)) => {}
        other => panic!("no PUBACK for {vehicle} seq {seq}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_311_and_5_over_tls_with_token_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let tls = write_tls_files(dir.path(), &ca.server(), None);
    let mut p = tls_pipeline(dir.path(), tls).await;
    let (tls_v4, tls_v5) = (p.mqtt_tls.unwrap(), p.mqtt_v5_tls.unwrap());
    let client = connector(&ca, None);

    let mut c = tls_device_v4(tls_v4, &client, "van-1", Some(("van-1", "tok-1"))).await;
    publish_acked_v4(&mut c, "van-1", 1).await;
    let mut c5 = tls_device_v5(tls_v5, &client, "van-2", Some(("van-2", "tok-2"))).await;
    publish_acked_v5(&mut c5, "van-2", 2).await;

    // Token rules hold over TLS: a wrong token, someone else's vehicle.
    for login in [("van-1", "wrong"), ("van-2", "tok-1")] {
        let mut c = open_tls(tls_v4, &client).await.unwrap();
        let connack = c.connect_v4("van-1", Some(login), None, true).await;
        assert!(!accepted_v4(&connack), "{login:?}: {connack:?}");
    }
    // Plain MQTT on a TLS port is no handshake: closed, nothing served.
    let mut plain = RawMqtt::open(tls_v4).await;
    let answer = plain
        .connect_v4("van-1", Some(("van-1", "tok-1")), None, true)
        .await;
    assert!(!accepted_v4(&answer), "{answer:?}");
    // A client that does not trust the broker's CA does not connect.
    assert!(
        open_tls(tls_v4, &connector(&Ca::new("other CA"), None))
            .await
            .is_err()
    );

    let stored = p.wait_telemetry(2, T).await;
    let mut keys = keys(&stored);
    keys.sort();
    assert_eq!(keys, [("van-1".to_owned(), 1), ("van-2".to_owned(), 2)]);
    drop((c, c5));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_binds_the_device_to_its_vehicle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("broker CA");
    let devices = Ca::new("device CA");
    let tls = write_tls_files(dir.path(), &ca.server(), Some(&devices));
    let mut p = tls_pipeline(dir.path(), tls).await;
    let (tls_v4, tls_v5) = (p.mqtt_tls.unwrap(), p.mqtt_v5_tls.unwrap());
    let van1 = connector(&ca, Some(&devices.device("van-1", &[])));

    // The certificate is the credential: no token needed (and a password
    // is ignored); a username, if any, must be the certificate's vehicle.
    let mut c = tls_device_v4(tls_v4, &van1, "van-1", None).await;
    publish_acked_v4(&mut c, "van-1", 1).await;
    let mut c5 = tls_device_v5(tls_v5, &van1, "van-1@v5", Some(("van-1", "not-a-token"))).await;
    publish_acked_v5(&mut c5, "van-1", 2).await;
    drop((c, c5));

    // Not van-2: not as username (with van-2's own token), not as client id.
    for (client_id, login) in [
        ("van-1", Some(("van-2", "tok-2"))),
        ("van-2", None),
        ("van-2@x", None),
    ] {
        let mut c = open_tls(tls_v4, &van1).await.unwrap();
        let connack = c.connect_v4(client_id, login, None, true).await;
        assert!(!accepted_v4(&connack), "{client_id} {login:?}: {connack:?}");
        let mut c5 = open_tls(tls_v5, &van1).await.unwrap();
        let connack = c5.connect_v5(client_id, login, None).await;
        assert!(
            !accepted_v5(&connack),
            "{client_id} {login:?} (5): {connack:?}"
        );
    }
    // Not van-2's topics.
    let mut c = tls_device_v4(tls_v4, &van1, "van-1", None).await;
    c.send_v4(publish_v4(
        "fleet/van-2/telemetry",
        json_ping("van-2", 7),
        1,
    ))
    .await;
    assert!(matches!(c.next_v4(CLOSE).await, Next::Closed));
    let mut c5 = tls_device_v5(tls_v5, &van1, "van-1", None).await;
    c5.send_v5(publish_v5(
        "fleet/van-2/telemetry",
        json_ping("van-2", 8),
        1,
    ))
    .await;
    // MQTT 5 refuses with PUBACK 0x87 (it used to close the connection).
    assert!(matches!(
        c5.next_v5(CLOSE).await,
        Next::Packet(v5::Packet::PubAck(ack)) if ack.reason == v5::PubAckReason::NotAuthorized
    ));
    // A refused filter gets SUBACK 0x80 (it used to close the connection);
    // the connection goes on with the device's own.
    let mut c = tls_device_v4(tls_v4, &van1, "van-1", None).await;
    c.send_v4(subscribe_v4("fleet/van-2/ack", 1)).await;
    assert!(
        matches!(
            c.next_v4(T).await,
            Next::Packet(v4::Packet::SubAck(ack)) if ack.return_codes == [v4::SubscribeReasonCode::Failure]
        ),
        "subscribe to van-2's acks"
    );
    c.send_v4(subscribe_v4("fleet/van-1/ack", 2)).await;
    assert!(matches!(
        c.next_v4(T).await,
        Next::Packet(v4::Packet::SubAck(_))
    ));

    // The first DNS name, when there is one, is the vehicle, not the CN.
    let san = connector(&ca, Some(&devices.device("van-1", &["van-2"])));
    let mut c = open_tls(tls_v4, &san).await.unwrap();
    assert!(!accepted_v4(&c.connect_v4("van-1", None, None, true).await));
    let mut c = tls_device_v4(tls_v4, &san, "van-2", None).await;
    publish_acked_v4(&mut c, "van-2", 3).await;

    // A certificate that names no valid vehicle id is refused at CONNECT.
    let invalid = connector(&ca, Some(&devices.device("van 1", &[])));
    for client_id in ["van 1", ""] {
        let mut c = open_tls(tls_v4, &invalid).await.unwrap();
        let connack = c.connect_v4(client_id, None, None, true).await;
        assert!(!accepted_v4(&connack), "{client_id:?}: {connack:?}");
    }

    let stored = p.wait_telemetry(3, T).await;
    let mut stored_keys = keys(&stored);
    stored_keys.sort();
    assert_eq!(
        stored_keys,
        [
            ("van-1".to_owned(), 1),
            ("van-1".to_owned(), 2),
            ("van-2".to_owned(), 3)
        ]
    );
    // The publishes to van-2's topic were dead-lettered, not stored.
    let dead = p.wait_dead_letters(2, T).await;
    assert_eq!(reasons(&dead), ["unauthorized", "unauthorized"]);
    p.stop().await;
    assert_eq!(p.telemetry().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_device_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("broker CA");
    let devices = Ca::new("device CA");
    let tls = write_tls_files(dir.path(), &ca.server(), Some(&devices));
    // TLS only: the plaintext listeners are off.
    let mut p = TestPipeline::start(|c| {
        broker(c).listen = None;
        broker(c).listen_v5 = None;
        broker(c).tls = Some(tls);
    })
    .await;
    assert_eq!((p.mqtt, p.mqtt_v5), (None, None));
    let (tls_v4, tls_v5) = (p.mqtt_tls.unwrap(), p.mqtt_v5_tls.unwrap());

    // No certificate, and certificates for van-1 from another CA (the
    // broker's own, too): the handshake fails, before any MQTT.
    let rogue = Ca::new("rogue CA");
    let clients = [
        ("no certificate", connector(&ca, None)),
        (
            "rogue CA",
            connector(&ca, Some(&rogue.device("van-1", &[]))),
        ),
        ("broker CA", connector(&ca, Some(&ca.device("van-1", &[])))),
    ];
    for (what, client) in &clients {
        assert!(refused_at_handshake(tls_v4, client).await, "{what}");
        assert!(refused_at_handshake(tls_v5, client).await, "{what} (5)");
        // Nor does a CONNECT over it get anywhere (ingest.auth.mode is
        // "none": only the certificate stands between anyone and a session).
        if let Ok(mut c) = open_tls(tls_v4, client).await {
            let answer = c
                .connect_v4("van-1", Some(("van-1", "tok-1")), None, true)
                .await;
            assert!(matches!(answer, Next::Closed), "{what}: {answer:?}");
        }
    }
    // The device CA's certificate does get a session.
    let good = connector(&ca, Some(&devices.device("van-1", &[])));
    assert!(!refused_at_handshake(tls_v4, &good).await);
    tls_device_v4(tls_v4, &good, "van-1", None).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_holds_up_no_other_handshake_and_is_closed_after_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("broker CA");
    let devices = Ca::new("device CA");
    let tls = write_tls_files(dir.path(), &ca.server(), Some(&devices));
    let creds = credentials(dir.path());
    let mut p = TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Token;
        c.ingest.auth.credentials_file = Some(creds);
        broker(c).tls = Some(tls);
        broker(c).connect_timeout = Duration::from_secs(4);
    })
    .await;
    let tls_v4 = p.mqtt_tls.unwrap();
    // Opens TCP and never sends a ClientHello.
    let mut silent = TcpStream::connect(tls_v4).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let van1 = connector(&ca, Some(&devices.device("van-1", &[])));
    let mut c = tls_device_v4(tls_v4, &van1, "van-1", None).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the second client waited {:?}",
        start.elapsed()
    );
    publish_acked_v4(&mut c, "van-1", 1).await;
    // The silent one is closed once its connect_timeout is up.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(8), silent.read(&mut buf))
        .await
        .expect("the silent client is closed within connect_timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("broker CA");
    let tls = write_tls_files(dir.path(), &ca.server(), None);
    let creds = credentials(dir.path());
    let mut p = TestPipeline::start(|c| {
        c.ingest.auth.mode = AuthMode::Token;
        c.ingest.auth.credentials_file = Some(creds);
        broker(c).tls = Some(tls);
        broker(c).max_connections = 2;
    })
    .await;
    let client = connector(&ca, None);
    // Two connections, on different listeners: the limit is for all of them.
    let first = tls_device_v4(
        p.mqtt_tls.unwrap(),
        &client,
        "van-1",
        Some(("van-1", "tok-1")),
    )
    .await;
    let mut second = RawMqtt::open(p.mqtt.unwrap()).await;
    assert!(accepted_v4(
        &second
            .connect_v4("van-2", Some(("van-2", "tok-2")), None, true)
            .await
    ));
    for addr in [p.mqtt.unwrap(), p.mqtt_v5.unwrap(), p.mqtt_tls.unwrap()] {
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(CLOSE, third.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{addr}: a third connection is not closed"));
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // A closed connection frees its place.
    drop(first);
    let lingering = wait_for_place(p.mqtt_v5.unwrap(), || lingering_connect("van-1@w1")).await;
    // Also one whose MQTT 5 will rumqttd holds back for an hour after the
    // connection closed: the place is the connection's, not the will's.
    drop(lingering);
    let again = wait_for_place(p.mqtt_v5.unwrap(), || lingering_connect("van-1@w2")).await;
    drop((again, second));
    p.stop().await;
}

/// MQTT 5 CONNECT of van-1 (token) with a session and a will on its own
/// telemetry topic, both held for an hour after the connection closes.
fn lingering_connect(client_id: &str) -> v5::Packet {
    let properties = v5::ConnectProperties {
        session_expiry_interval: Some(3600),
        ..v5::ConnectProperties::new()
    };
    let will_properties = v5::LastWillProperties {
        delay_interval: Some(3600),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    let will = v5::LastWill::new(
        "fleet/van-1/telemetry",
        json_ping("van-1", 99),
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        Some(will_properties),
    );
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: client_id.to_owned(),
        clean_start: false,
        properties: Some(properties),
    };
    v5::Packet::Connect(connect, Some(will), Some(v5::Login::new("van-1", "tok-1")))
}

/// Connects to `addr` with `connect()` until the broker accepts (a place
/// under max_connections is free), within 10 s.
async fn wait_for_place(addr: SocketAddr, connect: impl Fn() -> v5::Packet) -> RawMqtt {
    let deadline = Instant::now() + T;
    loop {
        let mut c = RawMqtt::open(addr).await;
        c.send_v5(connect()).await;
        if accepted_v5(&c.next_v5(CLOSE).await) {
            return c;
        }
        assert!(Instant::now() < deadline, "no place became free");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_keys_are_reloaded_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, devices1) = (Ca::new("broker CA 1"), Ca::new("device CA 1"));
    let mut tls = write_tls_files(dir.path(), &ca1.server(), Some(&devices1));
    tls.reload_interval = Duration::from_millis(200);
    let mut p = tls_pipeline(dir.path(), tls).await;
    let (tls_v4, tls_v5) = (p.mqtt_tls.unwrap(), p.mqtt_v5_tls.unwrap());
    let old = connector(&ca1, Some(&devices1.device("van-1", &[])));
    tls_device_v4(tls_v4, &old, "van-1", None).await;

    // New broker certificate from a new CA, new device CA.
    let (ca2, devices2) = (Ca::new("broker CA 2"), Ca::new("device CA 2"));
    write_tls_files(dir.path(), &ca2.server(), Some(&devices2));
    let new = connector(&ca2, Some(&devices2.device("van-1", &[])));
    let deadline = Instant::now() + T;
    let mut c = loop {
        if let Ok(mut c) = open_tls(tls_v4, &new).await
            && accepted_v4(&c.connect_v4("van-1", None, None, true).await)
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificates were never used"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    publish_acked_v4(&mut c, "van-1", 1).await;
    tls_device_v5(tls_v5, &new, "van-1", None).await;
    // The old ones are gone: a client trusting only the old broker CA does
    // not connect, and devices of the old device CA are refused.
    assert!(open_tls(tls_v4, &old).await.is_err());
    let old_device_new_trust = connector(&ca2, Some(&devices1.device("van-1", &[])));
    assert!(refused_at_handshake(tls_v4, &old_device_new_trust).await);

    // A key that does not load keeps the current configuration.
    replace_file(&dir.path().join("server.key"), "not a key");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut c = tls_device_v4(tls_v4, &new, "van-1", None).await;
    publish_acked_v4(&mut c, "van-1", 2).await;
    let metrics = common::metric_values();
    assert!(
        metrics
            .counter("fleetpipe_mqtt_tls_reload_errors_total", &[])
            .is_some_and(|n| n != 0),
        "{metrics}"
    );
    p.stop().await;
    assert_eq!(p.telemetry().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_start_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("broker CA");
    let server = ca.server();
    let devices = Ca::new("device CA");
    let good = write_tls_files(dir.path(), &server, Some(&devices));
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    type Tweak<'a> = Box<dyn Fn(&mut MqttTlsConfig) + 'a>;
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "ingest.mqtt.tls.cert_file",
            Box::new(|c| c.cert_file = missing.clone()),
        ),
        (
            "ingest.mqtt.tls.key_file",
            Box::new(|c| c.key_file = missing.clone()),
        ),
        (
            "ingest.mqtt.tls.client_ca_file",
            Box::new(|c| c.client_ca_file = Some(missing.clone())),
        ),
        (
            "ingest.mqtt.tls.cert_file",
            Box::new(|c| c.cert_file = not_pem.clone()),
        ),
        (
            "ingest.mqtt.tls.key_file",
            Box::new(|c| c.key_file = not_pem.clone()),
        ),
        (
            "ingest.mqtt.tls.client_ca_file",
            Box::new(|c| c.client_ca_file = Some(not_pem.clone())),
        ),
        (
            "ingest.mqtt.tls.listen",
            Box::new(move |c| c.listen = Some(taken_addr)),
        ),
        (
            "ingest.mqtt.tls.listen_v5",
            Box::new(move |c| c.listen_v5 = Some(taken_addr)),
        ),
    ];
    for (key, tweak) in cases {
        let mut config = test_config(dir.path());
        let mut tls = good.clone();
        tweak(&mut tls);
        broker(&mut config).tls = Some(tls);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let err = match fleetpipe::Pipeline::start(&config, shutdown.clone()).await {
            Ok(_) => panic!("{key}: started"),
            Err(e) => e.to_string(),
        };
        shutdown.cancel();
        assert!(err.contains(key), "{key}: {err}");
    }
    // The same files load with the right keys.
    let mut config = test_config(dir.path());
    broker(&mut config).tls = Some(good);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let pipeline = fleetpipe::Pipeline::start(&config, shutdown.clone())
        .await
        .unwrap();
    shutdown.cancel();
    pipeline.wait().await.unwrap();
    drop(taken);
}
