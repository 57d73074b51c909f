//! The live policy: the published snapshot that Checks read, and the single writer that turns
//! admin changes into store commits and new snapshots.
//!
//! A write goes: rules (model) → one store transaction, flushed → recompile the touched table →
//! swap. Checks never wait: they load whatever snapshot is published, lock-free.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};

use crate::auth::{AdminEntry, AdminSet, AuthError};
use crate::engine::Snapshot;
use crate::model::{
    self, AdminPermission, Catalog, PermissionChange, Policy, Role, RuleError, Subject,
    UpdateOutcome, ValidationError,
};
use crate::store::{AuditRecord, Change, Store, StoreError, Write};

/// What Checks and ListRoles read: one consistent revision.
#[derive(Debug)]
pub struct Published {
    /// The compiled decision tables.
    pub snapshot: Snapshot,
    /// The catalog, for shaping roles in responses.
    pub catalog: Arc<Catalog>,
    /// Roles by name order, as stored.
    pub roles: Arc<Vec<Role>>,
}

/// How start-up found the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The store was empty; the seed policy was imported.
    Imported {
        /// Revision after the import.
        revision: u64,
    },
    /// The store held a policy; the seed was not used.
    Loaded {
        /// Stored revision.
        revision: u64,
    },
}

/// Why a start-up load failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored policy does not validate (it was changed outside the sidecar).
    #[error("the stored policy is invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidStored(Vec<ValidationError>),
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

/// The sidecar's policy state.
pub struct LivePolicy {
    store: Arc<dyn Store>,
    published: ArcSwap<Published>,
    /// The policy without its subjects (which live in the store and the snapshot only), held
    /// by the single writer.
    writer: Mutex<Policy>,
    admins: ArcSwap<AdminSet>,
}

impl LivePolicy {
    /// Loads the stored policy, or imports `seed` into an empty store, and compiles it.
    pub fn open(
        store: Arc<dyn Store>,
        seed: &Policy,
        bootstrap_token: Option<&str>,
    ) -> Result<(LivePolicy, Opened), OpenError> {
        let (policy, revision, opened) = match store.load()? {
            Some(loaded) => {
                model::validate(&loaded.policy).map_err(OpenError::InvalidStored)?;
                let revision = loaded.revision;
                (loaded.policy, revision, Opened::Loaded { revision })
            }
            None => {
                let revision = store.import(seed, "import")?;
                (seed.clone(), revision, Opened::Imported { revision })
            }
        };
        let snapshot = Snapshot::compile(&policy, revision);
        let admins = AdminSet::new(&policy.admins, bootstrap_token);
        let published = Published {
            snapshot,
            catalog: Arc::new(policy.catalog.clone()),
            roles: Arc::new(policy.roles.clone()),
        };
        let writer_policy = Policy {
            subjects: Vec::new(),
            ..policy
        };
        let live = LivePolicy {
            store,
            published: ArcSwap::from_pointee(published),
            writer: Mutex::new(writer_policy),
            admins: ArcSwap::from_pointee(admins),
        };
        Ok((live, opened))
    }

    /// The published state. Lock-free; hold it for one request, not longer.
    pub fn current(&self) -> Guard<Arc<Published>> {
        self.published.load()
    }

    /// The admin whose bearer token this is, if it holds `permission`.
    pub fn authorize(
        &self,
        token: Option<&str>,
        permission: AdminPermission,
    ) -> Result<AdminEntry, AuthError> {
        self.admins.load().authorize(token, permission).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, Policy> {
        // A panic while holding the lock cannot leave the policy half-changed: it is replaced
        // only after the store committed. So a poisoned lock is still consistent.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn base_revision(&self, expected: u64) -> Result<u64, WriteError> {
        let current = self.published.load().snapshot.revision();
        if expected != 0 && expected != current {
            return Err(WriteError::Stale { expected, current });
        }
        Ok(current)
    }

    fn commit(
        &self,
        change: Change,
        base_revision: u64,
        actor: &str,
        action: &str,
    ) -> Result<u64, WriteError> {
        let write = Write {
            change,
            base_revision,
            actor: actor.to_owned(),
            action: action.to_owned(),
        };
        Ok(self.store.commit(&write)?.revision)
    }

    fn publish_roles(&self, policy: &Policy, revision: u64) {
        let current = self.published.load();
        let next = Published {
            snapshot: current.snapshot.with_roles(policy, revision),
            catalog: Arc::clone(&current.catalog),
            roles: Arc::new(policy.roles.clone()),
        };
        self.published.store(Arc::new(next));
    }

    fn save_role(
        &self,
        policy: &mut Policy,
        role: Role,
        actor: &str,
        action: &str,
        base: u64,
    ) -> Result<u64, WriteError> {
        let revision = self.commit(Change::PutRole(role.clone()), base, actor, action)?;
        if let Some(slot) = policy.roles.iter_mut().find(|r| r.name == role.name) {
            *slot = role;
        }
        self.publish_roles(policy, revision);
        Ok(revision)
    }

    /// UpdatePermission: applies the rules, commits, publishes. Returns the outcome and revision.
    pub fn update_permission(
        &self,
        actor: &str,
        role: &str,
        change: &PermissionChange,
        expected_revision: u64,
    ) -> Result<(UpdateOutcome, u64), WriteError> {
        let mut policy = self.lock();
        let base = self.base_revision(expected_revision)?;
        let outcome = model::apply_update(&policy, role, change)?;
        let revision = self.save_role(
            &mut policy,
            outcome.role.clone(),
            actor,
            "update_permission",
            base,
        )?;
        Ok((outcome, revision))
    }

    /// ApprovePending: accepts a role's pending widening as a whole.
    pub fn approve_pending(
        &self,
        actor: &str,
        role: &str,
        expected_revision: u64,
    ) -> Result<(Role, u64), WriteError> {
        let mut policy = self.lock();
        let base = self.base_revision(expected_revision)?;
        let approved = model::apply_approval(&policy, role)?;
        let revision = self.save_role(
            &mut policy,
            approved.clone(),
            actor,
            "approve_pending",
            base,
        )?;
        Ok((approved, revision))
    }

    /// PutSubject: creates or replaces a subject.
    pub fn put_subject(
        &self,
        actor: &str,
        subject: Subject,
        expected_revision: u64,
    ) -> Result<(Subject, u64), WriteError> {
        let policy = self.lock();
        let base = self.base_revision(expected_revision)?;
        model::validate_subject(&policy, &subject).map_err(|errs| WriteError::Invalid {
            field: format!("subject.{}", errs[0].path),
            message: errs[0].message.clone(),
        })?;
        let revision = self.commit(
            Change::PutSubject(subject.clone()),
            base,
            actor,
            "put_subject",
        )?;
        let current = self.published.load();
        let next = Published {
            snapshot: current
                .snapshot
                .with_subject(&subject.id, Some(&subject), revision),
            catalog: Arc::clone(&current.catalog),
            roles: Arc::clone(&current.roles),
        };
        self.published.store(Arc::new(next));
        Ok((subject, revision))
    }

    /// DeleteSubject: removes a subject; NOT_FOUND when absent.
    pub fn delete_subject(
        &self,
        actor: &str,
        id: &str,
        expected_revision: u64,
    ) -> Result<u64, WriteError> {
        let _policy = self.lock();
        if id.is_empty() {
            return Err(WriteError::Invalid {
                field: "id".into(),
                message: "subject id is empty".into(),
            });
        }
        let base = self.base_revision(expected_revision)?;
        let revision = self.commit(
            Change::DeleteSubject(id.to_owned()),
            base,
            actor,
            "delete_subject",
        )?;
        let current = self.published.load();
        let next = Published {
            snapshot: current.snapshot.with_subject(id, None, revision),
            catalog: Arc::clone(&current.catalog),
            roles: Arc::clone(&current.roles),
        };
        self.published.store(Arc::new(next));
        Ok(revision)
    }

    /// The audit trail after `after_revision`.
    pub fn audit(&self, after_revision: u64, limit: usize) -> Result<Vec<AuditRecord>, WriteError> {
        Ok(self.store.audit(after_revision, limit)?)
    }
}
