//! The rules every admin change to a role must keep: subset of the base role, immutable
//! defaults, required permissions, and approval of widening. Pure: takes the current policy,
//! returns the new role or the rule that stops it.

use super::validate::{Problem, closure, is_path_root};
use super::{Access, Grant, PathPattern, PathRule, PendingSubject, Policy, Role, Subject};

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
    /// ApprovePending on a subject with nothing pending.
    #[error("subject `{0}` has no pending change to approve")]
    NothingPendingForSubject(String),
    /// No subject has this id.
    #[error("unknown subject `{0}`")]
    UnknownSubject(String),
    /// Path rules on a role that has no base: nothing would bound them.
    #[error(
        "replace_paths: role `{0}` has no base role, so nothing bounds path rules on it (a role without a base grants HTTP requests through its catalog permissions only)"
    )]
    NoBase(String),
    /// The role's path rules are a bound themselves; only the policy file sets them.
    #[error(
        "replace_paths: role `{0}` is a base of path rules (path_root); only the policy file changes its rules"
    )]
    PathRootImmutable(String),
    /// The change is well-formed but breaks a rule of the model.
    #[error("{field}: {message}")]
    Broken {
        /// The field concerned.
        field: String,
        /// The rule broken.
        message: String,
    },
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
        PermissionChange::ReplacePaths(rules) => replace_paths(policy, &mut role, rules)?,
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
    if current.pending.is_empty() && current.pending_paths.is_none() {
        return Err(RuleError::NothingPending(role_name.to_owned()));
    }
    let mut role = current.clone();
    for grant in std::mem::take(&mut role.pending) {
        if role.all {
            // A role holding everything widens only by lifting an exception.
            role.except.retain(|e| *e != grant.permission);
        } else {
            upsert(&mut role.grants, grant);
        }
    }
    if let Some(paths) = role.pending_paths.take() {
        role.paths = paths;
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
    if grant.enabled {
        for name in closure(policy, std::slice::from_ref(&perm.name)) {
            let Some(p) = policy.permission(&name) else {
                continue;
            };
            if !p.role_kinds.is_empty() && !p.role_kinds.contains(&role.kind) {
                return Err(RuleError::Broken {
                    field: "set.name".into(),
                    message: format!(
                        "`{}` belongs to role kind {} and cannot be granted (or implied) on role `{}` of role kind `{}`",
                        p.name,
                        p.role_kinds.join(", "),
                        role.name,
                        role.kind
                    ),
                });
            }
        }
    }
    if policy.catalog.installation_kinds.contains(&role.kind) {
        for (i, project) in grant.projects.iter().enumerate() {
            if !role.installed_in.contains(project) {
                return Err(RuleError::Broken {
                    field: format!("set.projects[{i}]"),
                    message: format!(
                        "`{project}` is outside `installed_in` of installation `{}` ({})",
                        role.name,
                        role.installed_in.join(", ")
                    ),
                });
            }
        }
    }
    if !grant.enabled && perm.required_for.contains(&role.kind) {
        return Err(RuleError::RequiredPermission {
            permission: perm.name.clone(),
            kind: role.kind.clone(),
        });
    }
    if role.all {
        role.pending.retain(|p| p.permission != perm.name);
        let excepted = role.except.contains(&perm.name);
        if !grant.enabled {
            if !excepted {
                role.except.push(perm.name.clone());
            }
            return Ok(false);
        }
        // Lifting an exception widens the role: on an approval role it waits like a new grant.
        if excepted && role.requires_approval {
            role.pending.push(grant.clone());
            return Ok(true);
        }
        role.except.retain(|e| *e != perm.name);
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

fn replace_paths(policy: &Policy, role: &mut Role, rules: &[PathRule]) -> Result<bool, RuleError> {
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
    if is_path_root(policy, role) {
        return Err(RuleError::PathRootImmutable(role.name.clone()));
    }
    let Some(base) = role.base.as_deref().and_then(|b| policy.role(b)) else {
        return Err(RuleError::NoBase(role.name.clone()));
    };
    let defaults: Vec<&PathRule> = base.paths.iter().filter(|r| r.default).collect();
    let base_rules = super::validate::parsed_rules(Some(base));
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
                base: base.name.clone(),
            });
        }
        if let Some(missing) = super::validate::uncovered(&pattern, access, &base_rules) {
            return Err(RuleError::NotSubsetOfBase {
                path: rule.path.clone(),
                access: rule.access.clone(),
                base: base.name.clone(),
                missing: missing.to_string(),
            });
        }
        kept.push((
            pattern,
            PathRule {
                path: rule.path.clone(),
                access: access.to_string(),
                default: false,
            },
        ));
    }
    if !role.requires_approval {
        role.paths = kept.into_iter().map(|(_, r)| r).collect();
        return Ok(false);
    }
    // Approval roles: what the current rules already grant applies at once (narrowing); the
    // rest waits, as the whole new set, for ApprovePending.
    let current = super::validate::parsed_rules(Some(&Role {
        paths: role.paths.iter().filter(|r| !r.default).cloned().collect(),
        ..Role::default()
    }));
    let mut now = Vec::new();
    let mut widened = false;
    for (pattern, rule) in &kept {
        let Ok(access) = Access::parse(&rule.access) else {
            continue;
        };
        let missing = super::validate::uncovered(pattern, access, &current);
        let covered = match missing {
            None => access,
            Some(missing) => {
                widened = true;
                access.minus(missing)
            }
        };
        if !covered.is_empty() {
            now.push(PathRule {
                access: covered.to_string(),
                ..rule.clone()
            });
        }
    }
    role.paths = now;
    role.pending_paths = if widened {
        Some(kept.into_iter().map(|(_, r)| r).collect())
    } else {
        None
    };
    Ok(widened)
}

/// Whole-role validation after a change: a change must never produce a role the file
/// validator would refuse.
fn recheck(policy: &Policy, role: &Role) -> Result<(), RuleError> {
    super::validate::validate_role(policy, role).map_err(|errs| first_error("", errs))
}

/// The first problem of a validation, as the error an admin write answers with.
fn first_error(prefix: &str, errs: Vec<super::ValidationError>) -> RuleError {
    let rule = errs.iter().find(|e| e.problem == Problem::Rule);
    let first = match rule.or(errs.first()) {
        Some(e) => e.clone(),
        None => {
            return invalid(prefix, "refused");
        }
    };
    let field = format!("{prefix}{}", first.path);
    match first.problem {
        Problem::Rule => RuleError::Broken {
            field,
            message: first.message,
        },
        Problem::Malformed => invalid(field, first.message),
    }
}

/// The subject after a PutSubject.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectOutcome {
    /// The subject to store (its effective part, and the pending widening if any).
    pub subject: Subject,
    /// True when part of the change waits for ApprovePending.
    pub pending_approval: bool,
}

/// PutSubject under every rule. `current` is the stored subject with this id, if any.
///
/// A subject is approval-bound when it holds, had pending, or asks for a role with
/// `requires_approval`. For such a subject narrowing applies at once and widening (another
/// role, a lifted or wider override, another access role) waits in `pending` for
/// ApprovePending. A new approval-bound subject starts from nothing: its whole set waits.
pub fn apply_subject(
    policy: &Policy,
    current: Option<&Subject>,
    requested: Subject,
) -> Result<SubjectOutcome, RuleError> {
    if requested.pending.is_some() {
        return Err(invalid("subject.pending", "is read-only"));
    }
    super::validate::validate_subject(policy, &requested)
        .map_err(|errs| first_error("subject.", errs))?;
    let approval = |name: &String| policy.role(name).is_some_and(|r| r.requires_approval);
    let bound = requested.roles.iter().any(approval)
        || current.is_some_and(|c| {
            c.roles.iter().any(approval)
                || c.pending
                    .as_ref()
                    .is_some_and(|p| p.roles.iter().any(approval))
        });
    if !bound {
        return Ok(SubjectOutcome {
            subject: requested,
            pending_approval: false,
        });
    }
    // A new subject starts from nothing: its whole set waits for approval, as an app's
    // requested set does at creation. Otherwise deleting a subject and creating it again
    // would widen it without one.
    let start;
    let current = match current {
        Some(c) => c,
        None => {
            start = Subject {
                roles: Vec::new(),
                resources: Vec::new(),
                ..requested.clone()
            };
            &start
        }
    };
    let mut now = Subject {
        pending: None,
        roles: requested
            .roles
            .iter()
            .filter(|r| current.roles.contains(r))
            .cloned()
            .collect(),
        resources: requested
            .resources
            .iter()
            .filter(|r| current.resources.contains(r))
            .cloned()
            .collect(),
        ..requested.clone()
    };
    match (current.only.is_empty(), requested.only.is_empty()) {
        (false, true) => now.only = current.only.clone(),
        (false, false) => {
            // Both narrow: the names in both (a conservative intersection of the closures).
            let mine = closure(policy, &current.only);
            now.only = requested
                .only
                .iter()
                .filter(|p| current.only.contains(p) || mine.contains(*p))
                .cloned()
                .collect();
            if now.only.is_empty() {
                // Nothing is in both: nothing stays effective until approval.
                now.roles.clear();
            }
        }
        _ => {}
    }
    let widened = now.roles != requested.roles
        || now.only != requested.only
        || now.resources != requested.resources;
    if widened {
        now.pending = Some(PendingSubject {
            roles: requested.roles.clone(),
            only: requested.only.clone(),
            resources: requested.resources.clone(),
        });
    }
    super::validate::validate_subject(policy, &now)
        .map_err(|errs| first_error("subject.", errs))?;
    Ok(SubjectOutcome {
        subject: now,
        pending_approval: widened,
    })
}

/// ApprovePending for a subject: its pending widening becomes effective.
pub fn apply_subject_approval(policy: &Policy, current: &Subject) -> Result<Subject, RuleError> {
    let Some(pending) = current.pending.clone() else {
        return Err(RuleError::NothingPendingForSubject(current.id.clone()));
    };
    let approved = Subject {
        roles: pending.roles,
        only: pending.only,
        resources: pending.resources,
        pending: None,
        ..current.clone()
    };
    super::validate::validate_subject(policy, &approved)
        .map_err(|errs| first_error("subject.", errs))?;
    Ok(approved)
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
                ..Catalog::default()
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
    fn lifting_an_exception_of_an_approval_role_with_all_waits_for_approval() {
        let mut p = policy();
        p.roles.push(Role {
            name: "everything".into(),
            kind: "app".into(),
            requires_approval: true,
            all: true,
            except: vec!["write".into()],
            ..Role::default()
        });
        let out = apply_update(&p, "everything", &set("write", true, &[])).expect("widening");
        assert!(out.pending_approval);
        assert_eq!(
            out.role.except,
            vec!["write"],
            "not effective before approval"
        );
        assert_eq!(out.role.pending, vec![Grant::enabled("write")]);
        let narrowed = apply_update(&p, "everything", &set("read", false, &[])).expect("narrowing");
        assert!(!narrowed.pending_approval);
        assert_eq!(narrowed.role.except, vec!["write", "read"]);
        let i = p.roles.len() - 1;
        p.roles[i] = out.role;
        let approved = apply_approval(&p, "everything").expect("approve");
        assert!(approved.except.is_empty());
        assert!(approved.pending.is_empty());
        // Disabling again cancels nothing left and is immediate.
        p.roles[i] = approved;
        let out = apply_update(&p, "everything", &set("write", false, &[])).expect("narrowing");
        assert!(!out.pending_approval);
        assert_eq!(out.role.except, vec!["write"]);
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
