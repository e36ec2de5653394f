//! The metrics of the query API, declared once like each stage's: [`ALL`]
//! lists name, kind, unit, help text and labels, [`describe`] registers
//! them, and `request` (crate-private) is the only way to record them.

use fleetpipe_model::metrics::{Kind, Metric, Unit};

/// Counter, labels `route`, `status`: requests answered.
pub const API_REQUESTS_TOTAL: &str = "fleetpipe_api_requests_total";
/// Histogram, label `route`: time from a request's head to its answer.
pub const API_REQUEST_SECONDS: &str = "fleetpipe_api_request_seconds";

/// Gauge, label `transport` (`ws`, `sse`): live feed clients connected.
pub const FEED_CLIENTS: &str = "fleetpipe_feed_clients";
/// Gauge: bytes of messages waiting in every feed client's queue.
pub const FEED_QUEUED_BYTES: &str = "fleetpipe_feed_queued_bytes";
/// Gauge: messages waiting in every feed client's queue.
pub const FEED_QUEUED_MESSAGES: &str = "fleetpipe_feed_queued_messages";
/// Counter, label `kind`: feed messages written to clients.
pub const FEED_MESSAGES_TOTAL: &str = "fleetpipe_feed_messages_total";
/// Counter: positions replaced in a client's queue by a newer one.
pub const FEED_COALESCED_TOTAL: &str = "fleetpipe_feed_coalesced_total";
/// Counter, label `kind`: messages dropped by an overflowing queue.
pub const FEED_DROPPED_TOTAL: &str = "fleetpipe_feed_dropped_total";
/// Counter, label `reason`: feed clients disconnected.
pub const FEED_DISCONNECTS_TOTAL: &str = "fleetpipe_feed_disconnects_total";
/// Counter, label `kind`: records the feed took in.
pub const FEED_RECORDS_TOTAL: &str = "fleetpipe_feed_records_total";
/// Counter, label `outcome`: resume requests.
pub const FEED_RESUMES_TOTAL: &str = "fleetpipe_feed_resumes_total";
/// Gauge: vehicles in the feed's latest-position table.
pub const FEED_VEHICLES: &str = "fleetpipe_feed_vehicles";
/// Gauge: messages in the feed's resume window.
pub const FEED_WINDOW_MESSAGES: &str = "fleetpipe_feed_window_messages";

/// Every metric the query API records.
pub const ALL: [Metric; 13] = [
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
    Metric {
        name: FEED_CLIENTS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Live feed clients connected, by transport (ws, sse)",
        labels: &["transport"],
    },
    Metric {
        name: FEED_QUEUED_BYTES,
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        description: "Bytes of messages waiting in the live feed's client queues, all clients (bounded by api.feed.max_total_bytes)",
        labels: &[],
    },
    Metric {
        name: FEED_QUEUED_MESSAGES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Messages waiting in the live feed's client queues, all clients",
        labels: &[],
    },
    Metric {
        name: FEED_MESSAGES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Live feed messages written to clients, by kind (position, event, snapshot, gap, resumed, overflow, close)",
        labels: &["kind"],
    },
    Metric {
        name: FEED_COALESCED_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Positions a slow live feed client never got because a newer one of the same vehicle replaced them in its queue",
        labels: &[],
    },
    Metric {
        name: FEED_DROPPED_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Live feed messages dropped by an overflowing client queue (the client is told and disconnected), by kind (position, event)",
        labels: &["kind"],
    },
    Metric {
        name: FEED_DISCONNECTS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Live feed clients disconnected, by reason (client, shutdown, expired, revoked, overflow, memory, write_timeout, oversized, flood)",
        labels: &["reason"],
    },
    Metric {
        name: FEED_RECORDS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Records the live feed took in from the pipeline, by kind (position, late_position: older than the vehicle's latest, not streamed; event)",
        labels: &["kind"],
    },
    Metric {
        name: FEED_RESUMES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Live feed resume requests, by outcome (resumed, gap)",
        labels: &["outcome"],
    },
    Metric {
        name: FEED_VEHICLES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Vehicles in the live feed's latest-position table (bounded by api.feed.max_vehicles)",
        labels: &[],
    },
    Metric {
        name: FEED_WINDOW_MESSAGES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Messages in the live feed's resume window (bounded by api.feed.resume_max_messages and resume_max_age)",
        labels: &[],
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

pub(crate) fn feed_clients(transport: &'static str) -> metrics::Gauge {
    metrics::gauge!(FEED_CLIENTS, "transport" => transport)
}
pub(crate) fn feed_queued_bytes() -> metrics::Gauge {
    metrics::gauge!(FEED_QUEUED_BYTES)
}
pub(crate) fn feed_queued_messages() -> metrics::Gauge {
    metrics::gauge!(FEED_QUEUED_MESSAGES)
}
pub(crate) fn feed_messages(kind: &'static str) -> metrics::Counter {
    metrics::counter!(FEED_MESSAGES_TOTAL, "kind" => kind)
}
pub(crate) fn feed_coalesced() -> metrics::Counter {
    metrics::counter!(FEED_COALESCED_TOTAL)
}
pub(crate) fn feed_dropped(kind: &'static str) -> metrics::Counter {
    metrics::counter!(FEED_DROPPED_TOTAL, "kind" => kind)
}
pub(crate) fn feed_disconnects(reason: &'static str) -> metrics::Counter {
    metrics::counter!(FEED_DISCONNECTS_TOTAL, "reason" => reason)
}
pub(crate) fn feed_records(kind: &'static str) -> metrics::Counter {
    metrics::counter!(FEED_RECORDS_TOTAL, "kind" => kind)
}
pub(crate) fn feed_resumes(outcome: &'static str) -> metrics::Counter {
    metrics::counter!(FEED_RESUMES_TOTAL, "outcome" => outcome)
}
pub(crate) fn feed_vehicles() -> metrics::Gauge {
    metrics::gauge!(FEED_VEHICLES)
}
pub(crate) fn feed_window_messages() -> metrics::Gauge {
    metrics::gauge!(FEED_WINDOW_MESSAGES)
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
            feed_clients("ws").set(1.0);
            feed_queued_bytes().set(1.0);
            feed_queued_messages().set(1.0);
            feed_messages("event").increment(1);
            feed_coalesced().increment(1);
            feed_dropped("event").increment(1);
            feed_disconnects("client").increment(1);
            feed_records("event").increment(1);
            feed_resumes("gap").increment(1);
            feed_vehicles().set(1.0);
            feed_window_messages().set(1.0);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        for metric in ALL {
            recorded(&metric, &snapshot);
        }
    }
}
