//! TLS on the devices' listeners (the embedded broker's MQTT listeners and
//! the HTTP gateway), and device certificates: one implementation for both
//! gateways, which differ only in the [`TlsGateway`] they pass (config
//! section in messages, ALPN, metric names).
//!
//! Each gateway accepts its connections itself and runs the rustls
//! handshake in the connection's own task ([`ServerTls::handshake`]), bounded
//! by a timeout, so a client that never sends its ClientHello holds up
//! nobody else. Each handshake takes the current [`ServerConfig`] from an
//! [`ArcSwap`]; [`ServerTls::watch`] re-reads the certificate, key and client
//! CA files and swaps a new config in when their content changes (a set of
//! files that does not load is logged and counted, and the previous config
//! stays).
//!
//! With `client_ca_file` set, every client must present a certificate that
//! chains to one of its CAs (rustls' `WebPkiClientVerifier`), and the
//! certificate names the device's vehicle: its first DNS subject
//! alternative name if it has one, else its subject common name
//! ([`certificate_vehicle`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use fleetpipe_model::VehicleId;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Largest certificate, key or CA file read, bytes.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The gateway a [`ServerTls`] serves: where its keys are in the
/// configuration, what it negotiates, and which of the TLS metrics in
/// [`crate::metrics`] it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsGateway {
    /// The embedded broker's TLS listeners (`ingest.mqtt.tls`).
    Mqtt,
    /// The HTTP gateway (`ingest.http.tls`): HTTPS and WSS.
    Http,
}

impl TlsGateway {
    /// The configuration table, e.g. `ingest.mqtt.tls`.
    pub fn section(self) -> &'static str {
        match self {
            TlsGateway::Mqtt => "ingest.mqtt.tls",
            TlsGateway::Http => "ingest.http.tls",
        }
    }

    /// The ALPN protocols offered. MQTT needs none (and the broker never
    /// asked for one, so none stays). HTTP offers `http/1.1` only: the
    /// listener speaks HTTP/1.1 (WebSocket upgrades included), not h2.
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            TlsGateway::Mqtt => Vec::new(),
            TlsGateway::Http => vec![b"http/1.1".to_vec()],
        }
    }
}

/// The files of a TLS listener: `ingest.http.tls`, and the file keys of
/// `ingest.mqtt.tls` (see [`crate::mqtt::MqttTlsConfig::files`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) for device certificates. When set, every TLS
    /// client must present a certificate issued by one of them, and the
    /// device is authenticated by it (mutual TLS): the certificate's first
    /// DNS subject alternative name, else its subject common name, is the
    /// vehicle id. Unset: no client certificates; devices authenticate as
    /// set in `ingest.auth`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the three files are read again; a change in any of them
    /// (by content) loads a new TLS configuration for new connections.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// Default of every `reload_interval` of TLS files.
pub(crate) fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

impl TlsConfig {
    /// These files, re-read every 5 s (the default).
    pub fn new(cert_file: PathBuf, key_file: PathBuf, client_ca_file: Option<PathBuf>) -> Self {
        Self {
            cert_file,
            key_file,
            client_ca_file,
            reload_interval: default_reload_interval(),
        }
    }
}

/// Why the TLS files do not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// One file cannot be read or holds nothing usable.
    #[error("{key} = {path}: {detail}")]
    File {
        /// Config key of the file, e.g. `ingest.http.tls.cert_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The files load but do not make a TLS configuration (for example the
    /// key does not belong to the certificate).
    #[error("{section}: {detail}")]
    Config {
        /// The configuration table, e.g. `ingest.mqtt.tls`.
        section: &'static str,
        /// Why.
        detail: String,
    },
    /// `reload_interval` is zero.
    #[error("{section}.reload_interval must be more than 0")]
    ReloadInterval {
        /// The configuration table.
        section: &'static str,
    },
}

/// The TLS configuration new connections are accepted with, kept current.
#[derive(Debug)]
pub struct ServerTls {
    gateway: TlsGateway,
    config: TlsConfig,
    current: ArcSwap<ServerConfig>,
    /// Content hash of the files the current configuration came from.
    loaded: [u8; 32],
}

/// A handshake that succeeded.
#[derive(Debug)]
pub struct Handshake<S> {
    /// The connection, decrypted.
    pub stream: tokio_rustls::server::TlsStream<S>,
    /// With client certificates (`client_ca_file`), the vehicle the verified
    /// certificate names, or why it names none; `None` without.
    pub certificate: Option<Result<VehicleId, String>>,
}

impl ServerTls {
    /// Reads the files and builds the first configuration for `gateway`.
    pub fn load(gateway: TlsGateway, config: &TlsConfig) -> Result<Self, TlsError> {
        if config.reload_interval.is_zero() {
            return Err(TlsError::ReloadInterval {
                section: gateway.section(),
            });
        }
        let files = Files::read(gateway, config)?;
        let server = files.server_config(gateway, config)?;
        Ok(Self {
            gateway,
            config: config.clone(),
            current: ArcSwap::from_pointee(server),
            loaded: files.digest(),
        })
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn requires_client_certificate(&self) -> bool {
        self.config.client_ca_file.is_some()
    }

    /// The acceptor for the next handshake: the configuration current now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// The TLS handshake of one connection (`listener` and `peer` name it
    /// in logs), within `timeout` (the value of config key `timeout_key`)
    /// from now. A failure is logged and counted by reason (`error`,
    /// `timeout`), and the connection is dropped. With client certificates,
    /// the result has the vehicle the certificate names.
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        timeout: Duration,
        timeout_key: &'static str,
        listener: &'static str,
        peer: SocketAddr,
    ) -> Option<Handshake<S>> {
        let failed = |reason: &'static str, error: &dyn std::fmt::Display| {
            crate::metrics::tls_handshake_failed(self.gateway, reason);
            tracing::info!(listener, %peer, reason, error = %error, "TLS handshake failed");
        };
        let stream = match tokio::time::timeout(timeout, self.acceptor().accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                failed("error", &e);
                return None;
            }
            Err(_) => {
                failed(
                    "timeout",
                    &format_args!("no handshake within {timeout_key}"),
                );
                return None;
            }
        };
        let certificate = self.requires_client_certificate().then(|| {
            // The verifier requires a certificate; without one the
            // handshake failed.
            match stream.get_ref().1.peer_certificates() {
                Some([leaf, ..]) => certificate_vehicle(leaf),
                _ => Err("no client certificate".to_owned()),
            }
        });
        Some(Handshake {
            stream,
            certificate,
        })
    }

    /// Re-reads the files every `reload_interval` until `stop` fires; when
    /// their content changed, builds a new configuration and swaps it in
    /// (handshakes under way finish with the one they started with). Files
    /// that do not load are logged once per distinct problem and counted in
    /// `fleetpipe_mqtt_tls_reload_errors_total` (MQTT) or
    /// `fleetpipe_http_tls_reload_errors_total` (HTTP); the previous
    /// configuration stays until the files change again.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        crate::reload::every(&*self, self.loaded, self.config.reload_interval, &stop).await;
    }

    /// Reads the files and, if their content is not `last`, loads them.
    async fn reread(&self, last: &mut [u8; 32]) -> Result<(), TlsError> {
        let (gateway, config) = (self.gateway, self.config.clone());
        // Small files, but blocking reads: off the async workers.
        let files = tokio::task::spawn_blocking(move || Files::read(gateway, &config))
            .await
            .map_err(|e| TlsError::Config {
                section: gateway.section(),
                detail: format!("reading the files: {e}"),
            })??;
        let hash = files.digest();
        if hash == *last {
            return Ok(());
        }
        // A bad set of files is not tried again until it changes.
        *last = hash;
        let server = files.server_config(gateway, &self.config)?;
        self.current.store(Arc::new(server));
        crate::metrics::tls_reloaded(gateway);
        tracing::info!(cert_file = %self.config.cert_file.display(), "{} reloaded", gateway.section());
        Ok(())
    }
}

/// The three files' contents.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The config key of `field` in `gateway`'s table.
fn key(gateway: TlsGateway, field: &str) -> String {
    format!("{}.{field}", gateway.section())
}

impl Files {
    fn read(gateway: TlsGateway, config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read_bounded(key(gateway, "cert_file"), &config.cert_file)?,
            key: read_bounded(key(gateway, "key_file"), &config.key_file)?,
            client_ca: config
                .client_ca_file
                .as_deref()
                .map(|p| read_bounded(key(gateway, "client_ca_file"), p))
                .transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => {
                    hash.update((bytes.len() as u64).to_le_bytes());
                    hash.update(bytes);
                }
                None => hash.update(u64::MAX.to_le_bytes()),
            }
        }
        hash.finalize().into()
    }

    fn server_config(
        &self,
        gateway: TlsGateway,
        config: &TlsConfig,
    ) -> Result<ServerConfig, TlsError> {
        let file_err = |field: &str, path: &Path, detail: String| TlsError::File {
            key: key(gateway, field),
            path: path.to_owned(),
            detail,
        };
        let config_err = |detail: String| TlsError::Config {
            section: gateway.section(),
            detail,
        };
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                file_err(
                    "cert_file",
                    &config.cert_file,
                    format!("not PEM certificates: {e}"),
                )
            })?;
        if certs.is_empty() {
            return Err(file_err(
                "cert_file",
                &config.cert_file,
                "no certificate in the file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| {
            file_err(
                "key_file",
                &config.key_file,
                format!("no PEM private key: {e}"),
            )
        })?;
        let provider = Arc::new(provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(e.to_string()))?;
        let builder = match (&self.client_ca, &config.client_ca_file) {
            (Some(pem), Some(path)) => {
                let ca_err = |detail: String| file_err("client_ca_file", path, detail);
                let mut roots = RootCertStore::empty();
                for ca in CertificateDer::pem_slice_iter(pem) {
                    let ca = ca.map_err(|e| ca_err(format!("not PEM certificates: {e}")))?;
                    roots
                        .add(ca)
                        .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(ca_err("no certificate in the file".into()));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| ca_err(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(certs, key)
            .map_err(|e| config_err(format!("certificate and key: {e}")))?;
        server.alpn_protocols = gateway.alpn();
        Ok(server)
    }
}

/// The cryptography fleetpipe's TLS uses: rustls' ring provider (its
/// default cipher suites and key exchange groups). rustls 0.23.48 deprecates
/// it for having no post-quantum key exchange; the alternative, aws-lc-rs,
/// needs cmake and a long C build, so ring stays until that changes.
#[allow(deprecated)]
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read_bounded(key: String, path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let err = |detail: String| TlsError::File {
        key: key.clone(),
        path: path.to_owned(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(err(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

/// The vehicle a device certificate (DER) names: its first DNS subject
/// alternative name if it has any, else its subject common name; it must be
/// a valid vehicle id. The certificate was verified by the handshake; this
/// only reads the name.
pub fn certificate_vehicle(der: &[u8]) -> Result<VehicleId, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subject alternative name: {e}"))?
        .and_then(|ext| {
            ext.value.general_names.iter().find_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => Some(*dns),
                _ => None,
            })
        });
    let name = match san {
        Some(dns) => dns.to_owned(),
        None => cert
            .subject()
            .iter_common_name()
            .next()
            .ok_or("the certificate names no vehicle (no DNS subject alternative name, no common name)")?
            .as_str()
            .map_err(|e| format!("common name: {e}"))?
            .to_owned(),
    };
    VehicleId::parse(&name)
        .map_err(|e| format!("certificate name {name:?} is not a vehicle id: {e}"))
}

impl crate::reload::Reload for ServerTls {
    type Error = TlsError;

    fn poll(&self, last: &mut [u8; 32]) -> impl Future<Output = Result<(), TlsError>> + Send {
        self.reread(last)
    }

    fn report(&self, error: &TlsError) {
        crate::metrics::tls_reload_failed(self.gateway);
        tracing::error!(error = %error, "{}: reload failed; the previous certificate and key stay in use", self.gateway.section());
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;

    fn cert(cn: Option<&str>, sans: &[&str]) -> Vec<u8> {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_first_dns_name_else_the_common_name_is_the_vehicle() {
        let vehicle = |der: &[u8]| certificate_vehicle(der).map(|v| v.as_str().to_owned());
        assert_eq!(vehicle(&cert(Some("van-1"), &[])), Ok("van-1".into()));
        assert_eq!(
            vehicle(&cert(Some("van-1"), &["van-2", "van-3"])),
            Ok("van-2".into())
        );
        // An IP address is no DNS name: the common name counts.
        assert_eq!(
            vehicle(&cert(Some("van-1"), &["10.0.0.1"])),
            Ok("van-1".into())
        );
        for (cn, sans) in [
            (None, &[][..]),
            (Some("van 1"), &[][..]),
            (Some("van-1"), &["van/1"][..]),
        ] {
            assert!(vehicle(&cert(cn, sans)).is_err(), "{cn:?} {sans:?}");
        }
        assert!(certificate_vehicle(b"not a certificate").is_err());
    }

    #[test]
    fn files_that_do_not_load_name_their_key() {
        let dir = tempfile::tempdir().expect("dir");
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let pem = params.self_signed(&key).expect("cert").pem();
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, &pem).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        let good = TlsConfig::new(cert_file.clone(), key_file.clone(), None);
        for gateway in [TlsGateway::Mqtt, TlsGateway::Http] {
            let tls = ServerTls::load(gateway, &good).expect("loads");
            assert!(!tls.requires_client_certificate());
            // A key of another certificate.
            let other = KeyPair::generate().expect("key");
            let other_file = dir.path().join("other.pem");
            std::fs::write(&other_file, other.serialize_pem()).expect("write");
            let mismatched = TlsConfig::new(cert_file.clone(), other_file, None);
            let err = ServerTls::load(gateway, &mismatched).unwrap_err();
            assert!(matches!(err, TlsError::Config { .. }), "{err}");
            assert!(err.to_string().starts_with(gateway.section()), "{err}");
            let zero = TlsConfig {
                reload_interval: Duration::ZERO,
                ..good.clone()
            };
            assert_eq!(
                ServerTls::load(gateway, &zero).unwrap_err().to_string(),
                format!("{}.reload_interval must be more than 0", gateway.section())
            );
            // The CA file holds the server key: no certificate in it.
            let ca = TlsConfig::new(cert_file.clone(), key_file.clone(), Some(key_file.clone()));
            let err = ServerTls::load(gateway, &ca).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{}.client_ca_file", gateway.section())),
                "{err}"
            );
        }
    }
}
