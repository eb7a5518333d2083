//! gsio-relay as a Cloudflare Worker: the native relay's WebSocket protocol and routing rules,
//! on Cloudflare's edge.
//!
//! # Layout
//! - [`fetch`] is the Worker's entry point. It owns no state: every WebSocket upgrade goes to
//!   the [`RelayRoom`] Durable Object named after the request path (one room per network; `/` is
//!   the default network). Any other request gets `426 Upgrade Required`.
//! - [`RelayRoom`] holds the peers of one network. Every decision (parsing, identity, routing,
//!   the relay's own envelopes) is made by `gsio-relay-core`, exactly as natively; this file
//!   only moves frames between sockets and the core.
//!
//! # Hibernation
//! Sockets are accepted with the WebSocket Hibernation API, so an idle room can be evicted
//! from memory while its sockets stay open. A peer's identity therefore lives in its socket's
//! attachment ([`PeerAttachment`]); the in-memory peer table ([`Room`]) is only a cache,
//! rebuilt from the attachments whenever an instance starts without it.
//!
//! # Configuration
//! The repository's `relay.toml` is embedded at build time. The Worker's `[vars]` may override
//! the keys in [`OVERRIDABLE`], with the same names as the native relay's environment variables.

use std::cell::{RefCell, RefMut};
use std::sync::Arc;

use bytes::Bytes;
use gsio_relay_core::hub::{error_message, ConnId};
use gsio_relay_core::{Hub, Message, PeerId, RelayConfig, RelayError, Session};
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, event, Context, DurableObject, Env, Request, Response, Result, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

/// Name of the Durable Object namespace binding in `wrangler.toml`.
const RELAY_ROOM_BINDING: &str = "RELAY_ROOM";

/// The configuration every room starts from.
const RELAY_TOML: &str = include_str!("../../relay.toml");

/// The `relay.toml` keys a `[vars]` entry may override (string values: `"echo"`, `"4096"`).
pub const OVERRIDABLE: [&str; 5] = [
    "RELAY_ROUTING__DEFAULT",
    "RELAY_LIMITS__MAX_MESSAGE_BYTES",
    "RELAY_LIMITS__QUEUE_CAPACITY",
    "RELAY_DISCOVERY__ANNOUNCE_PEERS",
    "RELAY_DISCOVERY__WELCOME_PEERS_MAX",
];

/// With this var set to "1", `GET /<network>?__forget` drops the room's in-memory state, as an
/// eviction would; the tests use it to check that routing survives on attachments alone.
const TEST_HOOKS_VAR: &str = "RELAY_TEST_HOOKS";
const FORGET_QUERY: &str = "__forget";

/// Close codes (RFC 6455, section 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;

#[event(start)]
fn start() {
    // Turns a Rust panic into a readable `console.error` instead of a bare `unreachable`.
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    if !is_websocket_upgrade(&req)? && !is_forget(&req, &env)? {
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
}

/// The in-memory side of a room: a cache of what the attachments say.
struct Room {
    hub: Hub<WebSocket>,
    next_conn: ConnId,
}

/// One relay network: every socket whose upgrade request had the same path.
#[durable_object]
pub struct RelayRoom {
    /// Accepts sockets into the hibernation API and lists them after an eviction.
    state: State,
    /// The embedded relay.toml with `[vars]` over it; an error is answered to every request.
    config: std::result::Result<Arc<RelayConfig>, String>,
    /// `None` in a fresh instance until first needed (see [`RelayRoom::room`]). Never borrowed
    /// across an `.await`.
    room: RefCell<Option<Room>>,
    test_hooks: bool,
}

impl DurableObject for RelayRoom {
    fn new(state: State, env: Env) -> Self {
        let vars: Vec<(&str, String)> = OVERRIDABLE
            .iter()
            .filter_map(|name| Some((*name, env.var(name).ok()?.to_string())))
            .collect();
        let config = RelayConfig::from_toml_with_vars(
            RELAY_TOML,
            "relay.toml (embedded)",
            vars.iter().map(|(name, value)| (*name, value.as_str())),
        )
        .map(Arc::new);
        if let Err(error) = &config {
            worker::console_error!("gsio-relay: invalid configuration: {error}");
        }
        Self {
            state,
            config,
            room: RefCell::new(None),
            test_hooks: test_hooks(&env),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let config = match &self.config {
            Ok(config) => config.clone(),
            Err(error) => {
                return Response::error(format!("gsio-relay: invalid configuration: {error}"), 500)
            }
        };
        if self.test_hooks && query_has(&req, FORGET_QUERY)? {
            self.room.replace(None);
            return Response::ok("in-memory state dropped\n");
        }
        if !is_websocket_upgrade(&req)? {
            return upgrade_required();
        }
        let node_id = query_param(&req, "node_id")?;
        let conn = {
            let mut room = self.room();
            room.next_conn += 1;
            room.next_conn
        };
        let WebSocketPair { client, server } = WebSocketPair::new()?;
        self.state.accept_web_socket(&server);
        let mut attachment = PeerAttachment {
            conn,
            peer_id: None,
        };
        server.serialize_attachment(&attachment)?;
        if let Some(raw) = node_id {
            let joined = PeerId::parse(&raw).and_then(|id| self.join(&server, &mut attachment, id));
            if let Err(error) = joined {
                send(&server, &error_message("", &error, None));
                close(&server, CLOSE_POLICY, &error);
            }
        }
        drop(config);
        Response::from_websocket(client)
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        // Nothing from the network may fail the room: every error is answered or logged here.
        let mut attachment = match ws.deserialize_attachment::<PeerAttachment>() {
            Ok(Some(attachment)) => attachment,
            other => {
                worker::console_error!("gsio-relay: socket without attachment: {other:?}");
                return Ok(());
            }
        };
        match message {
            WebSocketIncomingMessage::String(text) => self.receive(&ws, &mut attachment, text),
            WebSocketIncomingMessage::Binary(_) => reject(
                &ws,
                &attachment,
                RelayError::UnsupportedFrame(
                    "binary frames are not accepted; send each envelope as a JSON text frame",
                ),
                None,
            ),
        }
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
        // or the peer waits in CLOSING. Codes that must not be sent (1005, 1006, 1015) become
        // 1000; closing an already closed socket is a no-op.
        let code = match u16::try_from(code) {
            Ok(code @ (1000..=1003 | 1007..=1014 | 3000..=4999)) => code,
            _ => CLOSE_NORMAL,
        };
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

impl RelayRoom {
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
        let mut hub = Hub::new(config);
        let mut next_conn = 0;
        for ws in self.state.get_websockets() {
            let Ok(Some(attachment)) = ws.deserialize_attachment::<PeerAttachment>() else {
                continue;
            };
            next_conn = next_conn.max(attachment.conn);
            if let Some(id) = attachment
                .peer_id
                .as_deref()
                .and_then(|s| PeerId::parse(s).ok())
            {
                hub.restore(id, attachment.conn, ws);
            }
        }
        Room { hub, next_conn }
    }

    fn max_message_bytes(&self) -> usize {
        self.config
            .as_ref()
            .map_or(0, |config| config.limits.max_message_bytes)
    }

    /// Adds the peer to the hub, records its id on the socket, and sends the Welcome and the
    /// PeerJoined announcements.
    fn join(
        &self,
        ws: &WebSocket,
        attachment: &mut PeerAttachment,
        id: PeerId,
    ) -> std::result::Result<(), RelayError> {
        let mut room = self.room();
        let joined = room.hub.join(id.clone(), attachment.conn, ws.clone())?;
        attachment.peer_id = Some(id.to_string());
        if let Err(error) = ws.serialize_attachment(&*attachment) {
            worker::console_error!("gsio-relay: cannot record peer id {id}: {error}");
        }
        send(ws, &joined.welcome);
        if let Some(announcement) = joined.announcement {
            for peer in room.hub.others(&id) {
                send(peer, &announcement);
            }
        }
        Ok(())
    }

    fn receive(&self, ws: &WebSocket, attachment: &mut PeerAttachment, text: String) {
        let mut session = Session::new();
        if let Some(id) = attachment
            .peer_id
            .as_deref()
            .and_then(|s| PeerId::parse(s).ok())
        {
            session.bind(id);
        }
        // The frame's own bytes, shared (not copied) by every recipient it is forwarded to.
        let original = Bytes::from(text);
        let text = std::str::from_utf8(&original).expect("a String is UTF-8");
        let inbound = match session.accept_text(text, original.clone(), self.max_message_bytes()) {
            Ok(inbound) => inbound,
            Err(rejected) => {
                return reject(
                    ws,
                    attachment,
                    rejected.error,
                    rejected.message_type.as_deref(),
                )
            }
        };
        let message = inbound.message;
        let message_type = message.envelope().message_type.as_str();
        if let Some(id) = inbound.claim {
            if let Err(error) = self.join(ws, attachment, id.clone()) {
                return reject(ws, attachment, error, Some(message_type));
            }
            session.bind(id);
        }
        let sender = session.id().expect("admission binds the session");
        let room = self.room();
        match room.hub.route(sender, &message) {
            Ok(targets) => {
                for peer in targets {
                    send(peer, &message);
                }
            }
            Err(error) => {
                drop(room);
                reject(ws, attachment, error, Some(message_type));
            }
        }
    }

    fn leave(&self, ws: &WebSocket) {
        let Ok(Some(mut attachment)) = ws.deserialize_attachment::<PeerAttachment>() else {
            return;
        };
        let Some(id) = attachment
            .peer_id
            .take()
            .and_then(|s| PeerId::parse(&s).ok())
        else {
            return;
        };
        // Forget the id on the socket too, in case the runtime still lists it on a rebuild.
        let _ = ws.serialize_attachment(&attachment);
        let mut room = self.room();
        // A table rebuilt just now may lack this socket (the runtime stops listing a socket
        // once it closes); its attachment still proves it held the id, unless another
        // connection holds it now.
        room.hub.restore(id.clone(), attachment.conn, ws.clone());
        if let Some((_, Some(announcement))) = room.hub.leave(&id, attachment.conn) {
            for peer in room.hub.others(&id) {
                send(peer, &announcement);
            }
        }
    }
}

/// Sends one envelope; a socket that is already gone is only logged.
fn send(ws: &WebSocket, message: &Message) {
    if let Err(error) = ws.send_with_str(message.json_str()) {
        worker::console_warn!("gsio-relay: send failed: {error}");
    }
}

/// Answers a bad envelope with an `Error` envelope; the socket stays open.
fn reject(
    ws: &WebSocket,
    attachment: &PeerAttachment,
    error: RelayError,
    message_type: Option<&str>,
) {
    let recipient = attachment.peer_id.as_deref().unwrap_or("");
    send(ws, &error_message(recipient, &error, message_type));
}

/// Closes a socket, telling why (the reason starts with the error code).
fn close(ws: &WebSocket, code: u16, error: &RelayError) {
    if let Err(error) = ws.close(Some(code), Some(error.close_reason())) {
        worker::console_warn!("gsio-relay: close failed: {error}");
    }
}

fn test_hooks(env: &Env) -> bool {
    env.var(TEST_HOOKS_VAR)
        .is_ok_and(|value| value.to_string() == "1")
}

fn is_forget(req: &Request, env: &Env) -> Result<bool> {
    Ok(test_hooks(env) && query_has(req, FORGET_QUERY)?)
}

fn query_param(req: &Request, name: &str) -> Result<Option<String>> {
    Ok(req
        .url()?
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned()))
}

fn query_has(req: &Request, name: &str) -> Result<bool> {
    Ok(req.url()?.query_pairs().any(|(key, _)| key == name))
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
