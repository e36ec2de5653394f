//! Certificates for TLS tests, generated with rcgen at every run (no key is
//! checked in), and TLS clients trusting them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsConnector;

/// A certificate authority of the test's own.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn sign(&self, params: CertificateParams) -> Identity {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// The server's certificate: localhost and 127.0.0.1.
    pub fn server(&self) -> Identity {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "fleetpipe test broker");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A device certificate with subject CN `cn` and these DNS names.
    pub fn device(&self, cn: &str, dns_names: &[&str]) -> Identity {
        self.sign(device_params(cn, dns_names))
    }
}

/// The parameters of [`Ca::device`], to change before signing (validity...).
pub fn device_params(cn: &str, dns_names: &[&str]) -> CertificateParams {
    let names: Vec<String> = dns_names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// The server's files, as `[ingest.*.tls]` names them.
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The device CA, when mutual TLS is on.
    pub client_ca: Option<PathBuf>,
}

/// Writes the server's TLS files into `dir` (`server.pem`, `server.key`,
/// `clients-ca.pem`, replacing what is there); `client_ca` turns on mutual
/// TLS.
pub fn write_server_files(dir: &Path, server: &Identity, client_ca: Option<&Ca>) -> ServerFiles {
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("clients-ca.pem"),
    );
    replace_file(&cert, &server.cert);
    replace_file(&key, &server.key);
    if let Some(c) = client_ca {
        replace_file(&ca, &c.pem());
    }
    ServerFiles {
        cert,
        key,
        client_ca: client_ca.map(|_| ca),
    }
}

/// Replaces a file at once (write, then rename), as a deployment would.
pub fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A TLS client configuration trusting `ca`, presenting `identity` if given.
pub fn client_config(ca: &Ca, identity: Option<&Identity>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(fleetpipe_ingest::tls::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// A TLS client trusting `ca`, presenting `identity` if given.
pub fn connector(ca: &Ca, identity: Option<&Identity>) -> TlsConnector {
    TlsConnector::from(Arc::new(client_config(ca, identity)))
}
