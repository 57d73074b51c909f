//! Limits that keep one client from starving others, and the worker threads.

use std::time::Duration;

use clap::Args;

/// Default of `--max-concurrent-per-connection`.
pub const DEFAULT_MAX_CONCURRENT_PER_CONNECTION: usize = 256;
/// Default of `--request-timeout-ms`.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5000;
/// Default of `--shutdown-grace-ms`.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5000;
/// Default of `--max-connections`: a pod's app and Envoy need tens; idle connections cost
/// ~15 KB each.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `--handshake-timeout-ms`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5000;
/// Default of `--idle-timeout`, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;
/// Most `--max-connections` accepted.
const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=1_000_000;
/// Most `--worker-threads` accepted.
const MAX_WORKER_THREADS: usize = 1024;

/// Limit flags.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// Most requests in flight on one connection; more wait (a greedy client cannot starve Check).
    #[arg(
        long,
        env = "AUTHZ_MAX_CONCURRENT_PER_CONNECTION",
        default_value_t = DEFAULT_MAX_CONCURRENT_PER_CONNECTION
    )]
    pub max_concurrent_per_connection: usize,
    /// Deadline for any one request, in milliseconds.
    #[arg(long, env = "AUTHZ_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// On SIGTERM, how long (ms) open connections may take to finish before they are closed.
    #[arg(long, env = "AUTHZ_SHUTDOWN_GRACE_MS", default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,
    /// Most connections open at once across the API listeners (TCP, Unix socket, admin, xDS);
    /// a new one beyond it closes the connection idle the longest. Also capped by the
    /// open-files limit.
    #[arg(long, env = "AUTHZ_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// A new connection that has not sent the HTTP/2 preface (or finished its TLS handshake)
    /// within this many milliseconds is closed.
    #[arg(
        long,
        env = "AUTHZ_HANDSHAKE_TIMEOUT_MS",
        default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_MS
    )]
    pub handshake_timeout_ms: u64,
    /// A connection with no request for this many seconds is closed; 0 = never.
    #[arg(long, env = "AUTHZ_IDLE_TIMEOUT", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout: u64,
    /// Threads answering requests (0 = one per CPU the process may use, which follows the
    /// container's CPU limit). A sidecar beside a busy app usually wants 1 or 2.
    #[arg(long, env = "AUTHZ_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}

/// Limits and layers that keep one client from starving others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight per connection.
    pub max_concurrent_per_connection: usize,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// At shutdown, how long connections may take to finish; a stuck client (one that never
    /// answers the HTTP/2 GOAWAY) would otherwise hold the sidecar up until it is killed.
    pub shutdown_grace: Duration,
    /// Most connections open at once across the API listeners.
    pub max_connections: usize,
    /// Time a new connection has to send the HTTP/2 preface (or finish its TLS handshake).
    pub handshake_timeout: Duration,
    /// Time a connection may go without a request; `None`: no limit.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_per_connection: DEFAULT_MAX_CONCURRENT_PER_CONNECTION,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            shutdown_grace: Duration::from_millis(DEFAULT_SHUTDOWN_GRACE_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            idle_timeout: Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS)),
        }
    }
}

/// Validates the limit flags into `errors`: the limits, and the worker threads (`None` = one
/// per available CPU).
pub fn parse(args: &LimitsArgs, errors: &mut Vec<String>) -> (Limits, Option<usize>) {
    if args.max_concurrent_per_connection == 0 {
        errors.push("--max-concurrent-per-connection must be at least 1".into());
    }
    if args.worker_threads > MAX_WORKER_THREADS {
        errors.push(format!(
            "--worker-threads {}: at most {MAX_WORKER_THREADS}",
            args.worker_threads
        ));
    }
    if args.request_timeout_ms == 0 {
        errors.push("--request-timeout-ms must be at least 1".into());
    }
    if !MAX_CONNECTIONS_RANGE.contains(&args.max_connections) {
        errors.push(format!(
            "--max-connections / AUTHZ_MAX_CONNECTIONS: {} is not between {} and {}",
            args.max_connections,
            MAX_CONNECTIONS_RANGE.start(),
            MAX_CONNECTIONS_RANGE.end()
        ));
    }
    if args.handshake_timeout_ms == 0 {
        errors
            .push("--handshake-timeout-ms / AUTHZ_HANDSHAKE_TIMEOUT_MS must be at least 1".into());
    }
    let limits = Limits {
        max_concurrent_per_connection: args.max_concurrent_per_connection.max(1),
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        max_connections: args.max_connections.max(1),
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms.max(1)),
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
    };
    (
        limits,
        (args.worker_threads > 0).then_some(args.worker_threads),
    )
}
