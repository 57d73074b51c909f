//! `authz-sidecar`: flags and environment → a command. Everything else lives in the library
//! (`config` parses, `commands` runs, `startup` reads what the settings name).

use std::process::ExitCode;

use authz_sidecar::commands;
use authz_sidecar::config::{Env, parse_cli};

fn main() -> ExitCode {
    let cli = parse_cli(std::env::args_os(), &Env).unwrap_or_else(|e| e.exit());
    commands::run(cli, &Env)
}
