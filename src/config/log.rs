//! Logging: the format and the decision log.

use clap::{Args, ValueEnum};

use super::one_of;

/// Environment variable for `--log-format`.
pub const ENV_LOG_FORMAT: &str = "AUTHZ_LOG_FORMAT";
/// Default log format.
pub const DEFAULT_LOG_FORMAT: &str = "plain";

/// Logging flags.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log one decision in N on the `authz::decision` target (0 = no decision log).
    #[arg(long, env = "AUTHZ_DECISION_LOG_EVERY", default_value_t = 0)]
    pub decision_log_every: u64,
    /// Log format: plain or json.
    #[arg(long, env = ENV_LOG_FORMAT, default_value = DEFAULT_LOG_FORMAT)]
    pub log_format: String,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Validated logging settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// Log format.
    pub format: LogFormat,
    /// Log one decision in this many; `None` = no decision log.
    pub decision_log_every: Option<u64>,
}

/// Validates the logging flags into `errors`.
pub fn parse(args: &LogArgs, errors: &mut Vec<String>) -> LogSettings {
    LogSettings {
        format: one_of(
            &format!("--log-format / {ENV_LOG_FORMAT}"),
            &args.log_format,
            errors,
        )
        .unwrap_or(LogFormat::Plain),
        decision_log_every: (args.decision_log_every > 0).then_some(args.decision_log_every),
    }
}
