//! The example application of the Kubernetes manifests (`k8s/base`): a tiny HTTP server that
//! answers every request with what it received (method, path, headers) and, when it knows a
//! subject, what authz-sidecar decided for that request, asked over the Unix socket the pod
//! shares — the two ways an app uses the sidecar, visible in one `curl`.
//!
//! Environment:
//! - `APP_LISTEN` — address to listen on (default `127.0.0.1:8080`);
//! - `AUTHZ_SOCKET` — the sidecar's Unix socket; without it no Check is made.
//!
//! The subject is `x-authz-subject` (set by Envoy's ext_authz in the Envoy overlays, where the
//! request was already decided), else `x-subject` (the base, where nothing authenticates the
//! caller: a demonstration of the API, not an authentication scheme).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use authz_sidecar::api::pb::authz_client::AuthzClient;
use authz_sidecar::api::pb::{CheckRequest, HttpRequest, check_request};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tonic::transport::{Endpoint, Uri};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let listen: SocketAddr = std::env::var("APP_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:8080".to_owned())
        .parse()
        .map_err(|e| format!("APP_LISTEN: {e}"))?;
    let socket = std::env::var_os("AUTHZ_SOCKET").map(PathBuf::from);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "authz-example-app listening on {listen}; sidecar socket: {}",
        socket
            .as_deref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => return Ok(()),
        };
        let socket = socket.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, socket.clone()));
            // A connection the client breaks off is its business.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The JSON echo of `request`, with the sidecar's decision when there is a subject.
async fn answer(
    request: Request<Incoming>,
    socket: Option<PathBuf>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_owned());
    let headers: Vec<[String; 2]> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            [
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ]
        })
        .collect();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let subject = header("x-authz-subject").or_else(|| header("x-subject"));
    let check = match (socket, subject) {
        (Some(socket), Some(subject)) => check(socket, &subject, &method, &path)
            .await
            .unwrap_or_else(|e| json!({ "error": e.to_string() })),
        _ => Value::Null,
    };
    let body = json!({
        "method": method,
        "path": target,
        "headers": headers,
        "check": check,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Asks the sidecar over its Unix socket whether `subject` may do `method path`.
async fn check(socket: PathBuf, subject: &str, method: &str, path: &str) -> Result<Value, Error> {
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    let response = AuthzClient::new(channel)
        .check(CheckRequest {
            subject: subject.to_owned(),
            action: Some(check_request::Action::Http(HttpRequest {
                method: method.to_owned(),
                path: path.to_owned(),
            })),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(json!({
        "subject": subject,
        "allowed": response.allowed,
        "reason": response.reason,
        "revision": response.revision,
    }))
}
