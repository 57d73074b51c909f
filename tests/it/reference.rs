//! Differential tests: the compiled engine (`Snapshot::compile`, and the incremental
//! `with_subject` / `with_roles` paths the live writer uses) against a naive reference evaluator
//! written straight from README "Decisions" (`tests/it/oracle/mod.rs`), on random structurally
//! valid policies — catalogs with implies/requires/scoped/applies_to, endpoints and events;
//! roles with grants, presets, all-except, pending grants, path rules and base roles; subjects
//! with overrides and per-resource access — and random requests of every kind.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::oracle;

use authz_sidecar::engine::{Action, Decision, Inline, Request, Snapshot};
use authz_sidecar::model::{
    CanonicalPath, Catalog, Grant, PathOptions, PathRule, Permission, Policy, Preset, ResourceRole,
    Role, Subject, validate,
};
use oracle::{Act, Answer, KINDS, Query, decide};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};

const TYPES: [&str; 3] = ["ORG", "PARTNER", "CUSTOMER"];
const SUBJECT_TYPES: [&str; 5] = ["", "ORG", "PARTNER", "CUSTOMER", "other"];
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const REQUEST_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get", "Patch", "OPTIONS",
];
const TEMPLATE_SEGMENTS: [&str; 4] = ["a", "b", "c", "{id}"];
const PATTERN_SEGMENTS: [&str; 5] = ["a", "b", "c", "*", "{user}"];
const REQUEST_SEGMENTS: [&str; 6] = ["a", "b", "c", "u0", "u1", "x"];
const SUFFIXES: [&str; 9] = [
    "",
    "/",
    "?q=1",
    "?#frag",
    "//",
    "/?a/b",
    "/../a",
    "/.;x/%2e%2e",
    "#frag",
];
const EVENTS: [&str; 3] = ["e1", "e2", "e3"];
const REQUEST_EVENTS: [&str; 4] = ["e1", "e2", "e3", "e4"];
const SCOPES: [&str; 3] = ["S1", "S2", "S3"];
const REQUEST_SCOPES: [&str; 4] = ["S1", "S2", "S3", "S4"];
const RESOURCES: [&str; 2] = ["x", "y"];
const REQUEST_RESOURCES: [&str; 3] = ["x", "y", "z"];

// ---------------------------------------------------------------------------------------------
// Shrinkable specs, turned into policies by `build`

#[derive(Debug, Clone)]
struct PermSpec {
    kind: u8,
    scoped: bool,
    applies: u8,
    endpoints: Vec<(u8, Vec<u8>)>,
    events: u8,
    parent: Option<u8>,
}

#[derive(Debug, Clone)]
struct RoleSpec {
    all: bool,
    except: Vec<u8>,
    grants: Vec<(u8, bool, u8)>,
    approval: bool,
    pending: Vec<(u8, u8)>,
    presets: Vec<u8>,
    all_resources: bool,
    paths: Vec<(Vec<u8>, bool, u8, bool)>,
    base: Option<u8>,
}

#[derive(Debug, Clone)]
struct SubjectSpec {
    ty: u8,
    roles: Vec<u8>,
    only: Vec<u8>,
    resources: Vec<(u8, u8)>,
}

#[derive(Debug, Clone)]
struct PolicySpec {
    perms: Vec<PermSpec>,
    implies: Vec<(u8, u8)>,
    requires: Vec<(u8, u8)>,
    presets: Vec<(Vec<u8>, u8)>,
    roles: Vec<RoleSpec>,
    subjects: Vec<SubjectSpec>,
}

#[derive(Debug, Clone)]
struct RequestSpec {
    subject: u8,
    kind: u8,
    a: u8,
    segments: Vec<u8>,
    suffix: u8,
    scope: u8,
    resource: u8,
    inline: Option<(Vec<u8>, u8)>,
}

fn perm_spec() -> impl Strategy<Value = PermSpec> {
    (
        0u8..3,
        prop::bool::weighted(0.3),
        prop_oneof![3 => Just(0u8), 1 => 1u8..8],
        vec((0u8..6, vec(0u8..4, 0..4)), 0..3),
        prop_oneof![2 => Just(0u8), 1 => 1u8..8],
        prop::option::weighted(0.2, any::<u8>()),
    )
        .prop_map(
            |(kind, scoped, applies, endpoints, events, parent)| PermSpec {
                kind,
                scoped,
                applies,
                endpoints,
                events,
                parent,
            },
        )
}

fn role_spec() -> impl Strategy<Value = RoleSpec> {
    (
        prop::bool::weighted(0.15),
        vec(any::<u8>(), 0..3),
        vec((any::<u8>(), prop::bool::weighted(0.8), 0u8..8), 0..6),
        prop::bool::weighted(0.2),
        vec((any::<u8>(), 0u8..8), 0..3),
        vec(any::<u8>(), 0..2),
        prop::bool::weighted(0.1),
        vec(
            (
                vec(0u8..5, 0..4),
                prop::bool::weighted(0.25),
                1u8..16,
                prop::bool::weighted(0.3),
            ),
            0..4,
        ),
        prop::option::weighted(0.3, any::<u8>()),
    )
        .prop_map(
            |(all, except, grants, approval, pending, presets, all_resources, paths, base)| {
                RoleSpec {
                    all,
                    except,
                    grants,
                    approval,
                    pending,
                    presets,
                    all_resources,
                    paths,
                    base,
                }
            },
        )
}

fn subject_spec() -> impl Strategy<Value = SubjectSpec> {
    (
        0u8..5,
        vec(any::<u8>(), 0..4),
        prop_oneof![3 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..4)],
        vec((0u8..2, any::<u8>()), 0..4),
    )
        .prop_map(|(ty, roles, only, resources)| SubjectSpec {
            ty,
            roles,
            only,
            resources,
        })
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    (
        vec(perm_spec(), 3..=12),
        vec((any::<u8>(), any::<u8>()), 0..10),
        vec((any::<u8>(), any::<u8>()), 0..7),
        vec((vec(any::<u8>(), 0..3), 0u8..3), 0..3),
        vec(role_spec(), 1..=5),
        vec(subject_spec(), 1..=4),
    )
        .prop_map(
            |(perms, implies, requires, presets, roles, subjects)| PolicySpec {
                perms,
                implies,
                requires,
                presets,
                roles,
                subjects,
            },
        )
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    (
        any::<u8>(),
        0u8..3,
        any::<u8>(),
        vec(0u8..6, 0..4),
        prop_oneof![4 => Just(0u8), 1 => 1u8..9],
        prop_oneof![1 => Just(0u8), 2 => 1u8..5],
        prop_oneof![3 => Just(0u8), 1 => 1u8..4],
        prop::option::weighted(0.15, (vec(any::<u8>(), 0..3), 0u8..5)),
    )
        .prop_map(
            |(subject, kind, a, segments, suffix, scope, resource, inline)| RequestSpec {
                subject,
                kind,
                a,
                segments,
                suffix,
                scope,
                resource,
                inline,
            },
        )
}

fn access_letters(mask: u8) -> String {
    let mut out = String::new();
    for (bit, ch) in [(1, 'c'), (2, 'r'), (4, 'u'), (8, 'd')] {
        if mask & bit != 0 {
            out.push(ch);
        }
    }
    out
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn build(spec: &PolicySpec) -> Policy {
    let n = spec.perms.len();
    let pname = |i: u8| format!("p{}", i as usize % n);
    let mut permissions: Vec<Permission> = spec
        .perms
        .iter()
        .enumerate()
        .map(|(i, ps)| Permission {
            name: format!("p{i}"),
            kind: KINDS[ps.kind as usize % 3],
            scoped: ps.scoped,
            applies_to: TYPES
                .iter()
                .enumerate()
                .filter(|(b, _)| ps.applies & (1 << b) != 0)
                .map(|(_, t)| t.to_string())
                .collect(),
            endpoints: ps
                .endpoints
                .iter()
                .map(|(m, segs)| {
                    let path: Vec<&str> = segs
                        .iter()
                        .map(|s| TEMPLATE_SEGMENTS[*s as usize % 4])
                        .collect();
                    format!(
                        "{} /{}",
                        METHODS[*m as usize % METHODS.len()],
                        path.join("/")
                    )
                })
                .collect(),
            events: EVENTS
                .iter()
                .enumerate()
                .filter(|(b, _)| ps.events & (1 << b) != 0)
                .map(|(_, e)| e.to_string())
                .collect(),
            parent: ps
                .parent
                .map(|p| p as usize % n)
                .filter(|p| *p < i)
                .map(|p| format!("p{p}")),
            ..Permission::default()
        })
        .collect();
    for (a, b) in &spec.implies {
        let (a, b) = (*a as usize % n, *b as usize % n);
        if a != b {
            push_unique(&mut permissions[a].implies, format!("p{b}"));
        }
    }
    for (a, b) in &spec.requires {
        let (a, b) = (*a as usize % n, *b as usize % n);
        if a != b {
            push_unique(&mut permissions[a].requires, format!("p{b}"));
        }
    }
    let scoped = |name: &str| permissions.iter().any(|p| p.name == name && p.scoped);
    let projects = |name: &str, mask: u8| -> Vec<String> {
        if !scoped(name) {
            return Vec::new();
        }
        SCOPES
            .iter()
            .enumerate()
            .filter(|(b, _)| mask & (1 << b) != 0)
            .map(|(_, s)| s.to_string())
            .collect()
    };
    let presets: Vec<Preset> = spec
        .presets
        .iter()
        .enumerate()
        .map(|(i, (perms, kind))| {
            let mut names = Vec::new();
            for p in perms {
                push_unique(&mut names, pname(*p));
            }
            let kind = KINDS[*kind as usize % 3];
            Preset {
                name: format!("ps{i}"),
                kind: if names.is_empty() && kind.is_none() {
                    KINDS[1]
                } else {
                    kind
                },
                permissions: names,
                ..Preset::default()
            }
        })
        .collect();

    let nroles = spec.roles.len();
    let base_of = |i: usize| -> Option<usize> {
        let b = spec.roles[i].base? as usize % nroles;
        (b != i && spec.roles[b].base.is_none()).then_some(b)
    };
    let own_paths = |rs: &RoleSpec| -> Vec<PathRule> {
        rs.paths
            .iter()
            .map(|(segs, anchored, access, default)| {
                let body: Vec<&str> = segs
                    .iter()
                    .map(|s| PATTERN_SEGMENTS[*s as usize % 5])
                    .collect();
                PathRule {
                    path: format!("/{}{}", body.join("/"), if *anchored { "$" } else { "" }),
                    access: access_letters(*access),
                    default: *default,
                }
            })
            .collect()
    };
    let mut roles: Vec<Role> = Vec::new();
    for (i, rs) in spec.roles.iter().enumerate() {
        let mut role = Role {
            name: format!("r{i}"),
            kind: "k".into(),
            all_resources: rs.all_resources,
            ..Role::default()
        };
        match base_of(i) {
            Some(b) => {
                // Derived rules stay inside the base: a base rule with a subset of its access.
                role.base = Some(format!("r{b}"));
                let base_rules = own_paths(&spec.roles[b]);
                if !base_rules.is_empty() {
                    for (segs, _, access, _) in &rs.paths {
                        let pick = segs.first().copied().unwrap_or(0) as usize;
                        let rule = &base_rules[pick % base_rules.len()];
                        let base_mask = rule.access.chars().fold(0u8, |m, c| {
                            m | match c {
                                'c' => 1,
                                'r' => 2,
                                'u' => 4,
                                _ => 8,
                            }
                        });
                        let mask = access & base_mask;
                        if mask != 0 {
                            role.paths.push(PathRule {
                                path: rule.path.clone(),
                                access: access_letters(mask),
                                default: false,
                            });
                        }
                    }
                }
            }
            None => {
                // A role without a base holds path rules only as a bound itself.
                role.paths = own_paths(rs);
                role.path_root = !role.paths.is_empty();
            }
        }
        if rs.all {
            role.all = true;
            for e in &rs.except {
                push_unique(&mut role.except, pname(*e));
            }
        } else {
            let mut seen = Vec::new();
            for (p, enabled, mask) in &rs.grants {
                let name = pname(*p);
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name.clone());
                role.grants.push(Grant {
                    projects: projects(&name, *mask),
                    permission: name,
                    enabled: *enabled,
                });
            }
            if rs.approval {
                role.requires_approval = true;
                let mut seen = Vec::new();
                for (p, mask) in &rs.pending {
                    let name = pname(*p);
                    if seen.contains(&name) {
                        continue;
                    }
                    seen.push(name.clone());
                    role.pending.push(Grant {
                        projects: projects(&name, *mask),
                        permission: name,
                        enabled: true,
                    });
                }
            }
            if !presets.is_empty() {
                for p in &rs.presets {
                    push_unique(
                        &mut role.presets,
                        format!("ps{}", *p as usize % presets.len()),
                    );
                }
            }
        }
        roles.push(role);
    }
    let subjects = spec
        .subjects
        .iter()
        .enumerate()
        .map(|(i, ss)| {
            let mut s = Subject {
                id: format!("u{i}"),
                subject_type: SUBJECT_TYPES[ss.ty as usize % 5].into(),
                ..Subject::default()
            };
            for r in &ss.roles {
                push_unique(&mut s.roles, format!("r{}", *r as usize % nroles));
            }
            for p in &ss.only {
                push_unique(&mut s.only, pname(*p));
            }
            for (res, r) in &ss.resources {
                // One access role per resource: two on the same resource are pinned separately
                // (`two_access_roles_on_one_resource_...`).
                if s.resources
                    .iter()
                    .any(|b| b.resource == RESOURCES[*res as usize % 2])
                {
                    continue;
                }
                s.resources.push(ResourceRole {
                    resource: RESOURCES[*res as usize % 2].into(),
                    role: format!("r{}", *r as usize % nroles),
                });
            }
            s
        })
        .collect();
    Policy {
        version: 1,
        catalog: Catalog {
            scope_pattern: None,
            permissions,
            ..Catalog::default()
        },
        presets,
        roles,
        subjects,
        admins: Vec::new(),
    }
}

fn query(spec: &RequestSpec, policy: &Policy) -> Query {
    let nsubjects = policy.subjects.len();
    let nperms = policy.catalog.permissions.len();
    let nroles = policy.roles.len();
    let s = spec.subject as usize % (nsubjects + 1);
    let subject = if s == nsubjects {
        "ghost".to_string()
    } else {
        format!("u{s}")
    };
    let act = match spec.kind {
        0 => {
            let p = spec.a as usize % (nperms + 1);
            Act::Permission(if p == nperms {
                "nope".into()
            } else {
                format!("p{p}")
            })
        }
        1 => {
            let segs: Vec<&str> = spec
                .segments
                .iter()
                .map(|s| REQUEST_SEGMENTS[*s as usize % 6])
                .collect();
            let path = match spec.suffix % SUFFIXES.len() as u8 {
                4 => format!("//{}", segs.join("//")),
                k => format!("/{}{}", segs.join("/"), SUFFIXES[k as usize]),
            };
            Act::Http(
                REQUEST_METHODS[spec.a as usize % REQUEST_METHODS.len()].into(),
                path,
            )
        }
        _ => Act::Event(REQUEST_EVENTS[spec.a as usize % 4].into()),
    };
    Query {
        subject,
        act,
        scope: (spec.scope > 0).then(|| REQUEST_SCOPES[(spec.scope as usize - 1) % 4].into()),
        resource: (spec.resource > 0)
            .then(|| REQUEST_RESOURCES[(spec.resource as usize - 1) % 3].into()),
        inline: spec.inline.as_ref().map(|(roles, ty)| {
            (
                roles
                    .iter()
                    .map(|r| {
                        let r = *r as usize % (nroles + 1);
                        if r == nroles {
                            "r-unknown".to_string()
                        } else {
                            format!("r{r}")
                        }
                    })
                    .collect(),
                SUBJECT_TYPES[*ty as usize % 5].to_string(),
            )
        }),
    }
}

/// The engine's answer, with the reason for failure reports.
fn engine(snapshot: &Snapshot, q: &Query) -> (Answer, String) {
    let canonical = match &q.act {
        Act::Http(_, path) => Some(CanonicalPath::parse(path, PathOptions::default())),
        _ => None,
    };
    let action = match (&q.act, &canonical) {
        (Act::Permission(p), _) => Action::Permission(p.as_str()),
        (Act::Http(method, _), Some(Ok(path))) => Action::Http {
            method: method.as_str(),
            path,
        },
        (Act::Http(..), Some(Err(rejection))) => {
            let d = Decision::refused_path(*rejection);
            return (
                Answer {
                    allowed: d.allowed,
                    required: Vec::new(),
                },
                d.reason.to_string(),
            );
        }
        (Act::Http(..), None) => unreachable!("an HTTP action was canonicalized"),
        (Act::Event(e), _) => Action::Event(e.as_str()),
    };
    let request = Request {
        subject: &q.subject,
        action,
        scope: q.scope.as_deref(),
        resource: q.resource.as_deref(),
        inline: q.inline.as_ref().map(|(roles, ty)| Inline {
            roles,
            subject_type: ty,
        }),
    };
    let d = snapshot.decide(&request);
    (
        Answer {
            allowed: d.allowed,
            required: d
                .required
                .ids()
                .map(|id| snapshot.permission_name(id).to_owned())
                .collect(),
        },
        d.reason.to_string(),
    )
}

fn compare(
    policy: &Policy,
    snapshot: &Snapshot,
    which: &str,
    q: &Query,
) -> Result<(), TestCaseError> {
    let want = decide(policy, q);
    let (got, reason) = engine(snapshot, q);
    if want != got {
        return Err(TestCaseError::fail(format!(
            "{which} disagrees with the reference\nrequest: {q:?}\nreference: {want:?}\nengine: {got:?} ({reason})\npolicy: {}",
            serde_json::to_string(policy).unwrap()
        )));
    }
    Ok(())
}

/// The same decisions through the incremental paths the live writer takes: subjects added one
/// by one to a snapshot compiled without them, and roles swapped into a snapshot compiled with
/// empty ones.
fn incremental(policy: &Policy) -> (Snapshot, Snapshot) {
    let mut bare = policy.clone();
    bare.subjects.clear();
    let mut by_subject = Snapshot::compile(&bare, 1);
    for (i, s) in policy.subjects.iter().enumerate() {
        by_subject = by_subject.with_subject(&s.id, Some(s), 2 + i as u64);
    }
    let mut hollow = policy.clone();
    for r in &mut hollow.roles {
        r.grants.clear();
        r.paths.clear();
        r.all = false;
        r.except.clear();
        r.all_resources = false;
    }
    let by_roles = Snapshot::compile(&hollow, 1).with_roles(policy, 2);
    (by_subject, by_roles)
}

proptest! {
    #![proptest_config(ProptestConfig {
        // `REFERENCE_CASES=20000` for a deeper hunt.
        cases: std::env::var("REFERENCE_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_compiled_engine_decides_as_the_reference(
        spec in policy_spec(),
        requests in vec(request_spec(), 64),
    ) {
        let policy = build(&spec);
        prop_assume!(validate(&policy).is_ok(), "invalid: {:?}", validate(&policy));
        let mut normalized = policy.clone();
        normalized.normalize();
        let full = Snapshot::compile(&normalized, 1);
        let (by_subject, by_roles) = incremental(&normalized);
        for r in &requests {
            let q = query(r, &policy);
            compare(&policy, &full, "Snapshot::compile", &q)?;
            compare(&policy, &by_subject, "Snapshot::with_subject", &q)?;
            compare(&policy, &by_roles, "Snapshot::with_roles", &q)?;
        }
    }
}

/// The generator must mostly produce valid policies, or the property above tests little.
#[test]
fn the_generator_yields_mostly_valid_policies() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut valid = 0;
    let mut features = [0usize; 8];
    for _ in 0..500 {
        let spec = policy_spec().new_tree(&mut runner).unwrap().current();
        let policy = build(&spec);
        if let Err(errors) = validate(&policy) {
            panic!("generated an invalid policy: {errors:?}\n{policy:?}");
        }
        valid += 1;
        let perms = &policy.catalog.permissions;
        features[0] += perms.iter().any(|p| !p.implies.is_empty()) as usize;
        features[1] += perms.iter().any(|p| !p.requires.is_empty()) as usize;
        features[2] += perms.iter().any(|p| p.scoped) as usize;
        features[3] += perms.iter().any(|p| !p.applies_to.is_empty()) as usize;
        features[4] += policy.roles.iter().any(|r| r.all) as usize;
        features[5] += policy
            .roles
            .iter()
            .any(|r| r.base.is_some() && !r.paths.is_empty()) as usize;
        features[6] += policy.subjects.iter().any(|s| !s.only.is_empty()) as usize;
        features[7] += policy.subjects.iter().any(|s| !s.resources.is_empty()) as usize;
    }
    println!(
        "valid {valid}/500; policies with implies, requires, scoped, applies_to, all, derived paths, only, resources: {features:?}"
    );
    assert!(features.iter().all(|f| *f >= 25), "{features:?}");
}

/// The oracle itself on hand-checked cases (the fixture policy), so that a wrong oracle cannot
/// agree with a wrong engine unnoticed.
#[test]
fn the_reference_answers_hand_checked_cases() {
    let policy = authz_sidecar::model::file::parse_policy(
        "rules.yaml",
        include_str!("../fixtures/rules.yaml"),
    )
    .unwrap();
    let q = |subject: &str, act: Act, scope: Option<&str>| Query {
        subject: subject.into(),
        act,
        scope: scope.map(str::to_owned),
        resource: None,
        inline: None,
    };
    let perm = |p: &str| Act::Permission(p.into());
    let http = |m: &str, p: &str| Act::Http(m.into(), p.into());
    let cases = [
        (q("app1", perm("devices:read"), None), true),
        (q("app1", perm("devices:write"), None), false),
        (q("app1", http("GET", "/v1/devices/d1?x=1"), None), true),
        (q("app1", http("GET", "/v1/devices"), None), false),
        (q("app1", Act::Event("device.online".into()), None), true),
        (q("op1", perm("global_read"), None), true),
        (q("op1", perm("gl_resource_update"), None), false),
        (
            q(
                "op1",
                perm("project_read"),
                Some("Uh5qRBqc4DcmbNbAANtMnrYm"),
            ),
            false,
        ),
        (q("user1", http("GET", "/roles/7"), None), true),
        (q("user1", http("GET", "/rolesx"), None), false),
        (q("user1", http("GET", "/thngs/"), None), true),
        (q("user1", http("GET", "//thngs/"), None), false),
        (q("user1", http("GET", "/thngs/%2e%2e/roles"), None), false),
        (q("user1", http("HEAD", "/thngs/t1"), None), true),
        (q("user1", http("POST", "/thngs"), None), false),
        (q("user1", http("GET", "/thngs/t1"), None), true),
        (q("nobody", perm("devices:read"), None), false),
    ];
    let snapshot = Snapshot::compile(&policy, 1);
    for (query, allowed) in cases {
        assert_eq!(
            decide(&policy, &query).allowed,
            allowed,
            "reference: {query:?}"
        );
        assert_eq!(
            engine(&snapshot, &query).0.allowed,
            allowed,
            "engine: {query:?}"
        );
    }
}

/// Found by the property above (before its generator was limited to one access role per
/// resource): a subject holding two access roles on the same resource got a decision that
/// depends on the order the two bindings are listed in, because only one of them is consulted.
/// Rule 5 asks for "the subject's access role on that resource to grant the permission"; with a
/// granting role there, the request is allowed — or the policy is refused as ambiguous.
#[test]
fn two_access_roles_on_one_resource_decide_independently_of_their_order() {
    for (first, second) in [("writer", "none"), ("none", "writer")] {
        let text = format!(
            "catalog:\n  permissions:\n    - {{ name: p }}\nroles:\n  - {{ name: holder, kind: account, grants: [p] }}\n  - {{ name: writer, kind: access, grants: [p] }}\n  - {{ name: none, kind: access }}\nsubjects:\n  - id: alice\n    roles: [holder]\n    resources: [{{ resource: d1, role: {first} }}, {{ resource: d1, role: {second} }}]\n"
        );
        let policy = match authz_sidecar::model::file::parse_policy("two-roles.yaml", &text) {
            Ok(policy) => policy,
            Err(refused) => {
                // Refusing two access roles on one resource is a fix too.
                assert!(refused.to_string().contains("resources"), "{refused}");
                continue;
            }
        };
        let query = Query {
            subject: "alice".into(),
            act: Act::Permission("p".into()),
            scope: None,
            resource: Some("d1".into()),
            inline: None,
        };
        assert!(
            decide(&policy, &query).allowed,
            "reference, bindings {first}, {second}"
        );
        let (got, reason) = engine(&Snapshot::compile(&policy, 1), &query);
        assert!(
            got.allowed,
            "alice holds `writer` (granting p) on d1, listed as [{first}, {second}]; the engine denied: {reason}"
        );
    }
}
