//! Configuration of the file sink (the `[sink.file]` section).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::FileSinkError;

/// Settings of the file sink.
///
/// Only [`FileSinkConfig::dir`] is required; every other key has a default.
/// [`FileSinkConfig::validate`] (called by [`super::FileSink::new`]) checks
/// the values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory the files are written under (created if missing). Telemetry
    /// goes to `{dir}/telemetry/`, dead letters to `{dir}/dead_letter/`,
    /// events to `{dir}/events/`.
    pub dir: PathBuf,
    /// Rotate a file once it holds this many bytes. Checked after each batch,
    /// so a file may exceed it by at most one batch.
    #[serde(default = "FileSinkConfig::default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Rotate a file once it is this old (e.g. `"1h"`, `"15m"`), even when
    /// no new records arrive.
    #[serde(
        default = "FileSinkConfig::default_max_file_age",
        with = "humantime_serde"
    )]
    pub max_file_age: Duration,
    /// Keep at most this many closed files per stream, deleting the oldest;
    /// 0 keeps all.
    #[serde(default = "FileSinkConfig::default_max_files")]
    pub max_files: usize,
    /// fsync after every batch before acknowledging. Off acknowledges once a
    /// batch is written to the OS, which survives a crash of fleetpipe but
    /// not of the host.
    #[serde(default = "FileSinkConfig::default_fsync")]
    pub fsync: bool,
    /// Most records written (and fsynced) as one batch. Larger batches
    /// amortise the fsync; smaller ones acknowledge sooner.
    #[serde(default = "FileSinkConfig::default_batch_max_records")]
    pub batch_max_records: usize,
}

impl FileSinkConfig {
    /// A configuration writing under `dir` with every other key at its default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_file_bytes: Self::default_max_file_bytes(),
            max_file_age: Self::default_max_file_age(),
            max_files: Self::default_max_files(),
            fsync: Self::default_fsync(),
            batch_max_records: Self::default_batch_max_records(),
        }
    }

    /// Default of [`FileSinkConfig::max_file_bytes`]: 128 MiB.
    pub const fn default_max_file_bytes() -> u64 {
        128 * 1024 * 1024
    }

    /// Default of [`FileSinkConfig::max_file_age`]: one hour.
    pub const fn default_max_file_age() -> Duration {
        Duration::from_secs(60 * 60)
    }

    /// Default of [`FileSinkConfig::max_files`]: keep every file.
    pub const fn default_max_files() -> usize {
        0
    }

    /// Default of [`FileSinkConfig::fsync`]: on.
    pub const fn default_fsync() -> bool {
        true
    }

    /// Default of [`FileSinkConfig::batch_max_records`].
    pub const fn default_batch_max_records() -> usize {
        1024
    }

    /// Checks the settings, naming the offending key on error.
    ///
    /// # Errors
    ///
    /// [`FileSinkError::ZeroBatchMaxRecords`] when `batch_max_records` is 0.
    pub fn validate(&self) -> Result<(), FileSinkError> {
        // A batch of at most 0 records would make every receive return
        // nothing, which is indistinguishable from a closed input.
        if self.batch_max_records == 0 {
            return Err(FileSinkError::ZeroBatchMaxRecords);
        }
        Ok(())
    }
}
