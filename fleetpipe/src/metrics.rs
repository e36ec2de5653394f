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

/// Every metric the pipeline records itself.
pub const ALL: [Metric; 2] = [
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
