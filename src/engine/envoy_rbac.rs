//! The snapshot compiled for Envoy's RBAC filter: per subject and method, the anchored regular
//! expressions of the `:path` values that [`Snapshot::decide`] allows for an ext_authz request.
//!
//! Pure and conservative. A plan only ever *allows*: a request it does not match exactly goes to
//! ext_authz, which decides it as today. So the plan may leave out anything (every such case is
//! recorded as a [`Deferral`]) but must never allow a request that ext_authz would deny. That
//! holds because each expression matches only raw paths that the canonicalizer reads unchanged
//! (literal-alphabet segments, no escape, no dot or empty segment, at most
//! [`MAX_PATH_SEGMENTS`](crate::model::http_path::MAX_PATH_SEGMENTS) segments; the byte limit is
//! separate guards, [`path_guards`]) and only for a method, subject and path that an
//! effective permission's endpoint template or a path rule with the method's access letter
//! allows, exactly as `decide` reads them for a request without scope, resource or inline roles.
//! See `docs/xds-rbac.md`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use super::decide::{Action, Request};
use super::snapshot::Snapshot;
use super::subject::CompiledSubject;
use crate::model::http_path::{MAX_PATH_BYTES, MAX_PATH_SEGMENTS, is_literal_char};
use crate::model::{Method, Segment};

/// One path segment the canonicalizer reads unchanged: literal-alphabet characters, not made
/// of dots only.
const SEGMENT: &str =
    "[A-Za-z0-9._~!$&'()*+,=:@-]*[A-Za-z0-9_~!$&'()*+,=:@-][A-Za-z0-9._~!$&'()*+,=:@-]*";

/// What may follow the path: one trailing `/` is part of each alternative; the query is
/// anything after `?`.
const QUERY: &str = r"(?:\?[\x00-\x7f]*)?";

/// The guards a request RBAC allowed must also pass before Envoy skips ext_authz (all must
/// match): ASCII only and at most [`MAX_PATH_BYTES`] bytes, and at most [`MAX_PATH_SEGMENTS`]
/// segments (the canonicalizer refuses longer paths). RE2 bounds a repetition at 1000, hence
/// the sum. They sit in the listener (`k8s/overlays/envoy-xds/envoy.yaml`, checked against this
/// by `tests/it/k8s.rs`), compiled once, not in the configs pushed at every revision.
pub fn path_guards() -> [String; 2] {
    let mut bytes = String::from("^");
    let mut left = MAX_PATH_BYTES;
    while left > 0 {
        let n = left.min(1000);
        bytes.push_str(&format!("[\\x00-\\x7f]{{0,{n}}}"));
        left -= n;
    }
    bytes.push('$');
    let segments = format!("^(?:/[^/?]+){{0,{MAX_PATH_SEGMENTS}}}/?{QUERY}$");
    [bytes, segments]
}

/// Where Envoy reads the subject; decides which subject ids it can match exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectInput {
    /// A request header: ext_authz takes exactly one, without `,`; Envoy joins repeated
    /// headers with `,`, so ids holding `,` are never matched.
    Header,
    /// A string claim of the jwt_authn payload, as jwt_authn's `claim_to_headers` copies it
    /// into a header (Envoy's metadata input yields no string a map can be keyed by). That
    /// header also spells numbers, booleans, objects and lists, which ext_authz refuses, so
    /// ids one of those could spell are never matched; nor ids with `,` (several tokens).
    JwtClaim,
    /// The URI SAN of the peer certificate (`spiffe://…`).
    Spiffe,
}

/// What the compiler is told.
#[derive(Debug, Clone, Copy)]
pub struct RbacOptions {
    /// Subject source, as ext_authz reads it.
    pub input: SubjectInput,
    /// Above this many subjects nothing is compiled: every request goes to ext_authz.
    pub max_subjects: usize,
}

/// The compiled plan at one revision.
#[derive(Debug, Clone, Default)]
pub struct RbacPlan {
    /// The policy revision.
    pub revision: u64,
    /// Subjects Envoy decides, sorted by id.
    pub subjects: Vec<PlannedSubject>,
    /// What the plan leaves to ext_authz, and why.
    pub deferred: Vec<Deferral>,
}

/// One subject's allowed requests.
#[derive(Debug, Clone)]
pub struct PlannedSubject {
    /// The subject id, as Envoy will see it.
    pub id: Box<str>,
    /// What its roles allow, `{user}` rules aside: shared among subjects whose roles allow the
    /// same requests (may be empty when `own` is not).
    pub allows: Arc<MethodPaths>,
    /// What its `{user}` rules allow, with its own id in place of `{user}`.
    pub own: Vec<OwnPath>,
}

/// The paths one or more `{user}` rules allow a subject, and their methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPath {
    /// The methods allowed, a bit per [`Method::index`] ([`Method::bit`]).
    pub methods: u32,
    /// The paths: an anchored RE2 expression with the subject's id in place of `{user}`, as
    /// [`MethodPaths`]' are.
    pub regex: String,
}

impl OwnPath {
    fn regex(segments: &[Segment], below: bool, id: &str) -> String {
        let segments = segment_regexes(segments, Some(id));
        anchored(&alternative(&segments, below))
    }
}

/// Each segment of a path pattern in RE2: a literal escaped, `*` as [`SEGMENT`], `{user}` as
/// the subject's id (`user`) when there is one.
fn segment_regexes(segments: &[Segment], user: Option<&str>) -> Vec<String> {
    segments
        .iter()
        .map(|s| match (s, user) {
            (Segment::Literal(lit), _) => escape(lit),
            (Segment::User, Some(id)) => escape(id),
            (Segment::Any | Segment::User, _) => SEGMENT.to_owned(),
        })
        .collect()
}

/// For each method (in [`Method::ALL`] order, upper case on the wire), the anchored regular
/// expression (RE2 syntax) of the `:path` values allowed; `None` when the method allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MethodPaths(pub [Option<String>; Method::ALL.len()]);

impl MethodPaths {
    /// `(method, regex)` pairs with something allowed.
    pub fn iter(&self) -> impl Iterator<Item = (Method, &str)> {
        Method::ALL
            .into_iter()
            .zip(self.0.iter())
            .filter_map(|(m, r)| r.as_deref().map(|r| (m, r)))
    }

    /// True when no method allows anything.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// Something the plan leaves to ext_authz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    /// The subject concerned, when the case is one subject's.
    pub subject: Option<Box<str>>,
    /// Why.
    pub reason: DeferReason,
}

/// Why a case goes to ext_authz.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeferReason {
    /// Every denial: ext_authz answers it with its status (401 or 403), reason and revision.
    Denials,
    /// A path the canonicalizer would decode or refuse (an escape, `;`, `\`, a character
    /// outside the literal alphabet, a dot or empty segment, too many segments or bytes).
    NonCanonicalPath,
    /// A method not spelled in upper case, or one the engine does not route.
    MethodSpelling,
    /// A scoped permission: ext_authz sends no scope, so its endpoints never allow.
    ScopedPermission(Box<str>),
    /// A subject id Envoy's input cannot carry exactly (empty, `,`, control or non-ASCII
    /// characters, surrounding spaces; not `spiffe://` for a SPIFFE input).
    SubjectNotMatchable,
    /// A `{user}` rule whose subject id is no literal segment (a request would have to escape
    /// it, so the canonicalizer decodes it).
    SelfPathNotLiteral {
        /// The role.
        role: Box<str>,
        /// The rule.
        rule: Box<str>,
    },
    /// More subjects than `max_subjects`: nothing compiled.
    TooManySubjects {
        /// Subjects in the snapshot.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for DeferReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeferReason::Denials => f.write_str(
                "every request the plan does not allow: ext_authz denies it with its own status, reason and revision",
            ),
            DeferReason::NonCanonicalPath => f.write_str(
                "paths the canonicalizer decodes or refuses (escapes, `;`, `\\`, characters outside the literal alphabet, dot or empty segments, over 64 segments or 4096 bytes)",
            ),
            DeferReason::MethodSpelling => {
                f.write_str("methods not spelled in upper case, and methods the engine does not route")
            }
            DeferReason::ScopedPermission(p) => write!(
                f,
                "scoped permission `{p}`: ext_authz names no scope, so its endpoints never allow"
            ),
            DeferReason::SubjectNotMatchable => {
                f.write_str("the subject id cannot be matched exactly by Envoy's subject input")
            }
            DeferReason::SelfPathNotLiteral { role, rule } => write!(
                f,
                "`{{user}}` rule `{rule}` of role `{role}`: the subject id is not a literal segment"
            ),
            DeferReason::TooManySubjects { count, limit } => write!(
                f,
                "{count} subjects, over the limit of {limit}: every request goes to ext_authz"
            ),
        }
    }
}

/// RE2 text matching `text` literally (literal-alphabet characters only reach here).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// True when `text` is one segment that a request sends unescaped and the canonicalizer keeps.
fn is_literal_segment(text: &str) -> bool {
    !text.is_empty() && text.chars().all(is_literal_char) && !text.bytes().all(|b| b == b'.')
}

fn matchable(id: &str, input: SubjectInput) -> bool {
    let printable = !id.is_empty()
        && id.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ')
        && !id.starts_with(' ')
        && !id.ends_with(' ');
    match input {
        SubjectInput::Header => printable && !id.contains(','),
        SubjectInput::JwtClaim => {
            printable && !id.contains(',') && !spelled_by_a_non_string_claim(id)
        }
        SubjectInput::Spiffe => printable && !id.contains(',') && id.starts_with("spiffe://"),
    }
}

/// Whether jwt_authn's `claim_to_headers` writes `id` for a claim that is not a string: a
/// number (Envoy prints it as a number Rust reads back), `true` / `false`, or an object or a
/// list (base64 of its JSON, which starts with `{` or `[`).
fn spelled_by_a_non_string_claim(id: &str) -> bool {
    use base64::Engine as _;
    id == "true"
        || id == "false"
        || id.parse::<f64>().is_ok()
        || base64::engine::general_purpose::STANDARD
            .decode(id)
            .is_ok_and(|json| matches!(json.first(), Some(b'{' | b'[')))
}

/// One alternative of a method's expression, before anchoring. The segment count is bounded
/// by [`path_guards`], not here (a counted repetition per rule would multiply the program).
fn alternative(segments: &[String], below: bool) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    match (segments.is_empty(), below) {
        (true, false) => out.push('/'),
        (true, true) => out.push_str(&format!("/(?:{SEGMENT}(?:/{SEGMENT})*/?)?")),
        (false, false) => out.push_str("/?"),
        (false, true) => out.push_str(&format!("(?:/{SEGMENT})*/?")),
    }
    out
}

/// A whole `:path` matching one of `alternatives` (joined with `|`), with any query.
fn anchored(alternatives: &str) -> String {
    format!("^(?:{alternatives}){QUERY}$")
}

type Alternatives = [BTreeSet<String>; Method::ALL.len()];

fn render(alts: &Alternatives) -> MethodPaths {
    let mut out = MethodPaths::default();
    for (slot, set) in out.0.iter_mut().zip(alts.iter()) {
        if !set.is_empty() {
            let joined: Vec<&str> = set.iter().map(String::as_str).collect();
            *slot = Some(anchored(&joined.join("|")));
        }
    }
    out
}

/// A class of subjects deciding alike apart from `{user}` rules.
struct Class {
    /// `{user}` rules: role, rule text, methods, pattern segments, below.
    self_rules: Vec<SelfRule>,
    shared: Arc<MethodPaths>,
}

struct SelfRule {
    role: Box<str>,
    rule: Box<str>,
    methods: Vec<Method>,
    segments: Vec<Segment>,
    below: bool,
}

impl Snapshot {
    /// Compiles this snapshot for Envoy's RBAC filter. Pure; O(subjects + classes × catalog).
    pub fn rbac_plan(&self, options: &RbacOptions) -> RbacPlan {
        let mut plan = RbacPlan {
            revision: self.revision,
            subjects: Vec::new(),
            deferred: vec![
                Deferral {
                    subject: None,
                    reason: DeferReason::Denials,
                },
                Deferral {
                    subject: None,
                    reason: DeferReason::NonCanonicalPath,
                },
                Deferral {
                    subject: None,
                    reason: DeferReason::MethodSpelling,
                },
            ],
        };
        let mut scoped: BTreeSet<&str> = BTreeSet::new();
        for (_, perm) in self.catalog.endpoints.iter() {
            if self.catalog.info[*perm as usize].scoped {
                scoped.insert(&self.catalog.names[*perm as usize]);
            }
        }
        plan.deferred.extend(scoped.into_iter().map(|p| Deferral {
            subject: None,
            reason: DeferReason::ScopedPermission(p.into()),
        }));
        if self.subjects.len > options.max_subjects {
            plan.deferred.push(Deferral {
                subject: None,
                reason: DeferReason::TooManySubjects {
                    count: self.subjects.len,
                    limit: options.max_subjects,
                },
            });
            return plan;
        }
        let mut classes: HashMap<(Vec<u32>, Option<u16>), Class> = HashMap::new();
        let mut visit = |id: &str, subject: &CompiledSubject| {
            if !matchable(id, options.input) {
                plan.deferred.push(Deferral {
                    subject: Some(id.into()),
                    reason: DeferReason::SubjectNotMatchable,
                });
                return;
            }
            let has_only = subject.extras.as_ref().is_some_and(|e| e.only.is_some());
            let key = (subject.roles.as_slice().to_vec(), subject.type_id);
            let own;
            let class = if has_only {
                own = self.class(id);
                &own
            } else {
                classes.entry(key).or_insert_with(|| self.class(id))
            };
            // `{user}` rules: this subject's own paths, apart from the class's shared ones.
            let mut own: Vec<OwnPath> = Vec::new();
            for rule in &class.self_rules {
                if !is_literal_segment(id) {
                    plan.deferred.push(Deferral {
                        subject: Some(id.into()),
                        reason: DeferReason::SelfPathNotLiteral {
                            role: rule.role.clone(),
                            rule: rule.rule.clone(),
                        },
                    });
                    continue;
                }
                let regex = OwnPath::regex(&rule.segments, rule.below, id);
                let methods = rule.methods.iter().fold(0, |m, method| m | method.bit());
                match own.iter_mut().find(|o| o.regex == regex) {
                    Some(same) => same.methods |= methods,
                    None => own.push(OwnPath { methods, regex }),
                }
            }
            let allows = Arc::clone(&class.shared);
            if !allows.is_empty() || !own.is_empty() {
                plan.subjects.push(PlannedSubject {
                    id: id.into(),
                    allows,
                    own,
                });
            }
        };
        let table = &self.subjects;
        for (id, subject) in table.base.iter() {
            if !table.overlay.contains_key(id) {
                visit(id, subject);
            }
        }
        for (id, entry) in table.overlay.iter() {
            if let Some(subject) = entry {
                visit(id, subject);
            }
        }
        plan.subjects.sort_by(|a, b| a.id.cmp(&b.id));
        plan
    }

    /// The requests subject `id`'s roles allow, `{user}` rules kept apart.
    fn class(&self, id: &str) -> Class {
        let mut alts: Alternatives = Default::default();
        let allowed = |perm: u32| {
            self.decide(&Request {
                subject: id,
                action: Action::Permission(&self.catalog.names[perm as usize]),
                scope: None,
                resource: None,
                inline: None,
            })
            .allowed
        };
        let mut effective: HashMap<u32, bool> = HashMap::new();
        for (endpoint, perm) in self.catalog.endpoints.iter() {
            if !*effective.entry(*perm).or_insert_with(|| allowed(*perm)) {
                continue;
            }
            let segments: Vec<String> = endpoint
                .segments
                .iter()
                .map(|s| match s {
                    Some(lit) => escape(lit),
                    None => SEGMENT.to_owned(),
                })
                .collect();
            let alt = alternative(&segments, false);
            for m in Method::ALL {
                if m == endpoint.method || m.routed_as() == Some(endpoint.method) {
                    alts[m.index()].insert(alt.clone());
                }
            }
        }
        let mut self_rules = Vec::new();
        let roles = self
            .subjects
            .get(id)
            .map(|s| s.roles.as_slice())
            .unwrap_or_default();
        for &rid in roles {
            let role = &self.roles.roles[rid as usize];
            for rule in role.paths.iter() {
                let methods: Vec<Method> = Method::ALL
                    .into_iter()
                    .filter(|m| m.access().is_some_and(|a| rule.access.contains(a)))
                    .collect();
                if methods.is_empty() {
                    continue;
                }
                let below = !rule.pattern.anchored;
                if rule.pattern.segments.contains(&Segment::User) {
                    self_rules.push(SelfRule {
                        role: role.name.clone(),
                        rule: rule.text.clone(),
                        methods,
                        segments: rule.pattern.segments.to_vec(),
                        below,
                    });
                    continue;
                }
                let segments = segment_regexes(&rule.pattern.segments, None);
                let alt = alternative(&segments, below);
                for m in methods {
                    alts[m.index()].insert(alt.clone());
                }
            }
        }
        let shared = Arc::new(render(&alts));
        Class { self_rules, shared }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Action, Request};
    use crate::model::file::parse_policy;
    use crate::model::{CanonicalPath, PathOptions};

    const POLICY: &str = r#"
catalog:
  permissions:
    - { name: devices:read, endpoints: ["GET /v1/devices", "GET /v1/devices/{id}"] }
    - { name: devices:write, endpoints: ["PATCH /v1/devices/{id}"] }
    - { name: cors, endpoints: ["OPTIONS /v1/devices"] }
    - { name: project_read, scoped: true, endpoints: ["GET /v1/projects/{id}"] }
    - { name: odd, endpoints: ["GET /v1/a+b/(x)/{id}"] }
roles:
  - { name: reader, kind: app, grants: [devices:read, cors, odd, { permission: project_read, projects: [abc] }] }
  - { name: writer, kind: app, grants: [devices:write] }
  - name: base_app_user
    kind: app_user
    paths:
      - { path: "/roles$", access: r, default: true }
      - { path: "/thngs", access: cru }
      - { path: "/users/{user}", access: ru }
      - { path: "/", access: d }
  - { name: app_user, kind: app_user, base: base_app_user, paths: [{ path: "/thngs", access: r }] }
subjects:
  - { id: dash, type: app, roles: [reader] }
  - { id: dash2, type: app, roles: [reader] }
  - { id: both, type: app, roles: [reader, writer] }
  - { id: narrow, type: app, roles: [reader, writer], only: [devices:write] }
  - { id: alice, type: user, roles: [base_app_user] }
  - { id: "b%ob", type: user, roles: [base_app_user] }
  - { id: "c,d", type: app, roles: [reader] }
  - { id: au, type: user, roles: [app_user] }
"#;

    fn snapshot() -> Snapshot {
        let policy = parse_policy("test.yaml", POLICY).expect("valid policy");
        Snapshot::compile(&policy, 7)
    }

    fn header() -> RbacOptions {
        RbacOptions {
            input: SubjectInput::Header,
            max_subjects: 1000,
        }
    }

    fn guards() -> &'static [regex::Regex] {
        static GUARDS: std::sync::OnceLock<Vec<regex::Regex>> = std::sync::OnceLock::new();
        GUARDS.get_or_init(|| {
            path_guards()[1..]
                .iter()
                .map(|g| regex::Regex::new(g).expect("guard compiles"))
                .collect()
        })
    }

    fn plan_allows(plan: &RbacPlan, subject: &str, method: &str, path: &str) -> bool {
        let Some(entry) = plan.subjects.iter().find(|s| &*s.id == subject) else {
            return false;
        };
        let Some(m) = Method::ALL.into_iter().find(|m| m.as_str() == method) else {
            return false;
        };
        // The byte guard (`guards_say_what_the_canonicalizer_refuses` checks its text) is slow to
        // build unoptimized: its meaning stands in for it here.
        let bytes_ok = path.is_ascii() && path.len() <= MAX_PATH_BYTES;
        if !bytes_ok || !guards()[0].is_match(path) {
            return false;
        }
        static COMPILED: std::sync::Mutex<Option<HashMap<String, regex::Regex>>> =
            std::sync::Mutex::new(None);
        let matches_regex = |r: &String| {
            let mut cache = COMPILED.lock().expect("cache");
            cache
                .get_or_insert_with(HashMap::new)
                .entry(r.clone())
                .or_insert_with(|| regex::Regex::new(r).expect("plan regex compiles"))
                .is_match(path)
        };
        let matches = |paths: &MethodPaths| paths.0[m.index()].as_ref().is_some_and(matches_regex);
        matches(&entry.allows)
            || entry
                .own
                .iter()
                .any(|o| o.methods & m.bit() != 0 && matches_regex(&o.regex))
    }

    fn engine_allows(snap: &Snapshot, subject: &str, method: &str, path: &str) -> bool {
        let Ok(canonical) = CanonicalPath::parse(path, PathOptions::default()) else {
            return false;
        };
        snap.decide(&Request {
            subject,
            action: Action::Http {
                method,
                path: &canonical,
            },
            scope: None,
            resource: None,
            inline: None,
        })
        .allowed
    }

    #[test]
    fn allows_only_what_the_engine_allows_and_records_why_it_defers() {
        let snap = snapshot();
        let plan = snap.rbac_plan(&header());
        assert_eq!(plan.revision, 7);
        let subjects = [
            "dash", "dash2", "both", "narrow", "alice", "b%ob", "c,d", "au", "nobody",
        ];
        let methods = [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get",
        ];
        let mut paths: Vec<String> = [
            "/",
            "/v1/devices",
            "/v1/devices/",
            "/v1/devices//",
            "/v1/devices/d1",
            "/v1/devices/d1?x=1",
            "/v1/devices/d1/",
            "/v1/devices/d1/x",
            "/v1/devices/.",
            "/v1/devices/..",
            "/v1/devices/...",
            "/v1/devices/%41",
            "/v1/devices/a%20b",
            "/v1/devices/a;b",
            "/v1/devices/a\\b",
            "/v1/devices/a#b",
            "/v1/devices/ｓ",
            "/v1/projects/abc",
            "/v1/a+b/(x)/1",
            "/v1/a+b/(x)/",
            "/v1/aab/(x)/1",
            "/roles",
            "/roles/1",
            "/thngs",
            "/thngs/1/2",
            "/thngs/1//2",
            "/users/alice",
            "/users/alice/x",
            "/users/bob",
            "/users/b%25ob",
            "/users/b%ob",
            "/x/y",
            "/v1/devices?a#b",
            "/v1/devices/d1?%zz",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        paths.push(format!("/thngs{}", "/a".repeat(63)));
        paths.push(format!("/thngs{}", "/a".repeat(64)));
        paths.push(format!("/thngs/{}", "a".repeat(4090)));
        paths.push(format!("/thngs/{}", "a".repeat(4089)));
        let mut allowed_somewhere = 0;
        for s in subjects {
            for m in methods {
                for p in &paths {
                    let envoy = plan_allows(&plan, s, m, p);
                    let engine = engine_allows(&snap, s, m, p);
                    assert!(
                        !envoy || engine,
                        "the plan allows {m} {p} for {s}, the engine does not"
                    );
                    allowed_somewhere += usize::from(envoy);
                }
            }
        }
        assert!(allowed_somewhere > 30, "{allowed_somewhere}");
        // What the plan decides in Envoy, exactly.
        for (s, m, p) in [
            ("dash", "GET", "/v1/devices/d1?x=1"),
            ("dash", "HEAD", "/v1/devices/"),
            ("dash", "OPTIONS", "/v1/devices"),
            ("dash", "GET", "/v1/a+b/(x)/1"),
            ("both", "PATCH", "/v1/devices/d1"),
            ("narrow", "PATCH", "/v1/devices/d1"),
            ("alice", "GET", "/users/alice"),
            ("alice", "PUT", "/users/alice/x"),
            ("alice", "DELETE", "/anything/below"),
            ("alice", "GET", "/roles"),
            ("alice", "POST", "/thngs/1/2"),
            ("au", "GET", "/thngs/1"),
        ] {
            assert!(plan_allows(&plan, s, m, p), "{s} {m} {p}");
        }
        for (s, m, p) in [
            ("narrow", "GET", "/v1/devices/d1"),
            ("dash", "GET", "/v1/projects/abc"),
            ("dash", "get", "/v1/devices"),
            ("dash", "GET", "/v1/devices/a%20b"),
            ("au", "POST", "/thngs/1"),
            ("alice", "GET", "/roles/1"),
        ] {
            assert!(!plan_allows(&plan, s, m, p), "{s} {m} {p}");
        }
        // Deferred subjects are recorded with their reason.
        assert!(plan.deferred.contains(&Deferral {
            subject: Some("c,d".into()),
            reason: DeferReason::SubjectNotMatchable,
        }));
        assert!(plan.deferred.contains(&Deferral {
            subject: Some("b%ob".into()),
            reason: DeferReason::SelfPathNotLiteral {
                role: "base_app_user".into(),
                rule: "/users/{user}".into(),
            },
        }));
        assert!(plan.deferred.contains(&Deferral {
            subject: None,
            reason: DeferReason::ScopedPermission("project_read".into()),
        }));
        // Subjects with the same roles share one compiled entry.
        let get = |id: &str| {
            plan.subjects
                .iter()
                .find(|s| &*s.id == id)
                .map(|s| Arc::clone(&s.allows))
                .expect("planned")
        };
        assert!(Arc::ptr_eq(&get("dash"), &get("dash2")));
        // `{user}` rules stay apart: the class's part is shared, each subject's own part
        // names it alone.
        assert!(Arc::ptr_eq(&get("alice"), &get("b%ob")));
        let own = |id: &str| {
            plan.subjects
                .iter()
                .find(|s| &*s.id == id)
                .map(|s| s.own.clone())
                .unwrap_or_default()
        };
        let alice = own("alice");
        assert_eq!(alice.len(), 1, "{alice:?}");
        assert_eq!(
            alice[0].methods,
            Method::Get.bit() | Method::Head.bit() | Method::Put.bit() | Method::Patch.bit()
        );
        assert!(alice[0].regex.starts_with("^(?:/users/alice("), "{alice:?}");
        assert!(get("alice").iter().all(|(_, r)| !r.contains("alice")));
        assert_eq!(own("b%ob"), [], "deferred, so nothing of its own");
    }

    #[test]
    fn guards_say_what_the_canonicalizer_refuses() {
        let [bytes, segments] = path_guards();
        let total: usize = bytes
            .split("{0,")
            .skip(1)
            .filter_map(|part| part.split('}').next()?.parse::<usize>().ok())
            .sum();
        assert_eq!(total, MAX_PATH_BYTES);
        assert!(bytes.starts_with("^[\\x00-\\x7f]{0,1000}") && bytes.ends_with('$'));
        let segments = regex::Regex::new(&segments).expect("compiles");
        assert!(segments.is_match(&"/a".repeat(MAX_PATH_SEGMENTS)));
        assert!(segments.is_match(&format!("{}/?x=/a/b", "/a".repeat(MAX_PATH_SEGMENTS))));
        assert!(!segments.is_match(&"/a".repeat(MAX_PATH_SEGMENTS + 1)));
        assert!(segments.is_match("/"));
    }

    #[test]
    fn over_the_limit_nothing_is_compiled() {
        let plan = snapshot().rbac_plan(&RbacOptions {
            input: SubjectInput::Header,
            max_subjects: 3,
        });
        assert!(plan.subjects.is_empty());
        assert!(plan.deferred.iter().any(|d| matches!(
            d.reason,
            DeferReason::TooManySubjects { count: 8, limit: 3 }
        )));
    }

    #[test]
    fn spiffe_input_keeps_spiffe_ids_only() {
        let policy = parse_policy(
            "test.yaml",
            r#"
catalog:
  permissions:
    - { name: p, endpoints: ["GET /x"] }
roles:
  - { name: r, kind: app, grants: [p] }
subjects:
  - { id: "spiffe://cluster.local/ns/a/sa/b", type: app, roles: [r] }
  - { id: plain, type: app, roles: [r] }
"#,
        )
        .expect("valid");
        let plan = Snapshot::compile(&policy, 1).rbac_plan(&RbacOptions {
            input: SubjectInput::Spiffe,
            max_subjects: 10,
        });
        let ids: Vec<&str> = plan.subjects.iter().map(|s| &*s.id).collect();
        assert_eq!(ids, ["spiffe://cluster.local/ns/a/sa/b"]);
    }

    #[test]
    fn jwt_input_leaves_what_a_non_string_claim_could_spell_to_ext_authz() {
        use base64::Engine as _;
        let object = base64::engine::general_purpose::STANDARD.encode(r#"{"sub":"x"}"#);
        let list = base64::engine::general_purpose::STANDARD.encode(r#"["x"]"#);
        let plain = base64::engine::general_purpose::STANDARD.encode("plain");
        for (id, compiled) in [
            ("alice", true),
            ("app-7", true),
            (plain.as_str(), true),
            ("123", false),
            ("-1.5", false),
            ("1e+21", false),
            ("true", false),
            ("false", false),
            (object.as_str(), false),
            (list.as_str(), false),
            ("a,b", false),
        ] {
            assert_eq!(matchable(id, SubjectInput::JwtClaim), compiled, "{id}");
        }
        assert!(matchable("123", SubjectInput::Header));
    }

    #[test]
    fn a_subject_write_shows_in_the_next_plan() {
        let snap = snapshot();
        let policy = parse_policy("test.yaml", POLICY).expect("valid");
        let next = snap.with_subject("dash", None, 8);
        let plan = next.rbac_plan(&header());
        assert_eq!(plan.revision, 8);
        assert!(!plan.subjects.iter().any(|s| &*s.id == "dash"));
        let mut newcomer = policy
            .subjects
            .iter()
            .find(|s| s.id == "dash")
            .expect("dash")
            .clone();
        newcomer.id = "newcomer".into();
        let plan = next
            .with_subject("newcomer", Some(&newcomer), 9)
            .rbac_plan(&header());
        assert!(plan_allows(&plan, "newcomer", "GET", "/v1/devices"));
    }
}
