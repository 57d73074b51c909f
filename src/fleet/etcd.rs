//! A small etcd v3 client over the vendored API protos (`proto/etcd/`, compiled by protox in
//! build.rs: no system `protoc`). Only what fleet mode needs: paginated Range, Txn, Watch,
//! Compact and Authenticate, with the auth token sent as `token` metadata.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status, Streaming};

use super::{EtcdConfig, FleetError};

/// Generated etcd v3 types (client only).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// `mvccpb`: keys, values, events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// `etcdserverpb`: the KV, Watch and Auth services.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb::auth_client::AuthClient;
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::watch_client::WatchClient;
use pb::etcdserverpb::{
    AuthenticateRequest, CompactionRequest, RangeRequest, TxnRequest, TxnResponse, WatchRequest,
    WatchResponse, watch_request,
};
use pb::mvccpb::KeyValue;

/// Deadline of one unary call (a Range page, a Txn).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from etcd (a Range page of big subjects).
const MAX_DECODE: usize = 64 * 1024 * 1024;
/// Keys per Range page of a full load.
const PAGE: i64 = 1000;

/// Adds the auth token, when there is one, to every call.
#[derive(Clone, Default)]
pub struct TokenInterceptor {
    token: Arc<RwLock<Option<AsciiMetadataValue>>>,
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = self
            .token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(token) = token {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, TokenInterceptor>;

/// A connection to an etcd cluster (lazy: building it never fails because etcd is down).
#[derive(Clone)]
pub struct EtcdClient {
    kv: KvClient<Svc>,
    watch: WatchClient<Svc>,
    auth: AuthClient<Channel>,
    token: TokenInterceptor,
    credentials: Option<(String, String)>,
}

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix is empty): the range runs to the end of the keyspace.
    vec![0]
}

/// A full, consistent read of a prefix.
#[derive(Debug, Clone)]
pub struct PrefixRead {
    /// Every key and value under the prefix.
    pub kvs: Vec<KeyValue>,
    /// The revision the read was made at.
    pub revision: u64,
    /// The cluster that answered.
    pub cluster_id: u64,
}

fn endpoint(url: &str, config: &EtcdConfig) -> Result<Endpoint, FleetError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| FleetError::Endpoint {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &config.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &config.client_identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).map_err(|source| FleetError::Tls {
            url: url.to_owned(),
            source,
        })?;
    }
    Ok(endpoint)
}

impl EtcdClient {
    /// A client over every endpoint (requests are balanced over those that answer).
    pub fn new(config: &EtcdConfig) -> Result<EtcdClient, FleetError> {
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| endpoint(url, config))
            .collect::<Result<Vec<_>, _>>()?;
        let channel = match endpoints.as_slice() {
            [one] => one.connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        let token = TokenInterceptor::default();
        Ok(EtcdClient {
            kv: KvClient::with_interceptor(channel.clone(), token.clone())
                .max_decoding_message_size(MAX_DECODE),
            watch: WatchClient::with_interceptor(channel.clone(), token.clone())
                .max_decoding_message_size(MAX_DECODE),
            auth: AuthClient::new(channel),
            token,
            credentials: config.credentials.clone(),
        })
    }

    /// Gets a fresh auth token when credentials are configured.
    pub async fn authenticate(&self) -> Result<(), FleetError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(());
        };
        let mut request = Request::new(AuthenticateRequest {
            name: name.clone(),
            password: password.clone(),
        });
        request.set_timeout(CALL_TIMEOUT);
        let response = self
            .auth
            .clone()
            .authenticate(request)
            .await
            .map_err(FleetError::from_status)?;
        let value = AsciiMetadataValue::try_from(response.into_inner().token)
            .map_err(FleetError::MalformedToken)?;
        *self
            .token
            .token
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(value);
        Ok(())
    }

    fn has_token(&self) -> bool {
        self.token
            .token
            .read()
            .map(|t| t.is_some())
            .unwrap_or(false)
    }

    /// Authenticates first if needed, and once more when etcd says the token expired.
    async fn with_auth<T, F, Fut>(&self, call: F) -> Result<T, FleetError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        if self.credentials.is_some() && !self.has_token() {
            self.authenticate().await?;
        }
        match call().await {
            // etcd answers an expired or revoked token with `Unauthenticated`
            // (`ErrGRPCInvalidAuthToken`).
            Err(status)
                if self.credentials.is_some() && status.code() == tonic::Code::Unauthenticated =>
            {
                self.authenticate().await?;
                call().await.map_err(FleetError::from_status)
            }
            other => other.map_err(FleetError::from_status),
        }
    }

    /// Every key under `prefix`, paginated but consistent (all pages read at one revision).
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<PrefixRead, FleetError> {
        let end = prefix_end(prefix);
        let mut kvs = Vec::new();
        let mut key = prefix.to_vec();
        let mut at = 0i64;
        let mut cluster_id = 0;
        loop {
            let response = self
                .with_auth(|| {
                    let mut request = Request::new(RangeRequest {
                        key: key.clone(),
                        range_end: end.clone(),
                        limit: PAGE,
                        revision: at,
                        ..Default::default()
                    });
                    request.set_timeout(CALL_TIMEOUT);
                    let mut kv = self.kv.clone();
                    async move { kv.range(request).await.map(tonic::Response::into_inner) }
                })
                .await?;
            let header = response.header.unwrap_or_default();
            if at == 0 {
                at = header.revision;
                cluster_id = header.cluster_id;
            }
            let more = response.more;
            if let Some(last) = response.kvs.last() {
                key = last.key.clone();
                key.push(0);
            }
            let empty = response.kvs.is_empty();
            kvs.extend(response.kvs);
            if !more || empty {
                break;
            }
        }
        Ok(PrefixRead {
            kvs,
            revision: at.max(0) as u64,
            cluster_id,
        })
    }

    /// One transaction.
    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse, FleetError> {
        self.with_auth(|| {
            let mut request = Request::new(txn.clone());
            request.set_timeout(CALL_TIMEOUT);
            let mut kv = self.kv.clone();
            async move { kv.txn(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Compacts the key-value history up to `revision` (tests and operators).
    pub async fn compact(&self, revision: u64) -> Result<(), FleetError> {
        self.with_auth(|| {
            let mut request = Request::new(CompactionRequest {
                revision: revision as i64,
                physical: true,
            });
            request.set_timeout(CALL_TIMEOUT);
            let mut kv = self.kv.clone();
            async move { kv.compact(request).await.map(|_| ()) }
        })
        .await
    }

    /// Watches every key under `prefix` from `start_revision`. The returned sender keeps the
    /// request side of the stream open; drop it to end the watch.
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: u64,
    ) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), FleetError> {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::etcdserverpb::WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision: start_revision as i64,
                    ..Default::default()
                },
            )),
        };
        if self.credentials.is_some() && !self.has_token() {
            self.authenticate().await?;
        }
        let mut authenticated_again = false;
        loop {
            let (tx, rx) = mpsc::channel(4);
            tx.send(create.clone())
                .await
                .map_err(|_| FleetError::WatchClosed)?;
            match self.watch.clone().watch(ReceiverStream::new(rx)).await {
                Ok(stream) => return Ok((tx, stream.into_inner())),
                Err(status)
                    if !authenticated_again
                        && self.credentials.is_some()
                        && status.code() == tonic::Code::Unauthenticated =>
                {
                    authenticated_again = true;
                    self.authenticate().await?;
                }
                Err(status) => return Err(FleetError::from_status(status)),
            }
        }
    }
}
