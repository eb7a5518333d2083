//! Slow consumers and graceful shutdown: what a stalled peer receives before its close, what
//! every sender is told, that nobody else is slowed, the connection limit, and what shutdown does
//! while it drains (in process, and the real binary on SIGINT and SIGTERM).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    grpc_channel, repo_path, shipped_config, AnyPeer, Frame, Front, Got, GrpcPeer, Peer, TestRelay,
    WsPeer, ARRIVES,
};
use futures_util::{SinkExt, StreamExt};
use gsio_relay::pb;
use gsio_relay::state::Stats;
use gsio_relay_core::{Mode, RelayConfig};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

/// A payload large enough that the kernel's socket buffers fill after a few dozen messages.
fn chunk() -> String {
    format!("\"{}\"", "z".repeat(64 * 1024))
}

/// What pads a numbered envelope to [`chunk`]'s size.
fn padding() -> String {
    "z".repeat(64 * 1024)
}

/// More numbered envelopes than any flood below needs before the relay answers one of them.
const FLOOD_MAX: u64 = 5_000;

/// The id of numbered envelope `seq` from `sender`.
fn numbered_id(sender: &str, seq: u64) -> String {
    format!("{sender}.{seq}")
}

/// The number in a numbered envelope's id from `sender`.
fn seq_in(sender: &str, message_id: &str) -> Option<u64> {
    message_id
        .strip_prefix(sender)?
        .strip_prefix('.')?
        .parse()
        .ok()
}

/// The number of a numbered envelope that arrived, checked against its payload (`[seq, pad]`).
fn seq_of(got: &Got) -> u64 {
    let seq = seq_in(&got.sender_id, &got.message_id)
        .unwrap_or_else(|| panic!("not a numbered envelope: {}", got.message_id));
    assert_eq!(got.payload_json()[0], seq, "{}", got.message_id);
    seq
}

/// Waits until `condition` holds, looking every 10 ms, for at most [`ARRIVES`].
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + ARRIVES;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {ARRIVES:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The sending half of a test peer whose receiving half a task reads (see [`split`]).
enum Outgoing {
    Ws(futures_util::stream::SplitSink<WsStream, Frame>),
    Grpc(mpsc::Sender<pb::Envelope>),
}

impl Outgoing {
    /// Sends one envelope; false once the connection is gone.
    async fn send(
        &mut self,
        message_type: &str,
        message_id: &str,
        sender: &str,
        recipient: &str,
        payload: &str,
    ) -> bool {
        match self {
            Outgoing::Ws(sink) => {
                let text = envelope_text(message_type, message_id, sender, recipient, payload);
                sink.send(Frame::text(text)).await.is_ok()
            }
            Outgoing::Grpc(tx) => tx
                .send(common::pb_envelope(
                    message_type,
                    message_id,
                    sender,
                    recipient,
                    payload,
                ))
                .await
                .is_ok(),
        }
    }

    /// A numbered envelope: id [`numbered_id`], payload `[seq, pad]`.
    async fn send_numbered(
        &mut self,
        message_type: &str,
        sender: &str,
        recipient: &str,
        seq: u64,
        pad: &str,
    ) -> bool {
        let payload = format!("[{seq},{}]", Value::from(pad));
        let id = numbered_id(sender, seq);
        self.send(message_type, &id, sender, recipient, &payload)
            .await
    }
}

/// An envelope as the JSON text of a WebSocket frame.
fn envelope_text(
    message_type: &str,
    message_id: &str,
    sender: &str,
    recipient: &str,
    payload: &str,
) -> String {
    format!(
        r#"{{"message_type":{},"message_id":{},"sender_id":{},"recipient_id":{},"payload":{payload}}}"#,
        Value::from(message_type),
        Value::from(message_id),
        Value::from(sender),
        Value::from(recipient),
    )
}

/// How a connection ended, as its client saw it.
#[derive(Debug)]
enum Ending {
    /// A WebSocket close frame: code and reason.
    Close(u16, String),
    /// A gRPC stream's final status (`Ok` when it ended cleanly).
    Status(tonic::Code, String),
    /// Ended without either, for this reason (read in failure messages).
    Gone(#[allow(dead_code)] String),
}

impl Ending {
    /// The relay ended the connection for `code` (close 1008 / `RESOURCE_EXHAUSTED` for
    /// `slow_consumer`, 1001 / `UNAVAILABLE` for `shutting_down`).
    #[track_caller]
    fn assert_for(&self, code: &str) {
        let (close, status) = match code {
            "slow_consumer" => (1008, tonic::Code::ResourceExhausted),
            "shutting_down" => (1001, tonic::Code::Unavailable),
            other => panic!("no expectation for {other}"),
        };
        match self {
            Ending::Close(got, reason) if *got == close && reason.starts_with(code) => {}
            Ending::Status(got, message) if *got == status && message.starts_with(code) => {}
            other => panic!("expected the end for {code}, got {other:?}"),
        }
    }
}

/// Splits a peer: its sending half, a channel of everything it receives (in order), and the task
/// that reads until the connection ends and returns how it ended.
fn split(peer: AnyPeer) -> (Outgoing, mpsc::UnboundedReceiver<Got>, JoinHandle<Ending>) {
    let (to, received) = mpsc::unbounded_channel();
    match peer {
        AnyPeer::Ws(peer) => {
            let (sink, mut stream) = peer.ws.split();
            let reader = tokio::spawn(async move {
                loop {
                    match stream.next().await {
                        Some(Ok(Frame::Text(text))) => {
                            let got: Got = serde_json::from_str(&text)
                                .unwrap_or_else(|e| panic!("bad envelope {text}: {e}"));
                            let _ = to.send(got);
                        }
                        Some(Ok(Frame::Close(frame))) => {
                            // Read on, as a browser does: tungstenite replies to the close and
                            // the stream ends.
                            let _ = tokio::time::timeout(ARRIVES, async {
                                while let Some(Ok(_)) = stream.next().await {}
                            })
                            .await;
                            return frame.map_or(Ending::Close(1005, String::new()), |f| {
                                Ending::Close(f.code.into(), f.reason.to_string())
                            });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return Ending::Gone(error.to_string()),
                        None => return Ending::Gone("ended without a close frame".into()),
                    }
                }
            });
            (Outgoing::Ws(sink), received, reader)
        }
        AnyPeer::Grpc(peer) => {
            let GrpcPeer { tx, mut inbound } = peer;
            let reader = tokio::spawn(async move {
                loop {
                    match inbound.message().await {
                        Ok(Some(e)) => {
                            let _ = to.send(Got {
                                message_type: e.message_type,
                                message_id: e.message_id,
                                sender_id: e.sender_id,
                                recipient_id: e.recipient_id,
                                payload: e.payload_json,
                            });
                        }
                        Ok(None) => return Ending::Status(tonic::Code::Ok, String::new()),
                        Err(status) => {
                            return Ending::Status(status.code(), status.message().to_owned())
                        }
                    }
                }
            });
            (Outgoing::Grpc(tx), received, reader)
        }
    }
}

/// Everything `peer` receives from now until its connection ends, and how it ended. It starts
/// reading now, and must be done within 30 s.
async fn read_to_end(peer: AnyPeer) -> (Vec<Got>, Ending) {
    let (_outgoing, mut received, reader) = split(peer);
    let ending = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the connection did not end within 30 s")
        .unwrap();
    let mut got = Vec::new();
    while let Ok(envelope) = received.try_recv() {
        got.push(envelope);
    }
    (got, ending)
}

/// What a flooding sender ([`flood`]) was told.
struct Flooded {
    id: String,
    /// Numbered envelopes sent: `0..sent`.
    sent: u64,
    /// The Errors answering numbered envelopes, by number.
    errors: BTreeMap<u64, Got>,
    /// Keeps the sender connected.
    _connection: (Outgoing, JoinHandle<Ending>),
}

impl Flooded {
    /// The first envelope it was told about.
    fn first_missed(&self) -> u64 {
        *self
            .errors
            .keys()
            .next()
            .unwrap_or_else(|| panic!("{} sent {} and was never told", self.id, self.sent))
    }
}

/// How many numbered envelopes a flooding sender sends between two round trips: with one
/// `Error` per envelope at most, plus the echo, its own queue (8 in these tests) never fills.
const FLOOD_STEP: u64 = 4;

/// Sends numbered `message_type` envelopes of [`chunk`]'s size from `peer` (connected as `id`)
/// to `recipient` (empty: the rules decide), until the relay has answered one of them with an
/// `Error`. Every [`FLOOD_STEP`] envelopes it sends a `Ping` (echo) and waits for it to come back:
/// the relay handles one connection's envelopes in order, so by then every Error for the
/// envelopes before it is in hand (and the sender's own queue never overflows with them).
async fn flood(peer: AnyPeer, id: &str, message_type: &str, recipient: &str) -> Flooded {
    let (mut outgoing, mut received, reader) = split(peer);
    let pad = padding();
    let mut errors = BTreeMap::new();
    let mut sent = 0;
    while errors.is_empty() && sent < FLOOD_MAX {
        for _ in 0..FLOOD_STEP {
            assert!(
                outgoing
                    .send_numbered(message_type, id, recipient, sent, &pad)
                    .await,
                "{id}: the connection ended while sending"
            );
            sent += 1;
        }
        let ping = format!("{id}.ping{sent}");
        assert!(outgoing.send("Ping", &ping, id, "", "null").await);
        loop {
            let got = tokio::time::timeout(ARRIVES, received.recv())
                .await
                .unwrap_or_else(|_| panic!("{id}: the Ping did not come back"))
                .unwrap_or_else(|| panic!("{id}: the connection ended"));
            if got.message_type == "Ping" && got.message_id == ping {
                break;
            }
            file_answer(id, got, &mut errors);
        }
    }
    Flooded {
        id: id.to_owned(),
        sent,
        errors,
        _connection: (outgoing, reader),
    }
}

/// Files what a flooding sender received: an `Error` answering one of its numbered envelopes
/// goes into `errors`; announcements are skipped; anything else fails.
fn file_answer(id: &str, got: Got, errors: &mut BTreeMap<u64, Got>) {
    match got.message_type.as_str() {
        "PeerJoined" | "PeerLeft" | "PeersChanged" => {}
        "Error" => {
            let answered = got.payload_json()["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let seq = seq_in(id, &answered)
                .unwrap_or_else(|| panic!("{id} got an Error for {answered:?}: {got:?}"));
            assert!(
                errors.insert(seq, got).is_none(),
                "{id}: two Errors for {seq}"
            );
        }
        _ => panic!("{id} received {got:?}"),
    }
}

/// The code of an `Error` a sender got, checked to name `peer` (quoted, as the relay does).
#[track_caller]
fn code_naming(error: &Got, peer: &str) -> String {
    let message = error.payload_json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("\"{peer}\"")), "{error:?}");
    error.error_code()
}

/// A relay whose queues hold 8 envelopes, and where `Direct` is routed `directed`.
fn small_queues() -> RelayConfig {
    let mut config = shipped_config();
    config.limits.queue_capacity = 8;
    config.routing.rules.insert("Direct".into(), Mode::Directed);
    config
}

/// One sender floods a peer that never reads (small queue, large envelopes) until it is told
/// `recipient_queue_full`. The stalled peer leaves the hub at once, before reading anything;
/// when it reads, it finds exactly the envelopes before the first one it missed, in order, then
/// its close.
async fn a_stalled_peer_gets_what_was_queued_then_its_close(front: Front) {
    let relay = TestRelay::start_with(small_queues()).await;
    let sender = relay.join(Front::Ws, "sender").await;
    let stalled = relay.join(front, "stalled").await; // reads nothing until the end

    let flooded = flood(sender, "sender", "NodeAnnounce", "").await;
    let first_missed = flooded.first_missed();
    assert!(
        first_missed > 0,
        "nothing was queued before the first missed"
    );
    // Every envelope from the first missed on was refused while it was still in the hub (the
    // rest, broadcast after it left, had no recipient), and each was answered.
    let refused: Vec<u64> = flooded.errors.keys().copied().collect();
    assert_eq!(
        refused,
        (first_missed..first_missed + refused.len() as u64).collect::<Vec<_>>()
    );
    for error in flooded.errors.values() {
        assert_eq!(code_naming(error, "stalled"), "recipient_queue_full");
    }

    // Out of the hub, and its id free, though it has read nothing since.
    wait_until("the stalled peer leaves the hub", || {
        !relay.relay.peer_ids().contains(&"stalled".to_owned())
    })
    .await;
    let _successor = relay.join(Front::Ws, "stalled").await;

    let (received, ending) = read_to_end(stalled).await;
    let seqs: Vec<u64> = received.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        (0..first_missed).collect::<Vec<_>>(),
        "the stalled peer must receive every envelope before the first it missed, in order"
    );
    ending.assert_for("slow_consumer");
    assert_eq!(Stats::get(&relay.relay.stats.slow_consumer_disconnects), 1);
}

#[tokio::test]
async fn a_stalled_websocket_peer_gets_what_was_queued_then_close_1008() {
    a_stalled_peer_gets_what_was_queued_then_its_close(Front::Ws).await;
}

#[tokio::test]
async fn a_stalled_grpc_peer_gets_what_was_queued_then_resource_exhausted() {
    a_stalled_peer_gets_what_was_queued_then_its_close(Front::Grpc).await;
}

/// Three senders on both fronts flood one stalled peer with directed envelopes at once. Every
/// envelope each of them sent is accounted for exactly once: the stalled peer received it (and
/// from each sender, what it received is that sender's first envelopes, in order), or its sender
/// got an `Error` naming it: `recipient_queue_full` while the peer was being disconnected,
/// `unknown_recipient` once it had left.
async fn every_envelope_a_stalled_peer_missed_is_answered(front: Front) {
    let relay = TestRelay::start_with(small_queues()).await;
    let senders = [("s0", Front::Ws), ("s1", Front::Grpc), ("s2", Front::Ws)];
    let mut joined = Vec::new();
    for (id, sender_front) in senders {
        joined.push((id, relay.join(sender_front, id).await));
    }
    let stalled = relay.join(front, "stalled").await;

    let floods: Vec<_> = joined
        .into_iter()
        .map(|(id, peer)| tokio::spawn(async move { flood(peer, id, "Direct", "stalled").await }))
        .collect();
    let mut flooded = Vec::new();
    for flood in floods {
        flooded.push(flood.await.unwrap());
    }
    wait_until("the stalled peer leaves the hub", || {
        !relay.relay.peer_ids().contains(&"stalled".to_owned())
    })
    .await;
    let (received, ending) = read_to_end(stalled).await;
    ending.assert_for("slow_consumer");

    let mut by_sender: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for got in &received {
        assert_eq!(got.message_type, "Direct", "{got:?}");
        by_sender
            .entry(got.sender_id.clone())
            .or_default()
            .push(seq_of(got));
    }
    let mut codes = Vec::new();
    for sender in &flooded {
        let first_missed = sender.first_missed();
        let got = by_sender.remove(&sender.id).unwrap_or_default();
        assert_eq!(
            got,
            (0..first_missed).collect::<Vec<_>>(),
            "{}: the stalled peer must receive its envelopes before the first it missed, in order, once each",
            sender.id
        );
        let answered: Vec<u64> = sender.errors.keys().copied().collect();
        assert_eq!(
            answered,
            (first_missed..sender.sent).collect::<Vec<_>>(),
            "{}: every envelope from the first missed on must be answered",
            sender.id
        );
        for error in sender.errors.values() {
            let code = code_naming(error, "stalled");
            assert!(
                code == "recipient_queue_full" || code == "unknown_recipient",
                "{error:?}"
            );
            codes.push(code);
        }
    }
    assert!(by_sender.is_empty(), "from nobody who sent: {by_sender:?}");
    assert!(
        codes.iter().any(|c| c == "recipient_queue_full"),
        "{codes:?}"
    );
    assert_eq!(Stats::get(&relay.relay.stats.slow_consumer_disconnects), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_a_stalled_websocket_peer_missed_is_answered() {
    every_envelope_a_stalled_peer_missed_is_answered(Front::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_a_stalled_grpc_peer_missed_is_answered() {
    every_envelope_a_stalled_peer_missed_is_answered(Front::Grpc).await;
}

/// Reads `count` numbered envelopes from `sender` on `peer`, in order, each within [`ARRIVES`];
/// returns the peer, still connected.
async fn reads_all(mut peer: AnyPeer, sender: &'static str, count: u64) -> AnyPeer {
    for seq in 0..count {
        let got = peer.recv_skipping_announcements().await;
        assert_eq!((got.sender_id.as_str(), seq_of(&got)), (sender, seq));
    }
    peer
}

/// A peer that never reads, with a queue that never fills (so it stays connected, its socket
/// full): the others still get every envelope of a flood, within a bounded wait, and the sender
/// is never held up.
#[tokio::test]
async fn one_stalled_peer_never_slows_the_others() {
    let mut config = shipped_config();
    config.limits.queue_capacity = 1_000_000;
    let relay = TestRelay::start_with(config).await;
    let sender = relay.join(Front::Ws, "sender").await;
    let stalled = relay.join(Front::Ws, "stalled").await;
    let fast_ws = relay.join(Front::Ws, "fast-ws").await;
    let fast_grpc = relay.join(Front::Grpc, "fast-grpc").await;
    // Far more than the stalled peer's socket buffers hold.
    const FLOOD: u64 = 400;
    let readers = [
        tokio::spawn(reads_all(fast_ws, "sender", FLOOD)),
        tokio::spawn(reads_all(fast_grpc, "sender", FLOOD)),
    ];
    let (mut outgoing, _received, _reader) = split(sender);
    let pad = padding();
    for seq in 0..FLOOD {
        let sent = tokio::time::timeout(
            ARRIVES,
            outgoing.send_numbered("NodeAnnounce", "sender", "", seq, &pad),
        )
        .await
        .unwrap_or_else(|_| panic!("sending {seq} was held up for {ARRIVES:?}"));
        assert!(sent);
    }
    for reader in readers {
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("a reading peer was slowed down")
            .unwrap();
    }
    // The stalled peer was there all along, and nothing was lost for it either.
    assert!(relay.relay.peer_ids().contains(&"stalled".to_owned()));
    assert_eq!(Stats::get(&relay.relay.stats.slow_consumer_disconnects), 0);
    tokio::time::timeout(Duration::from_secs(60), reads_all(stalled, "sender", FLOOD))
        .await
        .expect("the stalled peer's envelopes did not all arrive");
}

/// A burst twice the default queue (4096), written at once, to peers that keep reading: they get
/// all of it, in order, and nobody is disconnected. How far past its queue a reading peer keeps
/// up depends on how fast it reads compared with how fast the relay routes: measured here, the
/// readers' queues peak between 1024 and 1365 envelopes (a queue that small is overrun, one a
/// little larger is not), so the default queue absorbs this burst with room to spare.
#[tokio::test]
async fn a_reading_peer_is_not_cut_off_by_a_burst() {
    let relay = TestRelay::start().await;
    let capacity = relay.relay.config().limits.queue_capacity as u64;
    let burst = 2 * capacity;
    let mut sender = relay.ws("sender").await;
    let ws_reader = relay.join(Front::Ws, "reader-ws").await;
    let grpc_reader = relay.join(Front::Grpc, "reader-grpc").await;
    let readers = [
        tokio::spawn(reads_all(ws_reader, "sender", burst)),
        tokio::spawn(reads_all(grpc_reader, "sender", burst)),
    ];
    for seq in 0..burst {
        let text = format!(
            r#"{{"message_type":"NodeAnnounce","message_id":"{}","sender_id":"sender","recipient_id":"","payload":[{seq},""]}}"#,
            numbered_id("sender", seq)
        );
        sender.ws.feed(Frame::text(text)).await.unwrap();
    }
    sender.ws.flush().await.unwrap();
    for reader in readers {
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("a reading peer did not get the burst")
            .unwrap();
    }
    assert_eq!(Stats::get(&relay.relay.stats.slow_consumer_disconnects), 0);
}

/// A WebSocket peer whose socket takes little (a 4 KiB receive buffer): what the relay sends it
/// beyond its own socket's buffer stays queued in the relay until the peer reads.
async fn ws_with_small_buffer(relay: &TestRelay, id: &str) -> WsPeer {
    let addr: std::net::SocketAddr = ws_addr(relay).parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/?node_id={id}");
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut peer = WsPeer { ws };
    peer.expect_welcome(id).await;
    peer
}

/// A gRPC peer on a connection of its own whose socket has a 4 KiB receive buffer: it reads at
/// the pace of a slow network, so the relay's last bytes reach it well after the relay wrote them.
async fn grpc_with_small_buffer(grpc_url: &str, id: &str) -> GrpcPeer {
    let addr: std::net::SocketAddr = grpc_url.trim_start_matches("http://").parse().unwrap();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let stream = socket.connect(addr).await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
    });
    let channel = Channel::from_shared(grpc_url.to_owned())
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut peer = GrpcPeer::over(channel, Some(id)).await.unwrap();
    peer.expect_welcome(id).await;
    peer
}
/// Shutdown with far more queued for two peers that have not read yet than their connections
/// hold: each gets all of it, in order, then its close (1001 / `UNAVAILABLE`); so does the
/// sender, who has nothing queued.
#[tokio::test]
async fn shutdown_delivers_what_is_queued_and_tells_every_peer() {
    let mut relay_config = shipped_config();
    // Far longer than the test waits: finishing only because the grace period ran out (a
    // connection that never let go) fails the test.
    relay_config.server.shutdown_grace_ms = 120_000;
    let mut relay = TestRelay::start_with(relay_config).await;
    let mut ws_sender = relay.ws("ws-sender").await;
    let grpc_receiver = grpc_with_small_buffer(&relay.grpc_url, "grpc-receiver").await;
    let ws_receiver = ws_with_small_buffer(&relay, "ws-receiver").await;
    ws_sender
        .expect_presence(&["grpc-receiver", "ws-receiver"], &[])
        .await;

    // 120 envelopes of 64 KiB: more than the receivers' connections take (a small socket
    // buffer, an HTTP/2 window), so much of it is still queued in the relay when the shutdown
    // starts.
    const BURST: u64 = 120;
    let pad = Value::from(padding());
    for seq in 0..BURST {
        let id = numbered_id("ws-sender", seq);
        let text = envelope_text(
            "NodeAnnounce",
            &id,
            "ws-sender",
            "",
            &format!("[{seq},{pad}]"),
        );
        ws_sender.ws.feed(Frame::text(text)).await.unwrap();
    }
    // Ping is echo, and one connection's envelopes are routed in order: once it is back, the
    // whole burst is in the receivers' queues (or on its way to them), none of it read yet.
    ws_sender
        .ws
        .feed(Frame::text(common::envelope("Ping", "ws-sender", "", "0")))
        .await
        .unwrap();
    ws_sender.ws.flush().await.unwrap();
    assert_eq!(ws_sender.recv().await.message_type, "Ping");
    let server = relay.shut_down();

    // The WebSocket receiver first: its queue must be written within the 5 s a closing
    // WebSocket connection has.
    let (received, ending) = read_to_end(AnyPeer::Ws(ws_receiver)).await;
    assert_eq!(numbered(&received), (0..BURST).collect::<Vec<_>>());
    ending.assert_for("shutting_down");
    let (received, ending) = read_to_end(AnyPeer::Grpc(grpc_receiver)).await;
    assert_eq!(numbered(&received), (0..BURST).collect::<Vec<_>>());
    ending.assert_for("shutting_down");

    let (code, reason) = ws_sender.expect_close().await;
    assert_eq!(code, 1001);
    assert!(reason.starts_with("shutting_down"), "{reason}");
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("server did not finish shutting down")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_a_slot_frees() {
    let mut config = shipped_config();
    config.server.max_connections = 1;
    let relay = TestRelay::start_with(config).await;
    let mut first = relay.ws("one").await;
    let url = format!("{}/?node_id=two", relay.ws_url);
    let waiting = tokio::spawn(async move { WsPeer::connect(&url).await });
    // Not being served is an absence: it takes a window. "one" stays connected for it, and
    // would hear of "two" joining (announcements are on), whenever that happened.
    first.expect_silence().await;
    assert_eq!(relay.relay.peer_ids(), ["one"]);
    drop(first);
    let mut second = tokio::time::timeout(ARRIVES, waiting)
        .await
        .expect("second connection never served")
        .unwrap();
    // Served after "one" left, not before: its Welcome lists nobody.
    let welcome = second.expect_welcome("two").await;
    assert_eq!(welcome["peers"], serde_json::json!([]), "{welcome}");
    // gRPC streams are refused instead of waiting: see
    // `websocket_peers_and_grpc_streams_share_the_limit`.
}

/// The answer to a stream opened past `server.max_connections`: refused at once with
/// `RESOURCE_EXHAUSTED`, naming the setting.
fn assert_refused_for_the_limit(opened: Result<GrpcPeer, tonic::Status>) {
    let Err(status) = opened else {
        panic!("a stream was admitted past server.max_connections");
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("server.max_connections"),
        "{status:?}"
    );
}

/// A stream on `channel` as `id`, once a slot is free. A slot comes back when the relay is done
/// with the stream that held it, which can be a moment after that stream's client saw it end.
async fn admitted_once_a_slot_frees(channel: &Channel, id: &str) -> GrpcPeer {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        match GrpcPeer::over(channel.clone(), Some(id)).await {
            Ok(mut peer) => {
                peer.expect_welcome(id).await;
                return peer;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no slot freed within {ARRIVES:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn grpc_streams_on_one_connection_past_the_limit_are_refused() {
    const LIMIT: usize = 4;
    let mut config = shipped_config();
    config.server.max_connections = LIMIT;
    let relay = TestRelay::start_with(config).await;
    // One HTTP/2 connection for every stream.
    let channel = grpc_channel(&relay.grpc_url).await;
    let mut peers = Vec::new();
    for n in 0..LIMIT {
        let id = format!("g{n}");
        let mut peer = GrpcPeer::over(channel.clone(), Some(&id)).await.unwrap();
        peer.expect_welcome(&id).await;
        peers.push(peer);
    }
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("extra")).await);
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), None).await);
    assert_eq!(relay.relay.peer_ids().len(), LIMIT);

    peers.pop().unwrap().leave().await;
    let _again = admitted_once_a_slot_frees(&channel, "again").await;
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("extra")).await);
    // The channel itself is fine: calls other than Exchange take no slot.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        serving.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn websocket_peers_and_grpc_streams_share_the_limit() {
    let mut config = shipped_config();
    config.server.max_connections = 2;
    let relay = TestRelay::start_with(config).await;
    let first_ws = relay.ws("w1").await;
    // The gRPC connection is no peer: it takes none of the two slots.
    let channel = grpc_channel(&relay.grpc_url).await;
    let mut first_grpc = GrpcPeer::over(channel.clone(), Some("g1")).await.unwrap();
    first_grpc.expect_welcome("g1").await;
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("g2")).await);

    // A WebSocket client past the limit still waits (a window: "g1" stays connected for it,
    // and would hear of "w2" joining)...
    let url = format!("{}/?node_id=w2", relay.ws_url);
    let waiting = tokio::spawn(async move { WsPeer::connect(&url).await });
    first_grpc.expect_silence().await;
    // ...until a gRPC stream gives its slot back.
    first_grpc.leave().await;
    let mut second_ws = tokio::time::timeout(ARRIVES, waiting)
        .await
        .expect("WebSocket connection never served")
        .unwrap();
    // Served after "g1" left, not before: its Welcome does not list it.
    let welcome = second_ws.expect_welcome("w2").await;
    assert_eq!(welcome["peers"], serde_json::json!(["w1"]), "{welcome}");

    // Two WebSocket peers fill the limit for gRPC too, until one leaves.
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("g3")).await);
    drop(first_ws);
    let _third_grpc = admitted_once_a_slot_frees(&channel, "g3").await;
    let mut peers = relay.relay.peer_ids();
    peers.sort();
    assert_eq!(peers, ["g3", "w2"]);
}

#[tokio::test]
async fn grpc_streams_refused_at_connect_give_their_slot_back() {
    let mut config = shipped_config();
    config.server.max_connections = 2;
    let relay = TestRelay::start_with(config).await;
    let channel = grpc_channel(&relay.grpc_url).await;
    let mut holder = GrpcPeer::over(channel.clone(), Some("a")).await.unwrap();
    holder.expect_welcome("a").await;
    // More refusals than there are slots: each gives its slot back as it is refused.
    for _ in 0..4 {
        let Err(status) = GrpcPeer::over(channel.clone(), Some("a")).await else {
            panic!("a second \"a\" was admitted");
        };
        assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
        let Err(status) = GrpcPeer::over(channel.clone(), Some("not valid")).await else {
            panic!("an invalid id was admitted");
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let mut second = GrpcPeer::over(channel.clone(), Some("b")).await.unwrap();
    second.expect_welcome("b").await;
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("c")).await);
}

/// The `host:port` of a `ws://` URL.
fn ws_addr(relay: &TestRelay) -> String {
    relay.ws_url.trim_start_matches("ws://").to_owned()
}

#[tokio::test]
async fn a_client_that_never_sends_its_handshake_does_not_delay_shutdown() {
    let mut config = shipped_config();
    // Far beyond the bound below: waiting out the grace period (or the 10 s handshake limit)
    // fails the test.
    config.server.shutdown_grace_ms = 30_000;
    let mut relay = TestRelay::start_with(config).await;
    // Connects and never sends the HTTP upgrade.
    let _half_open = tokio::net::TcpStream::connect(ws_addr(&relay))
        .await
        .unwrap();
    // Accepted after it (one accept loop, in order): so the half-open one is being served.
    let mut witness = relay.ws("witness").await;
    let witness = tokio::spawn(async move { witness.expect_close().await });

    let took = relay.shut_down_timed().await;
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}: it waited for a handshake that never came"
    );
    assert_eq!(witness.await.unwrap().0, 1001);
}

#[tokio::test]
async fn shutdown_waits_one_grace_period_in_all() {
    let mut config = shipped_config();
    config.server.shutdown_grace_ms = 3_000;
    let mut relay = TestRelay::start_with(config).await;
    let mut sender = relay.ws("sender").await;
    // Never reads: what is queued for it cannot be delivered, so only the grace period ends it.
    let _stalled = relay.grpc("g-stalled").await;
    assert_eq!(sender.recv().await.message_type, "PeerJoined");
    // Far more than the HTTP/2 windows and socket buffers hold, well under the queue capacity.
    let payload = chunk();
    for _ in 0..400 {
        sender.send("NodeAnnounce", "sender", "", &payload).await;
    }
    // Ping is echo: once it is back, every broadcast before it was routed.
    sender.send("Ping", "sender", "", "1").await;
    assert_eq!(sender.recv().await.message_type, "Ping");
    let sender = tokio::spawn(async move { sender.expect_close().await });

    let took = relay.shut_down_timed().await;
    // One grace period (3 s) plus slack; applying it twice takes at least 6 s.
    assert!(
        took < Duration::from_millis(5_500),
        "shutdown took {took:?}"
    );
    // And the stalled peer did hold the shutdown (the test is about the grace period).
    assert!(
        took >= Duration::from_millis(2_500),
        "shutdown took {took:?}"
    );
    assert_eq!(sender.await.unwrap().0, 1001);
}

/// How many envelopes [`fill`] sends.
const FILL: u64 = 50;

/// [`FILL`] directed envelopes of [`chunk`]'s size from a new peer `filler` to `to`, more than
/// HTTP/2 windows and socket buffers take: a `to` that does not read keeps most of them queued.
/// Returns once all are routed (the sentinel is back).
async fn fill(relay: &TestRelay, filler: &str, to: &str) {
    let peer = relay.join(Front::Ws, filler).await;
    let (mut outgoing, mut received, _reader) = split(peer);
    let pad = padding();
    for seq in 0..FILL {
        assert!(
            outgoing
                .send_numbered("Direct", filler, to, seq, &pad)
                .await
        );
    }
    let sentinel = format!("{filler}.sentinel");
    assert!(outgoing.send("Ping", &sentinel, filler, "", "null").await);
    loop {
        let got = tokio::time::timeout(ARRIVES, received.recv())
            .await
            .expect("the sentinel did not come back")
            .expect("the filler's connection ended");
        match got.message_type.as_str() {
            "PeerJoined" | "PeerLeft" | "PeersChanged" => {}
            "Ping" if got.message_id == sentinel => return,
            _ => panic!("the filler received {got:?}"),
        }
    }
}

/// The numbered envelopes among `received`, announcements skipped.
fn numbered(received: &[Got]) -> Vec<u64> {
    received
        .iter()
        .filter(|got| common::announced(got).is_none())
        .map(seq_of)
        .collect()
}

/// Waits until nothing listens on `addr` (a connection is refused), for at most [`ARRIVES`].
async fn wait_until_refused(addr: &str) {
    let deadline = Instant::now() + ARRIVES;
    while let Ok(accepted) = tokio::net::TcpStream::connect(addr).await {
        drop(accepted);
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[track_caller]
fn assert_refused(result: std::io::Result<tokio::net::TcpStream>, what: &str) {
    assert!(result.is_err(), "{what} still accepts connections");
}

/// How far a paced sender may run ahead of what its observer has received.
const WINDOW: u64 = 32;

/// Shutdown while a sender streams numbered envelopes to an observer, and a peer that does not
/// read holds the drain open (the grace period is far longer than the test). During the drain:
/// both ports refuse connections, an HTTP/2 connection opened before cannot open a stream, and
/// nothing the sender sends after the relay stopped accepting reaches the observer. Then what was
/// queued is delivered, and the drain ends as soon as the last peer has read it.
async fn while_it_drains_the_relay_reads_and_accepts_nothing(front: Front) {
    let mut config = small_queues();
    config.limits.queue_capacity = 4096;
    config.server.shutdown_grace_ms = 120_000;
    let mut relay = TestRelay::start_with(config).await;
    let ws_addr = ws_addr(&relay);
    let grpc_addr = relay.grpc_url.trim_start_matches("http://").to_owned();
    let holder = relay.grpc("holder").await;
    fill(&relay, "filler", "holder").await;
    let channel = grpc_channel(&relay.grpc_url).await;
    let observer = relay.join(Front::Ws, "observer").await;
    let sender = relay.join(front, "sender").await;

    // The observer's numbered envelopes, counted as they arrive.
    let (_observer_out, mut observed, observer_end) = split(observer);
    let (count_tx, count) = watch::channel(0u64);
    let collector = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(got) = observed.recv().await {
            if common::announced(&got).is_none() {
                seqs.push(seq_of(&got));
                count_tx.send_replace(seqs.len() as u64);
            }
        }
        seqs
    });
    // The sender takes each number just before sending it, at most WINDOW ahead of the observer.
    let next = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let (mut outgoing, _sender_received, sender_end) = split(sender);
    let pacer = tokio::spawn({
        let next = next.clone();
        let mut count = count.clone();
        let mut stopped = stopped.clone();
        async move {
            loop {
                let due = next.load(Ordering::SeqCst);
                tokio::select! {
                    ready = count.wait_for(|&got| got + WINDOW > due) => {
                        if ready.is_err() {
                            break;
                        }
                    }
                    _ = stopped.wait_for(|&stop| stop) => break,
                }
                let seq = next.fetch_add(1, Ordering::SeqCst);
                if !outgoing
                    .send_numbered("Direct", "sender", "observer", seq, "")
                    .await
                {
                    break;
                }
            }
            outgoing
        }
    });
    let mut flowing = count.clone();
    tokio::time::timeout(ARRIVES, flowing.wait_for(|&got| got >= 100))
        .await
        .expect("the stream to the observer never flowed")
        .unwrap();

    let server = relay.shut_down();
    wait_until_refused(&ws_addr).await;
    // Every number taken from here on is sent after the relay stopped accepting, and so after
    // every connection was told to stop reading.
    let boundary = next.load(Ordering::SeqCst);
    assert_refused(
        tokio::net::TcpStream::connect(&grpc_addr).await,
        "the gRPC port",
    );
    match GrpcPeer::over(channel.clone(), Some("late")).await {
        Ok(_) => panic!("a stream was opened during the drain"),
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
    }
    assert!(!server.is_finished(), "the holder should hold the drain");

    // The observer is told, after everything routed to it before the boundary.
    let ending = tokio::time::timeout(ARRIVES, observer_end)
        .await
        .expect("the observer was not closed")
        .unwrap();
    ending.assert_for("shutting_down");
    let seqs = collector.await.unwrap();
    assert!(
        seqs.iter().all(|&seq| seq < boundary),
        "routed after the relay stopped reading: boundary {boundary}, got up to {:?}",
        seqs.last()
    );
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    // Still draining (the holder has not read), and still not listening.
    assert!(!server.is_finished(), "the holder should hold the drain");
    assert_refused(
        tokio::net::TcpStream::connect(&ws_addr).await,
        "the WebSocket port",
    );
    assert_refused(
        tokio::net::TcpStream::connect(&grpc_addr).await,
        "the gRPC port",
    );

    stop.send_replace(true);
    let _outgoing = pacer.await.unwrap();
    tokio::time::timeout(ARRIVES, sender_end)
        .await
        .expect("the sender was not told")
        .unwrap()
        .assert_for("shutting_down");
    // The holder reads at last: everything queued for it, then the status; then the drain ends.
    let (received, ending) = read_to_end(AnyPeer::Grpc(holder)).await;
    assert_eq!(numbered(&received), (0..FILL).collect::<Vec<_>>());
    ending.assert_for("shutting_down");
    tokio::time::timeout(ARRIVES, server)
        .await
        .expect("the drain did not end once the last peer had read")
        .unwrap()
        .unwrap();
    assert_refused(
        tokio::net::TcpStream::connect(&ws_addr).await,
        "the WebSocket port",
    );
}

#[tokio::test]
async fn while_it_drains_the_relay_reads_nothing_from_websocket_peers_and_accepts_nobody() {
    while_it_drains_the_relay_reads_and_accepts_nothing(Front::Ws).await;
}

#[tokio::test]
async fn while_it_drains_the_relay_reads_nothing_from_grpc_peers_and_accepts_nobody() {
    while_it_drains_the_relay_reads_and_accepts_nothing(Front::Grpc).await;
}

/// A grace period of 1 s, and a peer on each front that never reads, with more queued for it
/// than its connection takes: shutdown ends once the grace period is over (they hold it until
/// then), and it does end; so do their connections.
#[tokio::test]
async fn the_grace_period_cuts_off_peers_that_never_read() {
    const GRACE: Duration = Duration::from_secs(1);
    let mut config = small_queues();
    config.limits.queue_capacity = 4096;
    config.server.shutdown_grace_ms = GRACE.as_millis() as u64;
    let mut relay = TestRelay::start_with(config).await;
    let grpc_stalled = relay.grpc("grpc-stalled").await;
    let ws_stalled = relay.ws("ws-stalled").await;
    fill(&relay, "filler-1", "grpc-stalled").await;
    fill(&relay, "filler-2", "ws-stalled").await;

    let took = relay.shut_down_timed().await;
    assert!(took >= GRACE, "shutdown took {took:?}, less than the grace");
    assert!(took < ARRIVES, "shutdown took {took:?}");
    // Their connections end too (read_to_end is bounded), whatever they got before.
    read_to_end(AnyPeer::Grpc(grpc_stalled)).await;
    read_to_end(AnyPeer::Ws(ws_stalled)).await;
}

const BIN: &str = env!("CARGO_BIN_EXE_gsio-relay");

/// The relay binary on the shipped relay.toml with ephemeral ports, its log (stderr) read line by
/// line. Killed (by its pid, which this test started) if a test leaves it running.
struct RelayProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    log: Vec<String>,
    ws_url: String,
    grpc_url: String,
}

impl RelayProcess {
    /// Starts it with `env` on top, at the default log level, and waits until it listens.
    async fn start(env: &[(&str, &str)]) -> RelayProcess {
        let mut child = Command::new(BIN)
            .env("GSIO_RELAY_CONFIG", repo_path("relay.toml"))
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .env("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:0")
            .env("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:0")
            .env("GSIO_RELAY_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = RelayProcess {
            child,
            lines,
            log: Vec::new(),
            ws_url: String::new(),
            grpc_url: String::new(),
        };
        let listening = process.expect_line(&["gsio-relay listening"]).await;
        process.ws_url = logged_field(&listening, "websocket=");
        process.grpc_url = format!("http://{}", logged_field(&listening, "grpc="));
        process
    }

    /// The next log line that contains every one of `parts`, within 30 s.
    async fn expect_line(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => line,
                _ => panic!("no log line with {parts:?}: {:#?}", self.log),
            };
            self.log.push(line.clone());
            if parts.iter().all(|part| line.contains(part)) {
                return line;
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of the child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// How the process exited, within 30 s.
    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not exit: {:#?}",
                self.log
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value after `key` in a log line (`key=value`).
fn logged_field(line: &str, key: &str) -> String {
    let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    line[at..].split_whitespace().next().unwrap().to_owned()
}

/// The binary, stopped by `signal` with envelopes queued for a gRPC peer that has not read them:
/// the peer gets them, then `UNAVAILABLE`; a WebSocket peer gets close 1001; the process exits 0.
async fn the_binary_drains_and_exits_0_on(signal: libc::c_int) {
    // A grace period far longer than the test waits: on a busy machine, delivering 3 MiB can
    // take longer than the default 5 s, and being cut off by it is not what this test is about.
    let mut relay =
        RelayProcess::start(&[("GSIO_RELAY_SERVER__SHUTDOWN_GRACE_MS", "120000")]).await;
    let mut sender = WsPeer::connect(&format!("{}/?node_id=sender", relay.ws_url)).await;
    sender.expect_welcome("sender").await;
    let receiver = grpc_with_small_buffer(&relay.grpc_url, "receiver").await;
    assert_eq!(sender.recv().await.message_type, "PeerJoined");
    // 64 KiB each: most of it is still queued in the relay when the signal comes (an HTTP/2
    // window is 64 KiB).
    const QUEUED: u64 = 50;
    let pad = Value::from(padding());
    for seq in 0..QUEUED {
        let id = numbered_id("sender", seq);
        let text = envelope_text("NodeAnnounce", &id, "sender", "", &format!("[{seq},{pad}]"));
        sender.ws.feed(Frame::text(text)).await.unwrap();
    }
    sender.ws.flush().await.unwrap();
    // Ping is echo: once it is back, every NodeAnnounce before it was routed to the receiver.
    sender.send("Ping", "sender", "", "0").await;
    assert_eq!(sender.recv().await.message_type, "Ping");

    relay.signal(signal);
    let (code, reason) = sender.expect_close().await;
    assert_eq!(code, 1001);
    assert!(reason.starts_with("shutting_down"), "{reason}");
    let (received, ending) = read_to_end(AnyPeer::Grpc(receiver)).await;
    assert_eq!(
        numbered(&received),
        (0..QUEUED).collect::<Vec<_>>(),
        "then {ending:?}"
    );
    ending.assert_for("shutting_down");
    let status = relay.exit_status().await;
    assert_eq!(status.code(), Some(0), "{status:?}: {:#?}", relay.log);
    relay.expect_line(&["relay stopped"]).await;
}

#[tokio::test]
async fn the_binary_drains_and_exits_0_on_sigint() {
    the_binary_drains_and_exits_0_on(libc::SIGINT).await;
}

#[tokio::test]
async fn the_binary_drains_and_exits_0_on_sigterm() {
    the_binary_drains_and_exits_0_on(libc::SIGTERM).await;
}

/// The operator's view of a slow consumer, from the binary's log at its default level: one warn
/// line when it happens, and the count in the line the relay logs when it stops.
#[tokio::test]
async fn a_slow_consumer_is_logged_at_warn_and_counted_at_shutdown() {
    let mut relay = RelayProcess::start(&[("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "8")]).await;
    let mut sender = WsPeer::connect(&format!("{}/?node_id=sender", relay.ws_url)).await;
    sender.expect_welcome("sender").await;
    let mut stalled = WsPeer::connect(&format!("{}/?node_id=stalled", relay.ws_url)).await;
    stalled.expect_welcome("stalled").await;
    let flooded = flood(AnyPeer::Ws(sender), "sender", "NodeAnnounce", "").await;
    let first = &flooded.errors[&flooded.first_missed()];
    assert_eq!(code_naming(first, "stalled"), "recipient_queue_full");

    relay
        .expect_line(&["WARN", "slow consumer disconnected"])
        .await;
    let (_, ending) = read_to_end(AnyPeer::Ws(stalled)).await;
    ending.assert_for("slow_consumer");

    relay.signal(libc::SIGTERM);
    let status = relay.exit_status().await;
    assert_eq!(status.code(), Some(0), "{status:?}: {:#?}", relay.log);
    let stopped = relay.expect_line(&["relay stopped"]).await;
    assert!(stopped.contains("slow_consumer_disconnects=1"), "{stopped}");
    let warnings = relay
        .log
        .iter()
        .filter(|line| line.contains("slow consumer disconnected"))
        .count();
    assert_eq!(warnings, 1, "{:#?}", relay.log);
}
