//! Prometheus metrics on their own port: decisions, latency, revision, admin changes, refusals.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;

use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series `{series}` in\n{text}"))
}

#[tokio::test]
async fn metrics_count_decisions_changes_and_refusals() {
    let sc = start(EMBEDDED_DEFAULT).await;
    let mut client = sc.client().await;
    for _ in 0..3 {
        check(&mut client, permission("dashboard", "devices:read")).await;
    }
    check(&mut client, permission("dashboard", "devices:write")).await;
    check(&mut client, http("dashboard", "GET", "/v1/devices")).await;
    check(&mut client, event("dashboard", "alarm.created")).await;
    client
        .update_permission(admin(set("app-dispatcher", "alarms:write", false, &[])))
        .await
        .expect("update");
    client
        .update_permission(set("app-dispatcher", "alarms:write", false, &[]))
        .await
        .expect_err("no token");

    let addr = sc.sidecar.metrics_addr().expect("metrics listener");
    let text = scrape(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        value(
            &text,
            "authz_decisions_total{action=\"permission\",result=\"allow\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "authz_decisions_total{action=\"permission\",result=\"deny\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "authz_decisions_total{action=\"http\",result=\"allow\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "authz_decisions_total{action=\"event\",result=\"allow\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "authz_check_duration_seconds_count{action=\"permission\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &text,
            "authz_admin_changes_total{action=\"update_permission\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "authz_admin_refused_total"), 1.0);
    assert_eq!(value(&text, "authz_policy_revision"), 2.0);
    assert_eq!(value(&text, "authz_subjects"), 5.0);
    assert!(value(&text, "authz_snapshot_age_seconds") < 60.0);
    assert_eq!(value(&text, "authz_policy_reload_errors_total"), 0.0);
    assert_eq!(value(&text, "authz_envoy_shadow_denials_total"), 0.0);
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);

    let missing = scrape(addr, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}
