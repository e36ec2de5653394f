//! WebSocket transport: one connection per vehicle to `GET /v1/ws`, opened
//! at the vehicle's first message.
//!
//! fleetpipe answers every data frame with one JSON text frame, in order,
//! once the frame's records are durable (wire contract §6, §10), so the
//! answers pair with the sent frames by position and the latency measured
//! is publish-to-durable. Up to `inflight` frames are sent back to back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::{ConnCtx, Pending, WsConfig, pings_of, reconnect_after};
use crate::{Encoding, SimMessage, StatsHandle, encode_json, encode_protobuf};

/// The per-vehicle connections of a run.
#[derive(Debug)]
pub(super) struct Router {
    url: String,
    inflight: usize,
    ctx: ConnCtx,
    queues: Vec<Option<mpsc::Sender<SimMessage>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Router {
    pub(super) fn new(
        cfg: &WsConfig,
        encoding: Encoding,
        vehicles: usize,
        stats: &StatsHandle,
        stop: &CancellationToken,
        drain: Duration,
    ) -> Self {
        Self {
            url: cfg.url.clone(),
            inflight: cfg.inflight.max(1) as usize,
            ctx: ConnCtx {
                encoding,
                stats: stats.clone(),
                stop: stop.clone(),
                drain,
            },
            queues: vec![None; vehicles],
            tasks: Vec::new(),
        }
    }

    /// The vehicle's queue; its connection task starts on first use.
    pub(super) fn queue(&mut self, vehicle: u32) -> Option<&mpsc::Sender<SimMessage>> {
        let slot = self.queues.get_mut(vehicle as usize)?;
        if slot.is_none() {
            // A couple of windows of frames: enough to keep the socket busy.
            let (tx, rx) = mpsc::channel(self.inflight * 2);
            self.tasks.push(tokio::spawn(connection(
                self.url.clone(),
                self.inflight,
                self.ctx.clone(),
                rx,
            )));
            *slot = Some(tx);
        }
        slot.as_ref()
    }

    pub(super) fn into_tasks(self) -> Vec<JoinHandle<()>> {
        self.tasks
    }
}

/// An answer frame (wire contract §6): `{"ack":N, "rejected":[…]}` or
/// `{"error":{…}, "rejected":[…]}`.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    ack: Option<u64>,
    #[serde(default)]
    rejected: Vec<IgnoredAny>,
}

fn settle(stats: &StatsHandle, p: Pending, text: &str) {
    match serde_json::from_str::<Answer>(text) {
        Ok(a) => {
            let rejected = a.rejected.len().min(p.pings);
            if a.ack.is_some() {
                let latency = p.sent.map(|s| s.elapsed()).unwrap_or_default();
                stats.acked(p.pings, rejected, latency);
            } else {
                stats.failed(1, p.pings, rejected);
            }
        }
        Err(_) => stats.failed(1, p.pings, 0),
    }
}

/// One vehicle's connection: send frames from `rx`, pair answers, reconnect.
async fn connection(url: String, window: usize, ctx: ConnCtx, mut rx: mpsc::Receiver<SimMessage>) {
    let mut backoff = Duration::from_millis(100);
    let mut closing: Option<Instant> = None;
    'connect: loop {
        let connected = tokio::select! {
            () = ctx.stop.cancelled() => break 'connect,
            r = tokio_tungstenite::connect_async(url.as_str()) => r,
        };
        let (sink, stream) = match connected {
            Ok((ws, _)) => ws.split(),
            Err(e) => {
                tracing::debug!(error = %e, %url, "WebSocket connect failed");
                ctx.stats.connection_error();
                if !reconnect_after(&ctx.stop, &mut backoff).await {
                    break 'connect;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = (sink, stream);
        ctx.stats.connection_opened();
        backoff = Duration::from_millis(100);
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let graceful = loop {
            if closing.is_some() && pending.is_empty() {
                break true;
            }
            let room = closing.is_none() && pending.len() < window;
            let deadline = closing.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                biased;
                () = ctx.stop.cancelled(), if closing.is_none() => {
                    closing = Some(Instant::now() + ctx.drain);
                }
                () = tokio::time::sleep_until(deadline.into()), if closing.is_some() => break true,
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(p) = pending.pop_front() {
                            settle(&ctx.stats, p, text.as_str());
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break false,
                    Some(Ok(_)) => {}
                },
                msg = rx.recv(), if room => match msg {
                    Some(m) => {
                        let mut p = Pending::of(&m);
                        let frame = match ctx.encoding {
                            Encoding::Json => Utf8Bytes::try_from(encode_json(&m)).map(Message::Text).ok(),
                            Encoding::Protobuf => Some(Message::Binary(encode_protobuf(&m))),
                        };
                        let Some(frame) = frame else {
                            ctx.stats.failed(1, p.pings, 0);
                            continue;
                        };
                        p.sent = Some(Instant::now());
                        if sink.send(frame).await.is_err() {
                            ctx.stats.failed(1, p.pings, 0);
                            break false;
                        }
                        ctx.stats.sent(p.pings);
                        pending.push_back(p);
                    }
                    None => closing = Some(Instant::now() + ctx.drain),
                },
            }
        };
        let (m, p) = pings_of(pending.iter());
        ctx.stats.failed(m, p, 0);
        ctx.stats.connection_closed();
        if graceful {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
            break 'connect;
        }
        ctx.stats.connection_error();
        if closing.is_some() {
            break 'connect;
        }
        if !reconnect_after(&ctx.stop, &mut backoff).await {
            break 'connect;
        }
    }
}
