//! The state every connection shares: the hub (peer table + rules), connection ids and
//! counters, and the handle through which one connection's messages reach another.
//!
//! # Slow consumers
//! Each peer has one bounded outbound queue (`limits.queue_capacity`). Delivery never waits:
//! it is a `try_send`. When a peer's queue is full, that peer is disconnected as a slow consumer
//! (WebSocket close 1008 / gRPC `RESOURCE_EXHAUSTED`, reason `slow_consumer`), the sender is told
//! with a `recipient_queue_full` error naming it, and `slow_consumer_disconnects` is counted.
//! So one stalled peer never stalls a sender, and nothing is dropped without somebody being
//! told.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use gsio_relay_core::hub::ConnId;
use gsio_relay_core::{Hub, Message, PeerId, RelayConfig, RelayError};
use tokio::sync::{mpsc, Notify};

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
        self.read_hub().config().clone()
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Ids of the peers connected now, sorted.
    pub fn peer_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .read_hub()
            .peers()
            .map(|(id, _)| id.to_string())
            .collect();
        ids.sort();
        ids
    }

    pub(crate) fn read_hub(&self) -> std::sync::RwLockReadGuard<'_, Hub<PeerHandle>> {
        // A panic while holding the lock cannot leave the hub half-updated (every update is a
        // single map operation), so a poisoned lock is still safe to use.
        self.hub
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn write_hub(&self) -> std::sync::RwLockWriteGuard<'_, Hub<PeerHandle>> {
        self.hub
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How other connections reach one peer: its queue, and the switch that disconnects it.
#[derive(Clone)]
pub struct PeerHandle {
    pub(crate) id: PeerId,
    queue: mpsc::Sender<Arc<Message>>,
    kick: Arc<Kick>,
}

/// Why the queue refused a message.
pub(crate) enum Refused {
    /// The peer is not reading; it has been told and is being disconnected. `newly` is true for
    /// the refusal that triggered the disconnect (count it once).
    SlowConsumer { newly: bool },
    /// The peer's connection is already ending.
    Gone,
}

impl PeerHandle {
    /// Queues `message` without waiting; a full queue disconnects the peer (see the module doc).
    pub(crate) fn offer(&self, message: Arc<Message>) -> Result<(), Refused> {
        match self.queue.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                let newly = self
                    .kick
                    .kick(RelayError::SlowConsumer(self.queue.max_capacity()));
                Err(Refused::SlowConsumer { newly })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Gone),
        }
    }
}

/// A one-way switch that tells a connection's writer to close, bypassing its (full) queue.
#[derive(Default)]
pub(crate) struct Kick {
    reason: OnceLock<RelayError>,
    notify: Notify,
}

impl Kick {
    /// Returns true the first time (later kicks keep the first reason).
    pub(crate) fn kick(&self, reason: RelayError) -> bool {
        let first = self.reason.set(reason).is_ok();
        if first {
            // notify_one stores a permit when nobody waits yet, so the kick is never missed.
            self.notify.notify_one();
        }
        first
    }
}

/// The receiving end of one peer's queue, owned by its writer.
pub struct Outbox {
    rx: mpsc::Receiver<Arc<Message>>,
    kick: Arc<Kick>,
}

/// What a writer has to do next.
pub enum Outgoing {
    Deliver(Arc<Message>),
    /// Close the connection: this peer was disconnected for this reason.
    Kicked(RelayError),
    /// The peer left and everything queued for it was delivered.
    Finished,
}

impl Outbox {
    /// The next thing to write. Cancel safe: both branches are.
    pub async fn next(&mut self) -> Outgoing {
        tokio::select! {
            biased;
            () = self.kick.notify.notified() => Outgoing::Kicked(self.kicked_reason()),
            message = self.rx.recv() => match message {
                Some(message) => Outgoing::Deliver(message),
                None => Outgoing::Finished,
            },
        }
    }

    /// A message already queued, without waiting (for batching writes and for draining).
    pub fn try_next(&mut self) -> Option<Arc<Message>> {
        self.rx.try_recv().ok()
    }

    fn kicked_reason(&self) -> RelayError {
        self.kick
            .reason
            .get()
            .cloned()
            .unwrap_or(RelayError::ShuttingDown)
    }
}

/// A peer's queue: the sending side for handles, the receiving side for its writer.
pub(crate) fn queue(capacity: usize) -> (mpsc::Sender<Arc<Message>>, Arc<Kick>, Outbox) {
    let (tx, rx) = mpsc::channel(capacity);
    let kick = Arc::new(Kick::default());
    let outbox = Outbox {
        rx,
        kick: kick.clone(),
    };
    (tx, kick, outbox)
}

impl PeerHandle {
    pub(crate) fn new(id: PeerId, queue: mpsc::Sender<Arc<Message>>, kick: Arc<Kick>) -> Self {
        PeerHandle { id, queue, kick }
    }
}
