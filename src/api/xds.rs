//! The xDS server for Envoy's RBAC filters (ECDS, `envoy.service.extension.v3`). Each published
//! snapshot, compiled by [`Snapshot::rbac_plan`](crate::engine::Snapshot::rbac_plan), is rendered
//! as two `envoy.extensions.filters.http.rbac.v3.RBAC` configs:
//!
//! - [`SUBJECTS_RESOURCE`] maps each subject to the tag of its class (or, when the path matches
//!   one of its own `{user}` rules, to the tag of that rule's methods); the listener copies that
//!   tag into [`CLASS_HEADER`];
//! - [`RESOURCE_NAME`] holds each class's path expressions, looked up by that header.
//!
//! The subject map also names the policy revision (an enforced rule with the `LOG` action, which
//! lets everything through and records its name), so it is pushed at every revision; the class
//! config only when a class appears or goes. A class's tag always means the same requests, and a
//! tag Envoy does not hold matches nothing, so whatever pair of the two Envoy holds, a request
//! it lets through is one the revision the subject map names allows. A new class config is
//! pushed first, and the subject map that refers to it once Envoy accepted it (or after
//! [`CLASS_ANSWER_WAIT`]), so the new class's requests do not go to ext_authz meanwhile. A
//! subject write re-sends one small entry per subject, never the path expressions.
//! docs/xds-rbac.md has the design.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig as EnvoyTypedExtensionConfig;
use envoy_types::pb::envoy::config::rbac::v3::{
    Action as RbacAction, Permission, Policy, Principal, Rbac, permission, principal,
    rbac::Action as RbacVerdict,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::matching::common_inputs::ssl::v3::UriSanInput;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::extension::v3::extension_config_discovery_service_server::{
    ExtensionConfigDiscoveryService, ExtensionConfigDiscoveryServiceServer,
};
use envoy_types::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::predicate::{
    MatchType, PredicateList, SinglePredicate, single_predicate,
};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::{FieldMatcher, Predicate};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::{MatchMap, TreeType};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{
    MatcherList, MatcherTree, MatcherType, OnMatch, on_match,
};
use envoy_types::pb::xds::r#type::matcher::v3::{
    Matcher, RegexMatcher, StringMatcher, regex_matcher, string_matcher,
};
use prost::{Message, Name};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::authz::AppState;
use crate::config::{EnvoyConfig, SubjectSource};
use crate::engine::envoy_rbac::{
    MethodPaths, OwnPath, RbacOptions, RbacPlan, SubjectInput, path_guards,
};
use crate::live::LivePolicy;
use crate::model::Method;

/// The ECDS resource of the class filter (path expressions per class): the listener's second
/// RBAC filter names it in `config_discovery`; its verdict decides whether ext_authz runs.
pub const RESOURCE_NAME: &str = "authz.rbac";
/// The ECDS resource of the subject filter (subject -> class tag), the listener's first RBAC
/// filter.
pub const SUBJECTS_RESOURCE: &str = "authz.subjects";
/// The subject filter's `shadow_rules_stat_prefix`: its verdict lands in the dynamic metadata
/// key `authz_subjects_shadow_effective_policy_id` (and its counters carry the prefix), apart
/// from the class filter's unprefixed keys.
pub const SUBJECTS_STAT_PREFIX: &str = "authz_subjects_";
/// The request header the listener fills with the subject filter's verdict (after removing
/// any client copy) and the class filter looks up.
pub const CLASS_HEADER: &str = "x-authz-class";
/// The health service that turns NOT_SERVING while Envoy rejects the latest config.
pub const HEALTH_SERVICE: &str = "authz.envoy.xds";
/// With the JWT subject source, the header RBAC reads the subject from: the listener's
/// jwt_authn provider copies the subject claim into it (`claim_to_headers`) after a filter
/// before jwt_authn removed every client-sent copy (`k8s/overlays/envoy-xds/envoy.yaml`).
/// Envoy's dynamic metadata input yields a protobuf value, which no `exact_match_map` matches.
pub const JWT_SUBJECT_HEADER: &str = "x-authz-jwt-subject";
/// Name of the RBAC action of a request the plan does not allow (ext_authz decides it).
pub const DEFER_ACTION: &str = "defer";
/// Name of the class filter's action for a request the plan allows.
pub const ALLOW_ACTION: &str = "allow";

const TYPED_EXTENSION_CONFIG: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn typed<M: Message + Name>(name: &str, message: &M) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: name.into(),
        typed_config: Some(any(message)),
    }
}

fn action(name: &str, verdict: RbacVerdict) -> OnMatch {
    OnMatch {
        keep_matching: false,
        on_match: Some(on_match::OnMatch::Action(typed(
            name,
            &RbacAction {
                name: name.into(),
                action: verdict as i32,
            },
        ))),
    }
}

fn nested(matcher: Matcher) -> OnMatch {
    OnMatch {
        keep_matching: false,
        on_match: Some(on_match::OnMatch::Matcher(Box::new(matcher))),
    }
}

fn defer() -> Option<Box<OnMatch>> {
    Some(Box::new(action(DEFER_ACTION, RbacVerdict::Deny)))
}

fn header_input(name: &str) -> TypedExtensionConfig {
    typed(
        "header",
        &HttpRequestHeaderMatchInput {
            header_name: name.into(),
        },
    )
}

fn string_predicate(
    input: TypedExtensionConfig,
    pattern: string_matcher::MatchPattern,
) -> Predicate {
    Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(input),
            matcher: Some(single_predicate::Matcher::ValueMatch(StringMatcher {
                ignore_case: false,
                match_pattern: Some(pattern),
            })),
        })),
    }
}

fn regex_predicate(input: TypedExtensionConfig, regex: &str) -> Predicate {
    string_predicate(
        input,
        string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: regex.into(),
            engine_type: Some(regex_matcher::EngineType::GoogleRe2(
                regex_matcher::GoogleRe2 {},
            )),
        }),
    )
}

/// An `exact_match_map` on `input`; with no `on_no_match`, a value missing from it makes the
/// matcher holding it not match (Envoy goes on with the next entry of a list).
fn tree_or(
    input: TypedExtensionConfig,
    map: HashMap<String, OnMatch>,
    on_no_match: Option<Box<OnMatch>>,
) -> Matcher {
    Matcher {
        on_no_match,
        matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
            input: Some(input),
            tree_type: Some(TreeType::ExactMatchMap(MatchMap { map })),
        })),
    }
}

fn list_or(matchers: Vec<FieldMatcher>, on_no_match: Option<Box<OnMatch>>) -> Matcher {
    Matcher {
        on_no_match,
        matcher_type: Some(MatcherType::MatcherList(MatcherList { matchers })),
    }
}

/// A map whose misses go to ext_authz.
fn tree(input: TypedExtensionConfig, map: HashMap<String, OnMatch>) -> Matcher {
    tree_or(input, map, defer())
}

/// A list whose misses go to ext_authz.
fn list(matchers: Vec<FieldMatcher>) -> Matcher {
    list_or(matchers, defer())
}

/// The subject input ext_authz's subject source corresponds to.
pub fn subject_input(config: &EnvoyConfig) -> SubjectInput {
    match config.subject_source {
        SubjectSource::Header => SubjectInput::Header,
        SubjectSource::Jwt => SubjectInput::JwtClaim,
        SubjectSource::Spiffe => SubjectInput::Spiffe,
    }
}

fn subject_input_config(config: &EnvoyConfig) -> TypedExtensionConfig {
    match config.subject_source {
        SubjectSource::Header => header_input(&config.subject_header),
        SubjectSource::Jwt => header_input(JWT_SUBJECT_HEADER),
        SubjectSource::Spiffe => typed("uri-san", &UriSanInput {}),
    }
}

/// Tags of classes (the requests a set of roles allows, `{user}` rules aside), stable across
/// revisions: a class keeps its tag while some subject has it, so a subject write leaves the
/// class filter's lookups as they were. Tags are never reused within a process, and carry a
/// random part drawn at start, so no client can guess one (the listener removes client copies
/// of [`CLASS_HEADER`]; with an Envoy config that forgot to, a forged tag still matches nothing).
pub struct ClassTags {
    secret: String,
    tags: HashMap<MethodPaths, u64>,
    next: u64,
}

impl ClassTags {
    /// Tags drawn with a fresh random part.
    pub fn new() -> ClassTags {
        // std's hasher keys come from the system's random source once per process; a keyed
        // SipHash of a constant under them is as unpredictable as they are.
        use std::hash::BuildHasher;
        let secret = std::hash::RandomState::new().hash_one(0u8);
        ClassTags {
            secret: format!("{secret:016x}"),
            tags: HashMap::new(),
            next: 0,
        }
    }

    /// The verdict of a subject whose own rule matched the path: the class filter allows the
    /// rule's methods (`methods` as a bit per [`Method::index`], [`Method::bit`]).
    fn own(&self, methods: u32) -> String {
        format!("o{methods}-{}", self.secret)
    }

    /// Tags for the classes of `plan` (by their shared expressions); classes gone since the
    /// last call lose theirs.
    fn assign<'p>(
        &mut self,
        plan: &'p RbacPlan,
    ) -> HashMap<*const MethodPaths, (String, &'p MethodPaths)> {
        let mut out = HashMap::new();
        let mut live: HashMap<MethodPaths, u64> = HashMap::new();
        for subject in &plan.subjects {
            let paths: &MethodPaths = &subject.allows;
            if paths.is_empty() || out.contains_key(&Arc::as_ptr(&subject.allows)) {
                continue;
            }
            let number = match live.get(paths).or_else(|| self.tags.get(paths)) {
                Some(n) => *n,
                None => {
                    self.next += 1;
                    self.next
                }
            };
            live.insert(paths.clone(), number);
            out.insert(
                Arc::as_ptr(&subject.allows),
                (format!("c{number}-{}", self.secret), paths),
            );
        }
        self.tags = live;
        out
    }
}

impl Default for ClassTags {
    fn default() -> Self {
        ClassTags::new()
    }
}

/// The two filter configs of one revision.
pub struct Rendered {
    /// [`SUBJECTS_RESOURCE`]: subject -> class tag.
    pub subjects: RbacFilter,
    /// [`RESOURCE_NAME`]: class tag -> method -> path expression -> allowed.
    pub classes: RbacFilter,
}

/// For a subject with `{user}` rules: a list whose entries match the paths its own rules allow,
/// each naming the set of methods allowed there (the class filter checks the method, so the
/// subject map holds one expression per rule, not per method). Where two of its rules allow the
/// same path, the first entry wins, and the other's methods there (or its class's) go to
/// ext_authz.
fn own_entries(own: &[OwnPath], tags: &ClassTags) -> Vec<FieldMatcher> {
    own.iter()
        .map(|o| FieldMatcher {
            predicate: Some(regex_predicate(header_input(":path"), &o.regex)),
            on_match: Some(action(&tags.own(o.methods), RbacVerdict::Allow)),
        })
        .collect()
}

/// The subject filter: each subject's verdict is its class tag, or [`ClassTags::own`] when one
/// of its own `{user}` rules matches the path. A subject not in the map gets no verdict at all
/// (no `on_no_match`), so the listener's header stays unset.
///
/// Subjects with own rules are looked up first, in a map of their own whose entries have no
/// `on_no_match`: when none of a subject's own paths matches, that entry does not match and
/// Envoy goes on with the map of classes. Each subject's class is then a bare action, the
/// cheapest entry for Envoy to build again on every write.
fn subjects_filter(
    plan: &RbacPlan,
    input: &TypedExtensionConfig,
    classes: &HashMap<*const MethodPaths, (String, &MethodPaths)>,
    tags: &ClassTags,
) -> RbacFilter {
    let mut by_class = HashMap::new();
    let mut by_own = HashMap::new();
    for subject in &plan.subjects {
        if let Some((tag, _)) = classes.get(&Arc::as_ptr(&subject.allows)) {
            by_class.insert(subject.id.to_string(), action(tag, RbacVerdict::Allow));
        }
        if !subject.own.is_empty() {
            let own = list_or(own_entries(&subject.own, tags), None);
            by_own.insert(subject.id.to_string(), nested(own));
        }
    }
    // Envoy refuses an empty map or list: what is empty is left out.
    let classes = (!by_class.is_empty()).then(|| tree_or(input.clone(), by_class, None));
    let shadow_matcher = if by_own.is_empty() {
        classes
    } else {
        // Every path Envoy routes starts with `/`: the one entry is the own paths' map.
        let any_path = string_predicate(
            header_input(":path"),
            string_matcher::MatchPattern::Prefix("/".into()),
        );
        let own = FieldMatcher {
            predicate: Some(any_path),
            on_match: Some(nested(tree_or(input.clone(), by_own, None))),
        };
        Some(list_or(vec![own], classes.map(|c| Box::new(nested(c)))))
    };
    RbacFilter {
        rules: Some(revision_rule(plan.revision)),
        rules_stat_prefix: SUBJECTS_STAT_PREFIX.into(),
        shadow_matcher,
        shadow_rules_stat_prefix: SUBJECTS_STAT_PREFIX.into(),
        ..Default::default()
    }
}

/// Enforced rules that let every request through (`LOG`) and name the revision: Envoy records
/// the matched policy's name as `authz_subjects_enforced_effective_policy_id`, which the
/// listener copies into the revision header.
fn revision_rule(revision: u64) -> Rbac {
    let everyone = Policy {
        permissions: vec![Permission {
            rule: Some(permission::Rule::Any(true)),
        }],
        principals: vec![Principal {
            identifier: Some(principal::Identifier::Any(true)),
        }],
        ..Default::default()
    };
    Rbac {
        action: RbacVerdict::Log as i32,
        policies: HashMap::from([(revision.to_string(), everyone)]),
        ..Default::default()
    }
}

/// The methods a set allows (a bit per [`Method::index`]), each allowed.
fn methods_matcher(methods: u32, allow: &OnMatch) -> Matcher {
    let allowed = Method::ALL
        .into_iter()
        .filter(|m| methods & m.bit() != 0)
        .map(|m| (m.as_str().to_owned(), allow.clone()))
        .collect();
    tree(header_input(":method"), allowed)
}

/// One class's matcher: its path expression for the request's method.
fn class_matcher(paths: &MethodPaths, allow: &OnMatch) -> Matcher {
    let methods = paths
        .iter()
        .map(|(method, regex)| {
            let check = list(vec![FieldMatcher {
                predicate: Some(regex_predicate(header_input(":path"), regex)),
                on_match: Some(allow.clone()),
            }]);
            (method.as_str().to_owned(), nested(check))
        })
        .collect();
    tree(header_input(":method"), methods)
}

/// The class filter: a classifier whose verdict is `allowed` exactly for the requests whose
/// path passes the guards and whose class tag (set from the subject filter's verdict) allows
/// the method and path. Names no revision, so it changes only when a class does.
fn classes_filter(
    plan: &RbacPlan,
    classes: &HashMap<*const MethodPaths, (String, &MethodPaths)>,
    tags: &ClassTags,
) -> RbacFilter {
    let allow = action(ALLOW_ACTION, RbacVerdict::Allow);
    let guards = path_guards()
        .iter()
        .map(|g| regex_predicate(header_input(":path"), g))
        .collect();
    let mut map: HashMap<String, OnMatch> = classes
        .values()
        .map(|(tag, paths)| (tag.clone(), nested(class_matcher(paths, &allow))))
        .collect();
    for own in plan.subjects.iter().flat_map(|s| &s.own) {
        map.entry(tags.own(own.methods))
            .or_insert_with(|| nested(methods_matcher(own.methods, &allow)));
    }
    let on_match = if map.is_empty() {
        // Envoy refuses an empty map: with no subject compiled, the guards lead to `defer`.
        action(DEFER_ACTION, RbacVerdict::Deny)
    } else {
        nested(tree(header_input(CLASS_HEADER), map))
    };
    let root = list(vec![FieldMatcher {
        predicate: Some(Predicate {
            match_type: Some(MatchType::AndMatcher(PredicateList { predicate: guards })),
        }),
        on_match: Some(on_match),
    }]);
    RbacFilter {
        shadow_matcher: Some(root),
        ..Default::default()
    }
}

/// Both filter configs of a plan. Pure but for `tags`, which keeps class tags stable from one
/// revision to the next.
pub fn render(plan: &RbacPlan, config: &EnvoyConfig, tags: &mut ClassTags) -> Rendered {
    let assigned = tags.assign(plan);
    let tags: &ClassTags = tags;
    Rendered {
        subjects: subjects_filter(plan, &subject_input_config(config), &assigned, tags),
        classes: classes_filter(plan, &assigned, tags),
    }
}

/// Test support: a push Envoy rejects, to prove the NACK path through a real Envoy (Envoy 1.40
/// offers no switch that makes it refuse a config it accepted before). Nothing in the sidecar
/// arms it; a test arms the server listening on one address, so tests running side by side
/// leave each other alone.
#[doc(hidden)]
pub mod fault {
    use std::sync::Mutex;

    use crate::config::XdsListen;

    static ARMED: Mutex<Vec<XdsListen>> = Mutex::new(Vec::new());

    /// The next revision's first push of the xDS server on `listen` (the class config when it
    /// changed, else the subject map) carries a config Envoy cannot load (an invalid regex);
    /// the pushes after it are the real ones again.
    pub fn reject_next_push(listen: &XdsListen) {
        ARMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(listen.clone());
    }

    /// Whether the push about to go out on `listen` is the armed one (disarms it).
    pub(super) fn take(listen: Option<&XdsListen>) -> bool {
        let Some(listen) = listen else { return false };
        let mut armed = ARMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = armed.len();
        armed.retain(|l| l != listen);
        armed.len() != before
    }
}

/// A config Envoy refuses to load: its one regex does not compile.
fn unloadable() -> RbacFilter {
    RbacFilter {
        shadow_matcher: Some(list(vec![FieldMatcher {
            predicate: Some(regex_predicate(header_input(":path"), "(")),
            on_match: Some(action(DEFER_ACTION, RbacVerdict::Deny)),
        }])),
        ..Default::default()
    }
}

/// One resource as pushed: the ECDS resource at a version (the revision it was rendered at).
struct Push {
    version: u64,
    resource: Any,
}

impl Push {
    fn new(name: &str, filter: &RbacFilter, version: u64) -> Push {
        Push {
            version,
            resource: any(&EnvoyTypedExtensionConfig {
                name: name.into(),
                typed_config: Some(any(filter)),
            }),
        }
    }

    fn response(&self, nonce: u64) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version.to_string(),
            resources: vec![self.resource.clone()],
            type_url: TYPED_EXTENSION_CONFIG.into(),
            nonce: nonce.to_string(),
            ..Default::default()
        }
    }
}

/// Which of the two resources a stream carries (Envoy opens one stream per filter).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Subjects,
    Classes,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Subjects => SUBJECTS_RESOURCE,
            Kind::Classes => RESOURCE_NAME,
        }
    }
}

/// Envoy's answer on one stream, to the last push it answered.
#[derive(Clone, Copy)]
enum Answer {
    None,
    Accepted(u64),
    Rejected(u64),
}

/// What the streams tell the publisher and the health service.
#[derive(Default)]
struct Answers {
    next_stream: u64,
    /// Open streams, their resource and their last answer.
    streams: HashMap<u64, (Kind, Answer)>,
    /// Whether the last answer for each kind was a rejection.
    rejected: [bool; 2],
}

/// Shared by the publisher and every stream.
struct Shared {
    state: Arc<AppState>,
    config: EnvoyConfig,
    health: HealthReporter,
    subjects: watch::Sender<Option<Arc<Push>>>,
    classes: watch::Sender<Option<Arc<Push>>>,
    answers: Mutex<Answers>,
    /// Bumped on every answer and when a stream closes.
    answered: watch::Sender<u64>,
}

impl Shared {
    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether every open stream of `kind` answered `version`: `Some(true)` all accepted it
    /// (or something newer), `Some(false)` one rejected it, `None` still waiting.
    fn settled(&self, kind: Kind, version: u64) -> Option<bool> {
        let answers = self.answers();
        let mut settled = Some(true);
        for (_, answer) in answers.streams.values().filter(|(k, _)| *k == kind) {
            match *answer {
                Answer::Accepted(v) if v >= version => {}
                Answer::Rejected(v) if v >= version => return Some(false),
                _ => settled = None,
            }
        }
        settled
    }

    async fn answer(&self, kind: Kind, stream: u64, version: u64, error: Option<(i32, &str)>) {
        let metrics = &self.state.metrics;
        let serving = {
            let mut answers = self.answers();
            answers.rejected[kind as usize] = error.is_some();
            answers.streams.insert(
                stream,
                (
                    kind,
                    match error {
                        Some(_) => Answer::Rejected(version),
                        None => Answer::Accepted(version),
                    },
                ),
            );
            !answers.rejected.iter().any(|r| *r)
        };
        self.answered.send_modify(|n| *n += 1);
        match error {
            Some((code, message)) => {
                metrics.xds_nacked();
                tracing::error!(
                    resource = kind.name(),
                    version,
                    code,
                    message,
                    "Envoy rejected an RBAC config; it keeps its last good one"
                );
            }
            None => {
                // The subject map names the revision.
                if kind == Kind::Subjects {
                    metrics.xds_acked(version);
                }
                tracing::debug!(
                    resource = kind.name(),
                    version,
                    "Envoy accepted an RBAC config"
                );
            }
        }
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status(HEALTH_SERVICE, status).await;
    }
}

/// Removes a stream from the answers when it ends, however it ends.
struct OpenStream<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.shared.answers().streams.remove(&self.id);
        self.shared.answered.send_modify(|n| *n += 1);
    }
}

/// Serves the RBAC configs over ECDS.
#[derive(Clone)]
pub struct XdsService {
    shared: Arc<Shared>,
    /// Held by every clone: when the server drops the last one, the publisher ends.
    _alive: watch::Receiver<()>,
}

/// How the publisher's wait for the class streams ended.
enum Waited {
    Accepted,
    Rejected,
    /// A class stream did not answer within [`CLASS_ANSWER_WAIT`].
    TimedOut,
    NewRevision,
    Closed,
}

/// How long the subject map waits for the class streams' answers. Any pair of the two configs
/// decides as the subject map's revision does (a tag always means the same requests; one Envoy
/// does not hold yet matches nothing), so the wait only spares ext_authz the requests of a new
/// class; a stream that never answers (an Envoy stuck, any client of the xDS socket) must not
/// hold every later write back.
const CLASS_ANSWER_WAIT: Duration = Duration::from_secs(2);

impl XdsService {
    /// A service over the sidecar's state; starts the task that renders each revision.
    pub fn new(state: Arc<AppState>, config: EnvoyConfig, health: HealthReporter) -> XdsService {
        let shared = Arc::new(Shared {
            state,
            config,
            health,
            subjects: watch::channel(None).0,
            classes: watch::channel(None).0,
            answers: Mutex::new(Answers::default()),
            answered: watch::channel(0).0,
        });
        let (alive, _alive) = watch::channel(());
        tokio::spawn(publish(Arc::clone(&shared), alive));
        XdsService { shared, _alive }
    }

    /// The tonic server for it.
    pub fn server(self) -> ExtensionConfigDiscoveryServiceServer<XdsService> {
        ExtensionConfigDiscoveryServiceServer::new(self)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(4 * 1024 * 1024)
    }
}

/// Waits for the live policy, unless the server goes away first.
async fn live_policy(shared: &Shared, alive: &watch::Sender<()>) -> Option<Arc<LivePolicy>> {
    loop {
        if let Ok(live) = shared.state.live() {
            return Some(Arc::clone(live));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = alive.closed() => return None,
        }
    }
}

/// Renders every published revision once, for every stream: a changed class config first,
/// then, once every class stream accepted it (or after [`CLASS_ANSWER_WAIT`]), the subject map
/// (which names the revision). Ends when the server drops the service.
async fn publish(shared: Arc<Shared>, alive: watch::Sender<()>) {
    let Some(live) = live_policy(&shared, &alive).await else {
        return;
    };
    let mut published = live.subscribe_published();
    let mut answered = shared.answered.subscribe();
    let options = RbacOptions {
        input: subject_input(&shared.config),
        max_subjects: shared.config.xds_max_subjects,
    };
    let mut tags = ClassTags::new();
    // Compared as messages: the encoding of a map follows its hash order.
    let mut last_classes: Option<RbacFilter> = None;
    loop {
        published.mark_unchanged();
        let started = std::time::Instant::now();
        let current = live.current();
        let revision = current.snapshot.revision();
        let plan = current.snapshot.rbac_plan(&options);
        drop(current);
        let rendered = render(&plan, &shared.config, &mut tags);
        // Test support: the first push of this revision is one Envoy rejects.
        let mut unloadable_next = fault::take(shared.config.xds_listen.as_ref());
        let mut waited = Waited::Accepted;
        if last_classes.as_ref() != Some(&rendered.classes) {
            let push = if std::mem::take(&mut unloadable_next) {
                Push::new(RESOURCE_NAME, &unloadable(), revision)
            } else {
                Push::new(RESOURCE_NAME, &rendered.classes, revision)
            };
            tracing::info!(
                revision,
                bytes = push.resource.value.len(),
                compile_ms = started.elapsed().as_millis() as u64,
                "pushing the RBAC class config to Envoy"
            );
            shared.classes.send_replace(Some(Arc::new(push)));
            last_classes = Some(rendered.classes);
            answered.mark_unchanged();
            let deadline = tokio::time::Instant::now() + CLASS_ANSWER_WAIT;
            waited = loop {
                if let Some(accepted) = shared.settled(Kind::Classes, revision) {
                    break if accepted {
                        Waited::Accepted
                    } else {
                        Waited::Rejected
                    };
                }
                tokio::select! {
                    _ = answered.changed() => {}
                    changed = published.changed() => break match changed {
                        Ok(()) => Waited::NewRevision,
                        Err(_) => Waited::Closed,
                    },
                    _ = alive.closed() => break Waited::Closed,
                    _ = tokio::time::sleep_until(deadline) => break Waited::TimedOut,
                }
            };
        }
        match waited {
            Waited::Closed => return,
            // A newer revision: render that one instead.
            Waited::NewRevision => continue,
            // Envoy keeps the subject map it had, which only names classes its class config
            // holds or goes to ext_authz.
            Waited::Rejected => {}
            Waited::Accepted | Waited::TimedOut => {
                if matches!(waited, Waited::TimedOut) {
                    tracing::warn!(
                        revision,
                        "a class stream did not answer the class config in time; pushing the subject map anyway"
                    );
                }
                let subjects = if unloadable_next {
                    unloadable()
                } else {
                    rendered.subjects
                };
                let push = Push::new(SUBJECTS_RESOURCE, &subjects, revision);
                tracing::info!(
                    revision,
                    subjects = plan.subjects.len(),
                    deferred = plan.deferred.len(),
                    bytes = push.resource.value.len(),
                    compile_ms = started.elapsed().as_millis() as u64,
                    "pushing the RBAC subject map to Envoy"
                );
                shared.state.metrics.xds_pushed(plan.subjects.len());
                shared.subjects.send_replace(Some(Arc::new(push)));
            }
        }
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            _ = alive.closed() => return,
        }
    }
}

/// One stream: the resource Envoy asked for, pushed now and at every change; ACKs and NACKs
/// read and reported.
async fn serve_stream(
    shared: Arc<Shared>,
    mut requests: Streaming<DiscoveryRequest>,
    out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Ok(None) | Err(_) => return,
    };
    let kind = if first.resource_names.iter().any(|n| n == SUBJECTS_RESOURCE) {
        Kind::Subjects
    } else {
        Kind::Classes
    };
    let mut pushes = match kind {
        Kind::Subjects => shared.subjects.subscribe(),
        Kind::Classes => shared.classes.subscribe(),
    };
    let id = {
        let mut answers = shared.answers();
        answers.next_stream += 1;
        answers.next_stream
    };
    shared.answers().streams.insert(id, (kind, Answer::None));
    let _open = OpenStream {
        shared: &shared,
        id,
    };
    let mut nonce = 0u64;
    // (nonce, version) of pushes not yet answered.
    let mut sent: Vec<(u64, u64)> = Vec::new();
    let mut send_now = true;
    loop {
        if send_now {
            let push = pushes.borrow_and_update().clone();
            if let Some(push) = push {
                nonce += 1;
                sent.push((nonce, push.version));
                if out.send(Ok(push.response(nonce))).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            request = requests.message() => {
                let request = match request {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return,
                };
                send_now = request.response_nonce.is_empty();
                let Ok(n) = request.response_nonce.parse::<u64>() else { continue };
                let version = sent.iter().find(|(s, _)| *s == n).map(|(_, v)| *v);
                sent.retain(|(s, _)| *s > n);
                if let Some(version) = version {
                    let error = request.error_detail.as_ref().map(|e| (e.code, e.message.as_str()));
                    shared.answer(kind, id, version, error).await;
                }
            }
            changed = pushes.changed() => {
                if changed.is_err() {
                    return;
                }
                send_now = true;
            }
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ExtensionConfigDiscoveryService for XdsService {
    type StreamExtensionConfigsStream = ResponseStream<DiscoveryResponse>;

    async fn stream_extension_configs(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamExtensionConfigsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(serve_stream(
            Arc::clone(&self.shared),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type DeltaExtensionConfigsStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn delta_extension_configs(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaExtensionConfigsStream>, Status> {
        Err(Status::unimplemented(
            "incremental ECDS is not served: use the state-of-the-world stream",
        ))
    }

    async fn fetch_extension_configs(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "REST ECDS is not served: use the state-of-the-world stream",
        ))
    }
}
