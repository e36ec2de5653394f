//! Why fences could not be parsed or indexed: [`GeofenceError`].

use std::path::PathBuf;

/// Errors raised while loading fences or building the index.
#[derive(Debug, thiserror::Error)]
pub enum GeofenceError {
    /// The input is not valid JSON.
    #[error("invalid GeoJSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The fence file could not be read.
    #[error("cannot read fence file {}: {source}", path.display())]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The root is not a GeoJSON `FeatureCollection`.
    #[error("GeoJSON root: {0}")]
    NotFeatureCollection(String),
    /// One feature is invalid.
    #[error("feature #{index}{}: {problem}", fmt_id(.id.as_deref()))]
    Feature {
        /// Position of the feature in `features`.
        index: usize,
        /// The feature's id, when it could be read.
        id: Option<String>,
        /// What is wrong.
        problem: String,
    },
    /// Two features share an id.
    #[error("duplicate fence id {id:?} (features #{first} and #{second})")]
    DuplicateId {
        /// The repeated id.
        id: String,
        /// Index of the first feature with this id.
        first: usize,
        /// Index of the second feature with this id.
        second: usize,
    },
    /// More fences than an index can hold.
    #[error("too many fences: {0} (max {max})", max = i32::MAX)]
    TooManyFences(usize),
    /// Two fence sets being merged ([`crate::FenceSet::merge`]) share an id.
    #[error("duplicate fence id {id:?}: defined in more than one source")]
    DuplicateAcrossSources {
        /// The repeated id.
        id: String,
    },
    /// A configuration value is out of range.
    #[error("{key}: {reason}")]
    Config {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// `geofence.postgres.tls` is invalid (the message names the key).
    #[error(transparent)]
    PostgresTls(#[from] fleetpipe_postgres::PostgresError),
}

fn fmt_id(id: Option<&str>) -> String {
    id.map(|i| format!(" (id {i:?})")).unwrap_or_default()
}
