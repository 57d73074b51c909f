//! The gRPC contract end to end: the real server, real clients, TCP and Unix socket.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use authz_sidecar::api::pb;
use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use common::*;
use tonic::Code;

const RULES: &str = include_str!("../fixtures/rules.yaml");

#[tokio::test]
async fn check_answers_each_action_kind_over_tcp_and_unix_socket() {
    let sc = start(EMBEDDED_DEFAULT).await;
    let mut tcp = sc.client().await;
    let mut uds = pb::authz_client::AuthzClient::new(sc.uds_channel().await);
    // (request, allowed, piece of the reason)
    let cases = [
        (
            permission("dashboard", "devices:read"),
            true,
            "granted `devices:read` by role `app-dashboard`",
        ),
        (
            permission("dashboard", "devices:write"),
            false,
            "no role of the subject grants `devices:write`",
        ),
        (
            permission("stranger", "devices:read"),
            false,
            "unknown subject `stranger`",
        ),
        (
            permission("dashboard", "devices:fly"),
            false,
            "unknown permission `devices:fly`",
        ),
        (
            http("dashboard", "GET", "/v1/devices/d1?page=2"),
            true,
            "devices:read",
        ),
        (
            http("dashboard", "POST", "/v1/alarms/a1/dispatch"),
            false,
            "`alarms:write`",
        ),
        (
            http("dispatcher", "POST", "/v1/alarms/a1/dispatch"),
            true,
            "alarms:write",
        ),
        (
            http("dispatcher", "GET", "/v1/unknown"),
            false,
            "no endpoint or path rule maps GET /v1/unknown",
        ),
        (event("dashboard", "alarm.created"), true, "events:read"),
        (
            event("dispatcher", "snapshot.created"),
            false,
            "snapshots:read",
        ),
        (
            event("dispatcher", "nothing.happened"),
            false,
            "no permission gates event",
        ),
    ];
    for (request, allowed, reason) in cases {
        for client in [&mut tcp, &mut uds] {
            let got = check(client, request.clone()).await;
            assert_eq!(got.allowed, allowed, "{request:?}: {}", got.reason);
            assert!(
                got.reason.contains(reason),
                "{request:?}: `{}` lacks `{reason}`",
                got.reason
            );
            assert_eq!(got.revision, 1);
        }
    }
    let got = check(
        &mut tcp,
        http("dispatcher", "GET", "/v1/devices/d1/snapshots"),
    )
    .await;
    assert_eq!(got.required, vec!["devices:read", "snapshots:read"]);
    sc.sidecar.stop().await.expect("stop");
}

#[tokio::test]
async fn malformed_checks_are_invalid_argument_naming_the_field() {
    let sc = start(EMBEDDED_DEFAULT).await;
    let mut client = sc.client().await;
    let too_many_roles = pb::CheckRequest {
        roles: (0..33).map(|i| format!("r{i}")).collect(),
        ..permission("x", "devices:read")
    };
    let cases = [
        (permission("", "devices:read"), "subject"),
        (
            pb::CheckRequest {
                subject: "dashboard".into(),
                ..Default::default()
            },
            "action",
        ),
        (permission("dashboard", ""), "permission"),
        (http("dashboard", "GET", "v1/devices"), "http.path"),
        (http("dashboard", "", "/v1/devices"), "http.method"),
        (too_many_roles, "roles"),
    ];
    for (request, field) in cases {
        let status = client.check(request.clone()).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    let ahead = pb::CheckRequest {
        min_revision: 99,
        ..permission("dashboard", "devices:read")
    };
    let status = client.check(ahead).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("min_revision 99"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn inline_roles_replace_the_stored_subject() {
    let sc = start(EMBEDDED_DEFAULT).await;
    let mut client = sc.client().await;
    let inline = pb::CheckRequest {
        roles: vec!["app-dispatcher".into()],
        subject_type: "app".into(),
        ..http("token-subject", "POST", "/v1/alarms/a1/dispatch")
    };
    assert!(check(&mut client, inline.clone()).await.allowed);
    let unknown = pb::CheckRequest {
        roles: vec!["ghost".into()],
        ..inline
    };
    let got = check(&mut client, unknown).await;
    assert!(!got.allowed);
    assert_eq!(got.reason, "unknown role `ghost`");
}

#[tokio::test]
async fn admin_calls_need_the_right_credential() {
    let sc = start(RULES).await;
    let mut client = sc.client().await;
    let change = || set("operator", "gl_resource_update", true, &[]);
    let missing = client
        .update_permission(change())
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Code::Unauthenticated);
    let wrong = client
        .update_permission(with_token(change(), "not-a-token"))
        .await
        .expect_err("bad token");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let basic = {
        let mut r = tonic::Request::new(change());
        r.metadata_mut().insert(
            "authorization",
            format!("Basic {ADMIN_TOKEN}").parse().expect("ascii"),
        );
        client.update_permission(r).await.expect_err("wrong scheme")
    };
    assert_eq!(basic.code(), Code::Unauthenticated);
    let forbidden = client
        .update_permission(with_token(change(), "approver-token"))
        .await
        .expect_err("approver cannot write");
    assert_eq!(forbidden.code(), Code::PermissionDenied);
    assert!(
        forbidden.message().contains("authz.roles.write"),
        "{}",
        forbidden.message()
    );
    let subject = pb::PutSubjectRequest {
        subject: Some(pb::Subject {
            id: "s".into(),
            ..Default::default()
        }),
        expected_revision: 0,
    };
    assert_eq!(
        client
            .put_subject(subject)
            .await
            .expect_err("no token")
            .code(),
        Code::Unauthenticated
    );
    let audit = client
        .list_audit(with_token(
            pb::ListAuditRequest::default(),
            "approver-token",
        ))
        .await;
    assert_eq!(
        audit.expect_err("approver cannot read audit").code(),
        Code::PermissionDenied
    );
    // Nothing was written by any refused call.
    let ok = client
        .update_permission(admin(change()))
        .await
        .expect("bootstrap admin may write");
    assert_eq!(ok.into_inner().revision, 2);
}

#[tokio::test]
async fn every_rule_violation_has_its_status() {
    let sc = start(RULES).await;
    let mut client = sc.client().await;
    let with_expected = |mut r: pb::UpdatePermissionRequest, rev| {
        r.expected_revision = rev;
        r
    };
    let cases: Vec<(pb::UpdatePermissionRequest, Code, &str)> = vec![
        (
            set("nope", "devices:read", true, &[]),
            Code::NotFound,
            "unknown role `nope`",
        ),
        (
            set("operator", "ghost", true, &[]),
            Code::InvalidArgument,
            "set.name",
        ),
        (
            set("operator", "project_read", true, &["too-short"]),
            Code::InvalidArgument,
            "set.projects[0]",
        ),
        (
            set(
                "operator",
                "global_read",
                true,
                &["Uh5qRBqc4DcmbNbAANtMnrYm"],
            ),
            Code::InvalidArgument,
            "set.projects",
        ),
        (
            set("installed", "organization_info", false, &[]),
            Code::FailedPrecondition,
            "required on every role of kind `installation`",
        ),
        (
            replace_paths("app_user", &[("/thngs", "d")]),
            Code::FailedPrecondition,
            "not a subset of base role `base_app_user`",
        ),
        (
            replace_paths("app_user", &[("/places", "r")]),
            Code::FailedPrecondition,
            "not a subset",
        ),
        (
            replace_paths("app_user", &[("thngs", "r")]),
            Code::InvalidArgument,
            "replace_paths.paths[0].path",
        ),
        (
            replace_paths("app_user", &[("/thngs", "x")]),
            Code::InvalidArgument,
            "replace_paths.paths[0].access",
        ),
        (
            replace_paths("base_app_user", &[]),
            Code::FailedPrecondition,
            "base roles are immutable",
        ),
        (
            with_expected(set("operator", "gl_resource_update", true, &[]), 7),
            Code::FailedPrecondition,
            "expected_revision 7 is stale",
        ),
        (
            pb::UpdatePermissionRequest {
                role: "operator".into(),
                change: None,
                expected_revision: 0,
            },
            Code::InvalidArgument,
            "change",
        ),
    ];
    for (request, code, message) in cases {
        let status = client
            .update_permission(admin(request.clone()))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{request:?}: {}", status.message());
        assert!(
            status.message().contains(message),
            "{request:?}: `{}` lacks `{message}`",
            status.message()
        );
    }
    // An immutable default cannot be changed through replace_paths.
    let mut changed_default = replace_paths("app_user", &[]);
    if let Some(pb::update_permission_request::Change::ReplacePaths(p)) =
        &mut changed_default.change
    {
        p.paths.push(pb::PathPermission {
            path: "/roles".into(),
            access: "rd".into(),
            default: true,
        });
    }
    let status = client
        .update_permission(admin(changed_default))
        .await
        .expect_err("immutable");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("immutable default"),
        "{}",
        status.message()
    );

    let bad_subject = pb::PutSubjectRequest {
        subject: Some(pb::Subject {
            id: "s".into(),
            roles: vec!["ghost".into()],
            ..Default::default()
        }),
        expected_revision: 0,
    };
    let status = client
        .put_subject(admin(bad_subject))
        .await
        .expect_err("unknown role");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("subject.roles[0]"),
        "{}",
        status.message()
    );
    let status = client
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "ghost".into(),
            expected_revision: 0,
        }))
        .await
        .expect_err("absent");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .approve_pending(admin(pb::ApprovePendingRequest {
            role: "operator".into(),
            expected_revision: 0,
            ..Default::default()
        }))
        .await
        .expect_err("nothing pending");
    assert_eq!(status.code(), Code::FailedPrecondition);
    // None of the refusals moved the revision.
    let roles = client
        .list_roles(pb::ListRolesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(roles.revision, 1);
}

#[tokio::test]
async fn writes_are_visible_at_once_on_an_open_channel() {
    let sc = start(RULES).await;
    let mut reader = sc.client().await;
    let mut writer = sc.client().await;
    let before = check(&mut reader, permission("op1", "gl_resource_update")).await;
    assert!(!before.allowed);
    let updated = writer
        .update_permission(admin(set("operator", "gl_resource_update", true, &[])))
        .await
        .expect("update")
        .into_inner();
    let after = check(&mut reader, permission("op1", "gl_resource_update")).await;
    assert!(after.allowed, "{}", after.reason);
    assert_eq!(after.revision, updated.revision);
    // A child is effective only while its parent is.
    writer
        .update_permission(admin(set("operator", "global_read", false, &[])))
        .await
        .expect("update");
    let orphan = check(&mut reader, permission("op1", "gl_resource_update")).await;
    assert!(!orphan.allowed);
    assert!(
        orphan.reason.contains("requires `global_read`"),
        "{}",
        orphan.reason
    );
    // Scoped grants.
    let project = "Uh5qRBqc4DcmbNbAANtMnrYm";
    writer
        .update_permission(admin(set("operator", "project_read", true, &[project])))
        .await
        .expect("update");
    let scoped = |scope: &str| pb::CheckRequest {
        scope: scope.into(),
        ..permission("op1", "project_read")
    };
    assert!(check(&mut reader, scoped(project)).await.allowed);
    assert!(
        !check(&mut reader, scoped("Xh5qRBqc4DcmbNbAANtMnrYm"))
            .await
            .allowed
    );
    // Path rules replaced as a whole.
    assert!(
        check(&mut reader, http("user1", "GET", "/thngs"))
            .await
            .allowed
    );
    writer
        .update_permission(admin(replace_paths("app_user", &[("/thngs/*", "u")])))
        .await
        .expect("replace");
    assert!(
        !check(&mut reader, http("user1", "GET", "/thngs"))
            .await
            .allowed
    );
    assert!(
        check(&mut reader, http("user1", "PUT", "/thngs/t1"))
            .await
            .allowed
    );
    assert!(
        check(&mut reader, http("user1", "GET", "/roles"))
            .await
            .allowed,
        "defaults stay"
    );
}

#[tokio::test]
async fn approval_roles_narrow_at_once_and_widen_only_when_approved() {
    let sc = start(RULES).await;
    let mut client = sc.client().await;
    let widen = client
        .update_permission(admin(set("app-one", "devices:write", true, &[])))
        .await
        .expect("widening accepted as pending")
        .into_inner();
    assert!(widen.pending_approval);
    assert_eq!(
        widen.role.as_ref().expect("role").pending,
        vec!["devices:write"]
    );
    assert!(
        !check(&mut client, permission("app1", "devices:write"))
            .await
            .allowed,
        "pending is not effective"
    );

    let narrow = client
        .update_permission(admin(set("app-one", "devices:read", false, &[])))
        .await
        .expect("narrowing")
        .into_inner();
    assert!(!narrow.pending_approval);
    assert!(
        !check(&mut client, permission("app1", "devices:read"))
            .await
            .allowed,
        "narrowing applies at once"
    );

    let approved = client
        .approve_pending(with_token(
            pb::ApprovePendingRequest {
                role: "app-one".into(),
                expected_revision: 0,
                ..Default::default()
            },
            "approver-token",
        ))
        .await
        .expect("approver approves")
        .into_inner();
    assert!(approved.role.expect("role").pending.is_empty());
    let got = check(&mut client, http("app1", "PATCH", "/v1/devices/d1")).await;
    assert!(got.allowed, "{}", got.reason);
    assert_eq!(got.revision, approved.revision);
}

#[tokio::test]
async fn list_roles_pages_in_a_stable_order() {
    let sc = start(RULES).await;
    let mut client = sc.client().await;
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_roles(pb::ListRolesRequest {
                page_size: 2,
                page_token: token.clone(),
                kind: String::new(),
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.roles.len() <= 2);
        names.extend(page.roles.into_iter().map(|r| r.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        names,
        vec![
            "app-one",
            "app_user",
            "base_app_user",
            "device-reader",
            "extra-1",
            "extra-2",
            "installed",
            "operator"
        ]
    );

    let misc = client
        .list_roles(pb::ListRolesRequest {
            page_size: 1,
            page_token: String::new(),
            kind: "misc".into(),
        })
        .await
        .expect("filtered")
        .into_inner();
    assert_eq!(misc.roles[0].name, "device-reader");
    let wrong_filter = client
        .list_roles(pb::ListRolesRequest {
            page_size: 1,
            page_token: misc.next_page_token,
            kind: "app".into(),
        })
        .await
        .expect_err("token bound to its filter");
    assert_eq!(wrong_filter.code(), Code::InvalidArgument);
    let garbage = client
        .list_roles(pb::ListRolesRequest {
            page_token: "%%%".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert!(
        garbage.message().starts_with("page_token"),
        "{}",
        garbage.message()
    );
    let negative = client
        .list_roles(pb::ListRolesRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .expect_err("negative size");
    assert_eq!(negative.code(), Code::InvalidArgument);

    // Shaped like the seed documents: nested children, path defaults first.
    let all = client
        .list_roles(pb::ListRolesRequest::default())
        .await
        .expect("all")
        .into_inner();
    let operator = all
        .roles
        .iter()
        .find(|r| r.name == "operator")
        .expect("operator");
    let global = operator
        .permissions
        .iter()
        .find(|p| p.name == "global_read")
        .expect("tree root");
    assert!(global.enabled);
    assert_eq!(global.children.len(), 1);
    assert_eq!(global.children[0].name, "gl_resource_update");
    assert!(!global.children[0].enabled);
    let user = all
        .roles
        .iter()
        .find(|r| r.name == "app_user")
        .expect("app_user");
    assert_eq!(
        user.paths[0],
        pb::PathPermission {
            path: "/roles".into(),
            access: "r".into(),
            default: true
        }
    );
    assert_eq!(
        user.paths[1],
        pb::PathPermission {
            path: "/thngs".into(),
            access: "r".into(),
            default: false
        }
    );
}

#[tokio::test]
async fn a_restart_serves_exactly_what_was_acknowledged() {
    let sc = start(RULES).await;
    let mut client = sc.client().await;
    client
        .update_permission(admin(set("operator", "gl_resource_update", true, &[])))
        .await
        .expect("update");
    let put = client
        .put_subject(admin(pb::PutSubjectRequest {
            subject: Some(pb::Subject {
                id: "op2".into(),
                roles: vec!["operator".into()],
                ..Default::default()
            }),
            expected_revision: 2,
        }))
        .await
        .expect("put")
        .into_inner();
    assert_eq!(put.revision, 3);
    client
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "user1".into(),
            expected_revision: 3,
        }))
        .await
        .expect("delete");
    drop(client);

    // The seed given at restart differs; the stored policy wins.
    let sc = sc.restart(EMBEDDED_DEFAULT).await;
    assert_eq!(sc.sidecar.start_revision(), 4);
    let mut client = sc.client().await;
    let got = check(&mut client, permission("op2", "gl_resource_update")).await;
    assert!(got.allowed, "{}", got.reason);
    assert_eq!(got.revision, 4);
    assert!(
        !check(&mut client, http("user1", "GET", "/thngs"))
            .await
            .allowed
    );

    let audit = client
        .list_audit(admin(pb::ListAuditRequest::default()))
        .await
        .expect("audit")
        .into_inner();
    let actions: Vec<(u64, &str, &str)> = audit
        .entries
        .iter()
        .map(|e| (e.revision, e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            (1, "import", "policy"),
            (2, "update_permission", "role/operator"),
            (3, "put_subject", "subject/op2"),
            (4, "delete_subject", "subject/user1"),
        ]
    );
    assert!(audit.entries.iter().skip(1).all(|e| e.actor == "bootstrap"));
    assert!(
        audit.entries[3].after_json.is_empty() && audit.entries[3].before_json.contains("user1")
    );
    let paged = client
        .list_audit(admin(pb::ListAuditRequest {
            after_revision: 1,
            page_size: 2,
        }))
        .await
        .expect("page")
        .into_inner();
    assert_eq!(paged.entries.len(), 2);
    assert_eq!(paged.next_after_revision, 3);
}

#[tokio::test]
async fn health_and_reflection_share_the_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let sc = start(EMBEDDED_DEFAULT).await;
    let channel = sc.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "authz.v1.Authz"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service `{service}`");
    }
    // The health-only port (for kubelet probes on the pod IP) serves health and nothing else.
    let health_addr = sc.sidecar.health_addr().expect("health listener");
    let health_channel = tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    let probe = HealthClient::new(health_channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("probe")
        .into_inner();
    assert_eq!(probe.status, ServingStatus::Serving as i32);
    let refused = pb::authz_client::AuthzClient::new(health_channel)
        .check(permission("dashboard", "devices:read"))
        .await
        .expect_err("no API on the health port");
    assert_eq!(refused.code(), Code::Unimplemented);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"authz.v1.Authz".to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}
