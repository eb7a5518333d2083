//! gsio-relay: the native relay server for GSIO-Net.
//!
//! Peers exchange envelopes through it; `relay.toml` decides how each `message_type` travels
//! (echo, broadcast, directed). The routing decisions come from the `gsio-relay-core` crate,
//! which the Cloudflare Worker in `worker/` runs too.
//!
//! # Layout
//! - [`config`]: loading `relay.toml` with `GSIO_RELAY_` environment overrides.
//! - [`reload`]: reloading `relay.toml` while the relay runs (file watch, `SIGHUP`).
//! - [`server`]: binds both fronts and the admin listener, runs them, shuts them down
//!   gracefully.
//! - [`ws`]: the WebSocket front (JSON text frames).
//! - [`budget`]: the memory a WebSocket client can make the relay hold for messages it has not
//!   finished sending (the anonymous limit, the shared budget), under tungstenite.
//! - [`grpc`]: the gRPC front: [`grpc::service`] (`RelayService/Exchange`) and
//!   [`grpc::codec`] (the wire type, the codec and the proto conversions).
//! - [`limits`]: the per-address limits' table and guard, and the WebSocket front's refusal.
//! - [`cluster`]: several relays on one NATS as one network (`[cluster]`): claims, presence
//!   and traffic across relays, heartbeats, resynchronisation after an outage.
//! - [`peer`]: one connection, front-independent: identity, admission, routing, delivery.
//! - [`state`]: the [`state::Relay`] every connection shares (the hub, connection ids,
//!   counters, the record of reloads).
//! - [`queue`]: the bounded per-peer queues and their slow-consumer policy.
//! - [`events`]: one connection's out-of-band events (kicked, shutdown's phases).
//! - [`shutdown`]: the two-phase graceful shutdown.
//! - [`metrics`]: what the relay counts, and how cheaply (sharded relaxed atomics, fed by the
//!   core's `Meter` as it routes).
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz` and the console
//!   (`console.html`, embedded).
//! - [`pb`]: the generated protobuf types and client (what a node author uses too).
//! - `fuzzing` (hidden): the check the `envelope_proto` fuzz target in `fuzz/` and the corpus
//!   regression test run on each input.

pub mod admin;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod peer;
pub mod queue;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod ws;

/// Generated from `proto/gsio/relay/v1/relay.proto`: messages and the client.
pub mod pb {
    tonic::include_proto!("gsio.relay.v1");

    /// The encoded descriptor set, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("relay_descriptor");
}

pub use server::Server;
