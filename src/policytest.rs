//! `authz-sidecar test`: policy test files run offline against a compiled policy, with the
//! engine and the HTTP path canonicalizer every Check uses.
//!
//! A test file is YAML:
//!
//! ```yaml
//! fixtures:                # optional: extra subjects, as in the policy's `subjects`
//!   subjects:
//!     - { id: temp-app, type: app, roles: [app-readonly] }
//! cases:
//!   - name: the dashboard reads devices       # optional
//!     subject: dashboard
//!     permission: devices:read                # or `http: GET /v1/devices/d1`, or `event: alarm.created`
//!     scope: ""                               # optional, as in Check
//!     resource: ""                            # optional, as in Check
//!     roles: []                               # optional inline roles (with `subject_type`)
//!     subject_type: ""
//!     expect: allow                           # or deny
//!     reason: devices:read                    # optional substring of the reason
//! ```

use std::fmt;
use std::path::Path;

use marked_yaml::{LoaderOptions, Node};
use serde::Deserialize;

use crate::engine::{Action, Explanation, Inline, MAX_INLINE_ROLES, Request, Snapshot};
use crate::model::{CanonicalPath, PathOptions, Policy, Subject, validate_subject};

/// A test file that cannot be run: unreadable, not YAML, or a malformed case or fixture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct TestFileError {
    /// The file, as given.
    pub file: String,
    /// 1-based line (0 when unknown, e.g. an unreadable file).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Expected verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The action must be allowed.
    Allow,
    /// The action must be denied.
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseText {
    #[serde(default)]
    name: Option<String>,
    subject: String,
    #[serde(default)]
    permission: Option<String>,
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    subject_type: Option<String>,
    expect: Expect,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Fixtures {
    #[serde(default)]
    subjects: Vec<Subject>,
}

/// The action of a case, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseAction {
    /// A permission.
    Permission(String),
    /// `METHOD /path`.
    Http {
        /// Method.
        method: String,
        /// Raw path (canonicalized when the case runs).
        path: String,
    },
    /// An event type.
    Event(String),
}

impl fmt::Display for CaseAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseAction::Permission(p) => write!(f, "permission {p}"),
            CaseAction::Http { method, path } => write!(f, "{method} {path}"),
            CaseAction::Event(e) => write!(f, "event {e}"),
        }
    }
}

/// One case of a test file.
#[derive(Debug, Clone)]
pub struct Case {
    /// Line of the case in its file.
    pub line: usize,
    /// Name, or a description built from subject and action.
    pub name: String,
    /// Subject id.
    pub subject: String,
    /// The action.
    pub action: CaseAction,
    /// Scope, if any.
    pub scope: Option<String>,
    /// Resource, if any.
    pub resource: Option<String>,
    /// Inline roles (empty: the stored subject).
    pub roles: Vec<String>,
    /// Subject type of the inline roles.
    pub subject_type: String,
    /// Expected verdict.
    pub expect: Expect,
    /// Expected substring of the reason.
    pub reason: Option<String>,
}

/// A parsed test file.
#[derive(Debug, Clone)]
pub struct TestFile {
    /// The file, as given.
    pub file: String,
    /// Extra subjects for this file's cases.
    pub fixtures: Vec<Subject>,
    /// The line of each fixture subject.
    pub fixture_lines: Vec<usize>,
    /// The cases, in order.
    pub cases: Vec<Case>,
}

fn line_of(node: &Node) -> usize {
    node.span().start().map_or(0, |m| m.line())
}

/// Parses a test file's text; `file` names it in errors.
pub fn parse_test_file(file: &str, text: &str) -> Result<TestFile, TestFileError> {
    let err = |line: usize, message: String| TestFileError {
        file: file.to_owned(),
        line,
        message,
    };
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        let message = e.to_string();
        let line = message
            .split(':')
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(1);
        err(line, format!("not a YAML test file: {message}"))
    })?;
    let Some(map) = root.as_mapping() else {
        return Err(err(1, "a test file is a mapping with `cases`".into()));
    };
    for (key, value) in map.iter() {
        if !matches!(key.as_str(), "cases" | "fixtures") {
            return Err(err(
                line_of(value),
                format!(
                    "unknown key `{}`; expected `cases` or `fixtures`",
                    key.as_str()
                ),
            ));
        }
    }
    let (fixtures, fixture_lines) = match map.get_node("fixtures") {
        None => (Vec::new(), Vec::new()),
        Some(node) => {
            let parsed: Fixtures = marked_yaml::from_node(node).map_err(|e| {
                let line = e.start_mark().map_or(line_of(node), |m| m.line());
                err(line, format!("fixtures: {}", e.into_inner()))
            })?;
            let lines = node
                .as_mapping()
                .and_then(|m| m.get_node("subjects"))
                .and_then(|n| n.as_sequence())
                .map(|seq| seq.iter().map(line_of).collect())
                .unwrap_or_default();
            (parsed.subjects, lines)
        }
    };
    let Some(cases_node) = map.get_node("cases") else {
        return Err(err(1, "no `cases`".into()));
    };
    let Some(seq) = cases_node.as_sequence() else {
        return Err(err(line_of(cases_node), "`cases` must be a list".into()));
    };
    let mut cases = Vec::with_capacity(seq.len());
    for node in seq.iter() {
        let line = line_of(node);
        let text: CaseText = marked_yaml::from_node(node).map_err(|e| {
            let at = e.start_mark().map_or(line, |m| m.line());
            let field = e.path().map(|p| format!("{p}: ")).unwrap_or_default();
            err(at, format!("{field}{}", e.into_inner()))
        })?;
        cases.push(case(text, line).map_err(|m| err(line, m))?);
    }
    if cases.is_empty() {
        return Err(err(line_of(cases_node), "`cases` is empty".into()));
    }
    Ok(TestFile {
        file: file.to_owned(),
        fixtures,
        fixture_lines,
        cases,
    })
}

fn case(t: CaseText, line: usize) -> Result<Case, String> {
    if t.subject.is_empty() {
        return Err("`subject` is empty".into());
    }
    let action = match (t.permission, t.http, t.event) {
        (Some(p), None, None) if !p.is_empty() => CaseAction::Permission(p),
        (None, Some(h), None) => {
            let Some((method, path)) = h.trim().split_once(' ') else {
                return Err(format!("`http: {h}`: expected `METHOD /path`"));
            };
            let path = path.trim();
            if method.is_empty() || !path.starts_with('/') {
                return Err(format!("`http: {h}`: expected `METHOD /path`"));
            }
            CaseAction::Http {
                method: method.to_owned(),
                path: path.to_owned(),
            }
        }
        (None, None, Some(e)) if !e.is_empty() => CaseAction::Event(e),
        _ => {
            return Err(
                "a case needs exactly one non-empty `permission`, `http` or `event`".into(),
            );
        }
    };
    if t.roles.len() > MAX_INLINE_ROLES {
        return Err(format!("at most {MAX_INLINE_ROLES} inline `roles`"));
    }
    let name = t
        .name
        .unwrap_or_else(|| format!("{} {}", t.subject, action));
    Ok(Case {
        line,
        name,
        subject: t.subject,
        action,
        scope: t.scope.filter(|s| !s.is_empty()),
        resource: t.resource.filter(|s| !s.is_empty()),
        roles: t.roles,
        subject_type: t.subject_type.unwrap_or_default(),
        expect: t.expect,
        reason: t.reason.filter(|s| !s.is_empty()),
    })
}

/// Reads and parses a test file.
pub fn load_test_file(path: &Path) -> Result<TestFile, TestFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| TestFileError {
        file: name.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse_test_file(&name, &text)
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// Whether it met its expectation.
    pub passed: bool,
    /// What went wrong, when it failed.
    pub failure: Option<String>,
    /// The explanation of the decision.
    pub explanation: Explanation,
}

/// The outcome of one test file.
#[derive(Debug, Clone)]
pub struct FileResult {
    /// The file.
    pub file: String,
    /// Each case, in order.
    pub cases: Vec<CaseResult>,
}

impl FileResult {
    /// Cases that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.cases.iter().filter(|c| !c.passed)
    }
}

/// Compiles `policy` with the file's fixtures and runs its cases.
pub fn run_file(
    policy: &Policy,
    test: &TestFile,
    paths: PathOptions,
) -> Result<FileResult, TestFileError> {
    let snapshot = if test.fixtures.is_empty() {
        Snapshot::compile(policy, 1)
    } else {
        let mut policy = policy.clone();
        for (i, subject) in test.fixtures.iter().enumerate() {
            let bad = |message: String| TestFileError {
                file: test.file.clone(),
                line: test.fixture_lines.get(i).copied().unwrap_or(1),
                message: format!("fixtures.subjects[{i}] `{}`: {message}", subject.id),
            };
            if policy.subjects.iter().any(|s| s.id == subject.id) {
                return Err(bad("the policy already has this subject".into()));
            }
            if let Err(errors) = validate_subject(&policy, subject) {
                let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                return Err(bad(messages.join("; ")));
            }
            policy.subjects.push(subject.clone());
        }
        policy.subjects.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot::compile(&policy, 1)
    };
    let cases = test
        .cases
        .iter()
        .map(|case| run_case(&snapshot, case, paths))
        .collect();
    Ok(FileResult {
        file: test.file.clone(),
        cases,
    })
}

fn run_case(snapshot: &Snapshot, case: &Case, paths: PathOptions) -> CaseResult {
    let inline = (!case.roles.is_empty()).then_some(Inline {
        roles: &case.roles,
        subject_type: &case.subject_type,
    });
    let explain = |action: Action<'_>| {
        snapshot.explain(&Request {
            subject: &case.subject,
            action,
            scope: case.scope.as_deref(),
            resource: case.resource.as_deref(),
            inline,
        })
    };
    let explanation = match &case.action {
        CaseAction::Permission(p) => explain(Action::Permission(p)),
        CaseAction::Event(e) => explain(Action::Event(e)),
        CaseAction::Http { method, path } => match CanonicalPath::parse(path, paths) {
            Ok(canonical) => explain(Action::Http {
                method,
                path: &canonical,
            }),
            Err(rejection) => Explanation::refused_path(&case.subject, rejection),
        },
    };
    let expected_allow = case.expect == Expect::Allow;
    let verdict = |allowed: bool| if allowed { "allow" } else { "deny" };
    let mut failure = None;
    if explanation.allowed != expected_allow {
        failure = Some(format!(
            "expected {}, got {} ({})",
            verdict(expected_allow),
            verdict(explanation.allowed),
            explanation.reason
        ));
    } else if let Some(want) = &case.reason {
        if !explanation.reason.contains(want.as_str()) {
            failure = Some(format!(
                "{} as expected, but the reason `{}` does not contain `{want}`",
                verdict(explanation.allowed),
                explanation.reason
            ));
        }
    }
    CaseResult {
        case: case.clone(),
        passed: failure.is_none(),
        failure,
        explanation,
    }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {
                out.push_str(&format!("&#x{:x};", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// A JUnit XML report of `results`, one test suite per file.
pub fn junit(results: &[FileResult]) -> String {
    let tests: usize = results.iter().map(|r| r.cases.len()).sum();
    let failures: usize = results.iter().map(|r| r.failures().count()).sum();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"authz-sidecar test\" tests=\"{tests}\" failures=\"{failures}\">\n"
    );
    for file in results {
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">\n",
            xml_escape(&file.file),
            file.cases.len(),
            file.failures().count()
        ));
        for c in &file.cases {
            out.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\" line=\"{}\"",
                xml_escape(&c.case.name),
                xml_escape(&file.file),
                xml_escape(&file.file),
                c.case.line
            ));
            match &c.failure {
                None => out.push_str("/>\n"),
                Some(message) => {
                    out.push_str(&format!(
                        ">\n      <failure message=\"{}\">{}:{}: {}\n{}</failure>\n    </testcase>\n",
                        xml_escape(message),
                        xml_escape(&file.file),
                        c.case.line,
                        xml_escape(message),
                        xml_escape(&c.explanation.to_string())
                    ));
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_cases_name_their_line() {
        let e = parse_test_file(
            "t.yaml",
            "cases:\n  - subject: a\n    permission: p\n    expect: allow\n  - subject: b\n    expect: deny\n",
        )
        .err();
        assert_eq!(e.map(|e| e.line), Some(5));
        let e = parse_test_file(
            "t.yaml",
            "cases:\n  - subject: a\n    permission: p\n    expect: maybe\n",
        )
        .err();
        assert_eq!(e.as_ref().map(|e| e.line), Some(4), "{e:?}");
        let e = parse_test_file("t.yaml", "cases: [oops\n").err();
        assert!(e.is_some());
        let e = parse_test_file("t.yaml", "case: []\n").err();
        assert!(e.is_some_and(|e| e.message.contains("unknown key `case`")));
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(
            xml_escape("a<b & \"c\"\u{1}"),
            "a&lt;b &amp; &quot;c&quot;&#x1;"
        );
    }
}
