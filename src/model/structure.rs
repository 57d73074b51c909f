//! The structural pass over a policy file's YAML tree, before serde reads it: every unknown,
//! missing or wrongly typed field and every unknown word is found in one run (serde stops at
//! the first), each with its position and, for a misspelling, the closest known name. The
//! offending parts are cut from a copy of the tree so that the semantic checks still run on
//! the rest: an unknown or mistyped optional field is dropped, and an entry that lacks a
//! required field (or has one of the wrong type) is dropped from its list.

use std::collections::HashMap;

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::FieldPath;
use super::shape::{POLICY, Shape, Type, did_you_mean};

/// One structural problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The field it concerns.
    pub path: FieldPath,
    /// 1-based line and column of the offending key or value.
    pub at: (Option<usize>, Option<usize>),
    /// What is wrong.
    pub message: String,
}

/// What the structural pass found (the tree without the parts it concerns is returned beside).
pub struct Checked {
    /// Every structural problem.
    pub found: Vec<Found>,
    /// For each list that lost entries (by its path in the file), the file index of each entry
    /// kept: the semantic checks number the entries of the pruned tree.
    renumbered: HashMap<String, Vec<usize>>,
}

impl Checked {
    /// The path in the file of `path`, a path in the pruned tree.
    pub fn in_file(&self, path: &FieldPath) -> FieldPath {
        let mut original = FieldPath::root();
        for step in path.steps() {
            original = match step {
                Ok(key) => original.key(key),
                Err(index) => {
                    let kept = self.renumbered.get(&original.to_string());
                    let index = kept.and_then(|k| k.get(index)).copied().unwrap_or(index);
                    original.index(index)
                }
            };
        }
        original
    }
}

/// Checks `root` against the policy's shape and prunes what it finds wrong from it, in place:
/// the tree of a large file is ~45 times its text, and a copy would double the peak memory of
/// every start. A clean file's tree comes back unchanged.
pub fn check(mut root: Node) -> (Checked, Node) {
    let mut out = Sink::default();
    let _ = check_value(&mut root, &Type::Obj(&POLICY), &FieldPath::root(), &mut out);
    let checked = Checked {
        found: out.found,
        renumbered: out.renumbered,
    };
    (checked, root)
}

/// What the pass collects on its way.
#[derive(Default)]
struct Sink {
    found: Vec<Found>,
    renumbered: HashMap<String, Vec<usize>>,
}

fn position(node: &Node) -> (Option<usize>, Option<usize>) {
    let start = node.span().start();
    (start.map(|m| m.line()), start.map(|m| m.column()))
}

fn what(node: &Node) -> &'static str {
    match node {
        Node::Scalar(s) if s.as_str().is_empty() => "nothing",
        Node::Scalar(_) => "a scalar",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

/// Names as a human list: `a`, `b` or `c`.
fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// Checks `node` as a value of `ty`; `false` when it cannot be used at all (the caller drops
/// it).
fn check_value(node: &mut Node, ty: &Type, path: &FieldPath, out: &mut Sink) -> bool {
    let here = position(node);
    let mut wrong = |node: &Node, expected: &str| {
        out.found.push(Found {
            path: path.clone(),
            at: position(node),
            message: format!("expected {expected}, found {}", what(node)),
        });
        false
    };
    match (ty, &mut *node) {
        (Type::Str, Node::Scalar(_)) => true,
        (Type::Str, other) => wrong(other, "text"),
        (Type::Bool, Node::Scalar(s)) if s.as_bool().is_some() => true,
        (Type::Bool, other) => wrong(other, "`true` or `false`"),
        (Type::Uint, Node::Scalar(s)) if s.as_str().parse::<u32>().is_ok() => true,
        (Type::Uint, other) => wrong(other, "a non-negative integer"),
        (Type::Enum(words), Node::Scalar(s)) => {
            let word = s.as_str();
            if words.contains(&word) {
                return true;
            }
            let hint = match did_you_mean(word, words.iter().copied()) {
                Some(close) => format!("; did you mean `{close}`?"),
                None => String::new(),
            };
            out.found.push(Found {
                path: path.clone(),
                at: here,
                message: format!("unknown value `{word}`; expected {}{hint}", one_of(words)),
            });
            false
        }
        (Type::Enum(words), other) => wrong(other, &one_of(words)),
        (Type::List(item), Node::Sequence(items)) => {
            let mut kept = Vec::with_capacity(items.len());
            let mut index = 0;
            items.retain_mut(|element| {
                let keep = check_value(element, item, &path.index(index), out);
                if keep {
                    kept.push(index);
                }
                index += 1;
                keep
            });
            if kept.len() < index {
                out.renumbered.insert(path.to_string(), kept);
            }
            true
        }
        (Type::List(_), other) => wrong(other, "a list"),
        (Type::Obj(shape), Node::Mapping(map)) => check_object(map, shape, path, out),
        (Type::Obj(_), other) => wrong(other, "a mapping"),
        (Type::StrOr(_), Node::Scalar(_)) => true,
        (Type::StrOr(shape), Node::Mapping(map)) => check_object(map, shape, path, out),
        (Type::StrOr(_), other) => wrong(other, "a name or a mapping"),
    }
}

/// Checks a mapping's keys and values; `false` when a required field is missing or unusable.
fn check_object(
    map: &mut MarkedMappingNode,
    shape: &Shape,
    path: &FieldPath,
    out: &mut Sink,
) -> bool {
    let mut usable = true;
    let mut dropped = Vec::new();
    for (key, value) in map.iter_mut() {
        let name = key.as_str();
        let at = key.span().start();
        let at = (at.map(|m| m.line()), at.map(|m| m.column()));
        let Some(field) = shape.field(name) else {
            let names = shape.fields.iter().map(|f| f.name);
            let message = match did_you_mean(name, names) {
                Some(close) => format!("unknown field `{name}`; did you mean `{close}`?"),
                None => {
                    let all: Vec<&str> = shape.fields.iter().map(|f| f.name).collect();
                    format!("unknown field `{name}`; expected {}", one_of(&all))
                }
            };
            out.found.push(Found {
                path: path.key(name),
                at,
                message,
            });
            dropped.push(name.to_owned());
            continue;
        };
        // An empty optional value (`key:`) is its default, as serde reads it.
        let empty = matches!(&*value, Node::Scalar(s) if s.as_str().is_empty());
        if empty && !field.required {
            dropped.push(name.to_owned());
            continue;
        }
        if !check_value(value, &field.ty, &path.key(name), out) {
            if field.required {
                usable = false;
            } else {
                dropped.push(name.to_owned());
            }
        }
    }
    for name in dropped {
        map.remove(name.as_str());
    }
    for field in shape.fields.iter().filter(|f| f.required) {
        if map.get_node(field.name).is_none() {
            // At the entry's first key (a mapping's own mark may sit after it).
            let at = map
                .keys()
                .next()
                .and_then(|k| k.span().start())
                .or(map.span().start());
            out.found.push(Found {
                path: path.clone(),
                at: (at.map(|m| m.line()), at.map(|m| m.column())),
                message: format!("missing field `{}` ({})", field.name, shape.name),
            });
            usable = false;
        }
    }
    usable
}
