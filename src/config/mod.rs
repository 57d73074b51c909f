//! Flags and `AUTHZ_*` environment variables, validated into typed [`Settings`], one section
//! per file.
//!
//! Precedence, for every setting: command-line flag, then environment variable, then default
//! ([`env`] says how the variables reach clap, and how a test gives its own). Each section
//! holds its flags, its defaults (constants the flags and any `Default` share) and its checks,
//! which add to one list: start-up reports every problem together and never starts
//! half-configured.
//!
//! Parsing does no I/O. The data dir, the policy file and the token, TLS and etcd files are
//! checked and read at start-up (`startup::load`), whose problems join the same list.

mod admin;
mod cli;
mod env;
mod envoy;
mod fleet;
mod http_paths;
mod limits;
mod listeners;
mod log;
mod store;
mod tls;

use clap::ValueEnum;

use crate::model::PathOptions;

pub use admin::{
    AdminArgs, AdminExposure, AdminSettings, ENV_ADMIN_TOKEN, ENV_ADMIN_TOKEN_FILE,
    PLACEHOLDER_ADMIN_TOKEN, admin_token_problem,
};
pub use cli::{Cli, Command, ServeArgs};
pub use env::{Env, Strings, command, parse_cli};
pub use envoy::{
    DEFAULT_ENVOY_MAX_MESSAGE_BYTES, DEFAULT_ENVOY_XDS_MAX_SUBJECTS, EnvoyArgs, EnvoyConfig,
    EnvoyMode, SubjectSource, XdsListen,
};
pub use fleet::{
    DEFAULT_ETCD_PREFIX, EtcdArgs, EtcdSettings, FleetArgs, FleetSettings, Source, source,
};
pub use http_paths::{HttpPathArgs, encoded_slashes};
pub use limits::{
    DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS, Limits,
    LimitsArgs,
};
pub use listeners::{
    DEFAULT_LISTEN, ENV_LISTEN, ENV_UDS, ListenArgs, Listeners, parse_listen_addr,
};
pub use log::{DEFAULT_LOG_FORMAT, ENV_LOG_FORMAT, LogArgs, LogFormat, LogSettings};
pub use store::{
    DEFAULT_DATA_DIR, DEFAULT_MAX_POLICY_BYTES, ENV_DATA_DIR, ENV_MAX_POLICY_BYTES, ENV_POLICY,
    StoreArgs, StoreSettings,
};
pub use tls::{TlsArgs, TlsConfig, TlsFiles};

/// A validated serving configuration, by section; files named, not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Fleet mode (`--source etcd`); `None` = the embedded single-pod mode.
    pub fleet: Option<FleetSettings>,
    /// Where the sidecar listens.
    pub listeners: Listeners,
    /// Data dir and policy file.
    pub store: StoreSettings,
    /// Admin RPCs and the bootstrap token.
    pub admin: AdminSettings,
    /// TLS files for the TCP listeners.
    pub tls: Option<TlsFiles>,
    /// Per-connection concurrency, deadlines, connection limits.
    pub limits: Limits,
    /// Runtime worker threads; `None` = one per available CPU.
    pub worker_threads: Option<usize>,
    /// Log format and decision log.
    pub log: LogSettings,
    /// How HTTP decisions read request paths.
    pub http_paths: PathOptions,
    /// Envoy ext_authz settings.
    pub envoy: EnvoyConfig,
}

impl ServeArgs {
    /// Validates every section, adding each problem to `errors` (in section order). The
    /// settings come back either way, with a fallback where a value was refused, so that
    /// start-up can still report its own problems in the same list.
    pub fn settings(&self, env: &dyn Strings, errors: &mut Vec<String>) -> Settings {
        let fleet = fleet::parse(&self.fleet, self.store.policy.is_some(), errors);
        let listeners = listeners::parse(&self.listeners, errors);
        let log = log::parse(&self.log, errors);
        let mut store = store::parse(&self.store, errors);
        if fleet.is_some() {
            // A fleet follows etcd; there is no file to watch.
            store.reload_interval = None;
        }
        let admin = admin::parse(&self.admin, listeners.uds.is_some(), env, errors);
        let http_paths = http_paths::parse(&self.http_paths, errors);
        let envoy = envoy::parse(&self.envoy, errors);
        let tls = tls::parse(&self.tls, errors);
        let (limits, worker_threads) = limits::parse(&self.limits, errors);
        Settings {
            fleet,
            listeners,
            store,
            admin,
            tls,
            limits,
            worker_threads,
            log,
            http_paths,
            envoy,
        }
    }
}

/// Reads a keyword flag through its [`ValueEnum`]; an unknown word adds "`label`: `text` is not
/// `a`, `b` or `c`" to `errors`.
fn one_of<E: ValueEnum>(label: &str, text: &str, errors: &mut Vec<String>) -> Option<E> {
    match E::from_str(text, false) {
        Ok(value) => Some(value),
        Err(_) => {
            errors.push(format!("{label}: `{text}` is not {}", names::<E>()));
            None
        }
    }
}

/// "`a`, `b` or `c`": the words of `E`.
fn names<E: ValueEnum>() -> String {
    let words: Vec<String> = E::value_variants()
        .iter()
        .filter_map(ValueEnum::to_possible_value)
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    match words.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
