//! The route table: catalog endpoint templates compiled into one deterministic segment trie per
//! HTTP method, so that a lookup walks each path segment once and lands on the union of every
//! permission whose templates match the path.
//!
//! It lives in the model because it is built from model types alone and because validation
//! must build it: `validate` refuses a catalog whose table would pass the state bound, and the
//! engine's snapshot holds the table built by the same [`RouteTable::for_policy`].

use std::collections::{BTreeSet, HashMap};

use super::bitset::BitSet;
use super::{CanonicalPath, Endpoint, Method, Policy};

/// Compiled endpoint templates.
#[derive(Debug, Default)]
pub struct RouteTable {
    roots: [Option<u32>; Method::ALL.len()],
    nodes: Vec<Node>,
    leaves: Vec<BitSet>,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, u32>,
    param: Option<u32>,
    leaf: Option<u32>,
}

/// The most states the compiled route automaton may have. Templates that put literals at
/// different positions among `{param}` segments make the subset construction grow
/// exponentially; past this bound the catalog is refused (by `validate` as by every start,
/// reload, import and write, which all validate through [`RouteTable::for_policy`]).
pub const MAX_ROUTE_STATES: usize = 20_000;

/// Why endpoint templates could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The deterministic automaton would need more than [`MAX_ROUTE_STATES`] states.
    #[error(
        "the endpoint templates need more than {limit} route automaton states (templates that \
         overlap literal and `{{param}}` segments at many positions); split or simplify them"
    )]
    TooManyStates {
        /// The bound.
        limit: usize,
    },
}

impl RouteTable {
    /// The route table of a policy's endpoint templates, bounded by [`MAX_ROUTE_STATES`].
    /// [`super::validate()`] builds it to refuse a catalog over the bound, and the engine's
    /// snapshot holds the table it returns, so what validates is what compiles.
    pub fn for_policy(policy: &Policy) -> Result<RouteTable, RouteError> {
        let mut endpoints = Vec::new();
        for (i, p) in policy.catalog.permissions.iter().enumerate() {
            for text in &p.endpoints {
                // A template that does not parse is refused by validation on its own field.
                if let Ok(e) = Endpoint::parse(text) {
                    endpoints.push((e, i));
                }
            }
        }
        RouteTable::build(&endpoints, policy.catalog.permissions.len())
    }

    /// Compiles `(endpoint, permission id)` pairs for a catalog of `perm_count` permissions,
    /// with at most [`MAX_ROUTE_STATES`] states.
    pub fn build(
        endpoints: &[(Endpoint, usize)],
        perm_count: usize,
    ) -> Result<RouteTable, RouteError> {
        Self::build_bounded(endpoints, perm_count, MAX_ROUTE_STATES)
    }

    /// [`RouteTable::build`] with another bound on the number of states.
    pub fn build_bounded(
        endpoints: &[(Endpoint, usize)],
        perm_count: usize,
        max_states: usize,
    ) -> Result<RouteTable, RouteError> {
        let mut naive = Naive::default();
        let mut roots: [Option<usize>; Method::ALL.len()] = Default::default();
        for (endpoint, perm) in endpoints {
            // A template decides its own method and every method routed as it (HEAD as GET).
            for method in Method::ALL
                .into_iter()
                .filter(|m| *m == endpoint.method || m.routed_as() == Some(endpoint.method))
            {
                let root = *roots[method.index()].get_or_insert_with(|| naive.node());
                naive.insert(root, &endpoint.segments, *perm);
            }
        }
        let mut builder = Determinizer {
            table: RouteTable::default(),
            memo: HashMap::new(),
            todo: Vec::new(),
            max_states,
        };
        for method in Method::ALL {
            if let Some(root) = roots[method.index()] {
                let id = builder.state(BTreeSet::from([root]))?;
                builder.table.roots[method.index()] = Some(id);
                builder.run(&naive, perm_count)?;
            }
        }
        Ok(builder.table)
    }

    /// The permissions that unlock `method path`, if any template matches. Allocates nothing.
    #[inline]
    pub fn lookup(&self, method: Method, path: &CanonicalPath<'_>) -> Option<&BitSet> {
        let mut node = &self.nodes[self.roots[method.index()]? as usize];
        for seg in path.segments() {
            let next = node.literals.get(seg).copied().or(node.param)?;
            node = &self.nodes[next as usize];
        }
        node.leaf.map(|l| &self.leaves[l as usize])
    }
}

/// Subset construction with an explicit work list (no recursion: a deep template cannot
/// overflow the stack) and a bound on the number of states.
struct Determinizer {
    table: RouteTable,
    memo: HashMap<BTreeSet<usize>, u32>,
    todo: Vec<(u32, BTreeSet<usize>)>,
    max_states: usize,
}

impl Determinizer {
    /// The state for a set of naive nodes, queued for expansion when new.
    fn state(&mut self, set: BTreeSet<usize>) -> Result<u32, RouteError> {
        if let Some(id) = self.memo.get(&set) {
            return Ok(*id);
        }
        if self.table.nodes.len() >= self.max_states {
            return Err(RouteError::TooManyStates {
                limit: self.max_states,
            });
        }
        let id = self.table.nodes.len() as u32;
        self.table.nodes.push(Node::default());
        self.memo.insert(set.clone(), id);
        self.todo.push((id, set));
        Ok(id)
    }

    fn run(&mut self, naive: &Naive, perm_count: usize) -> Result<(), RouteError> {
        while let Some((id, set)) = self.todo.pop() {
            let params: BTreeSet<usize> =
                set.iter().filter_map(|n| naive.nodes[*n].param).collect();
            let mut keys: Vec<&str> = set
                .iter()
                .flat_map(|n| naive.nodes[*n].literals.keys().map(String::as_str))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let mut child: BTreeSet<usize> = set
                    .iter()
                    .filter_map(|n| naive.nodes[*n].literals.get(key).copied())
                    .collect();
                child.extend(params.iter().copied());
                let child_id = self.state(child)?;
                self.table.nodes[id as usize]
                    .literals
                    .insert(key.into(), child_id);
            }
            if !params.is_empty() {
                let child_id = self.state(params)?;
                self.table.nodes[id as usize].param = Some(child_id);
            }
            let mut leaf = BitSet::new(perm_count);
            let mut any = false;
            for n in &set {
                for perm in &naive.nodes[*n].perms {
                    leaf.insert(*perm);
                    any = true;
                }
            }
            if any {
                self.table.nodes[id as usize].leaf = Some(self.table.leaves.len() as u32);
                self.table.leaves.push(leaf);
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Naive {
    nodes: Vec<NaiveNode>,
}

#[derive(Default)]
struct NaiveNode {
    literals: HashMap<String, usize>,
    param: Option<usize>,
    perms: Vec<usize>,
}

impl Naive {
    fn node(&mut self) -> usize {
        self.nodes.push(NaiveNode::default());
        self.nodes.len() - 1
    }

    fn insert(&mut self, root: usize, segments: &[Option<String>], perm: usize) {
        let mut at = root;
        for seg in segments {
            at = match seg {
                Some(lit) => match self.nodes[at].literals.get(lit) {
                    Some(next) => *next,
                    None => {
                        let next = self.node();
                        self.nodes[at].literals.insert(lit.clone(), next);
                        next
                    }
                },
                None => match self.nodes[at].param {
                    Some(next) => next,
                    None => {
                        let next = self.node();
                        self.nodes[at].param = Some(next);
                        next
                    }
                },
            };
        }
        self.nodes[at].perms.push(perm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(templates: &[(&str, usize)]) -> RouteTable {
        let eps: Vec<(Endpoint, usize)> = templates
            .iter()
            .map(|(t, p)| (Endpoint::parse(t).expect("valid"), *p))
            .collect();
        RouteTable::build(&eps, 8).expect("small table")
    }

    fn hit(t: &RouteTable, method: Method, path: &str) -> Vec<usize> {
        let path = CanonicalPath::parse(path, Default::default()).expect("canonical");
        t.lookup(method, &path)
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    #[test]
    fn literal_and_param_branches_merge() {
        let t = table(&[
            ("GET /v1/devices/{id}/snapshots", 0),
            ("GET /v1/devices/special/snapshots", 1),
            ("GET /v1/devices/{id}", 2),
            ("POST /v1/alarms/{id}/dispatch", 3),
        ]);
        assert_eq!(
            hit(&t, Method::Get, "/v1/devices/special/snapshots"),
            vec![0, 1]
        );
        assert_eq!(hit(&t, Method::Get, "/v1/devices/d1/snapshots"), vec![0]);
        assert_eq!(hit(&t, Method::Get, "/v1/devices/special"), vec![2]);
        assert_eq!(hit(&t, Method::Get, "/v1/devices/d1/?x=1"), vec![2]);
        assert_eq!(hit(&t, Method::Get, "/v1/devices"), Vec::<usize>::new());
        assert_eq!(hit(&t, Method::Post, "/v1/alarms/a/dispatch?x#f"), vec![3]);
        assert_eq!(
            hit(&t, Method::Delete, "/v1/alarms/a/dispatch"),
            Vec::<usize>::new()
        );
        assert_eq!(
            hit(&t, Method::Get, "/v1/devices/d1/snapshots/extra"),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn head_is_routed_as_get() {
        let t = table(&[
            ("GET /v1/devices/{id}", 0),
            ("HEAD /v1/ping", 1),
            ("POST /v1/x", 2),
        ]);
        assert_eq!(hit(&t, Method::Head, "/v1/devices/d1"), vec![0]);
        assert_eq!(hit(&t, Method::Head, "/v1/ping"), vec![1]);
        assert_eq!(hit(&t, Method::Get, "/v1/ping"), Vec::<usize>::new());
        assert_eq!(hit(&t, Method::Head, "/v1/x"), Vec::<usize>::new());
    }

    /// n templates, each with its literal at another position among n params.
    fn staggered(n: usize) -> Vec<(Endpoint, usize)> {
        (0..n)
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
                (
                    Endpoint::parse(&format!("GET /{}", segs.join("/"))).expect("valid"),
                    i,
                )
            })
            .collect()
    }

    #[test]
    fn staggered_literals_are_refused_at_the_state_bound_quickly() {
        // 2^n states unbounded: 21 templates took 15 s and 1.8 GB before the bound.
        for n in [18, 21, 40] {
            let started = std::time::Instant::now();
            let got = RouteTable::build(&staggered(n), n);
            assert_eq!(
                got.err(),
                Some(RouteError::TooManyStates {
                    limit: MAX_ROUTE_STATES
                }),
                "{n} templates"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{n}: {:?}",
                started.elapsed()
            );
        }
        // Small overlaps still compile, and decide as before.
        let t = RouteTable::build(&staggered(6), 6).expect("64-ish states");
        assert_eq!(hit(&t, Method::Get, "/l0/x/x/x/x/l5"), vec![0, 5]);
    }

    #[test]
    fn a_deep_template_compiles_without_recursion() {
        let path = format!("GET /{}", vec!["a"; 64].join("/"));
        let t = RouteTable::build(&[(Endpoint::parse(&path).expect("64 segments"), 0)], 1)
            .expect("compiles");
        assert_eq!(
            hit(&t, Method::Get, &format!("/{}", vec!["a"; 64].join("/"))),
            vec![0]
        );
    }
}
