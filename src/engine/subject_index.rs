//! The subject base: a million subjects stored densely. Ids live back to back in one string,
//! records in one vector, and a hash table of record indices finds them — no allocation per
//! subject, a quarter of the memory of a map of boxed keys.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};

use hashbrown::HashTable;

use super::subject::CompiledSubject;

/// Subjects by id, densely stored. Built once; replaced, not edited, after that.
#[derive(Debug, Clone, Default)]
pub(super) struct SubjectIndex {
    ids: String,
    spans: Vec<(u32, u32)>,
    records: Vec<CompiledSubject>,
    table: HashTable<u32>,
    hasher: RandomState,
    /// Who-can's reverse index, built on first use (see [`RoleHolders`]).
    holders: OnceLock<Arc<RoleHolders>>,
}

/// Who-can's reverse index over one base: the subjects in id order and, per role id, the
/// id-order ranks of the subjects holding it. Built once per base (a base is never edited),
/// on the first who-can call or by the background fold when the base it replaces had one,
/// so that neither cold start nor a Check pays for sorting a million ids.
#[derive(Debug, Default)]
pub(super) struct RoleHolders {
    /// Record indices, ordered by subject id.
    by_rank: Box<[u32]>,
    /// Per role id, ranks (positions in `by_rank`) ascending.
    holders: Box<[Box<[u32]>]>,
}

impl RoleHolders {
    /// The ranks of the subjects holding role `role` (in `roles`, not as an access role).
    pub fn of(&self, role: u32) -> &[u32] {
        self.holders.get(role as usize).map_or(&[], |h| &h[..])
    }

    /// The first rank whose id is greater than `after`.
    pub fn rank_after(&self, base: &SubjectIndex, after: &str) -> u32 {
        self.by_rank.partition_point(|&at| base.id(at) <= after) as u32
    }

    /// The subject id at `rank`.
    pub fn id<'b>(&self, base: &'b SubjectIndex, rank: u32) -> &'b str {
        base.id(self.by_rank[rank as usize])
    }
}

impl SubjectIndex {
    /// An empty index with room for `n` subjects.
    pub fn with_capacity(n: usize) -> SubjectIndex {
        SubjectIndex {
            ids: String::with_capacity(n * 12),
            spans: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
            table: HashTable::with_capacity(n),
            hasher: RandomState::new(),
            holders: OnceLock::new(),
        }
    }

    /// Who-can's reverse index, built now if it was not yet. O(n log n) the first time.
    pub fn holders(&self) -> &RoleHolders {
        self.holders.get_or_init(|| Arc::new(self.build_holders()))
    }

    /// True when the reverse index has been built.
    pub fn has_holders(&self) -> bool {
        self.holders.get().is_some()
    }

    fn build_holders(&self) -> RoleHolders {
        let mut by_rank: Vec<u32> = (0..self.records.len() as u32).collect();
        by_rank.sort_unstable_by(|&a, &b| self.id(a).cmp(self.id(b)));
        let mut holders: Vec<Vec<u32>> = Vec::new();
        for (rank, &at) in by_rank.iter().enumerate() {
            for &role in self.records[at as usize].roles.as_slice() {
                let role = role as usize;
                if holders.len() <= role {
                    holders.resize_with(role + 1, Vec::new);
                }
                holders[role].push(rank as u32);
            }
        }
        RoleHolders {
            by_rank: by_rank.into_boxed_slice(),
            holders: holders.into_iter().map(Vec::into_boxed_slice).collect(),
        }
    }

    /// The id of record `at`.
    pub(super) fn id(&self, at: u32) -> &str {
        id_at(&self.ids, &self.spans, at)
    }

    /// Appends a subject without indexing it, for bulk loads: [`Self::index_all`] then builds
    /// the hash table once, sized exactly, hashing every id once. Inserting one by one instead
    /// makes the table double some twenty times on the way to a million, re-hashing every id
    /// each time (a sixth of cold start went there). Lookups see only indexed subjects.
    pub fn push_unindexed(&mut self, id: &str, record: CompiledSubject) {
        self.holders = OnceLock::new();
        self.spans.push((self.ids.len() as u32, id.len() as u32));
        self.ids.push_str(id);
        self.records.push(record);
    }

    /// Indexes every subject appended by [`Self::push_unindexed`]. A repeated id keeps its
    /// last record, as [`Self::insert`] would.
    pub fn index_all(&mut self) {
        let mut table = HashTable::with_capacity(self.records.len());
        let mut repeated = false;
        for at in 0..self.records.len() as u32 {
            let id = self.id(at);
            let hash = self.hasher.hash_one(id);
            let (ids, spans, hasher) = (&self.ids, &self.spans, &self.hasher);
            let id_of = |other: u32| id_at(ids, spans, other);
            if table.find(hash, |&other| id_of(other) == id).is_some() {
                repeated = true;
                break;
            }
            table.insert_unique(hash, at, |&other| hasher.hash_one(id_of(other)));
        }
        if repeated {
            // Rare (a store's keys are unique): redo it the slow way, replacing as we go.
            let old = std::mem::take(self);
            *self = SubjectIndex::with_capacity(old.records.len());
            self.hasher = old.hasher.clone();
            for (at, record) in old.records.iter().enumerate() {
                self.insert(old.id(at as u32), record.clone());
            }
            return;
        }
        self.table = table;
    }

    /// Adds a subject, replacing one with the same id.
    pub fn insert(&mut self, id: &str, record: CompiledSubject) {
        self.holders = OnceLock::new();
        let hash = self.hasher.hash_one(id);
        let (ids, spans) = (&self.ids, &self.spans);
        let found = self.table.find(hash, |&at| id_at(ids, spans, at) == id);
        if let Some(&at) = found {
            self.records[at as usize] = record;
            return;
        }
        let at = self.records.len() as u32;
        self.spans.push((self.ids.len() as u32, id.len() as u32));
        self.ids.push_str(id);
        self.records.push(record);
        let (ids, spans, hasher) = (&self.ids, &self.spans, &self.hasher);
        self.table
            .insert_unique(hash, at, |&other| hasher.hash_one(id_at(ids, spans, other)));
    }

    /// The subject with this id. Allocates nothing.
    #[inline]
    pub fn get(&self, id: &str) -> Option<&CompiledSubject> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&at| self.id(at) == id)
            .map(|&at| &self.records[at as usize])
    }

    /// Number of subjects.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Every `(id, subject)`, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CompiledSubject)> {
        (0..self.records.len() as u32).map(move |at| (self.id(at), &self.records[at as usize]))
    }

    /// Releases spare capacity once building is done.
    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.spans.shrink_to_fit();
        self.records.shrink_to_fit();
        let (ids, spans, hasher) = (&self.ids, &self.spans, &self.hasher);
        self.table
            .shrink_to_fit(|&at| hasher.hash_one(id_at(ids, spans, at)));
    }
}

/// The id of record `at`, from the ids string and the spans (borrowed apart from the table, so
/// the table's closures can use it while the table is being changed).
#[inline]
fn id_at<'a>(ids: &'a str, spans: &[(u32, u32)], at: u32) -> &'a str {
    let (start, len) = spans[at as usize];
    &ids[start as usize..(start + len) as usize]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::subject::RoleList;

    fn subject(role: u32) -> CompiledSubject {
        CompiledSubject {
            roles: RoleList::from_ids(vec![role]),
            type_id: None,
            type_name: Arc::from("app"),
            extras: None,
        }
    }

    #[test]
    fn inserts_replaces_and_finds_without_boxed_keys() {
        let mut index = SubjectIndex::default();
        for i in 0..1000u32 {
            index.insert(&format!("s-{i}"), subject(i));
        }
        index.insert("s-7", subject(70));
        index.shrink_to_fit();
        assert_eq!(index.len(), 1000);
        assert_eq!(
            index.get("s-7").map(|s| s.roles.as_slice().to_vec()),
            Some(vec![70])
        );
        assert_eq!(
            index.get("s-999").map(|s| s.roles.as_slice().to_vec()),
            Some(vec![999])
        );
        assert!(index.get("s-1000").is_none());
        assert!(index.get("").is_none());
        let ids: Vec<&str> = index.iter().take(3).map(|(id, _)| id).collect();
        assert_eq!(ids, vec!["s-0", "s-1", "s-2"]);
    }

    #[test]
    fn bulk_loads_index_once_and_keep_the_last_of_a_repeated_id() {
        let mut unique = SubjectIndex::default();
        for i in 0..1000u32 {
            unique.push_unindexed(&format!("s-{i}"), subject(i));
        }
        assert!(unique.get("s-1").is_none(), "not indexed yet");
        unique.index_all();
        assert_eq!(unique.len(), 1000);
        for i in [0u32, 1, 500, 999] {
            assert_eq!(
                unique
                    .get(&format!("s-{i}"))
                    .map(|s| s.roles.as_slice().to_vec()),
                Some(vec![i])
            );
        }

        let mut repeated = SubjectIndex::default();
        repeated.push_unindexed("a", subject(1));
        repeated.push_unindexed("b", subject(2));
        repeated.push_unindexed("a", subject(3));
        repeated.index_all();
        assert_eq!(repeated.len(), 2);
        assert_eq!(
            repeated.get("a").map(|s| s.roles.as_slice().to_vec()),
            Some(vec![3])
        );
        let ids: Vec<&str> = repeated.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec!["a", "b"]);
    }
}
