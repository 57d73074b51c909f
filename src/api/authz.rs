//! The `authz.v1.Authz` service.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use arc_swap::Guard;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::{Request, Response, Status};

use super::convert::role_to_pb;
use super::limits::{
    MAX_BATCH_ITEMS, MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_PATH_SEGMENTS, page_size,
};
use super::pb;
use super::status::invalid;
use crate::decision_log::{DecisionEntry, DecisionLog};
use crate::engine::{self, Action, Decision, Inline, MAX_INLINE_ROLES, Snapshot};
use crate::live::{LivePolicy, Published};
use crate::metrics::{ActionKind, Metrics, Served};
use crate::model::{CanonicalPath, PathOptions, PathRejection};

/// State shared by every service: the live policy once it is loaded (a readiness latch), and
/// the metrics.
#[derive(Default)]
pub struct AppState {
    live: OnceLock<Arc<LivePolicy>>,
    /// Metrics every service records into.
    pub metrics: Arc<Metrics>,
    /// The sampled decision log, when enabled.
    pub decision_log: Option<DecisionLog>,
    /// How every HTTP decision (Check and ext_authz) reads request paths.
    pub http_paths: PathOptions,
}

impl AppState {
    /// State that records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> AppState {
        AppState {
            live: OnceLock::new(),
            metrics,
            decision_log: None,
            http_paths: PathOptions::default(),
        }
    }

    /// State that reads HTTP paths under `options`.
    pub fn with_path_options(mut self, options: PathOptions) -> AppState {
        self.http_paths = options;
        self
    }

    /// State that also feeds a decision log.
    pub fn with_decision_log(mut self, log: DecisionLog) -> AppState {
        self.decision_log = Some(log);
        self
    }

    /// Marks the sidecar ready with its loaded policy.
    pub fn set_ready(&self, live: Arc<LivePolicy>) {
        let _ = self.live.set(live);
    }

    /// The live policy, or UNAVAILABLE while it is still loading.
    pub fn live(&self) -> Result<&Arc<LivePolicy>, Status> {
        self.live
            .get()
            .ok_or_else(|| Status::unavailable("the policy is still loading; retry shortly"))
    }

    /// The published snapshot as the metrics show it; `None` while the policy is loading.
    pub fn served(&self) -> Option<Served> {
        let published = self.live.get()?.current();
        Some(Served {
            revision: published.snapshot.revision(),
            subjects: published.snapshot.subject_count(),
            published_at: published.published_at,
        })
    }
}

/// Implements `authz.v1.Authz`. Its admin RPCs answer only calls admitted by an
/// [`AdminGate`](super::AdminGate) in front of it.
#[derive(Clone)]
pub struct AuthzService {
    pub(super) state: Arc<AppState>,
}

impl AuthzService {
    /// A service over shared state.
    pub fn new(state: Arc<AppState>) -> AuthzService {
        AuthzService { state }
    }
}

/// Page tokens carry the kind filter and the last name served, so that a token cannot be
/// replayed against another filter and pages stay stable while roles change.
fn encode_token(kind: &str, last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("r1\n{kind}\n{last}"))
}

fn decode_token(token: &str, kind: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token", "not a token this server issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '\n');
    let (Some("r1"), Some(token_kind), Some(last)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if token_kind != kind {
        return Err(invalid(
            "page_token",
            "was issued for another `kind` filter",
        ));
    }
    Ok(Some(last.to_owned()))
}

/// ListSubjects page tokens carry both filters and the last id served.
pub(super) fn encode_subject_token(role: &str, kind: &str, last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("s1\n{role}\n{kind}\n{last}"))
}

pub(super) fn decode_subject_token(
    token: &str,
    role: &str,
    kind: &str,
) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token", "not a token this server issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(4, '\n');
    let (Some("s1"), Some(token_role), Some(token_kind), Some(last)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if token_role != role || token_kind != kind {
        return Err(invalid(
            "page_token",
            "was issued for other `role` / `type` filters",
        ));
    }
    Ok(Some(last.to_owned()))
}

/// Who-can page tokens: the filters, a digest of the action with its scope and resource, and
/// the id to resume after, so that a token cannot be replayed against another question.
pub(super) fn encode_who_can_token(r: &pb::ListSubjectsRequest, last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "w1\n{}\n{}\n{}\n{last}",
        r.role,
        r.r#type,
        who_can_digest(r)
    ))
}

pub(super) fn decode_who_can_token(
    token: &str,
    r: &pb::ListSubjectsRequest,
) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token", "not a token this server issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(5, '\n');
    let (Some("w1"), Some(role), Some(kind), Some(digest), Some(last)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    if role != r.role || kind != r.r#type || digest != who_can_digest(r) {
        return Err(invalid(
            "page_token",
            "was issued for another action, scope, resource, `role` or `type`",
        ));
    }
    Ok(Some(last.to_owned()))
}

/// SHA-256 of the who-can question, each field length-prefixed (no two questions share one).
fn who_can_digest(r: &pb::ListSubjectsRequest) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut field = |value: &str| {
        hash.update((value.len() as u64).to_be_bytes());
        hash.update(value.as_bytes());
    };
    match &r.action {
        Some(pb::list_subjects_request::Action::Permission(p)) => {
            field("permission");
            field(p);
        }
        Some(pb::list_subjects_request::Action::Event(e)) => {
            field("event");
            field(e);
        }
        Some(pb::list_subjects_request::Action::Http(h)) => {
            field("http");
            field(&h.method);
            field(&h.path);
        }
        None => field("none"),
    }
    field(&r.scope);
    field(&r.resource);
    hex::encode(&hash.finalize()[..16])
}

/// Who-can (ListSubjects with an action): validates the action, scope and resource with
/// Check's field rules (INVALID_ARGUMENT naming the field), canonicalizes an HTTP path with
/// the one canonicalizer (a refused path allows nobody: an empty last page) and asks
/// [`Snapshot::who_can`]. `None` when the request names no action.
pub(super) fn who_can(
    snapshot: &Snapshot,
    paths: PathOptions,
    r: &pb::ListSubjectsRequest,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<engine::WhoCanPage>, Status> {
    let Some(asked) = who_can_asked(r).map_err(|bad| bad.status(None))? else {
        return Ok(None);
    };
    let Ok(checked) = asked.canonicalize(paths) else {
        return Ok(Some(engine::WhoCanPage::default()));
    };
    let q = engine::WhoCan {
        action: checked.action(),
        scope: nonempty(&r.scope),
        resource: nonempty(&r.resource),
        subject_type: nonempty(&r.r#type),
        role: nonempty(&r.role),
    };
    Ok(Some(snapshot.who_can(&q, after, limit)))
}

fn nonempty(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// The who-can action of a ListSubjects, validated like a Check's.
fn who_can_asked(r: &pb::ListSubjectsRequest) -> Result<Option<Asked<'_>>, BadField> {
    use pb::list_subjects_request::Action as A;
    let asked = match &r.action {
        None => {
            if !r.scope.is_empty() || !r.resource.is_empty() {
                return Err(BadField::new(
                    "action",
                    "`scope` and `resource` need one of `permission`, `http`, `event`",
                ));
            }
            return Ok(None);
        }
        Some(A::Permission(p)) => asked_permission(p)?,
        Some(A::Event(e)) => asked_event(e)?,
        Some(A::Http(h)) => asked_http(h)?,
    };
    too_long("scope", &r.scope, MAX_NAME_BYTES)?;
    too_long("resource", &r.resource, MAX_NAME_BYTES)?;
    check_action_bounds(asked)?;
    Ok(Some(asked))
}

/// Length and segment bounds of an action (Check and who-can share them).
fn check_action_bounds(asked: Asked<'_>) -> Result<(), BadField> {
    match asked {
        Asked::Permission(p) => too_long("permission", p, MAX_NAME_BYTES),
        Asked::Event(e) => too_long("event", e, MAX_NAME_BYTES),
        Asked::Http { method, path } => {
            too_long("http.method", method, 16)?;
            too_long("http.path", path, MAX_PATH_BYTES)?;
            if path.split('/').filter(|s| !s.is_empty()).count() > MAX_PATH_SEGMENTS {
                return Err(BadField::new(
                    "http.path",
                    format!("more than {MAX_PATH_SEGMENTS} segments"),
                ));
            }
            Ok(())
        }
    }
}

/// The action of a Check as the wire gives it, before the path is canonicalized.
#[derive(Clone, Copy)]
enum Asked<'r> {
    Permission(&'r str),
    Http { method: &'r str, path: &'r str },
    Event(&'r str),
}

/// The action once its HTTP path, if any, is canonical.
enum Canonical<'r> {
    Permission(&'r str),
    Http {
        method: &'r str,
        path: CanonicalPath<'r>,
    },
    Event(&'r str),
}

impl<'r> Asked<'r> {
    fn canonicalize(self, options: PathOptions) -> Result<Canonical<'r>, PathRejection> {
        Ok(match self {
            Asked::Permission(p) => Canonical::Permission(p),
            Asked::Http { method, path } => Canonical::Http {
                method,
                path: CanonicalPath::parse(path, options)?,
            },
            Asked::Event(e) => Canonical::Event(e),
        })
    }
}

impl Canonical<'_> {
    fn action(&self) -> Action<'_> {
        match self {
            Canonical::Permission(p) => Action::Permission(p),
            Canonical::Http { method, path } => Action::Http { method, path },
            Canonical::Event(e) => Action::Event(e),
        }
    }
}

/// A malformed field of a Check: named, and turned into INVALID_ARGUMENT only on error (a
/// well-formed Check builds none of this).
struct BadField {
    field: Cow<'static, str>,
    message: Cow<'static, str>,
}

impl BadField {
    fn new(field: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        BadField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// INVALID_ARGUMENT naming the field, under `items[i].` when the Check is a batch item.
    fn status(self, item: Option<usize>) -> Status {
        match item {
            None => invalid(&self.field, self.message),
            Some(i) => invalid(&format!("items[{i}].{}", self.field), self.message),
        }
    }
}

fn too_long(field: &'static str, value: &str, max: usize) -> Result<(), BadField> {
    if value.len() > max {
        return Err(BadField::new(field, format!("longer than {max} bytes")));
    }
    Ok(())
}

/// A permission action, as Check and who-can take it.
fn asked_permission(p: &str) -> Result<Asked<'_>, BadField> {
    if p.is_empty() {
        return Err(BadField::new("permission", "permission name is empty"));
    }
    Ok(Asked::Permission(p))
}

/// An event action, as Check and who-can take it.
fn asked_event(e: &str) -> Result<Asked<'_>, BadField> {
    if e.is_empty() {
        return Err(BadField::new("event", "event type is empty"));
    }
    Ok(Asked::Event(e))
}

/// An HTTP action, as Check and who-can take it (the path is canonicalized later).
fn asked_http(h: &pb::HttpRequest) -> Result<Asked<'_>, BadField> {
    if h.method.is_empty() {
        return Err(BadField::new("http.method", "method is empty"));
    }
    if !h.path.starts_with('/') {
        return Err(BadField::new("http.path", "path must start with `/`"));
    }
    Ok(Asked::Http {
        method: &h.method,
        path: &h.path,
    })
}

/// Validates a Check's fields and returns its action as asked. Allocates nothing unless a
/// field is malformed.
fn asked(r: &pb::CheckRequest) -> Result<Asked<'_>, BadField> {
    if r.subject.is_empty() {
        return Err(BadField::new("subject", "subject id is empty"));
    }
    let asked = match &r.action {
        Some(pb::check_request::Action::Permission(p)) => asked_permission(p)?,
        Some(pb::check_request::Action::Event(e)) => asked_event(e)?,
        Some(pb::check_request::Action::Http(h)) => asked_http(h)?,
        None => {
            return Err(BadField::new(
                "action",
                "one of `permission`, `http`, `event` is required",
            ));
        }
    };
    too_long("subject", &r.subject, MAX_NAME_BYTES)?;
    too_long("scope", &r.scope, MAX_NAME_BYTES)?;
    too_long("resource", &r.resource, MAX_NAME_BYTES)?;
    too_long("subject_type", &r.subject_type, MAX_NAME_BYTES)?;
    check_action_bounds(asked)?;
    if let Some(i) = r.roles.iter().position(|v| v.len() > MAX_NAME_BYTES) {
        return Err(BadField::new(
            format!("roles[{i}]"),
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if r.roles.len() > MAX_INLINE_ROLES {
        return Err(BadField::new(
            "roles",
            format!("at most {MAX_INLINE_ROLES} inline roles"),
        ));
    }
    Ok(asked)
}

impl Asked<'_> {
    fn kind(self) -> ActionKind {
        match self {
            Asked::Permission(_) => ActionKind::Permission,
            Asked::Http { .. } => ActionKind::Http,
            Asked::Event(_) => ActionKind::Event,
        }
    }
}

/// Decides a validated Check on `snapshot` and hands the decision to `then`. The HTTP path goes
/// through the one canonicalizer of every HTTP decision; a refused path is a denial naming its
/// rule, not an error. Allocates nothing for a path without escapes.
fn decide_with<R>(
    snapshot: &Snapshot,
    paths: PathOptions,
    r: &pb::CheckRequest,
    asked: Asked<'_>,
    then: impl FnOnce(Decision<'_>) -> R,
) -> R {
    let checked = asked.canonicalize(paths);
    let decision = match &checked {
        Ok(checked) => snapshot.decide(&engine::Request {
            subject: &r.subject,
            action: checked.action(),
            scope: (!r.scope.is_empty()).then_some(r.scope.as_str()),
            resource: (!r.resource.is_empty()).then_some(r.resource.as_str()),
            inline: (!r.roles.is_empty()).then_some(Inline {
                roles: &r.roles,
                subject_type: &r.subject_type,
            }),
        }),
        Err(rejection) => Decision::refused_path(*rejection),
    };
    then(decision)
}

/// Validates and decides every item of a CheckBatch on one snapshot, in order, handing each
/// item and its decision to `each`. The first malformed item ends the batch with
/// INVALID_ARGUMENT naming `items[i].<field>` (items decided before it are to be discarded).
///
/// Per item this allocates nothing itself (the caller's answer is the only allocation): the
/// same validation, canonicalizer and engine as `Check`.
pub fn decide_batch(
    snapshot: &Snapshot,
    paths: PathOptions,
    items: &[pb::CheckRequest],
    mut each: impl FnMut(&pb::CheckRequest, Decision<'_>),
) -> Result<(), Status> {
    decide_items(snapshot, paths, items, |item, _, d| each(item, d))
}

fn decide_items(
    snapshot: &Snapshot,
    paths: PathOptions,
    items: &[pb::CheckRequest],
    mut each: impl FnMut(&pb::CheckRequest, Asked<'_>, Decision<'_>),
) -> Result<(), Status> {
    if items.len() > MAX_BATCH_ITEMS {
        return Err(invalid(
            "items",
            format!("at most {MAX_BATCH_ITEMS} items per batch"),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let asked = asked(item).map_err(|bad| bad.status(Some(i)))?;
        if item.min_revision != 0 {
            return Err(BadField::new(
                "min_revision",
                "set `min_revision` on the batch, not on an item",
            )
            .status(Some(i)));
        }
        decide_with(snapshot, paths, item, asked, |d| each(item, asked, d));
    }
    Ok(())
}

/// The wire answer to a decision taken on `snapshot`.
fn answer(snapshot: &Snapshot, decision: &Decision<'_>) -> pb::CheckResponse {
    pb::CheckResponse {
        allowed: decision.allowed,
        reason: decision.reason.to_string(),
        required: decision
            .required
            .ids()
            .map(|id| snapshot.permission_name(id).to_owned())
            .collect(),
        revision: snapshot.revision(),
        explanation: None,
    }
}

/// The explanation of a validated Check (`explain = true`): the same canonicalizer and rules
/// as [`decide_with`], walked by [`Snapshot::explain`], with the approval effects of `roles`.
fn explain_check(
    snapshot: &Snapshot,
    paths: PathOptions,
    roles: &[crate::model::Role],
    r: &pb::CheckRequest,
    asked: Asked<'_>,
) -> pb::Explanation {
    let mut explanation = match asked.canonicalize(paths) {
        Ok(checked) => snapshot.explain(&engine::Request {
            subject: &r.subject,
            action: checked.action(),
            scope: (!r.scope.is_empty()).then_some(r.scope.as_str()),
            resource: (!r.resource.is_empty()).then_some(r.resource.as_str()),
            inline: (!r.roles.is_empty()).then_some(Inline {
                roles: &r.roles,
                subject_type: &r.subject_type,
            }),
        }),
        Err(rejection) => engine::Explanation::refused_path(&r.subject, rejection),
    };
    explanation.note_pending(roles);
    explanation_to_pb(explanation)
}

/// The wire form of an explanation.
pub fn explanation_to_pb(e: engine::Explanation) -> pb::Explanation {
    pb::Explanation {
        subject: e.subject.id,
        subject_source: e.subject.source.to_owned(),
        subject_type: e.subject.subject_type,
        roles: e.subject.roles,
        only: e.subject.only,
        resources: e.subject.resources,
        canonical_path: e.canonical_path.unwrap_or_default(),
        steps: e
            .steps
            .into_iter()
            .map(|s| pb::ExplainStep {
                kind: s.kind.as_str().to_owned(),
                role: s.role,
                rule: s.rule,
                matched: s.matched,
                detail: s.detail,
            })
            .collect(),
    }
}

impl AuthzService {
    /// Feeds the sampled decision log, if any.
    fn log_decision(&self, r: &pb::CheckRequest, asked: Asked<'_>, d: &Decision<'_>, rev: u64) {
        if let Some(log) = self.state.decision_log.as_ref().filter(|log| log.sample()) {
            let (kind, action) = match asked {
                Asked::Permission(p) => ("permission", p.to_owned()),
                Asked::Http { method, path } => ("http", format!("{method} {path}")),
                Asked::Event(e) => ("event", e.to_owned()),
            };
            log.record(DecisionEntry {
                subject: r.subject.clone(),
                kind,
                action,
                allowed: d.allowed,
                reason: d.reason.to_string(),
                revision: rev,
            });
        }
    }

    /// Waits (fleet mode, bounded) for `min_revision` and returns the snapshot to decide on,
    /// or UNAVAILABLE when it is still older.
    async fn snapshot_at(&self, min_revision: u64) -> Result<Guard<Arc<Published>>, Status> {
        let live = self.state.live()?;
        if min_revision > 0 {
            live.await_min_revision(min_revision).await;
        }
        let published = live.current();
        let revision = published.snapshot.revision();
        if min_revision > revision {
            return Err(Status::unavailable(format!(
                "min_revision {min_revision} is ahead of the policy revision {revision}; retry"
            )));
        }
        Ok(published)
    }
}

#[tonic::async_trait]
impl pb::authz_server::Authz for AuthzService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let started = std::time::Instant::now();
        self.state.live()?;
        let r = request.get_ref();
        let asked = asked(r).map_err(|bad| bad.status(None))?;
        let published = self.snapshot_at(r.min_revision).await?;
        let snapshot = &published.snapshot;
        let mut response = decide_with(snapshot, self.state.http_paths, r, asked, |decision| {
            self.state
                .metrics
                .decision(asked.kind(), decision.allowed, started);
            self.log_decision(r, asked, &decision, snapshot.revision());
            answer(snapshot, &decision)
        });
        if r.explain {
            let paths = self.state.http_paths;
            let roles = &published.roles;
            response.explanation = Some(explain_check(snapshot, paths, roles, r, asked));
        }
        Ok(Response::new(response))
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        self.state.live()?;
        let r = request.get_ref();
        if r.items.is_empty() {
            return Err(invalid("items", "a batch needs at least one item"));
        }
        let published = self.snapshot_at(r.min_revision).await?;
        let snapshot = &published.snapshot;
        let mut results = Vec::with_capacity(r.items.len());
        let paths = self.state.http_paths;
        decide_items(snapshot, paths, &r.items, |item, asked, decision| {
            self.state
                .metrics
                .batch_decision(asked.kind(), decision.allowed);
            self.log_decision(item, asked, &decision, snapshot.revision());
            let mut result = answer(snapshot, &decision);
            if item.explain {
                let roles = &published.roles;
                result.explanation = Some(explain_check(snapshot, paths, roles, item, asked));
            }
            results.push(result);
        })?;
        Ok(Response::new(pb::CheckBatchResponse {
            results,
            revision: snapshot.revision(),
        }))
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let live = self.state.live()?;
        let r = request.into_inner();
        let size = page_size(r.page_size, "page_size")?;
        let after = decode_token(&r.page_token, &r.kind)?;
        let published = live.current();
        let mut matching = published
            .roles
            .iter()
            .filter(|role| r.kind.is_empty() || role.kind == r.kind)
            .filter(|role| after.as_deref().is_none_or(|a| role.name.as_str() > a));
        let page: Vec<_> = matching.by_ref().take(size).collect();
        let next_page_token = match (matching.next(), page.last()) {
            (Some(_), Some(last)) => encode_token(&r.kind, &last.name),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListRolesResponse {
            roles: page
                .into_iter()
                .map(|role| role_to_pb(role, &published.catalog, &published.roles))
                .collect(),
            next_page_token,
            revision: published.snapshot.revision(),
        }))
    }

    async fn update_permission(
        &self,
        request: Request<pb::UpdatePermissionRequest>,
    ) -> Result<Response<pb::UpdatePermissionResponse>, Status> {
        self.admin_update_permission(request).await
    }

    async fn put_subject(
        &self,
        request: Request<pb::PutSubjectRequest>,
    ) -> Result<Response<pb::PutSubjectResponse>, Status> {
        self.admin_put_subject(request).await
    }

    async fn delete_subject(
        &self,
        request: Request<pb::DeleteSubjectRequest>,
    ) -> Result<Response<pb::DeleteSubjectResponse>, Status> {
        self.admin_delete_subject(request).await
    }

    async fn approve_pending(
        &self,
        request: Request<pb::ApprovePendingRequest>,
    ) -> Result<Response<pb::ApprovePendingResponse>, Status> {
        self.admin_approve_pending(request).await
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.admin_list_audit(request).await
    }

    async fn get_subject(
        &self,
        request: Request<pb::GetSubjectRequest>,
    ) -> Result<Response<pb::GetSubjectResponse>, Status> {
        self.admin_get_subject(request).await
    }

    async fn list_subjects(
        &self,
        request: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        self.admin_list_subjects(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_bind_the_filter() {
        let t = encode_token("app", "app-dashboard");
        assert_eq!(
            decode_token(&t, "app").expect("valid"),
            Some("app-dashboard".into())
        );
        assert!(decode_token(&t, "operator").is_err());
        assert!(decode_token("garbage!", "").is_err());
        assert!(decode_token(&URL_SAFE_NO_PAD.encode("x\ny"), "").is_err());
        assert_eq!(decode_token("", "x").expect("empty"), None);
    }
}
