//! The state every connection shares: the hub (peer table + rules), connection ids and
//! counters, and the handle through which one connection's messages reach another.
//!
//! # Slow consumers
//! Each peer has one bounded outbound queue (`limits.queue_capacity`). Delivery never waits:
//! it is a non-blocking push. When a peer's queue is full, that peer is disconnected as a slow consumer
//! (WebSocket close 1008 / gRPC `RESOURCE_EXHAUSTED`, reason `slow_consumer`), the sender is told
//! with a `recipient_queue_full` error naming it, and `slow_consumer_disconnects` is counted.
//! So one stalled peer never stalls a sender, and nothing is dropped without somebody being
//! told.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use futures_util::task::AtomicWaker;
use gsio_relay_core::hub::ConnId;
use gsio_relay_core::{Hub, Link, Message, Refused, RelayConfig, RelayError, Table};
use tokio::sync::mpsc;

/// Shared by every connection of both fronts.
pub struct Relay {
    /// std `RwLock`, not tokio's: it is never held across an `.await`. Routing takes it for
    /// reading (many at once); only join and leave take it for writing.
    hub: RwLock<Hub<PeerHandle>>,
    next_conn: AtomicU64,
    pub stats: Stats,
}

/// Counters, readable while the relay runs (logged at shutdown, asserted by tests).
#[derive(Default, Debug)]
pub struct Stats {
    pub connections: AtomicU64,
    pub messages_routed: AtomicU64,
    pub deliveries: AtomicU64,
    pub errors_sent: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

impl Relay {
    pub fn new(config: Arc<RelayConfig>) -> Arc<Relay> {
        Arc::new(Relay {
            hub: RwLock::new(Hub::new(config)),
            next_conn: AtomicU64::new(1),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> Arc<RelayConfig> {
        Table::read(&self.hub).config().clone()
    }

    /// The peer table, for the core's [`gsio_relay_core::Connection`].
    pub(crate) fn table(&self) -> &RwLock<Hub<PeerHandle>> {
        &self.hub
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Ids of the peers connected now, sorted.
    pub fn peer_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Table::read(&self.hub)
            .peers()
            .map(|(id, _)| id.to_string())
            .collect();
        ids.sort();
        ids
    }
}

/// How other connections reach one peer: its queue, and the switch that disconnects it.
#[derive(Clone)]
pub struct PeerHandle {
    queue: QueueTx,
    signal: Arc<Signal>,
}

/// The sending side of a peer's bounded queue.
///
/// An unbounded tokio channel plus an atomic count against the capacity: pushing and taking are
/// lock-free (tokio's bounded channel takes a lock to return every permit), and the bound is
/// exact. Cloned into every handle of the peer.
#[derive(Clone)]
pub(crate) struct QueueTx {
    tx: mpsc::UnboundedSender<Arc<Message>>,
    depth: Arc<Depth>,
}

struct Depth {
    queued: AtomicUsize,
    capacity: usize,
}

pub(crate) enum PushError {
    Full,
    Closed,
}

impl QueueTx {
    pub(crate) fn push(&self, message: Arc<Message>) -> Result<(), PushError> {
        if self.depth.queued.fetch_add(1, Ordering::AcqRel) >= self.depth.capacity {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        self.tx.send(message).map_err(|_| {
            self.depth.queued.fetch_sub(1, Ordering::AcqRel);
            PushError::Closed
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.depth.capacity
    }
}

impl Link for PeerHandle {
    /// Queues `message` without waiting; a full queue disconnects the peer (see the module doc).
    fn send(&self, message: &Arc<Message>) -> Result<(), Refused> {
        match self.queue.push(message.clone()) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => {
                let newly = self
                    .signal
                    .kick(RelayError::SlowConsumer(self.queue.capacity()));
                Err(Refused::SlowConsumer { newly })
            }
            Err(PushError::Closed) => Err(Refused::Gone),
        }
    }
}

/// Out-of-band events for one connection: it was kicked (slow consumer), or shutdown reached a
/// phase. A connection's loop checks them with one atomic load per turn; registering to be woken
/// is an [`AtomicWaker`] (no lock, and no work at all when the waker is unchanged).
#[derive(Default)]
pub struct Signal {
    raised: AtomicU8,
    /// Why the connection was kicked; set once, before [`Signal::KICKED`] is raised.
    reason: OnceLock<RelayError>,
    /// One waker per waiting task: slot 0 for a connection's writer, 1 for a gRPC reader.
    wakers: [AtomicWaker; 2],
}

impl Signal {
    pub const KICKED: u8 = 1;
    pub const STOP_READING: u8 = 2;
    pub const CLOSE: u8 = 4;

    /// Kicks the connection; returns true the first time (later kicks keep the first reason).
    pub(crate) fn kick(&self, reason: RelayError) -> bool {
        let first = self.reason.set(reason).is_ok();
        if first {
            self.raise(Signal::KICKED);
        }
        first
    }

    pub(crate) fn raise(&self, events: u8) {
        self.raised.fetch_or(events, Ordering::SeqCst);
        for waker in &self.wakers {
            waker.wake();
        }
    }

    /// Resolves with the raised events among `mask`, for the task waiting in `slot`. Cancel
    /// safe, and cheap to create anew on every turn of a loop.
    pub async fn raised(&self, slot: usize, mask: u8) -> u8 {
        std::future::poll_fn(|cx| {
            let raised = self.raised.load(Ordering::SeqCst) & mask;
            if raised != 0 {
                return std::task::Poll::Ready(raised);
            }
            self.wakers[slot].register(cx.waker());
            // Raised between the check and the registration: do not sleep through it.
            match self.raised.load(Ordering::SeqCst) & mask {
                0 => std::task::Poll::Pending,
                raised => std::task::Poll::Ready(raised),
            }
        })
        .await
    }

    /// Why the connection was kicked.
    pub fn reason(&self) -> RelayError {
        self.reason
            .get()
            .cloned()
            .unwrap_or(RelayError::ShuttingDown)
    }
}

/// The receiving end of one peer's queue, owned by its writer.
pub struct Outbox {
    rx: mpsc::UnboundedReceiver<Arc<Message>>,
    depth: Arc<Depth>,
    signal: Arc<Signal>,
}

impl Outbox {
    /// The next queued message; `None` once the peer has left and everything queued for it was
    /// taken. Cancel safe.
    pub async fn recv(&mut self) -> Option<Arc<Message>> {
        let message = self.rx.recv().await?;
        self.depth.queued.fetch_sub(1, Ordering::AcqRel);
        Some(message)
    }

    /// A message already queued, without waiting (for batching writes and for draining).
    pub fn try_next(&mut self) -> Option<Arc<Message>> {
        let message = self.rx.try_recv().ok()?;
        self.depth.queued.fetch_sub(1, Ordering::AcqRel);
        Some(message)
    }

    /// This connection's out-of-band events.
    pub fn signal(&self) -> Arc<Signal> {
        self.signal.clone()
    }
}

/// A peer's queue: the handle others reach it by, and the receiving side for its writer.
pub(crate) fn queue(capacity: usize) -> (PeerHandle, Outbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = Arc::new(Depth {
        queued: AtomicUsize::new(0),
        capacity,
    });
    let signal = Arc::new(Signal::default());
    let outbox = Outbox {
        rx,
        depth: depth.clone(),
        signal: signal.clone(),
    };
    let handle = PeerHandle {
        queue: QueueTx { tx, depth },
        signal,
    };
    (handle, outbox)
}
