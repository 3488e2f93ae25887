//! The keys tokens may be signed with, each under its `kid` and bound to one algorithm, so
//! a token can never pick how its key is used (no RS256 key verifying an HS256 token).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::PUBLIC_KEY_ALGORITHMS;

/// Why keys could not be loaded. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// A PEM file is not an RSA, P-256 or Ed25519 public key.
    #[error("key `{0}` is not an RSA, P-256 or Ed25519 public key in PEM")]
    Pem(String),
    /// The JWKS document does not parse.
    #[error("the JWKS document is invalid: {0}")]
    Jwks(String),
    /// Two keys share a `kid`.
    #[error("two keys have the id `{0}`")]
    Duplicate(String),
    /// An HS256 secret shorter than 32 bytes.
    #[error("an HS256 secret must be at least 32 bytes")]
    WeakSecret,
}

/// Verification keys by `kid`. `Debug` lists ids and algorithms only.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<(String, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(kid, alg, _)| (kid, alg)))
            .finish()
    }
}

impl KeySet {
    /// A public key in PEM (SPKI, or PKCS#1 for RSA), used for the one algorithm its type
    /// allows: RS256, ES256 or EdDSA.
    pub fn add_pem(&mut self, kid: &str, pem: &[u8]) -> Result<(), KeySetError> {
        let (alg, key) = if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (Algorithm::EdDSA, key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, key)
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else {
            return Err(KeySetError::Pem(kid.to_owned()));
        };
        self.insert(kid, alg, key)
    }

    /// Every usable key of a JWKS document: RSA (RS256), P-256 (ES256) and Ed25519
    /// (EdDSA) keys with a `kid`. Others (no `kid`, other curves, symmetric keys) are
    /// skipped; returns how many were added.
    pub fn add_jwks(&mut self, json: &str) -> Result<usize, KeySetError> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| KeySetError::Jwks(e.to_string()))?;
        let mut added = 0;
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| KeySetError::Jwks(e.to_string()))?;
            self.insert(kid, alg, key)?;
            added += 1;
        }
        Ok(added)
    }

    /// A shared HS256 secret: accepted only when configured this way, and at least 32
    /// bytes long.
    pub fn add_hs256_secret(&mut self, kid: &str, secret: &[u8]) -> Result<(), KeySetError> {
        if secret.len() < 32 {
            return Err(KeySetError::WeakSecret);
        }
        self.insert(kid, Algorithm::HS256, DecodingKey::from_secret(secret))
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn insert(&mut self, kid: &str, alg: Algorithm, key: DecodingKey) -> Result<(), KeySetError> {
        if self.keys.iter().any(|(k, ..)| k == kid) {
            return Err(KeySetError::Duplicate(kid.to_owned()));
        }
        self.keys.push((kid.to_owned(), alg, key));
        Ok(())
    }

    /// Whether tokens signed with `alg` can be accepted at all.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        PUBLIC_KEY_ALGORITHMS.contains(&alg)
            || (alg == Algorithm::HS256 && self.keys.iter().any(|(_, a, _)| *a == alg))
    }

    /// The key `kid`, if it exists and is bound to `alg`.
    pub(crate) fn find(&self, kid: &str, alg: Algorithm) -> Option<&DecodingKey> {
        self.keys
            .iter()
            .find(|(k, a, _)| k == kid && *a == alg)
            .map(|(.., key)| key)
    }
}
