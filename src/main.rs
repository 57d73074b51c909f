//! `authz-sidecar`: flags → Config → Sidecar. Everything else lives in the library.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use authz_sidecar::config::read_seed_max;
use authz_sidecar::config::{Cli, Command, Config, ENV_ADMIN_TOKEN};
use authz_sidecar::fleet;
use authz_sidecar::logging;
use authz_sidecar::model::file::{load_policy_file, load_policy_file_max};
use authz_sidecar::model::{EncodedSlashes, PathOptions};
use authz_sidecar::policytest::{junit, load_test_file, run_file};
use authz_sidecar::server::Sidecar;
use authz_sidecar::store::{ImportMode, MutableStore, SledStore};
use clap::Parser;

/// Exit status for configuration errors (as clap uses for usage errors).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate {
            file,
            max_policy_bytes,
        }) => validate(&file, max_policy_bytes),
        Some(Command::Import {
            data_dir,
            file,
            source,
            etcd,
            max_policy_bytes,
        }) => match source.as_str() {
            "embedded" => import(&data_dir, &file, max_policy_bytes),
            "etcd" => import_etcd(&etcd, &file, max_policy_bytes),
            other => {
                eprintln!("error: --source / AUTHZ_SOURCE: `{other}` is not `embedded` or `etcd`");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Some(Command::HashToken) => hash_token(),
        Some(Command::Ctl(args)) => ctl(&args),
        Some(Command::Test {
            policy,
            tests,
            junit,
            http_encoded_slashes,
            verbose,
        }) => policy_test(
            &policy,
            &tests,
            junit.as_deref(),
            &http_encoded_slashes,
            verbose,
        ),
        None => serve(cli.serve.into_config(std::env::var(ENV_ADMIN_TOKEN).ok())),
    }
}

fn validate(file: &std::path::Path, max_bytes: u64) -> ExitCode {
    match load_policy_file_max(file, max_bytes) {
        Ok(policy) => {
            println!(
                "{}: ok ({} permissions, {} roles, {} subjects)",
                file.display(),
                policy.catalog.permissions.len(),
                policy.roles.len(),
                policy.subjects.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            // `{:#}`: each problem with its source line and a caret.
            eprintln!("{e:#}");
            eprintln!("{}: {} problem(s)", file.display(), e.problems.len());
            ExitCode::from(1)
        }
    }
}

fn import(data_dir: &std::path::Path, file: &std::path::Path, max_bytes: u64) -> ExitCode {
    let seed = match read_seed_max(file, max_bytes) {
        Ok(seed) => seed,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(1);
        }
    };
    let imported = SledStore::open(data_dir)
        .and_then(|s| s.import(&seed.policy, "import", ImportMode::Reseed, &seed.digest));
    match imported {
        Ok(revision) => {
            println!(
                "imported {} into {} at revision {revision}",
                file.display(),
                data_dir.display()
            );
            // The import is done and flushed; settling only makes the next start faster.
            if let Err(e) = SledStore::settle(data_dir) {
                eprintln!("note: the sidecar's next start will replay the import's log ({e})");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("import failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Seeds (or replaces) a fleet's policy in etcd; every sidecar on the prefix follows.
fn import_etcd(
    etcd: &authz_sidecar::config::EtcdArgs,
    file: &std::path::Path,
    max_bytes: u64,
) -> ExitCode {
    let mut errors = Vec::new();
    let config = etcd.to_config(&mut errors);
    let seed = read_seed_max(file, max_bytes);
    let (config, seed) = match (config, seed) {
        (Some(config), Ok(seed)) if errors.is_empty() => (config, seed),
        (_, seed) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            if let Err(e) = seed {
                eprintln!("{e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match runtime_with(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let client = fleet::EtcdClient::new(&config)?;
        let layout = fleet::Layout::new(&config.prefix);
        fleet::import_policy(&client, &layout, &seed.policy, "import").await
    });
    match result {
        Ok(revision) => {
            println!(
                "imported {} into etcd prefix {} at revision {revision}",
                file.display(),
                config.prefix
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("import failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// `authz-sidecar test`: every case of every test file against the compiled policy.
fn policy_test(
    policy_file: &Path,
    tests: &[PathBuf],
    junit_file: Option<&Path>,
    encoded_slashes: &str,
    verbose: bool,
) -> ExitCode {
    let encoded_slashes = match encoded_slashes {
        "refuse" => EncodedSlashes::Refuse,
        "data" => EncodedSlashes::Data,
        other => {
            eprintln!("error: --http-encoded-slashes: `{other}` is not `refuse` or `data`");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let paths = PathOptions { encoded_slashes };
    let policy = match load_policy_file(policy_file) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let defaults;
    let tests = if tests.is_empty() {
        let stem = policy_file.with_extension("");
        defaults = [PathBuf::from(format!("{}.tests.yaml", stem.display()))];
        &defaults[..]
    } else {
        tests
    };
    let mut results = Vec::new();
    for file in tests {
        let outcome = load_test_file(file).and_then(|t| run_file(&policy, &t, paths));
        match outcome {
            Ok(result) => results.push(result),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let mut out = String::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &results {
        for c in &file.cases {
            if c.passed {
                passed += 1;
                if verbose {
                    out.push_str(&format!(
                        "{}:{}: ok: {}\n",
                        file.file, c.case.line, c.case.name
                    ));
                    push_indented(&mut out, &c.explanation.to_string());
                }
                continue;
            }
            failed += 1;
            let why = c.failure.as_deref().unwrap_or("failed");
            out.push_str(&format!(
                "{}:{}: FAIL: {}: {why}\n",
                file.file, c.case.line, c.case.name
            ));
            push_indented(&mut out, &c.explanation.to_string());
        }
    }
    out.push_str(&format!(
        "{passed} passed, {failed} failed ({} file(s))\n",
        results.len()
    ));
    let _ = std::io::stdout().write_all(out.as_bytes());
    if let Some(path) = junit_file {
        if let Err(e) = std::fs::write(path, junit(&results)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn push_indented(out: &mut String, text: &str) {
    for line in text.lines() {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
}

/// `authz-sidecar ctl`: one call to a running sidecar.
fn ctl(args: &authz_sidecar::ctl::CtlArgs) -> ExitCode {
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
    match runtime.block_on(authz_sidecar::ctl::run(args)) {
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
    if let Some(problem) = authz_sidecar::config::admin_token_problem(token.trim()) {
        eprintln!("hash-token: the token {problem}");
        return ExitCode::from(1);
    }
    println!("{}", authz_sidecar::auth::token_sha256_hex(token.trim()));
    ExitCode::SUCCESS
}

fn serve(config: Result<Config, Vec<String>>) -> ExitCode {
    let config = match config {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "authz-sidecar: {} configuration error(s); not starting",
                errors.len()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log = logging::init(config.log_format);
    let runtime = match runtime_with(config.worker_threads) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let stop = shutdown_signal();
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting");
        let sidecar = Sidecar::launch(config).await?;
        sidecar.run_until(stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "authz-sidecar failed");
            // Not `eprintln!`: it panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "authz-sidecar: {e}");
            ExitCode::from(1)
        }
    }
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

/// Listens for SIGTERM (Kubernetes) and SIGINT (Ctrl-C) from the moment it is called; the
/// future completes at the first of them. Called before start-up, so that a SIGTERM right after
/// the "serving" line drains instead of killing the process with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn first(signal: std::io::Result<Signal>) {
        match signal {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without that handler the signal keeps its default action.
            Err(_) => std::future::pending::<()>().await,
        }
    }
    let term = first(signal(SignalKind::terminate()));
    let interrupt = first(signal(SignalKind::interrupt()));
    async move {
        tokio::select! {
            _ = term => {}
            _ = interrupt => {}
        }
        tracing::info!("shutdown signal received; draining");
    }
}
