//! In-process cost of a CheckBatch item against a single decision, on the embedded
//! monitoring-apps policy grown to 1e5 synthetic subjects.
//!
//! Output reads `batch/<case>/<how>`: `decide` is `Snapshot::decide` alone on an already
//! canonical request; `check` is one wire `CheckRequest` through the validation, canonicalizer
//! and engine that `Check` runs (`decide_batch` over one item); `batch100` is 100 such items in
//! one `decide_batch` (criterion reports per item: elements/s). `batch100+answer` also builds
//! the wire answer of each item, as the handler does.
//!
//! Run: `cargo bench --bench batch` (or `cargo bench --bench batch -- --quick`).

#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use authz_sidecar::api::{decide_batch, pb};
use authz_sidecar::engine::{Action, Request, Snapshot};
use authz_sidecar::model::file::{EMBEDDED_DEFAULT, parse_policy};
use authz_sidecar::model::{CanonicalPath, PathOptions, Subject};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SUBJECTS: usize = 100_000;
const ITEMS: usize = 100;

fn snapshot() -> (Snapshot, Vec<String>) {
    let mut policy = parse_policy("monitoring-apps.yaml", EMBEDDED_DEFAULT).expect("seed policy");
    let roles: Vec<String> = policy.roles.iter().map(|r| r.name.clone()).collect();
    for i in 0..SUBJECTS {
        policy.subjects.push(Subject {
            id: format!("app-{i:06}"),
            subject_type: "app".to_owned(),
            roles: vec![roles[i % roles.len()].clone()],
            ..Subject::default()
        });
    }
    (Snapshot::compile(&policy, 1), roles)
}

/// `ITEMS` ids holding `role`, spread over the synthetic set.
fn ids_with(roles: &[String], role: &str) -> Vec<String> {
    let offset = roles.iter().position(|r| r == role).expect("seed role");
    let stride = (SUBJECTS / ITEMS / roles.len()).max(1) * roles.len();
    (0..ITEMS)
        .map(|k| format!("app-{:06}", (k * stride + offset) % SUBJECTS))
        .collect()
}

fn bench_batch(c: &mut Criterion) {
    let (snap, roles) = snapshot();
    let dashboard = ids_with(&roles, "app-dashboard");
    let permission: Vec<pb::CheckRequest> = dashboard
        .iter()
        .map(|id| pb::CheckRequest {
            subject: id.clone(),
            action: Some(pb::check_request::Action::Permission("devices:read".into())),
            ..Default::default()
        })
        .collect();
    let http: Vec<pb::CheckRequest> = dashboard
        .iter()
        .map(|id| pb::CheckRequest {
            subject: id.clone(),
            action: Some(pb::check_request::Action::Http(pb::HttpRequest {
                method: "GET".into(),
                path: "/v1/devices/d-42/snapshots".into(),
            })),
            ..Default::default()
        })
        .collect();
    let snapshots_path = CanonicalPath::parse("/v1/devices/d-42/snapshots", PathOptions::default())
        .expect("canonical");
    let paths = PathOptions::default();
    for (name, items) in [("permission", &permission), ("http", &http)] {
        let engine: Vec<Request<'_>> = dashboard
            .iter()
            .map(|id| Request {
                subject: id,
                action: if name == "http" {
                    Action::Http {
                        method: "GET",
                        path: &snapshots_path,
                    }
                } else {
                    Action::Permission("devices:read")
                },
                scope: None,
                resource: None,
                inline: None,
            })
            .collect();
        for r in &engine {
            assert!(snap.decide(r).allowed, "{name}: {r:?}");
        }
        let mut group = c.benchmark_group(format!("batch/{name}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("decide", |b| {
            let mut k = 0usize;
            b.iter(|| {
                k = (k + 1) % ITEMS;
                black_box(snap.decide(black_box(&engine[k])).allowed)
            });
        });
        group.bench_function("check", |b| {
            let mut k = 0usize;
            b.iter(|| {
                k = (k + 1) % ITEMS;
                let mut allowed = false;
                decide_batch(&snap, paths, black_box(&items[k..=k]), |_, d| {
                    allowed = d.allowed;
                })
                .expect("valid");
                black_box(allowed)
            });
        });
        group.throughput(Throughput::Elements(ITEMS as u64));
        group.bench_function("batch100", |b| {
            b.iter(|| {
                let mut allowed = 0usize;
                decide_batch(&snap, paths, black_box(items), |_, d| {
                    allowed += usize::from(d.allowed);
                })
                .expect("valid");
                assert_eq!(allowed, ITEMS);
                black_box(allowed)
            });
        });
        group.bench_function("batch100+answer", |b| {
            b.iter(|| {
                let mut answers = Vec::with_capacity(ITEMS);
                decide_batch(&snap, paths, black_box(items), |_, d| {
                    answers.push(pb::CheckResponse {
                        allowed: d.allowed,
                        reason: d.reason.to_string(),
                        required: d
                            .required
                            .ids()
                            .map(|id| snap.permission_name(id).to_owned())
                            .collect(),
                        revision: snap.revision(),
                        explanation: None,
                    });
                })
                .expect("valid");
                black_box(answers)
            });
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench_batch
}
criterion_main!(benches);
