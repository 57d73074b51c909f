//! Decisions: DESIGN.md's rules applied to a [`Snapshot`]. No locks, no I/O, no allocation.

use std::fmt;

use super::snapshot::{CompiledRole, Snapshot};
use crate::model::{Access, BitSet, CanonicalPath, Method, PathRejection};

/// Most inline roles one Check may carry.
pub const MAX_INLINE_ROLES: usize = 32;

/// What is being asked.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// A catalog permission by name.
    Permission(&'a str),
    /// An HTTP request.
    Http {
        /// Method name, any case.
        method: &'a str,
        /// Request path, read by the one canonicalizer every HTTP decision shares.
        path: &'a CanonicalPath<'a>,
    },
    /// A webhook event type.
    Event(&'a str),
}

/// Roles and type carried by a verified token, used instead of the stored subject.
#[derive(Debug, Clone, Copy)]
pub struct Inline<'a> {
    /// Role names.
    pub roles: &'a [String],
    /// Subject type.
    pub subject_type: &'a str,
}

/// One Check.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Subject id.
    pub subject: &'a str,
    /// The action.
    pub action: Action<'a>,
    /// Scope id the action targets.
    pub scope: Option<&'a str>,
    /// Resource for per-resource access.
    pub resource: Option<&'a str>,
    /// Inline roles, when the caller passes them.
    pub inline: Option<Inline<'a>>,
}

/// The answer to one Check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Allowed or not.
    pub allowed: bool,
    /// Which grant allowed it, or why it was denied.
    pub reason: Reason<'a>,
    /// Permissions the action needed.
    pub required: Required<'a>,
}

/// Permissions an action needed; any one suffices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required<'a> {
    /// Nothing maps the action.
    Nothing,
    /// One permission (a permission Check).
    One(u32),
    /// Any of these (an endpoint or an event).
    AnyOf(&'a BitSet),
}

impl<'a> Required<'a> {
    /// The permission ids.
    pub fn ids(self) -> impl Iterator<Item = u32> + 'a {
        let (one, set) = match self {
            Required::Nothing => (None, None),
            Required::One(id) => (Some(id), None),
            Required::AnyOf(set) => (None, Some(set)),
        };
        one.into_iter()
            .chain(set.into_iter().flat_map(|s| s.iter().map(|i| i as u32)))
    }
}

/// Why a decision went the way it did. Displays as the response's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason<'a> {
    /// Allowed: a role's grant of a permission.
    Granted {
        /// The permission.
        permission: &'a str,
        /// The role granting it.
        role: &'a str,
    },
    /// Allowed: a path rule.
    PathRule {
        /// The role holding the rule.
        role: &'a str,
        /// The rule's pattern.
        rule: &'a str,
    },
    /// Denied: no such subject.
    UnknownSubject(&'a str),
    /// Denied: an inline role that does not exist.
    UnknownRole(&'a str),
    /// Denied: no such permission.
    UnknownPermission(&'a str),
    /// Denied: no permission gates this event.
    UnknownEvent(&'a str),
    /// Denied: a method the engine does not route.
    UnsupportedMethod(&'a str),
    /// Denied: the request path was refused before any rule was consulted.
    RefusedPath(PathRejection),
    /// Denied: no endpoint or path rule maps this request.
    NoRoute {
        /// Method.
        method: &'a str,
        /// Path.
        path: &'a str,
    },
    /// Denied: a path rule matches but lacks the method's access letter.
    PathAccessMissing {
        /// The role.
        role: &'a str,
        /// The rule.
        rule: &'a str,
        /// The letter needed.
        needed: Access,
    },
    /// Denied: no role of the subject grants it.
    NotGranted(&'a str),
    /// Denied: the permission does not apply to the subject's type.
    NotApplicable {
        /// The permission.
        permission: &'a str,
        /// The subject type.
        subject_type: &'a str,
    },
    /// Denied: a required permission is not effective.
    RequiresMissing {
        /// The permission asked for.
        permission: &'a str,
        /// The permission it requires.
        requires: &'a str,
    },
    /// Denied: outside the subject's override.
    Overridden(&'a str),
    /// Denied: a scoped permission asked without a scope.
    ScopeRequired(&'a str),
    /// Denied: granted, but not for this scope.
    ScopeNotGranted {
        /// The permission.
        permission: &'a str,
        /// The scope asked for.
        scope: &'a str,
    },
    /// Denied: the subject holds no access role on the resource.
    NoResourceAccess(&'a str),
    /// Denied: the access role on the resource lacks the permission.
    ResourceRoleLacks {
        /// The permission.
        permission: &'a str,
        /// The access role.
        role: &'a str,
        /// The resource.
        resource: &'a str,
    },
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Granted { permission, role } => {
                write!(f, "granted `{permission}` by role `{role}`")
            }
            Reason::PathRule { role, rule } => {
                write!(f, "allowed by path rule `{rule}` of role `{role}`")
            }
            Reason::UnknownSubject(s) => write!(f, "unknown subject `{s}`"),
            Reason::UnknownRole(r) => write!(f, "unknown role `{r}`"),
            Reason::UnknownPermission(p) => write!(f, "unknown permission `{p}`"),
            Reason::UnknownEvent(e) => write!(f, "no permission gates event `{e}`"),
            Reason::UnsupportedMethod(m) => write!(f, "unsupported HTTP method `{m}`"),
            Reason::RefusedPath(rejection) => write!(f, "{rejection}"),
            Reason::NoRoute { method, path } => {
                write!(f, "no endpoint or path rule maps {method} {path}")
            }
            Reason::PathAccessMissing { role, rule, needed } => write!(
                f,
                "path rule `{rule}` of role `{role}` does not grant access `{needed}`"
            ),
            Reason::NotGranted(p) => write!(f, "no role of the subject grants `{p}`"),
            Reason::NotApplicable {
                permission,
                subject_type,
            } => write!(
                f,
                "`{permission}` does not apply to subject type `{subject_type}`"
            ),
            Reason::RequiresMissing {
                permission,
                requires,
            } => write!(
                f,
                "`{permission}` requires `{requires}`, which is not effective"
            ),
            Reason::Overridden(p) => write!(f, "`{p}` is outside the subject's override"),
            Reason::ScopeRequired(p) => {
                write!(f, "`{p}` is scoped; the request names no scope")
            }
            Reason::ScopeNotGranted { permission, scope } => {
                write!(f, "`{permission}` is not granted for scope `{scope}`")
            }
            Reason::NoResourceAccess(r) => write!(f, "the subject holds no access role on `{r}`"),
            Reason::ResourceRoleLacks {
                permission,
                role,
                resource,
            } => write!(
                f,
                "access role `{role}` on `{resource}` does not grant `{permission}`"
            ),
        }
    }
}

/// The subject as a decision sees it: stored or inline, resolved to ids.
pub(super) struct View<'a> {
    pub(super) id: &'a str,
    pub(super) roles: RoleIds<'a>,
    pub(super) type_id: Option<u16>,
    pub(super) type_name: &'a str,
    pub(super) only: Option<&'a BitSet>,
    pub(super) resources: &'a [(Box<str>, u32)],
}

pub(super) enum RoleIds<'a> {
    Stored(&'a [u32]),
    Inline([u32; MAX_INLINE_ROLES], usize),
}

impl RoleIds<'_> {
    pub(super) fn as_slice(&self) -> &[u32] {
        match self {
            RoleIds::Stored(ids) => ids,
            RoleIds::Inline(ids, len) => &ids[..*len],
        }
    }
}

impl Snapshot {
    /// Decides one request.
    pub fn decide<'a>(&'a self, req: &Request<'a>) -> Decision<'a> {
        let view = match self.view(req) {
            Ok(view) => view,
            Err(reason) => return deny(reason, Required::Nothing),
        };
        match req.action {
            Action::Permission(name) => match self.catalog.index.get(name) {
                None => deny(Reason::UnknownPermission(name), Required::Nothing),
                Some(&id) => match self.permission(&view, id, req) {
                    Ok(reason) => allow(reason, Required::One(id)),
                    Err(reason) => deny(reason, Required::One(id)),
                },
            },
            Action::Event(name) => match self.catalog.events.get(name) {
                None => deny(Reason::UnknownEvent(name), Required::Nothing),
                Some(set) => self.any_of(&view, set, req),
            },
            Action::Http { method, path } => self.http(&view, method, path, req),
        }
    }

    pub(super) fn view<'a>(&'a self, req: &Request<'a>) -> Result<View<'a>, Reason<'a>> {
        if let Some(inline) = req.inline {
            let mut ids = [0u32; MAX_INLINE_ROLES];
            let mut len = 0;
            for name in inline.roles.iter().take(MAX_INLINE_ROLES) {
                match self.roles.index.get(name.as_str()) {
                    Some(id) => {
                        ids[len] = *id;
                        len += 1;
                    }
                    None => return Err(Reason::UnknownRole(name)),
                }
            }
            return Ok(View {
                id: req.subject,
                roles: RoleIds::Inline(ids, len),
                type_id: self.catalog.types.get(inline.subject_type).copied(),
                type_name: inline.subject_type,
                only: None,
                resources: &[],
            });
        }
        let subject = self
            .subjects
            .get(req.subject)
            .ok_or(Reason::UnknownSubject(req.subject))?;
        Ok(View {
            id: req.subject,
            roles: RoleIds::Stored(subject.roles.as_slice()),
            type_id: subject.type_id,
            type_name: &subject.type_name,
            only: subject.extras.as_ref().and_then(|e| e.only.as_ref()),
            resources: subject.extras.as_ref().map_or(&[], |e| &e.resources[..]),
        })
    }

    pub(super) fn role(&self, id: u32) -> &CompiledRole {
        &self.roles.roles[id as usize]
    }

    fn http<'a>(
        &'a self,
        view: &View<'a>,
        method: &'a str,
        path: &'a CanonicalPath<'a>,
        req: &Request<'a>,
    ) -> Decision<'a> {
        let Some(m) = Method::parse(method) else {
            return deny(Reason::UnsupportedMethod(method), Required::Nothing);
        };
        let routed = self.catalog.routes.lookup(m, path);
        let mut first_denial = None;
        if let Some(set) = routed {
            let decision = self.any_of(view, set, req);
            if decision.allowed {
                return decision;
            }
            first_denial = Some(decision.reason);
        }
        let path = path.as_str();
        let mut partial = None;
        // OPTIONS has no access letter: only a catalog endpoint allows it.
        let needed = m.access().unwrap_or_default();
        let rule_roles = if needed.is_empty() {
            &[][..]
        } else {
            view.roles.as_slice()
        };
        for &rid in rule_roles {
            let role = self.role(rid);
            for rule in role.paths.iter() {
                if rule.pattern.matches(path, view.id) {
                    if rule.access.contains(needed) {
                        let reason = Reason::PathRule {
                            role: &role.name,
                            rule: &rule.text,
                        };
                        return allow(reason, routed.map_or(Required::Nothing, Required::AnyOf));
                    }
                    partial.get_or_insert(Reason::PathAccessMissing {
                        role: &role.name,
                        rule: &rule.text,
                        needed,
                    });
                }
            }
        }
        let reason = first_denial
            .or(partial)
            .unwrap_or(Reason::NoRoute { method, path });
        deny(reason, routed.map_or(Required::Nothing, Required::AnyOf))
    }

    fn any_of<'a>(&'a self, view: &View<'a>, set: &'a BitSet, req: &Request<'a>) -> Decision<'a> {
        let mut first = None;
        for id in set.iter() {
            match self.permission(view, id as u32, req) {
                Ok(reason) => return allow(reason, Required::AnyOf(set)),
                Err(reason) => {
                    first.get_or_insert(reason);
                }
            }
        }
        let reason = first.unwrap_or(Reason::NotGranted(""));
        deny(reason, Required::AnyOf(set))
    }

    /// Rule 2-5 for one permission: granted, applicable, inside the override, requirements
    /// effective, scope granted, resource access held.
    fn permission<'a>(
        &'a self,
        view: &View<'a>,
        id: u32,
        req: &Request<'a>,
    ) -> Result<Reason<'a>, Reason<'a>> {
        let name: &'a str = &self.catalog.names[id as usize];
        let role = self.effective(view, id, req.scope)?;
        for &need in self.catalog.info[id as usize].needs.iter() {
            if self.effective(view, need, req.scope).is_err() {
                return Err(Reason::RequiresMissing {
                    permission: name,
                    requires: &self.catalog.names[need as usize],
                });
            }
        }
        if let Some(resource) = req.resource {
            self.resource_access(view, id, resource)?;
        }
        Ok(Reason::Granted {
            permission: name,
            role: &role.name,
        })
    }

    /// The role through which permission `id` is effective for the view at `scope`.
    fn effective<'a>(
        &'a self,
        view: &View<'a>,
        id: u32,
        scope: Option<&'a str>,
    ) -> Result<&'a CompiledRole, Reason<'a>> {
        let name: &'a str = &self.catalog.names[id as usize];
        let info = &self.catalog.info[id as usize];
        let mut granting = view
            .roles
            .as_slice()
            .iter()
            .map(|&r| self.role(r))
            .filter(|r| r.granted.contains(id as usize));
        let Some(first) = granting.next() else {
            return Err(Reason::NotGranted(name));
        };
        if let Some(applies) = &info.applies {
            if !view.type_id.is_some_and(|t| applies.contains(&t)) {
                return Err(Reason::NotApplicable {
                    permission: name,
                    subject_type: view.type_name,
                });
            }
        }
        if view.only.is_some_and(|only| !only.contains(id as usize)) {
            return Err(Reason::Overridden(name));
        }
        if !info.scoped {
            return Ok(first);
        }
        let Some(scope) = scope.filter(|s| !s.is_empty()) else {
            return Err(Reason::ScopeRequired(name));
        };
        std::iter::once(first)
            .chain(granting)
            .find(|r| r.scopes.get(&id).is_some_and(|s| s.admits(scope)))
            .ok_or(Reason::ScopeNotGranted {
                permission: name,
                scope,
            })
    }

    fn resource_access<'a>(
        &'a self,
        view: &View<'a>,
        id: u32,
        resource: &'a str,
    ) -> Result<(), Reason<'a>> {
        let everywhere = view
            .roles
            .as_slice()
            .iter()
            .any(|&r| self.role(r).all_resources);
        if everywhere {
            return Ok(());
        }
        // A subject may hold several access roles on one resource: any of them may grant.
        let start = view.resources.partition_point(|(r, _)| **r < *resource);
        let mut held = view.resources[start..]
            .iter()
            .take_while(|(r, _)| **r == *resource)
            .map(|(_, role)| self.role(*role));
        let Some(first) = held.next() else {
            return Err(Reason::NoResourceAccess(resource));
        };
        if std::iter::once(first)
            .chain(held)
            .any(|role| role.granted.contains(id as usize))
        {
            Ok(())
        } else {
            Err(Reason::ResourceRoleLacks {
                permission: &self.catalog.names[id as usize],
                role: &first.name,
                resource,
            })
        }
    }
}

pub(super) fn allow<'a>(reason: Reason<'a>, required: Required<'a>) -> Decision<'a> {
    Decision {
        allowed: true,
        reason,
        required,
    }
}

impl Decision<'static> {
    /// The denial of a request whose path the canonicalizer refused.
    pub fn refused_path(rejection: PathRejection) -> Decision<'static> {
        deny(Reason::RefusedPath(rejection), Required::Nothing)
    }
}

pub(super) fn deny<'a>(reason: Reason<'a>, required: Required<'a>) -> Decision<'a> {
    Decision {
        allowed: false,
        reason,
        required,
    }
}
