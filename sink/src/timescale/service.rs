//! The TimescaleDB sink's async side: the collector that cuts the input into
//! batches, the writer tasks that write them in parallel, retries, the
//! isolation of rows the database refuses, acknowledgements and metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Hook, HookError, Pool, PoolError};
use fleetpipe_model::SinkRecord;
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::error::describe;
use super::migrate::{StorageMode, migrate, quote_ident};
use super::writer::{DeadRow, Row, Statements, WriteStats, write_rows};
use super::{TimescaleConfig, TimescaleError};
use crate::metrics::{self, PoolGauges, StreamCounters};
use crate::stream::Stream;

/// Value of the `sink` label of every metric this sink records.
const SINK: &str = "timescale";

/// How often the in-flight gauges are refreshed while nothing changes (the
/// age of a stuck batch keeps growing).
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Writes telemetry, events and dead letters to PostgreSQL (with TimescaleDB
/// when available) in batched transactions, and acknowledges each record only
/// once its transaction committed.
///
/// Create it with [`TimescaleSink::connect`] (which migrates the schema, so
/// a wrong URL or missing privileges fail at startup) and drive it with
/// [`TimescaleSink::run`].
#[derive(Debug)]
pub struct TimescaleSink {
    config: TimescaleConfig,
    mode: StorageMode,
    pool: Pool,
    sql: Arc<Statements>,
}

impl TimescaleSink {
    /// Validates `config`, applies the migrations ([`migrate`]) and builds
    /// the connection pool (`writers` connections, opened on first use).
    ///
    /// # Errors
    ///
    /// An invalid setting, an unreachable database or a failed migration.
    pub async fn connect(config: TimescaleConfig) -> Result<Self, TimescaleError> {
        let mode = migrate(&config).await?;
        let sql = Arc::new(Statements::new(&quote_ident(&config.schema)));
        let stage = Arc::clone(&sql);
        // The writers' connections: the sink's settings (TLS, timeouts,
        // application name), one per lane.
        let pool = config
            .postgres()?
            .pool(config.writers)
            .post_create(Hook::async_fn(move |client, _| {
                let stage = Arc::clone(&stage);
                Box::pin(async move {
                    client
                        .batch_execute(&stage.create_stage)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(TimescaleError::Pool)?;
        Ok(Self {
            config,
            mode,
            pool,
            sql,
        })
    }

    /// The storage layout [`migrate`] chose.
    pub fn storage_mode(&self) -> StorageMode {
        self.mode
    }

    /// Runs until `input` is closed and drained (every sender dropped) and
    /// every batch is written, then returns.
    ///
    /// Records are cut into batches of at most `batch_max_rows`, waiting at
    /// most `batch_max_wait` for a partial batch to fill. Each batch is split
    /// by vehicle ([`VehicleId::shard`]) over `writers` lanes, and each lane
    /// writes its part in its own transaction, one at a time, while the other
    /// lanes write theirs. A vehicle always takes the same lane, so its rows
    /// are written in order and no two transactions in flight ever upsert
    /// the same `vehicle_latest` row: without that, concurrent transactions
    /// queued on each other's row locks until each commit's WAL flush, and
    /// the writers ran one after the other. While a lane is busy and its
    /// next part is waiting, no more input is read, so the queue in front
    /// fills up. Every record's ack is marked delivered only after the
    /// transaction holding it committed.
    ///
    /// A part that fails for a retriable reason (lost connection, server
    /// restart, deadlock, ...) is retried with backoff until it is written;
    /// only dropping this future (shutdown) ends the attempts, and then the
    /// records not yet written report `Failed`. Rows the database refuses
    /// for good (pings and events) are isolated by splitting the part and
    /// written to `dead_letters` with reason `db_refused`.
    ///
    /// # Errors
    ///
    /// A writer task panicked (its records, and the later records of its
    /// lane, report `Failed`); the other lanes' batches are still written
    /// first.
    ///
    /// [`VehicleId::shard`]: fleetpipe_model::VehicleId::shard
    pub async fn run(self, mut input: mpsc::Receiver<SinkRecord>) -> Result<(), TimescaleError> {
        let TimescaleSink {
            config, pool, sql, ..
        } = self;
        let writer = Arc::new(BatchWriter {
            pool,
            sql,
            retry_initial: config.retry_initial,
            retry_max: config.retry_max,
            written: StreamCounters::new(SINK),
        });
        let inflight = Arc::new(Inflight::default());
        inflight.publish();
        let gauges = AbortOnDrop(tokio::spawn(refresh_gauges(
            Arc::clone(&inflight),
            writer.pool.clone(),
        )));
        let mut tasks = JoinSet::new();
        let lanes: Vec<_> = (0..config.writers)
            .map(|_| {
                // Parts wait here while the lane writes; the lane then
                // writes them together (up to `batch_max_rows`), so a busy
                // lane writes larger transactions, as one queue did.
                let (tx, rx) = mpsc::channel(LANE_QUEUE_PARTS);
                tasks.spawn(write_lane(
                    Arc::clone(&writer),
                    Arc::clone(&inflight),
                    rx,
                    config.batch_max_rows,
                ));
                tx
            })
            .collect();
        let mut first_failure = None;

        loop {
            let mut batch = Vec::with_capacity(config.batch_max_rows);
            let closed = collect(
                &mut input,
                &mut batch,
                config.batch_max_rows,
                config.batch_max_wait,
            )
            .await;
            for (lane, part) in lanes.iter().zip(split_by_vehicle(batch, lanes.len())) {
                // Waits while the lane is busy and already has a part
                // waiting: no more input is read, the queue in front fills
                // up and pushes back. A lane that is gone (its task
                // panicked) drops the part, whose acks fail.
                if !part.is_empty() {
                    let _ = lane.send(part).await;
                }
            }
            while let Some(result) = tasks.try_join_next() {
                note_task_result(result, &mut first_failure);
            }
            if closed {
                break;
            }
        }

        drop(lanes);
        while let Some(result) = tasks.join_next().await {
            note_task_result(result, &mut first_failure);
        }
        drop(gauges);
        inflight.publish();
        first_failure.map_or(Ok(()), |e| Err(TimescaleError::Task(e)))
    }
}

/// Parts a lane's queue holds while the lane writes. A lane holds at most
/// `LANE_QUEUE_PARTS + 2` parts' worth of records (each part at most a
/// batch): the queued parts, the batch it is writing and the part it held
/// back because it would have made that batch larger than `batch_max_rows`.
pub(crate) const LANE_QUEUE_PARTS: usize = 2;

/// One writer lane: writes the parts it is given, one transaction at a time,
/// until its sender is dropped. The parts that queued up while it wrote are
/// written together, up to `max_rows` records (a part is never cut).
async fn write_lane(
    writer: Arc<BatchWriter>,
    inflight: Arc<Inflight>,
    mut parts: mpsc::Receiver<Vec<SinkRecord>>,
    max_rows: usize,
) {
    let mut next: Option<Vec<SinkRecord>> = None;
    loop {
        let mut batch = match next.take() {
            Some(part) => part,
            None => match parts.recv().await {
                Some(part) => part,
                None => return,
            },
        };
        while batch.len() < max_rows {
            match parts.try_recv() {
                Ok(part) if batch.len() + part.len() <= max_rows => batch.extend(part),
                Ok(part) => {
                    next = Some(part);
                    break;
                }
                Err(_) => break,
            }
        }
        let guard = InflightGuard::start(Arc::clone(&inflight), &batch);
        writer.deliver(batch).await;
        drop(guard);
    }
}

/// Splits `batch` into `lanes` parts by vehicle
/// ([`fleetpipe_model::VehicleId::shard`]), keeping the order of the records
/// within each part. Dead letters without a vehicle go to the first lane:
/// they touch no per-vehicle row.
pub(crate) fn split_by_vehicle(batch: Vec<SinkRecord>, lanes: usize) -> Vec<Vec<SinkRecord>> {
    let lanes = lanes.max(1);
    if lanes == 1 {
        return vec![batch];
    }
    let mut parts: Vec<Vec<SinkRecord>> = (0..lanes)
        .map(|_| Vec::with_capacity(batch.len() / lanes + 1))
        .collect();
    for record in batch {
        let vehicle = match &record {
            SinkRecord::Telemetry(t) => Some(&t.ping.vehicle_id),
            SinkRecord::Event(e) => Some(&e.subject),
            SinkRecord::DeadLetter(d) => d.vehicle_id.as_ref(),
        };
        let lane = vehicle.map_or(0, |v| v.shard(lanes));
        parts[lane].push(record);
    }
    parts
}

/// Logs a writer task that panicked and keeps the first such error.
fn note_task_result(
    result: Result<(), tokio::task::JoinError>,
    first_failure: &mut Option<tokio::task::JoinError>,
) {
    if let Err(e) = result {
        tracing::error!(error = %e, "timescale sink: writer task failed; its records report Failed");
        first_failure.get_or_insert(e);
    }
}

/// Receives the next batch into `batch`: waits for a first record, then
/// for more until `max` are there or `max_wait` has passed. Returns whether
/// the input is closed and drained.
pub(crate) async fn collect(
    input: &mut mpsc::Receiver<SinkRecord>,
    batch: &mut Vec<SinkRecord>,
    max: usize,
    max_wait: Duration,
) -> bool {
    if input.recv_many(batch, max).await == 0 {
        return true;
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < max {
        // `recv_many` is cancel-safe: a timeout loses no record.
        match tokio::time::timeout_at(deadline, input.recv_many(batch, max - batch.len())).await {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    false
}

/// What the writer tasks share.
#[derive(Debug)]
struct BatchWriter {
    pool: Pool,
    sql: Arc<Statements>,
    retry_initial: Duration,
    retry_max: Duration,
    /// `fleetpipe_sink_records_total` and `fleetpipe_sink_bytes_total`.
    written: StreamCounters,
}

/// Why one attempt at a part of a batch failed.
#[derive(Debug)]
enum AttemptError {
    /// No connection: the server is unreachable, refused us or the new
    /// connection could not set up its staging tables.
    Pool(PoolError),
    /// The transaction failed.
    Db(tokio_postgres::Error),
}

impl BatchWriter {
    /// Writes a whole batch, then settles its acks: delivered for every
    /// record that is now durable (in `telemetry`, `vehicle_events` or
    /// `dead_letters`), failed for the rest (only dead letters the database
    /// refuses even alone).
    async fn deliver(&self, batch: Vec<SinkRecord>) {
        let started = Instant::now();
        let mut lost = vec![false; batch.len()];
        let mut stats = WriteStats::default();
        {
            let rows: Vec<(usize, Row<'_>)> = batch
                .iter()
                .enumerate()
                .map(|(i, record)| (i, Row::prepare(record)))
                .collect();
            // Parts still to write, the next one last. A part the database
            // refuses for good is split in halves until the refused rows are
            // alone; those become dead letters.
            let mut parts = vec![rows];
            while let Some(mut part) = parts.pop() {
                let error = match self.write_retrying(&part).await {
                    Ok(written) => {
                        stats.add(written);
                        continue;
                    }
                    Err(e) => e,
                };
                if part.len() > 1 {
                    let second = part.split_off(part.len() / 2);
                    parts.push(second);
                    parts.push(part);
                    continue;
                }
                let Some((i, row)) = part.pop() else { continue };
                match (row, &batch[i]) {
                    (Row::Telemetry(_), SinkRecord::Telemetry(record)) => {
                        let detail = describe(&error);
                        tracing::warn!(
                            vehicle_id = %record.ping.vehicle_id,
                            seq = ?record.ping.seq,
                            error = %detail,
                            "timescale sink: the database refused a ping; it goes to dead_letters"
                        );
                        parts.push(vec![(i, Row::Dead(DeadRow::refused(record, detail)))]);
                    }
                    (Row::Event(_), SinkRecord::Event(event)) => {
                        let detail = describe(&error);
                        tracing::warn!(
                            vehicle_id = %event.subject,
                            event_id = %event.id,
                            event_type = %event.event_type,
                            error = %detail,
                            "timescale sink: the database refused an event; it goes to dead_letters"
                        );
                        parts.push(vec![(i, Row::Dead(DeadRow::refused_event(event, detail)))]);
                    }
                    _ => {
                        tracing::error!(
                            error = %describe(&error),
                            "timescale sink: the database refused a dead letter; it is dropped \
                             and its ack fails"
                        );
                        lost[i] = true;
                    }
                }
            }
        }

        metrics::batch_written(SINK, batch.len(), started.elapsed().as_secs_f64());
        for (stream, records, bytes) in [
            (Stream::Telemetry, stats.telemetry, stats.telemetry_bytes),
            (
                Stream::DeadLetter,
                stats.dead_letters,
                stats.dead_letter_bytes,
            ),
            (Stream::Event, stats.events, stats.event_bytes),
        ] {
            if records > 0 {
                self.written.written(stream, records, bytes);
            }
        }
        if stats.staged_parts > 0 {
            metrics::staged_parts(SINK, stats.staged_parts);
        }
        // Every part above has committed (or was given up): only now are
        // the records acknowledged.
        for (record, lost) in batch.into_iter().zip(lost) {
            if !lost {
                record.into_ack().delivered();
            }
        }
    }

    /// Writes one part, retrying retriable errors with backoff until it is
    /// written. Returns the error when the database refuses the part for
    /// good.
    async fn write_retrying(
        &self,
        part: &[(usize, Row<'_>)],
    ) -> Result<WriteStats, tokio_postgres::Error> {
        let mut backoff = Backoff::new(self.retry_initial, self.retry_max);
        let mut attempt: u64 = 1;
        loop {
            let error = match self.attempt(part).await {
                Ok(stats) => return Ok(stats),
                Err(AttemptError::Db(e)) if classify(&e) == ErrorKind::Permanent => {
                    metrics::error(SINK, "permanent");
                    return Err(e);
                }
                Err(e) => e,
            };
            metrics::error(SINK, "retriable");
            let delay = backoff.next_delay();
            let (text, expected) = match &error {
                AttemptError::Pool(e) => (pool_error_text(e), true),
                AttemptError::Db(e) => (describe(e), is_transient(e)),
            };
            if expected {
                tracing::warn!(
                    error = %text,
                    attempt,
                    rows = part.len(),
                    retry_in = ?delay,
                    "timescale sink: batch not written; retrying"
                );
            } else {
                // Not a property of the rows (e.g. a dropped table or a
                // missing privilege): dead-lettering them would divert good
                // data, so the batch waits for an operator instead.
                tracing::error!(
                    error = %text,
                    attempt,
                    rows = part.len(),
                    retry_in = ?delay,
                    "timescale sink: batch not written for a reason that is not transient; \
                     retrying until it is fixed"
                );
            }
            tokio::time::sleep(delay).await;
            metrics::retried(SINK);
            attempt += 1;
        }
    }

    /// One attempt: a connection, one transaction.
    async fn attempt(&self, part: &[(usize, Row<'_>)]) -> Result<WriteStats, AttemptError> {
        let mut client = self.pool.get().await.map_err(AttemptError::Pool)?;
        write_rows(&mut client, &self.sql, part)
            .await
            .map_err(AttemptError::Db)
    }
}

/// A pool error as one line, with the PostgreSQL error behind it.
fn pool_error_text(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) | PoolError::PostCreateHook(HookError::Backend(e)) => describe(e),
        other => other.to_string(),
    }
}

/// What an error means for the rows that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Trying again later can succeed: the whole part is retried.
    Retriable,
    /// The data itself is refused: the part is split to find the rows.
    Permanent,
}

/// Classifies an error of a write transaction.
///
/// Without a server error (connection closed, I/O error, ...) it is
/// retriable. Server errors are classified by SQLSTATE
/// ([`classify_sqlstate`]).
pub(crate) fn classify(e: &tokio_postgres::Error) -> ErrorKind {
    e.code()
        .map_or(ErrorKind::Retriable, |code| classify_sqlstate(code.code()))
}

/// Classifies a SQLSTATE.
///
/// Permanent are the errors about the data: class 22 (data exception, e.g.
/// a NUL character in jsonb or text), class 23 (integrity constraint
/// violation) except 23505 unique violation, which `ON CONFLICT` rules out
/// except in races a retry resolves, and class 54 (program limit exceeded,
/// e.g. an index row too large). Everything else is retried: connection
/// errors (08), admin/crash shutdown and cancellation (57), serialization
/// failures and deadlocks (40), insufficient resources (53), lock timeouts
/// (55P03), but also errors no row can cause, such as a missing table or
/// privilege (42, ...): those wait for an operator instead of sending good
/// rows to the dead letters.
pub(crate) fn classify_sqlstate(code: &str) -> ErrorKind {
    if code == "23505" {
        return ErrorKind::Retriable;
    }
    match code.get(..2) {
        Some("22" | "23" | "54") => ErrorKind::Permanent,
        _ => ErrorKind::Retriable,
    }
}

/// Whether a retriable error is an expected, transient one (logged as a
/// warning) rather than one that needs an operator (logged as an error).
fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code().map(|c| c.code()) {
        None => true,
        Some(code) => {
            matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58"))
                || code == "55P03"
                || code == "23505"
        }
    }
}

/// Exponential backoff with jitter: the n-th delay is drawn uniformly from
/// `[initial, min(max, initial * 2^n)]`, so the first retry comes after
/// exactly `initial`, later ones spread out up to `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, never longer than `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ceiling: initial.min(max),
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let low = self.initial.min(self.ceiling);
        let high = self.ceiling;
        self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(micros(low)..=micros(high)))
    }
}

/// The batches being written, for the in-flight gauges.
#[derive(Debug, Default)]
struct Inflight {
    /// Batch id to the receive time of its oldest record (epoch ms).
    batches: Mutex<BTreeMap<u64, i64>>,
    /// The next batch's id.
    next_id: AtomicU64,
}

impl Inflight {
    /// Sets `fleetpipe_sink_inflight_batches` and
    /// `fleetpipe_sink_oldest_unacked_seconds` from the current state.
    fn publish(&self) {
        let batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        let age = batches.values().min().map_or(0.0, |oldest| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            (now.saturating_sub(*oldest)).max(0) as f64 / 1000.0
        });
        metrics::inflight_batches(SINK, batches.len(), age);
    }
}

/// Keeps one batch in [`Inflight`] while it is written; removes it when
/// dropped, even if the writer task panics.
#[derive(Debug)]
struct InflightGuard {
    inflight: Arc<Inflight>,
    id: u64,
}

impl InflightGuard {
    fn start(inflight: Arc<Inflight>, batch: &[SinkRecord]) -> Self {
        let id = inflight.next_id.fetch_add(1, Ordering::Relaxed);
        // Events have no receive time (their `time` is device time, maybe
        // days old): they count from now, when the sink took them.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let oldest = batch
            .iter()
            .map(|r| match r {
                SinkRecord::Telemetry(t) => t.origin.received_at,
                SinkRecord::DeadLetter(d) => d.origin.received_at,
                SinkRecord::Event(_) => now,
            })
            .min()
            .unwrap_or(i64::MAX);
        inflight
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, oldest);
        inflight.publish();
        Self { inflight, id }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.inflight
            .batches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        self.inflight.publish();
    }
}

/// Refreshes the in-flight gauges every [`GAUGE_INTERVAL`], so a batch that
/// is stuck shows a growing age.
async fn refresh_gauges(inflight: Arc<Inflight>, pool: Pool) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    let pool_gauges = PoolGauges::new(SINK);
    loop {
        tick.tick().await;
        inflight.publish();
        // deadpool's status: `size` connections open, `available` of them
        // idle, `waiting` writers queued for one (never above `writers`,
        // one per lane, unless a lane leaks its connection).
        let status = pool.status();
        pool_gauges.set(
            status.size.saturating_sub(status.available),
            status.available,
            status.waiting,
        );
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
