//! The state every connection shares ([`Relay`]): the hub (peer table + rules), connection ids and
//! counters. How one connection's messages reach another (the per-peer queues) is
//! [`crate::queue`]'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use gsio_relay_core::hub::ConnId;
use gsio_relay_core::{Hub, RelayConfig, Table};

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
