//! Seed 002, carbon-credit installed apps: `examples/carbon-credit-apps.yaml` replayed against
//! the document's own statements through the gRPC API.
//!
//! Each resource has exactly the levels the document lists (Read / Write / Request);
//! `organization_info` is required on every installation; `examiner` gives superadmin access.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;
use crate::seeds;

use authz_sidecar::model::file::parse_policy;
use authz_sidecar::model::{Grant, Kind, Role, validate};
use common::*;
use seeds::*;
use tonic::Code;

const EXAMPLE: &str = "carbon-credit-apps.yaml";

/// The document's permissions and the levels each supports.
const DOC: &[(&str, &[&str])] = &[
    ("organization_info", &["read"]),
    ("organization_members", &["read"]),
    ("organization_warehouse", &["read", "write"]),
    ("organization_inventory", &["read", "write", "request"]),
    ("organization_projects", &["read"]),
    ("examiner", &["read"]),
];
const LEVELS: [&str; 3] = ["read", "write", "request"];
const REQUIRED: &str = "organization_info:read";

/// (subject, role, organization where it is installed).
fn installations() -> Vec<(String, String, String)> {
    let policy = example(EXAMPLE);
    policy
        .subjects
        .iter()
        .map(|s| {
            let role = policy.role(&s.roles[0]).expect("role");
            (
                s.id.clone(),
                role.name.clone(),
                role.installed_in[0].clone(),
            )
        })
        .collect()
}

/// The organization an installation subject of the example acts for.
fn org_of(subject: &str) -> &'static str {
    if subject.ends_with("-acme") {
        "org-acme"
    } else {
        "org-greenco"
    }
}

/// A statement table whose every row names the installation's own organization.
fn scoped_table(text: &str) -> Vec<Statement> {
    let rows: Vec<String> = text
        .lines()
        .map(|line| {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                return line.to_owned();
            }
            let mut cols: Vec<String> = t.split('|').map(|c| c.trim().to_owned()).collect();
            cols[1] = format!("{} scope={}", cols[1], org_of(&cols[0]));
            cols.join(" | ")
        })
        .collect();
    table(&rows.join("\n"))
}

#[test]
fn the_example_lists_exactly_the_documents_levels() {
    let policy = example(EXAMPLE);
    let mut want: Vec<String> = Vec::new();
    for (resource, levels) in DOC {
        for level in *levels {
            want.push(format!("{resource}:{level}"));
        }
    }
    let mut got: Vec<String> = policy
        .catalog
        .permissions
        .iter()
        .map(|p| p.name.clone())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for p in &policy.catalog.permissions {
        let (resource, level) = p.name.split_once(':').expect("resource:level");
        assert_eq!(p.group.as_deref(), Some(resource), "{}", p.name);
        // Read never side-effects; Write and Request change state.
        let kind = if level == "read" {
            Kind::Read
        } else {
            Kind::Write
        };
        assert_eq!(p.kind, Some(kind), "{}", p.name);
        assert!(
            p.implies.is_empty() && p.requires.is_empty(),
            "levels are independent: {}",
            p.name
        );
        let required: &[&str] = if p.name == REQUIRED {
            &["installation"]
        } else {
            &[]
        };
        assert_eq!(p.required_for, required, "{}", p.name);
    }
    assert!(policy.roles.iter().all(|r| r.kind == "installation"));
    report("catalog", want.len());
}

#[test]
fn a_policy_whose_installation_lacks_organization_info_fails_validation() {
    let text = example_text(EXAMPLE);
    // Omitted from the grants of one installation.
    let line = "      - { permission: organization_info:read, projects: [org-acme] }\n";
    let omitted = text.replacen(line, "", 1);
    assert_ne!(omitted, text);
    // Listed, but disabled.
    let disabled = text.replacen(
        line,
        "      - { permission: organization_info:read, enabled: false, projects: [org-acme] }\n",
        1,
    );
    // Not required any more in the catalog: then it validates (the rule comes from the catalog).
    let not_required = omitted.replacen("      required_for: [installation]\n", "", 1);
    for (variant, body) in [("omitted", &omitted), ("disabled", &disabled)] {
        let err = parse_policy("carbon.yaml", body)
            .expect_err(variant)
            .to_string();
        assert!(
            err.contains(
                "`organization_info:read` is required on every role of kind `installation`"
            ),
            "{variant}: {err}"
        );
        assert!(
            err.starts_with("carbon.yaml:"),
            "{variant}: names the file and line: {err}"
        );
    }
    parse_policy("carbon.yaml", &not_required)
        .expect("without the requirement the policy is valid");
    // `authz-sidecar validate` refuses the file, naming the problem.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("carbon.yaml");
    std::fs::write(&file, &omitted).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authz-sidecar"))
        .arg("validate")
        .arg(&file)
        .env_remove("AUTHZ_ADMIN_TOKEN")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("`organization_info:read` is required on every role of kind `installation`"),
        "{stderr}"
    );
    // A role of another kind does not need it.
    let mut policy = example(EXAMPLE);
    policy.roles.push(Role {
        name: "platform-staff".into(),
        kind: "superadmin".into(),
        grants: vec![Grant::enabled("examiner:read")],
        ..Role::default()
    });
    validate(&policy).expect("only installations need organization_info");
    report("required on installations (validate)", 5);
}

#[tokio::test]
async fn every_installation_holds_exactly_its_configured_levels() {
    let policy = example(EXAMPLE);
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut statements = Vec::new();
    for (subject, role, org) in installations() {
        let set = role_set(&policy, &role);
        assert!(set.iter().any(|p| p == REQUIRED), "{role} holds {REQUIRED}");
        for (resource, levels) in DOC {
            for level in LEVELS {
                let name = format!("{resource}:{level}");
                let action = format!("{name} scope={org}");
                let mut s = if levels.contains(&level) {
                    statement(&subject, &action, set.contains(&name))
                } else {
                    // A level the document does not list for the resource does not exist.
                    let mut s = statement(&subject, &action, false);
                    s.reason = Some(format!("unknown permission `{name}`"));
                    s
                };
                if s.reason.is_none() && !s.allowed {
                    s.reason = Some(format!("no role of the subject grants `{name}`"));
                }
                statements.push(s);
            }
        }
    }
    report(
        "installations × levels",
        replay(&mut client, &statements).await,
    );
}

#[tokio::test]
async fn the_documents_statements_hold() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut statements = scoped_table(
        r#"
        # organization_info is held by every installation.
        install-dashboard-acme      | organization_info:read | allow
        install-marketplace-acme    | organization_info:read | allow
        install-retirement-greenco  | organization_info:read | allow
        install-examiner-greenco    | organization_info:read | allow
        # Only "Read" is supported for organization_info and organization_members.
        install-retirement-greenco  | organization_info:write    | deny | unknown permission
        install-retirement-greenco  | organization_members:write | deny | unknown permission
        # organization_warehouse: "Read" (inventory, reservations) and "Write" (reserve, finish).
        install-retirement-greenco  | organization_warehouse:read    | allow
        install-retirement-greenco  | organization_warehouse:write   | allow
        install-marketplace-acme    | organization_warehouse:read    | allow
        install-marketplace-acme    | organization_warehouse:write   | deny | no role of the subject grants
        install-marketplace-acme    | organization_warehouse:request | deny | unknown permission
        # organization_inventory: Request (ask for a transfer) is not Write (make the transfer).
        install-marketplace-acme    | organization_inventory:request | allow
        install-marketplace-acme    | organization_inventory:write   | deny | no role of the subject grants `organization_inventory:write`
        install-retirement-greenco  | organization_inventory:write   | allow
        install-retirement-greenco  | organization_inventory:request | deny | no role of the subject grants `organization_inventory:request`
        install-dashboard-acme      | organization_inventory:read    | allow
        install-dashboard-acme      | organization_inventory:request | deny
        # organization_projects: Read only.
        install-dashboard-acme      | organization_projects:read     | allow
        install-dashboard-acme      | organization_projects:write    | deny | unknown permission
        # examiner: superadmin access, held only where configured.
        install-examiner-greenco    | examiner:read | allow | granted `examiner:read` by role `registry-examiner@greenco`
        install-dashboard-acme      | examiner:read | deny
        install-retirement-greenco  | examiner:read | deny
        install-examiner-greenco    | examiner:write | deny | unknown permission
        install-examiner-greenco    | organization_inventory:read | deny
        # An app that is not installed has no access at all.
        install-unknown             | organization_info:read | deny | unknown subject
        "#,
    );
    // "... on projects / organizations where they are installed": nowhere else.
    statements.extend(table(
        r#"
        install-dashboard-acme      | organization_info:read scope=org-greenco | deny | not granted for scope `org-greenco`
        install-retirement-greenco  | organization_inventory:write scope=org-acme | deny | not granted for scope `org-acme`
        install-examiner-greenco    | examiner:read scope=org-acme | deny | not granted for scope
        install-dashboard-acme      | organization_info:read | deny | the request names no scope
        "#,
    ));
    report("statements", replay(&mut client, &statements).await);
}

#[tokio::test]
async fn organization_info_cannot_be_disabled_and_other_levels_change_at_once() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut count = 0;
    for (subject, role, org) in installations() {
        let status = client
            .update_permission(admin(set(&role, REQUIRED, false, &[])))
            .await
            .expect_err("required permission");
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{role}: {}",
            status.message()
        );
        assert!(
            status.message().contains(
                "`organization_info:read` is required on every role of kind `installation`"
            ),
            "{}",
            status.message()
        );
        let action = format!("{REQUIRED} scope={org}");
        count += replay(&mut client, &[statement(&subject, &action, true)]).await + 1;
    }
    // Enabling it again (it is already on) is fine.
    client
        .update_permission(admin(set("dashboard@acme", REQUIRED, true, &["org-acme"])))
        .await
        .expect("re-enabling is allowed");
    // Narrowing it to no organization would drop it where the installation is installed.
    let status = client
        .update_permission(admin(set("dashboard@acme", REQUIRED, true, &[])))
        .await
        .expect_err("required where installed");
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{}",
        status.message()
    );
    // Unknown levels cannot be configured.
    let status = client
        .update_permission(admin(set(
            "dashboard@acme",
            "organization_info:write",
            true,
            &[],
        )))
        .await
        .expect_err("unknown level");
    assert_eq!(status.code(), Code::InvalidArgument);
    // The Permissions tab changes an installation at once (no approval step).
    for (permission, enabled) in [
        ("organization_inventory:request", true),
        ("organization_warehouse:write", false),
    ] {
        let out = client
            .update_permission(admin(set(
                "retirement@greenco",
                permission,
                enabled,
                &["org-greenco"],
            )))
            .await
            .expect("update")
            .into_inner();
        assert!(!out.pending_approval);
    }
    count += replay(
        &mut client,
        &scoped_table(
            r#"
            install-retirement-greenco | organization_inventory:request | allow
            install-retirement-greenco | organization_warehouse:write   | deny
            install-retirement-greenco | organization_warehouse:read    | allow
            "#,
        ),
    )
    .await;
    report("required at runtime", count + 2);
}
