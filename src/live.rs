//! The live policy: the published snapshot that Checks read, and the single writer that turns
//! admin changes into store commits and new snapshots.
//!
//! A write goes: rules (model) → one store transaction, flushed → recompile the touched table →
//! swap. Checks never wait: they load whatever snapshot is published, lock-free.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};

use crate::auth::{AdminEntry, AdminSet, AuthError};
use crate::engine::{Snapshot, SnapshotBuilder};
use crate::model::{
    self, AdminPermission, Catalog, PermissionChange, Policy, Role, RuleError, Subject,
    UpdateOutcome, ValidationError,
};
use crate::store::{AuditRecord, Change, ImportMode, Managed, Store, StoreError, Write};

/// What Checks and ListRoles read: one consistent revision.
#[derive(Debug)]
pub struct Published {
    /// The compiled decision tables.
    pub snapshot: Snapshot,
    /// The catalog, for shaping roles in responses.
    pub catalog: Arc<Catalog>,
    /// Roles by name order, as stored.
    pub roles: Arc<Vec<Role>>,
    /// When this state was published.
    pub published_at: std::time::SystemTime,
}

/// How start-up found the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The store was empty; the seed policy was imported.
    Imported {
        /// Revision after the import.
        revision: u64,
    },
    /// The store held a policy; the seed was not used (or had not changed).
    Loaded {
        /// Stored revision.
        revision: u64,
    },
    /// The store held a policy and the seed file had changed since: it was re-applied under
    /// the reload rule.
    Reloaded {
        /// Revision after the reload.
        revision: u64,
    },
}

/// The policy a sidecar starts from.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The validated, normalized policy.
    pub policy: Policy,
    /// SHA-256 of the text it was read from.
    pub digest: String,
    /// True for a policy file (re-applied when it changes); false for the built-in example,
    /// which only ever seeds an empty store.
    pub reloadable: bool,
}

/// Why a policy reload was refused; the current snapshot keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The merged policy does not validate.
    #[error("the reloaded policy is invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The reload rule: the file is the source of everything, except the entities whose latest
/// change came through the admin API, which keep their API version (a role only while the file
/// still has it; a subject deleted through the API stays deleted).
pub fn merge_managed(mut file: Policy, managed: &Managed) -> Policy {
    for role in &managed.roles {
        if let Some(slot) = file.roles.iter_mut().find(|r| r.name == role.name) {
            *slot = role.clone();
        }
    }
    for subject in &managed.subjects {
        match file.subjects.iter_mut().find(|s| s.id == subject.id) {
            Some(slot) => *slot = subject.clone(),
            None => file.subjects.push(subject.clone()),
        }
    }
    file.subjects
        .retain(|s| !managed.deleted_subjects.contains(&s.id));
    file.subjects.sort_by(|a, b| a.id.cmp(&b.id));
    file
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

/// Subject overlay size at which it is folded into the base.
const COMPACT_AT: usize = 4096;

fn lock_writer(writer: &Mutex<Policy>) -> MutexGuard<'_, Policy> {
    // A panic while holding the lock cannot leave the policy half-changed: it is replaced only
    // after the store committed. So a poisoned lock is still consistent.
    writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sidecar's policy state.
pub struct LivePolicy {
    store: Arc<dyn Store>,
    published: Arc<ArcSwap<Published>>,
    compacting: Arc<AtomicBool>,
    /// The policy without its subjects (which live in the store and the snapshot only), held
    /// by the single writer.
    writer: Arc<Mutex<Policy>>,
    admins: ArcSwap<AdminSet>,
    bootstrap_token: Option<String>,
}

impl LivePolicy {
    /// Loads the stored policy, or imports `seed` into an empty store, and compiles it. A
    /// reloadable seed that changed since it was last applied is re-applied (reload rule).
    pub fn open(
        store: Arc<dyn Store>,
        seed: &Seed,
        bootstrap_token: Option<&str>,
    ) -> Result<(LivePolicy, Opened), OpenError> {
        let head = store.load_head()?;
        let seed_changed = seed.reloadable
            && head.is_some()
            && store.source_digest()?.as_deref() != Some(seed.digest.as_str());
        let (policy, snapshot, opened) = match head {
            None => {
                let revision =
                    store.import(&seed.policy, "import", ImportMode::Reseed, &seed.digest)?;
                let snapshot = Snapshot::compile(&seed.policy, revision);
                (seed.policy.clone(), snapshot, Opened::Imported { revision })
            }
            Some(_) if seed_changed => {
                let merged = merge_managed(seed.policy.clone(), &store.managed()?);
                model::validate(&merged).map_err(OpenError::InvalidStored)?;
                let revision = store.import(&merged, "reload", ImportMode::Reload, &seed.digest)?;
                let snapshot = Snapshot::compile(&merged, revision);
                (merged, snapshot, Opened::Reloaded { revision })
            }
            Some(head) => {
                let revision = head.revision;
                let snapshot = Self::compile_stored(store.as_ref(), &head.policy, revision)?;
                (head.policy, snapshot, Opened::Loaded { revision })
            }
        };
        let live = LivePolicy {
            store,
            published: Arc::new(ArcSwap::from_pointee(Published {
                snapshot,
                catalog: Arc::new(policy.catalog.clone()),
                roles: Arc::new(policy.roles.clone()),
                published_at: std::time::SystemTime::now(),
            })),
            compacting: Arc::new(AtomicBool::new(false)),
            admins: ArcSwap::from_pointee(AdminSet::new(&policy.admins, bootstrap_token)),
            writer: Arc::new(Mutex::new(Policy {
                subjects: Vec::new(),
                ..policy
            })),
            bootstrap_token: bootstrap_token.map(str::to_owned),
        };
        Ok((live, opened))
    }

    /// Validates and compiles the stored policy, streaming its subjects from the store (they
    /// are never all held as model values at once).
    fn compile_stored(
        store: &dyn Store,
        head: &Policy,
        revision: u64,
    ) -> Result<Snapshot, OpenError> {
        model::validate(head).map_err(OpenError::InvalidStored)?;
        let mut builder = SnapshotBuilder::new(head);
        let mut invalid = Vec::new();
        store.visit_subjects(&mut |subject| {
            match model::validate_subject(head, &subject) {
                Ok(()) => builder.add(&subject),
                Err(errors) => invalid.extend(errors.into_iter().map(|e| ValidationError {
                    path: model::FieldPath::root().key(&format!("subjects/{}", subject.id)),
                    message: format!("{}: {}", e.path, e.message),
                })),
            }
            Ok(())
        })?;
        if !invalid.is_empty() {
            return Err(OpenError::InvalidStored(invalid));
        }
        Ok(builder.finish(revision))
    }

    fn publishable(policy: &Policy, revision: u64) -> Published {
        Published {
            snapshot: Snapshot::compile(policy, revision),
            catalog: Arc::new(policy.catalog.clone()),
            roles: Arc::new(policy.roles.clone()),
            published_at: std::time::SystemTime::now(),
        }
    }

    /// Re-applies a changed policy file under the reload rule ([`merge_managed`]). Returns the
    /// new revision, or `None` when the file is the one already applied. On error the current
    /// snapshot keeps serving.
    pub fn reload(&self, file: &Policy, digest: &str) -> Result<Option<u64>, ReloadError> {
        let mut writer = self.lock();
        if self.store.source_digest()?.as_deref() == Some(digest) {
            return Ok(None);
        }
        let merged = merge_managed(file.clone(), &self.store.managed()?);
        model::validate(&merged).map_err(ReloadError::Invalid)?;
        let revision = self
            .store
            .import(&merged, "reload", ImportMode::Reload, digest)?;
        self.published
            .store(Arc::new(Self::publishable(&merged, revision)));
        self.admins.store(Arc::new(AdminSet::new(
            &merged.admins,
            self.bootstrap_token.as_deref(),
        )));
        *writer = Policy {
            subjects: Vec::new(),
            ..merged
        };
        Ok(Some(revision))
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
        lock_writer(&self.writer)
    }

    /// Once the subject overlay has grown, folds it into a new base on a background thread
    /// and swaps that in (same revision, same decisions), so that subject writes stay cheap.
    fn maybe_compact(&self) {
        let snapshot = self.published.load().snapshot.clone();
        if snapshot.subject_overlay_len() < COMPACT_AT
            || self.compacting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let published = Arc::clone(&self.published);
        let writer = Arc::clone(&self.writer);
        let compacting = Arc::clone(&self.compacting);
        std::thread::spawn(move || {
            let compacted = snapshot.compact_subjects();
            {
                let _writer = lock_writer(&writer);
                let current = published.load();
                if let Some(next) = current.snapshot.with_compacted(&compacted) {
                    published.store(Arc::new(Published {
                        snapshot: next,
                        catalog: Arc::clone(&current.catalog),
                        roles: Arc::clone(&current.roles),
                        published_at: current.published_at,
                    }));
                }
            }
            compacting.store(false, Ordering::Release);
        });
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
            published_at: std::time::SystemTime::now(),
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
            published_at: std::time::SystemTime::now(),
        };
        self.published.store(Arc::new(next));
        self.maybe_compact();
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
            published_at: std::time::SystemTime::now(),
        };
        self.published.store(Arc::new(next));
        self.maybe_compact();
        Ok(revision)
    }

    /// The audit trail after `after_revision`.
    pub fn audit(&self, after_revision: u64, limit: usize) -> Result<Vec<AuditRecord>, WriteError> {
        Ok(self.store.audit(after_revision, limit)?)
    }
}
