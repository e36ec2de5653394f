//! `ingest.mqtt.tls`: the embedded broker's TLS listeners. The TLS itself
//! (files, reload, handshake, device certificates) is [`crate::tls`], shared
//! with the HTTP gateway; this is only what is MQTT's own, its listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::tls::{TlsConfig, default_reload_interval};

/// `ingest.mqtt.tls`: TLS listeners of the embedded broker, in addition to
/// the plaintext ones (`ingest.mqtt.listen` / `listen_v5`, which can be
/// turned `"off"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) for device certificates. When set, every TLS
    /// client must present a certificate issued by one of them, and the
    /// device is authenticated by it (mutual TLS): the certificate's first
    /// DNS subject alternative name, else its subject common name, is the
    /// vehicle id. Unset: no client certificates; devices authenticate as
    /// on the plaintext listeners (`ingest.auth`).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// MQTT 3.1.1 over TLS listener; `"off"` disables it.
    #[serde(default = "default_listen", deserialize_with = "super::address_or_off")]
    pub listen: Option<SocketAddr>,
    /// MQTT 5 over TLS listener; `"off"` disables it.
    #[serde(
        default = "default_listen_v5",
        deserialize_with = "super::address_or_off"
    )]
    pub listen_v5: Option<SocketAddr>,
    /// How often the three files are read again; a change in any of them
    /// (by content) loads a new TLS configuration for new connections.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([0, 0, 0, 0], 8883)))
}

fn default_listen_v5() -> Option<SocketAddr> {
    Some(SocketAddr::from(([0, 0, 0, 0], 8884)))
}

impl MqttTlsConfig {
    /// A configuration with these files and the default listeners.
    pub fn new(cert_file: PathBuf, key_file: PathBuf, client_ca_file: Option<PathBuf>) -> Self {
        Self {
            cert_file,
            key_file,
            client_ca_file,
            listen: default_listen(),
            listen_v5: default_listen_v5(),
            reload_interval: default_reload_interval(),
        }
    }

    /// The files and their reload interval, as [`crate::tls::ServerTls`]
    /// loads them (with [`crate::tls::TlsGateway::Mqtt`]).
    pub fn files(&self) -> TlsConfig {
        TlsConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
            reload_interval: self.reload_interval,
        }
    }
}
