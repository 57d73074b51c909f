//! File reload: a changed policy file re-applied under the reload rule, which keeps what was
//! changed through the admin API unless the file revokes it.

use std::sync::Arc;

use super::published::Published;
use super::{LiveState, ReloadError};
use crate::auth::AdminSet;
use crate::engine::Snapshot;
use crate::model::{self, Policy};
use crate::store::{ImportMode, Managed, MutableStore, Revocation};

/// Re-applies a changed policy file ([`merge_managed`]). Returns the new revision, or `None`
/// when the file is the one already applied. On error the current snapshot keeps serving.
pub(super) fn reload(
    live: &Arc<LiveState>,
    store: &dyn MutableStore,
    file: &Policy,
    digest: &str,
) -> Result<Option<u64>, ReloadError> {
    let mut writer = live.lock();
    if store.source_digest()?.as_deref() == Some(digest) {
        return Ok(None);
    }
    let (merged, revoked) = merge_revoking(file.clone(), &store.managed()?);
    model::validate(&merged).map_err(ReloadError::Invalid)?;
    // Compiled before the commit: a policy that cannot compile never reaches the store.
    let compiled = Snapshot::compile(&merged, 0);
    log_revoked(&revoked);
    let revision =
        store.import_revoking(&merged, "reload", ImportMode::Reload, digest, &revoked)?;
    live.published.publish(Published::of_policy(
        &merged,
        compiled.with_revision(revision),
    ));
    live.admins.store(Arc::new(AdminSet::new(
        &merged.admins,
        live.bootstrap_token.as_deref(),
    )));
    *writer = Policy {
        subjects: Vec::new(),
        ..merged
    };
    Ok(Some(revision))
}

/// The reload rule: the file is the source of everything, except the entities whose latest
/// change came through the admin API, which keep their API version (a role only while the file
/// still has it; a subject deleted through the API stays deleted). See [`merge_revoking`].
pub fn merge_managed(file: Policy, managed: &Managed) -> Policy {
    merge_revoking(file, managed).0
}

/// [`merge_managed`], and what the file revoked: a file's revocation always takes effect.
/// An API-made subject loses the roles, access roles and override entries the file no longer
/// has (an override left with no permission leaves the subject holding nothing); a subject
/// that still breaks a rule of the file's model goes; an API-changed role that the file's
/// model refuses (its base gone, its permissions moved to another role kind...) is replaced
/// by the file's version.
pub fn merge_revoking(mut file: Policy, managed: &Managed) -> (Policy, Vec<Revocation>) {
    let mut revoked = Vec::new();
    for role in &managed.roles {
        let Some(i) = file.roles.iter().position(|r| r.name == role.name) else {
            continue;
        };
        match model::validate_role(&file, role) {
            Ok(()) => file.roles[i] = role.clone(),
            Err(errors) => revoked.push(Revocation {
                target: format!("role/{}", role.name),
                revoked: errors.iter().map(ToString::to_string).collect(),
                removed: true,
            }),
        }
    }
    for subject in &managed.subjects {
        let mut kept = subject.clone();
        let mut lost = Vec::new();
        let has_role = |name: &str| file.roles.iter().any(|r| r.name == name);
        let has_permission = |name: &str| file.permission(name).is_some();
        let strip = |roles: &mut Vec<String>,
                     only: &mut Vec<String>,
                     resources: &mut Vec<model::ResourceRole>,
                     lost: &mut Vec<String>| {
            roles.retain(|r| has_role(r) || (lost.push(format!("role `{r}`")), false).1);
            resources.retain(|rr| {
                has_role(&rr.role)
                    || (
                        lost.push(format!("access role `{}` on `{}`", rr.role, rr.resource)),
                        false,
                    )
                        .1
            });
            let narrowed = !only.is_empty();
            only.retain(|p| has_permission(p) || (lost.push(format!("permission `{p}`")), false).1);
            if narrowed && only.is_empty() {
                // The override allowed only what is gone: nothing stays effective.
                roles.clear();
            }
        };
        strip(
            &mut kept.roles,
            &mut kept.only,
            &mut kept.resources,
            &mut lost,
        );
        if let Some(pending) = &mut kept.pending {
            strip(
                &mut pending.roles,
                &mut pending.only,
                &mut pending.resources,
                &mut lost,
            );
        }
        let slot = file.subjects.iter().position(|s| s.id == subject.id);
        if let Err(errors) = model::validate_subject(&file, &kept) {
            lost.extend(errors.iter().map(ToString::to_string));
            revoked.push(Revocation {
                target: format!("subject/{}", subject.id),
                revoked: lost,
                removed: true,
            });
            if let Some(i) = slot {
                file.subjects.remove(i);
            }
            continue;
        }
        if !lost.is_empty() {
            revoked.push(Revocation {
                target: format!("subject/{}", subject.id),
                revoked: lost,
                removed: false,
            });
        }
        match slot {
            Some(i) => file.subjects[i] = kept,
            None => file.subjects.push(kept),
        }
    }
    file.subjects
        .retain(|s| !managed.deleted_subjects.contains(&s.id));
    file.subjects.sort_by(|a, b| a.id.cmp(&b.id));
    (file, revoked)
}

pub(super) fn log_revoked(revoked: &[Revocation]) {
    for r in revoked {
        tracing::warn!(
            target = %r.target,
            removed = r.removed,
            revoked = %r.revoked.join("; "),
            "the policy file revoked access from an entity changed through the admin API"
        );
    }
}
