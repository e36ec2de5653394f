//! External broker mode: fleetpipe consumes telemetry from an existing MQTT
//! broker (Mosquitto, EMQX, HiveMQ) through rumqttc.
//!
//! - QoS 1, persistent session (`clean_session = false`, stable client id),
//!   so publishes queued while fleetpipe is away are delivered when it returns;
//! - a shared subscription `$share/{group}/{prefix}/+/telemetry[/pb]`, so
//!   several instances with the same group split the load;
//! - manual acknowledgements: a PUBACK is sent only when every record made
//!   from the publish (pings and dead letters) is durable in the sinks. A
//!   publish whose records failed is not acknowledged; the broker redelivers
//!   it when the session reconnects.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fleetpipe_model::{AckStatus, Gateway};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio_util::sync::CancellationToken;

use super::{ExternalConfig, hard_packet_limit, parse_topic, telemetry_filters};
use crate::codec::VehicleScope;
use crate::gateway::{Ingestor, Message};
use crate::source::{SourceTask, ok_at_end};

/// Pause between reconnection attempts.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// At shutdown, how long to wait for the last PUBACKs to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExternalConsumerError {
    /// `ingest.mqtt.broker_url` is not `mqtt://host:port`.
    #[error("ingest.mqtt.broker_url = {0:?}: expected mqtt://host:port")]
    BadUrl(String),
}

/// A consumer ready to run: its task, not yet spawned.
pub struct ExternalConsumer {
    task: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for ExternalConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalConsumer").finish_non_exhaustive()
    }
}

type PendingAck = Pin<Box<dyn Future<Output = (Publish, AckStatus)> + Send>>;

fn parse_broker_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (rest, 1883),
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// The host and port of `ingest.mqtt.broker_url`.
///
/// # Errors
///
/// [`ExternalConsumerError::BadUrl`] when it is not `mqtt://host[:port]`.
pub(crate) fn broker_address(url: &str) -> Result<(String, u16), ExternalConsumerError> {
    parse_broker_url(url).ok_or_else(|| ExternalConsumerError::BadUrl(url.to_owned()))
}

impl ExternalConsumer {
    /// Prepares the consumer; its task ([`into_task`](Self::into_task))
    /// connects (retrying) and consumes. It stops taking publishes when
    /// `shutdown` fires, waits for the acknowledgements of what it took,
    /// then disconnects.
    ///
    /// # Errors
    ///
    /// A broker URL that is not `mqtt://host:port`.
    pub fn start(
        config: &ExternalConfig,
        ingestor: Ingestor,
        shutdown: CancellationToken,
    ) -> Result<Self, ExternalConsumerError> {
        let (host, port) = broker_address(&config.broker_url)?;
        let mut options = MqttOptions::new(config.client_id.clone(), host, port);
        let limit = hard_packet_limit(ingestor.validator().config().max_payload_bytes);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(config.keep_alive)
            .set_max_packet_size(limit, limit)
            // Every PUBACK goes through the request channel; room for all of
            // them means `try_ack` never fails.
            .set_request_channel_capacity(config.max_unacked.saturating_add(16))
            .set_inflight(u16::try_from(config.max_unacked.clamp(1, 65_535)).unwrap_or(u16::MAX));
        if let Some(user) = &config.username {
            options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
        }
        let filters = telemetry_filters(&config.topic_prefix)
            .map(|f| format!("$share/{}/{f}", config.share_group));
        let prefix = config.topic_prefix.clone();
        let capacity = config.max_unacked.saturating_add(16);
        let (broker, client_id, group) = (
            config.broker_url.clone(),
            config.client_id.clone(),
            config.share_group.clone(),
        );
        let task = Box::pin(async move {
            tracing::info!(%broker, %client_id, %group, "consuming from external MQTT broker");
            let (client, eventloop) = AsyncClient::new(options, capacity);
            run(client, eventloop, filters, prefix, ingestor, shutdown).await;
        });
        Ok(Self { task })
    }

    /// The consumer's task: runs until shutdown and the drain after it.
    pub fn into_task(self) -> SourceTask {
        Box::pin(ok_at_end(self.task))
    }
}

async fn run(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    filters: [String; 2],
    prefix: String,
    ingestor: Ingestor,
    shutdown: CancellationToken,
) {
    let mut pending: FuturesUnordered<PendingAck> = FuturesUnordered::new();
    let mut accepting = true;
    loop {
        if !accepting && pending.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some((publish, status)) = pending.next(), if !pending.is_empty() => {
                match status {
                    AckStatus::Delivered => {
                        if let Err(e) = client.try_ack(&publish) {
                            tracing::error!(error = %e, "cannot queue PUBACK");
                        }
                    }
                    AckStatus::Failed => {
                        crate::metrics::mqtt_unacked("not_durable");
                        tracing::warn!(topic = %publish.topic, "publish not durable, leaving it unacknowledged for redelivery");
                    }
                }
            }
            () = shutdown.cancelled(), if accepting => {
                tracing::info!(pending = pending.len(), "external MQTT consumer stops taking publishes");
                accepting = false;
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(session_present = ack.session_present, "connected to external MQTT broker");
                    for filter in &filters {
                        if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            tracing::error!(error = %e, %filter, "cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !accepting {
                        // Not acknowledged: the broker keeps it for this session.
                        continue;
                    }
                    let Some(parsed) = parse_topic(&prefix, &publish.topic) else {
                        // Not ours (e.g. a stray subscription): acknowledge so it does not clog the session.
                        let _ = client.try_ack(&publish);
                        continue;
                    };
                    let msg = Message {
                        payload: publish.payload.clone(),
                        encoding: parsed.encoding,
                        scope: VehicleScope::Topic(parsed.vehicle),
                        gateway: Gateway::MqttExternal,
                        client: None,
                        topic: Some(&publish.topic),
                    };
                    // Waits while the pipeline is full: the event loop is not
                    // polled, so rumqttc stops reading the socket.
                    let Ok((_, batch)) = ingestor.ingest(msg).await else {
                        accepting = false;
                        continue;
                    };
                    pending.push(Box::pin(async move { (publish, batch.wait().await) }));
                }
                Ok(_) => {}
                Err(e) => {
                    crate::metrics::mqtt_connection_failed();
                    tracing::warn!(error = %e, "external MQTT broker connection failed, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RECONNECT_DELAY) => {}
                        () = shutdown.cancelled(), if accepting => { accepting = false; }
                    }
                }
            }
        }
    }
    // Let the queued PUBACKs and the DISCONNECT go out.
    let _ = client.try_disconnect();
    let flush = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    if tokio::time::timeout(FLUSH_TIMEOUT, flush).await.is_err() {
        tracing::warn!("external MQTT broker did not take the disconnect in time");
    }
    tracing::info!("external MQTT consumer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883"),
            Some(("127.0.0.1".into(), 1883))
        );
        assert_eq!(
            parse_broker_url("tcp://broker"),
            Some(("broker".into(), 1883))
        );
        assert_eq!(parse_broker_url("mqtt://broker:x"), None);
        assert_eq!(parse_broker_url("http://broker:1883"), None);
        assert_eq!(parse_broker_url("mqtt://:1883"), None);
    }
}
