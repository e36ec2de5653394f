//! The sinks as components, after Vector's `SinkConfig::build`: each
//! configured sink is a [`SinkConfig`] variant that validates itself and
//! builds itself from a [`SinkContext`] into a [`BuiltSink`], which the
//! pipeline runs without knowing which sink it is.
//!
//! To add a sink: a folder of its own (config with `validate`, the sink with
//! a `run(self, input)` loop), a table in [`SinksConfig`], and one
//! [`SinkConfig`] variant with its arm in `name`, `validate` and `build`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fleetpipe_model::SinkRecord;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{
    EmbeddedKafka, FileSink, FileSinkConfig, FileSinkError, KafkaConfig, KafkaError, KafkaSink,
    TimescaleConfig, TimescaleError, TimescaleSink,
};

/// `[sink]`: the outputs. A sink is on when its table is present; every
/// record goes to every sink, and is acknowledged when all of them hold it.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// Newline-delimited JSON files under a directory.
    pub file: Option<FileSinkConfig>,
    /// Kafka topics (`brokers = "embedded"` runs librdkafka's mock cluster).
    pub kafka: Option<KafkaConfig>,
    /// TimescaleDB / PostgreSQL tables.
    pub timescale: Option<TimescaleConfig>,
}

impl SinksConfig {
    /// The configured sinks, in a fixed order (file, Kafka, TimescaleDB).
    pub fn configured(&self) -> Vec<SinkConfig> {
        let file = self.file.clone().map(SinkConfig::File);
        let kafka = self.kafka.clone().map(SinkConfig::Kafka);
        let timescale = self.timescale.clone().map(SinkConfig::Timescale);
        [file, kafka, timescale].into_iter().flatten().collect()
    }

    /// Every rule of `[sink]`: at least one sink, each sink's own
    /// validation (the one its build runs), and the rules between a sink
    /// and the rest of the configuration: `max_past` is
    /// `ingest.limits.max_past`, the age of the oldest ping accepted.
    ///
    /// # Errors
    ///
    /// The first rule broken; the message names the key.
    pub fn validate(&self, max_past: Duration) -> Result<(), SinkError> {
        let sinks = self.configured();
        if sinks.is_empty() {
            return Err(SinkError::NoSink);
        }
        for sink in &sinks {
            sink.validate()?;
        }
        if let Some(timescale) = &self.timescale {
            // TimescaleDB's policy compresses every chunk that ends more than
            // compress_after ago; a ping is accepted up to max_past old, and
            // its chunk ends after its device time. So with compress_after
            // longer than max_past no accepted ping belongs to a chunk the
            // policy may already have compressed, as long as it is written
            // within (compress_after - max_past) of its acceptance. Applies
            // whatever `timescaledb` says: a schema once in TimescaleDB mode
            // keeps its policies even with `off`.
            if timescale.compress_after <= max_past {
                return Err(SinkError::CompressAfter {
                    compress_after: timescale.compress_after,
                    max_past,
                });
            }
        }
        Ok(())
    }
}

/// One configured sink.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// `[sink.file]`.
    File(FileSinkConfig),
    /// `[sink.kafka]`.
    Kafka(KafkaConfig),
    /// `[sink.timescale]`.
    Timescale(TimescaleConfig),
    /// `[sink.kafka]`'s cluster, every record to the raw topic `topic` (the
    /// `gateway` role's only sink).
    RawKafka {
        /// The cluster and producer settings.
        kafka: KafkaConfig,
        /// The raw topic (`cluster.raw_topic`).
        topic: String,
    },
}

/// What every sink is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkContext {
    /// Capacity of the sink's own input queue, in records
    /// (`pipeline.sink_queue`).
    pub queue: usize,
}

/// A sink's run loop: ends when its input is closed and drained.
pub type SinkTask = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// A sink ready to run: its input queue and the loop that drains it.
pub struct BuiltSink {
    /// The sink's name, the `sink` label of its metrics (`file`, `kafka`,
    /// `timescale`).
    pub name: &'static str,
    /// The sink's bounded input queue; closing every sender ends `run`.
    pub input: mpsc::Sender<SinkRecord>,
    /// The loop; spawn it.
    pub run: SinkTask,
    /// Where Kafka readers find what the Kafka sink writes.
    pub kafka: Option<KafkaEndpoint>,
}

impl std::fmt::Debug for BuiltSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltSink")
            .field("name", &self.name)
            .field("kafka", &self.kafka)
            .finish_non_exhaustive()
    }
}

/// The Kafka sink's cluster, for readers of its topics.
#[derive(Debug, Clone)]
pub struct KafkaEndpoint {
    /// The bootstrap servers the sink uses (the mock cluster's address with
    /// `brokers = "embedded"`).
    pub bootstrap_servers: String,
    /// The embedded mock cluster, when `brokers = "embedded"`.
    pub embedded: Option<EmbeddedKafka>,
}

impl SinkConfig {
    /// The sink's name: its table under `[sink]` and its metrics' `sink` label.
    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Kafka(_) | SinkConfig::RawKafka { .. } => "kafka",
            SinkConfig::Timescale(_) => "timescale",
        }
    }

    /// The sink's own rules, the same its build checks first; reads the
    /// files it names (PostgreSQL TLS) as the build would.
    ///
    /// # Errors
    ///
    /// The first rule broken; the message names the key.
    pub fn validate(&self) -> Result<(), SinkError> {
        match self {
            SinkConfig::File(c) => c.validate()?,
            SinkConfig::Kafka(c) | SinkConfig::RawKafka { kafka: c, .. } => c.validate()?,
            SinkConfig::Timescale(c) => {
                c.validate()?;
                // The URL and the TLS files, as the sink reads them at start.
                c.postgres()?;
            }
        }
        Ok(())
    }

    /// Validates and prepares the sink: directories created, the producer
    /// made (the embedded Kafka started), the database migrated. Nothing
    /// runs until [`BuiltSink::run`] is spawned.
    ///
    /// # Errors
    ///
    /// An invalid setting, or a directory, cluster or database that cannot
    /// be prepared; the message names the sink.
    pub async fn build(&self, cx: SinkContext) -> Result<BuiltSink, SinkError> {
        let (input, records) = mpsc::channel(cx.queue);
        let (run, kafka): (SinkTask, _) = match self {
            SinkConfig::File(c) => {
                let sink = FileSink::new(c.clone())?;
                (Box::pin(async { Ok(sink.run(records).await?) }), None)
            }
            SinkConfig::Kafka(c) => kafka_task(KafkaSink::new(c.clone()).await?, records),
            SinkConfig::RawKafka { kafka, topic } => {
                kafka_task(KafkaSink::raw(kafka.clone(), topic.clone()).await?, records)
            }
            SinkConfig::Timescale(c) => {
                let sink = TimescaleSink::connect(c.clone()).await?;
                (Box::pin(async { Ok(sink.run(records).await?) }), None)
            }
        };
        Ok(BuiltSink {
            name: self.name(),
            input,
            run,
            kafka,
        })
    }
}

/// A Kafka sink's loop and where readers find what it writes.
fn kafka_task(
    sink: KafkaSink,
    records: mpsc::Receiver<SinkRecord>,
) -> (SinkTask, Option<KafkaEndpoint>) {
    let endpoint = KafkaEndpoint {
        bootstrap_servers: sink.bootstrap_servers(),
        embedded: sink.embedded(),
    };
    let run = Box::pin(async { Ok(sink.run(records).await?) });
    (run, Some(endpoint))
}

/// Why a sink could not be configured, built or run.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// `[sink]` has no table.
    #[error("no sink is configured: add [sink.file], [sink.kafka] or [sink.timescale]")]
    NoSink,
    /// `sink.timescale.compress_after` not longer than `ingest.limits.max_past`.
    #[error(
        "sink.timescale.compress_after ({}) must be longer than \
         ingest.limits.max_past ({}): pings up to max_past old are accepted, and \
         TimescaleDB compresses chunks older than compress_after, so late pings \
         would be written into compressed chunks",
        humantime::format_duration(*.compress_after),
        humantime::format_duration(*.max_past)
    )]
    CompressAfter {
        /// `sink.timescale.compress_after`.
        compress_after: Duration,
        /// `ingest.limits.max_past`.
        max_past: Duration,
    },
    /// The file sink.
    #[error(transparent)]
    File(#[from] FileSinkError),
    /// The Kafka sink.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The TimescaleDB sink.
    #[error(transparent)]
    Timescale(#[from] TimescaleError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_sinks_in_order_and_at_least_one() {
        let none = SinksConfig::default();
        assert!(none.configured().is_empty());
        assert!(matches!(
            none.validate(Duration::from_secs(1)),
            Err(SinkError::NoSink)
        ));
        let both = SinksConfig {
            file: Some(FileSinkConfig::new("data")),
            kafka: Some(KafkaConfig::new("embedded")),
            timescale: None,
        };
        let names: Vec<_> = both.configured().iter().map(SinkConfig::name).collect();
        assert_eq!(names, ["file", "kafka"]);
        both.validate(Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn each_sink_runs_its_own_validation_and_the_rules_between_sections() {
        let file = SinksConfig {
            file: Some(FileSinkConfig {
                batch_max_records: 0,
                ..FileSinkConfig::new("data")
            }),
            ..SinksConfig::default()
        };
        let e = file.validate(Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("sink.file.batch_max_records"), "{e}");
        let timescale = SinksConfig {
            timescale: Some(TimescaleConfig::new("postgresql://h/db")),
            ..SinksConfig::default()
        };
        let max_past = Duration::from_secs(30 * 86_400);
        let e = timescale.validate(max_past).unwrap_err();
        assert!(matches!(e, SinkError::CompressAfter { .. }), "{e:?}");
        assert!(
            e.to_string().contains("ingest.limits.max_past (30days)"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_built_sink_runs_until_its_input_closes() {
        let dir = tempfile::tempdir().unwrap();
        let sink = SinkConfig::File(FileSinkConfig::new(dir.path()));
        let built = sink.build(SinkContext { queue: 4 }).await.unwrap();
        assert_eq!((built.name, built.input.max_capacity()), ("file", 4));
        assert!(built.kafka.is_none());
        let BuiltSink { input, run, .. } = built;
        drop(input);
        run.await.unwrap();
    }
}
