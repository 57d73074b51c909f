//! The live policy: the published snapshot that Checks read, and the single writer that turns
//! admin changes into commits and new snapshots.
//!
//! A write goes: rules (model) → the [`PolicyWriter`] chosen at construction (the local store,
//! or a fleet's shared store) → recompile the touched table → swap. Checks never wait: they
//! load whatever snapshot is published, lock-free.
//!
//! One job per file: opening ([`open`](LivePolicy::open)), the published state
//! (`published.rs`), where writes go (`writer.rs`, `local.rs`), mirror apply (`mirror.rs`),
//! file reload (`reload.rs`) and the background subject fold (`compaction.rs`).

mod compaction;
mod error;
mod local;
mod mirror;
mod open;
mod published;
mod reload;
mod writer;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};

pub use error::{MirrorError, OpenError, ReloadError, Unavailable, WriteError};
pub use local::LocalWriter;
pub use mirror::MirrorSink;
pub use open::{Opened, Seed};
pub use published::Published;
pub use reload::{merge_managed, merge_revoking};
pub use writer::{Decide, Decided, PolicyWriter, WriteFuture, WriteIntent};

use crate::auth::{AdminEntry, AdminSet, AuthError};
use crate::model::{
    self, AdminPermission, PermissionChange, Policy, Role, RuleError, Subject, SubjectOutcome,
    UpdateOutcome,
};
use crate::store::{AuditRecord, Change, Store};
use compaction::Compaction;
use published::Publisher;

/// The state a live policy's jobs share: the read store, the published snapshot, the policy
/// held by the single writer, the admins. Writers get it with each write.
pub struct LiveState {
    /// Reads (the writers' rules read subjects through it too).
    store: Arc<dyn Store>,
    published: Publisher,
    /// The policy without its subjects (which live in the store and the snapshot only), held
    /// by the single writer.
    policy: Mutex<Policy>,
    admins: ArcSwap<AdminSet>,
    bootstrap_token: Option<String>,
    compaction: Compaction,
}

impl LiveState {
    fn lock(&self) -> MutexGuard<'_, Policy> {
        // A panic while holding the lock cannot leave the policy half-changed: it is replaced
        // only after the store committed. So a poisoned lock is still consistent.
        self.policy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The revision of the published snapshot.
    pub fn revision(&self) -> u64 {
        self.published.revision()
    }

    /// Runs `decide` under the writer lock on the current policy; returns the change and the
    /// revision it was decided at. Blocking (it may read the store).
    pub fn decide(&self, decide: &mut Decide) -> Result<(Decided, u64), WriteError> {
        let policy = self.lock();
        let base = self.revision();
        Ok((decide(&policy, self.store.as_ref())?, base))
    }

    /// Waits until this sidecar has published `revision`, at most `timeout`; true if it did.
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        self.revision() >= revision || self.published.wait_for(revision, timeout).await
    }
}

/// The sidecar's policy state.
pub struct LivePolicy {
    state: Arc<LiveState>,
    /// Where admin writes go; chosen when the policy was opened.
    writer: Arc<dyn PolicyWriter>,
}

impl LivePolicy {
    /// The published state. Lock-free; hold it for one request, not longer.
    pub fn current(&self) -> Guard<Arc<Published>> {
        self.state.published.load()
    }

    /// The revision of the published snapshot.
    pub fn revision(&self) -> u64 {
        self.state.revision()
    }

    /// Notified after every publish: a receiver sees `changed()` once something new was
    /// published (then reads [`LivePolicy::current`]).
    pub fn subscribe_published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.published.subscribe()
    }

    /// Waits until the published revision reaches `revision`, at most `timeout`; true if it
    /// did.
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        self.state.published.wait_for(revision, timeout).await
    }

    /// Check's read-your-writes: in fleet mode waits (bounded by `--min-revision-wait-ms`)
    /// for `min_revision`; embedded mode answers at once.
    pub async fn await_min_revision(&self, min_revision: u64) {
        let wait = self.writer.min_revision_wait();
        if min_revision > self.revision() && !wait.is_zero() {
            self.wait_for(min_revision, wait).await;
        }
    }

    /// The admin whose bearer token this is, if it holds `permission`.
    pub fn authorize(
        &self,
        token: Option<&str>,
        permission: AdminPermission,
    ) -> Result<AdminEntry, AuthError> {
        self.state
            .admins
            .load()
            .authorize(token, permission)
            .cloned()
    }

    /// The audit trail after `after_revision`.
    pub fn audit(&self, after_revision: u64, limit: usize) -> Result<Vec<AuditRecord>, WriteError> {
        Ok(self.state.store.audit(after_revision, limit)?)
    }

    /// A stored subject with the revision of its last change; `NotFound` when there is none.
    pub fn subject(&self, id: &str) -> Result<(Subject, u64), WriteError> {
        self.state
            .store
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
        Ok(self.state.store.subjects_page(after, limit, keep)?)
    }

    /// Re-applies a changed policy file under the reload rule ([`merge_managed`]). Returns the
    /// new revision, or `None` when the file is the one already applied. On error the current
    /// snapshot keeps serving. Blocking.
    pub fn reload(&self, file: &Policy, digest: &str) -> Result<Option<u64>, ReloadError> {
        self.writer.reload(&self.state, file, digest)
    }

    /// UpdatePermission: applies the rules, commits, publishes. Returns the outcome and revision.
    pub async fn update_permission(
        &self,
        actor: &str,
        role: &str,
        change: &PermissionChange,
        expected_revision: u64,
    ) -> Result<(UpdateOutcome, u64), WriteError> {
        let (role, change) = (role.to_owned(), change.clone());
        self.write(
            expected_revision,
            actor,
            "update_permission",
            move |policy, _| {
                let outcome = model::apply_update(policy, &role, &change)?;
                let base = outcome.role.base.clone();
                Ok((Change::PutRole(outcome.role.clone()), base, outcome))
            },
        )
        .await
    }

    /// ApprovePending: accepts a role's pending widening as a whole.
    pub async fn approve_pending(
        &self,
        actor: &str,
        role: &str,
        expected_revision: u64,
    ) -> Result<(Role, u64), WriteError> {
        let role = role.to_owned();
        self.write(
            expected_revision,
            actor,
            "approve_pending",
            move |policy, _| {
                let approved = model::apply_approval(policy, &role)?;
                let base = approved.base.clone();
                Ok((Change::PutRole(approved.clone()), base, approved))
            },
        )
        .await
    }

    /// PutSubject: creates or replaces a subject under every rule ([`model::apply_subject`]):
    /// for an approval-bound subject the widening part waits in `pending`.
    pub async fn put_subject(
        &self,
        actor: &str,
        subject: Subject,
        expected_revision: u64,
    ) -> Result<(SubjectOutcome, u64), WriteError> {
        self.write(
            expected_revision,
            actor,
            "put_subject",
            move |policy, store| {
                let current = store.subject(&subject.id)?;
                let outcome = model::apply_subject(policy, current.as_ref(), subject.clone())?;
                Ok((Change::PutSubject(outcome.subject.clone()), None, outcome))
            },
        )
        .await
    }

    /// ApprovePending for a subject: its pending widening becomes effective.
    pub async fn approve_subject(
        &self,
        actor: &str,
        id: &str,
        expected_revision: u64,
    ) -> Result<(Subject, u64), WriteError> {
        let id = id.to_owned();
        self.write(
            expected_revision,
            actor,
            "approve_pending",
            move |policy, store| {
                let current = store
                    .subject(&id)?
                    .ok_or_else(|| RuleError::UnknownSubject(id.clone()))?;
                let approved = model::apply_subject_approval(policy, &current)?;
                Ok((Change::PutSubject(approved.clone()), None, approved))
            },
        )
        .await
    }

    /// DeleteSubject: removes a subject; NOT_FOUND when absent.
    pub async fn delete_subject(
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
        let id = id.to_owned();
        self.write(expected_revision, actor, "delete_subject", move |_, _| {
            Ok((Change::DeleteSubject(id.clone()), None, ()))
        })
        .await
        .map(|((), revision)| revision)
    }

    /// Hands a write to the writer; `decide` makes the change (and the RPC's outcome) from
    /// the policy, as often as the writer needs it decided again.
    async fn write<T: Send + 'static>(
        &self,
        expected_revision: u64,
        actor: &str,
        action: &'static str,
        mut decide: impl FnMut(&Policy, &dyn Store) -> Result<(Change, Option<String>, T), WriteError>
        + Send
        + 'static,
    ) -> Result<(T, u64), WriteError> {
        // The outcome of the last decision, which is the one committed.
        let outcome: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&outcome);
        let intent = WriteIntent {
            expected_revision,
            actor: actor.to_owned(),
            action,
            decide: Box::new(move |policy, store| {
                let (change, base_role, out) = decide(policy, store)?;
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
                Ok(Decided { change, base_role })
            }),
        };
        let revision = self.writer.write(Arc::clone(&self.state), intent).await?;
        let out = outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
        // PANIC SAFETY: a writer commits only a change `decide` returned, and `decide` fills
        // the slot before it returns one.
        #[allow(clippy::expect_used)]
        let out = out.expect("a committed write was decided");
        Ok((out, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::file::{EMBEDDED_DEFAULT, parse_policy};
    use crate::store::{MirrorOrigin, SledStore};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A writer that decides every write and commits none, counting what it was asked.
    #[derive(Default)]
    struct Refusing {
        writes: AtomicUsize,
        reloads: AtomicUsize,
    }

    impl PolicyWriter for Refusing {
        fn write(&self, live: Arc<LiveState>, mut intent: WriteIntent) -> WriteFuture {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                live.decide(&mut intent.decide)?;
                Err(Unavailable::KeptChanging.into())
            })
        }

        fn reload(
            &self,
            _live: &Arc<LiveState>,
            _file: &Policy,
            _digest: &str,
        ) -> Result<Option<u64>, ReloadError> {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            Err(ReloadError::NotFromFile)
        }

        fn min_revision_wait(&self) -> Duration {
            Duration::ZERO
        }
    }

    #[tokio::test]
    async fn every_write_goes_to_the_writer_it_was_built_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path()).expect("store"));
        let policy = parse_policy("p.yaml", EMBEDDED_DEFAULT).expect("valid");
        let origin = MirrorOrigin {
            cluster_id: 1,
            prefix: "/authz/".into(),
        };
        let writer = Arc::new(Refusing::default());
        let (live, _sink) = LivePolicy::open_loaded(
            Arc::clone(&store),
            &policy,
            40,
            &origin,
            None,
            Arc::clone(&writer) as Arc<dyn PolicyWriter>,
        )
        .expect("opens");
        let subject = Subject {
            id: "newcomer".into(),
            subject_type: "app".into(),
            roles: vec!["app-dispatcher".into()],
            ..Subject::default()
        };
        let refused = live.put_subject("ops", subject, 0).await;
        assert!(
            matches!(
                refused,
                Err(WriteError::Unavailable(Unavailable::KeptChanging))
            ),
            "{refused:?}"
        );
        let deleted = live.delete_subject("ops", "dispatcher", 0).await;
        assert!(deleted.is_err(), "the writer refused it too");
        assert_eq!(writer.writes.load(Ordering::SeqCst), 2);
        assert!(live.reload(&policy, "digest").is_err());
        assert_eq!(writer.reloads.load(Ordering::SeqCst), 1);
        // Nothing reached the local store or the published state behind the writer's back.
        assert_eq!(live.revision(), 40);
        assert_eq!(
            store.load_head().expect("head").expect("stored").revision,
            40
        );
        assert!(store.subject("newcomer").expect("read").is_none());
        assert!(store.subject("dispatcher").expect("read").is_some());
    }

    #[tokio::test]
    async fn a_local_write_is_stale_against_another_revision_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path()).expect("store"));
        let seed = Seed {
            policy: parse_policy("p.yaml", EMBEDDED_DEFAULT).expect("valid"),
            digest: "p".into(),
            reloadable: false,
        };
        let (live, _) = LivePolicy::open(Arc::clone(&store), &seed, None).expect("opens");
        let revision = live.revision();
        let stale = live.delete_subject("ops", "dispatcher", revision + 1).await;
        assert!(
            matches!(stale, Err(WriteError::Stale { expected, current })
                if expected == revision + 1 && current == revision),
            "{stale:?}"
        );
        assert_eq!(live.revision(), revision);
        let deleted = live
            .delete_subject("ops", "dispatcher", revision)
            .await
            .expect("deleted at the current revision");
        assert_eq!(deleted, revision + 1);
        assert_eq!(live.revision(), deleted, "published before the answer");
        assert!(store.subject("dispatcher").expect("read").is_none());
    }
}
