//! Flags and `AUTHZ_*` environment variables, validated in one place into a typed [`Config`].
//!
//! Precedence, for every setting: command-line flag, then environment variable, then default.
//! Start-up collects every problem and reports them together; it never starts half-configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use std::time::Duration;

use crate::auth::token_sha256_hex;
use crate::fleet::{DEFAULT_PREFIX, EtcdConfig, FleetConfig};
use crate::live::Seed;
use crate::model::Policy;
use crate::model::file::{EMBEDDED_DEFAULT, PolicyFileError, parse_policy, read_policy_text_max};
use crate::model::{EncodedSlashes, PathOptions};

/// Environment variable for `--listen`.
pub const ENV_LISTEN: &str = "AUTHZ_LISTEN";
/// Default TCP listen address: loopback only, as a sidecar should.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Environment variable for `--uds`.
pub const ENV_UDS: &str = "AUTHZ_UDS";
/// Environment variable for `--data-dir`.
pub const ENV_DATA_DIR: &str = "AUTHZ_DATA_DIR";
/// Default sled directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Environment variable for `--policy`.
pub const ENV_POLICY: &str = "AUTHZ_POLICY";
/// Environment variable for `--admin-token-file`.
pub const ENV_ADMIN_TOKEN_FILE: &str = "AUTHZ_ADMIN_TOKEN_FILE";
/// Environment variable holding the bootstrap admin token itself.
pub const ENV_ADMIN_TOKEN: &str = "AUTHZ_ADMIN_TOKEN";
/// Environment variable for `--log-format`.
pub const ENV_LOG_FORMAT: &str = "AUTHZ_LOG_FORMAT";
/// Environment variable for `--max-policy-bytes`.
pub const ENV_MAX_POLICY_BYTES: &str = "AUTHZ_MAX_POLICY_BYTES";
pub use crate::model::file::DEFAULT_MAX_POLICY_BYTES;
const MAX_POLICY_BYTES_RANGE: std::ops::RangeInclusive<u64> = 4096..=(64 * 1024 * 1024);
/// Default log format.
pub const DEFAULT_LOG_FORMAT: &str = "plain";

/// What `--help` lists after the flags: the API served.
const AFTER_HELP: &str = "\
API (authz.v1.Authz, gRPC; see README \"The API\"):
  Check             one decision
  CheckBatch        up to 1000 decisions in one call, in order, from one snapshot and revision
  ListRoles         roles by name, paged
  UpdatePermission, PutSubject, DeleteSubject, ApprovePending, ListAudit   admin (bearer token)
  GetSubject, ListSubjects   admin reads: a stored subject with its changed_revision, paged

Environment (besides the AUTHZ_* variable of each flag above):
  AUTHZ_ADMIN_TOKEN  the bootstrap admin token itself (instead of --admin-token-file; not both)
  RUST_LOG           log filter, e.g. `info` (default), `debug`, `info,authz::decision=off`
                     (tracing-subscriber EnvFilter syntax)";

/// Command line of the `authz-sidecar` binary.
#[derive(Debug, Parser)]
#[command(
    name = "authz-sidecar",
    version,
    about = "gRPC authorization sidecar",
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// A subcommand; without one the sidecar serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serving flags.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a policy file offline; print every problem in one run (structural and semantic)
    /// with file, line, field, "did you mean" and the source line. The format's JSON Schema
    /// for editors is docs/policy.schema.json.
    Validate {
        /// Largest policy file accepted, in bytes.
        #[arg(long, env = ENV_MAX_POLICY_BYTES, default_value_t = DEFAULT_MAX_POLICY_BYTES)]
        max_policy_bytes: u64,
        /// Policy file (YAML or JSON).
        file: PathBuf,
    },
    /// Replace the stored policy with a policy file: in a data dir (the sidecar must be
    /// stopped), or with `--source etcd` under the etcd prefix, which seeds or replaces a
    /// fleet's policy (every sidecar follows).
    Import {
        /// sled directory (`--source embedded`).
        #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Where the policy lives: `embedded` (the data dir) or `etcd`.
        #[arg(long, env = "AUTHZ_SOURCE", default_value = "embedded")]
        source: String,
        /// etcd connection (`--source etcd`).
        #[command(flatten)]
        etcd: Box<EtcdArgs>,
        /// Largest policy file accepted, in bytes.
        #[arg(long, env = ENV_MAX_POLICY_BYTES, default_value_t = DEFAULT_MAX_POLICY_BYTES)]
        max_policy_bytes: u64,
        /// Policy file (YAML or JSON).
        file: PathBuf,
    },
    /// Print the SHA-256 of a token read from standard input, for `admins[].token_sha256`.
    HashToken,
    /// A client for a running sidecar: check, roles, subjects, subject get, health.
    Ctl(Box<crate::ctl::CtlArgs>),
    /// Run policy test files (YAML cases) offline against a policy; exit 1 when a case
    /// fails, 2 when the policy or a test file is malformed.
    Test {
        /// Policy file (YAML or JSON).
        policy: PathBuf,
        /// Test files; default: `<policy without .yaml>.tests.yaml` next to the policy.
        tests: Vec<PathBuf>,
        /// Also write a JUnit XML report here.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// How HTTP paths are read, as the sidecar's flag: `refuse` or `data`.
        #[arg(long, env = "AUTHZ_HTTP_ENCODED_SLASHES", default_value = "refuse")]
        http_encoded_slashes: String,
        /// Print the explanation of every case, not only of failures.
        #[arg(long, short)]
        verbose: bool,
    },
}

/// How to reach etcd (fleet mode and `import --source etcd`).
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (`http://…` or `https://…`).
    #[arg(long, env = "AUTHZ_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// Key prefix holding the policy and every admin change.
    #[arg(long, env = "AUTHZ_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// etcd user (etcd auth); needs --etcd-password-file.
    #[arg(long, env = "AUTHZ_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// File holding the etcd user's password (a mounted Secret).
    #[arg(long, env = "AUTHZ_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// CA (PEM) that signed the etcd server certificates (`https` endpoints).
    #[arg(long, env = "AUTHZ_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd mTLS; goes with --etcd-key.
    #[arg(long, env = "AUTHZ_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd mTLS.
    #[arg(long, env = "AUTHZ_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
}

fn read_file(flag: &str, path: &Path, errors: &mut Vec<String>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => Some(bytes),
        Ok(_) => {
            errors.push(format!("{flag}: {} is empty", path.display()));
            None
        }
        Err(e) => {
            errors.push(format!("{flag}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

impl EtcdArgs {
    /// Validates the etcd settings, adding every problem to `errors`.
    pub fn to_config(&self, errors: &mut Vec<String>) -> Option<EtcdConfig> {
        let before = errors.len();
        let endpoints: Vec<String> = self
            .etcd_endpoints
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            errors.push(
                "--etcd-endpoints / AUTHZ_ETCD_ENDPOINTS: required with --source etcd (e.g. http://etcd:2379)"
                    .into(),
            );
        }
        for e in &endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                errors.push(format!(
                    "--etcd-endpoints / AUTHZ_ETCD_ENDPOINTS: `{e}` is not an http:// or https:// URL"
                ));
            }
        }
        let tls = endpoints.iter().any(|e| e.starts_with("https://"));
        if tls && self.etcd_ca.is_none() {
            errors.push("--etcd-ca / AUTHZ_ETCD_CA: required with https:// etcd endpoints".into());
        }
        if !tls && (self.etcd_ca.is_some() || self.etcd_cert.is_some()) {
            errors.push("--etcd-ca / --etcd-cert: TLS options need https:// etcd endpoints".into());
        }
        if self.etcd_prefix.is_empty() || !self.etcd_prefix.ends_with('/') {
            errors.push(format!(
                "--etcd-prefix / AUTHZ_ETCD_PREFIX: `{}` must be non-empty and end with `/` (e.g. {DEFAULT_PREFIX})",
                self.etcd_prefix
            ));
        }
        let credentials = match (&self.etcd_username, &self.etcd_password_file) {
            (None, None) => None,
            (Some(user), Some(file)) => {
                match read_file(
                    "--etcd-password-file / AUTHZ_ETCD_PASSWORD_FILE",
                    file,
                    errors,
                ) {
                    Some(bytes) => match String::from_utf8(bytes) {
                        Ok(password) => Some((user.clone(), password.trim_end().to_owned())),
                        Err(_) => {
                            errors.push(
                                "--etcd-password-file / AUTHZ_ETCD_PASSWORD_FILE: not UTF-8".into(),
                            );
                            None
                        }
                    },
                    None => None,
                }
            }
            _ => {
                errors.push("--etcd-username and --etcd-password-file go together".into());
                None
            }
        };
        let ca_pem = self
            .etcd_ca
            .as_deref()
            .and_then(|p| read_file("--etcd-ca / AUTHZ_ETCD_CA", p, errors));
        let client_identity = match (&self.etcd_cert, &self.etcd_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let cert = read_file("--etcd-cert / AUTHZ_ETCD_CERT", cert, errors);
                let key = read_file("--etcd-key / AUTHZ_ETCD_KEY", key, errors);
                cert.zip(key)
            }
            _ => {
                errors.push("--etcd-cert and --etcd-key go together".into());
                None
            }
        };
        (errors.len() == before).then_some(EtcdConfig {
            endpoints,
            prefix: self.etcd_prefix.clone(),
            credentials,
            ca_pem,
            client_identity,
        })
    }
}

/// Flags of the serving mode.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the policy lives: `embedded` (this pod's sled store) or `etcd` (fleet mode: etcd
    /// is the shared source of truth, mirrored into the local store).
    #[arg(long, env = "AUTHZ_SOURCE", default_value = "embedded")]
    pub source: String,
    /// etcd connection (fleet mode).
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Fleet mode: report NOT_SERVING once the mirror may be staler than this many seconds
    /// (etcd unreachable); 0 = keep serving stale data.
    #[arg(long, env = "AUTHZ_MAX_STALENESS", default_value_t = 0)]
    pub max_staleness: u64,
    /// Fleet mode: how long a Check waits for its `min_revision` before UNAVAILABLE.
    #[arg(long, env = "AUTHZ_MIN_REVISION_WAIT_MS", default_value_t = 2000)]
    pub min_revision_wait_ms: u64,
    /// TCP address to serve on; `none` serves only the Unix socket.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Separate TCP address serving only grpc.health.v1 (for kubelet gRPC probes, which dial
    /// the pod IP while the API stays on loopback); `none` to disable.
    #[arg(long, env = "AUTHZ_HEALTH_LISTEN", default_value = "none")]
    pub health_listen: String,
    /// Address of the Prometheus `/metrics` HTTP endpoint; `none` to disable.
    #[arg(long, env = "AUTHZ_METRICS_ADDR", default_value = "none")]
    pub metrics_addr: String,
    /// TCP address of the HTTP/JSON endpoints (`POST /v1/check`, `/v1/checkBatch`,
    /// `/v1/listRoles`, `/v1/getSubject`, `/v1/listSubjects`; proto3 JSON bodies) for callers
    /// without gRPC; `none` to disable. TLS as `--tls-*`; the admin reads follow `--admin on`
    /// and need the bearer token.
    #[arg(long, env = "AUTHZ_HTTP_LISTEN", default_value = "none")]
    pub http_listen: String,
    /// Unix socket path to serve on as well (shared with the app through a volume).
    #[arg(long, env = ENV_UDS)]
    pub uds: Option<PathBuf>,
    /// Permissions of the Unix socket, octal: who may connect (owner and group by default).
    #[arg(long, env = "AUTHZ_UDS_MODE", default_value = "0660")]
    pub uds_mode: String,
    /// Directory of the sled store.
    #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Policy file imported on first start (empty data dir); default: the built-in example.
    #[arg(long, env = ENV_POLICY)]
    pub policy: Option<PathBuf>,
    /// Seconds between checks of the policy file for changes (a ConfigMap update); 0 = never.
    #[arg(long, env = "AUTHZ_POLICY_RELOAD_INTERVAL", default_value_t = 5)]
    pub policy_reload_interval: u64,
    /// Largest policy file accepted, in bytes (4 KiB to 64 MiB); a larger one is refused
    /// unread.
    #[arg(long, env = ENV_MAX_POLICY_BYTES, default_value_t = DEFAULT_MAX_POLICY_BYTES)]
    pub max_policy_bytes: u64,
    /// Where admin RPCs are accepted: `on` (every API listener), `uds` (only the Unix socket and
    /// `--admin-listen`), `off` (nowhere; the policy changes only through the file).
    #[arg(long, env = "AUTHZ_ADMIN", default_value = "on")]
    pub admin: String,
    /// A separate TCP listener for the API with admin RPCs (e.g. for an operator network).
    #[arg(long, env = "AUTHZ_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Server certificate (PEM) for TLS on the TCP listeners.
    #[arg(long, env = "AUTHZ_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for TLS.
    #[arg(long, env = "AUTHZ_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates are required on the TCP listeners (mTLS).
    #[arg(long, env = "AUTHZ_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Most requests in flight on one connection; more wait (a greedy client cannot starve Check).
    #[arg(
        long,
        env = "AUTHZ_MAX_CONCURRENT_PER_CONNECTION",
        default_value_t = 256
    )]
    pub max_concurrent_per_connection: usize,
    /// Deadline for any one request, in milliseconds.
    #[arg(long, env = "AUTHZ_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// On SIGTERM, how long (ms) open connections may take to finish before they are closed.
    #[arg(long, env = "AUTHZ_SHUTDOWN_GRACE_MS", default_value_t = 5000)]
    pub shutdown_grace_ms: u64,
    /// Most connections open at once across the API listeners (TCP, Unix socket, admin, xDS);
    /// a new one beyond it closes the connection idle the longest. Also capped by the
    /// open-files limit.
    #[arg(long, env = "AUTHZ_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// A new connection that has not sent the HTTP/2 preface (or finished its TLS handshake)
    /// within this many milliseconds is closed.
    #[arg(
        long,
        env = "AUTHZ_HANDSHAKE_TIMEOUT_MS",
        default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_MS
    )]
    pub handshake_timeout_ms: u64,
    /// A connection with no request for this many seconds is closed; 0 = never.
    #[arg(long, env = "AUTHZ_IDLE_TIMEOUT", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout: u64,
    /// Log one decision in N on the `authz::decision` target (0 = no decision log).
    #[arg(long, env = "AUTHZ_DECISION_LOG_EVERY", default_value_t = 0)]
    pub decision_log_every: u64,
    /// What `%2F`, `%5C` and a raw `\` in a request path mean to HTTP decisions: `refuse`
    /// (denied: upstreams disagree whether they separate segments) or `data` (one segment's
    /// data, matching only `{param}` and `*`; for upstreams that never split on them).
    #[arg(long, env = "AUTHZ_HTTP_ENCODED_SLASHES", default_value = "refuse")]
    pub http_encoded_slashes: String,
    /// Threads answering requests (0 = one per CPU the process may use, which follows the
    /// container's CPU limit). A sidecar beside a busy app usually wants 1 or 2.
    #[arg(long, env = "AUTHZ_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// File holding the bootstrap admin token (a mounted Kubernetes Secret).
    #[arg(long, env = ENV_ADMIN_TOKEN_FILE)]
    pub admin_token_file: Option<PathBuf>,
    /// Log format: plain or json.
    #[arg(long, env = ENV_LOG_FORMAT, default_value = DEFAULT_LOG_FORMAT)]
    pub log_format: String,
    /// Envoy ext_authz on the same port: `enforce`, `shadow` (always allow; log, count and mark
    /// would-be denials) or `off`.
    #[arg(long, env = "AUTHZ_ENVOY_MODE", default_value = "enforce")]
    pub envoy_mode: String,
    /// Where ext_authz takes the subject from: `header`, `jwt` (a jwt_authn payload claim) or
    /// `spiffe` (the peer's SPIFFE id).
    #[arg(long, env = "AUTHZ_ENVOY_SUBJECT_SOURCE", default_value = "header")]
    pub envoy_subject_source: String,
    /// Request header carrying the subject (with `--envoy-subject-source header`).
    #[arg(long, env = "AUTHZ_ENVOY_SUBJECT_HEADER", default_value = "x-subject")]
    pub envoy_subject_header: String,
    /// `payload_in_metadata` name of the jwt_authn provider (with `--envoy-subject-source jwt`).
    #[arg(
        long,
        env = "AUTHZ_ENVOY_JWT_PAYLOAD_KEY",
        default_value = "jwt_payload"
    )]
    pub envoy_jwt_payload_key: String,
    /// JWT claim holding the subject id.
    #[arg(long, env = "AUTHZ_ENVOY_JWT_CLAIM", default_value = "sub")]
    pub envoy_jwt_claim: String,
    /// Header added upstream (and to denials) with the policy revision of the decision.
    #[arg(
        long,
        env = "AUTHZ_ENVOY_REVISION_HEADER",
        default_value = "x-authz-revision"
    )]
    pub envoy_revision_header: String,
    /// Header added upstream with the decided subject.
    #[arg(
        long,
        env = "AUTHZ_ENVOY_SUBJECT_UPSTREAM_HEADER",
        default_value = "x-authz-subject"
    )]
    pub envoy_subject_upstream_header: String,
    /// Header marking a would-be denial in shadow mode.
    #[arg(
        long,
        env = "AUTHZ_ENVOY_SHADOW_HEADER",
        default_value = "x-authz-shadow-denied"
    )]
    pub envoy_shadow_header: String,
    /// Remove the subject header before the request goes upstream.
    #[arg(long, env = "AUTHZ_ENVOY_STRIP_SUBJECT_HEADER")]
    pub envoy_strip_subject_header: bool,
    /// Leave the denial reason out of 403 bodies.
    #[arg(long, env = "AUTHZ_ENVOY_HIDE_REASON")]
    pub envoy_hide_reason: bool,
    /// Largest ext_authz CheckRequest accepted, in bytes; a larger one is refused before it is
    /// read (gRPC OUT_OF_RANGE, which Envoy turns into a denial).
    #[arg(
        long,
        env = "AUTHZ_ENVOY_MAX_MESSAGE_BYTES",
        default_value_t = DEFAULT_ENVOY_MAX_MESSAGE_BYTES
    )]
    pub envoy_max_message_bytes: usize,
    /// Also serve Envoy's RBAC filter config over xDS (ECDS) here: `HOST:PORT` or
    /// `unix:PATH`. Envoy then lets through what the policy allows on its own and asks
    /// ext_authz only about the rest (docs/xds-rbac.md). Off by default.
    #[arg(long, env = "AUTHZ_ENVOY_XDS_LISTEN")]
    pub envoy_xds_listen: Option<String>,
    /// Above this many subjects the xDS config compiles nothing and every request goes to
    /// ext_authz (Envoy memory and push time grow with subjects; see BENCHMARKS.md).
    #[arg(
        long,
        env = "AUTHZ_ENVOY_XDS_MAX_SUBJECTS",
        default_value_t = DEFAULT_ENVOY_XDS_MAX_SUBJECTS
    )]
    pub envoy_xds_max_subjects: usize,
}

/// Default of `--max-connections`: a pod's app and Envoy need tens; idle connections cost
/// ~15 KB each.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `--handshake-timeout-ms`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5000;
/// Default of `--idle-timeout`, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;
/// Most `--max-connections` accepted.
const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=1_000_000;

/// Default of `--envoy-xds-max-subjects`.
pub const DEFAULT_ENVOY_XDS_MAX_SUBJECTS: usize = 2_000;

/// Where the xDS server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsListen {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// The default `--envoy-max-message-bytes`: 1 MiB, as for the API's own messages.
pub const DEFAULT_ENVOY_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Bounds of `--envoy-max-message-bytes`: Envoy's smallest requests are a few hundred bytes;
/// its request headers are bounded at 8 MiB (`max_request_headers_kb` at most 8192).
const ENVOY_MAX_MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<usize> = 4096..=(64 * 1024 * 1024);

/// Where admin RPCs are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminExposure {
    /// On every API listener.
    On,
    /// Only on the Unix socket (and `--admin-listen`).
    UdsOnly,
    /// Nowhere.
    Off,
}

/// TLS material for the TCP listeners, read at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Server certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Server key, PEM.
    pub key_pem: Vec<u8>,
    /// Client CA, PEM; when set, clients must present a certificate it signed.
    pub client_ca_pem: Option<Vec<u8>>,
}

/// Limits and layers that keep one client from starving others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight per connection.
    pub max_concurrent_per_connection: usize,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// At shutdown, how long connections may take to finish; a stuck client (one that never
    /// answers the HTTP/2 GOAWAY) would otherwise hold the sidecar up until it is killed.
    pub shutdown_grace: Duration,
    /// Most connections open at once across the API listeners.
    pub max_connections: usize,
    /// Time a new connection has to send the HTTP/2 preface (or finish its TLS handshake).
    pub handshake_timeout: Duration,
    /// Time a connection may go without a request; `None`: no limit.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_per_connection: 256,
            request_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            idle_timeout: Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS)),
        }
    }
}

/// Whether and how the ext_authz service decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvoyMode {
    /// Not served.
    Off,
    /// Denials deny.
    Enforce,
    /// Everything is allowed; would-be denials are logged, counted and marked in a header.
    Shadow,
}

/// Where the ext_authz subject comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectSource {
    /// A request header (set by a trusted filter in front; strip client-sent copies).
    Header,
    /// A claim of the payload Envoy's jwt_authn filter verified and forwarded.
    Jwt,
    /// The peer's SPIFFE id (mTLS in the mesh).
    Spiffe,
}

/// ext_authz settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyConfig {
    /// Mode.
    pub mode: EnvoyMode,
    /// Subject source.
    pub subject_source: SubjectSource,
    /// Subject header name, lower-case.
    pub subject_header: String,
    /// jwt_authn `payload_in_metadata` key.
    pub jwt_payload_key: String,
    /// JWT claim with the subject.
    pub jwt_claim: String,
    /// Revision header name.
    pub revision_header: String,
    /// Upstream subject header name.
    pub subject_upstream_header: String,
    /// Shadow-mode marker header name.
    pub shadow_header: String,
    /// Remove the subject header upstream.
    pub strip_subject_header: bool,
    /// Omit reasons from denial bodies.
    pub hide_reason: bool,
    /// Largest ext_authz request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Where the xDS (ECDS) server for Envoy's RBAC filter listens; `None`: not served.
    pub xds_listen: Option<XdsListen>,
    /// Most subjects compiled into the RBAC config.
    pub xds_max_subjects: usize,
}

impl Default for EnvoyConfig {
    fn default() -> Self {
        EnvoyConfig {
            mode: EnvoyMode::Enforce,
            subject_source: SubjectSource::Header,
            subject_header: "x-subject".into(),
            jwt_payload_key: "jwt_payload".into(),
            jwt_claim: "sub".into(),
            revision_header: "x-authz-revision".into(),
            subject_upstream_header: "x-authz-subject".into(),
            shadow_header: "x-authz-shadow-denied".into(),
            strip_subject_header: false,
            hide_reason: false,
            max_message_bytes: DEFAULT_ENVOY_MAX_MESSAGE_BYTES,
            xds_listen: None,
            xds_max_subjects: DEFAULT_ENVOY_XDS_MAX_SUBJECTS,
        }
    }
}

fn header_name(flag: &str, value: &str, errors: &mut Vec<String>) -> String {
    let valid = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
    if !valid {
        errors.push(format!(
            "--{flag}: `{value}` is not a valid HTTP header name"
        ));
    }
    value.to_ascii_lowercase()
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// A validated serving configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP address, if serving TCP.
    pub listen: Option<SocketAddr>,
    /// Health-only TCP address, if any.
    pub health_listen: Option<SocketAddr>,
    /// Prometheus metrics address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// HTTP/JSON address, if any.
    pub http_listen: Option<SocketAddr>,
    /// Unix socket path, if serving one.
    pub uds: Option<PathBuf>,
    /// Unix socket file mode.
    pub uds_mode: u32,
    /// sled directory.
    pub data_dir: PathBuf,
    /// The policy imported into an empty store (and re-applied when its file changes).
    pub seed: Seed,
    /// Where the seed came from (file path or `built-in example`).
    pub seed_source: String,
    /// The policy file's problems when it is refused: the stored policy then serves, and a
    /// start on an empty data dir is refused (`seed` is an empty placeholder).
    pub seed_error: Option<PolicyFileError>,
    /// Largest policy file accepted, in bytes.
    pub max_policy_bytes: u64,
    /// Bootstrap admin token.
    pub admin_token: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Envoy ext_authz settings.
    pub envoy: EnvoyConfig,
    /// Where admin RPCs are accepted.
    pub admin: AdminExposure,
    /// A separate API listener with admin RPCs.
    pub admin_listen: Option<SocketAddr>,
    /// TLS on the TCP listeners.
    pub tls: Option<TlsConfig>,
    /// Per-connection concurrency and request deadline.
    pub limits: Limits,
    /// Log one decision in this many; `None` = no decision log.
    pub decision_log_every: Option<u64>,
    /// How HTTP decisions read request paths.
    pub http_paths: PathOptions,
    /// Runtime worker threads; `None` = one per available CPU.
    pub worker_threads: Option<usize>,
    /// The policy file, re-imported when it changes (none for the built-in example).
    pub policy_path: Option<PathBuf>,
    /// How often the policy file is checked for changes; `None` = never.
    pub reload_interval: Option<Duration>,
    /// Fleet mode (`--source etcd`); `None` = the embedded single-pod mode.
    pub fleet: Option<FleetConfig>,
}

/// Reads a policy file into a [`Seed`]: validated, normalized, with the digest of its text.
pub fn read_seed(path: &Path) -> Result<Seed, PolicyFileError> {
    read_seed_max(path, DEFAULT_MAX_POLICY_BYTES)
}

/// [`read_seed`] for a file of at most `max_bytes`.
pub fn read_seed_max(path: &Path, max_bytes: u64) -> Result<Seed, PolicyFileError> {
    let (name, text) = read_policy_text_max(path, max_bytes)?;
    seed_from_text(&name, &text)
}

/// A [`Seed`] from policy text read from the file `name`.
pub fn seed_from_text(name: &str, text: &str) -> Result<Seed, PolicyFileError> {
    Ok(Seed {
        policy: parse_policy(name, text)?,
        digest: token_sha256_hex(text),
        reloadable: true,
    })
}

/// Parses `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT` (loopback, 127.0.0.1; no name lookup).
pub fn parse_listen_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let port = text.strip_prefix("localhost:")?.parse::<u16>().ok()?;
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The admin token placeholder the Kubernetes manifests ship (`k8s/base/kustomization.yaml`).
pub const PLACEHOLDER_ADMIN_TOKEN: &str = "REPLACE-ME-with-a-long-random-token";

/// Why `token` may not be the bootstrap admin token, if it may not.
pub fn admin_token_problem(token: &str) -> Option<&'static str> {
    if token == PLACEHOLDER_ADMIN_TOKEN || token.to_ascii_uppercase().starts_with("REPLACE-ME") {
        return Some(
            "is the placeholder shipped in the manifests; generate a real token (e.g. \
             `head -c 32 /dev/urandom | base64`) and put it in the Secret (docs/deploy.md)",
        );
    }
    None
}

/// An address flag that may be `none` (or empty): `None` then, or the parsed address.
fn optional_addr(
    label: &str,
    text: &str,
    example: &str,
    errors: &mut Vec<String>,
) -> Option<SocketAddr> {
    match text {
        "none" | "" => None,
        text => match parse_listen_addr(text) {
            Some(addr) => Some(addr),
            None => {
                errors.push(format!(
                    "{label}: `{text}` is not an address like {example} (or `none`)"
                ));
                None
            }
        },
    }
}

impl ServeArgs {
    /// Validates every setting; returns all problems at once. `env_token` is `AUTHZ_ADMIN_TOKEN`.
    pub fn into_config(self, env_token: Option<String>) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let fleet = match self.source.as_str() {
            "embedded" => {
                if self.etcd.etcd_endpoints.is_some() {
                    errors
                        .push("--etcd-endpoints / AUTHZ_ETCD_ENDPOINTS needs --source etcd".into());
                }
                None
            }
            "etcd" => {
                if self.policy.is_some() {
                    errors.push(format!(
                        "--policy / {ENV_POLICY}: does not apply with --source etcd; seed the fleet with `authz-sidecar import --source etcd FILE`"
                    ));
                }
                let etcd = self.etcd.to_config(&mut errors);
                etcd.map(|etcd| FleetConfig {
                    etcd,
                    max_staleness: (self.max_staleness > 0)
                        .then(|| Duration::from_secs(self.max_staleness)),
                    min_revision_wait: Duration::from_millis(self.min_revision_wait_ms),
                })
            }
            other => {
                errors.push(format!(
                    "--source / AUTHZ_SOURCE: `{other}` is not `embedded` or `etcd`"
                ));
                None
            }
        };
        let listen = optional_addr(
            &format!("--listen / {ENV_LISTEN}"),
            &self.listen,
            DEFAULT_LISTEN,
            &mut errors,
        );
        let health_listen = optional_addr(
            "--health-listen / AUTHZ_HEALTH_LISTEN",
            &self.health_listen,
            "0.0.0.0:50052",
            &mut errors,
        );
        let uds_mode = match u32::from_str_radix(self.uds_mode.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => mode,
            _ => {
                errors.push(format!(
                    "--uds-mode / AUTHZ_UDS_MODE: `{}` is not an octal file mode like 0660",
                    self.uds_mode
                ));
                0o660
            }
        };
        let metrics_addr = optional_addr(
            "--metrics-addr / AUTHZ_METRICS_ADDR",
            &self.metrics_addr,
            "0.0.0.0:9090",
            &mut errors,
        );
        let http_listen = optional_addr(
            "--http-listen / AUTHZ_HTTP_LISTEN",
            &self.http_listen,
            "127.0.0.1:8080",
            &mut errors,
        );
        if self.listen == "none" && self.uds.is_none() {
            errors.push(format!(
                "--listen none needs --uds / {ENV_UDS}: there would be nothing to serve on"
            ));
        }
        if let Some(uds) = &self.uds {
            let parent = uds
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                errors.push(format!(
                    "--uds / {ENV_UDS}: directory {} does not exist",
                    parent.display()
                ));
            }
        }
        let log_format = match self.log_format.as_str() {
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            other => {
                errors.push(format!(
                    "--log-format / {ENV_LOG_FORMAT}: `{other}` is not `plain` or `json`"
                ));
                LogFormat::Plain
            }
        };
        if let Err(e) = check_data_dir(&self.data_dir) {
            errors.push(format!(
                "--data-dir / {ENV_DATA_DIR}: {}: {e}",
                self.data_dir.display()
            ));
        }
        if !MAX_POLICY_BYTES_RANGE.contains(&self.max_policy_bytes) {
            errors.push(format!(
                "--max-policy-bytes / {ENV_MAX_POLICY_BYTES}: {} is not between {} and {}",
                self.max_policy_bytes,
                MAX_POLICY_BYTES_RANGE.start(),
                MAX_POLICY_BYTES_RANGE.end()
            ));
        }
        let mut seed_error = None;
        let (seed, seed_source) = match &self.policy {
            Some(path) => match read_seed_max(path, self.max_policy_bytes) {
                Ok(seed) => (Some(seed), path.display().to_string()),
                // Not a configuration error: the stored policy serves while the file is bad
                // (a bad ConfigMap must not turn every restart into a crash loop).
                Err(e) => {
                    seed_error = Some(e);
                    (
                        Some(Seed {
                            policy: Policy::default(),
                            digest: String::new(),
                            reloadable: false,
                        }),
                        path.display().to_string(),
                    )
                }
            },
            None => match parse_policy("built-in example", EMBEDDED_DEFAULT) {
                Ok(policy) => (
                    Some(Seed {
                        policy,
                        digest: format!("built-in:{}", token_sha256_hex(EMBEDDED_DEFAULT)),
                        reloadable: false,
                    }),
                    "built-in example".to_owned(),
                ),
                Err(e) => {
                    errors.push(e.to_string());
                    (None, String::new())
                }
            },
        };
        let file_token = match &self.admin_token_file {
            None => None,
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) if text.trim().is_empty() => {
                    errors.push(format!(
                        "--admin-token-file / {ENV_ADMIN_TOKEN_FILE}: {} is empty",
                        path.display()
                    ));
                    None
                }
                Ok(text) => Some(text.trim().to_owned()),
                Err(e) => {
                    errors.push(format!(
                        "--admin-token-file / {ENV_ADMIN_TOKEN_FILE}: cannot read {}: {e}",
                        path.display()
                    ));
                    None
                }
            },
        };
        let env_token = env_token
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_owned());
        if let Some(problem) = file_token.as_deref().and_then(admin_token_problem) {
            errors.push(format!(
                "--admin-token-file / {ENV_ADMIN_TOKEN_FILE}: the token {problem}"
            ));
        }
        if let Some(problem) = env_token.as_deref().and_then(admin_token_problem) {
            errors.push(format!("{ENV_ADMIN_TOKEN}: the token {problem}"));
        }
        if file_token.is_some() && env_token.is_some() {
            errors.push(format!(
                "both {ENV_ADMIN_TOKEN} and --admin-token-file / {ENV_ADMIN_TOKEN_FILE} are set; set one"
            ));
        }
        let http_paths = PathOptions {
            encoded_slashes: match self.http_encoded_slashes.as_str() {
                "refuse" => EncodedSlashes::Refuse,
                "data" => EncodedSlashes::Data,
                other => {
                    errors.push(format!(
                        "--http-encoded-slashes / AUTHZ_HTTP_ENCODED_SLASHES: `{other}` is not `refuse` or `data`"
                    ));
                    EncodedSlashes::Refuse
                }
            },
        };
        let envoy = EnvoyConfig {
            mode: match self.envoy_mode.as_str() {
                "enforce" => EnvoyMode::Enforce,
                "shadow" => EnvoyMode::Shadow,
                "off" => EnvoyMode::Off,
                other => {
                    errors.push(format!("--envoy-mode / AUTHZ_ENVOY_MODE: `{other}` is not `enforce`, `shadow` or `off`"));
                    EnvoyMode::Enforce
                }
            },
            subject_source: match self.envoy_subject_source.as_str() {
                "header" => SubjectSource::Header,
                "jwt" => SubjectSource::Jwt,
                "spiffe" => SubjectSource::Spiffe,
                other => {
                    errors.push(format!(
                        "--envoy-subject-source / AUTHZ_ENVOY_SUBJECT_SOURCE: `{other}` is not `header`, `jwt` or `spiffe`"
                    ));
                    SubjectSource::Header
                }
            },
            subject_header: header_name(
                "envoy-subject-header",
                &self.envoy_subject_header,
                &mut errors,
            ),
            jwt_payload_key: self.envoy_jwt_payload_key.clone(),
            jwt_claim: self.envoy_jwt_claim.clone(),
            revision_header: header_name(
                "envoy-revision-header",
                &self.envoy_revision_header,
                &mut errors,
            ),
            subject_upstream_header: header_name(
                "envoy-subject-upstream-header",
                &self.envoy_subject_upstream_header,
                &mut errors,
            ),
            shadow_header: header_name(
                "envoy-shadow-header",
                &self.envoy_shadow_header,
                &mut errors,
            ),
            strip_subject_header: self.envoy_strip_subject_header,
            hide_reason: self.envoy_hide_reason,
            max_message_bytes: self.envoy_max_message_bytes,
            xds_listen: match self.envoy_xds_listen.as_deref() {
                None | Some("") | Some("none") => None,
                Some(text) => match text.strip_prefix("unix:") {
                    Some(path) if !path.is_empty() => Some(XdsListen::Unix(path.into())),
                    _ => match text.parse::<SocketAddr>() {
                        Ok(addr) => Some(XdsListen::Tcp(addr)),
                        Err(_) => {
                            errors.push(format!(
                                "--envoy-xds-listen / AUTHZ_ENVOY_XDS_LISTEN: `{text}` is not HOST:PORT or unix:PATH"
                            ));
                            None
                        }
                    },
                },
            },
            xds_max_subjects: self.envoy_xds_max_subjects,
        };
        if !ENVOY_MAX_MESSAGE_BYTES_RANGE.contains(&envoy.max_message_bytes) {
            errors.push(format!(
                "--envoy-max-message-bytes / AUTHZ_ENVOY_MAX_MESSAGE_BYTES: {} is not between {} and {}",
                envoy.max_message_bytes,
                ENVOY_MAX_MESSAGE_BYTES_RANGE.start(),
                ENVOY_MAX_MESSAGE_BYTES_RANGE.end()
            ));
        }
        // Every answer sets or removes each header the sidecar owns; two of them under one
        // name would leave the result to the order in which Envoy applies the changes.
        let owned = [
            ("envoy-subject-header", &envoy.subject_header),
            ("envoy-revision-header", &envoy.revision_header),
            (
                "envoy-subject-upstream-header",
                &envoy.subject_upstream_header,
            ),
            ("envoy-shadow-header", &envoy.shadow_header),
        ];
        for (i, (flag, name)) in owned.iter().enumerate() {
            if let Some((other, _)) = owned[..i].iter().find(|(_, n)| n == name) {
                errors.push(format!(
                    "--{flag} and --{other} both name `{name}`: each header the sidecar sets or removes needs a name of its own"
                ));
            }
        }
        let admin = match self.admin.as_str() {
            "on" => AdminExposure::On,
            "uds" => AdminExposure::UdsOnly,
            "off" => AdminExposure::Off,
            other => {
                errors.push(format!(
                    "--admin / AUTHZ_ADMIN: `{other}` is not `on`, `uds` or `off`"
                ));
                AdminExposure::On
            }
        };
        if admin == AdminExposure::Off && self.admin_listen.is_some() {
            errors.push("--admin off and --admin-listen contradict each other".into());
        }
        if admin == AdminExposure::UdsOnly && self.uds.is_none() && self.admin_listen.is_none() {
            errors.push(
                "--admin uds needs --uds or --admin-listen: admin calls would be accepted nowhere"
                    .into(),
            );
        }
        let admin_listen = match self.admin_listen.as_deref() {
            None | Some("none") | Some("") => None,
            Some(text) => match parse_listen_addr(text) {
                Some(addr) => Some(addr),
                None => {
                    errors.push(format!(
                        "--admin-listen / AUTHZ_ADMIN_LISTEN: `{text}` is not an address"
                    ));
                    None
                }
            },
        };
        let read = |flag: &str, path: &Path, errors: &mut Vec<String>| match std::fs::read(path) {
            Ok(bytes) if !bytes.is_empty() => Some(bytes),
            Ok(_) => {
                errors.push(format!("{flag}: {} is empty", path.display()));
                None
            }
            Err(e) => {
                errors.push(format!("{flag}: cannot read {}: {e}", path.display()));
                None
            }
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => {
                if self.tls_client_ca.is_some() {
                    errors.push("--tls-client-ca needs --tls-cert and --tls-key".into());
                }
                None
            }
            (Some(cert), Some(key)) => {
                let cert_pem = read("--tls-cert / AUTHZ_TLS_CERT", cert, &mut errors);
                let key_pem = read("--tls-key / AUTHZ_TLS_KEY", key, &mut errors);
                let client_ca_pem = match &self.tls_client_ca {
                    Some(ca) => read("--tls-client-ca / AUTHZ_TLS_CLIENT_CA", ca, &mut errors),
                    None => None,
                };
                match (cert_pem, key_pem) {
                    (Some(cert_pem), Some(key_pem)) => Some(TlsConfig {
                        cert_pem,
                        key_pem,
                        client_ca_pem,
                    }),
                    _ => None,
                }
            }
            _ => {
                errors.push("--tls-cert and --tls-key go together".into());
                None
            }
        };
        if self.max_concurrent_per_connection == 0 {
            errors.push("--max-concurrent-per-connection must be at least 1".into());
        }
        if self.worker_threads > 1024 {
            errors.push(format!(
                "--worker-threads {}: at most 1024",
                self.worker_threads
            ));
        }
        if self.request_timeout_ms == 0 {
            errors.push("--request-timeout-ms must be at least 1".into());
        }
        if !MAX_CONNECTIONS_RANGE.contains(&self.max_connections) {
            errors.push(format!(
                "--max-connections / AUTHZ_MAX_CONNECTIONS: {} is not between {} and {}",
                self.max_connections,
                MAX_CONNECTIONS_RANGE.start(),
                MAX_CONNECTIONS_RANGE.end()
            ));
        }
        if self.handshake_timeout_ms == 0 {
            errors.push(
                "--handshake-timeout-ms / AUTHZ_HANDSHAKE_TIMEOUT_MS must be at least 1".into(),
            );
        }
        let limits = Limits {
            max_concurrent_per_connection: self.max_concurrent_per_connection.max(1),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            max_connections: self.max_connections.max(1),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms.max(1)),
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
        };
        match seed {
            Some(seed) if errors.is_empty() => Ok(Config {
                listen,
                health_listen,
                metrics_addr,
                http_listen,
                uds: self.uds,
                uds_mode,
                data_dir: self.data_dir,
                seed,
                seed_source,
                seed_error,
                max_policy_bytes: self.max_policy_bytes,
                admin_token: file_token.or(env_token),
                log_format,
                envoy,
                admin,
                admin_listen,
                tls,
                limits,
                decision_log_every: (self.decision_log_every > 0)
                    .then_some(self.decision_log_every),
                http_paths,
                worker_threads: (self.worker_threads > 0).then_some(self.worker_threads),
                reload_interval: (self.policy.is_some()
                    && self.policy_reload_interval > 0
                    && fleet.is_none())
                .then(|| Duration::from_secs(self.policy_reload_interval)),
                policy_path: self.policy,
                fleet,
            }),
            _ => Err(errors),
        }
    }
}

/// The data dir must be a readable directory, or creatable.
fn check_data_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err("exists but is not a directory".into());
        }
        std::fs::read_dir(dir).map_err(|e| format!("cannot be read: {e}"))?;
        Ok(())
    } else {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot be created: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["authz-sidecar"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("parses").serve
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").expect("write");
        let errs = args(&[
            "--listen",
            "nowhere",
            "--log-format",
            "xml",
            "--data-dir",
            file.to_str().expect("utf8"),
            "--policy",
            "/nonexistent/policy.yaml",
        ])
        .into_config(None)
        .expect_err("invalid");
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].contains("--listen"));
        assert!(errs[1].contains("--log-format"));
        assert!(errs[2].contains("--data-dir"));
        // A bad policy file is not a configuration error: start-up decides against the data
        // dir (the stored policy serves; an empty data dir refuses).
        let config = args(&[
            "--data-dir",
            dir.path().to_str().expect("utf8"),
            "--policy",
            "/nonexistent/policy.yaml",
        ])
        .into_config(None)
        .expect("valid configuration");
        let problem = config.seed_error.expect("the file is refused").to_string();
        assert!(problem.contains("/nonexistent/policy.yaml"), "{problem}");
    }

    #[test]
    fn defaults_serve_the_built_in_example() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = args(&["--data-dir", data.to_str().expect("utf8")])
            .into_config(Some("tok".into()))
            .expect("valid");
        assert_eq!(config.listen, Some(DEFAULT_LISTEN.parse().expect("addr")));
        assert_eq!(config.seed_source, "built-in example");
        assert_eq!(config.admin_token.as_deref(), Some("tok"));
        assert_eq!(config.worker_threads, None, "one worker per available CPU");
        assert!(data.is_dir());
    }

    #[test]
    fn the_ext_authz_message_limit_and_owned_header_names_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf8");
        let config = args(&["--data-dir", data])
            .into_config(None)
            .expect("valid");
        assert_eq!(config.envoy.max_message_bytes, 1024 * 1024);
        let config = args(&["--data-dir", data, "--envoy-max-message-bytes", "2097152"])
            .into_config(None)
            .expect("valid");
        assert_eq!(config.envoy.max_message_bytes, 2 * 1024 * 1024);
        let errs = args(&[
            "--data-dir",
            data,
            "--envoy-max-message-bytes",
            "10",
            "--envoy-subject-upstream-header",
            "X-Subject",
        ])
        .into_config(None)
        .expect_err("invalid");
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].contains("--envoy-max-message-bytes"), "{errs:#?}");
        assert!(
            errs[1].contains(
                "--envoy-subject-upstream-header and --envoy-subject-header both name `x-subject`"
            ),
            "{errs:#?}"
        );
    }

    #[test]
    fn connection_limits_have_pod_sized_defaults_and_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf8");
        let config = args(&["--data-dir", data])
            .into_config(None)
            .expect("valid");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.max_connections, 1024);
        assert_eq!(config.limits.handshake_timeout, Duration::from_secs(5));
        assert_eq!(config.limits.idle_timeout, Some(Duration::from_secs(600)));
        let config = args(&[
            "--data-dir",
            data,
            "--max-connections",
            "64",
            "--handshake-timeout-ms",
            "250",
            "--idle-timeout",
            "0",
        ])
        .into_config(None)
        .expect("valid");
        assert_eq!(config.limits.max_connections, 64);
        assert_eq!(config.limits.handshake_timeout, Duration::from_millis(250));
        assert_eq!(config.limits.idle_timeout, None, "0 = never");
        let errs = args(&[
            "--data-dir",
            data,
            "--max-connections",
            "0",
            "--handshake-timeout-ms",
            "0",
        ])
        .into_config(None)
        .expect_err("invalid");
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].contains("AUTHZ_MAX_CONNECTIONS"), "{errs:#?}");
        assert!(errs[1].contains("AUTHZ_HANDSHAKE_TIMEOUT_MS"), "{errs:#?}");
    }

    #[test]
    fn worker_threads_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf8");
        let config = args(&["--data-dir", data, "--worker-threads", "1"])
            .into_config(None)
            .expect("valid");
        assert_eq!(config.worker_threads, Some(1));
        let errs = args(&["--data-dir", data, "--worker-threads", "4096"])
            .into_config(None)
            .expect_err("too many");
        assert_eq!(errs, ["--worker-threads 4096: at most 1024"]);
    }

    #[test]
    fn fleet_flags_are_validated_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let data = data.to_str().expect("utf8");
        let errs = args(&[
            "--data-dir",
            data,
            "--source",
            "etcd",
            "--etcd-endpoints",
            "etcd:2379,https://etcd-1:2379",
            "--etcd-prefix",
            "/authz",
            "--etcd-username",
            "sidecar",
        ])
        .into_config(None)
        .expect_err("invalid");
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].contains("`etcd:2379`"));
        assert!(errs[1].contains("--etcd-ca"));
        assert!(errs[2].contains("--etcd-prefix"));
        assert!(errs[3].contains("--etcd-password-file"));
        let errs = args(&["--data-dir", data, "--source", "cloud"])
            .into_config(None)
            .expect_err("invalid");
        assert!(errs[0].contains("--source"), "{errs:#?}");
        let config = args(&[
            "--data-dir",
            data,
            "--source",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:2379, http://127.0.0.1:22379",
            "--max-staleness",
            "30",
        ])
        .into_config(None)
        .expect("valid");
        let fleet = config.fleet.expect("fleet mode");
        assert_eq!(fleet.etcd.endpoints.len(), 2);
        assert_eq!(fleet.etcd.prefix, "/authz/");
        assert_eq!(fleet.max_staleness, Some(Duration::from_secs(30)));
        assert!(
            args(&["--data-dir", data])
                .into_config(None)
                .expect("valid")
                .fleet
                .is_none()
        );
    }
}
