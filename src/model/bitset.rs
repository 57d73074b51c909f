//! A fixed-size set of small integers (permission ids), one bit each. In the model because the
//! route table's leaves are such sets; the engine's compiled tables use it throughout.

/// A set of permission ids sized to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BitSet {
    words: Box<[u64]>,
}

impl BitSet {
    /// An empty set able to hold ids `0..len`.
    pub fn new(len: usize) -> BitSet {
        BitSet {
            words: vec![0; len.div_ceil(64)].into_boxed_slice(),
        }
    }

    /// A set holding every id in `0..len`.
    pub fn full(len: usize) -> BitSet {
        let mut set = BitSet::new(len);
        for i in 0..len {
            set.insert(i);
        }
        set
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: usize) {
        self.words[id / 64] |= 1 << (id % 64);
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: usize) {
        self.words[id / 64] &= !(1 << (id % 64));
    }

    /// True when `id` is in the set (false for ids beyond its size).
    #[inline]
    pub fn contains(&self, id: usize) -> bool {
        self.words
            .get(id / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Adds every id of `other`.
    pub fn union_with(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a |= b;
        }
    }

    /// True when no id is set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The ids in the set, ascending. Allocates nothing.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_iterate() {
        let mut s = BitSet::new(130);
        for i in [0, 63, 64, 129] {
            s.insert(i);
        }
        s.remove(63);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert!(s.contains(129) && !s.contains(63) && !s.contains(500));
        let mut t = BitSet::new(130);
        t.union_with(&s);
        assert_eq!(t, s);
        assert!(BitSet::new(3).is_empty());
        assert_eq!(BitSet::full(3).iter().count(), 3);
    }
}
