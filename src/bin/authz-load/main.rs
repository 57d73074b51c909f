//! `authz-load`: a closed-loop load generator for the sidecar.
//!
//! It opens `--connections` HTTP/2 connections to one sidecar (TCP or Unix socket), keeps exactly
//! `--concurrency` calls in flight (one worker task per stream, round-robin over the
//! connections, each looping request → response), and runs the scenarios one after the other in
//! the same invocation so that they share machine conditions:
//!
//! - `health`: `grpc.health.v1.Health/Check` — the cheapest RPC the same server answers, the
//!   floor the Check scenarios are compared against;
//! - `permission`: `authz.v1.Authz/Check` with a permission;
//! - `http`: `authz.v1.Authz/Check` with an HTTP method and path;
//! - `envoy`: `envoy.service.auth.v3.Authorization/Check` with the subject in a header;
//! - `batch`: `authz.v1.Authz/CheckBatch` with `--batch-size` copies of the `permission`
//!   request in one call (its `items/s` column counts each item as a decision).
//!
//! Each scenario first runs `--warmup` seconds unrecorded, then `--duration` seconds recorded:
//! a call counts when it completes inside the recorded window. It prints a table (or JSON with
//! `--json`) of requests, throughput, latency percentiles and errors, and each Check scenario's
//! throughput as a percentage of the health floor. A denied decision is an answer, not an error;
//! an error is a call that failed (a non-OK gRPC status, a timeout, or a health answer other
//! than `SERVING`). Exit status: 0 when no call failed, 1 when any did, 2 on a usage or
//! connection problem.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod batched_io;
mod wire;

use authz_sidecar::api::pb::{CheckBatchRequest, CheckRequest, HttpRequest, check_request::Action};
use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest as EnvoyCheckRequest,
};
use hyper_util::rt::TokioIo;
use prost::Message;
use prost::bytes::Bytes;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use batched_io::BatchedWrites;
use wire::{AuthzView, BatchView, EnvoyView, HealthView, PreEncoded};

/// Command line of `authz-load`.
#[derive(Debug, Parser)]
#[command(
    name = "authz-load",
    version,
    about = "Closed-loop gRPC load generator for authz-sidecar"
)]
struct Cli {
    /// Sidecar to load: `tcp://HOST:PORT` or `unix:///path/to.sock`.
    #[arg(
        long,
        env = "AUTHZ_LOAD_TARGET",
        default_value = "tcp://127.0.0.1:50051"
    )]
    target: String,
    /// HTTP/2 connections to open.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Calls in flight in total (one worker per stream, spread round-robin over the connections).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Recorded seconds per scenario (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Unrecorded warm-up seconds before each scenario's recorded window (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Scenarios to run, in order (repeat the flag or separate with commas).
    #[arg(
        long,
        value_enum,
        num_args = 1..,
        value_delimiter = ',',
        default_values_t = [Scenario::Health, Scenario::Permission, Scenario::Http, Scenario::Envoy]
    )]
    scenario: Vec<Scenario>,
    /// Subject of the Check scenarios.
    #[arg(long, default_value = "dashboard")]
    subject: String,
    /// Permission asked by the `permission` scenario.
    #[arg(long, default_value = "devices:read")]
    permission: String,
    /// HTTP method of the `http` and `envoy` scenarios.
    #[arg(long, default_value = "GET")]
    http_method: String,
    /// HTTP path of the `http` and `envoy` scenarios.
    #[arg(long, default_value = "/v1/devices/d1")]
    http_path: String,
    /// Request header carrying the subject in the `envoy` scenario (the sidecar's
    /// `--envoy-subject-header`).
    #[arg(long, default_value = "x-subject")]
    envoy_subject_header: String,
    /// A call not answered within this many milliseconds counts as an error.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    timeout_ms: u64,
    /// Client runtime worker threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Items per `CheckBatch` call in the `batch` scenario (1 to 1000).
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Print the results as one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `grpc.health.v1.Health/Check` (the floor).
    Health,
    /// `authz.v1.Authz/Check` with a permission.
    Permission,
    /// `authz.v1.Authz/Check` with an HTTP method and path.
    Http,
    /// Envoy ext_authz v3 `Check`.
    Envoy,
    /// `authz.v1.Authz/CheckBatch` of `--batch-size` permission items.
    Batch,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Health => "health",
            Scenario::Permission => "permission",
            Scenario::Http => "http",
            Scenario::Envoy => "envoy",
            Scenario::Batch => "batch",
        }
    }
}

/// Where the sidecar listens.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl Target {
    fn parse(text: &str) -> Result<Target, String> {
        if let Some(addr) = text.strip_prefix("tcp://") {
            if addr.is_empty() || addr.contains('/') {
                return Err(format!("--target `{text}`: expected tcp://HOST:PORT"));
            }
            Ok(Target::Tcp(addr.to_string()))
        } else if let Some(path) = text.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("--target `{text}`: expected unix:///path/to.sock"));
            }
            Ok(Target::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "--target `{text}`: expected tcp://HOST:PORT or unix:///path/to.sock"
            ))
        }
    }

    fn transport(&self) -> &'static str {
        match self {
            Target::Tcp(_) => "tcp",
            Target::Unix(_) => "unix",
        }
    }

    /// Opens one HTTP/2 connection (a tonic `Channel` is one connection).
    async fn connect(&self) -> Result<Channel, String> {
        let endpoint =
            Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(5));
        match self {
            Target::Tcp(addr) => {
                let addr = addr.clone();
                let what = format!("tcp://{addr}");
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let addr = addr.clone();
                        async move {
                            let stream = tokio::net::TcpStream::connect(addr).await?;
                            stream.set_nodelay(true)?;
                            Ok::<_, std::io::Error>(TokioIo::new(BatchedWrites(stream)))
                        }
                    }))
                    .await
                    .map_err(|e| format!("cannot connect to {what}: {e}"))
            }
            Target::Unix(path) => {
                let socket = path.clone();
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(BatchedWrites(stream)))
                        }
                    }))
                    .await
                    .map_err(|e| format!("cannot connect to unix://{}: {e}", path.display()))
            }
        }
    }
}

/// A scenario's prepared call: the connection, the method and the request bytes.
struct Call {
    scenario: Scenario,
    grpc: Grpc<Channel>,
    path: PathAndQuery,
    body: Bytes,
}

/// What one call produced.
enum Outcome {
    Allowed,
    Denied,
    /// A health answer: not a decision.
    Answered,
    /// A batch answer: its items' decisions.
    Batch {
        allowed: u64,
        denied: u64,
    },
    Failed(String),
}

impl Call {
    fn new(scenario: Scenario, channel: Channel, body: Bytes) -> Call {
        let path = match scenario {
            Scenario::Health => "/grpc.health.v1.Health/Check",
            Scenario::Permission | Scenario::Http => "/authz.v1.Authz/Check",
            Scenario::Envoy => "/envoy.service.auth.v3.Authorization/Check",
            Scenario::Batch => "/authz.v1.Authz/CheckBatch",
        };
        Call {
            scenario,
            grpc: Grpc::new(channel),
            path: PathAndQuery::from_static(path),
            body,
        }
    }

    async fn send<V: prost::Message + Default + Send + 'static>(
        &mut self,
    ) -> Result<V, tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
        let request = tonic::Request::new(self.body.clone());
        let response = self
            .grpc
            .unary(request, self.path.clone(), PreEncoded::<V>::default())
            .await?;
        Ok(response.into_inner())
    }

    async fn once(&mut self) -> Outcome {
        match self.scenario {
            Scenario::Health => match self.send::<HealthView>().await {
                Ok(view) if view.status == ServingStatus::Serving as i32 => Outcome::Answered,
                Ok(view) => Outcome::Failed(format!(
                    "health status {:?}",
                    ServingStatus::try_from(view.status)
                )),
                Err(status) => Outcome::Failed(describe(&status)),
            },
            Scenario::Permission | Scenario::Http => match self.send::<AuthzView>().await {
                Ok(view) if view.allowed => Outcome::Allowed,
                Ok(_) => Outcome::Denied,
                Err(status) => Outcome::Failed(describe(&status)),
            },
            Scenario::Batch => match self.send::<BatchView>().await {
                Ok(view) => {
                    let allowed = view.results.iter().filter(|r| r.allowed).count() as u64;
                    Outcome::Batch {
                        allowed,
                        denied: view.results.len() as u64 - allowed,
                    }
                }
                Err(status) => Outcome::Failed(describe(&status)),
            },
            // ext_authz answers a decision in `status`: OK allows, anything else denies.
            Scenario::Envoy => match self.send::<EnvoyView>().await {
                Ok(view) if view.status.as_ref().map(|s| s.code) == Some(0) => Outcome::Allowed,
                Ok(_) => Outcome::Denied,
                Err(status) => Outcome::Failed(describe(&status)),
            },
        }
    }
}

/// The request a scenario sends, encoded once.
fn request_bytes(scenario: Scenario, cli: &Cli) -> Bytes {
    let encoded = match scenario {
        Scenario::Health => HealthCheckRequest {
            service: String::new(),
        }
        .encode_to_vec(),
        Scenario::Permission => CheckRequest {
            subject: cli.subject.clone(),
            action: Some(Action::Permission(cli.permission.clone())),
            ..Default::default()
        }
        .encode_to_vec(),
        Scenario::Http => CheckRequest {
            subject: cli.subject.clone(),
            action: Some(Action::Http(HttpRequest {
                method: cli.http_method.clone(),
                path: cli.http_path.clone(),
            })),
            ..Default::default()
        }
        .encode_to_vec(),
        Scenario::Envoy => envoy_request(cli).encode_to_vec(),
        Scenario::Batch => CheckBatchRequest {
            items: vec![
                CheckRequest {
                    subject: cli.subject.clone(),
                    action: Some(Action::Permission(cli.permission.clone())),
                    ..Default::default()
                };
                cli.batch_size
            ],
            min_revision: 0,
        }
        .encode_to_vec(),
    };
    Bytes::from(encoded)
}

/// An ext_authz request shaped like the ones Envoy's HTTP filter sends for a plain GET: peer
/// addresses, a request id, and the headers a browser or curl and Envoy itself put on it.
fn envoy_request(cli: &Cli) -> EnvoyCheckRequest {
    let peer = |address: &str, port: u32| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: address.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let request_id = "6f1c2a9e-4b7d-4e0a-9c3f-2d8e5b1a7c40";
    let headers = [
        (":authority", "app.default.svc:8080"),
        (":method", cli.http_method.as_str()),
        (":path", cli.http_path.as_str()),
        (":scheme", "http"),
        ("accept", "application/json"),
        ("user-agent", "curl/8.5.0"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", request_id),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        (cli.envoy_subject_header.as_str(), cli.subject.as_str()),
    ];
    EnvoyCheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("10.0.3.17", 51_234)),
            destination: Some(peer("10.0.3.9", 8080)),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "12751398226437415872".into(),
                    method: cli.http_method.clone(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    path: cli.http_path.clone(),
                    host: "app.default.svc:8080".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// One worker's record.
#[derive(Default)]
struct Tally {
    /// Latency of each successful call completed in the recorded window, in nanoseconds
    /// (a call cannot exceed the timeout, at most 4.29 s, so it fits).
    latencies: Vec<u32>,
    allowed: u64,
    denied: u64,
    /// Decisions answered in the recorded window (a batch call answers many).
    items: u64,
    /// Failed calls in any phase (warm-up, recorded window, or the tail after it).
    errors: u64,
    first_error: Option<String>,
}

/// A scenario's merged result.
struct Summary {
    scenario: Scenario,
    requests: u64,
    rps: f64,
    /// Decisions (or health answers) per second: `rps` times the items per call.
    items_per_s: f64,
    /// p50, p90, p99, p99.9, max in nanoseconds.
    percentiles: [u32; 5],
    allowed: u64,
    denied: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    mut call: Call,
    start_recording: Instant,
    deadline: Instant,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally {
        latencies: Vec::with_capacity(16 * 1024),
        ..Tally::default()
    };
    loop {
        let started = Instant::now();
        if started >= deadline {
            break;
        }
        let outcome = match tokio::time::timeout(timeout, call.once()).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed(format!("no answer within {timeout:?}")),
        };
        let finished = Instant::now();
        let recorded = finished >= start_recording && finished <= deadline;
        match outcome {
            Outcome::Failed(message) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(message);
            }
            _ if !recorded => {}
            outcome => {
                let nanos = finished.duration_since(started).as_nanos();
                tally
                    .latencies
                    .push(u32::try_from(nanos).unwrap_or(u32::MAX));
                match outcome {
                    Outcome::Allowed => tally.allowed += 1,
                    Outcome::Denied => tally.denied += 1,
                    Outcome::Batch { allowed, denied } => {
                        tally.allowed += allowed;
                        tally.denied += denied;
                    }
                    Outcome::Answered | Outcome::Failed(_) => {}
                }
                tally.items += match outcome {
                    Outcome::Batch { allowed, denied } => allowed + denied,
                    _ => 1,
                };
            }
        }
    }
    tally
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run_scenario(
    scenario: Scenario,
    channels: &[Channel],
    cli: &Cli,
    warmup: Duration,
    duration: Duration,
) -> Result<Summary, String> {
    let start_recording = Instant::now() + warmup;
    let deadline = start_recording + duration;
    let timeout = Duration::from_millis(cli.timeout_ms);
    let body = request_bytes(scenario, cli);
    let workers: Vec<_> = (0..cli.concurrency)
        .map(|i| {
            let call = Call::new(scenario, channels[i % channels.len()].clone(), body.clone());
            tokio::spawn(worker(call, start_recording, deadline, timeout))
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut allowed, mut denied, mut errors, mut items) = (0, 0, 0, 0);
    let mut first_error = None;
    for handle in workers {
        let tally = handle
            .await
            .map_err(|e| format!("a {} worker failed: {e}", scenario.name()))?;
        latencies.extend_from_slice(&tally.latencies);
        allowed += tally.allowed;
        denied += tally.denied;
        errors += tally.errors;
        items += tally.items;
        if first_error.is_none() {
            first_error = tally.first_error;
        }
    }
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    Ok(Summary {
        scenario,
        requests,
        rps: requests as f64 / duration.as_secs_f64(),
        items_per_s: items as f64 / duration.as_secs_f64(),
        percentiles: [
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.90),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            latencies.last().copied().unwrap_or(0),
        ],
        allowed,
        denied,
        errors,
        first_error,
    })
}

/// Nanoseconds as microseconds with one decimal, for the table.
fn micros(nanos: u32) -> String {
    format!("{:.1}", f64::from(nanos) / 1000.0)
}

/// Each Check scenario's throughput as a percentage of the health floor.
fn ratios(summaries: &[Summary]) -> Vec<(Scenario, f64)> {
    let Some(floor) = summaries
        .iter()
        .find(|s| s.scenario == Scenario::Health)
        .map(|s| s.rps)
        .filter(|rps| *rps > 0.0)
    else {
        return Vec::new();
    };
    summaries
        .iter()
        .filter(|s| s.scenario != Scenario::Health)
        .map(|s| (s.scenario, 100.0 * s.rps / floor))
        .collect()
}

/// The `batch` scenario's items/s over the `permission` scenario's calls/s (same request).
fn batch_gain(summaries: &[Summary]) -> Option<f64> {
    let of = |scenario| summaries.iter().find(|s| s.scenario == scenario);
    let (batch, single) = (of(Scenario::Batch)?, of(Scenario::Permission)?);
    (single.rps > 0.0).then(|| batch.items_per_s / single.rps)
}

fn print_table(cli: &Cli, target: &Target, summaries: &[Summary]) {
    println!(
        "target {} ({}), {} connection(s), {} in flight, {} s per scenario after {} s warm-up",
        cli.target,
        target.transport(),
        cli.connections,
        cli.concurrency,
        cli.duration,
        cli.warmup
    );
    println!("latencies in µs");
    let header = [
        "scenario", "requests", "req/s", "items/s", "p50", "p90", "p99", "p99.9", "max", "errors",
        "allowed", "denied",
    ];
    let rows: Vec<[String; 12]> = summaries
        .iter()
        .map(|s| {
            [
                s.scenario.name().to_string(),
                s.requests.to_string(),
                format!("{:.0}", s.rps),
                format!("{:.0}", s.items_per_s),
                micros(s.percentiles[0]),
                micros(s.percentiles[1]),
                micros(s.percentiles[2]),
                micros(s.percentiles[3]),
                micros(s.percentiles[4]),
                s.errors.to_string(),
                s.allowed.to_string(),
                s.denied.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, width))| {
                if i == 0 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.to_vec());
    // A Markdown table rule: the scenario column left-aligned, the numbers right-aligned.
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    let ratios = ratios(summaries);
    if !ratios.is_empty() {
        let parts: Vec<String> = ratios
            .iter()
            .map(|(s, pct)| format!("{} {pct:.1}%", s.name()))
            .collect();
        println!(
            "throughput vs the health floor (same run): {}",
            parts.join(", ")
        );
    }
    if let Some(gain) = batch_gain(summaries) {
        println!(
            "batch of {}: {gain:.1}x the decisions/s of single permission Checks",
            cli.batch_size
        );
    }
}

fn json(cli: &Cli, target: &Target, summaries: &[Summary]) -> serde_json::Value {
    let ratios = ratios(summaries);
    let scenarios: Vec<serde_json::Value> = summaries
        .iter()
        .map(|s| {
            let us = |nanos: u32| f64::from(nanos) / 1000.0;
            serde_json::json!({
                "scenario": s.scenario.name(),
                "requests": s.requests,
                "rps": s.rps,
                "items_per_s": s.items_per_s,
                "p50_us": us(s.percentiles[0]),
                "p90_us": us(s.percentiles[1]),
                "p99_us": us(s.percentiles[2]),
                "p999_us": us(s.percentiles[3]),
                "max_us": us(s.percentiles[4]),
                "errors": s.errors,
                "first_error": s.first_error,
                "allowed": s.allowed,
                "denied": s.denied,
                "pct_of_health": ratios.iter().find(|(r, _)| *r == s.scenario).map(|(_, p)| *p),
            })
        })
        .collect();
    serde_json::json!({
        "target": cli.target,
        "transport": target.transport(),
        "connections": cli.connections,
        "concurrency": cli.concurrency,
        "duration_s": cli.duration,
        "warmup_s": cli.warmup,
        "scenarios": scenarios,
        "errors": summaries.iter().map(|s| s.errors).sum::<u64>(),
        "batch_size": cli.batch_size,
        "batch_gain": batch_gain(summaries),
    })
}

fn seconds(flag: &str, value: f64, allow_zero: bool) -> Result<Duration, String> {
    if !value.is_finite() || value < 0.0 || (!allow_zero && value == 0.0) || value > 86_400.0 {
        return Err(format!(
            "--{flag} {value}: expected a number of seconds{}",
            if allow_zero { " ≥ 0" } else { " > 0" }
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

async fn run(cli: &Cli) -> Result<bool, String> {
    let target = Target::parse(&cli.target)?;
    if cli.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if cli.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if cli.timeout_ms == 0 || cli.timeout_ms > 4_000 {
        return Err("--timeout-ms must be between 1 and 4000".into());
    }
    if cli.batch_size == 0 || cli.batch_size > authz_sidecar::api::MAX_BATCH_ITEMS {
        return Err(format!(
            "--batch-size must be between 1 and {}",
            authz_sidecar::api::MAX_BATCH_ITEMS
        ));
    }
    let duration = seconds("duration", cli.duration, false)?;
    let warmup = seconds("warmup", cli.warmup, true)?;

    let mut channels = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        channels.push(target.connect().await?);
    }

    let mut summaries = Vec::with_capacity(cli.scenario.len());
    for &scenario in &cli.scenario {
        let summary = run_scenario(scenario, &channels, cli, warmup, duration).await?;
        if let Some(message) = &summary.first_error {
            eprintln!(
                "authz-load: {}: {} failed call(s), first: {message}",
                scenario.name(),
                summary.errors
            );
        }
        summaries.push(summary);
    }

    if cli.json {
        println!("{}", json(cli, &target, &summaries));
    } else {
        print_table(cli, &target, &summaries);
    }
    Ok(summaries.iter().all(|s| s.errors == 0))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("authz-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("authz-load: {message}");
            ExitCode::from(2)
        }
    }
}
