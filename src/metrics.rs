//! Prometheus metrics on a separate HTTP port (`--metrics-addr`).
//!
//! Every handle the request paths touch is resolved once at start-up (no label lookups, no
//! registry locks while serving): recording a decision is a few atomic adds.
//!
//! What a scrape reads from elsewhere is handed in by the server, not looked up here: the
//! served snapshot as a [`Served`] value (through a closure) and the connection pools as
//! [`ConnectionSource`]s. So this module sits below the services and listeners it reports on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::sync::watch;

/// The served snapshot, as the `authz_policy_revision`, `authz_subjects` and
/// `authz_snapshot_age_seconds` gauges show it.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    /// Revision of the snapshot.
    pub revision: u64,
    /// Subjects in it.
    pub subjects: usize,
    /// When it was published.
    pub published_at: SystemTime,
}

/// A listener pool's connection counts: open now, and the totals closed or refused so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionCounts {
    /// Connections open.
    pub open: usize,
    /// Closed as the longest idle, to admit a new one or free a descriptor.
    pub evicted: u64,
    /// Refused: the pool was full of busy connections.
    pub refused: u64,
    /// Closed for not finishing the handshake in time.
    pub handshake_timeouts: u64,
    /// Closed after the idle timeout.
    pub idle_closed: u64,
    /// Accept errors that made the listener back off.
    pub accept_errors: u64,
}

/// Connections the metrics follow at each scrape (a listener's pool).
pub trait ConnectionSource: Send + Sync {
    /// The `listener` label.
    fn name(&self) -> &'static str;
    /// The counts now.
    fn counts(&self) -> ConnectionCounts;
}

/// Check latency buckets, in seconds: decisions take microseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.01,
    0.1,
];

/// Kinds of decisions, as the `action` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// A permission Check.
    Permission = 0,
    /// An HTTP Check.
    Http = 1,
    /// An event Check.
    Event = 2,
    /// An Envoy ext_authz Check.
    Envoy = 3,
}

const ACTIONS: [&str; 4] = ["permission", "http", "event", "envoy"];

/// Admin changes, as the `action` label.
pub const ADMIN_ACTIONS: [&str; 5] = [
    "update_permission",
    "approve_pending",
    "put_subject",
    "delete_subject",
    "reload",
];

/// All metrics of one sidecar.
pub struct Metrics {
    registry: Registry,
    decisions: [[IntCounter; 2]; 4],
    latency: [Histogram; 4],
    admin_changes: [IntCounter; 5],
    admin_refused: IntCounter,
    shadow_denials: IntCounter,
    reload_errors: IntCounter,
    decision_log_dropped: IntCounter,
    /// Follows [`crate::logging::dropped_lines`] at each render (the lock keeps two
    /// concurrent scrapes from adding the same drops twice).
    log_lines_dropped: Mutex<IntCounter>,
    revision: IntGauge,
    snapshot_age: Gauge,
    subjects: IntGauge,
    fleet: FleetMetrics,
    xds: XdsMetrics,
    connections: ConnectionMetrics,
}

/// The connection pools (`server::connections`): read from their counters at each render.
struct ConnectionMetrics {
    open: IntGaugeVec,
    closed: IntCounterVec,
    accept_errors: IntCounterVec,
    /// The pools followed, set once at start-up (the lock also keeps two concurrent scrapes
    /// from adding the same closes twice).
    pools: Mutex<Vec<Box<dyn ConnectionSource>>>,
}

/// Why a connection was closed by the limits, as `authz_connections_closed_total{reason}`.
const CLOSE_REASONS: [&str; 4] = ["evicted", "refused", "handshake_timeout", "idle"];

/// The xDS (ECDS) server for Envoy's RBAC filter.
struct XdsMetrics {
    pushes: IntCounter,
    acks: IntCounter,
    nacks: IntCounter,
    acked_revision: IntGauge,
    subjects: IntGauge,
}

/// Fleet mode: the mirror's lag and cost.
struct FleetMetrics {
    staleness: Gauge,
    connected: IntGauge,
    revisions: IntCounter,
    events: IntCounter,
    reloads: IntCounter,
    watch_errors: IntCounter,
    apply: Histogram,
}

/// Mirror apply buckets, in seconds (one sled transaction with fsync, plus a recompile).
const APPLY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

fn must<T>(result: prometheus::Result<T>) -> T {
    // PANIC SAFETY: metric names and labels below are static and valid, and each is
    // registered once; prometheus only errors on invalid or duplicate descriptors.
    #[allow(clippy::expect_used)]
    result.expect("static metric definitions are valid")
}

impl Metrics {
    /// Creates and registers every metric of embedded mode (no `authz_fleet_*`).
    pub fn new() -> Metrics {
        Metrics::for_mode(false)
    }

    /// Creates and registers every metric; the `authz_fleet_*` ones only in fleet mode, so that
    /// an embedded sidecar does not export `authz_fleet_connected 0` for alerts to trip on.
    pub fn for_mode(fleet_mode: bool) -> Metrics {
        let registry = Registry::new();
        let decisions_vec = must(IntCounterVec::new(
            Opts::new(
                "authz_decisions_total",
                "Check decisions by action kind and result",
            ),
            &["action", "result"],
        ));
        must(registry.register(Box::new(decisions_vec.clone())));
        let decisions = ACTIONS.map(|action| {
            [
                decisions_vec.with_label_values(&[action, "deny"]),
                decisions_vec.with_label_values(&[action, "allow"]),
            ]
        });
        let latency = ACTIONS.map(|action| {
            let h = must(Histogram::with_opts(
                HistogramOpts::new(
                    "authz_check_duration_seconds",
                    "Time to decide one Check, in the handler",
                )
                .const_label("action", action)
                .buckets(LATENCY_BUCKETS.to_vec()),
            ));
            must(registry.register(Box::new(h.clone())));
            h
        });
        let admin_vec = must(IntCounterVec::new(
            Opts::new(
                "authz_admin_changes_total",
                "Committed policy changes by kind",
            ),
            &["action"],
        ));
        must(registry.register(Box::new(admin_vec.clone())));
        let admin_changes = ADMIN_ACTIONS.map(|a| admin_vec.with_label_values(&[a]));
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let admin_refused = counter(
            "authz_admin_refused_total",
            "Admin calls refused for a missing or insufficient credential",
        );
        let shadow_denials = counter(
            "authz_envoy_shadow_denials_total",
            "ext_authz requests shadow mode let through that enforce mode would deny",
        );
        let reload_errors = counter(
            "authz_policy_reload_errors_total",
            "Policy file reloads refused (bad file or store error)",
        );
        let decision_log_dropped = counter(
            "authz_decision_log_dropped_total",
            "Decision log entries dropped because the writer fell behind",
        );
        let log_lines_dropped = Mutex::new(counter(
            "authz_log_lines_dropped_total",
            "Log lines dropped because stderr was not being read fast enough",
        ));
        let connections = ConnectionMetrics {
            open: must(IntGaugeVec::new(
                Opts::new(
                    "authz_connections_open",
                    "Connections open, by listener pool (api, health, metrics)",
                ),
                &["listener"],
            )),
            closed: must(IntCounterVec::new(
                Opts::new(
                    "authz_connections_closed_total",
                    "Connections the limits closed: evicted (idle longest, to admit a new one or \
                     free a descriptor), refused (pool full of busy connections), \
                     handshake_timeout, idle",
                ),
                &["listener", "reason"],
            )),
            accept_errors: must(IntCounterVec::new(
                Opts::new(
                    "authz_accept_errors_total",
                    "Accept errors that made a listener back off (EMFILE, ENFILE, ...)",
                ),
                &["listener"],
            )),
            pools: Mutex::new(Vec::new()),
        };
        must(registry.register(Box::new(connections.open.clone())));
        must(registry.register(Box::new(connections.closed.clone())));
        must(registry.register(Box::new(connections.accept_errors.clone())));
        let revision = must(IntGauge::new(
            "authz_policy_revision",
            "Revision of the snapshot being served",
        ));
        must(registry.register(Box::new(revision.clone())));
        let snapshot_age = must(Gauge::new(
            "authz_snapshot_age_seconds",
            "Seconds since the served snapshot was published",
        ));
        must(registry.register(Box::new(snapshot_age.clone())));
        let subjects = must(IntGauge::new(
            "authz_subjects",
            "Subjects in the served snapshot",
        ));
        must(registry.register(Box::new(subjects.clone())));
        // Fleet metrics exist in both modes (the mirror code records them) but are exported
        // only in fleet mode.
        let export = |metric: Box<dyn prometheus::core::Collector>| {
            if fleet_mode {
                must(registry.register(metric));
            }
        };
        let gauge = |name: &str, help: &str| {
            let g = must(Gauge::new(name, help));
            export(Box::new(g.clone()));
            g
        };
        let fleet_counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            export(Box::new(c.clone()));
            c
        };
        let fleet_connected = must(IntGauge::new(
            "authz_fleet_connected",
            "Fleet mode: 1 while the etcd watch is established",
        ));
        export(Box::new(fleet_connected.clone()));
        let fleet_apply = must(Histogram::with_opts(
            HistogramOpts::new(
                "authz_fleet_mirror_apply_seconds",
                "Fleet mode: time to apply one mirrored etcd revision (sled commit and recompile)",
            )
            .buckets(APPLY_BUCKETS.to_vec()),
        ));
        export(Box::new(fleet_apply.clone()));
        let fleet = FleetMetrics {
            staleness: gauge(
                "authz_fleet_staleness_seconds",
                "Fleet mode: how long the local mirror may have missed etcd changes (0 while watching)",
            ),
            connected: fleet_connected,
            revisions: fleet_counter(
                "authz_fleet_mirrored_revisions_total",
                "Fleet mode: etcd revisions applied to the local mirror",
            ),
            events: fleet_counter(
                "authz_fleet_mirrored_changes_total",
                "Fleet mode: entity changes applied to the local mirror",
            ),
            reloads: fleet_counter(
                "authz_fleet_reloads_total",
                "Fleet mode: full reloads of the etcd prefix (after a compaction or a failed apply)",
            ),
            watch_errors: fleet_counter(
                "authz_fleet_watch_errors_total",
                "Fleet mode: etcd watch interruptions",
            ),
            apply: fleet_apply,
        };
        let int_gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let xds = XdsMetrics {
            pushes: counter(
                "authz_envoy_xds_pushes_total",
                "RBAC filter configs pushed to Envoy over xDS",
            ),
            acks: counter(
                "authz_envoy_xds_acks_total",
                "RBAC filter configs Envoy accepted",
            ),
            nacks: counter(
                "authz_envoy_xds_nacks_total",
                "RBAC filter configs Envoy rejected (it keeps its last good one)",
            ),
            acked_revision: int_gauge(
                "authz_envoy_xds_acked_revision",
                "Policy revision Envoy's RBAC filters decide at (its class config accepted)",
            ),
            subjects: int_gauge(
                "authz_envoy_xds_subjects",
                "Subjects compiled into the last RBAC config pushed",
            ),
        };
        #[cfg(target_os = "linux")]
        must(registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        Metrics {
            registry,
            decisions,
            latency,
            admin_changes,
            admin_refused,
            shadow_denials,
            reload_errors,
            decision_log_dropped,
            log_lines_dropped,
            revision,
            snapshot_age,
            subjects,
            fleet,
            xds,
            connections,
        }
    }

    /// Follows the counters of these connection pools at each render.
    pub fn follow_connections(&self, pools: impl IntoIterator<Item = Box<dyn ConnectionSource>>) {
        let mut followed = self
            .connections
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        followed.extend(pools);
    }

    /// Brings the connection gauges and counters up to the pools' own.
    fn follow_pools(&self) {
        let pools = self
            .connections
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let follow = |counter: IntCounter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        for pool in pools.iter() {
            let name = pool.name();
            let counts = pool.counts();
            self.connections
                .open
                .with_label_values(&[name])
                .set(i64::try_from(counts.open).unwrap_or(i64::MAX));
            let totals = [
                counts.evicted,
                counts.refused,
                counts.handshake_timeouts,
                counts.idle_closed,
            ];
            for (reason, total) in CLOSE_REASONS.iter().zip(totals) {
                follow(
                    self.connections.closed.with_label_values(&[name, reason]),
                    total,
                );
            }
            follow(
                self.connections.accept_errors.with_label_values(&[name]),
                counts.accept_errors,
            );
        }
    }

    /// xDS: one RBAC config pushed with `subjects` subjects compiled.
    pub fn xds_pushed(&self, subjects: usize) {
        self.xds.pushes.inc();
        self.xds.subjects.set(subjects as i64);
    }

    /// xDS: Envoy accepted a config.
    pub fn xds_acked(&self) {
        self.xds.acks.inc();
    }

    /// xDS: Envoy accepted every config of `revision` (its class config and the subject map
    /// that goes with it): its RBAC filters decide at that revision.
    pub fn xds_enforced(&self, revision: u64) {
        self.xds.acked_revision.set(revision as i64);
    }

    /// xDS: Envoy rejected a config.
    pub fn xds_nacked(&self) {
        self.xds.nacks.inc();
    }

    /// Fleet mode: one mirrored revision with `changes` entity changes, applied in `took`.
    pub fn fleet_applied(&self, changes: u64, took: Duration) {
        self.fleet.revisions.inc();
        self.fleet.events.inc_by(changes);
        self.fleet.apply.observe(took.as_secs_f64());
    }

    /// Fleet mode: a full reload of the prefix.
    pub fn fleet_reload(&self) {
        self.fleet.reloads.inc();
    }

    /// Fleet mode: a watch interruption.
    pub fn fleet_watch_error(&self) {
        self.fleet.watch_errors.inc();
    }

    /// Fleet mode: connection state and staleness.
    pub fn fleet_state(&self, connected: bool, staleness: Duration) {
        self.fleet.connected.set(i64::from(connected));
        self.fleet.staleness.set(staleness.as_secs_f64());
    }

    /// Fleet mode: the current staleness gauge, in seconds (tests).
    pub fn fleet_staleness_seconds(&self) -> f64 {
        self.fleet.staleness.get()
    }

    /// Fleet mode: mirrored revisions, reloads and watch errors so far (tests, benches).
    pub fn fleet_counts(&self) -> (u64, u64, u64) {
        (
            self.fleet.revisions.get(),
            self.fleet.reloads.get(),
            self.fleet.watch_errors.get(),
        )
    }

    /// Fleet mode: (count, sum in seconds) of mirrored-revision apply times.
    pub fn fleet_apply_time(&self) -> (u64, f64) {
        (
            self.fleet.apply.get_sample_count(),
            self.fleet.apply.get_sample_sum(),
        )
    }

    /// Records one decision and how long it took.
    #[inline]
    pub fn decision(&self, kind: ActionKind, allowed: bool, started: Instant) {
        let k = kind as usize;
        self.decisions[k][usize::from(allowed)].inc();
        self.latency[k].observe(started.elapsed().as_secs_f64());
    }

    /// Records one decision of a CheckBatch item: counted like a Check, without a latency
    /// observation (the batch is one call; its items have no latency of their own).
    pub fn batch_decision(&self, kind: ActionKind, allowed: bool) {
        self.decisions[kind as usize][usize::from(allowed)].inc();
    }

    /// Decisions recorded so far for a kind and result (for tests and the load tool).
    pub fn decisions(&self, kind: ActionKind, allowed: bool) -> u64 {
        self.decisions[kind as usize][usize::from(allowed)].get()
    }

    /// Records a committed admin change (`action` one of [`ADMIN_ACTIONS`]).
    pub fn admin_change(&self, action: &str) {
        if let Some(i) = ADMIN_ACTIONS.iter().position(|a| *a == action) {
            self.admin_changes[i].inc();
        }
    }

    /// Records a refused admin call.
    pub fn admin_refused(&self) {
        self.admin_refused.inc();
    }

    /// Admin calls refused so far (tests).
    pub fn admin_refused_count(&self) -> u64 {
        self.admin_refused.get()
    }

    /// Records a would-be denial let through in shadow mode.
    pub fn shadow_denial(&self) {
        self.shadow_denials.inc();
    }

    /// Records a refused policy reload.
    pub fn reload_error(&self) {
        self.reload_errors.inc();
    }

    /// Records a dropped decision-log entry.
    pub fn decision_log_dropped(&self) {
        self.decision_log_dropped.inc();
    }

    /// Brings the dropped-log-lines counter up to `total`.
    fn follow_log_drops(&self, total: u64) {
        let counter = self
            .log_lines_dropped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// The text exposition, with the snapshot gauges brought up to `served` first (`None`
    /// while the policy is still loading: the gauges stay as they are).
    pub fn render(&self, served: Option<Served>) -> String {
        if let Some(served) = served {
            self.revision.set(served.revision as i64);
            self.subjects.set(served.subjects as i64);
            let age = SystemTime::now()
                .duration_since(served.published_at)
                .unwrap_or(Duration::ZERO);
            self.snapshot_age.set(age.as_secs_f64());
        }
        self.follow_log_drops(crate::logging::dropped_lines());
        self.follow_pools();
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Reads the served snapshot at each scrape (`None` while the policy is still loading).
pub type ServedSource = Arc<dyn Fn() -> Option<Served> + Send + Sync>;

/// Serves `GET /metrics` on the connections of `incoming` until `stop` flips; each scrape
/// reads the snapshot gauges from `served`.
pub async fn serve_metrics<S, IO>(
    incoming: S,
    metrics: Arc<Metrics>,
    served: ServedSource,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio_stream::Stream<Item = std::io::Result<IO>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_stream::StreamExt as _;
    let mut incoming = std::pin::pin!(incoming);
    loop {
        // The incoming stream handles accept errors itself (back-off, connection limits).
        let stream = tokio::select! {
            accepted = incoming.next() => match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    continue;
                }
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let metrics = Arc::clone(&metrics);
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                let served = Arc::clone(&served);
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics, &*served)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    served: &(dyn Fn() -> Option<Served> + Send + Sync),
) -> Response<Full<Bytes>> {
    let mut response = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from(metrics.render(served()))));
        if let Ok(v) = "text/plain; version=0.0.4".parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    } else {
        Response::new(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
    };
    if !(req.method() == Method::GET && req.uri().path() == "/metrics") {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped_lines_in(metrics: &Metrics) -> String {
        let text = metrics.render(None);
        text.lines()
            .find(|l| l.starts_with("authz_log_lines_dropped_total "))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn log_drops_are_followed_not_added_up() {
        let metrics = Metrics::new();
        metrics.follow_log_drops(3);
        metrics.follow_log_drops(3);
        metrics.follow_log_drops(7);
        // Rendering follows the process-wide count (0 here: no log writer in unit tests),
        // which never takes the counter backwards.
        assert_eq!(
            dropped_lines_in(&metrics),
            "authz_log_lines_dropped_total 7"
        );
    }
}
