//! A naive reference evaluator written straight from README "Decisions" (DESIGN.md §1 made
//! precise), for differential tests against the compiled engine. Plain `Vec`/`HashSet` loops
//! over the model types; it shares no code with `src/engine` (nor with `model::path` or
//! `model::Endpoint`, whose matching it re-implements) and is slow on purpose.
//!
//! Where the README leaves a choice open, this evaluator chooses (as the engine does):
//! - `all: true` holds every permission minus `except`; an excepted permission stays out even
//!   when another held permission implies it (otherwise disabling a permission on such a role
//!   could silently do nothing).
//! - A role with `all: true` holds its scoped permissions for every scope (it has no grant list).
//! - `requires` is transitive; a cycle of requirements is satisfied when every member is.
//! - A path rule allows by itself: rule 5 (per-resource access) concerns permissions.

#![allow(clippy::expect_used, clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::HashSet;

use authz_sidecar::model::{Kind, Permission, Policy, Role};

/// What is asked.
#[derive(Debug, Clone)]
pub enum Act {
    /// A permission by name.
    Permission(String),
    /// An HTTP method and request target.
    Http(String, String),
    /// A webhook event type.
    Event(String),
}

/// One request, as `engine::Request` carries it.
#[derive(Debug, Clone)]
pub struct Query {
    /// Subject id.
    pub subject: String,
    /// The action.
    pub act: Act,
    /// Scope id, if any (an empty one counts as none).
    pub scope: Option<String>,
    /// Resource, if any.
    pub resource: Option<String>,
    /// Inline roles and subject type, used instead of the stored subject.
    pub inline: Option<(Vec<String>, String)>,
}

/// The reference answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Allowed or not.
    pub allowed: bool,
    /// The permissions the action needed (catalog order), empty when nothing maps it or the
    /// subject is unknown.
    pub required: Vec<String>,
}

fn permission<'a>(policy: &'a Policy, name: &str) -> Option<&'a Permission> {
    policy.catalog.permissions.iter().find(|p| p.name == name)
}

fn role<'a>(policy: &'a Policy, name: &str) -> Option<&'a Role> {
    policy.roles.iter().find(|r| r.name == name)
}

/// Every permission reachable from `start` along `edge` (the starting ones included).
fn reach(
    policy: &Policy,
    start: &[String],
    edge: fn(&Permission) -> &Vec<String>,
) -> HashSet<String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = start.to_vec();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(p) = permission(policy, &name) {
            for next in edge(p) {
                todo.push(next.clone());
            }
        }
    }
    seen.retain(|n| permission(policy, n).is_some());
    seen
}

fn implies(p: &Permission) -> &Vec<String> {
    &p.implies
}

fn requires(p: &Permission) -> &Vec<String> {
    &p.requires
}

/// The role's enabled grants `(permission, projects)`: its own enabled grants, plus the
/// permissions of its presets that it does not list itself (a preset is a starting set; a
/// grant the role states wins). Pending grants are not effective.
fn enabled_grants(policy: &Policy, role: &Role) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for g in &role.grants {
        if g.enabled {
            out.push((g.permission.clone(), g.projects.clone()));
        }
    }
    for preset_name in &role.presets {
        for preset in &policy.presets {
            if &preset.name != preset_name {
                continue;
            }
            let mut names: Vec<String> = preset.permissions.clone();
            if let Some(kind) = preset.kind {
                for p in &policy.catalog.permissions {
                    if p.kind == Some(kind) {
                        names.push(p.name.clone());
                    }
                }
            }
            for name in names {
                let stated = role.grants.iter().any(|g| g.permission == name);
                if !stated {
                    out.push((name, Vec::new()));
                }
            }
        }
    }
    out
}

/// The permissions a role grants: its enabled grants closed under `implies`, or every
/// permission minus `except`.
pub fn granted(policy: &Policy, role: &Role) -> HashSet<String> {
    if role.all {
        let mut all = HashSet::new();
        for p in &policy.catalog.permissions {
            if !role.except.contains(&p.name) {
                all.insert(p.name.clone());
            }
        }
        return all;
    }
    let names: Vec<String> = enabled_grants(policy, role)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    reach(policy, &names, implies)
}

/// Whether the role grants scoped `perm` for `scope`: some enabled grant whose permission is
/// `perm` or implies it lists the scope.
fn role_admits_scope(policy: &Policy, role: &Role, perm: &str, scope: &str) -> bool {
    if role.all {
        return !role.except.iter().any(|e| e == perm);
    }
    for (name, projects) in enabled_grants(policy, role) {
        let closure = reach(policy, &[name], implies);
        if closure.contains(perm) && projects.iter().any(|p| p == scope) {
            return true;
        }
    }
    false
}

struct View<'a> {
    id: String,
    roles: Vec<&'a Role>,
    subject_type: String,
    only: Option<HashSet<String>>,
    resources: Vec<(String, String)>,
}

fn view<'a>(policy: &'a Policy, ask: &Query) -> Option<View<'a>> {
    if let Some((names, subject_type)) = &ask.inline {
        let mut roles = Vec::new();
        for n in names {
            roles.push(role(policy, n)?);
        }
        return Some(View {
            id: ask.subject.clone(),
            roles,
            subject_type: subject_type.clone(),
            only: None,
            resources: Vec::new(),
        });
    }
    let subject = policy.subjects.iter().find(|s| s.id == ask.subject)?;
    let mut roles = Vec::new();
    for n in &subject.roles {
        if let Some(r) = role(policy, n) {
            roles.push(r);
        }
    }
    let only = if subject.only.is_empty() {
        None
    } else {
        Some(reach(policy, &subject.only, implies))
    };
    Some(View {
        id: subject.id.clone(),
        roles,
        subject_type: subject.subject_type.clone(),
        only,
        resources: subject
            .resources
            .iter()
            .map(|r| (r.resource.clone(), r.role.clone()))
            .collect(),
    })
}

/// Rules 2 and 3 for one permission: granted by a role, applicable to the subject's type,
/// inside the override, and (scoped) granted for the request's scope.
fn effective(policy: &Policy, v: &View, perm: &Permission, scope: Option<&str>) -> bool {
    let granting: Vec<&&Role> = v
        .roles
        .iter()
        .filter(|r| granted(policy, r).contains(&perm.name))
        .collect();
    if granting.is_empty() {
        return false;
    }
    if !perm.applies_to.is_empty() && !perm.applies_to.contains(&v.subject_type) {
        return false;
    }
    if let Some(only) = &v.only {
        if !only.contains(&perm.name) {
            return false;
        }
    }
    if !perm.scoped {
        return true;
    }
    let Some(scope) = scope else {
        return false;
    };
    granting
        .iter()
        .any(|r| role_admits_scope(policy, r, &perm.name, scope))
}

/// Rules 2, 3 and 5: the permission is effective, so is everything it requires (at the same
/// scope), and a named resource is covered by an access role granting it.
fn allows(policy: &Policy, v: &View, perm: &Permission, ask: &Query) -> bool {
    let scope = ask.scope.as_deref().filter(|s| !s.is_empty());
    if !effective(policy, v, perm, scope) {
        return false;
    }
    for need in reach(policy, &perm.requires, requires) {
        if need == perm.name {
            continue;
        }
        let Some(need) = permission(policy, &need) else {
            return false;
        };
        if !effective(policy, v, need, scope) {
            return false;
        }
    }
    if let Some(resource) = &ask.resource {
        if v.roles.iter().any(|r| r.all_resources) {
            return true;
        }
        let mut covered = false;
        for (res, access_role) in &v.resources {
            if res == resource {
                if let Some(r) = role(policy, access_role) {
                    if granted(policy, r).contains(&perm.name) {
                        covered = true;
                    }
                }
            }
        }
        return covered;
    }
    true
}

/// The `crud` letter of an HTTP method, or `None` for one no path rule grants.
fn letter(method: &str) -> Option<char> {
    match method.to_ascii_uppercase().as_str() {
        "POST" => Some('c'),
        "GET" | "HEAD" => Some('r'),
        "PUT" | "PATCH" => Some('u'),
        "DELETE" => Some('d'),
        _ => None,
    }
}

/// Methods the sidecar decides at all.
fn routed(method: &str) -> bool {
    letter(method).is_some() || method.eq_ignore_ascii_case("OPTIONS")
}

/// README "HTTP paths", read straight from its table: the decoded segments of a request target,
/// or `None` when the path is refused. Covers what the generators produce (no Unicode folding).
pub fn canonical_segments(target: &str) -> Option<Vec<String>> {
    let path = match target.find('?') {
        Some(i) => &target[..i],
        None => target,
    };
    if path.contains('#') {
        return None;
    }
    let body = path.strip_prefix('/')?;
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Some(Vec::new());
    }
    let literal = |c: u8| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&c);
    let mut out = Vec::new();
    for raw in body.split('/') {
        if raw.is_empty() || raw.contains(['\\', ';']) {
            return None;
        }
        let bytes = raw.as_bytes();
        let mut seg = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                let b = u8::from_str_radix(hex, 16).ok()?;
                let double = b == b'%'
                    && bytes.len() >= i + 5
                    && bytes[i + 3].is_ascii_hexdigit()
                    && bytes[i + 4].is_ascii_hexdigit();
                if literal(b) || b"/\\?#;".contains(&b) || b.is_ascii_control() || double {
                    return None;
                }
                seg.push(b);
                i += 3;
            } else {
                if bytes[i].is_ascii_control() {
                    return None;
                }
                seg.push(bytes[i]);
                i += 1;
            }
        }
        let seg = String::from_utf8(seg).ok()?;
        if seg.trim_end_matches(' ').chars().all(|c| c == '.') {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// `METHOD /seg/{param}`: same method, same number of segments, literals equal.
fn endpoint_matches(template: &str, method: &str, path: &[String]) -> bool {
    let mut parts = template.split_whitespace();
    let (Some(m), Some(t)) = (parts.next(), parts.next()) else {
        return false;
    };
    // HEAD is decided by GET templates too.
    let head_as_get = method.eq_ignore_ascii_case("HEAD") && m == "GET";
    if !m.eq_ignore_ascii_case(method) && !head_as_get {
        return false;
    }
    let t = segments(t);
    if t.len() != path.len() {
        return false;
    }
    t.iter().zip(path).all(|(want, got)| {
        let param = want.len() > 2 && want.starts_with('{') && want.ends_with('}');
        param || want == got
    })
}

/// `*` one segment, `{user}` the caller's own id, trailing `$` anchors; otherwise a prefix,
/// segment-wise.
fn rule_matches(pattern: &str, path: &[String], user: &str) -> bool {
    let (body, anchored) = match pattern.strip_suffix('$') {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    let pat = segments(body);
    if pat.len() > path.len() || (anchored && pat.len() != path.len()) {
        return false;
    }
    for (i, want) in pat.iter().enumerate() {
        let ok = match *want {
            "*" => true,
            "{user}" => !user.is_empty() && path[i] == user,
            lit => *lit == path[i],
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The path rules a role applies: its base role's defaults, then its own (a role without a
/// base applies all of its own).
fn rules<'a>(policy: &'a Policy, role: &'a Role) -> Vec<&'a authz_sidecar::model::PathRule> {
    match role.base.as_deref().and_then(|b| self::role(policy, b)) {
        Some(base) => base
            .paths
            .iter()
            .filter(|r| r.default)
            .chain(role.paths.iter().filter(|r| !r.default))
            .collect(),
        None => role.paths.iter().collect(),
    }
}

fn deny() -> Answer {
    Answer {
        allowed: false,
        required: Vec::new(),
    }
}

/// Decides one request by the README's rules.
pub fn decide(policy: &Policy, ask: &Query) -> Answer {
    let Some(v) = view(policy, ask) else {
        return deny();
    };
    match &ask.act {
        Act::Permission(name) => {
            let Some(p) = permission(policy, name) else {
                return deny();
            };
            Answer {
                allowed: allows(policy, &v, p, ask),
                required: vec![p.name.clone()],
            }
        }
        Act::Event(event) => {
            let gating: Vec<&Permission> = policy
                .catalog
                .permissions
                .iter()
                .filter(|p| p.events.contains(event))
                .collect();
            Answer {
                allowed: gating.iter().any(|p| allows(policy, &v, p, ask)),
                required: gating.iter().map(|p| p.name.clone()).collect(),
            }
        }
        Act::Http(method, target) => match canonical_segments(target) {
            Some(segs) => decide_http(policy, &v, ask, method, &segs),
            None => deny(),
        },
    }
}

/// Decides an HTTP request on segments already read (a refused path never gets here).
pub fn decide_segments(policy: &Policy, ask: &Query, method: &str, segs: &[String]) -> Answer {
    match view(policy, ask) {
        Some(v) => decide_http(policy, &v, ask, method, segs),
        None => deny(),
    }
}

fn decide_http(policy: &Policy, v: &View, ask: &Query, method: &str, segs: &[String]) -> Answer {
    if !routed(method) {
        return deny();
    }
    let routed: Vec<&Permission> = policy
        .catalog
        .permissions
        .iter()
        .filter(|p| {
            p.endpoints
                .iter()
                .any(|e| endpoint_matches(e, method, segs))
        })
        .collect();
    let required = routed.iter().map(|p| p.name.clone()).collect();
    if routed.iter().any(|p| allows(policy, v, p, ask)) {
        return Answer {
            allowed: true,
            required,
        };
    }
    if let Some(letter) = letter(method) {
        for r in &v.roles {
            for rule in rules(policy, r) {
                if rule.access.contains(letter) && rule_matches(&rule.path, segs, &v.id) {
                    return Answer {
                        allowed: true,
                        required,
                    };
                }
            }
        }
    }
    Answer {
        allowed: false,
        required,
    }
}

/// Kinds, for generators.
pub const KINDS: [Option<Kind>; 3] = [None, Some(Kind::Read), Some(Kind::Write)];
