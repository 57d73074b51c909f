//! The admin RPCs: translate, run the blocking write off the async runtime. Who may call them
//! was decided in front of the service (`admin_gate.rs`); each handler takes the admission.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admin_gate::Admitted;
use super::authz::AuthzService;
use super::convert::{
    audit_to_pb, grant_from_pb, paths_from_pb, role_to_pb, subject_from_pb, subject_to_pb,
};
use super::limits::{MAX_NAME_BYTES, bounded, page_size};
use super::pb;
use super::status::{from_write, invalid};
use crate::live::{LivePolicy, WriteError};
use crate::model::PermissionChange;

impl AuthzService {
    pub(super) async fn admin_update_permission(
        &self,
        mut request: Request<pb::UpdatePermissionRequest>,
    ) -> Result<Response<pb::UpdatePermissionResponse>, Status> {
        let Admitted { live, admin } = Admitted::take(&mut request)?;
        let r = request.into_inner();
        if r.role.is_empty() {
            return Err(invalid("role", "role name is empty"));
        }
        let change = match r.change {
            Some(pb::update_permission_request::Change::Set(set)) => {
                PermissionChange::Set(grant_from_pb(set)?)
            }
            Some(pb::update_permission_request::Change::ReplacePaths(paths)) => {
                PermissionChange::ReplacePaths(paths_from_pb(paths)?)
            }
            None => {
                return Err(invalid(
                    "change",
                    "one of `set`, `replace_paths` is required",
                ));
            }
        };
        let role = r.role.clone();
        let expected = r.expected_revision;
        let (outcome, revision) = live
            .update_permission(&admin.name, &role, &change, expected)
            .await
            .map_err(from_write)?;
        let live = self.state.live()?;
        let published = live.current();
        self.state.metrics.admin_change("update_permission");
        tracing::info!(role = %r.role, revision, pending = outcome.pending_approval, "role updated");
        Ok(Response::new(pb::UpdatePermissionResponse {
            role: Some(role_to_pb(
                &outcome.role,
                &published.catalog,
                &published.roles,
            )),
            revision,
            pending_approval: outcome.pending_approval,
        }))
    }

    pub(super) async fn admin_approve_pending(
        &self,
        mut request: Request<pb::ApprovePendingRequest>,
    ) -> Result<Response<pb::ApprovePendingResponse>, Status> {
        let Admitted { live, admin } = Admitted::take(&mut request)?;
        let r = request.into_inner();
        match (r.role.is_empty(), r.subject.is_empty()) {
            (true, true) => return Err(invalid("role", "one of `role`, `subject` is required")),
            (false, false) => {
                return Err(invalid("subject", "name a role or a subject, not both"));
            }
            _ => {}
        }
        if !r.subject.is_empty() {
            bounded("subject", &r.subject, MAX_NAME_BYTES)?;
            let id = r.subject.clone();
            let (approved, revision) = live
                .approve_subject(&admin.name, &id, r.expected_revision)
                .await
                .map_err(from_write)?;
            self.state.metrics.admin_change("approve_pending");
            tracing::info!(subject = %r.subject, revision, "pending subject change approved");
            return Ok(Response::new(pb::ApprovePendingResponse {
                role: None,
                revision,
                subject: Some(subject_to_pb(&approved)),
            }));
        }
        let role = r.role.clone();
        let (approved, revision) = live
            .approve_pending(&admin.name, &role, r.expected_revision)
            .await
            .map_err(from_write)?;
        let live = self.state.live()?;
        let published = live.current();
        self.state.metrics.admin_change("approve_pending");
        tracing::info!(role = %r.role, revision, "pending change approved");
        Ok(Response::new(pb::ApprovePendingResponse {
            role: Some(role_to_pb(&approved, &published.catalog, &published.roles)),
            revision,
            subject: None,
        }))
    }

    pub(super) async fn admin_put_subject(
        &self,
        mut request: Request<pb::PutSubjectRequest>,
    ) -> Result<Response<pb::PutSubjectResponse>, Status> {
        let Admitted { live, admin } = Admitted::take(&mut request)?;
        let r = request.into_inner();
        let subject = subject_from_pb(r.subject)?;
        let (outcome, revision) = live
            .put_subject(&admin.name, subject, r.expected_revision)
            .await
            .map_err(from_write)?;
        self.state.metrics.admin_change("put_subject");
        tracing::info!(
            subject = %outcome.subject.id,
            revision,
            pending = outcome.pending_approval,
            "subject stored"
        );
        Ok(Response::new(pb::PutSubjectResponse {
            subject: Some(subject_to_pb(&outcome.subject)),
            revision,
            pending_approval: outcome.pending_approval,
        }))
    }

    pub(super) async fn admin_delete_subject(
        &self,
        mut request: Request<pb::DeleteSubjectRequest>,
    ) -> Result<Response<pb::DeleteSubjectResponse>, Status> {
        let Admitted { live, admin } = Admitted::take(&mut request)?;
        let r = request.into_inner();
        if r.id.is_empty() {
            return Err(invalid("id", "subject id is empty"));
        }
        let id = r.id.clone();
        let revision = live
            .delete_subject(&admin.name, &id, r.expected_revision)
            .await
            .map_err(from_write)?;
        self.state.metrics.admin_change("delete_subject");
        tracing::info!(subject = %r.id, revision, "subject deleted");
        Ok(Response::new(pb::DeleteSubjectResponse { revision }))
    }

    pub(super) async fn admin_list_audit(
        &self,
        mut request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let Admitted { live, admin: _ } = Admitted::take(&mut request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size, "page_size")?;
        let records = blocking(move || live.audit(r.after_revision, size)).await?;
        let next_after_revision = if records.len() == size {
            records.last().map_or(0, |r| r.revision)
        } else {
            0
        };
        Ok(Response::new(pb::ListAuditResponse {
            entries: records.iter().map(audit_to_pb).collect(),
            next_after_revision,
        }))
    }
}

impl AuthzService {
    pub(super) async fn admin_get_subject(
        &self,
        mut request: Request<pb::GetSubjectRequest>,
    ) -> Result<Response<pb::GetSubjectResponse>, Status> {
        let Admitted { live, admin: _ } = Admitted::take(&mut request)?;
        let r = request.into_inner();
        if r.id.is_empty() {
            return Err(invalid("id", "subject id is empty"));
        }
        bounded("id", &r.id, MAX_NAME_BYTES)?;
        let reader = Arc::clone(&live);
        let (subject, changed) = blocking(move || reader.subject(&r.id)).await?;
        let mut subject = subject_to_pb(&subject);
        subject.changed_revision = changed;
        Ok(Response::new(pb::GetSubjectResponse {
            subject: Some(subject),
            revision: live.revision(),
        }))
    }

    pub(super) async fn admin_list_subjects(
        &self,
        mut request: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let Admitted { live, admin: _ } = Admitted::take(&mut request)?;
        let r = request.into_inner();
        let size = page_size(r.page_size, "page_size")?;
        bounded("role", &r.role, MAX_NAME_BYTES)?;
        bounded("type", &r.r#type, MAX_NAME_BYTES)?;
        if r.action.is_some() || !r.scope.is_empty() || !r.resource.is_empty() {
            return self.who_can(live, r, size).await;
        }
        let after = super::authz::decode_subject_token(&r.page_token, &r.role, &r.r#type)?;
        let reader = Arc::clone(&live);
        let (role, kind) = (r.role.clone(), r.r#type.clone());
        let (page, more) = blocking(move || {
            reader.subjects_page(after.as_deref(), size, &mut |s| {
                (kind.is_empty() || s.subject_type == kind)
                    && (role.is_empty()
                        || s.roles.contains(&role)
                        || s.resources.iter().any(|x| x.role == role))
            })
        })
        .await?;
        let next_page_token = match (more, page.last()) {
            (true, Some((last, _))) => {
                super::authz::encode_subject_token(&r.role, &r.r#type, &last.id)
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSubjectsResponse {
            subjects: page
                .iter()
                .map(|(s, changed)| pb::Subject {
                    changed_revision: *changed,
                    ..subject_to_pb(s)
                })
                .collect(),
            next_page_token,
            revision: live.revision(),
        }))
    }
}

impl AuthzService {
    /// ListSubjects with an action (who-can): the allowed ids from the published snapshot's
    /// reverse index, each then read back from the store like any listed subject. Runs on the
    /// blocking pool: a base's reverse index is built by the first who-can call that needs it.
    async fn who_can(
        &self,
        live: Arc<LivePolicy>,
        r: pb::ListSubjectsRequest,
        size: usize,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let after = super::authz::decode_who_can_token(&r.page_token, &r)?;
        let published = Arc::clone(&*live.current());
        let paths = self.state.http_paths;
        let task = tokio::task::spawn_blocking(move || {
            let snapshot = &published.snapshot;
            let Some(page) = super::authz::who_can(snapshot, paths, &r, after.as_deref(), size)?
            else {
                return Err(invalid("action", "who-can needs an action"));
            };
            let mut subjects = Vec::with_capacity(page.subjects.len());
            for id in &page.subjects {
                // A subject deleted since the snapshot was published is left out.
                match live.subject(id) {
                    Ok((subject, changed)) => subjects.push(pb::Subject {
                        changed_revision: changed,
                        ..subject_to_pb(&subject)
                    }),
                    Err(WriteError::NotFound(_)) => {}
                    Err(e) => return Err(from_write(e)),
                }
            }
            let next_page_token = page
                .resume_after
                .as_deref()
                .map(|last| super::authz::encode_who_can_token(&r, last))
                .unwrap_or_default();
            Ok(pb::ListSubjectsResponse {
                subjects,
                next_page_token,
                revision: snapshot.revision(),
            })
        });
        match task.await {
            Ok(result) => result.map(Response::new),
            Err(e) => Err(Status::internal(format!("who-can task failed: {e}"))),
        }
    }
}

/// Runs a store write (which fsyncs) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WriteError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(from_write),
        Err(e) => Err(Status::internal(format!("write task failed: {e}"))),
    }
}
