//! The serving mode: settings, start-up, then the sidecar until SIGTERM or SIGINT.

use std::io::Write;
use std::process::ExitCode;

use super::{EXIT_CONFIG, runtime_with};
use crate::config::{ServeArgs, Strings};
use crate::logging;
use crate::server::Sidecar;
use crate::startup;

/// Serves as `args` and `env` say; exit 2 (every problem listed) when they do not hold.
pub(super) fn serve(args: &ServeArgs, env: &dyn Strings) -> ExitCode {
    let mut errors = Vec::new();
    let settings = args.settings(env, &mut errors);
    let config = match startup::load(settings, &mut errors) {
        Some(config) => config,
        None => {
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
    let _log = logging::init(config.log.format);
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
