//! `authz-sidecar ctl` against a real running sidecar, over TCP and over its Unix socket.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_authz-sidecar");

/// Runs the binary off the runtime's worker (it blocks until the call returns).
async fn ctl(args: Vec<String>, token: Option<&str>) -> (i32, String, String) {
    let token = token.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.arg("ctl").args(&args).env_remove("AUTHZ_ADMIN_TOKEN");
        cmd.env_remove("AUTHZ_CTL_ADDR").env_remove("AUTHZ_CTL_UDS");
        if let Some(t) = token {
            cmd.env("AUTHZ_ADMIN_TOKEN", t);
        }
        let out = cmd.output().expect("runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("joins")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_talks_to_a_running_sidecar() {
    let policy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monitoring-apps.yaml"),
    )
    .unwrap();
    let sidecar = start(&policy).await;
    let addr = format!("http://{}", sidecar.sidecar.tcp_addr().unwrap());
    let uds = sidecar.sidecar.uds_path().unwrap().display().to_string();

    // check: allowed and denied are both exit 0; --fail-on-deny makes a denial exit 3.
    let (code, out, err) = ctl(
        args(&[
            "--addr",
            &addr,
            "check",
            "dashboard",
            "--permission",
            "devices:read",
        ]),
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("ALLOWED: granted `devices:read` by role `app-dashboard`"),
        "{out}"
    );
    let deny = [
        "check",
        "dashboard",
        "--http",
        "POST /v1/alarms/a1/dispatch",
    ];
    let (code, out, _) = ctl(
        args(&[&["--addr", addr.as_str()][..], &deny[..]].concat()),
        None,
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("DENIED: no role of the subject grants `alarms:write`"),
        "{out}"
    );
    let (code, _, _) = ctl(
        args(
            &[
                &["--addr", addr.as_str()][..],
                &deny[..],
                &["--fail-on-deny"][..],
            ]
            .concat(),
        ),
        None,
    )
    .await;
    assert_eq!(code, 3);

    // Over the Unix socket, JSON, with the explanation.
    let (code, out, err) = ctl(
        args(&[
            "--uds",
            &uds,
            "-o",
            "json",
            "check",
            "dashboard",
            "--http",
            "GET /v1/devices/d1/",
            "--explain",
        ]),
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["explanation"]["canonicalPath"], "/v1/devices/d1");

    // roles: a table by default, JSON on request.
    let (code, out, _) = ctl(args(&["--addr", &addr, "roles"]), None).await;
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("NAME"), "{out}");
    assert!(out.contains("app-dashboard"), "{out}");
    let (_, out, _) = ctl(args(&["--addr", &addr, "-o", "json", "roles"]), None).await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(v["roles"].as_array().unwrap().len() >= 5);

    // Admin reads need the token: without it the call fails (exit 1, status on stderr).
    let (code, _, err) = ctl(
        args(&["--addr", &addr, "subject", "get", "dashboard"]),
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("error:"), "{err}");
    let (code, out, err) = ctl(
        args(&["--addr", &addr, "subject", "get", "dashboard"]),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("roles:    app-dashboard"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let (code, out, err) = ctl(
        args(&[
            "--uds",
            &uds,
            "--token-file",
            token_file.to_str().unwrap(),
            "-o",
            "json",
            "subjects",
            "--role",
            "app-dashboard",
        ]),
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["subjects"][0]["id"], "dashboard");

    // health, and usage / connection errors.
    let (code, out, _) = ctl(args(&["--addr", &addr, "health"]), None).await;
    assert_eq!((code, out.trim()), (0, "SERVING"));
    let (code, _, err) = ctl(args(&["--addr", &addr, "check", "dashboard"]), None).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = ctl(args(&["--uds", "/nonexistent/authz.sock", "health"]), None).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn help_lists_ctl_and_its_calls() {
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ctl "));
    let out = Command::new(BIN)
        .args(["ctl", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    for call in [
        "check",
        "roles",
        "subjects",
        "subject",
        "health",
        "--token-file",
        "--output",
    ] {
        assert!(help.contains(call), "{call}: {help}");
    }
}
