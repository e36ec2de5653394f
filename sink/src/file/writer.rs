//! The synchronous rotating writer: the file sink's I/O core.
//!
//! [`RotatingWriter::write_batch`] encodes a batch of records as JSON lines,
//! appends each stream's lines to that stream's current file with one write,
//! fsyncs when configured, rotates on size or age and applies retention. It
//! returns, per stream, the acknowledgements of the records that are now
//! durable; the caller marks them delivered. Everything here blocks, so the
//! async loop runs it on the blocking pool; it logs nothing and records no
//! metrics, leaving both to the caller through [`BatchReport`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use fleetpipe_model::{Ack, SinkRecord};
use serde::Serialize;

use super::{FileSinkConfig, FileSinkError};

/// File name extension of every file the sink writes.
const EXTENSION: &str = ".ndjson";

/// Length of the UTC open time in a file name, `YYYYMMDDTHHMMSSZ`.
const STAMP_LEN: usize = 16;

/// How many taken names to skip before giving up on creating a file. Names
/// are only taken when something else writes into the directory, so a
/// handful is plenty; the bound keeps a misbehaving neighbour from looping us.
const MAX_NAME_ATTEMPTS: u32 = 1000;

pub(crate) use crate::stream::Stream;

/// What happened to one stream during one call into the writer.
#[derive(Debug, Default)]
pub(crate) struct StreamReport {
    /// Acknowledgements of the records now durable; the caller marks them
    /// delivered.
    pub(crate) durable: Vec<Ack>,
    /// Bytes made durable (the lines of `durable`).
    pub(crate) bytes: u64,
    /// Files closed because they reached their size or age limit.
    pub(crate) rotations: u64,
    /// Why this stream's records were not made durable. Their acks were
    /// dropped unmarked, which reports the failure to their senders.
    pub(crate) failed: Option<FileSinkError>,
    /// How many records `failed` cost.
    pub(crate) lost: usize,
    /// Errors that cost no record, e.g. a closed file retention could not
    /// delete.
    pub(crate) warnings: Vec<FileSinkError>,
}

/// What happened during one [`RotatingWriter::write_batch`].
#[derive(Debug, Default)]
pub(crate) struct BatchReport {
    /// Records the batch held.
    pub(crate) records: usize,
    /// Per stream, indexed like [`Stream::ALL`].
    pub(crate) streams: [StreamReport; Stream::COUNT],
    /// Records that could not be encoded, already dropped (their acks report
    /// a failure).
    pub(crate) serialize_errors: Vec<(Stream, serde_json::Error)>,
    /// Time spent writing, flushing and fsyncing (not encoding).
    pub(crate) io_time: Duration,
}

/// Every stream's files and the buffers batches are encoded into.
#[derive(Debug)]
pub(crate) struct RotatingWriter {
    /// Indexed like [`Stream::ALL`].
    streams: [StreamWriter; Stream::COUNT],
    /// One encode buffer per stream, kept between batches to reuse the
    /// allocation.
    bufs: [Vec<u8>; Stream::COUNT],
}

impl RotatingWriter {
    /// Creates `config.dir` and every stream's directory, and finds where
    /// each stream's file numbering continues.
    pub(crate) fn open(config: &FileSinkConfig) -> Result<Self, FileSinkError> {
        fs::create_dir_all(&config.dir)
            .map_err(|e| FileSinkError::io("create directory", &config.dir, e))?;
        Ok(Self {
            streams: [
                StreamWriter::open(&config.dir, Stream::Telemetry, config)?,
                StreamWriter::open(&config.dir, Stream::DeadLetter, config)?,
                StreamWriter::open(&config.dir, Stream::Event, config)?,
            ],
            bufs: Default::default(),
        })
    }

    /// Writes `batch` (leaving it empty), making every record durable that
    /// can be, and reports which.
    ///
    /// A stream whose write or fsync fails loses only its own part of the
    /// batch; the other streams are unaffected. A stream that failed opens a
    /// fresh file on its next write.
    pub(crate) fn write_batch(&mut self, batch: &mut Vec<SinkRecord>, now: Instant) -> BatchReport {
        let mut report = BatchReport {
            records: batch.len(),
            ..BatchReport::default()
        };
        for buf in &mut self.bufs {
            buf.clear();
        }

        for record in batch.drain(..) {
            let stream = Stream::of(&record);
            let i = stream.index();
            match encode(&mut self.bufs[i], &record) {
                Ok(()) => report.streams[i].durable.push(record.into_ack()),
                // The record, and with it its ack, is dropped here: its sender
                // hears `Failed`, every other record goes on.
                Err(e) => report.serialize_errors.push((stream, e)),
            }
        }

        let started = Instant::now();
        for stream in Stream::ALL {
            let i = stream.index();
            let (writer, buf, out) = (&mut self.streams[i], &self.bufs[i], &mut report.streams[i]);
            if buf.is_empty() {
                // Nothing to write, but an expired file still has to go.
                writer.rotate_if_expired(now, out);
                continue;
            }
            match writer.write(buf, now, out) {
                Ok(()) => out.bytes = buf.len() as u64,
                Err(e) => {
                    out.lost = out.durable.len();
                    out.durable.clear();
                    out.failed = Some(e);
                }
            }
        }
        report.io_time = started.elapsed();
        report
    }

    /// Closes the files that reached their age limit while no records came.
    pub(crate) fn rotate_expired(&mut self, now: Instant) -> [StreamReport; Stream::COUNT] {
        let mut reports = <[StreamReport; Stream::COUNT]>::default();
        for (writer, out) in self.streams.iter_mut().zip(&mut reports) {
            writer.rotate_if_expired(now, out);
        }
        reports
    }

    /// When the next open file reaches its age limit, if any file is open.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.streams.iter().filter_map(StreamWriter::deadline).min()
    }

    /// Shutdown: fsyncs and closes every stream's file (even with fsync off,
    /// so a clean stop leaves everything durable) and applies retention.
    pub(crate) fn close(&mut self) -> [StreamReport; Stream::COUNT] {
        let mut reports = <[StreamReport; Stream::COUNT]>::default();
        for (writer, out) in self.streams.iter_mut().zip(&mut reports) {
            writer.close(out);
        }
        reports
    }
}

/// Appends `record` as one JSON line to `buf`.
fn encode(buf: &mut Vec<u8>, record: &SinkRecord) -> Result<(), serde_json::Error> {
    match record {
        SinkRecord::Telemetry(r) => encode_line(buf, r),
        SinkRecord::DeadLetter(r) => encode_line(buf, r),
        // The CloudEvents JSON object, the same as `VehicleEvent::to_json`.
        SinkRecord::Event(e) => encode_line(buf, e),
    }
}

/// Appends `value` as one JSON line to `buf`; on failure leaves `buf` as it
/// was, so a half-written record never reaches a file.
pub(crate) fn encode_line<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let start = buf.len();
    match serde_json::to_writer(&mut *buf, value) {
        Ok(()) => {
            buf.push(b'\n');
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// One stream's directory of rotating files.
#[derive(Debug)]
struct StreamWriter {
    stream: Stream,
    /// `{config.dir}/{stream}`.
    dir: PathBuf,
    max_file_bytes: u64,
    max_file_age: Duration,
    max_files: usize,
    fsync: bool,
    /// The file being appended to; `None` until the next write opens one, so
    /// no file is ever left empty.
    current: Option<OpenFile>,
    /// Counter of the next file to create.
    next_counter: u64,
    /// Open time of the newest file, so a clock stepping back cannot make a
    /// newer file sort before an older one.
    last_stamp: String,
}

/// A file being appended to.
#[derive(Debug)]
struct OpenFile {
    file: File,
    path: PathBuf,
    /// Bytes written and (when configured) fsynced.
    len: u64,
    opened_at: Instant,
}

impl StreamWriter {
    /// Creates the stream's directory and continues after its highest file.
    fn open(root: &Path, stream: Stream, config: &FileSinkConfig) -> Result<Self, FileSinkError> {
        let dir = root.join(stream.as_str());
        fs::create_dir_all(&dir).map_err(|e| FileSinkError::io("create directory", &dir, e))?;
        let existing = existing_files(&dir, stream)?;
        let last_counter = existing.iter().map(|f| f.counter).max().unwrap_or(0);
        let last_stamp = existing
            .into_iter()
            .map(|f| f.stamp)
            .max()
            .unwrap_or_default();
        Ok(Self {
            stream,
            dir,
            max_file_bytes: config.max_file_bytes,
            max_file_age: config.max_file_age,
            max_files: config.max_files,
            fsync: config.fsync,
            current: None,
            next_counter: last_counter.saturating_add(1),
            last_stamp,
        })
    }

    /// Appends `data` (whole lines) to the current file, opening one if
    /// needed, and rotates afterwards when the file is full or old.
    ///
    /// On error the file is closed, best-effort cut back to its last good
    /// length, and the next write opens a fresh one.
    fn write(
        &mut self,
        data: &[u8],
        now: Instant,
        out: &mut StreamReport,
    ) -> Result<(), FileSinkError> {
        let mut file = match self.current.take() {
            Some(file) if !self.is_expired(&file, now) => file,
            Some(file) => {
                self.retire(file, out);
                self.create_file(now)?
            }
            None => self.create_file(now)?,
        };
        file.append(data, self.fsync)?;
        if file.len >= self.max_file_bytes || self.is_expired(&file, now) {
            self.retire(file, out);
        } else {
            self.current = Some(file);
        }
        Ok(())
    }

    /// Closes the current file if it reached its age limit.
    fn rotate_if_expired(&mut self, now: Instant, out: &mut StreamReport) {
        let max_age = self.max_file_age;
        if let Some(file) = self
            .current
            .take_if(|f| now.saturating_duration_since(f.opened_at) >= max_age)
        {
            self.retire(file, out);
        }
    }

    /// When the current file reaches its age limit.
    fn deadline(&self) -> Option<Instant> {
        // An age too large to represent never expires.
        self.current
            .as_ref()
            .and_then(|f| f.opened_at.checked_add(self.max_file_age))
    }

    /// Shutdown: fsyncs and closes the current file, then applies retention.
    fn close(&mut self, out: &mut StreamReport) {
        if let Some(file) = self.current.take() {
            out.failed = file
                .file
                .sync_data()
                .err()
                .map(|e| FileSinkError::io("fsync", &file.path, e));
        }
        self.apply_retention(out);
    }

    /// Whether `file` reached its age limit at `now`.
    fn is_expired(&self, file: &OpenFile, now: Instant) -> bool {
        now.saturating_duration_since(file.opened_at) >= self.max_file_age
    }

    /// Closes a file that reached a limit and applies retention.
    fn retire(&mut self, file: OpenFile, out: &mut StreamReport) {
        // Its data was written (and fsynced when configured) before the
        // records were acknowledged; closing adds nothing to durability.
        drop(file);
        out.rotations += 1;
        self.apply_retention(out);
    }

    /// Deletes the oldest closed files beyond `max_files`.
    fn apply_retention(&self, out: &mut StreamReport) {
        if self.max_files == 0 {
            return;
        }
        let mut closed = match existing_files(&self.dir, self.stream) {
            Ok(files) => files,
            Err(e) => {
                out.warnings.push(e);
                return;
            }
        };
        if let Some(current) = &self.current {
            closed.retain(|f| f.path != current.path);
        }
        if closed.len() <= self.max_files {
            return;
        }
        closed.sort_unstable_by_key(|f| f.counter);
        let excess = closed.len() - self.max_files;
        for old in closed.iter().take(excess) {
            if let Err(e) = fs::remove_file(&old.path) {
                out.warnings.push(FileSinkError::io("delete", &old.path, e));
            }
        }
    }

    /// Creates the next file, never reusing an existing name.
    fn create_file(&mut self, now: Instant) -> Result<OpenFile, FileSinkError> {
        let stamp = utc_stamp(SystemTime::now());
        if stamp > self.last_stamp {
            self.last_stamp = stamp;
        }
        let mut attempts = 0;
        loop {
            let path = self.dir.join(format!(
                "{}-{}-{:04}{EXTENSION}",
                self.stream.as_str(),
                self.last_stamp,
                self.next_counter
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    self.next_counter = self.next_counter.saturating_add(1);
                    if self.fsync {
                        // The file's data is fsynced per batch, but its name
                        // lives in the directory, which needs its own fsync.
                        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                            drop(file);
                            let _ = fs::remove_file(&path);
                            return Err(FileSinkError::io("fsync directory", &self.dir, e));
                        }
                    }
                    return Ok(OpenFile {
                        file,
                        path,
                        len: 0,
                        opened_at: now,
                    });
                }
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists && attempts < MAX_NAME_ATTEMPTS =>
                {
                    // Someone else took the name; the counter alone keeps
                    // names unique, so skip it.
                    attempts += 1;
                    self.next_counter = self.next_counter.saturating_add(1);
                }
                Err(e) => return Err(FileSinkError::io("create file", &path, e)),
            }
        }
    }
}

impl OpenFile {
    /// Appends `data` and, when `fsync`, makes it durable. On error cuts the
    /// file back to its last good length (best effort) so a retry by the
    /// sender does not find half a batch already there, and removes a file
    /// left empty.
    fn append(&mut self, data: &[u8], fsync: bool) -> Result<(), FileSinkError> {
        // `File` is unbuffered: once `write_all` returns, the data is with
        // the OS, which is what acknowledging without fsync promises.
        let result = self
            .file
            .write_all(data)
            .map_err(|e| FileSinkError::io("write", &self.path, e))
            .and_then(|()| {
                if fsync {
                    self.file
                        .sync_data()
                        .map_err(|e| FileSinkError::io("fsync", &self.path, e))
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                self.len += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                // The error already fails the batch; a failed clean-up can only
                // leave a partial line behind, which readers must tolerate
                // after a crash anyway.
                if self.len == 0 {
                    let _ = fs::remove_file(&self.path);
                } else {
                    let _ = self.file.set_len(self.len);
                }
                Err(e)
            }
        }
    }
}

/// A file of this sink found in a stream directory.
#[derive(Debug)]
struct ExistingFile {
    path: PathBuf,
    stamp: String,
    counter: u64,
}

/// The sink's files in `dir`; anything else in it is ignored.
fn existing_files(dir: &Path, stream: Stream) -> Result<Vec<ExistingFile>, FileSinkError> {
    let read_error = |e| FileSinkError::io("read directory", dir, e);
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name();
        let Some((stamp, counter)) = name.to_str().and_then(|n| parse_file_name(stream, n)) else {
            continue;
        };
        files.push(ExistingFile {
            path: entry.path(),
            stamp: stamp.to_owned(),
            counter,
        });
    }
    Ok(files)
}

/// Splits `{stream}-{YYYYMMDDTHHMMSSZ}-{counter}.ndjson` into open time and
/// counter.
pub(crate) fn parse_file_name(stream: Stream, name: &str) -> Option<(&str, u64)> {
    let rest = name
        .strip_prefix(stream.as_str())?
        .strip_prefix('-')?
        .strip_suffix(EXTENSION)?;
    let (stamp, counter) = rest.split_once('-')?;
    let stamp_ok = stamp.len() == STAMP_LEN
        && stamp.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !stamp_ok || counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stamp, counter.parse().ok()?))
}

/// `time` as `YYYYMMDDTHHMMSSZ` (UTC), the open time in a file name.
pub(crate) fn utc_stamp(time: SystemTime) -> String {
    let t = time::OffsetDateTime::from(time);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
