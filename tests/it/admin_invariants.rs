//! Admin writes obey the invariants a policy file obeys (issue 12, section 4): each finding
//! replayed through the real server and its gRPC API.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use authz_sidecar::api::pb;
use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use common::*;
use tonic::Code;

const IOT_ROLES: &str = include_str!("../../examples/iot-roles.yaml");
const CARBON: &str = include_str!("../../examples/carbon-credit-apps.yaml");

async fn refused(
    client: &mut pb::authz_client::AuthzClient<tonic::transport::Channel>,
    request: pb::UpdatePermissionRequest,
    code: Code,
    needle: &str,
) {
    let status = client
        .update_permission(admin(request.clone()))
        .await
        .expect_err("the write is refused");
    assert_eq!(status.code(), code, "{request:?}: {}", status.message());
    assert!(
        status.message().contains(needle),
        "{request:?}: `{}` lacks `{needle}`",
        status.message()
    );
}

fn subject(id: &str, ty: &str, roles: &[&str], only: &[&str]) -> pb::PutSubjectRequest {
    pb::PutSubjectRequest {
        subject: Some(pb::Subject {
            id: id.into(),
            r#type: ty.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            only: only.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }),
        expected_revision: 0,
    }
}

/// Finding: `replace_paths` on `app-dashboard` (an approval role with no base) took effect at
/// once and unlocked `DELETE /v1/alarms/{id}`, which no scope of the catalog unlocks.
#[tokio::test]
async fn replace_paths_cannot_unlock_endpoints_outside_an_approval_roles_scopes() {
    let sc = start(EMBEDDED_DEFAULT).await;
    let mut client = sc.client().await;
    let before = check(&mut client, http("dashboard", "DELETE", "/v1/alarms/a1")).await;
    assert!(!before.allowed);
    for rules in [
        vec![("/v1/alarms/*", "crud")],
        vec![("/v1", "crud")],
        vec![("/v1/devices/*$", "r")],
    ] {
        refused(
            &mut client,
            replace_paths("app-dashboard", &rules),
            Code::FailedPrecondition,
            "replace_paths",
        )
        .await;
    }
    for (method, path) in [
        ("DELETE", "/v1/alarms/a1"),
        ("POST", "/v1/alarms/a1/dispatch"),
    ] {
        let after = check(&mut client, http("dashboard", method, path)).await;
        assert!(!after.allowed, "{method} {path}: {}", after.reason);
        assert_eq!(after.revision, before.revision, "nothing was written");
    }
}

/// Finding: a role without a base (operator `operator-global`) accepted any path rule.
#[tokio::test]
async fn a_role_without_a_base_takes_no_path_rules() {
    let sc = start(IOT_ROLES).await;
    let mut client = sc.client().await;
    for rules in [vec![("/admin", "crud")], vec![("/users/*", "crud")]] {
        refused(
            &mut client,
            replace_paths("operator-global", &rules),
            Code::FailedPrecondition,
            "no base role",
        )
        .await;
    }
    for path in ["/admin", "/users/bob"] {
        let got = check(&mut client, http("op-global", "DELETE", path)).await;
        assert!(!got.allowed, "{path}: {}", got.reason);
    }
    // A role that is itself a base defines the bound: only the policy file changes it.
    refused(
        &mut client,
        replace_paths("base_app_user", &[("/thngs", "r")]),
        Code::FailedPrecondition,
        "base",
    )
    .await;
    // Derived roles still change within their base.
    client
        .update_permission(admin(replace_paths("app-user-catalog", &[("/thngs", "r")])))
        .await
        .expect("a derived role's rules may narrow");
}

/// Finding: an operator permission could be set on an application-user role, which then
/// granted it to application users.
#[tokio::test]
async fn a_permission_keeps_to_its_role_kinds() {
    let sc = start(IOT_ROLES).await;
    let mut client = sc.client().await;
    refused(
        &mut client,
        set("app-user-editor", "global_read", true, &[]),
        Code::FailedPrecondition,
        "role kind",
    )
    .await;
    let got = check(&mut client, permission("alice", "global_read")).await;
    assert!(!got.allowed, "{}", got.reason);
    // On its own kind it is still set at once.
    client
        .update_permission(admin(set("operator-new", "global_read", true, &[])))
        .await
        .expect("an operator permission on an operator role");
    assert!(
        check(&mut client, permission("op-new", "global_read"))
            .await
            .allowed
    );
}

/// Finding: giving an app's subject another app's role widened the app with no approval.
#[tokio::test]
async fn another_role_for_an_approval_bound_subject_waits_for_approval() {
    let sc = start(EMBEDDED_DEFAULT).await;
    let mut client = sc.client().await;
    let dispatch = || http("dashboard", "POST", "/v1/alarms/a1/dispatch");
    let put = client
        .put_subject(admin(subject(
            "dashboard",
            "app",
            &["app-dashboard", "app-dispatcher"],
            &[],
        )))
        .await
        .expect("stored, waiting")
        .into_inner();
    let stored = put.subject.expect("subject");
    assert_eq!(stored.roles, vec!["app-dashboard"], "the new role waits");
    assert_eq!(
        stored.pending.expect("pending").roles,
        vec!["app-dashboard", "app-dispatcher"]
    );
    assert!(put.pending_approval);
    let got = check(&mut client, dispatch()).await;
    assert!(!got.allowed, "widening waits: {}", got.reason);

    // A brand-new subject is no way around it (delete, then put again with both roles).
    client
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "dashboard".into(),
            expected_revision: 0,
        }))
        .await
        .expect("deleted");
    let put = client
        .put_subject(admin(subject(
            "dashboard",
            "app",
            &["app-dashboard", "app-dispatcher"],
            &[],
        )))
        .await
        .expect("stored, waiting")
        .into_inner();
    assert!(put.pending_approval);
    assert!(!check(&mut client, dispatch()).await.allowed);
    // Not even with the one role another app holds: a new subject's whole set waits.
    client
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "dashboard".into(),
            expected_revision: 0,
        }))
        .await
        .expect("deleted");
    let put = client
        .put_subject(admin(subject("dashboard", "app", &["app-dispatcher"], &[])))
        .await
        .expect("stored, waiting")
        .into_inner();
    assert!(put.pending_approval);
    assert!(put.subject.expect("subject").roles.is_empty());
    assert!(!check(&mut client, dispatch()).await.allowed);
    client
        .put_subject(admin(subject(
            "dashboard",
            "app",
            &["app-dashboard", "app-dispatcher"],
            &[],
        )))
        .await
        .expect("stored, waiting");

    let approved = client
        .approve_pending(admin(pb::ApprovePendingRequest {
            role: String::new(),
            expected_revision: 0,
            subject: "dashboard".into(),
        }))
        .await
        .expect("approved")
        .into_inner();
    assert_eq!(
        approved.subject.expect("subject").roles,
        vec!["app-dashboard", "app-dispatcher"]
    );
    assert!(check(&mut client, dispatch()).await.allowed);

    // Narrowing is immediate.
    let put = client
        .put_subject(admin(subject("dashboard", "app", &["app-dashboard"], &[])))
        .await
        .expect("narrowed")
        .into_inner();
    assert!(!put.pending_approval);
    assert!(!check(&mut client, dispatch()).await.allowed);
    // Lifting an override widens too.
    client
        .put_subject(admin(subject(
            "dashboard",
            "app",
            &["app-dashboard"],
            &["events:read"],
        )))
        .await
        .expect("narrowed to an override");
    assert!(
        !check(&mut client, permission("dashboard", "devices:read"))
            .await
            .allowed
    );
    let put = client
        .put_subject(admin(subject("dashboard", "app", &["app-dashboard"], &[])))
        .await
        .expect("waiting")
        .into_inner();
    assert!(put.pending_approval);
    assert!(
        !check(&mut client, permission("dashboard", "devices:read"))
            .await
            .allowed
    );
}

const ACME: &str = "org-acme";
const GREENCO: &str = "org-greenco";

fn scoped(subject: &str, perm: &str, scope: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        scope: scope.into(),
        ..permission(subject, perm)
    }
}

/// Finding: an installation acted on every organization; nothing bound it to where it is
/// installed.
#[tokio::test]
async fn an_installation_acts_only_where_installed() {
    let sc = start(CARBON).await;
    let mut client = sc.client().await;
    let read = |scope: &str| scoped("install-dashboard-acme", "organization_info:read", scope);
    assert!(check(&mut client, read(ACME)).await.allowed);
    assert!(!check(&mut client, read(GREENCO)).await.allowed);
    assert!(!check(&mut client, read("")).await.allowed);
    refused(
        &mut client,
        set(
            "dashboard@acme",
            "organization_members:read",
            true,
            &[ACME, GREENCO],
        ),
        Code::FailedPrecondition,
        "installed_in",
    )
    .await;
    assert!(
        !check(
            &mut client,
            scoped(
                "install-dashboard-acme",
                "organization_members:read",
                GREENCO
            )
        )
        .await
        .allowed
    );
}

/// Finding: an installation subject could be put with `only` or with no roles, so that it
/// lacked the required `organization_info` grant.
#[tokio::test]
async fn an_installation_subject_keeps_its_required_grant() {
    let sc = start(CARBON).await;
    let mut client = sc.client().await;
    for (roles, only) in [
        (vec!["dashboard@acme"], vec!["organization_members:read"]),
        (vec![], vec![]),
    ] {
        let status = client
            .put_subject(admin(subject(
                "install-dashboard-acme",
                "installation",
                &roles,
                &only,
            )))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("organization_info:read"),
            "{}",
            status.message()
        );
    }
    assert!(
        check(
            &mut client,
            scoped("install-dashboard-acme", "organization_info:read", ACME)
        )
        .await
        .allowed
    );
}

/// Finding: a role removed from the policy file kept granting while a subject made through
/// the API still named it: the whole reload was refused, so the file could not revoke.
#[tokio::test]
async fn a_files_revocation_reaches_subjects_made_through_the_api() {
    use authz_sidecar::engine::{Action, Request};
    use authz_sidecar::live::{LivePolicy, Seed};
    use authz_sidecar::model::Subject;
    use authz_sidecar::model::file::parse_policy;
    use authz_sidecar::store::SledStore;
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path()).expect("store"));
    let seed = Seed {
        policy: parse_policy("v1.yaml", EMBEDDED_DEFAULT).expect("valid"),
        digest: "v1".into(),
        reloadable: true,
    };
    let (live, _) = LivePolicy::open(store, &seed, None).expect("opens");
    let made = Subject {
        id: "api-app".into(),
        subject_type: "app".into(),
        roles: vec!["app-dispatcher".into()],
        ..Subject::default()
    };
    live.put_subject("ops", made, 0).await.expect("put");
    live.approve_subject("ops", "api-app", 0)
        .await
        .expect("approve the new app's set");
    let dispatch = |live: &LivePolicy| {
        let published = live.current();
        published
            .snapshot
            .decide(&Request {
                subject: "api-app",
                action: Action::Permission("alarms:write"),
                scope: None,
                resource: None,
                inline: None,
            })
            .allowed
    };
    assert!(dispatch(&live));

    // The file drops the role (and the subject that held it).
    let without = EMBEDDED_DEFAULT
        .replace(
            "  - name: app-dispatcher\n    kind: app\n    description: Auto-dispatcher\n    requires_approval: true\n    presets: [auto-dispatcher]\n",
            "",
        )
        .replace(
            "  - { id: dispatcher, type: app, roles: [app-dispatcher] }\n",
            "",
        );
    assert_ne!(without, EMBEDDED_DEFAULT);
    let file = parse_policy("v2.yaml", &without).expect("valid");
    let revision = live
        .reload(&file, "v2")
        .expect("the file's revocation is applied")
        .expect("a new revision");
    assert!(!dispatch(&live), "the removed role no longer grants");
    let audit = live.audit(revision - 1, 10).expect("audit");
    let record = audit.last().expect("the reload is audited");
    assert_eq!(record.action, "reload");
    let after = record.after.as_ref().expect("summary").to_string();
    assert!(
        after.contains("subject/api-app") && after.contains("app-dispatcher"),
        "{after}"
    );
}
