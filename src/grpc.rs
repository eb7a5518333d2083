//! The gRPC front: `gsio.relay.v1.RelayService/Exchange`, one bidirectional stream per peer.
//!
//! Decoding a `pb::Envelope` into the core's `Envelope` and encoding a `Message` back are the
//! only conversions, and they live here. Outbound, each message is encoded to protobuf once (the
//! first time a gRPC recipient needs it) and the bytes are shared by every gRPC recipient: the
//! server code is generated with `Envelope` mapped to [`WireEnvelope`], whose encoding is those
//! bytes.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use futures_util::Stream;
use gsio_relay_core::{Envelope, Message, RelayError};
use prost::encoding::{DecodeContext, WireType};
use tonic::codec::{BufferSettings, Codec};
use tonic::{Request, Response, Status, Streaming};

use crate::events::{ConnEvents, Waiter};
use crate::pb;
use crate::peer::PeerConn;
use crate::shutdown::{Phase, Shutdown};
use crate::state::Relay;

/// Generated server code (see `build.rs`).
pub mod server {
    tonic::include_proto!("server/gsio.relay.v1");
}

/// Request metadata that fixes the stream's peer id before its first envelope.
pub const NODE_ID_METADATA: &str = "x-gsio-node-id";

/// `gsio.relay.v1.Envelope` on the server's wire: decoded when it comes in, pre-encoded bytes
/// shared by all recipients when it goes out.
#[derive(Debug, Clone)]
pub enum WireEnvelope {
    Decoded(pb::Envelope),
    Encoded(Bytes),
}

impl Default for WireEnvelope {
    fn default() -> Self {
        WireEnvelope::Decoded(pb::Envelope::default())
    }
}

impl WireEnvelope {
    /// The protobuf encoding of `message`, computed once per message.
    pub fn of(message: &Message) -> WireEnvelope {
        WireEnvelope::Encoded(
            message
                .binary(|e| {
                    let pb = to_pb(e);
                    Bytes::from(prost::Message::encode_to_vec(&pb))
                })
                .clone(),
        )
    }
}

impl prost::Message for WireEnvelope {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            WireEnvelope::Decoded(envelope) => envelope.encode_raw(buf),
            WireEnvelope::Encoded(bytes) => buf.put_slice(bytes),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if let WireEnvelope::Encoded(_) = self {
            *self = WireEnvelope::default();
        }
        let WireEnvelope::Decoded(envelope) = self else {
            unreachable!("just made Decoded")
        };
        envelope.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            WireEnvelope::Decoded(envelope) => envelope.encoded_len(),
            WireEnvelope::Encoded(bytes) => bytes.len(),
        }
    }

    fn clear(&mut self) {
        *self = WireEnvelope::default();
    }
}

/// The server's codec: tonic's prost codec with 2 KiB per-stream buffers instead of 8 KiB.
/// Every idle stream holds one for decoding and one for encoding; the buffers grow when a larger
/// message needs it. (relay-bench conns: idle gRPC streams were the relay's largest cost.)
pub struct RelayCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RelayCodec<T, U> {
    fn default() -> Self {
        RelayCodec(PhantomData)
    }
}

fn stream_buffers() -> BufferSettings {
    BufferSettings::new(2 * 1024, 32 * 1024)
}

impl<T, U> Codec for RelayCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(stream_buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(stream_buffers())
    }
}

/// The core envelope as protobuf.
pub fn to_pb(envelope: &Envelope) -> pb::Envelope {
    pb::Envelope {
        message_type: envelope.message_type.clone(),
        sender_id: envelope.sender_id.clone(),
        recipient_id: envelope.recipient_id.clone(),
        payload_json: envelope.payload.get().to_owned(),
    }
}

/// A protobuf envelope as the core's, checking its payload is JSON.
pub fn from_pb(envelope: pb::Envelope) -> Result<Envelope, RelayError> {
    Envelope::from_parts(
        envelope.message_type,
        envelope.sender_id,
        envelope.recipient_id,
        envelope.payload_json,
    )
}

/// The status that ends a stream for `error` (only errors that end a stream get here).
pub fn status_for(error: &RelayError) -> Status {
    use gsio_relay_core::ErrorCode::*;
    let text = format!("{}: {error}", error.code());
    match error.code() {
        InvalidPeerId | ReservedPeerId => Status::invalid_argument(text),
        PeerIdInUse => Status::already_exists(text),
        SlowConsumer => Status::resource_exhausted(text),
        ShuttingDown => Status::unavailable(text),
        _ => Status::internal(text),
    }
}

/// The RelayService implementation.
pub struct RelayGrpc {
    relay: Arc<Relay>,
    shutdown: Shutdown,
}

impl RelayGrpc {
    pub fn new(relay: Arc<Relay>, shutdown: Shutdown) -> RelayGrpc {
        RelayGrpc { relay, shutdown }
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
        let (mut peer, outbox) = PeerConn::open(&self.relay);
        if let Some(value) = request.metadata().get(NODE_ID_METADATA) {
            let id = value.to_str().map_err(|_| {
                Status::invalid_argument(format!("{NODE_ID_METADATA} must be ASCII"))
            })?;
            peer.bind(id).map_err(|e| status_for(&e))?;
        }
        let mut inbound = request.into_inner();
        let (reading, done) = self.shutdown.tokens();

        let shutdown = self.shutdown.clone();
        let events = outbox.events();
        let registration = self.shutdown.register(&events);
        let reader_events = events.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // Shutdown, or disconnected as a slow consumer: leave the hub now, even if
                    // the client has stopped polling the response stream that would say why.
                    _ = reader_events.raised(Waiter::Reader, ConnEvents::KICKED | ConnEvents::STOP_READING) => break,
                    next = inbound.message() => match next {
                        Ok(Some(WireEnvelope::Decoded(envelope))) => {
                            let size = prost::Message::encoded_len(&envelope);
                            peer.receive_decoded(from_pb(envelope), size);
                        }
                        Ok(Some(WireEnvelope::Encoded(_))) => unreachable!("decoding yields Decoded"),
                        Ok(None) => break,
                        Err(status) => {
                            match status.code() {
                                // A message over tonic's hard limit: the stream is unusable.
                                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                                    tracing::debug!("gRPC stream ended: {status}");
                                }
                                _ => tracing::debug!("gRPC stream read failed: {status}"),
                            }
                            break;
                        }
                    },
                }
            }
            drop(reading);
            // During shutdown the peer must stay registered until the close phase, so that its
            // queue is drained rather than cut (the outbound stream ends it).
            if shutdown.phase() != Phase::Running {
                shutdown.reached(Phase::Close).await;
            }
            drop(peer);
        });

        let writer = Writer {
            outbox,
            events,
            _registration: registration,
            running: self.shutdown.clone(),
            _done: done,
            state: WriterState::Open,
        };
        let outbound = futures_util::stream::unfold(writer, |mut writer| async move {
            let item = writer.next().await?;
            Some((item, writer))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// The outbound half of one stream: what the peer's outbox yields, until it ends.
struct Writer {
    outbox: crate::queue::Outbox,
    /// Kicked (slow consumer) or shutdown's close phase.
    events: Arc<ConnEvents>,
    _registration: crate::shutdown::Registration,
    running: Shutdown,
    /// Dropped with the stream, which tells the shutdown controller this connection is done.
    _done: crate::shutdown::DoneToken,
    state: WriterState,
}

#[derive(PartialEq)]
enum WriterState {
    Open,
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
        if self.state == WriterState::Open {
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
                Event::Message(Some(message)) => return Some(Ok(WireEnvelope::of(&message))),
                Event::Kicked(error) => {
                    self.state = WriterState::Ended;
                    return Some(Err(status_for(&error)));
                }
                // The peer left. If that is the shutdown, the client must still be told.
                Event::Message(None) if self.running.phase() == Phase::Running => {
                    self.state = WriterState::Ended;
                    return None;
                }
                Event::Message(None) | Event::Closing => self.state = WriterState::Draining,
            }
        }
        if self.state == WriterState::Draining {
            if let Some(message) = self.outbox.try_next() {
                return Some(Ok(WireEnvelope::of(&message)));
            }
            self.state = WriterState::Ended;
            return Some(Err(status_for(&RelayError::ShuttingDown)));
        }
        None
    }
}
