//! Whole-policy validation. Every problem is collected (not just the first), each with the
//! field path it concerns so that the file loader can point at its line.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{Access, Endpoint, PathPattern, Policy, Role, Subject};

/// SHA-256 of the empty string: what `hash-token` prints for empty input. Never a valid digest.
pub const EMPTY_TOKEN_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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
    /// Whether the field is malformed or well-formed but breaks a rule of the model.
    pub problem: Problem,
}

/// The class of a [`ValidationError`]: admin writes answer INVALID_ARGUMENT for the first,
/// FAILED_PRECONDITION for the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The value itself is wrong (unknown name, bad pattern, duplicate...).
    Malformed,
    /// The value is well-formed but the model forbids it here (outside the base, another
    /// role kind's permission, a required grant missing, outside the installation...).
    Rule,
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
            problem: Problem::Malformed,
        });
    }

    fn rule(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(ValidationError {
            path,
            message: message.into(),
            problem: Problem::Rule,
        });
    }
}

/// Most distinct subject types `applies_to` may name: the engine numbers them in 16 bits.
pub const MAX_SUBJECT_TYPES: usize = u16::MAX as usize;

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
    let types: HashSet<&str> = policy
        .catalog
        .permissions
        .iter()
        .flat_map(|p| p.applies_to.iter().map(String::as_str))
        .collect();
    if types.len() > MAX_SUBJECT_TYPES {
        errs.push(
            root.key("catalog").key("permissions"),
            format!(
                "`applies_to` names {} distinct subject types; at most {MAX_SUBJECT_TYPES} are supported",
                types.len()
            ),
        );
    }
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
        } else if admin.token_sha256.eq_ignore_ascii_case(EMPTY_TOKEN_SHA256) {
            errs.push(
                path.key("token_sha256"),
                "is the SHA-256 of an empty token (`hash-token` of empty input): anyone could \
                 present it; hash the admin's real token",
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
    check_parent_chains(policy, &path, errs);
    // The same bounded build the engine's snapshot holds (every start, reload, import and
    // write validates before it compiles).
    if let Err(e) = super::RouteTable::for_policy(policy) {
        errs.push(path.key("permissions"), e.to_string());
    }
}

/// The deepest parent chain a catalog may hold (ListRoles nests one level per hop).
pub const MAX_PARENT_DEPTH: usize = 32;

/// Parent chains must end (a cycle would nest forever in ListRoles) and stay within
/// [`MAX_PARENT_DEPTH`]. Linear: every permission's depth is computed once.
fn check_parent_chains(policy: &Policy, path: &FieldPath, errs: &mut Errors) {
    #[derive(Clone, Copy, PartialEq)]
    enum Seen {
        New,
        OnWalk,
        Depth(usize),
        Loops,
    }
    let perms = &policy.catalog.permissions;
    let index: HashMap<&str, usize> = perms
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let parent = |i: usize| {
        perms[i]
            .parent
            .as_deref()
            .and_then(|name| index.get(name).copied())
    };
    let mut seen = vec![Seen::New; perms.len()];
    let mut walk = Vec::new();
    for start in 0..perms.len() {
        // Climb until a permission whose depth is known, a root, or this walk itself.
        let mut at = Some(start);
        let mut base = Seen::Depth(0);
        while let Some(i) = at {
            match seen[i] {
                Seen::New => {
                    seen[i] = Seen::OnWalk;
                    walk.push(i);
                    at = parent(i);
                }
                Seen::OnWalk => {
                    base = Seen::Loops;
                    break;
                }
                known => {
                    base = match known {
                        Seen::Depth(d) => Seen::Depth(d + 1),
                        other => other,
                    };
                    break;
                }
            }
        }
        // `base` is what the last permission of the walk gets; each one below it adds a hop.
        let mut next = base;
        while let Some(i) = walk.pop() {
            seen[i] = next;
            next = match next {
                Seen::Depth(d) => Seen::Depth(d + 1),
                other => other,
            };
        }
    }
    for (i, perm) in perms.iter().enumerate() {
        let at = path.key("permissions").index(i).key("parent");
        match seen[i] {
            Seen::Loops => errs.push(at, format!("parent chain of `{}` loops", perm.name)),
            Seen::Depth(d) if d == MAX_PARENT_DEPTH + 1 => errs.push(
                at,
                format!(
                    "parent chain of `{}` is more than {MAX_PARENT_DEPTH} permissions deep",
                    perm.name
                ),
            ),
            _ => {}
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
                errs.rule(
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
    check_paths(base, &role.paths, &path.key("paths"), errs);
    if let Some(pending) = &role.pending_paths {
        if !role.requires_approval {
            errs.push(
                path.key("pending_paths"),
                "only a role with requires_approval can hold pending path rules",
            );
        }
        check_paths(base, pending, &path.key("pending_paths"), errs);
    }
    if role.path_root && role.base.is_some() {
        errs.push(
            path.key("path_root"),
            "a role with a base is bounded by it; `path_root` is for roles without one",
        );
    }
    let has_paths =
        !role.paths.is_empty() || role.pending_paths.as_ref().is_some_and(|p| !p.is_empty());
    if has_paths && role.base.is_none() && !is_path_root(policy, role) {
        errs.rule(
            path.key("paths"),
            format!(
                "role `{}` has no base role, so nothing bounds its path rules: give it a `base`, or mark it `path_root: true` if its rules are a bound themselves",
                role.name
            ),
        );
    }
    check_role_kinds(policy, role, path, errs);
    check_installation(policy, role, path, errs);
}

/// A role without a base may hold path rules when it is a bound itself: another role names it
/// as its base, or the file marks it `path_root`.
pub(crate) fn is_path_root(policy: &Policy, role: &Role) -> bool {
    role.base.is_none()
        && (role.path_root
            || policy
                .roles
                .iter()
                .any(|r| r.base.as_deref() == Some(role.name.as_str())))
}

fn check_paths(
    base: Option<&Role>,
    rules: &[super::PathRule],
    path: &FieldPath,
    errs: &mut Errors,
) {
    let base_rules = parsed_rules(base);
    for (j, rule) in rules.iter().enumerate() {
        let rpath = path.index(j);
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
                errs.rule(
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
            errs.rule(
                rpath.clone(),
                format!(
                    "`{}` `{}` is not a subset of base role `{}` (nothing there grants `{}` on it)",
                    rule.path, rule.access, base.name, missing
                ),
            );
        }
    }
}

/// Every permission a role names (grants, pending grants, presets; or the whole catalog for
/// `all` minus `except`), closed under `implies`.
fn named_closure(policy: &Policy, role: &Role) -> Vec<String> {
    let mut todo: Vec<String> = if role.all {
        policy
            .catalog
            .permissions
            .iter()
            .filter(|p| !role.except.contains(&p.name))
            .map(|p| p.name.clone())
            .collect()
    } else {
        let mut names: Vec<String> = role
            .grants
            .iter()
            .chain(&role.pending)
            .map(|g| g.permission.clone())
            .collect();
        for ps in &role.presets {
            if let Some(preset) = policy.presets.iter().find(|p| &p.name == ps) {
                names.extend(preset.resolve(&policy.catalog));
            }
        }
        names
    };
    let mut seen = std::collections::HashSet::new();
    let mut closure = Vec::new();
    while let Some(name) = todo.pop() {
        if seen.contains(&name) {
            continue;
        }
        if let Some(p) = policy.permission(&name) {
            todo.extend(p.implies.iter().cloned());
            seen.insert(name.clone());
            closure.push(name);
        }
    }
    closure
}

/// Permissions keep to their role kinds: a role never names (or implies) a permission whose
/// `role_kinds` leave its kind out.
fn check_role_kinds(policy: &Policy, role: &Role, path: &FieldPath, errs: &mut Errors) {
    for name in named_closure(policy, role) {
        let Some(perm) = policy.permission(&name) else {
            continue;
        };
        if !perm.role_kinds.is_empty() && !perm.role_kinds.contains(&role.kind) {
            errs.rule(
                path.key("grants"),
                format!(
                    "`{}` belongs to role kind {} and cannot be granted (or implied) on role `{}` of role kind `{}`",
                    perm.name,
                    perm.role_kinds
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    role.name,
                    role.kind
                ),
            );
        }
    }
}

/// Installations act only where installed: a role of an installation kind names
/// `installed_in`, grants only scoped permissions, and lists no scope outside it.
fn check_installation(policy: &Policy, role: &Role, path: &FieldPath, errs: &mut Errors) {
    let installation = policy.catalog.installation_kinds.contains(&role.kind);
    if !installation {
        if !role.installed_in.is_empty() {
            errs.push(
                path.key("installed_in"),
                format!(
                    "`installed_in` is for roles of an installation kind (catalog.installation_kinds); `{}` is not one",
                    role.kind
                ),
            );
        }
        return;
    }
    if role.installed_in.is_empty() {
        errs.rule(
            path.key("installed_in"),
            format!(
                "role `{}` is an installation (kind `{}`): it must name the organizations or projects where it is installed",
                role.name, role.kind
            ),
        );
    }
    if role.all {
        errs.rule(
            path.key("all"),
            "an installation cannot hold `all` permissions: they would reach beyond where it is installed",
        );
    }
    if !role.paths.is_empty() || role.pending_paths.is_some() {
        errs.rule(
            path.key("paths"),
            "an installation holds no path rules: they would reach beyond where it is installed",
        );
    }
    for name in named_closure(policy, role) {
        if policy.permission(&name).is_some_and(|p| !p.scoped) {
            errs.rule(
                path.key("grants"),
                format!(
                    "`{name}` is not scoped, so an installation holding it would act outside `installed_in`"
                ),
            );
        }
    }
    // A required permission is held wherever the installation is installed.
    for perm in &policy.catalog.permissions {
        if !perm.required_for.contains(&role.kind) {
            continue;
        }
        if let Some(grant) = role.grant(&perm.name).filter(|g| g.enabled) {
            if let Some(missing) = role
                .installed_in
                .iter()
                .find(|scope| !grant.projects.contains(scope))
            {
                errs.rule(
                    path.key("grants"),
                    format!(
                        "`{}` is required on every role of kind `{}` and must be granted for `{missing}`, where `{}` is installed",
                        perm.name, role.kind, role.name
                    ),
                );
            }
        }
    }
    for (field, grants) in [("grants", &role.grants), ("pending", &role.pending)] {
        for (j, grant) in grants.iter().enumerate() {
            for (k, project) in grant.projects.iter().enumerate() {
                if !role.installed_in.contains(project) {
                    errs.rule(
                        path.key(field).index(j).key("projects").index(k),
                        format!(
                            "`{project}` is outside `installed_in` of installation `{}`",
                            role.name
                        ),
                    );
                }
            }
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
    check_holdings(
        policy,
        subject,
        &subject.roles,
        &subject.only,
        &subject.resources,
        path,
        errs,
    );
    if let Some(pending) = &subject.pending {
        check_holdings(
            policy,
            subject,
            &pending.roles,
            &pending.only,
            &pending.resources,
            &path.key("pending"),
            errs,
        );
    }
}

/// A subject's roles, override and access roles (its effective set, or its pending one).
fn check_holdings(
    policy: &Policy,
    subject: &Subject,
    roles: &[String],
    only: &[String],
    resources: &[super::ResourceRole],
    path: &FieldPath,
    errs: &mut Errors,
) {
    for (j, role) in roles.iter().enumerate() {
        if policy.role(role).is_none() {
            errs.push(path.key("roles").index(j), format!("unknown role `{role}`"));
        }
    }
    for (j, name) in only.iter().enumerate() {
        if policy.permission(name).is_none() {
            errs.push(
                path.key("only").index(j),
                format!("unknown permission `{name}`"),
            );
        }
    }
    for (j, rr) in resources.iter().enumerate() {
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
    // Required grants: a subject of type K, or holding a role of kind K, keeps every
    // permission `required_for: [K]` effective; `only` and leaving roles out cannot drop it.
    let held: Vec<&Role> = roles.iter().filter_map(|r| policy.role(r)).collect();
    let only_closure = (!only.is_empty()).then(|| closure(policy, only));
    for perm in &policy.catalog.permissions {
        for kind in &perm.required_for {
            let bound = subject.subject_type == *kind || held.iter().any(|r| r.kind == *kind);
            if !bound {
                continue;
            }
            let granted = held.iter().any(|r| {
                r.kind == *kind
                    && if r.all {
                        !r.except.contains(&perm.name)
                    } else {
                        r.grant(&perm.name).is_some_and(|g| g.enabled)
                    }
            });
            if !granted {
                errs.rule(
                    path.key("roles"),
                    format!(
                        "`{}` is required for `{kind}`: subject `{}` must hold a role of kind `{kind}` granting it",
                        perm.name, subject.id
                    ),
                );
            }
            if only_closure
                .as_ref()
                .is_some_and(|c| !c.contains(&perm.name))
            {
                errs.rule(
                    path.key("only"),
                    format!(
                        "`{}` is required for `{kind}`: the override of subject `{}` must keep it",
                        perm.name, subject.id
                    ),
                );
            }
        }
    }
}

/// `names` closed under `implies`.
pub(crate) fn closure(policy: &Policy, names: &[String]) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut todo: Vec<String> = names.to_vec();
    while let Some(name) = todo.pop() {
        if let Some(p) = policy.permission(&name) {
            if seen.insert(name) {
                todo.extend(p.implies.iter().cloned());
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Catalog, Grant, MAX_ROUTE_STATES, Permission, RouteError, RouteTable};

    fn with_types(n: usize) -> Policy {
        Policy {
            version: 1,
            catalog: Catalog {
                permissions: vec![Permission {
                    name: "read".into(),
                    applies_to: (0..n).map(|i| format!("t{i}")).collect(),
                    ..Permission::default()
                }],
                ..Catalog::default()
            },
            ..Policy::default()
        }
    }

    /// `n` permissions, each with one template whose literal sits at another position among
    /// `n` params: the route automaton needs about 2^n states.
    fn staggered(n: usize) -> Policy {
        let permissions = (0..n)
            .map(|i| {
                let segs: Vec<String> = (0..n)
                    .map(|j| {
                        if i == j {
                            format!("l{i}")
                        } else {
                            "{p}".into()
                        }
                    })
                    .collect();
                Permission {
                    name: format!("p{i}"),
                    endpoints: vec![format!("GET /{}", segs.join("/"))],
                    ..Permission::default()
                }
            })
            .collect();
        Policy {
            version: 1,
            catalog: Catalog {
                permissions,
                ..Catalog::default()
            },
            ..Policy::default()
        }
    }

    #[test]
    fn a_catalog_over_the_route_state_bound_is_refused_with_every_other_problem() {
        let mut policy = staggered(21);
        policy.roles.push(Role {
            name: "r".into(),
            grants: vec![Grant::enabled("nope")],
            ..Role::default()
        });
        let errs = validate(&policy).expect_err("over the bound");
        let bound = RouteError::TooManyStates {
            limit: MAX_ROUTE_STATES,
        };
        assert!(
            errs.iter()
                .any(|e| e.path.to_string() == "catalog.permissions"
                    && e.message == bound.to_string()),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.message.contains("nope")),
            "the other problem is reported in the same run: {errs:?}"
        );
        // The file path refuses it too, through the same validation.
        let text = serde_json::to_string(&staggered(21)).expect("json");
        let refused = crate::model::file::parse_policy("p.json", &text).expect_err("refused");
        assert!(
            format!("{refused:?}").contains("route automaton states"),
            "{refused:?}"
        );
        // Under the bound the catalog validates, and the table it validated is the one built.
        let small = staggered(6);
        assert!(validate(&small).is_ok());
        assert!(RouteTable::for_policy(&small).is_ok());
    }

    #[test]
    fn subject_types_are_bounded_so_that_their_ids_never_wrap() {
        assert!(validate(&with_types(MAX_SUBJECT_TYPES)).is_ok());
        let errs = validate(&with_types(MAX_SUBJECT_TYPES + 1)).expect_err("one too many");
        assert!(
            errs.iter()
                .any(|e| e.message.contains("distinct subject types")),
            "{errs:?}"
        );
    }
}
