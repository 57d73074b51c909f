//! Prometheus metrics on their own port: decisions, latency, revision, admin changes, refusals.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

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

#[tokio::test]
async fn the_decision_log_writes_structured_json_lines() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("authz.sock");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_authz-sidecar"))
        .args([
            "--listen",
            "none",
            "--log-format",
            "json",
            "--decision-log-every",
            "1",
        ])
        .arg("--uds")
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let channel = loop {
        let path = socket.clone();
        let attempt = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await;
        if let Ok(channel) = attempt {
            let mut client =
                authz_sidecar::api::pb::authz_client::AuthzClient::new(channel.clone());
            if client
                .check(permission("dashboard", "devices:read"))
                .await
                .is_ok()
            {
                break channel;
            }
        }
        assert!(std::time::Instant::now() < deadline, "sidecar never served");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut client = authz_sidecar::api::pb::authz_client::AuthzClient::new(channel);
    check(
        &mut client,
        http("dashboard", "POST", "/v1/alarms/a1/dispatch"),
    )
    .await;
    drop(client);
    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let out = child.wait_with_output().await.expect("exits");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let entries: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "authz::decision")
        .collect();
    assert!(entries.len() >= 2, "{stderr}");
    let denied = entries
        .iter()
        .find(|e| e["fields"]["kind"] == "http")
        .expect("the http decision");
    assert_eq!(denied["fields"]["subject"], "dashboard");
    assert_eq!(denied["fields"]["allowed"], false);
    assert_eq!(denied["fields"]["action"], "POST /v1/alarms/a1/dispatch");
    assert!(
        denied["fields"]["reason"]
            .as_str()
            .expect("reason")
            .contains("alarms:write")
    );
}

#[tokio::test]
async fn embedded_mode_exports_no_fleet_metrics() {
    let sc = start(EMBEDDED_DEFAULT).await;
    let text = scrape(
        sc.sidecar.metrics_addr().expect("metrics listener"),
        "/metrics",
    )
    .await;
    assert!(text.contains("authz_policy_revision"), "{text}");
    // `authz_fleet_connected 0` on an embedded sidecar would trip fleet alerts.
    assert!(!text.contains("authz_fleet_"), "{text}");
}

#[tokio::test]
async fn connections_closed_by_the_limits_are_counted_by_listener_and_reason() {
    let sc = start_with(EMBEDDED_DEFAULT, |c| c.limits.max_connections = 2).await;
    let api = sc.sidecar.tcp_addr().expect("tcp");
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut socket = tokio::net::TcpStream::connect(api).await.expect("connects");
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("write");
        sockets.push(socket);
    }
    let pool = sc.sidecar.api_connections().clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool
        .stats()
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed)
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "not accepted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = scrape(sc.sidecar.metrics_addr().expect("metrics"), "/metrics").await;
    assert_eq!(
        value(&text, "authz_connections_open{listener=\"api\"}"),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "authz_connections_closed_total{listener=\"api\",reason=\"evicted\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "authz_accept_errors_total{listener=\"api\"}"),
        0.0
    );
    // The scrape's own connection.
    assert_eq!(
        value(&text, "authz_connections_open{listener=\"metrics\"}"),
        1.0
    );
}
