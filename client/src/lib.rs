//! A Rust client for [gsio-relay](https://github.com/seemueller-io/gsio-net): for gsio-node and
//! any peer that joins the relay over its gRPC stream (`gsio.relay.v1.RelayService/Exchange`).
//!
//! [`connect`] returns a [`Client`] to send [`Envelope`]s and [`Events`] to receive what
//! happens: envelopes from other peers, peers joining and leaving, the relay's refusals
//! ([`RelayError`], one variant per error code, naming the `message_id` it answers), and the
//! connection itself ([`Event::Connected`] with the `Welcome`'s peer list,
//! [`Event::Disconnected`] with the reason and when the client tries again).
//!
//! Payloads are JSON text ([`Payload`]), carried exactly as written: integers beyond 2^53 stay
//! exact. Message ids are UUID v4s generated for the caller when left empty.
//!
//! # Example
//!
//! ```no_run
//! use gsio_relay_client::{connect, Config, Envelope, Event};
//! use serde_json::json;
//!
//! # async fn node() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = connect(Config::new("http://127.0.0.1:50051", "node-1"))?;
//! let mut peers = Vec::new();
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Connected(welcome) => {            // also after every reconnect
//!             peers = welcome.peers;
//!             client.send(Envelope::new("NodeAnnounce", json!({"node_id": "node-1"}))).await?;
//!         }
//!         Event::Message(request) if request.message_type == "NodeListRequest" => {
//!             client.send(request.reply("NodeListResponse", json!({"nodes": peers}))).await?;
//!         }
//!         Event::Rejected(error) => eprintln!("{:?}: {error}", error.message_id()),
//!         Event::Disconnected(gone) => eprintln!("{} (retry in {:?})", gone.reason, gone.reconnect_in),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Reconnecting
//! After a transport failure, a relay restart (the stream ends with `UNAVAILABLE`), a slow
//! consumer cut or any other end, the client waits as [`Backoff`] says (bounded exponential,
//! with jitter) and connects again with the same id; each try that fails is one more
//! [`Event::Disconnected`]. A refused id (`ALREADY_EXISTS`, `INVALID_ARGUMENT`) stops the client
//! unless [`Config::retry_refused_id`]. Sends made while disconnected wait in the bounded outbox
//! and go out after the next `Welcome` (see [`Client`] for the exact contract).
//!
//! # Layout
//! - [`client`](crate::connect): [`connect`], [`Client`] (sending) and [`Events`] (receiving).
//! - `driver`: the task behind a client: sessions, identification, reconnects.
//! - [`Envelope`] and [`Payload`] (`envelope`): the message and its exact JSON payload.
//! - [`Event`], [`Welcome`], [`Disconnected`] (`event`): what the client reports.
//! - [`RelayError`], [`DisconnectReason`], [`SendError`], [`ConnectError`] (`error`).
//! - [`Config`], [`Backoff`] (`config`).
//! - [`pb`]: the generated protobuf types and tonic client, for those who want the raw stream.

mod client;
mod config;
mod driver;
mod envelope;
mod error;
mod event;

pub use client::{connect, Client, Events};
pub use config::{Backoff, Config, Credentials};
/// Ed25519 keys, for [`Credentials::Signed`].
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use envelope::{Envelope, Payload};
pub use error::{ConnectError, Detail, DisconnectReason, RelayError, SendError};
pub use event::{Disconnected, Event, Welcome};

/// Generated from `proto/gsio/relay/v1/relay.proto`: the messages and the client (no server).
pub mod pb {
    tonic::include_proto!("gsio.relay.v1");
}

/// The gRPC metadata key that carries a node's id.
pub const NODE_ID_METADATA: &str = "x-gsio-node-id";

/// The id a key may always take on a `signed` relay: `ed25519-` and the public key in hex.
pub fn derived_id(key: &VerifyingKey) -> String {
    format!("ed25519-{}", hex(key.as_bytes()))
}

/// What a node signs to answer a `Challenge` (the relay's `audience`, its `nonce` in hex) for
/// the id `id`: `gsio-relay-auth-v1\n<audience>\n<nonce>\n<id>`.
pub fn signed_message(audience: &str, nonce: &str, id: &str) -> Vec<u8> {
    format!("gsio-relay-auth-v1\n{audience}\n{nonce}\n{id}").into_bytes()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The relay's own peer id: it signs `Welcome`, `Error`, `PeerJoined`, `PeerLeft` and `PeersChanged`.
pub const RELAY_ID: &str = "relay";

#[cfg(test)]
mod tests {
    /// The README's example (section "A Rust client for nodes") is the example above, which
    /// rustdoc compiles: the same lines, less the example's hidden ones (`# ...`).
    #[test]
    fn the_readme_example_is_the_compiled_doc_example() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## A Rust client for nodes\n")
            .nth(1)
            .unwrap();
        let readme_example = section.split("```rust\n").nth(1).unwrap();
        let readme_example: Vec<&str> =
            readme_example.lines().take_while(|l| *l != "```").collect();
        let doc_example: Vec<&str> = include_str!("lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//!"))
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
            .skip_while(|line| *line != "```no_run")
            .skip(1)
            .take_while(|line| *line != "```")
            .filter(|line| !line.starts_with("# "))
            .collect();
        assert!(readme_example.len() > 10, "{readme_example:?}");
        assert_eq!(doc_example, readme_example);
    }
}
