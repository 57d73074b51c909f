//! Policy hot reload: a changed file (swapped the way Kubernetes swaps a ConfigMap) is re-applied
//! without a restart; a bad file leaves the current policy serving; admin changes survive.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use authz_sidecar::model::file::EMBEDDED_DEFAULT;
use authz_sidecar::server::Sidecar;
use authz_sidecar::startup::read_seed;
use common::*;

/// Lays out `dir/policy.yaml -> ..data/policy.yaml`, `..data -> ..vN`, as a ConfigMap volume does.
fn publish(dir: &Path, version: u32, text: &str) -> PathBuf {
    let versioned = dir.join(format!("..v{version}"));
    std::fs::create_dir_all(&versioned).expect("mkdir");
    std::fs::write(versioned.join("policy.yaml"), text).expect("write");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..v{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("atomic swap");
    let link = dir.join("policy.yaml");
    if !link.exists() {
        symlink("..data/policy.yaml", &link).expect("symlink");
    }
    link
}

async fn launch_watching(dir: &Path, policy_file: &Path) -> Sidecar {
    let mut config = config(dir, EMBEDDED_DEFAULT);
    config.seed = read_seed(policy_file).expect("valid policy file");
    config.store.policy = Some(policy_file.to_path_buf());
    config.store.reload_interval = Some(Duration::from_millis(25));
    Sidecar::launch(config).await.expect("starts")
}

/// Polls a Check until it answers `allowed` (bounded).
async fn eventually(
    client: &mut authz_sidecar::api::pb::authz_client::AuthzClient<tonic::transport::Channel>,
    request: authz_sidecar::api::pb::CheckRequest,
    allowed: bool,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = check(client, request.clone()).await;
        if got.allowed == allowed {
            return got.revision;
        }
        assert!(
            Instant::now() < deadline,
            "{request:?} never became allowed={allowed}: {}",
            got.reason
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_dashboard_grant(extra: &str) -> String {
    EMBEDDED_DEFAULT.replace(
        "    presets: [reporting-dashboard]\n",
        &format!("    presets: [reporting-dashboard]\n    grants: [{extra}]\n"),
    )
}

#[tokio::test]
async fn a_changed_file_is_reloaded_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    let file = publish(&config_dir, 1, EMBEDDED_DEFAULT);
    let sidecar = launch_watching(dir.path(), &file).await;
    let sc = TestSidecar { sidecar, dir };
    let mut client = sc.client().await;
    let write = || permission("dashboard", "devices:write");
    assert!(!check(&mut client, write()).await.allowed);

    publish(&config_dir, 2, &with_dashboard_grant("devices:write"));
    let revision = eventually(&mut client, write(), true).await;
    assert_eq!(revision, 2, "one reload, one new revision");
    assert_eq!(sc.sidecar.reload_stats().reloads(), 1);

    // A broken file: the previous policy keeps serving, the error is counted and says where.
    publish(
        &config_dir,
        3,
        "catalog:\n  permissions:\n    - name: a\n      implies: [ghost]\n      scopd: true\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while sc.sidecar.reload_stats().errors() == 0 {
        assert!(Instant::now() < deadline, "the bad file was never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = sc.sidecar.reload_stats().last_error().expect("last error");
    assert!(error.contains("policy.yaml:4:"), "{error}");
    assert!(error.contains("unknown permission `ghost`"), "{error}");
    // The structural problem is reported in the same run, as `validate` reports it.
    assert!(
        error.contains("policy.yaml:5:7: catalog.permissions[0].scopd: unknown field `scopd`; did you mean `scoped`?"),
        "{error}"
    );
    let still = check(&mut client, write()).await;
    assert!(still.allowed);
    assert_eq!(still.revision, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        sc.sidecar.reload_stats().errors(),
        1,
        "a bad file is reported once, not on every poll"
    );

    // Fixed again: reloads.
    publish(&config_dir, 4, EMBEDDED_DEFAULT);
    assert_eq!(eventually(&mut client, write(), false).await, 3);
    assert!(sc.sidecar.reload_stats().last_error().is_none());
}

#[tokio::test]
async fn admin_changes_survive_reloads_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    let file = publish(&config_dir, 1, EMBEDDED_DEFAULT);
    let sidecar = launch_watching(dir.path(), &file).await;
    let sc = TestSidecar { sidecar, dir };
    let mut client = sc.client().await;

    // Through the API: the dispatcher loses alarms:write; a new subject appears; one is deleted.
    client
        .update_permission(admin(set("app-dispatcher", "alarms:write", false, &[])))
        .await
        .expect("narrow");
    client
        .put_subject(admin(authz_sidecar::api::pb::PutSubjectRequest {
            subject: Some(authz_sidecar::api::pb::Subject {
                id: "api-app".into(),
                r#type: "app".into(),
                roles: vec!["app-dashboard".into()],
                ..Default::default()
            }),
            expected_revision: 0,
        }))
        .await
        .expect("put");
    // A new app's set waits for approval.
    client
        .approve_pending(admin(authz_sidecar::api::pb::ApprovePendingRequest {
            subject: "api-app".into(),
            ..Default::default()
        }))
        .await
        .expect("approve the new app");
    client
        .delete_subject(admin(authz_sidecar::api::pb::DeleteSubjectRequest {
            id: "readonly".into(),
            expected_revision: 0,
        }))
        .await
        .expect("delete");

    // The file changes something else: the dashboard gains devices:write.
    publish(&config_dir, 2, &with_dashboard_grant("devices:write"));
    eventually(&mut client, permission("dashboard", "devices:write"), true).await;
    assert!(
        !check(&mut client, permission("dispatcher", "alarms:write"))
            .await
            .allowed,
        "API change kept"
    );
    assert!(
        check(&mut client, permission("api-app", "devices:read"))
            .await
            .allowed,
        "API subject kept"
    );
    assert!(
        !check(&mut client, permission("readonly", "devices:read"))
            .await
            .allowed,
        "API deletion kept"
    );

    // A file change made while the sidecar was down is applied at start, under the same rule.
    let TestSidecar { sidecar, dir } = sc;
    sidecar.stop().await.expect("stop");
    publish(
        &config_dir,
        3,
        &with_dashboard_grant("devices:write, sites:write"),
    );
    let sidecar = launch_watching(dir.path(), &file).await;
    let sc = TestSidecar { sidecar, dir };
    let mut client = sc.client().await;
    assert!(
        check(&mut client, permission("dashboard", "sites:write"))
            .await
            .allowed
    );
    assert!(
        !check(&mut client, permission("dispatcher", "alarms:write"))
            .await
            .allowed
    );

    // An explicit re-seed (`authz-sidecar import`) is the one way to make the file win entirely.
    let audit = client
        .list_audit(admin(authz_sidecar::api::pb::ListAuditRequest::default()))
        .await
        .expect("audit")
        .into_inner();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "import",
            "update_permission",
            "put_subject",
            "approve_pending",
            "delete_subject",
            "reload",
            "reload"
        ]
    );
}
