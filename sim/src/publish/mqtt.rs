//! MQTT transport: `connections` rumqttc clients, vehicles spread over them.
//!
//! rumqttc assigns packet ids inside its event loop, so a connection task
//! keeps the messages it handed to the client in a FIFO and pairs each with
//! the next outgoing-publish event (publishes leave in order), then with
//! its PUBACK by packet id. A broken connection fails what it holds (no
//! resend: a load generator reports loss rather than hiding it) and
//! reconnects with a fresh client after a backoff.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    AckMode, CONN_QUEUE, ConnCtx, MqttConfig, Pending, pings_of, reconnect_after, run_nonce,
};
use crate::{Encoding, SimConfig, SimError, SimMessage, StatsHandle, encode, mqtt_topic};

/// Largest packet either way: fleetpipe's hard limit is 1 MiB by default.
const MAX_PACKET: usize = 4 << 20;
/// How long the ack-topic subscription may take at start.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `host:port` → (host, port).
pub(super) fn split_addr(addr: &str) -> Option<(String, u16)> {
    let addr = addr.strip_prefix("mqtt://").unwrap_or(addr);
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some(())?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The MQTT connections of a run.
#[derive(Debug)]
pub(super) struct Router {
    queues: Vec<mpsc::Sender<SimMessage>>,
    tasks: Vec<JoinHandle<()>>,
    acks: Option<(Arc<AckBook>, JoinHandle<()>, CancellationToken)>,
    stats: StatsHandle,
}

impl Router {
    /// Subscribes to the ack topic if needed, then starts the connections.
    pub(super) async fn start(
        cfg: &MqttConfig,
        sim: &SimConfig,
        encoding: Encoding,
        stats: &StatsHandle,
        stop: &CancellationToken,
        drain: Duration,
    ) -> Result<Self, SimError> {
        let (host, port) = split_addr(&cfg.addr)
            .ok_or_else(|| SimError::Publish(format!("{:?} is not host:port", cfg.addr)))?;
        let nonce = run_nonce();
        let conns = cfg.connections.max(1);
        let acks = if cfg.ack == AckMode::AckTopic {
            let book = Arc::new(AckBook::new(conns as usize));
            // The listener outlives the publishing connections (it collects
            // their last acknowledgements), so it has its own token.
            let listener_stop = CancellationToken::new();
            let (ready_tx, ready_rx) = oneshot::channel();
            let task = tokio::spawn(ack_listener(
                options(
                    cfg,
                    &host,
                    port,
                    format!("{}-{nonce}-acks", cfg.client_id_prefix),
                ),
                format!("{}/", cfg.topic_prefix),
                sim.prefix().to_owned(),
                book.clone(),
                stats.clone(),
                listener_stop.clone(),
                ready_tx,
            ));
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready_rx).await {
                Ok(Ok(())) => {}
                _ => {
                    listener_stop.cancel();
                    return Err(SimError::Publish(format!(
                        "could not subscribe to {}/+/ack on {} within {SUBSCRIBE_TIMEOUT:?}",
                        cfg.topic_prefix, cfg.addr
                    )));
                }
            }
            Some((book, task, listener_stop))
        } else {
            None
        };
        let mut queues = Vec::with_capacity(conns as usize);
        let mut tasks = Vec::with_capacity(conns as usize);
        let ctx = ConnCtx {
            encoding,
            stats: stats.clone(),
            stop: stop.clone(),
            drain,
        };
        for i in 0..conns {
            let (tx, rx) = mpsc::channel(CONN_QUEUE);
            let opts = options(
                cfg,
                &host,
                port,
                format!("{}-{nonce}-{i}", cfg.client_id_prefix),
            );
            tasks.push(tokio::spawn(connection(
                i,
                opts,
                cfg.clone(),
                ctx.clone(),
                rx,
                acks.as_ref().map(|(b, _, _)| b.clone()),
            )));
            queues.push(tx);
        }
        Ok(Self {
            queues,
            tasks,
            acks,
            stats: stats.clone(),
        })
    }

    pub(super) fn queue(&mut self, vehicle: u32) -> Option<&mpsc::Sender<SimMessage>> {
        let n = self.queues.len().max(1);
        self.queues.get(vehicle as usize % n)
    }

    /// Closes the queues, waits for the connections to drain, then stops
    /// the ack listener and fails what it never saw acknowledged.
    pub(super) async fn finish(self, drain: Duration, stop: &CancellationToken) {
        drop(self.queues);
        super::join_or_stop(self.tasks, drain, stop).await;
        if let Some((book, task, stop)) = self.acks {
            stop.cancel();
            let _ = task.await;
            book.fail_all(&self.stats);
        }
    }
}

fn options(cfg: &MqttConfig, host: &str, port: u16, client_id: String) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(cfg.inflight.max(1))
        // Room for every message the task may hand over (see `window`), so
        // `try_publish` never finds the channel full.
        .set_request_channel_capacity(cfg.max_pending as usize + 16);
    o
}

/// One connection: publish from `rx`, match acknowledgements, reconnect.
async fn connection(
    idx: u32,
    opts: MqttOptions,
    cfg: MqttConfig,
    ctx: ConnCtx,
    mut rx: mpsc::Receiver<SimMessage>,
    book: Option<Arc<AckBook>>,
) {
    let qos = if cfg.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let window = match (qos, cfg.ack) {
        (QoS::AtLeastOnce, AckMode::Puback) => cfg.max_pending.min(u32::from(cfg.inflight)),
        _ => cfg.max_pending,
    } as usize;
    let book = book.as_deref();
    let mut backoff = Duration::from_millis(100);
    // Set once no more messages are taken: by then, wait for acks until this.
    let mut closing: Option<Instant> = None;
    'connect: loop {
        let (client, mut el) = AsyncClient::new(opts.clone(), cfg.max_pending as usize + 16);
        // Handed to the client, not yet written; written, awaiting PUBACK.
        let mut queued: VecDeque<Pending> = VecDeque::new();
        let mut inflight: HashMap<u16, Pending> = HashMap::new();
        let mut connected = false;
        let graceful = loop {
            let unacked = book.map_or(0, |b| b.outstanding(idx));
            let outstanding = queued.len() + inflight.len() + unacked;
            if closing.is_some() && outstanding == 0 {
                break true;
            }
            let room = connected && closing.is_none() && outstanding < window;
            let deadline = closing.unwrap_or_else(far_future);
            tokio::select! {
                biased;
                () = ctx.stop.cancelled(), if closing.is_none() => {
                    closing = Some(Instant::now() + ctx.drain);
                }
                () = tokio::time::sleep_until(deadline.into()), if closing.is_some() => break true,
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff = Duration::from_millis(100);
                        ctx.stats.connection_opened();
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let Some(mut p) = queued.pop_front() else { continue };
                        p.sent = Some(Instant::now());
                        ctx.stats.sent(p.pings);
                        match (qos, book) {
                            (QoS::AtMostOnce, _) => {}
                            (_, Some(b)) => b.push(idx, p),
                            (_, None) => {
                                inflight.insert(pkid, p);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(p) = inflight.remove(&ack.pkid) {
                            let latency = p.sent.map(|s| s.elapsed()).unwrap_or_default();
                            ctx.stats.acked(p.pings, 0, latency);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(connection = idx, error = %e, "MQTT connection failed");
                        break false;
                    }
                },
                () = woken(book, idx), if book.is_some() => {}
                msg = rx.recv(), if room => match msg {
                    Some(m) => {
                        let topic = mqtt_topic(&cfg.topic_prefix, &m.vehicle_id, ctx.encoding);
                        let payload = Vec::from(encode(&m, ctx.encoding));
                        match client.try_publish(topic, qos, false, payload) {
                            Ok(()) => queued.push_back(Pending::of(&m)),
                            Err(_) => ctx.stats.failed(1, m.pings.len(), 0),
                        }
                    }
                    None => closing = Some(Instant::now() + ctx.drain),
                },
            }
        };
        // Whatever this connection still holds will not be acknowledged
        // (ack-topic entries are settled by the listener or at the end).
        let (m, p) = pings_of(queued.iter().chain(inflight.values()));
        ctx.stats.failed(m, p, 0);
        if connected {
            ctx.stats.connection_closed();
        }
        if graceful {
            if connected && client.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Ok(ev) = el.poll().await {
                        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                            break;
                        }
                    }
                })
                .await;
            }
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

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Resolves when the ack listener settled messages of connection `idx`.
async fn woken(book: Option<&AckBook>, idx: u32) {
    match book.and_then(|b| b.wake.get(idx as usize)) {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Messages written and awaiting fleetpipe's durable `{"ack":N}`, per vehicle.
#[derive(Debug)]
struct AckBook {
    pending: Mutex<HashMap<u32, VecDeque<Pending>>>,
    /// Entries per connection (vehicle % connections).
    outstanding: Vec<AtomicUsize>,
    wake: Vec<Notify>,
}

impl AckBook {
    fn new(conns: usize) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            outstanding: (0..conns).map(|_| AtomicUsize::new(0)).collect(),
            wake: (0..conns).map(|_| Notify::new()).collect(),
        }
    }

    fn conn_of(&self, vehicle: u32) -> usize {
        vehicle as usize % self.outstanding.len().max(1)
    }

    fn outstanding(&self, conn: u32) -> usize {
        self.outstanding
            .get(conn as usize)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    fn push(&self, conn: u32, p: Pending) {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(p.vehicle).or_default().push_back(p);
        if let Some(a) = self.outstanding.get(conn as usize) {
            a.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `{"ack":n}` for `vehicle`: every message whose pings all have
    /// `seq <= n` is durable.
    fn ack(&self, vehicle: u32, n: u64, stats: &StatsHandle) {
        let mut settled = 0;
        {
            let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let Some(queue) = map.get_mut(&vehicle) else {
                return;
            };
            while queue.front().is_some_and(|p| p.max_seq <= n) {
                if let Some(p) = queue.pop_front() {
                    let latency = p.sent.map(|s| s.elapsed()).unwrap_or_default();
                    stats.acked(p.pings, 0, latency);
                    settled += 1;
                }
            }
            if queue.is_empty() {
                map.remove(&vehicle);
            }
        }
        if settled > 0 {
            let conn = self.conn_of(vehicle);
            if let Some(a) = self.outstanding.get(conn) {
                let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                    Some(x.saturating_sub(settled))
                });
            }
            if let Some(w) = self.wake.get(conn) {
                w.notify_one();
            }
        }
    }

    /// Fails every message never acknowledged.
    fn fail_all(&self, stats: &StatsHandle) {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (_, queue) in map.drain() {
            let (m, p) = pings_of(queue.iter());
            stats.failed(m, p, 0);
        }
        for a in &self.outstanding {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// fleetpipe's acknowledgement payload.
#[derive(Deserialize)]
struct AckPayload {
    ack: u64,
}

/// Subscribes to `{prefix}+/ack` and settles the book; resubscribes after
/// reconnecting (clean session).
async fn ack_listener(
    opts: MqttOptions,
    topic_prefix: String,
    id_prefix: String,
    book: Arc<AckBook>,
    stats: StatsHandle,
    stop: CancellationToken,
    ready: oneshot::Sender<()>,
) {
    let (client, mut el) = AsyncClient::new(opts, 64);
    let filter = format!("{topic_prefix}+/ack");
    let mut ready = Some(ready);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if client.try_subscribe(filter.clone(), QoS::AtLeastOnce).is_err() {
                        stats.connection_error();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let vehicle = p
                        .topic
                        .strip_prefix(&topic_prefix)
                        .and_then(|t| t.strip_suffix("/ack"))
                        .and_then(|id| id.strip_prefix(&id_prefix))
                        .and_then(|n| n.parse::<u32>().ok());
                    let ack = serde_json::from_slice::<AckPayload>(&p.payload).ok();
                    if let (Some(v), Some(a)) = (vehicle, ack) {
                        book.ack(v, a.ack, &stats);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "MQTT ack listener connection failed");
                    stats.connection_error();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            },
        }
    }
    let _ = client.try_disconnect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split() {
        assert_eq!(
            split_addr("127.0.0.1:1883"),
            Some(("127.0.0.1".into(), 1883))
        );
        assert_eq!(split_addr("mqtt://h:1"), Some(("h".into(), 1)));
        assert_eq!(split_addr("[::1]:1883"), Some(("::1".into(), 1883)));
        assert_eq!(split_addr("nohost"), None);
        assert_eq!(split_addr(":1883"), None);
    }
}
