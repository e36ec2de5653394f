//! The geofences of a running pipeline (`[geofence]`): loaded at start from
//! the GeoJSON file and/or the PostgreSQL table, indexed, and shared with
//! enrichment as a [`SharedIndex`]; reloaded at run time without stopping
//! ingest.
//!
//! Reloads come from the file watcher (every `geofence.watch_interval` the
//! file's modification time, size and inode are checked; when they changed,
//! or while the file may still be changing within the same timestamp tick,
//! its content is hashed, and a new hash is loaded) and from
//! `POST /admin/geofences/reload` ([`FenceReloader::reload`]). Reloads are
//! serialized. A reload parses and builds a whole new index off the async
//! threads (`spawn_blocking`) and swaps it in atomically: lookups use the
//! old index until then. A failed reload keeps the old index, logs a warning
//! and counts `fleetpipe_geofence_reload_errors_total`; the watcher retries
//! only when the content changes again.

use std::hash::Hasher as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fleetpipe_geofence::{
    FenceRow, FenceSet, GeofenceConfig, GeofenceError, GeofenceIndex, PostgresFencesConfig,
    SharedIndex,
};
use fleetpipe_postgres::Postgres;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Name of the PostgreSQL connection when the URL sets none.
const PG_APPLICATION_NAME: &str = "fleetpipe-geofences";

/// Coarsest file timestamp granularity expected (FAT: 2 s). A file whose
/// modification time is this close to the moment it was read may be written
/// again without its timestamp changing, so it is re-read until it is older.
const MTIME_GRANULARITY: Duration = Duration::from_secs(2);

/// Why the fences could not be loaded. Every message is one line and names
/// the configuration key of the source at fault.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
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
    /// The fence table cannot be read or holds an invalid fence.
    #[error("geofence.postgres (table {table}): {reason}")]
    Postgres {
        /// The table as configured.
        table: String,
        /// What failed (one line).
        reason: String,
    },
    /// The file and the table define the same fence id.
    #[error("geofence: fence id {id:?} is defined both in geofence.file and in geofence.postgres")]
    DuplicateAcrossSources {
        /// The id.
        id: String,
    },
    /// Indexing failed (a bad cell size, too many fences) or its task died.
    #[error("geofence: building the index: {0}")]
    Build(String),
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

/// Checks `[geofence]` without starting anything, for `config check` and
/// [`crate::Config::load`]: the keys, the PostgreSQL URL's syntax and TLS
/// files, and that the fence file exists and parses (it is not indexed, and
/// the table is not read).
///
/// # Errors
///
/// The first problem, as at start.
pub fn check_config(config: &GeofenceConfig) -> Result<(), FenceError> {
    config.validate().map_err(FenceError::Config)?;
    if let Some(pg) = &config.postgres {
        postgres(pg)?;
    }
    if let Some(path) = &config.file {
        let bytes = std::fs::read(path).map_err(|source| FenceError::FileRead {
            path: path.clone(),
            source,
        })?;
        FenceSet::from_geojson_slice(&bytes).map_err(|source| FenceError::FileParse {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The running fence service: holds the shared index and the file watcher
/// (stopped by the pipeline's shutdown token, or when this is dropped).
#[derive(Debug)]
pub struct FenceService {
    reloader: FenceReloader,
    loaded: ReloadReport,
    watcher: Option<JoinHandle<()>>,
    _stop: DropGuard,
}

impl FenceService {
    /// Validates `config`, loads every configured source and builds the
    /// index (an empty one without sources), then starts the file watcher.
    ///
    /// # Errors
    ///
    /// [`FenceError`] naming the source and the problem; nothing is left running.
    pub async fn start(
        config: &GeofenceConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, FenceError> {
        describe_metrics();
        config.validate().map_err(FenceError::Config)?;
        let started = Instant::now();
        let mut state = FileState::default();
        let file = match &config.file {
            Some(path) => Some(state.read(path).await?),
            None => None,
        };
        let index = load(config, file).await?;
        let loaded = ReloadReport {
            fences: index.len(),
            cell_size_m: config.cell_size_m,
            took_ms: elapsed_ms(started),
        };
        metrics::gauge!("fleetpipe_geofence_fences").set(loaded.fences as f64);
        let reloader = FenceReloader {
            inner: Arc::new(Inner {
                config: config.clone(),
                index: fleetpipe_geofence::shared(index),
                state: Mutex::new(state),
                reloads: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        };
        let stop = shutdown.child_token();
        let watcher = match &config.file {
            Some(path) if !config.watch_interval.is_zero() => Some(tokio::spawn(watch(
                reloader.clone(),
                path.clone(),
                config.watch_interval,
                stop.clone(),
            ))),
            _ => None,
        };
        Ok(Self {
            reloader,
            loaded,
            watcher,
            _stop: stop.drop_guard(),
        })
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
    /// `fleetpipe_geofence_reload_errors_total`).
    pub fn reload_errors(&self) -> u64 {
        self.reloader.inner.errors.load(Ordering::SeqCst)
    }

    /// Waits for the file watcher to end (after shutdown was requested).
    pub async fn join(mut self) {
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.await;
        }
    }
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
    /// `fleetpipe_geofence_reload_errors_total` counts it.
    ///
    /// # Errors
    ///
    /// Why the new fences could not be loaded.
    pub async fn reload(&self) -> Result<ReloadReport, FenceError> {
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
    ) -> Result<ReloadReport, FenceError> {
        let index = match load(&self.inner.config, file).await {
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
        metrics::counter!("fleetpipe_geofence_reloads_total").increment(1);
        metrics::gauge!("fleetpipe_geofence_fences").set(report.fences as f64);
        tracing::info!(
            fences = report.fences,
            cell_size_m = report.cell_size_m,
            took_ms = report.took_ms,
            trigger,
            "geofences reloaded"
        );
        Ok(report)
    }

    fn failed(&self, e: FenceError, trigger: &'static str) -> FenceError {
        self.inner.errors.fetch_add(1, Ordering::SeqCst);
        metrics::counter!("fleetpipe_geofence_reload_errors_total").increment(1);
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
struct FileState {
    stamp: Option<Stamp>,
    read_at: Option<SystemTime>,
    /// Hash of the content last loaded or tried: the same content is not
    /// tried twice by the watcher.
    hash: Option<u64>,
    /// The last problem the watcher reported, to report it once.
    poll_error: Option<String>,
}

impl FileState {
    /// Reads the file (and remembers its stamp and hash).
    async fn read(&mut self, path: &Path) -> Result<Vec<u8>, FenceError> {
        let (stamp, bytes, hash) = read_file(path.to_path_buf()).await?;
        self.stamp = Some(stamp);
        self.read_at = Some(SystemTime::now());
        self.hash = Some(hash);
        self.poll_error = None;
        Ok(bytes)
    }

    /// The file's content if it differs from what was last read.
    async fn changed(&mut self, path: &Path) -> Result<Option<Vec<u8>>, FenceError> {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|source| FenceError::FileRead {
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
async fn read_file(path: PathBuf) -> Result<(Stamp, Vec<u8>, u64), FenceError> {
    let read = tokio::task::spawn_blocking(move || {
        let io = |source| FenceError::FileRead {
            path: path.clone(),
            source,
        };
        let stamp = Stamp::of(&std::fs::metadata(&path).map_err(io)?);
        let bytes = std::fs::read(&path).map_err(io)?;
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(&bytes);
        Ok((stamp, bytes, hasher.finish()))
    });
    read.await
        .map_err(|e| FenceError::Build(format!("reading the file: {e}")))?
}

/// Parses the file content and reads the table (as configured), merges them
/// and builds the index.
async fn load(config: &GeofenceConfig, file: Option<Vec<u8>>) -> Result<GeofenceIndex, FenceError> {
    let from_file = match (&config.file, file) {
        (Some(path), Some(bytes)) => {
            let path = path.clone();
            blocking(move || {
                FenceSet::from_geojson_slice(&bytes)
                    .map_err(|source| FenceError::FileParse { path, source })
            })
            .await?
        }
        _ => FenceSet::default(),
    };
    let set = match &config.postgres {
        Some(pg) => {
            let from_table = read_table(pg).await?;
            from_file.merge(from_table).map_err(|e| match e {
                GeofenceError::DuplicateAcrossSources { id } => {
                    FenceError::DuplicateAcrossSources { id }
                }
                other => FenceError::Build(other.to_string()),
            })?
        }
        None => from_file,
    };
    let cell_size_m = config.cell_size();
    blocking(move || {
        GeofenceIndex::build(set, cell_size_m).map_err(|e| FenceError::Build(e.to_string()))
    })
    .await
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FenceError> + Send + 'static,
) -> Result<T, FenceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FenceError::Build(format!("task failed: {e}")))?
}

/// The connection settings of `[geofence.postgres]`: URL, TLS, and the
/// defaults every fleetpipe connection has (a connect timeout; the
/// application name `fleetpipe-geofences`). Reads the TLS files.
fn postgres(pg: &PostgresFencesConfig) -> Result<Postgres, FenceError> {
    Postgres::new("geofence.postgres", &pg.url, &pg.tls, PG_APPLICATION_NAME).map_err(|e| {
        FenceError::Postgres {
            table: pg.table.clone(),
            reason: e.to_string(),
        }
    })
}

/// Every row of the fences table, ordered by id, as a [`FenceSet`].
async fn read_table(pg: &PostgresFencesConfig) -> Result<FenceSet, FenceError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| FenceError::Postgres {
        table: pg.table.clone(),
        reason: one_line(&format!("{what}: {e}")),
    };
    let (client, connection) = postgres(pg)?
        .connect()
        .await
        .map_err(|e| fail("cannot connect", &pg_error(&e)))?;
    // Casts accept compatible column types (real, bigint, json, ...).
    let query = format!(
        "SELECT id::text, name::text, kind::text, speed_limit_kmh::float8, dwell_s::int8, \
         coalesce(arrival, false), radius_m::float8, geometry::jsonb \
         FROM {} ORDER BY id",
        pg.quoted_table()
    );
    let rows = client.query(&query, &[]).await;
    drop(client);
    let _ = connection.await;
    let rows = rows.map_err(|e| fail("cannot read the table", &pg_error(&e)))?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok(FenceRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                kind: r.try_get(2)?,
                speed_limit_kmh: r.try_get(3)?,
                dwell_s: r.try_get(4)?,
                arrival: r.try_get(5)?,
                radius_m: r.try_get(6)?,
                geometry: r.try_get(7)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(|e| fail("unexpected column", &pg_error(&e)))?;
    let table = pg.table.clone();
    blocking(move || {
        FenceSet::from_rows(rows).map_err(|e| FenceError::Postgres {
            table,
            reason: e.to_string().replace("feature #", "row #"),
        })
    })
    .await
}

/// A tokio-postgres error with the server's message (its `Display` alone
/// says only "db error"), or with its causes (its `Display` alone says only
/// "error performing TLS handshake", not why).
fn pg_error(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let mut s = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                s.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            s
        }
    }
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).collect::<Vec<_>>().join("; ")
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Registers the metrics' descriptions and their series at their current
/// value (0 in a new process).
fn describe_metrics() {
    metrics::describe_gauge!(
        "fleetpipe_geofence_fences",
        "Fences in the geofence index in use"
    );
    metrics::describe_counter!(
        "fleetpipe_geofence_reloads_total",
        "Geofence reloads that replaced the index"
    );
    metrics::describe_counter!(
        "fleetpipe_geofence_reload_errors_total",
        "Geofence reloads that failed (the previous index stayed in use)"
    );
    metrics::counter!("fleetpipe_geofence_reloads_total").increment(0);
    metrics::counter!("fleetpipe_geofence_reload_errors_total").increment(0);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ONE: &str = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
        "properties":{"id":"a","radius_m":100},"geometry":{"type":"Point","coordinates":[13.4,52.5]}}]}"#;

    #[test]
    fn check_config_reads_and_parses_the_file_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.geojson");
        let config = GeofenceConfig {
            file: Some(path.clone()),
            ..GeofenceConfig::default()
        };
        let e = check_config(&config).unwrap_err().to_string();
        assert!(e.starts_with("geofence.file = "), "{e}");
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(&path, "{\"type\": \"FeatureCollection\"").unwrap();
        let e = check_config(&config).unwrap_err().to_string();
        assert!(e.contains("invalid GeoJSON") && !e.contains('\n'), "{e}");
        std::fs::write(&path, ONE).unwrap();
        check_config(&config).unwrap();
        check_config(&GeofenceConfig::default()).unwrap();
    }

    #[test]
    fn check_config_refuses_a_bad_url_and_range() {
        let config = GeofenceConfig {
            postgres: Some(PostgresFencesConfig::new("postgresql://h:notaport/db")),
            ..GeofenceConfig::default()
        };
        let e = check_config(&config).unwrap_err().to_string();
        assert!(e.contains("geofence.postgres.url"), "{e}");
        let config = GeofenceConfig {
            cell_size_m: 0,
            ..GeofenceConfig::default()
        };
        let e = check_config(&config).unwrap_err().to_string();
        assert!(e.starts_with("geofence.cell_size_m"), "{e}");
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\nDETAIL: b\n"), "a; DETAIL: b");
    }
}
