//! Policy → Snapshot. Assumes a validated policy; names it cannot resolve are skipped, never a
//! panic.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::snapshot::{
    CompiledCatalog, CompiledRole, CompiledRule, PermInfo, RoleTable, Scopes, Snapshot,
    SubjectTable,
};
use super::subject::{CompiledSubject, RoleList, SubjectExtras};
use super::subject_index::SubjectIndex;
use crate::model::{Access, BitSet, Endpoint, PathPattern, Policy, Role, RouteTable, Subject};

/// Builds a snapshot with subjects added one at a time, so that a store can stream a million
/// of them without collecting them first.
pub struct SnapshotBuilder {
    catalog: Arc<CompiledCatalog>,
    roles: Arc<RoleTable>,
    subjects: SubjectIndex,
    type_names: HashMap<Box<str>, Arc<str>>,
}

impl SnapshotBuilder {
    /// Compiles the catalog and roles of `policy` (its subjects are not read).
    pub fn new(policy: &Policy) -> SnapshotBuilder {
        let catalog = Arc::new(compile_catalog(policy));
        let roles = Arc::new(compile_roles(policy, &catalog));
        SnapshotBuilder {
            catalog,
            roles,
            subjects: SubjectIndex::default(),
            type_names: HashMap::new(),
        }
    }

    /// Adds one subject (a repeated id replaces the earlier one); findable once finished.
    pub fn add(&mut self, subject: &Subject) {
        let type_name = match self.type_names.get(subject.subject_type.as_str()) {
            Some(name) => Arc::clone(name),
            None => {
                let name: Arc<str> = subject.subject_type.as_str().into();
                self.type_names
                    .insert(subject.subject_type.as_str().into(), Arc::clone(&name));
                name
            }
        };
        let compiled = compile_subject(subject, type_name, &self.catalog, &self.roles);
        self.subjects.push_unindexed(&subject.id, compiled);
    }

    /// The finished snapshot.
    pub fn finish(mut self, revision: u64) -> Snapshot {
        self.subjects.index_all();
        self.subjects.shrink_to_fit();
        Snapshot {
            revision,
            catalog: self.catalog,
            roles: self.roles,
            subjects: Arc::new(SubjectTable {
                len: self.subjects.len(),
                base: Arc::new(self.subjects),
                overlay: Arc::default(),
                lineage: super::snapshot::next_lineage(),
            }),
        }
    }
}

impl Snapshot {
    /// Compiles a whole policy.
    pub fn compile(policy: &Policy, revision: u64) -> Snapshot {
        let mut builder = SnapshotBuilder::new(policy);
        for subject in &policy.subjects {
            builder.add(subject);
        }
        builder.finish(revision)
    }

    /// A new snapshot after roles changed (same role names): the role table is rebuilt, the
    /// catalog and subject table are shared. Falls back to a full compile if names changed.
    pub fn with_roles(&self, policy: &Policy, revision: u64) -> Snapshot {
        let same_names = policy.roles.len() == self.roles.roles.len()
            && policy
                .roles
                .iter()
                .all(|r| self.roles.index.contains_key(r.name.as_str()));
        if !same_names {
            return Snapshot::compile(policy, revision);
        }
        Snapshot {
            revision,
            catalog: Arc::clone(&self.catalog),
            roles: Arc::new(compile_roles(policy, &self.catalog)),
            subjects: Arc::clone(&self.subjects),
        }
    }

    /// A new snapshot with one subject created, replaced (`Some`) or deleted (`None`).
    pub fn with_subject(&self, id: &str, subject: Option<&Subject>, revision: u64) -> Snapshot {
        let compiled = subject.map(|s| {
            compile_subject(
                s,
                s.subject_type.as_str().into(),
                &self.catalog,
                &self.roles,
            )
        });
        let table = self.subjects.with(id, compiled);
        Snapshot {
            revision,
            catalog: Arc::clone(&self.catalog),
            roles: Arc::clone(&self.roles),
            subjects: Arc::new(table),
        }
    }
}

fn compile_catalog(policy: &Policy) -> CompiledCatalog {
    let perms = &policy.catalog.permissions;
    let n = perms.len();
    let index: HashMap<Box<str>, u32> = perms
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str().into(), i as u32))
        .collect();
    let id = |name: &str| index.get(name).map(|i| *i as usize);

    // Validation bounds the distinct types by `MAX_SUBJECT_TYPES`, so every id fits. Should an
    // unvalidated policy name more, no type gets an id: every permission with `applies_to`
    // then applies to nobody (fail closed), and no type can alias another's id.
    let types = subject_type_ids(policy).unwrap_or_default();

    let edges = |pick: fn(&crate::model::Permission) -> &Vec<String>| -> Vec<Vec<usize>> {
        perms
            .iter()
            .map(|p| pick(p).iter().filter_map(|name| id(name)).collect())
            .collect()
    };
    let implies_edges = edges(|p| &p.implies);
    let requires_edges = edges(|p| &p.requires);

    let info = perms
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut implies = BitSet::new(n);
            for j in reach(i, &implies_edges) {
                implies.insert(j);
            }
            let needs: Box<[u32]> = reach(i, &requires_edges)
                .into_iter()
                .filter(|j| *j != i)
                .map(|j| j as u32)
                .collect();
            let applies = (!p.applies_to.is_empty()).then(|| {
                p.applies_to
                    .iter()
                    .filter_map(|t| types.get(t.as_str()).copied())
                    .collect()
            });
            PermInfo {
                scoped: p.scoped,
                applies,
                needs,
                implies,
            }
        })
        .collect();

    let mut events: HashMap<Box<str>, BitSet> = HashMap::new();
    for (i, p) in perms.iter().enumerate() {
        for event in &p.events {
            events
                .entry(event.as_str().into())
                .or_insert_with(|| BitSet::new(n))
                .insert(i);
        }
    }

    CompiledCatalog {
        names: perms.iter().map(|p| p.name.as_str().into()).collect(),
        index,
        info,
        // Validation ran this same build and refused a catalog over the bound; should an
        // unvalidated one get here, no endpoint matches (every HTTP decision is a denial).
        routes: RouteTable::for_policy(policy).unwrap_or_default(),
        endpoints: policy
            .catalog
            .permissions
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.endpoints
                    .iter()
                    .filter_map(move |text| Endpoint::parse(text).ok().map(|e| (e, i as u32)))
            })
            .collect(),
        events,
        types,
    }
}

/// Why a policy cannot be compiled as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// `applies_to` names more distinct subject types than a 16-bit id can number.
    #[error(
        "`applies_to` names {count} distinct subject types; the engine numbers them in 16 bits, \
         so at most {limit} fit"
    )]
    TooManySubjectTypes {
        /// Distinct types named.
        count: usize,
        /// Most that fit.
        limit: usize,
    },
}

/// The subject types named by some `applies_to`, numbered in the order first named. The
/// number is a checked 16-bit conversion: a policy naming more types than fit is an error,
/// never an id that wraps onto another type's.
pub fn subject_type_ids(policy: &Policy) -> Result<HashMap<Box<str>, u16>, CompileError> {
    let mut types: HashMap<Box<str>, u16> = HashMap::new();
    let named = || {
        let all = policy
            .catalog
            .permissions
            .iter()
            .flat_map(|p| &p.applies_to);
        all.map(String::as_str).collect::<BTreeSet<_>>().len()
    };
    for t in policy
        .catalog
        .permissions
        .iter()
        .flat_map(|p| &p.applies_to)
    {
        if types.contains_key(t.as_str()) {
            continue;
        }
        let id = u16::try_from(types.len()).map_err(|_| CompileError::TooManySubjectTypes {
            count: named(),
            limit: usize::from(u16::MAX) + 1,
        })?;
        types.insert(t.as_str().into(), id);
    }
    Ok(types)
}

/// Every node reachable from `start` (itself included), ascending.
fn reach(start: usize, edges: &[Vec<usize>]) -> BTreeSet<usize> {
    let mut seen = BTreeSet::from([start]);
    let mut stack = vec![start];
    while let Some(at) = stack.pop() {
        for next in &edges[at] {
            if seen.insert(*next) {
                stack.push(*next);
            }
        }
    }
    seen
}

fn compile_roles(policy: &Policy, catalog: &CompiledCatalog) -> RoleTable {
    let mut sorted: Vec<&Role> = policy.roles.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let roles: Box<[CompiledRole]> = sorted
        .iter()
        .map(|role| compile_role(policy, role, catalog))
        .collect();
    let index = sorted
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str().into(), i as u32))
        .collect();
    RoleTable { roles, index }
}

fn compile_role(policy: &Policy, role: &Role, catalog: &CompiledCatalog) -> CompiledRole {
    let n = catalog.names.len();
    let mut granted = BitSet::new(n);
    let mut scope_lists: HashMap<u32, BTreeSet<&str>> = HashMap::new();
    let mut scopes = HashMap::new();
    if role.all {
        granted = BitSet::full(n);
        for name in &role.except {
            if let Some(i) = catalog.index.get(name.as_str()) {
                granted.remove(*i as usize);
            }
        }
        for i in granted.iter() {
            if catalog.info[i].scoped {
                scopes.insert(i as u32, Scopes::Any);
            }
        }
    } else {
        for grant in role.grants.iter().filter(|g| g.enabled) {
            let Some(&pid) = catalog.index.get(grant.permission.as_str()) else {
                continue;
            };
            let closure = &catalog.info[pid as usize].implies;
            granted.union_with(closure);
            for q in closure.iter() {
                if catalog.info[q].scoped {
                    scope_lists
                        .entry(q as u32)
                        .or_default()
                        .extend(grant.projects.iter().map(String::as_str));
                }
            }
        }
        for (pid, ids) in scope_lists {
            scopes.insert(pid, Scopes::List(ids.into_iter().map(Into::into).collect()));
        }
    }

    let base_defaults = role
        .base
        .as_deref()
        .and_then(|b| policy.role(b))
        .map(|b| b.paths.iter().filter(|r| r.default).collect::<Vec<_>>())
        .unwrap_or_default();
    let own = role
        .paths
        .iter()
        .filter(|r| role.base.is_none() || !r.default);
    let paths = base_defaults
        .into_iter()
        .chain(own)
        .filter_map(|rule| {
            Some(CompiledRule {
                pattern: PathPattern::parse(&rule.path).ok()?,
                access: Access::parse(&rule.access).ok()?,
                text: rule.path.as_str().into(),
            })
        })
        .collect();

    CompiledRole {
        name: role.name.as_str().into(),
        granted,
        scopes,
        paths,
        all_resources: role.all_resources,
    }
}

fn compile_subject(
    subject: &Subject,
    type_name: Arc<str>,
    catalog: &CompiledCatalog,
    roles: &RoleTable,
) -> CompiledSubject {
    let only = (!subject.only.is_empty()).then(|| {
        let mut set = BitSet::new(catalog.names.len());
        // An override names permissions as grants do: a parent brings its implied children.
        for name in &subject.only {
            if let Some(i) = catalog.index.get(name.as_str()) {
                set.union_with(&catalog.info[*i as usize].implies);
            }
        }
        set
    });
    let mut resources: Vec<(Box<str>, u32)> = subject
        .resources
        .iter()
        .filter_map(|rr| {
            Some((
                rr.resource.as_str().into(),
                *roles.index.get(rr.role.as_str())?,
            ))
        })
        .collect();
    resources.sort_by(|a, b| a.0.cmp(&b.0));
    let extras = (only.is_some() || !resources.is_empty()).then(|| {
        Box::new(SubjectExtras {
            only,
            resources: resources.into_boxed_slice(),
        })
    });
    CompiledSubject {
        roles: RoleList::from_ids(
            subject
                .roles
                .iter()
                .filter_map(|r| roles.index.get(r.as_str()).copied())
                .collect(),
        ),
        type_id: catalog.types.get(subject.subject_type.as_str()).copied(),
        type_name,
        extras,
    }
}
