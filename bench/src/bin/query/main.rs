//! The query API's latency benchmark: fleetpipe-query's router served over
//! real HTTP on 127.0.0.1 (an ephemeral port) with its real connection pool
//! on the local PostgreSQL, against a schema fleetpipe's migrations create
//! and this benchmark loads; and, in the same run, the same SQL timed
//! directly with tokio-postgres (the database's share of the latency) and
//! its `EXPLAIN (ANALYZE, BUFFERS)` plans.
//!
//! ```text
//! scripts/bench-query.sh      # builds, ensures PostgreSQL, runs this
//! target/release/fleetpipe-query-bench --help
//! ```
//!
//! Data (schema `fp_query_bench`, dropped first, dropped at the end unless
//! `--keep-schema`):
//!
//! - **one vehicle's day at 1 Hz** (`van-track`, 86,400 pings of yesterday,
//!   UTC): parked at a depot until 06:00, then driving legs of 8–25 minutes
//!   through a street grid (turns every 150–600 m, 25–55 km/h) with stops
//!   of 2–10 minutes, back to the depot from 19:00, GPS noise of ~1 m;
//! - **background telemetry** of other vehicles over the same day
//!   (`--background-vehicles` × `--background-pings`, 1,000,000 rows by
//!   default), inserted together with the track in time order, so the
//!   vehicle's rows are spread over the table's pages as a fleet's
//!   interleaved stream leaves them;
//! - **`--vehicles` (100,000) rows in `vehicle_latest`** spread over a
//!   city-sized area (13.10–13.70 E, 52.35–52.65 N, ~41 × 33 km; 60 %
//!   uniform, 40 % concentrated towards the centre), latest pings within
//!   the last 15 minutes (some `offline`), half of them moving.
//!
//! Then `VACUUM ANALYZE` (what autovacuum does to an insert-mostly table).
//!
//! Cases, each `--warmup` times, then `--iterations` times one after the
//! other (latency, not throughput), into an HDR histogram (µs):
//!
//! - `GET /v1/vehicles/van-track/track?from=…&to=…&max_points=1000` (the
//!   whole day), and its SQL as the handler sends it (the vehicle lookup of
//!   `query/sql/vehicle.sql`, then `query/sql/track.sql`, every row decoded);
//!   and the simplification alone (`fleetpipe_query::simplify`, in process,
//!   on the same 86,400 points);
//! - `GET /v1/vehicles?bbox=…&limit=N`, the first page and every page of
//!   the box walked with `cursor`, and `query/sql/vehicles.sql` the same
//!   way.
//!
//! The SQL is `query/sql/*.sql` itself (`include_str!`), rendered as
//! `query/src/db.rs` renders it and sent unprepared with bound parameters,
//! as the API sends it. Results: `summary.md`, `result.json` and
//! `explain-*.txt` in `--out`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use fleetpipe_bench::{host, peers};
use fleetpipe_query::config::FleetScope;
use fleetpipe_query::{ApiConfig, QueryApi, TokenConfig};
use fleetpipe_sink::timescale::{StorageMode, TimescaleConfig, migrate};
use hdrhistogram::Histogram;
use time::OffsetDateTime;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// The statements the API sends (read from `query/`, not copied).
const STATE_SQL: &str = include_str!("../../../../query/sql/state.sql");
const VEHICLE_SQL: &str = include_str!("../../../../query/sql/vehicle.sql");
const TRACK_SQL: &str = include_str!("../../../../query/sql/track.sql");
const VEHICLES_SQL: &str = include_str!("../../../../query/sql/vehicles.sql");

/// The schema this benchmark loads.
const SCHEMA: &str = "fp_query_bench";
/// The vehicle whose day is the track.
const TRACK_VEHICLE: &str = "van-track";
/// The bearer token the benchmark's API accepts (fleet scope).
const TOKEN: &str = "query-bench-token";
/// The API's defaults, as the handlers use them for the state rule.
const OFFLINE_AFTER: Duration = Duration::from_secs(300);
const MOVING_KMH: f64 = 5.0;
/// The city: west, south, east, north.
const AREA: [f64; 4] = [13.10, 52.35, 13.70, 52.65];
/// The depot the tracked van starts and ends at.
const DEPOT: (f64, f64) = (13.38, 52.51);

#[derive(Debug, Parser)]
#[command(about = "Latency of fleetpipe's query API (real HTTP) and of its SQL alone")]
struct Args {
    /// PostgreSQL to load and query.
    #[arg(
        long,
        env = "FLEETPIPE_BENCH_PG_URL",
        default_value = "postgresql://postgres@127.0.0.1:5432/test"
    )]
    pg_url: String,
    /// Timed requests per case.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Untimed requests per case before the timed ones.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Rows in vehicle_latest (besides the tracked van).
    #[arg(long, default_value_t = 100_000)]
    vehicles: u32,
    /// Other vehicles with telemetry over the tracked day.
    #[arg(long, default_value_t = 1_000)]
    background_vehicles: u32,
    /// Pings per background vehicle over the day.
    #[arg(long, default_value_t = 1_000)]
    background_pings: u32,
    /// The bounding box: minLon,minLat,maxLon,maxLat.
    #[arg(long, default_value = "13.36,52.48,13.44,52.52")]
    bbox: String,
    /// Page size of the bounding-box requests (api.max_limit is 1000).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Points the track is simplified to.
    #[arg(long, default_value_t = 1000)]
    max_points: usize,
    /// Where summary.md, result.json and the plans go.
    #[arg(long, default_value = "target/query-bench")]
    out: PathBuf,
    /// Leave the loaded schema in place (to try indexes or settings by hand).
    #[arg(long)]
    keep_schema: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await.map_err(|e| {
        // PostgreSQL's own message, which tokio-postgres' Display leaves out.
        let detail = e
            .chain()
            .find_map(|c| c.downcast_ref::<tokio_postgres::Error>()?.as_db_error())
            .map(|db| format!("PostgreSQL: {}: {}", db.code().code(), db.message()));
        match detail {
            Some(detail) => e.context(detail),
            None => e,
        }
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.iterations > 0 && args.limit > 0 && args.max_points >= 2,
        "--iterations, --limit must be positive and --max-points at least 2"
    );
    let bbox = parse_bbox(&args.bbox)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {:?}", args.out))?;
    let started = OffsetDateTime::now_utc();

    let db = peers::connect(&args.pg_url).await.context("connect")?;
    db.batch_execute("SET client_min_messages = warning")
        .await?;
    db.batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    let sink = TimescaleConfig {
        schema: SCHEMA.to_owned(),
        ..TimescaleConfig::new(args.pg_url.clone())
    };
    let mode = migrate(&sink).await.context("fleetpipe's migrations")?;
    eprintln!("query bench: schema {SCHEMA}, storage mode {mode}");

    let day0 = day_start(started);
    let load = Instant::now();
    let track = van_day();
    let data = load_data(&db, &args, day0, &track).await?;
    let load_s = load.elapsed().as_secs_f64();
    eprintln!(
        "query bench: loaded in {load_s:.1} s: {} telemetry rows ({} MiB with indexes), {} in vehicle_latest, {} in the box",
        data.telemetry_rows,
        data.telemetry_mib.round(),
        data.latest_rows,
        data.in_bbox
    );

    // The API, served on an ephemeral port of loopback.
    let mut config = ApiConfig::new(args.pg_url.clone());
    config.schema = SCHEMA.to_owned();
    config.tokens = vec![TokenConfig {
        name: "bench".to_owned(),
        sha256: hex(&fleetpipe_query::auth::token_hash(TOKEN)),
        scope: Some(FleetScope::Fleet),
        vehicles: None,
        fences: None,
    }];
    // The feed is off (no `[api.feed]`): nothing runs until shutdown.
    let api = QueryApi::start(
        &config,
        fleetpipe_geofence::shared(Default::default()),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .context("start the query API")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, api.router()).await });
    let http = reqwest::Client::new();

    let from = day0;
    let to = day0 + time::Duration::days(1);
    let rfc = |t: OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let track_url = format!(
        "{base}/v1/vehicles/{TRACK_VEHICLE}/track?from={}&to={}&max_points={}",
        rfc(from),
        rfc(to),
        args.max_points
    );
    let bbox_url = format!("{base}/v1/vehicles?bbox={}&limit={}", args.bbox, args.limit);

    let sql = Statements::new();
    let mut cases = Vec::new();

    // ---- the 24 h track ----
    let check = get_json(&http, &track_url).await?;
    let points_read = check["properties"]["points_read"].as_u64().unwrap_or(0);
    let kept = check["geometry"]["coordinates"]
        .as_array()
        .map_or(0, Vec::len);
    ensure!(
        points_read == 86_400 && kept >= 2 && kept <= args.max_points,
        "the track answered {points_read} points read, {kept} kept"
    );
    let track_bytes = get_bytes(&http, &track_url).await?.len();
    cases.push(
        measure(&args, "API: GET …/track (24 h, max_points)", || async {
            get_bytes(&http, &track_url).await.map(|_| ())
        })
        .await?,
    );
    cases.push(
        measure(&args, "SQL: vehicle.sql + track.sql", || async {
            let rows = sql.track(&db, from, to).await?;
            ensure!(
                rows.len() == 86_400,
                "track.sql returned {} rows",
                rows.len()
            );
            Ok(())
        })
        .await?,
    );
    let points: Vec<(f64, f64)> = track.iter().map(|p| (p.lon, p.lat)).collect();
    cases.push(
        measure(
            &args,
            "in process: simplify 86,400 → max_points",
            || async {
                let kept = fleetpipe_query::simplify::simplify(&points, args.max_points);
                ensure!(kept.len() <= args.max_points);
                Ok(())
            },
        )
        .await?,
    );

    // ---- the bounding box ----
    let first = get_json(&http, &bbox_url).await?;
    let first_page = first["vehicles"].as_array().map_or(0, Vec::len);
    let (pages, walked) = walk_api(&http, &bbox_url).await?;
    ensure!(
        walked == data.in_bbox,
        "walking the box's pages gave {walked} vehicles, the box holds {}",
        data.in_bbox
    );
    let bbox_bytes = get_bytes(&http, &bbox_url).await?.len();
    cases.push(
        measure(&args, "API: GET /v1/vehicles?bbox (first page)", || async {
            get_bytes(&http, &bbox_url).await.map(|_| ())
        })
        .await?,
    );
    cases.push(
        measure(&args, "SQL: vehicles.sql (first page)", || async {
            sql.vehicles(&db, bbox, "", args.limit).await.map(|_| ())
        })
        .await?,
    );
    cases.push(
        measure(
            &args,
            &format!("API: every page of the box ({pages} requests)"),
            || async {
                let (_, n) = walk_api(&http, &bbox_url).await?;
                ensure!(n == data.in_bbox);
                Ok(())
            },
        )
        .await?,
    );
    cases.push(
        measure(
            &args,
            &format!("SQL: vehicles.sql, every page ({pages} queries)"),
            || async {
                let n = sql.walk(&db, bbox, args.limit).await?;
                ensure!(n == data.in_bbox);
                Ok(())
            },
        )
        .await?,
    );

    // ---- plans ----
    let plans = [
        ("track", sql.explain_track(&db, from, to).await?),
        (
            "bbox-first-page",
            sql.explain_vehicles(&db, bbox, "", args.limit).await?,
        ),
    ];
    for (name, plan) in &plans {
        let path = args.out.join(format!("explain-{name}.txt"));
        std::fs::write(&path, plan).with_context(|| format!("write {path:?}"))?;
    }

    server.abort();
    let settings = pg_settings(&db).await?;
    let postgres: String = db.query_one("SELECT version()", &[]).await?.get(0);
    if !args.keep_schema {
        db.batch_execute(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
            .await?;
    }

    let run = Run {
        started,
        mode,
        postgres: postgres
            .split(" on ")
            .next()
            .unwrap_or(&postgres)
            .to_owned(),
        settings,
        data,
        load_s,
        first_page,
        pages,
        track_bytes,
        bbox_bytes,
        kept,
        cases,
        plans: plans
            .iter()
            .map(|(n, p)| (n.to_string(), p.clone()))
            .collect(),
    };
    let summary = run.summary(&args);
    std::fs::write(args.out.join("summary.md"), &summary)?;
    std::fs::write(
        args.out.join("result.json"),
        serde_json::to_string_pretty(&run.json(&args))?,
    )?;
    println!("{summary}");
    Ok(())
}

// ---- the data -----------------------------------------------------------------

/// One ping of the tracked van.
#[derive(Debug, Clone, Copy)]
struct Point {
    lat: f64,
    lon: f64,
    speed_kmh: f64,
    heading_deg: f64,
}

/// A small deterministic generator (SplitMix64), so every run loads the
/// same track.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        #[allow(clippy::cast_precision_loss)] // 53 bits are plenty
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        lo + unit * (hi - lo)
    }
}

/// A delivery van's day at 1 Hz: parked at the depot until 06:00, driving
/// legs through a street grid with stops until 19:00, then back to the
/// depot and parked.
fn van_day() -> Vec<Point> {
    const M_PER_DEG_LAT: f64 = 111_320.0;
    let mut rng = Rng(20);
    let (mut lon, mut lat) = DEPOT;
    let mut heading: f64 = 90.0;
    let mut points = Vec::with_capacity(86_400);
    let mut leg_left = 0u32; // seconds of the current leg or stop
    let mut driving = false;
    let mut to_turn = 0.0_f64; // metres until the next turn
    let mut speed = 0.0_f64;
    for second in 0..86_400u32 {
        let hour = second / 3600;
        let home = hour >= 19;
        if !(6..19).contains(&hour) && !home {
            driving = false;
        } else if home {
            let d_lat = (DEPOT.1 - lat) * M_PER_DEG_LAT;
            let d_lon = (DEPOT.0 - lon) * M_PER_DEG_LAT * lat.to_radians().cos();
            driving = d_lat.hypot(d_lon) > 30.0;
            if driving && to_turn <= 0.0 {
                // Head for the depot, still along streets (snap to 45°).
                heading = (d_lon.atan2(d_lat).to_degrees() / 45.0).round() * 45.0;
                to_turn = rng.range(150.0, 600.0);
            }
        } else if leg_left == 0 {
            driving = !driving;
            leg_left = if driving {
                rng.range(480.0, 1500.0) as u32
            } else {
                rng.range(120.0, 600.0) as u32
            };
        } else {
            leg_left -= 1;
        }
        if driving {
            let target = rng.range(25.0, 55.0);
            speed += (target - speed) * 0.1;
            let step = speed / 3.6;
            to_turn -= step;
            if to_turn <= 0.0 && !home {
                // A corner: left, right or straight on; away from the
                // city's edge.
                heading += [-90.0, 90.0, 0.0][(rng.next() % 3) as usize];
                let (w, s, e, n) = (
                    AREA[0] + 0.05,
                    AREA[1] + 0.03,
                    AREA[2] - 0.05,
                    AREA[3] - 0.03,
                );
                if lon < w {
                    heading = 90.0;
                } else if lon > e {
                    heading = 270.0;
                } else if lat < s {
                    heading = 0.0;
                } else if lat > n {
                    heading = 180.0;
                }
                to_turn = rng.range(150.0, 600.0);
            }
            // A little curvature between corners.
            heading += rng.range(-0.5, 0.5);
            let h = heading.to_radians();
            lat += step * h.cos() / M_PER_DEG_LAT;
            lon += step * h.sin() / (M_PER_DEG_LAT * lat.to_radians().cos());
        } else {
            speed = 0.0;
        }
        let noise = 1.0e-5;
        points.push(Point {
            lat: lat + rng.range(-noise, noise),
            lon: lon + rng.range(-noise, noise),
            speed_kmh: speed,
            heading_deg: heading.rem_euclid(360.0),
        });
    }
    points
}

/// What was loaded.
#[derive(Debug)]
struct Data {
    telemetry_rows: i64,
    telemetry_mib: f64,
    latest_rows: i64,
    latest_mib: f64,
    in_bbox: usize,
}

async fn load_data(
    db: &Client,
    args: &Args,
    day0: OffsetDateTime,
    track: &[Point],
) -> anyhow::Result<Data> {
    let s = SCHEMA;
    db.batch_execute(
        "CREATE TEMP TABLE qbench_track (i int4, lat float8, lon float8, speed float8, heading float8)",
    )
    .await?;
    let idx: Vec<i32> = (0..86_400).collect();
    let col = |f: fn(&Point) -> f64| track.iter().map(f).collect::<Vec<f64>>();
    db.execute(
        "INSERT INTO qbench_track SELECT * FROM unnest($1::int4[], $2::float8[], $3::float8[], $4::float8[], $5::float8[])",
        &[
            &idx,
            &col(|p| p.lat),
            &col(|p| p.lon),
            &col(|p| p.speed_kmh),
            &col(|p| p.heading_deg),
        ],
    )
    .await?;
    // The van and the background fleet in one time-ordered stream, as the
    // sink's batches leave them in the heap.
    let step = 86_400.0 / f64::from(args.background_pings.max(1));
    db.execute("SELECT setseed(0.42)", &[]).await?;
    db.execute(
        &format!(
            "INSERT INTO {s}.telemetry (vehicle_id, ts, seq, received_at, source, lat, lon, alt_m, \
                 speed_kmh, heading_deg, accuracy_m, soc_pct, charging, odometer_km, ignition, fences, flags)
             SELECT vehicle_id, ts, seq, ts + interval '200 ms', 'mqtt', lat, lon, 35, speed, heading, 4,
                    soc, false, odo, speed > 0, '{{}}', '{{}}'
             FROM (
                 SELECT '{TRACK_VEHICLE}' AS vehicle_id, $1::timestamptz + make_interval(secs => i) AS ts,
                        i::int8 AS seq, lat, lon, speed, heading, 90 - i / 2000.0 AS soc, 1000 + i / 100.0 AS odo
                 FROM qbench_track
                 UNION ALL
                 SELECT 'veh-' || lpad(v::text, 6, '0'),
                        $1::timestamptz + make_interval(secs => floor((k + ((v * 7919) % 1000) / 1000.0) * $2::float8)),
                        k::int8, 52.35 + random() * 0.3, 13.10 + random() * 0.6,
                        random() * 60, random() * 360, 80 - k / 100.0, 5000 + k / 10.0
                 FROM generate_series(0, $3::int4 - 1) v, generate_series(0, $4::int4 - 1) k
             ) r
             ORDER BY ts"
        ),
        &[
            &day0,
            &step,
            &i32::try_from(args.background_vehicles)?,
            &i32::try_from(args.background_pings)?,
        ],
    )
    .await?;
    // 100,000 vehicles over the city: 60 % uniform, 40 % towards the centre
    // (the mean of three uniforms), pinged within the last 15 minutes.
    db.execute(
        &format!(
            "INSERT INTO {s}.vehicle_latest (vehicle_id, ts, seq, lat, lon, speed_kmh, heading_deg, soc_pct, charging, ignition, fences)
             SELECT 'veh-' || lpad(i::text, 6, '0'), now() - random() * interval '15 min', 1,
                    CASE WHEN c THEN 52.35 + 0.3 * (random() + random() + random()) / 3 ELSE 52.35 + 0.3 * random() END,
                    CASE WHEN c THEN 13.10 + 0.6 * (random() + random() + random()) / 3 ELSE 13.10 + 0.6 * random() END,
                    CASE WHEN random() < 0.5 THEN 0 ELSE random() * 60 END, random() * 360, random() * 100,
                    random() < 0.05, true, '{{}}'
             FROM (SELECT i, random() < 0.4 AS c FROM generate_series(0, $1::int4 - 1) i) g"
        ),
        &[&i32::try_from(args.vehicles)?],
    )
    .await?;
    let Some(last) = track.last() else {
        bail!("the track has no points")
    };
    db.execute(
        &format!(
            "INSERT INTO {s}.vehicle_latest (vehicle_id, ts, seq, lat, lon, speed_kmh, heading_deg, soc_pct, charging, ignition, fences)
             VALUES ($1, $2, 86399, $3, $4, 0, $5, 47, false, false, '{{}}')"
        ),
        &[
            &TRACK_VEHICLE,
            &(day0 + time::Duration::seconds(86_399)),
            &last.lat,
            &last.lon,
            &last.heading_deg,
        ],
    )
    .await?;
    for table in ["telemetry", "vehicle_latest"] {
        db.batch_execute(&format!("VACUUM ANALYZE {s}.{table}"))
            .await?;
    }
    // The load's dirty pages written now rather than by a checkpoint in the
    // middle of the timed requests (needs a superuser or pg_checkpoint; the
    // run goes on without it).
    if let Err(e) = db.batch_execute("CHECKPOINT").await {
        eprintln!("query bench: CHECKPOINT refused ({e}); a checkpoint may fall into the run");
    }
    let count = |table: &'static str| async move {
        let row = db
            .query_one(
                &format!(
                    "SELECT count(*), pg_total_relation_size('{s}.{table}')::float8 / 1048576 FROM {s}.{table}"
                ),
                &[],
            )
            .await?;
        anyhow::Ok((row.get::<_, i64>(0), row.get::<_, f64>(1)))
    };
    let (telemetry_rows, telemetry_mib) = count("telemetry").await?;
    let (latest_rows, latest_mib) = count("vehicle_latest").await?;
    let bbox = parse_bbox(&args.bbox)?;
    let in_bbox: i64 = db
        .query_one(
            &format!(
                "SELECT count(*) FROM {s}.vehicle_latest WHERE lon BETWEEN $1 AND $3 AND lat BETWEEN $2 AND $4"
            ),
            &[&bbox[0], &bbox[1], &bbox[2], &bbox[3]],
        )
        .await?
        .get(0);
    Ok(Data {
        telemetry_rows,
        telemetry_mib,
        latest_rows,
        latest_mib,
        in_bbox: usize::try_from(in_bbox)?,
    })
}

// ---- the SQL, as the API sends it ----------------------------------------------

struct Statements {
    vehicle: String,
    track: String,
    vehicles: String,
}

impl Statements {
    /// Rendered as `query/src/db.rs` renders them.
    fn new() -> Self {
        let render = |text: &str| {
            text.replace("{state}", STATE_SQL)
                .replace("{schema}", &format!("\"{SCHEMA}\""))
        };
        Self {
            vehicle: render(VEHICLE_SQL),
            track: render(TRACK_SQL),
            vehicles: render(VEHICLES_SQL),
        }
    }

    fn cutoff() -> OffsetDateTime {
        OffsetDateTime::now_utc() - OFFLINE_AFTER
    }

    /// The track handler's queries: the vehicle's visibility, then its
    /// pings (limit: api.max_track_rows + 1), every row decoded.
    async fn track(
        &self,
        db: &Client,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> anyhow::Result<Vec<(OffsetDateTime, f64, f64, Option<f64>)>> {
        let none: Option<Vec<String>> = None;
        let found = db
            .query(
                &self.vehicle,
                &[&Self::cutoff(), &MOVING_KMH, &TRACK_VEHICLE, &none, &none],
            )
            .await?;
        ensure!(found.len() == 1, "the tracked vehicle is missing");
        let params = self.track_params(from, to, &none);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
        let rows = db.query(&self.track, &refs).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("ts"), r.get("lat"), r.get("lon"), r.get("speed_kmh")))
            .collect())
    }

    fn track_params<'a>(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        none: &'a Option<Vec<String>>,
    ) -> Vec<Box<dyn ToSql + Sync + Send + 'a>> {
        let limit = i64::try_from(ApiConfig::default_max_track_rows() + 1).unwrap_or(i64::MAX);
        vec![
            Box::new(TRACK_VEHICLE),
            Box::new(from),
            Box::new(to),
            Box::new(none),
            Box::new(limit),
        ]
    }

    async fn explain_track(
        &self,
        db: &Client,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> anyhow::Result<String> {
        let none: Option<Vec<String>> = None;
        let params = self.track_params(from, to, &none);
        explain(db, &self.track, &params).await
    }

    fn vehicles_params<'a>(
        &self,
        bbox: [f64; 4],
        after: &'a str,
        limit: usize,
    ) -> Vec<Box<dyn ToSql + Sync + Send + 'a>> {
        let none: Option<Vec<String>> = None;
        let no_text: Option<String> = None;
        let no_time: Option<OffsetDateTime> = None;
        vec![
            Box::new(Self::cutoff()),
            Box::new(MOVING_KMH),
            Box::new(after),
            Box::new(none.clone()),
            Box::new(none),
            Box::new(Some(bbox[0])),
            Box::new(Some(bbox[1])),
            Box::new(Some(bbox[2])),
            Box::new(Some(bbox[3])),
            Box::new(no_text.clone()),
            Box::new(no_time),
            Box::new(no_text),
            Box::new(i64::try_from(limit + 1).unwrap_or(i64::MAX)),
        ]
    }

    /// One page (limit + 1 rows, as the handler asks), decoded; the last
    /// vehicle id of the page when there is a next one.
    async fn vehicles(
        &self,
        db: &Client,
        bbox: [f64; 4],
        after: &str,
        limit: usize,
    ) -> anyhow::Result<(usize, Option<String>)> {
        let params = self.vehicles_params(bbox, after, limit);
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
        let rows = db.query(&self.vehicles, &refs).await?;
        let decoded: Vec<(String, f64, f64, String)> = rows
            .iter()
            .map(|r| {
                let _: OffsetDateTime = r.get("ts");
                let _: Option<Vec<String>> = r.get("fences");
                (
                    r.get("vehicle_id"),
                    r.get("lat"),
                    r.get("lon"),
                    r.get("state"),
                )
            })
            .collect();
        let n = decoded.len().min(limit);
        let next = (decoded.len() > limit).then(|| decoded[limit - 1].0.clone());
        Ok((n, next))
    }

    async fn walk(&self, db: &Client, bbox: [f64; 4], limit: usize) -> anyhow::Result<usize> {
        let mut after = String::new();
        let mut total = 0;
        loop {
            let (n, next) = self.vehicles(db, bbox, &after, limit).await?;
            total += n;
            match next {
                Some(last) => after = last,
                None => return Ok(total),
            }
        }
    }

    async fn explain_vehicles(
        &self,
        db: &Client,
        bbox: [f64; 4],
        after: &str,
        limit: usize,
    ) -> anyhow::Result<String> {
        let params = self.vehicles_params(bbox, after, limit);
        explain(db, &self.vehicles, &params).await
    }
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of `sql` with `params` bound (so the plan is
/// the one the API gets: absent filters fold away).
async fn explain(
    db: &Client,
    sql: &str,
    params: &[Box<dyn ToSql + Sync + Send + '_>],
) -> anyhow::Result<String> {
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as _).collect();
    let rows = db
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &refs)
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

// ---- HTTP -----------------------------------------------------------------------

async fn get_bytes(http: &reqwest::Client, url: &str) -> anyhow::Result<bytes::Bytes> {
    let response = http.get(url).bearer_auth(TOKEN).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("{url}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_slice(&get_bytes(http, url).await?)?)
}

/// Every page of a list: (requests, vehicles).
async fn walk_api(http: &reqwest::Client, url: &str) -> anyhow::Result<(usize, usize)> {
    let (mut pages, mut vehicles) = (0, 0);
    let mut next: Option<String> = None;
    loop {
        let page_url = match &next {
            Some(c) => format!("{url}&cursor={c}"),
            None => url.to_owned(),
        };
        let page = get_json(http, &page_url).await?;
        pages += 1;
        vehicles += page["vehicles"].as_array().map_or(0, Vec::len);
        match page["next_cursor"].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => return Ok((pages, vehicles)),
        }
    }
}

// ---- measuring --------------------------------------------------------------------

struct Case {
    name: String,
    hist: Histogram<u64>,
}

impl Case {
    fn ms(&self, q: f64) -> f64 {
        ms(self.hist.value_at_quantile(q))
    }
    fn max_ms(&self) -> f64 {
        ms(self.hist.max())
    }
    fn mean_ms(&self) -> f64 {
        self.hist.mean() / 1000.0
    }
}

#[allow(clippy::cast_precision_loss)] // microseconds, far below 2^52
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn measure<F, Fut>(args: &Args, name: &str, mut f: F) -> anyhow::Result<Case>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..args.warmup {
        f().await.with_context(|| format!("{name} (warm-up)"))?;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for _ in 0..args.iterations {
        let t = Instant::now();
        f().await.with_context(|| name.to_owned())?;
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        hist.record(us.max(1))?;
    }
    let case = Case {
        name: name.to_owned(),
        hist,
    };
    eprintln!(
        "query bench: {name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        case.ms(0.5),
        case.ms(0.99),
        case.max_ms()
    );
    Ok(case)
}

// ---- the report ---------------------------------------------------------------------

struct Run {
    started: OffsetDateTime,
    mode: StorageMode,
    postgres: String,
    settings: Vec<String>,
    data: Data,
    load_s: f64,
    first_page: usize,
    pages: usize,
    track_bytes: usize,
    bbox_bytes: usize,
    kept: usize,
    cases: Vec<Case>,
    plans: Vec<(String, String)>,
}

impl Run {
    fn summary(&self, args: &Args) -> String {
        let mut s = String::new();
        let d = &self.data;
        #[allow(clippy::cast_precision_loss)]
        let share = d.in_bbox as f64 * 100.0 / f64::from(args.vehicles);
        let _ = writeln!(s, "# Query API latency\n");
        let _ = writeln!(
            s,
            "Run of {} UTC, commit {}; {}, {} cores, {:.0} GiB, {}; {}; {}.\n",
            self.started
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            host::command("git", &["describe", "--always", "--dirty"]),
            host::this_cpu(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            host::memory_gib(),
            host::command("uname", &["-sr"]),
            self.postgres,
            self.settings.join(", ")
        );
        let _ = writeln!(
            s,
            "Database mode: **{}**. Schema `{SCHEMA}` from fleetpipe's migrations, loaded in {:.0} s: \
             `telemetry` {} rows ({:.0} MiB with indexes): `{TRACK_VEHICLE}`'s day at 1 Hz (86,400) \
             in time order among {} other vehicles' {} pings each; `vehicle_latest` {} rows \
             ({:.0} MiB). Box `{}`: {} vehicles ({share:.1} % of {}), {} on the first page, {} pages of {}.\n",
            self.mode,
            self.load_s,
            d.telemetry_rows,
            d.telemetry_mib,
            args.background_vehicles,
            args.background_pings,
            d.latest_rows,
            d.latest_mib,
            args.bbox,
            d.in_bbox,
            args.vehicles,
            self.first_page,
            self.pages,
            args.limit,
        );
        let _ = writeln!(
            s,
            "Sequential requests over one keep-alive connection (the API: fleetpipe-query's router, \
             axum on 127.0.0.1, its own pool of 8), {} warm-up then {} timed per case. \
             Track answer: {} of 86,400 points, {} KiB; first bbox page {} KiB.\n",
            args.warmup,
            args.iterations,
            self.kept,
            self.track_bytes / 1024,
            self.bbox_bytes / 1024
        );
        let _ = writeln!(s, "| case | p50 ms | p99 ms | max ms | mean ms |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for c in &self.cases {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                c.name,
                c.ms(0.5),
                c.ms(0.99),
                c.max_ms(),
                c.mean_ms()
            );
        }
        for (name, plan) in &self.plans {
            let _ = writeln!(
                s,
                "\n`EXPLAIN (ANALYZE, BUFFERS)`, {name} (explain-{name}.txt):\n\n```\n{}```",
                plan
            );
        }
        s
    }

    fn json(&self, args: &Args) -> serde_json::Value {
        serde_json::json!({
            "started": self.started.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "commit": host::command("git", &["describe", "--always", "--dirty"]),
            "cpu": host::this_cpu(),
            "postgres": self.postgres,
            "settings": self.settings,
            "mode": self.mode.to_string(),
            "iterations": args.iterations,
            "warmup": args.warmup,
            "telemetry_rows": self.data.telemetry_rows,
            "vehicle_latest_rows": self.data.latest_rows,
            "bbox": args.bbox,
            "in_bbox": self.data.in_bbox,
            "pages": self.pages,
            "limit": args.limit,
            "max_points": args.max_points,
            "cases": self.cases.iter().map(|c| serde_json::json!({
                "name": c.name,
                "p50_ms": c.ms(0.5),
                "p99_ms": c.ms(0.99),
                "max_ms": c.max_ms(),
                "mean_ms": c.mean_ms(),
            })).collect::<Vec<_>>(),
        })
    }
}

async fn pg_settings(db: &Client) -> anyhow::Result<Vec<String>> {
    const NAMES: [&str; 6] = [
        "shared_buffers",
        "work_mem",
        "effective_cache_size",
        "random_page_cost",
        "max_parallel_workers_per_gather",
        "jit",
    ];
    let rows = db
        .query(
            "SELECT name || '=' || current_setting(name) FROM pg_settings \
             WHERE name = ANY($1) ORDER BY array_position($1, name)",
            &[&&NAMES[..]],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_bbox(text: &str) -> anyhow::Result<[f64; 4]> {
    let v: Vec<f64> = text
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--bbox: minLon,minLat,maxLon,maxLat")?;
    match v[..] {
        [a, b, c, d] if a < c && b < d => Ok([a, b, c, d]),
        _ => bail!("--bbox: minLon,minLat,maxLon,maxLat with min < max"),
    }
}

/// Midnight UTC of the day before `now`: the tracked day is wholly past.
fn day_start(now: OffsetDateTime) -> OffsetDateTime {
    (now - time::Duration::days(1)).replace_time(time::Time::MIDNIGHT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_van_moves_by_day_and_rests_at_night() {
        let day = van_day();
        assert_eq!(day.len(), 86_400);
        let moving =
            |r: std::ops::Range<usize>| day[r].iter().filter(|p| p.speed_kmh > 5.0).count();
        assert_eq!(moving(0..6 * 3600), 0, "parked before 06:00");
        assert!(
            moving(6 * 3600..19 * 3600) > 20_000,
            "drives most of the day"
        );
        assert_eq!(moving(23 * 3600..86_400), 0, "back at the depot at night");
        for p in &day {
            assert!((AREA[0]..AREA[2]).contains(&p.lon) && (AREA[1]..AREA[3]).contains(&p.lat));
        }
    }

    #[test]
    fn the_track_simplifies_to_max_points() {
        let points: Vec<(f64, f64)> = van_day().iter().map(|p| (p.lon, p.lat)).collect();
        let kept = fleetpipe_query::simplify::simplify(&points, 1000);
        assert!(kept.len() <= 1000 && kept.len() > 500, "{}", kept.len());
    }

    #[test]
    fn bbox_is_parsed_and_checked() {
        assert_eq!(parse_bbox("1,2,3,4").unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert!(parse_bbox("3,2,1,4").is_err());
        assert!(parse_bbox("1,2,3").is_err());
    }
}
