//! Generates the gRPC messages and the *client* from `../proto` with protox (a Rust protobuf
//! compiler), so building needs no system `protoc` and node authors never compile the server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(["gsio/relay/v1/relay.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
