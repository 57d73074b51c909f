//! Shared helpers for the seed tests: load an example policy, write statement tables one line per
//! statement, and replay them against the running server, reporting every mismatch at once.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::PathBuf;

use authz_sidecar::api::pb::authz_client::AuthzClient;
use authz_sidecar::api::pb::{self, check_request};
use authz_sidecar::model::Policy;
use authz_sidecar::model::file::load_policy_file;
use tonic::transport::Channel;

/// The path of `examples/<name>`.
pub fn example_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// The text of `examples/<name>`.
pub fn example_text(name: &str) -> String {
    std::fs::read_to_string(example_path(name)).expect("example exists")
}

/// `examples/<name>` loaded as `authz-sidecar validate` loads it (validated and normalized).
pub fn example(name: &str) -> Policy {
    load_policy_file(&example_path(name)).unwrap_or_else(|e| panic!("{name} is valid:\n{e}"))
}

/// A policy as JSON text (a policy file may be JSON), to start a sidecar on a modified example.
pub fn to_text(policy: &Policy) -> String {
    serde_json::to_string(policy).expect("policy serializes")
}

/// One statement of a document: a Check and the decision the document says it gets.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The statement as written, for failure messages.
    pub text: String,
    pub request: pb::CheckRequest,
    pub allowed: bool,
    /// A piece the reason must contain, when given.
    pub reason: Option<String>,
}

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Builds a Check from an action written as `NAME`, `event NAME` or `METHOD /path`, followed by
/// optional `scope=ID`, `resource=ID`, `type=TYPE` and `roles=A,B` (inline roles) modifiers.
pub fn request(subject: &str, action: &str) -> pb::CheckRequest {
    let mut tokens = action.split_whitespace();
    let first = tokens
        .next()
        .unwrap_or_else(|| panic!("empty action for `{subject}`"));
    let action = if METHODS.contains(&first) {
        let path = tokens
            .next()
            .unwrap_or_else(|| panic!("`{first}` needs a path"));
        check_request::Action::Http(pb::HttpRequest {
            method: first.into(),
            path: path.into(),
        })
    } else if first == "event" {
        let name = tokens.next().expect("`event` needs a name");
        check_request::Action::Event(name.into())
    } else {
        check_request::Action::Permission(first.into())
    };
    let mut req = pb::CheckRequest {
        subject: subject.into(),
        action: Some(action),
        ..Default::default()
    };
    for modifier in tokens {
        let (key, value) = modifier
            .split_once('=')
            .unwrap_or_else(|| panic!("bad modifier `{modifier}`"));
        match key {
            "scope" => req.scope = value.into(),
            "resource" => req.resource = value.into(),
            "type" => req.subject_type = value.into(),
            "roles" => req.roles = value.split(',').map(str::to_owned).collect(),
            other => panic!("unknown modifier `{other}`"),
        }
    }
    req
}

/// One statement built in code.
pub fn statement(subject: &str, action: &str, allowed: bool) -> Statement {
    Statement {
        text: format!(
            "{subject} | {action} | {}",
            if allowed { "allow" } else { "deny" }
        ),
        request: request(subject, action),
        allowed,
        reason: None,
    }
}

/// Parses a table with one statement a line: `subject | action | allow|deny [| reason piece]`.
/// Blank lines and lines starting with `#` are skipped.
pub fn table(text: &str) -> Vec<Statement> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            assert!(
                cols.len() == 3 || cols.len() == 4,
                "statement `{line}` needs 3 or 4 columns"
            );
            let allowed = match cols[2] {
                "allow" => true,
                "deny" => false,
                other => panic!("`{line}`: expected allow or deny, got `{other}`"),
            };
            Statement {
                text: line.to_owned(),
                request: request(cols[0], cols[1]),
                allowed,
                reason: cols.get(3).map(|r| r.to_string()),
            }
        })
        .collect()
}

/// Sends every statement's Check; panics listing every mismatch. Returns how many were replayed.
pub async fn replay(client: &mut AuthzClient<Channel>, statements: &[Statement]) -> usize {
    let mut failures = String::new();
    for s in statements {
        match client.check(s.request.clone()).await {
            Ok(response) => {
                let got = response.into_inner();
                let reason_ok = s
                    .reason
                    .as_deref()
                    .is_none_or(|piece| got.reason.contains(piece));
                if got.allowed != s.allowed || !reason_ok {
                    let _ = writeln!(
                        failures,
                        "  {}\n    got {} because `{}`",
                        s.text,
                        if got.allowed { "allow" } else { "deny" },
                        got.reason
                    );
                }
            }
            Err(status) => {
                let _ = writeln!(failures, "  {}\n    got error {status}", s.text);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "statements that do not hold:\n{failures}"
    );
    statements.len()
}

/// Every permission a role holds as written (enabled grants, or all minus except), before
/// `implies` closes it.
pub fn role_set(policy: &Policy, role: &str) -> Vec<String> {
    let role = policy
        .role(role)
        .unwrap_or_else(|| panic!("role `{role}` exists"));
    if role.all {
        policy
            .catalog
            .permissions
            .iter()
            .map(|p| p.name.clone())
            .filter(|n| !role.except.contains(n))
            .collect()
    } else {
        role.grants
            .iter()
            .filter(|g| g.enabled)
            .map(|g| g.permission.clone())
            .collect()
    }
}

/// Statement counts, printed so that `cargo test -- --nocapture` shows what was replayed.
pub fn report(test: &str, count: usize) {
    println!("{test}: {count} statements replayed");
}
