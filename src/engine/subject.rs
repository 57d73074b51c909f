//! One compiled subject: what the subject base (`subject_index.rs`) stores and the snapshot's
//! tables hand to `decide`. Its own module so that the base and the snapshot both build on it
//! without importing each other.

use std::sync::Arc;

use crate::model::BitSet;

/// One subject, kept small: a million of them live in memory.
#[derive(Debug, Clone)]
pub(super) struct CompiledSubject {
    pub roles: RoleList,
    pub type_id: Option<u16>,
    /// Shared among subjects of one type.
    pub type_name: Arc<str>,
    /// Overrides and per-resource roles, which few subjects have.
    pub extras: Option<Box<SubjectExtras>>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct SubjectExtras {
    pub only: Option<BitSet>,
    /// `(resource, access role id)`, sorted by resource.
    pub resources: Box<[(Box<str>, u32)]>,
}

/// Role ids: up to three inline (no allocation), more on the heap.
#[derive(Debug, Clone)]
pub(super) enum RoleList {
    Inline { len: u8, ids: [u32; 3] },
    Heap(Box<[u32]>),
}

impl RoleList {
    pub fn from_ids(ids: Vec<u32>) -> RoleList {
        if ids.len() <= 3 {
            let mut inline = [0u32; 3];
            inline[..ids.len()].copy_from_slice(&ids);
            RoleList::Inline {
                len: ids.len() as u8,
                ids: inline,
            }
        } else {
            RoleList::Heap(ids.into_boxed_slice())
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u32] {
        match self {
            RoleList::Inline { len, ids } => &ids[..*len as usize],
            RoleList::Heap(ids) => ids,
        }
    }
}
