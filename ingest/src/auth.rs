//! Device authentication: who is this device, and which vehicle may it speak for?
//!
//! Three modes (`ingest.auth.mode`):
//! - `none`: anonymous access, for development only (a warning is logged at start);
//! - `token`: per-vehicle tokens from a credentials file;
//! - `jwt`: HS256 JSON Web Tokens whose `sub` claim is the vehicle id.
//!
//! Every gateway asks the same [`Authenticator`]; MQTT presents the vehicle
//! id as username and the token (or JWT) as password, WebSocket and HTTP
//! present the token as `Authorization: Bearer <token>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fleetpipe_model::VehicleId;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How devices authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anonymous access (development only).
    #[default]
    None,
    /// Per-vehicle tokens from `credentials_file`.
    Token,
    /// HS256 JWTs signed with `jwt_secret`, `sub` = vehicle id.
    Jwt,
}

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
    /// JWT mode: the HS256 shared secret (better set through the environment,
    /// `FLEETPIPE_INGEST__AUTH__JWT_SECRET`).
    pub jwt_secret: Option<String>,
    /// JWT mode: required `iss` claim, if set.
    pub jwt_issuer: Option<String>,
    /// JWT mode: required `aud` claim, if set.
    pub jwt_audience: Option<String>,
    /// JWT mode: refuse tokens without an `exp` claim.
    pub jwt_require_exp: bool,
    /// JWT mode: clock skew tolerated on `exp`/`nbf`, seconds.
    pub jwt_leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            credentials_file: None,
            jwt_secret: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_require_exp: true,
            jwt_leeway_s: 60,
        }
    }
}

/// Why the authenticator could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// Token mode without `credentials_file`.
    #[error("ingest.auth.credentials_file is required when ingest.auth.mode = \"token\"")]
    MissingCredentialsFile,
    /// JWT mode without a secret.
    #[error("ingest.auth.jwt_secret is required when ingest.auth.mode = \"jwt\"")]
    MissingJwtSecret,
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
    /// The JWT is invalid (signature, expiry, claims).
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
    /// Seconds since the epoch.
    exp: Option<u64>,
}

/// An identity and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who the device is.
    pub identity: Identity,
    /// When its credential stops being valid (a JWT's `exp` plus the
    /// configured leeway); `None` for
    /// credentials that do not expire.
    pub expires_at: Option<std::time::SystemTime>,
}

enum Backend {
    Anonymous,
    /// SHA-256 of the token → vehicle. Hashing first means the lookup does
    /// not compare secrets byte by byte, and the file may hold hashes only.
    Tokens(HashMap<[u8; 32], VehicleId>),
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
    },
}

/// Checks device credentials. Cheap to share (`Arc`) across gateways.
pub struct Authenticator {
    backend: Backend,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.backend {
            Backend::Anonymous => "none",
            Backend::Tokens(t) => return write!(f, "Authenticator(token, {} devices)", t.len()),
            Backend::Jwt { .. } => "jwt",
        };
        write!(f, "Authenticator({mode})")
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

impl Authenticator {
    /// Builds the authenticator for `config` (reads the credentials file).
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
            AuthMode::Jwt => {
                let secret = config
                    .jwt_secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or(AuthSetupError::MissingJwtSecret)?;
                let mut validation = Validation::new(Algorithm::HS256);
                validation.leeway = config.jwt_leeway_s;
                validation.validate_exp = config.jwt_require_exp;
                validation.required_spec_claims.clear();
                validation.required_spec_claims.insert("sub".into());
                if config.jwt_require_exp {
                    validation.required_spec_claims.insert("exp".into());
                }
                if let Some(iss) = &config.jwt_issuer {
                    validation.set_issuer(&[iss]);
                }
                match &config.jwt_audience {
                    Some(aud) => validation.set_audience(&[aud]),
                    None => validation.validate_aud = false,
                }
                Backend::Jwt {
                    key: DecodingKey::from_secret(secret.as_bytes()),
                    validation: Box::new(validation),
                }
            }
        };
        Ok(Self { backend })
    }

    /// Whether anonymous access is on.
    pub fn is_anonymous(&self) -> bool {
        matches!(self.backend, Backend::Anonymous)
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

    /// Like [`authenticate`](Self::authenticate), with the credential's
    /// expiry, for sessions that outlive the moment of authentication.
    pub fn authenticate_session(
        &self,
        credential: Option<&str>,
        claimed: Option<&str>,
    ) -> Result<Authenticated, AuthError> {
        let mut expires_at = None;
        let vehicle = match &self.backend {
            Backend::Anonymous => {
                return Ok(Authenticated {
                    identity: Identity::Anonymous,
                    expires_at,
                });
            }
            Backend::Tokens(tokens) => {
                let token = credential
                    .filter(|t| !t.is_empty())
                    .ok_or(AuthError::Missing)?;
                tokens
                    .get(&sha256(token))
                    .cloned()
                    .ok_or(AuthError::UnknownToken)?
            }
            Backend::Jwt { key, validation } => {
                let token = credential
                    .filter(|t| !t.is_empty())
                    .ok_or(AuthError::Missing)?;
                let data = jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map_err(|e| AuthError::InvalidJwt(e.to_string()))?;
                // With the same leeway as at authentication, so a token
                // accepted within it is not refused at the next packet.
                expires_at = data.claims.exp.map(|s| {
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(s.saturating_add(validation.leeway))
                });
                VehicleId::parse(&data.claims.sub)
                    .map_err(|e| AuthError::InvalidJwt(format!("sub: {e}")))?
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
    fn missing_settings_are_reported() {
        let e = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Jwt,
            ..AuthConfig::default()
        });
        assert!(matches!(e, Err(AuthSetupError::MissingJwtSecret)));
        let e = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Token,
            ..AuthConfig::default()
        });
        assert!(matches!(e, Err(AuthSetupError::MissingCredentialsFile)));
    }
}
