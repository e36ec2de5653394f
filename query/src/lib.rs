//! fleetpipe's read side, first slice: the query API.
//!
//! fleetpipe knows where every vehicle is and what just happened to it;
//! this crate serves that, over HTTP under `/v1`, to the people who need it
//! (a dispatcher's dashboard, a customer's tracking view), from what the
//! TimescaleDB sink stored: `vehicle_latest` for the latest state,
//! `telemetry` for tracks, `vehicle_events` for events and trips, and the
//! fences the pipeline holds (handed over by the binary). It reads the
//! database only, so any role that reaches the database can serve it; it
//! writes one table of its own, `api_share_links`.
//!
//! Everything is scoped: a configured token sees the fleet, a set of
//! vehicles or a set of fences, and a share link one vehicle within a time
//! window. What a token may not see does not exist for it (404, or left out
//! of a list), so a scope reveals nothing about the rest of the fleet.
//!
//! Modules, the I/O-free ones first:
//!
//! - [`config`]: `[api]`, [`ApiConfig`], validated naming `api.<key>`.
//! - [`auth`]: tokens (stored hashed, compared in constant time), scopes and
//!   the [`Filter`](auth::Filter) every query applies.
//! - [`params`]: query parameters, each refused 400 by name when bad, and
//!   [`VehicleState`](params::VehicleState).
//! - [`cursor`]: opaque pagination cursors.
//! - [`simplify`]: track simplification to at most N points.
//! - `db`: the SQL of `query/sql/` on a connection pool.
//! - `api`: the handlers, their answers, the OpenAPI document
//!   ([`openapi`]).
//! - [`feed`]: the live feed (`[api.feed]`): WebSocket and SSE streams of
//!   positions and events, fed by the pipeline like a sink.
//! - [`metrics`]: requests by route and status, and the feed's.
//! - [`map`]: the live fleet map page (`GET /map`), static and embedded,
//!   drawing what the API and the feed answer for the token in its URL's
//!   fragment.
//!
//! The binary serves [`QueryApi::router`] on `api.listen` with the accept
//! loop of its other HTTP listeners (connection cap, idle and header
//! timeouts, draining at shutdown).

mod api;
pub mod auth;
pub mod config;
pub mod cursor;
mod db;
mod error;
pub mod feed;
pub mod map;
pub mod metrics;
pub mod params;
pub mod simplify;

use std::sync::{Arc, OnceLock};

use fleetpipe_geofence::SharedIndex;

pub use api::openapi;
pub use config::{APPLICATION_NAME, ApiConfig, SECTION, TokenConfig};
pub use error::{ApiError, ErrorBody, QueryError};

/// The query API, ready to serve.
#[derive(Debug)]
pub struct QueryApi {
    router: axum::Router,
    feed: Option<feed::Feed>,
    state: Arc<api::AppState>,
}

impl QueryApi {
    /// Validates `config`, builds the connection pool and creates the
    /// share-link table when missing (so an unreachable database fails the
    /// start), and assembles the routes. `fences` is the index the
    /// pipeline keeps current (reloads included). With `[api.feed]`, the
    /// live feed is made too ([`QueryApi::feed`]); its streams end when
    /// `shutdown` is cancelled.
    ///
    /// # Errors
    ///
    /// [`QueryError`] naming the key, or the database step that failed.
    pub async fn start(
        config: &ApiConfig,
        fences: SharedIndex,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Self, QueryError> {
        config.validate()?;
        let postgres = config.postgres()?;
        let db = db::Db::start(&postgres, config.pool_size, &config.schema).await?;
        let feed = config
            .feed
            .clone()
            .map(|c| feed::Feed::new(c, shutdown.clone()));
        let state = Arc::new(api::AppState {
            feed: feed.clone(),
            db,
            tokens: auth::Tokens::new(&config.tokens),
            config: config.clone(),
            fences,
            openapi: OnceLock::new(),
        });
        tracing::info!(
            schema = %config.schema,
            tokens = config.tokens.len(),
            feed = feed.is_some(),
            "api: query API ready"
        );
        Ok(Self {
            router: api::router(Arc::clone(&state)),
            feed,
            state,
        })
    }

    /// Seeds the live feed's latest-position table from `vehicle_latest`
    /// (the newest positions of at most `api.feed.max_vehicles` vehicles),
    /// so that a process that starts (a read node reads its topics from
    /// their end) has the whole fleet in its snapshots; a vehicle the feed
    /// already holds newer keeps its position. Returns how many were taken
    /// (none without `[api.feed]`, or before the table exists).
    ///
    /// # Errors
    ///
    /// The database could not be reached or read.
    pub async fn seed_feed(&self) -> Result<usize, QueryError> {
        let Some(feed) = &self.feed else {
            return Ok(0);
        };
        let known = self
            .state
            .db
            .known_positions(&self.state.config.schema, feed.config().max_vehicles)
            .await?;
        Ok(feed.seed(&known))
    }

    /// The live feed (`[api.feed]`), to be fed by the pipeline
    /// ([`feed::Feed::intake`]).
    pub fn feed(&self) -> Option<feed::Feed> {
        self.feed.clone()
    }

    /// The routes, to serve on `api.listen`.
    pub fn router(self) -> axum::Router {
        self.router
    }
}
