//! Who-can: the stored subjects a Check of one action would allow, a page at a time, in id
//! order (like SpiceDB's `LookupSubjects`).
//!
//! Not a scan of every subject. A subject can be allowed only through one of its own roles:
//! a permission needs a role that grants it (for a scoped permission, one that grants it for
//! the asked scope), an HTTP request needs such a role for a routed permission or a role with
//! a path rule matching the path with the method's access letter. So the action is first
//! evaluated per role (few) into a set of candidate roles; the subjects holding them come from
//! the base's reverse index ([`RoleHolders`], ids in order) merged with the overlay of recent
//! writes, plus, for a `{user}` path rule, the one subject whose id the path names. Every
//! candidate is then decided by [`Snapshot::decide`] itself, so each subject returned is one
//! Check allows (overrides, `applies_to`, `requires`, resources and `{user}` rules included);
//! the candidate roles are a superset of what any allowed subject holds, so none is missing.

use std::cmp::Ordering;

use super::decide::{Action, Request};
use super::snapshot::Snapshot;
use super::subject::CompiledSubject;
use super::subject_index::RoleHolders;
use crate::model::{Method, Whom};

/// Most candidates one page examines. A page that reaches it ends early (possibly short, or
/// empty) with a resume point, so one call stays bounded even when most candidates holding a
/// role are denied (an override, a type the permission does not apply to, a resource).
pub const WHO_CAN_SCAN_BUDGET: usize = 100_000;

/// One who-can question: the action as Check takes it, and ListSubjects' filters.
#[derive(Debug, Clone, Copy)]
pub struct WhoCan<'a> {
    /// The action (an HTTP path already canonical: a refused one allows nobody).
    pub action: Action<'a>,
    /// Scope id the action targets.
    pub scope: Option<&'a str>,
    /// Resource for per-resource access.
    pub resource: Option<&'a str>,
    /// Only subjects of this type.
    pub subject_type: Option<&'a str>,
    /// Only subjects holding this role (in their roles or as an access role).
    pub role: Option<&'a str>,
}

/// One page of who-can.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WhoCanPage {
    /// Allowed subject ids, ascending.
    pub subjects: Vec<String>,
    /// Where the next page starts (after this id); `None` when nothing follows.
    pub resume_after: Option<String>,
    /// Candidates decided for this page (for metrics and tests).
    pub examined: usize,
}

/// The candidates an action can have: roles through which it may be allowed, and subjects
/// named by `{user}` path rules.
struct Plan<'q> {
    roles: Vec<bool>,
    any_role: bool,
    named: Vec<&'q str>,
}

impl Plan<'_> {
    fn holds_candidate(&self, subject: &CompiledSubject) -> bool {
        self.any_role
            && subject
                .roles
                .as_slice()
                .iter()
                .any(|&r| self.roles.get(r as usize).copied().unwrap_or(false))
    }
}

impl Snapshot {
    /// The subjects after id `after` that a Check of `q` allows, up to `limit` of them.
    pub fn who_can(&self, q: &WhoCan<'_>, after: Option<&str>, limit: usize) -> WhoCanPage {
        self.who_can_within(q, after, limit, WHO_CAN_SCAN_BUDGET)
    }

    /// [`Self::who_can`] with an explicit scan budget (tests use a small one).
    pub fn who_can_within(
        &self,
        q: &WhoCan<'_>,
        after: Option<&str>,
        limit: usize,
        budget: usize,
    ) -> WhoCanPage {
        let limit = limit.max(1);
        let budget = budget.max(1);
        let role_filter = match q.role {
            None => None,
            Some(name) => match self.roles.index.get(name) {
                Some(&id) => Some(id),
                // No subject holds a role that does not exist.
                None => return WhoCanPage::default(),
            },
        };
        let plan = self.plan(q);
        let mut stream = Candidates::new(self, &plan, after);
        let mut page = WhoCanPage::default();
        let mut found_more = false;
        while let Some(id) = stream.next() {
            page.examined += 1;
            if self.admits(q, role_filter, id) {
                if page.subjects.len() == limit {
                    found_more = true;
                    break;
                }
                page.subjects.push(id.to_owned());
            }
            if page.examined >= budget {
                if stream.peek_done() {
                    break;
                }
                // Out of budget: resume after the last candidate decided, served or not.
                page.resume_after = Some(id.to_owned());
                return page;
            }
        }
        if found_more {
            page.resume_after = page.subjects.last().cloned();
        }
        page
    }

    /// Whether the stored subject `id` passes the filters and a Check of `q` allows it.
    fn admits(&self, q: &WhoCan<'_>, role_filter: Option<u32>, id: &str) -> bool {
        let Some(subject) = self.subjects.get(id) else {
            return false;
        };
        if q.subject_type.is_some_and(|t| *subject.type_name != *t) {
            return false;
        }
        if let Some(role) = role_filter {
            let holds = subject.roles.as_slice().contains(&role)
                || subject
                    .extras
                    .as_ref()
                    .is_some_and(|e| e.resources.iter().any(|(_, r)| *r == role));
            if !holds {
                return false;
            }
        }
        self.decide(&Request {
            subject: id,
            action: q.action,
            scope: q.scope,
            resource: q.resource,
            inline: None,
        })
        .allowed
    }

    /// The action evaluated per role: which roles can make it allowed.
    fn plan<'q>(&self, q: &WhoCan<'q>) -> Plan<'q> {
        let mut plan = Plan {
            roles: vec![false; self.roles.roles.len()],
            any_role: false,
            named: Vec::new(),
        };
        let scope = q.scope.filter(|s| !s.is_empty());
        match q.action {
            Action::Permission(name) => {
                if let Some(&id) = self.catalog.index.get(name) {
                    self.granting(id, scope, &mut plan);
                }
            }
            Action::Event(name) => {
                if let Some(set) = self.catalog.events.get(name) {
                    for id in set.iter() {
                        self.granting(id as u32, scope, &mut plan);
                    }
                }
            }
            Action::Http { method, path } => {
                let Some(m) = Method::parse(method) else {
                    return plan;
                };
                if let Some(set) = self.catalog.routes.lookup(m, path) {
                    for id in set.iter() {
                        self.granting(id as u32, scope, &mut plan);
                    }
                }
                // As in `decide`: OPTIONS has no access letter, only an endpoint allows it.
                let needed = m.access().unwrap_or_default();
                if !needed.is_empty() {
                    let path = path.as_str();
                    for (rid, role) in self.roles.roles.iter().enumerate() {
                        for rule in role.paths.iter() {
                            if !rule.access.contains(needed) {
                                continue;
                            }
                            match rule.pattern.matches_whom(path) {
                                Whom::Nobody => {}
                                Whom::Everyone => {
                                    plan.roles[rid] = true;
                                    plan.any_role = true;
                                }
                                Whom::Only(id) => plan.named.push(id),
                            }
                        }
                    }
                }
            }
        }
        plan.named.sort_unstable();
        plan.named.dedup();
        plan
    }

    /// Marks the roles through which permission `id` can be effective at `scope`: a role
    /// granting it, and for a scoped permission one granting it for that scope (`decide`
    /// needs such a role among the subject's own).
    fn granting(&self, id: u32, scope: Option<&str>, plan: &mut Plan<'_>) {
        let info = &self.catalog.info[id as usize];
        if info.scoped && scope.is_none() {
            return;
        }
        for (rid, role) in self.roles.roles.iter().enumerate() {
            if !role.granted.contains(id as usize) {
                continue;
            }
            let in_scope = !info.scoped
                || scope.is_some_and(|s| role.scopes.get(&id).is_some_and(|x| x.admits(s)));
            if in_scope {
                plan.roles[rid] = true;
                plan.any_role = true;
            }
        }
    }
}

/// The candidate ids in ascending order, each once: the base's holders of candidate roles
/// (minus ids the overlay changed), merged with the overlay's subjects holding one and the
/// subjects `{user}` rules name.
struct Candidates<'s> {
    snapshot: &'s Snapshot,
    holders: Option<&'s RoleHolders>,
    /// Per candidate role, the ranks still to visit.
    cursors: Vec<&'s [u32]>,
    base_head: Option<&'s str>,
    side: std::iter::Peekable<std::vec::IntoIter<&'s str>>,
}

impl<'s> Candidates<'s> {
    fn new<'q: 's>(snapshot: &'s Snapshot, plan: &Plan<'q>, after: Option<&str>) -> Self {
        let table = &*snapshot.subjects;
        let overlay_changed = !table.overlay.is_empty();
        let mut side: Vec<&'s str> = Vec::new();
        if overlay_changed && plan.any_role {
            for (id, entry) in table.overlay.iter() {
                if let Some(subject) = entry {
                    if plan.holds_candidate(subject) {
                        side.push(id);
                    }
                }
            }
        }
        side.extend(plan.named.iter().copied());
        side.retain(|id| after.is_none_or(|a| *id > a));
        side.sort_unstable();
        side.dedup();
        let (holders, cursors) = if plan.any_role {
            let base = &*table.base;
            let holders = base.holders();
            let start = after.map_or(0, |a| holders.rank_after(base, a));
            let cursors = plan
                .roles
                .iter()
                .enumerate()
                .filter(|(_, on)| **on)
                .map(|(rid, _)| {
                    let ranks = holders.of(rid as u32);
                    &ranks[ranks.partition_point(|&r| r < start)..]
                })
                .filter(|ranks| !ranks.is_empty())
                .collect();
            (Some(holders), cursors)
        } else {
            (None, Vec::new())
        };
        let mut candidates = Candidates {
            snapshot,
            holders,
            cursors,
            base_head: None,
            side: side.into_iter().peekable(),
        };
        candidates.base_head = candidates.next_base();
        candidates
    }

    /// The next base id holding a candidate role that the overlay did not change.
    fn next_base(&mut self) -> Option<&'s str> {
        let holders = self.holders?;
        let table = &*self.snapshot.subjects;
        loop {
            let min = self
                .cursors
                .iter()
                .filter_map(|c| c.first())
                .min()
                .copied()?;
            for cursor in self.cursors.iter_mut() {
                if cursor.first() == Some(&min) {
                    *cursor = &cursor[1..];
                }
            }
            let id = holders.id(&table.base, min);
            // A changed (or deleted) subject is the overlay's to offer.
            if table.overlay.is_empty() || !table.overlay.contains_key(id) {
                return Some(id);
            }
        }
    }

    /// True when no candidate follows.
    fn peek_done(&mut self) -> bool {
        self.base_head.is_none() && self.side.peek().is_none()
    }
}

impl<'s> Iterator for Candidates<'s> {
    type Item = &'s str;

    fn next(&mut self) -> Option<&'s str> {
        let side = self.side.peek().copied();
        match (self.base_head, side) {
            (None, None) => None,
            (Some(b), None) => {
                self.base_head = self.next_base();
                Some(b)
            }
            (None, Some(s)) => {
                self.side.next();
                Some(s)
            }
            (Some(b), Some(s)) => match b.cmp(s) {
                Ordering::Less => {
                    self.base_head = self.next_base();
                    Some(b)
                }
                Ordering::Greater => {
                    self.side.next();
                    Some(s)
                }
                Ordering::Equal => {
                    self.base_head = self.next_base();
                    self.side.next();
                    Some(b)
                }
            },
        }
    }
}
