//! The compiled, immutable form of a policy that every Check reads.

use std::collections::HashMap;
use std::sync::Arc;

use super::bitset::BitSet;
use super::routes::RouteTable;
use crate::model::{Access, PathPattern};

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

    /// The name of permission `id` (as found in a decision's `required`).
    pub fn permission_name(&self, id: u32) -> &str {
        &self.catalog.names[id as usize]
    }

    /// Number of subjects served.
    pub fn subject_count(&self) -> usize {
        self.subjects.index.len()
    }
}

/// Permissions, routes and events, with their relations resolved to ids.
#[derive(Debug, Default)]
pub(super) struct CompiledCatalog {
    pub names: Box<[Box<str>]>,
    pub index: HashMap<Box<str>, u32>,
    pub info: Box<[PermInfo]>,
    pub routes: RouteTable,
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

/// Subjects by id.
#[derive(Debug, Default, Clone)]
pub(super) struct SubjectTable {
    pub index: HashMap<Box<str>, CompiledSubject>,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledSubject {
    pub roles: Box<[u32]>,
    pub type_id: Option<u16>,
    pub type_name: Box<str>,
    pub only: Option<BitSet>,
    /// `(resource, access role id)`, sorted by resource.
    pub resources: Box<[(Box<str>, u32)]>,
}
