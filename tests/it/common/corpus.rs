//! The hostile request paths of `tests/fixtures/hostile-paths.txt`, shared by the tests that
//! replay them (through the engine, the APIs, and a real Envoy); not every one uses all of it.

#![allow(dead_code)]

use std::path::PathBuf;

/// One line of the corpus.
#[derive(Debug, Clone)]
pub struct Trick {
    /// The example policy (`examples/<example>.yaml`).
    pub example: String,
    pub subject: String,
    pub method: String,
    /// The raw request target, sent as written.
    pub path: String,
    /// What the sidecar must answer.
    pub allow: bool,
    /// Line in the corpus file, for failure messages.
    pub line: usize,
}

/// Every trick of the corpus, in file order.
pub fn corpus() -> Vec<Trick> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile-paths.txt");
    let text = std::fs::read_to_string(&file).expect("corpus exists");
    let mut tricks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split_whitespace();
        let (Some(example), Some(subject), Some(method), Some(path), Some(expect)) = (
            cols.next(),
            cols.next(),
            cols.next(),
            cols.next(),
            cols.next(),
        ) else {
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

/// The text of `examples/<name>.yaml`.
pub fn example_text(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.yaml"));
    std::fs::read_to_string(path).expect("example exists")
}
