//! Opening: the stored policy loaded (or the seed imported into an empty store), validated
//! and compiled before anything is served; in fleet mode, the local mirror or a full load of
//! the shared store.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::compaction::Compaction;
use super::local::LocalWriter;
use super::mirror::MirrorSink;
use super::published::{Published, Publisher};
use super::reload::{log_revoked, merge_revoking};
use super::writer::PolicyWriter;
use super::{LivePolicy, LiveState, MirrorError, OpenError};
use crate::auth::AdminSet;
use crate::engine::{Snapshot, SnapshotBuilder};
use crate::model::{self, Policy, ValidationError};
use crate::store::{ImportMode, MirrorOrigin, MirrorStore, MutableStore, Store};

/// How start-up found the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The store was empty; the seed policy was imported.
    Imported {
        /// Revision after the import.
        revision: u64,
    },
    /// The store held a policy; the seed was not used (or had not changed).
    Loaded {
        /// Stored revision.
        revision: u64,
    },
    /// The store held a policy and the changed seed file was refused (it does not validate
    /// with the API-made changes merged in): the stored policy serves.
    FileRefused {
        /// Stored revision.
        revision: u64,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The store held a policy and the seed file had changed since: it was re-applied under
    /// the reload rule.
    Reloaded {
        /// Revision after the reload.
        revision: u64,
    },
}

/// The policy a sidecar starts from.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The validated, normalized policy.
    pub policy: Policy,
    /// SHA-256 of the text it was read from.
    pub digest: String,
    /// True for a policy file (re-applied when it changes); false for the built-in example,
    /// which only ever seeds an empty store.
    pub reloadable: bool,
}

impl Seed {
    /// No policy: what is left of a seed once it has been handed to [`LivePolicy::open`].
    pub fn empty() -> Seed {
        Seed {
            policy: Policy::default(),
            digest: String::new(),
            reloadable: false,
        }
    }
}

impl LivePolicy {
    /// Embedded mode: loads the stored policy, or imports `seed` into an empty store, and
    /// compiles it; admin writes go to `store`. A reloadable seed that changed since it was
    /// last applied is re-applied (reload rule).
    pub fn open<S: MutableStore>(
        store: Arc<S>,
        seed: &Seed,
        bootstrap_token: Option<&str>,
    ) -> Result<(LivePolicy, Opened), OpenError> {
        let head = store.load_head()?;
        let seed_changed = seed.reloadable
            && head.is_some()
            && store.source_digest()?.as_deref() != Some(seed.digest.as_str());
        // Every path compiles before it commits: nothing that fails to compile reaches the store.
        let (policy, snapshot, opened) = match head {
            None => {
                model::validate(&seed.policy).map_err(OpenError::InvalidStored)?;
                let snapshot = Snapshot::compile(&seed.policy, 0);
                let revision =
                    store.import(&seed.policy, "import", ImportMode::Reseed, &seed.digest)?;
                (
                    // The writer keeps everything but the subjects (the snapshot has them).
                    Policy {
                        version: seed.policy.version,
                        catalog: seed.policy.catalog.clone(),
                        presets: seed.policy.presets.clone(),
                        roles: seed.policy.roles.clone(),
                        subjects: Vec::new(),
                        admins: seed.policy.admins.clone(),
                    },
                    snapshot.with_revision(revision),
                    Opened::Imported { revision },
                )
            }
            Some(head) if seed_changed => {
                let (merged, revoked) = merge_revoking(seed.policy.clone(), &store.managed()?);
                match model::validate(&merged) {
                    Ok(()) => {
                        log_revoked(&revoked);
                        let snapshot = Snapshot::compile(&merged, 0);
                        let revision = store.import_revoking(
                            &merged,
                            "reload",
                            ImportMode::Reload,
                            &seed.digest,
                            &revoked,
                        )?;
                        (
                            merged,
                            snapshot.with_revision(revision),
                            Opened::Reloaded { revision },
                        )
                    }
                    // The file is refused, not the start: the stored policy keeps serving.
                    Err(errors) => {
                        let revision = head.revision;
                        let snapshot = compile_stored(store.as_ref(), &head.policy, revision)?;
                        (
                            head.policy,
                            snapshot,
                            Opened::FileRefused {
                                revision,
                                problems: errors.iter().map(ToString::to_string).collect(),
                            },
                        )
                    }
                }
            }
            Some(head) => {
                let revision = head.revision;
                let snapshot = compile_stored(store.as_ref(), &head.policy, revision)?;
                (head.policy, snapshot, Opened::Loaded { revision })
            }
        };
        let writer = Arc::new(LocalWriter::new(Arc::clone(&store) as Arc<dyn MutableStore>));
        let live = assemble(store, writer, policy, snapshot, bootstrap_token);
        Ok((live, opened))
    }

    /// Fleet mode: the policy last mirrored into the local store, served as it is (the
    /// sidecar serves its last mirrored state while the shared store is unreachable), with
    /// admin writes going to `writer`. `None` when the store holds no mirror of
    /// `origin_prefix`.
    pub fn open_mirror<S: MirrorStore>(
        store: Arc<S>,
        origin_prefix: &str,
        bootstrap_token: Option<&str>,
        writer: Arc<dyn PolicyWriter>,
    ) -> Result<Option<(LivePolicy, MirrorSink)>, OpenError> {
        match store.mirror_origin()? {
            Some(origin) if origin.prefix == origin_prefix => {}
            _ => return Ok(None),
        }
        let Some(head) = store.load_head()? else {
            return Ok(None);
        };
        let snapshot = compile_stored(store.as_ref(), &head.policy, head.revision)?;
        let live = assemble(
            Arc::clone(&store) as Arc<dyn Store>,
            writer,
            head.policy,
            snapshot,
            bootstrap_token,
        );
        let sink = MirrorSink::new(Arc::clone(&live.state), store);
        Ok(Some((live, sink)))
    }

    /// Fleet mode: a full load of the shared store at `revision`, mirrored into the local
    /// store and compiled, with admin writes going to `writer`.
    pub fn open_loaded<S: MirrorStore>(
        store: Arc<S>,
        policy: &Policy,
        revision: u64,
        origin: &MirrorOrigin,
        bootstrap_token: Option<&str>,
        writer: Arc<dyn PolicyWriter>,
    ) -> Result<(LivePolicy, MirrorSink), MirrorError> {
        model::validate(policy).map_err(MirrorError::Invalid)?;
        store.replace_mirrored(policy, revision, origin)?;
        let snapshot = Snapshot::compile(policy, revision);
        let live = assemble(
            Arc::clone(&store) as Arc<dyn Store>,
            writer,
            policy.clone(),
            snapshot,
            bootstrap_token,
        );
        let sink = MirrorSink::new(Arc::clone(&live.state), store);
        Ok((live, sink))
    }
}

fn assemble(
    store: Arc<dyn Store>,
    writer: Arc<dyn PolicyWriter>,
    policy: Policy,
    snapshot: Snapshot,
    bootstrap_token: Option<&str>,
) -> LivePolicy {
    let state = LiveState {
        store,
        published: Publisher::new(Published::of_policy(&policy, snapshot)),
        compaction: Compaction::default(),
        admins: ArcSwap::from_pointee(AdminSet::new(&policy.admins, bootstrap_token)),
        policy: Mutex::new(Policy {
            subjects: Vec::new(),
            ..policy
        }),
        bootstrap_token: bootstrap_token.map(str::to_owned),
    };
    LivePolicy {
        state: Arc::new(state),
        writer,
    }
}

/// Validates and compiles the stored policy, streaming its subjects from the store (they are
/// never all held as model values at once).
pub(super) fn compile_stored(
    store: &dyn Store,
    head: &Policy,
    revision: u64,
) -> Result<Snapshot, OpenError> {
    model::validate(head).map_err(OpenError::InvalidStored)?;
    let mut builder = SnapshotBuilder::new(head);
    let mut invalid = Vec::new();
    store.visit_subjects(&mut |subject| {
        match model::validate_subject(head, &subject) {
            Ok(()) => builder.add(&subject),
            Err(errors) => invalid.extend(errors.into_iter().map(|e| ValidationError {
                path: model::FieldPath::root().key(&format!("subjects/{}", subject.id)),
                message: format!("{}: {}", e.path, e.message),
                problem: e.problem,
            })),
        }
        Ok(())
    })?;
    if !invalid.is_empty() {
        return Err(OpenError::InvalidStored(invalid));
    }
    Ok(builder.finish(revision))
}
