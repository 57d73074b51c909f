//! Wire types ↔ model types.

use tonic::Status;

use super::limits::{MAX_NAME_BYTES, MAX_PATH_BYTES, bounded, bounded_each};
use super::pb;
use super::status::invalid;

/// Most entries in one list of a request (projects, path rules, roles...).
pub const MAX_LIST: usize = 1000;
use crate::model::{Catalog, Grant, PathRule, Permission, ResourceRole, Role, Subject};
use crate::store::AuditRecord;

/// A role shaped like the seed documents: the catalog tree with this role's state, and its path
/// rules with inherited defaults first.
pub fn role_to_pb(role: &Role, catalog: &Catalog, roles: &[Role]) -> pb::Role {
    let base = role
        .base
        .as_deref()
        .and_then(|b| roles.iter().find(|r| r.name == b));
    let mut paths: Vec<pb::PathPermission> = base
        .map(|b| {
            b.paths
                .iter()
                .filter(|r| r.default)
                .map(path_to_pb)
                .collect()
        })
        .unwrap_or_default();
    paths.extend(
        role.paths
            .iter()
            .filter(|r| base.is_none() || !r.default)
            .map(path_to_pb),
    );
    // Application-user roles are made of path rules; the permission tree would only be noise.
    let path_only = role.grants.is_empty()
        && !role.all
        && role.pending.is_empty()
        && (role.base.is_some() || !role.paths.is_empty());
    let permissions = if path_only {
        Vec::new()
    } else {
        catalog
            .permissions
            .iter()
            .filter(|p| p.parent.is_none())
            .map(|p| permission_tree(p, role, catalog))
            .collect()
    };
    pb::Role {
        name: role.name.clone(),
        kind: role.kind.clone(),
        description: role.description.clone().unwrap_or_default(),
        base: role.base.clone().unwrap_or_default(),
        permissions,
        paths,
        pending: role.pending.iter().map(|g| g.permission.clone()).collect(),
        all: role.all,
        except: role.except.clone(),
        requires_approval: role.requires_approval,
        pending_grants: role
            .pending
            .iter()
            .map(|g| grant_to_pb(g, catalog))
            .collect(),
        path_root: role.path_root,
        installed_in: role.installed_in.clone(),
        pending_paths: role
            .pending_paths
            .iter()
            .flatten()
            .map(path_to_pb)
            .collect(),
        has_pending_paths: role.pending_paths.is_some(),
    }
}

fn permission_tree(perm: &Permission, role: &Role, catalog: &Catalog) -> pb::RolePermission {
    let (enabled, projects) = if role.all {
        (!role.except.contains(&perm.name), Vec::new())
    } else {
        role.grant(&perm.name)
            .map_or((false, Vec::new()), |g| (g.enabled, g.projects.clone()))
    };
    pb::RolePermission {
        name: perm.name.clone(),
        enabled,
        project_scoped: perm.scoped,
        projects,
        children: catalog
            .permissions
            .iter()
            .filter(|c| c.parent.as_deref() == Some(perm.name.as_str()))
            .map(|c| permission_tree(c, role, catalog))
            .collect(),
    }
}

fn grant_to_pb(grant: &Grant, catalog: &Catalog) -> pb::RolePermission {
    pb::RolePermission {
        name: grant.permission.clone(),
        enabled: grant.enabled,
        project_scoped: catalog
            .permissions
            .iter()
            .any(|p| p.name == grant.permission && p.scoped),
        projects: grant.projects.clone(),
        children: Vec::new(),
    }
}

fn path_to_pb(rule: &PathRule) -> pb::PathPermission {
    pb::PathPermission {
        path: rule.path.clone(),
        access: rule.access.clone(),
        default: rule.default,
    }
}

/// The `set` of an UpdatePermission.
pub fn grant_from_pb(set: pb::RolePermission) -> Result<Grant, Status> {
    if set.name.is_empty() {
        return Err(invalid("set.name", "permission name is empty"));
    }
    bounded("set.name", &set.name, MAX_NAME_BYTES)?;
    if set.projects.len() > MAX_LIST {
        return Err(invalid(
            "set.projects",
            format!("more than {MAX_LIST} entries"),
        ));
    }
    bounded_each("set.projects", &set.projects, MAX_NAME_BYTES)?;
    if !set.children.is_empty() {
        return Err(invalid(
            "set.children",
            "children are read-only; set each permission by name",
        ));
    }
    Ok(Grant {
        permission: set.name,
        enabled: set.enabled,
        projects: set.projects,
    })
}

/// The `replace_paths` of an UpdatePermission.
pub fn paths_from_pb(paths: pb::PathPermissions) -> Result<Vec<PathRule>, Status> {
    if paths.paths.len() > MAX_LIST {
        return Err(invalid(
            "replace_paths.paths",
            format!("more than {MAX_LIST} rules"),
        ));
    }
    for (i, p) in paths.paths.iter().enumerate() {
        bounded(
            &format!("replace_paths.paths[{i}].path"),
            &p.path,
            MAX_PATH_BYTES,
        )?;
        bounded(&format!("replace_paths.paths[{i}].access"), &p.access, 4)?;
    }
    Ok(paths
        .paths
        .into_iter()
        .map(|p| PathRule {
            path: p.path,
            access: p.access,
            default: p.default,
        })
        .collect())
}

/// A subject from the wire.
pub fn subject_from_pb(subject: Option<pb::Subject>) -> Result<Subject, Status> {
    let s = subject.ok_or_else(|| invalid("subject", "is required"))?;
    if s.id.is_empty() {
        return Err(invalid("subject.id", "subject id is empty"));
    }
    bounded("subject.id", &s.id, MAX_NAME_BYTES)?;
    bounded("subject.type", &s.r#type, MAX_NAME_BYTES)?;
    for (field, list) in [("subject.roles", &s.roles), ("subject.only", &s.only)] {
        if list.len() > MAX_LIST {
            return Err(invalid(field, format!("more than {MAX_LIST} entries")));
        }
        bounded_each(field, list, MAX_NAME_BYTES)?;
    }
    if s.resources.len() > MAX_LIST {
        return Err(invalid(
            "subject.resources",
            format!("more than {MAX_LIST} entries"),
        ));
    }
    for (i, r) in s.resources.iter().enumerate() {
        bounded(
            &format!("subject.resources[{i}].resource"),
            &r.resource,
            MAX_NAME_BYTES,
        )?;
        bounded(
            &format!("subject.resources[{i}].role"),
            &r.role,
            MAX_NAME_BYTES,
        )?;
    }
    Ok(Subject {
        id: s.id,
        subject_type: s.r#type,
        roles: s.roles,
        only: s.only,
        resources: s
            .resources
            .into_iter()
            .map(|r| ResourceRole {
                resource: r.resource,
                role: r.role,
            })
            .collect(),
        // Read-only on the wire: a pending widening is made by the rules, not by the caller.
        pending: None,
    })
}

fn resource_to_pb(r: &ResourceRole) -> pb::ResourceRole {
    pb::ResourceRole {
        resource: r.resource.clone(),
        role: r.role.clone(),
    }
}

/// A subject to the wire.
pub fn subject_to_pb(s: &Subject) -> pb::Subject {
    pb::Subject {
        id: s.id.clone(),
        r#type: s.subject_type.clone(),
        roles: s.roles.clone(),
        only: s.only.clone(),
        resources: s.resources.iter().map(resource_to_pb).collect(),
        pending: s.pending.as_ref().map(|p| pb::PendingSubject {
            roles: p.roles.clone(),
            only: p.only.clone(),
            resources: p.resources.iter().map(resource_to_pb).collect(),
        }),
        changed_revision: 0,
    }
}

/// An audit record to the wire.
pub fn audit_to_pb(r: &AuditRecord) -> pb::AuditEntry {
    let json =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    pb::AuditEntry {
        revision: r.revision,
        actor: r.actor.clone(),
        at_unix_ms: r.at_unix_ms,
        action: r.action.clone(),
        target: r.target.clone(),
        before_json: json(&r.before),
        after_json: json(&r.after),
    }
}
