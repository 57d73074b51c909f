//! Listeners, the gRPC services on them, start-up order and graceful shutdown.
//!
//! Start-up: open the store (refusing a locked or foreign data dir), bind the listeners, serve
//! health as NOT_SERVING, load and compile the policy, then flip to SERVING. Shutdown: report
//! NOT_SERVING, stop accepting, drain in-flight calls, flush the store.
//!
//! Every listener accepts through [`connections::Incoming`]: the API listeners share one pool
//! of `--max-connections`, the health and metrics listeners have small pools of their own, so
//! that a flood of API connections never fails a kubelet probe.

pub mod connections;
pub mod health;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Server;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::http_json::GatedService;
use crate::api::pb::authz_server::AuthzServer;
use crate::api::{
    AdminGate, AppState, AuthorizationServer, AuthzService, EnvoyAuthzService, MAX_MESSAGE_BYTES,
    pb,
};
use crate::config::{AdminExposure, EnvoyMode};
use crate::decision_log::{DecisionLog, QUEUE as DECISION_QUEUE, write_decisions};
use crate::fleet::{self, EtcdClient, FleetError, FleetStatus, Mirror, watch_staleness};
use crate::live::{LivePolicy, OpenError, Opened, Seed};
use crate::metrics::{ConnectionSource, Metrics, serve_metrics};
use crate::model::file::{PolicyFileError, read_policy_text_max};
use crate::reload::{
    POLICY_FILE_SERVICE, ReloadStats, WatchOptions, report_refused, watch_policy_file,
};
use crate::startup::Config;
use crate::store::{SledStore, Store, StoreError};
use connections::{ActivityLayer, FdLimit, Handshake, Incoming, Pool, PoolLimits};
pub use health::LIVENESS_SERVICE;

/// Why the sidecar could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data dir could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The stored policy could not be loaded.
    #[error("{0}")]
    Load(#[from] OpenError),
    /// A listener could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// Address or socket path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A start-up task ended without an answer (it panicked or was cancelled).
    #[error("start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Fleet mode: etcd or the mirrored policy failed.
    #[error("fleet: {0}")]
    Fleet(#[from] FleetError),
    /// The data dir is empty and the policy file is refused: there is nothing to serve.
    #[error("the data dir holds no policy and the policy file is refused:\n{0:#}")]
    PolicyFile(PolicyFileError),
    /// Something other than a stale socket is at the `--uds` path.
    #[error("--uds {path}: {reason}; not removing it")]
    UdsInUse {
        /// The socket path.
        path: String,
        /// What is there.
        reason: String,
    },
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The HTTP/JSON listener could not be set up.
    #[error("{0}")]
    HttpJson(#[from] crate::api::http_json::HttpJsonError),
}

/// Binds a TCP listener when an address is configured.
async fn bind_tcp(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, ServerError> {
    match addr {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| ServerError::Bind {
                what: addr.to_string(),
                source,
            }),
        None => Ok(None),
    }
}

/// Remotely reset streams that may wait to be accepted on one connection before it is closed.
pub const PENDING_ACCEPT_RESET_STREAMS: usize = 1024;
/// Streams the server may reset on its own (refused, malformed) on one connection before it is
/// closed; h2's default, which tonic otherwise turns off.
pub const LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// HTTP/2 PING interval on an otherwise quiet connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the health-only listener may hold, apart from the API's pool: probes keep
/// working while a flood fills that.
pub const HEALTH_CONNECTIONS: usize = 32;
/// Connections the metrics endpoint may hold, apart from the API's pool.
pub const METRICS_CONNECTIONS: usize = 16;
/// File descriptors kept for everything but connections (the store, policy file reads,
/// listeners, the runtime) when the open-files limit caps `--max-connections`.
pub const RESERVED_FDS: u64 = 64;

/// The API pool's size: `--max-connections`, lowered so that the API, health and metrics
/// pools and [`RESERVED_FDS`] fit in the open-files limit (at least 16).
pub fn api_connection_cap(max_connections: usize, fds: FdLimit) -> usize {
    let Some(soft) = fds.soft else {
        return max_connections;
    };
    let others = RESERVED_FDS + (HEALTH_CONNECTIONS + METRICS_CONNECTIONS) as u64;
    let room = usize::try_from(soft.saturating_sub(others)).unwrap_or(usize::MAX);
    max_connections.min(room.max(16))
}

/// Device and inode of the file at `path`.
fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Removes a stale Unix socket at `path` (nobody accepts on it); refuses a live socket, a
/// regular file, a directory or anything else.
fn clear_stale_socket(path: &std::path::Path) -> Result<(), ServerError> {
    use std::os::unix::fs::FileTypeExt;
    let refuse = |reason: String| ServerError::UdsInUse {
        path: path.display().to_string(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(format!("cannot inspect it: {e}"))),
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(refuse("it is a directory".into()));
    }
    if kind.is_file() {
        return Err(refuse("it is a regular file, not a socket".into()));
    }
    if !kind.is_socket() {
        return Err(refuse("it is not a socket".into()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(refuse(
            "it is a live socket: another process accepts connections on it".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale socket left by an earlier run");
            std::fs::remove_file(path).map_err(|e| refuse(format!("cannot remove it: {e}")))
        }
        Err(e) => Err(refuse(format!("cannot tell whether it is in use: {e}"))),
    }
}

/// A running sidecar.
pub struct Sidecar {
    tcp_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    xds_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    uds_path: Option<PathBuf>,
    uds_identity: Option<(u64, u64)>,
    revision: u64,
    shutdown: watch::Sender<bool>,
    servers: JoinSet<Result<(), tonic::transport::Error>>,
    shutdown_grace: Duration,
    health: HealthReporter,
    reload_stats: Arc<ReloadStats>,
    api_connections: Pool,
    health_connections: Pool,
}

/// The server builder with the layers every API listener shares.
type Layered = Server<tower::layer::util::Stack<ActivityLayer, tower::layer::util::Identity>>;

impl Sidecar {
    /// Starts a sidecar as configured and returns once it serves the loaded policy.
    pub async fn launch(mut config: Config) -> Result<Sidecar, ServerError> {
        // Moved out, not cloned: a 1 MiB policy file is ~27k subjects, and seeding within the
        // pod's memory limit leaves no room for a second copy.
        let seed = std::mem::replace(&mut config.seed, Seed::empty());
        let data_dir = config.store.data_dir.clone();
        let store =
            Arc::new(tokio::task::spawn_blocking(move || SledStore::open(&data_dir)).await??);

        let tcp = bind_tcp(config.listeners.listen).await?;
        let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let health_tcp = bind_tcp(config.listeners.health_listen).await?;
        let health_addr = health_tcp.as_ref().and_then(|l| l.local_addr().ok());
        let admin_tcp = bind_tcp(config.admin_listen).await?;
        let admin_addr = admin_tcp.as_ref().and_then(|l| l.local_addr().ok());
        let mut uds_identity = None;
        let uds = match &config.listeners.uds {
            Some(path) => {
                // Only a stale socket (left by a run that ended) is removed; anything else
                // at the path is refused as it is.
                clear_stale_socket(path)?;
                let bind_error = |source| ServerError::Bind {
                    what: path.display().to_string(),
                    source,
                };
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                // Connecting needs write permission on the socket: the mode says who may call.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    path,
                    std::fs::Permissions::from_mode(config.listeners.uds_mode),
                )
                .map_err(bind_error)?;
                uds_identity = file_identity(path);
                Some(listener)
            }
            None => None,
        };

        let metrics = Arc::new(Metrics::for_mode(config.fleet.is_some()));
        let metrics_listener = bind_tcp(config.listeners.metrics_addr).await?;
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let http_listener = bind_tcp(config.listeners.http_listen).await?;
        let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut decision_writer = None;
        let mut state = AppState::new(Arc::clone(&metrics)).with_path_options(config.http_paths);
        if let Some(every) = config.log.decision_log_every {
            let (log, rx) = DecisionLog::new(every, DECISION_QUEUE, Arc::clone(&metrics));
            state = state.with_decision_log(log);
            decision_writer = Some(rx);
        }
        let state = Arc::new(state);
        let (health, health_service) = tonic_health::server::health_reporter();
        health::starting(&health).await;
        // Reflection in both versions: grpcurl and grpcui speak v1; Postman, evans, older
        // grpcurl and the Python reflection client speak v1alpha. It lists ext_authz too when
        // that service is on.
        let envoy_on = config.envoy.mode != EnvoyMode::Off;
        let reflection_builder = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            if envoy_on {
                builder.register_encoded_file_descriptor_set(pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET)
            } else {
                builder
            }
        };
        let reflection = reflection_builder()
            .build_v1()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        // Admin RPCs are admitted (or refused) in front of the service, by the gate of each
        // listener: `--admin` decides which listeners accept them.
        let authz_service = |accepts_admin: bool| {
            AdminGate::new(Arc::clone(&state), accepts_admin).wrap(
                AuthzServer::new(AuthzService::new(Arc::clone(&state)))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
        };
        let admin_on_tcp = config.admin == AdminExposure::On;
        let admin_on_uds = config.admin != AdminExposure::Off;
        let envoy = (config.envoy.mode != EnvoyMode::Off).then(|| {
            AuthorizationServer::new(EnvoyAuthzService::new(
                Arc::clone(&state),
                config.envoy.clone(),
            ))
            .max_decoding_message_size(config.envoy.max_message_bytes)
        });

        let (shutdown, signal) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut servers = JoinSet::new();
        if let Some(rx) = decision_writer {
            // Ends when the services (the senders) are dropped at shutdown.
            tokio::spawn(write_decisions(rx));
        }
        let tls = match &config.tls {
            Some(tls) => {
                let mut server_tls = ServerTlsConfig::new()
                    .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
                if let Some(ca) = &tls.client_ca_pem {
                    server_tls = server_tls.client_ca_root(Certificate::from_pem(ca));
                }
                Some(server_tls)
            }
            None => None,
        };
        let limits = config.limits;
        let fds = connections::raise_fd_limit();
        let api_max = api_connection_cap(limits.max_connections, fds);
        if api_max < limits.max_connections {
            tracing::warn!(
                max_connections = limits.max_connections,
                capped = api_max,
                open_files = ?fds.soft,
                "--max-connections does not fit in the open-files limit; lowered"
            );
        }
        let pool_limits = |max: usize| PoolLimits {
            max,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
        };
        let api_pool = Pool::new("api", pool_limits(api_max));
        let health_pool = Pool::new("health", pool_limits(HEALTH_CONNECTIONS));
        let metrics_pool = Pool::new("metrics", pool_limits(METRICS_CONNECTIONS));
        metrics.follow_connections(
            [&api_pool, &health_pool, &metrics_pool]
                .map(|pool| Box::new(pool.clone()) as Box<dyn ConnectionSource>),
        );
        for pool in [&api_pool, &health_pool, &metrics_pool] {
            let reaper = pool.clone().reap_until(signal.clone());
            servers.spawn(async move {
                reaper.await;
                Ok(())
            });
        }
        let tcp_handshake = if tls.is_some() {
            Handshake::Tls
        } else {
            Handshake::H2
        };
        // Layers every listener shares: a per-connection concurrency limit and a deadline, so
        // that one slow or greedy client cannot starve the others' Checks.
        let builder = |tls: Option<&ServerTlsConfig>| -> Result<Layered, ServerError> {
            let mut builder = Server::builder()
                .concurrency_limit_per_connection(limits.max_concurrent_per_connection)
                // Advertised, so that clients queue beyond it instead of the server holding
                // every stream a client opens (h2 refuses streams over it).
                .max_concurrent_streams(
                    u32::try_from(limits.max_concurrent_per_connection).unwrap_or(u32::MAX),
                )
                .timeout(limits.request_timeout)
                // Envoy multiplexes every downstream request on one connection and resets the
                // ext_authz stream of each aborted one: h2's default of 20 reset streams
                // pending accept closes that shared connection (and every Check on it) in an
                // ordinary abort storm. A rapid-reset flood (CVE-2023-44487) still passes this
                // bound within milliseconds and gets its connection closed.
                .http2_max_pending_accept_reset_streams(Some(PENDING_ACCEPT_RESET_STREAMS))
                // Streams the server itself resets (refused over the stream limit, malformed):
                // tonic turns h2's bound off unless it is set; a client that keeps provoking
                // them (CVE-2025-8671) gets its connection closed.
                .http2_max_local_error_reset_streams(Some(LOCAL_ERROR_RESET_STREAMS))
                // Dead peers are found and their connections closed.
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                .layer(ActivityLayer);
            if let Some(tls) = tls {
                builder = builder.tls_config(tls.clone())?;
            }
            Ok(builder)
        };
        let router =
            |tls: Option<&ServerTlsConfig>, admin_enabled: bool| -> Result<_, ServerError> {
                Ok(builder(tls)?
                    .add_service(health_service.clone())
                    .add_service(reflection.clone())
                    .add_service(reflection_v1alpha.clone())
                    .add_service(authz_service(admin_enabled))
                    .add_optional_service(envoy.clone()))
            };
        if let Some(listener) = tcp {
            let incoming = Incoming::new(listener, api_pool.clone(), tcp_handshake);
            let routes = router(tls.as_ref(), admin_on_tcp)?;
            servers.spawn(routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())));
        }
        if let Some(listener) = admin_tcp {
            let incoming = Incoming::new(listener, api_pool.clone(), tcp_handshake);
            let routes = router(tls.as_ref(), true)?;
            servers.spawn(routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())));
        }
        if let Some(listener) = metrics_listener {
            let serve = serve_metrics(
                Incoming::new(listener, metrics_pool.clone(), Handshake::Http1),
                Arc::clone(&metrics),
                {
                    let state = Arc::clone(&state);
                    Arc::new(move || state.served())
                },
                signal.clone(),
            );
            servers.spawn(async move {
                serve.await;
                Ok(())
            });
        }
        if let Some(listener) = http_listener {
            // HTTP/JSON: the same service as the TCP API listener (admin reads as `--admin on`
            // allows there), the same TLS, the same request deadline.
            let tls = config
                .tls
                .as_ref()
                .map(crate::api::http_json::tls_acceptor)
                .transpose()?;
            // Its connections count against --max-connections with the other API listeners.
            let serve = crate::api::http_json::serve_http_json(
                Incoming::new(listener, api_pool.clone(), Handshake::Http1),
                GatedService {
                    service: AuthzService::new(Arc::clone(&state)),
                    gate: AdminGate::new(Arc::clone(&state), admin_on_tcp),
                },
                tls,
                limits.request_timeout,
                signal.clone(),
            );
            servers.spawn(async move {
                serve.await;
                Ok(())
            });
        }
        if let Some(listener) = health_tcp {
            // Health only: kubelet probes reach the pod IP, the API stays on loopback.
            let incoming = Incoming::new(listener, health_pool.clone(), Handshake::H2);
            let health_only = builder(None)?.add_service(health_service.clone());
            servers
                .spawn(health_only.serve_with_incoming_shutdown(incoming, stopped(signal.clone())));
        }
        if let Some(listener) = uds {
            // The socket's file permissions are its access control; no TLS on it.
            let incoming = Incoming::new(listener, api_pool.clone(), Handshake::H2);
            let routes = router(None, admin_on_uds)?;
            servers.spawn(routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())));
        }

        let mut refused_at_open = None;
        let mut xds_addr = None;
        if let Some(listen) = &config.envoy.xds_listen {
            let xds = crate::api::xds::XdsService::new(
                Arc::clone(&state),
                config.envoy.clone(),
                health.clone(),
            );
            health
                .set_service_status(crate::api::xds::HEALTH_SERVICE, ServingStatus::Serving)
                .await;
            // No request timeout: Envoy's xDS stream stays open. It counts as a request in
            // flight, so the idle timeout and eviction leave it alone.
            let routes = Server::builder()
                .http2_max_local_error_reset_streams(Some(LOCAL_ERROR_RESET_STREAMS))
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                .layer(ActivityLayer)
                .add_service(xds.server());
            match listen {
                crate::config::XdsListen::Tcp(addr) => {
                    let listener = bind_tcp(Some(*addr)).await?;
                    if let Some(listener) = listener {
                        xds_addr = listener.local_addr().ok();
                        let incoming = Incoming::new(listener, api_pool.clone(), Handshake::H2);
                        servers.spawn(
                            routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())),
                        );
                    }
                }
                crate::config::XdsListen::Unix(path) => {
                    // As for --uds: only a stale socket is replaced.
                    clear_stale_socket(path)?;
                    let listener =
                        UnixListener::bind(path).map_err(|source| ServerError::Bind {
                            what: path.display().to_string(),
                            source,
                        })?;
                    let incoming = Incoming::new(listener, api_pool.clone(), Handshake::H2);
                    servers.spawn(
                        routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())),
                    );
                }
            }
        }

        let (live, revision) = match &config.fleet {
            None => {
                let opened = Self::open_embedded(&config, seed, store, &mut refused_at_open).await;
                let (live, revision) = match opened {
                    Ok(ok) => ok,
                    Err(e) => {
                        let _ = shutdown.send(true);
                        while servers.join_next().await.is_some() {}
                        return Err(e);
                    }
                };
                (Arc::new(live), revision)
            }
            Some(fleet_config) => {
                let client = EtcdClient::new(&fleet_config.etcd)?;
                let opened =
                    fleet::open_live(store, fleet_config, config.admin_token.clone(), &client)
                        .await;
                let (live, sink, how) = match opened {
                    Ok(ok) => ok,
                    Err(e) => {
                        let _ = shutdown.send(true);
                        while servers.join_next().await.is_some() {}
                        return Err(e.into());
                    }
                };
                let revision = live.revision();
                tracing::info!(from = how, revision, prefix = %fleet_config.etcd.prefix, "fleet mode: policy loaded; following etcd");
                let status = Arc::new(FleetStatus::default());
                let mirror = Mirror {
                    client,
                    layout: fleet::Layout::new(&fleet_config.etcd.prefix),
                    sink,
                    status: Arc::clone(&status),
                    metrics: Arc::clone(&metrics),
                };
                let stop = signal.clone();
                servers.spawn(async move {
                    mirror.run(stop).await;
                    Ok(())
                });
                let staleness = watch_staleness(
                    status,
                    Arc::clone(&metrics),
                    health.clone(),
                    health::READY_SERVICES,
                    fleet_config.max_staleness,
                    signal.clone(),
                );
                servers.spawn(async move {
                    staleness.await;
                    Ok(())
                });
                (live, revision)
            }
        };
        state.set_ready(Arc::clone(&live));
        let reload_stats = Arc::new(ReloadStats::default());
        // A refused policy file (bad at start, or not valid with the API's changes merged in)
        // is reported, and the watcher does not report the same text again.
        let refused = match (&config.seed_error, &refused_at_open) {
            (Some(e), _) => Some(e.to_string()),
            (None, Some(problems)) => Some(format!(
                "{}: not applied: {}",
                config.seed_source,
                problems.join("; ")
            )),
            (None, None) => None,
        };
        let mut already_seen = None;
        match (&refused, &config.store.policy) {
            (Some(message), Some(path)) => {
                report_refused(path, message, &reload_stats, &metrics, &health).await;
                already_seen = read_policy_text_max(path, config.store.max_policy_bytes)
                    .ok()
                    .map(|(_, text)| crate::auth::token_sha256_hex(&text));
            }
            _ => {
                health
                    .set_service_status(POLICY_FILE_SERVICE, ServingStatus::Serving)
                    .await;
            }
        }
        if let (Some(path), Some(interval)) =
            (config.store.policy.clone(), config.store.reload_interval)
        {
            servers.spawn({
                let watcher = watch_policy_file(
                    live,
                    path,
                    WatchOptions {
                        interval,
                        max_bytes: config.store.max_policy_bytes,
                        health: health.clone(),
                        already_seen,
                    },
                    Arc::clone(&reload_stats),
                    Arc::clone(&metrics),
                    signal.clone(),
                );
                async move {
                    watcher.await;
                    Ok(())
                }
            });
        }
        health::ready(&health).await;
        let shown =
            |addr: Option<SocketAddr>| addr.map_or_else(|| "none".to_owned(), |a| a.to_string());
        tracing::info!(
            tcp = %shown(tcp_addr),
            uds = %config.listeners.uds.as_deref().map_or_else(|| "none".into(), |p| p.display().to_string()),
            health = %shown(health_addr),
            admin = %shown(admin_addr),
            metrics = %shown(metrics_addr),
            http = %shown(http_addr),
            revision,
            "serving"
        );
        Ok(Sidecar {
            tcp_addr,
            admin_addr,
            health_addr,
            xds_addr,
            metrics_addr,
            http_addr,
            metrics,
            uds_path: config.listeners.uds,
            uds_identity,
            revision,
            shutdown,
            servers,
            shutdown_grace: config.limits.shutdown_grace,
            health,
            reload_stats,
            api_connections: api_pool,
            health_connections: health_pool,
        })
    }

    /// Embedded mode: loads the sled store, or imports the seed into an empty one.
    async fn open_embedded(
        config: &Config,
        seed: Seed,
        store: Arc<SledStore>,
        refused: &mut Option<Vec<String>>,
    ) -> Result<(LivePolicy, u64), ServerError> {
        let token = config.admin_token.clone();
        let seed_error = config.seed_error.clone();
        let open = move || {
            if let Some(e) = seed_error {
                // A refused file with nothing stored: nothing to serve.
                if store.load_head()?.is_none() {
                    return Err(ServerError::PolicyFile(e));
                }
            }
            LivePolicy::open(store, &seed, token.as_deref()).map_err(ServerError::from)
        };
        // On the multi-thread runtime `launch` runs in `block_on` on the thread that parsed the
        // policy file: seeding there reuses the memory the parse freed in that thread's malloc
        // arena (a blocking-pool thread would take a new arena: ~5 MiB more peak RSS seeding a
        // 1 MiB file). The listeners run on the workers meanwhile.
        let opened = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(open)?,
            _ => tokio::task::spawn_blocking(open).await??,
        };
        let (live, opened) = opened;
        let revision = match opened {
            Opened::Imported { revision } => {
                tracing::info!(source = %config.seed_source, revision, "empty data dir: imported the seed policy");
                revision
            }
            Opened::Loaded { revision } => {
                tracing::info!(revision, "loaded the stored policy");
                revision
            }
            Opened::Reloaded { revision } => {
                tracing::info!(source = %config.seed_source, revision, "loaded the stored policy and re-applied the changed policy file");
                revision
            }
            Opened::FileRefused { revision, problems } => {
                tracing::info!(
                    revision,
                    "loaded the stored policy; the changed policy file is refused"
                );
                *refused = Some(problems);
                revision
            }
        };
        Ok((live, revision))
    }

    /// The bound TCP address (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The bound admin listener address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The bound xDS (ECDS) address, when `--envoy-xds-listen` names a TCP address.
    pub fn xds_addr(&self) -> Option<SocketAddr> {
        self.xds_addr
    }

    /// The bound health-only address.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bound HTTP/JSON address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The sidecar's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The Unix socket path.
    pub fn uds_path(&self) -> Option<&PathBuf> {
        self.uds_path.as_ref()
    }

    /// The connections of the API listeners (TCP, Unix socket, admin, xDS) and their limits.
    pub fn api_connections(&self) -> &Pool {
        &self.api_connections
    }

    /// The connections of the health-only listener.
    pub fn health_connections(&self) -> &Pool {
        &self.health_connections
    }

    /// Policy file reload counters.
    pub fn reload_stats(&self) -> &Arc<ReloadStats> {
        &self.reload_stats
    }

    /// The policy revision loaded at start-up.
    pub fn start_revision(&self) -> u64 {
        self.revision
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
        tokio::select! {
            _ = signal => {}
            Some(result) = self.servers.join_next() => {
                // A listener died on its own: stop the rest and report it.
                let _ = self.shutdown.send(true);
                if let Ok(Err(e)) = result {
                    return Err(e.into());
                }
            }
        }
        self.stop().await
    }

    /// Reports NOT_SERVING, stops accepting, and waits for in-flight calls to finish, for the
    /// shutdown grace at most: connections still open then are left to the runtime's end
    /// (the process exits), not waited for.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        health::stopping(&self.health).await;
        let _ = self.shutdown.send(true);
        let mut first_error = None;
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        while let Ok(Some(result)) =
            tokio::time::timeout_at(deadline, self.servers.join_next()).await
        {
            if let Ok(Err(e)) = result {
                first_error.get_or_insert(e);
            }
        }
        if !self.servers.is_empty() {
            tracing::warn!(
                grace_ms = self.shutdown_grace.as_millis() as u64,
                "connections still open after the shutdown grace; not waiting for them"
            );
            self.servers.abort_all();
            while self.servers.join_next().await.is_some() {}
        }
        // Only the socket this sidecar bound: never one another process put there since.
        if let Some(path) = &self.uds_path {
            if self.uds_identity.is_some() && file_identity(path) == self.uds_identity {
                let _ = std::fs::remove_file(path);
            }
        }
        tracing::info!("stopped");
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
