//! The metrics of the geofence service, declared once: [`ALL`] lists each
//! one's name, kind, unit, description and labels; [`describe`] registers
//! them with the recorder, and the service records them only through the
//! functions below, never by a name written elsewhere.

use fleetpipe_model::metrics::{Kind, Metric, Unit};

/// Fences in the geofence index in use (gauge).
pub const FENCES: &str = "fleetpipe_geofence_fences";
/// Reloads that replaced the index (counter).
pub const RELOADS_TOTAL: &str = "fleetpipe_geofence_reloads_total";
/// Reloads that failed, the previous index staying in use (counter).
pub const RELOAD_ERRORS_TOTAL: &str = "fleetpipe_geofence_reload_errors_total";

/// Every metric of the geofence service.
pub const ALL: [Metric; 3] = [
    Metric {
        name: FENCES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        description: "Fences in the geofence index in use",
        labels: &[],
    },
    Metric {
        name: RELOADS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Geofence reloads that replaced the index",
        labels: &[],
    },
    Metric {
        name: RELOAD_ERRORS_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Count,
        description: "Geofence reloads that failed (the previous index stayed in use)",
        labels: &[],
    },
];

/// Registers the descriptions, and the counters at their current value (0
/// in a new process), so that they are exported before the first reload.
pub fn describe() {
    fleetpipe_model::metrics::describe(&ALL);
    for metric in ALL.iter().filter(|m| m.kind == Kind::Counter) {
        ::metrics::counter!(metric.name).increment(0);
    }
}

/// An index of `fences` fences is in use (at start or after a reload).
pub(crate) fn fences_in_use(fences: usize) {
    ::metrics::gauge!(FENCES).set(fences as f64);
}

/// A reload replaced the index with one of `fences` fences.
pub(crate) fn reloaded(fences: usize) {
    ::metrics::counter!(RELOADS_TOTAL).increment(1);
    fences_in_use(fences);
}

/// A reload failed.
pub(crate) fn reload_failed() {
    ::metrics::counter!(RELOAD_ERRORS_TOTAL).increment(1);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fleetpipe_model::metrics::recorded;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn every_metric_is_described_and_recorded_under_its_declared_name() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            describe();
            reloaded(7);
            reloaded(5);
            reload_failed();
        });
        let snapshot = snapshotter.snapshot().into_vec();
        for metric in ALL {
            let value = recorded(&metric, &snapshot)[0];
            let expected = match metric.name {
                FENCES => DebugValue::Gauge(5.0.into()),
                RELOADS_TOTAL => DebugValue::Counter(2),
                RELOAD_ERRORS_TOTAL => DebugValue::Counter(1),
                other => panic!("{other} has no expectation"),
            };
            assert_eq!(*value, expected, "{}", metric.name);
            assert!(metric.labels.is_empty());
        }
    }
}
