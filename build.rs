//! Generates the gRPC code from `proto/` with protox (a Rust protobuf compiler), so building
//! needs no system `protoc`.
//!
//! Two passes over the same file descriptor set:
//! - messages and the client, into `OUT_DIR` (the `pb` module; also what node authors get);
//! - the server, into `OUT_DIR/server`, with `Envelope` mapped to `crate::grpc::WireEnvelope`,
//!   a type whose encoding can be bytes encoded once and shared by every recipient, and the
//!   codec set to `crate::grpc::RelayCodec` (prost with smaller per-stream buffers).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/gsio/relay/v1/relay.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    // For gRPC reflection (compile_fds does not write it: there is no protoc run).
    std::fs::write(
        out.join("relay_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds.clone())?;

    let server_out = out.join("server");
    std::fs::create_dir_all(&server_out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server_out)
        .extern_path(".gsio.relay.v1.Envelope", "crate::grpc::WireEnvelope")
        .codec_path("crate::grpc::RelayCodec")
        .compile_fds(fds)?;
    Ok(())
}
