//! A state-machine property test of the admin writes: random sequences of UpdatePermission,
//! PutSubject, DeleteSubject and ApprovePending (roles and subjects) through `LivePolicy` on a
//! real sled store, starting from `tests/fixtures/rules.yaml`. After every step, accepted or
//! refused:
//! - the whole state is one a policy file could hold (`model::validate` accepts it);
//! - the engine decides every probe as the reference evaluator (`tests/it/oracle/`) does;
//! - a refused write changed nothing (same revision, same decisions);
//! - a subject bound by approval (every role it holds before and after requires approval) is
//!   never allowed anything new unless the step was an ApprovePending.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::oracle;

use std::collections::BTreeMap;
use std::sync::Arc;

use authz_sidecar::engine::{Action, Request};
use authz_sidecar::live::{LivePolicy, Seed};
use authz_sidecar::model::file::parse_policy;
use authz_sidecar::model::{
    CanonicalPath, Grant, PathOptions, PathRule, PermissionChange, Policy, Subject, validate,
};
use authz_sidecar::store::SledStore;
use oracle::{Act, Query, decide};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};

const RULES: &str = include_str!("../fixtures/rules.yaml");
const ROLES: [&str; 7] = [
    "app-one",
    "operator",
    "installed",
    "base_app_user",
    "app_user",
    "extra-1",
    "ghost-role",
];
const PERMISSIONS: [&str; 6] = [
    "devices:read",
    "devices:write",
    "global_read",
    "gl_resource_update",
    "project_read",
    "organization_info",
];
const PROJECTS: [&str; 2] = ["Uh5qRBqc4DcmbNbAANtMnrYm", "VqbHsCwa8nXkT3pR5mYdEfGs"];
const SUBJECTS: [&str; 4] = ["app1", "op1", "user1", "new1"];
const TYPES: [&str; 3] = ["", "app", "installation"];
const PATHS: [(&str, &str); 6] = [
    ("/thngs", "r"),
    ("/thngs/*", "cru"),
    ("/thngs", "crud"),
    ("/v1/devices/*", "crud"),
    ("/admin", "crud"),
    ("/roles", "r"),
];
const HTTP: [(&str, &str); 9] = [
    ("GET", "/v1/devices/d1"),
    ("PATCH", "/v1/devices/d1"),
    ("DELETE", "/v1/devices/d1"),
    ("GET", "/thngs"),
    ("POST", "/thngs"),
    ("DELETE", "/thngs/t1"),
    ("PUT", "/thngs/t1"),
    ("DELETE", "/admin"),
    ("GET", "/roles"),
];

#[derive(Debug, Clone)]
enum Op {
    Set {
        role: usize,
        permission: usize,
        enabled: bool,
        projects: u8,
    },
    Paths {
        role: usize,
        rules: Vec<usize>,
    },
    Put {
        subject: usize,
        ty: usize,
        roles: Vec<usize>,
        only: Vec<usize>,
    },
    Delete {
        subject: usize,
    },
    ApproveRole {
        role: usize,
    },
    ApproveSubject {
        subject: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..ROLES.len(), 0..PERMISSIONS.len(), any::<bool>(), 0u8..4).prop_map(
            |(role, permission, enabled, projects)| Op::Set { role, permission, enabled, projects }
        ),
        3 => (0..ROLES.len(), proptest::collection::vec(0..PATHS.len(), 0..3))
            .prop_map(|(role, rules)| Op::Paths { role, rules }),
        4 => (
            0..SUBJECTS.len(),
            0..TYPES.len(),
            proptest::collection::vec(0..ROLES.len(), 0..3),
            prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(0..PERMISSIONS.len(), 1..3)],
        )
            .prop_map(|(subject, ty, roles, only)| Op::Put { subject, ty, roles, only }),
        1 => (0..SUBJECTS.len()).prop_map(|subject| Op::Delete { subject }),
        2 => (0..ROLES.len()).prop_map(|role| Op::ApproveRole { role }),
        2 => (0..SUBJECTS.len()).prop_map(|subject| Op::ApproveSubject { subject }),
    ]
}

fn pick<T: Clone>(all: &[T], mask: u8) -> Vec<T> {
    all.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, x)| x.clone())
        .collect()
}

/// Every probe: each permission with no scope and with each project, and each HTTP request.
fn probes(subject: &str) -> Vec<Query> {
    let mut out = Vec::new();
    for p in PERMISSIONS {
        for scope in [None, Some(PROJECTS[0]), Some(PROJECTS[1])] {
            out.push(Query {
                subject: subject.into(),
                act: Act::Permission(p.into()),
                scope: scope.map(str::to_owned),
                resource: None,
                inline: None,
            });
        }
    }
    for (m, path) in HTTP {
        out.push(Query {
            subject: subject.into(),
            act: Act::Http(m.into(), path.into()),
            scope: None,
            resource: None,
            inline: None,
        });
    }
    out
}

/// The engine's answers for every subject's probes; checked against the reference.
fn decisions(
    live: &LivePolicy,
    policy: &Policy,
) -> Result<BTreeMap<String, Vec<bool>>, TestCaseError> {
    let published = live.current();
    let mut out = BTreeMap::new();
    for s in SUBJECTS {
        let mut answers = Vec::new();
        for q in probes(s) {
            let canonical = match &q.act {
                Act::Http(_, p) => Some(
                    CanonicalPath::parse(p, PathOptions::default())
                        .expect("probe paths are canonical"),
                ),
                _ => None,
            };
            let action = match (&q.act, &canonical) {
                (Act::Permission(p), _) => Action::Permission(p),
                (Act::Http(m, _), Some(path)) => Action::Http { method: m, path },
                (Act::Http(..), None) => unreachable!("an HTTP probe has a canonical path"),
                (Act::Event(e), _) => Action::Event(e),
            };
            let got = published
                .snapshot
                .decide(&Request {
                    subject: &q.subject,
                    action,
                    scope: q.scope.as_deref(),
                    resource: None,
                    inline: None,
                })
                .allowed;
            let want = decide(policy, &q).allowed;
            prop_assert_eq!(got, want, "engine and reference disagree on {:?}", q);
            answers.push(got);
        }
        out.insert(s.to_owned(), answers);
    }
    Ok(out)
}

fn state(live: &LivePolicy, catalog: &Policy, subjects: &BTreeMap<String, Subject>) -> Policy {
    let published = live.current();
    Policy {
        roles: published.roles.as_ref().clone(),
        subjects: subjects.values().cloned().collect(),
        ..catalog.clone()
    }
}

/// Every role a subject holds requires approval (and it holds one).
fn approval_bound(policy: &Policy, subject: Option<&Subject>) -> bool {
    subject.is_some_and(|s| {
        !s.roles.is_empty()
            && s.roles
                .iter()
                .all(|r| policy.role(r).is_some_and(|r| r.requires_approval))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("ADMIN_STATE_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn admin_writes_keep_the_files_invariants(ops in proptest::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path()).expect("store"));
        let mut seed_policy = parse_policy("rules.yaml", RULES).expect("valid");
        seed_policy.normalize();
        let seed = Seed { policy: seed_policy.clone(), digest: "rules".into(), reloadable: false };
        let (live, _) = LivePolicy::open(store, &seed, None).expect("opens");
        // Admin writes are async (a fleet's go to etcd); the embedded ones run on this runtime.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut subjects: BTreeMap<String, Subject> =
            seed_policy.subjects.iter().map(|s| (s.id.clone(), s.clone())).collect();
        let mut before = state(&live, &seed_policy, &subjects);
        let mut answers = decisions(&live, &before)?;
        for op in ops {
            let revision = live.revision();
            let approving = matches!(op, Op::ApproveRole { .. } | Op::ApproveSubject { .. });
            let accepted = match &op {
                Op::Set { role, permission, enabled, projects } => runtime
                    .block_on(live.update_permission(
                        "prop",
                        ROLES[*role],
                        &PermissionChange::Set(Grant {
                            permission: PERMISSIONS[*permission].into(),
                            enabled: *enabled,
                            projects: pick(&PROJECTS, *projects).into_iter().map(str::to_owned).collect(),
                        }),
                        0,
                    ))
                    .is_ok(),
                Op::Paths { role, rules } => runtime
                    .block_on(live.update_permission(
                        "prop",
                        ROLES[*role],
                        &PermissionChange::ReplacePaths(
                            rules
                                .iter()
                                .map(|i| PathRule {
                                    path: PATHS[*i].0.into(),
                                    access: PATHS[*i].1.into(),
                                    default: false,
                                })
                                .collect(),
                        ),
                        0,
                    ))
                    .is_ok(),
                Op::Put { subject, ty, roles, only } => {
                    let s = Subject {
                        id: SUBJECTS[*subject].into(),
                        subject_type: TYPES[*ty].into(),
                        roles: roles.iter().map(|r| ROLES[*r].to_owned()).collect(),
                        only: only.iter().map(|p| PERMISSIONS[*p].to_owned()).collect(),
                        ..Subject::default()
                    };
                    match runtime.block_on(live.put_subject("prop", s, 0)) {
                        Ok((outcome, _)) => {
                            subjects.insert(outcome.subject.id.clone(), outcome.subject);
                            true
                        }
                        Err(_) => false,
                    }
                }
                Op::Delete { subject } => match runtime.block_on(live.delete_subject("prop", SUBJECTS[*subject], 0)) {
                    Ok(_) => {
                        subjects.remove(SUBJECTS[*subject]);
                        true
                    }
                    Err(_) => false,
                },
                Op::ApproveRole { role } => runtime.block_on(live.approve_pending("prop", ROLES[*role], 0)).is_ok(),
                Op::ApproveSubject { subject } => {
                    match runtime.block_on(live.approve_subject("prop", SUBJECTS[*subject], 0)) {
                        Ok((approved, _)) => {
                            subjects.insert(approved.id.clone(), approved);
                            true
                        }
                        Err(_) => false,
                    }
                }
            };
            let after = state(&live, &seed_policy, &subjects);
            prop_assert!(
                validate(&after).is_ok(),
                "after {:?} the state is one no policy file could hold: {:?}",
                op,
                validate(&after)
            );
            let now = decisions(&live, &after)?;
            if !accepted {
                prop_assert_eq!(live.revision(), revision, "a refused {:?} wrote", op);
                prop_assert_eq!(&now, &answers, "a refused {:?} changed a decision", op);
            }
            if !approving {
                for s in SUBJECTS {
                    let bound = approval_bound(&before, before.subjects.iter().find(|x| x.id == s))
                        && approval_bound(&after, after.subjects.iter().find(|x| x.id == s));
                    if !bound {
                        continue;
                    }
                    for (i, (was, is)) in answers[s].iter().zip(&now[s]).enumerate() {
                        prop_assert!(
                            *was || !*is,
                            "{:?} widened approval-bound `{}` without approval: probe {:?}",
                            op,
                            s,
                            probes(s)[i]
                        );
                    }
                }
            }
            before = after;
            answers = now;
        }
    }
}
