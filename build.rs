//! Compiles the gRPC contract with protox (pure Rust: no system `protoc`) and writes the
//! descriptor set that the reflection service serves. Also compiles the vendored etcd v3 API
//! subset (`proto/etcd/`) into a client-only module for fleet mode.

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;

    // etcd v3: client only, packages `etcdserverpb` and `mvccpb` (written as their own files).
    let etcd = protox::compile(["etcdserverpb/rpc.proto"], ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(etcd)?;
    Ok(())
}
