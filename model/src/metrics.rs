//! How a stage declares its metrics. Each stage crate has a `metrics`
//! module with one [`Metric`] per metric it records (name, kind, unit, help
//! text, label names) in an `ALL` list, a `describe()` that passes that list
//! to [`describe`], and the typed functions its code records through, so a
//! metric name is written in exactly one place.

pub use ::metrics::Unit;

/// What a metric counts or measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A current value.
    Gauge,
    /// A distribution of observed values.
    Histogram,
}

/// One metric's declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its name, as exported.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit.
    pub unit: Unit,
    /// The help text exporters show.
    pub description: &'static str,
    /// Names of its labels, in the order the stage records them.
    pub labels: &'static [&'static str],
}

/// Registers the unit and help text of every metric in `all` with the
/// installed recorder. Registers no series: what is exported, and from
/// when, stays up to the recording code.
pub fn describe(all: &[Metric]) {
    for metric in all {
        match metric.kind {
            Kind::Counter => {
                ::metrics::describe_counter!(metric.name, metric.unit, metric.description);
            }
            Kind::Gauge => ::metrics::describe_gauge!(metric.name, metric.unit, metric.description),
            Kind::Histogram => {
                ::metrics::describe_histogram!(metric.name, metric.unit, metric.description);
            }
        }
    }
}

/// One series of a `metrics_util` [`DebuggingRecorder`] snapshot.
///
/// [`DebuggingRecorder`]: metrics_util::debugging::DebuggingRecorder
#[cfg(feature = "test-support")]
pub type Series = (
    metrics_util::CompositeKey,
    Option<Unit>,
    Option<::metrics::SharedString>,
    metrics_util::debugging::DebugValue,
);

/// Test support for every stage's metrics test: the values of the series
/// `snapshot` holds for `metric` (its kind and name), in snapshot order,
/// after asserting that there is at least one and that each carries the
/// declared unit, help text and label names.
///
/// # Panics
///
/// When `metric` was not recorded, or a series differs from its declaration.
#[cfg(feature = "test-support")]
pub fn recorded<'a>(
    metric: &Metric,
    snapshot: &'a [Series],
) -> Vec<&'a metrics_util::debugging::DebugValue> {
    let kind = match metric.kind {
        Kind::Counter => metrics_util::MetricKind::Counter,
        Kind::Gauge => metrics_util::MetricKind::Gauge,
        Kind::Histogram => metrics_util::MetricKind::Histogram,
    };
    let series: Vec<_> = snapshot
        .iter()
        .filter(|(key, ..)| key.kind() == kind && key.key().name() == metric.name)
        .collect();
    assert!(!series.is_empty(), "{} not recorded", metric.name);
    for (key, unit, description, _) in &series {
        assert_eq!(*unit, Some(metric.unit), "{}", metric.name);
        assert_eq!(
            description.as_ref().map(|d| d.to_string()),
            Some(metric.description.to_owned()),
            "{}",
            metric.name
        );
        let labels: Vec<&str> = key.key().labels().map(|l| l.key()).collect();
        assert_eq!(labels, metric.labels, "{}", metric.name);
    }
    series.into_iter().map(|(.., value)| value).collect()
}
