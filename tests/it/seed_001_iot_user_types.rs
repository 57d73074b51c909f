//! Seed 001, IoT user types and API keys: `examples/iot-user-types.yaml` replayed against the
//! document's own statements through the gRPC API.
//!
//! The document's catalog is transcribed below (permission, topic, "Applicable only to the user
//! types of" list). A permission never takes effect for a subject type it does not apply to, even
//! when the subject's set grants it; every user type and API key holds exactly its own set.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;
use crate::seeds;

use authz_sidecar::api::pb;
use common::*;
use seeds::*;

const EXAMPLE: &str = "iot-user-types.yaml";
const TYPES: [&str; 3] = ["ORGANIZATION", "PARTNER", "CUSTOMER"];

/// The document's permissions in its order: (name, topic, applicable only to; empty = all).
const DOC: &[(&str, &str, &[&str])] = &[
    ("WRITE_ALERT_STATUS", "Alert", &[]),
    ("READ_ALERT_TROUBLESHOOTING_HISTORY", "Alert", &[]),
    ("CLEAR_ALERT", "Alert", &[]),
    ("WRITE_CONSUMABLE_STOCK", "Consumable", &[]),
    ("READ_CUSTOMER", "Customer", &[]),
    ("WRITE_CUSTOMER", "Customer", &[]),
    ("DELETE_CUSTOMER", "Customer", &[]),
    ("CUSTOMER_ACCOUNT_ADMINISTRATOR", "Customer", &["CUSTOMER"]),
    ("READ_ALL_CUSTOMERS", "Customer", &[]),
    ("IMPORT_CUSTOMERS", "Customer", &["ORGANIZATION", "PARTNER"]),
    ("READ_LOCATION", "Location", &[]),
    ("WRITE_LOCATION", "Location", &[]),
    ("DELETE_LOCATION", "Location", &[]),
    ("IMPORT_LOCATIONS", "Location", &[]),
    ("READ_MAINTENANCE_REGISTRY", "Maintenance", &[]),
    ("WRITE_MAINTENANCE_REGISTRY", "Maintenance", &[]),
    ("RECEIVE_THING_ALERT_NOTIFICATIONS", "Notifications", &[]),
    (
        "RECEIVE_THING_WORK_SESSION_NOTIFICATIONS",
        "Notifications",
        &["CUSTOMER"],
    ),
    ("READ_ORGANIZATION", "Organization", &["ORGANIZATION"]),
    ("WRITE_ORGANIZATION", "Organization", &["ORGANIZATION"]),
    ("DELETE_ORGANIZATION", "Organization", &["ORGANIZATION"]),
    ("READ_ALL_ORGANIZATIONS", "Organization", &[]),
    (
        "READ_ORGANIZATION_AUTHORIZATION",
        "Organization",
        &["ORGANIZATION"],
    ),
    (
        "WRITE_ORGANIZATION_AUTHORIZATION",
        "Organization",
        &["ORGANIZATION"],
    ),
    ("READ_PARTNER", "Partner", &[]),
    ("WRITE_PARTNER", "Partner", &[]),
    ("DELETE_PARTNER", "Partner", &[]),
    ("READ_PARTNER_AUTHORIZATION", "Partner", &[]),
    (
        "WRITE_PARTNER_AUTHORIZATION",
        "Partner",
        &["ORGANIZATION", "PARTNER"],
    ),
    (
        "RECEIVE_PARTNER_AUTHORIZATION_UPDATE_NOTIFICATION",
        "Partner",
        &[],
    ),
    ("READ_API_KEY", "Security", &[]),
    ("WRITE_API_KEY", "Security", &["ORGANIZATION"]),
    ("READ_AUDIT", "Security", &[]),
    ("READ_THING_TEST", "Testing", &[]),
    ("WRITE_THING_TEST", "Testing", &[]),
    (
        "READ_CONNECTION_TEST",
        "Testing",
        &["ORGANIZATION", "PARTNER"],
    ),
    (
        "WRITE_CONNECTION_TEST",
        "Testing",
        &["ORGANIZATION", "PARTNER"],
    ),
    ("READ_THING", "Thing", &[]),
    ("WRITE_THING", "Thing", &[]),
    ("DELETE_THING", "Thing", &[]),
    ("READ_ALL_THINGS", "Thing", &[]),
    ("WRITE_THING_OPTION", "Thing", &[]),
    ("WRITE_DATA", "Thing", &[]),
    ("WRITE_METRIC_VALUE", "Thing", &[]),
    ("WRITE_WORK_SESSION", "Thing", &[]),
    ("REGISTER_THING", "Thing", &[]),
    ("WRITE_THING_ACTIVATION", "Thing", &[]),
    ("READ_CLOUD_STATUS", "Thing", &[]),
    ("WRITE_CLOUD_STATUS", "Thing", &["ORGANIZATION"]),
    ("READ_CERTIFICATE", "Thing", &["ORGANIZATION", "PARTNER"]),
    ("WRITE_CERTIFICATE", "Thing", &["ORGANIZATION", "PARTNER"]),
    ("WRITE_SIM", "Thing", &["ORGANIZATION"]),
    ("READ_USER_AUTHORIZATION", "Thing", &["CUSTOMER"]),
    ("WRITE_USER_AUTHORIZATION", "Thing", &["CUSTOMER"]),
    ("RESET_USER_AUTHORIZATION", "Thing", &["CUSTOMER"]),
    ("READ_RULE", "Thing", &[]),
    ("WRITE_RULE", "Thing", &[]),
    ("EXECUTE_THING_COMMAND", "Thing Remote Control", &[]),
    ("SET_THING_PARAMETER", "Thing Remote Control", &[]),
    ("UPDATE_FIRMWARE", "Thing Remote Control", &[]),
    ("EXECUTE_BULK_UPDATE", "Thing Remote Control", &[]),
    ("WRITE_RECIPE", "Thing Remote Control", &[]),
    ("READ_TASK", "Thing Remote Control", &[]),
    ("WRITE_TASK", "Thing Remote Control", &[]),
    ("READ_CONNECTION_MAPPING", "Thing Connection", &[]),
    ("WRITE_CONNECTION_MAPPING", "Thing Connection", &[]),
    ("READ_THING_CONNECTION_TOKENS", "Thing Connection", &[]),
    (
        "WRITE_THING_CONNECTION_TOKENS",
        "Thing Connection",
        &["ORGANIZATION", "PARTNER"],
    ),
    ("READ_USER", "User", &[]),
    ("WRITE_USER", "User", &[]),
    ("READ_ALL_USERS", "User", &[]),
    ("READ_USER_PERMISSIONS", "User", &[]),
    ("WRITE_USER_PERMISSIONS", "User", &[]),
    ("NEVER_SUSPEND", "User", &[]),
    ("WRITE_USER_STATUS", "User", &[]),
    ("READ_GUEST_USER", "User", &[]),
    ("INVITE_GUEST_USER", "User", &[]),
    (
        "WRITE_USER_NOTIFICATION_SETTINGS",
        "User",
        &["ORGANIZATION", "PARTNER"],
    ),
    ("WRITE_TAG", "Tagging", &[]),
    ("WRITE_THING_TAG", "Tagging", &[]),
    ("READ_ORDER", "Store", &[]),
    ("PLACE_ORDER", "Store", &["CUSTOMER", "PARTNER"]),
    ("WRITE_ORDER", "Store", &["ORGANIZATION", "PARTNER"]),
    ("READ_SUBSCRIPTION", "Store", &[]),
    ("WRITE_SUBSCRIPTION", "Store", &[]),
    ("READ_PAYMENTS", "Store", &["ORGANIZATION", "CUSTOMER"]),
    ("WRITE_PAYMENTS", "Store", &["ORGANIZATION"]),
    ("READ_SPARE_PART", "Spare Parts", &[]),
    ("WRITE_SPARE_PART", "Spare Parts", &[]),
    ("DELETE_SPARE_PART", "Spare Parts", &[]),
    ("WRITE_PRODUCT_MODEL", "Product Models", &[]),
    ("DELETE_PRODUCT_MODEL", "Product Models", &[]),
];

fn applies(permission: &str, subject_type: &str) -> bool {
    let (_, _, only) = DOC.iter().find(|p| p.0 == permission).expect("documented");
    only.is_empty() || only.contains(&subject_type)
}

#[test]
fn the_example_lists_the_documents_catalog() {
    let policy = example(EXAMPLE);
    let got: Vec<(&str, &str, Vec<&str>)> = policy
        .catalog
        .permissions
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.group.as_deref().unwrap_or(""),
                p.applies_to.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, Vec<&str>)> =
        DOC.iter().map(|(n, g, a)| (*n, *g, a.to_vec())).collect();
    assert_eq!(got, want);
    for p in &policy.catalog.permissions {
        let description = p
            .description
            .as_deref()
            .expect("every permission has its description");
        // The description is the document's text: it carries the applicability sentence exactly
        // when the permission has an `applies_to` list.
        let sentence = format!(
            "Applicable only to the user types of: {}.",
            p.applies_to.join(", ")
        );
        assert_eq!(
            description.ends_with(&sentence),
            !p.applies_to.is_empty(),
            "{}",
            p.name
        );
        assert!(
            p.endpoints.is_empty() && p.implies.is_empty() && p.requires.is_empty() && !p.scoped
        );
    }
    let kinds: Vec<(&str, &str)> = policy
        .roles
        .iter()
        .map(|r| (r.name.as_str(), r.kind.as_str()))
        .collect();
    for (_, kind) in &kinds {
        assert!(*kind == "user_type" || *kind == "api_key", "{kinds:?}");
    }
    for s in &policy.subjects {
        assert!(
            TYPES.contains(&s.subject_type.as_str()),
            "{} has a document type",
            s.id
        );
    }
    report("catalog", DOC.len());
}

/// Every subject of the example × every catalog permission: allowed iff its role's set holds the
/// permission and the permission applies to the subject's type.
#[tokio::test]
async fn every_user_type_and_api_key_holds_exactly_its_set_where_it_applies() {
    let policy = example(EXAMPLE);
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut statements = Vec::new();
    for subject in &policy.subjects {
        let set: Vec<String> = subject
            .roles
            .iter()
            .flat_map(|r| role_set(&policy, r))
            .collect();
        for (name, _, _) in DOC {
            let granted = set.iter().any(|g| g == name);
            let applicable = applies(name, &subject.subject_type);
            let mut s = statement(&subject.id, name, granted && applicable);
            if granted && !applicable {
                s.reason = Some(format!(
                    "`{name}` does not apply to subject type `{}`",
                    subject.subject_type
                ));
            } else if !granted {
                s.reason = Some(format!("no role of the subject grants `{name}`"));
            }
            statements.push(s);
        }
    }
    report("subjects × catalog", replay(&mut client, &statements).await);
}

/// The same set (every permission) held by each user type: the document's applicability lists
/// decide, whatever the set grants.
#[tokio::test]
async fn a_permission_never_takes_effect_for_a_type_it_does_not_apply_to() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut statements = Vec::new();
    for subject_type in TYPES {
        for (name, _, _) in DOC {
            let action = format!("{name} roles=organization-administrator type={subject_type}");
            statements.push(statement(
                "verified-token-user",
                &action,
                applies(name, subject_type),
            ));
        }
    }
    let explicit = table(
        r#"
        # A CUSTOMER never holds READ_ORGANIZATION, even though its user type grants it.
        customer-manager-1 | READ_ORGANIZATION | deny | `READ_ORGANIZATION` does not apply to subject type `CUSTOMER`
        org-admin          | READ_ORGANIZATION | allow | granted `READ_ORGANIZATION` by role `organization-administrator`
        customer-manager-1 | CUSTOMER_ACCOUNT_ADMINISTRATOR | allow
        org-admin          | CUSTOMER_ACCOUNT_ADMINISTRATOR | deny | does not apply to subject type `ORGANIZATION`
        customer-manager-1 | IMPORT_CUSTOMERS  | deny | does not apply to subject type `CUSTOMER`
        customer-manager-1 | WRITE_ORDER       | deny | does not apply to subject type `CUSTOMER`
        customer-manager-1 | PLACE_ORDER       | allow
        customer-manager-1 | READ_PAYMENTS     | allow
        customer-manager-1 | RECEIVE_THING_WORK_SESSION_NOTIFICATIONS | allow
        org-admin          | RECEIVE_THING_WORK_SESSION_NOTIFICATIONS | deny | does not apply
        org-admin          | PLACE_ORDER       | deny | does not apply to subject type `ORGANIZATION`
        org-admin          | WRITE_PAYMENTS    | allow
        partner-tech       | WRITE_SIM         | deny | does not apply to subject type `PARTNER`
        partner-tech       | READ_CONNECTION_TEST | allow
        partner-tech       | READ_CERTIFICATE  | allow
        partner-tech       | WRITE_CERTIFICATE | deny | no role of the subject grants `WRITE_CERTIFICATE`
        # Inline roles from a verified token carry the user's type with them.
        someone | READ_ORGANIZATION roles=customer-manager type=ORGANIZATION | allow
        someone | READ_ORGANIZATION roles=customer-manager type=CUSTOMER     | deny | does not apply
        someone | PLACE_ORDER roles=customer-manager type=PARTNER           | allow
        someone | PLACE_ORDER roles=customer-manager type=ORGANIZATION      | deny | does not apply
        # A type the document does not know gets only the permissions without a list.
        someone | READ_THING roles=customer-manager type=GUEST        | allow
        someone | READ_PAYMENTS roles=customer-manager type=GUEST     | deny | does not apply to subject type `GUEST`
        "#,
    );
    statements.extend(explicit);
    report("applicability", replay(&mut client, &statements).await);
}

#[tokio::test]
async fn api_keys_hold_their_own_set_and_changes_apply_at_once() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut count = 0;
    let keys = table(
        r#"
        apikey-erp-sync             | WRITE_PAYMENTS   | allow | granted `WRITE_PAYMENTS` by role `erp-sync`
        apikey-erp-sync             | IMPORT_CUSTOMERS | allow
        apikey-erp-sync             | READ_THING       | deny  | no role of the subject grants `READ_THING`
        apikey-partner-provisioning | REGISTER_THING   | allow
        apikey-partner-provisioning | WRITE_THING_CONNECTION_TOKENS | allow
        apikey-partner-provisioning | WRITE_CLOUD_STATUS | deny | does not apply to subject type `PARTNER`
        apikey-partner-provisioning | WRITE_PAYMENTS   | deny  | no role of the subject grants
        apikey-telemetry            | WRITE_DATA       | allow
        apikey-telemetry            | READ_USER_AUTHORIZATION | allow
        apikey-telemetry            | READ_CONNECTION_TEST | deny | does not apply to subject type `CUSTOMER`
        apikey-telemetry            | READ_CUSTOMER    | deny  | no role of the subject grants
        "#,
    );
    count += replay(&mut client, &keys).await;

    // A new API key on a PARTNER entity with the ERP set: its own set, filtered by its type.
    let policy = example(EXAMPLE);
    let erp = role_set(&policy, "erp-sync");
    client
        .put_subject(admin(pb::PutSubjectRequest {
            subject: Some(pb::Subject {
                id: "apikey-partner-erp".into(),
                r#type: "PARTNER".into(),
                roles: vec!["erp-sync".into()],
                ..Default::default()
            }),
            expected_revision: 0,
        }))
        .await
        .expect("put api key");
    let mut statements = Vec::new();
    for (name, _, _) in DOC {
        let allowed = erp.iter().any(|g| g == name) && applies(name, "PARTNER");
        statements.push(statement("apikey-partner-erp", name, allowed));
    }
    count += replay(&mut client, &statements).await;

    // An API key created with a narrower set than its role's.
    client
        .put_subject(admin(pb::PutSubjectRequest {
            subject: Some(pb::Subject {
                id: "apikey-erp-readonly".into(),
                r#type: "ORGANIZATION".into(),
                roles: vec!["erp-sync".into()],
                only: vec![
                    "READ_CUSTOMER".into(),
                    "READ_ORDER".into(),
                    "READ_PAYMENTS".into(),
                ],
                ..Default::default()
            }),
            expected_revision: 0,
        }))
        .await
        .expect("put narrowed api key");
    let mut statements = Vec::new();
    for (name, _, _) in DOC {
        let allowed = ["READ_CUSTOMER", "READ_ORDER", "READ_PAYMENTS"].contains(name);
        statements.push(statement("apikey-erp-readonly", name, allowed));
    }
    count += replay(&mut client, &statements).await;

    // A key's set changes at once; applicability still holds.
    for (name, enabled) in [
        ("READ_ORGANIZATION", true),
        ("READ_AUDIT", true),
        ("WRITE_DATA", false),
    ] {
        let out = client
            .update_permission(admin(set("telemetry-ingest", name, enabled, &[])))
            .await
            .expect("update api key set")
            .into_inner();
        assert!(!out.pending_approval);
    }
    let changed = table(
        r#"
        apikey-telemetry | READ_ORGANIZATION | deny  | does not apply to subject type `CUSTOMER`
        apikey-telemetry | READ_AUDIT        | allow | granted `READ_AUDIT` by role `telemetry-ingest`
        apikey-telemetry | WRITE_DATA        | deny  | no role of the subject grants `WRITE_DATA`
        apikey-telemetry | WRITE_METRIC_VALUE | allow
        "#,
    );
    count += replay(&mut client, &changed).await;
    // A user type defined as every permission loses one when it is disabled.
    client
        .update_permission(admin(set(
            "organization-administrator",
            "DELETE_ORGANIZATION",
            false,
            &[],
        )))
        .await
        .expect("narrow all-role");
    count += replay(
        &mut client,
        &table(
            r#"
            org-admin | DELETE_ORGANIZATION | deny
            org-admin | WRITE_ORGANIZATION  | allow
            "#,
        ),
    )
    .await;
    report("api keys", count);
}
