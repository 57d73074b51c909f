//! Fleet mode: etcd is the shared source of truth of every sidecar; decisions stay local.
//!
//! Every sidecar loads the prefix, then watches it from that revision and mirrors each etcd
//! revision into its local sled store as one transaction, recompiling the snapshot
//! incrementally (`live::MirrorSink::apply`). The policy revision a sidecar reports is the
//! etcd revision it has applied. Admin writes go to etcd in one transaction guarded by the
//! keys' mod revisions (`EtcdWriter`, the live policy's writer), and answer once the local
//! mirror applied them. With etcd unreachable a sidecar serves its last mirrored state (also
//! across a restart: it starts from sled), and resumes the watch from the next revision when
//! etcd comes back, or reloads the prefix when that revision was compacted away.
//!
//! Key layout under the prefix (values are JSON):
//!
//! | key | value |
//! | --- | --- |
//! | `policy` | version, catalog, presets |
//! | `roles/NAME` | a role |
//! | `subjects/ID` | a subject |
//! | `admins/NAME` | an admin |
//! | `audit` | who made the change of this revision (`actor`, `action`, `target`) |

pub mod etcd;
mod mirror;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use etcd::EtcdClient;
pub use mirror::{Mirror, watch_staleness};
pub use writer::EtcdWriter;

use crate::live::{LivePolicy, MirrorError, MirrorSink};
use crate::model::{self, Admin, Policy, Role, Subject};
use crate::store::{MirrorOrigin, MirrorStore, Mirrored, PolicyHead};
use etcd::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use etcd::pb::mvccpb::KeyValue;

/// Default key prefix (the default of `--etcd-prefix`).
pub use crate::config::DEFAULT_ETCD_PREFIX as DEFAULT_PREFIX;
/// How long an admin write waits for the local mirror to apply its own revision.
pub const APPLY_WAIT: Duration = Duration::from_secs(10);

/// How to reach etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// Key prefix holding the policy.
    pub prefix: String,
    /// User name and password (etcd auth).
    pub credentials: Option<(String, String)>,
    /// CA (PEM) for `https` endpoints.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM) for mTLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password or key material.
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("tls_ca", &self.ca_pem.is_some())
            .field("tls_client_cert", &self.client_identity.is_some())
            .finish()
    }
}

/// Fleet mode settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// etcd connection.
    pub etcd: EtcdConfig,
    /// Staleness beyond which health reports NOT_SERVING; `None` = stay SERVING on stale data.
    pub max_staleness: Option<Duration>,
    /// How long a Check waits for its `min_revision` before UNAVAILABLE.
    pub min_revision_wait: Duration,
}

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// An etcd endpoint URL is unusable.
    #[error("etcd endpoint `{url}`: {source}")]
    Endpoint {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        source: tonic::transport::Error,
    },
    /// The TLS settings of an `https` endpoint are unusable.
    #[error("etcd TLS for `{url}`: {source}")]
    Tls {
        /// The URL as given.
        url: String,
        /// Why they are refused.
        source: tonic::transport::Error,
    },
    /// etcd cannot be reached.
    #[error("etcd unavailable: {}", .0.message())]
    Unavailable(#[source] tonic::Status),
    /// The watch stream ended without an error.
    #[error("etcd unavailable: watch stream ended")]
    WatchEnded,
    /// etcd refused a call.
    #[error("etcd: {:?}: {}", .0.code(), .0.message())]
    Refused(#[source] tonic::Status),
    /// A transaction holds more operations than etcd's `--max-txn-ops`.
    #[error(
        "etcd: {:?}: {}: the policy needs more operations than etcd allows in one transaction; raise etcd's --max-txn-ops",
        .0.code(),
        .0.message()
    )]
    TooManyOps(#[source] tonic::Status),
    /// etcd canceled the watch.
    #[error("etcd: watch canceled: {0}")]
    WatchCanceled(String),
    /// The auth token etcd returned cannot be sent as metadata.
    #[error("etcd: etcd returned a malformed auth token")]
    MalformedToken(#[source] tonic::metadata::errors::InvalidMetadataValue),
    /// The watch request could not be sent.
    #[error("etcd: watch request channel closed")]
    WatchClosed,
    /// A blocking task of the mirror ended without an answer (it panicked or was cancelled).
    #[error("fleet task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A stored value does not decode.
    #[error("etcd key {key} does not decode: {source}")]
    Corrupt {
        /// The key.
        key: String,
        /// What the decoder found.
        source: serde_json::Error,
    },
    /// The prefix holds no policy yet.
    #[error(
        "etcd prefix `{0}` holds no policy; seed it with `authz-sidecar import --source etcd FILE`"
    )]
    NoPolicy(String),
    /// The policy under the prefix does not validate.
    #[error("{0}")]
    Mirror(#[from] MirrorError),
    /// The policy under the prefix changed while an import was being prepared.
    #[error("the policy in etcd changed during the import; run it again")]
    Raced,
}

/// etcd's `ErrGRPCTooManyOps` (`api/v3rpc/rpctypes`): etcd tells its `InvalidArgument` errors
/// apart only by these fixed messages, and its own client maps them back to typed errors the
/// same way, here, once, at the wire.
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

impl FleetError {
    /// Classifies a gRPC status from etcd.
    pub fn from_status(status: tonic::Status) -> FleetError {
        use tonic::Code;
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                FleetError::Unavailable(status)
            }
            Code::InvalidArgument if status.message() == TOO_MANY_OPS => {
                FleetError::TooManyOps(status)
            }
            _ => FleetError::Refused(status),
        }
    }
}

/// Where each entity lives under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// What a key under the prefix holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// An entity change (the value decoded, or a deletion).
    Entity(Mirrored),
    /// Who made this revision's change.
    Audit(AuditNote),
    /// A key this version does not know (ignored).
    Unknown,
}

/// The `audit` key: who made the change of the revision it was written in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditNote {
    /// Admin name or tool.
    pub actor: String,
    /// RPC name or `import`.
    pub action: String,
    /// What changed.
    pub target: String,
}

use crate::model::to_json_bytes as to_json;

impl Layout {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    /// The `policy` key.
    pub fn head(&self) -> Vec<u8> {
        self.key("policy")
    }

    /// The `audit` key.
    pub fn audit(&self) -> Vec<u8> {
        self.key("audit")
    }

    /// A role's key.
    pub fn role(&self, name: &str) -> Vec<u8> {
        self.key(&format!("roles/{name}"))
    }

    /// A subject's key.
    pub fn subject(&self, id: &str) -> Vec<u8> {
        self.key(&format!("subjects/{id}"))
    }

    /// An admin's key.
    pub fn admin(&self, name: &str) -> Vec<u8> {
        self.key(&format!("admins/{name}"))
    }

    /// Decodes a key and its value (`None` for a deletion).
    pub fn decode(&self, key: &[u8], value: Option<&[u8]>) -> Result<Entry, FleetError> {
        let text = String::from_utf8_lossy(key);
        let Some(rest) = text.strip_prefix(self.prefix.as_str()) else {
            return Ok(Entry::Unknown);
        };
        fn parse<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, FleetError> {
            serde_json::from_slice(v).map_err(|source| FleetError::Corrupt {
                key: key.to_owned(),
                source,
            })
        }
        let entity = match (rest, value) {
            ("policy", Some(v)) => Mirrored::Head(parse(&text, v)?),
            ("policy", None) => {
                return Err(FleetError::NoPolicy(self.prefix.clone()));
            }
            ("audit", Some(v)) => return Ok(Entry::Audit(parse(&text, v)?)),
            ("audit", None) => return Ok(Entry::Unknown),
            _ => match (rest.split_once('/'), value) {
                (Some(("roles", _)), Some(v)) => Mirrored::PutRole(parse::<Role>(&text, v)?),
                (Some(("roles", name)), None) => Mirrored::DeleteRole(name.to_owned()),
                (Some(("subjects", _)), Some(v)) => {
                    Mirrored::PutSubject(parse::<Subject>(&text, v)?)
                }
                (Some(("subjects", id)), None) => Mirrored::DeleteSubject(id.to_owned()),
                (Some(("admins", _)), Some(v)) => Mirrored::PutAdmin(parse::<Admin>(&text, v)?),
                (Some(("admins", name)), None) => Mirrored::DeleteAdmin(name.to_owned()),
                _ => return Ok(Entry::Unknown),
            },
        };
        Ok(Entry::Entity(entity))
    }

    /// Rebuilds the whole policy from a full read of the prefix.
    pub fn policy_from(&self, kvs: &[KeyValue]) -> Result<Policy, FleetError> {
        let mut head: Option<PolicyHead> = None;
        let mut policy = Policy::default();
        for kv in kvs {
            match self.decode(&kv.key, Some(&kv.value))? {
                Entry::Entity(Mirrored::Head(h)) => head = Some(h),
                Entry::Entity(Mirrored::PutRole(r)) => policy.roles.push(r),
                Entry::Entity(Mirrored::PutSubject(s)) => policy.subjects.push(s),
                Entry::Entity(Mirrored::PutAdmin(a)) => policy.admins.push(a),
                _ => {}
            }
        }
        let head = head.ok_or_else(|| FleetError::NoPolicy(self.prefix.clone()))?;
        policy.version = head.version;
        policy.catalog = head.catalog;
        policy.presets = head.presets;
        // etcd returns keys in byte order, which is the name order sled keeps too.
        Ok(policy)
    }

    /// Every key and value a policy is stored as.
    pub fn encode_policy(&self, policy: &Policy) -> Vec<(Vec<u8>, Vec<u8>)> {
        let head = PolicyHead {
            version: policy.version,
            catalog: policy.catalog.clone(),
            presets: policy.presets.clone(),
        };
        let mut kvs = vec![(self.head(), to_json(&head))];
        kvs.extend(
            policy
                .roles
                .iter()
                .map(|r| (self.role(&r.name), to_json(r))),
        );
        kvs.extend(
            policy
                .subjects
                .iter()
                .map(|s| (self.subject(&s.id), to_json(s))),
        );
        kvs.extend(
            policy
                .admins
                .iter()
                .map(|a| (self.admin(&a.name), to_json(a))),
        );
        kvs
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

fn delete(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

fn get(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key,
            ..Default::default()
        })),
    }
}

/// `mod_revision(key[..range_end]) < below`.
fn modified_before(key: Vec<u8>, range_end: Vec<u8>, below: u64) -> Compare {
    Compare {
        result: compare::CompareResult::Less as i32,
        target: compare::CompareTarget::Mod as i32,
        key,
        range_end,
        target_union: Some(compare::TargetUnion::ModRevision(below as i64)),
    }
}

/// `version(key) > 0`: the key exists.
fn exists(key: Vec<u8>) -> Compare {
    Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Version as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(compare::TargetUnion::Version(0)),
    }
}

/// Writes `policy` under the prefix as one etcd transaction: keys that are not in the policy
/// are deleted, changed ones put, and the transaction succeeds only if nothing under the
/// prefix changed since it was read. Returns the etcd revision of the import.
pub async fn import_policy(
    client: &EtcdClient,
    layout: &Layout,
    policy: &Policy,
    actor: &str,
) -> Result<u64, FleetError> {
    model::validate(policy).map_err(MirrorError::Invalid)?;
    let current = client.range_prefix(layout.prefix().as_bytes()).await?;
    let wanted = layout.encode_policy(policy);
    let wanted_keys: std::collections::HashSet<&[u8]> =
        wanted.iter().map(|(k, _)| k.as_slice()).collect();
    let existing: std::collections::HashMap<&[u8], &[u8]> = current
        .kvs
        .iter()
        .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
        .collect();
    let audit = layout.audit();
    let mut ops: Vec<RequestOp> = current
        .kvs
        .iter()
        .filter(|kv| !wanted_keys.contains(kv.key.as_slice()) && kv.key != audit)
        .map(|kv| delete(kv.key.clone()))
        .collect();
    ops.extend(
        wanted
            .iter()
            .filter(|(k, v)| existing.get(k.as_slice()) != Some(&v.as_slice()))
            .map(|(k, v)| put(k.clone(), v.clone())),
    );
    ops.push(put(
        audit,
        to_json(&AuditNote {
            actor: actor.to_owned(),
            action: "import".into(),
            target: "policy".into(),
        }),
    ));
    let prefix = layout.prefix().as_bytes().to_vec();
    let txn = TxnRequest {
        compare: vec![modified_before(
            prefix.clone(),
            etcd::prefix_end(&prefix),
            current.revision + 1,
        )],
        success: ops,
        failure: Vec::new(),
    };
    let response = client.txn(txn).await?;
    if !response.succeeded {
        return Err(FleetError::Raced);
    }
    Ok(response
        .header
        .map(|h| h.revision.max(0) as u64)
        .unwrap_or(0))
}

/// How far behind etcd the local mirror may be.
pub struct FleetStatus {
    started: Instant,
    connected: AtomicBool,
    /// Milliseconds after `started` when the mirror was last known to be in sync.
    in_sync_at_ms: AtomicU64,
}

impl Default for FleetStatus {
    fn default() -> Self {
        FleetStatus {
            started: Instant::now(),
            connected: AtomicBool::new(false),
            in_sync_at_ms: AtomicU64::new(0),
        }
    }
}

impl FleetStatus {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The watch is established: the mirror follows etcd.
    pub fn set_connected(&self) {
        self.in_sync_at_ms.store(self.now_ms(), Ordering::Release);
        self.connected.store(true, Ordering::Release);
    }

    /// The watch broke: staleness counts from now.
    pub fn set_disconnected(&self) {
        if self.connected.swap(false, Ordering::AcqRel) {
            self.in_sync_at_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// Whether the watch is established.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// How long the mirror may have missed changes: zero while the watch is established,
    /// else the time since it was last in sync (since start-up, when it never was).
    pub fn staleness(&self) -> Duration {
        if self.connected() {
            return Duration::ZERO;
        }
        let since = self.in_sync_at_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(since))
    }
}

/// A fleet sidecar's policy: from its sled mirror when it holds one (served even while etcd is
/// down), else a full load of the prefix (retried until etcd answers and holds a policy).
/// Admin writes go to etcd ([`EtcdWriter`]); the [`MirrorSink`] takes what the watch reads.
pub async fn open_live<S: MirrorStore>(
    store: Arc<S>,
    config: &FleetConfig,
    bootstrap_token: Option<String>,
    client: &EtcdClient,
) -> Result<(Arc<LivePolicy>, MirrorSink, &'static str), FleetError> {
    let layout = Layout::new(&config.etcd.prefix);
    let writer = Arc::new(EtcdWriter::new(
        client.clone(),
        layout.clone(),
        config.min_revision_wait,
        APPLY_WAIT,
    ));
    let prefix = config.etcd.prefix.clone();
    let token = bootstrap_token.clone();
    let from_sled = {
        let store = Arc::clone(&store);
        let writer = Arc::clone(&writer) as _;
        tokio::task::spawn_blocking(move || {
            LivePolicy::open_mirror(store, &prefix, token.as_deref(), writer)
        })
        .await?
        .map_err(|e| FleetError::Mirror(MirrorError::Open(e)))?
    };
    let ((live, sink), how) = match from_sled {
        Some(opened) => (opened, "local mirror"),
        None => {
            let mut delay = Duration::from_millis(200);
            loop {
                match load_prefix(client, &layout).await {
                    Ok((policy, revision, origin)) => {
                        let store = Arc::clone(&store);
                        let token = bootstrap_token.clone();
                        let writer = Arc::clone(&writer) as _;
                        let opened = tokio::task::spawn_blocking(move || {
                            LivePolicy::open_loaded(
                                store,
                                &policy,
                                revision,
                                &origin,
                                token.as_deref(),
                                writer,
                            )
                        })
                        .await??;
                        break (opened, "etcd");
                    }
                    Err(e @ (FleetError::Unavailable(_) | FleetError::NoPolicy(_))) => {
                        tracing::warn!(error = %e, "fleet: waiting for the policy in etcd before serving");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };
    Ok((Arc::new(live), sink, how))
}

/// A full read of the prefix as a policy, its revision and origin.
pub async fn load_prefix(
    client: &EtcdClient,
    layout: &Layout,
) -> Result<(Policy, u64, MirrorOrigin), FleetError> {
    let read = client.range_prefix(layout.prefix().as_bytes()).await?;
    let policy = layout.policy_from(&read.kvs)?;
    Ok((
        policy,
        read.revision,
        MirrorOrigin {
            cluster_id: read.cluster_id,
            prefix: layout.prefix().to_owned(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_statuses_are_classified_once_at_the_wire() {
        let too_many = FleetError::from_status(tonic::Status::invalid_argument(TOO_MANY_OPS));
        assert!(
            matches!(too_many, FleetError::TooManyOps(_)),
            "{too_many:?}"
        );
        assert!(
            too_many.to_string().ends_with("raise etcd's --max-txn-ops"),
            "{too_many}"
        );
        // Another InvalidArgument, even one that mentions operations, is not the limit.
        let other = FleetError::from_status(tonic::Status::invalid_argument(
            "etcdserver: duplicate key given in txn request (too many operations?)",
        ));
        assert!(matches!(other, FleetError::Refused(_)), "{other:?}");
        assert_eq!(
            other.to_string(),
            "etcd: InvalidArgument: etcdserver: duplicate key given in txn request (too many operations?)"
        );
        let down = FleetError::from_status(tonic::Status::unavailable("connection refused"));
        assert!(matches!(down, FleetError::Unavailable(_)), "{down:?}");
        assert_eq!(down.to_string(), "etcd unavailable: connection refused");
        assert!(
            std::error::Error::source(&down).is_some(),
            "the status stays attached"
        );
    }
}
