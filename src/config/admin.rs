//! Admin RPCs: where they are accepted and the bootstrap token.
//!
//! `AUTHZ_ADMIN_TOKEN` holds the token itself and has no flag (a flag would show in `ps`); the
//! token file is read at start-up (`startup::load`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::env::Strings;
use super::listeners::parse_listen_addr;
use super::one_of;

/// Environment variable for `--admin-token-file`.
pub const ENV_ADMIN_TOKEN_FILE: &str = "AUTHZ_ADMIN_TOKEN_FILE";
/// Environment variable holding the bootstrap admin token itself.
pub const ENV_ADMIN_TOKEN: &str = "AUTHZ_ADMIN_TOKEN";
/// Default of `--admin`.
pub const DEFAULT_ADMIN: &str = "on";
/// The admin token placeholder the Kubernetes manifests ship (`k8s/base/kustomization.yaml`).
pub const PLACEHOLDER_ADMIN_TOKEN: &str = "REPLACE-ME-with-a-long-random-token";

/// Admin flags.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Where admin RPCs are accepted: `on` (every API listener), `uds` (only the Unix socket and
    /// `--admin-listen`), `off` (nowhere; the policy changes only through the file).
    #[arg(long, env = "AUTHZ_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// A separate TCP listener for the API with admin RPCs (e.g. for an operator network).
    #[arg(long, env = "AUTHZ_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// File holding the bootstrap admin token (a mounted Kubernetes Secret).
    #[arg(long, env = ENV_ADMIN_TOKEN_FILE)]
    pub admin_token_file: Option<PathBuf>,
}

/// Where admin RPCs are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdminExposure {
    /// On every API listener.
    On,
    /// Only on the Unix socket (and `--admin-listen`).
    #[value(name = "uds")]
    UdsOnly,
    /// Nowhere.
    Off,
}

/// Validated admin settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where admin RPCs are accepted.
    pub exposure: AdminExposure,
    /// A separate API listener with admin RPCs.
    pub listen: Option<SocketAddr>,
    /// The file holding the bootstrap token.
    pub token_file: Option<PathBuf>,
    /// The bootstrap token from `AUTHZ_ADMIN_TOKEN`, trimmed; `None` when unset or blank.
    pub env_token: Option<String>,
}

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

/// Validates the admin flags and `AUTHZ_ADMIN_TOKEN` into `errors`; `uds` says whether a Unix
/// socket is served.
pub fn parse(
    args: &AdminArgs,
    uds: bool,
    env: &dyn Strings,
    errors: &mut Vec<String>,
) -> AdminSettings {
    let env_token = env
        .text(ENV_ADMIN_TOKEN)
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_owned());
    if let Some(problem) = env_token.as_deref().and_then(admin_token_problem) {
        errors.push(format!("{ENV_ADMIN_TOKEN}: the token {problem}"));
    }
    let exposure =
        one_of("--admin / AUTHZ_ADMIN", &args.admin, errors).unwrap_or(AdminExposure::On);
    if exposure == AdminExposure::Off && args.admin_listen.is_some() {
        errors.push("--admin off and --admin-listen contradict each other".into());
    }
    if exposure == AdminExposure::UdsOnly && !uds && args.admin_listen.is_none() {
        errors.push(
            "--admin uds needs --uds or --admin-listen: admin calls would be accepted nowhere"
                .into(),
        );
    }
    let listen = match args.admin_listen.as_deref() {
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
    AdminSettings {
        exposure,
        listen,
        token_file: args.admin_token_file.clone(),
        env_token,
    }
}
