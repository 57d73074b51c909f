//! Where admin writes go, chosen once when the live policy is built: [`PolicyWriter`], with
//! the local writer ([`super::local::LocalWriter`]: the sled store is the source of truth) and
//! a fleet's shared-store writer (in `fleet`, which implements this trait). The live policy
//! decides nothing about the mode; it hands each write to the writer it was built with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{LiveState, ReloadError, WriteError};
use crate::model::Policy;
use crate::store::{Change, Store};

/// A change decided under the policy's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The change.
    pub change: Change,
    /// The base role of a role change (its rules depend on it), if any.
    pub base_role: Option<String>,
}

/// Decides a change on the current policy (without its subjects, which `store` holds). A
/// writer may call it again when what it depends on changed meanwhile.
pub type Decide =
    Box<dyn FnMut(&Policy, &dyn Store) -> Result<Decided, WriteError> + Send + 'static>;

/// One admin write, before it is decided.
pub struct WriteIntent {
    /// The revision the caller saw (0: any).
    pub expected_revision: u64,
    /// Admin name.
    pub actor: String,
    /// RPC name: `update_permission`, `put_subject`...
    pub action: &'static str,
    /// The rules that turn the request into a change.
    pub decide: Decide,
}

/// The answer of a write: the revision at which the change is published on this sidecar.
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<u64, WriteError>> + Send + 'static>>;

/// Where a live policy's admin writes and file reloads go.
pub trait PolicyWriter: Send + Sync + 'static {
    /// Decides `intent` and commits it; answers once this sidecar publishes the change.
    fn write(&self, live: Arc<LiveState>, intent: WriteIntent) -> WriteFuture;

    /// Re-applies a changed policy file under the reload rule; `None` when `digest` is the
    /// file already applied. Called from a blocking thread.
    fn reload(
        &self,
        live: &Arc<LiveState>,
        file: &Policy,
        digest: &str,
    ) -> Result<Option<u64>, ReloadError>;

    /// How long a Check waits for its `min_revision` (read-your-writes across sidecars);
    /// zero: it answers at once.
    fn min_revision_wait(&self) -> Duration;
}
