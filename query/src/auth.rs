//! Who may read what: bearer tokens and the [`Access`] each one grants.
//! Pure; the share-link lookup that needs the database is in `share.rs`.
//!
//! Configured tokens (`api.tokens`) are stored as SHA-256 hashes, so the
//! configuration never holds a usable credential. A presented token is
//! hashed and compared with every configured hash in constant time (no
//! early exit, `subtle`), so the time of an answer says nothing about how
//! close a guess was. A token that matches none and looks like a share
//! token (`fps_…`) is looked up by its hash in `api_share_links`.
//!
//! The rule that makes scopes safe: whatever a token may not see does not
//! exist for it. Another vehicle answers 404 exactly like an unknown one,
//! lists leave it out, and a share link's window cuts its history; 403 is
//! only for a kind of request a token can never make (a share link
//! listing the fleet, or creating share links).

use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;

use crate::config::TokenConfig;
use crate::error::ApiError;

/// The prefix of share tokens, so they can be told from configured ones
/// (and recognised by secret scanners).
pub const SHARE_TOKEN_PREFIX: &str = "fps_";

/// The earliest instant a window may start at (no one reads before it).
pub(crate) fn beginning() -> OffsetDateTime {
    time::macros::datetime!(0001-01-01 00:00 UTC)
}

/// The latest instant a window may end at.
pub(crate) fn end_of_time() -> OffsetDateTime {
    time::macros::datetime!(9999-12-31 23:59:59 UTC)
}

/// `hex` as a SHA-256 digest, if it is 64 hex digits (either case).
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| char::from(b).to_digit(16);
        let (hi, lo) = (digit(pair[0])?, digit(pair[1])?);
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// SHA-256 of a presented token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh share token: the prefix and 32 random bytes, base64url.
pub(crate) fn new_share_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{SHARE_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A fresh configured-API token (for `api.tokens`, whose entry keeps its
/// [`token_hash`]): 32 random bytes, hex, so it fits a header, a URL and a
/// WebSocket subprotocol as it is, and never looks like a share link.
pub fn new_api_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh share-link id: 16 random bytes, hex.
pub(crate) fn new_share_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a configured token may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Fleet,
    /// These vehicles.
    Vehicles(Arc<[String]>),
    /// Vehicles while their latest ping is inside one of these fences, and
    /// the track points and events inside them.
    Fences(Arc<[String]>),
}

/// A configured token: its name, hash and scope.
#[derive(Debug, Clone)]
struct Token {
    name: Arc<str>,
    hash: [u8; 32],
    scope: Scope,
}

/// The configured tokens (`api.tokens`).
#[derive(Debug, Clone)]
pub struct Tokens(Arc<[Token]>);

impl Tokens {
    /// The tokens of a validated configuration (entries that do not parse
    /// are left out; validation refuses them first).
    pub fn new(config: &[TokenConfig]) -> Self {
        let tokens = config
            .iter()
            .filter_map(|t| {
                let scope = match (&t.scope, &t.vehicles, &t.fences) {
                    (Some(_), None, None) => Scope::Fleet,
                    (None, Some(v), None) => Scope::Vehicles(v.clone().into()),
                    (None, None, Some(f)) => Scope::Fences(f.clone().into()),
                    _ => return None,
                };
                Some(Token {
                    name: Arc::from(t.name.as_str()),
                    hash: parse_sha256(&t.sha256)?,
                    scope,
                })
            })
            .collect();
        Self(tokens)
    }

    /// The configured token `presented` is, compared by hash with every
    /// configured one in constant time.
    pub fn find(&self, presented: &str) -> Option<Access> {
        let hash = token_hash(presented);
        let mut found = None;
        for token in self.0.iter() {
            // Every hash is compared, whatever matched before.
            if bool::from(token.hash.ct_eq(&hash)) {
                found = Some(token);
            }
        }
        found.map(|t| Access::Token {
            name: Arc::clone(&t.name),
            scope: t.scope.clone(),
        })
    }
}

/// A share link a presented token belongs to (neither expired nor revoked
/// when it was looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGrant {
    /// The link's id.
    pub id: String,
    /// The one vehicle it may read.
    pub vehicle_id: String,
    /// The start of the history it may read (when it was created).
    pub from: OffsetDateTime,
    /// The end of it (when it expires).
    pub to: OffsetDateTime,
}

/// What the caller of a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A configured token.
    Token {
        /// Its name.
        name: Arc<str>,
        /// Its scope.
        scope: Scope,
    },
    /// A share link.
    Share(ShareGrant),
}

/// How a query is narrowed for a caller: SQL parameters, `None` meaning
/// "no restriction".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Only these vehicles.
    pub vehicles: Option<Vec<String>>,
    /// Only vehicles in, and history inside, these fences.
    pub fences: Option<Vec<String>>,
    /// Only history at or after this instant.
    pub from: OffsetDateTime,
    /// Only history at or before this instant.
    pub to: OffsetDateTime,
}

impl Access {
    /// The narrowing of every query this caller makes.
    pub fn filter(&self) -> Filter {
        let (vehicles, fences, from, to) = match self {
            Access::Token { scope, .. } => match scope {
                Scope::Fleet => (None, None, beginning(), end_of_time()),
                Scope::Vehicles(v) => (Some(v.to_vec()), None, beginning(), end_of_time()),
                Scope::Fences(f) => (None, Some(f.to_vec()), beginning(), end_of_time()),
            },
            Access::Share(grant) => (
                Some(vec![grant.vehicle_id.clone()]),
                None,
                grant.from,
                grant.to,
            ),
        };
        Filter {
            vehicles,
            fences,
            from,
            to,
        }
    }

    /// Lists of the whole fleet (vehicles, fences): not for share links.
    ///
    /// # Errors
    ///
    /// [`ApiError::Forbidden`] for a share link.
    pub fn may_list_fleet(&self) -> Result<(), ApiError> {
        match self {
            Access::Token { .. } => Ok(()),
            Access::Share(_) => Err(ApiError::Forbidden(
                "a share link reads only its vehicle, its track and its events",
            )),
        }
    }

    /// Whether this caller may create and revoke share links, and as whom.
    ///
    /// # Errors
    ///
    /// [`ApiError::Forbidden`] for a share link.
    pub fn share_creator(&self) -> Result<&str, ApiError> {
        match self {
            Access::Token { name, .. } => Ok(name),
            Access::Share(_) => Err(ApiError::Forbidden(
                "a share link cannot create or revoke share links",
            )),
        }
    }

    /// For a share link: whether `vehicle` is its vehicle. Configured
    /// tokens are checked by the queries themselves (their scope is a
    /// filter), so this is true for them.
    pub fn may_name_vehicle(&self, vehicle: &str) -> bool {
        match self {
            Access::Token { .. } => true,
            Access::Share(grant) => grant.vehicle_id == vehicle,
        }
    }
}

/// The token of an `Authorization` header value: `Bearer <token>` (the
/// scheme in any case, as RFC 9110 says).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::FleetScope;

    fn hex(hash: [u8; 32]) -> String {
        hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tokens() -> Tokens {
        let t = |name: &str, token: &str, scope, vehicles: Option<&[&str]>| TokenConfig {
            name: name.to_owned(),
            sha256: hex(token_hash(token)),
            scope,
            vehicles: vehicles.map(|v| v.iter().map(|s| (*s).to_owned()).collect()),
            fences: None,
        };
        Tokens::new(&[
            t("ops", "ops-secret", Some(FleetScope::Fleet), None),
            t("cust", "cust-secret", None, Some(&["van-1"])),
        ])
    }

    #[test]
    fn a_token_is_found_by_its_hash_only() {
        let tokens = tokens();
        let ops = tokens.find("ops-secret").unwrap();
        assert_eq!(ops.filter().vehicles, None);
        let cust = tokens.find("cust-secret").unwrap();
        assert_eq!(cust.filter().vehicles, Some(vec!["van-1".to_owned()]));
        // Not the hash itself, not a prefix, not another case.
        for wrong in [
            hex(token_hash("ops-secret")).as_str(),
            "ops-secre",
            "OPS-SECRET",
            "",
        ] {
            assert!(tokens.find(wrong).is_none(), "{wrong}");
        }
    }

    #[test]
    fn hashes_parse_in_either_case_and_only_as_64_hex_digits() {
        let h = token_hash("x");
        assert_eq!(parse_sha256(&hex(h)), Some(h));
        assert_eq!(parse_sha256(&hex(h).to_uppercase()), Some(h));
        assert_eq!(parse_sha256(&hex(h)[1..]), None);
        assert_eq!(parse_sha256(&format!("{}g", &hex(h)[1..])), None);
        // The known SHA-256 of "test", as sha256sum prints it.
        assert_eq!(
            hex(token_hash("test")),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn share_links_are_narrowed_to_their_vehicle_and_window() {
        let from = time::macros::datetime!(2026-01-01 00:00 UTC);
        let to = time::macros::datetime!(2026-01-02 00:00 UTC);
        let share = Access::Share(ShareGrant {
            id: "1".into(),
            vehicle_id: "van-1".into(),
            from,
            to,
        });
        let f = share.filter();
        assert_eq!(
            (f.vehicles, f.from, f.to),
            (Some(vec!["van-1".into()]), from, to)
        );
        assert!(share.may_list_fleet().is_err());
        assert!(share.share_creator().is_err());
        assert!(share.may_name_vehicle("van-1") && !share.may_name_vehicle("van-2"));
        let token = tokens().find("ops-secret").unwrap();
        assert_eq!(token.share_creator().unwrap(), "ops");
    }

    #[test]
    fn share_tokens_and_ids_are_fresh_and_prefixed() {
        let (a, b) = (new_share_token(), new_share_token());
        assert!(
            a.starts_with(SHARE_TOKEN_PREFIX) && a.len() == 4 + 43,
            "{a}"
        );
        assert_ne!(a, b);
        assert_eq!(new_share_id().len(), 32);
        let api = new_api_token();
        assert!(api.len() == 64 && api.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!api.starts_with(SHARE_TOKEN_PREFIX));
        assert_ne!(api, new_api_token());
    }

    #[test]
    fn bearer_takes_the_scheme_in_any_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
