//! The geofences of a running pipeline (`[geofence]`): loaded at start from
//! the GeoJSON file and/or the PostgreSQL table ([`FenceTable`]), indexed,
//! and shared with enrichment as a [`SharedIndex`]; reloaded at run time
//! without stopping ingest.
//!
//! Reloads come from the file watcher ([`FileWatcher`]: every
//! `geofence.watch_interval` the file's modification time, size and inode
//! are checked; when they changed, or while the file may still be changing
//! within the same timestamp tick, its content is hashed, and a new hash is
//! loaded) and from `POST /admin/geofences/reload`
//! ([`FenceReloader::reload`]). Reloads are serialized. A reload parses and
//! builds a whole new index off the async threads (`spawn_blocking`) and
//! swaps it in atomically: lookups use the old index until then. A failed
//! reload keeps the old index, logs a warning and counts
//! [`crate::metrics::RELOAD_ERRORS_TOTAL`]; the watcher retries only when
//! the content changes again.
//!
//! The service runs no background task of its own: its one long-lived
//! task, the watcher, is handed to the caller
//! ([`FenceService::take_watcher`]), who owns it, runs it until shutdown and
//! hears if it dies. (Parsing and indexing run on the blocking pool and are
//! awaited; only the freeing of a replaced index is left to finish there
//! on its own.)

mod file;
mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex;
use tokio::task::JoinError;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::AbortOnDropHandle;

pub use table::FenceTable;

use self::file::FileState;
use crate::{FenceSet, GeofenceConfig, GeofenceError, GeofenceIndex, SharedIndex};

/// Why the fences could not be loaded, or the watcher stopped. Every message
/// is one line and names the configuration key of the source at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `[geofence]` is invalid.
    #[error("{0}")]
    Config(GeofenceError),
    /// The fence file cannot be read.
    #[error("geofence.file = {}: cannot read: {source}", path.display())]
    FileRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The fence file is not a valid fence collection.
    #[error("geofence.file = {}: {source}", path.display())]
    FileParse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: GeofenceError,
    },
    /// The table's connection settings are invalid (the message names the
    /// key), or a TLS file cannot be read.
    #[error("geofence.postgres (table {table}): {source}")]
    Postgres {
        /// The table as configured.
        table: String,
        /// What is wrong.
        source: fleetpipe_postgres::PostgresError,
    },
    /// The database cannot be reached (or refused the TLS or the login).
    #[error(
        "geofence.postgres (table {table}): cannot connect: {}",
        fleetpipe_postgres::describe(source)
    )]
    Connect {
        /// The table as configured.
        table: String,
        /// tokio-postgres' error.
        source: tokio_postgres::Error,
    },
    /// The table cannot be read (e.g. it does not exist).
    #[error(
        "geofence.postgres (table {table}): cannot read the table: {}",
        fleetpipe_postgres::describe(source)
    )]
    Query {
        /// The table as configured.
        table: String,
        /// tokio-postgres' error.
        source: tokio_postgres::Error,
    },
    /// A column has a type that does not convert to the fence's.
    #[error(
        "geofence.postgres (table {table}): unexpected column: {}",
        fleetpipe_postgres::describe(source)
    )]
    Column {
        /// The table as configured.
        table: String,
        /// tokio-postgres' error.
        source: tokio_postgres::Error,
    },
    /// A row is not a valid fence (or two rows share an id).
    #[error("geofence.postgres (table {table}): {}", source.to_string().replace("feature #", "row #"))]
    Row {
        /// The table as configured.
        table: String,
        /// What is wrong, naming the row (from 0, in id order) and its id.
        source: GeofenceError,
    },
    /// [`FenceTable::create`] failed.
    #[error(
        "geofence.postgres (table {table}): cannot create the table: {}",
        fleetpipe_postgres::describe(source)
    )]
    Create {
        /// The table as configured.
        table: String,
        /// tokio-postgres' error.
        source: tokio_postgres::Error,
    },
    /// The file and the table define the same fence id.
    #[error("geofence: fence id {id:?} is defined both in geofence.file and in geofence.postgres")]
    DuplicateAcrossSources {
        /// The id.
        id: String,
    },
    /// Indexing failed (a bad cell size, too many fences).
    #[error("geofence: building the index: {0}")]
    Index(GeofenceError),
    /// A step run on the blocking pool died (a panic).
    #[error("geofence: {step}: task failed: {source}")]
    Task {
        /// What it was doing.
        step: &'static str,
        /// How it ended.
        source: JoinError,
    },
    /// The file watcher died (a panic): the file is no longer watched.
    #[error("geofence: the watcher of geofence.file stopped: {0}")]
    Watcher(JoinError),
}

/// The answer of a successful reload (`POST /admin/geofences/reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Fences in the new index.
    pub fences: usize,
    /// Edge of its finest cells, metres (`geofence.cell_size_m`).
    pub cell_size_m: u32,
    /// Milliseconds the reload took (reading, parsing, indexing).
    pub took_ms: u64,
}

/// Checks `[geofence]` without starting anything, for `config check`: the
/// keys, the PostgreSQL URL's syntax and TLS files, and that the fence file
/// exists and parses (it is not indexed, and the table is not read).
///
/// # Errors
///
/// The first problem, as at start.
pub fn check_config(config: &GeofenceConfig) -> Result<(), LoadError> {
    config.validate().map_err(LoadError::Config)?;
    if let Some(pg) = &config.postgres {
        FenceTable::new(pg)?;
    }
    if let Some(path) = &config.file {
        let bytes = std::fs::read(path).map_err(|source| LoadError::FileRead {
            path: path.clone(),
            source,
        })?;
        FenceSet::from_geojson_slice(&bytes).map_err(|source| LoadError::FileParse {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The running fence service: holds the shared index, and the file watcher
/// until its owner takes it ([`FenceService::take_watcher`]). The watcher
/// stops with the shutdown token given at start, or when this is dropped.
#[derive(Debug)]
pub struct FenceService {
    reloader: FenceReloader,
    loaded: ReloadReport,
    watcher: Option<FileWatcher>,
    _stop: DropGuard,
}

impl FenceService {
    /// Validates `config`, loads every configured source and builds the
    /// index (an empty one without sources). With a file and a
    /// `watch_interval`, prepares its watcher (not yet running: see
    /// [`FenceService::take_watcher`]).
    ///
    /// # Errors
    ///
    /// [`LoadError`] naming the source and the problem; nothing is left running.
    pub async fn start(
        config: &GeofenceConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, LoadError> {
        crate::metrics::describe();
        config.validate().map_err(LoadError::Config)?;
        let started = Instant::now();
        let mut state = FileState::default();
        let file = match &config.file {
            Some(path) => Some(state.read(path).await?),
            None => None,
        };
        let table = config.postgres.as_ref().map(FenceTable::new).transpose()?;
        let index = load(config, file, table.as_ref()).await?;
        let loaded = ReloadReport {
            fences: index.len(),
            cell_size_m: config.cell_size_m,
            took_ms: elapsed_ms(started),
        };
        crate::metrics::fences_in_use(loaded.fences);
        let reloader = FenceReloader {
            inner: Arc::new(Inner {
                config: config.clone(),
                table,
                index: crate::shared(index),
                state: Mutex::new(state),
                reloads: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        };
        let stop = shutdown.child_token();
        let watcher = match &config.file {
            Some(path) if !config.watch_interval.is_zero() => Some(FileWatcher {
                reloader: reloader.clone(),
                path: path.clone(),
                interval: config.watch_interval,
                stop: stop.clone(),
            }),
            _ => None,
        };
        Ok(Self {
            reloader,
            loaded,
            watcher,
            _stop: stop.drop_guard(),
        })
    }

    /// The file watcher, for the caller to own and run
    /// ([`FileWatcher::run`]); `None` when the file is not watched (no
    /// file, or `watch_interval = "off"`) or it was taken already. Until it
    /// runs, the file is not watched.
    #[must_use]
    pub fn take_watcher(&mut self) -> Option<FileWatcher> {
        self.watcher.take()
    }

    /// Logs what was loaded at start. Separate from [`FenceService::start`]
    /// so that a start that fails later prints only its error.
    pub fn log_loaded(&self) {
        let config = &self.reloader.inner.config;
        tracing::info!(
            fences = self.loaded.fences,
            cell_size_m = self.loaded.cell_size_m,
            took_ms = self.loaded.took_ms,
            file = ?config.file,
            table = config.postgres.as_ref().map(|p| p.table.as_str()),
            watch_interval = ?config.watch_interval,
            "geofences loaded"
        );
    }

    /// The current index, shared: take a snapshot with `load()` per lookup.
    pub fn index(&self) -> SharedIndex {
        Arc::clone(&self.reloader.inner.index)
    }

    /// A handle that reloads the fences (for the admin endpoint).
    pub fn reloader(&self) -> FenceReloader {
        self.reloader.clone()
    }

    /// Successful reloads since start (not counting the initial load).
    pub fn reloads(&self) -> u64 {
        self.reloader.inner.reloads.load(Ordering::SeqCst)
    }

    /// Failed reloads since start (this service's share of
    /// [`crate::metrics::RELOAD_ERRORS_TOTAL`]).
    pub fn reload_errors(&self) -> u64 {
        self.reloader.inner.errors.load(Ordering::SeqCst)
    }
}

/// The file watcher of a [`FenceService`]: polls the file every
/// `geofence.watch_interval` and reloads when its content changed, until
/// the service's shutdown token is cancelled or the service is dropped.
#[derive(Debug)]
#[must_use = "the file is watched only while the watcher runs"]
pub struct FileWatcher {
    reloader: FenceReloader,
    path: PathBuf,
    interval: Duration,
    stop: CancellationToken,
}

impl FileWatcher {
    /// Watches until stopped. Meant to run in the task set of its owner
    /// (e.g. the pipeline's), which then hears when it ends.
    ///
    /// # Errors
    ///
    /// [`LoadError::Watcher`] if the watcher died (a panic); a failed
    /// reload is not an error here (it is logged and counted, and the old
    /// fences stay).
    pub async fn run(self) -> Result<(), LoadError> {
        // Its own task, so that a panic in it reaches the owner as an
        // error rather than unwinding through the owner's task.
        supervised(watch(self.reloader, self.path, self.interval, self.stop)).await
    }
}

/// Runs `watcher` in a task of its own and waits for it: `Ok` when it
/// ended, [`LoadError::Watcher`] when it panicked. Dropping the returned
/// future aborts the task.
async fn supervised(watcher: impl Future<Output = ()> + Send + 'static) -> Result<(), LoadError> {
    AbortOnDropHandle::new(tokio::spawn(watcher))
        .await
        .map_err(LoadError::Watcher)
}

/// Reloads the fences from every configured source; clones share one
/// service, and their reloads are serialized.
#[derive(Debug, Clone)]
pub struct FenceReloader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GeofenceConfig,
    table: Option<FenceTable>,
    index: SharedIndex,
    /// What was last read of the file. Held for the whole of a reload,
    /// which serializes reloads.
    state: Mutex<FileState>,
    reloads: AtomicU64,
    errors: AtomicU64,
}

impl FenceReloader {
    /// Reads every source again, builds a new index and swaps it in. On
    /// error the current index stays, a warning is logged and
    /// [`crate::metrics::RELOAD_ERRORS_TOTAL`] counts it.
    ///
    /// # Errors
    ///
    /// Why the new fences could not be loaded.
    pub async fn reload(&self) -> Result<ReloadReport, LoadError> {
        let mut state = self.inner.state.lock().await;
        let started = Instant::now();
        let file = match &self.inner.config.file {
            Some(path) => match state.read(path).await {
                Ok(file) => Some(file),
                Err(e) => return Err(self.failed(e, "request")),
            },
            None => None,
        };
        self.apply(file, started, "request").await
    }

    /// The watcher's turn: reloads if the file's content changed.
    async fn poll(&self, path: &Path) {
        let mut state = self.inner.state.lock().await;
        let started = Instant::now();
        match state.changed(path).await {
            Ok(Some(file)) => {
                let _ = self.apply(Some(file), started, "file changed").await;
            }
            Ok(None) => {}
            Err(e) => {
                let message = e.to_string();
                // Counted and logged once per distinct problem, not per poll.
                if state.poll_error.as_ref() != Some(&message) {
                    state.poll_error = Some(message);
                    let _ = self.failed(e, "file changed");
                }
            }
        }
    }

    /// Loads from every source (with the file content given) and swaps the
    /// new index in. The caller holds the state lock.
    async fn apply(
        &self,
        file: Option<Vec<u8>>,
        started: Instant,
        trigger: &'static str,
    ) -> Result<ReloadReport, LoadError> {
        let index = match load(&self.inner.config, file, self.inner.table.as_ref()).await {
            Ok(index) => index,
            Err(e) => return Err(self.failed(e, trigger)),
        };
        let report = ReloadReport {
            fences: index.len(),
            cell_size_m: self.inner.config.cell_size_m,
            took_ms: elapsed_ms(started),
        };
        let old = self.inner.index.swap(Arc::new(index));
        // The last reference to a large index can take a while to free.
        tokio::task::spawn_blocking(move || drop(old));
        self.inner.reloads.fetch_add(1, Ordering::SeqCst);
        crate::metrics::reloaded(report.fences);
        tracing::info!(
            fences = report.fences,
            cell_size_m = report.cell_size_m,
            took_ms = report.took_ms,
            trigger,
            "geofences reloaded"
        );
        Ok(report)
    }

    fn failed(&self, e: LoadError, trigger: &'static str) -> LoadError {
        self.inner.errors.fetch_add(1, Ordering::SeqCst);
        crate::metrics::reload_failed();
        tracing::warn!(error = %e, trigger, "geofence reload failed; the previous fences stay in use");
        e
    }
}

/// Polls the file every `interval` until `stop`.
async fn watch(
    reloader: FenceReloader,
    path: PathBuf,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the file was just read at start.
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = reloader.poll(&path) => {}
        }
    }
}

/// Parses the file content and reads the table (as configured), merges them
/// and builds the index.
async fn load(
    config: &GeofenceConfig,
    file: Option<Vec<u8>>,
    table: Option<&FenceTable>,
) -> Result<GeofenceIndex, LoadError> {
    let from_file = match (&config.file, file) {
        (Some(path), Some(bytes)) => {
            let path = path.clone();
            blocking("parsing the file", move || {
                FenceSet::from_geojson_slice(&bytes)
                    .map_err(|source| LoadError::FileParse { path, source })
            })
            .await?
        }
        _ => FenceSet::default(),
    };
    let set = match table {
        Some(table) => from_file.merge(table.read().await?).map_err(|e| match e {
            GeofenceError::DuplicateAcrossSources { id } => {
                LoadError::DuplicateAcrossSources { id }
            }
            other => LoadError::Index(other),
        })?,
        None => from_file,
    };
    let cell_size_m = config.cell_size();
    blocking("building the index", move || {
        GeofenceIndex::build(set, cell_size_m).map_err(LoadError::Index)
    })
    .await
}

/// Runs `f` on the blocking pool; `step` names it if it dies.
async fn blocking<T: Send + 'static>(
    step: &'static str,
    f: impl FnOnce() -> Result<T, LoadError> + Send + 'static,
) -> Result<T, LoadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| LoadError::Task { step, source })?
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
