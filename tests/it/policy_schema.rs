//! `docs/policy.schema.json` (the JSON Schema editors use for completion) is the one rendered
//! from `model::shape`, which the unit tests hold to the serde types; every shipped policy
//! (examples, the Kubernetes ConfigMap's policy) passes it, and broken ones fail it as they fail
//! `validate`. `AUTHZ_WRITE_SCHEMA=1 cargo test --test it policy_schema` rewrites the file.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use authz_sidecar::model::file::parse_policy;
use authz_sidecar::model::shape::json_schema;
use marked_yaml::Node;
use serde_json::{Map, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A YAML document as JSON, scalars typed by the YAML core schema (what an editor's YAML
/// language server hands the schema): unquoted `true`/`false` are booleans, unquoted integers
/// numbers, everything else text.
fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) => {
            if let Some(b) = s.as_bool() {
                Value::Bool(b)
            } else if s.may_coerce() && s.as_str().is_empty() {
                Value::Null
            } else if let (true, Ok(n)) = (s.may_coerce(), s.as_str().parse::<i64>()) {
                Value::from(n)
            } else {
                Value::String(s.as_str().to_owned())
            }
        }
        Node::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}

fn yaml(text: &str) -> Value {
    to_json(&marked_yaml::parse_yaml(0, text).expect("YAML"))
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/policy.schema.json")).expect("schema file"),
    )
    .expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Every shipped policy: the examples (YAML and JSON, not their `.tests.yaml`) and the
/// Kubernetes base's ConfigMap policy.
fn shipped() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name.ends_with(".yaml") || name.ends_with(".json")) && !name.ends_with(".tests.yaml")
        })
        .collect();
    files.push(root().join("k8s/base/policy.yaml"));
    files.sort();
    files
}

#[test]
fn the_schema_file_is_the_one_rendered_from_the_parser_shape() {
    let rendered = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    let path = root().join("docs/policy.schema.json");
    if std::env::var_os("AUTHZ_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "docs/policy.schema.json is stale: run `AUTHZ_WRITE_SCHEMA=1 cargo test --test it policy_schema`"
    );
}

#[test]
fn every_shipped_policy_passes_the_schema() {
    let v = validator();
    let files = shipped();
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        parse_policy(&file.display().to_string(), &text).expect("valid policy");
        let errs = errors(&v, &yaml(&text));
        assert!(errs.is_empty(), "{}: {errs:#?}", file.display());
    }
}

/// A broken copy of the example is refused by the schema and by the parser alike.
#[test]
fn broken_policies_fail_the_schema_and_the_parser() {
    let v = validator();
    let example = std::fs::read_to_string(root().join("examples/monitoring-apps.yaml")).unwrap();
    let cases: [(&str, &str, &str); 6] = [
        (
            "unknown top-level field",
            "version: 1\n",
            "version: 1\nextras: {}\n",
        ),
        (
            "misspelt field",
            "      group: Devices\n",
            "      gruop: Devices\n",
        ),
        ("wrong type", "      kind: read\n", "      kind: [read]\n"),
        ("unknown kind", "      kind: read\n", "      kind: raed\n"),
        ("missing required", "catalog:\n", "catalgo:\n"),
        (
            "a role without a kind",
            "  - name: app-dashboard\n    kind: app\n",
            "  - name: app-dashboard\n",
        ),
    ];
    for (what, from, to) in cases {
        assert!(
            example.contains(from),
            "{what}: `{from}` not in the example"
        );
        let broken = example.replacen(from, to, 1);
        assert!(
            !errors(&v, &yaml(&broken)).is_empty(),
            "{what}: the schema accepts it"
        );
        assert!(
            parse_policy("broken.yaml", &broken).is_err(),
            "{what}: the parser accepts it"
        );
    }
    // JSON policies are checked the same way.
    let json = r#"{"catalog": {"permissions": [{"name": "a", "scoped": "yes"}]}}"#;
    assert!(!errors(&v, &serde_json::from_str(json).unwrap()).is_empty());
    assert!(parse_policy("p.json", json).is_err());
}

#[test]
fn the_schema_lists_every_field_editors_should_complete() {
    let schema = json_schema();
    let role = &schema["properties"]["roles"]["items"]["properties"];
    for field in ["name", "kind", "grants", "paths", "base", "installed_in"] {
        assert!(role.get(field).is_some(), "roles[].{field}");
    }
    assert_eq!(
        schema["properties"]["catalog"]["additionalProperties"],
        Value::Bool(false)
    );
}
