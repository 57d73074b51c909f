//! Where the sidecar listens: the API on TCP and a Unix socket, health, metrics, HTTP/JSON.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Environment variable for `--listen`.
pub const ENV_LISTEN: &str = "AUTHZ_LISTEN";
/// Default TCP listen address: loopback only, as a sidecar should.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Environment variable for `--uds`.
pub const ENV_UDS: &str = "AUTHZ_UDS";
/// Default of `--uds-mode`: owner and group may connect.
pub const DEFAULT_UDS_MODE: &str = "0660";
/// The value of an address flag that turns its listener off.
const NONE: &str = "none";

/// Listener flags.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// TCP address to serve on; `none` serves only the Unix socket.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Separate TCP address serving only grpc.health.v1 (for kubelet gRPC probes, which dial
    /// the pod IP while the API stays on loopback); `none` to disable.
    #[arg(long, env = "AUTHZ_HEALTH_LISTEN", default_value = NONE)]
    pub health_listen: String,
    /// Address of the Prometheus `/metrics` HTTP endpoint; `none` to disable.
    #[arg(long, env = "AUTHZ_METRICS_ADDR", default_value = NONE)]
    pub metrics_addr: String,
    /// TCP address of the HTTP/JSON endpoints (`POST /v1/check`, `/v1/checkBatch`,
    /// `/v1/listRoles`, `/v1/getSubject`, `/v1/listSubjects`; proto3 JSON bodies) for callers
    /// without gRPC; `none` to disable. TLS as `--tls-*`; the admin reads follow `--admin on`
    /// and need the bearer token.
    #[arg(long, env = "AUTHZ_HTTP_LISTEN", default_value = NONE)]
    pub http_listen: String,
    /// Unix socket path to serve on as well (shared with the app through a volume).
    #[arg(long, env = ENV_UDS)]
    pub uds: Option<PathBuf>,
    /// Permissions of the Unix socket, octal: who may connect (owner and group by default).
    #[arg(long, env = "AUTHZ_UDS_MODE", default_value = DEFAULT_UDS_MODE)]
    pub uds_mode: String,
}

/// Validated listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// TCP address, if serving TCP.
    pub listen: Option<SocketAddr>,
    /// Health-only TCP address, if any.
    pub health_listen: Option<SocketAddr>,
    /// Prometheus metrics address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// HTTP/JSON address, if any.
    pub http_listen: Option<SocketAddr>,
    /// Unix socket path, if serving one (its directory is checked at start-up).
    pub uds: Option<PathBuf>,
    /// Unix socket file mode.
    pub uds_mode: u32,
}

/// Validates the listener flags into `errors`.
pub fn parse(args: &ListenArgs, errors: &mut Vec<String>) -> Listeners {
    let listen = optional_addr(
        &format!("--listen / {ENV_LISTEN}"),
        &args.listen,
        DEFAULT_LISTEN,
        errors,
    );
    let health_listen = optional_addr(
        "--health-listen / AUTHZ_HEALTH_LISTEN",
        &args.health_listen,
        "0.0.0.0:50052",
        errors,
    );
    let uds_mode = match u32::from_str_radix(args.uds_mode.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => mode,
        _ => {
            errors.push(format!(
                "--uds-mode / AUTHZ_UDS_MODE: `{}` is not an octal file mode like 0660",
                args.uds_mode
            ));
            0o660
        }
    };
    let metrics_addr = optional_addr(
        "--metrics-addr / AUTHZ_METRICS_ADDR",
        &args.metrics_addr,
        "0.0.0.0:9090",
        errors,
    );
    let http_listen = optional_addr(
        "--http-listen / AUTHZ_HTTP_LISTEN",
        &args.http_listen,
        "127.0.0.1:8080",
        errors,
    );
    if args.listen == NONE && args.uds.is_none() {
        errors.push(format!(
            "--listen none needs --uds / {ENV_UDS}: there would be nothing to serve on"
        ));
    }
    Listeners {
        listen,
        health_listen,
        metrics_addr,
        http_listen,
        uds: args.uds.clone(),
        uds_mode,
    }
}

/// Parses `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT` (loopback, 127.0.0.1; no name lookup).
pub fn parse_listen_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let port = text.strip_prefix("localhost:")?.parse::<u16>().ok()?;
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// An address flag that may be `none` (or empty): `None` then, or the parsed address.
pub(super) fn optional_addr(
    label: &str,
    text: &str,
    example: &str,
    errors: &mut Vec<String>,
) -> Option<SocketAddr> {
    match text {
        NONE | "" => None,
        text => match parse_listen_addr(text) {
            Some(addr) => Some(addr),
            None => {
                errors.push(format!(
                    "{label}: `{text}` is not an address like {example} (or `none`)"
                ));
                None
            }
        },
    }
}
