//! The documentation matches the repository: every relative link in the Markdown files points at
//! a file or folder that exists, every example policy opens with the summary of the system it
//! models, and the license Cargo.toml names is there.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const DOCS: [&str; 8] = [
    "README.md",
    "ARCHITECTURE.md",
    "SECURITY.md",
    "BENCHMARKS.md",
    "docs/deploy.md",
    "examples/README.md",
    "vendor/README.md",
    "proto/envoy-api/README.md",
];

/// Targets of `](target)` links that are not URLs or in-page anchors.
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|target| target.split('#').next().unwrap_or_default().to_owned())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

#[test]
fn every_relative_link_in_the_docs_exists() {
    let mut missing = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(root().join(doc)).expect(doc);
        let dir = Path::new(doc).parent().unwrap_or(Path::new(""));
        for link in relative_links(&text) {
            if !root().join(dir).join(&link).exists() {
                missing.push(format!("{doc}: {link}"));
            }
        }
        assert!(
            !text.contains("DESIGN.md") || root().join("DESIGN.md").exists(),
            "{doc} cites DESIGN.md, which is not in the repository"
        );
    }
    assert!(missing.is_empty(), "links to nothing: {missing:#?}");
}

#[test]
fn every_example_opens_with_the_summary_of_its_model() {
    for entry in std::fs::read_dir(root().join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // Policies only: `NAME.tests.yaml` holds the policy's test cases.
        if path.extension().is_none_or(|e| e != "yaml") || name.ends_with(".tests.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example");
        let summary = text.lines().take_while(|l| l.starts_with('#')).count();
        assert!(
            summary >= 3,
            "{} does not open with a summary of the system it models",
            path.display()
        );
    }
}

#[test]
fn the_license_cargo_toml_names_is_in_the_repository() {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    assert!(cargo.contains("license = \"Apache-2.0\""));
    let license = std::fs::read_to_string(root().join("LICENSE")).expect("LICENSE");
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
}
