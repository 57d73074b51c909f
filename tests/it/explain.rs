//! Explain (`CheckRequest.explain`): the trace walks the same rules as the decision, and its
//! verdict and reason are the decision's for every request asked of the examples and for every
//! line of the hostile-path corpus. Over the wire, the explanation comes only when asked.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::path::PathBuf;

use authz_sidecar::api::pb;
use authz_sidecar::engine::{Action, Decision, Explanation, Inline, Request, Snapshot, StepKind};
use authz_sidecar::model::file::load_policy_file;
use authz_sidecar::model::{CanonicalPath, PathOptions, Policy};
use common::corpus;
use common::*;

const EXAMPLES: &[&str] = &[
    "carbon-credit-apps",
    "iot-roles",
    "iot-user-types",
    "monitoring-apps",
    "sdk-accounts",
];

fn example(name: &str) -> Policy {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.yaml"));
    load_policy_file(&path).expect("example is valid")
}

/// Decides and explains `req`, and returns a mismatch, if any.
fn compare(snapshot: &Snapshot, req: &Request<'_>) -> Option<String> {
    let decision = snapshot.decide(req);
    let explanation = snapshot.explain(req);
    let same = decision.allowed == explanation.allowed
        && decision.reason.to_string() == explanation.reason
        && decision
            .required
            .ids()
            .map(|id| snapshot.permission_name(id).to_owned())
            .eq(explanation.required.iter().cloned());
    (!same).then(|| {
        format!(
            "{req:?}: decide says {} ({}), explain says {} ({})",
            decision.allowed, decision.reason, explanation.allowed, explanation.reason
        )
    })
}

/// Concrete paths for an endpoint template or path rule: `{param}` and `*` filled with
/// `fill`, and the pattern's `$` dropped.
fn concrete(pattern: &str, fill: &str) -> String {
    pattern
        .trim_end_matches('$')
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') || seg == "*" || seg == "**" {
                fill.to_owned()
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn explain_reaches_the_verdict_of_decide_on_every_example() {
    let mut wrong = Vec::new();
    let mut asked = 0usize;
    for name in EXAMPLES {
        let policy = example(name);
        let snapshot = Snapshot::compile(&policy, 1);
        let mut subjects: Vec<String> = policy.subjects.iter().map(|s| s.id.clone()).collect();
        subjects.push("nobody-at-all".into());
        let mut scopes: Vec<Option<String>> = vec![None, Some("not-a-granted-scope".into())];
        for role in &policy.roles {
            for grant in role.grants.iter().chain(&role.pending) {
                scopes.extend(grant.projects.iter().cloned().map(Some));
            }
            scopes.extend(role.installed_in.iter().cloned().map(Some));
        }
        scopes.sort();
        scopes.dedup();
        let mut resources: Vec<Option<String>> = vec![None, Some("collections/none".into())];
        for s in &policy.subjects {
            resources.extend(s.resources.iter().map(|r| Some(r.resource.clone())));
        }
        resources.sort();
        resources.dedup();
        let mut http: Vec<(String, String)> = Vec::new();
        let patterns = policy
            .catalog
            .permissions
            .iter()
            .flat_map(|p| p.endpoints.iter().cloned())
            .filter_map(|e| e.split_once(' ').map(|(m, p)| (m.to_owned(), p.to_owned())))
            .chain(policy.roles.iter().flat_map(|r| {
                r.paths.iter().flat_map(|rule| {
                    ["GET", "POST", "PUT", "DELETE", "OPTIONS", "BREW"]
                        .map(|m| (m.to_owned(), rule.path.clone()))
                })
            }));
        for (method, pattern) in patterns {
            for fill in subjects.iter().take(3).map(String::as_str).chain(["x1"]) {
                http.push((method.clone(), concrete(&pattern, fill)));
            }
        }
        http.sort();
        http.dedup();
        let mut actions: Vec<(&str, String)> = Vec::new();
        for p in &policy.catalog.permissions {
            actions.push(("permission", p.name.clone()));
            actions.extend(p.events.iter().map(|e| ("event", e.clone())));
        }
        actions.push(("permission", "no:such-permission".into()));
        actions.push(("event", "no.such.event".into()));
        let role_names: Vec<String> = policy.roles.iter().map(|r| r.name.clone()).collect();
        let types: Vec<String> = policy
            .subjects
            .iter()
            .map(|s| s.subject_type.clone())
            .collect();

        let mut run = |req: &Request<'_>| {
            asked += 1;
            if let Some(m) = compare(&snapshot, req) {
                wrong.push(format!("{name}: {m}"));
            }
        };
        let inline_sets: Vec<Vec<String>> = role_names
            .iter()
            .map(|r| vec![r.clone()])
            .chain([vec!["no-such-role".to_owned()], role_names.clone()])
            .collect();
        for subject in &subjects {
            let inlines: Vec<Option<Inline<'_>>> = std::iter::once(None)
                .chain(
                    (subject == "nobody-at-all")
                        .then(|| {
                            inline_sets.iter().flat_map(|roles| {
                                types.iter().take(2).map(move |t| {
                                    Some(Inline {
                                        roles,
                                        subject_type: t,
                                    })
                                })
                            })
                        })
                        .into_iter()
                        .flatten(),
                )
                .collect();
            for inline in &inlines {
                for scope in &scopes {
                    for resource in &resources {
                        for (kind, value) in &actions {
                            let action = match *kind {
                                "event" => Action::Event(value),
                                _ => Action::Permission(value),
                            };
                            run(&Request {
                                subject,
                                action,
                                scope: scope.as_deref(),
                                resource: resource.as_deref(),
                                inline: *inline,
                            });
                        }
                    }
                }
                for (method, raw) in &http {
                    let Ok(path) = CanonicalPath::parse(raw, PathOptions::default()) else {
                        continue;
                    };
                    run(&Request {
                        subject,
                        action: Action::Http {
                            method,
                            path: &path,
                        },
                        scope: None,
                        resource: None,
                        inline: *inline,
                    });
                }
            }
        }
    }
    assert!(asked > 1_000, "only {asked} requests compared");
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn explain_reaches_the_verdict_of_decide_on_the_hostile_corpus() {
    let tricks = corpus::corpus();
    assert!(tricks.len() >= 100, "only {} tricks", tricks.len());
    let mut wrong = Vec::new();
    for name in ["iot-roles", "monitoring-apps"] {
        let snapshot = Snapshot::compile(&example(name), 1);
        for t in tricks.iter().filter(|t| t.example == name) {
            let explanation = match CanonicalPath::parse(&t.path, PathOptions::default()) {
                Ok(path) => {
                    let req = Request {
                        subject: &t.subject,
                        action: Action::Http {
                            method: &t.method,
                            path: &path,
                        },
                        scope: None,
                        resource: None,
                        inline: None,
                    };
                    if let Some(m) = compare(&snapshot, &req) {
                        wrong.push(format!("line {}: {m}", t.line));
                    }
                    let e = snapshot.explain(&req);
                    assert_eq!(e.canonical_path.as_deref(), Some(path.as_str()));
                    e
                }
                Err(rejection) => {
                    let e = Explanation::refused_path(&t.subject, rejection);
                    let d = Decision::refused_path(rejection);
                    assert_eq!(
                        (e.allowed, e.reason.clone()),
                        (d.allowed, d.reason.to_string())
                    );
                    e
                }
            };
            if explanation.allowed != t.allow {
                wrong.push(format!(
                    "line {}: {} {} {} explained as allowed={} ({})",
                    t.line, t.subject, t.method, t.path, explanation.allowed, explanation.reason
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_trace_names_roles_rules_scope_and_the_canonical_path() {
    let policy = example("iot-roles");
    let snapshot = Snapshot::compile(&policy, 1);
    let path = CanonicalPath::parse("/users/alice/?next=/x", PathOptions::default()).unwrap();
    let e = snapshot.explain(&Request {
        subject: "alice",
        action: Action::Http {
            method: "GET",
            path: &path,
        },
        scope: None,
        resource: None,
        inline: None,
    });
    assert!(e.allowed, "{e}");
    assert_eq!(e.canonical_path.as_deref(), Some("/users/alice"));
    assert_eq!(e.subject.source, "stored");
    assert!(!e.subject.roles.is_empty());
    let rule = e
        .steps
        .iter()
        .find(|s| s.kind == StepKind::PathRule && s.matched);
    assert!(rule.is_some(), "{e}");
    assert!(
        e.to_string().contains("canonical path: /users/alice"),
        "{e}"
    );

    // A scoped permission asked without a scope, then with one it is not granted for.
    let scoped = policy
        .catalog
        .permissions
        .iter()
        .find(|p| p.scoped)
        .expect("iot-roles has scoped permissions");
    let holder = policy
        .roles
        .iter()
        .find(|r| {
            r.grants
                .iter()
                .any(|g| g.enabled && g.permission == scoped.name && !g.projects.is_empty())
        })
        .expect("a role grants it for some project");
    let roles = vec![holder.name.clone()];
    for (scope, why) in [
        (None, "names no scope"),
        (Some("elsewhere"), "not admitted"),
    ] {
        let e = snapshot.explain(&Request {
            subject: "token-1",
            action: Action::Permission(&scoped.name),
            scope,
            resource: None,
            inline: Some(Inline {
                roles: &roles,
                subject_type: "",
            }),
        });
        assert!(!e.allowed);
        assert_eq!(e.subject.source, "inline");
        assert_eq!(e.subject.roles, roles);
        let step = e.steps.iter().find(|s| s.kind == StepKind::Scope).unwrap();
        assert!(step.detail.contains(why), "{e}");
    }
}

fn policy_text(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.yaml")),
    )
    .expect("example exists")
}

#[tokio::test]
async fn check_returns_the_explanation_only_when_asked() {
    let sidecar = start(&policy_text("iot-roles")).await;
    let mut client = sidecar.client().await;

    let plain = check(&mut client, http("alice", "GET", "/users/alice/")).await;
    assert!(plain.allowed);
    assert!(plain.explanation.is_none());

    let asked = check(
        &mut client,
        pb::CheckRequest {
            explain: true,
            ..http("alice", "GET", "/users/alice/")
        },
    )
    .await;
    assert_eq!(
        (asked.allowed, &asked.reason),
        (plain.allowed, &plain.reason)
    );
    let e = asked.explanation.expect("explanation when asked");
    assert_eq!(e.canonical_path, "/users/alice");
    assert_eq!(e.subject, "alice");
    assert_eq!(e.subject_source, "stored");
    assert!(e.steps.iter().any(|s| s.kind == "path_rule" && s.matched));

    // A refused path: the same denial, and the trace says no rule was consulted.
    let refused = check(
        &mut client,
        pb::CheckRequest {
            explain: true,
            ..http("alice", "GET", "/users/alice/../bob")
        },
    )
    .await;
    assert!(!refused.allowed);
    let e = refused.explanation.unwrap();
    assert!(e.canonical_path.is_empty());
    assert!(e.steps[0].detail.contains("refused"), "{e:?}");

    // Batch items may ask too; the others stay plain.
    let batch = client
        .check_batch(pb::CheckBatchRequest {
            items: vec![
                permission("alice", "global_read"),
                pb::CheckRequest {
                    explain: true,
                    ..permission("alice", "global_read")
                },
            ],
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(batch.results[0].explanation.is_none());
    assert!(batch.results[1].explanation.is_some());
}

#[tokio::test]
async fn pending_grants_show_in_the_trace_as_not_effective() {
    let sidecar = start(&policy_text("monitoring-apps")).await;
    let mut client = sidecar.client().await;
    let roles = client
        .list_roles(pb::ListRolesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .roles;
    let role = roles
        .iter()
        .find(|r| r.requires_approval)
        .expect("an approval role");
    // Widen it: the grant waits for approval.
    let missing = roles
        .iter()
        .flat_map(|r| r.permissions.iter())
        .flat_map(|p| std::iter::once(p).chain(p.children.iter()))
        .map(|p| p.name.clone())
        .find(|name| {
            !role
                .permissions
                .iter()
                .flat_map(|p| std::iter::once(p).chain(p.children.iter()))
                .any(|p| &p.name == name && p.enabled)
        })
        .expect("a permission the role lacks");
    let changed = client
        .update_permission(admin(set(&role.name, &missing, true, &[])))
        .await
        .expect("the widening is accepted as pending")
        .into_inner();
    assert!(changed.pending_approval);
    let e = check(
        &mut client,
        pb::CheckRequest {
            explain: true,
            roles: vec![role.name.clone()],
            subject_type: "app".into(),
            ..permission("token", &missing)
        },
    )
    .await;
    assert!(!e.allowed);
    let trace = e.explanation.unwrap();
    let pending = trace
        .steps
        .iter()
        .find(|s| s.kind == "pending" && s.rule == missing)
        .expect("the pending grant is in the trace");
    assert!(pending.matched, "{pending:?}");
    assert!(pending.detail.contains("waits for approval"));
}
