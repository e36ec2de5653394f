//! Throughput of the sinks against their real backends, and the raw
//! PostgreSQL ceiling the TimescaleDB sink is measured against.
//!
//! Run with:
//! `cargo bench -p fleetpipe-bench --bench sinks -- --warm-up-time 1 --measurement-time 10`
//!
//! Every case moves the same [`ROWS`] telemetry records: a fleet of
//! [`VEHICLES`] vehicles (half phones posting JSON over HTTP, half firmware
//! units publishing Protobuf over MQTT, built from [`fleetpipe_bench::fixtures`]),
//! each ping decoded and validated by the ingest codec and enriched with its
//! H3 cells (resolutions 7 and 9) exactly as the pipeline does. They are sent
//! round-robin over the vehicles (ping 0 of every vehicle, then ping 1, ...),
//! as a fleet reporting once a second would arrive, with one [`BatchAck`] per
//! [`ACK_BATCH`] records, like a gateway acknowledging its messages.
//!
//! - `timescale/sink_rows`: [`TimescaleSink::run`] with the default
//!   configuration (4 writers, batches of 5000, 50 ms wait) in a schema of
//!   its own (`fp_bench_<pid>`, plain PostgreSQL without the TimescaleDB
//!   extension). Timed from the first send until every ack is `Delivered`,
//!   i.e. every transaction holding a record committed.
//! - `timescale/raw_copy`: the ceiling: the same rows with the same column
//!   values, one binary `COPY telemetry (...) FROM STDIN` straight into the
//!   same table in one transaction on one connection: no staging table, no
//!   `ON CONFLICT`, no `vehicle_latest`. The column values are prepared
//!   before the timer starts; the binary encoding and the COPY are timed.
//! - `timescale/raw_copy_batched`: the same, cut into transactions of the
//!   sink's default batch size (5000 rows), one after another.
//! - `kafka/sink_records`: [`KafkaSink::run`] with `brokers = "embedded"`
//!   (librdkafka's in-process mock cluster, 3 brokers, 6 partitions), JSON
//!   values, lz4. Timed from the first send until every ack is `Delivered`,
//!   i.e. every delivery report is in.
//!
//! Criterion's `iter_custom` keeps setup out of the measurement: building
//! the records and their acks, and `TRUNCATE` of `telemetry` and
//! `vehicle_latest` before every iteration, are not timed. One sink runs for
//! the whole case (its input queue, [`SINK_QUEUE`] records as in the
//! pipeline, stays open between iterations); it is warmed up by one untimed
//! delivery of the whole data set first, so the pool's connections (and the
//! Kafka producer's broker connections and producer id) already exist when
//! the measurement starts. Every iteration checks its result: every ack
//! `Delivered` and, for PostgreSQL, [`ROWS`] rows in `telemetry`.
//!
//! PostgreSQL comes from `FLEETPIPE_BENCH_PG_URL` (else
//! `FLEETPIPE_TEST_PG_URL`, else `postgresql://postgres@127.0.0.1:5432/test`).
//! The schema is dropped before the run (if a previous run of the same pid
//! left it) and at the end, also when a case panics. Without a reachable
//! server the `timescale` group is skipped with a message.

// A benchmark whose sink loses or refuses records must stop loudly rather
// than report a throughput it did not achieve.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use fleetpipe_bench::fixtures::{REFERENCE_NOW_MS, json_batch_of, proto_batch_of};
use fleetpipe_bench::peers::{CopyRow, copy_batch};
use fleetpipe_enrich::{EnrichConfig, Enricher};
use fleetpipe_ingest::codec::{Encoding, VehicleScope, decode_message};
use fleetpipe_ingest::validate::{ValidationConfig, Validator};
use fleetpipe_model::{
    Accepted, Ack, AckStatus, BatchAck, Gateway, Origin, SinkRecord, TelemetryRecord,
};
use fleetpipe_sink::timescale::TELEMETRY_COPY_COLUMNS;
use fleetpipe_sink::{
    KafkaConfig, KafkaSink, StorageMode, TimescaleConfig, TimescaleSink, migrate,
};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

/// Vehicles in the fleet.
const VEHICLES: usize = 1000;
/// Pings per vehicle.
const PINGS_PER_VEHICLE: usize = 50;
/// Records per iteration.
const ROWS: usize = VEHICLES * PINGS_PER_VEHICLE;
/// Records sharing one [`BatchAck`].
const ACK_BATCH: usize = 1000;
/// Capacity of the queue in front of a sink: the pipeline's default
/// `pipeline.sink_queue`.
const SINK_QUEUE: usize = 8192;
/// Longest one delivery of the data set may take before the benchmark gives
/// up (a sink retrying forever would otherwise hang the run).
const PATIENCE: Duration = Duration::from_secs(300);

// ---- the fleet ---------------------------------------------------------------

/// The data set: [`ROWS`] enriched records in send order, with inert acks;
/// every iteration sends copies carrying fresh ones.
struct Fleet {
    records: Vec<TelemetryRecord>,
}

impl Fleet {
    fn new() -> Self {
        let validator = Validator::new(ValidationConfig::default());
        let enricher = Enricher::new(&EnrichConfig::default()).expect("default enrich config");
        let now = REFERENCE_NOW_MS;
        let mut per_vehicle: Vec<std::vec::IntoIter<TelemetryRecord>> = (0..VEHICLES)
            .map(|v| {
                // Even vehicles are phones posting JSON over HTTP, odd ones
                // firmware units publishing Protobuf over MQTT.
                let phone = v % 2 == 0;
                let (vehicle, payload, encoding, gateway, client) = if phone {
                    let id = format!("phone-berlin-{v:04}");
                    let payload = json_batch_of(&id, PINGS_PER_VEHICLE, now);
                    let client = Some(Arc::from(id.as_str()));
                    (id, payload, Encoding::Json, Gateway::Http, client)
                } else {
                    let id = format!("truck-berlin-{v:04}");
                    let payload = proto_batch_of(&id, PINGS_PER_VEHICLE, now);
                    (id, payload, Encoding::Protobuf, Gateway::Mqtt, None)
                };
                let decoded = decode_message(
                    &Bytes::from(payload),
                    encoding,
                    VehicleScope::Topic(&vehicle),
                    &validator,
                    now,
                )
                .expect("fixture message is accepted");
                assert_eq!(decoded.len(), PINGS_PER_VEHICLE, "{vehicle}: ping count");
                decoded
                    .into_iter()
                    .enumerate()
                    .map(|(k, ping)| {
                        let ping = ping.expect("fixture ping is valid");
                        // Received a little after the device stamped it.
                        let latency = 80 + ((v * 37 + k * 11) % 400) as i64;
                        let origin = Origin {
                            gateway,
                            client: client.clone(),
                            received_at: ping.ts_ms + latency,
                        };
                        enricher.enrich(Accepted {
                            ping,
                            origin,
                            ack: Ack::none(),
                        })
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
            })
            .collect();
        let mut records = Vec::with_capacity(ROWS);
        for _ in 0..PINGS_PER_VEHICLE {
            records.extend(per_vehicle.iter_mut().filter_map(Iterator::next));
        }
        assert_eq!(records.len(), ROWS);
        assert!(
            records.iter().all(|r| !r.h3.is_empty()),
            "every ping has H3 cells"
        );
        Self { records }
    }

    /// Fresh copies of the records for one iteration, and the acks that
    /// settle when the sink has made them durable.
    fn batch(&self) -> (Vec<SinkRecord>, Vec<BatchAck>) {
        let mut records = Vec::with_capacity(ROWS);
        let mut acks = Vec::with_capacity(ROWS.div_ceil(ACK_BATCH));
        for chunk in self.records.chunks(ACK_BATCH) {
            let batch = BatchAck::new();
            records.extend(chunk.iter().map(|r| {
                SinkRecord::Telemetry(TelemetryRecord {
                    schema_version: r.schema_version,
                    ping: r.ping.clone(),
                    origin: r.origin.clone(),
                    h3: r.h3.clone(),
                    enrichment: r.enrichment.clone(),
                    ack: batch.ack(),
                })
            }));
            acks.push(batch);
        }
        (records, acks)
    }
}

/// A sink running on the benchmark's runtime, fed by `tx`.
struct Running<E> {
    tx: mpsc::Sender<SinkRecord>,
    task: JoinHandle<Result<(), E>>,
}

impl<E: std::fmt::Debug> Running<E> {
    /// Closes the input and waits for the sink to drain and return.
    async fn stop(self) {
        drop(self.tx);
        let result = self.task.await.expect("sink task did not panic");
        assert!(result.is_ok(), "sink failed: {result:?}");
    }
}

/// The timed part of a sink case: sends every record, then waits until
/// every ack has settled. Panics unless all are `Delivered`.
async fn deliver(
    tx: &mpsc::Sender<SinkRecord>,
    records: Vec<SinkRecord>,
    acks: Vec<BatchAck>,
) -> Duration {
    let started = Instant::now();
    let delivery = async {
        for record in records {
            tx.send(record).await.expect("sink is running");
        }
        futures::future::join_all(acks.into_iter().map(BatchAck::wait)).await
    };
    let statuses = tokio::time::timeout(PATIENCE, delivery)
        .await
        .expect("every ack settles in time");
    let elapsed = started.elapsed();
    let failed = statuses
        .iter()
        .filter(|s| **s != AckStatus::Delivered)
        .count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} ack batches failed",
        statuses.len()
    );
    elapsed
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---- PostgreSQL --------------------------------------------------------------

fn pg_url() -> String {
    std::env::var("FLEETPIPE_BENCH_PG_URL")
        .or_else(|_| std::env::var("FLEETPIPE_TEST_PG_URL"))
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pg_connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("sinks bench: PostgreSQL connection closed: {e}");
        }
    });
    Ok(client)
}

/// The benchmark's schema, `fp_bench_<pid>`; dropped when this is dropped
/// (also when a case panics).
struct BenchSchema {
    url: String,
    name: String,
}

impl BenchSchema {
    fn new() -> Self {
        Self {
            url: pg_url(),
            name: format!("fp_bench_{}", std::process::id()),
        }
    }

    /// The schema as a quoted identifier (the name needs no escaping).
    fn ident(&self) -> String {
        format!("\"{}\"", self.name)
    }

    /// The sink's configuration: the defaults, in this schema.
    fn config(&self) -> TimescaleConfig {
        TimescaleConfig {
            schema: self.name.clone(),
            ..TimescaleConfig::new(self.url.clone())
        }
    }

    async fn drop_schema(&self, db: &Client) {
        db.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.ident()))
            .await
            .expect("drop the bench schema");
    }

    /// Drops a leftover of this schema and creates it afresh with the
    /// sink's migrations; returns a connection for setup and checks, or
    /// `None` when the server is unreachable.
    async fn create(&self) -> Option<Client> {
        let db = match pg_connect(&self.url).await {
            Ok(db) => db,
            Err(e) => {
                eprintln!(
                    "sinks bench: PostgreSQL at {} is unreachable ({e}); skipping the timescale \
                     group (set FLEETPIPE_BENCH_PG_URL)",
                    self.url
                );
                return None;
            }
        };
        db.batch_execute("SET client_min_messages = warning")
            .await
            .expect("session setup");
        self.drop_schema(&db).await;
        let mode = migrate(&self.config()).await.expect("migrations apply");
        let version: String = db
            .query_one("SHOW server_version", &[])
            .await
            .expect("server version")
            .get(0);
        eprintln!(
            "sinks bench: schema {} on PostgreSQL {version}, storage mode: {mode}",
            self.name
        );
        if mode != StorageMode::Plain {
            eprintln!("sinks bench: note: TimescaleDB is active, telemetry is a hypertable");
        }
        Some(db)
    }

    /// Empties the tables the cases write to (not timed).
    async fn truncate(&self, db: &Client) {
        let s = self.ident();
        db.batch_execute(&format!("TRUNCATE {s}.telemetry, {s}.vehicle_latest"))
            .await
            .expect("truncate");
    }

    async fn count(&self, db: &Client, table: &str) -> i64 {
        db.query_one(
            &format!("SELECT count(*) FROM {}.{table}", self.ident()),
            &[],
        )
        .await
        .expect("count rows")
        .get(0)
    }
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.ident());
        // Drop cannot await; a thread with a runtime of its own can (and
        // works while another runtime is being torn down).
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let dropped = match pg_connect(&url).await {
                    Ok(db) => db.batch_execute(&sql).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = dropped {
                    eprintln!("sinks bench: could not drop the bench schema: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// One telemetry row as the sink copies it: the same conversion as the
/// sink's `StageRow`, prepared before the timer starts.
fn copy_row(r: &TelemetryRecord) -> CopyRow {
    let p = &r.ping;
    let mut row = CopyRow::new(p).expect("the fleet's pings fit the table");
    row.received_at =
        UNIX_EPOCH + Duration::from_millis(r.origin.received_at.try_into().expect("after 1970"));
    row.source = r.origin.gateway.as_str();
    // The finest cell, as the sink stores it.
    row.h3_cell =
        r.h3.iter()
            .max_by_key(|(res, _)| *res)
            .map(|(_, cell)| i64::try_from(*cell).expect("H3 index fits bigint"));
    row.fences = r.enrichment.fences.iter().map(|f| f.to_string()).collect();
    row.distance_m = r.enrichment.distance_m;
    row.derived_speed_kmh = r.enrichment.derived_speed_kmh;
    row.flags = r.enrichment.flags.names().map(str::to_owned).collect();
    row
}

/// Copies `rows` into `telemetry` in one transaction and commits.
async fn copy_rows(client: &mut Client, copy: &Statement, rows: &[CopyRow]) {
    let copied = copy_batch(client, copy, rows).await.expect("COPY a batch");
    assert_eq!(copied, rows.len() as u64, "rows copied");
}

fn timescale(c: &mut Criterion) {
    // Declared before the runtime, so it is dropped after it: the sink's
    // connections are gone when the schema is dropped.
    let schema = BenchSchema::new();
    let rt = runtime();
    let Some(mut db) = rt.block_on(schema.create()) else {
        return;
    };
    let fleet = Fleet::new();

    let mut group = c.benchmark_group("timescale");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(ROWS as u64));

    let mut sink: Option<Running<_>> = None;
    group.bench_function("sink_rows", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                if sink.is_none() {
                    let started = TimescaleSink::connect(schema.config())
                        .await
                        .expect("sink connects");
                    let (tx, rx) = mpsc::channel(SINK_QUEUE);
                    let running = Running {
                        tx,
                        task: tokio::spawn(started.run(rx)),
                    };
                    // Warm-up: opens the pool's connections (and their
                    // staging tables).
                    let (records, acks) = fleet.batch();
                    deliver(&running.tx, records, acks).await;
                    sink = Some(running);
                }
                let tx = &sink.as_ref().expect("sink started").tx;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    schema.truncate(&db).await;
                    let (records, acks) = fleet.batch();
                    total += deliver(tx, records, acks).await;
                    assert_eq!(schema.count(&db, "telemetry").await, ROWS as i64);
                    assert_eq!(schema.count(&db, "vehicle_latest").await, VEHICLES as i64);
                }
                total
            })
        });
    });
    if let Some(running) = sink.take() {
        rt.block_on(running.stop());
    }

    let rows: Vec<CopyRow> = fleet.records.iter().map(copy_row).collect();
    let copy = rt
        .block_on(db.prepare(&format!(
            "COPY {}.telemetry ({TELEMETRY_COPY_COLUMNS}) FROM STDIN (FORMAT binary)",
            schema.ident()
        )))
        .expect("prepare COPY");
    for (name, batch_rows) in [
        ("raw_copy", ROWS),
        (
            "raw_copy_batched",
            TimescaleConfig::default_batch_max_rows(),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        schema.truncate(&db).await;
                        let started = Instant::now();
                        for chunk in rows.chunks(batch_rows) {
                            copy_rows(&mut db, &copy, chunk).await;
                        }
                        total += started.elapsed();
                        assert_eq!(schema.count(&db, "telemetry").await, ROWS as i64);
                    }
                    total
                })
            });
        });
    }
    group.finish();

    rt.block_on(schema.drop_schema(&db));
}

// ---- Kafka -------------------------------------------------------------------

fn kafka(c: &mut Criterion) {
    let rt = runtime();
    let fleet = Fleet::new();

    let mut group = c.benchmark_group("kafka");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(ROWS as u64));

    let mut sink: Option<Running<_>> = None;
    group.bench_function("sink_records", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                if sink.is_none() {
                    let started = KafkaSink::new(KafkaConfig::new("embedded"))
                        .await
                        .expect("embedded Kafka sink starts");
                    let (tx, rx) = mpsc::channel(SINK_QUEUE);
                    let running = Running {
                        tx,
                        task: tokio::spawn(started.run(rx)),
                    };
                    // Warm-up: metadata, broker connections, producer id.
                    let (records, acks) = fleet.batch();
                    deliver(&running.tx, records, acks).await;
                    sink = Some(running);
                }
                let tx = &sink.as_ref().expect("sink started").tx;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (records, acks) = fleet.batch();
                    total += deliver(tx, records, acks).await;
                }
                total
            })
        });
    });
    if let Some(running) = sink.take() {
        rt.block_on(running.stop());
    }
    group.finish();
}

criterion_group!(benches, timescale, kafka);
criterion_main!(benches);
