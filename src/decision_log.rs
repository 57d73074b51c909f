//! An optional, sampled decision log: structured events (JSON with `--log-format json`) on the
//! `authz::decision` tracing target. A Check never waits for it: entries go through a bounded
//! queue to a writer task, and when the writer falls behind they are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Entries waiting for the writer before new ones are dropped.
pub const QUEUE: usize = 4096;

/// One logged decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionEntry {
    /// Subject id.
    pub subject: String,
    /// `permission`, `http`, `event` or `envoy`.
    pub kind: &'static str,
    /// The permission, `METHOD path`, or event.
    pub action: String,
    /// The decision.
    pub allowed: bool,
    /// Its reason.
    pub reason: String,
    /// Policy revision used.
    pub revision: u64,
}

/// The sampler and the queue's sending end.
pub struct DecisionLog {
    every: u64,
    seen: AtomicU64,
    queue: mpsc::Sender<DecisionEntry>,
    metrics: Arc<Metrics>,
}

impl DecisionLog {
    /// Logs one decision in `every` (1 = all) through a queue of `capacity`; returns the log and
    /// the receiving end for [`write_decisions`].
    pub fn new(
        every: u64,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> (DecisionLog, mpsc::Receiver<DecisionEntry>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let log = DecisionLog {
            every: every.max(1),
            seen: AtomicU64::new(0),
            queue,
            metrics,
        };
        (log, rx)
    }

    /// Whether the next decision is sampled. One atomic add; call before building an entry.
    #[inline]
    pub fn sample(&self) -> bool {
        self.seen.fetch_add(1, Ordering::Relaxed) % self.every == 0
    }

    /// Queues an entry without waiting; a full queue drops it and counts the drop.
    pub fn record(&self, entry: DecisionEntry) {
        if self.queue.try_send(entry).is_err() {
            self.metrics.decision_log_dropped();
        }
    }
}

/// Writes queued entries as `authz::decision` events until every sender is gone.
pub async fn write_decisions(mut rx: mpsc::Receiver<DecisionEntry>) {
    while let Some(e) = rx.recv().await {
        tracing::info!(
            target: "authz::decision",
            subject = %e.subject,
            kind = e.kind,
            action = %e.action,
            allowed = e.allowed,
            reason = %e.reason,
            revision = e.revision,
            "decision"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> DecisionEntry {
        DecisionEntry {
            subject: format!("s{n}"),
            kind: "permission",
            action: "p".into(),
            allowed: true,
            reason: "r".into(),
            revision: n,
        }
    }

    #[test]
    fn samples_one_in_n_and_drops_instead_of_blocking() {
        let metrics = Arc::new(Metrics::new());
        let (log, mut rx) = DecisionLog::new(3, 2, Arc::clone(&metrics));
        let sampled: Vec<bool> = (0..6).map(|_| log.sample()).collect();
        assert_eq!(sampled, vec![true, false, false, true, false, false]);
        for n in 0..5 {
            log.record(entry(n));
        }
        assert_eq!(rx.try_recv().expect("first").revision, 0);
        assert_eq!(rx.try_recv().expect("second").revision, 1);
        assert!(rx.try_recv().is_err(), "the rest were dropped");
        let text = metrics.render(None);
        assert!(
            text.contains("authz_decision_log_dropped_total 3"),
            "{text}"
        );
    }
}
