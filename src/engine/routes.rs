//! The route table: catalog endpoint templates compiled into one deterministic segment trie per
//! HTTP method, so that a lookup walks each path segment once and lands on the union of every
//! permission whose templates match the path.

use std::collections::{BTreeSet, HashMap};

use super::bitset::BitSet;
use crate::model::{CanonicalPath, Endpoint, Method};

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

impl RouteTable {
    /// Compiles `(endpoint, permission id)` pairs for a catalog of `perm_count` permissions.
    pub fn build(endpoints: &[(Endpoint, usize)], perm_count: usize) -> RouteTable {
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
        let mut table = RouteTable::default();
        let mut memo = HashMap::new();
        for method in Method::ALL {
            if let Some(root) = roots[method.index()] {
                let set = BTreeSet::from([root]);
                table.roots[method.index()] =
                    Some(table.determinize(&naive, set, perm_count, &mut memo));
            }
        }
        table
    }

    fn determinize(
        &mut self,
        naive: &Naive,
        set: BTreeSet<usize>,
        perm_count: usize,
        memo: &mut HashMap<BTreeSet<usize>, u32>,
    ) -> u32 {
        if let Some(id) = memo.get(&set) {
            return *id;
        }
        let id = self.nodes.len() as u32;
        self.nodes.push(Node::default());
        memo.insert(set.clone(), id);

        let params: BTreeSet<usize> = set.iter().filter_map(|n| naive.nodes[*n].param).collect();
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
            let child_id = self.determinize(naive, child, perm_count, memo);
            self.nodes[id as usize]
                .literals
                .insert(key.into(), child_id);
        }
        if !params.is_empty() {
            let child_id = self.determinize(naive, params, perm_count, memo);
            self.nodes[id as usize].param = Some(child_id);
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
            self.nodes[id as usize].leaf = Some(self.leaves.len() as u32);
            self.leaves.push(leaf);
        }
        id
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
        RouteTable::build(&eps, 8)
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
}
