//! The keyed blind index: how a data subject's rows and data key are found without storing
//! the subject's identifier in plaintext.

use std::borrow::Cow;
use std::fmt;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::keys::{KEY_LEN, Secret, secret_from};

/// Prefix of every index value, so a blind-index reference is recognisable in audit rows.
const PREFIX: &str = "bi_";

/// Keyed blind index: HMAC-SHA256 over a normalised identifier (trim; emails lowercased;
/// other ids as given), hex-encoded, prefixed "bi_". Two spellings of the same email
/// ("Jane@Example.com ", "jane@example.com") map to the same index; different subjects never
/// collide in practice. Without the key, an index cannot be recomputed from a guessed
/// identifier. Debug prints `BlindIndex(..)`; the key is zeroized on drop.
#[derive(Clone)]
pub struct BlindIndex {
    key: Secret,
}

impl BlindIndex {
    /// An index under `key` (the argument's copy is wiped).
    pub fn from_key(mut key: [u8; 32]) -> Self {
        Self {
            key: secret_from(&mut key),
        }
    }

    /// The index of `identifier`: `bi_` followed by 64 lowercase hex digits.
    pub fn index(&self, identifier: &str) -> String {
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.key[..])
            .expect("HMAC accepts keys of any length");
        mac.update(normalise(identifier).as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(PREFIX.len() + 2 * digest.len());
        out.push_str(PREFIX);
        out.push_str(&hex::encode(digest));
        out
    }

    /// An index over a key already on the heap.
    pub(super) fn from_secret(key: Secret) -> Self {
        Self { key }
    }

    /// The index key, for the key file only.
    pub(super) fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndex(..)")
    }
}

/// Trims surrounding whitespace; lowercases anything that looks like an email (has an `@`).
/// Other identifiers (customer ids, account numbers) are case-sensitive and kept as given.
fn normalise(identifier: &str) -> Cow<'_, str> {
    let trimmed = identifier.trim();
    if trimmed.contains('@') {
        Cow::Owned(trimmed.to_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    const KEY: [u8; 32] = [
        0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff, 0x00,
    ];

    #[test]
    fn index_is_prefixed_hex_of_an_hmac() {
        let idx = BlindIndex::from_key(KEY).index("cust_42");
        let hex_part = idx.strip_prefix("bi_").expect("bi_ prefix");
        assert_eq!(hex_part.len(), 64);
        assert!(
            hex_part
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(!idx.contains("cust_42"));
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&KEY).unwrap();
        mac.update(b"cust_42");
        assert_eq!(hex_part, hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn spellings_of_one_email_share_an_index() {
        let bi = BlindIndex::from_key(KEY);
        let want = bi.index("jane@example.com");
        for spelling in [
            "Jane@Example.com ",
            " JANE@EXAMPLE.COM",
            "\tjane@example.com\n",
        ] {
            assert_eq!(bi.index(spelling), want, "{spelling:?}");
        }
    }

    #[test]
    fn other_ids_are_trimmed_but_keep_their_case() {
        let bi = BlindIndex::from_key(KEY);
        assert_eq!(bi.index(" cust_42 "), bi.index("cust_42"));
        assert_ne!(bi.index("ABC-1"), bi.index("abc-1"));
    }

    #[test]
    fn different_subjects_get_different_indexes() {
        let bi = BlindIndex::from_key(KEY);
        assert_ne!(bi.index("jane@example.com"), bi.index("john@example.com"));
        assert_ne!(bi.index("jane@example.com"), bi.index("jane@example.org"));
        assert_ne!(bi.index("cust_1"), bi.index("cust_2"));
    }

    #[test]
    fn different_keys_give_different_indexes() {
        let mut other = KEY;
        other[31] ^= 1;
        assert_ne!(
            BlindIndex::from_key(KEY).index("jane@example.com"),
            BlindIndex::from_key(other).index("jane@example.com")
        );
    }

    #[test]
    fn a_clone_indexes_alike() {
        let bi = BlindIndex::from_key(KEY);
        assert_eq!(bi.clone().index("cust_42"), bi.index("cust_42"));
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let bi = BlindIndex::from_key(KEY);
        let shown = format!("{bi:?} {bi:#?}");
        assert_eq!(format!("{bi:?}"), "BlindIndex(..)");
        assert!(!shown.contains(&hex::encode(KEY)));
        assert!(!shown.contains(&base64::engine::general_purpose::STANDARD.encode(KEY)));
        assert!(!shown.contains("16, 50"));
    }
}
