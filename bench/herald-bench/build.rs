//! The gRPC client from herald's proto, without a system `protoc` (protox).

const PROTO: &str = "../../proto/herald/v1/herald.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let descriptors = protox::compile([PROTO], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
