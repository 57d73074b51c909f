//! Seed 003, SDK dotted permissions: `examples/sdk-accounts.yaml` replayed against the
//! document's own statements through the gRPC API.
//!
//! A dotted parent implies its children; access roles reader ⊂ writer ⊂ maintainer hold per
//! resource (the maintainer also manages access); root accounts hold everything everywhere;
//! regular accounts hold everything except accounts.create, accounts.read and balances.update;
//! a token created for an account overrides those defaults.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use crate::common;
use crate::seeds;

use authz_sidecar::api::pb;
use authz_sidecar::model::{Grant, Role, Subject};
use common::*;
use seeds::*;

const EXAMPLE: &str = "sdk-accounts.yaml";

/// The document's permissions, in its order, with their section.
const DOC: &[(&str, &str)] = &[
    ("access.add", "Access Control"),
    ("access.remove", "Access Control"),
    ("accounts.create", "Account Management"),
    ("accounts.read", "Account Management"),
    ("balances.read", "Balance Management"),
    ("balances.update", "Balance Management"),
    ("collections.create", "Collection Management"),
    ("collections.read", "Collection Management"),
    ("collections.update", "Collection Management"),
    ("collections.children", "Collection Management"),
    ("collections.children.add", "Collection Management"),
    ("collections.children.read", "Collection Management"),
    ("collections.children.remove", "Collection Management"),
    ("collections.parents", "Collection Management"),
    ("collections.parents.add", "Collection Management"),
    ("collections.parents.read", "Collection Management"),
    ("collections.parents.remove", "Collection Management"),
    ("collections.stacks", "Collection Management"),
    ("collections.stacks.add", "Collection Management"),
    ("collections.stacks.remove", "Collection Management"),
    ("groups.create", "Group Management"),
    ("groups.delete", "Group Management"),
    ("groups.accounts", "Group Management"),
    ("groups.accounts.add", "Group Management"),
    ("groups.accounts.remove", "Group Management"),
    ("images.create", "Image Management"),
    ("images.read", "Image Management"),
    ("operations.create", "Operation Management"),
    ("operations.read", "Operation Management"),
    ("operations.update", "Operation Management"),
    ("stacks.create", "Stack Management"),
    ("stacks.read", "Stack Management"),
    ("stacks.update", "Stack Management"),
    ("stacks.operations", "Stack Management"),
    ("stacks.operations.add", "Stack Management"),
    ("stacks.operations.remove", "Stack Management"),
    ("storage.create", "Storage Management"),
    ("storage.read", "Storage Management"),
    ("storage.update", "Storage Management"),
    ("storage.delete", "Storage Management"),
];

/// The dotted hierarchy: a parent and the children it implies.
const HIERARCHY: &[(&str, &[&str])] = &[
    (
        "collections.children",
        &[
            "collections.children.add",
            "collections.children.read",
            "collections.children.remove",
        ],
    ),
    (
        "collections.parents",
        &[
            "collections.parents.add",
            "collections.parents.read",
            "collections.parents.remove",
        ],
    ),
    (
        "collections.stacks",
        &["collections.stacks.add", "collections.stacks.remove"],
    ),
    (
        "groups.accounts",
        &["groups.accounts.add", "groups.accounts.remove"],
    ),
    (
        "stacks.operations",
        &["stacks.operations.add", "stacks.operations.remove"],
    ),
];

/// "For regular accounts we grant all permissions except for the following".
const REGULAR_EXCEPT: [&str; 3] = ["accounts.create", "accounts.read", "balances.update"];

/// reader: "Can view the resource".
const READER: &[&str] = &[
    "collections.read",
    "collections.children.read",
    "collections.parents.read",
    "stacks.read",
];
/// writer: "Can view and modify the resource" (reader plus every modification).
const WRITER_ADDS: &[&str] = &[
    "collections.update",
    "collections.children",
    "collections.children.add",
    "collections.children.remove",
    "collections.parents",
    "collections.parents.add",
    "collections.parents.remove",
    "collections.stacks",
    "collections.stacks.add",
    "collections.stacks.remove",
    "stacks.update",
    "stacks.operations",
    "stacks.operations.add",
    "stacks.operations.remove",
];
/// maintainer: "Full control over the resource, including managing access".
const MAINTAINER_ADDS: &[&str] = &["access.add", "access.remove"];

fn access_set(role: &str) -> Vec<&'static str> {
    let mut set: Vec<&str> = READER.to_vec();
    if role == "writer" || role == "maintainer" {
        set.extend(WRITER_ADDS);
    }
    if role == "maintainer" {
        set.extend(MAINTAINER_ADDS);
    }
    set
}

fn regular(permission: &str) -> bool {
    !REGULAR_EXCEPT.contains(&permission)
}

/// alice's access roles, as the example gives them.
const ALICE_RESOURCES: &[(&str, Option<&str>)] = &[
    ("collections/c1", Some("reader")),
    ("collections/c2", Some("writer")),
    ("stacks/s1", Some("maintainer")),
    ("collections/c3", None),
    ("stacks/s2", None),
];

#[test]
fn the_example_lists_the_documents_catalog_and_defaults() {
    let policy = example(EXAMPLE);
    let got: Vec<(&str, &str)> = policy
        .catalog
        .permissions
        .iter()
        .map(|p| (p.name.as_str(), p.group.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(got, DOC);
    for p in &policy.catalog.permissions {
        let implies: Vec<&str> = p.implies.iter().map(String::as_str).collect();
        let want: &[&str] = HIERARCHY
            .iter()
            .find(|h| h.0 == p.name)
            .map_or(&[], |h| h.1);
        assert_eq!(implies, want, "{}", p.name);
        let parent = HIERARCHY
            .iter()
            .find(|h| h.1.contains(&p.name.as_str()))
            .map(|h| h.0);
        assert_eq!(p.parent.as_deref(), parent, "{}", p.name);
        assert!(p.description.is_some(), "{}", p.name);
    }
    let root = policy.role("root").expect("root");
    assert!(root.all && root.all_resources && root.except.is_empty());
    let regular = policy.role("regular").expect("regular");
    assert!(regular.all && !regular.all_resources);
    assert_eq!(regular.except, REGULAR_EXCEPT);
    for name in ["reader", "writer", "maintainer"] {
        assert_eq!(policy.role(name).expect("access role").kind, "access");
    }
    report("catalog", DOC.len() + 5);
}

/// The example plus, for each parent and for one child of each, an account role holding that
/// permission alone.
fn hierarchy_policy() -> String {
    let mut policy = example(EXAMPLE);
    for (parent, children) in HIERARCHY {
        for name in [*parent, children[0]] {
            policy.roles.push(Role {
                name: format!("grant-{name}"),
                kind: "account".into(),
                grants: vec![Grant::enabled(name)],
                ..Role::default()
            });
            policy.subjects.push(Subject {
                id: format!("holds-{name}"),
                subject_type: "account".into(),
                roles: vec![format!("grant-{name}")],
                ..Subject::default()
            });
        }
    }
    to_text(&policy)
}

#[tokio::test]
async fn a_parent_implies_its_children_and_nothing_else() {
    let sc = start(&hierarchy_policy()).await;
    let mut client = sc.client().await;
    let mut statements = Vec::new();
    for (parent, children) in HIERARCHY {
        for (name, _) in DOC {
            let allowed = name == parent || children.contains(name);
            statements.push(statement(&format!("holds-{parent}"), name, allowed));
            // A child implies neither its parent nor its siblings.
            statements.push(statement(
                &format!("holds-{}", children[0]),
                name,
                *name == children[0],
            ));
        }
    }
    report("hierarchy", replay(&mut client, &statements).await);
}

#[tokio::test]
async fn root_holds_everything_and_regular_everything_but_three() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut statements = Vec::new();
    for (name, _) in DOC {
        // "By default all root accounts have full access to all resources and actions."
        statements.push(statement("root-account", name, true));
        for (resource, _) in ALICE_RESOURCES {
            statements.push(statement(
                "root-account",
                &format!("{name} resource={resource}"),
                true,
            ));
        }
        statements.push(statement(
            "root-account",
            &format!("{name} resource=stacks/anything"),
            true,
        ));
        // Regular accounts: all except accounts.create, accounts.read and balances.update.
        let mut s = statement("alice", name, regular(name));
        if !regular(name) {
            s.reason = Some(format!("no role of the subject grants `{name}`"));
        }
        statements.push(s);
    }
    report("root and regular", replay(&mut client, &statements).await);
}

#[tokio::test]
async fn access_roles_nest_reader_writer_maintainer_per_resource() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let mut statements = Vec::new();
    for (resource, role) in ALICE_RESOURCES {
        for (name, _) in DOC {
            let held = role.is_some_and(|r| access_set(r).contains(name));
            let mut s = statement(
                "alice",
                &format!("{name} resource={resource}"),
                regular(name) && held,
            );
            s.reason = Some(match role {
                _ if !regular(name) => format!("no role of the subject grants `{name}`"),
                _ if held => "granted".into(),
                None => format!("the subject holds no access role on `{resource}`"),
                Some(r) => format!("access role `{r}` on `{resource}` does not grant `{name}`"),
            });
            statements.push(s);
        }
    }
    let mut count = replay(&mut client, &statements).await;

    // reader ⊂ writer ⊂ maintainer, strictly; the maintainer's extra is managing access.
    let mut held: Vec<Vec<&str>> = Vec::new();
    for resource in ["collections/c1", "collections/c2", "stacks/s1"] {
        let mut set = Vec::new();
        for (name, _) in DOC {
            let req = seeds::request("alice", &format!("{name} resource={resource}"));
            if check(&mut client, req).await.allowed {
                set.push(*name);
            }
            count += 1;
        }
        held.push(set);
    }
    assert!(
        held[0].iter().all(|p| held[1].contains(p)) && held[0].len() < held[1].len(),
        "reader ⊂ writer"
    );
    assert!(
        held[1].iter().all(|p| held[2].contains(p)) && held[1].len() < held[2].len(),
        "writer ⊂ maintainer"
    );
    let extra: Vec<&str> = held[2]
        .iter()
        .filter(|p| !held[1].contains(p))
        .copied()
        .collect();
    assert_eq!(extra, ["access.add", "access.remove"]);

    let explicit = table(
        r#"
        alice | collections.read resource=collections/c1           | allow | granted `collections.read` by role `regular`
        alice | collections.update resource=collections/c1         | deny  | access role `reader` on `collections/c1` does not grant `collections.update`
        alice | collections.children.add resource=collections/c2   | allow
        alice | access.add resource=collections/c2                 | deny  | access role `writer` on `collections/c2` does not grant `access.add`
        alice | access.add resource=stacks/s1                      | allow
        alice | access.remove resource=stacks/s1                   | allow
        alice | stacks.operations.add resource=stacks/s1           | allow
        alice | collections.read resource=collections/c3           | deny  | the subject holds no access role on `collections/c3`
        # The access role does not lift the account's defaults.
        alice | accounts.read resource=stacks/s1                   | deny  | no role of the subject grants `accounts.read`
        # Without a resource, the account's defaults alone decide.
        alice | access.add                                         | allow
        alice | collections.update                                 | allow
        "#,
    );
    count += replay(&mut client, &explicit).await;
    report("access roles", count);
}

#[tokio::test]
async fn a_token_overrides_its_accounts_defaults() {
    let sc = start(&example_text(EXAMPLE)).await;
    let mut client = sc.client().await;
    let only = [
        "collections.read",
        "collections.children.read",
        "collections.parents.read",
        "stacks.read",
        "balances.read",
    ];
    let mut statements = Vec::new();
    for (name, _) in DOC {
        let mut s = statement("alice-token-readonly", name, only.contains(name));
        if regular(name) && !only.contains(name) {
            s.reason = Some(format!("`{name}` is outside the subject's override"));
        }
        statements.push(s);
        for (resource, role) in ALICE_RESOURCES {
            let allowed = only.contains(name) && role.is_some_and(|r| access_set(r).contains(name));
            statements.push(statement(
                "alice-token-readonly",
                &format!("{name} resource={resource}"),
                allowed,
            ));
        }
    }
    let mut count = replay(&mut client, &statements).await;

    // Tokens created at runtime (PutSubject), overriding the defaults of their account's role.
    let put = |id: &str, roles: &[&str], only: &[&str], resources: &[(&str, &str)]| {
        admin(pb::PutSubjectRequest {
            subject: Some(pb::Subject {
                id: id.into(),
                r#type: "token".into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                only: only.iter().map(|r| r.to_string()).collect(),
                resources: resources
                    .iter()
                    .map(|(resource, role)| pb::ResourceRole {
                        resource: resource.to_string(),
                        role: role.to_string(),
                    })
                    .collect(),
                ..Default::default()
            }),
            expected_revision: 0,
        })
    };
    client
        .put_subject(put(
            "tok-root",
            &["root"],
            &["accounts.read", "balances.read"],
            &[],
        ))
        .await
        .expect("put");
    client
        .put_subject(put(
            "tok-alice",
            &["regular"],
            &["accounts.create", "collections.read", "access.add"],
            &[("collections/c9", "maintainer")],
        ))
        .await
        .expect("put");
    count += replay(
        &mut client,
        &table(
            r#"
            tok-root  | accounts.read                          | allow
            tok-root  | balances.read resource=collections/zz  | allow
            tok-root  | accounts.create                        | deny | `accounts.create` is outside the subject's override
            tok-root  | storage.delete                         | deny | outside the subject's override
            # An override narrows: it cannot hand a regular account's token what the account lacks.
            tok-alice | accounts.create                        | deny | no role of the subject grants `accounts.create`
            tok-alice | collections.read                       | allow
            tok-alice | access.add resource=collections/c9     | allow
            tok-alice | access.add resource=collections/c1     | deny | the subject holds no access role on `collections/c1`
            tok-alice | collections.update                     | deny | outside the subject's override
            "#,
        ),
    )
    .await;
    // Re-creating the token replaces it: without an override it holds the account's defaults.
    client
        .put_subject(put("tok-alice", &["regular"], &[], &[]))
        .await
        .expect("replace");
    count += replay(
        &mut client,
        &table(
            r#"
            tok-alice | collections.update | allow
            tok-alice | storage.delete     | allow
            tok-alice | balances.update    | deny | no role of the subject grants `balances.update`
            "#,
        ),
    )
    .await;
    client
        .delete_subject(admin(pb::DeleteSubjectRequest {
            id: "tok-alice".into(),
            expected_revision: 0,
        }))
        .await
        .expect("revoke");
    count += replay(
        &mut client,
        &table("tok-alice | collections.read | deny | unknown subject `tok-alice`"),
    )
    .await;
    report("token overrides", count);
}
