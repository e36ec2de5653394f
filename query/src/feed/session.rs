//! One feed client's stream, whatever its transport: what to send next,
//! and when the stream must end (shutdown, a share link's expiry or
//! revocation, an overflow). The WebSocket and SSE shells only write what
//! [`Session::next`] gives.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::filter::Subscription;
use super::{ClientHandle, Popped, quoted};
use crate::api::AppState;

/// Why a stream ended, as the metric label, the WebSocket close code and
/// the close message's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// fleetpipe is shutting down.
    Shutdown,
    /// The share link expired.
    Expired,
    /// The share link was revoked.
    Revoked,
    /// The client's queue overflowed.
    Overflow,
    /// The process-wide queue budget was hit.
    Memory,
    /// A message could not be written within `api.feed.write_timeout`.
    WriteTimeout,
    /// A subscribe message above `api.feed.max_subscribe_bytes`.
    Oversized,
    /// More than `api.feed.max_subscribes_per_minute` subscribe messages.
    Flood,
    /// The client went away.
    Client,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Shutdown => "shutdown",
            Reason::Expired => "expired",
            Reason::Revoked => "revoked",
            Reason::Overflow => "overflow",
            Reason::Memory => "memory",
            Reason::WriteTimeout => "write_timeout",
            Reason::Oversized => "oversized",
            Reason::Flood => "flood",
            Reason::Client => "client",
        }
    }

    /// The WebSocket close code: 1001 going away, 1008 policy, 1009 too
    /// big, 1013 try again later, 4401/4403 the credential ended.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            Reason::Shutdown => 1001,
            Reason::Expired => 4401,
            Reason::Revoked => 4403,
            Reason::Overflow | Reason::Memory | Reason::WriteTimeout => 1013,
            Reason::Oversized => 1009,
            Reason::Flood => 1008,
            Reason::Client => 1000,
        }
    }
}

/// What to write next.
#[derive(Debug)]
pub(crate) enum Out {
    /// A message: its kind (the SSE event name), resume token, JSON.
    Message {
        kind: &'static str,
        resume: String,
        json: Arc<str>,
    },
    /// Nothing for a while: a WebSocket ping.
    Keepalive,
    /// The last message, then the end.
    Close {
        reason: Reason,
        kind: &'static str,
        json: String,
    },
}

/// The close message of `reason`.
pub(crate) fn closing(reason: Reason, detail: &str, resume: &str) -> Out {
    Out::Close {
        reason,
        kind: "close",
        json: format!(
            "{{\"type\":\"close\",\"reason\":\"{}\",\"detail\":{},\"resume\":{}}}",
            reason.as_str(),
            quoted(detail),
            quoted(resume)
        ),
    }
}

/// A share link's stream: when it expires, and the periodic revocation
/// check.
#[derive(Debug)]
pub(crate) struct ShareCheck {
    pub(crate) state: Arc<AppState>,
    pub(crate) hash: [u8; 32],
    pub(crate) expires: Instant,
    pub(crate) every: Interval,
}

/// One client's stream.
#[derive(Debug)]
pub(crate) struct Session {
    handle: ClientHandle,
    pending: VecDeque<Out>,
    share: Option<ShareCheck>,
    keepalive: Option<Interval>,
}

/// An interval whose first tick is one period away.
pub(crate) fn every(period: Duration) -> Interval {
    let mut i = tokio::time::interval_at(Instant::now() + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

impl Session {
    pub(crate) fn new(
        handle: ClientHandle,
        share: Option<ShareCheck>,
        keepalive: Option<Duration>,
    ) -> Self {
        Self {
            handle,
            pending: VecDeque::new(),
            share,
            keepalive: keepalive.map(every),
        }
    }

    /// (Re)subscribes: what waited under the previous subscription is
    /// dropped, and the stream restarts with a snapshot (or the resumed
    /// messages).
    pub(crate) fn subscribe(&mut self, subscription: Subscription, resume: Option<&str>) {
        self.pending.retain(|o| matches!(o, Out::Close { .. }));
        let start = self.handle.subscribe(subscription, resume);
        for (kind, resume, json) in start.messages {
            self.pending.push_back(Out::Message {
                kind,
                resume,
                json: json.into(),
            });
        }
    }

    /// A message for the client right now (an error answer).
    pub(crate) fn say(&mut self, kind: &'static str, json: String) {
        let resume = self.handle.last_token();
        self.pending.push_front(Out::Message {
            kind,
            resume,
            json: json.into(),
        });
    }

    /// The resume token of the last message handed out.
    pub(crate) fn last_token(&self) -> String {
        self.handle.last_token()
    }

    /// What to write next. Cancel-safe: dropping it loses nothing.
    pub(crate) async fn next(&mut self) -> Out {
        let shutdown = self.handle.hub.shutdown.clone();
        loop {
            if shutdown.is_cancelled() {
                return closing(
                    Reason::Shutdown,
                    "fleetpipe is shutting down; reconnect with the resume token",
                    &self.last_token(),
                );
            }
            if let Some(out) = self.pending.pop_front() {
                return out;
            }
            match self.handle.pop() {
                Popped::Message(m) => {
                    return Out::Message {
                        kind: m.kind,
                        resume: self.handle.token(m.seq),
                        json: m.json,
                    };
                }
                Popped::Overflow(o) => {
                    let resume = self.handle.token(o.resume_seq);
                    let (reason, detail) = if o.total {
                        (
                            Reason::Memory,
                            "the feed's memory for waiting messages (api.feed.max_total_bytes) is used up",
                        )
                    } else {
                        (
                            Reason::Overflow,
                            "too slow: more events waited than api.feed.client_max_events / client_max_bytes allow",
                        )
                    };
                    return Out::Close {
                        reason,
                        kind: "overflow",
                        json: format!(
                            "{{\"type\":\"overflow\",\"reason\":\"{}\",\"missed_events\":{},\"missed_positions\":{},\"resume\":{},\"detail\":{}}}",
                            reason.as_str(),
                            o.missed_events,
                            o.missed_positions,
                            quoted(&resume),
                            quoted(&format!(
                                "{detail}; reconnect with this resume token to get what was missed"
                            ))
                        ),
                    };
                }
                Popped::Empty => {}
            }
            let Self {
                handle,
                share,
                keepalive,
                ..
            } = self;
            let share = async {
                match share {
                    Some(s) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(s.expires) => Some(Reason::Expired),
                            _ = s.every.tick() => {
                                let now = crate::api::now();
                                match s.state.db.share_lookup(&s.hash, now).await {
                                    Ok(Some(_)) => None,
                                    Ok(None) => Some(Reason::Revoked),
                                    // The database did not answer: try
                                    // again at the next check (the expiry
                                    // needs none).
                                    Err(_) => None,
                                }
                            }
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let keepalive = async {
                match keepalive {
                    Some(k) => k.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = handle.notified() => {}
                () = shutdown.cancelled() => {}
                ended = share => match ended {
                    Some(Reason::Expired) => {
                        return closing(Reason::Expired, "the share link expired", &self.handle.last_token());
                    }
                    Some(_) => {
                        return closing(Reason::Revoked, "the share link was revoked", &self.handle.last_token());
                    }
                    None => {}
                },
                _ = keepalive => return Out::Keepalive,
            }
        }
    }
}
