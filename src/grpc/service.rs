//! The `RelayService` implementation: each `Exchange` stream is one peer ([`PeerConn`]), read by
//! a spawned task and written by the response stream, both ending on the connection's events
//! (kicked, shutdown's phases).
//!
//! Each stream holds one of the `server.max_connections` peer slots it shares with the WebSocket
//! front, from before it is opened until its reader and writer are both done. A stream that finds
//! none free is refused at once (`RESOURCE_EXHAUSTED`, `too_many_peers`): unlike a TCP connect,
//! which waits in the kernel's backlog, an HTTP/2 stream has nowhere to wait.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use gsio_relay_core::{Input, Message, RelayError, Step};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use super::codec::{from_pb, WireEnvelope};
use super::server;
use super::NODE_ID_METADATA;
use crate::events::{ConnEvents, Waiter};
use crate::metrics::Front;
use crate::peer::PeerConn;
use crate::shutdown::{Phase, Shutdown};
use crate::state::Relay;

/// The status that ends a stream for `error`: the core's code, and a message that starts with
/// the error code.
pub fn status_for(error: &RelayError) -> Status {
    Status::new(
        tonic::Code::from_i32(error.grpc_code()),
        format!("{}: {error}", error.code()),
    )
}

/// Why a stream cannot be read any further, as the relay's error, when its client sent
/// something it should not have: a message over the hard frame limit, or bytes that are no
/// `Envelope` (tonic reports a prost decode failure as `INTERNAL` with this message).
fn unreadable(status: &Status, hard_limit: usize) -> Option<RelayError> {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Some(RelayError::FrameTooLarge { limit: hard_limit })
        }
        tonic::Code::Internal if status.message().starts_with("failed to decode Protobuf") => {
            Some(RelayError::undecodable_envelope())
        }
        _ => None,
    }
}

/// The RelayService implementation.
pub struct RelayGrpc {
    relay: Arc<Relay>,
    shutdown: Shutdown,
    /// The peer slots of `server.max_connections`, shared with the WebSocket front: one per
    /// open stream.
    slots: Arc<Semaphore>,
    /// The number of slots, to say so when a stream is refused.
    limit: usize,
}

impl RelayGrpc {
    /// `slots` holds `relay`'s `server.max_connections` permits.
    pub fn new(relay: Arc<Relay>, shutdown: Shutdown, slots: Arc<Semaphore>) -> RelayGrpc {
        let limit = relay.config().server.max_connections;
        RelayGrpc {
            relay,
            shutdown,
            slots,
            limit,
        }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<WireEnvelope, Status>> + Send>>;

#[tonic::async_trait]
impl server::relay_service_server::RelayService for RelayGrpc {
    type ExchangeStream = Outbound;

    async fn exchange(
        &self,
        request: Request<Streaming<WireEnvelope>>,
    ) -> Result<Response<Outbound>, Status> {
        if self.shutdown.phase() != Phase::Running {
            return Err(status_for(&RelayError::ShuttingDown));
        }
        // Taken before the peer exists, so a refused stream costs no queue. Dropped on every
        // early return below (an id refused at connect gives its slot back at once).
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(status_for(&RelayError::TooManyPeers { limit: self.limit }));
        };
        let (mut peer, outbox) = PeerConn::open(&self.relay, Front::Grpc);
        let node_id = match request.metadata().get(NODE_ID_METADATA) {
            Some(value) => Some(value.to_str().map_err(|_| {
                Status::invalid_argument(format!("{NODE_ID_METADATA} must be ASCII"))
            })?),
            None => None,
        };
        let token = match request.metadata().get("authorization") {
            Some(value) => Some(bearer_token(value).ok_or_else(|| {
                status_for(&RelayError::InvalidToken(
                    "`authorization` metadata must be `Bearer <token>`".into(),
                ))
            })?),
            None => None,
        };
        if let Step::Close(error) = peer.begin(node_id, token).await {
            return Err(status_for(&error));
        }
        let mut inbound = request.into_inner();
        let hard_limit = self.relay.grpc_frame_limit();
        let (reading, done) = self.shutdown.tokens();
        // Shared by the reader task and the writer: the slot is free once both are done (the
        // reader may end first and the writer still deliver what is queued, or the other way
        // round when the peer is kicked).
        let slot = Arc::new(slot);
        let reader_slot = slot.clone();

        let events = outbox.events();
        let registration = self.shutdown.register(&events);
        let reader_events = events.clone();
        tokio::spawn(async move {
            // The identification deadline: a stream still without an id when it passes ends.
            let identify = tokio::time::sleep(peer.time_to_deadline().unwrap_or(Duration::MAX / 4));
            tokio::pin!(identify);
            loop {
                tokio::select! {
                    // Checked first: once shutdown says stop reading, no envelope is read, even
                    // one that is already waiting.
                    biased;
                    // Shutdown, or disconnected as a slow consumer: leave the hub now, even if
                    // the client has stopped polling the response stream that would say why.
                    _ = reader_events.raised(Waiter::Reader, ConnEvents::KICKED | ConnEvents::STOP_READING) => break,
                    () = &mut identify, if peer.id().is_none() => {
                        if let Step::Close(error) = peer.timed_out() {
                            reader_events.kick(error);
                            break;
                        }
                    }
                    next = inbound.message() => match next {
                        Ok(Some(WireEnvelope::Decoded(envelope))) => {
                            let size = prost::Message::encoded_len(&envelope);
                            let input = Input::Decoded { envelope: from_pb(envelope), size };
                            if let Step::Close(error) = peer.input(input).await {
                                tracing::debug!("gRPC stream ended by the relay: {error}");
                                // The writer ends the stream with its status, after what is
                                // queued (the `Error` envelope saying why).
                                reader_events.kick(error);
                                break;
                            }
                        }
                        // The codec only decodes into `Decoded`; were that to change, the stream
                        // ends rather than the relay panicking on network input.
                        Ok(Some(WireEnvelope::Encoded(_))) => {
                            tracing::error!("gRPC codec yielded pre-encoded bytes; ending the stream");
                            break;
                        }
                        Ok(None) => break,
                        // The stream cannot be read past a message that is too large or
                        // does not decode: it ends, telling the client why (after what is
                        // queued for it, as any kick). Other errors are the transport's: the
                        // client is gone.
                        Err(status) => {
                            tracing::debug!("gRPC stream read failed: {status}");
                            if let Some(error) = unreadable(&status, hard_limit) {
                                reader_events.kick(error);
                            }
                            break;
                        }
                    },
                }
            }
            drop(reading);
            // During shutdown the peer must stay registered until the close phase, so that its
            // queue is drained rather than cut (the outbound stream ends it). Known from this
            // connection's events: shutdown raises a phase on them before it publishes it.
            if reader_events.is_raised(ConnEvents::STOP_READING) {
                reader_events
                    .raised(Waiter::Reader, ConnEvents::CLOSE)
                    .await;
            }
            drop(peer);
            drop(reader_slot);
        });

        let writer = Writer {
            outbox,
            events,
            _registration: registration,
            _done: done,
            _slot: slot,
            state: WriterState::Open,
        };
        let outbound = futures_util::stream::unfold(writer, |mut writer| async move {
            let item = writer.next().await?;
            Some((item, writer))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// The token of an `authorization: Bearer <token>` value.
fn bearer_token(value: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The outbound half of one stream: what the peer's outbox yields, until it ends. Whatever ends
/// it (kicked, shutdown), what was queued for the peer goes out first, in order, then the status.
struct Writer {
    outbox: crate::queue::Outbox,
    /// Kicked (slow consumer) or shutdown's close phase.
    events: Arc<ConnEvents>,
    _registration: crate::shutdown::Registration,
    /// Dropped with the stream, which tells the shutdown controller this connection is done.
    _done: crate::shutdown::DoneToken,
    /// This stream's peer slot, shared with the reader task.
    _slot: Arc<OwnedSemaphorePermit>,
    state: WriterState,
}

enum WriterState {
    Open,
    /// Kicked (slow consumer): the reader task takes the peer out of the hub at once, so the
    /// outbox ends after what was queued; write all of it, then end with this error's status.
    Kicked(RelayError),
    /// Shutting down: write what is queued, then end with UNAVAILABLE.
    Draining,
    Ended,
}

enum Event {
    Message(Option<Arc<Message>>),
    Kicked(RelayError),
    Closing,
}

impl Writer {
    async fn next(&mut self) -> Option<Result<WireEnvelope, Status>> {
        loop {
            match &self.state {
                WriterState::Open => {
                    let event = tokio::select! {
                        biased;
                        raised = self.events.raised(Waiter::Writer, ConnEvents::KICKED | ConnEvents::CLOSE) => {
                            if raised & ConnEvents::KICKED != 0 {
                                Event::Kicked(self.events.reason())
                            } else {
                                Event::Closing
                            }
                        }
                        message = self.outbox.recv() => Event::Message(message),
                    };
                    match event {
                        Event::Message(Some(message)) => {
                            return Some(Ok(WireEnvelope::of(&message)))
                        }
                        Event::Kicked(error) => self.state = WriterState::Kicked(error),
                        // The peer left. If that is the shutdown, the client must still be told.
                        Event::Message(None)
                            if !self.events.is_raised(ConnEvents::STOP_READING) =>
                        {
                            self.state = WriterState::Ended;
                            return None;
                        }
                        Event::Message(None) | Event::Closing => self.state = WriterState::Draining,
                    }
                }
                WriterState::Kicked(error) => {
                    if let Some(message) = self.outbox.recv().await {
                        return Some(Ok(WireEnvelope::of(&message)));
                    }
                    let status = status_for(error);
                    self.state = WriterState::Ended;
                    return Some(Err(status));
                }
                WriterState::Draining => {
                    if let Some(message) = self.outbox.try_next() {
                        return Some(Ok(WireEnvelope::of(&message)));
                    }
                    self.state = WriterState::Ended;
                    return Some(Err(status_for(&RelayError::ShuttingDown)));
                }
                WriterState::Ended => return None,
            }
        }
    }
}
