//! The permission catalog: every right the policy knows, with what it unlocks.

use serde::{Deserialize, Serialize};

/// The catalog of permissions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Pattern every scope id (project id) in a grant must match, e.g. the 24-char project ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_pattern: Option<String>,
    /// The permissions, in display order.
    pub permissions: Vec<Permission>,
    /// Role kinds whose roles are installations (an app installed on an organization or
    /// project): each such role names `installed_in` and acts only there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installation_kinds: Vec<String>,
}

/// A named right.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// Unique name: `devices:read`, `WRITE_ALERT_STATUS`, `collections.children.add`.
    pub name: String,
    /// Display grouping (Devices, Alert...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// One line for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `read` never side-effects; `write` mutates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// `METHOD /path/{param}` templates this permission unlocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Webhook event types this permission gates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Subject types for which the permission can be effective; empty = every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applies_to: Vec<String>,
    /// Granting this permission grants these too (transitively).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub implies: Vec<String>,
    /// This permission is effective only while these are effective too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Display parent: ListRoles nests this permission under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Grants are limited to a list of scope ids; a request must name one of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scoped: bool,
    /// Role kinds on which this permission must stay granted (e.g. `installation`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_for: Vec<String>,
    /// Role kinds that may grant this permission; empty = every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_kinds: Vec<String>,
}

/// Whether a permission side-effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Lists, gets, paginates: never side-effects.
    Read,
    /// Mutates state.
    Write,
}

/// A named starting set of permissions ("Reporting / dashboard").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Unique name.
    pub name: String,
    /// One line for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Permissions in the set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// Adds every catalog permission of this kind (a derived read-only preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
}

impl Preset {
    /// The permission names this preset stands for, listed ones first.
    pub fn resolve(&self, catalog: &Catalog) -> Vec<String> {
        let mut names = self.permissions.clone();
        if let Some(kind) = self.kind {
            for p in &catalog.permissions {
                if p.kind == Some(kind) && !names.contains(&p.name) {
                    names.push(p.name.clone());
                }
            }
        }
        names
    }
}

/// HTTP methods the engine routes; each maps to one access letter of `crud`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET → r
    Get,
    /// HEAD → r
    Head,
    /// POST → c
    Post,
    /// PUT → u
    Put,
    /// PATCH → u
    Patch,
    /// DELETE → d
    Delete,
    /// OPTIONS (CORS preflight): no access letter, so only a catalog endpoint allows it.
    Options,
}

impl Method {
    /// Every method, in table order.
    pub const ALL: [Method; 7] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
        Method::Options,
    ];

    /// Parses a method name, case-insensitively, without allocating.
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }

    /// The canonical upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }

    /// Index into per-method tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// This method's bit in a set of methods held as a `u32` (bit [`Method::index`]).
    pub fn bit(self) -> u32 {
        1 << self.index()
    }

    /// The `crud` access letter this method needs from a path rule; `None` for OPTIONS, which
    /// no path rule grants.
    pub fn access(self) -> Option<super::Access> {
        use super::Access;
        match self {
            Method::Post => Some(Access::CREATE),
            Method::Get | Method::Head => Some(Access::READ),
            Method::Put | Method::Patch => Some(Access::UPDATE),
            Method::Delete => Some(Access::DELETE),
            Method::Options => None,
        }
    }

    /// The method whose endpoint templates also decide this one: HEAD is served by the GET
    /// route in every common framework, so a GET template decides HEAD too.
    pub fn routed_as(self) -> Option<Method> {
        match self {
            Method::Head => Some(Method::Get),
            _ => None,
        }
    }
}

/// A parsed `METHOD /path/{param}` endpoint template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The method.
    pub method: Method,
    /// Segments: `None` for a `{param}`, `Some(literal)` otherwise.
    pub segments: Vec<Option<String>>,
}

impl Endpoint {
    /// Parses `GET /v1/devices/{id}`.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let mut parts = text.split_whitespace();
        let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("endpoint `{text}` must be `METHOD /path`"));
        };
        let method = Method::parse(method)
            .ok_or_else(|| format!("endpoint `{text}`: unknown method `{method}`"))?;
        if !path.starts_with('/') {
            return Err(format!("endpoint `{text}`: path must start with `/`"));
        }
        if path.contains(['?', '#', '*', '$']) {
            return Err(format!(
                "endpoint `{text}`: a template holds literal segments and `{{param}}` only"
            ));
        }
        let count = path.split('/').filter(|s| !s.is_empty()).count();
        if count > super::http_path::MAX_PATH_SEGMENTS {
            return Err(format!(
                "endpoint has {count} path segments; a template has at most {} (as a Check path)",
                super::http_path::MAX_PATH_SEGMENTS
            ));
        }
        let mut segments = Vec::new();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
                segments.push(None);
            } else if seg.contains(['{', '}']) {
                return Err(format!("endpoint `{text}`: malformed parameter `{seg}`"));
            } else {
                super::http_path::check_literal(seg)
                    .map_err(|e| format!("endpoint `{text}`: {e}"))?;
                segments.push(Some(seg.to_owned()));
            }
        }
        Ok(Endpoint { method, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parses_params_and_rejects_garbage() {
        let e = Endpoint::parse("GET /v1/devices/{id}/snapshots").expect("valid");
        assert_eq!(e.method, Method::Get);
        assert_eq!(
            e.segments,
            vec![
                Some("v1".into()),
                Some("devices".into()),
                None,
                Some("snapshots".into())
            ]
        );
        for bad in [
            "GET",
            "FETCH /x",
            "GET x",
            "GET /a/{b",
            "GET /a/*",
            &format!("GET /{}", vec!["a"; 65].join("/")),
            &format!("GET /{}", vec!["a"; 5000].join("/")),
            "GET /a b",
            "GET /a/../b",
            "GET /a/./b",
            "GET /a;x/b",
            "GET /a%2Fb",
            "GET /a\\b",
            "GET /café",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn method_maps_to_access_letters() {
        assert_eq!(Method::parse("post"), Some(Method::Post));
        assert_eq!(Method::parse("OPTIONS"), Some(Method::Options));
        assert_eq!(Method::parse("TRACE"), None);
        assert_eq!(Method::Patch.access(), Some(crate::model::Access::UPDATE));
        assert_eq!(Method::Options.access(), None);
    }
}
