//! Path rules of application-user roles: `(pattern, access ⊆ "crud")`.
//!
//! Pattern language: segments separated by `/`; `*` matches one segment; `{user}` matches only
//! the caller's own id; a trailing `$` anchors the end. Without `$` a pattern matches the path
//! and everything below it, segment-wise (`/roles` matches `/roles/7` but not `/rolesx`).

use std::fmt;

/// A set of `crud` access letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Access(u8);

impl Access {
    /// c
    pub const CREATE: Access = Access(1);
    /// r
    pub const READ: Access = Access(2);
    /// u
    pub const UPDATE: Access = Access(4);
    /// d
    pub const DELETE: Access = Access(8);

    /// Parses a non-empty combination of distinct letters from `crud`.
    pub fn parse(text: &str) -> Result<Access, String> {
        if text.is_empty() {
            return Err("access must hold at least one of `c`, `r`, `u`, `d`".into());
        }
        let mut bits = 0u8;
        for ch in text.chars() {
            let bit = match ch {
                'c' => 1,
                'r' => 2,
                'u' => 4,
                'd' => 8,
                other => {
                    return Err(format!(
                        "access `{text}`: `{other}` is not one of c, r, u, d"
                    ));
                }
            };
            if bits & bit != 0 {
                return Err(format!("access `{text}`: `{ch}` appears twice"));
            }
            bits |= bit;
        }
        Ok(Access(bits))
    }

    /// True when every letter of `other` is in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// The letters in either.
    pub fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    /// The letters of `self` that `other` lacks.
    pub fn minus(self, other: Access) -> Access {
        Access(self.0 & !other.0)
    }

    /// True when no letter is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Each single letter in `self`.
    pub fn letters(self) -> impl Iterator<Item = Access> {
        [1u8, 2, 4, 8]
            .into_iter()
            .filter(move |b| self.0 & b != 0)
            .map(Access)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, ch) in [(1, 'c'), (2, 'r'), (4, 'u'), (8, 'd')] {
            if self.0 & bit != 0 {
                write!(f, "{ch}")?;
            }
        }
        Ok(())
    }
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches this text exactly.
    Literal(Box<str>),
    /// `*`: any one segment.
    Any,
    /// `{user}`: the caller's own id.
    User,
}

/// For whom a pattern matches one request path ([`PathPattern::matches_whom`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whom<'p> {
    /// No caller.
    Nobody,
    /// Every caller (the pattern has no `{user}`).
    Everyone,
    /// Only the caller with this id.
    Only(&'p str),
}

/// A parsed path-rule pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The segments, in order.
    pub segments: Box<[Segment]>,
    /// `$` at the end: the path must end where the pattern ends.
    pub anchored: bool,
}

impl PathPattern {
    /// Parses `/collections/*/thngs/*`, `/users/{user}`, `/access$`.
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let (body, anchored) = match text.strip_suffix('$') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if !body.starts_with('/') {
            return Err(format!("path `{text}` must start with `/`"));
        }
        if body.contains(['?', '#', '$']) {
            return Err(format!(
                "path `{text}`: `?`, `#` and an inner `$` are not allowed"
            ));
        }
        let mut segments = Vec::new();
        for seg in body.split('/').filter(|s| !s.is_empty()) {
            segments.push(match seg {
                "*" => Segment::Any,
                "{user}" => Segment::User,
                s if s.contains(['*', '{', '}']) => {
                    return Err(format!(
                        "path `{text}`: segment `{s}` mixes text with `*` or braces (only `*` and `{{user}}` are special)"
                    ));
                }
                s => {
                    super::http_path::check_literal(s).map_err(|e| format!("path `{text}`: {e}"))?;
                    Segment::Literal(s.into())
                }
            });
        }
        Ok(PathPattern {
            segments: segments.into_boxed_slice(),
            anchored,
        })
    }

    /// Matches a request path (already stripped of its query) for the caller `user`.
    /// Empty segments (duplicate or trailing slashes) are ignored. Allocates nothing.
    pub fn matches(&self, path: &str, user: &str) -> bool {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for seg in self.segments.iter() {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match seg {
                Segment::Literal(lit) => **lit == *part,
                Segment::Any => true,
                Segment::User => !user.is_empty() && part == user,
            };
            if !ok {
                return false;
            }
        }
        !self.anchored || parts.next().is_none()
    }

    /// For whom this pattern matches a request path: the reverse of [`Self::matches`], so that
    /// who-can enumerates only the one caller a `{user}` rule can match instead of every
    /// holder of the role. A path that names two different users under two `{user}`
    /// segments matches nobody.
    pub fn matches_whom<'p>(&self, path: &'p str) -> Whom<'p> {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        let mut user: Option<&'p str> = None;
        for seg in self.segments.iter() {
            let Some(part) = parts.next() else {
                return Whom::Nobody;
            };
            let ok = match seg {
                Segment::Literal(lit) => **lit == *part,
                Segment::Any => true,
                Segment::User => *user.get_or_insert(part) == part,
            };
            if !ok {
                return Whom::Nobody;
            }
        }
        if self.anchored && parts.next().is_some() {
            return Whom::Nobody;
        }
        match user {
            None => Whom::Everyone,
            Some(id) => Whom::Only(id),
        }
    }

    /// True when every path this pattern matches is also matched by `self` (for any user).
    pub fn covers(&self, other: &PathPattern) -> bool {
        if self.segments.len() > other.segments.len() {
            return false;
        }
        if self.anchored && (!other.anchored || self.segments.len() != other.segments.len()) {
            return false;
        }
        self.segments
            .iter()
            .zip(other.segments.iter())
            .all(|(mine, theirs)| match (mine, theirs) {
                (Segment::Any, _) => true,
                (Segment::User, Segment::User) => true,
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> PathPattern {
        PathPattern::parse(text).expect("valid pattern")
    }

    #[test]
    fn matching_follows_the_pattern_language() {
        let cases: &[(&str, &str, bool)] = &[
            ("/access$", "/access", true),
            ("/access$", "/access/1", false),
            ("/access$", "/accesses", false),
            ("/accesses", "/accesses/9", true),
            ("/roles", "/rolesx", false),
            ("/collections/*/thngs/*", "/collections/c1/thngs/t1", true),
            ("/collections/*/thngs/*", "/collections/c1/thngs", false),
            ("/users/{user}", "/users/alice", true),
            ("/users/{user}", "/users/bob", false),
            ("/thngs", "//thngs/", true),
            ("/connectors/*/auth/token", "/connectors/x/auth/token", true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                p(pattern).matches(path, "alice"),
                *want,
                "{pattern} vs {path}"
            );
        }
    }

    #[test]
    fn matches_whom_names_the_one_user_a_self_rule_can_match() {
        let cases: &[(&str, &str, Whom<'_>)] = &[
            ("/access$", "/access", Whom::Everyone),
            ("/access$", "/access/1", Whom::Nobody),
            ("/users/{user}", "/users/alice/x", Whom::Only("alice")),
            ("/users/{user}$", "/users/alice/x", Whom::Nobody),
            ("/users/{user}", "/users", Whom::Nobody),
            ("/u/{user}/v/{user}", "/u/a/v/a", Whom::Only("a")),
            ("/u/{user}/v/{user}", "/u/a/v/b", Whom::Nobody),
            ("/t/*", "/x/y", Whom::Nobody),
        ];
        for (pattern, path, want) in cases {
            let got = p(pattern).matches_whom(path);
            assert_eq!(got, *want, "{pattern} vs {path}");
            // The reverse agrees with `matches` for the users it names and for others.
            for user in ["alice", "a", "b", "zed"] {
                let expect = match got {
                    Whom::Nobody => false,
                    Whom::Everyone => true,
                    Whom::Only(id) => id == user,
                };
                assert_eq!(
                    p(pattern).matches(path, user),
                    expect,
                    "{pattern} {path} {user}"
                );
            }
        }
    }

    #[test]
    fn coverage_is_segment_wise() {
        assert!(p("/thngs/*").covers(&p("/thngs/abc")));
        assert!(p("/thngs").covers(&p("/thngs/*/actions")));
        assert!(!p("/thngs/*").covers(&p("/thngs")));
        assert!(!p("/access$").covers(&p("/access")));
        assert!(p("/access$").covers(&p("/access$")));
        assert!(!p("/users/{user}").covers(&p("/users/*")));
        assert!(p("/users/*").covers(&p("/users/{user}")));
    }

    #[test]
    fn bad_patterns_and_access_are_rejected() {
        for bad in [
            "thngs", "/a*", "/a/{id}", "/a?b", "/a$/b$", "/a/../b", "/a/.", "/a;b", "/a%2F",
            "/a\\b",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
        for bad in ["", "x", "cc", "crudx"] {
            assert!(Access::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Access::parse("dc").expect("valid").to_string(), "cd");
    }
}
