//! `authz-sidecar test` as CI runs it: every example ships a test file that passes; a failing
//! case fails the run with its file:line and the explanation; a malformed test file is exit 2
//! naming its file and line; `--junit` writes the report.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_authz-sidecar");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("AUTHZ_HTTP_ENCODED_SLASHES")
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("examples/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && !n.ends_with(".tests.yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_example_ships_a_test_file_that_passes() {
    let names = examples();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        let policy = format!("examples/{name}");
        let tests = policy.replace(".yaml", ".tests.yaml");
        assert!(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(&tests)
                .exists(),
            "{policy} has no {tests}"
        );
        // The test file is found next to the policy when none is named.
        let (code, out, err) = run(&["test", &policy]);
        assert_eq!(code, 0, "{policy}: {out}{err}");
        assert!(out.contains(" 0 failed (1 file(s))"), "{out}");
        let (code, out, _) = run(&["test", &policy, &tests]);
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn a_failing_case_fails_with_file_line_and_the_explanation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tests = dir.path().join("t.tests.yaml");
    std::fs::write(
        &tests,
        "cases:\n  - subject: dispatcher\n    http: POST /v1/alarms/a1/dispatch\n    expect: allow\n  - name: wrong on purpose\n    subject: dashboard\n    http: POST /v1/alarms/a1/dispatch/\n    expect: allow\n  - subject: dashboard\n    permission: devices:read\n    expect: allow\n    reason: by another role\n",
    )
    .expect("write");
    let junit = dir.path().join("report.xml");
    let tests = tests.to_str().expect("utf8");
    let (code, out, err) = run(&[
        "test",
        "examples/monitoring-apps.yaml",
        tests,
        "--junit",
        junit.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{tests}:5: FAIL: wrong on purpose: expected allow, got deny (no role of the subject grants `alarms:write`)"
        )),
        "{out}"
    );
    // The explanation follows: roles, the canonical path, each rule considered.
    assert!(out.contains("roles [app-dashboard]"), "{out}");
    assert!(
        out.contains("canonical path: /v1/alarms/a1/dispatch\n"),
        "{out}"
    );
    assert!(
        out.contains("- grant [app-dashboard] alarms:write"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{tests}:9: FAIL: dashboard permission devices:read: allow as expected, but the reason"
        )),
        "{out}"
    );
    assert!(out.contains("1 passed, 2 failed"), "{out}");
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.contains("tests=\"3\" failures=\"2\""), "{xml}");
    assert!(xml.contains("<testcase name=\"wrong on purpose\""), "{xml}");
    assert!(xml.contains("line=\"5\""), "{xml}");
    assert!(
        xml.contains("<failure message=\"expected allow, got deny"),
        "{xml}"
    );
}

#[test]
fn a_malformed_test_file_is_exit_2_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, line, needle) in [
        (
            "cases:\n  - subject: a\n    permission: devices:read\n    expect: allow\n  - subject: b\n    permision: devices:read\n    expect: deny\n",
            6,
            "Unknown field `permision`",
        ),
        (
            "cases:\n  - subject: a\n    permission: devices:read\n    event: alarm.created\n    expect: allow\n",
            2,
            "exactly one",
        ),
        (
            "cases:\n  - subject: a\n    http: /no/method\n    expect: allow\n",
            2,
            "METHOD /path",
        ),
        (
            "cases:\n  - subject: a\n    permission: devices:read\n    expect: perhaps\n",
            4,
            "perhaps",
        ),
        (
            "fixtures:\n  subjects:\n    - { id: x, type: app, roles: [no-such-role] }\ncases:\n  - subject: x\n    permission: devices:read\n    expect: deny\n",
            3,
            "no-such-role",
        ),
    ] {
        let file = dir.path().join("bad.tests.yaml");
        std::fs::write(&file, text).expect("write");
        let file = file.to_str().expect("utf8");
        let (code, out, err) = run(&["test", "examples/monitoring-apps.yaml", file]);
        assert_eq!(code, 2, "{text}\n{out}{err}");
        assert!(err.contains(&format!("{file}:{line}: ")), "{text}\n{err}");
        assert!(err.contains(needle), "{text}\n{err}");
    }
    let (code, _, err) = run(&[
        "test",
        "examples/monitoring-apps.yaml",
        "no/such.tests.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("no/such.tests.yaml"), "{err}");
}

#[test]
fn help_lists_the_test_subcommand() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("test "), "{out}");
    let (code, out, _) = run(&["test", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--junit"), "{out}");
}
