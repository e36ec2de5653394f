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
