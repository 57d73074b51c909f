//! The policy model: catalog, roles, subjects, admins. Pure types and validation; no I/O.
//!
//! The same types are read from a policy file, stored in sled, and compiled by the engine.
//! The route table built from the catalog's endpoint templates is here too: validation builds
//! it to refuse a catalog over its bound, and the engine's snapshot holds it.

mod bitset;
mod catalog;
mod change;
pub mod file;
pub mod http_path;
mod path;
mod role;
mod route_table;
pub mod shape;
mod structure;
mod subject;
mod validate;

pub use bitset::BitSet;
pub use catalog::{Catalog, Endpoint, Kind, Method, Permission, Preset};
pub use change::{
    PermissionChange, RuleError, SubjectOutcome, UpdateOutcome, apply_approval, apply_subject,
    apply_subject_approval, apply_update,
};
pub use http_path::{CanonicalPath, EncodedSlashes, PathOptions, PathRejection};
pub use path::{Access, PathPattern, Segment, Whom};
pub use role::{Grant, PathRule, Role};
pub use route_table::{MAX_ROUTE_STATES, RouteError, RouteTable};
pub use subject::{Admin, AdminPermission, PendingSubject, ResourceRole, Subject};
pub use validate::{
    FieldPath, MAX_SUBJECT_TYPES, Problem, ValidationError, validate, validate_role,
    validate_subject,
};

use serde::{Deserialize, Serialize};

/// A whole policy: what a policy file holds and what the store persists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version of the policy file; 1 today.
    #[serde(default = "default_version")]
    pub version: u32,
    /// The permission catalog.
    pub catalog: Catalog,
    /// Named starting sets of permissions that roles may include.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presets: Vec<Preset>,
    /// Roles of every kind.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Subjects (apps, API keys, operators, users...).
    #[serde(default)]
    pub subjects: Vec<Subject>,
    /// Admins allowed to change the policy through the admin RPCs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<Admin>,
}

/// JSON bytes of a model value, as the store and the fleet mirror keep them.
pub fn to_json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // PANIC SAFETY: model types serialize to JSON infallibly (string-keyed maps only).
    #[allow(clippy::expect_used)]
    serde_json::to_vec(value).expect("model types serialize to JSON")
}

fn default_version() -> u32 {
    1
}

impl Policy {
    /// The role with this name.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// The catalog permission with this name.
    pub fn permission(&self, name: &str) -> Option<&Permission> {
        self.catalog.permissions.iter().find(|p| p.name == name)
    }

    /// Expands presets into grants and drops rules inherited from a base role, so that the
    /// stored form says each thing once. Call after [`validate`] succeeded.
    pub fn normalize(&mut self) {
        let presets = std::mem::take(&mut self.presets);
        let catalog = self.catalog.clone();
        for role in &mut self.roles {
            for preset_name in std::mem::take(&mut role.presets) {
                let Some(preset) = presets.iter().find(|p| p.name == preset_name) else {
                    continue;
                };
                for name in preset.resolve(&catalog) {
                    if !role.grants.iter().any(|g| g.permission == name) {
                        role.grants.push(Grant::enabled(name));
                    }
                }
            }
            if role.base.is_some() {
                role.paths.retain(|rule| !rule.default);
            }
        }
        self.presets = presets;
        // The store keeps entities keyed by name; keep the same order in memory.
        self.roles.sort_by(|a, b| a.name.cmp(&b.name));
        self.subjects.sort_by(|a, b| a.id.cmp(&b.id));
        self.admins.sort_by(|a, b| a.name.cmp(&b.name));
    }
}
