//! Signed checkpoints: now and then the sealer signs the chain's tip with an Ed25519 key
//! of its own, kept apart from the data keys. A checkpoint lets someone who holds only the
//! public key check an export: the chain up to the checkpoint links to the signed hash, so
//! no event before it was edited, removed, inserted or moved since it was signed — and a
//! checkpoint past the end of an export or a database shows the tail was cut off, which a
//! hash chain alone cannot.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::AuditError;
use crate::store::{CheckpointRow, Store};

/// Separates checkpoint signatures from any other use of the key.
const DOMAIN: &[u8] = b"stepbox-audit-checkpoint-v1\0";

/// The least time between two checkpoints while events keep coming.
pub const CHECKPOINT_EVERY_MS: i64 = 1_000;

/// Why an audit signing key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// The file could not be read or written.
    #[error("audit signing key {path}: {kind}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        kind: std::io::ErrorKind,
    },
    /// The file holds no Ed25519 key in PEM.
    #[error("audit signing key {0}: not an Ed25519 key in PEM (PKCS#8 private or SPKI public)")]
    Invalid(PathBuf),
    /// No randomness for a new key.
    #[error("no randomness for a new audit signing key: {0}")]
    Random(String),
}

/// The bytes a checkpoint's signature covers.
fn message(seq: i64, hash: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 8 + hash.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(hash);
    out
}

/// A key's id: the first 16 hex digits of the SHA-256 of its public key.
pub fn key_id(key: &VerifyingKey) -> String {
    format!(
        "audit-{}",
        &hex::encode(Sha256::digest(key.as_bytes()))[..16]
    )
}

/// The key that signs checkpoints.
pub struct AuditSigner {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl AuditSigner {
    /// A signer from a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Option<Self> {
        SigningKey::from_pkcs8_pem(pem).ok().map(Self::new)
    }

    fn new(key: SigningKey) -> Self {
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    /// The key in `path`, made (owner-only) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningKeyError> {
        let io = |e: std::io::Error| SigningKeyError::Io {
            path: path.to_owned(),
            kind: e.kind(),
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_pem(&pem).ok_or_else(|| SigningKeyError::Invalid(path.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = zeroize::Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut *secret)
                    .map_err(|e| SigningKeyError::Random(e.to_string()))?;
                let key = SigningKey::from_bytes(&secret);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|_| SigningKeyError::Invalid(path.into()))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                crate::auth::write_private(path, pem.as_bytes()).map_err(io)?;
                Ok(Self::new(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key's id, stored with each checkpoint it signs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What verifies this signer's checkpoints.
    pub fn verifying(&self) -> CheckpointKeys {
        CheckpointKeys(vec![self.key.verifying_key()])
    }

    /// The public key in SPKI PEM, for whoever verifies exports.
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// The checkpoint of the event `seq` whose chain hash is `hash`.
    pub fn sign(&self, seq: i64, hash: &[u8], now_ms: i64) -> CheckpointRow {
        CheckpointRow {
            seq,
            hash: hash.to_vec(),
            signature: self.key.sign(&message(seq, hash)).to_bytes().to_vec(),
            key_id: self.id.clone(),
            created_at: now_ms,
        }
    }
}

/// The public keys checkpoints are checked against.
#[derive(Clone, Debug, Default)]
pub struct CheckpointKeys(Vec<VerifyingKey>);

impl CheckpointKeys {
    /// Keys from a PEM text holding one SPKI public key or one PKCS#8 private key.
    pub fn from_pem(pem: &str) -> Option<Self> {
        VerifyingKey::from_public_key_pem(pem)
            .ok()
            .or_else(|| {
                SigningKey::from_pkcs8_pem(pem)
                    .ok()
                    .map(|k| k.verifying_key())
            })
            .map(|key| Self(vec![key]))
    }

    /// The key in a PEM file.
    pub fn load(path: &Path) -> Result<Self, SigningKeyError> {
        let pem = std::fs::read_to_string(path).map_err(|e| SigningKeyError::Io {
            path: path.to_owned(),
            kind: e.kind(),
        })?;
        Self::from_pem(&pem).ok_or_else(|| SigningKeyError::Invalid(path.into()))
    }

    /// Whether no key is held (nothing can be checked).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `checkpoint` was signed by one of these keys over its own seq and hash.
    pub fn check(&self, checkpoint: &CheckpointRow) -> bool {
        let Ok(signature) = Signature::from_slice(&checkpoint.signature) else {
            return false;
        };
        let message = message(checkpoint.seq, &checkpoint.hash);
        self.0
            .iter()
            .filter(|key| key_id(key) == checkpoint.key_id)
            .any(|key| key.verify(&message, &signature).is_ok())
    }
}

/// Sign the chain's tip if it moved past the last checkpoint and the last one is at least
/// `every_ms` old (the sealer uses [`CHECKPOINT_EVERY_MS`]; an export 0, so that all it
/// holds is signed). Several sealers may race: a checkpoint at a `seq` already signed is
/// simply not stored twice. Returns the new checkpoint's `seq`, if one was made.
pub async fn checkpoint(
    store: &Store,
    signer: &AuditSigner,
    now_ms: i64,
    every_ms: i64,
) -> Result<Option<i64>, AuditError> {
    let mut tx = store.begin_read().await?;
    let tip = tx.last_sealed().await?;
    let last = tx.last_checkpoint().await?;
    tx.commit().await?;
    let Some((seq, hash)) = tip else {
        return Ok(None);
    };
    if let Some(last) = &last
        && (last.seq >= seq || now_ms - last.created_at < every_ms)
    {
        return Ok(None);
    }
    let mut tx = store.begin().await?;
    let stored = tx.insert_checkpoint(&signer.sign(seq, &hash, now_ms)).await;
    match stored {
        Ok(()) => {
            tx.commit().await?;
            Ok(Some(seq))
        }
        Err(crate::store::StoreError::Conflict(_)) => {
            tx.rollback().await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> AuditSigner {
        AuditSigner::new(SigningKey::from_bytes(&[7; 32]))
    }

    #[test]
    fn a_checkpoint_verifies_under_its_key_and_nothing_else() {
        let signer = signer();
        let checkpoint = signer.sign(42, &[1; 32], 1_000);
        assert!(signer.verifying().check(&checkpoint));
        let other = AuditSigner::new(SigningKey::from_bytes(&[8; 32]));
        assert!(!other.verifying().check(&checkpoint));

        let mut moved = checkpoint.clone();
        moved.seq = 41;
        assert!(!signer.verifying().check(&moved));
        let mut rehashed = checkpoint.clone();
        rehashed.hash[0] ^= 1;
        assert!(!signer.verifying().check(&rehashed));
        let mut forged = checkpoint;
        forged.signature[10] ^= 1;
        assert!(!signer.verifying().check(&forged));
    }

    #[test]
    fn the_public_pem_alone_verifies() {
        let signer = signer();
        let checkpoint = signer.sign(7, &[9; 32], 0);
        let keys = CheckpointKeys::from_pem(&signer.public_pem()).unwrap();
        assert!(keys.check(&checkpoint));
        assert!(CheckpointKeys::from_pem("not a key").is_none());
    }
}
