//! HTTP/JSON (`--http-listen`), asked with real HTTP clients: curl and Python's urllib in
//! subprocesses. Every answer and error is compared with the gRPC answer to the same request
//! on the same sidecar; the attacks (huge and nested bodies, duplicate keys, wrong types,
//! unknown fields and paths, missing tokens, hostile request paths) must get the documented
//! refusals and nothing else.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use authz_sidecar::api::pb;
use authz_sidecar::config::{AdminExposure, TlsConfig};
use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use common::corpus::{corpus, example_text};
use common::*;
use serde_json::{Value, json};
use tonic::Code;

/// Whether curl and python3 can run; without them a test prints a loud SKIPPED line and
/// returns, except under `CI=true`, where a test that cannot run fails.
fn clients_missing() -> bool {
    let python = std::env::var("AUTHZ_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let runs = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = [("curl", runs("curl")), ("python3", runs(&python))]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    if missing.is_empty() {
        return false;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {missing:?} cannot run (bash .ci/run installs curl)"
    );
    eprintln!("\n*** SKIPPED: {missing:?} not installed; an HTTP/JSON test did not run ***\n");
    true
}

/// What curl saw.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: Value,
}

/// POSTs `body` (JSON content type unless `args` sets one) to `path` with curl; `args` come
/// before the URL.
fn curl(addr: SocketAddr, path: &str, body: &[u8], args: &[&str]) -> Answer {
    curl_url(&format!("http://{addr}{path}"), body, args)
}

fn curl_url(url: &str, body: &[u8], args: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-D", "-", "-w", "\n%{http_code}"]);
    if !args.iter().any(|a| a.starts_with("-X")) {
        cmd.args(["-X", "POST"]);
    }
    if !args
        .iter()
        .any(|a| a.to_ascii_lowercase().starts_with("content-type"))
    {
        cmd.args(["-H", "content-type: application/json"]);
    }
    cmd.args(["--data-binary", "@-"]).args(args).arg(url);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs (install curl)");
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_vec();
    // Written from a thread: a server that answers before reading a large body must not
    // deadlock the test.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output().expect("curl finishes");
    let _ = writer.join();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').expect("status line");
    if code.trim() == "000" {
        eprintln!("curl: {}", String::from_utf8_lossy(&out.stderr));
    }
    let status: u16 = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl gave no status: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // With `-D -` every response's headers come first (a `100 Continue` too): the body
    // follows the last blank line of headers.
    let mut headers = String::new();
    let mut body = rest;
    while body.starts_with("HTTP/") {
        let (head, tail) = body.split_once("\r\n\r\n").unwrap_or((body, ""));
        headers = head.to_owned();
        body = tail;
    }
    let body = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// The JSON a gRPC answer or error must become over HTTP.
fn expected<T: serde::Serialize>(
    result: Result<tonic::Response<T>, tonic::Status>,
) -> (u16, Value) {
    match result {
        Ok(r) => (200, serde_json::to_value(r.get_ref()).unwrap()),
        Err(s) => (
            authz_sidecar::api::http_json::http_status(s.code()).as_u16(),
            json!({ "code": s.code() as i32, "message": s.message() }),
        ),
    }
}

fn post<T: serde::Serialize>(addr: SocketAddr, path: &str, message: &T, args: &[&str]) -> Answer {
    curl(addr, path, &serde_json::to_vec(message).unwrap(), args)
}

fn same(answer: &Answer, want: (u16, Value), what: &str) {
    assert_eq!(
        (answer.status, &answer.body),
        (want.0, &want.1),
        "{what}: HTTP and gRPC differ"
    );
}

const BEARER: &str = "authorization: Bearer test-bootstrap-token";

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_what_grpc_answers() {
    if clients_missing() {
        return;
    }
    let sc = start(EMBEDDED_DEFAULT).await;
    let addr = sc.sidecar.http_addr().expect("http listener");
    let mut client = sc.client().await;

    let mut explained = permission("dashboard", "devices:read");
    explained.explain = true;
    let checks = [
        permission("dashboard", "devices:read"),
        permission("dashboard", "no-such-permission"),
        permission("nobody", "devices:read"),
        http("dashboard", "GET", "/v1/devices/d1"),
        http("dashboard", "DELETE", "/v1/devices/d1"),
        event("dispatcher", "alarm.raised"),
        explained,
        // Refusals: INVALID_ARGUMENT naming the field, over both.
        permission("", "devices:read"),
        pb::CheckRequest {
            subject: "dashboard".into(),
            ..Default::default()
        },
        pb::CheckRequest {
            min_revision: 1 << 40,
            ..permission("dashboard", "devices:read")
        },
    ];
    for request in checks {
        let answer = post(addr, "/v1/check", &request, &[]);
        let want = expected(client.check(request.clone()).await);
        same(&answer, want, &format!("{request:?}"));
    }
    let answer = post(
        addr,
        "/v1/check",
        &permission("dashboard", "devices:read"),
        &[],
    );
    assert_eq!(answer.body["allowed"], json!(true));
    assert!(answer.headers.contains("content-type: application/json"));

    let batch = pb::CheckBatchRequest {
        items: vec![
            permission("dashboard", "devices:read"),
            permission("readonly", "alarms:write"),
            http("dashboard", "GET", "/v1/devices/%2e%2e/admin"),
        ],
        min_revision: 0,
    };
    let answer = post(addr, "/v1/checkBatch", &batch, &[]);
    same(
        &answer,
        expected(client.check_batch(batch.clone()).await),
        "batch",
    );
    let empty = pb::CheckBatchRequest::default();
    let answer = post(addr, "/v1/checkBatch", &empty, &[]);
    same(
        &answer,
        expected(client.check_batch(empty).await),
        "empty batch",
    );
    assert_eq!(answer.status, 400);

    // ListRoles pages the same way: follow the tokens to the end.
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = pb::ListRolesRequest {
            page_size: 2,
            page_token: token.clone(),
            kind: String::new(),
        };
        let answer = post(addr, "/v1/listRoles", &request, &[]);
        let want = expected(client.list_roles(request).await);
        same(&answer, want, "list roles");
        pages += 1;
        match answer.body["nextPageToken"].as_str() {
            Some(next) => token = next.to_owned(),
            None => break,
        }
    }
    assert!(pages > 1, "several pages");

    // Admin reads: the bearer token, as over gRPC.
    let get = pb::GetSubjectRequest {
        id: "dashboard".into(),
    };
    let answer = post(addr, "/v1/getSubject", &get, &[]);
    same(
        &answer,
        expected(client.get_subject(get.clone()).await),
        "no token",
    );
    assert_eq!(answer.status, 401);
    let wrong = ["-H", "authorization: Bearer not-the-token"];
    let answer = post(addr, "/v1/getSubject", &get, &wrong);
    same(
        &answer,
        expected(
            client
                .get_subject(with_token(get.clone(), "not-the-token"))
                .await,
        ),
        "wrong token",
    );
    assert_eq!(answer.status, 401);
    let answer = post(addr, "/v1/getSubject", &get, &["-H", BEARER]);
    same(
        &answer,
        expected(client.get_subject(admin(get.clone())).await),
        "get",
    );
    assert_eq!(answer.body["subject"]["id"], json!("dashboard"));
    let missing = pb::GetSubjectRequest { id: "ghost".into() };
    let answer = post(addr, "/v1/getSubject", &missing, &["-H", BEARER]);
    same(
        &answer,
        expected(client.get_subject(admin(missing)).await),
        "missing",
    );
    assert_eq!(answer.status, 404);
    let list = pb::ListSubjectsRequest {
        page_size: 2,
        ..Default::default()
    };
    let answer = post(addr, "/v1/listSubjects", &list, &["-H", BEARER]);
    same(
        &answer,
        expected(client.list_subjects(admin(list.clone())).await),
        "subjects",
    );
    assert!(answer.body["nextPageToken"].is_string());
    let answer = post(addr, "/v1/listSubjects", &list, &[]);
    assert_eq!(answer.status, 401);
    sc.sidecar.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_is_the_canonical_proto3_mapping() {
    if clients_missing() {
        return;
    }
    let sc = start(EMBEDDED_DEFAULT).await;
    let addr = sc.sidecar.http_addr().unwrap();
    let body = |text: &str| curl(addr, "/v1/check", text.as_bytes(), &[]);
    let answer = body(r#"{"subject":"dashboard","permission":"devices:read"}"#);
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    // uint64 as a string, lowerCamelCase names, defaults left out.
    let revision = answer.body["revision"]
        .as_str()
        .expect("revision is a string");
    assert!(revision.parse::<u64>().unwrap() > 0);
    assert!(
        answer.body.get("explanation").is_none(),
        "{:?}",
        answer.body
    );
    let denied = body(r#"{"subject":"readonly","permission":"alarms:write"}"#);
    assert!(denied.body.get("allowed").is_none(), "false is left out");
    // Both name forms on input; uint64 as a string or a number; null is the default.
    for text in [
        format!(
            r#"{{"subject":"dashboard","permission":"devices:read","minRevision":"{revision}"}}"#
        ),
        format!(
            r#"{{"subject":"dashboard","permission":"devices:read","min_revision":{revision}}}"#
        ),
        r#"{"subject":"dashboard","permission":"devices:read","scope":null}"#.to_owned(),
        r#"{"subject":"dashboard","http":{"method":"GET","path":"/v1/devices/d1"}}"#.to_owned(),
    ] {
        let answer = body(&text);
        assert_eq!(
            (answer.status, &answer.body["allowed"]),
            (200, &json!(true)),
            "{text}"
        );
    }
    let batch = curl(
        addr,
        "/v1/checkBatch",
        br#"{"items":[{"subject":"dashboard","permission":"devices:read","subjectType":"app"}]}"#,
        &[],
    );
    assert_eq!(batch.status, 200, "{:?}", batch.body);
    assert!(batch.body["results"][0].is_object());
    // A content type with parameters is still JSON.
    let answer = curl(
        addr,
        "/v1/check",
        br#"{"subject":"dashboard","permission":"devices:read"}"#,
        &["-H", "Content-Type: application/json; charset=utf-8"],
    );
    assert_eq!(answer.status, 200);
    sc.sidecar.stop().await.unwrap();
}

/// A 400 whose message says `needle`.
fn refused(answer: &Answer, status: u16, needle: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "`{needle}` not in `{message}`");
    assert!(answer.body["code"].is_number(), "{:?}", answer.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_bodies_methods_and_paths_are_refused_cleanly() {
    if clients_missing() {
        return;
    }
    let sc = start(EMBEDDED_DEFAULT).await;
    let addr = sc.sidecar.http_addr().unwrap();
    let check = |text: &[u8]| curl(addr, "/v1/check", text, &[]);
    // Unknown fields are named; so are duplicates and wrong types.
    refused(
        &check(br#"{"subject":"a","permision":"x"}"#),
        400,
        "unknown field `permision`",
    );
    refused(
        &check(br#"{"subject":"a","subject":"b","permission":"x"}"#),
        400,
        "duplicate field `subject`",
    );
    refused(
        &check(br#"{"subject":"a","permission":"x","event":"y"}"#),
        400,
        "duplicate field",
    );
    refused(
        &check(br#"{"subject":7,"permission":"x"}"#),
        400,
        "invalid type",
    );
    refused(
        &check(br#"{"subject":"a","permission":"x","minRevision":-1}"#),
        400,
        "invalid",
    );
    refused(
        &check(br#"{"subject":"a","permission":"x","explain":"yes"}"#),
        400,
        "invalid type",
    );
    refused(&check(br#"["subject"]"#), 400, "invalid type");
    refused(&check(br#"{"subject":"a""#), 400, "EOF");
    refused(&check(b""), 400, "EOF");
    refused(
        &check(b"{\"subject\":\"\xff\xfe\",\"permission\":\"x\"}"),
        400,
        "unicode",
    );
    // A repeat is a repeat even when one of them is null; a null inside a list is no default.
    refused(
        &check(br#"{"subject":"a","subject":null,"permission":"x"}"#),
        400,
        "duplicate field `subject`",
    );
    refused(
        &check(br#"{"subject":"a","min_revision":"1","minRevision":"1","permission":"x"}"#),
        400,
        "duplicate field",
    );
    refused(
        &check(br#"{"subject":"dashboard","permission":"devices:read","roles":[null]}"#),
        400,
        "invalid type: null",
    );
    // Deep nesting stops at serde_json's recursion limit, not the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    refused(&check(deep.as_bytes()), 400, "recursion limit");
    let nested = format!(
        r#"{{"subject":"a","http":{}}}"#,
        "{\"method\":".repeat(5000) + "\"GET\"" + &"}".repeat(5000)
    );
    refused(&check(nested.as_bytes()), 400, "invalid");
    // A body over the gRPC message cap, announced or streamed in chunks.
    let huge = format!(
        r#"{{"subject":"dashboard","permission":"devices:read","resource":"{}"}}"#,
        "r".repeat(2 * 1024 * 1024)
    );
    refused(&check(huge.as_bytes()), 413, "larger than");
    let chunked = curl(
        addr,
        "/v1/check",
        huge.as_bytes(),
        &["-H", "transfer-encoding: chunked"],
    );
    refused(&chunked, 413, "larger than");
    // Content type, method, path.
    let plain = curl(
        addr,
        "/v1/check",
        b"{}",
        &["-H", "content-type: text/plain"],
    );
    refused(&plain, 415, "application/json");
    let form = curl(
        addr,
        "/v1/check",
        b"subject=a",
        &["-H", "content-type: application/x-www-form-urlencoded"],
    );
    refused(&form, 415, "application/json");
    let none = curl(addr, "/v1/check", b"{}", &["-H", "content-type:"]);
    refused(&none, 415, "application/json");
    let get = curl(addr, "/v1/check", b"", &["-X", "GET"]);
    refused(&get, 405, "POST");
    assert!(
        get.headers.to_ascii_lowercase().contains("allow: post"),
        "{}",
        get.headers
    );
    for path in [
        "/",
        "/v1/check/",
        "/v1//check",
        "/v1/%63heck",
        "/v1/Check",
        "/v1/check/../listRoles",
        "/authz.v1.Authz/Check",
        "/v1/updatePermission",
        "/v1/putSubject",
        "/v1/listAudit",
        "/metrics",
    ] {
        let answer = curl(addr, path, b"{}", &["--path-as-is"]);
        refused(&answer, 404, "no such endpoint");
    }
    // The sidecar still answers.
    let answer = check(br#"{"subject":"dashboard","permission":"devices:read"}"#);
    assert_eq!(answer.body["allowed"], json!(true));
    sc.sidecar.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_reads_follow_the_admin_exposure() {
    if clients_missing() {
        return;
    }
    // `--admin uds`: admin reads are refused over HTTP, even with the token, as on the TCP
    // API listener.
    let sc = start_with(EMBEDDED_DEFAULT, |c| c.admin = AdminExposure::UdsOnly).await;
    let addr = sc.sidecar.http_addr().unwrap();
    let get = pb::GetSubjectRequest {
        id: "dashboard".into(),
    };
    let answer = post(addr, "/v1/getSubject", &get, &["-H", BEARER]);
    let want = expected(sc.client().await.get_subject(admin(get.clone())).await);
    same(&answer, want, "admin uds");
    refused(&answer, 403, "not accepted on this listener");
    let answer = post(
        addr,
        "/v1/listSubjects",
        &pb::ListSubjectsRequest::default(),
        &["-H", BEARER],
    );
    refused(&answer, 403, "not accepted on this listener");
    // Check is not an admin call.
    let answer = post(
        addr,
        "/v1/check",
        &permission("dashboard", "devices:read"),
        &[],
    );
    assert_eq!(answer.body["allowed"], json!(true));
    sc.sidecar.stop().await.unwrap();

    let sc = start_with(EMBEDDED_DEFAULT, |c| c.listeners.http_listen = None).await;
    assert!(sc.sidecar.http_addr().is_none(), "off unless configured");
    sc.sidecar.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_mutual_tls_as_on_the_grpc_listener() {
    if clients_missing() {
        return;
    }
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: OpenSSL (curl) takes a leaf whose issuer equals its subject for
    // self-signed.
    params
        .distinguished_name
        .push(DnType::CommonName, "authz-sidecar test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf("localhost");
    let client = leaf("app.local");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let cert_file = write("client.pem", &client.0);
    let key_file = write("client.key", &client.1);
    let tls = TlsConfig {
        cert_pem: server.0.into_bytes(),
        key_pem: server.1.into_bytes(),
        client_ca_pem: Some(ca.pem().into_bytes()),
    };
    let sc = start_with(EMBEDDED_DEFAULT, |c| c.tls = Some(tls)).await;
    let port = sc.sidecar.http_addr().unwrap().port();
    let url = format!("https://localhost:{port}/v1/check");
    let body = br#"{"subject":"dashboard","permission":"devices:read"}"#;
    let resolve = format!("localhost:{port}:127.0.0.1");
    let with_cert = [
        "--resolve",
        &resolve,
        "--cacert",
        &ca_file,
        "--cert",
        &cert_file,
        "--key",
        &key_file,
    ];
    let answer = curl_url(&url, body, &with_cert);
    assert_eq!(
        (answer.status, &answer.body["allowed"]),
        (200, &json!(true))
    );
    // No client certificate, or plain text: no answer at all.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            "--cacert",
            &ca_file,
        ])
        .args(["-H", "content-type: application/json", "-d", "{}", &url])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no client certificate: refused");
    let plain = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", "content-type: application/json", "-d", "{}"])
        .arg(format!("http://127.0.0.1:{port}/v1/check"))
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&plain.stdout),
        "200",
        "plain text refused"
    );
    sc.sidecar.stop().await.unwrap();
}

/// Python's urllib, asking each of `requests` (JSON lines of `{"url","body"}`) in one process;
/// one `{"status","body"}` line per request.
const URLLIB: &str = r#"
import json, sys, urllib.request, urllib.error
for line in sys.stdin:
    ask = json.loads(line)
    req = urllib.request.Request(ask["url"], data=ask["body"].encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    print(json.dumps({"status": status, "body": json.loads(body)}), flush=True)
"#;

fn urllib(asks: &[(String, String)]) -> Vec<(u16, Value)> {
    let python = std::env::var("AUTHZ_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .args(["-c", URLLIB])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    let lines: String = asks
        .iter()
        .map(|(url, body)| json!({ "url": url, "body": body }).to_string() + "\n")
        .collect();
    let writer = std::thread::spawn(move || stdin.write_all(lines.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "urllib client failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (v["status"].as_u64().unwrap() as u16, v["body"].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_reach_the_same_canonicalizer_as_grpc() {
    if clients_missing() {
        return;
    }
    let tricks = corpus();
    let mut examples: Vec<String> = tricks.iter().map(|t| t.example.clone()).collect();
    examples.sort();
    examples.dedup();
    let mut compared = 0;
    for example in examples {
        let sc = start(&example_text(&example)).await;
        let addr = sc.sidecar.http_addr().unwrap();
        let mut client = sc.client().await;
        let mine: Vec<_> = tricks.iter().filter(|t| t.example == example).collect();
        let asks: Vec<(String, String)> = mine
            .iter()
            .map(|t| {
                let request = http(&t.subject, &t.method, &t.path);
                (
                    format!("http://{addr}/v1/check"),
                    serde_json::to_string(&request).unwrap(),
                )
            })
            .collect();
        let answers = urllib(&asks);
        assert_eq!(answers.len(), mine.len());
        for (trick, answer) in mine.iter().zip(answers) {
            let want = expected(
                client
                    .check(http(&trick.subject, &trick.method, &trick.path))
                    .await,
            );
            assert_eq!(
                answer, want,
                "hostile-paths.txt:{}: HTTP and gRPC differ",
                trick.line
            );
            if answer.0 == 200 {
                assert_eq!(
                    answer.1.get("allowed") == Some(&json!(true)),
                    trick.allow,
                    "hostile-paths.txt:{}",
                    trick.line
                );
            } else {
                assert!(
                    !trick.allow,
                    "hostile-paths.txt:{}: an allow refused",
                    trick.line
                );
            }
            compared += 1;
        }
        sc.sidecar.stop().await.unwrap();
    }
    assert!(compared > 50, "the whole corpus: {compared}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_is_cut_off_at_the_request_timeout() {
    if clients_missing() {
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sc = start_with(EMBEDDED_DEFAULT, |c| {
        c.limits.request_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    let addr = sc.sidecar.http_addr().unwrap();
    // Headers that never end, and a body that never comes: both closed, neither held.
    let mut slow_headers = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_headers
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut slow_body = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow_body.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the slow body is answered within the timeout");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow_headers.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "slow headers are cut off");
    // Others are served all along.
    let answer = curl(
        addr,
        "/v1/check",
        br#"{"subject":"dashboard","permission":"devices:read"}"#,
        &[],
    );
    assert_eq!(answer.body["allowed"], json!(true));
    assert_eq!(
        post(addr, "/v1/check", &permission("", "x"), &[]).body["code"],
        json!(Code::InvalidArgument as i32)
    );
    sc.sidecar.stop().await.unwrap();
}

/// A chunked body that never ends: the sidecar drains a bounded amount (8 MiB or 1 s), answers
/// 413 if the client is still listening, and closes; it never reads the whole stream.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_chunked_body_is_cut_off_after_a_bounded_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sc = start(EMBEDDED_DEFAULT).await;
    let addr = sc.sidecar.http_addr().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    const OFFERED: usize = 256 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        if write
            .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .is_err()
        {
            return sent;
        }
        let mut chunk = b"10000\r\n".to_vec();
        chunk.extend(std::iter::repeat_n(b'a', 0x10000));
        chunk.extend(b"\r\n");
        while sent < OFFERED {
            if write.write_all(&chunk).await.is_err() {
                break;
            }
            sent += 0x10000;
        }
        sent
    });
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        read.read_to_end(&mut answer),
    )
    .await;
    assert!(ended.is_ok(), "the connection is closed, not held open");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&answer);
    // Whether the answer arrives before the reset is the client's race; if it does, it is 413.
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 413"),
        "{text}"
    );
    let sent = tokio::time::timeout(std::time::Duration::from_secs(10), writer)
        .await
        .expect("the writer stops once the connection is gone")
        .unwrap();
    assert!(sent < OFFERED, "the whole body was read: {sent} bytes");
    sc.sidecar.stop().await.unwrap();
}
