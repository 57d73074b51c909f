//! Who-can (`Snapshot::who_can`, ListSubjects with an action) against Check itself: on every
//! example policy, grown with synthetic subjects (several roles, overrides, per-resource access
//! roles, pending widenings, types the permissions do and do not apply to) and extra roles
//! (`all` with exceptions, scoped grants, `{user}` / `*` / anchored path rules), the subjects
//! who-can lists, paged with tiny pages and a tiny scan budget, are exactly those `decide`
//! allows, for every permission, event and HTTP request asked with every scope, resource and
//! filter. Then the same after incremental updates (`with_subject`, `with_roles`, a fold of the
//! overlay), so the reverse index stays right after admin writes.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use authz_sidecar::engine::{Action, Request, Snapshot, WhoCan};
use authz_sidecar::model::file::load_policy_file;
use authz_sidecar::model::{
    CanonicalPath, Grant, PathOptions, PathRule, PendingSubject, Policy, ResourceRole, Role,
    Subject,
};
use common::corpus;

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

/// A small deterministic generator (no seed files to keep in sync).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The example with extra roles and synthetic subjects.
fn grown(name: &str, rng: &mut Lcg) -> Policy {
    let mut policy = example(name);
    let perms: Vec<String> = policy
        .catalog
        .permissions
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let scoped: Vec<String> = policy
        .catalog
        .permissions
        .iter()
        .filter(|p| p.scoped)
        .map(|p| p.name.clone())
        .collect();
    let kind = policy.roles[0].kind.clone();
    let mut except = vec![perms[0].clone()];
    except.extend(scoped.first().cloned());
    policy.roles.push(Role {
        name: "wc-all-but".into(),
        kind: kind.clone(),
        all: true,
        except,
        ..Role::default()
    });
    policy.roles.push(Role {
        name: "wc-scoped".into(),
        kind: kind.clone(),
        grants: perms
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .map(|(i, p)| Grant {
                permission: p.clone(),
                enabled: i % 2 == 0,
                projects: vec!["p1".into(), "p2".into()],
            })
            .collect(),
        ..Role::default()
    });
    policy.roles.push(Role {
        name: "wc-paths".into(),
        kind,
        paths: [
            ("/users/{user}", "r"),
            ("/wc/{user}/items/*", "cru"),
            ("/wc/open$", "crud"),
            ("/wc/*/shared", "r"),
        ]
        .iter()
        .map(|(p, a)| PathRule {
            path: (*p).into(),
            access: (*a).into(),
            default: false,
        })
        .collect(),
        ..Role::default()
    });
    let roles: Vec<String> = policy.roles.iter().map(|r| r.name.clone()).collect();
    let mut types: Vec<String> = policy
        .catalog
        .permissions
        .iter()
        .flat_map(|p| p.applies_to.iter().cloned())
        .chain(policy.subjects.iter().map(|s| s.subject_type.clone()))
        .chain(["wc-other".to_owned()])
        .collect();
    types.sort();
    types.dedup();
    let resources = ["collections/c1", "collections/c2"];
    for i in 0..70 {
        let mut held: Vec<String> = (0..1 + rng.below(3))
            .map(|_| rng.pick(&roles).clone())
            .collect();
        held.sort();
        held.dedup();
        let only = if rng.below(5) == 0 {
            (0..1 + rng.below(4))
                .map(|_| rng.pick(&perms).clone())
                .collect()
        } else {
            Vec::new()
        };
        let resources = if rng.below(4) == 0 {
            vec![ResourceRole {
                resource: rng.pick(&resources).to_string(),
                role: rng.pick(&roles).clone(),
            }]
        } else {
            Vec::new()
        };
        let pending = (rng.below(6) == 0).then(|| PendingSubject {
            roles: vec![rng.pick(&roles).clone()],
            ..PendingSubject::default()
        });
        policy.subjects.push(Subject {
            // `x1` and `wc-7` are also path segments below: `{user}` rules name them.
            id: if i == 0 {
                "x1".into()
            } else {
                format!("wc-{i}")
            },
            subject_type: rng.pick(&types).clone(),
            roles: held,
            only,
            resources,
            pending,
        });
    }
    policy
}

/// Concrete paths for an endpoint template or path rule, `{param}`/`*` filled with `fill`.
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

/// What is asked, owned (HTTP paths are canonicalized per query).
enum Asked {
    Permission(String),
    Event(String),
    Http(String, String),
}

fn questions(policy: &Policy, name: &str) -> Vec<Asked> {
    let mut asked = Vec::new();
    for p in &policy.catalog.permissions {
        asked.push(Asked::Permission(p.name.clone()));
        asked.extend(p.events.iter().map(|e| Asked::Event(e.clone())));
    }
    asked.push(Asked::Permission("no:such-permission".into()));
    asked.push(Asked::Event("no.such.event".into()));
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
    let mut http: Vec<(String, String)> = Vec::new();
    let fills: Vec<&str> = policy
        .subjects
        .iter()
        .take(3)
        .map(|s| s.id.as_str())
        .chain(["x1", "wc-7", "nobody"])
        .collect();
    for (method, pattern) in patterns {
        for fill in &fills {
            http.push((method.clone(), concrete(&pattern, fill)));
        }
    }
    http.push(("GET".into(), "/wc/wc-7/items/x/shared".into()));
    http.push(("GET".into(), "/wc/x1/shared".into()));
    for t in corpus::corpus().into_iter().filter(|t| t.example == name) {
        http.push((t.method, t.path));
    }
    http.sort();
    http.dedup();
    asked.extend(http.into_iter().map(|(m, p)| Asked::Http(m, p)));
    asked
}

struct Filters {
    scopes: Vec<Option<String>>,
    resources: Vec<Option<String>>,
    types: Vec<Option<String>>,
    roles: Vec<Option<String>>,
}

fn filters(policy: &Policy) -> Filters {
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
    let mut types: Vec<Option<String>> = vec![None];
    types.extend(
        policy
            .subjects
            .iter()
            .take(2)
            .map(|s| Some(s.subject_type.clone())),
    );
    let roles = vec![
        None,
        Some(policy.roles[0].name.clone()),
        Some("no-such-role".into()),
    ];
    Filters {
        scopes,
        resources,
        types,
        roles,
    }
}

/// Every page of who-can for `q`, checking order, page bounds and termination.
fn page_all(snapshot: &Snapshot, q: &WhoCan<'_>, limit: usize, budget: usize) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100_000 {
        let page = snapshot.who_can_within(q, after.as_deref(), limit, budget);
        assert!(page.subjects.len() <= limit, "page over its limit");
        assert!(page.examined <= budget + 1, "scan over its budget");
        all.extend(page.subjects);
        match page.resume_after {
            None => {
                assert!(
                    all.windows(2).all(|w| w[0] < w[1]),
                    "ids ascend, each once: {all:?}"
                );
                return all;
            }
            Some(next) => {
                assert!(
                    after.as_deref().is_none_or(|a| next.as_str() > a),
                    "progress"
                );
                after = Some(next);
            }
        }
    }
    panic!("who-can did not finish paging");
}

/// Compares who-can with `decide` over `subjects` for every question; returns mismatches.
fn differential(
    snapshot: &Snapshot,
    policy_subjects: &BTreeMap<String, Subject>,
    asked: &[Asked],
    f: &Filters,
    paging: &[(usize, usize)],
) -> (usize, Vec<String>) {
    let mut wrong = Vec::new();
    let mut compared = 0;
    for a in asked {
        let path;
        let action = match a {
            Asked::Permission(p) => Action::Permission(p),
            Asked::Event(e) => Action::Event(e),
            Asked::Http(m, raw) => match CanonicalPath::parse(raw, PathOptions::default()) {
                Ok(p) => {
                    path = p;
                    Action::Http {
                        method: m,
                        path: &path,
                    }
                }
                // A refused path is a denial before any rule: the API lists nobody.
                Err(_) => continue,
            },
        };
        let resources: &[Option<String>] = match a {
            Asked::Http(..) => &[None],
            _ => &f.resources,
        };
        for scope in &f.scopes {
            for resource in resources {
                for (ti, subject_type) in f.types.iter().enumerate() {
                    for (ri, role) in f.roles.iter().enumerate() {
                        // Filters combined one at a time keep the run short.
                        if ti > 0 && ri > 0 {
                            continue;
                        }
                        let q = WhoCan {
                            action,
                            scope: scope.as_deref(),
                            resource: resource.as_deref(),
                            subject_type: subject_type.as_deref(),
                            role: role.as_deref(),
                        };
                        let want: Vec<String> = policy_subjects
                            .values()
                            .filter(|s| subject_type.as_ref().is_none_or(|t| s.subject_type == *t))
                            .filter(|s| {
                                role.as_ref().is_none_or(|r| {
                                    s.roles.contains(r) || s.resources.iter().any(|x| x.role == *r)
                                })
                            })
                            .filter(|s| {
                                snapshot
                                    .decide(&Request {
                                        subject: &s.id,
                                        action,
                                        scope: scope.as_deref(),
                                        resource: resource.as_deref(),
                                        inline: None,
                                    })
                                    .allowed
                            })
                            .map(|s| s.id.clone())
                            .collect();
                        for &(limit, budget) in paging {
                            compared += 1;
                            let got = page_all(snapshot, &q, limit, budget);
                            if got != want {
                                wrong.push(format!(
                                    "{q:?} (page {limit}, budget {budget}): who-can {got:?}, \
                                     Check allows {want:?}"
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    (compared, wrong)
}

fn subjects_of(policy: &Policy) -> BTreeMap<String, Subject> {
    policy
        .subjects
        .iter()
        .map(|s| (s.id.clone(), s.clone()))
        .collect()
}

#[test]
fn who_can_lists_exactly_the_subjects_check_allows_on_every_example() {
    let mut rng = Lcg(0x5eed);
    let mut total = 0;
    let mut allowed_somewhere = 0;
    for name in EXAMPLES {
        let policy = grown(name, &mut rng);
        let snapshot = Snapshot::compile(&policy, 1);
        let subjects = subjects_of(&policy);
        let asked = questions(&policy, name);
        let f = filters(&policy);
        let (compared, wrong) =
            differential(&snapshot, &subjects, &asked, &f, &[(1000, 100_000), (2, 3)]);
        assert!(
            wrong.is_empty(),
            "{name}: {} mismatches:\n{}",
            wrong.len(),
            {
                let mut w = wrong.clone();
                w.truncate(20);
                w.join("\n")
            }
        );
        total += compared;
        // The comparison is not vacuous: some questions have allowed subjects.
        allowed_somewhere += asked
            .iter()
            .filter(|a| matches!(a, Asked::Permission(_)))
            .filter(|a| {
                let Asked::Permission(p) = a else {
                    return false;
                };
                let q = WhoCan {
                    action: Action::Permission(p),
                    scope: None,
                    resource: None,
                    subject_type: None,
                    role: None,
                };
                !snapshot.who_can(&q, None, 10).subjects.is_empty()
            })
            .count();
    }
    assert!(total > 5_000, "only {total} questions compared");
    assert!(allowed_somewhere > 20, "only {allowed_somewhere} allowed");
}

#[test]
fn who_can_stays_exact_through_subject_and_role_writes_and_folds() {
    let mut rng = Lcg(0xfeed);
    for name in ["iot-roles", "monitoring-apps", "sdk-accounts"] {
        let mut policy = grown(name, &mut rng);
        let mut snapshot = Snapshot::compile(&policy, 1);
        let asked: Vec<Asked> = questions(&policy, name)
            .into_iter()
            .filter(|a| !matches!(a, Asked::Http(..)) || rng.below(8) == 0)
            .collect();
        let f = Filters {
            types: vec![None],
            roles: vec![None],
            ..filters(&policy)
        };
        let roles: Vec<String> = policy.roles.iter().map(|r| r.name.clone()).collect();
        let mut subjects = subjects_of(&policy);
        // Build the reverse index first, so the writes below go over an indexed base.
        let (_, wrong) = differential(&snapshot, &subjects, &asked, &f, &[(3, 5)]);
        assert!(
            wrong.is_empty(),
            "{name} before writes: {}",
            wrong.join("\n")
        );
        for step in 0..30u64 {
            let revision = step + 2;
            match rng.below(6) {
                // A new subject, or one replaced with other roles.
                0 | 1 => {
                    let id = if rng.below(2) == 0 {
                        format!("wc-new-{step}")
                    } else {
                        rng.pick(&subjects.keys().cloned().collect::<Vec<_>>())
                            .clone()
                    };
                    let subject = Subject {
                        id: id.clone(),
                        subject_type: policy.subjects[rng.below(policy.subjects.len())]
                            .subject_type
                            .clone(),
                        roles: vec![rng.pick(&roles).clone()],
                        ..Subject::default()
                    };
                    snapshot = snapshot.with_subject(&id, Some(&subject), revision);
                    subjects.insert(id, subject);
                }
                // A deletion.
                2 => {
                    let id = rng
                        .pick(&subjects.keys().cloned().collect::<Vec<_>>())
                        .clone();
                    snapshot = snapshot.with_subject(&id, None, revision);
                    subjects.remove(&id);
                }
                // A role's grant switched, or all its grants cleared (an approved narrowing).
                3 | 4 => {
                    let at = rng.below(policy.roles.len());
                    let role = &mut policy.roles[at];
                    if role.grants.is_empty() || rng.below(3) == 0 {
                        role.all = !role.all;
                    } else {
                        let g = rng.below(role.grants.len());
                        role.grants[g].enabled = !role.grants[g].enabled;
                    }
                    policy.subjects = subjects.values().cloned().collect();
                    snapshot = snapshot.with_roles(&policy, revision);
                }
                // The background fold of the overlay into a new base.
                _ => {
                    let folded = snapshot.compact_subjects();
                    snapshot = snapshot.with_compacted(&folded).expect("same lineage");
                }
            }
            let (_, wrong) = differential(&snapshot, &subjects, &asked, &f, &[(3, 5)]);
            assert!(
                wrong.is_empty(),
                "{name} after step {step}: {} mismatches:\n{}",
                wrong.len(),
                wrong
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

#[test]
fn a_user_rule_offers_only_the_subject_the_path_names() {
    // A role every subject holds with a `{user}` rule: who-can decides one candidate, not all.
    let mut policy = example("iot-roles");
    let kind = policy.roles[0].kind.clone();
    policy.roles.push(Role {
        name: "wc-self".into(),
        kind,
        paths: vec![PathRule {
            path: "/wc-self/{user}".into(),
            access: "r".into(),
            default: false,
        }],
        ..Role::default()
    });
    for i in 0..5000 {
        policy.subjects.push(Subject {
            id: format!("s-{i:05}"),
            subject_type: "wc".into(),
            roles: vec!["wc-self".into()],
            ..Subject::default()
        });
    }
    let snapshot = Snapshot::compile(&policy, 1);
    let path = CanonicalPath::parse("/wc-self/s-01234/profile", PathOptions::default()).unwrap();
    let q = WhoCan {
        action: Action::Http {
            method: "GET",
            path: &path,
        },
        scope: None,
        resource: None,
        subject_type: None,
        role: None,
    };
    let page = snapshot.who_can(&q, None, 100);
    assert_eq!(page.subjects, vec!["s-01234".to_owned()]);
    assert_eq!(page.examined, 1, "one candidate decided");
    assert_eq!(page.resume_after, None);
    let post = WhoCan {
        action: Action::Http {
            method: "POST",
            path: &path,
        },
        ..q
    };
    assert!(
        snapshot.who_can(&post, None, 100).subjects.is_empty(),
        "no `c`"
    );
}

#[test]
fn a_short_scan_budget_resumes_where_it_stopped() {
    let mut policy = example("monitoring-apps");
    let perm = policy
        .catalog
        .permissions
        .iter()
        .find(|p| !p.scoped && p.applies_to.is_empty() && p.requires.is_empty())
        .expect("a plain permission")
        .name
        .clone();
    let role = "wc-b".to_owned();
    policy.roles.push(Role {
        name: role.clone(),
        kind: policy.roles[0].kind.clone(),
        grants: vec![Grant {
            permission: perm.clone(),
            enabled: true,
            projects: Vec::new(),
        }],
        ..Role::default()
    });
    for i in 0..50 {
        policy.subjects.push(Subject {
            id: format!("b-{i:02}"),
            subject_type: "app".into(),
            roles: vec![role.clone()],
            // Every subject but the last two is narrowed away from the permission.
            only: if i < 48 {
                vec!["no:such".into()]
            } else {
                Vec::new()
            },
            ..Subject::default()
        });
    }
    let snapshot = Snapshot::compile(&policy, 1);
    let q = WhoCan {
        action: Action::Permission(&perm),
        scope: None,
        resource: None,
        subject_type: Some("app"),
        role: Some(&role),
    };
    let expected: Vec<String> = policy
        .subjects
        .iter()
        .filter(|s| s.subject_type == "app" && s.roles.contains(&role))
        .filter(|s| {
            snapshot
                .decide(&Request {
                    subject: &s.id,
                    action: Action::Permission(&perm),
                    scope: None,
                    resource: None,
                    inline: None,
                })
                .allowed
        })
        .map(|s| s.id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(expected.iter().any(|id| id == "b-49"), "{expected:?}");
    let first = snapshot.who_can_within(&q, None, 100, 10);
    assert_eq!(first.examined, 10);
    assert!(first.resume_after.is_some(), "stopped at the budget");
    assert_eq!(page_all(&snapshot, &q, 100, 10), expected);
}

mod over_grpc {
    use super::common::*;
    use authz_sidecar::api::pb;
    use authz_sidecar::model::file::EMBEDDED_DEFAULT;
    use pb::authz_client::AuthzClient;
    use pb::list_subjects_request::Action as A;
    use tonic::Code;
    use tonic::transport::Channel;

    fn who(action: A, page_size: i32, token: &str) -> pb::ListSubjectsRequest {
        pb::ListSubjectsRequest {
            page_size,
            page_token: token.into(),
            action: Some(action),
            ..Default::default()
        }
    }

    fn perm(p: &str) -> A {
        A::Permission(p.into())
    }

    fn http(method: &str, path: &str) -> A {
        A::Http(pb::HttpRequest {
            method: method.into(),
            path: path.into(),
        })
    }

    /// Every page of a who-can question, as ids.
    async fn ids(client: &mut AuthzClient<Channel>, action: A) -> Vec<String> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_subjects(admin(who(action.clone(), 1, &token)))
                .await
                .expect("who-can")
                .into_inner();
            out.extend(page.subjects.into_iter().map(|s| s.id));
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    #[tokio::test]
    async fn who_can_follows_check_through_admin_writes_and_approvals() {
        let sc = start(EMBEDDED_DEFAULT).await;
        let mut client = sc.client().await;
        assert_eq!(ids(&mut client, perm("alarms:write")).await, ["dispatcher"]);
        let dispatch = http("POST", "/v1/alarms/a1/dispatch");
        assert_eq!(ids(&mut client, dispatch.clone()).await, ["dispatcher"]);
        assert_eq!(
            ids(&mut client, A::Event("alarm.created".into())).await,
            [
                "ai-verifier",
                "compliance",
                "dashboard",
                "dispatcher",
                "readonly"
            ]
        );
        assert!(ids(&mut client, perm("no:such")).await.is_empty());

        // A widening waiting for approval allows nobody new; approved, it does.
        let r = client
            .update_permission(admin(set("app-dashboard", "alarms:write", true, &[])))
            .await
            .unwrap()
            .into_inner();
        assert!(r.pending_approval);
        assert_eq!(ids(&mut client, perm("alarms:write")).await, ["dispatcher"]);
        client
            .approve_pending(admin(pb::ApprovePendingRequest {
                role: "app-dashboard".into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(
            ids(&mut client, perm("alarms:write")).await,
            ["dashboard", "dispatcher"]
        );

        // A new app subject waits for its approval too; then it is listed; deleted, it is not.
        let put = client
            .put_subject(admin(pb::PutSubjectRequest {
                subject: Some(pb::Subject {
                    id: "a-new".into(),
                    r#type: "app".into(),
                    roles: vec!["app-dispatcher".into()],
                    ..Default::default()
                }),
                expected_revision: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(put.pending_approval);
        assert_eq!(
            ids(&mut client, dispatch.clone()).await,
            ["dashboard", "dispatcher"]
        );
        client
            .approve_pending(admin(pb::ApprovePendingRequest {
                subject: "a-new".into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(
            ids(&mut client, dispatch.clone()).await,
            ["a-new", "dashboard", "dispatcher"]
        );
        client
            .delete_subject(admin(pb::DeleteSubjectRequest {
                id: "dispatcher".into(),
                expected_revision: 0,
            }))
            .await
            .unwrap();
        let listed = ids(&mut client, dispatch.clone()).await;
        assert_eq!(listed, ["a-new", "dashboard"]);
        // Every listed subject is one Check allows, and the others are denied.
        for id in ["a-new", "dashboard", "dispatcher", "readonly"] {
            let allowed = check(&mut client, http_req(id, "POST", "/v1/alarms/a1/dispatch"))
                .await
                .allowed;
            assert_eq!(allowed, listed.iter().any(|l| l == id), "{id}");
        }

        // Subjects come back whole, with the revision of their last change; over the socket too.
        let mut uds = AuthzClient::new(sc.uds_channel().await);
        let page = uds
            .list_subjects(admin(who(dispatch, 10, "")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.subjects[0].id, "a-new");
        assert_eq!(page.subjects[0].roles, ["app-dispatcher"]);
        assert!(page.subjects[0].changed_revision > 1);
        assert!(page.next_page_token.is_empty());
    }

    fn http_req(subject: &str, method: &str, path: &str) -> pb::CheckRequest {
        super::common::http(subject, method, path)
    }

    #[tokio::test]
    async fn a_refused_path_allows_nobody_and_bad_questions_name_their_field() {
        let sc = start(EMBEDDED_DEFAULT).await;
        let mut client = sc.client().await;
        for path in ["/v1/alarms/a1/../a1/dispatch", "/v1/alarms/a1%2fx/dispatch"] {
            let check = check(&mut client, http_req("dispatcher", "POST", path)).await;
            assert!(!check.allowed, "{path}: {}", check.reason);
            let page = client
                .list_subjects(admin(who(http("POST", path), 10, "")))
                .await
                .unwrap()
                .into_inner();
            assert!(page.subjects.is_empty(), "{path}");
            assert!(page.next_page_token.is_empty());
        }
        let bad: Vec<(pb::ListSubjectsRequest, &str)> = vec![
            (who(perm(""), 1, ""), "permission"),
            (who(A::Event(String::new()), 1, ""), "event"),
            (who(http("", "/x"), 1, ""), "http.method"),
            (who(http("GET", "x"), 1, ""), "http.path"),
            (
                pb::ListSubjectsRequest {
                    scope: "p1".into(),
                    ..Default::default()
                },
                "action",
            ),
            (
                pb::ListSubjectsRequest {
                    scope: "s".repeat(300),
                    ..who(perm("devices:read"), 1, "")
                },
                "scope",
            ),
            (who(perm("devices:read"), 1, "garbage"), "page_token"),
        ];
        for (request, field) in bad {
            let err = client.list_subjects(admin(request)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
            assert!(
                err.message().starts_with(field),
                "{field}: {}",
                err.message()
            );
        }

        // A token answers only the question it was issued for.
        let first = client
            .list_subjects(admin(who(perm("devices:read"), 1, "")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.subjects.len(), 1);
        let token = first.next_page_token;
        assert!(!token.is_empty());
        for other in [
            who(perm("events:read"), 1, &token),
            pb::ListSubjectsRequest {
                scope: "p1".into(),
                ..who(perm("devices:read"), 1, &token)
            },
            pb::ListSubjectsRequest {
                page_token: token.clone(),
                ..Default::default()
            },
        ] {
            let err = client.list_subjects(admin(other)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().starts_with("page_token"), "{}", err.message());
        }
        let second = client
            .list_subjects(admin(who(perm("devices:read"), 1, &token)))
            .await
            .unwrap()
            .into_inner();
        assert!(second.subjects[0].id > first.subjects[0].id);

        // Who-can is an admin read like any ListSubjects.
        let err = client
            .list_subjects(tonic::Request::new(who(perm("devices:read"), 1, "")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
}

mod every_example_over_grpc {
    use super::common::*;
    use super::{EXAMPLES, concrete, example};
    use authz_sidecar::api::pb;
    use pb::list_subjects_request::Action as A;

    /// Over the wire (validation, the canonicalizer, the store read-back): for every example,
    /// every permission, event and HTTP request (endpoint templates filled, path rules, the
    /// hostile corpus, raw as a client sends them) with and without a scope, who-can lists
    /// exactly the stored subjects whose Check (as a CheckBatch item) is allowed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn who_can_answers_as_check_on_every_example() {
        let corpus = super::corpus::corpus();
        let mut compared = 0;
        for name in EXAMPLES {
            let policy = example(name);
            let sc = start(&super::corpus::example_text(name)).await;
            let mut client = sc.client().await;
            let stored: Vec<String> = client
                .list_subjects(admin(pb::ListSubjectsRequest {
                    page_size: 1000,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .subjects
                .into_iter()
                .map(|s| s.id)
                .collect();
            let mut actions: Vec<A> = Vec::new();
            for p in &policy.catalog.permissions {
                actions.push(A::Permission(p.name.clone()));
                actions.extend(p.events.iter().map(|e| A::Event(e.clone())));
                for e in &p.endpoints {
                    if let Some((m, path)) = e.split_once(' ') {
                        for fill in stored.iter().take(2).map(String::as_str).chain(["x1"]) {
                            actions.push(A::Http(pb::HttpRequest {
                                method: m.into(),
                                path: concrete(path, fill),
                            }));
                        }
                    }
                }
            }
            for r in &policy.roles {
                for rule in &r.paths {
                    for fill in stored.iter().take(3) {
                        for m in ["GET", "POST", "DELETE"] {
                            actions.push(A::Http(pb::HttpRequest {
                                method: m.into(),
                                path: concrete(&rule.path, fill),
                            }));
                        }
                    }
                }
            }
            for t in corpus.iter().filter(|t| t.example == *name) {
                actions.push(A::Http(pb::HttpRequest {
                    method: t.method.clone(),
                    path: t.path.clone(),
                }));
            }
            let mut scopes = vec![String::new()];
            scopes.extend(
                policy
                    .roles
                    .iter()
                    .flat_map(|r| r.grants.iter().flat_map(|g| g.projects.iter().cloned()))
                    .take(1),
            );
            for action in &actions {
                for scope in &scopes {
                    let listed: Vec<String> = client
                        .list_subjects(admin(pb::ListSubjectsRequest {
                            page_size: 1000,
                            action: Some(action.clone()),
                            scope: scope.clone(),
                            ..Default::default()
                        }))
                        .await
                        .unwrap_or_else(|e| panic!("{name} {action:?}: {e}"))
                        .into_inner()
                        .subjects
                        .into_iter()
                        .map(|s| s.id)
                        .collect();
                    let items: Vec<pb::CheckRequest> = stored
                        .iter()
                        .map(|id| pb::CheckRequest {
                            subject: id.clone(),
                            action: Some(match action.clone() {
                                A::Permission(p) => pb::check_request::Action::Permission(p),
                                A::Event(e) => pb::check_request::Action::Event(e),
                                A::Http(h) => pb::check_request::Action::Http(h),
                            }),
                            scope: scope.clone(),
                            ..Default::default()
                        })
                        .collect();
                    let answers = client
                        .check_batch(pb::CheckBatchRequest {
                            items,
                            min_revision: 0,
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .results;
                    let allowed: Vec<String> = stored
                        .iter()
                        .zip(&answers)
                        .filter(|(_, a)| a.allowed)
                        .map(|(id, _)| id.clone())
                        .collect();
                    assert_eq!(listed, allowed, "{name} {action:?} scope `{scope}`");
                    compared += 1;
                }
            }
        }
        assert!(compared > 300, "only {compared} questions");
    }
}
