//! The identity of one connection.
//!
//! A connection's peer id is fixed once: by the front before any envelope (`?node_id=` on the
//! WebSocket URL, `x-gsio-node-id` gRPC metadata), or else by the `sender_id` of its first
//! envelope. After that, an envelope naming another sender is refused as spoofed, and an empty
//! `sender_id` is filled in with the connection's id.

use crate::envelope::Envelope;
use crate::error::RelayError;
use crate::id::PeerId;

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
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    pub fn id(&self) -> Option<&PeerId> {
        self.id.as_ref()
    }

    pub fn bind(&mut self, id: PeerId) {
        debug_assert!(self.id.is_none(), "a session's id is fixed once");
        self.id = Some(id);
    }

    /// Checks `envelope.sender_id` against this connection's identity, filling it in when
    /// empty.
    pub fn admit(&self, envelope: &mut Envelope) -> Result<Admitted, RelayError> {
        match &self.id {
            Some(id) if envelope.sender_id.is_empty() => {
                envelope.sender_id = id.as_str().to_owned();
                Ok(Admitted {
                    claim: None,
                    rewritten: true,
                })
            }
            Some(id) if envelope.sender_id == id.as_str() => Ok(Admitted {
                claim: None,
                rewritten: false,
            }),
            Some(id) => Err(RelayError::SpoofedSender {
                claimed: crate::id::truncate_for_display(&envelope.sender_id),
                actual: id.to_string(),
            }),
            None if envelope.sender_id.is_empty() => Err(RelayError::IdentityRequired),
            None => Ok(Admitted {
                claim: Some(PeerId::parse(&envelope.sender_id)?),
                rewritten: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

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
