//! The metrics of the query API, declared once like each stage's: [`ALL`]
//! lists name, kind, unit, help text and labels, [`describe`] registers
//! them, and `request` (crate-private) is the only way to record them.

use fleetpipe_model::metrics::{Kind, Metric, Unit};

/// Counter, labels `route`, `status`: requests answered.
pub const API_REQUESTS_TOTAL: &str = "fleetpipe_api_requests_total";
/// Histogram, label `route`: time from a request's head to its answer.
pub const API_REQUEST_SECONDS: &str = "fleetpipe_api_request_seconds";

/// Every metric the query API records.
pub const ALL: [Metric; 2] = [
    Metric {
        name: API_REQUESTS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Query API requests answered, by route (the path template, or \"unmatched\") and HTTP status",
        labels: &["route", "status"],
    },
    Metric {
        name: API_REQUEST_SECONDS,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        description: "Query API time from a request's head to its answer, by route",
        labels: &["route"],
    },
];

/// Registers the help texts and units.
pub fn describe() {
    fleetpipe_model::metrics::describe(&ALL);
}

/// A request to `route` was answered `status` after `seconds`.
pub(crate) fn request(route: &str, status: u16, seconds: f64) {
    metrics::counter!(API_REQUESTS_TOTAL, "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(API_REQUEST_SECONDS, "route" => route.to_owned()).record(seconds);
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
            request("/v1/vehicles", 200, 0.01);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        for metric in ALL {
            recorded(&metric, &snapshot);
        }
    }
}
