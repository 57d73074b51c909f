//! Who-can at a million subjects: the first page of `Snapshot::who_can` for a permission held
//! by 1% of them, a page deep into the list (resumed from a token's id), and an HTTP request;
//! plus the one-off build of the base's reverse index, printed before the measurements.
//!
//! The embedded monitoring-apps policy grown to `WHO_CAN_SUBJECTS` (default 1,000,000)
//! synthetic apps: one in a hundred holds `app-dispatcher`, the only role granting
//! `alarms:write`; the rest hold the four other roles in turn.
//!
//! Run: `cargo bench --bench who_can` (or `-- --quick`).

#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use authz_sidecar::engine::{Action, Snapshot, WhoCan};
use authz_sidecar::model::file::{EMBEDDED_DEFAULT, parse_policy};
use authz_sidecar::model::{CanonicalPath, PathOptions, Subject};
use criterion::{Criterion, criterion_group, criterion_main};

fn subjects() -> usize {
    std::env::var("WHO_CAN_SUBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn snapshot(n: usize) -> Snapshot {
    let mut policy = parse_policy("monitoring-apps.yaml", EMBEDDED_DEFAULT).expect("seed policy");
    let others = [
        "app-ai-verifier",
        "app-dashboard",
        "app-compliance",
        "app-readonly",
    ];
    policy.subjects.clear();
    for i in 0..n {
        let role = if i % 100 == 0 {
            "app-dispatcher"
        } else {
            others[i % others.len()]
        };
        policy.subjects.push(Subject {
            id: format!("app-{i:07}"),
            subject_type: "app".to_owned(),
            roles: vec![role.to_owned()],
            ..Subject::default()
        });
    }
    Snapshot::compile(&policy, 1)
}

fn bench_who_can(c: &mut Criterion) {
    let n = subjects();
    let snap = snapshot(n);
    let rare = WhoCan {
        action: Action::Permission("alarms:write"),
        scope: None,
        resource: None,
        subject_type: None,
        role: None,
    };
    // The first call builds the base's reverse index (once per base); time it apart.
    let started = Instant::now();
    let first = snap.who_can(&rare, None, 100);
    eprintln!(
        "who_can: first call at {n} subjects, reverse index built: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(first.subjects.len(), 100);
    assert_eq!(
        first.examined, 101,
        "one candidate beyond the page says more follow"
    );

    let mut group = c.benchmark_group("who_can");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function(format!("permission_1pct_first_page_100/{n}"), |b| {
        b.iter(|| black_box(snap.who_can(black_box(&rare), None, 100)))
    });
    let deep = format!("app-{:07}", n / 2);
    group.bench_function(format!("permission_1pct_page_100_from_middle/{n}"), |b| {
        b.iter(|| black_box(snap.who_can(black_box(&rare), Some(&deep), 100)))
    });
    let path =
        CanonicalPath::parse("/v1/alarms/a1/dispatch", PathOptions::default()).expect("canonical");
    let http = WhoCan {
        action: Action::Http {
            method: "POST",
            path: &path,
        },
        ..rare
    };
    group.bench_function(format!("http_1pct_first_page_100/{n}"), |b| {
        b.iter(|| black_box(snap.who_can(black_box(&http), None, 100)))
    });
    // A quarter of the subjects hold `devices:read` (app-dashboard) plus the read-only role.
    let common = WhoCan {
        action: Action::Permission("devices:read"),
        ..rare
    };
    group.bench_function(format!("permission_common_first_page_1000/{n}"), |b| {
        b.iter(|| black_box(snap.who_can(black_box(&common), None, 1000)))
    });
    group.finish();
}

criterion_group!(benches, bench_who_can);
criterion_main!(benches);
