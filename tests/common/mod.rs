//! Shared by the integration tests: a real relay on 127.0.0.1 with ephemeral ports, and real
//! clients for both fronts (tokio-tungstenite, the generated tonic client); a real nats-server
//! for the cluster ([`nats`]).
#![allow(dead_code)]

pub mod auth;
pub mod binary;
pub mod cdp;
pub mod cluster;
pub mod conformance;
pub mod gsio_net;
pub mod http;
pub mod mutate;
pub mod nats;
pub mod wrangler;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gsio_relay::pb;
use gsio_relay::pb::relay_service_client::RelayServiceClient;
use gsio_relay_core::RelayConfig;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tonic::transport::Channel;

/// How long a test waits for something that should arrive.
pub const ARRIVES: Duration = Duration::from_secs(10);
/// How long a test waits to be sure something does not arrive, where no sentinel can prove it
/// (see [`Peer::expect_silence`]).
pub const QUIET: Duration = Duration::from_millis(300);

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The shipped relay.toml's text, listening on ephemeral ports.
pub fn shipped_relay_toml_on_ephemeral_ports() -> String {
    let text = std::fs::read_to_string(repo_path("relay.toml")).unwrap();
    let mut text = text.clone();
    for (from, to) in [
        (
            "ws_listen = \"127.0.0.1:8787\"",
            "ws_listen = \"127.0.0.1:0\"",
        ),
        (
            "grpc_listen = \"127.0.0.1:50051\"",
            "grpc_listen = \"127.0.0.1:0\"",
        ),
        (
            "admin_listen = \"127.0.0.1:9090\"",
            "admin_listen = \"127.0.0.1:0\"",
        ),
    ] {
        assert!(text.contains(from), "the shipped relay.toml lost {from}");
        text = text.replace(from, to);
    }
    text
}

/// The shipped relay.toml, on ephemeral ports.
pub fn shipped_config() -> RelayConfig {
    let text = std::fs::read_to_string(repo_path("relay.toml")).unwrap();
    let mut config = RelayConfig::from_toml_str(&text, "relay.toml").unwrap();
    config.server.ws_listen = "127.0.0.1:0".parse().unwrap();
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config
}

/// A relay running in this process.
pub struct TestRelay {
    pub ws_url: String,
    pub grpc_url: String,
    /// The admin listener: `http://127.0.0.1:PORT`.
    pub admin_url: String,
    pub relay: std::sync::Arc<gsio_relay::state::Relay>,
    /// The relay.toml it reloads, when started by [`TestRelay::watching`].
    pub relay_toml: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), gsio_relay::server::ServerError>>>,
}

impl TestRelay {
    pub async fn start() -> TestRelay {
        TestRelay::start_with(shipped_config()).await
    }

    pub async fn start_with(config: RelayConfig) -> TestRelay {
        TestRelay::serve(gsio_relay::Server::bind(config).await.expect("bind"))
    }

    /// A relay started on the file at `path` (loaded as the binary loads it, the environment's
    /// overrides included), on ephemeral ports, that reloads the file when it changes.
    pub async fn watching(path: &Path) -> TestRelay {
        let mut config = gsio_relay::config::load(path).expect("a valid relay.toml to start on");
        config.server.ws_listen = "127.0.0.1:0".parse().unwrap();
        config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
        config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
        let mut server = gsio_relay::Server::bind(config).await.expect("bind");
        let _ = server.watch_config(path);
        let mut relay = TestRelay::serve(server);
        relay.relay_toml = Some(path.to_owned());
        relay
    }

    /// A relay on a copy of the shipped relay.toml (on ephemeral ports) in a folder of its own,
    /// reloading it when it changes ([`TestRelay::relay_toml`]).
    pub async fn reloading() -> TestRelay {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("relay-toml-{}", next_message_id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, shipped_relay_toml_on_ephemeral_ports()).unwrap();
        TestRelay::watching(&path).await
    }

    fn serve(server: gsio_relay::Server) -> TestRelay {
        let ws_url = format!("ws://{}", server.ws_addr());
        let grpc_url = format!("http://{}", server.grpc_addr());
        let admin_url = format!("http://{}", server.admin_addr());
        let relay = server.relay();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestRelay {
            ws_url,
            grpc_url,
            admin_url,
            relay,
            relay_toml: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts the graceful shutdown and returns the server task, to await its end.
    pub fn shut_down(&mut self) -> JoinHandle<Result<(), gsio_relay::server::ServerError>> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap()
    }

    /// Shuts down gracefully, waits (at most a minute) until the server has finished, and says
    /// how long that took.
    pub async fn shut_down_timed(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let server = self.shut_down();
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("server did not finish shutting down")
            .unwrap()
            .unwrap();
        started.elapsed()
    }

    pub async fn ws(&self, id: &str) -> WsPeer {
        let mut peer = WsPeer::connect(&format!("{}/?node_id={id}", self.ws_url)).await;
        peer.expect_welcome(id).await;
        peer
    }

    pub async fn grpc(&self, id: &str) -> GrpcPeer {
        let mut peer = GrpcPeer::connect(&self.grpc_url, Some(id)).await.unwrap();
        peer.expect_welcome(id).await;
        peer
    }

    /// A peer welcomed as `id` on `front`.
    pub async fn join(&self, front: Front, id: &str) -> AnyPeer {
        match front {
            Front::Ws => AnyPeer::Ws(self.ws(id).await),
            Front::Grpc => AnyPeer::Grpc(self.grpc(id).await),
        }
    }
}

/// Which front a test peer uses.
#[derive(Debug, Clone, Copy)]
pub enum Front {
    Ws,
    Grpc,
}

/// An envelope as a test client received it; the payload is kept as raw text, so payload
/// fidelity can be checked to the byte.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Got {
    pub message_type: String,
    pub message_id: String,
    pub sender_id: String,
    pub recipient_id: String,
    #[serde(deserialize_with = "raw_text")]
    pub payload: String,
}

fn raw_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw: Box<RawValue> = Deserialize::deserialize(d)?;
    Ok(raw.get().to_owned())
}

impl Got {
    pub fn payload_json(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap()
    }

    /// The `code` of an `Error` envelope.
    pub fn error_code(&self) -> String {
        assert_eq!(
            self.message_type, "Error",
            "expected an Error, got {self:?}"
        );
        self.payload_json()["code"].as_str().unwrap().to_owned()
    }
}

/// The ids an announcement says `(left, joined)`: `PeerJoined` and `PeerLeft` name one,
/// `PeersChanged` lists them; `None` for any other envelope.
pub fn announced(got: &Got) -> Option<(Vec<String>, Vec<String>)> {
    let payload = got.payload_json();
    let one = || vec![payload["peer_id"].as_str().expect("peer_id").to_owned()];
    let list = |key: &str| -> Vec<String> {
        payload[key]
            .as_array()
            .unwrap_or_else(|| panic!("PeersChanged without `{key}`: {got:?}"))
            .iter()
            .map(|id| id.as_str().expect("ids are strings").to_owned())
            .collect()
    };
    match got.message_type.as_str() {
        "PeerJoined" => Some((Vec::new(), one())),
        "PeerLeft" => Some((one(), Vec::new())),
        "PeersChanged" => Some((list("left"), list("joined"))),
        _ => None,
    }
}

/// An envelope to send, as JSON text, with a fresh `message_id` (as gsio-net's clients send
/// them), so that the relay has nothing to fill in when `sender` is the peer's id.
pub fn envelope(message_type: &str, sender: &str, recipient: &str, payload: &str) -> String {
    format!(
        r#"{{"message_type":{},"message_id":"{}","sender_id":{},"recipient_id":{},"payload":{payload}}}"#,
        Value::from(message_type),
        next_message_id(),
        Value::from(sender),
        Value::from(recipient)
    )
}

/// A message id no other test message in this process has.
pub fn next_message_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test-{}-{n}", std::process::id())
}

/// Common to both kinds of test peer.
#[allow(async_fn_in_trait)]
pub trait Peer {
    async fn send(&mut self, message_type: &str, sender: &str, recipient: &str, payload: &str);
    /// The next envelope, within [`ARRIVES`].
    async fn recv(&mut self) -> Got;
    /// Some envelope arrives within `wait`, or none.
    async fn try_recv(&mut self, wait: Duration) -> Option<Got>;

    async fn expect_welcome(&mut self, id: &str) -> Value {
        let got = self.recv().await;
        assert_eq!(got.message_type, "Welcome", "{got:?}");
        assert_eq!(
            (got.sender_id.as_str(), got.recipient_id.as_str()),
            ("relay", id)
        );
        let payload = got.payload_json();
        assert_eq!(payload["peer_id"], id);
        payload
    }

    /// The next envelope that is not an announcement (`PeerJoined`, `PeerLeft`, `PeersChanged`).
    async fn recv_skipping_announcements(&mut self) -> Got {
        loop {
            let got = self.recv().await;
            if announced(&got).is_none() {
                return got;
            }
        }
    }

    /// Announcements, however the relay coalesced them (one `PeerJoined`/`PeerLeft` each, or
    /// `PeersChanged` lists), until exactly `joined` and `left` have been announced (in any
    /// order, each once). Anything else arriving first, an id announced that is not expected,
    /// or one announced twice, fails. Returns the envelopes.
    async fn expect_presence(&mut self, joined: &[&str], left: &[&str]) -> Vec<Got> {
        let mut want_joined: Vec<String> = joined.iter().map(|s| s.to_string()).collect();
        let mut want_left: Vec<String> = left.iter().map(|s| s.to_string()).collect();
        let mut envelopes = Vec::new();
        while !(want_joined.is_empty() && want_left.is_empty()) {
            let got = self.recv().await;
            let Some((gone, came)) = announced(&got) else {
                panic!(
                    "expected announcements of joined {want_joined:?} and left {want_left:?}; \
                     this arrived first: {got:?}"
                );
            };
            for (ids, want, what) in [
                (gone, &mut want_left, "left"),
                (came, &mut want_joined, "joined"),
            ] {
                for id in ids {
                    let at = want.iter().position(|w| *w == id).unwrap_or_else(|| {
                        panic!("{id} announced as {what}, not expected (or twice): {got:?}")
                    });
                    want.remove(at);
                }
            }
            envelopes.push(got);
        }
        envelopes
    }

    async fn expect_error(&mut self, code: &str) -> Got {
        let got = self.recv_skipping_announcements().await;
        assert_eq!(got.error_code(), code, "{got:?}");
        got
    }

    /// The next envelope is of `message_type` with `payload`: a sentinel, sent after the
    /// envelopes that must not reach this peer over the same path (one sender, one recipient:
    /// ordered), so nothing else arrived before it. Returns it.
    async fn expect_sentinel(&mut self, message_type: &str, payload: &str) -> Got {
        let got = self.recv().await;
        assert_eq!(
            (got.message_type.as_str(), got.payload.as_str()),
            (message_type, payload),
            "expected the sentinel {message_type} {payload}; this arrived before it: {got:?}"
        );
        got
    }

    /// Nothing arrives within [`QUIET`]. A timed wait, so a last resort: it cannot tell "never"
    /// from "later". Where a later envelope over the same path can follow what must not
    /// arrive, use a sentinel ([`Peer::expect_sentinel`]) instead.
    async fn expect_silence(&mut self) {
        if let Some(got) = self.try_recv(QUIET).await {
            panic!("expected nothing, got {got:?}");
        }
    }
}

/// Proves with a sentinel that `to` received none of `from`'s earlier envelopes: one more
/// envelope from `from` directed to `to` (one sender, one recipient: it arrives after anything
/// `from` sent before it) must be the next thing `to` receives. Needs the shipped rules
/// (`LedgerSyncResponse` directed).
pub async fn nothing_else_from<P: Peer, Q: Peer>(
    from: &mut P,
    from_id: &str,
    to: &mut Q,
    to_id: &str,
) {
    let payload = format!("\"sentinel {}\"", next_message_id());
    from.send("LedgerSyncResponse", from_id, to_id, &payload)
        .await;
    to.expect_sentinel("LedgerSyncResponse", &payload).await;
}

/// Proves with a sentinel that `peer` got none of its own earlier envelopes back (nor an answer
/// to them beyond those already read): an echo it sends now must be the next thing it receives.
/// Needs the shipped rules (`Ping` echo).
pub async fn nothing_else_back<P: Peer>(peer: &mut P, id: &str) {
    let payload = format!("\"sentinel {}\"", next_message_id());
    peer.send("Ping", id, "", &payload).await;
    peer.expect_sentinel("Ping", &payload).await;
}

/// A client frame's header (RFC 6455, 5.2): `first` is the FIN/RSV/opcode byte, the length
/// field says `announced` (whatever follows), then the masking `key`.
pub fn client_frame_header(first: u8, announced: u64, key: [u8; 4]) -> Vec<u8> {
    let mut header = vec![first];
    match announced {
        0..=125 => header.push(0x80 | announced as u8),
        126..=0xffff => {
            header.push(0x80 | 126);
            header.extend_from_slice(&(announced as u16).to_be_bytes());
        }
        _ => {
            header.push(0x80 | 127);
            header.extend_from_slice(&announced.to_be_bytes());
        }
    }
    header.extend_from_slice(&key);
    header
}

/// A WebSocket client (tokio-tungstenite).
pub struct WsPeer {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsPeer {
    pub async fn connect(url: &str) -> WsPeer {
        let (ws, _) = tokio::time::timeout(ARRIVES, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        WsPeer { ws }
    }

    /// Connects offering these WebSocket subprotocols; returns the one the relay chose.
    pub async fn connect_offering(url: &str, protocols: &str) -> (WsPeer, Option<String>) {
        use tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        let (ws, response) =
            tokio::time::timeout(ARRIVES, tokio_tungstenite::connect_async(request))
                .await
                .expect("connect timed out")
                .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        (WsPeer { ws }, chosen)
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).await.unwrap();
    }

    pub async fn send_frame(&mut self, frame: WsMessage) {
        self.ws.send(frame).await.unwrap();
    }

    /// The next text frame's raw text.
    pub async fn recv_text(&mut self) -> String {
        match self.recv_frame(ARRIVES).await {
            Some(WsMessage::Text(text)) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame other than ping/pong, within `wait`; `None` on timeout.
    pub async fn recv_frame(&mut self, wait: Duration) -> Option<WsMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("connection ended"),
                Ok(Some(Err(e))) => panic!("read failed: {e}"),
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
                Ok(Some(Ok(frame))) => return Some(frame),
            }
        }
    }

    /// Reads until the relay closes; returns the close frame's code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(ARRIVES, self.ws.next()).await {
                Err(_) => panic!("no close within {ARRIVES:?}"),
                Ok(Some(Ok(WsMessage::Close(frame)))) => {
                    // Keep reading, as a browser does: tungstenite sends the close reply and
                    // the stream ends.
                    let _ = tokio::time::timeout(ARRIVES, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return frame.map_or((1005, String::new()), |f| {
                        (f.code.into(), f.reason.to_string())
                    });
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("read failed before close: {e}"),
                Ok(None) => panic!("connection ended without a close frame"),
            }
        }
    }
}

impl Peer for WsPeer {
    async fn send(&mut self, message_type: &str, sender: &str, recipient: &str, payload: &str) {
        self.send_text(&envelope(message_type, sender, recipient, payload))
            .await;
    }

    async fn recv(&mut self) -> Got {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad envelope {text}: {e}"))
    }

    async fn try_recv(&mut self, wait: Duration) -> Option<Got> {
        match self.recv_frame(wait).await? {
            WsMessage::Text(text) => Some(serde_json::from_str(&text).unwrap()),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// One HTTP/2 connection to the gRPC front, made now (not lazily).
pub async fn grpc_channel(url: &str) -> Channel {
    let endpoint = Channel::from_shared(url.to_owned()).expect("a valid URL");
    tokio::time::timeout(ARRIVES, endpoint.connect())
        .await
        .unwrap_or_else(|_| panic!("connect {url} timed out"))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// A gRPC client: the generated tonic client over one `Exchange` stream.
pub struct GrpcPeer {
    pub tx: mpsc::Sender<pb::Envelope>,
    pub inbound: tonic::Streaming<pb::Envelope>,
}

impl GrpcPeer {
    /// Opens a stream on a connection of its own, with `x-gsio-node-id` metadata when `id` is
    /// given.
    pub async fn connect(url: &str, id: Option<&str>) -> Result<GrpcPeer, tonic::Status> {
        GrpcPeer::over(grpc_channel(url).await, id).await
    }

    /// Opens a stream on `channel` (one HTTP/2 connection carries any number of them), with
    /// `x-gsio-node-id` metadata when `id` is given. The answer (stream opened or refused)
    /// must come within [`ARRIVES`].
    pub async fn over(channel: Channel, id: Option<&str>) -> Result<GrpcPeer, tonic::Status> {
        let metadata: Vec<(&str, String)> = id
            .map(|id| ("x-gsio-node-id", id.to_owned()))
            .into_iter()
            .collect();
        GrpcPeer::with_metadata(channel, &metadata).await
    }

    /// Opens a stream on `channel` with these metadata entries.
    pub async fn with_metadata(
        channel: Channel,
        metadata: &[(&'static str, String)],
    ) -> Result<GrpcPeer, tonic::Status> {
        let mut client = RelayServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(1024);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        for (key, value) in metadata {
            request.metadata_mut().insert(*key, value.parse().unwrap());
        }
        let inbound = tokio::time::timeout(ARRIVES, client.exchange(request))
            .await
            .expect("no answer to a new stream")?
            .into_inner();
        Ok(GrpcPeer { tx, inbound })
    }

    /// Closes the sending side (leaving the relay) and waits for the stream's `OK`.
    pub async fn leave(mut self) {
        // Dropping the only sender ends the request stream: the client half-closes.
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
        let status = self.expect_status().await;
        assert_eq!(status.code(), tonic::Code::Ok, "{status:?}");
    }

    pub async fn send_pb(&mut self, envelope: pb::Envelope) {
        self.tx.send(envelope).await.unwrap();
    }

    /// The status the stream ends with (skipping any envelopes before it).
    pub async fn expect_status(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(ARRIVES, self.inbound.message()).await {
                Err(_) => panic!("stream did not end within {ARRIVES:?}"),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return tonic::Status::ok(""),
                Ok(Err(status)) => return status,
            }
        }
    }
}

fn got_from_pb(e: pb::Envelope) -> Got {
    Got {
        message_type: e.message_type,
        message_id: e.message_id,
        sender_id: e.sender_id,
        recipient_id: e.recipient_id,
        payload: e.payload_json,
    }
}

impl Peer for GrpcPeer {
    async fn send(&mut self, message_type: &str, sender: &str, recipient: &str, payload: &str) {
        self.send_pb(pb::Envelope {
            message_type: message_type.into(),
            sender_id: sender.into(),
            recipient_id: recipient.into(),
            payload_json: payload.into(),
            message_id: next_message_id(),
        })
        .await;
    }

    async fn recv(&mut self) -> Got {
        self.try_recv(ARRIVES)
            .await
            .unwrap_or_else(|| panic!("nothing arrived within {ARRIVES:?}"))
    }

    async fn try_recv(&mut self, wait: Duration) -> Option<Got> {
        match tokio::time::timeout(wait, self.inbound.message()).await {
            Err(_) => None,
            Ok(Ok(Some(e))) => Some(got_from_pb(e)),
            Ok(Ok(None)) => panic!("stream ended"),
            Ok(Err(status)) => panic!("stream failed: {status}"),
        }
    }
}

/// A peer on either front.
pub enum AnyPeer {
    Ws(WsPeer),
    Grpc(GrpcPeer),
}

impl Peer for AnyPeer {
    async fn send(&mut self, message_type: &str, sender: &str, recipient: &str, payload: &str) {
        match self {
            AnyPeer::Ws(p) => p.send(message_type, sender, recipient, payload).await,
            AnyPeer::Grpc(p) => p.send(message_type, sender, recipient, payload).await,
        }
    }

    async fn recv(&mut self) -> Got {
        match self {
            AnyPeer::Ws(p) => p.recv().await,
            AnyPeer::Grpc(p) => p.recv().await,
        }
    }

    async fn try_recv(&mut self, wait: Duration) -> Option<Got> {
        match self {
            AnyPeer::Ws(p) => p.try_recv(wait).await,
            AnyPeer::Grpc(p) => p.try_recv(wait).await,
        }
    }
}

/// Runs the README's browser snippet ("From a browser"), taken from README.md itself, in
/// Node.js's WHATWG `WebSocket` (the browser API), against `url` instead of
/// `ws://127.0.0.1:8787`. Returns what the snippet logged (one JSON value per message) once the
/// first message (the Welcome) has arrived and the socket has closed.
pub async fn run_readme_snippet(url: &str) -> Vec<Value> {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let section = &readme[readme
        .find("## From a browser")
        .expect("README has the snippet")..];
    let start = section.find("```js\n").expect("a js block") + "```js\n".len();
    let snippet = &section[start..start + section[start..].find("```").unwrap()];
    assert!(
        snippet.contains("new WebSocket(\"ws://127.0.0.1:8787\")"),
        "{snippet}"
    );
    let snippet = snippet.replace("ws://127.0.0.1:8787", url);
    let script = format!(
        "console.log = (value) => process.stdout.write(JSON.stringify(value) + \"\\n\");\n\
         setTimeout(() => {{ console.error(\"no message within 10 s\"); process.exit(1); }}, 10000);\n\
         {snippet}\n\
         const logIt = ws.onmessage;\n\
         ws.onmessage = (event) => {{ logIt(event); ws.close(); }};\n\
         ws.onclose = () => process.exit(0);\n\
         ws.onerror = (event) => {{ console.error(\"error\", event.message); process.exit(1); }};\n"
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .args([
                "--experimental-websocket",
                "--no-warnings",
                "--input-type=module",
                "-e",
            ])
            .arg(script)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "snippet failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The README snippet against the network at `base_url` (`ws://host:port/...`): an observer
/// peer sees the snippet's node join and its `NodeAnnounce`, exactly as the snippet sent it,
/// and the snippet's Welcome lists the observer.
pub async fn readme_snippet_works_against(base_url: &str, observer_url: &str) {
    let mut observer = WsPeer::connect(observer_url).await;
    observer.expect_welcome("observer").await;
    let logged = run_readme_snippet(base_url).await;
    let welcome = &logged[0];
    assert_eq!(welcome["message_type"], "Welcome", "{logged:?}");
    assert_eq!(welcome["payload"]["peer_id"], "node-id");
    assert_eq!(welcome["payload"]["peers"], serde_json::json!(["observer"]));
    let joined = observer.recv().await;
    assert_eq!(
        (
            joined.message_type.as_str(),
            joined.payload_json()["peer_id"].as_str()
        ),
        ("PeerJoined", Some("node-id"))
    );
    let announce = observer.recv().await;
    assert_eq!(
        (
            announce.message_type.as_str(),
            announce.sender_id.as_str(),
            announce.payload.as_str()
        ),
        ("NodeAnnounce", "node-id", r#"{"node_id":"node-id"}"#)
    );
    // The snippet gives its own id, as gsio-net's browser client does; it arrives as given.
    assert_eq!(announce.message_id.len(), 36, "{announce:?}");
}

/// Builds an `tungstenite` binary frame (for the unsupported-frame test).
pub fn binary(bytes: &[u8]) -> WsMessage {
    WsMessage::Binary(bytes.to_vec().into())
}

pub use tungstenite::Message as Frame;

/// A proto envelope from its parts (`message_id` may be empty: the relay assigns one).
pub fn pb_envelope(
    message_type: &str,
    message_id: &str,
    sender: &str,
    recipient: &str,
    payload: &str,
) -> pb::Envelope {
    pb::Envelope {
        message_type: message_type.into(),
        message_id: message_id.into(),
        sender_id: sender.into(),
        recipient_id: recipient.into(),
        payload_json: payload.into(),
    }
}

/// The next envelope (announcements skipped) is a `ConfigChanged` from the relay to everyone,
/// routing `Ping` by `ping`; returns its payload.
pub async fn expect_config_changed<P: Peer>(peer: &mut P, ping: &str) -> Value {
    let got = peer.recv_skipping_announcements().await;
    assert_eq!(
        (
            got.message_type.as_str(),
            got.sender_id.as_str(),
            got.recipient_id.as_str()
        ),
        ("ConfigChanged", "relay", ""),
        "{got:?}"
    );
    assert_eq!(got.message_id.len(), 36, "{got:?}");
    let payload = got.payload_json();
    assert_eq!(payload["routing"]["rules"]["Ping"], ping, "{payload}");
    payload
}
