//! `authz-sidecar test`: every case of every test file against the compiled policy.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::EXIT_CONFIG;
use crate::config::encoded_slashes;
use crate::model::PathOptions;
use crate::model::file::load_policy_file;
use crate::policytest::{junit, load_test_file, run_file};

/// Exit 0 when every case passes, 1 when one fails, 2 when an input is malformed.
pub(super) fn run(
    policy_file: &Path,
    tests: &[PathBuf],
    junit_file: Option<&Path>,
    slashes: &str,
    verbose: bool,
) -> ExitCode {
    let mut errors = Vec::new();
    let encoded_slashes = encoded_slashes("--http-encoded-slashes", slashes, &mut errors);
    if let Some(e) = errors.first() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let paths = PathOptions { encoded_slashes };
    let policy = match load_policy_file(policy_file) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let defaults;
    let tests = if tests.is_empty() {
        let stem = policy_file.with_extension("");
        defaults = [PathBuf::from(format!("{}.tests.yaml", stem.display()))];
        &defaults[..]
    } else {
        tests
    };
    let mut results = Vec::new();
    for file in tests {
        let outcome = load_test_file(file).and_then(|t| run_file(&policy, &t, paths));
        match outcome {
            Ok(result) => results.push(result),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let mut out = String::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &results {
        for c in &file.cases {
            if c.passed {
                passed += 1;
                if verbose {
                    out.push_str(&format!(
                        "{}:{}: ok: {}\n",
                        file.file, c.case.line, c.case.name
                    ));
                    push_indented(&mut out, &c.explanation.to_string());
                }
                continue;
            }
            failed += 1;
            let why = c.failure.as_deref().unwrap_or("failed");
            out.push_str(&format!(
                "{}:{}: FAIL: {}: {why}\n",
                file.file, c.case.line, c.case.name
            ));
            push_indented(&mut out, &c.explanation.to_string());
        }
    }
    out.push_str(&format!(
        "{passed} passed, {failed} failed ({} file(s))\n",
        results.len()
    ));
    let _ = std::io::stdout().write_all(out.as_bytes());
    if let Some(path) = junit_file {
        if let Err(e) = std::fs::write(path, junit(&results)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn push_indented(out: &mut String, text: &str) {
    for line in text.lines() {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
}
