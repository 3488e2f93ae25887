//! Key-encryption-key rotation: every live data key is re-wrapped under the ring's
//! active KEK, page by page, each page in its own transaction with its audit event; the
//! data itself is never re-encrypted. Old KEKs keep unwrapping until retired.

use serde::Serialize;
use serde_json::json;

use super::EngineError;
use crate::audit::{self, NewEvent};
use crate::crypto::{KeyId, KeyRing, WrappedKey};
use crate::store::Store;

/// Data keys re-wrapped per transaction.
const REWRAP_PAGE: i64 = 500;

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    /// The KEK everything is now wrapped under.
    pub active: String,
    /// Data keys re-wrapped.
    pub rewrapped: u64,
    /// Data keys already under the active KEK.
    pub already_current: u64,
}

/// Re-wrap every live data key in `store` under `keys`' active KEK. Idempotent: run it
/// again after an interruption and it finishes the job.
pub async fn rewrap_all(
    store: &Store,
    keys: &KeyRing,
    actor: &str,
    now_ms: i64,
) -> Result<Rotation, EngineError> {
    let active = keys.active_id().as_str().to_owned();
    let mut rotation = Rotation {
        active: active.clone(),
        rewrapped: 0,
        already_current: 0,
    };
    let mut after: Option<String> = None;
    loop {
        let mut tx = store.begin().await?;
        let page = tx.list_data_keys(after.as_deref(), REWRAP_PAGE).await?;
        let Some(last) = page.last().map(|row| row.id.clone()) else {
            tx.commit().await?;
            break;
        };
        let mut count = 0;
        for row in page {
            if row.kek_id == active {
                rotation.already_current += 1;
                continue;
            }
            let wrapped = WrappedKey {
                kek_id: KeyId::new(row.kek_id)?,
                bytes: row.wrapped,
            };
            let rewrapped = keys.rewrap(&wrapped, &row.id)?;
            tx.update_wrapped(&row.id, rewrapped.kek_id.as_str(), &rewrapped.bytes)
                .await?;
            count += 1;
        }
        if count > 0 {
            let event = NewEvent {
                actor: actor.to_owned(),
                action: "key.rotated".into(),
                resource: format!("kek/{active}"),
                outcome: "success".into(),
                details: json!({ "rewrapped": count }),
                ..NewEvent::default()
            };
            audit::record(&mut tx, &event, now_ms).await?;
        }
        tx.commit().await?;
        rotation.rewrapped += count;
        after = Some(last);
    }
    Ok(rotation)
}
