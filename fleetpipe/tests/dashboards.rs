//! The Grafana dashboards of `deploy/grafana/dashboards/` against what
//! fleetpipe really creates and exports, so a renamed column or metric
//! breaks this test rather than a dashboard in production.
//!
//! - Every SQL query of every dashboard (each panel target's `rawSql` and
//!   each query variable's `query`) is expanded as Grafana would expand it
//!   (template variables, `$__interval`, `$__interval_ms`, `$__timeFilter`,
//!   `$__timeGroup`, `$__timeGroupAlias`) and run against a fresh schema
//!   that the sink's migrations create on the real PostgreSQL, in the
//!   storage mode the server offers (plain PostgreSQL here, TimescaleDB
//!   where the extension is available; no dashboard query needs the
//!   TimescaleDB-only objects, so all run in both). Each must return the
//!   columns listed below and, for the rows inserted here, the values a
//!   person reading the panel expects (e.g. how many vehicles move).
//! - The fleet overview derives a vehicle's state with the query API's own
//!   rules (`query/sql/state.sql`, its defaults as the variables' defaults).
//! - Every metric and label the operations dashboard queries is one that
//!   fleetpipe declares (each crate's `metrics::ALL`), or a label the
//!   Prometheus scrape configuration (`deploy/prometheus/prometheus.yml`)
//!   attaches.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use fleetpipe_model::EventType;
use fleetpipe_model::metrics::{Kind, Metric};
use fleetpipe_sink::{StorageMode, TimescaleConfig};
use serde_json::Value;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const PG: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// The dashboards, by file name.
const DASHBOARDS: [&str; 3] = ["fleet-overview.json", "vehicle.json", "operations.json"];

/// The interval the panels are expanded with (Grafana's `$__interval`).
const INTERVAL: &str = "1m";

fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards")
}

fn load(file: &str) -> Value {
    let path = dashboards_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Every file of the dashboards directory is one of [`DASHBOARDS`], so a
/// new dashboard cannot escape this test.
#[test]
fn every_dashboard_file_is_tested() {
    let mut files: Vec<String> = std::fs::read_dir(dashboards_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected: Vec<String> = DASHBOARDS.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(files, expected);
}

// ---- queries out of the dashboard JSON --------------------------------------

/// One query of a dashboard: where it is, its text and datasource type.
#[derive(Debug)]
struct Query {
    /// `panel <title> <refId>` or `variable <name>`.
    place: String,
    datasource: String,
    text: String,
}

fn datasource_type(node: &Value, fallback: &Value) -> String {
    node.get("datasource")
        .and_then(|d| d.get("type"))
        .or_else(|| fallback.get("datasource").and_then(|d| d.get("type")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Every query of `dashboard`: panel targets (rows' nested panels too) and
/// query variables.
fn queries(dashboard: &Value) -> Vec<Query> {
    fn walk(panels: &[Value], out: &mut Vec<Query>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().map_or(&[][..], Vec::as_slice) {
                let text = target
                    .get("rawSql")
                    .or_else(|| target.get("expr"))
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without rawSql or expr"));
                out.push(Query {
                    place: format!("panel {title} {}", target["refId"].as_str().unwrap()),
                    datasource: datasource_type(target, panel),
                    text: text.to_owned(),
                });
            }
            if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    for variable in variables(dashboard) {
        if variable["type"] == "query" {
            let query = &variable["query"];
            let text = query
                .as_str()
                .or_else(|| query.get("query").and_then(Value::as_str))
                .unwrap();
            out.push(Query {
                place: format!("variable {}", variable["name"].as_str().unwrap()),
                datasource: datasource_type(variable, &Value::Null),
                text: text.to_owned(),
            });
        }
    }
    out
}

fn variables(dashboard: &Value) -> &[Value] {
    dashboard["templating"]["list"].as_array().unwrap()
}

// ---- Grafana's expansion of a SQL query -------------------------------------

/// What a query is expanded with: the template variables' values and the
/// time range as RFC 3339 literals.
struct Expansion {
    vars: BTreeMap<String, Vec<String>>,
    from: String,
    to: String,
}

/// `1m`, `'30s'`, `2h`, `1d` in seconds.
fn interval_seconds(text: &str) -> u64 {
    let text = text.trim().trim_matches('\'');
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("interval {text:?}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => panic!("interval {text:?}: unit not expanded by this test"),
    }
}

fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl Expansion {
    /// A template variable (`$name`, `${name}`, `${name:format}`).
    fn variable(&self, name: &str, format: Option<&str>, place: &str) -> String {
        match name {
            "__interval" => return INTERVAL.to_owned(),
            "__interval_ms" => return (interval_seconds(INTERVAL) * 1000).to_string(),
            _ => {}
        }
        let values = self
            .vars
            .get(name)
            .unwrap_or_else(|| panic!("{place}: ${name} is not a variable of the dashboard"));
        match format {
            None if values.len() == 1 => values[0].clone(),
            Some("sqlstring") => values
                .iter()
                .map(|v| sql_string(v))
                .collect::<Vec<_>>()
                .join(","),
            other => panic!("{place}: ${name} with format {other:?} is not expanded by this test"),
        }
    }

    /// The query as Grafana's PostgreSQL data source sends it.
    fn expand(&self, sql: &str, place: &str) -> String {
        let substituted = self.substitute_variables(sql, place);
        let expanded = self.expand_macros(&substituted, place);
        assert!(
            !expanded.contains('$'),
            "{place}: left unexpanded: {expanded}"
        );
        expanded
    }

    /// Template variables and `$__interval(_ms)`; `$__time…` macros stay.
    fn substitute_variables(&self, sql: &str, place: &str) -> String {
        let mut out = String::new();
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(braced) = rest.strip_prefix('{') {
                let end = braced.find('}').unwrap();
                let (name, format) = match braced[..end].split_once(':') {
                    Some((n, f)) => (n, Some(f)),
                    None => (&braced[..end], None),
                };
                out.push_str(&self.variable(name, format, place));
                rest = &braced[end + 1..];
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let name = &rest[..end];
                if name.starts_with("__time") {
                    out.push('$');
                    out.push_str(name);
                } else {
                    out.push_str(&self.variable(name, None, place));
                }
                rest = &rest[end..];
            }
        }
        out.push_str(rest);
        out
    }

    fn expand_macros(&self, sql: &str, place: &str) -> String {
        let mut out = String::new();
        let mut rest = sql;
        while let Some(at) = rest.find("$__") {
            out.push_str(&rest[..at]);
            rest = &rest[at + 3..];
            let open = rest
                .find('(')
                .unwrap_or_else(|| panic!("{place}: macro {rest}"));
            let name = &rest[..open];
            let close = open + rest[open..].find(')').unwrap();
            let args: Vec<&str> = rest[open + 1..close].split(',').map(str::trim).collect();
            rest = &rest[close + 1..];
            let group = |args: &[&str]| {
                assert_eq!(args.len(), 2, "{place}: {name} with a fill argument");
                let seconds = interval_seconds(args[1]);
                format!("floor(extract(epoch from {})/{seconds})*{seconds}", args[0])
            };
            out.push_str(&match name {
                "timeFilter" => format!(
                    "{} BETWEEN {} AND {}",
                    args[0],
                    sql_string(&self.from),
                    sql_string(&self.to)
                ),
                "timeFrom" => sql_string(&self.from),
                "timeTo" => sql_string(&self.to),
                "timeGroup" => group(&args),
                "timeGroupAlias" => format!("{} AS \"time\"", group(&args)),
                _ => panic!("{place}: macro $__{name} is not expanded by this test"),
            });
        }
        out.push_str(rest);
        out
    }
}

/// The values of a dashboard's variables: each one's default (the
/// options of `All`), with `overrides` for the schema and the vehicle.
fn defaults(dashboard: &Value, overrides: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    let mut vars = BTreeMap::new();
    for variable in variables(dashboard) {
        let name = variable["name"].as_str().unwrap().to_owned();
        let values = if let Some((_, v)) = overrides.iter().find(|(n, _)| *n == name) {
            vec![(*v).to_owned()]
        } else {
            let current = &variable["current"]["value"];
            let current: Vec<String> = match current {
                Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                Value::String(s) => vec![s.clone()],
                _ => vec![],
            };
            if current == ["$__all"] {
                variable["options"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["value"].as_str().unwrap().to_owned())
                    .collect()
            } else {
                current
            }
        };
        vars.insert(name, values);
    }
    vars
}

// ---- the database ------------------------------------------------------------

/// A fresh schema with fleetpipe's migrations, dropped at the end.
struct Schema {
    name: String,
    db: Client,
    mode: StorageMode,
}

impl Schema {
    async fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("fp_dash_{}_{nanos}", std::process::id());
        let config = TimescaleConfig {
            schema: name.clone(),
            ..TimescaleConfig::new(PG)
        };
        let mode = fleetpipe_sink::migrate(&config).await.expect("migrations");
        let (db, conn) = tokio_postgres::connect(PG, NoTls)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        tokio::spawn(conn);
        Self { name, db, mode }
    }
}

impl Drop for Schema {
    /// Drops the schema, also when the test failed (Drop cannot await: a
    /// thread with a runtime of its own can).
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (db, conn) = tokio_postgres::connect(PG, NoTls).await?;
                tokio::spawn(conn);
                db.batch_execute(&sql).await
            })
        });
        if let Ok(Err(e)) = cleanup.join() {
            eprintln!("dropping the test's schema failed: {e:?}");
        }
    }
}

/// The storage mode the server offers (the sink's tests' rule).
async fn offered_mode(db: &Client) -> StorageMode {
    let timescale = fleetpipe_postgres::test_support::offers_timescaledb(db)
        .await
        .unwrap();
    if timescale {
        StorageMode::TimescaleDb
    } else {
        StorageMode::Plain
    }
}

/// The fleet of this test, relative to the database's `now()`:
///
/// | vehicle     | latest ping | speed | charging | SoC  | state    |
/// |-------------|-------------|-------|----------|------|----------|
/// | v-moving    | 1 min ago   | 30    | false    | 55   | moving   |
/// | v-edge      | 1 min ago   | 5     | false    | NULL | moving (5 km/h is the threshold) |
/// | v-charging  | 1 min ago   | 0     | true     | 15   | charging |
/// | v-parked    | 1 min ago   | NULL  | NULL     | 100  | parked   |
/// | v-slow      | 1 min ago   | 4.9   | false    | 95   | parked   |
/// | v-offline   | 2 h ago     | 50    | false    | 50   | offline  |
///
/// v-moving has three pings in the last half hour (two in one minute,
/// one without a reported speed) and three events; v-parked one event
/// three hours ago (outside the range).
async fn insert_fleet(s: &Schema) {
    let sql = r#"
        CREATE TEMP TABLE base AS
            SELECT date_trunc('minute', now()) - interval '20 minutes' AS t0;
        INSERT INTO {schema}.vehicle_latest
            (vehicle_id, ts, seq, lat, lon, speed_kmh, soc_pct, charging, fences)
        VALUES
            ('v-moving',   now() - interval '1 minute', 3, 52.52, 13.40, 30,   55,   false, '{depot-1}'),
            ('v-edge',     now() - interval '1 minute', 1, 52.50, 13.41, 5,    NULL, false, '{}'),
            ('v-charging', now() - interval '1 minute', 1, 52.51, 13.42, 0,    15,   true,  '{}'),
            ('v-parked',   now() - interval '1 minute', 1, 52.53, 13.43, NULL, 100,  NULL,  NULL),
            ('v-slow',     now() - interval '1 minute', 1, 52.54, 13.44, 4.9,  95,   false, '{}'),
            ('v-offline',  now() - interval '2 hours',  1, 52.55, 13.45, 50,   50,   false, '{}');
        INSERT INTO {schema}.telemetry
            (vehicle_id, ts, seq, received_at, source, lat, lon, speed_kmh, derived_speed_kmh, soc_pct, charging)
        SELECT 'v-moving', t0 + at, seq, now(), 'mqtt', lat, lon, speed, derived, soc, false
        FROM base, (VALUES
            (interval '0 seconds',  1, 52.500, 13.400, 20,   NULL, 60),
            (interval '30 seconds', 2, 52.501, 13.401, 40,   NULL, 58),
            (interval '10 minutes', 3, 52.520, 13.400, NULL, 12,   55)
        ) AS p(at, seq, lat, lon, speed, derived, soc);
        INSERT INTO {schema}.vehicle_events (id, vehicle_id, type, time, data)
        SELECT id, vehicle, type, t, '{}'::jsonb
        FROM base, LATERAL (VALUES
            ('e1', 'v-moving', 'vehicle.motion_started', t0),
            ('e2', 'v-moving', 'geofence.entered',       t0 + interval '30 seconds'),
            ('e3', 'v-moving', 'vehicle.motion_started', t0 + interval '10 minutes'),
            ('e4', 'v-parked', 'charging.started',       now() - interval '3 hours')
        ) AS e(id, vehicle, type, t);
    "#;
    s.db.batch_execute(&sql.replace("{schema}", &format!("\"{}\"", s.name)))
        .await
        .unwrap();
}

/// A query's rows as text (NULL as `None`), by the simple protocol.
async fn rows(db: &Client, sql: &str, place: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let statement = db
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("{place}: {sql}\n{e:?}"));
    let columns = statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut out = Vec::new();
    for message in db.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(row) = message {
            out.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            );
        }
    }
    (columns, out)
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some((*v).to_owned())).collect()
}

/// The columns each SQL query must return, by dashboard and place. A query
/// that is not listed fails the test, as does a listed one that is gone.
fn expected_columns() -> BTreeMap<(&'static str, &'static str), &'static [&'static str]> {
    BTreeMap::from([
        (
            ("fleetpipe-fleet-overview", "panel Vehicles by state A"),
            &[
                "vehicles", "online", "moving", "charging", "parked", "offline",
            ][..],
        ),
        (
            ("fleetpipe-fleet-overview", "panel Latest ping age A"),
            &["newest_ping_age", "oldest_online_ping_age"][..],
        ),
        (
            (
                "fleetpipe-fleet-overview",
                "panel Battery (state of charge) of online vehicles A",
            ),
            &["soc_band", "vehicles"][..],
        ),
        (
            (
                "fleetpipe-fleet-overview",
                "panel Events per minute by type A",
            ),
            &["time", "metric", "events_per_minute"][..],
        ),
        (
            (
                "fleetpipe-fleet-overview",
                "panel Events by type in the time range A",
            ),
            &["type", "events", "vehicles", "last_at"][..],
        ),
        (
            ("fleetpipe-fleet-overview", "panel Vehicles A"),
            &[
                "vehicle_id",
                "state",
                "last_ping",
                "speed_kmh",
                "soc_pct",
                "lat",
                "lon",
                "fences",
            ][..],
        ),
        (
            ("fleetpipe-vehicle", "panel Latest state A"),
            &[
                "last_ping",
                "speed_kmh",
                "soc_pct",
                "charging",
                "ignition",
                "lat",
                "lon",
                "fences",
            ][..],
        ),
        (
            ("fleetpipe-vehicle", "panel Speed A"),
            &["time", "max_speed_kmh", "avg_speed_kmh"][..],
        ),
        (
            ("fleetpipe-vehicle", "panel State of charge A"),
            &["time", "soc_pct", "charging"][..],
        ),
        (
            ("fleetpipe-vehicle", "panel Track A"),
            &["time", "lat", "lon", "speed_kmh", "soc_pct"][..],
        ),
        (
            ("fleetpipe-vehicle", "panel Events A"),
            &["time", "type", "data"][..],
        ),
        (
            ("fleetpipe-vehicle", "variable vehicle"),
            &["vehicle_id"][..],
        ),
    ])
}

/// The rows each listed query must return for [`insert_fleet`]'s data
/// (every cell as PostgreSQL's text; times checked only where they are
/// not relative to `now()`).
fn check_values(uid: &str, place: &str, rows: &[Vec<Option<String>>], t0: &str) {
    let ok = |expected: Vec<Vec<Option<String>>>| {
        assert_eq!(rows, expected.as_slice(), "{uid} {place}");
    };
    match (uid, place) {
        ("fleetpipe-fleet-overview", "panel Vehicles by state A") => {
            ok(vec![some(&["6", "5", "2", "1", "2", "1"])]);
        }
        ("fleetpipe-fleet-overview", "panel Battery (state of charge) of online vehicles A") => {
            let counts = [0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
            ok((0..10)
                .map(|b| {
                    vec![
                        Some(format!("{}-{} %", b * 10, b * 10 + 10)),
                        Some(counts[b].to_string()),
                    ]
                })
                .collect());
        }
        ("fleetpipe-fleet-overview", "panel Events per minute by type A") => {
            let t10 = (t0.parse::<i64>().unwrap() + 600).to_string();
            ok(vec![
                some(&[t0, "geofence.entered", "1.00000000000000000000"]),
                some(&[t0, "vehicle.motion_started", "1.00000000000000000000"]),
                some(&[&t10, "vehicle.motion_started", "1.00000000000000000000"]),
            ]);
        }
        ("fleetpipe-fleet-overview", "panel Events by type in the time range A") => {
            let types: Vec<_> = rows
                .iter()
                .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
                .collect();
            assert_eq!(
                types,
                [
                    (
                        Some("vehicle.motion_started".into()),
                        Some("2".into()),
                        Some("1".into())
                    ),
                    (
                        Some("geofence.entered".into()),
                        Some("1".into()),
                        Some("1".into())
                    ),
                ],
                "{uid} {place}"
            );
        }
        ("fleetpipe-fleet-overview", "panel Vehicles A") => {
            let states: Vec<_> = rows
                .iter()
                .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
                .collect();
            let expected = [
                ("v-charging", "charging"),
                ("v-edge", "moving"),
                ("v-moving", "moving"),
                ("v-offline", "offline"),
                ("v-parked", "parked"),
                ("v-slow", "parked"),
            ]
            .map(|(v, s)| (v.to_owned(), s.to_owned()));
            assert_eq!(states, expected, "{uid} {place}");
        }
        ("fleetpipe-fleet-overview", "panel Latest ping age A") => {
            assert_eq!(rows.len(), 1, "{uid} {place}");
            assert!(
                rows[0].iter().all(Option::is_some),
                "{uid} {place}: {rows:?}"
            );
        }
        ("fleetpipe-vehicle", "panel Latest state A") => {
            assert_eq!(rows.len(), 1, "{uid} {place}");
            assert_eq!(rows[0][1..4], some(&["30", "55", "f"])[..], "{uid} {place}");
        }
        ("fleetpipe-vehicle", "panel Speed A") => {
            let t10 = (t0.parse::<i64>().unwrap() + 600).to_string();
            ok(vec![some(&[t0, "40", "30"]), some(&[&t10, "12", "12"])]);
        }
        ("fleetpipe-vehicle", "panel State of charge A") => {
            let t10 = (t0.parse::<i64>().unwrap() + 600).to_string();
            ok(vec![some(&[t0, "58", "0"]), some(&[&t10, "55", "0"])]);
        }
        ("fleetpipe-vehicle", "panel Track A") => {
            let points: Vec<_> = rows.iter().map(|r| r[1..4].to_vec()).collect();
            assert_eq!(
                points,
                [
                    some(&["52.5", "13.4", "20"]),
                    some(&["52.501", "13.401", "40"]),
                    some(&["52.52", "13.4", "12"]),
                ],
                "{uid} {place}"
            );
        }
        ("fleetpipe-vehicle", "panel Events A") => {
            let types: Vec<_> = rows.iter().map(|r| r[1].clone().unwrap()).collect();
            assert_eq!(
                types,
                [
                    "vehicle.motion_started",
                    "geofence.entered",
                    "vehicle.motion_started"
                ],
                "{uid} {place}"
            );
        }
        ("fleetpipe-vehicle", "variable vehicle") => {
            let ids: Vec<_> = rows.iter().map(|r| r[0].clone().unwrap()).collect();
            assert_eq!(
                ids,
                [
                    "v-charging",
                    "v-edge",
                    "v-moving",
                    "v-offline",
                    "v-parked",
                    "v-slow"
                ],
                "{uid} {place}"
            );
        }
        _ => panic!("{uid} {place}: no expected values"),
    }
}

#[tokio::test]
async fn every_dashboard_sql_query_runs_against_the_schema_fleetpipe_creates() {
    let schema = Schema::new().await;
    assert_eq!(schema.mode, offered_mode(&schema.db).await);
    insert_fleet(&schema).await;
    // The time range: the last hour, as Grafana's RFC 3339 literals, and
    // the start of the minute the test's pings begin in (epoch seconds, from
    // the session's table insert_fleet left).
    let row = schema
        .db
        .query_one(
            "SELECT to_char((now() - interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    to_char((now() + interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    (SELECT extract(epoch from t0)::bigint::text FROM base)",
            &[],
        )
        .await
        .unwrap();
    let (from, to, t0): (String, String, String) = (row.get(0), row.get(1), row.get(2));

    let mut expected = expected_columns();
    let mut ran = 0;
    for file in DASHBOARDS {
        let dashboard = load(file);
        let uid = dashboard["uid"].as_str().unwrap();
        let expansion = Expansion {
            vars: defaults(
                &dashboard,
                &[("schema", &schema.name), ("vehicle", "v-moving")],
            ),
            from: from.clone(),
            to: to.clone(),
        };
        for query in queries(&dashboard) {
            if query.datasource != "grafana-postgresql-datasource" {
                continue;
            }
            let sql = expansion.expand(&query.text, &query.place);
            let (columns, values) = rows(&schema.db, &sql, &query.place).await;
            let key = *expected
                .keys()
                .find(|(u, p)| *u == uid && *p == query.place)
                .unwrap_or_else(|| panic!("{uid} {}: no expected columns listed", query.place));
            let want = expected.remove(&key).unwrap();
            assert_eq!(columns, want, "{uid} {}: columns of\n{sql}", query.place);
            check_values(uid, &query.place, &values, &t0);
            ran += 1;
        }
    }
    assert!(
        expected.is_empty(),
        "listed but not in any dashboard: {:?}",
        expected.keys()
    );
    assert_eq!(ran, expected_columns().len());
}

// ---- the fleet overview's state is the query API's --------------------------

/// `query/sql/state.sql` with its parameters as the dashboard's variables.
fn state_sql_as_dashboard() -> String {
    let sql = include_str!("../../query/sql/state.sql")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
        .replace("$1", "now() - interval '${offline_after}'")
        .replace("$2", "${moving_speed_kmh}");
    normalize(&sql)
}

fn normalize(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn the_fleet_overview_derives_states_as_the_query_api_does() {
    let dashboard = load("fleet-overview.json");
    let state = state_sql_as_dashboard();
    let deriving: Vec<_> = queries(&dashboard)
        .into_iter()
        .filter(|q| q.text.contains("CASE"))
        .collect();
    assert_eq!(deriving.len(), 2, "the state stat and the vehicle table");
    for query in deriving {
        assert!(
            normalize(&query.text).contains(&state),
            "{}: not query/sql/state.sql ({state})",
            query.place
        );
    }
    // The thresholds' defaults are the API's.
    let vars = defaults(&dashboard, &[]);
    let api = fleetpipe_query::ApiConfig::default_moving_speed_kmh();
    assert_eq!(vars["moving_speed_kmh"], [api.to_string()]);
    let (db, conn) = tokio_postgres::connect(PG, NoTls).await.unwrap();
    tokio::spawn(conn);
    let seconds: f64 = db
        .query_one(
            "SELECT extract(epoch from $1::text::interval)::float8",
            &[&vars["offline_after"][0]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        seconds,
        fleetpipe_query::ApiConfig::default_offline_after().as_secs_f64()
    );
    // The event type filter offers every type fleetpipe emits.
    let offered: BTreeSet<String> = vars["event_type"].iter().cloned().collect();
    let emitted: BTreeSet<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    assert_eq!(offered, emitted);
}

// ---- the operations dashboard's metrics --------------------------------------

/// Labels Prometheus attaches to every series of a fleetpipe target:
/// `job` and `instance`, and `role` from deploy/prometheus/prometheus.yml.
const TARGET_LABELS: [&str; 3] = ["job", "instance", "role"];

/// The metrics (`fleetpipe_*`, `up`) of a PromQL expression, each with the
/// label names of its selector, and the label names of `by (...)` clauses.
fn promql_names(expr: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut metrics = Vec::new();
    let mut grouping = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '"' {
            // A string literal (a label value): skip it.
            i += 1;
            while chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == '$')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        // The names in a `(...)` or `{...}` list: the first identifier of
        // each comma-separated item, string literals skipped.
        let list = |open: usize, close: char| -> (Vec<String>, usize) {
            let mut names = Vec::new();
            let mut item = String::new();
            let mut first = true;
            let mut k = open + 1;
            while chars[k] != close {
                match chars[k] {
                    '"' => {
                        k += 1;
                        while chars[k] != '"' {
                            k += if chars[k] == '\\' { 2 } else { 1 };
                        }
                        first = false;
                    }
                    ',' => {
                        if !item.is_empty() {
                            names.push(std::mem::take(&mut item));
                        }
                        first = true;
                    }
                    c if is_ident(c) && first => item.push(c),
                    _ => {
                        if !item.is_empty() {
                            names.push(std::mem::take(&mut item));
                            first = false;
                        }
                    }
                }
                k += 1;
            }
            if !item.is_empty() {
                names.push(item);
            }
            (names, k + 1)
        };
        if word == "by" || word == "without" {
            let (names, next) = list(j, ')');
            grouping.extend(names);
            i = next;
        } else if word.starts_with("fleetpipe_") || word == "up" {
            let labels = if chars.get(j) == Some(&'{') {
                let (names, next) = list(j, '}');
                i = next;
                names
            } else {
                Vec::new()
            };
            metrics.push((word, labels));
        }
    }
    (metrics, grouping)
}

#[test]
fn every_metric_and_label_of_the_operations_dashboard_is_one_fleetpipe_exports() {
    let declared = fleetpipe::metrics::declared();
    let scrape = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/prometheus.yml"),
    )
    .unwrap();
    assert!(
        scrape.contains("job_name: fleetpipe"),
        "prometheus.yml: job fleetpipe"
    );
    assert!(
        scrape.contains("target_label: role"),
        "prometheus.yml: the role label"
    );

    let mut used = BTreeSet::new();
    for file in DASHBOARDS {
        let dashboard = load(file);
        for query in queries(&dashboard) {
            if query.datasource != "prometheus" {
                continue;
            }
            let (metrics, grouping) = promql_names(&query.text);
            assert!(
                !metrics.is_empty(),
                "{}: no metric in {}",
                query.place,
                query.text
            );
            let mut labels_here: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
            for (name, labels) in &metrics {
                let (metric, allowed): (Option<&Metric>, Vec<&str>) = if name == "up" {
                    (None, vec![])
                } else {
                    // A histogram is exported as a summary: quantile series
                    // under its name, and _sum and _count.
                    let metric = declared
                        .iter()
                        .find(|m| m.name == name)
                        .or_else(|| {
                            declared.iter().find(|m| {
                                m.kind == Kind::Histogram
                                    && [format!("{}_sum", m.name), format!("{}_count", m.name)]
                                        .contains(name)
                            })
                        })
                        .unwrap_or_else(|| {
                            panic!(
                                "{} of {}: {name} is not a metric fleetpipe declares",
                                query.place, file
                            )
                        });
                    let mut allowed = metric.labels.to_vec();
                    if metric.kind == Kind::Histogram && metric.name == name {
                        allowed.push("quantile");
                    }
                    used.insert(metric.name);
                    (Some(metric), allowed)
                };
                for label in labels {
                    assert!(
                        TARGET_LABELS.contains(&label.as_str())
                            || allowed.contains(&label.as_str()),
                        "{} of {file}: {name} has no label {label} ({metric:?})",
                        query.place
                    );
                }
                labels_here.extend(allowed);
            }
            for label in grouping {
                assert!(
                    labels_here.contains(label.as_str()),
                    "{} of {file}: grouping by {label}, which none of its metrics has",
                    query.place
                );
            }
        }
    }
    // What the issue asks the operations dashboard to show.
    for name in [
        "fleetpipe_ingest_pings_total",
        "fleetpipe_rejected_total",
        "fleetpipe_sink_queue_depth",
        "fleetpipe_enrich_queue_depth",
        "fleetpipe_sink_batch_seconds",
        "fleetpipe_kafka_consumer_lag",
        "fleetpipe_enrich_restore_remaining_records",
    ] {
        assert!(
            used.contains(name),
            "the operations dashboard does not show {name}"
        );
    }
}

#[test]
fn the_promql_reader_finds_metrics_labels_and_groupings() {
    let (metrics, grouping) = promql_names(
        r#"sum by (sink, kind) (rate(fleetpipe_sink_errors_total{role=~"$role",x="a,b}"}[$__rate_interval])) > 0 or up"#,
    );
    assert_eq!(
        metrics,
        [
            (
                "fleetpipe_sink_errors_total".to_owned(),
                vec!["role".to_owned(), "x".to_owned()]
            ),
            ("up".to_owned(), vec![]),
        ]
    );
    assert_eq!(grouping, ["sink", "kind"]);
}
