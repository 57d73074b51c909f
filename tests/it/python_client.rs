//! Stock Python `grpcio` (gRPC C-core) against the sidecar, over TCP and over the Unix socket,
//! with default channel options: every RPC of `authz.v1.Authz`, health, and reflection v1 and
//! v1alpha (tests/python/all_rpcs.py). C-core and grpc-java send the percent-encoded socket
//! path as `:authority` over `unix:PATH`; the patched h2 (vendor/README.md) accepts it.
//!
//! The Python comes from `$AUTHZ_TEST_PYTHON` or `.venv/bin/python` (`bash .ci/run` installs
//! grpcio, grpcio-tools, grpcio-health-checking and grpcio-reflection there). Without it the
//! tests print a loud `SKIPPED` line; with `CI=true` they fail instead.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

const POLICY: &str = include_str!("../../examples/monitoring-apps.yaml");

/// A Python with the four grpcio packages, if any.
fn python() -> Option<PathBuf> {
    let candidates = std::env::var_os("AUTHZ_TEST_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")]);
    for candidate in candidates {
        let imports = Command::new(&candidate)
            .args([
                "-c",
                "import grpc, grpc_tools.protoc, grpc_health.v1.health_pb2, grpc_reflection.v1alpha.reflection_pb2",
            ])
            .output()
            .is_ok_and(|out| out.status.success());
        if imports {
            return Some(candidate);
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but no Python with grpcio, grpcio-tools, grpcio-health-checking and \
             grpcio-reflection: .ci/run installs them into .venv"
        );
    }
    eprintln!(
        "\n*** SKIPPED: no Python with the grpcio packages (bash .ci/run installs them into \
         .venv, or set AUTHZ_TEST_PYTHON) ***\n"
    );
    None
}

/// Runs tests/python/all_rpcs.py against `target` and fails with its output unless it passes.
async fn all_rpcs(python: PathBuf, target: String) {
    let out_dir = tempfile::tempdir().expect("stub dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking({
        let out_dir = out_dir.path().to_owned();
        let target = target.clone();
        move || {
            Command::new(python)
                .arg(root.join("tests/python/all_rpcs.py"))
                .arg(root.join("proto"))
                .arg(out_dir)
                .arg(target)
                .arg(common::ADMIN_TOKEN)
                .output()
                .expect("python runs")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Python grpcio over {target} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all RPCs answered"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_every_rpc_over_the_unix_socket() {
    let Some(python) = python() else { return };
    let sidecar = common::start(POLICY).await;
    let socket = sidecar
        .sidecar
        .uds_path()
        .expect("uds")
        .display()
        .to_string();
    all_rpcs(python, format!("unix:{socket}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_calls_every_rpc_over_tcp() {
    let Some(python) = python() else { return };
    let sidecar = common::start(POLICY).await;
    let addr = sidecar.sidecar.tcp_addr().expect("tcp");
    all_rpcs(python, addr.to_string()).await;
}
