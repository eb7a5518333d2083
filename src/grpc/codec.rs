//! The gRPC front's wire format: [`WireEnvelope`] (decoded on the way in, encoded once and
//! shared on the way out), [`RelayCodec`] (prost with small per-stream buffers), and the
//! conversions between the proto `Envelope` and the core's, which live here and nowhere else.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use gsio_relay_core::{Envelope, Message, RelayError};
use prost::encoding::{DecodeContext, WireType};
use tonic::codec::{BufferSettings, Codec};

use crate::pb;

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
        message_type: envelope.message_type.to_string(),
        sender_id: envelope.sender_id.to_string(),
        recipient_id: envelope.recipient_id.to_string(),
        payload_json: envelope.payload.get().to_owned(),
        message_id: envelope.message_id.to_string(),
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
    .map(|parsed| parsed.with_message_id(envelope.message_id))
}
