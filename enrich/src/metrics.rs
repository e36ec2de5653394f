//! The metrics of the enrichment stage, declared once: [`ALL`] lists each
//! one's name, kind, unit, help text and labels; [`describe`] registers
//! them, and the stage records them only through the functions below.

use fleetpipe_model::metrics::{Kind, Metric, Unit};
use metrics::{Counter, Gauge};

/// Counter: pings enriched and handed downstream.
pub const PINGS_TOTAL: &str = "fleetpipe_enrich_pings_total";
/// Counter, label `type`: events emitted.
pub const EVENTS_TOTAL: &str = "fleetpipe_enrich_events_total";
/// Gauge, label `worker`: pings waiting in a worker's queue.
pub const QUEUE_DEPTH: &str = "fleetpipe_enrich_queue_depth";
/// Gauge, label `worker`: vehicles tracked.
pub const VEHICLES: &str = "fleetpipe_enrich_vehicles";
/// Counter: checkpoints that failed (the previous one stays).
pub const CHECKPOINT_ERRORS_TOTAL: &str = "fleetpipe_enrich_checkpoint_errors_total";
/// Counter: H3 cells that could not be computed and were left out of a record.
pub const H3_ERRORS_TOTAL: &str = "fleetpipe_enrich_h3_errors_total";

/// Gauge: changelog records still to read by the restore in progress (enrich
/// role; 0 when none runs).
pub const RESTORE_REMAINING: &str = "fleetpipe_enrich_restore_remaining_records";
/// Counter: vehicles restored from the changelog (enrich role).
pub const RESTORED_TOTAL: &str = "fleetpipe_enrich_restored_vehicles_total";
/// Gauge: how long the last restore took, seconds (enrich role).
pub const RESTORE_SECONDS: &str = "fleetpipe_enrich_last_restore_seconds";
/// Counter: raw records skipped because the restored state had applied them.
pub const REPLAY_SKIPPED_TOTAL: &str = "fleetpipe_enrich_replay_skipped_total";
/// Counter: vehicle snapshots written to the changelog (enrich role).
pub const SNAPSHOTS_TOTAL: &str = "fleetpipe_enrich_changelog_snapshots_total";
/// Counter: bytes of the snapshots written to the changelog (enrich role).
pub const SNAPSHOT_BYTES_TOTAL: &str = "fleetpipe_enrich_changelog_bytes_total";

/// Every metric of the enrichment stage.
pub const ALL: [Metric; 12] = [
    Metric {
        name: PINGS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Pings enriched and handed to the sinks.",
        labels: &[],
    },
    Metric {
        name: EVENTS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "State-change events emitted, by type.",
        labels: &["type"],
    },
    Metric {
        name: QUEUE_DEPTH,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Pings waiting in an enrich worker's queue, sampled when the worker takes a batch.",
        labels: &["worker"],
    },
    Metric {
        name: VEHICLES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Vehicles whose state enrichment keeps.",
        labels: &["worker"],
    },
    Metric {
        name: CHECKPOINT_ERRORS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Vehicle state checkpoints that failed; the previous checkpoint stays.",
        labels: &[],
    },
    Metric {
        name: H3_ERRORS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "H3 cells left out of a record because H3 refused the position.",
        labels: &[],
    },
    Metric {
        name: RESTORE_REMAINING,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Changelog records the restore in progress still has to read (enrich role); /readyz is 503 while a restore runs.",
        labels: &[],
    },
    Metric {
        name: RESTORED_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Vehicles restored from the changelog on partition assignment (enrich role).",
        labels: &[],
    },
    Metric {
        name: RESTORE_SECONDS,
        kind: Kind::Gauge,
        unit: Unit::Seconds,
        description: "Duration of the last restore of assigned partitions (enrich role).",
        labels: &[],
    },
    Metric {
        name: REPLAY_SKIPPED_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Raw records skipped because the restored vehicle state had already applied them (enrich role).",
        labels: &[],
    },
    Metric {
        name: SNAPSHOTS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Vehicle snapshots written to the changelog (enrich role).",
        labels: &[],
    },
    Metric {
        name: SNAPSHOT_BYTES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Bytes,
        description: "Bytes of the vehicle snapshots written to the changelog (values, enrich role).",
        labels: &[],
    },
];

/// Registers the help texts and units, so exporters can describe the metrics.
pub fn describe() {
    fleetpipe_model::metrics::describe(&ALL);
}

/// The handles one worker updates on every batch, registered once: labelled
/// `counter!`/`gauge!` look their series up in the registry on every call.
#[derive(Debug, Clone)]
pub(crate) struct WorkerMetrics {
    /// [`PINGS_TOTAL`].
    pub(crate) pings: Counter,
    /// [`QUEUE_DEPTH`] of this worker.
    pub(crate) depth: Gauge,
    /// [`VEHICLES`] of this worker.
    pub(crate) vehicles: Gauge,
}

impl WorkerMetrics {
    /// The handles of worker `index`.
    pub(crate) fn new(index: usize) -> Self {
        let worker = index.to_string();
        Self {
            pings: metrics::counter!(PINGS_TOTAL),
            depth: metrics::gauge!(QUEUE_DEPTH, "worker" => worker.clone()),
            vehicles: metrics::gauge!(VEHICLES, "worker" => worker),
        }
    }
}

/// An event of type `event_type` was emitted.
pub(crate) fn event_emitted(event_type: &'static str) {
    metrics::counter!(EVENTS_TOTAL, "type" => event_type).increment(1);
}

/// The handle of [`CHECKPOINT_ERRORS_TOTAL`].
pub(crate) fn checkpoint_errors() -> Counter {
    metrics::counter!(CHECKPOINT_ERRORS_TOTAL)
}

/// `cells` H3 cells were left out of a record.
pub(crate) fn h3_cells_left_out(cells: usize) {
    metrics::counter!(H3_ERRORS_TOTAL).increment(cells as u64);
}

/// The restore in progress has `left` records to read.
pub(crate) fn restore_remaining(left: i64) {
    metrics::gauge!(RESTORE_REMAINING).set(left as f64);
}

/// A restore of `vehicles` finished in `took`.
pub(crate) fn restored(vehicles: usize, took: std::time::Duration) {
    metrics::counter!(RESTORED_TOTAL).increment(vehicles as u64);
    metrics::gauge!(RESTORE_SECONDS).set(took.as_secs_f64());
}

/// A raw record the restored state had applied was skipped.
pub(crate) fn replay_skipped() {
    metrics::counter!(REPLAY_SKIPPED_TOTAL).increment(1);
}

/// `n` snapshots of `bytes` in all reached the changelog.
pub(crate) fn snapshots_written(n: usize, bytes: usize) {
    metrics::counter!(SNAPSHOTS_TOTAL).increment(n as u64);
    metrics::counter!(SNAPSHOT_BYTES_TOTAL).increment(bytes as u64);
}

/// A changelog checkpoint failed (the member stops).
pub(crate) fn checkpoint_failed() {
    checkpoint_errors().increment(1);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use fleetpipe_model::metrics::recorded;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn every_metric_is_described_and_recorded_under_its_declared_name_and_labels() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let worker = WorkerMetrics::new(3);
            worker.pings.increment(2);
            worker.depth.set(4.0);
            worker.vehicles.set(5.0);
            event_emitted("geofence.entered");
            checkpoint_errors().increment(1);
            h3_cells_left_out(2);
            restore_remaining(7);
            restored(2, std::time::Duration::from_secs(3));
            replay_skipped();
            snapshots_written(2, 2);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        for metric in ALL {
            let value = recorded(&metric, &snapshot)[0];
            let expected = match metric.name {
                PINGS_TOTAL | H3_ERRORS_TOTAL | RESTORED_TOTAL | SNAPSHOTS_TOTAL
                | SNAPSHOT_BYTES_TOTAL => DebugValue::Counter(2),
                EVENTS_TOTAL | CHECKPOINT_ERRORS_TOTAL | REPLAY_SKIPPED_TOTAL => {
                    DebugValue::Counter(1)
                }
                RESTORE_REMAINING => DebugValue::Gauge(7.0.into()),
                RESTORE_SECONDS => DebugValue::Gauge(3.0.into()),
                QUEUE_DEPTH => DebugValue::Gauge(4.0.into()),
                VEHICLES => DebugValue::Gauge(5.0.into()),
                other => panic!("{other} has no expectation"),
            };
            assert_eq!(*value, expected, "{}", metric.name);
        }
    }
}
