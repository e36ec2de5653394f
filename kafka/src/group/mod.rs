//! A member of a Kafka consumer group whose offsets follow the data's
//! acknowledgements: a record's offset is stored for commit only once every
//! sink holds what was made of it, so a member that dies (or loses its
//! partitions) makes the group read again exactly what was not yet stored.
//!
//! Built on librdkafka's cooperative-sticky assignor, with optional static
//! membership (`group.instance.id`), as Kafka Streams applications run:
//! - a **poll thread** owns the polling (librdkafka runs the rebalance
//!   callbacks on it) and hands each record to the async side through a
//!   bounded queue, so a slow pipeline stops the polling (backpressure);
//! - the **async side** ([`GroupConsumer::run`]) gives each record an
//!   [`Ack`], passes it on, and stores the commit point of each partition
//!   as the acknowledgements come back ([`offsets::Offsets`]); librdkafka
//!   commits what is stored every `commit_interval`;
//! - on a **revoke**, the callback stops handing out records of those
//!   partitions, waits (at most `revoke_timeout`, which must stay below the
//!   session timeout) for what is in flight to settle, and commits
//!   synchronously; a **lost** assignment (the member was fenced) commits
//!   nothing: another member owns the partitions already;
//! - an [`OwnershipListener`] (the enrich role's state store) is told of
//!   both on the poll thread: a new partition's records are fetched only
//!   once `assigned` returned (its state restored), and `revoked` runs after
//!   the commit (its state dropped);
//! - at **shutdown**, polling stops, what is in flight settles, and the
//!   stored offsets are committed before the member leaves the group.

pub mod offsets;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetpipe_model::{Ack, AckStatus, BatchAck};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::offsets::{Offsets, Settled, Ticket, TopicPartition};

/// How long one poll waits for a record before the thread looks at the
/// stop flag again.
pub(crate) const POLL_WAIT: Duration = Duration::from_millis(100);

/// How often librdkafka reports statistics (the lag gauge), unless the
/// pass-through options say otherwise.
pub(crate) const STATS_INTERVAL_MS: &str = "5000";

/// Records fetched and waiting for the async side, per member.
pub(crate) const HANDOFF_QUEUE: usize = 1024;

/// `[cluster.group]`-style settings of one consumer group membership.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Static membership (`group.instance.id`): a member that restarts
    /// within `session_timeout` under the same id gets its partitions back
    /// without a rebalance. Unique per member (e.g. the pod name of a
    /// StatefulSet). Unset: dynamic membership.
    pub instance_id: Option<String>,
    /// A member not heard from for this long is considered dead and its
    /// partitions move (`session.timeout.ml`).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Longest the member may go without polling before it leaves the group
    /// (`max.poll.interval.ms`): a pipeline stalled this long gives its
    /// partitions up.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// On a revoke, longest the member waits for the records of the revoked
    /// partitions in flight to settle before it commits what settled; must
    /// be below `session_timeout`.
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            revoke_timeout: Duration::from_secs(5),
            commit_interval: Duration::from_secs(1),
        }
    }
}

impl GroupConfig {
    /// Timeouts librdkafka accepts and a revoke that ends before the
    /// session does.
    ///
    /// # Errors
    ///
    /// The first rule broken, naming the key under `section`.
    pub fn validate(&self, section: &'static str) -> Result<(), GroupError> {
        let ms = |d: Duration| d.as_millis();
        if !(1..=3_600_000).contains(&ms(self.session_timeout)) {
            return Err(GroupError::Config {
                key: format!("{section}.session_timeout"),
                rule: "1ms to 1h",
            });
        }
        if ms(self.max_poll_interval) < ms(self.session_timeout)
            || ms(self.max_poll_interval) > i32::MAX as u128
        {
            return Err(GroupError::Config {
                key: format!("{section}.max_poll_interval"),
                rule: "at least session_timeout, at most 24 days",
            });
        }
        if self.revoke_timeout >= self.session_timeout {
            return Err(GroupError::Config {
                key: format!("{section}.revoke_timeout"),
                rule: "below session_timeout (a revoke that outlasts the session loses the partitions anyway)",
            });
        }
        if self.commit_interval.is_zero() || ms(self.commit_interval) > i32::MAX as u128 {
            return Err(GroupError::Config {
                key: format!("{section}.commit_interval"),
                rule: "at least 1ms",
            });
        }
        if self.instance_id.as_ref().is_some_and(String::is_empty) {
            return Err(GroupError::Config {
                key: format!("{section}.instance_id"),
                rule: "not empty (leave it out for dynamic membership)",
            });
        }
        Ok(())
    }
}

/// A consumer group member could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A setting is out of range.
    #[error("{key}: {rule}")]
    Config {
        /// The key, e.g. `cluster.group.revoke_timeout`.
        key: String,
        /// What it must be.
        rule: &'static str,
    },
    /// librdkafka refused the consumer's options or the subscription.
    #[error("kafka consumer: {0}")]
    Client(#[from] RdKafkaError),
    /// The poll thread ended on its own.
    #[error("kafka consumer: the poll thread stopped")]
    PollThread,
    /// The [`OwnershipListener`] could not take over assigned partitions
    /// (they are paused: this member must stop so another takes them).
    #[error("kafka consumer: taking over partitions {partitions:?}: {reason}")]
    TakeOver {
        /// The partitions assigned.
        partitions: Vec<TopicPartition>,
        /// Why.
        reason: String,
    },
}

/// Told when this member's partitions change, on the poll thread while
/// librdkafka waits (keep it below `max_poll_interval`).
pub trait OwnershipListener: Send + Sync + 'static {
    /// `partitions` were assigned. No record of theirs is handed out before
    /// this returns; an error pauses them and stops the member
    /// ([`GroupError::TakeOver`]).
    ///
    /// # Errors
    ///
    /// The partitions cannot be taken over (e.g. their state not restored).
    fn assigned(&self, partitions: &[TopicPartition]) -> Result<(), String>;

    /// `partitions` are gone: after their records in flight settled (or
    /// `revoke_timeout` passed) and what settled was committed; `lost`
    /// when the member was fenced, and nothing was committed.
    fn revoked(&self, partitions: &[TopicPartition], lost: bool);
}

/// One record as the group delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its value (empty for a tombstone).
    pub value: Bytes,
    /// Its headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// Its timestamp, epoch milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// A record and the acknowledgement its offset waits for: mark it
/// delivered once everything made of the record is stored.
#[derive(Debug)]
pub struct Delivery {
    /// The record.
    pub record: ConsumedRecord,
    /// Settles the record's offset.
    pub ack: Ack,
}

/// What the poll thread and the rebalance callback share with the async side.
#[derive(Debug)]
struct Shared {
    offsets: Mutex<Offsets>,
    /// Signalled on every settlement, for a revoke waiting for its partitions.
    settled: Condvar,
    revoke_timeout: Duration,
    /// Why the listener could not take partitions over, for `run` to end on.
    take_over: Mutex<Option<GroupError>>,
}

impl Shared {
    fn failed_take_over(&self) -> bool {
        self.take_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn take_over_error(&self) -> Option<GroupError> {
        self.take_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn offsets(&self) -> MutexGuard<'_, Offsets> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.offsets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// librdkafka's callbacks: assignment and revoke bookkeeping.
struct GroupContext {
    shared: Arc<Shared>,
    listener: Option<Arc<dyn OwnershipListener>>,
}

impl ClientContext for GroupContext {
    /// librdkafka's statistics, every `statistics.interval.ms`: the lag of
    /// each owned partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (name, topic) in &statistics.topics {
            for (id, partition) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *id < 0 {
                    continue;
                }
                let offsets = PartitionOffsets {
                    fetching: partition.desired && partition.fetch_state != "none",
                    high: partition.hi_offset,
                    low: partition.lo_offset,
                    stored: partition.stored_offset,
                    committed: partition.committed_offset,
                };
                if let Some(lag) = offsets.unstored() {
                    crate::metrics::consumer_lag(name, *id, lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let tps = topic_partitions(tpl);
        let lost = consumer.assignment_lost();
        let mut offsets = self.shared.offsets();
        for tp in &tps {
            offsets.start_revoke(tp);
        }
        if !lost {
            let deadline = Instant::now() + self.shared.revoke_timeout;
            while offsets.pending(&tps) > 0 {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                offsets = self
                    .shared
                    .settled
                    .wait_timeout(offsets, left)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        let unsettled = offsets.pending(&tps);
        let points: Vec<(TopicPartition, i64)> = tps
            .iter()
            .filter_map(|tp| offsets.revoke(tp).map(|point| (tp.clone(), point)))
            .collect();
        drop(offsets);
        let given_up = if lost { "lost" } else { "revoked" };
        crate::metrics::partitions_given_up(given_up, tps.len());
        if lost {
            tracing::warn!(partitions = ?tps, "partitions lost (this member was fenced or timed out): nothing committed, their new owner reads them again");
            if let Some(listener) = &self.listener {
                listener.revoked(&tps, true);
            }
            return;
        }
        if unsettled > 0 {
            tracing::warn!(partitions = ?tps, unsettled, "revoke: records still in flight after revoke_timeout; their new owner reads them again");
        }
        if !points.is_empty() {
            let result =
                store(consumer, &points).and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync));
            if let Err(e) = result {
                tracing::warn!(error = %e, "revoke: commit failed; the new owner reads from the previous commit");
            }
        }
        if let Some(listener) = &self.listener {
            listener.revoked(&tps, false);
        }
        tracing::info!(partitions = ?tps, committed = ?points, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let tps = topic_partitions(tpl);
        if tps.is_empty() {
            return;
        }
        if let Some(listener) = &self.listener
            && let Err(reason) = listener.assigned(&tps)
        {
            // Nothing of them may be read without their state: pause them
            // and stop, so the group gives them to another member.
            if let Err(e) = consumer.pause(tpl) {
                tracing::error!(error = %e, "pausing partitions that could not be taken over");
            }
            tracing::error!(partitions = ?tps, %reason, "partitions could not be taken over; this member stops");
            *self
                .shared
                .take_over
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(GroupError::TakeOver {
                partitions: tps,
                reason,
            });
            return;
        }
        let mut offsets = self.shared.offsets();
        for tp in &tps {
            offsets.assign(tp.clone());
        }
        tracing::info!(partitions = ?tps, "partitions assigned");
    }
}

/// What librdkafka's statistics say of one partition's offsets (a
/// negative offset is "none yet").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionOffsets {
    /// Assigned to this member and being fetched.
    fetching: bool,
    /// The high watermark: one past the last record.
    high: i64,
    /// The first record still in the log.
    low: i64,
    /// The commit point stored by this member.
    stored: i64,
    /// The group's committed offset.
    committed: i64,
}

impl PartitionOffsets {
    /// Records not yet stored: from the stored commit point, else the
    /// group's commit, else the log's start (`auto.offset.reset =
    /// earliest`) to the high watermark. `None` for a partition not owned,
    /// or before the watermark is known. (librdkafka's own
    /// `consumer_lag_stored` stays unknown until something was stored.)
    fn unstored(self) -> Option<i64> {
        if !self.fetching || self.high < 0 {
            return None;
        }
        let from = [self.stored, self.committed, self.low]
            .into_iter()
            .find(|offset| *offset >= 0)?;
        Some((self.high - from).max(0))
    }
}

fn topic_partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Stores `points` (next offset to read, per partition) for commit.
fn store(
    consumer: &BaseConsumer<GroupContext>,
    points: &[(TopicPartition, i64)],
) -> Result<TopicPartitionList, RdKafkaError> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), point) in points {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*point))?;
    }
    consumer.store_offsets(&tpl)?;
    Ok(tpl)
}

/// A started member: the poll thread runs; [`GroupConsumer::run`] drives
/// the rest.
pub struct GroupConsumer {
    consumer: Arc<BaseConsumer<GroupContext>>,
    shared: Arc<Shared>,
    records: mpsc::Receiver<ConsumedRecord>,
    stop: Arc<AtomicBool>,
    poll_thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer").finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// Joins `group_id` with `client` (from [`crate::client_config`]: the
    /// brokers and the pass-through options) and subscribes to `topics`.
    /// The group's own settings win over the pass-through options: offsets
    /// are stored only when the data is, whatever the map says.
    ///
    /// # Errors
    ///
    /// A setting out of range or refused by librdkafka.
    pub fn start(
        client: ClientConfig,
        group_id: &str,
        group: &GroupConfig,
        topics: &[&str],
    ) -> Result<Self, GroupError> {
        Self::start_with(client, group_id, group, topics, None)
    }

    /// [`GroupConsumer::start`], telling `listener` of every change of
    /// this member's partitions.
    ///
    /// # Errors
    ///
    /// A setting out of range or refused by librdkafka.
    pub fn start_with(
        mut client: ClientConfig,
        group_id: &str,
        group: &GroupConfig,
        topics: &[&str],
        listener: Option<Arc<dyn OwnershipListener>>,
    ) -> Result<Self, GroupError> {
        let shared = Arc::new(Shared {
            offsets: Mutex::default(),
            settled: Condvar::new(),
            revoke_timeout: group.revoke_timeout,
            take_over: Mutex::new(None),
        });
        client
            .set("group.id", group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "true")
            // Offsets are stored only when the data is: see `run`.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                group.session_timeout.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                group.max_poll_interval.as_millis().to_string(),
            )
            .set(
                "auto.commit.interval.ms",
                group.commit_interval.as_millis().to_string(),
            );
        if let Some(id) = &group.instance_id {
            client.set("group.instance.id", id);
        }
        if client.get("statistics.interval.ms").is_none() {
            // For the lag gauge; the pass-through options may choose another.
            client.set("statistics.interval.ms", STATS_INTERVAL_MS);
        }
        let context = GroupContext {
            shared: Arc::clone(&shared),
            listener,
        };
        let consumer: BaseConsumer<GroupContext> = client.create_with_context(context)?;
        consumer.subscribe(topics)?;
        let consumer = Arc::new(consumer);
        let (tx, records) = mpsc::channel(HANDOFF_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let poll_thread = {
            let consumer = Arc::clone(&consumer);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("kafka-poll".into())
                .spawn(move || poll(&consumer, &tx, &stop))
                .map_err(|_| GroupError::PollThread)?
        };
        Ok(Self {
            consumer,
            shared,
            records,
            stop,
            poll_thread,
        })
    }

    /// Hands every record to `output` with its [`Ack`] and stores each
    /// partition's commit point as the acks come back, until `shutdown`;
    /// then stops polling, waits for what is in flight to settle, commits,
    /// and leaves the group.
    ///
    /// # Errors
    ///
    /// The poll thread stopped on its own.
    pub async fn run(
        self,
        output: mpsc::Sender<Delivery>,
        shutdown: CancellationToken,
    ) -> Result<(), GroupError> {
        let GroupConsumer {
            consumer,
            shared,
            mut records,
            stop,
            poll_thread,
        } = self;
        let mut settling = FuturesUnordered::new();
        let mut result = Ok(());
        loop {
            tokio::select! {
                biased;
                Some((tp, ticket, offset, status)) = settling.next(), if !settling.is_empty() => {
                    settle(&consumer, &shared, &tp, ticket, offset, status);
                }
                () = shutdown.cancelled() => break,
                record = records.recv() => {
                    let Some(record) = record else {
                        result = Err(shared.take_over_error().unwrap_or(GroupError::PollThread));
                        break;
                    };
                    let tp = (record.topic.clone(), record.partition);
                    let offset = record.offset;
                    let Some(ticket) = shared.offsets().hand_out(&tp, offset) else {
                        // Its partition is being revoked (or was): the next
                        // owner reads it.
                        continue;
                    };
                    let batch = BatchAck::new();
                    let ack = batch.ack();
                    settling.push(async move { (tp, ticket, offset, batch.wait().await) });
                    if output.send(Delivery { record, ack }).await.is_err() {
                        // The pipeline stopped taking records: shutdown.
                        break;
                    }
                }
            }
        }
        // Stop polling; records already fetched are not handed out.
        stop.store(true, Ordering::SeqCst);
        drop(records);
        while let Some((tp, ticket, offset, status)) = settling.next().await {
            settle(&consumer, &shared, &tp, ticket, offset, status);
        }
        // Blocking calls (joining the thread, the commit, leaving the group)
        // off the async workers.
        let left = tokio::task::spawn_blocking(move || {
            let _ = poll_thread.join();
            let points = shared.offsets().commit_points();
            if !points.is_empty()
                && let Err(e) = store(&consumer, &points)
                    .and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync))
            {
                tracing::warn!(error = %e, "final commit failed; the group reads from the previous commit");
            }
            // Dropping the last handle closes the consumer: it leaves the
            // group (a static member only stops heartbeating).
            drop(consumer);
        })
        .await;
        if left.is_err() {
            return Err(GroupError::PollThread);
        }
        result
    }
}

/// A record settled: move its partition's commit point and store it.
fn settle(
    consumer: &BaseConsumer<GroupContext>,
    shared: &Shared,
    tp: &TopicPartition,
    ticket: Ticket,
    offset: i64,
    status: AckStatus,
) {
    let settled = match status {
        AckStatus::Delivered => Settled::Delivered,
        AckStatus::Failed => Settled::Failed,
    };
    crate::crash_point("group.settled");
    let changed = {
        let mut offsets = shared.offsets();
        offsets.settle(tp, ticket, offset, settled);
        offsets.take_changed()
    };
    shared.settled.notify_all();
    if settled == Settled::Failed {
        tracing::warn!(topic = %tp.0, partition = tp.1, offset, "a record was not stored; its partition commits nothing past it until it is read again");
    }
    if !changed.is_empty()
        && let Err(e) = store(consumer, &changed)
    {
        // A partition revoked meanwhile refuses the store: its revoke
        // committed what had settled.
        tracing::debug!(error = %e, "storing offsets");
    }
}

/// A fetched message as the async side takes it (owned copies).
pub(crate) fn consumed(message: &rdkafka::message::BorrowedMessage<'_>) -> ConsumedRecord {
    ConsumedRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(Bytes::copy_from_slice),
        value: message
            .payload()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(Bytes::copy_from_slice).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        timestamp_ms: message.timestamp().to_millis(),
    }
}

/// The poll thread: fetches records and hands them to the async side until
/// told to stop or the async side is gone. Rebalance callbacks run here.
fn poll(
    consumer: &BaseConsumer<GroupContext>,
    records: &mpsc::Sender<ConsumedRecord>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        if consumer.context().shared.failed_take_over() {
            // Ending drops `records`: `run` reports why.
            return;
        }
        match consumer.poll(POLL_WAIT) {
            None => {}
            Some(Err(e)) => {
                // Broker and network trouble: librdkafka retries by itself.
                tracing::warn!(error = %e, "kafka consumer");
            }
            Some(Ok(message)) => {
                let record = consumed(&message);
                if records.blocking_send(record).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PartitionOffsets;

    fn offsets(stored: i64, committed: i64) -> PartitionOffsets {
        PartitionOffsets {
            fetching: true,
            high: 100,
            low: 10,
            stored,
            committed,
        }
    }

    #[test]
    fn the_lag_counts_from_the_newest_known_commit_point() {
        assert_eq!(
            offsets(-1001, -1001).unstored(),
            Some(90),
            "from the log's start"
        );
        assert_eq!(
            offsets(-1001, 40).unstored(),
            Some(60),
            "from the group's commit"
        );
        assert_eq!(
            offsets(70, 40).unstored(),
            Some(30),
            "from what this member stored"
        );
        assert_eq!(offsets(100, 40).unstored(), Some(0));
        let not_owned = PartitionOffsets {
            fetching: false,
            ..offsets(70, 40)
        };
        assert_eq!(not_owned.unstored(), None);
        let unknown = PartitionOffsets {
            high: -1,
            ..offsets(70, 40)
        };
        assert_eq!(unknown.unstored(), None);
    }
}
