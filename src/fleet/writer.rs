//! Admin writes in fleet mode: the change decided on the mirrored policy, committed to etcd in
//! one transaction guarded by the keys' mod revisions, answered once the local mirror applied
//! it — so that the answer's revision is the one this sidecar serves.

use std::sync::Arc;
use std::time::Duration;

use super::etcd::pb::etcdserverpb::{Compare, TxnRequest, response_op};
use super::{AuditNote, EtcdClient, FleetError, Layout, delete, exists, get, modified_before, put};
use crate::live::{
    Decide, Decided, LiveState, PolicyWriter, ReloadError, Unavailable, WriteError, WriteFuture,
    WriteIntent,
};
use crate::model::{Policy, to_json_bytes as to_json};
use crate::store::{Change, Target};

/// How often a write is decided again when other sidecars keep changing what it depends on.
const ATTEMPTS: usize = 8;

/// Admin writes through etcd (the [`PolicyWriter`] of a fleet sidecar).
#[derive(Clone)]
pub struct EtcdWriter {
    client: EtcdClient,
    layout: Layout,
    /// How long a Check waits for its `min_revision`.
    min_revision_wait: Duration,
    /// How long a write waits for the local mirror to apply its revision.
    apply_wait: Duration,
}

/// One transaction that succeeds only if none of the keys the write depends on changed after
/// `unchanged_since`.
struct SharedWrite {
    decided: Decided,
    unchanged_since: u64,
    actor: String,
    action: &'static str,
}

/// Why a shared write was not made.
enum Refused {
    /// A key the write depends on changed at this revision.
    Conflict { modified_at: u64 },
    /// Deleting something that is not there.
    Missing(String),
}

impl EtcdWriter {
    /// Writes through `client` under `layout`'s keys.
    pub fn new(
        client: EtcdClient,
        layout: Layout,
        min_revision_wait: Duration,
        apply_wait: Duration,
    ) -> EtcdWriter {
        EtcdWriter {
            client,
            layout,
            min_revision_wait,
            apply_wait,
        }
    }

    fn txn_for(&self, write: &SharedWrite) -> (TxnRequest, Vec<u8>) {
        let change = &write.decided.change;
        let (key, value) = match change {
            Change::PutRole(r) => (self.layout.role(&r.name), Some(to_json(r))),
            Change::PutSubject(s) => (self.layout.subject(&s.id), Some(to_json(s))),
            Change::DeleteSubject(id) => (self.layout.subject(id), None),
        };
        let below = write.unchanged_since + 1;
        let mut depends = vec![key.clone(), self.layout.head()];
        if let Some(base) = &write.decided.base_role {
            depends.push(self.layout.role(base));
        }
        let mut compare: Vec<Compare> = depends
            .iter()
            .map(|k| modified_before(k.clone(), Vec::new(), below))
            .collect();
        let op = match value {
            Some(v) => put(key.clone(), v),
            None => {
                compare.push(exists(key.clone()));
                delete(key.clone())
            }
        };
        let note = AuditNote {
            actor: write.actor.clone(),
            action: write.action.to_owned(),
            target: Target::from(change).to_string(),
        };
        let txn = TxnRequest {
            compare,
            success: vec![op, put(self.layout.audit(), to_json(&note))],
            failure: depends.into_iter().map(get).collect(),
        };
        (txn, key)
    }

    /// Sends the write's transaction; the revision it produced, or why it was not made.
    async fn commit(&self, write: &SharedWrite) -> Result<Result<u64, Refused>, FleetError> {
        let (txn, key) = self.txn_for(write);
        let response = self.client.txn(txn).await?;
        if response.succeeded {
            return Ok(Ok(response
                .header
                .map(|h| h.revision.max(0) as u64)
                .unwrap_or(0)));
        }
        let mut modified_at = 0u64;
        let mut key_exists = false;
        for op in &response.responses {
            if let Some(response_op::Response::ResponseRange(range)) = &op.response {
                for kv in &range.kvs {
                    modified_at = modified_at.max(kv.mod_revision.max(0) as u64);
                    key_exists |= kv.key == key;
                }
            }
        }
        let change = &write.decided.change;
        if matches!(change, Change::DeleteSubject(_)) && !key_exists {
            return Ok(Err(Refused::Missing(Target::from(change).to_string())));
        }
        Ok(Err(Refused::Conflict { modified_at }))
    }

    /// Decides on the mirrored policy, commits to etcd, waits for the local mirror. A key
    /// changed by another sidecar in between: with `expected_revision` set, the write is
    /// stale; without, it is decided again on the newer state.
    async fn write(self, live: Arc<LiveState>, intent: WriteIntent) -> Result<u64, WriteError> {
        let WriteIntent {
            expected_revision,
            actor,
            action,
            mut decide,
        } = intent;
        if expected_revision != 0 && !live.wait_for(expected_revision, self.apply_wait).await {
            return Err(Unavailable::MirrorBehind(expected_revision).into());
        }
        for _ in 0..ATTEMPTS {
            let (decision, returned) = decide_blocking(&live, decide).await?;
            decide = returned;
            let (decided, base) = decision?;
            let write = SharedWrite {
                decided,
                unchanged_since: if expected_revision != 0 {
                    expected_revision
                } else {
                    base
                },
                actor: actor.clone(),
                action,
            };
            let committed = self
                .commit(&write)
                .await
                .map_err(|e| Unavailable::Shared(Box::new(e)))?;
            match committed {
                Ok(revision) => {
                    if !live.wait_for(revision, self.apply_wait).await {
                        return Err(Unavailable::NotApplied(revision).into());
                    }
                    return Ok(revision);
                }
                Err(Refused::Conflict { modified_at }) if expected_revision != 0 => {
                    return Err(WriteError::Stale {
                        expected: expected_revision,
                        current: modified_at,
                    });
                }
                Err(Refused::Conflict { modified_at }) => {
                    if !live.wait_for(modified_at, self.apply_wait).await {
                        return Err(Unavailable::MirrorBehind(modified_at).into());
                    }
                }
                Err(Refused::Missing(what)) => return Err(WriteError::NotFound(what)),
            }
        }
        Err(Unavailable::KeptChanging.into())
    }
}

/// Runs `decide` under the writer lock on the blocking pool (it may read the local store),
/// handing the closure back for another attempt.
async fn decide_blocking(
    live: &Arc<LiveState>,
    mut decide: Decide,
) -> Result<(Result<(Decided, u64), WriteError>, Decide), WriteError> {
    let live = Arc::clone(live);
    Ok(tokio::task::spawn_blocking(move || {
        let decision = live.decide(&mut decide);
        (decision, decide)
    })
    .await?)
}

impl PolicyWriter for EtcdWriter {
    fn write(&self, live: Arc<LiveState>, intent: WriteIntent) -> WriteFuture {
        Box::pin(self.clone().write(live, intent))
    }

    fn reload(
        &self,
        _live: &Arc<LiveState>,
        _file: &Policy,
        _digest: &str,
    ) -> Result<Option<u64>, ReloadError> {
        Err(ReloadError::NotFromFile)
    }

    fn min_revision_wait(&self) -> Duration {
        self.min_revision_wait
    }
}
