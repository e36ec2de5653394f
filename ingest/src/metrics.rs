//! The metrics of ingest (gateways, MQTT, HTTP listeners, TLS, JWKS),
//! declared once: [`ALL`] lists each one's name, kind, unit, help text and
//! labels; [`describe`] registers them, and ingest records them only
//! through the functions and handles below.

use fleetpipe_model::metrics::{Kind, Metric, Unit};
use fleetpipe_model::{Gateway, RejectReason};
use metrics::{Counter, Gauge, counter, gauge};

use crate::tls::TlsGateway;

/// Counter, labels `reason`, `gateway`: pings or messages dead-lettered.
pub const REJECTED_TOTAL: &str = "fleetpipe_rejected_total";
/// Counter, label `gateway`: messages received.
pub const INGEST_MESSAGES_TOTAL: &str = "fleetpipe_ingest_messages_total";
/// Counter, label `gateway`: pings accepted.
pub const INGEST_PINGS_TOTAL: &str = "fleetpipe_ingest_pings_total";
/// Counter, label `gateway`: payload bytes received.
pub const INGEST_BYTES_TOTAL: &str = "fleetpipe_ingest_bytes_total";
/// Counter: new JWKS file contents loaded.
pub const JWKS_RELOADS_TOTAL: &str = "fleetpipe_auth_jwks_reloads_total";
/// Counter: failed JWKS reloads.
pub const JWKS_RELOAD_ERRORS_TOTAL: &str = "fleetpipe_auth_jwks_reload_errors_total";
/// Counter, label `reason`: MQTT connections closed at once.
pub const MQTT_CONNECTIONS_REFUSED_TOTAL: &str = "fleetpipe_mqtt_connections_refused_total";
/// Counter, label `listener`: MQTT connection tasks that panicked.
pub const MQTT_CONNECTION_PANICS_TOTAL: &str = "fleetpipe_mqtt_connection_panics_total";
/// Counter, label `kind`: MQTT packets refused by the ACL.
pub const MQTT_REFUSED_TOTAL: &str = "fleetpipe_mqtt_refused_total";
/// Counter: refused publishes the dead-letter queue had no room for.
pub const MQTT_REFUSED_NOT_RECORDED_TOTAL: &str = "fleetpipe_mqtt_refused_not_recorded_total";
/// Counter: MQTT acknowledgements withheld (the message was not durable).
pub const MQTT_ACK_WITHHELD_TOTAL: &str = "fleetpipe_mqtt_ack_withheld_total";
/// Counter: acknowledgement publishes deferred (broker queue full).
pub const MQTT_ACK_PUBLISH_DEFERRED_TOTAL: &str = "fleetpipe_mqtt_ack_publish_deferred_total";
/// Counter: acknowledgement publishes that failed.
pub const MQTT_ACK_PUBLISH_ERRORS_TOTAL: &str = "fleetpipe_mqtt_ack_publish_errors_total";
/// Counter, label `reason`: external-broker publishes left unacknowledged.
pub const MQTT_UNACKED_TOTAL: &str = "fleetpipe_mqtt_unacked_total";
/// Counter: failed connections to the external broker.
pub const MQTT_CONNECTION_ERRORS_TOTAL: &str = "fleetpipe_mqtt_connection_errors_total";
/// Counter, label `reason`: MQTT TLS handshakes that failed.
pub const MQTT_TLS_HANDSHAKE_FAILURES_TOTAL: &str = "fleetpipe_mqtt_tls_handshake_failures_total";
/// Counter: new MQTT TLS files loaded.
pub const MQTT_TLS_RELOADS_TOTAL: &str = "fleetpipe_mqtt_tls_reloads_total";
/// Counter: failed MQTT TLS reloads.
pub const MQTT_TLS_RELOAD_ERRORS_TOTAL: &str = "fleetpipe_mqtt_tls_reload_errors_total";
/// Counter, label `reason`: HTTP TLS handshakes that failed.
pub const HTTP_TLS_HANDSHAKE_FAILURES_TOTAL: &str = "fleetpipe_http_tls_handshake_failures_total";
/// Counter: new HTTP TLS files loaded.
pub const HTTP_TLS_RELOADS_TOTAL: &str = "fleetpipe_http_tls_reloads_total";
/// Counter: failed HTTP TLS reloads.
pub const HTTP_TLS_RELOAD_ERRORS_TOTAL: &str = "fleetpipe_http_tls_reload_errors_total";
/// Gauge, label `listener`: open HTTP connections.
pub const HTTP_CONNECTIONS: &str = "fleetpipe_http_connections";
/// Counter, label `listener`: connections refused at `max_connections`.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "fleetpipe_http_connections_refused_total";
/// Counter, labels `listener`, `kind`: connections closed for a timeout.
pub const HTTP_TIMEOUTS_TOTAL: &str = "fleetpipe_http_timeouts_total";
/// Gauge: open WebSocket sessions.
pub const WS_SESSIONS: &str = "fleetpipe_ws_sessions";

/// A counter without labels.
const fn count(name: &'static str, description: &'static str) -> Metric {
    labelled(name, Kind::Counter, description, &[])
}

/// A metric counted in units of [`Unit::Count`].
const fn labelled(
    name: &'static str,
    kind: Kind,
    description: &'static str,
    labels: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind,
        unit: Unit::Count,
        description,
        labels,
    }
}

/// Every metric of ingest.
pub const ALL: [Metric; 25] = [
    labelled(
        REJECTED_TOTAL,
        Kind::Counter,
        "Pings or messages refused and dead-lettered, by reason code and gateway",
        &["reason", "gateway"],
    ),
    labelled(
        INGEST_MESSAGES_TOTAL,
        Kind::Counter,
        "Messages received, by gateway",
        &["gateway"],
    ),
    labelled(
        INGEST_PINGS_TOTAL,
        Kind::Counter,
        "Pings accepted, by gateway",
        &["gateway"],
    ),
    Metric {
        name: INGEST_BYTES_TOTAL,
        kind: Kind::Counter,
        unit: Unit::Bytes,
        description: "Payload bytes received, by gateway",
        labels: &["gateway"],
    },
    count(
        JWKS_RELOADS_TOTAL,
        "New contents of ingest.auth.jwks_file loaded at run time",
    ),
    count(
        JWKS_RELOAD_ERRORS_TOTAL,
        "Failed reloads of ingest.auth.jwks_file (unreadable, not a JWKS, no usable key); the previous keys stay",
    ),
    labelled(
        MQTT_CONNECTIONS_REFUSED_TOTAL,
        Kind::Counter,
        "MQTT connections closed at once by the embedded broker, by reason (max_connections)",
        &["reason"],
    ),
    labelled(
        MQTT_CONNECTION_PANICS_TOTAL,
        Kind::Counter,
        "Embedded-broker connection tasks that panicked, by listener (the connection is closed; others go on). Should stay 0: report it",
        &["listener"],
    ),
    labelled(
        MQTT_REFUSED_TOTAL,
        Kind::Counter,
        "MQTT packets the embedded broker refused, by kind (connect, expired, publish, subscribe, protocol)",
        &["kind"],
    ),
    count(
        MQTT_REFUSED_NOT_RECORDED_TOTAL,
        "Refused MQTT publishes not dead-lettered because the queue was full (the device still holds them)",
    ),
    count(
        MQTT_ACK_WITHHELD_TOTAL,
        "MQTT messages whose acknowledgement was withheld because they were not stored durably",
    ),
    count(
        MQTT_ACK_PUBLISH_DEFERRED_TOTAL,
        "MQTT acknowledgements not published at once because the broker's queue was full (published again later)",
    ),
    count(
        MQTT_ACK_PUBLISH_ERRORS_TOTAL,
        "MQTT acknowledgements that could not be published",
    ),
    labelled(
        MQTT_UNACKED_TOTAL,
        Kind::Counter,
        "External-broker publishes left unacknowledged for redelivery, by reason (not_durable)",
        &["reason"],
    ),
    count(
        MQTT_CONNECTION_ERRORS_TOTAL,
        "Failed connections to the external MQTT broker (each is retried)",
    ),
    labelled(
        MQTT_TLS_HANDSHAKE_FAILURES_TOTAL,
        Kind::Counter,
        "MQTT TLS handshakes that failed, by reason (error: refused or broken, for example no or an untrusted client certificate; timeout: none within ingest.mqtt.connect_timeout)",
        &["reason"],
    ),
    count(
        MQTT_TLS_RELOADS_TOTAL,
        "New contents of the ingest.mqtt.tls certificate, key or client CA files loaded at run time",
    ),
    count(
        MQTT_TLS_RELOAD_ERRORS_TOTAL,
        "Failed reloads of the ingest.mqtt.tls files (unreadable, not PEM, key not matching the certificate); the previous configuration stays",
    ),
    labelled(
        HTTP_TLS_HANDSHAKE_FAILURES_TOTAL,
        Kind::Counter,
        "HTTP TLS handshakes that failed, by reason (error: refused or broken, for example no or an untrusted client certificate; timeout: none within ingest.http.header_read_timeout)",
        &["reason"],
    ),
    count(
        HTTP_TLS_RELOADS_TOTAL,
        "New contents of the ingest.http.tls certificate, key or client CA files loaded at run time",
    ),
    count(
        HTTP_TLS_RELOAD_ERRORS_TOTAL,
        "Failed reloads of the ingest.http.tls files (unreadable, not PEM, key not matching the certificate); the previous configuration stays",
    ),
    labelled(
        HTTP_CONNECTIONS,
        Kind::Gauge,
        "Open connections (WebSocket sessions included), by listener",
        &["listener"],
    ),
    labelled(
        HTTP_CONNECTIONS_REFUSED_TOTAL,
        Kind::Counter,
        "Connections closed at once because the listener was at max_connections, by listener",
        &["listener"],
    ),
    labelled(
        HTTP_TIMEOUTS_TOTAL,
        Kind::Counter,
        "Connections closed for a timeout, by listener and kind (idle, header, body, ws_idle, write: the peer took no bytes)",
        &["listener", "kind"],
    ),
    labelled(WS_SESSIONS, Kind::Gauge, "Open WebSocket sessions", &[]),
];

/// Registers the help texts and units, and every `fleetpipe_rejected_total`
/// series at zero, so dashboards and alerts see the full set from the start.
pub fn describe() {
    fleetpipe_model::metrics::describe(&ALL);
    for gateway in Gateway::ALL {
        for reason in RejectReason::ALL {
            counter!(REJECTED_TOTAL, "reason" => reason.as_str(), "gateway" => gateway.as_str())
                .increment(0);
        }
    }
}

/// The counters every message of one gateway updates, registered once: a
/// `counter!` with labels looks its series up in the registry on every call.
#[derive(Debug)]
pub(crate) struct GatewayCounters {
    /// [`INGEST_MESSAGES_TOTAL`].
    pub(crate) messages: Counter,
    /// [`INGEST_BYTES_TOTAL`].
    pub(crate) bytes: Counter,
    /// [`INGEST_PINGS_TOTAL`].
    pub(crate) pings: Counter,
}

impl GatewayCounters {
    /// The counters of `gateway`.
    pub(crate) fn new(gateway: Gateway) -> Self {
        let gateway = gateway.as_str();
        Self {
            messages: counter!(INGEST_MESSAGES_TOTAL, "gateway" => gateway),
            bytes: counter!(INGEST_BYTES_TOTAL, "gateway" => gateway),
            pings: counter!(INGEST_PINGS_TOTAL, "gateway" => gateway),
        }
    }
}

/// Something from `gateway` was refused for `reason` (and dead-lettered,
/// or answered with an error).
pub(crate) fn rejected(reason: RejectReason, gateway: Gateway) {
    counter!(REJECTED_TOTAL, "reason" => reason.as_str(), "gateway" => gateway.as_str())
        .increment(1);
}

/// The JWKS file was reloaded.
pub(crate) fn jwks_reloaded() {
    counter!(JWKS_RELOADS_TOTAL).increment(1);
}

/// A JWKS reload failed.
pub(crate) fn jwks_reload_failed() {
    counter!(JWKS_RELOAD_ERRORS_TOTAL).increment(1);
}

/// The embedded broker closed a connection at once, for `reason`.
pub(crate) fn mqtt_connection_refused(reason: &'static str) {
    counter!(MQTT_CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// A connection's task on `listener` panicked.
pub(crate) fn mqtt_connection_panicked(listener: &'static str) {
    counter!(MQTT_CONNECTION_PANICS_TOTAL, "listener" => listener).increment(1);
}

/// The embedded broker refused a packet of `kind`.
pub(crate) fn mqtt_refused(kind: &'static str) {
    counter!(MQTT_REFUSED_TOTAL, "kind" => kind).increment(1);
}

/// A refused publish could not be dead-lettered.
pub(crate) fn mqtt_refused_not_recorded() {
    counter!(MQTT_REFUSED_NOT_RECORDED_TOTAL).increment(1);
}

/// `acks` acknowledgements were withheld.
pub(crate) fn mqtt_acks_withheld(acks: usize) {
    counter!(MQTT_ACK_WITHHELD_TOTAL).increment(acks as u64);
}

/// An acknowledgement publish was deferred.
pub(crate) fn mqtt_ack_publish_deferred() {
    counter!(MQTT_ACK_PUBLISH_DEFERRED_TOTAL).increment(1);
}

/// An acknowledgement publish failed.
pub(crate) fn mqtt_ack_publish_failed() {
    counter!(MQTT_ACK_PUBLISH_ERRORS_TOTAL).increment(1);
}

/// An external-broker publish was left unacknowledged, for `reason`.
pub(crate) fn mqtt_unacked(reason: &'static str) {
    counter!(MQTT_UNACKED_TOTAL, "reason" => reason).increment(1);
}

/// A connection to the external broker failed.
pub(crate) fn mqtt_connection_failed() {
    counter!(MQTT_CONNECTION_ERRORS_TOTAL).increment(1);
}

/// A TLS handshake on `gateway`'s listener failed, for `reason`.
pub(crate) fn tls_handshake_failed(gateway: TlsGateway, reason: &'static str) {
    let name = match gateway {
        TlsGateway::Mqtt => MQTT_TLS_HANDSHAKE_FAILURES_TOTAL,
        TlsGateway::Http => HTTP_TLS_HANDSHAKE_FAILURES_TOTAL,
    };
    counter!(name, "reason" => reason).increment(1);
}

/// `gateway`'s TLS files were reloaded.
pub(crate) fn tls_reloaded(gateway: TlsGateway) {
    let name = match gateway {
        TlsGateway::Mqtt => MQTT_TLS_RELOADS_TOTAL,
        TlsGateway::Http => HTTP_TLS_RELOADS_TOTAL,
    };
    counter!(name).increment(1);
}

/// A reload of `gateway`'s TLS files failed.
pub(crate) fn tls_reload_failed(gateway: TlsGateway) {
    let name = match gateway {
        TlsGateway::Mqtt => MQTT_TLS_RELOAD_ERRORS_TOTAL,
        TlsGateway::Http => HTTP_TLS_RELOAD_ERRORS_TOTAL,
    };
    counter!(name).increment(1);
}

/// The handle of `listener`'s [`HTTP_CONNECTIONS`].
pub(crate) fn http_connections(listener: &'static str) -> Gauge {
    gauge!(HTTP_CONNECTIONS, "listener" => listener)
}

/// The handle of `listener`'s [`HTTP_CONNECTIONS_REFUSED_TOTAL`].
pub(crate) fn http_connections_refused(listener: &'static str) -> Counter {
    counter!(HTTP_CONNECTIONS_REFUSED_TOTAL, "listener" => listener)
}

/// `listener` closed a connection for a timeout of `kind`.
pub(crate) fn http_timed_out(listener: &'static str, kind: &'static str) {
    counter!(HTTP_TIMEOUTS_TOTAL, "listener" => listener, "kind" => kind).increment(1);
}

/// A WebSocket session opened.
pub(crate) fn ws_session_opened() {
    gauge!(WS_SESSIONS).increment(1.0);
}

/// A WebSocket session closed.
pub(crate) fn ws_session_closed() {
    gauge!(WS_SESSIONS).decrement(1.0);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use fleetpipe_model::metrics::recorded;
    use metrics_util::debugging::DebuggingRecorder;

    use super::*;

    #[test]
    fn every_metric_is_described_and_recorded_under_its_declared_name_and_labels() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let counters = GatewayCounters::new(Gateway::Mqtt);
            counters.messages.increment(1);
            counters.bytes.increment(10);
            counters.pings.increment(1);
            jwks_reloaded();
            jwks_reload_failed();
            mqtt_connection_refused("max_connections");
            mqtt_connection_panicked("mqtt");
            mqtt_refused("publish");
            mqtt_refused_not_recorded();
            mqtt_acks_withheld(2);
            mqtt_ack_publish_deferred();
            mqtt_ack_publish_failed();
            mqtt_unacked("not_durable");
            mqtt_connection_failed();
            for gateway in [TlsGateway::Mqtt, TlsGateway::Http] {
                tls_handshake_failed(gateway, "timeout");
                tls_reloaded(gateway);
                tls_reload_failed(gateway);
            }
            http_connections("device").increment(1.0);
            http_connections_refused("ops").increment(1);
            http_timed_out("device", "body");
            ws_session_opened();
        });
        let snapshot = snapshotter.snapshot().into_vec();
        for metric in ALL {
            recorded(&metric, &snapshot);
        }
        // describe() registers every rejection series, at zero until counted.
        let rejected = snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == REJECTED_TOTAL)
            .count();
        assert_eq!(rejected, Gateway::ALL.len() * RejectReason::ALL.len());
    }
}
