//! Clients of the live feed for the tests: WebSocket connections with a
//! token, subscribe messages, and reading what comes with a deadline.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::api::ApiTest;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn ws_url(t: &ApiTest) -> String {
    t.base.replace("http://", "ws://") + "/v1/feed"
}

/// A WebSocket to the feed with `token` in the Authorization header.
pub async fn connect(t: &ApiTest, token: &str) -> Ws {
    tokio_tungstenite::connect_async(request(t, token))
        .await
        .unwrap()
        .0
}

pub async fn subscribe(ws: &mut Ws, body: Value) {
    let mut body = body;
    body["type"] = json!("subscribe");
    ws.send(Message::Text(body.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message, or `None` on close / after `wait` (pings and
/// pongs in between do not extend it: a feed with a short keepalive would
/// otherwise never be quiet).
pub async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Every message until none came for `quiet`.
pub async fn drain(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = next(ws, quiet).await {
        out.push(m);
    }
    out
}

/// The close frame's code and reason after the messages before it (at
/// most 20 s between two messages; pings do not count).
pub async fn close_frame(ws: &mut Ws) -> (Vec<Value>, Option<(u16, String)>) {
    let mut messages = Vec::new();
    let patience = Duration::from_secs(20);
    let mut deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                messages.push(serde_json::from_str(&t).unwrap());
                deadline = tokio::time::Instant::now() + patience;
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                return (
                    messages,
                    f.map(|f| (u16::from(f.code), f.reason.to_string())),
                );
            }
            Ok(Some(Ok(_))) => {}
            _ => return (messages, None),
        }
    }
}

pub fn types(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect()
}

/// A WebSocket request to the feed with `token` in the Authorization
/// header.
pub fn request(
    t: &ApiTest,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut r = ws_url(t).into_client_request().unwrap();
    r.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}
