//! What the client reports: the envelopes it receives and what happens to its connection.

use std::time::Duration;

use serde::Deserialize;

use crate::envelope::Envelope;
use crate::error::{DisconnectReason, RelayError};

/// One thing that happened, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The relay welcomed this node (first connection or a reconnect).
    Connected(Welcome),
    /// An envelope from another peer.
    Message(Envelope),
    /// Another peer joined (`PeerJoined`, or one id of a `PeersChanged`, when the relay announces peers).
    PeerJoined(String),
    /// Another peer left (`PeerLeft`, or one id of a `PeersChanged`; a `PeersChanged` gives its leaves first).
    PeerLeft(String),
    /// The relay refused one of this node's envelopes or could not deliver it (an `Error`
    /// envelope); [`RelayError::message_id`] says which. The connection stays open.
    Rejected(RelayError),
    /// A connection ended or an attempt failed.
    Disconnected(Disconnected),
}

/// The relay's `Welcome`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Welcome {
    /// This node's id, as the relay knows it.
    pub peer_id: String,
    /// Other peers connected when this node joined (sorted; at most the relay's
    /// `discovery.welcome_peers_max`: see `peers_truncated`).
    pub peers: Vec<String>,
    /// How many other peers were connected (exact).
    pub peer_count: usize,
    pub peers_truncated: bool,
    /// The whole envelope (its payload also holds the relay's limits and routing rules).
    pub envelope: Envelope,
}

impl Welcome {
    pub(crate) fn from_envelope(envelope: Envelope) -> Welcome {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Wire {
            peer_id: String,
            peers: Vec<String>,
            peer_count: usize,
            peers_truncated: bool,
        }
        let wire: Wire = envelope.payload.deserialize().unwrap_or_default();
        Welcome {
            peer_id: wire.peer_id,
            peers: wire.peers,
            peer_count: wire.peer_count,
            peers_truncated: wire.peers_truncated,
            envelope,
        }
    }
}

/// A connection ended, or a connection attempt failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Disconnected {
    pub reason: DisconnectReason,
    /// Failures in a row since the last `Welcome` (1 when a working connection just ended).
    pub attempt: u32,
    /// When the client tries again. `None`: the client has stopped, and this is its last event.
    pub reconnect_in: Option<Duration>,
    /// Only in the last event: envelopes `send` had accepted that never reached a stream, in
    /// send order, handed back rather than dropped.
    pub unsent: Vec<Envelope>,
}

impl Disconnected {
    /// Whether this is the client's last event.
    pub fn is_final(&self) -> bool {
        self.reconnect_in.is_none()
    }
}

/// Sorts an envelope from the relay itself (`sender_id` `relay`, which no peer may use) into its
/// events; anything else is a message. A `PeersChanged` (joins and leaves the relay announced
/// together) becomes one `PeerLeft` per id it lists as left, then one `PeerJoined` per id it
/// lists as joined, the order in which the relay applies them: a node sees the same events
/// however the relay coalesced them.
pub(crate) fn events_for(envelope: Envelope) -> Vec<Event> {
    if envelope.sender_id != crate::RELAY_ID {
        return vec![Event::Message(envelope)];
    }
    let payload = || envelope.payload.to_value();
    let peer_id = || {
        payload()
            .get("peer_id")
            .and_then(|id| id.as_str().map(str::to_owned))
    };
    let ids = |value: &serde_json::Value, key: &str| -> Option<Vec<String>> {
        value
            .get(key)?
            .as_array()?
            .iter()
            .map(|id| id.as_str().map(str::to_owned))
            .collect()
    };
    let event = match envelope.message_type.as_str() {
        "Error" => Event::Rejected(RelayError::from_payload(&envelope.payload)),
        "PeerJoined" => match peer_id() {
            Some(id) => Event::PeerJoined(id),
            None => Event::Message(envelope),
        },
        "PeerLeft" => match peer_id() {
            Some(id) => Event::PeerLeft(id),
            None => Event::Message(envelope),
        },
        "PeersChanged" => {
            let value = payload();
            return match (ids(&value, "left"), ids(&value, "joined")) {
                (Some(left), Some(joined)) => left
                    .into_iter()
                    .map(Event::PeerLeft)
                    .chain(joined.into_iter().map(Event::PeerJoined))
                    .collect(),
                _ => vec![Event::Message(envelope)],
            };
        }
        _ => Event::Message(envelope),
    };
    vec![event]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from_relay(message_type: &str, payload: serde_json::Value) -> Envelope {
        Envelope {
            sender_id: "relay".into(),
            ..Envelope::new(message_type, payload)
        }
    }

    fn event_for(envelope: Envelope) -> Event {
        let mut events = events_for(envelope);
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    #[test]
    fn coalesced_announcements_become_one_event_per_peer_lefts_first() {
        assert_eq!(
            events_for(from_relay(
                "PeersChanged",
                json!({"left": ["a", "b"], "joined": ["c", "a"]})
            )),
            [
                Event::PeerLeft("a".into()),
                Event::PeerLeft("b".into()),
                Event::PeerJoined("c".into()),
                Event::PeerJoined("a".into()),
            ]
        );
        // Not the relay's shape: handed over as it came, not dropped.
        let odd = from_relay("PeersChanged", json!({"joined": "c"}));
        assert_eq!(events_for(odd.clone()), [Event::Message(odd)]);
    }

    #[test]
    fn relay_envelopes_become_events() {
        assert_eq!(
            event_for(from_relay("PeerJoined", json!({"peer_id": "a"}))),
            Event::PeerJoined("a".into())
        );
        assert_eq!(
            event_for(from_relay("PeerLeft", json!({"peer_id": "a"}))),
            Event::PeerLeft("a".into())
        );
        let Event::Rejected(error) = event_for(from_relay(
            "Error",
            json!({"code": "missing_recipient", "message": "m", "message_id": "x"}),
        )) else {
            panic!("not a rejection")
        };
        assert!(matches!(error, RelayError::MissingRecipient(_)));
        assert_eq!(error.message_id(), Some("x"));
        // A peer's envelope of the same type is just a message.
        let peer = Envelope {
            sender_id: "n1".into(),
            ..Envelope::new("PeerJoined", json!({"peer_id": "a"}))
        };
        assert_eq!(event_for(peer.clone()), Event::Message(peer));
    }

    #[test]
    fn welcome_reads_the_peer_list() {
        let welcome = Welcome::from_envelope(from_relay(
            "Welcome",
            json!({"peer_id": "n1", "peers": ["a", "b"], "peer_count": 2, "peers_truncated": false,
                   "limits": {"max_message_bytes": 1048576}}),
        ));
        assert_eq!(
            (welcome.peer_id.as_str(), welcome.peers, welcome.peer_count),
            ("n1", vec!["a".to_owned(), "b".to_owned()], 2)
        );
    }
}
