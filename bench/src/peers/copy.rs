//! The raw database ceiling: pings written by plain binary `COPY` straight
//! into fleetpipe's `telemetry` table.
//!
//! [`copy_ceiling`] drops the schema if it exists, creates it with
//! fleetpipe's own migrations ([`fleetpipe_sink::migrate`], so the table,
//! its dedupe constraint, its indexes and, when the extension is available,
//! its hypertable are exactly the sink's), then cuts the pings into batches
//! of `batch_rows` and lets `connections` connections take batches from a
//! shared counter, each batch one `COPY ... FROM STDIN (FORMAT binary)` in a
//! transaction of its own, as fast as PostgreSQL takes them. The schema is
//! **left in place** for the caller to inspect; [`super::drop_schema`]
//! removes it.
//!
//! What is timed: from the moment every connection is open and every row's
//! values are prepared until the last commit. The binary encoding of the
//! rows is timed (the sink pays it too); converting pings to column values
//! (timestamps, the H3 cell, the `attrs` JSON) is not, because in fleetpipe
//! that is the enrichment stage's work, not the database's.
//!
//! The rows carry the columns the sink's COPY fills (`TELEMETRY_COPY_COLUMNS`,
//! private to the sink, so repeated here) with the values the sink would
//! write for a ping of the default pipeline, except what depends on a
//! vehicle's history or on configuration:
//!
//! - `received_at` is the ping's device time and `source` is `mqtt`;
//! - `h3_cell` is the position's cell at resolution 9, the finest of the
//!   enrichment defaults (7 and 9);
//! - `fences` and `flags` are empty arrays and `distance_m` and
//!   `derived_speed_kmh` are NULL (as for a vehicle's first ping outside any
//!   fence).
//!
//! Duplicates: `telemetry` is unique on `(vehicle_id, ts, seq)`, where a
//! ping without seq has `seq = -1` ([`SEQ_NONE`], as the sink writes it),
//! and a plain COPY aborts its whole transaction on the first unique
//! violation. The sink skips a replayed ping (`ON CONFLICT DO
//! NOTHING`), so the peer does the equivalent before the timer starts: it
//! keeps the first ping of every key and reports the others in
//! [`CopyResult::duplicates_skipped`]. Both then store the same rows.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetpipe_model::Ping;
use fleetpipe_sink::timescale::{SEQ_NONE, TELEMETRY_COPY_COLUMNS, TELEMETRY_COPY_TYPES};
use fleetpipe_sink::{StorageMode, TimescaleConfig, migrate};
use h3o::{LatLng, Resolution};
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql};

use super::{PeerError, connect, quote_ident};

/// `source` written for every row: the MQTT gateway's name.
pub const SOURCE: &str = "mqtt";

/// Resolution of the `h3_cell` written: the finest of enrichment's default
/// resolutions (7 and 9).
pub const H3_RESOLUTION: Resolution = Resolution::Nine;

/// What one run of the ceiling achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyResult {
    /// Rows committed to `telemetry` (as counted by the COPYs).
    pub rows: u64,
    /// Pings left out because an earlier ping had the same `(vehicle_id,
    /// ts, seq)`: the rows fleetpipe's sink would skip as replays.
    pub duplicates_skipped: u64,
    /// Transactions committed (one COPY each).
    pub batches: usize,
    /// Connections that copied in parallel.
    pub connections: usize,
    /// The storage layout the migrations chose.
    pub mode: StorageMode,
    /// From the first COPY until the last commit.
    pub elapsed: Duration,
    /// `rows / elapsed`.
    pub rows_per_sec: f64,
}

/// Writes `pings` into a fresh `{schema}.telemetry` (fleetpipe's schema,
/// TimescaleDB used when available, as with the sink's default
/// `timescaledb = "auto"`) by plain binary COPY over `connections`
/// connections in transactions of `batch_rows` rows. See the module docs
/// for what is timed and which values are written. The schema is left in
/// place.
///
/// # Errors
///
/// [`PeerError::InvalidArgument`] for zero connections or batch rows;
/// [`PeerError::Row`] for a ping the table cannot hold (a `seq` beyond
/// `bigint`, a timestamp before 1970); [`PeerError::Migrate`] and
/// [`PeerError::Db`] for database failures.
pub async fn copy_ceiling(
    url: &str,
    schema: &str,
    pings: &[Ping],
    connections: usize,
    batch_rows: usize,
) -> Result<CopyResult, PeerError> {
    let config = TimescaleConfig {
        schema: schema.to_owned(),
        ..TimescaleConfig::new(url)
    };
    copy_ceiling_with(&config, pings, connections, batch_rows).await
}

/// Like [`copy_ceiling`], with fleetpipe's sink configuration: `url`,
/// `schema` and `timescaledb` are used (so the ceiling can be measured on
/// the same layout as a fleetpipe run that set `timescaledb = "off"`); the
/// pool and batch settings are not, `connections` and `batch_rows` are.
///
/// # Errors
///
/// As [`copy_ceiling`].
pub async fn copy_ceiling_with(
    config: &TimescaleConfig,
    pings: &[Ping],
    connections: usize,
    batch_rows: usize,
) -> Result<CopyResult, PeerError> {
    if connections == 0 || batch_rows == 0 {
        return Err(PeerError::InvalidArgument(format!(
            "connections ({connections}) and batch_rows ({batch_rows}) must be at least 1"
        )));
    }
    let (rows, duplicates_skipped) = prepare(pings)?;
    let rows = Arc::new(rows);

    let admin = connect(&config.url).await?;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(&config.schema)
        ))
        .await
        .map_err(PeerError::db("drop schema"))?;
    let mode = migrate(config).await?;

    // Every connection open and its statement prepared before the clock
    // starts: connection setup is not what the ceiling measures.
    let copy_sql = format!(
        "COPY {}.telemetry ({TELEMETRY_COPY_COLUMNS}) FROM STDIN (FORMAT binary)",
        quote_ident(&config.schema)
    );
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = connect(&config.url).await?;
        let statement = client
            .prepare(&copy_sql)
            .await
            .map_err(PeerError::db("prepare COPY"))?;
        workers.push((client, statement));
    }

    let batches = rows.len().div_ceil(batch_rows);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (mut client, statement) in workers {
        let rows = Arc::clone(&rows);
        let next = Arc::clone(&next);
        let failed = Arc::clone(&failed);
        tasks.spawn(async move {
            let mut copied = 0u64;
            // Batches are handed out in input order, each to whichever
            // connection is free: a slow commit on one connection does not
            // hold the others back.
            while !failed.load(Ordering::Relaxed) {
                let start = next
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_mul(batch_rows);
                let Some(chunk) = rows.get(start..rows.len().min(start.saturating_add(batch_rows)))
                else {
                    break;
                };
                if chunk.is_empty() {
                    break;
                }
                match copy_batch(&mut client, &statement, chunk).await {
                    Ok(n) => copied += n,
                    Err(e) => {
                        // No point in the others going on: the run is lost.
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok::<_, PeerError>(copied)
        });
    }
    let mut copied = 0u64;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(n)) => copied += n,
            // Keep the first failure.
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(PeerError::Task(e));
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(CopyResult {
        rows: copied,
        duplicates_skipped,
        batches,
        connections,
        mode,
        elapsed,
        rows_per_sec: copied as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
    })
}

/// Copies `rows` in one transaction and commits; returns the rows copied.
/// `statement` is a prepared `COPY {schema}.telemetry
/// ({TELEMETRY_COPY_COLUMNS}) FROM STDIN (FORMAT binary)`.
///
/// # Errors
///
/// [`PeerError::Db`] when any step fails (the transaction is rolled back).
pub async fn copy_batch(
    client: &mut tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    rows: &[CopyRow],
) -> Result<u64, PeerError> {
    let txn = client.transaction().await.map_err(PeerError::db("begin"))?;
    let sink = txn
        .copy_in(statement)
        .await
        .map_err(PeerError::db("start COPY"))?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &TELEMETRY_COPY_TYPES));
    for row in rows {
        writer
            .as_mut()
            .write(&row.values())
            .await
            .map_err(PeerError::db("COPY a row"))?;
    }
    let copied = writer
        .finish()
        .await
        .map_err(PeerError::db("finish COPY"))?;
    txn.commit().await.map_err(PeerError::db("commit"))?;
    Ok(copied)
}

/// The rows to copy, duplicates of the table's key left out, and how many
/// were left out.
fn prepare(pings: &[Ping]) -> Result<(Vec<CopyRow>, u64), PeerError> {
    let mut seen: HashSet<(&str, i64, Option<u64>)> = HashSet::with_capacity(pings.len());
    let mut rows = Vec::with_capacity(pings.len());
    let mut duplicates = 0u64;
    for (index, ping) in pings.iter().enumerate() {
        // The key as PostgreSQL compares it: two pings without seq both have
        // seq = SEQ_NONE, so they are equal, as Option's equality has it too.
        if !seen.insert((ping.vehicle_id.as_str(), ping.ts_ms, ping.seq)) {
            duplicates += 1;
            continue;
        }
        rows.push(CopyRow::new(ping).map_err(|reason| PeerError::Row { index, reason })?);
    }
    Ok((rows, duplicates))
}

/// One ping as the values of the sink's COPY
/// ([`TELEMETRY_COPY_COLUMNS`]), prepared before a timer starts. Built
/// from a bare ping ([`CopyRow::new`]: no enrichment, as the raw ceiling
/// writes it); the sink benchmark fills the enrichment fields in as the sink
/// would.
#[derive(Debug)]
pub struct CopyRow {
    pub vehicle_id: String,
    pub ts: SystemTime,
    /// The ping's seq, or [`SEQ_NONE`]: the column is NOT NULL.
    pub seq: i64,
    pub received_at: SystemTime,
    pub source: &'static str,
    pub lat: f64,
    pub lon: f64,
    pub alt_m: Option<f64>,
    pub speed_kmh: Option<f64>,
    pub heading_deg: Option<f64>,
    pub accuracy_m: Option<f64>,
    pub soc_pct: Option<f64>,
    pub battery_v: Option<f64>,
    pub charging: Option<bool>,
    pub odometer_km: Option<f64>,
    pub ignition: Option<bool>,
    pub h3_cell: Option<i64>,
    pub dtcs: Vec<String>,
    /// The attrs as JSON text; `Json` sends it as `jsonb` (a version byte,
    /// then the text), as the sink's own encoder does.
    pub attrs: Json<Box<RawValue>>,
    pub fences: Vec<String>,
    pub distance_m: Option<f64>,
    pub derived_speed_kmh: Option<f64>,
    pub flags: Vec<String>,
}

impl CopyRow {
    /// Converts a ping, or says why the table cannot hold it.
    pub fn new(p: &Ping) -> Result<Self, String> {
        let ts = u64::try_from(p.ts_ms)
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .map_err(|_| format!("ts {} is before 1970", p.ts_ms))?;
        let seq = p
            .seq
            .map(i64::try_from)
            .transpose()
            .map_err(|_| format!("seq {:?} does not fit a bigint column", p.seq))?
            .unwrap_or(SEQ_NONE);
        let attrs = serde_json::value::to_raw_value(&p.attrs)
            .map_err(|e| format!("attrs cannot be encoded as JSON: {e}"))?;
        // H3 indexes keep their top bit clear, so the cast never changes a
        // valid cell; the sink stores it the same way.
        let h3_cell = LatLng::new(p.lat, p.lon)
            .ok()
            .map(|ll| u64::from(ll.to_cell(H3_RESOLUTION)) as i64);
        Ok(Self {
            vehicle_id: p.vehicle_id.as_str().to_owned(),
            ts,
            seq,
            received_at: ts,
            source: SOURCE,
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
            h3_cell,
            dtcs: p.dtcs.clone(),
            attrs: Json(attrs),
            fences: Vec::new(),
            distance_m: None,
            derived_speed_kmh: None,
            flags: Vec::new(),
        })
    }

    /// The values in [`TELEMETRY_COPY_COLUMNS`] order.
    pub fn values(&self) -> [&(dyn ToSql + Sync); 23] {
        [
            &self.vehicle_id,
            &self.ts,
            &self.seq,
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
}
