//! The metrics the pipeline itself records (its queues, not a stage's),
//! declared once like each stage's: [`ALL`] lists name, kind, unit, help
//! text and labels, [`describe`] registers them, and the handles below are
//! the only way to record them.

use fleetpipe_model::metrics::{Kind, Metric, Unit};
use metrics::Gauge;

/// Gauge: payload bytes of the messages whose records are in the pipeline.
pub const PIPELINE_INFLIGHT_BYTES: &str = "fleetpipe_pipeline_inflight_bytes";
/// Gauge, label `sink`: records waiting in a sink's queue.
pub const SINK_QUEUE_DEPTH: &str = "fleetpipe_sink_queue_depth";

/// Counter, label `topic`: records of an output topic the writer role could
/// not decode (each stored as a `decode_failed` dead letter).
pub const WRITER_UNDECODABLE_TOTAL: &str = "fleetpipe_writer_undecodable_total";

/// Every metric the pipeline records itself.
pub const ALL: [Metric; 3] = [
    Metric {
        name: PIPELINE_INFLIGHT_BYTES,
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        description: "Payload bytes of the messages whose records are still in the pipeline (bounded by pipeline.max_inflight_bytes)",
        labels: &[],
    },
    Metric {
        name: SINK_QUEUE_DEPTH,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Records waiting in each sink's queue, by sink",
        labels: &["sink"],
    },
    Metric {
        name: WRITER_UNDECODABLE_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Writer role: records of an output topic that did not decode, by topic (each stored as a decode_failed dead letter)",
        labels: &["topic"],
    },
];

/// Registers the help texts and units, so exporters can describe the metrics.
pub fn describe() {
    fleetpipe_model::metrics::describe(&ALL);
}

/// The handle of [`PIPELINE_INFLIGHT_BYTES`].
pub fn pipeline_inflight_bytes() -> Gauge {
    metrics::gauge!(PIPELINE_INFLIGHT_BYTES)
}

/// The handle of sink `sink`'s [`SINK_QUEUE_DEPTH`].
pub fn sink_queue_depth(sink: &'static str) -> Gauge {
    metrics::gauge!(SINK_QUEUE_DEPTH, "sink" => sink)
}

/// The writer could not decode a record of `topic`.
pub fn writer_undecodable(topic: &str) {
    metrics::counter!(WRITER_UNDECODABLE_TOTAL, "topic" => topic.to_owned()).increment(1);
}

/// Every metric the process declares, from every crate: what
/// ARCHITECTURE.md must list and what a dashboard may query.
#[must_use]
pub fn declared() -> Vec<Metric> {
    let mut all = Vec::new();
    all.extend(fleetpipe_ingest::metrics::ALL);
    all.extend(fleetpipe_enrich::metrics::ALL);
    all.extend(fleetpipe_sink::metrics::ALL);
    all.extend(fleetpipe_kafka::metrics::ALL);
    all.extend(fleetpipe_query::metrics::ALL);
    all.extend(fleetpipe_geofence::metrics::ALL);
    all.extend(ALL);
    all
}

#[cfg(test)]
mod tests {
    use fleetpipe_model::metrics::recorded;
    use metrics_util::debugging::DebuggingRecorder;

    use super::*;

    #[test]
    fn every_metric_is_described_and_recorded_under_its_declared_name_and_labels() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            pipeline_inflight_bytes().set(1024.0);
            sink_queue_depth("file").set(3.0);
            writer_undecodable("fleet.telemetry.v1");
        });
        let snapshot = snapshotter.snapshot().into_vec();
        for metric in ALL {
            recorded(&metric, &snapshot);
        }
    }

    #[test]
    fn names_are_unique_across_crates_and_architecture_md_lists_each() {
        let architecture = include_str!("../../ARCHITECTURE.md");
        let mut names: Vec<&str> = declared().iter().map(|m| m.name).collect();
        for name in &names {
            assert!(
                architecture.contains(&format!("`{name}`"))
                    || architecture.contains(&format!("`{name}{{")),
                "{name} is not listed in ARCHITECTURE.md"
            );
        }
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a metric name is declared twice");
    }
}
