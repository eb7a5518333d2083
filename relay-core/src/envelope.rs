//! Envelopes: the one message shape of the protocol, its strict JSON parser, and [`Message`],
//! the shared unit of delivery.
//!
//! On the wire an envelope is one JSON object with exactly `message_type` (non-empty string),
//! `message_id` (string, may be empty or absent: the relay assigns one), `sender_id` (string),
//! `recipient_id` (string, may be empty) and `payload` (any JSON value, absent means `null`).
//! `null` is accepted for `message_id`, `sender_id` and `recipient_id` and means empty. This is
//! gsio-net's `P2PMessage`, field for field.
//!
//! The payload is never turned into a JSON tree: it is kept as the sender's raw JSON text, so
//! integers beyond 2^53, deep nesting, unicode and escapes reach every recipient as sent.

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use bytestring::ByteString;
use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::RelayError;
use crate::id::RELAY_ID;

pub(crate) mod scan;

/// One envelope, as routed by the core.
#[derive(Clone)]
///
/// Each field shares its bytes ([`ByteString`]): an envelope read from a frame holds slices of
/// that frame, so reading one copies and allocates nothing per field.
pub struct Envelope {
    pub message_type: ByteString,
    /// Unique per message; empty until the sender or the relay gives one (see [`crate::ids`]).
    pub message_id: ByteString,
    pub sender_id: ByteString,
    pub recipient_id: ByteString,
    /// The payload's JSON text exactly as the sender wrote it (`null` when absent).
    pub payload: Payload,
}

/// One JSON value's text, as its sender wrote it (without the whitespace around it): valid JSON
/// by construction, since every constructor either checks it or writes it. Shares its bytes: a
/// payload read from a frame is a slice of that frame, never a copy.
#[derive(Clone)]
pub struct Payload(ByteString);

impl Payload {
    /// `null`, the payload of an envelope sent without one.
    pub fn null() -> Payload {
        Payload(ByteString::from_static("null"))
    }

    /// `text` if it is one JSON value (whitespace around it is dropped), else `None`.
    pub fn parse(text: String) -> Option<Payload> {
        let value: &RawValue = serde_json::from_str(&text).ok()?;
        Some(if value.get().len() == text.len() {
            Payload(ByteString::from(text))
        } else {
            Payload(ByteString::from(value.get().to_owned()))
        })
    }

    /// `value` written as JSON.
    pub fn to_json(value: &impl Serialize) -> Payload {
        Payload(ByteString::from(
            serde_json::to_string(value).expect("relay-authored payloads serialize"),
        ))
    }

    /// A value found in `text` by one of this module's parsers (see [`found`]).
    fn found(text: Option<&ByteString>, value: &str) -> Payload {
        Payload(found(text, value))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

/// Equal when every field is, the payload compared as text.
impl PartialEq for Envelope {
    fn eq(&self, other: &Envelope) -> bool {
        self.message_type == other.message_type
            && self.message_id == other.message_id
            && self.sender_id == other.sender_id
            && self.recipient_id == other.recipient_id
            && self.payload.get() == other.payload.get()
    }
}

impl Eq for Envelope {}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("message_type", &self.message_type)
            .field("message_id", &self.message_id)
            .field("sender_id", &self.sender_id)
            .field("recipient_id", &self.recipient_id)
            .field("payload", &self.payload.get())
            .finish()
    }
}

/// `part`, found in `text` by one of this module's parsers: shared when `text` is a `ByteString`
/// holding it, copied otherwise.
fn found(text: Option<&ByteString>, part: &str) -> ByteString {
    let within = text.filter(|text| {
        let (start, end) = (text.as_ptr() as usize, text.as_ptr() as usize + text.len());
        let at = part.as_ptr() as usize;
        start <= at && at + part.len() <= end
    });
    match within {
        Some(text) => text.slice_ref(part),
        None => ByteString::from(part),
    }
}

impl Envelope {
    /// Parses one envelope from JSON text in a single pass. Every way the text can be wrong has
    /// its own [`RelayError`].
    pub fn parse_json(text: &str) -> Result<Envelope, RelayError> {
        Envelope::parse_json_checked(text).map(|(envelope, _)| envelope)
    }

    /// Like [`Envelope::parse_json`], also telling how [`Completeness`] the text is: only a
    /// complete text may be forwarded as is (recipients always see all five fields), and one
    /// that lacks only its `message_id` may be forwarded with the relay's id put in front.
    pub fn parse_json_checked(text: &str) -> Result<(Envelope, Completeness), RelayError> {
        Envelope::parse(text, None)
    }

    /// Like [`Envelope::parse_json_checked`], the payload sharing `text`'s bytes.
    pub fn parse_shared(text: &ByteString) -> Result<(Envelope, Completeness), RelayError> {
        Envelope::parse(text, Some(text))
    }

    /// The fast path for a plain envelope (see [`scan`]), else the full parser. `shared` is
    /// `text` as a `ByteString`, when it is one.
    fn parse(
        text: &str,
        shared: Option<&ByteString>,
    ) -> Result<(Envelope, Completeness), RelayError> {
        match scan::plain(text) {
            Some(plain) => Ok(Envelope::from_plain(plain, shared)),
            None => Envelope::parse_json_fully(text, shared),
        }
    }

    /// A plain envelope (see [`scan`]) as the full parser would read it.
    fn from_plain(plain: scan::Plain<'_>, shared: Option<&ByteString>) -> (Envelope, Completeness) {
        let complete = match plain.message_id {
            None => Completeness::LacksMessageId,
            Some("") => Completeness::Incomplete,
            Some(_) => Completeness::Complete,
        };
        let envelope = Envelope {
            message_type: found(shared, plain.message_type),
            message_id: found(shared, plain.message_id.unwrap_or_default()),
            sender_id: found(shared, plain.sender_id),
            recipient_id: found(shared, plain.recipient_id),
            payload: Payload::found(shared, plain.payload),
        };
        (envelope, complete)
    }

    /// The full parser: every valid form, and a specific error for every invalid one.
    fn parse_json_fully(
        text: &str,
        shared: Option<&ByteString>,
    ) -> Result<(Envelope, Completeness), RelayError> {
        let mut problem = None;
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = match de.deserialize_any(FieldsVisitor {
            problem: &mut problem,
        }) {
            Ok(fields) => fields,
            Err(e) => return Err(problem.unwrap_or_else(|| RelayError::InvalidJson(e.to_string()))),
        };
        de.end()
            .map_err(|e| RelayError::InvalidJson(e.to_string()))?;

        let message_type = fields.message_type.flatten().unwrap_or_default();
        if message_type.is_empty() {
            return Err(RelayError::MissingMessageType);
        }
        let others = matches!(fields.sender_id, Some(Some(_)))
            && matches!(fields.recipient_id, Some(Some(_)))
            && fields.payload.is_some();
        let complete = match &fields.message_id {
            _ if !others => Completeness::Incomplete,
            Some(Some(id)) if !id.is_empty() => Completeness::Complete,
            None => Completeness::LacksMessageId,
            // An empty or null id is there: adding another would give the key twice.
            Some(_) => Completeness::Incomplete,
        };
        let envelope = Envelope {
            message_type: message_type.into(),
            message_id: fields.message_id.flatten().unwrap_or_default().into(),
            sender_id: fields.sender_id.flatten().unwrap_or_default().into(),
            recipient_id: fields.recipient_id.flatten().unwrap_or_default().into(),
            payload: fields
                .payload
                .map_or_else(Payload::null, |raw| Payload::found(shared, raw.get())),
        };
        Ok((envelope, complete))
    }

    /// Builds an envelope from parts that arrived separately (the gRPC front), checking that
    /// `payload_json` is one JSON value. An empty `payload_json` means `null`.
    pub fn from_parts(
        message_type: String,
        sender_id: String,
        recipient_id: String,
        payload_json: String,
    ) -> Result<Envelope, RelayError> {
        if message_type.is_empty() {
            return Err(RelayError::MissingMessageType);
        }
        let payload = if payload_json.trim().is_empty() {
            Payload::null()
        } else {
            Payload::parse(payload_json).ok_or(RelayError::InvalidField {
                field: "payload_json",
                expected: "one JSON value (or empty for null)",
            })?
        };
        Ok(Envelope {
            message_type: message_type.into(),
            message_id: ByteString::new(),
            sender_id: sender_id.into(),
            recipient_id: recipient_id.into(),
            payload,
        })
    }

    /// The same envelope with `message_id` set (empty: the relay assigns one).
    pub fn with_message_id(mut self, message_id: String) -> Envelope {
        self.message_id = message_id.into();
        self
    }

    /// An envelope written by the relay itself (`sender_id` is [`RELAY_ID`]), with the id
    /// `message_id`.
    pub fn from_relay(
        message_type: &str,
        message_id: String,
        recipient_id: &str,
        payload: impl Serialize,
    ) -> Envelope {
        Envelope {
            message_type: message_type.into(),
            message_id: message_id.into(),
            sender_id: ByteString::from_static(RELAY_ID),
            recipient_id: recipient_id.into(),
            payload: Payload::to_json(&payload),
        }
    }

    /// The envelope as one JSON object (the WebSocket text frame).
    pub fn to_json(&self) -> String {
        let payload = self.payload.get();
        let mut json = Vec::with_capacity(
            80 + self.message_type.len()
                + self.message_id.len()
                + self.sender_id.len()
                + self.recipient_id.len()
                + payload.len(),
        );
        let fields = [
            ("{\"message_type\":", &self.message_type),
            (",\"message_id\":", &self.message_id),
            (",\"sender_id\":", &self.sender_id),
            (",\"recipient_id\":", &self.recipient_id),
        ];
        for (key, value) in fields {
            json.extend_from_slice(key.as_bytes());
            serde_json::to_writer(&mut json, &**value).expect("strings always serialize");
        }
        json.extend_from_slice(b",\"payload\":");
        json.extend_from_slice(payload.as_bytes());
        json.push(b'}');
        String::from_utf8(json).expect("JSON strings and a JSON value are UTF-8")
    }
}

/// What a sender's text lacks, for forwarding it as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// All five fields, ids as strings (not `null`), a non-empty `message_id`.
    Complete,
    /// Complete but for the `message_id` key, which is absent.
    LacksMessageId,
    /// Anything else: the relay encodes the envelope afresh.
    Incomplete,
}

/// `text` (a JSON object lacking only its `message_id`, [`Completeness::LacksMessageId`]) with
/// `"message_id":"<id>"` as its first member; everything else is the sender's text, unchanged.
/// `id` must need no JSON escaping (the relay's own ids do not).
pub fn prepend_message_id(text: &str, id: &str) -> ByteString {
    let open = text.find('{').map_or(0, |at| at + 1);
    let mut json = String::with_capacity(text.len() + id.len() + 16);
    json.push_str(&text[..open]);
    json.push_str("\"message_id\":\"");
    json.push_str(id);
    json.push_str("\",");
    json.push_str(&text[open..]);
    ByteString::from(json)
}

/// The five fields as read: each `None` when absent; the ids and type `Some(None)` when `null`.
#[derive(Default)]
struct Fields<'de> {
    message_type: Option<Option<String>>,
    message_id: Option<Option<String>>,
    sender_id: Option<Option<String>>,
    recipient_id: Option<Option<String>>,
    /// Kept as the sender's raw text, never built into a tree.
    payload: Option<&'de RawValue>,
}

/// Reads one string-or-null field in the parser's single pass (no second scan), recording a
/// value of another type as [`RelayError::InvalidField`] naming the field.
struct StringField<'p> {
    field: &'static str,
    problem: &'p mut Option<RelayError>,
}

impl<'de> de::DeserializeSeed<'de> for StringField<'_> {
    type Value = Option<String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StringField<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<String>, E> {
        Ok(Some(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Option<String>, E> {
        Ok(Some(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<String>, E> {
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<String>, E> {
        self.wrong_type()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<String>, E> {
        self.wrong_type()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<String>, E> {
        self.wrong_type()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<String>, E> {
        self.wrong_type()
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Option<String>, A::Error> {
        self.wrong_type()
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Option<String>, A::Error> {
        self.wrong_type()
    }
}

impl StringField<'_> {
    fn wrong_type<T, E: de::Error>(self) -> Result<T, E> {
        let problem = RelayError::InvalidField {
            field: self.field,
            expected: "a string",
        };
        let text = problem.to_string();
        *self.problem = Some(problem);
        Err(E::custom(text))
    }
}

/// Reads the top-level object, keeping each value as raw JSON. It records *why* it failed in
/// `problem` so the caller can answer with the exact error, not serde's generic text.
struct FieldsVisitor<'p> {
    problem: &'p mut Option<RelayError>,
}

impl FieldsVisitor<'_> {
    fn refuse<T, E: de::Error>(self, problem: RelayError) -> Result<T, E> {
        let text = problem.to_string();
        *self.problem = Some(problem);
        Err(E::custom(text))
    }
}

enum Key {
    MessageType,
    MessageId,
    SenderId,
    RecipientId,
    Payload,
    Other(String),
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "message_type" => Key::MessageType,
                    "message_id" => Key::MessageId,
                    "sender_id" => Key::SenderId,
                    "recipient_id" => Key::RecipientId,
                    "payload" => Key::Payload,
                    other => Key::Other(crate::id::truncate_for_display(other)),
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

macro_rules! not_an_object {
    ($($method:ident($($ty:ty)?) => $kind:literal),* $(,)?) => {$(
        fn $method<E: de::Error>(self $(, _v: $ty)?) -> Result<Self::Value, E> {
            self.refuse(RelayError::NotAnObject($kind))
        }
    )*};
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an envelope object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Key>()? {
            let (present, name) = match &key {
                Key::MessageType => (fields.message_type.is_some(), "message_type"),
                Key::MessageId => (fields.message_id.is_some(), "message_id"),
                Key::SenderId => (fields.sender_id.is_some(), "sender_id"),
                Key::RecipientId => (fields.recipient_id.is_some(), "recipient_id"),
                Key::Payload => (fields.payload.is_some(), "payload"),
                Key::Other(name) => return self.refuse(RelayError::UnknownField(name.clone())),
            };
            if present {
                return self.refuse(RelayError::InvalidField {
                    field: name,
                    expected: "given once (it appears twice)",
                });
            }
            let string = StringField {
                field: name,
                problem: &mut *self.problem,
            };
            match key {
                Key::MessageType => fields.message_type = Some(map.next_value_seed(string)?),
                Key::MessageId => fields.message_id = Some(map.next_value_seed(string)?),
                Key::SenderId => fields.sender_id = Some(map.next_value_seed(string)?),
                Key::RecipientId => fields.recipient_id = Some(map.next_value_seed(string)?),
                Key::Payload => fields.payload = Some(map.next_value()?),
                Key::Other(_) => unreachable!("refused above"),
            }
        }
        Ok(fields)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _seq: A) -> Result<Fields<'de>, A::Error> {
        self.refuse(RelayError::NotAnObject("an array"))
    }

    not_an_object! {
        visit_bool(bool) => "a boolean",
        visit_i64(i64) => "a number",
        visit_u64(u64) => "a number",
        visit_f64(f64) => "a number",
        visit_str(&str) => "a string",
        visit_unit() => "null",
    }
}

/// One envelope on its way to one or many recipients, shared (behind an `Arc`) by all of them.
///
/// Each encoding is computed at most once, whatever the number of recipients: the JSON text for
/// WebSocket peers (the sender's own text when the relay did not change the envelope) and an
/// opaque binary encoding that a front may attach (the native server's protobuf bytes).
pub struct Message {
    envelope: Envelope,
    /// UTF-8 by its type: the sender's own frame, or the relay's encoding.
    json: OnceLock<ByteString>,
    binary: OnceLock<Bytes>,
}

impl Message {
    pub fn new(envelope: Envelope) -> Message {
        Message {
            envelope,
            json: OnceLock::new(),
            binary: OnceLock::new(),
        }
    }

    /// A message whose JSON text is already known: `json` must encode exactly this envelope
    /// (the sender's frame, when admission left it unchanged).
    pub fn with_json(envelope: Envelope, json: ByteString) -> Message {
        Message {
            envelope,
            json: OnceLock::from(json),
            binary: OnceLock::new(),
        }
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The JSON text of the envelope, encoded on first use; cloning it shares the bytes.
    pub fn json(&self) -> &ByteString {
        self.json
            .get_or_init(|| ByteString::from(self.envelope.to_json()))
    }

    /// The JSON text as `&str`.
    pub fn json_str(&self) -> &str {
        self.json()
    }

    /// A front's binary encoding of the envelope, computed by `encode` on first use.
    pub fn binary(&self, encode: impl FnOnce(&Envelope) -> Bytes) -> &Bytes {
        self.binary.get_or_init(|| encode(&self.envelope))
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.envelope.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn env(text: &str) -> Envelope {
        Envelope::parse_json(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_the_browser_example() {
        let e = env(
            r#"{"message_type":"NodeAnnounce","sender_id":"node-id","recipient_id":"","payload":{"node_id":"node-id"}}"#,
        );
        assert_eq!(e.message_type, "NodeAnnounce");
        assert_eq!(e.sender_id, "node-id");
        assert_eq!(e.recipient_id, "");
        assert_eq!(e.payload.get(), r#"{"node_id":"node-id"}"#);
    }

    #[test]
    fn optional_fields_default_to_empty_and_null() {
        let e = env(r#"{"message_type":"T","sender_id":null}"#);
        assert_eq!((&*e.sender_id, &*e.recipient_id), ("", ""));
        assert_eq!(e.payload.get(), "null");
    }

    #[test]
    fn payload_text_is_kept_exactly() {
        for payload in [
            "42",
            "-0",
            "1.5e300",
            "123456789012345678901234567890",
            r#""\u00e9\ud83d\ude00 \" \\ \n""#,
            r#"{"a":[1,{"b":[[[[null]]]]}],"k":true}"#,
            "\"ünïcödé 🚀\"",
        ] {
            let text = format!(r#"{{"message_type":"T","payload":{payload}}}"#);
            assert_eq!(env(&text).payload.get(), payload);
        }
    }

    #[test]
    fn only_texts_with_all_five_fields_are_complete() {
        let cases = [
            (
                r#"{"message_type":"T","message_id":"m","sender_id":"a","recipient_id":"","payload":1}"#,
                true,
            ),
            (
                r#"{"message_type":"T","sender_id":"a","recipient_id":"","payload":1}"#,
                false,
            ),
            (
                r#"{"message_type":"T","message_id":"","sender_id":"a","recipient_id":"","payload":1}"#,
                false,
            ),
            (
                r#"{"message_type":"T","message_id":null,"sender_id":"a","recipient_id":"","payload":1}"#,
                false,
            ),
            (
                r#"{"message_type":"T","sender_id":"a","recipient_id":""}"#,
                false,
            ),
            (
                r#"{"message_type":"T","sender_id":null,"recipient_id":"","payload":1}"#,
                false,
            ),
            (
                r#"{"message_type":"T","sender_id":"a","recipient_id":null,"payload":1}"#,
                false,
            ),
            (
                r#"{"message_type":"T","recipient_id":"","payload":1}"#,
                false,
            ),
        ];
        for (text, complete) in cases {
            assert_eq!(
                Envelope::parse_json_checked(text).unwrap().1 == Completeness::Complete,
                complete,
                "{text}"
            );
        }
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let e = env(r#"{"message_type":"A\u0042","sender_id":"n\u002d1"}"#);
        assert_eq!((&*e.message_type, &*e.sender_id), ("AB", "n-1"));
    }

    #[test]
    fn every_malformed_frame_has_its_own_code() {
        let cases: &[(&str, ErrorCode)] = &[
            ("", ErrorCode::InvalidJson),
            ("{", ErrorCode::InvalidJson),
            ("not json", ErrorCode::InvalidJson),
            (r#"{"message_type":"T"} trailing"#, ErrorCode::InvalidJson),
            (r#"{"message_type":"T","payload":}"#, ErrorCode::InvalidJson),
            ("[1,2]", ErrorCode::NotAnObject),
            ("42", ErrorCode::NotAnObject),
            (r#""text""#, ErrorCode::NotAnObject),
            ("null", ErrorCode::NotAnObject),
            ("true", ErrorCode::NotAnObject),
            ("{}", ErrorCode::MissingMessageType),
            (r#"{"message_type":""}"#, ErrorCode::MissingMessageType),
            (r#"{"message_type":null}"#, ErrorCode::MissingMessageType),
            (r#"{"message_type":7}"#, ErrorCode::InvalidField),
            (
                r#"{"message_type":"T","sender_id":5}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"message_type":"T","recipient_id":["x"]}"#,
                ErrorCode::InvalidField,
            ),
            (
                r#"{"message_type":"T","message_type":"U"}"#,
                ErrorCode::InvalidField,
            ),
            (r#"{"message_type":"T","extra":1}"#, ErrorCode::UnknownField),
        ];
        for (text, code) in cases {
            let err = Envelope::parse_json(text).unwrap_err();
            assert_eq!(err.code(), *code, "{text:?} gave {err}");
        }
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = Envelope::parse_json(r#"{"message_type":"T","recipient_id":1}"#).unwrap_err();
        assert_eq!(
            err,
            RelayError::InvalidField {
                field: "recipient_id",
                expected: "a string"
            }
        );
    }

    #[test]
    fn deep_nesting_is_carried_without_recursion() {
        // The payload is skipped over as raw text, never built into a tree, so nesting far past
        // any recursion limit neither fails nor overflows the stack.
        let payload = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"message_type":"T","payload":{payload}}}"#);
        let parsed = Envelope::parse_json(&text).map_err(|e| e.code());
        assert!(
            parsed.as_ref().is_ok_and(|e| e.payload.get() == payload),
            "{:?}",
            parsed.err()
        );
        let unbalanced = format!(
            r#"{{"message_type":"T","payload":{}}}"#,
            "[".repeat(100_000)
        );
        assert_eq!(
            Envelope::parse_json(&unbalanced)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(ErrorCode::InvalidJson)
        );
    }

    #[test]
    fn a_text_lacking_only_its_id_gets_the_relays_id_in_front() {
        let text =
            r#" { "payload" : [1, 2.50],"message_type":"T","sender_id":"a","recipient_id":""}"#;
        let (_, completeness) = Envelope::parse_json_checked(text).unwrap();
        assert_eq!(completeness, Completeness::LacksMessageId);
        let with_id = prepend_message_id(text, "4f9c-id");
        assert_eq!(
            &*with_id,
            r#" {"message_id":"4f9c-id", "payload" : [1, 2.50],"message_type":"T","sender_id":"a","recipient_id":""}"#
        );
        let (envelope, completeness) = Envelope::parse_json_checked(&with_id).unwrap();
        assert_eq!(completeness, Completeness::Complete);
        assert_eq!(envelope.message_id, "4f9c-id");
        for lacking_more in [
            r#"{"message_type":"T","sender_id":"a","payload":1}"#,
            r#"{"message_type":"T","message_id":null,"sender_id":"a","recipient_id":"","payload":1}"#,
        ] {
            let (_, completeness) = Envelope::parse_json_checked(lacking_more).unwrap();
            assert_eq!(completeness, Completeness::Incomplete, "{lacking_more}");
        }
    }

    #[test]
    fn json_round_trips() {
        let e = env(
            r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":[1, 2.50, 18446744073709551616]}"#,
        );
        assert_eq!(env(&e.to_json()), e);
        assert!(e.to_json().contains("[1, 2.50, 18446744073709551616]"));
    }

    #[test]
    fn from_parts_checks_the_payload() {
        let ok = Envelope::from_parts("T".into(), "a".into(), "".into(), "".into()).unwrap();
        assert_eq!(ok.payload.get(), "null");
        let bad = Envelope::from_parts("T".into(), "a".into(), "".into(), "{".into());
        assert_eq!(bad.unwrap_err().code(), ErrorCode::InvalidField);
        let empty = Envelope::from_parts("".into(), "a".into(), "".into(), "1".into());
        assert_eq!(empty.unwrap_err().code(), ErrorCode::MissingMessageType);
    }

    /// An envelope read from a frame holds slices of it, not copies: every field on the fast
    /// path, the payload also on the full parser's (which decodes escaped strings).
    #[test]
    fn a_shared_frame_is_sliced_not_copied() {
        let within = |text: &ByteString, part: &str| {
            let start = text.as_ptr() as usize;
            let at = part.as_ptr() as usize;
            start <= at && at + part.len() <= start + text.len()
        };
        let plain = ByteString::from_static(
            r#"{"message_type":"T","message_id":"m-1","sender_id":"a","recipient_id":"b","payload":{"k":[1]}}"#,
        );
        let (e, _) = Envelope::parse_shared(&plain).unwrap();
        for part in [
            &*e.message_type,
            &*e.message_id,
            &*e.sender_id,
            &*e.recipient_id,
            e.payload.get(),
        ] {
            assert!(within(&plain, part), "{part} was copied out of {plain}");
        }
        let escaped = ByteString::from_static(
            r#"{"message_type":"\u0054","sender_id":"a","recipient_id":"b","payload":{"k":[1]}}"#,
        );
        let (e, _) = Envelope::parse_shared(&escaped).unwrap();
        assert_eq!(&*e.message_type, "T");
        assert!(within(&escaped, e.payload.get()), "the payload was copied");
    }

    #[test]
    fn message_encodes_once_and_keeps_given_json() {
        let text = r#"{ "message_type" : "T", "payload" : 1 }"#;
        let m = Message::with_json(env(text), ByteString::from_static(text));
        assert_eq!(m.json_str(), text);
        let mut calls = 0;
        for _ in 0..3 {
            m.binary(|_| {
                calls += 1;
                Bytes::from_static(b"x")
            });
        }
        assert_eq!(calls, 1);
    }
}
