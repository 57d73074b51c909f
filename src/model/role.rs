//! Roles: named sets of grants and path rules.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A named set of grants, of a kind (`operator`, `app_user`, `app`, `user_type`, `api_key`,
/// `account`, `installation`, `access`...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Unique name.
    pub name: String,
    /// The role's kind; free text that `required_for` and ListRoles filters refer to.
    pub kind: String,
    /// One line for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A role whose path rules bound this one's; its default rules are inherited, immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Holds every catalog permission except those in `except` (root / regular accounts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// With `all`: the permissions left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// Presets whose permissions are added as enabled grants when the policy is loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presets: Vec<String>,
    /// Grants, each enabled or disabled, with scope ids for scoped permissions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    /// Path rules `(pattern, crud)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathRule>,
    /// Widening this role's grants waits for an approver (ApprovePending).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_approval: bool,
    /// Grants waiting for approval; not effective until approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Grant>,
    /// Holders pass per-resource checks everywhere, as if maintainer of every resource (root).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_resources: bool,
    /// A role with no base whose path rules are a bound themselves (like a base role that no
    /// role derives from yet). Only the policy file sets its rules.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_root: bool,
    /// Installations: the scope ids (organizations / projects) where this role is installed.
    /// Every grant is of a scoped permission and lists only these ids. Set by the file only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installed_in: Vec<String>,
    /// Approval roles: the whole non-default path set waiting for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_paths: Option<Vec<PathRule>>,
}

impl Role {
    /// This role's grant of `permission`, if it lists one.
    pub fn grant(&self, permission: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.permission == permission)
    }
}

/// One permission in a role: enabled or not, optionally limited to scope ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Catalog permission name.
    pub permission: String,
    /// Disabled grants are kept for display (the operator document lists them) but grant nothing.
    pub enabled: bool,
    /// Scope ids for a scoped permission; a scoped grant with none allows no scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
}

impl Grant {
    /// An enabled, unscoped grant.
    pub fn enabled(permission: impl Into<String>) -> Grant {
        Grant {
            permission: permission.into(),
            enabled: true,
            projects: Vec::new(),
        }
    }
}

/// A grant is written either as a bare permission name or as a mapping.
impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            permission: String,
            #[serde(default = "yes")]
            enabled: bool,
            #[serde(default)]
            projects: Vec<String>,
        }
        fn yes() -> bool {
            true
        }
        struct GrantVisitor;
        impl<'de> Visitor<'de> for GrantVisitor {
            type Value = Grant;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a permission name or {permission, enabled, projects}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Grant, E> {
                Ok(Grant::enabled(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Grant, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Grant {
                    permission: full.permission,
                    enabled: full.enabled,
                    projects: full.projects,
                })
            }
        }
        deserializer.deserialize_any(GrantVisitor)
    }
}

/// A path rule as written: `{path: "/thngs", access: "cru"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// Pattern (see [`super::PathPattern`]).
    pub path: String,
    /// Subset of `crud`.
    pub access: String,
    /// Immutable default inherited by every role based on this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}
