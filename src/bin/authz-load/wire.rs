//! What goes over the wire: each scenario's request is encoded once and sent as the same bytes
//! on every call, and each answer is decoded only as far as its verdict. The client and the
//! sidecar share the machine, so every microsecond the client spends building messages is one
//! the figures would wrongly charge to the server; this keeps that cost small and the same
//! for every scenario.

use std::marker::PhantomData;

use prost::bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A codec that writes already-encoded request bytes and decodes the answer as `V`.
pub struct PreEncoded<V>(PhantomData<V>);

impl<V> Default for PreEncoded<V> {
    fn default() -> Self {
        PreEncoded(PhantomData)
    }
}

impl<V: prost::Message + Default + Send + 'static> Codec for PreEncoded<V> {
    type Encode = Bytes;
    type Decode = V;
    type Encoder = BytesEncoder;
    type Decoder = ViewDecoder<V>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ViewDecoder<V> {
        ViewDecoder(PhantomData)
    }
}

/// Copies the prepared message into the frame.
pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

/// Decodes the answer into a view that keeps only the verdict (prost skips the other fields).
pub struct ViewDecoder<V>(PhantomData<V>);

impl<V: prost::Message + Default> Decoder for ViewDecoder<V> {
    type Item = V;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<V>, Status> {
        let view = V::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| Status::internal(format!("cannot decode the answer: {e}")))?;
        Ok(Some(view))
    }
}

/// `grpc.health.v1.HealthCheckResponse`: only `status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthView {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `authz.v1.CheckResponse`: only `allowed`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthzView {
    #[prost(bool, tag = "1")]
    pub allowed: bool,
}

/// `authz.v1.CheckBatchResponse`: each result's `allowed`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchView {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<AuthzView>,
}

/// `envoy.service.auth.v3.CheckResponse`: only `status.code` (0 allows, anything else denies).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnvoyView {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatusView>,
}

/// `google.rpc.Status`: only `code`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatusView {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

#[cfg(test)]
mod tests {
    //! Each view reads the field it names out of the real message's encoding.

    use super::*;
    use envoy_types::pb::envoy::service::auth::v3::CheckResponse as EnvoyCheckResponse;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use prost::Message;

    #[test]
    fn views_read_the_verdict_of_the_real_messages() {
        let health = tonic_health::pb::HealthCheckResponse { status: 1 };
        assert_eq!(
            HealthView::decode(health.encode_to_vec().as_slice())
                .map(|v| v.status)
                .ok(),
            Some(1)
        );

        let authz = authz_sidecar::api::pb::CheckResponse {
            allowed: true,
            reason: "granted by role viewer".into(),
            required: vec!["devices:read".into()],
            revision: 7,
            explanation: None,
        };
        assert_eq!(
            AuthzView::decode(authz.encode_to_vec().as_slice())
                .map(|v| v.allowed)
                .ok(),
            Some(true)
        );

        let envoy = EnvoyCheckResponse {
            status: Some(RpcStatus {
                code: 7,
                message: "denied".into(),
                details: Vec::new(),
            }),
            ..Default::default()
        };
        let view = EnvoyView::decode(envoy.encode_to_vec().as_slice()).ok();
        assert_eq!(view.and_then(|v| v.status).map(|s| s.code), Some(7));
    }
}
