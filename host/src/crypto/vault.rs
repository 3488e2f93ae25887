//! The subject vault: one random 256-bit pad per data subject, kept in a small SQLite file
//! of its own beside the key file — never in the database or its backups.
//!
//! A subject's data key is stored (wrapped by the KEK as every data key is) only masked
//! with the subject's pad: `stored = wrap(key XOR pad)`. Opening it needs the KEK *and* the
//! pad. Erasure deletes the pad (the file runs with `secure_delete` and a rollback
//! journal, so the deleted bytes are overwritten, not left in a page or a WAL), after
//! which the masked key in any copy of the database — the live one or a backup taken
//! before — is a uniformly random string that says nothing about the key. That is the
//! difference to destroying the wrapped key in the database alone: a backup still holds
//! it, and the KEK still opens it.
//!
//! The vault is a file: every process that opens subject data must reach the same one
//! (processes on one host share the data directory; hosts sharing a PostgreSQL database
//! need it on shared storage). Back it up with the key file, not with the database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use zeroize::Zeroizing;

use super::envelope::DataKey;
use super::fill_random;

/// The pad's length: a data key's.
const PAD_LEN: usize = 32;

/// How long a pad read from the file stays in this process's memory. Opening a subject's
/// key takes its pad every time a step of theirs runs; reading the file each time cost a
/// statement per key per claim. The cache does not outlive an erasure's effect: erasure
/// destroys the subject's data key in the database before it deletes the pad, and a
/// destroyed key is refused before its pad is asked for, so a pad still cached here (in
/// another process than the one that erased) opens nothing. It only bounds how long the
/// bytes linger in memory.
const PAD_CACHE_TTL: Duration = Duration::from_secs(60);

/// Most pads held in memory at once; past it the cache starts over.
const PAD_CACHE_MAX: usize = 100_000;

/// Why the vault could not be used.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The file could not be opened, created or written.
    #[error("subject vault {path}: {problem}")]
    Unavailable {
        /// The vault's path.
        path: PathBuf,
        /// What went wrong (never a pad).
        problem: String,
    },
    /// A stored pad is not 32 bytes: the file was tampered with.
    #[error("subject vault {0}: a stored pad is malformed")]
    Malformed(PathBuf),
    /// No randomness for a new pad.
    #[error("no randomness for a subject pad: {0}")]
    Random(String),
}

/// A subject's pad. Zeroized on drop; `Debug` shows nothing.
pub struct Pad(Zeroizing<[u8; PAD_LEN]>);

impl std::fmt::Debug for Pad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pad(..)")
    }
}

impl DataKey {
    /// This key XOR `pad`: masks a subject's key before wrapping, and unmasks it after.
    pub fn masked(&self, pad: &Pad) -> DataKey {
        let mut bytes = Zeroizing::new([0u8; PAD_LEN]);
        for (out, (k, p)) in bytes.iter_mut().zip(self.bytes().iter().zip(pad.0.iter())) {
            *out = k ^ p;
        }
        DataKey::from_bytes(&bytes)
    }
}

impl Pad {
    fn copy(bytes: &[u8; PAD_LEN]) -> Self {
        Pad(Zeroizing::new(*bytes))
    }
}

/// Pads read recently, by subject; see [`PAD_CACHE_TTL`].
#[derive(Default)]
struct PadCache(Mutex<HashMap<String, (Instant, Zeroizing<[u8; PAD_LEN]>)>>);

impl PadCache {
    fn get(&self, subject: &str) -> Option<Pad> {
        let mut pads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match pads.get(subject) {
            Some((at, bytes)) if at.elapsed() < PAD_CACHE_TTL => Some(Pad::copy(bytes)),
            Some(_) => {
                pads.remove(subject);
                None
            }
            None => None,
        }
    }

    fn put(&self, subject: &str, pad: &Pad) {
        let mut pads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pads.len() >= PAD_CACHE_MAX {
            pads.clear();
        }
        pads.insert(subject.to_owned(), (Instant::now(), Zeroizing::new(*pad.0)));
    }

    fn forget(&self, subject: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(subject);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The vault file.
#[derive(Clone)]
pub struct SubjectVault {
    pool: SqlitePool,
    path: PathBuf,
    cache: Arc<PadCache>,
    /// New subjects waiting for a pad, and the turn to write them: see
    /// [`SubjectVault::pads_or_create`].
    making: Arc<Making>,
}

/// Takes a caller's subjects out of the queue when the caller is done (one entry each:
/// another caller may have queued the same subject, and writes it itself if need be).
struct Unqueue<'a> {
    making: &'a Making,
    subjects: &'a [String],
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        let mut queued = lock(&self.making.queued);
        for subject in self.subjects {
            if let Some(at) = queued.iter().position(|q| q == subject) {
                queued.swap_remove(at);
            }
        }
    }
}

/// Group commit for new pads. Each write of the file is a synced commit (milliseconds);
/// callers that want pads while one is being written queue their subjects here, and the
/// next to take the turn writes everything queued in one commit.
#[derive(Default)]
struct Making {
    queued: Mutex<Vec<String>>,
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SubjectVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectVault")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SubjectVault {
    /// Open the vault at `path`, which must exist: a process joining an installation
    /// (a worker, a retention run) must use its vault, never start an empty one, or every
    /// subject would look erased to it.
    pub async fn open_existing(path: &Path) -> Result<Self, VaultError> {
        if !path.exists() {
            return Err(VaultError::Unavailable {
                path: path.to_owned(),
                problem: "no such file: give the installation's vault".into(),
            });
        }
        Self::open(path).await
    }

    /// Open the vault at `path`, creating it (owner-only) if it does not exist.
    pub async fn open(path: &Path) -> Result<Self, VaultError> {
        let unavailable = |problem: String| VaultError::Unavailable {
            path: path.to_owned(),
            problem,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(e.kind().to_string()))?;
        }
        if !path.exists() {
            crate::auth::write_private(path, b"").map_err(|e| unavailable(e.kind().to_string()))?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| unavailable(e.to_string()))?
            // A rollback journal and secure_delete: an erased pad is overwritten in place
            // and no copy of its page lingers in a write-ahead log.
            .journal_mode(SqliteJournalMode::Delete)
            .pragma("secure_delete", "ON")
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS pads (
                 subject     TEXT    NOT NULL PRIMARY KEY,
                 pad         BLOB    NOT NULL,
                 created_at  INTEGER NOT NULL
             ) STRICT",
        )
        .execute(&pool)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
        Ok(Self {
            pool,
            path: path.to_owned(),
            cache: Arc::default(),
            making: Arc::default(),
        })
    }

    fn unavailable(&self, e: sqlx::Error) -> VaultError {
        VaultError::Unavailable {
            path: self.path.clone(),
            problem: e.to_string(),
        }
    }

    fn pad_of(&self, bytes: Vec<u8>) -> Result<Pad, VaultError> {
        let bytes: [u8; PAD_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Malformed(self.path.clone()))?;
        Ok(Pad(Zeroizing::new(bytes)))
    }

    /// The pad of `subject` (a blind index), if it has one: none once erased.
    pub async fn pad(&self, subject: &str) -> Result<Option<Pad>, VaultError> {
        if let Some(pad) = self.cache.get(subject) {
            return Ok(Some(pad));
        }
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT pad FROM pads WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
        let pad = row.map(|(bytes,)| self.pad_of(bytes)).transpose()?;
        if let Some(pad) = &pad {
            self.cache.put(subject, pad);
        }
        Ok(pad)
    }

    /// `subject`'s pad if this process holds it in memory: what a caller that must not
    /// wait (inside a database transaction) can have.
    pub fn cached_pad(&self, subject: &str) -> Option<Pad> {
        self.cache.get(subject)
    }

    /// The pads of those of `subjects` that have one, by subject: from memory, and what
    /// is not there from the file in one statement.
    pub async fn pads(&self, subjects: &[&str]) -> Result<HashMap<String, Pad>, VaultError> {
        let mut found = HashMap::with_capacity(subjects.len());
        let mut missing = Vec::new();
        for subject in subjects {
            match self.cache.get(subject) {
                Some(pad) => {
                    found.insert((*subject).to_owned(), pad);
                }
                None => missing.push(*subject),
            }
        }
        for batch in missing.chunks(500) {
            let sql = format!(
                "SELECT subject, pad FROM pads WHERE subject IN ({})",
                vec!["?"; batch.len()].join(", ")
            );
            let mut query = sqlx::query_as::<_, (String, Vec<u8>)>(&sql);
            for subject in batch {
                query = query.bind(*subject);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.unavailable(e))?;
            for (subject, bytes) in rows {
                let pad = self.pad_of(bytes)?;
                self.cache.put(&subject, &pad);
                found.insert(subject, pad);
            }
        }
        Ok(found)
    }

    /// The pad of `subject`, made if it has none. Two processes racing get the same pad.
    pub async fn pad_or_create(&self, subject: &str, now_ms: i64) -> Result<Pad, VaultError> {
        if let Some(pad) = self.cache.get(subject) {
            return Ok(pad);
        }
        self.pads_or_create(&[subject], now_ms).await?;
        self.pad(subject)
            .await?
            .ok_or_else(|| VaultError::Malformed(self.path.clone()))
    }

    /// Make sure each of `subjects` has a pad, in one write of the file however many are
    /// new (each write is a commit with its own sync), and keep them in memory. Callers at
    /// the same moment share writes: one writes what all of them queued meanwhile.
    pub async fn pads_or_create(&self, subjects: &[&str], now_ms: i64) -> Result<(), VaultError> {
        let missing = |subjects: &mut dyn Iterator<Item = &str>| -> Vec<String> {
            subjects
                .filter(|subject| self.cache.get(subject).is_none())
                .map(str::to_owned)
                .collect()
        };
        let mine = missing(&mut subjects.iter().copied());
        if mine.is_empty() {
            return Ok(());
        }
        lock(&self.making.queued).extend(mine.iter().cloned());
        // However this call ends (done, failed, or cancelled), what it queued is not left
        // behind for a later writer: a subject erased meanwhile must not get a pad again.
        let _queued = Unqueue {
            making: &self.making,
            subjects: &mine,
        };
        let _turn = self.making.turn.lock().await;
        // The writer before may have made ours; what it did not, this one makes, with
        // whatever else is queued.
        let mut wanted = missing(&mut mine.iter().map(String::as_str));
        if wanted.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut *lock(&self.making.queued));
        wanted.extend(missing(&mut queued.iter().map(String::as_str)));
        wanted.sort_unstable();
        wanted.dedup();
        self.write_pads(&wanted, now_ms).await
    }

    /// Store a fresh pad for each of `subjects` that has none, in one transaction, and keep
    /// every one of them in memory.
    async fn write_pads(&self, subjects: &[String], now_ms: i64) -> Result<(), VaultError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.unavailable(e))?;
        let mut stored_pads = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let mut fresh = Zeroizing::new([0u8; PAD_LEN]);
            fill_random(&mut *fresh).map_err(|e| VaultError::Random(e.to_string()))?;
            let stored: (Vec<u8>,) = sqlx::query_as(
                "INSERT INTO pads (subject, pad, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (subject) DO UPDATE SET subject = excluded.subject
                 RETURNING pad",
            )
            .bind(subject)
            .bind(&fresh[..])
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.unavailable(e))?;
            stored_pads.push((subject, self.pad_of(stored.0)?));
        }
        tx.commit().await.map_err(|e| self.unavailable(e))?;
        // Only once they are in the file: a pad never stored must never mask a key.
        for (subject, pad) in &stored_pads {
            self.cache.put(subject, pad);
        }
        Ok(())
    }

    /// Delete `subject`'s pad for good. Returns whether it had one.
    pub async fn erase(&self, subject: &str) -> Result<bool, VaultError> {
        self.cache.forget(subject);
        let done = sqlx::query("DELETE FROM pads WHERE subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
        // Again: a read racing the delete may have cached it meanwhile.
        self.cache.forget(subject);
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pad_is_kept_shared_and_erased_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let vault = SubjectVault::open(&path).await.unwrap();
        let pad = vault.pad_or_create("bi_1", 0).await.unwrap();
        let again = SubjectVault::open(&path).await.unwrap();
        let same = again.pad_or_create("bi_1", 1).await.unwrap();
        assert_eq!(*pad.0, *same.0);

        let key = DataKey::generate().unwrap();
        let masked = key.masked(&pad);
        assert_ne!(masked.bytes()[..], key.bytes()[..]);
        assert_eq!(masked.masked(&same).bytes()[..], key.bytes()[..]);

        let secret = *pad.0;
        assert!(vault.erase("bi_1").await.unwrap());
        assert!(vault.pad("bi_1").await.unwrap().is_none());
        assert!(!vault.erase("bi_1").await.unwrap());
        vault.pool.close().await;
        again.pool.close().await;
        let file = std::fs::read(&path).unwrap();
        assert!(
            !file.windows(PAD_LEN).any(|w| w == secret),
            "the erased pad's bytes are still in the file"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_at_the_same_moment_share_writes_and_get_the_same_pads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let vault = SubjectVault::open(&path).await.unwrap();
        // 16 callers, each wanting 8 subjects, half of them wanted by another caller too.
        let callers: Vec<_> = (0..16)
            .map(|caller| {
                let vault = vault.clone();
                tokio::spawn(async move {
                    let subjects: Vec<String> =
                        (0..8).map(|n| format!("bi_{}", caller * 4 + n)).collect();
                    let names: Vec<&str> = subjects.iter().map(String::as_str).collect();
                    vault.pads_or_create(&names, 0).await.unwrap();
                    let pads = vault.pads(&names).await.unwrap();
                    assert_eq!(pads.len(), 8, "every subject has a pad");
                    pads.into_iter()
                        .map(|(subject, pad)| (subject, *pad.0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen: HashMap<String, [u8; PAD_LEN]> = HashMap::new();
        for caller in callers {
            for (subject, pad) in caller.await.unwrap() {
                let first = *seen.entry(subject.clone()).or_insert(pad);
                assert_eq!(first, pad, "{subject} got two different pads");
            }
        }
        assert_eq!(seen.len(), 15 * 4 + 8);
        // What the callers were given is what the file holds.
        let reopened = SubjectVault::open_existing(&path).await.unwrap();
        let names: Vec<&str> = seen.keys().map(String::as_str).collect();
        let stored = reopened.pads(&names).await.unwrap();
        for (subject, pad) in &seen {
            assert_eq!(*stored[subject].0, *pad, "{subject} in the file");
        }
        assert!(reopened.pads(&["bi_never"]).await.unwrap().is_empty());
        // Nothing is left queued, so an erased subject never gets a pad again from a
        // later caller's write.
        assert!(lock(&vault.making.queued).is_empty());
        assert!(vault.erase("bi_0").await.unwrap());
        vault.pads_or_create(&["bi_fresh"], 1).await.unwrap();
        assert!(vault.pad("bi_0").await.unwrap().is_none());
        let fresh = SubjectVault::open_existing(&path).await.unwrap();
        assert!(
            fresh.pads(&["bi_0"]).await.unwrap().is_empty(),
            "in the file"
        );
    }
}
