//! Tests of the file sink: records in, files and acknowledgements out.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleetpipe_model::{
    Ack, AckStatus, BatchAck, DeadLetter, Enrichment, EventType, Gateway, Origin, Ping, PingFlags,
    RejectReason, SCHEMA_VERSION, SinkRecord, TelemetryRecord, VehicleEvent, VehicleId,
};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::writer::{Stream, encode_line, parse_file_name, utc_stamp};
use super::{FileSink, FileSinkConfig, FileSinkError};

/// 2026-11-23T08:00:00.000Z.
const T0_MS: i64 = 1_795_420_800_000;
/// Raw bytes of every dead letter and their base64.
const RAW: &[u8] = b"{\"lat\":91.5}";
const RAW_BASE64: &str = "eyJsYXQiOjkxLjV9";
/// Upper bound for anything a test awaits, so a bug hangs no test run.
const PATIENCE: Duration = Duration::from_secs(20);

// ---- fixtures -------------------------------------------------------------

fn origin() -> Origin {
    Origin {
        gateway: Gateway::Http,
        client: Some(Arc::from("dev-7")),
        received_at: T0_MS + 500,
    }
}

fn ping(seq: u64) -> Ping {
    let vehicle_id = VehicleId::parse("van-42").expect("valid id");
    Ping {
        seq: Some(seq),
        speed_kmh: Some(42.5),
        ignition: Some(true),
        ..Ping::new(vehicle_id, T0_MS + seq as i64, 52.52, 13.405)
    }
}

fn telemetry(seq: u64, ack: Ack) -> SinkRecord {
    SinkRecord::Telemetry(TelemetryRecord {
        schema_version: SCHEMA_VERSION,
        ping: ping(seq),
        origin: origin(),
        h3: vec![(7, 0x871f_1d48_9fff_ffff)],
        enrichment: Enrichment::default(),
        ack,
    })
}

/// Event number `n`: every type in turn, about vehicle `van-42`.
fn event(n: u64, ack: Ack) -> SinkRecord {
    let data =
        RawValue::from_string(format!(r#"{{"n":{n},"fence_id":"depot-7"}}"#)).expect("valid JSON");
    SinkRecord::Event(VehicleEvent::new(
        Arc::from("fleetpipe-test"),
        EventType::ALL[n as usize % EventType::ALL.len()],
        VehicleId::parse("van-42").expect("valid id"),
        &format!("key-{n}"),
        T0_MS + n as i64,
        data,
        ack,
    ))
}

fn dead_letter(n: u64, ack: Ack) -> SinkRecord {
    SinkRecord::DeadLetter(DeadLetter {
        schema_version: SCHEMA_VERSION,
        reason: RejectReason::CoordInvalid,
        detail: format!("dead letter {n}: lat 91.5 is outside [-90, 90]"),
        vehicle_id: Some(VehicleId::parse("van-42").expect("valid id")),
        topic: Some("fleet/v1/van-42/pings".to_owned()),
        origin: origin(),
        raw: Bytes::from_static(RAW),
        ack,
    })
}

fn config(dir: &Path) -> FileSinkConfig {
    FileSinkConfig::new(dir)
}

/// Starts a sink on `config` fed by a queue of `capacity`.
fn start(
    config: FileSinkConfig,
    capacity: usize,
) -> (
    mpsc::Sender<SinkRecord>,
    JoinHandle<Result<(), FileSinkError>>,
) {
    let sink = FileSink::new(config).expect("sink starts");
    let (tx, rx) = mpsc::channel(capacity);
    (tx, tokio::spawn(sink.run(rx)))
}

async fn send(tx: &mpsc::Sender<SinkRecord>, record: SinkRecord) {
    tx.send(record).await.expect("sink is running");
}

/// Closes the input and waits for the sink to drain and return.
async fn finish(tx: mpsc::Sender<SinkRecord>, run: JoinHandle<Result<(), FileSinkError>>) {
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

/// The stream's files, sorted by name.
fn files(root: &Path, stream: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root.join(stream))
        .expect("stream dir readable")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 file name")
}

fn counter_of(path: &Path, stream: Stream) -> u64 {
    parse_file_name(stream, file_name(path))
        .map(|(_, counter)| counter)
        .unwrap_or_else(|| panic!("{} is not a sink file name", path.display()))
}

/// Every line of `path` parsed as JSON; the file must be non-empty and end
/// with a newline.
fn lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).expect("file readable");
    assert!(!text.is_empty(), "{} is empty", path.display());
    assert!(text.ends_with('\n'), "{} ends mid-line", path.display());
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn all_lines(root: &Path, stream: &str) -> Vec<Value> {
    files(root, stream).iter().flat_map(|p| lines(p)).collect()
}

fn seq(line: &Value) -> u64 {
    line["seq"].as_u64().expect("seq")
}

fn seqs(path: &Path) -> Vec<u64> {
    lines(path).iter().map(seq).collect()
}

// ---- records and acks ------------------------------------------------------

#[tokio::test]
async fn every_record_lands_once_in_its_stream_with_its_fields() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(config(tmp.path()), 8);
    let batch = BatchAck::new();
    for i in 0..60 {
        send(&tx, telemetry(i, batch.ack())).await;
        if i % 6 == 0 {
            send(&tx, dead_letter(i / 6, batch.ack())).await;
        }
    }
    finish(tx, run).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);

    let telemetry_files = files(tmp.path(), "telemetry");
    assert_eq!(telemetry_files.len(), 1, "{telemetry_files:?}");
    assert!(
        file_name(&telemetry_files[0]).starts_with("telemetry-")
            && file_name(&telemetry_files[0]).ends_with("-0001.ndjson"),
        "{telemetry_files:?}"
    );
    let telemetry = all_lines(tmp.path(), "telemetry");
    assert_eq!(
        telemetry.iter().map(seq).collect::<Vec<_>>(),
        (0..60).collect::<Vec<_>>()
    );
    let first = &telemetry[0];
    assert_eq!(first["schema_version"], SCHEMA_VERSION);
    assert_eq!(first["vehicle_id"], "van-42");
    assert_eq!(first["ts"], "2026-11-23T08:00:00.000Z");
    assert_eq!(first["lat"], 52.52);
    assert_eq!(first["lon"], 13.405);
    assert_eq!(first["speed_kmh"], 42.5);
    assert_eq!(first["ignition"], true);
    assert_eq!(first["source"], "http");
    assert_eq!(first["client"], "dev-7");
    assert_eq!(first["received_at"], "2026-11-23T08:00:00.500Z");
    assert_eq!(first["h3"]["7"], "871f1d489fffffff");
    assert!(
        first.get("ack").is_none() && first.get("alt_m").is_none(),
        "{first}"
    );
    assert_eq!(telemetry[59]["ts"], "2026-11-23T08:00:00.059Z");

    let dead = all_lines(tmp.path(), "dead_letter");
    assert_eq!(dead.len(), 10);
    for (n, line) in dead.iter().enumerate() {
        assert_eq!(
            line["detail"],
            format!("dead letter {n}: lat 91.5 is outside [-90, 90]")
        );
        assert_eq!(line["schema_version"], SCHEMA_VERSION);
        assert_eq!(line["reason"], "coord_invalid");
        assert_eq!(line["vehicle_id"], "van-42");
        assert_eq!(line["topic"], "fleet/v1/van-42/pings");
        assert_eq!(line["source"], "http");
        assert_eq!(line["raw"], RAW_BASE64);
        assert!(
            line.get("seq").is_none(),
            "telemetry in the dead-letter stream: {line}"
        );
    }
    let dead_files = files(tmp.path(), "dead_letter");
    assert_eq!(dead_files.len(), 1);
    assert!(file_name(&dead_files[0]).starts_with("dead_letter-"));
}

#[tokio::test]
async fn ack_resolves_delivered_only_after_the_lines_are_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(config(tmp.path())).expect("sink starts");
    let (tx, rx) = mpsc::channel(16);

    // Queued but not yet written: nobody may hear "delivered".
    let batch = BatchAck::new();
    for i in 0..5 {
        send(&tx, telemetry(i, batch.ack())).await;
    }
    send(&tx, dead_letter(0, batch.ack())).await;
    let waiter = tokio::spawn(batch.wait());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "acknowledged before the sink ran");
    assert!(files(tmp.path(), "telemetry").is_empty());

    let run = tokio::spawn(sink.run(rx));
    let status = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("batch settles")
        .expect("waiter ran");
    assert_eq!(status, AckStatus::Delivered);
    // The sink is still running (the input is open): the lines are there
    // because of the ack, not because of shutdown.
    assert!(!run.is_finished());
    assert_eq!(all_lines(tmp.path(), "telemetry").len(), 5);
    assert_eq!(all_lines(tmp.path(), "dead_letter").len(), 1);

    // And again for a later batch going into the same, still open file.
    let batch = BatchAck::new();
    for i in 5..9 {
        send(&tx, telemetry(i, batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    let telemetry = all_lines(tmp.path(), "telemetry");
    assert_eq!(
        telemetry.iter().map(seq).collect::<Vec<_>>(),
        (0..9).collect::<Vec<_>>()
    );
    assert_eq!(files(tmp.path(), "telemetry").len(), 1);

    finish(tx, run).await;
}

#[tokio::test]
async fn fsync_off_still_writes_before_acknowledging() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(
        FileSinkConfig {
            fsync: false,
            ..config(tmp.path())
        },
        4,
    );
    let batch = BatchAck::new();
    for i in 0..10 {
        send(&tx, telemetry(i, batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(all_lines(tmp.path(), "telemetry").len(), 10);
    finish(tx, run).await;
}

#[tokio::test]
async fn untracked_acks_are_written_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(config(tmp.path()), 4);
    for i in 0..3 {
        send(&tx, telemetry(i, Ack::none())).await;
        send(&tx, dead_letter(i, Ack::none())).await;
    }
    finish(tx, run).await;
    assert_eq!(all_lines(tmp.path(), "telemetry").len(), 3);
    assert_eq!(all_lines(tmp.path(), "dead_letter").len(), 3);
}

#[tokio::test]
async fn events_go_to_their_own_stream_as_cloudevents_acked_once_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sink = FileSink::new(config(tmp.path())).expect("sink starts");
    let (tx, rx) = mpsc::channel(64);

    // Queued but not yet written: nobody may hear "delivered".
    let batch = BatchAck::new();
    for n in 0..EventType::ALL.len() as u64 {
        send(&tx, event(n, batch.ack())).await;
        send(&tx, telemetry(n, batch.ack())).await;
    }
    // Timer events carry no ack of a sender; they are written all the same.
    send(&tx, event(100, Ack::none())).await;
    let waiter = tokio::spawn(batch.wait());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "acknowledged before the sink ran");
    assert!(files(tmp.path(), "events").is_empty());

    let run = tokio::spawn(sink.run(rx));
    let status = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("batch settles")
        .expect("waiter ran");
    assert_eq!(status, AckStatus::Delivered);
    // Still running: the lines are there because of the ack.
    assert!(!run.is_finished());
    let event_files = files(tmp.path(), "events");
    assert_eq!(event_files.len(), 1, "{event_files:?}");
    assert!(
        file_name(&event_files[0]).starts_with("events-")
            && file_name(&event_files[0]).ends_with("-0001.ndjson"),
        "{event_files:?}"
    );
    assert_eq!(counter_of(&event_files[0], Stream::Event), 1);
    let events = all_lines(tmp.path(), "events");
    assert_eq!(events.len(), EventType::ALL.len() + 1);
    for (n, (line, t)) in events.iter().zip(EventType::ALL).enumerate() {
        let SinkRecord::Event(sent) = event(n as u64, Ack::none()) else {
            unreachable!()
        };
        // Exactly the CloudEvents JSON of the model, nothing else.
        assert_eq!(
            *line,
            serde_json::from_str::<Value>(&sent.to_json()).expect("JSON"),
            "event {n}"
        );
        assert_eq!(line["specversion"], "1.0");
        assert_eq!(line["type"], t.as_str());
        assert_eq!(line["id"], sent.id.as_str());
        assert_eq!(line["source"], "fleetpipe-test");
        assert_eq!(line["subject"], "van-42");
        assert_eq!(
            line["time"],
            format!("2026-11-23T08:00:00.{n:03}Z").as_str()
        );
        assert_eq!(line["datacontenttype"], "application/json");
        assert_eq!(line["data"]["n"], n);
        assert_eq!(line["data"]["fence_id"], "depot-7");
        assert!(line.get("ack").is_none(), "{line}");
    }
    assert_eq!(events[EventType::ALL.len()]["data"]["n"], 100);
    // Telemetry stays in its own stream, events never mix into it.
    let telemetry = all_lines(tmp.path(), "telemetry");
    assert_eq!(telemetry.len(), EventType::ALL.len());
    assert!(telemetry.iter().all(|l| l.get("specversion").is_none()));

    // A later batch goes into the same, still open file.
    let batch = BatchAck::new();
    send(&tx, event(200, batch.ack())).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    assert_eq!(
        all_lines(tmp.path(), "events").len(),
        EventType::ALL.len() + 2
    );
    assert_eq!(files(tmp.path(), "events").len(), 1);
    finish(tx, run).await;
}

#[tokio::test]
async fn a_failed_event_write_fails_only_the_events_and_the_sink_recovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(config(tmp.path()), 8);

    // The events directory turns into a regular file.
    let events_dir = tmp.path().join("events");
    fs::remove_dir(&events_dir).expect("rmdir");
    fs::write(&events_dir, "in the way").expect("block");

    let lost = BatchAck::new();
    let kept = BatchAck::new();
    send(&tx, event(0, lost.ack())).await;
    send(&tx, event(1, lost.ack())).await;
    send(&tx, telemetry(0, kept.ack())).await;
    send(&tx, dead_letter(0, kept.ack())).await;
    assert_eq!(wait(lost).await, AckStatus::Failed);
    assert_eq!(wait(kept).await, AckStatus::Delivered);
    assert_eq!(all_lines(tmp.path(), "telemetry").len(), 1);
    assert!(!run.is_finished(), "the sink must keep running");

    fs::remove_file(&events_dir).expect("unblock");
    fs::create_dir(&events_dir).expect("mkdir");
    let batch = BatchAck::new();
    send(&tx, event(2, batch.ack())).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    let events = all_lines(tmp.path(), "events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["n"], 2);
    finish(tx, run).await;
}

#[tokio::test]
async fn enriched_telemetry_carries_its_enrichment_fields() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(config(tmp.path()), 8);
    let batch = BatchAck::new();
    let mut enriched = telemetry(1, batch.ack());
    if let SinkRecord::Telemetry(r) = &mut enriched {
        r.enrichment = Enrichment {
            fences: vec![Arc::from("depot-7"), Arc::from("city-centre")],
            distance_m: Some(152.25),
            derived_speed_kmh: Some(54.81),
            flags: PingFlags {
                late: true,
                duplicate: false,
                jump: true,
            },
        };
    }
    send(&tx, enriched).await;
    send(&tx, telemetry(2, batch.ack())).await;
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    finish(tx, run).await;

    let lines = all_lines(tmp.path(), "telemetry");
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0]["fences"],
        serde_json::json!(["depot-7", "city-centre"])
    );
    assert_eq!(lines[0]["distance_m"], 152.25);
    assert_eq!(lines[0]["derived_speed_kmh"], 54.81);
    assert_eq!(lines[0]["flags"], serde_json::json!(["late", "jump"]));
    // Nothing derived: the fields are absent, never null or empty.
    for field in ["fences", "distance_m", "derived_speed_kmh", "flags"] {
        assert!(lines[1].get(field).is_none(), "{field}: {}", lines[1]);
    }
}

// ---- rotation and retention ------------------------------------------------

/// Length of the longest line `telemetry(seq)` produces for `seq < n`.
fn max_line_len(n: u64) -> u64 {
    (0..n)
        .map(|i| {
            let SinkRecord::Telemetry(r) = telemetry(i, Ack::none()) else {
                unreachable!()
            };
            serde_json::to_vec(&r).expect("encodes").len() as u64 + 1
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn rotates_by_size_in_write_order_within_one_batch_of_the_limit() {
    const RECORDS: u64 = 200;
    const BATCH: usize = 4;
    const MAX_BYTES: u64 = 2_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(
        FileSinkConfig {
            max_file_bytes: MAX_BYTES,
            batch_max_records: BATCH,
            ..config(tmp.path())
        },
        BATCH,
    );
    for i in 0..RECORDS {
        send(&tx, telemetry(i, Ack::none())).await;
    }
    finish(tx, run).await;

    let files = files(tmp.path(), "telemetry");
    let line = max_line_len(RECORDS);
    // 200 lines of ~200 bytes make ~40 kB: well over ten 2 kB files.
    assert!(files.len() >= 10, "only {} files", files.len());
    // Sorted by name is sorted by counter is write order.
    let counters: Vec<u64> = files
        .iter()
        .map(|f| counter_of(f, Stream::Telemetry))
        .collect();
    assert_eq!(counters, (1..=files.len() as u64).collect::<Vec<_>>());
    let mut all = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let size = fs::metadata(file).expect("metadata").len();
        assert!(
            size < MAX_BYTES + BATCH as u64 * line,
            "{} holds {size} bytes, more than one batch over {MAX_BYTES}",
            file.display()
        );
        if i + 1 < files.len() {
            assert!(
                size >= MAX_BYTES,
                "{} rotated early at {size} bytes",
                file.display()
            );
        }
        all.extend(seqs(file));
    }
    assert_eq!(
        all,
        (0..RECORDS).collect::<Vec<_>>(),
        "lost, duplicated or reordered"
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_max_files() {
    const MAX_FILES: usize = 3;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(
        FileSinkConfig {
            max_file_bytes: 1_000,
            batch_max_records: 2,
            max_files: MAX_FILES,
            ..config(tmp.path())
        },
        2,
    );
    let batch = BatchAck::new();
    for i in 0..100 {
        send(&tx, telemetry(i, batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    // While running: at most MAX_FILES closed files plus the open one.
    let running = files(tmp.path(), "telemetry");
    assert!(running.len() <= MAX_FILES + 1, "{running:?}");
    for i in 100..200 {
        send(&tx, telemetry(i, Ack::none())).await;
    }
    finish(tx, run).await;

    // After shutdown every file is closed: exactly the newest MAX_FILES are
    // left, holding the newest records, contiguous and in order.
    let kept = files(tmp.path(), "telemetry");
    assert_eq!(kept.len(), MAX_FILES, "{kept:?}");
    let counters: Vec<u64> = kept
        .iter()
        .map(|f| counter_of(f, Stream::Telemetry))
        .collect();
    let last = counters[MAX_FILES - 1];
    assert!(
        last > 20,
        "expected many rotations, the last file is #{last}"
    );
    assert_eq!(counters, ((last - 2)..=last).collect::<Vec<_>>());
    let kept_seqs: Vec<u64> = kept.iter().flat_map(|f| seqs(f)).collect();
    let first = kept_seqs[0];
    assert!(first > 0);
    assert_eq!(kept_seqs, (first..200).collect::<Vec<_>>());
    // The other stream never rotated, so it has nothing to delete.
    assert!(files(tmp.path(), "dead_letter").is_empty());
}

#[tokio::test]
async fn rotates_by_age_between_batches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(
        FileSinkConfig {
            max_file_age: Duration::from_millis(50),
            ..config(tmp.path())
        },
        8,
    );
    for round in 0..3u64 {
        let batch = BatchAck::new();
        for i in 0..4 {
            send(&tx, telemetry(round * 10 + i, batch.ack())).await;
        }
        assert_eq!(wait(batch).await, AckStatus::Delivered);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    finish(tx, run).await;

    // Each round's records are in files of their own (a slow host may split
    // a round, but never mixes two rounds in one file), in order.
    let files = files(tmp.path(), "telemetry");
    assert!(files.len() >= 3, "{files:?}");
    let mut all = Vec::new();
    for file in &files {
        let seqs = seqs(file);
        let round = seqs[0] / 10;
        assert!(
            seqs.iter().all(|s| s / 10 == round),
            "{}: {seqs:?}",
            file.display()
        );
        all.extend(seqs);
    }
    assert_eq!(all, vec![0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]);
}

#[tokio::test]
async fn an_idle_file_is_rotated_when_it_expires() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(
        FileSinkConfig {
            max_file_age: Duration::from_millis(50),
            max_files: 1,
            ..config(tmp.path())
        },
        8,
    );
    for round in 0..2u64 {
        let batch = BatchAck::new();
        send(&tx, telemetry(round, batch.ack())).await;
        assert_eq!(wait(batch).await, AckStatus::Delivered);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // No record arrives any more, yet the second file expires, is closed,
    // and retention (1 closed file) removes the first one, all while the
    // input is still open.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let files = files(tmp.path(), "telemetry");
        if files.len() == 1 {
            assert_eq!(seqs(&files[0]), vec![1]);
            assert_eq!(counter_of(&files[0], Stream::Telemetry), 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never rotated: {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!run.is_finished());
    finish(tx, run).await;
}

// ---- restart ---------------------------------------------------------------

#[tokio::test]
async fn restart_continues_numbering_and_never_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let small = FileSinkConfig {
        max_file_bytes: 600,
        batch_max_records: 2,
        ..config(tmp.path())
    };

    let (tx, run) = start(small.clone(), 2);
    for i in 0..10 {
        send(&tx, telemetry(i, Ack::none())).await;
    }
    send(&tx, dead_letter(0, Ack::none())).await;
    finish(tx, run).await;
    let first_run = files(tmp.path(), "telemetry");
    assert!(first_run.len() >= 2, "{first_run:?}");

    // A file from the future with a higher counter, and a stranger.
    let planted = tmp
        .path()
        .join("telemetry/telemetry-20991231T235959Z-0042.ndjson");
    fs::write(&planted, "planted\n").expect("plant");
    fs::write(tmp.path().join("telemetry/README"), "not ours").expect("plant");
    let before: Vec<(PathBuf, Vec<u8>)> = files(tmp.path(), "telemetry")
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    let dead_before = files(tmp.path(), "dead_letter");

    let (tx, run) = start(small, 2);
    for i in 100..110 {
        send(&tx, telemetry(i, Ack::none())).await;
    }
    send(&tx, dead_letter(1, Ack::none())).await;
    finish(tx, run).await;

    for (path, bytes) in &before {
        assert_eq!(
            &fs::read(path).expect("old file still there"),
            bytes,
            "{} changed",
            path.display()
        );
    }
    let after = files(tmp.path(), "telemetry");
    let new: Vec<&PathBuf> = after
        .iter()
        .filter(|p| !before.iter().any(|(b, _)| b == *p))
        .collect();
    assert!(new.len() >= 2, "{new:?}");
    let counters: Vec<u64> = new
        .iter()
        .map(|f| counter_of(f, Stream::Telemetry))
        .collect();
    assert_eq!(counters, (43..43 + new.len() as u64).collect::<Vec<_>>());
    // Name order is write order even though the planted file claims a later
    // open time than now.
    let sink_files: Vec<&PathBuf> = after
        .iter()
        .filter(|p| parse_file_name(Stream::Telemetry, file_name(p)).is_some())
        .collect();
    assert_eq!(sink_files[sink_files.len() - new.len() - 1], &planted);
    let new_seqs: Vec<u64> = new.iter().flat_map(|f| seqs(f)).collect();
    assert_eq!(new_seqs, (100..110).collect::<Vec<_>>());

    let dead_after = files(tmp.path(), "dead_letter");
    assert_eq!(dead_after.len(), dead_before.len() + 1);
    assert_eq!(counter_of(&dead_after[1], Stream::DeadLetter), 2);
}

// ---- failures --------------------------------------------------------------

#[test]
fn an_unusable_dir_fails_new_naming_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let blocker = tmp.path().join("blocker");
    fs::write(&blocker, "a regular file").expect("write");

    let dir = blocker.join("data");
    let err = FileSink::new(config(&dir)).expect_err("a dir under a file is unusable");
    assert!(matches!(err, FileSinkError::Io { .. }), "{err:?}");
    assert!(
        err.path().is_some_and(|p| p.starts_with(&blocker)),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&blocker.display().to_string()), "{msg}");

    // A stream directory taken by a file is named too.
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).expect("mkdir");
    fs::write(root.join("dead_letter"), "a regular file").expect("write");
    let err = FileSink::new(config(&root)).expect_err("stream dir is a file");
    let msg = err.to_string();
    assert!(
        msg.contains(&root.join("dead_letter").display().to_string()),
        "{msg}"
    );
}

#[test]
fn zero_batch_max_records_is_rejected_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = FileSink::new(FileSinkConfig {
        batch_max_records: 0,
        ..config(tmp.path())
    })
    .expect_err("0 is invalid");
    assert!(matches!(err, FileSinkError::ZeroBatchMaxRecords));
    assert!(err.to_string().contains("batch_max_records"), "{err}");
}

#[tokio::test]
async fn a_failed_write_fails_only_that_batch_and_the_sink_recovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tx, run) = start(config(tmp.path()), 8);

    // The telemetry directory turns into a regular file: no file can be
    // created in it.
    let telemetry_dir = tmp.path().join("telemetry");
    fs::remove_dir(&telemetry_dir).expect("rmdir");
    fs::write(&telemetry_dir, "in the way").expect("block");

    let lost = BatchAck::new();
    let kept = BatchAck::new();
    for i in 0..3 {
        send(&tx, telemetry(i, lost.ack())).await;
    }
    send(&tx, dead_letter(0, kept.ack())).await;
    assert_eq!(wait(lost).await, AckStatus::Failed);
    // The dead letters of the same batch are unaffected.
    assert_eq!(wait(kept).await, AckStatus::Delivered);
    assert_eq!(all_lines(tmp.path(), "dead_letter").len(), 1);
    assert!(!run.is_finished(), "the sink must keep running");

    // Still broken: still failing, still running.
    let lost = BatchAck::new();
    send(&tx, telemetry(3, lost.ack())).await;
    assert_eq!(wait(lost).await, AckStatus::Failed);

    // The directory is back: later batches are delivered.
    fs::remove_file(&telemetry_dir).expect("unblock");
    fs::create_dir(&telemetry_dir).expect("mkdir");
    let batch = BatchAck::new();
    for i in 10..13 {
        send(&tx, telemetry(i, batch.ack())).await;
    }
    assert_eq!(wait(batch).await, AckStatus::Delivered);
    let telemetry = all_lines(tmp.path(), "telemetry");
    assert_eq!(
        telemetry.iter().map(seq).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );

    finish(tx, run).await;
}

// ---- metrics ---------------------------------------------------------------

#[test]
fn metrics_follow_the_contract() {
    use metrics_util::debugging::DebuggingRecorder;

    let tmp = tempfile::tempdir().expect("tempdir");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sink = FileSink::new(FileSinkConfig {
        // Every batch fills its file: one rotation per batch and stream.
        max_file_bytes: 1,
        ..config(tmp.path())
    })
    .expect("sink starts");
    let telemetry_dir = tmp.path().join("telemetry");

    // Everything runs on this thread, where the local recorder is installed.
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let (tx, rx) = mpsc::channel(8);
            let producer = async move {
                let batch = BatchAck::new();
                for i in 0..3 {
                    send(&tx, telemetry(i, batch.ack())).await;
                }
                send(&tx, dead_letter(0, batch.ack())).await;
                send(&tx, dead_letter(1, batch.ack())).await;
                send(&tx, event(0, batch.ack())).await;
                send(&tx, event(1, batch.ack())).await;
                assert_eq!(wait(batch).await, AckStatus::Delivered);
                // One failed batch.
                fs::remove_dir_all(&telemetry_dir).expect("rmdir");
                fs::write(&telemetry_dir, "in the way").expect("block");
                let batch = BatchAck::new();
                send(&tx, telemetry(9, batch.ack())).await;
                assert_eq!(wait(batch).await, AckStatus::Failed);
            };
            let (result, ()) = tokio::join!(sink.run(rx), producer);
            assert!(result.is_ok(), "{result:?}");
        });
    });

    let metrics = crate::test_metrics::Snapshot::take(&snapshotter);
    let counter = |name: &str, labels: &[(&str, &str)]| metrics.counter(name, labels);
    let histogram = |name: &str, labels: &[(&str, &str)]| metrics.histogram(name, labels);

    let tel = [("sink", "file"), ("stream", "telemetry")];
    let dl = [("sink", "file"), ("stream", "dead_letter")];
    let ev = [("sink", "file"), ("stream", "events")];
    assert_eq!(counter("fleetpipe_sink_records_total", &tel), 3);
    assert_eq!(counter("fleetpipe_sink_records_total", &dl), 2);
    assert_eq!(counter("fleetpipe_sink_records_total", &ev), 2);
    let event_bytes: u64 = files(tmp.path(), "events")
        .iter()
        .map(|f| fs::metadata(f).expect("metadata").len())
        .sum();
    assert_eq!(counter("fleetpipe_sink_bytes_total", &ev), event_bytes);
    assert!(counter("fleetpipe_sink_rotations_total", &ev) >= 1);
    let dead_bytes: u64 = files(tmp.path(), "dead_letter")
        .iter()
        .map(|f| fs::metadata(f).expect("metadata").len())
        .sum();
    assert_eq!(counter("fleetpipe_sink_bytes_total", &dl), dead_bytes);
    assert!(counter("fleetpipe_sink_bytes_total", &tel) > 0);
    assert!(counter("fleetpipe_sink_rotations_total", &tel) >= 1);
    assert!(counter("fleetpipe_sink_rotations_total", &dl) >= 1);
    assert_eq!(
        counter(
            "fleetpipe_sink_errors_total",
            &[("sink", "file"), ("kind", "io")]
        ),
        1
    );
    let sizes = histogram("fleetpipe_sink_batch_records", &[("sink", "file")]);
    assert_eq!(sizes.iter().sum::<f64>(), 8.0, "{sizes:?}");
    let seconds = histogram("fleetpipe_sink_batch_seconds", &[("sink", "file")]);
    assert_eq!(seconds.len(), sizes.len());
    assert!(
        seconds.iter().all(|s| *s >= 0.0 && *s < 60.0),
        "{seconds:?}"
    );
}

// ---- configuration ---------------------------------------------------------

#[test]
fn config_defaults_match_the_documentation() {
    let config: FileSinkConfig =
        serde_json::from_str(r#"{"dir": "/var/lib/fleetpipe"}"#).expect("parses");
    assert_eq!(config, FileSinkConfig::new("/var/lib/fleetpipe"));
    assert_eq!(config.max_file_bytes, 128 * 1024 * 1024);
    assert_eq!(config.max_file_age, Duration::from_secs(3600));
    assert_eq!(config.max_files, 0);
    assert!(config.fsync);
    assert_eq!(config.batch_max_records, 1024);
}

#[test]
fn config_reads_every_key() {
    let config: FileSinkConfig = serde_json::from_str(
        r#"{"dir": "d", "max_file_bytes": 10, "max_file_age": "15m", "max_files": 7,
            "fsync": false, "batch_max_records": 3}"#,
    )
    .expect("parses");
    assert_eq!(
        config,
        FileSinkConfig {
            dir: PathBuf::from("d"),
            max_file_bytes: 10,
            max_file_age: Duration::from_secs(15 * 60),
            max_files: 7,
            fsync: false,
            batch_max_records: 3,
        }
    );
}

#[test]
fn config_rejects_unknown_keys_and_requires_dir() {
    let err = serde_json::from_str::<FileSinkConfig>(r#"{"dir": "d", "max_age": "1h"}"#)
        .expect_err("unknown key");
    assert!(err.to_string().contains("unknown field `max_age`"), "{err}");
    let err = serde_json::from_str::<FileSinkConfig>(r#"{"fsync": true}"#).expect_err("no dir");
    assert!(err.to_string().contains("missing field `dir`"), "{err}");
}

// ---- writer internals ------------------------------------------------------

#[test]
fn file_names_parse_only_when_they_are_ours() {
    assert_eq!(
        parse_file_name(Stream::Telemetry, "telemetry-20261123T080000Z-0001.ndjson"),
        Some(("20261123T080000Z", 1))
    );
    assert_eq!(
        parse_file_name(
            Stream::DeadLetter,
            "dead_letter-20261123T080000Z-12345.ndjson"
        ),
        Some(("20261123T080000Z", 12345))
    );
    for name in [
        "dead_letter-20261123T080000Z-0001.ndjson",
        "telemetry-20261123T080000Z-0001.ndjson.tmp",
        "telemetry-20261123T080000Z-.ndjson",
        "telemetry-20261123T080000Z-00x1.ndjson",
        "telemetry-20261123X080000Z-0001.ndjson",
        "telemetry-2026112T080000Z-0001.ndjson",
        "telemetry-20261123T080000Z-0001-2.ndjson",
        "README",
    ] {
        assert_eq!(parse_file_name(Stream::Telemetry, name), None, "{name}");
    }
}

#[test]
fn stamps_are_compact_utc() {
    let t = UNIX_EPOCH + Duration::from_millis(T0_MS as u64 + 999);
    assert_eq!(utc_stamp(t), "20261123T080000Z");
    assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
    let now = utc_stamp(SystemTime::now());
    assert_eq!(now.len(), 16);
}

#[test]
fn a_record_that_fails_to_encode_leaves_no_trace() {
    struct Broken;
    impl serde::Serialize for Broken {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error as _, SerializeStruct as _};
            let mut st = s.serialize_struct("Broken", 2)?;
            st.serialize_field("half", "written")?;
            Err(S::Error::custom("boom"))
        }
    }
    let mut buf = b"{\"ok\":1}\n".to_vec();
    assert!(encode_line(&mut buf, &Broken).is_err());
    assert_eq!(buf, b"{\"ok\":1}\n");
    encode_line(&mut buf, &serde_json::json!({"ok": 2})).expect("encodes");
    assert_eq!(buf, b"{\"ok\":1}\n{\"ok\":2}\n");
}
