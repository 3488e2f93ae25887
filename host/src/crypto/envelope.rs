//! Data keys, sealing and opening under associated data, and wrapping data keys with a KEK.

use std::fmt;

use aes_gcm::aead::{AeadInPlace as _, KeyInit as _};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

use super::keys::{KEY_LEN, Secret, random_secret};
use super::{CryptoError, KeyId, KeyRing, fill_unique};

/// The format version that leads every sealed value.
const SEAL_VERSION: u8 = 1;

/// AES-GCM's 96-bit nonce, random per call. With random nonces one key must seal fewer than
/// 2^32 values; data keys are per subject or per store, far below that.
const NONCE_LEN: usize = 12;

/// AES-GCM's authentication tag.
const TAG_LEN: usize = 16;

/// Shortest sealed value: version, nonce and tag around an empty plaintext.
const SEALED_MIN_LEN: usize = 1 + NONCE_LEN + TAG_LEN;

/// Exact length of a wrapped data key: nonce, encrypted key, tag.
const WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// A 256-bit AES-GCM data key. Debug prints `DataKey(..)`. Zeroized on drop.
pub struct DataKey {
    key: Secret,
}

impl DataKey {
    /// A new random data key from the operating system's random number generator.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self {
            key: random_secret()?,
        })
    }

    /// The key's bytes, for masking with a subject's pad (never to be logged or stored).
    pub(super) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// A key from its bytes (a pad's mask undone).
    pub(super) fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        Self {
            key: Box::new(zeroize::Zeroizing::new(*bytes)),
        }
    }

    /// Random 96-bit nonce per call; output = version byte (1) || nonce || ciphertext+tag.
    /// The ciphertext opens only with this key and the same `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: Aad<'_>) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_unique(&mut nonce);
        let mut out = Vec::with_capacity(SEALED_MIN_LEN + plaintext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = cipher(&self.key)
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &aad.encode(SEAL_VERSION),
                &mut out[1 + NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Malformed("plaintext too long for AES-GCM"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what `seal` wrote. `Decrypt` on wrong key / moved row / tamper; `Malformed` on
    /// bad length or version.
    pub fn open(&self, sealed: &[u8], aad: Aad<'_>) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEALED_MIN_LEN {
            return Err(CryptoError::Malformed(
                "shorter than version, nonce and tag",
            ));
        }
        if sealed[0] != SEAL_VERSION {
            return Err(CryptoError::Malformed("unknown format version"));
        }
        let (nonce, rest) = sealed[1..].split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plaintext = body.to_vec();
        cipher(&self.key)
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &aad.encode(SEAL_VERSION),
                &mut plaintext,
                Tag::from_slice(tag),
            )
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(plaintext)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A data key wrapped (AES-256-GCM) by a KEK. The wrap's AAD is the wrapped key's own id
/// string (so a wrapped key moved to another data-key row fails to unwrap).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrappedKey {
    /// The KEK that wrapped it.
    pub kek_id: KeyId,
    /// nonce || ciphertext+tag.
    pub bytes: Vec<u8>,
}

/// What a ciphertext is bound to: table, row id, field. Encoded unambiguously
/// (length-prefixed) as the GCM AAD.
#[derive(Debug, Clone, Copy)]
pub struct Aad<'a> {
    /// The table the value is stored in.
    pub table: &'a str,
    /// The row's id, e.g. the task id.
    pub row: &'a str,
    /// The column or field within the row.
    pub field: &'a str,
}

impl Aad<'_> {
    /// version || (u64 big-endian length || bytes) for table, row and field, so no two
    /// different triples encode alike.
    fn encode(&self, version: u8) -> Vec<u8> {
        let parts = [self.table, self.row, self.field];
        let mut out = Vec::with_capacity(1 + parts.iter().map(|p| 8 + p.len()).sum::<usize>());
        out.push(version);
        for part in parts {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

impl KeyRing {
    /// Wraps `key` with the active KEK, bound to `data_key_id` (the data-key row's id).
    pub fn wrap(&self, key: &DataKey, data_key_id: &str) -> Result<WrappedKey, CryptoError> {
        let kek = self.active();
        let mut nonce = [0u8; NONCE_LEN];
        fill_unique(&mut nonce);
        let mut body: Secret = key.key.clone();
        let tag = cipher(kek.bytes())
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                data_key_id.as_bytes(),
                &mut body[..],
            )
            .map_err(|_| CryptoError::Malformed("data key id too long for AES-GCM"))?;
        let mut bytes = Vec::with_capacity(WRAPPED_LEN);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&body[..]);
        bytes.extend_from_slice(&tag);
        Ok(WrappedKey {
            kek_id: kek.id().clone(),
            bytes,
        })
    }

    /// Unwraps with whichever held KEK `wrapped.kek_id` names: `UnknownKey` if none,
    /// `Decrypt` if the bytes were tampered with or belong to another `data_key_id`.
    pub fn unwrap(&self, wrapped: &WrappedKey, data_key_id: &str) -> Result<DataKey, CryptoError> {
        let kek = self
            .kek(&wrapped.kek_id)
            .ok_or_else(|| CryptoError::UnknownKey(wrapped.kek_id.to_string()))?;
        if wrapped.bytes.len() != WRAPPED_LEN {
            return Err(CryptoError::Malformed(
                "wrapped key is not nonce, 32-byte key and tag",
            ));
        }
        let (nonce, rest) = wrapped.bytes.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(KEY_LEN);
        let mut key: Secret = Box::default();
        key.copy_from_slice(body);
        cipher(kek.bytes())
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                data_key_id.as_bytes(),
                &mut key[..],
                Tag::from_slice(tag),
            )
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(DataKey { key })
    }

    /// Unwraps with the KEK that wrapped it (active or retiring) and wraps again with the
    /// active one; the data the key sealed stays as it is.
    pub fn rewrap(
        &self,
        wrapped: &WrappedKey,
        data_key_id: &str,
    ) -> Result<WrappedKey, CryptoError> {
        let key = self.unwrap(wrapped, data_key_id)?;
        self.wrap(&key, data_key_id)
    }
}

/// An AES-256-GCM instance for one operation. (Its key schedule is not wiped on drop unless
/// `aes-gcm`'s `zeroize` feature is on; it lives only for the call.)
fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use proptest::prelude::*;

    use super::*;
    use crate::crypto::Kek;

    const AAD: Aad<'static> = Aad {
        table: "tasks",
        row: "task_01",
        field: "context",
    };

    fn kek(id: &str, seed: u8) -> Kek {
        Kek::from_bytes(
            KeyId::new(id).unwrap(),
            std::array::from_fn(|i| seed.wrapping_add(i as u8)),
        )
    }

    #[test]
    fn seal_then_open_gives_the_plaintext_back() {
        let key = DataKey::generate().unwrap();
        for plain in [&b""[..], b"x", br#"{"customer_email":"jane@example.com"}"#] {
            let sealed = key.seal(plain, AAD).unwrap();
            assert_eq!(sealed.len(), SEALED_MIN_LEN + plain.len());
            assert_eq!(sealed[0], SEAL_VERSION);
            assert_eq!(key.open(&sealed, AAD).unwrap(), plain);
        }
    }

    #[test]
    fn sealed_bytes_do_not_contain_the_plaintext() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"jane@example.com", AAD).unwrap();
        assert!(!sealed.windows(4).any(|w| w == b"jane"));
    }

    #[test]
    fn another_data_key_cannot_open() {
        let sealed = DataKey::generate().unwrap().seal(b"secret", AAD).unwrap();
        let other = DataKey::generate().unwrap();
        assert!(matches!(
            other.open(&sealed, AAD),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_or_field_fails() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"secret", AAD).unwrap();
        let moved = [
            Aad {
                row: "task_02",
                ..AAD
            },
            Aad {
                field: "result",
                ..AAD
            },
            Aad {
                table: "steps",
                ..AAD
            },
        ];
        for aad in moved {
            assert!(
                matches!(key.open(&sealed, aad), Err(CryptoError::Decrypt)),
                "{aad:?}"
            );
        }
    }

    #[test]
    fn aad_parts_cannot_be_shifted_across_boundaries() {
        let key = DataKey::generate().unwrap();
        let a = Aad {
            table: "t",
            row: "ab",
            field: "c",
        };
        let b = Aad {
            table: "t",
            row: "a",
            field: "bc",
        };
        let sealed = key.seal(b"secret", a).unwrap();
        assert!(matches!(key.open(&sealed, b), Err(CryptoError::Decrypt)));
    }

    #[test]
    fn sealing_twice_uses_fresh_nonces() {
        let key = DataKey::generate().unwrap();
        let one = key.seal(b"same", AAD).unwrap();
        let two = key.seal(b"same", AAD).unwrap();
        assert_ne!(one[1..1 + NONCE_LEN], two[1..1 + NONCE_LEN]);
        assert_ne!(one, two);
    }

    /// Nonces come from a generator per thread: threads sealing at once under one key
    /// must still never share one (a repeated nonce under a key breaks AES-GCM).
    #[test]
    fn threads_sealing_at_once_never_repeat_a_nonce() {
        let key = std::sync::Arc::new(DataKey::generate().unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let key = key.clone();
                std::thread::spawn(move || {
                    (0..2_000)
                        .map(|_| {
                            let sealed = key.seal(b"same", AAD).unwrap();
                            <[u8; NONCE_LEN]>::try_from(&sealed[1..1 + NONCE_LEN]).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for nonce in thread.join().unwrap() {
                assert!(seen.insert(nonce), "a nonce came twice");
            }
        }
        assert_eq!(seen.len(), 16_000);
    }

    #[test]
    fn an_unknown_version_is_malformed() {
        let key = DataKey::generate().unwrap();
        let mut sealed = key.seal(b"secret", AAD).unwrap();
        sealed[0] = 2;
        assert!(matches!(
            key.open(&sealed, AAD),
            Err(CryptoError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn flipping_any_bit_is_detected(
            plain in proptest::collection::vec(any::<u8>(), 0..64),
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let key = DataKey::generate().unwrap();
            let mut sealed = key.seal(&plain, AAD).unwrap();
            let i = pos.index(sealed.len());
            sealed[i] ^= 1 << bit;
            match key.open(&sealed, AAD) {
                Err(CryptoError::Malformed(_)) => prop_assert_eq!(i, 0),
                Err(CryptoError::Decrypt) => prop_assert!(i > 0),
                other => prop_assert!(false, "byte {} flipped, got {:?}", i, other),
            }
        }

        #[test]
        fn truncated_input_is_malformed(len in 0..SEALED_MIN_LEN) {
            let key = DataKey::generate().unwrap();
            let sealed = key.seal(b"", AAD).unwrap();
            prop_assert!(matches!(key.open(&sealed[..len], AAD), Err(CryptoError::Malformed(_))));
        }

        #[test]
        fn a_cut_short_value_never_opens(cut in 1usize..40) {
            let key = DataKey::generate().unwrap();
            let sealed = key.seal(&[7u8; 24], AAD).unwrap();
            let short = &sealed[..sealed.len() - cut];
            prop_assert!(key.open(short, AAD).is_err());
        }
    }

    #[test]
    fn wrap_then_unwrap_gives_a_key_that_opens_its_data() {
        let ring = KeyRing::new(kek("kek-a", 1));
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"context", AAD).unwrap();
        let wrapped = ring.wrap(&key, "dk_1").unwrap();
        assert_eq!(wrapped.kek_id.as_str(), "kek-a");
        assert_eq!(wrapped.bytes.len(), WRAPPED_LEN);
        assert!(!wrapped.bytes.windows(8).any(|w| w == &key.key[..8]));
        let unwrapped = ring.unwrap(&wrapped, "dk_1").unwrap();
        assert_eq!(unwrapped.open(&sealed, AAD).unwrap(), b"context");
    }

    #[test]
    fn unwrap_without_the_kek_is_unknown_key() {
        let wrapped = KeyRing::new(kek("kek-a", 1))
            .wrap(&DataKey::generate().unwrap(), "dk_1")
            .unwrap();
        let other = KeyRing::new(kek("kek-b", 2));
        match other.unwrap(&wrapped, "dk_1") {
            Err(CryptoError::UnknownKey(id)) => assert_eq!(id, "kek-a"),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
    }

    #[test]
    fn a_different_kek_under_the_same_id_fails_to_decrypt() {
        let wrapped = KeyRing::new(kek("kek-a", 1))
            .wrap(&DataKey::generate().unwrap(), "dk_1")
            .unwrap();
        let impostor = KeyRing::new(kek("kek-a", 99));
        assert!(matches!(
            impostor.unwrap(&wrapped, "dk_1"),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn a_wrapped_key_moved_to_another_row_fails() {
        let ring = KeyRing::new(kek("kek-a", 1));
        let wrapped = ring.wrap(&DataKey::generate().unwrap(), "dk_1").unwrap();
        assert!(matches!(
            ring.unwrap(&wrapped, "dk_2"),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn a_tampered_or_short_wrapped_key_fails() {
        let ring = KeyRing::new(kek("kek-a", 1));
        let wrapped = ring.wrap(&DataKey::generate().unwrap(), "dk_1").unwrap();
        for i in 0..wrapped.bytes.len() {
            let mut bad = wrapped.clone();
            bad.bytes[i] ^= 0x01;
            assert!(
                matches!(ring.unwrap(&bad, "dk_1"), Err(CryptoError::Decrypt)),
                "byte {i}"
            );
        }
        let mut short = wrapped.clone();
        short.bytes.pop();
        assert!(matches!(
            ring.unwrap(&short, "dk_1"),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn rotation_rewraps_without_reencrypting_and_retiring_drops_the_old_kek() {
        let mut ring = KeyRing::new(kek("kek-old", 1));
        let key = DataKey::generate().unwrap();
        let sealed = key.seal(b"before rotation", AAD).unwrap();
        let wrapped = ring.wrap(&key, "dk_1").unwrap();
        drop(key);

        let new_id = ring.rotate().unwrap();
        assert_eq!(ring.active_id(), &new_id);
        // Old key ids keep decrypting until retired.
        let still = ring.unwrap(&wrapped, "dk_1").unwrap();
        assert_eq!(still.open(&sealed, AAD).unwrap(), b"before rotation");

        let rewrapped = ring.rewrap(&wrapped, "dk_1").unwrap();
        assert_eq!(rewrapped.kek_id, new_id);
        assert_ne!(rewrapped.bytes, wrapped.bytes);

        ring.retire(&KeyId::new("kek-old").unwrap()).unwrap();
        let key = ring.unwrap(&rewrapped, "dk_1").unwrap();
        assert_eq!(key.open(&sealed, AAD).unwrap(), b"before rotation");
        match ring.unwrap(&wrapped, "dk_1") {
            Err(CryptoError::UnknownKey(id)) => assert_eq!(id, "kek-old"),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
    }

    #[test]
    fn debug_of_a_data_key_shows_no_key_bytes() {
        let key = DataKey::generate().unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert_eq!(shown, "DataKey(..) DataKey(..)");
        assert!(!shown.contains(&hex::encode(&key.key[..])));
        assert!(!shown.contains(&B64.encode(&key.key[..])));
    }
}
