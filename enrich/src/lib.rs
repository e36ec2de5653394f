//! fleetpipe's enrichment stage.
//!
//! Takes validated pings ([`fleetpipe_model::Accepted`]) from ingest, adds
//! derived data (the H3 cells of each position at the configured
//! resolutions, the geofences it is in) and hands
//! [`fleetpipe_model::SinkRecord`]s to the sinks, together with the
//! state-change events each vehicle's pings cause (geofence enter/exit with
//! hysteresis, arrival/departure, motion and trips, battery, diagnostics,
//! connectivity, overspeed).
//!
//! The stage has these layers:
//! - [`Enricher`], the pure core of a record: no tokio, no I/O, one ping
//!   in, one record out.
//! - the per-vehicle state machine (`vehicle.rs`) and its [`Tracker`]
//!   (ordering, dedupe, timers), pure as well: every decision whether an
//!   event happens lives there; [`StateStore`] checkpoints it.
//! - [`EnrichService`], the thin async shell: a dispatcher that shards pings
//!   by vehicle over worker tasks, so each vehicle's pings are processed in
//!   order on one core while the fleet spreads over all of them.
//!
//! Metrics: declared once, in [`metrics`].

mod config;
mod enricher;
mod error;
mod fence_lookup;
pub mod metrics;
pub mod partitioned;
mod service;
mod store;
mod tracker;
mod vehicle;

pub use config::{
    ArrivalRules, BatteryRules, ConnectivityRules, DiagnosticsRules, EnrichConfig, GeofenceRules,
    MotionRules, OverspeedRules,
};
pub use enricher::Enricher;
pub use error::EnrichError;
pub use service::{EnrichHandle, EnrichService, StageSetup};
pub use store::{STATE_APPLICATION_NAME, STATE_FILE, StateStore, StoreError};
pub use tracker::Tracker;
