//! Hostile load: while each attack runs, a fresh client's Check p99 stays within 10 ms, health
//! probes answer, and no well-behaved request fails. The attacks: 2000 idle HTTP/2 connections
//! (more than `--max-connections`), 2000 half-open prefaces, 1000 streams held open on one
//! connection, a client ignoring the stream limit, a rapid-reset flood (its connection is
//! closed, another client's Checks all succeed), a storm of aborted requests through a real
//! Envoy (its shared connection survives), a stalled TLS handshake, and the real binary under
//! `prlimit --nofile=1024:1024` facing 1100, then 1400, connections.
//!
//! One attack at a time (each measures its fresh client alone). Envoy comes from the harness
//! (`tests/it/envoy_harness`), `prlimit` from util-linux; without them those tests print
//! `SKIPPED`, and with `CI=true` they fail instead.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

#[path = "it/common/mod.rs"]
mod common;
#[path = "it/envoy_harness/mod.rs"]
mod envoy_harness;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authz_sidecar::api::pb::authz_client::AuthzClient;
use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use authz_sidecar::server::connections::raise_fd_limit;
use authz_sidecar::server::{HEALTH_CONNECTIONS, METRICS_CONNECTIONS, RESERVED_FDS};
use common::*;
use envoy_harness::{Connection, Front, Listener, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Requests given up together in one burst of the abort storm (h2's default tolerates 20
/// reset streams pending accept on a connection).
const STORM_BURST: usize = 100;
/// Time between bursts.
const STORM_EVERY: Duration = Duration::from_millis(500);

/// One attack at a time: each measures a fresh client's latency while only it runs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The budget for a fresh client's Check p99 during an attack.
const P99_BUDGET: Duration = Duration::from_millis(10);
/// Checks a fresh client sends (the p99 of 200 is its second slowest).
const CHECKS: usize = 200;
const BIN: &str = env!("CARGO_BIN_EXE_authz-sidecar");

/// The HTTP/2 client preface and an empty SETTINGS frame: what a client sends before it idles.
const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Raises this process's open-files limit (it holds both ends of thousands of connections).
fn room_for_sockets() {
    let limit = raise_fd_limit();
    assert!(
        limit.soft.is_none_or(|soft| soft >= 8192),
        "these tests hold ~4500 descriptors; the hard open-files limit is {limit:?}"
    );
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99).div_ceil(100) - 1]
}

/// A new connection sends [`CHECKS`] Checks one after another, up to five rounds while the
/// p99 of a round is over the budget (a neighbour's burst on a shared machine passes; a
/// sidecar that stays slow does not); every Check must succeed. Returns the best p99.
async fn fresh_client_p99(addr: SocketAddr) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        best = best.min(fresh_client_round(addr).await);
        if best <= P99_BUDGET {
            break;
        }
    }
    best
}

async fn fresh_client_round(addr: SocketAddr) -> Duration {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("a fresh client connects during the attack");
    let mut client = AuthzClient::new(channel);
    let mut latencies = Vec::with_capacity(CHECKS);
    for i in 0..CHECKS {
        let started = Instant::now();
        let answer = client
            .check(permission("dashboard", "devices:read"))
            .await
            .unwrap_or_else(|e| panic!("Check {i} of the fresh client failed: {e}"))
            .into_inner();
        latencies.push(started.elapsed());
        assert!(answer.allowed, "{answer:?}");
    }
    p99(latencies)
}

/// A health probe on a new connection answers SERVING.
async fn probe(addr: SocketAddr) {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("a health probe connects during the attack");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the health probe is answered")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

/// Asserts the fresh client's p99 and a health probe during an attack named `attack`.
async fn well_behaved_clients_are_served(attack: &str, api: SocketAddr, health: SocketAddr) {
    let p99 = fresh_client_p99(api).await;
    eprintln!("{attack}: fresh client Check p99 {p99:?}");
    assert!(
        p99 <= P99_BUDGET,
        "{attack}: fresh client p99 {p99:?} over {P99_BUDGET:?}"
    );
    probe(health).await;
}

/// Polls `done` every 20 ms until it holds (fails after `within`).
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// How many of `sockets` the server has closed (EOF or an error within `within`).
async fn closed_by_server(sockets: Vec<TcpStream>, within: Duration) -> usize {
    let mut reads = tokio::task::JoinSet::new();
    for mut socket in sockets {
        reads.spawn(async move {
            let mut sink = Vec::new();
            // Whatever the server said first (its SETTINGS), then the end.
            tokio::time::timeout(within, socket.read_to_end(&mut sink))
                .await
                .is_ok()
        });
    }
    let mut closed = 0;
    while let Some(done) = reads.join_next().await {
        closed += usize::from(done.unwrap());
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_make_room_for_a_fresh_client() {
    let _one = SERIAL.lock().await;
    room_for_sockets();
    let sc = start(EMBEDDED_DEFAULT).await;
    let api = sc.sidecar.tcp_addr().unwrap();
    let health = sc.sidecar.health_addr().unwrap();
    let pool = sc.sidecar.api_connections().clone();
    let max = pool.limits().max;
    assert_eq!(max, 1024, "the default --max-connections");
    let fds_before = open_fds();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let mut socket = TcpStream::connect(api).await.unwrap();
        socket.write_all(PREFACE_AND_SETTINGS).await.unwrap();
        idle.push(socket);
    }
    eventually(
        "the sidecar accepted all 2000",
        Duration::from_secs(10),
        || pool.stats().accepted.load(Ordering::Relaxed) >= 2000,
    )
    .await;
    assert!(pool.open() <= max, "{} open", pool.open());
    assert!(pool.stats().evicted.load(Ordering::Relaxed) >= 2000 - max as u64);
    // The evicted connections are really closed: the sidecar's side holds at most `max`
    // descriptors (this process holds both ends).
    eventually(
        "the sidecar closed the evicted connections",
        Duration::from_secs(5),
        || open_fds().saturating_sub(fds_before + 2000) <= max + 8,
    )
    .await;
    well_behaved_clients_are_served("2000 idle connections", api, health).await;
    // Every evicted connection was closed and its client told (EOF), the oldest first.
    let evicted = pool.stats().evicted.load(Ordering::Relaxed) as usize;
    let newest = idle.split_off(1000);
    let (oldest, newest) = tokio::join!(
        closed_by_server(idle, Duration::from_secs(2)),
        closed_by_server(newest, Duration::from_secs(2))
    );
    // 976 to stay within 1024, one more for the fresh client: all from the oldest thousand.
    assert_eq!(evicted, 2000 - max + 1);
    assert_eq!((oldest, newest), (evicted, 0), "the longest idle go first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_prefaces_are_closed_by_the_handshake_timeout() {
    let _one = SERIAL.lock().await;
    room_for_sockets();
    // Room for all of them: only the handshake timeout may close them.
    let sc = start_with(EMBEDDED_DEFAULT, |c| {
        c.limits.max_connections = 4096;
        c.limits.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let api = sc.sidecar.tcp_addr().unwrap();
    let health = sc.sidecar.health_addr().unwrap();
    let pool = sc.sidecar.api_connections().clone();
    let mut half_open = Vec::new();
    let started = Instant::now();
    for _ in 0..2000 {
        let mut socket = TcpStream::connect(api).await.unwrap();
        // Two thirds of the preface, then silence.
        socket.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        half_open.push(socket);
    }
    eventually(
        "the sidecar accepted all 2000",
        Duration::from_secs(10),
        || pool.stats().accepted.load(Ordering::Relaxed) >= 2000,
    )
    .await;
    well_behaved_clients_are_served("2000 half-open prefaces", api, health).await;
    assert_eq!(pool.stats().evicted.load(Ordering::Relaxed), 0);
    eventually(
        "every half-open connection is closed",
        Duration::from_secs(10),
        || pool.stats().handshake_timeouts.load(Ordering::Relaxed) >= 2000,
    )
    .await;
    eprintln!(
        "2000 half-open prefaces: closed {:?} after the first connected",
        started.elapsed()
    );
    assert_eq!(
        closed_by_server(half_open, Duration::from_secs(3)).await,
        2000
    );
    assert_eq!(pool.open(), 0);
}

fn check_request(addr: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/authz.v1.Authz/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_held_open_on_one_connection() {
    let _one = SERIAL.lock().await;
    let sc = start(EMBEDDED_DEFAULT).await;
    let api = sc.sidecar.tcp_addr().unwrap();
    let health = sc.sidecar.health_addr().unwrap();
    let tcp = TcpStream::connect(api).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // Request headers, then never a body: each stream waits for its message.
    let mut held = Vec::new();
    for _ in 0..1000 {
        client = client.ready().await.unwrap();
        held.push(client.send_request(check_request(api), false).unwrap());
    }
    // The server advertises its per-connection bound; a client cannot make it hold more.
    assert_eq!(client.current_max_send_streams(), 256);
    tokio::time::sleep(Duration::from_millis(200)).await;
    well_behaved_clients_are_served("1000 streams on one connection", api, health).await;
    assert!(
        !connection.is_finished(),
        "an orderly client keeps its connection"
    );
    drop(held);
}

/// A HEADERS frame opening stream `id` for a Check whose body never comes (HPACK literals
/// without indexing, so every frame decodes alike).
fn raw_check_headers(id: u32) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x04); // :path, literal
    block.push(21);
    block.extend_from_slice(b"/authz.v1.Authz/Check");
    block.extend_from_slice(&[0x0f, 0x10, 16]); // content-type, literal
    block.extend_from_slice(b"application/grpc");
    let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
    frame.push(0x1); // HEADERS
    frame.push(0x4); // END_HEADERS, not END_STREAM
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// Reads HTTP/2 frames until a GOAWAY; its error code, or `None` at the end of the stream.
async fn goaway_code(socket: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u32> {
    let mut buffer = Vec::new();
    let mut chunk = [0; 65536];
    loop {
        while buffer.len() >= 9 {
            let length = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
            if buffer.len() < 9 + length {
                break;
            }
            if buffer[3] == 0x7 {
                return Some(u32::from_be_bytes(buffer[13..17].try_into().unwrap()));
            }
            buffer.drain(..9 + length);
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A client that ignores the advertised stream limit: each stream over it is refused, and a
/// client that keeps at it loses its connection (tonic leaves h2's bound on such resets off
/// unless it is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ignoring_the_stream_limit_is_refused_then_closed() {
    let _one = SERIAL.lock().await;
    let sc = start(EMBEDDED_DEFAULT).await;
    let api = sc.sidecar.tcp_addr().unwrap();
    let mut socket = TcpStream::connect(api).await.unwrap();
    let mut frames = PREFACE_AND_SETTINGS.to_vec();
    for n in 0..3000u32 {
        frames.extend(raw_check_headers(2 * n + 1));
    }
    let (mut reader, mut writer) = socket.split();
    let (written, code) = tokio::join!(
        async {
            // The server may close the connection before reading all of it.
            let _ = writer.write_all(&frames).await;
        },
        tokio::time::timeout(Duration::from_secs(10), goaway_code(&mut reader))
    );
    let () = written;
    // ENHANCE_YOUR_CALM
    assert_eq!(code.expect("answered within 10 s"), Some(0xb));
    let p99 = fresh_client_p99(api).await;
    assert!(p99 <= P99_BUDGET, "after the flood: {p99:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_loses_its_connection_and_no_one_else_notices() {
    let _one = SERIAL.lock().await;
    let sc = start(EMBEDDED_DEFAULT).await;
    let api = sc.sidecar.tcp_addr().unwrap();
    // A steady client on its own connection, Checking until the flood is over.
    let stop = Arc::new(AtomicBool::new(false));
    let steady = tokio::spawn({
        let stop = Arc::clone(&stop);
        let channel = sc.channel().await;
        async move {
            let mut client = AuthzClient::new(channel);
            let mut answered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .check(permission("dashboard", "devices:read"))
                    .await
                    .expect("the steady client's Check succeeds during the flood");
                answered += 1;
            }
            answered
        }
    });
    let tcp = TcpStream::connect(api).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let started = Instant::now();
    let mut opened = 0u64;
    while !connection.is_finished() && started.elapsed() < Duration::from_secs(15) {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        match client.send_request(check_request(api), false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
        if opened % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    let took = started.elapsed();
    eprintln!("rapid reset: {opened} streams opened and reset; closed after {took:?}");
    let error = closed.expect_err("closed by the server, not by the client");
    // The server sends GOAWAY(ENHANCE_YOUR_CALM) and closes; a client still writing may see
    // the close (its unread frames make it a reset) before it reads the GOAWAY.
    let goaway = error.is_go_away()
        && error.is_remote()
        && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
    let closed_under_it = error.get_io().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    });
    assert!(goaway || closed_under_it, "{error:?}");
    stop.store(true, Ordering::Relaxed);
    let answered = steady.await.expect("the steady client never failed");
    assert!(answered > 0);
    // And the server still takes new clients.
    let p99 = fresh_client_p99(api).await;
    assert!(p99 <= P99_BUDGET, "after the flood: {p99:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_a_watch_stream_is_not_idle() {
    let _one = SERIAL.lock().await;
    let sc = start_with(EMBEDDED_DEFAULT, |c| {
        c.limits.idle_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let pool = sc.sidecar.api_connections().clone();
    let mut client = sc.client().await;
    check(&mut client, permission("dashboard", "devices:read")).await;
    let mut watch = HealthClient::new(sc.channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    assert_eq!(pool.open(), 2);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        pool.open(),
        1,
        "the Check connection idled out; the Watch stream is a request in flight"
    );
    assert_eq!(pool.stats().idle_closed.load(Ordering::Relaxed), 1);
    drop(watch);
    eventually(
        "the Watch connection idles out once its stream ends",
        Duration::from_secs(4),
        || pool.open() == 0,
    )
    .await;
    // A closed idle connection costs the client a reconnect, not a failed call.
    check(&mut client, permission("dashboard", "devices:read")).await;
}

/// Envoy multiplexes every downstream request on its connection to the sidecar and resets the
/// ext_authz stream of each aborted one. A storm of aborts must not close that connection: with
/// h2's default of 20 reset streams pending accept this test fails (the sidecar sends GOAWAY,
/// steady requests get 503).
#[test]
fn an_abort_storm_through_envoy_fails_no_steady_request() {
    let _one = SERIAL.blocking_lock();
    let policy = format!("{EMBEDDED_DEFAULT}\n# tests/hostile_load.rs\n");
    let Some(stack) = Stack::shared(&policy) else {
        return;
    };
    let port = stack.port(Front::SHIPPED);
    let cluster = |stat: &str| stack.envoy_stat(&format!("cluster.authz_sidecar.{stat}"));
    let resets_before = cluster("http2.tx_reset");
    let closes_before =
        cluster("upstream_cx_close_notify") + cluster("upstream_cx_destroy_remote_with_active_rq");
    // Envoy's connection to the sidecar is up before the storm, as in a running pod.
    let mut steady = Connection::open(stack, Listener::Front(Front::SHIPPED));
    assert_eq!(
        steady
            .send("GET", "/v1/devices/d1", &[("x-subject", "dashboard")])
            .status,
        200
    );
    let stop = Arc::new(AtomicBool::new(false));
    let aborted = Arc::new(AtomicU64::new(0));
    let storm = std::thread::spawn({
        let stop = Arc::clone(&stop);
        let aborted = Arc::clone(&aborted);
        move || {
            let request =
                "GET /v1/devices/d1 HTTP/1.1\r\nhost: app.local\r\nx-subject: dashboard\r\n\r\n";
            while !stop.load(Ordering::Relaxed) {
                // A burst of clients send their requests and all give up at once: Envoy resets
                // their ext_authz calls together, on its one connection to the sidecar.
                let mut clients = Vec::with_capacity(STORM_BURST);
                for _ in 0..STORM_BURST {
                    if let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                        if socket.write_all(request.as_bytes()).is_ok() {
                            clients.push(socket);
                        }
                    }
                }
                aborted.fetch_add(clients.len() as u64, Ordering::Relaxed);
                drop(clients);
                std::thread::sleep(STORM_EVERY);
            }
        }
    });
    // A steady client through Envoy for as long as the storm lasts.
    let steady = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = steady.send("GET", "/v1/devices/d1", &[("x-subject", "dashboard")]);
                statuses.push(reply.status);
            }
            statuses
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The fresh client while the storm runs; then the storm goes on a little longer.
    let p99 = runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let p99 = fresh_client_p99(stack.sidecar).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        p99
    });
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    let statuses = steady.join().expect("every steady request is answered");
    let resets = cluster("http2.tx_reset") - resets_before;
    let closes = cluster("upstream_cx_close_notify")
        + cluster("upstream_cx_destroy_remote_with_active_rq")
        - closes_before;
    eprintln!(
        "abort storm: {} aborted requests, {resets} ext_authz streams reset by Envoy, {} steady requests",
        aborted.load(Ordering::Relaxed),
        statuses.len()
    );
    eprintln!("abort storm: fresh client Check p99 {p99:?}");
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} steady requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    assert!(
        resets >= 100,
        "the storm reset only {resets} ext_authz streams"
    );
    assert_eq!(closes, 0, "the sidecar closed Envoy's connection");
    assert!(p99 <= P99_BUDGET, "abort storm: fresh client p99 {p99:?}");
}

/// `/proc/PID/stat` user + system CPU time.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 (1-based), in clock ticks (100 a second on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn port_in(line: &str, field: &str) -> u16 {
    let at = line.find(&format!("{field}=127.0.0.1:")).unwrap() + field.len() + 11;
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The binary at a soft and hard open-files limit of 1024 (containerd's default soft limit,
/// with nothing left to raise) takes 1100 connections: it holds fewer than the limit, keeps
/// answering fresh clients and probes, reloads its policy file, and does not spin.
#[test]
fn the_binary_at_1024_open_files_survives_1100_connections() {
    let _one = SERIAL.blocking_lock();
    room_for_sockets();
    let prlimit = Command::new("prlimit").arg("--version").output();
    if !prlimit.is_ok_and(|out| out.status.success()) {
        assert!(!ci(), "CI=true but no prlimit (util-linux)");
        eprintln!("\nSKIPPED: no prlimit (util-linux); the open-files test did not run\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, EMBEDDED_DEFAULT).unwrap();
    let mut child = Command::new("prlimit")
        .args(["--nofile=1024:1024", "--", BIN])
        .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--policy")
        .arg(&policy)
        .args(["--policy-reload-interval", "1"])
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit runs the sidecar");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (serving_tx, serving_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn({
        let lines = Arc::clone(&lines);
        let stderr = child.stderr.take().unwrap();
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("serving") {
                    let _ = serving_tx.send(line.clone());
                }
                lines.lock().unwrap().push(line);
            }
        }
    });
    let serving = serving_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no serving line: {:#?}", lines.lock().unwrap()));
    let api: SocketAddr = ([127, 0, 0, 1], port_in(&serving, "tcp")).into();
    let health: SocketAddr = ([127, 0, 0, 1], port_in(&serving, "health")).into();
    {
        let lines = lines.lock().unwrap();
        let limit = lines
            .iter()
            .find(|l| l.contains("open-files limit"))
            .expect("the limits are logged");
        assert!(
            limit.contains("soft_before=1024") && limit.contains("hard=1024"),
            "{limit}"
        );
        let cap = 1024 - RESERVED_FDS as usize - HEALTH_CONNECTIONS - METRICS_CONNECTIONS;
        assert!(
            lines
                .iter()
                .any(|l| l.contains("lowered") && l.contains(&format!("capped={cap}"))),
            "{lines:#?}"
        );
    }
    let mut attack = Vec::new();
    for _ in 0..1100 {
        let mut socket = std::net::TcpStream::connect(api).expect("connects");
        socket.write_all(PREFACE_AND_SETTINGS).unwrap();
        attack.push(socket);
    }
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_time(child.id());
    let window = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        well_behaved_clients_are_served("1100 connections at 1024 open files", api, health).await;
        // The policy file changes: the reload needs a descriptor too.
        let revision = fresh_revision(api).await;
        let mut text = EMBEDDED_DEFAULT.to_owned();
        text.push_str("\n  - {id: newcomer, type: app, roles: []}\n");
        std::fs::write(&policy, text).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fresh_revision(api).await == revision {
            assert!(
                Instant::now() < deadline,
                "the policy file was not reloaded"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // More connections keep coming; the sidecar keeps its bound and keeps answering.
        let mut more = Vec::new();
        for _ in 0..300 {
            let mut socket = TcpStream::connect(api).await.unwrap();
            socket.write_all(PREFACE_AND_SETTINGS).await.unwrap();
            more.push(socket);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        well_behaved_clients_are_served("1400 connections at 1024 open files", api, health).await;
    });
    let cpu = cpu_time(child.id()) - cpu_before;
    let wall = window.elapsed();
    eprintln!("1024 open files: the sidecar used {cpu:?} CPU in {wall:?}");
    assert!(
        cpu.as_secs_f64() < 0.5 * wall.as_secs_f64(),
        "{cpu:?} of CPU in {wall:?}: the accept loop spins"
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(fds < 1024, "{fds} descriptors open");
    drop(attack);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    assert!(status.success(), "{status:?}: {lines:#?}");
    let exhausted: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("Too many open files") || l.contains("os error 24"))
        .collect();
    assert!(exhausted.is_empty(), "{exhausted:#?}");
}

/// The revision a fresh connection's Check reports.
async fn fresh_revision(api: SocketAddr) -> u64 {
    let channel = Endpoint::from_shared(format!("http://{api}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AuthzClient::new(channel)
        .check(permission("dashboard", "devices:read"))
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// On a TLS listener the deadline is the client's first encrypted record: a client that
/// finished its handshake keeps its connection however quiet it is, a stalled handshake does
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tls_a_stalled_handshake_is_closed_and_a_quiet_client_is_not() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tonic::transport::{Certificate, ClientTlsConfig};
    let _one = SERIAL.lock().await;
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let tls = authz_sidecar::config::TlsConfig {
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        client_ca_pem: None,
    };
    let sc = start_with(EMBEDDED_DEFAULT, |c| {
        c.tls = Some(tls);
        c.limits.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let api = sc.sidecar.tcp_addr().unwrap();
    let pool = sc.sidecar.api_connections().clone();
    let channel = Endpoint::from_shared(format!("https://{api}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.pem()))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AuthzClient::new(channel);
    check(&mut client, permission("dashboard", "devices:read")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    check(&mut client, permission("dashboard", "devices:read")).await;
    assert_eq!(
        pool.stats().accepted.load(Ordering::Relaxed),
        1,
        "no reconnect"
    );
    assert_eq!(pool.stats().handshake_timeouts.load(Ordering::Relaxed), 0);
    // A ClientHello record header announcing 512 bytes, and then only 10 of them.
    let mut stalled = TcpStream::connect(api).await.unwrap();
    stalled
        .write_all(&[22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3, 0, 0, 0, 0])
        .await
        .unwrap();
    assert_eq!(
        closed_by_server(vec![stalled], Duration::from_secs(3)).await,
        1
    );
    assert_eq!(pool.stats().handshake_timeouts.load(Ordering::Relaxed), 1);
    check(&mut client, permission("dashboard", "devices:read")).await;
}
