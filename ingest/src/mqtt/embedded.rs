//! The embedded MQTT broker: rumqttd inside fleetpipe.
//!
//! fleetpipe binds the listeners and accepts connections itself (plaintext,
//! and TLS with [`crate::tls`]), and hands each connection to rumqttd's
//! per-connection handler (a patch of the vendored rumqttd, see
//! `rumqttd/FLEETPIPE_PATCHES.md`); fleetpipe reads the devices' publishes
//! through a local link subscribed to the telemetry topics. Designed around
//! rumqttd's limits:
//! - rumqttd's own accept loop does the TLS handshake inline (one silent
//!   client stalls every new connection) and re-reads its PEM files per
//!   connection, so it is not used: fleetpipe's accept loop hands each
//!   connection to a task of its own, which does the handshake with a
//!   timeout and then runs rumqttd's handling;
//! - there is no stop API: the accept loops stop at shutdown, and the
//!   per-connection `DeviceProtocol` codec refuses every packet once
//!   fleetpipe is closing, so no publish is acknowledged that fleetpipe
//!   will not read;
//! - `Broker::start()` blocks and owns its servers, so fleetpipe builds the
//!   router and the servers itself (`Router::spawn` runs the router on its
//!   own thread, which lives until the process exits);
//! - the local link's publish is blocking: fleetpipe only reads from it here;
//! - the router pauses a slow local link with `Unschedule`, which must be
//!   answered with `wake()` or the link never gets data again;
//! - rumqttd sends PUBACK when it has the publish in memory, before fleetpipe
//!   has it: durability starts later (see ARCHITECTURE.md).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fleetpipe_model::{Ack, Gateway, RejectReason};
use fleetpipe_model::{AckStatus, BatchAck};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Protocol, Publish, QoS, v4::V4, v5::V5};
use rumqttd::{
    ConnectionHandler, ConnectionSettings, Notification, Router, RouterConfig, SegmentConfig,
    Server, ServerSettings,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::acl::{AclShared, DeviceProtocol, INTERNAL_CLIENT_ID, RefusedPublish};
use super::watermark::{MessageTicket, Watermarks};
use super::{
    EmbeddedConfig, ack_topic, hard_packet_limit, parse_topic, server_keep_alive_secs,
    telemetry_filters,
};
use crate::auth::Authenticator;
use crate::codec::{Rejection, VehicleScope};
use crate::gateway::{Ingestor, Message};
use crate::source::{SourceError, SourceTask, ok_at_end};
use crate::tls::{ServerTls, TlsError, TlsGateway};

/// How long the link must stay quiet at shutdown before the drain ends.
const DRAIN_IDLE: Duration = Duration::from_millis(300);

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedBrokerError {
    /// A listener address cannot be bound.
    #[error("{key} = {addr}: cannot listen: {source}")]
    Bind {
        /// Config key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate, key or client CA does not load.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The local link to the router could not be made.
    #[error("embedded broker: local link: {0}")]
    Link(#[source] Box<LinkError>),
    /// The task making the local link died.
    #[error("embedded broker: local link: {0}")]
    LinkTask(#[source] tokio::task::JoinError),
    /// The local link closed while fleetpipe was running: no more MQTT
    /// publishes can be read, so the process must not go on as if healthy.
    #[error("embedded broker: the internal link closed unexpectedly: {0}")]
    LinkClosed(#[source] Box<LinkError>),
}

/// An embedded broker with its listeners bound and its router running,
/// and the tasks that serve it (accept loops, reader, acknowledgements,
/// refusals, TLS reloads) not yet spawned: whoever runs them owns them.
pub struct EmbeddedBroker {
    addrs: ListenAddrs,
    tasks: Vec<(&'static str, SourceTask)>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks: Vec<_> = self.tasks.iter().map(|(name, _)| name).collect();
        f.debug_struct("EmbeddedBroker")
            .field("addrs", &self.addrs)
            .field("tasks", &tasks)
            .finish()
    }
}

/// Where the broker listens (port 0 resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    /// MQTT 3.1.1.
    pub v311: Option<SocketAddr>,
    /// MQTT 5.
    pub v5: Option<SocketAddr>,
    /// MQTT 3.1.1 over TLS.
    pub v311_tls: Option<SocketAddr>,
    /// MQTT 5 over TLS.
    pub v5_tls: Option<SocketAddr>,
}

impl ListenAddrs {
    /// Each bound listener with its configuration key.
    pub fn keyed(&self) -> Vec<(&'static str, SocketAddr)> {
        [
            (LISTEN, self.v311),
            (LISTEN_V5, self.v5),
            (TLS_LISTEN, self.v311_tls),
            (TLS_LISTEN_V5, self.v5_tls),
        ]
        .into_iter()
        .filter_map(|(key, addr)| Some((key, addr?)))
        .collect()
    }
}

/// The configuration keys of the broker's listeners.
pub const LISTEN: &str = "ingest.mqtt.listen";
/// See [`LISTEN`].
pub const LISTEN_V5: &str = "ingest.mqtt.listen_v5";
/// See [`LISTEN`].
pub const TLS_LISTEN: &str = "ingest.mqtt.tls.listen";
/// See [`LISTEN`].
pub const TLS_LISTEN_V5: &str = "ingest.mqtt.tls.listen_v5";

/// Binds `addr` (the value of config key `key`): the only bind, so an
/// error names the key and port 0 is resolved from the bound socket.
async fn bind(
    key: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), EmbeddedBrokerError> {
    let bind_err = |source| EmbeddedBrokerError::Bind { key, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}

/// What every accept loop shares.
#[derive(Clone)]
struct Acceptance {
    /// One permit per open device connection (`ingest.mqtt.max_connections`).
    permits: Arc<Semaphore>,
    /// Time for the TLS handshake (`ingest.mqtt.connect_timeout`).
    handshake_timeout: Duration,
    /// Stops the accept loops.
    stop: CancellationToken,
    /// Closes the connections still open, once the last acknowledgement
    /// went out (or the reader ended, without the ack topic): until then a
    /// device may still get its `{"ack": N}` for what was drained.
    release: CancellationToken,
}

/// After [`Acceptance::release`], how long open connections are left to
/// write what the router handed them last (the final acks) before they are
/// closed. The router runs on its own thread and hands an ack over within
/// microseconds; this bounds a device that does not read.
const ACK_DELIVERY_GRACE: Duration = Duration::from_millis(200);

/// Accepts connections on `listener` until `acceptance.stop` fires; each
/// gets a task of its own (TLS handshake, then rumqttd's handling), so no
/// connection waits for another. Over `max_connections`, a new connection
/// is closed at once.
///
/// The loop owns its connections' tasks: one that panics is logged and
/// counted (the others go on), and after `stop` the loop keeps them until
/// `acceptance.release`, then closes those still open and waits for them.
/// With an MQTT 5 will delay, rumqttd's task outlives its connection by
/// the delay; at shutdown that wait is cut short (a closing fleetpipe
/// refuses every packet, wills included).
async fn accept_loop<P: Protocol + Clone + Send + 'static>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    handler: ConnectionHandler<DeviceProtocol<P>>,
    protocol: DeviceProtocol<P>,
    acceptance: Acceptance,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = acceptance.stop.cancelled() => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                connection_ended(name, ended);
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: not this listener's
                // end. A pause keeps the loop from spinning on it.
                tracing::warn!(listener = name, error = %e, "cannot accept an MQTT connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&acceptance.permits).try_acquire_owned() else {
            crate::metrics::mqtt_connection_refused("max_connections");
            tracing::debug!(listener = name, %peer, "MQTT connection over ingest.mqtt.max_connections closed");
            drop(stream);
            continue;
        };
        let tls = tls.clone();
        let handler = handler.clone();
        let protocol = protocol.clone();
        let timeout = acceptance.handshake_timeout;
        connections.spawn(async move {
            match tls {
                None => {
                    handler
                        .handle(Permitted::boxed(stream, permit), protocol)
                        .await;
                }
                Some(tls) => {
                    if let Some((stream, protocol)) =
                        handshake(name, peer, stream, &tls, protocol, timeout).await
                    {
                        handler
                            .handle(Permitted::boxed(stream, permit), protocol)
                            .await;
                    }
                }
            }
        });
    }
    drop(listener);
    loop {
        tokio::select! {
            () = acceptance.release.cancelled() => break,
            Some(ended) = connections.join_next() => connection_ended(name, ended),
        }
    }
    if !connections.is_empty() {
        tokio::time::sleep(ACK_DELIVERY_GRACE).await;
    }
    connections.shutdown().await;
}

/// A connection's task ended: a panic in rumqttd's handling is logged and
/// counted (it cost that device its connection, nobody else anything).
fn connection_ended(listener: &'static str, ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        crate::metrics::mqtt_connection_panicked(listener);
        tracing::error!(
            listener,
            "an MQTT connection's task panicked; the connection is closed"
        );
    }
}

/// A connection's stream with its place under `max_connections`: the place
/// is free again when rumqttd drops the stream (the connection closed),
/// not when its task ends, which with an MQTT 5 will delay can be much
/// later (rumqttd waits out the delay after the connection closed).
struct Permitted<S> {
    stream: S,
    _permit: OwnedSemaphorePermit,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Permitted<S> {
    fn boxed(stream: S, permit: OwnedSemaphorePermit) -> Box<dyn rumqttd::N> {
        Box::new(Self {
            stream,
            _permit: permit,
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Permitted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

crate::io::delegate_async_write!(Permitted<S>, S: Unpin);

/// The TLS handshake of one connection, within `timeout`
/// (`ingest.mqtt.connect_timeout`); with client certificates, the codec
/// learns the vehicle the certificate names.
async fn handshake<P: Protocol>(
    name: &'static str,
    peer: SocketAddr,
    stream: TcpStream,
    tls: &ServerTls,
    protocol: DeviceProtocol<P>,
    timeout: Duration,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    DeviceProtocol<P>,
)> {
    let done = tls
        .handshake(stream, timeout, "ingest.mqtt.connect_timeout", name, peer)
        .await?;
    let protocol = match done.certificate {
        Some(vehicle) => protocol.with_certificate(vehicle),
        None => protocol,
    };
    Some((done.stream, protocol))
}

/// The rumqttd router configuration the embedded broker runs with.
///
/// rumqttd keeps every publish it routes in a log per subscription filter
/// until the filter's oldest segment is evicted. For the telemetry
/// subscription that log is the buffer in front of the pipeline
/// (`segment_bytes × segment_count`). Each vehicle that subscribes to its
/// own ack topic has its own log too, which with those sizes is never
/// evicted; with `ack_segment_bytes` set, ack logs get
/// `ack_segment_bytes × ack_segment_count` instead.
pub fn router_config(config: &EmbeddedConfig) -> RouterConfig {
    let custom_segment = config.ack_segment_bytes.map(|bytes| {
        let ack_segments = SegmentConfig {
            max_segment_size: bytes,
            max_segment_count: config.ack_segment_count,
        };
        [(ack_topic(&config.topic_prefix, "+"), ack_segments)]
            .into_iter()
            .collect()
    });
    RouterConfig {
        max_connections: config.max_connections.saturating_add(16),
        max_outgoing_packet_count: 1024,
        max_segment_size: config.segment_bytes,
        max_segment_count: config.segment_count,
        custom_segment,
        ..RouterConfig::default()
    }
}

impl EmbeddedBroker {
    /// Binds the listeners and starts the router; the tasks
    /// ([`into_tasks`](Self::into_tasks)) accept and read. They stop
    /// accepting when `shutdown` fires, drain what rumqttd already
    /// acknowledged, then end.
    pub async fn start(
        config: &EmbeddedConfig,
        auth: Arc<Authenticator>,
        ingestor: Ingestor,
        shutdown: CancellationToken,
    ) -> Result<Self, EmbeddedBrokerError> {
        // Every listener and the TLS files first: a start error leaves
        // nothing running behind.
        let tls = config
            .tls
            .as_ref()
            .map(|c| ServerTls::load(TlsGateway::Mqtt, &c.files()).map(Arc::new))
            .transpose()?;
        let listen = match config.listen {
            Some(addr) => Some(bind(LISTEN, addr).await?),
            None => None,
        };
        let listen_v5 = match config.listen_v5 {
            Some(addr) => Some(bind(LISTEN_V5, addr).await?),
            None => None,
        };
        let (mut listen_tls, mut listen_v5_tls) = (None, None);
        if let Some(c) = &config.tls {
            if let Some(addr) = c.listen {
                listen_tls = Some(bind(TLS_LISTEN, addr).await?);
            }
            if let Some(addr) = c.listen_v5 {
                listen_v5_tls = Some(bind(TLS_LISTEN_V5, addr).await?);
            }
        }
        let addrs = ListenAddrs {
            v311: listen.as_ref().map(|(_, a)| *a),
            v5: listen_v5.as_ref().map(|(_, a)| *a),
            v311_tls: listen_tls.as_ref().map(|(_, a)| *a),
            v5_tls: listen_v5_tls.as_ref().map(|(_, a)| *a),
        };

        let router = Router::new(0, router_config(config));
        let router_tx = router.spawn();

        // The local link registers with the router and waits for its ack:
        // a short blocking call, kept off the async workers.
        let link_router_tx = router_tx.clone();
        let filters = telemetry_filters(&config.topic_prefix);
        let (link_tx, link_rx) = tokio::task::spawn_blocking(move || {
            let (mut tx, rx, _) =
                rumqttd::local::LinkBuilder::new(INTERNAL_CLIENT_ID, link_router_tx)
                    .dynamic_filters(true)
                    .build()
                    .map_err(|e| EmbeddedBrokerError::Link(Box::new(e)))?;
            for filter in filters {
                tx.subscribe(filter)
                    .map_err(|e| EmbeddedBrokerError::Link(Box::new(e)))?;
            }
            Ok::<_, EmbeddedBrokerError>((tx, rx))
        })
        .await
        .map_err(EmbeddedBrokerError::LinkTask)??;

        let (refused_tx, refused_rx) = mpsc::channel(1024);
        let shared = Arc::new(AclShared {
            auth: Arc::clone(&auth),
            prefix: config.topic_prefix.clone(),
            closing: false.into(),
            // Checked by the config's validation; the largest otherwise.
            server_keep_alive: server_keep_alive_secs(config.server_keep_alive).unwrap_or(u16::MAX),
            refused: refused_tx,
        });

        // Authentication happens in `DeviceProtocol`, which sees the whole
        // CONNECT (client id, will, credentials) before rumqttd acts on it.
        let connections = ConnectionSettings {
            connection_timeout_ms: u16::try_from(config.connect_timeout.as_millis())
                .unwrap_or(u16::MAX),
            max_payload_size: hard_packet_limit(ingestor.validator().config().max_payload_bytes),
            max_inflight_count: config.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        // rumqttd's `Server` only supplies the per-connection handler: its
        // own accept loop is never started (`listen` is only a name there).
        let settings = || ServerSettings {
            name: "fleetpipe".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections.clone(),
        };
        let v4 = DeviceProtocol::new(V4, Arc::clone(&shared));
        let v5 = DeviceProtocol::new(V5, Arc::clone(&shared));
        let v4_handler =
            Server::new(settings(), router_tx.clone(), v4.clone()).connection_handler();
        let v5_handler =
            Server::new(settings(), router_tx.clone(), v5.clone()).connection_handler();
        let stop_accepting = shutdown.child_token();
        let release = CancellationToken::new();
        let acceptance = Acceptance {
            permits: Arc::new(Semaphore::new(
                config.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            handshake_timeout: config.connect_timeout,
            stop: stop_accepting.clone(),
            release: release.clone(),
        };
        // Every task runs until shutdown; the caller owns them.
        let mut tasks: Vec<(&'static str, SourceTask)> = Vec::new();
        let accept_loops = [
            ("mqtt", listen, None, v4_handler.clone(), v4.clone()),
            ("mqtt-tls", listen_tls, tls.clone(), v4_handler, v4),
        ];
        for (name, listener, tls, handler, protocol) in accept_loops {
            if let Some((listener, _)) = listener {
                let accept =
                    accept_loop(name, listener, tls, handler, protocol, acceptance.clone());
                tasks.push((name, Box::pin(ok_at_end(accept))));
            }
        }
        let accept_loops_v5 = [
            ("mqtt-v5", listen_v5, None, v5_handler.clone(), v5.clone()),
            ("mqtt-v5-tls", listen_v5_tls, tls.clone(), v5_handler, v5),
        ];
        for (name, listener, tls, handler, protocol) in accept_loops_v5 {
            if let Some((listener, _)) = listener {
                let accept =
                    accept_loop(name, listener, tls, handler, protocol, acceptance.clone());
                tasks.push((name, Box::pin(ok_at_end(accept))));
            }
        }
        if let Some(tls) = tls {
            let watch = tls.watch(shutdown.clone());
            tasks.push(("mqtt tls reload", Box::pin(ok_at_end(watch))));
        }

        let refusals = record_refusals(refused_rx, ingestor.clone(), shutdown.clone());
        tasks.push(("mqtt refused publishes", Box::pin(ok_at_end(refusals))));
        let prefix = config.topic_prefix.clone();
        // The acker owns the link's sending half (dropping it would
        // disconnect the link) and publishes durable watermarks when asked
        // to; without the ack topic the reader keeps the sending half.
        let (acks, link_tx) = if config.ack_topic {
            let (acks_tx, acks_rx) = mpsc::channel(ACK_QUEUE);
            let acker = publish_acks(acks_rx, link_tx, prefix.clone());
            let release = release.clone();
            let acker = async move {
                acker.await;
                release.cancel();
            };
            tasks.push(("mqtt acknowledgements", Box::pin(ok_at_end(acker))));
            (Some(acks_tx), None)
        } else {
            (None, Some(link_tx))
        };
        let reader = async move {
            // Logged once it runs: a start that fails later (another
            // listener, a sink) prints only its error.
            tracing::info!(
                listen = ?addrs.v311,
                listen_v5 = ?addrs.v5,
                listen_tls = ?addrs.v311_tls,
                listen_v5_tls = ?addrs.v5_tls,
                prefix = %prefix,
                "embedded MQTT broker listening"
            );
            let _link_tx = link_tx;
            // Without the ack topic nothing goes out after the drain: the
            // connections close when the reader ends, however it ends.
            let _release = acks.is_none().then(|| release.drop_guard());
            let mut link_rx = link_rx;
            let reader = Reader {
                prefix: &prefix,
                ingestor: &ingestor,
                acks: acks.as_ref(),
            };
            // Runs until shutdown (or until the pipeline or the link closes).
            let end = reader.read(&mut link_rx, Some(&shutdown)).await;
            // From here on every connection's next packet closes it unacknowledged.
            shared.closing.store(true, Ordering::SeqCst);
            stop_accepting.cancel();
            match end {
                ReadEnd::Done => {
                    // Publishes rumqttd already acknowledged must not be
                    // lost: read until the link stays quiet.
                    if let ReadEnd::LinkClosed(e) = reader.read(&mut link_rx, None).await {
                        tracing::warn!(error = %e, "embedded broker link closed while draining");
                    }
                }
                ReadEnd::PipelineClosed => {}
                ReadEnd::LinkClosed(e) => {
                    return Err(SourceError::from(EmbeddedBrokerError::LinkClosed(e)));
                }
            }
            tracing::info!("embedded MQTT broker drained");
            Ok::<(), SourceError>(())
        };
        tasks.push(("mqtt reader", Box::pin(reader)));
        Ok(Self { addrs, tasks })
    }

    /// The MQTT 3.1.1 listener's address, if enabled.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addrs.v311
    }

    /// The MQTT 5 listener's address, if enabled.
    pub fn local_addr_v5(&self) -> Option<SocketAddr> {
        self.addrs.v5
    }

    /// Every listener's address.
    pub fn addrs(&self) -> ListenAddrs {
        self.addrs
    }

    /// The broker's tasks, each named. Each runs until shutdown; the
    /// reader ends with an error when the broker stopped on its own (MQTT
    /// ingestion is gone).
    pub fn into_tasks(self) -> Vec<(&'static str, SourceTask)> {
        self.tasks
    }
}

/// A message of a vehicle on its way to the sinks, for the acker.
struct PendingMessage {
    vehicle: String,
    /// Lowest and highest `seq` of its accepted pings, when all have one.
    accepted: Option<(u64, u64)>,
    /// Lowest `seq` of its pings refused for a retriable reason (rate
    /// limit): no ack may cover it until the device sends it again.
    retry_from: Option<u64>,
    batch: BatchAck,
}

/// Reads the local link and ingests each telemetry publish.
struct Reader<'a> {
    prefix: &'a str,
    ingestor: &'a Ingestor,
    acks: Option<&'a mpsc::Sender<PendingMessage>>,
}

/// Why [`Reader::read`] returned.
enum ReadEnd {
    /// Shutdown fired, or (draining) the link stayed quiet.
    Done,
    /// The pipeline stopped taking input.
    PipelineClosed,
    /// The link to the router closed (the router dropped it).
    LinkClosed(Box<LinkError>),
}

impl Reader<'_> {
    /// With `shutdown`, runs until it fires; without, until the link is idle
    /// for [`DRAIN_IDLE`].
    async fn read(&self, link_rx: &mut LinkRx, shutdown: Option<&CancellationToken>) -> ReadEnd {
        loop {
            let next = match shutdown {
                Some(token) => tokio::select! {
                    biased;
                    () = token.cancelled() => return ReadEnd::Done,
                    n = link_rx.next() => n,
                },
                None => match tokio::time::timeout(DRAIN_IDLE, link_rx.next()).await {
                    Ok(n) => n,
                    Err(_) => return ReadEnd::Done,
                },
            };
            let notification = match next {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "embedded broker link closed");
                    return ReadEnd::LinkClosed(Box::new(e));
                }
            };
            match notification {
                Notification::Forward(forward) => {
                    let publish = forward.publish;
                    let open = self.ingest(publish.topic, publish.payload).await;
                    if !open {
                        return ReadEnd::PipelineClosed;
                    }
                }
                Notification::Unschedule => {
                    if let Err(e) = link_rx.wake().await {
                        tracing::error!(error = %e, "embedded broker link cannot be woken");
                        return ReadEnd::LinkClosed(Box::new(e));
                    }
                }
                _ => {}
            }
        }
    }

    /// Ingests one publish; `false` when the pipeline is closed.
    async fn ingest(&self, topic: bytes::Bytes, payload: bytes::Bytes) -> bool {
        let Ok(topic) = std::str::from_utf8(&topic) else {
            return true;
        };
        let Some(parsed) = parse_topic(self.prefix, topic) else {
            return true;
        };
        let msg = Message {
            payload,
            encoding: parsed.encoding,
            scope: VehicleScope::Topic(parsed.vehicle),
            gateway: Gateway::Mqtt,
            client: None,
            topic: Some(topic),
        };
        // Waits while the pipeline is full: the link stops reading, the
        // router buffers in its log (see EmbeddedConfig::segment_bytes).
        let Ok((outcome, batch)) = self.ingestor.ingest(msg).await else {
            return false;
        };
        // Without the ack topic nobody waits: dropping the batch is fine, its
        // records still hold their share of the in-flight budget.
        let accepted = outcome
            .lowest_seq
            .zip(outcome.highest_seq)
            .filter(|_| outcome.all_have_seq);
        let retry_from = outcome.retry.and_then(|r| r.lowest_seq);
        if let Some(acks) = self.acks
            && (accepted.is_some() || retry_from.is_some())
        {
            let pending = PendingMessage {
                vehicle: parsed.vehicle.to_owned(),
                accepted,
                retry_from,
                batch,
            };
            if acks.send(pending).await.is_err() {
                tracing::warn!("acknowledgement publisher stopped");
            }
        }
        true
    }
}

/// Most messages waiting for their outcome before the reader waits too.
const ACK_QUEUE: usize = 65_536;

/// How long after a publish found the router's queue full the newest
/// unannounced ack is published again.
const ACK_NUDGE: Duration = Duration::from_millis(20);

/// Publishes `{"ack": N}` on a vehicle's ack topic whenever its durable
/// watermark moves. Ends when the reader is gone and every outcome is in.
///
/// Outcomes that are in together (a sink commits a batch, so many messages
/// settle at once) are taken together, and each vehicle among them gets one
/// ack, with its newest watermark: under load that saves the router, the
/// device's connection and the device a publish per message, and it never
/// waits for anything that is not already there.
///
/// `try_publish` puts the ack into the link's buffer before it notifies the
/// router; when the router's queue is full only the notification fails, and
/// the buffered acks go out with the next notification. So a full queue is
/// not an error: the newest such ack is published again after
/// [`ACK_NUDGE`], which notifies the router for everything buffered. An ack
/// sent twice is harmless: `{"ack": N}` only says "up to N is durable".
async fn publish_acks(
    mut pending: mpsc::Receiver<PendingMessage>,
    mut link_tx: LinkTx,
    prefix: String,
) {
    let mut watermarks = Watermarks::default();
    let mut outcomes = FuturesUnordered::new();
    // The newest ack whose router notification did not go through; any
    // later notification that does go through flushes it too.
    let mut deferred: Option<(Bytes, Bytes)> = None;
    loop {
        tokio::select! {
            Some(m) = pending.recv() => {
                for (ticket, batch) in tickets(&mut watermarks, m) {
                    outcomes.push(outcome_of(ticket, batch));
                }
            }
            Some(first) = outcomes.next(), if !outcomes.is_empty() => {
                let mut settled = vec![first];
                // With this task's own waker, so an outcome that comes in
                // after the last `Pending` wakes it as usual.
                std::future::poll_fn(|cx| {
                    while let Poll::Ready(Some(outcome)) = outcomes.poll_next_unpin(cx) {
                        settled.push(outcome);
                    }
                    Poll::Ready(())
                })
                .await;
                let withheld = settled.iter().filter(|(_, s)| *s == AckStatus::Failed).count();
                if withheld > 0 {
                    crate::metrics::mqtt_acks_withheld(withheld);
                }
                let acks = watermarks.settled_together(settled);
                if let Some(((vehicle, seq), rest)) = acks.split_last() {
                    // All but the last straight into the link's buffer, the
                    // last through `try_publish`, whose one router
                    // notification takes the whole buffer.
                    link_tx.buffer().extend(rest.iter().map(|(vehicle, seq)| {
                        let (topic, payload) = ack_message(&prefix, vehicle, *seq);
                        Packet::Publish(ack_publish(topic, payload), None)
                    }));
                    let (topic, payload) = ack_message(&prefix, vehicle, *seq);
                    deferred = publish_ack(&mut link_tx, topic, payload);
                }
            }
            () = tokio::time::sleep(ACK_NUDGE), if deferred.is_some() => {
                if let Some((topic, payload)) = deferred.take() {
                    deferred = publish_ack(&mut link_tx, topic, payload);
                }
            }
            else => break,
        }
    }
    if let Some((topic, payload)) = deferred {
        // Last chance at shutdown: the router may have room now.
        let _ = link_tx.try_send_publish(ack_publish(topic, payload));
    }
}

/// Registers a message with the watermarks: what was accepted settles with
/// the message's outcome (`Some` batch), and pings refused for a retriable
/// reason as a failure (`None`), which holds the watermark below them
/// until the device sends them again. Accepted pings above a refused one
/// are held with it: acknowledged only once resent.
fn tickets(
    watermarks: &mut Watermarks,
    message: PendingMessage,
) -> Vec<(MessageTicket, Option<BatchAck>)> {
    let vehicle = &message.vehicle;
    match (message.accepted, message.retry_from) {
        (Some((min, max)), None) => {
            vec![(watermarks.arrived(vehicle, min, max), Some(message.batch))]
        }
        (Some((min, max)), Some(floor)) if max < floor => vec![
            (watermarks.arrived(vehicle, min, max), Some(message.batch)),
            (watermarks.arrived(vehicle, floor, floor), None),
        ],
        (accepted, Some(floor)) => {
            let max = accepted.map_or(floor, |(_, max)| max.max(floor));
            vec![(watermarks.arrived(vehicle, floor, max), None)]
        }
        (None, None) => Vec::new(),
    }
}

/// The outcome of a registered part of a message: its batch's, or a
/// failure when it has none (refused, to be sent again).
async fn outcome_of(ticket: MessageTicket, batch: Option<BatchAck>) -> (MessageTicket, AckStatus) {
    match batch {
        Some(batch) => (ticket, batch.wait().await),
        None => (ticket, AckStatus::Failed),
    }
}

/// The topic and payload of `vehicle`'s ack saying `seq`.
fn ack_message(prefix: &str, vehicle: &str, seq: u64) -> (Bytes, Bytes) {
    (
        Bytes::from(ack_topic(prefix, vehicle)),
        Bytes::from(format!("{{\"ack\":{seq}}}")),
    )
}

/// An ack's publish. At QoS 1: the broker delivers at the lower of the
/// publish's and the subscription's QoS, so a device subscribed with QoS 1
/// gets its acks at QoS 1, resent until it acknowledges them (and, in a
/// persistent session, kept while it is away). The router acknowledges
/// them to the link; the reader skips those acknowledgements.
fn ack_publish(topic: Bytes, payload: Bytes) -> Publish {
    Publish::new(topic, payload, false).with_qos(QoS::AtLeastOnce)
}

/// Publishes one ack; returns it when only the router notification failed
/// (queue full), to be published again. `Bytes` so keeping it costs no copy.
fn publish_ack(link_tx: &mut LinkTx, topic: Bytes, payload: Bytes) -> Option<(Bytes, Bytes)> {
    match link_tx.try_send_publish(ack_publish(topic.clone(), payload.clone())) {
        Ok(_) => None,
        Err(LinkError::TrySend(flume::TrySendError::Full(_))) => {
            crate::metrics::mqtt_ack_publish_deferred();
            Some((topic, payload))
        }
        Err(e) => {
            crate::metrics::mqtt_ack_publish_failed();
            tracing::warn!(error = %e, topic = %String::from_utf8_lossy(&topic), "cannot publish acknowledgement");
            None
        }
    }
}

/// Dead-letters publishes the topic ACL refused, until shutdown. It must
/// not wait for the channel to close: live connections hold its sender, and
/// this task's [`Ingestor`] would keep the pipeline's queues open forever.
async fn record_refusals(
    mut refused: mpsc::Receiver<RefusedPublish>,
    ingestor: Ingestor,
    shutdown: CancellationToken,
) {
    loop {
        let r = tokio::select! {
            r = refused.recv() => r,
            () = shutdown.cancelled() => {
                // What was refused before the cut-off is still recorded.
                refused.close();
                refused.recv().await
            }
        };
        let Some(r) = r else { return };
        let rejection = Rejection {
            reason: RejectReason::Unauthorized,
            detail: r.detail,
            vehicle_id: r.vehicle,
            raw: r.payload,
        };
        let client = Some(Arc::from(r.client_id.as_str()));
        if ingestor
            .reject(
                rejection,
                Gateway::Mqtt,
                client,
                Some(&r.topic),
                Ack::none(),
            )
            .await
            .is_err()
        {
            return;
        }
        if shutdown.is_cancelled() && refused.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subscriptions_get_their_own_log_only_when_configured() {
        let default = router_config(&EmbeddedConfig::default());
        assert!(default.custom_segment.is_none());

        let bounded = router_config(&EmbeddedConfig {
            topic_prefix: "depot".into(),
            ack_segment_bytes: Some(32 * 1024),
            ack_segment_count: 2,
            ..EmbeddedConfig::default()
        });
        let custom = bounded.custom_segment.expect("ack log configured");
        let ack = &custom["depot/+/ack"];
        assert_eq!(
            (ack.max_segment_size, ack.max_segment_count),
            (32 * 1024, 2)
        );
        assert_eq!(custom.len(), 1);
        assert_eq!(
            bounded.max_segment_size,
            EmbeddedConfig::default().segment_bytes
        );
    }

    /// Settles every ticket of `message`: the accepted part `delivered`,
    /// the refused part as the acker does (failed); returns the acks.
    fn settle(watermarks: &mut Watermarks, message: PendingMessage) -> Vec<(String, u64)> {
        let outcomes: Vec<_> = tickets(watermarks, message)
            .into_iter()
            .map(|(ticket, batch)| {
                let status = match batch {
                    Some(_) => AckStatus::Delivered,
                    None => AckStatus::Failed,
                };
                (ticket, status)
            })
            .collect();
        watermarks.settled_together(outcomes)
    }

    fn message(accepted: Option<(u64, u64)>, retry_from: Option<u64>) -> PendingMessage {
        PendingMessage {
            vehicle: "van".to_owned(),
            accepted,
            retry_from,
            batch: BatchAck::new(),
        }
    }

    #[test]
    fn rate_limited_pings_hold_the_ack_until_they_are_sent_again() {
        let mut w = Watermarks::default();
        assert_eq!(
            settle(&mut w, message(Some((1, 5)), None)),
            [("van".to_owned(), 5)]
        );
        // 6..=10 accepted, 11..=20 rate limited: the ack stops at 10.
        assert_eq!(
            settle(&mut w, message(Some((6, 10)), Some(11))),
            [("van".to_owned(), 10)]
        );
        // Later pings are accepted, but 11 is missing: no ack moves.
        assert_eq!(settle(&mut w, message(Some((21, 21)), None)), []);
        // Refused entirely, with an accepted ping above the refused one.
        assert_eq!(settle(&mut w, message(Some((23, 23)), Some(22))), []);
        // The device resends from its last ack: the ack moves again.
        assert_eq!(
            settle(&mut w, message(Some((11, 20)), None)),
            [("van".to_owned(), 20)]
        );
        assert_eq!(
            settle(&mut w, message(Some((21, 23)), None)),
            [("van".to_owned(), 23)]
        );
        // A message with nothing to track registers nothing.
        assert!(tickets(&mut w, message(None, None)).is_empty());
    }

    /// A router with a link for the acker and a device-side link subscribed
    /// to every vehicle's ack topic.
    fn router_links() -> (LinkTx, LinkRx) {
        // The embedded broker's router, with room for a few links only.
        let config = EmbeddedConfig {
            max_connections: 0,
            segment_bytes: 1024 * 1024,
            segment_count: 4,
            ..EmbeddedConfig::default()
        };
        let router_tx = Router::new(0, router_config(&config)).spawn();
        let (acker_tx, _, _) = rumqttd::local::LinkBuilder::new("acker", router_tx.clone())
            .build()
            .expect("acker link");
        let (mut device_tx, device_rx, _) = rumqttd::local::LinkBuilder::new("device", router_tx)
            .dynamic_filters(true)
            .build()
            .expect("device link");
        device_tx.subscribe("fleet/+/ack").expect("subscribe");
        // The link's sending half must live, or the router drops the link.
        std::mem::forget(device_tx);
        (acker_tx, device_rx)
    }

    /// Every ack publish the device link sees until it stays quiet for 300 ms.
    async fn acks_seen(rx: &mut LinkRx) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        while let Ok(next) = tokio::time::timeout(Duration::from_millis(300), rx.next()).await {
            match next.expect("link open") {
                Some(Notification::Forward(f)) => seen.push((
                    String::from_utf8_lossy(&f.publish.topic).into_owned(),
                    String::from_utf8_lossy(&f.publish.payload).into_owned(),
                )),
                Some(Notification::Unschedule) => rx.wake().await.expect("wake"),
                _ => {}
            }
        }
        seen
    }

    #[tokio::test]
    async fn messages_that_settle_together_get_one_ack_per_vehicle() {
        let (acker_tx, mut device_rx) = router_links();
        let (pending_tx, pending_rx) = mpsc::channel(16);
        let acker = tokio::spawn(publish_acks(pending_rx, acker_tx, "fleet".to_owned()));

        // Four messages in flight, each one record the test holds.
        let mut records = Vec::new();
        for (vehicle, seq) in [("van-a", 1), ("van-a", 2), ("van-b", 7), ("van-a", 3)] {
            let batch = BatchAck::new();
            records.push(batch.ack());
            let message = PendingMessage {
                vehicle: vehicle.to_owned(),
                accepted: Some((seq, seq)),
                retry_from: None,
                batch,
            };
            pending_tx.send(message).await.expect("acker runs");
        }
        while pending_tx.capacity() < pending_tx.max_capacity() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The sink commits them together.
        for record in records {
            record.delivered();
        }
        let mut seen = acks_seen(&mut device_rx).await;
        seen.sort();
        assert_eq!(
            seen,
            [
                ("fleet/van-a/ack".to_owned(), r#"{"ack":3}"#.to_owned()),
                ("fleet/van-b/ack".to_owned(), r#"{"ack":7}"#.to_owned()),
            ]
        );

        // One that settles on its own still gets its own ack at once.
        let batch = BatchAck::new();
        let record = batch.ack();
        let message = PendingMessage {
            vehicle: "van-a".to_owned(),
            accepted: Some((4, 4)),
            retry_from: None,
            batch,
        };
        pending_tx.send(message).await.expect("acker runs");
        record.delivered();
        assert_eq!(
            acks_seen(&mut device_rx).await,
            [("fleet/van-a/ack".to_owned(), r#"{"ack":4}"#.to_owned())]
        );

        drop(pending_tx);
        tokio::time::timeout(Duration::from_secs(5), acker)
            .await
            .expect("the acker ends once its input is closed and drained")
            .expect("acker ran");
    }
}
