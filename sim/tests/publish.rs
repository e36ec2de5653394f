//! The publisher against real servers on loopback: the Mosquitto broker at
//! 127.0.0.1:1883 (which must be running: these tests do not skip), and a
//! small WebSocket server that answers like fleetpipe's `/v1/ws`.
//!
//! Each MQTT test publishes under its own topic prefix and subscribes to it
//! first, so it counts exactly what it sent even when tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleetpipe_ingest::codec::{self, VehicleScope};
use fleetpipe_ingest::validate::{ValidationConfig, Validator};
use fleetpipe_sim::{
    AckMode, Encoding, MqttConfig, Publisher, PublisherConfig, Rate, SimConfig, Stats, Transport,
    WsConfig,
};
use futures_util::{SinkExt as _, StreamExt as _};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const BROKER: &str = "127.0.0.1:1883";

fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "simtest-{name}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What a subscriber received: (topic, payload).
type Inbox = Arc<Mutex<Vec<(String, Bytes)>>>;

/// Subscribes to `filter` on Mosquitto and collects every publish; with
/// `ack_prefix`, also answers each telemetry message with fleetpipe's
/// `{"ack":N}` on `{ack_prefix}/{vehicle}/ack`, as the embedded broker does.
async fn subscriber(filter: String, ack_prefix: Option<String>) -> (Inbox, CancellationToken) {
    let mut opts = MqttOptions::new(unique("sub"), "127.0.0.1", 1883);
    opts.set_max_packet_size(4 << 20, 4 << 20)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(opts, 1024);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let inbox: Inbox = Arc::default();
    let stop = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (inbox2, stop2) = (inbox.clone(), stop.clone());
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            let ev = tokio::select! {
                () = stop2.cancelled() => break,
                ev = el.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(prefix) = &ack_prefix {
                        let vehicle = p.topic.split('/').nth(1).unwrap().to_owned();
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        let seq = match &v {
                            serde_json::Value::Array(a) => {
                                a.iter().filter_map(|x| x["seq"].as_u64()).max()
                            }
                            one => one["seq"].as_u64(),
                        }
                        .unwrap();
                        let c = client.clone();
                        let topic = format!("{prefix}/{vehicle}/ack");
                        tokio::spawn(async move {
                            c.publish(topic, QoS::AtLeastOnce, false, format!("{{\"ack\":{seq}}}"))
                                .await
                                .unwrap();
                        });
                    }
                    inbox2
                        .lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.clone()));
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber lost Mosquitto at {BROKER}: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("SUBACK from Mosquitto")
        .unwrap();
    (inbox, stop)
}

/// Decodes every received message with fleetpipe's codec and validator;
/// returns the number of (valid) pings.
fn valid_pings(inbox: &Inbox, encoding: Encoding) -> usize {
    let validator = Validator::new(ValidationConfig::default());
    let now = now_ms();
    let mut n = 0;
    for (topic, payload) in inbox.lock().unwrap().iter() {
        let vehicle = topic.split('/').nth(1).unwrap();
        let enc = match encoding {
            Encoding::Json => codec::Encoding::Json,
            Encoding::Protobuf => codec::Encoding::Protobuf,
        };
        let decoded =
            codec::decode_message(payload, enc, VehicleScope::Topic(vehicle), &validator, now)
                .unwrap_or_else(|r| panic!("{topic}: refused: {r}"));
        for p in &decoded {
            let p = p
                .as_ref()
                .unwrap_or_else(|r| panic!("{topic}: ping refused: {r}"));
            assert!(p.ts_ms <= now, "ping from the future");
        }
        n += decoded.len();
    }
    n
}

async fn wait_for_pings(inbox: &Inbox, encoding: Encoding, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = valid_pings(inbox, encoding);
        if n >= want || Instant::now() > deadline {
            // A moment more, to catch duplicates or extras.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return valid_pings(inbox, encoding);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mqtt(prefix: &str, ack: AckMode) -> Transport {
    Transport::Mqtt(MqttConfig {
        addr: BROKER.to_owned(),
        qos: 1,
        connections: 3,
        topic_prefix: prefix.to_owned(),
        ack,
        inflight: 20,
        ..MqttConfig::default()
    })
}

fn assert_all_acked(s: &Stats, pings: u64) {
    assert!(s.finished);
    assert_eq!(s.generated_pings, pings, "{s:?}");
    assert_eq!(s.sent_pings, pings, "{s:?}");
    assert_eq!(s.acked_pings, pings, "{s:?}");
    assert_eq!(s.acked_messages, s.sent_messages, "{s:?}");
    assert_eq!((s.failed_messages, s.rejected_pings), (0, 0), "{s:?}");
    assert_eq!(s.latency.count, s.acked_messages);
    assert!(s.latency.max > Duration::ZERO && s.latency.p50 <= s.latency.max);
    assert_eq!(s.open_connections, 0);
}

#[tokio::test]
async fn mqtt_qos1_json_every_ping_arrives_and_is_acked() {
    let prefix = unique("json");
    let (inbox, stop) = subscriber(format!("{prefix}/+/telemetry"), None).await;
    let publisher = Publisher::new(PublisherConfig {
        sim: SimConfig {
            vehicles: 20,
            ..SimConfig::default()
        },
        transport: mqtt(&prefix, AckMode::Puback),
        rate: Rate::Max,
        max_pings: Some(600),
        ..PublisherConfig::default()
    })
    .unwrap();
    let stats = publisher.run(CancellationToken::new()).await.unwrap();
    assert_all_acked(&stats, 600);
    assert_eq!(wait_for_pings(&inbox, Encoding::Json, 600).await, 600);
    stop.cancel();
}

#[tokio::test]
async fn mqtt_protobuf_batches_arrive_on_the_pb_topic() {
    let prefix = unique("pb");
    let (inbox, stop) = subscriber(format!("{prefix}/+/telemetry/pb"), None).await;
    let publisher = Publisher::new(PublisherConfig {
        sim: SimConfig {
            vehicles: 10,
            pings_per_message: 5,
            ..SimConfig::default()
        },
        transport: mqtt(&prefix, AckMode::Puback),
        encoding: Encoding::Protobuf,
        rate: Rate::Max,
        max_pings: Some(500),
        ..PublisherConfig::default()
    })
    .unwrap();
    let stats = publisher.run(CancellationToken::new()).await.unwrap();
    assert_all_acked(&stats, 500);
    assert!(stats.sent_messages <= 110, "batches of 5: {stats:?}");
    assert_eq!(wait_for_pings(&inbox, Encoding::Protobuf, 500).await, 500);
    stop.cancel();
}

#[tokio::test]
async fn mqtt_ack_topic_measures_durable_acknowledgements() {
    let prefix = unique("ack");
    let (inbox, stop) = subscriber(format!("{prefix}/+/telemetry"), Some(prefix.clone())).await;
    let publisher = Publisher::new(PublisherConfig {
        sim: SimConfig {
            vehicles: 12,
            ..SimConfig::default()
        },
        transport: mqtt(&prefix, AckMode::AckTopic),
        rate: Rate::Max,
        max_pings: Some(400),
        ..PublisherConfig::default()
    })
    .unwrap();
    let stats = publisher.run(CancellationToken::new()).await.unwrap();
    assert_all_acked(&stats, 400);
    assert_eq!(wait_for_pings(&inbox, Encoding::Json, 400).await, 400);
    stop.cancel();
}

#[tokio::test]
async fn paced_rate_is_kept_and_stats_are_live() {
    let prefix = unique("paced");
    let publisher = Publisher::new(PublisherConfig {
        sim: SimConfig {
            vehicles: 200,
            ..SimConfig::default()
        },
        transport: mqtt(&prefix, AckMode::Puback),
        rate: Rate::PerSecond(2_000.0),
        duration: Some(Duration::from_millis(1_500)),
        ..PublisherConfig::default()
    })
    .unwrap();
    let live = publisher.stats();
    let run = tokio::spawn(publisher.run(CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mid = live.snapshot();
    assert!(!mid.finished && mid.sent_pings > 0, "{mid:?}");
    let stats = run.await.unwrap().unwrap();
    // 2000/s for 1.5 s, within scheduling slack.
    assert!((2_400..=3_300).contains(&stats.sent_pings), "{stats:?}");
    assert_eq!(stats.acked_pings, stats.sent_pings);
    // The simulation ran ahead of the clock, but no ping is in the future.
    assert!(stats.sim_time_ms <= now_ms());
}

#[tokio::test]
async fn a_running_publisher_follows_rate_changes() {
    let prefix = unique("ramp");
    let publisher = Publisher::new(PublisherConfig {
        sim: SimConfig {
            vehicles: 200,
            ..SimConfig::default()
        },
        transport: mqtt(&prefix, AckMode::Puback),
        rate: Rate::PerSecond(500.0),
        ..PublisherConfig::default()
    })
    .unwrap();
    let live = publisher.stats();
    let control = publisher.rate_control();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(publisher.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let slow = live.snapshot().sent_pings;
    control.set(Rate::PerSecond(4_000.0));
    assert_eq!(control.get(), Rate::PerSecond(4_000.0));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let fast = live.snapshot().sent_pings - slow;
    control.set(Rate::PerSecond(250.0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = live.snapshot().sent_pings;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let slower = live.snapshot().sent_pings - before;
    cancel.cancel();
    let stats = run.await.unwrap().unwrap();
    // 500/s, then 4000/s, then 250/s, within scheduling slack.
    assert!((300..=800).contains(&slow), "first second: {slow}");
    assert!(
        (3_000..=5_000).contains(&fast),
        "after raising to 4000/s: {fast}"
    );
    assert!(
        (100..=450).contains(&slower),
        "after lowering to 250/s: {slower}"
    );
    assert!(stats.finished);
}

#[tokio::test]
async fn cancellation_stops_an_endless_run() {
    let prefix = unique("cancel");
    let publisher = Publisher::new(PublisherConfig {
        sim: SimConfig {
            vehicles: 50,
            ..SimConfig::default()
        },
        transport: mqtt(&prefix, AckMode::Puback),
        rate: Rate::Realtime,
        ..PublisherConfig::default()
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(publisher.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let t = Instant::now();
    cancel.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("run ends promptly")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(stats.finished && stats.sent_pings > 0, "{stats:?}");
    assert_eq!(stats.acked_pings + stats.failed_pings, stats.sent_pings);
}

/// A stand-in for fleetpipe's `/v1/ws`: one `{"ack":N}` per frame (N = the
/// frame's highest seq), or a rejection of every ping of a frame whose
/// first seq is a multiple of 10.
async fn ws_server() -> (String, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicU32::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                    let pings = match v {
                        serde_json::Value::Array(a) => a,
                        one => vec![one],
                    };
                    let seqs: Vec<u64> = pings.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
                    let answer = if seqs[0].is_multiple_of(10) {
                        let rejected: Vec<_> = (0..seqs.len())
                            .map(|i| serde_json::json!({"index": i, "code": "coord_invalid", "message": "test"}))
                            .collect();
                        serde_json::json!({"error": {"code": "coord_invalid", "message": "test"}, "rejected": rejected})
                    } else {
                        serde_json::json!({"ack": seqs.iter().max()})
                    };
                    if ws.send(Message::text(answer.to_string())).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn websocket_one_connection_per_vehicle_answers_counted() {
    let (url, connections) = ws_server().await;
    let publisher = Publisher::new(PublisherConfig {
        sim: SimConfig {
            vehicles: 8,
            ..SimConfig::default()
        },
        transport: Transport::Ws(WsConfig {
            url,
            max_connections: 8,
            inflight: 4,
        }),
        rate: Rate::Max,
        max_pings: Some(300),
        ..PublisherConfig::default()
    })
    .unwrap();
    let s = publisher.run(CancellationToken::new()).await.unwrap();
    assert_eq!(connections.load(Ordering::Relaxed), 8);
    assert_eq!(s.sent_pings, 300, "{s:?}");
    assert_eq!(s.acked_pings + s.failed_pings, 300, "{s:?}");
    assert!(
        s.failed_messages > 0 && s.rejected_pings == s.failed_pings,
        "{s:?}"
    );
    assert_eq!(s.acked_messages + s.failed_messages, s.sent_messages);
    assert_eq!(s.latency.count, s.acked_messages);
    assert_eq!(s.open_connections, 0);
}

#[test]
fn websocket_runs_are_capped_by_connections() {
    let err = Publisher::new(PublisherConfig {
        sim: SimConfig {
            vehicles: 11,
            ..SimConfig::default()
        },
        transport: Transport::Ws(WsConfig {
            max_connections: 10,
            ..WsConfig::default()
        }),
        ..PublisherConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("vehicles"), "{err}");
}
