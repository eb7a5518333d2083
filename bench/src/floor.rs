//! The floor: the least a relay on the same WebSocket library could do. It forwards frames
//! without parsing them, so the relay's figures divided by the floor's say what the relay's own
//! work (JSON parsing, identity checks, routing rules) costs on top of moving frames.
//!
//! Kept fair, so that the ratio means something:
//! - the same tokio-tungstenite version and the relay's WebSocket settings ([`ws_config`]: 2 KiB
//!   read buffer, 16 KiB write buffer, the relay's hard frame limit), copied here because the
//!   relay keeps them private;
//! - the relay's allocator (mimalloc: the floor is `relay-bench` re-executed, and `main.rs` sets
//!   the global allocator);
//! - one task per connection that reads frames and writes its queue, writes batched the way
//!   the relay batches them (up to 64 frames fed, one flush);
//! - the relay's kind of queue ([`queue`]): an unbounded tokio channel with an atomic depth
//!   bounded by the relay's `limits.queue_capacity`, so a push is lock-free and never waits;
//! - frames shared between recipients (a `Utf8Bytes` clone is a reference count).
//!
//! Routing without parsing: the peer id is the `?node_id=` of the handshake, as on the relay.
//! An id `p<N>a` sends to `p<N>b` and back (the directed pairs); any other id broadcasts to every
//! other connection (the fan-out publisher). On connect the floor sends a stand-in `Welcome`
//! frame, so clients wait for a first frame exactly as they do with the relay.
//!
//! # A full queue
//! As on the relay, a full queue means its reader is not keeping up, and that connection is
//! closed with the relay's close frame (the core's `SlowConsumer` error: 1008, a reason that
//! starts with `slow_consumer`): the frame that found the
//! queue full is not delivered, and neither is what was still queued. The bench's scenarios
//! never get there (each sender keeps fewer frames in flight per receiver than the queue
//! holds), so in a valid run this path costs what it costs the relay, one atomic load per turn.
//! Had the floor made the sender wait instead (its former backpressure), a run that broke that
//! rule would show a floor that is lossless but slower beside a relay that disconnects, and the
//! ratio would compare two policies; this way both show the same loss and disconnect in the
//! bench's counts. Unlike the relay, the floor does not tell the sender (it has no error
//! envelope); it reports each such close on stderr.

mod queue;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use gsio_relay_core::RelayError;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use queue::{Outbox, QueueTx};

/// At most this many queued frames are written before one flush (gsio-relay `src/ws.rs`,
/// `WRITE_BATCH`).
const WRITE_BATCH: usize = 64;
/// The read buffer of every connection (gsio-relay `src/ws.rs`, `ws_config`:
/// `.read_buffer_size(2 * 1024)`).
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// The write buffer of every connection (gsio-relay `src/ws.rs`, `ws_config`:
/// `.write_buffer_size(16 * 1024)`).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// How long closing a slow connection may take (gsio-relay `src/ws.rs`, `CLOSE_TIMEOUT`).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The largest frame and message read at all: the core's rule, which the relay's `ws_config`
/// sets as both `max_message_size` and `max_frame_size`.
pub fn hard_frame_limit(max_message_bytes: usize) -> usize {
    gsio_relay_core::config::Limits {
        max_message_bytes,
        ..Default::default()
    }
    .hard_frame_bytes()
}

/// The relay's WebSocket settings (gsio-relay `src/ws.rs`, `ws_config`, private to the relay),
/// for the floor's connections and the bench's clients alike.
pub fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    let hard = hard_frame_limit(max_message_bytes);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(hard))
        .max_frame_size(Some(hard))
}

/// Where a connection's frames go, decided once from its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// To the connection with this id.
    Partner(String),
    /// To every other connection.
    Everyone,
}

/// `p17a` ↔ `p17b`; anything else broadcasts.
pub fn destination(id: &str) -> Destination {
    let Some(number) = id.strip_prefix('p') else {
        return Destination::Everyone;
    };
    let (digits, other_side) = if let Some(digits) = number.strip_suffix('a') {
        (digits, 'b')
    } else if let Some(digits) = number.strip_suffix('b') {
        (digits, 'a')
    } else {
        return Destination::Everyone;
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Destination::Everyone;
    }
    Destination::Partner(format!("p{digits}{other_side}"))
}

/// Every connection's queue, by connection number and by id.
#[derive(Default)]
struct Registry {
    all: HashMap<u64, QueueTx>,
    by_id: HashMap<String, QueueTx>,
}

/// std `RwLock` (as the relay's hub): never held across an `.await`.
type Shared = Arc<RwLock<Registry>>;

/// The floor process: listens on `listen`, says where on stdout, and serves until killed.
pub async fn run(
    listen: SocketAddr,
    queue_capacity: usize,
    max_message_bytes: usize,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    // The bench reads this line to find the port.
    println!("floor listening ws://{}", listener.local_addr()?);
    use std::io::Write as _;
    std::io::stdout().flush()?;
    serve(listener, queue_capacity, max_message_bytes).await
}

/// Accepts and serves connections on `listener` until the process ends.
async fn serve(
    listener: TcpListener,
    queue_capacity: usize,
    max_message_bytes: usize,
) -> anyhow::Result<()> {
    let registry: Shared = Arc::default();
    let next = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("floor: accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(
            stream,
            conn,
            registry.clone(),
            queue_capacity,
            max_message_bytes,
        ));
    }
}

// The handshake callback's error type is tungstenite's (a whole HTTP response).
#[allow(clippy::result_large_err)]
async fn connection(
    stream: TcpStream,
    conn: u64,
    registry: Shared,
    queue_capacity: usize,
    max_message_bytes: usize,
) {
    let mut id = String::new();
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |request: &Request, response: Response| {
            if let Some(query) = request.uri().query() {
                if let Some(value) = query.split('&').find_map(|p| p.strip_prefix("node_id=")) {
                    id = value.to_owned();
                }
            }
            Ok(response)
        },
        // The relay's own settings: same buffers, same limits.
        Some(ws_config(max_message_bytes)),
    );
    let Ok(mut ws) = handshake.await else { return };
    let destination = destination(&id);
    let (tx, mut outbox) = queue::queue(queue_capacity);
    // The stand-in Welcome is queued before anything can be routed here, as the relay's is.
    let _ = tx.push(Message::text(crate::wire::floor_welcome(&id)));
    {
        let mut registry = registry.write().expect("not poisoned");
        registry.all.insert(conn, tx.clone());
        if !id.is_empty() {
            registry.by_id.insert(id.clone(), tx.clone());
        }
    }
    drop(tx);

    let overflow = outbox.overflow();
    let slow = loop {
        tokio::select! {
            biased;
            () = overflow.raised() => break true,
            queued = outbox.recv() => {
                let Some(first) = queued else { break false };
                // A reader that stopped reading blocks this write; its queue then fills and
                // the overflow ends the connection (as the relay's kick does).
                tokio::select! {
                    written = write_batch(&mut ws, &mut outbox, first) => {
                        if written.is_err() {
                            break false;
                        }
                    }
                    () = overflow.raised() => break true,
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(frame @ (Message::Text(_) | Message::Binary(_)))) => {
                    forward(&registry, conn, &destination, frame);
                }
                Some(Ok(Message::Ping(_))) => {
                    if ws.flush().await.is_err() {
                        break false;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break false,
            },
        }
    };
    // Out of the registry first: others must stop routing here while it is being closed.
    {
        let mut registry = registry.write().expect("not poisoned");
        registry.all.remove(&conn);
        if !id.is_empty() {
            registry.by_id.remove(&id);
        }
    }
    if slow {
        eprintln!("floor: slow consumer {id:?} disconnected: queue of {queue_capacity} full");
        // The very close frame the relay sends a slow consumer (gsio-relay `src/ws.rs`,
        // `close_frame`).
        let error = RelayError::SlowConsumer(queue_capacity);
        let frame = CloseFrame {
            code: CloseCode::from(error.ws_close_code()),
            reason: error.close_reason().into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }
}

/// Queues `frame` for its destination(s), without waiting: a full queue refuses it and its
/// connection closes (see the module doc).
fn forward(registry: &Shared, from: u64, destination: &Destination, frame: Message) {
    let registry = registry.read().expect("not poisoned");
    match destination {
        Destination::Partner(partner) => {
            if let Some(queue) = registry.by_id.get(partner) {
                let _ = queue.push(frame);
            }
        }
        Destination::Everyone => {
            for (conn, queue) in &registry.all {
                if *conn != from {
                    let _ = queue.push(frame.clone());
                }
            }
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn write_batch(
    ws: &mut Ws,
    outbox: &mut Outbox,
    first: Message,
) -> Result<(), tungstenite::Error> {
    ws.feed(first).await?;
    for _ in 1..WRITE_BATCH {
        let Some(next) = outbox.try_next() else { break };
        ws.feed(next).await?;
    }
    ws.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_route_to_their_partner_and_everyone_else_broadcasts() {
        let table = [
            ("p0a", Destination::Partner("p0b".into())),
            ("p0b", Destination::Partner("p0a".into())),
            ("p17a", Destination::Partner("p17b".into())),
            ("p123b", Destination::Partner("p123a".into())),
            ("pub", Destination::Everyone),
            ("p", Destination::Everyone),
            ("pa", Destination::Everyone),
            ("p1c", Destination::Everyone),
            ("s5", Destination::Everyone),
            ("", Destination::Everyone),
            ("pé", Destination::Everyone),
        ];
        for (id, expected) in table {
            assert_eq!(destination(id), expected, "{id}");
        }
    }

    /// A reader that stops reading fills its queue; the floor then closes that connection with
    /// 1008 `slow_consumer`, as the relay does, instead of making the sender wait.
    #[tokio::test]
    async fn a_full_queue_closes_the_slow_connection() {
        use std::time::Duration;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

        let max = crate::clients::MAX_MESSAGE_BYTES;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, 4, max));
        let connect = |id: &'static str| async move {
            let tcp = TcpStream::connect(host).await.unwrap();
            let url = format!("ws://{host}/?node_id={id}");
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config(max)))
                    .await
                    .unwrap();
            ws
        };
        let mut slow = connect("p0b").await;
        let mut sender = connect("p0a").await;
        // Far more than the socket buffers hold, so the floor's writer to `p0b` blocks and its
        // queue of 4 fills. The sender never waits on `p0b`.
        let frame = Message::text("x".repeat(64 * 1024));
        let flood = async {
            for _ in 0..1_000 {
                sender.feed(frame.clone()).await.unwrap();
            }
            sender.flush().await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(20), flood)
            .await
            .expect("the sender is not held back by a slow reader");
        // Now read: what was already on its way, then the close.
        let close = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match slow.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => {}
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("closed within the timeout")
        .expect("with a reason");
        assert_eq!(close.code, CloseCode::Policy);
        assert!(
            close.reason.starts_with("slow_consumer"),
            "{}",
            close.reason
        );
        // The relay's own close frame for a slow consumer, to the byte.
        let relays = RelayError::SlowConsumer(4);
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (relays.ws_close_code(), relays.close_reason().as_str())
        );
    }

    /// The first argument of the first `.{setter}(` call in `text`.
    fn argument_of<'t>(text: &'t str, setter: &str) -> &'t str {
        let call = format!(".{setter}(");
        let at = text
            .find(&call)
            .unwrap_or_else(|| panic!("no {call} in the relay's ws_config"))
            + call.len();
        let end = at + text[at..].find(')').expect("a closing parenthesis");
        &text[at..end]
    }

    /// `2 * 1024` and the like.
    fn product(expression: &str) -> usize {
        expression
            .split('*')
            .map(|factor| factor.trim().parse::<usize>().expect("a number"))
            .product()
    }

    /// The value of `const {name}: {ty} = {value};` in `text`.
    fn constant<'t>(text: &'t str, name: &str) -> &'t str {
        let head = format!("const {name}: ");
        let line = text
            .lines()
            .find(|line| line.trim_start().starts_with(&head))
            .unwrap_or_else(|| panic!("no {head} in the relay's src/ws.rs"));
        line.split_once(" = ")
            .expect("a value")
            .1
            .trim_end_matches(';')
    }

    /// BENCHMARKS.md: the floor has "the relay's WebSocket settings (2 KiB read buffer, 16 KiB
    /// write buffer, the same frame limit)" and writes "batched like the relay's". The relay
    /// keeps its settings private (no API exists for the bench), so this reads them from its
    /// source, `src/ws.rs`, and compares every field of the floor's `WebSocketConfig` with
    /// them; a change on either side fails here until the other follows.
    #[test]
    fn the_floor_has_the_relays_websocket_settings() {
        use gsio_relay_core::config::Limits;
        let relay = include_str!("../../src/ws.rs");
        let at = relay.find("fn ws_config(").expect("the relay's ws_config");
        let body = &relay[at..at + relay[at..].find("\n}\n").expect("its end")];
        let setters: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with('.'))
            .map(|line| &line[1..line.find('(').expect("a call")])
            .collect();
        assert_eq!(
            setters,
            [
                "read_buffer_size",
                "write_buffer_size",
                "max_message_size",
                "max_frame_size"
            ],
            "the relay's ws_config changed: mirror it in the floor's"
        );
        assert!(body.contains("WebSocketConfig::default()"), "{body}");
        let (hard_param, _) = body["fn ws_config(".len()..]
            .split_once(':')
            .expect("a parameter");
        assert_eq!(
            argument_of(body, "max_message_size"),
            format!("Some({hard_param}")
        );
        assert_eq!(
            argument_of(body, "max_frame_size"),
            format!("Some({hard_param}")
        );
        // The relay passes the core's hard frame limit of its configured message size (to the
        // stream guard, which hands it on to tungstenite's settings).
        assert!(
            relay.contains("relay.config().limits.hard_frame_bytes(),")
                && relay.contains("let hard_frame_bytes = stream.hard_frame_bytes();")
                && relay.contains("Some(ws_config(hard_frame_bytes))"),
            "the relay's frame limit no longer comes from Limits::hard_frame_bytes"
        );

        let max = 1 << 20;
        let hard = Limits {
            max_message_bytes: max,
            ..Default::default()
        }
        .hard_frame_bytes();
        let relays = WebSocketConfig::default()
            .read_buffer_size(product(argument_of(body, "read_buffer_size")))
            .write_buffer_size(product(argument_of(body, "write_buffer_size")))
            .max_message_size(Some(hard))
            .max_frame_size(Some(hard));
        assert_eq!(format!("{:?}", ws_config(max)), format!("{relays:?}"));

        assert_eq!(constant(relay, "WRITE_BATCH"), WRITE_BATCH.to_string());
        assert_eq!(
            constant(relay, "CLOSE_TIMEOUT"),
            format!("Duration::from_secs({})", CLOSE_TIMEOUT.as_secs())
        );
    }

    /// BENCHMARKS.md: "frames shared between recipients": a broadcast frame is queued for every
    /// recipient as the same bytes, not a copy each.
    #[test]
    fn a_broadcast_frame_is_shared_by_its_recipients() {
        let registry: Shared = Arc::default();
        let (one, mut one_out) = queue::queue(4);
        let (two, mut two_out) = queue::queue(4);
        registry.write().unwrap().all.extend([(1, one), (2, two)]);
        forward(&registry, 3, &Destination::Everyone, Message::text("frame"));
        let (Some(Message::Text(first)), Some(Message::Text(second))) =
            (one_out.try_next(), two_out.try_next())
        else {
            panic!("both recipients got a text frame");
        };
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
    }

    /// The next frame's text, within 10 s.
    async fn next_text(ws: &mut Ws) -> String {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// BENCHMARKS.md: "Both targets get the very same JSON text ... Such a frame is complete,
    /// so the relay forwards the sender's text." A receiver reads, from the relay (in this
    /// process, on the shipped relay.toml with the bench's overrides) and from the floor alike,
    /// the very bytes its sender wrote: reading costs the bench's clients the same with both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_relay_and_the_floor_deliver_the_senders_very_bytes() {
        use crate::clients::{ws_connect, MAX_MESSAGE_BYTES};
        use crate::wire::{Route, Stamp, BROADCAST_TYPE, DIRECTED_TYPE};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let floor = format!("ws://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, 4096, MAX_MESSAGE_BYTES));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../relay.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let config =
            gsio_relay_core::RelayConfig::load(&text, path, crate::proc::RELAY_ENV.iter().copied())
                .unwrap();
        let server = gsio_relay::Server::bind(config).await.unwrap();
        let relay = format!("ws://{}", server.ws_addr());
        tokio::spawn(server.run(std::future::pending()));

        let stamp = Stamp {
            seq: 7,
            ts: 123_456_789,
        };
        for url in [floor, relay] {
            // Directed, p7a -> p7b.
            let mut receiver = ws_connect(&url, "p7b").await.unwrap();
            let mut sender = ws_connect(&url, "p7a").await.unwrap();
            let sent = Route::new(DIRECTED_TYPE, "p7a", "p7b").ws_text(stamp);
            sender.send(Message::text(sent.clone())).await.unwrap();
            assert_eq!(next_text(&mut receiver).await, sent, "{url}");
            // Broadcast, from a publisher to a subscriber.
            let mut subscriber = ws_connect(&url, "s7_0").await.unwrap();
            let mut publisher = ws_connect(&url, "pub7").await.unwrap();
            let sent = Route::new(BROADCAST_TYPE, "pub7", "").ws_text(stamp);
            publisher.send(Message::text(sent.clone())).await.unwrap();
            assert_eq!(next_text(&mut subscriber).await, sent, "{url}");
        }
    }
}
