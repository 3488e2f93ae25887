//! The JWT attack suite: every forged, stale or malformed token is refused with its own
//! code; a good one yields the identity it claims.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;

const NOW: i64 = 1_764_000_000;
const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "stepbox";

/// An Ed25519 key of the identity provider's, and the verifier trusting it as `idp-1`.
struct Idp {
    signing: EncodingKey,
    public_pem: String,
    verifier: Verifier,
}

fn idp() -> Idp {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let mut keys = KeySet::default();
    keys.add_pem("idp-1", public_pem.as_bytes()).unwrap();
    Idp {
        signing: EncodingKey::from_ed_pem(key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes())
            .unwrap(),
        public_pem,
        verifier: Verifier::new(keys, ISSUER, AUDIENCE),
    }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user_123", "exp": NOW + 600, "nbf": NOW - 5,
        "email": "agent@example.com", "team": "support",
        "roles": ["customer_success_agent"],
        "permissions": ["customer_success.process_refund:execute"],
        "mfa_time": NOW - 60, "sid": "sess_1", "extra": {"ignored": true}
    })
}

fn sign(idp: &Idp, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &idp.signing).unwrap()
}

/// A token with a hand-written header and signature.
fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn refused(idp: &Idp, token: &str) -> AuthError {
    idp.verifier
        .verify(token, NOW)
        .expect_err("the token must be refused")
}

#[test]
fn a_good_token_gives_the_identity_it_claims() {
    let idp = idp();
    let identity = idp
        .verifier
        .verify(&sign(&idp, Some("idp-1"), &claims()), NOW)
        .unwrap();
    assert_eq!(identity.principal.subject, "user_123");
    assert!(identity.principal.roles.contains("customer_success_agent"));
    assert!(
        identity
            .principal
            .permissions
            .contains("customer_success.process_refund:execute")
    );
    assert_eq!(identity.email.as_deref(), Some("agent@example.com"));
    assert_eq!(identity.team.as_deref(), Some("support"));
    assert_eq!(identity.mfa_at, Some(NOW - 60));
    assert_eq!(identity.session_id.as_deref(), Some("sess_1"));
}

#[test]
fn alg_none_is_refused() {
    let idp = idp();
    let token = forge(
        &json!({"alg": "none", "typ": "JWT", "kid": "idp-1"}),
        &claims(),
        b"",
    );
    assert_eq!(refused(&idp, &token), AuthError::AlgorithmRefused);
    let token = format!("{}.", token.trim_end_matches('.'));
    assert_eq!(refused(&idp, &token), AuthError::AlgorithmRefused);
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let idp = idp();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("idp-1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(idp.public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(refused(&idp, &forged), AuthError::AlgorithmRefused);

    // Even where HS256 is configured, the public key's id stays bound to EdDSA.
    let mut keys = KeySet::default();
    keys.add_pem("idp-1", idp.public_pem.as_bytes()).unwrap();
    keys.add_hs256_secret("shared", &[9u8; 32]).unwrap();
    let verifier = Verifier::new(keys, ISSUER, AUDIENCE);
    assert_eq!(
        verifier.verify(&forged, NOW).unwrap_err(),
        AuthError::UnknownKey
    );
}

#[test]
fn a_configured_hs256_secret_verifies_and_a_weak_one_is_rejected() {
    let mut keys = KeySet::default();
    assert!(matches!(
        keys.add_hs256_secret("short", b"too short"),
        Err(KeySetError::WeakSecret)
    ));
    keys.add_hs256_secret("shared", &[9u8; 32]).unwrap();
    let verifier = Verifier::new(keys, ISSUER, AUDIENCE);
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("shared".into());
    let good =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&[9u8; 32])).unwrap();
    assert_eq!(
        verifier.verify(&good, NOW).unwrap().principal.subject,
        "user_123"
    );
    let bad =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&[8u8; 32])).unwrap();
    assert_eq!(
        verifier.verify(&bad, NOW).unwrap_err(),
        AuthError::BadSignature
    );
}

#[test]
fn time_is_checked_with_a_small_leeway() {
    let idp = idp();
    let mut stale = claims();
    stale["exp"] = json!(NOW - LEEWAY_SECS - 1);
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &stale)),
        AuthError::Expired
    );
    stale["exp"] = json!(NOW - LEEWAY_SECS + 1);
    assert!(
        idp.verifier
            .verify(&sign(&idp, Some("idp-1"), &stale), NOW)
            .is_ok(),
        "within the leeway"
    );
    let mut early = claims();
    early["nbf"] = json!(NOW + LEEWAY_SECS + 1);
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &early)),
        AuthError::NotYetValid
    );
    let mut forever = claims();
    forever.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &forever)),
        AuthError::Expired,
        "a token without exp never verifies"
    );
}

#[test]
fn a_remembered_token_is_still_refused_once_it_expires_or_before_it_is_valid() {
    let provider = idp();
    let token = sign(&provider, Some("idp-1"), &claims());
    let verifier = &provider.verifier;
    assert!(verifier.verify(&token, NOW).is_ok());
    assert!(verifier.verify(&token, NOW + 30).is_ok(), "seen again");
    // `exp` is NOW + 600: past it and the leeway, the token it remembers is refused.
    let expiry = NOW + 600 + LEEWAY_SECS;
    assert!(verifier.verify(&token, expiry - 20).is_ok());
    assert_eq!(verifier.verify(&token, expiry + 1), Err(AuthError::Expired));
    // And so it is at every later use: expiry is not forgotten with the memory.
    assert_eq!(verifier.verify(&token, expiry + 2), Err(AuthError::Expired));

    // A clock set back before `nbf` (NOW - 5) gets the token refused, remembered or not.
    let fresh = idp();
    let token = sign(&fresh, Some("idp-1"), &claims());
    assert!(fresh.verifier.verify(&token, NOW).is_ok());
    assert_eq!(
        fresh.verifier.verify(&token, NOW - 5 - LEEWAY_SECS - 1),
        Err(AuthError::NotYetValid)
    );
    assert!(fresh.verifier.verify(&token, NOW + 1).is_ok());
}

#[test]
fn a_token_altered_after_its_genuine_form_was_accepted_is_refused() {
    let idp = idp();
    let good = sign(&idp, Some("idp-1"), &claims());
    assert!(idp.verifier.verify(&good, NOW).is_ok());
    // One bit of the signature.
    let (body, signature) = good.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[0] ^= 1;
    let tampered = format!("{body}.{}", URL_SAFE_NO_PAD.encode(bytes));
    assert_eq!(refused(&idp, &tampered), AuthError::BadSignature);
    // Raised claims under the remembered token's signature.
    let mut raised = claims();
    raised["roles"] = json!(["admin"]);
    let mut parts = good.split('.');
    let (header, _, sig) = (parts.next().unwrap(), parts.next(), parts.next().unwrap());
    let swapped = format!(
        "{header}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(raised.to_string())
    );
    assert_eq!(refused(&idp, &swapped), AuthError::BadSignature);
    // Refusals are not remembered: the same forgery is refused again.
    assert_eq!(refused(&idp, &swapped), AuthError::BadSignature);
    // Another verifier (other keys) does not share this one's memory.
    let other = Verifier::new(KeySet::default(), ISSUER, AUDIENCE);
    assert_eq!(other.verify(&good, NOW), Err(AuthError::UnknownKey));
}

#[test]
fn the_memory_of_accepted_tokens_stays_bounded() {
    let idp = idp();
    for n in 0..REMEMBERED + 10 {
        let mut distinct = claims();
        distinct["sid"] = json!(format!("sess_{n}"));
        assert!(
            idp.verifier
                .verify(&sign(&idp, Some("idp-1"), &distinct), NOW)
                .is_ok()
        );
        assert!(idp.verifier.remembered().len() <= REMEMBERED);
    }
}

#[test]
fn wrong_issuer_audience_or_missing_subject_is_refused() {
    let idp = idp();
    let mut other = claims();
    other["iss"] = json!("https://evil.example.com");
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &other)),
        AuthError::WrongIssuer
    );
    let mut other = claims();
    other["aud"] = json!("another-service");
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &other)),
        AuthError::WrongAudience
    );
    let mut other = claims();
    other.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &other)),
        AuthError::WrongAudience
    );
    let mut other = claims();
    other.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &other)),
        AuthError::BadClaims
    );
    let mut other = claims();
    other["roles"] = json!("admin");
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &other)),
        AuthError::BadClaims
    );
}

#[test]
fn bad_signature_unknown_or_missing_kid_is_refused() {
    let idp = idp();
    let good = sign(&idp, Some("idp-1"), &claims());
    let (body, signature) = good.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    bytes[0] ^= 1;
    let tampered = format!("{body}.{}", URL_SAFE_NO_PAD.encode(bytes));
    assert_eq!(refused(&idp, &tampered), AuthError::BadSignature);
    // The claims changed under a valid signature.
    let mut raised = claims();
    raised["roles"] = json!(["admin"]);
    let (_, payload_and_sig) = good.split_once('.').unwrap();
    let (_, sig) = payload_and_sig.split_once('.').unwrap();
    let header = good.split('.').next().unwrap();
    let swapped = format!(
        "{header}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(raised.to_string())
    );
    assert_eq!(refused(&idp, &swapped), AuthError::BadSignature);

    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-2"), &claims())),
        AuthError::UnknownKey
    );
    assert_eq!(
        refused(&idp, &sign(&idp, None, &claims())),
        AuthError::UnknownKey
    );
}

#[test]
fn garbage_empty_and_oversized_tokens_are_refused() {
    let idp = idp();
    for garbage in [
        "not a token",
        "a.b.c",
        "..",
        "eyJhbGciOiJFZERTQSJ9",
        "🦀.🦀.🦀",
    ] {
        assert_eq!(refused(&idp, garbage), AuthError::Malformed, "{garbage}");
    }
    assert_eq!(refused(&idp, ""), AuthError::Missing);
    let mut huge = claims();
    huge["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
    assert_eq!(
        refused(&idp, &sign(&idp, Some("idp-1"), &huge)),
        AuthError::TooLarge
    );
}

#[test]
fn a_jwks_document_supplies_keys_by_kid() {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "kid": "idp-1",
         "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())},
        {"kty": "oct", "kid": "symmetric", "k": URL_SAFE_NO_PAD.encode([1u8; 32])},
        {"kty": "OKP", "crv": "Ed25519",
         "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())}
    ]});
    let mut keys = KeySet::default();
    assert_eq!(keys.add_jwks(&jwks.to_string()).unwrap(), 1, "{keys:?}");
    let verifier = Verifier::new(keys, ISSUER, AUDIENCE);
    let idp = idp();
    assert!(
        verifier
            .verify(&sign(&idp, Some("idp-1"), &claims()), NOW)
            .is_ok()
    );
    // A symmetric JWK never makes HS256 acceptable.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("symmetric".into());
    let forged =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&[1u8; 32])).unwrap();
    assert_eq!(
        verifier.verify(&forged, NOW).unwrap_err(),
        AuthError::AlgorithmRefused
    );
    assert!(matches!(
        KeySet::default().add_jwks("{\"keys\": 3}"),
        Err(KeySetError::Jwks(_))
    ));
}

#[test]
fn development_tokens_verify_with_the_data_directorys_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let again = DevKey::load_or_create(dir.path()).unwrap();
    assert_eq!(key.kid(), again.kid(), "the key is kept, not remade");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("jwt-dev-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let request = DevTokenRequest {
        sub: "user_123".into(),
        roles: ["customer_success_agent".to_owned()].into(),
        mfa: true,
        ttl_secs: 3600,
        ..DevTokenRequest::default()
    };
    let token = key.mint(&request, NOW).unwrap();
    let verifier = Verifier::new(key.key_set(), DEV_ISSUER, DEV_AUDIENCE);
    let identity = verifier.verify(&token, NOW + 10).unwrap();
    assert_eq!(identity.principal.subject, "user_123");
    assert_eq!(identity.mfa_at, Some(NOW));
    assert!(identity.session_id.is_some_and(|s| s.starts_with("sess_")));
    assert_eq!(
        verifier.verify(&token, NOW + 3600 + LEEWAY_SECS + 1),
        Err(AuthError::Expired)
    );

    let other_dir = tempfile::tempdir().unwrap();
    let other = DevKey::load_or_create(other_dir.path()).unwrap();
    assert_ne!(other.kid(), key.kid());
    assert_eq!(
        Verifier::new(other.key_set(), DEV_ISSUER, DEV_AUDIENCE).verify(&token, NOW),
        Err(AuthError::UnknownKey),
        "another directory's key does not verify it"
    );
}

#[test]
fn a_second_issuer_is_tried_only_for_keys_the_first_does_not_hold() {
    let provider = idp();
    let dir = tempfile::tempdir().unwrap();
    let dev = DevKey::load_or_create(dir.path()).unwrap();
    let both = provider
        .verifier
        .clone()
        .or(Verifier::new(dev.key_set(), DEV_ISSUER, DEV_AUDIENCE));
    let from_provider = sign(&provider, Some("idp-1"), &claims());
    assert_eq!(
        both.verify(&from_provider, NOW).unwrap().principal.subject,
        "user_123"
    );
    let request = DevTokenRequest {
        sub: "dev_user".into(),
        ttl_secs: 600,
        ..DevTokenRequest::default()
    };
    let from_dev = dev.mint(&request, NOW).unwrap();
    assert_eq!(
        both.verify(&from_dev, NOW).unwrap().principal.subject,
        "dev_user"
    );
    assert_eq!(
        provider.verifier.verify(&from_dev, NOW).unwrap_err(),
        AuthError::UnknownKey,
        "the provider alone refuses the development token"
    );
    // A provider-signed token that fails its own checks is refused, never retried
    // against the other issuer.
    let mut wrong_audience = claims();
    wrong_audience["aud"] = json!("someone-else");
    let token = sign(&provider, Some("idp-1"), &wrong_audience);
    assert!(
        matches!(both.verify(&token, NOW), Err(AuthError::WrongAudience)),
        "{:?}",
        both.verify(&token, NOW)
    );
}
