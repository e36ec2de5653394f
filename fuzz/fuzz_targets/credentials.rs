//! Fuzz target for device credentials (`fleetpipe_ingest::auth`):
//! - the credentials-file parser, `parse_credentials`, on arbitrary text;
//! - token mode: `Authenticator::authenticate` with arbitrary or known
//!   tokens and claimed vehicles, against an authenticator loaded once
//!   from a credentials file;
//! - JWT mode (HS256): arbitrary strings, and tokens signed here with
//!   arbitrary claims, header algorithm and key, possibly with one
//!   character changed afterwards.
//!
//! Each decision is checked against the rule as stated in README.md
//! ("credentials"), not just for panics.
#![no_main]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use fleetpipe_ingest::auth::{
    AuthConfig, AuthError, AuthMode, Authenticator, Identity, InvalidCredentials, parse_credentials,
};
use fleetpipe_model::VehicleId;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// The token-mode devices: (vehicle, token, whether the file holds only the
/// token's SHA-256). One token is another vehicle's id, one is a single
/// character, so the fuzzer meets them.
const DEVICES: &[(&str, &str, bool)] = &[
    ("van-1", "s3cret-1", false),
    ("van-2", "s3cret-2", true),
    ("van:1", "van-2", false),
    ("truck.7", "t", true),
];

const JWT_SECRET: &str = "fuzz-secret";
/// `AuthConfig::default().jwt_leeway_s`; tokens are made at least this far
/// plus ten minutes from the boundary, so the clock cannot flip an answer.
const LEEWAY_S: i64 = 60;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn sha256_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn token_authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut text = String::new();
        for (vehicle, token, hashed) in DEVICES {
            let secret = if *hashed {
                format!("token_sha256 = \"{}\"", sha256_hex(token))
            } else {
                format!("token = \"{token}\"")
            };
            let _ = write!(text, "[[device]]\nvehicle_id = \"{vehicle}\"\n{secret}\n\n");
        }
        let dir =
            std::env::temp_dir().join(format!("fleetpipe-fuzz-credentials-{}", std::process::id()));
        let path = dir.join("credentials.toml");
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &text));
        assert!(written.is_ok(), "writing {}: {written:?}", path.display());
        let auth = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Token,
            credentials_file: Some(path),
            ..AuthConfig::default()
        });
        // Read once at construction; the file is not needed any more.
        let _ = std::fs::remove_dir_all(&dir);
        match auth {
            Ok(auth) => auth,
            Err(e) => panic!("token authenticator: {e}"),
        }
    })
}

fn jwt_authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let config = AuthConfig {
            mode: AuthMode::Jwt,
            jwt_secret: Some(JWT_SECRET.into()),
            ..AuthConfig::default()
        };
        assert_eq!(config.jwt_leeway_s, LEEWAY_S as u64);
        assert!(
            config.jwt_require_exp && config.jwt_issuer.is_none() && config.jwt_audience.is_none()
        );
        match Authenticator::from_config(&config) {
            Ok(auth) => auth,
            Err(e) => panic!("jwt authenticator: {e}"),
        }
    })
}

#[derive(Debug, Arbitrary)]
enum Credential<'a> {
    Absent,
    Raw(&'a str),
    /// A device's token.
    Known(u8),
    /// The hex SHA-256 of a device's token (what a hashed file holds).
    HashOf(u8),
}

#[derive(Debug, Arbitrary)]
enum Claimed<'a> {
    Absent,
    Raw(&'a str),
    /// A device's vehicle id.
    Known(u8),
}

#[derive(Debug, Arbitrary)]
enum Sub<'a> {
    Absent,
    Str(&'a str),
    Number(i64),
}

#[derive(Debug, Arbitrary)]
enum Exp {
    Absent,
    /// Expired this many seconds ago, beyond the leeway and ten minutes.
    Past(u32),
    /// Expires this many seconds after ten minutes from now.
    Future(u32),
    /// Not a number.
    Text,
}

#[derive(Debug, Arbitrary)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
}

#[derive(Debug, Arbitrary)]
enum Jwt<'a> {
    Raw(&'a str),
    Signed {
        alg: Alg,
        /// Signed with the authenticator's secret, or with this other one.
        other_key: Option<&'a str>,
        sub: Sub<'a>,
        exp: Exp,
        /// Other claims, ignored by this configuration (no issuer or
        /// audience required).
        iss: Option<&'a str>,
        aud: Option<&'a str>,
        /// Replace the character at this position (mod length) with this one.
        tamper: Option<(u16, char)>,
        claimed: Claimed<'a>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    credential: Credential<'a>,
    claimed: Claimed<'a>,
    jwt: Jwt<'a>,
    credentials_text: &'a str,
}

fn device(i: u8) -> (&'static str, &'static str, bool) {
    DEVICES[usize::from(i) % DEVICES.len()]
}

fn claimed_str<'a>(c: &Claimed<'a>) -> Option<&'a str> {
    match c {
        Claimed::Absent => None,
        Claimed::Raw(s) => Some(s),
        Claimed::Known(i) => Some(device(*i).0),
    }
}

/// The outcome the rule asks for when the credential belongs to `vehicle`:
/// the identity, unless a (non-empty) claimed vehicle differs.
fn expected_for(vehicle: &str, claimed: Option<&str>) -> Result<String, ()> {
    match claimed.filter(|c| !c.is_empty()) {
        Some(c) if c != vehicle => Err(()),
        _ => Ok(vehicle.to_owned()),
    }
}

fn check_token_mode(credential: &Credential<'_>, claimed: Option<&str>) {
    let token: Option<String> = match credential {
        Credential::Absent => None,
        Credential::Raw(s) => Some((*s).to_owned()),
        Credential::Known(i) => Some(device(*i).1.to_owned()),
        Credential::HashOf(i) => Some(sha256_hex(device(*i).1)),
    };
    let result = token_authenticator().authenticate(token.as_deref(), claimed);
    let owner = token
        .as_deref()
        .and_then(|t| DEVICES.iter().find(|(_, known, _)| *known == t));
    match (token.as_deref(), owner) {
        (None | Some(""), _) => assert_eq!(result, Err(AuthError::Missing), "{token:?}"),
        (Some(_), None) => assert_eq!(result, Err(AuthError::UnknownToken), "{token:?}"),
        (Some(t), Some((vehicle, _, _))) => match expected_for(vehicle, claimed) {
            Ok(v) => assert_eq!(
                result
                    .as_ref()
                    .ok()
                    .and_then(Identity::vehicle)
                    .map(VehicleId::as_str),
                Some(v.as_str()),
                "token {t:?} of {vehicle}, claimed {claimed:?}: {result:?}"
            ),
            Err(()) => assert!(
                matches!(&result, Err(AuthError::WrongVehicle { actual, claimed: c })
                    if actual == vehicle && Some(c.as_str()) == claimed),
                "token {t:?} of {vehicle}, claimed {claimed:?}: {result:?}"
            ),
        },
    }
}

fn check_jwt_mode(jwt: &Jwt<'_>, now: i64) {
    let auth = jwt_authenticator();
    match jwt {
        Jwt::Raw(s) => {
            // Not made by the encoder: never a valid signature.
            let result = auth.authenticate(Some(s), None);
            assert!(
                result.is_err(),
                "arbitrary string {s:?} authenticated: {result:?}"
            );
        }
        Jwt::Signed {
            alg,
            other_key,
            sub,
            exp,
            iss,
            aud,
            tamper,
            claimed,
        } => {
            let mut claims = serde_json::Map::new();
            match sub {
                Sub::Absent => {}
                Sub::Str(s) => {
                    claims.insert("sub".into(), (*s).into());
                }
                Sub::Number(n) => {
                    claims.insert("sub".into(), (*n).into());
                }
            }
            match exp {
                Exp::Absent => {}
                Exp::Past(s) => {
                    claims.insert("exp".into(), (now - LEEWAY_S - 600 - i64::from(*s)).into());
                }
                Exp::Future(s) => {
                    claims.insert("exp".into(), (now + 600 + i64::from(*s)).into());
                }
                Exp::Text => {
                    claims.insert("exp".into(), "tomorrow".into());
                }
            }
            if let Some(iss) = iss {
                claims.insert("iss".into(), (*iss).into());
            }
            if let Some(aud) = aud {
                claims.insert("aud".into(), (*aud).into());
            }
            let algorithm = match alg {
                Alg::Hs256 => Algorithm::HS256,
                Alg::Hs384 => Algorithm::HS384,
                Alg::Hs512 => Algorithm::HS512,
            };
            let key = other_key.unwrap_or(JWT_SECRET);
            let token = jsonwebtoken::encode(
                &Header::new(algorithm),
                &serde_json::Value::Object(claims),
                &EncodingKey::from_secret(key.as_bytes()),
            );
            let token = match token {
                Ok(t) => t,
                Err(e) => panic!("encoding a JWT: {e}"),
            };
            let mut presented = token.clone();
            let mut tampered = false;
            if let Some((pos, c)) = tamper {
                let chars: Vec<char> = token.chars().collect();
                let k = usize::from(*pos) % chars.len();
                if chars[k] != *c {
                    presented = chars[..k]
                        .iter()
                        .chain([c])
                        .chain(&chars[k + 1..])
                        .collect();
                    tampered = true;
                }
            }
            let claimed = claimed_str(claimed);
            let result = auth.authenticate(Some(&presented), claimed);
            let valid_sub = match sub {
                Sub::Str(s) => VehicleId::check(s).is_ok().then_some(*s),
                _ => None,
            };
            let should_verify = !tampered
                && matches!(alg, Alg::Hs256)
                && other_key.is_none_or(|k| k == JWT_SECRET)
                && matches!(exp, Exp::Future(_));
            match (should_verify, valid_sub) {
                (true, Some(vehicle)) => match expected_for(vehicle, claimed) {
                    Ok(v) => assert_eq!(
                        result
                            .as_ref()
                            .ok()
                            .and_then(Identity::vehicle)
                            .map(VehicleId::as_str),
                        Some(v.as_str()),
                        "{jwt:?}: {result:?}"
                    ),
                    Err(()) => assert!(
                        matches!(result, Err(AuthError::WrongVehicle { .. })),
                        "{jwt:?}: {result:?}"
                    ),
                },
                _ => assert!(
                    matches!(result, Err(AuthError::InvalidJwt(_))),
                    "{jwt:?} (presented {presented:?}): {result:?}"
                ),
            }
        }
    }
}

/// A parsed credentials map, written back as a file of hashes.
fn render(tokens: &HashMap<[u8; 32], VehicleId>) -> String {
    let mut text = String::new();
    for (hash, vehicle) in tokens {
        let _ = write!(
            text,
            "[[device]]\nvehicle_id = \"{vehicle}\"\ntoken_sha256 = \"{}\"\n",
            hex(hash)
        );
    }
    text
}

fn check_credentials_file(text: &str) {
    match parse_credentials(text) {
        Ok(tokens) => {
            // What the parser keeps is a file of its own: written back with
            // hashes only, it parses to the same map.
            let again = parse_credentials(&render(&tokens));
            assert_eq!(again.as_ref(), Ok(&tokens), "{text:?} did not round-trip");
        }
        Err(InvalidCredentials(message)) => {
            assert!(!message.is_empty(), "{text:?}: empty error message");
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    check_token_mode(&input.credential, claimed_str(&input.claimed));
    check_jwt_mode(&input.jwt, now);
    check_credentials_file(input.credentials_text);
});
