//! In-process decision benchmarks: `Snapshot::decide` against the seed-000 monitoring-apps
//! catalog (the embedded default policy) grown to 1e3, 1e5 and 1e6 synthetic subjects.
//!
//! Output reads `check/<case>/<subjects>`, e.g. `check/permission/1000`, `check/http/1000000`.
//!
//! Run: `cargo bench --bench check` (or `cargo bench --bench check -- --quick`).

// criterion_group! generates an undocumented `pub fn`; a broken fixture should fail loudly.
#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use authz_sidecar::engine::{Action, Request, Snapshot};
use authz_sidecar::model::file::{EMBEDDED_DEFAULT, parse_policy};
use authz_sidecar::model::{CanonicalPath, PathOptions, Subject};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Subject counts benchmarked (synthetic subjects added to the seed policy's own five).
const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

/// Distinct queried subject ids per case (a power of two: the closure masks its counter).
const IDS: usize = 64;

/// One compiled size, kept for the whole run; each size is built once.
struct Fixture {
    subjects: usize,
    snapshot: Snapshot,
    /// Names of the seed roles, in the order synthetic subjects were assigned them.
    roles: Vec<String>,
}

/// `app-000123`: the id of synthetic subject `i`.
fn synthetic_id(i: usize) -> String {
    format!("app-{i:06}")
}

/// Compiles every size from one growing policy: parse the seed once, then append synthetic
/// subjects (round-robin over the seed roles) up to each size and compile. The policy is
/// dropped once the largest snapshot is built; the snapshots do not borrow it.
fn fixtures() -> Vec<Fixture> {
    let mut policy = parse_policy("monitoring-apps.yaml", EMBEDDED_DEFAULT).expect("seed policy");
    let roles: Vec<String> = policy.roles.iter().map(|r| r.name.clone()).collect();
    let mut out = Vec::with_capacity(SIZES.len());
    let mut added = 0;
    for (rev, &n) in SIZES.iter().enumerate() {
        policy.subjects.reserve(n - added);
        for i in added..n {
            policy.subjects.push(Subject {
                id: synthetic_id(i),
                subject_type: "app".to_owned(),
                roles: vec![roles[i % roles.len()].clone()],
                ..Subject::default()
            });
        }
        added = n;
        let t = Instant::now();
        let snapshot = Snapshot::compile(&policy, rev as u64 + 1);
        eprintln!(
            "compiled {} subjects ({} synthetic) in {:.2?}",
            snapshot.subject_count(),
            n,
            t.elapsed()
        );
        out.push(Fixture {
            subjects: n,
            snapshot,
            roles: roles.clone(),
        });
    }
    out
}

impl Fixture {
    /// `IDS` synthetic ids holding `role`, spread evenly over the whole synthetic set so that
    /// lookups land on different hash buckets / cache lines.
    fn ids_with_role(&self, role: &str) -> Vec<String> {
        let r = self.roles.len();
        let offset = self
            .roles
            .iter()
            .position(|name| name == role)
            .expect("seed role");
        let stride = (self.subjects / IDS / r).max(1) * r;
        (0..IDS)
            .map(|k| synthetic_id((k * stride + offset) % self.subjects))
            .collect()
    }
}

/// One benchmark case: precomputed requests and the decision each must get.
struct Case<'a> {
    name: &'static str,
    requests: Vec<Request<'a>>,
    allowed: bool,
}

fn request<'a>(subject: &'a str, action: Action<'a>) -> Request<'a> {
    Request {
        subject,
        action,
        scope: None,
        resource: None,
        inline: None,
    }
}

/// The queried ids of one fixture, owned so that the requests can borrow them.
struct Ids {
    dashboard: Vec<String>,
    dispatcher: Vec<String>,
    /// The two request paths, read once by the canonicalizer (as the API reads every path).
    snapshots: CanonicalPath<'static>,
    dispatch: CanonicalPath<'static>,
}

fn cases<'a>(ids: &'a Ids) -> Vec<Case<'a>> {
    // Alternate the two seed endpoints, each asked by a subject whose role reaches it:
    // GET .../snapshots needs devices:read or snapshots:read (app-dashboard has devices:read),
    // POST .../dispatch needs alarms:write (app-dispatcher).
    let http = (0..IDS)
        .map(|k| {
            if k % 2 == 0 {
                request(
                    &ids.dashboard[k],
                    Action::Http {
                        method: "GET",
                        path: &ids.snapshots,
                    },
                )
            } else {
                request(
                    &ids.dispatcher[k],
                    Action::Http {
                        method: "POST",
                        path: &ids.dispatch,
                    },
                )
            }
        })
        .collect();
    vec![
        Case {
            name: "permission",
            requests: ids
                .dashboard
                .iter()
                .map(|id| request(id, Action::Permission("devices:read")))
                .collect(),
            allowed: true,
        },
        Case {
            name: "http",
            requests: http,
            allowed: true,
        },
        Case {
            // alarm.created is gated by events:read, which app-dispatcher holds.
            name: "event",
            requests: ids
                .dispatcher
                .iter()
                .map(|id| request(id, Action::Event("alarm.created")))
                .collect(),
            allowed: true,
        },
        Case {
            // app-dashboard is read-only: alarms:write is not granted.
            name: "denied",
            requests: ids
                .dashboard
                .iter()
                .map(|id| request(id, Action::Permission("alarms:write")))
                .collect(),
            allowed: false,
        },
    ]
}

fn canonical(path: &'static str) -> CanonicalPath<'static> {
    CanonicalPath::parse(path, PathOptions::default()).expect("canonical path")
}

fn bench_check(c: &mut Criterion) {
    let fixtures = fixtures();
    let ids: Vec<Ids> = fixtures
        .iter()
        .map(|f| Ids {
            dashboard: f.ids_with_role("app-dashboard"),
            dispatcher: f.ids_with_role("app-dispatcher"),
            snapshots: canonical("/v1/devices/d-42/snapshots"),
            dispatch: canonical("/v1/alarms/a1/dispatch"),
        })
        .collect();
    let per_size: Vec<Vec<Case<'_>>> = ids.iter().map(cases).collect();

    // Every precomputed request must get the expected answer before anything is timed.
    for (fixture, cases) in fixtures.iter().zip(&per_size) {
        for case in cases {
            assert_eq!(case.requests.len(), IDS);
            for req in &case.requests {
                let d = fixture.snapshot.decide(req);
                assert_eq!(
                    d.allowed, case.allowed,
                    "{} at {}: {req:?} -> {}",
                    case.name, fixture.subjects, d.reason
                );
            }
        }
    }

    let names: Vec<&'static str> = per_size[0].iter().map(|c| c.name).collect();
    for (i, name) in names.iter().enumerate() {
        let mut group = c.benchmark_group(format!("check/{name}"));
        for (fixture, cases) in fixtures.iter().zip(&per_size) {
            let requests = &cases[i].requests;
            let snapshot = &fixture.snapshot;
            group.bench_with_input(
                BenchmarkId::from_parameter(fixture.subjects),
                requests,
                |b, requests| {
                    let mut k = 0usize;
                    b.iter(|| {
                        let req = &requests[k & (IDS - 1)];
                        k = k.wrapping_add(1);
                        black_box(snapshot.decide(black_box(req)))
                    });
                },
            );
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = bench_check
}
criterion_main!(benches);
