//! fleetpipe's sinks: where accepted pings and dead letters are made durable.
//!
//! A sink consumes [`fleetpipe_model::SinkRecord`]s from a bounded queue and
//! marks each record's [`fleetpipe_model::Ack`] delivered only once the
//! record is durable, so gateways can tell their senders the truth.
//!
//! - [`file`]: the embedded default; newline-delimited JSON in rotating files.

pub mod file;

pub use file::{FileSink, FileSinkConfig, FileSinkError};
