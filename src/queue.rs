//! The bounded per-peer outbound queue: how one connection's messages reach another, and what
//! happens when a peer does not take them.
//!
//! A peer's queue has one receiving end, the [`Outbox`] its writer drains, and a sending end in
//! every [`PeerHandle`] the hub holds for it.
//!
//! # Slow consumers
//! Each peer has one bounded outbound queue (`limits.queue_capacity`). Delivery never waits:
//! it is a non-blocking push. When a peer's queue is full, that peer is disconnected as a slow consumer
//! (WebSocket close 1008 / gRPC `RESOURCE_EXHAUSTED`, reason `slow_consumer`), the sender is told
//! with a `recipient_queue_full` error naming it, and `slow_consumer_disconnects` is counted.
//! So one stalled peer never stalls a sender, and nothing is dropped without somebody being
//! told.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gsio_relay_core::{Link, Message, Refused, RelayError};
use tokio::sync::mpsc;

use crate::events::ConnEvents;

/// How other connections reach one peer: its queue, and the switch that disconnects it.
#[derive(Clone)]
pub struct PeerHandle {
    queue: QueueTx,
    events: Arc<ConnEvents>,
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
    capacity: usize,
}

enum PushError {
    Full,
    Closed,
}

impl QueueTx {
    fn push(&self, message: Arc<Message>) -> Result<(), PushError> {
        if self.depth.queued.fetch_add(1, Ordering::AcqRel) >= self.depth.capacity {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        self.tx.send(message).map_err(|_| {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            PushError::Closed
        })
    }

    fn capacity(&self) -> usize {
        self.depth.capacity
    }
}

/// The core reaches a peer through its handle ([`gsio_relay_core::Connection`] decides who
/// receives what; this only queues).
impl Link for PeerHandle {
    /// Queues `message` without waiting; a full queue disconnects the peer (see the module doc).
    fn send(&self, message: &Arc<Message>) -> Result<(), Refused> {
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

/// A peer's queue: the handle others reach it by, and the receiving side for its writer.
pub(crate) fn queue(capacity: usize) -> (PeerHandle, Outbox) {
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
    };
    (handle, outbox)
}
