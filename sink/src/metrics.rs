//! The metrics of the sinks, declared once: [`ALL`] lists each one's name,
//! kind, unit, help text and labels; [`describe`] registers them, and every
//! sink records them only through the functions and handles below, with
//! its own `sink` label value (`file`, `kafka`, `timescale`).

use fleetpipe_model::metrics::{Kind, Metric, Unit};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::stream::Stream;

/// Counter, labels `sink`, `stream`: records written durably.
pub const RECORDS_TOTAL: &str = "fleetpipe_sink_records_total";
/// Counter, labels `sink`, `stream`: bytes of the records written.
pub const BYTES_TOTAL: &str = "fleetpipe_sink_bytes_total";
/// Histogram, label `sink`: records per batch.
pub const BATCH_RECORDS: &str = "fleetpipe_sink_batch_records";
/// Histogram, label `sink`: time to write one batch.
pub const BATCH_SECONDS: &str = "fleetpipe_sink_batch_seconds";
/// Counter, labels `sink`, `kind`: failures.
pub const ERRORS_TOTAL: &str = "fleetpipe_sink_errors_total";
/// Counter, label `sink`: attempts repeated.
pub const RETRIES_TOTAL: &str = "fleetpipe_sink_retries_total";
/// Counter, labels `sink`, `stream`: files closed and new ones opened.
pub const ROTATIONS_TOTAL: &str = "fleetpipe_sink_rotations_total";
/// Counter, label `sink`: TimescaleDB parts written again through staging.
pub const STAGED_PARTS_TOTAL: &str = "fleetpipe_sink_staged_parts_total";
/// Gauge, label `sink`: Kafka records sent and not yet reported.
pub const INFLIGHT: &str = "fleetpipe_sink_inflight";
/// Histogram, label `sink`: Kafka send to delivery report.
pub const DELIVERY_SECONDS: &str = "fleetpipe_sink_delivery_seconds";
/// Gauge, label `sink`: TimescaleDB batches being written.
pub const INFLIGHT_BATCHES: &str = "fleetpipe_sink_inflight_batches";
/// Gauge, label `sink`: age of the oldest batch being written.
pub const OLDEST_UNACKED_SECONDS: &str = "fleetpipe_sink_oldest_unacked_seconds";
/// Gauge, labels `sink`, `state`: pool connections in use or idle.
pub const POOL_CONNECTIONS: &str = "fleetpipe_sink_pool_connections";
/// Gauge, label `sink`: writers waiting for a pool connection.
pub const POOL_WAITING: &str = "fleetpipe_sink_pool_waiting";

/// Every metric of the sinks.
pub const ALL: [Metric; 14] = [
    Metric {
        name: RECORDS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Records written durably, by sink and stream",
        labels: &["sink", "stream"],
    },
    Metric {
        name: BYTES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Bytes,
        description: "Bytes of the records written durably, by sink and stream",
        labels: &["sink", "stream"],
    },
    Metric {
        name: BATCH_RECORDS,
        kind: Kind::Histogram,
        unit: Unit::Count,
        description: "Records per batch written, by sink",
        labels: &["sink"],
    },
    Metric {
        name: BATCH_SECONDS,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        description: "Time to write one batch, by sink",
        labels: &["sink"],
    },
    Metric {
        name: ERRORS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Write failures, by sink and kind (retriable, fatal, permanent, io, serialize)",
        labels: &["sink", "kind"],
    },
    Metric {
        name: RETRIES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Writes or sends attempted again, by sink",
        labels: &["sink"],
    },
    Metric {
        name: ROTATIONS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Files closed and replaced by a new one, by sink and stream",
        labels: &["sink", "stream"],
    },
    Metric {
        name: STAGED_PARTS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "TimescaleDB parts that held an already-stored row and were written again through the staging table",
        labels: &["sink"],
    },
    Metric {
        name: INFLIGHT,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Kafka records sent and waiting for their delivery report",
        labels: &["sink"],
    },
    Metric {
        name: DELIVERY_SECONDS,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        description: "Time from sending a Kafka record to its delivery report",
        labels: &["sink"],
    },
    Metric {
        name: INFLIGHT_BATCHES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Batches being written and not yet acknowledged, by sink",
        labels: &["sink"],
    },
    Metric {
        name: OLDEST_UNACKED_SECONDS,
        kind: Kind::Gauge,
        unit: Unit::Seconds,
        description: "Age of the oldest batch being written (0 when none is), by sink",
        labels: &["sink"],
    },
    Metric {
        name: POOL_CONNECTIONS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "PostgreSQL pool connections, by sink and state (in_use, idle)",
        labels: &["sink", "state"],
    },
    Metric {
        name: POOL_WAITING,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Writers waiting for a PostgreSQL pool connection, by sink",
        labels: &["sink"],
    },
];

/// Registers the help texts and units, so exporters can describe the metrics.
pub fn describe() {
    fleetpipe_model::metrics::describe(&ALL);
}

/// A sink's [`RECORDS_TOTAL`] and [`BYTES_TOTAL`], one handle per stream,
/// registered once: counting a write on the hot path then costs two atomic
/// adds instead of two registry lookups. Every sink counts its writes
/// through this, so each exports all of its streams from its start.
#[derive(Debug, Clone)]
pub(crate) struct StreamCounters {
    records: [Counter; Stream::COUNT],
    bytes: [Counter; Stream::COUNT],
}

impl StreamCounters {
    /// Registers the handles of sink `sink` with the current recorder.
    pub(crate) fn new(sink: &'static str) -> Self {
        Self {
            records: Stream::ALL
                .map(|s| counter!(RECORDS_TOTAL, "sink" => sink, "stream" => s.as_str())),
            bytes: Stream::ALL
                .map(|s| counter!(BYTES_TOTAL, "sink" => sink, "stream" => s.as_str())),
        }
    }

    /// Counts `records` records of `bytes` bytes of `stream` as written.
    pub(crate) fn written(&self, stream: Stream, records: u64, bytes: u64) {
        self.records[stream.index()].increment(records);
        self.bytes[stream.index()].increment(bytes);
    }
}

/// Sink `sink` wrote a batch of `records` records in `seconds`.
pub(crate) fn batch_written(sink: &'static str, records: usize, seconds: f64) {
    histogram!(BATCH_RECORDS, "sink" => sink).record(records as f64);
    histogram!(BATCH_SECONDS, "sink" => sink).record(seconds);
}

/// Sink `sink` failed once, for a reason of `kind`.
pub(crate) fn error(sink: &'static str, kind: &'static str) {
    counter!(ERRORS_TOTAL, "sink" => sink, "kind" => kind).increment(1);
}

/// Sink `sink` tries a write or send again.
pub(crate) fn retried(sink: &'static str) {
    counter!(RETRIES_TOTAL, "sink" => sink).increment(1);
}

/// Sink `sink` rotated the files of `stream` `rotations` times.
pub(crate) fn rotated(sink: &'static str, stream: Stream, rotations: u64) {
    counter!(ROTATIONS_TOTAL, "sink" => sink, "stream" => stream.as_str()).increment(rotations);
}

/// Sink `sink` wrote `parts` parts again through its staging table.
pub(crate) fn staged_parts(sink: &'static str, parts: u64) {
    counter!(STAGED_PARTS_TOTAL, "sink" => sink).increment(parts);
}

/// The handle of sink `sink`'s [`DELIVERY_SECONDS`].
pub(crate) fn delivery_seconds(sink: &'static str) -> Histogram {
    histogram!(DELIVERY_SECONDS, "sink" => sink)
}

/// The handle of sink `sink`'s [`INFLIGHT`].
pub(crate) fn inflight(sink: &'static str) -> Gauge {
    gauge!(INFLIGHT, "sink" => sink)
}

/// Sink `sink` has `batches` batches in flight, the oldest `oldest_seconds` old.
pub(crate) fn inflight_batches(sink: &'static str, batches: usize, oldest_seconds: f64) {
    gauge!(INFLIGHT_BATCHES, "sink" => sink).set(batches as f64);
    gauge!(OLDEST_UNACKED_SECONDS, "sink" => sink).set(oldest_seconds);
}

/// A sink's connection pool gauges ([`POOL_CONNECTIONS`], [`POOL_WAITING`]).
#[derive(Debug, Clone)]
pub(crate) struct PoolGauges {
    in_use: Gauge,
    idle: Gauge,
    waiting: Gauge,
}

impl PoolGauges {
    /// Registers the handles of sink `sink`.
    pub(crate) fn new(sink: &'static str) -> Self {
        Self {
            in_use: gauge!(POOL_CONNECTIONS, "sink" => sink, "state" => "in_use"),
            idle: gauge!(POOL_CONNECTIONS, "sink" => sink, "state" => "idle"),
            waiting: gauge!(POOL_WAITING, "sink" => sink),
        }
    }

    /// `in_use` and `idle` connections are open, `waiting` writers queued.
    pub(crate) fn set(&self, in_use: usize, idle: usize, waiting: usize) {
        self.in_use.set(in_use as f64);
        self.idle.set(idle as f64);
        self.waiting.set(waiting as f64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use fleetpipe_model::metrics::recorded;
    use metrics_util::debugging::DebuggingRecorder;

    use super::*;

    #[test]
    fn every_metric_is_described_and_recorded_under_its_declared_name_and_labels() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            StreamCounters::new("file").written(Stream::Event, 2, 100);
            batch_written("file", 2, 0.5);
            error("file", "io");
            retried("kafka");
            rotated("file", Stream::Telemetry, 1);
            staged_parts("timescale", 1);
            delivery_seconds("kafka").record(0.1);
            inflight("kafka").set(3.0);
            inflight_batches("timescale", 1, 2.0);
            PoolGauges::new("timescale").set(1, 2, 0);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        for metric in ALL {
            recorded(&metric, &snapshot);
        }
    }
}
