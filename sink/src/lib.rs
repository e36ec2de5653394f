//! fleetpipe's sinks: where accepted pings and dead letters are made durable.
//!
//! A sink consumes [`fleetpipe_model::SinkRecord`]s from a bounded queue and
//! marks each record's [`fleetpipe_model::Ack`] delivered only once the
//! record is durable, so gateways can tell their senders the truth.
//!
//! Each sink is a component ([`SinkConfig`]): it validates its own settings
//! and builds itself into a [`BuiltSink`] (its input queue and its loop),
//! so the pipeline wires sinks without naming them.
//!
//! - [`mod@file`]: the embedded default; newline-delimited JSON in rotating files.
//! - [`kafka`]: Kafka topics through rdkafka (`brokers = "embedded"` runs
//!   librdkafka's mock cluster inside fleetpipe).
//! - [`timescale`]: TimescaleDB / PostgreSQL batch writer (binary COPY into a
//!   staging table, then an idempotent insert).
//! - [`metrics`]: every metric the sinks record, declared once; each sink
//!   passes its own `sink` label.

mod component;
pub mod file;
pub mod kafka;
pub mod metrics;
mod stream;
#[cfg(test)]
mod test_metrics;
pub mod timescale;

pub use component::{
    BuiltSink, KafkaEndpoint, SinkConfig, SinkContext, SinkError, SinkTask, SinksConfig,
};
pub use file::{FileSink, FileSinkConfig, FileSinkError};
pub use kafka::{EmbeddedKafka, KafkaConfig, KafkaError, KafkaFormat, KafkaSink};
pub use timescale::{StorageMode, TimescaleConfig, TimescaleError, TimescaleSink, migrate};
