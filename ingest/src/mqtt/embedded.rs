//! The embedded MQTT broker: rumqttd inside fleetpipe.
//!
//! Devices connect to rumqttd's listeners; fleetpipe reads their publishes
//! through a local link subscribed to the telemetry topics. Designed around
//! rumqttd's limits:
//! - there is no stop API: the listener tasks run on fleetpipe's runtime and
//!   are aborted at shutdown, and the per-connection [`DeviceProtocol`] codec
//!   refuses every packet once fleetpipe is closing, so no publish is
//!   acknowledged that fleetpipe will not read;
//! - `Broker::start()` blocks and owns its servers, so fleetpipe builds the
//!   router and the servers itself (`Router::spawn` runs the router on its
//!   own thread, which lives until the process exits);
//! - the local link's publish is blocking: fleetpipe only reads from it here;
//! - the router pauses a slow local link with `Unschedule`, which must be
//!   answered with `wake()` or the link never gets data again;
//! - rumqttd sends PUBACK when it has the publish in memory, before fleetpipe
//!   has it: durability starts later (see ARCHITECTURE.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetpipe_model::{Ack, Gateway, RejectReason};
use rumqttd::local::LinkRx;
use rumqttd::protocol::{v4::V4, v5::V5};
use rumqttd::{ConnectionSettings, LinkType, Notification, Router, RouterConfig, Server, ServerSettings};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::acl::{AclShared, DeviceProtocol, RefusedPublish};
use super::{MqttConfig, hard_packet_limit, parse_topic, telemetry_filters};
use crate::auth::Authenticator;
use crate::codec::{Rejection, VehicleScope};
use crate::gateway::{Ingestor, Message};

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
    /// The local link to the router failed.
    #[error("embedded broker: local link: {0}")]
    Link(String),
}

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    local_addr_v5: Option<SocketAddr>,
    reader: JoinHandle<()>,
}

/// Binds `addr` once to fail early with a clear error and to resolve port 0,
/// then frees it for rumqttd, which binds by address itself.
fn reserve(key: &'static str, addr: SocketAddr) -> Result<SocketAddr, EmbeddedBrokerError> {
    let bind_err = |source| EmbeddedBrokerError::Bind { key, addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.local_addr().map_err(bind_err)
}

impl EmbeddedBroker {
    /// Starts the listeners and the reader. Stops accepting when `shutdown`
    /// fires, drains what rumqttd already acknowledged, then ends.
    pub async fn start(
        config: &MqttConfig,
        auth: Arc<Authenticator>,
        ingestor: Ingestor,
        shutdown: CancellationToken,
    ) -> Result<Self, EmbeddedBrokerError> {
        let local_addr = reserve("ingest.mqtt.listen", config.listen)?;
        let local_addr_v5 = config
            .listen_v5
            .map(|a| reserve("ingest.mqtt.listen_v5", a))
            .transpose()?;

        let router = Router::new(
            0,
            RouterConfig {
                max_connections: config.max_connections.saturating_add(16),
                max_outgoing_packet_count: 1024,
                max_segment_size: config.segment_bytes,
                max_segment_count: config.segment_count,
                ..RouterConfig::default()
            },
        );
        let router_tx = router.spawn();

        // The local link registers with the router and waits for its ack:
        // a short blocking call, kept off the async workers.
        let link_router_tx = router_tx.clone();
        let filters = telemetry_filters(&config.topic_prefix);
        let (link_tx, link_rx) = tokio::task::spawn_blocking(move || {
            let (mut tx, rx, _) = rumqttd::local::LinkBuilder::new("fleetpipe-ingest", link_router_tx)
                .dynamic_filters(true)
                .build()
                .map_err(|e| EmbeddedBrokerError::Link(e.to_string()))?;
            for filter in filters {
                tx.subscribe(filter)
                    .map_err(|e| EmbeddedBrokerError::Link(e.to_string()))?;
            }
            Ok::<_, EmbeddedBrokerError>((tx, rx))
        })
        .await
        .map_err(|e| EmbeddedBrokerError::Link(e.to_string()))??;

        let (refused_tx, refused_rx) = mpsc::channel(1024);
        let shared = Arc::new(AclShared {
            auth: Arc::clone(&auth),
            prefix: config.topic_prefix.clone(),
            closing: false.into(),
            refused: refused_tx,
        });

        let mut connections = ConnectionSettings {
            connection_timeout_ms: u16::try_from(config.connect_timeout.as_millis()).unwrap_or(u16::MAX),
            max_payload_size: hard_packet_limit(ingestor.validator().config().max_payload_bytes),
            max_inflight_count: config.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        if !auth.is_anonymous() {
            let auth = Arc::clone(&auth);
            connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
                let verdict = auth.authenticate(Some(&pass), Some(&user));
                if let Err(e) = &verdict {
                    tracing::warn!(%client_id, username = %user, error = %e, "MQTT connection refused");
                    metrics::counter!("fleetpipe_rejected_total", "reason" => RejectReason::Unauthorized.as_str(), "gateway" => "mqtt")
                        .increment(1);
                }
                std::future::ready(verdict.is_ok())
            });
        }
        let settings = |name: &str, listen| ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections.clone(),
        };
        let mut listeners = vec![tokio::spawn({
            let mut server = Server::new(
                settings("mqtt-v311", local_addr),
                router_tx.clone(),
                DeviceProtocol::new(V4, Arc::clone(&shared)),
            );
            async move {
                if let Err(e) = server.start(LinkType::Remote).await {
                    tracing::error!(error = %e, "embedded MQTT 3.1.1 listener stopped");
                }
            }
        })];
        if let Some(addr) = local_addr_v5 {
            let mut server = Server::new(
                settings("mqtt-v5", addr),
                router_tx.clone(),
                DeviceProtocol::new(V5, Arc::clone(&shared)),
            );
            listeners.push(tokio::spawn(async move {
                if let Err(e) = server.start(LinkType::Remote).await {
                    tracing::error!(error = %e, "embedded MQTT 5 listener stopped");
                }
            }));
        }
        tracing::info!(listen = %local_addr, listen_v5 = ?local_addr_v5, prefix = %config.topic_prefix, "embedded MQTT broker listening");

        tokio::spawn(record_refusals(refused_rx, ingestor.clone(), shutdown.clone()));
        let prefix = config.topic_prefix.clone();
        let reader = tokio::spawn(async move {
            // Keep the link's sending half alive: dropping it disconnects the link.
            let _link_tx = link_tx;
            let mut link_rx = link_rx;
            // Runs until shutdown (or until the pipeline closes).
            let open = read_link(&mut link_rx, &prefix, &ingestor, Some(&shutdown)).await;
            // From here on every connection's next packet closes it unacknowledged.
            shared.closing.store(true, Ordering::SeqCst);
            for listener in &listeners {
                listener.abort();
            }
            if open {
                // Publishes rumqttd already acknowledged must not be lost: read
                // until the link stays quiet.
                read_link(&mut link_rx, &prefix, &ingestor, None).await;
            }
            tracing::info!("embedded MQTT broker drained");
        });
        Ok(Self {
            local_addr,
            local_addr_v5,
            reader,
        })
    }

    /// The MQTT 3.1.1 listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The MQTT 5 listener's address, if enabled.
    pub fn local_addr_v5(&self) -> Option<SocketAddr> {
        self.local_addr_v5
    }

    /// Waits until the broker has stopped and drained.
    pub async fn join(self) {
        if let Err(e) = self.reader.await {
            tracing::error!(error = %e, "embedded MQTT reader failed");
        }
    }
}

/// Reads the local link and ingests each telemetry publish. With `shutdown`,
/// runs until it fires; without, until the link is idle for [`DRAIN_IDLE`].
/// Returns `false` when the pipeline is closed (nothing more can be taken).
async fn read_link(
    link_rx: &mut LinkRx,
    prefix: &str,
    ingestor: &Ingestor,
    shutdown: Option<&CancellationToken>,
) -> bool {
    loop {
        let next = match shutdown {
            Some(token) => tokio::select! {
                biased;
                () = token.cancelled() => return true,
                n = link_rx.next() => n,
            },
            None => match tokio::time::timeout(DRAIN_IDLE, link_rx.next()).await {
                Ok(n) => n,
                Err(_) => return true,
            },
        };
        let notification = match next {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "embedded broker link closed");
                return false;
            }
        };
        match notification {
            Notification::Forward(forward) => {
                let publish = forward.publish;
                let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                    continue;
                };
                let Some(parsed) = parse_topic(prefix, topic) else {
                    continue;
                };
                let msg = Message {
                    payload: publish.payload,
                    encoding: parsed.encoding,
                    scope: VehicleScope::Topic(parsed.vehicle),
                    gateway: Gateway::Mqtt,
                    client: None,
                    topic: Some(topic),
                };
                // Waits while the pipeline is full: the link stops reading,
                // the router buffers in its log (see MqttConfig::segment_bytes).
                if ingestor.ingest(msg, None).await.is_err() {
                    return false;
                }
            }
            Notification::Unschedule => {
                if let Err(e) = link_rx.wake().await {
                    tracing::error!(error = %e, "embedded broker link cannot be woken");
                    return false;
                }
            }
            _ => {}
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
            .reject(rejection, Gateway::Mqtt, client, Some(&r.topic), Ack::none())
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
