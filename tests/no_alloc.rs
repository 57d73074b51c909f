//! Proves that the decision path allocates nothing: a counting global allocator wraps the
//! system allocator for this test binary and counts, per thread, every allocation made while
//! `Snapshot::decide` runs over a batch covering every kind of outcome.

// A test-only #[global_allocator] needs `unsafe impl GlobalAlloc`; a failed expectation is a
// failed test.
#![allow(unsafe_code, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use authz_sidecar::engine::{Action, Inline, Request, Snapshot};
use authz_sidecar::model::file::{EMBEDDED_DEFAULT, parse_policy};
use authz_sidecar::model::{CanonicalPath, PathOptions, ResourceRole, Subject};

/// Counts allocations (alloc, alloc_zeroed, realloc) made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // `try_with`: the slot may already be gone while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; the counter is a const-initialised
// thread-local `Cell` without a destructor, so touching it never allocates or re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations this thread has made so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Runs `f` and returns its result with the number of allocations it made on this thread.
fn counting<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = allocations();
    let out = f();
    let after = allocations();
    (out, after - before)
}

/// The seed monitoring-apps policy, plus a path-rule role, an app user holding it, and
/// synthetic subjects (`app-000000`..) holding the seed roles round-robin, one with an
/// override (`only`) and one with a per-resource access role.
fn snapshot() -> Snapshot {
    let text = EMBEDDED_DEFAULT.replacen(
        "\nroles:\n",
        "\nroles:\n  - name: app-user\n    kind: app_user\n    path_root: true\n    paths:\n      \
         - { path: \"/users/{user}\", access: ru }\n      \
         - { path: \"/things\", access: r }\n",
        1,
    );
    assert_ne!(
        text, EMBEDDED_DEFAULT,
        "the seed policy has a `roles:` section"
    );
    let mut policy = parse_policy("monitoring-apps.yaml", &text).expect("seed policy");
    let seed_roles: Vec<String> = policy
        .roles
        .iter()
        .map(|r| r.name.clone())
        .filter(|n| n != "app-user")
        .collect();
    for i in 0..2_000 {
        policy.subjects.push(Subject {
            id: format!("app-{i:06}"),
            subject_type: "app".into(),
            roles: vec![seed_roles[i % seed_roles.len()].clone()],
            ..Subject::default()
        });
    }
    policy.subjects.push(Subject {
        id: "alice".into(),
        subject_type: "app_user".into(),
        roles: vec!["app-user".into()],
        ..Subject::default()
    });
    policy.subjects.push(Subject {
        id: "narrow".into(),
        subject_type: "app".into(),
        roles: vec!["app-dashboard".into()],
        only: vec!["events:read".into()],
        ..Subject::default()
    });
    policy.subjects.push(Subject {
        id: "holder".into(),
        subject_type: "app".into(),
        roles: vec!["app-dispatcher".into()],
        resources: vec![ResourceRole {
            resource: "sites/s1".into(),
            role: "app-dispatcher".into(),
        }],
        ..Subject::default()
    });
    Snapshot::compile(&policy, 1)
}

fn req<'a>(subject: &'a str, action: Action<'a>) -> Request<'a> {
    Request {
        subject,
        action,
        scope: None,
        resource: None,
        inline: None,
    }
}

/// An HTTP action on `path` read by the canonicalizer (leaked: the cases live for the test).
fn http<'a>(method: &'a str, path: &'static str) -> Action<'a> {
    let path = CanonicalPath::parse(path, PathOptions::default()).expect("canonical path");
    Action::Http {
        method,
        path: Box::leak(Box::new(path)),
    }
}

/// Every case: a name, the request, and whether it must be allowed.
fn cases<'a>(
    dispatcher_roles: &'a [String],
    dashboard_roles: &'a [String],
    unknown_roles: &'a [String],
) -> Vec<(&'static str, Request<'a>, bool)> {
    use Action::{Event, Permission};
    let inline = |roles: &'a [String]| Inline {
        roles,
        subject_type: "app",
    };
    vec![
        // Permission Checks.
        (
            "permission allowed",
            req("dashboard", Permission("devices:read")),
            true,
        ),
        (
            "permission denied",
            req("dashboard", Permission("alarms:write")),
            false,
        ),
        (
            "permission synthetic",
            req("app-000123", Permission("events:read")),
            true,
        ),
        (
            "permission unknown",
            req("dashboard", Permission("nope:read")),
            false,
        ),
        (
            "permission override allowed",
            req("narrow", Permission("events:read")),
            true,
        ),
        (
            "permission override denied",
            req("narrow", Permission("devices:read")),
            false,
        ),
        (
            "permission with scope",
            Request {
                scope: Some("site-1"),
                ..req("dispatcher", Permission("alarms:write"))
            },
            true,
        ),
        (
            "permission resource held",
            Request {
                resource: Some("sites/s1"),
                ..req("holder", Permission("alarms:write"))
            },
            true,
        ),
        (
            "permission resource missing",
            Request {
                resource: Some("sites/zz"),
                ..req("holder", Permission("alarms:write"))
            },
            false,
        ),
        // HTTP Checks.
        (
            "http allowed",
            req("dashboard", http("GET", "/v1/devices/d-42/snapshots")),
            true,
        ),
        (
            "http allowed dispatch",
            req("dispatcher", http("POST", "/v1/alarms/a1/dispatch")),
            true,
        ),
        (
            "http lower-case method",
            req("dashboard", http("get", "/v1/devices/d-42")),
            true,
        ),
        (
            "http denied",
            req("dashboard", http("POST", "/v1/alarms/a1/dispatch")),
            false,
        ),
        (
            "http unknown route",
            req("dashboard", http("GET", "/v1/nothing/here")),
            false,
        ),
        (
            "http query string",
            req(
                "dashboard",
                http("GET", "/v1/devices/d-42?expand=true&x=%20#frag"),
            ),
            true,
        ),
        (
            "http query string denied",
            req("dispatcher", http("GET", "/v1/devices?page=2")),
            false,
        ),
        (
            "http unsupported method",
            req("dashboard", http("BREW", "/v1/devices")),
            false,
        ),
        (
            "http path rule allowed",
            req("alice", http("PUT", "/users/alice")),
            true,
        ),
        (
            "http path rule access missing",
            req("alice", http("DELETE", "/users/alice")),
            false,
        ),
        (
            "http path rule other user",
            req("alice", http("GET", "/users/bob")),
            false,
        ),
        // Event Checks.
        (
            "event allowed",
            req("dispatcher", Event("alarm.created")),
            true,
        ),
        (
            "event denied",
            req("dispatcher", Event("device.online")),
            false,
        ),
        (
            "event unknown",
            req("dispatcher", Event("no.such.event")),
            false,
        ),
        // Unknown subject.
        (
            "unknown subject",
            req("ghost", Permission("events:read")),
            false,
        ),
        (
            "unknown subject http",
            req("ghost", http("GET", "/v1/devices")),
            false,
        ),
        // Inline roles (a verified token's roles instead of the stored subject).
        (
            "inline allowed",
            Request {
                inline: Some(inline(dispatcher_roles)),
                ..req("token-1", Permission("alarms:write"))
            },
            true,
        ),
        (
            "inline http allowed",
            Request {
                inline: Some(inline(dispatcher_roles)),
                ..req("token-1", http("POST", "/v1/alarms/a9/dispatch?x=1"))
            },
            true,
        ),
        (
            "inline denied",
            Request {
                inline: Some(inline(dashboard_roles)),
                ..req("token-2", Permission("alarms:write"))
            },
            false,
        ),
        (
            "inline event allowed",
            Request {
                inline: Some(inline(dashboard_roles)),
                ..req("token-2", Event("partition.armed"))
            },
            true,
        ),
        (
            "inline unknown role",
            Request {
                inline: Some(inline(unknown_roles)),
                ..req("token-3", Permission("events:read"))
            },
            false,
        ),
    ]
}

/// Decisions per measured batch.
const BATCH: usize = 10_000;

#[test]
fn decisions_allocate_nothing() {
    let snap = snapshot();
    let dispatcher_roles = vec!["app-dispatcher".to_owned()];
    let dashboard_roles = vec!["app-dashboard".to_owned(), "app-readonly".to_owned()];
    let unknown_roles = vec!["app-dashboard".to_owned(), "no-such-role".to_owned()];
    let cases = cases(&dispatcher_roles, &dashboard_roles, &unknown_roles);

    // The decisions are the expected ones, so that a zero count below is not vacuous.
    let mut wrong = Vec::new();
    for (name, request, allowed) in &cases {
        let d = snap.decide(request);
        if d.allowed != *allowed {
            wrong.push(format!("{name}: allowed={} ({})", d.allowed, d.reason));
        }
    }
    assert!(wrong.is_empty(), "unexpected decisions: {wrong:#?}");
    let allowed_cases = cases.iter().filter(|c| c.2).count();
    assert!(allowed_cases > 0 && allowed_cases < cases.len());

    // Per case (bisects any allocation to the case that makes it).
    let mut per_case = vec![0u64; cases.len()];
    for (slot, (_, request, _)) in per_case.iter_mut().zip(&cases) {
        black_box(snap.decide(request)); // warm up
        let ((), n) = counting(|| {
            for _ in 0..100 {
                black_box(snap.decide(black_box(request)));
            }
        });
        *slot = n;
    }
    let allocating: Vec<String> = cases
        .iter()
        .zip(&per_case)
        .filter(|(_, n)| **n > 0)
        .map(|((name, ..), n)| format!("{name}: {n} allocations in 100 decisions"))
        .collect();
    assert!(allocating.is_empty(), "allocating cases: {allocating:#?}");

    // The whole mixed batch.
    let (allowed, n) = counting(|| {
        let mut allowed = 0usize;
        for i in 0..BATCH {
            let (_, request, _) = &cases[i % cases.len()];
            allowed += usize::from(snap.decide(black_box(request)).allowed);
        }
        allowed
    });
    assert_eq!(n, 0, "{n} allocations in {BATCH} decisions");
    let expected: usize = (0..BATCH).filter(|i| cases[i % cases.len()].2).count();
    assert_eq!(allowed, expected);
}

/// Paths with nothing to decode (every path Envoy sends after its own normalization, and the
/// usual raw path) are read in place: the canonicalizer borrows them and the decision that
/// follows allocates nothing either. Only a path with a percent-escape is copied.
#[test]
fn reading_a_plain_path_allocates_nothing() {
    let snap = snapshot();
    let plain = [
        "/v1/devices/d-42/snapshots",
        "/v1/devices/d-42/?expand=true&x=%20#frag",
        "/users/alice",
        "/",
    ];
    for raw in plain {
        let ((), n) = counting(|| {
            for _ in 0..100 {
                let path = CanonicalPath::parse(black_box(raw), PathOptions::default())
                    .expect("canonical");
                let request = req(
                    "dashboard",
                    Action::Http {
                        method: "GET",
                        path: &path,
                    },
                );
                black_box(snap.decide(black_box(&request)));
            }
        });
        assert_eq!(n, 0, "{raw}: {n} allocations in 100 reads and decisions");
    }
    // Refusals allocate nothing either.
    let ((), n) = counting(|| {
        for raw in ["/users/alice/..;/bob", "/v1//devices", "/a/%2e%2e/b"] {
            black_box(CanonicalPath::parse(black_box(raw), PathOptions::default()).is_err());
        }
    });
    assert_eq!(n, 0, "{n} allocations refusing paths");
    // The counter sees the copy a decoded path needs, so the zeros above are not vacuous.
    let (path, n) = counting(|| CanonicalPath::parse("/v1/devices/a%20b", PathOptions::default()));
    assert_eq!(path.expect("canonical").as_str(), "/v1/devices/a b");
    assert!(n >= 1);
}

/// A CheckBatch decides each item with no allocation of its own: validation, the path
/// canonicalizer and the engine run per item over the request's own strings, and only the
/// caller's answer allocates (here the sink keeps a count, so nothing does).
#[test]
fn batch_items_allocate_nothing_beyond_the_answer() {
    use authz_sidecar::api::{decide_batch, pb};
    let snap = snapshot();
    let item = |subject: &str, action: pb::check_request::Action| pb::CheckRequest {
        subject: subject.into(),
        action: Some(action),
        ..Default::default()
    };
    let perm = |p: &str| pb::check_request::Action::Permission(p.into());
    let http = |m: &str, p: &str| {
        pb::check_request::Action::Http(pb::HttpRequest {
            method: m.into(),
            path: p.into(),
        })
    };
    let kinds = [
        item("dashboard", perm("devices:read")),
        item("dashboard", perm("alarms:write")),
        item("app-000123", perm("events:read")),
        item("ghost", perm("events:read")),
        item("dashboard", http("GET", "/v1/devices/d-42/snapshots?x=1")),
        item("alice", http("PUT", "/users/alice")),
        item("alice", http("GET", "/users/alice/..;/bob")),
        item(
            "dispatcher",
            pb::check_request::Action::Event("alarm.created".into()),
        ),
        pb::CheckRequest {
            scope: "site-1".into(),
            ..item("dispatcher", perm("alarms:write"))
        },
        pb::CheckRequest {
            roles: vec!["app-dispatcher".into()],
            subject_type: "app".into(),
            ..item("token-1", perm("alarms:write"))
        },
    ];
    let items: Vec<pb::CheckRequest> = kinds.iter().cycle().take(100).cloned().collect();
    let run = |items: &[pb::CheckRequest]| {
        let mut allowed = 0usize;
        decide_batch(&snap, PathOptions::default(), items, |_, d| {
            allowed += usize::from(d.allowed);
        })
        .map(|()| allowed)
    };
    let expected = run(&items).expect("valid batch");
    assert!(expected > 0 && expected < items.len(), "{expected} allowed");
    let (allowed, n) = counting(|| run(black_box(&items)));
    assert_eq!(allowed.expect("valid batch"), expected);
    assert_eq!(
        n,
        0,
        "{n} allocations deciding a batch of {} items",
        items.len()
    );
}

#[test]
fn counter_counts() {
    let (v, n) = counting(|| black_box(vec![1u8; 32]));
    assert_eq!(v.len(), 32);
    assert!(n >= 1, "a Vec allocation was not counted");

    let (s, n) = counting(|| {
        let mut s = String::with_capacity(1);
        for _ in 0..100 {
            s.push('x'); // grows: realloc
        }
        black_box(s)
    });
    assert_eq!(s.len(), 100);
    assert!(n >= 2, "reallocations were not counted ({n})");

    let (z, n) = counting(|| black_box(vec![0u64; 64]));
    assert!(z.iter().all(|x| *x == 0));
    assert!(n >= 1, "a zeroed allocation was not counted");

    // A decision that builds a String (as a caller formatting the reason would) is counted.
    let snap = snapshot();
    let request = req("dashboard", Action::Permission("devices:read"));
    let (text, n) = counting(|| snap.decide(&request).reason.to_string());
    assert!(text.contains("devices:read"), "{text}");
    assert!(n >= 1);
}
