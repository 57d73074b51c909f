//! gRPC services: thin translations between the wire types and the library's own. Only this
//! module sees generated code.

mod admin;
mod admin_gate;
mod authz;
mod convert;
mod envoy;
mod envoy_wire;
pub mod http_json;
mod limits;
mod status;
pub mod xds;

pub use admin_gate::{ADMIN_RPCS, AdminGate, Gated};
pub use authz::{AppState, AuthzService, decide_batch};
pub use envoy::{
    AuthorizationServer, EnvoyAuthzService, JWT_AUTHN_NAMESPACE, ROUTING_OVERRIDE_HEADERS,
};
pub use limits::{MAX_BATCH_ITEMS, MAX_MESSAGE_BYTES};

/// Generated types and services of `authz.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("authz.v1");
    include!(concat!(env!("OUT_DIR"), "/authz.v1.serde.rs"));

    /// Encoded descriptor set of `authz.v1`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/authz_descriptor.bin"));

    /// Encoded descriptor set of `envoy.service.auth.v3` (ext_authz) and its imports, for
    /// reflection.
    pub const ENVOY_AUTHZ_FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_authz_descriptor.bin"));
}
