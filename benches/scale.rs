//! Scale figures at a million subjects: import, cold start to SERVING, resident memory, how
//! long a subject or role write takes to become visible to Check, and UpdatePermission latency
//! with its fsync. Prints a table; run with `cargo bench --bench scale`
//! (`SCALE_SUBJECTS=N` to change the size).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use authz_sidecar::engine::{Action, Request};
use authz_sidecar::live::{LivePolicy, Seed};
use authz_sidecar::model::file::{EMBEDDED_DEFAULT, parse_policy};
use authz_sidecar::model::{Grant, PermissionChange, Subject};
use authz_sidecar::store::{ImportMode, MutableStore, SledStore};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Set for the child process that times writes on the data dir it names.
const WRITES_IN: &str = "SCALE_WRITES_IN";

/// Writes right after start-up, timed but kept out of the percentiles.
const WARM_WRITES: usize = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Starts the release binary on `data` and returns (time to the "serving" line, RSS KiB).
fn cold_start(data: &std::path::Path) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_authz-sidecar"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        if line.expect("line").contains("serving") {
            break;
        }
    }
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kib(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (elapsed, rss)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; nothing to list here.
    }
    if let Some(data) = std::env::var_os(WRITES_IN) {
        time_writes(std::path::Path::new(&data));
        return;
    }
    let n: usize = std::env::var("SCALE_SUBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let roles = [
        "app-dashboard",
        "app-dispatcher",
        "app-ai-verifier",
        "app-compliance",
        "app-readonly",
    ];
    let mut policy = parse_policy("example", EMBEDDED_DEFAULT).expect("example");
    let base_subjects = policy.subjects.len();
    // The role written below changes directly (no approval step) so each write is one commit.
    for role in policy
        .roles
        .iter_mut()
        .filter(|r| r.name == "app-compliance")
    {
        role.requires_approval = false;
    }
    policy.subjects.extend((0..n).map(|i| Subject {
        id: format!("app-{i:07}"),
        subject_type: "app".into(),
        roles: vec![roles[i % roles.len()].into()],
        ..Subject::default()
    }));
    policy.normalize();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    // As `authz-sidecar import` does it: import, then settle.
    let t = Instant::now();
    SledStore::open(&data)
        .expect("open")
        .import(&policy, "bench", ImportMode::Reseed, "bench")
        .expect("import");
    SledStore::settle(&data).expect("settle");
    let import = t.elapsed();
    drop(policy);

    // The binary, as an operator runs it: empty example RSS first, then the big data dir.
    let empty = tempfile::tempdir().expect("tempdir");
    let (_, idle_rss) = cold_start(&empty.path().join("data"));
    let mut starts: Vec<Duration> = Vec::new();
    let mut big_rss = 0;
    for _ in 0..3 {
        let (elapsed, rss) = cold_start(&data);
        starts.push(elapsed);
        big_rss = big_rss.max(rss);
    }
    starts.sort();

    println!(
        "scale figures, {} subjects ({} from the example), {} cores",
        n + base_subjects,
        base_subjects,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| import into sled (one transaction, flushed) | {:.2} s |",
        import.as_secs_f64()
    );
    println!(
        "| cold start to SERVING (binary, min / median / max of 3) | {:.2} / {:.2} / {:.2} s |",
        starts[0].as_secs_f64(),
        starts[1].as_secs_f64(),
        starts[2].as_secs_f64()
    );
    println!(
        "| RSS idle, example policy | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| RSS serving {} subjects | {:.1} MiB |",
        n + base_subjects,
        big_rss as f64 / 1024.0
    );
    // Writes are timed in a process of their own, as a restarted sidecar opens its data dir: a
    // store re-opened inside the process that imported it is slower than any real start-up.
    let status = Command::new(std::env::current_exe().expect("own path"))
        .env(WRITES_IN, &data)
        .status()
        .expect("runs the write phase");
    assert!(status.success(), "write phase failed: {status}");
}

/// Child process: opens `data` like a restarted sidecar and prints the write rows.
fn time_writes(data: &std::path::Path) {
    // How long until a write is visible to Check, fsync included.
    let store = Arc::new(SledStore::open(data).expect("open"));
    let seed = Seed {
        policy: parse_policy("example", EMBEDDED_DEFAULT).expect("example"),
        digest: "bench".into(),
        reloadable: false,
    };
    let (live, _) = LivePolicy::open(store, &seed, None).expect("open");
    // Admin writes are async; these run one at a time on a runtime of their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let visible = |subject: &str, permission: &str| {
        live.current()
            .snapshot
            .decide(&Request {
                subject,
                action: Action::Permission(permission),
                scope: None,
                resource: None,
                inline: None,
            })
            .allowed
    };
    let mut subject_writes = Vec::new();
    for i in 0..200 + WARM_WRITES {
        let id = format!("new-{i}");
        let t = Instant::now();
        runtime
            .block_on(live.put_subject(
                "bench",
                Subject {
                    id: id.clone(),
                    subject_type: "app".into(),
                    roles: vec!["app-dispatcher".into()],
                    ..Subject::default()
                },
                0,
            ))
            .expect("put");
        assert!(visible(&id, "alarms:write"));
        subject_writes.push(t.elapsed());
    }
    // The first writes after start-up are reported apart.
    let first_writes = subject_writes
        .drain(..WARM_WRITES)
        .max()
        .unwrap_or_default();
    subject_writes.sort();
    let mut role_writes = Vec::new();
    for i in 0..200 {
        let enabled = i % 2 == 0;
        let change = PermissionChange::Set(Grant {
            permission: "devices:write".into(),
            enabled,
            projects: vec![],
        });
        let t = Instant::now();
        let (outcome, _) = runtime
            .block_on(live.update_permission("bench", "app-compliance", &change, 0))
            .expect("update");
        let _ = outcome;
        assert_eq!(visible("compliance", "devices:write"), enabled);
        role_writes.push(t.elapsed());
    }
    role_writes.sort();

    println!(
        "| first {WARM_WRITES} PutSubjects after start-up, slowest | {:.0} ms |",
        first_writes.as_secs_f64() * 1e3
    );
    println!(
        "| PutSubject → visible to Check (fsync incl.), p50 / p99 of 200 | {:.2} / {:.2} ms |",
        percentile(&subject_writes, 0.5).as_secs_f64() * 1e3,
        percentile(&subject_writes, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| UpdatePermission → visible to Check (fsync incl.), p50 / p99 of 200 | {:.2} / {:.2} ms |",
        percentile(&role_writes, 0.5).as_secs_f64() * 1e3,
        percentile(&role_writes, 0.99).as_secs_f64() * 1e3
    );
}
