//! What Checks read — one consistent revision of the compiled policy — and how a new one is
//! published: swapped in lock-free, with the notifications that follow a publish.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use crate::engine::Snapshot;
use crate::model::{Catalog, Policy, Role};

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
    pub published_at: SystemTime,
}

impl Published {
    /// The one constructor: a state published now.
    pub(super) fn new(snapshot: Snapshot, catalog: Arc<Catalog>, roles: Arc<Vec<Role>>) -> Self {
        Published {
            snapshot,
            catalog,
            roles,
            published_at: SystemTime::now(),
        }
    }

    /// `snapshot` with the catalog and roles of the whole `policy` it was compiled from.
    pub(super) fn of_policy(policy: &Policy, snapshot: Snapshot) -> Self {
        Self::new(
            snapshot,
            Arc::new(policy.catalog.clone()),
            Arc::new(policy.roles.clone()),
        )
    }

    /// Compiles the whole `policy` at `revision`.
    pub(super) fn compile(policy: &Policy, revision: u64) -> Self {
        Self::of_policy(policy, Snapshot::compile(policy, revision))
    }

    /// Another snapshot over this state's catalog and roles.
    pub(super) fn with_snapshot(&self, snapshot: Snapshot) -> Self {
        Self::new(snapshot, Arc::clone(&self.catalog), Arc::clone(&self.roles))
    }

    /// Another snapshot and roles over this state's catalog.
    pub(super) fn with_roles(&self, snapshot: Snapshot, roles: &[Role]) -> Self {
        Self::new(
            snapshot,
            Arc::clone(&self.catalog),
            Arc::new(roles.to_vec()),
        )
    }
}

/// The published state and who is told when it changes.
pub(super) struct Publisher {
    /// Shared with the background subject fold.
    current: Arc<ArcSwap<Published>>,
    /// The revision published last by the mirror (fleet mode waits on it).
    applied: watch::Sender<u64>,
    /// Bumped after every publish (any revision), for the xDS pusher.
    seq: watch::Sender<u64>,
}

impl Publisher {
    pub(super) fn new(first: Published) -> Self {
        let revision = first.snapshot.revision();
        Publisher {
            current: Arc::new(ArcSwap::from_pointee(first)),
            applied: watch::Sender::new(revision),
            seq: watch::Sender::new(0),
        }
    }

    /// The published state, lock-free.
    pub(super) fn load(&self) -> Guard<Arc<Published>> {
        self.current.load()
    }

    /// The published state, as an owned handle.
    pub(super) fn load_full(&self) -> Arc<Published> {
        self.current.load_full()
    }

    /// The revision of the published snapshot.
    pub(super) fn revision(&self) -> u64 {
        self.current.load().snapshot.revision()
    }

    /// Swaps `next` in and tells the subscribers.
    pub(super) fn publish(&self, next: Published) {
        self.current.store(Arc::new(next));
        self.seq.send_modify(|n| *n += 1);
    }

    /// Swaps `next` in without telling anyone: the same revision, the same decisions (a
    /// subject fold).
    pub(super) fn replace_quietly(&self, next: Published) {
        self.current.store(Arc::new(next));
    }

    /// Wakes the waiters of [`Publisher::wait_for`] up to the published revision.
    pub(super) fn notify_applied(&self) {
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

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }

    /// Waits until the applied revision reaches `revision`, at most `timeout`; true if it did.
    pub(super) async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        if *rx.borrow() >= revision {
            return true;
        }
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await,
            Ok(Ok(_))
        )
    }
}
