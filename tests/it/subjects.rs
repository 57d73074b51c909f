//! `GetSubject` and `ListSubjects` end to end: what PutSubject wrote reads back with the revision
//! of its last change; pages and filters; and the admin exposure rules, which reads share with
//! writes (admin listener, bearer token, `authz.subjects.read` or `authz.subjects.write`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use authz_sidecar::api::pb;
use authz_sidecar::config::AdminExposure;
use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use common::*;
use sha2::{Digest, Sha256};
use tonic::Code;

/// The seed policy with a read-only admin (`reader-token`) and an auditor (`auditor-token`),
/// without approval: these tests read back what was written, and a new app made through the
/// API would otherwise hold nothing until its set is approved.
fn policy() -> String {
    let digest = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    format!(
        "{}\nadmins:\n  - name: reader\n    token_sha256: {}\n    permissions: [authz.subjects.read]\n  - name: auditor\n    token_sha256: {}\n    permissions: [authz.audit.read]\n",
        EMBEDDED_DEFAULT.replace("    requires_approval: true\n", ""),
        digest("reader-token"),
        digest("auditor-token")
    )
}

fn get(id: &str) -> pb::GetSubjectRequest {
    pb::GetSubjectRequest { id: id.into() }
}

fn list(page_size: i32, role: &str, kind: &str, token: &str) -> pb::ListSubjectsRequest {
    pb::ListSubjectsRequest {
        page_size,
        page_token: token.into(),
        role: role.into(),
        r#type: kind.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn what_put_subject_wrote_reads_back_with_its_revision() {
    let sc = start(&policy()).await;
    let mut client = sc.client().await;
    let seeded = client
        .get_subject(admin(get("dashboard")))
        .await
        .expect("get a seeded subject")
        .into_inner();
    let dashboard = seeded.subject.expect("subject");
    assert_eq!(dashboard.roles, ["app-dashboard"]);
    assert_eq!(dashboard.r#type, "app");
    assert_eq!(dashboard.changed_revision, 1, "written by the import");

    let written = pb::Subject {
        id: "erp".into(),
        r#type: "app".into(),
        roles: vec!["app-readonly".into()],
        resources: vec![pb::ResourceRole {
            resource: "sites/s1".into(),
            role: "app-dashboard".into(),
        }],
        ..Default::default()
    };
    let put = client
        .put_subject(admin(pb::PutSubjectRequest {
            subject: Some(written.clone()),
            expected_revision: 0,
        }))
        .await
        .expect("put")
        .into_inner();
    // A later, unrelated write does not change the subject's revision.
    client
        .put_subject(admin(pb::PutSubjectRequest {
            subject: Some(pb::Subject {
                id: "other".into(),
                r#type: "app".into(),
                roles: vec!["app-readonly".into()],
                ..Default::default()
            }),
            expected_revision: 0,
        }))
        .await
        .expect("put other");
    // Over the Unix socket too, with the read-only admin.
    let mut uds = pb::authz_client::AuthzClient::new(sc.uds_channel().await);
    let read = uds
        .get_subject(with_token(get("erp"), "reader-token"))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(read.revision, put.revision + 1);
    assert_eq!(
        read.subject.expect("subject"),
        pb::Subject {
            changed_revision: put.revision,
            ..written
        }
    );

    let missing = client
        .get_subject(admin(get("ghost")))
        .await
        .expect_err("no such subject");
    assert_eq!(missing.code(), Code::NotFound);
    let empty = client
        .get_subject(admin(get("")))
        .await
        .expect_err("empty id");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().starts_with("id:"), "{}", empty.message());

    // Deleted: gone from reads.
    client
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "erp".into(),
            expected_revision: 0,
        }))
        .await
        .expect("delete");
    let gone = client
        .get_subject(admin(get("erp")))
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn list_subjects_pages_by_id_and_filters_by_role_and_type() {
    let sc = start(&policy()).await;
    let mut client = sc.client().await;
    for (id, kind, role) in [
        ("k-1", "kiosk", "app-readonly"),
        ("k-2", "kiosk", "app-dashboard"),
        ("k-3", "kiosk", "app-readonly"),
    ] {
        client
            .put_subject(admin(pb::PutSubjectRequest {
                subject: Some(pb::Subject {
                    id: id.into(),
                    r#type: kind.into(),
                    roles: vec![role.into()],
                    ..Default::default()
                }),
                expected_revision: 0,
            }))
            .await
            .expect("put");
    }
    // Every subject, two per page, in id order, across pages.
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_subjects(admin(list(2, "", "", &token)))
            .await
            .expect("page")
            .into_inner();
        assert!(page.subjects.len() <= 2);
        ids.extend(page.subjects.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 8, "{ids:?}");

    let readonly = client
        .list_subjects(admin(list(0, "app-readonly", "", "")))
        .await
        .expect("by role")
        .into_inner();
    let names: Vec<_> = readonly.subjects.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(names, ["k-1", "k-3", "readonly"]);
    assert!(readonly.subjects.iter().all(|s| s.changed_revision >= 1));

    let kiosks = client
        .list_subjects(admin(list(1, "app-readonly", "kiosk", "")))
        .await
        .expect("by role and type")
        .into_inner();
    assert_eq!(kiosks.subjects[0].id, "k-1");
    let next = client
        .list_subjects(admin(list(
            1,
            "app-readonly",
            "kiosk",
            &kiosks.next_page_token,
        )))
        .await
        .expect("next page")
        .into_inner();
    assert_eq!(next.subjects[0].id, "k-3");
    assert!(next.next_page_token.is_empty());

    // A token is bound to its filters; bad sizes and tokens name the field.
    for (request, field) in [
        (list(1, "", "kiosk", &kiosks.next_page_token), "page_token:"),
        (list(1, "", "", "garbage!"), "page_token:"),
        (list(-1, "", "", ""), "page_size:"),
    ] {
        let e = client
            .list_subjects(admin(request))
            .await
            .expect_err("invalid");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
}

#[tokio::test]
async fn reads_follow_the_admin_rules_of_writes() {
    let sc = start(&policy()).await;
    let mut client = sc.client().await;
    let no_token = client
        .get_subject(get("dashboard"))
        .await
        .expect_err("no token");
    assert_eq!(no_token.code(), Code::Unauthenticated);
    let auditor = client
        .list_subjects(with_token(list(0, "", "", ""), "auditor-token"))
        .await
        .expect_err("auditor lacks authz.subjects.read");
    assert_eq!(auditor.code(), Code::PermissionDenied);
    // The read-only admin reads, and cannot write.
    client
        .list_subjects(with_token(list(0, "", "", ""), "reader-token"))
        .await
        .expect("reader reads");
    let write = client
        .delete_subject(with_token(
            pb::DeleteSubjectRequest {
                id: "dashboard".into(),
                expected_revision: 0,
            },
            "reader-token",
        ))
        .await
        .expect_err("reader cannot write");
    assert_eq!(write.code(), Code::PermissionDenied);
    drop(sc);

    // Admin calls only on the Unix socket: reads are refused over TCP, served over the socket.
    let sc = start_with(&policy(), |c| c.admin = AdminExposure::UdsOnly).await;
    let refused = sc
        .client()
        .await
        .get_subject(admin(get("dashboard")))
        .await
        .expect_err("not on TCP");
    assert_eq!(refused.code(), Code::PermissionDenied);
    pb::authz_client::AuthzClient::new(sc.uds_channel().await)
        .get_subject(admin(get("dashboard")))
        .await
        .expect("served on the socket");
}
