//! Hostile inputs never crash anything: `parse_policy` on arbitrary bytes, on structured but
//! wrong documents and on mutations of a real policy always returns a policy or an error that
//! names the file; `Snapshot::decide` on arbitrary strings (unicode, NUL, long segments, odd
//! methods, many inline roles) never panics and still agrees with the reference evaluator; and
//! the real gRPC server answers random Check and admin requests with Ok or a client-error
//! status — never INTERNAL or UNKNOWN — and keeps serving.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;
use crate::oracle;

use std::sync::OnceLock;

use authz_sidecar::api::pb;
use authz_sidecar::engine::{Action, Decision, Inline, Request, Snapshot};
use authz_sidecar::model::file::parse_policy;
use authz_sidecar::model::{CanonicalPath, PathOptions, Policy};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;
use tonic::Code;

const FIXTURE: &str = include_str!("../fixtures/rules.yaml");
const EXAMPLES: [(&str, &str); 5] = [
    (
        "monitoring-apps",
        include_str!("../../examples/monitoring-apps.yaml"),
    ),
    (
        "iot-user-types",
        include_str!("../../examples/iot-user-types.yaml"),
    ),
    (
        "carbon-credit-apps",
        include_str!("../../examples/carbon-credit-apps.yaml"),
    ),
    (
        "sdk-accounts",
        include_str!("../../examples/sdk-accounts.yaml"),
    ),
    ("iot-roles", include_str!("../../examples/iot-roles.yaml")),
];

/// Words from the policies and the schema, so that random input often reaches deep paths.
const WORDS: &[&str] = &[
    "version",
    "catalog",
    "scope_pattern",
    "permissions",
    "name",
    "group",
    "kind",
    "read",
    "write",
    "endpoints",
    "events",
    "applies_to",
    "implies",
    "requires",
    "parent",
    "scoped",
    "required_for",
    "presets",
    "roles",
    "base",
    "all",
    "except",
    "grants",
    "permission",
    "enabled",
    "projects",
    "paths",
    "path",
    "access",
    "default",
    "requires_approval",
    "pending",
    "all_resources",
    "subjects",
    "id",
    "type",
    "only",
    "resources",
    "resource",
    "role",
    "admins",
    "token_sha256",
    "authz.roles.write",
    "devices:read",
    "devices:write",
    "global_read",
    "gl_resource_update",
    "project_read",
    "organization_info",
    "app-one",
    "operator",
    "installed",
    "base_app_user",
    "app_user",
    "extra-1",
    "app1",
    "op1",
    "user1",
    "GET /v1/devices/{id}",
    "/thngs/*",
    "/users/{user}",
    "/access$",
    "cru",
    "Uh5qRBqc4DcmbNbAANtMnrYm",
    "device.online",
    "installation",
    "(",
    "[a-",
    "^.*$",
    "",
];

// ---------------------------------------------------------------------------------------------
// Policy files

fn assert_parse_is_total(name: &str, text: &str) -> Result<(), TestCaseError> {
    match parse_policy(name, text) {
        Ok(policy) => {
            // Whatever parses is valid and compiles.
            prop_assert!(authz_sidecar::model::validate(&policy).is_ok());
            let _ = Snapshot::compile(&policy, 1);
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(!e.problems.is_empty(), "an error with no problem: {e:?}");
            prop_assert!(!shown.trim().is_empty(), "empty error for {text:?}");
            prop_assert!(
                shown.starts_with(name),
                "the error does not lead with the file name: {shown}"
            );
            for p in &e.problems {
                prop_assert!(!p.message.trim().is_empty(), "empty problem in {shown}");
            }
        }
    }
    Ok(())
}

/// YAML-ish text: the structural characters of YAML and JSON, words and noise.
fn yamlish() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            4 => prop::sample::select(WORDS).prop_map(String::from),
            4 => prop::sample::select(vec![
                ":", ": ", "\n", "\n  ", "\n    ", "- ", "[", "]", "{", "}", ",", " ", "\t",
                "#", "&a ", "*a", "!!str ", "!tag ", "|\n", ">\n", "'", "\"", "? ", "---\n",
                "...\n", "%YAML 1.2\n", "<<: ", "~", "null", "true", "1e999", "-1", "0x1F",
                "\u{feff}", "\0", "\\", "\r\n",
            ])
            .prop_map(String::from),
            1 => any::<String>(),
        ],
        0..80,
    )
    .prop_map(|parts| parts.concat())
}

/// A random JSON/YAML value tree whose keys are mostly schema words.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS).prop_map(|w| Value::String(w.into())),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec(
                (
                    prop_oneof![
                        4 => prop::sample::select(WORDS).prop_map(String::from),
                        1 => any::<String>(),
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A block-style YAML rendering (JSON covers flow style).
fn to_block_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    let scalar = |v: &Value| -> String {
        match v {
            Value::String(s) => serde_json::to_string(s).unwrap(),
            other => other.to_string(),
        }
    };
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                out.push_str(&format!("{pad}{}:", serde_json::to_string(k).unwrap()));
                if matches!(child, Value::Object(m) if !m.is_empty())
                    || matches!(child, Value::Array(a) if !a.is_empty())
                {
                    out.push('\n');
                    to_block_yaml(child, indent + 1, out);
                } else {
                    out.push_str(&format!(" {}\n", scalar(child)));
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&format!("{pad}-"));
                if matches!(item, Value::Object(m) if !m.is_empty())
                    || matches!(item, Value::Array(a) if !a.is_empty())
                {
                    out.push('\n');
                    to_block_yaml(item, indent + 1, out);
                } else {
                    out.push_str(&format!(" {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn fixture_json() -> &'static Value {
    static JSON: OnceLock<Value> = OnceLock::new();
    JSON.get_or_init(|| {
        let policy = parse_policy("rules.yaml", FIXTURE).unwrap();
        serde_json::to_value(&policy).unwrap()
    })
}

/// Every `(path to a node)` of a value tree, as key/index steps.
fn node_paths(v: &Value, at: Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(at.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let mut next = at.clone();
                next.push(Value::String(k.clone()));
                node_paths(child, next, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let mut next = at.clone();
                next.push(Value::from(i));
                node_paths(child, next, out);
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(mut v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    for step in path {
        v = match step {
            Value::String(k) => v.get_mut(k.as_str()).unwrap(),
            other => v.get_mut(other.as_u64().unwrap() as usize).unwrap(),
        };
    }
    v
}

/// The fixture policy with a few nodes replaced, removed or extended.
fn mutate(mutations: &[(u16, u8, Value)]) -> Value {
    let mut doc = fixture_json().clone();
    for (pick, how, replacement) in mutations {
        let mut paths = Vec::new();
        node_paths(&doc, Vec::new(), &mut paths);
        let path = &paths[*pick as usize % paths.len()];
        match how % 6 {
            0 => *node_mut(&mut doc, path) = replacement.clone(),
            // Same shape, other meaning: a name becomes another schema or fixture word, a flag
            // flips, a number changes.
            4 | 5 => match node_mut(&mut doc, path) {
                Value::String(text) => *text = WORDS[*pick as usize % WORDS.len()].to_string(),
                Value::Bool(flag) => *flag = !*flag,
                Value::Number(_) => *node_mut(&mut doc, path) = Value::from(*pick % 3),
                Value::Array(items) if !items.is_empty() => {
                    let item = items[*pick as usize % items.len()].clone();
                    items.push(item);
                }
                _ => {}
            },
            1 if !path.is_empty() => {
                let (last, parent) = path.split_last().unwrap();
                match (node_mut(&mut doc, parent), last) {
                    (Value::Object(map), Value::String(k)) => {
                        map.remove(k);
                    }
                    (Value::Array(items), i) => {
                        items.remove(i.as_u64().unwrap() as usize);
                    }
                    _ => {}
                }
            }
            2 => match node_mut(&mut doc, path) {
                Value::Object(map) => {
                    let key = replacement
                        .as_str()
                        .map_or_else(|| "extra".to_string(), str::to_owned);
                    map.insert(key, replacement.clone());
                }
                Value::Array(items) => items.push(replacement.clone()),
                _ => {}
            },
            _ => {
                // Swap in a value that is valid somewhere else in the document.
                let donor = &paths[(*pick as usize / 7 + 1) % paths.len()];
                let copy = node_mut(&mut doc.clone(), donor).clone();
                *node_mut(&mut doc, path) = copy;
            }
        }
    }
    doc
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn parse_policy_is_total_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        assert_parse_is_total("fuzz-bytes.yaml", &text)?;
    }

    #[test]
    fn parse_policy_is_total_on_yamlish_text(text in yamlish()) {
        assert_parse_is_total("fuzz-yamlish.yaml", &text)?;
    }

    #[test]
    fn parse_policy_is_total_on_wrong_structures(doc in value()) {
        assert_parse_is_total("fuzz-flow.json", &doc.to_string())?;
        let mut block = String::new();
        to_block_yaml(&doc, 0, &mut block);
        assert_parse_is_total("fuzz-block.yaml", &block)?;
    }

    #[test]
    fn parse_policy_is_total_on_mutated_policies(
        mutations in vec((any::<u16>(), any::<u8>(), value()), 1..4),
    ) {
        let doc = mutate(&mutations);
        assert_parse_is_total("fuzz-mutant.json", &doc.to_string())?;
        let mut block = String::new();
        to_block_yaml(&doc, 0, &mut block);
        assert_parse_is_total("fuzz-mutant.yaml", &block)?;
    }
}

#[test]
fn deeply_nested_documents_are_refused_not_overflowed() {
    for depth in [64, 1_000, 20_000] {
        for (open, close) in [("[", "]"), ("{a: ", "}")] {
            let text = format!("catalog: {}{}\n", open.repeat(depth), close.repeat(depth));
            let err = parse_policy("deep.yaml", &text).expect_err("not a policy");
            assert!(err.to_string().starts_with("deep.yaml"), "{err}");
        }
    }
    // Block style: indentation grows quadratically, so keep it modest.
    let mut text = String::from("catalog:\n");
    for i in 1..400 {
        text.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
    }
    let err = parse_policy("deep-block.yaml", &text).expect_err("not a policy");
    assert!(err.to_string().starts_with("deep-block.yaml"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Decisions on arbitrary strings

fn policies() -> &'static Vec<(Policy, Snapshot)> {
    static POLICIES: OnceLock<Vec<(Policy, Snapshot)>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        std::iter::once(("rules", FIXTURE))
            .chain(EXAMPLES)
            .map(|(name, text)| {
                let policy = parse_policy(name, text).expect("example is valid");
                let snapshot = Snapshot::compile(&policy, 1);
                (policy, snapshot)
            })
            .collect()
    })
}

/// Names of the policies' own subjects, permissions, roles, events, with hostile strings.
fn hostile(names: &'static [String]) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => prop::sample::select(names),
        2 => any::<String>(),
        1 => prop::sample::select(vec![
            "", "\0", "a\0b", "é", "👍", "\u{202e}", "..", "%2F", "/", "//", "?", "#", "$", "*",
            "{user}", "{id}", " ", "\t", "\n",
        ])
        .prop_map(String::from),
        1 => (1usize..5000).prop_map(|n| "s".repeat(n)),
    ]
}

fn known_names() -> &'static Vec<String> {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = Vec::new();
        for (p, _) in policies() {
            names.extend(p.subjects.iter().map(|s| s.id.clone()));
            names.extend(p.roles.iter().map(|r| r.name.clone()));
            names.extend(p.subjects.iter().map(|s| s.subject_type.clone()));
            for perm in &p.catalog.permissions {
                names.push(perm.name.clone());
                names.extend(perm.events.iter().cloned());
                names.extend(perm.applies_to.iter().cloned());
            }
            for r in &p.roles {
                names.extend(r.grants.iter().flat_map(|g| g.projects.iter().cloned()));
            }
            for s in &p.subjects {
                names.extend(s.resources.iter().map(|r| r.resource.clone()));
            }
        }
        names.sort();
        names.dedup();
        names
    })
}

/// A request path: known literal segments, hostile segments, query, fragment.
fn hostile_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => prop::sample::select(vec![
            "v1", "devices", "d1", "alarms", "a1", "dispatch", "thngs", "roles", "users",
            "access", "collections", "projects", "snapshots", "alice",
        ])
        .prop_map(String::from),
        2 => hostile(known_names()),
    ];
    (
        vec(segment, 0..7),
        prop_oneof![
            Just(""),
            Just("/"),
            Just("?a=1"),
            Just("#x"),
            Just("?/x#/y")
        ],
        prop::bool::weighted(0.85),
    )
        .prop_map(|(segs, suffix, lead)| {
            format!(
                "{}{}{}",
                if lead { "/" } else { "" },
                segs.join("/"),
                suffix
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decide_never_panics_and_agrees_with_the_reference(
        which in 0usize..6,
        subject in hostile(known_names()),
        kind in 0u8..3,
        name in hostile(known_names()),
        method in prop_oneof![
            4 => prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get", "dElEtE"]).prop_map(String::from),
            1 => hostile(known_names()),
        ],
        path in hostile_path(),
        scope in prop::option::of(hostile(known_names())),
        resource in prop::option::of(hostile(known_names())),
        inline in prop::option::weighted(0.3, (vec(hostile(known_names()), 0..40), hostile(known_names()))),
    ) {
        let (policy, snapshot) = &policies()[which];
        let canonical = CanonicalPath::parse(&path, PathOptions::default());
        let action = match (kind, &canonical) {
            (0, _) => Ok(Action::Permission(&name)),
            (1, Ok(path)) => Ok(Action::Http { method: &method, path }),
            (1, Err(rejection)) => Err(*rejection),
            _ => Ok(Action::Event(&name)),
        };
        let decision = match action {
            Ok(action) => snapshot.decide(&Request {
                subject: &subject,
                action,
                scope: scope.as_deref(),
                resource: resource.as_deref(),
                inline: inline.as_ref().map(|(roles, ty)| Inline { roles, subject_type: ty }),
            }),
            Err(rejection) => Decision::refused_path(rejection),
        };
        // Rendering the reason and the required names must not panic either.
        let reason = decision.reason.to_string();
        prop_assert!(!reason.is_empty());
        let required: Vec<String> = decision
            .required
            .ids()
            .map(|id| snapshot.permission_name(id).to_owned())
            .collect();
        // The API refuses more than MAX_INLINE_ROLES inline roles before the engine sees them.
        let comparable = inline
            .as_ref()
            .is_none_or(|(roles, _)| roles.len() <= authz_sidecar::engine::MAX_INLINE_ROLES);
        if comparable {
            let want = oracle::decide(policy, &oracle::Query {
                subject: subject.clone(),
                act: match kind {
                    0 => oracle::Act::Permission(name.clone()),
                    1 => oracle::Act::Http(method.clone(), path.clone()),
                    _ => oracle::Act::Event(name.clone()),
                },
                scope: scope.clone(),
                resource: resource.clone(),
                inline: inline.clone(),
            });
            prop_assert_eq!(
                (decision.allowed, &required),
                (want.allowed, &want.required),
                "reason: {}", reason
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gRPC server

#[derive(Debug, Clone)]
enum Call {
    Check(pb::CheckRequest),
    Update(pb::UpdatePermissionRequest),
    Put(pb::PutSubjectRequest),
    Delete(pb::DeleteSubjectRequest),
    Approve(pb::ApprovePendingRequest),
    ListRoles(pb::ListRolesRequest),
}

fn revision() -> impl Strategy<Value = u64> {
    prop_oneof![6 => Just(0u64), 1 => 1u64..4, 1 => any::<u64>()]
}

/// The fixture's own names, so that random admin calls often name something real.
const FIXTURE_WORDS: &[&str] = &[
    "app-one",
    "operator",
    "installed",
    "base_app_user",
    "app_user",
    "extra-1",
    "extra-2",
    "devices:read",
    "devices:write",
    "global_read",
    "gl_resource_update",
    "project_read",
    "organization_info",
    "app1",
    "op1",
    "user1",
    "app",
    "Uh5qRBqc4DcmbNbAANtMnrYm",
    "device.online",
];

/// A fixture name or a hostile string.
fn word() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(FIXTURE_WORDS).prop_map(String::from),
        2 => hostile(known_names()),
    ]
    .boxed()
}

fn check_request() -> BoxedStrategy<pb::CheckRequest> {
    let s = word;
    (
        s(),
        prop::option::weighted(
            0.95,
            prop_oneof![
                s().prop_map(pb::check_request::Action::Permission),
                s().prop_map(pb::check_request::Action::Event),
                (
                    prop_oneof![Just("GET".to_string()), Just("POST".to_string()), s()],
                    hostile_path()
                )
                    .prop_map(|(method, path)| pb::check_request::Action::Http(
                        pb::HttpRequest { method, path }
                    )),
            ],
        ),
        (s(), s(), prop_oneof![8 => Just(0u64), 1 => any::<u64>()]),
        (
            prop_oneof![4 => Just(Vec::new()), 1 => vec(s(), 0..40)],
            s(),
        ),
    )
        .prop_map(
            |(subject, action, (scope, resource, min_revision), (roles, subject_type))| {
                // Every other call also asks for the explanation: it must not panic either.
                let explain = subject.len() % 2 == 0;
                pb::CheckRequest {
                    explain,
                    subject,
                    action,
                    scope,
                    resource,
                    min_revision,
                    roles,
                    subject_type,
                }
            },
        )
        .boxed()
}

fn call() -> BoxedStrategy<Call> {
    let s = word;
    let role_permission = (
        s(),
        any::<bool>(),
        vec(s(), 0..3),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(name, enabled, projects, children)| pb::RolePermission {
            name,
            enabled,
            project_scoped: false,
            projects,
            children: if children {
                vec![pb::RolePermission::default()]
            } else {
                Vec::new()
            },
        });
    let path_permission = (
        prop_oneof![
            prop::sample::select(vec!["/thngs", "/thngs/*", "/roles", "/x$", "/users/{user}"])
                .prop_map(String::from),
            s()
        ],
        prop_oneof![
            prop::sample::select(vec!["r", "c", "cru", "crud", "rr", ""]).prop_map(String::from),
            s()
        ],
        any::<bool>(),
    )
        .prop_map(|(path, access, default)| pb::PathPermission {
            path,
            access,
            default,
        });
    let change = prop::option::weighted(
        0.95,
        prop_oneof![
            role_permission.prop_map(pb::update_permission_request::Change::Set),
            vec(path_permission, 0..4).prop_map(|paths| {
                pb::update_permission_request::Change::ReplacePaths(pb::PathPermissions { paths })
            }),
        ],
    );
    let subject = (
        s(),
        s(),
        vec(s(), 0..4),
        prop_oneof![3 => Just(Vec::new()), 1 => vec(s(), 0..3)],
        vec((s(), s()), 0..3),
    )
        .prop_map(|(id, r#type, roles, only, resources)| pb::Subject {
            id,
            r#type,
            roles,
            only,
            resources: resources
                .into_iter()
                .map(|(resource, role)| pb::ResourceRole { resource, role })
                .collect(),
            ..Default::default()
        });
    prop_oneof![
        5 => check_request().prop_map(Call::Check),
        3 => (s(), change, revision()).prop_map(|(role, change, expected_revision)| {
            Call::Update(pb::UpdatePermissionRequest { role, change, expected_revision })
        }),
        3 => (prop::option::weighted(0.95, subject), revision()).prop_map(
            |(subject, expected_revision)| Call::Put(pb::PutSubjectRequest { subject, expected_revision })
        ),
        1 => (s(), revision()).prop_map(|(id, expected_revision)| {
            Call::Delete(pb::DeleteSubjectRequest { id, expected_revision })
        }),
        1 => (s(), revision()).prop_map(|(role, expected_revision)| {
            Call::Approve(pb::ApprovePendingRequest { role, expected_revision, ..Default::default() })
        }),
        1 => (any::<i32>(), s(), s()).prop_map(|(page_size, page_token, kind)| {
            Call::ListRoles(pb::ListRolesRequest { page_size, page_token, kind })
        }),
    ]
    .boxed()
}

const CALLS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_random_requests_with_client_errors_only() {
    let seed = match std::env::var("FUZZ_SEED") {
        Ok(text) => text.trim().parse().expect("FUZZ_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!("gRPC fuzz seed {seed} (replay with FUZZ_SEED={seed})");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &bytes,
        ),
    );
    let strategy = call();
    let calls: Vec<Call> = (0..CALLS)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();

    let sc = common::start(FIXTURE).await;
    let mut client = sc.client().await;
    let allowed_codes = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::FailedPrecondition,
        Code::Unavailable,
    ];
    let mut writes_ok = 0u64;
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    for call in &calls {
        let (label, result): (&str, Result<bool, tonic::Status>) = match call.clone() {
            Call::Check(r) => ("check", client.check(r).await.map(|_| false)),
            Call::Update(r) => (
                "update_permission",
                client
                    .update_permission(common::admin(r))
                    .await
                    .map(|_| true),
            ),
            Call::Put(r) => (
                "put_subject",
                client.put_subject(common::admin(r)).await.map(|_| true),
            ),
            Call::Delete(r) => (
                "delete_subject",
                client.delete_subject(common::admin(r)).await.map(|_| true),
            ),
            Call::Approve(r) => (
                "approve_pending",
                client.approve_pending(common::admin(r)).await.map(|_| true),
            ),
            Call::ListRoles(r) => ("list_roles", client.list_roles(r).await.map(|_| false)),
        };
        let outcome = match result {
            Ok(write) => {
                writes_ok += write as u64;
                "ok".to_string()
            }
            Err(status) => {
                assert!(
                    allowed_codes.contains(&status.code()),
                    "{call:?} answered {:?}: {}",
                    status.code(),
                    status.message()
                );
                assert!(
                    !status.message().is_empty(),
                    "{call:?}: a status without a message"
                );
                format!("{:?}", status.code())
            }
        };
        *tally.entry(format!("{label} {outcome}")).or_default() += 1;
    }
    println!("{CALLS} random calls: {tally:?}");

    // Still serving, on the same connection and a new one, at exactly the committed revision.
    for mut c in [client, sc.client().await] {
        let r = common::check(&mut c, common::permission("op1", "global_read")).await;
        assert_eq!(
            r.revision,
            1 + writes_ok,
            "every Ok write and nothing else committed"
        );
    }
    sc.sidecar.stop().await.expect("clean stop");
}

/// The mutation generator must reach every stage: some mutants still parse, some fail
/// deserialization, some fail validation — otherwise the property above tests only the parser.
#[test]
fn mutated_policies_reach_every_stage_of_loading() {
    let mut runner = TestRunner::deterministic();
    let strategy = vec((any::<u16>(), any::<u8>(), value()), 1..4);
    let (mut ok, mut syntax_or_type, mut invalid) = (0, 0, 0);
    for _ in 0..300 {
        let doc = mutate(&strategy.new_tree(&mut runner).unwrap().current());
        let parsed = parse_policy("mutant.json", &doc.to_string());
        match serde_json::from_value::<Policy>(doc) {
            Err(_) => syntax_or_type += 1,
            Ok(p) if authz_sidecar::model::validate(&p).is_err() => invalid += 1,
            Ok(_) => {
                assert!(parsed.is_ok(), "a valid mutant was refused: {parsed:?}");
                ok += 1
            }
        }
    }
    println!(
        "300 mutants: {ok} valid, {syntax_or_type} refused while reading, {invalid} refused by validation"
    );
    assert!(ok >= 10 && syntax_or_type >= 10 && invalid >= 10);
}
