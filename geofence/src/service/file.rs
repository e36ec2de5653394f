//! The fence file as last read: what tells the watcher whether it changed
//! (its stamp, then its content hash) without reading it on every poll.

use std::hash::Hasher as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::LoadError;

/// Coarsest file timestamp granularity expected (FAT: 2 s). A file whose
/// modification time is this close to the moment it was read may be written
/// again without its timestamp changing, so it is re-read until it is older.
const MTIME_GRANULARITY: Duration = Duration::from_secs(2);

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            modified: m.modified().ok(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// The file as last read (or tried).
#[derive(Debug, Default)]
pub(super) struct FileState {
    stamp: Option<Stamp>,
    read_at: Option<SystemTime>,
    /// Hash of the content last loaded or tried: the same content is not
    /// tried twice by the watcher.
    hash: Option<u64>,
    /// The last problem the watcher reported, to report it once.
    pub(super) poll_error: Option<String>,
}

impl FileState {
    /// Reads the file (and remembers its stamp and hash).
    pub(super) async fn read(&mut self, path: &Path) -> Result<Vec<u8>, LoadError> {
        let (stamp, bytes, hash) = read_file(path.to_path_buf()).await?;
        self.stamp = Some(stamp);
        self.read_at = Some(SystemTime::now());
        self.hash = Some(hash);
        self.poll_error = None;
        Ok(bytes)
    }

    /// The file's content if it differs from what was last read.
    pub(super) async fn changed(&mut self, path: &Path) -> Result<Option<Vec<u8>>, LoadError> {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|source| LoadError::FileRead {
                path: path.to_path_buf(),
                source,
            })?;
        let stamp = Stamp::of(&meta);
        // Written again within the timestamp's granularity after it was read,
        // the file would keep its stamp: check the content until it is older.
        let racy = match (stamp.modified, self.read_at) {
            (Some(m), Some(read_at)) => m + MTIME_GRANULARITY >= read_at,
            _ => true,
        };
        if self.stamp == Some(stamp) && !racy {
            self.poll_error = None;
            return Ok(None);
        }
        let (stamp, bytes, hash) = read_file(path.to_path_buf()).await?;
        self.stamp = Some(stamp);
        self.read_at = Some(SystemTime::now());
        self.poll_error = None;
        if self.hash == Some(hash) {
            return Ok(None);
        }
        self.hash = Some(hash);
        Ok(Some(bytes))
    }
}

/// Stamp (taken before reading), content and content hash, off the async
/// threads.
async fn read_file(path: PathBuf) -> Result<(Stamp, Vec<u8>, u64), LoadError> {
    super::blocking("reading the file", move || {
        let io = |source| LoadError::FileRead {
            path: path.clone(),
            source,
        };
        let stamp = Stamp::of(&std::fs::metadata(&path).map_err(io)?);
        let bytes = std::fs::read(&path).map_err(io)?;
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(&bytes);
        Ok((stamp, bytes, hasher.finish()))
    })
    .await
}
