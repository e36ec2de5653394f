//! The kinds of record every sink keeps apart: its directory (file sink),
//! topic (Kafka) or table, and the `stream` label of the sink metrics.

use fleetpipe_model::SinkRecord;

/// A kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// [`SinkRecord::Telemetry`].
    Telemetry,
    /// [`SinkRecord::DeadLetter`].
    DeadLetter,
}

impl Stream {
    /// Every stream, in index order.
    pub(crate) const ALL: [Stream; 2] = [Stream::Telemetry, Stream::DeadLetter];

    /// Directory name, file name prefix and metrics label.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Stream::Telemetry => "telemetry",
            Stream::DeadLetter => "dead_letter",
        }
    }

    /// The stream a record belongs to.
    pub(crate) const fn of(record: &SinkRecord) -> Self {
        match record {
            SinkRecord::Telemetry(_) => Stream::Telemetry,
            SinkRecord::DeadLetter(_) => Stream::DeadLetter,
        }
    }

    /// Position in per-stream arrays.
    pub(crate) const fn index(self) -> usize {
        match self {
            Stream::Telemetry => 0,
            Stream::DeadLetter => 1,
        }
    }
}
