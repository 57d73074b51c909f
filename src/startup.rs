//! Start-up: from validated [`Settings`] to the [`Config`] a sidecar launches with.
//!
//! This is the I/O that configuration parsing leaves out: the data dir is checked (or
//! created), the token, TLS and etcd files read, and the policy file (or the built-in example)
//! turned into the [`Seed`]. Unreadable files join the configuration errors (exit 2, all at
//! once); a bad policy file does not (see [`Config::seed_error`]).

use std::net::SocketAddr;
use std::path::Path;

use crate::auth::token_sha256_hex;
use crate::config::{
    AdminExposure, ENV_ADMIN_TOKEN, ENV_ADMIN_TOKEN_FILE, ENV_DATA_DIR, ENV_UDS, EnvoyConfig,
    EtcdSettings, FleetSettings, Limits, Listeners, LogSettings, Settings, StoreSettings,
    TlsConfig, TlsFiles, admin_token_problem,
};
use crate::fleet::{EtcdConfig, FleetConfig};
use crate::live::Seed;
use crate::model::file::{
    DEFAULT_MAX_POLICY_BYTES, EMBEDDED_DEFAULT, PolicyFileError, parse_policy, read_policy_text_max,
};
use crate::model::{PathOptions, Policy};

/// What a sidecar launches with: the settings, and what start-up read for them.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the sidecar listens (the Unix socket's directory checked).
    pub listeners: Listeners,
    /// Data dir, policy file, its size bound and reload interval, as parsed.
    pub store: StoreSettings,
    /// The policy imported into an empty store (and re-applied when its file changes).
    pub seed: Seed,
    /// Where the seed came from (file path or `built-in example`).
    pub seed_source: String,
    /// The policy file's problems when it is refused: the stored policy then serves, and a
    /// start on an empty data dir is refused (`seed` is an empty placeholder).
    pub seed_error: Option<PolicyFileError>,
    /// Bootstrap admin token.
    pub admin_token: Option<String>,
    /// Log format and decision log.
    pub log: LogSettings,
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
    /// How HTTP decisions read request paths.
    pub http_paths: PathOptions,
    /// Runtime worker threads; `None` = one per available CPU.
    pub worker_threads: Option<usize>,
    /// Fleet mode (`--source etcd`); `None` = the embedded single-pod mode.
    pub fleet: Option<FleetConfig>,
}

/// Checks the directories and reads the files `settings` name, adding each problem to
/// `errors`; the [`Config`] when `errors` ends up empty (problems found while parsing
/// included).
pub fn load(settings: Settings, errors: &mut Vec<String>) -> Option<Config> {
    let Settings {
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
    } = settings;
    // In section order, as parsing reports its problems.
    let fleet = fleet.and_then(|fleet| fleet_config(fleet, errors));
    if let Some(uds) = &listeners.uds {
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
    if let Err(e) = check_data_dir(&store.data_dir) {
        errors.push(format!(
            "--data-dir / {ENV_DATA_DIR}: {}: {e}",
            store.data_dir.display()
        ));
    }
    let admin_token = admin_token(admin.token_file.as_deref(), admin.env_token, errors);
    let tls = tls.and_then(|files| read_tls(&files, errors));
    if !errors.is_empty() {
        return None;
    }
    let (seed, seed_source, seed_error) = match &store.policy {
        Some(path) => {
            let source = path.display().to_string();
            match read_seed_max(path, store.max_policy_bytes) {
                Ok(seed) => (seed, source, None),
                // Not a configuration error: the stored policy serves while the file is bad
                // (a bad ConfigMap must not turn every restart into a crash loop).
                Err(e) => (
                    Seed {
                        policy: Policy::default(),
                        digest: String::new(),
                        reloadable: false,
                    },
                    source,
                    Some(e),
                ),
            }
        }
        None => match built_in_seed() {
            Ok(seed) => (seed, "built-in example".to_owned(), None),
            Err(e) => {
                errors.push(e.to_string());
                return None;
            }
        },
    };
    Some(Config {
        listeners,
        store,
        seed,
        seed_source,
        seed_error,
        admin_token,
        log,
        envoy,
        admin: admin.exposure,
        admin_listen: admin.listen,
        tls,
        limits,
        http_paths,
        worker_threads,
        fleet,
    })
}

/// The bootstrap token: from its file or `AUTHZ_ADMIN_TOKEN` (already checked), not both.
fn admin_token(
    file: Option<&Path>,
    env_token: Option<String>,
    errors: &mut Vec<String>,
) -> Option<String> {
    let file_token = match file {
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
    if let Some(problem) = file_token.as_deref().and_then(admin_token_problem) {
        errors.push(format!(
            "--admin-token-file / {ENV_ADMIN_TOKEN_FILE}: the token {problem}"
        ));
    }
    if file_token.is_some() && env_token.is_some() {
        errors.push(format!(
            "both {ENV_ADMIN_TOKEN} and --admin-token-file / {ENV_ADMIN_TOKEN_FILE} are set; set one"
        ));
    }
    file_token.or(env_token)
}

fn read_tls(files: &TlsFiles, errors: &mut Vec<String>) -> Option<TlsConfig> {
    let cert_pem = read_file("--tls-cert / AUTHZ_TLS_CERT", &files.cert, errors);
    let key_pem = read_file("--tls-key / AUTHZ_TLS_KEY", &files.key, errors);
    let client_ca_pem = files
        .client_ca
        .as_deref()
        .and_then(|ca| read_file("--tls-client-ca / AUTHZ_TLS_CLIENT_CA", ca, errors));
    Some(TlsConfig {
        cert_pem: cert_pem?,
        key_pem: key_pem?,
        client_ca_pem,
    })
}

fn fleet_config(fleet: FleetSettings, errors: &mut Vec<String>) -> Option<FleetConfig> {
    Some(FleetConfig {
        etcd: etcd_config(fleet.etcd, errors)?,
        max_staleness: fleet.max_staleness,
        min_revision_wait: fleet.min_revision_wait,
    })
}

/// Reads the password, CA and client identity files of `etcd`, adding each problem to
/// `errors`.
pub fn etcd_config(etcd: EtcdSettings, errors: &mut Vec<String>) -> Option<EtcdConfig> {
    let before = errors.len();
    let credentials = match &etcd.credentials {
        None => None,
        Some((user, file)) => match read_file(
            "--etcd-password-file / AUTHZ_ETCD_PASSWORD_FILE",
            file,
            errors,
        ) {
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(password) => Some((user.clone(), password.trim_end().to_owned())),
                Err(_) => {
                    errors
                        .push("--etcd-password-file / AUTHZ_ETCD_PASSWORD_FILE: not UTF-8".into());
                    None
                }
            },
            None => None,
        },
    };
    let ca_pem = etcd
        .ca
        .as_deref()
        .and_then(|p| read_file("--etcd-ca / AUTHZ_ETCD_CA", p, errors));
    let client_identity = etcd.client_identity.as_ref().and_then(|(cert, key)| {
        let cert = read_file("--etcd-cert / AUTHZ_ETCD_CERT", cert, errors);
        let key = read_file("--etcd-key / AUTHZ_ETCD_KEY", key, errors);
        cert.zip(key)
    });
    (errors.len() == before).then_some(EtcdConfig {
        endpoints: etcd.endpoints,
        prefix: etcd.prefix,
        credentials,
        ca_pem,
        client_identity,
    })
}

/// A file that must exist and hold something (key material, a password).
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

/// The built-in example: seeds an empty store only (never re-applied).
fn built_in_seed() -> Result<Seed, PolicyFileError> {
    Ok(Seed {
        policy: parse_policy("built-in example", EMBEDDED_DEFAULT)?,
        digest: format!("built-in:{}", token_sha256_hex(EMBEDDED_DEFAULT)),
        reloadable: false,
    })
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
