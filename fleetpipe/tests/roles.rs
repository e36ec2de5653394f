//! The `gateway` and `writer` roles (`cluster.role`) against a Kafka
//! endpoint in a process of its own (Tansu 0.6.0): the gateway answers a
//! device only once the raw record is in Kafka, and the writer stores the
//! output topics and commits only what it stored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use fleetpipe::Pipeline;
use fleetpipe::cluster::Role;
use fleetpipe_kafka::test_support::Tansu;
use fleetpipe_kafka::{TopicSpec, client_config, ensure_topics, partition_for, producer_config};
use fleetpipe_model::RawRecord;
use fleetpipe_model::topic_record::{Decoded, Stream, decode};
use fleetpipe_sink::KafkaConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

fn tansu() -> Tansu {
    Tansu::start().unwrap_or_else(|e| panic!("{e}"))
}

/// `[sink.kafka]` on Tansu, producing with a short linger.
fn kafka(tansu: &Tansu) -> KafkaConfig {
    KafkaConfig {
        linger: Duration::from_millis(5),
        ..KafkaConfig::new(tansu.bootstrap())
    }
}

/// A gateway on Tansu with a 3-partition raw topic.
async fn gateway(tansu: &Tansu) -> TestPipeline {
    TestPipeline::start(|c| {
        c.sink.file = None;
        c.sink.kafka = Some(kafka(tansu));
        c.cluster.role = Role::Gateway;
        c.cluster.partitions = 3;
        c.cluster.replication_factor = 1;
    })
    .await
}

fn admin(tansu: &Tansu) -> ClientConfig {
    client_config(&tansu.bootstrap(), &BTreeMap::new()).unwrap()
}

/// Every record of `topic` (its `partitions` partitions) from the start,
/// until `count` arrived: (partition, key, value, headers).
type Read = (i32, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);
fn read_topic(tansu: &Tansu, topic: &str, partitions: i32, count: usize) -> Vec<Read> {
    let consumer: BaseConsumer = admin(tansu)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + T;
    let mut out = Vec::new();
    while out.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.partition(),
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_answers_once_the_raw_record_is_in_kafka() {
    let tansu = tansu();
    let mut p = gateway(&tansu).await;
    let http = reqwest::Client::new();
    for seq in 1..=5 {
        let r = http
            .post(p.url("/v1/pings"))
            .body(json_ping("van-7", seq))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            serde_json::json!({ "ack": seq })
        );
    }
    let bad = http
        .post(p.url("/v1/pings"))
        .body(json_ping("van-7", 6).replace("52.52", "91.5"))
        .send()
        .await
        .unwrap();
    assert!(bad.status().is_client_error(), "{}", bad.status());
    p.stop().await;

    // Answered means in the raw topic: every ping, in order, in the
    // vehicle's partition by the one partitioner; the refusal too.
    let records = read_topic(&tansu, "fleet.raw.v1", 3, 6);
    assert_eq!(records.len(), 6, "{records:?}");
    let partition = partition_for(b"van-7", 3).unwrap();
    let mut seqs = Vec::new();
    let mut dead = 0;
    for (part, key, value, headers) in &records {
        assert_eq!(*part, partition);
        assert_eq!(key.as_deref(), Some(&b"van-7"[..]));
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        match decode(Stream::Raw, key.as_deref(), value, &headers).unwrap() {
            Decoded::Raw(RawRecord::Ping(accepted)) => {
                assert_eq!(accepted.ping.vehicle_id.as_str(), "van-7");
                seqs.push(accepted.ping.seq.unwrap());
            }
            Decoded::Raw(RawRecord::DeadLetter(d)) => {
                assert_eq!(d.reason.as_str(), "coord_invalid");
                dead += 1;
            }
            other => panic!("not a raw record: {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(dead, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_a_raw_topic_with_another_partition_count() {
    let tansu = tansu();
    ensure_topics(&admin(&tansu), &[TopicSpec::new("fleet.raw.v1", 2, 1)], T)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.sink.file = None;
    config.sink.kafka = Some(kafka(&tansu));
    config.cluster.role = Role::Gateway;
    config.cluster.partitions = 3;
    config.cluster.replication_factor = 1;
    let e = Pipeline::start(&config, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fleet.raw.v1") && e.contains('2') && e.contains('3'),
        "{e}"
    );
}

/// The `all` role writes to Kafka (and to its own files); a `writer` reads
/// the output topics into files of its own: the same lines. A second
/// writer of the group finds nothing left (the first committed what it
/// stored); a record that does not decode becomes a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_stores_the_output_topics_and_commits_what_it_stored() {
    let tansu = tansu();
    // Topics as an operator creates them for the roles.
    let topics =
        ["fleet.telemetry.v1", "fleet.events.v1", "fleet.dlq.v1"].map(|t| TopicSpec::new(t, 3, 1));
    ensure_topics(&admin(&tansu), &topics, T).await.unwrap();
    let mut all = TestPipeline::start(|c| c.sink.kafka = Some(kafka(&tansu))).await;
    let http = reqwest::Client::new();
    for (vehicle, seq) in [("van-1", 1), ("van-2", 1), ("van-1", 2), ("van-3", 1)] {
        let r = http
            .post(all.url("/v1/pings"))
            .body(json_ping(vehicle, seq))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    all.stop().await;
    let written = all.telemetry();
    assert_eq!(written.len(), 4);

    let writer = |dir: &std::path::Path| {
        let mut c = test_config(dir);
        c.sink.kafka = Some(kafka(&tansu));
        c.cluster.role = Role::Writer;
        c.cluster.partitions = 3;
        c.cluster.group.commit_interval = Duration::from_millis(100);
        c
    };
    let first = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let pipeline = Pipeline::start(&writer(first.path()), shutdown.clone())
        .await
        .unwrap();
    let stored = wait_for(T, || {
        let lines = read_stream(first.path(), "telemetry");
        (lines.len() >= 4).then_some(lines)
    })
    .await
    .expect("the writer stored the telemetry");
    shutdown.cancel();
    pipeline.wait().await.unwrap();
    let key = |v: &Value| {
        (
            v["vehicle_id"].as_str().unwrap().to_owned(),
            v["seq"].as_u64(),
        )
    };
    let mut want: Vec<_> = written.iter().map(key).collect();
    let mut got: Vec<_> = stored.iter().map(key).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // The same lines: decoding and encoding again changed nothing.
    let mut w: Vec<String> = written.iter().map(Value::to_string).collect();
    let mut s: Vec<String> = stored.iter().map(Value::to_string).collect();
    w.sort();
    s.sort();
    assert_eq!(s, w);

    // A record that is no telemetry, then a second writer of the group.
    let producer: FutureProducer = producer_config(&tansu.bootstrap(), &BTreeMap::new())
        .unwrap()
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to("fleet.telemetry.v1")
                .key("van-9")
                .payload("not json"),
            T,
        )
        .await
        .unwrap();
    let second = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let pipeline = Pipeline::start(&writer(second.path()), shutdown.clone())
        .await
        .unwrap();
    let dead = wait_for(T, || {
        let lines = read_stream(second.path(), "dead_letter");
        (!lines.is_empty()).then_some(lines)
    })
    .await
    .expect("the undecodable record became a dead letter");
    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.cancel();
    pipeline.wait().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "decode_failed");
    assert!(
        dead[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("fleet.telemetry.v1/"),
        "{}",
        dead[0]
    );
    assert_eq!(
        read_stream(second.path(), "telemetry"),
        Vec::<Value>::new(),
        "nothing the first writer stored is read again"
    );
}

/// The Kafka endpoint frozen for 10 s (SIGSTOP: it answers nothing, as
/// behind a partition, and keeps what it has): a gateway's answer to a
/// device waits, neither "stored" nor lost, and once Kafka is back the
/// ping is in the raw topic exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_waits_out_a_kafka_outage_and_never_lies() {
    let mut tansu = tansu();
    let mut p = gateway(&tansu).await;
    let http = reqwest::Client::new();
    let post = |seq: u64| {
        http.post(p.url("/v1/pings"))
            .body(json_ping("van-5", seq))
            .send()
    };
    assert_eq!(post(1).await.unwrap().status(), 200);
    tansu.pause().unwrap();
    let during = tokio::spawn(post(2));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !during.is_finished(),
        "answered while Kafka was away: {:?}",
        during.await
    );
    tansu.resume().unwrap();
    let answer = tokio::time::timeout(T, during)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        serde_json::json!({ "ack": 2 })
    );
    p.stop().await;
    let seqs: Vec<u64> = read_topic(&tansu, "fleet.raw.v1", 3, 2)
        .iter()
        .map(|(_, _, value, _)| {
            serde_json::from_slice::<Value>(value).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2]);
}

/// A writer keeps going across a 10 s Kafka outage: what arrives after it
/// is stored, and the writer never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_rides_out_a_kafka_outage() {
    let mut tansu = tansu();
    let topics =
        ["fleet.telemetry.v1", "fleet.events.v1", "fleet.dlq.v1"].map(|t| TopicSpec::new(t, 3, 1));
    ensure_topics(&admin(&tansu), &topics, T).await.unwrap();
    let sink = kafka(&tansu);
    let send = |vehicles: &'static [&'static str]| {
        let tansu_kafka = sink.clone();
        async move {
            let mut all = TestPipeline::start(|c| c.sink.kafka = Some(tansu_kafka)).await;
            let http = reqwest::Client::new();
            for vehicle in vehicles {
                let r = http
                    .post(all.url("/v1/pings"))
                    .body(json_ping(vehicle, 1))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
            all.stop().await;
        }
    };
    send(&["van-1", "van-2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.sink.kafka = Some(kafka(&tansu));
    config.cluster.role = Role::Writer;
    config.cluster.partitions = 3;
    config.cluster.group.commit_interval = Duration::from_millis(100);
    // The outage outlasts the session: the member is expired and rejoins.
    // Tansu 0.6.0 then holds the rebalance until the rebalance timeout
    // (max_poll_interval) runs out for the expired member: with the 5 min
    // default, no assignment came back within a minute of the outage.
    config.cluster.group.session_timeout = Duration::from_secs(6);
    config.cluster.group.max_poll_interval = Duration::from_secs(12);
    config.cluster.group.revoke_timeout = Duration::from_secs(3);
    let shutdown = CancellationToken::new();
    let writer = Pipeline::start(&config, shutdown.clone()).await.unwrap();
    let path = dir.path().to_path_buf();
    let vehicles = |n: usize| {
        let path = path.clone();
        wait_for(T * 2, move || {
            let mut v: Vec<String> = read_stream(&path, "telemetry")
                .iter()
                .map(|l| l["vehicle_id"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v.dedup();
            (v.len() >= n).then_some(v)
        })
    };
    assert_eq!(vehicles(2).await.unwrap(), ["van-1", "van-2"]);
    tansu.pause().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    tansu.resume().unwrap();
    send(&["van-3", "van-4"]).await;
    assert_eq!(
        vehicles(4).await.expect("stored after the outage"),
        ["van-1", "van-2", "van-3", "van-4"]
    );
    shutdown.cancel();
    writer.wait().await.unwrap();
}

/// A writer creates the topics it reads when they are missing, with
/// `cluster.partitions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_creates_its_topics_when_missing() {
    let tansu = tansu();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.sink.kafka = Some(kafka(&tansu));
    config.cluster.role = Role::Writer;
    config.cluster.partitions = 4;
    config.cluster.replication_factor = 1;
    let shutdown = CancellationToken::new();
    let writer = Pipeline::start(&config, shutdown.clone()).await.unwrap();
    shutdown.cancel();
    writer.wait().await.unwrap();
    let topics =
        ["fleet.telemetry.v1", "fleet.events.v1", "fleet.dlq.v1"].map(|t| TopicSpec::new(t, 4, 1));
    for outcome in ensure_topics(&admin(&tansu), &topics, T).await.unwrap() {
        assert_eq!(
            (outcome.status, outcome.partitions),
            (fleetpipe_kafka::TopicStatus::AlreadyPresent, 4),
            "{}",
            outcome.name
        );
    }
}

/// An enrich member keeps going across a 10 s Kafka outage (SIGSTOP: no
/// answer, nothing lost): pings the gateway took before and after it are
/// each enriched into the telemetry topic exactly once, and the member
/// never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrich_member_rides_out_a_kafka_outage() {
    let mut tansu = tansu();
    let mut gateway = gateway(&tansu).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.sink.file = None;
    config.sink.kafka = Some(kafka(&tansu));
    config.cluster.role = Role::Enrich;
    config.cluster.partitions = 3;
    config.cluster.replication_factor = 1;
    config.cluster.changelog_interval = Duration::from_millis(100);
    config.cluster.restore_timeout = Duration::from_secs(10);
    // A session that outlasts the outage: the member keeps its partitions
    // and their state. (The writer's outage test covers a member whose
    // session expired and who rejoined; an enrich member expired on Tansu
    // 0.6.0 was not seen rejoining within 90 s after the outage.)
    config.cluster.group.session_timeout = Duration::from_secs(20);
    config.cluster.group.max_poll_interval = Duration::from_secs(30);
    config.cluster.group.revoke_timeout = Duration::from_secs(5);
    config.cluster.group.commit_interval = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let enrich = Pipeline::start(&config, shutdown.clone()).await.unwrap();
    let http = reqwest::Client::new();
    let post = |vehicle: &'static str| {
        let url = gateway.url("/v1/pings");
        let http = http.clone();
        async move {
            let r = http
                .post(url)
                .body(json_ping(vehicle, 1))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    post("van-1").await;
    post("van-2").await;
    let telemetry = |tansu: &Tansu, n: usize| {
        let mut vehicles: Vec<String> = read_topic(tansu, "fleet.telemetry.v1", 3, n)
            .iter()
            .map(|(_, key, _, _)| String::from_utf8(key.clone().unwrap()).unwrap())
            .collect();
        vehicles.sort();
        vehicles
    };
    assert_eq!(telemetry(&tansu, 2), ["van-1", "van-2"]);
    tansu.pause().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    tansu.resume().unwrap();
    post("van-3").await;
    post("van-4").await;
    // The member may take a rebalance to come back: wait for the four...
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen = telemetry(&tansu, 4);
        if seen.len() == 4 {
            break;
        }
    }
    assert_eq!(seen, ["van-1", "van-2", "van-3", "van-4"]);
    // ...then read past them: a ping enriched twice would show.
    assert_eq!(telemetry(&tansu, 5), ["van-1", "van-2", "van-3", "van-4"]);
    shutdown.cancel();
    enrich.wait().await.unwrap();
    gateway.stop().await;
}
