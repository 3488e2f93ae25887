//! What can go wrong in the engine, sorted by what the caller can do about it.

use crate::audit::AuditError;
use crate::crypto::CryptoError;
use crate::store::StoreError;

use super::DefinitionError;

/// An engine error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is invalid and retrying it unchanged cannot help.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Policy refused it (already audited).
    #[error("denied: {0}")]
    Denied(String),
    /// A module's signature is missing where the namespace requires one, or no trusted
    /// key of the namespace verifies it.
    #[error("untrusted module: {0}")]
    Untrusted(String),
    /// It clashes with existing state (an immutable version, a lost lease).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database is unavailable: retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Keys are missing or data does not decrypt: an operator must act.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Anything else; the message is ours.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::Conflict(what),
            StoreError::Unavailable(what) => Self::Unavailable(what),
            StoreError::Internal(what) => Self::Internal(what),
        }
    }
}

impl From<AuditError> for EngineError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Store(e) => e.into(),
        }
    }
}

impl From<crate::crypto::VaultError> for EngineError {
    fn from(e: crate::crypto::VaultError) -> Self {
        // The detail names a file: it goes to the log, not to a caller.
        tracing::error!(error = %e, "the subject vault failed");
        Self::Unavailable("the subject vault is unavailable".into())
    }
}

impl From<DefinitionError> for EngineError {
    fn from(e: DefinitionError) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl EngineError {
    /// The same error for another caller (a batch's error answers each of its members).
    /// A cryptographic error keeps its kind's message but not its source.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::NotFound(what) => Self::NotFound(what.clone()),
            Self::Invalid(what) => Self::Invalid(what.clone()),
            Self::Denied(what) => Self::Denied(what.clone()),
            Self::Untrusted(what) => Self::Untrusted(what.clone()),
            Self::Conflict(what) => Self::Conflict(what.clone()),
            Self::Unavailable(what) => Self::Unavailable(what.clone()),
            Self::Crypto(e) => Self::Internal(e.to_string()),
            Self::Internal(what) => Self::Internal(what.clone()),
        }
    }
}
