//! The xDS server for Envoy's RBAC filters (ECDS, `envoy.service.extension.v3`). Each published
//! snapshot, compiled by [`Snapshot::rbac_plan`](crate::engine::Snapshot::rbac_plan), is rendered
//! as two `envoy.extensions.filters.http.rbac.v3.RBAC` configs:
//!
//! - [`SUBJECTS_RESOURCE`] maps each subject to the tag of its class (or, when the path matches
//!   one of its own `{user}` rules, to the tag of that rule's methods); the listener copies that
//!   tag into [`CLASS_HEADER`];
//! - [`RESOURCE_NAME`] holds each tag's path expressions, looked up by that header, its
//!   `allow` actions named after the policy revision (the router copies the name into the
//!   revision header).
//!
//! A tag stands for one set of subjects who share a class, and the class config keeps a tag
//! its revision no longer uses only while its subjects still share one ([`ClassTags`]): so
//! whatever subject map Envoy holds beside a class config, a request it lets through is allowed
//! at the revision that class config names, and a tag the class config does not know matches
//! nothing (ext_authz decides). Envoy decides at a revision once it holds its class config. The
//! class config is pushed at every revision, first; the subject map only when a tag changed,
//! once Envoy accepted the class config, so the new tags' requests do not go to ext_authz
//! meanwhile, and, during a run of writes closer together than Envoy takes to build a subject
//! map, once the writes pause (Envoy builds both configs on one thread: a map being built holds
//! the next write's class config back); within [`CLASS_ANSWER_WAIT`] and [`PAUSE_WAIT`] in all.
//! The
//! path guards are not in either config but in the listener (they would be compiled again at
//! every push).
//! docs/xds-rbac.md has the design.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig as EnvoyTypedExtensionConfig;
use envoy_types::pb::envoy::config::rbac::v3::{Action as RbacAction, rbac::Action as RbacVerdict};
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
    MatchType, SinglePredicate, single_predicate,
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
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::authz::AppState;
use crate::config::{EnvoyConfig, SubjectSource};
use crate::engine::envoy_rbac::{MethodPaths, OwnPath, RbacOptions, RbacPlan, SubjectInput};
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

/// Tags of classes (the requests a set of roles allows, `{user}` rules aside) and of own-rule
/// verdicts, from one revision to the next. A tag is a promise about the subject map: a class
/// tag names one set of subjects (who share one class), an own tag one set of methods and one
/// version of every subject's own rules. Any change to who is in a class gives the class a new
/// tag (a change to its paths alone keeps it: the class config says what a tag allows), any
/// change to anyone's own rules new own tags. Tags are never reused within a process and carry
/// a random part drawn at start, so no client can guess one (the listener removes client copies
/// of [`CLASS_HEADER`]; with an Envoy config that forgot to, a forged tag still matches
/// nothing).
///
/// A tag the revision before used and this one does not (retired) stays in the class config
/// for the subject map Envoy may still hold, but only while it is still *coherent*: every one
/// of its subjects still has one class (for an own tag: still has the own rules it had). Then
/// it allows what they are allowed now; otherwise it is left out and its requests go to
/// ext_authz. So whatever subject map Envoy holds, every tag the class config knows allows
/// exactly what its subjects are allowed at the revision the class config names: Envoy
/// decides at that revision as soon as it holds that class config.
pub struct ClassTags {
    secret: String,
    next: u64,
    last: Option<Assignment>,
    /// The tags of the last subject map pushed ([`ClassTags::map_pushed`]): Envoy may hold it
    /// while later revisions' maps wait for the class config's answer or are skipped.
    pushed: Option<Assignment>,
}

/// The tags of one revision.
#[derive(Clone)]
struct Assignment {
    /// Each class's subjects (sorted), and its tag's number.
    classes: HashMap<Vec<Box<str>>, u64>,
    own_generation: u64,
    /// Every subject with own rules, and them (sorted by subject).
    own: Vec<(Box<str>, Vec<OwnPath>)>,
}

/// What [`ClassTags::assign`] gives one revision.
pub struct Tagged<'p> {
    /// Each class of the plan (by its shared expressions): its tag and paths.
    classes: HashMap<*const MethodPaths, (String, &'p MethodPaths)>,
    own_generation: u64,
    /// Coherent tags of the revision before that this one no longer uses, with what their
    /// subjects are allowed at this revision.
    retired: Vec<(String, Retired<'p>)>,
}

/// What a retired tag allows now.
enum Retired<'p> {
    Class(&'p MethodPaths),
    /// Own-rule methods (a bit per [`Method::index`]).
    Own(u32),
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
            next: 0,
            last: None,
            pushed: None,
        }
    }

    /// The subject map of the last [`assign`](ClassTags::assign) was pushed: its tags stay in
    /// later class configs while they are coherent, even after revisions whose maps were not
    /// pushed.
    pub fn map_pushed(&mut self) {
        self.pushed = self.last.clone();
    }

    fn fresh(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn class(&self, number: u64) -> String {
        format!("c{number}-{}", self.secret)
    }

    /// The verdict of a subject whose own rule matched the path: the class filter allows the
    /// rule's methods (`methods` as a bit per [`Method::index`], [`Method::bit`]).
    fn own(&self, methods: u32, generation: u64) -> String {
        format!("o{methods}.{generation}-{}", self.secret)
    }

    /// Tags for the classes and own rules of `plan`, and the coherent tags it no longer uses of
    /// the last call and of the last subject map pushed.
    pub fn assign<'p>(&mut self, plan: &'p RbacPlan) -> Tagged<'p> {
        let last = self.last.take();
        // Each class by its expressions (equal sets behind different pointers are one class).
        let mut members: HashMap<&'p MethodPaths, (Vec<Box<str>>, Vec<*const MethodPaths>)> =
            HashMap::new();
        for subject in plan.subjects.iter().filter(|s| !s.allows.is_empty()) {
            let (ids, pointers) = members.entry(&*subject.allows).or_default();
            ids.push(subject.id.clone());
            pointers.push(Arc::as_ptr(&subject.allows));
        }
        // Each subject's class now, for the coherence of retired tags.
        let class_of: HashMap<&str, &'p MethodPaths> = plan
            .subjects
            .iter()
            .filter(|s| !s.allows.is_empty())
            .map(|s| (&*s.id, &*s.allows))
            .collect();
        let mut classes = HashMap::new();
        let mut live = HashMap::new();
        for (paths, (ids, pointers)) in members {
            // The same subjects keep their tag, whatever their paths now.
            let kept = [last.as_ref(), self.pushed.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|before| before.classes.get(&ids).copied());
            let number = kept.unwrap_or_else(|| self.fresh());
            let tag = self.class(number);
            for pointer in pointers {
                classes.insert(pointer, (tag.clone(), paths));
            }
            live.insert(ids, number);
        }
        let own: Vec<(Box<str>, Vec<OwnPath>)> = plan
            .subjects
            .iter()
            .filter(|s| !s.own.is_empty())
            .map(|s| (s.id.clone(), s.own.clone()))
            .collect();
        let same_own = [last.as_ref(), self.pushed.as_ref()]
            .into_iter()
            .flatten()
            .find(|before| before.own == own)
            .map(|before| before.own_generation);
        let own_generation = same_own.unwrap_or_else(|| self.fresh());
        let mut retired = Vec::new();
        let (mut seen, mut seen_own) = (BTreeSet::new(), BTreeSet::new());
        for before in [last.as_ref(), self.pushed.as_ref()].into_iter().flatten() {
            for (ids, &number) in &before.classes {
                if live.get(ids) == Some(&number) || !seen.insert(number) {
                    continue;
                }
                // Coherent: all its subjects still share one class.
                let now: Option<Vec<&MethodPaths>> =
                    ids.iter().map(|id| class_of.get(&**id).copied()).collect();
                if let Some(now) = now
                    && now.windows(2).all(|w| w[0] == w[1])
                    && let Some(paths) = now.first()
                {
                    retired.push((self.class(number), Retired::Class(paths)));
                }
            }
            // Coherent: everyone who had own rules still has exactly those.
            let own_now: HashMap<&str, &Vec<OwnPath>> =
                own.iter().map(|(id, rules)| (&**id, rules)).collect();
            let coherent = before
                .own
                .iter()
                .all(|(id, rules)| own_now.get(&**id) == Some(&rules));
            if before.own_generation != own_generation
                && seen_own.insert(before.own_generation)
                && coherent
            {
                let methods: BTreeSet<u32> = before
                    .own
                    .iter()
                    .flat_map(|(_, own)| own.iter().map(|o| o.methods))
                    .collect();
                for m in methods {
                    retired.push((self.own(m, before.own_generation), Retired::Own(m)));
                }
            }
        }
        self.last = Some(Assignment {
            classes: live,
            own_generation,
            own,
        });
        Tagged {
            classes,
            own_generation,
            retired,
        }
    }
}

impl Default for ClassTags {
    fn default() -> Self {
        ClassTags::new()
    }
}

/// The two filter configs of one revision.
pub struct Rendered {
    /// [`SUBJECTS_RESOURCE`]: subject -> tag. Changes only when a tag does.
    pub subjects: RbacFilter,
    /// [`RESOURCE_NAME`]: tag -> method -> path expression -> allowed, named after the
    /// revision. New at every revision.
    pub classes: RbacFilter,
}

/// For a subject with `{user}` rules: a list whose entries match the paths its own rules allow,
/// each naming the set of methods allowed there (the class filter checks the method, so the
/// subject map holds one expression per rule, not per method). Where two of its rules allow the
/// same path, the first entry wins, and the other's methods there (or its class's) go to
/// ext_authz.
fn own_entries(own: &[OwnPath], tags: &ClassTags, generation: u64) -> Vec<FieldMatcher> {
    own.iter()
        .map(|o| FieldMatcher {
            predicate: Some(regex_predicate(header_input(":path"), &o.regex)),
            on_match: Some(action(&tags.own(o.methods, generation), RbacVerdict::Allow)),
        })
        .collect()
}

/// The subject filter: each subject's verdict is its class tag, or an own tag
/// ([`ClassTags::own`]) when one of its own `{user}` rules matches the path. A subject not in
/// the map gets no verdict at all (no `on_no_match`), so the listener's header stays unset.
///
/// Subjects with own rules are looked up first, in a map of their own whose entries have no
/// `on_no_match`: when none of a subject's own paths matches, that entry does not match and
/// Envoy goes on with the map of classes. Each subject's class is then a bare action, the
/// cheapest entry for Envoy to build again on every write. Names no revision: it changes only
/// when a tag does.
fn subjects_filter(
    plan: &RbacPlan,
    input: &TypedExtensionConfig,
    tagged: &Tagged<'_>,
    tags: &ClassTags,
) -> RbacFilter {
    let mut by_class = HashMap::new();
    let mut by_own = HashMap::new();
    for subject in &plan.subjects {
        if let Some((tag, _)) = tagged.classes.get(&Arc::as_ptr(&subject.allows)) {
            by_class.insert(subject.id.to_string(), action(tag, RbacVerdict::Allow));
        }
        if !subject.own.is_empty() {
            let own = list_or(own_entries(&subject.own, tags, tagged.own_generation), None);
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
        shadow_matcher,
        shadow_rules_stat_prefix: SUBJECTS_STAT_PREFIX.into(),
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

/// The class filter: a classifier whose verdict is `allowed` exactly for the requests whose tag
/// (set from the subject filter's verdict) allows the method and path at this revision. Every
/// `allow` action is named after the revision: Envoy records it as `shadow_effective_policy_id`,
/// which the router copies into the revision header. The path guards are not here but in the
/// listener, where ext_authz is skipped only for an `allowed` request that passes them: this
/// config is new at every revision, and Envoy would compile the byte guard (an RE2 program of
/// 8k instructions, most of the class config's load time) again each time.
fn classes_filter(plan: &RbacPlan, tagged: &Tagged<'_>, tags: &ClassTags) -> RbacFilter {
    let allow = action(&plan.revision.to_string(), RbacVerdict::Allow);
    let mut map: HashMap<String, OnMatch> = tagged
        .classes
        .values()
        .map(|(tag, paths)| (tag.clone(), nested(class_matcher(paths, &allow))))
        .collect();
    for own in plan.subjects.iter().flat_map(|s| &s.own) {
        map.entry(tags.own(own.methods, tagged.own_generation))
            .or_insert_with(|| nested(methods_matcher(own.methods, &allow)));
    }
    for (tag, retired) in &tagged.retired {
        let matcher = match retired {
            Retired::Class(paths) => class_matcher(paths, &allow),
            Retired::Own(methods) => methods_matcher(*methods, &allow),
        };
        map.insert(tag.clone(), nested(matcher));
    }
    RbacFilter {
        // Envoy refuses an empty map: with no subject compiled there is no verdict at all,
        // which runs ext_authz.
        shadow_matcher: (!map.is_empty()).then(|| tree(header_input(CLASS_HEADER), map)),
        ..Default::default()
    }
}

/// Both filter configs of a plan. Pure but for `tags`, which carries tags from one revision to
/// the next.
pub fn render(plan: &RbacPlan, config: &EnvoyConfig, tags: &mut ClassTags) -> Rendered {
    let tagged = tags.assign(plan);
    let tags: &ClassTags = tags;
    Rendered {
        subjects: subjects_filter(plan, &subject_input_config(config), &tagged, tags),
        classes: classes_filter(plan, &tagged, tags),
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

    /// The servers whose next class config, and whose next subject map, is one Envoy rejects.
    static ARMED: Mutex<[Vec<XdsListen>; 2]> = Mutex::new([Vec::new(), Vec::new()]);
    const CLASSES: usize = 0;
    const SUBJECTS: usize = 1;

    /// The next revision's class config from the xDS server on `listen` (every revision's
    /// first push) carries a config Envoy cannot load (an invalid regex); the pushes after it
    /// are the real ones again.
    pub fn reject_next_push(listen: &XdsListen) {
        arm(CLASSES, listen);
    }

    /// Likewise the next subject map: Envoy then holds a class config newer than its subject
    /// map for as long as the test likes.
    pub fn reject_next_subject_map(listen: &XdsListen) {
        arm(SUBJECTS, listen);
    }

    fn arm(which: usize, listen: &XdsListen) {
        ARMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[which]
            .push(listen.clone());
    }

    /// Whether the class config about to go out on `listen` is the armed one (disarms it).
    pub(super) fn take(listen: Option<&XdsListen>) -> bool {
        take_armed(CLASSES, listen)
    }

    /// Whether the subject map about to go out on `listen` is the armed one (disarms it).
    pub(super) fn take_subject_map(listen: Option<&XdsListen>) -> bool {
        take_armed(SUBJECTS, listen)
    }

    fn take_armed(which: usize, listen: Option<&XdsListen>) -> bool {
        let Some(listen) = listen else { return false };
        let mut armed = ARMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = armed[which].len();
        armed[which].retain(|l| l != listen);
        armed[which].len() != before
    }
}

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
    /// The latest revision pushed: once Envoy accepted its class config, it decides at that
    /// revision, whichever subject map it holds ([`ClassTags`]).
    aim: Mutex<u64>,
    /// How long Envoy took to accept the last subject map it accepted, from its push: mostly
    /// Envoy building it ([`map_goes_at`]).
    map_build: Mutex<Duration>,
}

impl Shared {
    /// The revision about to be pushed.
    fn aim(&self, revision: u64) {
        *self
            .aim
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = revision;
    }

    /// How long Envoy took to build the last subject map it accepted.
    fn map_build(&self) -> Duration {
        *self
            .map_build
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

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

    /// Envoy's answer on `stream` to the push of `version`, `took` after it went out.
    async fn answer(
        &self,
        kind: Kind,
        stream: u64,
        version: u64,
        took: Duration,
        error: Option<(i32, &str)>,
    ) {
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
                metrics.xds_acked();
                if kind == Kind::Subjects {
                    *self
                        .map_build
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = took;
                }
                tracing::debug!(
                    resource = kind.name(),
                    version,
                    "Envoy accepted an RBAC config"
                );
                let revision = *self
                    .aim
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if self.settled(Kind::Classes, revision) == Some(true) {
                    metrics.xds_enforced(revision);
                }
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

/// How long a changed subject map waits in all for the class streams' answers. Any pair of the
/// two configs decides exactly as the revision the class config names (see [`ClassTags`]; a tag
/// Envoy's class config does not know matches nothing), so the wait only spares ext_authz the
/// requests of the new tags; a stream that never answers (an Envoy stuck, any client of the xDS
/// socket) must not hold every later map back.
const CLASS_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// How long a changed subject map waits in all for a pause in the writes ([`map_goes_at`]).
/// Longer than [`CLASS_ANSWER_WAIT`]: a map pushed during a run of writes holds the run's next
/// write back by a whole build (what Envoy decides at), a map held back only sends the new tags'
/// requests to ext_authz (how fast they are decided) a while longer. Bounded so that writes that
/// never pause cannot keep those requests on ext_authz for good.
const PAUSE_WAIT: Duration = Duration::from_secs(10);

/// When a changed subject map, its class config answered, goes to Envoy: `None` now, or at the
/// instant returned unless a newer revision comes first. Envoy builds every config on its main
/// thread, one at a time, and a subject map with many own-rule subjects takes it a while (~0.1
/// ms a subject): a class config arriving meanwhile waits for that build. A revision
/// `published` less than a build (`build`, Envoy's last) after the one `before` is part of a
/// run of writes (a script, a sync) that would each reach Envoy a build late, so its map waits
/// until the writes pause for as long as a build, and no later than `deadline` ([`PAUSE_WAIT`]
/// after the run's first map began waiting). A write after a pause goes at once: its map is
/// built before a next write as far apart comes. Only the new tags' requests wait for the map
/// (they go to ext_authz meanwhile); what Envoy decides at is the class config's revision.
fn map_goes_at(
    published: Instant,
    before: Option<Instant>,
    build: Duration,
    deadline: Instant,
) -> Option<Instant> {
    let in_a_run = before.is_some_and(|before| published.saturating_duration_since(before) < build);
    in_a_run.then(|| (published + build).min(deadline))
}

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
            aim: Mutex::new(0),
            map_build: Mutex::new(Duration::ZERO),
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

/// Renders every published revision once, for every stream: the class config (which names the
/// revision) first, then, when the subject map changed, that map once every class stream
/// accepted the class config (within [`CLASS_ANSWER_WAIT`]) and, in a run of writes, once they
/// pause ([`map_goes_at`], within [`PAUSE_WAIT`]). Ends when the server drops the service.
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
    let mut last_subjects: Option<RbacFilter> = None;
    // Since when a changed subject map has been waiting: writes that each come before Envoy's
    // answer, or during the pause awaited, must not hold it back for longer than
    // CLASS_ANSWER_WAIT, PAUSE_WAIT in all.
    let mut map_waiting_since: Option<Instant> = None;
    // When the revision rendered before this one was published (as this loop saw it).
    let mut previous_at: Option<Instant> = None;
    loop {
        published.mark_unchanged();
        let published_at = Instant::now();
        let before = previous_at.replace(published_at);
        let current = live.current();
        let revision = current.snapshot.revision();
        let plan = current.snapshot.rbac_plan(&options);
        drop(current);
        let rendered = render(&plan, &shared.config, &mut tags);
        // A subject map Envoy rejected goes again, changed or not: Envoy holds an older one.
        let map_changed = last_subjects.as_ref() != Some(&rendered.subjects)
            || shared.answers().rejected[Kind::Subjects as usize];
        // Test support: this revision's class config is one Envoy rejects.
        let push = if fault::take(shared.config.xds_listen.as_ref()) {
            Push::new(RESOURCE_NAME, &unloadable(), revision)
        } else {
            Push::new(RESOURCE_NAME, &rendered.classes, revision)
        };
        tracing::info!(
            revision,
            subjects = plan.subjects.len(),
            deferred = plan.deferred.len(),
            bytes = push.resource.value.len(),
            compile_ms = published_at.elapsed().as_millis() as u64,
            "pushing the RBAC class config to Envoy"
        );
        shared.aim(revision);
        shared.state.metrics.xds_pushed(plan.subjects.len());
        shared.classes.send_replace(Some(Arc::new(push)));
        if !map_changed {
            map_waiting_since = None;
        } else {
            answered.mark_unchanged();
            let since = *map_waiting_since.get_or_insert_with(Instant::now);
            let deadline = since + CLASS_ANSWER_WAIT;
            let waited = loop {
                if let Some(accepted) = shared.settled(Kind::Classes, revision) {
                    break if accepted {
                        Waited::Accepted
                    } else {
                        Waited::Rejected
                    };
                }
                tokio::select! {
                    // A deadline passed during a run of writes wins over the next write.
                    biased;
                    _ = alive.closed() => break Waited::Closed,
                    _ = tokio::time::sleep_until(deadline) => break Waited::TimedOut,
                    _ = answered.changed() => {}
                    changed = published.changed() => break match changed {
                        Ok(()) => Waited::NewRevision,
                        Err(_) => Waited::Closed,
                    },
                }
            };
            match waited {
                Waited::Closed => return,
                // A newer revision: render that one instead (its map waits until the same
                // deadline).
                Waited::NewRevision => continue,
                // Envoy keeps the class config it had, which knows only tags of the subject
                // maps before this one.
                Waited::Rejected => map_waiting_since = None,
                Waited::Accepted | Waited::TimedOut => {
                    if matches!(waited, Waited::TimedOut) {
                        tracing::warn!(
                            revision,
                            "a class stream did not answer the class config in time; pushing the subject map anyway"
                        );
                    }
                    let build = shared.map_build();
                    if let Some(at) = map_goes_at(published_at, before, build, since + PAUSE_WAIT) {
                        tokio::select! {
                            biased;
                            _ = alive.closed() => return,
                            _ = tokio::time::sleep_until(at) => {}
                            // The run goes on: that revision's map waits for the pause instead.
                            changed = published.changed() => match changed {
                                Ok(()) => continue,
                                Err(_) => return,
                            },
                        }
                    }
                    let push = if fault::take_subject_map(shared.config.xds_listen.as_ref()) {
                        Push::new(SUBJECTS_RESOURCE, &unloadable(), revision)
                    } else {
                        Push::new(SUBJECTS_RESOURCE, &rendered.subjects, revision)
                    };
                    tracing::info!(
                        revision,
                        bytes = push.resource.value.len(),
                        compile_ms = published_at.elapsed().as_millis() as u64,
                        "pushing the RBAC subject map to Envoy"
                    );
                    shared.state.metrics.xds_pushed(plan.subjects.len());
                    shared.subjects.send_replace(Some(Arc::new(push)));
                    last_subjects = Some(rendered.subjects);
                    tags.map_pushed();
                    map_waiting_since = None;
                }
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
    // (nonce, version, when) of pushes not yet answered.
    let mut sent: Vec<(u64, u64, Instant)> = Vec::new();
    let mut send_now = true;
    loop {
        if send_now {
            let push = pushes.borrow_and_update().clone();
            if let Some(push) = push {
                nonce += 1;
                sent.push((nonce, push.version, Instant::now()));
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
                let answered = sent.iter().find(|(s, _, _)| *s == n).map(|(_, v, at)| (*v, at.elapsed()));
                sent.retain(|(s, _, _)| *s > n);
                if let Some((version, took)) = answered {
                    let error = request.error_detail.as_ref().map(|e| (e.code, e.message.as_str()));
                    shared.answer(kind, id, version, took, error).await;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::envoy_rbac::PlannedSubject;

    /// A map goes at once after a pause (or the first write), waits in a run of writes closer
    /// together than a build, and never past the deadline.
    #[test]
    fn a_subject_map_waits_only_in_a_run_of_writes() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let far = t + ms(60_000);
        let build = ms(300);
        assert_eq!(map_goes_at(t, None, build, far), None);
        assert_eq!(map_goes_at(t + ms(300), Some(t), build, far), None);
        assert_eq!(map_goes_at(t + ms(1000), Some(t), build, far), None);
        assert_eq!(
            map_goes_at(t + ms(100), Some(t), build, far),
            Some(t + ms(400))
        );
        assert_eq!(
            map_goes_at(t + ms(100), Some(t), build, t + ms(250)),
            Some(t + ms(250))
        );
        // Before any map was built (nothing measured), nothing waits.
        assert_eq!(map_goes_at(t + ms(1), Some(t), Duration::ZERO, far), None);
    }

    /// The action name an `on_match` ends in, and (for a class entry) its `(method, regex)`
    /// pairs; `defer` left out.
    fn walk(on_match: &OnMatch, method: Option<&str>, out: &mut Vec<(String, String, String)>) {
        match on_match.on_match.as_ref().expect("on_match") {
            on_match::OnMatch::Action(a) => {
                if a.name != DEFER_ACTION {
                    out.push((a.name.clone(), method.unwrap_or("").into(), String::new()));
                }
            }
            on_match::OnMatch::Matcher(m) => walk_matcher(m, method, out),
        }
    }

    fn walk_matcher(m: &Matcher, method: Option<&str>, out: &mut Vec<(String, String, String)>) {
        match m.matcher_type.as_ref().expect("type") {
            MatcherType::MatcherTree(t) => {
                let Some(TreeType::ExactMatchMap(map)) = &t.tree_type else {
                    panic!("an exact map")
                };
                for (key, on_match) in &map.map {
                    walk(on_match, Some(key), out);
                }
            }
            MatcherType::MatcherList(l) => {
                for f in &l.matchers {
                    let mut inner = Vec::new();
                    walk(f.on_match.as_ref().expect("on_match"), method, &mut inner);
                    let regex = match &f.predicate.as_ref().and_then(|p| p.match_type.clone()) {
                        Some(MatchType::SinglePredicate(SinglePredicate {
                            matcher:
                                Some(single_predicate::Matcher::ValueMatch(StringMatcher {
                                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(r)),
                                    ..
                                })),
                            ..
                        })) => r.regex.clone(),
                        _ => String::new(),
                    };
                    out.extend(inner.into_iter().map(|(a, m, _)| (a, m, regex.clone())));
                }
            }
        }
    }

    /// The class config: tag -> (the revision it names, `(method, regex)` pairs allowed).
    fn class_entries(
        filter: &RbacFilter,
    ) -> BTreeMap<String, (String, BTreeSet<(String, String)>)> {
        let Some(root) = filter.shadow_matcher.as_ref() else {
            return BTreeMap::new();
        };
        let Some(MatcherType::MatcherTree(t)) = &root.matcher_type else {
            panic!("the tag map")
        };
        let Some(TreeType::ExactMatchMap(map)) = &t.tree_type else {
            panic!("an exact map")
        };
        map.map
            .iter()
            .map(|(tag, on_match)| {
                let mut out = Vec::new();
                walk(on_match, None, &mut out);
                let labels: BTreeSet<&String> = out.iter().map(|(a, _, _)| a).collect();
                assert_eq!(labels.len(), 1, "{tag}: one revision per tag: {labels:?}");
                let label = labels.into_iter().next().unwrap().clone();
                let allowed = out.into_iter().map(|(_, m, r)| (m, r)).collect();
                (tag.clone(), (label, allowed))
            })
            .collect()
    }

    /// `(method, regex)` pairs a class allows.
    type Allowed = BTreeSet<(String, String)>;
    /// A subject's entry: its class tag, and `(own regex, own tag)` pairs.
    type SubjectEntry = (Option<String>, Vec<(String, String)>);

    /// The subject map: subject -> its entry.
    fn subject_entries(filter: &RbacFilter) -> BTreeMap<String, SubjectEntry> {
        let mut out: BTreeMap<String, SubjectEntry> = BTreeMap::new();
        let Some(root) = &filter.shadow_matcher else {
            return out;
        };
        let mut maps = Vec::new();
        match root.matcher_type.as_ref().unwrap() {
            MatcherType::MatcherTree(t) => maps.push((false, t.clone())),
            MatcherType::MatcherList(l) => {
                let Some(on_match::OnMatch::Matcher(own)) =
                    &l.matchers[0].on_match.as_ref().unwrap().on_match
                else {
                    panic!("the own map")
                };
                let Some(MatcherType::MatcherTree(t)) = &own.matcher_type else {
                    panic!()
                };
                maps.push((true, t.clone()));
                if let Some(no_match) = &root.on_no_match {
                    let Some(on_match::OnMatch::Matcher(c)) = &no_match.on_match else {
                        panic!()
                    };
                    let Some(MatcherType::MatcherTree(t)) = &c.matcher_type else {
                        panic!()
                    };
                    maps.push((false, t.clone()));
                }
            }
        }
        for (own, tree) in maps {
            let Some(TreeType::ExactMatchMap(map)) = tree.tree_type else {
                panic!()
            };
            for (subject, on_match) in map.map {
                let mut found = Vec::new();
                walk(&on_match, None, &mut found);
                let entry = out.entry(subject).or_default();
                if own {
                    entry.1 = found
                        .into_iter()
                        .map(|(tag, _, regex)| (regex, tag))
                        .collect();
                } else {
                    entry.0 = Some(found.remove(0).0);
                }
            }
        }
        out
    }

    fn paths(i: u64) -> MethodPaths {
        let mut p = MethodPaths::default();
        p.0[(i % 3) as usize] = Some(format!("^/p{i}$"));
        p
    }

    /// A plan of `ids` with the classes and own rules `pick` chooses (None: not a subject).
    fn plan(revision: u64, ids: &[&str], pick: &mut impl FnMut() -> u64) -> RbacPlan {
        let subjects = ids
            .iter()
            .filter_map(|id| {
                let class = pick() % 4;
                let own = pick() % 3;
                if class == 3 && own == 2 {
                    return None;
                }
                Some(PlannedSubject {
                    id: (*id).into(),
                    // A fresh pointer each time: classes are shared by value.
                    allows: Arc::new(if class == 3 {
                        MethodPaths::default()
                    } else {
                        paths(class)
                    }),
                    own: match own {
                        2 => Vec::new(),
                        n => vec![OwnPath {
                            methods: 1 + n as u32,
                            regex: format!("^/own/{id}/{n}$"),
                        }],
                    },
                })
            })
            .collect();
        RbacPlan {
            revision,
            subjects,
            deferred: Vec::new(),
        }
    }

    /// Whatever subject map and class config Envoy holds together (any two revisions, in any
    /// order: pushes may land in any order on two streams), a tag the map yields for a subject
    /// that the class config knows allows exactly what that subject was allowed at the revision
    /// the class config names for it.
    #[test]
    fn any_subject_map_with_any_class_config_decides_as_the_revision_it_names() {
        let ids = ["a", "b", "c", "d", "e"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut pick = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut tags = ClassTags::new();
        let config = EnvoyConfig::default();
        let mut plans: BTreeMap<u64, RbacPlan> = BTreeMap::new();
        let mut rendered = Vec::new();
        for revision in 1..=120u64 {
            // Often the same subjects again, so that tags are kept as well as retired.
            let plan = if revision > 1 && pick() % 3 == 0 {
                let mut same = plans.get(&(revision - 1)).cloned().unwrap_or_default();
                same.revision = revision;
                // Sometimes the same subjects in the same classes, each class's paths changed.
                if pick() % 2 == 0 {
                    for s in &mut same.subjects {
                        let mut changed = (*s.allows).clone();
                        for regex in changed.0.iter_mut().flatten() {
                            regex.push_str(&format!("|^/r{revision}$"));
                        }
                        s.allows = Arc::new(changed);
                    }
                }
                same
            } else {
                plan(revision, &ids, &mut pick)
            };
            let r = render(&plan, &config, &mut tags);
            // Some maps are pushed, some wait or are skipped: the tags of the last one pushed
            // stay while coherent.
            if pick() % 2 == 0 {
                tags.map_pushed();
            }
            rendered.push((subject_entries(&r.subjects), class_entries(&r.classes)));
            plans.insert(revision, plan);
        }
        let allowed_at = |label: &str, id: &str| -> Option<(Allowed, Vec<String>)> {
            let plan = &plans[&label.parse::<u64>().expect("a revision")];
            let s = plan.subjects.iter().find(|s| &*s.id == id)?;
            let class = s
                .allows
                .iter()
                .map(|(m, r)| (m.as_str().to_owned(), r.to_owned()))
                .collect();
            Some((class, s.own.iter().map(|o| o.regex.clone()).collect()))
        };
        // Each class config names one revision, its own: Envoy decides at it as soon as it
        // holds it, whatever subject map it holds.
        for (y, (_, classes)) in rendered.iter().enumerate() {
            let revision = (y + 1).to_string();
            assert!(
                classes.values().all(|(label, _)| *label == revision),
                "class config {y}"
            );
        }
        let (mut checked, mut kept) = (0, 0);
        for (x, (subjects, _)) in rendered.iter().enumerate() {
            for (y, (_, classes)) in rendered.iter().enumerate() {
                for (id, (class, own)) in subjects {
                    if let Some((label, allowed)) = class.as_ref().and_then(|t| classes.get(t)) {
                        let (then, _) = allowed_at(label, id).unwrap_or_else(|| {
                            panic!("{id} unknown at {label} (map {x}, classes {y})")
                        });
                        assert_eq!(&then, allowed, "{id} at {label} (map {x}, classes {y})");
                        checked += 1;
                        kept += usize::from(x != y);
                    }
                    for (regex, tag) in own {
                        if let Some((label, allowed)) = classes.get(tag) {
                            let (_, then) = allowed_at(label, id)
                                .unwrap_or_else(|| panic!("{id} unknown at {label}"));
                            let own_then: Vec<String> =
                                own.iter().map(|(r, _)| r.clone()).collect();
                            assert_eq!(then, own_then, "{id}'s own rules at {label}");
                            let methods: u32 = allowed
                                .iter()
                                .map(|(m, _)| {
                                    Method::ALL.iter().find(|x| x.as_str() == m).unwrap().bit()
                                })
                                .sum();
                            let plan = &plans[&label.parse::<u64>().unwrap()];
                            let s = plan.subjects.iter().find(|s| &*s.id == id).unwrap();
                            assert!(
                                s.own
                                    .iter()
                                    .any(|o| &o.regex == regex && o.methods == methods),
                                "{id} {regex} at {label}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        // Not vacuous: many lookups across different revisions found their tag.
        assert!(
            checked > 1000 && kept > 500,
            "{checked} checked, {kept} across revisions"
        );
    }

    /// A write that changes no subject's class or own rules leaves the subject map as it was
    /// (only the class config, naming the new revision, is pushed), and so does one that changes
    /// a class's paths alone; one that adds a subject to a class gives that class a new tag and
    /// keeps the old one, allowing what its subjects are allowed now, for the map Envoy still
    /// holds, until one of them leaves the class.
    #[test]
    fn a_class_keeps_its_tag_until_its_subjects_change() {
        let subject = |id: &str, class: u64| PlannedSubject {
            id: id.into(),
            allows: Arc::new(paths(class)),
            own: Vec::new(),
        };
        let config = EnvoyConfig::default();
        let mut tags = ClassTags::new();
        let at = |revision, subjects| RbacPlan {
            revision,
            subjects,
            deferred: Vec::new(),
        };
        let first = render(
            &at(1, vec![subject("a", 0), subject("b", 1)]),
            &config,
            &mut tags,
        );
        let same = render(
            &at(2, vec![subject("a", 0), subject("b", 1)]),
            &config,
            &mut tags,
        );
        assert_eq!(first.subjects, same.subjects);
        let (before, after) = (class_entries(&first.classes), class_entries(&same.classes));
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        assert!(after.values().all(|(label, _)| label == "2"), "{after:?}");

        // b's class allows other paths: same tag, same map, the new paths.
        let widened = render(
            &at(3, vec![subject("a", 0), subject("b", 4)]),
            &config,
            &mut tags,
        );
        assert_eq!(widened.subjects, same.subjects);
        let classes = class_entries(&widened.classes);
        let old = subject_entries(&same.subjects);
        let b_tag = old["b"].0.as_ref().unwrap();
        let expected: Allowed = paths(4)
            .iter()
            .map(|(m, r)| (m.as_str().to_owned(), r.to_owned()))
            .collect();
        assert_eq!(classes[b_tag], ("3".to_owned(), expected));

        let added = render(
            &at(4, vec![subject("a", 0), subject("b", 4), subject("c", 0)]),
            &config,
            &mut tags,
        );
        let map = subject_entries(&added.subjects);
        let classes = class_entries(&added.classes);
        assert_ne!(
            map["a"].0, old["a"].0,
            "a's class has a new subject: a new tag"
        );
        assert_eq!(map["b"].0, old["b"].0, "b's class did not change");
        assert_eq!(classes[map["a"].0.as_ref().unwrap()].0, "4");
        assert_eq!(
            classes[old["a"].0.as_ref().unwrap()].0,
            "4",
            "the old tag: a is still in that class, so it decides at this revision"
        );
        assert_eq!(classes.len(), 3);

        // a moves to b's class: a's last tag (a and c) no longer stands for one class, and is
        // left out (ext_authz decides for the map Envoy may still hold); the tag before it
        // retired a revision ago.
        let moved = render(
            &at(5, vec![subject("a", 4), subject("b", 4), subject("c", 0)]),
            &config,
            &mut tags,
        );
        let classes = class_entries(&moved.classes);
        assert!(!classes.contains_key(map["a"].0.as_ref().unwrap()));
        assert!(!classes.contains_key(old["a"].0.as_ref().unwrap()));
        // b's tag (b alone) retires too, but b still has its class: kept, at this revision.
        assert_eq!(classes[b_tag].0, "5");
        let now = subject_entries(&moved.subjects);
        assert_eq!(now["a"].0, now["b"].0);
        assert_eq!(classes.len(), 3, "{classes:?}");

        // A subject removed: every tag it had is left out.
        let removed = render(
            &at(6, vec![subject("b", 4), subject("c", 0)]),
            &config,
            &mut tags,
        );
        let classes = class_entries(&removed.classes);
        assert!(!classes.contains_key(now["a"].0.as_ref().unwrap()));
    }

    /// Envoy may hold the last subject map pushed while later revisions' maps wait or are
    /// skipped: its tags stay in every later class config while their subjects still share one
    /// class, and a class whose subjects are those of one of its tags again gets that tag back.
    #[test]
    fn the_tags_of_the_last_map_pushed_stay_while_coherent() {
        let config = EnvoyConfig::default();
        let mut tags = ClassTags::new();
        let at = |tags: &mut ClassTags, revision, classes: &[(&str, u64)]| {
            let subjects = classes
                .iter()
                .map(|(id, class)| PlannedSubject {
                    id: (*id).into(),
                    allows: Arc::new(paths(*class)),
                    own: Vec::new(),
                })
                .collect();
            let plan = RbacPlan {
                revision,
                subjects,
                deferred: Vec::new(),
            };
            render(&plan, &config, tags)
        };
        let first = at(&mut tags, 1, &[("a", 0), ("b", 0)]);
        let held = subject_entries(&first.subjects)["a"].0.clone().unwrap();
        tags.map_pushed();
        // Two revisions whose maps are not pushed: a and b still share class 0.
        at(&mut tags, 2, &[("a", 0), ("b", 0), ("c", 0)]);
        let third = at(&mut tags, 3, &[("a", 0), ("b", 0), ("c", 0), ("d", 0)]);
        let expected: Allowed = paths(0)
            .iter()
            .map(|(m, r)| (m.as_str().to_owned(), r.to_owned()))
            .collect();
        assert_eq!(
            class_entries(&third.classes).get(&held),
            Some(&("3".to_owned(), expected))
        );
        // a and b together again: the tag of the map Envoy holds, and that very map.
        let again = at(&mut tags, 4, &[("a", 0), ("b", 0)]);
        assert_eq!(again.subjects, first.subjects);
        // a moves: the tag no longer stands for one class.
        let moved = at(&mut tags, 5, &[("a", 1), ("b", 0)]);
        assert!(!class_entries(&moved.classes).contains_key(&held));
    }
}
