//! The gRPC front: `gsio.relay.v1.RelayService/Exchange`, one bidirectional stream per peer.
//!
//! - [`codec`]: the server's wire type and codec, and the only conversions between the proto
//!   `Envelope` and the core's (`to_pb`, `from_pb`). Outbound, each message is encoded to
//!   protobuf once (the first time a gRPC recipient needs it) and the bytes are shared by every
//!   gRPC recipient: the server code is generated with `Envelope` mapped to [`WireEnvelope`],
//!   whose encoding is those bytes.
//! - [`service`]: the `RelayService` implementation: one stream's reader and writer, and the
//!   status a stream ends with.

pub mod codec;
pub mod service;

/// Generated server code (see `build.rs`).
pub mod server {
    tonic::include_proto!("server/gsio.relay.v1");
}

/// Request metadata that fixes the stream's peer id before its first envelope.
pub const NODE_ID_METADATA: &str = "x-gsio-node-id";

// `build.rs` names `crate::grpc::WireEnvelope` and `crate::grpc::RelayCodec` in the generated
// server code.
pub use codec::{RelayCodec, WireEnvelope};
pub use service::RelayGrpc;
