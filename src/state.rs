//! The state every connection shares ([`Relay`]): the hub (peer table + rules), connection ids,
//! counters, and the network's presence timer ([`Relay::run_presence_timer`]). How one
//! connection's messages reach another (the per-peer queues) is [`crate::queue`]'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gsio_relay_core::hub::ConnId;
use gsio_relay_core::{Hub, RelayConfig, Table};
use tokio::sync::Notify;

use crate::queue::PeerHandle;

/// Shared by every connection of both fronts.
pub struct Relay {
    /// std `RwLock`, not tokio's: it is never held across an `.await`. Routing takes it for
    /// reading (many at once); only join and leave take it for writing.
    hub: RwLock<Hub<PeerHandle>>,
    next_conn: AtomicU64,
    pub stats: Stats,
    /// The presence timer: the core asks a connection for it ([`Relay::start_presence_timer`])
    /// and one relay-wide task runs it ([`Relay::run_presence_timer`]). `delay_ms` is what the
    /// core asked for; the core asks again only once the timer has stopped, so one waker holds
    /// at most one request.
    presence_wake: Notify,
    presence_delay_ms: AtomicU64,
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
            hub: RwLock::new(Hub::new(config, id_seed())),
            next_conn: AtomicU64::new(1),
            stats: Stats::default(),
            presence_wake: Notify::new(),
            presence_delay_ms: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> Arc<RelayConfig> {
        Table::read(&self.hub).config().clone()
    }

    /// The peer table, for the core's [`gsio_relay_core::Connection`].
    pub(crate) fn table(&self) -> &RwLock<Hub<PeerHandle>> {
        &self.hub
    }

    /// A connection's step asked for the presence timer: it fires after `delay`.
    pub(crate) fn start_presence_timer(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.presence_delay_ms.store(ms, Ordering::Release);
        self.presence_wake.notify_one();
    }

    /// Runs the presence timer for as long as the relay runs (the server spawns it, and aborts
    /// it when it stops): waits to be started, then fires it, again as long as the core asks.
    /// Announcements it makes can disconnect slow consumers: counted and logged like any.
    pub(crate) async fn run_presence_timer(self: Arc<Self>) {
        loop {
            self.presence_wake.notified().await;
            let mut delay = Duration::from_millis(self.presence_delay_ms.load(Ordering::Acquire));
            loop {
                tokio::time::sleep(delay).await;
                let (next, counts) = gsio_relay_core::presence_timer_fired(&self.hub);
                if counts.slow_consumers != 0 {
                    Stats::bump(&self.stats.slow_consumer_disconnects, counts.slow_consumers);
                    tracing::warn!(
                        count = counts.slow_consumers,
                        "slow consumer disconnected: outbound queue full (presence announcement)"
                    );
                }
                match next {
                    Some(next) => delay = next,
                    None => break,
                }
            }
        }
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// How many envelopes wait in the queue of the peer `id`, if it is connected.
    pub fn queued(&self, id: &str) -> Option<usize> {
        Table::read(&self.hub).get(id).map(PeerHandle::queued)
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
