//! Policy hot reload: the policy file is polled (which also catches the symlink swap Kubernetes
//! does when a ConfigMap changes) and, when its text changed, re-applied under the reload rule
//! ([`crate::live::merge_managed`]). A bad file leaves the current snapshot serving; every
//! problem is logged and counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::token_sha256_hex;
use crate::config::seed_from_text;
use crate::live::LivePolicy;
use crate::metrics::Metrics;
use crate::model::file::read_policy_text;

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
    // The digest of the text last handled (applied, already current, or refused): the same
    // text again is neither parsed nor reported again.
    let mut last_seen: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let live = Arc::clone(&live);
        let file = path.clone();
        let seen = last_seen.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Polled {
            let (name, text) = match read_policy_text(&file) {
                Ok(read) => read,
                Err(e) => return Polled::Failed(None, e.to_string()),
            };
            let digest = token_sha256_hex(&text);
            if seen.as_deref() == Some(digest.as_str()) {
                return Polled::Unchanged;
            }
            let result = seed_from_text(&name, &text)
                .map_err(|e| e.to_string())
                .and_then(|seed| {
                    live.reload(&seed.policy, &digest)
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(revision) => Polled::Handled(digest, revision),
                Err(message) => Polled::Failed(Some(digest), message),
            }
        })
        .await;
        match outcome {
            Ok(Polled::Handled(digest, Some(revision))) => {
                last_seen = Some(digest);
                stats.succeeded();
                metrics.admin_change("reload");
                tracing::info!(revision, file = %path.display(), "policy file changed: reloaded");
            }
            Ok(Polled::Handled(digest, None)) => last_seen = Some(digest),
            Ok(Polled::Unchanged) => {}
            Ok(Polled::Failed(digest, message)) => {
                // An unreadable file is reported on every poll; a bad text once, until it changes.
                stats.failed(message.clone());
                metrics.reload_error();
                for line in message.lines() {
                    tracing::error!(file = %path.display(), problem = %line, "policy reload refused; still serving the previous policy");
                }
                last_seen = digest;
            }
            Err(e) => {
                stats.failed(e.to_string());
                metrics.reload_error();
                tracing::error!(error = %e, "policy reload task failed");
            }
        }
    }
}

/// What one poll of the policy file found.
enum Polled {
    /// Same text as last time.
    Unchanged,
    /// New text, applied (`Some` revision) or already the stored one (`None`).
    Handled(String, Option<u64>),
    /// Unreadable (no digest) or refused.
    Failed(Option<String>, String),
}
