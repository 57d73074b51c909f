//! Through a real Envoy (the shipped `k8s/overlays/envoy/envoy.yaml`, and the same listener
//! with path normalization off) to an echo upstream: what the app receives, and what never
//! reaches it. The harness is `tests/envoy_harness/mod.rs`; without an Envoy binary these tests
//! print `SKIPPED` (and fail with `CI=true`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

mod common;
#[path = "envoy_harness/mod.rs"]
mod envoy_harness;

use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use envoy_harness::{Front, Stack};

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
