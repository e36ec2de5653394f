//! The file sink's async loop: batches from the input queue, written on the
//! blocking pool, acknowledged once durable.

use std::time::Instant;

use fleetpipe_model::SinkRecord;
use tokio::sync::mpsc;

use super::writer::{BatchReport, RotatingWriter, Stream, StreamReport};
use super::{FileSinkConfig, FileSinkError};
use crate::metrics::{self, StreamCounters};

/// Value of the `sink` label of every metric this sink records.
const SINK: &str = "file";

/// Writes every record it receives as newline-delimited JSON under a data
/// directory, in rotating files, and acknowledges each record only once it
/// is durable.
///
/// Create it with [`FileSink::new`] (which prepares the directories, so a
/// misconfigured path fails at startup) and drive it with [`FileSink::run`].
#[derive(Debug)]
pub struct FileSink {
    writer: RotatingWriter,
    batch_max_records: usize,
}

/// What woke the loop.
enum Event {
    /// `recv_many` returned this many records; 0 means the input is closed
    /// and drained.
    Received(usize),
    /// The oldest open file reached its age limit.
    FileExpired,
}

impl FileSink {
    /// Validates `config`, creates `{dir}/telemetry/`, `{dir}/dead_letter/`
    /// and `{dir}/events/` and finds where each stream's file numbering
    /// continues.
    ///
    /// # Errors
    ///
    /// An invalid setting, or a directory that cannot be created or read
    /// (the error names it).
    pub fn new(config: FileSinkConfig) -> Result<Self, FileSinkError> {
        config.validate()?;
        let writer = RotatingWriter::open(&config)?;
        Ok(Self {
            writer,
            batch_max_records: config.batch_max_records,
        })
    }

    /// Runs until `input` is closed and drained (every sender dropped), then
    /// flushes, fsyncs and returns.
    ///
    /// A batch that cannot be written fails only its own records' acks: the
    /// error is logged and counted, and the next batch starts a fresh file.
    ///
    /// # Errors
    ///
    /// The final fsync at shutdown failed, or the writer task panicked (then
    /// the records it held report `Failed`).
    pub async fn run(self, mut input: mpsc::Receiver<SinkRecord>) -> Result<(), FileSinkError> {
        let FileSink {
            mut writer,
            batch_max_records,
        } = self;
        let written = StreamCounters::new(SINK);
        let mut batch = Vec::with_capacity(batch_max_records);
        loop {
            let deadline = writer.deadline();
            let event = tokio::select! {
                // Records first: a batch checks file ages itself.
                biased;
                n = input.recv_many(&mut batch, batch_max_records) => Event::Received(n),
                () = sleep_until(deadline) => Event::FileExpired,
            };
            match event {
                Event::Received(0) => break,
                Event::Received(_) => {
                    // fsync can block for a long time; keep it off the
                    // runtime's worker threads.
                    let (w, b, report) = tokio::task::spawn_blocking(move || {
                        let report = writer.write_batch(&mut batch, Instant::now());
                        (writer, batch, report)
                    })
                    .await
                    .map_err(FileSinkError::Task)?;
                    (writer, batch) = (w, b);
                    settle_batch(report, &written);
                }
                Event::FileExpired => {
                    let (w, reports) = tokio::task::spawn_blocking(move || {
                        let reports = writer.rotate_expired(Instant::now());
                        (writer, reports)
                    })
                    .await
                    .map_err(FileSinkError::Task)?;
                    writer = w;
                    settle_streams(reports, &written);
                }
            }
        }

        let reports = tokio::task::spawn_blocking(move || writer.close())
            .await
            .map_err(FileSinkError::Task)?;
        let mut first_failure = None;
        for (stream, mut report) in Stream::ALL.into_iter().zip(reports) {
            if let Some(e) = report.failed.take() {
                tracing::error!(
                    error = %e,
                    path = %path_of(&e),
                    stream = stream.as_str(),
                    "file sink: final fsync at shutdown failed"
                );
                count_io_error();
                first_failure.get_or_insert(e);
            }
            settle_stream(stream, report, &written);
        }
        first_failure.map_or(Ok(()), Err)
    }
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Acknowledges, logs and counts what one batch did.
fn settle_batch(report: BatchReport, written: &StreamCounters) {
    metrics::batch_written(SINK, report.records, report.io_time.as_secs_f64());
    for (stream, e) in &report.serialize_errors {
        tracing::error!(
            error = %e,
            stream = stream.as_str(),
            "file sink: record could not be serialized; it is dropped and its ack fails"
        );
        metrics::error(SINK, "serialize");
    }
    settle_streams(report.streams, written);
}

/// [`settle_stream`] for every stream.
fn settle_streams(reports: [StreamReport; Stream::COUNT], written: &StreamCounters) {
    for (stream, report) in Stream::ALL.into_iter().zip(reports) {
        settle_stream(stream, report, written);
    }
}

/// Marks the durable records delivered, logs and counts the rest.
fn settle_stream(stream: Stream, report: StreamReport, written: &StreamCounters) {
    let name = stream.as_str();
    if let Some(e) = &report.failed {
        tracing::error!(
            error = %e,
            path = %path_of(e),
            stream = name,
            records = report.lost,
            "file sink: batch not written; its acks fail and the next batch opens a new file"
        );
        count_io_error();
    }
    for e in &report.warnings {
        tracing::warn!(
            error = %e,
            path = %path_of(e),
            stream = name,
            "file sink: retention failed; old files are kept for now"
        );
        count_io_error();
    }
    if report.rotations > 0 {
        metrics::rotated(SINK, stream, report.rotations);
    }
    if !report.durable.is_empty() {
        written.written(stream, report.durable.len() as u64, report.bytes);
    }
    for ack in report.durable {
        ack.delivered();
    }
}

fn count_io_error() {
    metrics::error(SINK, "io");
}

/// The path an error names, for the `path` log field.
fn path_of(e: &FileSinkError) -> String {
    e.path()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
