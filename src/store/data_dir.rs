//! The data dir before sled sees it: whose it is, whether it was closed cleanly, and a trial
//! open of a copy when it was not.
//!
//! sled rewrites what it recovers when it opens a log: it zeroes torn segment tails and writes a
//! new snapshot file. A start that then refuses the dir (damaged, lost, another format) would have
//! changed it already, and SECURITY.md promises a refused dir is left as it was. So nothing is
//! handed to sled until it is known to open:
//! - a dir without the [`MARKER_FILE`] that holds anything is someone else's and is refused;
//! - a dir that was closed cleanly (its [`CLEAN_FILE`] lists every file's length and CRC-32, and
//!   they all still match) opens directly: sled finds a whole log;
//! - anything else (a kill -9, an OOM kill, damage, a build that never closed it) is first opened
//!   and read in full from a copy in [`TRIAL_DIR`]; only if that succeeds is the dir itself opened.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{FORMAT_VERSION, StoreError};

/// Written (and synced) beside sled's files when a data dir is first used; says whether a policy
/// has been stored in it yet.
pub(super) const MARKER_FILE: &str = "authz-store";
/// Written when the store is closed cleanly; removed when it is opened again.
pub(super) const CLEAN_FILE: &str = "authz-store.clean";
/// The last revision the store acknowledged, rewritten in place after every flushed write: a
/// log that was cut or zeroed after the fact recovers to an older revision, and this tells.
pub(super) const REVISION_FILE: &str = "authz-store.revision";
/// The copy a trial open works on; removed afterwards (and at the next start, if left over).
pub(super) const TRIAL_DIR: &str = ".authz-check";
/// Entries a fresh volume may hold that do not make a data dir someone else's.
const VOLUME_ENTRIES: &[&str] = &["lost+found"];
/// The marker's second line while no policy has been stored.
const CREATED: &str = "state: created, no policy stored yet";

/// How long to wait for another process (or a sled instance of this one that is closing) to
/// release the data dir's lock before refusing it.
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(2);

/// What [`inspect`] found in a data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// Nothing (or only what a fresh volume holds): a new store.
    Empty,
    /// This sidecar's store.
    Ours {
        /// A policy has been stored in it.
        seeded: bool,
        /// It was closed cleanly and no file changed since.
        clean: bool,
    },
}

fn io_error(what: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        what: what.display().to_string(),
        source,
    }
}

/// Looks at a data dir without changing anything in it (a trial copy left over from an
/// interrupted start is removed: it is this module's own scratch space).
pub(super) fn inspect(dir: &Path) -> Result<Found, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Empty),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.retain(|n| !VOLUME_ENTRIES.contains(&n.as_str()));
    let marker = dir.join(MARKER_FILE);
    if !names.iter().any(|n| n == MARKER_FILE) {
        if names.is_empty() {
            return Ok(Found::Empty);
        }
        names.sort();
        return Err(StoreError::Foreign {
            dir: dir.display().to_string(),
            entries: names,
        });
    }
    let text = std::fs::read_to_string(&marker).map_err(|e| io_error(&marker, e))?;
    let format = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("authz-sidecar data dir, format "))
        .map(str::trim);
    match format {
        Some(f) if f == FORMAT_VERSION.to_string() => {}
        Some(f) => {
            return Err(StoreError::UnsupportedFormat {
                found: f.to_string(),
            });
        }
        None => {
            return Err(StoreError::Corrupt {
                what: marker.display().to_string(),
                detail:
                    "the marker does not name a format; not starting and not touching the data dir"
                        .into(),
            });
        }
    }
    if names.iter().any(|n| n == TRIAL_DIR) {
        let trial = dir.join(TRIAL_DIR);
        std::fs::remove_dir_all(&trial).map_err(|e| io_error(&trial, e))?;
    }
    let seeded = !text.lines().any(|l| l == CREATED);
    Ok(Found::Ours {
        seeded,
        clean: closed_cleanly(dir),
    })
}

/// Writes the marker (and syncs it and the dir): `seeded` once a policy is stored.
pub(super) fn write_marker(dir: &Path, seeded: bool) -> Result<(), StoreError> {
    let path = dir.join(MARKER_FILE);
    let mut text = format!("authz-sidecar data dir, format {FORMAT_VERSION}\n");
    if !seeded {
        text.push_str(CREATED);
        text.push('\n');
    }
    write_synced(dir, MARKER_FILE, text.as_bytes()).map_err(|e| io_error(&path, e))
}

/// Writes `name` in `dir` through a temporary file and a rename, syncing both.
fn write_synced(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// True for the names this module keeps beside sled's files that are not part of the store's
/// content (never in a manifest or a copy). The revision record is part of the content.
fn ours(name: &str) -> bool {
    name == MARKER_FILE || name == CLEAN_FILE || name.ends_with(".tmp") || name == TRIAL_DIR
}

/// Every file sled keeps under `dir` (relative path, length, CRC-32), sorted by path.
fn manifest(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64, u32)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name();
            if rel.as_os_str().is_empty()
                && (ours(&name.to_string_lossy())
                    || VOLUME_ENTRIES.contains(&name.to_string_lossy().as_ref()))
            {
                continue;
            }
            let rel = rel.join(&name);
            if entry.file_type()?.is_dir() {
                stack.push(rel);
                continue;
            }
            let mut file = std::fs::File::open(dir.join(&rel))?;
            let mut hasher = crc32fast::Hasher::new();
            let mut len = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            out.push((rel, len, hasher.finalize()));
        }
    }
    out.sort();
    Ok(out)
}

fn render(files: &[(PathBuf, u64, u32)]) -> String {
    let mut text = format!("authz-sidecar clean close, format {FORMAT_VERSION}\n");
    for (path, len, crc) in files {
        text.push_str(&format!("{crc:08x} {len} {}\n", path.display()));
    }
    text
}

/// Notes that the store in `dir` was just closed cleanly: every file sled keeps, with its length
/// and CRC-32. Best effort: without it the next start only takes the slower trial path.
pub(super) fn note_clean_close(dir: &Path) {
    let written =
        manifest(dir).and_then(|files| write_synced(dir, CLEAN_FILE, render(&files).as_bytes()));
    if let Err(e) = written {
        tracing::warn!(dir = %dir.display(), error = %e, "could not note the clean close of the data dir; the next start checks a copy first");
    }
}

/// Removes the clean-close note: once sled has the dir open, the note no longer describes it.
pub(super) fn forget_clean_close(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(CLEAN_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&path, e)),
    }
}

/// True when the clean-close note is there and every file still matches it.
fn closed_cleanly(dir: &Path) -> bool {
    let Ok(noted) = std::fs::read_to_string(dir.join(CLEAN_FILE)) else {
        return false;
    };
    match manifest(dir) {
        Ok(files) => render(&files) == noted,
        Err(_) => false,
    }
}

/// The revision record: one fixed-width line, `REVISION CRC32\n`.
///
/// Written after sled's flush and before the write is acknowledged, without a sync of its own:
/// after a power loss it may hold an older revision (or be torn, then ignored), never a newer
/// one than the log holds. A revision that goes down (a fleet mirror reloading from another
/// etcd cluster) is recorded before the write, so the record is never ahead of the log.
pub(super) struct RevisionRecord {
    file: std::fs::File,
}

const RECORD_LEN: usize = 30;

impl RevisionRecord {
    /// Opens (creating) the record of the store in `dir`.
    pub(super) fn open(dir: &Path) -> Result<RevisionRecord, StoreError> {
        let path = dir.join(REVISION_FILE);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map(|file| RevisionRecord { file })
            .map_err(|e| io_error(&path, e))
    }

    /// The recorded revision; `None` when there is none or it is torn.
    pub(super) fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut line = [0u8; RECORD_LEN];
        self.file.read_exact_at(&mut line, 0).ok()?;
        let text = std::str::from_utf8(&line).ok()?.strip_suffix('\n')?;
        let (revision, crc) = text.split_once(' ')?;
        let crc = u32::from_str_radix(crc, 16).ok()?;
        (crc32fast::hash(revision.as_bytes()) == crc).then(|| revision.parse().ok())?
    }

    /// Records `revision`.
    pub(super) fn write(&self, revision: u64) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let revision = format!("{revision:020}");
        let line = format!("{revision} {:08x}\n", crc32fast::hash(revision.as_bytes()));
        debug_assert_eq!(line.len(), RECORD_LEN);
        self.file
            .write_all_at(line.as_bytes(), 0)
            .map_err(|e| io_error(Path::new(REVISION_FILE), e))
    }
}

/// Whether another process (or handle) holds the lock sled takes on its log: a `WouldBlock`
/// from the same non-blocking exclusive lock sled tries. Taken and released at once.
pub(super) fn lock_held(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join("db")) else {
        return false;
    };
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => {
            let _ = fs2::FileExt::unlock(&file);
            false
        }
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// Waits (up to [`LOCK_WAIT`]) until no process holds the lock sled takes on its log, without
/// taking it: a data dir in use by a live sidecar is refused before it is copied or opened.
pub(super) fn wait_unlocked(dir: &Path) -> Result<(), StoreError> {
    let log = dir.join("db");
    let file = match std::fs::File::open(&log) {
        Ok(file) => file,
        // No log: nothing to lock, nothing another process is writing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(&log, e)),
    };
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => {
                // Released at once: sled takes it on its own file handle.
                let _ = fs2::FileExt::unlock(&file);
                return Ok(());
            }
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                return Err(io_error(&log, e));
            }
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => {
                return Err(StoreError::Locked {
                    dir: dir.display().to_string(),
                });
            }
        }
    }
}

/// Copies sled's files of `dir` into its [`TRIAL_DIR`], runs `open` on the copy and removes the
/// copy again, whatever the outcome. The dir's own files are only read.
pub(super) fn trial_open(
    dir: &Path,
    open: impl FnOnce(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let trial = dir.join(TRIAL_DIR);
    let copied = copy_store(dir, &trial).map_err(|e| io_error(&trial, e));
    let outcome = copied.and_then(|()| open(&trial));
    let removed = std::fs::remove_dir_all(&trial);
    outcome?;
    removed.map_err(|e| io_error(&trial, e))
}

fn copy_store(dir: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for (rel, _, _) in manifest(dir)? {
        let target = to.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(dir.join(&rel), target)?;
    }
    // sled makes `blobs/` itself; an empty one is not in the manifest.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_dir_or_a_fresh_volume_is_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(inspect(dir.path()).expect("inspect"), Found::Empty);
        std::fs::create_dir(dir.path().join("lost+found")).expect("mkdir");
        assert_eq!(inspect(dir.path()).expect("inspect"), Found::Empty);
        assert_eq!(
            inspect(&dir.path().join("missing")).expect("inspect"),
            Found::Empty
        );
    }

    #[test]
    fn anything_else_without_the_marker_is_foreign() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("db"), b"someone's").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        match inspect(dir.path()) {
            Err(StoreError::Foreign { entries, .. }) => assert_eq!(entries, ["db", "notes.txt"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_marker_says_seeded_and_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_marker(dir.path(), false).expect("marker");
        assert_eq!(
            inspect(dir.path()).expect("inspect"),
            Found::Ours {
                seeded: false,
                clean: false
            }
        );
        write_marker(dir.path(), true).expect("marker");
        assert!(matches!(
            inspect(dir.path()).expect("inspect"),
            Found::Ours { seeded: true, .. }
        ));
        std::fs::write(
            dir.path().join(MARKER_FILE),
            "authz-sidecar data dir, format 7\n",
        )
        .expect("write");
        assert!(matches!(
            inspect(dir.path()),
            Err(StoreError::UnsupportedFormat { found }) if found == "7"
        ));
    }

    #[test]
    fn a_clean_close_holds_until_any_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_marker(dir.path(), true).expect("marker");
        std::fs::write(dir.path().join("db"), b"log bytes").expect("write");
        std::fs::create_dir(dir.path().join("blobs")).expect("mkdir");
        std::fs::write(dir.path().join("blobs/1"), b"blob").expect("write");
        note_clean_close(dir.path());
        assert!(closed_cleanly(dir.path()));
        // Same length, one byte different.
        std::fs::write(dir.path().join("blobs/1"), b"blub").expect("write");
        assert!(!closed_cleanly(dir.path()));
        std::fs::write(dir.path().join("blobs/1"), b"blob").expect("write");
        assert!(closed_cleanly(dir.path()));
        // A new file.
        std::fs::write(dir.path().join("snap.1"), b"").expect("write");
        assert!(!closed_cleanly(dir.path()));
        std::fs::remove_file(dir.path().join("snap.1")).expect("rm");
        forget_clean_close(dir.path()).expect("forget");
        assert!(!closed_cleanly(dir.path()));
    }

    #[test]
    fn the_revision_record_reads_back_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = RevisionRecord::open(dir.path()).expect("open");
        assert_eq!(record.read(), None);
        record.write(7).expect("write");
        assert_eq!(record.read(), Some(7));
        record.write(u64::MAX).expect("write");
        assert_eq!(record.read(), Some(u64::MAX));
        record.write(42).expect("write");
        assert_eq!(
            RevisionRecord::open(dir.path()).expect("reopen").read(),
            Some(42)
        );
        let path = dir.path().join(REVISION_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[19] = b'3'; // 43, CRC of 42
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(record.read(), None);
        std::fs::write(&path, b"").expect("truncate");
        assert_eq!(record.read(), None);
    }

    #[test]
    fn the_log_lock_is_seen_while_sled_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!lock_held(dir.path()), "no log yet");
        let db = sled::Config::new().path(dir.path()).open().expect("opens");
        assert!(lock_held(dir.path()), "sled holds its log's lock");
        let again = sled::Config::new().path(dir.path()).open();
        assert!(
            matches!(again, Err(sled::Error::Io(_))),
            "sled refuses a second open with an I/O error"
        );
        drop(db);
        assert!(!lock_held(dir.path()), "released with the database");
    }

    #[test]
    fn a_trial_works_on_a_copy_and_removes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_marker(dir.path(), true).expect("marker");
        std::fs::write(dir.path().join("db"), b"log").expect("write");
        let result = trial_open(dir.path(), |copy| {
            assert_eq!(std::fs::read(copy.join("db")).expect("copied"), b"log");
            assert!(!copy.join(MARKER_FILE).exists());
            std::fs::write(copy.join("db"), b"rewritten").expect("write");
            Err(StoreError::Locked { dir: "x".into() })
        });
        assert!(matches!(result, Err(StoreError::Locked { .. })));
        assert_eq!(std::fs::read(dir.path().join("db")).expect("read"), b"log");
        assert!(!dir.path().join(TRIAL_DIR).exists());
    }
}
