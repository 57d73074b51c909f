//! Why the live policy could not open, write, reload or mirror.

use crate::model::{RuleError, ValidationError};
use crate::store::StoreError;

fn joined(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a start-up load failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored policy does not validate (it was changed outside the sidecar).
    #[error("the stored policy is invalid: {}", joined(.0))]
    InvalidStored(Vec<ValidationError>),
}

/// Why a policy reload was refused; the current snapshot keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The merged policy does not validate.
    #[error("the reloaded policy is invalid: {}", joined(.0))]
    Invalid(Vec<ValidationError>),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy comes from a fleet's shared store, not from a file.
    #[error("the policy comes from the shared policy store; a policy file does not apply")]
    NotFromFile,
}

/// Why an admin write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A policy rule refused the change.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A field of the request is malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// Request field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The entity does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// `expected_revision` is not the current revision.
    #[error("expected_revision {expected} is stale: the policy is at revision {current}")]
    Stale {
        /// What the caller expected.
        expected: u64,
        /// The current revision.
        current: u64,
    },
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(StoreError),
    /// Fleet mode: the shared store cannot be reached or the local mirror did not catch up
    /// in time; the change may or may not have been made (retry with `expected_revision`).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The task running the write ended without an answer (it panicked or was cancelled).
    #[error("write task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why a fleet write could not be confirmed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The local mirror has not reached the revision the write depends on.
    #[error("the local policy mirror has not reached revision {0} yet (is etcd reachable?); retry")]
    MirrorBehind(u64),
    /// The write was committed, but the local mirror has not applied it in time.
    #[error("committed at revision {0}, but the local policy mirror has not applied it yet")]
    NotApplied(u64),
    /// Other writers kept changing what this write depends on.
    #[error("the policy kept changing under this write; retry")]
    KeptChanging,
    /// The shared store cannot be reached (its own error: this layer does not know its type).
    #[error("the shared policy store is unavailable: {0}")]
    Shared(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a mirrored change was not applied (the mirror then reloads the whole prefix).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The mirrored policy does not validate; the last valid one keeps serving.
    #[error("the mirrored policy is invalid: {}", joined(.0))]
    Invalid(Vec<ValidationError>),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Recompiling from the store failed.
    #[error(transparent)]
    Open(#[from] OpenError),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Stale { expected, current } => WriteError::Stale { expected, current },
            StoreError::Missing(what) => WriteError::NotFound(what),
            other => WriteError::Store(other),
        }
    }
}
