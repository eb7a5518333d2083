//! One peer's connection, whichever front it came through: the core's [`Connection`] (which
//! runs the whole protocol) bound to this server's shared table, queues and counters.
//!
//! A front turns what it reads into [`Input`]s, writes what the connection's [`Outbox`] yields,
//! and closes the connection when a [`Step::Close`] says so. Nothing here decides anything.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gsio_relay_core::auth::Nonce;
use gsio_relay_core::connection::Handshake;
use gsio_relay_core::{Connection, Counts, Input, PeerId, Step};

use crate::cluster::Claimed;
use crate::metrics::{ConnMeter, Front};
use crate::queue::{queue, Outbox, PeerHandle};
use crate::state::{Relay, Stats};

/// The relay side of one connected peer. Dropping it removes the peer from the table (and
/// announces its leaving, at once or when the presence timer fires).
pub struct PeerConn {
    relay: Arc<Relay>,
    connection: Connection<PeerHandle>,
    /// Routed and delivered so far, added to the shared [`Stats`] when the connection ends.
    pending: Counts,
    /// Which front's open-connections gauge this connection is in, to leave it when it ends.
    front: Front,
    /// Where this connection's routing is counted as it happens ([`crate::metrics`]).
    meter: ConnMeter,
}

impl PeerConn {
    /// A new, still anonymous connection, and the outbox its writer drains.
    pub fn open(relay: &Arc<Relay>, front: Front) -> (PeerConn, Outbox) {
        let (handle, outbox) = queue(relay.queue_capacity(), front);
        Stats::bump(&relay.stats.connections, 1);
        let conn = relay.next_conn_id();
        let meter = relay.metrics.opened(front, conn);
        let connection = Connection::open(conn, handle, relay.table());
        let peer = PeerConn {
            relay: relay.clone(),
            connection,
            pending: Counts::default(),
            front,
            meter,
        };
        (peer, outbox)
    }

    pub fn id(&self) -> Option<&PeerId> {
        self.connection.id()
    }

    /// The connection's first step: the id (`?node_id=`, `x-gsio-node-id`) or token given at
    /// connect, else the challenge; see [`Connection::begin`].
    pub async fn begin(&mut self, node_id: Option<&str>, token: Option<&str>) -> Step {
        let mut nonce = [0; 32];
        if let Err(error) = getrandom::fill(&mut nonce) {
            // No randomness: no challenge could be trusted, so no proof is accepted either.
            tracing::error!("no random bytes for a challenge: {error}");
            return Step::Close(gsio_relay_core::RelayError::AuthenticationRequired(
                "the relay has no random bytes for a challenge".into(),
            ));
        }
        let handshake = Handshake {
            node_id,
            token,
            nonce: Nonce(nonce),
            now: now(),
        };
        let mut meter = self.relay.metrics.meter(&mut self.meter);
        let step = self
            .connection
            .begin_metered(self.relay.table(), handshake, &mut meter);
        let step = self.settle(step).await;
        self.joined_if(true);
        self.after(step)
    }

    /// One frame or decoded envelope; see [`Connection::input`].
    pub async fn input(&mut self, input: Input) -> Step {
        let anonymous = self.connection.id().is_none();
        let mut meter = self.relay.metrics.meter(&mut self.meter);
        let step = self
            .connection
            .input_metered(self.relay.table(), input, now(), &mut meter);
        let step = self.settle(step).await;
        self.joined_if(anonymous);
        self.after(step)
    }

    /// A claim the core reserved ([`Step::Reserve`]) is settled with the cluster before the
    /// connection goes on (its next input waits, so nothing overtakes the join).
    async fn settle(&mut self, step: Step) -> Step {
        let Step::Reserve(id) = step else {
            return step;
        };
        let won = match self.relay.cluster() {
            Some(cluster) => cluster.claim(&id).await != Claimed::Taken,
            None => true,
        };
        let mut meter = self.relay.metrics.meter(&mut self.meter);
        let step = self
            .connection
            .reserved(self.relay.table(), won, now(), &mut meter);
        if won && self.connection.id().is_none() {
            // Won on the bus but not joined here: nobody holds it.
            self.release(&id);
        }
        step
    }

    /// Gives the cluster's claim of `id` back (nothing on a relay on its own, or for an id this
    /// relay holds no claim of).
    fn release(&self, id: &PeerId) {
        if let Some(cluster) = self.relay.cluster() {
            cluster.release(id);
        }
    }

    /// How long until a connection still without an id must be closed
    /// ([`Connection::deadline`]); `None` once it has one.
    pub fn time_to_deadline(&self) -> Option<Duration> {
        let deadline = self.connection.deadline()?;
        Some(deadline.saturating_sub(now()))
    }

    /// The identification deadline passed: see [`Connection::timed_out`].
    pub fn timed_out(&mut self) -> Step {
        let mut meter = self.relay.metrics.meter(&mut self.meter);
        let step = self
            .connection
            .timed_out(self.relay.table(), now(), &mut meter);
        self.after(step)
    }

    fn joined_if(&self, was_anonymous: bool) {
        if was_anonymous {
            if let Some(id) = self.connection.id() {
                tracing::info!(conn = self.connection.conn_id(), peer = %id, "peer joined");
            }
        }
    }

    /// Counts what needs counting at once (errors, slow consumers); routed and delivered wait
    /// for the end of the connection, so the hot path does not bounce shared counters between
    /// cores.
    fn after(&mut self, step: Step) -> Step {
        if let Some(delay) = self.connection.poll_presence_timer() {
            self.relay.start_presence_timer(delay);
        }
        let counts = self.connection.take_counts();
        let stats = &self.relay.stats;
        self.pending.routed += counts.routed;
        self.pending.delivered += counts.delivered;
        if counts.errors_sent != 0 {
            Stats::bump(&stats.errors_sent, counts.errors_sent);
        }
        self.relay
            .slow_consumers_disconnected(counts.slow_consumers, "a connection's envelope or join");
        if let Step::Close(error) = &step {
            tracing::debug!(conn = self.connection.conn_id(), code = %error.code(), "closing: {error}");
        }
        step
    }
}

/// The core's clock: the wall clock, as time since the Unix epoch (tokens' `exp` is on it).
fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        let id = self.connection.id().cloned();
        self.connection.leave(self.relay.table());
        if let Some(id) = &id {
            self.release(id);
        }
        let step = self.after(Step::Continue);
        debug_assert_eq!(step, Step::Continue);
        let stats = &self.relay.stats;
        Stats::bump(&stats.messages_routed, self.pending.routed);
        Stats::bump(&stats.deliveries, self.pending.delivered);
        self.relay.metrics.closed(self.front);
        if let Some(id) = id {
            tracing::info!(conn = self.connection.conn_id(), peer = %id, "peer left");
        }
    }
}
