//! One batch, one transaction: the TimescaleDB sink's write core.
//!
//! [`write_rows`] takes a pooled connection and a part of a batch, already
//! converted to [`Row`]s, and in one transaction
//!
//! 1. binary-COPYs the telemetry straight into `telemetry`. COPY cannot skip
//!    a row that is already there, so should the part hold one (a replay, or
//!    a retry after an ambiguous commit), the transaction fails on the
//!    dedupe key and is written again the slow way: binary COPY into the
//!    connection's TEMP staging table `pg_temp.telemetry_stage` (created once
//!    per connection, emptied at every commit), then `INSERT … SELECT … ON
//!    CONFLICT (vehicle_id, ts, seq) DO NOTHING` into `telemetry`, so a
//!    replay adds nothing (a ping without `seq` has `seq` = [`SEQ_NONE`]:
//!    no key column is NULL). The
//!    fast path costs PostgreSQL about half as much per row (no staging
//!    table written, truncated and read back, no speculative insertion per
//!    row);
//! 2. upserts the newest ping per vehicle (picked here) into
//!    `vehicle_latest`, never moving a vehicle back in time,
//! 3. inserts the events into `vehicle_events` with one prepared `unnest`
//!    statement and `ON CONFLICT (id) DO NOTHING`: an event's id is
//!    deterministic, so a replayed event adds nothing. Not through a TEMP
//!    staging table: a transaction that touches one pays for truncating every
//!    `ON COMMIT DELETE ROWS` table of the connection at commit (6 % of
//!    PostgreSQL's time under load, when events went that way), and events
//!    are few enough per part for parameter arrays,
//! 4. binary-COPYs the dead letters into `dead_letters`,
//! 5. commits.
//!
//! It logs nothing, records no metrics and retries nothing: the service
//! decides what an error means.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::sync::Arc;

use bytes::{BufMut as _, BytesMut};
use deadpool_postgres::Transaction;
use fleetpipe_model::{DeadLetter, PingFlags, SinkRecord, TelemetryRecord, VehicleEvent};
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Reason written for telemetry and events the database refused for good.
pub(crate) const DB_REFUSED: &str = "db_refused";

/// `source` of the dead letter written for an event the database refused:
/// events come from enrichment, not through a gateway.
pub(crate) const EVENT_SOURCE: &str = "events";

/// `telemetry.seq` of a ping without a sequence number. Device sequence
/// numbers stored there are 0 … 2^63−1 (larger ones are refused before the
/// database), so this is never a real one. Not NULL: the dedupe key
/// `(vehicle_id, ts, seq)` holds no NULL, so a replayed ping without `seq`
/// is a conflict by plain equality, which every engine gets right
/// (TimescaleDB 2.28 does not honour `NULLS NOT DISTINCT` against
/// compressed chunks). Migration `0007_telemetry_seq_not_null`.
pub const SEQ_NONE: i64 = -1;

/// Columns of `telemetry` the sink fills, in COPY order. `geofence_ids` keeps
/// its default: the geofences of a ping go to `fences`. Public so the
/// benchmarks' raw COPY writes exactly the sink's columns.
pub const TELEMETRY_COPY_COLUMNS: &str = "vehicle_id, ts, seq, received_at, source, lat, lon, alt_m, \
    speed_kmh, heading_deg, accuracy_m, soc_pct, battery_v, charging, odometer_km, ignition, \
    h3_cell, dtcs, attrs, fences, distance_m, derived_speed_kmh, flags";

/// Types of [`TELEMETRY_COPY_COLUMNS`], in the same order.
pub const TELEMETRY_COPY_TYPES: [Type; 23] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::BOOL,
    Type::FLOAT8,
    Type::BOOL,
    Type::INT8,
    Type::TEXT_ARRAY,
    Type::JSONB,
    Type::TEXT_ARRAY,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT_ARRAY,
];

/// Columns of `vehicle_latest` the sink fills, in the order of
/// [`LatestRows`]' arrays.
const LATEST_COLUMNS: &str = "vehicle_id, ts, seq, lat, lon, speed_kmh, heading_deg, soc_pct, \
    charging, ignition, h3_cell, fences";

/// Columns of `vehicle_events` the sink fills, in COPY order; `received_at`
/// takes its default, the time of the transaction.
const EVENT_COLUMNS: &str = "id, vehicle_id, type, time, data";

/// Columns of `dead_letters` the sink fills, in COPY order.
const DEAD_COLUMNS: &str = "received_at, reason, detail, source, vehicle_id, topic, raw";

/// Types of [`DEAD_COLUMNS`], in the same order.
const DEAD_TYPES: [Type; 7] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
];

/// The statements of one schema, rendered once.
#[derive(Debug)]
pub(crate) struct Statements {
    /// Creates the connection's staging table; run once per connection.
    pub(crate) create_stage: String,
    copy_direct: String,
    copy_stage: String,
    merge_stage: String,
    upsert_latest: String,
    insert_events: String,
    copy_dead: String,
}

impl Statements {
    /// The statements for the tables in `schema` (a quoted identifier).
    pub(crate) fn new(schema: &str) -> Self {
        Self {
            create_stage: format!(
                "CREATE TEMP TABLE IF NOT EXISTS telemetry_stage \
                 (LIKE {schema}.telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            ),
            copy_direct: format!(
                "COPY {schema}.telemetry ({TELEMETRY_COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
            ),
            copy_stage: format!(
                "COPY pg_temp.telemetry_stage ({TELEMETRY_COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
            ),
            // Sorted, so concurrent writers take index entries in the same
            // order and cannot deadlock on overlapping keys. The conflict
            // target is the dedupe key, whose columns are all NOT NULL
            // (a ping without seq has seq = SEQ_NONE).
            merge_stage: format!(
                "INSERT INTO {schema}.telemetry ({TELEMETRY_COPY_COLUMNS}) \
                 SELECT {TELEMETRY_COPY_COLUMNS} FROM pg_temp.telemetry_stage \
                 ORDER BY vehicle_id, ts, seq \
                 ON CONFLICT (vehicle_id, ts, seq) DO NOTHING"
            ),
            // One row per vehicle, sorted by vehicle ([`LatestRows`]), so
            // concurrent writers lock rows in the same order. A prepared
            // statement: planned once per connection.
            // `fences` travels as one JSON array per vehicle ($12, text):
            // a parameter array of arrays would be a two-dimensional array,
            // which needs rows of equal length and which unnest flattens.
            upsert_latest: format!(
                "INSERT INTO {schema}.vehicle_latest AS latest ({LATEST_COLUMNS}, updated_at) \
                 SELECT u.vehicle_id, u.ts, u.seq, u.lat, u.lon, u.speed_kmh, u.heading_deg, \
                 u.soc_pct, u.charging, u.ignition, u.h3_cell, \
                 ARRAY(SELECT jsonb_array_elements_text(u.fences::jsonb)), now() \
                 FROM unnest($1::text[], $2::timestamptz[], $3::int8[], \
                 $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], \
                 $9::bool[], $10::bool[], $11::int8[], $12::text[]) \
                 AS u ({LATEST_COLUMNS}) \
                 ON CONFLICT (vehicle_id) DO UPDATE SET \
                 ts = excluded.ts, seq = excluded.seq, lat = excluded.lat, lon = excluded.lon, \
                 speed_kmh = excluded.speed_kmh, heading_deg = excluded.heading_deg, \
                 soc_pct = excluded.soc_pct, charging = excluded.charging, \
                 ignition = excluded.ignition, h3_cell = excluded.h3_cell, \
                 fences = excluded.fences, updated_at = excluded.updated_at \
                 WHERE excluded.ts > latest.ts"
            ),
            // Sorted by id, for the same reason as the telemetry. A replay
            // (same id, also twice within one part) is skipped. A prepared
            // statement: planned once per connection.
            insert_events: format!(
                "INSERT INTO {schema}.vehicle_events ({EVENT_COLUMNS}) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
                 $4::timestamptz[], $5::jsonb[]) AS e ({EVENT_COLUMNS}) \
                 ORDER BY id \
                 ON CONFLICT (id) DO NOTHING"
            ),
            copy_dead: format!(
                "COPY {schema}.dead_letters ({DEAD_COLUMNS}) FROM STDIN (FORMAT binary)"
            ),
        }
    }
}

/// What a committed part of a batch held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteStats {
    /// Rows copied to `telemetry` (duplicates included: they are durable).
    pub(crate) telemetry: u64,
    /// Rows copied to `dead_letters`.
    pub(crate) dead_letters: u64,
    /// Events copied towards `vehicle_events` (replays included: they are
    /// durable).
    pub(crate) events: u64,
    /// COPY payload of the telemetry rows, bytes.
    pub(crate) telemetry_bytes: u64,
    /// COPY payload of the dead-letter rows, bytes.
    pub(crate) dead_letter_bytes: u64,
    /// Size of the event rows in binary encoding (as a COPY would send
    /// them; they go in by parameter arrays), bytes.
    pub(crate) event_bytes: u64,
    /// Parts written through the staging table because they held a row
    /// that was already stored.
    pub(crate) staged_parts: u64,
}

impl WriteStats {
    /// Adds another part's numbers.
    pub(crate) fn add(&mut self, other: WriteStats) {
        self.telemetry += other.telemetry;
        self.dead_letters += other.dead_letters;
        self.events += other.events;
        self.telemetry_bytes += other.telemetry_bytes;
        self.dead_letter_bytes += other.dead_letter_bytes;
        self.event_bytes += other.event_bytes;
        self.staged_parts += other.staged_parts;
    }
}

/// One record of a batch, ready to be copied.
#[derive(Debug)]
pub(crate) enum Row<'a> {
    /// A ping for `telemetry`.
    Telemetry(StageRow<'a>),
    /// An event for `vehicle_events`.
    Event(EventRow<'a>),
    /// A row for `dead_letters`.
    Dead(DeadRow<'a>),
}

impl<'a> Row<'a> {
    /// The ping, if this is one.
    fn as_telemetry(&self) -> Option<&StageRow<'a>> {
        match self {
            Row::Telemetry(r) => Some(r),
            Row::Event(_) | Row::Dead(_) => None,
        }
    }

    /// The event, if this is one.
    fn as_event(&self) -> Option<&EventRow<'a>> {
        match self {
            Row::Event(r) => Some(r),
            Row::Telemetry(_) | Row::Dead(_) => None,
        }
    }

    /// The dead letter, if this is one.
    fn as_dead(&self) -> Option<&DeadRow<'a>> {
        match self {
            Row::Dead(r) => Some(r),
            Row::Telemetry(_) | Row::Event(_) => None,
        }
    }

    /// Converts a record. A ping or event that cannot be represented in its
    /// table (e.g. a `seq` beyond `bigint`) becomes a `db_refused` dead
    /// letter right away.
    pub(crate) fn prepare(record: &'a SinkRecord) -> Self {
        match record {
            SinkRecord::Telemetry(r) => match StageRow::new(r) {
                Ok(row) => Row::Telemetry(row),
                Err(why) => Row::Dead(DeadRow::refused(r, why)),
            },
            SinkRecord::Event(e) => match EventRow::new(e) {
                Ok(row) => Row::Event(row),
                Err(why) => Row::Dead(DeadRow::refused_event(e, why)),
            },
            SinkRecord::DeadLetter(d) => Row::Dead(DeadRow::letter(d)),
        }
    }
}

/// A ping as the 23 values of [`TELEMETRY_COPY_COLUMNS`].
#[derive(Debug)]
pub(crate) struct StageRow<'a> {
    vehicle_id: &'a str,
    ts: OffsetDateTime,
    /// The ping's `seq`, for `vehicle_latest` (NULL there when absent).
    seq: Option<i64>,
    /// What `telemetry.seq` holds: `seq`, or [`SEQ_NONE`].
    stored_seq: i64,
    received_at: OffsetDateTime,
    source: &'static str,
    lat: f64,
    lon: f64,
    alt_m: Option<f64>,
    speed_kmh: Option<f64>,
    heading_deg: Option<f64>,
    accuracy_m: Option<f64>,
    soc_pct: Option<f64>,
    battery_v: Option<f64>,
    charging: Option<bool>,
    odometer_km: Option<f64>,
    ignition: Option<bool>,
    h3_cell: Option<i64>,
    dtcs: &'a [String],
    attrs: JsonbText<'a>,
    fences: Fences<'a>,
    distance_m: Option<f64>,
    derived_speed_kmh: Option<f64>,
    flags: Flags,
}

impl<'a> StageRow<'a> {
    /// Converts a ping, or says why it cannot be stored.
    pub(crate) fn new(r: &'a TelemetryRecord) -> Result<Self, String> {
        let p = &r.ping;
        let seq = match p.seq {
            None => None,
            Some(seq) => Some(
                i64::try_from(seq)
                    .map_err(|_| format!("seq {seq} does not fit a bigint column"))?,
            ),
        };
        let attrs = serde_json::to_string(&p.attrs)
            .map_err(|e| format!("attrs cannot be encoded as JSON: {e}"))?;
        let enrichment = &r.enrichment;
        Ok(Self {
            vehicle_id: p.vehicle_id.as_str(),
            ts: timestamp(p.ts_ms).ok_or_else(|| format!("ts {} is out of range", p.ts_ms))?,
            seq,
            stored_seq: seq.unwrap_or(SEQ_NONE),
            received_at: timestamp(r.origin.received_at)
                .ok_or_else(|| format!("received_at {} is out of range", r.origin.received_at))?,
            source: r.origin.gateway.as_str(),
            lat: p.lat,
            lon: p.lon,
            alt_m: p.alt_m,
            speed_kmh: p.speed_kmh,
            heading_deg: p.heading_deg,
            accuracy_m: p.accuracy_m,
            soc_pct: p.soc_pct,
            battery_v: p.battery_v,
            charging: p.charging,
            odometer_km: p.odometer_km,
            ignition: p.ignition,
            h3_cell: finest_cell(&r.h3),
            dtcs: &p.dtcs,
            attrs: JsonbText(Cow::Owned(attrs)),
            // Empty arrays rather than NULL: NULL is kept for rows written
            // before the columns existed, and `NOT ('late' = ANY(flags))`
            // stays true for a ping without flags.
            fences: Fences(&enrichment.fences),
            distance_m: enrichment.distance_m,
            derived_speed_kmh: enrichment.derived_speed_kmh,
            flags: Flags(enrichment.flags),
        })
    }

    /// The values in [`TELEMETRY_COPY_COLUMNS`] order.
    fn values(&self) -> [&(dyn ToSql + Sync); 23] {
        [
            &self.vehicle_id,
            &self.ts,
            &self.stored_seq,
            &self.received_at,
            &self.source,
            &self.lat,
            &self.lon,
            &self.alt_m,
            &self.speed_kmh,
            &self.heading_deg,
            &self.accuracy_m,
            &self.soc_pct,
            &self.battery_v,
            &self.charging,
            &self.odometer_km,
            &self.ignition,
            &self.h3_cell,
            &self.dtcs,
            &self.attrs,
            &self.fences,
            &self.distance_m,
            &self.derived_speed_kmh,
            &self.flags,
        ]
    }

    /// Size of this row in the binary COPY stream.
    pub(crate) fn copy_len(&self) -> u64 {
        let opt = |present: bool, len: usize| if present { len } else { 0 };
        let floats = [
            self.alt_m,
            self.speed_kmh,
            self.heading_deg,
            self.accuracy_m,
            self.soc_pct,
            self.battery_v,
            self.odometer_km,
            self.distance_m,
            self.derived_speed_kmh,
        ];
        let payload = self.vehicle_id.len()
            + 8 // ts
            + 8 // seq, never NULL
            + 8 // received_at
            + self.source.len()
            + 16 // lat, lon
            + floats.iter().map(|f| opt(f.is_some(), 8)).sum::<usize>()
            + opt(self.charging.is_some(), 1)
            + opt(self.ignition.is_some(), 1)
            + opt(self.h3_cell.is_some(), 8)
            + text_array_len(self.dtcs.iter().map(String::as_str))
            + 1 // jsonb version
            + self.attrs.0.len()
            + text_array_len(self.fences.0.iter().map(|f| &**f))
            + text_array_len(self.flags.0.names());
        // Field count, then a length word per field.
        (2 + 4 * TELEMETRY_COPY_TYPES.len() + payload) as u64
    }
}

/// An event as the 5 values of [`EVENT_COLUMNS`].
#[derive(Debug)]
pub(crate) struct EventRow<'a> {
    id: &'a str,
    vehicle_id: &'a str,
    event_type: &'static str,
    time: OffsetDateTime,
    data: JsonbText<'a>,
}

impl<'a> EventRow<'a> {
    /// Converts an event, or says why it cannot be stored.
    pub(crate) fn new(e: &'a VehicleEvent) -> Result<Self, String> {
        Ok(Self {
            id: &e.id,
            vehicle_id: e.subject.as_str(),
            event_type: e.event_type.as_str(),
            time: timestamp(e.time_ms)
                .ok_or_else(|| format!("time {} is out of range", e.time_ms))?,
            // Already JSON: the same bytes every sink writes.
            data: JsonbText(Cow::Borrowed(e.data.get())),
        })
    }

    /// Size of this row in binary encoding (as in a binary COPY stream,
    /// like the other tables' rows), for `fleetpipe_sink_bytes_total`.
    pub(crate) fn copy_len(&self) -> u64 {
        let payload = self.id.len()
            + self.vehicle_id.len()
            + self.event_type.len()
            + 8 // time
            + 1 // jsonb version
            + self.data.0.len();
        // Field count, then a length word per field of EVENT_COLUMNS.
        (2 + 4 * 5 + payload) as u64
    }
}

/// The events of a part as the arrays of the `vehicle_events` insert, in
/// [`EVENT_COLUMNS`] order.
#[derive(Debug, Default)]
struct EventColumns<'r, 'a> {
    id: Vec<&'a str>,
    vehicle_id: Vec<&'a str>,
    event_type: Vec<&'static str>,
    time: Vec<OffsetDateTime>,
    data: Vec<&'r JsonbText<'a>>,
    /// [`EventRow::copy_len`] of them all.
    bytes: u64,
}

impl<'r, 'a> EventColumns<'r, 'a> {
    fn new(rows: impl Iterator<Item = &'r EventRow<'a>>) -> Self {
        let mut columns = Self::default();
        for row in rows {
            columns.id.push(row.id);
            columns.vehicle_id.push(row.vehicle_id);
            columns.event_type.push(row.event_type);
            columns.time.push(row.time);
            columns.data.push(&row.data);
            columns.bytes += row.copy_len();
        }
        columns
    }

    /// The statement's parameters.
    fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.id,
            &self.vehicle_id,
            &self.event_type,
            &self.time,
            &self.data,
        ]
    }
}

/// A row for `dead_letters`.
#[derive(Debug)]
pub(crate) struct DeadRow<'a> {
    received_at: OffsetDateTime,
    reason: &'static str,
    detail: Cow<'a, str>,
    source: &'static str,
    vehicle_id: Option<&'a str>,
    topic: Option<Cow<'a, str>>,
    raw: Cow<'a, [u8]>,
}

impl<'a> DeadRow<'a> {
    /// A dead letter from the gateways, stored as received.
    pub(crate) fn letter(d: &'a DeadLetter) -> Self {
        Self {
            received_at: timestamp(d.origin.received_at).unwrap_or_else(OffsetDateTime::now_utc),
            reason: d.reason.as_str(),
            detail: text(&d.detail),
            source: d.origin.gateway.as_str(),
            vehicle_id: d.vehicle_id.as_ref().map(|v| v.as_str()),
            topic: d.topic.as_deref().map(text),
            raw: Cow::Borrowed(&d.raw),
        }
    }

    /// A ping the database refused for good (`detail` says why), kept as
    /// its JSON record.
    pub(crate) fn refused(r: &'a TelemetryRecord, detail: String) -> Self {
        let raw = serde_json::to_vec(r)
            .unwrap_or_else(|e| format!("record cannot be encoded as JSON: {e}").into_bytes());
        Self {
            received_at: timestamp(r.origin.received_at).unwrap_or_else(OffsetDateTime::now_utc),
            reason: DB_REFUSED,
            detail: Cow::Owned(match text(&detail) {
                Cow::Borrowed(_) => detail,
                Cow::Owned(clean) => clean,
            }),
            source: r.origin.gateway.as_str(),
            vehicle_id: Some(r.ping.vehicle_id.as_str()),
            topic: None,
            raw: Cow::Owned(raw),
        }
    }

    /// An event the database refused for good (`detail` says why), kept as
    /// its CloudEvents JSON. Events have no receive time: `received_at` is
    /// when the sink gave up on it.
    pub(crate) fn refused_event(e: &'a VehicleEvent, detail: String) -> Self {
        Self {
            received_at: OffsetDateTime::now_utc(),
            reason: DB_REFUSED,
            detail: Cow::Owned(match text(&detail) {
                Cow::Borrowed(_) => detail,
                Cow::Owned(clean) => clean,
            }),
            source: EVENT_SOURCE,
            vehicle_id: Some(e.subject.as_str()),
            topic: None,
            raw: Cow::Owned(e.to_json().into_bytes()),
        }
    }

    /// The values in [`DEAD_COLUMNS`] order.
    fn values(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.received_at,
            &self.reason,
            &self.detail,
            &self.source,
            &self.vehicle_id,
            &self.topic,
            &self.raw,
        ]
    }

    /// Size of this row in the binary COPY stream.
    pub(crate) fn copy_len(&self) -> u64 {
        let payload = 8
            + self.reason.len()
            + self.detail.len()
            + self.source.len()
            + self.vehicle_id.map_or(0, str::len)
            + self.topic.as_ref().map_or(0, |t| t.len())
            + self.raw.len();
        (2 + 4 * DEAD_TYPES.len() + payload) as u64
    }
}

/// Writes `rows` (indexed by their position in the batch) in one
/// transaction and commits: the telemetry straight into `telemetry` first,
/// and should that meet a row that is already stored, the whole part again
/// through the staging table.
///
/// On error nothing of `rows` is committed: the transaction is rolled back
/// when it is dropped.
pub(crate) async fn write_rows(
    client: &mut deadpool_postgres::Client,
    sql: &Statements,
    rows: &[(usize, Row<'_>)],
) -> Result<WriteStats, tokio_postgres::Error> {
    match write_part(client, sql, rows, TelemetryPath::Direct).await {
        // Only the direct COPY can hit a unique key: everything else the
        // transaction writes skips or updates what is already there.
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let mut stats = write_part(client, sql, rows, TelemetryPath::Staged).await?;
            stats.staged_parts = 1;
            Ok(stats)
        }
        result => result,
    }
}

/// How a part's telemetry goes into `telemetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TelemetryPath {
    /// COPY into `telemetry`: fails on a row that is already stored.
    Direct,
    /// COPY into the staging table, then `INSERT … ON CONFLICT (vehicle_id,
    /// ts, seq) DO NOTHING`.
    Staged,
}

/// One transaction writing `rows`, the telemetry by `path`.
async fn write_part(
    client: &mut deadpool_postgres::Client,
    sql: &Statements,
    rows: &[(usize, Row<'_>)],
    path: TelemetryPath,
) -> Result<WriteStats, tokio_postgres::Error> {
    let mut stats = WriteStats::default();
    let txn = client.transaction().await?;

    let telemetry = rows_of(rows, Row::as_telemetry);
    if telemetry.clone().next().is_some() {
        let copy = match path {
            TelemetryPath::Direct => &sql.copy_direct,
            TelemetryPath::Staged => &sql.copy_stage,
        };
        let values = telemetry.clone().map(|r| (r.values(), r.copy_len()));
        (stats.telemetry, stats.telemetry_bytes) =
            copy_in(&txn, copy, &TELEMETRY_COPY_TYPES, values).await?;
        if path == TelemetryPath::Staged {
            txn.batch_execute(&sql.merge_stage).await?;
        }
        let latest = LatestRows::new(telemetry);
        let upsert = txn.prepare_cached(&sql.upsert_latest).await?;
        txn.execute(&upsert, &latest.params()).await?;
    }

    let events = EventColumns::new(rows_of(rows, Row::as_event));
    if !events.id.is_empty() {
        let insert = txn.prepare_cached(&sql.insert_events).await?;
        txn.execute(&insert, &events.params()).await?;
        (stats.events, stats.event_bytes) = (events.id.len() as u64, events.bytes);
    }

    let dead = rows_of(rows, Row::as_dead);
    if dead.clone().next().is_some() {
        let values = dead.map(|r| (r.values(), r.copy_len()));
        (stats.dead_letters, stats.dead_letter_bytes) =
            copy_in(&txn, &sql.copy_dead, &DEAD_TYPES, values).await?;
    }

    txn.commit().await?;
    Ok(stats)
}

/// The rows of one kind among `rows`, in order.
fn rows_of<'r, 'a: 'r, T: 'r>(
    rows: &'r [(usize, Row<'a>)],
    pick: fn(&'r Row<'a>) -> Option<&'r T>,
) -> impl Iterator<Item = &'r T> + Clone {
    rows.iter().filter_map(move |(_, row)| pick(row))
}

/// Binary-COPYs `rows` (each its values and its size in the stream) with
/// the COPY `statement`. Returns the rows and bytes copied.
async fn copy_in<'v, const N: usize>(
    txn: &Transaction<'_>,
    statement: &str,
    types: &[Type],
    rows: impl Iterator<Item = ([&'v (dyn ToSql + Sync); N], u64)>,
) -> Result<(u64, u64), tokio_postgres::Error> {
    let stmt = txn.prepare_cached(statement).await?;
    let sink = txn.copy_in(&stmt).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, types));
    let (mut copied, mut bytes) = (0, 0);
    for (values, len) in rows {
        writer.as_mut().write(&values).await?;
        copied += 1;
        bytes += len;
    }
    writer.finish().await?;
    Ok((copied, bytes))
}

/// The newest ping of each vehicle of a part, by device time, then `seq`
/// (a ping with one over one without), as the arrays of the
/// `vehicle_latest` upsert in [`LATEST_COLUMNS`] order, sorted by vehicle so
/// that concurrent writers lock rows in the same order.
#[derive(Debug, Default)]
pub(crate) struct LatestRows<'a> {
    vehicle_id: Vec<&'a str>,
    ts: Vec<OffsetDateTime>,
    seq: Vec<Option<i64>>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    speed_kmh: Vec<Option<f64>>,
    heading_deg: Vec<Option<f64>>,
    soc_pct: Vec<Option<f64>>,
    charging: Vec<Option<bool>>,
    ignition: Vec<Option<bool>>,
    h3_cell: Vec<Option<i64>>,
    /// The fences of each ping, as a JSON array of ids (`[]` in none).
    fences: Vec<String>,
}

impl<'a> LatestRows<'a> {
    /// Picks each vehicle's newest of `rows`.
    pub(crate) fn new<'r>(rows: impl Iterator<Item = &'r StageRow<'a>>) -> Self
    where
        'a: 'r,
    {
        let mut newest: BTreeMap<&'a str, &'r StageRow<'a>> = BTreeMap::new();
        for row in rows {
            newest
                .entry(row.vehicle_id)
                .and_modify(|kept| {
                    if (row.ts, row.seq) > (kept.ts, kept.seq) {
                        *kept = row;
                    }
                })
                .or_insert(row);
        }
        let mut latest = Self::default();
        for (vehicle_id, row) in newest {
            latest.vehicle_id.push(vehicle_id);
            latest.ts.push(row.ts);
            latest.seq.push(row.seq);
            latest.lat.push(row.lat);
            latest.lon.push(row.lon);
            latest.speed_kmh.push(row.speed_kmh);
            latest.heading_deg.push(row.heading_deg);
            latest.soc_pct.push(row.soc_pct);
            latest.charging.push(row.charging);
            latest.ignition.push(row.ignition);
            latest.h3_cell.push(row.h3_cell);
            latest.fences.push(row.fences.json());
        }
        latest
    }

    /// Vehicle, device time (epoch ms) and `seq` of each row, in upsert
    /// order.
    #[cfg(test)]
    pub(crate) fn picked(&self) -> Vec<(&'a str, i64, Option<i64>)> {
        (0..self.vehicle_id.len())
            .map(|i| {
                let ms = self.ts[i].unix_timestamp_nanos() / 1_000_000;
                (self.vehicle_id[i], ms as i64, self.seq[i])
            })
            .collect()
    }

    /// The fences of each row, as the upsert receives them.
    #[cfg(test)]
    pub(crate) fn fences(&self) -> &[String] {
        &self.fences
    }

    /// The statement's parameters.
    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.vehicle_id,
            &self.ts,
            &self.seq,
            &self.lat,
            &self.lon,
            &self.speed_kmh,
            &self.heading_deg,
            &self.soc_pct,
            &self.charging,
            &self.ignition,
            &self.h3_cell,
            &self.fences,
        ]
    }
}

/// Epoch milliseconds as a timestamp, if representable.
fn timestamp(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// The cell of the highest resolution, as stored in `h3_cell`.
///
/// H3 indexes keep their top bit clear, so the cast never changes a valid
/// cell's value.
pub(crate) fn finest_cell(cells: &[(u8, u64)]) -> Option<i64> {
    cells
        .iter()
        .max_by_key(|(res, _)| *res)
        .map(|(_, cell)| *cell as i64)
}

/// `s` with NUL characters (which PostgreSQL text cannot hold) replaced by
/// U+FFFD, borrowed when there are none.
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Size of a one-dimensional `text[]` in binary format as postgres-types
/// encodes it (with its one dimension even when empty).
fn text_array_len<'s>(items: impl IntoIterator<Item = &'s str>) -> usize {
    // Dimension count, has-null flag, element type, the dimension's length
    // and lower bound; then a length word per element.
    20 + items.into_iter().map(|s| 4 + s.len()).sum::<usize>()
}

/// The geofence ids of a ping, sent as `text[]` (an empty array when there
/// are none). Borrowed, so a row stays small.
#[derive(Debug)]
struct Fences<'a>(&'a [Arc<str>]);

impl Fences<'_> {
    /// The ids as a JSON array, for the `vehicle_latest` upsert.
    fn json(&self) -> String {
        let ids: Vec<&str> = self.0.iter().map(|f| &**f).collect();
        // A list of strings always serializes.
        serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned())
    }
}

impl ToSql for Fences<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let ids: Vec<&str> = self.0.iter().map(|f| &**f).collect();
        ids.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <Vec<&str> as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// The quality flags of a ping, sent as `text[]` of their names
/// ([`PingFlags::names`]; an empty array when none is set).
#[derive(Debug)]
struct Flags(PingFlags);

impl ToSql for Flags {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let names: Vec<&str> = self.0.names().collect();
        names.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <Vec<&str> as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// JSON text sent as `jsonb` without building a `serde_json::Value`.
#[derive(Debug)]
struct JsonbText<'a>(Cow<'a, str>);

impl ToSql for JsonbText<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if *ty == Type::JSONB {
            // jsonb's binary format: a version byte, then the JSON text.
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSONB | Type::JSON)
    }

    to_sql_checked!();
}
