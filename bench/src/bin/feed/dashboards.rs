//! The feed's clients: WebSocket connections to `GET /v1/feed` with the
//! fleet token in the `Authorization` header, each subscribed to its own
//! bounding box. Each keeps every position it gets with the time the frame
//! was read (µs since the run's start), and counts everything else.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_util::sync::CancellationToken;

use crate::report::Delivery;

/// What one client saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub deliveries: Vec<Delivery>,
    /// Positions in its snapshot messages.
    pub snapshot_positions: u64,
    /// Messages by type, positions and snapshots included.
    pub messages: BTreeMap<String, u64>,
    /// Positions whose vehicle or time could not be read.
    pub unreadable: u64,
    /// The close frame fleetpipe sent, if any: (code, reason).
    pub closed: Option<(u16, String)>,
    /// Why the connection failed, if it did.
    pub error: Option<String>,
}

/// Counts clients whose first snapshot is complete.
#[derive(Debug, Default)]
pub struct Ready {
    count: AtomicUsize,
    notify: Notify,
}

impl Ready {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn one(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    /// Waits until at least `n` are ready or `deadline` passes.
    pub async fn wait(&self, n: usize, deadline: tokio::time::Instant) -> usize {
        loop {
            let notified = self.notify.notified();
            if self.count() >= n {
                return self.count();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count();
            }
        }
    }
}

/// A server message, as far as the benchmark reads it.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    vehicle_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    ts: Option<Cow<'a, str>>,
    #[serde(default)]
    more: Option<bool>,
    #[serde(default)]
    positions: Option<Vec<serde::de::IgnoredAny>>,
}

/// The simulator's vehicle index of `sim-000042`.
pub fn vehicle_index(id: &str, prefix: &str) -> Option<u32> {
    id.strip_prefix(prefix)?.parse().ok()
}

/// Epoch milliseconds of an RFC 3339 time.
pub fn epoch_ms(ts: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(ts, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Reads one text frame into `out`; whether it completed the first
/// snapshot.
pub fn take(out: &mut Outcome, text: &str, at_us: i64, prefix: &str, snapshot_done: bool) -> bool {
    let Ok(m) = serde_json::from_str::<Incoming<'_>>(text) else {
        *out.messages.entry("unreadable".to_owned()).or_default() += 1;
        return false;
    };
    *out.messages.entry(m.kind.clone().into_owned()).or_default() += 1;
    match &*m.kind {
        "position" => {
            let vehicle = m
                .vehicle_id
                .as_deref()
                .and_then(|v| vehicle_index(v, prefix));
            let ts = m.ts.as_deref().and_then(epoch_ms);
            match (vehicle, ts) {
                (Some(vehicle), Some(ts_ms)) => out.deliveries.push(Delivery {
                    vehicle,
                    ts_ms,
                    at_us,
                }),
                _ => out.unreadable += 1,
            }
            false
        }
        "snapshot" => {
            out.snapshot_positions += m.positions.map_or(0, |p| p.len() as u64);
            !snapshot_done && m.more == Some(false)
        }
        _ => false,
    }
}

/// The clients' shared settings.
#[derive(Debug, Clone)]
pub struct Dashboards {
    pub url: String,
    pub token: String,
    pub prefix: String,
    pub t0: Instant,
    pub ready: Arc<Ready>,
    pub stop: CancellationToken,
    /// Handshakes at once while connecting.
    pub gate: Arc<Semaphore>,
}

impl Dashboards {
    /// One client subscribed to `bbox`, until `stop`.
    pub async fn client(self, bbox: [f64; 4]) -> Outcome {
        let mut out = Outcome::default();
        let request = match self.url.as_str().into_client_request() {
            Ok(mut r) => match format!("Bearer {}", self.token).parse() {
                Ok(v) => {
                    r.headers_mut().insert("authorization", v);
                    r
                }
                Err(e) => {
                    out.error = Some(format!("token header: {e}"));
                    return out;
                }
            },
            Err(e) => {
                out.error = Some(format!("{}: {e}", self.url));
                return out;
            }
        };
        let connected = {
            let _permit = self.gate.acquire().await;
            tokio_tungstenite::connect_async(request).await
        };
        let mut ws = match connected {
            Ok((ws, _)) => ws,
            Err(e) => {
                out.error = Some(format!("connect: {e}"));
                return out;
            }
        };
        let subscribe = serde_json::json!({
            "type": "subscribe",
            "bbox": bbox,
            "positions": true,
            "events": true,
        });
        if let Err(e) = ws.send(Message::Text(subscribe.to_string().into())).await {
            out.error = Some(format!("subscribe: {e}"));
            return out;
        }
        let t0 = self.t0;
        let mut snapshot_done = false;
        loop {
            let frame = tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    let _ = ws.close(None).await;
                    break;
                }
                f = ws.next() => f,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let at_us = i64::try_from(t0.elapsed().as_micros()).unwrap_or(i64::MAX);
                    if take(&mut out, text.as_str(), at_us, &self.prefix, snapshot_done) {
                        snapshot_done = true;
                        self.ready.one();
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    out.closed = Some(f.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    }));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    out.error = Some(format!("read: {e}"));
                    break;
                }
                None => {
                    out.error = Some("connection ended without a close frame".to_owned());
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_kept_by_vehicle_and_device_time() {
        let mut out = Outcome::default();
        let done = take(
            &mut out,
            r#"{"type":"position","resume":"1-2","vehicle_id":"sim-000042","ts":"2026-12-07T15:20:01.250Z","lat":52.5,"lon":13.4,"speed_kmh":null,"heading_deg":null,"soc_pct":null,"charging":null,"ignition":null,"fences":[]}"#,
            77,
            "sim-",
            true,
        );
        assert!(!done);
        assert_eq!(
            out.deliveries,
            vec![Delivery {
                vehicle: 42,
                ts_ms: epoch_ms("2026-12-07T15:20:01.250Z").unwrap(),
                at_us: 77
            }]
        );
        assert_eq!(epoch_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(epoch_ms("1970-01-01T00:00:01Z"), Some(1000));
    }

    #[test]
    fn the_last_chunk_of_the_first_snapshot_makes_the_client_ready() {
        let mut out = Outcome::default();
        let chunk = |more: bool| {
            format!(
                r#"{{"type":"snapshot","resume":"1-0","positions":[{{"vehicle_id":"sim-000001"}},{{"vehicle_id":"sim-000002"}}],"more":{more}}}"#
            )
        };
        assert!(!take(&mut out, &chunk(true), 1, "sim-", false));
        assert!(take(&mut out, &chunk(false), 2, "sim-", false));
        assert!(!take(&mut out, &chunk(false), 3, "sim-", true));
        assert_eq!(out.snapshot_positions, 6);
        assert_eq!(out.messages.get("snapshot"), Some(&3));
        assert!(out.deliveries.is_empty());
    }

    #[test]
    fn other_messages_are_counted_and_garbage_is_unreadable() {
        let mut out = Outcome::default();
        take(
            &mut out,
            r#"{"type":"event","resume":"1-3","event":{}}"#,
            1,
            "sim-",
            true,
        );
        take(&mut out, "not json", 1, "sim-", true);
        take(
            &mut out,
            r#"{"type":"position","vehicle_id":"other-1","ts":"2026-12-07T15:20:01Z"}"#,
            1,
            "sim-",
            true,
        );
        assert_eq!(out.messages.get("event"), Some(&1));
        assert_eq!(out.messages.get("unreadable"), Some(&1));
        assert_eq!(out.unreadable, 1);
    }
}
