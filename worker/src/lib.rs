//! gsio-relay as a Cloudflare Worker: the native relay's WebSocket protocol and routing rules,
//! on Cloudflare's edge.
//!
//! # Layout
//! - [`fetch`] is the Worker's entry point. It owns no state: every WebSocket upgrade goes to
//!   the [`RelayRoom`] Durable Object named after the request path (one room per network; `/` is
//!   the default network). Any other request gets `426 Upgrade Required` (but the test hook of
//!   [`TEST_HOOKS_VAR`], where it is enabled).
//! - [`RelayRoom`] holds the peers of one network. The whole conversation (parsing, identity,
//!   Welcome and announcements, routing, errors, close codes) is `gsio-relay-core`'s
//!   [`Connection`], exactly as natively; this file only moves frames between sockets and the
//!   core, and keeps each socket's id on the socket.
//!
//! # Hibernation
//! Sockets are accepted with the WebSocket Hibernation API, so an idle room can be evicted
//! from memory while its sockets stay open. A peer's identity therefore lives in its socket's
//! attachment ([`PeerAttachment`]); the in-memory peer table ([`Room`]) is only a cache,
//! rebuilt from the attachments whenever an instance starts without it. `tests/worker.rs` lets
//! workerd really evict rooms (it does after 10 s without an event) and checks that the next
//! message, connect or close finds every peer.
//!
//! # Presence timer
//! Joins and leaves are announced by the core's presence log, coalesced over
//! `discovery.announce_window_ms` (see `gsio_relay_core::presence`). When a step asks for the
//! timer, the room starts one `setTimeout` ([`Network::start_presence_timer`], through
//! `worker::Delay`) and calls the core back when it fires, as long as the core asks. What waits
//! for it lives in memory only, and is never lost to hibernation: a Durable Object with a
//! timer pending is not hibernated (the runtime waits for its timers), and the timer stops
//! only once nothing waits. An instance that ends otherwise (a crash, a new deployment) loses
//! its sockets with it: their peers reconnect and get a fresh Welcome.
//!
//! # Configuration
//! The repository's `relay.toml` is parsed and validated when the Worker is built (`build.rs`,
//! with the native relay's loader: a bad file fails the build), and embedded as JSON. The
//! Worker's `[vars]` may override the keys in [`OVERRIDABLE`], with the same names, values and
//! errors as the native relay's environment variables.

#![forbid(unsafe_code)]

use std::cell::{RefCell, RefMut};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use gsio_relay_core::address::{AddressLimits, AddressTable};
use gsio_relay_core::auth::{Nonce, Secret, WS_PROTOCOL, WS_TOKEN_PREFIX};
use gsio_relay_core::error::close_code;
use gsio_relay_core::hub::ConnId;
use gsio_relay_core::{
    Connection, Handshake, Hub, Input, Link, Message, PeerId, Refused, RelayConfig, RelayError,
    Remembered, Step, Table,
};
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, event, Context, Delay, DurableObject, Env, Request, Response, Result, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

/// Name of the Durable Object namespace binding in `wrangler.toml`.
const RELAY_ROOM_BINDING: &str = "RELAY_ROOM";

/// The configuration every room starts from: relay.toml, validated by `build.rs`.
const RELAY_CONFIG_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/relay-config.json"));

/// The `relay.toml` keys a `[vars]` entry may override (string values: `"echo"`, `"4096"`).
pub const OVERRIDABLE: [&str; 19] = [
    "GSIO_RELAY_ROUTING__DEFAULT",
    "GSIO_RELAY_LIMITS__MAX_MESSAGE_BYTES",
    "GSIO_RELAY_LIMITS__QUEUE_CAPACITY",
    "GSIO_RELAY_LIMITS__MESSAGES_PER_SECOND",
    "GSIO_RELAY_LIMITS__MESSAGE_BURST",
    "GSIO_RELAY_LIMITS__BYTES_PER_SECOND",
    "GSIO_RELAY_LIMITS__BYTE_BURST",
    "GSIO_RELAY_LIMITS__RATE_LIMITED_MAX",
    "GSIO_RELAY_LIMITS__IDENTIFY_TIMEOUT_MS",
    "GSIO_RELAY_AUTH__MODE",
    "GSIO_RELAY_AUTH__AUDIENCE",
    "GSIO_RELAY_AUTH__TOKEN_SECRET_ENV",
    "GSIO_RELAY_AUTH__TOKEN_LEEWAY_S",
    "GSIO_RELAY_LIMITS__MAX_CONNECTIONS_PER_IP",
    "GSIO_RELAY_LIMITS__NEW_CONNECTIONS_PER_IP_PER_SECOND",
    "GSIO_RELAY_LIMITS__NEW_CONNECTIONS_PER_IP_BURST",
    "GSIO_RELAY_DISCOVERY__ANNOUNCE_PEERS",
    "GSIO_RELAY_DISCOVERY__WELCOME_PEERS_MAX",
    "GSIO_RELAY_DISCOVERY__ANNOUNCE_WINDOW_MS",
];

/// With this var set to "1", a plain `GET /<network>?__instance` names the room's current
/// instance, without touching its peer table: a new name means the runtime evicted the previous
/// instance. The tests use it to know that a room really was evicted before checking that
/// routing survives on the sockets' attachments alone. Without the var, such a request is an
/// ordinary one (answered `426`, or served as a WebSocket upgrade).
const TEST_HOOKS_VAR: &str = "GSIO_RELAY_TEST_HOOKS";
const INSTANCE_QUERY: &str = "__instance";

#[event(start)]
fn start() {
    // Turns a Rust panic into a readable `console.error` instead of a bare `unreachable`.
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    if !is_websocket_upgrade(&req)? && !is_test_hook(&req, &env)? {
        return upgrade_required();
    }
    let network = req.path();
    let room = env
        .durable_object(RELAY_ROOM_BINDING)?
        .get_by_name(&network)?;
    room.fetch_with_request(req).await
}

/// What a room remembers about one socket. It is stored with the socket itself, so it survives
/// hibernation.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PeerAttachment {
    /// Tells this socket apart from a later one that takes the same id.
    pub conn: ConnId,
    /// The peer's id once it is known; `None` until then.
    pub peer_id: Option<String>,
    /// The rest of the core's per-connection state: the challenge, the identification
    /// deadline, the rate buckets (a [`Connection`] is made anew for every message).
    #[serde(default)]
    pub remembered: Remembered,
    /// The client's address (`CF-Connecting-IP`) while it counts against the per-address
    /// limits; taken when the connection leaves, so that it is given back once.
    #[serde(default)]
    pub address: Option<String>,
}

impl PeerAttachment {
    fn ip(&self) -> Option<IpAddr> {
        self.address.as_deref().and_then(|a| a.parse().ok())
    }

    fn id(&self) -> Option<PeerId> {
        self.peer_id
            .as_deref()
            .and_then(|id| PeerId::parse(id).ok())
    }
}

/// The in-memory side of a room: a cache of what the attachments say.
struct Room {
    hub: Hub<Socket>,
    next_conn: ConnId,
    /// Connections per client address in this network (`limits.max_connections_per_ip`,
    /// `limits.new_connections_per_ip_per_second`). The live counts are rebuilt from the
    /// attachments after an eviction; the rates are not (an evicted room saw no connection for
    /// 10 s, more than any bucket needs to refill at a sane rate).
    addresses: AddressTable,
}

/// The most client addresses one room tracks (see `gsio_relay_core::address`); each holds a
/// socket of the room or connected within the last few seconds.
const ROOM_ADDRESSES: usize = 65_536;

/// The header Cloudflare sets to the client's address. Cloudflare replaces any a client sends;
/// `wrangler dev` (miniflare) sets it to the local client's address only when the request has
/// none, so locally a client may choose its own (the tests use that).
const CLIENT_IP_HEADER: &str = "CF-Connecting-IP";

/// Milliseconds since the epoch, as the core's `now`: workerd's clock, which moves with I/O
/// (enough for a rate per second; the core tolerates it standing still or going back).
fn now() -> Duration {
    Duration::from_millis(worker::Date::now().as_millis())
}

/// One relay network: every socket whose upgrade request had the same path.
#[durable_object]
pub struct RelayRoom {
    /// The network's state, shared with its presence timer (which outlives the event that
    /// started it).
    network: Rc<Network>,
    /// `GSIO_RELAY_TEST_HOOKS=1`: the test hook of [`TEST_HOOKS_VAR`] is answered.
    test_hooks: bool,
    /// Random, fixed when the runtime constructs this instance: tells it apart from the instance
    /// before an eviction (the `__instance` test hook).
    instance: u64,
}

impl DurableObject for RelayRoom {
    fn new(state: State, env: Env) -> Self {
        let vars: Vec<(&str, String)> = OVERRIDABLE
            .iter()
            .filter_map(|name| Some((*name, env.var(name).ok()?.to_string())))
            .collect();
        // The native relay's overrides, with [vars] in place of the environment.
        let config = serde_json::from_str::<RelayConfig>(RELAY_CONFIG_JSON)
            .map_err(|error| format!("relay.toml (built in): {error}"))
            .and_then(|config| config.with_overrides(vars).map_err(|e| e.to_string()))
            .and_then(|config| with_token_secret(config, &env))
            .map(|mut config| {
                // The Worker sends no pings (workerd has no API for a WebSocket Ping frame, and
                // waking every room on a timer would defeat hibernation): its Welcome says so.
                config.limits.ping_interval_ms = 0;
                Arc::new(config)
            });
        if let Err(error) = &config {
            worker::console_error!("gsio-relay: invalid configuration: {error}");
        }
        Self {
            network: Rc::new(Network {
                state,
                config,
                room: RefCell::new(None),
            }),
            test_hooks: test_hooks(&env),
            instance: random_u52(),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if let Err(error) = &self.network.config {
            return Response::error(format!("gsio-relay: invalid configuration: {error}"), 500);
        }
        if self.test_hooks && query_has(&req, INSTANCE_QUERY)? {
            return Response::ok(format!("instance {:013x}\n", self.instance));
        }
        if !is_websocket_upgrade(&req)? {
            return upgrade_required();
        }
        let node_id = query_param(&req, "node_id")?;
        let address = req.headers().get(CLIENT_IP_HEADER)?;
        let ip = address
            .as_deref()
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        if let Some(ip) = ip {
            let limits = self.address_limits();
            let admitted = self.network.room().addresses.admit(ip, now(), &limits);
            if let Err(refusal) = admitted {
                let error = RelayError::from(refusal);
                let mut response = Response::error(format!("{}: {error}", error.code()), 429)?;
                response.headers_mut().set("Retry-After", "1")?;
                return Ok(response);
            }
        }
        let (token, v1) = offered_protocols(&req)?;
        let conn = {
            let mut room = self.network.room();
            room.next_conn += 1;
            room.next_conn
        };
        let WebSocketPair { client, server } = WebSocketPair::new()?;
        self.network.state.accept_web_socket(&server);
        let mut attachment = PeerAttachment {
            conn,
            peer_id: None,
            remembered: Remembered::default(),
            address: ip.map(|ip| ip.to_string()),
        };
        server.serialize_attachment(&attachment)?;
        let mut connection = self.connection(&server, &attachment);
        let handshake = Handshake {
            node_id: node_id.as_deref(),
            token: token.as_deref(),
            nonce: Nonce(random_bytes()?),
            now: now(),
        };
        let step = connection.begin(&*self.network, handshake);
        self.carry_out(&server, &mut attachment, &mut connection, step);
        if let Some(deadline) = connection.deadline() {
            self.close_if_anonymous_at(server, deadline);
        }
        let mut response = Response::from_websocket(client)?;
        if v1 {
            response
                .headers_mut()
                .set("Sec-WebSocket-Protocol", WS_PROTOCOL)?;
        }
        Ok(response)
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        // Nothing from the network may fail the room: every error is answered or logged here.
        if self.network.config.is_err() {
            return Ok(());
        }
        let mut attachment = match ws.deserialize_attachment::<PeerAttachment>() {
            Ok(Some(attachment)) => attachment,
            other => {
                worker::console_error!("gsio-relay: socket without attachment: {other:?}");
                return Ok(());
            }
        };
        let input = match message {
            // The frame's own bytes, shared (not copied) by every recipient it is forwarded to.
            WebSocketIncomingMessage::String(text) => Input::Text(ByteString::from(text)),
            WebSocketIncomingMessage::Binary(_) => Input::Binary,
        };
        let mut connection = self.connection(&ws, &attachment);
        let step = connection.input(&*self.network, input, now());
        self.carry_out(&ws, &mut attachment, &mut connection, step);
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        // A hibernated socket's close frame is not answered by the runtime, so reciprocate it,
        // or the peer waits in CLOSING. Closing an already closed socket is a no-op.
        let code = u16::try_from(code).map_or(close_code::NORMAL, close_code::reply_to);
        if let Err(error) = ws.close(Some(code), Some(reason)) {
            worker::console_warn!("gsio-relay: answering a close frame failed: {error}");
        }
        self.leave(&ws);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> Result<()> {
        worker::console_warn!("gsio-relay: socket error: {error}");
        self.leave(&ws);
        Ok(())
    }
}

/// What a room's events and its presence timer share.
struct Network {
    /// Accepts sockets into the hibernation API and lists them after an eviction.
    state: State,
    /// The embedded relay.toml with `[vars]` over it; an error is answered to every request.
    config: std::result::Result<Arc<RelayConfig>, String>,
    /// `None` in a fresh instance until first needed (see [`Network::room`]). Never borrowed
    /// across an `.await`.
    room: RefCell<Option<Room>>,
}

impl Network {
    /// The core's connection for a socket, resumed from what its attachment remembers (its id,
    /// challenge, deadline and rate buckets).
    fn connection(&self, ws: &WebSocket, attachment: &PeerAttachment) -> Connection<Socket> {
        let mut connection =
            Connection::resume(attachment.conn, Socket(ws.clone()), attachment.id(), self);
        connection.recall(&attachment.remembered);
        connection
    }

    /// The peer table, rebuilt from the sockets' attachments when this instance has none.
    fn room(&self) -> RefMut<'_, Room> {
        let mut slot = self.room.borrow_mut();
        if slot.is_none() {
            *slot = Some(self.rebuild());
        }
        RefMut::map(slot, |room| room.as_mut().expect("just filled"))
    }

    fn rebuild(&self) -> Room {
        let config = self
            .config
            .clone()
            .expect("rooms only run with a valid config");
        let limits = AddressLimits::of(&config.limits);
        let mut addresses = AddressTable::new(ROOM_ADDRESSES);
        let now = now();
        let mut hub = Hub::new(config, id_seed());
        let mut next_conn = 0;
        for ws in self.state.get_websockets() {
            let Ok(Some(attachment)) = ws.deserialize_attachment::<PeerAttachment>() else {
                continue;
            };
            next_conn = next_conn.max(attachment.conn);
            if let Some(ip) = attachment.ip() {
                addresses.restore(ip, now, &limits);
            }
            if let Some(id) = attachment.id() {
                hub.restore(id, attachment.conn, Socket(ws));
            }
        }
        Room {
            hub,
            next_conn,
            addresses,
        }
    }

    /// Starts the presence timer the core asked for: after `delay`, the core announces what
    /// waits and says whether to run again. One timer at a time: the core asks only while
    /// none runs.
    fn start_presence_timer(self: &Rc<Self>, delay: Duration) {
        let network = self.clone();
        worker::wasm_bindgen_futures::spawn_local(async move {
            let mut delay = delay;
            loop {
                Delay::from(delay).await;
                match gsio_relay_core::presence_timer_fired(&*network).0 {
                    Some(next) => delay = next,
                    None => break,
                }
            }
        });
    }
}

impl RelayRoom {
    /// The core's connection for a socket, resumed from what its attachment remembers. It is
    /// made anew for each message, so its block of message ids is too: a message the room gives
    /// an id to uses up one block of 256 counter values, which is harmless (2^56 such messages
    /// before the counter wraps).
    fn connection(&self, ws: &WebSocket, attachment: &PeerAttachment) -> Connection<Socket> {
        self.network.connection(ws, attachment)
    }

    /// Closes `ws` at `deadline` if it has no peer id by then (`limits.identify_timeout_ms`).
    /// A pending timer keeps the room from hibernating for that long, which is the point: the
    /// anonymous socket is gone afterwards.
    fn close_if_anonymous_at(&self, ws: WebSocket, deadline: Duration) {
        let network = self.network.clone();
        worker::wasm_bindgen_futures::spawn_local(async move {
            Delay::from(deadline.saturating_sub(now())).await;
            let Ok(Some(mut attachment)) = ws.deserialize_attachment::<PeerAttachment>() else {
                return;
            };
            if attachment.peer_id.is_some() {
                return;
            }
            let mut connection = network.connection(&ws, &attachment);
            if let Step::Close(error) = connection.timed_out(&*network, now(), &mut ()) {
                if let Err(error) =
                    ws.close(Some(error.ws_close_code()), Some(error.close_reason()))
                {
                    worker::console_warn!("gsio-relay: close failed: {error}");
                }
                attachment.remembered = Remembered::default();
                let _ = ws.serialize_attachment(&attachment);
            }
        });
    }

    /// Carries out one step of the core's conversation: the socket remembers the id the
    /// connection now has, and a close is sent when the core says so.
    fn carry_out(
        &self,
        ws: &WebSocket,
        attachment: &mut PeerAttachment,
        connection: &mut Connection<Socket>,
        step: Step,
    ) {
        let mut released = false;
        if let Step::Close(error) = step {
            if let Err(error) = ws.close(Some(error.ws_close_code()), Some(error.close_reason())) {
                worker::console_warn!("gsio-relay: close failed: {error}");
            }
            // Out of the room now; the attachment below then forgets the id too.
            connection.leave(&*self.network);
            released = self.release_address(attachment);
        }
        if let Some(delay) = connection.poll_presence_timer() {
            self.network.start_presence_timer(delay);
        }
        let id = connection.id().map(|id| id.to_string());
        let remembered = connection.remembered();
        if id != attachment.peer_id || released || remembered != attachment.remembered {
            attachment.peer_id = id;
            attachment.remembered = remembered;
            if let Err(error) = ws.serialize_attachment(&*attachment) {
                worker::console_error!(
                    "gsio-relay: cannot record the peer id on its socket: {error}"
                );
            }
        }
    }

    fn leave(&self, ws: &WebSocket) {
        if self.network.config.is_err() {
            return;
        }
        let Ok(Some(mut attachment)) = ws.deserialize_attachment::<PeerAttachment>() else {
            return;
        };
        let mut connection = self.connection(ws, &attachment);
        connection.leave(&*self.network);
        if let Some(delay) = connection.poll_presence_timer() {
            self.network.start_presence_timer(delay);
        }
        let released = self.release_address(&mut attachment);
        // Forget the id on the socket too, in case the runtime still lists it on a rebuild.
        if attachment.peer_id.take().is_some() || released {
            let _ = ws.serialize_attachment(&attachment);
        }
    }

    /// The per-address limits in force.
    fn address_limits(&self) -> AddressLimits {
        match &self.network.config {
            Ok(config) => AddressLimits::of(&config.limits),
            Err(_) => AddressLimits::of(&Default::default()),
        }
    }

    /// Gives the connection's place in the per-address table back, once: `true` when it had
    /// one (the caller records the attachment).
    fn release_address(&self, attachment: &mut PeerAttachment) -> bool {
        let ip = attachment.ip();
        attachment.address = None;
        let Some(ip) = ip else { return false };
        let limits = self.address_limits();
        self.network.room().addresses.release(ip, now(), &limits);
        true
    }
}

/// The core reaches a peer of this room through its socket. workerd buffers what is sent, so
/// sending never waits; a socket that is already gone is only logged.
#[derive(Clone)]
struct Socket(WebSocket);

impl Link for Socket {
    fn send(&self, message: &Arc<Message>) -> std::result::Result<(), Refused> {
        self.0.send_with_str(message.json_str()).map_err(|error| {
            worker::console_warn!("gsio-relay: send failed: {error}");
            Refused::Gone
        })
    }
}

/// The room's peer table, for the core. Single-threaded: a `RefCell` borrow, never held across
/// an `.await` (every step of the core is synchronous).
impl Table<Socket> for Network {
    type Read<'t> = RefMut<'t, Hub<Socket>>;
    type Write<'t> = RefMut<'t, Hub<Socket>>;

    fn read(&self) -> Self::Read<'_> {
        RefMut::map(self.room(), |room| &mut room.hub)
    }

    fn write(&self) -> Self::Write<'_> {
        RefMut::map(self.room(), |room| &mut room.hub)
    }
}

/// 104 random bits (Math.random, twice) keying the message ids this room assigns: ids must be
/// unique, not secret, and each rebuilt room gets a fresh seed.
fn id_seed() -> u128 {
    (u128::from(random_u52()) << 64) | u128::from(random_u52())
}

/// 52 random bits from `Math.random` (as many as an f64 in [0, 1) carries).
fn random_u52() -> u64 {
    (worker::js_sys::Math::random() * (1u64 << 52) as f64) as u64
}

/// 32 bytes from the Web Crypto API (`crypto.getRandomValues`): a challenge must be
/// unpredictable, which `Math.random` is not.
fn random_bytes() -> Result<[u8; 32]> {
    use worker::js_sys::{Function, Reflect, Uint8Array};
    use worker::wasm_bindgen::JsCast;
    let crypto = Reflect::get(&worker::js_sys::global(), &"crypto".into())?;
    let fill: Function = Reflect::get(&crypto, &"getRandomValues".into())?.dyn_into()?;
    let array = Uint8Array::new_with_length(32);
    fill.call1(&crypto, &array)?;
    let mut bytes = [0; 32];
    array.copy_to(&mut bytes);
    Ok(bytes)
}

/// The config with the tokens' secret read from the Worker secret (or var) that
/// `auth.token_secret_env` names, when a mode takes tokens. A file cannot be read here.
fn with_token_secret(
    mut config: RelayConfig,
    env: &Env,
) -> std::result::Result<RelayConfig, String> {
    let auth = &config.auth;
    if !auth.uses_tokens() {
        return Ok(config);
    }
    let Some(name) = auth.token_secret_env.clone() else {
        return Err(
            "auth.token_secret_file: the Worker reads no files; name a Worker secret in auth.token_secret_env"
                .to_owned(),
        );
    };
    let value = env
        .secret(&name)
        .or_else(|_| env.var(&name))
        .map_err(|_| format!("auth.token_secret_env: the Worker secret {name} is not set"))?;
    let secret = Secret::new(value.to_string().as_bytes())
        .map_err(|message| format!("auth.token_secret_env: {name}: {message}"))?;
    config.auth.token_secret = Some(secret);
    Ok(config)
}

/// What the upgrade's `Sec-WebSocket-Protocol` offers: a token (`gsio.token.<token>`), and
/// whether the client speaks `gsio.v1` (then named in the answer, as browsers require).
fn offered_protocols(req: &Request) -> Result<(Option<String>, bool)> {
    let mut token = None;
    let mut v1 = false;
    if let Some(value) = req.headers().get("Sec-WebSocket-Protocol")? {
        for protocol in value.split(',').map(str::trim) {
            if protocol == WS_PROTOCOL {
                v1 = true;
            } else if let Some(t) = protocol.strip_prefix(WS_TOKEN_PREFIX) {
                token = Some(t.to_owned());
            }
        }
    }
    Ok((token, v1))
}

fn test_hooks(env: &Env) -> bool {
    env.var(TEST_HOOKS_VAR)
        .is_ok_and(|value| value.to_string() == "1")
}

/// A request for the test hook, on a Worker where it is enabled.
fn is_test_hook(req: &Request, env: &Env) -> Result<bool> {
    Ok(test_hooks(env) && query_has(req, INSTANCE_QUERY)?)
}

fn query_param(req: &Request, name: &str) -> Result<Option<String>> {
    Ok(form_urlencoded::parse(query(req).as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned()))
}

fn query_has(req: &Request, name: &str) -> Result<bool> {
    Ok(form_urlencoded::parse(query(req).as_bytes()).any(|(key, _)| key == name))
}

/// The request's query, for `form_urlencoded::parse` (what `Url::query_pairs` decodes it
/// with). workerd hands over the URL already parsed and serialized (WHATWG), so the query is
/// what follows the first `?`, up to a `#`; parsing the URL again with `Request::url` would put
/// the `url` crate's parser and its IDNA tables in the wasm for nothing (BENCHMARKS.md, "Worker
/// (wrangler dev)").
fn query(req: &Request) -> String {
    let url = req.inner().url();
    match url.split_once('?') {
        Some((_, rest)) => rest.split('#').next().unwrap_or_default().to_owned(),
        None => String::new(),
    }
}

fn is_websocket_upgrade(req: &Request) -> Result<bool> {
    Ok(req
        .headers()
        .get("Upgrade")?
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket")))
}

/// The answer to a plain HTTP request. (An `Upgrade: websocket` header would belong here too,
/// but workerd drops it from a non-101 response, as seen under `wrangler dev`.)
fn upgrade_required() -> Result<Response> {
    Ok(Response::ok(
        "gsio-relay is a WebSocket endpoint: connect with a WebSocket client, \
         e.g. ws://<host>/<network>\n",
    )?
    .with_status(426))
}
