//! A reader of every partition of some topics, from their end, outside any
//! consumer group: what a read node (`cluster.role = "read"`) serves the
//! live feed from. Every read node must see the whole fleet, so none may
//! share the partitions with another, as the members of one group do.
//!
//! - At start, every partition of the topics is looked up and assigned to
//!   this consumer alone (librdkafka's manual assignment: no group is
//!   joined, so no rebalance ever takes a partition away) at its high
//!   watermark as of then: the tail reads what is produced from then on,
//!   and is caught up from the moment it starts ([`Tail::starts`]).
//! - Nothing is committed: a tail's position means nothing once it stops;
//!   the next start begins at the end again.
//! - A position that falls out of the log (retention deleted records not
//!   yet read) jumps to the end (`auto.offset.reset = latest`): a live view
//!   skips what it could not keep up with rather than stopping.
//! - The partitions are those the topics have at start: fleetpipe never
//!   repartitions (`cluster.partitions`, checked by every role at start).
//! - The poll thread and its bounded handoff are the group member's
//!   ([`crate::group`]): a slow reader stops the polling, it never queues
//!   without bound.
//!
//! librdkafka assigns partitions only to a consumer configured with a
//! `group.id`; a tail's is its own and used for nothing (no join, no
//! commit, no offset fetch: every start position is explicit).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleetpipe_model::Ack;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::group::offsets::TopicPartition;
use crate::group::{ConsumedRecord, Delivery, HANDOFF_QUEUE, POLL_WAIT, STATS_INTERVAL_MS};

/// Pause between two attempts to read a topic's partitions and their ends
/// (a topic just created may have no leader yet).
const RETRY: Duration = Duration::from_millis(200);

/// A tail could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// librdkafka refused the consumer's options or the assignment.
    #[error("kafka tail: {0}")]
    Client(#[from] RdKafkaError),
    /// A topic's partitions or their ends could not be read in time.
    #[error("kafka tail: topic {topic:?}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why (the last attempt's error).
        reason: String,
    },
    /// The poll thread ended on its own.
    #[error("kafka tail: the poll thread stopped")]
    PollThread,
}

/// librdkafka's callbacks: the lag of each partition.
struct TailContext;

impl ClientContext for TailContext {
    /// librdkafka's statistics, every `statistics.interval.ms`: records of
    /// each partition not yet read (its high watermark minus the next
    /// offset handed out; unknown until a first record was read).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (name, topic) in &statistics.topics {
            for (id, partition) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition.
                if *id < 0 || !partition.desired || partition.consumer_lag < 0 {
                    continue;
                }
                crate::metrics::consumer_lag(name, *id, partition.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for TailContext {}

/// Tells the poll thread to stop when dropped: a tail dropped without
/// being run (its process failed to start) leaves no thread behind.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A started tail: every partition assigned, the poll thread running;
/// [`Tail::run`] hands the records on.
pub struct Tail {
    consumer: Arc<BaseConsumer<TailContext>>,
    records: mpsc::Receiver<ConsumedRecord>,
    stop: StopOnDrop,
    poll_thread: std::thread::JoinHandle<()>,
    starts: Vec<(TopicPartition, i64)>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("starts", &self.starts)
            .finish_non_exhaustive()
    }
}

impl Tail {
    /// Looks up every partition of `topics` and its high watermark, within
    /// `timeout` (retrying meanwhile), and assigns each at it with `client`
    /// (from [`crate::client_config`]) under `group_id`, which no other
    /// process may use. Blocks on the cluster's answers: call it off the
    /// async workers.
    ///
    /// # Errors
    ///
    /// The options are refused, or a topic's partitions or ends could not
    /// be read within `timeout`.
    pub fn start(
        mut client: ClientConfig,
        group_id: &str,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<Self, TailError> {
        client
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "false");
        if client.get("statistics.interval.ms").is_none() {
            // For the lag gauge; the pass-through options may choose another.
            client.set("statistics.interval.ms", STATS_INTERVAL_MS);
        }
        let consumer: BaseConsumer<TailContext> = client.create_with_context(TailContext)?;
        let deadline = Instant::now() + timeout;
        let mut starts = Vec::new();
        for topic in topics {
            starts.extend(ends(&consumer, topic, deadline)?);
        }
        let mut assignment = TopicPartitionList::new();
        for ((topic, partition), offset) in &starts {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        consumer.assign(&assignment)?;
        let consumer = Arc::new(consumer);
        let (tx, records) = mpsc::channel(HANDOFF_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let poll_thread = {
            let consumer = Arc::clone(&consumer);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("kafka-tail".into())
                .spawn(move || poll(&consumer, &tx, &stop))
                .map_err(|_| TailError::PollThread)?
        };
        Ok(Self {
            consumer,
            records,
            stop: StopOnDrop(stop),
            poll_thread,
            starts,
        })
    }

    /// Every partition read, and the offset it is read from (its high
    /// watermark at start).
    pub fn starts(&self) -> &[(TopicPartition, i64)] {
        &self.starts
    }

    /// Hands every record to `output` until `shutdown` (or until `output`
    /// is closed), then stops polling. Each [`Delivery`]'s ack is one
    /// nobody waits for: a tail commits nothing.
    ///
    /// # Errors
    ///
    /// The poll thread stopped on its own.
    pub async fn run(
        self,
        output: mpsc::Sender<Delivery>,
        shutdown: CancellationToken,
    ) -> Result<(), TailError> {
        let Tail {
            consumer,
            mut records,
            stop,
            poll_thread,
            starts: _,
        } = self;
        let result = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                record = records.recv() => {
                    let Some(record) = record else {
                        break Err(TailError::PollThread);
                    };
                    let delivery = Delivery { record, ack: Ack::none() };
                    if output.send(delivery).await.is_err() {
                        // The pipeline stopped taking records: shutdown.
                        break Ok(());
                    }
                }
            }
        };
        drop(stop);
        // A poll thread waiting for room in the handoff gives up.
        drop(records);
        let joined = tokio::task::spawn_blocking(move || {
            let _ = poll_thread.join();
            drop(consumer);
        })
        .await;
        if joined.is_err() {
            return Err(TailError::PollThread);
        }
        result
    }
}

/// Every partition of `topic` and its high watermark, retried until
/// `deadline`.
fn ends(
    consumer: &BaseConsumer<TailContext>,
    topic: &str,
    deadline: Instant,
) -> Result<Vec<(TopicPartition, i64)>, TailError> {
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(RETRY);
        match try_ends(consumer, topic, left) {
            Ok(ends) => return Ok(ends),
            Err(reason) if Instant::now() + RETRY < deadline => {
                tracing::debug!(topic, %reason, "kafka tail: partitions not known yet; retrying");
                std::thread::sleep(RETRY);
            }
            Err(reason) => {
                return Err(TailError::Topic {
                    topic: topic.to_owned(),
                    reason,
                });
            }
        }
    }
}

fn try_ends(
    consumer: &BaseConsumer<TailContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(TopicPartition, i64)>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err("not in the cluster's metadata".into());
    };
    if let Some(error) = found.error() {
        return Err(RDKafkaErrorCode::from(error).to_string());
    }
    if found.partitions().is_empty() {
        return Err("no partitions".into());
    }
    let mut ends = Vec::with_capacity(found.partitions().len());
    for partition in found.partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition.id(), timeout)
            .map_err(|e| format!("partition {}: {e}", partition.id()))?;
        ends.push(((topic.to_owned(), partition.id()), high));
    }
    ends.sort();
    Ok(ends)
}

/// The poll thread: fetches records and hands them to the async side until
/// told to stop or the async side is gone.
fn poll(
    consumer: &BaseConsumer<TailContext>,
    records: &mpsc::Sender<ConsumedRecord>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(POLL_WAIT) {
            None => {}
            Some(Err(e)) => {
                // Broker and network trouble: librdkafka retries by itself.
                tracing::warn!(error = %e, "kafka tail");
            }
            Some(Ok(message)) => {
                let record = crate::group::consumed(&message);
                if records.blocking_send(record).is_err() {
                    return;
                }
            }
        }
    }
}
