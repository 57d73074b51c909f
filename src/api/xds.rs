//! The xDS server for Envoy's RBAC filter (ECDS, `envoy.service.extension.v3`): each published
//! snapshot, compiled by [`Snapshot::rbac_plan`](crate::engine::Snapshot::rbac_plan), rendered
//! as an `envoy.extensions.filters.http.rbac.v3.RBAC` with a `shadow_matcher` only, and pushed
//! as the resource [`RESOURCE_NAME`] at `version_info` = the policy revision.
//! docs/xds-rbac.md has the design.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
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
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::authz::AppState;
use crate::config::{EnvoyConfig, SubjectSource};
use crate::engine::envoy_rbac::{MethodPaths, RbacOptions, RbacPlan, SubjectInput, path_guards};
use crate::model::Method;

/// The ECDS resource name: the listener's RBAC filter names it in `config_discovery`.
pub const RESOURCE_NAME: &str = "authz.rbac";
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

fn regex_predicate(input: TypedExtensionConfig, regex: &str) -> Predicate {
    Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(input),
            matcher: Some(single_predicate::Matcher::ValueMatch(StringMatcher {
                ignore_case: false,
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                    regex: regex.into(),
                    engine_type: Some(regex_matcher::EngineType::GoogleRe2(
                        regex_matcher::GoogleRe2 {},
                    )),
                })),
            })),
        })),
    }
}

fn tree(input: TypedExtensionConfig, map: HashMap<String, OnMatch>) -> Matcher {
    Matcher {
        on_no_match: defer(),
        matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
            input: Some(input),
            tree_type: Some(TreeType::ExactMatchMap(MatchMap { map })),
        })),
    }
}

fn list(matchers: Vec<FieldMatcher>) -> Matcher {
    Matcher {
        on_no_match: defer(),
        matcher_type: Some(MatcherType::MatcherList(MatcherList { matchers })),
    }
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

/// Subjects whose compiled entry is shared (same roles and type): one class.
struct Class<'a> {
    paths: &'a MethodPaths,
    members: Vec<&'a str>,
}

/// The subjects of a plan by class, larger classes first (ties in plan order, so a render is
/// reproducible).
fn classes(plan: &RbacPlan) -> Vec<Class<'_>> {
    let mut index: HashMap<*const MethodPaths, usize> = HashMap::new();
    let mut classes: Vec<Class<'_>> = Vec::new();
    for subject in &plan.subjects {
        let at = *index
            .entry(Arc::as_ptr(&subject.allows))
            .or_insert_with(|| {
                classes.push(Class {
                    paths: &subject.allows,
                    members: Vec::new(),
                });
                classes.len() - 1
            });
        classes[at].members.push(&subject.id);
    }
    classes.sort_by_key(|c| std::cmp::Reverse(c.members.len()));
    classes
}

/// An `exact_match_map` on the subject with no `on_no_match`: a subject missing from it makes
/// the entry of the list holding it not match, and Envoy goes on with the next entry.
fn members_map(input: &TypedExtensionConfig, ids: &[&str], on_match: &OnMatch) -> Matcher {
    Matcher {
        on_no_match: None,
        matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
            input: Some(input.clone()),
            tree_type: Some(TreeType::ExactMatchMap(MatchMap {
                map: ids
                    .iter()
                    .map(|id| ((*id).to_owned(), on_match.clone()))
                    .collect(),
            })),
        })),
    }
}

/// For each method, the matcher deciding it: each class of two or more subjects is one entry,
/// its path regex then its members (so Envoy compiles each class's regex once, however many
/// members it has); a request whose path matches an entry but whose subject is not among its
/// members goes on to the next entry. Subjects alone in their class (own `{user}` rules) come
/// last, looked up by subject first, each with its own regex.
fn method_matchers(plan: &RbacPlan, input: &TypedExtensionConfig, allow: &OnMatch) -> Matcher {
    let mut shared: Vec<Vec<FieldMatcher>> = vec![Vec::new(); Method::ALL.len()];
    let mut alone: Vec<HashMap<String, OnMatch>> = vec![HashMap::new(); Method::ALL.len()];
    for class in classes(plan) {
        for (method, regex) in class.paths.iter() {
            if let [id] = class.members[..] {
                let check = list(vec![FieldMatcher {
                    predicate: Some(regex_predicate(header_input(":path"), regex)),
                    on_match: Some(allow.clone()),
                }]);
                alone[method.index()].insert(id.to_owned(), nested(check));
            } else {
                shared[method.index()].push(FieldMatcher {
                    predicate: Some(regex_predicate(header_input(":path"), regex)),
                    on_match: Some(nested(members_map(input, &class.members, allow))),
                });
            }
        }
    }
    let mut methods = HashMap::new();
    for ((method, entries), alone) in Method::ALL.into_iter().zip(shared).zip(alone) {
        // Envoy refuses an empty map or list: what is empty is left out.
        let last = if alone.is_empty() {
            None
        } else {
            Some(tree(input.clone(), alone))
        };
        let matcher = match (entries.is_empty(), last) {
            (true, None) => continue,
            (true, Some(last)) => last,
            (false, last) => Matcher {
                on_no_match: Some(Box::new(
                    last.map_or_else(|| action(DEFER_ACTION, RbacVerdict::Deny), nested),
                )),
                matcher_type: Some(MatcherType::MatcherList(MatcherList { matchers: entries })),
            },
        };
        methods.insert(method.as_str().to_owned(), nested(matcher));
    }
    tree(header_input(":method"), methods)
}

/// The RBAC filter config of a plan: a classifier (`shadow_matcher` only) whose verdict is
/// `allowed` exactly for the requests the plan allows. Pure.
pub fn render(plan: &RbacPlan, config: &EnvoyConfig) -> RbacFilter {
    let allow = action(&plan.revision.to_string(), RbacVerdict::Allow);
    let guards = path_guards()
        .iter()
        .map(|g| regex_predicate(header_input(":path"), g))
        .collect();
    // Envoy refuses an empty map: with no subject compiled, the guards lead to `defer` too.
    let on_match = if plan.subjects.is_empty() {
        action(DEFER_ACTION, RbacVerdict::Deny)
    } else {
        nested(method_matchers(plan, &subject_input_config(config), &allow))
    };
    let root = list(vec![FieldMatcher {
        predicate: Some(Predicate {
            match_type: Some(MatchType::AndMatcher(PredicateList { predicate: guards })),
        }),
        on_match: Some(on_match),
    }]);
    RbacFilter {
        rules: None,
        rules_stat_prefix: String::new(),
        matcher: None,
        shadow_rules: None,
        shadow_matcher: Some(root),
        shadow_rules_stat_prefix: String::new(),
        track_per_rule_stats: false,
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

    /// The next push of the xDS server on `listen` carries a config Envoy cannot load (an
    /// invalid regex); the pushes after it are the real ones again.
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

/// The ECDS response carrying `filter` at `revision`.
fn response(filter: &RbacFilter, revision: u64, nonce: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: revision.to_string(),
        resources: vec![any(&EnvoyTypedExtensionConfig {
            name: RESOURCE_NAME.into(),
            typed_config: Some(any(filter)),
        })],
        type_url: TYPED_EXTENSION_CONFIG.into(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// Serves the RBAC config over ECDS.
#[derive(Clone)]
pub struct XdsService {
    state: Arc<AppState>,
    config: Arc<EnvoyConfig>,
    health: HealthReporter,
}

impl XdsService {
    /// A service over the sidecar's state.
    pub fn new(state: Arc<AppState>, config: EnvoyConfig, health: HealthReporter) -> XdsService {
        XdsService {
            state,
            config: Arc::new(config),
            health,
        }
    }

    /// The tonic server for it.
    pub fn server(self) -> ExtensionConfigDiscoveryServiceServer<XdsService> {
        ExtensionConfigDiscoveryServiceServer::new(self)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(4 * 1024 * 1024)
    }

    /// One stream: pushes the current config, then every new revision; reads ACKs and NACKs.
    async fn run(
        self,
        mut requests: Streaming<DiscoveryRequest>,
        out: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let live = loop {
            match self.state.live() {
                Ok(live) => break Arc::clone(live),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut published = live.subscribe_published();
        let options = RbacOptions {
            input: subject_input(&self.config),
            max_subjects: self.config.xds_max_subjects,
        };
        let metrics = Arc::clone(&self.state.metrics);
        let mut nonce = 0u64;
        // (nonce, revision) of pushes not yet answered.
        let mut sent: Vec<(u64, u64)> = Vec::new();
        let mut pushed_revision = None;
        let mut subscribed = false;
        loop {
            let mut push = false;
            let mut force = false;
            tokio::select! {
                request = requests.message() => {
                    let request = match request {
                        Ok(Some(r)) => r,
                        Ok(None) | Err(_) => return,
                    };
                    if request.response_nonce.is_empty() {
                        subscribed = true;
                        push = true;
                        force = true;
                    } else if let Ok(n) = request.response_nonce.parse::<u64>() {
                        let revision = sent.iter().find(|(s, _)| *s == n).map(|(_, r)| *r);
                        sent.retain(|(s, _)| *s > n);
                        match (&request.error_detail, revision) {
                            (Some(error), Some(revision)) => {
                                metrics.xds_nacked();
                                tracing::error!(revision, code = error.code, message = %error.message,
                                    "Envoy rejected the RBAC config; it keeps its last good one");
                                self.health
                                    .set_service_status(HEALTH_SERVICE, ServingStatus::NotServing)
                                    .await;
                            }
                            (None, Some(revision)) => {
                                metrics.xds_acked(revision);
                                tracing::debug!(revision, "Envoy accepted the RBAC config");
                                self.health
                                    .set_service_status(HEALTH_SERVICE, ServingStatus::Serving)
                                    .await;
                            }
                            _ => {}
                        }
                    }
                }
                changed = published.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    push = subscribed;
                }
            }
            if !push {
                continue;
            }
            let current = live.current();
            let revision = current.snapshot.revision();
            if !force && pushed_revision == Some(revision) {
                continue;
            }
            let started = std::time::Instant::now();
            let plan = current.snapshot.rbac_plan(&options);
            drop(current);
            let filter = if fault::take(self.config.xds_listen.as_ref()) {
                unloadable()
            } else {
                render(&plan, &self.config)
            };
            nonce += 1;
            let message = response(&filter, revision, nonce);
            tracing::info!(
                revision,
                subjects = plan.subjects.len(),
                deferred = plan.deferred.len(),
                bytes = message.encoded_len(),
                compile_ms = started.elapsed().as_millis() as u64,
                "pushing the RBAC config to Envoy"
            );
            metrics.xds_pushed(plan.subjects.len());
            sent.push((nonce, revision));
            pushed_revision = Some(revision);
            if out.send(Ok(message)).await.is_err() {
                return;
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
        tokio::spawn(self.clone().run(request.into_inner(), tx));
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
