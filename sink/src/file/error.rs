//! Errors of the file sink.

use std::io;
use std::path::{Path, PathBuf};

/// Why the file sink could not start, write or shut down cleanly.
///
/// Every I/O variant names the path at fault, so an operator can fix the
/// file system without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    /// A batch that can hold no records would make every receive return
    /// nothing, indistinguishable from a closed input.
    #[error("sink.file.batch_max_records must be at least 1")]
    ZeroBatchMaxRecords,
    /// A file-system operation failed.
    #[error("file sink: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted, e.g. `create file`, `fsync`.
        op: &'static str,
        /// The file or directory it was attempted on.
        path: PathBuf,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },
    /// The blocking task running the writer panicked or was cancelled; the
    /// writer and its open files are gone.
    #[error("file sink: writer task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl FileSinkError {
    /// Wraps an I/O error with what was attempted and on which path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FileSinkError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The file or directory at fault, for I/O errors.
    pub fn path(&self) -> Option<&Path> {
        match self {
            FileSinkError::Io { path, .. } => Some(path),
            FileSinkError::ZeroBatchMaxRecords | FileSinkError::Task(_) => None,
        }
    }
}
