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
use crate::live::{LivePolicy, ReloadError};
use crate::metrics::Metrics;
use crate::model::file::{PolicyFileError, read_policy_text_max};
use crate::startup::seed_from_text;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

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

/// The health service that reports the policy file: `SERVING` while the file last read was
/// applied (or is the one stored), `NOT_SERVING` while it is refused or unreadable. Alert on
/// it; it never affects readiness or liveness.
pub const POLICY_FILE_SERVICE: &str = "authz.v1.PolicyFile";

/// How the policy file watcher runs.
pub struct WatchOptions {
    /// How often the file is read.
    pub interval: Duration,
    /// Largest file accepted.
    pub max_bytes: u64,
    /// Where [`POLICY_FILE_SERVICE`] is reported.
    pub health: HealthReporter,
    /// The digest of a text already handled (refused at start-up): not reported again.
    pub already_seen: Option<String>,
}

/// Records a refused policy file: counted, every problem logged with its line, and
/// [`POLICY_FILE_SERVICE`] reported `NOT_SERVING`.
pub async fn report_refused(
    file: &std::path::Path,
    message: &str,
    stats: &ReloadStats,
    metrics: &Metrics,
    health: &HealthReporter,
) {
    stats.failed(message.to_owned());
    metrics.reload_error();
    for line in message.lines() {
        tracing::error!(file = %file.display(), problem = %line, "policy file refused; still serving the stored policy");
    }
    health
        .set_service_status(POLICY_FILE_SERVICE, ServingStatus::NotServing)
        .await;
}

/// Polls `path` every `interval` until `stop` flips, re-applying it when its text changes.
pub async fn watch_policy_file(
    live: Arc<LivePolicy>,
    path: PathBuf,
    options: WatchOptions,
    stats: Arc<ReloadStats>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let WatchOptions {
        interval,
        max_bytes,
        health,
        already_seen,
    } = options;
    // The digest of the text last handled (applied, already current, or refused): the same
    // text again is neither parsed nor reported again.
    let mut last_seen: Option<String> = already_seen;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let live = Arc::clone(&live);
        let file = path.clone();
        let seen = last_seen.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Polled {
            let (name, text) = match read_policy_text_max(&file, max_bytes) {
                Ok(read) => read,
                Err(e) => return Polled::Failed(None, e.into()),
            };
            let digest = token_sha256_hex(&text);
            if seen.as_deref() == Some(digest.as_str()) {
                return Polled::Unchanged;
            }
            let result = seed_from_text(&name, &text)
                .map_err(PollError::from)
                .and_then(|seed| Ok(live.reload(&seed.policy, &digest)?));
            match result {
                Ok(revision) => Polled::Handled(digest, revision),
                Err(e) => Polled::Failed(Some(digest), e),
            }
        })
        .await;
        match outcome {
            Ok(Polled::Handled(digest, Some(revision))) => {
                last_seen = Some(digest);
                stats.succeeded();
                metrics.admin_change("reload");
                health
                    .set_service_status(POLICY_FILE_SERVICE, ServingStatus::Serving)
                    .await;
                tracing::info!(revision, file = %path.display(), "policy file changed: reloaded");
            }
            Ok(Polled::Handled(digest, None)) => {
                last_seen = Some(digest);
                health
                    .set_service_status(POLICY_FILE_SERVICE, ServingStatus::Serving)
                    .await;
            }
            Ok(Polled::Unchanged) => {}
            Ok(Polled::Failed(digest, error)) => {
                // An unreadable file is reported on every poll; a bad text once, until it changes.
                report_refused(&path, &error.to_string(), &stats, &metrics, &health).await;
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
    Failed(Option<String>, PollError),
}

/// Why a poll did not apply the file.
#[derive(Debug, thiserror::Error)]
enum PollError {
    /// Unreadable, or not a valid policy.
    #[error(transparent)]
    File(#[from] PolicyFileError),
    /// Valid, but refused by the reload rule or the store.
    #[error(transparent)]
    Reload(#[from] ReloadError),
}
