//! The state every connection shares ([`Relay`]): the hub (peer table + rules), connection ids and
//! counters. How one connection's messages reach another (the per-peer queues) is
//! [`crate::queue`]'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use gsio_relay_core::hub::ConnId;
use gsio_relay_core::{Hub, RelayConfig, Table};

use crate::metrics::{Front, Metrics};
use crate::queue::PeerHandle;

/// Shared by every connection of both fronts.
pub struct Relay {
    /// std `RwLock`, not tokio's: it is never held across an `.await`. Routing takes it for
    /// reading (many at once); only join and leave take it for writing.
    hub: RwLock<Hub<PeerHandle>>,
    next_conn: AtomicU64,
    pub stats: Stats,
    /// What `/metrics` and the console read (see [`crate::metrics`] for what counting costs).
    pub metrics: Metrics,
}

/// One connected peer, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub id: String,
    pub front: Front,
    /// Envelopes waiting in its queue.
    pub queued: usize,
}

/// The peers' queue depths at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepths {
    pub peers: usize,
    pub max: usize,
    pub total: usize,
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

/// 128 bits from the operating system's random source, keying the message ids the relay assigns
/// (see `gsio_relay_core::ids`). Should the source fail, std's per-process random hash keys stand
/// in: ids must be unique, not secret.
fn id_seed() -> u128 {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_ok() {
        return u128::from_le_bytes(bytes);
    }
    use std::hash::BuildHasher;
    let keys = std::collections::hash_map::RandomState::new();
    (u128::from(keys.hash_one(1u8)) << 64) | u128::from(keys.hash_one(2u8))
}

impl Relay {
    pub fn new(config: Arc<RelayConfig>) -> Arc<Relay> {
        Arc::new(Relay {
            metrics: Metrics::new(&config),
            hub: RwLock::new(Hub::new(config, id_seed())),
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

    /// How many envelopes wait in the queue of the peer `id`, if it is connected.
    pub fn queued(&self, id: &str) -> Option<usize> {
        Table::read(&self.hub).get(id).map(PeerHandle::queued)
    }

    /// The connected peers, sorted by id, at most `limit` of them (the console's table; the
    /// table is read-locked while they are copied), and how many there are in all.
    pub fn peers(&self, limit: usize) -> (Vec<PeerView>, usize) {
        let hub = Table::read(&self.hub);
        let mut peers: Vec<PeerView> = hub
            .peers()
            .map(|(id, handle)| PeerView {
                id: id.to_string(),
                front: handle.front(),
                queued: handle.queued(),
            })
            .collect();
        let count = peers.len();
        drop(hub);
        peers.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        peers.truncate(limit);
        (peers, count)
    }

    /// The deepest queue and the sum of all of them, now (read at scrape time).
    pub fn queue_depths(&self) -> QueueDepths {
        let hub = Table::read(&self.hub);
        hub.peers()
            .fold(QueueDepths::default(), |depths, (_, handle)| {
                let queued = handle.queued();
                QueueDepths {
                    peers: depths.peers + 1,
                    max: depths.max.max(queued),
                    total: depths.total + queued,
                }
            })
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
