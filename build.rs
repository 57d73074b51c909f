//! Compiles the gRPC contract with protox (pure Rust: no system `protoc`) and writes the
//! descriptor set that the reflection service serves, and the serde impls of the canonical
//! protobuf JSON mapping (pbjson) for the HTTP/JSON endpoints. Also compiles the vendored etcd v3 API
//! subset (`proto/etcd/`) into a client-only module for fleet mode, and generates the ext_authz
//! server over the received bytes of Envoy's request.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/authz/v1/authz.proto"];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("authz_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // The canonical proto3 JSON mapping (lowerCamelCase names, uint64 as strings, defaults
    // omitted, both name forms accepted, unknown fields refused) for the HTTP/JSON endpoints,
    // written as `authz.v1.serde.rs` beside the prost types.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors.encode_to_vec())?
        .build(&[".authz.v1"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;

    // Envoy's ext_authz API, for reflection only (the server is generated below over raw bytes).
    let envoy = protox::compile(
        ["envoy/service/auth/v3/external_auth.proto"],
        ["proto/envoy-api"],
    )?;
    fs::write(
        out_dir.join("envoy_authz_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;

    // etcd v3: client only, packages `etcdserverpb` and `mvccpb` (written as their own files).
    let etcd = protox::compile(["etcdserverpb/rpc.proto"], ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(etcd)?;

    // Envoy ext_authz: the server side of `envoy.service.auth.v3.Authorization`, handing the
    // request over as received bytes for src/api/envoy_wire.rs to read in place instead of
    // decoding the full generated message (written as `envoy.service.auth.v3.Authorization.rs`).
    let ext_authz = tonic_build::manual::Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .method(
            tonic_build::manual::Method::builder()
                .name("check")
                .route_name("Check")
                .input_type("prost::bytes::Bytes")
                .output_type("envoy_types::pb::envoy::service::auth::v3::CheckResponse")
                .codec_path("crate::api::envoy_wire::ExtAuthzCodec")
                .build(),
        )
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[ext_authz]);
    Ok(())
}
