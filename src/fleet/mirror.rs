//! The watch loop that mirrors etcd into the local store, and the staleness reporter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::etcd::pb::mvccpb::event::EventType;
use super::{Entry, EtcdClient, FleetError, FleetStatus, Layout, load_prefix};
use crate::live::MirrorSink;
use crate::metrics::Metrics;
use crate::store::MirrorBatch;

/// Follows the etcd prefix and applies every revision to a [`LivePolicy`].
pub struct Mirror {
    /// etcd.
    pub client: EtcdClient,
    /// Key layout.
    pub layout: Layout,
    /// The live policy it feeds.
    pub sink: MirrorSink,
    /// Connection state, for staleness.
    pub status: Arc<FleetStatus>,
    /// Mirror counters.
    pub metrics: Arc<Metrics>,
}

/// How a watch session ended.
enum Ended {
    /// The next session must reload the prefix first.
    Reload,
}

impl Mirror {
    /// Runs until `stop` flips: watch, apply, and on any break retry with backoff from the
    /// last applied revision (or reload the prefix after a compaction).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut reload = false;
        let mut delay = Duration::from_millis(100);
        loop {
            if *stop.borrow() {
                return;
            }
            let session = tokio::select! {
                result = self.session(reload) => result,
                _ = stop.wait_for(|s| *s) => return,
            };
            match session {
                Ok(Ended::Reload) => {
                    reload = true;
                    delay = Duration::from_millis(100);
                    continue;
                }
                Err((e, needs_reload)) => {
                    reload |= needs_reload;
                    self.status.set_disconnected();
                    self.metrics.fleet_watch_error();
                    tracing::warn!(
                        error = %e,
                        revision = self.sink.revision(),
                        lag_seconds = self.status.staleness().as_secs_f64(),
                        "fleet: etcd watch interrupted; serving the last mirrored policy and retrying"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    async fn reload(&self) -> Result<(), FleetError> {
        let (policy, revision, origin) = load_prefix(&self.client, &self.layout).await?;
        let sink = self.sink.clone();
        tokio::task::spawn_blocking(move || sink.replace(&policy, revision, &origin)).await??;
        self.metrics.fleet_reload();
        tracing::info!(revision, "fleet: reloaded the whole policy from etcd");
        Ok(())
    }

    async fn session(&self, reload: bool) -> Result<Ended, (FleetError, bool)> {
        if reload {
            self.reload().await.map_err(|e| (e, true))?;
        }
        let start = self.sink.revision() + 1;
        let (_requests, mut stream) = self
            .client
            .watch_prefix(self.layout.prefix().as_bytes(), start)
            .await
            .map_err(|e| (e, false))?;
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return Err((FleetError::WatchEnded, false));
                }
                Err(status) => return Err((FleetError::from_status(status), false)),
            };
            if response.compact_revision > 0 {
                tracing::warn!(
                    from = start,
                    compacted_to = response.compact_revision,
                    "fleet: the revisions to resume from were compacted away; reloading the prefix"
                );
                return Ok(Ended::Reload);
            }
            if response.canceled {
                return Err((FleetError::WatchCanceled(response.cancel_reason), false));
            }
            if response.created {
                let cluster_id = response.header.as_ref().map_or(0, |h| h.cluster_id);
                let origin = self.sink.origin().ok().flatten();
                if origin.is_some_and(|o| o.cluster_id != 0 && o.cluster_id != cluster_id) {
                    tracing::warn!(
                        cluster_id,
                        "fleet: etcd is another cluster than the mirrored one; reloading"
                    );
                    return Ok(Ended::Reload);
                }
                self.status.set_connected();
                tracing::info!(from = start, "fleet: watching etcd");
                continue;
            }
            self.status.set_connected();
            if let Err(e) = self.apply(response.events).await {
                tracing::error!(error = %e, "fleet: a mirrored change could not be applied; reloading the prefix");
                return Err((e, true));
            }
        }
    }

    /// Groups events by revision (one etcd transaction) and applies each group as a unit.
    async fn apply(&self, events: Vec<super::etcd::pb::mvccpb::Event>) -> Result<(), FleetError> {
        let mut batch: Option<MirrorBatch> = None;
        let mut batches = Vec::new();
        for event in events {
            let Some(kv) = event.kv else { continue };
            let revision = kv.mod_revision.max(0) as u64;
            if batch.as_ref().is_some_and(|b| b.revision != revision) {
                batches.extend(batch.take());
            }
            let current = batch.get_or_insert_with(|| MirrorBatch {
                revision,
                changes: Vec::new(),
                actor: "etcd".into(),
                action: "mirror".into(),
            });
            let deleted = event.r#type == EventType::Delete as i32;
            match self
                .layout
                .decode(&kv.key, (!deleted).then_some(kv.value.as_slice()))?
            {
                Entry::Entity(change) => current.changes.push(change),
                Entry::Audit(note) => {
                    current.actor = note.actor;
                    current.action = note.action;
                }
                Entry::Unknown => {}
            }
        }
        batches.extend(batch);
        for batch in batches {
            let events = batch.changes.len() as u64;
            let started = Instant::now();
            let sink = self.sink.clone();
            let applied = tokio::task::spawn_blocking(move || sink.apply(&batch)).await??;
            if applied {
                self.metrics.fleet_applied(events, started.elapsed());
            }
        }
        Ok(())
    }
}

/// Every 250 ms: publishes the staleness gauge, logs the lag while etcd is unreachable, and
/// with `max_staleness` reports NOT_SERVING once the mirror is staler than that.
pub async fn watch_staleness(
    status: Arc<FleetStatus>,
    metrics: Arc<Metrics>,
    health: HealthReporter,
    services: &'static [&'static str],
    max_staleness: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = true;
    let mut last_log = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let staleness = status.staleness();
        metrics.fleet_state(status.connected(), staleness);
        if !status.connected() && last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            tracing::warn!(
                lag_seconds = staleness.as_secs_f64(),
                "fleet: etcd unreachable; serving the last mirrored policy"
            );
        }
        let Some(max) = max_staleness else { continue };
        let fresh = staleness <= max;
        if fresh != serving && !*stop.borrow() {
            serving = fresh;
            let state = if fresh {
                ServingStatus::Serving
            } else {
                tracing::error!(
                    lag_seconds = staleness.as_secs_f64(),
                    max_seconds = max.as_secs_f64(),
                    "fleet: mirror staler than --max-staleness; reporting NOT_SERVING"
                );
                ServingStatus::NotServing
            };
            for service in services {
                health.set_service_status(*service, state).await;
            }
        }
    }
}
