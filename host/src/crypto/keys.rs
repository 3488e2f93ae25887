//! Key ids, key-encryption keys (KEKs) and the key ring a process holds. Its key file and
//! environment-variable forms are in `keys/file.rs`.

mod file;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use zeroize::{Zeroize as _, Zeroizing};

use super::{BlindIndex, CryptoError, fill_random};

/// Length in bytes of every key here: AES-256 and the HMAC-SHA256 index key.
pub(super) const KEY_LEN: usize = 32;

/// Key bytes on the heap, so moving a key never leaves copies behind; zeroized on drop.
pub(super) type Secret = Box<Zeroizing<[u8; KEY_LEN]>>;

/// Longest key id, so an id fits a log line and a database column.
const MAX_KEY_ID_LEN: usize = 64;

/// Label under which a ring with no stored index key derives one from its first active KEK.
const INDEX_KEY_LABEL: &[u8] = b"stepbox blind-index key v1";

/// How many random suffixes `rotate` tries before giving up on finding an unused key id.
const MAX_ID_ATTEMPTS: usize = 64;

/// Copies `bytes` into a fresh heap secret and wipes the caller's copy.
pub(super) fn secret_from(bytes: &mut [u8; KEY_LEN]) -> Secret {
    let mut secret: Secret = Box::default();
    secret.copy_from_slice(&bytes[..]);
    bytes.zeroize();
    secret
}

/// A fresh random key straight from the operating system.
pub(super) fn random_secret() -> Result<Secret, CryptoError> {
    let mut secret: Secret = Box::default();
    fill_random(&mut secret[..])?;
    Ok(secret)
}

/// A key id like "kek-2026-11-25-1a2b" (1–64 chars of [A-Za-z0-9._-]).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// Checks `s` is 1–64 characters of `[A-Za-z0-9._-]`.
    pub fn new(s: impl Into<String>) -> Result<Self, CryptoError> {
        let s = s.into();
        let valid = !s.is_empty()
            && s.len() <= MAX_KEY_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if valid {
            Ok(Self(s))
        } else {
            Err(CryptoError::InvalidKeyId(s))
        }
    }

    /// The id as written in key files and beside wrapped keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for KeyId {
    type Error = CryptoError;
    fn try_from(s: String) -> Result<Self, CryptoError> {
        Self::new(s)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.0
    }
}

/// A 256-bit key-encryption key. Debug prints `Kek(<id>)` only. Zeroized on drop.
pub struct Kek {
    id: KeyId,
    key: Secret,
}

impl Kek {
    /// A new random KEK from the operating system's random number generator.
    pub fn generate(id: KeyId) -> Result<Self, CryptoError> {
        Ok(Self {
            id,
            key: random_secret()?,
        })
    }

    /// A KEK from known bytes (the argument's copy is wiped).
    pub fn from_bytes(id: KeyId, mut bytes: [u8; 32]) -> Self {
        Self {
            id,
            key: secret_from(&mut bytes),
        }
    }

    /// The id stored beside every key this KEK wraps.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The key bytes, for the AES-GCM wrap in `envelope`.
    pub(super) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

/// The KEKs a process holds: one active (used to wrap new data keys), older ones kept to
/// unwrap until retired; plus the blind index, whose key never changes on rotation.
pub struct KeyRing {
    active: Kek,
    /// Older KEKs, oldest first, kept only to unwrap.
    retiring: Vec<Kek>,
    /// `created_at` per held key, as the key file has it (RFC 3339 for keys made here).
    created_at: Vec<(KeyId, String)>,
    index: BlindIndex,
}

impl KeyRing {
    /// A ring with one KEK. Its blind-index key is derived from this first KEK (HMAC-SHA256
    /// under a fixed label) and written to the key file on save, so it stays the same after
    /// the KEK is rotated away or retired.
    pub fn new(active: Kek) -> Self {
        let index = BlindIndex::from_secret(derive_index_key(&active));
        let created_at = vec![(active.id.clone(), rfc3339(now_unix()))];
        Self {
            active,
            retiring: Vec::new(),
            created_at,
            index,
        }
    }

    /// A ring with one freshly generated KEK named `kek-<date>-<random hex>`, for first start.
    pub fn generate() -> Result<Self, CryptoError> {
        let id = fresh_id(|_| false)?;
        Ok(Self::new(Kek::generate(id)?))
    }

    /// Keeps `old` for unwrapping only. A key whose id is already retiring replaces it; a key
    /// with the active key's id is ignored (the active key wins).
    pub fn add_retiring(&mut self, old: Kek) {
        if old.id == self.active.id {
            return;
        }
        self.retiring.retain(|k| k.id != old.id);
        if !self.created_at.iter().any(|(id, _)| *id == old.id) {
            self.created_at.push((old.id.clone(), rfc3339(now_unix())));
        }
        self.retiring.push(old);
    }

    /// Each held key's id and when it was made (RFC 3339, as the key file has it).
    pub fn created(&self) -> &[(KeyId, String)] {
        &self.created_at
    }

    /// The id of the KEK that wraps new data keys.
    pub fn active_id(&self) -> &KeyId {
        &self.active.id
    }

    /// Every held key id: the active one first, then retiring ones oldest first.
    pub fn ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.active)
            .chain(&self.retiring)
            .map(|k| k.id.clone())
            .collect()
    }

    /// Forgets a retiring KEK: data keys still wrapped by it become unreadable (`UnknownKey`),
    /// so re-wrap them first. The active key cannot be retired.
    pub fn retire(&mut self, id: &KeyId) -> Result<(), CryptoError> {
        if *id == self.active.id {
            return Err(CryptoError::RetireActive(id.to_string()));
        }
        let before = self.retiring.len();
        self.retiring.retain(|k| k.id != *id);
        if self.retiring.len() == before {
            return Err(CryptoError::UnknownKey(id.to_string()));
        }
        self.created_at.retain(|(held, _)| held != id);
        Ok(())
    }

    /// Generate a new active KEK, keep the old one(s) for unwrapping. Returns the new id.
    /// The blind index is unchanged.
    pub fn rotate(&mut self) -> Result<KeyId, CryptoError> {
        let id = fresh_id(|id| self.holds(id))?;
        let new = Kek::generate(id.clone())?;
        let old = std::mem::replace(&mut self.active, new);
        self.retiring.push(old);
        self.created_at.push((id.clone(), rfc3339(now_unix())));
        Ok(id)
    }

    /// The blind index for subject lookups. Its key is the ring's dedicated index key, stored
    /// in the key file under "index_key"; it does not change on rotation, or lookups would break.
    pub fn blind_index(&self) -> &BlindIndex {
        &self.index
    }

    /// The held KEK with this id, active or retiring.
    pub(super) fn kek(&self, id: &KeyId) -> Option<&Kek> {
        std::iter::once(&self.active)
            .chain(&self.retiring)
            .find(|k| k.id == *id)
    }

    /// The KEK that wraps new data keys.
    pub(super) fn active(&self) -> &Kek {
        &self.active
    }

    fn holds(&self, id: &KeyId) -> bool {
        self.kek(id).is_some()
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let retiring: Vec<&str> = self.retiring.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("KeyRing")
            .field("active", &self.active.id.as_str())
            .field("retiring", &retiring)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256(kek, label): the blind-index key of a ring that has none stored.
fn derive_index_key(kek: &Kek) -> Secret {
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(kek.bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(INDEX_KEY_LABEL);
    let mut out: Secret = Box::default();
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// A new id `kek-YYYY-MM-DD-xxxx` that `taken` rejects not.
fn fresh_id(taken: impl Fn(&KeyId) -> bool) -> Result<KeyId, CryptoError> {
    let date = &rfc3339(now_unix())[..10];
    for _ in 0..MAX_ID_ATTEMPTS {
        let mut suffix = [0u8; 2];
        fill_random(&mut suffix)?;
        let id = KeyId::new(format!("kek-{date}-{}", hex::encode(suffix)))?;
        if !taken(&id) {
            return Ok(id);
        }
    }
    Err(CryptoError::Random("no unused key id found".into()))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` since the Unix epoch as RFC 3339 UTC, e.g. `2026-11-25T09:30:00Z`.
fn rfc3339(secs: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm, for days on or after 1970-01-01.
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
pub(super) mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    use super::*;

    pub(crate) fn bytes(seed: u8) -> [u8; 32] {
        std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7))
    }

    pub(crate) fn kek(id: &str, seed: u8) -> Kek {
        Kek::from_bytes(KeyId::new(id).unwrap(), bytes(seed))
    }

    /// Fails if `text` shows `key` as hex, base64 or a Rust byte array.
    pub(crate) fn assert_hides(text: &str, key: &[u8; 32]) {
        assert!(!text.contains(&hex::encode(key)), "hex key in {text}");
        assert!(!text.contains(&B64.encode(key)), "base64 key in {text}");
        let array = format!("{:?}", &key[..3]);
        assert!(
            !text.contains(array.trim_end_matches(']')),
            "bytes in {text}"
        );
    }

    #[test]
    fn key_ids_are_checked() {
        for good in ["kek-2026-11-25-1a2b", "a", "A.b_c-9", &"k".repeat(64)] {
            assert_eq!(KeyId::new(good).unwrap().as_str(), good);
        }
        for bad in ["", "a b", "a:b", "a/b", "clé", &"k".repeat(65)] {
            assert!(
                matches!(KeyId::new(bad), Err(CryptoError::InvalidKeyId(_))),
                "{bad:?}"
            );
        }
        assert_eq!(KeyId::new("kek-1").unwrap().to_string(), "kek-1");
    }

    #[test]
    fn key_ids_are_checked_when_deserialised() {
        let id: KeyId = serde_json::from_str("\"kek-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"kek-1\"");
        assert!(serde_json::from_str::<KeyId>("\"kek 1\"").is_err());
    }

    #[test]
    fn retiring_the_active_key_is_refused() {
        let mut ring = KeyRing::new(kek("kek-a", 1));
        ring.add_retiring(kek("kek-old", 2));
        let active = ring.active_id().clone();
        assert!(
            matches!(ring.retire(&active), Err(CryptoError::RetireActive(id)) if id == "kek-a")
        );
        let missing = KeyId::new("kek-missing").unwrap();
        assert!(matches!(
            ring.retire(&missing),
            Err(CryptoError::UnknownKey(_))
        ));
        assert_eq!(ring.ids().len(), 2);
        ring.retire(&KeyId::new("kek-old").unwrap()).unwrap();
        assert_eq!(ring.ids(), vec![active]);
    }

    #[test]
    fn add_retiring_never_displaces_the_active_key() {
        let mut ring = KeyRing::new(kek("kek-a", 1));
        ring.add_retiring(kek("kek-a", 2));
        ring.add_retiring(kek("kek-b", 3));
        ring.add_retiring(kek("kek-b", 4));
        assert_eq!(
            ring.ids().iter().map(KeyId::as_str).collect::<Vec<_>>(),
            ["kek-a", "kek-b"]
        );
        assert_eq!(ring.active().bytes(), &bytes(1));
        assert_eq!(
            ring.kek(&KeyId::new("kek-b").unwrap()).unwrap().bytes(),
            &bytes(4)
        );
    }

    #[test]
    fn rotate_adds_a_new_active_key_and_keeps_the_blind_index() {
        let mut ring = KeyRing::new(kek("kek-a", 1));
        let before = ring.blind_index().index("jane@example.com");
        let new = ring.rotate().unwrap();
        assert_eq!(ring.active_id(), &new);
        assert_eq!(ring.ids(), vec![new.clone(), KeyId::new("kek-a").unwrap()]);
        assert!(
            new.as_str().starts_with("kek-20") && new.as_str().len() == 19,
            "{new}"
        );
        assert_ne!(ring.active().bytes(), &bytes(1));
        assert_eq!(ring.blind_index().index("jane@example.com"), before);
        let newer = ring.rotate().unwrap();
        assert_ne!(newer, new);
        assert_eq!(ring.ids().len(), 3);
    }

    #[test]
    fn debug_of_keks_and_rings_shows_ids_only() {
        let k = kek("kek-a", 9);
        assert_eq!(format!("{k:?}"), "Kek(kek-a)");
        assert_hides(&format!("{k:#?}"), &bytes(9));

        let mut ring = KeyRing::new(k);
        ring.add_retiring(kek("kek-old", 8));
        let shown = format!("{ring:?} {ring:#?}");
        assert!(
            shown.contains("kek-a") && shown.contains("kek-old"),
            "{shown}"
        );
        assert_hides(&shown, &bytes(9));
        assert_hides(&shown, &bytes(8));
        assert_hides(&shown, ring.blind_index().key());
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_603_199), "2026-11-25T10:39:59Z");
    }
}
