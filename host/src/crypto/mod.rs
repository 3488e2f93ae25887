//! Encryption at rest. This module owns envelope encryption: AES-256-GCM data keys that seal
//! task context, step results, captured logs and secrets, each ciphertext bound by its
//! associated data to the table, row and field it was written for; data keys wrapped by a
//! key-encryption key (KEK) named by a key id; the key ring a process loads from a key file or
//! an environment variable; KEK rotation that re-wraps data keys without re-encrypting data;
//! and the keyed blind index (HMAC-SHA256) through which a data subject's own data key is found,
//! so that destroying that key crypto-shreds the subject's data everywhere; the subject vault
//! (kept apart from the database) holds the pad that masks each subject's data key, so that
//! erasing it shreds the data in database backups too. It must never log,
//! print or put in an error any key material (`Debug` of a key shows its id only), never return
//! garbage for a wrong key or tampered data (authentication fails into a typed error), never
//! write a KEK beside the data it protects (the key file is the operator's, kept apart from the
//! database), and never leave key bytes behind when a key is dropped (they are zeroized).

mod blind;
mod envelope;
mod keys;
mod vault;

pub use blind::BlindIndex;
pub use envelope::{Aad, DataKey, WrappedKey};
pub use keys::{Kek, KeyId, KeyRing};
pub use vault::{Pad, SubjectVault, VaultError};

/// Why a cryptographic operation failed, sorted by what the caller can do about it: fix the
/// key configuration (`UnknownKey`, `KeyFile`, `InvalidKeyId`, `RetireActive`), treat the data
/// as unreadable (`Decrypt`, `Malformed`), or retry later (`Random`). No variant ever carries
/// key material or the content of a key file.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The wrapped key names a KEK this process does not hold.
    #[error("key id `{0}` is not held by this process (was it retired, or is the key file wrong?)")]
    UnknownKey(String),
    /// AES-GCM authentication failed: wrong key, tampered bytes, or another row's ciphertext.
    #[error("decryption failed: wrong key, tampered data, or data moved from another row")]
    Decrypt,
    /// The bytes are not something this module wrote (too short, unknown version).
    #[error("malformed ciphertext: {0}")]
    Malformed(&'static str),
    /// A key id outside 1–64 characters of `[A-Za-z0-9._-]`.
    #[error("invalid key id `{0}`")]
    InvalidKeyId(String),
    /// A key file or key environment variable could not be read, parsed or written. `problem`
    /// names what is wrong and where, never what the file contains.
    #[error("key file {path}: {problem}")]
    KeyFile {
        /// The file's path, or `environment variable NAME`.
        path: String,
        /// What is wrong, without any of the file's content.
        problem: String,
    },
    /// The active KEK wraps new data keys, so it cannot be retired; rotate first.
    #[error("cannot retire the active key `{0}`")]
    RetireActive(String),
    /// The operating system's random number generator failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

/// Fills `buf` from the operating system's random number generator: for key material.
fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// Fills `buf` for values that must be unpredictable and never repeat but are no keys:
/// AES-GCM nonces and row ids. They come from rand's thread-local CSPRNG (ChaCha12,
/// seeded and periodically reseeded from the operating system), not from a system call
/// each: a task takes some twenty of them, and `getrandom` was ~1.5 % of the protected
/// engine's CPU.
fn fill_unique(buf: &mut [u8]) {
    rand::RngCore::fill_bytes(&mut rand::rng(), buf);
}

/// A fresh id for a row: `prefix`, the current unix time in milliseconds (12 hex digits),
/// then 80 random bits (20 hex digits).
///
/// Ids made later sort later, so the indexes keyed by them (tasks, their steps and
/// attempts, audit event ids, the resources events name) grow at their right edge: a
/// commit touches a few pages of each instead of one random page per row, which with
/// random ids was most of what SQLite wrote per step commit. The time is no secret (every
/// row also carries it); 80 random bits keep ids unguessable and distinct.
pub fn ordered_id(prefix: &str) -> String {
    let mut random = [0u8; 10];
    fill_unique(&mut random);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!(
        "{prefix}{:012x}{}",
        ms & 0xffff_ffff_ffff,
        hex::encode(random)
    )
}
