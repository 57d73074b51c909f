//! `authz-sidecar ctl` against a real running sidecar, over TCP and over its Unix socket.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

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

/// Runs the binary with `input` on its standard input.
async fn ctl_stdin(args: Vec<String>, token: Option<&str>, input: &str) -> (i32, String, String) {
    let token = token.map(str::to_owned);
    let input = input.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        use std::process::Stdio;
        let mut cmd = Command::new(BIN);
        cmd.arg("ctl").args(&args).env_remove("AUTHZ_ADMIN_TOKEN");
        cmd.env_remove("AUTHZ_CTL_ADDR").env_remove("AUTHZ_CTL_UDS");
        if let Some(t) = token {
            cmd.env("AUTHZ_ADMIN_TOKEN", t);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().expect("waits");
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
        "role",
        "batch",
        "who-can",
        "update-permission",
        "approve",
        "audit",
        "health",
        "--token-file",
        "--output",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
    ] {
        assert!(help.contains(call), "{call}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_batch_who_can_and_admin_writes() {
    let sidecar = start(authz_sidecar::model::file::EMBEDDED_DEFAULT).await;
    let addr = format!("http://{}", sidecar.sidecar.tcp_addr().unwrap());
    let uds = sidecar.sidecar.uds_path().unwrap().display().to_string();
    let at = |rest: &[&str]| args(&[&["--addr", addr.as_str()][..], rest].concat());
    let on_uds = |rest: &[&str]| args(&[&["--uds", uds.as_str()][..], rest].concat());
    let tok = Some(ADMIN_TOKEN);

    // batch: JSON lines from a file; a denial is exit 0 unless --fail-on-deny (then 3).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checks.jsonl");
    std::fs::write(
        &file,
        "# one check a line\n\
         {\"subject\": \"dashboard\", \"permission\": \"devices:read\"}\n\
         {\"subject\": \"dashboard\", \"http\": \"POST /v1/alarms/a1/dispatch\"}\n\
         \n\
         {\"subject\": \"t\", \"event\": \"alarm.created\", \"roles\": [\"app-readonly\"], \"subjectType\": \"app\"}\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, out, err) = ctl(at(&["batch", path]), None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().starts_with("LINE"), "{out}");
    assert!(out.contains("2 allowed, 1 denied"), "{out}");
    let (code, _, _) = ctl(at(&["batch", path, "--fail-on-deny"]), None).await;
    assert_eq!(code, 3);
    let (code, out, err) = ctl(at(&["-o", "json", "batch", path]), None).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let lines: Vec<_> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["allowed"].as_bool().unwrap()))
        .collect();
    assert_eq!(lines, [(2, true), (3, false), (5, true)]);
    // From standard input, over the Unix socket; 1,500 items take two CheckBatch calls.
    let many: String = (0..1500)
        .map(|i| {
            format!(
                "{{\"subject\": \"{}\", \"permission\": \"devices:read\"}}\n",
                if i % 3 == 0 {
                    "dispatcher"
                } else {
                    "dashboard"
                }
            )
        })
        .collect();
    let (code, out, err) = ctl_stdin(on_uds(&["-o", "json", "batch", "-"]), None, &many).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (v["allowed"].as_u64(), v["denied"].as_u64()),
        (Some(1000), Some(500))
    );
    assert_eq!(v["results"][1499]["line"], 1500);
    // A malformed line sends nothing and names file and line (exit 2); so does a bad item
    // the server refuses, by its line.
    std::fs::write(
        &file,
        "{\"subject\": \"dashboard\", \"permission\": \"devices:read\"}\n{\"subject\": \"x\"}\n",
    )
    .unwrap();
    let (code, _, err) = ctl(at(&["batch", path]), None).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("checks.jsonl:2:"), "{err}");
    std::fs::write(
        &file,
        "{\"subject\": \"dashboard\", \"permission\": \"devices:read\"}\n{\"subject\": \"\", \"permission\": \"devices:read\"}\n",
    )
    .unwrap();
    let (code, _, err) = ctl(at(&["batch", path]), None).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 2:") && err.contains("subject"), "{err}");

    // who-can: an admin read (exit 1 without the token), a table by default, JSON on request.
    let who = ["who-can", "--http", "POST /v1/alarms/a1/dispatch"];
    let (code, _, err) = ctl(at(&who), None).await;
    assert_eq!(code, 1, "{err}");
    let (code, out, err) = ctl(at(&who), tok).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "ID          TYPE  ROLES\ndispatcher  app   app-dispatcher"
    );
    let (code, _, err) = ctl(at(&["who-can", "--scope", "x"]), tok).await;
    assert_eq!(code, 2, "{err}");

    // update-permission: a widening of an approval-bound role waits; approve applies it.
    let (code, out, err) = ctl(
        at(&[
            "update-permission",
            "app-dashboard",
            "--permission",
            "alarms:write",
            "--enable",
        ]),
        tok,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("waits for approval"), "{out}");
    let (_, out, _) = ctl(
        at(&["who-can", "--permission", "alarms:write", "-o", "json"]),
        tok,
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["subjects"].as_array().unwrap().len(), 1, "{out}");
    let (code, out, err) = ctl(on_uds(&["approve", "--role", "app-dashboard"]), tok).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("role app-dashboard: approved"), "{out}");
    let (_, out, _) = ctl(on_uds(&["who-can", "--permission", "alarms:write"]), tok).await;
    assert!(
        out.contains("dashboard ") && out.contains("dispatcher"),
        "{out}"
    );
    let (code, out, _) = ctl(at(&["role", "get", "app-dashboard"]), None).await;
    assert_eq!(code, 0);
    assert!(out.contains("alarms:write"), "{out}");
    let (code, _, err) = ctl(at(&["role", "get", "no-such-role"]), None).await;
    assert_eq!(code, 1);
    assert!(err.contains("no role `no-such-role`"), "{err}");
    let (code, _, _) = ctl(
        at(&["update-permission", "app-dashboard", "--permission", "x"]),
        tok,
    )
    .await;
    assert_eq!(code, 2, "needs --enable or --disable");
    let (code, _, err) = ctl(
        at(&["update-permission", "app-readonly", "--path", "/v1/x/*=r"]),
        tok,
    )
    .await;
    // The rule goes to the server, which refuses it on a role without a base (exit 1).
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has no base role"), "{err}");

    // subject put / get / delete; a new app subject waits for approval.
    let (code, out, err) = ctl(
        at(&[
            "subject",
            "put",
            "new-app",
            "--type",
            "app",
            "--role",
            "app-dispatcher",
        ]),
        tok,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("waits for approval"), "{out}");
    let (code, _, err) = ctl(at(&["approve", "--subject", "new-app"]), tok).await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = ctl(
        at(&["who-can", "--permission", "alarms:write", "--limit", "1"]),
        tok,
    )
    .await;
    assert_eq!(out.lines().count(), 2, "one subject: {out}");
    let (_, out, _) = ctl(
        at(&[
            "who-can",
            "--event",
            "alarm.created",
            "--type",
            "app",
            "--role",
            "app-dispatcher",
        ]),
        tok,
    )
    .await;
    assert!(
        out.contains("new-app") && out.contains("dispatcher"),
        "{out}"
    );
    let (code, _, _) = ctl(at(&["subject", "put", "x", "--resource", "nonsense"]), tok).await;
    assert_eq!(code, 2);
    let (code, out, err) = ctl(at(&["-o", "json", "subject", "delete", "new-app"]), tok).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(v["revision"].as_str().unwrap().parse::<u64>().unwrap() > 1);
    let (code, _, _) = ctl(at(&["subject", "get", "new-app"]), tok).await;
    assert_eq!(code, 1, "deleted");

    // audit: every write above, oldest first.
    let (code, out, err) = ctl(at(&["audit"]), tok).await;
    assert_eq!(code, 0, "{err}");
    let actions: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    for want in [
        "update_permission",
        "approve_pending",
        "put_subject",
        "delete_subject",
    ] {
        assert!(actions.contains(&want), "{want}: {out}");
    }
    let (_, out, _) = ctl(at(&["audit", "--limit", "2", "--output", "json"]), tok).await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_speaks_tls_with_a_client_certificate() {
    use authz_sidecar::config::TlsConfig;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf("localhost");
    let client = leaf("ops.local");
    let tls = TlsConfig {
        cert_pem: server.0.into_bytes(),
        key_pem: server.1.into_bytes(),
        client_ca_pem: Some(ca.pem().into_bytes()),
    };
    let sc = start_with(authz_sidecar::model::file::EMBEDDED_DEFAULT, |c| {
        c.tls = Some(tls)
    })
    .await;
    let port = sc.sidecar.tcp_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let cert_file = write("client.pem", &client.0);
    let key_file = write("client.key", &client.1);
    let https = format!("https://127.0.0.1:{port}");
    let base = [
        "--addr",
        https.as_str(),
        "--tls-ca",
        ca_file.as_str(),
        "--tls-domain",
        "localhost",
    ];
    let with_cert = [
        &base[..],
        &[
            "--tls-cert",
            cert_file.as_str(),
            "--tls-key",
            key_file.as_str(),
        ][..],
    ]
    .concat();
    let check = ["check", "dashboard", "--permission", "devices:read"];
    let (code, out, err) = ctl(args(&[&with_cert[..], &check[..]].concat()), None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ALLOWED"), "{out}");
    let (code, out, err) = ctl(
        args(
            &[
                &with_cert[..],
                &["who-can", "--permission", "devices:read"][..],
            ]
            .concat(),
        ),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dashboard"), "{out}");
    // No client certificate: the handshake is refused (exit 1).
    let (code, _, err) = ctl(args(&[&base[..], &check[..]].concat()), None).await;
    assert_eq!(code, 1, "{err}");
    // https without a CA, a CA with plain http, and a key without its certificate are usage
    // errors: nothing silently falls back to plain text.
    let (code, _, err) = ctl(
        args(&[&["--addr", https.as_str()][..], &check[..]].concat()),
        None,
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let plain = format!("http://127.0.0.1:{port}");
    let (code, _, err) = ctl(
        args(
            &[
                &["--addr", plain.as_str(), "--tls-ca", ca_file.as_str()][..],
                &check[..],
            ]
            .concat(),
        ),
        None,
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = ctl(
        args(&[&base[..], &["--tls-key", key_file.as_str()][..], &check[..]].concat()),
        None,
    )
    .await;
    assert_eq!(code, 2, "{err}");
}
