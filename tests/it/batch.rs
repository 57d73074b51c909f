//! `CheckBatch` end to end: the real server, real clients, TCP and Unix socket. Every item is
//! answered exactly as `Check` answers it, in order, from one snapshot.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use authz_sidecar::api::{MAX_BATCH_ITEMS, pb};
use authz_sidecar::model::file::EMBEDDED_DEFAULT;

/// The seed policy without approval: a subject written here is effective at once.
fn without_approval() -> String {
    EMBEDDED_DEFAULT.replace("    requires_approval: true\n", "")
}
use common::*;
use tonic::Code;

fn batch(items: Vec<pb::CheckRequest>) -> pb::CheckBatchRequest {
    pb::CheckBatchRequest {
        items,
        min_revision: 0,
    }
}

/// Items of every kind and outcome, sharing subjects.
fn mixed() -> Vec<pb::CheckRequest> {
    vec![
        permission("dashboard", "devices:read"),
        permission("dashboard", "devices:write"),
        permission("stranger", "devices:read"),
        permission("dashboard", "devices:fly"),
        http("dashboard", "GET", "/v1/devices/d1?page=2"),
        http("dashboard", "POST", "/v1/alarms/a1/dispatch"),
        http("dispatcher", "POST", "/v1/alarms/a1/dispatch"),
        http("dispatcher", "GET", "/v1/unknown"),
        // Refused by the canonicalizer: a denial naming its rule, as in Check.
        http("dashboard", "GET", "/v1/devices/..;/alarms"),
        http("dashboard", "GET", "/v1//devices"),
        http("dashboard", "GET", "/v1/devices/%2e%2e/alarms"),
        event("dispatcher", "alarm.created"),
        event("dispatcher", "no.such.event"),
        pb::CheckRequest {
            scope: "site-1".into(),
            ..permission("dispatcher", "alarms:write")
        },
        pb::CheckRequest {
            roles: vec!["app-dispatcher".into()],
            subject_type: "app".into(),
            ..permission("token-1", "alarms:write")
        },
        pb::CheckRequest {
            roles: vec!["no-such-role".into()],
            ..permission("token-2", "alarms:write")
        },
    ]
}

#[tokio::test]
async fn items_are_answered_in_order_exactly_as_check_answers_them() {
    let sc = start(&without_approval()).await;
    let mut tcp = sc.client().await;
    let mut uds = pb::authz_client::AuthzClient::new(sc.uds_channel().await);
    let items = mixed();
    let mut singles = Vec::new();
    for item in &items {
        singles.push(check(&mut tcp, item.clone()).await);
    }
    assert!(singles.iter().any(|a| a.allowed) && singles.iter().any(|a| !a.allowed));
    for client in [&mut tcp, &mut uds] {
        let answer = client
            .check_batch(batch(items.clone()))
            .await
            .expect("batch")
            .into_inner();
        assert_eq!(
            answer.results, singles,
            "each item answered as Check answers it"
        );
        assert!(answer.results.iter().all(|r| r.revision == answer.revision));
        assert_eq!(answer.revision, singles[0].revision);
    }
    // The refused paths name their rule.
    let refused = &singles[8..11];
    for answer in refused {
        assert!(!answer.allowed);
        assert!(!answer.reason.is_empty());
    }
}

#[tokio::test]
async fn one_revision_and_min_revision_once_per_batch() {
    let sc = start(&without_approval()).await;
    let mut client = sc.client().await;
    let put = client
        .put_subject(admin(pb::PutSubjectRequest {
            subject: Some(pb::Subject {
                id: "new-app".into(),
                r#type: "app".into(),
                roles: vec!["app-dashboard".into()],
                ..Default::default()
            }),
            expected_revision: 0,
        }))
        .await
        .expect("put subject")
        .into_inner();
    let answer = client
        .check_batch(pb::CheckBatchRequest {
            items: vec![
                permission("new-app", "devices:read"),
                permission("dashboard", "devices:read"),
            ],
            min_revision: put.revision,
        })
        .await
        .expect("batch at the written revision")
        .into_inner();
    assert_eq!(answer.revision, put.revision);
    assert!(
        answer
            .results
            .iter()
            .all(|r| r.allowed && r.revision == put.revision)
    );

    let ahead = client
        .check_batch(pb::CheckBatchRequest {
            items: vec![permission("dashboard", "devices:read")],
            min_revision: put.revision + 100,
        })
        .await
        .expect_err("ahead of the policy");
    assert_eq!(ahead.code(), Code::Unavailable);

    // An item's own min_revision is refused, naming the item.
    let on_item = client
        .check_batch(batch(vec![
            permission("dashboard", "devices:read"),
            pb::CheckRequest {
                min_revision: 1,
                ..permission("dashboard", "devices:read")
            },
        ]))
        .await
        .expect_err("min_revision on an item");
    assert_eq!(on_item.code(), Code::InvalidArgument);
    assert!(
        on_item.message().starts_with("items[1].min_revision:"),
        "{}",
        on_item.message()
    );
}

#[tokio::test]
async fn bad_items_and_the_item_limit_are_invalid_argument_naming_the_field() {
    let sc = start(&without_approval()).await;
    let mut client = sc.client().await;
    let cases = [
        (batch(Vec::new()), "items:"),
        (
            batch(vec![
                permission("dashboard", "devices:read"),
                permission("", "devices:read"),
            ]),
            "items[1].subject:",
        ),
        (
            batch(vec![pb::CheckRequest {
                subject: "dashboard".into(),
                ..Default::default()
            }]),
            "items[0].action:",
        ),
        (
            batch(vec![
                permission("dashboard", "devices:read"),
                permission("dashboard", "devices:read"),
                http("dashboard", "GET", "no-slash"),
            ]),
            "items[2].http.path:",
        ),
        (
            batch(vec![pb::CheckRequest {
                roles: vec!["r".repeat(300)],
                ..permission("t", "devices:read")
            }]),
            "items[0].roles[0]:",
        ),
        (
            batch(vec![
                permission("dashboard", "devices:read");
                MAX_BATCH_ITEMS + 1
            ]),
            "items: at most 1000 items",
        ),
    ];
    for (request, prefix) in cases {
        let e = client
            .check_batch(request)
            .await
            .expect_err("malformed batch");
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().starts_with(prefix),
            "{} / {prefix}",
            e.message()
        );
    }
    // The limit itself is accepted.
    let full = client
        .check_batch(batch(vec![
            permission("dashboard", "devices:read");
            MAX_BATCH_ITEMS
        ]))
        .await
        .expect("a batch at the limit")
        .into_inner();
    assert_eq!(full.results.len(), MAX_BATCH_ITEMS);
    assert!(full.results.iter().all(|r| r.allowed));
}
