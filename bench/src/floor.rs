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
//! closed (1008 `slow_consumer`, the relay's close code and reason): the frame that found the
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
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: "slow_consumer: the floor's queue is full".into(),
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
    }
}
