//! Per-connection access control for the embedded broker.
//!
//! rumqttd has no topic ACLs: its auth hook sees only (client id, username,
//! password) at CONNECT. But its `Protocol` codec is cloned for every
//! connection and sees every packet, so a wrapper around it can remember who
//! connected and refuse, before rumqttd acts on it (and before any PUBACK):
//! - a CONNECT whose credentials are bad (authenticated modes; on a mutual
//!   TLS listener the client certificate is the credential, see
//!   [`certificate_session`]), whose client
//!   id is not the device's own (`{vehicle}` or `{vehicle}@{suffix}`), or
//!   that claims fleetpipe's internal link's id (every mode), so no device
//!   can take over another's session or displace fleetpipe's own link;
//! - a CONNECT whose will is not a publish the device itself could make
//!   (a will is published later by the broker on the device's behalf);
//! - a second CONNECT on the same connection (MQTT 3.1.1 §3.1, MQTT 5
//!   §3.1: a protocol violation the server must close the connection for);
//! - a PUBLISH anywhere but the device's own telemetry topics;
//! - a SUBSCRIBE to anything but the device's own ack topic;
//! - any packet after the device's JWT expired;
//! - anything at all once fleetpipe is shutting down, so that no publish is
//!   acknowledged that fleetpipe will not read.
//!
//! The rules are decided by [`ConnectionRules`], pure and without I/O;
//! `DeviceProtocol` applies them to rumqttd's packets, and [`answer`]
//! says how the device learns of a refusal (wire contract §9), so that it
//! can tell one from a network fault: a refused CONNECT gets a CONNACK with
//! a reason code, a refused SUBSCRIBE filter its SUBACK code (the
//! connection stays), a refused MQTT 5 QoS 1/2 PUBLISH a PUBACK/PUBREC 0x87
//! (the connection stays; the vendored rumqttd answers these in order with
//! its other acknowledgements), anything else on MQTT 5 a DISCONNECT with a
//! reason code before the close. MQTT 3.1.1 has no way to refuse one
//! PUBLISH, nor a server DISCONNECT, so there the connection is just
//! closed. A refused publish is never routed and is dead-lettered with
//! reason `unauthorized`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use fleetpipe_model::VehicleId;
use rumqttd::protocol::{
    Answer, ConnectReturnCode, DisconnectReasonCode, Error, Packet, Protocol, PubAckReason, QoS,
    SubscribeReasonCode,
};
use tokio::sync::mpsc;

use super::{ack_topic, parse_topic};
use crate::auth::{AuthError, Authenticated, Authenticator, Identity};

/// Client id of fleetpipe's own link into the embedded router. It starts
/// with [`RESERVED_CLIENT_ID_START`], which no device client id may (see
/// [`client_id_allowed`]), so no device can connect under it and make the
/// router drop the link. (rumqttd's router itself refuses ids with any of
/// `+$#/`, so those cannot mark it.)
pub const INTERNAL_CLIENT_ID: &str = "!fleetpipe-ingest";

/// The largest topic alias rumqttd accepts from a device (it closes the
/// connection for a larger one), so the aliases a connection can set.
const MAX_TOPIC_ALIAS: u16 = 4096;

/// Client ids starting with this are fleetpipe's own.
pub const RESERVED_CLIENT_ID_START: char = '!';

/// Separates a vehicle id from a device's own suffix in its client id.
pub const CLIENT_ID_SUFFIX_SEPARATOR: char = '@';

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
    /// Keep alive (seconds) for a device that turned keep alive off
    /// (`ingest.mqtt.server_keep_alive`).
    pub server_keep_alive: u16,
    pub refused: mpsc::Sender<RefusedPublish>,
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A CONNECT on a connection that already sent one.
    #[error("second CONNECT on one connection")]
    SecondConnect,
    /// A packet before CONNECT (rumqttd refuses these too).
    #[error("packet before CONNECT")]
    NotConnected,
    /// A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP):
    /// a protocol violation, which closes the connection (MQTT 3.1.1 §4.8,
    /// MQTT 5 §4.13). rumqttd would ignore it, and rumqttd's MQTT 5 decoder
    /// panicked on some of them.
    #[error("{0} is a server's packet, not a client's")]
    ServerPacket(&'static str),
    /// Bad or missing credentials.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// The client certificate (mutual TLS) names no valid vehicle.
    #[error("client certificate: {0}")]
    Certificate(String),
    /// A client id the device may not use.
    #[error("client id {client_id:?} is not allowed for {who}")]
    ClientId {
        /// The client id asked for.
        client_id: String,
        /// The authenticated vehicle, or "an anonymous device".
        who: String,
    },
    /// A will the device could not publish itself.
    #[error("will topic {topic:?}: {detail}")]
    Will {
        /// The will's topic.
        topic: String,
        /// Why.
        detail: String,
    },
    /// A publish outside the device's own telemetry topics.
    #[error("device {vehicle} may not publish to {topic:?}")]
    Publish {
        /// The authenticated vehicle.
        vehicle: String,
        /// The topic.
        topic: String,
    },
    /// A subscription outside the device's own ack topic.
    #[error("device {vehicle} may not subscribe to {filter:?}")]
    Subscribe {
        /// The authenticated vehicle.
        vehicle: String,
        /// The filter.
        filter: String,
    },
    /// The credential's validity ended.
    #[error("credential of {vehicle} expired")]
    Expired {
        /// The authenticated vehicle.
        vehicle: String,
    },
}

/// What a connection speaking MQTT 5 (`v5`) or 3.1.1 sends, before it
/// closes, for a refusal that closes it: a CONNACK with a reason code for a
/// refused CONNECT; on MQTT 5 a DISCONNECT with a reason code for the
/// others; `None` (a bare close) on MQTT 3.1.1, which has no server
/// DISCONNECT. Refusals that leave the connection up (a SUBSCRIBE filter,
/// an MQTT 5 QoS 1/2 PUBLISH) are answered in their acknowledgement.
pub fn answer(refusal: &Refusal, v5: bool) -> Option<Answer> {
    let connack = |code| Some(Answer::ConnAck(code));
    match refusal {
        // MQTT 3.1.1 0x04 / MQTT 5 0x86.
        Refusal::Auth(_) => connack(ConnectReturnCode::BadUserNamePassword),
        // 0x02 Identifier rejected / 0x85 Client Identifier not valid.
        Refusal::ClientId { .. } => connack(ConnectReturnCode::ClientIdentifierNotValid),
        // 0x05 / 0x87 Not authorized.
        Refusal::Certificate(_) | Refusal::Will { .. } => connack(ConnectReturnCode::NotAuthorized),
        _ if !v5 => None,
        Refusal::SecondConnect | Refusal::NotConnected | Refusal::ServerPacket(_) => {
            Some(Answer::Disconnect(DisconnectReasonCode::ProtocolError))
        }
        // A QoS 0 publish, which has no acknowledgement to carry a reason.
        Refusal::Publish { .. } | Refusal::Subscribe { .. } => {
            Some(Answer::Disconnect(DisconnectReasonCode::NotAuthorized))
        }
        // "The maximum connection time authorized for this connection has
        // been exceeded": the session lasts as long as its token.
        Refusal::Expired { .. } => {
            Some(Answer::Disconnect(DisconnectReasonCode::MaximumConnectTime))
        }
    }
}

/// What a connection sends before it closes because fleetpipe is shutting
/// down: a CONNECT gets CONNACK Server unavailable (3.1.1 0x03, 5 0x88);
/// on MQTT 5 a connected session gets DISCONNECT 0x8B Server shutting down.
pub fn shutdown_answer(connect: bool, v5: bool) -> Option<Answer> {
    match (connect, v5) {
        (true, false) => Some(Answer::ConnAck(ConnectReturnCode::ServiceUnavailable)),
        (true, true) => Some(Answer::ConnAck(ConnectReturnCode::ServerUnavailable)),
        (false, true) => Some(Answer::Disconnect(DisconnectReasonCode::ServerShuttingDown)),
        (false, false) => None,
    }
}

/// The error that makes rumqttd close a connection, after sending `answer`.
fn closing(answer: Option<Answer>) -> Error {
    answer.map_or(Error::InvalidProtocol, Error::Refused)
}

/// The access rules of one device connection, from CONNECT on. Pure: the
/// caller passes the clock and the authenticator's verdict in.
#[derive(Debug, Clone, Default)]
pub struct ConnectionRules {
    /// `None` until CONNECT.
    session: Option<Authenticated>,
}

/// Whether `client_id` may be used by `identity`: any id but fleetpipe's
/// own (no [`RESERVED_CLIENT_ID_START`]) for an anonymous device; `{vehicle}`
/// or `{vehicle}@{suffix}` for an authenticated one. The separator is `@`
/// because vehicle ids may contain `:`, `.`, `_` and `-`, so with any of
/// those vehicle `van` could claim vehicle `van:1`'s session; `@` cannot be
/// part of a vehicle id (and rumqttd refuses `/`). An empty client id (the
/// broker assigns one) is allowed: it cannot name anyone's session.
pub fn client_id_allowed(identity: &Identity, client_id: &str) -> bool {
    if client_id.starts_with(RESERVED_CLIENT_ID_START) {
        return false;
    }
    match identity.vehicle() {
        None => true,
        Some(vehicle) => {
            client_id.is_empty()
                || client_id == vehicle.as_str()
                || client_id
                    .strip_prefix(vehicle.as_str())
                    .and_then(|rest| rest.strip_prefix(CLIENT_ID_SUFFIX_SEPARATOR))
                    .is_some_and(|suffix| !suffix.is_empty())
        }
    }
}

impl ConnectionRules {
    /// The vehicle this connection is bound to, once connected.
    pub fn vehicle(&self) -> Option<&VehicleId> {
        self.session.as_ref().and_then(|s| s.identity.vehicle())
    }

    /// Applies a CONNECT: `verdict` is the authenticator's answer for its
    /// credentials (or [`certificate_session`]'s on a mutual TLS
    /// connection), `will_topic` the topic of its will, if any.
    pub fn connect(
        &mut self,
        prefix: &str,
        client_id: &str,
        will_topic: Option<&str>,
        verdict: Result<Authenticated, Refusal>,
    ) -> Result<(), Refusal> {
        if self.session.is_some() {
            return Err(Refusal::SecondConnect);
        }
        let session = verdict?;
        if !client_id_allowed(&session.identity, client_id) {
            let who = session
                .identity
                .vehicle()
                .map_or_else(|| "an anonymous device".to_owned(), ToString::to_string);
            return Err(Refusal::ClientId {
                client_id: client_id.to_owned(),
                who,
            });
        }
        if let (Some(topic), Some(vehicle)) = (will_topic, session.identity.vehicle())
            && !publish_allowed(prefix, vehicle, topic)
        {
            return Err(Refusal::Will {
                topic: topic.to_owned(),
                detail: format!("device {vehicle} may publish only to its own telemetry topics"),
            });
        }
        self.session = Some(session);
        Ok(())
    }

    /// Checks any packet after CONNECT against the credential's expiry;
    /// `now` is asked only when the credential has one.
    pub fn check_alive(&self, now: impl FnOnce() -> SystemTime) -> Result<(), Refusal> {
        let session = self.session.as_ref().ok_or(Refusal::NotConnected)?;
        match (session.expires_at, session.identity.vehicle()) {
            (Some(expiry), Some(vehicle)) if now() >= expiry => Err(Refusal::Expired {
                vehicle: vehicle.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks a PUBLISH's topic.
    pub fn publish(&self, prefix: &str, topic: &str) -> Result<(), Refusal> {
        match self.vehicle() {
            None => Ok(()), // anonymous: no topic rules
            Some(vehicle) if publish_allowed(prefix, vehicle, topic) => Ok(()),
            Some(vehicle) => Err(Refusal::Publish {
                vehicle: vehicle.to_string(),
                topic: topic.to_owned(),
            }),
        }
    }

    /// Checks one SUBSCRIBE filter: only the device's own ack topic.
    pub fn subscribe_filter(&self, prefix: &str, filter: &str) -> Result<(), Refusal> {
        self.subscribe(prefix, std::iter::once(filter))
    }

    /// Checks a SUBSCRIBE's filters: only the device's own ack topic.
    pub fn subscribe<'a>(
        &self,
        prefix: &str,
        mut filters: impl Iterator<Item = &'a str>,
    ) -> Result<(), Refusal> {
        let Some(vehicle) = self.vehicle() else {
            return Ok(());
        };
        let own = ack_topic(prefix, vehicle.as_str());
        match filters.find(|f| *f != own) {
            None => Ok(()),
            Some(filter) => Err(Refusal::Subscribe {
                vehicle: vehicle.to_string(),
                filter: filter.to_owned(),
            }),
        }
    }
}

/// The session of a CONNECT on a mutual TLS connection: the verified client
/// certificate is the credential, and names the vehicle (`certificate`, as
/// read by [`crate::tls::certificate_vehicle`], or why it names none). The
/// CONNECT's username, when given and not empty, must be that vehicle; its
/// password is ignored. The session does not expire (a certificate's
/// validity is checked at the handshake).
pub fn certificate_session(
    certificate: Result<&VehicleId, &str>,
    username: Option<&str>,
) -> Result<Authenticated, Refusal> {
    let vehicle = certificate.map_err(|e| Refusal::Certificate(e.to_owned()))?;
    match username.filter(|u| !u.is_empty()) {
        Some(claimed) if claimed != vehicle.as_str() => {
            Err(Refusal::Auth(AuthError::WrongVehicle {
                actual: vehicle.to_string(),
                claimed: claimed.to_owned(),
            }))
        }
        _ => Ok(Authenticated {
            identity: Identity::Vehicle(vehicle.clone()),
            expires_at: None,
        }),
    }
}

/// Whether `vehicle` may publish to `topic`: its own telemetry topics only.
fn publish_allowed(prefix: &str, vehicle: &VehicleId, topic: &str) -> bool {
    parse_topic(prefix, topic).is_some_and(|t| t.vehicle == vehicle.as_str())
}

/// rumqttd codec wrapper enforcing [`ConnectionRules`] on one connection.
#[derive(Debug, Clone)]
pub(crate) struct DeviceProtocol<P> {
    inner: P,
    shared: Arc<AclShared>,
    client_id: String,
    rules: ConnectionRules,
    /// On a mutual TLS connection, the vehicle its verified client
    /// certificate names (or why it names none): the credential at CONNECT.
    certificate: Option<Result<VehicleId, String>>,
    /// MQTT 5 topic aliases the device set on publishes the rules allowed:
    /// a later publish with an empty topic and one of these aliases goes to
    /// its topic (MQTT 5 §3.3.2.3.4), which is the topic to check.
    topic_aliases: HashMap<u16, String>,
    /// The CONNECT turned keep alive off and got the server's instead,
    /// which an MQTT 5 CONNACK tells the device (Server Keep Alive).
    server_keep_alive: bool,
}

impl<P: Protocol> DeviceProtocol<P> {
    pub fn new(inner: P, shared: Arc<AclShared>) -> Self {
        Self {
            inner,
            shared,
            client_id: String::new(),
            rules: ConnectionRules::default(),
            certificate: None,
            topic_aliases: HashMap::new(),
            server_keep_alive: false,
        }
    }

    /// This codec for a connection authenticated by a client certificate.
    pub fn with_certificate(mut self, certificate: Result<VehicleId, String>) -> Self {
        self.certificate = Some(certificate);
        self
    }

    /// Logs and counts a refusal that closes the connection; returns the
    /// error that makes rumqttd close it after sending [`answer`].
    fn refuse(&self, kind: &'static str, refusal: &Refusal) -> Error {
        tracing::warn!(client_id = %self.client_id, kind, reason = %refusal, "MQTT packet refused, closing connection");
        crate::metrics::mqtt_refused(kind);
        closing(answer(refusal, self.inner.is_v5()))
    }

    /// Logs and counts a refusal answered in its acknowledgement, the
    /// connection staying up.
    fn refuse_in_ack(&self, kind: &'static str, refusal: &Refusal) {
        tracing::warn!(client_id = %self.client_id, kind, reason = %refusal, "MQTT packet refused with a reason code");
        crate::metrics::mqtt_refused(kind);
    }

    /// Dead-letters a refused publish (it was never acknowledged).
    fn record_refused_publish(&self, topic: &str, payload: Bytes, refusal: &Refusal) {
        let refused = RefusedPublish {
            client_id: self.client_id.clone(),
            vehicle: self.rules.vehicle().cloned(),
            topic: topic.to_owned(),
            payload,
            detail: refusal.to_string(),
        };
        if self.shared.refused.try_send(refused).is_err() {
            // The device still holds the publish (it was never acknowledged).
            crate::metrics::mqtt_refused_not_recorded();
        }
    }

    /// Applies the rules to `packet`: an error closes the connection (after
    /// its answer); a refused MQTT 5 QoS 1/2 publish or SUBSCRIBE filter is
    /// marked refused, for rumqttd to answer in its acknowledgement.
    fn check(&mut self, packet: &mut Packet) -> Result<(), Error> {
        let v5 = self.inner.is_v5();
        if self.shared.closing.load(Ordering::Relaxed) {
            let connect = matches!(packet, Packet::Connect(..));
            return Err(closing(shutdown_answer(connect, v5)));
        }
        let prefix = self.shared.prefix.as_str();
        if let Packet::Connect(connect, _, will, _, login) = packet {
            if self.rules.session.is_none() {
                self.client_id.clone_from(&connect.client_id);
            }
            let (user, pass) = login.as_ref().map_or((None, None), |l| {
                (Some(l.username.as_str()), Some(l.password.as_str()))
            });
            let verdict = match &self.certificate {
                Some(certificate) => {
                    certificate_session(certificate.as_ref().map_err(String::as_str), user)
                }
                None => self
                    .shared
                    .auth
                    .authenticate_session(pass, user)
                    .map_err(Refusal::from),
            };
            if verdict.is_err() {
                crate::metrics::rejected(
                    fleetpipe_model::RejectReason::Unauthorized,
                    fleetpipe_model::Gateway::Mqtt,
                );
            }
            let will_topic = will.as_ref().map(|w| String::from_utf8_lossy(&w.topic));
            return self
                .rules
                .connect(prefix, &connect.client_id, will_topic.as_deref(), verdict)
                .map_err(|r| self.refuse("connect", &r));
        }
        self.rules
            .check_alive(SystemTime::now)
            .map_err(|r| self.refuse("expired", &r))?;
        match packet {
            Packet::Publish(publish, properties) => {
                let alias = properties.as_ref().and_then(|p| p.topic_alias);
                let topic = match alias {
                    Some(alias) if publish.topic.is_empty() => {
                        match self.topic_aliases.get(&alias) {
                            Some(topic) => topic.clone(),
                            // Not set (or set by a refused publish): rumqttd
                            // closes the connection (protocol error).
                            None => return Ok(()),
                        }
                    }
                    _ => String::from_utf8_lossy(&publish.topic).into_owned(),
                };
                let verdict = self.rules.publish(prefix, &topic);
                if let (Ok(()), Some(alias)) = (&verdict, alias)
                    && !publish.topic.is_empty()
                    && (1..=MAX_TOPIC_ALIAS).contains(&alias)
                {
                    self.topic_aliases.insert(alias, topic.clone());
                }
                if let Err(refusal) = verdict {
                    self.record_refused_publish(&topic, publish.payload.clone(), &refusal);
                    // MQTT 5 §3.4.2.1: PUBACK 0x87 names the one message
                    // refused, and the device's other publishes go on.
                    if v5 && publish.qos() != QoS::AtMostOnce {
                        self.refuse_in_ack("publish", &refusal);
                        publish.refuse(PubAckReason::NotAuthorized);
                    } else {
                        return Err(self.refuse("publish", &refusal));
                    }
                }
            }
            Packet::Subscribe(subscribe, _) => {
                // Each filter on its own: the SUBACK answers each.
                for filter in &mut subscribe.filters {
                    // QoS 2 is not part of the wire contract: granted QoS 1
                    // (the SUBACK says so; MQTT 3.1.1 and 5 §3.9.3).
                    if filter.qos == QoS::ExactlyOnce {
                        filter.qos = QoS::AtLeastOnce;
                    }
                    if let Err(refusal) = self.rules.subscribe_filter(prefix, &filter.path) {
                        self.refuse_in_ack("subscribe", &refusal);
                        filter.refused = Some(if v5 {
                            SubscribeReasonCode::NotAuthorized
                        } else {
                            SubscribeReasonCode::Failure
                        });
                    }
                }
            }
            Packet::ConnAck(..) => {
                return Err(self.refuse("protocol", &Refusal::ServerPacket("CONNACK")));
            }
            Packet::SubAck(..) => {
                return Err(self.refuse("protocol", &Refusal::ServerPacket("SUBACK")));
            }
            Packet::UnsubAck(..) => {
                return Err(self.refuse("protocol", &Refusal::ServerPacket("UNSUBACK")));
            }
            Packet::PingResp(..) => {
                return Err(self.refuse("protocol", &Refusal::ServerPacket("PINGRESP")));
            }
            _ => {}
        }
        Ok(())
    }
}

impl<P: Protocol> Protocol for DeviceProtocol<P> {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        let mut packet = self.inner.read_mut(stream, max_size)?;
        self.check(&mut packet)?;
        // Keep alive 0 turns MQTT's keep alive off: the device may stay
        // silent for ever, and so would a dead connection. It gets the
        // server's keep alive instead (MQTT 3.1.1 §3.1.2.10 and MQTT 5
        // §3.1.2.10 let a server close an inactive client at any time;
        // MQTT 5 §3.2.2.3.14 lets it tell the client so). rumqttd itself
        // refuses keep alive 0, without a CONNACK.
        if let Packet::Connect(connect, ..) = &mut packet
            && connect.keep_alive == 0
        {
            connect.keep_alive = self.shared.server_keep_alive;
            self.server_keep_alive = true;
        }
        Ok(packet)
    }

    fn is_v5(&self) -> bool {
        self.inner.is_v5()
    }

    fn write(&self, mut packet: Packet, write: &mut BytesMut) -> Result<usize, Error> {
        // MQTT 3.1.1's CONNACK has no properties: V4 leaves them out.
        if let Packet::ConnAck(ack, properties) = &mut packet
            && self.server_keep_alive
            && ack.code == ConnectReturnCode::Success
        {
            properties
                .get_or_insert_with(Default::default)
                .server_keep_alive = Some(self.shared.server_keep_alive);
        }
        self.inner.write(packet, write)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn vehicle(id: &str) -> Authenticated {
        Authenticated {
            identity: Identity::Vehicle(VehicleId::parse(id).expect("valid id")),
            expires_at: None,
        }
    }

    fn anonymous() -> Authenticated {
        Authenticated {
            identity: Identity::Anonymous,
            expires_at: None,
        }
    }

    #[test]
    fn a_refusal_that_closes_the_connection_is_answered_with_its_reason_code() {
        let auth = Refusal::Auth(AuthError::Missing);
        let client_id = Refusal::ClientId {
            client_id: "van-2".into(),
            who: "van-1".into(),
        };
        let will = Refusal::Will {
            topic: "t".into(),
            detail: "d".into(),
        };
        let publish = Refusal::Publish {
            vehicle: "van-1".into(),
            topic: "t".into(),
        };
        let expired = Refusal::Expired {
            vehicle: "van-1".into(),
        };
        for v5 in [false, true] {
            assert_eq!(
                answer(&auth, v5),
                Some(Answer::ConnAck(ConnectReturnCode::BadUserNamePassword))
            );
            assert_eq!(
                answer(&client_id, v5),
                Some(Answer::ConnAck(ConnectReturnCode::ClientIdentifierNotValid))
            );
            for r in [&will, &Refusal::Certificate("no name".into())] {
                assert_eq!(
                    answer(r, v5),
                    Some(Answer::ConnAck(ConnectReturnCode::NotAuthorized))
                );
            }
        }
        // MQTT 3.1.1 has no server DISCONNECT: a bare close.
        for r in [&publish, &expired, &Refusal::SecondConnect] {
            assert_eq!(answer(r, false), None);
        }
        let disconnect = |r| answer(r, true).map(|a| a.packet());
        let reason = |code| {
            Some(Packet::Disconnect(
                rumqttd::protocol::Disconnect { reason_code: code },
                None,
            ))
        };
        assert_eq!(
            disconnect(&publish),
            reason(DisconnectReasonCode::NotAuthorized)
        );
        assert_eq!(
            disconnect(&expired),
            reason(DisconnectReasonCode::MaximumConnectTime)
        );
        for r in [&Refusal::SecondConnect, &Refusal::ServerPacket("SUBACK")] {
            assert_eq!(disconnect(r), reason(DisconnectReasonCode::ProtocolError));
            assert_eq!(answer(r, false), None);
        }
        assert_eq!(
            shutdown_answer(true, false),
            Some(Answer::ConnAck(ConnectReturnCode::ServiceUnavailable))
        );
        assert_eq!(
            shutdown_answer(true, true),
            Some(Answer::ConnAck(ConnectReturnCode::ServerUnavailable))
        );
        assert_eq!(
            shutdown_answer(false, true),
            Some(Answer::Disconnect(DisconnectReasonCode::ServerShuttingDown))
        );
        assert_eq!(shutdown_answer(false, false), None);
    }

    #[test]
    fn client_ids_are_bound_to_the_vehicle() {
        let van = vehicle("van:1").identity;
        for ok in ["van:1", "van:1@phone", "van:1@a@b", ""] {
            assert!(client_id_allowed(&van, ok), "{ok:?}");
        }
        for refused in [
            "van",
            "van:1@",
            "van:10",
            "van:1:x",
            "van:2",
            INTERNAL_CLIENT_ID,
        ] {
            assert!(!client_id_allowed(&van, refused), "{refused:?}");
        }
        // Vehicle `van` cannot claim vehicle `van:1`'s session.
        assert!(!client_id_allowed(&vehicle("van").identity, "van:1"));
        let anon = anonymous().identity;
        assert!(client_id_allowed(&anon, "anything"));
        assert!(!client_id_allowed(&anon, INTERNAL_CLIENT_ID));
        assert!(!client_id_allowed(&anon, "!other"));
    }

    #[test]
    fn one_connect_per_connection_with_valid_credentials() {
        let mut rules = ConnectionRules::default();
        assert_eq!(
            rules.check_alive(SystemTime::now),
            Err(Refusal::NotConnected)
        );
        assert_eq!(
            rules.connect("fleet", "van-1", None, Err(AuthError::Missing.into())),
            Err(Refusal::Auth(AuthError::Missing))
        );
        assert_eq!(
            rules.connect("fleet", "van-1", None, Ok(vehicle("van-1"))),
            Ok(())
        );
        assert_eq!(
            rules.connect("fleet", "van-1", None, Ok(vehicle("van-1"))),
            Err(Refusal::SecondConnect)
        );
        assert_eq!(
            rules.connect("fleet", "x", None, Ok(anonymous())),
            Err(Refusal::SecondConnect),
            "a second CONNECT never replaces the first identity"
        );
        assert_eq!(rules.vehicle().map(VehicleId::as_str), Some("van-1"));
    }

    #[test]
    fn a_client_certificate_is_the_credential_and_names_the_vehicle() {
        let van = VehicleId::parse("van-1").expect("valid id");
        for username in [None, Some(""), Some("van-1")] {
            let session = certificate_session(Ok(&van), username).expect("own vehicle");
            assert_eq!(session.identity.vehicle(), Some(&van));
            assert_eq!(session.expires_at, None);
        }
        assert!(matches!(
            certificate_session(Ok(&van), Some("van-2")),
            Err(Refusal::Auth(AuthError::WrongVehicle { .. }))
        ));
        assert_eq!(
            certificate_session(Err("no name"), Some("van-1")),
            Err(Refusal::Certificate("no name".into()))
        );
        // The client id and topic rules then apply to the certificate's vehicle.
        let mut rules = ConnectionRules::default();
        assert!(matches!(
            rules
                .clone()
                .connect("fleet", "van-2", None, certificate_session(Ok(&van), None)),
            Err(Refusal::ClientId { .. })
        ));
        rules
            .connect(
                "fleet",
                "van-1@x",
                None,
                certificate_session(Ok(&van), None),
            )
            .expect("own client id");
        assert!(rules.publish("fleet", "fleet/van-1/telemetry").is_ok());
        assert!(rules.publish("fleet", "fleet/van-2/telemetry").is_err());
    }

    #[test]
    fn topics_wills_and_expiry() {
        let mut rules = ConnectionRules::default();
        assert!(matches!(
            rules.clone().connect(
                "fleet",
                "van-1",
                Some("fleet/van-2/telemetry"),
                Ok(vehicle("van-1"))
            ),
            Err(Refusal::Will { .. })
        ));
        let mut session = vehicle("van-1");
        session.expires_at = Some(UNIX_EPOCH + Duration::from_secs(100));
        rules
            .connect(
                "fleet",
                "van-1",
                Some("fleet/van-1/telemetry/pb"),
                Ok(session),
            )
            .expect("own will");
        assert!(rules.publish("fleet", "fleet/van-1/telemetry").is_ok());
        assert!(rules.publish("fleet", "fleet/van-1/telemetry/pb").is_ok());
        for topic in [
            "fleet/van-2/telemetry",
            "fleet/van-1/ack",
            "fleet/van-1",
            "x/van-1/telemetry",
        ] {
            assert!(rules.publish("fleet", topic).is_err(), "{topic}");
        }
        assert!(
            rules
                .subscribe("fleet", ["fleet/van-1/ack"].into_iter())
                .is_ok()
        );
        for filter in [
            "fleet/#",
            "fleet/+/ack",
            "fleet/van-1/#",
            "fleet/van-1/+",
            "$SYS/#",
        ] {
            assert!(
                rules
                    .subscribe("fleet", ["fleet/van-1/ack", filter].into_iter())
                    .is_err(),
                "{filter}"
            );
        }
        let before = || UNIX_EPOCH + Duration::from_secs(99);
        let at = || UNIX_EPOCH + Duration::from_secs(100);
        assert!(rules.check_alive(before).is_ok());
        assert!(matches!(
            rules.check_alive(at),
            Err(Refusal::Expired { .. })
        ));
    }
}
