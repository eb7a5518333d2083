//! The conformance table: the relay's protocol behaviour, written once and run against every
//! runtime and front. The native relay runs every scenario over WebSocket, and those not about
//! WebSocket frames over gRPC and over both fronts at once; the Worker (under `wrangler dev`)
//! runs every scenario over WebSocket. Each scenario gets a network of its own (a fresh
//! native relay, or a fresh Worker path) configured by the shipped `relay.toml`: GSIO-Net's
//! announcements (`NodeAnnounce`) broadcast, its requests `auto`, its responses
//! (`LedgerSyncResponse`) directed, `Ping` echo, and `auto` for any other type.
//!
//! # Layout
//! - [`Network`]: how a network hands out peers ([`WsNet`], [`GrpcNet`], and [`MixedNet`] whose
//!   peers alternate between the fronts), and [`FrontPeer`]:
//!   what a scenario needs from a peer beyond [`Peer`] (the few steps each front does its own
//!   way: leaving, sending fields absent, a burst without waiting).
//! - The lists, each written once: [`any_front_scenarios!`](crate::any_front_scenarios) (generic
//!   over the network), [`websocket_scenarios!`](crate::websocket_scenarios) (about WebSocket
//!   frames and URLs) and [`native_scenarios!`](crate::native_scenarios) (the native relay only,
//!   on every front: reloading relay.toml, which the Worker reads when it is built). [`conformance_tests!`](crate::conformance_tests) turns a list into one
//!   `#[tokio::test]` per scenario, named after it, so a failure names its scenario and
//!   `cargo test --test conformance_native -- grpc::directed_reaches_only_the_recipient` runs it
//!   alone.
//! - The scenarios: `pub async fn`s, each in exactly one list
//!   ([`every_scenario_is_listed_once`] checks this against this file's text).

use serde_json::Value;

use std::cell::Cell;

use super::{
    binary, envelope, nothing_else_back, nothing_else_from, AnyPeer, Frame, GrpcPeer, Peer,
    TestRelay, WsPeer,
};

/// Emits one `#[tokio::test]` per scenario name, each making a fresh network with `$network`
/// (called with the scenario's name, e.g. for a Worker path of its own) and running the scenario
/// of the same name on it. Invoked through a list, so the names are written once:
///
/// ```ignore
/// crate::any_front_scenarios!(conformance_tests!(|_scenario| async { GrpcNet::start().await } =>));
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($network:expr => $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let net = ($network)(stringify!($name)).await;
                $crate::common::conformance::$name(net).await;
            }
        )+
    };
}

/// The scenarios every front runs: generic over [`Network`]. Calls `$then!(<args> <names>)`.
#[macro_export]
macro_rules! any_front_scenarios {
    ($then:ident!($($args:tt)*)) => {
        $crate::$then!(
            $($args)*
            welcome_announces_id_peers_and_limits,
            welcome_lists_the_other_peers_sorted,
            identity_from_first_envelope,
            identity_required_before_any_routing,
            echo_returns_to_sender_only,
            broadcast_reaches_every_other_peer,
            directed_reaches_only_the_recipient,
            directed_to_unknown_or_empty_recipient_is_an_error,
            spoofed_sender_is_refused,
            empty_sender_is_filled_in,
            peers_learn_of_joins_and_leaves,
            second_connection_with_a_live_id_is_refused,
            an_id_is_free_again_once_its_holder_has_left,
            invalid_ids_are_refused,
            oversized_message_is_refused_and_the_connection_survives,
            payloads_arrive_exactly,
            messages_from_one_sender_arrive_in_order,
            a_burst_of_a_thousand_arrives_whole_and_in_order,
            auto_routes_addressed_to_one_and_unaddressed_to_all,
            message_ids_are_kept_or_assigned_once,
            errors_name_the_message_id_they_answer,
            gsio_net_messages_route_as_shipped_and_parse_as_p2p_messages,
            a_burst_of_joins_is_announced_to_each_peer_exactly_once,
            a_peer_gone_within_a_burst_is_announced_only_to_those_who_saw_it,
            a_reused_id_is_announced_left_then_joined_before_its_messages,
        );
    };
}

/// The scenarios about WebSocket frames themselves (text, binary, malformed JSON, the sender's
/// frame forwarded as is): they take a [`WsNet`]. Calls `$then!(<args> <names>)`.
#[macro_export]
macro_rules! websocket_scenarios {
    ($then:ident!($($args:tt)*)) => {
        $crate::$then!(
            $($args)*
            malformed_frames_get_errors_and_the_connection_survives,
            unchanged_frames_are_forwarded_verbatim,
            mutated_frames_never_break_the_relay,
        );
    };
}

/// The scenarios only the native relay runs, over each front: a network of [`Reloads`] (the
/// Worker reads relay.toml when it is built, and never sends `ConfigChanged`). Calls
/// `$then!(<args> <names>)`.
#[macro_export]
macro_rules! native_scenarios {
    ($then:ident!($($args:tt)*)) => {
        $crate::$then!(
            $($args)*
            config_changed_reaches_every_peer_when_the_announced_rules_change,
        );
    };
}

/// The scenarios of `[auth]` and the per-identity limits, on a network configured by
/// [`TRUSTING_VARS`] (keys or tokens for every id, a small rate, a short deadline): the native
/// relay on every front, and the Worker with the same `[vars]`. They take a [`Trusting`]
/// network. Calls `$then!(<args> <names>)`.
#[macro_export]
macro_rules! trust_scenarios {
    ($then:ident!($($args:tt)*)) => {
        $crate::$then!(
            $($args)*
            key_holders_are_challenged_then_welcomed,
            a_signature_replayed_on_another_connection_is_refused,
            tokens_at_connect_or_in_band_are_welcomed,
            expired_forged_and_misaddressed_tokens_are_refused,
            naming_an_id_without_proof_is_refused,
            a_silent_anonymous_connection_is_closed_at_the_deadline,
            a_flood_over_the_rate_is_refused_then_cut_off,
        );
    };
}

/// `pub const $name: &[&str]` holding a list's names (for the guard below).
#[macro_export]
macro_rules! scenario_names {
    ($const:ident => $($name:ident),+ $(,)?) => {
        pub const $const: &[&str] = &[$(stringify!($name)),+];
    };
}

crate::any_front_scenarios!(scenario_names!(ANY_FRONT =>));
crate::websocket_scenarios!(scenario_names!(WEBSOCKET_ONLY =>));
crate::native_scenarios!(scenario_names!(NATIVE_ONLY =>));
crate::trust_scenarios!(scenario_names!(TRUST =>));

/// The guard against a list losing scenarios: every `pub async fn` in this file is a scenario
/// and is in exactly one list, and the lists hold exactly as many as this file says (a scenario
/// removed from both its list and the file, or added, must change these numbers too).
pub fn every_scenario_is_listed_once() {
    assert_eq!(
        (
            ANY_FRONT.len(),
            WEBSOCKET_ONLY.len(),
            NATIVE_ONLY.len(),
            TRUST.len()
        ),
        (25, 3, 1, 7),
        "the lists gained or lost scenarios"
    );
    let source = include_str!("conformance.rs");
    let defined: Vec<&str> = source
        .lines()
        .filter_map(|line| line.strip_prefix("pub async fn "))
        .map(|rest| rest.split(['<', '(']).next().unwrap())
        .collect();
    let mut listed: Vec<&str> = ANY_FRONT
        .iter()
        .chain(WEBSOCKET_ONLY)
        .chain(NATIVE_ONLY)
        .chain(TRUST)
        .copied()
        .collect();
    listed.sort_unstable();
    let mut sorted = defined.clone();
    sorted.sort_unstable();
    assert_eq!(
        listed, sorted,
        "each scenario (a `pub async fn` in conformance.rs) belongs in exactly one list"
    );
}

/// One isolated network: every peer it hands out reaches the same set of peers.
#[allow(async_fn_in_trait)]
pub trait Network {
    type Peer: FrontPeer;

    /// A peer whose id is fixed as it connects (`?node_id=` on WebSocket, `x-gsio-node-id` on
    /// gRPC), its Welcome not yet read.
    async fn connect_as(&self, id: &str) -> Self::Peer;

    /// A peer with no id yet.
    async fn anonymous(&self) -> Self::Peer;

    /// Connecting as `id` is refused with the error `code`, and the connection ends.
    async fn expect_refused(&self, id: &str, code: &str);

    /// A peer with its id fixed as it connects, its Welcome already read.
    async fn peer(&self, id: &str) -> Self::Peer {
        let mut peer = self.connect_as(id).await;
        peer.expect_welcome(id).await;
        peer
    }
}

/// The `[vars]` (natively: overrides) of the networks the trust scenarios run on: every id needs
/// a key or a token, one envelope per second after a burst of 5, cut off after 20 refusals in a
/// row, and 1 s to identify. The secret is [`super::auth::SECRET`], in the variable
/// [`super::auth::SECRET_VAR`].
pub const TRUSTING_VARS: &[(&str, &str)] = &[
    ("GSIO_RELAY_AUTH__MODE", "signed_or_token"),
    ("GSIO_RELAY_AUTH__TOKEN_SECRET_ENV", super::auth::SECRET_VAR),
    ("GSIO_RELAY_LIMITS__MESSAGES_PER_SECOND", "1"),
    ("GSIO_RELAY_LIMITS__MESSAGE_BURST", "5"),
    ("GSIO_RELAY_LIMITS__RATE_LIMITED_MAX", "20"),
    ("GSIO_RELAY_LIMITS__IDENTIFY_TIMEOUT_MS", "1000"),
];

/// A native relay on the shipped relay.toml with [`TRUSTING_VARS`] over it, and the secret in
/// place as the loader puts it.
pub(crate) async fn trusting_relay() -> TestRelay {
    let mut config = super::shipped_config()
        .with_overrides(TRUSTING_VARS.iter().copied())
        .unwrap();
    config.auth.token_secret =
        Some(gsio_relay_core::auth::Secret::new(super::auth::SECRET.as_bytes()).unwrap());
    TestRelay::start_with(config).await
}

/// A network whose ids need proof ([`TRUSTING_VARS`]).
#[allow(async_fn_in_trait)]
pub trait Trusting: Network {
    /// A connection presenting `token` as it connects (WebSocket: the `gsio.token.` subprotocol;
    /// gRPC: `authorization` metadata), its Welcome not yet read.
    async fn with_token(&self, token: &str) -> Self::Peer;

    /// Presenting `token` as it connects is refused with `code`, and the connection ends.
    async fn expect_token_refused(&self, token: &str, code: &str);

    /// A peer welcomed by a good token for `id`.
    async fn token_peer(&self, id: &str) -> Self::Peer {
        let mut peer = self.with_token(&super::auth::good_token(id)).await;
        peer.expect_welcome(id).await;
        peer
    }
}

/// A network whose relay reloads a relay.toml of its own (the native relay's, started by
/// [`TestRelay::reloading`]).
pub trait Reloads: Network {
    /// The file the relay reloads when it changes.
    fn relay_toml(&self) -> &std::path::Path;

    /// What the relay's reloads have done so far.
    fn reloads(&self) -> gsio_relay::state::ReloadStatus;
}

fn relay_toml_of(relay: &TestRelay) -> &std::path::Path {
    relay
        .relay_toml
        .as_deref()
        .expect("a relay started by TestRelay::reloading")
}

/// What a scenario asks of a peer beyond [`Peer`]: the steps each front does its own way.
#[allow(async_fn_in_trait)]
pub trait FrontPeer: Peer {
    /// Sends an envelope with only its type, and its payload when given, and every other field
    /// absent (WebSocket: missing from the object; gRPC: proto3 defaults, absent on the wire).
    async fn send_sparse(&mut self, message_type: &str, payload: Option<&str>);

    /// Sends one envelope per payload, back to back, without waiting for any to be written.
    async fn send_burst(&mut self, message_type: &str, sender: &str, payloads: &[String]);

    /// Leaves the network the way a well-behaved client does, checking the relay's side of it.
    async fn leave(self);

    /// Sends an envelope with this `message_id` (`None`: none, absent on WebSocket, empty on
    /// gRPC).
    async fn send_with_id(
        &mut self,
        message_type: &str,
        recipient: &str,
        payload: &str,
        message_id: Option<&str>,
    );

    /// The relay ends this connection for `code`: WebSocket close 1008 with a reason starting
    /// with it; gRPC the status that goes with it (its message starting with it). Envelopes
    /// before the end are skipped.
    async fn expect_ended(self, code: &str);

    /// The next envelope that is not an announcement (`PeerJoined`, `PeerLeft`, `PeersChanged`), as the JSON text a
    /// client of this front would parse: the WebSocket frame itself; for gRPC, the proto's
    /// fields as a JSON object (the payload being JSON text already).
    async fn recv_json(&mut self) -> String;
}

/// A network on WebSocket: the Worker at one path, or a native relay of its own.
pub struct WsNet {
    /// `ws://host:port/path`, without a query.
    pub base: String,
    /// The native relay serving `base`, kept running as long as the network.
    relay: Option<TestRelay>,
}

impl WsNet {
    /// The network at `base` (`ws://host:port/path`, no query), served elsewhere.
    pub fn at(base: String) -> WsNet {
        WsNet { base, relay: None }
    }

    /// A fresh native relay's WebSocket front.
    pub async fn native() -> WsNet {
        WsNet::on(TestRelay::start().await)
    }

    /// A fresh native relay's WebSocket front, the relay reloading a relay.toml of its own.
    pub async fn native_reloading() -> WsNet {
        WsNet::on(TestRelay::reloading().await)
    }

    /// A fresh native relay's WebSocket front, on [`TRUSTING_VARS`].
    pub async fn native_trusting() -> WsNet {
        WsNet::on(trusting_relay().await)
    }

    fn on(relay: TestRelay) -> WsNet {
        WsNet {
            base: format!("{}/", relay.ws_url),
            relay: Some(relay),
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("{}{query}", self.base)
    }

    fn id_url(&self, id: &str) -> String {
        let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        self.url(&format!("?node_id={id}"))
    }
}

impl Network for WsNet {
    type Peer = WsPeer;

    async fn connect_as(&self, id: &str) -> WsPeer {
        WsPeer::connect(&self.id_url(id)).await
    }

    async fn anonymous(&self) -> WsPeer {
        WsPeer::connect(&self.url("")).await
    }

    async fn expect_refused(&self, id: &str, code: &str) {
        let mut peer = WsPeer::connect(&self.id_url(id)).await;
        peer.expect_error(code).await;
        let (close, reason) = peer.expect_close().await;
        assert_eq!(close, 1008, "{id}");
        assert!(reason.starts_with(code), "{id}: {reason}");
    }
}

impl Trusting for WsNet {
    async fn with_token(&self, token: &str) -> WsPeer {
        let offer = format!("gsio.v1, gsio.token.{token}");
        let (peer, chosen) = WsPeer::connect_offering(&self.url(""), &offer).await;
        assert_eq!(
            chosen.as_deref(),
            Some("gsio.v1"),
            "the relay names the protocol"
        );
        peer
    }

    async fn expect_token_refused(&self, token: &str, code: &str) {
        let mut peer = self.with_token(token).await;
        peer.expect_error(code).await;
        peer.expect_ended(code).await;
    }
}

impl FrontPeer for WsPeer {
    async fn expect_ended(mut self, code: &str) {
        let (close, reason) = self.expect_close().await;
        assert_eq!(close, 1008, "{code}: {reason}");
        assert!(reason.starts_with(code), "{code}: {reason}");
    }

    async fn send_sparse(&mut self, message_type: &str, payload: Option<&str>) {
        let message_type = Value::from(message_type);
        let text = match payload {
            Some(payload) => format!(r#"{{"message_type":{message_type},"payload":{payload}}}"#),
            None => format!(r#"{{"message_type":{message_type}}}"#),
        };
        self.send_text(&text).await;
    }

    async fn send_burst(&mut self, message_type: &str, sender: &str, payloads: &[String]) {
        use futures_util::SinkExt;
        for payload in payloads {
            let text = envelope(message_type, sender, "", payload);
            self.ws.feed(Frame::text(text)).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }

    async fn leave(mut self) {
        self.ws.close(None).await.unwrap();
    }

    async fn send_with_id(
        &mut self,
        message_type: &str,
        recipient: &str,
        payload: &str,
        message_id: Option<&str>,
    ) {
        let id = message_id.map_or(String::new(), |id| {
            format!(r#""message_id":{},"#, Value::from(id))
        });
        let text = format!(
            r#"{{"message_type":{},{id}"recipient_id":{},"payload":{payload}}}"#,
            Value::from(message_type),
            Value::from(recipient),
        );
        self.send_text(&text).await;
    }

    async fn recv_json(&mut self) -> String {
        loop {
            let text = self.recv_text().await;
            let got: crate::common::Got = serde_json::from_str(&text).unwrap();
            if crate::common::announced(&got).is_none() {
                return text;
            }
        }
    }
}

/// A network on gRPC: a native relay of its own.
pub struct GrpcNet {
    relay: TestRelay,
}

impl GrpcNet {
    pub async fn native() -> GrpcNet {
        GrpcNet {
            relay: TestRelay::start().await,
        }
    }

    /// On [`TRUSTING_VARS`].
    pub async fn native_trusting() -> GrpcNet {
        GrpcNet {
            relay: trusting_relay().await,
        }
    }

    /// The relay reloading a relay.toml of its own.
    pub async fn native_reloading() -> GrpcNet {
        GrpcNet {
            relay: TestRelay::reloading().await,
        }
    }
}

impl Reloads for WsNet {
    fn relay_toml(&self) -> &std::path::Path {
        relay_toml_of(self.relay.as_ref().expect("a native network"))
    }

    fn reloads(&self) -> gsio_relay::state::ReloadStatus {
        self.relay
            .as_ref()
            .expect("a native network")
            .relay
            .reloads()
    }
}

impl Reloads for GrpcNet {
    fn relay_toml(&self) -> &std::path::Path {
        relay_toml_of(&self.relay)
    }

    fn reloads(&self) -> gsio_relay::state::ReloadStatus {
        self.relay.relay.reloads()
    }
}

impl Reloads for MixedNet {
    fn relay_toml(&self) -> &std::path::Path {
        self.grpc.relay_toml()
    }

    fn reloads(&self) -> gsio_relay::state::ReloadStatus {
        self.grpc.reloads()
    }
}

impl Network for GrpcNet {
    type Peer = GrpcPeer;

    async fn connect_as(&self, id: &str) -> GrpcPeer {
        GrpcPeer::connect(&self.relay.grpc_url, Some(id))
            .await
            .unwrap_or_else(|status| panic!("open a stream as {id}: {status:?}"))
    }

    async fn anonymous(&self) -> GrpcPeer {
        GrpcPeer::connect(&self.relay.grpc_url, None)
            .await
            .unwrap_or_else(|status| panic!("open an anonymous stream: {status:?}"))
    }

    async fn expect_refused(&self, id: &str, code: &str) {
        let status = match GrpcPeer::connect(&self.relay.grpc_url, Some(id)).await {
            Err(status) => status,
            Ok(mut peer) => peer.expect_status().await,
        };
        assert_eq!(status.code(), status_of(code), "{id}: {status:?}");
        assert!(status.message().starts_with(code), "{id}: {status:?}");
    }
}

/// The gRPC status that ends a stream for `code`.
fn status_of(code: &str) -> tonic::Code {
    match code {
        "peer_id_in_use" => tonic::Code::AlreadyExists,
        "invalid_peer_id" | "reserved_peer_id" => tonic::Code::InvalidArgument,
        "rate_limited" | "slow_consumer" => tonic::Code::ResourceExhausted,
        "key_not_allowed" => tonic::Code::PermissionDenied,
        "authentication_required"
        | "invalid_signature"
        | "invalid_token"
        | "token_expired"
        | "wrong_audience"
        | "identification_timeout" => tonic::Code::Unauthenticated,
        other => panic!("no gRPC status known for {other}"),
    }
}

impl Trusting for GrpcNet {
    async fn with_token(&self, token: &str) -> GrpcPeer {
        let channel = super::grpc_channel(&self.relay.grpc_url).await;
        GrpcPeer::with_metadata(channel, &[("authorization", format!("Bearer {token}"))])
            .await
            .unwrap_or_else(|status| panic!("open a stream with a token: {status:?}"))
    }

    async fn expect_token_refused(&self, token: &str, code: &str) {
        let channel = super::grpc_channel(&self.relay.grpc_url).await;
        let metadata = [("authorization", format!("Bearer {token}"))];
        let status = match GrpcPeer::with_metadata(channel, &metadata).await {
            Err(status) => status,
            Ok(mut peer) => peer.expect_status().await,
        };
        assert_eq!(status.code(), status_of(code), "{status:?}");
        assert!(status.message().starts_with(code), "{status:?}");
    }
}

impl Trusting for MixedNet {
    async fn with_token(&self, token: &str) -> AnyPeer {
        if self.next_on_ws() {
            AnyPeer::Ws(self.ws.with_token(token).await)
        } else {
            AnyPeer::Grpc(self.grpc.with_token(token).await)
        }
    }

    async fn expect_token_refused(&self, token: &str, code: &str) {
        if self.next_on_ws() {
            self.ws.expect_token_refused(token, code).await
        } else {
            self.grpc.expect_token_refused(token, code).await
        }
    }
}

impl FrontPeer for GrpcPeer {
    async fn expect_ended(mut self, code: &str) {
        let status = self.expect_status().await;
        assert_eq!(status.code(), status_of(code), "{status:?}");
        assert!(status.message().starts_with(code), "{status:?}");
    }

    async fn send_sparse(&mut self, message_type: &str, payload: Option<&str>) {
        self.send_with_id(message_type, "", payload.unwrap_or(""), None)
            .await;
    }

    async fn send_burst(&mut self, message_type: &str, sender: &str, payloads: &[String]) {
        // The request channel holds 1024 envelopes: none of these waits for the relay.
        for payload in payloads {
            self.send(message_type, sender, "", payload).await;
        }
    }

    async fn leave(mut self) {
        // Closing the sending side leaves; what is queued arrives, then the stream ends with OK.
        let (unused, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, unused));
        let status = self.expect_status().await;
        assert_eq!(status.code(), tonic::Code::Ok, "{status:?}");
    }

    async fn send_with_id(
        &mut self,
        message_type: &str,
        recipient: &str,
        payload: &str,
        message_id: Option<&str>,
    ) {
        self.send_pb(crate::common::pb_envelope(
            message_type,
            message_id.unwrap_or(""),
            "",
            recipient,
            payload,
        ))
        .await;
    }

    async fn recv_json(&mut self) -> String {
        let got = self.recv_skipping_announcements().await;
        format!(
            r#"{{"message_type":{},"message_id":{},"sender_id":{},"recipient_id":{},"payload":{}}}"#,
            Value::from(got.message_type),
            Value::from(got.message_id),
            Value::from(got.sender_id),
            Value::from(got.recipient_id),
            if got.payload.is_empty() {
                "null"
            } else {
                &got.payload
            },
        )
    }
}

/// A native relay whose peers alternate between the fronts, in the order they connect: the
/// first WebSocket, the second gRPC, and so on, so every scenario crosses fronts both ways.
pub struct MixedNet {
    ws: WsNet,
    grpc: GrpcNet,
    /// How many connections this network has handed out (or tried to).
    connections: Cell<usize>,
}

impl MixedNet {
    pub async fn native() -> MixedNet {
        MixedNet::on(TestRelay::start().await)
    }

    /// On [`TRUSTING_VARS`].
    pub async fn native_trusting() -> MixedNet {
        MixedNet::on(trusting_relay().await)
    }

    /// The relay reloading a relay.toml of its own.
    pub async fn native_reloading() -> MixedNet {
        MixedNet::on(TestRelay::reloading().await)
    }

    fn on(relay: TestRelay) -> MixedNet {
        MixedNet {
            ws: WsNet {
                base: format!("{}/", relay.ws_url),
                relay: None,
            },
            grpc: GrpcNet { relay },
            connections: Cell::new(0),
        }
    }

    /// True when the next connection is on WebSocket.
    fn next_on_ws(&self) -> bool {
        let n = self.connections.get();
        self.connections.set(n + 1);
        n % 2 == 0
    }
}

impl Network for MixedNet {
    type Peer = AnyPeer;

    async fn connect_as(&self, id: &str) -> AnyPeer {
        if self.next_on_ws() {
            AnyPeer::Ws(self.ws.connect_as(id).await)
        } else {
            AnyPeer::Grpc(self.grpc.connect_as(id).await)
        }
    }

    async fn anonymous(&self) -> AnyPeer {
        if self.next_on_ws() {
            AnyPeer::Ws(self.ws.anonymous().await)
        } else {
            AnyPeer::Grpc(self.grpc.anonymous().await)
        }
    }

    async fn expect_refused(&self, id: &str, code: &str) {
        if self.next_on_ws() {
            self.ws.expect_refused(id, code).await
        } else {
            self.grpc.expect_refused(id, code).await
        }
    }
}

impl FrontPeer for AnyPeer {
    async fn expect_ended(self, code: &str) {
        match self {
            AnyPeer::Ws(p) => p.expect_ended(code).await,
            AnyPeer::Grpc(p) => p.expect_ended(code).await,
        }
    }

    async fn send_sparse(&mut self, message_type: &str, payload: Option<&str>) {
        match self {
            AnyPeer::Ws(p) => p.send_sparse(message_type, payload).await,
            AnyPeer::Grpc(p) => p.send_sparse(message_type, payload).await,
        }
    }

    async fn send_burst(&mut self, message_type: &str, sender: &str, payloads: &[String]) {
        match self {
            AnyPeer::Ws(p) => p.send_burst(message_type, sender, payloads).await,
            AnyPeer::Grpc(p) => p.send_burst(message_type, sender, payloads).await,
        }
    }

    async fn leave(self) {
        match self {
            AnyPeer::Ws(p) => p.leave().await,
            AnyPeer::Grpc(p) => p.leave().await,
        }
    }

    async fn send_with_id(
        &mut self,
        message_type: &str,
        recipient: &str,
        payload: &str,
        message_id: Option<&str>,
    ) {
        match self {
            AnyPeer::Ws(p) => {
                p.send_with_id(message_type, recipient, payload, message_id)
                    .await
            }
            AnyPeer::Grpc(p) => {
                p.send_with_id(message_type, recipient, payload, message_id)
                    .await
            }
        }
    }

    async fn recv_json(&mut self) -> String {
        match self {
            AnyPeer::Ws(p) => p.recv_json().await,
            AnyPeer::Grpc(p) => p.recv_json().await,
        }
    }
}

pub async fn welcome_announces_id_peers_and_limits<N: Network>(net: N) {
    let _a = net.peer("alpha").await;
    let mut b = net.connect_as("beta").await;
    let welcome = b.expect_welcome("beta").await;
    assert_eq!(welcome["peers"], serde_json::json!(["alpha"]));
    assert_eq!(welcome["peer_count"], 1);
    // The shipped relay.toml's limits, as the README documents them.
    assert_eq!(welcome["limits"]["max_message_bytes"], 1_048_576);
    assert_eq!(welcome["limits"]["queue_capacity"], 4096);
}

/// `Welcome.peers` is sorted by the relay: peers joined in an order that is neither sorted nor
/// reversed, and the list compared as received with the sorted list written out.
pub async fn welcome_lists_the_other_peers_sorted<N: Network>(net: N) {
    let mut peers = Vec::new();
    for id in [
        "mike", "alpha", "zulu", "kilo", "bravo", "yankee", "echo", "oscar",
    ] {
        peers.push(net.peer(id).await);
    }
    let mut newcomer = net.connect_as("newcomer").await;
    let welcome = newcomer.expect_welcome("newcomer").await;
    assert_eq!(
        welcome["peers"],
        serde_json::json!(["alpha", "bravo", "echo", "kilo", "mike", "oscar", "yankee", "zulu"])
    );
    assert_eq!(welcome["peer_count"], 8);
    assert_eq!(welcome["peers_truncated"], false);
}

pub async fn identity_from_first_envelope<N: Network>(net: N) {
    let mut a = net.anonymous().await;
    a.send("Ping", "n1", "", r#"{"seq":1}"#).await;
    a.expect_welcome("n1").await;
    let echo = a.recv().await;
    assert_eq!(
        (echo.message_type.as_str(), echo.sender_id.as_str()),
        ("Ping", "n1")
    );
    // The id is now fixed: another one is spoofing.
    a.send("Ping", "n2", "", "1").await;
    a.expect_error("spoofed_sender").await;
}

pub async fn identity_required_before_any_routing<N: Network>(net: N) {
    let mut watcher = net.peer("watcher").await;
    let mut a = net.anonymous().await;
    a.send("NodeAnnounce", "", "", "1").await;
    let error = a.expect_error("identity_required").await;
    assert_eq!(error.recipient_id, "");
    assert_eq!(error.payload_json()["message_type"], "NodeAnnounce");
    // Still open, and can still name itself. What the watcher receives next is the join and
    // this second envelope: the first one went nowhere (it would have arrived before them).
    a.send("NodeAnnounce", "late", "", "2").await;
    a.expect_welcome("late").await;
    let joined = watcher.recv().await;
    assert_eq!(
        (
            joined.message_type.as_str(),
            joined.payload_json()["peer_id"].as_str()
        ),
        ("PeerJoined", Some("late"))
    );
    watcher.expect_sentinel("NodeAnnounce", "2").await;
}

pub async fn echo_returns_to_sender_only<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    assert_eq!(a.recv().await.message_type, "PeerJoined");
    a.send("Ping", "a", "", r#"{"t":1}"#).await;
    let got = a.recv().await;
    assert_eq!(
        (
            got.message_type.as_str(),
            got.sender_id.as_str(),
            got.payload.as_str()
        ),
        ("Ping", "a", r#"{"t":1}"#)
    );
    nothing_else_from(&mut a, "a", &mut b, "b").await;
}

pub async fn broadcast_reaches_every_other_peer<N: Network>(net: N) {
    // a, b and c, each having heard of the later joins.
    let (mut a, mut b, mut c) = three_joined(&net).await;
    // Unusual spacing, a trailing zero, an integer beyond 64 bits: re-encoding would change it.
    let payload = r#"{ "n" : 1.50, "big": 12345678901234567890123 }"#;
    a.send("NodeAnnounce", "a", "", payload).await;
    for peer in [&mut b, &mut c] {
        let got = peer.recv().await;
        assert_eq!(
            (
                got.message_type.as_str(),
                got.sender_id.as_str(),
                got.recipient_id.as_str(),
                got.payload.as_str()
            ),
            ("NodeAnnounce", "a", "", payload)
        );
    }
    // Then nothing: never its own broadcast back to a; b and c got it once.
    nothing_else_back(&mut a, "a").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
    nothing_else_from(&mut a, "a", &mut c, "c").await;
}

pub async fn directed_reaches_only_the_recipient<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let mut c = net.peer("c").await;
    a.send("LedgerSyncResponse", "a", "c", r#"{"block":7}"#)
        .await;
    let got = c.recv_skipping_announcements().await;
    assert_eq!(
        (
            got.message_type.as_str(),
            got.sender_id.as_str(),
            got.recipient_id.as_str()
        ),
        ("LedgerSyncResponse", "a", "c")
    );
    assert_eq!(got.payload, r#"{"block":7}"#);
    b.expect_presence(&["c"], &[]).await;
    a.expect_presence(&["b", "c"], &[]).await;
    nothing_else_back(&mut a, "a").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
}

pub async fn directed_to_unknown_or_empty_recipient_is_an_error<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    a.send("LedgerSyncResponse", "a", "nobody", "1").await;
    let error = a.expect_error("unknown_recipient").await;
    assert_eq!(error.payload_json()["message_type"], "LedgerSyncResponse");
    assert_eq!(error.recipient_id, "a");
    a.send("LedgerSyncResponse", "a", "", "1").await;
    a.expect_error("missing_recipient").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
}

pub async fn spoofed_sender_is_refused<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    a.send("NodeAnnounce", "b", "", "1").await;
    let error = a.expect_error("spoofed_sender").await;
    assert_eq!(error.payload_json()["message_type"], "NodeAnnounce");
    a.send("NodeAnnounce", "relay", "", "1").await;
    a.expect_error("spoofed_sender").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
}

pub async fn empty_sender_is_filled_in<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    a.send_sparse("NodeAnnounce", Some("[1,2]")).await;
    let got = b.recv().await;
    assert_eq!(
        (
            got.message_type.as_str(),
            got.sender_id.as_str(),
            got.recipient_id.as_str()
        ),
        ("NodeAnnounce", "a", "")
    );
    assert_eq!(got.payload, "[1,2]");
    assert_eq!(a.recv().await.message_type, "PeerJoined"); // b
    nothing_else_back(&mut a, "a").await;
}

pub async fn peers_learn_of_joins_and_leaves<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let b = net.peer("b").await;
    let joined = a.recv().await;
    assert_eq!(
        (joined.message_type.as_str(), joined.sender_id.as_str()),
        ("PeerJoined", "relay")
    );
    assert_eq!(joined.payload_json()["peer_id"], "b");
    b.leave().await;
    let left = a.recv().await;
    assert_eq!(
        (left.message_type.as_str(), left.sender_id.as_str()),
        ("PeerLeft", "relay")
    );
    assert_eq!(left.payload_json()["peer_id"], "b");
}

pub async fn second_connection_with_a_live_id_is_refused<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    net.expect_refused("a", "peer_id_in_use").await;
    // The first connection keeps its id and works.
    a.send("Ping", "a", "", "1").await;
    assert_eq!(a.recv().await.message_type, "Ping");
    // Claiming it through the first envelope is refused too, and that connection stays open.
    let mut second = net.anonymous().await;
    second.send("Ping", "a", "", "1").await;
    second.expect_error("peer_id_in_use").await;
    second.send("Ping", "other", "", "1").await;
    second.expect_welcome("other").await;
}

/// "The id is free again as soon as its holder disconnects": once another peer has seen
/// `PeerLeft` for it, the very next claim of the id succeeds, at once (no retry that would hide
/// a delay): after a client's own leaving, after a connection dropped without a word, and by
/// first envelope as well as at connect.
pub async fn an_id_is_free_again_once_its_holder_has_left<N: Network>(net: N) {
    let mut watcher = net.peer("watcher").await;
    async fn seen_leaving<P: Peer>(watcher: &mut P, id: &str, event: &str) {
        let got = watcher.recv().await;
        assert_eq!(
            (
                got.message_type.as_str(),
                got.payload_json()["peer_id"].as_str()
            ),
            (event, Some(id))
        );
    }
    let holder = net.peer("holder").await;
    seen_leaving(&mut watcher, "holder", "PeerJoined").await;
    holder.leave().await;
    seen_leaving(&mut watcher, "holder", "PeerLeft").await;
    // Claimed at connect: its Welcome, not peer_id_in_use.
    let holder = net.peer("holder").await;
    seen_leaving(&mut watcher, "holder", "PeerJoined").await;
    // Gone without leaving: the socket or stream just dropped.
    drop(holder);
    seen_leaving(&mut watcher, "holder", "PeerLeft").await;
    // Claimed by first envelope.
    let mut holder = net.anonymous().await;
    holder.send("Ping", "holder", "", "1").await;
    holder.expect_welcome("holder").await;
    holder.expect_sentinel("Ping", "1").await;
    seen_leaving(&mut watcher, "holder", "PeerJoined").await;
}

pub async fn invalid_ids_are_refused<N: Network>(net: N) {
    let long = "x".repeat(129);
    for (id, code) in [
        ("bad id", "invalid_peer_id"),
        (long.as_str(), "invalid_peer_id"),
        ("relay", "reserved_peer_id"),
    ] {
        net.expect_refused(id, code).await;
    }
    let mut anon = net.anonymous().await;
    anon.send("Ping", &long, "", "1").await;
    anon.expect_error("invalid_peer_id").await;
    anon.send("Ping", "bad id", "", "1").await;
    anon.expect_error("invalid_peer_id").await;
    anon.send("Ping", "relay", "", "1").await;
    anon.expect_error("reserved_peer_id").await;
}

pub async fn oversized_message_is_refused_and_the_connection_survives<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    assert_eq!(a.recv().await.message_type, "PeerJoined"); // b
    let big = format!("\"{}\"", "x".repeat(1_048_576));
    a.send("NodeAnnounce", "a", "", &big).await;
    let error = a.expect_error("message_too_large").await;
    assert!(error.payload_json()["message"]
        .as_str()
        .unwrap()
        .contains("1048576"));
    // The connection survives, and the refused envelope reached nobody.
    nothing_else_back(&mut a, "a").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
}

/// Payloads that a JSON-tree or float-based relay would damage.
pub const FIDELITY_PAYLOADS: &[&str] = &[
    "42",
    "-7",
    "0",
    "9007199254740993",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1.5",
    "1.0",
    "6.02214076e23",
    "null",
    "true",
    r#""""#,
    r#""ünïcödé ✓ 日本語 🚀""#,
    r#""escapes: \" \\ \/ \b \f \n \r \t \u0000 \ud83d\ude80""#,
    r#"{"nested":{"deeper":[1,[2,[3,[4,{"x":null}]]]]},"empty":{},"list":[]}"#,
    r#"[{"a":1},{"a":1}]"#,
];

/// [`FIDELITY_PAYLOADS`] and a payload nested 2000 deep.
fn fidelity_payloads() -> Vec<String> {
    let mut payloads: Vec<String> = FIDELITY_PAYLOADS.iter().map(|p| p.to_string()).collect();
    payloads.push(format!("{}1{}", "[".repeat(2000), "]".repeat(2000)));
    payloads
}

pub async fn payloads_arrive_exactly<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    assert_eq!(a.recv().await.message_type, "PeerJoined"); // b
    for payload in fidelity_payloads() {
        a.send("NodeAnnounce", "a", "", &payload).await;
        let got = b.recv().await;
        assert_eq!(
            (got.message_type.as_str(), got.sender_id.as_str()),
            ("NodeAnnounce", "a")
        );
        assert_eq!(
            got.payload,
            payload,
            "payload {}",
            &payload[..payload.len().min(40)]
        );
    }
    // Absent payload means null.
    a.send_sparse("Ping", None).await;
    let echo = a.recv().await;
    assert_eq!(echo.message_type, "Ping");
    assert_eq!(echo.payload_json(), Value::Null);
}

pub async fn messages_from_one_sender_arrive_in_order<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    for seq in 0..300 {
        a.send("LedgerSyncResponse", "a", "b", &seq.to_string())
            .await;
    }
    for seq in 0..300 {
        assert_eq!(b.recv().await.payload, seq.to_string());
    }
}

/// A thousand envelopes sent back to back, without waiting for any delivery, reach a peer that
/// reads: every one, once, in order, and none back to the sender. A thousand is far below the
/// shipped queue capacity (4096), so this is not about slow consumers: whether a burst beyond
/// the queue is cut off depends on how fast the reader drains it, and the slow-consumer policy
/// has its own tests with a small queue (`tests/lifecycle.rs`).
pub async fn a_burst_of_a_thousand_arrives_whole_and_in_order<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let payloads: Vec<String> = (0..1000).map(|seq| seq.to_string()).collect();
    // All sent at once, without waiting for any delivery.
    a.send_burst("NodeAnnounce", "a", &payloads).await;
    for seq in 0..1000 {
        assert_eq!(b.recv().await.payload, seq.to_string());
    }
    assert_eq!(a.recv().await.message_type, "PeerJoined"); // b
    nothing_else_back(&mut a, "a").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
}

pub async fn malformed_frames_get_errors_and_the_connection_survives(net: WsNet) {
    let mut a = net.peer("a").await;
    let cases: &[(&str, &str)] = &[
        ("this is not json", "invalid_json"),
        (r#"{"message_type":"Ping""#, "invalid_json"),
        ("[1,2,3]", "not_an_object"),
        ("42", "not_an_object"),
        ("{}", "missing_message_type"),
        (
            r#"{"message_type":"","sender_id":"a"}"#,
            "missing_message_type",
        ),
        (r#"{"message_type":5,"sender_id":"a"}"#, "invalid_field"),
        (
            r#"{"message_type":"Ping","sender_id":["a"]}"#,
            "invalid_field",
        ),
        (
            r#"{"message_type":"Ping","recipient_id":7}"#,
            "invalid_field",
        ),
        (
            r#"{"message_type":"Ping","sender_id":"a","colour":"red"}"#,
            "unknown_field",
        ),
    ];
    for (text, code) in cases {
        a.send_text(text).await;
        let error = a.recv().await;
        assert_eq!(error.error_code(), *code, "{text}");
        assert_eq!(error.recipient_id, "a");
        assert!(!error.payload_json()["message"].as_str().unwrap().is_empty());
    }
    a.send_frame(binary(&[1, 2, 3])).await;
    a.expect_error("unsupported_frame").await;
    a.send("Ping", "a", "", "\"still here\"").await;
    assert_eq!(a.recv().await.payload, "\"still here\"");
}

/// A WebSocket-to-WebSocket delivery the relay did not have to change is the sender's frame
/// text, byte for byte.
pub async fn unchanged_frames_are_forwarded_verbatim(net: WsNet) {
    // a, b and c, each having heard of the later joins: what follows is only frames.
    let (mut a, mut b, mut c) = three_joined(&net).await;
    // Unusual spacing and key order: a relay that re-encodes would change it.
    let text = r#"{ "payload" : {"n": 1.50, "big": 12345678901234567890123},"message_type":"NodeAnnounce", "message_id" : "m-verbatim", "sender_id":"a","recipient_id":"" }"#;
    a.send_text(text).await;
    for peer in [&mut b, &mut c] {
        assert_eq!(peer.recv_text().await, text);
    }
    for payload in fidelity_payloads() {
        let text = envelope("NodeAnnounce", "a", "", &payload);
        a.send_text(&text).await;
        for peer in [&mut b, &mut c] {
            assert_eq!(
                peer.recv_text().await,
                text,
                "payload {}",
                &payload[..payload.len().min(40)]
            );
        }
    }
    // Then nothing: never its own broadcasts back to a.
    nothing_else_back(&mut a, "a").await;
}

/// Peers `a`, `b` and `c`, joined in that order, with the announcements of the later joins
/// already read (two at `a`, one at `b`).
async fn three_joined<N: Network>(net: &N) -> (N::Peer, N::Peer, N::Peer) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let c = net.peer("c").await;
    let announced = [
        a.expect_presence(&["b", "c"], &[]).await,
        b.expect_presence(&["c"], &[]).await,
    ];
    for got in announced.iter().flatten() {
        assert!(
            !got.message_id.is_empty(),
            "the relay's envelopes carry ids: {got:?}"
        );
    }
    (a, b, c)
}

pub async fn auto_routes_addressed_to_one_and_unaddressed_to_all<N: Network>(net: N) {
    let (mut a, mut b, mut c) = three_joined(&net).await;
    // Addressed: the named peer only.
    a.send("NodeListRequest", "a", "c", "1").await;
    let got = c.recv().await;
    assert_eq!(
        (got.message_type.as_str(), got.recipient_id.as_str()),
        ("NodeListRequest", "c")
    );
    // Unaddressed: every other peer, never the sender.
    a.send("NodeListRequest", "a", "", "2").await;
    assert_eq!(b.recv().await.payload, "2");
    assert_eq!(c.recv().await.payload, "2");
    // Addressed to nobody connected: the same error as directed, and nobody receives it.
    a.send("NodeListRequest", "a", "ghost", "3").await;
    let error = a.expect_error("unknown_recipient").await;
    assert_eq!(error.payload_json()["message_type"], "NodeListRequest");
    // A type without a rule follows the shipped default, auto, too.
    b.send("SomethingNew", "b", "a", "4").await;
    assert_eq!(a.recv().await.payload, "4");
    // Nothing else anywhere: not the addressed request at b, no envelope back to its sender,
    // nothing of b's at c.
    nothing_else_back(&mut a, "a").await;
    nothing_else_back(&mut b, "b").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
    nothing_else_from(&mut a, "a", &mut c, "c").await;
    nothing_else_from(&mut b, "b", &mut c, "c").await;
}

pub async fn message_ids_are_kept_or_assigned_once<N: Network>(net: N) {
    let (mut a, mut b, mut c) = three_joined(&net).await;
    // Given: delivered exactly, to every recipient.
    let given = "4f9c2c1e-8b1a-4d3e-9f00-1234567890ab";
    a.send_with_id("NodeAnnounce", "", "1", Some(given)).await;
    assert_eq!(b.recv().await.message_id, given);
    assert_eq!(c.recv().await.message_id, given);
    // The relay does not remember ids: the same id again is neither refused nor dropped.
    a.send_with_id("NodeAnnounce", "", "1.5", Some(given)).await;
    for peer in [&mut b, &mut c] {
        let again = peer.recv().await;
        assert_eq!(
            (again.message_id.as_str(), again.payload.as_str()),
            (given, "1.5")
        );
    }
    // Not given (or empty): one id assigned, the same for every recipient.
    for id in [None, Some("")] {
        a.send_with_id("NodeAnnounce", "", "2", id).await;
        let (at_b, at_c) = (b.recv().await, c.recv().await);
        assert_eq!(at_b.message_id.len(), 36, "a UUID: {at_b:?}");
        assert_eq!(at_b.message_id, at_c.message_id);
        assert_eq!(at_b.sender_id, "a");
    }
    // Echo too.
    a.send_with_id("Ping", "", "3", None).await;
    assert_eq!(a.recv().await.message_id.len(), 36);
}

pub async fn errors_name_the_message_id_they_answer<N: Network>(net: N) {
    let mut a = net.peer("a").await;
    a.send_with_id("LedgerSyncResponse", "ghost", "1", Some("req-7"))
        .await;
    let error = a.expect_error("unknown_recipient").await;
    assert_eq!(error.payload_json()["message_id"], "req-7");
    assert!(!error.message_id.is_empty() && error.message_id != "req-7");
    a.send_with_id("NodeAnnounce", "", "1", Some("has space"))
        .await;
    let error = a.expect_error("invalid_message_id").await;
    assert_eq!(error.payload_json()["message_type"], "NodeAnnounce");
    a.send_with_id("NodeAnnounce", "", "1", Some(&"x".repeat(129)))
        .await;
    a.expect_error("invalid_message_id").await;
    // The connection stays usable.
    a.send_with_id("Ping", "", "2", Some("m-ok")).await;
    assert_eq!(a.recv().await.message_id, "m-ok");
}

/// GSIO-Net's eight message types, addressed and not, with and without a sender-given id,
/// through the shipped `relay.toml`: every envelope a node receives parses as gsio-node's own
/// `P2PMessage` (mirrored in [`crate::common::gsio_net`]), announcements reach every other
/// node, requests reach the node they name (or all when they name none), and responses reach
/// only their recipient (an unaddressed response is an error to its sender).
pub async fn gsio_net_messages_route_as_shipped_and_parse_as_p2p_messages<N: Network>(net: N) {
    use crate::common::gsio_net::{MessageType, P2PMessage};
    let (mut a, mut b, mut c) = three_joined(&net).await;
    let mut n = 0;
    for kind in MessageType::ALL {
        let name = kind.name();
        for addressed in [true, false] {
            for with_id in [true, false] {
                n += 1;
                let id = format!("{n:08x}-0000-4000-8000-000000000000");
                let payload = format!(r#"{{"n":{n},"big":123456789012345678901}}"#);
                let recipient = if addressed { "b" } else { "" };
                a.send_with_id(name, recipient, &payload, with_id.then_some(id.as_str()))
                    .await;
                let to_all = kind.is_announcement() || (kind.is_request() && !addressed);
                let receivers: Vec<&mut N::Peer> = match (to_all, addressed) {
                    (true, _) => vec![&mut b, &mut c],
                    (false, true) => vec![&mut b],
                    (false, false) => {
                        let error = a.expect_error("missing_recipient").await;
                        assert_eq!(error.payload_json()["message_type"], name);
                        continue;
                    }
                };
                let mut seen_id = None;
                for peer in receivers {
                    let text = peer.recv_json().await;
                    let got: P2PMessage = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("not a P2PMessage ({e}): {text}"));
                    assert_eq!(got.message_type, kind, "{text}");
                    assert_eq!(
                        (got.sender_id.as_str(), got.recipient_id.as_str()),
                        ("a", recipient)
                    );
                    assert_eq!(got.payload["n"], n, "{text}");
                    if with_id {
                        assert_eq!(got.message_id, id, "{text}");
                    } else {
                        assert_eq!(got.message_id.len(), 36, "{text}");
                    }
                    assert!(seen_id.get_or_insert(got.message_id.clone()) == &got.message_id);
                }
            }
        }
    }
    nothing_else_back(&mut a, "a").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
    nothing_else_from(&mut a, "a", &mut c, "c").await;
}

/// "Nothing sent from the network can panic the relay", over WebSocket: thousands of mutated
/// envelopes (deterministic, from [`Mutator`](crate::common::mutate::Mutator)) as text frames and
/// noise as binary frames, read back concurrently. Every answer is an envelope, the connection
/// survives them all (its sentinel echo arrives after them), and the relay still routes between
/// two fresh peers. `tests/hostile.rs` runs this against a native relay whose threads report any
/// panic, even one a task would have swallowed.
pub async fn mutated_frames_never_break_the_relay(net: WsNet) {
    use futures_util::{SinkExt, StreamExt};
    const TEXT_FRAMES: usize = 2000;
    const SEEDS: &[&str] = &[
        r#"{"message_type":"NodeAnnounce","message_id":"m-1","sender_id":"fuzz","recipient_id":"","payload":{"node_id":"fuzz","k":[1,2.5,"x\u00e9",null,true]}}"#,
        r#"{"message_type":"LedgerSyncResponse","sender_id":"fuzz","recipient_id":"fuzz","payload":123456789012345678901}"#,
        r#"{"message_type":"NodeListRequest","recipient_id":"ghost","payload":[[[{"a":"\ud83d\ude80"}]]]}"#,
        r#"{"message_type":"Ping","message_id":null,"sender_id":null,"payload":"\"\\\/\b\f\n\r\t"}"#,
        r#"{"message_type":"Ping"}"#,
    ];
    const ALPHABET: &[u8] = b"{}[]\":,.-+eE0123456789 \\/untrlfasx\x00\x7f";
    let sentinel_id = "fuzz-sentinel";
    let fuzz = net.peer("fuzz").await;
    let (mut sink, mut stream) = fuzz.ws.split();
    let reader = tokio::spawn(async move {
        let mut answers = 0usize;
        loop {
            let frame = tokio::time::timeout(crate::common::ARRIVES, stream.next())
                .await
                .unwrap_or_else(|_| panic!("no answer within the limit after {answers}"));
            let text = match frame {
                Some(Ok(Frame::Text(text))) => text,
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
                other => panic!("the fuzzed connection ended after {answers} answers: {other:?}"),
            };
            let got: crate::common::Got = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("the relay sent a non-envelope ({e}): {text}"));
            if got.message_id == sentinel_id {
                return answers;
            }
            answers += 1;
        }
    });
    let mut mutator = crate::common::mutate::Mutator::new(0x6773_696f_7265_6c79);
    for n in 0..TEXT_FRAMES {
        let seed = mutator.pick(SEEDS).as_bytes();
        let bytes = mutator.mutate(seed, ALPHABET);
        // A text frame carries UTF-8; invalid sequences become U+FFFD.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        sink.feed(Frame::text(text)).await.unwrap();
        if n % 20 == 0 {
            let noise = mutator.noise(64);
            sink.feed(binary(&noise)).await.unwrap();
        }
        if n % 64 == 0 {
            sink.flush().await.unwrap();
        }
    }
    let sentinel = format!(
        r#"{{"message_type":"Ping","message_id":"{sentinel_id}","sender_id":"fuzz","payload":1}}"#
    );
    sink.send(Frame::text(sentinel)).await.unwrap();
    let answers = reader.await.unwrap();
    // Most mutations break the envelope, and every broken one is answered with an Error.
    assert!(
        answers > TEXT_FRAMES / 2,
        "only {answers} answers to {TEXT_FRAMES} frames"
    );
    let mut x = net.peer("after-x").await;
    let mut y = net.peer("after-y").await;
    x.send("LedgerSyncResponse", "after-x", "after-y", "\"routed\"")
        .await;
    let got = y.recv_skipping_announcements().await;
    assert_eq!(
        (got.sender_id.as_str(), got.payload.as_str()),
        ("after-x", "\"routed\"")
    );
}

/// A reload that changes the rules a `Welcome` announces (`Ping` from echo to broadcast): every
/// connected peer receives `ConfigChanged` from the relay, to everyone, carrying what a newcomer's
/// `Welcome` now says, before anything routed by the new rules; the next `Ping` is broadcast. A
/// reload that changes only keys peers are not told about sends nothing (the sentinels).
pub async fn config_changed_reaches_every_peer_when_the_announced_rules_change<
    N: Network + Reloads,
>(
    net: N,
) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    assert_eq!(a.recv().await.message_type, "PeerJoined");
    let path = net.relay_toml().to_owned();
    let text = std::fs::read_to_string(&path).unwrap();
    let louder = text.replace("Ping = \"echo\"", "Ping = \"broadcast\"");
    assert_ne!(louder, text);
    std::fs::write(&path, &louder).unwrap();
    let mut told = Vec::new();
    for peer in [&mut a, &mut b] {
        told.push(super::expect_config_changed(peer, "broadcast").await);
    }
    assert_eq!(told[0], told[1]);
    let mut c = net.connect_as("c").await;
    let welcome = c.expect_welcome("c").await;
    assert_eq!(
        told[0],
        serde_json::json!({"limits": welcome["limits"], "routing": welcome["routing"]})
    );
    assert_eq!(told[0]["routing"]["rules"]["Ping"], "broadcast");
    assert_eq!(a.recv().await.message_type, "PeerJoined");
    assert_eq!(b.recv().await.message_type, "PeerJoined");
    a.send("Ping", "a", "", "\"loud\"").await;
    for peer in [&mut b, &mut c] {
        let got = peer.recv().await;
        assert_eq!(
            (got.message_type.as_str(), got.payload.as_str()),
            ("Ping", "\"loud\"")
        );
    }

    // Only a key peers are not told about: no ConfigChanged before the sentinels.
    let quiet = louder.replace("welcome_peers_max = 100", "welcome_peers_max = 99");
    assert_ne!(quiet, louder);
    std::fs::write(&path, &quiet).unwrap();
    // Once the relay has read it (polled, bounded), nothing is queued for anyone: each peer's
    // next envelope is a sentinel sent after the reload.
    let deadline = tokio::time::Instant::now() + super::ARRIVES;
    while net.reloads().succeeded < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            net.reloads()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(net.reloads().failed, 0);
    nothing_else_from(&mut b, "b", &mut a, "a").await;
    nothing_else_from(&mut a, "a", &mut b, "b").await;
    nothing_else_from(&mut a, "a", &mut c, "c").await;
}

/// What one peer knows of who is connected: its Welcome's `peers`, then every announcement
/// applied in order (a `PeersChanged`'s `left` before its `joined`), with the protocol's rules
/// checked at each: never told of a join of a peer it knows, nor of a leave of one it does not.
/// (Only for Welcomes that list every peer: these scenarios stay under `welcome_peers_max`.)
pub struct View {
    pub who: &'static str,
    pub known: std::collections::BTreeSet<String>,
    /// Every id announced as left, in order.
    pub lefts: Vec<String>,
}

impl View {
    pub fn from_welcome(who: &'static str, welcome: &Value) -> View {
        assert_eq!(welcome["peers_truncated"], false, "{welcome}");
        View {
            who,
            known: welcome["peers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_owned())
                .collect(),
            lefts: Vec::new(),
        }
    }

    /// Applies `got` if it is an announcement (returns false for anything else).
    pub fn apply(&mut self, got: &super::Got) -> bool {
        let Some((left, joined)) = super::announced(got) else {
            return false;
        };
        for id in left {
            assert!(
                self.known.remove(&id),
                "{}: told {id} left, never knew it: {got:?}",
                self.who
            );
            self.lefts.push(id);
        }
        for id in joined {
            assert!(
                self.known.insert(id.clone()),
                "{}: told {id} joined, knew it already: {got:?}",
                self.who
            );
        }
        true
    }

    /// Reads announcements until this peer knows exactly `ids`.
    pub async fn until_known<P: Peer>(&mut self, peer: &mut P, ids: &[&str]) {
        let want: std::collections::BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        while self.known != want {
            let got = peer.recv().await;
            assert!(
                self.apply(&got),
                "{}: expected announcements until it knows {want:?} (knows {:?}); got {got:?}",
                self.who,
                self.known
            );
        }
    }
}

/// A mass connect: twenty peers connect at once while a watcher is there. Each learns of every
/// other exactly once, by its Welcome or by an announcement (never both, never twice), and the
/// watcher of all twenty; then nothing else reaches any of them. However the relay coalesces
/// (natively and on the Worker the twenty land in one or a few windows), this holds.
pub async fn a_burst_of_joins_is_announced_to_each_peer_exactly_once<N: Network>(net: N) {
    const N: usize = 20;
    let mut watcher = net.peer("watcher").await;
    let names: Vec<&'static str> = (0..N)
        .map(|i| &*Box::leak(format!("burst-{i:02}").into_boxed_str()))
        .collect();
    let mut peers = futures_util::future::join_all(names.iter().map(|id| net.connect_as(id))).await;
    let mut views = Vec::new();
    for (peer, id) in peers.iter_mut().zip(&names) {
        let welcome = peer.expect_welcome(id).await;
        views.push(View::from_welcome(id, &welcome));
    }
    let everyone: Vec<&str> = std::iter::once("watcher")
        .chain(names.iter().copied())
        .collect();
    for ((peer, id), view) in peers.iter_mut().zip(&names).zip(&mut views) {
        let others: Vec<&str> = everyone.iter().copied().filter(|o| o != id).collect();
        view.until_known(peer, &others).await;
        assert!(view.lefts.is_empty(), "{id}: {:?}", view.lefts);
    }
    let mut watcher_view = View::from_welcome(
        "watcher",
        &serde_json::json!({"peers": [], "peers_truncated": false}),
    );
    watcher_view.until_known(&mut watcher, &names).await;
    for (peer, id) in peers.iter_mut().zip(&names) {
        nothing_else_from(&mut watcher, "watcher", peer, id).await;
    }
}

/// `x` joins and leaves while `y` joins, all at once, beside a watcher. The watcher never sees
/// `x` joined without seeing it leave, and ends knowing `y` alone; `y` is told `x` left exactly
/// when its Welcome listed `x` (it saw it), and never that `x` joined. (When the three changes
/// fall in one window, the watcher hears nothing of `x` at all: the core's tests hold that, as
/// a test over sockets cannot choose the window.)
pub async fn a_peer_gone_within_a_burst_is_announced_only_to_those_who_saw_it<N: Network>(net: N) {
    let mut watcher = net.peer("watcher").await;
    let mut watcher_view = View::from_welcome(
        "watcher",
        &serde_json::json!({"peers": [], "peers_truncated": false}),
    );
    let x = net.connect_as("x").await;
    let mut y = net.connect_as("y").await;
    let x_left = x.leave();
    let welcome = y.expect_welcome("y");
    let ((), welcome) = futures_util::join!(x_left, welcome);
    let mut y_view = View::from_welcome("y", &welcome);
    y_view.until_known(&mut y, &["watcher"]).await;
    assert!(
        y_view.lefts.iter().all(|id| id == "x"),
        "{:?}",
        y_view.lefts
    );
    watcher_view.until_known(&mut watcher, &["y"]).await;
    // x's leave may still be on its way to the watcher if it was told x joined: read on.
    if watcher_view.lefts.is_empty() {
        nothing_else_from(&mut y, "y", &mut watcher, "watcher").await;
    }
    nothing_else_from(&mut watcher, "watcher", &mut y, "y").await;
}

/// A peer leaves and another connection takes its id at once (the id is free as soon as its
/// holder has left, whether or not the others have been told yet). A watcher that knew the
/// first is told it left, then that the id joined (in two envelopes or one `PeersChanged`), and
/// all of it before the newcomer's first message; never the id joined twice.
pub async fn a_reused_id_is_announced_left_then_joined_before_its_messages<N: Network>(net: N) {
    let mut watcher = net.peer("watcher").await;
    let mut view = View::from_welcome(
        "watcher",
        &serde_json::json!({"peers": [], "peers_truncated": false}),
    );
    let holder = net.peer("holder").await;
    view.until_known(&mut watcher, &["holder"]).await;
    holder.leave().await;
    // Claimed by first envelope, again and again until the relay has seen the first one go.
    let mut again = net.anonymous().await;
    loop {
        again
            .send("LedgerSyncResponse", "holder", "watcher", "\"first\"")
            .await;
        let got = again.recv().await;
        if got.message_type == "Welcome" {
            break;
        }
        assert_eq!(got.error_code(), "peer_id_in_use", "{got:?}");
    }
    loop {
        let got = watcher.recv().await;
        if view.apply(&got) {
            continue;
        }
        assert_eq!(
            (got.message_type.as_str(), got.payload.as_str()),
            ("LedgerSyncResponse", "\"first\""),
            "{got:?}"
        );
        break;
    }
    assert_eq!(
        view.lefts,
        ["holder"],
        "told the first connection left, once"
    );
    assert!(
        view.known.contains("holder"),
        "told the second joined, before its message"
    );
}

// ---- Trust: keys, tokens, the identification deadline, per-identity rates -------------------

/// The `Authenticate` payload answering `challenge` with `key`'s signature for `id`.
fn signed_payload(key: &ed25519_dalek::SigningKey, challenge: &super::Got, id: &str) -> String {
    let text = super::auth::authenticate(key, challenge, id);
    let envelope: Value = serde_json::from_str(&text).unwrap();
    envelope["payload"].to_string()
}

pub async fn key_holders_are_challenged_then_welcomed<N: Trusting>(net: N) {
    let mut observer = net.token_peer("observer").await;
    let mut node = net.anonymous().await;
    let challenge = node.recv().await;
    let payload = challenge.payload_json();
    assert_eq!(
        payload["nonce"].as_str().map(str::len),
        Some(64),
        "{payload}"
    );
    assert_eq!(payload["audience"], "gsio-relay");
    assert_eq!(payload["methods"], serde_json::json!(["signed", "token"]));
    let key = super::auth::key(11);
    let id = super::auth::derived_id(&key);
    node.send(
        "Authenticate",
        &id,
        "",
        &signed_payload(&key, &challenge, &id),
    )
    .await;
    node.expect_welcome(&id).await;
    observer.expect_presence(&[&id], &[]).await;
    node.send("LedgerSyncResponse", &id, "observer", "\"proven\"")
        .await;
    let got = observer.recv().await;
    assert_eq!(
        (got.sender_id.as_str(), got.payload.as_str()),
        (id.as_str(), "\"proven\"")
    );
}

pub async fn a_signature_replayed_on_another_connection_is_refused<N: Trusting>(net: N) {
    let mut observer = net.token_peer("observer").await;
    let key = super::auth::key(12);
    let id = super::auth::derived_id(&key);
    let mut owner = net.anonymous().await;
    let signed = signed_payload(&key, &owner.recv().await, &id);
    let mut thief = net.anonymous().await;
    let _ = thief.recv().await;
    thief.send("Authenticate", &id, "", &signed).await;
    thief.expect_error("invalid_signature").await;
    thief.expect_ended("invalid_signature").await;
    // Its owner still takes the id with it, and nobody heard of the thief.
    owner.send("Authenticate", &id, "", &signed).await;
    owner.expect_welcome(&id).await;
    observer.expect_presence(&[&id], &[]).await;
}

pub async fn tokens_at_connect_or_in_band_are_welcomed<N: Trusting>(net: N) {
    let mut first = net.token_peer("web-1").await;
    let mut late = net.anonymous().await;
    assert_eq!(late.recv().await.message_type, "Challenge");
    let token = super::auth::good_token("web-2");
    late.send("Authenticate", "", "", &format!(r#"{{"token":"{token}"}}"#))
        .await;
    late.expect_welcome("web-2").await;
    first.expect_presence(&["web-2"], &[]).await;
    nothing_else_from(&mut late, "web-2", &mut first, "web-1").await;
}

pub async fn expired_forged_and_misaddressed_tokens_are_refused<N: Trusting>(net: N) {
    use super::auth::{token, SECRET};
    let mut observer = net.token_peer("observer").await;
    let cases = [
        (token(SECRET, "web-1", "gsio-relay", -3600), "token_expired"),
        (
            token(
                "a-different-secret-0123456789abcdef",
                "web-1",
                "gsio-relay",
                300,
            ),
            "invalid_token",
        ),
        (
            token(SECRET, "web-1", "another-relay", 300),
            "wrong_audience",
        ),
    ];
    for (token, code) in &cases {
        net.expect_token_refused(token, code).await;
    }
    // None of them joined: the next peer the observer hears of is this one.
    let mut sender = net.token_peer("sender").await;
    observer.expect_presence(&["sender"], &[]).await;
    nothing_else_from(&mut sender, "sender", &mut observer, "observer").await;
}

pub async fn naming_an_id_without_proof_is_refused<N: Trusting>(net: N) {
    let mut observer = net.token_peer("observer").await;
    let mut anon = net.anonymous().await;
    assert_eq!(anon.recv().await.message_type, "Challenge");
    anon.send("LedgerSyncResponse", "intruder", "observer", "1")
        .await;
    anon.expect_error("authentication_required").await;
    // Still open and anonymous: it may prove itself now.
    let token = super::auth::good_token("latecomer");
    anon.send("Authenticate", "", "", &format!(r#"{{"token":"{token}"}}"#))
        .await;
    anon.expect_welcome("latecomer").await;
    observer.expect_presence(&["latecomer"], &[]).await;
    nothing_else_from(&mut anon, "latecomer", &mut observer, "observer").await;
}

pub async fn a_silent_anonymous_connection_is_closed_at_the_deadline<N: Trusting>(net: N) {
    let mut silent = net.anonymous().await;
    assert_eq!(silent.recv().await.message_type, "Challenge");
    silent.expect_error("identification_timeout").await;
    silent.expect_ended("identification_timeout").await;
}

/// 40 directed envelopes at once over a rate of 1/s with a burst of 5, cut off after 20
/// refusals in a row: every envelope the relay read was delivered or refused by name, and the
/// sender was disconnected with `rate_limited`.
pub async fn a_flood_over_the_rate_is_refused_then_cut_off<N: Trusting>(net: N) {
    let mut observer = net.token_peer("observer").await;
    let mut flooder = net.token_peer("flooder").await;
    observer.expect_presence(&["flooder"], &[]).await;
    let ids: Vec<String> = (0..40).map(|_| super::next_message_id()).collect();
    for (n, id) in ids.iter().enumerate() {
        flooder
            .send_with_id("LedgerSyncResponse", "observer", &n.to_string(), Some(id))
            .await;
    }
    let mut refused = Vec::new();
    for _ in 0..20 {
        let got = flooder.recv_skipping_announcements().await;
        assert_eq!(got.error_code(), "rate_limited", "{got:?}");
        refused.push(
            got.payload_json()["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    flooder.expect_ended("rate_limited").await;
    let mut delivered = Vec::new();
    while let Some(got) = observer
        .try_recv(std::time::Duration::from_millis(500))
        .await
    {
        if got.message_type == "LedgerSyncResponse" {
            delivered.push(got.message_id);
        }
    }
    assert!(delivered.len() >= 5, "the burst passes: {delivered:?}");
    let read = delivered.len() + refused.len();
    for id in &ids[..read] {
        assert!(
            delivered.contains(id) ^ refused.contains(id),
            "{id}: delivered or refused, exactly once"
        );
    }
    for id in &ids[read..] {
        assert!(
            !delivered.contains(id) && !refused.contains(id),
            "{id}: after the cut-off"
        );
    }
}
