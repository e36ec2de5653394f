//! JWT mode with an identity provider's keys: RS256/ES256 tokens verified
//! against a JWKS file (`kid` selects the key), algorithm confusion refused,
//! and the file reloaded when it changes. Keys are generated here, at test
//! time; no private key is checked in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetpipe_ingest::auth::{
    AuthConfig, AuthError, AuthMode, AuthSetupError, Authenticated, Authenticator, Identity,
};
use fleetpipe_model::VehicleId;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A key pair: the private half signs, the public half goes in the JWKS.
struct TestKey {
    alg: Algorithm,
    signing: EncodingKey,
    jwk: Jwk,
    /// Encodings of the public key an attacker could use as an HMAC secret.
    public_encodings: Vec<Vec<u8>>,
}

impl TestKey {
    fn rsa(kid: &str) -> Self {
        use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
        use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let public = private.to_public_key();
        let signing = EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes());
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.into());
        let public_encodings = vec![
            public.to_pkcs1_der().unwrap().as_bytes().to_vec(),
            public.to_public_key_der().unwrap().as_bytes().to_vec(),
            public
                .to_pkcs1_pem(LineEnding::LF)
                .unwrap()
                .as_bytes()
                .to_vec(),
            public
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
                .as_bytes()
                .to_vec(),
            serde_json::to_vec(&jwk).unwrap(),
        ];
        Self {
            alg: Algorithm::RS256,
            signing,
            jwk,
            public_encodings,
        }
    }

    fn ec(kid: &str) -> Self {
        use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        let private = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let signing = EncodingKey::from_ec_der(private.to_pkcs8_der().unwrap().as_bytes());
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        let public = private.verifying_key();
        let public_encodings = vec![
            public.to_encoded_point(false).as_bytes().to_vec(),
            public.to_public_key_der().unwrap().as_bytes().to_vec(),
            serde_json::to_vec(&jwk).unwrap(),
        ];
        Self {
            alg: Algorithm::ES256,
            signing,
            jwk,
            public_encodings,
        }
    }

    fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap()
    }

    /// A token for `sub` with the key's `kid`.
    fn token(&self, sub: &str) -> String {
        self.token_with(Some(self.kid()), claims(sub))
    }

    fn token_with(&self, kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(Into::into);
        jsonwebtoken::encode(&header, &claims, &self.signing).unwrap()
    }
}

/// Two RSA keys for the whole binary: generating one takes a while.
fn rsa_keys() -> &'static (TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| (TestKey::rsa("rsa-1"), TestKey::rsa("rsa-2")))
}

const AUDIENCE: &str = "fleetpipe";
const ISSUER: &str = "https://idp.example";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

fn jwks(keys: &[&Jwk]) -> String {
    json!({ "keys": keys }).to_string()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    config: AuthConfig,
}

impl Setup {
    fn new(keys: &[&Jwk]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        write(&path, &jwks(keys));
        let config = AuthConfig {
            mode: AuthMode::Jwt,
            jwks_file: Some(path),
            jwks_reload_interval: Duration::from_millis(50),
            jwt_issuer: Some(ISSUER.into()),
            jwt_audience: Some(AUDIENCE.into()),
            ..AuthConfig::default()
        };
        Self { dir, config }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    fn auth(&self) -> Authenticator {
        Authenticator::from_config(&self.config).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn vehicle(auth: &Authenticator, token: &str) -> Result<String, AuthError> {
    auth.authenticate(Some(token), None).map(|i| match i {
        Identity::Vehicle(v) => v.to_string(),
        Identity::Anonymous => panic!("anonymous in JWT mode"),
    })
}

fn refusal(auth: &Authenticator, token: &str, what: &str) -> String {
    match auth.authenticate(Some(token), None) {
        Err(AuthError::InvalidJwt(e)) => e,
        other => panic!("{what}: expected InvalidJwt, got {other:?}"),
    }
}

/// A token whose header says `alg`, with an HMAC-SHA256 signature made
/// with `secret` (what an attacker holding only public material can make).
fn hmac_token(alg: &str, kid: Option<&str>, claims: &Value, secret: &[u8]) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

#[test]
fn rs256_and_es256_tokens_verify_against_the_jwks_and_kid_selects_the_key() {
    let (rsa1, rsa2) = rsa_keys();
    let ec = TestKey::ec("ec-1");
    let setup = Setup::new(&[&rsa1.jwk, &rsa2.jwk, &ec.jwk]);
    let auth = setup.auth();
    assert_eq!(vehicle(&auth, &rsa1.token("van-1")), Ok("van-1".into()));
    assert_eq!(vehicle(&auth, &rsa2.token("van-2")), Ok("van-2".into()));
    assert_eq!(vehicle(&auth, &ec.token("van-3")), Ok("van-3".into()));
    // Signed by rsa-1 but naming rsa-2: the kid's key does not verify it.
    let wrong_kid = rsa1.token_with(Some("rsa-2"), claims("van-1"));
    let e = refusal(&auth, &wrong_kid, "kid of another key");
    assert!(e.contains("InvalidSignature"), "{e}");
    // A kid the set does not have.
    let unknown = rsa1.token_with(Some("rsa-9"), claims("van-1"));
    let e = refusal(&auth, &unknown, "unknown kid");
    assert!(e.contains("unknown kid"), "{e}");
    // Two RSA keys: a token without kid cannot say which one.
    let no_kid = rsa1.token_with(None, claims("van-1"));
    let e = refusal(&auth, &no_kid, "no kid, two RSA keys");
    assert!(e.contains("no kid"), "{e}");
    // Only one EC key: a token without kid uses it.
    let ec_no_kid = ec.token_with(None, claims("van-3"));
    assert_eq!(vehicle(&auth, &ec_no_kid), Ok("van-3".into()));
    // The claims rules hold for JWKS tokens too.
    let no_aud = ec.token_with(
        Some("ec-1"),
        json!({"sub": "van-3", "exp": now() + 600, "iss": ISSUER}),
    );
    refusal(&auth, &no_aud, "no aud");
    let expired = ec.token_with(
        Some("ec-1"),
        json!({"sub": "van-3", "exp": now() - 3600, "iss": ISSUER, "aud": AUDIENCE}),
    );
    refusal(&auth, &expired, "expired");
    // And the claimed vehicle.
    assert!(matches!(
        auth.authenticate(Some(&rsa1.token("van-1")), Some("van-2")),
        Err(AuthError::WrongVehicle { .. })
    ));
}

#[test]
fn a_token_without_kid_needs_exactly_one_key_for_its_algorithm() {
    let (rsa1, _) = rsa_keys();
    let (ec1, ec2) = (TestKey::ec("ec-1"), TestKey::ec("ec-2"));
    let setup = Setup::new(&[&rsa1.jwk, &ec1.jwk, &ec2.jwk]);
    let auth = setup.auth();
    // One RSA key (the EC keys do not count for RS256).
    let rsa_no_kid = rsa1.token_with(None, claims("van-1"));
    assert_eq!(vehicle(&auth, &rsa_no_kid), Ok("van-1".into()));
    // Two EC keys.
    let ec_no_kid = ec1.token_with(None, claims("van-1"));
    refusal(&auth, &ec_no_kid, "no kid, two EC keys");
    // The kid settles it.
    assert_eq!(vehicle(&auth, &ec2.token("van-2")), Ok("van-2".into()));
}

#[test]
fn algorithm_confusion_is_refused() {
    let (rsa1, _) = rsa_keys();
    let ec = TestKey::ec("ec-1");
    let setup = Setup::new(&[&rsa1.jwk, &ec.jwk]);
    let jwks_only = setup.auth();
    // With a secret as well, and HS256 accepted: HS256 tokens are checked
    // against the secret only, never against a JWKS key.
    let mixed = Authenticator::from_config(&AuthConfig {
        jwt_secret: Some("the-real-secret".into()),
        jwt_algorithms: Some(vec!["HS256".into(), "RS256".into(), "ES256".into()]),
        ..setup.config.clone()
    })
    .unwrap();
    let c = claims("van-1");
    for key in [rsa1, &ec] {
        for (i, public) in key.public_encodings.iter().enumerate() {
            for kid in [Some(key.kid()), None] {
                let forged = hmac_token("HS256", kid, &c, public);
                let e = refusal(&jwks_only, &forged, "HS256 with a public key, JWKS only");
                assert!(e.contains("not accepted"), "{e}");
                let e = refusal(&mixed, &forged, "HS256 with a public key, secret too");
                assert!(e.contains("InvalidSignature"), "encoding {i}: {e}");
            }
        }
    }
    // The real secret works in the mixed setup (so the refusals above are
    // about the key, not about HS256 being off).
    let real = hmac_token("HS256", None, &c, b"the-real-secret");
    assert_eq!(vehicle(&mixed, &real), Ok("van-1".into()));
    // alg "none", with and without a signature.
    for signature in ["", "c2ln"] {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(c.to_string());
        let none = format!("{header}.{payload}.{signature}");
        refusal(&jwks_only, &none, "alg none");
        refusal(&mixed, &none, "alg none, secret too");
    }
    // An RS256 header with the EC key's kid, an ES256 header with the RSA
    // key's kid: the kid's key is not of the algorithm's type.
    let rs_on_ec = rsa1.token_with(Some("ec-1"), c.clone());
    let e = refusal(&jwks_only, &rs_on_ec, "RS256 header, EC kid");
    assert!(e.contains("is not a RS256 key"), "{e}");
    let es_on_rsa = ec.token_with(Some("rsa-1"), c.clone());
    let e = refusal(&jwks_only, &es_on_rsa, "ES256 header, RSA kid");
    assert!(e.contains("is not a ES256 key"), "{e}");
    // A key carried in the token's own header is never used.
    let attacker = TestKey::ec("ec-1");
    let mut header = Header::new(Algorithm::ES256);
    header.jwk = Some(attacker.jwk.clone());
    let embedded = jsonwebtoken::encode(&header, &c, &attacker.signing).unwrap();
    let e = refusal(&jwks_only, &embedded, "embedded jwk");
    assert!(e.contains("InvalidSignature"), "{e}");
    // An algorithm not listed: RS384 signed with the listed RSA key.
    let mut rs384 = Header::new(Algorithm::RS384);
    rs384.kid = Some("rsa-1".into());
    let token = jsonwebtoken::encode(&rs384, &c, &rsa1.signing).unwrap();
    let e = refusal(&jwks_only, &token, "RS384 not listed");
    assert!(e.contains("not accepted"), "{e}");
}

#[test]
fn every_asymmetric_algorithm_verifies_with_its_key_type() {
    use jsonwebtoken::jwk::KeyAlgorithm;
    let (rsa1, _) = rsa_keys();
    // One RSA key without alg serves RS* and PS*.
    let mut rsa_any = rsa1.jwk.clone();
    rsa_any.common.key_algorithm = None;
    let ec256 = TestKey::ec("ec-256");
    let (es384_signing, es384_jwk) = {
        use p384::pkcs8::EncodePrivateKey as _;
        let private = p384::ecdsa::SigningKey::random(&mut p384::elliptic_curve::rand_core::OsRng);
        let signing = EncodingKey::from_ec_der(private.to_pkcs8_der().unwrap().as_bytes());
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES384).unwrap();
        jwk.common.key_id = Some("ec-384".into());
        (signing, jwk)
    };
    let (ed_signing, ed_jwk) = {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        use rsa::rand_core::RngCore as _;
        let mut seed = [0u8; 32];
        rsa::rand_core::OsRng.fill_bytes(&mut seed);
        let private = ed25519_dalek::SigningKey::from_bytes(&seed);
        let signing = EncodingKey::from_ed_der(private.to_pkcs8_der().unwrap().as_bytes());
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA",
            "x": URL_SAFE_NO_PAD.encode(private.verifying_key().to_bytes()),
        }))
        .unwrap();
        (signing, jwk)
    };
    // No key says its alg: only its type decides what it verifies.
    let mut keys = [rsa_any, ec256.jwk.clone(), es384_jwk, ed_jwk];
    for key in &mut keys {
        key.common.key_algorithm = None;
    }
    let setup = Setup::new(&keys.iter().collect::<Vec<_>>());
    let all = [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ];
    let auth = Authenticator::from_config(&AuthConfig {
        jwt_algorithms: Some(all.iter().map(|a| (*a).to_owned()).collect()),
        ..setup.config.clone()
    })
    .unwrap();
    let sign = |alg: Algorithm, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims("van-1"), key).unwrap()
    };
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        let token = sign(alg, "rsa-1", &rsa1.signing);
        assert_eq!(vehicle(&auth, &token), Ok("van-1".into()), "{alg:?}");
        // The same algorithm named with an EC key's kid: refused.
        let e = refusal(
            &auth,
            &sign(alg, "ec-256", &rsa1.signing),
            "RSA alg, EC kid",
        );
        assert!(e.contains("is not a"), "{alg:?}: {e}");
    }
    assert_eq!(vehicle(&auth, &ec256.token("van-1")), Ok("van-1".into()));
    let es384 = sign(Algorithm::ES384, "ec-384", &es384_signing);
    assert_eq!(vehicle(&auth, &es384), Ok("van-1".into()));
    let ed = sign(Algorithm::EdDSA, "ed", &ed_signing);
    assert_eq!(vehicle(&auth, &ed), Ok("van-1".into()));
    // The P-256 key does not verify ES384, nor the P-384 key ES256.
    let e = refusal(
        &auth,
        &sign(Algorithm::ES384, "ec-256", &es384_signing),
        "ES384 on P-256",
    );
    assert!(e.contains("is not a ES384 key"), "{e}");
    let e = refusal(
        &auth,
        &sign(Algorithm::ES256, "ec-384", &ec256.signing),
        "ES256 on P-384",
    );
    assert!(e.contains("is not a ES256 key"), "{e}");
    let e = refusal(
        &auth,
        &sign(Algorithm::ES256, "rsa-1", &ec256.signing),
        "ES256 on RSA",
    );
    assert!(e.contains("is not a ES256 key"), "{e}");
    let e = refusal(
        &auth,
        &sign(Algorithm::EdDSA, "ec-256", &ed_signing),
        "EdDSA on P-256",
    );
    assert!(e.contains("is not a EdDSA key"), "{e}");
    let e = refusal(
        &auth,
        &sign(Algorithm::ES256, "ed", &ec256.signing),
        "ES256 on Ed25519",
    );
    assert!(e.contains("is not a ES256 key"), "{e}");
    // A JWK of the wrong length for its curve is not used.
    let mut short = ec256.jwk.clone();
    short.common.key_id = Some("short".into());
    if let jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) = &mut short.algorithm {
        p.x = URL_SAFE_NO_PAD.encode([7u8; 31]);
    }
    short.common.key_algorithm = Some(KeyAlgorithm::ES256);
    write(&setup.path(), &jwks(&[&short]));
    let e = Authenticator::from_config(&setup.config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong length"), "{e}");
}

#[test]
fn a_key_whose_alg_differs_from_the_token_is_not_used() {
    let (rsa1, _) = rsa_keys();
    let mut jwk = rsa1.jwk.clone();
    jwk.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::PS256);
    let setup = Setup::new(&[&jwk]);
    let auth = Authenticator::from_config(&AuthConfig {
        jwt_algorithms: Some(vec!["RS256".into(), "PS256".into()]),
        ..setup.config.clone()
    })
    .unwrap();
    // The key says PS256: an RS256 token signed with it is refused.
    let e = refusal(&auth, &rsa1.token("van-1"), "RS256 on a PS256 key");
    assert!(e.contains("is not a RS256 key"), "{e}");
    // A JWK without alg serves any algorithm of its type.
    let mut any = rsa1.jwk.clone();
    any.common.key_algorithm = None;
    write(&setup.path(), &jwks(&[&any]));
    let auth = Authenticator::from_config(&setup.config).unwrap();
    assert_eq!(vehicle(&auth, &rsa1.token("van-1")), Ok("van-1".into()));
}

#[test]
fn keys_that_cannot_be_used_are_ignored_and_a_set_without_any_is_refused() {
    let ec = TestKey::ec("ec-1");
    let oct = json!({"kty": "oct", "kid": "shared", "k": URL_SAFE_NO_PAD.encode(b"secret"), "alg": "HS256"});
    let enc = {
        let mut v = serde_json::to_value(&TestKey::ec("ec-enc").jwk).unwrap();
        v["use"] = json!("enc");
        v
    };
    let weak_rsa = json!({"kty": "RSA", "kid": "weak", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128]), "e": "AQAB"});
    let unknown = json!({"kty": "XYZ", "kid": "odd"});
    let ec_value = serde_json::to_value(&ec.jwk).unwrap();
    let setup = Setup::new(&[]);
    write(
        &setup.path(),
        &json!({"keys": [oct, enc, weak_rsa, unknown, ec_value]}).to_string(),
    );
    let auth = setup.auth();
    assert_eq!(vehicle(&auth, &ec.token("van-1")), Ok("van-1".into()));
    // The oct key is not an HMAC secret for HS256 tokens.
    let hs = hmac_token("HS256", Some("shared"), &claims("van-1"), b"secret");
    refusal(&auth, &hs, "HS256 with the JWKS oct key");
    // Without the EC key nothing is usable: a setup error naming the file.
    write(
        &setup.path(),
        &json!({"keys": [oct, enc, weak_rsa, unknown]}).to_string(),
    );
    let e = Authenticator::from_config(&setup.config).unwrap_err();
    assert!(matches!(e, AuthSetupError::Jwks { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.starts_with("ingest.auth.jwks_file ") && e.contains("no usable key"),
        "{e}"
    );
    assert!(e.contains("2048"), "the weak RSA key's reason: {e}");
    for (text, what) in [
        ("{\"keys\": 5}", "not a JWKS"),
        ("not json", "not a JWKS"),
        (&jwks(&[&ec.jwk, &ec.jwk]), "used twice"),
    ] {
        write(&setup.path(), text);
        let e = Authenticator::from_config(&setup.config)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ingest.auth.jwks_file ") && e.contains(what),
            "{e}"
        );
    }
    std::fs::remove_file(setup.path()).unwrap();
    let e = Authenticator::from_config(&setup.config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn sessions_expire_with_the_token() {
    let ec = TestKey::ec("ec-1");
    let setup = Setup::new(&[&ec.jwk]);
    let auth = setup.auth();
    let exp = now() + 900;
    let token = ec.token_with(
        Some("ec-1"),
        json!({"sub": "van-1", "exp": exp, "iss": ISSUER, "aud": AUDIENCE}),
    );
    assert_eq!(
        auth.authenticate_session(Some(&token), Some("van-1")),
        Ok(Authenticated {
            identity: Identity::Vehicle(VehicleId::parse("van-1").unwrap()),
            // exp plus the default leeway (60 s), with which it was accepted.
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(exp + 60)),
        })
    );
    let left = auth
        .authenticate_session(Some(&token), None)
        .unwrap()
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(860) && left <= Duration::from_secs(960));
}

/// Waits until `f` holds, or panics after `timeout`.
async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_jwks_file_is_reloaded_when_it_changes() {
    let (a, b) = (TestKey::ec("key-a"), TestKey::ec("key-b"));
    let setup = Setup::new(&[&a.jwk]);
    let auth = std::sync::Arc::new(setup.auth());
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(auth.jwks_watcher(stop.clone()).unwrap());
    let (token_a, token_b) = (a.token("van-a"), b.token("van-b"));
    assert_eq!(vehicle(&auth, &token_a), Ok("van-a".into()));
    refusal(&auth, &token_b, "B before the rotation");

    // Rotation: the file now holds B only.
    write(&setup.path(), &jwks(&[&b.jwk]));
    eventually(Duration::from_secs(5), "B accepted", || {
        vehicle(&auth, &token_b).is_ok()
    })
    .await;
    let e = refusal(&auth, &token_a, "A after the rotation");
    assert!(e.contains("unknown kid"), "{e}");

    // A bad new file (not JSON, then no usable key, then missing) keeps B.
    let oct_only = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string();
    for bad in ["{\"keys\": [", oct_only.as_str()] {
        write(&setup.path(), bad);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(vehicle(&auth, &token_b), Ok("van-b".into()), "after {bad}");
        refusal(&auth, &token_a, "A while the file is bad");
    }
    std::fs::remove_file(setup.path()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(vehicle(&auth, &token_b), Ok("van-b".into()));

    // The watcher is still there: both keys now.
    write(&setup.path(), &jwks(&[&a.jwk, &b.jwk]));
    eventually(Duration::from_secs(5), "A accepted again", || {
        vehicle(&auth, &token_a).is_ok()
    })
    .await;
    assert_eq!(vehicle(&auth, &token_b), Ok("van-b".into()));

    // It stops when told.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watcher stops on cancel")
        .unwrap();
}

#[test]
fn only_a_jwks_file_has_a_watcher() {
    let hs = Authenticator::from_config(&AuthConfig {
        mode: AuthMode::Jwt,
        jwt_secret: Some("s".into()),
        ..AuthConfig::default()
    })
    .unwrap();
    assert!(hs.jwks_watcher(CancellationToken::new()).is_none());
    let none = Authenticator::from_config(&AuthConfig::default()).unwrap();
    assert!(none.jwks_watcher(CancellationToken::new()).is_none());
}

#[test]
fn jwt_settings_that_do_not_fit_are_refused_with_the_key() {
    let ec = TestKey::ec("ec-1");
    let setup = Setup::new(&[&ec.jwk]);
    let jwt = AuthConfig {
        mode: AuthMode::Jwt,
        ..AuthConfig::default()
    };
    let err = |config: AuthConfig| match Authenticator::from_config(&config) {
        Ok(a) => panic!("accepted: {a:?}"),
        Err(e) => e.to_string(),
    };
    let e = err(jwt.clone());
    assert!(
        e.contains("ingest.auth.jwt_secret") && e.contains("ingest.auth.jwks_file"),
        "{e}"
    );
    let with_secret = AuthConfig {
        jwt_secret: Some("s".into()),
        ..jwt.clone()
    };
    let cases: Vec<(AuthConfig, &str, &str)> = vec![
        (
            AuthConfig {
                jwt_algorithms: Some(vec!["RS256".into(), "XS256".into()]),
                ..setup.config.clone()
            },
            "ingest.auth.jwt_algorithms",
            "unknown algorithm \"XS256\"",
        ),
        (
            AuthConfig {
                jwt_algorithms: Some(vec!["none".into()]),
                ..with_secret.clone()
            },
            "ingest.auth.jwt_algorithms",
            "unknown algorithm \"none\"",
        ),
        (
            AuthConfig {
                jwt_algorithms: Some(vec!["HS256".into(), "RS256".into()]),
                ..setup.config.clone()
            },
            "ingest.auth.jwt_algorithms",
            "HS256 needs ingest.auth.jwt_secret",
        ),
        (
            AuthConfig {
                jwt_algorithms: Some(vec!["HS256".into(), "ES256".into()]),
                ..with_secret.clone()
            },
            "ingest.auth.jwt_algorithms",
            "ES256 needs ingest.auth.jwks_file",
        ),
        (
            AuthConfig {
                jwt_algorithms: Some(vec![]),
                ..with_secret.clone()
            },
            "ingest.auth.jwt_algorithms",
            "at least one",
        ),
        (
            AuthConfig {
                jwt_secret: Some("s".into()),
                jwt_algorithms: Some(vec!["ES256".into()]),
                ..setup.config.clone()
            },
            "ingest.auth.jwt_algorithms",
            "jwt_secret would never be used",
        ),
        (
            AuthConfig {
                jwt_secret: Some("s".into()),
                jwt_algorithms: Some(vec!["HS256".into()]),
                ..setup.config.clone()
            },
            "ingest.auth.jwt_algorithms",
            "jwks_file would never be used",
        ),
        (
            AuthConfig {
                jwt_leeway_s: 86_401,
                ..with_secret.clone()
            },
            "ingest.auth.jwt_leeway_s",
            "more than 86400",
        ),
        (
            AuthConfig {
                jwks_reload_interval: Duration::ZERO,
                ..setup.config.clone()
            },
            "ingest.auth.jwks_reload_interval",
            "more than 0",
        ),
        (
            AuthConfig {
                jwt_issuer: Some(String::new()),
                ..with_secret.clone()
            },
            "ingest.auth.jwt_issuer",
            "empty",
        ),
        (
            AuthConfig {
                jwt_audience: Some(String::new()),
                ..with_secret.clone()
            },
            "ingest.auth.jwt_audience",
            "empty",
        ),
    ];
    for (config, key, what) in cases {
        let e = err(config);
        assert!(e.starts_with(key) && e.contains(what), "{key}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // Defaults: HS256 with a secret, RS256 and ES256 with a JWKS file, all
    // three with both.
    let both = Authenticator::from_config(&AuthConfig {
        jwt_secret: Some("s".into()),
        ..setup.config.clone()
    })
    .unwrap();
    let debug = format!("{both:?}");
    assert!(debug.contains("[HS256, RS256, ES256]"), "{debug}");
}
