//! Careless operators and hostile inputs: policy files that would blow up the compiler are
//! refused by the same bounded compile everywhere, a bad policy file never turns a restart into
//! a crash loop, and `--uds` removes only a stale socket.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use authz_sidecar::reload::POLICY_FILE_SERVICE;
use authz_sidecar::server::{LIVENESS_SERVICE, ServerError, Sidecar};
use authz_sidecar::startup::read_seed;
use common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_authz-sidecar");

/// `n` permissions whose templates each put a literal at another position among `n` params:
/// the subset construction needs ~2^n states.
fn staggered(n: usize) -> String {
    let mut text = String::from("version: 1\ncatalog:\n  permissions:\n");
    for i in 0..n {
        let segs: Vec<String> = (0..n)
            .map(|j| {
                if i == j {
                    format!("l{i}")
                } else {
                    "{p}".into()
                }
            })
            .collect();
        text += &format!(
            "    - name: p{i}\n      endpoints:\n        - GET /{}\n",
            segs.join("/")
        );
    }
    text
}

fn chain(n: usize) -> String {
    let mut text = String::from("version: 1\ncatalog:\n  permissions:\n");
    for i in 0..n {
        text += &format!("    - name: c{i}\n");
        if i > 0 {
            text += &format!("      parent: c{}\n", i - 1);
        }
    }
    text
}

fn deep_template(segments: usize) -> String {
    format!(
        "version: 1\ncatalog:\n  permissions:\n    - name: p\n      endpoints:\n        - GET /{}\n",
        vec!["a"; segments].join("/")
    )
}

fn many_subjects(n: usize) -> String {
    let mut text = EMBEDDED_DEFAULT.to_owned();
    text += "\n";
    for i in 0..n {
        text += &format!("  - {{id: s{i}, type: app, roles: []}}\n");
    }
    text
}

fn validate(dir: &Path, name: &str, text: &str, extra: &[&str]) -> (i32, String, Duration) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("validate")
        .args(extra)
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        started.elapsed(),
    )
}

/// Every bound is refused by `validate` quickly, with a message that names what is too big
/// and the line it is on. Start, reload and import read files through the same parse and
/// validation (which runs the route compile), so what `validate` refuses they refuse.
#[test]
fn validate_refuses_every_unbounded_policy_quickly_naming_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, String, &[&str], &str)> = vec![
        (
            "staggered.yaml",
            staggered(21),
            &[],
            "route automaton states",
        ),
        (
            "deep.yaml",
            deep_template(5000),
            &[],
            "5000 path segments; a template has at most 64",
        ),
        (
            "chain.yaml",
            chain(4000),
            &[],
            "more than 32 permissions deep",
        ),
        (
            "loop.yaml",
            chain(3).replace("    - name: c0\n", "    - name: c0\n      parent: c2\n"),
            &[],
            "loops",
        ),
        (
            "big.yaml",
            format!("{EMBEDDED_DEFAULT}\n# {}\n", "x".repeat(1 << 20)),
            &[],
            "larger than 1048576 bytes",
        ),
        (
            "small-limit.yaml",
            EMBEDDED_DEFAULT.to_owned(),
            &["--max-policy-bytes", "4096"],
            "larger than 4096 bytes",
        ),
    ];
    for (name, text, extra, needle) in cases {
        let (code, out, took) = validate(dir.path(), name, &text, extra);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(needle), "{name}: wanted `{needle}` in {out}");
        assert!(
            out.contains(&format!("{name}:")),
            "{name}: names the file: {out}"
        );
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
    }
    // The chain is validated in linear time: 4000 deep took 19 s before.
    let (_, _, took) = validate(dir.path(), "chain2.yaml", &chain(8000), &[]);
    assert!(
        took < Duration::from_secs(3),
        "8000-deep chain took {took:?}"
    );
    // Bounds that are not reached pass.
    let (code, out, _) = validate(dir.path(), "ok.yaml", &staggered(8), &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = validate(dir.path(), "ok64.yaml", &deep_template(64), &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = validate(dir.path(), "ok-chain.yaml", &chain(33), &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_policy_file_listing_too_many_subjects_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = validate(
        dir.path(),
        "subjects.yaml",
        &many_subjects(100_001),
        &["--max-policy-bytes", "67108864"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(": subjects: 100006 subjects; a policy file lists at most 100000"),
        "{out}"
    );
}

async fn health(addr: std::net::SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(answer.status).unwrap()
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// With a good data dir, a bad policy file at start serves the stored policy: liveness and
/// readiness stay SERVING, `authz.v1.PolicyFile` is NOT_SERVING, the error is counted. With an
/// empty data dir the start is refused (nothing to serve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_file_at_start_serves_the_stored_policy() {
    let mut dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::launch(config(dir.path(), EMBEDDED_DEFAULT))
        .await
        .unwrap();
    sidecar.stop().await.unwrap();

    for (name, text) in [
        ("syntax.yaml", "catalog: [\n".to_owned()),
        ("blowup.yaml", staggered(21)),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, &text).unwrap();
        let mut cfg = config(dir.path(), EMBEDDED_DEFAULT);
        let err = read_seed(&file).expect_err("refused");
        cfg.seed_error = Some(err);
        cfg.store.policy = Some(file.clone());
        cfg.store.reload_interval = Some(Duration::from_millis(20));
        let sidecar = Sidecar::launch(cfg)
            .await
            .expect("starts on the stored policy");
        let sc = TestSidecar { sidecar, dir };
        let mut client = sc.client().await;
        assert!(
            check(&mut client, permission("dashboard", "devices:read"))
                .await
                .allowed
        );
        let addr = sc.sidecar.health_addr().unwrap();
        assert_eq!(health(addr, "").await, ServingStatus::Serving);
        assert_eq!(health(addr, LIVENESS_SERVICE).await, ServingStatus::Serving);
        assert_eq!(
            health(addr, POLICY_FILE_SERVICE).await,
            ServingStatus::NotServing
        );
        // Counted once, not again by every poll of the same text.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sc.sidecar.reload_stats().errors(), 1, "{name}");
        let metrics = scrape(sc.sidecar.metrics_addr().unwrap());
        assert!(
            metrics.contains("authz_policy_reload_errors_total 1"),
            "{metrics}"
        );
        // A fixed file is applied and reported SERVING.
        std::fs::write(
            &file,
            EMBEDDED_DEFAULT.replace("# Monitoring", "# monitoring"),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while health(addr, POLICY_FILE_SERVICE).await != ServingStatus::Serving {
            assert!(
                Instant::now() < deadline,
                "the fixed file was never applied"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let TestSidecar { sidecar, dir: d } = sc;
        sidecar.stop().await.unwrap();
        dir = d;
    }

    // Nothing stored: refused, naming the file's problem.
    let empty = tempfile::tempdir().unwrap();
    let file = empty.path().join("bad.yaml");
    std::fs::write(&file, "catalog: [\n").unwrap();
    let mut cfg = config(empty.path(), EMBEDDED_DEFAULT);
    cfg.seed_error = Some(read_seed(&file).expect_err("refused"));
    match Sidecar::launch(cfg).await {
        Err(e @ ServerError::PolicyFile(_)) => {
            assert!(e.to_string().contains("bad.yaml:"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started with nothing to serve"),
    }
}

/// A reload whose file cannot compile is refused before anything reaches the store: the
/// revision does not move, and a restart loads the same stored policy.
#[tokio::test]
async fn a_reload_that_cannot_compile_never_reaches_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, EMBEDDED_DEFAULT).unwrap();
    let mut cfg = config(dir.path(), EMBEDDED_DEFAULT);
    cfg.seed = read_seed(&file).unwrap();
    cfg.store.policy = Some(file.clone());
    cfg.store.reload_interval = Some(Duration::from_millis(20));
    let sidecar = Sidecar::launch(cfg).await.unwrap();
    let before = sidecar.start_revision();
    std::fs::write(&file, staggered(21)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sidecar.reload_stats().errors() == 0 {
        assert!(Instant::now() < deadline, "the bad file was never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sidecar
            .reload_stats()
            .last_error()
            .unwrap()
            .contains("route automaton states"),
        "{:?}",
        sidecar.reload_stats().last_error()
    );
    sidecar.stop().await.unwrap();
    // Restart without the file: the stored policy is the one from before.
    let sidecar = Sidecar::launch(config(dir.path(), EMBEDDED_DEFAULT))
        .await
        .unwrap();
    assert_eq!(sidecar.start_revision(), before);
    sidecar.stop().await.unwrap();
}

async fn launch_on_uds(dir: &Path, uds: &Path) -> Result<Sidecar, ServerError> {
    let mut cfg = config(dir, EMBEDDED_DEFAULT);
    cfg.listeners.uds = Some(uds.to_path_buf());
    Sidecar::launch(cfg).await
}

/// `--uds` removes a stale socket only: a regular file, a directory and a live socket are
/// refused as they are, each with a message saying which.
#[tokio::test]
async fn uds_removes_only_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "precious").unwrap();
    let err = launch_on_uds(&dir.path().join("a"), &file)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("regular file"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    let sub = dir.path().join("dir.sock");
    std::fs::create_dir(&sub).unwrap();
    let err = launch_on_uds(&dir.path().join("b"), &sub)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("directory"), "{err}");
    assert!(sub.is_dir());

    // A live socket: the first sidecar keeps it and keeps serving.
    let live = dir.path().join("live.sock");
    let first = launch_on_uds(&dir.path().join("c"), &live).await.unwrap();
    let err = launch_on_uds(&dir.path().join("d"), &live)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("live socket"), "{err}");
    std::os::unix::net::UnixStream::connect(&live).expect("the first sidecar still accepts");

    // A stale one (nobody accepts on it) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let second = launch_on_uds(&dir.path().join("e"), &stale).await.unwrap();
    std::os::unix::net::UnixStream::connect(&stale).expect("serving on the replaced socket");
    second.stop().await.unwrap();
    first.stop().await.unwrap();
    assert!(
        !live.exists(),
        "the first sidecar removes its own socket on exit"
    );
}
