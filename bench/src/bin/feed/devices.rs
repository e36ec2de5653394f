//! The devices: the fleet simulator's pings sent to fleetpipe's
//! `GET /v1/ws` (one connection per vehicle, as anonymous fleetpipe binds
//! a connection to its first ping's vehicle), at a rate the benchmark sets
//! and pauses. fleetpipe answers each frame once its pings are durable
//! (wire contract §6), in order, so answers pair with frames by position;
//! every accepted ping is kept with the time it was sent and the time its
//! answer arrived, by (vehicle, device time): what a feed client's
//! position is matched with.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetpipe_sim::{Fleet, SimMessage, encode_json};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::report::Acked;

/// How often the driver tops the rate up.
const TICK: Duration = Duration::from_millis(10);
/// WebSocket handshakes at once while the connections open.
const CONNECTING: usize = 64;

/// What one vehicle's connection saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub acked: Vec<Acked>,
    /// Pings refused, by the answer's code (`rejected[].code` or `error.code`).
    pub refused: BTreeMap<String, u64>,
    /// Pings never answered (connection failed or closed, or still pending
    /// at the end).
    pub unanswered: u64,
    /// Why the connection failed, if it did.
    pub error: Option<String>,
}

/// The devices' connections and the driver's controls.
#[derive(Debug)]
pub struct Devices {
    queues: Vec<mpsc::Sender<SimMessage>>,
    tasks: Vec<JoinHandle<Outcome>>,
}

impl Devices {
    /// One connection per vehicle to `url`, each with up to `window` frames
    /// awaiting their answer; times are µs since `t0`.
    pub fn connect(url: &str, vehicles: u32, window: usize, t0: Instant) -> Self {
        let gate = Arc::new(Semaphore::new(CONNECTING));
        let (queues, tasks) = (0..vehicles)
            .map(|_| {
                let (tx, rx) = mpsc::channel(window * 2);
                let task = tokio::spawn(connection(
                    url.to_owned(),
                    window.max(1),
                    rx,
                    t0,
                    Arc::clone(&gate),
                ));
                (tx, task)
            })
            .unzip();
        Self { queues, tasks }
    }

    /// Drives `fleet` at the rate `rate` says (pings/s; 0 pauses) until
    /// `stop`, counting the pings produced in `count`; simulated time never
    /// passes the clock (`start_wall_ms`: the clock now, epoch ms).
    pub async fn drive(
        &self,
        fleet: &mut Fleet,
        mut rate: watch::Receiver<f64>,
        stop: CancellationToken,
        start_wall_ms: i64,
        count: &AtomicU64,
    ) {
        let t0 = Instant::now();
        let mut produced = 0u64;
        let mut per_s = *rate.borrow_and_update();
        let mut base = (Instant::now(), 0u64);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                changed = rate.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    per_s = *rate.borrow_and_update();
                    base = (Instant::now(), produced);
                    continue;
                }
                _ = ticker.tick() => {}
            }
            if per_s <= 0.0 {
                continue;
            }
            let elapsed_ms = i64::try_from(t0.elapsed().as_millis()).unwrap_or(i64::MAX);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let owed = (per_s * base.0.elapsed().as_secs_f64()) as u64 + base.1;
            // After a stall, catch up at most a quarter second at once.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let want = owed
                .saturating_sub(produced)
                .min((per_s / 4.0).ceil() as u64 + 1);
            buf.clear();
            let n = fleet.advance_pings(
                usize::try_from(want).unwrap_or(usize::MAX),
                start_wall_ms.saturating_add(elapsed_ms),
                &mut buf,
            );
            produced += n as u64;
            count.store(produced, Ordering::Relaxed);
            for msg in buf.drain(..) {
                let Some(queue) = self.queues.get(msg.vehicle as usize) else {
                    continue;
                };
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    // A full queue waits: the rate is then what the answers allow.
                    _ = queue.send(msg) => {}
                }
            }
        }
    }

    /// Closes the queues, lets every connection take its last answers (up
    /// to `drain`), and gathers what they saw.
    pub async fn finish(self, drain: Duration) -> Vec<Outcome> {
        drop(self.queues);
        let mut out = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            match tokio::time::timeout(drain, task).await {
                Ok(Ok(o)) => out.push(o),
                Ok(Err(e)) => out.push(Outcome {
                    error: Some(format!("connection task: {e}")),
                    ..Outcome::default()
                }),
                Err(_) => out.push(Outcome {
                    error: Some("did not drain in time".to_owned()),
                    ..Outcome::default()
                }),
            }
        }
        out
    }
}

fn micros_since(t0: Instant) -> i64 {
    i64::try_from(t0.elapsed().as_micros()).unwrap_or(i64::MAX)
}

/// A frame awaiting its answer.
#[derive(Debug)]
struct Pending {
    msg: SimMessage,
    sent_us: i64,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    ack: Option<u64>,
    #[serde(default)]
    rejected: Vec<Rejected>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct Rejected {
    index: usize,
    code: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
}

/// Settles one frame with its answer.
fn settle(out: &mut Outcome, p: Pending, text: &str, acked_us: i64) {
    let pings = p.msg.pings.len() as u64;
    let Ok(answer) = serde_json::from_str::<Answer>(text) else {
        *out.refused
            .entry("unreadable answer".to_owned())
            .or_default() += pings;
        return;
    };
    for r in &answer.rejected {
        *out.refused.entry(r.code.clone()).or_default() += 1;
    }
    if answer.ack.is_none() {
        let code = answer.error.map_or_else(|| "no ack".to_owned(), |e| e.code);
        let accepted = pings.saturating_sub(answer.rejected.len() as u64);
        *out.refused.entry(code).or_default() += accepted;
        return;
    }
    for (i, ping) in p.msg.pings.iter().enumerate() {
        if answer.rejected.iter().any(|r| r.index == i) {
            continue;
        }
        out.acked.push(Acked {
            vehicle: p.msg.vehicle,
            ts_ms: ping.ts_ms,
            lon: ping.lon,
            lat: ping.lat,
            sent_us: p.sent_us,
            acked_us,
        });
    }
}

/// One vehicle's connection: frames from `rx`, answers paired in order.
/// No reconnect: a benchmark reports a lost connection, it does not hide
/// it.
async fn connection(
    url: String,
    window: usize,
    mut rx: mpsc::Receiver<SimMessage>,
    t0: Instant,
    gate: Arc<Semaphore>,
) -> Outcome {
    let mut out = Outcome::default();
    let connected = {
        let _permit = gate.acquire().await;
        tokio_tungstenite::connect_async(url.as_str()).await
    };
    let (mut sink, mut stream) = match connected {
        Ok((ws, _)) => ws.split(),
        Err(e) => {
            out.error = Some(format!("connect {url}: {e}"));
            while let Some(m) = rx.recv().await {
                out.unanswered += m.pings.len() as u64;
            }
            return out;
        }
    };
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut open = true;
    loop {
        if !open && pending.is_empty() {
            break;
        }
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let at = micros_since(t0);
                    if let Some(p) = pending.pop_front() {
                        settle(&mut out, p, text.as_str(), at);
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    out.error = Some(format!("closed by fleetpipe: {f:?}"));
                    break;
                }
                Some(Err(e)) => {
                    out.error = Some(format!("read: {e}"));
                    break;
                }
                None => {
                    out.error = Some("connection ended".to_owned());
                    break;
                }
                Some(Ok(_)) => {}
            },
            msg = rx.recv(), if open && pending.len() < window => match msg {
                Some(msg) => {
                    let Ok(text) = Utf8Bytes::try_from(encode_json(&msg)) else {
                        *out.refused.entry("not UTF-8".to_owned()).or_default() += msg.pings.len() as u64;
                        continue;
                    };
                    let sent_us = micros_since(t0);
                    if let Err(e) = sink.send(Message::Text(text)).await {
                        out.error = Some(format!("write: {e}"));
                        out.unanswered += msg.pings.len() as u64;
                        break;
                    }
                    pending.push_back(Pending { msg, sent_us });
                }
                None => open = false,
            },
        }
    }
    out.unanswered += pending
        .iter()
        .map(|p| p.msg.pings.len() as u64)
        .sum::<u64>();
    // What the driver still queued when the connection broke.
    rx.close();
    while let Some(m) = rx.recv().await {
        out.unanswered += m.pings.len() as u64;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetpipe_sim::SimConfig;

    fn message() -> SimMessage {
        let cfg = SimConfig {
            vehicles: 1,
            pings_per_message: 3,
            ..SimConfig::default()
        };
        let mut fleet = Fleet::new(&cfg, 1_795_420_800_000).unwrap();
        let mut out = Vec::new();
        while out.is_empty() {
            fleet.advance(60_000, &mut out);
        }
        out.swap_remove(0)
    }

    #[test]
    fn an_answer_acknowledges_every_ping_it_does_not_refuse() {
        let msg = message();
        assert_eq!(msg.pings.len(), 3);
        let mut out = Outcome::default();
        let ts: Vec<i64> = msg.pings.iter().map(|p| p.ts_ms).collect();
        settle(
            &mut out,
            Pending { msg, sent_us: 5 },
            r#"{"ack":3,"rejected":[{"index":1,"code":"ts_past","message":"…"}]}"#,
            9,
        );
        assert_eq!(
            out.acked
                .iter()
                .map(|a| (a.ts_ms, a.sent_us, a.acked_us))
                .collect::<Vec<_>>(),
            vec![(ts[0], 5, 9), (ts[2], 5, 9)]
        );
        assert_eq!(out.refused.get("ts_past"), Some(&1));
    }

    #[test]
    fn an_error_answer_acknowledges_nothing() {
        let mut out = Outcome::default();
        settle(
            &mut out,
            Pending {
                msg: message(),
                sent_us: 0,
            },
            r#"{"error":{"code":"unavailable","message":"not stored durably; send again"}}"#,
            1,
        );
        assert!(out.acked.is_empty());
        assert_eq!(out.refused.get("unavailable"), Some(&3));
    }
}
