//! The query API's test harness: a whole pipeline with the TimescaleDB sink
//! (the real PostgreSQL at 127.0.0.1:5432, a fresh schema per test) and
//! `[api]`, pings sent through the devices' HTTP listener, answers read
//! over real HTTP.

use std::time::Duration;

use fleetpipe_query::{ApiConfig, TokenConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{TestPipeline, now_ms};

pub const PG: &str = "postgresql://postgres@127.0.0.1:5432/test";
/// Upper bound for anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The fences of every API test: `depot`, a square around (52.505, 13.405),
/// and `yard`, a 200 m circle at (52.60, 13.60).
pub const FENCES: &str = r#"{"type":"FeatureCollection","features":[
 {"type":"Feature","properties":{"id":"depot","name":"Depot","kind":"depot","arrival":true},
  "geometry":{"type":"Polygon","coordinates":[[[13.40,52.50],[13.41,52.50],[13.41,52.51],[13.40,52.51],[13.40,52.50]]]}},
 {"type":"Feature","properties":{"id":"yard","kind":"zone","radius_m":200},
  "geometry":{"type":"Point","coordinates":[13.60,52.60]}}
]}"#;

/// A point inside `depot`.
pub const IN_DEPOT: (f64, f64) = (52.505, 13.405);

/// A token of the test: its name, the token, and its scope as TOML-ish
/// parts.
pub enum Scope {
    Fleet,
    Vehicles(&'static [&'static str]),
    Fences(&'static [&'static str]),
}

fn sha256_hex(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub struct ApiTest {
    pub p: TestPipeline,
    pub schema: String,
    pub base: String,
    pub http: reqwest::Client,
    pub db: tokio_postgres::Client,
    /// Holds the fence file the pipeline watches.
    _fences: tempfile::TempDir,
}

impl ApiTest {
    /// A pipeline with `tokens` and `tweak` applied to `[api]`.
    pub async fn start(tokens: &[(&str, &str, Scope)], tweak: impl FnOnce(&mut ApiConfig)) -> Self {
        Self::start_with(tokens, tweak, |_| {}).await
    }

    /// [`ApiTest::start`], with `tweak_config` applied to the rest of the
    /// configuration last.
    pub async fn start_with(
        tokens: &[(&str, &str, Scope)],
        tweak: impl FnOnce(&mut ApiConfig),
        tweak_config: impl FnOnce(&mut fleetpipe::Config),
    ) -> Self {
        // A test binary runs its tests in parallel: two started in the same
        // millisecond shared a schema (and each other's rows) when the name
        // was process and time alone.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let schema = format!("fp_api_{}_{n}_{}", std::process::id(), now_ms());
        let fences_dir = tempfile::tempdir().unwrap();
        let fences = fences_dir.path().join("fences.geojson");
        std::fs::write(&fences, FENCES).unwrap();
        let mut api = ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            schema: schema.clone(),
            tokens: tokens
                .iter()
                .map(|(name, token, scope)| {
                    let list = |ids: &[&str]| Some(ids.iter().map(|s| (*s).to_owned()).collect());
                    let (scope, vehicles, fences) = match scope {
                        Scope::Fleet => {
                            (Some(fleetpipe_query::config::FleetScope::Fleet), None, None)
                        }
                        Scope::Vehicles(v) => (None, list(v), None),
                        Scope::Fences(f) => (None, None, list(f)),
                    };
                    TokenConfig {
                        name: (*name).to_owned(),
                        sha256: sha256_hex(token),
                        scope,
                        vehicles,
                        fences,
                    }
                })
                .collect(),
            ..ApiConfig::new(PG)
        };
        tweak(&mut api);
        let sink_schema = schema.clone();
        let p = TestPipeline::start(move |c| {
            c.sink.timescale = Some(fleetpipe_sink::TimescaleConfig {
                schema: sink_schema,
                batch_max_wait: Duration::from_millis(10),
                ..fleetpipe_sink::TimescaleConfig::new(PG)
            });
            c.api = Some(api);
            c.geofence.file = Some(fences);
            c.ingest.rate_limit.enabled = false;
            c.enrich.reorder_window = Duration::ZERO;
            c.enrich.motion.stop_after = Duration::from_secs(5);
            tweak_config(c);
        })
        .await;
        let base = format!(
            "http://{}",
            p.pipeline
                .as_ref()
                .unwrap()
                .api_addr()
                .expect("api listens")
        );
        let (db, conn) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        // The schema is in the mode the server offers, as the sink's tests
        // assert it.
        let timescale: bool = db
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM \"{schema}\".fleetpipe_migrations WHERE version = 3)"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            timescale,
            fleetpipe_postgres::test_support::offers_timescaledb(&db)
                .await
                .unwrap(),
            "storage mode"
        );
        Self {
            p,
            schema,
            base,
            http: reqwest::Client::new(),
            db,
            _fences: fences_dir,
        }
    }

    /// Sends `pings` (JSON objects) over the devices' HTTP listener, in
    /// batches of one vehicle each (as the wire contract wants them), and
    /// waits until `telemetry` holds `expect` rows in all.
    pub async fn send(&self, pings: &[Value], expect: i64) {
        let mut by_vehicle: Vec<(String, Vec<Value>)> = Vec::new();
        for p in pings {
            let vehicle = p["vehicle_id"].as_str().unwrap().to_owned();
            match by_vehicle.iter_mut().find(|(v, _)| *v == vehicle) {
                Some((_, list)) => list.push(p.clone()),
                None => by_vehicle.push((vehicle, vec![p.clone()])),
            }
        }
        let batches = by_vehicle.iter().flat_map(|(_, list)| list.chunks(500));
        for batch in batches {
            let r = self
                .http
                .post(self.p.url("/v1/pings"))
                .json(&batch)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            assert_eq!(status, 200, "{body}");
            assert!(!body.contains("rejected"), "{body}");
        }
        self.wait_rows("telemetry", expect).await;
    }

    /// Waits until `table` holds `n` rows.
    pub async fn wait_rows(&self, table: &str, n: i64) {
        let sql = format!("SELECT count(*) FROM \"{}\".{table}", self.schema);
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let count: i64 = self.db.query_one(&sql, &[]).await.unwrap().get(0);
            if count >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{table}: {count} of {n} rows"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until enrichment's events are stored: the count of
    /// `vehicle_events` stops changing for a moment.
    pub async fn settle_events(&self) -> i64 {
        let sql = format!("SELECT count(*) FROM \"{}\".vehicle_events", self.schema);
        let mut last = -1;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let count: i64 = self.db.query_one(&sql, &[]).await.unwrap().get(0);
            if count == last {
                return count;
            }
            last = count;
        }
    }

    /// `GET path` with `token` (none when `None`): status and JSON body.
    pub async fn get(&self, token: Option<&str>, path: &str) -> (StatusCode, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// `POST /v1/share-links` with `token`.
    pub async fn share(&self, token: &str, vehicle: &str, expires_in: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/v1/share-links", self.base))
            .bearer_auth(token)
            .json(&json!({"vehicle_id": vehicle, "expires_in": expires_in}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `DELETE /v1/share-links/{id}` with `token`.
    pub async fn revoke(&self, token: &str, id: &str) -> StatusCode {
        self.http
            .delete(format!("{}/v1/share-links/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Walks every page of `path` (which has a `?`), `key` the list in
    /// each answer; returns the items in order.
    pub async fn walk(&self, token: &str, path: &str, key: &str) -> Vec<Value> {
        self.walk_from(token, path, key, None).await
    }

    /// [`ApiTest::walk`] from `cursor` on.
    pub async fn walk_from(
        &self,
        token: &str,
        path: &str,
        key: &str,
        mut cursor: Option<String>,
    ) -> Vec<Value> {
        let mut items = Vec::new();
        for _ in 0..10_000 {
            let url = match &cursor {
                None => path.to_owned(),
                Some(c) => format!("{path}&cursor={c}"),
            };
            let (status, body) = self.get(Some(token), &url).await;
            assert_eq!(status, 200, "{url}: {body}");
            items.extend(body[key].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return items,
            }
        }
        panic!("{path}: the walk does not end");
    }

    pub async fn stop(mut self) {
        self.p.stop().await;
        self.db
            .execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema), &[])
            .await
            .unwrap();
    }
}

/// A ping of `vehicle` as JSON.
pub fn ping(vehicle: &str, seq: u64, ts_ms: i64, (lat, lon): (f64, f64)) -> Value {
    json!({"vehicle_id": vehicle, "seq": seq, "ts": ts_ms, "lat": lat, "lon": lon})
}

/// The ids of a list of vehicles (or anything with `key`).
pub fn ids(items: &[Value], key: &str) -> Vec<String> {
    items
        .iter()
        .map(|v| v[key].as_str().unwrap().to_owned())
        .collect()
}

/// `vehicles` drive east out of the depot, one after another 0.5 s apart:
/// 40 pings a second apart from `start_ms`, 40 km/h and 0.0009° of
/// longitude a second for 20 s, then standing: enrichment makes their
/// online, geofence, motion and state events and a trip each.
pub fn drive_out_of_the_depot(vehicles: &[&str], start_ms: i64) -> Vec<Value> {
    let mut pings = Vec::new();
    for (n, vehicle) in vehicles.iter().enumerate() {
        for i in 0..40u64 {
            let moved = (i.min(20)) as f64 * 0.0009;
            let mut p = ping(
                vehicle,
                i,
                start_ms + n as i64 * 500 + i as i64 * 1000,
                (IN_DEPOT.0, IN_DEPOT.1 + moved),
            );
            p["speed_kmh"] = Value::from(if i < 20 { 40.0 } else { 0.0 });
            pings.push(p);
        }
    }
    pings
}
