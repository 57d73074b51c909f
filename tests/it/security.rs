//! Who can reach admin RPCs (per listener), request limits, and mutual TLS on the TCP listener.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use authz_sidecar::api::pb;
use authz_sidecar::api::pb::authz_client::AuthzClient;
use authz_sidecar::config::{AdminExposure, TlsConfig};
use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn narrow() -> pb::UpdatePermissionRequest {
    set("app-dispatcher", "alarms:write", false, &[])
}

#[tokio::test]
async fn admin_calls_can_be_kept_to_the_unix_socket_or_a_separate_listener() {
    let sc = start_with(EMBEDDED_DEFAULT, |c| {
        c.admin = AdminExposure::UdsOnly;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let refused = sc
        .client()
        .await
        .update_permission(admin(narrow()))
        .await
        .expect_err("not on TCP");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("not accepted on this listener"),
        "{}",
        refused.message()
    );
    // Check still works on TCP.
    assert!(
        check(
            &mut sc.client().await,
            permission("dashboard", "devices:read")
        )
        .await
        .allowed
    );

    let mut uds = AuthzClient::new(sc.uds_channel().await);
    let ok = uds
        .update_permission(admin(narrow()))
        .await
        .expect("accepted on the Unix socket");
    assert_eq!(ok.into_inner().revision, 2);

    let admin_addr = sc.sidecar.admin_addr().expect("admin listener");
    let channel = Endpoint::from_shared(format!("http://{admin_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ok = AuthzClient::new(channel)
        .update_permission(admin(set("app-dispatcher", "alarms:write", false, &[])))
        .await
        .expect("accepted on the admin listener");
    assert_eq!(ok.into_inner().revision, 3);
}

#[tokio::test]
async fn admin_off_refuses_every_admin_call_everywhere() {
    let sc = start_with(EMBEDDED_DEFAULT, |c| c.admin = AdminExposure::Off).await;
    for mut client in [sc.client().await, AuthzClient::new(sc.uds_channel().await)] {
        // Every admin RPC, each with the bootstrap token (which holds every permission).
        let refused = [
            client.update_permission(admin(narrow())).await.err(),
            client
                .approve_pending(admin(pb::ApprovePendingRequest {
                    role: "app-dispatcher".into(),
                    ..Default::default()
                }))
                .await
                .err(),
            client
                .put_subject(admin(pb::PutSubjectRequest {
                    subject: Some(pb::Subject {
                        id: "intruder".into(),
                        roles: vec!["app-dashboard".into()],
                        ..Default::default()
                    }),
                    expected_revision: 0,
                }))
                .await
                .err(),
            client
                .delete_subject(admin(pb::DeleteSubjectRequest {
                    id: "dashboard".into(),
                    expected_revision: 0,
                }))
                .await
                .err(),
            client
                .list_audit(admin(pb::ListAuditRequest::default()))
                .await
                .err(),
            client
                .get_subject(admin(pb::GetSubjectRequest {
                    id: "dashboard".into(),
                }))
                .await
                .err(),
            client
                .list_subjects(admin(pb::ListSubjectsRequest::default()))
                .await
                .err(),
        ];
        for status in refused {
            let status = status.expect("refused");
            assert_eq!(status.code(), Code::PermissionDenied);
            assert!(
                status.message().contains("not accepted on this listener"),
                "{}",
                status.message()
            );
        }
    }
    assert_eq!(sc.sidecar.metrics().admin_refused_count(), 14);
    // Nothing was written; Check and ListRoles are not admin calls.
    let mut client = sc.client().await;
    assert!(
        check(&mut client, permission("dashboard", "devices:read"))
            .await
            .allowed
    );
    let roles = client
        .list_roles(pb::ListRolesRequest::default())
        .await
        .expect("ListRoles is open")
        .into_inner();
    assert_eq!(roles.revision, 1);
}

#[tokio::test]
async fn oversized_input_is_refused_with_the_field_named() {
    let sc = start(EMBEDDED_DEFAULT).await;
    let mut client = sc.client().await;
    let long = "x".repeat(300);
    let deep = format!("/{}", vec!["a"; 65].join("/"));
    let cases = [
        (permission(&long, "devices:read"), "subject"),
        (permission("dashboard", &long), "permission"),
        (
            http("dashboard", "GET", &format!("/{}", "y".repeat(5000))),
            "http.path",
        ),
        (http("dashboard", "GET", &deep), "http.path"),
        (
            pb::CheckRequest {
                scope: long.clone(),
                ..permission("dashboard", "devices:read")
            },
            "scope",
        ),
        (
            pb::CheckRequest {
                roles: vec!["app-dashboard".into(), long.clone()],
                ..permission("dashboard", "devices:read")
            },
            "roles[1]",
        ),
    ];
    for (request, field) in cases {
        let status = client.check(request).await.expect_err("too big");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    let subject = pb::PutSubjectRequest {
        subject: Some(pb::Subject {
            id: "s".into(),
            roles: vec!["app-dashboard".into(); 1001],
            ..Default::default()
        }),
        expected_revision: 0,
    };
    let status = client
        .put_subject(admin(subject))
        .await
        .expect_err("too many roles");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("subject.roles"),
        "{}",
        status.message()
    );
    // A message over the 1 MiB limit is refused before it is decoded.
    let huge = pb::CheckRequest {
        resource: "r".repeat(2 * 1024 * 1024),
        ..permission("dashboard", "devices:read")
    };
    let status = client.check(huge).await.expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    // And the server is fine afterwards.
    assert!(
        check(&mut client, permission("dashboard", "devices:read"))
            .await
            .allowed
    );
}

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    let ca_for = || {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let ca = ca_for();
    let other_ca = ca_for();
    let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf(&ca, "localhost"),
        client: leaf(&ca, "app.local"),
        stranger: leaf(&other_ca, "app.local"),
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let pki = pki();
    let tls = TlsConfig {
        cert_pem: pki.server.0.clone().into_bytes(),
        key_pem: pki.server.1.clone().into_bytes(),
        client_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
    };
    let sc = start_with(EMBEDDED_DEFAULT, |c| c.tls = Some(tls)).await;
    let addr = sc.sidecar.tcp_addr().unwrap();
    let connect = |identity: Option<&(String, String)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        async move {
            match endpoint.connect().await {
                Ok(channel) => AuthzClient::new(channel)
                    .check(permission("dashboard", "devices:read"))
                    .await
                    .map(|r| r.into_inner().allowed)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    assert_eq!(connect(Some(&pki.client)).await, Ok(true));
    assert!(connect(None).await.is_err(), "no client certificate");
    assert!(
        connect(Some(&pki.stranger)).await.is_err(),
        "certificate from another CA"
    );
    // Plain text is refused on a TLS listener.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    let plain_check = match plain {
        Ok(channel) => AuthzClient::new(channel)
            .check(permission("dashboard", "devices:read"))
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!plain_check);
    // The Unix socket is not wrapped in TLS: its file permissions are its access control.
    assert!(
        check(
            &mut AuthzClient::new(sc.uds_channel().await),
            permission("dashboard", "devices:read")
        )
        .await
        .allowed
    );
}
