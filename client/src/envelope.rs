//! The envelope a node sends and receives, its payload as exact JSON text, and the conversion to
//! and from the generated protobuf type (the only place that knows both).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::pb;

/// One message between peers: gsio-net's `P2PMessage` shape.
///
/// Serializes to (and deserializes from) the JSON object the relay's WebSocket front carries, so
/// the same type fits both fronts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// What the message is (`NodeAnnounce`, `NodeListRequest`, ...); the relay routes by it.
    pub message_type: String,
    /// The message's unique id. Left empty, [`Client::send`](crate::Client::send) fills in a
    /// UUID v4; the relay's `Error` envelopes name it, so errors can be matched to sends.
    #[serde(default)]
    pub message_id: String,
    /// The sending peer. Left empty, [`Client::send`](crate::Client::send) fills in the
    /// client's node id (any other id is refused by the relay as `spoofed_sender`).
    #[serde(default)]
    pub sender_id: String,
    /// The recipient's id, or empty for everyone (how an empty one travels is the relay's
    /// routing rule for `message_type`).
    #[serde(default)]
    pub recipient_id: String,
    /// The payload, exactly as its sender wrote it.
    #[serde(default)]
    pub payload: Payload,
}

impl Envelope {
    /// An envelope to everyone (empty `recipient_id`); ids are filled in when it is sent.
    pub fn new(message_type: impl Into<String>, payload: impl Into<Payload>) -> Envelope {
        Envelope {
            message_type: message_type.into(),
            message_id: String::new(),
            sender_id: String::new(),
            recipient_id: String::new(),
            payload: payload.into(),
        }
    }

    /// The same envelope addressed to `recipient`.
    pub fn to(mut self, recipient: impl Into<String>) -> Envelope {
        self.recipient_id = recipient.into();
        self
    }

    /// The same envelope with this `message_id` instead of a generated one.
    pub fn with_message_id(mut self, message_id: impl Into<String>) -> Envelope {
        self.message_id = message_id.into();
        self
    }

    /// A response to this envelope: addressed to its sender, as gsio-net's responses are.
    pub fn reply(&self, message_type: impl Into<String>, payload: impl Into<Payload>) -> Envelope {
        Envelope::new(message_type, payload).to(self.sender_id.clone())
    }

    pub(crate) fn from_pb(envelope: pb::Envelope) -> Envelope {
        Envelope {
            message_type: envelope.message_type,
            message_id: envelope.message_id,
            sender_id: envelope.sender_id,
            recipient_id: envelope.recipient_id,
            payload: Payload::from_wire(envelope.payload_json),
        }
    }

    pub(crate) fn into_pb(self) -> pb::Envelope {
        pb::Envelope {
            message_type: self.message_type,
            sender_id: self.sender_id,
            recipient_id: self.recipient_id,
            payload_json: self.payload.into_json(),
            message_id: self.message_id,
        }
    }
}

/// A JSON payload kept as text: what was received is what [`Payload::as_json`] returns, byte for
/// byte, so integers beyond 2^53 (or beyond 64 bits), `1.0` versus `1`, key order and escapes all
/// survive a trip through the client.
///
/// Holds valid JSON text only: every constructor checks it (or writes it from a value).
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// `null`, the payload of an envelope that has none.
    pub fn null() -> Payload {
        Payload(RawValue::NULL.to_owned())
    }

    /// A payload from JSON text, kept exactly (less surrounding whitespace); an error if the
    /// text is not one JSON value.
    pub fn from_json(text: impl Into<String>) -> Result<Payload, serde_json::Error> {
        RawValue::from_string(text.into()).map(Payload)
    }

    /// A payload written from any serializable value (a `serde_json::Value`, a struct).
    pub fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Payload, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Payload)
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The payload as a `serde_json::Value`. Integers that fit 64 bits stay exact; larger ones
    /// become floats there, so read such payloads with [`Payload::deserialize`] into a type of
    /// your own, or use [`Payload::as_json`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_json()).expect("a Payload holds valid JSON")
    }

    /// The payload parsed into `T`.
    pub fn deserialize<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_json())
    }

    fn into_json(self) -> String {
        Box::<str>::from(self.0).into_string()
    }

    /// From the wire: empty means `null`. The relay forwards only valid JSON; text that is not
    /// (from some other server) is kept, as a JSON string, rather than dropped.
    fn from_wire(text: String) -> Payload {
        if text.is_empty() {
            return Payload::null();
        }
        match serde_json::from_str::<&RawValue>(&text) {
            Ok(raw) => Payload(raw.to_owned()),
            Err(_) => Payload::from(serde_json::Value::String(text)),
        }
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::null()
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Payload {
        Payload::to_payload(&value).expect("a serde_json::Value always serializes")
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.as_json() == other.as_json()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_text_survives_exactly() {
        for text in [
            r#"{"big":123456789012345678901234567890,"n":9007199254740993}"#,
            r#"{"f":1.0,"i":1,"s":"\u00e9\n","z":[]}"#,
            "42",
            "null",
        ] {
            let payload = Payload::from_json(text).unwrap();
            assert_eq!(payload.as_json(), text);
            let back = Envelope::from_pb(Envelope::new("T", payload).into_pb());
            assert_eq!(back.payload.as_json(), text);
        }
        assert!(Payload::from_json("{").is_err());
        assert!(Payload::from_json("1 2").is_err());
    }

    #[test]
    fn empty_wire_payload_is_null_and_values_convert() {
        let got = Envelope::from_pb(pb::Envelope {
            message_type: "T".into(),
            ..Default::default()
        });
        assert_eq!(got.payload, Payload::null());
        let payload = Payload::from(json!({"node_id": "n1", "n": 9007199254740993u64}));
        assert_eq!(payload.to_value()["n"], 9007199254740993u64);
    }

    #[test]
    fn envelope_has_the_websocket_json_shape() {
        let envelope = Envelope::new("NodeAnnounce", json!({"node_id": "n1"}))
            .to("n2")
            .with_message_id("m1");
        let text = serde_json::to_string(&envelope).unwrap();
        assert_eq!(
            text,
            r#"{"message_type":"NodeAnnounce","message_id":"m1","sender_id":"","recipient_id":"n2","payload":{"node_id":"n1"}}"#
        );
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), envelope);
        let request = Envelope {
            sender_id: "browser".into(),
            ..Envelope::new("NodeListRequest", json!({}))
        };
        assert_eq!(
            request.reply("NodeListResponse", json!({})).recipient_id,
            "browser"
        );
    }
}
