//! The rules every admin change to a role must keep: subset of the base role, immutable
//! defaults, required permissions, and approval of widening. Pure: takes the current policy,
//! returns the new role or the rule that stops it.

use super::{Access, Grant, PathPattern, PathRule, Policy, Role};

/// A change to one role, as UpdatePermission carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum PermissionChange {
    /// Enable or disable one permission, with its projects.
    Set(Grant),
    /// Replace the role's whole non-default path set (empty = clear).
    ReplacePaths(Vec<PathRule>),
}

/// The role after a change.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    /// The new role, to be stored.
    pub role: Role,
    /// True when part of the change waits for approval.
    pub pending_approval: bool,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// No role has this name.
    #[error("unknown role `{0}`")]
    UnknownRole(String),
    /// A field of the change is malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// Request field, e.g. `set.projects[0]`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A path rule reaches beyond the base role.
    #[error(
        "`{path}` `{access}` is not a subset of base role `{base}` (nothing there grants `{missing}` on it)"
    )]
    NotSubsetOfBase {
        /// The rule's pattern.
        path: String,
        /// The rule's access.
        access: String,
        /// The base role.
        base: String,
        /// Letters not covered.
        missing: String,
    },
    /// Defaults come from the base role and cannot be changed.
    #[error("`{path}` is an immutable default of base role `{base}`; it cannot be set or changed")]
    ImmutableDefault {
        /// The rule's pattern.
        path: String,
        /// The base role.
        base: String,
    },
    /// A base role bounds other roles; changing it would silently change them.
    #[error("role `{role}` is the base of `{derived}`; base roles are immutable")]
    BaseRoleImmutable {
        /// The base role.
        role: String,
        /// One role derived from it.
        derived: String,
    },
    /// The permission must stay granted on roles of this kind.
    #[error("`{permission}` is required on every role of kind `{kind}` and cannot be disabled")]
    RequiredPermission {
        /// The permission.
        permission: String,
        /// The role kind.
        kind: String,
    },
    /// ApprovePending on a role with nothing pending.
    #[error("role `{0}` has no pending change to approve")]
    NothingPending(String),
}

/// Applies `change` to the role named `role_name` under every rule.
pub fn apply_update(
    policy: &Policy,
    role_name: &str,
    change: &PermissionChange,
) -> Result<UpdateOutcome, RuleError> {
    let current = policy
        .role(role_name)
        .ok_or_else(|| RuleError::UnknownRole(role_name.to_owned()))?;
    let mut role = current.clone();
    let pending_approval = match change {
        PermissionChange::Set(grant) => set_grant(policy, &mut role, grant)?,
        PermissionChange::ReplacePaths(rules) => {
            replace_paths(policy, &mut role, rules)?;
            false
        }
    };
    recheck(policy, &role)?;
    Ok(UpdateOutcome {
        role,
        pending_approval,
    })
}

/// Accepts the role's pending grants as a whole.
pub fn apply_approval(policy: &Policy, role_name: &str) -> Result<Role, RuleError> {
    let current = policy
        .role(role_name)
        .ok_or_else(|| RuleError::UnknownRole(role_name.to_owned()))?;
    if current.pending.is_empty() {
        return Err(RuleError::NothingPending(role_name.to_owned()));
    }
    let mut role = current.clone();
    for grant in std::mem::take(&mut role.pending) {
        upsert(&mut role.grants, grant);
    }
    recheck(policy, &role)?;
    Ok(role)
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn set_grant(policy: &Policy, role: &mut Role, grant: &Grant) -> Result<bool, RuleError> {
    let perm = policy.permission(&grant.permission).ok_or_else(|| {
        invalid(
            "set.name",
            format!("unknown permission `{}`", grant.permission),
        )
    })?;
    if !perm.scoped && !grant.projects.is_empty() {
        return Err(invalid(
            "set.projects",
            format!(
                "`{}` is not project-scoped; it takes no projects",
                perm.name
            ),
        ));
    }
    if let Some(pattern) = &policy.catalog.scope_pattern {
        let re = regex::Regex::new(pattern)
            .map_err(|e| invalid("catalog.scope_pattern", e.to_string()))?;
        for (i, project) in grant.projects.iter().enumerate() {
            if !re.is_match(project) {
                return Err(invalid(
                    format!("set.projects[{i}]"),
                    format!("`{project}` does not match the project id pattern {pattern}"),
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = grant.projects.iter().find(|p| !seen.insert(p.as_str())) {
        return Err(invalid("set.projects", format!("`{dup}` is listed twice")));
    }
    if !grant.enabled && perm.required_for.contains(&role.kind) {
        return Err(RuleError::RequiredPermission {
            permission: perm.name.clone(),
            kind: role.kind.clone(),
        });
    }
    if role.all {
        role.except.retain(|e| *e != perm.name);
        if !grant.enabled {
            role.except.push(perm.name.clone());
        }
        return Ok(false);
    }
    if !role.requires_approval {
        upsert(&mut role.grants, grant.clone());
        return Ok(false);
    }
    // Approval roles: narrowing applies at once, widening waits.
    role.pending.retain(|p| p.permission != perm.name);
    let current = role.grant(&perm.name).filter(|g| g.enabled).cloned();
    match current {
        _ if !grant.enabled => {
            upsert(&mut role.grants, grant.clone());
            Ok(false)
        }
        None => {
            role.pending.push(grant.clone());
            Ok(true)
        }
        Some(current) => {
            let kept: Vec<String> = grant
                .projects
                .iter()
                .filter(|p| current.projects.contains(p))
                .cloned()
                .collect();
            let widened = kept.len() < grant.projects.len();
            upsert(
                &mut role.grants,
                Grant {
                    projects: kept,
                    ..grant.clone()
                },
            );
            if widened {
                role.pending.push(grant.clone());
            }
            Ok(widened)
        }
    }
}

fn upsert(grants: &mut Vec<Grant>, grant: Grant) {
    match grants.iter_mut().find(|g| g.permission == grant.permission) {
        Some(slot) => *slot = grant,
        None => grants.push(grant),
    }
}

fn replace_paths(policy: &Policy, role: &mut Role, rules: &[PathRule]) -> Result<(), RuleError> {
    if let Some(derived) = policy
        .roles
        .iter()
        .find(|r| r.base.as_deref() == Some(role.name.as_str()))
    {
        return Err(RuleError::BaseRoleImmutable {
            role: role.name.clone(),
            derived: derived.name.clone(),
        });
    }
    let base = role.base.as_deref().and_then(|b| policy.role(b));
    let defaults: Vec<&PathRule> = match base {
        Some(b) => b.paths.iter().filter(|r| r.default).collect(),
        None => role.paths.iter().filter(|r| r.default).collect(),
    };
    let base_rules = super::validate::parsed_rules(base);
    let mut kept = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("replace_paths.paths[{i}]");
        let pattern =
            PathPattern::parse(&rule.path).map_err(|e| invalid(format!("{field}.path"), e))?;
        let access =
            Access::parse(&rule.access).map_err(|e| invalid(format!("{field}.access"), e))?;
        if !seen.insert(rule.path.as_str()) {
            return Err(invalid(
                format!("{field}.path"),
                format!("`{}` is listed twice", rule.path),
            ));
        }
        if rule.default {
            // Echoing an unchanged default back (as a client that read the role would) is fine.
            let unchanged = defaults
                .iter()
                .any(|d| d.path == rule.path && Access::parse(&d.access).ok() == Some(access));
            if unchanged {
                continue;
            }
            return Err(RuleError::ImmutableDefault {
                path: rule.path.clone(),
                base: base.map_or(role.name.clone(), |b| b.name.clone()),
            });
        }
        if let Some(base) = base {
            if let Some(missing) = super::validate::uncovered(&pattern, access, &base_rules) {
                return Err(RuleError::NotSubsetOfBase {
                    path: rule.path.clone(),
                    access: rule.access.clone(),
                    base: base.name.clone(),
                    missing: missing.to_string(),
                });
            }
        }
        kept.push(PathRule {
            path: rule.path.clone(),
            access: access.to_string(),
            default: false,
        });
    }
    let mut paths: Vec<PathRule> = if base.is_none() {
        role.paths.iter().filter(|r| r.default).cloned().collect()
    } else {
        Vec::new()
    };
    paths.extend(kept);
    role.paths = paths;
    Ok(())
}

/// Whole-role validation after a change: a change must never produce a role the file
/// validator would refuse.
fn recheck(policy: &Policy, role: &Role) -> Result<(), RuleError> {
    super::validate::validate_role(policy, role).map_err(|errs| {
        let first = &errs[0];
        invalid(first.path.to_string(), first.message.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Catalog, Permission};

    fn policy() -> Policy {
        let perm = |name: &str, scoped: bool| Permission {
            name: name.into(),
            scoped,
            ..Permission::default()
        };
        let mut info = perm("organization_info", false);
        info.required_for = vec!["installation".into()];
        Policy {
            version: 1,
            catalog: Catalog {
                scope_pattern: Some("^[a-z]{3}$".into()),
                permissions: vec![
                    perm("read", false),
                    perm("write", false),
                    perm("project_read", true),
                    info,
                ],
            },
            roles: vec![
                Role {
                    name: "app".into(),
                    kind: "app".into(),
                    requires_approval: true,
                    grants: vec![
                        Grant::enabled("read"),
                        Grant {
                            permission: "project_read".into(),
                            enabled: true,
                            projects: vec!["abc".into()],
                        },
                    ],
                    ..Role::default()
                },
                Role {
                    name: "base".into(),
                    kind: "app_user".into(),
                    paths: vec![
                        PathRule {
                            path: "/roles".into(),
                            access: "r".into(),
                            default: true,
                        },
                        PathRule {
                            path: "/thngs/*".into(),
                            access: "cru".into(),
                            default: false,
                        },
                    ],
                    ..Role::default()
                },
                Role {
                    name: "custom".into(),
                    kind: "app_user".into(),
                    base: Some("base".into()),
                    ..Role::default()
                },
                Role {
                    name: "inst".into(),
                    kind: "installation".into(),
                    grants: vec![Grant::enabled("organization_info")],
                    ..Role::default()
                },
            ],
            ..Policy::default()
        }
    }

    fn set(name: &str, enabled: bool, projects: &[&str]) -> PermissionChange {
        PermissionChange::Set(Grant {
            permission: name.into(),
            enabled,
            projects: projects.iter().map(|p| p.to_string()).collect(),
        })
    }

    fn rule(path: &str, access: &str) -> PathRule {
        PathRule {
            path: path.into(),
            access: access.into(),
            default: false,
        }
    }

    #[test]
    fn approval_roles_narrow_at_once_and_widen_later() {
        let p = policy();
        let out = apply_update(&p, "app", &set("read", false, &[])).expect("narrowing");
        assert!(!out.pending_approval);
        assert!(!out.role.grant("read").expect("kept").enabled);

        let out = apply_update(&p, "app", &set("write", true, &[])).expect("widening");
        assert!(out.pending_approval);
        assert!(out.role.grant("write").is_none());
        assert_eq!(out.role.pending, vec![Grant::enabled("write")]);

        let out =
            apply_update(&p, "app", &set("project_read", true, &["abc", "xyz"])).expect("mixed");
        assert!(out.pending_approval);
        assert_eq!(
            out.role.grant("project_read").expect("kept").projects,
            vec!["abc"]
        );
        let mut p2 = p.clone();
        p2.roles[0] = out.role;
        let approved = apply_approval(&p2, "app").expect("approve");
        assert_eq!(
            approved.grant("project_read").expect("granted").projects,
            vec!["abc", "xyz"]
        );
        assert!(approved.pending.is_empty());
        assert_eq!(
            apply_approval(&p, "app"),
            Err(RuleError::NothingPending("app".into()))
        );
    }

    #[test]
    fn rule_violations_are_named() {
        let p = policy();
        assert!(matches!(
            apply_update(&p, "nope", &set("read", true, &[])),
            Err(RuleError::UnknownRole(_))
        ));
        assert!(matches!(
            apply_update(&p, "inst", &set("organization_info", false, &[])),
            Err(RuleError::RequiredPermission { .. })
        ));
        assert!(
            matches!(apply_update(&p, "app", &set("read", true, &["abc"])), Err(RuleError::Invalid { field, .. }) if field == "set.projects")
        );
        assert!(
            matches!(apply_update(&p, "app", &set("project_read", true, &["ABCD"])), Err(RuleError::Invalid { field, .. }) if field == "set.projects[0]")
        );
        assert!(
            matches!(apply_update(&p, "app", &set("ghost", true, &[])), Err(RuleError::Invalid { field, .. }) if field == "set.name")
        );
    }

    #[test]
    fn path_rules_stay_within_the_base() {
        let p = policy();
        let ok = apply_update(
            &p,
            "custom",
            &PermissionChange::ReplacePaths(vec![rule("/thngs/*", "r"), rule("/thngs/7", "cu")]),
        )
        .expect("subset");
        assert_eq!(ok.role.paths.len(), 2);
        let wider = apply_update(
            &p,
            "custom",
            &PermissionChange::ReplacePaths(vec![rule("/thngs/*", "d")]),
        );
        assert!(matches!(wider, Err(RuleError::NotSubsetOfBase { missing, .. }) if missing == "d"));
        let outside = apply_update(
            &p,
            "custom",
            &PermissionChange::ReplacePaths(vec![rule("/thngs", "r")]),
        );
        assert!(matches!(outside, Err(RuleError::NotSubsetOfBase { .. })));
        let default_changed = PathRule {
            path: "/roles".into(),
            access: "rd".into(),
            default: true,
        };
        assert!(matches!(
            apply_update(
                &p,
                "custom",
                &PermissionChange::ReplacePaths(vec![default_changed])
            ),
            Err(RuleError::ImmutableDefault { .. })
        ));
        let default_echo = PathRule {
            path: "/roles".into(),
            access: "r".into(),
            default: true,
        };
        let echoed = apply_update(
            &p,
            "custom",
            &PermissionChange::ReplacePaths(vec![default_echo]),
        )
        .expect("echo is fine");
        assert!(echoed.role.paths.is_empty());
        assert!(matches!(
            apply_update(&p, "base", &PermissionChange::ReplacePaths(vec![])),
            Err(RuleError::BaseRoleImmutable { .. })
        ));
        assert!(
            matches!(apply_update(&p, "custom", &PermissionChange::ReplacePaths(vec![rule("thngs", "r")])), Err(RuleError::Invalid { field, .. }) if field == "replace_paths.paths[0].path")
        );
    }
}
