//! The local writer: the sidecar's own store is the source of truth. Each write is one
//! store transaction, flushed, then the touched table is recompiled and published.

use std::sync::Arc;
use std::time::Duration;

use super::writer::{Decided, PolicyWriter, WriteFuture, WriteIntent};
use super::{LiveState, ReloadError, WriteError};
use crate::model::Policy;
use crate::store::{Change, MutableStore, Write};

/// Admin writes to the local store (embedded mode).
pub struct LocalWriter {
    store: Arc<dyn MutableStore>,
}

impl LocalWriter {
    /// Writes to `store`.
    pub fn new(store: Arc<dyn MutableStore>) -> LocalWriter {
        LocalWriter { store }
    }
}

impl PolicyWriter for LocalWriter {
    fn write(&self, live: Arc<LiveState>, intent: WriteIntent) -> WriteFuture {
        let store = Arc::clone(&self.store);
        // The commit fsyncs: it runs on the blocking pool, never on a runtime worker.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || commit(&live, store.as_ref(), intent)).await?
        })
    }

    fn reload(
        &self,
        live: &Arc<LiveState>,
        file: &Policy,
        digest: &str,
    ) -> Result<Option<u64>, ReloadError> {
        super::reload::reload(live, self.store.as_ref(), file, digest)
    }

    fn min_revision_wait(&self) -> Duration {
        Duration::ZERO
    }
}

/// Under the writer lock: rules → one store transaction → recompile → publish.
fn commit(
    live: &Arc<LiveState>,
    store: &dyn MutableStore,
    mut intent: WriteIntent,
) -> Result<u64, WriteError> {
    let mut policy = live.lock();
    let current = live.published.revision();
    let expected = intent.expected_revision;
    if expected != 0 && expected != current {
        return Err(WriteError::Stale { expected, current });
    }
    let Decided { change, .. } = (intent.decide)(&policy, live.store.as_ref())?;
    let write = Write {
        change,
        base_revision: current,
        actor: intent.actor,
        action: intent.action.to_owned(),
    };
    let revision = store.commit(&write)?.revision;
    let published = live.published.load_full();
    match write.change {
        Change::PutRole(role) => {
            if let Some(slot) = policy.roles.iter_mut().find(|r| r.name == role.name) {
                *slot = role;
            }
            let snapshot = published.snapshot.with_roles(&policy, revision);
            live.published
                .publish(published.with_roles(snapshot, &policy.roles));
        }
        Change::PutSubject(subject) => {
            let snapshot = published
                .snapshot
                .with_subject(&subject.id, Some(&subject), revision);
            live.published.publish(published.with_snapshot(snapshot));
            live.maybe_compact();
        }
        Change::DeleteSubject(id) => {
            let snapshot = published.snapshot.with_subject(&id, None, revision);
            live.published.publish(published.with_snapshot(snapshot));
            live.maybe_compact();
        }
    }
    Ok(revision)
}
