//! The health services the sidecar reports and when each changes.
//!
//! `authz.v1.Authz` has a generated server, so its status is set by type
//! (`set_serving::<AuthzGrpc>()`): the name cannot drift from the service's. The others have no
//! generated type and are named: readiness `""` and liveness ([`LIVENESS_SERVICE`]) here,
//! `authz.v1.PolicyFile` by the policy-file watcher (`reload::POLICY_FILE_SERVICE`) and
//! `authz.envoy.xds` by the xDS server (`api::xds::HEALTH_SERVICE`), which report them.

use tonic::server::NamedService;
use tonic_health::server::HealthReporter;

use crate::api::AuthzService;
use crate::api::pb::authz_server::AuthzServer;
use crate::reload::POLICY_FILE_SERVICE;

/// The generated `authz.v1.Authz` server: its health status follows readiness.
pub type AuthzGrpc = AuthzServer<AuthzService>;

/// Readiness: the empty service name, as gRPC health defines the server's overall status.
pub const READINESS: &str = "";

/// The liveness health service: `SERVING` from the moment the listeners are bound until
/// shutdown. Staleness and policy-file problems never touch it (they affect readiness, `""`
/// and `authz.v1.Authz`, and [`POLICY_FILE_SERVICE`]); a liveness probe on it fails only when
/// the process cannot answer at all.
pub const LIVENESS_SERVICE: &str = "authz.v1.Liveness";

/// The services that report readiness (what fleet staleness turns to `NOT_SERVING`).
pub const READY_SERVICES: &[&str] = &[READINESS, <AuthzGrpc as NamedService>::NAME];

/// Listeners bound, policy not loaded yet: alive, not ready.
pub async fn starting(health: &HealthReporter) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    health.set_service_status(READINESS, NotServing).await;
    health.set_not_serving::<AuthzGrpc>().await;
    health.set_service_status(LIVENESS_SERVICE, Serving).await;
    health
        .set_service_status(POLICY_FILE_SERVICE, NotServing)
        .await;
}

/// The policy is loaded and published: ready.
pub async fn ready(health: &HealthReporter) {
    health
        .set_service_status(READINESS, tonic_health::ServingStatus::Serving)
        .await;
    health.set_serving::<AuthzGrpc>().await;
}

/// Shutting down: neither alive nor ready, so that probes and balancers move away first.
pub async fn stopping(health: &HealthReporter) {
    use tonic_health::ServingStatus::NotServing;
    health.set_service_status(READINESS, NotServing).await;
    health
        .set_service_status(LIVENESS_SERVICE, NotServing)
        .await;
    health.set_not_serving::<AuthzGrpc>().await;
}
