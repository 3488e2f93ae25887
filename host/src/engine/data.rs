//! Task data at rest: every task's context, step results and attempt records are sealed
//! under a data key. Data about a data subject uses that subject's own key (found through
//! the blind index), so destroying it later shreds the subject's data everywhere; other
//! tasks get a key of their own. Associated data binds each ciphertext to its row and
//! field.

use crate::crypto::{Aad, DataKey, KeyRing, SubjectVault};
use crate::store::{DataKeyRow, Tx};

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
    fn vault(&self) -> Result<&SubjectVault, EngineError> {
        self.vault.ok_or_else(|| {
            EngineError::Invalid("data about a data subject needs a subject vault".into())
        })
    }
}

/// The data key for a new task: the subject's (created on first use) or a new one.
pub(crate) async fn key_for_task(
    tx: &mut Tx<'_>,
    keys: Keys<'_>,
    subject: Option<&str>,
    now: i64,
) -> Result<(String, DataKey), EngineError> {
    if let Some(blind) = subject
        && let Some(existing) = tx.get_subject(blind).await?
    {
        let key = unwrap(tx, keys, &existing.data_key_id).await?;
        return Ok((existing.data_key_id, key));
    }
    let (id, key) = new_data_key(tx, keys, subject, now).await?;
    if let Some(blind) = subject {
        // Two tasks for a new subject may race: whoever inserts first owns the key.
        let owner = tx.get_or_insert_subject(blind, &id, now).await?;
        if owner.data_key_id != id {
            let key = unwrap(tx, keys, &owner.data_key_id).await?;
            return Ok((owner.data_key_id, key));
        }
    }
    Ok((id, key))
}

/// A fresh data key, stored wrapped under the ring's active KEK (and so re-wrapped by
/// every later rotation), belonging to `subject` if given — then masked with the
/// subject's pad from the vault first, so that erasing the pad shreds every copy.
pub(crate) async fn new_data_key(
    tx: &mut Tx<'_>,
    keys: Keys<'_>,
    subject: Option<&str>,
    now: i64,
) -> Result<(String, DataKey), EngineError> {
    let id = new_id("dk_")?;
    let key = DataKey::generate()?;
    let wrapped = match subject {
        Some(blind) => {
            let pad = keys.vault()?.pad_or_create(blind, now).await?;
            keys.ring.wrap(&key.masked(&pad), &id)?
        }
        None => keys.ring.wrap(&key, &id)?,
    };
    tx.insert_data_key(&DataKeyRow {
        id: id.clone(),
        kek_id: wrapped.kek_id.as_str().to_owned(),
        wrapped: wrapped.bytes,
        subject: subject.map(str::to_owned),
        created_at: now,
        destroyed_at: None,
    })
    .await?;
    Ok((id, key))
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
    let row = row.ok_or_else(|| EngineError::NotFound(format!("data key {id}")))?;
    let erased = || EngineError::Invalid(format!("data key {id} was destroyed (subject erased)"));
    if row.destroyed_at.is_some() {
        return Err(erased());
    }
    let pad = match &row.subject {
        // Erasure destroys the key before it deletes the pad: a live key without its pad
        // means this process has the wrong vault, not that the subject was erased.
        Some(blind) => Some(keys.vault()?.pad(blind).await?.ok_or_else(|| {
            tracing::error!(data_key = %id, "a subject's pad is missing from the vault while its key lives: is this the installation's vault?");
            EngineError::Unavailable("the subject vault does not hold this subject's pad".into())
        })?),
        None => None,
    };
    let wrapped = crate::crypto::WrappedKey {
        kek_id: crate::crypto::KeyId::new(row.kek_id)?,
        bytes: row.wrapped,
    };
    let key = keys.ring.unwrap(&wrapped, id)?;
    Ok(match pad {
        Some(pad) => key.masked(&pad),
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
