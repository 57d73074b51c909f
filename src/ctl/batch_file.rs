//! `ctl batch` input: JSON lines, one Check per line, read whole before anything is sent so
//! that a malformed line (named by file and line) sends nothing.
//!
//! ```text
//! {"subject": "dashboard", "permission": "devices:read"}
//! {"subject": "dashboard", "http": "POST /v1/alarms/a1/dispatch"}
//! {"subject": "t1", "event": "alarm.created", "roles": ["app-readonly"], "subjectType": "app"}
//! ```
//!
//! JSON lines rather than a YAML list: a script can append one line per question without
//! holding the document, and a line number names each item exactly. Blank lines and lines
//! starting with `#` are skipped.

use serde::Deserialize;

use crate::api::pb;

/// One line of a batch file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Line {
    subject: String,
    #[serde(default)]
    permission: Option<String>,
    /// `"METHOD /path"`.
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default, alias = "subject_type")]
    subject_type: String,
}

/// A Check read from a batch file, with its line.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// 1-based line in the file.
    pub line: usize,
    /// The Check.
    pub request: pb::CheckRequest,
}

/// Why a batch file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct BatchFileError {
    /// File name (`<stdin>` for standard input).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a whole batch file.
pub fn parse(file: &str, text: &str) -> Result<Vec<BatchItem>, BatchFileError> {
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let error = |message: String| BatchFileError {
            file: file.to_owned(),
            line: i + 1,
            message,
        };
        let line: Line = serde_json::from_str(trimmed).map_err(|e| error(e.to_string()))?;
        let action = super::check_action(&line.permission, &line.http, &line.event)
            .map_err(|e| error(e.to_string()))?;
        items.push(BatchItem {
            line: i + 1,
            request: pb::CheckRequest {
                subject: line.subject,
                action: Some(action),
                scope: line.scope,
                resource: line.resource,
                roles: line.roles,
                subject_type: line.subject_type,
                ..Default::default()
            },
        });
    }
    if items.is_empty() {
        return Err(BatchFileError {
            file: file.to_owned(),
            line: text.lines().count().max(1),
            message: "no checks in the file".into(),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_checks_and_errors_name_file_and_line() {
        let items = parse(
            "b.jsonl",
            "# a comment\n{\"subject\":\"a\",\"permission\":\"p\"}\n\n{\"subject\":\"b\",\"http\":\"GET /x\",\"subjectType\":\"app\",\"roles\":[\"r\"]}\n",
        )
        .expect("valid");
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].line, items[1].line), (2, 4));
        assert_eq!(items[1].request.subject_type, "app");
        let bad = [
            ("{\"subject\":\"a\"}", "exactly one of"),
            (
                "{\"subject\":\"a\",\"permission\":\"p\",\"event\":\"e\"}",
                "exactly one of",
            ),
            ("{\"subject\":\"a\",\"permisson\":\"p\"}", "unknown field"),
            ("{\"subject\":\"a\",\"http\":\"/x\"}", "METHOD /path"),
            ("not json", "expected"),
        ];
        for (line, want) in bad {
            let err = parse(
                "b.jsonl",
                &format!("{{\"subject\":\"ok\",\"event\":\"e\"}}\n{line}\n"),
            )
            .expect_err(line);
            assert_eq!((err.file.as_str(), err.line), ("b.jsonl", 2), "{line}");
            assert!(err.message.contains(want), "{line}: {}", err.message);
        }
        assert!(parse("<stdin>", "\n# nothing\n").is_err());
    }
}
