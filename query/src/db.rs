//! The API's database access: the statements of `query/sql/`, rendered
//! once for the configured schema, run on a pooled connection, their rows
//! as plain structs. No HTTP here, and no decisions: the handlers decide
//! what to ask and what an answer means.
//!
//! Statements are sent with their parameters each time (not cached as
//! prepared statements), so PostgreSQL plans each with the values at hand:
//! an absent filter (`$n IS NULL`) folds away and the plan uses the index
//! the remaining conditions need (the plans are in ARCHITECTURE.md, "Read
//! side").

use deadpool_postgres::{Object, Pool};
use fleetpipe_postgres::sql::{SCHEMA_LOCK_CLASS, quote_ident, schema_lock_key};
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::QueryError;
use crate::error::ApiError;
use crate::feed::KnownPosition;

/// The state derivation, spliced into the vehicle queries.
const STATE: &str = include_str!("../sql/state.sql");

/// The statements of one schema.
#[derive(Debug)]
struct Sql {
    vehicles: String,
    vehicle: String,
    open_dtcs: String,
    last_event: String,
    events: String,
    track: String,
    occupancy: String,
    share_table: String,
    share_insert: String,
    share_lookup: String,
    share_get: String,
    share_revoke: String,
    feed_seed: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let schema = quote_ident(schema);
        let render = |text: &str| text.replace("{state}", STATE).replace("{schema}", &schema);
        Self {
            vehicles: render(include_str!("../sql/vehicles.sql")),
            vehicle: render(include_str!("../sql/vehicle.sql")),
            open_dtcs: render(include_str!("../sql/open_dtcs.sql")),
            last_event: render(include_str!("../sql/last_event.sql")),
            events: render(include_str!("../sql/events.sql")),
            track: render(include_str!("../sql/track.sql")),
            occupancy: render(include_str!("../sql/occupancy.sql")),
            share_table: render(include_str!("../sql/share_links.sql")),
            share_insert: render(include_str!("../sql/share_insert.sql")),
            share_lookup: render(include_str!("../sql/share_lookup.sql")),
            share_get: render(include_str!("../sql/share_get.sql")),
            share_revoke: render(include_str!("../sql/share_revoke.sql")),
            feed_seed: render(include_str!("../sql/feed_seed.sql")),
        }
    }
}

/// A vehicle's row of `vehicle_latest`, with its derived state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LatestRow {
    pub(crate) vehicle_id: String,
    pub(crate) ts: OffsetDateTime,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    pub(crate) speed_kmh: Option<f64>,
    pub(crate) heading_deg: Option<f64>,
    pub(crate) soc_pct: Option<f64>,
    pub(crate) charging: Option<bool>,
    pub(crate) ignition: Option<bool>,
    pub(crate) fences: Option<Vec<String>>,
    pub(crate) state: String,
}

impl LatestRow {
    fn from_row(row: &Row) -> Self {
        Self {
            vehicle_id: row.get("vehicle_id"),
            ts: row.get("ts"),
            lat: row.get("lat"),
            lon: row.get("lon"),
            speed_kmh: row.get("speed_kmh"),
            heading_deg: row.get("heading_deg"),
            soc_pct: row.get("soc_pct"),
            charging: row.get("charging"),
            ignition: row.get("ignition"),
            fences: row.get("fences"),
            state: row.get("state"),
        }
    }
}

/// A row of `vehicle_events`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventRow {
    pub(crate) id: String,
    pub(crate) vehicle_id: String,
    pub(crate) event_type: String,
    pub(crate) time: OffsetDateTime,
    pub(crate) data: serde_json::Value,
}

impl EventRow {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get("id"),
            vehicle_id: row.get("vehicle_id"),
            event_type: row.get("type"),
            time: row.get("time"),
            data: row.get("data"),
        }
    }
}

/// One ping of a track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TrackRow {
    pub(crate) ts: OffsetDateTime,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    pub(crate) speed_kmh: Option<f64>,
}

/// The state derivation's parameters: offline before `cutoff`, moving from
/// `moving_kmh`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateRule {
    pub(crate) cutoff: OffsetDateTime,
    pub(crate) moving_kmh: f64,
}

/// The filters of one page of `GET /v1/vehicles` (see `sql/vehicles.sql`).
#[derive(Debug, Clone)]
pub(crate) struct VehiclesQuery {
    pub(crate) state_rule: StateRule,
    pub(crate) after: String,
    pub(crate) scope_vehicles: Option<Vec<String>>,
    pub(crate) scope_fences: Option<Vec<String>>,
    pub(crate) bbox: Option<[f64; 4]>,
    pub(crate) fence: Option<String>,
    pub(crate) stale_before: Option<OffsetDateTime>,
    pub(crate) state: Option<String>,
    pub(crate) limit: i64,
}

/// The filters of one page of events (see `sql/events.sql`).
#[derive(Debug, Clone)]
pub(crate) struct EventsQuery {
    pub(crate) vehicle_id: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) fence: Option<String>,
    pub(crate) from: OffsetDateTime,
    pub(crate) to: OffsetDateTime,
    pub(crate) after: (OffsetDateTime, String),
    pub(crate) scope_vehicles: Option<Vec<String>>,
    pub(crate) scope_fences: Option<Vec<String>>,
    pub(crate) limit: i64,
}

/// A share link as its token finds it.
#[derive(Debug, Clone)]
pub(crate) struct ShareRow {
    pub(crate) id: String,
    pub(crate) vehicle_id: String,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
}

/// A new share link.
#[derive(Debug, Clone)]
pub(crate) struct NewShare<'a> {
    pub(crate) id: &'a str,
    pub(crate) token_sha256: &'a [u8],
    pub(crate) vehicle_id: &'a str,
    pub(crate) created_by: &'a str,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
}

/// The pool and the statements.
#[derive(Debug)]
pub(crate) struct Db {
    pool: Pool,
    sql: Sql,
}

impl Db {
    /// A pool for `postgres` of `size` connections on `schema`, and the
    /// share-link table there (created when missing).
    pub(crate) async fn start(
        postgres: &fleetpipe_postgres::Postgres,
        size: usize,
        schema: &str,
    ) -> Result<Self, QueryError> {
        let pool = postgres
            .pool(size)
            .build()
            .map_err(|e| QueryError::Pool(e.to_string()))?;
        let db = Self::lazy(pool, schema);
        db.ensure_share_table(schema).await?;
        Ok(db)
    }

    /// The statements for `schema` on `pool`, without touching the
    /// database (connections open on first use).
    pub(crate) fn lazy(pool: Pool, schema: &str) -> Self {
        Self {
            pool,
            sql: Sql::new(schema),
        }
    }

    /// A connection for the start-up steps (their errors are
    /// [`QueryError`], not answers).
    async fn start_client(&self) -> Result<Object, QueryError> {
        self.pool.get().await.map_err(|e| QueryError::Database {
            step: "connect",
            detail: e.to_string(),
        })
    }

    /// Creates `api_share_links` unless it exists, under the schema's
    /// advisory lock (so it never races the sink's migrations or another
    /// instance starting).
    async fn ensure_share_table(&self, schema: &str) -> Result<(), QueryError> {
        let mut client = self.start_client().await?;
        if table_exists(
            &client,
            schema,
            "api_share_links",
            "look up api_share_links",
        )
        .await?
        {
            return Ok(());
        }
        let step = "create api_share_links";
        let txn = client.transaction().await.map_err(failed(step))?;
        txn.batch_execute(
            "SET LOCAL client_min_messages = warning; SET LOCAL statement_timeout = 0",
        )
        .await
        .map_err(failed(step))?;
        txn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&SCHEMA_LOCK_CLASS, &schema_lock_key(schema)],
        )
        .await
        .map_err(failed(step))?;
        txn.batch_execute(&self.sql.share_table)
            .await
            .map_err(failed(step))?;
        txn.commit().await.map_err(failed(step))?;
        tracing::info!(schema, "api: api_share_links created");
        Ok(())
    }

    async fn client(&self) -> Result<Object, ApiError> {
        self.pool
            .get()
            .await
            .map_err(|e| ApiError::Unavailable(format!("connection pool: {e}")))
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, ApiError> {
        let client = self.client().await?;
        client
            .query(sql, params)
            .await
            .map_err(|e| ApiError::database(&e))
    }

    /// One page of `GET /v1/vehicles`.
    pub(crate) async fn vehicles(&self, q: &VehiclesQuery) -> Result<Vec<LatestRow>, ApiError> {
        let [min_lon, min_lat, max_lon, max_lat] = match q.bbox {
            Some(b) => b.map(Some),
            None => [None; 4],
        };
        let rows = self
            .query(
                &self.sql.vehicles,
                &[
                    &q.state_rule.cutoff,
                    &q.state_rule.moving_kmh,
                    &q.after,
                    &q.scope_vehicles,
                    &q.scope_fences,
                    &min_lon,
                    &min_lat,
                    &max_lon,
                    &max_lat,
                    &q.fence,
                    &q.stale_before,
                    &q.state,
                    &q.limit,
                ],
            )
            .await?;
        Ok(rows.iter().map(LatestRow::from_row).collect())
    }

    /// One vehicle, if the scope lets the caller see it.
    pub(crate) async fn vehicle(
        &self,
        id: &str,
        rule: StateRule,
        scope_vehicles: &Option<Vec<String>>,
        scope_fences: &Option<Vec<String>>,
    ) -> Result<Option<LatestRow>, ApiError> {
        let rows = self
            .query(
                &self.sql.vehicle,
                &[
                    &rule.cutoff,
                    &rule.moving_kmh,
                    &id,
                    scope_vehicles,
                    scope_fences,
                ],
            )
            .await?;
        Ok(rows.first().map(LatestRow::from_row))
    }

    /// The open diagnostic codes of a vehicle, with when each was set.
    pub(crate) async fn open_dtcs(
        &self,
        id: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<(String, OffsetDateTime)>, ApiError> {
        let rows = self.query(&self.sql.open_dtcs, &[&id, &from, &to]).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("code"), r.get("time")))
            .collect())
    }

    /// A vehicle's newest event the caller may see.
    pub(crate) async fn last_event(
        &self,
        id: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        scope_fences: &Option<Vec<String>>,
    ) -> Result<Option<EventRow>, ApiError> {
        let rows = self
            .query(&self.sql.last_event, &[&id, &from, &to, scope_fences])
            .await?;
        Ok(rows.first().map(EventRow::from_row))
    }

    /// One page of events.
    pub(crate) async fn events(&self, q: &EventsQuery) -> Result<Vec<EventRow>, ApiError> {
        let rows = self
            .query(
                &self.sql.events,
                &[
                    &q.vehicle_id,
                    &q.event_type,
                    &q.fence,
                    &q.from,
                    &q.to,
                    &q.after.0,
                    &q.after.1,
                    &q.scope_vehicles,
                    &q.scope_fences,
                    &q.limit,
                ],
            )
            .await?;
        Ok(rows.iter().map(EventRow::from_row).collect())
    }

    /// A vehicle's pings in `[from, to)`, at most `limit`.
    pub(crate) async fn track(
        &self,
        id: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        scope_fences: &Option<Vec<String>>,
        limit: i64,
    ) -> Result<Vec<TrackRow>, ApiError> {
        let rows = self
            .query(&self.sql.track, &[&id, &from, &to, scope_fences, &limit])
            .await?;
        Ok(rows
            .iter()
            .map(|r| TrackRow {
                ts: r.get("ts"),
                lat: r.get("lat"),
                lon: r.get("lon"),
                speed_kmh: r.get("speed_kmh"),
            })
            .collect())
    }

    /// Vehicles whose latest ping is inside each fence.
    pub(crate) async fn occupancy(
        &self,
        scope_vehicles: &Option<Vec<String>>,
    ) -> Result<std::collections::HashMap<String, i64>, ApiError> {
        let rows = self.query(&self.sql.occupancy, &[scope_vehicles]).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("fence_id"), r.get("vehicles")))
            .collect())
    }

    /// The newest positions of at most `limit` vehicles, for the live
    /// feed's latest-position table; none when `vehicle_latest` does not
    /// exist yet (no writer has migrated the schema).
    pub(crate) async fn known_positions(
        &self,
        schema: &str,
        limit: usize,
    ) -> Result<Vec<KnownPosition>, QueryError> {
        let client = self.start_client().await?;
        if !table_exists(&client, schema, "vehicle_latest", "look up vehicle_latest").await? {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&self.sql.feed_seed, &[&limit])
            .await
            .map_err(failed("read vehicle_latest for the live feed"))?;
        Ok(rows
            .iter()
            .map(|row| {
                let ts: OffsetDateTime = row.get("ts");
                KnownPosition {
                    vehicle_id: row.get("vehicle_id"),
                    ts_ms: i64::try_from(ts.unix_timestamp_nanos() / 1_000_000).unwrap_or_default(),
                    lat: row.get("lat"),
                    lon: row.get("lon"),
                    speed_kmh: row.get("speed_kmh"),
                    heading_deg: row.get("heading_deg"),
                    soc_pct: row.get("soc_pct"),
                    charging: row.get("charging"),
                    ignition: row.get("ignition"),
                    fences: row
                        .get::<_, Option<Vec<String>>>("fences")
                        .unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Stores a new share link.
    pub(crate) async fn share_insert(&self, share: &NewShare<'_>) -> Result<(), ApiError> {
        let client = self.client().await?;
        client
            .execute(
                &self.sql.share_insert,
                &[
                    &share.id,
                    &share.token_sha256,
                    &share.vehicle_id,
                    &share.created_by,
                    &share.created_at,
                    &share.expires_at,
                ],
            )
            .await
            .map_err(|e| ApiError::database(&e))?;
        Ok(())
    }

    /// The live share link whose token hashes to `hash`, at `now`.
    pub(crate) async fn share_lookup(
        &self,
        hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<ShareRow>, ApiError> {
        let rows = self.query(&self.sql.share_lookup, &[&hash, &now]).await?;
        Ok(rows.first().map(|r| ShareRow {
            id: r.get("id"),
            vehicle_id: r.get("vehicle_id"),
            created_at: r.get("created_at"),
            expires_at: r.get("expires_at"),
        }))
    }

    /// The vehicle and creator of share link `id`, if it exists.
    pub(crate) async fn share_owner(&self, id: &str) -> Result<Option<(String, String)>, ApiError> {
        let rows = self.query(&self.sql.share_get, &[&id]).await?;
        Ok(rows
            .first()
            .map(|r| (r.get("vehicle_id"), r.get("created_by"))))
    }

    /// Revokes share link `id` at `now` (again is a no-op).
    pub(crate) async fn share_revoke(&self, id: &str, now: OffsetDateTime) -> Result<(), ApiError> {
        let client = self.client().await?;
        client
            .execute(&self.sql.share_revoke, &[&id, &now])
            .await
            .map_err(|e| ApiError::database(&e))?;
        Ok(())
    }
}

/// A start-up step's PostgreSQL error, naming the step.
fn failed(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> QueryError {
    move |e| QueryError::Database {
        step,
        detail: fleetpipe_postgres::describe(&e),
    }
}

/// Whether `schema.table` exists; `step` names the lookup in an error.
async fn table_exists(
    client: &Object,
    schema: &str,
    table: &str,
    step: &'static str,
) -> Result<bool, QueryError> {
    let name = format!("{}.{table}", quote_ident(schema));
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .map_err(failed(step))?
        .get(0))
}
