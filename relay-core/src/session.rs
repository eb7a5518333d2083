//! The identity of one connection.
//!
//! A connection's peer id is fixed once: by the front before any envelope (`?node_id=` on the
//! WebSocket URL, `x-gsio-node-id` gRPC metadata), or else by the `sender_id` of its first
//! envelope. After that, an envelope naming another sender is refused as spoofed, and an empty
//! `sender_id` is filled in with the connection's id.

use bytestring::ByteString;

use crate::envelope::{Completeness, Envelope, Message};
use crate::error::RelayError;
use crate::id::PeerId;
use crate::ids::check_message_id;

/// Per-connection identity state.
#[derive(Debug, Default, Clone)]
pub struct Session {
    id: Option<PeerId>,
}

/// What [`Session::admit`] found out about an envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The envelope names the id this still anonymous connection wants; the front must join the
    /// hub under it (and [`Session::bind`] on success) before routing.
    pub claim: Option<PeerId>,
    /// The relay changed the envelope (filled `sender_id`), so the sender's own text can no
    /// longer be forwarded as is.
    pub rewritten: bool,
    /// An `Authenticate` envelope from this still anonymous connection: a proof to check, never
    /// routed. Its `sender_id` (if any) is the id it wants.
    pub authenticate: bool,
}

/// An envelope admitted from a connection, ready to route.
#[derive(Debug)]
pub struct Inbound {
    /// See [`Admitted::claim`]: join the hub under this id first.
    pub claim: Option<PeerId>,
    /// See [`Admitted::authenticate`].
    pub authenticate: bool,
    /// Its `message_id` may still be empty: the relay assigns one before routing.
    pub envelope: Envelope,
    /// The sender's own text, when the relay changed nothing but (perhaps) the `message_id`:
    /// it is then forwarded as is. `None` once the relay fills anything else in.
    pub original: Option<SenderText>,
}

/// A sender's text that can be forwarded.
#[derive(Debug)]
pub enum SenderText {
    /// As it is.
    AsIs(ByteString),
    /// With the relay's `message_id` put in front ([`crate::envelope::prepend_message_id`]).
    LacksMessageId(ByteString),
}

impl Inbound {
    /// The message to route: the sender's text when it can be kept, else a fresh encoding.
    pub fn into_message(self) -> Message {
        match self.original {
            Some(SenderText::AsIs(json)) => Message::with_json(self.envelope, json),
            Some(SenderText::LacksMessageId(_)) | None => Message::new(self.envelope),
        }
    }
}

/// An envelope refused: answer the connection with an `Error` envelope for `error`.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub error: RelayError,
    /// The offending envelope's type, when it got far enough to have one.
    pub message_type: Option<String>,
    /// The offending envelope's `message_id`, when it had a valid one.
    pub message_id: Option<String>,
}

impl From<RelayError> for Rejection {
    fn from(error: RelayError) -> Rejection {
        Rejection {
            error,
            message_type: None,
            message_id: None,
        }
    }
}

impl Rejection {
    fn of(error: RelayError, envelope: Envelope) -> Rejection {
        let id_ok = check_message_id(&envelope.message_id).is_ok();
        Rejection {
            error,
            message_type: Some(envelope.message_type.to_string()),
            message_id: id_ok.then(|| envelope.message_id.to_string()),
        }
    }
}

impl Session {
    /// One JSON text frame, of at most `max_bytes`: size, parse, identity, in that order. The
    /// sender's own text becomes the message's JSON when the relay has nothing to change in it,
    /// so it is forwarded without re-encoding.
    pub fn accept_text(&self, text: ByteString, max_bytes: usize) -> Result<Inbound, Rejection> {
        if text.len() > max_bytes {
            return Err(RelayError::MessageTooLarge {
                size: text.len(),
                limit: max_bytes,
            }
            .into());
        }
        let (envelope, completeness) = Envelope::parse_shared(&text)?;
        let original = match completeness {
            Completeness::Complete => Some(SenderText::AsIs(text)),
            Completeness::LacksMessageId => Some(SenderText::LacksMessageId(text)),
            Completeness::Incomplete => None,
        };
        self.accept_envelope(envelope, original)
    }

    /// One envelope decoded by a front (gRPC), `size` bytes on the wire.
    pub fn accept_decoded(
        &self,
        envelope: Result<Envelope, RelayError>,
        size: usize,
        max_bytes: usize,
    ) -> Result<Inbound, Rejection> {
        if size > max_bytes {
            let error = RelayError::MessageTooLarge {
                size,
                limit: max_bytes,
            };
            return Err(match envelope {
                Ok(envelope) => Rejection::of(error, envelope),
                Err(_) => error.into(),
            });
        }
        self.accept_envelope(envelope?, None)
    }

    fn accept_envelope(
        &self,
        mut envelope: Envelope,
        original: Option<SenderText>,
    ) -> Result<Inbound, Rejection> {
        if !envelope.message_id.is_empty() {
            if let Err(error) = check_message_id(&envelope.message_id) {
                return Err(Rejection::of(error, envelope));
            }
        }
        let admitted = match self.admit(&mut envelope) {
            Ok(admitted) => admitted,
            Err(error) => return Err(Rejection::of(error, envelope)),
        };
        Ok(Inbound {
            claim: admitted.claim,
            authenticate: admitted.authenticate,
            envelope,
            original: original.filter(|_| !admitted.rewritten),
        })
    }

    pub fn new() -> Session {
        Session::default()
    }

    pub fn id(&self) -> Option<&PeerId> {
        self.id.as_ref()
    }

    /// Forgets the id (the connection has left); returns it.
    pub fn take(&mut self) -> Option<PeerId> {
        self.id.take()
    }

    pub fn bind(&mut self, id: PeerId) {
        debug_assert!(self.id.is_none(), "a session's id is fixed once");
        self.id = Some(id);
    }

    /// Checks `envelope.sender_id` against this connection's identity, filling it in when
    /// empty.
    pub fn admit(&self, envelope: &mut Envelope) -> Result<Admitted, RelayError> {
        if &*envelope.message_type == crate::auth::AUTHENTICATE {
            return match &self.id {
                Some(id) => Err(RelayError::AlreadyIdentified(id.to_string())),
                None => Ok(Admitted {
                    claim: None,
                    rewritten: false,
                    authenticate: true,
                }),
            };
        }
        match &self.id {
            Some(id) if envelope.sender_id.is_empty() => {
                envelope.sender_id = id.as_str().into();
                Ok(Admitted {
                    claim: None,
                    rewritten: true,
                    authenticate: false,
                })
            }
            Some(id) if envelope.sender_id == id.as_str() => Ok(Admitted {
                claim: None,
                rewritten: false,
                authenticate: false,
            }),
            Some(id) => Err(RelayError::SpoofedSender {
                claimed: crate::id::truncate_for_display(&envelope.sender_id),
                actual: id.to_string(),
            }),
            None if envelope.sender_id.is_empty() => Err(RelayError::IdentityRequired),
            None => Ok(Admitted {
                claim: Some(PeerId::parse(&envelope.sender_id)?),
                rewritten: false,
                authenticate: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn accepted_text_is_forwarded_as_sent_only_when_unchanged() {
        let mut bound = Session::new();
        bound.bind(PeerId::parse("a").unwrap());
        let cases = [
            // (text, forwarded as sent)
            (
                r#"{"message_type":"T","message_id":"m1","sender_id":"a","recipient_id":"","payload": 1}"#,
                true,
            ),
            (
                r#"{"message_type":"T","message_id":"m1","sender_id":"","recipient_id":"","payload":1}"#,
                false,
            ),
            (
                r#"{"message_type":"T","message_id":"m1","sender_id":"a","payload":1}"#,
                false,
            ),
            // No id (absent or empty): the relay assigns one, so the text changes.
            (
                r#"{"message_type":"T","sender_id":"a","recipient_id":"","payload": 1}"#,
                false,
            ),
            (
                r#"{"message_type":"T","message_id":"","sender_id":"a","recipient_id":"","payload": 1}"#,
                false,
            ),
        ];
        for (text, as_sent) in cases {
            let message = bound
                .accept_text(ByteString::from_static(text), 1024)
                .unwrap()
                .into_message();
            assert_eq!(message.json_str() == text, as_sent, "{text}");
            assert_eq!(message.envelope().sender_id, "a");
        }
    }

    /// Mutated envelopes (bytes flipped, cut, duplicated, spliced) never panic the parser or
    /// admission: each is accepted or refused with a code. Deterministic (a fixed LCG), so a
    /// failure replays.
    #[test]
    fn mutated_frames_never_panic() {
        let seeds = [
            r#"{"message_type":"NodeAnnounce","sender_id":"a","recipient_id":"","payload":{"k":[1,2.5,"x\u00e9"]}}"#,
            r#"{"message_type":"LedgerSync","sender_id":"a","recipient_id":"b","payload":123456789012345678901}"#,
            r#"{"message_type":"Ping"}"#,
        ];
        let alphabet = b"{}[]\":,.-+eE0123456789 \\/untrlfasex\x00\xff";
        let mut state: u64 = 0x5eed;
        let mut next = move |bound: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % bound.max(1)
        };
        let mut bound = Session::new();
        bound.bind(PeerId::parse("a").unwrap());
        let mut refused = 0;
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + next(4) {
                if bytes.is_empty() {
                    break;
                }
                let at = next(bytes.len());
                match next(4) {
                    0 => bytes[at] = alphabet[next(alphabet.len())],
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, alphabet[next(alphabet.len())]),
                    _ => {
                        let from = next(bytes.len());
                        let piece = bytes[from..(from + next(8)).min(bytes.len())].to_vec();
                        bytes.splice(at..at, piece);
                    }
                }
            }
            // A text frame is UTF-8; anything else is refused before the parser sees it.
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            let session = if round % 2 == 0 {
                &bound
            } else {
                &Session::new()
            };
            match session.accept_text(ByteString::from(text), 1 << 20) {
                Ok(inbound) => assert!(!inbound.envelope.message_type.is_empty()),
                Err(_) => refused += 1,
            }
        }
        assert!(
            refused > 1000,
            "the mutations should break most frames, broke {refused}"
        );
    }

    #[test]
    fn rejections_carry_the_type_when_known() {
        let s = Session::new();
        let text = r#"{"message_type":"T","sender_id":""}"#;
        let rejected = s
            .accept_text(ByteString::from_static(text), 1024)
            .unwrap_err();
        assert_eq!(rejected.error.code(), ErrorCode::IdentityRequired);
        assert_eq!(rejected.message_type.as_deref(), Some("T"));
        let rejected = s
            .accept_text(ByteString::from_static(text), 10)
            .unwrap_err();
        assert_eq!(rejected.error.code(), ErrorCode::MessageTooLarge);
        let rejected = s
            .accept_text(ByteString::from_static("[]"), 10)
            .unwrap_err();
        assert_eq!(
            (rejected.error.code(), rejected.message_type),
            (ErrorCode::NotAnObject, None)
        );
        let envelope = Envelope::from_parts("T".into(), "".into(), "".into(), "".into());
        let rejected = s.accept_decoded(envelope, 99, 10).unwrap_err();
        assert_eq!(rejected.message_type.as_deref(), Some("T"));
    }

    fn env(sender: &str) -> Envelope {
        Envelope::from_parts("T".into(), sender.into(), "".into(), "".into()).unwrap()
    }

    #[test]
    fn identity_table() {
        let bound = |id: &str| {
            let mut s = Session::new();
            s.bind(PeerId::parse(id).unwrap());
            s
        };
        // (session, sender_id, Ok((claim, rewritten, sender after)) or Err(code))
        type Expect = Result<(Option<&'static str>, bool, &'static str), ErrorCode>;
        let table: Vec<(Session, &str, Expect)> = vec![
            (Session::new(), "a", Ok((Some("a"), false, "a"))),
            (Session::new(), "", Err(ErrorCode::IdentityRequired)),
            (Session::new(), "relay", Err(ErrorCode::ReservedPeerId)),
            (Session::new(), "bad id", Err(ErrorCode::InvalidPeerId)),
            (bound("a"), "a", Ok((None, false, "a"))),
            (bound("a"), "", Ok((None, true, "a"))),
            (bound("a"), "b", Err(ErrorCode::SpoofedSender)),
            (bound("a"), "relay", Err(ErrorCode::SpoofedSender)),
        ];
        for (session, sender, expect) in table {
            let mut e = env(sender);
            let got = session.admit(&mut e);
            match expect {
                Ok((claim, rewritten, after)) => {
                    let got = got.unwrap();
                    assert_eq!(got.claim.as_ref().map(PeerId::as_str), claim, "{sender}");
                    assert_eq!(got.rewritten, rewritten, "{sender}");
                    assert_eq!(e.sender_id, after);
                }
                Err(code) => assert_eq!(got.unwrap_err().code(), code, "{sender}"),
            }
        }
    }
}
