//! The TLS connector: rustls under tokio-postgres (through
//! tokio-postgres-rustls, which provides the stream and its
//! `tls-server-end-point` channel binding), with a certificate verifier per
//! mode and the files read for each new connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{PostgresError, PostgresTls, TlsMode};

/// Largest CA, certificate or key file read, bytes.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// ALPN protocol of PostgreSQL (PostgreSQL 17 requires it with direct TLS
/// negotiation and checks it when offered; older servers ignore it).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The TLS connector of a [`crate::Postgres`] for tokio-postgres
/// (`Config::connect`) and deadpool-postgres (`Manager::from_config`).
///
/// Each connection builds its rustls configuration anew from the files (a
/// few kilobytes, read synchronously: tokio-postgres asks for the connector
/// in a synchronous call), so a renewed CA or client certificate applies to
/// the next connection without a restart, and a file that no longer loads
/// fails that connection naming the key and path.
#[derive(Clone)]
pub struct MakeTls {
    inner: Arc<Settings>,
}

struct Settings {
    section: &'static str,
    tls: PostgresTls,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for MakeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeTls")
            .field("section", &self.inner.section)
            .field("tls", &self.inner.tls)
            .finish()
    }
}

impl MakeTls {
    pub(crate) fn new(section: &'static str, tls: PostgresTls) -> Self {
        Self {
            inner: Arc::new(Settings {
                section,
                tls,
                provider: Arc::new(provider()),
            }),
        }
    }

    pub(crate) fn section(&self) -> &'static str {
        self.inner.section
    }

    pub(crate) fn mode(&self) -> TlsMode {
        self.inner.tls.mode
    }

    /// Reads the files and builds a configuration, to report a bad file
    /// before the first connection.
    pub(crate) fn check(&self) -> Result<(), PostgresError> {
        self.client_config().map(drop)
    }

    /// The rustls configuration for one connection, from the files as they
    /// are now; `None` with `disable`.
    fn client_config(&self) -> Result<Option<ClientConfig>, PostgresError> {
        let Settings {
            section,
            tls,
            provider,
        } = &*self.inner;
        let section = *section;
        if tls.mode == TlsMode::Disable {
            return Ok(None);
        }
        let tls_err = |detail: String| PostgresError::Tls { section, detail };
        let builder = ClientConfig::builder_with_provider(Arc::clone(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?;
        let builder = match tls.mode {
            TlsMode::Disable => return Ok(None), // (returned above)
            TlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NameBlindVerifier {
                    roots: None,
                    provider: Arc::clone(provider),
                })),
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let roots = Arc::new(roots(section, tls.ca_file.as_deref())?);
                if tls.mode == TlsMode::VerifyFull {
                    let verifier =
                        WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider))
                            .build()
                            .map_err(|e| tls_err(format!("tls.ca_file: {e}")))?;
                    builder.with_webpki_verifier(verifier)
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(NameBlindVerifier {
                            roots: Some(roots),
                            provider: Arc::clone(provider),
                        }))
                }
            }
        };
        let mut config = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert_file), Some(key_file)) => {
                let certs = certificates(section, "tls.client_cert_file", cert_file)?;
                let pem = read_bounded(section, "tls.client_key_file", key_file)?;
                let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| PostgresError::File {
                    section,
                    key: "tls.client_key_file",
                    path: key_file.clone(),
                    detail: format!("no PEM private key: {e}"),
                })?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    tls_err(format!("tls.client_cert_file and tls.client_key_file: {e}"))
                })?
            }
            // validate() refuses one without the other.
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Some(config))
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = TlsConnector<S>;
    type Error = PostgresError;

    fn make_tls_connect(&mut self, host: &str) -> Result<Self::TlsConnect, Self::Error> {
        let inner = match self.client_config()? {
            // tokio-postgres asks for a connector even with sslmode=disable,
            // and then never uses it.
            None => None,
            Some(config) => {
                let mut make = MakeRustlsConnect::new(config);
                match <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(&mut make, host) {
                    Ok(connect) => Some(connect),
                    Err(never) => match never {},
                }
            }
        };
        Ok(TlsConnector {
            inner,
            host: host.to_owned(),
            settings: Arc::clone(&self.inner),
        })
    }
}

/// One connection's TLS handshake (made by [`MakeTls`]); a certificate the
/// handshake refuses is reported naming the `tls` settings and why.
pub struct TlsConnector<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    inner: Option<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>,
    host: String,
    settings: Arc<Settings>,
}

impl<S> fmt::Debug for TlsConnector<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("section", &self.settings.section)
            .field("mode", &self.settings.tls.mode)
            .field("host", &self.host)
            .finish()
    }
}

impl<S> TlsConnect<S> for TlsConnector<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Stream>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Some(inner) = self.inner else {
            return Box::pin(std::future::ready(Err(io::Error::other(
                "TLS is disabled (tls.mode = \"disable\")",
            ))));
        };
        let handshake = inner.connect(stream);
        let (host, settings) = (self.host, self.settings);
        Box::pin(async move { handshake.await.map_err(|e| explain(e, &host, &settings)) })
    }
}

/// A refused server certificate as a message an operator can act on: which
/// settings refused it and why; other errors unchanged.
fn explain(e: io::Error, host: &str, settings: &Settings) -> io::Error {
    let Some(rustls::Error::InvalidCertificate(why)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e;
    };
    let section = settings.section;
    let mode = settings.tls.mode;
    let ca_file = settings
        .tls
        .ca_file
        .as_deref()
        .map_or_else(String::new, |p| p.display().to_string());
    let reason = match why {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "it is not valid for host {host:?} (the host of {section}.url; \
                 tls.mode = \"{mode}\" checks it, \"verify-ca\" does not)"
            )
        }
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            format!("it is not issued by a CA in {section}.tls.ca_file = {ca_file}")
        }
        _ => format!("{section}.tls.mode = \"{mode}\", {section}.tls.ca_file = {ca_file}"),
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the server's certificate is not trusted: {reason} ({why:?})"),
    )
}

/// The cryptography: rustls' ring provider, as for fleetpipe's other TLS
/// (ingest's MQTT listeners). rustls 0.23.48 deprecates it for having no
/// post-quantum key exchange; the alternative, aws-lc-rs, needs cmake and a
/// long C build.
#[allow(deprecated)]
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The CAs of `ca_file`.
fn roots(section: &'static str, ca_file: Option<&Path>) -> Result<RootCertStore, PostgresError> {
    let Some(path) = ca_file else {
        // validate() requires it for the verifying modes.
        return Err(PostgresError::Config {
            section,
            key: "tls.ca_file",
            reason: "is required".to_owned(),
        });
    };
    let mut roots = RootCertStore::empty();
    for ca in certificates(section, "tls.ca_file", path)? {
        roots.add(ca).map_err(|e| PostgresError::File {
            section,
            key: "tls.ca_file",
            path: path.to_owned(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The PEM certificates of a file; at least one.
fn certificates(
    section: &'static str,
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PostgresError> {
    let err = |detail: String| PostgresError::File {
        section,
        key,
        path: path.to_owned(),
        detail,
    };
    let pem = read_bounded(section, key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".to_owned()));
    }
    Ok(certs)
}

fn read_bounded(
    section: &'static str,
    key: &'static str,
    path: &Path,
) -> Result<Vec<u8>, PostgresError> {
    use std::io::Read as _;
    let err = |detail: String| PostgresError::File {
        section,
        key,
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

/// The verifier of the two modes that do not check the server's name.
///
/// - `verify-ca` (`roots` set): the server's certificate must chain to a CA
///   of `ca_file` and be valid now, whatever names it holds (libpq's
///   `verify-ca`: for servers reached under a name their certificate does
///   not carry).
/// - `require` (`roots` none): any server certificate is accepted, as
///   libpq's `sslmode=require` does without a root certificate. It exists
///   for servers whose certificate cannot be checked (self-signed, no CA at
///   hand) where encryption against eavesdropping is still wanted; it does
///   not stop someone who can answer in the server's place.
///
/// In both the handshake signature is verified against the presented
/// certificate, so the session keys belong to whoever holds that
/// certificate's key (and channel binding, which hashes the certificate,
/// means something).
#[derive(Debug)]
struct NameBlindVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NameBlindVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
