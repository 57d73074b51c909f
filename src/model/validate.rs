//! Whole-policy validation. Every problem is collected (not just the first), each with the
//! field path it concerns so that the file loader can point at its line.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{Access, Endpoint, PathPattern, Policy, Role, Subject};

/// Where in a policy a problem sits: `roles[2].grants[0].permission`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

impl FieldPath {
    /// The document root.
    pub fn root() -> FieldPath {
        FieldPath::default()
    }

    /// This path extended by a mapping key.
    pub fn key(&self, key: &str) -> FieldPath {
        let mut steps = self.0.clone();
        steps.push(Step::Key(key.to_owned()));
        FieldPath(steps)
    }

    /// This path extended by a sequence index.
    pub fn index(&self, index: usize) -> FieldPath {
        let mut steps = self.0.clone();
        steps.push(Step::Index(index));
        FieldPath(steps)
    }

    /// Walks the path: `Ok(key)` for mapping keys, `Err(index)` for sequence indices.
    pub fn steps(&self) -> impl Iterator<Item = Result<&str, usize>> {
        self.0.iter().map(|s| match s {
            Step::Key(k) => Ok(k.as_str()),
            Step::Index(i) => Err(*i),
        })
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => write!(f, "{k}")?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One problem in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The field it concerns.
    pub path: FieldPath,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(ValidationError {
            path,
            message: message.into(),
        });
    }
}

/// Checks a whole policy; returns every problem found.
pub fn validate(policy: &Policy) -> Result<(), Vec<ValidationError>> {
    let mut errs = Errors(Vec::new());
    let root = FieldPath::root();
    if policy.version != 1 {
        errs.push(
            root.key("version"),
            format!(
                "unsupported version {}; this sidecar reads version 1",
                policy.version
            ),
        );
    }
    validate_catalog(policy, &mut errs);
    validate_presets(policy, &mut errs);
    let mut names = HashSet::new();
    for (i, role) in policy.roles.iter().enumerate() {
        let path = root.key("roles").index(i);
        if !names.insert(role.name.as_str()) {
            errs.push(path.key("name"), format!("duplicate role `{}`", role.name));
        }
        validate_role_into(policy, role, &path, &mut errs);
    }
    let mut ids = HashSet::new();
    for (i, subject) in policy.subjects.iter().enumerate() {
        let path = root.key("subjects").index(i);
        if !ids.insert(subject.id.as_str()) {
            errs.push(
                path.key("id"),
                format!("duplicate subject `{}`", subject.id),
            );
        }
        validate_subject_into(policy, subject, &path, &mut errs);
    }
    let mut admin_names = HashSet::new();
    for (i, admin) in policy.admins.iter().enumerate() {
        let path = root.key("admins").index(i);
        if admin.name.trim().is_empty() {
            errs.push(path.key("name"), "admin name is empty");
        }
        if !admin_names.insert(admin.name.as_str()) {
            errs.push(
                path.key("name"),
                format!("duplicate admin `{}`", admin.name),
            );
        }
        let hex_ok = admin.token_sha256.len() == 64
            && admin.token_sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok {
            errs.push(
                path.key("token_sha256"),
                "must be the 64-character hex SHA-256 of the admin's token",
            );
        }
    }
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(errs.0)
    }
}

/// Checks one role against the rest of the policy (used for admin changes).
pub fn validate_role(policy: &Policy, role: &Role) -> Result<(), Vec<ValidationError>> {
    let mut errs = Errors(Vec::new());
    validate_role_into(policy, role, &FieldPath::root(), &mut errs);
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(errs.0)
    }
}

/// Checks one subject against the policy (used by PutSubject).
pub fn validate_subject(policy: &Policy, subject: &Subject) -> Result<(), Vec<ValidationError>> {
    let mut errs = Errors(Vec::new());
    validate_subject_into(policy, subject, &FieldPath::root(), &mut errs);
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(errs.0)
    }
}

fn is_name(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn validate_catalog(policy: &Policy, errs: &mut Errors) {
    let path = FieldPath::root().key("catalog");
    if let Some(pattern) = &policy.catalog.scope_pattern {
        if let Err(e) = regex::Regex::new(pattern) {
            errs.push(
                path.key("scope_pattern"),
                format!("not a valid regular expression: {e}"),
            );
        }
    }
    let known: HashSet<&str> = policy
        .catalog
        .permissions
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let mut seen = HashSet::new();
    let mut endpoints: HashMap<String, usize> = HashMap::new();
    for (i, perm) in policy.catalog.permissions.iter().enumerate() {
        let path = path.key("permissions").index(i);
        if !is_name(&perm.name) {
            errs.push(
                path.key("name"),
                format!(
                    "`{}` is not a valid permission name (non-empty, no spaces)",
                    perm.name
                ),
            );
        }
        if !seen.insert(perm.name.as_str()) {
            errs.push(
                path.key("name"),
                format!("duplicate permission `{}`", perm.name),
            );
        }
        for (j, text) in perm.endpoints.iter().enumerate() {
            match Endpoint::parse(text) {
                Ok(_) => *endpoints.entry(text.clone()).or_default() += 1,
                Err(e) => errs.push(path.key("endpoints").index(j), e),
            }
        }
        for (j, event) in perm.events.iter().enumerate() {
            if !is_name(event) {
                errs.push(
                    path.key("events").index(j),
                    format!("`{event}` is not a valid event type"),
                );
            }
        }
        for (j, t) in perm.applies_to.iter().enumerate() {
            if !is_name(t) {
                errs.push(
                    path.key("applies_to").index(j),
                    format!("`{t}` is not a valid subject type"),
                );
            }
        }
        for (field, list) in [("implies", &perm.implies), ("requires", &perm.requires)] {
            for (j, other) in list.iter().enumerate() {
                if !known.contains(other.as_str()) {
                    errs.push(
                        path.key(field).index(j),
                        format!("unknown permission `{other}`"),
                    );
                } else if *other == perm.name {
                    errs.push(path.key(field).index(j), format!("`{other}` names itself"));
                }
            }
        }
        if let Some(parent) = &perm.parent {
            if !known.contains(parent.as_str()) {
                errs.push(path.key("parent"), format!("unknown permission `{parent}`"));
            } else if *parent == perm.name {
                errs.push(path.key("parent"), "a permission cannot be its own parent");
            }
        }
        for (j, kind) in perm.required_for.iter().enumerate() {
            if !is_name(kind) {
                errs.push(
                    path.key("required_for").index(j),
                    format!("`{kind}` is not a valid role kind"),
                );
            }
        }
    }
    // Parent chains must end: a cycle would nest forever in ListRoles.
    for (i, perm) in policy.catalog.permissions.iter().enumerate() {
        let mut hops = 0;
        let mut cursor = perm.parent.as_deref();
        while let Some(name) = cursor {
            hops += 1;
            if hops > policy.catalog.permissions.len() {
                errs.push(
                    path.key("permissions").index(i).key("parent"),
                    format!("parent chain of `{}` loops", perm.name),
                );
                break;
            }
            cursor = policy.permission(name).and_then(|p| p.parent.as_deref());
        }
    }
}

fn validate_presets(policy: &Policy, errs: &mut Errors) {
    let mut seen = HashSet::new();
    for (i, preset) in policy.presets.iter().enumerate() {
        let path = FieldPath::root().key("presets").index(i);
        if !seen.insert(preset.name.as_str()) {
            errs.push(
                path.key("name"),
                format!("duplicate preset `{}`", preset.name),
            );
        }
        for (j, name) in preset.permissions.iter().enumerate() {
            if policy.permission(name).is_none() {
                errs.push(
                    path.key("permissions").index(j),
                    format!("unknown permission `{name}`"),
                );
            }
        }
        if preset.permissions.is_empty() && preset.kind.is_none() {
            errs.push(path.clone(), "a preset needs `permissions` or a `kind`");
        }
    }
}

fn validate_role_into(policy: &Policy, role: &Role, path: &FieldPath, errs: &mut Errors) {
    if !is_name(&role.name) {
        errs.push(
            path.key("name"),
            format!("`{}` is not a valid role name", role.name),
        );
    }
    if !is_name(&role.kind) {
        errs.push(path.key("kind"), "role kind must be a non-empty word");
    }
    let scope_re = policy
        .catalog
        .scope_pattern
        .as_deref()
        .and_then(|p| regex::Regex::new(p).ok());
    let check_grants =
        |field: &str, grants: &[super::Grant], errs: &mut Errors| {
            let mut seen = HashSet::new();
            for (j, grant) in grants.iter().enumerate() {
                let gpath = path.key(field).index(j);
                let Some(perm) = policy.permission(&grant.permission) else {
                    errs.push(
                        gpath.key("permission"),
                        format!("unknown permission `{}`", grant.permission),
                    );
                    continue;
                };
                if !seen.insert(grant.permission.as_str()) {
                    errs.push(
                        gpath.key("permission"),
                        format!("`{}` is granted twice", grant.permission),
                    );
                }
                if !perm.scoped && !grant.projects.is_empty() {
                    errs.push(
                        gpath.key("projects"),
                        format!("`{}` is not scoped; it takes no projects", grant.permission),
                    );
                }
                for (k, project) in grant.projects.iter().enumerate() {
                    let bad = match &scope_re {
                        Some(re) => !re.is_match(project),
                        None => !is_name(project),
                    };
                    if bad {
                        errs.push(
                        gpath.key("projects").index(k),
                        format!(
                            "scope id `{project}` does not match the catalog's scope_pattern {}",
                            policy.catalog.scope_pattern.as_deref().unwrap_or("(non-empty word)")
                        ),
                    );
                    }
                }
            }
        };
    check_grants("grants", &role.grants, errs);
    check_grants("pending", &role.pending, errs);
    if !role.pending.is_empty() && !role.requires_approval {
        errs.push(
            path.key("pending"),
            "only a role with requires_approval can hold pending grants",
        );
    }
    for (j, name) in role.except.iter().enumerate() {
        if policy.permission(name).is_none() {
            errs.push(
                path.key("except").index(j),
                format!("unknown permission `{name}`"),
            );
        }
    }
    if !role.except.is_empty() && !role.all {
        errs.push(path.key("except"), "`except` needs `all: true`");
    }
    if role.all && !role.grants.is_empty() {
        errs.push(
            path.key("grants"),
            "a role with `all: true` lists `except`, not grants",
        );
    }
    for (j, name) in role.presets.iter().enumerate() {
        if !policy.presets.iter().any(|p| &p.name == name) {
            errs.push(
                path.key("presets").index(j),
                format!("unknown preset `{name}`"),
            );
        }
    }
    // Required permissions must stay granted on every role of their kind.
    for perm in &policy.catalog.permissions {
        if perm.required_for.contains(&role.kind) {
            let held = if role.all {
                !role.except.contains(&perm.name)
            } else {
                role.grant(&perm.name).is_some_and(|g| g.enabled)
                    || role.presets.iter().any(|ps| {
                        policy.presets.iter().any(|p| {
                            &p.name == ps && p.resolve(&policy.catalog).contains(&perm.name)
                        })
                    })
            };
            if !held {
                errs.push(
                    path.key("grants"),
                    format!(
                        "`{}` is required on every role of kind `{}`",
                        perm.name, role.kind
                    ),
                );
            }
        }
    }
    // Path rules: valid patterns, and within the base role when there is one.
    let base = match &role.base {
        None => None,
        Some(name) if *name == role.name => {
            errs.push(path.key("base"), "a role cannot be its own base");
            None
        }
        Some(name) => match policy.role(name) {
            Some(b) if b.base.is_some() => {
                errs.push(
                    path.key("base"),
                    format!("base role `{name}` has a base itself; one level only"),
                );
                None
            }
            Some(b) => Some(b),
            None => {
                errs.push(path.key("base"), format!("unknown role `{name}`"));
                None
            }
        },
    };
    let base_rules = parsed_rules(base);
    for (j, rule) in role.paths.iter().enumerate() {
        let rpath = path.key("paths").index(j);
        let pattern = match PathPattern::parse(&rule.path) {
            Ok(p) => p,
            Err(e) => {
                errs.push(rpath.key("path"), e);
                continue;
            }
        };
        let access = match Access::parse(&rule.access) {
            Ok(a) => a,
            Err(e) => {
                errs.push(rpath.key("access"), e);
                continue;
            }
        };
        let Some(base) = base else { continue };
        if rule.default {
            let same = base
                .paths
                .iter()
                .any(|b| b.default && b.path == rule.path && b.access_eq(rule));
            if !same {
                errs.push(
                    rpath.clone(),
                    format!(
                        "`{}` `{}` is flagged default but is not a default of base role `{}`",
                        rule.path, rule.access, base.name
                    ),
                );
            }
            continue;
        }
        if let Some(missing) = uncovered(&pattern, access, &base_rules) {
            errs.push(
                rpath.clone(),
                format!(
                    "`{}` `{}` is not a subset of base role `{}` (nothing there grants `{}` on it)",
                    rule.path, rule.access, base.name, missing
                ),
            );
        }
    }
}

/// A base role's path rules, parsed (rules that do not parse are skipped: validation reports
/// them where they are defined).
pub(crate) fn parsed_rules(base: Option<&Role>) -> Vec<(PathPattern, Access)> {
    base.map(|b| {
        b.paths
            .iter()
            .filter_map(|r| {
                Some((
                    PathPattern::parse(&r.path).ok()?,
                    Access::parse(&r.access).ok()?,
                ))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The access letters of `(pattern, access)` that no base rule covers, if any.
pub(crate) fn uncovered(
    pattern: &PathPattern,
    access: Access,
    base_rules: &[(PathPattern, Access)],
) -> Option<Access> {
    let mut missing = Access::default();
    for letter in access.letters() {
        let covered = base_rules
            .iter()
            .any(|(bp, ba)| ba.contains(letter) && bp.covers(pattern));
        if !covered {
            missing = missing.union(letter);
        }
    }
    if missing.is_empty() {
        None
    } else {
        Some(missing)
    }
}

impl super::PathRule {
    fn access_eq(&self, other: &super::PathRule) -> bool {
        match (Access::parse(&self.access), Access::parse(&other.access)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

fn validate_subject_into(policy: &Policy, subject: &Subject, path: &FieldPath, errs: &mut Errors) {
    if !is_name(&subject.id) {
        errs.push(
            path.key("id"),
            format!(
                "`{}` is not a valid subject id (non-empty, no spaces)",
                subject.id
            ),
        );
    }
    for (j, role) in subject.roles.iter().enumerate() {
        if policy.role(role).is_none() {
            errs.push(path.key("roles").index(j), format!("unknown role `{role}`"));
        }
    }
    for (j, name) in subject.only.iter().enumerate() {
        if policy.permission(name).is_none() {
            errs.push(
                path.key("only").index(j),
                format!("unknown permission `{name}`"),
            );
        }
    }
    for (j, rr) in subject.resources.iter().enumerate() {
        if rr.resource.is_empty() {
            errs.push(
                path.key("resources").index(j).key("resource"),
                "resource is empty",
            );
        }
        if policy.role(&rr.role).is_none() {
            errs.push(
                path.key("resources").index(j).key("role"),
                format!("unknown role `{}`", rr.role),
            );
        }
    }
}
