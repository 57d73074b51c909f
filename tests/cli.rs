//! The binary as operators run it: validate, configuration errors, start-up refusals, SIGTERM.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_authz-sidecar");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_example_and_lists_every_problem_with_its_line() {
    let (code, out, _) = run(&["validate", "examples/monitoring-apps.yaml"]);
    assert_eq!(code, 0);
    assert!(out.contains("ok (11 permissions"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "catalog:\n  permissions:\n    - name: a\n      endpoints: [\"FETCH /x\"]\nroles:\n  - name: r\n    kind: app\n    grants: [ghost]\n",
    )
    .expect("write");
    let (code, _, err) = run(&["validate", bad.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    let name = bad.display().to_string();
    assert!(err.contains(&format!("{name}:4:19: catalog.permissions[0].endpoints[0]: endpoint `FETCH /x`: unknown method `FETCH`")), "{err}");
    assert!(
        err.contains(&format!(
            "{name}:8:14: roles[0].grants[0].permission: unknown permission `ghost`"
        )),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
}

#[test]
fn bad_configuration_is_reported_at_once_and_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_policy = dir.path().join("p.yaml");
    std::fs::write(&bad_policy, "catalog: [oops\n").expect("write");
    let (code, _, err) = run(&[
        "--listen",
        "not-an-address",
        "--log-format",
        "xml",
        "--data-dir",
        dir.path().join("data").to_str().expect("utf8"),
        "--policy",
        bad_policy.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--listen"), "{err}");
    assert!(err.contains("--log-format"), "{err}");
    assert!(err.contains("p.yaml:"), "{err}");
    assert!(err.contains("3 configuration error(s)"), "{err}");
}

/// Starts the binary on an ephemeral port and waits for its "serving" log line.
fn spawn(data: &Path) -> Child {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf8"),
        ])
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "sidecar did not report serving");
        match lines.next() {
            Some(Ok(line)) if line.contains("serving") => break,
            Some(_) => continue,
            None => panic!("sidecar exited before serving"),
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

#[test]
fn sigterm_drains_and_exits_zero_and_a_locked_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut first = spawn(&data);

    // A second sidecar on the same data dir must refuse to start, not share or reset it.
    let (code, _, err) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("locked by another process"), "{err}");

    let status = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = first.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "sidecar did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));

    // And the data dir is usable again after a clean stop.
    let mut again = spawn(&data);
    again.kill().expect("kill");
    let _ = again.wait();
}

#[test]
fn hash_token_prints_the_sha256_for_policies() {
    let mut child = Command::new(BIN)
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"approver-token\n")
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "697e4faac709ff91018bf81268f62b015913da0d39c2e58eb4ee5dbffc4da325"
    );
}
