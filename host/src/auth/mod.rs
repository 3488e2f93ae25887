//! Authentication: a bearer JWT in, a verified [`Identity`] out.
//!
//! A token is accepted only if every check passes, in this order: its size, its shape, an
//! algorithm on the allow-list (RS256, ES256, EdDSA; HS256 only when a shared secret is
//! configured), a `kid` naming a configured key of that algorithm's family, the signature,
//! then `iss`, `aud`, `exp` and `nbf` (with a small leeway) against an injected clock.
//! Each refusal has a stable [`AuthError::code`] for the HTTP layer to return and audit;
//! none carries the token or its claims.
//!
//! A client sends its token with every request, and checking the signature is most of
//! the work (an Ed25519 or ECDSA verification, tens of microseconds of a core). So a
//! verifier remembers the tokens it accepted, by their SHA-256 and never the token
//! itself, for at most [`REMEMBER_SECS`] and never past the token's `exp`: a token seen
//! again is compared by its whole bytes' digest (one byte changed anywhere is a token
//! never seen, checked from the start), and its `exp` and `nbf` are checked again against
//! the clock on every use. Refusals are never remembered: each is checked, and audited,
//! anew. The memory holds at most [`REMEMBERED`] tokens, and starts over when full.
//!
//! This module owns verification and the development keys of `stepbox token`; it never
//! decides what an identity may do (that is `policy`) and never logs a token.

mod dev;
mod keys;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::Digest as _;

pub(crate) use dev::write_private;
pub use dev::{DEV_AUDIENCE, DEV_ISSUER, DevKey, DevKeyError, DevTokenRequest};
pub use keys::{KeySet, KeySetError};

use crate::policy::Principal;

/// Longest token accepted. Real tokens are a few hundred bytes to a few KiB; refusing
/// larger ones before parsing bounds the work an anonymous caller can cause.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: i64 = 30;

/// Longest a verifier takes an accepted token's word for it before checking it again.
pub const REMEMBER_SECS: i64 = 60;

/// Most accepted tokens a verifier remembers at once.
pub const REMEMBERED: usize = 4096;

/// Why a token was refused. The message names the check, never the token's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token was presented.
    #[error("a bearer token is required")]
    Missing,
    /// Larger than [`MAX_TOKEN_BYTES`].
    #[error("the token is too large")]
    TooLarge,
    /// Not a JWT (three base64url parts with a JSON header and claims).
    #[error("the token is malformed")]
    Malformed,
    /// Its algorithm is not on the allow-list (`none`, HS256 when not configured, …).
    #[error("the token's algorithm is not accepted")]
    AlgorithmRefused,
    /// No `kid`, or one naming no configured key for its algorithm.
    #[error("the token's key is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// Wrong `iss`.
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    /// Wrong `aud`.
    #[error("the token's audience is not accepted")]
    WrongAudience,
    /// `exp` is past (or missing).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// A claim has the wrong type, or `sub` is missing or empty.
    #[error("the token's claims are invalid")]
    BadClaims,
}

impl AuthError {
    /// A stable code for responses and audit events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::TooLarge => "token_too_large",
            Self::Malformed => "token_malformed",
            Self::AlgorithmRefused => "token_algorithm_refused",
            Self::UnknownKey => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::WrongAudience => "token_wrong_audience",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::BadClaims => "token_bad_claims",
        }
    }
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Subject, roles and permissions: what policy decides on and what a task keeps as
    /// its creator's snapshot.
    pub principal: Principal,
    /// The caller's email, if the token has one.
    pub email: Option<String>,
    /// The caller's team, if any.
    pub team: Option<String>,
    /// When the caller last passed multi-factor authentication, unix seconds.
    pub mfa_at: Option<i64>,
    /// The session the token belongs to (`sid`), if any.
    pub session_id: Option<String>,
}

/// The claims stepbox reads. Unknown claims are ignored: identity providers add many.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: Option<i64>,
    nbf: Option<i64>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    roles: BTreeSet<String>,
    #[serde(default)]
    permissions: BTreeSet<String>,
    #[serde(default)]
    mfa_time: Option<i64>,
    #[serde(default)]
    sid: Option<String>,
}

/// What a token must say and who may sign it.
#[derive(Clone)]
pub struct Verifier {
    keys: KeySet,
    issuer: String,
    audience: String,
    /// Another issuer's verifier, for tokens signed by none of `keys`.
    fallback: Option<Box<Verifier>>,
    /// Tokens accepted lately, by the SHA-256 of their bytes: shared by clones, which
    /// trust the same keys and claims, and by nothing that trusts more or less.
    accepted: Arc<Mutex<HashMap<[u8; 32], Accepted>>>,
}

/// A token this verifier accepted: who it names, and the times that still bound it.
struct Accepted {
    identity: Identity,
    exp: i64,
    nbf: Option<i64>,
    /// When it was checked in full, unix seconds.
    checked_at: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Verifier {
    /// A verifier accepting tokens signed by `keys` for `issuer` and `audience`.
    pub fn new(keys: KeySet, issuer: &str, audience: &str) -> Self {
        Self {
            keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            fallback: None,
            accepted: Arc::default(),
        }
    }

    /// This verifier, and `other` for tokens whose key is none of this one's (a second
    /// issuer: each token is still checked against its own issuer's keys and claims).
    pub fn or(mut self, other: Verifier) -> Self {
        // It trusts more than `self` did: the tokens `self` accepted are shared with
        // `self`'s clones, which must never accept what only `other` signed.
        self.accepted = Arc::default();
        match self.fallback.take() {
            Some(first) => self.fallback = Some(Box::new(first.or(other))),
            None => self.fallback = Some(Box::new(other)),
        }
        self
    }

    /// Verify `token` at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        {
            let mut accepted = self.remembered();
            if let Some(seen) = accepted.get(&digest) {
                if now.saturating_sub(seen.checked_at) <= REMEMBER_SECS && now >= seen.checked_at {
                    return match in_time(seen.exp, seen.nbf, now) {
                        Ok(()) => Ok(seen.identity.clone()),
                        Err(late) => {
                            accepted.remove(&digest);
                            Err(late)
                        }
                    };
                }
                accepted.remove(&digest);
            }
        }
        let (identity, exp, nbf) = self.verify_in_full(token, now)?;
        let mut accepted = self.remembered();
        if accepted.len() >= REMEMBERED {
            accepted.clear();
        }
        accepted.insert(
            digest,
            Accepted {
                identity: identity.clone(),
                exp,
                nbf,
                checked_at: now,
            },
        );
        Ok(identity)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Accepted>> {
        self.accepted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every check, this verifier's issuer and then the others': the identity, and the
    /// token's `exp` and `nbf`.
    fn verify_in_full(
        &self,
        token: &str,
        now: i64,
    ) -> Result<(Identity, i64, Option<i64>), AuthError> {
        match (self.verify_own(token, now), &self.fallback) {
            (Err(AuthError::UnknownKey | AuthError::AlgorithmRefused), Some(other)) => {
                other.verify_in_full(token, now)
            }
            (verdict, _) => verdict,
        }
    }

    fn verify_own(&self, token: &str, now: i64) -> Result<(Identity, i64, Option<i64>), AuthError> {
        if token.split('.').count() != 3 {
            return Err(AuthError::Malformed);
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            // `alg: none` and other names jsonwebtoken does not know fail to parse: say
            // so rather than call the token malformed.
            Err(_) if header_names_an_unknown_algorithm(token) => {
                return Err(AuthError::AlgorithmRefused);
            }
            Err(_) => return Err(AuthError::Malformed),
        };
        if !self.keys.accepts(header.alg) {
            return Err(AuthError::AlgorithmRefused);
        }
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let key = self
            .keys
            .find(kid, header.alg)
            .ok_or(AuthError::UnknownKey)?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        // Time is checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = ["iss", "aud", "sub"]
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;

        let exp = claims.exp.ok_or(AuthError::Expired)?;
        in_time(exp, claims.nbf, now)?;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::BadClaims);
        }
        let identity = Identity {
            principal: Principal {
                subject: claims.sub,
                roles: claims.roles,
                permissions: claims.permissions,
            },
            email: claims.email,
            team: claims.team,
            mfa_at: claims.mfa_time,
            session_id: claims.sid,
        };
        Ok((identity, exp, claims.nbf))
    }
}

/// Whether a token expiring at `exp` and valid from `nbf` may be used at `now`, with
/// [`LEEWAY_SECS`] of clock skew either way.
fn in_time(exp: i64, nbf: Option<i64>, now: i64) -> Result<(), AuthError> {
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|nbf| now < nbf.saturating_sub(LEEWAY_SECS)) {
        return Err(AuthError::NotYetValid);
    }
    Ok(())
}

/// What a failed decode means to the caller.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidIssuer => AuthError::WrongIssuer,
        K::InvalidAudience => AuthError::WrongAudience,
        K::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            _ => AuthError::BadClaims,
        },
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            AuthError::AlgorithmRefused
        }
        K::InvalidClaimFormat(_) | K::Json(_) => AuthError::BadClaims,
        _ => AuthError::Malformed,
    }
}

/// Whether the token's header parses as JSON with a string `alg` that jsonwebtoken does
/// not know, such as `none`.
fn header_names_an_unknown_algorithm(token: &str) -> bool {
    let Some(encoded) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|header| {
            header
                .get("alg")
                .and_then(serde_json::Value::as_str)
                .map(|alg| alg.parse::<Algorithm>().is_err())
        })
        .unwrap_or(false)
}

/// The algorithms stepbox accepts with public keys.
pub(crate) const PUBLIC_KEY_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
