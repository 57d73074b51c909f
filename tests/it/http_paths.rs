//! One canonical path for every HTTP decision.
//!
//! - The hostile corpus (`tests/fixtures/hostile-paths.txt`) gets the same answer from the engine,
//!   from `authz.v1 Check{http}` and from ext_authz, over a real server.
//! - A differential property: whenever the sidecar allows a path, every reading a real upstream
//!   could make of it (split-then-decode, decode-then-split, `;params` dropped then dots
//!   resolved, Envoy's normalization then the upstream's, a router matching the raw path, Unicode
//!   folding, a second decoding) lands on a route the subject is allowed, by the reference
//!   evaluator of `tests/it/oracle/`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;
use crate::oracle;

use std::path::PathBuf;

use authz_sidecar::engine::{Action, Decision, Request, Snapshot};
use authz_sidecar::model::file::load_policy_file;
use authz_sidecar::model::{CanonicalPath, PathOptions, Policy};
use common::corpus::corpus;
use common::*;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as Ctx};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use unicode_normalization::UnicodeNormalization;

fn example(name: &str) -> (Policy, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.yaml"));
    let policy = load_policy_file(&path).expect("example is valid");
    let text = std::fs::read_to_string(&path).expect("example exists");
    (policy, text)
}

/// The sidecar's own decision, as both APIs make it: canonicalize, then decide.
fn sidecar_allows(snapshot: &Snapshot, subject: &str, method: &str, raw: &str) -> (bool, String) {
    let decision_for = |path: &CanonicalPath<'_>| {
        let d = snapshot.decide(&Request {
            subject,
            action: Action::Http { method, path },
            scope: None,
            resource: None,
            inline: None,
        });
        (d.allowed, d.reason.to_string())
    };
    match CanonicalPath::parse(raw, PathOptions::default()) {
        Ok(path) => decision_for(&path),
        Err(rejection) => {
            let d = Decision::refused_path(rejection);
            (d.allowed, d.reason.to_string())
        }
    }
}

#[test]
fn the_corpus_is_large_and_decides_as_written_in_process() {
    let tricks = corpus();
    assert!(tricks.len() >= 100, "only {} tricks", tricks.len());
    let mut wrong = Vec::new();
    for name in ["iot-roles", "monitoring-apps"] {
        let snapshot = Snapshot::compile(&example(name).0, 1);
        for t in tricks.iter().filter(|t| t.example == name) {
            let (allowed, reason) = sidecar_allows(&snapshot, &t.subject, &t.method, &t.path);
            if allowed != t.allow {
                wrong.push(format!(
                    "line {}: {} {} {} -> allowed={allowed} ({reason})",
                    t.line, t.subject, t.method, t.path
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn ext_authz_request(subject: &str, method: &str, raw_path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Ctx {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: raw_path.into(),
                    host: "app.local".into(),
                    headers: [("x-subject".to_owned(), subject.to_owned())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn check_and_ext_authz_give_the_corpus_the_same_answers() {
    let tricks = corpus();
    let mut wrong = Vec::new();
    for name in ["iot-roles", "monitoring-apps"] {
        let sc = start(&example(name).1).await;
        let mut client = sc.client().await;
        let mut envoy = AuthorizationClient::new(sc.channel().await);
        for t in tricks.iter().filter(|t| t.example == name) {
            let answer = check(&mut client, http(&t.subject, &t.method, &t.path)).await;
            if answer.allowed != t.allow {
                wrong.push(format!(
                    "Check line {}: {} {} -> allowed={} ({})",
                    t.line, t.method, t.path, answer.allowed, answer.reason
                ));
            }
            if !t.allow && answer.allowed {
                continue;
            }
            let reply = envoy
                .check(ext_authz_request(&t.subject, &t.method, &t.path))
                .await
                .expect("ext_authz answers")
                .into_inner();
            let ext_allowed = reply.status.as_ref().is_some_and(|s| s.code == 0);
            if ext_allowed != t.allow {
                wrong.push(format!(
                    "ext_authz line {}: {} {} -> allowed={ext_allowed}",
                    t.line, t.method, t.path
                ));
            }
            if !t.allow {
                // A refused path names its rule in the Check reason as it does in the 403 body.
                assert!(!answer.reason.is_empty(), "line {}", t.line);
            }
        }
        sc.sidecar.stop().await.expect("clean stop");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_refused_path_is_a_denial_that_names_its_rule_not_an_error() {
    let sc = start(&example("iot-roles").1).await;
    let mut client = sc.client().await;
    let answer = check(&mut client, http("alice", "GET", "/users/alice/..;/bob")).await;
    assert!(!answer.allowed);
    assert_eq!(
        answer.reason,
        "refused path: it holds a `.` or `..` segment"
    );
    assert!(answer.required.is_empty());
    let answer = check(&mut client, http("alice", "GET", "/users/%61lice")).await;
    assert_eq!(
        answer.reason,
        "refused path: `a` is percent-encoded needlessly"
    );
    // Malformed requests stay INVALID_ARGUMENT, as before.
    let err = client
        .check(http("alice", "GET", "users/alice"))
        .await
        .expect_err("a path without `/` is malformed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    sc.sidecar.stop().await.expect("clean stop");
}

#[tokio::test]
async fn encoded_slashes_as_data_are_one_segment_when_the_operator_says_so() {
    let policy = r#"
catalog:
  permissions:
    - { name: projects:read, endpoints: ["GET /projects/{id}/issues"] }
    - { name: admin, endpoints: ["GET /projects/{id}/admin/issues"] }
roles:
  - { name: reader, kind: app, grants: [projects:read] }
subjects:
  - { id: app, type: app, roles: [reader] }
"#;
    let refusing = start(policy).await;
    let mut client = refusing.client().await;
    let answer = check(&mut client, http("app", "GET", "/projects/g%2Fp/issues")).await;
    assert!(!answer.allowed, "{}", answer.reason);
    assert!(answer.reason.contains("encoded `/`"), "{}", answer.reason);
    refusing.sidecar.stop().await.expect("clean stop");

    let data = start_with(policy, |c| {
        c.http_paths.encoded_slashes = authz_sidecar::model::EncodedSlashes::Data;
    })
    .await;
    let mut client = data.client().await;
    let answer = check(&mut client, http("app", "GET", "/projects/g%2Fp/issues")).await;
    assert!(answer.allowed, "{}", answer.reason);
    // Data never forms a literal: `%2F` cannot reach the admin route's extra segments.
    let answer = check(
        &mut client,
        http("app", "GET", "/projects/g%2Fadmin/issues"),
    )
    .await;
    assert!(answer.allowed, "{}", answer.reason);
    let answer = check(
        &mut client,
        http("app", "GET", "/projects/g/admin%2Fissues"),
    )
    .await;
    assert!(!answer.allowed, "{}", answer.reason);
    // Dot segments stay refused inside data.
    let answer = check(
        &mut client,
        http("app", "GET", "/projects/g%2F..%2Fx/issues"),
    )
    .await;
    assert!(!answer.allowed, "{}", answer.reason);
    data.sidecar.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------------------------------------
// The differential property

/// The part of a target every reader routes on: up to `?`.
fn before_query(raw: &str) -> &str {
    raw.split('?').next().unwrap_or(raw)
}

/// Percent-decoding as lenient servers do it: a bad escape is kept as text.
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A reader that needs UTF-8 rejects the request (400) otherwise: `None`.
fn utf8(bytes: Vec<u8>) -> Option<String> {
    String::from_utf8(bytes).ok()
}

/// RFC 3986 dot removal, with empty segments merged (what most routers end up matching).
fn resolve(segments: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in segments {
        match s.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(s),
        }
    }
    out
}

fn strip_params(segment: &str) -> &str {
    segment.split(';').next().unwrap_or(segment)
}

/// Each reading: the segments an upstream routes on, or `None` when it would reject the request.
fn readings(raw: &str) -> Vec<(&'static str, Option<Vec<String>>)> {
    let path = before_query(raw);
    let fragmentless = path.split('#').next().unwrap_or(path);
    let split_then_decode = |p: &str| -> Option<Vec<String>> {
        let segs: Option<Vec<String>> = p.split('/').map(|s| utf8(decode(s))).collect();
        Some(resolve(segs?))
    };
    let decode_then_split = |p: &str, seps: &[char]| -> Option<Vec<String>> {
        let d = utf8(decode(p))?;
        Some(resolve(d.split(seps).map(str::to_owned)))
    };
    // Envoy's normalize_path: %-escapes of unreserved characters decoded, `\` read as `/`,
    // dots resolved, slashes merged; the upstream then splits and decodes what it receives.
    let envoy = |p: &str| -> Option<Vec<String>> {
        let mut unreserved = String::new();
        let b = p.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let escape = (b[i] == b'%')
                .then(|| b.get(i + 1..i + 3))
                .flatten()
                .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
            match escape {
                Some(c) if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => {
                    unreserved.push(char::from(c));
                    i += 3;
                }
                _ => {
                    unreserved.push(char::from(b[i]));
                    i += 1;
                }
            }
        }
        let normalized = resolve(unreserved.replace('\\', "/").split('/').map(str::to_owned));
        split_then_decode(&normalized.join("/"))
    };
    vec![
        ("split-then-decode", split_then_decode(fragmentless)),
        ("split-then-decode, # kept", split_then_decode(path)),
        ("decode-then-split", decode_then_split(fragmentless, &['/'])),
        (
            "decode-then-split on / and \\",
            decode_then_split(fragmentless, &['/', '\\']),
        ),
        (
            "params dropped, then decoded and resolved",
            fragmentless
                .split('/')
                .map(|s| utf8(decode(strip_params(s))))
                .collect::<Option<Vec<_>>>()
                .map(resolve),
        ),
        (
            "decoded, params dropped, resolved",
            utf8(decode(fragmentless))
                .map(|d| resolve(d.split('/').map(|s| strip_params(s).to_owned()))),
        ),
        (
            "envoy normalize + merge, then upstream",
            envoy(fragmentless),
        ),
        (
            "raw router (no decoding, no dots)",
            Some(
                fragmentless
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
        ),
        (
            "NFKC folded",
            utf8(decode(fragmentless)).map(|d| {
                resolve(
                    d.nfkc()
                        .collect::<String>()
                        .split(['/', '\\'])
                        .map(str::to_owned),
                )
            }),
        ),
        (
            "decoded twice",
            utf8(decode(&String::from_utf8_lossy(&decode(fragmentless))))
                .map(|d| resolve(d.split('/').map(str::to_owned))),
        ),
    ]
}

const HOSTILE: &[&str] = &[
    ".",
    "..",
    "..;",
    ";x=1",
    "%2e",
    "%2E%2e",
    "%2f",
    "%2F",
    "%5c",
    "\\",
    "",
    "%00",
    "%3b",
    "%25",
    "%252e",
    "%252f",
    "%c0%ae",
    "%ff",
    "é",
    "．",
    "%ef%bc%8e",
    "%20",
    "%61lice",
    "%62ob",
    "?",
    "#",
    "%3f",
    "%23",
    "a%2fb",
    "／",
    "ａlice",
    "%0a",
    "~",
    "%7e",
    "+",
    "%2B",
    "@",
    "%40",
];

/// Path pieces drawn from a hostile alphabet, around the segments the example routes use.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => prop::sample::select(vec![
            "users", "alice", "bob", "thngs", "t1", "v1", "devices", "d1", "snapshots", "alarms",
            "a1", "dispatch", "collections", "c1", "roles",
        ]),
        4 => prop::sample::select(HOSTILE.to_vec()),
    ];
    (
        prop::collection::vec((piece.clone(), prop::option::weighted(0.2, piece)), 1..7),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(pieces, trailing)| {
            let mut path = String::new();
            for (a, b) in pieces {
                path.push('/');
                path.push_str(a);
                if let Some(b) = b {
                    path.push_str(b);
                }
            }
            if trailing {
                path.push('/');
            }
            path
        })
}

/// A path the examples allow, with hostile pieces spliced in: most stay allowed, so the
/// property is checked on many paths that pass.
fn spliced_path() -> impl Strategy<Value = String> {
    let allowed = prop::sample::select(vec![
        "/users/alice",
        "/thngs/t1",
        "/thngs/t1/actions/commissions",
        "/collections/c1/thngs/t1",
        "/products/p1",
        "/roles/r1",
        "/v1/devices/d1",
        "/v1/devices/d1/snapshots",
        "/v1/alarms/a1/dispatch",
        "/v1/alarms/a1",
        "/v1/devices",
    ]);
    let splice = (
        any::<prop::sample::Index>(),
        prop::sample::select(HOSTILE.to_vec()),
        0u8..3,
    );
    (allowed, prop::collection::vec(splice, 0..3)).prop_map(|(base, splices)| {
        let mut path = base.to_owned();
        for (at, piece, how) in splices {
            // At a `/` boundary: a new segment, a suffix of the segment before, or a prefix.
            let cuts: Vec<usize> = path
                .match_indices('/')
                .map(|(i, _)| i)
                .chain([path.len()])
                .collect();
            let cut = cuts[at.index(cuts.len())];
            let text = match how {
                0 => format!("/{piece}"),
                _ => piece.to_owned(),
            };
            let cut = if how == 2 {
                (cut + 1).min(path.len())
            } else {
                cut
            };
            path.insert_str(cut, &text);
        }
        path
    })
}

#[test]
fn every_reading_of_an_allowed_path_lands_on_an_allowed_route() {
    let cases = [
        ("iot-roles", ["alice", "bob"]),
        ("monitoring-apps", ["dashboard", "dispatcher"]),
    ];
    let mut allowed_total = 0usize;
    let mut checked = 0usize;
    for (name, subjects) in cases {
        let policy = example(name).0;
        let snapshot = Snapshot::compile(&policy, 1);
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 4000,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let strategy = (
            prop_oneof![hostile_path(), spliced_path()],
            prop::sample::select(subjects.to_vec()),
            prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE"]),
        );
        let allowed = std::cell::Cell::new(0usize);
        let result = runner.run(&strategy, |(path, subject, method)| {
            let (ok, reason) = sidecar_allows(&snapshot, subject, method, &path);
            if !ok {
                return Ok(());
            }
            allowed.set(allowed.get() + 1);
            let ask = oracle::Query {
                subject: subject.to_owned(),
                act: oracle::Act::Http(method.to_owned(), path.clone()),
                scope: None,
                resource: None,
                inline: None,
            };
            for (reading, segments) in readings(&path) {
                let Some(segments) = segments else { continue };
                let answer = oracle::decide_segments(&policy, &ask, method, &segments);
                prop_assert!(
                    answer.allowed,
                    "{subject} {method} {path} is allowed ({reason}) but the `{reading}` reading {segments:?} is not"
                );
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
        checked += 1;
        allowed_total += allowed.get();
    }
    assert_eq!(checked, 2);
    // Not vacuous: a fair share of the hostile paths are allowed and so were checked.
    assert!(
        allowed_total >= 250,
        "only {allowed_total} allowed paths were checked"
    );
}
