//! Compiles `proto/` without a system `protoc`: protox parses the proto in
//! pure Rust, tonic-prost-build generates the messages and the service, and
//! pbjson-build derives the proto3 canonical JSON mapping that REST and SSE
//! use, so one schema serves every transport. The descriptor set is also kept
//! for server reflection.

use prost::Message as _;
use std::{env, path::PathBuf};

const PROTO: &str = "proto/herald/v1/herald.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile([PROTO], ["proto"])?;
    let encoded = descriptors.encode_to_vec();
    std::fs::write(out_dir.join("herald_descriptor.bin"), &encoded)?;

    tonic_prost_build::configure()
        // Our own Timestamp, whose JSON is the canonical `...Z` form that
        // grpcurl prints too.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf.Timestamp", "crate::pb::Timestamp")
        // prost's codec with small buffers: an idle stream keeps its own.
        .codec_path("crate::pb::codec::Codec")
        .compile_fds(descriptors)?;

    // Unknown JSON fields are ignored, as proto3 JSON parsers may, so newer
    // clients can talk to older servers.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .ignore_unknown_fields()
        .build(&[".herald.v1"])?;
    Ok(())
}
