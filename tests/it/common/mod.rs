//! Starts the real sidecar (TCP on port 0 and a Unix socket in a temp dir) through the same
//! `Sidecar::launch` that `main` uses, and hands back real tonic clients.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

pub mod corpus;

use std::path::{Path, PathBuf};

use authz_sidecar::api::pb::authz_client::AuthzClient;
use authz_sidecar::api::pb::{self, check_request};
use authz_sidecar::config::{
    AdminExposure, EnvoyConfig, Limits, Listeners, LogFormat, LogSettings, StoreSettings,
};
use authz_sidecar::live::Seed;
use authz_sidecar::model::file::parse_policy;
use authz_sidecar::server::Sidecar;
use authz_sidecar::startup::Config;
use hyper_util::rt::TokioIo;
use tonic::Request;
use tonic::transport::{Channel, Endpoint, Uri};

/// The bootstrap admin token every test sidecar gets.
pub const ADMIN_TOKEN: &str = "test-bootstrap-token";

/// A running sidecar and the temp dir holding its data and socket.
pub struct TestSidecar {
    pub sidecar: Sidecar,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &Path, policy_yaml: &str) -> Config {
    Config {
        listeners: Listeners {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            health_listen: Some("127.0.0.1:0".parse().expect("addr")),
            metrics_addr: Some("127.0.0.1:0".parse().expect("addr")),
            http_listen: Some("127.0.0.1:0".parse().expect("addr")),
            uds: Some(dir.join("authz.sock")),
            uds_mode: 0o660,
        },
        store: StoreSettings {
            data_dir: dir.join("data"),
            policy: None,
            max_policy_bytes: authz_sidecar::config::DEFAULT_MAX_POLICY_BYTES,
            reload_interval: None,
        },
        seed: Seed {
            policy: parse_policy("test policy", policy_yaml).expect("test policy is valid"),
            digest: "test".into(),
            reloadable: false,
        },
        seed_source: "test".into(),
        seed_error: None,
        admin_token: Some(ADMIN_TOKEN.into()),
        log: LogSettings {
            format: LogFormat::Plain,
            decision_log_every: None,
        },
        envoy: EnvoyConfig::default(),
        admin: AdminExposure::On,
        admin_listen: None,
        tls: None,
        limits: Limits::default(),
        http_paths: Default::default(),
        worker_threads: None,
        fleet: None,
    }
}

/// Starts a sidecar on a fresh data dir seeded with `policy_yaml`.
pub async fn start(policy_yaml: &str) -> TestSidecar {
    let dir = tempfile::tempdir().expect("tempdir");
    let sidecar = Sidecar::launch(config(dir.path(), policy_yaml))
        .await
        .expect("sidecar starts");
    TestSidecar { sidecar, dir }
}

impl TestSidecar {
    /// Stops and starts again on the same data dir (the seed is then ignored).
    pub async fn restart(self, policy_yaml: &str) -> TestSidecar {
        let TestSidecar { sidecar, dir } = self;
        sidecar.stop().await.expect("clean stop");
        let sidecar = Sidecar::launch(config(dir.path(), policy_yaml))
            .await
            .expect("sidecar restarts");
        TestSidecar { sidecar, dir }
    }

    pub async fn channel(&self) -> Channel {
        let addr = self.sidecar.tcp_addr().expect("tcp");
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connects over TCP")
    }

    pub async fn uds_channel(&self) -> Channel {
        let path: PathBuf = self.sidecar.uds_path().expect("uds").clone();
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .expect("connects over the Unix socket")
    }

    pub async fn client(&self) -> AuthzClient<Channel> {
        AuthzClient::new(self.channel().await)
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// A request from the bootstrap admin.
pub fn admin<T>(message: T) -> Request<T> {
    with_token(message, ADMIN_TOKEN)
}

pub fn permission(subject: &str, permission: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject: subject.into(),
        action: Some(check_request::Action::Permission(permission.into())),
        ..Default::default()
    }
}

pub fn http(subject: &str, method: &str, path: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject: subject.into(),
        action: Some(check_request::Action::Http(pb::HttpRequest {
            method: method.into(),
            path: path.into(),
        })),
        ..Default::default()
    }
}

pub fn event(subject: &str, event: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject: subject.into(),
        action: Some(check_request::Action::Event(event.into())),
        ..Default::default()
    }
}

/// Sends a Check and returns the response (panics on a gRPC error).
pub async fn check(
    client: &mut AuthzClient<Channel>,
    request: pb::CheckRequest,
) -> pb::CheckResponse {
    client
        .check(request)
        .await
        .expect("check succeeds")
        .into_inner()
}

pub fn set(
    role: &str,
    name: &str,
    enabled: bool,
    projects: &[&str],
) -> pb::UpdatePermissionRequest {
    pb::UpdatePermissionRequest {
        role: role.into(),
        change: Some(pb::update_permission_request::Change::Set(
            pb::RolePermission {
                name: name.into(),
                enabled,
                projects: projects.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            },
        )),
        expected_revision: 0,
    }
}

pub fn replace_paths(role: &str, rules: &[(&str, &str)]) -> pb::UpdatePermissionRequest {
    pb::UpdatePermissionRequest {
        role: role.into(),
        change: Some(pb::update_permission_request::Change::ReplacePaths(
            pb::PathPermissions {
                paths: rules
                    .iter()
                    .map(|(path, access)| pb::PathPermission {
                        path: path.to_string(),
                        access: access.to_string(),
                        default: false,
                    })
                    .collect(),
            },
        )),
        expected_revision: 0,
    }
}

/// Starts a sidecar whose configuration `tweak` adjusts first.
pub async fn start_with(policy_yaml: &str, tweak: impl FnOnce(&mut Config)) -> TestSidecar {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path(), policy_yaml);
    tweak(&mut config);
    let sidecar = Sidecar::launch(config).await.expect("sidecar starts");
    TestSidecar { sidecar, dir }
}

/// Every audit entry after `after`, across pages (bootstrap admin).
pub async fn audit_after(client: &mut AuthzClient<Channel>, after: u64) -> Vec<pb::AuditEntry> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let page = client
            .list_audit(admin(pb::ListAuditRequest {
                after_revision: cursor,
                page_size: 1000,
            }))
            .await
            .expect("list audit")
            .into_inner();
        let n = page.entries.len();
        out.extend(page.entries);
        if page.next_after_revision == 0 || n == 0 {
            break;
        }
        cursor = page.next_after_revision;
    }
    out
}
