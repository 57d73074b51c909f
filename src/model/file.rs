//! Reading a policy file (YAML, or JSON which YAML contains) into a validated [`Policy`],
//! with every problem reported at its file, line and field.

use std::fmt;
use std::path::Path;

use marked_yaml::{LoaderOptions, Node};

use super::shape::{SUGGESTION_BUDGET, closest};
use super::{FieldPath, Policy, validate};

/// The policy built into the binary: the monitoring-apps example (seed 000).
pub const EMBEDDED_DEFAULT: &str = include_str!("../../examples/monitoring-apps.yaml");

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The field path (`roles[2].grants[0]`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// The source line it points at, shown under the message with a caret by `{:#}`.
    pub source_line: Option<String>,
}

/// Every problem found in one policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyFileError {
    /// The file's name as given.
    pub file: String,
    /// The problems, in document order where lines are known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for PolicyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
                if let Some(col) = p.column {
                    write!(f, ":{col}")?;
                }
            }
            write!(f, ": ")?;
            if let Some(field) = &p.field {
                write!(f, "{field}: ")?;
            }
            write!(f, "{}", p.message)?;
            // `{:#}`: the line itself and a caret under the column, as compilers show it.
            if let (true, Some(line), Some(text)) = (f.alternate(), p.line, &p.source_line) {
                let number = line.to_string();
                let pad = " ".repeat(number.len());
                let caret = " ".repeat(p.column.unwrap_or(1).saturating_sub(1));
                write!(f, "\n{pad} |\n{number} | {text}\n{pad} | {caret}^")?;
            }
        }
        Ok(())
    }
}

/// The default bound on a policy file's size: a Kubernetes ConfigMap holds at most 1 MiB.
pub const DEFAULT_MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// The most subjects one policy file may list (more are managed through the admin API or
/// fleet mode); a 1 MiB file holds ~31k.
pub const MAX_FILE_SUBJECTS: usize = 100_000;

/// Reads, validates and normalizes a policy file of at most [`DEFAULT_MAX_POLICY_BYTES`].
pub fn load_policy_file(path: &Path) -> Result<Policy, PolicyFileError> {
    load_policy_file_max(path, DEFAULT_MAX_POLICY_BYTES)
}

/// Reads, validates and normalizes a policy file of at most `max_bytes`.
pub fn load_policy_file_max(path: &Path, max_bytes: u64) -> Result<Policy, PolicyFileError> {
    let (name, text) = read_policy_text_max(path, max_bytes)?;
    parse_policy(&name, &text)
}

/// A policy file's name (as errors print it) and text, at most [`DEFAULT_MAX_POLICY_BYTES`].
pub fn read_policy_text(path: &Path) -> Result<(String, String), PolicyFileError> {
    read_policy_text_max(path, DEFAULT_MAX_POLICY_BYTES)
}

/// A policy file's name and text; a file over `max_bytes` is refused unread.
pub fn read_policy_text_max(
    path: &Path,
    max_bytes: u64,
) -> Result<(String, String), PolicyFileError> {
    use std::io::Read;
    let name = path.display().to_string();
    let fail = |message: String| PolicyFileError {
        file: name.clone(),
        problems: vec![Problem {
            line: None,
            column: None,
            field: None,
            message,
            source_line: None,
        }],
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    // Read one byte past the bound: a file growing while read is caught as well.
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(fail(format!(
            "the file is larger than {max_bytes} bytes (--max-policy-bytes / AUTHZ_MAX_POLICY_BYTES)"
        )));
    }
    String::from_utf8(bytes)
        .map(|text| (name.clone(), text))
        .map_err(|e| fail(format!("cannot read: not UTF-8 text ({e})")))
}

/// Parses, validates and normalizes policy text; `file` names it in errors.
///
/// Every problem is reported in one run: the structural pass ([`super::structure`]) finds
/// every unknown, missing or mistyped field, and the semantic checks then run on what is left,
/// so that a file with many typos needs one fix-up round, not one per typo.
pub fn parse_policy(file: &str, text: &str) -> Result<Policy, PolicyFileError> {
    let lines: Vec<&str> = text.lines().collect();
    let problem = |(line, column): (Option<usize>, Option<usize>),
                   field: Option<String>,
                   message: String| Problem {
        source_line: line
            .and_then(|l| lines.get(l.wrapping_sub(1)))
            .map(|t| (*t).to_owned()),
        line,
        column,
        field,
        message,
    };
    let fail = |problems: Vec<Problem>| PolicyFileError {
        file: file.to_owned(),
        problems,
    };
    let options = || LoaderOptions::default().error_on_duplicate_keys(true);
    let node = marked_yaml::parse_yaml_with_options(0, text, options()).map_err(|e| {
        fail(vec![problem(
            load_error_position(&e),
            None,
            load_error_message(&e),
        )])
    })?;
    let serde_problem = |e: marked_yaml::FromNodeError| {
        let mark = e.start_mark();
        problem(
            (mark.map(|m| m.line()), mark.map(|m| m.column())),
            e.path().map(str::to_owned),
            e.into_inner().to_string(),
        )
    };
    let (checked, tree) = super::structure::check(node);
    let mut problems: Vec<Problem> = checked
        .found
        .iter()
        .map(|f| problem(f.at, Some(f.path.to_string()), f.message.clone()))
        .collect();
    // A clean file's tree is the file's; after structural problems it lacks them, for the
    // semantic checks only.
    let mut policy: Policy = match marked_yaml::from_node(&tree) {
        Ok(policy) => policy,
        // What the structural pass does not know (a value serde refuses) is still reported;
        // after structural problems the tree may be unreadable because of them: those stand.
        Err(e) if problems.is_empty() => return Err(fail(vec![serde_problem(e)])),
        Err(_) => return Err(fail(problems)),
    };
    if policy.subjects.len() > MAX_FILE_SUBJECTS {
        problems.push(problem(
            locate(&tree, &FieldPath::root().key("subjects")),
            Some("subjects".into()),
            format!(
                "{} subjects; a policy file lists at most {MAX_FILE_SUBJECTS} (manage more through the admin API)",
                policy.subjects.len()
            ),
        ));
        return Err(fail(problems));
    }
    // The tree is needed again only to place a semantic error; with structural problems it is
    // the pruned tree, whose entries the semantic checks number. A clean file's is dropped
    // before validation (the peak memory of a start) and parsed again if an error needs it.
    let kept = if problems.is_empty() {
        drop(tree);
        None
    } else {
        Some(tree)
    };
    if let Err(errors) = validate(&policy) {
        let tree = match kept {
            Some(tree) => tree,
            None => marked_yaml::parse_yaml_with_options(0, text, options()).map_err(|e| {
                fail(vec![problem(
                    load_error_position(&e),
                    None,
                    load_error_message(&e),
                )])
            })?,
        };
        let hints = Hints::of(&policy);
        problems.extend(errors.into_iter().map(|err| {
            let message = hints.add_to(err.message);
            // Located in the tree it was found in; named as the file numbers its entries.
            let field = checked.in_file(&err.path).to_string();
            problem(locate(&tree, &err.path), Some(field), message)
        }));
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        return Err(fail(problems));
    }
    policy.normalize();
    Ok(policy)
}

/// The names a misspelt reference may have meant.
struct Hints<'p> {
    permissions: Vec<&'p str>,
    roles: Vec<&'p str>,
    presets: Vec<&'p str>,
    /// Shared by every problem of the file (see [`SUGGESTION_BUDGET`]).
    budget: std::cell::Cell<usize>,
}

impl<'p> Hints<'p> {
    fn of(policy: &'p Policy) -> Hints<'p> {
        Hints {
            permissions: policy
                .catalog
                .permissions
                .iter()
                .map(|p| p.name.as_str())
                .collect(),
            roles: policy.roles.iter().map(|r| r.name.as_str()).collect(),
            presets: policy.presets.iter().map(|p| p.name.as_str()).collect(),
            budget: std::cell::Cell::new(SUGGESTION_BUDGET),
        }
    }

    /// `message` with "did you mean" appended when it names an unknown permission, role or
    /// preset that is close to a known one.
    fn add_to(&self, message: String) -> String {
        let reference = [
            ("unknown permission `", &self.permissions),
            ("unknown role `", &self.roles),
            ("unknown preset `", &self.presets),
        ]
        .into_iter()
        .find_map(|(prefix, names)| {
            let rest = message.strip_prefix(prefix)?;
            let (name, _) = rest.split_once('`')?;
            Some((name, names))
        });
        let mut budget = self.budget.get();
        let close =
            reference.and_then(|(name, names)| closest(name, names.iter().copied(), &mut budget));
        self.budget.set(budget);
        match close {
            Some(close) => format!("{message}; did you mean `{close}`?"),
            None => message,
        }
    }
}

/// The line and column of the deepest node the path reaches.
fn locate(root: &Node, path: &FieldPath) -> (Option<usize>, Option<usize>) {
    let mut node = root;
    for step in path.steps() {
        let next = match step {
            Ok(key) => node.as_mapping().and_then(|m| m.get_node(key)),
            Err(index) => node.as_sequence().and_then(|s| s.get_node(index)),
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    let start = node.span().start();
    (start.map(|m| m.line()), start.map(|m| m.column()))
}

fn load_error_position(e: &marked_yaml::LoadError) -> (Option<usize>, Option<usize>) {
    use marked_yaml::LoadError::*;
    let mark = match e {
        TopLevelMustBeMapping(m)
        | TopLevelMustBeSequence(m)
        | UnexpectedAnchor(m)
        | MappingKeyMustBeScalar(m)
        | UnexpectedTag(m)
        | ScanError(m, _) => Some(*m),
        DuplicateKey(inner) => inner.key.span().start().copied(),
    };
    (mark.map(|m| m.line()), mark.map(|m| m.column()))
}

/// What is wrong, without the position (the problem carries it already): LoadError's
/// `Display` leads with one, so the message is made from the variant.
fn load_error_message(e: &marked_yaml::LoadError) -> String {
    use marked_yaml::LoadError::*;
    match e {
        TopLevelMustBeMapping(_) => "Top level must be a mapping".into(),
        TopLevelMustBeSequence(_) => "Top level must be a sequence".into(),
        UnexpectedAnchor(_) => "Unexpected definition of anchor".into(),
        MappingKeyMustBeScalar(_) => "Keys in mappings must be scalar".into(),
        UnexpectedTag(_) => "Unexpected use of YAML tag".into(),
        ScanError(_, scan) => scan.info().to_owned(),
        // Names both keys' places: they are part of what is wrong, not a prefix.
        DuplicateKey(_) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse_policy("p.yaml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let policy = parse_policy("embedded", EMBEDDED_DEFAULT).expect("embedded policy is valid");
        assert!(!policy.catalog.permissions.is_empty());
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_line() {
        let text = "catalog:\n  permissions:\n    - name: a\n      implies: [ghost]\nroles:\n  - name: r\n    kind: app\n    grants: [a, nope]\nsubjects:\n  - id: s\n    roles: [missing]\n";
        let got = problems(text);
        assert_eq!(
            got,
            vec![
                "p.yaml:4:17: catalog.permissions[0].implies[0]: unknown permission `ghost`",
                "p.yaml:8:17: roles[0].grants[1].permission: unknown permission `nope`",
                "p.yaml:11:13: subjects[0].roles[0]: unknown role `missing`",
            ]
        );
    }

    #[test]
    fn yaml_errors_are_told_once_with_their_position() {
        assert_eq!(
            problems("just text\n"),
            ["p.yaml:1:1: Top level must be a mapping"]
        );
        let scan = problems("catalog: a: b\n");
        assert_eq!(scan.len(), 1, "{scan:?}");
        let (place, message) = scan[0].split_at("p.yaml:1:11: ".len());
        assert_eq!(place, "p.yaml:1:11: ", "{scan:?}");
        assert_eq!(message, "mapping values are not allowed in this context");
    }

    #[test]
    fn syntax_and_type_errors_name_the_line() {
        let dup = problems("catalog:\n  permissions: []\ncatalog: {}\n");
        assert_eq!(dup.len(), 1);
        assert!(dup[0].starts_with("p.yaml:3:"), "{dup:?}");
        let unknown = problems("catalog:\n  permissions:\n    - name: a\n      colour: red\n");
        assert!(unknown[0].starts_with("p.yaml:4:"), "{unknown:?}");
        assert!(unknown[0].contains("colour"), "{unknown:?}");
        let not_bool = problems("catalog:\n  permissions:\n    - name: a\n      scoped: maybe\n");
        assert!(not_bool[0].starts_with("p.yaml:4:"), "{not_bool:?}");
    }

    #[test]
    fn structural_problems_are_all_reported_with_the_semantic_ones() {
        // JSON: a misspelt key, a mistyped value, a grant mapping with an unknown key, an
        // admin permission misspelt, and a reference to a permission that is not there.
        let text = r#"{"catalog": {"permissions": [{"name": "devices:read", "scoped": "no", "gruop": "D"}]},
 "roles": [{"name": "r", "kind": "app", "grants": [{"permission": "devices:read", "enabled": true, "project": []}, "devices:raed"]}],
 "admins": [{"name": "a", "token_sha256": "00", "permissions": ["authz.roles.wrte"]}]}"#;
        let got = problems(text);
        let want = [
            "p.yaml:1:65: catalog.permissions[0].scoped: expected `true` or `false`, found a scalar",
            "p.yaml:1:71: catalog.permissions[0].gruop: unknown field `gruop`; did you mean `group`?",
            "p.yaml:2:100: roles[0].grants[0].project: unknown field `project`; did you mean `projects`?",
            "p.yaml:2:116: roles[0].grants[1].permission: unknown permission `devices:raed`; did you mean `devices:read`?",
            "p.yaml:3:43: admins[0].token_sha256: must be the 64-character hex SHA-256 of the admin's token",
            "p.yaml:3:65: admins[0].permissions[0]: unknown value `authz.roles.wrte`; expected `authz.roles.write`, `authz.roles.approve`, `authz.subjects.write`, `authz.audit.read` or `authz.subjects.read`; did you mean `authz.roles.write`?",
        ];
        assert_eq!(got, want);
        // Entries after a dropped one keep their numbers in the file.
        let text = "catalog:\n  permissions: [{name: a}]\nroles:\n  - kind: app\n  - name: r\n    kind: app\n    grants: [b]\n";
        assert_eq!(
            problems(text),
            [
                "p.yaml:4:5: roles[0]: missing field `name` (Role)",
                "p.yaml:7:14: roles[1].grants[0].permission: unknown permission `b`; did you mean `a`?",
            ]
        );
        // The source line and a caret come with `{:#}`.
        let e =
            parse_policy("p.yaml", "catalog:\n  permissions: []\nrolse: []\n").expect_err("bad");
        assert_eq!(
            format!("{e:#}"),
            "p.yaml:3:1: rolse: unknown field `rolse`; did you mean `roles`?\n  |\n3 | rolse: []\n  | ^"
        );
    }

    #[test]
    fn json_is_accepted() {
        let text = r#"{"catalog": {"permissions": [{"name": "a", "kind": "read"}]}, "roles": [{"name": "r", "kind": "app", "grants": [{"permission": "a", "enabled": true}]}]}"#;
        let policy = parse_policy("p.json", text).expect("json policy");
        assert_eq!(policy.roles[0].grants[0].permission, "a");
    }
}
