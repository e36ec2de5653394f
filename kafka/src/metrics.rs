//! The metrics of the consumer group member, declared once like every
//! crate's: [`ALL`] lists them, [`describe`] registers them, and the
//! functions below are the only way to record them.

use fleetpipe_model::metrics::{Kind, Metric, Unit};

/// Gauge, labels `topic`, `partition`: records of an owned partition not
/// yet stored (the high watermark minus the offset stored for commit); for
/// a read node's tail, not yet read.
pub const CONSUMER_LAG: &str = "fleetpipe_kafka_consumer_lag";
/// Counter, label `kind` (`revoked`, `lost`): partitions given up.
pub const PARTITIONS_GIVEN_UP_TOTAL: &str = "fleetpipe_kafka_partitions_given_up_total";

/// Every metric of this crate.
pub const ALL: [Metric; 2] = [
    Metric {
        name: CONSUMER_LAG,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Records of each owned partition not yet stored: its high watermark minus the offset stored for commit (librdkafka's consumer_lag_stored, every statistics interval); on a read node, records not yet read (its consumer_lag)",
        labels: &["topic", "partition"],
    },
    Metric {
        name: PARTITIONS_GIVEN_UP_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Partitions this member gave up, by kind: revoked (drained and committed) or lost (fenced or timed out: nothing committed)",
        labels: &["kind"],
    },
];

/// Registers the help texts and units.
pub fn describe() {
    fleetpipe_model::metrics::describe(&ALL);
}

/// Sets the lag of an owned partition.
pub(crate) fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    #[allow(
        clippy::cast_precision_loss,
        reason = "a lag beyond 2^53 records is not a lag"
    )]
    let lag = lag as f64;
    metrics::gauge!(CONSUMER_LAG, "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(lag);
}

/// `count` partitions were given up, `kind` `revoked` or `lost`.
pub(crate) fn partitions_given_up(kind: &'static str, count: usize) {
    metrics::counter!(PARTITIONS_GIVEN_UP_TOTAL, "kind" => kind).increment(count as u64);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use fleetpipe_model::metrics::recorded;
    use metrics_util::debugging::DebuggingRecorder;

    use super::*;

    #[test]
    fn every_metric_is_described_and_recorded_under_its_declared_name_and_labels() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            consumer_lag("fleet.raw.v1", 3, 17);
            partitions_given_up("lost", 2);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        for metric in ALL {
            recorded(&metric, &snapshot);
        }
    }
}
