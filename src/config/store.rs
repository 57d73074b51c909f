//! The data dir and the policy file that seeds it.
//!
//! Parsing only names them: the data dir is checked (or created) and the file read at
//! start-up (`startup::load`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

pub use crate::model::file::DEFAULT_MAX_POLICY_BYTES;

/// Environment variable for `--data-dir`.
pub const ENV_DATA_DIR: &str = "AUTHZ_DATA_DIR";
/// Default sled directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Environment variable for `--policy`.
pub const ENV_POLICY: &str = "AUTHZ_POLICY";
/// Environment variable for `--max-policy-bytes`.
pub const ENV_MAX_POLICY_BYTES: &str = "AUTHZ_MAX_POLICY_BYTES";
/// Default of `--policy-reload-interval`, in seconds.
pub const DEFAULT_POLICY_RELOAD_INTERVAL_SECS: u64 = 5;
const MAX_POLICY_BYTES_RANGE: std::ops::RangeInclusive<u64> = 4096..=(64 * 1024 * 1024);

/// Data dir and policy file flags.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Directory of the sled store.
    #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Policy file imported on first start (empty data dir); default: the built-in example.
    #[arg(long, env = ENV_POLICY)]
    pub policy: Option<PathBuf>,
    /// Seconds between checks of the policy file for changes (a ConfigMap update); 0 = never.
    #[arg(long, env = "AUTHZ_POLICY_RELOAD_INTERVAL", default_value_t = DEFAULT_POLICY_RELOAD_INTERVAL_SECS)]
    pub policy_reload_interval: u64,
    /// Largest policy file accepted, in bytes (4 KiB to 64 MiB); a larger one is refused
    /// unread.
    #[arg(long, env = ENV_MAX_POLICY_BYTES, default_value_t = DEFAULT_MAX_POLICY_BYTES)]
    pub max_policy_bytes: u64,
}

/// Validated store settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// sled directory.
    pub data_dir: PathBuf,
    /// The policy file; `None`: the built-in example.
    pub policy: Option<PathBuf>,
    /// Largest policy file accepted, in bytes.
    pub max_policy_bytes: u64,
    /// How often the policy file is checked for changes; `None` = never.
    pub reload_interval: Option<Duration>,
}

/// Validates the store flags into `errors`.
pub fn parse(args: &StoreArgs, errors: &mut Vec<String>) -> StoreSettings {
    if !MAX_POLICY_BYTES_RANGE.contains(&args.max_policy_bytes) {
        errors.push(format!(
            "--max-policy-bytes / {ENV_MAX_POLICY_BYTES}: {} is not between {} and {}",
            args.max_policy_bytes,
            MAX_POLICY_BYTES_RANGE.start(),
            MAX_POLICY_BYTES_RANGE.end()
        ));
    }
    StoreSettings {
        data_dir: args.data_dir.clone(),
        policy: args.policy.clone(),
        max_policy_bytes: args.max_policy_bytes,
        // The built-in example never changes.
        reload_interval: (args.policy.is_some() && args.policy_reload_interval > 0)
            .then(|| Duration::from_secs(args.policy_reload_interval)),
    }
}
