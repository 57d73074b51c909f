//! Seed 004, IoT operator and application-user roles: `examples/iot-roles.yaml` replayed against
//! the document's own statements and JSON examples through the gRPC API.
//!
//! Operator permissions nest (a child is effective only while its parent is) and the project_*
//! ones are scoped to 24-character project ids. Application-user roles are (path, crud) rules,
//! a subset of `base_app_user`, with immutable defaults; a PUT replaces the non-default set.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;
use crate::seeds;

use authz_sidecar::api::pb;
use common::*;
use seeds::*;
use serde_json::{Value, json};
use tonic::Code;

const EXAMPLE: &str = "iot-roles.yaml";
const PROJECT: &str = "Uh5qRBqc4DcmbNbAANtMnrYm";
const OTHER_PROJECT: &str = "VqbHsCwa8nXkT3pR5mYdEfGs";

/// "Read an Operator Role's Permissions": the response for a role with nothing enabled.
const OPERATOR_DOC: &str = r#"[
  {
    "name": "global_read",
    "enabled": false,
    "projectScoped": false,
    "children": [
      { "name": "gl_resource_update", "enabled": false, "projectScoped": false },
      { "name": "gl_project_update", "enabled": false, "projectScoped": false }
    ]
  },
  {
    "name": "project_read",
    "enabled": false,
    "projectScoped": true,
    "projects": [],
    "children": [
      { "name": "project_update", "enabled": false, "projectScoped": true, "projects": [] },
      { "name": "project_resource_update", "enabled": false, "projectScoped": true, "projects": [] }
    ]
  }
]"#;

/// "Default Application User Role Permissions".
const DEFAULTS_DOC: &str = r#"[
  { "path": "/access$", "access": "r", "default": true },
  { "path": "/accesses", "access": "crd", "default": true },
  { "path": "/auth/all/logout", "access": "c", "default": true },
  { "path": "/rateLimits$", "access": "r", "default": true },
  { "path": "/roles", "access": "r", "default": true }
]"#;

/// "Base App User Role Permissions".
const BASE_DOC: &str = r#"[
  { "path": "/access$", "access": "r", "default": true },
  { "path": "/accesses", "access": "crd", "default": true },
  { "path": "/auth/all/logout", "access": "c", "default": true },
  { "path": "/rateLimits$", "access": "r", "default": true },
  { "path": "/roles", "access": "r", "default": true },
  { "path": "/thngs", "access": "cru" },
  { "path": "/thngs/*", "access": "cru" },
  { "path": "/products", "access": "cru" },
  { "path": "/products/*", "access": "cru" },
  { "path": "/collections", "access": "cru" },
  { "path": "/collections/*", "access": "cru" },
  { "path": "/collections/*/thngs/*", "access": "d" },
  { "path": "/actions/*", "access": "cr" },
  { "path": "/actions", "access": "r" },
  { "path": "/auth/evrythng/thngs", "access": "crd" },
  { "path": "/users/{user}", "access": "ru" },
  { "path": "/places", "access": "r" },
  { "path": "/places/*", "access": "r" },
  { "path": "/connectors/*/auth", "access": "rd" },
  { "path": "/connectors/*/auth/token", "access": "c" },
  { "path": "/connectors", "access": "r" },
  { "path": "/ifttt/v1", "access": "crd" },
  { "path": "/auth/oauth2", "access": "cr" },
  { "path": "/cujo", "access": "c" },
  { "path": "/thngs/*/actions/commissions", "access": "cr" },
  { "path": "/thngs/*/actions/decommissions", "access": "cr" },
  { "path": "/thngs/*/commissionState", "access": "r" }
]"#;

/// The ApplicationUserRolePermissionDocument data-model example (role `app-user-editor`).
const EDITOR_DOC: &str = r#"[
  { "path": "/access$", "access": "r", "default": true },
  { "path": "/accesses", "access": "crd", "default": true },
  { "path": "/auth/all/logout", "access": "c", "default": true },
  { "path": "/rateLimits$", "access": "r", "default": true },
  { "path": "/roles", "access": "r", "default": true },
  { "path": "/thngs", "access": "cru" },
  { "path": "/products", "access": "cru" },
  { "path": "/collections", "access": "cru" },
  { "path": "/collections/*/thngs/*", "access": "d" },
  { "path": "/actions/*", "access": "cr" },
  { "path": "/actions", "access": "r" },
  { "path": "/auth/evrythng/thngs", "access": "crd" },
  { "path": "/users/{user}", "access": "ru" },
  { "path": "/places", "access": "r" },
  { "path": "/connectors/*/auth", "access": "rd" },
  { "path": "/connectors/*/auth/token", "access": "c" },
  { "path": "/connectors", "access": "r" }
]"#;

/// "Read an Application User Role's Permissions" (role `app-user-catalog`, non-default part).
const CATALOG_DOC: &str = r#"[
  { "path": "/thngs", "access": "cru" },
  { "path": "/products", "access": "cru" }
]"#;

fn doc(text: &str) -> Value {
    serde_json::from_str(text).expect("document JSON")
}

/// An OperatorRolePermissionDocument as the document writes it.
fn permission_json(p: &pb::RolePermission) -> Value {
    let mut v = json!({ "name": p.name, "enabled": p.enabled, "projectScoped": p.project_scoped });
    if p.project_scoped {
        v["projects"] = json!(p.projects);
    }
    if !p.children.is_empty() {
        v["children"] = Value::Array(p.children.iter().map(permission_json).collect());
    }
    v
}

/// An ApplicationUserRolePermissionDocument as the document writes it.
fn path_json(p: &pb::PathPermission) -> Value {
    let mut v = json!({ "path": p.path, "access": p.access });
    if p.default {
        v["default"] = json!(true);
    }
    v
}

fn paths_json(paths: &[pb::PathPermission]) -> Value {
    Value::Array(paths.iter().map(path_json).collect())
}

fn without_children(mut v: Value) -> Value {
    v.as_object_mut().expect("object").remove("children");
    v
}

async fn role(
    client: &mut pb::authz_client::AuthzClient<tonic::transport::Channel>,
    name: &str,
) -> pb::Role {
    let all = client
        .list_roles(pb::ListRolesRequest::default())
        .await
        .expect("list roles")
        .into_inner();
    all.roles
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("role `{name}` listed"))
}

#[test]
fn the_example_declares_the_documents_operator_permissions() {
    let policy = example(EXAMPLE);
    assert_eq!(
        policy.catalog.scope_pattern.as_deref(),
        Some("^[abcdefghkmnpqrstwxyABCDEFGHKMNPQRSTUVWXY0123456789]{24}$")
    );
    // (name, parent, scoped) for the enum the document lists.
    let want: &[(&str, Option<&str>, bool)] = &[
        ("global_read", None, false),
        ("gl_resource_update", Some("global_read"), false),
        ("gl_project_update", Some("global_read"), false),
        ("project_read", None, true),
        ("project_update", Some("project_read"), true),
        ("project_resource_update", Some("project_read"), true),
    ];
    let got: Vec<(&str, Option<&str>, bool)> = policy
        .catalog
        .permissions
        .iter()
        .map(|p| (p.name.as_str(), p.parent.as_deref(), p.scoped))
        .collect();
    assert_eq!(got, want);
    for p in &policy.catalog.permissions {
        let requires: Vec<&str> = p.requires.iter().map(String::as_str).collect();
        assert_eq!(
            requires,
            p.parent.as_deref().into_iter().collect::<Vec<_>>(),
            "{}: a child requires its parent",
            p.name
        );
    }
    report("catalog", want.len() + 1);
}

#[tokio::test]
async fn list_roles_returns_the_documents_permission_documents() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let new = role(&mut client, "operator-new").await;
    let got = Value::Array(new.permissions.iter().map(permission_json).collect());
    assert_eq!(
        got,
        doc(OPERATOR_DOC),
        "Read an Operator Role's Permissions"
    );
    assert!(new.paths.is_empty());

    let base = role(&mut client, "base_app_user").await;
    assert_eq!(
        paths_json(&base.paths),
        doc(BASE_DOC),
        "Base App User Role Permissions"
    );
    let editor = role(&mut client, "app-user-editor").await;
    assert_eq!(editor.base, "base_app_user");
    assert_eq!(
        paths_json(&editor.paths),
        doc(EDITOR_DOC),
        "the data-model example"
    );
    let catalog = role(&mut client, "app-user-catalog").await;
    assert_eq!(
        paths_json(&catalog.paths[..5]),
        doc(DEFAULTS_DOC),
        "defaults first, inherited"
    );
    assert_eq!(
        paths_json(&catalog.paths[5..]),
        doc(CATALOG_DOC),
        "Read an Application User Role's Permissions"
    );
    for r in [&base, &editor, &catalog] {
        assert!(
            r.permissions.is_empty(),
            "{} is an application-user role: paths only",
            r.name
        );
    }
    // The defaults the document lists are exactly the base role's defaults.
    let base_defaults: Vec<&pb::PathPermission> = base.paths.iter().filter(|p| p.default).collect();
    assert_eq!(
        Value::Array(base_defaults.into_iter().map(path_json).collect()),
        doc(DEFAULTS_DOC)
    );

    let project = role(&mut client, "operator-project").await;
    let project_read = project
        .permissions
        .iter()
        .find(|p| p.name == "project_read")
        .expect("listed");
    assert_eq!(
        permission_json(project_read),
        json!({
            "name": "project_read", "enabled": true, "projectScoped": true, "projects": [PROJECT],
            "children": [
                { "name": "project_update", "enabled": true, "projectScoped": true, "projects": [PROJECT] },
                { "name": "project_resource_update", "enabled": true, "projectScoped": true, "projects": [PROJECT, OTHER_PROJECT] }
            ]
        })
    );
    report("permission documents", 6);
}

#[tokio::test]
async fn operator_children_need_their_parent_and_project_scopes() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let statements = table(&format!(
        r#"
        op-new     | global_read        | deny  | no role of the subject grants `global_read`
        op-new     | gl_resource_update | deny
        op-new     | project_read scope={PROJECT} | deny
        op-global  | global_read        | allow | granted `global_read` by role `operator-global`
        op-global  | gl_resource_update | allow
        op-global  | gl_project_update  | deny  | no role of the subject grants `gl_project_update`
        op-global  | project_read scope={PROJECT} | deny
        # project_* permissions are enabled for specific projects only.
        op-project | project_read scope={PROJECT}       | allow | granted `project_read` by role `operator-project`
        op-project | project_read scope={OTHER_PROJECT} | deny  | `project_read` is not granted for scope `{OTHER_PROJECT}`
        op-project | project_read                       | deny  | `project_read` is scoped; the request names no scope
        op-project | project_update scope={PROJECT}     | allow
        op-project | project_update scope={OTHER_PROJECT} | deny | not granted for scope
        op-project | project_resource_update scope={PROJECT} | allow
        # Enabled for the other project too, but its parent is not: not effective there.
        op-project | project_resource_update scope={OTHER_PROJECT} | deny | `project_resource_update` requires `project_read`, which is not effective
        op-project | global_read                        | deny
        op-project | project_read scope=not-a-project-id | deny
        "#
    ));
    report("operators", replay(&mut client, &statements).await);
}

#[tokio::test]
async fn enabling_and_disabling_operator_permissions_follows_the_document() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut count = 0;
    // PUT .../permissions/global_read {"name": "global_read", "enabled": true}
    let out = client
        .update_permission(admin(set("operator-new", "global_read", true, &[])))
        .await
        .expect("enable global_read")
        .into_inner();
    assert!(!out.pending_approval);
    let node = out
        .role
        .expect("role")
        .permissions
        .into_iter()
        .find(|p| p.name == "global_read")
        .expect("node");
    assert_eq!(
        without_children(permission_json(&node)),
        json!({ "name": "global_read", "enabled": true, "projectScoped": false })
    );
    count += replay(
        &mut client,
        &table(
            r#"
            op-new | global_read        | allow
            op-new | gl_resource_update | deny | no role of the subject grants `gl_resource_update`
            "#,
        ),
    )
    .await;
    client
        .update_permission(admin(set("operator-new", "gl_resource_update", true, &[])))
        .await
        .expect("child");
    count += replay(&mut client, &table("op-new | gl_resource_update | allow")).await;
    // A child is effective only while its parent is.
    client
        .update_permission(admin(set("operator-new", "global_read", false, &[])))
        .await
        .expect("parent off");
    count += replay(
        &mut client,
        &table(
            r#"
            op-new | global_read        | deny
            op-new | gl_resource_update | deny | `gl_resource_update` requires `global_read`, which is not effective
            "#,
        ),
    )
    .await;

    // PUT .../permissions/project_read {"name": "project_read", "enabled": true, "projects": [...]}
    let out = client
        .update_permission(admin(set("operator-new", "project_read", true, &[PROJECT])))
        .await
        .expect("enable project_read")
        .into_inner();
    let node = out
        .role
        .expect("role")
        .permissions
        .into_iter()
        .find(|p| p.name == "project_read")
        .expect("node");
    assert_eq!(
        without_children(permission_json(&node)),
        json!({ "name": "project_read", "enabled": true, "projectScoped": true, "projects": [PROJECT] })
    );
    client
        .update_permission(admin(set(
            "operator-new",
            "project_update",
            true,
            &[PROJECT, OTHER_PROJECT],
        )))
        .await
        .expect("child for two projects");
    count += replay(
        &mut client,
        &table(&format!(
            r#"
            op-new | project_read scope={PROJECT}         | allow
            op-new | project_update scope={PROJECT}       | allow
            op-new | project_update scope={OTHER_PROJECT} | deny | requires `project_read`
            "#
        )),
    )
    .await;
    // Extending the parent to the other project makes the child effective there too.
    client
        .update_permission(admin(set(
            "operator-new",
            "project_read",
            true,
            &[PROJECT, OTHER_PROJECT],
        )))
        .await
        .expect("parent for two projects");
    count += replay(
        &mut client,
        &table(&format!(
            "op-new | project_update scope={OTHER_PROJECT} | allow"
        )),
    )
    .await;
    // Disabling the parent disables the children everywhere.
    client
        .update_permission(admin(set("operator-new", "project_read", false, &[])))
        .await
        .expect("parent off");
    count += replay(
        &mut client,
        &table(&format!(
            r#"
            op-new | project_read scope={PROJECT}   | deny
            op-new | project_update scope={PROJECT} | deny | requires `project_read`
            "#
        )),
    )
    .await;

    // Project ids must match ^[abcdefghkmnpqrstwxyABCDEFGHKMNPQRSTUVWXY0123456789]{24}$.
    let bad: &[(&[&str], &str)] = &[
        (&["too-short"], "set.projects[0]"),
        (&["Uh5qRBqc4DcmbNbAANtMnrYmm"], "set.projects[0]"), // 25 characters
        (&["Uh5qRBqc4DcmbNbAANtMnrY"], "set.projects[0]"),   // 23 characters
        (&["Uh5qRBqc4DcmbNbAANtMnrYZ"], "set.projects[0]"),  // Z is not in the alphabet
        (&["Uh5qRBqc4DcmbNbAANtMnrYo"], "set.projects[0]"),  // nor o
        (&["uh5qRBqc4DcmbNbAANtMnrYi"], "set.projects[0]"),  // nor u, i (lower case)
        (&["Uh5qRBqc4DcmbNbAANtMnrYl"], "set.projects[0]"),  // nor l
        (&[PROJECT, "Uh5qRBqc4DcmbNbAANtMnrY-"], "set.projects[1]"),
        (&[" Uh5qRBqc4DcmbNbAANtMnrYm"], "set.projects[0]"),
    ];
    for (projects, field) in bad {
        for permission in ["project_read", "project_update", "project_resource_update"] {
            let status = client
                .update_permission(admin(set("operator-project", permission, true, projects)))
                .await
                .expect_err("invalid project id");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{projects:?}: {}",
                status.message()
            );
            assert!(
                status.message().starts_with(field),
                "{projects:?}: {}",
                status.message()
            );
            count += 1;
        }
    }
    // projectScoped is read-only: a permission that is not project-scoped takes no projects.
    let status = client
        .update_permission(admin(set(
            "operator-project",
            "global_read",
            true,
            &[PROJECT],
        )))
        .await
        .expect_err("not scoped");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("set.projects"),
        "{}",
        status.message()
    );
    // Only the six names of the document exist.
    let status = client
        .update_permission(admin(set("operator-project", "project_delete", true, &[])))
        .await
        .expect_err("unknown name");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("set.name"),
        "{}",
        status.message()
    );
    // None of the refusals changed anything.
    count += replay(
        &mut client,
        &table(&format!(
            "op-project | project_read scope={PROJECT} | allow"
        )),
    )
    .await;
    report("operator updates", count + 3);
}

/// The application-user statements: each base rule with its access letters, for alice (the
/// data-model example role) and bob (the "Read" example role).
const APP_USERS: &str = r#"
    # Defaults, inherited by every application-user role.
    alice | GET /access                  | allow | allowed by path rule `/access$` of role `app-user-editor`
    alice | GET /access/1                | deny
    alice | POST /access                 | deny  | does not grant access `c`
    alice | POST /accesses               | allow
    alice | GET /accesses/a1             | allow
    alice | DELETE /accesses/a1          | allow
    alice | PUT /accesses/a1             | deny  | path rule `/accesses` of role `app-user-editor` does not grant access `u`
    alice | POST /auth/all/logout        | allow
    alice | GET /auth/all/logout         | deny
    alice | GET /rateLimits              | allow
    alice | GET /rateLimits/x            | deny
    alice | GET /roles                   | allow
    alice | GET /roles/r1                | allow
    alice | POST /roles                  | deny
    bob   | GET /access                  | allow | allowed by path rule `/access$` of role `app-user-catalog`
    bob   | POST /accesses               | allow
    bob   | POST /auth/all/logout        | allow
    bob   | GET /rateLimits              | allow
    bob   | GET /roles                   | allow
    # alice: the data-model example's rules.
    alice | POST /thngs                  | allow
    alice | GET /thngs                   | allow
    alice | GET /thngs/t1                | allow
    alice | PUT /thngs/t1                | allow
    alice | PATCH /thngs/t1              | allow
    alice | HEAD /thngs                  | allow
    alice | DELETE /thngs/t1             | deny  | does not grant access `d`
    alice | GET /products/p1             | allow
    alice | POST /collections            | allow
    alice | DELETE /collections/c1/thngs/t1 | allow | allowed by path rule `/collections/*/thngs/*`
    alice | DELETE /collections/c1       | deny
    alice | POST /actions/scans          | allow
    alice | GET /actions/scans           | allow
    alice | GET /actions                 | allow
    alice | POST /actions                | deny
    alice | PUT /actions/scans           | deny
    alice | DELETE /auth/evrythng/thngs  | allow
    alice | PUT /auth/evrythng/thngs     | deny
    alice | GET /users/alice             | allow | allowed by path rule `/users/{user}`
    alice | PUT /users/alice             | allow
    alice | DELETE /users/alice          | deny
    alice | GET /users/bob               | deny
    alice | GET /places                  | allow
    alice | POST /places                 | deny
    alice | GET /connectors/c1/auth      | allow
    alice | DELETE /connectors/c1/auth   | allow
    alice | POST /connectors/c1/auth     | deny
    alice | POST /connectors/c1/auth/token | allow
    alice | GET /connectors              | allow
    alice | POST /connectors             | deny
    # In base_app_user but not chosen by alice's role.
    alice | GET /ifttt/v1                | deny  | no endpoint or path rule maps
    alice | POST /auth/oauth2            | deny
    alice | POST /cujo                   | deny
    # A query string or a trailing slash does not change the decision; an empty segment, a
    # fragment or a dot segment is refused (README, "HTTP paths").
    alice | GET /thngs?limit=10          | allow
    alice | GET /thngs/t1/               | allow
    alice | GET //thngs/t1/              | deny  | refused path: it holds an empty segment
    alice | GET /thngs/t1#x              | deny  | refused path: it holds a `#` fragment
    alice | GET /users/alice/../bob      | deny  | refused path: it holds a `.` or `..` segment
    alice | DELETE /thngs/t1?force=true  | deny
    alice | GET /users/bob?as=alice      | deny
    # Path prefixes are segment-wise.
    alice | GET /thngsx                  | deny
    alice | GET /unknown                 | deny  | no endpoint or path rule maps GET /unknown
    # bob: the "Read an Application User Role's Permissions" example.
    bob   | POST /thngs                  | allow
    bob   | PUT /products/p1             | allow
    bob   | DELETE /products/p1          | deny
    bob   | GET /collections             | deny
    bob   | GET /users/bob               | deny
    bob   | GET /places                  | deny
"#;

#[tokio::test]
async fn application_users_get_exactly_their_paths_and_access() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    report(
        "application users",
        replay(&mut client, &table(APP_USERS)).await,
    );
}

#[tokio::test]
async fn a_put_replaces_the_whole_non_default_set_within_the_base() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut count = 0;
    // Must be a subset of base_app_user: FAILED_PRECONDITION otherwise.
    let outside: &[&[(&str, &str)]] = &[
        &[("/thngs", "d")],
        &[("/places", "cru")],
        &[("/ifttt/v1/recipes", "u")],
        &[("/users/*", "r")],
        &[("/evil", "r")],
        &[("/thngs", "cr"), ("/products", "crud")],
        &[("/auth/oauth2", "crud")],
    ];
    for rules in outside {
        let status = client
            .update_permission(admin(replace_paths("app-user-editor", rules)))
            .await
            .expect_err("outside");
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{rules:?}: {}",
            status.message()
        );
        assert!(
            status
                .message()
                .contains("not a subset of base role `base_app_user`"),
            "{}",
            status.message()
        );
        count += 1;
    }
    // Defaults are immutable: changing one is refused, echoing one back unchanged is ignored.
    let mut change_default = replace_paths("app-user-editor", &[("/thngs", "cr")]);
    if let Some(pb::update_permission_request::Change::ReplacePaths(p)) = &mut change_default.change
    {
        p.paths.push(pb::PathPermission {
            path: "/roles".into(),
            access: "rd".into(),
            default: true,
        });
    }
    let status = client
        .update_permission(admin(change_default))
        .await
        .expect_err("immutable default");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("immutable default"),
        "{}",
        status.message()
    );
    // The base role itself is not edited through its derived roles' PUT.
    let status = client
        .update_permission(admin(replace_paths("base_app_user", &[])))
        .await
        .expect_err("base");
    assert_eq!(status.code(), Code::FailedPrecondition);
    count += replay(&mut client, &table("alice | GET /places | allow")).await + 2;

    // The document's PUT: [{"path": "/thngs", "access": "cr"}] replaces everything non-default.
    let mut put = replace_paths("app-user-editor", &[("/thngs", "cr")]);
    if let Some(pb::update_permission_request::Change::ReplacePaths(p)) = &mut put.change {
        p.paths.insert(
            0,
            pb::PathPermission {
                path: "/roles".into(),
                access: "r".into(),
                default: true,
            },
        );
    }
    let out = client
        .update_permission(admin(put))
        .await
        .expect("put")
        .into_inner();
    let paths = out.role.expect("role").paths;
    assert_eq!(paths_json(&paths[..5]), doc(DEFAULTS_DOC));
    assert_eq!(
        paths_json(&paths[5..]),
        json!([{ "path": "/thngs", "access": "cr" }])
    );
    count += replay(
        &mut client,
        &table(
            r#"
            alice | POST /thngs        | allow
            alice | GET /thngs/t1      | allow
            alice | PUT /thngs/t1      | deny
            alice | GET /products      | deny
            alice | GET /places        | deny
            alice | GET /users/alice   | deny
            alice | GET /roles         | allow
            alice | POST /accesses     | allow
            # Other roles are untouched.
            bob   | PUT /products/p1   | allow
            "#,
        ),
    )
    .await;

    // Any subset of the base may be chosen, including rules only the base lists.
    client
        .update_permission(admin(replace_paths(
            "app-user-editor",
            &[
                ("/ifttt/v1", "cd"),
                ("/thngs/*/commissionState", "r"),
                ("/places/*", "r"),
                ("/thngs/t1", "u"),
            ],
        )))
        .await
        .expect("subset");
    count += replay(
        &mut client,
        &table(
            r#"
            alice | DELETE /ifttt/v1                 | allow
            alice | GET /ifttt/v1                    | deny
            alice | GET /thngs/t7/commissionState    | allow
            alice | GET /places/p1                   | allow
            alice | GET /places                      | deny
            alice | PUT /thngs/t1                    | allow
            alice | PUT /thngs/t2                    | deny
            alice | POST /thngs                      | deny
            "#,
        ),
    )
    .await;

    // "To delete all non-default permissions ... perform an update with an empty array."
    let out = client
        .update_permission(admin(replace_paths("app-user-editor", &[])))
        .await
        .expect("clear")
        .into_inner();
    assert_eq!(
        paths_json(&out.role.expect("role").paths),
        doc(DEFAULTS_DOC)
    );
    let listed = role(&mut client, "app-user-editor").await;
    assert_eq!(paths_json(&listed.paths), doc(DEFAULTS_DOC));
    count += replay(
        &mut client,
        &table(
            r#"
            alice | GET /thngs/t7/commissionState | deny
            alice | DELETE /ifttt/v1        | deny
            alice | GET /access             | allow
            alice | DELETE /accesses/a1     | allow
            alice | POST /auth/all/logout   | allow
            alice | GET /rateLimits         | allow
            alice | GET /roles/r1           | allow
            "#,
        ),
    )
    .await;
    report("path PUT", count + 2);
}

/// "If a role's permissions are changed while a user with that role has an open Pub/Sub Broker
/// connection, the changes will not apply for those users until they disconnect and reconnect."
/// The sidecar does better: the next Check on the already-open channel sees the change.
#[tokio::test]
async fn a_role_change_reaches_an_already_open_channel_at_once() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut open = sc.client().await;
    let mut writer = sc.client().await;
    assert!(
        check(&mut open, http("alice", "GET", "/places"))
            .await
            .allowed
    );
    assert!(
        !check(&mut open, permission("op-new", "global_read"))
            .await
            .allowed
    );

    let paths = writer
        .update_permission(admin(replace_paths(
            "app-user-editor",
            &[("/thngs", "cru")],
        )))
        .await
        .expect("put")
        .into_inner();
    let got = check(&mut open, http("alice", "GET", "/places")).await;
    assert!(!got.allowed, "{}", got.reason);
    assert_eq!(got.revision, paths.revision);

    let enabled = writer
        .update_permission(admin(set("operator-new", "global_read", true, &[])))
        .await
        .expect("enable")
        .into_inner();
    let got = check(&mut open, permission("op-new", "global_read")).await;
    assert!(got.allowed, "{}", got.reason);
    assert_eq!(got.revision, enabled.revision);
    // Over the Unix socket too.
    let mut uds = pb::authz_client::AuthzClient::new(sc.uds_channel().await);
    assert!(
        check(&mut uds, permission("op-new", "global_read"))
            .await
            .allowed
    );
    writer
        .update_permission(admin(set("operator-new", "global_read", false, &[])))
        .await
        .expect("disable");
    assert!(
        !check(&mut uds, permission("op-new", "global_read"))
            .await
            .allowed
    );
    assert!(
        !check(&mut open, permission("op-new", "global_read"))
            .await
            .allowed
    );
    report("open connections", 7);
}
