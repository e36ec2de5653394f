//! WebSocket and HTTP gateways, on one axum router.
//!
//! - `GET /v1/ws`: a device streams messages over a WebSocket. Text frames are
//!   JSON, binary frames Protobuf. Every frame gets exactly one answer, once
//!   its records are durable: `{"ack": N}` (N = highest accepted `seq` when
//!   every accepted ping has one, else the count accepted), with a
//!   `"rejected"` list when some pings were refused, or `{"error": {...}}`.
//!   A bad frame never closes the connection.
//! - `POST /v1/pings`: the same, one message per request (phones uploading
//!   a buffered backlog, backfill).
//!
//! Credentials: `Authorization: Bearer <token>`, or `?token=` for browsers;
//! on a mutual TLS listener (`ingest.http.tls.client_ca_file`), the client
//! certificate instead (it names the vehicle; see `authenticate`).
//!
//! With `[ingest.http.tls]` the listener speaks TLS only: HTTPS and WSS on
//! the one port (see [`serve`] for the handshake's timeout and place under
//! `max_connections`).
//!
//! The listener ([`serve`]) closes connections that idle, send their head or
//! body too slowly, or exceed `max_connections`; a WebSocket session with no
//! frame from the device for `ws_idle_timeout` is closed. Operations
//! endpoints (health, metrics, admin) are not here: they have a listener of
//! their own (`[ops]`), for operators only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use fleetpipe_model::{Ack, AckStatus, Gateway, RejectReason, VehicleId};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticated, Authenticator, Identity};
use crate::codec::{Encoding, Rejection, VehicleScope};
use crate::gateway::{Ingestor, Message, Outcome};
use crate::tls::TlsConfig;

mod serve;

pub use serve::{ServeLimits, serve};

/// `ingest.http`: the devices' HTTP listener (WebSocket and HTTP ingest).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the listener.
    pub listen: SocketAddr,
    /// Longest a connection may wait for the first byte of a request (a new
    /// connection, or one kept alive after an answer) before it is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest from a request's first byte until its whole head (request
    /// line and headers) has arrived; then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest reading the body of `POST /v1/pings` may take, from the end
    /// of its head; then the answer is `408` and the connection is closed.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A WebSocket session with no frame from the device (data, ping or
    /// pong) for this long is closed (close code 1001).
    #[serde(with = "humantime_serde")]
    pub ws_idle_timeout: Duration,
    /// Most connections open at once, WebSocket sessions included (and,
    /// with TLS, connections still in their handshake); one more is
    /// answered `503` (closed without an answer on a TLS listener) and
    /// closed at once.
    pub max_connections: usize,
    /// TLS (`[ingest.http.tls]`): the listener speaks HTTPS and WSS only,
    /// the handshake bounded by `header_read_timeout`. With its
    /// `client_ca_file`, a device's client certificate is its credential
    /// and names its vehicle, as on the MQTT TLS listeners. Unset:
    /// plaintext HTTP and WebSocket.
    pub tls: Option<TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            ws_idle_timeout: Duration::from_secs(120),
            max_connections: 20_000,
            tls: None,
        }
    }
}

impl HttpConfig {
    /// The listener's limits, labelled `name`.
    pub fn limits(&self, name: &'static str) -> ServeLimits {
        ServeLimits {
            name,
            idle_timeout: self.idle_timeout,
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
        }
    }
}

#[derive(Clone)]
struct HttpState {
    ingestor: Ingestor,
    auth: Arc<Authenticator>,
    shutdown: CancellationToken,
    body_timeout: Duration,
    ws_idle_timeout: Duration,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The ingest routes (`/v1/ws`, `/v1/pings`), with `config`'s body and
/// WebSocket idle timeouts. WebSocket sessions close (after answering the
/// frame in hand) when `shutdown` fires.
pub fn routes(
    ingestor: Ingestor,
    auth: Arc<Authenticator>,
    config: &HttpConfig,
    shutdown: CancellationToken,
) -> Router {
    Router::new()
        .route("/v1/ws", get(ws_upgrade))
        .route("/v1/pings", post(post_pings))
        .with_state(HttpState {
            ingestor,
            auth,
            shutdown,
            body_timeout: config.body_timeout,
            ws_idle_timeout: config.ws_idle_timeout,
        })
}

/// An error answer of wire contract v1.
fn error_body(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

fn rejected_list(outcome: &Outcome) -> Vec<Value> {
    outcome
        .rejected
        .iter()
        .filter_map(|r| {
            r.index
                .map(|i| json!({ "index": i, "code": r.reason.as_str(), "message": r.detail }))
        })
        .collect()
}

/// The answer to one message: the HTTP status, the body and, for pings
/// over the rate limit, the seconds after which to send them again.
struct Answer {
    status: StatusCode,
    body: Value,
    retry_after_s: Option<u64>,
}

impl Answer {
    fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            retry_after_s: None,
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

fn answer(outcome: &Outcome, status: AckStatus) -> Answer {
    if status == AckStatus::Failed {
        return Answer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error_body("unavailable", "not stored durably; send again"),
        );
    }
    let rejected = rejected_list(outcome);
    if let Some(retry) = outcome.retry {
        // Part of the message must be sent again later: 429 even when the
        // rest was accepted, and an ack only where it covers no refused ping.
        let seconds = retry.after.as_secs_f64().ceil().max(1.0) as u64;
        let mut body = error_body(
            RejectReason::RateLimited.as_str(),
            &format!(
                "over the vehicle's rate limit: send the pings listed as rate_limited again after {seconds} s"
            ),
        );
        if let Some(ack) = outcome.ack() {
            body["ack"] = ack.into();
        }
        body["rejected"] = Value::Array(rejected);
        body["retry_after_s"] = seconds.into();
        return Answer {
            status: StatusCode::TOO_MANY_REQUESTS,
            body,
            retry_after_s: Some(seconds),
        };
    }
    if outcome.accepted == 0
        && let Some(first) = outcome.rejected.first()
    {
        let mut body = error_body(first.reason.as_str(), &first.detail);
        if !rejected.is_empty() {
            body["rejected"] = Value::Array(rejected);
        }
        let code = match first.reason {
            RejectReason::Oversize => StatusCode::PAYLOAD_TOO_LARGE,
            RejectReason::Unauthorized => StatusCode::FORBIDDEN,
            RejectReason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        return Answer::new(code, body);
    }
    let mut body = json!({ "ack": outcome.ack_value() });
    if !rejected.is_empty() {
        body["rejected"] = Value::Array(rejected);
    }
    Answer::new(StatusCode::OK, body)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// On a mutual TLS connection, the vehicle the verified client certificate
/// names, or why it names none. The listener adds it to every request of
/// the connection; a request without it came over a connection without
/// client certificates.
#[derive(Debug, Clone)]
pub(crate) struct ClientCertificate(pub(crate) Arc<Result<VehicleId, String>>);

/// Who sent a request. With a client certificate, the certificate is the
/// credential, as on the MQTT TLS listeners: it names the vehicle, a bearer
/// token or `?token=` is not looked at, and the identity does not expire
/// (the certificate's validity was checked at the handshake). Without one,
/// the token is checked by `ingest.auth`.
fn authenticate(
    state: &HttpState,
    headers: &HeaderMap,
    query_token: Option<&str>,
    certificate: Option<&ClientCertificate>,
    gateway: Gateway,
) -> Result<Authenticated, Box<Response>> {
    let verdict = match certificate {
        Some(ClientCertificate(vehicle)) => match vehicle.as_ref() {
            Ok(vehicle) => Ok(Authenticated {
                identity: Identity::Vehicle(vehicle.clone()),
                expires_at: None,
            }),
            Err(e) => Err(format!("client certificate: {e}")),
        },
        None => {
            let credential = bearer(headers).or(query_token);
            state
                .auth
                .authenticate_session(credential, None)
                .map_err(|e| e.to_string())
        }
    };
    verdict.map_err(|e| {
        crate::metrics::rejected(RejectReason::Unauthorized, gateway);
        tracing::info!(gateway = gateway.as_str(), error = %e, "device refused");
        let body = error_body(RejectReason::Unauthorized.as_str(), &e);
        Box::new((StatusCode::UNAUTHORIZED, axum::Json(body)).into_response())
    })
}

fn scope(identity: &Identity) -> VehicleScope<'_> {
    match identity.vehicle() {
        Some(v) => VehicleScope::Device(v.as_str()),
        None => VehicleScope::FirstPing,
    }
}

/// Ingests one message and waits until its records are settled.
async fn ingest_and_wait(
    state: &HttpState,
    identity: &Identity,
    payload: Bytes,
    encoding: Encoding,
    gateway: Gateway,
) -> Answer {
    let msg = Message {
        payload,
        encoding,
        scope: scope(identity),
        gateway,
        client: identity.vehicle().map(|v| Arc::from(v.as_str())),
        topic: None,
    };
    match state.ingestor.ingest(msg).await {
        Ok((outcome, batch)) => answer(&outcome, batch.wait().await),
        Err(_) => Answer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error_body(
                "unavailable",
                "fleetpipe is shutting down; send again later",
            ),
        ),
    }
}

async fn post_pings(
    State(state): State<HttpState>,
    Query(query): Query<TokenQuery>,
    certificate: Option<Extension<ClientCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let certificate = certificate.as_ref().map(|Extension(c)| c);
    let identity = match authenticate(
        &state,
        &headers,
        query.token.as_deref(),
        certificate,
        Gateway::Http,
    ) {
        Ok(session) => session.identity,
        Err(response) => return *response,
    };
    let limit = state.ingestor.validator().config().max_payload_bytes;
    let read = tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit)).await;
    let payload = match read {
        Ok(Ok(b)) => b,
        Err(_) => {
            crate::metrics::http_timed_out("device", "body");
            tracing::debug!(timeout = ?state.body_timeout, "request body too slow");
            let detail = format!(
                "request body not received within {}",
                humantime::format_duration(state.body_timeout)
            );
            let body = error_body("timeout", &detail);
            // The rest of the body is not read: the connection cannot be reused.
            return (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                axum::Json(body),
            )
                .into_response();
        }
        Ok(Err(_)) => {
            // Larger than the limit (or the body broke off): refuse without
            // reading the rest; nothing but the fact can be dead-lettered.
            let detail = format!("request body is larger than {limit} bytes");
            let rejection =
                Rejection::message(RejectReason::Oversize, detail.clone(), &Bytes::new());
            let client = identity.vehicle().map(|v| Arc::from(v.as_str()));
            let _ = state
                .ingestor
                .reject(rejection, Gateway::Http, client, None, Ack::none())
                .await;
            let body = error_body(RejectReason::Oversize.as_str(), &detail);
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
        }
    };
    let encoding = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct) if ct.contains("protobuf") => Encoding::Protobuf,
        _ => Encoding::Json,
    };
    ingest_and_wait(&state, &identity, payload, encoding, Gateway::Http)
        .await
        .into_response()
}

async fn ws_upgrade(
    State(state): State<HttpState>,
    Query(query): Query<TokenQuery>,
    certificate: Option<Extension<ClientCertificate>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let certificate = certificate.as_ref().map(|Extension(c)| c);
    let session = match authenticate(
        &state,
        &headers,
        query.token.as_deref(),
        certificate,
        Gateway::Websocket,
    ) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    // Frames up to the hard limit reach the validator, which refuses the
    // oversize ones with an answer; only beyond it does the socket close.
    let hard_limit =
        crate::mqtt::hard_packet_limit(state.ingestor.validator().config().max_payload_bytes);
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| ws_session(socket, state, session))
}

async fn ws_session(mut socket: WebSocket, state: HttpState, session: Authenticated) {
    crate::metrics::ws_session_opened();
    let identity = session.identity;
    // A session lives as long as its credential: at its expiry (a JWT's
    // `exp` plus the leeway) it is closed, and the device reconnects with
    // a fresh token.
    let expired = async {
        match session.expires_at {
            Some(at) => {
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(left).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    loop {
        let frame = tokio::select! {
            biased;
            () = state.shutdown.cancelled() => {
                let close = CloseFrame { code: 1001, reason: "fleetpipe is shutting down".into() };
                let _ = socket.send(WsMessage::Close(Some(close))).await;
                break;
            }
            () = &mut expired => {
                tracing::info!(vehicle_id = ?identity.vehicle(), "websocket session closed: credential expired");
                let close = CloseFrame { code: 1008, reason: "credential expired".into() };
                let _ = tokio::time::timeout(
                    state.ws_idle_timeout,
                    socket.send(WsMessage::Close(Some(close))),
                )
                .await;
                break;
            }
            frame = tokio::time::timeout(state.ws_idle_timeout, socket.recv()) => match frame {
                Ok(frame) => frame,
                Err(_) => {
                    crate::metrics::http_timed_out("device", "ws_idle");
                    let close = CloseFrame { code: 1001, reason: "idle timeout".into() };
                    // Bounded: a device that reads nothing must not hold the session.
                    let _ = tokio::time::timeout(
                        state.ws_idle_timeout,
                        socket.send(WsMessage::Close(Some(close))),
                    )
                    .await;
                    break;
                }
            },
        };
        let (payload, encoding) = match frame {
            Some(Ok(WsMessage::Text(text))) => (Bytes::from(text), Encoding::Json),
            Some(Ok(WsMessage::Binary(bin))) => (bin, Encoding::Protobuf),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket closed by error");
                break;
            }
        };
        let answer =
            ingest_and_wait(&state, &identity, payload, encoding, Gateway::Websocket).await;
        if socket
            .send(WsMessage::Text(answer.body.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    crate::metrics::ws_session_closed();
}
