//! The key file and the key environment variable: reading, validating and atomically writing
//! a key ring without ever echoing what a file or variable contains.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::{Zeroize as _, Zeroizing};

use super::{KEY_LEN, Kek, KeyId, KeyRing, Secret, derive_index_key};
use crate::crypto::{BlindIndex, CryptoError, fill_random};

impl KeyRing {
    /// Key file format (JSON, written 0600 on unix): {"active": "<id>", "keys": [{"id": "...", "key": "<base64 32 bytes>", "created_at": "<RFC3339 or unix secs as string>"}], "index_key": "<base64 32 bytes>"}.
    /// Without `index_key` the blind-index key is derived from the active KEK, as in `new`.
    /// Errors name the path and the problem, never the file's content.
    pub fn load_file(path: &Path) -> Result<Self, CryptoError> {
        let source = path.display().to_string();
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => file_err(&source, "not found"),
            _ => file_err(&source, format!("cannot be read: {e}")),
        })?);
        Self::from_json(&bytes, &source)
    }

    /// Writes the ring in the key-file format, atomically (a temporary file in the same
    /// directory, synced, then renamed over `path`), readable by the owner only on unix.
    pub fn save_file(&self, path: &Path) -> Result<(), CryptoError> {
        let source = path.display().to_string();
        let repr = self.to_repr();
        let mut json = Zeroizing::new(Vec::with_capacity(512 + 160 * repr.keys.len()));
        serde_json::to_writer_pretty(&mut *json, &repr)
            .map_err(|_| file_err(&source, "cannot be encoded"))?;
        json.push(b'\n');
        write_atomic(path, &json).map_err(|e| file_err(&source, format!("cannot be written: {e}")))
    }

    /// From an env var holding the same JSON as the key file, or a single key written
    /// `<id>:<base64 32 bytes>` (its blind-index key derived from it, as in `new`).
    pub fn from_env(var: &str) -> Result<Self, CryptoError> {
        let source = format!("environment variable {var}");
        let value = Zeroizing::new(std::env::var(var).map_err(|e| match e {
            std::env::VarError::NotPresent => file_err(&source, "is not set"),
            std::env::VarError::NotUnicode(_) => file_err(&source, "is not valid UTF-8"),
        })?);
        Self::from_env_value(&value, &source)
    }

    /// Parses the value of a key environment variable; `source` names it in errors.
    fn from_env_value(value: &str, source: &str) -> Result<Self, CryptoError> {
        let value = value.trim();
        if value.starts_with('{') {
            return Self::from_json(value.as_bytes(), source);
        }
        let (id, key) = value
            .split_once(':')
            .ok_or_else(|| file_err(source, "must be key-file JSON or `<id>:<base64 key>`"))?;
        let id = KeyId::new(id).map_err(|_| file_err(source, BAD_ID))?;
        let key =
            decode_key(key).ok_or_else(|| file_err(source, "key is not base64 of 32 bytes"))?;
        Ok(Self::new(Kek { id, key }))
    }

    fn from_json(bytes: &[u8], source: &str) -> Result<Self, CryptoError> {
        let repr: KeyFileRepr =
            serde_json::from_slice(bytes).map_err(|e| file_err(source, json_problem(&e)))?;
        if repr.keys.is_empty() {
            return Err(file_err(source, "`keys` is empty"));
        }
        let mut keks: Vec<Kek> = Vec::with_capacity(repr.keys.len());
        let mut created_at = Vec::with_capacity(repr.keys.len());
        for (i, entry) in repr.keys.iter().enumerate() {
            let id = KeyId::new(entry.id.as_str())
                .map_err(|_| file_err(source, format!("keys[{i}].id: {BAD_ID}")))?;
            if keks.iter().any(|k| k.id == id) {
                return Err(file_err(
                    source,
                    format!("keys[{i}].id repeats an earlier id"),
                ));
            }
            let key = decode_key(&entry.key).ok_or_else(|| {
                file_err(source, format!("keys[{i}].key is not base64 of 32 bytes"))
            })?;
            if let Some(at) = &entry.created_at {
                created_at.push((id.clone(), at.clone()));
            }
            keks.push(Kek { id, key });
        }
        let pos = keks
            .iter()
            .position(|k| k.id.as_str() == repr.active)
            .ok_or_else(|| file_err(source, "`active` names none of the ids in `keys`"))?;
        let active = keks.remove(pos);
        let index_key = match &repr.index_key {
            Some(encoded) => decode_key(encoded)
                .ok_or_else(|| file_err(source, "index_key is not base64 of 32 bytes"))?,
            None => derive_index_key(&active),
        };
        Ok(Self {
            active,
            retiring: keks,
            created_at,
            index: BlindIndex::from_secret(index_key),
        })
    }

    fn to_repr(&self) -> KeyFileRepr {
        let keys = std::iter::once(&self.active)
            .chain(&self.retiring)
            .map(|k| KeyEntry {
                id: k.id.to_string(),
                key: B64.encode(k.bytes()),
                created_at: self
                    .created_at
                    .iter()
                    .find(|(id, _)| *id == k.id)
                    .map(|(_, at)| at.clone()),
            })
            .collect();
        KeyFileRepr {
            active: self.active.id.to_string(),
            keys,
            index_key: Some(B64.encode(self.index.key())),
        }
    }
}

/// What an invalid id in a key file or variable is told, without echoing it.
const BAD_ID: &str = "key id must be 1–64 characters of A-Z a-z 0-9 . _ -";

/// The key file as written on disk. Key strings are wiped when it is dropped.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileRepr {
    active: String,
    keys: Vec<KeyEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index_key: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
}

impl Drop for KeyFileRepr {
    fn drop(&mut self) {
        self.index_key.zeroize();
    }
}

impl Drop for KeyEntry {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

fn file_err(source: &str, problem: impl Into<String>) -> CryptoError {
    CryptoError::KeyFile {
        path: source.to_owned(),
        problem: problem.into(),
    }
}

/// Describes a JSON error by kind and position only: serde_json's own messages quote the
/// offending value or field name, which could be key material.
fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "cannot be read",
        Category::Syntax => "is not valid JSON",
        Category::Eof => "ends early (truncated?)",
        Category::Data => {
            "does not have the key-file shape {active, keys: [{id, key, created_at}], index_key}"
        }
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// Decodes standard base64 of exactly 32 bytes without a heap copy of the key.
fn decode_key(encoded: &str) -> Option<Secret> {
    // Large enough for base64's conservative length estimate of a 32-byte key.
    let mut buf = Zeroizing::new([0u8; 48]);
    let len = B64.decode_slice(encoded.trim(), &mut buf[..]).ok()?;
    if len != KEY_LEN {
        return None;
    }
    let mut secret: Secret = Box::default();
    secret.copy_from_slice(&buf[..KEY_LEN]);
    Some(secret)
}

/// Writes `data` to a temporary file beside `path` (owner-only on unix), syncs it and renames
/// it over `path`, so a reader sees the old file or the new one, never half of one.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut suffix = [0u8; 8];
    fill_random(&mut suffix).map_err(io::Error::other)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        // Persist the rename itself; failure here leaves a complete file either way.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;
    use crate::crypto::keys::tests::{assert_hides, bytes, kek};

    fn key_file_problem(result: Result<KeyRing, CryptoError>) -> String {
        match result {
            Err(e @ CryptoError::KeyFile { .. }) => e.to_string(),
            other => panic!("expected a KeyFile error, got {other:?}"),
        }
    }

    #[test]
    fn save_then_load_round_trips_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut ring = KeyRing::new(kek("kek-a", 1));
        ring.rotate().unwrap();
        let wrapped = ring.wrap(&DataKey::generate().unwrap(), "dk_1").unwrap();
        let old_wrapped = KeyRing::new(kek("kek-a", 1))
            .wrap(&DataKey::generate().unwrap(), "dk_0")
            .unwrap();

        ring.save_file(&path).unwrap();
        ring.save_file(&path).unwrap(); // over an existing file
        let loaded = KeyRing::load_file(&path).unwrap();

        assert_eq!(loaded.ids(), ring.ids());
        assert_eq!(loaded.active_id(), ring.active_id());
        assert_eq!(
            loaded.blind_index().index("cust_9"),
            ring.blind_index().index("cust_9")
        );
        loaded.unwrap(&wrapped, "dk_1").unwrap();
        loaded.unwrap(&old_wrapped, "dk_0").unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keys.json"], "temporary file left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_saved_index_key_survives_retiring_the_kek_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut ring = KeyRing::new(kek("kek-a", 1));
        let want = ring.blind_index().index("jane@example.com");
        ring.rotate().unwrap();
        ring.retire(&KeyId::new("kek-a").unwrap()).unwrap();
        ring.save_file(&path).unwrap();
        let loaded = KeyRing::load_file(&path).unwrap();
        assert_eq!(loaded.blind_index().index("jane@example.com"), want);
    }

    #[test]
    fn a_file_names_its_index_key_or_derives_it_from_the_active_kek() {
        let key = B64.encode(bytes(1));
        let index_key = B64.encode(bytes(5));
        let with = format!(
            r#"{{"active":"kek-a","keys":[{{"id":"kek-a","key":"{key}","created_at":"1764000000"}}],"index_key":"{index_key}"}}"#
        );
        let ring = KeyRing::from_json(with.as_bytes(), "test").unwrap();
        let expected = BlindIndex::from_key(bytes(5)).index("cust_1");
        assert_eq!(ring.blind_index().index("cust_1"), expected);

        let without = format!(r#"{{"active":"kek-a","keys":[{{"id":"kek-a","key":"{key}"}}]}}"#);
        let ring = KeyRing::from_json(without.as_bytes(), "test").unwrap();
        let derived = KeyRing::new(kek("kek-a", 1)).blind_index().index("cust_1");
        assert_eq!(ring.blind_index().index("cust_1"), derived);
        assert_ne!(derived, expected);
    }

    #[test]
    fn corrupt_key_files_are_key_file_errors_that_show_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let secret = bytes(7);
        let key = B64.encode(secret);
        let hexkey = hex::encode(secret);
        let good = format!(r#"{{"active":"kek-a","keys":[{{"id":"kek-a","key":"{key}"}}]}}"#);
        let cases = [
            good[..good.len() - 5].to_owned(),
            good.replace("}]}", "}]"),
            format!(r#"{{"active":"kek-a","keys":[{{"id":"kek-a","key":"{key}","{key}":1}}]}}"#),
            format!(
                r#"{{"active":"kek-a","keys":[{{"id":"kek-a","key":"{}"}}]}}"#,
                &key[..40]
            ),
            format!(r#"{{"active":"kek-a","keys":[{{"id":"{key}","key":"{hexkey}"}}]}}"#),
            format!(r#"{{"active":"{key}","keys":[{{"id":"kek-a","key":"{key}"}}]}}"#),
            format!(r#"{{"active":"kek-a","keys":[{{"id":"kek-a","key":["{key}"]}}]}}"#),
            format!(
                r#"{{"active":"kek-a","keys":[{{"id":"kek-a","key":"{key}"}}],"index_key":"{hexkey}"}}"#
            ),
            format!(
                r#"{{"active":"kek-a","keys":[{{"id":"kek-a","key":"{key}"}},{{"id":"kek-a","key":"{key}"}}]}}"#
            ),
            r#"{"active":"kek-a","keys":[]}"#.to_owned(),
            format!("active = {key}"),
        ];
        for (i, case) in cases.iter().enumerate() {
            fs::write(&path, case).unwrap();
            let message = key_file_problem(KeyRing::load_file(&path));
            assert!(message.contains("keys.json"), "case {i}: {message}");
            assert_hides(&message, &secret);
            assert!(
                !message.contains(&key[..12]) && !message.contains(&hexkey[..12]),
                "case {i}: {message}"
            );
        }
    }

    #[test]
    fn a_missing_key_file_is_a_key_file_error() {
        let dir = tempfile::tempdir().unwrap();
        let message = key_file_problem(KeyRing::load_file(&dir.path().join("none.json")));
        assert!(message.contains("not found"), "{message}");
    }

    #[test]
    fn env_values_in_both_formats() {
        let secret = bytes(3);
        let single = format!("kek-env:{}", B64.encode(secret));
        let ring =
            KeyRing::from_env_value(&format!(" {single}\n"), "environment variable K").unwrap();
        assert_eq!(ring.active_id().as_str(), "kek-env");
        assert_eq!(ring.active().bytes(), &secret);
        let same = KeyRing::new(kek("kek-env", 3));
        assert_eq!(
            ring.blind_index().index("a@b.c"),
            same.blind_index().index("a@b.c")
        );

        let mut file_ring = KeyRing::new(kek("kek-a", 1));
        file_ring.rotate().unwrap();
        let json = String::from_utf8(serde_json::to_vec(&file_ring.to_repr()).unwrap()).unwrap();
        let ring = KeyRing::from_env_value(&json, "environment variable K").unwrap();
        assert_eq!(ring.ids(), file_ring.ids());
        assert_eq!(
            ring.blind_index().index("x"),
            file_ring.blind_index().index("x")
        );

        for bad in [
            "",
            "no-colon",
            "kek a:AAAA",
            "kek-a:AAAA",
            &format!("kek-a:{}", hex::encode(secret)),
        ] {
            let message = key_file_problem(KeyRing::from_env_value(bad, "environment variable K"));
            assert!(message.contains("environment variable K"), "{message}");
            assert_hides(&message, &secret);
        }
    }

    #[test]
    fn an_unset_env_var_is_a_key_file_error() {
        let message = key_file_problem(KeyRing::from_env("STEPBOX_TEST_KEYS_SURELY_UNSET_9F2C"));
        assert!(
            message.contains("STEPBOX_TEST_KEYS_SURELY_UNSET_9F2C") && message.contains("not set")
        );
    }
}
