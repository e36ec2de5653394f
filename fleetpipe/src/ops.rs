//! The operations listener (`[ops]`), apart from the devices' one:
//! `/healthz`, `/readyz`, `/metrics` (Prometheus text format), and
//! `POST /admin/geofences/reload`. For operators only: it listens on
//! loopback by default, and `/admin/*` can require a bearer token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleetpipe_geofence::service::FenceReloader;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;
use metrics_util::registry::{AtomicStorage, Registry};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;

/// `ops`: the operations listener (health, readiness, metrics, admin).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of the listener. Loopback by default: only processes on the
    /// host (a health checker, a local Prometheus agent) reach it.
    pub listen: SocketAddr,
    /// When set, `/admin/*` requires `Authorization: Bearer <admin_token>`
    /// (else `401`).
    pub admin_token: Option<String>,
    /// Most connections open at once on this listener; one more is answered
    /// `503` and closed. Timeouts are those of `ingest.http`.
    pub max_connections: usize,
    /// Least time between the end of one `POST /admin/geofences/reload` and
    /// the start of the next; sooner is `429` with `Retry-After`. Reloads
    /// run one at a time: a request arriving during one waits for it.
    #[serde(with = "humantime_serde")]
    pub reload_min_interval: Duration,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_token: None,
            max_connections: 64,
            reload_min_interval: Duration::from_secs(10),
        }
    }
}

impl OpsConfig {
    /// A listener that takes connections, and a token that is one.
    ///
    /// # Errors
    ///
    /// The first rule broken; the message names the key.
    pub fn validate(&self) -> Result<(), OpsConfigError> {
        if self.max_connections == 0 {
            return Err(OpsConfigError::ZeroConnections);
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(OpsConfigError::EmptyAdminToken);
        }
        Ok(())
    }
}

/// A rule of `[ops]` broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpsConfigError {
    /// A listener that takes no connection.
    #[error("ops.max_connections must be at least 1")]
    ZeroConnections,
    /// An empty token would let anyone in who sends an empty one.
    #[error("ops.admin_token must not be empty (leave it out for no token)")]
    EmptyAdminToken,
}

/// Whether the pipeline takes traffic: set once every stage runs, and false
/// from the moment shutdown is requested (so load balancers stop sending
/// first), without waiting for any task to notice.
#[derive(Debug, Clone)]
pub struct Readiness {
    started: Arc<AtomicBool>,
    shutdown: CancellationToken,
    /// Work in progress that keeps the process not ready while above 0
    /// (an enrich member restoring its partitions).
    holds: Option<Arc<AtomicUsize>>,
}

impl Readiness {
    /// Not ready until [`set`](Self::set); never ready once `shutdown` fires.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            started: Arc::default(),
            shutdown,
            holds: None,
        }
    }

    /// Not ready either while `holds` is above 0.
    #[must_use]
    pub fn holding_while(mut self, holds: Option<Arc<AtomicUsize>>) -> Self {
        self.holds = holds;
        self
    }

    /// Marks ready or not.
    pub fn set(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    /// Whether ready.
    pub fn get(&self) -> bool {
        self.started.load(Ordering::SeqCst)
            && !self.shutdown.is_cancelled()
            && self
                .holds
                .as_ref()
                .is_none_or(|holds| holds.load(Ordering::SeqCst) == 0)
    }
}

/// The process-wide recorder: Prometheus, and with it the in-process
/// [`MetricValues`] unless [`install_for_serving`] installed it.
#[derive(Debug)]
struct Installed {
    prometheus: PrometheusHandle,
    values: Option<MetricValues>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Installs the process-wide recorder on first use (the first call decides
/// whether it keeps [`MetricValues`] too); later calls return it.
fn install(with_values: bool) -> &'static Installed {
    INSTALLED.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let (installed, values) = if with_values {
            let values = MetricValues::default();
            let fanout = FanoutBuilder::default()
                .add_recorder(recorder)
                .add_recorder(values.clone())
                .build();
            (metrics::set_global_recorder(fanout).is_ok(), Some(values))
        } else {
            (metrics::set_global_recorder(recorder).is_ok(), None)
        };
        if !installed {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        Installed { prometheus, values }
    })
}

/// The process-wide Prometheus recorder, installed on first use. Pipelines
/// started in one process (tests) share it.
pub fn prometheus() -> PrometheusHandle {
    install(true).prometheus.clone()
}

/// Installs the process-wide recorder as Prometheus only, without
/// [`MetricValues`]: `fleetpipe run` reads no value back, and each update
/// would cost a second atomic operation. Must come before anything records
/// (otherwise the recorder already installed stays).
pub fn install_for_serving() {
    install(false);
}

/// Every counter and gauge recorded in this process, read in process: how
/// tests and `fleetpipe demo` read values back instead of parsing the
/// exposition text. Installs the recorder if none is; `None` only after
/// [`install_for_serving`].
pub fn metric_values() -> Option<MetricValues> {
    install(true).values.clone()
}

/// Counters and gauges as recorded, by name and labels (histograms are not
/// kept). Read with [`MetricValues::counter`] and friends; clones share
/// the values.
#[derive(Debug, Clone)]
pub struct MetricValues {
    registry: Arc<Registry<Key, AtomicStorage>>,
}

impl Default for MetricValues {
    fn default() -> Self {
        Self {
            registry: Arc::new(Registry::atomic()),
        }
    }
}

/// Whether `key` has exactly the labels `labels` (in any order).
fn has_labels(key: &Key, labels: &[(&str, &str)]) -> bool {
    key.labels().count() == labels.len()
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

impl MetricValues {
    /// The counter `name` with exactly `labels`, if it was registered.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let mut found = None;
        self.registry.visit_counters(|key, value| {
            if key.name() == name && has_labels(key, labels) {
                found = Some(value.load(Ordering::Relaxed));
            }
        });
        found
    }

    /// Every series of counter `name`: its labels and value.
    pub fn counters(&self, name: &str) -> Vec<(Vec<(String, String)>, u64)> {
        let mut out = Vec::new();
        self.registry.visit_counters(|key, value| {
            if key.name() == name {
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                out.push((labels, value.load(Ordering::Relaxed)));
            }
        });
        out
    }

    /// The gauge `name` with exactly `labels`, if it was registered.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        self.registry.visit_gauges(|key, value| {
            if key.name() == name && has_labels(key, labels) {
                found = Some(f64::from_bits(value.load(Ordering::Relaxed)));
            }
        });
        found
    }
}

/// One line per series, `name{label="value",...} value`, sorted: for
/// failure messages.
impl std::fmt::Display for MetricValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let series = |key: &Key, value: String| {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
                .collect();
            format!("{}{{{}}} {value}", key.name(), labels.join(","))
        };
        let mut lines = Vec::new();
        self.registry.visit_counters(|key, value| {
            lines.push(series(key, value.load(Ordering::Relaxed).to_string()));
        });
        self.registry.visit_gauges(|key, value| {
            lines.push(series(
                key,
                f64::from_bits(value.load(Ordering::Relaxed)).to_string(),
            ));
        });
        lines.sort();
        for line in lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

impl Recorder for MetricValues {
    // Help texts are the exporter's business.
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    // Not kept: a histogram's samples would pile up for as long as the
    // process runs.
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Every route of the operations listener: `/healthz`, `/readyz`,
/// `/metrics`, and `/admin/*` (behind `config.admin_token` when set).
pub fn router(readiness: Readiness, reloader: FenceReloader, config: &OpsConfig) -> Router {
    let admin = geofence_routes(reloader, config.reload_min_interval);
    let admin = match &config.admin_token {
        Some(token) => {
            let expected: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            admin.layer(axum::middleware::from_fn(move |request, next| {
                require_token(expected, request, next)
            }))
        }
        None => admin,
    };
    routes(readiness).merge(admin)
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn routes(readiness: Readiness) -> Router {
    let handle = prometheus();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.get();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(handle.render())))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `401` unless the request bears the admin token. Compared as SHA-256
/// digests in constant time: neither the token's bytes nor its length leak
/// through timing.
async fn require_token(expected: [u8; 32], request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Sha256::digest(token.trim().as_bytes()));
    let authorized = given.is_some_and(|g| bool::from(g.as_slice().ct_eq(&expected)));
    if !authorized {
        tracing::warn!(
            path = request.uri().path(),
            "admin request without the admin token refused"
        );
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "this endpoint requires Authorization: Bearer <ops.admin_token>".into(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// `POST /admin/geofences/reload`: reloads the fences from every configured
/// source and answers when done: 200 with `{"fences": N, "cell_size_m": C,
/// "took_ms": T}`, or 422 with `{"error": "..."}` (the previous fences stay
/// in use). Reloads run one at a time (a request arriving during one waits
/// for it), and one may start only `min_interval` after the previous one
/// ended, else 429 with `Retry-After` (seconds). The reload finishes even if
/// the client goes away.
pub fn geofence_routes(reloader: FenceReloader, min_interval: Duration) -> Router {
    // When the last reload requested here ended; held for a whole reload.
    let last = Arc::new(tokio::sync::Mutex::new(None::<Instant>));
    Router::new().route(
        "/admin/geofences/reload",
        post(move || {
            let reloader = reloader.clone();
            let last = Arc::clone(&last);
            async move {
                let reload = tokio::spawn(async move {
                    let mut last = last.lock().await;
                    if let Some(ended) = *last {
                        let wait = (ended + min_interval).saturating_duration_since(Instant::now());
                        if !wait.is_zero() {
                            return Err(wait);
                        }
                    }
                    let result = reloader.reload().await;
                    *last = Some(Instant::now());
                    Ok(result)
                });
                let response: Response = match reload.await {
                    Ok(Ok(Ok(report))) => (StatusCode::OK, Json(report)).into_response(),
                    Ok(Ok(Err(e))) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
                    Ok(Err(wait)) => {
                        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                        let mut response = error(
                            StatusCode::TOO_MANY_REQUESTS,
                            format!(
                                "geofences were reloaded less than ops.reload_min_interval ({}) ago; retry in {seconds} s",
                                humantime::format_duration(min_interval)
                            ),
                        );
                        response
                            .headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                        response
                    }
                    Err(e) => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("geofence reload task failed: {e}"),
                    ),
                };
                response
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::MetricValues;

    #[test]
    fn values_are_read_back_by_name_and_exact_labels() {
        let values = MetricValues::default();
        metrics::with_local_recorder(&values, || {
            metrics::counter!("c", "sink" => "file", "stream" => "events").increment(3);
            metrics::counter!("c", "sink" => "kafka", "stream" => "events").increment(1);
            metrics::gauge!("g").set(2.5);
            metrics::histogram!("h").record(1.0);
        });
        let both = [("stream", "events"), ("sink", "file")];
        assert_eq!(values.counter("c", &both), Some(3));
        assert_eq!(values.counter("c", &[("sink", "file")]), None);
        assert_eq!(values.counter("g", &[]), None);
        assert_eq!(values.gauge("g", &[]), Some(2.5));
        let mut all: Vec<u64> = values.counters("c").into_iter().map(|(_, n)| n).collect();
        all.sort_unstable();
        assert_eq!(all, [1, 3]);
        assert_eq!(
            values.to_string(),
            "c{sink=\"file\",stream=\"events\"} 3\nc{sink=\"kafka\",stream=\"events\"} 1\ng{} 2.5\n"
        );
    }
}
