//! The state every connection shares ([`Relay`]): the hub (peer table + rules), connection ids,
//! counters, the record of reloads ([`ReloadStatus`]) and the network's presence timer
//! ([`Relay::run_presence_timer`]). How one connection's messages reach another (the per-peer
//! queues) is [`crate::queue`]'s job; when and how relay.toml is reloaded is
//! [`crate::reload`]'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use gsio_relay_core::hub::ConnId;
use gsio_relay_core::hub::LiveLimit;
use gsio_relay_core::{Hub, Reconfigured, RelayConfig, Table};
use tokio::sync::Notify;

use crate::cluster::Cluster;
use crate::metrics::{Front, Metrics};
use crate::queue::PeerHandle;

/// Shared by every connection of both fronts.
pub struct Relay {
    /// std `RwLock`, not tokio's: it is never held across an `.await`. Routing takes it for
    /// reading (many at once); join, leave and a reload take it for writing.
    hub: RwLock<Hub<PeerHandle>>,
    /// `limits.queue_capacity` in force, read by every peer's queue on each push, so that a
    /// reload reaches queues that already exist.
    queue_capacity: Arc<LiveLimit>,
    next_conn: AtomicU64,
    /// The largest frame the gRPC front reads at all: tonic takes it when the relay starts, so a
    /// reload cannot change it.
    grpc_frame_limit: usize,
    pub stats: Stats,
    /// What `/metrics` and the console read (see [`crate::metrics`] for what counting costs).
    pub metrics: Metrics,
    /// What reloads have done, for whoever reports on the relay (logs, metrics, a console).
    /// std `Mutex`: held only to copy or update the record, never across an `.await`.
    reloads: Mutex<ReloadStatus>,
    /// The presence timer: the core asks a connection for it ([`Relay::start_presence_timer`])
    /// and one relay-wide task runs it ([`Relay::run_presence_timer`]). `delay_ms` is what the
    /// core asked for; the core asks again only once the timer has stopped, so one waker holds
    /// at most one request.
    presence_wake: Notify,
    presence_delay_ms: AtomicU64,
    /// The link to the other relays, when relay.toml has a `[cluster]` ([`crate::cluster`]).
    cluster: OnceLock<Arc<Cluster>>,
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

/// The record of relay.toml reloads ([`Relay::reloads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Which rules are in force: 1 for those the relay started with, +1 each time a reload
    /// changes them (a reload that changes nothing keeps the generation).
    pub generation: u64,
    /// Reloads that read a valid file, whether it changed anything or not.
    pub succeeded: u64,
    /// Reloads refused (the file missing, unreadable or invalid); the rules in force stayed.
    pub failed: u64,
    /// The latest reload, if there was one.
    pub last: Option<LastReload>,
}

/// One reload, as [`ReloadStatus::last`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    pub at: SystemTime,
    /// Whether the file was valid (and so put in force).
    pub ok: bool,
    /// What it did (the keys it changed) or why it was refused (the loader's error, naming the
    /// file, the key and the line).
    pub message: String,
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
            queue_capacity: LiveLimit::new(config.limits.queue_capacity),
            grpc_frame_limit: config.limits.hard_frame_bytes(),
            hub: RwLock::new(Hub::new(config, id_seed())),
            next_conn: AtomicU64::new(1),
            stats: Stats::default(),
            reloads: Mutex::new(ReloadStatus {
                generation: 1,
                succeeded: 0,
                failed: 0,
                last: None,
            }),
            presence_wake: Notify::new(),
            presence_delay_ms: AtomicU64::new(0),
            cluster: OnceLock::new(),
        })
    }

    /// The rules and limits in force now.
    pub fn config(&self) -> Arc<RelayConfig> {
        Table::read(&self.hub).config().clone()
    }

    /// What relay.toml reloads have done so far.
    pub fn reloads(&self) -> ReloadStatus {
        self.reloads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records one reload: valid (`ok`, and `changed` when it put new rules in force) or
    /// refused. Returns the record after it.
    pub(crate) fn record_reload(&self, ok: bool, changed: bool, message: String) -> ReloadStatus {
        let mut status = self
            .reloads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ok {
            status.succeeded += 1;
            status.generation += u64::from(changed);
        } else {
            status.failed += 1;
        }
        status.last = Some(LastReload {
            at: SystemTime::now(),
            ok,
            message,
        });
        status.clone()
    }

    /// Puts `config` in force for every connection (see [`gsio_relay_core::reconfigure`]): the
    /// next envelope is sized and routed by it, and every peer told of a change in what its
    /// Welcome announced. The queues take a larger capacity before the notice is queued and a
    /// smaller one after, so the notice itself never finds a queue full that was not full
    /// before.
    pub(crate) fn put_in_force(&self, config: RelayConfig) -> Reconfigured {
        let capacity = config.limits.queue_capacity;
        let growing = capacity > self.queue_capacity.get();
        if growing {
            self.queue_capacity.set(capacity);
        }
        let done = gsio_relay_core::reconfigure(&self.hub, Arc::new(config));
        if !growing {
            self.queue_capacity.set(capacity);
        }
        done
    }

    /// The largest frame the gRPC front reads at all, fixed at start (see [`crate::reload`]).
    pub fn grpc_frame_limit(&self) -> usize {
        self.grpc_frame_limit
    }

    /// The capacity every peer's queue is bounded by.
    pub(crate) fn queue_capacity(&self) -> Arc<LiveLimit> {
        self.queue_capacity.clone()
    }

    /// The peer table, for the core's [`gsio_relay_core::Connection`].
    pub(crate) fn table(&self) -> &RwLock<Hub<PeerHandle>> {
        &self.hub
    }

    /// Makes this relay one of a cluster: the hub claims ids network-wide and forwards through
    /// `cluster` from now on.
    pub(crate) fn join_cluster(&self, cluster: Arc<Cluster>) {
        Table::write(&self.hub).set_uplink(cluster.clone());
        let _ = self.cluster.set(cluster);
    }

    /// The link to the other relays, if this relay is one of a cluster.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Carries out what a cluster step asks: the presence timer, and counting the slow
    /// consumers its deliveries found (`cause` names it in the log).
    pub(crate) fn apply_cluster(&self, applied: gsio_relay_core::cluster::Applied, cause: &str) {
        if let Some(delay) = applied.timer {
            self.start_presence_timer(delay);
        }
        Stats::bump(&self.stats.deliveries, applied.counts.delivered);
        self.slow_consumers_disconnected(applied.counts.slow_consumers, cause);
    }

    /// Disconnects the local peer `id`, telling it `reason`.
    pub(crate) fn kick(&self, id: &str, reason: gsio_relay_core::RelayError) {
        if let Some(handle) = Table::read(&self.hub).get(id) {
            handle.kick(reason);
        }
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
                self.slow_consumers_disconnected(counts.slow_consumers, "presence announcement");
                match next {
                    Some(next) => delay = next,
                    None => break,
                }
            }
        }
    }

    /// `count` peers were disconnected as slow consumers by what `cause` queued: counted, and
    /// logged at warn. Nothing when `count` is 0.
    pub(crate) fn slow_consumers_disconnected(&self, count: u64, cause: &str) {
        if count == 0 {
            return;
        }
        Stats::bump(&self.stats.slow_consumer_disconnects, count);
        tracing::warn!(
            count,
            cause,
            "slow consumer disconnected: outbound queue full"
        );
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

    /// Peers connected to the other relays of the cluster, as this relay knows them.
    pub fn remote_peer_count(&self) -> usize {
        Table::read(&self.hub).remote_peers().count()
    }

    /// Ids of the peers connected now, sorted.
    pub fn peer_ids(&self) -> Vec<String> {
        let (peers, _) = self.peers(usize::MAX);
        peers.into_iter().map(|peer| peer.id).collect()
    }
}
