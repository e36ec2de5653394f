//! Reading what a sink recorded, in tests: a snapshot of a
//! `metrics_util` debugging recorder, looked up by name and exact labels.

use metrics_util::debugging::{DebugValue, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

/// All metrics recorded so far.
pub(crate) struct Snapshot(Vec<(CompositeKey, DebugValue)>);

impl Snapshot {
    /// Takes the recorder's current values.
    pub(crate) fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, _, _, v)| (k, v))
                .collect(),
        )
    }

    /// The metric of `kind` named `name` with exactly these labels.
    pub(crate) fn find(
        &self,
        kind: MetricKind,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&DebugValue> {
        self.0.iter().find_map(|(key, value)| {
            let k = key.key();
            let same_labels = k.labels().count() == labels.len()
                && labels
                    .iter()
                    .all(|(n, v)| k.labels().any(|l| l.key() == *n && l.value() == *v));
            (key.kind() == kind && k.name() == name && same_labels).then_some(value)
        })
    }

    /// A counter's value; panics when it was never recorded.
    pub(crate) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(v)) => *v,
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }

    /// A gauge's value; panics when it was never recorded.
    pub(crate) fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(MetricKind::Gauge, name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }

    /// A histogram's samples; panics when it was never recorded.
    pub(crate) fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.find(MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }
}
