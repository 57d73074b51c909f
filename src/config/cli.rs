//! The command line: subcommands, and the serving flags gathered from every section.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::admin::AdminArgs;
use super::envoy::EnvoyArgs;
use super::fleet::{EtcdArgs, FleetArgs, SOURCE_DEFAULT};
use super::http_paths::{ENCODED_SLASHES_DEFAULT, HttpPathArgs};
use super::limits::LimitsArgs;
use super::listeners::ListenArgs;
use super::log::LogArgs;
use super::store::{DEFAULT_DATA_DIR, ENV_DATA_DIR, ENV_MAX_POLICY_BYTES, StoreArgs};
use super::tls::TlsArgs;
use crate::model::file::DEFAULT_MAX_POLICY_BYTES;

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
        #[arg(long, env = "AUTHZ_SOURCE", default_value = SOURCE_DEFAULT)]
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
        #[arg(long, env = "AUTHZ_HTTP_ENCODED_SLASHES", default_value = ENCODED_SLASHES_DEFAULT)]
        http_encoded_slashes: String,
        /// Print the explanation of every case, not only of failures.
        #[arg(long, short)]
        verbose: bool,
    },
}

/// Flags of the serving mode, one group per section (in `--help` order).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Fleet mode: `--source`, etcd, staleness.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// TCP addresses and the Unix socket.
    #[command(flatten)]
    pub listeners: ListenArgs,
    /// Data dir and policy file.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where admin RPCs are accepted, and the bootstrap token.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// TLS on the TCP listeners.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Connection and request limits, worker threads.
    #[command(flatten)]
    pub limits: LimitsArgs,
    /// Decision log and log format.
    #[command(flatten)]
    pub log: LogArgs,
    /// How HTTP decisions read request paths.
    #[command(flatten)]
    pub http_paths: HttpPathArgs,
    /// Envoy ext_authz and xDS.
    #[command(flatten)]
    pub envoy: EnvoyArgs,
}
