//! The binary as operators run it: validate, configuration errors, start-up refusals, SIGTERM,
//! and a log collector that stops reading stderr.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_authz-sidecar");

fn run(args: &[&str]) -> (i32, String, String) {
    run_env(args, &[])
}

/// Runs the binary with `args` and these `AUTHZ_*` variables in its environment.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_example_and_lists_every_problem_with_its_line() {
    let (code, out, _) = run(&["validate", "examples/monitoring-apps.yaml"]);
    assert_eq!(code, 0);
    assert!(out.contains("ok (11 permissions"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "catalog:\n  permissions:\n    - name: a\n      endpoints: [\"FETCH /x\"]\nroles:\n  - name: r\n    kind: app\n    grants: [ghost]\n",
    )
    .expect("write");
    let (code, _, err) = run(&["validate", bad.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    let name = bad.display().to_string();
    assert!(err.contains(&format!("{name}:4:19: catalog.permissions[0].endpoints[0]: endpoint `FETCH /x`: unknown method `FETCH`")), "{err}");
    assert!(
        err.contains(&format!(
            "{name}:8:14: roles[0].grants[0].permission: unknown permission `ghost`"
        )),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
}

#[test]
fn bad_configuration_is_reported_at_once_and_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_policy = dir.path().join("p.yaml");
    std::fs::write(&bad_policy, "catalog: [oops\n").expect("write");
    let (code, _, err) = run(&[
        "--listen",
        "not-an-address",
        "--log-format",
        "xml",
        "--data-dir",
        dir.path().join("data").to_str().expect("utf8"),
        "--policy",
        bad_policy.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--listen"), "{err}");
    assert!(err.contains("--log-format"), "{err}");
    // A bad policy file is not a configuration error: the data dir decides (a stored policy
    // keeps serving; see tests/it/resilience.rs).
    assert!(err.contains("2 configuration error(s)"), "{err}");
}

/// Every flag has its `AUTHZ_*` variable, and a flag given on the command line wins over it.
/// Start-up is made to fail on purpose (`--listen` is not an address) so that the list of
/// configuration errors shows which value each setting took.
#[test]
fn the_environment_is_read_and_a_flag_wins_over_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let base = [
        "--listen",
        "not-an-address",
        "--data-dir",
        data.to_str().expect("utf8"),
    ];
    let bad_env = [
        ("AUTHZ_LOG_FORMAT", "xml"),
        ("AUTHZ_HTTP_ENCODED_SLASHES", "sometimes"),
    ];
    // The environment alone is read: both bad values are reported.
    let (code, _, err) = run_env(&base, &bad_env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--log-format"), "{err}");
    assert!(err.contains("--http-encoded-slashes"), "{err}");
    assert!(err.contains("3 configuration error(s)"), "{err}");
    // Flags given on the command line win over the same variables.
    let mut args = base.to_vec();
    args.extend(["--log-format", "json", "--http-encoded-slashes", "data"]);
    let (code, _, err) = run_env(&args, &bad_env);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("--log-format"), "{err}");
    assert!(!err.contains("--http-encoded-slashes"), "{err}");
    assert!(err.contains("1 configuration error(s)"), "{err}");
}

/// A started binary: the process, its "serving" log line, and the rest of its stderr.
struct Spawned {
    child: Child,
    serving: String,
    stderr: Lines<BufReader<ChildStderr>>,
}

/// Starts the binary on an ephemeral port with `extra` flags; its stderr, line by line.
fn start_binary(data: &Path, extra: &[&str]) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf8"),
        ])
        .args(extra)
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let stderr = child.stderr.take().expect("stderr");
    (child, BufReader::new(stderr).lines())
}

/// Reads `lines` up to the first one containing `needle` and returns it (fails after 30 s, or
/// when the sidecar exits first).
fn read_until(lines: &mut Lines<BufReader<ChildStderr>>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "sidecar did not log `{needle}`");
        match lines.next() {
            Some(Ok(line)) if line.contains(needle) => return line,
            Some(_) => continue,
            None => panic!("sidecar exited before logging `{needle}`"),
        }
    }
}

/// Starts the binary on an ephemeral port with `extra` flags and waits for its "serving" line.
fn spawn_with(data: &Path, extra: &[&str]) -> Spawned {
    let (child, mut stderr) = start_binary(data, extra);
    let serving = read_until(&mut stderr, "serving");
    Spawned {
        child,
        serving,
        stderr,
    }
}

/// Starts the binary and keeps draining its stderr so it never blocks on a full pipe.
fn spawn(data: &Path) -> Child {
    let Spawned { child, stderr, .. } = spawn_with(data, &[]);
    std::thread::spawn(move || for _ in stderr {});
    child
}

/// Sends SIGTERM and returns the exit code (fails the test after 30 s).
fn terminate(child: &mut Child) -> Option<i32> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            return exit.code();
        }
        assert!(Instant::now() < deadline, "sidecar did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port of `field` (e.g. `tcp=127.0.0.1:PORT`) in a plain-format log line.
fn port_of(line: &str, field: &str) -> u16 {
    let start = line
        .find(&format!("{field}=127.0.0.1:"))
        .unwrap_or_else(|| panic!("no {field} address in {line}"))
        + field.len()
        + "=127.0.0.1:".len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("port")
}

/// `GET /metrics` over a plain TCP connection.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}

#[test]
fn a_client_that_never_answers_holds_shutdown_for_the_grace_only() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let Spawned {
        child,
        serving,
        stderr,
    } = spawn_with(&dir.path().join("data"), &["--shutdown-grace-ms", "300"]);
    let mut sidecar = KillOnDrop(child);
    let log = std::thread::spawn(move || stderr.map_while(Result::ok).collect::<Vec<_>>());
    // An HTTP/2 client that opens its connection and then never reads or answers again, so it
    // never acknowledges the server's GOAWAY (a frozen or partitioned process).
    let mut stuck =
        std::net::TcpStream::connect(("127.0.0.1", port_of(&serving, "tcp"))).expect("connect");
    stuck
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .expect("preface and SETTINGS");
    // The server's SETTINGS frame (9-byte header) proves the connection is being served.
    let mut frame_header = [0u8; 9];
    std::io::Read::read_exact(&mut stuck, &mut frame_header).expect("server SETTINGS");
    assert_eq!(frame_header[3], 0x04, "a SETTINGS frame");
    let started = Instant::now();
    assert_eq!(terminate(&mut sidecar.0), Some(0));
    let took = started.elapsed();
    // Without a grace it waits for the client forever; `terminate` fails the test after 30 s.
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    let log = log.join().expect("log").join("\n");
    assert!(
        log.contains("connections still open after the shutdown grace; not waiting"),
        "{log}"
    );
    assert!(
        log.contains("grace_ms=300"),
        "the flag's value is used: {log}"
    );
    drop(stuck);
}

/// Kills the sidecar when a test fails before stopping it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a log collector can do to the sidecar's stderr.
#[derive(Debug, Clone, Copy)]
enum Collector {
    StopsReading,
    ClosesThePipe,
}

#[test]
fn a_log_collector_that_stops_reading_or_closes_stderr_stalls_no_check() {
    use authz_sidecar::api::pb;
    for collector in [Collector::StopsReading, Collector::ClosesThePipe] {
        let dir = tempfile::tempdir().expect("tempdir");
        // One worker thread and every decision logged: a worker that wrote to stderr itself
        // would block on the full pipe and take every Check with it.
        let Spawned {
            child,
            serving,
            stderr,
        } = spawn_with(
            &dir.path().join("data"),
            &[
                "--worker-threads",
                "1",
                "--decision-log-every",
                "1",
                "--metrics-addr",
                "127.0.0.1:0",
            ],
        );
        assert!(
            !serving.contains('\u{1b}'),
            "no colour codes in collected logs: {serving:?}"
        );
        let mut sidecar = KillOnDrop(child);
        let held = match collector {
            Collector::StopsReading => Some(stderr),
            Collector::ClosesThePipe => {
                drop(stderr);
                None
            }
        };
        let api = port_of(&serving, "tcp");
        let metrics = port_of(&serving, "metrics");
        // 20,000 logged decisions of ~200 bytes: far past a pipe's 64 KiB and the log queue.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{api}"))
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect");
            let workers = (0..16).map(|w| {
                let mut client = pb::authz_client::AuthzClient::new(channel.clone());
                tokio::spawn(async move {
                    for i in 0..1250 {
                        let request = pb::CheckRequest {
                            subject: "dashboard".into(),
                            action: Some(pb::check_request::Action::Permission(
                                "devices:read".into(),
                            )),
                            ..Default::default()
                        };
                        let answer =
                            tokio::time::timeout(Duration::from_secs(10), client.check(request))
                                .await
                                .unwrap_or_else(|_| panic!("{collector:?}: Check {w}/{i} stalled"))
                                .expect("check");
                        assert!(answer.into_inner().allowed);
                    }
                })
            });
            for worker in workers.collect::<Vec<_>>() {
                worker.await.expect("worker");
            }
        });
        drop(runtime);
        let text = scrape(metrics);
        let dropped: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("authz_log_lines_dropped_total "))
            .unwrap_or_else(|| panic!("no dropped-lines counter in {text}"))
            .trim()
            .parse()
            .expect("number");
        if let Collector::StopsReading = collector {
            assert!(
                dropped > 0,
                "lines beyond the queue are dropped and counted"
            );
        }
        assert_eq!(terminate(&mut sidecar.0), Some(0), "{collector:?}");
        drop(held);
    }
}

#[test]
fn sigterm_drains_and_exits_zero_and_a_locked_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut first = spawn(&data);

    // A second sidecar on the same data dir must refuse to start, not share or reset it.
    let (code, _, err) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("locked by another process"), "{err}");

    assert_eq!(terminate(&mut first), Some(0));

    // And the data dir is usable again after a clean stop.
    let mut again = spawn(&data);
    again.kill().expect("kill");
    let _ = again.wait();
}

#[test]
fn hash_token_prints_the_sha256_for_policies() {
    let mut child = Command::new(BIN)
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"approver-token\n")
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "697e4faac709ff91018bf81268f62b015913da0d39c2e58eb4ee5dbffc4da325"
    );
}

#[test]
fn cargo_run_defaults_to_the_sidecar() {
    // The package has two binaries (the sidecar and authz-load); without `default-run`,
    // `cargo run --release` refuses to pick one.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let package = &metadata["packages"][0];
    let binaries = package["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .count();
    assert!(binaries > 1, "the premise: more than one binary");
    assert_eq!(package["default_run"], "authz-sidecar");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    assert!(
        readme.contains("cargo run --release "),
        "the README's run command"
    );
}

#[test]
fn import_replaces_the_stored_policy_and_is_refused_while_a_sidecar_runs() {
    use authz_sidecar::api::pb;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let example = std::fs::read_to_string("examples/monitoring-apps.yaml").expect("example");
    let dashboard = "{ id: dashboard, type: app, roles: [app-dashboard] }";
    assert!(example.contains(dashboard));
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        example.replace(
            dashboard,
            "{ id: dashboard, type: app, roles: [app-dispatcher] }",
        ),
    )
    .expect("write");
    let args = [
        "import",
        "--data-dir",
        data.to_str().expect("utf8"),
        file.to_str().expect("utf8"),
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("at revision 1"), "{out}");

    let Spawned {
        child,
        serving,
        stderr,
    } = spawn_with(&data, &[]);
    let mut sidecar = KillOnDrop(child);
    std::thread::spawn(move || for _ in stderr {});
    // The running sidecar holds the data dir: an import now is refused, not interleaved.
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("locked by another process"), "{err}");

    // It serves the imported file, not the built-in example it would seed an empty dir with.
    let api = port_of(&serving, "tcp");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let allowed = runtime.block_on(async {
        let mut client = pb::authz_client::AuthzClient::connect(format!("http://127.0.0.1:{api}"))
            .await
            .expect("connect");
        let request = pb::CheckRequest {
            subject: "dashboard".into(),
            action: Some(pb::check_request::Action::Permission("alarms:write".into())),
            ..Default::default()
        };
        client
            .check(request)
            .await
            .expect("check")
            .into_inner()
            .allowed
    });
    drop(runtime);
    assert!(
        allowed,
        "dashboard holds app-dispatcher in the imported file"
    );
    assert_eq!(terminate(&mut sidecar.0), Some(0));
}

#[test]
fn sigterm_during_start_up_drains_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, mut lines) = start_binary(&dir.path().join("data"), &[]);
    let mut sidecar = KillOnDrop(child);
    // The first line, logged before the store is opened and the policy loaded.
    read_until(&mut lines, "starting");
    std::thread::spawn(move || for _ in lines {});
    // Not the signal's default action (killed, no exit code): a drain and a clean exit.
    assert_eq!(terminate(&mut sidecar.0), Some(0));
}

/// Issue 12 §7: a newline in a Check subject (decision log) or an ext_authz subject (shadow-mode
/// log) wrote a complete fake line in the plain format. Control characters are escaped: each
/// event stays one line, and the forged text appears only inside it.
#[test]
fn a_subject_with_a_newline_cannot_forge_a_log_line() {
    use authz_sidecar::api::pb;
    use envoy_types::ext_authz::v3::pb::CheckRequest;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    const FORGED: &str = "2030-01-01T00:00:00.000000Z  INFO authz::decision: decision subject=root allowed=true FORGED";
    let dir = tempfile::tempdir().expect("tempdir");
    let Spawned {
        child,
        serving,
        stderr,
    } = spawn_with(
        &dir.path().join("data"),
        &["--decision-log-every", "1", "--envoy-mode", "shadow"],
    );
    let mut sidecar = KillOnDrop(child);
    let api = port_of(&serving, "tcp");
    let subject = format!("ghost\n{FORGED}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let url = format!("http://127.0.0.1:{api}");
        let mut client = pb::authz_client::AuthzClient::connect(url.clone())
            .await
            .expect("connect");
        let request = pb::CheckRequest {
            subject: subject.clone(),
            action: Some(pb::check_request::Action::Permission("devices:read".into())),
            ..Default::default()
        };
        let answer = client.check(request).await.expect("check").into_inner();
        assert!(!answer.allowed);
        let mut envoy = AuthorizationClient::connect(url).await.expect("connect");
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/v1/devices".into(),
                        headers: [("x-subject".to_string(), subject.clone())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        envoy.check(request).await.expect("ext_authz answers");
    });
    drop(runtime);
    assert_eq!(terminate(&mut sidecar.0), Some(0));
    let lines: Vec<String> = stderr.map(|l| l.expect("utf8 line")).collect();
    let forged: Vec<&String> = lines.iter().filter(|l| l.contains("FORGED")).collect();
    assert_eq!(
        forged.len(),
        2,
        "one decision, one shadow denial: {lines:#?}"
    );
    for line in forged {
        assert!(
            line.contains("ghost\\n2030-01-01T00:00:00.000000Z  INFO"),
            "the newline is escaped inside the event's own line: {line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("authz::decision") && l.contains("ghost\\n")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("would deny") && l.contains("ghost\\n")),
        "{lines:#?}"
    );
}

#[test]
fn the_placeholder_admin_token_and_an_empty_token_digest_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "REPLACE-ME-with-a-long-random-token\n").expect("write");
    let (code, _, err) = run(&[
        "--data-dir",
        data.to_str().expect("utf8"),
        "--admin-token-file",
        token_file.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--admin-token-file") && err.contains("placeholder"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["--data-dir", data.to_str().expect("utf8")])
        .env("AUTHZ_ADMIN_TOKEN", "REPLACE-ME-with-a-long-random-token")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("AUTHZ_ADMIN_TOKEN") && err.contains("placeholder"),
        "{err}"
    );

    // hash-token of empty input prints no digest.
    let out = Command::new(BIN)
        .arg("hash-token")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    // A policy holding the empty token's digest is refused.
    let policy = dir.path().join("p.yaml");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/monitoring-apps.yaml"
    ))
    .expect("example");
    std::fs::write(
        &policy,
        format!(
            "{example}\nadmins:\n  - {{ name: nobody, token_sha256: \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\", permissions: [authz.roles.approve] }}\n"
        ),
    )
    .expect("write");
    let (code, _, err) = run(&["validate", policy.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("admins[0].token_sha256") && err.contains("empty token"),
        "{err}"
    );
}

#[test]
fn help_names_every_environment_variable_it_reads() {
    let (code, out, err) = run(&["--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("AUTHZ_ADMIN_TOKEN "), "{out}");
    assert!(out.contains("RUST_LOG"), "{out}");
}

#[test]
fn listen_accepts_localhost_and_the_serving_line_names_every_listener_plainly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "localhost:0",
            "--health-listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().expect("utf8"),
        ])
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let serving = read_until(&mut lines, "serving");
    std::thread::spawn(move || for _ in lines {});
    assert!(!serving.contains("Some("), "{serving}");
    assert!(serving.contains("uds=none"), "{serving}");
    let api = port_of(&serving, "tcp");
    let health = port_of(&serving, "health");
    assert_ne!(api, health);
    std::net::TcpStream::connect(("127.0.0.1", api)).expect("the API listens on loopback");
    assert_eq!(terminate(&mut child), Some(0));
}

#[test]
fn validate_reports_eight_typos_in_one_run_with_hints_and_snippets() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/eight-typos.yaml"
    );
    let (code, _, err) = run(&["validate", file]);
    assert_eq!(code, 1, "{err}");
    let expected = [
        ":6:13: catalog.permissions[0].kind: unknown value `raed`; expected `read` or `write`; did you mean `read`?",
        ":7:7: catalog.permissions[0].descripton: unknown field `descripton`; did you mean `description`?",
        ":10:15: catalog.permissions[1].scoped: expected `true` or `false`, found a scalar",
        ":12:17: catalog.permissions[2].implies[0]: unknown permission `devices:raed`; did you mean `devices:read`?",
        ":16:5: roles[0].grnats: unknown field `grnats`; did you mean `grants`?",
        ":19:14: roles[1].grants[0].permission: unknown permission `alarms:wirte`; did you mean `alarms:write`?",
        ":20:5: roles[2]: missing field `name` (Role)",
        ":24:13: subjects[0].roles[0]: unknown role `app-dashbaord`; did you mean `app-dashboard`?",
    ];
    let headlines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(file) && !l.ends_with("problem(s)"))
        .collect();
    assert_eq!(headlines.len(), expected.len(), "{err}");
    for (line, want) in headlines.iter().zip(expected) {
        assert_eq!(&line[file.len()..], want, "{err}");
    }
    assert!(err.contains("8 problem(s)"), "{err}");
    // Each problem shows its line and a caret under the column.
    assert!(
        err.contains("\n   |\n16 |     grnats: [devices:read]\n   |     ^\n"),
        "{err}"
    );
    assert!(
        err.contains("\n24 |     roles: [app-dashbaord]\n   |             ^"),
        "{err}"
    );
}

#[test]
fn a_refused_policy_at_start_shows_the_same_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/eight-typos.yaml"
    );
    let (code, _, err) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().expect("utf8"),
        "--policy",
        file,
    ]);
    assert_ne!(code, 0, "{err}");
    let (_, _, validate) = run(&["validate", file]);
    let problems = validate
        .lines()
        .filter(|l| l.starts_with(file) && !l.ends_with("problem(s)"));
    for line in problems {
        assert!(
            err.contains(line),
            "start-up does not show `{line}`:\n{err}"
        );
    }
    assert!(err.contains("16 |     grnats: [devices:read]"), "{err}");
}
