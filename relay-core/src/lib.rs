//! The routing core of gsio-relay.
//!
//! Every front (the native gRPC and WebSocket servers, the Cloudflare Worker) hands this crate
//! what arrived from the network and gets back *decisions*: who receives which message, or which
//! error answers the sender. The crate does no I/O, reads no clock and knows no async runtime, so
//! the very same code builds for `wasm32-unknown-unknown`.
//!
//! # Layout
//! - [`envelope`]: the `Envelope` domain type, its strict JSON parser (one pass, payload kept as
//!   the sender's raw JSON text) and [`Message`], the shared, encode-once unit of delivery.
//! - [`id`]: [`PeerId`], the validated peer identity, and the reserved relay id.
//! - [`ids`]: message ids: their syntax, and the ids the relay assigns.
//! - [`session`]: the identity of one connection (bound once, spoofing rejected).
//! - [`hub`]: the peer table and the routing decision for each message ([`Hub::route`]).
//! - [`connection`]: one connection's whole conversation as a state machine
//!   ([`Connection`]): inputs in, deliveries through each peer's [`Link`], and when to close.
//! - [`liveness`]: when to ping a quiet connection, and when to give up on it.
//! - [`presence`]: joins and leaves, coalesced into announcements: who is told of whom, in
//!   which envelope, and when the front's presence timer must fire.
//! - [`auth`]: who may take which id: the `Challenge`, signed proofs and tokens, checked.
//! - [`cluster`]: peers on the other relays of a cluster: network-wide ids, remote presence,
//!   and what crosses relays (the native relay's `[cluster]` moves it over NATS).
//! - [`rate`]: the token buckets behind each identity's rate limits.
//! - [`address`]: connections per client address (live, and new per second): the decision
//!   every front asks before it serves a connection.
//! - [`config`]: the `relay.toml` schema, parsed then validated into [`RelayConfig`].
//! - [`error`]: [`RelayError`], one variant per answer the relay can give, each with a stable
//!   machine-readable code.
//! - `fuzzing` (hidden): the checks the fuzz targets in `fuzz/` and the corpus regression test
//!   run on each input.

#![forbid(unsafe_code)]

pub mod address;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod envelope;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod id;
pub mod ids;
pub mod liveness;
pub mod presence;
pub mod rate;
pub mod session;

pub use config::{Mode, RelayConfig, Routing};
pub use connection::{
    presence_timer_fired, reconfigure, Connection, Counts, Handshake, Input, Link, Meter,
    Reconfigured, Refused, Remembered, Step, Table,
};
pub use envelope::{Envelope, Message, Payload};
pub use error::{ErrorCode, RelayError};
pub use hub::{Hub, Joined, Route, RouteMode, Targets};
pub use id::{PeerId, RELAY_ID};
pub use session::{Inbound, Rejection, SenderText, Session};
