//! Errors of the Kafka sink.

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};

/// Why the Kafka sink could not start or had to stop.
///
/// Failures of single records are not errors of the sink: they fail only
/// their own acks and are logged and counted.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A setting is out of its domain.
    #[error("sink.kafka.{key}: {message}")]
    Config {
        /// The key at fault, e.g. `compression`.
        key: String,
        /// What is wrong with its value.
        message: String,
    },
    /// The embedded mock cluster (`brokers = "embedded"`) could not be
    /// started or could not create a topic.
    #[error("kafka sink: cannot start the embedded Kafka (librdkafka mock cluster): {0}")]
    Embedded(#[source] RdKafkaError),
    /// The thread owning the embedded mock cluster could not be started.
    #[error("kafka sink: cannot start the embedded Kafka thread: {0}")]
    EmbeddedThread(#[source] std::io::Error),
    /// librdkafka refused the producer configuration (e.g. an unknown
    /// pass-through option) or could not create the producer.
    #[error("kafka sink: cannot create the producer: {0}")]
    Producer(#[source] RdKafkaError),
    /// The producer hit a fatal error (e.g. the idempotent producer lost
    /// its guarantees, or the cluster refused it authorization): it cannot
    /// send anything any more. Records not yet delivered report `Failed`.
    #[error("kafka sink: fatal producer error ({code}): {reason}")]
    Fatal {
        /// librdkafka's error code of the underlying failure.
        code: RDKafkaErrorCode,
        /// librdkafka's explanation.
        reason: String,
    },
}
