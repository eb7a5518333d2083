//! The WebSocket front: one JSON envelope per text frame, for browsers and any WebSocket client.
//!
//! One task per connection reads frames and writes the peer's outbox, batching writes (several
//! frames fed, one flush). The identity may be fixed by `?node_id=ID` on the URL. A frame over
//! `limits.max_message_bytes` is answered with `message_too_large` and the connection stays; a
//! frame so large that reading it at all would be abuse (over [`hard_frame_limit`]) closes the
//! connection with 1009.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gsio_relay_core::{ErrorCode, Message, RelayError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::peer::PeerConn;
use crate::relay::{Outbox, Relay, Signal};
use crate::shutdown::Shutdown;

/// A client must finish the WebSocket handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The connection task's slot in its [`Signal`].
const WRITER: usize = 0;
/// How long the relay keeps trying to tell a peer why its connection ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many queued frames are written before one flush.
const WRITE_BATCH: usize = 64;

/// The largest frame read at all: above `limit` but below this, the frame is refused with an
/// error envelope; above this, the connection is closed.
pub(crate) fn hard_frame_limit(limit: usize) -> usize {
    limit.saturating_mul(2).max(limit + 64 * 1024)
}

/// The WebSocket settings of every relay connection (relay-bench's floor keeps a copy).
fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    let hard = hard_frame_limit(max_message_bytes);
    WebSocketConfig::default()
        // Small buffers: most peers are idle most of the time (2 KiB keeps an idle peer under
        // 8 KiB of server memory; relay-bench conns). Larger frames grow the buffer as needed.
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(hard))
        .max_frame_size(Some(hard))
}

/// Accepts WebSocket connections until shutdown, each once it has a connection slot (see
/// [`crate::server::accept_with_slot`]).
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    slots: Arc<Semaphore>,
    shutdown: Shutdown,
) {
    while let Some((stream, permit)) =
        crate::server::accept_with_slot(&listener, &slots, &shutdown, "WebSocket").await
    {
        tokio::spawn(connection(stream, relay.clone(), shutdown.clone(), permit));
    }
}

/// The `node_id` query parameter of the handshake request, if any, percent-decoded (as the
/// Worker reads it).
fn node_id_param(request: &Request) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "node_id")
        .map(|(_, value)| value.into_owned())
}

async fn connection(
    stream: TcpStream,
    relay: Arc<Relay>,
    shutdown: Shutdown,
    _permit: OwnedSemaphorePermit,
) {
    let (reading, _done) = shutdown.tokens();
    let max_message_bytes = relay.config().limits.max_message_bytes;
    let mut node_id = None;
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |request: &Request, response: Response| {
            node_id = node_id_param(request);
            Ok(response)
        },
        Some(ws_config(max_message_bytes)),
    );
    // Boxed: the handshake's state is large and short-lived; inline, it would size the
    // connection's task for its whole life (the task is most of an idle peer's memory).
    let mut ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(handshake)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => return tracing::debug!("WebSocket handshake failed: {error}"),
        Err(_) => return tracing::debug!("WebSocket handshake timed out"),
    };

    let (mut peer, mut outbox) = PeerConn::open(&relay);
    let signal = outbox.signal();
    let _registration = shutdown.register(&signal);
    if let Some(id) = node_id {
        if let Err(error) = peer.bind(&id) {
            peer.reject(error.clone(), None);
            let _ = write_queued(&mut ws, &mut outbox).await;
            let _ = ws.close(Some(close_frame(&error))).await;
            return;
        }
    }

    let mut reading = Some(reading);
    let mut watching = Signal::KICKED | Signal::STOP_READING | Signal::CLOSE;
    let ending = loop {
        tokio::select! {
            biased;
            raised = signal.raised(WRITER, watching) => {
                if raised & Signal::KICKED != 0 {
                    break End::Kicked(signal.reason());
                }
                if raised & Signal::CLOSE != 0 {
                    break End::Shutdown;
                }
                reading = None;
                watching &= !Signal::STOP_READING;
            }
            next = outbox.recv() => match next {
                Some(message) => {
                    // A peer that stopped reading blocks this write; its queue then fills and
                    // the kick ends the connection.
                    tokio::select! {
                        written = write_batch(&mut ws, &mut outbox, message) => {
                            if written.is_err() {
                                break End::Gone;
                            }
                        }
                        _ = signal.raised(WRITER, Signal::KICKED) => {
                            break End::Kicked(signal.reason());
                        }
                    }
                }
                None => break End::Gone,
            },
            frame = ws.next(), if reading.is_some() => match frame {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    peer.receive_text(text.as_str(), text.clone().into());
                }
                Some(Ok(tungstenite::Message::Binary(_))) => peer.reject(
                    RelayError::UnsupportedFrame(
                        "binary frames are not accepted; send each envelope as a JSON text frame",
                    ),
                    None,
                ),
                // tungstenite answers pings itself; the pong goes out with the next flush.
                Some(Ok(tungstenite::Message::Ping(_))) => {
                    if ws.flush().await.is_err() {
                        break End::Gone;
                    }
                }
                Some(Ok(tungstenite::Message::Pong(_) | tungstenite::Message::Frame(_))) => {}
                // The client closes; tungstenite replies, and the stream then ends.
                Some(Ok(tungstenite::Message::Close(_))) => {}
                Some(Err(tungstenite::Error::Capacity(error))) => {
                    tracing::debug!("closing a connection that sent an oversized frame: {error}");
                    let limit = peer.max_message_bytes();
                    break End::Close(CloseFrame {
                        code: CloseCode::Size,
                        reason: Utf8Bytes::from(format!(
                            "message_too_large: frame over {} bytes",
                            hard_frame_limit(limit)
                        )),
                    });
                }
                Some(Err(error)) => {
                    tracing::debug!("WebSocket read failed: {error}");
                    break End::Gone;
                }
                None => break End::Gone,
            },
        }
    };

    // Boxed for the same reason as the handshake: only the ending needs this state.
    Box::pin(finish(ws, outbox, peer, ending)).await;
}

/// Ends a connection: out of the hub, and the peer told why, within [`CLOSE_TIMEOUT`].
async fn finish(mut ws: Ws, mut outbox: Outbox, peer: PeerConn, ending: End) {
    match ending {
        End::Gone => drop(peer),
        End::Kicked(error) => {
            // Out of the hub first: others must stop routing to it while it is being closed.
            drop(peer);
            close(&mut ws, close_frame(&error)).await;
        }
        End::Close(frame) => {
            drop(peer);
            close(&mut ws, frame).await;
        }
        End::Shutdown => {
            // Still in the hub while its queue drains (nothing is routed any more).
            let drained = tokio::time::timeout(CLOSE_TIMEOUT, write_queued(&mut ws, &mut outbox));
            if let Ok(Ok(())) = drained.await {
                close(&mut ws, close_frame(&RelayError::ShuttingDown)).await;
            }
            drop(peer);
        }
    }
}

enum End {
    /// The client went away (or the socket failed): nothing more to say.
    Gone,
    /// Disconnected by the relay for this reason (slow consumer).
    Kicked(RelayError),
    Close(CloseFrame),
    Shutdown,
}

/// Sends a close frame and waits for the peer's reply, bounded in time (a peer that does not
/// read may never take it). Waiting matters: closing the socket with the peer's bytes unread
/// makes the kernel send a reset, which can discard our close frame before the peer reads it.
async fn close(ws: &mut Ws, frame: CloseFrame) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// The close frame telling a peer why the relay ends its connection. The reason starts with
/// the error code.
fn close_frame(error: &RelayError) -> CloseFrame {
    let code = match error.code() {
        ErrorCode::ShuttingDown => CloseCode::Away,
        _ => CloseCode::Policy,
    };
    CloseFrame {
        code,
        reason: Utf8Bytes::from(error.close_reason()),
    }
}

fn text_frame(message: &Message) -> tungstenite::Message {
    // SAFETY: `Message::json` is UTF-8 by construction (a `String` or a text frame's bytes).
    tungstenite::Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(message.json().clone()) })
}

type Ws = WebSocketStream<TcpStream>;

/// Writes `first` and whatever else is queued (up to a batch), then flushes once.
async fn write_batch(
    ws: &mut Ws,
    outbox: &mut Outbox,
    first: Arc<Message>,
) -> Result<(), tungstenite::Error> {
    ws.feed(text_frame(&first)).await?;
    for _ in 1..WRITE_BATCH {
        let Some(message) = outbox.try_next() else {
            break;
        };
        ws.feed(text_frame(&message)).await?;
    }
    ws.flush().await
}

/// Writes everything queued now.
async fn write_queued(ws: &mut Ws, outbox: &mut Outbox) -> Result<(), tungstenite::Error> {
    while let Some(message) = outbox.try_next() {
        ws.feed(text_frame(&message)).await?;
    }
    ws.flush().await
}
