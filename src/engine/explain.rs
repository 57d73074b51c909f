//! Explain: the same rules as [`Snapshot::decide`], walked again while writing down every step.
//!
//! `decide` stays allocation-free; a Check that asks for an explanation (`explain = true`) pays
//! for this walk instead. The verdict and reason of [`Snapshot::explain`] are those of `decide`
//! for every request (tests hold the two to that over the examples and the hostile corpus).

use std::fmt;

use super::decide::{Action, Decision, Reason, Request, Required, View, allow, deny};
use super::snapshot::{CompiledRole, Scopes, Snapshot};
use crate::model::{BitSet, Method, PathRejection, Role};

/// What one step of an explanation looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Catalog lookup of the permission, event or HTTP endpoint.
    Catalog,
    /// Whether one of the subject's roles grants a permission.
    Grant,
    /// The permission's `applies_to` against the subject's type.
    AppliesTo,
    /// The subject's override (`only`).
    Override,
    /// A scoped permission against the request's scope.
    Scope,
    /// A permission the asked one requires.
    Requires,
    /// Per-resource access.
    Resource,
    /// One path rule of one role against the canonical path.
    PathRule,
    /// Grants or path rules waiting for approval (never effective until approved).
    Pending,
}

impl StepKind {
    /// The name used on the wire and in printed traces.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Catalog => "catalog",
            StepKind::Grant => "grant",
            StepKind::AppliesTo => "applies_to",
            StepKind::Override => "override",
            StepKind::Scope => "scope",
            StepKind::Requires => "requires",
            StepKind::Resource => "resource",
            StepKind::PathRule => "path_rule",
            StepKind::Pending => "pending",
        }
    }
}

/// One rule considered, and why it matched or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What was looked at.
    pub kind: StepKind,
    /// The role the rule belongs to (empty when none).
    pub role: String,
    /// The permission, path pattern or lookup key.
    pub rule: String,
    /// Whether the rule matched (for a pending step: whether it would matter once approved).
    pub matched: bool,
    /// Why, in words.
    pub detail: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.matched { "+" } else { "-" };
        write!(f, "{mark} {}", self.kind.as_str())?;
        if !self.role.is_empty() {
            write!(f, " [{}]", self.role)?;
        }
        if !self.rule.is_empty() {
            write!(f, " {}", self.rule)?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The subject as the decision saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectTrace {
    /// Subject id.
    pub id: String,
    /// `stored`, `inline` (roles from a verified token) or `unknown`.
    pub source: &'static str,
    /// Subject type.
    pub subject_type: String,
    /// Role names, in the order the decision consults them.
    pub roles: Vec<String>,
    /// The override (`only`), when the subject has one.
    pub only: Vec<String>,
    /// `resource=role` access roles.
    pub resources: Vec<String>,
}

/// A decision and the steps that led to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    /// The verdict (always `decide`'s).
    pub allowed: bool,
    /// The reason, as `decide` words it.
    pub reason: String,
    /// Permissions the action needed.
    pub required: Vec<String>,
    /// The subject.
    pub subject: SubjectTrace,
    /// The canonical form of the HTTP path, for an HTTP action.
    pub canonical_path: Option<String>,
    /// Every rule considered, in order.
    pub steps: Vec<Step>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "ALLOW" } else { "DENY" };
        writeln!(f, "{verdict}: {}", self.reason)?;
        let s = &self.subject;
        writeln!(
            f,
            "subject `{}` ({}, type `{}`), roles [{}]",
            s.id,
            s.source,
            s.subject_type,
            s.roles.join(", ")
        )?;
        if !s.only.is_empty() {
            writeln!(f, "override: only [{}]", s.only.join(", "))?;
        }
        if !s.resources.is_empty() {
            writeln!(f, "resources: [{}]", s.resources.join(", "))?;
        }
        if let Some(path) = &self.canonical_path {
            writeln!(f, "canonical path: {path}")?;
        }
        if !self.required.is_empty() {
            writeln!(f, "required (any of): [{}]", self.required.join(", "))?;
        }
        for step in &self.steps {
            writeln!(f, "  {step}")?;
        }
        Ok(())
    }
}

fn step(kind: StepKind, role: &str, rule: &str, matched: bool, detail: impl Into<String>) -> Step {
    Step {
        kind,
        role: role.to_owned(),
        rule: rule.to_owned(),
        matched,
        detail: detail.into(),
    }
}

struct Trace {
    steps: Vec<Step>,
}

impl Trace {
    fn push(&mut self, kind: StepKind, role: &str, rule: &str, matched: bool, detail: String) {
        self.steps.push(step(kind, role, rule, matched, detail));
    }
}

impl Snapshot {
    /// Decides `req` as [`Snapshot::decide`] does, recording every rule considered. Allocates.
    pub fn explain(&self, req: &Request<'_>) -> Explanation {
        let mut trace = Trace { steps: Vec::new() };
        let (decision, subject) = match self.view(req) {
            Err(reason) => {
                let subject = SubjectTrace {
                    id: req.subject.to_owned(),
                    source: if req.inline.is_some() {
                        "inline"
                    } else {
                        "unknown"
                    },
                    subject_type: req
                        .inline
                        .map(|i| i.subject_type.to_owned())
                        .unwrap_or_default(),
                    roles: req.inline.map(|i| i.roles.to_vec()).unwrap_or_default(),
                    ..SubjectTrace::default()
                };
                (deny(reason, Required::Nothing), subject)
            }
            Ok(view) => {
                let subject = self.subject_trace(&view, req);
                (self.explain_action(&view, req, &mut trace), subject)
            }
        };
        let canonical_path = match req.action {
            Action::Http { path, .. } => Some(path.as_str().to_owned()),
            _ => None,
        };
        Explanation {
            allowed: decision.allowed,
            reason: decision.reason.to_string(),
            required: decision
                .required
                .ids()
                .map(|id| self.permission_name(id).to_owned())
                .collect(),
            subject,
            canonical_path,
            steps: trace.steps,
        }
    }

    fn subject_trace(&self, view: &View<'_>, req: &Request<'_>) -> SubjectTrace {
        SubjectTrace {
            id: view.id.to_owned(),
            source: if req.inline.is_some() {
                "inline"
            } else {
                "stored"
            },
            subject_type: view.type_name.to_owned(),
            roles: view
                .roles
                .as_slice()
                .iter()
                .map(|&r| self.role(r).name.to_string())
                .collect(),
            only: view
                .only
                .map(|only| {
                    only.iter()
                        .map(|id| self.permission_name(id as u32).to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            resources: view
                .resources
                .iter()
                .map(|(resource, role)| format!("{resource}={}", self.role(*role).name))
                .collect(),
        }
    }

    fn explain_action<'a>(
        &'a self,
        view: &View<'a>,
        req: &Request<'a>,
        trace: &mut Trace,
    ) -> Decision<'a> {
        match req.action {
            Action::Permission(name) => match self.catalog.index.get(name) {
                None => {
                    trace.push(
                        StepKind::Catalog,
                        "",
                        name,
                        false,
                        "no such permission in the catalog".into(),
                    );
                    deny(Reason::UnknownPermission(name), Required::Nothing)
                }
                Some(&id) => {
                    trace.push(
                        StepKind::Catalog,
                        "",
                        name,
                        true,
                        "a catalog permission".into(),
                    );
                    match self.explain_permission(view, id, req, trace) {
                        Ok(reason) => allow(reason, Required::One(id)),
                        Err(reason) => deny(reason, Required::One(id)),
                    }
                }
            },
            Action::Event(name) => match self.catalog.events.get(name) {
                None => {
                    trace.push(
                        StepKind::Catalog,
                        "",
                        name,
                        false,
                        "no permission gates this event".into(),
                    );
                    deny(Reason::UnknownEvent(name), Required::Nothing)
                }
                Some(set) => {
                    trace.push(
                        StepKind::Catalog,
                        "",
                        name,
                        true,
                        format!("gated by any of [{}]", self.names(set)),
                    );
                    self.explain_any_of(view, set, req, trace)
                }
            },
            Action::Http { method, path } => {
                let Some(m) = Method::parse(method) else {
                    trace.push(
                        StepKind::Catalog,
                        "",
                        method,
                        false,
                        "an HTTP method the engine does not route".into(),
                    );
                    return deny(Reason::UnsupportedMethod(method), Required::Nothing);
                };
                let routed = self.catalog.routes.lookup(m, path);
                let key = format!("{method} {}", path.as_str());
                let mut first_denial = None;
                match routed {
                    None => trace.push(
                        StepKind::Catalog,
                        "",
                        &key,
                        false,
                        "no catalog endpoint maps this request".into(),
                    ),
                    Some(set) => {
                        trace.push(
                            StepKind::Catalog,
                            "",
                            &key,
                            true,
                            format!("a catalog endpoint needing any of [{}]", self.names(set)),
                        );
                        let decision = self.explain_any_of(view, set, req, trace);
                        if decision.allowed {
                            return decision;
                        }
                        first_denial = Some(decision.reason);
                    }
                }
                let required = routed.map_or(Required::Nothing, Required::AnyOf);
                let path = path.as_str();
                let needed = m.access().unwrap_or_default();
                if needed.is_empty() {
                    trace.push(
                        StepKind::PathRule,
                        "",
                        "",
                        false,
                        format!("{method} has no access letter: path rules are not consulted"),
                    );
                }
                let mut partial = None;
                let rule_roles = if needed.is_empty() {
                    &[][..]
                } else {
                    view.roles.as_slice()
                };
                for &rid in rule_roles {
                    let role = self.role(rid);
                    if role.paths.is_empty() {
                        trace.push(
                            StepKind::PathRule,
                            &role.name,
                            "",
                            false,
                            "the role has no path rules".into(),
                        );
                    }
                    for rule in role.paths.iter() {
                        if !rule.pattern.matches(path, view.id) {
                            trace.push(
                                StepKind::PathRule,
                                &role.name,
                                &rule.text,
                                false,
                                format!("pattern does not match `{path}`"),
                            );
                            continue;
                        }
                        if rule.access.contains(needed) {
                            trace.push(
                                StepKind::PathRule,
                                &role.name,
                                &rule.text,
                                true,
                                format!(
                                    "matches `{path}`; access `{}` grants `{needed}`",
                                    rule.access
                                ),
                            );
                            let reason = Reason::PathRule {
                                role: &role.name,
                                rule: &rule.text,
                            };
                            return allow(reason, required);
                        }
                        trace.push(
                            StepKind::PathRule,
                            &role.name,
                            &rule.text,
                            false,
                            format!(
                                "matches `{path}`, but access `{}` lacks `{needed}`",
                                rule.access
                            ),
                        );
                        partial.get_or_insert(Reason::PathAccessMissing {
                            role: &role.name,
                            rule: &rule.text,
                            needed,
                        });
                    }
                }
                let reason = first_denial
                    .or(partial)
                    .unwrap_or(Reason::NoRoute { method, path });
                deny(reason, required)
            }
        }
    }

    fn names(&self, set: &BitSet) -> String {
        set.iter()
            .map(|id| self.permission_name(id as u32))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn explain_any_of<'a>(
        &'a self,
        view: &View<'a>,
        set: &'a BitSet,
        req: &Request<'a>,
        trace: &mut Trace,
    ) -> Decision<'a> {
        let mut first = None;
        for id in set.iter() {
            match self.explain_permission(view, id as u32, req, trace) {
                Ok(reason) => return allow(reason, Required::AnyOf(set)),
                Err(reason) => {
                    first.get_or_insert(reason);
                }
            }
        }
        deny(
            first.unwrap_or(Reason::NotGranted("")),
            Required::AnyOf(set),
        )
    }

    fn explain_permission<'a>(
        &'a self,
        view: &View<'a>,
        id: u32,
        req: &Request<'a>,
        trace: &mut Trace,
    ) -> Result<Reason<'a>, Reason<'a>> {
        let name: &'a str = &self.catalog.names[id as usize];
        let role = self.explain_effective(view, id, req.scope, trace)?;
        for &need in self.catalog.info[id as usize].needs.iter() {
            let need_name: &'a str = &self.catalog.names[need as usize];
            match self.explain_effective(view, need, req.scope, trace) {
                Ok(r) => trace.push(
                    StepKind::Requires,
                    &r.name,
                    name,
                    true,
                    format!("requires `{need_name}`, which is effective"),
                ),
                Err(why) => {
                    trace.push(
                        StepKind::Requires,
                        "",
                        name,
                        false,
                        format!("requires `{need_name}`, which is not effective: {why}"),
                    );
                    return Err(Reason::RequiresMissing {
                        permission: name,
                        requires: need_name,
                    });
                }
            }
        }
        if let Some(resource) = req.resource {
            self.explain_resource(view, id, resource, trace)?;
        }
        Ok(Reason::Granted {
            permission: name,
            role: &role.name,
        })
    }

    fn explain_effective<'a>(
        &'a self,
        view: &View<'a>,
        id: u32,
        scope: Option<&'a str>,
        trace: &mut Trace,
    ) -> Result<&'a CompiledRole, Reason<'a>> {
        let name: &'a str = &self.catalog.names[id as usize];
        let info = &self.catalog.info[id as usize];
        let mut granting: Vec<&'a CompiledRole> = Vec::new();
        for &rid in view.roles.as_slice() {
            let role = self.role(rid);
            let grants = role.granted.contains(id as usize);
            trace.push(
                StepKind::Grant,
                &role.name,
                name,
                grants,
                if grants {
                    "the role grants it".into()
                } else {
                    "the role does not grant it".into()
                },
            );
            if grants {
                granting.push(role);
            }
        }
        let Some(&first) = granting.first() else {
            return Err(Reason::NotGranted(name));
        };
        if let Some(applies) = &info.applies {
            let ok = view.type_id.is_some_and(|t| applies.contains(&t));
            trace.push(
                StepKind::AppliesTo,
                "",
                name,
                ok,
                format!(
                    "subject type `{}` {} among the types it applies to",
                    view.type_name,
                    if ok { "is" } else { "is not" }
                ),
            );
            if !ok {
                return Err(Reason::NotApplicable {
                    permission: name,
                    subject_type: view.type_name,
                });
            }
        }
        if let Some(only) = view.only {
            let inside = only.contains(id as usize);
            trace.push(
                StepKind::Override,
                "",
                name,
                inside,
                if inside {
                    "inside the subject's override".into()
                } else {
                    "outside the subject's override".into()
                },
            );
            if !inside {
                return Err(Reason::Overridden(name));
            }
        }
        if !info.scoped {
            return Ok(first);
        }
        let Some(scope) = scope.filter(|s| !s.is_empty()) else {
            trace.push(
                StepKind::Scope,
                "",
                name,
                false,
                "project-scoped, and the request names no scope".into(),
            );
            return Err(Reason::ScopeRequired(name));
        };
        for role in granting {
            let scopes = role.scopes.get(&id);
            let admitted = scopes.is_some_and(|s| s.admits(scope));
            let listed = match scopes {
                None => "no scope".to_owned(),
                Some(Scopes::Any) => "every scope".to_owned(),
                Some(Scopes::List(ids)) => format!("[{}]", ids.join(", ")),
            };
            trace.push(
                StepKind::Scope,
                &role.name,
                name,
                admitted,
                format!(
                    "granted for {listed}; scope `{scope}` {}",
                    if admitted { "admitted" } else { "not admitted" }
                ),
            );
            if admitted {
                return Ok(role);
            }
        }
        Err(Reason::ScopeNotGranted {
            permission: name,
            scope,
        })
    }

    fn explain_resource<'a>(
        &'a self,
        view: &View<'a>,
        id: u32,
        resource: &'a str,
        trace: &mut Trace,
    ) -> Result<(), Reason<'a>> {
        let name = self.permission_name(id);
        for &rid in view.roles.as_slice() {
            let role = self.role(rid);
            if role.all_resources {
                trace.push(
                    StepKind::Resource,
                    &role.name,
                    resource,
                    true,
                    "the role passes per-resource checks everywhere".into(),
                );
                return Ok(());
            }
        }
        let held: Vec<&CompiledRole> = view
            .resources
            .iter()
            .filter(|(r, _)| **r == *resource)
            .map(|(_, role)| self.role(*role))
            .collect();
        let Some(first) = held.first() else {
            trace.push(
                StepKind::Resource,
                "",
                resource,
                false,
                "the subject holds no access role on it".into(),
            );
            return Err(Reason::NoResourceAccess(resource));
        };
        for role in &held {
            let grants = role.granted.contains(id as usize);
            trace.push(
                StepKind::Resource,
                &role.name,
                resource,
                grants,
                format!(
                    "access role {} `{name}`",
                    if grants { "grants" } else { "does not grant" }
                ),
            );
            if grants {
                return Ok(());
            }
        }
        Err(Reason::ResourceRoleLacks {
            permission: &self.catalog.names[id as usize],
            role: &first.name,
            resource,
        })
    }
}

impl Explanation {
    /// The explanation of a request whose path the canonicalizer refused: no rule consulted.
    pub fn refused_path(subject: &str, rejection: PathRejection) -> Explanation {
        let decision = Decision::refused_path(rejection);
        Explanation {
            allowed: decision.allowed,
            reason: decision.reason.to_string(),
            subject: SubjectTrace {
                id: subject.to_owned(),
                source: "unknown",
                ..SubjectTrace::default()
            },
            steps: vec![step(
                StepKind::Catalog,
                "",
                "",
                false,
                format!("the request path was refused before any rule was consulted: {rejection}"),
            )],
            ..Explanation::default()
        }
    }

    /// Adds the approval effects: grants and path rules of the subject's roles that wait for
    /// approval and so took no part in the decision. `roles` are the stored roles.
    pub fn note_pending(&mut self, roles: &[Role]) {
        for name in &self.subject.roles {
            let Some(role) = roles.iter().find(|r| &r.name == name) else {
                continue;
            };
            for grant in role.pending.iter().filter(|g| g.enabled) {
                let relevant = self.required.contains(&grant.permission);
                let scopes = if grant.projects.is_empty() {
                    String::new()
                } else {
                    format!(" for [{}]", grant.projects.join(", "))
                };
                self.steps.push(step(
                    StepKind::Pending,
                    &role.name,
                    &grant.permission,
                    relevant,
                    format!(
                        "grant{scopes} waits for approval (ApprovePending); not effective{}",
                        if relevant {
                            ", and this action needs it"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if let Some(paths) = &role.pending_paths {
                let rules: Vec<String> = paths
                    .iter()
                    .map(|p| format!("{} {}", p.path, p.access))
                    .collect();
                self.steps.push(step(
                    StepKind::Pending,
                    &role.name,
                    "paths",
                    self.canonical_path.is_some(),
                    format!(
                        "path rules [{}] wait for approval; the current rules decided",
                        rules.join(", ")
                    ),
                ));
            }
        }
    }
}
