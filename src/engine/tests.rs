//! Decision tests: one line per case against a policy that exercises every rule.

use super::*;
use crate::model::file::parse_policy;
use crate::model::{CanonicalPath, PathOptions};

const POLICY: &str = r#"
catalog:
  scope_pattern: "^[a-z]{3}$"
  permissions:
    - { name: devices:read, kind: read, endpoints: ["GET /v1/devices", "GET /v1/devices/{id}"], events: [device.online] }
    - { name: cors, endpoints: ["OPTIONS /v1/devices"] }
    - { name: devices:write, kind: write, endpoints: ["PATCH /v1/devices/{id}"] }
    - { name: snapshots:read, endpoints: ["GET /v1/devices/{id}/snapshots"], events: [device.online] }
    - { name: global_read }
    - { name: gl_update, requires: [global_read], parent: global_read }
    - { name: project_read, scoped: true }
    - { name: project_update, scoped: true, requires: [project_read], parent: project_read }
    - { name: READ_ORGANIZATION, applies_to: [ORGANIZATION] }
    - { name: collections.children, implies: [collections.children.add, collections.children.read] }
    - { name: collections.children.add }
    - { name: collections.children.read }
    - { name: collections.update }
    - { name: accounts.create }
roles:
  - { name: reader, kind: app, grants: [devices:read, cors] }
  - { name: writer, kind: app, grants: [devices:write, { permission: snapshots:read, enabled: false }] }
  - { name: ops, kind: operator, grants: [gl_update, { permission: project_read, projects: [abc] }, { permission: project_update, projects: [abc, xyz] }] }
  - { name: ops_global, kind: operator, grants: [global_read, gl_update] }
  - { name: user_type, kind: user_type, grants: [READ_ORGANIZATION] }
  - { name: sdk, kind: account, grants: [collections.children, collections.update] }
  - { name: regular, kind: account, all: true, except: [accounts.create] }
  - { name: root, kind: account, all: true, all_resources: true }
  - { name: access_reader, kind: access, grants: [collections.children.read] }
  - name: base_app_user
    kind: app_user
    paths:
      - { path: "/roles", access: r, default: true }
      - { path: "/thngs", access: cru }
      - { path: "/users/{user}", access: ru }
  - { name: app_user, kind: app_user, base: base_app_user, paths: [{ path: "/thngs", access: r }] }
subjects:
  - { id: r1, type: app, roles: [reader] }
  - { id: w1, type: app, roles: [writer] }
  - { id: rw, type: app, roles: [reader, writer] }
  - { id: op, roles: [ops] }
  - { id: opg, roles: [ops_global] }
  - { id: org, type: ORGANIZATION, roles: [user_type] }
  - { id: cust, type: CUSTOMER, roles: [user_type] }
  - { id: acct, roles: [sdk], resources: [{ resource: collections/c1, role: access_reader }] }
  - { id: reg, roles: [regular] }
  - { id: rootacct, roles: [root] }
  - { id: token, roles: [regular], only: [collections.update] }
  - { id: alice, roles: [app_user] }
"#;

fn snapshot() -> Snapshot {
    Snapshot::compile(&parse_policy("test", POLICY).expect("test policy"), 7)
}

enum A {
    P(&'static str),
    H(&'static str, &'static str),
    E(&'static str),
}

/// One case: subject, action, scope, resource → allowed, and a piece of the reason.
fn check(
    snap: &Snapshot,
    subject: &str,
    action: A,
    scope: &str,
    resource: &str,
    allowed: bool,
    reason: &str,
) {
    let canonical = match action {
        A::H(_, path) => Some(CanonicalPath::parse(path, PathOptions::default())),
        _ => None,
    };
    let action = match (action, &canonical) {
        (A::H(method, _), Some(Ok(path))) => Some(Action::Http { method, path }),
        (A::H(..), _) => None,
        (A::P(p), _) => Some(Action::Permission(p)),
        (A::E(e), _) => Some(Action::Event(e)),
    };
    let d = match (action, &canonical) {
        (Some(action), _) => snap.decide(&Request {
            subject,
            action,
            scope: (!scope.is_empty()).then_some(scope),
            resource: (!resource.is_empty()).then_some(resource),
            inline: None,
        }),
        (None, Some(Err(rejection))) => Decision::refused_path(*rejection),
        (None, _) => unreachable!("only an HTTP action has no engine action"),
    };
    let text = d.reason.to_string();
    assert_eq!(d.allowed, allowed, "{subject} {action:?}: {text}");
    assert!(
        text.contains(reason),
        "{subject} {action:?}: reason `{text}` lacks `{reason}`"
    );
}

#[test]
fn decisions_follow_the_rules() {
    let s = snapshot();
    use A::*;
    let cases: &[(&str, A, &str, &str, bool, &str)] = &[
        (
            "r1",
            P("devices:read"),
            "",
            "",
            true,
            "granted `devices:read` by role `reader`",
        ),
        (
            "r1",
            P("devices:write"),
            "",
            "",
            false,
            "no role of the subject grants `devices:write`",
        ),
        (
            "nobody",
            P("devices:read"),
            "",
            "",
            false,
            "unknown subject `nobody`",
        ),
        (
            "r1",
            P("devices:fly"),
            "",
            "",
            false,
            "unknown permission `devices:fly`",
        ),
        (
            "w1",
            P("snapshots:read"),
            "",
            "",
            false,
            "no role of the subject grants",
        ),
        // HTTP: templates, params, query, trailing slash, methods.
        (
            "r1",
            H("GET", "/v1/devices/d1"),
            "",
            "",
            true,
            "devices:read",
        ),
        (
            "r1",
            H("get", "/v1/devices/d1/?page=2"),
            "",
            "",
            true,
            "devices:read",
        ),
        (
            "r1",
            H("PATCH", "/v1/devices/d1"),
            "",
            "",
            false,
            "`devices:write`",
        ),
        (
            "w1",
            H("PATCH", "/v1/devices/d1"),
            "",
            "",
            true,
            "devices:write",
        ),
        (
            "r1",
            H("GET", "/v1/nowhere"),
            "",
            "",
            false,
            "no endpoint or path rule maps GET /v1/nowhere",
        ),
        (
            "r1",
            H("BREW", "/v1/devices"),
            "",
            "",
            false,
            "unsupported HTTP method `BREW`",
        ),
        // HEAD is decided as GET; OPTIONS only by a catalog endpoint.
        (
            "r1",
            H("HEAD", "/v1/devices/d1"),
            "",
            "",
            true,
            "devices:read",
        ),
        (
            "w1",
            H("HEAD", "/v1/devices/d1"),
            "",
            "",
            false,
            "devices:read",
        ),
        ("r1", H("OPTIONS", "/v1/devices"), "", "", true, "cors"),
        (
            "r1",
            H("OPTIONS", "/v1/devices/d1"),
            "",
            "",
            false,
            "no endpoint",
        ),
        ("w1", H("OPTIONS", "/v1/devices"), "", "", false, "cors"),
        // Refused paths deny before any rule, naming the rule they broke.
        (
            "r1",
            H("GET", "/v1/devices/../admin"),
            "",
            "",
            false,
            "`..` segment",
        ),
        (
            "r1",
            H("GET", "/v1/devices/%2e%2e/x"),
            "",
            "",
            false,
            "`..` segment",
        ),
        (
            "r1",
            H("GET", "/v1/devices/d1;x"),
            "",
            "",
            false,
            "`;` parameter",
        ),
        (
            "r1",
            H("GET", "/v1/devices/d1%2Fx"),
            "",
            "",
            false,
            "encoded `/`",
        ),
        (
            "r1",
            H("GET", "/v1//devices"),
            "",
            "",
            false,
            "empty segment",
        ),
        (
            "r1",
            H("GET", "/v1/devices/%64%31"),
            "",
            "",
            false,
            "needlessly",
        ),
        (
            "r1",
            H("GET", "/v1/devices/a%20b"),
            "",
            "",
            true,
            "devices:read",
        ),
        (
            "rw",
            H("GET", "/v1/devices/d1/snapshots"),
            "",
            "",
            false,
            "snapshots:read",
        ),
        // Events.
        ("r1", E("device.online"), "", "", true, "devices:read"),
        ("w1", E("device.online"), "", "", false, "no role"),
        (
            "r1",
            E("device.exploded"),
            "",
            "",
            false,
            "no permission gates event",
        ),
        // requires: a child is effective only while its parent is.
        (
            "op",
            P("gl_update"),
            "",
            "",
            false,
            "`gl_update` requires `global_read`",
        ),
        ("opg", P("gl_update"), "", "", true, "ops_global"),
        // scoped grants.
        ("op", P("project_read"), "abc", "", true, "project_read"),
        (
            "op",
            P("project_read"),
            "xyz",
            "",
            false,
            "not granted for scope `xyz`",
        ),
        ("op", P("project_read"), "", "", false, "names no scope"),
        ("op", P("project_update"), "abc", "", true, "project_update"),
        (
            "op",
            P("project_update"),
            "xyz",
            "",
            false,
            "requires `project_read`",
        ),
        // applies_to.
        ("org", P("READ_ORGANIZATION"), "", "", true, "user_type"),
        (
            "cust",
            P("READ_ORGANIZATION"),
            "",
            "",
            false,
            "does not apply to subject type `CUSTOMER`",
        ),
        // implies.
        ("acct", P("collections.children.add"), "", "", true, "sdk"),
        // all / all-except / override.
        ("reg", P("collections.update"), "", "", true, "regular"),
        ("reg", P("accounts.create"), "", "", false, "no role"),
        ("rootacct", P("accounts.create"), "", "", true, "root"),
        ("token", P("collections.update"), "", "", true, "regular"),
        (
            "token",
            P("collections.children.read"),
            "",
            "",
            false,
            "outside the subject's override",
        ),
        // per-resource access.
        (
            "acct",
            P("collections.children.read"),
            "",
            "collections/c1",
            true,
            "sdk",
        ),
        (
            "acct",
            P("collections.update"),
            "",
            "collections/c1",
            false,
            "access role `access_reader` on `collections/c1` does not grant",
        ),
        (
            "acct",
            P("collections.update"),
            "",
            "collections/c2",
            false,
            "no access role on `collections/c2`",
        ),
        (
            "rootacct",
            P("collections.update"),
            "",
            "collections/c2",
            true,
            "root",
        ),
        // path rules: base defaults inherited, own rules, {user}.
        (
            "alice",
            H("GET", "/roles/3"),
            "",
            "",
            true,
            "path rule `/roles`",
        ),
        (
            "alice",
            H("GET", "/thngs/t1"),
            "",
            "",
            true,
            "path rule `/thngs`",
        ),
        (
            "alice",
            H("POST", "/thngs"),
            "",
            "",
            false,
            "does not grant access `c`",
        ),
        (
            "alice",
            H("GET", "/users/alice"),
            "",
            "",
            false,
            "no endpoint or path rule",
        ),
        (
            "alice",
            H("HEAD", "/thngs/t1"),
            "",
            "",
            true,
            "path rule `/thngs`",
        ),
        (
            "alice",
            H("OPTIONS", "/thngs"),
            "",
            "",
            false,
            "no endpoint",
        ),
    ];
    for (subject, action, scope, resource, allowed, reason) in cases {
        let action = match action {
            P(p) => P(p),
            H(m, p) => H(m, p),
            E(e) => E(e),
        };
        check(&s, subject, action, scope, resource, *allowed, reason);
    }
}

#[test]
fn inline_roles_replace_the_stored_subject() {
    let s = snapshot();
    let roles = vec!["user_type".to_string()];
    let req = |subject_type| Request {
        subject: "someone-from-a-token",
        action: Action::Permission("READ_ORGANIZATION"),
        scope: None,
        resource: None,
        inline: Some(Inline {
            roles: &roles,
            subject_type,
        }),
    };
    assert!(s.decide(&req("ORGANIZATION")).allowed);
    assert!(!s.decide(&req("CUSTOMER")).allowed);
    let ghost = vec!["ghost".to_string()];
    let d = s.decide(&Request {
        inline: Some(Inline {
            roles: &ghost,
            subject_type: "",
        }),
        ..req("")
    });
    assert_eq!(d.reason, Reason::UnknownRole("ghost"));
}

#[test]
fn required_lists_every_permission_that_would_do() {
    let s = snapshot();
    let d = s.decide(&Request {
        subject: "w1",
        action: Action::Event("device.online"),
        scope: None,
        resource: None,
        inline: None,
    });
    let names: Vec<&str> = d.required.ids().map(|id| s.permission_name(id)).collect();
    assert_eq!(names, vec!["devices:read", "snapshots:read"]);
}

#[test]
fn incremental_snapshots_match_a_full_compile() {
    let mut policy = parse_policy("test", POLICY).expect("test policy");
    let s = Snapshot::compile(&policy, 1);
    policy
        .roles
        .iter_mut()
        .find(|r| r.name == "reader")
        .expect("reader")
        .grants
        .clear();
    let s2 = s.with_roles(&policy, 2);
    let ask = |snap: &Snapshot| {
        snap.decide(&Request {
            subject: "r1",
            action: Action::Permission("devices:read"),
            scope: None,
            resource: None,
            inline: None,
        })
        .allowed
    };
    assert!(ask(&s));
    assert!(!ask(&s2));
    assert_eq!(s2.revision(), 2);
    let s3 = s2.with_subject("r1", None, 3);
    assert_eq!(
        s3.decide(&Request {
            subject: "r1",
            action: Action::Permission("devices:read"),
            scope: None,
            resource: None,
            inline: None
        })
        .reason,
        Reason::UnknownSubject("r1")
    );
}

#[test]
fn subject_overlay_compaction_keeps_every_decision() {
    use crate::model::Subject;
    let policy = parse_policy("test", POLICY).expect("test policy");
    let s0 = Snapshot::compile(&policy, 1);
    let subject = |id: &str, role: &str| Subject {
        id: id.into(),
        roles: vec![role.into()],
        ..Subject::default()
    };
    let s1 = s0.with_subject("n1", Some(&subject("n1", "reader")), 2);
    let s2 = s1.with_subject("r1", None, 3);
    assert_eq!(s2.subject_overlay_len(), 2);
    assert_eq!(s2.subject_count(), s0.subject_count());
    // Compaction taken at s2; a later write (s3) must survive applying it.
    let compacted = s2.compact_subjects();
    let s3 = s2.with_subject("n2", Some(&subject("n2", "writer")), 4);
    let s4 = s3.with_compacted(&compacted).expect("same lineage");
    assert_eq!(
        s4.subject_overlay_len(),
        1,
        "only the write after the compaction stays in the overlay"
    );
    assert_eq!(s4.revision(), 4);
    let ask = |snap: &Snapshot, subject: &str, permission: &str| {
        snap.decide(&Request {
            subject,
            action: Action::Permission(permission),
            scope: None,
            resource: None,
            inline: None,
        })
        .allowed
    };
    for snap in [&s3, &s4] {
        assert!(ask(snap, "n1", "devices:read"));
        assert!(!ask(snap, "r1", "devices:read"));
        assert!(ask(snap, "n2", "devices:write"));
        assert!(ask(snap, "w1", "devices:write"));
    }
    assert_eq!(s4.subject_count(), s3.subject_count());
    // A compaction from an older lineage is refused after a full recompile.
    let fresh = Snapshot::compile(&policy, 5);
    assert!(fresh.with_compacted(&compacted).is_none());
}

/// A policy whose `applies_to` names `extra + 1` types: `zero` applies to `t0` only, `all` to
/// `t0` … `t{extra}`, and one subject of the last type holds a role granting both.
fn with_subject_types(extra: usize) -> crate::model::Policy {
    use crate::model::{Catalog, Grant, Permission, Policy, Role, Subject};
    let last = format!("t{extra}");
    Policy {
        version: 1,
        catalog: Catalog {
            permissions: vec![
                Permission {
                    name: "zero".into(),
                    applies_to: vec!["t0".into()],
                    ..Permission::default()
                },
                Permission {
                    name: "all".into(),
                    applies_to: (0..=extra).map(|i| format!("t{i}")).collect(),
                    ..Permission::default()
                },
            ],
            ..Catalog::default()
        },
        roles: vec![Role {
            name: "both".into(),
            kind: "app".into(),
            grants: vec![Grant::enabled("zero"), Grant::enabled("all")],
            ..Role::default()
        }],
        subjects: vec![
            Subject {
                id: "first".into(),
                subject_type: "t0".into(),
                roles: vec!["both".into()],
                ..Subject::default()
            },
            Subject {
                id: "last".into(),
                subject_type: last,
                roles: vec!["both".into()],
                ..Subject::default()
            },
        ],
        ..Policy::default()
    }
}

#[test]
fn subject_type_ids_never_wrap() {
    // 65,536 types fit in 16 bits exactly; the last one is not an alias of `t0`.
    let fits = with_subject_types(usize::from(u16::MAX));
    let ids = subject_type_ids(&fits).expect("fits");
    assert_eq!(ids.len(), usize::from(u16::MAX) + 1);
    assert_eq!(ids.get("t65535"), Some(&u16::MAX));
    let s = Snapshot::compile(&fits, 1);
    check(&s, "last", A::P("zero"), "", "", false, "does not apply");
    check(&s, "last", A::P("all"), "", "", true, "granted");

    // One more: refused by validation with a clear message, and by the checked numbering
    // with a typed error, never numbered `t65536` → 0 (which would hand it `t0`'s `zero`).
    let over = with_subject_types(usize::from(u16::MAX) + 1);
    let errs = crate::model::validate(&over).expect_err("too many types");
    assert!(
        errs.iter()
            .any(|e| e.message.contains("distinct subject types")),
        "{errs:?}"
    );
    let refused = subject_type_ids(&over).expect_err("too many types");
    assert_eq!(
        refused,
        CompileError::TooManySubjectTypes {
            count: usize::from(u16::MAX) + 2,
            limit: usize::from(u16::MAX) + 1,
        }
    );
    assert!(refused.to_string().contains("65537 distinct subject types"));
    // Compiled anyway (unvalidated): no type gets an id, so both permissions apply to nobody.
    let s = Snapshot::compile(&over, 1);
    check(&s, "last", A::P("zero"), "", "", false, "");
    check(&s, "first", A::P("zero"), "", "", false, "");
}
