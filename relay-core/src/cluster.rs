//! Peers on the other relays of a cluster: what this relay knows of them and decides for them.
//!
//! Several native relays form one network through a message bus (the native relay's
//! `[cluster]`, NATS). The bus and its I/O are the front's; this module holds the decisions, so
//! they are tested like the rest of the core:
//!
//! - **Ids are claimed network-wide.** A join on a clustered hub first *reserves* its id here
//!   (refused at once if a peer here or on another relay holds it), and the front asks the bus
//!   whether the claim wins ([`crate::Step::Reserve`], [`crate::Connection::reserved`]). A won
//!   claim has a [`Claim`] number from the bus, larger for every later claim of any id.
//! - **Remote peers are in the table.** The front reports each claim and release it learns of
//!   ([`remote_joined`], [`remote_left`]) and each relay it gives up on ([`relay_gone`]). They
//!   are announced to local peers like local joins and leaves, listed in `Welcome`, counted in
//!   `peer_count`, and decide `unknown_recipient` and `peer_id_in_use`.
//! - **Routing crosses relays.** A message routed here also goes, through the front's
//!   [`Uplink`], to the relay holding its directed recipient, or to every relay when it is
//!   broadcast ([`Forward`]). A message from another relay is delivered here by [`arrived`].
//!
//! # Claims order what crosses
//! The bus carries traffic and presence on different paths, so a message from a remote peer can
//! arrive before the claim that announces it, or after the release that ends it. Every message
//! crossing relays carries its sender's [`Claim`], and:
//! - a message from a claim not known yet announces its sender first (nobody hears from a peer
//!   before hearing of it), and the claim's own report later changes nothing;
//! - a message from a claim already released (or older than the one known) is dropped: its
//!   sender is gone, and was announced gone.
//!
//! Released claims are remembered ([`DEPARTED_KEPT`] of them) for this.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::connection::{flush, Counts, Link, Refused, Table};
use crate::envelope::Message;
use crate::hub::Hub;
use crate::id::PeerId;
use crate::presence::Effect;

/// The bus's number for one won claim of an id: unique, and larger for later claims. 0 for a
/// claim the bus could not be asked about (it was unreachable): such a claim is local until the
/// front can assert it.
pub type Claim = u64;

/// One relay process of the cluster: its configured name, and the instance (random, per start),
/// so that a relay restarted under the same name is told apart from the one that died.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayRef {
    pub name: Arc<str>,
    pub instance: Arc<str>,
}

impl fmt::Display for RelayRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.instance)
    }
}

/// A peer connected to another relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    pub relay: RelayRef,
    pub claim: Claim,
    /// Its join's place in the presence log: what it sends waits for the announcement.
    pub(crate) joined: crate::presence::Seq,
}

/// Where a message routed here must also go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward<'h> {
    /// Nowhere: every recipient is here.
    Nowhere,
    /// To the relay holding the directed recipient.
    To(&'h RelayRef),
    /// To every other relay (a broadcast).
    Everywhere,
}

/// How a message crossed relays: what its relay of origin decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// To every peer here.
    Broadcast,
    /// To its `recipient_id`, here.
    Directed,
}

/// How the front reaches the other relays. Like a [`Link`], it only queues: it never waits.
pub trait Uplink: Send + Sync {
    /// Hands `message` to the bus for `to` (never [`Forward::Nowhere`]), tagged with its
    /// sender's claim (the front keeps its peers' claims: one may be asserted again while the
    /// connection lives). Refused when the bus cannot take it now; the caller tells the sender.
    fn forward(&self, to: Forward<'_>, message: &Arc<Message>) -> Result<(), Refused>;
}

/// Released claims remembered to drop late messages (see the module's docs): enough for the
/// leaves of many seconds on a busy network, a few MiB at most.
pub const DEPARTED_KEPT: usize = 65_536;

/// What a clustered hub holds besides its own peers.
pub(crate) struct Remote {
    pub(crate) uplink: Arc<dyn Uplink>,
    pub(crate) peers: HashMap<PeerId, RemotePeer>,
    /// Ids reserved by a local connection while the bus is asked.
    pub(crate) reserving: HashSet<PeerId>,
    /// Released claims: id → the largest claim released, and the order to forget them in.
    departed: HashMap<PeerId, Claim>,
    departed_order: VecDeque<PeerId>,
}

impl Remote {
    pub(crate) fn new(uplink: Arc<dyn Uplink>) -> Remote {
        Remote {
            uplink,
            peers: HashMap::new(),
            reserving: HashSet::new(),
            departed: HashMap::new(),
            departed_order: VecDeque::new(),
        }
    }

    /// True when `claim` of `id` is known to be released.
    pub(crate) fn is_departed(&self, id: &str, claim: Claim) -> bool {
        self.departed.get(id).is_some_and(|&gone| gone >= claim)
    }

    pub(crate) fn depart(&mut self, id: &PeerId, claim: Claim) {
        match self.departed.get_mut(id) {
            Some(gone) => *gone = (*gone).max(claim),
            None => {
                if self.departed_order.len() >= DEPARTED_KEPT {
                    if let Some(old) = self.departed_order.pop_front() {
                        self.departed.remove(&old);
                    }
                }
                self.departed.insert(id.clone(), claim);
                self.departed_order.push_back(id.clone());
            }
        }
    }
}

impl Remote {
    /// See [`new_epoch`].
    pub(crate) fn new_epoch(&mut self) {
        self.departed.clear();
        self.departed_order.clear();
        for peer in self.peers.values_mut() {
            peer.claim = 0;
        }
    }
}

/// What a claim reported by the bus did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteJoin {
    /// A new remote peer, announced.
    Joined,
    /// Already known (the same or a newer claim), or released already: nothing changed.
    Known,
    /// A peer here holds the id, and the bus gave it to another relay since: the bus is the
    /// authority, so the local connection must end with `peer_id_in_use` (the front closes it;
    /// its leave is announced then). The remote claim is recorded.
    Displaces,
}

/// What a cluster step did, for the front: whether to start the presence timer, what was
/// delivered and which slow consumers were found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub timer: Option<Duration>,
    pub counts: Counts,
}

fn apply<L: Link>(hub: &mut Hub<L>, effect: Effect, applied: &mut Applied) {
    if effect.flush_now {
        flush(hub, &mut applied.counts);
    }
    if effect.arm.is_some() {
        applied.timer = effect.arm;
    }
}

/// The bus reports that `relay` holds `id` under `claim`.
pub fn remote_joined<L: Link>(
    table: &impl Table<L>,
    id: PeerId,
    relay: RelayRef,
    claim: Claim,
) -> (RemoteJoin, Applied) {
    let mut applied = Applied::default();
    let mut hub = table.write();
    let (outcome, effect) = hub.remote_joined(id, relay, claim);
    apply(&mut hub, effect, &mut applied);
    (outcome, applied)
}

/// The bus reports that the claim of `id` ended; `at` orders the release after every claim
/// made before it (the bus's number for the release).
pub fn remote_left<L: Link>(table: &impl Table<L>, id: &PeerId, at: Claim) -> Applied {
    let mut applied = Applied::default();
    let mut hub = table.write();
    let effect = hub.remote_left(id, at);
    apply(&mut hub, effect, &mut applied);
    applied
}

/// The bus lost its record of claims and numbers them afresh (the native relay's NATS
/// bucket was created anew, say after NATS restarted without its memory): every number known
/// is from the old count, so none can order the new ones. Released claims are forgotten, and
/// the remote peers known are kept with claim 0, so that each one's next report from the bus
/// (or a message it sends) puts its new number in place.
pub fn new_epoch<L: Link>(table: &impl Table<L>) {
    table.write().new_epoch();
}

/// The front gave up on `relay` (it stopped answering, or the bus is unreachable): each of its
/// peers leaves. Returns them with their claims, for the front to release on the bus.
pub fn relay_gone<L: Link>(
    table: &impl Table<L>,
    relay: &RelayRef,
) -> (Vec<(PeerId, Claim)>, Applied) {
    let mut applied = Applied::default();
    let mut hub = table.write();
    let (gone, effect) = hub.forget_relay(relay);
    apply(&mut hub, effect, &mut applied);
    (gone, applied)
}

/// A message from a peer on `from` (its claim `claim`) arrived from the bus: delivered to its
/// recipients here, its sender announced first if this is the first news of its claim. A
/// message from a released claim is dropped (`counts.delivered` stays 0).
pub fn arrived<L: Link>(
    table: &impl Table<L>,
    from: &RelayRef,
    claim: Claim,
    carried: Carried,
    message: &Arc<Message>,
) -> Applied {
    let mut applied = Applied::default();
    let sender: &str = &message.envelope().sender_id;
    {
        // The common case, under one read of the table: a sender already known and announced.
        let hub = table.read();
        match hub.arrival(sender, claim) {
            Arrival::Stale => return applied,
            Arrival::Known if !hub.remote_join_pending(sender) => {
                deliver_here(&hub, carried, message, &mut applied);
                return applied;
            }
            Arrival::Known | Arrival::New => {}
        }
    }
    {
        let mut hub = table.write();
        if hub.arrival(sender, claim) == Arrival::New {
            let Ok(id) = PeerId::parse(sender) else {
                return applied;
            };
            let (_, effect) = hub.remote_joined(id, from.clone(), claim);
            apply(&mut hub, effect, &mut applied);
        }
        if hub.arrival(sender, claim) != Arrival::Known {
            // Released or displaced meanwhile (or held here): not from a live claim.
            return applied;
        }
        if hub.remote_join_pending(sender) {
            // Nobody hears from a peer before hearing of it: a join still waiting for the
            // presence timer is announced now.
            flush(&mut hub, &mut applied.counts);
        }
    }
    deliver_here(&table.read(), carried, message, &mut applied);
    applied
}

/// Hands a message from another relay to its recipients here.
fn deliver_here<L: Link>(
    hub: &Hub<L>,
    carried: Carried,
    message: &Arc<Message>,
    applied: &mut Applied,
) {
    let mut deliver = |peer: &L| match peer.send(message) {
        Ok(()) => applied.counts.delivered += 1,
        Err(Refused::SlowConsumer { newly }) => applied.counts.slow_consumers += u64::from(newly),
        Err(Refused::Gone) => {}
    };
    match carried {
        Carried::Broadcast => hub.peers().for_each(|(_, peer)| deliver(peer)),
        Carried::Directed => {
            if let Some(peer) = hub.get(&message.envelope().recipient_id) {
                deliver(peer);
            }
        }
    }
    applied.counts.routed += 1;
}

/// What the table knows of a message's sender claim (see the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The claim is the one known: deliver.
    Known,
    /// A claim not known yet: announce its sender, then deliver.
    New,
    /// Released, older than the one known, or the id is held here: drop.
    Stale,
}

#[cfg(test)]
mod tests {
    //! The cluster's decisions without a bus: links and the uplink are in-memory logs.

    use std::sync::{Mutex, RwLock};

    use super::*;
    use crate::auth::Nonce;
    use crate::connection::{Connection, Handshake, Input, Step};
    use crate::RelayConfig;

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<Arc<Message>>>>);

    impl Link for Log {
        fn send(&self, message: &Arc<Message>) -> Result<(), Refused> {
            self.0.lock().unwrap().push(message.clone());
            Ok(())
        }
    }

    impl Log {
        /// `(message_type, sender_id, payload)` of each message since the last take.
        fn take(&self) -> Vec<(String, String, String)> {
            self.0
                .lock()
                .unwrap()
                .drain(..)
                .map(|m| {
                    let e = m.envelope();
                    let t = (&*e.message_type, &*e.sender_id, e.payload.get());
                    (t.0.to_owned(), t.1.to_owned(), t.2.to_owned())
                })
                .collect()
        }
    }

    /// What the uplink was handed: `(to, sender)`; `refuse` makes it refuse everything.
    #[derive(Default)]
    struct Bus {
        forwarded: Mutex<Vec<(String, String)>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl Uplink for Bus {
        fn forward(&self, to: Forward<'_>, message: &Arc<Message>) -> Result<(), Refused> {
            if self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Refused::Gone);
            }
            let to = match to {
                Forward::To(relay) => relay.name.to_string(),
                Forward::Everywhere => "*".to_owned(),
                Forward::Nowhere => panic!("forwarded nowhere"),
            };
            let sender = message.envelope().sender_id.to_string();
            self.forwarded.lock().unwrap().push((to, sender));
            Ok(())
        }
    }

    struct Net {
        table: RwLock<Hub<Log>>,
        bus: Arc<Bus>,
        next: u64,
    }

    const RULES: &str = "[discovery]\nannounce_window_ms = 0\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nSync = \"directed\"\n";

    fn relay(name: &str) -> RelayRef {
        RelayRef {
            name: name.into(),
            instance: "1".into(),
        }
    }

    fn id(s: &str) -> PeerId {
        PeerId::parse(s).unwrap()
    }

    impl Net {
        fn new() -> Net {
            Net::with(RULES)
        }

        fn with(rules: &str) -> Net {
            let config = RelayConfig::from_toml_str(rules, "test").unwrap();
            let mut hub = Hub::new(Arc::new(config), 1);
            let bus = Arc::new(Bus::default());
            hub.set_uplink(bus.clone());
            Net {
                table: RwLock::new(hub),
                bus,
                next: 0,
            }
        }

        fn open(&mut self) -> (Connection<Log>, Log) {
            self.next += 1;
            let log = Log::default();
            (Connection::open(self.next, log.clone(), &self.table), log)
        }

        /// A local peer that claimed `name` at connect and whose claim the bus granted.
        fn join(&mut self, name: &str) -> (Connection<Log>, Log) {
            let (mut conn, log) = self.open();
            let step = conn.begin(&self.table, handshake(Some(name)));
            assert_eq!(step, Step::Reserve(id(name)));
            assert!(log.take().is_empty(), "nothing before the bus answers");
            assert_eq!(
                conn.reserved(&self.table, true, Duration::ZERO, &mut ()),
                Step::Continue
            );
            (conn, log)
        }

        fn forwarded(&self) -> Vec<(String, String)> {
            std::mem::take(&mut *self.bus.forwarded.lock().unwrap())
        }
    }

    fn handshake(node_id: Option<&str>) -> Handshake<'_> {
        Handshake {
            node_id,
            token: None,
            nonce: Nonce([0; 32]),
            now: Duration::ZERO,
        }
    }

    fn text(t: &str, from: &str, to: &str) -> Input {
        Input::Text(
            format!(r#"{{"message_type":"{t}","sender_id":"{from}","recipient_id":"{to}","payload":{{}}}}"#)
                .into(),
        )
    }

    fn remote_message(t: &str, from: &str, to: &str) -> Arc<Message> {
        let json = format!(
            r#"{{"message_type":"{t}","sender_id":"{from}","recipient_id":"{to}","message_id":"m1","payload":{{"n":1}}}}"#
        );
        Arc::new(Message::new(crate::Envelope::parse_json(&json).unwrap()))
    }

    fn error_code(got: &[(String, String, String)]) -> String {
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "Error", "{got:?}");
        let payload: serde_json::Value = serde_json::from_str(&got[0].2).unwrap();
        payload["code"].as_str().unwrap().to_owned()
    }

    #[test]
    fn remote_peers_are_announced_listed_and_counted() {
        let mut net = Net::new();
        let (_a, a_log) = net.join("a");
        a_log.take();
        let (outcome, _) = remote_joined(&net.table, id("r"), relay("two"), 5);
        assert_eq!(outcome, RemoteJoin::Joined);
        let got = a_log.take();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "PeerJoined");
        assert!(got[0].2.contains("\"r\""), "{got:?}");
        // The same claim again changes nothing.
        let (outcome, _) = remote_joined(&net.table, id("r"), relay("two"), 5);
        assert_eq!(outcome, RemoteJoin::Known);
        assert!(a_log.take().is_empty());

        let (_b, b_log) = net.join("b");
        let welcome = b_log.take();
        assert_eq!(welcome[0].0, "Welcome");
        let payload: serde_json::Value = serde_json::from_str(&welcome[0].2).unwrap();
        assert_eq!(payload["peers"], serde_json::json!(["a", "r"]));
        assert_eq!(payload["peer_count"], 2);
    }

    #[test]
    fn an_id_held_elsewhere_is_refused_without_asking_the_bus() {
        let mut net = Net::new();
        let _ = remote_joined(&net.table, id("r"), relay("two"), 5);
        let (mut conn, log) = net.open();
        let step = conn.begin(&net.table, handshake(Some("r")));
        assert!(matches!(step, Step::Close(ref e) if e.code() == crate::ErrorCode::PeerIdInUse));
        assert_eq!(error_code(&log.take()), "peer_id_in_use");
    }

    #[test]
    fn a_claim_the_bus_refuses_is_peer_id_in_use() {
        let mut net = Net::new();
        // At connect: the connection ends.
        let (mut conn, log) = net.open();
        assert_eq!(
            conn.begin(&net.table, handshake(Some("x"))),
            Step::Reserve(id("x"))
        );
        let step = conn.reserved(&net.table, false, Duration::ZERO, &mut ());
        assert!(matches!(step, Step::Close(ref e) if e.code() == crate::ErrorCode::PeerIdInUse));
        assert_eq!(error_code(&log.take()), "peer_id_in_use");
        assert!(conn.id().is_none());
        // In band: refused, the envelope goes nowhere, the connection stays.
        let (_a, a_log) = net.join("a");
        a_log.take();
        let (mut conn, log) = net.open();
        assert_eq!(conn.begin(&net.table, handshake(None)), Step::Continue);
        let step = conn.input(&net.table, text("Hello", "x", ""), Duration::ZERO);
        assert_eq!(step, Step::Reserve(id("x")));
        // A second local claim of the same id meanwhile is refused at once.
        let (mut other, other_log) = net.open();
        assert!(matches!(
            other.begin(&net.table, handshake(Some("x"))),
            Step::Close(_)
        ));
        assert_eq!(error_code(&other_log.take()), "peer_id_in_use");
        let step = conn.reserved(&net.table, false, Duration::ZERO, &mut ());
        assert_eq!(step, Step::Continue);
        assert_eq!(error_code(&log.take()), "peer_id_in_use");
        assert!(a_log.take().is_empty(), "nothing routed from a lost claim");
        assert!(net.forwarded().is_empty());
        // The id is free again.
        let _ = net.join("x");
    }

    #[test]
    fn a_won_claim_in_band_joins_then_routes_the_envelope() {
        let mut net = Net::new();
        let (_a, a_log) = net.join("a");
        a_log.take();
        let (mut conn, log) = net.open();
        let _ = conn.begin(&net.table, handshake(None));
        let step = conn.input(&net.table, text("Hello", "x", ""), Duration::ZERO);
        assert_eq!(step, Step::Reserve(id("x")));
        assert_eq!(
            conn.reserved(&net.table, true, Duration::ZERO, &mut ()),
            Step::Continue
        );
        assert_eq!(log.take()[0].0, "Welcome");
        let types: Vec<String> = a_log.take().into_iter().map(|g| g.0).collect();
        assert_eq!(types, ["PeerJoined", "Hello"]);
        assert_eq!(net.forwarded(), [("*".to_owned(), "x".to_owned())]);
    }

    #[test]
    fn routing_crosses_relays() {
        let mut net = Net::new();
        let (mut a, a_log) = net.join("a");
        let (_b, b_log) = net.join("b");
        let _ = remote_joined(&net.table, id("r"), relay("two"), 5);
        a_log.take();
        b_log.take();
        // Directed to a remote peer: to its relay only.
        let _ = a.input(&net.table, text("Sync", "a", "r"), Duration::ZERO);
        assert_eq!(net.forwarded(), [("two".to_owned(), "a".to_owned())]);
        assert!(a_log.take().is_empty() && b_log.take().is_empty());
        // Broadcast: local peers and every relay.
        let _ = a.input(&net.table, text("Note", "a", ""), Duration::ZERO);
        assert_eq!(net.forwarded(), [("*".to_owned(), "a".to_owned())]);
        assert_eq!(b_log.take().len(), 1);
        // Directed to a local peer: not forwarded.
        let _ = a.input(&net.table, text("Sync", "a", "b"), Duration::ZERO);
        assert!(net.forwarded().is_empty());
        assert_eq!(b_log.take().len(), 1);
        // Unknown anywhere.
        let _ = a.input(&net.table, text("Sync", "a", "nobody"), Duration::ZERO);
        assert_eq!(error_code(&a_log.take()), "unknown_recipient");
        // The bus refuses: the sender is told, local peers still got it.
        net.bus
            .refuse
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = a.input(&net.table, text("Note", "a", ""), Duration::ZERO);
        assert_eq!(b_log.take().len(), 1);
        assert_eq!(error_code(&a_log.take()), "relay_unreachable");
    }

    #[test]
    fn arrivals_announce_new_claims_and_drop_released_ones() {
        let mut net = Net::new();
        let (_a, a_log) = net.join("a");
        let (_b, b_log) = net.join("b");
        a_log.take();
        b_log.take();
        // A message from a claim not known yet: its sender is announced first.
        let m = remote_message("Note", "r", "");
        let applied = arrived(&net.table, &relay("two"), 7, Carried::Broadcast, &m);
        assert_eq!(applied.counts.delivered, 2);
        let types: Vec<String> = a_log.take().into_iter().map(|g| g.0).collect();
        assert_eq!(types, ["PeerJoined", "Note"]);
        b_log.take();
        // Its claim reported afterwards changes nothing.
        let (outcome, _) = remote_joined(&net.table, id("r"), relay("two"), 7);
        assert_eq!(outcome, RemoteJoin::Known);
        // Directed: only the recipient.
        let m = remote_message("Sync", "r", "b");
        let applied = arrived(&net.table, &relay("two"), 7, Carried::Directed, &m);
        assert_eq!(applied.counts.delivered, 1);
        assert!(a_log.take().is_empty());
        assert_eq!(b_log.take()[0].2, r#"{"n":1}"#);
        // An older claim of the same id: dropped.
        let m = remote_message("Note", "r", "");
        assert_eq!(
            arrived(&net.table, &relay("two"), 6, Carried::Broadcast, &m)
                .counts
                .delivered,
            0
        );
        // Released: announced gone, and what comes late from that claim is dropped.
        let _ = remote_left(&net.table, &id("r"), 9);
        assert_eq!(a_log.take()[0].0, "PeerLeft");
        b_log.take();
        assert_eq!(
            arrived(&net.table, &relay("two"), 7, Carried::Broadcast, &m)
                .counts
                .delivered,
            0
        );
        assert!(a_log.take().is_empty());
        // A late claim report for the released claim is no news either.
        let (outcome, _) = remote_joined(&net.table, id("r"), relay("two"), 7);
        assert_eq!(outcome, RemoteJoin::Known);
        assert!(a_log.take().is_empty());
        // A later claim of the id is a new peer.
        let (outcome, _) = remote_joined(&net.table, id("r"), relay("two"), 12);
        assert_eq!(outcome, RemoteJoin::Joined);
        assert_eq!(a_log.take()[0].0, "PeerJoined");
    }

    /// A remote join waiting for the presence timer is announced before anything its peer
    /// sends is delivered, as a local one is.
    #[test]
    fn a_remote_peer_is_announced_before_its_messages_even_within_the_window() {
        let mut net =
            Net::with(&RULES.replace("announce_window_ms = 0", "announce_window_ms = 60000"));
        let (_a, a_log) = net.join("a");
        a_log.take();
        // a's own join started the window: these wait for the timer.
        let _ = remote_joined(&net.table, id("r1"), relay("two"), 3);
        let _ = remote_joined(&net.table, id("r2"), relay("two"), 4);
        assert!(a_log.take().is_empty());
        let m = remote_message("Note", "r2", "");
        let _ = arrived(&net.table, &relay("two"), 4, Carried::Broadcast, &m);
        let got = a_log.take();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0].0.as_str(), got[1].0.as_str()),
            ("PeersChanged", "Note")
        );
        assert!(got[0].2.contains("r2"), "{got:?}");
    }

    #[test]
    fn a_relay_given_up_on_takes_its_peers_with_it() {
        let mut net = Net::new();
        let (_a, a_log) = net.join("a");
        let _ = remote_joined(&net.table, id("r1"), relay("two"), 3);
        let _ = remote_joined(&net.table, id("r2"), relay("two"), 4);
        let _ = remote_joined(&net.table, id("s"), relay("three"), 5);
        a_log.take();
        let (mut gone, _) = relay_gone(&net.table, &relay("two"));
        gone.sort();
        assert_eq!(gone, [(id("r1"), 3), (id("r2"), 4)]);
        let got = a_log.take();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "PeersChanged");
        assert_eq!(net.table.read().unwrap().network_len(), 2);
        // Their ids are free for a local claim.
        let _ = net.join("r1");
    }

    #[test]
    fn a_claim_displacing_a_local_peer_is_announced_when_it_leaves() {
        let mut net = Net::new();
        let (_a, a_log) = net.join("a");
        let (mut x, _) = net.join("x");
        a_log.take();
        let (outcome, _) = remote_joined(&net.table, id("x"), relay("two"), 40);
        assert_eq!(outcome, RemoteJoin::Displaces);
        assert!(a_log.take().is_empty());
        x.leave(&net.table);
        let got = a_log.take();
        assert_eq!(got.len(), 1, "{got:?}");
        let payload: serde_json::Value = serde_json::from_str(&got[0].2).unwrap();
        assert_eq!(payload["left"], serde_json::json!(["x"]));
        assert_eq!(payload["joined"], serde_json::json!(["x"]));
        let (_, remote) = net
            .table
            .read()
            .unwrap()
            .remote_peers()
            .next()
            .map(|(i, r)| (i.clone(), r.clone()))
            .unwrap();
        assert_eq!(remote.relay.name.as_ref(), "two");
    }

    #[test]
    fn a_dropped_connection_frees_its_reservation() {
        let mut net = Net::new();
        let (mut conn, _) = net.open();
        assert_eq!(
            conn.begin(&net.table, handshake(Some("x"))),
            Step::Reserve(id("x"))
        );
        conn.leave(&net.table);
        let _ = net.join("x");
    }
}
