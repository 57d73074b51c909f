//! A sustained mixed load, bounded in time and on loopback: Checks of every kind and admin writes
//! together for a minute (`SOAK_SECS` to change), zero errors other than the expected ones, and
//! memory flat at the end.
//!
//! Opt-in (`#[ignore]`): a minute of load is not something every `cargo test` should pay for, and
//! its memory check needs the process to itself. `.ci/run` runs it alone after the suite:
//! `cargo test --test it soak -- --ignored`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use authz_sidecar::api::pb;
use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use common::*;
use tonic::Code;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opt-in soak: run alone, `cargo test --test it soak -- --ignored`"]
async fn checks_and_writes_together_for_a_minute() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let sc = start(EMBEDDED_DEFAULT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for worker in 0..6u64 {
        let mut client = if worker % 2 == 0 {
            sc.client().await
        } else {
            pb::authz_client::AuthzClient::new(sc.uds_channel().await)
        };
        let (stop, checks, unexpected) = (
            Arc::clone(&stop),
            Arc::clone(&checks),
            Arc::clone(&unexpected),
        );
        tasks.push(tokio::spawn(async move {
            let requests = [
                permission("dashboard", "devices:read"),
                http("dispatcher", "POST", "/v1/alarms/a1/dispatch?x=1"),
                event("ai-verifier", "snapshot.created"),
                permission("pool-7", "devices:read"),
                http("dashboard", "DELETE", "/v1/nowhere"),
            ];
            let mut i = worker as usize;
            while !stop.load(Ordering::Relaxed) {
                match client.check(requests[i % requests.len()].clone()).await {
                    Ok(_) => checks.fetch_add(1, Ordering::Relaxed),
                    Err(_) => unexpected.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    {
        let mut client = sc.client().await;
        let (stop, writes, stale, unexpected) = (
            Arc::clone(&stop),
            Arc::clone(&writes),
            Arc::clone(&stale),
            Arc::clone(&unexpected),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // A bounded pool of subjects, put and deleted in turn, and role toggles; every
                // tenth write deliberately carries a stale expected_revision.
                let id = format!("pool-{}", n % 50);
                let result = match n % 4 {
                    0 | 1 => client
                        .put_subject(admin(pb::PutSubjectRequest {
                            subject: Some(pb::Subject {
                                id,
                                r#type: "app".into(),
                                roles: vec!["app-dashboard".into()],
                                ..Default::default()
                            }),
                            expected_revision: if n % 10 == 0 { 1 } else { 0 },
                        }))
                        .await
                        .map(|_| ()),
                    2 => client
                        .delete_subject(admin(pb::DeleteSubjectRequest {
                            id,
                            expected_revision: 0,
                        }))
                        .await
                        .map(|_| ()),
                    _ => client
                        .update_permission(admin(set(
                            "app-compliance",
                            "devices:read",
                            n % 8 == 3,
                            &[],
                        )))
                        .await
                        .map(|_| ()),
                };
                match result {
                    Ok(()) => {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s)
                        if s.code() == Code::FailedPrecondition || s.code() == Code::NotFound =>
                    {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let warm = Duration::from_secs(secs.min(10));
    tokio::time::sleep(warm).await;
    let rss_warm = rss_kib();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(warm)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("task");
    }
    let rss_end = rss_kib();
    let (checks, writes, stale, unexpected) = (
        checks.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
        unexpected.load(Ordering::Relaxed),
    );
    println!(
        "soak {secs} s: {checks} checks, {writes} writes, {stale} expected refusals, {unexpected} unexpected errors; RSS {rss_warm} KiB after warm-up → {rss_end} KiB after {:.0} s more",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(unexpected, 0);
    assert!(
        checks > 1000 && writes > 100,
        "the load ran: {checks} checks, {writes} writes"
    );
    assert!(stale > 0, "stale expected_revision writes were refused");
    assert!(
        rss_end <= rss_warm + 24 * 1024,
        "memory grew from {rss_warm} KiB to {rss_end} KiB"
    );
    // Still answering, at the revision of the last write.
    let mut client = sc.client().await;
    assert!(
        check(&mut client, permission("dashboard", "devices:read"))
            .await
            .allowed
    );
}
