//! The live policy: the published snapshot that Checks read, and the single writer that turns
//! admin changes into store commits and new snapshots.
//!
//! A write goes: rules (model) → one store transaction, flushed → recompile the touched table →
//! swap. Checks never wait: they load whatever snapshot is published, lock-free.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};

use crate::auth::{AdminEntry, AdminSet, AuthError};
use crate::engine::{Snapshot, SnapshotBuilder};
use crate::model::{
    self, AdminPermission, Catalog, PermissionChange, Policy, Role, RuleError, Subject,
    SubjectOutcome, UpdateOutcome, ValidationError,
};
use crate::store::{
    AuditRecord, Change, ImportMode, Managed, MirrorBatch, MirrorOrigin, Mirrored, Revocation,
    Store, StoreError, Write,
};

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
    /// The store held a policy and the changed seed file was refused (it does not validate
    /// with the API-made changes merged in): the stored policy serves.
    FileRefused {
        /// Stored revision.
        revision: u64,
        /// Every problem found.
        problems: Vec<String>,
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

impl Seed {
    /// No policy: what is left of a seed once it has been handed to [`LivePolicy::open`].
    pub fn empty() -> Seed {
        Seed {
            policy: Policy::default(),
            digest: String::new(),
            reloadable: false,
        }
    }
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
/// still has it; a subject deleted through the API stays deleted). See [`merge_revoking`].
pub fn merge_managed(file: Policy, managed: &Managed) -> Policy {
    merge_revoking(file, managed).0
}

/// [`merge_managed`], and what the file revoked: a file's revocation always takes effect.
/// An API-made subject loses the roles, access roles and override entries the file no longer
/// has (an override left with no permission leaves the subject holding nothing); a subject
/// that still breaks a rule of the file's model goes; an API-changed role that the file's
/// model refuses (its base gone, its permissions moved to another role kind...) is replaced
/// by the file's version.
pub fn merge_revoking(mut file: Policy, managed: &Managed) -> (Policy, Vec<Revocation>) {
    let mut revoked = Vec::new();
    for role in &managed.roles {
        let Some(i) = file.roles.iter().position(|r| r.name == role.name) else {
            continue;
        };
        match model::validate_role(&file, role) {
            Ok(()) => file.roles[i] = role.clone(),
            Err(errors) => revoked.push(Revocation {
                target: format!("role/{}", role.name),
                revoked: errors.iter().map(ToString::to_string).collect(),
                removed: true,
            }),
        }
    }
    for subject in &managed.subjects {
        let mut kept = subject.clone();
        let mut lost = Vec::new();
        let has_role = |name: &str| file.roles.iter().any(|r| r.name == name);
        let has_permission = |name: &str| file.permission(name).is_some();
        let strip = |roles: &mut Vec<String>,
                     only: &mut Vec<String>,
                     resources: &mut Vec<model::ResourceRole>,
                     lost: &mut Vec<String>| {
            roles.retain(|r| has_role(r) || (lost.push(format!("role `{r}`")), false).1);
            resources.retain(|rr| {
                has_role(&rr.role)
                    || (
                        lost.push(format!("access role `{}` on `{}`", rr.role, rr.resource)),
                        false,
                    )
                        .1
            });
            let narrowed = !only.is_empty();
            only.retain(|p| has_permission(p) || (lost.push(format!("permission `{p}`")), false).1);
            if narrowed && only.is_empty() {
                // The override allowed only what is gone: nothing stays effective.
                roles.clear();
            }
        };
        strip(
            &mut kept.roles,
            &mut kept.only,
            &mut kept.resources,
            &mut lost,
        );
        if let Some(pending) = &mut kept.pending {
            strip(
                &mut pending.roles,
                &mut pending.only,
                &mut pending.resources,
                &mut lost,
            );
        }
        let slot = file.subjects.iter().position(|s| s.id == subject.id);
        if let Err(errors) = model::validate_subject(&file, &kept) {
            lost.extend(errors.iter().map(ToString::to_string));
            revoked.push(Revocation {
                target: format!("subject/{}", subject.id),
                revoked: lost,
                removed: true,
            });
            if let Some(i) = slot {
                file.subjects.remove(i);
            }
            continue;
        }
        if !lost.is_empty() {
            revoked.push(Revocation {
                target: format!("subject/{}", subject.id),
                revoked: lost,
                removed: false,
            });
        }
        match slot {
            Some(i) => file.subjects[i] = kept,
            None => file.subjects.push(kept),
        }
    }
    file.subjects
        .retain(|s| !managed.deleted_subjects.contains(&s.id));
    file.subjects.sort_by(|a, b| a.id.cmp(&b.id));
    (file, revoked)
}

fn log_revoked(revoked: &[Revocation]) {
    for r in revoked {
        tracing::warn!(
            target = %r.target,
            removed = r.removed,
            revoked = %r.revoked.join("; "),
            "the policy file revoked access from an entity changed through the admin API"
        );
    }
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
    /// Fleet mode: the shared store (etcd) cannot be reached or the local mirror did not catch
    /// up in time; the change may or may not have been made (retry with `expected_revision`).
    #[error("{0}")]
    Unavailable(String),
}

/// A write to the shared source of truth (fleet mode): one transaction that succeeds only if
/// none of the keys the write depends on changed after `unchanged_since`.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedWrite {
    /// The change.
    pub change: Change,
    /// The base role of a role change (its rules depend on it), if any.
    pub base_role: Option<String>,
    /// Keys the write depends on must not have been modified after this revision.
    pub unchanged_since: u64,
    /// Admin name.
    pub actor: String,
    /// RPC name.
    pub action: String,
}

/// Why a shared write was not made.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// A key the write depends on changed after `unchanged_since`.
    #[error("changed at revision {modified_at}")]
    Conflict {
        /// The newest modification revision among the keys.
        modified_at: u64,
    },
    /// Deleting something that is not there.
    #[error("{0} does not exist")]
    Missing(String),
    /// The shared store cannot be reached.
    #[error("the shared policy store is unavailable: {0}")]
    Unavailable(String),
}

/// The shared source of truth of a fleet (etcd). Called from the blocking pool.
pub trait SharedSource: Send + Sync + 'static {
    /// Commits `write`; returns the revision it produced.
    fn commit(&self, write: &SharedWrite) -> Result<u64, SharedError>;
}

/// Fleet mode settings of a [`LivePolicy`].
#[derive(Clone)]
pub struct FleetHooks {
    /// Where admin writes go.
    pub shared: Arc<dyn SharedSource>,
    /// How long a Check waits for its `min_revision`.
    pub min_revision_wait: Duration,
    /// How long an admin write waits for the local mirror to apply its revision.
    pub apply_wait: Duration,
}

/// Why a mirrored change was not applied (the mirror then reloads the whole prefix).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The mirrored policy does not validate; the last valid one keeps serving.
    #[error("the mirrored policy is invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
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
    /// The revision published last (fleet mode waits on it).
    applied: tokio::sync::watch::Sender<u64>,
    /// Bumped after every publish (any revision), for the xDS pusher.
    published_seq: tokio::sync::watch::Sender<u64>,
    /// Set in fleet mode.
    fleet: OnceLock<FleetHooks>,
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
        // Every path compiles before it commits: nothing that fails to compile reaches the store.
        let (policy, snapshot, opened) = match head {
            None => {
                model::validate(&seed.policy).map_err(OpenError::InvalidStored)?;
                let snapshot = Snapshot::compile(&seed.policy, 0);
                let revision =
                    store.import(&seed.policy, "import", ImportMode::Reseed, &seed.digest)?;
                (
                    // The writer keeps everything but the subjects (the snapshot has them).
                    Policy {
                        version: seed.policy.version,
                        catalog: seed.policy.catalog.clone(),
                        presets: seed.policy.presets.clone(),
                        roles: seed.policy.roles.clone(),
                        subjects: Vec::new(),
                        admins: seed.policy.admins.clone(),
                    },
                    snapshot.with_revision(revision),
                    Opened::Imported { revision },
                )
            }
            Some(head) if seed_changed => {
                let (merged, revoked) = merge_revoking(seed.policy.clone(), &store.managed()?);
                match model::validate(&merged) {
                    Ok(()) => {
                        log_revoked(&revoked);
                        let snapshot = Snapshot::compile(&merged, 0);
                        let revision = store.import_revoking(
                            &merged,
                            "reload",
                            ImportMode::Reload,
                            &seed.digest,
                            &revoked,
                        )?;
                        (
                            merged,
                            snapshot.with_revision(revision),
                            Opened::Reloaded { revision },
                        )
                    }
                    // The file is refused, not the start: the stored policy keeps serving.
                    Err(errors) => {
                        let revision = head.revision;
                        let snapshot =
                            Self::compile_stored(store.as_ref(), &head.policy, revision)?;
                        (
                            head.policy,
                            snapshot,
                            Opened::FileRefused {
                                revision,
                                problems: errors.iter().map(ToString::to_string).collect(),
                            },
                        )
                    }
                }
            }
            Some(head) => {
                let revision = head.revision;
                let snapshot = Self::compile_stored(store.as_ref(), &head.policy, revision)?;
                (head.policy, snapshot, Opened::Loaded { revision })
            }
        };
        let live = Self::assemble(store, policy, snapshot, bootstrap_token);
        Ok((live, opened))
    }

    fn assemble(
        store: Arc<dyn Store>,
        policy: Policy,
        snapshot: Snapshot,
        bootstrap_token: Option<&str>,
    ) -> LivePolicy {
        let revision = snapshot.revision();
        LivePolicy {
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
            applied: tokio::sync::watch::Sender::new(revision),
            published_seq: tokio::sync::watch::Sender::new(0),
            fleet: OnceLock::new(),
        }
    }

    /// Fleet mode: the policy last mirrored into the local store, served as it is (the
    /// sidecar serves its last mirrored state while the shared store is unreachable). `None`
    /// when the store holds no mirror of `origin_prefix`.
    pub fn open_mirror(
        store: Arc<dyn Store>,
        origin_prefix: &str,
        bootstrap_token: Option<&str>,
    ) -> Result<Option<LivePolicy>, OpenError> {
        match store.mirror_origin()? {
            Some(origin) if origin.prefix == origin_prefix => {}
            _ => return Ok(None),
        }
        let Some(head) = store.load_head()? else {
            return Ok(None);
        };
        let snapshot = Self::compile_stored(store.as_ref(), &head.policy, head.revision)?;
        Ok(Some(Self::assemble(
            store,
            head.policy,
            snapshot,
            bootstrap_token,
        )))
    }

    /// Fleet mode: a full load of the shared store at `revision`, mirrored into the local
    /// store and compiled.
    pub fn open_loaded(
        store: Arc<dyn Store>,
        policy: &Policy,
        revision: u64,
        origin: &MirrorOrigin,
        bootstrap_token: Option<&str>,
    ) -> Result<LivePolicy, MirrorError> {
        model::validate(policy).map_err(MirrorError::Invalid)?;
        store.replace_mirrored(policy, revision, origin)?;
        let snapshot = Snapshot::compile(policy, revision);
        Ok(Self::assemble(
            store,
            policy.clone(),
            snapshot,
            bootstrap_token,
        ))
    }

    /// Switches admin writes to the shared store and lets Checks wait for `min_revision`.
    pub fn enable_fleet(&self, hooks: FleetHooks) {
        let _ = self.fleet.set(hooks);
    }

    /// The fleet settings, in fleet mode.
    pub fn fleet(&self) -> Option<&FleetHooks> {
        self.fleet.get()
    }

    /// The local store's mirror origin (fleet mode).
    pub fn mirror_origin(&self) -> Result<Option<MirrorOrigin>, StoreError> {
        self.store.mirror_origin()
    }

    /// Notified after every publish: a receiver sees `changed()` once something new was
    /// published (then reads [`LivePolicy::current`]).
    pub fn subscribe_published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published_seq.subscribe()
    }

    /// The revision of the published snapshot.
    pub fn revision(&self) -> u64 {
        self.published.load().snapshot.revision()
    }

    /// Waits until the published revision reaches `revision`, at most `timeout`; true if it
    /// did. Async callers (Check).
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        if *rx.borrow() >= revision {
            return true;
        }
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await,
            Ok(Ok(_))
        )
    }

    /// [`LivePolicy::wait_for`] from the blocking pool (admin writes).
    fn wait_blocking(&self, revision: u64, timeout: Duration) -> bool {
        if self.revision() >= revision {
            return true;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(self.wait_for(revision, timeout)),
            Err(_) => false,
        }
    }

    /// Check's read-your-writes: in fleet mode waits (bounded by `--min-revision-wait-ms`)
    /// for `min_revision`; embedded mode answers at once.
    pub async fn await_min_revision(&self, min_revision: u64) {
        if let Some(fleet) = self.fleet.get() {
            if min_revision > self.revision() && !fleet.min_revision_wait.is_zero() {
                self.wait_for(min_revision, fleet.min_revision_wait).await;
            }
        }
    }

    fn notify_applied(&self) {
        let revision = self.revision();
        self.applied.send_if_modified(|r| {
            if *r < revision {
                *r = revision;
                true
            } else {
                false
            }
        });
    }

    /// Fleet mode: applies one mirrored revision (validated first) to the local store and
    /// publishes it, recompiling incrementally: subjects through `with_subject`, roles through
    /// `with_roles`, and everything only when the catalog changed or a role was removed.
    /// Returns false when the revision was applied before.
    pub fn apply_mirrored(&self, batch: &MirrorBatch) -> Result<bool, MirrorError> {
        let mut policy = self.lock();
        let current = self.published.load_full();
        if batch.revision <= current.snapshot.revision() {
            return Ok(false);
        }
        let mut next = policy.clone();
        let (mut full, mut roles_changed, mut admins_changed) = (false, false, false);
        let mut subjects: Vec<(&str, Option<&Subject>)> = Vec::new();
        for change in &batch.changes {
            match change {
                Mirrored::Head(head) => {
                    next.version = head.version;
                    next.catalog = head.catalog.clone();
                    next.presets = head.presets.clone();
                    full = true;
                }
                Mirrored::PutRole(role) => {
                    match next.roles.binary_search_by(|r| r.name.cmp(&role.name)) {
                        Ok(i) => next.roles[i] = role.clone(),
                        Err(i) => next.roles.insert(i, role.clone()),
                    }
                    roles_changed = true;
                }
                Mirrored::DeleteRole(name) => {
                    next.roles.retain(|r| &r.name != name);
                    full = true;
                }
                Mirrored::PutSubject(s) => subjects.push((&s.id, Some(s))),
                Mirrored::DeleteSubject(id) => subjects.push((id, None)),
                Mirrored::PutAdmin(admin) => {
                    match next.admins.binary_search_by(|a| a.name.cmp(&admin.name)) {
                        Ok(i) => next.admins[i] = admin.clone(),
                        Err(i) => next.admins.insert(i, admin.clone()),
                    }
                    admins_changed = true;
                }
                Mirrored::DeleteAdmin(name) => {
                    next.admins.retain(|a| &a.name != name);
                    admins_changed = true;
                }
            }
        }
        if full || roles_changed || admins_changed {
            model::validate(&next).map_err(MirrorError::Invalid)?;
        }
        for (_, subject) in &subjects {
            if let Some(subject) = subject {
                model::validate_subject(&next, subject).map_err(MirrorError::Invalid)?;
            }
        }
        if !self.store.apply_mirrored(batch)? {
            return Ok(false);
        }
        let revision = batch.revision;
        let published = if full {
            Self::publishable_stored(self.store.as_ref(), &next, revision)?
        } else {
            let mut snapshot = if roles_changed || subjects.is_empty() {
                current.snapshot.with_roles(&next, revision)
            } else {
                current.snapshot.clone()
            };
            for (id, subject) in &subjects {
                snapshot = snapshot.with_subject(id, *subject, revision);
            }
            Published {
                snapshot,
                catalog: Arc::clone(&current.catalog),
                roles: if roles_changed {
                    Arc::new(next.roles.clone())
                } else {
                    Arc::clone(&current.roles)
                },
                published_at: std::time::SystemTime::now(),
            }
        };
        self.published.store(Arc::new(published));
        self.published_seq.send_modify(|n| *n += 1);
        if admins_changed {
            self.admins.store(Arc::new(AdminSet::new(
                &next.admins,
                self.bootstrap_token.as_deref(),
            )));
        }
        *policy = next;
        drop(policy);
        self.maybe_compact();
        self.notify_applied();
        Ok(true)
    }

    fn publishable_stored(
        store: &dyn Store,
        head: &Policy,
        revision: u64,
    ) -> Result<Published, OpenError> {
        Ok(Published {
            snapshot: Self::compile_stored(store, head, revision)?,
            catalog: Arc::new(head.catalog.clone()),
            roles: Arc::new(head.roles.clone()),
            published_at: std::time::SystemTime::now(),
        })
    }

    /// Fleet mode: replaces the mirror with a full load of the shared store (after a
    /// compaction, or when the local store mirrors something else) and publishes it.
    pub fn replace_mirrored(
        &self,
        policy: &Policy,
        revision: u64,
        origin: &MirrorOrigin,
    ) -> Result<(), MirrorError> {
        let mut writer = self.lock();
        model::validate(policy).map_err(MirrorError::Invalid)?;
        self.store.replace_mirrored(policy, revision, origin)?;
        self.published
            .store(Arc::new(Self::publishable(policy, revision)));
        self.published_seq.send_modify(|n| *n += 1);
        self.admins.store(Arc::new(AdminSet::new(
            &policy.admins,
            self.bootstrap_token.as_deref(),
        )));
        *writer = Policy {
            subjects: Vec::new(),
            ..policy.clone()
        };
        drop(writer);
        self.notify_applied();
        Ok(())
    }

    /// Fleet mode write: decides the change on the mirrored policy, commits it to the shared
    /// store in one transaction guarded by the keys' mod revisions, then waits until the local
    /// mirror has applied it, so that the answer's revision is the one this sidecar serves.
    /// A key changed by another sidecar in between: with `expected_revision` set, the write
    /// is stale; without, it is decided again on the newer state.
    fn shared_write<T>(
        &self,
        fleet: &FleetHooks,
        expected_revision: u64,
        actor: &str,
        action: &str,
        decide: impl Fn(&Policy) -> Result<(Change, Option<String>, T), WriteError>,
    ) -> Result<(T, u64), WriteError> {
        let behind = |revision: u64| {
            WriteError::Unavailable(format!(
                "the local policy mirror has not reached revision {revision} yet (is etcd reachable?); retry"
            ))
        };
        if expected_revision != 0 && !self.wait_blocking(expected_revision, fleet.apply_wait) {
            return Err(behind(expected_revision));
        }
        for _ in 0..8 {
            let (change, base_role, out, base) = {
                let policy = self.lock();
                let base = self.revision();
                let (change, base_role, out) = decide(&policy)?;
                (change, base_role, out, base)
            };
            let write = SharedWrite {
                change,
                base_role,
                unchanged_since: if expected_revision != 0 {
                    expected_revision
                } else {
                    base
                },
                actor: actor.to_owned(),
                action: action.to_owned(),
            };
            match fleet.shared.commit(&write) {
                Ok(revision) => {
                    if !self.wait_blocking(revision, fleet.apply_wait) {
                        return Err(WriteError::Unavailable(format!(
                            "committed at revision {revision}, but the local policy mirror has not applied it yet"
                        )));
                    }
                    return Ok((out, revision));
                }
                Err(SharedError::Conflict { modified_at }) if expected_revision != 0 => {
                    return Err(WriteError::Stale {
                        expected: expected_revision,
                        current: modified_at,
                    });
                }
                Err(SharedError::Conflict { modified_at }) => {
                    if !self.wait_blocking(modified_at, fleet.apply_wait) {
                        return Err(behind(modified_at));
                    }
                }
                Err(SharedError::Missing(what)) => return Err(WriteError::NotFound(what)),
                Err(e @ SharedError::Unavailable(_)) => {
                    return Err(WriteError::Unavailable(e.to_string()));
                }
            }
        }
        Err(WriteError::Unavailable(
            "the policy kept changing under this write; retry".into(),
        ))
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
                    problem: e.problem,
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
        let (merged, revoked) = merge_revoking(file.clone(), &self.store.managed()?);
        model::validate(&merged).map_err(ReloadError::Invalid)?;
        // Compiled before the commit: a policy that cannot compile never reaches the store.
        let compiled = Self::publishable(&merged, 0);
        log_revoked(&revoked);
        let revision =
            self.store
                .import_revoking(&merged, "reload", ImportMode::Reload, digest, &revoked)?;
        self.published.store(Arc::new(Published {
            snapshot: compiled.snapshot.with_revision(revision),
            ..compiled
        }));
        self.published_seq.send_modify(|n| *n += 1);
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
        let running = CompactionRunning(Arc::clone(&self.compacting));
        std::thread::spawn(move || {
            // Cleared when this thread ends, by returning or by a panic: a failed fold never
            // stops later ones.
            let _running = running;
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
        self.published_seq.send_modify(|n| *n += 1);
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
        if let Some(fleet) = self.fleet.get() {
            return self.shared_write(
                fleet,
                expected_revision,
                actor,
                "update_permission",
                |policy| {
                    let outcome = model::apply_update(policy, role, change)?;
                    Ok((
                        Change::PutRole(outcome.role.clone()),
                        outcome.role.base.clone(),
                        outcome,
                    ))
                },
            );
        }
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
        if let Some(fleet) = self.fleet.get() {
            return self.shared_write(
                fleet,
                expected_revision,
                actor,
                "approve_pending",
                |policy| {
                    let approved = model::apply_approval(policy, role)?;
                    Ok((
                        Change::PutRole(approved.clone()),
                        approved.base.clone(),
                        approved,
                    ))
                },
            );
        }
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

    /// PutSubject: creates or replaces a subject under every rule ([`model::apply_subject`]):
    /// for an approval-bound subject the widening part waits in `pending`.
    pub fn put_subject(
        &self,
        actor: &str,
        subject: Subject,
        expected_revision: u64,
    ) -> Result<(SubjectOutcome, u64), WriteError> {
        if let Some(fleet) = self.fleet.get() {
            return self.shared_write(fleet, expected_revision, actor, "put_subject", |policy| {
                let current = self.store.subject(&subject.id)?;
                let outcome = model::apply_subject(policy, current.as_ref(), subject.clone())?;
                Ok((Change::PutSubject(outcome.subject.clone()), None, outcome))
            });
        }
        let policy = self.lock();
        let base = self.base_revision(expected_revision)?;
        let current = self.store.subject(&subject.id)?;
        let outcome = model::apply_subject(&policy, current.as_ref(), subject)?;
        let revision = self.save_subject(&outcome.subject, base, actor, "put_subject")?;
        Ok((outcome, revision))
    }

    /// ApprovePending for a subject: its pending widening becomes effective.
    pub fn approve_subject(
        &self,
        actor: &str,
        id: &str,
        expected_revision: u64,
    ) -> Result<(Subject, u64), WriteError> {
        let decide = |policy: &Policy| -> Result<Subject, WriteError> {
            let current = self
                .store
                .subject(id)?
                .ok_or_else(|| RuleError::UnknownSubject(id.to_owned()))?;
            Ok(model::apply_subject_approval(policy, &current)?)
        };
        if let Some(fleet) = self.fleet.get() {
            return self.shared_write(
                fleet,
                expected_revision,
                actor,
                "approve_pending",
                |policy| {
                    let approved = decide(policy)?;
                    Ok((Change::PutSubject(approved.clone()), None, approved))
                },
            );
        }
        let policy = self.lock();
        let base = self.base_revision(expected_revision)?;
        let approved = decide(&policy)?;
        let revision = self.save_subject(&approved, base, actor, "approve_pending")?;
        Ok((approved, revision))
    }

    fn save_subject(
        &self,
        subject: &Subject,
        base: u64,
        actor: &str,
        action: &str,
    ) -> Result<u64, WriteError> {
        let revision = self.commit(Change::PutSubject(subject.clone()), base, actor, action)?;
        let current = self.published.load();
        let next = Published {
            snapshot: current
                .snapshot
                .with_subject(&subject.id, Some(subject), revision),
            catalog: Arc::clone(&current.catalog),
            roles: Arc::clone(&current.roles),
            published_at: std::time::SystemTime::now(),
        };
        self.published.store(Arc::new(next));
        self.published_seq.send_modify(|n| *n += 1);
        self.maybe_compact();
        Ok(revision)
    }

    /// DeleteSubject: removes a subject; NOT_FOUND when absent.
    pub fn delete_subject(
        &self,
        actor: &str,
        id: &str,
        expected_revision: u64,
    ) -> Result<u64, WriteError> {
        if id.is_empty() {
            return Err(WriteError::Invalid {
                field: "id".into(),
                message: "subject id is empty".into(),
            });
        }
        if let Some(fleet) = self.fleet.get() {
            return self
                .shared_write(fleet, expected_revision, actor, "delete_subject", |_| {
                    Ok((Change::DeleteSubject(id.to_owned()), None, ()))
                })
                .map(|((), revision)| revision);
        }
        let _policy = self.lock();
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
        self.published_seq.send_modify(|n| *n += 1);
        self.maybe_compact();
        Ok(revision)
    }

    /// The audit trail after `after_revision`.
    pub fn audit(&self, after_revision: u64, limit: usize) -> Result<Vec<AuditRecord>, WriteError> {
        Ok(self.store.audit(after_revision, limit)?)
    }

    /// A stored subject with the revision of its last change; `NotFound` when there is none.
    pub fn subject(&self, id: &str) -> Result<(Subject, u64), WriteError> {
        self.store
            .subject_changed(id)?
            .ok_or_else(|| WriteError::NotFound(format!("subject/{id}")))
    }

    /// A page of stored subjects after id `after` that `keep` accepts (see
    /// [`Store::subjects_page`]).
    pub fn subjects_page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: &mut dyn FnMut(&Subject) -> bool,
    ) -> Result<(Vec<(Subject, u64)>, bool), WriteError> {
        Ok(self.store.subjects_page(after, limit, keep)?)
    }
}

/// Marks a background subject fold as running; dropping it (when the fold's thread ends, by
/// returning or by unwinding) clears the mark.
struct CompactionRunning(Arc<AtomicBool>);

impl Drop for CompactionRunning {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fold_that_panics_does_not_stop_later_folds() {
        let flag = Arc::new(AtomicBool::new(true));
        let running = CompactionRunning(Arc::clone(&flag));
        let joined = std::thread::spawn(move || {
            let _running = running;
            panic!("a fold that fails");
        })
        .join();
        assert!(joined.is_err(), "the fold panicked");
        assert!(!flag.load(Ordering::Acquire), "the mark is cleared");
    }
}
