//! Tests of the Kafka sink: records in and Kafka records out through a real
//! Kafka protocol endpoint (librdkafka's mock cluster), read back with an
//! rdkafka consumer and with kcat. The pure encoding is tested on fixtures
//! where it is defined, the model's `topic_record`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleetpipe_model::fixtures::*;
use fleetpipe_model::topic_record;
use fleetpipe_model::{
    Ack, AckStatus, BatchAck, Enrichment, EventType, SCHEMA_VERSION, SinkRecord, TelemetryRecord,
};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message as _, Timestamp};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::service::{self, EmbeddedCluster};
use super::sink::{ErrorKind, is_retriable};
use super::{KafkaConfig, KafkaError, KafkaFormat, KafkaSink};

/// Upper bound for anything a test awaits, so a bug hangs no test run.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a send into the sink's input must stall to count as blocked.
const BLOCKED: Duration = Duration::from_millis(500);

// ---- fixtures -------------------------------------------------------------

/// An embedded-mode configuration that reconnects quickly after an outage
/// (librdkafka's default backoff grows to 10 s).
fn embedded_config() -> KafkaConfig {
    let mut config = KafkaConfig::new("embedded");
    config
        .librdkafka
        .insert("reconnect.backoff.max.ms".to_owned(), "250".to_owned());
    config
}

/// Starts a sink on `config` fed by a queue of `capacity`; returns the
/// cluster handle too, so a test can take brokers down and read after the
/// sink is gone.
async fn start(
    config: KafkaConfig,
    capacity: usize,
) -> (
    mpsc::Sender<SinkRecord>,
    JoinHandle<Result<(), KafkaError>>,
    Arc<EmbeddedCluster>,
    String,
) {
    let sink = KafkaSink::new(config).await.expect("sink starts");
    let cluster = sink.embedded_cluster().expect("embedded mode");
    let bootstrap = sink.bootstrap_servers();
    assert_eq!(bootstrap, cluster.bootstrap_servers());
    let (tx, rx) = mpsc::channel(capacity);
    (tx, tokio::spawn(sink.run(rx)), cluster, bootstrap)
}

async fn send(tx: &mpsc::Sender<SinkRecord>, record: SinkRecord) {
    tx.send(record).await.expect("sink is running");
}

/// Closes the input and waits for the sink to drain and return.
async fn finish(tx: mpsc::Sender<SinkRecord>, run: JoinHandle<Result<(), KafkaError>>) {
    drop(tx);
    let result = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("sink returns once its input is closed")
        .expect("sink task did not panic");
    assert!(result.is_ok(), "sink failed: {result:?}");
}

async fn wait(batch: BatchAck) -> AckStatus {
    tokio::time::timeout(PATIENCE, batch.wait())
        .await
        .expect("batch settles")
}

async fn brokers(cluster: &EmbeddedCluster, up: bool) {
    cluster
        .set_brokers_up(up)
        .await
        .expect("mock cluster obeys");
}

/// One record read back from the cluster.
#[derive(Debug)]
struct Read {
    partition: i32,
    key: Option<String>,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
    timestamp: Timestamp,
}

impl Read {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.value).expect("JSON value")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every record of `topic`, each partition in offset order, read with a
/// plain rdkafka consumer (unique group, from the earliest offset).
async fn read_topic(bootstrap: &str, topic: &str) -> Vec<Read> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic_blocking(&bootstrap, &topic))
        .await
        .expect("reader did not panic")
}

fn read_topic_blocking(bootstrap: &str, topic: &str) -> Vec<Read> {
    static GROUP: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let group = format!(
        "fleetpipe-test-{nanos}-{}",
        GROUP.fetch_add(1, Ordering::Relaxed)
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), PATIENCE)
        .expect("metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    assert!(!partitions.is_empty(), "{topic} has no partitions");
    let mut expected = 0;
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, PATIENCE)
            .expect("watermarks");
        expected += high - low;
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut records = Vec::new();
    while (records.len() as i64) < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of {expected} records of {topic}",
            records.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("consumer error");
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Read {
            partition: message.partition(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp: message.timestamp(),
        });
    }
    records
}

/// Checks that every key lives in one partition and that its `seq`s are
/// exactly `0..per_key` in order; returns the number of keys.
fn assert_per_vehicle_order(records: &[Read], per_key: u64) -> usize {
    let mut seqs: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    for r in records {
        let key = r.key.as_deref().expect("telemetry has a key");
        let value = r.json();
        assert_eq!(value["vehicle_id"], key, "key is the vehicle id");
        let p = *partition_of.entry(key).or_insert(r.partition);
        assert_eq!(p, r.partition, "{key} is in two partitions");
        seqs.entry(key)
            .or_default()
            .push(value["seq"].as_u64().expect("seq"));
    }
    for (key, seqs) in &seqs {
        assert_eq!(
            *seqs,
            (0..per_key).collect::<Vec<_>>(),
            "{key}: lost, duplicated or reordered"
        );
    }
    seqs.len()
}

// ---- errors -------------------------------------------------------------------

#[test]
fn delivery_errors_are_told_apart() {
    use RDKafkaErrorCode as C;
    for code in [
        C::QueueFull,
        C::MessageTimedOut,
        C::RequestTimedOut,
        C::BrokerTransportFailure,
        C::AllBrokersDown,
        C::NotLeaderForPartition,
        C::NotEnoughReplicas,
    ] {
        assert!(is_retriable(code), "{code:?}");
        assert_eq!(
            ErrorKind::of(&RdKafkaError::MessageProduction(code)),
            ErrorKind::Retriable
        );
    }
    for code in [
        C::MessageSizeTooLarge,
        C::TopicAuthorizationFailed,
        C::ClusterAuthorizationFailed,
        C::Fatal,
        C::InvalidRecord,
        C::UnknownTopic,
        C::InvalidProducerEpoch,
    ] {
        assert!(!is_retriable(code), "{code:?}");
        assert_eq!(
            ErrorKind::of(&RdKafkaError::MessageProduction(code)),
            ErrorKind::Fatal
        );
    }
    assert_eq!(ErrorKind::of(&RdKafkaError::Canceled), ErrorKind::Fatal);
}

// ---- configuration ---------------------------------------------------------

#[test]
fn config_defaults_match_the_documentation() {
    let config: KafkaConfig =
        serde_json::from_str(r#"{"brokers": "k1:9092,k2:9092"}"#).expect("parses");
    assert_eq!(config, KafkaConfig::new("k1:9092,k2:9092"));
    assert_eq!(config.telemetry_topic, "fleet.telemetry.v1");
    assert_eq!(config.events_topic, "fleet.events.v1");
    assert_eq!(config.dlq_topic, "fleet.dlq.v1");
    assert_eq!(config.compression, "lz4");
    assert_eq!(config.linger, Duration::from_millis(25));
    assert_eq!(config.batch_bytes, 1024 * 1024);
    assert_eq!(config.format, KafkaFormat::Json);
    assert_eq!(config.embedded_partitions, 6);
    assert_eq!(config.max_in_flight, 100_000);
    assert!(config.librdkafka.is_empty());
    assert!(!config.is_embedded());
    assert!(KafkaConfig::new("embedded").is_embedded());
    config.validate().expect("defaults are valid");
}

#[test]
fn config_reads_every_key() {
    let config: KafkaConfig = serde_json::from_str(
        r#"{"brokers": "embedded", "telemetry_topic": "t", "events_topic": "e",
            "dlq_topic": "d", "compression": "zstd", "linger": "20ms",
            "batch_bytes": 65536, "format": "protobuf", "embedded_partitions": 2,
            "max_in_flight": 10,
            "librdkafka": {"security.protocol": "SASL_SSL", "acks": "1"}}"#,
    )
    .expect("parses");
    assert_eq!(
        config,
        KafkaConfig {
            brokers: "embedded".to_owned(),
            telemetry_topic: "t".to_owned(),
            events_topic: "e".to_owned(),
            dlq_topic: "d".to_owned(),
            compression: "zstd".to_owned(),
            linger: Duration::from_millis(20),
            batch_bytes: 65536,
            format: KafkaFormat::Protobuf,
            embedded_partitions: 2,
            max_in_flight: 10,
            librdkafka: BTreeMap::from([
                ("acks".to_owned(), "1".to_owned()),
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ]),
        }
    );
}

#[test]
fn config_rejects_unknown_keys_and_formats_and_requires_brokers() {
    let err = serde_json::from_str::<KafkaConfig>(r#"{"brokers": "b", "topic": "x"}"#)
        .expect_err("unknown key");
    assert!(err.to_string().contains("unknown field `topic`"), "{err}");
    let err = serde_json::from_str::<KafkaConfig>(r#"{"brokers": "b", "format": "avro"}"#)
        .expect_err("unknown format");
    assert!(err.to_string().contains("unknown variant `avro`"), "{err}");
    let err = serde_json::from_str::<KafkaConfig>(r#"{"linger": "5ms"}"#).expect_err("no brokers");
    assert!(err.to_string().contains("missing field `brokers`"), "{err}");
}

/// Makes one setting of a valid configuration invalid.
type Breaker = fn(&mut KafkaConfig);

#[test]
fn invalid_settings_are_rejected_naming_the_key() {
    let cases: [(&str, Breaker); 10] = [
        ("brokers", |c| c.brokers = " ".to_owned()),
        ("compression", |c| c.compression = "brotli".to_owned()),
        ("telemetry_topic", |c| c.telemetry_topic = String::new()),
        ("dlq_topic", |c| c.dlq_topic = "fleet/dlq".to_owned()),
        ("events_topic", |c| c.events_topic = "..".to_owned()),
        ("batch_bytes", |c| c.batch_bytes = 0),
        ("max_in_flight", |c| c.max_in_flight = 0),
        ("max_in_flight", |c| c.max_in_flight = i32::MAX as usize + 1),
        ("embedded_partitions", |c| {
            c.brokers = "embedded".to_owned();
            c.embedded_partitions = 0;
        }),
        ("librdkafka", |c| {
            c.librdkafka
                .insert("delivery.report.only.error".to_owned(), "true".to_owned());
        }),
    ];
    for (key, break_it) in cases {
        let mut config = KafkaConfig::new("k:9092");
        break_it(&mut config);
        let err = config.validate().expect_err(key);
        assert!(
            matches!(&err, KafkaError::Config { key: k, .. } if k == key),
            "{key}: {err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!("sink.kafka.{key}: ")),
            "{err}"
        );
    }
    let mut linger = KafkaConfig::new("k:9092");
    linger.linger = Duration::from_secs(3600);
    assert!(linger.validate().is_err());
}

#[test]
fn producer_options_are_safe_and_the_pass_through_map_wins() {
    let mut config = KafkaConfig::new("k1:9092");
    config.linger = Duration::from_micros(2500);
    let options = service::producer_config(&config, "k1:9092");
    for (key, value) in [
        ("bootstrap.servers", "k1:9092"),
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("compression.type", "lz4"),
        ("linger.ms", "2.5"),
        ("batch.size", "1048576"),
        ("message.timeout.ms", "300000"),
    ] {
        assert_eq!(options.get(key), Some(value), "{key}");
    }
    config
        .librdkafka
        .insert("compression.type".to_owned(), "zstd".to_owned());
    config
        .librdkafka
        .insert("security.protocol".to_owned(), "SASL_SSL".to_owned());
    let options = service::producer_config(&config, "k1:9092");
    assert_eq!(options.get("compression.type"), Some("zstd"));
    assert_eq!(options.get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(options.get("enable.idempotence"), Some("true"));
}

#[tokio::test]
async fn an_unknown_librdkafka_option_fails_new_naming_it() {
    let mut config = KafkaConfig::new("127.0.0.1:1");
    config
        .librdkafka
        .insert("no.such.option".to_owned(), "1".to_owned());
    let err = KafkaSink::new(config)
        .await
        .expect_err("librdkafka refuses");
    assert!(matches!(err, KafkaError::Producer(_)), "{err:?}");
    assert!(err.to_string().contains("no.such.option"), "{err}");
}

#[tokio::test]
async fn external_brokers_are_used_as_configured() {
    let sink = KafkaSink::new(KafkaConfig::new("127.0.0.1:1"))
        .await
        .expect("creating a producer does not connect");
    assert_eq!(sink.bootstrap_servers(), "127.0.0.1:1");
    assert!(sink.embedded_cluster().is_none());
}

// ---- through the Kafka protocol ------------------------------------------

/// 50 vehicles × 100 pings, in round-robin order.
const VEHICLES: usize = 50;
const PER_VEHICLE: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_delivers_every_record_keyed_and_in_order() {
    let (tx, run, cluster, bootstrap) = start(embedded_config(), 256).await;
    let batch = BatchAck::new();
    for seq in 0..PER_VEHICLE {
        for v in 0..VEHICLES {
            send(&tx, telemetry(v, seq, batch.ack())).await;
        }
        if seq % 2 == 0 {
            let n = seq / 2;
            let vehicle_id = (n % 2 == 0).then(|| vehicle(n as usize));
            send(&tx, dead_letter(n, vehicle_id, batch.ack())).await;
        }
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    let records = read_topic(&bootstrap, "fleet.telemetry.v1").await;
    assert_eq!(records.len(), VEHICLES * PER_VEHICLE as usize);
    assert_eq!(assert_per_vehicle_order(&records, PER_VEHICLE), VEHICLES);
    let partitions: HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert!(partitions.len() > 1, "keys spread over partitions");
    let first = &records[0];
    assert_eq!(first.header("schema_version"), Some("1"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.timestamp, Timestamp::CreateTime(T0_MS + 500));
    let value = first.json();
    assert_eq!(value["source"], "mqtt");
    assert_eq!(value["h3"]["7"], "871f1d489fffffff");

    let dead = read_topic(&bootstrap, "fleet.dlq.v1").await;
    assert_eq!(dead.len(), 50);
    let mut details = HashSet::new();
    for r in &dead {
        assert_eq!(r.value, RAW, "dead letter bytes changed");
        assert_eq!(r.header("reason"), Some("coord_invalid"));
        assert_eq!(r.header("source"), Some("mqtt"));
        assert_eq!(r.header("received_at"), Some("2026-11-23T08:00:00.500Z"));
        assert_eq!(r.header("schema_version"), Some("1"));
        assert_eq!(r.key.as_deref(), r.header("vehicle_id"));
        details.insert(r.header("detail").expect("detail").to_owned());
    }
    assert_eq!(details.len(), 50);
    assert_eq!(dead.iter().filter(|r| r.key.is_none()).count(), 25);

    // The events topic exists (created with the others) and is empty.
    assert!(read_topic(&bootstrap, "fleet.events.v1").await.is_empty());
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_format_round_trips_through_kafka() {
    let mut config = embedded_config();
    config.format = KafkaFormat::Protobuf;
    config.compression = "zstd".to_owned();
    let (tx, run, _cluster, bootstrap) = start(config, 16).await;
    let (full, prost_hex) = full_ping();
    let batch = BatchAck::new();
    send(
        &tx,
        SinkRecord::Telemetry(TelemetryRecord {
            schema_version: SCHEMA_VERSION,
            ping: full,
            origin: origin(),
            h3: Vec::new(),
            enrichment: Enrichment::default(),
            ack: batch.ack(),
        }),
    )
    .await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;
    let records = read_topic(&bootstrap, "fleet.telemetry.v1").await;
    assert_eq!(records.len(), 1);
    assert_eq!(hex(&records[0].value), prost_hex);
    assert_eq!(
        records[0].header("content-type"),
        Some("application/x-protobuf")
    );
}

/// Vehicle of [`event`] number `n` in the events tests.
fn event_vehicle(n: u64) -> usize {
    (n % 4) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_their_topic_as_cloudevents_and_a_replay_repeats_them() {
    // Every type twice, over four vehicles.
    const EVENTS: u64 = 2 * EventType::ALL.len() as u64;
    const TIMER_EVENT: u64 = 999;
    let mut config = embedded_config();
    // Events are CloudEvents JSON even when telemetry is Protobuf.
    config.format = KafkaFormat::Protobuf;
    config.events_topic = "fp.test.events".to_owned();
    let (tx, run, _cluster, bootstrap) = start(config, 64).await;
    let before_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);

    // Queued before anything is delivered: the acks wait for the reports.
    let batch = BatchAck::new();
    for n in 0..EVENTS {
        send(&tx, event(event_vehicle(n), n, batch.ack())).await;
        send(&tx, telemetry(0, n, batch.ack())).await;
    }
    // A timer event: no sender waits for it; it is produced all the same.
    send(&tx, event(9, TIMER_EVENT, Ack::none())).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    // A replay (a restart, a redelivery): the same events again.
    let replay = BatchAck::new();
    for n in 0..EVENTS {
        send(&tx, event(event_vehicle(n), n, replay.ack())).await;
    }
    assert_eq!(wait(replay).await, AckStatus::Delivered);
    finish(tx, run).await;
    let after_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);

    let read = read_topic(&bootstrap, "fp.test.events").await;
    // At least once: the replay is in the topic again, with the same ids,
    // which consumers deduplicate on.
    assert_eq!(read.len() as u64, 2 * EVENTS + 1);
    let mut copies: HashMap<String, usize> = HashMap::new();
    let mut per_key: HashMap<String, (i32, Vec<u64>)> = HashMap::new();
    for r in &read {
        let value = r.json();
        let n = value["data"]["n"].as_u64().expect("data.n");
        let v = if n == TIMER_EVENT {
            9
        } else {
            event_vehicle(n)
        };
        let SinkRecord::Event(sent) = event(v, n, Ack::none()) else {
            unreachable!()
        };
        assert_eq!(r.value, sent.to_json().into_bytes(), "value of event {n}");
        assert_eq!(r.key.as_deref(), Some(vehicle(v).as_str()));
        assert_eq!(
            r.header("content-type"),
            Some("application/cloudevents+json")
        );
        assert_eq!(r.header("ce_id"), Some(sent.id.as_str()));
        assert_eq!(r.header("ce_type"), Some(sent.event_type.as_str()));
        assert_eq!(r.headers.len(), 3, "{:?}", r.headers);
        match r.timestamp {
            Timestamp::CreateTime(t) => assert!(
                (before_ms - 1000..=after_ms + 1000).contains(&t),
                "produce time expected, got {t}"
            ),
            other => panic!("timestamp {other:?}"),
        }
        *copies.entry(sent.id.clone()).or_default() += 1;
        let key = r.key.clone().unwrap_or_default();
        let entry = per_key.entry(key).or_insert((r.partition, Vec::new()));
        assert_eq!(entry.0, r.partition, "a vehicle's events in two partitions");
        entry.1.push(n);
    }
    assert_eq!(copies.len() as u64, EVENTS + 1, "distinct ids");
    assert_eq!(copies.values().filter(|c| **c == 2).count() as u64, EVENTS);
    // A vehicle's events keep their order: the first pass, then the replay.
    for v in 0..4 {
        let ns: Vec<u64> = (0..EVENTS).filter(|n| event_vehicle(*n) == v).collect();
        let expected: Vec<u64> = ns.iter().chain(&ns).copied().collect();
        assert_eq!(per_key[vehicle(v).as_str()].1, expected, "vehicle {v}");
    }

    // Telemetry went to its own topic, in its own format; nothing to the
    // default events topic or the dead letters.
    let telemetry = read_topic(&bootstrap, "fleet.telemetry.v1").await;
    assert_eq!(telemetry.len() as u64, EVENTS);
    assert!(
        telemetry
            .iter()
            .all(|r| r.header("content-type") == Some("application/x-protobuf"))
    );
    assert!(read_topic(&bootstrap, "fleet.dlq.v1").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_telemetry_enrichment_round_trips_through_kafka() {
    let (tx, run, _cluster, bootstrap) = start(embedded_config(), 16).await;
    let batch = BatchAck::new();
    let mut enriched = telemetry_record(vehicle(1), 0, batch.ack());
    enriched.enrichment = enrichment();
    send(&tx, SinkRecord::Telemetry(enriched)).await;
    send(&tx, telemetry(1, 1, batch.ack())).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    let read = read_topic(&bootstrap, "fleet.telemetry.v1").await;
    assert_eq!(read.len(), 2);
    let values: Vec<Value> = read.iter().map(Read::json).collect();
    assert_eq!(
        values[0]["fences"],
        serde_json::json!(["depot-7", "city-centre"])
    );
    assert_eq!(values[0]["distance_m"], 152.25);
    assert_eq!(values[0]["derived_speed_kmh"], 54.81);
    assert_eq!(values[0]["flags"], serde_json::json!(["duplicate", "jump"]));
    for field in ["fences", "distance_m", "derived_speed_kmh", "flags"] {
        assert!(values[1].get(field).is_none(), "{field}: {}", values[1]);
    }
    assert!(read_topic(&bootstrap, "fleet.events.v1").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_is_ridden_out_without_loss_or_duplicates() {
    const N: usize = 20_000;
    const V: usize = 100;
    let (tx, run, cluster, bootstrap) = start(embedded_config(), 1024).await;

    // One batch per record, so each record's own outcome is known.
    let delivered = Arc::new(AtomicUsize::new(0));
    let mut outcomes = Vec::with_capacity(N);
    let mut records = Vec::with_capacity(N);
    for i in 0..N {
        let batch = BatchAck::new();
        records.push(telemetry(i % V, (i / V) as u64, batch.ack()));
        let delivered = Arc::clone(&delivered);
        outcomes.push(tokio::spawn(async move {
            let status = batch.wait().await;
            if status == AckStatus::Delivered {
                delivered.fetch_add(1, Ordering::SeqCst);
            }
            status
        }));
    }
    let mut records = records.into_iter();

    // A quarter goes through while the cluster is healthy.
    for record in records.by_ref().take(N / 4) {
        send(&tx, record).await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while delivered.load(Ordering::SeqCst) < N / 8 {
        assert!(tokio::time::Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Every broker goes down for 3 s; the rest is sent meanwhile.
    brokers(&cluster, false).await;
    for record in records.by_ref() {
        send(&tx, record).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = delivered.load(Ordering::SeqCst);
    assert!(during < N, "all delivered before the outage mattered");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        during,
        "acks were marked delivered while no broker was reachable"
    );
    brokers(&cluster, true).await;
    finish(tx, run).await;

    for outcome in outcomes {
        let status = tokio::time::timeout(PATIENCE, outcome)
            .await
            .expect("every ack settles")
            .expect("waiter ran");
        assert_eq!(status, AckStatus::Delivered);
    }
    // Every delivered record is readable, exactly once, in order.
    let read = read_topic(&bootstrap, "fleet.telemetry.v1").await;
    assert_eq!(read.len(), N, "lost or duplicated records");
    let unique: HashSet<(String, u64)> = read
        .iter()
        .map(|r| {
            (
                r.key.clone().unwrap_or_default(),
                r.json()["seq"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(unique.len(), N, "duplicate (key, seq)");
    assert_eq!(assert_per_vehicle_order(&read, (N / V) as u64), V);
}

/// Sends telemetry of vehicle 0, seq 0 on, until a send stalls for
/// [`BLOCKED`]; fails if `limit` sends all go through. Returns each sent
/// record's own outcome.
async fn send_until_blocked(
    tx: &mpsc::Sender<SinkRecord>,
    limit: u64,
) -> Vec<JoinHandle<AckStatus>> {
    let mut outcomes = Vec::new();
    for seq in 0..limit {
        let Ok(permit) = tokio::time::timeout(BLOCKED, tx.reserve()).await else {
            return outcomes;
        };
        let batch = BatchAck::new();
        permit
            .expect("sink is running")
            .send(telemetry(0, seq, batch.ack()));
        outcomes.push(tokio::spawn(batch.wait()));
    }
    panic!("{limit} records went in without backpressure");
}

/// Checks that none of `outcomes` settles within 200 ms.
async fn assert_unsettled(outcomes: &[JoinHandle<AckStatus>]) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let settled = outcomes.iter().filter(|o| o.is_finished()).count();
    assert_eq!(settled, 0, "acks settled while no broker was reachable");
}

/// Checks that every one of `outcomes` settles as delivered.
async fn assert_all_delivered(outcomes: Vec<JoinHandle<AckStatus>>) {
    for outcome in outcomes {
        let status = tokio::time::timeout(PATIENCE, outcome)
            .await
            .expect("settles")
            .expect("waiter ran");
        assert_eq!(status, AckStatus::Delivered);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_librdkafka_queue_blocks_the_input_until_brokers_return() {
    const CAPACITY: usize = 8;
    const QUEUE: u64 = 10;
    let mut config = embedded_config();
    config
        .librdkafka
        .insert("queue.buffering.max.messages".to_owned(), QUEUE.to_string());
    let sink = KafkaSink::new(config).await.expect("sink starts");
    let cluster = sink.embedded_cluster().expect("embedded");
    let bootstrap = sink.bootstrap_servers();
    brokers(&cluster, false).await;
    let (tx, rx) = mpsc::channel(CAPACITY);
    let run = tokio::spawn(sink.run(rx));

    let blocked = send_until_blocked(&tx, 1000).await;
    let sent = blocked.len() as u64;
    // librdkafka's queue, the input queue, and the one record the sink
    // holds while it waits for room.
    assert!(
        sent <= QUEUE + CAPACITY as u64 + 1,
        "{sent} records went in with a queue of {QUEUE}"
    );
    assert!(sent >= QUEUE, "blocked after only {sent} records");
    assert_unsettled(&blocked).await;

    brokers(&cluster, true).await;
    // The blocked send goes through now, and so does everything after it.
    let batch = BatchAck::new();
    for seq in sent..sent + 100 {
        let permit = tokio::time::timeout(PATIENCE, tx.reserve())
            .await
            .expect("backpressure released once brokers are back")
            .expect("sink is running");
        permit.send(telemetry(0, seq, batch.ack()));
    }
    finish(tx, run).await;
    assert_all_delivered(blocked).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    let read = read_topic(&bootstrap, "fleet.telemetry.v1").await;
    assert_eq!(read.len() as u64, sent + 100);
    assert_per_vehicle_order(&read, sent + 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_the_records_awaiting_reports() {
    const CAPACITY: usize = 4;
    const MAX_IN_FLIGHT: usize = 5;
    let mut config = embedded_config();
    config.max_in_flight = MAX_IN_FLIGHT;
    let sink = KafkaSink::new(config).await.expect("sink starts");
    let cluster = sink.embedded_cluster().expect("embedded");
    let bootstrap = sink.bootstrap_servers();
    brokers(&cluster, false).await;
    let (tx, rx) = mpsc::channel(CAPACITY);
    let run = tokio::spawn(sink.run(rx));

    let blocked = send_until_blocked(&tx, 1000).await;
    let sent = blocked.len() as u64;
    // In flight, queued, and one held while the sink waits for a permit.
    assert_eq!(sent, (MAX_IN_FLIGHT + CAPACITY + 1) as u64);
    assert_unsettled(&blocked).await;

    brokers(&cluster, true).await;
    let batch = BatchAck::new();
    for seq in sent..sent + 50 {
        tokio::time::timeout(PATIENCE, send(&tx, telemetry(0, seq, batch.ack())))
            .await
            .expect("backpressure released once brokers are back");
    }
    finish(tx, run).await;
    assert_all_delivered(blocked).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    let read = read_topic(&bootstrap, "fleet.telemetry.v1").await;
    assert_eq!(read.len() as u64, sent + 50);
    assert_per_vehicle_order(&read, sent + 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_what_the_sink_wrote() {
    const N: usize = 1000;
    let (tx, run, _cluster, bootstrap) = start(embedded_config(), 256).await;
    let batch = BatchAck::new();
    for i in 0..N {
        send(&tx, telemetry(i % 10, (i / 10) as u64, batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    let kcat = tokio::process::Command::new("kcat")
        .args(["-b", &bootstrap, "-C", "-t", "fleet.telemetry.v1"])
        .args(["-o", "beginning", "-e", "-q", "-f", "%k\\n"])
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(PATIENCE, kcat).await {
        Err(_) => panic!("kcat did not finish within {PATIENCE:?}"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("kcat not found: install Debian package kcat")
        }
        Ok(Err(e)) => panic!("kcat could not run: {e}"),
        Ok(Ok(output)) => output,
    };
    assert!(
        output.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("keys are UTF-8");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for key in stdout.lines() {
        *counts.entry(key).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> =
        (0..10).map(|v| (vehicle(v).to_string(), N / 10)).collect();
    let counts: BTreeMap<String, usize> =
        counts.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
    assert_eq!(counts, expected, "kcat read other keys or counts");
}

#[tokio::test]
async fn a_fatal_producer_error_makes_run_fail_and_pending_acks_fail() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    // An external cluster that refuses the idempotent producer its id:
    // librdkafka treats that as fatal.
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic("fleet.telemetry.v1", 1, 1)
        .expect("topic");
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
    );
    let sink = KafkaSink::new(KafkaConfig::new(cluster.bootstrap_servers()))
        .await
        .expect("sink starts");
    let (tx, rx) = mpsc::channel(16);
    let run = tokio::spawn(sink.run(rx));
    let batch = BatchAck::new();
    for seq in 0..5 {
        send(&tx, telemetry(0, seq, batch.ack())).await;
    }
    let result = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("run returns on a fatal error, with its input still open")
        .expect("sink task did not panic");
    match result {
        Err(KafkaError::Fatal { code, reason }) => {
            assert_eq!(
                code,
                RDKafkaErrorCode::ClusterAuthorizationFailed,
                "{reason}"
            );
        }
        other => panic!("expected a fatal error, got {other:?}"),
    }
    assert_eq!(wait(batch).await, AckStatus::Failed);
    // The input is gone with the sink: senders learn it at once.
    assert!(tx.send(telemetry(0, 9, Ack::none())).await.is_err());
}

// ---- metrics ---------------------------------------------------------------

#[test]
fn metrics_follow_the_contract() {
    use metrics_util::MetricKind;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    const TELEMETRY: u64 = 60;
    const DEAD: u64 = 4;
    const EVENTS: u64 = 3;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut config = embedded_config();
    // A queue of 10 forces QueueFull waits; records over 1000 bytes are
    // refused by librdkafka itself (a permanent error).
    config
        .librdkafka
        .insert("queue.buffering.max.messages".to_owned(), "10".to_owned());
    config
        .librdkafka
        .insert("message.max.bytes".to_owned(), "1000".to_owned());
    config.batch_bytes = 1000;
    let telemetry_bytes: u64 = (0..TELEMETRY)
        .map(|seq| {
            let record = telemetry(0, seq, Ack::none());
            topic_record::encode(&record, KafkaFormat::Json)
                .expect("encodes")
                .value
                .len() as u64
        })
        .sum();
    let event_bytes: u64 = (0..EVENTS)
        .map(|n| {
            topic_record::encode(&event(0, n, Ack::none()), KafkaFormat::Json)
                .expect("encodes")
                .value
                .len() as u64
        })
        .sum();

    // Everything runs on this thread, where the local recorder is installed.
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let sink = KafkaSink::new(config).await.expect("sink starts");
            let (tx, rx) = mpsc::channel(64);
            let producer = async move {
                let batch = BatchAck::new();
                for seq in 0..TELEMETRY {
                    send(&tx, telemetry(0, seq, batch.ack())).await;
                }
                for n in 0..DEAD {
                    send(&tx, dead_letter(n, Some(vehicle(0)), batch.ack())).await;
                }
                for n in 0..EVENTS {
                    send(&tx, event(0, n, batch.ack())).await;
                }
                assert_eq!(wait(batch).await, AckStatus::Delivered);
                let too_large = BatchAck::new();
                let mut huge = dead_letter(99, None, too_large.ack());
                if let SinkRecord::DeadLetter(d) = &mut huge {
                    d.raw = Bytes::from(vec![b'x'; 5000]);
                }
                send(&tx, huge).await;
                assert_eq!(wait(too_large).await, AckStatus::Failed);
            };
            let (result, ()) = tokio::join!(sink.run(rx), producer);
            assert!(result.is_ok(), "{result:?}");
        });
    });

    let metrics = crate::test_metrics::Snapshot::take(&snapshotter);
    let find =
        |kind: MetricKind, name: &str, labels: &[(&str, &str)]| metrics.find(kind, name, labels);
    let counter = |name: &str, labels: &[(&str, &str)]| metrics.counter(name, labels);

    let tel = [("sink", "kafka"), ("stream", "telemetry")];
    let dl = [("sink", "kafka"), ("stream", "dead_letter")];
    let ev = [("sink", "kafka"), ("stream", "events")];
    assert_eq!(counter("fleetpipe_sink_records_total", &tel), TELEMETRY);
    assert_eq!(counter("fleetpipe_sink_records_total", &dl), DEAD);
    assert_eq!(counter("fleetpipe_sink_records_total", &ev), EVENTS);
    assert_eq!(counter("fleetpipe_sink_bytes_total", &ev), event_bytes);
    assert_eq!(counter("fleetpipe_sink_bytes_total", &tel), telemetry_bytes);
    assert_eq!(
        counter("fleetpipe_sink_bytes_total", &dl),
        DEAD * RAW.len() as u64
    );
    assert_eq!(
        counter(
            "fleetpipe_sink_errors_total",
            &[("sink", "kafka"), ("kind", "fatal")]
        ),
        1
    );
    assert!(
        find(
            MetricKind::Counter,
            "fleetpipe_sink_errors_total",
            &[("sink", "kafka"), ("kind", "retriable")]
        )
        .is_none(),
        "no retriable error happened"
    );
    assert!(counter("fleetpipe_sink_retries_total", &[("sink", "kafka")]) > 0);
    match find(
        MetricKind::Histogram,
        "fleetpipe_sink_delivery_seconds",
        &[("sink", "kafka")],
    ) {
        Some(DebugValue::Histogram(v)) => {
            assert_eq!(
                v.len() as u64,
                TELEMETRY + DEAD + EVENTS,
                "one per delivery report"
            );
            assert!(
                v.iter()
                    .all(|s| s.into_inner() >= 0.0 && s.into_inner() < 60.0)
            );
        }
        other => panic!("delivery seconds: {other:?}"),
    }
    match find(
        MetricKind::Gauge,
        "fleetpipe_sink_inflight",
        &[("sink", "kafka")],
    ) {
        Some(DebugValue::Gauge(v)) => assert_eq!(v.into_inner(), 0.0, "nothing left in flight"),
        other => panic!("inflight: {other:?}"),
    }
}

/// A self-signed CA certificate in PEM, made for the test.
fn ca_certificate_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("certificate").pem()
}

#[test]
fn tls_and_sasl_settings_reach_librdkafka() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_certificate_pem()).expect("write CA");
    let mut config = KafkaConfig::new("127.0.0.1:9093");
    config.librdkafka = [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "fleetpipe"),
        ("sasl.password", "secret"),
        ("ssl.ca.location", ca.to_str().expect("utf-8 path")),
        ("ssl.endpoint.identification.algorithm", "https"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    // librdkafka built with TLS takes them (and loads the CA now).
    let producer: Result<rdkafka::producer::BaseProducer, _> =
        service::producer_config(&config, &config.brokers).create();
    assert!(producer.is_ok(), "{:?}", producer.err());
    // They are librdkafka's own settings: a CA file that is not there is
    // refused when the client is made, with librdkafka's reason.
    let missing = dir.path().join("missing.pem");
    config.librdkafka.insert(
        "ssl.ca.location".to_owned(),
        missing.to_str().expect("utf-8 path").to_owned(),
    );
    let refused: Result<rdkafka::producer::BaseProducer, _> =
        service::producer_config(&config, &config.brokers).create();
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        error.contains("ssl.ca.location") || error.contains("missing.pem"),
        "{error}"
    );
}
