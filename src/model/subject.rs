//! Subjects (who asks) and admins (who may change the policy).

use serde::{Deserialize, Serialize};

/// An id with a type and roles: an app, an API key, an operator, an app user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// Unique id.
    pub id: String,
    /// Subject type, matched against permissions' `applies_to` (ORGANIZATION, PARTNER...).
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub subject_type: String,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Override: the effective set is narrowed to these permissions (empty = no override).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// Per-resource access roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceRole>,
    /// Approval-bound subjects: a widening waiting for ApprovePending (not effective).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingSubject>,
}

/// What an approval-bound subject holds once its pending widening is approved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSubject {
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Override (empty = none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// Per-resource access roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceRole>,
}

/// An access role held on one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRole {
    /// `collections/abc`.
    pub resource: String,
    /// Role name (reader, writer, maintainer...).
    pub role: String,
}

/// Someone allowed to call admin RPCs, identified by the SHA-256 of their bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Name recorded in the audit trail.
    pub name: String,
    /// Lower-case hex SHA-256 of the bearer token.
    pub token_sha256: String,
    /// Admin permissions held.
    pub permissions: Vec<AdminPermission>,
}

/// The rights an admin may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AdminPermission {
    /// UpdatePermission.
    #[serde(rename = "authz.roles.write")]
    RolesWrite,
    /// ApprovePending.
    #[serde(rename = "authz.roles.approve")]
    RolesApprove,
    /// PutSubject, DeleteSubject.
    #[serde(rename = "authz.subjects.write")]
    SubjectsWrite,
    /// ListAudit.
    #[serde(rename = "authz.audit.read")]
    AuditRead,
    /// GetSubject, ListSubjects (also held by whoever holds `authz.subjects.write`).
    #[serde(rename = "authz.subjects.read")]
    SubjectsRead,
}

impl AdminPermission {
    /// Every admin permission (what the bootstrap admin holds).
    pub const ALL: [AdminPermission; 5] = [
        AdminPermission::RolesWrite,
        AdminPermission::RolesApprove,
        AdminPermission::SubjectsWrite,
        AdminPermission::AuditRead,
        AdminPermission::SubjectsRead,
    ];

    /// The permission's name as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminPermission::RolesWrite => "authz.roles.write",
            AdminPermission::RolesApprove => "authz.roles.approve",
            AdminPermission::SubjectsWrite => "authz.subjects.write",
            AdminPermission::AuditRead => "authz.audit.read",
            AdminPermission::SubjectsRead => "authz.subjects.read",
        }
    }
}
