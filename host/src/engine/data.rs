//! Task data at rest: every task's context, step results and attempt records are sealed
//! under a data key. Data about a data subject uses that subject's own key (found through
//! the blind index), so destroying it later shreds the subject's data everywhere; other
//! tasks get a key of their own. Associated data binds each ciphertext to its row and
//! field.

use std::collections::HashMap;

use crate::crypto::{Aad, DataKey, KeyRing, Pad, SubjectVault};
use crate::store::{DataKeyRow, HotWrites, Tx};

use super::EngineError;

/// A fresh prefixed id (`task_…`, `dk_…`): see [`crate::crypto::ordered_id`].
pub(crate) fn new_id(prefix: &str) -> Result<String, EngineError> {
    crate::crypto::ordered_id(prefix)
        .map_err(|e| EngineError::Internal(format!("no randomness: {e}")))
}

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

/// The subjects' pads a task creation has asked the vault for, by subject: `None` for one
/// the vault has none of. Read before the creation's transaction, so that none of its
/// work waits on the vault while it holds the database.
pub(crate) type Pads = HashMap<String, Option<Pad>>;

/// A fresh data key for a new task of `subject` (its pad from `pads`) or of no subject,
/// stored in `tx`; if another writer gave the subject a key first, that key instead.
pub(crate) async fn key_for_task<W: HotWrites>(
    tx: &mut W,
    keys: Keys<'_>,
    pads: &Pads,
    subject: Option<&str>,
    now: i64,
) -> Result<(String, DataKey), EngineError> {
    let pad = match subject {
        Some(blind) => Some(pad_in(keys, pads, blind)?),
        None => None,
    };
    let (row, key) = fresh_key(keys.ring, subject.zip(pad), now)?;
    let id = row.id.clone();
    tx.insert_data_key(&row).await?;
    if let Some(blind) = subject {
        // Two tasks for a new subject may race (on PostgreSQL, from two processes): whoever
        // inserts first owns the key.
        let owner = tx.get_or_insert_subject(blind, &id, now).await?;
        if owner.data_key_id != id {
            let row = tx.get_data_key(&owner.data_key_id).await?;
            let key = open_key_with(keys.ring, row, &owner.data_key_id, |_| Ok(pad))?;
            return Ok((owner.data_key_id, key));
        }
    }
    Ok((id, key))
}

/// `subject`'s pad among `pads`: there must be one, since a new key of theirs is masked
/// with it.
fn pad_in<'p>(keys: Keys<'_>, pads: &'p Pads, subject: &str) -> Result<&'p Pad, EngineError> {
    keys.vault()?;
    pads.get(subject).and_then(Option::as_ref).ok_or_else(|| {
        EngineError::Unavailable("the subject vault holds no pad for a new subject".into())
    })
}

/// A fresh data key and its row: wrapped under the ring's active KEK (and so re-wrapped by
/// every later rotation), and if it is a subject's, masked with the subject's pad first, so
/// that erasing the pad shreds every copy.
fn fresh_key(
    ring: &KeyRing,
    subject: Option<(&str, &Pad)>,
    now: i64,
) -> Result<(DataKeyRow, DataKey), EngineError> {
    let id = new_id("dk_")?;
    let key = DataKey::generate()?;
    let wrapped = match subject {
        Some((_, pad)) => ring.wrap(&key.masked(pad), &id)?,
        None => ring.wrap(&key, &id)?,
    };
    let row = DataKeyRow {
        id,
        kek_id: wrapped.kek_id.as_str().to_owned(),
        wrapped: wrapped.bytes,
        subject: subject.map(|(blind, _)| blind.to_owned()),
        created_at: now,
        destroyed_at: None,
    };
    Ok((row, key))
}

/// A fresh data key of `subject` (its pad made if it has none) or of no subject, stored in
/// `tx`.
pub(crate) async fn new_data_key(
    tx: &mut Tx<'_>,
    keys: Keys<'_>,
    subject: Option<&str>,
    now: i64,
) -> Result<(String, DataKey), EngineError> {
    let pad = match subject {
        Some(blind) => Some(keys.vault()?.pad_or_create(blind, now).await?),
        None => None,
    };
    let (row, key) = fresh_key(keys.ring, subject.zip(pad.as_ref()), now)?;
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
    let pad = match row.as_ref() {
        Some(DataKeyRow {
            subject: Some(blind),
            destroyed_at: None,
            ..
        }) => keys.vault()?.pad(blind).await?,
        _ => None,
    };
    open_key_with(keys.ring, row, id, |_| Ok(pad.as_ref()))
}

/// [`open_key`] with the subject's pad given by `pad` (`Ok(None)`: the vault has none).
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
    let pad = match &row.subject {
        // Erasure destroys the key before it deletes the pad: a live key without its pad
        // means this process has the wrong vault, not that the subject was erased.
        Some(blind) => Some(pad(blind)?.ok_or_else(|| {
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
