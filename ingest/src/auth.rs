//! Device authentication: who is this device, and which vehicle may it speak for?
//!
//! Three modes (`ingest.auth.mode`):
//! - `none`: anonymous access, for development only (a warning is logged at start);
//! - `token`: per-vehicle tokens from a credentials file;
//! - `jwt`: JSON Web Tokens whose `sub` claim is the vehicle id, signed with
//!   HMAC (`HS*`, the shared `jwt_secret`) or with an identity provider's
//!   private key (`RS*`, `PS*`, `ES256`, `ES384`, `EdDSA`; the public keys
//!   come from `jwks_file`, a JSON Web Key Set re-read when it changes, and
//!   the token header's `kid` selects the key).
//!
//! Every gateway asks the same [`Authenticator`]; MQTT presents the vehicle
//! id as username and the token (or JWT) as password, WebSocket and HTTP
//! present the token as `Authorization: Bearer <token>`.
//!
//! A JWT is checked as follows: its header's `alg` must be one of
//! `jwt_algorithms` (`none` never is); an `HS*` token is verified with
//! `jwt_secret` only, any other with a key of `jwks_file` of the type the
//! algorithm needs (an RSA key for `RS*`/`PS*`, P-256 for `ES256`, ...), so
//! a token cannot choose to be verified as HMAC with a public key. Headers
//! that carry or point to keys (`jwk`, `jku`, `x5u`, `x5c`) are ignored.
//! Then the claims: `sub` is required; `exp` is required unless
//! `jwt_require_exp = false`, and checked whenever present; `nbf` is checked
//! whenever present; `iss` and `aud` are required and must match when
//! `jwt_issuer` / `jwt_audience` are set. `exp` and `nbf` tolerate
//! `jwt_leeway_s` of clock skew.

mod jwks;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetpipe_model::VehicleId;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use jwks::{JwksFile, KeyKind};

/// How devices authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anonymous access (development only).
    #[default]
    None,
    /// Per-vehicle tokens from `credentials_file`.
    Token,
    /// JWTs whose `sub` is the vehicle id, signed with `jwt_secret` (HMAC)
    /// or with a key of `jwks_file`.
    Jwt,
}

/// Largest `jwt_leeway_s` accepted, seconds (one day).
pub const MAX_JWT_LEEWAY_S: u64 = 86_400;

/// Every algorithm name `jwt_algorithms` may list.
pub const JWT_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// `ingest.auth`: device authentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none`, `token` or `jwt`.
    pub mode: AuthMode,
    /// Token mode: TOML file of `[[device]]` entries with `vehicle_id` and
    /// `token` (or `token_sha256`, the hex SHA-256 of the token, so the file
    /// need not hold secrets).
    pub credentials_file: Option<PathBuf>,
    /// JWT mode: the shared secret of `HS*` tokens (better set through the
    /// environment, `FLEETPIPE_INGEST__AUTH__JWT_SECRET`).
    pub jwt_secret: Option<String>,
    /// JWT mode: a JSON Web Key Set file (RFC 7517, as identity providers
    /// publish at `/.well-known/jwks.json`) with the public keys of `RS*`,
    /// `PS*`, `ES256`, `ES384` and `EdDSA` tokens. Re-read when its content
    /// changes; a bad new content is logged and the previous keys stay.
    pub jwks_file: Option<PathBuf>,
    /// JWT mode: how often `jwks_file` is read to see whether it changed.
    #[serde(with = "humantime_serde")]
    pub jwks_reload_interval: Duration,
    /// JWT mode: the `alg` values accepted. Default (unset): `HS256` when
    /// `jwt_secret` is set, plus `RS256` and `ES256` when `jwks_file` is set.
    /// `HS*` needs `jwt_secret`, the others `jwks_file`.
    pub jwt_algorithms: Option<Vec<String>>,
    /// JWT mode: if set, the `iss` claim is required and must be this.
    pub jwt_issuer: Option<String>,
    /// JWT mode: if set, the `aud` claim is required and must be (or, as
    /// an array, contain) this.
    pub jwt_audience: Option<String>,
    /// JWT mode: refuse tokens without an `exp` claim (an `exp` that is
    /// present is checked either way).
    pub jwt_require_exp: bool,
    /// JWT mode: clock skew tolerated on `exp`/`nbf`, seconds (at most
    /// [`MAX_JWT_LEEWAY_S`]).
    pub jwt_leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            credentials_file: None,
            jwt_secret: None,
            jwks_file: None,
            jwks_reload_interval: Duration::from_secs(10),
            jwt_algorithms: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_require_exp: true,
            jwt_leeway_s: 60,
        }
    }
}

/// Why the authenticator could not be built from its configuration. Every
/// message is one line and names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// Token mode without `credentials_file`.
    #[error("ingest.auth.credentials_file is required when ingest.auth.mode = \"token\"")]
    MissingCredentialsFile,
    /// JWT mode with neither a secret nor a key set.
    #[error(
        "ingest.auth.mode = \"jwt\" needs ingest.auth.jwt_secret (HS* tokens) or ingest.auth.jwks_file (RS*/PS*/ES*/EdDSA tokens)"
    )]
    MissingJwtKey,
    /// A JWT setting is invalid or does not fit the others.
    #[error("ingest.auth.{key}: {message}")]
    InvalidJwtSetting {
        /// The key (under `ingest.auth`).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The JWKS file could not be read or holds no usable key.
    #[error("ingest.auth.jwks_file {path}: {message}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The credentials file could not be read.
    #[error("ingest.auth.credentials_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The credentials file is not valid.
    #[error("ingest.auth.credentials_file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Why a device was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented.
    #[error("missing credentials")]
    Missing,
    /// The token is not known.
    #[error("unknown token")]
    UnknownToken,
    /// The JWT is invalid (algorithm, key, signature, expiry, claims).
    #[error("invalid JWT: {0}")]
    InvalidJwt(String),
    /// The credential is valid, but for another vehicle than the one claimed.
    #[error("credential is for vehicle {actual:?}, not {claimed:?}")]
    WrongVehicle {
        /// Vehicle the credential belongs to.
        actual: String,
        /// Vehicle the device claimed (MQTT username).
        claimed: String,
    },
}

/// A device's proven identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off.
    Anonymous,
    /// The device may publish for this vehicle only.
    Vehicle(VehicleId),
}

impl Identity {
    /// The vehicle this identity is bound to, if any.
    pub fn vehicle(&self) -> Option<&VehicleId> {
        match self {
            Identity::Anonymous => None,
            Identity::Vehicle(v) => Some(v),
        }
    }
}

/// An identity and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who the device is.
    pub identity: Identity,
    /// The JWT's `exp` plus `jwt_leeway_s` (the leeway it was accepted
    /// with); `None` for
    /// tokens, anonymous access, and JWTs without `exp` (or with one too far
    /// in the future to represent).
    pub expires_at: Option<SystemTime>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(default)]
    device: Vec<DeviceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    vehicle_id: String,
    token: Option<String>,
    token_sha256: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Checked by jsonwebtoken (a number, possibly fractional); read here
    /// for [`Authenticated::expires_at`].
    #[serde(default)]
    exp: Option<serde_json::Number>,
}

/// JWT mode's keys and rules.
struct Jwt {
    /// The key of `HS*` tokens.
    secret: Option<DecodingKey>,
    /// The keys of the other algorithms.
    jwks: Option<Arc<JwksFile>>,
    /// One validation per accepted algorithm (jsonwebtoken checks that the
    /// header's `alg` is the one given and fits the key's family).
    validations: Vec<(Algorithm, Validation)>,
}

enum Backend {
    Anonymous,
    /// SHA-256 of the token → vehicle. Hashing first means the lookup does
    /// not compare secrets byte by byte, and the file may hold hashes only.
    Tokens(HashMap<[u8; 32], VehicleId>),
    Jwt(Box<Jwt>),
}

/// Checks device credentials. Cheap to share (`Arc`) across gateways; in
/// JWT mode with `jwks_file`, run [`Authenticator::jwks_watcher`] to pick up
/// new keys.
pub struct Authenticator {
    backend: Backend,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Anonymous => write!(f, "Authenticator(none)"),
            Backend::Tokens(t) => write!(f, "Authenticator(token, {} devices)", t.len()),
            Backend::Jwt(jwt) => {
                let algs: Vec<Algorithm> = jwt.validations.iter().map(|(a, _)| *a).collect();
                write!(f, "Authenticator(jwt, {algs:?}, {:?})", jwt.jwks)
            }
        }
    }
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn jwt_setting(key: &'static str, message: impl Into<String>) -> AuthSetupError {
    AuthSetupError::InvalidJwtSetting {
        key,
        message: message.into(),
    }
}

/// The algorithms JWT mode accepts, checked against the keys configured.
fn algorithms(
    config: &AuthConfig,
    secret: bool,
    jwks: bool,
) -> Result<Vec<Algorithm>, AuthSetupError> {
    let Some(names) = &config.jwt_algorithms else {
        let mut algs = Vec::new();
        if secret {
            algs.push(Algorithm::HS256);
        }
        if jwks {
            algs.extend([Algorithm::RS256, Algorithm::ES256]);
        }
        return Ok(algs);
    };
    if names.is_empty() {
        return Err(jwt_setting(
            "jwt_algorithms",
            "must list at least one algorithm",
        ));
    }
    let mut algs = Vec::with_capacity(names.len());
    for name in names {
        let alg = JWT_ALGORITHMS
            .contains(&name.as_str())
            .then(|| name.parse::<Algorithm>().ok())
            .flatten()
            .ok_or_else(|| {
                jwt_setting(
                    "jwt_algorithms",
                    format!(
                        "unknown algorithm {name:?} (known: {})",
                        JWT_ALGORITHMS.join(", ")
                    ),
                )
            })?;
        let hmac = KeyKind::for_alg(alg).is_none();
        if hmac && !secret {
            return Err(jwt_setting(
                "jwt_algorithms",
                format!("{name} needs ingest.auth.jwt_secret, which is not set"),
            ));
        }
        if !hmac && !jwks {
            return Err(jwt_setting(
                "jwt_algorithms",
                format!("{name} needs ingest.auth.jwks_file, which is not set"),
            ));
        }
        if !algs.contains(&alg) {
            algs.push(alg);
        }
    }
    if secret && !algs.iter().any(|&a| KeyKind::for_alg(a).is_none()) {
        return Err(jwt_setting(
            "jwt_algorithms",
            "lists no HS* algorithm, so ingest.auth.jwt_secret would never be used (unset it or list HS256)",
        ));
    }
    if jwks && algs.iter().all(|&a| KeyKind::for_alg(a).is_none()) {
        return Err(jwt_setting(
            "jwt_algorithms",
            "lists only HS* algorithms, so ingest.auth.jwks_file would never be used (unset it or list e.g. RS256)",
        ));
    }
    Ok(algs)
}

impl Jwt {
    fn from_config(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let secret = config.jwt_secret.as_deref().filter(|s| !s.is_empty());
        if secret.is_none() && config.jwks_file.is_none() {
            return Err(AuthSetupError::MissingJwtKey);
        }
        let algs = algorithms(config, secret.is_some(), config.jwks_file.is_some())?;
        if config.jwt_leeway_s > MAX_JWT_LEEWAY_S {
            return Err(jwt_setting(
                "jwt_leeway_s",
                format!("{} is more than {MAX_JWT_LEEWAY_S}", config.jwt_leeway_s),
            ));
        }
        if config.jwt_issuer.as_deref() == Some("") {
            return Err(jwt_setting(
                "jwt_issuer",
                "must not be empty (unset it instead)",
            ));
        }
        if config.jwt_audience.as_deref() == Some("") {
            return Err(jwt_setting(
                "jwt_audience",
                "must not be empty (unset it instead)",
            ));
        }
        let jwks = match &config.jwks_file {
            Some(path) => {
                if config.jwks_reload_interval.is_zero() {
                    return Err(jwt_setting("jwks_reload_interval", "must be more than 0"));
                }
                let asymmetric: Vec<Algorithm> = algs
                    .iter()
                    .copied()
                    .filter(|&a| KeyKind::for_alg(a).is_some())
                    .collect();
                let file = JwksFile::load(path, config.jwks_reload_interval, asymmetric).map_err(
                    |message| AuthSetupError::Jwks {
                        path: path.clone(),
                        message,
                    },
                )?;
                if config.jwt_audience.is_none() {
                    tracing::warn!(
                        "ingest.auth.jwks_file is set without ingest.auth.jwt_audience: any token the identity provider signs with a valid sub is accepted, whatever application it was issued for"
                    );
                }
                Some(Arc::new(file))
            }
            None => None,
        };
        let mut required = vec!["sub"];
        if config.jwt_require_exp {
            required.push("exp");
        }
        if config.jwt_issuer.is_some() {
            required.push("iss");
        }
        if config.jwt_audience.is_some() {
            required.push("aud");
        }
        let validations = algs
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = config.jwt_leeway_s;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&required);
                if let Some(iss) = &config.jwt_issuer {
                    v.set_issuer(&[iss]);
                }
                match &config.jwt_audience {
                    Some(aud) => v.set_audience(&[aud]),
                    None => v.validate_aud = false,
                }
                (alg, v)
            })
            .collect();
        Ok(Self {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks,
            validations,
        })
    }

    /// Verifies `token` and returns its vehicle and `exp`.
    fn verify(&self, token: &str) -> Result<(VehicleId, Option<SystemTime>), AuthError> {
        let invalid = |e: String| AuthError::InvalidJwt(e);
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        let alg = header.alg;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or_else(|| invalid(format!("algorithm {alg:?} is not accepted")))?;
        let data = match KeyKind::for_alg(alg) {
            // HMAC: the secret, and nothing else.
            None => {
                let key = self
                    .secret
                    .as_ref()
                    .ok_or_else(|| invalid(format!("algorithm {alg:?} is not accepted")))?;
                jsonwebtoken::decode::<Claims>(token, key, validation)
            }
            Some(_) => {
                let jwks = self
                    .jwks
                    .as_ref()
                    .ok_or_else(|| invalid(format!("algorithm {alg:?} is not accepted")))?;
                let keys = jwks.keys();
                let key = keys.select(alg, header.kid.as_deref()).map_err(invalid)?;
                jsonwebtoken::decode::<Claims>(token, key, validation)
            }
        }
        .map_err(|e| invalid(e.to_string()))?;
        let vehicle =
            VehicleId::parse(&data.claims.sub).map_err(|e| invalid(format!("sub: {e}")))?;
        // With the same leeway as at authentication: a token accepted
        // within it must not be refused at the session's next packet.
        let expires_at = data
            .claims
            .exp
            .as_ref()
            .and_then(exp_time)
            .and_then(|t| t.checked_add(Duration::from_secs(validation.leeway)));
        Ok((vehicle, expires_at))
    }
}

/// A numeric `exp` as a time; `None` if it cannot be represented.
fn exp_time(exp: &serde_json::Number) -> Option<SystemTime> {
    let secs = match exp.as_u64() {
        Some(s) => Duration::from_secs(s),
        None => Duration::try_from_secs_f64(exp.as_f64()?).ok()?,
    };
    UNIX_EPOCH.checked_add(secs)
}

impl Authenticator {
    /// Builds the authenticator for `config` (reads the credentials file or
    /// the JWKS file, checks the JWT settings).
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let backend = match config.mode {
            AuthMode::None => Backend::Anonymous,
            AuthMode::Token => {
                let path = config
                    .credentials_file
                    .as_deref()
                    .ok_or(AuthSetupError::MissingCredentialsFile)?;
                Backend::Tokens(load_tokens(path)?)
            }
            AuthMode::Jwt => Backend::Jwt(Box::new(Jwt::from_config(config)?)),
        };
        Ok(Self { backend })
    }

    /// Whether anonymous access is on.
    pub fn is_anonymous(&self) -> bool {
        matches!(self.backend, Backend::Anonymous)
    }

    /// The task that keeps the JWKS keys current: it reads `jwks_file` every
    /// `jwks_reload_interval` and, when the content changed, swaps the new
    /// keys in (tokens being checked meanwhile use the old or the new set,
    /// never a mix). A content that does not parse, or holds no usable key,
    /// is logged as an error and counted in
    /// `fleetpipe_auth_jwks_reload_errors_total`, and the previous keys stay.
    /// The future ends when `stop` is cancelled. `None` when there is no
    /// JWKS file (nothing to watch).
    pub fn jwks_watcher(
        &self,
        stop: CancellationToken,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        match &self.backend {
            Backend::Jwt(jwt) => jwt.jwks.as_ref().map(|f| Arc::clone(f).watch(stop)),
            _ => None,
        }
    }

    /// Authenticates a credential. `claimed` is the vehicle the device says
    /// it is (the MQTT username), checked against the credential when given.
    pub fn authenticate(
        &self,
        credential: Option<&str>,
        claimed: Option<&str>,
    ) -> Result<Identity, AuthError> {
        self.authenticate_session(credential, claimed)
            .map(|a| a.identity)
    }

    /// As [`Authenticator::authenticate`], with until when the identity
    /// holds: the JWT's `exp` (for long-lived sessions such as MQTT's).
    pub fn authenticate_session(
        &self,
        credential: Option<&str>,
        claimed: Option<&str>,
    ) -> Result<Authenticated, AuthError> {
        let (vehicle, expires_at) = match &self.backend {
            Backend::Anonymous => {
                return Ok(Authenticated {
                    identity: Identity::Anonymous,
                    expires_at: None,
                });
            }
            Backend::Tokens(tokens) => {
                let token = credential
                    .filter(|t| !t.is_empty())
                    .ok_or(AuthError::Missing)?;
                let vehicle = tokens
                    .get(&sha256(token))
                    .cloned()
                    .ok_or(AuthError::UnknownToken)?;
                (vehicle, None)
            }
            Backend::Jwt(jwt) => {
                let token = credential
                    .filter(|t| !t.is_empty())
                    .ok_or(AuthError::Missing)?;
                jwt.verify(token)?
            }
        };
        match claimed.filter(|c| !c.is_empty()) {
            Some(c) if c != vehicle.as_str() => Err(AuthError::WrongVehicle {
                actual: vehicle.to_string(),
                claimed: c.to_string(),
            }),
            _ => Ok(Authenticated {
                identity: Identity::Vehicle(vehicle),
                expires_at,
            }),
        }
    }
}

fn load_tokens(path: &Path) -> Result<HashMap<[u8; 32], VehicleId>, AuthSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_credentials(&text).map_err(|InvalidCredentials(message)| AuthSetupError::Invalid {
        path: path.to_owned(),
        message,
    })
}

/// Why the text of a credentials file is not valid ([`parse_credentials`]);
/// the message of [`AuthSetupError::Invalid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCredentials(pub String);

/// Parses the text of a credentials file (`ingest.auth.credentials_file`,
/// TOML `[[device]]` entries): the SHA-256 of every device's token, mapped
/// to its vehicle. Token mode's authenticator looks tokens up in this map.
pub fn parse_credentials(text: &str) -> Result<HashMap<[u8; 32], VehicleId>, InvalidCredentials> {
    let invalid = InvalidCredentials;
    let file: CredentialsFile =
        toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
    let mut tokens = HashMap::with_capacity(file.device.len());
    for (i, entry) in file.device.into_iter().enumerate() {
        let vehicle = VehicleId::parse(&entry.vehicle_id)
            .map_err(|e| invalid(format!("device[{i}]: {e}")))?;
        let hash = match (&entry.token, &entry.token_sha256) {
            (Some(t), None) if !t.is_empty() => sha256(t),
            (None, Some(h)) => parse_hex32(h).ok_or_else(|| {
                invalid(format!("device[{i}]: token_sha256 must be 64 hex digits"))
            })?,
            _ => {
                return Err(invalid(format!(
                    "device[{i}] ({vehicle}): give exactly one of token or token_sha256"
                )));
            }
        };
        if tokens.insert(hash, vehicle.clone()).is_some() {
            return Err(invalid(format!(
                "device[{i}] ({vehicle}): token used twice"
            )));
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn token_auth(body: &str) -> Result<Authenticator, AuthSetupError> {
        let dir = tempfile::tempdir().map_err(|source| AuthSetupError::Read {
            path: PathBuf::new(),
            source,
        })?;
        let path = dir.path().join("credentials.toml");
        std::fs::write(&path, body).map_err(|source| AuthSetupError::Read {
            path: path.clone(),
            source,
        })?;
        Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Token,
            credentials_file: Some(path),
            ..AuthConfig::default()
        })
    }

    #[test]
    fn tokens_plain_and_hashed() {
        let hashed: String = sha256("s3cret-2")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let auth = token_auth(&format!(
            "[[device]]\nvehicle_id = \"van-1\"\ntoken = \"s3cret-1\"\n\n[[device]]\nvehicle_id = \"van-2\"\ntoken_sha256 = \"{hashed}\"\n"
        ))
        .unwrap();
        let v = |s: &str| Identity::Vehicle(VehicleId::parse(s).unwrap());
        assert_eq!(auth.authenticate(Some("s3cret-1"), None), Ok(v("van-1")));
        assert_eq!(
            auth.authenticate(Some("s3cret-2"), Some("van-2")),
            Ok(v("van-2"))
        );
        assert_eq!(
            auth.authenticate(Some("nope"), None),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            auth.authenticate(None, Some("van-1")),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            auth.authenticate(Some("s3cret-1"), Some("van-2")),
            Err(AuthError::WrongVehicle { .. })
        ));
    }

    #[test]
    fn bad_credentials_files_name_the_problem() {
        let err = |body: &str| {
            token_auth(body)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("[[device]]\nvehicle_id = \"a b\"\ntoken = \"t\"\n").contains("device[0]"));
        assert!(err("[[device]]\nvehicle_id = \"a\"\n").contains("exactly one of token"));
        assert!(err("[[device]]\nvehicle_id = \"a\"\ntoken = \"t\"\n[[device]]\nvehicle_id = \"b\"\ntoken = \"t\"\n").contains("token used twice"));
        assert!(err("[[device]]\nvehicle = \"a\"\n").contains("unknown field"));
    }

    #[test]
    fn credentials_text_parses_as_the_file_loads() {
        let text = "[[device]]\nvehicle_id = \"van-1\"\ntoken = \"t\"\n";
        let tokens = parse_credentials(text).unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            tokens.get(&sha256("t")).map(VehicleId::as_str),
            Some("van-1")
        );
        let bad = "[[device]]\nvehicle_id = \"a\"\ntoken = \"t\"\n[[device]]\nvehicle_id = \"b\"\ntoken = \"t\"\n";
        let InvalidCredentials(message) = parse_credentials(bad).unwrap_err();
        let file_error = token_auth(bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("token used twice"), "{message}");
        assert!(
            file_error.ends_with(&format!(": {message}")),
            "{file_error}"
        );
    }

    fn jwt(secret: &str, sub: &str, exp_offset: i64) -> String {
        #[derive(serde::Serialize)]
        struct C<'a> {
            sub: &'a str,
            exp: i64,
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        encode(
            &Header::new(Algorithm::HS256),
            &C {
                sub,
                exp: now + exp_offset,
            },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap_or_default()
    }

    #[test]
    fn jwt_sub_is_the_vehicle() {
        let auth = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Jwt,
            jwt_secret: Some("k".into()),
            ..AuthConfig::default()
        });
        let Ok(auth) = auth else {
            panic!("setup failed")
        };
        let ok = auth.authenticate(Some(&jwt("k", "truck-7", 600)), None);
        assert_eq!(
            ok.ok().and_then(|i| i.vehicle().map(|v| v.to_string())),
            Some("truck-7".into())
        );
        assert!(matches!(
            auth.authenticate(Some(&jwt("other", "truck-7", 600)), None),
            Err(AuthError::InvalidJwt(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(&jwt("k", "truck-7", -3600)), None),
            Err(AuthError::InvalidJwt(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(&jwt("k", "bad id", 600)), None),
            Err(AuthError::InvalidJwt(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(&jwt("k", "truck-7", 600)), Some("truck-8")),
            Err(AuthError::WrongVehicle { .. })
        ));
    }

    #[test]
    fn sessions_carry_the_jwt_expiry() {
        let auth = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Jwt,
            jwt_secret: Some("k".into()),
            jwt_require_exp: false,
            ..AuthConfig::default()
        })
        .unwrap();
        let token = jwt("k", "truck-7", 600);
        let exp = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&token)
            .unwrap()
            .claims["exp"]
            .as_u64()
            .unwrap();
        let session = auth
            .authenticate_session(Some(&token), Some("truck-7"))
            .unwrap();
        assert_eq!(
            session,
            Authenticated {
                identity: Identity::Vehicle(VehicleId::parse("truck-7").unwrap()),
                expires_at: Some(UNIX_EPOCH + Duration::from_secs(exp + 60)),
            }
        );
        // `authenticate` is the same answer without the expiry.
        assert_eq!(
            auth.authenticate(Some(&token), Some("truck-7")),
            Ok(session.identity)
        );
        // A fractional exp (allowed by RFC 7519) is read too.
        let fractional = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "truck-7", "exp": exp as f64 + 0.25}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(
            auth.authenticate_session(Some(&fractional), None)
                .unwrap()
                .expires_at,
            Some(UNIX_EPOCH + Duration::from_millis((exp + 60) * 1000 + 250))
        );
        // No exp (allowed here by jwt_require_exp = false): no expiry.
        let no_exp = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "truck-7"}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(
            auth.authenticate_session(Some(&no_exp), None)
                .unwrap()
                .expires_at,
            None
        );
        // Refusals are the same as authenticate's.
        assert!(matches!(
            auth.authenticate_session(Some(&token), Some("truck-8")),
            Err(AuthError::WrongVehicle { .. })
        ));
        assert_eq!(
            auth.authenticate_session(None, None),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn tokens_and_anonymous_sessions_do_not_expire() {
        let anonymous = Authenticator::from_config(&AuthConfig::default()).unwrap();
        assert_eq!(
            anonymous.authenticate_session(None, Some("van-1")),
            Ok(Authenticated {
                identity: Identity::Anonymous,
                expires_at: None
            })
        );
        let tokens = token_auth("[[device]]\nvehicle_id = \"van-1\"\ntoken = \"t1\"\n").unwrap();
        assert_eq!(
            tokens.authenticate_session(Some("t1"), Some("van-1")),
            Ok(Authenticated {
                identity: Identity::Vehicle(VehicleId::parse("van-1").unwrap()),
                expires_at: None
            })
        );
        assert_eq!(
            tokens.authenticate_session(Some("t2"), None),
            Err(AuthError::UnknownToken)
        );
    }

    #[test]
    fn missing_settings_are_reported() {
        let e = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Jwt,
            ..AuthConfig::default()
        });
        assert!(matches!(e, Err(AuthSetupError::MissingJwtKey)));
        let e = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Token,
            ..AuthConfig::default()
        });
        assert!(matches!(e, Err(AuthSetupError::MissingCredentialsFile)));
    }
}
