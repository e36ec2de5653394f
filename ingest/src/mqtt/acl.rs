//! Per-connection topic access control for the embedded broker.
//!
//! rumqttd has no topic ACLs: its auth hook sees only (client id, username,
//! password) at CONNECT. But its `Protocol` codec is cloned for every
//! connection and sees every packet, so a wrapper around it can remember who
//! connected and refuse, before rumqttd acts on it (and before any PUBACK):
//! - a PUBLISH to another vehicle's topic, or to anything but the device's
//!   own telemetry topics;
//! - a SUBSCRIBE outside `{prefix}/{own vehicle}/`;
//! - anything at all once fleetpipe is shutting down, so that no publish is
//!   acknowledged that fleetpipe will not read.
//!
//! MQTT 3.1.1 has no way to refuse one PUBLISH, so a refusal closes the
//! connection; the publish is not acknowledged and is dead-lettered with
//! reason `unauthorized`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use fleetpipe_model::VehicleId;
use rumqttd::protocol::{Error, Packet, Protocol};
use tokio::sync::mpsc;

use super::parse_topic;
use crate::auth::{Authenticator, Identity};

/// A publish the ACL refused, for the dead-letter output.
#[derive(Debug)]
pub(crate) struct RefusedPublish {
    pub client_id: String,
    pub vehicle: Option<VehicleId>,
    pub topic: String,
    pub payload: Bytes,
    pub detail: String,
}

/// State shared by every connection's codec.
#[derive(Debug)]
pub(crate) struct AclShared {
    pub auth: Arc<Authenticator>,
    pub prefix: String,
    /// Set at shutdown: every further packet closes its connection.
    pub closing: AtomicBool,
    pub refused: mpsc::Sender<RefusedPublish>,
}

/// rumqttd codec wrapper enforcing the topic rules of one connection.
#[derive(Debug, Clone)]
pub(crate) struct DeviceProtocol<P> {
    inner: P,
    shared: Arc<AclShared>,
    client_id: String,
    /// `None` until CONNECT (or when its credentials are bad, in which case
    /// rumqttd's auth hook refuses the connection anyway).
    identity: Option<Identity>,
}

impl<P> DeviceProtocol<P> {
    pub fn new(inner: P, shared: Arc<AclShared>) -> Self {
        Self {
            inner,
            shared,
            client_id: String::new(),
            identity: None,
        }
    }

    fn refuse(&self, topic: &str, payload: Bytes, detail: String) -> Error {
        tracing::warn!(client_id = %self.client_id, topic, %detail, "MQTT publish refused, closing connection");
        metrics::counter!("fleetpipe_mqtt_refused_total", "kind" => "publish").increment(1);
        let refused = RefusedPublish {
            client_id: self.client_id.clone(),
            vehicle: self.identity.as_ref().and_then(Identity::vehicle).cloned(),
            topic: topic.to_owned(),
            payload,
            detail,
        };
        if self.shared.refused.try_send(refused).is_err() {
            // The device still holds the publish (it was never acknowledged).
            metrics::counter!("fleetpipe_mqtt_refused_not_recorded_total").increment(1);
        }
        // rumqttd has no error variant for authorization; any error closes the connection.
        Error::InvalidProtocol
    }

    fn check(&mut self, packet: &Packet) -> Result<(), Error> {
        if self.shared.closing.load(Ordering::Relaxed) {
            return Err(Error::InvalidProtocol);
        }
        match packet {
            Packet::Connect(connect, _, _, _, login) => {
                self.client_id = connect.client_id.clone();
                let (user, pass) = login.as_ref().map_or((None, None), |l| {
                    (Some(l.username.as_str()), Some(l.password.as_str()))
                });
                self.identity = self.shared.auth.authenticate(pass, user).ok();
            }
            Packet::Publish(publish, _) => {
                let Some(Identity::Vehicle(own)) = &self.identity else {
                    return Ok(()); // anonymous: no topic rules
                };
                let topic = String::from_utf8_lossy(&publish.topic);
                match parse_topic(&self.shared.prefix, &topic) {
                    Some(t) if t.vehicle == own.as_str() => {}
                    _ => {
                        let detail = format!("device {own} may not publish to {topic:?}");
                        return Err(self.refuse(&topic, publish.payload.clone(), detail));
                    }
                }
            }
            Packet::Subscribe(subscribe, _) => {
                let Some(Identity::Vehicle(own)) = &self.identity else {
                    return Ok(());
                };
                let allowed = format!("{}/{own}/", self.shared.prefix);
                if let Some(f) = subscribe
                    .filters
                    .iter()
                    .find(|f| !f.path.starts_with(&allowed))
                {
                    tracing::warn!(client_id = %self.client_id, filter = %f.path, "MQTT subscribe refused, closing connection");
                    metrics::counter!("fleetpipe_mqtt_refused_total", "kind" => "subscribe")
                        .increment(1);
                    return Err(Error::InvalidProtocol);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl<P: Protocol> Protocol for DeviceProtocol<P> {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        let packet = self.inner.read_mut(stream, max_size)?;
        self.check(&packet)?;
        Ok(packet)
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, Error> {
        self.inner.write(packet, write)
    }
}
