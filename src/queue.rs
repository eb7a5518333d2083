//! The bounded per-peer outbound queue: how one connection's messages reach another, and what
//! happens when a peer does not take them.
//!
//! A peer's queue has one receiving end, the [`Outbox`] its writer drains, and a sending end in
//! every [`PeerHandle`] the hub holds for it.
//!
//! # Slow consumers
//! Each peer has one bounded outbound queue (`limits.queue_capacity`). Delivery never waits: it
//! is a non-blocking push. A push that finds a peer's queue full means that peer is not reading,
//! and it is disconnected as a slow consumer:
//!
//! - **From that envelope on, it takes nothing more.** Every later push to it is refused as
//!   well, even if its writer has made room since, so what it receives from each sender is an
//!   unbroken prefix of what that sender sent it: everything up to the first envelope it missed.
//! - **Every sender whose envelope it missed is told**: an `Error` with `recipient_queue_full`
//!   naming the peer, and the `message_id` of the missed envelope. Once it has left the hub (next
//!   point), a directed envelope to it is answered `unknown_recipient`, and a broadcast no longer
//!   counts it as a recipient.
//! - **It leaves the hub at once**: others stop routing to it, its id is free, and a `PeerLeft`
//!   is announced. Its writer then delivers everything that was queued for it, in order, and ends
//!   the connection with the reason: WebSocket close 1008, gRPC `RESOURCE_EXHAUSTED`, both with
//!   a reason starting `slow_consumer`. On WebSocket the queued messages and the close frame must
//!   be written within 5 s (the front's `CLOSE_TIMEOUT`): a peer that still does not read by then
//!   is dropped, and what was not written by then is lost to it without its senders being told
//!   (it had been queued); the peer sees its connection end without a close frame. On gRPC,
//!   HTTP/2 flow control holds the rest until the client reads it, gives up the stream, or the
//!   relay shuts down.
//! - **It is counted** (`slow_consumer_disconnects`), logged at warn when it happens, and the
//!   count is logged again when the relay stops.
//!
//! So one stalled peer never stalls a sender, and no envelope is dropped without somebody being
//! told.
//!
//! # A reload that changes the capacity
//! Every queue reads one shared [`LiveLimit`], so a reload of `limits.queue_capacity`
//! reaches connected peers at their next push: a push to a queue that holds the new capacity or
//! more is refused, as any push to a full queue. A queue already deeper than a smaller new
//! capacity is not cut for that alone: its writer keeps draining it, and it is a slow consumer
//! only if an envelope arrives for it before it is below the new capacity.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gsio_relay_core::hub::LiveLimit;
use gsio_relay_core::{Link, Message, Refused, RelayError};
use tokio::sync::mpsc;

use crate::events::ConnEvents;
use crate::metrics::Front;

/// How other connections reach one peer: its queue, and the switch that disconnects it.
#[derive(Clone)]
pub struct PeerHandle {
    queue: QueueTx,
    events: Arc<ConnEvents>,
    /// The front the peer came through, for the console.
    front: Front,
}

/// The sending side of a peer's bounded queue.
///
/// An unbounded tokio channel plus an atomic count against the capacity: pushing and taking are
/// lock-free (tokio's bounded channel takes a lock to return every permit), and the bound is
/// exact. Cloned into every handle of the peer.
#[derive(Clone)]
struct QueueTx {
    tx: mpsc::UnboundedSender<Arc<Message>>,
    depth: Arc<Depth>,
}

struct Depth {
    queued: AtomicUsize,
    capacity: Arc<LiveLimit>,
}

enum PushError {
    Full,
    Closed,
}

impl QueueTx {
    fn push(&self, message: Arc<Message>) -> Result<(), PushError> {
        if self.depth.queued.fetch_add(1, Ordering::AcqRel) >= self.depth.capacity.get() {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        self.tx.send(message).map_err(|_| {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            PushError::Closed
        })
    }

    fn capacity(&self) -> usize {
        self.depth.capacity.get()
    }
}

impl PeerHandle {
    /// Envelopes waiting in this peer's queue now (what an operator, or a test, wants to know of
    /// a peer that reads slowly).
    pub fn queued(&self) -> usize {
        self.queue.depth.queued.load(Ordering::Acquire)
    }

    pub fn front(&self) -> Front {
        self.front
    }

    /// Disconnects the peer for `reason` (told to it as it goes); false if it was already.
    pub(crate) fn kick(&self, reason: RelayError) -> bool {
        self.events.kick(reason)
    }
}

/// The core reaches a peer through its handle ([`gsio_relay_core::Connection`] decides who
/// receives what; this only queues).
impl Link for PeerHandle {
    /// Queues `message` without waiting; a full queue disconnects the peer, and a disconnected
    /// peer takes nothing more (see the module doc).
    fn send(&self, message: &Arc<Message>) -> Result<(), Refused> {
        // Checked before the push: a writer that is still draining may have made room, and
        // taking a later envelope after refusing an earlier one would leave a gap in what the
        // peer receives.
        if self.events.is_raised(ConnEvents::KICKED) {
            return Err(Refused::SlowConsumer { newly: false });
        }
        match self.queue.push(message.clone()) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => {
                let newly = self
                    .events
                    .kick(RelayError::SlowConsumer(self.queue.capacity()));
                Err(Refused::SlowConsumer { newly })
            }
            Err(PushError::Closed) => Err(Refused::Gone),
        }
    }
}

/// The receiving end of one peer's queue, owned by its writer.
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Arc<Message>>,
    depth: Arc<Depth>,
    events: Arc<ConnEvents>,
}

impl Outbox {
    /// The next queued message; `None` once the peer has left and everything queued for it was
    /// taken. Cancel safe.
    pub async fn recv(&mut self) -> Option<Arc<Message>> {
        let message = self.rx.recv().await?;
        self.depth.queued.fetch_sub(1, Ordering::AcqRel);
        Some(message)
    }

    /// Nothing is queued now (a message being pushed right now may not be counted yet).
    pub fn is_empty(&self) -> bool {
        self.depth.queued.load(Ordering::Acquire) == 0
    }

    /// A message already queued, without waiting (for batching writes and for draining).
    pub fn try_next(&mut self) -> Option<Arc<Message>> {
        let message = self.rx.try_recv().ok()?;
        self.depth.queued.fetch_sub(1, Ordering::AcqRel);
        Some(message)
    }

    /// This connection's out-of-band events.
    pub fn events(&self) -> Arc<ConnEvents> {
        self.events.clone()
    }
}

/// A peer's queue, bounded by the shared `capacity`: the handle others reach it by, and the
/// receiving side for its writer.
pub(crate) fn queue(capacity: Arc<LiveLimit>, front: Front) -> (PeerHandle, Outbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = Arc::new(Depth {
        queued: AtomicUsize::new(0),
        capacity,
    });
    let events = Arc::new(ConnEvents::default());
    let outbox = Outbox {
        rx,
        depth: depth.clone(),
        events: events.clone(),
    };
    let handle = PeerHandle {
        queue: QueueTx { tx, depth },
        events,
        front,
    };
    (handle, outbox)
}

#[cfg(test)]
mod tests {
    use gsio_relay_core::Envelope;

    use super::*;

    fn numbered(n: u64) -> Arc<Message> {
        Arc::new(Message::new(Envelope::from_relay(
            "Test",
            format!("m{n}"),
            "",
            n,
        )))
    }

    fn id(message: &Message) -> &str {
        &message.envelope().message_id
    }

    /// A full queue refuses, kicks once, and from then on refuses everything, even after its
    /// writer has made room: what the peer gets is an unbroken prefix of what was sent to it.
    #[test]
    fn a_kicked_queue_takes_nothing_more_even_with_room() {
        let (handle, mut outbox) = queue(LiveLimit::new(2), Front::Ws);
        assert_eq!(handle.send(&numbered(0)), Ok(()));
        assert_eq!(handle.send(&numbered(1)), Ok(()));
        assert_eq!(
            handle.send(&numbered(2)),
            Err(Refused::SlowConsumer { newly: true })
        );
        assert!(outbox.events().is_raised(ConnEvents::KICKED));
        assert_eq!(outbox.try_next().as_deref().map(id), Some("m0"));
        assert_eq!(
            handle.send(&numbered(3)),
            Err(Refused::SlowConsumer { newly: false })
        );
        assert_eq!(outbox.try_next().as_deref().map(id), Some("m1"));
        assert!(outbox.try_next().is_none());
    }

    /// README "Reloading relay.toml": a smaller capacity applies to the next push; a queue
    /// already deeper is not cut for that alone, only when a push finds it at or over the new
    /// capacity; a larger one makes room at once.
    #[test]
    fn a_new_capacity_applies_to_the_next_push() {
        let capacity = LiveLimit::new(4);
        let (handle, mut outbox) = queue(capacity.clone(), Front::Ws);
        for n in 0..3 {
            handle.send(&numbered(n)).unwrap();
        }
        capacity.set(2);
        assert!(
            !outbox.events().is_raised(ConnEvents::KICKED),
            "not cut by the reload"
        );
        assert_eq!(outbox.try_next().as_deref().map(id), Some("m0"));
        assert_eq!(outbox.try_next().as_deref().map(id), Some("m1"));
        // One queued, under the new capacity of 2: room for one more.
        assert_eq!(handle.send(&numbered(3)), Ok(()));
        assert_eq!(
            handle.send(&numbered(4)),
            Err(Refused::SlowConsumer { newly: true })
        );

        let capacity = LiveLimit::new(1);
        let (handle, _outbox) = queue(capacity.clone(), Front::Ws);
        handle.send(&numbered(0)).unwrap();
        capacity.set(3);
        assert_eq!(handle.send(&numbered(1)), Ok(()));
        assert_eq!(handle.send(&numbered(2)), Ok(()));
        assert_eq!(handle.queued(), 3);
    }

    /// Once every handle is gone, the outbox yields what was queued, then ends (the kicked
    /// writer's drain relies on it).
    #[test]
    fn the_outbox_ends_after_what_was_queued() {
        let (handle, mut outbox) = queue(LiveLimit::new(4), Front::Ws);
        handle.send(&numbered(0)).unwrap();
        handle.send(&numbered(1)).unwrap();
        drop(handle);
        let drained = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let mut ids = Vec::new();
                while let Some(message) = outbox.recv().await {
                    ids.push(id(&message).to_owned());
                }
                ids
            });
        assert_eq!(drained, ["m0", "m1"]);
    }
}
