//! The kinds of record every sink keeps apart: its directory (file sink),
//! topic (Kafka) or table, and the `stream` label of the sink metrics.
//!
//! The Kafka topics' streams, which add the raw topic between the
//! `gateway` and `enrich` roles (no sink writes it), are the model's
//! [`topic_record::Stream`](fleetpipe_model::topic_record::Stream); the
//! names of the three they share are the same.

use fleetpipe_model::SinkRecord;

/// A kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// [`SinkRecord::Telemetry`].
    Telemetry,
    /// [`SinkRecord::DeadLetter`].
    DeadLetter,
    /// [`SinkRecord::Event`].
    Event,
}

impl Stream {
    /// How many streams there are: the length of per-stream arrays.
    pub(crate) const COUNT: usize = 3;

    /// Every stream, in index order.
    pub(crate) const ALL: [Stream; Stream::COUNT] =
        [Stream::Telemetry, Stream::DeadLetter, Stream::Event];

    /// Directory name, file name prefix and metrics label.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Stream::Telemetry => "telemetry",
            Stream::DeadLetter => "dead_letter",
            Stream::Event => "events",
        }
    }

    /// The stream a record belongs to.
    pub(crate) const fn of(record: &SinkRecord) -> Self {
        match record {
            SinkRecord::Telemetry(_) => Stream::Telemetry,
            SinkRecord::DeadLetter(_) => Stream::DeadLetter,
            SinkRecord::Event(_) => Stream::Event,
        }
    }

    /// Position in per-stream arrays.
    pub(crate) const fn index(self) -> usize {
        match self {
            Stream::Telemetry => 0,
            Stream::DeadLetter => 1,
            Stream::Event => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stream;

    #[test]
    fn indexes_follow_all_and_names_are_distinct() {
        for (i, stream) in Stream::ALL.into_iter().enumerate() {
            assert_eq!(stream.index(), i, "{stream:?}");
        }
        let names: std::collections::BTreeSet<&str> =
            Stream::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), Stream::COUNT);
        assert_eq!(Stream::Event.as_str(), "events");
    }

    #[test]
    fn names_are_the_topic_streams_names() {
        use fleetpipe_model::topic_record::Stream as Topic;
        for (sink, topic) in
            Stream::ALL
                .into_iter()
                .zip([Topic::Telemetry, Topic::DeadLetter, Topic::Event])
        {
            assert_eq!(sink.as_str(), topic.as_str());
        }
    }
}
