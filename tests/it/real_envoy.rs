//! Through a real Envoy to an echo upstream: what the app receives, and what never reaches it.
//! The listeners are the shipped ones with addresses replaced: `k8s/overlays/envoy/envoy.yaml`
//! (subject from jwt_authn, tokens signed here), the same with the SPIFFE mTLS snippet of
//! docs/deploy.md (certificates made here), and the opt-in
//! `k8s/overlays/envoy-trusted-header/envoy.yaml` (subject header, with and without path
//! normalization and `encode_raw_headers`, enforce and shadow). One Envoy serves them all. The
//! harness is `tests/it/envoy_harness/mod.rs`; without an Envoy binary these tests print `SKIPPED`
//! (and fail with `CI=true`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;
use crate::envoy_harness;

use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use envoy_harness::{
    Connection, EnvoyFile, Front, JWT_AUDIENCE, JWT_ISSUER, Listener, SHIPPED, SPIFFE_DASHBOARD,
    SPIFFE_STRANGER, Stack, TRUSTED_HEADER, TlsFiles, now,
};
use serde_json::json;
use std::time::{Duration, Instant};

fn stack() -> Option<&'static Stack> {
    Stack::shared(EMBEDDED_DEFAULT)
}

/// The headers the sidecar owns, as a client would forge them.
const FORGED: [(&str, &str); 3] = [
    ("x-authz-subject", "dispatcher"),
    ("x-authz-revision", "999"),
    ("x-authz-shadow-denied", "forged"),
];

#[test]
fn allowed_requests_reach_the_upstream_with_subject_and_revision() {
    let Some(stack) = stack() else { return };
    for front in Front::all() {
        let reply = stack.send(
            front,
            "GET",
            "/v1/devices/d1?page=2",
            &[("x-subject", "dashboard")],
        );
        assert_eq!(reply.status, 200, "{front:?}: {}", reply.body);
        let up = reply.upstream.expect("reached the upstream");
        assert_eq!(up.method, "GET");
        assert_eq!(up.path, "/v1/devices/d1?page=2", "{front:?}");
        assert_eq!(up.values("x-authz-subject"), ["dashboard"], "{front:?}");
        assert_eq!(up.values("x-authz-revision"), ["1"], "{front:?}");
        assert!(up.values("x-subject").is_empty(), "{front:?}: stripped");
        assert!(up.values("x-authz-shadow-denied").is_empty(), "{front:?}");
    }
}

#[test]
fn denied_requests_are_403_json_and_never_reach_the_upstream() {
    let Some(stack) = stack() else { return };
    for front in [Front::SHIPPED, Front::UNNORMALIZED, Front::SHIPPED.raw()] {
        let reply = stack.send(
            front,
            "POST",
            "/v1/alarms/a1/dispatch",
            &[("x-subject", "dashboard")],
        );
        assert_eq!(reply.status, 403, "{front:?}");
        assert!(reply.upstream.is_none(), "{front:?}");
        let body = reply.json();
        assert_eq!(body["allowed"], false, "{}", reply.body);
        assert!(
            body["reason"].as_str().unwrap().contains("alarms:write"),
            "{}",
            reply.body
        );
        assert_eq!(body["revision"], 1);

        let anonymous = stack.send(front, "GET", "/v1/devices/d1", &[]);
        assert_eq!(anonymous.status, 401, "{front:?}");
        assert!(anonymous.upstream.is_none());
        assert!(
            anonymous.json()["reason"]
                .as_str()
                .unwrap()
                .contains("missing subject")
        );
    }
}

/// Issue 12 §5 through Envoy: whatever the mode, the encoding and the decision, the upstream
/// sees the sidecar's value of each owned header or none, never the client's.
#[test]
fn forged_owned_headers_never_reach_the_upstream() {
    let Some(stack) = stack() else { return };
    // (method, path, subject, allowed)
    let cases = [
        ("GET", "/v1/devices/d1", Some("dashboard"), true),
        ("POST", "/v1/alarms/a1/dispatch", Some("dashboard"), false),
        ("GET", "/v1/devices/d1", Some("stranger"), false),
        ("GET", "/v1/devices/d1", None, false),
    ];
    for front in Front::all() {
        for (method, path, subject, allowed) in cases {
            // Each forged header once, then each twice.
            for copies in [1, 2] {
                let mut headers: Vec<(&str, &str)> = Vec::new();
                for _ in 0..copies {
                    headers.extend(FORGED);
                }
                headers.extend(subject.map(|s| ("x-subject", s)));
                let reply = stack.send(front, method, path, &headers);
                let context = format!("{front:?} {method} {path} {subject:?} x{copies}");
                let Some(up) = reply.upstream else {
                    assert!(
                        !front.shadow && !allowed,
                        "{context}: {} {}",
                        reply.status,
                        reply.body
                    );
                    continue;
                };
                assert!(front.shadow || allowed, "{context}: reached the upstream");
                assert_eq!(up.values("x-authz-revision"), ["1"], "{context}");
                assert!(up.values("x-subject").is_empty(), "{context}");
                if allowed {
                    assert_eq!(up.values("x-authz-subject"), ["dashboard"], "{context}");
                    assert!(up.values("x-authz-shadow-denied").is_empty(), "{context}");
                } else {
                    assert!(up.values("x-authz-subject").is_empty(), "{context}: {up:?}");
                    let marks = up.values("x-authz-shadow-denied");
                    assert_eq!(marks.len(), 1, "{context}: {marks:?}");
                    assert_ne!(marks[0], "forged", "{context}");
                }
            }
        }
    }
}

/// Issue 12 §6 through Envoy: two subject headers are 401, with the `headers` map (joined
/// with `,`) and with `encode_raw_headers: true` (listed one by one) alike.
#[test]
fn more_than_one_subject_header_is_401_in_both_encodings() {
    let Some(stack) = stack() else { return };
    for front in [
        Front::SHIPPED,
        Front::SHIPPED.raw(),
        Front::UNNORMALIZED.raw(),
    ] {
        for pair in [
            ["dashboard", "dispatcher"],
            ["dispatcher", "dashboard"],
            ["dashboard", "dashboard"],
        ] {
            let reply = stack.send(
                front,
                "GET",
                "/v1/devices/d1",
                &[("x-subject", pair[0]), ("x-subject", pair[1])],
            );
            assert_eq!(reply.status, 401, "{front:?} {pair:?}: {}", reply.body);
            assert!(reply.upstream.is_none());
            let reason = reply.json()["reason"].as_str().unwrap().to_owned();
            assert!(
                reason.contains("exactly one"),
                "{front:?} {pair:?}: {reason}"
            );
        }
    }
}

/// `replay` sends paths as written: the unnormalized front hands them to the upstream
/// verbatim, the shipped one normalizes (and rejects encoded slashes itself).
#[test]
fn replay_sends_raw_paths_and_reports_what_the_upstream_received() {
    let Some(stack) = stack() else { return };
    let paths = [
        "/v1/devices/d1",
        "//v1//devices/./d1",
        "/v1/devices/d1%2Fx",
        "/v1/alarms/a1/dispatch",
    ];
    let shipped = stack.replay(Front::SHIPPED, "GET", "dashboard", &paths);
    assert_eq!(
        shipped,
        [
            (200, Some("/v1/devices/d1".to_owned())),
            (200, Some("/v1/devices/d1".to_owned())),
            (400, None),
            (403, None),
        ]
    );
    // Without Envoy's normalization the sidecar refuses what it cannot read one way.
    let raw = stack.replay(Front::UNNORMALIZED, "GET", "dashboard", &paths[..2]);
    assert_eq!(raw[0], (200, Some("/v1/devices/d1".to_owned())));
    assert_eq!(raw[1], (403, None));
}

/// A client cannot have one request decided and another executed: the headers with which
/// frameworks override the method or the path never reach the upstream of an allowed request.
#[test]
fn routing_override_headers_never_reach_the_upstream() {
    let Some(stack) = stack() else { return };
    for front in Front::all() {
        let reply = stack.send(
            front,
            "GET",
            "/v1/devices/d1",
            &[
                ("x-subject", "dashboard"),
                ("x-http-method-override", "DELETE"),
                ("X-HTTP-Method", "DELETE"),
                ("x-method-override", "DELETE"),
                ("x-original-url", "/v1/alarms/a1"),
                ("x-rewrite-url", "/v1/alarms/a1"),
            ],
        );
        assert_eq!(reply.status, 200, "{front:?}: {}", reply.body);
        let up = reply.upstream.expect("reached the upstream");
        for name in authz_sidecar::api::ROUTING_OVERRIDE_HEADERS {
            assert!(
                up.values(name).is_empty(),
                "{front:?}: {name} reached the app"
            );
        }
    }
}

/// The hostile corpus through a real Envoy, with the shipped normalization and without it, in
/// both header encodings: whatever reaches the upstream is a path the sidecar itself allows for
/// that subject, and without Envoy's normalization a request the corpus says is denied never
/// reaches it. In shadow mode
/// everything passes, but the app sees `x-authz-shadow-denied` exactly on the would-be denials
/// and never a forged subject.
#[test]
fn the_hostile_corpus_never_reaches_the_upstream_when_denied() {
    use authz_sidecar::engine::{Action, Request, Snapshot};
    use authz_sidecar::model::{CanonicalPath, PathOptions, file::parse_policy};
    use common::corpus::{corpus, example_text};

    let tricks = corpus();
    let mut wrong = Vec::new();
    for name in ["iot-roles", "monitoring-apps"] {
        let text = example_text(name);
        let Some(stack) = Stack::shared(&text) else {
            return;
        };
        let snapshot = Snapshot::compile(&parse_policy(name, &text).expect("valid example"), 1);
        let sidecar_allows = |subject: &str, method: &str, raw: &str| {
            CanonicalPath::parse(raw, PathOptions::default()).is_ok_and(|path| {
                snapshot
                    .decide(&Request {
                        subject,
                        action: Action::Http {
                            method,
                            path: &path,
                        },
                        scope: None,
                        resource: None,
                        inline: None,
                    })
                    .allowed
            })
        };
        for t in tricks.iter().filter(|t| t.example == name) {
            let headers = [("x-subject", t.subject.as_str()), FORGED[0], FORGED[2]];
            for front in [
                Front::SHIPPED,
                Front::UNNORMALIZED,
                Front::UNNORMALIZED.raw(),
            ] {
                let reply = stack.send(front, &t.method, &t.path, &headers);
                let Some(up) = reply.upstream else { continue };
                // Behind Envoy's normalization the sidecar decides the normalized path, which
                // is what the upstream receives; without it, the raw path must be refused.
                if !t.allow && !front.normalize {
                    wrong.push(format!(
                        "line {}: {front:?} {} {} reached the upstream as {}",
                        t.line, t.method, t.path, up.path
                    ));
                } else if !sidecar_allows(&t.subject, &up.method, &up.path) {
                    wrong.push(format!(
                        "line {}: {front:?} the upstream received {} {}, which {} may not do",
                        t.line, up.method, up.path, t.subject
                    ));
                }
                if up.values("x-authz-subject") != [t.subject.as_str()] {
                    wrong.push(format!(
                        "line {}: {front:?} forged subject reached the app",
                        t.line
                    ));
                }
            }
            let shadow = Front::UNNORMALIZED.in_shadow();
            let reply = stack.send(shadow, &t.method, &t.path, &headers);
            if let Some(up) = reply.upstream {
                let marked = !up.values("x-authz-shadow-denied").is_empty();
                let forged = up.values("x-authz-shadow-denied").contains(&"forged")
                    || up.values("x-authz-subject").contains(&"dispatcher");
                if forged || marked == t.allow {
                    wrong.push(format!(
                        "line {}: shadow {} {}: marked={marked} forged={forged}",
                        t.line, t.method, t.path
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The shipped Envoy files and the docs' snippets

/// The shipped files, addresses replaced (the CA bundle of the JWKS cluster too: a test machine
/// may have none), and every Envoy snippet of README.md and docs/*.md, placed where it says it
/// goes, pass `envoy --mode validate`.
#[test]
fn the_shipped_envoy_files_and_every_snippet_of_the_docs_pass_validate() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let tls = TlsFiles::generate(scratch.path());
    let ca = tls.dir.join("ca.crt").display().to_string();
    let mut configs = Vec::new();
    for file in [SHIPPED, TRUSTED_HEADER] {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
                .expect(file);
        configs.push((
            file.to_owned(),
            text.replace("/etc/ssl/certs/ca-certificates.crt", &ca),
        ));
    }
    let shipped = EnvoyFile::read(SHIPPED);
    let snippets = envoy_harness::envoy_snippets();
    assert!(
        snippets
            .iter()
            .any(|(_, s)| s.contains("DownstreamTlsContext")),
        "docs/deploy.md shows the SPIFFE mTLS listener"
    );
    for (place, snippet) in snippets {
        let first = snippet
            .lines()
            .find(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .unwrap_or_default();
        let config = if first.starts_with("transport_socket:") {
            let snippet = snippet.replace("/etc/envoy-tls/", &format!("{}/", tls.dir.display()));
            format!(
                "{}{}{}",
                shipped.head,
                envoy_harness::with_transport_socket(&shipped.listener, &snippet),
                shipped.clusters
            )
        } else if first.starts_with("admin:") || first.starts_with("static_resources:") {
            snippet.clone()
        } else {
            panic!(
                "{place}: an Envoy snippet this test cannot place (start it with \
                 `transport_socket:`, or make it a whole bootstrap)"
            );
        };
        configs.push((
            place,
            config.replace("/etc/ssl/certs/ca-certificates.crt", &ca),
        ));
    }
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .map(|(place, config)| scope.spawn(move || (place, envoy_harness::validate(config))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("validate"))
            .collect()
    });
    let mut refused = Vec::new();
    for (place, result) in results {
        match result {
            None => return,
            Some(Ok(())) => {}
            Some(Err(output)) => refused.push(format!("{place}:\n{output}")),
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Subject from jwt_authn (the shipped default)

fn claims(sub: Option<&str>, aud: &str, exp: u64) -> serde_json::Value {
    let mut claims = json!({"iss": JWT_ISSUER, "aud": aud, "iat": now() - 60, "exp": exp});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    claims
}

#[test]
fn the_shipped_listener_takes_the_subject_from_a_verified_jwt() {
    let Some(stack) = stack() else { return };
    let signer = &stack.extras().jwt;
    let bearer = |token: &str| format!("Bearer {token}");
    let valid = signer.sign(&claims(Some("dashboard"), JWT_AUDIENCE, now() + 600));

    // Valid: the subject is the `sub` claim, whatever header the caller adds.
    let auth = bearer(&valid);
    let reply = stack.send_to(
        Listener::Jwt,
        "GET",
        "/v1/devices/d1",
        &[
            ("authorization", &auth),
            ("x-subject", "dispatcher"),
            ("x-authz-subject", "dispatcher"),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let up = reply.upstream.expect("reached the upstream");
    assert_eq!(up.values("x-authz-subject"), ["dashboard"]);
    assert_eq!(up.values("x-authz-revision"), ["1"]);
    // Valid token, action not granted: the sidecar's 403.
    let denied = stack.send_to(
        Listener::Jwt,
        "POST",
        "/v1/alarms/a1/dispatch",
        &[("authorization", &auth)],
    );
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(denied.upstream.is_none());
    assert!(
        denied.json()["reason"]
            .as_str()
            .unwrap()
            .contains("alarms:write"),
        "{}",
        denied.body
    );

    // Refused by jwt_authn before ext_authz: none reaches the upstream.
    let other = envoy_harness::JwtSigner::generate("test-key");
    let cases = [
        ("no token", None, 401),
        (
            "expired",
            Some(signer.sign(&claims(Some("dashboard"), JWT_AUDIENCE, now() - 120))),
            401,
        ),
        (
            "forged (another key, same kid)",
            Some(other.sign(&claims(Some("dashboard"), JWT_AUDIENCE, now() + 600))),
            401,
        ),
        (
            "wrong audience",
            Some(signer.sign(&claims(Some("dashboard"), "another-app", now() + 600))),
            403,
        ),
        ("not a JWT", Some("not.a.jwt".to_owned()), 401),
    ];
    for (what, token, status) in cases {
        let auth = token.as_deref().map(bearer);
        let mut headers = vec![("x-subject", "dashboard")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        let reply = stack.send_to(Listener::Jwt, "GET", "/v1/devices/d1", &headers);
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(reply.upstream.is_none(), "{what}: reached the upstream");
    }

    // Verified, but without `sub`: the sidecar finds no subject.
    let no_sub = bearer(&signer.sign(&claims(None, JWT_AUDIENCE, now() + 600)));
    let reply = stack.send_to(
        Listener::Jwt,
        "GET",
        "/v1/devices/d1",
        &[("authorization", &no_sub), ("x-subject", "dashboard")],
    );
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply.upstream.is_none());
    let reason = reply.json()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("missing subject") && reason.contains("`sub`"),
        "{reason}"
    );
}

// ---------------------------------------------------------------------------------------------
// Subject from SPIFFE mTLS

#[test]
fn the_spiffe_listener_takes_the_subject_from_the_client_certificate() {
    let Some(stack) = stack() else { return };
    let reply = stack
        .send_mtls(
            Some(SPIFFE_DASHBOARD),
            "GET",
            "/v1/devices/d1",
            &[("x-subject", "dispatcher")],
        )
        .expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let up = reply.upstream.expect("reached the upstream");
    assert_eq!(up.values("x-authz-subject"), [SPIFFE_DASHBOARD]);

    let denied = stack
        .send_mtls(
            Some(SPIFFE_DASHBOARD),
            "POST",
            "/v1/alarms/a1/dispatch",
            &[],
        )
        .expect("an answer");
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(denied.upstream.is_none());

    let stranger = stack
        .send_mtls(Some(SPIFFE_STRANGER), "GET", "/v1/devices/d1", &[])
        .expect("an answer");
    assert_eq!(stranger.status, 403, "{}", stranger.body);
    assert!(stranger.upstream.is_none());

    // No client certificate: the handshake fails, no HTTP answer at all.
    let anonymous = stack.send_mtls(None, "GET", "/v1/devices/d1", &[("x-subject", "dashboard")]);
    assert!(anonymous.is_err(), "{anonymous:?}");
    // Nor does plain HTTP get through.
    let mut plain =
        std::net::TcpStream::connect(("127.0.0.1", stack.listener_port(Listener::Spiffe)))
            .expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    use std::io::{Read, Write};
    let _ =
        plain.write_all(b"GET /v1/devices/d1 HTTP/1.1\r\nhost: a\r\nx-subject: dashboard\r\n\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("x-echo-upstream"),
        "plain HTTP reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// The opt-in header source

/// A caller that is not the trusted hop cannot name the subject: Envoy removes its `x-subject`
/// before ext_authz runs, so the request has none.
#[test]
fn the_trusted_header_listener_removes_the_subject_header_of_other_callers() {
    let Some(stack) = stack() else { return };
    for headers in [
        vec![("x-subject", "dashboard")],
        vec![("x-subject", "dashboard"), ("X-Subject", "dashboard")],
    ] {
        let reply = stack.send_to(Listener::Untrusted, "GET", "/v1/devices/d1", &headers);
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert!(reply.upstream.is_none());
        assert!(
            reply.json()["reason"]
                .as_str()
                .unwrap()
                .contains("missing subject"),
            "{}",
            reply.body
        );
    }
    // From the trusted hop the same request is allowed.
    let trusted = stack.send(
        Front::SHIPPED,
        "GET",
        "/v1/devices/d1",
        &[("x-subject", "dashboard")],
    );
    assert_eq!(trusted.status, 200, "{}", trusted.body);
}

/// The shipped `max_headers_count` leaves room for what the sidecar and Envoy add: a request
/// of up to 100 headers (Envoy's default limit) reaches the app with its subject and revision;
/// closer to the limit Envoy refuses it (500 once ext_authz added its headers, 431 over the
/// limit), and never lets it through without the sidecar's headers.
#[test]
fn the_header_count_limit_leaves_room_for_the_added_headers() {
    let Some(stack) = stack() else { return };
    let limit: usize =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED))
            .expect("shipped")
            .lines()
            .find_map(|l| l.trim().strip_prefix("max_headers_count:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("the shipped listener sets max_headers_count");
    let names: Vec<String> = (0..limit).map(|i| format!("x-filler-{i}")).collect();
    // `count` request headers in all: `host`, `x-subject`, `connection` and fillers.
    let send = |front: Front, count: usize| {
        let mut headers = vec![("x-subject", "dashboard")];
        headers.extend(names[..count - 3].iter().map(|n| (n.as_str(), "1")));
        stack.send(front, "GET", "/v1/devices/d1", &headers)
    };
    for front in [Front::SHIPPED, Front::SHIPPED.in_shadow()] {
        let reply = send(front, 100);
        assert_eq!(reply.status, 200, "{front:?}: {}", reply.body);
        let up = reply.upstream.expect("reached the upstream");
        assert_eq!(up.values("x-authz-subject"), ["dashboard"], "{front:?}");
        assert_eq!(up.values("x-authz-revision"), ["1"], "{front:?}");
        for count in 101..=limit + 1 {
            let reply = send(front, count);
            match reply.upstream {
                Some(up) => {
                    assert_eq!(reply.status, 200);
                    assert_eq!(up.values("x-authz-subject"), ["dashboard"], "{count}");
                    assert_eq!(up.values("x-authz-revision"), ["1"], "{count}");
                }
                None => assert!(
                    [431, 500].contains(&reply.status),
                    "{front:?} {count} headers: {} {}",
                    reply.status,
                    reply.body
                ),
            }
        }
        assert_eq!(send(front, limit + 1).status, 431, "{front:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The sidecar stopped and restarted, and a policy change, under a running Envoy

/// Polls `listener` until `status` comes back (at most 15 s); returns the last reply.
fn until_status(
    stack: &Stack,
    listener: Listener,
    subject: &str,
    status: u16,
) -> envoy_harness::Reply {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = stack.send_to(listener, "GET", "/v1/devices/d1", &[("x-subject", subject)]);
        if reply.status == status || Instant::now() > deadline {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stopped_sidecar_is_503_and_envoy_recovers_when_it_restarts() {
    let Some(stack) = stack() else { return };
    let mut lifecycle = stack.lifecycle();
    let listeners = [Listener::LifecycleTcp, Listener::LifecycleUds];
    for listener in listeners {
        let reply = until_status(stack, listener, "dashboard", 200);
        assert_eq!(reply.status, 200, "{listener:?}: {}", reply.body);
    }
    let stopped_at = Instant::now();
    lifecycle.stop();
    for listener in listeners {
        // The shipped status_on_error: ServiceUnavailable, and nothing reaches the app.
        let reply = stack.send_to(
            listener,
            "GET",
            "/v1/devices/d1",
            &[("x-subject", "dashboard")],
        );
        assert_eq!(reply.status, 503, "{listener:?}: {}", reply.body);
        assert!(reply.upstream.is_none(), "{listener:?}: failed open");
    }
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    lifecycle.start();
    for listener in listeners {
        let reply = until_status(stack, listener, "dashboard", 200);
        assert_eq!(
            reply.status, 200,
            "{listener:?}: Envoy did not recover: {}",
            reply.body
        );
        let up = reply.upstream.expect("reached the upstream");
        assert_eq!(up.values("x-authz-subject"), ["dashboard"]);
    }
}

/// An admin write reaches the next request of a connection Envoy already holds open (to the
/// client and to the sidecar), over TCP and over the Unix socket.
#[test]
fn a_policy_change_reaches_envoys_open_connections() {
    use authz_sidecar::api::pb;
    let Some(stack) = stack() else { return };
    let lifecycle = stack.lifecycle();
    let mut connections: Vec<(Listener, Connection)> =
        [Listener::LifecycleTcp, Listener::LifecycleUds]
            .into_iter()
            .map(|l| {
                until_status(stack, l, "readonly", 200);
                (l, Connection::open(stack, l))
            })
            .collect();
    let mut revision = 0;
    for (listener, connection) in &mut connections {
        let reply = connection.send("GET", "/v1/devices/d1", &[("x-subject", "readonly")]);
        assert_eq!(reply.status, 200, "{listener:?}: {}", reply.body);
        let up = reply.upstream.expect("reached the upstream");
        revision = up.values("x-authz-revision")[0]
            .parse::<u64>()
            .expect("revision");
    }
    let written = lifecycle.with_client(async |client| {
        client
            .delete_subject(common::admin(pb::DeleteSubjectRequest {
                id: "readonly".into(),
                expected_revision: 0,
            }))
            .await
            .expect("delete subject")
            .into_inner()
            .revision
    });
    assert!(written > revision);
    for (listener, connection) in &mut connections {
        let reply = connection.send("GET", "/v1/devices/d1", &[("x-subject", "readonly")]);
        assert_eq!(reply.status, 403, "{listener:?}: {}", reply.body);
        assert!(reply.upstream.is_none());
        assert_eq!(reply.json()["revision"], json!(written), "{}", reply.body);
    }
}
