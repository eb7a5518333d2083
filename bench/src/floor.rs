//! The floor: the least a relay on the same WebSocket library could do. It forwards frames
//! without parsing them, so the relay's figures divided by the floor's say what the relay's own
//! work (JSON parsing, identity checks, routing rules) costs on top of moving frames.
//!
//! Kept fair, so that the ratio means something: the same tokio-tungstenite version and the same
//! WebSocket settings as the relay ([`ws_config`], a copy, since the relay keeps its own private:
//! 2 KiB read buffer, 16 KiB write buffer, the relay's hard frame limit), one task per connection
//! that reads frames and writes its queue, a bounded queue per connection (the relay's
//! `limits.queue_capacity`), frames shared between recipients (a `Utf8Bytes` clone is a
//! reference count), and writes batched the way the relay batches them (up to 64 frames fed, one
//! flush).
//!
//! Routing without parsing: the peer id is the `?node_id=` of the handshake, as on the relay.
//! An id `p<N>a` sends to `p<N>b` and back (the directed pairs); any other id broadcasts to every
//! other connection (the fan-out publisher). A full queue makes the sender wait (backpressure)
//! instead of dropping: the floor never loses a message. On connect the floor sends a stand-in
//! `Welcome` frame, so clients wait for a first frame exactly as they do with the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// At most this many queued frames are written before one flush (gsio-relay `src/ws.rs`,
/// `WRITE_BATCH`).
const WRITE_BATCH: usize = 64;
/// The read buffer of every connection (gsio-relay `src/ws.rs`, `ws_config`:
/// `.read_buffer_size(2 * 1024)`).
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// The write buffer of every connection (gsio-relay `src/ws.rs`, `ws_config`:
/// `.write_buffer_size(16 * 1024)`).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The largest frame and message read at all (gsio-relay `src/ws.rs`, `hard_frame_limit`,
/// which `ws_config` sets as both `max_message_size` and `max_frame_size`).
pub fn hard_frame_limit(limit: usize) -> usize {
    limit.saturating_mul(2).max(limit + 64 * 1024)
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

type Queue = mpsc::Sender<Message>;

/// Every connection's queue, by connection number and by id.
#[derive(Default)]
struct Registry {
    all: HashMap<u64, Queue>,
    by_id: HashMap<String, Queue>,
}

/// std `RwLock` (as the relay's hub): never held across an `.await`.
type Shared = Arc<RwLock<Registry>>;

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
    let (tx, mut rx) = mpsc::channel::<Message>(queue_capacity);
    // The stand-in Welcome is queued before anything can be routed here, as the relay's is.
    let _ = tx.try_send(Message::text(crate::wire::floor_welcome(&id)));
    {
        let mut registry = registry.write().expect("not poisoned");
        registry.all.insert(conn, tx.clone());
        if !id.is_empty() {
            registry.by_id.insert(id.clone(), tx.clone());
        }
    }
    drop(tx);

    loop {
        tokio::select! {
            biased;
            queued = rx.recv() => {
                let Some(first) = queued else { break };
                if write_batch(&mut ws, &mut rx, first).await.is_err() {
                    break;
                }
            }
            frame = ws.next() => match frame {
                Some(Ok(frame @ (Message::Text(_) | Message::Binary(_)))) => {
                    forward(&registry, conn, &destination, frame).await;
                }
                Some(Ok(Message::Ping(_))) => {
                    if ws.flush().await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let mut registry = registry.write().expect("not poisoned");
    registry.all.remove(&conn);
    if !id.is_empty() {
        registry.by_id.remove(&id);
    }
}

/// Queues `frame` for its destination(s). A full queue is waited on (outside the lock).
async fn forward(registry: &Shared, from: u64, destination: &Destination, frame: Message) {
    let mut full: Vec<Queue> = Vec::new();
    {
        let registry = registry.read().expect("not poisoned");
        let mut offer = |queue: &Queue| {
            if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(frame.clone()) {
                full.push(queue.clone());
            }
        };
        match destination {
            Destination::Partner(partner) => {
                if let Some(queue) = registry.by_id.get(partner) {
                    offer(queue);
                }
            }
            Destination::Everyone => {
                for (conn, queue) in &registry.all {
                    if *conn != from {
                        offer(queue);
                    }
                }
            }
        }
    }
    for queue in full {
        let _ = queue.send(frame.clone()).await;
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn write_batch(
    ws: &mut Ws,
    rx: &mut mpsc::Receiver<Message>,
    first: Message,
) -> Result<(), tungstenite::Error> {
    ws.feed(first).await?;
    for _ in 1..WRITE_BATCH {
        let Ok(next) = rx.try_recv() else { break };
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
}
