//! The shape of a policy file: every field of every level, its type, and whether it is
//! required. One description serves two readers: the structural pass of
//! [`super::file::parse_policy`] (every unknown, missing or wrongly typed field of a file in
//! one run, with "did you mean"), and `docs/policy.schema.json` ([`json_schema`]), which editors
//! use for completion. The tests hold it to the serde types field by field, so neither reader
//! can drift from what the parser accepts.

use serde_json::{Map, Value, json};

/// The type of a field's value.
#[derive(Debug)]
pub enum Type {
    /// Any scalar, read as text.
    Str,
    /// `true` or `false`.
    Bool,
    /// A non-negative integer.
    Uint,
    /// One of these words.
    Enum(&'static [&'static str]),
    /// A sequence of values of one type.
    List(&'static Type),
    /// A mapping with known fields.
    Obj(&'static Shape),
    /// A word, or a mapping with known fields (a grant: `read` or `{permission: read}`).
    StrOr(&'static Shape),
}

/// One field of a mapping.
#[derive(Debug)]
pub struct Field {
    /// The key as written.
    pub name: &'static str,
    /// The value's type.
    pub ty: Type,
    /// Whether the mapping must have it.
    pub required: bool,
    /// One line for humans (the schema's `description`).
    pub doc: &'static str,
}

/// A mapping with known fields.
#[derive(Debug)]
pub struct Shape {
    /// The Rust type it describes (`Role`), for messages and the schema's titles.
    pub name: &'static str,
    /// One line for humans.
    pub doc: &'static str,
    /// Every field the parser accepts.
    pub fields: &'static [Field],
}

impl Shape {
    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const fn req(name: &'static str, ty: Type, doc: &'static str) -> Field {
    Field {
        name,
        ty,
        required: true,
        doc,
    }
}

const fn opt(name: &'static str, ty: Type, doc: &'static str) -> Field {
    Field {
        name,
        ty,
        required: false,
        doc,
    }
}

const STRS: Type = Type::List(&Type::Str);
const KINDS: &[&str] = &["read", "write"];
const ADMIN_PERMISSIONS: &[&str] = &[
    "authz.roles.write",
    "authz.roles.approve",
    "authz.subjects.write",
    "authz.audit.read",
    "authz.subjects.read",
];

/// A whole policy file.
pub const POLICY: Shape = Shape {
    name: "Policy",
    doc: "An authz-sidecar policy: the permission catalog, presets, roles, subjects and admins.",
    fields: &[
        opt(
            "version",
            Type::Uint,
            "Format version of the policy file; 1.",
        ),
        req("catalog", Type::Obj(&CATALOG), "The permission catalog."),
        opt(
            "presets",
            Type::List(&Type::Obj(&PRESET)),
            "Named starting sets of permissions that roles may include.",
        ),
        opt(
            "roles",
            Type::List(&Type::Obj(&ROLE)),
            "Roles of every kind.",
        ),
        opt(
            "subjects",
            Type::List(&Type::Obj(&SUBJECT)),
            "Subjects: apps, API keys, operators, users.",
        ),
        opt(
            "admins",
            Type::List(&Type::Obj(&ADMIN)),
            "Admins allowed to change the policy through the admin RPCs.",
        ),
    ],
};

const CATALOG: Shape = Shape {
    name: "Catalog",
    doc: "The catalog of permissions.",
    fields: &[
        opt(
            "scope_pattern",
            Type::Str,
            "Regular expression every scope id in a grant must match.",
        ),
        req(
            "permissions",
            Type::List(&Type::Obj(&PERMISSION)),
            "The permissions, in display order.",
        ),
        opt(
            "installation_kinds",
            STRS,
            "Role kinds whose roles are installations (they name `installed_in`).",
        ),
    ],
};

const PERMISSION: Shape = Shape {
    name: "Permission",
    doc: "A named right.",
    fields: &[
        req("name", Type::Str, "Unique name, e.g. `devices:read`."),
        opt("group", Type::Str, "Display grouping."),
        opt("description", Type::Str, "One line for humans."),
        opt(
            "kind",
            Type::Enum(KINDS),
            "`read` never side-effects; `write` mutates.",
        ),
        opt(
            "endpoints",
            STRS,
            "`METHOD /path/{param}` templates this permission unlocks.",
        ),
        opt("events", STRS, "Webhook event types this permission gates."),
        opt(
            "applies_to",
            STRS,
            "Subject types for which it can be effective; empty = every type.",
        ),
        opt(
            "implies",
            STRS,
            "Granting this permission grants these too.",
        ),
        opt(
            "requires",
            STRS,
            "Effective only while these are effective too.",
        ),
        opt("parent", Type::Str, "Display parent in ListRoles."),
        opt(
            "scoped",
            Type::Bool,
            "Grants list scope ids; a request must name one of them.",
        ),
        opt(
            "required_for",
            STRS,
            "Role kinds on which this permission must stay granted.",
        ),
        opt(
            "role_kinds",
            STRS,
            "Role kinds that may grant it; empty = every kind.",
        ),
    ],
};

const PRESET: Shape = Shape {
    name: "Preset",
    doc: "A named starting set of permissions.",
    fields: &[
        req("name", Type::Str, "Unique name."),
        opt("description", Type::Str, "One line for humans."),
        opt("permissions", STRS, "Permissions in the set."),
        opt(
            "kind",
            Type::Enum(KINDS),
            "Adds every catalog permission of this kind.",
        ),
    ],
};

const ROLE: Shape = Shape {
    name: "Role",
    doc: "A named set of grants and path rules, of a kind.",
    fields: &[
        req("name", Type::Str, "Unique name."),
        req(
            "kind",
            Type::Str,
            "The role's kind (operator, app, api_key, installation, ...).",
        ),
        opt("description", Type::Str, "One line for humans."),
        opt(
            "base",
            Type::Str,
            "A role whose path rules bound this one's; its defaults are inherited.",
        ),
        opt(
            "all",
            Type::Bool,
            "Holds every catalog permission except those in `except`.",
        ),
        opt("except", STRS, "With `all`: the permissions left out."),
        opt(
            "presets",
            STRS,
            "Presets whose permissions are added as enabled grants.",
        ),
        opt(
            "grants",
            Type::List(&Type::StrOr(&GRANT)),
            "Grants: a permission name, or {permission, enabled, projects}.",
        ),
        opt(
            "paths",
            Type::List(&Type::Obj(&PATH_RULE)),
            "Path rules {path, access}.",
        ),
        opt(
            "requires_approval",
            Type::Bool,
            "Widening this role's grants waits for an approver.",
        ),
        opt(
            "pending",
            Type::List(&Type::StrOr(&GRANT)),
            "Grants waiting for approval.",
        ),
        opt(
            "all_resources",
            Type::Bool,
            "Holders pass per-resource checks everywhere.",
        ),
        opt(
            "path_root",
            Type::Bool,
            "A role with no base whose path rules are a bound themselves.",
        ),
        opt(
            "installed_in",
            STRS,
            "Installations: the scope ids where this role is installed.",
        ),
        opt(
            "pending_paths",
            Type::List(&Type::Obj(&PATH_RULE)),
            "Approval roles: the non-default path set waiting for approval.",
        ),
    ],
};

const GRANT: Shape = Shape {
    name: "Grant",
    doc: "One permission in a role.",
    fields: &[
        req("permission", Type::Str, "Catalog permission name."),
        opt(
            "enabled",
            Type::Bool,
            "Disabled grants are kept for display but grant nothing (default true).",
        ),
        opt("projects", STRS, "Scope ids for a scoped permission."),
    ],
};

const PATH_RULE: Shape = Shape {
    name: "PathRule",
    doc: "A path rule: a pattern and the `crud` letters it allows.",
    fields: &[
        req("path", Type::Str, "Path pattern."),
        req("access", Type::Str, "A subset of `crud`."),
        opt(
            "default",
            Type::Bool,
            "Immutable default inherited by every role based on this one.",
        ),
    ],
};

const SUBJECT: Shape = Shape {
    name: "Subject",
    doc: "An id with a type and roles.",
    fields: &[
        req("id", Type::Str, "Unique id."),
        opt(
            "type",
            Type::Str,
            "Subject type, matched against permissions' `applies_to`.",
        ),
        opt("roles", STRS, "Role names."),
        opt(
            "only",
            STRS,
            "Narrows the effective set to these permissions.",
        ),
        opt(
            "resources",
            Type::List(&Type::Obj(&RESOURCE_ROLE)),
            "Per-resource access roles.",
        ),
        opt(
            "pending",
            Type::Obj(&PENDING_SUBJECT),
            "A widening waiting for approval (not effective).",
        ),
    ],
};

const PENDING_SUBJECT: Shape = Shape {
    name: "PendingSubject",
    doc: "What an approval-bound subject holds once approved.",
    fields: &[
        opt("roles", STRS, "Role names."),
        opt("only", STRS, "Override (empty = none)."),
        opt(
            "resources",
            Type::List(&Type::Obj(&RESOURCE_ROLE)),
            "Per-resource access roles.",
        ),
    ],
};

const RESOURCE_ROLE: Shape = Shape {
    name: "ResourceRole",
    doc: "An access role held on one resource.",
    fields: &[
        req(
            "resource",
            Type::Str,
            "The resource, e.g. `collections/abc`.",
        ),
        req("role", Type::Str, "Role name."),
    ],
};

const ADMIN: Shape = Shape {
    name: "Admin",
    doc: "Someone allowed to call admin RPCs.",
    fields: &[
        req("name", Type::Str, "Name recorded in the audit trail."),
        req(
            "token_sha256",
            Type::Str,
            "Lower-case hex SHA-256 of the bearer token (`authz-sidecar hash-token`).",
        ),
        req(
            "permissions",
            Type::List(&Type::Enum(ADMIN_PERMISSIONS)),
            "Admin permissions held.",
        ),
    ],
};

/// Every mapping shape of the format, root first.
pub const SHAPES: [&Shape; 11] = [
    &POLICY,
    &CATALOG,
    &PERMISSION,
    &PRESET,
    &ROLE,
    &GRANT,
    &PATH_RULE,
    &SUBJECT,
    &PENDING_SUBJECT,
    &RESOURCE_ROLE,
    &ADMIN,
];

/// The JSON Schema (draft 2020-12) of the policy format, as `docs/policy.schema.json` holds it.
pub fn json_schema() -> Value {
    let mut schema = object(&POLICY);
    if let Value::Object(map) = &mut schema {
        let mut head = Map::new();
        head.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        head.insert("title".into(), json!("authz-sidecar policy"));
        head.extend(std::mem::take(map));
        *map = head;
    }
    schema
}

fn object(shape: &Shape) -> Value {
    let properties: Map<String, Value> = shape
        .fields
        .iter()
        .map(|f| {
            let mut v = of_type(&f.ty);
            if let Value::Object(m) = &mut v {
                m.insert("description".into(), json!(f.doc));
            }
            (f.name.to_owned(), v)
        })
        .collect();
    let required: Vec<&str> = shape
        .fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let mut m = Map::new();
    m.insert("type".into(), json!("object"));
    m.insert("description".into(), json!(shape.doc));
    m.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        m.insert("required".into(), json!(required));
    }
    m.insert("additionalProperties".into(), json!(false));
    Value::Object(m)
}

fn of_type(ty: &Type) -> Value {
    match ty {
        // A YAML scalar such as `1` is read as text too; JSON editors see strings.
        Type::Str => json!({ "type": "string" }),
        Type::Bool => json!({ "type": "boolean" }),
        Type::Uint => json!({ "type": "integer", "minimum": 0 }),
        Type::Enum(words) => json!({ "type": "string", "enum": words }),
        Type::List(item) => json!({ "type": "array", "items": of_type(item) }),
        Type::Obj(shape) => object(shape),
        Type::StrOr(shape) => json!({ "anyOf": [{ "type": "string" }, object(shape)] }),
    }
}

/// Edit-distance work (candidates looked at plus cells of the distance tables) that the
/// suggestions of one policy file may cost: plenty for thousands of typos among thousands of
/// names, and a bound on what a hostile file of many near-names can make a start or a reload
/// spend. Past it, problems are still reported, without "did you mean".
pub const SUGGESTION_BUDGET: usize = 20_000_000;

/// The closest of `candidates` to `word` by edit distance, if it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    closest(word, candidates, &mut SUGGESTION_BUDGET.clone())
}

/// [`did_you_mean`], spending from `budget`; `None` once it is spent.
pub fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    budget: &mut usize,
) -> Option<&'a str> {
    // Up to a third of the word may be wrong, at least one and at most four edits.
    let limit = (word.len() / 3).clamp(1, 4);
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        // Lengths further apart than the limit cannot be within it: skipped for one unit.
        *budget = budget.checked_sub(1)?;
        if candidate == word || candidate.len().abs_diff(word.len()) > limit {
            continue;
        }
        *budget = budget.checked_sub(word.len().max(1) * candidate.len().max(1))?;
        let distance = strsim::damerau_levenshtein(word, candidate);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Admin, Catalog, Grant, PathRule, PendingSubject, Permission, Policy, Preset, ResourceRole,
        Role, Subject,
    };

    /// Deserializes `value` as the Rust type `shape` describes; the serde error, if any.
    fn parse_as(shape: &Shape, value: Value) -> Result<(), String> {
        fn go<T: serde::de::DeserializeOwned>(v: Value) -> Result<(), String> {
            serde_json::from_value::<T>(v)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        match shape.name {
            "Policy" => go::<Policy>(value),
            "Catalog" => go::<Catalog>(value),
            "Permission" => go::<Permission>(value),
            "Preset" => go::<Preset>(value),
            "Role" => go::<Role>(value),
            "Grant" => go::<Grant>(value),
            "PathRule" => go::<PathRule>(value),
            "Subject" => go::<Subject>(value),
            "PendingSubject" => go::<PendingSubject>(value),
            "ResourceRole" => go::<ResourceRole>(value),
            "Admin" => go::<Admin>(value),
            other => panic!("no Rust type for shape {other}"),
        }
    }

    fn sample(ty: &Type) -> Value {
        match ty {
            Type::Str => json!("x"),
            Type::Bool => json!(true),
            Type::Uint => json!(1),
            Type::Enum(words) => json!(words[0]),
            Type::List(item) => json!([sample(item)]),
            Type::Obj(shape) | Type::StrOr(shape) => full(shape, |_| true),
        }
    }

    /// A mapping of `shape` with the fields `keep` selects, each with a sample value.
    fn full(shape: &Shape, keep: impl Fn(&Field) -> bool) -> Value {
        Value::Object(
            shape
                .fields
                .iter()
                .filter(|f| keep(f))
                .map(|f| (f.name.to_owned(), sample(&f.ty)))
                .collect(),
        )
    }

    #[test]
    fn every_shape_matches_its_serde_type_field_by_field() {
        for shape in SHAPES {
            // The fields serde knows: its "expected one of" list for an unknown key.
            let err = parse_as(shape, json!({ "zz_not_a_field": 0 })).expect_err("refused");
            let listed: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
            let mut known: Vec<&str> = shape.fields.iter().map(|f| f.name).collect();
            let mut listed = listed;
            listed.sort();
            known.sort();
            assert_eq!(listed, known, "{}: serde says {err}", shape.name);
            // Every field with a value of its type is accepted...
            let all = full(shape, |_| true);
            parse_as(shape, all.clone()).unwrap_or_else(|e| panic!("{}: {e}: {all}", shape.name));
            // ...the required ones alone are enough...
            parse_as(shape, full(shape, |f| f.required))
                .unwrap_or_else(|e| panic!("{}: required fields: {e}", shape.name));
            // ...and each required one is needed.
            for field in shape.fields.iter().filter(|f| f.required) {
                let without = full(shape, |f| f.required && f.name != field.name);
                assert!(
                    parse_as(shape, without).is_err(),
                    "{}.{} is not required by serde",
                    shape.name,
                    field.name
                );
            }
            // A value of another type is refused for every field that is not text.
            for field in shape.fields.iter() {
                let wrong = match field.ty {
                    Type::Str | Type::StrOr(_) => json!([]),
                    _ => json!({ "zz": 1 }),
                };
                let mut value = all.clone();
                value[field.name] = wrong;
                assert!(
                    parse_as(shape, value).is_err(),
                    "{}.{}: serde accepts another type",
                    shape.name,
                    field.name
                );
            }
        }
    }

    #[test]
    fn enums_match_their_serde_types() {
        use crate::model::{AdminPermission, Kind};
        for word in KINDS {
            serde_json::from_value::<Kind>(json!(word)).expect("kind");
        }
        assert!(serde_json::from_value::<Kind>(json!("raed")).is_err());
        let names: Vec<&str> = AdminPermission::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ADMIN_PERMISSIONS);
    }

    #[test]
    fn suggestions_are_close_words_only() {
        assert_eq!(did_you_mean("grnats", ["grants", "paths"]), Some("grants"));
        assert_eq!(
            did_you_mean("descripton", ["description", "kind"]),
            Some("description")
        );
        assert_eq!(did_you_mean("colour", ["name", "kind"]), None);
        assert_eq!(did_you_mean("a", ["b"]), Some("b"));
        assert_eq!(did_you_mean("x", ["xyzzy"]), None);
        // A spent budget suggests nothing; a long word against many names spends it.
        let mut budget = 0;
        assert_eq!(closest("grnats", ["grants"], &mut budget), None);
        let names: Vec<String> = (0..10_000).map(|i| format!("{i:0>60}")).collect();
        let mut budget = 1_000_000;
        let word = "1".repeat(60);
        assert_eq!(
            closest(&word, names.iter().map(String::as_str), &mut budget),
            None
        );
        assert!(
            budget < 60 * 60 + 1,
            "stopped at the budget, not after every name"
        );
    }
}
