//! The sled store: one tree per entity kind, a `meta` tree for the revision and format version,
//! an `audit` tree keyed by revision. Every write is one multi-tree transaction, flushed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::data_dir::{self, Found, LOCK_WAIT, RevisionRecord};
use super::{
    AuditRecord, Change, Committed, FORMAT_VERSION, ImportMode, Loaded, Managed, MirrorBatch,
    MirrorOrigin, MirrorStore, Mirrored, MutableStore, Revocation, Store, StoreError, Target,
    Write,
};
use crate::model::{Admin, Catalog, Policy, Preset, Role, Subject};

const REVISION: &[u8] = b"revision";
const FORMAT: &[u8] = b"format_version";
const CATALOG: &[u8] = b"catalog";
const PRESETS: &[u8] = b"presets";
const POLICY_VERSION: &[u8] = b"policy_version";
const SOURCE_DIGEST: &[u8] = b"source_digest";
const MIRROR_ORIGIN: &[u8] = b"mirror_origin";
/// Revision of the last import or reload: every subject it wrote changed then.
const SUBJECTS_BASE: &[u8] = b"subjects_base_revision";
/// Name of the tree that holds the subjects (absent: [`SUBJECTS_FIRST`]). A whole-policy write
/// fills a new tree in chunks and names it here in its final transaction.
const SUBJECTS_TREE: &[u8] = b"subjects_tree";
const SUBJECTS_FIRST: &str = "subjects";
/// Subjects per transaction when a whole policy is written. sled keeps every page version a
/// transaction replaces until the transaction ends: one transaction over the 27k subjects of a
/// 1 MiB file peaked at ~130 MB, chunks of 1000 at ~21 MB, of 250 at ~17 MB, of 100 at ~17 MB,
/// all equally fast (a standalone sled 0.34 program).
const SUBJECT_CHUNK: usize = 250;
const MARK_PUT: &[u8] = b"put";
const MARK_DELETED: &[u8] = b"deleted";

/// A [`Store`] in a sled database directory.
pub struct SledStore {
    /// The data dir.
    dir: PathBuf,
    /// Write the clean-close note when dropped (not for a trial copy).
    note_close: bool,
    /// A policy has been stored (the `authz-store` marker says so).
    marked: AtomicBool,
    /// The last acknowledged revision, beside the log.
    record: RevisionRecord,
    db: sled::Db,
    meta: sled::Tree,
    catalog: sled::Tree,
    roles: sled::Tree,
    /// The tree [`SUBJECTS_TREE`] names; swapped when a whole policy is written.
    subjects: ArcSwap<sled::Tree>,
    admins: sled::Tree,
    audit: sled::Tree,
    /// `role/NAME` / `subject/ID` → `put` | `deleted`: what the admin API last changed.
    managed: sled::Tree,
    /// Subject id → revision (big-endian) of the last single write of that subject; a later
    /// import or reload (`meta/subjects_base_revision`) supersedes it.
    subject_revisions: sled::Tree,
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e)
}

use crate::model::to_json_bytes as encode;

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Undecodable {
        what: what.to_owned(),
        source,
    })
}

fn revision_of(bytes: Option<sled::IVec>) -> Result<u64, StoreError> {
    match bytes {
        None => Ok(0),
        Some(b) => {
            let arr: [u8; 8] = b.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: "meta/revision".into(),
                detail: format!("{} bytes, expected 8", b.len()),
            })?;
            Ok(u64::from_be_bytes(arr))
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Length of a sled 0.34 segment header: crc32 ^ !0 (LE u32), lsn, max stable lsn.
const SEGMENT_HEADER_LEN: usize = 20;

/// Refuses a data dir whose sled log has no segment with a valid header (it would be opened as
/// an empty database). A log with some good segments is left to sled's own crash recovery.
fn check_log_readable(dir: &Path) -> Result<(), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        what: format!("data dir {}", dir.display()),
        detail: format!(
            "{detail}; not starting and not touching it: restore the directory from a backup, or move it away to start empty"
        ),
    };
    // `conf` is text lines followed by a crc32.
    let conf = std::fs::read(dir.join("conf"))
        .map_err(|e| corrupt(format!("sled's `conf` cannot be read ({e})")))?;
    let segment_size: u64 = String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n >= SEGMENT_HEADER_LEN as u64)
        .ok_or_else(|| corrupt("sled's `conf` names no segment size".into()))?;
    let mut log = std::fs::File::open(dir.join("db"))
        .map_err(|e| corrupt(format!("sled's log `db` cannot be read ({e})")))?;
    let len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    let mut offset = 0;
    while offset + SEGMENT_HEADER_LEN as u64 <= len {
        use std::io::{Read, Seek, SeekFrom};
        if log.seek(SeekFrom::Start(offset)).is_ok() && log.read_exact(&mut header).is_ok() {
            let stored =
                u32::from_le_bytes([header[0], header[1], header[2], header[3]]) ^ 0xFFFF_FFFF;
            if crc32fast::hash(&header[4..]) == stored {
                return Ok(());
            }
        }
        offset += segment_size;
    }
    Err(corrupt("sled's log `db` holds no readable segment".into()))
}

/// sled page cache size.
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut retried_free = false;
    loop {
        // sled's page cache defaults to 1 GiB; the sidecar reads sled only at start-up and on
        // writes (decisions come from the snapshot), so a small cache is plenty. No background
        // flusher: every write is flushed before it is acknowledged anyway, so a timer's
        // flushes would only compete with those writes.
        match sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(None)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled reports its lock as an `io::ErrorKind::Other` carrying only a message, so
            // the lock is asked about directly, with the call sled makes (`WouldBlock` while
            // another handle holds it). A lock released in between gets one more try.
            Err(sled::Error::Io(e)) => {
                let held = data_dir::lock_held(dir);
                if !held && retried_free {
                    return Err(StoreError::Open {
                        dir: dir.display().to_string(),
                        source: sled::Error::Io(e),
                    });
                }
                retried_free |= !held;
                if held && Instant::now() >= deadline {
                    return Err(StoreError::Locked {
                        dir: dir.display().to_string(),
                    });
                }
                if held {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Err(source) => {
                return Err(StoreError::Open {
                    dir: dir.display().to_string(),
                    source,
                });
            }
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl SledStore {
    /// Opens (creating if needed) the store in `dir`. Refuses a dir that is someone else's, that
    /// is locked, damaged or of another format version, and leaves a refused dir as it was: a
    /// dir that was not closed cleanly is first opened and read in full from a copy
    /// (see [`data_dir`]).
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let seeded = match data_dir::inspect(dir)? {
            Found::Empty => {
                data_dir::write_marker(dir, false)?;
                false
            }
            Found::Ours {
                seeded,
                clean: true,
            } => seeded,
            Found::Ours {
                seeded,
                clean: false,
            } => {
                if seeded {
                    // Cheap, and names the problem better than a failed trial would.
                    check_log_readable(dir)?;
                }
                data_dir::wait_unlocked(dir)?;
                data_dir::trial_open(dir, |copy| {
                    let trial = SledStore::open_at(copy, seeded, false)?;
                    trial.read_everything()
                })?;
                seeded
            }
        };
        let store = SledStore::open_at(dir, seeded, true)?;
        data_dir::forget_clean_close(dir)?;
        Ok(store)
    }

    /// Opens sled in `dir` and checks what it reads: the format version, and a stored policy
    /// where the marker says one was stored. `note_close`: write the clean-close note on drop.
    fn open_at(dir: &Path, seeded: bool, note_close: bool) -> Result<SledStore, StoreError> {
        let db = open_db(dir)?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let meta = tree("meta")?;
        let subjects_name = match meta.get(SUBJECTS_TREE).map_err(backend)? {
            Some(name) => String::from_utf8_lossy(&name).into_owned(),
            None => SUBJECTS_FIRST.to_owned(),
        };
        let store = SledStore {
            dir: dir.to_path_buf(),
            note_close,
            marked: AtomicBool::new(seeded),
            record: RevisionRecord::open(dir)?,
            meta,
            catalog: tree("catalog")?,
            roles: tree("roles")?,
            subjects: ArcSwap::from_pointee(tree(&subjects_name)?),
            admins: tree("admins")?,
            audit: tree("audit")?,
            managed: tree("managed")?,
            subject_revisions: tree("subject_revisions")?,
            db,
        };
        match store.meta.get(FORMAT).map_err(backend)? {
            None => {}
            Some(v) if v.as_ref() == FORMAT_VERSION.to_string().as_bytes() => {}
            Some(v) => {
                return Err(StoreError::UnsupportedFormat {
                    found: String::from_utf8_lossy(&v).into_owned(),
                });
            }
        }
        // sled recovers an unreadable log as an empty database. The marker, written once a
        // policy was first stored, tells that apart from a new data dir: never re-seed it.
        if seeded && store.catalog.get(CATALOG).map_err(backend)?.is_none() {
            return Err(StoreError::Corrupt {
                what: format!("data dir {}", dir.display()),
                detail: "it held a policy (see its `authz-store` marker) but sled now reads it as empty: its files are corrupt or were replaced; not starting and not re-seeding it: restore the directory from a backup, or move it away to start empty".into(),
            });
        }
        // A whole-policy write cut off before (or after) its final transaction leaves a subjects
        // tree nobody names: drop it.
        for name in store.db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if (name == SUBJECTS_FIRST || name.starts_with("subjects@")) && name != subjects_name {
                store.db.drop_tree(name.as_bytes()).map_err(backend)?;
            }
        }
        let stored = revision_of(store.meta.get(REVISION).map_err(backend)?)?;
        if let Some(acknowledged) = store.record.read() {
            if stored < acknowledged {
                return Err(StoreError::Corrupt {
                    what: format!("data dir {}", dir.display()),
                    detail: format!(
                        "revision {acknowledged} was acknowledged but sled now reads revision {stored}: acknowledged changes are lost (its log was cut or overwritten); not starting and not touching it: restore the directory from a backup, or move it away to start empty"
                    ),
                });
            }
        }
        Ok(store)
    }

    /// Reads and decodes every record a start reads: a damaged page or record fails here.
    fn read_everything(&self) -> Result<(), StoreError> {
        self.load_head()?;
        self.visit_subjects(&mut |_| Ok(()))?;
        self.managed()?;
        self.source_digest()?;
        self.mirror_origin()?;
        for item in self.audit.iter().chain(self.subject_revisions.iter()) {
            item.map_err(backend)?;
        }
        Ok(())
    }

    /// Opens the store in `dir` and closes it again. sled replays everything logged since its
    /// previous open when it opens; right after a large import (`authz-sidecar import`), doing
    /// that here takes the import's replay (~0.7 s at a million subjects) out of the sidecar's
    /// next start. It changes nothing stored.
    pub fn settle(dir: &Path) -> Result<(), StoreError> {
        drop(SledStore::open(dir)?);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)?;
        self.record
            .write(revision_of(self.meta.get(REVISION).map_err(backend)?)?)?;
        if !self.marked.load(Ordering::Acquire)
            && self.catalog.get(CATALOG).map_err(backend)?.is_some()
        {
            data_dir::write_marker(&self.dir, true)?;
            self.marked.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn all<T: DeserializeOwned>(tree: &sled::Tree, kind: &str) -> Result<Vec<T>, StoreError> {
        tree.iter()
            .map(|item| {
                let (k, v) = item.map_err(backend)?;
                decode(&format!("{kind}/{}", String::from_utf8_lossy(&k)), &v)
            })
            .collect()
    }
}

impl Drop for SledStore {
    /// A clean close: flush, then note every file's length and CRC-32 so that the next start
    /// opens the dir directly instead of checking a copy first. Nothing is written when the
    /// flush fails or the store holds another format (the next start refuses it untouched).
    fn drop(&mut self) {
        if !self.note_close || self.db.flush().is_err() {
            return;
        }
        let ours = match self.meta.get(FORMAT) {
            Ok(None) => true,
            Ok(Some(v)) => v.as_ref() == FORMAT_VERSION.to_string().as_bytes(),
            Err(_) => false,
        };
        if ours {
            data_dir::note_clean_close(&self.dir);
        }
    }
}

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    })
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn bump(meta: &TransactionalTree) -> TxResult<u64> {
    let current = match revision_of(meta.get(REVISION)?) {
        Ok(r) => r,
        Err(e) => return abort(e),
    };
    let next = current + 1;
    meta.insert(REVISION, &next.to_be_bytes())?;
    meta.insert(FORMAT, FORMAT_VERSION.to_string().as_bytes())?;
    Ok(next)
}

impl SledStore {
    /// Replaces every entity with `policy` in one transaction, flushed. The new revision is
    /// `at` when given (a mirror of a shared source), else the stored one plus one.
    fn replace_all(
        &self,
        policy: &Policy,
        actor: &str,
        action: &str,
        clear_marks: bool,
        // The file's digest, and what the file revoked from API-made entities.
        source: Option<(&str, &[Revocation])>,
        at: Option<(u64, &MirrorOrigin)>,
    ) -> Result<u64, StoreError> {
        let (source, revoked) = match source {
            Some((digest, revoked)) => (Some(digest), revoked),
            None => (None, &[][..]),
        };
        if let Some((revision, _)) = at {
            // A mirror reload may go down in revision (another etcd cluster): record the lower
            // one first, so that the record is never ahead of the log if the write is cut off.
            if self
                .record
                .read()
                .is_some_and(|acknowledged| revision < acknowledged)
            {
                self.record.write(revision)?;
            }
        }
        // Keys to remove are read first; the writer lock above the store keeps this consistent.
        let keys = |tree: &sled::Tree| -> Result<Vec<sled::IVec>, StoreError> {
            tree.iter().keys().map(|k| k.map_err(backend)).collect()
        };
        let (old_roles, old_admins) = (keys(&self.roles)?, keys(&self.admins)?);
        // The subjects go into a new tree, in chunks, before the final transaction names it.
        let old_subjects = self.subjects.load_full();
        let old_name = String::from_utf8_lossy(&old_subjects.name()).into_owned();
        let generation = old_name
            .strip_prefix("subjects@")
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or(0);
        let new_name = format!("subjects@{}", generation + 1);
        // Left over from a write cut off at this point before.
        self.db.drop_tree(new_name.as_bytes()).map_err(backend)?;
        let new_subjects = self.db.open_tree(new_name.as_bytes()).map_err(backend)?;
        let filled = policy.subjects.chunks(SUBJECT_CHUNK).try_for_each(|chunk| {
            unwrap_tx(new_subjects.transaction(|t| {
                for s in chunk {
                    t.insert(s.id.as_bytes(), encode(s))?;
                }
                Ok(())
            }))
        });
        if let Err(e) = filled {
            let _ = self.db.drop_tree(new_name.as_bytes());
            return Err(e);
        }
        let old_marks = if clear_marks {
            keys(&self.managed)?
        } else {
            Vec::new()
        };
        let mut summary = serde_json::json!({
            "permissions": policy.catalog.permissions.len(),
            "roles": policy.roles.len(),
            "subjects": policy.subjects.len(),
            "admins": policy.admins.len(),
        });
        if !revoked.is_empty() {
            summary["revoked"] = serde_json::to_value(revoked).unwrap_or_default();
        }
        let origin = at.map(|(_, origin)| encode(origin));
        let result = (
            &self.meta,
            &self.catalog,
            &self.roles,
            &self.admins,
            &self.audit,
            &self.managed,
        )
            .transaction(|(meta, catalog, roles, admins, audit, managed)| {
                for k in &old_marks {
                    managed.remove(k)?;
                }
                if let Some(source) = source {
                    catalog.insert(SOURCE_DIGEST, source.as_bytes())?;
                }
                for k in &old_roles {
                    roles.remove(k)?;
                }
                for k in &old_admins {
                    admins.remove(k)?;
                }
                catalog.insert(CATALOG, encode(&policy.catalog))?;
                catalog.insert(PRESETS, encode(&policy.presets))?;
                catalog.insert(POLICY_VERSION, encode(&policy.version))?;
                for r in &policy.roles {
                    roles.insert(r.name.as_bytes(), encode(r))?;
                }
                meta.insert(SUBJECTS_TREE, new_name.as_bytes())?;
                for a in &policy.admins {
                    admins.insert(a.name.as_bytes(), encode(a))?;
                }
                let revision = match at {
                    None => bump(meta)?,
                    Some((revision, _)) => {
                        set_revision(meta, revision)?;
                        revision
                    }
                };
                meta.insert(SUBJECTS_BASE, &revision.to_be_bytes())?;
                if let Some(origin) = &origin {
                    meta.insert(MIRROR_ORIGIN, origin.as_slice())?;
                }
                let record = AuditRecord {
                    revision,
                    actor: actor.to_owned(),
                    at_unix_ms: now_ms(),
                    action: action.into(),
                    target: "policy".into(),
                    before: None,
                    after: Some(summary.clone()),
                };
                audit.insert(&revision.to_be_bytes(), encode(&record))?;
                Ok(revision)
            });
        let revision = match unwrap_tx(result) {
            Ok(revision) => revision,
            Err(e) => {
                let _ = self.db.drop_tree(new_name.as_bytes());
                return Err(e);
            }
        };
        self.subjects.store(Arc::new(new_subjects));
        self.flush()?;
        // Named by nobody now; a failure here leaves it for the next open to drop.
        if let Err(e) = self.db.drop_tree(old_name.as_bytes()) {
            tracing::warn!(tree = %old_name, error = %e, "could not drop the replaced subjects tree; the next start drops it");
        }
        Ok(revision)
    }
}

impl SledStore {
    /// The revision of the last write of subject `id`: its own, or the last import's if later.
    fn changed_revision(&self, id: &str) -> Result<u64, StoreError> {
        let base = revision_of(self.meta.get(SUBJECTS_BASE).map_err(backend)?)?;
        let own = revision_of(self.subject_revisions.get(id.as_bytes()).map_err(backend)?)?;
        Ok(base.max(own))
    }
}

fn set_revision(meta: &TransactionalTree, revision: u64) -> TxResult<()> {
    meta.insert(REVISION, &revision.to_be_bytes())?;
    meta.insert(FORMAT, FORMAT_VERSION.to_string().as_bytes())?;
    Ok(())
}

impl Store for SledStore {
    fn load_head(&self) -> Result<Option<Loaded>, StoreError> {
        let Some(catalog) = self.catalog.get(CATALOG).map_err(backend)? else {
            return Ok(None);
        };
        let catalog: Catalog = decode("catalog", &catalog)?;
        let presets: Vec<Preset> = match self.catalog.get(PRESETS).map_err(backend)? {
            Some(b) => decode("presets", &b)?,
            None => Vec::new(),
        };
        let version: u32 = match self.catalog.get(POLICY_VERSION).map_err(backend)? {
            Some(b) => decode("policy_version", &b)?,
            None => 1,
        };
        let policy = Policy {
            version,
            catalog,
            presets,
            roles: Self::all::<Role>(&self.roles, "roles")?,
            subjects: Vec::new(),
            admins: Self::all::<Admin>(&self.admins, "admins")?,
        };
        let revision = revision_of(self.meta.get(REVISION).map_err(backend)?)?;
        Ok(Some(Loaded { policy, revision }))
    }

    fn visit_subjects(
        &self,
        visit: &mut dyn FnMut(Subject) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.subjects.load().iter() {
            let (key, value) = item.map_err(backend)?;
            // Decoded without naming the key first: a million subjects stream through here at
            // start-up, and the name is needed only for an error.
            let subject =
                serde_json::from_slice(&value).map_err(|source| StoreError::Undecodable {
                    what: format!("subjects/{}", String::from_utf8_lossy(&key)),
                    source,
                })?;
            visit(subject)?;
        }
        Ok(())
    }

    fn subject(&self, id: &str) -> Result<Option<Subject>, StoreError> {
        match self.subjects.load().get(id.as_bytes()).map_err(backend)? {
            Some(bytes) => Ok(Some(decode(&format!("subjects/{id}"), &bytes)?)),
            None => Ok(None),
        }
    }

    fn subject_changed(&self, id: &str) -> Result<Option<(Subject, u64)>, StoreError> {
        let Some(subject) = self.subject(id)? else {
            return Ok(None);
        };
        Ok(Some((subject, self.changed_revision(id)?)))
    }

    fn subjects_page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: &mut dyn FnMut(&Subject) -> bool,
    ) -> Result<(Vec<(Subject, u64)>, bool), StoreError> {
        let subjects = self.subjects.load_full();
        let range = match after {
            Some(a) => subjects.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => subjects.iter(),
        };
        let mut page = Vec::new();
        for item in range {
            let (key, value) = item.map_err(backend)?;
            let subject: Subject = decode("subjects", &value)?;
            if !keep(&subject) {
                continue;
            }
            if page.len() == limit {
                return Ok((page, true));
            }
            let id = String::from_utf8_lossy(&key).into_owned();
            let changed = self.changed_revision(&id)?;
            page.push((subject, changed));
        }
        Ok((page, false))
    }

    fn source_digest(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .catalog
            .get(SOURCE_DIGEST)
            .map_err(backend)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn managed(&self) -> Result<Managed, StoreError> {
        let mut managed = Managed::default();
        for item in self.managed.iter() {
            let (key, mark) = item.map_err(backend)?;
            let key = String::from_utf8_lossy(&key).into_owned();
            if let Some(name) = key.strip_prefix("role/") {
                if let Some(bytes) = self.roles.get(name.as_bytes()).map_err(backend)? {
                    managed.roles.push(decode(&key, &bytes)?);
                }
            } else if let Some(id) = key.strip_prefix("subject/") {
                if mark.as_ref() == MARK_DELETED {
                    managed.deleted_subjects.push(id.to_owned());
                } else if let Some(bytes) =
                    self.subjects.load().get(id.as_bytes()).map_err(backend)?
                {
                    managed.subjects.push(decode(&key, &bytes)?);
                }
            }
        }
        Ok(managed)
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        self.audit
            .range(start..)
            .take(limit)
            .map(|item| {
                let (_, v) = item.map_err(backend)?;
                decode("audit", &v)
            })
            .collect()
    }

    fn mirror_origin(&self) -> Result<Option<MirrorOrigin>, StoreError> {
        match self.meta.get(MIRROR_ORIGIN).map_err(backend)? {
            None => Ok(None),
            Some(bytes) => decode("meta/mirror_origin", &bytes).map(Some),
        }
    }
}

impl MutableStore for SledStore {
    fn import_revoking(
        &self,
        policy: &Policy,
        actor: &str,
        mode: ImportMode,
        source: &str,
        revoked: &[Revocation],
    ) -> Result<u64, StoreError> {
        let action = match mode {
            ImportMode::Reseed => "import",
            ImportMode::Reload => "reload",
        };
        self.replace_all(
            policy,
            actor,
            action,
            mode == ImportMode::Reseed,
            Some((source, revoked)),
            None,
        )
    }

    fn commit(&self, write: &Write) -> Result<Committed, StoreError> {
        let subjects = self.subjects.load_full();
        let (tree, key, after): (&sled::Tree, &str, Option<Vec<u8>>) = match &write.change {
            Change::PutRole(r) => (&self.roles, &r.name, Some(encode(r))),
            Change::PutSubject(s) => (&subjects, &s.id, Some(encode(s))),
            Change::DeleteSubject(id) => (&subjects, id, None),
        };
        let target = Target::from(&write.change).to_string();
        let mark = if after.is_some() {
            MARK_PUT
        } else {
            MARK_DELETED
        };
        let subject_id = match &write.change {
            Change::PutSubject(s) => Some(s.id.as_str()),
            Change::DeleteSubject(id) => Some(id.as_str()),
            Change::PutRole(_) => None,
        };
        let result = (
            &self.meta,
            tree,
            &self.audit,
            &self.managed,
            &self.subject_revisions,
        )
            .transaction(|(meta, tree, audit, managed, subject_revisions)| {
                let current = match revision_of(meta.get(REVISION)?) {
                    Ok(r) => r,
                    Err(e) => return abort(e),
                };
                if current != write.base_revision {
                    return abort(StoreError::Stale {
                        expected: write.base_revision,
                        current,
                    });
                }
                let before = tree.get(key.as_bytes())?;
                if after.is_none() && before.is_none() {
                    return abort(StoreError::Missing(target.clone()));
                }
                match &after {
                    Some(bytes) => tree.insert(key.as_bytes(), bytes.as_slice())?,
                    None => tree.remove(key.as_bytes())?,
                };
                managed.insert(target.as_bytes(), mark)?;
                let revision = bump(meta)?;
                if let Some(id) = subject_id {
                    match &after {
                        Some(_) => {
                            subject_revisions.insert(id.as_bytes(), &revision.to_be_bytes())?
                        }
                        None => subject_revisions.remove(id.as_bytes())?,
                    };
                }
                let as_json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
                let record = AuditRecord {
                    revision,
                    actor: write.actor.clone(),
                    at_unix_ms: now_ms(),
                    action: write.action.clone(),
                    target: target.clone(),
                    before: before.as_deref().and_then(as_json),
                    after: after.as_deref().and_then(as_json),
                };
                audit.insert(&revision.to_be_bytes(), encode(&record))?;
                Ok(Committed {
                    revision,
                    existed: before.is_some(),
                })
            });
        let committed = unwrap_tx(result)?;
        self.flush()?;
        Ok(committed)
    }
}

impl MirrorStore for SledStore {
    fn apply_mirrored(&self, batch: &MirrorBatch) -> Result<bool, StoreError> {
        let subjects = self.subjects.load_full();
        let result = (
            &self.meta,
            &self.catalog,
            &self.roles,
            &*subjects,
            &self.admins,
            &self.audit,
            &self.subject_revisions,
        )
            .transaction(
                |(meta, catalog, roles, subjects, admins, audit, revisions)| {
                    let current = match revision_of(meta.get(REVISION)?) {
                        Ok(r) => r,
                        Err(e) => return abort(e),
                    };
                    if batch.revision <= current {
                        return Ok(false);
                    }
                    let mut before = None;
                    let mut after = None;
                    for change in &batch.changes {
                        let (old, new) = match change {
                            Mirrored::Head(head) => {
                                let old = catalog.get(CATALOG)?;
                                catalog.insert(CATALOG, encode(&head.catalog))?;
                                catalog.insert(PRESETS, encode(&head.presets))?;
                                catalog.insert(POLICY_VERSION, encode(&head.version))?;
                                (old, Some(encode(&head.catalog)))
                            }
                            Mirrored::PutRole(r) => {
                                let bytes = encode(r);
                                (roles.insert(r.name.as_bytes(), bytes.clone())?, Some(bytes))
                            }
                            Mirrored::DeleteRole(name) => (roles.remove(name.as_bytes())?, None),
                            Mirrored::PutSubject(s) => {
                                let bytes = encode(s);
                                revisions.insert(s.id.as_bytes(), &batch.revision.to_be_bytes())?;
                                (
                                    subjects.insert(s.id.as_bytes(), bytes.clone())?,
                                    Some(bytes),
                                )
                            }
                            Mirrored::DeleteSubject(id) => {
                                revisions.remove(id.as_bytes())?;
                                (subjects.remove(id.as_bytes())?, None)
                            }
                            Mirrored::PutAdmin(a) => {
                                (admins.insert(a.name.as_bytes(), encode(a))?, None)
                            }
                            Mirrored::DeleteAdmin(name) => (admins.remove(name.as_bytes())?, None),
                        };
                        before = old;
                        after = new;
                    }
                    set_revision(meta, batch.revision)?;
                    let as_json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
                    let single = batch.changes.len() == 1;
                    let record = AuditRecord {
                        revision: batch.revision,
                        actor: batch.actor.clone(),
                        at_unix_ms: now_ms(),
                        action: batch.action.clone(),
                        target: match batch.changes.as_slice() {
                            [one] => Target::from(one).to_string(),
                            many => format!("policy ({} changes)", many.len()),
                        },
                        before: before.as_deref().filter(|_| single).and_then(as_json),
                        after: after.as_deref().filter(|_| single).and_then(as_json),
                    };
                    audit.insert(&batch.revision.to_be_bytes(), encode(&record))?;
                    Ok(true)
                },
            );
        let applied = unwrap_tx(result)?;
        if applied {
            self.flush()?;
        }
        Ok(applied)
    }

    fn replace_mirrored(
        &self,
        policy: &Policy,
        revision: u64,
        origin: &MirrorOrigin,
    ) -> Result<(), StoreError> {
        self.replace_all(
            policy,
            "etcd",
            "mirror_reload",
            true,
            None,
            Some((revision, origin)),
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::file::{EMBEDDED_DEFAULT, parse_policy};
    use crate::store::data_dir::MARKER_FILE;

    fn write(change: Change, base: u64) -> Write {
        Write {
            change,
            base_revision: base,
            actor: "tester".into(),
            action: "test".into(),
        }
    }

    #[test]
    fn settling_after_an_import_changes_nothing_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = parse_policy("embedded", EMBEDDED_DEFAULT).expect("valid");
        let revision = SledStore::open(dir.path())
            .expect("open")
            .import(&policy, "import", ImportMode::Reseed, "digest-1")
            .expect("import");
        assert_eq!(revision, 1);
        SledStore::settle(dir.path()).expect("settle");
        let store = SledStore::open(dir.path()).expect("open again");
        let head = store.load_head().expect("head").expect("a policy");
        assert_eq!(head.revision, 1);
        assert_eq!(
            store.source_digest().expect("digest").as_deref(),
            Some("digest-1")
        );
        assert_eq!(
            store.load().expect("load").expect("policy").policy.subjects,
            policy.subjects
        );
    }

    #[test]
    fn import_commit_reload_and_audit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = parse_policy("embedded", EMBEDDED_DEFAULT).expect("valid");
        {
            let store = SledStore::open(dir.path()).expect("open");
            assert!(store.load().expect("load").is_none());
            assert_eq!(
                store
                    .import(&policy, "import", ImportMode::Reseed, "digest-1")
                    .expect("import"),
                1
            );
            let subject = Subject {
                id: "new".into(),
                roles: vec!["app-dashboard".into()],
                ..Subject::default()
            };
            let c = store
                .commit(&write(Change::PutSubject(subject), 1))
                .expect("commit");
            assert_eq!(
                c,
                Committed {
                    revision: 2,
                    existed: false
                }
            );
            let stale = store.commit(&write(Change::DeleteSubject("new".into()), 1));
            assert!(matches!(
                stale,
                Err(StoreError::Stale {
                    expected: 1,
                    current: 2
                })
            ));
            let missing = store.commit(&write(Change::DeleteSubject("ghost".into()), 2));
            assert!(matches!(missing, Err(StoreError::Missing(_))));
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        let loaded = store.load().expect("load").expect("present");
        assert_eq!(loaded.revision, 2);
        assert_eq!(loaded.policy.subjects.len(), policy.subjects.len() + 1);
        assert_eq!(loaded.policy.roles, policy.roles);
        assert_eq!(
            store.source_digest().expect("digest").as_deref(),
            Some("digest-1")
        );
        let managed = store.managed().expect("managed");
        assert_eq!(managed.subjects.len(), 1);
        assert_eq!(managed.subjects[0].id, "new");
        let trail = store.audit(0, 10).expect("audit");
        assert_eq!(trail.len(), 2);
        assert_eq!(trail[1].target, "subject/new");
        assert!(trail[1].before.is_none() && trail[1].after.is_some());
        assert_eq!(store.audit(1, 10).expect("audit").len(), 1);
    }

    #[test]
    fn mirrored_batches_apply_at_the_external_revision_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = parse_policy("embedded", EMBEDDED_DEFAULT).expect("valid");
        let origin = MirrorOrigin {
            cluster_id: 7,
            prefix: "/authz/".into(),
        };
        {
            let store = SledStore::open(dir.path()).expect("open");
            assert_eq!(store.mirror_origin().expect("origin"), None);
            store
                .replace_mirrored(&policy, 40, &origin)
                .expect("full load");
            let batch = MirrorBatch {
                revision: 42,
                changes: vec![
                    Mirrored::PutSubject(Subject {
                        id: "m".into(),
                        roles: vec!["app-dashboard".into()],
                        ..Subject::default()
                    }),
                    Mirrored::DeleteSubject("dashboard".into()),
                ],
                actor: "alice".into(),
                action: "put_subject".into(),
            };
            assert!(store.apply_mirrored(&batch).expect("apply"));
            assert!(!store.apply_mirrored(&batch).expect("replayed"), "skipped");
            let older = MirrorBatch {
                revision: 41,
                ..batch.clone()
            };
            assert!(!store.apply_mirrored(&older).expect("older"), "skipped");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.mirror_origin().expect("origin"), Some(origin));
        let loaded = store.load().expect("load").expect("present");
        assert_eq!(loaded.revision, 42);
        let ids: Vec<_> = loaded
            .policy
            .subjects
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert!(ids.contains(&"m") && !ids.contains(&"dashboard"), "{ids:?}");
        let trail = store.audit(40, 10).expect("audit");
        assert_eq!(trail.len(), 1);
        assert_eq!(trail[0].revision, 42);
        assert_eq!(trail[0].actor, "alice");
        assert_eq!(trail[0].target, "policy (2 changes)");
    }

    #[test]
    fn a_data_dir_that_lost_its_policy_is_refused_not_reseeded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = parse_policy("embedded", EMBEDDED_DEFAULT).expect("valid");
        {
            let store = SledStore::open(dir.path()).expect("open");
            store
                .import(&policy, "import", ImportMode::Reseed, "d")
                .expect("import");
        }
        assert!(dir.path().join(MARKER_FILE).exists());
        // Simulate sled reading a damaged log as empty: the policy is gone, the marker stays.
        for entry in std::fs::read_dir(dir.path()).expect("list") {
            let path = entry.expect("entry").path();
            if path.file_name().is_some_and(|n| n != MARKER_FILE) {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).expect("rm");
                } else {
                    std::fs::remove_file(&path).expect("rm");
                }
            }
        }
        let err = SledStore::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("not starting"), "{err}");
    }

    #[test]
    fn a_whole_policy_write_swaps_the_subjects_tree_and_leaves_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut policy = parse_policy("embedded", EMBEDDED_DEFAULT).expect("valid");
        let first: Vec<String> = policy.subjects.iter().map(|s| s.id.clone()).collect();
        let subject_trees = |store: &SledStore| -> Vec<String> {
            let mut names: Vec<String> = store
                .db
                .tree_names()
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .filter(|n| n.starts_with("subjects"))
                .collect();
            names.sort();
            names
        };
        {
            let store = SledStore::open(dir.path()).expect("open");
            store
                .import(&policy, "import", ImportMode::Reseed, "d1")
                .expect("import");
            // More subjects than one chunk, none of the first import's.
            let template = policy.subjects[0].clone();
            policy.subjects = (0..SUBJECT_CHUNK * 2 + 7)
                .map(|i| {
                    let mut s = template.clone();
                    s.id = format!("bulk-{i:05}");
                    s
                })
                .collect();
            store
                .import(&policy, "import", ImportMode::Reseed, "d2")
                .expect("import again");
            assert_eq!(subject_trees(&store), ["subjects@2"]);
            // A write cut off after filling its tree: an orphan nobody names.
            let orphan = store.db.open_tree("subjects@9").expect("tree");
            orphan.insert("x", "y").expect("insert");
            store.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(
            subject_trees(&store),
            ["subjects@2"],
            "the orphan is dropped"
        );
        let loaded = store.load().expect("load").expect("policy");
        assert_eq!(loaded.policy.subjects.len(), SUBJECT_CHUNK * 2 + 7);
        for id in &first {
            assert!(store.subject(id).expect("read").is_none(), "{id} is gone");
        }
        let last = format!("bulk-{:05}", SUBJECT_CHUNK * 2 + 6);
        assert!(store.subject(&last).expect("read").is_some());
        // Single writes land in the current tree.
        let mut s = policy.subjects[0].clone();
        s.id = "single".into();
        store
            .commit(&write(Change::PutSubject(s), loaded.revision))
            .expect("commit");
        assert!(store.subject("single").expect("read").is_some());
    }

    #[test]
    fn refuses_other_format_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            store.meta.insert(FORMAT, b"99".as_slice()).expect("insert");
            store.flush().expect("flush");
        }
        let err = SledStore::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("format version 99"), "{err}");
    }
}
