//! Presence: who is told of whom, and when. Joins and leaves are coalesced into announcements.
//!
//! Every join and leave of a network is an event in one log, numbered in the order the peer
//! table saw it. Nothing is announced as it happens (unless `discovery.announce_window_ms` is
//! 0): a *flush* announces every event since the last flush at once, so that a mass connect
//! costs one announcement per flush and peer, not one per join and peer.
//!
//! # What each peer is told
//! A peer's knowledge is fixed by its `Welcome` (the table as it was when it joined, whether its
//! `peers` list names everyone or was cut at `welcome_peers_max`) and then by the flushes. At a
//! flush, each peer is told the net effect of the events it has not seen yet: the events after
//! the last flush for a peer that joined before it, the events after its own join for one that
//! joined since. For one id, net of a run of events:
//!
//! - **left** when its first event in the run is a leave (the connection this peer knew of is
//!   gone, whether or not another connection took the id since);
//! - **joined** when its last event in the run is a join (a connection this peer never knew of
//!   holds the id now).
//!
//! So each peer learns of each connection exactly once, by its Welcome or by one announcement;
//! a connection that joined and left within one run is announced to nobody who never saw it, and
//! one that a peer saw in its Welcome is announced to it as left. A peer beyond a cut `Welcome`
//! list is never announced to that newcomer as joined (as before coalescing), but its leaving is.
//!
//! # Envelopes
//! One change is the envelope it always was: `PeerJoined` or `PeerLeft`, `{"peer_id": ...}`.
//! Several are `PeersChanged`, `{"left": [...], "joined": [...]}` (ids sorted; `left` applies
//! before `joined`, so an id in both left and a new connection took it), at most
//! [`IDS_PER_ENVELOPE`] ids each: more go out as several, every left before any joined.
//!
//! # When
//! The core reads no clock. It asks the front for a timer ([`Effect::arm`]) and the front calls
//! back when it fires. A change while no timer runs is announced at once and starts the timer
//! (nothing to coalesce yet); changes while it runs wait for it; when it fires, what waits is
//! announced and the timer starts again, and when it fires with nothing waiting it stops. A
//! peer whose own join still waits is announced before anything it sends is delivered (the
//! caller flushes first, [`Presence::is_pending`]), so nobody hears from a peer before hearing
//! of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::Discovery;
use crate::envelope::{Envelope, Message};
use crate::hub::kinds;
use crate::id::PeerId;

/// A position in the network's event log: 0 before the first event.
pub type Seq = u64;

/// The most ids in one `PeersChanged` envelope: an announcement is never much larger than a
/// `Welcome` with its default `welcome_peers_max` (a connection's write buffer keeps the size of
/// the largest frame written to it).
pub const IDS_PER_ENVELOPE: usize = 100;

/// A join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Joined,
    Left,
}

#[derive(Debug, Clone)]
struct Event {
    seq: Seq,
    id: PeerId,
    change: Change,
}

/// What the front must do after a change (or a timer): flush now, and/or start the timer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Effect {
    /// Announce what waits now, before anything else happens on the table.
    pub flush_now: bool,
    /// Start the network's presence timer: call back after this long.
    pub arm: Option<Duration>,
}

impl Effect {
    /// Both effects: flush if either asks, start the timer if either asks.
    pub fn and(self, other: Effect) -> Effect {
        Effect {
            flush_now: self.flush_now || other.flush_now,
            arm: self.arm.or(other.arm),
        }
    }
}

/// The event log of one network and its timer's state.
#[derive(Debug)]
pub struct Presence {
    /// `discovery.announce_peers`: off, nothing is recorded.
    enabled: bool,
    /// `discovery.announce_window_ms`; zero announces every change at once.
    window: Duration,
    /// The last event's position.
    seq: Seq,
    /// Every event up to this position has been announced.
    flushed: Seq,
    /// The events after `flushed`, in order.
    pending: Vec<Event>,
    /// The front's timer is running (it was asked to start and has not fired empty since).
    armed: bool,
}

/// Announcements of one flush: the ids each peer is told, as envelopes.
pub struct Batch {
    /// Every event of the flush was after this position.
    start: Seq,
    events: Vec<Event>,
}

impl Presence {
    pub fn new(discovery: &Discovery) -> Presence {
        Presence {
            enabled: discovery.announce_peers,
            window: Duration::from_millis(discovery.announce_window_ms),
            seq: 0,
            flushed: 0,
            pending: Vec::new(),
            armed: false,
        }
    }

    /// Records a join or leave of `id`; returns its position and what the front must do.
    pub fn record(&mut self, id: &PeerId, change: Change) -> (Seq, Effect) {
        self.seq += 1;
        if !self.enabled {
            self.flushed = self.seq;
            return (self.seq, Effect::default());
        }
        self.pending.push(Event {
            seq: self.seq,
            id: id.clone(),
            change,
        });
        let effect = if self.window.is_zero() {
            Effect {
                flush_now: true,
                arm: None,
            }
        } else if self.armed {
            Effect::default()
        } else {
            self.armed = true;
            Effect {
                flush_now: true,
                arm: Some(self.window),
            }
        };
        (self.seq, effect)
    }

    /// True when the join at `joined` has not been announced yet.
    pub fn is_pending(&self, joined: Seq) -> bool {
        joined > self.flushed
    }

    /// The front's timer fired: flush what waits and run the timer again, or stop it.
    pub fn timer_fired(&mut self) -> Effect {
        if self.pending.is_empty() {
            self.armed = false;
            return Effect::default();
        }
        Effect {
            flush_now: true,
            arm: Some(self.window),
        }
    }

    /// Takes what waits; `None` when nothing does. Everything recorded is announced by it.
    pub fn take(&mut self) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        let batch = Batch {
            start: self.flushed,
            events: std::mem::take(&mut self.pending),
        };
        self.flushed = self.seq;
        Some(batch)
    }
}

impl Batch {
    /// What a peer that joined at position `joined` is told (see the module's docs): the net
    /// effect of the events it has not seen. Returns `(left, joined)`, each sorted.
    pub fn net_for(&self, joined: Seq) -> (Vec<&PeerId>, Vec<&PeerId>) {
        let from = if joined <= self.start {
            0
        } else {
            self.events.partition_point(|e| e.seq <= joined)
        };
        net(&self.events[from..])
    }

    /// True when a peer that joined at `joined` joined during this batch: it is told only what
    /// happened after its join. Every other peer is told the same, and shares its envelopes.
    pub fn is_newcomer(&self, joined: Seq) -> bool {
        joined > self.start
    }
}

fn net(events: &[Event]) -> (Vec<&PeerId>, Vec<&PeerId>) {
    // id → (first change, last change) in this run.
    let mut by_id: BTreeMap<&PeerId, (Change, Change)> = BTreeMap::new();
    for event in events {
        by_id
            .entry(&event.id)
            .and_modify(|(_, last)| *last = event.change)
            .or_insert((event.change, event.change));
    }
    let mut left = Vec::new();
    let mut joined = Vec::new();
    for (id, (first, last)) in by_id {
        if first == Change::Left {
            left.push(id);
        }
        if last == Change::Joined {
            joined.push(id);
        }
    }
    (left, joined)
}

#[derive(Serialize)]
struct PeerEvent<'a> {
    peer_id: &'a str,
}

#[derive(Serialize)]
struct PeersChanged<'a> {
    left: Vec<&'a str>,
    joined: Vec<&'a str>,
}

/// The envelopes announcing `(left, joined)`, each with an id from `next_id`: none for no
/// change, `PeerJoined`/`PeerLeft` for one, `PeersChanged` for more (split every
/// [`IDS_PER_ENVELOPE`] ids, lefts first).
pub fn envelopes(
    left: &[&PeerId],
    joined: &[&PeerId],
    mut next_id: impl FnMut() -> String,
) -> Vec<Arc<Message>> {
    let mut out = Vec::new();
    let one = |kind: &str, id: &PeerId, message_id: String| {
        Arc::new(Message::new(Envelope::from_relay(
            kind,
            message_id,
            "",
            PeerEvent {
                peer_id: id.as_str(),
            },
        )))
    };
    match (left, joined) {
        ([], []) => return out,
        ([id], []) => return vec![one(kinds::PEER_LEFT, id, next_id())],
        ([], [id]) => return vec![one(kinds::PEER_JOINED, id, next_id())],
        _ => {}
    }
    let all = left.len() + joined.len();
    let mut at = 0;
    while at < all {
        let end = (at + IDS_PER_ENVELOPE).min(all);
        let lefts = &left[at.min(left.len())..end.min(left.len())];
        let joins = &joined[at.saturating_sub(left.len())..end.saturating_sub(left.len())];
        let message = match (lefts, joins) {
            ([id], []) => one(kinds::PEER_LEFT, id, next_id()),
            ([], [id]) => one(kinds::PEER_JOINED, id, next_id()),
            _ => Arc::new(Message::new(Envelope::from_relay(
                kinds::PEERS_CHANGED,
                next_id(),
                "",
                PeersChanged {
                    left: lefts.iter().map(|id| id.as_str()).collect(),
                    joined: joins.iter().map(|id| id.as_str()).collect(),
                },
            ))),
        };
        out.push(message);
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(prefix: &str, n: usize) -> Vec<PeerId> {
        (0..n)
            .map(|i| PeerId::parse(&format!("{prefix}{i:03}")).unwrap())
            .collect()
    }

    /// (type, left, joined) of each envelope.
    fn shapes(messages: &[Arc<Message>]) -> Vec<(String, usize, usize)> {
        messages
            .iter()
            .map(|m| {
                let e = m.envelope();
                let p: serde_json::Value = serde_json::from_str(e.payload.get()).unwrap();
                let count = |key: &str| p[key].as_array().map_or(0, Vec::len);
                assert_eq!(e.sender_id, "relay");
                (e.message_type.to_string(), count("left"), count("joined"))
            })
            .collect()
    }

    #[test]
    fn one_change_keeps_its_old_shape_and_many_are_split_lefts_first() {
        let (left, joined) = (ids("l", 150), ids("j", 60));
        let (left, joined): (Vec<&PeerId>, Vec<&PeerId>) =
            (left.iter().collect(), joined.iter().collect());
        let mut n = 0;
        let mut next_id = || {
            n += 1;
            format!("m{n}")
        };
        let got = |l: &[&PeerId], j: &[&PeerId], next_id: &mut dyn FnMut() -> String| {
            shapes(&envelopes(l, j, next_id))
        };
        assert!(got(&[], &[], &mut next_id).is_empty());
        assert_eq!(
            got(&left[..1], &[], &mut next_id),
            [("PeerLeft".into(), 0, 0)]
        );
        assert_eq!(
            got(&[], &joined[..1], &mut next_id),
            [("PeerJoined".into(), 0, 0)]
        );
        assert_eq!(
            got(&left[..1], &joined[..1], &mut next_id),
            [("PeersChanged".into(), 1, 1)]
        );
        // 210 ids: 100 lefts, then 50 lefts and 50 joins, then 10 joins.
        assert_eq!(
            got(&left, &joined, &mut next_id),
            [
                ("PeersChanged".into(), 100, 0),
                ("PeersChanged".into(), 50, 50),
                ("PeersChanged".into(), 0, 10)
            ]
        );
        // A last piece of one id is in the old shape.
        assert_eq!(
            got(&left[..101], &[], &mut next_id),
            [("PeersChanged".into(), 100, 0), ("PeerLeft".into(), 0, 0)]
        );
    }
}
