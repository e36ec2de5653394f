//! The enrich role: enrichment of the partitions of the raw topic this
//! member owns, with each vehicle's state kept in a compacted changelog
//! topic so that the next owner of a partition continues where this one
//! stopped.
//!
//! ```text
//! raw topic ─▶ group consumer ─▶ dispatcher ─┬─▶ worker 0 ─┐  outputs ─▶ Kafka sink
//!   (poll thread: assigned/revoked)          └─▶ worker n ─┤
//!                                                          └▶ checkpoints ─▶ changelog writer
//! ```
//!
//! The order of writes is the whole protocol (ARCHITECTURE.md, "Roles"):
//! 1. a worker enriches a ping; its telemetry record and events go to the
//!    output topics, each carrying a share of the worker's current
//!    *barrier*; the raw record's own ack is held;
//! 2. every `changelog_interval` the worker takes a checkpoint: the changed
//!    vehicles' snapshots (with the raw offset each has applied), the raw
//!    acks held, and the barrier, which it replaces;
//! 3. the changelog writer waits for the barrier (every output before the
//!    checkpoint is in Kafka), writes the snapshots, and only then marks the
//!    raw acks delivered, which lets the consumer group commit the raw
//!    offsets.
//!
//! So a crash anywhere replays from the last commit onto a snapshot that
//! never runs ahead of the outputs: a raw record at or below a vehicle's
//! applied offset is skipped (its outputs are in Kafka already), and one
//! above it is enriched again into the same records and the same
//! deterministic event ids, which the writer's keys deduplicate.
//!
//! Ownership follows the group: on assignment the poll thread waits while
//! the new partitions' vehicles are restored from the changelog and handed
//! to the workers ([`StateOwnership::assigned`]); on revoke, after the
//! group committed, their vehicles are dropped, so offline timers run for
//! owned vehicles only. A ping of a partition not owned is dropped
//! unacknowledged: its new owner reads it again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use fleetpipe_geofence::SharedIndex;
use fleetpipe_kafka::changelog::Changelog;
use fleetpipe_kafka::group::OwnershipListener;
use fleetpipe_kafka::group::offsets::TopicPartition;
use fleetpipe_model::{Accepted, Ack, AckStatus, BatchAck, SinkRecord, VehicleId};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::config::EnrichConfig;
use crate::error::EnrichError;
use crate::metrics::WorkerMetrics;
use crate::tracker::Tracker;

/// Most inputs taken from a channel at once.
const BATCH: usize = 256;
/// How often workers advance their wall clock.
const TICK: Duration = Duration::from_secs(1);
/// Checkpoints on their way to the changelog, per member.
const CHECKPOINT_QUEUE: usize = 4;

/// What the enrich role's workers are fed.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "pings are nearly every item: boxing them would cost an allocation per ping to shrink the rare ownership changes"
)]
pub enum PartitionedInput {
    /// A raw record's ping, with the raw record's ack.
    Ping {
        /// The ping; its ack settles the raw record's offset.
        accepted: Accepted,
        /// The raw partition it was read from.
        partition: i32,
        /// Its raw offset.
        offset: i64,
    },
    /// Take over `partitions` with the vehicles restored from their
    /// changelog.
    Restore {
        /// The partitions now owned.
        partitions: Vec<i32>,
        /// `(partition, vehicle, changelog value)`.
        vehicles: Vec<(i32, VehicleId, Bytes)>,
        /// Told once every worker holds its vehicles.
        done: oneshot::Sender<()>,
    },
    /// Drop `partitions` and their vehicles.
    Release {
        /// The partitions given up.
        partitions: Vec<i32>,
        /// Told once every worker dropped them.
        done: oneshot::Sender<()>,
    },
}

/// Why the enrich role stopped.
#[derive(Debug, thiserror::Error)]
pub enum PartitionedError {
    /// Outputs were not acknowledged by Kafka: the snapshots after them
    /// must never be written, so the member stops and the group replays.
    #[error(
        "enrich outputs were not stored in Kafka; stopping so the group replays from the last commit"
    )]
    OutputsFailed,
    /// A snapshot could not be written.
    #[error("changelog: {0}")]
    Changelog(#[from] fleetpipe_kafka::changelog::ChangelogError),
    /// A task of the stage ended unexpectedly.
    #[error("enrich task failed: {0}")]
    Task(String),
}

/// The changelog value of one vehicle: its tracker state and the raw offset
/// it has applied.
#[derive(Debug, Deserialize)]
struct StoredState<'a> {
    raw_offset: i64,
    /// Kept as the bytes it was, for the tracker to parse (once).
    #[serde(borrow)]
    state: &'a serde_json::value::RawValue,
}

fn stored_value(raw_offset: i64, state_json: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"raw_offset\":{raw_offset},\"state\":{state_json}}}"
    ))
}

/// Shared view of the partitions this member owns, for the changelog
/// writer: a snapshot of a partition given up meanwhile is not written.
#[derive(Debug, Clone, Default)]
struct Owned(Arc<Mutex<HashSet<i32>>>);

impl Owned {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Entry point of the enrich role's stage.
#[derive(Debug)]
pub struct PartitionedEnrich;

/// What the enrich role's stage starts from besides the enrich settings.
#[derive(Debug)]
pub struct PartitionedSetup {
    /// The geofences (reloadable).
    pub fences: SharedIndex,
    /// Where vehicle snapshots go and are restored from.
    pub changelog: Changelog,
    /// How often each worker writes the changed vehicles' snapshots (raw
    /// offsets commit only after them).
    pub changelog_interval: Duration,
    /// Longest a restore of assigned partitions may take.
    pub restore_timeout: Duration,
}

/// What [`PartitionedEnrich::start`] hands back.
#[derive(Debug)]
pub struct PartitionedHandle {
    /// Feed the raw records' pings here.
    pub input: mpsc::Sender<PartitionedInput>,
    /// Every task of the stage; each ends with the stage's outcome.
    pub tasks: JoinSet<Result<(), PartitionedError>>,
    /// Tell the consumer group about ownership changes through this.
    pub ownership: Arc<StateOwnership>,
}

impl PartitionedEnrich {
    /// Starts the dispatcher, the workers and the changelog writer.
    /// The handle's `input` closing (every sender dropped, the ownership
    /// listener's too) ends the stage: workers flush, the last checkpoint is
    /// written, `output` closes.
    ///
    /// # Errors
    ///
    /// An invalid configuration, or no Tokio runtime.
    pub fn start(
        config: &EnrichConfig,
        setup: PartitionedSetup,
        output: mpsc::Sender<SinkRecord>,
    ) -> Result<PartitionedHandle, EnrichError> {
        config.validate()?;
        let PartitionedSetup {
            fences,
            changelog,
            changelog_interval,
            restore_timeout,
        } = setup;
        let (input_tx, input) = mpsc::channel(config.queue_capacity);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EnrichError::NoRuntime)?;
        let count = crate::service::worker_count(config.workers);
        let owned = Owned::default();
        let changelog = Arc::new(changelog);
        let (checkpoints_tx, checkpoints) = mpsc::channel(CHECKPOINT_QUEUE);
        let mut tasks = JoinSet::new();
        let mut queues = Vec::with_capacity(count);
        for index in 0..count {
            let (tx, rx) = mpsc::channel(config.queue_capacity);
            queues.push(tx);
            let worker = PartitionWorker {
                index,
                tracker: Tracker::new(config, fences.clone())?,
                vehicles: HashMap::new(),
                owned: HashSet::new(),
                held: Vec::new(),
                barrier: BatchAck::new(),
                queue: rx,
                output: output.clone(),
                checkpoints: checkpoints_tx.clone(),
                metrics: WorkerMetrics::new(index),
            };
            tasks.spawn_on(worker.run(changelog_interval), &runtime);
        }
        drop(output);
        drop(checkpoints_tx);
        tasks.spawn_on(dispatch(input, queues), &runtime);
        tasks.spawn_on(
            write_checkpoints(Arc::clone(&changelog), owned.clone(), checkpoints),
            &runtime,
        );
        let ownership = Arc::new(StateOwnership {
            runtime,
            changelog,
            input: input_tx.clone(),
            restore_timeout,
            restoring: Arc::new(AtomicUsize::new(0)),
            owned,
        });
        tracing::info!(
            workers = count,
            ?changelog_interval,
            "enrich role stage started"
        );
        Ok(PartitionedHandle {
            input: input_tx,
            tasks,
            ownership,
        })
    }
}

/// The consumer group's [`OwnershipListener`]: restores assigned partitions
/// from the changelog and drops revoked ones.
#[derive(Debug)]
pub struct StateOwnership {
    runtime: tokio::runtime::Handle,
    changelog: Arc<Changelog>,
    input: mpsc::Sender<PartitionedInput>,
    restore_timeout: Duration,
    restoring: Arc<AtomicUsize>,
    owned: Owned,
}

impl StateOwnership {
    /// Restores in progress: the member is not ready while it is above 0.
    pub fn restoring(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.restoring)
    }

    async fn restore(&self, partitions: Vec<i32>) -> Result<(), String> {
        let started = std::time::Instant::now();
        let state = self
            .changelog
            .restore(&partitions, self.restore_timeout, |left| {
                crate::metrics::restore_remaining(left);
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut vehicles = Vec::with_capacity(state.len());
        for (key, restored) in state {
            match VehicleId::parse(&key) {
                Ok(vehicle) => vehicles.push((restored.partition, vehicle, restored.value)),
                Err(e) => {
                    tracing::warn!(key, error = %e, "changelog key is not a vehicle id; skipped");
                }
            }
        }
        let count = vehicles.len();
        let (done, installed) = oneshot::channel();
        let sent = self
            .input
            .send(PartitionedInput::Restore {
                partitions: partitions.clone(),
                vehicles,
                done,
            })
            .await;
        if sent.is_err() || installed.await.is_err() {
            return Err("the enrich stage stopped".into());
        }
        self.owned.set().extend(partitions.iter().copied());
        crate::metrics::restored(count, started.elapsed());
        tracing::info!(?partitions, vehicles = count, elapsed = ?started.elapsed(), "partitions restored from the changelog");
        Ok(())
    }
}

impl OwnershipListener for StateOwnership {
    fn assigned(&self, partitions: &[TopicPartition]) -> Result<(), String> {
        let partitions: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        self.restoring.fetch_add(1, Ordering::SeqCst);
        let result = self.runtime.block_on(self.restore(partitions));
        self.restoring.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn revoked(&self, partitions: &[TopicPartition], lost: bool) {
        let partitions: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        {
            let mut owned = self.owned.set();
            for partition in &partitions {
                owned.remove(partition);
            }
        }
        let released = self.runtime.block_on(async {
            let (done, released) = oneshot::channel();
            self.input
                .send(PartitionedInput::Release {
                    partitions: partitions.clone(),
                    done,
                })
                .await
                .ok()?;
            released.await.ok()
        });
        if released.is_none() {
            tracing::warn!(
                ?partitions,
                "enrich stage gone before the revoke reached it"
            );
        }
        tracing::info!(
            ?partitions,
            lost,
            "partitions released; their vehicles dropped"
        );
    }
}

/// Routes pings by vehicle; restores by vehicle, releases to every worker.
/// A worker gets the same inputs for its share: its vehicles, and a `done`
/// of its own, which the dispatcher awaits before answering the whole.
async fn dispatch(
    mut input: mpsc::Receiver<PartitionedInput>,
    queues: Vec<mpsc::Sender<PartitionedInput>>,
) -> Result<(), PartitionedError> {
    let mut batch = Vec::with_capacity(BATCH);
    while input.recv_many(&mut batch, BATCH).await > 0 {
        for item in batch.drain(..) {
            match item {
                PartitionedInput::Ping { ref accepted, .. } => {
                    let index = accepted.ping.vehicle_id.shard(queues.len());
                    queues[index].send(item).await.map_err(|_| worker_gone())?;
                }
                PartitionedInput::Restore {
                    partitions,
                    vehicles,
                    done,
                } => {
                    let mut shares: Vec<Vec<_>> = vec![Vec::new(); queues.len()];
                    for entry in vehicles {
                        shares[entry.1.shard(queues.len())].push(entry);
                    }
                    to_every_worker(&queues, |index, done| PartitionedInput::Restore {
                        partitions: partitions.clone(),
                        vehicles: std::mem::take(&mut shares[index]),
                        done,
                    })
                    .await?;
                    let _ = done.send(());
                }
                PartitionedInput::Release { partitions, done } => {
                    to_every_worker(&queues, |_, done| PartitionedInput::Release {
                        partitions: partitions.clone(),
                        done,
                    })
                    .await?;
                    let _ = done.send(());
                }
            }
        }
    }
    Ok(())
}

fn worker_gone() -> PartitionedError {
    PartitionedError::Task("an enrich worker stopped".into())
}

/// Sends worker `index` the input `share` makes for it with a `done` of its
/// own, then waits until every worker has done its share.
async fn to_every_worker(
    queues: &[mpsc::Sender<PartitionedInput>],
    mut share: impl FnMut(usize, oneshot::Sender<()>) -> PartitionedInput,
) -> Result<(), PartitionedError> {
    let mut done = Vec::with_capacity(queues.len());
    for (index, queue) in queues.iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        queue
            .send(share(index, tx))
            .await
            .map_err(|_| worker_gone())?;
        done.push(rx);
    }
    for rx in done {
        rx.await.map_err(|_| worker_gone())?;
    }
    Ok(())
}

/// What a checkpoint writes, and what waits for it.
#[derive(Debug)]
struct Checkpoint {
    /// Settles once every output before the checkpoint is in Kafka.
    barrier: BatchAck,
    /// `(partition, vehicle, changelog value)`.
    snapshots: Vec<(i32, String, Bytes)>,
    /// The raw records whose effect the snapshots hold.
    held: Vec<Ack>,
}

/// Where a vehicle's raw records come from and how far it has applied them.
#[derive(Debug, Clone, Copy)]
struct RawPosition {
    partition: i32,
    offset: i64,
}

/// One worker of the enrich role: the vehicles of its shard, of the owned
/// partitions.
struct PartitionWorker {
    index: usize,
    tracker: Tracker,
    vehicles: HashMap<VehicleId, RawPosition>,
    owned: HashSet<i32>,
    /// Raw acks waiting for the next checkpoint, with their partition.
    held: Vec<(i32, Ack)>,
    barrier: BatchAck,
    queue: mpsc::Receiver<PartitionedInput>,
    output: mpsc::Sender<SinkRecord>,
    checkpoints: mpsc::Sender<Checkpoint>,
    metrics: WorkerMetrics,
}

impl PartitionWorker {
    async fn run(mut self, changelog_interval: Duration) -> Result<(), PartitionedError> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut out = Vec::with_capacity(BATCH * 2);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checkpoint = tokio::time::interval(changelog_interval);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                n = self.queue.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.metrics.depth.set(self.queue.len() as f64);
                    for input in batch.drain(..) {
                        self.take(input, &mut out);
                    }
                    self.forward(&mut out).await?;
                }
                _ = ticker.tick() => {
                    self.tracker.tick(crate::service::wall_ms(), &mut out);
                    self.forward(&mut out).await?;
                    self.metrics.vehicles.set(self.tracker.vehicles() as f64);
                }
                _ = checkpoint.tick() => self.checkpoint().await?,
            }
        }
        // Input closed: what is held for reordering is applied, and the last
        // checkpoint covers it.
        self.tracker.flush(&mut out);
        self.forward(&mut out).await?;
        self.checkpoint().await?;
        self.metrics.depth.set(0.0);
        Ok(())
    }

    fn take(&mut self, input: PartitionedInput, out: &mut Vec<SinkRecord>) {
        match input {
            PartitionedInput::Ping {
                accepted,
                partition,
                offset,
            } => self.ping(accepted, partition, offset, out),
            PartitionedInput::Restore {
                partitions,
                vehicles,
                done,
            } => {
                self.owned.extend(partitions);
                let now = crate::service::wall_ms();
                for (partition, vehicle, value) in vehicles {
                    let restored = serde_json::from_slice::<StoredState>(&value)
                        .map_err(|e| e.to_string())
                        .and_then(|stored| {
                            self.tracker
                                .restore(vehicle.clone(), stored.state.get(), now)
                                .map(|()| stored.raw_offset)
                        });
                    match restored {
                        Ok(offset) => {
                            self.vehicles
                                .insert(vehicle, RawPosition { partition, offset });
                        }
                        Err(error) => {
                            tracing::warn!(%vehicle, partition, %error, "unreadable vehicle state in the changelog; the vehicle starts fresh");
                        }
                    }
                }
                let _ = done.send(());
            }
            PartitionedInput::Release { partitions, done } => {
                for partition in &partitions {
                    self.owned.remove(partition);
                }
                let gone: Vec<VehicleId> = self
                    .vehicles
                    .iter()
                    .filter(|(_, at)| partitions.contains(&at.partition))
                    .map(|(vehicle, _)| vehicle.clone())
                    .collect();
                for vehicle in &gone {
                    self.vehicles.remove(vehicle);
                    self.tracker.remove(vehicle);
                }
                // Their raw acks drop unmarked: the new owner reads them.
                self.held
                    .retain(|(partition, _)| !partitions.contains(partition));
                let _ = done.send(());
            }
        }
    }

    fn ping(&mut self, accepted: Accepted, partition: i32, offset: i64, out: &mut Vec<SinkRecord>) {
        if !self.owned.contains(&partition) {
            // Revoked while it was queued: its new owner reads it again.
            return;
        }
        let Accepted { ping, origin, ack } = accepted;
        let position = self
            .vehicles
            .entry(ping.vehicle_id.clone())
            .or_insert(RawPosition {
                partition,
                offset: -1,
            });
        if offset <= position.offset {
            // Applied before the snapshot this member restored: its outputs
            // are in Kafka already.
            crate::metrics::replay_skipped();
            ack.delivered();
            return;
        }
        *position = RawPosition { partition, offset };
        self.held.push((partition, ack));
        let accepted = Accepted {
            ping,
            origin,
            ack: self.barrier.ack(),
        };
        self.tracker.ingest(accepted, out);
        self.metrics.pings.increment(1);
    }

    /// Sends `out` downstream, each record holding a share of the barrier.
    async fn forward(&mut self, out: &mut Vec<SinkRecord>) -> Result<(), PartitionedError> {
        for record in out.drain(..) {
            let record = match &record {
                SinkRecord::Event(event) => {
                    crate::metrics::event_emitted(event.event_type.as_str());
                    if event.ack.is_tracked() {
                        record
                    } else {
                        // From a tick: no ping's ack, but the next snapshot
                        // must still wait for it.
                        record.with_ack(self.barrier.ack())
                    }
                }
                _ => record,
            };
            if self.output.send(record).await.is_err() {
                return Err(PartitionedError::Task("the enrich output closed".into()));
            }
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), PartitionedError> {
        let changed = self.tracker.take_dirty();
        if changed.is_empty() && self.held.is_empty() {
            return Ok(());
        }
        let snapshots = changed
            .into_iter()
            .filter_map(|(vehicle, json)| {
                let at = self.vehicles.get(&vehicle)?;
                Some((
                    at.partition,
                    vehicle.as_str().to_owned(),
                    stored_value(at.offset, &json),
                ))
            })
            .collect();
        let checkpoint = Checkpoint {
            barrier: std::mem::take(&mut self.barrier),
            snapshots,
            held: std::mem::take(&mut self.held)
                .into_iter()
                .map(|(_, ack)| ack)
                .collect(),
        };
        self.checkpoints
            .send(checkpoint)
            .await
            .map_err(|_| PartitionedError::Task("the changelog writer stopped".into()))
    }
}

impl std::fmt::Debug for PartitionWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionWorker")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Writes checkpoints in the order they were taken, each only after its
/// outputs are in Kafka, and then settles the raw records it covers.
async fn write_checkpoints(
    changelog: Arc<Changelog>,
    owned: Owned,
    mut checkpoints: mpsc::Receiver<Checkpoint>,
) -> Result<(), PartitionedError> {
    while let Some(Checkpoint {
        barrier,
        snapshots,
        held,
    }) = checkpoints.recv().await
    {
        if barrier.wait().await != AckStatus::Delivered {
            crate::metrics::checkpoint_failed();
            return Err(PartitionedError::OutputsFailed);
        }
        fleetpipe_kafka::crash_point("enrich.outputs_stored");
        let entries: Vec<(String, Option<Bytes>)> = {
            let owned = owned.set();
            snapshots
                .into_iter()
                .filter(|(partition, _, _)| owned.contains(partition))
                .map(|(_, vehicle, value)| (vehicle, Some(value)))
                .collect()
        };
        if !entries.is_empty() {
            let written = entries.len();
            let bytes = entries
                .iter()
                .map(|(_, value)| value.as_ref().map_or(0, Bytes::len))
                .sum();
            if let Err(e) = changelog.write(entries).await {
                crate::metrics::checkpoint_failed();
                return Err(e.into());
            }
            crate::metrics::snapshots_written(written, bytes);
        }
        fleetpipe_kafka::crash_point("enrich.snapshots_written");
        for ack in held {
            ack.delivered();
        }
    }
    Ok(())
}
