//! One peer's connection, whichever front it came through: identity, admission, routing and
//! delivery. The fronts only decode frames into calls here and write what the [`Outbox`]
//! yields; every decision is the core's.
//!
//! Ordering: a connection's inbound envelopes are handled one after another, and each delivery
//! is a FIFO queue push, so messages from one sender to one recipient arrive in the order sent.

use std::sync::Arc;

use bytes::Bytes;
use gsio_relay_core::hub::{error_message, ConnId};
use gsio_relay_core::{Envelope, Inbound, Message, PeerId, Rejection, RelayError, Session};

use crate::events::ConnEvents;
use crate::queue::{queue, Outbox, PeerHandle, PushError, QueueTx, Refused};
use crate::state::{Relay, Stats};

/// The relay side of one connected peer. Dropping it removes the peer from the hub (and
/// announces `PeerLeft`).
pub struct PeerConn {
    relay: Arc<Relay>,
    /// Tells this connection apart from a later one that takes the same id.
    conn: ConnId,
    session: Session,
    /// This connection's own queue, for the replies (Welcome, Error) only it receives.
    queue: QueueTx,
    signal: Arc<ConnEvents>,
    /// Copied from the config at connect time: checked on every frame.
    max_message_bytes: usize,
    /// Counted here and added to the shared [`Stats`] when the connection ends, so that the
    /// hot path does not bounce shared counters between cores.
    routed: u64,
    delivered: u64,
}

impl PeerConn {
    /// A new, still anonymous connection, and the outbox its writer drains.
    pub fn open(relay: &Arc<Relay>) -> (PeerConn, Outbox) {
        let config = relay.config();
        let (tx, signal, outbox) = queue(config.limits.queue_capacity);
        Stats::bump(&relay.stats.connections, 1);
        let conn = PeerConn {
            relay: relay.clone(),
            conn: relay.next_conn_id(),
            session: Session::new(),
            queue: tx,
            signal,
            max_message_bytes: config.limits.max_message_bytes,
            routed: 0,
            delivered: 0,
        };
        (conn, outbox)
    }

    pub fn id(&self) -> Option<&PeerId> {
        self.session.id()
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Fixes the identity before any envelope (`?node_id=`, `x-gsio-node-id`). On error the
    /// front reports it and closes: a connection that asked for an id it cannot have is not
    /// left half-open under another one.
    pub fn bind(&mut self, raw: &str) -> Result<(), RelayError> {
        let id = PeerId::parse(raw)?;
        self.join(id)
    }

    /// One WebSocket text frame: parsed once; forwarded as the sender's own text when the relay
    /// does not change it.
    pub fn receive_text(&mut self, text: &str, original: Bytes) {
        let inbound = self
            .session
            .accept_text(text, original, self.max_message_bytes);
        self.dispatch(inbound);
    }

    /// One envelope decoded by the gRPC front (or why it could not be), `size` bytes on the
    /// wire.
    pub fn receive_decoded(&mut self, envelope: Result<Envelope, RelayError>, size: usize) {
        let inbound = self
            .session
            .accept_decoded(envelope, size, self.max_message_bytes);
        self.dispatch(inbound);
    }

    fn dispatch(&mut self, inbound: Result<Inbound, Rejection>) {
        let inbound = match inbound {
            Ok(inbound) => inbound,
            Err(rejected) => return self.reject(rejected.error, rejected.message_type.as_deref()),
        };
        if let Some(id) = inbound.claim {
            if let Err(error) = self.join(id) {
                let message_type = &inbound.message.envelope().message_type;
                return self.reject(error, Some(message_type));
            }
        }
        self.route(Arc::new(inbound.message));
    }

    /// Answers this connection with an `Error` envelope; the connection stays open.
    pub fn reject(&self, error: RelayError, message_type: Option<&str>) {
        let recipient = self.session.id().map_or("", PeerId::as_str);
        tracing::debug!(conn = self.conn, peer = recipient, code = %error.code(), "rejected: {error}");
        Stats::bump(&self.relay.stats.errors_sent, 1);
        self.reply(Arc::new(error_message(recipient, &error, message_type)));
    }

    fn reply(&self, message: Arc<Message>) {
        if let Err(PushError::Full) = self.queue.push(message) {
            if self
                .signal
                .kick(RelayError::SlowConsumer(self.queue.capacity()))
            {
                Stats::bump(&self.relay.stats.slow_consumer_disconnects, 1);
            }
        }
    }

    fn join(&mut self, id: PeerId) -> Result<(), RelayError> {
        let handle = PeerHandle::new(id.clone(), self.queue.clone(), self.signal.clone());
        {
            let mut hub = self.relay.write_hub();
            let joined = hub.join(id.clone(), self.conn, handle)?;
            // Queued under the lock, so the Welcome comes before anything routed to this peer.
            self.reply(joined.welcome);
            if let Some(announcement) = joined.announcement {
                for peer in hub.others(&id) {
                    let _ = peer.offer(announcement.clone());
                }
            }
        }
        tracing::info!(conn = self.conn, peer = %id, "peer joined");
        self.session.bind(id);
        Ok(())
    }

    fn route(&mut self, message: Arc<Message>) {
        let sender = self
            .session
            .id()
            .expect("admission binds the session before routing");
        let mut refused: Vec<PeerId> = Vec::new();
        let routed = {
            let hub = self.relay.read_hub();
            hub.route(sender, &message).map(|targets| {
                let mut delivered = 0;
                for peer in targets {
                    match peer.offer(message.clone()) {
                        Ok(()) => delivered += 1,
                        Err(Refused::SlowConsumer { newly }) => {
                            if newly {
                                Stats::bump(&self.relay.stats.slow_consumer_disconnects, 1);
                                tracing::warn!(peer = %peer.id, "slow consumer disconnected: outbound queue full");
                            }
                            refused.push(peer.id.clone());
                        }
                        Err(Refused::Gone) => {}
                    }
                }
                delivered
            })
        };
        let message_type = message.envelope().message_type.as_str();
        match routed {
            Ok(delivered) => {
                self.routed += 1;
                self.delivered += delivered;
            }
            Err(error) => self.reject(error, Some(message_type)),
        }
        for slow in refused {
            self.reject(
                RelayError::RecipientQueueFull(slow.to_string()),
                Some(message_type),
            );
        }
    }
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        Stats::bump(&self.relay.stats.messages_routed, self.routed);
        Stats::bump(&self.relay.stats.deliveries, self.delivered);
        let Some(id) = self.session.id() else {
            return;
        };
        let mut hub = self.relay.write_hub();
        if let Some((_, announcement)) = hub.leave(id, self.conn) {
            if let Some(announcement) = announcement {
                for peer in hub.others(id) {
                    let _ = peer.offer(announcement.clone());
                }
            }
            tracing::info!(conn = self.conn, peer = %id, "peer left");
        }
    }
}
