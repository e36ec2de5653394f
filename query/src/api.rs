//! The HTTP endpoints under `/v1`, their answers' types, and the OpenAPI
//! document generated from both.
//!
//! Each handler authenticates first (so a caller without a valid token
//! learns nothing, not even which parameters are wrong), then parses its
//! parameters ([`Params`]: unknown, repeated or malformed ones are 400
//! naming the parameter), then asks the database with the caller's
//! [`Filter`] applied in the query itself. Routes are registered only
//! through `utoipa_axum::routes!`, which takes the path from the handler's
//! `#[utoipa::path]`: a route cannot be served without being in the
//! document.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleetpipe_geofence::{FenceKind, Shape, SharedIndex};
use fleetpipe_model::EventType;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{
    Access, Filter, SHARE_TOKEN_PREFIX, Scope, ShareGrant, Tokens, bearer, beginning, end_of_time,
    new_share_id, new_share_token, token_hash,
};
use crate::config::ApiConfig;
use crate::cursor::{self, Key};
use crate::db::{Db, EventRow, EventsQuery, LatestRow, NewShare, StateRule, VehiclesQuery};
use crate::error::{ApiError, ErrorBody};
use crate::params::{self, BBox, Params, VehicleState};
use crate::simplify::simplify;

/// How far back a track reaches when the request gives no `from`.
const DEFAULT_TRACK_SPAN: Duration = Duration::from_secs(3600);

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) db: Db,
    pub(crate) tokens: Tokens,
    pub(crate) config: ApiConfig,
    pub(crate) fences: SharedIndex,
    /// The OpenAPI document as served (set once the router is built).
    pub(crate) openapi: OnceLock<String>,
    /// The live feed (`[api.feed]`), when configured.
    pub(crate) feed: Option<crate::feed::Feed>,
}

type AppStateRef = Arc<AppState>;

/// The OpenAPI document's frame; the paths come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fleetpipe query API",
        version = "1",
        description = "The latest state of vehicles, their tracks, events and trips, and the fences with their occupancy, read from what fleetpipe stored. Every request needs `Authorization: Bearer <token>`: a configured token (api.tokens) or a share link's token. See docs/api.md."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// Declares the bearer scheme every operation requires.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, each registered from its handler's annotation.
pub(crate) fn routes() -> OpenApiRouter<AppStateRef> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_vehicles))
        .routes(routes!(get_vehicle))
        .routes(routes!(get_track))
        .routes(routes!(list_events))
        .routes(routes!(list_trips))
        .routes(routes!(list_fences))
        .routes(routes!(create_share_link))
        .routes(routes!(revoke_share_link))
        .routes(routes!(openapi_json))
        .routes(routes!(crate::feed::http::feed_ws))
        .routes(routes!(crate::feed::http::feed_sse))
}

/// The routes and the document, completed with what the annotations
/// cannot say: the event types `type` takes, from the model's list.
fn split() -> (axum::Router<AppStateRef>, utoipa::openapi::OpenApi) {
    let (router, mut document) = routes().split_for_parts();
    let types = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(EventType::ALL.iter().map(|e| e.as_str())))
        .build();
    if let Some(get) = document
        .paths
        .paths
        .get_mut("/v1/events")
        .and_then(|item| item.get.as_mut())
    {
        for parameter in get.parameters.iter_mut().flatten() {
            if let utoipa::openapi::RefOr::T(parameter) = parameter
                && parameter.name == "type"
            {
                parameter.schema = Some(types.clone().into());
            }
        }
    }
    (router, document)
}

/// The router, with the state, the request metrics and a JSON 404 for
/// everything else. The map page's routes are not the API's (no token, not
/// in the document) but share its listener and metrics.
pub(crate) fn router(state: AppStateRef) -> axum::Router {
    let (router, document) = split();
    let _ = state.openapi.set(document.to_json().unwrap_or_default());
    router
        .merge(crate::map::routes(&state.config))
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn(record))
        .with_state(state)
}

/// The OpenAPI document, without a database.
pub fn openapi() -> utoipa::openapi::OpenApi {
    split().1
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such endpoint (see /v1/openapi.json)".to_owned())
}

/// Counts each answer by route template and status.
async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(request).await;
    crate::metrics::request(
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

impl FromRequestParts<AppStateRef> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppStateRef,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized("send Authorization: Bearer <token>"));
        };
        let Some(token) = value.to_str().ok().and_then(bearer) else {
            return Err(ApiError::Unauthorized(
                "the Authorization header is not Bearer <token>",
            ));
        };
        state.authenticate(token).await
    }
}

impl AppState {
    /// The caller `token` is: a configured token, or a live share link.
    ///
    /// # Errors
    ///
    /// [`ApiError::Unauthorized`], or the database's error.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Access, ApiError> {
        if let Some(access) = self.tokens.find(token) {
            return Ok(access);
        }
        if token.starts_with(SHARE_TOKEN_PREFIX) {
            let now = now();
            if let Some(link) = self.db.share_lookup(&token_hash(token), now).await? {
                return Ok(Access::Share(ShareGrant {
                    id: link.id,
                    vehicle_id: link.vehicle_id,
                    from: link.created_at,
                    to: link.expires_at,
                }));
            }
        }
        Err(ApiError::Unauthorized(
            "unknown token, or a share link that expired or was revoked",
        ))
    }
}

/// The parameters of a request, or 400.
fn query(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allowed: &[&str],
) -> Result<Params, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    Params::new(pairs, allowed)
}

/// A path segment, or 400.
fn segment(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad("path", e.body_text()))?;
    Ok(id)
}

/// Now, to the microsecond: PostgreSQL's resolution, so a time the API
/// answers with is the time it stores and compares.
pub(crate) fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

/// RFC 3339, UTC.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// `t` plus `d`, saturating at the end of time.
fn plus(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    t.checked_add(time::Duration::try_from(d).unwrap_or(time::Duration::MAX))
        .unwrap_or_else(end_of_time)
        .min(end_of_time())
}

/// `t` minus `d`, saturating at the beginning.
fn minus(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    t.checked_sub(time::Duration::try_from(d).unwrap_or(time::Duration::MAX))
        .unwrap_or_else(beginning)
        .max(beginning())
}

/// Not found, as for a vehicle the caller may not see.
fn no_vehicle(id: &str) -> ApiError {
    ApiError::NotFound(format!("no vehicle {id:?}"))
}

impl AppState {
    fn state_rule(&self, now: OffsetDateTime) -> StateRule {
        StateRule {
            cutoff: minus(now, self.config.offline_after),
            moving_kmh: self.config.moving_speed_kmh,
        }
    }

    /// The vehicle `id` as the caller may see it, or 404.
    async fn visible_vehicle(
        &self,
        access: &Access,
        filter: &Filter,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<LatestRow, ApiError> {
        if !access.may_name_vehicle(id) {
            return Err(no_vehicle(id));
        }
        self.db
            .vehicle(id, self.state_rule(now), &filter.vehicles, &filter.fences)
            .await?
            .ok_or_else(|| no_vehicle(id))
    }
}

// ---- answers ----------------------------------------------------------------

/// A vehicle's latest state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Vehicle {
    /// The vehicle.
    pub vehicle_id: String,
    /// Device time of its latest ping, RFC 3339.
    #[schema(format = DateTime)]
    pub ts: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Speed, km/h, when reported.
    pub speed_kmh: Option<f64>,
    /// Heading, degrees, when reported.
    pub heading_deg: Option<f64>,
    /// State of charge, %, when reported.
    pub soc_pct: Option<f64>,
    /// Whether it is charging, when reported.
    pub charging: Option<bool>,
    /// Ignition, when reported.
    pub ignition: Option<bool>,
    /// The derived state (docs/api.md, "State").
    pub state: VehicleState,
    /// The fences its latest ping is inside (null for a ping stored before
    /// fleetpipe recorded them).
    pub fences: Option<Vec<String>>,
}

impl Vehicle {
    fn new(row: LatestRow) -> Result<Self, ApiError> {
        let state = VehicleState::parse(&row.state)
            .ok_or_else(|| ApiError::Internal(format!("unknown state {:?}", row.state)))?;
        Ok(Self {
            vehicle_id: row.vehicle_id,
            ts: rfc3339(row.ts),
            lat: row.lat,
            lon: row.lon,
            speed_kmh: row.speed_kmh,
            heading_deg: row.heading_deg,
            soc_pct: row.soc_pct,
            charging: row.charging,
            ignition: row.ignition,
            state,
            fences: row.fences,
        })
    }
}

/// A page of vehicles.
#[derive(Debug, Serialize, ToSchema)]
pub struct VehiclePage {
    /// In `vehicle_id` order.
    pub vehicles: Vec<Vehicle>,
    /// Pass as `cursor` (with the same other parameters) for the next page;
    /// null on the last one.
    pub next_cursor: Option<String>,
}

/// Where a vehicle is, from its latest ping.
#[derive(Debug, Serialize, ToSchema)]
pub struct Position {
    /// Device time, RFC 3339.
    #[schema(format = DateTime)]
    pub ts: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Speed, km/h, when reported.
    pub speed_kmh: Option<f64>,
    /// Heading, degrees, when reported.
    pub heading_deg: Option<f64>,
    /// Ignition, when reported.
    pub ignition: Option<bool>,
}

/// Battery, from the latest ping.
#[derive(Debug, Serialize, ToSchema)]
pub struct Battery {
    /// State of charge, %, when reported.
    pub soc_pct: Option<f64>,
    /// Whether it is charging, when reported.
    pub charging: Option<bool>,
}

/// An open diagnostic trouble code.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dtc {
    /// The code, as the vehicle reports it.
    pub code: String,
    /// When it became active (its `diagnostics.dtc_set` event), RFC 3339.
    #[schema(format = DateTime)]
    pub since: String,
}

/// An event (docs/output-format.md §6).
#[derive(Debug, Serialize, ToSchema)]
pub struct Event {
    /// Its deterministic id.
    pub id: String,
    /// The vehicle.
    pub vehicle_id: String,
    /// Its type, e.g. `geofence.entered`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Device time, RFC 3339.
    #[schema(format = DateTime)]
    pub time: String,
    /// Its type's data.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Self {
            id: row.id,
            vehicle_id: row.vehicle_id,
            event_type: row.event_type,
            time: rfc3339(row.time),
            data: row.data,
        }
    }
}

/// One vehicle.
#[derive(Debug, Serialize, ToSchema)]
pub struct VehicleDetail {
    /// The vehicle.
    pub vehicle_id: String,
    /// Where it is; null when its latest ping is outside what the caller
    /// may see (a share link's window).
    pub position: Option<Position>,
    /// Its derived state; null with `position`.
    pub state: Option<VehicleState>,
    /// The fences it is in; null with `position`, or for a ping stored
    /// before fleetpipe recorded them.
    pub fences: Option<Vec<String>>,
    /// Its battery; null with `position`.
    pub battery: Option<Battery>,
    /// The diagnostic codes open now (set, not cleared), by code.
    pub open_dtcs: Vec<Dtc>,
    /// Its newest event the caller may see.
    pub last_event: Option<Event>,
}

/// A GeoJSON geometry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Geometry {
    /// `Point`, `LineString`, `Polygon` or `MultiPolygon`.
    #[serde(rename = "type")]
    pub geometry_type: &'static str,
    /// Positions as `[lon, lat]`, nested as the type says.
    pub coordinates: serde_json::Value,
}

/// What a track's feature says besides its line.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackProperties {
    /// The vehicle.
    pub vehicle_id: String,
    /// Start of the range read, RFC 3339 (raised to what the caller may see).
    #[schema(format = DateTime)]
    pub from: String,
    /// End of the range read (exclusive), RFC 3339.
    #[schema(format = DateTime)]
    pub to: String,
    /// Pings in the range.
    pub points_read: usize,
    /// Device time of each kept point, in the geometry's order.
    pub times: Vec<String>,
    /// Speed of each kept point, km/h, when reported.
    pub speeds_kmh: Vec<Option<f64>>,
}

/// A track: a GeoJSON Feature.
#[derive(Debug, Serialize, ToSchema)]
pub struct Track {
    /// `Feature`.
    #[serde(rename = "type")]
    pub feature_type: &'static str,
    /// A `LineString` (two points or more), a `Point` (one), or null (none).
    pub geometry: Option<Geometry>,
    /// Times and speeds of the kept points.
    pub properties: TrackProperties,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// In `(time, id)` order.
    pub events: Vec<Event>,
    /// Pass as `cursor` (with the same other parameters) for the next page;
    /// null on the last one.
    pub next_cursor: Option<String>,
}

/// A trip: a `vehicle.motion_stopped` summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct Trip {
    /// The event's id.
    pub event_id: String,
    /// The vehicle.
    pub vehicle_id: String,
    /// When it started, RFC 3339.
    pub started_at: Option<String>,
    /// When it came to rest, RFC 3339.
    pub stopped_at: Option<String>,
    /// Seconds.
    pub duration_s: Option<f64>,
    /// Metres, standstill jitter excluded.
    pub distance_m: Option<f64>,
    /// Highest speed, km/h.
    pub max_speed_kmh: Option<f64>,
    /// Where it came to rest.
    pub lat: Option<f64>,
    /// Where it came to rest.
    pub lon: Option<f64>,
    /// The event's time (when the stop was recognised), RFC 3339.
    #[schema(format = DateTime)]
    pub time: String,
}

impl From<EventRow> for Trip {
    fn from(row: EventRow) -> Self {
        let text = |k: &str| row.data.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let number = |k: &str| row.data.get(k).and_then(serde_json::Value::as_f64);
        Self {
            started_at: text("started_at"),
            stopped_at: text("stopped_at"),
            duration_s: number("duration_s"),
            distance_m: number("distance_m"),
            max_speed_kmh: number("max_speed_kmh"),
            lat: number("lat"),
            lon: number("lon"),
            time: rfc3339(row.time),
            event_id: row.id,
            vehicle_id: row.vehicle_id,
        }
    }
}

/// A page of trips.
#[derive(Debug, Serialize, ToSchema)]
pub struct TripPage {
    /// In `(time, id)` order of their events.
    pub trips: Vec<Trip>,
    /// Pass as `cursor` (with the same other parameters) for the next page;
    /// null on the last one.
    pub next_cursor: Option<String>,
}

/// A fence's properties.
#[derive(Debug, Serialize, ToSchema)]
pub struct FenceProperties {
    /// Display name.
    pub name: String,
    /// `depot`, `customer`, `charging_station`, `restricted`, `zone`, or
    /// another string.
    pub kind: String,
    /// For a circle (a `Point` geometry): its radius, metres.
    pub radius_m: Option<f64>,
    /// Speed limit inside, km/h.
    pub speed_limit_kmh: Option<f64>,
    /// Dwell threshold, seconds.
    pub dwell_s: Option<u32>,
    /// Whether entering counts as an arrival.
    pub arrival: bool,
    /// Vehicles whose latest ping is inside it (of those the caller may
    /// see).
    pub occupancy: i64,
}

/// A fence: a GeoJSON Feature.
#[derive(Debug, Serialize, ToSchema)]
pub struct FenceFeature {
    /// `Feature`.
    #[serde(rename = "type")]
    pub feature_type: &'static str,
    /// The fence's id.
    pub id: String,
    /// Its geometry (`Point` for a circle).
    pub geometry: Geometry,
    /// Its properties and occupancy.
    pub properties: FenceProperties,
}

/// The fences: a GeoJSON FeatureCollection.
#[derive(Debug, Serialize, ToSchema)]
pub struct FenceCollection {
    /// `FeatureCollection`.
    #[serde(rename = "type")]
    pub collection_type: &'static str,
    /// One per fence, in the order they were loaded.
    pub features: Vec<FenceFeature>,
}

/// A share link to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShareLink {
    /// The one vehicle it may read.
    #[schema(min_length = 1, example = "van-1")]
    pub vehicle_id: String,
    /// How long it lives, e.g. `"2h"`, at most `api.share_max_lifetime`.
    #[schema(
        pattern = r"^[1-9][0-9]{0,5}(s|m|h|d)( [0-9]{1,6}(s|m|h|d))*$",
        example = "2h"
    )]
    pub expires_in: String,
}

/// A share link, as created.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShareLink {
    /// Its id (to revoke it).
    pub id: String,
    /// Its token: shown once, stored only as a hash.
    pub token: String,
    /// Its vehicle.
    pub vehicle_id: String,
    /// The start of the history it may read, RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it stops working, RFC 3339.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

// ---- handlers ---------------------------------------------------------------

/// The latest state of vehicles, filtered, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/vehicles",
    tag = "vehicles",
    params(
        ("bbox" = Option<String>, Query, pattern = r"^-?[0-9]{1,3}(\.[0-9]{1,6})?,-?[0-9]{1,2}(\.[0-9]{1,6})?,-?[0-9]{1,3}(\.[0-9]{1,6})?,-?[0-9]{1,2}(\.[0-9]{1,6})?$", example = "13.40,52.50,13.41,52.51", description = "minLon,minLat,maxLon,maxLat: vehicles whose latest position is inside"),
        ("fence" = Option<String>, Query, min_length = 1, example = "depot", description = "A fence id: vehicles whose latest ping is inside it"),
        ("state" = Option<VehicleState>, Query, description = "moving, parked, charging or offline"),
        ("stale_after" = Option<String>, Query, pattern = r"^[1-9][0-9]{0,5}(s|m|h|d)( [0-9]{1,6}(s|m|h|d))*$", example = "10m", description = "A duration (e.g. 10m): vehicles whose latest ping is older than that"),
        ("limit" = Option<usize>, Query, minimum = 1, description = "Page size, 1 to api.max_limit (default api.default_limit)"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page", body = VehiclePage),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
        (status = 403, description = "A share link (it reads only its vehicle)", body = ErrorBody),
    )
)]
async fn list_vehicles(
    access: Access,
    State(state): State<AppStateRef>,
    raw: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<VehiclePage>, ApiError> {
    access.may_list_fleet()?;
    let p = query(
        raw,
        &["bbox", "fence", "state", "stale_after", "limit", "cursor"],
    )?;
    let bbox = p.get("bbox").map(BBox::parse).transpose()?;
    let fence = p.text("fence")?;
    let wanted = p
        .get("state")
        .map(|s| {
            VehicleState::parse(s).ok_or_else(|| {
                ApiError::bad(
                    "state",
                    format!("{s:?} is not moving, parked, charging or offline"),
                )
            })
        })
        .transpose()?;
    let stale = p.duration("stale_after")?;
    let limit = p.count("limit", state.config.default_limit, state.config.max_limit)?;
    let filters = cursor::fingerprint(
        ["bbox", "fence", "state", "stale_after"]
            .into_iter()
            .flat_map(|k| [k, p.get(k).unwrap_or("\u{0}")]),
    );
    let after = match p.get("cursor") {
        None => String::new(),
        Some(c) => match cursor::decode(c, "vehicles", filters) {
            Ok(Key::Vehicle(id)) => id,
            Ok(Key::Event { .. }) => return Err(ApiError::bad("cursor", "is damaged")),
            Err(why) => return Err(ApiError::bad("cursor", why)),
        },
    };
    let now = now();
    let filter = access.filter();
    let q = VehiclesQuery {
        state_rule: state.state_rule(now),
        after,
        scope_vehicles: filter.vehicles,
        scope_fences: filter.fences,
        bbox: bbox.map(|b| [b.min_lon, b.min_lat, b.max_lon, b.max_lat]),
        fence,
        stale_before: stale.map(|d| minus(now, d)),
        state: wanted.map(|s| s.as_str().to_owned()),
        limit: i64::try_from(limit + 1).unwrap_or(i64::MAX),
    };
    let mut rows = state.db.vehicles(&q).await?;
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        let last = rows
            .last()
            .map(|r| r.vehicle_id.clone())
            .unwrap_or_default();
        cursor::encode("vehicles", filters, &Key::Vehicle(last))
    });
    let vehicles = rows
        .into_iter()
        .map(Vehicle::new)
        .collect::<Result<_, _>>()?;
    Ok(Json(VehiclePage {
        vehicles,
        next_cursor,
    }))
}

/// One vehicle: position, state, fences, battery, open codes, last event.
#[utoipa::path(
    get,
    path = "/v1/vehicles/{id}",
    tag = "vehicles",
    params(("id" = String, Path, example = "van-1", description = "The vehicle")),
    responses(
        (status = 200, description = "The vehicle", body = VehicleDetail),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
        (status = 404, description = "No such vehicle, or one the token may not see", body = ErrorBody),
    )
)]
async fn get_vehicle(
    access: Access,
    State(state): State<AppStateRef>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<VehicleDetail>, ApiError> {
    let id = segment(path)?;
    let now = now();
    let filter = access.filter();
    let row = state.visible_vehicle(&access, &filter, &id, now).await?;
    let open_dtcs = state.db.open_dtcs(&id, filter.from, filter.to).await?;
    let last_event = state
        .db
        .last_event(&id, filter.from, filter.to, &filter.fences)
        .await?;
    // A share link sees the latest ping only if it is within its window.
    let visible = row.ts >= filter.from && row.ts <= filter.to;
    let (position, vehicle_state, fences, battery) = if visible {
        let battery = Battery {
            soc_pct: row.soc_pct,
            charging: row.charging,
        };
        let position = Position {
            ts: rfc3339(row.ts),
            lat: row.lat,
            lon: row.lon,
            speed_kmh: row.speed_kmh,
            heading_deg: row.heading_deg,
            ignition: row.ignition,
        };
        let fences = row.fences.clone();
        let vehicle = Vehicle::new(row)?;
        (Some(position), Some(vehicle.state), fences, Some(battery))
    } else {
        (None, None, None, None)
    };
    Ok(Json(VehicleDetail {
        vehicle_id: id,
        position,
        state: vehicle_state,
        fences,
        battery,
        open_dtcs: open_dtcs
            .into_iter()
            .map(|(code, since)| Dtc {
                code,
                since: rfc3339(since),
            })
            .collect(),
        last_event: last_event.map(Event::from),
    }))
}

/// A vehicle's track as a GeoJSON Feature, simplified to `max_points`.
#[utoipa::path(
    get,
    path = "/v1/vehicles/{id}/track",
    tag = "vehicles",
    params(
        ("id" = String, Path, example = "van-1", description = "The vehicle"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339; default: an hour before `to`"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive; default: now"),
        ("max_points" = Option<usize>, Query, minimum = 2, description = "At most this many points, 2 to api.max_track_points (the default)"),
    ),
    responses(
        (status = 200, description = "The track", body = Track),
        (status = 400, description = "A bad parameter, or a range holding more than api.max_track_rows pings", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
        (status = 404, description = "No such vehicle, or one the token may not see", body = ErrorBody),
    )
)]
async fn get_track(
    access: Access,
    State(state): State<AppStateRef>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Track>, ApiError> {
    let id = segment(path)?;
    let p = query(raw, &["from", "to", "max_points"])?;
    let now = now();
    let to = p.time("to")?.unwrap_or(now);
    let from = p
        .time("from")?
        .unwrap_or_else(|| minus(to, DEFAULT_TRACK_SPAN));
    let (from, to) = params::range(from, to)?;
    let max = state.config.max_track_points;
    let max_points = p.count("max_points", max, max)?;
    if max_points < 2 {
        return Err(ApiError::bad("max_points", "must be at least 2"));
    }
    let filter = access.filter();
    state.visible_vehicle(&access, &filter, &id, now).await?;
    let (from, to) = (from.max(filter.from), to.min(filter.to));
    let rows = if from < to {
        let limit = state.config.max_track_rows;
        let rows = state
            .db
            .track(
                &id,
                from,
                to,
                &filter.fences,
                i64::try_from(limit + 1).unwrap_or(i64::MAX),
            )
            .await?;
        if rows.len() > limit {
            return Err(ApiError::bad(
                "from",
                format!(
                    "the range holds more than {limit} pings (api.max_track_rows): narrow from/to"
                ),
            ));
        }
        rows
    } else {
        Vec::new()
    };
    let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.lon, r.lat)).collect();
    // A day at 1 Hz is ~0.4 s of CPU (BENCHMARKS.md, "Query API latency"):
    // off the runtime's workers, so other requests and the feed go on.
    let (points, kept) = tokio::task::spawn_blocking(move || {
        let kept = simplify(&points, max_points);
        (points, kept)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("track simplification: {e}")))?;
    let coordinates: Vec<[f64; 2]> = kept.iter().map(|&i| [points[i].0, points[i].1]).collect();
    let geometry = match coordinates.len() {
        0 => None,
        1 => Some(Geometry {
            geometry_type: "Point",
            coordinates: serde_json::json!(coordinates[0]),
        }),
        _ => Some(Geometry {
            geometry_type: "LineString",
            coordinates: serde_json::json!(coordinates),
        }),
    };
    Ok(Json(Track {
        feature_type: "Feature",
        geometry,
        properties: TrackProperties {
            vehicle_id: id,
            from: rfc3339(from),
            to: rfc3339(to.max(from)),
            points_read: rows.len(),
            times: kept.iter().map(|&i| rfc3339(rows[i].ts)).collect(),
            speeds_kmh: kept.iter().map(|&i| rows[i].speed_kmh).collect(),
        },
    }))
}

/// The common part of `/v1/events` and `/v1/trips`: one page of events.
async fn events_page(
    access: &Access,
    state: &AppState,
    p: &Params,
    list: &str,
    event_type: Option<String>,
) -> Result<(Vec<EventRow>, Option<String>), ApiError> {
    let vehicle_id = p.text("vehicle_id")?;
    let fence = p.text("fence")?;
    let from = p.time("from")?;
    let to = p.time("to")?;
    if let (Some(from), Some(to)) = (from, to) {
        params::range(from, to)?;
    }
    let limit = p.count("limit", state.config.default_limit, state.config.max_limit)?;
    let filters = cursor::fingerprint(
        ["vehicle_id", "type", "fence", "from", "to"]
            .into_iter()
            .flat_map(|k| [k, p.get(k).unwrap_or("\u{0}")]),
    );
    let after = match p.get("cursor") {
        None => (beginning(), String::new()),
        Some(c) => match cursor::decode(c, list, filters) {
            Ok(Key::Event { time, id }) => (time, id),
            Ok(Key::Vehicle(_)) => return Err(ApiError::bad("cursor", "is damaged")),
            Err(why) => return Err(ApiError::bad("cursor", why)),
        },
    };
    let filter = access.filter();
    let q = EventsQuery {
        vehicle_id,
        event_type,
        fence,
        from: from.unwrap_or_else(beginning).max(filter.from).max(after.0),
        to: to.unwrap_or_else(end_of_time).min(filter.to),
        after,
        scope_vehicles: filter.vehicles,
        scope_fences: filter.fences,
        limit: i64::try_from(limit + 1).unwrap_or(i64::MAX),
    };
    let mut rows = if q.from < q.to {
        state.db.events(&q).await?
    } else {
        Vec::new()
    };
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        let key = rows
            .last()
            .map(|r| Key::Event {
                time: r.time,
                id: r.id.clone(),
            })
            .unwrap_or(Key::Vehicle(String::new()));
        cursor::encode(list, filters, &key)
    });
    Ok((rows, next))
}

/// Events in `(time, id)` order, filtered, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(
        ("vehicle_id" = Option<String>, Query, min_length = 1, example = "van-1", description = "Only this vehicle's"),
        ("type" = Option<String>, Query, example = "geofence.entered", description = "Only this type, e.g. geofence.entered"),
        ("fence" = Option<String>, Query, min_length = 1, example = "depot", description = "Only events whose data names this fence_id"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("limit" = Option<usize>, Query, minimum = 1, description = "Page size, 1 to api.max_limit (default api.default_limit)"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page", body = EventPage),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
    )
)]
async fn list_events(
    access: Access,
    State(state): State<AppStateRef>,
    raw: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let p = query(
        raw,
        &[
            "vehicle_id",
            "type",
            "fence",
            "from",
            "to",
            "limit",
            "cursor",
        ],
    )?;
    let event_type = p
        .get("type")
        .map(|t| {
            EventType::ALL
                .iter()
                .find(|e| e.as_str() == t)
                .map(|e| e.as_str().to_owned())
                .ok_or_else(|| {
                    ApiError::bad(
                        "type",
                        format!("{t:?} is not an event type (docs/output-format.md §6)"),
                    )
                })
        })
        .transpose()?;
    let (rows, next_cursor) = events_page(&access, &state, &p, "events", event_type).await?;
    Ok(Json(EventPage {
        events: rows.into_iter().map(Event::from).collect(),
        next_cursor,
    }))
}

/// Trips (the `vehicle.motion_stopped` summaries), a page at a time.
#[utoipa::path(
    get,
    path = "/v1/trips",
    tag = "events",
    params(
        ("vehicle_id" = Option<String>, Query, min_length = 1, example = "van-1", description = "Only this vehicle's"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339, inclusive (of the summary's time)"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339, exclusive"),
        ("limit" = Option<usize>, Query, minimum = 1, description = "Page size, 1 to api.max_limit (default api.default_limit)"),
        ("cursor" = Option<String>, Query, min_length = 1, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "A page", body = TripPage),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
    )
)]
async fn list_trips(
    access: Access,
    State(state): State<AppStateRef>,
    raw: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<TripPage>, ApiError> {
    let p = query(raw, &["vehicle_id", "from", "to", "limit", "cursor"])?;
    let stopped = Some(EventType::MotionStopped.as_str().to_owned());
    let (rows, next_cursor) = events_page(&access, &state, &p, "trips", stopped).await?;
    Ok(Json(TripPage {
        trips: rows.into_iter().map(Trip::from).collect(),
        next_cursor,
    }))
}

/// The name of a fence kind.
fn kind_name(kind: &FenceKind) -> String {
    match kind {
        FenceKind::Depot => "depot",
        FenceKind::Customer => "customer",
        FenceKind::ChargingStation => "charging_station",
        FenceKind::Restricted => "restricted",
        FenceKind::Zone => "zone",
        FenceKind::Other(other) => other,
    }
    .to_owned()
}

/// A fence's shape as GeoJSON (a circle as its centre `Point`).
fn shape_geometry(shape: &Shape) -> (Geometry, Option<f64>) {
    let ring =
        |r: &geo::LineString<f64>| -> Vec<[f64; 2]> { r.coords().map(|c| [c.x, c.y]).collect() };
    match shape {
        Shape::Circle { center, radius_m } => (
            Geometry {
                geometry_type: "Point",
                coordinates: serde_json::json!([center.x(), center.y()]),
            },
            Some(*radius_m),
        ),
        Shape::Polygon(multi) => {
            let polygons: Vec<Vec<Vec<[f64; 2]>>> = multi
                .0
                .iter()
                .map(|p| {
                    std::iter::once(ring(p.exterior()))
                        .chain(p.interiors().iter().map(ring))
                        .collect()
                })
                .collect();
            let geometry = if polygons.len() == 1 {
                Geometry {
                    geometry_type: "Polygon",
                    coordinates: serde_json::json!(polygons[0]),
                }
            } else {
                Geometry {
                    geometry_type: "MultiPolygon",
                    coordinates: serde_json::json!(polygons),
                }
            };
            (geometry, None)
        }
    }
}

/// The fences in use, with how many vehicles are inside each now.
#[utoipa::path(
    get,
    path = "/v1/fences",
    tag = "fences",
    responses(
        (status = 200, description = "The fences", body = FenceCollection),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
        (status = 403, description = "A share link (it reads only its vehicle)", body = ErrorBody),
    )
)]
async fn list_fences(
    access: Access,
    State(state): State<AppStateRef>,
) -> Result<Json<FenceCollection>, ApiError> {
    access.may_list_fleet()?;
    let filter = access.filter();
    let occupancy = state.db.occupancy(&filter.vehicles).await?;
    let index = state.fences.load();
    let features = index
        .fences()
        .iter()
        .filter(|f| {
            filter
                .fences
                .as_ref()
                .is_none_or(|scope| scope.contains(&f.id))
        })
        .map(|f| {
            let (geometry, radius_m) = shape_geometry(f.shape());
            FenceFeature {
                feature_type: "Feature",
                id: f.id.clone(),
                geometry,
                properties: FenceProperties {
                    name: f.name.clone(),
                    kind: kind_name(&f.kind),
                    radius_m,
                    speed_limit_kmh: f.speed_limit_kmh,
                    dwell_s: f.dwell_s,
                    arrival: f.arrival,
                    occupancy: occupancy.get(&f.id).copied().unwrap_or(0),
                },
            }
        })
        .collect();
    Ok(Json(FenceCollection {
        collection_type: "FeatureCollection",
        features,
    }))
}

/// Creates a share link: a token that reads one vehicle from now until it
/// expires.
#[utoipa::path(
    post,
    path = "/v1/share-links",
    tag = "share links",
    request_body = CreateShareLink,
    responses(
        (status = 201, description = "Created; the token is shown only now", body = ShareLink),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
        (status = 403, description = "A share link cannot create share links", body = ErrorBody),
        (status = 404, description = "No such vehicle, or one the token may not see", body = ErrorBody),
    )
)]
async fn create_share_link(
    access: Access,
    State(state): State<AppStateRef>,
    body: Result<Json<CreateShareLink>, JsonRejection>,
) -> Result<(StatusCode, Json<ShareLink>), ApiError> {
    let creator = access.share_creator()?.to_owned();
    let Json(body) = body.map_err(|e| ApiError::bad("body", e.body_text()))?;
    if body.vehicle_id.is_empty() {
        return Err(ApiError::bad("vehicle_id", "must not be empty"));
    }
    let expires_in = params::duration("expires_in", &body.expires_in)?;
    let max = state.config.share_max_lifetime;
    if expires_in > max {
        return Err(ApiError::bad(
            "expires_in",
            format!(
                "is longer than api.share_max_lifetime ({})",
                humantime::format_duration(max)
            ),
        ));
    }
    let now = now();
    let filter = access.filter();
    state
        .visible_vehicle(&access, &filter, &body.vehicle_id, now)
        .await?;
    let token = new_share_token();
    let id = new_share_id();
    let expires_at = plus(now, expires_in);
    let hash = token_hash(&token);
    state
        .db
        .share_insert(&NewShare {
            id: &id,
            token_sha256: &hash,
            vehicle_id: &body.vehicle_id,
            created_by: &creator,
            created_at: now,
            expires_at,
        })
        .await?;
    tracing::info!(share_link = %id, vehicle_id = %body.vehicle_id, created_by = %creator, expires_at = %rfc3339(expires_at), "api: share link created");
    Ok((
        StatusCode::CREATED,
        Json(ShareLink {
            id,
            token,
            vehicle_id: body.vehicle_id,
            created_at: rfc3339(now),
            expires_at: rfc3339(expires_at),
        }),
    ))
}

/// Revokes a share link: its token answers 401 from now on.
#[utoipa::path(
    delete,
    path = "/v1/share-links/{id}",
    tag = "share links",
    params(("id" = String, Path, description = "The share link's id")),
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
        (status = 403, description = "A share link cannot revoke share links", body = ErrorBody),
        (status = 404, description = "No such share link, or one the token may not revoke", body = ErrorBody),
    )
)]
async fn revoke_share_link(
    access: Access,
    State(state): State<AppStateRef>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let creator = access.share_creator()?.to_owned();
    let id = segment(path)?;
    let missing = || ApiError::NotFound(format!("no share link {id:?}"));
    let (vehicle_id, created_by) = state.db.share_owner(&id).await?.ok_or_else(missing)?;
    // Its creator may revoke it, and so may any token that sees its vehicle.
    if created_by != creator {
        let now = now();
        let filter = access.filter();
        let sees = match &access {
            Access::Token {
                scope: Scope::Fleet,
                ..
            } => true,
            _ => state
                .visible_vehicle(&access, &filter, &vehicle_id, now)
                .await
                .is_ok(),
        };
        if !sees {
            return Err(missing());
        }
    }
    state.db.share_revoke(&id, now()).await?;
    tracing::info!(share_link = %id, revoked_by = %creator, "api: share link revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The document", content_type = "application/json"),
        (status = 401, description = "No valid token", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
    )
)]
async fn openapi_json(_access: Access, State(state): State<AppStateRef>) -> Response {
    let document = state.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use axum::body::Body;
    use tower::ServiceExt as _;

    /// Every path and method the API serves.
    const EXPECTED: [(&str, &str); 11] = [
        ("get", "/v1/vehicles"),
        ("get", "/v1/vehicles/{id}"),
        ("get", "/v1/vehicles/{id}/track"),
        ("get", "/v1/events"),
        ("get", "/v1/trips"),
        ("get", "/v1/fences"),
        ("post", "/v1/share-links"),
        ("delete", "/v1/share-links/{id}"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/feed"),
        ("get", "/v1/feed/sse"),
    ];

    fn documented() -> Vec<(String, String)> {
        let doc = serde_json::to_value(openapi()).unwrap();
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.push((method.clone(), path.clone()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_route_with_its_parameters() {
        let doc = serde_json::to_value(openapi()).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let mut expected: Vec<(String, String)> = EXPECTED
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        expected.sort();
        assert_eq!(documented(), expected);
        let names = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| p["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(
            names("/v1/vehicles", "get"),
            ["bbox", "fence", "state", "stale_after", "limit", "cursor"]
        );
        assert_eq!(
            names("/v1/vehicles/{id}/track", "get"),
            ["id", "from", "to", "max_points"]
        );
        assert_eq!(
            names("/v1/events", "get"),
            [
                "vehicle_id",
                "type",
                "fence",
                "from",
                "to",
                "limit",
                "cursor"
            ]
        );
        for schema in [
            "VehiclePage",
            "VehicleDetail",
            "Track",
            "EventPage",
            "TripPage",
            "FenceCollection",
            "ShareLink",
            "CreateShareLink",
            "ErrorBody",
        ] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    /// What the handlers refuse is in the document, so a generator (and a
    /// client) can produce a valid request from it: before, every query
    /// parameter was a bare string, and schemathesis' schema-valid requests
    /// were mostly answered 400 (an empty `bbox`, `from=""`, `limit=0`,
    /// `type=""`, an empty share-link `vehicle_id`), never reaching a query.
    #[test]
    fn the_document_states_what_the_handlers_refuse() {
        use serde_json::Value;
        let doc = serde_json::to_value(openapi()).unwrap();
        let param = |path: &str, name: &str| -> Value {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{path} {name}"))["schema"]
                .clone()
        };
        let types: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            param("/v1/events", "type")["enum"],
            serde_json::json!(types)
        );
        assert_eq!(
            param("/v1/vehicles", "state")["$ref"],
            "#/components/schemas/VehicleState"
        );
        for path in ["/v1/vehicles", "/v1/events", "/v1/trips"] {
            assert_eq!(param(path, "limit")["minimum"], 1, "{path}");
            assert_eq!(param(path, "cursor")["minLength"], 1, "{path}");
        }
        assert_eq!(param("/v1/vehicles/{id}/track", "max_points")["minimum"], 2);
        for (path, name) in [
            ("/v1/events", "from"),
            ("/v1/events", "to"),
            ("/v1/trips", "from"),
            ("/v1/vehicles/{id}/track", "to"),
        ] {
            assert_eq!(param(path, name)["format"], "date-time", "{path} {name}");
        }
        for (path, name) in [
            ("/v1/vehicles", "fence"),
            ("/v1/events", "vehicle_id"),
            ("/v1/events", "fence"),
            ("/v1/trips", "vehicle_id"),
        ] {
            assert_eq!(param(path, name)["minLength"], 1, "{path} {name}");
        }
        let pattern = |schema: &Value| matcher(schema["pattern"].as_str().unwrap());
        let bbox = pattern(&param("/v1/vehicles", "bbox"));
        assert!(bbox("13.40,52.50,13.41,52.51") && !bbox("") && !bbox("1,2,3"));
        let duration = pattern(&param("/v1/vehicles", "stale_after"));
        assert!(duration("10m") && duration("2h 30m") && !duration("") && !duration("0s"));
        let body = &doc["components"]["schemas"]["CreateShareLink"]["properties"];
        assert_eq!(body["vehicle_id"]["minLength"], 1);
        assert!(pattern(&body["expires_in"])("2h"));
        // Every 401 says how to authenticate, as it does.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["responses"]["401"]["headers"]["WWW-Authenticate"].is_object(),
                    "{method} {path}"
                );
            }
        }
    }

    /// Whether a value matches one of the document's patterns.
    fn matcher(pattern: &str) -> impl Fn(&str) -> bool + use<> {
        let re = regex::Regex::new(pattern).unwrap();
        move |value| re.is_match(value)
    }

    /// A router whose database is never reached: each request below is
    /// refused (401) before any query.
    fn offline_router() -> axum::Router {
        let mut config = ApiConfig::new("postgresql://postgres@127.0.0.1:1/none");
        config.connect_timeout = Some(Duration::from_secs(1));
        let postgres = config.postgres().unwrap();
        let pool = postgres.pool(1).build().unwrap();
        let state = Arc::new(AppState {
            db: Db::lazy(pool, "public"),
            feed: None,
            tokens: Tokens::new(&[]),
            config,
            fences: fleetpipe_geofence::shared(
                fleetpipe_geofence::GeofenceIndex::build(
                    fleetpipe_geofence::FenceSet::default(),
                    fleetpipe_geofence::DEFAULT_CELL_SIZE_M,
                )
                .unwrap(),
            ),
            openapi: OnceLock::new(),
        });
        router(state)
    }

    #[tokio::test]
    async fn every_documented_route_is_served_and_nothing_else() {
        let router = offline_router();
        for (method, path) in documented() {
            let uri = path.replace("{id}", "x");
            let request = axum::http::Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            // Routed: the handler's authentication answers, not the 404 of
            // the fallback.
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {uri}"
            );
            assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        }
        for (method, uri) in [
            ("GET", "/v1/nothing"),
            ("GET", "/metrics"),
            ("PUT", "/v1/vehicles/x"),
        ] {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            let status = router.clone().oneshot(request).await.unwrap().status();
            assert!(
                status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}: {status}"
            );
        }
    }
}
