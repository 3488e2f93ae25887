//! Task data at rest: every task's context, step results and attempt records are sealed
//! under a data key. Data about a data subject uses that subject's own key (found through
//! the blind index), so destroying it later shreds the subject's data everywhere; other
//! tasks get a key of their own. Associated data binds each ciphertext to its row and
//! field.

use std::collections::HashMap;

use crate::crypto::{Aad, DataKey, KeyRing, Pad, SubjectVault};
use crate::store::{DataKeyRow, HotWrites, Tx};

use super::EngineError;

/// What opens data keys: the KEKs, and the vault of subject pads.
#[derive(Clone, Copy)]
pub(crate) struct Keys<'a> {
    pub(crate) ring: &'a KeyRing,
    pub(crate) vault: Option<&'a SubjectVault>,
}

impl Keys<'_> {
    pub(crate) fn vault(&self) -> Result<&SubjectVault, EngineError> {
        self.vault.ok_or_else(|| {
            EngineError::Invalid("data about a data subject needs a subject vault".into())
        })
    }
}

/// The pads a batch of task creations holds, taken from the vault before its transaction
/// so that none of its work waits on the vault while it holds the database: pads by the
/// vault's key for them (`None`: the vault has none), and the spare given to each new
/// subject of the batch.
#[derive(Default)]
pub(crate) struct Pads {
    by_key: HashMap<String, Option<Pad>>,
    /// New subject → the id of the spare pad its key is masked with.
    fresh: HashMap<String, String>,
}

impl Pads {
    /// Whether the batch knows the pad filed under `key` (or that there is none).
    pub(crate) fn knows(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// The pad filed under `key`, if the batch holds it.
    pub(crate) fn get(&self, key: &str) -> Option<&Pad> {
        self.by_key.get(key).and_then(Option::as_ref)
    }

    pub(crate) fn insert(&mut self, key: String, pad: Option<Pad>) {
        self.by_key.insert(key, pad);
    }

    /// The spare given to new subject `subject`, and its id.
    pub(crate) fn fresh(&self, subject: &str) -> Option<(&str, &Pad)> {
        let id = self.fresh.get(subject)?;
        Some((id.as_str(), self.get(id)?))
    }

    /// Give new subject `subject` the spare `pad`, filed under `id`.
    pub(crate) fn give(&mut self, subject: &str, id: String, pad: Pad) {
        self.fresh.insert(subject.to_owned(), id.clone());
        self.by_key.insert(id, Some(pad));
    }
}

/// What [`key_for_task`] found.
pub(crate) enum Keyed {
    /// The key to seal the task's data under, and its id.
    Key(String, DataKey),
    /// Another writer gave the subject a key first, masked with the pad filed under this
    /// key, which the batch does not hold: nothing may be stored until it is read.
    NeedPad(String),
}

/// A fresh data key for a new task of `subject` (masked with the spare `pads` gave it)
/// or of no subject, stored in `tx`; if another writer gave the subject a key first,
/// that key instead.
pub(crate) async fn key_for_task<W: HotWrites>(
    tx: &mut W,
    keys: Keys<'_>,
    pads: &Pads,
    subject: Option<&str>,
    now: i64,
) -> Result<Keyed, EngineError> {
    let fresh = match subject {
        Some(blind) => {
            keys.vault()?;
            let (id, pad) = pads.fresh(blind).ok_or_else(|| {
                EngineError::Unavailable("no pad was taken for a new subject".into())
            })?;
            Some((blind, id, pad))
        }
        None => None,
    };
    let (row, key) = fresh_key(keys.ring, fresh, now)?;
    let id = row.id.clone();
    tx.insert_data_key(&row).await?;
    if let Some(blind) = subject {
        // Two tasks for a new subject may race (on PostgreSQL, from two processes): whoever
        // inserts first owns the key.
        let owner = tx.get_or_insert_subject(blind, &id, now).await?;
        if owner.data_key_id != id {
            let row = tx.get_data_key(&owner.data_key_id).await?;
            let cached;
            let pad = match row.as_ref().and_then(DataKeyRow::pad_key) {
                None => None,
                Some(pad_key) => match pads.get(pad_key) {
                    Some(pad) => Some(pad),
                    None => {
                        cached = keys.vault()?.cached_pad(pad_key);
                        match &cached {
                            Some(pad) => Some(pad),
                            None => return Ok(Keyed::NeedPad(pad_key.to_owned())),
                        }
                    }
                },
            };
            let key = open_key_with(keys.ring, row, &owner.data_key_id, |_| Ok(pad))?;
            return Ok(Keyed::Key(owner.data_key_id, key));
        }
    }
    Ok(Keyed::Key(id, key))
}

/// A fresh data key and its row: wrapped under the ring's active KEK (and so re-wrapped by
/// every later rotation), and if it is a subject's (`(blind index, pad id, pad)`), masked
/// with the subject's pad first, so that erasing the pad shreds every copy.
fn fresh_key(
    ring: &KeyRing,
    subject: Option<(&str, &str, &Pad)>,
    now: i64,
) -> Result<(DataKeyRow, DataKey), EngineError> {
    let id = crate::crypto::ordered_id("dk_");
    let key = DataKey::generate()?;
    let wrapped = match subject {
        Some((_, _, pad)) => ring.wrap(&key.masked(pad), &id)?,
        None => ring.wrap(&key, &id)?,
    };
    let row = DataKeyRow {
        id,
        kek_id: wrapped.kek_id.as_str().to_owned(),
        wrapped: wrapped.bytes,
        subject: subject.map(|(blind, _, _)| blind.to_owned()),
        created_at: now,
        destroyed_at: None,
        pad: subject.map(|(_, pad_id, _)| pad_id.to_owned()),
    };
    Ok((row, key))
}

/// A fresh data key of no subject, stored in `tx`.
pub(crate) async fn new_data_key(
    tx: &mut Tx<'_>,
    ring: &KeyRing,
    now: i64,
) -> Result<(String, DataKey), EngineError> {
    let (row, key) = fresh_key(ring, None, now)?;
    tx.insert_data_key(&row).await?;
    Ok((row.id, key))
}

/// Unwrap a stored data key.
pub(crate) async fn unwrap(
    tx: &mut Tx<'_>,
    keys: Keys<'_>,
    id: &str,
) -> Result<DataKey, EngineError> {
    let row = tx.get_data_key(id).await?;
    open_key(keys, row, id).await
}

/// Unwrap data key `id` from its stored row (`None`: there is no such key); a subject's
/// key is unmasked with the subject's pad, and is gone once the pad is erased.
pub(crate) async fn open_key(
    keys: Keys<'_>,
    row: Option<DataKeyRow>,
    id: &str,
) -> Result<DataKey, EngineError> {
    let live = row.as_ref().filter(|row| row.destroyed_at.is_none());
    let pad = match live.and_then(DataKeyRow::pad_key) {
        Some(pad_key) => keys.vault()?.pad(pad_key).await?,
        None => None,
    };
    open_key_with(keys.ring, row, id, |_| Ok(pad.as_ref()))
}

/// [`open_key`] with the subject's pad given by `pad`, asked for by the vault's key for
/// it (`Ok(None)`: the vault has none).
pub(crate) fn open_key_with<'p>(
    ring: &KeyRing,
    row: Option<DataKeyRow>,
    id: &str,
    pad: impl FnOnce(&str) -> Result<Option<&'p Pad>, EngineError>,
) -> Result<DataKey, EngineError> {
    let row = row.ok_or_else(|| EngineError::NotFound(format!("data key {id}")))?;
    if row.destroyed_at.is_some() {
        return Err(EngineError::Invalid(format!(
            "data key {id} was destroyed (subject erased)"
        )));
    }
    let pad = match row.pad_key() {
        // Erasure destroys the key before it deletes the pad: a live key without its pad
        // means this process has the wrong vault, not that the subject was erased.
        Some(pad_key) => Some(pad(pad_key)?.ok_or_else(|| {
            tracing::error!(data_key = %id, "a subject's pad is missing from the vault while its key lives: is this the installation's vault?");
            EngineError::Unavailable("the subject vault does not hold this subject's pad".into())
        })?),
        None => None,
    };
    let wrapped = crate::crypto::WrappedKey {
        kek_id: crate::crypto::KeyId::new(row.kek_id)?,
        bytes: row.wrapped,
    };
    let key = ring.unwrap(&wrapped, id)?;
    Ok(match pad {
        Some(pad) => key.masked(pad),
        None => key,
    })
}

/// The key a task's data is sealed under. Always a data key, except in the throughput
/// benchmark's unprotected baseline (a build feature that shipped binaries never enable),
/// where data is stored as it is so the cost of protection can be measured.
#[derive(Clone)]
pub(crate) struct TaskKey(Option<std::sync::Arc<DataKey>>);

impl TaskKey {
    /// No key: the unprotected baseline.
    pub(crate) fn none() -> Self {
        Self(None)
    }

    pub(crate) fn seal(&self, plaintext: &[u8], aad: Aad<'_>) -> Result<Vec<u8>, EngineError> {
        match &self.0 {
            Some(key) => Ok(key.seal(plaintext, aad)?),
            None => Ok(plaintext.to_vec()),
        }
    }

    pub(crate) fn open(&self, sealed: &[u8], aad: Aad<'_>) -> Result<Vec<u8>, EngineError> {
        match &self.0 {
            Some(key) => Ok(key.open(sealed, aad)?),
            None => Ok(sealed.to_vec()),
        }
    }
}

impl From<DataKey> for TaskKey {
    fn from(key: DataKey) -> Self {
        Self(Some(std::sync::Arc::new(key)))
    }
}

/// Where a task's context lives.
pub(crate) fn context_aad(task_id: &str) -> Aad<'_> {
    Aad {
        table: "tasks",
        row: task_id,
        field: "context",
    }
}

/// Where a step's result lives (`row` is `task_id/step`).
pub(crate) fn result_aad(row: &str) -> Aad<'_> {
    Aad {
        table: "steps",
        row,
        field: "result",
    }
}

/// Where an attempt's record lives (`row` is `task_id/step/attempt`).
pub(crate) fn record_aad(row: &str) -> Aad<'_> {
    Aad {
        table: "step_attempts",
        row,
        field: "record",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SubjectVault;

    /// Whether `b` is the same key as `a`: it opens what `a` sealed.
    fn same(a: &DataKey, b: &DataKey) -> bool {
        let aad = context_aad("task_1");
        b.open(&a.seal(b"context", aad).unwrap(), aad).is_ok()
    }

    #[tokio::test]
    async fn a_subject_key_opens_with_its_own_pad_and_one_from_before_pad_ids_with_its_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let vault = SubjectVault::open(&dir.path().join("vault.db"))
            .await
            .unwrap();
        let ring = KeyRing::generate().unwrap();
        vault.make_spares(2).await.unwrap();
        let (id, pad) = vault.take_spare().unwrap();
        let (_, other) = vault.take_spare().unwrap();
        let (row, key) = fresh_key(&ring, Some(("bi_jane", &id, &pad)), 0).unwrap();
        assert_eq!(row.pad.as_deref(), Some(id.as_str()));
        let asked = std::cell::RefCell::new(Vec::new());
        let opened = open_key_with(&ring, Some(row.clone()), &row.id, |pad_key| {
            asked.borrow_mut().push(pad_key.to_owned());
            Ok(Some(&pad))
        })
        .unwrap();
        assert!(same(&key, &opened));
        // Another pad does not open it: it unmasks to a different key.
        let wrong = open_key_with(&ring, Some(row.clone()), &row.id, |_| Ok(Some(&other))).unwrap();
        assert!(!same(&key, &wrong));
        // The vault has it under its id, so `open_key` finds it.
        let keys = Keys {
            ring: &ring,
            vault: Some(&vault),
        };
        let found = open_key(keys, Some(row.clone()), &row.id).await.unwrap();
        assert!(same(&key, &found));

        // A key stored before pads had ids: its pad is filed under its subject.
        let legacy = DataKeyRow {
            pad: None,
            ..row.clone()
        };
        open_key_with(&ring, Some(legacy.clone()), &legacy.id, |pad_key| {
            asked.borrow_mut().push(pad_key.to_owned());
            Ok(Some(&pad))
        })
        .unwrap();
        assert_eq!(*asked.borrow(), [id.clone(), "bi_jane".to_owned()]);
        // Without its pad it does not open at all.
        let missing = open_key(keys, Some(legacy.clone()), &legacy.id).await;
        assert!(
            matches!(missing, Err(EngineError::Unavailable(_))),
            "{missing:?}"
        );
        // A key of no subject needs no pad, whatever its row says.
        let (plain, plain_key) = fresh_key(&ring, None, 0).unwrap();
        assert_eq!((plain.subject.as_deref(), plain.pad_key()), (None, None));
        let opened = open_key_with(&ring, Some(plain.clone()), &plain.id, |_| {
            panic!("a key of no subject asked for a pad")
        })
        .unwrap();
        assert!(same(&plain_key, &opened));
    }
}
