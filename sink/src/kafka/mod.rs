//! The Kafka sink: telemetry, dead letters and state-change events as Kafka
//! records, keyed by vehicle, acknowledged by their delivery reports.
//!
//! Telemetry goes to `telemetry_topic` (default `fleet.telemetry.v1`), dead
//! letters to `dlq_topic` (`fleet.dlq.v1`), events to `events_topic`
//! (`fleet.events.v1`) as CloudEvents 1.0 JSON in structured content mode
//! (whatever the telemetry `format`). Every record's key is its vehicle id,
//! so a vehicle's records stay in order in one partition. The producer is
//! idempotent with `acks=all`, so librdkafka's retries never duplicate or
//! reorder a record, and a record's ack is marked delivered only once its
//! delivery report says the cluster has it.
//!
//! With `brokers = "embedded"` fleetpipe starts librdkafka's mock cluster (3
//! brokers, in memory) and logs its bootstrap address: development and tests
//! get a real Kafka protocol endpoint without a broker to install.
//!
//! - [`config`](KafkaConfig): the `[sink.kafka]` settings.
//! - The pure mapping of a record to key, value and headers is the model's
//!   [`topic_record`](fleetpipe_model::topic_record), shared with the roles
//!   that consume these topics.
//! - `service`: producer creation (options, librdkafka callbacks) and the
//!   embedded mock cluster.
//! - `sink`: [`KafkaSink::run`], the async loop that sends records in input
//!   order, applies backpressure, settles acks from delivery reports and
//!   records metrics.

mod config;
mod error;
mod service;
mod sink;

#[cfg(test)]
mod tests;

pub use config::{COMPRESSION_CODECS, EMBEDDED, KafkaConfig, KafkaFormat};
pub use error::KafkaError;
pub use sink::{EmbeddedKafka, KafkaSink};
