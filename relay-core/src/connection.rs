//! One connection's side of the protocol: a state machine without I/O.
//!
//! A front (the native WebSocket or gRPC server, the Worker) creates one [`Connection`] per
//! accepted connection and feeds it what happens: an identity claimed at connect
//! ([`Connection::claim`]), each frame or decoded envelope ([`Input`]), the end
//! ([`Connection::leave`]). The connection runs every step of the protocol:
//!
//! - it sizes, parses and admits each envelope (identity bound once, spoofing refused);
//! - it joins the peer table under the claimed id and queues the `Welcome` to the newcomer
//!   before anything else can reach it; joins and leaves are announced to the others by the
//!   network's [`crate::presence`] log, at once or coalesced when the front's presence timer
//!   fires ([`Connection::poll_presence_timer`], [`presence_timer_fired`]), and always before
//!   anything the newcomer sends is delivered;
//! - it routes by the `relay.toml` rules and hands each recipient the message;
//! - it answers every refusal with an `Error` envelope addressed to the connection's id (or to
//!   nobody, `""`, while it has none), naming the offending envelope's type when known;
//! - it says when the connection must end and why ([`Step::Close`]), with the WebSocket close
//!   code and gRPC status that go with the reason ([`RelayError::ws_close_code`],
//!   [`RelayError::grpc_code`]);
//! - when the rules change under it ([`reconfigure`], the native relay's reload), it checks its
//!   next envelope against the new `limits.max_message_bytes`, and every peer is told of the new
//!   `limits` and `routing` (`ConfigChanged`) before anything routed by them reaches it.
//!
//! It delivers by calling [`Link::send`] on the recipients' links. A link only queues (it never
//! waits), so the front decides how bytes reach sockets, and nothing here blocks.
//!
//! # Ordering
//! Inputs of one connection are handled one after another, and a link keeps the order of what
//! it is handed, so messages from one sender to one recipient arrive in the order sent. The
//! `Welcome` is handed to the newcomer while the table is locked for its join, so nothing routed
//! to it can overtake it.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytestring::ByteString;

use crate::auth::{self, Nonce, Proof};
use crate::cluster::Forward;
use crate::config::RelayConfig;
use crate::envelope::{prepend_message_id, Envelope, Message};
use crate::error::{ErrorCode, RelayError};
use crate::hub::{error_message, ConnId, Hub, LiveLimit, Offending, Route};
use crate::id::PeerId;
use crate::ids::IdBlock;
use crate::presence::Effect;
use crate::rate::Bucket;
use crate::session::{Inbound, Rejection, SenderText, Session};

/// How the relay reaches one peer: the front's handle to its outbound queue or socket.
pub trait Link: Clone {
    /// Hands `message` to the peer without waiting. Messages handed to one link reach the peer
    /// in the order they were handed.
    fn send(&self, message: &Arc<Message>) -> Result<(), Refused>;
}

/// Why a link did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer is not reading: its queue is full, so it is being disconnected as a slow
    /// consumer. `newly` is true for the refusal that caused the disconnect (count it once).
    SlowConsumer { newly: bool },
    /// The peer's connection is already ending.
    Gone,
}

/// The table of connected peers shared by every connection of one network.
///
/// Routing only reads it; join and leave write it. Implemented for `RwLock<Hub<L>>` (the
/// native server: many connections route at once) and by the Worker over its single-threaded
/// room. A guard is never held across anything that waits: every step here is synchronous.
pub trait Table<L> {
    type Read<'t>: Deref<Target = Hub<L>>
    where
        Self: 't;
    type Write<'t>: DerefMut<Target = Hub<L>>
    where
        Self: 't;

    fn read(&self) -> Self::Read<'_>;
    fn write(&self) -> Self::Write<'_>;
}

/// A panic while the lock is held cannot leave the hub half-updated (every update is a single
/// map operation), so a poisoned lock is still safe to use.
impl<L> Table<L> for RwLock<Hub<L>> {
    type Read<'t>
        = RwLockReadGuard<'t, Hub<L>>
    where
        L: 't;
    type Write<'t>
        = RwLockWriteGuard<'t, Hub<L>>
    where
        L: 't;

    fn read(&self) -> Self::Read<'_> {
        RwLock::read(self).unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> Self::Write<'_> {
        RwLock::write(self).unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What arrived on a connection.
#[derive(Debug)]
pub enum Input {
    /// A WebSocket text frame. It becomes the recipients' frame, unchanged and uncopied, when
    /// the relay has nothing to change in it.
    Text(ByteString),
    /// A WebSocket binary frame (envelopes are text frames).
    Binary,
    /// A frame over [`crate::config::Limits::hard_frame_bytes`], which the front did not read.
    OversizedFrame,
    /// A frame or fragmented message over `limit`
    /// ([`crate::config::Limits::anonymous_frame_bytes`]) on a connection that had no id yet,
    /// refused by the front from its header (native WebSocket front).
    OversizedAnonymousFrame { limit: usize },
    /// A message still being received that would take the memory shared by every connection's
    /// unfinished messages past `budget` (`limits.partial_messages_budget_bytes`), refused by
    /// the front before it read more of it (native WebSocket front).
    OverMemoryBudget { budget: u64 },
    /// An envelope decoded by the gRPC front, or why it could not be; `size` bytes on the wire.
    Decoded {
        envelope: Result<Envelope, RelayError>,
        size: usize,
    },
}

/// What the front must do after an input.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep the connection open.
    Continue,
    /// End the connection for this reason, after writing what is queued for it: a WebSocket
    /// close frame with [`RelayError::ws_close_code`] and [`RelayError::close_reason`], or a
    /// gRPC status with [`RelayError::grpc_code`].
    Close(RelayError),
    /// A clustered relay ([`crate::cluster`]): ask the bus whether this connection may take
    /// the id network-wide, then call [`Connection::reserved`] with the answer, before giving
    /// this connection any other input.
    Reserve(PeerId),
}

/// What waits for a claim the bus is asked about ([`Step::Reserve`]): where the conversation
/// goes on once it is answered.
#[derive(Debug)]
enum Then {
    /// The id (or token) given at connect: a refusal ends the connection.
    Begin,
    /// An `Authenticate`'s proven id: a refusal ends the connection.
    Authenticated,
    /// An envelope that named the id as its `sender_id`: routed once the claim is won, refused
    /// with `peer_id_in_use` (the connection stays open) if it is lost.
    Route(Box<Inbound>, usize),
}

/// How a join went.
enum Joining {
    Done,
    /// The bus must be asked first ([`Step::Reserve`]).
    Reserving(PeerId),
}

/// What one connection did, for the front's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Envelopes routed (accepted and decided).
    pub routed: u64,
    /// Messages handed to recipients' links.
    pub delivered: u64,
    /// `Error` envelopes sent to this connection.
    pub errors_sent: u64,
    /// Peers disconnected as slow consumers by this connection's sends.
    pub slow_consumers: u64,
}

/// What a front's metrics learn of a connection's steps, as they happen (the `*_metered`
/// methods take one; the plain ones pass `()`, which counts nothing). Called synchronously on
/// the hot path, so an implementation must be cheap: a few relaxed increments.
pub trait Meter {
    /// One message routed by `route`, handed to `delivered` recipients.
    fn routed(&mut self, route: Route<'_>, delivered: u64);
    /// One `Error` envelope with `code` sent to this connection.
    fn rejected(&mut self, code: ErrorCode);
}

/// Counts nothing.
impl Meter for () {
    fn routed(&mut self, _: Route<'_>, _: u64) {}
    fn rejected(&mut self, _: ErrorCode) {}
}

/// One connection, from accept to close.
pub struct Connection<L> {
    /// Tells this connection apart from a later one that takes the same id.
    conn: ConnId,
    /// The identity: bound once, by [`Connection::claim`] or the first envelope.
    session: Session,
    /// This connection's own link, for what only it receives (Welcome, Error).
    link: L,
    /// The hub's live `limits.max_message_bytes`: every envelope is checked against the value in
    /// force when it arrives, so a reload reaches open connections.
    max_message_bytes: Arc<LiveLimit>,
    /// Copied from the config at open, as the front's transport limit is (tungstenite's is fixed
    /// when the socket is accepted): named when a frame over it ends the connection.
    hard_frame_bytes: usize,
    /// Counted here, and taken by the front when it likes ([`Connection::take_counts`]), so the
    /// hot path does not touch shared counters.
    counts: Counts,
    /// The ids this connection assigns come from here, a block at a time.
    ids: IdBlock,
    /// The network's presence timer must be started: taken by the front
    /// ([`Connection::poll_presence_timer`]).
    timer: Option<Duration>,
    /// This connection's join is known to be announced: what it sends need not wait for it.
    announced: bool,
    /// The random bytes of this connection's challenge (given by the front at
    /// [`Connection::begin`]): a signed proof must cover them, so it is good here only.
    nonce: Option<Nonce>,
    /// The id named at connect (`?node_id=`) when its rule asks for proof: what an
    /// `Authenticate` without `sender_id` takes.
    wanted: Option<PeerId>,
    /// When a still anonymous connection is closed (`limits.identify_timeout_ms` after
    /// [`Connection::begin`]), on the front's clock.
    deadline: Option<Duration>,
    /// The sender's envelopes per second and bytes per second (`[limits]`).
    messages: Bucket,
    bytes: Bucket,
    /// Envelopes refused for the rate in a row; at `limits.rate_limited_max` the connection ends.
    rate_refusals: u32,
    /// The id this connection reserved on a clustered hub while the bus is asked, and what
    /// waits for the answer.
    reserving: Option<(PeerId, Then)>,
}

/// What a connection remembers between inputs besides its id, for a front that does not keep
/// the [`Connection`] itself (the Worker makes one per message, and keeps this on the socket
/// and in its room): the challenge, the deadline, and the rate buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Remembered {
    /// The challenge's bytes, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The rate buckets, as their "full again at" times in milliseconds, and refusals in a row.
    #[serde(default)]
    pub messages_full_at_ms: u64,
    #[serde(default)]
    pub bytes_full_at_ms: u64,
    #[serde(default)]
    pub rate_refusals: u32,
}

/// What a front knows when a connection opens.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// The id asked for at connect (`?node_id=`, `x-gsio-node-id`).
    pub node_id: Option<&'a str>,
    /// A token presented at connect (a WebSocket subprotocol, gRPC `authorization` metadata).
    pub token: Option<&'a str>,
    /// 32 fresh random bytes (the core has no randomness): this connection's challenge.
    pub nonce: Nonce,
    /// The front's clock: time since the Unix epoch.
    pub now: Duration,
}

impl<L: Link> Connection<L> {
    /// A new, still anonymous connection on `table`, under the rules in force there.
    pub fn open(conn: ConnId, link: L, table: &impl Table<L>) -> Connection<L> {
        let (max_message_bytes, hard_frame_bytes) = {
            let hub = table.read();
            (hub.message_limit(), hub.config().limits.hard_frame_bytes())
        };
        Connection {
            conn,
            session: Session::new(),
            link,
            max_message_bytes,
            hard_frame_bytes,
            counts: Counts::default(),
            ids: IdBlock::default(),
            timer: None,
            announced: false,
            nonce: None,
            wanted: None,
            deadline: None,
            messages: Bucket::new(),
            bytes: Bucket::new(),
            rate_refusals: 0,
            reserving: None,
        }
    }

    /// The connection's first step, before any input: a token or an id given at connect is
    /// taken (joining, with its `Welcome`), else the `Challenge` goes out if some id needs proof,
    /// and the identification deadline starts. Refused, the connection is told with an `Error`
    /// envelope and must close: a connection that asked for what it cannot have is not left
    /// open as something else.
    pub fn begin(&mut self, table: &impl Table<L>, handshake: Handshake<'_>) -> Step {
        self.begin_metered(table, handshake, &mut ())
    }

    /// [`Connection::begin`], telling `meter`.
    pub fn begin_metered(
        &mut self,
        table: &impl Table<L>,
        handshake: Handshake<'_>,
        meter: &mut impl Meter,
    ) -> Step {
        let config = table.read().config().clone();
        let auth = &config.auth;
        self.nonce = Some(handshake.nonce);
        self.deadline = Some(
            handshake
                .now
                .saturating_add(Duration::from_millis(config.limits.identify_timeout_ms)),
        );
        let taken = if let Some(token) = handshake.token {
            auth::verify_token(auth, token, handshake.now.as_secs()).and_then(|id| match handshake
                .node_id
            {
                Some(asked) if asked != id.as_str() => Err(RelayError::SpoofedSender {
                    claimed: crate::id::truncate_for_display(asked),
                    actual: id.to_string(),
                }),
                _ if !auth.mode_for(id.as_str()).allows_token()
                    && auth.mode_for(id.as_str()) != crate::config::AuthMode::Open =>
                {
                    Err(auth::refuse_mode(auth, &id, Some("a token")))
                }
                _ => Ok(Some(id)),
            })
        } else if let Some(raw) = handshake.node_id {
            PeerId::parse(raw).map(|id| {
                if auth.mode_for(id.as_str()) == crate::config::AuthMode::Open {
                    Some(id)
                } else {
                    // Proof comes in band: this is the id an `Authenticate` takes by default.
                    self.wanted = Some(id);
                    None
                }
            })
        } else {
            Ok(None)
        };
        match taken.and_then(|id| id.map_or(Ok(Joining::Done), |id| self.join(table, id))) {
            Ok(Joining::Reserving(id)) => {
                self.reserving = Some((id.clone(), Then::Begin));
                Step::Reserve(id)
            }
            Ok(Joining::Done) => {
                if self.session.id().is_none() && auth.needs_proof() {
                    let hub = table.read();
                    let challenge = Envelope::from_relay(
                        auth::CHALLENGE,
                        hub.next_message_id(),
                        "",
                        auth::challenge_payload(auth, handshake.nonce),
                    );
                    drop(hub);
                    self.deliver_own(&Arc::new(Message::new(challenge)));
                }
                Step::Continue
            }
            Err(error) => {
                self.reject(table, &error, Offending::default(), meter);
                Step::Close(error)
            }
        }
    }

    /// When the front must call [`Connection::timed_out`]: the identification deadline, while
    /// the connection has no id.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline.filter(|_| self.session.id().is_none())
    }

    /// The front's timer for [`Connection::deadline`] fired at `now`: a connection still
    /// without an id is told why, and must close.
    pub fn timed_out(
        &mut self,
        table: &impl Table<L>,
        now: Duration,
        meter: &mut impl Meter,
    ) -> Step {
        match self.deadline() {
            Some(deadline) if now >= deadline => {
                let limit = table.read().config().limits.identify_timeout_ms;
                let error = RelayError::IdentificationTimeout(limit);
                self.reject(table, &error, Offending::default(), meter);
                Step::Close(error)
            }
            _ => Step::Continue,
        }
    }

    /// A connection that already joined as `id` (when known) in an earlier life of the front's
    /// state: the Worker keeps each socket's id on the socket, and resumes from it for every
    /// message. No Welcome, no announcement.
    pub fn resume(
        conn: ConnId,
        link: L,
        id: Option<PeerId>,
        table: &impl Table<L>,
    ) -> Connection<L> {
        let mut connection = Connection::open(conn, link, table);
        if let Some(id) = id {
            connection.session.bind(id);
        }
        connection
    }

    pub fn id(&self) -> Option<&PeerId> {
        self.session.id()
    }

    /// What this connection must remember until its next input, for a front that makes a
    /// [`Connection`] per input ([`Connection::resume`] then [`Connection::recall`]).
    pub fn remembered(&self) -> Remembered {
        Remembered {
            nonce: self.nonce.map(Nonce::to_hex),
            wanted: self.wanted.as_ref().map(PeerId::to_string),
            deadline_ms: self.deadline.map(|d| d.as_millis() as u64),
            messages_full_at_ms: self.messages.full_at().as_millis() as u64,
            bytes_full_at_ms: self.bytes.full_at().as_millis() as u64,
            rate_refusals: self.rate_refusals,
        }
    }

    /// Restores what [`Connection::remembered`] gave. Anything unreadable in it (it is the
    /// front's own record, so only a bug could make it so) is left as a new connection has it.
    pub fn recall(&mut self, remembered: &Remembered) {
        self.nonce = remembered.nonce.as_deref().and_then(Nonce::from_hex);
        self.wanted = remembered
            .wanted
            .as_deref()
            .and_then(|id| PeerId::parse(id).ok());
        self.deadline = remembered.deadline_ms.map(Duration::from_millis);
        self.messages = Bucket::refilled_at(Duration::from_millis(remembered.messages_full_at_ms));
        self.bytes = Bucket::refilled_at(Duration::from_millis(remembered.bytes_full_at_ms));
        self.rate_refusals = remembered.rate_refusals;
    }

    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// [`Connection::begin`] with only an id, for the tables below.
    #[cfg(test)]
    fn claim(&mut self, table: &impl Table<L>, raw: &str) -> Step {
        self.claim_metered(table, raw, &mut ())
    }

    #[cfg(test)]
    fn claim_metered(&mut self, table: &impl Table<L>, raw: &str, meter: &mut impl Meter) -> Step {
        let handshake = Handshake {
            node_id: Some(raw),
            token: None,
            nonce: Nonce([0; 32]),
            now: Duration::ZERO,
        };
        self.begin_metered(table, handshake, meter)
    }

    /// One input: parsed, admitted, joined if it names this connection's id, routed; or
    /// answered with an `Error` envelope.
    /// `now` is the front's clock (time since the Unix epoch), for the sender's rate limits.
    pub fn input(&mut self, table: &impl Table<L>, input: Input, now: Duration) -> Step {
        self.input_metered(table, input, now, &mut ())
    }

    /// [`Connection::input`], telling `meter` what was routed and refused.
    pub fn input_metered(
        &mut self,
        table: &impl Table<L>,
        input: Input,
        now: Duration,
        meter: &mut impl Meter,
    ) -> Step {
        let (inbound, size) = match input {
            Input::Text(text) => {
                let size = text.len();
                (
                    self.session.accept_text(text, self.max_message_bytes.get()),
                    size,
                )
            }
            Input::Decoded { envelope, size } => (
                self.session
                    .accept_decoded(envelope, size, self.max_message_bytes.get()),
                size,
            ),
            Input::Binary => (
                Err(Rejection::from(RelayError::UnsupportedFrame(
                    "binary frames are not accepted; send each envelope as a JSON text frame",
                ))),
                0,
            ),
            Input::OversizedFrame => {
                return Step::Close(RelayError::FrameTooLarge {
                    limit: self.hard_frame_bytes,
                })
            }
            Input::OversizedAnonymousFrame { limit } => {
                return Step::Close(RelayError::FrameTooLarge { limit })
            }
            Input::OverMemoryBudget { budget } => {
                return Step::Close(RelayError::MemoryBudgetExhausted { budget })
            }
        };
        match inbound {
            Ok(inbound) => self.dispatch(table, inbound, size, now, meter),
            Err(rejected) => {
                let offending = Offending {
                    message_type: rejected.message_type.as_deref(),
                    message_id: rejected.message_id.as_deref(),
                };
                self.reject(table, &rejected.error, offending, meter);
                Step::Continue
            }
        }
    }

    /// Leaves the table (announcing `PeerLeft`), if this connection still holds its id. Safe to
    /// call more than once, and on a table rebuilt without this connection (the Worker's, after
    /// an eviction): the connection's own record of its id is what counts, unless another
    /// connection holds that id now.
    pub fn leave(&mut self, table: &impl Table<L>) {
        if let Some((id, _)) = self.reserving.take() {
            table.write().cancel_reservation(&id);
        }
        let Some(id) = self.session.take() else {
            return;
        };
        let mut hub = table.write();
        hub.restore(id.clone(), self.conn, self.link.clone());
        if let Some((_, effect)) = hub.leave(&id, self.conn) {
            self.presence(&mut hub, effect);
        }
    }

    /// The counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// After any step: `Some(delay)` when the network's presence timer must be started, to call
    /// [`presence_timer_fired`] after `delay`. Asked for once per run of the timer, so a front
    /// keeps one timer per network (see [`crate::presence`], "When").
    pub fn poll_presence_timer(&mut self) -> Option<Duration> {
        self.timer.take()
    }

    /// Carries out what a join or leave asks: announce now, start the timer.
    fn presence(&mut self, hub: &mut Hub<L>, effect: Effect) {
        if effect.flush_now {
            flush(hub, &mut self.counts);
        }
        if effect.arm.is_some() {
            self.timer = effect.arm;
        }
    }

    fn dispatch(
        &mut self,
        table: &impl Table<L>,
        inbound: Inbound,
        size: usize,
        now: Duration,
        meter: &mut impl Meter,
    ) -> Step {
        let envelope = &inbound.envelope;
        let offending = Offending::of(envelope);
        if inbound.authenticate {
            return match self.authenticate(table, envelope, now) {
                Ok(Joining::Done) => Step::Continue,
                Ok(Joining::Reserving(id)) => {
                    self.reserving = Some((id.clone(), Then::Authenticated));
                    Step::Reserve(id)
                }
                Err(error) => {
                    self.reject(table, &error, offending, meter);
                    Step::Close(error)
                }
            };
        }
        if let Some(id) = inbound.claim.clone() {
            let config = table.read().config().clone();
            let joined = if config.auth.mode_for(id.as_str()) == crate::config::AuthMode::Open {
                self.join(table, id)
            } else {
                Err(auth::refuse_mode(&config.auth, &id, None))
            };
            match joined {
                Err(error) => {
                    self.reject(table, &error, offending, meter);
                    return Step::Continue;
                }
                Ok(Joining::Reserving(id)) => {
                    self.reserving = Some((id.clone(), Then::Route(Box::new(inbound), size)));
                    return Step::Reserve(id);
                }
                Ok(Joining::Done) => {}
            }
        }
        self.send_admitted(table, inbound, size, now, meter)
    }

    /// The bus answered the claim of [`Step::Reserve`]: `won` or not. Won, the connection
    /// joins (its `Welcome` first) and what waited goes on; lost, it is refused with
    /// `peer_id_in_use` as a local conflict is.
    pub fn reserved(
        &mut self,
        table: &impl Table<L>,
        won: bool,
        now: Duration,
        meter: &mut impl Meter,
    ) -> Step {
        let Some((id, then)) = self.reserving.take() else {
            return Step::Continue;
        };
        let joined = if won {
            self.join_now(table, id)
        } else {
            table.write().cancel_reservation(&id);
            Err(RelayError::PeerIdInUse(id.to_string()))
        };
        match (joined, then) {
            (Ok(()), Then::Route(inbound, size)) => {
                self.send_admitted(table, *inbound, size, now, meter)
            }
            (Ok(()), _) => Step::Continue,
            (Err(error), Then::Route(inbound, _)) => {
                let envelope = &inbound.envelope;
                let offending = Offending::of(envelope);
                self.reject(table, &error, offending, meter);
                Step::Continue
            }
            (Err(error), _) => {
                self.reject(table, &error, Offending::default(), meter);
                Step::Close(error)
            }
        }
    }

    /// Rate-checks and routes an envelope of a connection that has its id.
    fn send_admitted(
        &mut self,
        table: &impl Table<L>,
        inbound: Inbound,
        size: usize,
        now: Duration,
        meter: &mut impl Meter,
    ) -> Step {
        let envelope = &inbound.envelope;
        let offending = Offending::of(envelope);
        if let Some(error) = self.over_rate(table, size, now) {
            self.reject(table, &error, offending, meter);
            let max = table.read().config().limits.rate_limited_max;
            if self.rate_refusals >= max {
                return Step::Close(RelayError::RateLimited(format!(
                    "{max} envelopes in a row over the rate limit; disconnected"
                )));
            }
            return Step::Continue;
        }
        self.route(table, inbound, meter);
        Step::Continue
    }

    /// Checks an `Authenticate` envelope's proof and joins under the id it proves.
    fn authenticate(
        &mut self,
        table: &impl Table<L>,
        envelope: &Envelope,
        now: Duration,
    ) -> Result<Joining, RelayError> {
        let config = table.read().config().clone();
        let auth = &config.auth;
        let claimed = (!envelope.sender_id.is_empty())
            .then(|| envelope.sender_id.to_string())
            .or_else(|| self.wanted.as_ref().map(PeerId::to_string));
        let (id, method, allowed): (PeerId, &str, fn(crate::config::AuthMode) -> bool) =
            match Proof::parse(envelope.payload.get())? {
                Proof::Signed {
                    public_key,
                    signature,
                } => {
                    let nonce = self.nonce.ok_or_else(|| {
                        RelayError::InvalidSignature("this connection was sent no challenge".into())
                    })?;
                    let id = auth::verify_signed(
                        auth,
                        nonce,
                        claimed.as_deref(),
                        &public_key,
                        &signature,
                    )?;
                    (
                        id,
                        "a signed challenge",
                        crate::config::AuthMode::allows_signed,
                    )
                }
                Proof::Token(token) => {
                    let id = auth::verify_token(auth, &token, now.as_secs())?;
                    if let Some(claimed) = claimed.filter(|c| *c != id.as_str()) {
                        return Err(RelayError::SpoofedSender {
                            claimed: crate::id::truncate_for_display(&claimed),
                            actual: id.to_string(),
                        });
                    }
                    (id, "a token", crate::config::AuthMode::allows_token)
                }
            };
        let mode = auth.mode_for(id.as_str());
        if mode != crate::config::AuthMode::Open && !allowed(mode) {
            return Err(auth::refuse_mode(auth, &id, Some(method)));
        }
        self.join(table, id)
    }

    /// The rate limit this envelope of `size` bytes breaks, if any; counts refusals in a row.
    fn over_rate(
        &mut self,
        table: &impl Table<L>,
        size: usize,
        now: Duration,
    ) -> Option<RelayError> {
        let hub = table.read();
        let limits = &hub.config().limits;
        let messages = u64::from(limits.messages_per_second);
        let bytes = limits.bytes_per_second;
        // Both buckets are asked first, and only then charged, so a refusal costs nothing.
        let mut m = self.messages;
        let mut b = self.bytes;
        let error = if !m.take(1, messages, u64::from(limits.message_burst), now) {
            Some(format!(
                "over {messages} envelopes per second (burst {}); this envelope went nowhere",
                limits.message_burst
            ))
        } else if !b.take(size as u64, bytes, limits.byte_burst, now) {
            Some(format!(
                "over {bytes} bytes per second (burst {}); this envelope went nowhere",
                limits.byte_burst
            ))
        } else {
            None
        };
        match error {
            None => {
                (self.messages, self.bytes) = (m, b);
                self.rate_refusals = 0;
                None
            }
            Some(message) => {
                self.rate_refusals += 1;
                Some(RelayError::RateLimited(message))
            }
        }
    }

    /// Joins under `id`, or on a clustered hub reserves it for the bus to settle.
    fn join(&mut self, table: &impl Table<L>, id: PeerId) -> Result<Joining, RelayError> {
        {
            let mut hub = table.write();
            if hub.is_clustered() {
                hub.reserve(&id)?;
                return Ok(Joining::Reserving(id));
            }
        }
        self.join_now(table, id).map(|()| Joining::Done)
    }

    fn join_now(&mut self, table: &impl Table<L>, id: PeerId) -> Result<(), RelayError> {
        {
            let mut hub = table.write();
            hub.cancel_reservation(&id);
            let joined = hub.join(id.clone(), self.conn, self.link.clone())?;
            // Handed over under the lock, so the Welcome comes before anything routed to it.
            self.deliver_own(&joined.welcome);
            self.presence(&mut hub, joined.presence);
        }
        self.session.bind(id);
        Ok(())
    }

    /// Gives the envelope its id if the sender did not, then hands it to every recipient the
    /// rules name, under one read of the table.
    fn route(&mut self, table: &impl Table<L>, mut inbound: Inbound, meter: &mut impl Meter) {
        let Some(sender) = self.session.id() else {
            // Admission binds the session before routing; nothing to route from nobody.
            return;
        };
        if !self.announced {
            // Nobody hears from a peer before hearing of it: a join still waiting for the
            // presence timer is announced now.
            if table.read().join_pending(sender.as_str(), self.conn) {
                flush(&mut table.write(), &mut self.counts);
            }
            self.announced = true;
        }
        // Filled only when a recipient is a slow consumer: no allocation otherwise.
        let mut missed: Vec<PeerId> = Vec::new();
        let (routed, message) = {
            let hub = table.read();
            if inbound.envelope.message_id.is_empty() {
                let id = hub.next_message_id_in(&mut self.ids);
                // The sender's text stays the frame if only the id was missing from it.
                inbound.original = match inbound.original {
                    Some(SenderText::LacksMessageId(text)) => {
                        Some(SenderText::AsIs(prepend_message_id(&text, &id)))
                    }
                    _ => None,
                };
                inbound.envelope.message_id = id.into();
            }
            let message = Arc::new(inbound.into_message());
            let routed = hub
                .route_by_rule(sender, &message)
                .map(|(route, targets, forward)| {
                    let mut delivered = 0;
                    for (id, peer) in targets {
                        match peer.send(&message) {
                            Ok(()) => delivered += 1,
                            Err(Refused::SlowConsumer { newly }) => {
                                self.counts.slow_consumers += u64::from(newly);
                                missed.push(id.clone());
                            }
                            Err(Refused::Gone) => {}
                        }
                    }
                    self.counts.delivered += delivered;
                    meter.routed(route, delivered);
                    match (forward, hub.uplink()) {
                        (Forward::Nowhere, _) | (_, None) => Ok(()),
                        (forward, Some(uplink)) => {
                            uplink.forward(forward, &message).map_err(|_| {
                                let to = match forward {
                                    Forward::To(relay) => format!(
                                        "the relay holding {:?} ({})",
                                        envelope_recipient(&message),
                                        relay.name
                                    ),
                                    _ => "the other relays".to_owned(),
                                };
                                RelayError::RelayUnreachable(format!(
                                    "{to} cannot take more messages now"
                                ))
                            })
                        }
                    }
                });
            (routed, message)
        };
        let envelope = message.envelope();
        let offending = Offending::of(envelope);
        match routed {
            Ok(Ok(())) => self.counts.routed += 1,
            Ok(Err(unreachable)) => {
                self.counts.routed += 1;
                self.reject(table, &unreachable, offending, meter);
            }
            Err(error) => self.reject(table, &error, offending, meter),
        }
        for slow in missed {
            let error = RelayError::RecipientQueueFull(slow.to_string());
            self.reject(table, &error, offending, meter);
        }
    }

    /// Answers this connection with an `Error` envelope; the connection stays open.
    fn reject(
        &mut self,
        table: &impl Table<L>,
        error: &RelayError,
        offending: Offending<'_>,
        meter: &mut impl Meter,
    ) {
        let recipient = self.session.id().map_or("", PeerId::as_str);
        let message_id = table.read().next_message_id();
        self.counts.errors_sent += 1;
        meter.rejected(error.code());
        let message = error_message(message_id, recipient, error, offending);
        self.deliver_own(&Arc::new(message));
    }

    fn deliver_own(&mut self, message: &Arc<Message>) {
        if let Err(Refused::SlowConsumer { newly: true }) = self.link.send(message) {
            self.counts.slow_consumers += 1;
        }
    }
}

fn envelope_recipient(message: &Message) -> String {
    crate::id::truncate_for_display(&message.envelope().recipient_id)
}

/// What putting new rules in force did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconfigured {
    /// Peers handed the `ConfigChanged` notice (0 when what peers are told did not change).
    pub notified: u64,
    /// Peers whose full queue refused the notice: disconnected as slow consumers.
    pub slow_consumers: u64,
}

/// Puts `config` in force on `table` (a reload): the next envelope of every connection is sized,
/// and routed, by it. When what a `Welcome` announces changed, every connected peer is handed a
/// `ConfigChanged` carrying the new `limits` and `routing`, while the table is locked for the
/// swap: nothing routed by the new rules can reach a peer before its notice, and a peer that
/// joins afterwards learns the new rules from its `Welcome` instead.
pub fn reconfigure<L: Link>(table: &impl Table<L>, config: Arc<RelayConfig>) -> Reconfigured {
    let mut hub = table.write();
    let mut done = Reconfigured::default();
    if let Some(notice) = hub.set_config(config) {
        for (_, peer) in hub.peers() {
            match peer.send(&notice) {
                Ok(()) => done.notified += 1,
                Err(Refused::SlowConsumer { newly }) => done.slow_consumers += u64::from(newly),
                Err(Refused::Gone) => {}
            }
        }
    }
    done
}

/// The network's presence timer fired: announces what waits. Returns when to call again
/// (`None`: the timer stops until a connection asks for it again) and what the announcements
/// did (slow consumers they disconnected).
pub fn presence_timer_fired<L: Link>(table: &impl Table<L>) -> (Option<Duration>, Counts) {
    let mut counts = Counts::default();
    let mut hub = table.write();
    let effect = hub.presence_timer_fired();
    if effect.flush_now {
        flush(&mut hub, &mut counts);
    }
    (effect.arm, counts)
}

/// Announces what waits in the network's presence log to every peer it concerns.
pub(crate) fn flush<L: Link>(hub: &mut Hub<L>, counts: &mut Counts) {
    hub.flush_presence(|_, peer, message| {
        if let Err(Refused::SlowConsumer { newly: true }) = peer.send(message) {
            counts.slow_consumers += 1;
        }
    });
}

#[cfg(test)]
mod tests {
    //! The conversation, table by table, without sockets: links are in-memory logs.

    use std::cell::RefCell;
    use std::rc::Rc;

    use serde_json::Value;

    use super::*;

    /// What one peer received, as `(message_type, sender_id, payload)`.
    #[derive(Clone, Default)]
    struct Log {
        got: Rc<RefCell<Vec<Arc<Message>>>>,
        /// Refuse everything past this many messages (a slow consumer).
        capacity: Option<usize>,
        kicked: Rc<RefCell<bool>>,
    }

    impl Link for Log {
        fn send(&self, message: &Arc<Message>) -> Result<(), Refused> {
            let mut got = self.got.borrow_mut();
            if self.capacity.is_some_and(|c| got.len() >= c) {
                let newly = !self.kicked.replace(true);
                return Err(Refused::SlowConsumer { newly });
            }
            got.push(message.clone());
            Ok(())
        }
    }

    impl Log {
        fn take(&self) -> Vec<(String, String, String)> {
            self.got
                .borrow_mut()
                .drain(..)
                .map(|m| {
                    let e = m.envelope();
                    (
                        e.message_type.to_string(),
                        e.sender_id.to_string(),
                        e.payload.get().to_owned(),
                    )
                })
                .collect()
        }

        fn types(&self) -> Vec<String> {
            self.take().into_iter().map(|(t, _, _)| t).collect()
        }

        /// The payload of the one `Error` received since the last take.
        fn error_payload(&self) -> Value {
            let got = self.take();
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].0, "Error", "{got:?}");
            serde_json::from_str(&got[0].2).unwrap()
        }

        fn error_code(&self) -> String {
            self.error_payload()["code"].as_str().unwrap().to_owned()
        }
    }

    /// Each join and leave announced at once (`announce_window_ms = 0`, the behaviour before
    /// coalescing): the tests about routing and errors read announcements as they happen. The
    /// coalescing window has its own tests below.
    const RULES: &str = "[discovery]\nannounce_window_ms = 0\n[routing]\ndefault = \"broadcast\"\n[routing.rules]\nPing = \"echo\"\nSync = \"directed\"\nAsk = \"auto\"\n";

    struct Net {
        table: RwLock<Hub<Log>>,
        next: ConnId,
    }

    impl Net {
        fn new(toml: &str) -> Net {
            let config = RelayConfig::from_toml_str(toml, "t.toml").unwrap();
            Net {
                table: RwLock::new(Hub::new(Arc::new(config), 42)),
                next: 0,
            }
        }

        fn open(&mut self, link: Log) -> Connection<Log> {
            self.next += 1;
            Connection::open(self.next, link, &self.table)
        }

        /// A peer that claimed `id` at connect, its Welcome taken.
        fn peer(&mut self, id: &str) -> (Connection<Log>, Log) {
            let log = Log::default();
            let mut c = self.open(log.clone());
            assert_eq!(c.claim(&self.table, id), Step::Continue);
            assert_eq!(log.types(), ["Welcome"]);
            (c, log)
        }

        /// Peers `a`, `b` and `c`, with the announcements of the later joins taken.
        fn three(&mut self) -> [(Connection<Log>, Log); 3] {
            let peers = ["a", "b", "c"].map(|id| self.peer(id));
            for (_, log) in &peers {
                log.take();
            }
            peers
        }

        fn text(&self, c: &mut Connection<Log>, text: &str) -> Step {
            c.input(
                &self.table,
                Input::Text(ByteString::from(text)),
                Duration::ZERO,
            )
        }
    }

    fn envelope(ty: &str, from: &str, to: &str) -> String {
        format!(
            r#"{{"message_type":"{ty}","sender_id":"{from}","recipient_id":"{to}","payload":1}}"#
        )
    }

    #[test]
    fn join_welcomes_first_then_announces_to_the_others() {
        let mut net = Net::new(RULES);
        let (_a, a_log) = net.peer("a");
        let b_log = Log::default();
        let mut b = net.open(b_log.clone());
        assert_eq!(net.text(&mut b, &envelope("Ping", "b", "")), Step::Continue);
        // The Welcome, then the echo: never the other way round.
        assert_eq!(b_log.types(), ["Welcome", "Ping"]);
        assert_eq!(
            a_log.take(),
            [(
                "PeerJoined".into(),
                "relay".into(),
                r#"{"peer_id":"b"}"#.into()
            )]
        );
        assert_eq!(b.id().map(PeerId::as_str), Some("b"));
    }

    #[test]
    fn routing_follows_the_rules() {
        let mut net = Net::new(RULES);
        let [(mut a, a_log), (_b, b_log), (_c, c_log)] = net.three();
        // (envelope from a, what a, b and c receive)
        type Row<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let table: &[Row] = &[
            (&envelope("Ping", "a", "b"), &["Ping"], &[], &[]),
            (&envelope("Note", "a", ""), &[], &["Note"], &["Note"]),
            (&envelope("Sync", "a", "c"), &[], &[], &["Sync"]),
            (&envelope("Sync", "a", "ghost"), &["Error"], &[], &[]),
            (&envelope("Sync", "a", ""), &["Error"], &[], &[]),
            (&envelope("Note", "b", ""), &["Error"], &[], &[]),
            (&envelope("Note", "", ""), &[], &["Note"], &["Note"]),
            // auto: directed when addressed, broadcast when not.
            (&envelope("Ask", "a", "b"), &[], &["Ask"], &[]),
            (&envelope("Ask", "a", ""), &[], &["Ask"], &["Ask"]),
            (&envelope("Ask", "a", "ghost"), &["Error"], &[], &[]),
        ];
        for (text, to_a, to_b, to_c) in table {
            assert_eq!(net.text(&mut a, text), Step::Continue, "{text}");
            assert_eq!(a_log.types(), *to_a, "{text}: a");
            assert_eq!(b_log.types(), *to_b, "{text}: b");
            assert_eq!(c_log.types(), *to_c, "{text}: c");
        }
        assert_eq!(a.take_counts().errors_sent, 4);
    }

    #[test]
    fn every_refusal_is_an_error_envelope_to_the_connections_id_or_nobody() {
        let mut net = Net::new(RULES);
        let (_taken, _) = net.peer("taken");
        // (input, code), on an anonymous connection and on one bound as "me".
        let anonymous: &[(&str, &str)] = &[
            ("{", "invalid_json"),
            ("[1]", "not_an_object"),
            (r#"{"payload":1}"#, "missing_message_type"),
            (r#"{"message_type":"T","sender_id":1}"#, "invalid_field"),
            (r#"{"message_type":"T","x":1}"#, "unknown_field"),
            (r#"{"message_type":"T"}"#, "identity_required"),
            (
                r#"{"message_type":"T","sender_id":"a b"}"#,
                "invalid_peer_id",
            ),
            (
                r#"{"message_type":"T","sender_id":"relay"}"#,
                "reserved_peer_id",
            ),
            (
                r#"{"message_type":"T","sender_id":"taken"}"#,
                "peer_id_in_use",
            ),
        ];
        let log = Log::default();
        let mut anon = net.open(log.clone());
        for (text, code) in anonymous {
            assert_eq!(net.text(&mut anon, text), Step::Continue);
            let got = log.got.borrow()[0].clone();
            assert_eq!(got.envelope().recipient_id, "", "{text}");
            assert_eq!(log.error_code(), *code, "{text}");
        }
        assert!(
            anon.id().is_none(),
            "still anonymous, free to pick another id"
        );

        let (mut me, log) = net.peer("me");
        assert_eq!(
            me.input(&net.table, Input::Binary, Duration::ZERO),
            Step::Continue
        );
        assert_eq!(log.got.borrow()[0].envelope().recipient_id, "me");
        assert_eq!(log.error_code(), "unsupported_frame");
        let big = format!(
            r#"{{"message_type":"T","payload":"{}"}}"#,
            "x".repeat(2 << 20)
        );
        assert_eq!(net.text(&mut me, &big), Step::Continue);
        assert_eq!(log.error_code(), "message_too_large");
        assert_eq!(
            net.text(&mut me, &envelope("T", "other", "")),
            Step::Continue
        );
        assert_eq!(log.error_code(), "spoofed_sender");
    }

    fn ids_of(log: &Log) -> Vec<String> {
        log.got
            .borrow_mut()
            .drain(..)
            .map(|m| m.envelope().message_id.to_string())
            .collect()
    }

    #[test]
    fn a_senders_message_id_is_delivered_exactly_and_its_text_forwarded_as_is() {
        let mut net = Net::new(RULES);
        let (mut a, _) = net.peer("a");
        let (_b, b_log) = net.peer("b");
        let text = r#"{"message_type":"Note","message_id":"6f1c-id","sender_id":"a","recipient_id":"","payload": [1]}"#;
        let _ = net.text(&mut a, text);
        let got = b_log.got.borrow_mut().remove(0);
        assert_eq!(got.envelope().message_id, "6f1c-id");
        assert_eq!(got.json_str(), text, "forwarded as sent");
    }

    #[test]
    fn a_text_lacking_only_its_id_is_forwarded_with_the_assigned_id_in_front() {
        let mut net = Net::new(RULES);
        let (mut a, _) = net.peer("a");
        let (_b, b_log) = net.peer("b");
        let text = r#"{"message_type":"Note","sender_id":"a","recipient_id":"","payload": [1]}"#;
        let _ = net.text(&mut a, text);
        let got = b_log.got.borrow_mut().remove(0);
        let id = &got.envelope().message_id;
        assert_eq!(
            got.json_str(),
            format!(
                r#"{{"message_id":"{id}","message_type":"Note","sender_id":"a","recipient_id":"","payload": [1]}}"#
            )
        );
    }

    #[test]
    fn without_an_id_the_relay_assigns_one_that_every_recipient_shares() {
        let mut net = Net::new(RULES);
        let [(mut a, a_log), (_b, b_log), (_c, c_log)] = net.three();
        for text in [
            r#"{"message_type":"Note","sender_id":"a","payload":1}"#,
            r#"{"message_type":"Note","message_id":"","sender_id":"a","payload":1}"#,
            r#"{"message_type":"Note","message_id":null,"sender_id":"a","payload":1}"#,
        ] {
            let _ = net.text(&mut a, text);
            let (b_ids, c_ids) = (ids_of(&b_log), ids_of(&c_log));
            assert_eq!(b_ids.len(), 1, "{text}");
            assert_eq!(b_ids, c_ids, "{text}");
            assert_eq!(b_ids[0].len(), 36, "{text}: a UUID, got {:?}", b_ids[0]);
        }
        // The relay's own envelopes carry ids too, all different.
        let _ = net.text(&mut a, &envelope("Sync", "a", "ghost"));
        let (_d, _) = net.peer("d");
        let mut ids = ids_of(&a_log);
        assert_eq!(ids.len(), 2, "an Error and a PeerJoined");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2);
        assert!(ids.iter().all(|id| id.len() == 36));
    }

    #[test]
    fn errors_name_the_offending_message_id_and_bad_ids_are_refused() {
        let mut net = Net::new(RULES);
        let (mut a, log) = net.peer("a");
        let _ = net.text(
            &mut a,
            r#"{"message_type":"Sync","message_id":"req-7","sender_id":"a","recipient_id":"ghost"}"#,
        );
        let payload = log.error_payload();
        assert_eq!(
            (payload["code"].as_str(), payload["message_id"].as_str()),
            (Some("unknown_recipient"), Some("req-7"))
        );
        for bad in [r#""has space""#, r#""""#, "7"] {
            let text = format!(r#"{{"message_type":"T","message_id":{bad},"sender_id":"a"}}"#);
            let _ = net.text(&mut a, &text);
            let expect = match bad {
                "7" => "invalid_field",
                // Empty means none given: the relay assigns one, nothing to refuse.
                r#""""# => {
                    assert!(log.types().is_empty(), "{text}");
                    continue;
                }
                _ => "invalid_message_id",
            };
            assert_eq!(log.error_code(), expect, "{text}");
        }
        // A spoofed sender's error still names its (valid) message id.
        let _ = net.text(
            &mut a,
            r#"{"message_type":"T","message_id":"m9","sender_id":"zed"}"#,
        );
        assert_eq!(log.error_payload()["message_id"], "m9");
    }

    #[test]
    fn errors_name_the_offending_type() {
        let mut net = Net::new(RULES);
        let (mut a, log) = net.peer("a");
        let _ = net.text(&mut a, &envelope("Sync", "a", "ghost"));
        let payload = log.error_payload();
        assert_eq!(payload["message_type"], "Sync");
        assert_eq!(payload["code"], "unknown_recipient");
    }

    #[test]
    fn a_refused_claim_at_connect_is_told_and_closes() {
        let mut net = Net::new(RULES);
        let (_a, _) = net.peer("a");
        for (raw, code, ws, grpc) in [
            ("a", "peer_id_in_use", 1008, 6),
            ("bad id", "invalid_peer_id", 1008, 3),
            ("relay", "reserved_peer_id", 1008, 3),
        ] {
            let log = Log::default();
            let mut c = net.open(log.clone());
            let Step::Close(error) = c.claim(&net.table, raw) else {
                panic!("{raw}: not closed");
            };
            assert_eq!(error.code().as_str(), code);
            assert_eq!((error.ws_close_code(), error.grpc_code()), (ws, grpc));
            assert!(error.close_reason().starts_with(code));
            assert_eq!(log.error_code(), code);
        }
    }

    #[test]
    fn an_oversized_frame_closes_with_1009() {
        let mut net = Net::new("[limits]\nmax_message_bytes = 1000\n");
        let (mut a, _) = net.peer("a");
        let Step::Close(error) = a.input(&net.table, Input::OversizedFrame, Duration::ZERO) else {
            panic!("not closed");
        };
        assert_eq!(error.ws_close_code(), 1009);
        assert!(error
            .close_reason()
            .starts_with("message_too_large: a frame over 66536 bytes"));
    }

    /// The front's memory bounds end the connection with the core's codes: an anonymous frame
    /// over its limit like any oversized frame (1009, naming that limit), a message over the
    /// shared budget with 1013 ("try again later").
    #[test]
    fn the_fronts_memory_bounds_close_with_1009_and_1013() {
        let mut net = Net::new(RULES);
        let log = Log::default();
        let mut anonymous = net.open(log.clone());
        let input = Input::OversizedAnonymousFrame { limit: 65_536 };
        let Step::Close(error) = anonymous.input(&net.table, input, Duration::ZERO) else {
            panic!("not closed");
        };
        assert_eq!((error.ws_close_code(), error.grpc_code()), (1009, 8));
        assert!(error
            .close_reason()
            .starts_with("message_too_large: a frame over 65536 bytes"));
        let (mut a, _) = net.peer("a");
        let input = Input::OverMemoryBudget { budget: 1 << 26 };
        let Step::Close(error) = a.input(&net.table, input, Duration::ZERO) else {
            panic!("not closed");
        };
        assert_eq!((error.ws_close_code(), error.grpc_code()), (1013, 8));
        assert!(error
            .close_reason()
            .starts_with("memory_budget_exhausted: the relay's memory"));
        assert!(
            log.take().is_empty(),
            "no Error envelope: the close says why"
        );
    }

    #[test]
    fn leaving_announces_once_and_frees_the_id() {
        let mut net = Net::new(RULES);
        let (mut a, _) = net.peer("a");
        let (_b, b_log) = net.peer("b");
        a.leave(&net.table);
        a.leave(&net.table);
        assert_eq!(
            b_log.take(),
            [(
                "PeerLeft".into(),
                "relay".into(),
                r#"{"peer_id":"a"}"#.into()
            )]
        );
        let (_again, _) = net.peer("a");
    }

    #[test]
    fn a_resumed_connection_leaves_a_table_that_forgot_it() {
        let mut net = Net::new(RULES);
        let (_b, b_log) = net.peer("b");
        // The table lost "a" (an evicted Worker room rebuilt without its socket).
        let mut a = Connection::resume(99, Log::default(), PeerId::parse("a").ok(), &net.table);
        a.leave(&net.table);
        assert_eq!(b_log.types(), ["PeerLeft"]);
        // But a connection cannot remove an id another connection holds now.
        let (_a2, _) = net.peer("a");
        assert_eq!(b_log.types(), ["PeerJoined"]);
        let mut stale = Connection::resume(98, Log::default(), PeerId::parse("a").ok(), &net.table);
        stale.leave(&net.table);
        assert!(b_log.types().is_empty());
        assert!(Table::read(&net.table).get("a").is_some());
    }

    #[test]
    fn announcements_follow_the_switch() {
        let mut net = Net::new("[discovery]\nannounce_peers = false\n");
        let (mut a, a_log) = net.peer("a");
        let (b, _) = net.peer("b");
        drop(b);
        a.leave(&net.table);
        assert!(a_log.types().is_empty());
    }

    /// Records what a connection tells its meter.
    #[derive(Default)]
    struct Tape {
        routed: Vec<(Option<String>, &'static str, u64)>,
        rejected: Vec<&'static str>,
    }

    impl Meter for Tape {
        fn routed(&mut self, route: Route<'_>, delivered: u64) {
            self.routed.push((
                route.rule.map(str::to_owned),
                route.mode.as_str(),
                delivered,
            ));
        }
        fn rejected(&mut self, code: ErrorCode) {
            self.rejected.push(code.as_str());
        }
    }

    #[test]
    fn the_meter_hears_each_routing_by_rule_and_mode_and_each_refusal_by_code() {
        let mut net = Net::new(RULES);
        let [(mut a, _), (_b, _), (_c, _)] = net.three();
        let mut tape = Tape::default();
        for text in [
            envelope("Ping", "a", ""),
            envelope("Note", "a", ""),
            envelope("Sync", "a", "c"),
            envelope("Ask", "a", ""),
            envelope("Sync", "a", "ghost"),
            "{".to_owned(),
        ] {
            let step = a.input_metered(
                &net.table,
                Input::Text(ByteString::from(text)),
                Duration::ZERO,
                &mut tape,
            );
            assert_eq!(step, Step::Continue);
        }
        let anon_log = Log::default();
        let mut anon = net.open(anon_log);
        let _ = anon.claim_metered(&net.table, "a", &mut tape);
        assert_eq!(
            tape.routed,
            [
                (Some("Ping".to_owned()), "echo", 1),
                (None, "broadcast", 2),
                (Some("Sync".to_owned()), "directed", 1),
                (Some("Ask".to_owned()), "broadcast", 2),
            ]
        );
        assert_eq!(
            tape.rejected,
            ["unknown_recipient", "invalid_json", "peer_id_in_use"]
        );
    }

    /// A reload: every connected peer gets `ConfigChanged` first, then what the new rules route;
    /// the next envelope of an open connection is sized by the new limit; a later joiner learns
    /// the rules from its Welcome; and a reload that changes nothing announced tells nobody.
    #[test]
    fn a_reload_is_announced_before_anything_it_routes() {
        let mut net = Net::new(RULES);
        let [(mut a, a_log), (_b, b_log), (_c, c_log)] = net.three();
        let config = |toml: &str| Arc::new(RelayConfig::from_toml_str(toml, "t.toml").unwrap());
        let louder = RULES.replace("Ping = \"echo\"", "Ping = \"broadcast\"")
            + "[limits]\nmax_message_bytes = 300\n";
        let done = reconfigure(&net.table, config(&louder));
        assert_eq!(
            done,
            Reconfigured {
                notified: 3,
                slow_consumers: 0
            }
        );
        assert_eq!(net.text(&mut a, &envelope("Ping", "a", "")), Step::Continue);
        assert_eq!(a_log.types(), ["ConfigChanged"]);
        assert_eq!(b_log.types(), ["ConfigChanged", "Ping"]);
        assert_eq!(c_log.types(), ["ConfigChanged", "Ping"]);
        // The open connection's next envelope is sized by the new limit.
        let big = format!(
            r#"{{"message_type":"Ping","payload":"{}"}}"#,
            "x".repeat(300)
        );
        assert_eq!(net.text(&mut a, &big), Step::Continue);
        assert_eq!(a_log.error_code(), "message_too_large");
        // A later joiner: the new rules in its Welcome, no notice.
        let (_d, d_log) = net.peer("d");
        assert!(d_log.types().is_empty());
        for log in [&a_log, &b_log, &c_log] {
            assert_eq!(log.types(), ["PeerJoined"]);
        }
        // Keys peers are not told about: nobody hears of it.
        let quiet = louder.replace(
            "announce_window_ms = 0\n",
            "announce_window_ms = 0\nwelcome_peers_max = 3\n",
        );
        assert_eq!(
            reconfigure(&net.table, config(&quiet)),
            Reconfigured::default()
        );
        let _ = net.text(&mut a, &envelope("Ping", "a", ""));
        assert!(a_log.types().is_empty());
        assert_eq!(
            b_log.types(),
            ["Ping"],
            "the sentinel, with nothing before it"
        );
    }

    #[test]
    fn a_slow_recipient_is_counted_once_and_every_sender_told() {
        let mut net = Net::new(RULES);
        let (mut a, a_log) = net.peer("a");
        let slow = Log {
            capacity: Some(1),
            ..Log::default()
        };
        let mut s = net.open(slow.clone());
        assert_eq!(s.claim(&net.table, "slow"), Step::Continue);
        a_log.take();
        for _ in 0..3 {
            let _ = net.text(&mut a, &envelope("Sync", "a", "slow"));
            assert_eq!(a_log.error_code(), "recipient_queue_full");
        }
        let counts = a.take_counts();
        assert_eq!(
            (counts.slow_consumers, counts.routed, counts.delivered),
            (1, 3, 0)
        );
        assert_eq!(a.take_counts(), Counts::default());
    }

    // ---- Presence: coalesced announcements, with the presence timer in the test's hands ----

    /// A network whose presence timer is fired by the test, and its connections by name.
    struct Timed {
        net: Net,
        peers: std::collections::BTreeMap<String, (Connection<Log>, Log)>,
        /// The core asked for the timer and it has not stopped since.
        armed: bool,
    }

    impl Timed {
        fn new(toml: &str) -> Timed {
            Timed {
                net: Net::new(toml),
                peers: Default::default(),
                armed: false,
            }
        }

        /// Takes a connection's request for the timer: one timer per network, never two.
        fn poll(&mut self, c: &mut Connection<Log>) {
            if c.poll_presence_timer().is_some() {
                assert!(!self.armed, "the timer was asked for while it runs");
                self.armed = true;
            }
        }

        /// `+a` joins as a, `-a` leaves, `a>` a broadcasts a `Note`, `t` fires the timer.
        fn run(&mut self, op: &str) {
            if let Some(id) = op.strip_prefix('+') {
                let log = Log::default();
                let mut c = self.net.open(log.clone());
                assert_eq!(c.claim(&self.net.table, id), Step::Continue, "{op}");
                assert_eq!(log.got.borrow()[0].envelope().message_type, "Welcome");
                log.got.borrow_mut().remove(0);
                self.poll(&mut c);
                self.peers.insert(id.to_owned(), (c, log));
            } else if let Some(id) = op.strip_prefix('-') {
                let (mut c, _) = self.peers.remove(id).expect(op);
                c.leave(&self.net.table);
                self.poll(&mut c);
            } else if let Some(id) = op.strip_suffix('>') {
                let (mut c, log) = self.peers.remove(id).expect(op);
                let _ = self.net.text(&mut c, &envelope("Note", id, ""));
                self.poll(&mut c);
                self.peers.insert(id.to_owned(), (c, log));
            } else {
                assert_eq!(op, "t");
                assert!(self.armed, "the timer fired without being asked for");
                let (next, _) = presence_timer_fired(&self.net.table);
                self.armed = next.is_some();
            }
        }

        /// What `id` received since the last call, one token per envelope: `+x` PeerJoined,
        /// `-x` PeerLeft, `*-x+y` PeersChanged (its lefts, then its joins), `Note<a`.
        fn received(&self, id: &str) -> String {
            let log = &self.peers[id].1;
            let tokens: Vec<String> = log.got.borrow_mut().drain(..).map(|m| render(&m)).collect();
            tokens.join(" ")
        }
    }

    fn render(m: &Message) -> String {
        let e = m.envelope();
        let p: Value = serde_json::from_str(e.payload.get()).unwrap();
        match &*e.message_type {
            "PeerJoined" => format!("+{}", p["peer_id"].as_str().unwrap()),
            "PeerLeft" => format!("-{}", p["peer_id"].as_str().unwrap()),
            "PeersChanged" => {
                let ids = |key: &str, sign: &str| -> String {
                    p[key]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|id| format!("{sign}{}", id.as_str().unwrap()))
                        .collect()
                };
                format!("*{}{}", ids("left", "-"), ids("joined", "+"))
            }
            other => format!("{other}<{}", e.sender_id),
        }
    }

    const WINDOWED: &str =
        "[discovery]\nannounce_window_ms = 50\n[routing]\ndefault = \"broadcast\"\n";

    /// (config, ops, what each peer connected at the end received; every other one nothing)
    type PresenceRow<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    #[test]
    fn presence_table() {
        const ZERO: &str = "[discovery]\nannounce_window_ms = 0\n";
        const CUT: &str = "[discovery]\nwelcome_peers_max = 1\n";
        const OFF: &str = "[discovery]\nannounce_peers = false\n";
        let table: &[PresenceRow] = &[
            // A burst: one envelope for those there before it; a newcomer hears only of later
            // joins (never of one its Welcome listed).
            (
                WINDOWED,
                "+w +a +b +c t",
                &[("w", "*+a+b+c"), ("a", "*+b+c"), ("b", "+c"), ("c", "")],
            ),
            // A change while no timer runs is announced at once, in today's shape.
            (WINDOWED, "+w t +a", &[("w", "+a"), ("a", "")]),
            // Joined and left within the window: announced to nobody who never saw it.
            (WINDOWED, "+w +a -a t", &[("w", "")]),
            // b saw a in its Welcome, so b hears a leave; w never saw a.
            (WINDOWED, "+w +a +b -a t", &[("w", "+b"), ("b", "-a")]),
            // The id reused by another connection within the window: left, then joined.
            (WINDOWED, "+w +a t -a +a t", &[("w", "+a *-a+a"), ("a", "")]),
            // A newcomer's envelope waits for nobody: its join is announced first.
            (WINDOWED, "+w +a a>", &[("w", "+a Note<a"), ("a", "")]),
            (
                WINDOWED,
                "+w +a +b a>",
                &[("w", "*+a+b Note<a"), ("a", "+b"), ("b", "Note<a")],
            ),
            // After the flush it forced, the window still runs: later changes wait for it.
            (
                WINDOWED,
                "+w +a a> +b +c t t",
                &[
                    ("w", "+a Note<a *+b+c"),
                    ("a", "*+b+c"),
                    ("b", "+c"),
                    ("c", ""),
                ],
            ),
            // Window 0: every change at once, one by one, as before coalescing.
            (ZERO, "+w +a +b -a", &[("w", "+a +b -a"), ("b", "-a")]),
            // A cut Welcome (one id of three): the newcomer hears of the leaves of peers it was
            // not told the names of (as before coalescing), never of their joins.
            (
                CUT,
                "+w +x +y t +late -x -w t",
                &[("y", "*-w-x+late"), ("late", "*-w-x")],
            ),
            (OFF, "+w +a +b -a", &[("w", ""), ("b", "")]),
        ];
        for (config, ops, expect) in table {
            let mut net = Timed::new(config);
            for op in ops.split(' ') {
                net.run(op);
            }
            let mut expected: std::collections::BTreeMap<&str, String> = net
                .peers
                .keys()
                .map(|k| (k.as_str(), String::new()))
                .collect();
            for (peer, got) in *expect {
                assert!(
                    expected.contains_key(peer),
                    "{ops}: {peer} is not connected"
                );
                expected.insert(peer, (*got).to_owned());
            }
            for (peer, want) in expected {
                assert_eq!(
                    net.received(peer),
                    want,
                    "{config}{ops}: what {peer} received"
                );
            }
        }
    }

    /// Random interleavings of joins (ids reused often), leaves, broadcasts and timer firings,
    /// checked against a model of what each peer must know: every connection of another peer
    /// exactly once (by its Welcome or an announcement), never a join of a peer that is gone or
    /// already known, never a leave of one it did not know, never a message from a peer it has
    /// not heard of; and once the timer stops, each peer knows exactly who is connected.
    /// Deterministic (a fixed LCG per seed), so a failure replays.
    #[test]
    fn presence_randomized_against_a_model() {
        use std::collections::BTreeMap;
        const CONFIGS: &[&str] = &[
            WINDOWED,
            "[discovery]\nannounce_window_ms = 0\n",
            "[discovery]\nwelcome_peers_max = 1\n",
        ];
        const IDS: &[&str] = &["a", "b", "c", "d", "e"];
        let mut checked = 0;
        for config in CONFIGS {
            for seed in 0..300u64 {
                let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut next = |bound: usize| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) as usize) % bound
                };
                let mut net = Timed::new(config);
                // Truth: id → the connection holding it. Views: peer → (id → connection).
                let mut truth: BTreeMap<String, ConnId> = BTreeMap::new();
                let mut views: BTreeMap<String, BTreeMap<String, ConnId>> = BTreeMap::new();
                let mut trail = Vec::new();
                let mut step = |net: &mut Timed,
                                truth: &mut BTreeMap<String, ConnId>,
                                views: &mut BTreeMap<String, BTreeMap<String, ConnId>>,
                                op: String| {
                    trail.push(op.clone());
                    let context = || format!("{config} seed {seed}: {}", trail.join(" "));
                    net.run(&op);
                    if let Some(id) = op.strip_prefix('+') {
                        views.insert(id.to_owned(), truth.clone());
                        truth.insert(id.to_owned(), net.peers[id].0.conn_id());
                    } else if let Some(id) = op.strip_prefix('-') {
                        truth.remove(id);
                        views.remove(id);
                    }
                    for (peer, view) in views.iter_mut() {
                        for token in net.received(peer).split(' ').filter(|t| !t.is_empty()) {
                            if let Some((_, sender)) = token.split_once('<') {
                                assert_eq!(
                                    view.get(sender),
                                    truth.get(sender),
                                    "{}: {peer} heard from {sender} before hearing of it",
                                    context()
                                );
                                continue;
                            }
                            let token = token.trim_start_matches('*');
                            let mut rest = token;
                            while !rest.is_empty() {
                                let sign = &rest[..1];
                                let end = rest[1..].find(['+', '-']).map_or(rest.len(), |i| i + 1);
                                let id = &rest[1..end];
                                rest = &rest[end..];
                                if sign == "-" {
                                    let known = view.remove(id);
                                    assert!(
                                        known.is_some(),
                                        "{}: {peer} told {id} left, never knew it",
                                        context()
                                    );
                                    assert_ne!(
                                        known,
                                        truth.get(id).copied(),
                                        "{}: {peer} told {id} left, still connected",
                                        context()
                                    );
                                } else {
                                    let now = truth.get(id).copied();
                                    assert!(
                                        now.is_some(),
                                        "{}: {peer} told {id} joined, gone",
                                        context()
                                    );
                                    let before = view.insert(id.to_owned(), now.unwrap());
                                    assert!(
                                        before.is_none(),
                                        "{}: {peer} told {id} joined twice",
                                        context()
                                    );
                                }
                            }
                        }
                    }
                };
                for _ in 0..40 {
                    let live: Vec<String> = truth.keys().cloned().collect();
                    let op = match next(8) {
                        0..=2 => {
                            let id = IDS[next(IDS.len())];
                            if truth.contains_key(id) {
                                continue;
                            }
                            format!("+{id}")
                        }
                        3 | 4 if !live.is_empty() => format!("-{}", live[next(live.len())]),
                        5 if !live.is_empty() => format!("{}>", live[next(live.len())]),
                        _ if net.armed => "t".to_owned(),
                        _ => continue,
                    };
                    step(&mut net, &mut truth, &mut views, op);
                }
                while net.armed {
                    step(&mut net, &mut truth, &mut views, "t".to_owned());
                }
                for (peer, view) in &views {
                    let mut others = truth.clone();
                    others.remove(peer);
                    assert_eq!(view, &others, "{config} seed {seed}: what {peer} knows");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 900);
    }

    mod trust {
        //! The auth steps, the identification deadline and the rate limits, as conversations.

        use super::*;
        use crate::auth::{signed_message, Secret};
        use ed25519_dalek::{Signer, SigningKey};

        const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
        const NOW: Duration = Duration::from_secs(1_800_000_000);

        fn net(toml: &str) -> Net {
            let mut config = RelayConfig::from_toml_str(toml, "t.toml").unwrap();
            config.auth.token_secret = Some(Secret::new(SECRET).unwrap());
            Net {
                table: RwLock::new(Hub::new(Arc::new(config), 42)),
                next: 0,
            }
        }

        const SIGNED: &str = "[discovery]\nannounce_window_ms = 0\n[auth]\nmode = \"signed\"\ntoken_secret_env = \"S\"\n[auth.prefixes]\n\"web-\" = \"token\"\n\"open-\" = \"open\"\n";

        fn begin(
            net: &mut Net,
            node_id: Option<&str>,
            token: Option<&str>,
            nonce: u8,
        ) -> (Connection<Log>, Log, Step) {
            let log = Log::default();
            let mut c = net.open(log.clone());
            let step = c.begin(
                &net.table,
                Handshake {
                    node_id,
                    token,
                    nonce: Nonce([nonce; 32]),
                    now: NOW,
                },
            );
            (c, log, step)
        }

        fn authenticate(key: &SigningKey, nonce: u8, id: &str) -> String {
            let sig = key.sign(&signed_message("gsio-relay", Nonce([nonce; 32]), id));
            format!(
                r#"{{"message_type":"Authenticate","message_id":"m1","sender_id":"{id}","payload":{{"public_key":"{}","signature":"{}"}}}}"#,
                hex::encode(key.verifying_key().as_bytes()),
                hex::encode(sig.to_bytes())
            )
        }

        fn token(sub: &str, exp: u64) -> String {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            use base64::Engine as _;
            use hmac::Mac as _;
            let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
            let c = URL_SAFE_NO_PAD.encode(format!(
                r#"{{"sub":"{sub}","aud":"gsio-relay","exp":{exp}}}"#
            ));
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
            mac.update(format!("{h}.{c}").as_bytes());
            format!(
                "{h}.{c}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            )
        }

        fn text_at(net: &Net, c: &mut Connection<Log>, text: &str, now: Duration) -> Step {
            c.input(&net.table, Input::Text(ByteString::from(text)), now)
        }

        #[test]
        fn a_signed_node_is_challenged_first_then_welcomed() {
            let mut net = net(SIGNED);
            let key = SigningKey::from_bytes(&[7; 32]);
            let id = crate::auth::derived_id(key.verifying_key().as_bytes());
            let (mut c, log, step) = begin(&mut net, None, None, 1);
            assert_eq!(step, Step::Continue);
            let got = log.take();
            assert_eq!(got.len(), 1);
            assert_eq!(
                (got[0].0.as_str(), got[0].1.as_str()),
                ("Challenge", "relay")
            );
            let challenge: Value = serde_json::from_str(&got[0].2).unwrap();
            assert_eq!(challenge["nonce"], hex::encode([1u8; 32]));
            assert_eq!(challenge["audience"], "gsio-relay");
            assert_eq!(challenge["methods"], serde_json::json!(["signed", "token"]));
            assert_eq!(
                text_at(&net, &mut c, &authenticate(&key, 1, id.as_str()), NOW),
                Step::Continue
            );
            assert_eq!(log.types(), ["Welcome"]);
            assert_eq!(c.id(), Some(&id));
            assert_eq!(c.deadline(), None);
            // Authenticate again, once identified: refused, never routed.
            assert_eq!(
                text_at(&net, &mut c, &authenticate(&key, 1, id.as_str()), NOW),
                Step::Continue
            );
            assert_eq!(log.error_code(), "already_identified");
        }

        #[test]
        fn failed_proofs_close_with_their_code_and_nothing_joins() {
            let key = SigningKey::from_bytes(&[7; 32]);
            let derived = crate::auth::derived_id(key.verifying_key().as_bytes()).to_string();
            let cases: Vec<(String, &str)> = vec![
                // Signed for another connection's challenge: a replay.
                (authenticate(&key, 2, &derived), "invalid_signature"),
                // A good signature for an id the key may not take.
                (authenticate(&key, 1, "node-9"), "key_not_allowed"),
                // A token for an id whose rule wants a key.
                (
                    format!(
                        r#"{{"message_type":"Authenticate","payload":{{"token":"{}"}}}}"#,
                        token("node-1", NOW.as_secs() + 60)
                    ),
                    "authentication_required",
                ),
                (
                    format!(
                        r#"{{"message_type":"Authenticate","payload":{{"token":"{}"}}}}"#,
                        token("web-1", NOW.as_secs() - 100)
                    ),
                    "token_expired",
                ),
                (
                    r#"{"message_type":"Authenticate","payload":{"token":"x.y.z"}}"#.to_owned(),
                    "invalid_token",
                ),
                (
                    r#"{"message_type":"Authenticate","payload":{}}"#.to_owned(),
                    "invalid_field",
                ),
            ];
            for (text, code) in cases {
                let mut net = net(SIGNED);
                let (_watcher, watcher_log, _) = begin(&mut net, Some("open-w"), None, 9);
                watcher_log.take();
                let (mut c, log, _) = begin(&mut net, None, None, 1);
                log.take();
                let step = text_at(&net, &mut c, &text, NOW);
                assert!(
                    matches!(&step, Step::Close(e) if e.code().as_str() == code),
                    "{text}: {step:?}"
                );
                assert_eq!(log.error_code(), code, "{text}");
                assert_eq!(c.id(), None, "{text}");
                assert!(watcher_log.take().is_empty(), "{text}: nobody hears of it");
            }
        }

        #[test]
        fn an_id_that_needs_proof_cannot_be_named_into() {
            let mut net = net(SIGNED);
            let (mut c, log, _) = begin(&mut net, None, None, 1);
            log.take();
            // By first envelope: refused, still anonymous, free to authenticate.
            assert_eq!(
                text_at(&net, &mut c, &envelope("Note", "node-1", ""), NOW),
                Step::Continue
            );
            assert_eq!(log.error_code(), "authentication_required");
            assert_eq!(c.id(), None);
            // An open prefix is taken by naming it, with no challenge sent after it.
            let (o, o_log, step) = begin(&mut net, Some("open-1"), None, 2);
            assert_eq!(step, Step::Continue);
            assert_eq!(o_log.types(), ["Welcome"]);
            assert_eq!(o.id().map(PeerId::as_str), Some("open-1"));
            // By ?node_id= with a rule that wants a key: challenged, and the Authenticate
            // without sender_id takes that id.
            let key = SigningKey::from_bytes(&[7; 32]);
            let mut bound = self::net(&format!(
                "{SIGNED}[auth.keys]\nnode-1 = \"{}\"\n",
                hex::encode(key.verifying_key().as_bytes())
            ));
            let (mut n, n_log, step) = begin(&mut bound, Some("node-1"), None, 3);
            assert_eq!(step, Step::Continue);
            assert_eq!(n_log.types(), ["Challenge"]);
            let sig = key.sign(&signed_message("gsio-relay", Nonce([3; 32]), "node-1"));
            let text = format!(
                r#"{{"message_type":"Authenticate","payload":{{"public_key":"{}","signature":"{}"}}}}"#,
                hex::encode(key.verifying_key().as_bytes()),
                hex::encode(sig.to_bytes())
            );
            assert_eq!(text_at(&bound, &mut n, &text, NOW), Step::Continue);
            assert_eq!(n_log.types(), ["Welcome"]);
            assert_eq!(n.id().map(PeerId::as_str), Some("node-1"));
        }

        #[test]
        fn a_token_at_connect_joins_at_once_or_closes() {
            let mut net = net(SIGNED);
            let good = token("web-1", NOW.as_secs() + 60);
            let (c, log, step) = begin(&mut net, None, Some(&good), 1);
            assert_eq!(step, Step::Continue);
            assert_eq!(log.types(), ["Welcome"], "no challenge once proven");
            assert_eq!(c.id().map(PeerId::as_str), Some("web-1"));
            let refused = [
                (
                    Some("web-2"),
                    token("web-2", NOW.as_secs() - 60),
                    "token_expired",
                ),
                (Some("web-3"), good.clone(), "spoofed_sender"),
                (
                    None,
                    token("node-1", NOW.as_secs() + 60),
                    "authentication_required",
                ),
                (None, format!("{good}x"), "invalid_token"),
            ];
            for (node_id, token, code) in refused {
                let (c, log, step) = begin(&mut net, node_id, Some(&token), 2);
                assert!(
                    matches!(&step, Step::Close(e) if e.code().as_str() == code),
                    "{code}: {step:?}"
                );
                assert_eq!(log.error_code(), code);
                assert_eq!(c.id(), None);
            }
        }

        #[test]
        fn open_relays_send_no_challenge_and_every_connection_has_a_deadline() {
            let mut net = net("[limits]\nidentify_timeout_ms = 500\n");
            let (mut c, log, step) = begin(&mut net, None, None, 1);
            assert_eq!(step, Step::Continue);
            assert!(
                log.take().is_empty(),
                "open: nothing before the first envelope"
            );
            assert_eq!(c.deadline(), Some(NOW + Duration::from_millis(500)));
            let early = NOW + Duration::from_millis(499);
            assert_eq!(c.timed_out(&net.table, early, &mut ()), Step::Continue);
            let late = NOW + Duration::from_millis(500);
            let step = c.timed_out(&net.table, late, &mut ());
            assert!(
                matches!(&step, Step::Close(e) if e.code() == ErrorCode::IdentificationTimeout),
                "{step:?}"
            );
            assert_eq!(log.error_code(), "identification_timeout");
            // Identified in time: no deadline any more.
            let (mut d, d_log, _) = begin(&mut net, None, None, 2);
            assert_eq!(
                text_at(&net, &mut d, &envelope("Note", "d", ""), NOW),
                Step::Continue
            );
            assert_eq!(d_log.types(), ["Welcome"]);
            assert_eq!(d.deadline(), None);
            assert_eq!(d.timed_out(&net.table, late, &mut ()), Step::Continue);
        }

        #[test]
        fn a_sender_over_its_rate_is_refused_then_cut_off() {
            let mut net = net(
                "[discovery]\nannounce_window_ms = 0\n[limits]\nmessages_per_second = 10\nmessage_burst = 3\nrate_limited_max = 4\n",
            );
            let (_b, b_log, _) = begin(&mut net, Some("b"), None, 1);
            let (mut a, a_log, _) = begin(&mut net, Some("a"), None, 2);
            a_log.take();
            b_log.take();
            for _ in 0..3 {
                assert_eq!(
                    text_at(&net, &mut a, &envelope("Note", "a", ""), NOW),
                    Step::Continue
                );
            }
            assert_eq!(b_log.types(), ["Note", "Note", "Note"]);
            // Over the burst: answered, delivered to nobody.
            for _ in 0..3 {
                assert_eq!(
                    text_at(&net, &mut a, &envelope("Note", "a", ""), NOW),
                    Step::Continue
                );
                assert_eq!(a_log.error_code(), "rate_limited");
            }
            assert!(b_log.take().is_empty());
            // A token later (100 ms at 10/s), one passes and the count of refusals restarts.
            let later = NOW + Duration::from_millis(100);
            assert_eq!(
                text_at(&net, &mut a, &envelope("Note", "a", ""), later),
                Step::Continue
            );
            assert_eq!(b_log.types(), ["Note"]);
            for _ in 0..3 {
                assert_eq!(
                    text_at(&net, &mut a, &envelope("Note", "a", ""), later),
                    Step::Continue
                );
                a_log.take();
            }
            let step = text_at(&net, &mut a, &envelope("Note", "a", ""), later);
            assert!(
                matches!(&step, Step::Close(e) if e.code() == ErrorCode::RateLimited),
                "{step:?}"
            );
            assert_eq!(a_log.error_code(), "rate_limited");
            assert!(b_log.take().is_empty());
            // What the connection remembers brings the same buckets back (the Worker's way).
            let mut resumed = Connection::resume(9, Log::default(), a.id().cloned(), &net.table);
            resumed.recall(&a.remembered());
            assert_eq!(resumed.remembered(), a.remembered());
        }

        #[test]
        fn bytes_are_limited_too() {
            let mut net = net("[limits]\nmax_message_bytes = 256\nbytes_per_second = 100\nbyte_burst = 256\n[routing.rules]\nPing = \"echo\"\n");
            let (mut a, a_log, _) = begin(&mut net, Some("a"), None, 1);
            a_log.take();
            let big = format!(
                r#"{{"message_type":"Ping","sender_id":"a","payload":"{}"}}"#,
                "x".repeat(150)
            );
            assert_eq!(text_at(&net, &mut a, &big, NOW), Step::Continue);
            assert_eq!(a_log.types(), ["Ping"]);
            assert_eq!(text_at(&net, &mut a, &big, NOW), Step::Continue);
            assert_eq!(a_log.error_code(), "rate_limited");
        }
    }
}
