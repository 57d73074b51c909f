//! Concurrency of the single writer and the lock-free readers: optimistic concurrency lets
//! exactly one of many racing writes win each revision (the rest are FAILED_PRECONDITION
//! "stale"), nothing is lost or doubled in the audit trail, and a Check under a storm of writes
//! always decides from one whole snapshot whose revision it reports, never going backwards on a
//! connection.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use authz_sidecar::api::pb::{self, authz_client::AuthzClient};
use common::{admin, audit_after, check, event, permission, set};
use tokio::sync::Barrier;
use tonic::Code;
use tonic::transport::Channel;

const FIXTURE: &str = include_str!("../fixtures/rules.yaml");

async fn current_revision(client: &mut AuthzClient<Channel>) -> u64 {
    check(client, permission("app1", "devices:read"))
        .await
        .revision
}

fn put(id: &str, role: &str, expected_revision: u64) -> pb::PutSubjectRequest {
    pb::PutSubjectRequest {
        subject: Some(pb::Subject {
            id: id.into(),
            r#type: "app".into(),
            roles: vec![role.into()],
            ..Default::default()
        }),
        expected_revision,
    }
}

/// One racing write: what it targets in the audit trail, and the call itself.
#[derive(Debug, Clone)]
enum Racer {
    Put(String),
    Toggle(&'static str, &'static str, bool),
}

impl Racer {
    fn target(&self) -> String {
        match self {
            Racer::Put(id) => format!("subject/{id}"),
            Racer::Toggle(role, ..) => format!("role/{role}"),
        }
    }

    async fn send(
        &self,
        client: &mut AuthzClient<Channel>,
        expected: u64,
    ) -> Result<u64, tonic::Status> {
        match self {
            Racer::Put(id) => client
                .put_subject(admin(put(id, "installed", expected)))
                .await
                .map(|r| r.into_inner().revision),
            Racer::Toggle(role, perm, enabled) => {
                let mut req = set(role, perm, *enabled, &[]);
                req.expected_revision = expected;
                client
                    .update_permission(admin(req))
                    .await
                    .map(|r| r.into_inner().revision)
            }
        }
    }
}

const RACE_ROUNDS: usize = 25;
const RACERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_on_one_revision_have_exactly_one_winner_and_nothing_is_lost() {
    let sc = common::start(FIXTURE).await;
    // Four connections, two racers on each.
    let mut clients = Vec::new();
    for _ in 0..RACERS / 2 {
        clients.push(sc.client().await);
    }
    let mut probe = sc.client().await;
    let start = current_revision(&mut probe).await;
    let mut winners: Vec<(u64, Racer)> = Vec::new();
    let mut stale_seen = 0;
    for round in 0..RACE_ROUNDS {
        let base = current_revision(&mut probe).await;
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for k in 0..RACERS {
            let racer = if k % 2 == 0 {
                Racer::Put(format!("race-{round}-{k}"))
            } else {
                let role = if k % 4 == 1 { "extra-1" } else { "extra-2" };
                let perm = ["devices:read", "devices:write", "global_read"][(round + k) % 3];
                Racer::Toggle(role, perm, (round + k) % 2 == 0)
            };
            let mut client = clients[k / 2].clone();
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let result = racer.send(&mut client, base).await;
                (racer, result)
            }));
        }
        let mut won = Vec::new();
        for t in tasks {
            let (racer, result) = t.await.unwrap();
            match result {
                Ok(revision) => won.push((revision, racer)),
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "round {round}: {racer:?}: {status:?}"
                    );
                    assert!(
                        status.message().contains("stale"),
                        "round {round}: the refusal should say stale: {}",
                        status.message()
                    );
                    stale_seen += 1;
                }
            }
        }
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one write against revision {base} may win: {won:?}"
        );
        assert_eq!(
            won[0].0,
            base + 1,
            "round {round}: the winner makes the next revision"
        );
        winners.extend(won);
    }

    // The audit trail holds exactly the winners, one per revision, in order.
    let trail = audit_after(&mut probe, start).await;
    let revisions: Vec<u64> = trail.iter().map(|e| e.revision).collect();
    let want: Vec<u64> = (start + 1..=start + RACE_ROUNDS as u64).collect();
    assert_eq!(revisions, want, "contiguous revisions, one per round");
    for ((revision, racer), entry) in winners.iter().zip(&trail) {
        assert_eq!(entry.revision, *revision);
        assert_eq!(entry.target, racer.target(), "revision {revision}");
        match racer {
            Racer::Put(id) => assert!(entry.after_json.contains(id.as_str()), "{entry:?}"),
            Racer::Toggle(_, perm, enabled) => {
                let after: serde_json::Value = serde_json::from_str(&entry.after_json).unwrap();
                let grant = after["grants"]
                    .as_array()
                    .and_then(|g| g.iter().find(|g| g["permission"] == *perm))
                    .unwrap_or_else(|| panic!("{perm} in {after}"));
                assert_eq!(grant["enabled"], *enabled, "{entry:?}");
            }
        }
    }
    // Winners' subjects exist; losers' were never written.
    for round in 0..RACE_ROUNDS {
        for k in (0..RACERS).step_by(2) {
            let id = format!("race-{round}-{k}");
            let won = winners
                .iter()
                .any(|(_, r)| matches!(r, Racer::Put(w) if *w == id));
            let got = check(&mut probe, permission(&id, "organization_info")).await;
            assert_eq!(got.allowed, won, "{id}: {}", got.reason);
        }
    }
    assert_eq!(
        current_revision(&mut probe).await,
        start + RACE_ROUNDS as u64
    );
    println!(
        "{RACE_ROUNDS} rounds of {RACERS} racing writes: {} winners, {stale_seen} stale refusals",
        winners.len()
    );
    sc.sidecar.stop().await.unwrap();
}

const RETRY_WRITERS: usize = 6;
const RETRY_WRITES_EACH: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_that_retry_on_stale_commit_each_change_exactly_once() {
    let sc = common::start(FIXTURE).await;
    let mut probe = sc.client().await;
    let start = current_revision(&mut probe).await;
    let mut tasks = Vec::new();
    for k in 0..RETRY_WRITERS {
        let mut client = sc.client().await;
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            let mut retries = 0;
            for i in 0..RETRY_WRITES_EACH {
                let id = format!("retry-{k}-{i}");
                loop {
                    let base = current_revision(&mut client).await;
                    match client.put_subject(admin(put(&id, "installed", base))).await {
                        Ok(r) => {
                            let revision = r.into_inner().revision;
                            assert_eq!(revision, base + 1, "{id}");
                            committed.push((revision, id.clone()));
                            break;
                        }
                        Err(status) => {
                            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                            assert!(status.message().contains("stale"), "{status:?}");
                            retries += 1;
                        }
                    }
                }
            }
            (committed, retries)
        }));
    }
    let mut committed = BTreeMap::new();
    let mut retries = 0;
    for t in tasks {
        let (c, r) = t.await.unwrap();
        retries += r;
        for (revision, id) in c {
            assert!(
                committed.insert(revision, id).is_none(),
                "revision {revision} acknowledged twice"
            );
        }
    }
    let total = (RETRY_WRITERS * RETRY_WRITES_EACH) as u64;
    let trail = audit_after(&mut probe, start).await;
    assert_eq!(trail.len() as u64, total, "one audit entry per change");
    for (entry, (revision, id)) in trail.iter().zip(&committed) {
        assert_eq!(entry.revision, *revision);
        assert_eq!(entry.target, format!("subject/{id}"));
    }
    assert_eq!(
        committed.keys().copied().collect::<Vec<_>>(),
        (start + 1..=start + total).collect::<Vec<_>>()
    );
    assert_eq!(current_revision(&mut probe).await, start + total);
    println!("{total} writes committed once each after {retries} stale retries");
    sc.sidecar.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Whole snapshots under a write storm

/// `ev` is gated by `p1` (type T1 only, granted by `ra`) and `p2` (type T2 only, granted by
/// `rb`). Subject `flip` alternates between {ra, T1} and {rb, T2}: both allow `ev`, while any
/// mix of the two (roles of one, type of the other) allows nothing. `steady` holds `rc`, whose
/// `p3` another writer toggles, so that role recompiles interleave with subject swaps.
const STORM: &str = r#"
catalog:
  permissions:
    - { name: p1, applies_to: [T1], events: [ev], endpoints: ["GET /things/{id}"] }
    - { name: p2, applies_to: [T2], events: [ev], endpoints: ["GET /things/{id}"] }
    - { name: p3 }
roles:
  - { name: ra, kind: misc, grants: [p1] }
  - { name: rb, kind: misc, grants: [p2] }
  - { name: rc, kind: misc, grants: [{ permission: p3, enabled: false }] }
subjects:
  - { id: flip, type: T1, roles: [ra] }
  - { id: steady, type: T1, roles: [rc] }
"#;

fn flip(to_a: bool) -> pb::PutSubjectRequest {
    let (role, ty) = if to_a { ("ra", "T1") } else { ("rb", "T2") };
    pb::PutSubjectRequest {
        subject: Some(pb::Subject {
            id: "flip".into(),
            r#type: ty.into(),
            roles: vec![role.into()],
            ..Default::default()
        }),
        expected_revision: 0,
    }
}

/// The state in force at `revision`: the last write at or before it, else the initial one.
fn state_at(log: &BTreeMap<u64, bool>, revision: u64, initial: bool) -> bool {
    log.range(..=revision)
        .next_back()
        .map_or(initial, |(_, s)| *s)
}

const STORM_WRITES: usize = 400;
const READERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_under_a_write_storm_see_whole_snapshots_in_order() {
    let sc = common::start(STORM).await;
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));

    let subject_writer = {
        let mut client = sc.client().await;
        tokio::spawn(async move {
            let mut log = BTreeMap::new();
            for i in 0..STORM_WRITES {
                let to_a = i % 2 == 1;
                let revision = client
                    .put_subject(admin(flip(to_a)))
                    .await
                    .expect("put")
                    .into_inner()
                    .revision;
                log.insert(revision, to_a);
            }
            log
        })
    };
    let role_writer = {
        let mut client = sc.client().await;
        tokio::spawn(async move {
            let mut log = BTreeMap::new();
            for i in 0..STORM_WRITES {
                let enabled = i % 2 == 0;
                let revision = client
                    .update_permission(admin(set("rc", "p3", enabled, &[])))
                    .await
                    .expect("update")
                    .into_inner()
                    .revision;
                log.insert(revision, enabled);
            }
            log
        })
    };
    let mut readers = Vec::new();
    for r in 0..READERS {
        let mut client = sc.client().await;
        let done = Arc::clone(&done);
        readers.push(tokio::spawn(async move {
            // (revision, which check, allowed)
            let mut seen: Vec<(u64, u8, bool)> = Vec::new();
            let mut last = 0;
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst) || i < 50 {
                let (which, request) = match (i + r as u64) % 4 {
                    0 => (0, event("flip", "ev")),
                    1 => (1, permission("flip", "p1")),
                    2 => (2, permission("steady", "p3")),
                    _ => (3, common::http("flip", "GET", "/things/t1")),
                };
                let got = check(&mut client, request).await;
                assert!(
                    got.revision >= last,
                    "reader {r}: revision went back from {last} to {}",
                    got.revision
                );
                last = got.revision;
                seen.push((got.revision, which, got.allowed));
                i += 1;
            }
            seen
        }));
    }
    let subjects = subject_writer.await.unwrap();
    let roles = role_writer.await.unwrap();
    done.store(true, Ordering::SeqCst);
    let mut observations = Vec::new();
    for t in readers {
        observations.extend(t.await.unwrap());
    }

    // The writers' revisions interleave and together are every revision after the import.
    let mut all: Vec<u64> = subjects.keys().chain(roles.keys()).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (2..2 + 2 * STORM_WRITES as u64).collect::<Vec<_>>());

    let mut distinct = std::collections::BTreeSet::new();
    for (revision, which, allowed) in &observations {
        distinct.insert(*revision);
        let in_a = state_at(&subjects, *revision, true);
        let p3 = state_at(&roles, *revision, false);
        match which {
            0 | 3 => assert!(
                *allowed,
                "a torn snapshot at revision {revision}: `flip` is neither {{ra, T1}} nor {{rb, T2}}"
            ),
            1 => assert_eq!(
                *allowed, in_a,
                "p1 for `flip` at revision {revision}: the subject written at or before it says {in_a}"
            ),
            _ => assert_eq!(
                *allowed, p3,
                "p3 for `steady` at revision {revision}: the role written at or before it says {p3}"
            ),
        }
    }
    println!(
        "{} Checks by {READERS} readers over {} distinct revisions during {} writes in {:?}",
        observations.len(),
        distinct.len(),
        2 * STORM_WRITES,
        started.elapsed()
    );
    assert!(
        distinct.len() > STORM_WRITES / 4,
        "readers should observe many revisions mid-storm, saw {}",
        distinct.len()
    );
    sc.sidecar.stop().await.unwrap();
}
