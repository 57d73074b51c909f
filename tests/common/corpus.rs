//! Reader of `tests/fixtures/hostile-paths.txt`: hostile request paths with the verdict each
//! must get under one example policy.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;

/// One line of the corpus.
#[derive(Debug, Clone)]
pub struct Trick {
    pub example: String,
    pub subject: String,
    pub method: String,
    pub path: String,
    pub allow: bool,
    pub line: usize,
}

/// Every line of the corpus, in order.
pub fn corpus() -> Vec<Trick> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile-paths.txt");
    let text = std::fs::read_to_string(&file).expect("corpus exists");
    let mut tricks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [example, subject, method, path, expect, ..] = cols[..] else {
            panic!("hostile-paths.txt:{}: five columns expected", i + 1);
        };
        tricks.push(Trick {
            example: example.into(),
            subject: subject.into(),
            method: method.into(),
            path: path.into(),
            allow: match expect {
                "allow" => true,
                "deny" => false,
                other => panic!("hostile-paths.txt:{}: `{other}` is not allow/deny", i + 1),
            },
            line: i + 1,
        });
    }
    tricks
}
