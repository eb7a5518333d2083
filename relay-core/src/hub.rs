//! The peer table and the routing decision.
//!
//! A [`Hub`] maps each connected [`PeerId`] to the front's handle for that peer (`P`: a queue
//! sender natively, a socket in the Worker). [`Hub::route`] applies the `relay.toml` rules to one
//! message and returns the [`Targets`] to deliver it to; it never delivers anything itself. The
//! hub also writes the relay's own envelopes (`Welcome`, `Error`, `ConfigChanged`), keeps the
//! network's [`Presence`] log, from which joins and leaves are announced
//! ([`Hub::flush_presence`]), and holds the rules in force, which a reload swaps whole
//! ([`Hub::set_config`]).
//!
//! Concurrency is the front's business: the native server keeps the hub behind a lock that is
//! taken for writing only on join and leave, and for reading to route.

use std::collections::hash_map::{self, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::cluster::{Arrival, Claim, Forward, RelayRef, Remote, RemoteJoin, RemotePeer, Uplink};
use crate::config::{Mode, RelayConfig};
use crate::envelope::{Envelope, Message};
use crate::error::RelayError;
use crate::id::PeerId;
use crate::ids::{IdBlock, MessageIds};
use crate::presence::{self, Change, Effect, Presence, Seq};

/// Names one connection, so that a peer leaving cannot remove a newer connection that reuses
/// its id.
pub type ConnId = u64;

/// The `message_type`s the relay itself sends.
pub mod kinds {
    pub const WELCOME: &str = "Welcome";
    pub const ERROR: &str = "Error";
    pub const PEER_JOINED: &str = "PeerJoined";
    pub const PEER_LEFT: &str = "PeerLeft";
    pub const PEERS_CHANGED: &str = "PeersChanged";
    /// To every connected peer when a reload changes what `Welcome` announced (`limits`,
    /// `routing`).
    pub const CONFIG_CHANGED: &str = "ConfigChanged";
}

/// A limit of relay.toml as it is now (`limits.max_message_bytes`, the native relay's
/// `limits.queue_capacity`), shared by whoever checks against it: each reads it on every check,
/// so a reload reaches the next check without a lock (a relaxed load; the value is a bound, not a
/// synchronisation).
#[derive(Debug)]
pub struct LiveLimit(AtomicUsize);

impl LiveLimit {
    pub fn new(value: usize) -> Arc<LiveLimit> {
        Arc::new(LiveLimit(AtomicUsize::new(value)))
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, value: usize) {
        self.0.store(value, Ordering::Relaxed);
    }
}

struct Entry<P> {
    conn: ConnId,
    peer: P,
    /// The position of this connection's join in the presence log: what it knows of (its
    /// Welcome) and whether its join is announced yet. 0 for a restored peer.
    joined: Seq,
}

/// The connected peers of one network and the rules they are routed by.
pub struct Hub<P> {
    /// The rules and limits in force; one value, so a reload can swap it whole.
    config: Arc<RelayConfig>,
    /// `config.limits.max_message_bytes`, readable by connections without the table's lock.
    message_limit: Arc<LiveLimit>,
    peers: HashMap<PeerId, Entry<P>>,
    /// Where messages without a sender-given id, and the relay's own, get theirs.
    ids: MessageIds,
    /// Joins and leaves not yet announced, and the announcement timer's state.
    presence: Presence,
    /// The peers on the other relays of a cluster and the way to them ([`crate::cluster`]);
    /// `None` for a relay on its own (the Worker, a native relay without `[cluster]`).
    remote: Option<Remote>,
}

/// What a successful join produces.
#[derive(Debug)]
pub struct Joined {
    /// For the newcomer, first thing after its identity is known.
    pub welcome: Arc<Message>,
    /// What the join asks of the caller: announce now ([`Hub::flush_presence`]) and/or start the
    /// presence timer.
    pub presence: Effect,
}

impl<P> Hub<P> {
    /// An empty network under `config`; `id_seed` (128 random bits from the front, which has a
    /// source of randomness) keys the message ids this hub assigns.
    pub fn new(config: Arc<RelayConfig>, id_seed: u128) -> Hub<P> {
        let message_limit = LiveLimit::new(config.limits.max_message_bytes);
        Hub {
            presence: Presence::new(&config.discovery),
            config,
            message_limit,
            peers: HashMap::new(),
            ids: MessageIds::new(id_seed),
            remote: None,
        }
    }

    /// Makes this hub one relay of a cluster: ids are claimed network-wide, and what is routed
    /// to peers elsewhere goes to `uplink` (see [`crate::cluster`]).
    pub fn set_uplink(&mut self, uplink: Arc<dyn Uplink>) {
        self.remote = Some(Remote::new(uplink));
    }

    pub fn is_clustered(&self) -> bool {
        self.remote.is_some()
    }

    pub(crate) fn uplink(&self) -> Option<&Arc<dyn Uplink>> {
        self.remote.as_ref().map(|r| &r.uplink)
    }

    /// The peers on other relays, with where they are.
    pub fn remote_peers(&self) -> impl Iterator<Item = (&PeerId, &RemotePeer)> {
        self.remote.iter().flat_map(|r| r.peers.iter())
    }

    /// Where the peer `id` is connected, if on another relay.
    pub fn remote_peer(&self, id: &str) -> Option<&RemotePeer> {
        self.remote.as_ref().and_then(|r| r.peers.get(id))
    }

    /// Peers connected anywhere in the network: here, and (clustered) on the other relays.
    pub fn network_len(&self) -> usize {
        self.peers.len() + self.remote_only().count()
    }

    /// Remote peers whose id no connection here holds (while the bus settles a displaced
    /// claim, both can exist for a moment; the local one is on its way out).
    fn remote_only(&self) -> impl Iterator<Item = &PeerId> {
        self.remote_peers()
            .map(|(id, _)| id)
            .filter(|id| !self.peers.contains_key(*id))
    }

    /// Holds `id` for a local connection while the bus is asked for it: refused if a peer
    /// here or elsewhere holds it, or another connection here is asking for it.
    pub(crate) fn reserve(&mut self, id: &PeerId) -> Result<(), RelayError> {
        let taken = self.peers.contains_key(id);
        let Some(remote) = self.remote.as_mut() else {
            return Ok(());
        };
        if taken || remote.peers.contains_key(id) || !remote.reserving.insert(id.clone()) {
            return Err(RelayError::PeerIdInUse(id.to_string()));
        }
        Ok(())
    }

    pub(crate) fn cancel_reservation(&mut self, id: &PeerId) {
        if let Some(remote) = self.remote.as_mut() {
            remote.reserving.remove(id);
        }
    }

    /// See [`crate::cluster::remote_joined`].
    pub(crate) fn remote_joined(
        &mut self,
        id: PeerId,
        relay: RelayRef,
        claim: Claim,
    ) -> (RemoteJoin, Effect) {
        let here = self.peers.contains_key(&id);
        let Some(remote) = self.remote.as_mut() else {
            return (RemoteJoin::Known, Effect::default());
        };
        if remote.is_departed(id.as_str(), claim) {
            return (RemoteJoin::Known, Effect::default());
        }
        match remote.peers.get_mut(&id) {
            Some(known) if known.claim >= claim => return (RemoteJoin::Known, Effect::default()),
            // The same relay asserted the claim anew (it had been made while the bus was
            // unreachable): the same connection, nothing to announce.
            Some(known) if known.relay == relay => {
                known.claim = claim;
                return (RemoteJoin::Known, Effect::default());
            }
            Some(known) => {
                // The id moved to another relay: its old claim ended.
                let old = known.claim;
                let (_, left) = self.presence.record(&id, Change::Left);
                let (joined, effect) = self.presence.record(&id, Change::Joined);
                *known = RemotePeer {
                    relay,
                    claim,
                    joined,
                };
                remote.depart(&id, old);
                return (RemoteJoin::Joined, left.and(effect));
            }
            None => {}
        }
        let (outcome, joined, effect) = if here {
            // Announced when the local peer it displaces leaves (see `leave`).
            (RemoteJoin::Displaces, 0, Effect::default())
        } else {
            let (joined, effect) = self.presence.record(&id, Change::Joined);
            (RemoteJoin::Joined, joined, effect)
        };
        remote.peers.insert(
            id,
            RemotePeer {
                relay,
                claim,
                joined,
            },
        );
        (outcome, effect)
    }

    /// See [`crate::cluster::new_epoch`].
    pub(crate) fn new_epoch(&mut self) {
        if let Some(remote) = self.remote.as_mut() {
            remote.new_epoch();
        }
    }

    /// True when the remote peer `id` joined and its join is not announced yet: announce it
    /// before delivering anything it sends.
    pub(crate) fn remote_join_pending(&self, id: &str) -> bool {
        self.remote_peer(id)
            .is_some_and(|peer| self.presence.is_pending(peer.joined))
    }

    /// See [`crate::cluster::remote_left`].
    pub(crate) fn remote_left(&mut self, id: &PeerId, at: Claim) -> Effect {
        let here = self.peers.contains_key(id);
        let Some(remote) = self.remote.as_mut() else {
            return Effect::default();
        };
        remote.depart(id, at);
        match remote.peers.get(id) {
            Some(known) if known.claim < at => {
                remote.peers.remove(id);
                if here {
                    return Effect::default();
                }
                self.presence.record(id, Change::Left).1
            }
            _ => Effect::default(),
        }
    }

    /// See [`crate::cluster::relay_gone`].
    pub(crate) fn forget_relay(&mut self, relay: &RelayRef) -> (Vec<(PeerId, Claim)>, Effect) {
        let Some(remote) = self.remote.as_mut() else {
            return (Vec::new(), Effect::default());
        };
        let gone: Vec<(PeerId, Claim)> = remote
            .peers
            .iter()
            .filter(|(_, peer)| peer.relay == *relay)
            .map(|(id, peer)| (id.clone(), peer.claim))
            .collect();
        let mut effect = Effect::default();
        for (id, claim) in &gone {
            remote.peers.remove(id);
            remote.depart(id, *claim);
            if !self.peers.contains_key(id) {
                effect = effect.and(self.presence.record(id, Change::Left).1);
            }
        }
        (gone, effect)
    }

    /// What is known of `sender`'s `claim` (see [`crate::cluster`], "Claims order what
    /// crosses").
    pub(crate) fn arrival(&self, sender: &str, claim: Claim) -> Arrival {
        let Some(remote) = self.remote.as_ref() else {
            return Arrival::Stale;
        };
        if self.peers.contains_key(sender) || remote.is_departed(sender, claim) {
            return Arrival::Stale;
        }
        match remote.peers.get(sender) {
            Some(known) if known.claim == claim => Arrival::Known,
            Some(known) if known.claim > claim => Arrival::Stale,
            _ => Arrival::New,
        }
    }

    /// A fresh message id (UUID v4 text), unique for this hub's life.
    pub fn next_message_id(&self) -> String {
        self.ids.next_id()
    }

    /// A fresh message id from a connection's own block of ids (see [`IdBlock`]).
    pub fn next_message_id_in(&self, block: &mut IdBlock) -> String {
        self.ids.next_in(block)
    }

    pub fn config(&self) -> &Arc<RelayConfig> {
        &self.config
    }

    /// The live `limits.max_message_bytes`, for a connection to check envelopes against.
    pub fn message_limit(&self) -> Arc<LiveLimit> {
        self.message_limit.clone()
    }

    /// Puts `config` in force: the next envelope routed, the next Welcome and the next size check
    /// follow it. Returns the `ConfigChanged` notice for every connected peer when what a
    /// `Welcome` announces (`limits`, `routing`) changed, and `None` when it did not (a change of
    /// keys peers are not told about, or no change).
    pub fn set_config(&mut self, config: Arc<RelayConfig>) -> Option<Arc<Message>> {
        let old = std::mem::replace(&mut self.config, config);
        self.message_limit.set(self.config.limits.max_message_bytes);
        if AnnouncedLimits::of(&old) == AnnouncedLimits::of(&self.config)
            && old.routing == self.config.routing
        {
            return None;
        }
        Some(Arc::new(Message::new(Envelope::from_relay(
            kinds::CONFIG_CHANGED,
            self.next_message_id(),
            "",
            Announced::of(&self.config),
        ))))
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&P> {
        self.peers.get(id).map(|e| &e.peer)
    }

    fn entry(&self, id: &str) -> Option<(&PeerId, &P)> {
        self.peers.get_key_value(id).map(|(id, e)| (id, &e.peer))
    }

    pub fn peers(&self) -> impl Iterator<Item = (&PeerId, &P)> {
        self.peers.iter().map(|(id, e)| (id, &e.peer))
    }

    /// Adds a peer. A second live connection claiming an id in use is refused
    /// ([`RelayError::PeerIdInUse`]); the first keeps it.
    pub fn join(&mut self, id: PeerId, conn: ConnId, peer: P) -> Result<Joined, RelayError> {
        let remote = self.remote.as_ref();
        if self.peers.contains_key(&id) || remote.is_some_and(|r| r.peers.contains_key(&id)) {
            return Err(RelayError::PeerIdInUse(id.to_string()));
        }
        let (joined, presence) = self.presence.record(&id, Change::Joined);
        self.peers.insert(id.clone(), Entry { conn, peer, joined });
        let welcome = Arc::new(Message::new(self.welcome(&id)));
        Ok(Joined { welcome, presence })
    }

    /// Re-registers a peer that is already connected, known from somewhere other than this hub
    /// (the Worker rebuilds its hub from socket attachments after hibernation). No Welcome, no
    /// announcement. Returns false, changing nothing, if the id is taken.
    pub fn restore(&mut self, id: PeerId, conn: ConnId, peer: P) -> bool {
        match self.peers.entry(id) {
            hash_map::Entry::Vacant(slot) => {
                slot.insert(Entry {
                    conn,
                    peer,
                    joined: 0,
                });
                true
            }
            hash_map::Entry::Occupied(_) => false,
        }
    }

    /// Removes the peer if `conn` is still the connection holding its id. Returns its handle and
    /// what the leave asks of the caller (see [`Joined::presence`]).
    pub fn leave(&mut self, id: &PeerId, conn: ConnId) -> Option<(P, Effect)> {
        match self.peers.get(id) {
            Some(entry) if entry.conn == conn => {}
            _ => return None,
        }
        let entry = self.peers.remove(id)?;
        let (_, mut presence) = self.presence.record(id, Change::Left);
        if self
            .remote
            .as_ref()
            .is_some_and(|r| r.peers.contains_key(id))
        {
            // It was displaced by a claim on another relay (see `remote_joined`), which holds
            // the id now: that peer is announced as it takes over.
            presence = presence.and(self.presence.record(id, Change::Joined).1);
        }
        Some((entry.peer, presence))
    }

    /// True when `conn`, holding `id`, joined and its join is not announced yet: announce it
    /// ([`Hub::flush_presence`]) before delivering anything it sends.
    pub fn join_pending(&self, id: &str, conn: ConnId) -> bool {
        self.peers
            .get(id)
            .is_some_and(|entry| entry.conn == conn && self.presence.is_pending(entry.joined))
    }

    /// Announces every join and leave not announced yet, handing each peer's envelopes to
    /// `deliver` (see [`crate::presence`] for who is told what). Peers that were there before
    /// the first of them share one set of envelopes; each peer that joined since gets its own.
    pub fn flush_presence(&mut self, mut deliver: impl FnMut(&PeerId, &P, &Arc<Message>)) {
        let Some(batch) = self.presence.take() else {
            return;
        };
        let ids = &self.ids;
        let (left, joined) = batch.net_for(0);
        let shared = presence::envelopes(&left, &joined, || ids.next_id());
        for (id, entry) in &self.peers {
            if batch.is_newcomer(entry.joined) {
                let (left, joined) = batch.net_for(entry.joined);
                for message in presence::envelopes(&left, &joined, || ids.next_id()) {
                    deliver(id, &entry.peer, &message);
                }
            } else {
                for message in &shared {
                    deliver(id, &entry.peer, message);
                }
            }
        }
    }

    /// The front's presence timer fired; see [`Presence::timer_fired`].
    pub fn presence_timer_fired(&mut self) -> Effect {
        self.presence.timer_fired()
    }

    /// Every peer but `id`.
    pub fn others<'h>(&'h self, id: &'h PeerId) -> Targets<'h, P> {
        Targets(Selection::AllExcept {
            peers: self.peers.iter(),
            except: id,
        })
    }

    /// Decides who receives `message`, sent by the connected peer `sender`, under the rules in
    /// force. An error is for the sender only; nothing else receives the message then.
    pub fn route<'h>(
        &'h self,
        sender: &'h PeerId,
        message: &Message,
    ) -> Result<Targets<'h, P>, RelayError> {
        self.route_by_rule(sender, message)
            .map(|(_, targets, _)| targets)
    }

    /// [`Hub::route`], also saying which rule decided and how the message travels ([`Route`]),
    /// for the front's metrics, and where else it goes in a cluster ([`Forward`]): the same
    /// single lookup of the rules.
    pub fn route_by_rule<'h>(
        &'h self,
        sender: &'h PeerId,
        message: &Message,
    ) -> Result<(Route<'h>, Targets<'h, P>, Forward<'h>), RelayError> {
        let envelope = message.envelope();
        let (rule, mode) = self.config.routing.rule_for(&envelope.message_type);
        let route = |mode| Route { rule, mode };
        let everywhere = if self.remote.is_some() {
            Forward::Everywhere
        } else {
            Forward::Nowhere
        };
        match mode {
            Mode::Echo => Ok((
                route(RouteMode::Echo),
                Targets::one(self.entry(sender.as_str())),
                Forward::Nowhere,
            )),
            Mode::Broadcast => Ok((route(RouteMode::Broadcast), self.others(sender), everywhere)),
            Mode::Auto if envelope.recipient_id.is_empty() => {
                Ok((route(RouteMode::Broadcast), self.others(sender), everywhere))
            }
            Mode::Directed | Mode::Auto => {
                let to: &str = &envelope.recipient_id;
                if to.is_empty() {
                    return Err(RelayError::MissingRecipient(
                        envelope.message_type.to_string(),
                    ));
                }
                if let Some(peer) = self.entry(to) {
                    return Ok((
                        route(RouteMode::Directed),
                        Targets::one(Some(peer)),
                        Forward::Nowhere,
                    ));
                }
                match self.remote.as_ref().and_then(|r| r.peers.get(to)) {
                    Some(remote) => Ok((
                        route(RouteMode::Directed),
                        Targets::one(None),
                        Forward::To(&remote.relay),
                    )),
                    None => Err(RelayError::UnknownRecipient(
                        crate::id::truncate_for_display(to),
                    )),
                }
            }
        }
    }

    fn welcome(&self, id: &PeerId) -> Envelope {
        let max = self.config.discovery.welcome_peers_max;
        let mut peers: Vec<&str> = self
            .peers
            .keys()
            .chain(self.remote_only())
            .filter(|p| *p != id)
            .map(PeerId::as_str)
            .take(max)
            .collect();
        peers.sort_unstable();
        let peer_count = self.network_len() - 1;
        Envelope::from_relay(
            kinds::WELCOME,
            self.next_message_id(),
            id.as_str(),
            Welcome {
                peer_id: id.as_str(),
                peers,
                peer_count,
                peers_truncated: peer_count > max,
                announced: Announced::of(&self.config),
            },
        )
    }
}

/// How one routed message travelled, and by which rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'c> {
    /// The `[routing.rules]` key that decided (the `message_type` itself), or `None` for a type
    /// the rules do not name (routed by the default). Borrowed from the config, so a label made
    /// from it is one the operator chose, never one the network did.
    pub rule: Option<&'c str>,
    /// How it travelled (`auto` resolved to `directed` or `broadcast`).
    pub mode: RouteMode,
}

/// How a routed message travelled: a [`Mode`] with `auto` resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteMode {
    Echo,
    Broadcast,
    Directed,
}

impl RouteMode {
    pub const ALL: [RouteMode; 3] = [RouteMode::Echo, RouteMode::Broadcast, RouteMode::Directed];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Echo => "echo",
            RouteMode::Broadcast => "broadcast",
            RouteMode::Directed => "directed",
        }
    }
}

/// What is known of the envelope an `Error` answers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Offending<'a> {
    pub message_type: Option<&'a str>,
    /// Its `message_id`, so that the sender can match the error to what it sent.
    pub message_id: Option<&'a str>,
}

impl<'a> Offending<'a> {
    /// An envelope that was parsed: its type and id are known.
    pub fn of(envelope: &'a Envelope) -> Offending<'a> {
        Offending {
            message_type: Some(&envelope.message_type),
            message_id: Some(&envelope.message_id),
        }
    }
}

/// The `Error` envelope (with the id `message_id`) answering `error`, for the peer `recipient`
/// (empty while the connection has no id). The payload names the offending envelope's type and
/// id, when they are known.
pub fn error_message(
    message_id: String,
    recipient: &str,
    error: &RelayError,
    offending: Offending<'_>,
) -> Message {
    #[derive(Serialize)]
    struct ErrorPayload<'a> {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_type: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<&'a str>,
    }
    Message::new(Envelope::from_relay(
        kinds::ERROR,
        message_id,
        recipient,
        ErrorPayload {
            code: error.code().as_str(),
            message: error.to_string(),
            message_type: offending.message_type,
            message_id: offending.message_id.filter(|id| !id.is_empty()),
        },
    ))
}

#[derive(Serialize)]
struct Welcome<'a> {
    peer_id: &'a str,
    /// Ids of the other peers connected now, sorted, at most `welcome_peers_max` of them.
    peers: Vec<&'a str>,
    peer_count: usize,
    peers_truncated: bool,
    #[serde(flatten)]
    announced: Announced<'a>,
}

/// What peers are told of the rules in force: in their `Welcome`, and again in a
/// `ConfigChanged` whenever a reload changes it (the whole of `ConfigChanged`'s payload).
#[derive(Serialize, PartialEq)]
struct Announced<'a> {
    limits: AnnouncedLimits,
    routing: &'a crate::config::Routing,
}

impl<'a> Announced<'a> {
    fn of(config: &'a RelayConfig) -> Announced<'a> {
        Announced {
            limits: AnnouncedLimits::of(config),
            routing: &config.routing,
        }
    }
}

/// The limits a client needs to know: what it may send, and how often the relay pings it (so
/// that it can tell a dead relay from a quiet one). The per-address limits and the other
/// deadlines are not announced: a connected client has already met them.
#[derive(Serialize, PartialEq)]
struct AnnouncedLimits {
    max_message_bytes: usize,
    queue_capacity: usize,
    /// The sender's rate limits (0: none), so a client can pace itself instead of being refused.
    messages_per_second: u32,
    message_burst: u32,
    bytes_per_second: u64,
    byte_burst: u64,
    /// 0: the relay sends no pings (the Worker).
    ping_interval_ms: u64,
    pong_timeout_ms: u64,
}

impl AnnouncedLimits {
    fn of(config: &RelayConfig) -> AnnouncedLimits {
        AnnouncedLimits {
            max_message_bytes: config.limits.max_message_bytes,
            queue_capacity: config.limits.queue_capacity,
            ping_interval_ms: config.limits.ping_interval_ms,
            pong_timeout_ms: config.limits.pong_timeout_ms,
            messages_per_second: config.limits.messages_per_second,
            message_burst: config.limits.message_burst,
            bytes_per_second: config.limits.bytes_per_second,
            byte_burst: config.limits.byte_burst,
        }
    }
}

/// The peers one message goes to. Iterating yields each peer's id and handle once.
pub struct Targets<'h, P>(Selection<'h, P>);

enum Selection<'h, P> {
    One(Option<(&'h PeerId, &'h P)>),
    AllExcept {
        peers: hash_map::Iter<'h, PeerId, Entry<P>>,
        except: &'h PeerId,
    },
}

impl<'h, P> Targets<'h, P> {
    fn one(peer: Option<(&'h PeerId, &'h P)>) -> Self {
        Targets(Selection::One(peer))
    }
}

impl<'h, P> Iterator for Targets<'h, P> {
    type Item = (&'h PeerId, &'h P);

    fn next(&mut self) -> Option<(&'h PeerId, &'h P)> {
        match &mut self.0 {
            Selection::One(one) => one.take(),
            Selection::AllExcept { peers, except } => peers
                .find(|(id, _)| *id != *except)
                .map(|(id, entry)| (id, &entry.peer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::Value;

    fn hub(toml: &str) -> Hub<&'static str> {
        let config = RelayConfig::from_toml_str(toml, "test").unwrap();
        Hub::new(Arc::new(config), 7)
    }

    fn id(s: &str) -> PeerId {
        PeerId::parse(s).unwrap()
    }

    fn payload(m: &Message) -> Value {
        serde_json::from_str(m.envelope().payload.get()).unwrap()
    }

    const RULES: &str = r#"
        [routing]
        default = "broadcast"
        [routing.rules]
        Ping = "echo"
        LedgerSync = "directed"
    "#;

    #[test]
    fn routing_table() {
        let mut h = hub(RULES);
        for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
            h.join(id(name), n as u64, name).unwrap();
        }
        // (message_type, recipient, expected targets or error)
        type Row<'a> = (&'a str, &'a str, Result<&'a [&'a str], ErrorCode>);
        let table: &[Row] = &[
            ("Ping", "", Ok(&["a"])),
            ("Ping", "b", Ok(&["a"])),
            ("NodeAnnounce", "", Ok(&["b", "c"])),
            ("NodeAnnounce", "b", Ok(&["b", "c"])),
            ("LedgerSync", "c", Ok(&["c"])),
            ("LedgerSync", "a", Ok(&["a"])),
            ("LedgerSync", "", Err(ErrorCode::MissingRecipient)),
            ("LedgerSync", "zed", Err(ErrorCode::UnknownRecipient)),
        ];
        let sender = id("a");
        for (ty, to, expect) in table {
            let env =
                Envelope::from_parts((*ty).into(), "a".into(), (*to).into(), "1".into()).unwrap();
            let got = h
                .route(&sender, &Message::new(env))
                .map(|t| {
                    let mut v: Vec<&str> = t.map(|(_, p)| *p).collect();
                    v.sort();
                    v
                })
                .map_err(|e| e.code());
            assert_eq!(got, expect.map(<[&str]>::to_vec), "{ty} to {to:?}");
        }
    }

    #[test]
    fn routes_name_their_rule_and_resolved_mode() {
        let mut h = hub("[routing.rules]\nPing = \"echo\"\nAsk = \"auto\"\nSync = \"directed\"\n");
        h.join(id("a"), 1, "a").unwrap();
        h.join(id("b"), 2, "b").unwrap();
        let table = [
            ("Ping", "", Some("Ping"), RouteMode::Echo),
            ("Ask", "", Some("Ask"), RouteMode::Broadcast),
            ("Ask", "b", Some("Ask"), RouteMode::Directed),
            ("Sync", "b", Some("Sync"), RouteMode::Directed),
            ("Anything", "", None, RouteMode::Broadcast),
        ];
        let a = id("a");
        for (ty, to, rule, mode) in table {
            let env = Envelope::from_parts(ty.into(), "a".into(), to.into(), "1".into()).unwrap();
            let (route, _, _) = h.route_by_rule(&a, &Message::new(env)).unwrap();
            assert_eq!(route, Route { rule, mode }, "{ty} to {to:?}");
        }
    }

    #[test]
    fn broadcast_alone_reaches_nobody() {
        let mut h = hub("");
        h.join(id("a"), 1, "a").unwrap();
        let env = Envelope::from_parts("X".into(), "a".into(), "".into(), "".into()).unwrap();
        assert_eq!(h.route(&id("a"), &Message::new(env)).unwrap().count(), 0);
    }

    #[test]
    fn second_claim_of_a_live_id_is_refused_and_first_keeps_it() {
        let mut h = hub("");
        h.join(id("a"), 1, "first").unwrap();
        let err = h.join(id("a"), 2, "second").unwrap_err();
        assert_eq!(err.code(), ErrorCode::PeerIdInUse);
        assert_eq!(h.get("a"), Some(&"first"));
        // The refused connection leaving must not remove the first.
        assert!(h.leave(&id("a"), 2).is_none());
        assert_eq!(h.get("a"), Some(&"first"));
        assert!(h.leave(&id("a"), 1).is_some());
        assert!(h.is_empty());
        h.join(id("a"), 3, "again").unwrap();
    }

    #[test]
    fn restore_is_silent_and_respects_taken_ids() {
        let mut h = hub("");
        assert!(h.restore(id("a"), 1, "a"));
        assert!(!h.restore(id("a"), 2, "imposter"));
        // Still the first connection's: the refused one cannot remove it.
        assert_eq!(h.get("a"), Some(&"a"));
        assert!(h.leave(&id("a"), 2).is_none());
        // A restored peer is a full member: it is routed to and leaves normally.
        h.join(id("b"), 3, "b").unwrap();
        let b = id("b");
        assert_eq!(h.others(&b).map(|(_, p)| *p).collect::<Vec<_>>(), ["a"]);
        assert!(h.leave(&id("a"), 1).is_some());
    }

    #[test]
    fn welcome_lists_peers_and_limits() {
        let mut h = hub("[limits]\nqueue_capacity = 7\n[discovery]\nwelcome_peers_max = 2\n");
        for (n, name) in ["c", "b", "a"].into_iter().enumerate() {
            h.join(id(name), n as u64, name).unwrap();
        }
        let joined = h.join(id("d"), 9, "d").unwrap();
        let w = joined.welcome.envelope();
        assert_eq!(
            (&*w.message_type, &*w.sender_id, &*w.recipient_id),
            ("Welcome", "relay", "d")
        );
        let p = payload(&joined.welcome);
        assert_eq!(p["peer_id"], "d");
        assert_eq!(p["peer_count"], 3);
        assert_eq!(p["peers"].as_array().unwrap().len(), 2);
        assert_eq!(p["peers_truncated"], true);
        assert_eq!(p["limits"]["queue_capacity"], 7);
        assert_eq!(p["limits"]["max_message_bytes"], 1 << 20);
        // The sender's rates, so a client can pace itself.
        assert_eq!(p["limits"]["messages_per_second"], 10_000);
        assert_eq!(p["limits"]["message_burst"], 20_000);
        assert_eq!(p["limits"]["bytes_per_second"], 64 << 20);
        assert_eq!(p["limits"]["byte_burst"], 128 << 20);
        assert_eq!(p["limits"]["ping_interval_ms"], 20_000);
        assert_eq!(p["limits"]["pong_timeout_ms"], 10_000);
        assert_eq!(p["limits"].as_object().unwrap().len(), 8);
        assert_eq!(p["routing"]["default"], "broadcast");
    }

    /// A reload's notice carries exactly the Welcome's `limits` and `routing`, and is made only
    /// when they changed.
    #[test]
    fn set_config_announces_only_a_changed_welcome_block() {
        let mut h = hub(RULES);
        h.join(id("a"), 1, "a").unwrap();
        let config = |toml: &str| Arc::new(RelayConfig::from_toml_str(toml, "t").unwrap());
        // (new relay.toml, whether peers are told)
        let table: &[(&str, bool)] = &[
            (RULES, false),
            ("[server]\nshutdown_grace_ms = 1\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"echo\"\nLedgerSync = \"directed\"\n", false),
            ("[discovery]\nannounce_peers = false\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"echo\"\nLedgerSync = \"directed\"\n", false),
            // The native front's memory bounds are not announced.
            ("[limits]\nanonymous_message_bytes = 1000\npartial_messages_budget_bytes = 2000000\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"echo\"\nLedgerSync = \"directed\"\n", false),
            ("[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"broadcast\"\n", true),
            ("[limits]\nqueue_capacity = 9\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"broadcast\"\n", true),
            ("[limits]\nqueue_capacity = 9\nmax_message_bytes = 300\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"broadcast\"\n", true),
            // Limits a client is not told of change nothing it was told.
            ("[limits]\nqueue_capacity = 9\nmax_message_bytes = 300\nmax_connections_per_ip = 3\nhandshake_timeout_ms = 500\ngrpc_max_concurrent_streams = 5\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"broadcast\"\n", false),
            ("[limits]\nqueue_capacity = 9\nmax_message_bytes = 300\nping_interval_ms = 500\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"broadcast\"\n", true),
            ("[limits]\nqueue_capacity = 9\nmax_message_bytes = 300\nping_interval_ms = 500\npong_timeout_ms = 700\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"broadcast\"\n", true),
        ];
        for (toml, told) in table {
            let new = config(toml);
            let notice = h.set_config(new.clone());
            assert_eq!(notice.is_some(), *told, "{toml}");
            assert_eq!(h.config(), &new);
            assert_eq!(h.message_limit().get(), new.limits.max_message_bytes);
            let Some(notice) = notice else { continue };
            let e = notice.envelope();
            assert_eq!(
                (&*e.message_type, &*e.sender_id, &*e.recipient_id),
                ("ConfigChanged", "relay", "")
            );
            assert_eq!(e.message_id.len(), 36);
            // The payload is the Welcome's block, word for word.
            let mut welcome = payload(&h.join(id("w"), 9, "w").unwrap().welcome);
            h.leave(&id("w"), 9);
            let welcome = welcome.as_object_mut().unwrap();
            let block: serde_json::Map<String, Value> = ["limits", "routing"]
                .iter()
                .map(|k| (k.to_string(), welcome.remove(*k).unwrap()))
                .collect();
            assert_eq!(payload(&notice), Value::Object(block), "{toml}");
        }
    }

    #[test]
    fn announcements_follow_the_switch() {
        let flushed = |h: &mut Hub<&'static str>| {
            let mut got = Vec::new();
            h.flush_presence(|_, to, m| got.push((*to, m.envelope().message_type.to_string())));
            got
        };
        let mut on = hub("[discovery]\nannounce_window_ms = 0\n");
        on.join(id("w"), 1, "w").unwrap();
        let j = on.join(id("a"), 2, "a").unwrap();
        assert!(j.presence.flush_now && j.presence.arm.is_none());
        assert_eq!(flushed(&mut on), [("w", "PeerJoined".to_owned())]);
        let (_, left) = on.leave(&id("a"), 2).unwrap();
        assert!(left.flush_now);
        assert_eq!(flushed(&mut on), [("w", "PeerLeft".to_owned())]);

        let mut off = hub("[discovery]\nannounce_peers = false\n");
        off.join(id("w"), 1, "w").unwrap();
        let j = off.join(id("a"), 2, "a").unwrap();
        assert_eq!(j.presence, Effect::default());
        assert_eq!(off.leave(&id("a"), 2).unwrap().1, Effect::default());
        assert!(flushed(&mut off).is_empty());
    }

    #[test]
    fn others_excludes_only_the_given_peer() {
        let mut h = hub("");
        for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
            h.join(id(name), n as u64, name).unwrap();
        }
        let a = id("a");
        let mut v: Vec<_> = h.others(&a).map(|(_, p)| *p).collect();
        v.sort();
        assert_eq!(v, ["b", "c"]);
    }

    #[test]
    fn error_envelope_has_code_message_and_type() {
        let m = error_message(
            "e1".into(),
            "a",
            &RelayError::UnknownRecipient("z".into()),
            Offending {
                message_type: Some("LedgerSync"),
                message_id: Some("m-1"),
            },
        );
        let p = payload(&m);
        assert_eq!(m.envelope().message_type, "Error");
        assert_eq!(m.envelope().recipient_id, "a");
        assert_eq!(p["code"], "unknown_recipient");
        assert_eq!(p["message_type"], "LedgerSync");
        assert_eq!(p["message_id"], "m-1");
        assert_eq!(m.envelope().message_id, "e1");
        assert!(p["message"].as_str().unwrap().contains("z"));
        let anon = error_message(
            "e2".into(),
            "",
            &RelayError::NotAnObject("a number"),
            Offending::default(),
        );
        assert!(payload(&anon).get("message_type").is_none());
        assert!(payload(&anon).get("message_id").is_none());
    }
}
