//! The public keys of JWT mode's asymmetric algorithms: a JSON Web Key Set
//! file (RFC 7517), as identity providers publish at
//! `/.well-known/jwks.json`, re-read when its content changes.
//!
//! Only signature keys of the types the accepted algorithms need are kept:
//! RSA (`RS*`, `PS*`, at least 2048 bits), EC P-256 (`ES256`), EC P-384
//! (`ES384`) and OKP Ed25519 (`EdDSA`). A key whose `use` is not `sig`, whose
//! `alg` is not a signature algorithm or does not fit its type, and every
//! symmetric (`oct`) key is ignored (with a warning): HMAC tokens are only
//! ever checked against `jwt_secret`, never against a key from this file.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

/// Largest JWKS file read (identity providers' sets are a few KiB).
pub(super) const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// Smallest RSA modulus accepted, bits (RFC 7518 §3.3).
const MIN_RSA_BITS: usize = 2048;

/// What kind of public key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// The key kind `alg` verifies with; `None` for HMAC (and algorithms
    /// this module does not know).
    pub(super) fn for_alg(alg: Algorithm) -> Option<Self> {
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Some(KeyKind::Rsa),
            Algorithm::ES256 => Some(KeyKind::P256),
            Algorithm::ES384 => Some(KeyKind::P384),
            Algorithm::EdDSA => Some(KeyKind::Ed25519),
            _ => None,
        }
    }
}

/// One usable key of the set.
struct Key {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl Key {
    fn verifies(&self, alg: Algorithm) -> bool {
        KeyKind::for_alg(alg) == Some(self.kind) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one version of the file.
pub(super) struct KeySet {
    keys: Vec<Key>,
}

/// A key of the file that is not used, and why.
#[derive(Debug)]
pub(super) struct Ignored {
    pub index: usize,
    pub kid: Option<String>,
    pub reason: String,
}

impl KeySet {
    /// Parses a JWKS document and keeps the keys that verify one of
    /// `allowed`. Errors (one line) when the document is not a JWKS, when two
    /// kept keys share a `kid`, or when no key is kept.
    pub(super) fn parse(
        bytes: &[u8],
        allowed: &[Algorithm],
    ) -> Result<(Self, Vec<Ignored>), String> {
        let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys: Vec<Key> = Vec::with_capacity(set.keys.len());
        let mut ignored = Vec::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            match key(jwk) {
                Ok(key) if allowed.iter().any(|&a| key.verifies(a)) => {
                    if let Some(kid) = &key.kid
                        && keys.iter().any(|k| k.kid.as_ref() == Some(kid))
                    {
                        return Err(format!("keys[{index}]: kid {kid:?} is used twice"));
                    }
                    keys.push(key);
                }
                Ok(key) => ignored.push(Ignored {
                    index,
                    kid: key.kid,
                    reason: "verifies none of ingest.auth.jwt_algorithms".into(),
                }),
                Err(reason) => ignored.push(Ignored {
                    index,
                    kid: jwk.common.key_id.clone(),
                    reason,
                }),
            }
        }
        if keys.is_empty() {
            let reasons: Vec<String> = ignored
                .iter()
                .map(|i| format!("keys[{}]: {}", i.index, i.reason))
                .collect();
            return Err(format!(
                "no usable key for {} ({} keys: {})",
                names(allowed),
                set.keys.len(),
                if reasons.is_empty() {
                    "none".to_owned()
                } else {
                    reasons.join("; ")
                }
            ));
        }
        Ok((Self { keys }, ignored))
    }

    /// Number of usable keys.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token signed with `alg` (an asymmetric algorithm) whose
    /// header has `kid`. With a `kid`, the key with that `kid`, which must
    /// verify `alg`; without, the only key that verifies `alg`.
    pub(super) fn select(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, String> {
        match kid {
            Some(kid) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or_else(|| format!("unknown kid {kid:?}"))?;
                if key.verifies(alg) {
                    Ok(&key.key)
                } else {
                    Err(format!("key {kid:?} is not a {alg:?} key"))
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.verifies(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(&key.key),
                    (None, _) => Err(format!("no {alg:?} key")),
                    (Some(_), Some(_)) => Err(format!(
                        "the token has no kid and several {alg:?} keys could verify it"
                    )),
                }
            }
        }
    }
}

fn names(algs: &[Algorithm]) -> String {
    let names: Vec<String> = algs.iter().map(|a| format!("{a:?}")).collect();
    names.join(", ")
}

/// A usable key from one JWK, or why not.
fn key(jwk: &Jwk) -> Result<Key, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(format!("use {other:?} is not \"sig\"")),
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match &p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            other => return Err(format!("EC curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match &p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            other => return Err(format!("OKP curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (oct) keys are never taken from the JWKS; HS* tokens use jwt_secret"
                    .into(),
            );
        }
        _ => return Err("unsupported key type (kty)".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => {
            let alg = Algorithm::try_from(ka)
                .ok()
                .filter(|&a| KeyKind::for_alg(a).is_some())
                .ok_or_else(|| format!("alg {ka} is not an asymmetric signature algorithm"))?;
            if KeyKind::for_alg(alg) != Some(kind) {
                return Err(format!("alg {alg:?} does not fit a {kind:?} key"));
            }
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key material: {e}"))?;
    let size_ok = match (kind, key.kind()) {
        (KeyKind::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            let n = strip_zeros(n);
            let e = strip_zeros(e);
            if n.len() * 8 < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus of {} bits, at least {MIN_RSA_BITS} are required",
                    n.len() * 8
                ));
            }
            !e.is_empty() && e.len() <= 8
        }
        (KeyKind::P256, DecodingKeyKind::SecretOrDer(point)) => point.len() == 65,
        (KeyKind::P384, DecodingKeyKind::SecretOrDer(point)) => point.len() == 97,
        (KeyKind::Ed25519, DecodingKeyKind::SecretOrDer(x)) => x.len() == 32,
        _ => false,
    };
    if !size_ok {
        return Err(format!("bad {kind:?} key material (wrong length)"));
    }
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        key,
    })
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The file, its current keys, and what the watcher needs to reload it.
pub(super) struct JwksFile {
    path: PathBuf,
    interval: Duration,
    allowed: Vec<Algorithm>,
    keys: ArcSwap<KeySet>,
    /// Hash of the content loaded at start.
    loaded: [u8; 32],
}

impl std::fmt::Debug for JwksFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFile")
            .field("path", &self.path)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl JwksFile {
    /// Reads and parses the file (blocking: done once, at setup).
    pub(super) fn load(
        path: &Path,
        interval: Duration,
        allowed: Vec<Algorithm>,
    ) -> Result<Self, String> {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_JWKS_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read: {e}"))?;
        let (set, ignored) = parse_bounded(&bytes, &allowed)?;
        log_ignored(path, &ignored);
        Ok(Self {
            path: path.to_owned(),
            interval,
            allowed,
            loaded: digest(&bytes),
            keys: ArcSwap::from_pointee(set),
        })
    }

    /// The current keys.
    pub(super) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Re-reads the file every `interval` until `stop`; a new content that
    /// parses replaces the keys, one that does not is logged (once) and the
    /// keys stay.
    pub(super) async fn watch(self: Arc<Self>, stop: CancellationToken) {
        crate::reload::every(&*self, self.loaded, self.interval, &stop).await;
    }

    /// Reads the file and, if its content is not `last`, loads it.
    async fn reread(&self, last: &mut [u8; 32]) -> Result<(), String> {
        let mut bytes = Vec::new();
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        (&mut file)
            .take(MAX_JWKS_BYTES + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("cannot read: {e}"))?;
        let hash = digest(&bytes);
        if hash == *last {
            return Ok(());
        }
        // A bad content is not tried again until it changes.
        *last = hash;
        let (set, ignored) = parse_bounded(&bytes, &self.allowed)?;
        log_ignored(&self.path, &ignored);
        let count = set.len();
        self.keys.store(Arc::new(set));
        crate::metrics::jwks_reloaded();
        tracing::info!(path = %self.path.display(), keys = count, "ingest.auth.jwks_file reloaded");
        Ok(())
    }
}

fn parse_bounded(bytes: &[u8], allowed: &[Algorithm]) -> Result<(KeySet, Vec<Ignored>), String> {
    if bytes.len() as u64 > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    KeySet::parse(bytes, allowed)
}

fn log_ignored(path: &Path, ignored: &[Ignored]) {
    for i in ignored {
        tracing::warn!(
            path = %path.display(),
            index = i.index,
            kid = i.kid.as_deref().unwrap_or(""),
            reason = %i.reason,
            "ingest.auth.jwks_file: key ignored"
        );
    }
}

impl crate::reload::Reload for JwksFile {
    type Error = String;

    fn poll(&self, last: &mut [u8; 32]) -> impl Future<Output = Result<(), String>> + Send {
        self.reread(last)
    }

    fn report(&self, error: &String) {
        crate::metrics::jwks_reload_failed();
        tracing::error!(
            path = %self.path.display(),
            error = %error,
            "ingest.auth.jwks_file: reload failed; the previous keys stay in use"
        );
    }
}
