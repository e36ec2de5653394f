//! The registered claims of JWT mode as identity providers issue them: a
//! configured `iss` / `aud` is required (a token without the claim is
//! refused, not only one with a wrong value), `nbf` is checked with the
//! clock-skew leeway, and an `exp` that is present is checked even when
//! `jwt_require_exp = false`. HS256 tokens, through the public interface.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fleetpipe_ingest::auth::{AuthConfig, AuthError, AuthMode, Authenticator, Identity};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "claims-test-secret";

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn auth(tweak: impl FnOnce(&mut AuthConfig)) -> Authenticator {
    let mut config = AuthConfig {
        mode: AuthMode::Jwt,
        jwt_secret: Some(SECRET.into()),
        jwt_leeway_s: 60,
        ..AuthConfig::default()
    };
    tweak(&mut config);
    Authenticator::from_config(&config).unwrap()
}

fn with_iss_and_aud() -> Authenticator {
    auth(|c| {
        c.jwt_issuer = Some("https://idp.example".into());
        c.jwt_audience = Some("fleetpipe".into());
    })
}

fn refused(auth: &Authenticator, token: &str, what: &str) -> String {
    match auth.authenticate(Some(token), None) {
        Err(AuthError::InvalidJwt(e)) => e,
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

fn accepted(auth: &Authenticator, token: &str) {
    let ok = auth.authenticate(Some(token), Some("van-1"));
    assert_eq!(
        ok.map(|i| i.vehicle().map(ToString::to_string)),
        Ok(Some("van-1".into())),
    );
}

#[test]
fn a_configured_issuer_is_required_and_must_match() {
    let auth = with_iss_and_aud();
    let exp = now() + 600;
    accepted(
        &auth,
        &hs256(
            json!({"sub": "van-1", "exp": exp, "iss": "https://idp.example", "aud": "fleetpipe"}),
        ),
    );
    let e = refused(
        &auth,
        &hs256(json!({"sub": "van-1", "exp": exp, "aud": "fleetpipe"})),
        "no iss",
    );
    assert!(e.contains("iss"), "{e}");
    refused(
        &auth,
        &hs256(
            json!({"sub": "van-1", "exp": exp, "iss": "https://evil.example", "aud": "fleetpipe"}),
        ),
        "wrong iss",
    );
}

#[test]
fn a_configured_audience_is_required_and_must_match() {
    let auth = with_iss_and_aud();
    let exp = now() + 600;
    // An array holding the audience is accepted.
    accepted(
        &auth,
        &hs256(
            json!({"sub": "van-1", "exp": exp, "iss": "https://idp.example", "aud": ["other", "fleetpipe"]}),
        ),
    );
    let e = refused(
        &auth,
        &hs256(json!({"sub": "van-1", "exp": exp, "iss": "https://idp.example"})),
        "no aud",
    );
    assert!(e.contains("aud"), "{e}");
    refused(
        &auth,
        &hs256(json!({"sub": "van-1", "exp": exp, "iss": "https://idp.example", "aud": "billing"})),
        "wrong aud",
    );
    refused(
        &auth,
        &hs256(
            json!({"sub": "van-1", "exp": exp, "iss": "https://idp.example", "aud": ["billing"]}),
        ),
        "wrong aud array",
    );
}

#[test]
fn nbf_is_checked_with_the_leeway() {
    let auth = auth(|_| {});
    let exp = now() + 600;
    // 30 s ahead: within the 60 s leeway (a device clock slightly ahead).
    accepted(
        &auth,
        &hs256(json!({"sub": "van-1", "exp": exp, "nbf": now() + 30})),
    );
    accepted(
        &auth,
        &hs256(json!({"sub": "van-1", "exp": exp, "nbf": now() - 30})),
    );
    // 10 min ahead: not valid yet.
    refused(
        &auth,
        &hs256(json!({"sub": "van-1", "exp": exp, "nbf": now() + 600})),
        "nbf in the future",
    );
    // With no leeway, 30 s ahead is too early as well.
    let strict = self::auth(|c| c.jwt_leeway_s = 0);
    refused(
        &strict,
        &hs256(json!({"sub": "van-1", "exp": exp, "nbf": now() + 30})),
        "nbf 30 s ahead without leeway",
    );
}

#[test]
fn exp_is_checked_even_when_not_required() {
    let auth = auth(|c| c.jwt_require_exp = false);
    // Without exp: accepted (that is what the setting allows).
    accepted(&auth, &hs256(json!({"sub": "van-1"})));
    accepted(&auth, &hs256(json!({"sub": "van-1", "exp": now() + 600})));
    // An expired exp is still an expired token.
    refused(
        &auth,
        &hs256(json!({"sub": "van-1", "exp": now() - 3600})),
        "expired, exp not required",
    );
}

#[test]
fn without_issuer_and_audience_settings_those_claims_are_not_required() {
    let auth = auth(|_| {});
    let id = auth.authenticate(
        Some(&hs256(json!({"sub": "van-1", "exp": now() + 600}))),
        None,
    );
    assert!(matches!(id, Ok(Identity::Vehicle(_))), "{id:?}");
}
