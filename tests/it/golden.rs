//! Golden decisions for the five example policies, computed in-process by the engine: every
//! subject × every catalog permission (with each granted scope and each shared resource), every
//! catalog endpoint, every event and every application-user path rule with each method. The
//! rendering is compared byte for byte with `tests/golden/<example>.txt`; run with
//! `UPDATE_GOLDEN=1` to rewrite the files, then read the diff: it is the review.
//! The same cases are replayed over gRPC against the real server, which must agree.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::fmt::Write as _;
use std::path::PathBuf;

use authz_sidecar::api::pb::{self, check_request};
use authz_sidecar::engine::{Action, Decision, Request, Snapshot};
use authz_sidecar::model::file::load_policy_file;
use authz_sidecar::model::{CanonicalPath, PathOptions, Policy};

const EXAMPLES: [&str; 5] = [
    "monitoring-apps",
    "iot-user-types",
    "carbon-credit-apps",
    "sdk-accounts",
    "iot-roles",
];

/// A scope id that matches the catalog pattern but no grant lists.
const FOREIGN_SCOPE: &str = "Xh5qRBqc4DcmbNbAANtMnrYm";
/// A resource no subject holds an access role on.
const FOREIGN_RESOURCE: &str = "collections/unshared";
const PATH_METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_file(example: &str) -> PathBuf {
    root().join("examples").join(format!("{example}.yaml"))
}

fn load(example: &str) -> Policy {
    load_policy_file(&example_file(example)).unwrap_or_else(|e| panic!("{example} is valid:\n{e}"))
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// A concrete request path for an endpoint template or a path-rule pattern.
fn concrete(pattern: &str, user: &str) -> String {
    let body = pattern.strip_suffix('$').unwrap_or(pattern);
    body.split('/')
        .map(|seg| match seg {
            "*" => "x1",
            "{user}" => user,
            s if s.starts_with('{') && s.ends_with('}') => "x1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// An HTTP action on a path the templates and rules produce (always canonical).
fn http(method: &'static str, path: &str) -> Act {
    let canonical = CanonicalPath::parse(path, PathOptions::default())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .into_owned();
    Act::Http(method, path.to_owned(), canonical)
}

/// What one case asks.
enum Act {
    Permission(String),
    Http(&'static str, String, CanonicalPath<'static>),
    Event(String),
}

/// One decision of the golden list.
struct Case {
    subject: String,
    act: Act,
    scope: Option<String>,
    resource: Option<String>,
    label: String,
}

impl Case {
    fn request(&self) -> Request<'_> {
        let action = match &self.act {
            Act::Permission(name) => Action::Permission(name),
            Act::Http(method, _, path) => Action::Http { method, path },
            Act::Event(name) => Action::Event(name),
        };
        Request {
            subject: &self.subject,
            action,
            scope: self.scope.as_deref(),
            resource: self.resource.as_deref(),
            inline: None,
        }
    }

    fn check_request(&self) -> pb::CheckRequest {
        let action = match &self.act {
            Act::Permission(name) => check_request::Action::Permission(name.clone()),
            Act::Http(method, path, _) => check_request::Action::Http(pb::HttpRequest {
                method: method.to_string(),
                path: path.clone(),
            }),
            Act::Event(name) => check_request::Action::Event(name.clone()),
        };
        pb::CheckRequest {
            subject: self.subject.clone(),
            action: Some(action),
            scope: self.scope.clone().unwrap_or_default(),
            resource: self.resource.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// The deterministic case list of one example, subject by subject.
fn cases(policy: &Policy) -> Vec<Case> {
    let catalog = &policy.catalog;
    let mut scopes: Vec<String> = Vec::new();
    for role in &policy.roles {
        for grant in &role.grants {
            for project in &grant.projects {
                push_unique(&mut scopes, project.clone());
            }
        }
    }
    scopes.sort();
    if catalog.permissions.iter().any(|p| p.scoped) {
        scopes.push(FOREIGN_SCOPE.into());
    }
    let mut resources: Vec<String> = Vec::new();
    for subject in &policy.subjects {
        for rr in &subject.resources {
            push_unique(&mut resources, rr.resource.clone());
        }
    }
    resources.sort();
    if !resources.is_empty() {
        resources.push(FOREIGN_RESOURCE.into());
    }
    let mut endpoints: Vec<String> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    for p in &catalog.permissions {
        for e in &p.endpoints {
            push_unique(&mut endpoints, e.clone());
        }
        for e in &p.events {
            push_unique(&mut events, e.clone());
        }
    }
    let mut path_rules: Vec<String> = Vec::new();
    for role in &policy.roles {
        for rule in &role.paths {
            push_unique(&mut path_rules, rule.path.clone());
        }
    }

    let mut out = Vec::new();
    for subject in &policy.subjects {
        let case = |act, scope: Option<&String>, resource: Option<&String>, label: String| Case {
            subject: subject.id.clone(),
            act,
            scope: scope.cloned(),
            resource: resource.cloned(),
            label,
        };
        for p in &catalog.permissions {
            let perm = || Act::Permission(p.name.clone());
            out.push(case(perm(), None, None, p.name.clone()));
            if p.scoped {
                for scope in &scopes {
                    out.push(case(
                        perm(),
                        Some(scope),
                        None,
                        format!("{} scope={scope}", p.name),
                    ));
                }
            }
            for resource in &resources {
                out.push(case(
                    perm(),
                    None,
                    Some(resource),
                    format!("{} resource={resource}", p.name),
                ));
            }
        }
        for endpoint in &endpoints {
            let (method, template) = endpoint.split_once(' ').expect("METHOD /path");
            let method = PATH_METHODS
                .into_iter()
                .chain(["PATCH", "HEAD"])
                .find(|m| *m == method)
                .expect("a routed method");
            let path = concrete(template, &subject.id);
            out.push(case(
                http(method, &path),
                None,
                None,
                format!("{method} {path}"),
            ));
        }
        for event in &events {
            out.push(case(
                Act::Event(event.clone()),
                None,
                None,
                format!("event {event}"),
            ));
        }
        for pattern in &path_rules {
            let path = concrete(pattern, &subject.id);
            for method in PATH_METHODS {
                out.push(case(
                    http(method, &path),
                    None,
                    None,
                    format!("{method} {path}"),
                ));
            }
        }
    }
    out
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

fn line(out: &mut String, snapshot: &Snapshot, case: &Case, d: &Decision<'_>) {
    let required: Vec<&str> = d
        .required
        .ids()
        .map(|id| snapshot.permission_name(id))
        .collect();
    let _ = writeln!(
        out,
        "{} {} -> {}: {} [required: {}]",
        case.subject,
        case.label,
        verdict(d.allowed),
        d.reason,
        required.join(", ")
    );
}

/// The deterministic decision list of one example.
fn render(example: &str, policy: &Policy) -> String {
    let snapshot = Snapshot::compile(policy, 1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# examples/{example}.yaml: {} permissions, {} roles, {} subjects",
        policy.catalog.permissions.len(),
        policy.roles.len(),
        policy.subjects.len()
    );
    let mut current = "";
    for case in &cases(policy) {
        if case.subject != current {
            let subject = policy
                .subjects
                .iter()
                .find(|s| s.id == case.subject)
                .expect("subject");
            let _ = writeln!(
                out,
                "\n## {} (type `{}`, roles {:?})",
                subject.id, subject.subject_type, subject.roles
            );
            current = &subject.id;
        }
        line(&mut out, &snapshot, case, &snapshot.decide(&case.request()));
    }
    out
}

#[test]
fn decisions_match_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for example in EXAMPLES {
        let rendered = render(example, &load(example));
        // Deterministic: a second compile renders the same bytes.
        assert_eq!(
            rendered,
            render(example, &load(example)),
            "{example} renders deterministically"
        );
        let file = root()
            .join("tests")
            .join("golden")
            .join(format!("{example}.txt"));
        if update {
            std::fs::create_dir_all(file.parent().expect("dir")).expect("golden dir");
            std::fs::write(&file, &rendered).expect("write golden file");
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
                file.display()
            )
        });
        if want != rendered {
            let first = want
                .lines()
                .zip(rendered.lines())
                .enumerate()
                .find(|(_, (w, g))| w != g)
                .map(|(i, (w, g))| format!("line {}:\n  golden: {w}\n  now:    {g}", i + 1))
                .unwrap_or_else(|| {
                    format!(
                        "length differs: golden {} lines, now {}",
                        want.lines().count(),
                        rendered.lines().count()
                    )
                });
            stale.push(format!("{}: {first}", file.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        stale.join("\n")
    );
}

/// The server, seeded with each example file, answers every golden case as the engine does.
#[tokio::test]
async fn the_server_answers_every_golden_case_alike() {
    for example in EXAMPLES {
        let policy = load(example);
        let snapshot = Snapshot::compile(&policy, 1);
        let text = std::fs::read_to_string(example_file(example)).expect("example");
        let sc = common::start(&text).await;
        let mut client = sc.client().await;
        let mut mismatches = Vec::new();
        for case in cases(&policy) {
            let d = snapshot.decide(&case.request());
            let got = common::check(&mut client, case.check_request()).await;
            let required: Vec<&str> = d
                .required
                .ids()
                .map(|id| snapshot.permission_name(id))
                .collect();
            if got.allowed != d.allowed
                || got.reason != d.reason.to_string()
                || got.required != required
            {
                mismatches.push(format!(
                    "{} {}: server says {} `{}`",
                    case.subject,
                    case.label,
                    verdict(got.allowed),
                    got.reason
                ));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{example}:\n{}",
            mismatches.join("\n")
        );
        sc.sidecar.stop().await.expect("stop");
    }
}

#[test]
fn validate_accepts_every_example() {
    for example in EXAMPLES {
        let policy = load(example);
        assert!(!policy.catalog.permissions.is_empty(), "{example}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authz-sidecar"))
            .arg("validate")
            .arg(example_file(example))
            .env_remove("AUTHZ_ADMIN_TOKEN")
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{example}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok ("), "{example}: {stdout}");
    }
}
