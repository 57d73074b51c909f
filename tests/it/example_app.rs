//! The example app of the Kubernetes manifests (`authz-example-app`, the `example-app` image):
//! started beside a real sidecar as the pod starts it (`APP_LISTEN`, `AUTHZ_SOCKET`), it echoes
//! what it received and what the sidecar decided over the Unix socket.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use serde_json::Value;

/// The app process, killed when the test ends however it ends.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// One request with `connection: close`; the JSON body of the answer.
fn get(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Value {
    let mut stream = TcpStream::connect(addr).expect("connect to the app");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("content-length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split_once("\r\n\r\n").expect("a body").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_echoes_the_request_and_the_sidecars_decision() {
    let sidecar = common::start(EMBEDDED_DEFAULT).await;
    let socket = sidecar.sidecar.uds_path().expect("uds").clone();
    let addr = free_addr();
    let app = App(Command::new(env!("CARGO_BIN_EXE_authz-example-app"))
        .env("APP_LISTEN", addr.to_string())
        .env("AUTHZ_SOCKET", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts the example app"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the app did not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let results = tokio::task::spawn_blocking(move || {
        let allowed = get(
            addr,
            "GET",
            "/v1/devices/d1?page=2",
            &[("x-authz-subject", "dashboard")],
        );
        let denied = get(
            addr,
            "POST",
            "/v1/alarms/a1/dispatch",
            &[("x-subject", "dashboard")],
        );
        let anonymous = get(addr, "GET", "/v1/devices/d1", &[]);
        (allowed, denied, anonymous)
    })
    .await
    .expect("requests");
    let (allowed, denied, anonymous) = results;

    assert_eq!(allowed["method"], "GET");
    assert_eq!(allowed["path"], "/v1/devices/d1?page=2");
    assert!(
        allowed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-authz-subject" && h[1] == "dashboard"),
        "{allowed}"
    );
    assert_eq!(allowed["check"]["allowed"], true, "{allowed}");
    assert_eq!(allowed["check"]["subject"], "dashboard");
    assert_eq!(allowed["check"]["revision"], 1);

    assert_eq!(denied["check"]["allowed"], false, "{denied}");
    assert!(
        denied["check"]["reason"]
            .as_str()
            .unwrap()
            .contains("alarms:write"),
        "{denied}"
    );
    assert_eq!(anonymous["check"], Value::Null, "{anonymous}");
    drop(app);
}
