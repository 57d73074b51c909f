//! Policy hot reload: the policy file is polled (which also catches the symlink swap Kubernetes
//! does when a ConfigMap changes) and, when its text changed, re-applied under the reload rule
//! ([`crate::live::merge_managed`]). A bad file leaves the current snapshot serving; every
//! problem is logged and counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::read_seed;
use crate::live::LivePolicy;
use crate::metrics::Metrics;

/// What the watcher has seen; read by metrics and tests.
#[derive(Debug, Default)]
pub struct ReloadStats {
    reloads: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ReloadStats {
    /// Successful reloads since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Failed reload attempts since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The last failure, cleared by the next success.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    fn failed(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(message);
        }
    }

    fn succeeded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
    }
}

/// Polls `path` every `interval` until `stop` flips, re-applying it when its text changes.
pub async fn watch_policy_file(
    live: Arc<LivePolicy>,
    path: PathBuf,
    interval: Duration,
    stats: Arc<ReloadStats>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_failed_digest: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let live = Arc::clone(&live);
        let file = path.clone();
        let skip = last_failed_digest.clone();
        let outcome = tokio::task::spawn_blocking(
            move || -> Result<Option<u64>, (Option<String>, String)> {
                let seed = read_seed(&file).map_err(|e| {
                    let digest = std::fs::read_to_string(&file)
                        .ok()
                        .map(|t| crate::auth::token_sha256_hex(&t));
                    (digest, e.to_string())
                })?;
                if skip.as_deref() == Some(seed.digest.as_str()) {
                    return Ok(None);
                }
                live.reload(&seed.policy, &seed.digest)
                    .map_err(|e| (Some(seed.digest.clone()), e.to_string()))
            },
        )
        .await;
        match outcome {
            Ok(Ok(Some(revision))) => {
                last_failed_digest = None;
                stats.succeeded();
                metrics.admin_change("reload");
                tracing::info!(revision, file = %path.display(), "policy file changed: reloaded");
            }
            Ok(Ok(None)) => {}
            Ok(Err((digest, message))) => {
                // Report a bad file once, not on every poll, until its text changes again.
                if digest.is_none() || digest != last_failed_digest {
                    stats.failed(message.clone());
                    metrics.reload_error();
                    for line in message.lines() {
                        tracing::error!(file = %path.display(), problem = %line, "policy reload refused; still serving the previous policy");
                    }
                }
                last_failed_digest = digest;
            }
            Err(e) => {
                stats.failed(e.to_string());
                metrics.reload_error();
                tracing::error!(error = %e, "policy reload task failed");
            }
        }
    }
}
