//! The WebSocket front: one JSON envelope per text frame, for browsers and any WebSocket client.
//!
//! One task per connection reads frames and writes the peer's outbox, batching writes (several
//! frames fed, one flush). However the relay ends a connection (kicked, refused, shutdown), it
//! writes what was queued for it, in order, before the close frame, within [`CLOSE_TIMEOUT`].
//! A connection must complete its upgrade within `limits.handshake_timeout_ms`; once open, one
//! the relay has heard nothing from is pinged and closed when it stays silent (the core's
//! [`Liveness`] decides when; `idle_timeout`). A client refused by the per-address limits never
//! gets here ([`crate::limits`]). The identity may be fixed by `?node_id=ID` on the URL. Every protocol
//! decision (errors, close codes and reasons) is the core's [`gsio_relay_core::Connection`]'s;
//! this module moves frames and carries out its [`Step`]s. A frame over the hard limit
//! ([`gsio_relay_core::config::Limits::hard_frame_bytes`]) is not read at all. Under tungstenite,
//! [`crate::budget::Guarded`] bounds what a client can make the relay hold for a message it has
//! not finished: little before it has an id, and all connections together a shared budget.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use gsio_relay_core::liveness::{Due, Liveness};
use gsio_relay_core::{Input, Message, RelayError, Step};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::budget::{Guarded, PartialMessages, Refusal};
use crate::events::{ConnEvents, Waiter};
use crate::limits::{AddressGuard, Addresses};
use crate::metrics::{Deadline, Front};
use crate::peer::PeerConn;
use crate::queue::Outbox;
use crate::shutdown::{Phase, Shutdown};
use crate::state::Relay;

/// How long a connection the relay ends may take to write what was queued for it and its close
/// frame: a peer that does not read by then is dropped, with the rest unwritten.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many queued frames are written before one flush.
const WRITE_BATCH: usize = 64;

/// The WebSocket settings of every relay connection (relay-bench's floor keeps a copy); `hard`
/// is the largest frame read at all.
fn ws_config(hard: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        // Small buffers: most peers are idle most of the time (2 KiB keeps an idle peer under
        // 8 KiB of server memory; relay-bench conns). Larger frames grow the buffer as needed.
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(hard))
        .max_frame_size(Some(hard))
}

/// Accepts WebSocket connections until shutdown, each once it has a peer slot (see
/// [`crate::server::accept_with_slot`]).
/// A client refused by the per-address limits is answered 429 ([`Addresses::refuse_ws`]).
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    slots: Arc<Semaphore>,
    shutdown: Shutdown,
    addresses: Arc<Addresses>,
) {
    // One budget for the unfinished messages of every connection of this front.
    let partial = PartialMessages::new();
    let refuse = |stream, refusal| addresses.refuse_ws(stream, refusal);
    while let Some(accepted) =
        crate::server::accept_with_slot(&listener, &slots, &shutdown, &addresses, Front::Ws, refuse)
            .await
    {
        let stream = Guarded::new(
            accepted.stream,
            relay.config().limits.hard_frame_bytes(),
            partial.clone(),
            relay.clone(),
        );
        tokio::spawn(connection(
            stream,
            relay.clone(),
            shutdown.clone(),
            (accepted.permit, accepted.address),
        ));
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

/// What the handshake's `Sec-WebSocket-Protocol` offers: a token (`gsio.token.<token>`, the one
/// header a browser's `new WebSocket(url, protocols)` can set), and whether the client speaks
/// `gsio.v1`, the protocol the relay then names in its answer (a browser that offered
/// protocols fails a handshake whose answer names none of them).
fn offered_protocols(request: &Request) -> (Option<String>, bool) {
    let mut token = None;
    let mut v1 = false;
    for value in request.headers().get_all("sec-websocket-protocol") {
        let Ok(value) = value.to_str() else { continue };
        for protocol in value.split(',').map(str::trim) {
            if protocol == gsio_relay_core::auth::WS_PROTOCOL {
                v1 = true;
            } else if let Some(t) = protocol.strip_prefix(gsio_relay_core::auth::WS_TOKEN_PREFIX) {
                token = Some(t.to_owned());
            }
        }
    }
    (token, v1)
}

async fn connection(
    stream: Guarded<TcpStream>,
    relay: Arc<Relay>,
    shutdown: Shutdown,
    // Held for the connection's life: its peer slot and its address's place.
    _held: (OwnedSemaphorePermit, AddressGuard),
) {
    let (reading, _done) = shutdown.tokens();
    let config = relay.config();
    let hard_frame_bytes = stream.hard_frame_bytes();
    let handshake_timeout = Duration::from_millis(config.limits.handshake_timeout_ms);
    // The time the core's deadlines are counted in: since this connection was accepted.
    let opened = tokio::time::Instant::now();
    let now = move || opened.elapsed();
    let mut liveness = Liveness::new(&config.limits, now());
    drop(config);
    let mut node_id = None;
    let mut token = None;
    // The callback's error type is tungstenite's `ErrorResponse` (an HTTP response), large by
    // its nature and not ours to box.
    #[allow(clippy::result_large_err)]
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |request: &Request, mut response: Response| {
            node_id = node_id_param(request);
            let v1;
            (token, v1) = offered_protocols(request);
            if v1 {
                response.headers_mut().insert(
                    "sec-websocket-protocol",
                    tungstenite::http::HeaderValue::from_static(gsio_relay_core::auth::WS_PROTOCOL),
                );
            }
            Ok(response)
        },
        Some(ws_config(hard_frame_bytes)),
    );
    // Boxed: the handshake's state is large and short-lived; inline, it would size the
    // connection's task for its whole life (the task is most of an idle peer's memory).
    let handshake = tokio::time::timeout(handshake_timeout, Box::pin(handshake));
    // Raced against shutdown: a client that connected but has not (or never will) finish its
    // handshake is not a peer yet, and must not hold the shutdown for the handshake's limit.
    // Dropping the handshake future there is fine: it owns the socket, which is then closed.
    let mut ws = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(ws)) => ws,
            Ok(Err(error)) => return tracing::debug!("WebSocket handshake failed: {error}"),
            Err(_) => {
                relay.metrics.timed_out(Deadline::Handshake);
                return tracing::debug!("WebSocket handshake timed out");
            }
        },
        () = shutdown.reached(Phase::StopReading) => {
            return tracing::debug!("WebSocket handshake abandoned: shutting down");
        }
    };

    let (mut peer, mut outbox) = PeerConn::open(&relay, Front::Ws);
    let events = outbox.events();
    let _registration = shutdown.register(&events);
    if let Step::Close(error) = peer.begin(node_id.as_deref(), token.as_deref()).await {
        // The Error envelope is queued: `finish` writes it, then the close.
        return Box::pin(finish(ws, outbox, None, peer, End::Kicked(error))).await;
    }
    if peer.id().is_some() {
        ws.get_mut().identified();
    }
    // The identification deadline: a connection still without an id when it passes is closed.
    let identify = tokio::time::sleep(peer.time_to_deadline().unwrap_or(Duration::MAX / 4));
    tokio::pin!(identify);

    let mut reading = Some(reading);
    // A message taken from the outbox but not yet handed to the socket, because a write was
    // interrupted (kicked, shutdown) while the socket was full; it goes out first when the
    // connection ends.
    let mut held: Option<Arc<Message>> = None;
    let mut watching = ConnEvents::KICKED | ConnEvents::STOP_READING | ConnEvents::CLOSE;
    // True after a write: the next turn prefers reading (see the select below).
    let mut read_turn = false;
    // The idle deadline (`limits.ping_interval_ms`): counted from the end of the handshake.
    if let Some(liveness) = liveness.as_mut() {
        liveness.heard(now());
    }
    let idle = tokio::time::sleep_until(deadline(opened, liveness.as_ref()));
    tokio::pin!(idle);
    let ending = loop {
        tokio::select! {
            biased;
            raised = events.raised(Waiter::Writer, watching) => {
                if raised & ConnEvents::KICKED != 0 {
                    break End::Kicked(events.reason());
                }
                if raised & ConnEvents::CLOSE != 0 {
                    break End::Shutdown;
                }
                reading = None;
                watching &= !ConnEvents::STOP_READING;
            }
            () = &mut identify, if peer.id().is_none() => {
                if let Step::Close(error) = peer.timed_out() {
                    break End::Kicked(error);
                }
            }
            // The idle deadline, after the events (a kick or the shutdown goes first), and only
            // while the peer is read: once shutdown stops reading, its Pongs are not read either.
            () = &mut idle, if liveness.is_some() && reading.is_some() => {
                let Some(live) = liveness.as_mut() else { continue };
                match live.due(now()) {
                    Due::Nothing => {}
                    Due::Ping => {
                        // A peer that does not read may leave no room for it: then the write
                        // waits, but never past a kick or the shutdown (as `write_batch`), and
                        // the pong deadline runs all the same (`due` is asked again below).
                        tokio::select! {
                            sent = ws.send(tungstenite::Message::Ping(Bytes::new())) => {
                                if sent.is_err() {
                                    break End::Gone;
                                }
                            }
                            raised = events.raised(Waiter::Writer, ConnEvents::KICKED | ConnEvents::CLOSE) => {
                                if raised & ConnEvents::KICKED != 0 {
                                    break End::Kicked(events.reason());
                                }
                                break End::Shutdown;
                            }
                            () = tokio::time::sleep_until(opened + live.deadline()) => {
                                continue;
                            }
                        }
                    }
                    Due::Dead(error) => {
                        relay.metrics.timed_out(Deadline::Idle);
                        tracing::debug!("WebSocket peer idle: {error}");
                        break End::Kicked(error);
                    }
                }
                idle.as_mut().reset(deadline(opened, Some(&*live)));
            }
            // Reading and writing take turns: after a write, the next turn reads a frame if
            // one is there, so a peer whose queue is never empty (a steady stream to it) still
            // has its own envelopes read. Reading is also enabled whenever nothing is queued.
            frame = ws.next(), if reading.is_some() && (read_turn || outbox.is_empty()) => {
                read_turn = false;
                if let (Some(live), Some(Ok(_))) = (liveness.as_mut(), &frame) {
                    live.heard(now());
                    idle.as_mut().reset(deadline(opened, Some(&*live)));
                }
                match frame {
                    Some(Ok(tungstenite::Message::Text(text))) => {
                        if let Step::Close(error) = peer.input(text_input(text)).await {
                            break End::Kicked(error);
                        }
                        if peer.id().is_some() {
                            ws.get_mut().identified();
                        }
                    }
                    Some(Ok(tungstenite::Message::Binary(_))) => {
                        if let Step::Close(error) = peer.input(Input::Binary).await {
                            break End::Kicked(error);
                        }
                    }
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
                        tracing::debug!("a peer sent an oversized frame: {error}");
                        if let Step::Close(error) = peer.input(Input::OversizedFrame).await {
                            break End::Kicked(error);
                        }
                    }
                    Some(Err(error)) => {
                        if let Some(refusal) = Refusal::of(&error) {
                            tracing::debug!("a peer's frame was refused: {refusal}");
                            if let Step::Close(error) = peer.input(refusal.input()).await {
                                break End::Kicked(error);
                            }
                        }
                        tracing::debug!("WebSocket read failed: {error}");
                        break End::Gone;
                    }
                    None => break End::Gone,
                }
            }
            next = outbox.recv() => match next {
                Some(message) => {
                    read_turn = true;
                    held = Some(message);
                    // A peer that stopped reading blocks this write; its queue then fills and
                    // the kick ends the connection. `write_batch` is cancel safe: what it has
                    // not handed to the socket stays in `held` or in the outbox.
                    tokio::select! {
                        written = write_batch(&mut ws, &mut outbox, &mut held) => {
                            if written.is_err() {
                                break End::Gone;
                            }
                        }
                        raised = events.raised(Waiter::Writer, ConnEvents::KICKED | ConnEvents::CLOSE) => {
                            if raised & ConnEvents::KICKED != 0 {
                                break End::Kicked(events.reason());
                            }
                            break End::Shutdown;
                        }
                    }
                }
                None => break End::Gone,
            },
        }
    };

    // Boxed for the same reason as the handshake: only the ending needs this state.
    Box::pin(finish(ws, outbox, held, peer, ending)).await;
}

/// The instant of `liveness`'s next deadline (far away when there is none: the branch is off).
fn deadline(opened: tokio::time::Instant, liveness: Option<&Liveness>) -> tokio::time::Instant {
    match liveness {
        Some(liveness) => opened + liveness.deadline(),
        None => opened + Duration::from_secs(86_400 * 365),
    }
}

/// Ends a connection: out of the hub, what is queued written, and the peer told why, all within
/// [`CLOSE_TIMEOUT`]. Past it, the connection is dropped with whatever is still unwritten.
async fn finish(
    mut ws: Ws,
    mut outbox: Outbox,
    mut held: Option<Arc<Message>>,
    peer: PeerConn,
    ending: End,
) {
    match ending {
        End::Gone => drop(peer),
        End::Kicked(error) => {
            // Out of the hub first: others stop routing to it at once and its id is free. With
            // its last handle gone, its outbox ends after what was queued before.
            drop(peer);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if write_out(&mut ws, &mut outbox, &mut held, Until::Ended)
                    .await
                    .is_ok()
                {
                    close(&mut ws, close_frame(&error)).await;
                }
            })
            .await;
        }
        End::Shutdown => {
            // Still in the hub while its queue drains (nothing is routed any more).
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if write_out(&mut ws, &mut outbox, &mut held, Until::Empty)
                    .await
                    .is_ok()
                {
                    close(&mut ws, close_frame(&RelayError::ShuttingDown)).await;
                }
            })
            .await;
            drop(peer);
        }
    }
}

enum End {
    /// The client went away (or the socket failed): nothing more to say.
    Gone,
    /// Disconnected by the relay for this reason (slow consumer, a frame it will not read, an id
    /// refused at connect): out of the hub at once, then what was queued, then the close.
    Kicked(RelayError),
    /// The relay is stopping: what is queued, then the close, then out of the hub.
    Shutdown,
}

/// Sends a close frame and waits for the peer's reply; the caller bounds it in time (a peer
/// that does not read may never take it). Waiting matters: closing the socket with the peer's
/// bytes unread makes the kernel send a reset, which can discard our close frame (and the
/// messages before it) before the peer reads them.
async fn close(ws: &mut Ws, frame: CloseFrame) {
    if ws.close(Some(frame)).await.is_ok() {
        while let Some(Ok(_)) = ws.next().await {}
    }
}

/// The close frame telling a peer why the relay ends its connection: the core's code, and a
/// reason that starts with the error code.
fn close_frame(error: &RelayError) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(error.ws_close_code()),
        reason: Utf8Bytes::from(error.close_reason()),
    }
}

/// `message` as a text frame, sharing its bytes.
fn text_frame(message: &Message) -> tungstenite::Message {
    let json: &ByteString = message.json();
    // SAFETY: a `ByteString` is UTF-8 by construction (each of its safe constructors checks, or
    // takes a `String`), which is the whole of `Utf8Bytes`'s invariant. The check `try_from`
    // would repeat was a pass over every byte of every frame written.
    let text = unsafe { Utf8Bytes::from_bytes_unchecked(json.as_bytes().clone()) };
    tungstenite::Message::Text(text)
}

/// A text frame as the core's input: its bytes, shared, not copied.
fn text_input(text: Utf8Bytes) -> Input {
    // SAFETY: a `Utf8Bytes` is UTF-8 by construction (tungstenite checks every text frame it
    // reads, and its other constructors take `str`s), which is the whole of `ByteString`'s
    // invariant. The check `try_from` would repeat was a pass over every byte of every frame read.
    Input::Text(unsafe { ByteString::from_bytes_unchecked(Bytes::from(text)) })
}

type Ws = WebSocketStream<Guarded<TcpStream>>;

/// Writes `held` and whatever else is queued (up to a batch), then flushes once.
///
/// Cancel safe: a message leaves `held` (or the outbox) only once the socket is ready to take
/// it, so a write interrupted while the socket is full loses nothing (unlike `SinkExt::feed`,
/// which drops the message it holds); and an interrupted flush leaves the bytes in the socket's
/// buffer, to go out with the next write.
async fn write_batch(
    ws: &mut Ws,
    outbox: &mut Outbox,
    held: &mut Option<Arc<Message>>,
) -> Result<(), tungstenite::Error> {
    for _ in 0..WRITE_BATCH {
        if held.is_none() {
            *held = outbox.try_next();
        }
        let Some(message) = held.as_ref() else {
            break;
        };
        std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
        ws.start_send_unpin(text_frame(message))?;
        *held = None;
    }
    ws.flush().await
}

/// How far [`write_out`] goes.
#[derive(Clone, Copy)]
enum Until {
    /// What is queued now: the peer is still in the hub, so more may come; it is not waited for.
    Empty,
    /// Until the outbox ends: the peer has left the hub, so its outbox ends once what was queued
    /// before is taken.
    Ended,
}

/// Writes `held` and then the outbox, as far as `until` says, then flushes.
async fn write_out(
    ws: &mut Ws,
    outbox: &mut Outbox,
    held: &mut Option<Arc<Message>>,
    until: Until,
) -> Result<(), tungstenite::Error> {
    if let Some(message) = held.take() {
        ws.feed(text_frame(&message)).await?;
    }
    loop {
        let next = match until {
            Until::Empty => outbox.try_next(),
            Until::Ended => outbox.recv().await,
        };
        let Some(message) = next else { break };
        ws.feed(text_frame(&message)).await?;
    }
    ws.flush().await
}
