//! Seed 000, monitoring-platform apps: `examples/monitoring-apps.yaml` replayed against the
//! document's own statements through the gRPC API.
//!
//! The document's scope catalog and common permission sets are transcribed below as tables; the
//! tests check that the example says the same, then that the running server decides each
//! (scope, endpoint) and (scope, event) pair exactly as the catalog lists it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;
use crate::seeds;

use authz_sidecar::api::pb;
use authz_sidecar::model::{Grant, Kind, Role, Subject};
use common::*;
use seeds::*;
use tonic::Code;

const EXAMPLE: &str = "monitoring-apps.yaml";

/// (scope, group, kind, endpoints it unlocks, events it gates)
type Scope = (
    &'static str,
    &'static str,
    Kind,
    &'static [&'static str],
    &'static [&'static str],
);

/// "All scopes", as the document lists them.
const SCOPES: &[Scope] = &[
    (
        "devices:read",
        "Devices",
        Kind::Read,
        &[
            "GET /v1/devices",
            "GET /v1/devices/{id}",
            "GET /v1/devices/{id}/snapshots",
        ],
        &["device.online", "device.offline", "device.firmware_updated"],
    ),
    (
        "devices:write",
        "Devices",
        Kind::Write,
        &["PATCH /v1/devices/{id}", "POST /v1/devices/{id}/snapshot"],
        &[],
    ),
    (
        "events:read",
        "Events & Alarms",
        Kind::Read,
        &["GET /v1/events", "GET /v1/alarms", "GET /v1/alarms/{id}"],
        &["alarm.created", "alarm.resolved", "verification.requested"],
    ),
    (
        "events:write",
        "Events & Alarms",
        Kind::Write,
        &[
            "POST /v1/alarms/{id}/acknowledge",
            "POST /v1/alarms/{id}/escalate",
            "POST /v1/alarms/{id}/annotate",
        ],
        &[],
    ),
    (
        "alarms:write",
        "Events & Alarms",
        Kind::Write,
        &["POST /v1/alarms/{id}/dispatch"],
        &[],
    ),
    (
        "snapshots:read",
        "Events & Alarms",
        Kind::Read,
        &["GET /v1/snapshots/{id}", "GET /v1/devices/{id}/snapshots"],
        &["snapshot.created"],
    ),
    (
        "sites:read",
        "Sites & Partitions",
        Kind::Read,
        &[
            "GET /v1/sites",
            "GET /v1/sites/{id}/partitions",
            "GET /v1/sites/{id}/zones",
        ],
        &["partition.armed", "partition.disarmed"],
    ),
    (
        "sites:write",
        "Sites & Partitions",
        Kind::Write,
        &[
            "POST /v1/partitions/{id}/arm",
            "POST /v1/partitions/{id}/disarm",
        ],
        &[],
    ),
    (
        "operators:read",
        "Operators",
        Kind::Read,
        &["GET /v1/operators", "GET /v1/operators/{id}/audit"],
        &[],
    ),
    (
        "webhooks:read",
        "Webhooks",
        Kind::Read,
        &[
            "GET /v1/webhook_endpoints/{id}",
            "GET /v1/webhook_endpoints/{id}/deliveries",
        ],
        &[],
    ),
    (
        "webhooks:write",
        "Webhooks",
        Kind::Write,
        &["PATCH /v1/webhook_endpoints/{id}"],
        &[],
    ),
];

/// "Common permission sets": (app subject, its preset, the scopes of the set).
const APPS: &[(&str, &str, &[&str])] = &[
    (
        "ai-verifier",
        "ai-verification",
        &["events:read", "snapshots:read", "events:write"],
    ),
    (
        "dashboard",
        "reporting-dashboard",
        &[
            "events:read",
            "devices:read",
            "sites:read",
            "operators:read",
        ],
    ),
    (
        "dispatcher",
        "auto-dispatcher",
        &["events:read", "alarms:write"],
    ),
    (
        "compliance",
        "audit-compliance",
        &["operators:read", "events:read", "sites:read"],
    ),
];

/// Every endpoint the catalog lists, each once, in document order.
fn all_endpoints() -> Vec<&'static str> {
    let mut all: Vec<&str> = Vec::new();
    for (_, _, _, endpoints, _) in SCOPES {
        for e in *endpoints {
            if !all.contains(e) {
                all.push(e);
            }
        }
    }
    all
}

fn all_events() -> Vec<&'static str> {
    SCOPES.iter().flat_map(|s| s.4.iter().copied()).collect()
}

/// A concrete request path for a template: `{id}` becomes `value`.
fn concrete(template: &str, value: &str) -> (String, String) {
    let (method, path) = template.split_once(' ').expect("METHOD /path");
    (method.to_owned(), path.replace("{id}", value))
}

fn subject_for(scope: &str) -> String {
    format!("only-{}", scope.replace(':', "-"))
}

/// The example plus one role and one subject per scope holding that scope alone ("Each scope is
/// independent — you can grant any combination").
fn per_scope_policy() -> String {
    let mut policy = example(EXAMPLE);
    for (scope, ..) in SCOPES {
        let role = format!("scope-{}", scope.replace(':', "-"));
        policy.roles.push(Role {
            name: role.clone(),
            kind: "app".into(),
            grants: vec![Grant::enabled(*scope)],
            ..Role::default()
        });
        policy.subjects.push(Subject {
            id: subject_for(scope),
            subject_type: "app".into(),
            roles: vec![role],
            ..Subject::default()
        });
    }
    to_text(&policy)
}

#[test]
fn the_example_lists_the_documents_catalog_and_permission_sets() {
    let policy = example(EXAMPLE);
    let got: Vec<&str> = policy
        .catalog
        .permissions
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let want: Vec<&str> = SCOPES.iter().map(|s| s.0).collect();
    assert_eq!(got, want, "the scopes, in document order");
    let mut count = 1;
    for (scope, group, kind, endpoints, events) in SCOPES {
        let p = policy.permission(scope).expect("listed");
        assert_eq!(p.group.as_deref(), Some(*group), "{scope}");
        assert_eq!(p.kind, Some(*kind), "{scope}");
        assert_eq!(p.endpoints, *endpoints, "{scope}");
        assert_eq!(p.events, *events, "{scope}");
        assert!(
            p.description.as_deref().is_some_and(|d| !d.is_empty()),
            "{scope} has its description"
        );
        count += 5;
    }
    for (_, preset, scopes) in APPS {
        let p = policy
            .presets
            .iter()
            .find(|p| p.name == *preset)
            .expect("preset");
        assert_eq!(p.permissions, *scopes, "{preset}");
        count += 1;
    }
    report("catalog", count);
}

#[tokio::test]
async fn each_scope_unlocks_exactly_its_endpoints_and_gates_exactly_its_events() {
    let sc = start(&per_scope_policy()).await;
    let mut client = sc.client().await;
    let endpoints = all_endpoints();
    let mut statements = Vec::new();
    for (scope, _, _, unlocks, gates) in SCOPES {
        let subject = subject_for(scope);
        for template in &endpoints {
            let allowed = unlocks.contains(template);
            // A path parameter matches any single segment; a query string or a trailing slash
            // does not change the decision.
            for value in ["d1", "Z9-x_y.z", "%20"] {
                let (method, path) = concrete(template, value);
                for suffix in ["", "/", "?page=2&limit=10", "/?x=1", "?x#frag"] {
                    statements.push(statement(
                        &subject,
                        &format!("{method} {path}{suffix}"),
                        allowed,
                    ));
                }
            }
        }
        for event in all_events() {
            statements.push(statement(
                &subject,
                &format!("event {event}"),
                gates.contains(&event),
            ));
        }
        // The scope itself, by name: granted; every other scope: not.
        for (other, ..) in SCOPES {
            statements.push(statement(&subject, other, other == scope));
        }
    }
    let n = replay(&mut client, &statements).await;

    // A parameter is one segment: a deeper or shallower path is not the endpoint.
    let shapes = table(
        r#"
        only-devices-read | GET /v1/devices/d1/extra        | deny | no endpoint or path rule maps
        only-devices-read | GET /v1/devices/d1/snapshots/s1 | deny | no endpoint or path rule maps
        only-alarms-write | POST /v1/alarms/dispatch        | deny | no endpoint or path rule maps
        only-alarms-write | POST /v1/alarms/a1/b2/dispatch  | deny | no endpoint or path rule maps
        only-sites-read   | GET /v1/sites/s1                | deny | no endpoint or path rule maps
        only-devices-read | GET /V1/DEVICES                 | deny | no endpoint or path rule maps
        # GET /v1/devices/{id}/snapshots is listed under both devices:read and snapshots:read.
        only-devices-read   | GET /v1/devices/d1/snapshots  | allow | granted `devices:read`
        only-snapshots-read | GET /v1/devices/d1/snapshots  | allow | granted `snapshots:read`
        only-events-read    | GET /v1/devices/d1/snapshots  | deny  | no role of the subject grants `devices:read`
        "#,
    );
    let m = replay(&mut client, &shapes).await;
    let both = check(
        &mut client,
        http("only-events-read", "GET", "/v1/devices/d1/snapshots"),
    )
    .await;
    assert_eq!(both.required, vec!["devices:read", "snapshots:read"]);
    report("scope → endpoints/events", n + m + 1);
}

#[tokio::test]
async fn alarms_write_and_events_write_unlock_different_things() {
    let sc = start(&per_scope_policy()).await;
    let mut client = sc.client().await;
    // "alarms:write is separate from events:write because dispatch has cost."
    let statements = table(
        r#"
        only-alarms-write | POST /v1/alarms/a1/dispatch    | allow | granted `alarms:write`
        only-alarms-write | POST /v1/alarms/a1/acknowledge | deny  | no role of the subject grants `events:write`
        only-alarms-write | POST /v1/alarms/a1/escalate    | deny  | `events:write`
        only-alarms-write | POST /v1/alarms/a1/annotate    | deny  | `events:write`
        only-alarms-write | events:write                   | deny
        only-events-write | POST /v1/alarms/a1/acknowledge | allow | granted `events:write`
        only-events-write | POST /v1/alarms/a1/escalate    | allow
        only-events-write | POST /v1/alarms/a1/annotate    | allow
        only-events-write | POST /v1/alarms/a1/dispatch    | deny  | no role of the subject grants `alarms:write`
        only-events-write | alarms:write                   | deny
        # The document's app shapes: the AI verifier writes verdicts but never dispatches;
        # the auto-dispatcher dispatches but does not acknowledge.
        ai-verifier | POST /v1/alarms/a1/annotate    | allow
        ai-verifier | POST /v1/alarms/a1/dispatch    | deny | `alarms:write`
        dispatcher  | POST /v1/alarms/a1/dispatch    | allow
        dispatcher  | POST /v1/alarms/a1/acknowledge | deny | `events:write`
        # "Cannot delete history": no scope unlocks a DELETE.
        ai-verifier | DELETE /v1/alarms/a1 | deny | no endpoint or path rule maps
        ai-verifier | DELETE /v1/events    | deny | no endpoint or path rule maps
        "#,
    );
    report("domain split", replay(&mut client, &statements).await);
}

#[tokio::test]
async fn read_scopes_never_unlock_a_non_get_endpoint() {
    let policy = example(EXAMPLE);
    // Every endpoint a read scope lists is a GET.
    let mut count = 0;
    for p in policy
        .catalog
        .permissions
        .iter()
        .filter(|p| p.kind == Some(Kind::Read))
    {
        for e in &p.endpoints {
            assert!(e.starts_with("GET "), "read scope {} lists {e}", p.name);
            count += 1;
        }
    }
    // The read-only app holds every read scope, and nothing else.
    let read_scopes: Vec<&str> = SCOPES
        .iter()
        .filter(|s| s.2 == Kind::Read)
        .map(|s| s.0)
        .collect();
    assert_eq!(role_set(&policy, "app-readonly"), read_scopes);
    let sc = start(&per_scope_policy()).await;
    let mut client = sc.client().await;
    let mut statements = Vec::new();
    for subject in
        std::iter::once("readonly".to_owned()).chain(read_scopes.iter().map(|s| subject_for(s)))
    {
        for template in all_endpoints() {
            let (_, path) = concrete(template, "x1");
            for method in ["POST", "PUT", "PATCH", "DELETE"] {
                statements.push(statement(&subject, &format!("{method} {path}"), false));
            }
        }
        for (scope, _, kind, ..) in SCOPES {
            if *kind == Kind::Write {
                statements.push(statement(&subject, scope, false));
            }
        }
    }
    // ...while the read-only app reads everything a read scope unlocks.
    for (_, _, kind, endpoints, events) in SCOPES {
        if *kind == Kind::Read {
            for template in *endpoints {
                let (method, path) = concrete(template, "x1");
                statements.push(statement("readonly", &format!("{method} {path}"), true));
            }
            for event in *events {
                statements.push(statement("readonly", &format!("event {event}"), true));
            }
        }
    }
    count += replay(&mut client, &statements).await;
    report("read scopes", count);
}

#[tokio::test]
async fn each_app_holds_exactly_its_common_permission_set() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut statements = Vec::new();
    let read_scopes: Vec<&str> = SCOPES
        .iter()
        .filter(|s| s.2 == Kind::Read)
        .map(|s| s.0)
        .collect();
    let apps = APPS
        .iter()
        .map(|(s, _, set)| (*s, set.to_vec()))
        .chain([("readonly", read_scopes)]);
    for (subject, set) in apps {
        for (scope, _, _, endpoints, events) in SCOPES {
            let held = set.contains(scope);
            statements.push(statement(subject, scope, held));
            for template in *endpoints {
                let (method, path) = concrete(template, "x1");
                // An endpoint listed under two scopes is unlocked by either.
                let by_any = SCOPES
                    .iter()
                    .any(|s| s.3.contains(template) && set.contains(&s.0));
                statements.push(statement(subject, &format!("{method} {path}"), by_any));
            }
            for event in *events {
                statements.push(statement(subject, &format!("event {event}"), held));
            }
        }
    }
    report(
        "common permission sets",
        replay(&mut client, &statements).await,
    );
}

#[tokio::test]
async fn narrowing_applies_at_once_and_widening_waits_for_approval() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut count = 0;
    let held = table(
        r#"
        dashboard | devices:read             | allow
        dashboard | GET /v1/devices/d1       | allow
        dashboard | event device.online      | allow
        dashboard | alarms:write             | deny
        dashboard | POST /v1/alarms/a1/dispatch | deny
        dashboard | sites:write              | deny
        "#,
    );
    count += replay(&mut client, &held).await;

    // "You can later tighten permissions silently": narrowing applies at once.
    let narrowed = client
        .update_permission(admin(set("app-dashboard", "devices:read", false, &[])))
        .await
        .expect("narrowing")
        .into_inner();
    assert!(!narrowed.pending_approval);
    let role = narrowed.role.expect("role");
    assert!(role.pending.is_empty());
    count += replay(
        &mut client,
        &table(
            r#"
            dashboard | devices:read        | deny | no role of the subject grants `devices:read`
            dashboard | GET /v1/devices/d1  | deny
            dashboard | event device.online | deny
            dashboard | events:read         | allow
            "#,
        ),
    )
    .await;

    // "Widening requires the dealer admin to re-approve": stored as pending, not effective.
    for scope in ["alarms:write", "sites:write"] {
        let widened = client
            .update_permission(admin(set("app-dashboard", scope, true, &[])))
            .await
            .expect("widening accepted as pending")
            .into_inner();
        assert!(widened.pending_approval, "{scope}");
        count += 1;
    }
    let roles = client
        .list_roles(pb::ListRolesRequest {
            kind: "app".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let dashboard = roles
        .roles
        .iter()
        .find(|r| r.name == "app-dashboard")
        .expect("role");
    assert_eq!(dashboard.pending, vec!["alarms:write", "sites:write"]);
    let pending_rev = roles.revision;
    let pending = table(
        r#"
        dashboard | alarms:write                 | deny | no role of the subject grants `alarms:write`
        dashboard | POST /v1/alarms/a1/dispatch  | deny
        dashboard | sites:write                  | deny
        dashboard | POST /v1/partitions/p1/arm   | deny
        # Another narrowing while the widening waits still applies at once.
        dashboard | operators:read               | allow
        "#,
    );
    count += replay(&mut client, &pending).await;
    client
        .update_permission(admin(set("app-dashboard", "operators:read", false, &[])))
        .await
        .expect("narrowing while pending");
    count += replay(&mut client, &table("dashboard | operators:read | deny")).await;

    // The approver accepts the set as a whole: both scopes become effective together.
    let approved = client
        .approve_pending(admin(pb::ApprovePendingRequest {
            role: "app-dashboard".into(),
            expected_revision: 0,
            ..Default::default()
        }))
        .await
        .expect("approve")
        .into_inner();
    assert!(approved.revision > pending_rev);
    assert!(approved.role.expect("role").pending.is_empty());
    let after = table(
        r#"
        dashboard | alarms:write                | allow | granted `alarms:write` by role `app-dashboard`
        dashboard | POST /v1/alarms/a1/dispatch | allow
        dashboard | sites:write                 | allow
        dashboard | POST /v1/partitions/p1/arm  | allow
        dashboard | devices:read                | deny
        dashboard | operators:read              | deny
        # Other apps are untouched.
        compliance | operators:read             | allow
        dispatcher | sites:write                | deny
        "#,
    );
    count += replay(&mut client, &after).await;
    let got = check(&mut client, permission("dashboard", "alarms:write")).await;
    assert_eq!(got.revision, approved.revision);

    // Nothing left to approve.
    let status = client
        .approve_pending(admin(pb::ApprovePendingRequest {
            role: "app-dashboard".into(),
            expected_revision: 0,
            ..Default::default()
        }))
        .await
        .expect_err("nothing pending");
    assert_eq!(status.code(), Code::FailedPrecondition);
    // Re-enabling a scope the app once held is a widening too.
    let again = client
        .update_permission(admin(set("app-dashboard", "devices:read", true, &[])))
        .await
        .expect("widening")
        .into_inner();
    assert!(again.pending_approval);
    count += replay(&mut client, &table("dashboard | devices:read | deny")).await;
    report("approval", count + 3);
}
