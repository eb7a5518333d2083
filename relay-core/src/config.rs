//! The `relay.toml` schema: parsed, then validated into a [`RelayConfig`] that can only hold a
//! usable configuration.
//!
//! Unknown keys are rejected everywhere (`deny_unknown_fields`), so a typo never silently falls
//! back to a default. Every section and key has a default, so an empty file is a valid config.
//! Both runtimes load it the same way, [`RelayConfig::load`]: the file, then the
//! `GSIO_RELAY_<SECTION>__<KEY>` overrides (the native relay's environment, the Worker's
//! `[vars]`), then [`RelayConfig::validate`]. The Worker splits that in two: its build script
//! loads the file (so the TOML parser, feature `parse-toml`, stays out of its wasm), and at run
//! time [`RelayConfig::with_overrides`] lays the `[vars]` over the result, through the same
//! override code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[cfg(any(test, not(feature = "parse-toml")))]
mod scalar;

/// How envelopes of one `message_type` travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Back to the sender only.
    Echo,
    /// To every other connected peer, on every front; never to the sender.
    Broadcast,
    /// To the one peer named by `recipient_id`.
    Directed,
    /// `directed` when `recipient_id` names a peer, `broadcast` when it is empty: gsio-net's
    /// "empty recipient means everyone".
    Auto,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Echo => "echo",
            Mode::Broadcast => "broadcast",
            Mode::Directed => "directed",
            Mode::Auto => "auto",
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub discovery: Discovery,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub log: LogConfig,
    /// Several native relays forming one network over NATS; absent, a relay on its own (and no
    /// NATS). The Worker ignores it: the edge network is separate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// The native relay's `[cluster]`: which NATS to meet the other relays on, and as whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// NATS servers (`nats://host:port`, `tls://host:port`); the client tries each, and
    /// reconnects by itself.
    pub nats_urls: Vec<String>,
    /// This relay's name, unique in the cluster: the subject its directed traffic comes on.
    pub relay_name: String,
    /// A NATS `.creds` file (JWT and NKey seed), for a NATS that asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// Every subject starts with it, and the presence bucket is named after it: two networks
    /// can share one NATS under two prefixes.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// How often this relay tells the others it is alive.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A relay not heard from for this long is given up on: its peers leave everywhere, and
    /// their ids are free again. At least three heartbeats.
    #[serde(default = "default_relay_timeout_ms")]
    pub relay_timeout_ms: u64,
    /// Messages waiting to go to NATS; past it, a sender is told `relay_unreachable` (a slow or
    /// unreachable NATS cannot make this relay hold more).
    #[serde(default = "default_forward_queue")]
    pub forward_queue: usize,
}

fn default_subject_prefix() -> String {
    "gsio".to_owned()
}

fn default_heartbeat_ms() -> u64 {
    500
}

fn default_relay_timeout_ms() -> u64 {
    3000
}

fn default_forward_queue() -> usize {
    65_536
}

/// `cluster.heartbeat_ms` bounds.
pub const HEARTBEAT_MS: std::ops::RangeInclusive<u64> = 50..=60_000;
/// `cluster.relay_timeout_ms`'s ceiling (its floor is three heartbeats).
pub const MAX_RELAY_TIMEOUT_MS: u64 = 600_000;
/// `cluster.forward_queue` bounds.
pub const FORWARD_QUEUE: std::ops::RangeInclusive<usize> = 1..=1 << 20;

impl Cluster {
    /// The first key that cannot be used.
    fn invalid(&self) -> Option<InvalidConfig> {
        let bad = |key: &str, message: String| {
            Some(InvalidConfig {
                key: format!("cluster.{key}"),
                message,
            })
        };
        if self.nats_urls.is_empty() {
            return bad(
                "nats_urls",
                "names no NATS server; give at least one URL".into(),
            );
        }
        if let Some(url) = self.nats_urls.iter().find(|u| {
            !["nats://", "tls://"]
                .iter()
                .any(|scheme| u.starts_with(scheme))
                || u.len() <= "nats://".len()
        }) {
            return bad(
                "nats_urls",
                format!("{url:?} is not a NATS URL; use nats://host:port or tls://host:port"),
            );
        }
        let token = |t: &str| {
            !t.is_empty()
                && t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token(&self.relay_name) {
            return bad(
                "relay_name",
                format!(
                    "{:?}: use 1 to 64 letters, digits, '-' or '_' (it is part of NATS subjects)",
                    self.relay_name
                ),
            );
        }
        if !self.subject_prefix.split('.').all(token) {
            return bad(
                "subject_prefix",
                format!(
                    "{:?}: use dot-separated tokens of letters, digits, '-' or '_'",
                    self.subject_prefix
                ),
            );
        }
        if !HEARTBEAT_MS.contains(&self.heartbeat_ms) {
            return bad(
                "heartbeat_ms",
                format!(
                    "{} is out of range; use {} to {}",
                    self.heartbeat_ms,
                    HEARTBEAT_MS.start(),
                    HEARTBEAT_MS.end()
                ),
            );
        }
        let floor = self.heartbeat_ms * 3;
        if !(floor..=MAX_RELAY_TIMEOUT_MS).contains(&self.relay_timeout_ms) {
            return bad(
                "relay_timeout_ms",
                format!(
                    "{} is out of range; use three heartbeats ({floor}) to {MAX_RELAY_TIMEOUT_MS}",
                    self.relay_timeout_ms
                ),
            );
        }
        if !FORWARD_QUEUE.contains(&self.forward_queue) {
            return bad(
                "forward_queue",
                format!(
                    "{} is out of range; use {} to {}",
                    self.forward_queue,
                    FORWARD_QUEUE.start(),
                    FORWARD_QUEUE.end()
                ),
            );
        }
        None
    }
}

/// Who may take which peer id, and how a connection proves it (see [`crate::auth`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The mode for ids that no prefix rule names. `open` (first come, no proof) by default:
    /// today's behaviour, for local development.
    #[serde(default)]
    pub mode: AuthMode,
    /// Id prefix → mode, for networks that mix nodes (keys) and browsers (tokens): the longest
    /// prefix that starts an id decides its mode.
    #[serde(default)]
    pub prefixes: BTreeMap<String, AuthMode>,
    /// This relay's name: signed challenges cover it and tokens must name it in `aud`, so a
    /// proof made for one relay (or network) is worthless at another.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// Peer id → Ed25519 public key (64 hex digits): the key that may take that id in `signed`
    /// mode, besides every key's own derived id (`ed25519-<key in hex>`).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// The environment variable (natively) or Worker secret that holds the tokens' HMAC key.
    /// Named here, never written here: relay.toml is not a place for secrets.
    #[serde(default)]
    pub token_secret_env: Option<String>,
    /// Or a file holding it (native relay only), e.g. a mounted secret.
    #[serde(default)]
    pub token_secret_file: Option<String>,
    /// Seconds of clock difference allowed when checking a token's `exp` and `nbf`.
    #[serde(default = "default_token_leeway_s")]
    pub token_leeway_s: u64,
    /// The key itself, read from `token_secret_env` or `token_secret_file` by the front that
    /// loads the config (the core reads neither environment nor files). Never serialized.
    #[serde(skip)]
    pub token_secret: Option<crate::auth::Secret>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            mode: AuthMode::Open,
            prefixes: BTreeMap::new(),
            audience: default_audience(),
            keys: BTreeMap::new(),
            token_secret_env: None,
            token_secret_file: None,
            token_leeway_s: default_token_leeway_s(),
            token_secret: None,
        }
    }
}

/// How a connection may take an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// First come: any connection takes any free id by naming it.
    #[default]
    Open,
    /// Only a connection that signs the relay's challenge with an Ed25519 key allowed the id.
    Signed,
    /// Only a connection that presents a token, signed with the relay's secret, naming the id.
    Token,
    /// Either proof.
    SignedOrToken,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Open => "open",
            AuthMode::Signed => "signed",
            AuthMode::Token => "token",
            AuthMode::SignedOrToken => "signed_or_token",
        }
    }

    pub fn allows_signed(self) -> bool {
        matches!(self, AuthMode::Signed | AuthMode::SignedOrToken)
    }

    pub fn allows_token(self) -> bool {
        matches!(self, AuthMode::Token | AuthMode::SignedOrToken)
    }
}

impl Auth {
    /// The mode that decides who may take `id`: the longest prefix rule that starts it, else
    /// `mode`.
    pub fn mode_for(&self, id: &str) -> AuthMode {
        self.prefixes
            .iter()
            .filter(|(prefix, _)| id.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.mode, |(_, mode)| *mode)
    }

    /// Every mode in use, the default's and the prefixes'.
    pub fn modes(&self) -> impl Iterator<Item = AuthMode> + '_ {
        std::iter::once(self.mode).chain(self.prefixes.values().copied())
    }

    /// A connection must be challenged: some id needs a proof.
    pub fn needs_proof(&self) -> bool {
        self.modes().any(|mode| mode != AuthMode::Open)
    }

    /// Some id may be taken with a token: the secret is needed.
    pub fn uses_tokens(&self) -> bool {
        self.modes().any(AuthMode::allows_token)
    }
}

/// How the native relay writes its log lines. The Worker ignores this section (its logs are the
/// platform's).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

/// One log line per event: for people, or for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `tracing`'s human-readable lines: time, level, target, message, `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line, with the same fields as the text lines (`timestamp`, `level`,
    /// `target`, `message` and each field by name).
    Json,
}

/// Where the native server listens, and how it treats connections. The Worker ignores this
/// section (Cloudflare decides where it listens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// WebSocket front; 8787 is also the port of `wrangler dev`, so one browser client works
    /// against the native relay and the local Worker alike.
    #[serde(default = "default_ws_listen")]
    pub ws_listen: SocketAddr,
    /// gRPC front (RelayService, health, reflection).
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// The operator's HTTP listener (`/metrics`, `/healthz`, `/readyz`, the console at `/`).
    /// Loopback by default: it is for the machine's own scraper and operator, not the network.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Connections (both fronts together) held at once; a connection past it waits in the
    /// kernel's accept queue until another one ends.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long shutdown waits for connections to drain their queues before closing them.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ws_listen: default_ws_listen(),
            grpc_listen: default_grpc_listen(),
            admin_listen: default_admin_listen(),
            max_connections: default_max_connections(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

/// Limits announced to every peer in its `Welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest envelope accepted, in bytes of its JSON text (WebSocket) or protobuf (gRPC).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Messages waiting to be written to one peer; when full, that peer is disconnected as a
    /// slow consumer (see the README's "Slow consumers").
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Envelopes per second one identity may send, on average (0: no limit). Past its burst a
    /// sender's envelopes are refused with `rate_limited` and go nowhere.
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: u32,
    /// Envelopes one identity may send at once, above the rate, before it is limited.
    #[serde(default = "default_message_burst")]
    pub message_burst: u32,
    /// Bytes per second (of envelope text or protobuf) one identity may send (0: no limit).
    #[serde(default = "default_bytes_per_second")]
    pub bytes_per_second: u64,
    /// Bytes one identity may send at once above the rate; at least `max_message_bytes`, so
    /// that the largest envelope can pass.
    #[serde(default = "default_byte_burst")]
    pub byte_burst: u64,
    /// A sender refused this many times in a row for its rate is disconnected (`rate_limited`):
    /// it is not reading its errors, or does not care.
    #[serde(default = "default_rate_limited_max")]
    pub rate_limited_max: u32,
    /// A connection without a peer id (not identified, not authenticated) this long after it
    /// opened is closed (`identification_timeout`), so an anonymous connection holds nothing for
    /// long.
    #[serde(default = "default_identify_timeout_ms")]
    pub identify_timeout_ms: u64,
    /// Connections one client address may hold at once (WebSocket connections and TCP
    /// connections to the gRPC port together; IPv6 by /64), so that one machine cannot take
    /// every slot of `server.max_connections`. 0: no limit. See `crate::address`.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: u32,
    /// New connections one client address may open per second, on average: each costs a
    /// handshake (and on the edge a Durable Object event), so a reconnect loop or a flood from
    /// one address is refused before it costs them. 0: no limit.
    #[serde(default = "default_new_connections_per_ip_per_second")]
    pub new_connections_per_ip_per_second: u32,
    /// New connections one address may open at once, above the rate: room for every node behind
    /// one NAT reconnecting after a relay restart.
    #[serde(default = "default_new_connections_per_ip_burst")]
    pub new_connections_per_ip_burst: u32,
    /// A WebSocket client must complete its upgrade within this time, or its TCP connection is
    /// closed: a connection that never finishes its handshake holds a slot and a task.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// The relay pings every connection after this long (WebSocket Ping frames; HTTP/2 PING on
    /// gRPC connections), so that a peer whose machine or network vanished frees its id in
    /// seconds rather than after TCP's ~90 s. Announced in `Welcome`, so that a client knows
    /// how often to expect one. 0: no pings.
    #[serde(default = "default_ping_interval_ms")]
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even the Pong) within this time after a ping is
    /// closed, and its id freed.
    #[serde(default = "default_pong_timeout_ms")]
    pub pong_timeout_ms: u64,
    /// Concurrent streams on one gRPC connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`), at
    /// most `server.max_connections` + 100: what one TCP connection can make the relay hold.
    #[serde(default = "default_grpc_max_concurrent_streams")]
    pub grpc_max_concurrent_streams: u32,
    /// The largest header block (request metadata) a gRPC request may send (HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`): metadata is buffered whole before the relay sees it.
    #[serde(default = "default_grpc_max_header_list_bytes")]
    pub grpc_max_header_list_bytes: u32,
    /// The largest frame or fragmented message a WebSocket connection may send before it has an
    /// id (native relay): until then nobody is answerable for it, so it may not make the relay
    /// buffer more than this. Over it, the connection ends as for a frame over the hard limit.
    #[serde(default = "default_anonymous_message_bytes")]
    pub anonymous_message_bytes: usize,
    /// The memory, shared by every WebSocket connection, for messages still being received,
    /// beyond a small allowance per connection (native relay; see the README's "Memory"): what
    /// a crowd of clients that start large messages and never finish them can hold.
    #[serde(default = "default_partial_messages_budget_bytes")]
    pub partial_messages_budget_bytes: u64,
}

impl Limits {
    /// The largest frame a front reads at all. Above `max_message_bytes` but within this, an
    /// envelope is refused with `message_too_large` and the connection stays; above this, the
    /// relay will not buffer the frame and the connection ends
    /// ([`crate::RelayError::FrameTooLarge`]).
    pub fn hard_frame_bytes(&self) -> usize {
        let limit = self.max_message_bytes;
        limit.saturating_mul(2).max(limit + 64 * 1024)
    }

    /// The largest frame or fragmented message a connection without an id may send:
    /// `anonymous_message_bytes`, never more than [`Limits::hard_frame_bytes`].
    pub fn anonymous_frame_bytes(&self) -> usize {
        self.anonymous_message_bytes.min(self.hard_frame_bytes())
    }
}

impl Limits {
    /// The first of the per-address, deadline and gRPC keys outside its documented range.
    fn invalid_guard(&self) -> Option<InvalidConfig> {
        let range = |key: &str, value: u64, low: u64, high: u64, zero_ok: bool| {
            let ok = (zero_ok && value == 0) || (low..=high).contains(&value);
            (!ok).then(|| InvalidConfig {
                key: format!("limits.{key}"),
                message: if zero_ok {
                    format!("{value} is out of range; use 0 (off) or {low} to {high}")
                } else {
                    format!("{value} is out of range; use {low} to {high}")
                },
            })
        };
        let per_ip = u64::from(MAX_PER_IP);
        let (ms, timeout) = (MIN_DEADLINE_MS, MAX_TIMEOUT_MS);
        let burst_off = self.new_connections_per_ip_per_second == 0;
        [
            range(
                "max_connections_per_ip",
                self.max_connections_per_ip.into(),
                1,
                per_ip,
                true,
            ),
            range(
                "new_connections_per_ip_per_second",
                self.new_connections_per_ip_per_second.into(),
                1,
                per_ip,
                true,
            ),
            range(
                "new_connections_per_ip_burst",
                self.new_connections_per_ip_burst.into(),
                1,
                per_ip,
                burst_off,
            ),
            range(
                "handshake_timeout_ms",
                self.handshake_timeout_ms,
                ms,
                timeout,
                false,
            ),
            range(
                "ping_interval_ms",
                self.ping_interval_ms,
                ms,
                MAX_PING_INTERVAL_MS,
                true,
            ),
            range("pong_timeout_ms", self.pong_timeout_ms, ms, timeout, false),
            range(
                "grpc_max_concurrent_streams",
                self.grpc_max_concurrent_streams.into(),
                1,
                MAX_GRPC_STREAMS.into(),
                false,
            ),
            range(
                "grpc_max_header_list_bytes",
                self.grpc_max_header_list_bytes.into(),
                MIN_HEADER_LIST_BYTES.into(),
                MAX_HEADER_LIST_BYTES.into(),
                false,
            ),
        ]
        .into_iter()
        .flatten()
        .next()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message_bytes(),
            queue_capacity: default_queue_capacity(),
            messages_per_second: default_messages_per_second(),
            message_burst: default_message_burst(),
            bytes_per_second: default_bytes_per_second(),
            byte_burst: default_byte_burst(),
            rate_limited_max: default_rate_limited_max(),
            identify_timeout_ms: default_identify_timeout_ms(),
            max_connections_per_ip: default_max_connections_per_ip(),
            new_connections_per_ip_per_second: default_new_connections_per_ip_per_second(),
            new_connections_per_ip_burst: default_new_connections_per_ip_burst(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            ping_interval_ms: default_ping_interval_ms(),
            pong_timeout_ms: default_pong_timeout_ms(),
            grpc_max_concurrent_streams: default_grpc_max_concurrent_streams(),
            grpc_max_header_list_bytes: default_grpc_max_header_list_bytes(),
            anonymous_message_bytes: default_anonymous_message_bytes(),
            partial_messages_budget_bytes: default_partial_messages_budget_bytes(),
        }
    }
}

/// What peers are told about each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// Send `PeerJoined` / `PeerLeft` to the other peers when a peer arrives or leaves.
    #[serde(default = "default_true")]
    pub announce_peers: bool,
    /// At most this many ids in a `Welcome`'s `peers` list (`peer_count` is always exact), so a
    /// join into a large network stays cheap: a long Welcome costs time to write and leaves the
    /// connection's write buffer grown for as long as it lives.
    #[serde(default = "default_welcome_peers_max")]
    pub welcome_peers_max: usize,
    /// Joins and leaves within this many milliseconds of an announcement are announced together
    /// when the window ends, so that a mass connect (every node reconnecting after a restart)
    /// costs one announcement per window and peer instead of one per join and peer. 0 announces
    /// each change on its own, at once. See `crate::presence`.
    #[serde(default = "default_announce_window_ms")]
    pub announce_window_ms: u64,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            announce_peers: true,
            welcome_peers_max: default_welcome_peers_max(),
            announce_window_ms: default_announce_window_ms(),
        }
    }
}

/// The routing table: one mode per `message_type`, and a default for the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    #[serde(default = "default_mode")]
    pub default: Mode,
    /// `message_type` → mode. Keys are matched exactly (case-sensitive).
    #[serde(default)]
    pub rules: BTreeMap<String, Mode>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            default: default_mode(),
            rules: BTreeMap::new(),
        }
    }
}

impl Routing {
    /// The rule for envelopes of `message_type`: its key in `rules` (the type itself, borrowed
    /// from the config) and mode, or `None` and the default. One lookup serves routing and
    /// metrics, which count by rule so that the network cannot choose their labels.
    pub fn rule_for(&self, message_type: &str) -> (Option<&str>, Mode) {
        match self.rules.get_key_value(message_type) {
            Some((key, mode)) => (Some(key.as_str()), *mode),
            None => (None, self.default),
        }
    }

    /// The mode for envelopes of `message_type`.
    pub fn mode_for(&self, message_type: &str) -> Mode {
        self.rules
            .get(message_type)
            .copied()
            .unwrap_or(self.default)
    }
}

fn default_ws_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8787))
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_connections() -> usize {
    20_000
}
fn default_shutdown_grace_ms() -> u64 {
    5_000
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_queue_capacity() -> usize {
    4096
}
fn default_messages_per_second() -> u32 {
    10_000
}
fn default_message_burst() -> u32 {
    20_000
}
fn default_bytes_per_second() -> u64 {
    64 * 1024 * 1024
}
fn default_byte_burst() -> u64 {
    128 * 1024 * 1024
}
fn default_rate_limited_max() -> u32 {
    1_000
}
fn default_identify_timeout_ms() -> u64 {
    10_000
}
fn default_audience() -> String {
    "gsio-relay".to_owned()
}
fn default_token_leeway_s() -> u64 {
    30
}
fn default_max_connections_per_ip() -> u32 {
    1000
}
fn default_new_connections_per_ip_per_second() -> u32 {
    100
}
fn default_new_connections_per_ip_burst() -> u32 {
    500
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_ping_interval_ms() -> u64 {
    20_000
}
fn default_pong_timeout_ms() -> u64 {
    10_000
}
fn default_grpc_max_concurrent_streams() -> u32 {
    1000
}
fn default_grpc_max_header_list_bytes() -> u32 {
    16 * 1024
}
fn default_anonymous_message_bytes() -> usize {
    64 * 1024
}
fn default_partial_messages_budget_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_welcome_peers_max() -> usize {
    100
}
fn default_announce_window_ms() -> u64 {
    50
}
fn default_mode() -> Mode {
    Mode::Broadcast
}

/// A configuration that parsed but cannot be used; `key` is the dotted path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidConfig {
    pub key: String,
    pub message: String,
}

/// Prefix of the variables that override `relay.toml` keys: `GSIO_RELAY_<SECTION>__<KEY>`,
/// e.g. `GSIO_RELAY_ROUTING__DEFAULT=echo`. Distinctive on purpose: `RELAY_` is a common prefix
/// of other tools' settings, and a stray variable must not stop the relay. Only names with a
/// `__` after the prefix are overrides (so `GSIO_RELAY_CONFIG`, the file's path, is not); an
/// override naming an unknown section or key is an error, so typos are caught. Names are
/// matched case-insensitively, prefix included (`gsio_relay_routing__default` is an override).
pub const ENV_PREFIX: &str = "GSIO_RELAY_";

/// Why a configuration could not be loaded. Every variant names where the bad value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not TOML, or does not fit the schema (unknown key, wrong type or value).
    /// `key` is the dotted key at the error's line, when there is one; toml's message shows the
    /// line.
    #[error("{file}: {}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Parse {
        file: String,
        key: Option<String>,
        message: String,
    },
    /// The file parsed, but a value cannot be used.
    #[error("{file}: {invalid}")]
    Invalid {
        file: String,
        invalid: InvalidConfig,
    },
    /// An override variable that names no key, whose value does not fit, or that makes the
    /// configuration unusable.
    #[error("{variable}: {message}")]
    Variable { variable: String, message: String },
}

/// One override variable: its name, the dotted key it sets, and the value as TOML.
struct Override {
    variable: String,
    keys: Vec<String>,
    value: toml::Value,
}

impl Override {
    /// `None` for a variable that is not an override (another prefix, or no `__`). The name is
    /// case-insensitive.
    fn parse(name: &str, value: &str) -> Option<Override> {
        let prefix = name.get(..ENV_PREFIX.len())?;
        if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
            return None;
        }
        let path = &name[ENV_PREFIX.len()..];
        if !path.contains("__") {
            return None;
        }
        let keys = path
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>();
        // A TOML value (`8192`, `true`, `"echo"`), or else the text itself (`echo`).
        let value = override_value(value).unwrap_or_else(|| toml::Value::String(value.to_owned()));
        Some(Override {
            variable: name.to_owned(),
            keys,
            value,
        })
    }

    fn apply(&self, table: &mut toml::Table) -> Result<(), ConfigError> {
        let refuse = |message: String| ConfigError::Variable {
            variable: self.variable.clone(),
            message,
        };
        let (last, sections) = self
            .keys
            .split_last()
            .ok_or_else(|| refuse("names no key".to_owned()))?;
        let mut at = table;
        for section in sections {
            let entry = at
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = entry
                .as_table_mut()
                .ok_or_else(|| refuse(format!("`{section}` is not a section")))?;
        }
        at.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

/// An override's value as TOML: any TOML value, read by the TOML parser.
#[cfg(feature = "parse-toml")]
fn override_value(text: &str) -> Option<toml::Value> {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut parsed| parsed.remove("v"))
}

/// An override's value as TOML, without the TOML parser (the Worker's build leaves it out): the
/// scalars every key of relay.toml takes (booleans, integers, floats, one-line strings), read
/// as TOML reads them (a unit test compares the two on a table of values). Arrays, inline tables
/// and dates, which no key takes, are text here, so their error names the value as a string.
#[cfg(not(feature = "parse-toml"))]
fn override_value(text: &str) -> Option<toml::Value> {
    scalar::parse(text)
}

/// The dotted key (`server.ws_listen`) of the `key = value` line holding byte `at` of `text`,
/// under the last `[section]` header above it; just the section for a header line. Enough for
/// relay.toml's shape (sections of plain keys); `None` where the line is neither.
#[cfg(feature = "parse-toml")]
fn dotted_key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let header = |line: &str| {
        let name = line.strip_prefix('[')?.split(']').next()?;
        Some(name.trim().trim_matches('[').trim().to_owned())
    };
    if let Some(section) = header(line) {
        return Some(section);
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| header(l.trim()));
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
}

fn from_table(table: toml::Table) -> Result<RelayConfig, String> {
    toml::Value::Table(table)
        .try_into::<RelayConfig>()
        .map_err(|e| e.to_string())?
        .validate()
        .map_err(|e| e.to_string())
}

/// The override variables among `vars` laid over `config`'s keys as TOML (`base`, asked for only
/// when there are overrides: the file's table natively, the config's own on the Worker), then
/// validated: the one implementation of overrides, for both runtimes.
fn overlay<N: AsRef<str>, V: AsRef<str>>(
    config: RelayConfig,
    base: impl FnOnce(&RelayConfig) -> Result<toml::Table, String>,
    vars: impl IntoIterator<Item = (N, V)>,
) -> Result<RelayConfig, ConfigError> {
    let mut overrides: Vec<Override> = vars
        .into_iter()
        .filter_map(|(name, value)| Override::parse(name.as_ref(), value.as_ref()))
        .collect();
    if overrides.is_empty() {
        return Ok(config);
    }
    // The same order whatever the environment's, so the same variables give the same result.
    overrides.sort_by(|a, b| a.variable.cmp(&b.variable));
    let all = || {
        overrides
            .iter()
            .map(|o| o.variable.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Cannot fail for a config that came from TOML (every value fits TOML's types); if it ever
    // did, the variables are refused rather than silently dropped.
    let table = base(&config).map_err(|message| ConfigError::Variable {
        variable: all(),
        message: format!("cannot lay overrides over the configuration: {message}"),
    })?;
    let mut merged = table.clone();
    for o in &overrides {
        o.apply(&mut merged)?;
    }
    from_table(merged).map_err(|message| {
        // Blame the first variable that is wrong on its own; else all of them together.
        let alone = overrides.iter().find_map(|o| {
            let mut one = table.clone();
            o.apply(&mut one).err().or_else(|| {
                from_table(one).err().map(|message| ConfigError::Variable {
                    variable: o.variable.clone(),
                    message,
                })
            })
        });
        alone.unwrap_or_else(|| ConfigError::Variable {
            variable: all(),
            message,
        })
    })
}

/// The smallest `limits.max_message_bytes`: room for an envelope with a modest payload.
pub const MIN_MESSAGE_BYTES: usize = 256;
/// The largest `limits.max_message_bytes`.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The largest `limits.queue_capacity`.
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;
/// The smallest `limits.partial_messages_budget_bytes`: a message at the default
/// `max_message_bytes` fits.
pub const MIN_PARTIAL_MESSAGES_BUDGET_BYTES: u64 = 1024 * 1024;
/// The largest `limits.partial_messages_budget_bytes` (64 GiB; "no budget" in practice).
pub const MAX_PARTIAL_MESSAGES_BUDGET_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// The largest `discovery.announce_window_ms`: a minute.
pub const MAX_ANNOUNCE_WINDOW_MS: u64 = 60_000;
/// `limits.identify_timeout_ms` bounds: a tenth of a second to ten minutes.
pub const IDENTIFY_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;
/// The largest `auth.token_leeway_s`: ten minutes.
pub const MAX_TOKEN_LEEWAY_S: u64 = 600;
/// The largest `limits.max_connections_per_ip`, `limits.new_connections_per_ip_per_second` and
/// `limits.new_connections_per_ip_burst`.
pub const MAX_PER_IP: u32 = 1_000_000;
/// The shortest deadline (`limits.handshake_timeout_ms`, `limits.ping_interval_ms`,
/// `limits.pong_timeout_ms`): 100 ms.
pub const MIN_DEADLINE_MS: u64 = 100;
/// The longest `limits.handshake_timeout_ms` and `limits.pong_timeout_ms`: ten minutes.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// The longest `limits.ping_interval_ms`: an hour.
pub const MAX_PING_INTERVAL_MS: u64 = 3_600_000;
/// The largest `limits.grpc_max_concurrent_streams`.
pub const MAX_GRPC_STREAMS: u32 = 1_000_000;
/// The smallest `limits.grpc_max_header_list_bytes`: room for gRPC's own headers.
pub const MIN_HEADER_LIST_BYTES: u32 = 1024;
/// The largest `limits.grpc_max_header_list_bytes`: 1 MiB.
pub const MAX_HEADER_LIST_BYTES: u32 = 1024 * 1024;

#[cfg(feature = "parse-toml")]
impl RelayConfig {
    /// Parses TOML text and validates it, without overrides. `file` names the file in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<RelayConfig, ConfigError> {
        RelayConfig::load(text, file, std::iter::empty::<(&str, &str)>())
    }

    /// The one way both runtimes load their configuration: `relay.toml`'s text, then the
    /// override variables among `vars` laid over it (the native relay passes its environment;
    /// the Worker's build script passes none, and the Worker its `[vars]` to
    /// [`RelayConfig::with_overrides`] at run time), then validation. Names that are not overrides (see
    /// [`ENV_PREFIX`]) are ignored.
    ///
    /// The file must be valid on its own, so that its errors name the file, the key and the
    /// line. An error that only the overrides cause names the variable responsible.
    pub fn load<N: AsRef<str>, V: AsRef<str>>(
        text: &str,
        file: &str,
        vars: impl IntoIterator<Item = (N, V)>,
    ) -> Result<RelayConfig, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            file: file.to_owned(),
            key: e.span().and_then(|span| dotted_key_at(text, span.start)),
            message: e.to_string(),
        };
        let table: toml::Table = text.parse().map_err(parse_error)?;
        let config: RelayConfig = toml::from_str(text).map_err(parse_error)?;
        let config = config.validate().map_err(|invalid| ConfigError::Invalid {
            file: file.to_owned(),
            invalid,
        })?;
        overlay(config, |_| Ok(table), vars)
    }
}

impl RelayConfig {
    /// The dotted keys (`limits.queue_capacity`, `routing.rules.Ping`) whose value differs
    /// between `self` and `other`, a key present in only one of them included; sorted. For
    /// saying what a reload changed.
    pub fn changed_keys(&self, other: &RelayConfig) -> Vec<String> {
        fn walk(
            prefix: &str,
            a: Option<&toml::Value>,
            b: Option<&toml::Value>,
            out: &mut Vec<String>,
        ) {
            match (a, b) {
                (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                    let keys: std::collections::BTreeSet<&String> =
                        a.keys().chain(b.keys()).collect();
                    for key in keys {
                        let path = if prefix.is_empty() {
                            key.clone()
                        } else {
                            format!("{prefix}.{key}")
                        };
                        walk(&path, a.get(key), b.get(key), out);
                    }
                }
                (a, b) if a != b => out.push(prefix.to_owned()),
                _ => {}
            }
        }
        let table = |config: &RelayConfig| toml::Value::try_from(config).ok();
        let mut out = Vec::new();
        walk("", table(self).as_ref(), table(other).as_ref(), &mut out);
        out.sort();
        out
    }

    /// This configuration (already validated: the Worker's, parsed and checked when it was
    /// built) with the override variables among `vars` laid over it, then validated again:
    /// [`RelayConfig::load`] without the file, with the same names, values and errors.
    pub fn with_overrides<N: AsRef<str>, V: AsRef<str>>(
        self,
        vars: impl IntoIterator<Item = (N, V)>,
    ) -> Result<RelayConfig, ConfigError> {
        overlay(
            self,
            |config| toml::Table::try_from(config).map_err(|e| e.to_string()),
            vars,
        )
    }
    /// Checks what the types alone cannot; the error names the key.
    pub fn validate(self) -> Result<RelayConfig, InvalidConfig> {
        let bad = |key: &str, message: String| {
            Err(InvalidConfig {
                key: key.to_owned(),
                message,
            })
        };
        let limits = &self.limits;
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&limits.max_message_bytes) {
            return bad(
                "limits.max_message_bytes",
                format!(
                    "{} is out of range; use {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES}",
                    limits.max_message_bytes
                ),
            );
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&limits.queue_capacity) {
            return bad(
                "limits.queue_capacity",
                format!(
                    "{} is out of range; use 1 to {MAX_QUEUE_CAPACITY}",
                    limits.queue_capacity
                ),
            );
        }
        if let Some(invalid) = limits.invalid_guard() {
            return Err(invalid);
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&limits.anonymous_message_bytes) {
            return bad(
                "limits.anonymous_message_bytes",
                format!(
                    "{} is out of range; use {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES}",
                    limits.anonymous_message_bytes
                ),
            );
        }
        let budget = limits.partial_messages_budget_bytes;
        let budgets = MIN_PARTIAL_MESSAGES_BUDGET_BYTES..=MAX_PARTIAL_MESSAGES_BUDGET_BYTES;
        if !budgets.contains(&budget) {
            return bad(
                "limits.partial_messages_budget_bytes",
                format!(
                    "{budget} is out of range; use {MIN_PARTIAL_MESSAGES_BUDGET_BYTES} to {MAX_PARTIAL_MESSAGES_BUDGET_BYTES}"
                ),
            );
        }
        if self.discovery.announce_window_ms > MAX_ANNOUNCE_WINDOW_MS {
            return bad(
                "discovery.announce_window_ms",
                format!(
                    "{} is out of range; use 0 to {MAX_ANNOUNCE_WINDOW_MS}",
                    self.discovery.announce_window_ms
                ),
            );
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1".to_owned());
        }
        if let Some(invalid) = self.cluster.as_ref().and_then(Cluster::invalid) {
            return Err(invalid);
        }
        let (ws, grpc) = (self.server.ws_listen, self.server.grpc_listen);
        if ws == grpc && ws.port() != 0 {
            return bad(
                "server.grpc_listen",
                format!("{grpc} is also server.ws_listen; the two fronts need their own ports"),
            );
        }
        let admin = self.server.admin_listen;
        for (other, other_key) in [(ws, "server.ws_listen"), (grpc, "server.grpc_listen")] {
            if admin == other && admin.port() != 0 {
                return bad(
                    "server.admin_listen",
                    format!("{admin} is also {other_key}; the admin listener needs its own port"),
                );
            }
        }
        if !IDENTIFY_TIMEOUT_MS.contains(&limits.identify_timeout_ms) {
            return bad(
                "limits.identify_timeout_ms",
                format!(
                    "{} is out of range; use {} to {}",
                    limits.identify_timeout_ms,
                    IDENTIFY_TIMEOUT_MS.start(),
                    IDENTIFY_TIMEOUT_MS.end()
                ),
            );
        }
        if limits.messages_per_second != 0 && limits.message_burst == 0 {
            return bad(
                "limits.message_burst",
                "must be at least 1 when limits.messages_per_second is set".to_owned(),
            );
        }
        if limits.bytes_per_second != 0 && limits.byte_burst < limits.max_message_bytes as u64 {
            return bad(
                "limits.byte_burst",
                format!(
                    "{} is below limits.max_message_bytes ({}): the largest envelope could never pass",
                    limits.byte_burst, limits.max_message_bytes
                ),
            );
        }
        if limits.rate_limited_max == 0 {
            return bad("limits.rate_limited_max", "must be at least 1".to_owned());
        }
        crate::auth::validate(&self.auth)?;
        if let Some(bad_key) = self.routing.rules.keys().find(|k| k.trim().is_empty()) {
            return bad(
                "routing.rules",
                format!("rule key {bad_key:?} is empty; keys are message types"),
            );
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = RelayConfig::from_toml_str("", "t.toml").unwrap();
        assert_eq!(c, RelayConfig::default());
        assert_eq!(c.limits.max_message_bytes, 1 << 20);
        assert_eq!(c.routing.default, Mode::Broadcast);
    }

    #[test]
    fn changed_keys_name_each_leaf_that_differs() {
        let base = "[limits]\nqueue_capacity = 5\n[routing.rules]\nPing = \"echo\"\nA = \"auto\"\n";
        let cases: &[(&str, &[&str])] = &[
            (base, &[]),
            (
                "[limits]\nqueue_capacity = 6\n[routing.rules]\nPing = \"echo\"\nA = \"auto\"\n",
                &["limits.queue_capacity"],
            ),
            (
                "[limits]\nqueue_capacity = 5\n[routing.rules]\nPing = \"broadcast\"\nB = \"auto\"\n",
                &["routing.rules.A", "routing.rules.B", "routing.rules.Ping"],
            ),
            (
                "[server]\nws_listen = \"127.0.0.1:1\"\n[log]\nformat = \"json\"\n[limits]\nqueue_capacity = 5\n[routing.rules]\nPing = \"echo\"\nA = \"auto\"\n",
                &["log.format", "server.ws_listen"],
            ),
        ];
        let a = RelayConfig::from_toml_str(base, "t.toml").unwrap();
        for (text, keys) in cases {
            let b = RelayConfig::from_toml_str(text, "t.toml").unwrap();
            assert_eq!(a.changed_keys(&b), *keys, "{text}");
            assert_eq!(b.changed_keys(&a), *keys, "{text}");
        }
    }

    #[test]
    fn log_format_is_text_by_default_or_json() {
        let c = RelayConfig::from_toml_str("", "t.toml").unwrap();
        assert_eq!(c.log.format, LogFormat::Text);
        let c = RelayConfig::from_toml_str("[log]\nformat = \"json\"\n", "t.toml").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        let err = RelayConfig::from_toml_str("[log]\nformat = \"xml\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log.format") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn rules_pick_the_mode_per_type() {
        let c = RelayConfig::from_toml_str(
            "[routing]\ndefault = \"echo\"\n[routing.rules]\nLedgerSync = \"directed\"\nNodeAnnounce = \"broadcast\"\n",
            "t.toml",
        )
        .unwrap();
        let table = [
            ("LedgerSync", Mode::Directed),
            ("NodeAnnounce", Mode::Broadcast),
            ("nodeannounce", Mode::Echo),
            ("Other", Mode::Echo),
        ];
        for (ty, mode) in table {
            assert_eq!(c.routing.mode_for(ty), mode, "{ty}");
        }
    }

    #[test]
    fn vars_override_the_file_like_the_environment_does() {
        let file = "[routing]\ndefault = \"broadcast\"\n";
        let c = RelayConfig::load(
            file,
            "relay.toml",
            [
                ("GSIO_RELAY_ROUTING__DEFAULT", "echo"),
                ("GSIO_RELAY_LIMITS__MAX_MESSAGE_BYTES", "4096"),
                ("GSIO_RELAY_DISCOVERY__ANNOUNCE_PEERS", "false"),
                // Not overrides: another tool's prefix, and our own name without a key.
                ("RELAY_PROJECT_DIR", "/somewhere"),
                ("RELAY_ROUTING__DEFAULT", "sideways"),
                ("GSIO_RELAY_CONFIG", "other.toml"),
            ],
        )
        .unwrap();
        assert_eq!(c.routing.default, Mode::Echo);
        assert_eq!(c.limits.max_message_bytes, 4096);
        assert!(!c.discovery.announce_peers);

        let cases: &[(&str, &str, &[&str])] = &[
            (
                "GSIO_RELAY_ROUTING__DEFAULT",
                "sideways",
                &["GSIO_RELAY_ROUTING__DEFAULT", "sideways", "directed"],
            ),
            (
                "GSIO_RELAY_LIMITS__QUEUE_CAPACITY",
                "0",
                &["GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "limits.queue_capacity"],
            ),
            (
                "GSIO_RELAY_LIMITS__TYPO",
                "1",
                &["GSIO_RELAY_LIMITS__TYPO", "typo"],
            ),
            (
                "GSIO_RELAY_ROUTNG__DEFAULT",
                "echo",
                &["GSIO_RELAY_ROUTNG__DEFAULT", "routng"],
            ),
            (
                "GSIO_RELAY_ROUTING__DEFAULT__X",
                "echo",
                &["GSIO_RELAY_ROUTING__DEFAULT__X", "not a section"],
            ),
        ];
        for (name, value, wanted) in cases {
            let err = RelayConfig::load(file, "relay.toml", [(*name, *value)]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Variable { variable, .. } if variable == name),
                "{err:?}"
            );
            let err = err.to_string();
            for w in *wanted {
                assert!(err.contains(w), "{name}={value}: {err:?} lacks {w:?}");
            }
        }
        // Each good alone, bad together: both are named.
        let err = RelayConfig::load(
            "",
            "relay.toml",
            [
                ("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:9"),
                ("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:9"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("GSIO_RELAY_SERVER__WS_LISTEN")
                && err.contains("GSIO_RELAY_SERVER__GRPC_LISTEN"),
            "{err}"
        );
    }

    /// The README's bounds of the per-identity rates, the identification deadline and the
    /// tokens' leeway: each edge accepted, one past it refused naming the key.
    #[test]
    fn documented_bounds_of_the_rate_and_identification_keys() {
        // (the [limits] lines, accepted?, the key an error names, what it says)
        let cases = [
            ("identify_timeout_ms = 100", true, "", ""),
            ("identify_timeout_ms = 600000", true, "", ""),
            (
                "identify_timeout_ms = 99",
                false,
                "limits.identify_timeout_ms",
                "use 100 to 600000",
            ),
            (
                "identify_timeout_ms = 600001",
                false,
                "limits.identify_timeout_ms",
                "use 100 to 600000",
            ),
            ("messages_per_second = 0\nmessage_burst = 0", true, "", ""),
            (
                "messages_per_second = 5\nmessage_burst = 0",
                false,
                "limits.message_burst",
                "at least 1",
            ),
            ("bytes_per_second = 0\nbyte_burst = 0", true, "", ""),
            (
                "max_message_bytes = 4096\nbytes_per_second = 10\nbyte_burst = 4096",
                true,
                "",
                "",
            ),
            (
                "max_message_bytes = 4096\nbytes_per_second = 10\nbyte_burst = 4095",
                false,
                "limits.byte_burst",
                "below limits.max_message_bytes",
            ),
            ("rate_limited_max = 1", true, "", ""),
            (
                "rate_limited_max = 0",
                false,
                "limits.rate_limited_max",
                "at least 1",
            ),
        ];
        for (lines, accepted, key, says) in cases {
            let text = format!("[limits]\n{lines}\n");
            match RelayConfig::from_toml_str(&text, "t.toml") {
                Ok(_) => assert!(accepted, "{lines} accepted"),
                Err(error) => {
                    let error = error.to_string();
                    assert!(!accepted, "{lines} refused: {error}");
                    assert!(
                        error.contains(&format!("`{key}`")) && error.contains(says),
                        "{lines}: {error}"
                    );
                }
            }
        }
        for (leeway, accepted) in [(0, true), (600, true), (601, false)] {
            let text = format!("[auth]\ntoken_leeway_s = {leeway}\n");
            assert_eq!(
                RelayConfig::from_toml_str(&text, "t.toml").is_ok(),
                accepted,
                "{leeway}"
            );
        }
    }

    /// The README's bounds, as the literal numbers it prints: each edge is accepted, one past
    /// it refused naming the key and the range.
    #[test]
    fn cluster_bounds_are_the_edges() {
        let with = |extra: &str| {
            RelayConfig::from_toml_str(
                &format!("[cluster]\nnats_urls = [\"nats://n:4222\"]\nrelay_name = \"a\"\n{extra}"),
                "c.toml",
            )
        };
        for ok in [
            "heartbeat_ms = 50\nrelay_timeout_ms = 150",
            "heartbeat_ms = 60000\nrelay_timeout_ms = 600000",
            "forward_queue = 1",
            "forward_queue = 1048576",
            "subject_prefix = \"a.b-c_d\"",
        ] {
            assert!(with(ok).is_ok(), "{ok}: {:?}", with(ok));
        }
        for (bad, key) in [
            ("heartbeat_ms = 49", "cluster.heartbeat_ms"),
            (
                "heartbeat_ms = 60001\nrelay_timeout_ms = 600000",
                "cluster.heartbeat_ms",
            ),
            (
                "heartbeat_ms = 50\nrelay_timeout_ms = 149",
                "cluster.relay_timeout_ms",
            ),
            ("relay_timeout_ms = 600001", "cluster.relay_timeout_ms"),
            ("forward_queue = 0", "cluster.forward_queue"),
            ("forward_queue = 1048577", "cluster.forward_queue"),
            ("subject_prefix = \"a..b\"", "cluster.subject_prefix"),
            ("subject_prefix = \"a.>\"", "cluster.subject_prefix"),
        ] {
            let error = with(bad).unwrap_err().to_string();
            assert!(error.contains(key), "{bad}: {error}");
        }
    }

    #[test]
    fn documented_bounds_are_the_edges() {
        let cases = [
            ("max_message_bytes", 256, 255, "use 256 to 67108864"),
            (
                "max_message_bytes",
                67_108_864,
                67_108_865,
                "use 256 to 67108864",
            ),
            ("queue_capacity", 1, 0, "use 1 to 1000000"),
            ("queue_capacity", 1_000_000, 1_000_001, "use 1 to 1000000"),
            ("anonymous_message_bytes", 256, 255, "use 256 to 67108864"),
            (
                "anonymous_message_bytes",
                67_108_864,
                67_108_865,
                "use 256 to 67108864",
            ),
            (
                "partial_messages_budget_bytes",
                1_048_576,
                1_048_575,
                "use 1048576 to 68719476736",
            ),
            (
                "partial_messages_budget_bytes",
                68_719_476_736,
                68_719_476_737,
                "use 1048576 to 68719476736",
            ),
        ];
        for (key, edge, past, range) in cases {
            let text = |n: u64| format!("[limits]\n{key} = {n}\n");
            let config = RelayConfig::from_toml_str(&text(edge), "t.toml")
                .unwrap_or_else(|e| panic!("{key} = {edge} refused: {e}"));
            let limits = &config.limits;
            let got = match key {
                "max_message_bytes" => limits.max_message_bytes,
                "anonymous_message_bytes" => limits.anonymous_message_bytes,
                "partial_messages_budget_bytes" => limits.partial_messages_budget_bytes as usize,
                _ => limits.queue_capacity,
            };
            assert_eq!(got as u64, edge);
            let err = RelayConfig::from_toml_str(&text(past), "t.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("limits.{key}")) && err.contains(range),
                "{key} = {past}: {err}"
            );
        }
        let window = |n: u64| format!("[discovery]\nannounce_window_ms = {n}\n");
        let config = RelayConfig::from_toml_str(&window(60_000), "t.toml").unwrap();
        assert_eq!(config.discovery.announce_window_ms, 60_000);
        assert_eq!(
            RelayConfig::from_toml_str(&window(0), "t.toml")
                .unwrap()
                .discovery
                .announce_window_ms,
            0
        );
        let err = RelayConfig::from_toml_str(&window(60_001), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("discovery.announce_window_ms") && err.contains("use 0 to 60000"),
            "{err}"
        );
        // The README's example of a bad override, word for word.
        let err = RelayConfig::load(
            "",
            "relay.toml",
            [("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "0")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "GSIO_RELAY_LIMITS__QUEUE_CAPACITY: `limits.queue_capacity`: 0 is out of range; use 1 to 1000000"
        );
    }

    /// The per-address, deadline and gRPC keys: each documented edge accepted, one past it
    /// refused naming the key and the range; 0 where it means off.
    #[test]
    fn documented_bounds_of_the_address_deadline_and_grpc_keys() {
        // (key, accepted, refused, range in the error)
        let cases: &[(&str, &[u64], &[u64], &str)] = &[
            (
                "max_connections_per_ip",
                &[0, 1, 1_000_000],
                &[1_000_001],
                "use 0 (off) or 1 to 1000000",
            ),
            (
                "new_connections_per_ip_per_second",
                &[0, 1, 1_000_000],
                &[1_000_001],
                "use 0 (off) or 1 to 1000000",
            ),
            (
                "new_connections_per_ip_burst",
                &[1, 1_000_000],
                &[0, 1_000_001],
                "use 1 to 1000000",
            ),
            (
                "handshake_timeout_ms",
                &[100, 600_000],
                &[0, 99, 600_001],
                "use 100 to 600000",
            ),
            (
                "ping_interval_ms",
                &[0, 100, 3_600_000],
                &[99, 3_600_001],
                "use 0 (off) or 100 to 3600000",
            ),
            (
                "pong_timeout_ms",
                &[100, 600_000],
                &[0, 99, 600_001],
                "use 100 to 600000",
            ),
            (
                "grpc_max_concurrent_streams",
                &[1, 1_000_000],
                &[0, 1_000_001],
                "use 1 to 1000000",
            ),
            (
                "grpc_max_header_list_bytes",
                &[1024, 1_048_576],
                &[1023, 1_048_577],
                "use 1024 to 1048576",
            ),
        ];
        for (key, good, bad, range) in cases {
            for n in *good {
                let text = format!("[limits]\n{key} = {n}\n");
                let config = RelayConfig::from_toml_str(&text, "t.toml")
                    .unwrap_or_else(|e| panic!("{key} = {n} refused: {e}"));
                let table = toml::Table::try_from(&config.limits).unwrap();
                assert_eq!(table[*key].as_integer(), Some(*n as i64), "{key}");
            }
            for n in *bad {
                let err = RelayConfig::from_toml_str(&format!("[limits]\n{key} = {n}\n"), "t.toml")
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(&format!("limits.{key}")) && err.contains(range),
                    "{key} = {n}: {err}"
                );
            }
        }
        // A burst of 0 is fine when there is no rate to burst above.
        let text =
            "[limits]\nnew_connections_per_ip_per_second = 0\nnew_connections_per_ip_burst = 0\n";
        RelayConfig::from_toml_str(text, "t.toml").unwrap();
        let defaults = Limits::default();
        assert_eq!(
            (
                defaults.max_connections_per_ip,
                defaults.new_connections_per_ip_per_second,
                defaults.new_connections_per_ip_burst,
                defaults.handshake_timeout_ms,
                defaults.ping_interval_ms,
                defaults.pong_timeout_ms,
                defaults.grpc_max_concurrent_streams,
                defaults.grpc_max_header_list_bytes,
            ),
            (1000, 100, 500, 10_000, 20_000, 10_000, 1000, 16_384)
        );
    }

    /// "Variable names are case-insensitive": the prefix, the section and the key.
    #[test]
    fn variable_names_are_case_insensitive() {
        let c = RelayConfig::load(
            "",
            "relay.toml",
            [
                ("gsio_relay_routing__default", "echo"),
                ("Gsio_Relay_Limits__Queue_Capacity", "9"),
                ("GSIO_RELAY_discovery__ANNOUNCE_peers", "false"),
            ],
        )
        .unwrap();
        assert_eq!(c.routing.default, Mode::Echo);
        assert_eq!(c.limits.queue_capacity, 9);
        assert!(!c.discovery.announce_peers);
        // Errors name the variable as it was spelled.
        let err =
            RelayConfig::load("", "relay.toml", [("gsio_relay_limits__typo", "1")]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Variable { variable, .. } if variable == "gsio_relay_limits__typo"),
            "{err:?}"
        );
        // Still only names with the prefix, and a `__` after it.
        let c = RelayConfig::load(
            "",
            "relay.toml",
            [
                ("relay_routing__default", "echo"),
                ("gsio_relay_config", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c, RelayConfig::default());
    }

    #[test]
    fn parse_errors_name_the_dotted_key() {
        let text = "# top\n[server]\nws_listen = 1\n\n[routing.rules]\n\"Ping\" = \"loud\"\n";
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(
            dotted_key_at(text, at("1\n")).as_deref(),
            Some("server.ws_listen")
        );
        assert_eq!(
            dotted_key_at(text, at("loud")).as_deref(),
            Some("routing.rules.Ping")
        );
        assert_eq!(
            dotted_key_at(text, at("rules]")).as_deref(),
            Some("routing.rules")
        );
        assert_eq!(dotted_key_at(text, 0), None);
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[routing]\ndefault = \"shout\"\n",
                &[
                    "t.toml",
                    "line 2",
                    "routing.default",
                    "echo",
                    "broadcast",
                    "directed",
                ],
            ),
            (
                "[routing]\ndefualt = \"echo\"\n",
                &["t.toml", "line 2", "defualt"],
            ),
            (
                "[limits]\nmax_message_bytes = \"big\"\n",
                &["t.toml", "line 2", "limits.max_message_bytes"],
            ),
            ("[limits\n", &["t.toml", "line 1"]),
            (
                "[limits]\nmax_message_bytes = 10\n",
                &["t.toml", "limits.max_message_bytes", "out of range"],
            ),
            (
                "[limits]\nqueue_capacity = 0\n",
                &["t.toml", "limits.queue_capacity"],
            ),
            (
                "[server]\nmax_connections = 0\n",
                &["t.toml", "server.max_connections"],
            ),
            (
                "[server]\nws_listen = \"127.0.0.1:9\"\ngrpc_listen = \"127.0.0.1:9\"\n",
                &["server.grpc_listen"],
            ),
            (
                "[server]\nws_listen = \"127.0.0.1:9\"\nadmin_listen = \"127.0.0.1:9\"\n",
                &["server.admin_listen", "server.ws_listen"],
            ),
            (
                "[server]\nadmin_listen = \"127.0.0.1:50051\"\n",
                &["server.admin_listen", "server.grpc_listen"],
            ),
            (
                "[server]\nadmin_listen = \"localhost\"\n",
                &["t.toml", "admin_listen", "line 2"],
            ),
            (
                "[server]\nws_listen = \"localhost\"\n",
                &["t.toml", "ws_listen", "line 2"],
            ),
            ("[routing.rules]\n\"\" = \"echo\"\n", &["routing.rules"]),
        ];
        for (text, wanted) in cases {
            let err = RelayConfig::from_toml_str(text, "t.toml")
                .unwrap_err()
                .to_string();
            for w in *wanted {
                assert!(err.contains(w), "{text:?}: {err:?} lacks {w:?}");
            }
        }
    }

    /// README: a frame is not read at all beyond "twice the size limit, and at least the limit
    /// plus 64 KiB".
    #[test]
    fn the_hard_frame_limit_is_twice_the_limit_and_at_least_64_kib_more() {
        let hard = |max_message_bytes| {
            Limits {
                max_message_bytes,
                ..Limits::default()
            }
            .hard_frame_bytes()
        };
        assert_eq!(hard(1_048_576), 2_097_152);
        assert_eq!(hard(65_536), 131_072);
        assert_eq!(hard(256), 256 + 65_536);
        assert_eq!(hard(60_000), 60_000 + 65_536);
        assert_eq!(hard(64 * 1024 * 1024), 128 * 1024 * 1024);
    }

    /// README: before it has an id, a connection may send frames and messages of at most
    /// `anonymous_message_bytes` (64 KiB by default), never more than the hard frame limit.
    #[test]
    fn the_anonymous_limit_is_64_kib_and_never_above_the_hard_limit() {
        let limits = Limits::default();
        assert_eq!(limits.anonymous_message_bytes, 65_536);
        assert_eq!(limits.anonymous_frame_bytes(), 65_536);
        assert_eq!(limits.partial_messages_budget_bytes, 64 * 1024 * 1024);
        let small = Limits {
            max_message_bytes: 256,
            anonymous_message_bytes: 1 << 20,
            ..Limits::default()
        };
        assert_eq!(small.anonymous_frame_bytes(), small.hard_frame_bytes());
    }

    /// The Worker's way (relay.toml parsed when it was built, `[vars]` laid over the result at
    /// run time) gives what the native loader gives, errors included, word for word.
    #[test]
    fn overrides_over_a_loaded_config_match_the_loader() {
        let file = include_str!("../../relay.toml");
        let cases: &[(&str, &str)] = &[
            ("GSIO_RELAY_ROUTING__DEFAULT", "echo"),
            ("GSIO_RELAY_ROUTING__DEFAULT", "\"directed\""),
            ("GSIO_RELAY_ROUTING__DEFAULT", "sideways"),
            ("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "8192"),
            ("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "1_000"),
            ("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "0"),
            ("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "-1"),
            ("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "1.5"),
            ("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "nan"),
            ("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "big"),
            ("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "true"),
            ("GSIO_RELAY_LIMITS__MAX_MESSAGE_BYTES", "10"),
            (
                "GSIO_RELAY_LIMITS__MAX_MESSAGE_BYTES",
                "99999999999999999999",
            ),
            ("GSIO_RELAY_DISCOVERY__ANNOUNCE_PEERS", "false"),
            ("GSIO_RELAY_DISCOVERY__ANNOUNCE_PEERS", "1"),
            ("GSIO_RELAY_DISCOVERY__ANNOUNCE_PEERS", "yes"),
            ("GSIO_RELAY_DISCOVERY__WELCOME_PEERS_MAX", "5"),
            ("GSIO_RELAY_LIMITS__TYPO", "1"),
            ("GSIO_RELAY_ROUTNG__DEFAULT", "echo"),
            ("GSIO_RELAY_ROUTING__DEFAULT__X", "echo"),
            ("GSIO_RELAY_ROUTING__RULES", "echo"),
            ("GSIO_RELAY_ROUTING__RULES__PING", "loud"),
            ("GSIO_RELAY_SERVER__WS_LISTEN", "localhost"),
            ("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:50051"),
            ("RELAY_ROUTING__DEFAULT", "sideways"),
        ];
        let loaded = RelayConfig::from_toml_str(file, "relay.toml").unwrap();
        for (name, value) in cases {
            let native = RelayConfig::load(file, "relay.toml", [(*name, *value)]);
            let worker = loaded.clone().with_overrides([(*name, *value)]);
            assert_eq!(worker, native, "{name}={value}");
        }
        let both = [
            ("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:9"),
            ("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:9"),
        ];
        assert_eq!(
            loaded.with_overrides(both),
            RelayConfig::load(file, "relay.toml", both)
        );
    }
}
