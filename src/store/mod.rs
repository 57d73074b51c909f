//! Persistence: the policy, its revision and the audit trail. Only this module uses sled.
//!
//! What a caller may do with a store is split by role, so that each one sees only what it
//! uses: [`Store`] reads, [`MutableStore`] takes local writes (imports and admin commits),
//! [`MirrorStore`] takes the changes mirrored from a fleet's shared source. [`SledStore`] is
//! all three.

mod data_dir;
mod sled_store;

pub use sled_store::SledStore;

use serde::{Deserialize, Serialize};

use crate::model::{Admin, Catalog, Policy, Preset, Role, Subject};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// What a store holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The policy (subjects included).
    pub policy: Policy,
    /// The revision of the last committed change.
    pub revision: u64,
}

/// One committed change to one entity.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or replace a role.
    PutRole(Role),
    /// Create or replace a subject.
    PutSubject(Subject),
    /// Delete a subject by id.
    DeleteSubject(String),
}

/// What a change is about: its audit `target` and its `managed` mark.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The catalog, presets and version.
    Policy,
    /// A role, by name.
    Role(String),
    /// A subject, by id.
    Subject(String),
    /// An admin, by name.
    Admin(String),
}

impl std::fmt::Display for Target {
    /// `policy`, `role/NAME`, `subject/ID` or `admin/NAME`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Policy => f.write_str("policy"),
            Target::Role(name) => write!(f, "role/{name}"),
            Target::Subject(id) => write!(f, "subject/{id}"),
            Target::Admin(name) => write!(f, "admin/{name}"),
        }
    }
}

impl From<&Change> for Target {
    fn from(change: &Change) -> Target {
        match change {
            Change::PutRole(r) => Target::Role(r.name.clone()),
            Change::PutSubject(s) => Target::Subject(s.id.clone()),
            Change::DeleteSubject(id) => Target::Subject(id.clone()),
        }
    }
}

impl From<&Mirrored> for Target {
    fn from(change: &Mirrored) -> Target {
        match change {
            Mirrored::Head(_) => Target::Policy,
            Mirrored::PutRole(r) => Target::Role(r.name.clone()),
            Mirrored::DeleteRole(n) => Target::Role(n.clone()),
            Mirrored::PutSubject(s) => Target::Subject(s.id.clone()),
            Mirrored::DeleteSubject(id) => Target::Subject(id.clone()),
            Mirrored::PutAdmin(a) => Target::Admin(a.name.clone()),
            Mirrored::DeleteAdmin(n) => Target::Admin(n.clone()),
        }
    }
}

/// A change with who made it and the revision it was decided against.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The change.
    pub change: Change,
    /// The store's revision must still be this, or the write is refused as stale.
    pub base_revision: u64,
    /// Admin name.
    pub actor: String,
    /// RPC name: `update_permission`, `put_subject`...
    pub action: String,
}

/// What a committed write returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The new revision.
    pub revision: u64,
    /// Whether the entity existed before (a delete of nothing is refused, not committed).
    pub existed: bool,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The revision this change produced.
    pub revision: u64,
    /// Who made it.
    pub actor: String,
    /// When, in Unix milliseconds.
    pub at_unix_ms: i64,
    /// What kind of change.
    pub action: String,
    /// What it changed.
    pub target: String,
    /// The entity before (absent when created).
    pub before: Option<serde_json::Value>,
    /// The entity after (absent when deleted).
    pub after: Option<serde_json::Value>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The embedded database failed (I/O, a damaged page...).
    #[error("data store: {0}")]
    Backend(#[from] sled::Error),
    /// The embedded database could not be opened.
    #[error("cannot open data dir {dir}: {source}")]
    Open {
        /// The data dir.
        dir: String,
        /// What sled reported.
        source: sled::Error,
    },
    /// Stored bytes do not decode.
    #[error("data store is corrupt: {what}: {source}")]
    Undecodable {
        /// Which record.
        what: String,
        /// What the decoder found.
        source: serde_json::Error,
    },
    /// The data dir's files or records are damaged in a way that is not a decoding error.
    #[error("data store is corrupt: {what}: {detail}")]
    Corrupt {
        /// Which record or file.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The data was written by another format version.
    #[error(
        "data store format version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedFormat {
        /// The version on disk.
        found: String,
    },
    /// Someone else committed first.
    #[error("stale revision: expected {expected}, store is at {current}")]
    Stale {
        /// The revision the write was decided against.
        expected: u64,
        /// The store's revision.
        current: u64,
    },
    /// Deleting something that is not there.
    #[error("{0} does not exist")]
    Missing(String),
    /// A file of the data dir could not be read or written.
    #[error("data dir: {what}: {source}")]
    Io {
        /// The file or directory.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data dir holds files and no `authz-store` marker: it is not a sidecar's store.
    #[error(
        "data dir {dir} is not empty and has no `authz-store` marker: it holds {} that this sidecar did not write; not opening or changing it: point --data-dir at an empty directory or at a sidecar's data dir",
        entries.join(", ")
    )]
    Foreign {
        /// The data dir.
        dir: String,
        /// What is in it.
        entries: Vec<String>,
    },
    /// Another process holds the data dir's lock.
    #[error(
        "cannot open data dir {dir}: it is locked by another process (is another sidecar running on it?)"
    )]
    Locked {
        /// The data dir.
        dir: String,
    },
}

/// How an import treats entities changed through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// An explicit re-seed: the file wins entirely and the API marks are cleared.
    Reseed,
    /// A policy-file reload: the caller merged API-managed entities in; the marks stay.
    Reload,
}

/// What a policy-file reload took away from a subject made through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `subject/ID` or `role/NAME`.
    pub target: String,
    /// What was taken away (role names, access roles, permissions), or why it went.
    pub revoked: Vec<String>,
    /// True when the whole entity went (a subject that no longer validates without them, or
    /// an API-changed role replaced by the file's version).
    pub removed: bool,
}

/// Entities whose latest change came through the admin API; a reload keeps them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Managed {
    /// Roles last changed by UpdatePermission / ApprovePending, as stored.
    pub roles: Vec<Role>,
    /// Subjects last put by PutSubject, as stored.
    pub subjects: Vec<Subject>,
    /// Subjects deleted by DeleteSubject.
    pub deleted_subjects: Vec<String>,
}

/// What a policy is besides its roles, subjects and admins (fleet mode keeps it in one key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyHead {
    /// Policy format version.
    pub version: u32,
    /// The permission catalog.
    pub catalog: Catalog,
    /// Named starting sets.
    pub presets: Vec<Preset>,
}

/// One entity change mirrored from the shared source (fleet mode).
#[derive(Debug, Clone, PartialEq)]
pub enum Mirrored {
    /// The catalog, presets and version changed.
    Head(PolicyHead),
    /// A role was created or replaced.
    PutRole(Role),
    /// A role was removed.
    DeleteRole(String),
    /// A subject was created or replaced.
    PutSubject(Subject),
    /// A subject was removed.
    DeleteSubject(String),
    /// An admin was created or replaced.
    PutAdmin(Admin),
    /// An admin was removed.
    DeleteAdmin(String),
}

/// Every change of one shared-source revision, applied to the local mirror as one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorBatch {
    /// The shared source's revision (the etcd revision) these changes produced.
    pub revision: u64,
    /// The changes, in the order the source reported them.
    pub changes: Vec<Mirrored>,
    /// Who made the change, as the writer recorded it (`etcd` when unknown).
    pub actor: String,
    /// RPC or tool that made it (`mirror` when unknown).
    pub action: String,
}

/// Which shared source a local mirror copies (so that a data dir is never mistaken for a
/// mirror of another cluster or prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorOrigin {
    /// etcd cluster id.
    pub cluster_id: u64,
    /// Key prefix.
    pub prefix: String,
}

/// Reading a stored policy: what start-up, the read RPCs and the writers' rules see.
pub trait Store: Send + Sync + 'static {
    /// The stored policy without its subjects, and the revision; `None` for an empty store.
    fn load_head(&self) -> Result<Option<Loaded>, StoreError>;
    /// Calls `visit` with every stored subject, in id order, without collecting them (a
    /// million subjects are compiled as they stream by).
    fn visit_subjects(
        &self,
        visit: &mut dyn FnMut(Subject) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// The whole stored policy and revision, or `None` for an empty store.
    fn load(&self) -> Result<Option<Loaded>, StoreError> {
        let Some(mut loaded) = self.load_head()? else {
            return Ok(None);
        };
        let mut subjects = Vec::new();
        self.visit_subjects(&mut |s| {
            subjects.push(s);
            Ok(())
        })?;
        loaded.policy.subjects = subjects;
        Ok(Some(loaded))
    }
    /// The stored subject with this id.
    fn subject(&self, id: &str) -> Result<Option<Subject>, StoreError>;
    /// One stored subject with the revision of its last change (its own write, or the import
    /// or reload that last wrote every subject, whichever is later).
    fn subject_changed(&self, id: &str) -> Result<Option<(Subject, u64)>, StoreError>;
    /// Up to `limit` subjects after id `after`, in id order, that `keep` accepts, each with the
    /// revision of its last change; and whether more follow.
    fn subjects_page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: &mut dyn FnMut(&Subject) -> bool,
    ) -> Result<(Vec<(Subject, u64)>, bool), StoreError>;
    /// The digest recorded by the last import.
    fn source_digest(&self) -> Result<Option<String>, StoreError>;
    /// Entities last changed through the admin API.
    fn managed(&self) -> Result<Managed, StoreError>;
    /// Audit entries with revision > `after`, oldest first, at most `limit`.
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    /// The shared source this store mirrors, if it is a mirror.
    fn mirror_origin(&self) -> Result<Option<MirrorOrigin>, StoreError>;
}

/// Local writes: the store is the source of truth (embedded mode, `import`).
pub trait MutableStore: Store {
    /// Replaces everything with `policy` as one change; returns the new revision. `source` is
    /// a digest of the file it came from, kept so that an unchanged file is not re-applied.
    fn import(
        &self,
        policy: &Policy,
        actor: &str,
        mode: ImportMode,
        source: &str,
    ) -> Result<u64, StoreError> {
        self.import_revoking(policy, actor, mode, source, &[])
    }
    /// [`MutableStore::import`], recording in the same audit entry what the file revoked from
    /// subjects made through the admin API.
    fn import_revoking(
        &self,
        policy: &Policy,
        actor: &str,
        mode: ImportMode,
        source: &str,
        revoked: &[Revocation],
    ) -> Result<u64, StoreError>;
    /// Commits one change atomically and durably (flushed before returning).
    fn commit(&self, write: &Write) -> Result<Committed, StoreError>;
}

/// Mirror writes: the store copies a fleet's shared source (fleet mode), at its revisions.
pub trait MirrorStore: Store {
    /// Applies one shared-source revision's changes in one transaction, flushed, and records
    /// `batch.revision` as the store's revision. A batch at or below the stored revision was
    /// applied before and is skipped (`Ok(false)`).
    fn apply_mirrored(&self, batch: &MirrorBatch) -> Result<bool, StoreError>;
    /// Replaces everything with a full load of the shared source at `revision`.
    fn replace_mirrored(
        &self,
        policy: &Policy,
        revision: u64,
        origin: &MirrorOrigin,
    ) -> Result<(), StoreError>;
}
