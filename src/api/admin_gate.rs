//! Admin authorization, decided once in front of the service: which RPCs are admin RPCs (the
//! one list, [`ADMIN_RPCS`]), whether this listener accepts them (`--admin`), and whether the
//! bearer token belongs to an admin holding the RPC's permission.
//!
//! Over gRPC the gate is a tower layer around the generated `AuthzServer`, mounted per
//! listener; HTTP/JSON asks the same gate before it hands a request to the service. An admitted
//! call carries an [`Admitted`] extension that only the gate makes, and every admin handler
//! takes it from the request: a service reached without the gate refuses every admin call.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use super::authz::AppState;
use super::pb::authz_server::SERVICE_NAME;
use super::status::from_auth;
use crate::auth::{AdminEntry, AdminSet};
use crate::live::LivePolicy;
use crate::model::AdminPermission;

/// Every admin RPC of `authz.v1.Authz` (method names as in the proto) and the permission it
/// needs. Every other method is open to any caller of the listener (a unit test holds this
/// list and the proto's methods together).
pub const ADMIN_RPCS: [(&str, AdminPermission); 7] = [
    ("UpdatePermission", AdminPermission::RolesWrite),
    ("ApprovePending", AdminPermission::RolesApprove),
    ("PutSubject", AdminPermission::SubjectsWrite),
    ("DeleteSubject", AdminPermission::SubjectsWrite),
    ("ListAudit", AdminPermission::AuditRead),
    ("GetSubject", AdminPermission::SubjectsRead),
    ("ListSubjects", AdminPermission::SubjectsRead),
];

/// The refusal on a listener that does not accept admin RPCs.
const NOT_ON_THIS_LISTENER: &str =
    "admin calls are not accepted on this listener (see --admin / --admin-listen)";

/// The admin RPC named `method`, with the permission it needs.
fn admin_rpc(method: &str) -> Option<(&'static str, AdminPermission)> {
    ADMIN_RPCS.iter().copied().find(|(name, _)| *name == method)
}

/// The method of an `authz.v1.Authz` gRPC path (`/authz.v1.Authz/<method>`).
fn authz_method(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')
}

/// An admin call the gate let through: the live policy and the admin making it. Made only by
/// [`AdminGate`]; the admin handlers take it from the request's extensions.
#[derive(Clone)]
pub(super) struct Admitted {
    pub live: Arc<LivePolicy>,
    pub admin: AdminEntry,
}

impl Admitted {
    /// The admission the gate attached to `request`. Without one (a service mounted without
    /// its gate) the call is refused as on a listener that does not accept admin RPCs.
    pub fn take<T>(request: &mut tonic::Request<T>) -> Result<Admitted, Status> {
        request
            .extensions_mut()
            .remove::<Admitted>()
            .ok_or_else(|| Status::permission_denied(NOT_ON_THIS_LISTENER))
    }
}

/// Admin authorization of one listener: whether it accepts admin RPCs at all (`--admin`,
/// `--admin-listen`) and, where it does, the token check.
#[derive(Clone)]
pub struct AdminGate {
    state: Arc<AppState>,
    accepts_admin: bool,
}

impl AdminGate {
    /// The gate of a listener; `accepts_admin` says whether admin RPCs are accepted on it.
    pub fn new(state: Arc<AppState>, accepts_admin: bool) -> AdminGate {
        AdminGate {
            state,
            accepts_admin,
        }
    }

    /// Admits or refuses a call of the admin RPC `rpc` carrying `authorization`.
    fn admit(
        &self,
        rpc: &'static str,
        permission: AdminPermission,
        authorization: Option<&str>,
    ) -> Result<Admitted, Status> {
        if !self.accepts_admin {
            self.state.metrics.admin_refused();
            tracing::warn!(rpc, "admin call refused: not accepted on this listener");
            return Err(Status::permission_denied(NOT_ON_THIS_LISTENER));
        }
        let live = Arc::clone(self.state.live()?);
        let token = authorization.and_then(AdminSet::bearer);
        match live.authorize(token, permission) {
            Ok(admin) => Ok(Admitted { live, admin }),
            Err(e) => {
                self.state.metrics.admin_refused();
                // Never log the token itself.
                tracing::warn!(rpc, reason = %e, "admin call refused");
                Err(from_auth(e))
            }
        }
    }

    /// HTTP/JSON: admits a decoded request for `method` (attaching [`Admitted`]) or refuses
    /// it; a method that is not an admin RPC passes untouched.
    pub(super) fn admit_request<T>(
        &self,
        method: &str,
        request: &mut tonic::Request<T>,
    ) -> Result<(), Status> {
        let Some((rpc, permission)) = admin_rpc(method) else {
            return Ok(());
        };
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let admitted = self.admit(rpc, permission, authorization)?;
        request.extensions_mut().insert(admitted);
        Ok(())
    }

    /// The generated server `inner` behind this gate.
    pub fn wrap<S>(&self, inner: S) -> Gated<S> {
        Gated {
            gate: self.clone(),
            inner,
        }
    }
}

impl<S> tower::Layer<S> for AdminGate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        self.wrap(inner)
    }
}

/// A gRPC service behind an [`AdminGate`].
#[derive(Clone)]
pub struct Gated<S> {
    gate: AdminGate,
    inner: S,
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Unpin,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Checks, ListRoles and anything the router does not know pass without a look at
        // the headers: only an admin RPC's path costs more than a comparison.
        let rpc = authz_method(request.uri().path()).and_then(admin_rpc);
        if let Some((rpc, permission)) = rpc {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match self.gate.admit(rpc, permission, authorization) {
                Ok(admitted) => {
                    request.extensions_mut().insert(admitted);
                }
                Err(status) => return GateFuture::Refused(Some(status.into_http())),
            }
        }
        GateFuture::Inner(self.inner.call(request))
    }
}

/// The answer of a [`Gated`] service: the inner service's, or the refusal.
pub enum GateFuture<F> {
    /// Refused by the gate (taken once).
    Refused(Option<http::Response<Body>>),
    /// Passed to the service.
    Inner(F),
}

impl<F, E> std::future::Future for GateFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<Body>, E>> + Unpin,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            GateFuture::Refused(response) => Poll::Ready(Ok(response.take().unwrap_or_default())),
            GateFuture::Inner(inner) => Pin::new(inner).poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// The few fields of `google.protobuf.FileDescriptorSet` that name services and methods.
    #[derive(Clone, PartialEq, Message)]
    struct FileSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<File>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct File {
        #[prost(string, optional, tag = "2")]
        package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        service: Vec<Service>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Service {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        method: Vec<Method>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Method {
        #[prost(string, optional, tag = "1")]
        name: Option<String>,
    }

    /// The methods of `authz.v1.Authz` as the proto declares them.
    fn proto_methods() -> BTreeSet<String> {
        let set = FileSet::decode(super::super::pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
        set.file
            .iter()
            .filter(|f| f.package.as_deref() == Some("authz.v1"))
            .flat_map(|f| &f.service)
            .filter(|s| {
                format!("authz.v1.{}", s.name.as_deref().unwrap_or_default()) == SERVICE_NAME
            })
            .flat_map(|s| &s.method)
            .filter_map(|m| m.name.clone())
            .collect()
    }

    /// The RPCs any caller of a listener may make.
    const OPEN_RPCS: [&str; 3] = ["Check", "CheckBatch", "ListRoles"];

    #[test]
    fn every_rpc_of_the_proto_is_either_open_or_listed_as_admin() {
        let methods = proto_methods();
        let classified: BTreeSet<String> = ADMIN_RPCS
            .iter()
            .map(|(name, _)| *name)
            .chain(OPEN_RPCS)
            .map(str::to_owned)
            .collect();
        // A new RPC fails here until it is listed: admin or open is decided, not defaulted.
        assert_eq!(methods, classified);
        assert_eq!(classified.len(), ADMIN_RPCS.len() + OPEN_RPCS.len());
    }

    #[test]
    fn only_exact_authz_paths_name_an_admin_rpc() {
        let admin = |path: &str| authz_method(path).and_then(admin_rpc).map(|(n, _)| n);
        assert_eq!(
            admin("/authz.v1.Authz/UpdatePermission"),
            Some("UpdatePermission")
        );
        assert_eq!(admin("/authz.v1.Authz/ListSubjects"), Some("ListSubjects"));
        assert_eq!(admin("/authz.v1.Authz/Check"), None);
        assert_eq!(admin("/authz.v1.Authz/ListRoles"), None);
        // What the router would not route to the admin handlers either.
        assert_eq!(admin("/authz.v1.Authz/updatepermission"), None);
        assert_eq!(admin("/authz.v1.Authzz/UpdatePermission"), None);
        assert_eq!(admin("/other.Authz/UpdatePermission"), None);
        assert_eq!(admin("authz.v1.Authz/UpdatePermission"), None);
    }

    #[test]
    fn a_request_without_the_gate_has_no_admission() {
        let mut request = tonic::Request::new(());
        let refused = Admitted::take(&mut request).err().expect("refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("not accepted on this listener"));
    }

    #[tokio::test]
    async fn a_listener_without_admin_refuses_before_the_service_sees_the_call() {
        use tower::{Service as _, ServiceExt as _};
        let state = Arc::new(AppState::new(Arc::default()));
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&reached);
        let inner = tower::service_fn(move |_: http::Request<Body>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                Body::default(),
            )))
        });
        let mut gated = AdminGate::new(Arc::clone(&state), false).wrap(inner);
        for (rpc, _) in ADMIN_RPCS {
            let request = http::Request::builder()
                .uri(format!("/{SERVICE_NAME}/{rpc}"))
                .header("authorization", "Bearer anything")
                .body(Body::default())
                .expect("request");
            let response = gated.ready().await.expect("ready").call(request).await;
            let response = response.expect("answered");
            let status = Status::from_header_map(response.headers()).expect("a status");
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{rpc}");
        }
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(state.metrics.admin_refused_count(), ADMIN_RPCS.len() as u64);
        let check = http::Request::builder()
            .uri(format!("/{SERVICE_NAME}/Check"))
            .body(Body::default())
            .expect("request");
        gated
            .ready()
            .await
            .expect("ready")
            .call(check)
            .await
            .expect("answered");
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
