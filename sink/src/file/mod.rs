//! The file sink: every record as one line of JSON, in rotating files.
//!
//! Telemetry goes to `{dir}/telemetry/`, dead letters to
//! `{dir}/dead_letter/`, state-change events (CloudEvents 1.0 JSON) to
//! `{dir}/events/`, each as files named after their UTC open time and a
//! per-stream counter, e.g. `telemetry-20261123T080000Z-0001.ndjson`, so
//! names are unique and sort in write order. Files are never appended to
//! after a restart nor overwritten: a new run continues after the highest
//! counter it finds.
//!
//! - [`config`](FileSinkConfig): the `[sink.file]` settings.
//! - `writer`: the synchronous core that encodes a batch, writes, fsyncs,
//!   rotates and applies retention. It does blocking I/O and never touches
//!   the async runtime.
//! - `sink`: [`FileSink::run`], the async loop that collects batches from the
//!   input queue, hands each to the writer on the blocking pool, settles the
//!   acknowledgements and records metrics.

mod config;
mod error;
mod sink;
mod writer;

#[cfg(test)]
mod tests;

pub use config::FileSinkConfig;
pub use error::FileSinkError;
pub use sink::FileSink;
