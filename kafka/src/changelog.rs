//! The changelog: a compacted topic of per-vehicle state, for the members
//! of a group that own vehicles by partition.
//!
//! A record is keyed by vehicle id and holds the vehicle's latest state
//! (bytes the owner chose, e.g. its JSON snapshot); an empty value (a
//! tombstone) forgets the vehicle. Records are produced with fleetpipe's
//! one partitioner ([`crate::producer_config`]) into a topic with as many
//! partitions as the input topic, so a vehicle's state lives in the
//! partition number its input records come from: a member that is assigned
//! input partition `p` restores changelog partition `p`, nothing else.
//!
//! Restoring reads the assigned partitions from the start up to the high
//! watermark read when the restore began (and on until they are quiet, for
//! a broker that reports it short), with a consumer of its own that only
//! assigns (never joins the group) and commits nothing. The last value
//! of a key wins, so the restore is right whether or not the broker has
//! compacted yet (Tansu's memory engine never compacts).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::try_join_all;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::TopicSpec;

/// Longest one produce may wait for its acknowledgement in librdkafka's
/// queue before it is reported failed.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Past the high watermarks, how long the restore reads on until nothing
/// more comes (see `restore_blocking`).
const QUIET_END: Duration = Duration::from_millis(300);

/// How long one poll of the restore waits for a record.
const RESTORE_POLL: Duration = Duration::from_millis(100);

/// The changelog could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    /// librdkafka refused the client's options.
    #[error("changelog {topic}: client: {source}")]
    Client {
        /// The changelog topic.
        topic: String,
        /// Why.
        source: Box<RdKafkaError>,
    },
    /// A snapshot was not acknowledged.
    #[error("changelog {topic}: snapshot of {key:?} not stored: {source}")]
    Produce {
        /// The changelog topic.
        topic: String,
        /// The vehicle.
        key: String,
        /// Why.
        source: Box<RdKafkaError>,
    },
    /// The restore could not read a partition to its end in time.
    #[error("changelog {topic}: restore of partition {partition}: {reason}")]
    Restore {
        /// The changelog topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Why.
        reason: String,
    },
}

/// A key's latest value in the changelog, and the partition it was read
/// from (the partition of the key's input records: one partitioner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The partition.
    pub partition: i32,
    /// The latest value.
    pub value: Bytes,
}

/// A changelog topic: write snapshots, restore partitions.
pub struct Changelog {
    topic: String,
    producer: FutureProducer,
    /// For restore consumers (no group membership, no commits).
    reader: ClientConfig,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changelog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Changelog {
    /// The changelog topic as fleetpipe creates it: compacted, with
    /// `partitions` equal to the input topic's.
    pub fn spec(topic: &str, partitions: i32, replication_factor: i32) -> TopicSpec {
        TopicSpec::new(topic, partitions, replication_factor).config("cleanup.policy", "compact")
    }

    /// A changelog on `topic`, producing with `producer` (from
    /// [`crate::producer_config`]: the one partitioner) and restoring with
    /// `reader` (from [`crate::client_config`]).
    ///
    /// # Errors
    ///
    /// librdkafka refuses the options.
    pub fn new(
        topic: &str,
        mut producer: ClientConfig,
        reader: ClientConfig,
    ) -> Result<Self, ChangelogError> {
        let client = |source| ChangelogError::Client {
            topic: topic.to_owned(),
            source: Box::new(source),
        };
        let producer = producer
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(client)?;
        Ok(Self {
            topic: topic.to_owned(),
            producer,
            reader,
        })
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes each `(vehicle, state)`; `None` is a tombstone. Returns once
    /// every record is acknowledged by the cluster (`acks=all`), or with
    /// the first that was not.
    ///
    /// # Errors
    ///
    /// A snapshot not acknowledged within librdkafka's message timeout.
    pub async fn write(
        &self,
        snapshots: Vec<(String, Option<Bytes>)>,
    ) -> Result<(), ChangelogError> {
        let sends = snapshots.iter().map(|(key, state)| async move {
            let mut record = FutureRecord::<str, [u8]>::to(&self.topic).key(key.as_str());
            if let Some(state) = state {
                record = record.payload(&state[..]);
            }
            self.producer
                .send(record, PRODUCE_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|(source, _)| ChangelogError::Produce {
                    topic: self.topic.clone(),
                    key: key.clone(),
                    source: Box::new(source),
                })
        });
        try_join_all(sends).await.map(|_| ())
    }

    /// The latest state of every vehicle in `partitions`, read up to the
    /// high watermark each had when the restore began, within `timeout`.
    /// `progress` is told the records still to read whenever it moves.
    ///
    /// # Errors
    ///
    /// A partition that cannot be read to its watermark in time.
    pub async fn restore(
        &self,
        partitions: &[i32],
        timeout: Duration,
        progress: impl Fn(i64) + Send + 'static,
    ) -> Result<BTreeMap<String, Restored>, ChangelogError> {
        let topic = self.topic.clone();
        let reader = self.reader.clone();
        let partitions = partitions.to_vec();
        let failed = |partition, reason: String| ChangelogError::Restore {
            topic: self.topic.clone(),
            partition,
            reason,
        };
        // librdkafka's consumer calls block: off the async workers.
        tokio::task::spawn_blocking(move || {
            restore_blocking(&topic, reader, &partitions, timeout, &progress)
        })
        .await
        .map_err(|e| failed(-1, e.to_string()))?
        .map_err(|(partition, reason)| failed(partition, reason))
    }
}

/// [`Changelog::restore`] on the calling thread.
fn restore_blocking(
    topic: &str,
    mut reader: ClientConfig,
    partitions: &[i32],
    timeout: Duration,
    progress: &dyn Fn(i64),
) -> Result<BTreeMap<String, Restored>, (i32, String)> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = reader
        // A group id is required to create a consumer; it only assigns, so
        // it never joins this group nor commits to it.
        .set("group.id", "fleetpipe-changelog-restore")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| (-1, e.to_string()))?;
    // Where each partition ends now: records written later belong to the
    // new owner's own writes.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    // The next offset to read of each partition, from its log start: the
    // progress counts what is left from there, not from offset 0.
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, remaining(deadline))
            .map_err(|e| (partition, format!("watermarks: {e}")))?;
        if high > low {
            ends.insert(partition, high);
            next.insert(partition, low);
            tpl.add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(|e| (partition, e.to_string()))?;
        }
    }
    let mut state = BTreeMap::new();
    if ends.is_empty() {
        progress(0);
        return Ok(state);
    }
    consumer.assign(&tpl).map_err(|e| (-1, e.to_string()))?;
    let left = |next: &HashMap<i32, i64>| -> i64 {
        ends.iter()
            .map(|(p, end)| (end - next.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    };
    progress(left(&next));
    // Read to the ends taken above, then on until nothing more comes for
    // QUIET_END: Tansu 0.6.0 answers ListOffsets with the last batch's base
    // offset + 1, short of the real end when that batch holds several
    // records. The partitions are paused for the group (their new owner
    // restores before it writes), so what comes after the ends is the
    // previous owner's last snapshots, which belong in the restore.
    let mut quiet_since = Instant::now();
    loop {
        let reached = ends
            .iter()
            .all(|(p, end)| next.get(p).copied().unwrap_or(0) >= *end);
        if reached && quiet_since.elapsed() >= QUIET_END {
            break;
        }
        if Instant::now() >= deadline {
            let partition = ends
                .iter()
                .find(|(p, end)| next.get(p).copied().unwrap_or(0) < **end)
                .map_or(-1, |(p, _)| *p);
            return Err((partition, format!("not read to its end within {timeout:?}")));
        }
        match consumer.poll(RESTORE_POLL) {
            None => {}
            Some(Err(e)) => tracing::warn!(topic, error = %e, "changelog restore"),
            Some(Ok(message)) => {
                quiet_since = Instant::now();
                next.insert(message.partition(), message.offset() + 1);
                let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                match message.payload() {
                    Some(value) if !value.is_empty() => {
                        state.insert(
                            key.to_owned(),
                            Restored {
                                partition: message.partition(),
                                value: Bytes::copy_from_slice(value),
                            },
                        );
                    }
                    _ => {
                        state.remove(key);
                    }
                }
                progress(left(&next));
            }
        }
    }
    progress(0);
    Ok(state)
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
