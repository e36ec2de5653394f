//! The async shell around [`Tracker`]: a dispatcher that shards pings by
//! vehicle over worker tasks, each owning its vehicles' state.
//!
//! ```text
//! input ─▶ dispatcher ─┬─▶ queue 0 ─▶ worker 0 ─┐
//!          (route by   ├─▶ queue 1 ─▶ worker 1 ─┼─▶ output (telemetry + events)
//!           vehicle)   └─▶ queue n ─▶ worker n ─┘
//!                              ▲
//!                 checkpointer ┘ (asks each worker for its changed vehicles)
//! ```
//!
//! A vehicle always lands on the same worker, so its pings are processed in
//! the order they arrived and its state lives in one task without locks.
//! Every queue is bounded and every send awaits, so a slow sink slows the
//! workers, a full worker queue stops the dispatcher and a stopped dispatcher
//! stops ingest: backpressure end to end, nothing is dropped.
//!
//! Each worker also ticks once a second (wall clock) to release pings held
//! for reordering and to take silent vehicles offline.
//!
//! Shutdown is by closing: when `input` is closed and drained the dispatcher
//! ends, dropping the queue senders; each worker drains its queue, applies
//! every held ping, hands its state to [`EnrichHandle::join`] for the final
//! checkpoint and drops its `output` sender, so `output` closes once every
//! record and event is downstream.

use std::time::Duration;

use fleetpipe_geofence::SharedIndex;
use fleetpipe_model::{Accepted, SinkRecord, VehicleId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::EnrichConfig;
use crate::error::EnrichError;
use crate::metrics::WorkerMetrics;
use crate::store::{StateStore, StoreError};
use crate::tracker::Tracker;

/// Most pings taken from a channel at once. Batching amortises the channel's
/// synchronisation and the metric updates; it adds no latency, because
/// `recv_many` returns as soon as one ping is there.
const BATCH: usize = 256;

/// How often workers advance their wall clock.
const TICK: Duration = Duration::from_secs(1);

/// What the stage starts from besides its configuration.
#[derive(Debug, Default)]
pub struct StageSetup {
    /// The geofences (reloadable). Default: none.
    pub fences: SharedIndex,
    /// Where state is checkpointed. None: nowhere (tests, benchmarks).
    pub store: Option<StateStore>,
    /// State restored from the last checkpoint, `(vehicle, JSON)`.
    pub restored: Vec<(VehicleId, String)>,
}

/// Entry point of the stage.
#[derive(Debug)]
pub struct EnrichService;

impl EnrichService {
    /// Starts the dispatcher, the workers and the checkpointer on the current
    /// Tokio runtime.
    ///
    /// The dispatcher reads `input` and routes each ping by a stable hash of
    /// its vehicle id to one worker; each worker enriches its pings and sends
    /// the telemetry records and events into `output`, awaiting when it is
    /// full. Install the metrics recorder before calling this: the workers
    /// register their metric handles here.
    ///
    /// # Errors
    ///
    /// An invalid configuration, or no Tokio runtime to spawn on.
    pub fn start(
        config: &EnrichConfig,
        setup: StageSetup,
        input: mpsc::Receiver<Accepted>,
        output: mpsc::Sender<SinkRecord>,
    ) -> Result<EnrichHandle, EnrichError> {
        config.validate()?;
        // `tokio::spawn` would panic outside a runtime; report it instead.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EnrichError::NoRuntime)?;

        let count = worker_count(config.workers);
        let mut trackers = Vec::with_capacity(count);
        for _ in 0..count {
            trackers.push(Tracker::new(config, setup.fences.clone())?);
        }
        let now = wall_ms();
        let mut unreadable = 0usize;
        let restored = setup.restored.len();
        for (vehicle, json) in setup.restored {
            let index = vehicle.shard(count);
            if let Err(err) = trackers[index].restore(vehicle.clone(), &json, now) {
                unreadable += 1;
                tracing::warn!(%vehicle, error = %err, "unreadable vehicle state; the vehicle starts fresh");
            }
        }
        if restored > 0 {
            tracing::info!(
                vehicles = restored - unreadable,
                unreadable,
                "vehicle state restored"
            );
        }

        let mut queues = Vec::with_capacity(count);
        let mut controls = Vec::with_capacity(count);
        let mut workers = Vec::with_capacity(count);
        let full = setup.store.as_ref().is_some_and(StateStore::wants_full);
        for (index, tracker) in trackers.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(config.queue_capacity);
            queues.push(tx);
            let (control_tx, control_rx) = mpsc::channel(1);
            controls.push(control_tx);
            let worker = Worker {
                index,
                tracker,
                queue: rx,
                control: control_rx,
                output: output.clone(),
                full,
                metrics: WorkerMetrics::new(index),
            };
            workers.push(runtime.spawn(worker.run()));
        }
        // Only the workers may keep `output` open, so it closes when the last
        // one is done.
        drop(output);
        let dispatcher = runtime.spawn(dispatch(input, queues));
        let checkpointer = setup
            .store
            .clone()
            .map(|store| runtime.spawn(checkpoint_loop(store, controls, config.snapshot_interval)));
        tracing::info!(
            workers = count,
            queue_capacity = config.queue_capacity,
            h3_resolutions = ?config.h3_resolutions,
            reorder_window = ?config.reorder_window,
            "enrichment stage started"
        );
        Ok(EnrichHandle {
            dispatcher,
            workers,
            checkpointer,
            store: setup.store,
        })
    }
}

/// Join handle of the stage.
///
/// Dropping it leaves the stage running; it still ends when `input` closes,
/// but then no final checkpoint is written.
#[derive(Debug)]
pub struct EnrichHandle {
    dispatcher: JoinHandle<()>,
    workers: Vec<JoinHandle<Vec<(VehicleId, String)>>>,
    checkpointer: Option<JoinHandle<()>>,
    store: Option<StateStore>,
}

impl EnrichHandle {
    /// Waits for the dispatcher and every worker to end, i.e. until `input`
    /// is closed and every ping taken from it was sent downstream (or
    /// `output` was closed under it), then writes the final checkpoint.
    ///
    /// # Errors
    ///
    /// The final checkpoint could not be written.
    pub async fn join(self) -> Result<(), StoreError> {
        if let Err(err) = self.dispatcher.await {
            tracing::error!(error = %err, "enrich dispatcher failed");
        }
        let mut state = Vec::new();
        for (index, worker) in self.workers.into_iter().enumerate() {
            match worker.await {
                Ok(mut vehicles) => state.append(&mut vehicles),
                Err(err) => tracing::error!(worker = index, error = %err, "enrich worker failed"),
            }
        }
        if let Some(checkpointer) = self.checkpointer {
            // It ends once the workers are gone; a checkpoint it was writing
            // is older than the final one below.
            checkpointer.abort();
            let _ = checkpointer.await;
        }
        if let Some(store) = &self.store {
            let vehicles = state.len();
            store.save(state).await?;
            tracing::info!(vehicles, "final vehicle state checkpoint written");
        }
        Ok(())
    }

    /// Number of worker tasks.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }
}

/// Resolves `workers = 0` to the number of CPU cores.
pub(crate) fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Wall clock, epoch milliseconds.
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Routes every ping of `input` to the queue of its vehicle's worker.
async fn dispatch(mut input: mpsc::Receiver<Accepted>, queues: Vec<mpsc::Sender<Accepted>>) {
    let mut batch = Vec::with_capacity(BATCH);
    while input.recv_many(&mut batch, BATCH).await > 0 {
        for accepted in batch.drain(..) {
            let index = accepted.ping.vehicle_id.shard(queues.len());
            if let Err(mpsc::error::SendError(lost)) = queues[index].send(accepted).await {
                // A worker ends early only when `output` closed (or on a bug).
                // Stop reading rather than silently losing one shard's
                // vehicles: dropping `input` tells ingest the stage is gone,
                // and the pings still held here drop their acks unmarked, so
                // their senders hear "failed" and keep their data.
                tracing::error!(
                    worker = index,
                    vehicle_id = %lost.ping.vehicle_id,
                    "enrich worker is gone; dispatcher stopping"
                );
                return;
            }
        }
    }
    tracing::debug!("enrich input closed and drained; dispatcher done");
}

/// A request to a worker for its checkpoint.
type CheckpointRequest = oneshot::Sender<Vec<(VehicleId, String)>>;

/// Every `interval`, collects each worker's checkpoint and saves it. Ends
/// when the workers are gone.
async fn checkpoint_loop(
    store: StateStore,
    workers: Vec<mpsc::Sender<CheckpointRequest>>,
    interval: Duration,
) {
    let errors = crate::metrics::checkpoint_errors();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let mut state = Vec::new();
        for worker in &workers {
            let (tx, rx) = oneshot::channel();
            if worker.send(tx).await.is_err() {
                return;
            }
            match rx.await {
                Ok(mut vehicles) => state.append(&mut vehicles),
                Err(_) => return,
            }
        }
        let vehicles = state.len();
        match store.save(state).await {
            Ok(()) => tracing::debug!(vehicles, "vehicle state checkpoint written"),
            Err(err) => {
                errors.increment(1);
                tracing::warn!(error = %err, "vehicle state checkpoint failed; will retry");
            }
        }
    }
}

/// Worker for a fixed `1/n` share of the vehicles.
struct Worker {
    index: usize,
    tracker: Tracker,
    queue: mpsc::Receiver<Accepted>,
    control: mpsc::Receiver<CheckpointRequest>,
    output: mpsc::Sender<SinkRecord>,
    /// Checkpoints hold every vehicle, not only the changed ones.
    full: bool,
    metrics: WorkerMetrics,
}

impl Worker {
    /// Enriches and forwards pings until the queue is closed and drained, or
    /// `output` is closed; then applies held pings and returns the state for
    /// the final checkpoint.
    async fn run(mut self) -> Vec<(VehicleId, String)> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut out = Vec::with_capacity(BATCH * 2);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        while open {
            tokio::select! {
                biased;
                Some(request) = self.control.recv() => {
                    let state = self.checkpoint();
                    let _ = request.send(state);
                }
                n = self.queue.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    // What is still waiting after taking a batch is the backlog.
                    self.metrics.depth.set(self.queue.len() as f64);
                    let pings = batch.len() as u64;
                    for accepted in batch.drain(..) {
                        self.tracker.ingest(accepted, &mut out);
                    }
                    open = self.forward(&mut out).await;
                    // One atomic add per batch instead of per ping.
                    self.metrics.pings.increment(pings);
                }
                _ = ticker.tick() => {
                    self.tracker.tick(wall_ms(), &mut out);
                    open = self.forward(&mut out).await;
                    self.metrics.vehicles.set(self.tracker.vehicles() as f64);
                }
            }
        }
        if open {
            self.tracker.flush(&mut out);
            if !self.forward(&mut out).await {
                tracing::error!(
                    worker = self.index,
                    "enrich output closed during the final flush"
                );
            }
        } else {
            tracing::error!(worker = self.index, "enrich output closed; worker stopping");
        }
        self.metrics.depth.set(0.0);
        tracing::debug!(worker = self.index, "enrich worker done");
        self.checkpoint()
    }

    fn checkpoint(&mut self) -> Vec<(VehicleId, String)> {
        if self.full {
            self.tracker.snapshot_all()
        } else {
            self.tracker.take_dirty()
        }
    }

    /// Sends `out` in order; false if `output` is closed (the unsent records
    /// are then dropped, failing their acks).
    async fn forward(&self, out: &mut Vec<SinkRecord>) -> bool {
        let mut records = out.drain(..);
        for record in records.by_ref() {
            if let SinkRecord::Event(event) = &record {
                crate::metrics::event_emitted(event.event_type.as_str());
            }
            if self.output.send(record).await.is_err() {
                // The rest drop with `records`, failing their acks.
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use fleetpipe_model::{Ack, AckStatus, BatchAck, Gateway, Origin, Ping, VehicleId};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tokio::time::timeout;

    use super::*;
    use crate::metrics::{PINGS_TOTAL, QUEUE_DEPTH};

    /// Long enough for every runnable task to settle, so a send still pending
    /// after it is blocked for real.
    const SETTLE: Duration = Duration::from_millis(200);
    /// Generous bound for things that must happen.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn accepted(vehicle: &str, seq: u64, ack: Ack) -> Accepted {
        let vehicle_id = VehicleId::parse(vehicle).unwrap_or_else(|e| panic!("{e}"));
        // Spread positions a little so cells differ between pings.
        let lat = 52.0 + (seq % 100) as f64 * 0.001;
        let lon = 13.0 + (vehicle.len() % 10) as f64 * 0.001;
        Accepted {
            ping: Ping {
                seq: Some(seq),
                ..Ping::new(vehicle_id, 1_795_420_800_000 + seq as i64, lat, lon)
            },
            origin: Origin {
                gateway: Gateway::Http,
                client: None,
                received_at: 1_795_420_800_000,
            },
            ack,
        }
    }

    fn config(workers: usize, queue_capacity: usize) -> EnrichConfig {
        EnrichConfig {
            workers,
            queue_capacity,
            ..EnrichConfig::default()
        }
    }

    fn telemetry(record: SinkRecord) -> fleetpipe_model::TelemetryRecord {
        match record {
            SinkRecord::Telemetry(t) => t,
            SinkRecord::DeadLetter(d) => panic!("enrich must not emit dead letters: {d:?}"),
            SinkRecord::Event(e) => panic!("not telemetry: {e:?}"),
        }
    }

    /// Reads `output` until it closes, as `(vehicle, seq)` in arrival order.
    async fn collect(mut output: mpsc::Receiver<SinkRecord>) -> Vec<(String, u64)> {
        let mut seen = Vec::new();
        while let Some(record) = output.recv().await {
            if matches!(record, SinkRecord::Event(_)) {
                continue;
            }
            let t = telemetry(record);
            assert_eq!(t.h3.len(), 2, "default resolutions 7 and 9");
            seen.push((
                t.ping.vehicle_id.to_string(),
                t.ping.seq.unwrap_or(u64::MAX),
            ));
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_ping_arrives_once_in_vehicle_order() {
        const VEHICLES: u64 = 50;
        const PINGS: u64 = 40;
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, out_rx) = mpsc::channel(16);
        // Small queues, so workers and dispatcher block and resume often.
        let handle = EnrichService::start(&config(3, 4), StageSetup::default(), in_rx, out_tx)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(handle.workers(), 3);

        let collector = tokio::spawn(collect(out_rx));
        // Interleaved in a fixed pseudo-random order, so a vehicle's
        // consecutive pings are sometimes adjacent and sometimes far apart:
        // a stage that let them reach different workers would reorder them.
        let mut next_seq = vec![0u64; VEHICLES as usize];
        let mut unfinished: Vec<usize> = (0..VEHICLES as usize).collect();
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        while !unfinished.is_empty() {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let pick = ((rng >> 33) % unfinished.len() as u64) as usize;
            let v = unfinished[pick];
            let sent = in_tx
                .send(accepted(&format!("veh-{v}"), next_seq[v], Ack::none()))
                .await;
            assert!(sent.is_ok(), "stage closed its input early");
            next_seq[v] += 1;
            if next_seq[v] == PINGS {
                unfinished.swap_remove(pick);
            }
        }
        drop(in_tx);
        assert!(timeout(DEADLINE, handle.join()).await.is_ok(), "join hung");
        let seen = timeout(DEADLINE, collector)
            .await
            .unwrap_or_else(|_| panic!("output never closed"))
            .unwrap_or_else(|e| panic!("collector: {e}"));

        assert_eq!(
            seen.len() as u64,
            VEHICLES * PINGS,
            "lost or duplicated pings"
        );
        let mut per_vehicle: HashMap<String, Vec<u64>> = HashMap::new();
        for (vehicle, seq) in seen {
            per_vehicle.entry(vehicle).or_default().push(seq);
        }
        assert_eq!(per_vehicle.len() as u64, VEHICLES);
        let expected: Vec<u64> = (0..PINGS).collect();
        for (vehicle, seqs) in &per_vehicle {
            assert_eq!(seqs, &expected, "order of {vehicle}");
        }
    }

    #[tokio::test]
    async fn full_queues_block_input_until_output_is_drained() {
        let (in_tx, in_rx) = mpsc::channel(1);
        let (out_tx, out_rx) = mpsc::channel(1);
        let handle = EnrichService::start(&config(1, 1), StageSetup::default(), in_rx, out_tx)
            .unwrap_or_else(|e| panic!("{e}"));

        // Nobody reads `output`: sends must stop completing.
        let mut sent = 0;
        let mut blocked = false;
        for _ in 0..100 {
            match timeout(SETTLE, in_tx.send(accepted("van-1", sent, Ack::none()))).await {
                Ok(Ok(())) => sent += 1,
                Ok(Err(_)) => panic!("stage closed its input"),
                Err(_) => {
                    blocked = true;
                    break;
                }
            }
        }
        assert!(blocked, "input never blocked although output is full");
        // Buffered pings: output (1) + worker sending (1) + worker queue (1)
        // + dispatcher sending (1) + input channel (1). More means the stage
        // buffers somewhere unbounded.
        assert_eq!(sent, 5);

        // Drain output: everything flows again, including the blocked ping
        // (its send future was dropped, so it is sent anew with its seq).
        let collector = tokio::spawn(collect(out_rx));
        let total = sent + 20;
        for seq in sent..total {
            let res = timeout(DEADLINE, in_tx.send(accepted("van-1", seq, Ack::none()))).await;
            assert!(
                matches!(res, Ok(Ok(()))),
                "send {seq} did not complete after draining"
            );
        }
        drop(in_tx);
        assert!(timeout(DEADLINE, handle.join()).await.is_ok(), "join hung");
        let seen = timeout(DEADLINE, collector)
            .await
            .unwrap_or_else(|_| panic!("output never closed"))
            .unwrap_or_else(|e| panic!("collector: {e}"));
        let seqs: Vec<u64> = seen.into_iter().map(|(_, seq)| seq).collect();
        assert_eq!(seqs, (0..total).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn closing_input_drains_every_queued_ping_then_closes_output() {
        const PINGS: u64 = 100;
        let (in_tx, in_rx) = mpsc::channel(PINGS as usize);
        // Room for every record and the events of each vehicle's first ping
        // (online, state changed).
        let (out_tx, mut out_rx) = mpsc::channel(PINGS as usize * 3);
        let handle = EnrichService::start(&config(2, 8), StageSetup::default(), in_rx, out_tx)
            .unwrap_or_else(|e| panic!("{e}"));

        let batch = BatchAck::new();
        // On this single-threaded runtime nothing runs between these sends,
        // so every ping is still queued when the input closes.
        for seq in 0..PINGS {
            let vehicle = format!("veh-{}", seq % 7);
            let sent = in_tx.send(accepted(&vehicle, seq, batch.ack())).await;
            assert!(sent.is_ok());
        }
        drop(in_tx);
        assert!(timeout(DEADLINE, handle.join()).await.is_ok(), "join hung");

        // join returned: everything must already be in `output`, and it must
        // be closed, so this neither waits nor misses anything.
        let mut received = 0;
        loop {
            match out_rx.try_recv() {
                Ok(record) => {
                    if matches!(record, SinkRecord::Telemetry(_)) {
                        received += 1;
                    }
                    record.into_ack().delivered();
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => panic!("output still open after join"),
            }
        }
        assert_eq!(received, PINGS);
        assert_eq!(batch.wait().await, AckStatus::Delivered);
    }

    #[tokio::test]
    async fn join_waits_until_every_ping_is_downstream() {
        const PINGS: u64 = 100;
        let (in_tx, in_rx) = mpsc::channel(PINGS as usize);
        // Queues hold everything, so the dispatcher finishes at once, but
        // output holds only 10: the workers are stuck until someone reads.
        let (out_tx, out_rx) = mpsc::channel(10);
        let handle = EnrichService::start(
            &config(2, PINGS as usize),
            StageSetup::default(),
            in_rx,
            out_tx,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for seq in 0..PINGS {
            let sent = in_tx
                .send(accepted(&format!("veh-{}", seq % 5), seq, Ack::none()))
                .await;
            assert!(sent.is_ok());
        }
        drop(in_tx);

        let join = tokio::spawn(handle.join());
        tokio::time::sleep(SETTLE).await;
        assert!(
            !join.is_finished(),
            "join returned while pings were still queued"
        );

        let seen = timeout(DEADLINE, collect(out_rx))
            .await
            .unwrap_or_else(|_| panic!("output never closed"));
        assert_eq!(seen.len() as u64, PINGS);
        assert!(timeout(DEADLINE, join).await.is_ok(), "join hung");
    }

    #[tokio::test]
    async fn closed_output_stops_the_stage_and_fails_acks() {
        let (in_tx, in_rx) = mpsc::channel(1);
        let (out_tx, out_rx) = mpsc::channel(1);
        drop(out_rx);
        let handle = EnrichService::start(&config(1, 1), StageSetup::default(), in_rx, out_tx)
            .unwrap_or_else(|e| panic!("{e}"));

        let batch = BatchAck::new();
        let mut input_closed = false;
        for seq in 0..10 {
            match timeout(DEADLINE, in_tx.send(accepted("van-1", seq, batch.ack()))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    input_closed = true;
                    break;
                }
                Err(_) => panic!("send hung although the stage should have stopped"),
            }
        }
        assert!(input_closed, "ingest was never told the stage stopped");
        assert!(timeout(DEADLINE, handle.join()).await.is_ok(), "join hung");
        assert_eq!(batch.wait().await, AckStatus::Failed);
    }

    #[tokio::test]
    async fn zero_workers_means_one_per_core() {
        let (in_tx, in_rx) = mpsc::channel::<Accepted>(1);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let handle = EnrichService::start(&config(0, 1), StageSetup::default(), in_rx, out_tx)
            .unwrap_or_else(|e| panic!("{e}"));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(handle.workers(), cores);
        drop(in_tx);
        assert!(timeout(DEADLINE, handle.join()).await.is_ok(), "join hung");
    }

    #[tokio::test]
    async fn invalid_config_is_refused() {
        let (_in_tx, in_rx) = mpsc::channel::<Accepted>(1);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let res = EnrichService::start(&config(1, 0), StageSetup::default(), in_rx, out_tx);
        assert_eq!(res.err(), Some(EnrichError::ZeroQueueCapacity));
    }

    #[test]
    fn start_outside_a_runtime_is_an_error_not_a_panic() {
        let (_in_tx, in_rx) = mpsc::channel::<Accepted>(1);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let res = EnrichService::start(&config(1, 1), StageSetup::default(), in_rx, out_tx);
        assert_eq!(res.err(), Some(EnrichError::NoRuntime));
    }

    #[test]
    fn metrics_count_pings_and_label_queue_depth_per_worker() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // A current-thread runtime runs every task on this thread, where the
        // local recorder is installed.
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"));
            rt.block_on(async {
                let (in_tx, in_rx) = mpsc::channel(64);
                // 30 records and the 2 events of each vehicle's first ping.
                let (out_tx, out_rx) = mpsc::channel(128);
                let handle =
                    EnrichService::start(&config(2, 8), StageSetup::default(), in_rx, out_tx)
                        .unwrap_or_else(|e| panic!("{e}"));
                for seq in 0..30 {
                    let sent = in_tx
                        .send(accepted(&format!("veh-{seq}"), seq, Ack::none()))
                        .await;
                    assert!(sent.is_ok());
                }
                drop(in_tx);
                handle.join().await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(collect(out_rx).await.len(), 30);
            });
        });

        let mut pings = None;
        let mut depth_workers = Vec::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            match key.name() {
                PINGS_TOTAL => pings = Some(value),
                QUEUE_DEPTH => {
                    let labels: Vec<(String, String)> = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    depth_workers.push(labels);
                    // Drained at the end.
                    assert_eq!(value, DebugValue::Gauge(0.0.into()));
                }
                _ => {}
            }
        }
        assert_eq!(pings, Some(DebugValue::Counter(30)));
        depth_workers.sort();
        assert_eq!(
            depth_workers,
            vec![
                vec![("worker".to_owned(), "0".to_owned())],
                vec![("worker".to_owned(), "1".to_owned())],
            ]
        );
    }
}
