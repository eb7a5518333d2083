//! The check the `envelope_proto` fuzz target (`fuzz/`) runs on each input, here so that the
//! regression test (`tests/fuzz_corpus.rs`) runs the very same check on its checked-in corpus.
//! Not part of the API: hidden from the docs, and called by nothing in the relay. (A module
//! rather than a cargo feature: the root crate's own test cannot turn on a feature of the root
//! crate, short of `required-features`, which would skip the test in the default run.)

use gsio_relay_core::connection::Input;
use gsio_relay_core::Envelope;
use prost::Message as _;

use crate::grpc::codec::{from_pb, to_pb};
use crate::grpc::WireEnvelope;
use crate::pb;

/// One protobuf `Envelope` from a gRPC stream, `data`, decoded as the server's codec decodes it
/// (into [`WireEnvelope`]) and converted as the service converts it ([`from_pb`], which checks
/// `payload_json`). A message that does not decode ends the stream before the core sees it.
/// Checks, besides no panic:
/// - an accepted envelope encodes to protobuf that decodes and converts back to it, and to JSON
///   (what a WebSocket recipient gets) that parses back to it;
/// - through a connection, as [`gsio_relay_core::fuzzing::connection`] checks.
pub fn envelope_proto(data: &[u8]) {
    let Ok(wire) = WireEnvelope::decode(data) else {
        return;
    };
    let WireEnvelope::Decoded(decoded) = wire else {
        panic!("decoding gives a decoded envelope");
    };
    let converted = from_pb(decoded);
    if let Ok(envelope) = &converted {
        let bytes = to_pb(envelope).encode_to_vec();
        let again = pb::Envelope::decode(bytes.as_slice()).map(from_pb);
        assert_eq!(
            again.ok(),
            Some(Ok(envelope.clone())),
            "protobuf round trip"
        );
        let json = envelope.to_json();
        assert_eq!(
            Envelope::parse_json(&json).as_ref(),
            Ok(envelope),
            "{json:?}"
        );
    }
    let parsed = converted.as_ref().ok();
    gsio_relay_core::fuzzing::connection(
        || Input::Decoded {
            envelope: converted.clone(),
            size: data.len(),
        },
        parsed,
    );
}
