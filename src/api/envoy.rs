//! `envoy.service.auth.v3.Authorization`: Envoy's ext_authz filter asks here whether to let an
//! HTTP request through. The subject comes from a header, a jwt_authn claim or the peer's SPIFFE
//! id; method and path map onto an HTTP Check. Anything unexpected denies (fail closed).

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::google::protobuf::value::Kind;
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

use super::authz::AppState;
use super::envoy_wire::CheckRequestView;
use crate::config::{EnvoyConfig, EnvoyMode, SubjectSource};
use crate::engine::{self, Action};
use crate::logging::escape_control;
use crate::metrics::ActionKind;
use crate::model::CanonicalPath;

/// The generated server of `envoy.service.auth.v3.Authorization`, handing each request over as
/// its received bytes (see `envoy_wire`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.auth.v3.Authorization.rs"
    ));
}

use generated::authorization_server::Authorization;
pub use generated::authorization_server::AuthorizationServer;

/// Metadata namespace under which Envoy's jwt_authn filter forwards verified payloads.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// Headers with which upstream frameworks re-route a request: method-override middleware reads
/// `x-http-method-override` and its variants, Symfony, Laravel and IIS read `x-original-url` and
/// `x-rewrite-url`. The decision was made on `:method` and `:path`, so a request let through
/// never carries them to the app: a client cannot have a POST decided and a DELETE executed.
pub const ROUTING_OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Implements Envoy's ext_authz v3 Check.
#[derive(Clone)]
pub struct EnvoyAuthzService {
    state: Arc<AppState>,
    config: Arc<EnvoyConfig>,
}

/// What the ext_authz answer says, before it is rendered for Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Allow {
        subject: String,
        revision: u64,
    },
    Deny {
        status: u16,
        reason: String,
        revision: u64,
    },
}

impl EnvoyAuthzService {
    /// A service over shared state.
    pub fn new(state: Arc<AppState>, config: EnvoyConfig) -> EnvoyAuthzService {
        EnvoyAuthzService {
            state,
            config: Arc::new(config),
        }
    }

    fn subject(&self, request: &CheckRequestView<'_>) -> Result<String, String> {
        match self.config.subject_source {
            SubjectSource::Header => {
                let name = &self.config.subject_header;
                // One subject header, one value, whichever way Envoy encoded the headers: its
                // `headers` map joins repeated headers with `,`, its raw `header_map` lists
                // each one, and the answer must not depend on which of them was used.
                let count = request.wanted_header_count();
                if count > 1 {
                    return Err(format!(
                        "{count} `{name}` headers: a request must carry exactly one"
                    ));
                }
                let value = request
                    .wanted_header()
                    .filter(|v| !v.is_empty())
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .ok_or_else(|| {
                        format!("missing subject: no `{name}` header with a UTF-8 value")
                    })?;
                if value.contains(',') {
                    return Err(format!(
                        "the `{name}` header holds a list (`,`), as when Envoy joins repeated headers: a request must carry exactly one subject"
                    ));
                }
                Ok(value.to_owned())
            }
            SubjectSource::Jwt => request
                .metadata_context()
                .as_ref()
                .and_then(|m| m.filter_metadata.get(JWT_AUTHN_NAMESPACE))
                .and_then(|s| s.fields.get(&self.config.jwt_payload_key))
                .and_then(|v| match &v.kind {
                    Some(Kind::StructValue(payload)) => payload.fields.get(&self.config.jwt_claim),
                    _ => None,
                })
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                })
                .ok_or_else(|| {
                    format!(
                        "missing subject: no `{}` claim in the `{}` jwt_authn payload",
                        self.config.jwt_claim, self.config.jwt_payload_key
                    )
                }),
            SubjectSource::Spiffe => Some(request.principal())
                .filter(|p| p.starts_with(b"spiffe://"))
                .and_then(|p| std::str::from_utf8(p).ok())
                .map(str::to_owned)
                .ok_or_else(|| "missing subject: the peer presented no SPIFFE id".to_owned()),
        }
    }

    fn decide(&self, message: &[u8]) -> Verdict {
        let live = match self.state.live() {
            Ok(live) => live,
            Err(_) => {
                return Verdict::Deny {
                    status: 503,
                    reason: "the policy is still loading".into(),
                    revision: 0,
                };
            }
        };
        let published = live.current();
        let snapshot = &published.snapshot;
        let revision = snapshot.revision();
        let request = match CheckRequestView::parse(message, &self.config.subject_header) {
            Ok(request) => request,
            Err(e) => {
                return Verdict::Deny {
                    status: 403,
                    reason: format!("malformed ext_authz CheckRequest: {e}"),
                    revision,
                };
            }
        };
        let subject = match self.subject(&request) {
            Ok(s) => s,
            Err(reason) => {
                return Verdict::Deny {
                    status: 401,
                    reason,
                    revision,
                };
            }
        };
        let Some((method, raw_path)) = request.method_and_path() else {
            return Verdict::Deny {
                status: 403,
                reason: "the check carries no HTTP request with a UTF-8 method and path".into(),
                revision,
            };
        };
        let path = match CanonicalPath::parse(raw_path, self.state.http_paths) {
            Ok(p) => p,
            Err(rejection) => {
                return Verdict::Deny {
                    status: 403,
                    reason: rejection.to_string(),
                    revision,
                };
            }
        };
        let decision = snapshot.decide(&engine::Request {
            subject: &subject,
            action: Action::Http {
                method,
                path: &path,
            },
            scope: None,
            resource: None,
            inline: None,
        });
        if decision.allowed {
            Verdict::Allow { subject, revision }
        } else {
            Verdict::Deny {
                status: 403,
                reason: decision.reason.to_string(),
                revision,
            }
        }
    }

    /// The answer for a request Envoy lets through (allowed, or shadow mode's would-be denial).
    ///
    /// It sets or removes every header the sidecar owns, so that no client-sent copy reaches
    /// the app, whatever the verdict: the revision (set), the decided subject (set when allowed,
    /// removed otherwise), the shadow marker (set to the reason of a would-be denial, removed
    /// otherwise) and, with `--envoy-strip-subject-header`, the subject header (removed).
    fn pass(
        &self,
        subject: Option<String>,
        revision: u64,
        shadow_denial: Option<&str>,
    ) -> CheckResponse {
        let c = &self.config;
        let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        let mut ok = OkHttpResponseBuilder::new();
        ok.add_header(
            c.revision_header.as_str(),
            revision.to_string(),
            overwrite,
            false,
        );
        match subject {
            Some(subject) => {
                ok.add_header(
                    c.subject_upstream_header.as_str(),
                    subject,
                    overwrite,
                    false,
                );
            }
            None => {
                ok.remove_header(c.subject_upstream_header.as_str());
            }
        }
        match shadow_denial {
            // The reason quotes request data (the subject, the path): control characters are
            // escaped so that the value is one well-formed header line.
            Some(reason) => {
                ok.add_header(
                    c.shadow_header.as_str(),
                    escape_control(reason).into_owned(),
                    overwrite,
                    false,
                );
            }
            None => {
                ok.remove_header(c.shadow_header.as_str());
            }
        }
        if c.strip_subject_header && c.subject_source == SubjectSource::Header {
            ok.remove_header(c.subject_header.as_str());
        }
        for name in ROUTING_OVERRIDE_HEADERS {
            ok.remove_header(name);
        }
        let mut response = CheckResponse::with_status(Status::ok(""));
        response.set_http_response(ok);
        response
    }

    /// The answer Envoy sends back to the client instead of forwarding the request.
    fn deny(&self, status: u16, reason: &str, revision: u64) -> CheckResponse {
        let c = &self.config;
        let body = if c.hide_reason {
            serde_json::json!({ "allowed": false, "revision": revision })
        } else {
            serde_json::json!({ "allowed": false, "reason": reason, "revision": revision })
        };
        let (code, grpc) = match status {
            401 => (HttpStatusCode::Unauthorized, Status::unauthenticated("")),
            503 => (HttpStatusCode::ServiceUnavailable, Status::unavailable("")),
            _ => (HttpStatusCode::Forbidden, Status::permission_denied("")),
        };
        let mut denied = DeniedHttpResponseBuilder::new();
        denied
            .set_http_status(code)
            .add_header("content-type", "application/json", None, false)
            .add_header(
                c.revision_header.as_str(),
                revision.to_string(),
                None,
                false,
            )
            .set_body(body.to_string());
        let mut response = CheckResponse::with_status(grpc);
        response.set_http_response(denied);
        response
    }

    /// Renders a verdict in the configured mode.
    fn render(&self, verdict: Verdict) -> CheckResponse {
        match verdict {
            Verdict::Allow { subject, revision } => self.pass(Some(subject), revision, None),
            Verdict::Deny {
                status,
                reason,
                revision,
            } => {
                if self.config.mode == EnvoyMode::Shadow {
                    self.state.metrics.shadow_denial();
                    tracing::warn!(status, %reason, revision, "ext_authz shadow mode: would deny");
                    self.pass(None, revision, Some(&reason))
                } else {
                    self.deny(status, &reason, revision)
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthzService {
    async fn check(&self, request: Request<Bytes>) -> Result<Response<CheckResponse>, Status> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        let verdict = self.decide(&request);
        let allowed = matches!(verdict, Verdict::Allow { .. });
        self.state
            .metrics
            .decision(ActionKind::Envoy, allowed, started);
        Ok(Response::new(self.render(verdict)))
    }
}
