//! What every gateway does with a message once it has the bytes and knows
//! who sent them: decode and validate, rate-limit, and hand each ping or
//! rejection to the pipeline with its acknowledgement handle.
//!
//! The gateways differ only in transport and in how they answer the sender;
//! this module is the one place the rules are applied, so MQTT, WebSocket
//! and HTTP behave the same for the same bytes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleetpipe_model::{
    Accepted, Ack, BatchAck, DeadLetter, Gateway, Origin, Ping, RejectReason, SCHEMA_VERSION,
    SinkRecord, VehicleId,
};
use tokio::sync::{Semaphore, mpsc};

use crate::codec::{self, Encoding, Rejection, VehicleScope};
use crate::metrics::GatewayCounters;
use crate::ratelimit::RateLimiter;
use crate::validate::Validator;

/// Where ingest hands its output: bounded queues owned by the pipeline.
///
/// When a queue is full, `send` waits, so the gateway stops reading from its
/// socket: backpressure reaches the device instead of memory growing.
#[derive(Debug, Clone)]
pub struct IngestOutput {
    /// Accepted pings, towards enrichment.
    pub pings: mpsc::Sender<Accepted>,
    /// Rejections, straight to the sinks' dead-letter outputs.
    pub dead_letters: mpsc::Sender<SinkRecord>,
}

/// The pipeline stopped taking input (shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline is shutting down")]
pub struct PipelineClosed;

/// One message as a gateway received it.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// Payload bytes.
    pub payload: Bytes,
    /// JSON or Protobuf.
    pub encoding: Encoding,
    /// Whose pings it may carry.
    pub scope: VehicleScope<'a>,
    /// Gateway it came through.
    pub gateway: Gateway,
    /// MQTT client id or authenticated device.
    pub client: Option<Arc<str>>,
    /// MQTT topic, for dead letters.
    pub topic: Option<&'a str>,
}

/// A refused element (or the whole message, `index = None`).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedItem {
    /// Position in the batch, `None` for the whole message.
    pub index: Option<usize>,
    /// Reason code.
    pub reason: RejectReason,
    /// Explanation.
    pub detail: String,
}

/// What became of a message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Pings handed to the pipeline.
    pub accepted: usize,
    /// Highest `seq` among them.
    pub highest_seq: Option<u64>,
    /// Lowest `seq` among them.
    pub lowest_seq: Option<u64>,
    /// Whether every accepted ping carried a `seq`.
    pub all_have_seq: bool,
    /// Refusals, in batch order.
    pub rejected: Vec<RejectedItem>,
    /// Refused for a reason that may pass if sent again later (see
    /// [`RejectReason::is_retriable`]): no acknowledgement may cover them.
    pub retry: Option<Retry>,
}

/// The part of a message refused for a retriable reason (a rate limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retry {
    /// Lowest `seq` among those pings; `None` when one had no `seq`.
    pub lowest_seq: Option<u64>,
    /// Whether every such ping carried a `seq`.
    pub all_have_seq: bool,
    /// How long until the sender may try again.
    pub after: std::time::Duration,
}

impl Outcome {
    /// The acknowledgement value of wire contract v1: the highest accepted
    /// `seq` when every accepted ping carries one, otherwise the count.
    pub fn ack_value(&self) -> u64 {
        match (self.all_have_seq, self.highest_seq) {
            (true, Some(seq)) => seq,
            _ => self.accepted as u64,
        }
    }

    /// The acknowledgement value the sender may be given, if any. It never
    /// covers a ping refused for a retriable reason: with such refusals it
    /// is the highest accepted `seq` when that is below every refused one
    /// (all carrying a `seq`), and otherwise there is none, since the
    /// sender would free pings it must send again.
    pub fn ack(&self) -> Option<u64> {
        if self.accepted == 0 {
            return None;
        }
        let Some(retry) = self.retry else {
            return Some(self.ack_value());
        };
        match (
            self.all_have_seq,
            self.highest_seq,
            retry.all_have_seq,
            retry.lowest_seq,
        ) {
            (true, Some(high), true, Some(floor)) if high < floor => Some(high),
            _ => None,
        }
    }

    /// Notes a ping refused for a retriable reason.
    fn retry_later(&mut self, seq: Option<u64>, after: std::time::Duration) {
        let retry = self.retry.get_or_insert(Retry {
            lowest_seq: seq,
            all_have_seq: true,
            after,
        });
        match seq {
            Some(seq) => retry.lowest_seq = Some(retry.lowest_seq.map_or(seq, |l| l.min(seq))),
            None => retry.all_have_seq = false,
        }
        retry.after = retry.after.min(after);
    }
}

/// Reads how many payload bytes are in the pipeline.
#[derive(Debug, Clone)]
pub struct InflightProbe {
    budget: Arc<Semaphore>,
    max: usize,
}

impl InflightProbe {
    /// Payload bytes whose records are still in the pipeline.
    pub fn bytes(&self) -> usize {
        self.max.saturating_sub(self.budget.available_permits())
    }
}

/// The shared ingest core of every gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingestor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    validator: Validator,
    limiter: RateLimiter,
    output: IngestOutput,
    /// Payload bytes of the messages whose records are still in the
    /// pipeline, bounded: queues are bounded in records, this bounds them in
    /// bytes too.
    inflight: Arc<Semaphore>,
    inflight_max: u32,
    /// Per-message counters of each gateway, in [`Gateway::ALL`] order.
    counters: [GatewayCounters; Gateway::ALL.len()],
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Ingestor {
    /// A core that validates with `validator`, limits with `limiter` and
    /// writes to `output`, with at most `max_inflight_bytes` of payload in
    /// the pipeline at once.
    pub fn new(
        validator: Validator,
        limiter: RateLimiter,
        output: IngestOutput,
        max_inflight_bytes: usize,
    ) -> Self {
        let inflight_max =
            u32::try_from(max_inflight_bytes.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Self {
            inner: Arc::new(Inner {
                validator,
                limiter,
                output,
                inflight: Arc::new(Semaphore::new(inflight_max as usize)),
                inflight_max,
                counters: Gateway::ALL.map(GatewayCounters::new),
            }),
        }
    }

    /// Payload bytes whose records are still in the pipeline.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_probe().bytes()
    }

    /// A reader of [`Ingestor::inflight_bytes`] that does not keep the
    /// pipeline's queues open (for metrics and the pipeline handle).
    pub fn inflight_probe(&self) -> InflightProbe {
        InflightProbe {
            budget: Arc::clone(&self.inner.inflight),
            max: self.inner.inflight_max as usize,
        }
    }

    /// The validation rules (gateways use the payload limit).
    pub fn validator(&self) -> &Validator {
        &self.inner.validator
    }

    /// The rate limiter (the binary forgets idle vehicles periodically).
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// Processes one message. Every ping and every rejection made from it
    /// gets an [`Ack`] of the returned [`BatchAck`]: wait on it to learn when
    /// all are durable, or drop it. Waits first while the pipeline holds
    /// `max_inflight_bytes` of payload (backpressure).
    pub async fn ingest(&self, msg: Message<'_>) -> Result<(Outcome, BatchAck), PipelineClosed> {
        // A message larger than the whole budget takes all of it, not more.
        let cost = u32::try_from(msg.payload.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.inner.inflight_max);
        let budget = Arc::clone(&self.inner.inflight)
            .acquire_many_owned(cost)
            .await
            .map_err(|_| PipelineClosed)?;
        let batch = BatchAck::holding(Some(budget));
        let outcome = self.ingest_into(msg, &batch).await?;
        Ok((outcome, batch))
    }

    async fn ingest_into(
        &self,
        msg: Message<'_>,
        batch: &BatchAck,
    ) -> Result<Outcome, PipelineClosed> {
        let received_at = now_ms();
        let gateway = msg.gateway;
        let counters = self.counters(gateway);
        counters.messages.increment(1);
        counters.bytes.increment(msg.payload.len() as u64);
        let origin = Origin {
            gateway,
            client: msg.client.clone(),
            received_at,
        };
        let ack = || batch.ack();
        let mut outcome = Outcome {
            all_have_seq: true,
            ..Outcome::default()
        };
        let decoded = codec::decode_message(
            &msg.payload,
            msg.encoding,
            msg.scope,
            &self.inner.validator,
            received_at,
        );
        let items = match decoded {
            Ok(items) => items,
            Err(mut rejection) => {
                if rejection.vehicle_id.is_none() {
                    // The payload did not say; the topic or the credential does.
                    rejection.vehicle_id = match msg.scope {
                        VehicleScope::Topic(v) | VehicleScope::Device(v) => {
                            VehicleId::parse(v).ok()
                        }
                        VehicleScope::FirstPing => None,
                    };
                }
                outcome.rejected.push(RejectedItem {
                    index: None,
                    reason: rejection.reason,
                    detail: rejection.detail.clone(),
                });
                self.send_dead_letter(rejection, &origin, msg.topic, ack())
                    .await?;
                outcome.all_have_seq = false;
                return Ok(outcome);
            }
        };
        for (index, item) in items.into_iter().enumerate() {
            let item = item.and_then(|ping| {
                self.rate_limit(ping, msg.encoding)
                    .map_err(|(rejection, seq, after)| {
                        outcome.retry_later(seq, after);
                        rejection
                    })
            });
            match item {
                Ok(ping) => {
                    outcome.accepted += 1;
                    match ping.seq {
                        Some(seq) => {
                            outcome.highest_seq =
                                Some(outcome.highest_seq.map_or(seq, |h| h.max(seq)));
                            outcome.lowest_seq =
                                Some(outcome.lowest_seq.map_or(seq, |l| l.min(seq)));
                        }
                        None => outcome.all_have_seq = false,
                    }
                    let accepted = Accepted {
                        ping,
                        origin: origin.clone(),
                        ack: ack(),
                    };
                    self.inner
                        .output
                        .pings
                        .send(accepted)
                        .await
                        .map_err(|_| PipelineClosed)?;
                }
                Err(rejection) => {
                    outcome.rejected.push(RejectedItem {
                        index: Some(index),
                        reason: rejection.reason,
                        detail: rejection.detail.clone(),
                    });
                    self.send_dead_letter(rejection, &origin, msg.topic, ack())
                        .await?;
                }
            }
        }
        if outcome.accepted == 0 {
            outcome.all_have_seq = false;
        }
        counters.pings.increment(outcome.accepted as u64);
        Ok(outcome)
    }

    /// The counters of `gateway`.
    fn counters(&self, gateway: Gateway) -> &GatewayCounters {
        let index = Gateway::ALL
            .iter()
            .position(|g| *g == gateway)
            .unwrap_or_default();
        &self.inner.counters[index]
    }

    /// Takes a token for the ping's vehicle; over the limit, the rejection
    /// with the ping's `seq` and how long until the vehicle may send again.
    fn rate_limit(
        &self,
        ping: Ping,
        encoding: Encoding,
    ) -> Result<Ping, (Rejection, Option<u64>, std::time::Duration)> {
        let after = match self.inner.limiter.take(&ping.vehicle_id) {
            Ok(()) => return Ok(ping),
            Err(after) => after,
        };
        let rejection = Rejection {
            reason: RejectReason::RateLimited,
            detail: format!("vehicle {} is over its rate limit", ping.vehicle_id),
            raw: codec::encode_ping(&ping, encoding),
            vehicle_id: Some(ping.vehicle_id),
        };
        Err((rejection, ping.seq, after))
    }

    /// Dead-letters a refusal that happened outside [`Ingestor::ingest`]
    /// (e.g. a publish refused by the MQTT topic check).
    pub async fn reject(
        &self,
        rejection: Rejection,
        gateway: Gateway,
        client: Option<Arc<str>>,
        topic: Option<&str>,
        ack: Ack,
    ) -> Result<(), PipelineClosed> {
        let origin = Origin {
            gateway,
            client,
            received_at: now_ms(),
        };
        self.send_dead_letter(rejection, &origin, topic, ack).await
    }

    async fn send_dead_letter(
        &self,
        rejection: Rejection,
        origin: &Origin,
        topic: Option<&str>,
        ack: Ack,
    ) -> Result<(), PipelineClosed> {
        crate::metrics::rejected(rejection.reason, origin.gateway);
        tracing::debug!(
            reason = rejection.reason.as_str(),
            detail = %rejection.detail,
            gateway = origin.gateway.as_str(),
            vehicle_id = ?rejection.vehicle_id,
            "rejected"
        );
        let record = DeadLetter {
            schema_version: SCHEMA_VERSION,
            reason: rejection.reason,
            detail: rejection.detail,
            vehicle_id: rejection.vehicle_id,
            topic: topic.map(str::to_owned),
            origin: origin.clone(),
            raw: rejection.raw,
            ack,
        };
        self.inner
            .output
            .dead_letters
            .send(SinkRecord::DeadLetter(record))
            .await
            .map_err(|_| PipelineClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoding;
    use crate::ratelimit::RateLimitConfig;
    use crate::validate::ValidationConfig;
    use std::time::Duration;

    fn message(seq: u64) -> Message<'static> {
        let ping = format!(
            r#"{{"vehicle_id":"v","seq":{seq},"ts":{},"lat":1.5,"lon":2.5}}"#,
            now_ms()
        );
        Message {
            payload: Bytes::from(format!("{ping:<200}")), // 200 bytes
            encoding: Encoding::Json,
            scope: VehicleScope::Topic("v"),
            gateway: Gateway::Http,
            client: None,
            topic: None,
        }
    }

    /// An ingestor with default validation, no rate limit, queues of 1000
    /// and `max_inflight_bytes`; and the receiving ends of its queues.
    fn ingestor(
        max_inflight_bytes: usize,
    ) -> (
        Ingestor,
        mpsc::Receiver<Accepted>,
        mpsc::Receiver<SinkRecord>,
    ) {
        let (pings, pings_rx) = mpsc::channel(1000);
        let (dead_letters, dead_letters_rx) = mpsc::channel(1000);
        let ingestor = Ingestor::new(
            Validator::new(ValidationConfig::default()),
            RateLimiter::new(&RateLimitConfig {
                enabled: false,
                ..RateLimitConfig::default()
            }),
            IngestOutput {
                pings,
                dead_letters,
            },
            max_inflight_bytes,
        );
        (ingestor, pings_rx, dead_letters_rx)
    }

    #[tokio::test]
    async fn a_full_byte_budget_stops_ingest_until_records_settle() {
        // Queues with room for far more records than the byte budget allows.
        let (ingestor, mut pings_rx, _dl_rx) = ingestor(1000);
        for seq in 0..5 {
            let (outcome, _batch) = ingestor.ingest(message(seq)).await.unwrap();
            assert_eq!(outcome.accepted, 1);
        }
        assert_eq!(ingestor.inflight_bytes(), 1000);
        let sixth =
            tokio::time::timeout(Duration::from_millis(200), ingestor.ingest(message(5))).await;
        assert!(sixth.is_err(), "the budget is spent: ingest waits");
        // The sink makes the first record durable: its 200 bytes come back.
        pings_rx.recv().await.unwrap().ack.delivered();
        assert_eq!(ingestor.inflight_bytes(), 800);
        let sixth = tokio::time::timeout(Duration::from_secs(5), ingestor.ingest(message(5))).await;
        assert!(matches!(sixth, Ok(Ok(_))));
        drop(sixth); // the caller's handle on the batch holds the budget too
        while let Ok(a) = pings_rx.try_recv() {
            a.ack.delivered();
        }
        assert_eq!(ingestor.inflight_bytes(), 0);
        // A message larger than the whole budget takes all of it, not more.
        let mut big = message(6);
        big.payload = Bytes::from(format!("{:<5000}", String::from_utf8_lossy(&big.payload)));
        let (outcome, batch) = ingestor.ingest(big).await.unwrap();
        assert_eq!((outcome.accepted, ingestor.inflight_bytes()), (1, 1000));
        drop(batch);
        pings_rx.recv().await.unwrap().ack.delivered();
        assert_eq!(ingestor.inflight_bytes(), 0);
    }

    #[test]
    fn each_message_is_counted_under_its_own_gateway() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        // The ingestor registers its counters when it is made: with the
        // recorder installed, and then counts into them wherever it runs.
        let (ingestor, mut pings_rx, _dl_rx) =
            metrics::with_local_recorder(&recorder, || ingestor(1 << 20));
        runtime.block_on(async {
            for (seq, gateway) in [(1, Gateway::Http), (2, Gateway::Mqtt), (3, Gateway::Mqtt)] {
                let msg = Message {
                    gateway,
                    ..message(seq)
                };
                let (outcome, _batch) = ingestor.ingest(msg).await.expect("open");
                assert_eq!(outcome.accepted, 1);
                pings_rx.recv().await.expect("ping").ack.delivered();
            }
        });

        let counters: Vec<(String, String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let key = key.key();
                let gateway = key
                    .labels()
                    .find(|l| l.key() == "gateway")?
                    .value()
                    .to_owned();
                let DebugValue::Counter(n) = value else {
                    return None;
                };
                (n > 0).then(|| (key.name().to_owned(), gateway, n))
            })
            .collect();
        let count = |name: &str, gateway: &str| {
            counters
                .iter()
                .find(|(n, g, _)| n == name && g == gateway)
                .map_or(0, |(_, _, v)| *v)
        };
        assert_eq!(count("fleetpipe_ingest_messages_total", "http"), 1);
        assert_eq!(count("fleetpipe_ingest_messages_total", "mqtt"), 2);
        assert_eq!(count("fleetpipe_ingest_pings_total", "mqtt"), 2);
        // Every message is 200 bytes.
        assert_eq!(count("fleetpipe_ingest_bytes_total", "mqtt"), 400);
        assert_eq!(count("fleetpipe_ingest_bytes_total", "http"), 200);
        assert_eq!(count("fleetpipe_ingest_messages_total", "websocket"), 0);
    }
}
