//! The state every connection shares ([`Relay`]): the hub (peer table + rules), connection ids and
//! counters. How one connection's messages reach another (the per-peer queues) is
//! [`crate::queue`]'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use gsio_relay_core::hub::ConnId;
use gsio_relay_core::{Hub, RelayConfig};

use crate::queue::PeerHandle;

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
