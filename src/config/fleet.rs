//! Fleet mode: where the policy lives (`--source`) and how to reach etcd.
//!
//! Only names and paths here; the password, CA and client key files are read at start-up
//! (`startup::etcd_config`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::one_of;

/// Default of `--etcd-prefix`: the key prefix holding a fleet's policy.
pub const DEFAULT_ETCD_PREFIX: &str = "/authz/";
/// Default of `--source`.
pub const SOURCE_DEFAULT: &str = "embedded";
/// Default of `--min-revision-wait-ms`.
pub const DEFAULT_MIN_REVISION_WAIT_MS: u64 = 2000;

/// Where the policy lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// This pod's sled store.
    Embedded,
    /// etcd, shared by a fleet and mirrored into the local store.
    Etcd,
}

/// Reads `--source` (the same for serving and `import`); `None` (and the error) when unknown.
pub fn source(text: &str, errors: &mut Vec<String>) -> Option<Source> {
    one_of("--source / AUTHZ_SOURCE", text, errors)
}

/// How to reach etcd (fleet mode and `import --source etcd`).
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (`http://…` or `https://…`).
    #[arg(long, env = "AUTHZ_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// Key prefix holding the policy and every admin change.
    #[arg(long, env = "AUTHZ_ETCD_PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
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

/// Fleet flags of the serving mode.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Where the policy lives: `embedded` (this pod's sled store) or `etcd` (fleet mode: etcd
    /// is the shared source of truth, mirrored into the local store).
    #[arg(long, env = "AUTHZ_SOURCE", default_value = SOURCE_DEFAULT)]
    pub source: String,
    /// etcd connection (fleet mode).
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Fleet mode: report NOT_SERVING once the mirror may be staler than this many seconds
    /// (etcd unreachable); 0 = keep serving stale data.
    #[arg(long, env = "AUTHZ_MAX_STALENESS", default_value_t = 0)]
    pub max_staleness: u64,
    /// Fleet mode: how long a Check waits for its `min_revision` before UNAVAILABLE.
    #[arg(long, env = "AUTHZ_MIN_REVISION_WAIT_MS", default_value_t = DEFAULT_MIN_REVISION_WAIT_MS)]
    pub min_revision_wait_ms: u64,
}

/// Validated etcd settings; the files are named, not yet read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// Key prefix holding the policy.
    pub prefix: String,
    /// User name and the file holding the password.
    pub credentials: Option<(String, PathBuf)>,
    /// CA (PEM) file for `https` endpoints.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) files for mTLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// Validated fleet settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// etcd connection.
    pub etcd: EtcdSettings,
    /// Staleness beyond which health reports NOT_SERVING; `None` = stay SERVING on stale data.
    pub max_staleness: Option<Duration>,
    /// How long a Check waits for its `min_revision` before UNAVAILABLE.
    pub min_revision_wait: Duration,
}

impl EtcdArgs {
    /// Validates the etcd settings, adding every problem to `errors`.
    pub fn settings(&self, errors: &mut Vec<String>) -> Option<EtcdSettings> {
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
                "--etcd-prefix / AUTHZ_ETCD_PREFIX: `{}` must be non-empty and end with `/` (e.g. {DEFAULT_ETCD_PREFIX})",
                self.etcd_prefix
            ));
        }
        let credentials = match (&self.etcd_username, &self.etcd_password_file) {
            (None, None) => None,
            (Some(user), Some(file)) => Some((user.clone(), file.clone())),
            _ => {
                errors.push("--etcd-username and --etcd-password-file go together".into());
                None
            }
        };
        let client_identity = match (&self.etcd_cert, &self.etcd_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => {
                errors.push("--etcd-cert and --etcd-key go together".into());
                None
            }
        };
        (errors.len() == before).then(|| EtcdSettings {
            endpoints,
            prefix: self.etcd_prefix.clone(),
            credentials,
            ca: self.etcd_ca.clone(),
            client_identity,
        })
    }
}

/// Fleet mode when `--source etcd`; `policy_file` says whether `--policy` was given (it does
/// not apply to a fleet).
pub fn parse(
    args: &FleetArgs,
    policy_file: bool,
    errors: &mut Vec<String>,
) -> Option<FleetSettings> {
    match source(&args.source, errors)? {
        Source::Embedded => {
            if args.etcd.etcd_endpoints.is_some() {
                errors.push("--etcd-endpoints / AUTHZ_ETCD_ENDPOINTS needs --source etcd".into());
            }
            None
        }
        Source::Etcd => {
            if policy_file {
                errors.push(format!(
                    "--policy / {}: does not apply with --source etcd; seed the fleet with `authz-sidecar import --source etcd FILE`",
                    super::store::ENV_POLICY
                ));
            }
            let etcd = args.etcd.settings(errors)?;
            Some(FleetSettings {
                etcd,
                max_staleness: (args.max_staleness > 0)
                    .then(|| Duration::from_secs(args.max_staleness)),
                min_revision_wait: Duration::from_millis(args.min_revision_wait_ms),
            })
        }
    }
}
