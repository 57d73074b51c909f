//! Mirror apply (fleet mode): each revision of the shared store, validated, committed to the
//! local mirror store at that revision and published, recompiling only what it touched.

use std::sync::Arc;

use super::open::compile_stored;
use super::published::Published;
use super::{LiveState, MirrorError};
use crate::auth::AdminSet;
use crate::model::{self, Policy, Subject};
use crate::store::{MirrorBatch, MirrorOrigin, MirrorStore, Mirrored, StoreError};

/// Feeds a live policy what its fleet mirror reads from the shared store.
#[derive(Clone)]
pub struct MirrorSink {
    live: Arc<LiveState>,
    store: Arc<dyn MirrorStore>,
}

impl MirrorSink {
    pub(super) fn new(live: Arc<LiveState>, store: Arc<dyn MirrorStore>) -> MirrorSink {
        MirrorSink { live, store }
    }

    /// The revision of the published snapshot (the shared store's revision last applied).
    pub fn revision(&self) -> u64 {
        self.live.published.revision()
    }

    /// The shared source the local store mirrors.
    pub fn origin(&self) -> Result<Option<MirrorOrigin>, StoreError> {
        self.store.mirror_origin()
    }

    /// Applies one mirrored revision (validated first) to the local store and publishes it,
    /// recompiling incrementally: subjects through `with_subject`, roles through
    /// `with_roles`, and everything only when the catalog changed or a role was removed.
    /// Returns false when the revision was applied before.
    pub fn apply(&self, batch: &MirrorBatch) -> Result<bool, MirrorError> {
        let live = &self.live;
        let mut policy = live.lock();
        let current = live.published.load_full();
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
            Published::of_policy(&next, compile_stored(live.store.as_ref(), &next, revision)?)
        } else {
            let mut snapshot = if roles_changed || subjects.is_empty() {
                current.snapshot.with_roles(&next, revision)
            } else {
                current.snapshot.clone()
            };
            for (id, subject) in &subjects {
                snapshot = snapshot.with_subject(id, *subject, revision);
            }
            if roles_changed {
                current.with_roles(snapshot, &next.roles)
            } else {
                current.with_snapshot(snapshot)
            }
        };
        live.published.publish(published);
        if admins_changed {
            live.admins.store(Arc::new(AdminSet::new(
                &next.admins,
                live.bootstrap_token.as_deref(),
            )));
        }
        *policy = next;
        drop(policy);
        live.maybe_compact();
        live.published.notify_applied();
        Ok(true)
    }

    /// Replaces the mirror with a full load of the shared store (after a compaction, or
    /// when the local store mirrors something else) and publishes it.
    pub fn replace(
        &self,
        policy: &Policy,
        revision: u64,
        origin: &MirrorOrigin,
    ) -> Result<(), MirrorError> {
        let live = &self.live;
        let mut writer = live.lock();
        model::validate(policy).map_err(MirrorError::Invalid)?;
        self.store.replace_mirrored(policy, revision, origin)?;
        live.published.publish(Published::compile(policy, revision));
        live.admins.store(Arc::new(AdminSet::new(
            &policy.admins,
            live.bootstrap_token.as_deref(),
        )));
        *writer = Policy {
            subjects: Vec::new(),
            ..policy.clone()
        };
        drop(writer);
        live.published.notify_applied();
        Ok(())
    }
}
