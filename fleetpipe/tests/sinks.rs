//! The whole pipeline into the Kafka sink (librdkafka's mock cluster, real
//! Kafka protocol) and the TimescaleDB sink (the real PostgreSQL at
//! 127.0.0.1:5432, in whichever mode it offers: `timescaledb = "auto"`),
//! besides the file sink.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures::{SinkExt as _, StreamExt as _};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(30);
const PG: &str = "postgresql://postgres@127.0.0.1:5432/test";

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Every record of `topic`, from the beginning, as (key, value).
fn read_topic(bootstrap: &str, topic: &str, expect: usize) -> Vec<(String, serde_json::Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("t-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while out.len() < expect && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            out.push((
                key,
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap(),
            ));
        }
    }
    // Nothing more than expected arrives.
    while let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        out.push((
            key,
            serde_json::from_slice(m.payload().unwrap_or_default()).unwrap(),
        ));
    }
    out
}

/// Sends the same N pings through MQTT, WebSocket and HTTP; returns N.
async fn publish_all(p: &TestPipeline, pings: &[(String, u64, i64)]) -> usize {
    let ping = |(v, s, ts): &(String, u64, i64)| {
        format!(r#"{{"vehicle_id":"{v}","seq":{s},"ts":{ts},"lat":52.5,"lon":13.4}}"#)
    };
    let third = pings.len() / 3;
    let mqtt = mqtt_client(p.mqtt.unwrap(), &format!("dev-{}", now_ms()), None).await;
    for x in &pings[..third] {
        mqtt.publish(&format!("fleet/{}/telemetry", x.0), ping(x))
            .await;
    }
    mqtt.wait_pubacks(third, T).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", p.http))
        .await
        .unwrap();
    for x in &pings[third..2 * third] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(ping(x)))
            .await
            .unwrap();
        let answer = ws.next().await.unwrap().unwrap().into_text().unwrap();
        assert_eq!(answer.as_str(), format!("{{\"ack\":{}}}", x.1));
    }
    let http = reqwest::Client::new();
    for x in &pings[2 * third..] {
        let r = http
            .post(p.url("/v1/pings"))
            .body(ping(x))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    pings.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ping_is_one_row_and_one_record_and_replays_add_no_rows() {
    let schema = format!("fp_e2e_{}_{}", std::process::id(), now_ms());
    let mut p = TestPipeline::start(|c| {
        c.sink.kafka = Some(fleetpipe_sink::KafkaConfig::new("embedded"));
        c.sink.timescale = Some(fleetpipe_sink::TimescaleConfig {
            schema: schema.clone(),
            ..fleetpipe_sink::TimescaleConfig::new(PG)
        });
    })
    .await;
    let bootstrap = p
        .pipeline
        .as_ref()
        .unwrap()
        .kafka_bootstrap()
        .unwrap()
        .to_owned();

    let now = now_ms();
    let pings: Vec<(String, u64, i64)> = (0..300u64)
        .map(|i| (format!("veh-{}", i % 10), i, now - 60_000 + i as i64))
        .collect();
    let n = publish_all(&p, &pings).await;
    p.wait_telemetry(n, T).await;

    let db = std::sync::Arc::new(pg().await);
    let count = |db: std::sync::Arc<tokio_postgres::Client>, schema: String| async move {
        let row = db
            .query_one(&format!("select count(*) from \"{schema}\".telemetry"), &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let rows = wait_for_async(T, || count(db.clone(), schema.clone()), |c| *c == n as i64).await;
    assert_eq!(rows, n as i64, "one row per ping");
    let records = read_topic(&bootstrap, "fleet.telemetry.v1", n);
    assert_eq!(records.len(), n, "one Kafka record per ping");
    let keys: BTreeSet<(String, u64)> = records
        .iter()
        .map(|(k, v)| (k.clone(), v["seq"].as_u64().unwrap()))
        .collect();
    let want: BTreeSet<(String, u64)> = pings.iter().map(|(v, s, _)| (v.clone(), *s)).collect();
    assert_eq!(keys, want, "keyed by vehicle, every ping once");
    assert!(records.iter().all(|(k, v)| v["vehicle_id"] == k.as_str()));

    // The same pings again: Kafka is at-least-once (consumers dedupe on the
    // deterministic key); the database holds exactly one row per ping.
    publish_all(&p, &pings).await;
    p.wait_telemetry(2 * n, T).await;
    let replayed = read_topic(&bootstrap, "fleet.telemetry.v1", 2 * n);
    assert_eq!(replayed.len(), 2 * n);
    p.stop().await;
    let rows = count(db.clone(), schema.clone()).await;
    assert_eq!(rows, n as i64, "a replay adds no rows");
    let latest = db
        .query(
            &format!("select vehicle_id, seq from \"{schema}\".vehicle_latest order by vehicle_id"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(latest.len(), 10);
    let veh0: i64 = latest[0].get(1);
    assert_eq!(veh0, 290, "vehicle_latest holds each vehicle's newest ping");
    db.execute(&format!("drop schema \"{schema}\" cascade"), &[])
        .await
        .unwrap();
}

/// Polls `f` until `done` holds or `timeout` passes; returns the last value.
async fn wait_for_async<T, F, Fut>(timeout: Duration, mut f: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = f().await;
        if done(&v) || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Faults on both sinks during one run: PostgreSQL connections are killed
/// with pg_terminate_backend over and over, and every Kafka broker goes down
/// for seconds. Afterwards every ping whose request was answered 200 is in
/// both sinks, exactly once in the database; nothing else was answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_both_sinks_lose_nothing_that_was_acknowledged() {
    let schema = format!("fp_fault_{}_{}", std::process::id(), now_ms());
    let app = format!("fp_fault_{}", std::process::id());
    let mut p = TestPipeline::start(|c| {
        c.sink.kafka = Some(fleetpipe_sink::KafkaConfig {
            librdkafka: [("reconnect.backoff.max.ms".to_owned(), "250".to_owned())].into(),
            ..fleetpipe_sink::KafkaConfig::new("embedded")
        });
        c.sink.timescale = Some(fleetpipe_sink::TimescaleConfig {
            schema: schema.clone(),
            batch_max_rows: 200,
            ..fleetpipe_sink::TimescaleConfig::new(format!("{PG}?application_name={app}"))
        });
    })
    .await;
    let pipeline = p.pipeline.as_ref().unwrap();
    let kafka = pipeline.embedded_kafka().unwrap().clone();

    // Kill this test's database connections every 100 ms while traffic flows.
    let killing = tokio_util::sync::CancellationToken::new();
    let killer = {
        let (killing, app) = (killing.clone(), app.clone());
        tokio::spawn(async move {
            let db = pg().await;
            let mut kills = 0u64;
            while !killing.is_cancelled() {
                let rows = db
                    .query(
                        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1",
                        &[&app],
                    )
                    .await
                    .unwrap();
                kills += rows.len() as u64;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            kills
        })
    };

    // 40 concurrent requests of 50 pings each; a request is answered only
    // when all its pings are durable in every sink.
    let now = now_ms();
    let mut requests = tokio::task::JoinSet::new();
    for r in 0..40u64 {
        let url = p.url("/v1/pings");
        let vehicle = format!("veh-{r}");
        requests.spawn(async move {
            let batch: Vec<String> = (0..50u64)
                .map(|s| {
                    format!(
                        r#"{{"vehicle_id":"{vehicle}","seq":{s},"ts":{},"lat":52.5,"lon":13.4}}"#,
                        now - 60_000 + s as i64
                    )
                })
                .collect();
            let status = reqwest::Client::new()
                .post(url)
                .body(format!("[{}]", batch.join(",")))
                .send()
                .await
                .unwrap()
                .status();
            (vehicle, status)
        });
        if r == 10 {
            kafka.set_brokers_up(false).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.set_brokers_up(true).await.unwrap();
    let mut acked = BTreeSet::new();
    while let Some(done) = requests.join_next().await {
        let (vehicle, status) = done.unwrap();
        if status == 200 {
            acked.extend((0..50u64).map(|s| (vehicle.clone(), s)));
        }
    }
    killing.cancel();
    let kills = killer.await.unwrap();
    p.stop().await;
    assert!(kills > 0, "the database connections were never killed");
    assert_eq!(
        acked.len(),
        2000,
        "transient faults: every request is answered 200 in the end"
    );

    let db = pg().await;
    let rows = db
        .query(
            &format!("select vehicle_id, seq from \"{schema}\".telemetry"),
            &[],
        )
        .await
        .unwrap();
    let in_db: Vec<(String, u64)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect();
    let unique: BTreeSet<(String, u64)> = in_db.iter().cloned().collect();
    assert_eq!(in_db.len(), unique.len(), "exactly once in the database");
    assert_eq!(
        unique, acked,
        "every acknowledged ping is in the database, and nothing else"
    );
    // `kafka` keeps the mock cluster alive after the pipeline has stopped.
    let in_kafka: BTreeSet<(String, u64)> =
        read_topic(kafka.bootstrap_servers(), "fleet.telemetry.v1", 2000)
            .into_iter()
            .map(|(k, v)| (k, v["seq"].as_u64().unwrap()))
            .collect();
    assert_eq!(in_kafka, acked, "every acknowledged ping is in Kafka");
    db.execute(&format!("drop schema \"{schema}\" cascade"), &[])
        .await
        .unwrap();
}

/// A table locked by another transaction stalls the database sink: the
/// gateways stop answering (acknowledging) within the byte budget, and
/// everything is written and answered once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_table_stops_acknowledgements_within_bounded_memory_then_resumes() {
    let schema = format!("fp_lock_{}_{}", std::process::id(), now_ms());
    let budget = 64 * 1024;
    let mut p = TestPipeline::start(|c| {
        c.pipeline.max_inflight_bytes = budget;
        c.sink.timescale = Some(fleetpipe_sink::TimescaleConfig {
            schema: schema.clone(),
            ..fleetpipe_sink::TimescaleConfig::new(PG)
        });
    })
    .await;
    let mut locker = pg().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(&format!(
        "lock table \"{schema}\".telemetry in access exclusive mode"
    ))
    .await
    .unwrap();

    // 200 requests of 10 pings (~1 KiB each): far more than the budget holds.
    let now = now_ms();
    let mut requests = tokio::task::JoinSet::new();
    for r in 0..200u64 {
        let url = p.url("/v1/pings");
        requests.spawn(async move {
            let batch: Vec<String> = (0..10u64)
                .map(|s| {
                    format!(
                        r#"{{"vehicle_id":"veh-{r}","seq":{s},"ts":{},"lat":52.5,"lon":13.4}}"#,
                        now - 60_000 + s as i64
                    )
                })
                .collect();
            reqwest::Client::new()
                .post(url)
                .body(format!("[{}]", batch.join(",")))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        requests.len(),
        200,
        "nothing is acknowledged while the table is locked"
    );
    // The gauge is refreshed every second, and on a loaded machine the
    // requests may take a while to arrive: read it until it shows them.
    let deadline = tokio::time::Instant::now() + T;
    let inflight = loop {
        let inflight: f64 = common::metric_values()
            .gauge("fleetpipe_pipeline_inflight_bytes", &[])
            .unwrap_or(f64::MAX);
        if inflight > 0.0 || tokio::time::Instant::now() > deadline {
            break inflight;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(inflight > 0.0, "the requests never entered the pipeline");
    assert!(
        inflight <= budget as f64,
        "in flight: {inflight} bytes, budget {budget}"
    );
    assert_eq!(
        requests.len(),
        200,
        "nothing is acknowledged while the table is locked"
    );

    lock.rollback().await.unwrap();
    let mut ok = 0;
    while let Some(status) = tokio::time::timeout(T, requests.join_next()).await.unwrap() {
        assert_eq!(status.unwrap(), 200);
        ok += 1;
    }
    assert_eq!(ok, 200);
    p.stop().await;
    let db = pg().await;
    let n: i64 = db
        .query_one(&format!("select count(*) from \"{schema}\".telemetry"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2000);
    db.execute(&format!("drop schema \"{schema}\" cascade"), &[])
        .await
        .unwrap();
}

/// A mixed-case schema (`Fleet_…`, which SQL keeps only when quoted) holds
/// the sink's tables and enrichment's state checkpoints alike: the pipeline
/// starts, writes, checkpoints every vehicle's state into
/// `"Fleet_…".vehicle_state` on shutdown, and a second start restores from
/// there. No schema of the folded name (`fleet_…`) appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_case_schema_holds_the_telemetry_and_the_state_checkpoints() {
    let schema = format!("Fleet_{}_{}", std::process::id(), now_ms());
    let config = |c: &mut fleetpipe::Config| {
        c.sink.timescale = Some(fleetpipe_sink::TimescaleConfig {
            schema: schema.clone(),
            ..fleetpipe_sink::TimescaleConfig::new(PG)
        });
    };
    let mut p = TestPipeline::start(config).await;
    // Three vehicles (one batch each), with and without seq.
    let now = now_ms();
    for v in 0..3 {
        let body: Vec<String> = (0..10u64)
            .map(|i| {
                let seq = if i.is_multiple_of(2) {
                    format!(r#""seq":{i},"#)
                } else {
                    String::new()
                };
                format!(
                    r#"{{"vehicle_id":"mc-{v}",{seq}"ts":{},"lat":52.5,"lon":13.4}}"#,
                    now - 60_000 + i as i64 * 100
                )
            })
            .collect();
        let r = reqwest::Client::new()
            .post(p.url("/v1/pings"))
            .body(format!("[{}]", body.join(",")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(p.dead_letters().is_empty(), "{:?}", p.dead_letters());
    p.stop().await;

    let db = pg().await;
    let count = |table: &str| format!("select count(*) from \"{schema}\".{table}");
    let rows: i64 = db.query_one(&count("telemetry"), &[]).await.unwrap().get(0);
    assert_eq!(rows, 30);
    let states: Vec<String> = db
        .query(
            &format!("select vehicle_id from \"{schema}\".vehicle_state order by vehicle_id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["mc-0", "mc-1", "mc-2"], "checkpointed on shutdown");
    let folded: i64 = db
        .query_one(
            "select count(*) from pg_namespace where nspname = $1",
            &[&schema.to_lowercase()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(folded, 0, "nothing went to the unquoted (folded) schema");

    // A second start reads the checkpoint back from the same table.
    let mut again = TestPipeline::start(config).await;
    again.stop().await;
    db.execute(&format!("drop schema \"{schema}\" cascade"), &[])
        .await
        .unwrap();
}

/// When the state checkpoint cannot be read, the start fails naming the
/// statement's table and PostgreSQL's own answer (SQLSTATE and message), not
/// just "db error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_state_checkpoint_says_which_statement_failed_and_why() {
    let schema = format!("Fleet_gone_{}_{}", std::process::id(), now_ms());
    let sink = fleetpipe_sink::TimescaleConfig {
        schema: schema.clone(),
        ..fleetpipe_sink::TimescaleConfig::new(PG)
    };
    // Migrated, then the state table replaced by a view whose rows come
    // from a table that is gone. Enrichment creates a missing
    // vehicle_state at start, so a dropped table would simply come back;
    // this one is there but cannot be read.
    fleetpipe_sink::migrate(&sink).await.unwrap();
    let db = pg().await;
    db.batch_execute(&format!(
        "create function \"{schema}\".gone_state() \
             returns table (vehicle_id text, state jsonb) language plpgsql as \
             $$ begin return query select g.vehicle_id, g.state from \"{schema}\".gone g; end $$; \
         create view \"{schema}\".vehicle_state as select * from \"{schema}\".gone_state()"
    ))
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.sink.timescale = Some(sink);
    let err = match fleetpipe::Pipeline::start(&config, Default::default()).await {
        Ok(_) => panic!("started without its state table"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("read \"{schema}\".vehicle_state failed"))
            && err.contains("42P01")
            && err.contains("does not exist"),
        "{err}"
    );
    db.execute(&format!("drop schema \"{schema}\" cascade"), &[])
        .await
        .unwrap();
}

/// `[sink.timescale.tls]` with `verify-full` (the test server set up for
/// TLS with a CA of the run's own): the pipeline writes over TLS (every
/// session of the pipeline is encrypted), checkpoints the vehicles' state
/// over the same settings on shutdown and restores it at the next start;
/// with a CA that did not issue the server's certificate the start fails
/// saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_and_the_state_checkpoints_use_verified_tls() {
    use fleetpipe_postgres::test_support::{TestCa, tls_server};
    use fleetpipe_postgres::{PostgresTls, TlsMode};

    let server = tls_server().expect("the test PostgreSQL is set up for TLS");
    let schema = format!("tls_{}_{}", std::process::id(), now_ms());
    let app = schema.clone();
    let sink = fleetpipe_sink::TimescaleConfig {
        schema: schema.clone(),
        tls: server.tls(TlsMode::VerifyFull),
        ..fleetpipe_sink::TimescaleConfig::new(format!("{PG}?application_name={app}"))
    };
    let config = |c: &mut fleetpipe::Config| c.sink.timescale = Some(sink.clone());
    let mut p = TestPipeline::start(config).await;
    let now = now_ms();
    let body: Vec<String> = (0..5u64)
        .map(|i| {
            format!(
                r#"{{"vehicle_id":"tls-1","seq":{i},"ts":{},"lat":52.5,"lon":13.4}}"#,
                now - 1000 + i as i64 * 100
            )
        })
        .collect();
    let r = reqwest::Client::new()
        .post(p.url("/v1/pings"))
        .body(format!("[{}]", body.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "acknowledged once stored");
    assert!(p.dead_letters().is_empty(), "{:?}", p.dead_letters());
    let db = pg().await;
    let sessions: Vec<bool> = db
        .query(
            "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) \
             where a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|ssl| *ssl),
        "the pipeline's sessions: {sessions:?}"
    );
    p.stop().await;
    let count = |table: &str| format!("select count(*) from \"{schema}\".{table}");
    let rows: i64 = db.query_one(&count("telemetry"), &[]).await.unwrap().get(0);
    assert_eq!(rows, 5);
    let states: i64 = db
        .query_one(&count("vehicle_state"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(states, 1, "checkpointed over TLS on shutdown");
    // Restored over TLS at the next start.
    let mut again = TestPipeline::start(config).await;
    again.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, TestCa::new("not the server's").unwrap().pem()).unwrap();
    let mut bad = test_config(dir.path());
    bad.sink.timescale = Some(fleetpipe_sink::TimescaleConfig {
        tls: PostgresTls::new(TlsMode::VerifyFull, Some(other)),
        ..sink.clone()
    });
    let err = match fleetpipe::Pipeline::start(&bad, Default::default()).await {
        Ok(_) => panic!("started against an untrusted server"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("the server's certificate is not trusted")
            && err.contains("sink.timescale.tls.ca_file"),
        "{err}"
    );
    db.execute(&format!("drop schema \"{schema}\" cascade"), &[])
        .await
        .unwrap();
}
