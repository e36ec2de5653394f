//! Operational endpoints on the HTTP listener: `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text format), and `POST /admin/geofences/reload`.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::fences::FenceReloader;

/// Whether the pipeline takes traffic: set once every stage runs, and false
/// from the moment shutdown is requested (so load balancers stop sending
/// first), without waiting for any task to notice.
#[derive(Debug, Clone)]
pub struct Readiness {
    started: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl Readiness {
    /// Not ready until [`set`](Self::set); never ready once `shutdown` fires.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            started: Arc::default(),
            shutdown,
        }
    }

    /// Marks ready or not.
    pub fn set(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    /// Whether ready.
    pub fn get(&self) -> bool {
        self.started.load(Ordering::SeqCst) && !self.shutdown.is_cancelled()
    }
}

/// The process-wide Prometheus recorder, installed on first use. Pipelines
/// started in one process (tests) share it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
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

/// `POST /admin/geofences/reload`: reloads the fences from every configured
/// source and answers when done: 200 with `{"fences": N, "cell_size_m": C,
/// "took_ms": T}`, or 422 with `{"error": "..."}` (the previous fences stay
/// in use). Reloads are serialized; the reload finishes even if the client
/// goes away.
pub fn geofence_routes(reloader: FenceReloader) -> Router {
    Router::new().route(
        "/admin/geofences/reload",
        post(move || {
            let reloader = reloader.clone();
            async move {
                let reload = tokio::spawn(async move { reloader.reload().await });
                let error = |status: StatusCode, message: String| {
                    (status, Json(serde_json::json!({ "error": message }))).into_response()
                };
                let response: Response = match reload.await {
                    Ok(Ok(report)) => (StatusCode::OK, Json(report)).into_response(),
                    Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
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
