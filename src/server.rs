//! Listeners, the gRPC services on them, start-up order and graceful shutdown.
//!
//! Start-up: open the store (refusing a locked or foreign data dir), bind the listeners, serve
//! health as NOT_SERVING, load and compile the policy, then flip to SERVING. Shutdown: report
//! NOT_SERVING, stop accepting, drain in-flight calls, flush the store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::pb::authz_server::AuthzServer;
use crate::api::{
    AppState, AuthorizationServer, AuthzService, EnvoyAuthzService, MAX_MESSAGE_BYTES, pb,
};
use crate::config::Config;
use crate::config::{AdminExposure, EnvoyMode};
use crate::decision_log::{DecisionLog, QUEUE as DECISION_QUEUE, write_decisions};
use crate::fleet::{self, EtcdClient, FleetError, FleetStatus, Mirror, watch_staleness};
use crate::live::{LivePolicy, OpenError, Opened};
use crate::metrics::{Metrics, serve_metrics};
use crate::reload::{ReloadStats, watch_policy_file};
use crate::store::{SledStore, Store, StoreError};

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
    /// Fleet mode: etcd or the mirrored policy failed.
    #[error("fleet: {0}")]
    Fleet(#[from] FleetError),
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(String),
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

/// A running sidecar.
pub struct Sidecar {
    tcp_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    xds_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    uds_path: Option<PathBuf>,
    revision: u64,
    shutdown: watch::Sender<bool>,
    servers: JoinSet<Result<(), tonic::transport::Error>>,
    shutdown_grace: Duration,
    health: HealthReporter,
    reload_stats: Arc<ReloadStats>,
}

const AUTHZ_SERVICE: &str = "authz.v1.Authz";

impl Sidecar {
    /// Starts a sidecar as configured and returns once it serves the loaded policy.
    pub async fn launch(config: Config) -> Result<Sidecar, ServerError> {
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::open(&data_dir))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        let store: Arc<dyn Store> = Arc::new(store);

        let tcp = bind_tcp(config.listen).await?;
        let tcp_addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let health_tcp = bind_tcp(config.health_listen).await?;
        let health_addr = health_tcp.as_ref().and_then(|l| l.local_addr().ok());
        let admin_tcp = bind_tcp(config.admin_listen).await?;
        let admin_addr = admin_tcp.as_ref().and_then(|l| l.local_addr().ok());
        let uds = match &config.uds {
            Some(path) => {
                // A socket file left by a previous run would make bind fail.
                if path.exists() {
                    let _ = std::fs::remove_file(path);
                }
                let bind_error = |source| ServerError::Bind {
                    what: path.display().to_string(),
                    source,
                };
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                // Connecting needs write permission on the socket: the mode says who may call.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.uds_mode))
                    .map_err(bind_error)?;
                Some(listener)
            }
            None => None,
        };

        let metrics = Arc::new(Metrics::new());
        let metrics_listener = bind_tcp(config.metrics_addr).await?;
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut decision_writer = None;
        let mut state = AppState::new(Arc::clone(&metrics)).with_path_options(config.http_paths);
        if let Some(every) = config.decision_log_every {
            let (log, rx) = DecisionLog::new(every, DECISION_QUEUE, Arc::clone(&metrics));
            state = state.with_decision_log(log);
            decision_writer = Some(rx);
        }
        let state = Arc::new(state);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(AUTHZ_SERVICE, ServingStatus::NotServing)
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        let authz_service = |admin_enabled: bool| {
            AuthzServer::new(AuthzService::new(Arc::clone(&state), admin_enabled))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
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
        // Layers every listener shares: a per-connection concurrency limit and a deadline, so
        // that one slow or greedy client cannot starve the others' Checks.
        let builder = |tls: Option<&ServerTlsConfig>| -> Result<Server, ServerError> {
            let mut builder = Server::builder()
                .concurrency_limit_per_connection(limits.max_concurrent_per_connection)
                .timeout(limits.request_timeout);
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
                    .add_service(authz_service(admin_enabled))
                    .add_optional_service(envoy.clone()))
            };
        if let Some(listener) = tcp {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let routes = router(tls.as_ref(), admin_on_tcp)?;
            servers.spawn(routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())));
        }
        if let Some(listener) = admin_tcp {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let routes = router(tls.as_ref(), true)?;
            servers.spawn(routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())));
        }
        if let Some(listener) = metrics_listener {
            let serve = serve_metrics(
                listener,
                Arc::clone(&metrics),
                Arc::clone(&state),
                signal.clone(),
            );
            servers.spawn(async move {
                serve.await;
                Ok(())
            });
        }
        if let Some(listener) = health_tcp {
            // Health only: kubelet probes reach the pod IP, the API stays on loopback.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let health_only = Server::builder().add_service(health_service.clone());
            servers
                .spawn(health_only.serve_with_incoming_shutdown(incoming, stopped(signal.clone())));
        }
        if let Some(listener) = uds {
            // The socket's file permissions are its access control; no TLS on it.
            let incoming = UnixListenerStream::new(listener);
            let routes = router(None, admin_on_uds)?;
            servers.spawn(routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())));
        }

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
            let routes = Server::builder().add_service(xds.server());
            match listen {
                crate::config::XdsListen::Tcp(addr) => {
                    let listener = bind_tcp(Some(*addr)).await?;
                    if let Some(listener) = listener {
                        xds_addr = listener.local_addr().ok();
                        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                        servers.spawn(
                            routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())),
                        );
                    }
                }
                crate::config::XdsListen::Unix(path) => {
                    if path.exists() {
                        let _ = std::fs::remove_file(path);
                    }
                    let listener =
                        UnixListener::bind(path).map_err(|source| ServerError::Bind {
                            what: path.display().to_string(),
                            source,
                        })?;
                    let incoming = UnixListenerStream::new(listener);
                    servers.spawn(
                        routes.serve_with_incoming_shutdown(incoming, stopped(signal.clone())),
                    );
                }
            }
        }

        let (live, revision) = match &config.fleet {
            None => {
                let (live, revision) = match Self::open_embedded(&config, store).await {
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
                let (live, how) = match opened {
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
                    live: Arc::clone(&live),
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
                    &["", AUTHZ_SERVICE],
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
        if let (Some(path), Some(interval)) = (config.policy_path.clone(), config.reload_interval) {
            servers.spawn({
                let watcher = watch_policy_file(
                    live,
                    path,
                    interval,
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
        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_service_status(AUTHZ_SERVICE, ServingStatus::Serving)
            .await;
        tracing::info!(tcp = ?tcp_addr, uds = ?config.uds, metrics = ?metrics_addr, "serving");
        Ok(Sidecar {
            tcp_addr,
            admin_addr,
            health_addr,
            xds_addr,
            metrics_addr,
            metrics,
            uds_path: config.uds,
            revision,
            shutdown,
            servers,
            shutdown_grace: config.limits.shutdown_grace,
            health,
            reload_stats,
        })
    }

    /// Embedded mode: loads the sled store, or imports the seed into an empty one.
    async fn open_embedded(
        config: &Config,
        store: Arc<dyn Store>,
    ) -> Result<(LivePolicy, u64), ServerError> {
        let seed = config.seed.clone();
        let token = config.admin_token.clone();
        let opened =
            tokio::task::spawn_blocking(move || LivePolicy::open(store, &seed, token.as_deref()))
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))??;
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

    /// The sidecar's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The Unix socket path.
    pub fn uds_path(&self) -> Option<&PathBuf> {
        self.uds_path.as_ref()
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
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_service_status(AUTHZ_SERVICE, ServingStatus::NotServing)
            .await;
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
        if let Some(path) = &self.uds_path {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("stopped");
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
