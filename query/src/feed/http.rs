//! The feed's two endpoints on the query API's listener: `GET /v1/feed`
//! (WebSocket; subscribe messages from the client) and `GET /v1/feed/sse`
//! (Server-Sent Events; the subscription in the query parameters).
//!
//! Both authenticate like every API request (a configured token or a share
//! link), and also take the token where browsers can put it: a
//! `Sec-WebSocket-Protocol` value `bearer.<token>` (WebSocket) or the
//! `access_token` query parameter (both). The token is never logged
//! (request logs and metrics carry the route template only).

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::filter::{Grant, SubscribeRequest, Subscription};
use super::session::{Out, Reason, Session, ShareCheck, closing, every};
use super::{Feed, quoted};
use crate::api::{AppState, now};
use crate::auth::{Access, bearer, token_hash};
use crate::error::{ApiError, ErrorBody};
use crate::metrics;
use crate::params::Params;

/// The subprotocol a browser offers (with `bearer.<token>`); the server
/// answers with it, never with the token.
pub(crate) const SUBPROTOCOL: &str = "fleetpipe.feed.v1";

/// Prefix of the `Sec-WebSocket-Protocol` value that carries a token.
const PROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// Largest WebSocket message read at all; a larger one ends the
/// connection without a close message (the subscribe limit proper is
/// `api.feed.max_subscribe_bytes`, answered with a close reason).
const HARD_MESSAGE_LIMIT: usize = 2 << 20;

/// The WebSocket's read buffer. A feed client only sends subscribe messages
/// (a larger one is read in several chunks), and the library's default of
/// 128 KiB was zero-filled before every read attempt (one after every
/// message sent): some 16 % of fleetpipe's CPU with 1,000 clients, and most
/// of each client's memory (BENCHMARKS.md, "Live feed fan-out").
const READ_BUFFER: usize = 4096;

/// The SSE endpoint's parameters.
const SSE_PARAMS: [&str; 9] = [
    "access_token",
    "vehicles",
    "fences",
    "bbox",
    "h3",
    "event_types",
    "positions",
    "events",
    "resume",
];

type AppStateRef = Arc<AppState>;

/// The presented token: `Authorization: Bearer`, then (WebSocket) a
/// `bearer.<token>` subprotocol, then `access_token`.
fn presented<'a>(
    headers: &'a HeaderMap,
    pairs: &'a [(String, String)],
    protocols: bool,
) -> Result<String, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(bearer)
            .map(str::to_owned)
            .ok_or(ApiError::Unauthorized(
                "the Authorization header is not Bearer <token>",
            ));
    }
    if protocols {
        let offered = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find_map(|p| p.strip_prefix(PROTOCOL_TOKEN_PREFIX));
        if let Some(token) = offered.filter(|t| !t.is_empty()) {
            return Ok(token.to_owned());
        }
    }
    pairs
        .iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
        .ok_or(ApiError::Unauthorized(
            "send Authorization: Bearer <token> (or, from a browser, the access_token parameter)",
        ))
}

/// The caller, its feed and the share-link check of its stream.
async fn admit(
    state: &AppStateRef,
    headers: &HeaderMap,
    pairs: &[(String, String)],
    protocols: bool,
) -> Result<(Feed, Grant, Option<ShareCheck>), ApiError> {
    let token = presented(headers, pairs, protocols)?;
    let access = state.authenticate(&token).await?;
    let feed = state.feed.clone().ok_or_else(|| {
        ApiError::NotFound("the live feed is not configured ([api.feed])".to_owned())
    })?;
    let share = match &access {
        Access::Share(grant) => {
            let left = (grant.to - now()).max(time::Duration::ZERO);
            let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
            Some(ShareCheck {
                state: Arc::clone(state),
                hash: token_hash(&token),
                expires: tokio::time::Instant::now() + left,
                every: every(feed.config().share_check_interval),
            })
        }
        Access::Token { .. } => None,
    };
    Ok((feed, Grant::of(&access), share))
}

fn pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    query
        .map(|Query(p)| p)
        .map_err(|e| ApiError::bad("query", e.body_text()))
}

fn full() -> ApiError {
    ApiError::Unavailable("api.feed.max_clients".to_owned())
}

/// The live feed over WebSocket.
///
/// After the upgrade the client sends a subscribe message (JSON text) and
/// may replace it; the server sends a snapshot of the matching vehicles'
/// latest positions, then positions and events as they happen, each with a
/// resume token. docs/feed.md has the messages. The token may also be a
/// `Sec-WebSocket-Protocol` value `bearer.<token>` (offer `fleetpipe.feed.v1`
/// beside it) or the `access_token` parameter, for browsers.
#[utoipa::path(
    get,
    path = "/v1/feed",
    tag = "feed",
    params(
        ("access_token" = Option<String>, Query, description = "The token, for clients that cannot set Authorization (it may end up in proxy logs: prefer the header or the subprotocol)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket feed (docs/feed.md)"),
        (status = 400, description = "Not a WebSocket handshake, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "No token, an unknown one, or a share link that expired or was revoked", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
        (status = 404, description = "The live feed is not configured ([api.feed])", body = ErrorBody),
        (status = 503, description = "api.feed.max_clients clients are connected", body = ErrorBody),
    )
)]
pub(crate) async fn feed_ws(
    State(state): State<AppStateRef>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let pairs = pairs(query)?;
    let (feed, grant, share) = admit(&state, &headers, &pairs, true).await?;
    Params::new(pairs, &["access_token"])?;
    let ws = ws.map_err(|e| ApiError::bad("upgrade", e.body_text()))?;
    let handle = feed.connect(grant, "ws").ok_or_else(full)?;
    let config = feed.config().clone();
    let session = Session::new(handle, share, Some(config.keepalive));
    Ok(ws
        .protocols([SUBPROTOCOL])
        .max_message_size(HARD_MESSAGE_LIMIT)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let reason = run_ws(socket, session, &config).await;
            metrics::feed_disconnects(reason.as_str()).increment(1);
        }))
}

/// Writes `text`, within the write timeout.
async fn send(socket: &mut WebSocket, message: Message, timeout: Duration) -> Result<(), Reason> {
    match tokio::time::timeout(timeout, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Reason::Client),
        Err(_) => Err(Reason::WriteTimeout),
    }
}

/// Ends the socket with a close frame, then waits (up to `timeout`) for
/// the client's close frame, reading and dropping whatever it sent before
/// it. Dropping the socket at once would lose the last messages: a client
/// that sent anything the server has not read (a pong to a keepalive ping
/// while the server waited on a full send buffer, say) gets a TCP reset
/// when the socket is closed, and a reset discards what the kernel still
/// held for it, the `overflow` message with its resume token among them
/// (RFC 6455 7.1.1: the server closes the TCP connection after the
/// closing handshake).
async fn close(socket: &mut WebSocket, reason: Reason, timeout: Duration) {
    let frame = CloseFrame {
        code: reason.close_code(),
        reason: reason.as_str().into(),
    };
    if send(socket, Message::Close(Some(frame)), timeout)
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
        }
    })
    .await;
}

async fn run_ws(mut socket: WebSocket, mut session: Session, config: &super::FeedConfig) -> Reason {
    let timeout = config.write_timeout;
    let mut recent: std::collections::VecDeque<StdInstant> = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            out = session.next() => match out {
                Out::Message { kind, json, .. } => {
                    if let Err(reason) = send(&mut socket, Message::Text(json.to_string().into()), timeout).await {
                        return reason;
                    }
                    metrics::feed_messages(kind).increment(1);
                }
                Out::Keepalive => {
                    if let Err(reason) = send(&mut socket, Message::Ping(Default::default()), timeout).await {
                        return reason;
                    }
                }
                Out::Close { reason, kind, json } => {
                    if send(&mut socket, Message::Text(json.into()), timeout).await.is_ok() {
                        metrics::feed_messages(kind).increment(1);
                        close(&mut socket, reason, timeout).await;
                    }
                    return reason;
                }
            },
            frame = socket.recv() => {
                let text = match frame {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Reason::Client,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => None,
                    Some(Ok(Message::Text(t))) => Some(t),
                };
                let now = StdInstant::now();
                recent.push_back(now);
                while recent.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
                    recent.pop_front();
                }
                if recent.len() > config.max_subscribes_per_minute {
                    let detail = format!(
                        "more than api.feed.max_subscribes_per_minute ({}) messages in a minute",
                        config.max_subscribes_per_minute
                    );
                    return finish(&mut socket, &session, Reason::Flood, &detail, timeout).await;
                }
                let Some(text) = text else {
                    session.say("error", error_json("message", "subscribe messages are JSON text, not binary"));
                    continue;
                };
                if text.len() > config.max_subscribe_bytes {
                    let detail = format!(
                        "a subscribe message of {} bytes, more than api.feed.max_subscribe_bytes ({})",
                        text.len(),
                        config.max_subscribe_bytes
                    );
                    return finish(&mut socket, &session, Reason::Oversized, &detail, timeout).await;
                }
                match parse_subscribe(text.as_str(), config.max_filter_items) {
                    Ok((subscription, resume)) => session.subscribe(subscription, resume.as_deref()),
                    Err((field, detail)) => session.say("error", error_json(field, &detail)),
                }
            }
        }
    }
}

/// Sends the close message of `reason`, then the close frame.
async fn finish(
    socket: &mut WebSocket,
    session: &Session,
    reason: Reason,
    detail: &str,
    timeout: Duration,
) -> Reason {
    if let Out::Close { json, kind, .. } = closing(reason, detail, &session.last_token())
        && send(socket, Message::Text(json.into()), timeout)
            .await
            .is_ok()
    {
        metrics::feed_messages(kind).increment(1);
        close(socket, reason, timeout).await;
    }
    reason
}

/// The error message of a refused subscribe message; the connection and
/// the subscription in force stay as they were.
fn error_json(field: &str, detail: &str) -> String {
    format!(
        "{{\"type\":\"error\",\"error\":\"bad_subscription\",\"field\":{},\"detail\":{}}}",
        quoted(field),
        quoted(detail)
    )
}

fn parse_subscribe(
    text: &str,
    max_items: usize,
) -> Result<(Subscription, Option<String>), (&'static str, String)> {
    let request: SubscribeRequest = serde_json::from_str(text)
        .map_err(|e| ("message", format!("not a subscribe message: {e}")))?;
    if request.message_type.is_none() {
        return Err((
            "type",
            "a subscribe message has \"type\": \"subscribe\"".to_owned(),
        ));
    }
    let subscription = Subscription::parse(&request, max_items).map_err(|e| (e.field, e.detail))?;
    Ok((subscription, request.resume))
}

/// The SSE endpoint's subscription, from its parameters.
fn sse_request(params: &Params, last_event_id: Option<&str>) -> Result<SubscribeRequest, ApiError> {
    let list = |name: &str| {
        params.get(name).map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
    };
    let flag = |name: &str| match params.get(name) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(ApiError::bad(name, format!("{v:?} is not true or false"))),
    };
    let bbox = match params.get("bbox") {
        None => None,
        Some(v) => {
            let b = crate::params::BBox::parse(v)?;
            Some(vec![b.min_lon, b.min_lat, b.max_lon, b.max_lat])
        }
    };
    Ok(SubscribeRequest {
        message_type: None,
        vehicles: list("vehicles"),
        fences: list("fences"),
        bbox,
        h3: list("h3"),
        event_types: list("event_types"),
        positions: flag("positions")?,
        events: flag("events")?,
        resume: last_event_id
            .map(str::to_owned)
            .or_else(|| params.get("resume").map(str::to_owned)),
    })
}

/// The live feed as Server-Sent Events.
///
/// The subscription is in the parameters; each message is an SSE event
/// named by its type (`snapshot`, `position`, `event`, `gap`, `resumed`,
/// `overflow`, `close`) whose `id` is its resume token, so a reconnecting
/// `EventSource` resumes by itself (`Last-Event-ID`). docs/feed.md has
/// the messages.
#[utoipa::path(
    get,
    path = "/v1/feed/sse",
    tag = "feed",
    params(
        ("access_token" = Option<String>, Query, description = "The token, for EventSource (which cannot set headers); it may end up in proxy logs"),
        ("vehicles" = Option<String>, Query, description = "Only these vehicles, comma-separated"),
        ("fences" = Option<String>, Query, description = "Only positions inside / events of these fences, comma-separated"),
        ("bbox" = Option<String>, Query, description = "minLon,minLat,maxLon,maxLat"),
        ("h3" = Option<String>, Query, description = "H3 cells (hex, any resolution), comma-separated"),
        ("event_types" = Option<String>, Query, description = "Only these event types, comma-separated"),
        ("positions" = Option<bool>, Query, description = "Positions wanted (default true)"),
        ("events" = Option<bool>, Query, description = "Events wanted (default true)"),
        ("resume" = Option<String>, Query, description = "Resume after this token (Last-Event-ID wins)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this token"),
    ),
    responses(
        (status = 200, description = "The event stream (docs/feed.md)", content_type = "text/event-stream", body = String),
        (status = 400, description = "A parameter is malformed", body = ErrorBody),
        (status = 401, description = "No token, an unknown one, or a share link that expired or was revoked", body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer realm=\"fleetpipe\""))),
        (status = 404, description = "The live feed is not configured ([api.feed])", body = ErrorBody),
        (status = 503, description = "api.feed.max_clients clients are connected", body = ErrorBody),
    )
)]
pub(crate) async fn feed_sse(
    State(state): State<AppStateRef>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let pairs = pairs(query)?;
    let (feed, grant, share) = admit(&state, &headers, &pairs, false).await?;
    let params = Params::new(pairs, &SSE_PARAMS)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let request = sse_request(&params, last_event_id)?;
    let config = feed.config().clone();
    let subscription = Subscription::parse(&request, config.max_filter_items)
        .map_err(|e| ApiError::bad(e.field, e.detail))?;
    let handle = feed.connect(grant, "sse").ok_or_else(full)?;
    let mut session = Session::new(handle, share, None);
    session.subscribe(subscription, request.resume.as_deref());
    let (tx, mut rx) = mpsc::channel::<Event>(1);
    tokio::spawn(async move {
        let reason = run_sse(session, tx, config.write_timeout).await;
        metrics::feed_disconnects(reason.as_str()).increment(1);
    });
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|e| e.map(Ok::<_, std::convert::Infallible>))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(feed.config().keepalive))
        .into_response())
}

async fn run_sse(mut session: Session, tx: mpsc::Sender<Event>, timeout: Duration) -> Reason {
    loop {
        let out = tokio::select! {
            out = session.next() => out,
            () = tx.closed() => return Reason::Client,
        };
        let (event, kind, close) = match out {
            Out::Message { kind, resume, json } => (
                Event::default().event(kind).id(resume).data(&*json),
                kind,
                None,
            ),
            Out::Keepalive => continue,
            Out::Close { reason, kind, json } => (
                Event::default()
                    .event(kind)
                    .id(session.last_token())
                    .data(json),
                kind,
                Some(reason),
            ),
        };
        match tokio::time::timeout(timeout, tx.send(event)).await {
            Ok(Ok(())) => metrics::feed_messages(kind).increment(1),
            Ok(Err(_)) => return Reason::Client,
            Err(_) => return Reason::WriteTimeout,
        }
        if let Some(reason) = close {
            // The final comment, then the end of the stream.
            let _ = tx
                .send(Event::default().comment(format!("closing: {}", reason.as_str())))
                .await;
            return reason;
        }
    }
}
