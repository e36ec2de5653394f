//! fleetpipe's geofences: the fence model, how fences are read, and the
//! grid index that answers "which fences contain this point" exactly, at a
//! cost independent of the number of fences.
//!
//! - [`model`]: [`Fence`], [`FenceKind`], [`Shape`], [`FenceId`],
//!   [`FenceSet`], and the exact membership rule.
//! - [`geojson`]: fences from a GeoJSON `FeatureCollection`
//!   ([`FenceSet::from_geojson_str`]) or from rows of a fences table
//!   ([`FenceRow`], [`FenceSet::from_rows`]).
//! - [`index`]: the grid index ([`GeofenceIndex`]), its brute-force
//!   reference ([`brute_force`]) and the [`SharedIndex`] enrichment reads.
//! - [`GeofenceConfig`]: the `[geofence]` configuration section.
//! - With the `service` feature, `service`: the fences of a running
//!   pipeline (loaded from the file and/or the table, watched, reloaded),
//!   and `metrics`, the metrics it records. Without it the crate does no
//!   I/O beyond [`FenceSet::from_geojson_file`] and needs no async runtime
//!   (enrichment, the benchmarks and the tests use it so).
//!
//! # Limits
//!
//! * **Antimeridian-crossing fences are not supported.** A polygon whose
//!   longitude span exceeds 180°, or a circle whose covering polygon would
//!   cross ±180° longitude, is rejected at load time.
//! * **Polar fences are not supported.** Any vertex (or circle covering
//!   vertex) beyond ±85° latitude is rejected at load time.
//! * Circle radius must be in `(0, 1_000_000]` m.
//! * Coordinates of queries must be finite with latitude in `[-90, 90]` and
//!   longitude in `[-180, 180]`; anything else matches no fence.
//! * At most `2^31 - 1` fences per index.

mod config;
mod error;
pub mod geojson;
pub mod index;
#[cfg(feature = "service")]
pub mod metrics;
pub mod model;
#[cfg(feature = "service")]
pub mod service;

pub use config::{GeofenceConfig, PostgresFencesConfig};
pub use error::GeofenceError;
pub use geojson::FenceRow;
pub use index::{
    DEFAULT_CELL_SIZE_M, GeofenceIndex, IndexStats, MAX_CELL_SIZE_M, MIN_CELL_SIZE_M, SharedIndex,
    brute_force, shared,
};
pub use model::{Fence, FenceId, FenceKind, FenceSet, MAX_ABS_LAT, MAX_RADIUS_M, Shape};
