//! The compiled, immutable form of a policy that every Check reads.

use std::collections::HashMap;
use std::sync::Arc;

use super::subject::CompiledSubject;
use super::subject_index::SubjectIndex;
use crate::model::{Access, BitSet, Endpoint, PathPattern, RouteTable};

/// An immutable compiled policy at one revision. Cheap to share; never mutated after build.
///
/// The three tables are separately shared so that a change to roles reuses the subject table
/// and a change to one subject reuses the catalog and roles.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(super) revision: u64,
    pub(super) catalog: Arc<CompiledCatalog>,
    pub(super) roles: Arc<RoleTable>,
    pub(super) subjects: Arc<SubjectTable>,
}

impl Snapshot {
    /// The policy revision this snapshot was compiled from.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The same snapshot at another revision: a policy is compiled before it is committed,
    /// and the commit assigns the revision.
    pub fn with_revision(mut self, revision: u64) -> Snapshot {
        self.revision = revision;
        self
    }

    /// The name of permission `id` (as found in a decision's `required`).
    pub fn permission_name(&self, id: u32) -> &str {
        &self.catalog.names[id as usize]
    }

    /// Number of subjects served.
    pub fn subject_count(&self) -> usize {
        self.subjects.len
    }
}

/// Permissions, routes and events, with their relations resolved to ids.
#[derive(Debug, Default)]
pub(super) struct CompiledCatalog {
    pub names: Box<[Box<str>]>,
    pub index: HashMap<Box<str>, u32>,
    pub info: Box<[PermInfo]>,
    pub routes: RouteTable,
    /// The endpoint templates the route table was built from, with their permission ids.
    pub endpoints: Box<[(Endpoint, u32)]>,
    pub events: HashMap<Box<str>, BitSet>,
    /// Subject types named by some `applies_to`.
    pub types: HashMap<Box<str>, u16>,
}

#[derive(Debug, Default)]
pub(super) struct PermInfo {
    pub scoped: bool,
    /// Subject types the permission applies to; `None` = every type.
    pub applies: Option<Box<[u16]>>,
    /// Transitive `requires`, excluding the permission itself.
    pub needs: Box<[u32]>,
    /// Transitive `implies`, including the permission itself.
    pub implies: BitSet,
}

/// Roles by id; ids are positions in name order and stay stable while the set of names does.
#[derive(Debug, Default)]
pub(super) struct RoleTable {
    pub roles: Box<[CompiledRole]>,
    pub index: HashMap<Box<str>, u32>,
}

#[derive(Debug)]
pub(super) struct CompiledRole {
    pub name: Box<str>,
    /// Enabled grants closed under `implies` (or every permission minus `except`).
    pub granted: BitSet,
    /// For scoped permissions: the scope ids each is granted for.
    pub scopes: HashMap<u32, Scopes>,
    /// Path rules: the base role's defaults, then the role's own.
    pub paths: Box<[CompiledRule]>,
    pub all_resources: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scopes {
    /// Every scope (roles with `all: true`).
    Any,
    /// Only these ids, sorted.
    List(Box<[Box<str>]>),
}

impl Scopes {
    pub fn admits(&self, scope: &str) -> bool {
        match self {
            Scopes::Any => true,
            Scopes::List(ids) => ids.binary_search_by(|id| (**id).cmp(scope)).is_ok(),
        }
    }
}

#[derive(Debug)]
pub(super) struct CompiledRule {
    pub pattern: PathPattern,
    pub access: Access,
    pub text: Box<str>,
}

/// Subjects by id: a large shared base plus a small overlay of recent changes, so that one
/// subject write copies the overlay, not a million entries. The overlay is folded into a new
/// base off the write path once it grows (see [`Snapshot::compact_subjects`]).
#[derive(Debug, Default, Clone)]
pub(super) struct SubjectTable {
    pub base: Arc<SubjectIndex>,
    /// `None` marks a deletion of a base entry.
    pub overlay: Arc<HashMap<Box<str>, Option<Arc<CompiledSubject>>>>,
    pub len: usize,
    /// Identifies the lineage of `base`: a full compile starts a new one, so a compaction taken
    /// from an older lineage is never applied over a newer policy.
    pub lineage: u64,
}

static LINEAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh lineage id for a fully compiled subject table.
pub(super) fn next_lineage() -> u64 {
    LINEAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl SubjectTable {
    /// The subject with this id. Allocates nothing.
    #[inline]
    pub fn get(&self, id: &str) -> Option<&CompiledSubject> {
        if !self.overlay.is_empty() {
            if let Some(entry) = self.overlay.get(id) {
                return entry.as_deref();
            }
        }
        self.base.get(id)
    }

    /// A table with one subject set (`Some`) or removed (`None`).
    pub fn with(&self, id: &str, subject: Option<CompiledSubject>) -> SubjectTable {
        let existed = self.get(id).is_some();
        let mut overlay = (*self.overlay).clone();
        let added = subject.is_some();
        overlay.insert(id.into(), subject.map(Arc::new));
        let len = match (existed, added) {
            (false, true) => self.len + 1,
            (true, false) => self.len - 1,
            _ => self.len,
        };
        SubjectTable {
            base: Arc::clone(&self.base),
            overlay: Arc::new(overlay),
            len,
            lineage: self.lineage,
        }
    }

    /// Base and overlay folded into one index. O(subjects): run it off the write path.
    pub fn merged(&self) -> SubjectIndex {
        let mut merged = SubjectIndex::with_capacity(self.len);
        for (id, subject) in self.base.iter() {
            if !self.overlay.contains_key(id) {
                merged.insert(id, subject.clone());
            }
        }
        for (id, entry) in self.overlay.iter() {
            if let Some(subject) = entry {
                merged.insert(id, (**subject).clone());
            }
        }
        merged.shrink_to_fit();
        merged
    }
}

/// A subject base folded from an earlier snapshot's table, ready to replace a later one's.
#[derive(Debug)]
pub struct CompactedSubjects {
    lineage: u64,
    base: Arc<SubjectIndex>,
    folded: Arc<HashMap<Box<str>, Option<Arc<CompiledSubject>>>>,
}

impl Snapshot {
    /// Entries in the subject overlay (changes not yet folded into the base).
    pub fn subject_overlay_len(&self) -> usize {
        self.subjects.overlay.len()
    }

    /// Folds the overlay into a new base. Expensive and pure: call it on a background thread.
    pub fn compact_subjects(&self) -> CompactedSubjects {
        let base = self.subjects.merged();
        if self.subjects.base.has_holders() {
            // Who-can was used on the base this fold replaces: build its reverse index here,
            // off the write path, rather than in the next who-can call.
            base.holders();
        }
        CompactedSubjects {
            lineage: self.subjects.lineage,
            base: Arc::new(base),
            folded: Arc::clone(&self.subjects.overlay),
        }
    }

    /// This snapshot with `compacted` as its subject base. Overlay entries written after the
    /// compaction was taken stay in the overlay; the decisions are unchanged. `None` when the
    /// subject table was recompiled since (the compaction is stale).
    pub fn with_compacted(&self, compacted: &CompactedSubjects) -> Option<Snapshot> {
        if compacted.lineage != self.subjects.lineage {
            return None;
        }
        let remaining: HashMap<Box<str>, Option<Arc<CompiledSubject>>> = self
            .subjects
            .overlay
            .iter()
            .filter(|(id, entry)| {
                let folded = compacted.folded.get(*id);
                let same = match (folded, entry) {
                    (Some(Some(a)), Some(b)) => Arc::ptr_eq(a, b),
                    (Some(None), None) => true,
                    _ => false,
                };
                !same
            })
            .map(|(id, entry)| (id.clone(), entry.clone()))
            .collect();
        Some(Snapshot {
            revision: self.revision,
            catalog: Arc::clone(&self.catalog),
            roles: Arc::clone(&self.roles),
            subjects: Arc::new(SubjectTable {
                base: Arc::clone(&compacted.base),
                overlay: Arc::new(remaining),
                len: self.subjects.len,
                lineage: self.subjects.lineage,
            }),
        })
    }
}
