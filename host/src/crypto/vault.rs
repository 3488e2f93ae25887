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
//! Pads are made ahead of need, many per synced write, and filed under ids of their own;
//! the database records which pad masks a subject's key (see [`SubjectVault::take_spare`]).
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

/// Pads read recently, by key; see [`PAD_CACHE_TTL`].
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
    /// Pads made ahead for new subjects: see [`SubjectVault::take_spare`].
    spares: Arc<Spares>,
}

/// Pads in the file that no subject has yet, held by this process to hand out.
///
/// Each write of the file is a synced commit (milliseconds): made on demand, a pad held
/// up a new subject's first task for that long. Made ahead, many per write, a pad is in
/// the file before anyone asks for it, and taking one costs nothing; which subject has
/// it is recorded in the database (`data_keys.pad`), in the transaction that stores the
/// subject's key, so a key is never stored masked with a pad the file does not hold. A
/// spare that a process took and never used, or held when it stopped, stays in the file
/// as 32 random bytes that mask nothing.
#[derive(Default)]
struct Spares {
    ready: Mutex<Vec<(String, Pad)>>,
    /// One writer of spares at a time; the others find its pads when they get the turn.
    turn: tokio::sync::Mutex<()>,
    /// A refill is under way in the background.
    refilling: std::sync::atomic::AtomicBool,
}

/// Spares made in one write of the file.
const SPARES_PER_WRITE: usize = 64;

/// Below this many spares, the next one taken starts a refill in the background.
const SPARES_LOW: usize = 32;

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
                 -- The pad's key: its id (`pad_…`), or for a pad made before pads
                 -- had ids, its subject's blind index.
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
            spares: Arc::default(),
        })
    }

    /// Where the vault's file is.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// The pad filed under `key` ([`DataKeyRow::pad_key`](crate::store::DataKeyRow::pad_key)),
    /// if there is one: none once erased.
    pub async fn pad(&self, key: &str) -> Result<Option<Pad>, VaultError> {
        if let Some(pad) = self.cache.get(key) {
            return Ok(Some(pad));
        }
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT pad FROM pads WHERE subject = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
        let pad = row.map(|(bytes,)| self.pad_of(bytes)).transpose()?;
        if let Some(pad) = &pad {
            self.cache.put(key, pad);
        }
        Ok(pad)
    }

    /// `key`'s pad if this process holds it in memory: what a caller that must not
    /// wait (inside a database transaction) can have.
    pub fn cached_pad(&self, key: &str) -> Option<Pad> {
        self.cache.get(key)
    }

    /// The pads of those of `keys` that have one, by key: from memory, and what
    /// is not there from the file in one statement.
    pub async fn pads(&self, keys: &[&str]) -> Result<HashMap<String, Pad>, VaultError> {
        let mut found = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            match self.cache.get(key) {
                Some(pad) => {
                    found.insert((*key).to_owned(), pad);
                }
                None => missing.push(*key),
            }
        }
        for batch in missing.chunks(500) {
            let sql = format!(
                "SELECT subject, pad FROM pads WHERE subject IN ({})",
                vec!["?"; batch.len()].join(", ")
            );
            let mut query = sqlx::query_as::<_, (String, Vec<u8>)>(&sql);
            for key in batch {
                query = query.bind(*key);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.unavailable(e))?;
            for (key, bytes) in rows {
                let pad = self.pad_of(bytes)?;
                self.cache.put(&key, &pad);
                found.insert(key, pad);
            }
        }
        Ok(found)
    }

    /// A pad for a new subject, already in the file, and the id it is filed under: the
    /// caller stores that id with the subject's key (`data_keys.pad`). `None` if this
    /// process holds no spare: [`SubjectVault::make_spares`] first. Taking one below
    /// [`SPARES_LOW`] starts a refill in the background.
    pub fn take_spare(&self) -> Option<(String, Pad)> {
        let (taken, left) = {
            let mut ready = lock(&self.spares.ready);
            let taken = ready.pop();
            (taken, ready.len())
        };
        if left < SPARES_LOW {
            self.refill_in_background();
        }
        let (id, pad) = taken?;
        // A key masked with it is about to be stored: its steps will ask for it.
        self.cache.put(&id, &pad);
        Some((id, pad))
    }

    fn refill_in_background(&self) {
        use std::sync::atomic::Ordering;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.spares.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let vault = self.clone();
        runtime.spawn(async move {
            if let Err(e) = vault.make_spares(SPARES_LOW * 2).await {
                tracing::warn!(error = %e, "making spare subject pads failed; new subjects wait for the vault");
            }
            vault.spares.refilling.store(false, Ordering::Release);
        });
    }

    /// `count` spares, written first if this process holds too few.
    pub async fn take_spares(&self, count: usize) -> Result<Vec<(String, Pad)>, VaultError> {
        let mut taken = Vec::with_capacity(count);
        loop {
            while taken.len() < count {
                match self.take_spare() {
                    Some(spare) => taken.push(spare),
                    None => break,
                }
            }
            if taken.len() == count {
                return Ok(taken);
            }
            self.make_spares(count - taken.len()).await?;
        }
    }

    /// Make sure this process holds at least `count` spares, writing a batch of fresh
    /// pads (one synced commit) if it holds fewer. Callers at the same moment take turns,
    /// and one that finds enough made meanwhile writes nothing.
    pub async fn make_spares(&self, count: usize) -> Result<(), VaultError> {
        let held = || lock(&self.spares.ready).len();
        if held() >= count {
            return Ok(());
        }
        let _turn = self.spares.turn.lock().await;
        let wanted = count.saturating_sub(held());
        if wanted == 0 {
            return Ok(());
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.pool.begin().await.map_err(|e| self.unavailable(e))?;
        let mut made = Vec::with_capacity(wanted.max(SPARES_PER_WRITE));
        for _ in 0..wanted.max(SPARES_PER_WRITE) {
            let id = super::ordered_id("pad_");
            let mut fresh = Zeroizing::new([0u8; PAD_LEN]);
            fill_random(&mut *fresh).map_err(|e| VaultError::Random(e.to_string()))?;
            sqlx::query("INSERT INTO pads (subject, pad, created_at) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(&fresh[..])
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.unavailable(e))?;
            made.push((id, Pad(fresh)));
        }
        tx.commit().await.map_err(|e| self.unavailable(e))?;
        // Only once they are in the file: a pad never stored must never mask a key.
        lock(&self.spares.ready).extend(made);
        Ok(())
    }

    /// Delete the pad filed under `key` for good. Returns whether it had one.
    pub async fn erase(&self, key: &str) -> Result<bool, VaultError> {
        self.cache.forget(key);
        let done = sqlx::query("DELETE FROM pads WHERE subject = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|e| self.unavailable(e))?;
        // Again: a read racing the delete may have cached it meanwhile.
        self.cache.forget(key);
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spare_is_in_the_file_before_it_is_handed_out_and_erased_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let vault = SubjectVault::open(&path).await.unwrap();
        assert!(vault.take_spare().is_none(), "no spare before one is made");
        vault.make_spares(1).await.unwrap();
        let (id, pad) = vault.take_spare().unwrap();
        assert!(id.starts_with("pad_"), "{id}");
        // Another process sees it at once: it was written before it was handed out.
        let again = SubjectVault::open_existing(&path).await.unwrap();
        let same = again.pad(&id).await.unwrap().expect("in the file");
        assert_eq!(*pad.0, *same.0);

        let key = DataKey::generate().unwrap();
        let masked = key.masked(&pad);
        assert_ne!(masked.bytes()[..], key.bytes()[..]);
        assert_eq!(masked.masked(&same).bytes()[..], key.bytes()[..]);

        let secret = *pad.0;
        assert!(again.erase(&id).await.unwrap());
        assert!(again.pad(&id).await.unwrap().is_none());
        assert!(!vault.erase(&id).await.unwrap());
        assert!(vault.pad(&id).await.unwrap().is_none(), "nor in memory");
        vault.pool.close().await;
        again.pool.close().await;
        let file = std::fs::read(&path).unwrap();
        assert!(
            !file.windows(PAD_LEN).any(|w| w == secret),
            "the erased pad's bytes are still in the file"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spares_are_distinct_and_refilled_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let vault = SubjectVault::open(&path).await.unwrap();
        // Callers at the same moment: one write serves them all.
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let vault = vault.clone();
                tokio::spawn(async move { vault.make_spares(10).await.unwrap() })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        assert_eq!(lock(&vault.spares.ready).len(), SPARES_PER_WRITE);
        // Taking more than were made: the ones past the low mark were refilled meanwhile.
        let mut seen: HashMap<String, [u8; PAD_LEN]> = HashMap::new();
        for _ in 0..SPARES_PER_WRITE * 3 {
            let (id, pad) = loop {
                match vault.take_spare() {
                    Some(taken) => break taken,
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            assert!(
                seen.insert(id, *pad.0).is_none(),
                "a spare handed out twice"
            );
        }
        let pads: std::collections::HashSet<_> = seen.values().collect();
        assert_eq!(pads.len(), seen.len(), "two spares with the same bytes");
        // Every one handed out is in the file.
        let reopened = SubjectVault::open_existing(&path).await.unwrap();
        let ids: Vec<&str> = seen.keys().map(String::as_str).collect();
        let stored = reopened.pads(&ids).await.unwrap();
        for (id, pad) in &seen {
            assert_eq!(*stored[id].0, *pad, "{id} in the file");
        }
        assert!(reopened.pads(&["pad_never"]).await.unwrap().is_empty());
    }
}
