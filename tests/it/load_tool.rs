//! The `authz-load` binary against the real sidecar, over TCP and over the Unix socket: every
//! scenario answers, nothing fails, and a failing call makes the exit status non-zero.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::process::{Command, Output};

use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use serde_json::Value;

/// Runs `authz-load` with `args` on the blocking pool (the sidecar keeps serving on the runtime).
async fn load(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_authz-load"))
            .args(&args)
            .output()
            .expect("authz-load runs")
    })
    .await
    .expect("join")
}

fn short_run(target: String, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--target",
        &target,
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--concurrency",
        "4",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "authz-load prints JSON ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn assert_clean_run(output: &Output, transport: &str) {
    assert!(
        output.status.success(),
        "authz-load over {transport} exits 0; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = report(output);
    assert_eq!(report["transport"], transport);
    assert_eq!(report["errors"], 0);
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["scenario"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["health", "permission", "http", "envoy"]);
    for s in scenarios {
        let name = &s["scenario"];
        let requests = s["requests"].as_u64().expect("requests");
        assert!(requests > 0, "{name} over {transport} completed calls: {s}");
        assert_eq!(s["errors"], 0, "{name} over {transport}: {s}");
        assert!(s["rps"].as_f64().expect("rps") > 0.0, "{s}");
        let p50 = s["p50_us"].as_f64().expect("p50");
        let p99 = s["p99_us"].as_f64().expect("p99");
        let max = s["max_us"].as_f64().expect("max");
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{s}");
        if name != "health" {
            assert!(s["pct_of_health"].as_f64().expect("ratio") > 0.0, "{s}");
            // `dashboard` holds devices:read, and GET /v1/devices/{id} needs it.
            assert_eq!(s["allowed"].as_u64(), Some(requests), "{s}");
            assert_eq!(s["denied"], 0, "{s}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_tool_runs_every_scenario_over_tcp_and_the_unix_socket() {
    let sc = common::start(EMBEDDED_DEFAULT).await;
    let tcp = format!("tcp://{}", sc.sidecar.tcp_addr().expect("tcp"));
    let unix = format!("unix://{}", sc.sidecar.uds_path().expect("uds").display());

    assert_clean_run(&load(short_run(tcp, &["--connections", "2"])).await, "tcp");
    assert_clean_run(
        &load(short_run(unix, &["--connections", "1"])).await,
        "unix",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_answers_and_failed_calls_fail_the_run() {
    let sc = common::start(EMBEDDED_DEFAULT).await;
    let tcp = format!("tcp://{}", sc.sidecar.tcp_addr().expect("tcp"));

    // An unknown subject is denied: counted as denied, not as an error.
    let denied = load(short_run(
        tcp.clone(),
        &["--scenario", "permission,envoy", "--subject", "nobody"],
    ))
    .await;
    assert!(denied.status.success(), "{denied:?}");
    for s in report(&denied)["scenarios"].as_array().expect("scenarios") {
        assert_eq!(s["errors"], 0, "{s}");
        assert_eq!(s["allowed"], 0, "{s}");
        assert_eq!(s["denied"].as_u64(), s["requests"].as_u64(), "{s}");
    }

    // An empty permission is INVALID_ARGUMENT: every call fails and the exit status says so.
    let failed = load(short_run(
        tcp,
        &["--scenario", "permission", "--permission", ""],
    ))
    .await;
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let report = report(&failed);
    let s = &report["scenarios"][0];
    assert!(s["errors"].as_u64().expect("errors") > 0, "{s}");
    assert_eq!(s["requests"], 0, "{s}");
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("InvalidArgument"),
        "{failed:?}"
    );

    // Nothing listening: a connection problem, exit status 2.
    let missing = sc.dir.path().join("missing.sock");
    let refused = load(short_run(format!("unix://{}", missing.display()), &[])).await;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_scenario_counts_each_item_as_a_decision() {
    let sc = common::start(EMBEDDED_DEFAULT).await;
    let unix = format!("unix://{}", sc.sidecar.uds_path().expect("uds").display());
    let output = load(short_run(
        unix,
        &["--scenario", "permission,batch", "--batch-size", "10"],
    ))
    .await;
    assert!(output.status.success(), "{output:?}");
    let report = report(&output);
    let batch = &report["scenarios"][1];
    assert_eq!(batch["scenario"], "batch");
    let calls = batch["requests"].as_u64().expect("requests");
    assert!(calls > 0, "{batch}");
    assert_eq!(batch["allowed"].as_u64(), Some(calls * 10), "{batch}");
    let items = batch["items_per_s"].as_f64().expect("items/s");
    let rps = batch["rps"].as_f64().expect("rps");
    assert!(
        (items - 10.0 * rps).abs() < 1e-6 * items.max(1.0),
        "{batch}"
    );
    assert!(
        report["batch_gain"].as_f64().expect("gain") > 0.0,
        "{report}"
    );
    // Out of range is a usage error.
    let bad = load(short_run(
        format!("tcp://{}", sc.sidecar.tcp_addr().expect("tcp")),
        &["--scenario", "batch", "--batch-size", "1001"],
    ))
    .await;
    assert_eq!(bad.status.code(), Some(2));
}
