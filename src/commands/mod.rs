//! What the binary does with a parsed command line: serve, or run one subcommand.
//!
//! Exit codes: 0 done, 1 failed (or a policy test failed), 2 a configuration or usage error
//! (as clap's usage errors).

mod policy;
mod serve;
mod test;

use std::io::{Read, Write};
use std::process::ExitCode;

use crate::config::{Cli, Command, Strings, admin_token_problem};

/// Exit status for configuration errors (as clap uses for usage errors).
pub const EXIT_CONFIG: u8 = 2;

/// Runs `cli`; `env` holds the `AUTHZ_*` variables (`AUTHZ_ADMIN_TOKEN` is read from it).
pub fn run(cli: Cli, env: &dyn Strings) -> ExitCode {
    match cli.command {
        Some(Command::Validate {
            file,
            max_policy_bytes,
        }) => policy::validate(&file, max_policy_bytes),
        Some(Command::Import {
            data_dir,
            file,
            source,
            etcd,
            max_policy_bytes,
        }) => policy::import(&data_dir, &source, &etcd, &file, max_policy_bytes),
        Some(Command::HashToken) => hash_token(),
        Some(Command::Ctl(args)) => ctl(&args),
        Some(Command::Test {
            policy,
            tests,
            junit,
            http_encoded_slashes,
            verbose,
        }) => test::run(
            &policy,
            &tests,
            junit.as_deref(),
            &http_encoded_slashes,
            verbose,
        ),
        None => serve::serve(&cli.serve, env),
    }
}

/// `authz-sidecar ctl`: one call to a running sidecar.
fn ctl(args: &crate::ctl::CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(crate::ctl::run(args)) {
        Ok(outcome) => {
            let _ = writeln!(std::io::stdout(), "{}", outcome.text);
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `authz-sidecar hash-token`: the SHA-256 of the token on standard input.
fn hash_token() -> ExitCode {
    let mut token = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut token) {
        eprintln!("cannot read the token from standard input: {e}");
        return ExitCode::from(1);
    }
    if token.trim().is_empty() {
        eprintln!("hash-token: standard input holds no token (its digest would admit anyone)");
        return ExitCode::from(1);
    }
    if let Some(problem) = admin_token_problem(token.trim()) {
        eprintln!("hash-token: the token {problem}");
        return ExitCode::from(1);
    }
    println!("{}", crate::auth::token_sha256_hex(token.trim()));
    ExitCode::SUCCESS
}

/// The async runtime with `worker_threads` workers (default: one per available CPU), or the
/// exit code when it cannot start.
fn runtime_with(worker_threads: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    builder.build().map_err(|e| {
        eprintln!("cannot start the async runtime: {e}");
        ExitCode::from(1)
    })
}
