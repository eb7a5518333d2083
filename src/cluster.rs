//! Scale-out: this relay and others on one NATS form one network (`[cluster]` in relay.toml).
//!
//! The decisions are the core's ([`gsio_relay_core::cluster`]); this module moves them over
//! NATS with `async-nats`:
//!
//! - **Claims** live in a JetStream key-value bucket (`<prefix>_presence`, in memory): one key
//!   per connected peer id, its value the relay holding it. A join *creates* the key, which
//!   succeeds for exactly one relay however many ask at once: the first create the bucket's
//!   stream records wins, and every other gets `peer_id_in_use`. The key's revision is the
//!   claim's number; a leave deletes the key at that revision.
//! - **Presence**: every relay watches the bucket, and reports each claim and release to the
//!   core, which announces them to local peers.
//! - **Traffic** goes to `<prefix>.to.<relay>.d` (directed, to the relay holding the recipient)
//!   and `<prefix>.to.<relay>.b` (a broadcast, one copy per relay). A relay reads its own
//!   subjects with one subscription, so what one sender's relay publishes reaches it in order.
//!   Headers name the sender's relay and claim.
//! - **Liveness**: every relay publishes a heartbeat on `<prefix>.hb` each `heartbeat_ms`. A
//!   relay not heard from for `relay_timeout_ms` is given up on: its peers leave here, and their
//!   keys are deleted (by every relay that notices; the first delete wins) so the ids are free.
//! - **Outages**: while NATS is unreachable this relay serves its own peers. A claim made then is
//!   local (unconfirmed); messages for other relays are refused with `relay_unreachable`; the
//!   other relays fall silent and are given up on. When NATS is back (the client reconnects by
//!   itself) the relay *resynchronises*: it asserts its peers' claims again (a peer whose id
//!   another relay took meanwhile ends with `peer_id_in_use`), drops its own stale keys, and
//!   replaces what it knew of the others by the bucket's contents.
//!
//! # Backpressure
//! Messages for NATS wait in one queue ([`Outbound`]) of at most `forward_queue` messages,
//! drained in order by one task; past it, or while NATS is down, the sender is told
//! `relay_unreachable`. Inbound, the NATS client drops what a slow subscriber does not read and
//! reports it; each drop is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::StreamExt;
use gsio_relay_core::cluster::{
    self as core, Carried, Claim, Forward, RelayRef, RemoteJoin, Uplink,
};
use gsio_relay_core::config::Cluster as Settings;
use gsio_relay_core::{Envelope, Message, PeerId, Refused, RelayError, Table};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::state::Relay;

const RELAY_HEADER: &str = "Gsio-Relay";
const INSTANCE_HEADER: &str = "Gsio-Instance";
const CLAIM_HEADER: &str = "Gsio-Claim";
/// How long one bucket request may take before the relay stops waiting for it.
const KV_TIMEOUT: Duration = Duration::from_secs(2);

/// What the bucket holds for a claimed id (and what a heartbeat says).
#[derive(Serialize, Deserialize)]
struct Holder {
    relay: String,
    instance: String,
}

/// A claim won here, told to each other relay before the peer is welcomed (`<prefix>.to.<relay>.c`,
/// answered on the reply inbox with the relay's name).
#[derive(Serialize, Deserialize)]
struct Notice {
    relay: String,
    instance: String,
    id: String,
    claim: Claim,
}

/// How long a join waits for the other relays to confirm they know of it: a relay that does not
/// answer in time (stuck, or dying) learns of it from the bucket instead.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(1);

/// One thing for NATS, in the order it was queued.
enum Outbound {
    Traffic {
        subject: Subject,
        headers: HeaderMap,
        payload: Bytes,
    },
    /// A local peer left: delete its key, if it still holds `claim`.
    Release { key: String, claim: Claim },
}

/// How a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    Won(Claim),
    /// Another relay (or a connection here) holds the id.
    Taken,
    /// NATS could not be asked: the id is held here only, until the relay can assert it.
    Unconfirmed,
}

/// What the cluster counts (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Messages handed to NATS (one per destination relay).
    pub forwarded: AtomicU64,
    /// Messages not handed to NATS: it was unreachable, or the queue to it full.
    pub forward_refused: AtomicU64,
    /// Messages from other relays delivered here.
    pub arrived: AtomicU64,
    /// Messages from other relays dropped: from a released claim, undecodable, or lost by the
    /// NATS client to a slow subscription.
    pub arrived_dropped: AtomicU64,
    /// Relays given up on (silent for `relay_timeout_ms`).
    pub relays_lost: AtomicU64,
    /// Resynchronisations with the bucket (the first at start, then one per reconnection).
    pub resyncs: AtomicU64,
}

/// This relay's link to the cluster: shared by the connections (claims, releases), the core
/// (the [`Uplink`]) and the tasks that read NATS.
pub struct Cluster {
    settings: Settings,
    me: RelayRef,
    client: async_nats::Client,
    js: jetstream::Context,
    bucket: String,
    /// The bucket, once created or found (again after each resynchronisation). std `Mutex`:
    /// only cloned out, never held across an `.await`.
    kv: Mutex<Option<kv::Store>>,
    /// The claim of each local peer (0: unconfirmed), for the headers of what it sends and for
    /// its release. std `Mutex`, never held across an `.await`.
    claims: Mutex<HashMap<PeerId, Claim>>,
    /// When the bucket was created: a new value means its claim numbers started again.
    epoch: Mutex<Option<i128>>,
    /// When each other relay was last heard from.
    heard: Mutex<HashMap<RelayRef, Instant>>,
    /// Relays given up on and not heard from since: their keys may be taken over.
    lost: Mutex<std::collections::HashSet<RelayRef>>,
    outbound: mpsc::UnboundedSender<Outbound>,
    /// Traffic in `outbound`, bounded by `forward_queue`.
    queued: AtomicUsize,
    /// Releases in `outbound`: never refused (one per local peer at most), counted so that a
    /// shutdown can wait for them.
    releases_pending: AtomicUsize,
    /// The NATS connection is up (from the client's events).
    connected: AtomicBool,
    /// Raised when NATS comes back: the bucket must be read again.
    reconnected: Notify,
    /// The last probe read back on this relay's own subject ([`Cluster::subscription_live`]).
    probe_seen: AtomicU64,
    probed: Notify,
    pub stats: ClusterStats,
    /// The tasks, started by [`Cluster::start`] and ended with the relay.
    tasks: OnceLock<Vec<tokio::task::JoinHandle<()>>>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Outbound>>>,
}

impl Cluster {
    /// Connects to NATS (in the background: a relay starts, and serves its own peers, whether
    /// NATS is up or not) and makes `relay` one relay of the cluster.
    pub async fn connect(relay: &Arc<Relay>, settings: Settings) -> Result<Arc<Cluster>, String> {
        let instance = format!("{:016x}", random_u64());
        let me = RelayRef {
            name: settings.relay_name.as_str().into(),
            instance: instance.as_str().into(),
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("gsio-relay {}", settings.relay_name))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1000))
            })
            .event_callback(move |event| {
                let events_tx = events_tx.clone();
                async move {
                    let _ = events_tx.send(event);
                }
            });
        if let Some(path) = &settings.credentials_file {
            options = options.credentials_file(path).await.map_err(|error| {
                format!("cluster.credentials_file {path:?} cannot be read: {error}")
            })?;
        }
        let urls: Vec<async_nats::ServerAddr> = settings
            .nats_urls
            .iter()
            .map(|url| {
                url.parse()
                    .map_err(|e| format!("cluster.nats_urls {url:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(urls)
            .await
            .map_err(|error| format!("NATS: {error}"))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(KV_TIMEOUT);
        let (outbound, inbox) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            bucket: format!("{}_presence", settings.subject_prefix.replace('.', "_")),
            settings,
            me,
            client,
            js,
            kv: Mutex::new(None),
            claims: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            lost: Mutex::new(std::collections::HashSet::new()),
            epoch: Mutex::new(None),
            outbound,
            queued: AtomicUsize::new(0),
            releases_pending: AtomicUsize::new(0),
            connected: AtomicBool::new(false),
            reconnected: Notify::new(),
            probe_seen: AtomicU64::new(0),
            probed: Notify::new(),
            stats: ClusterStats::default(),
            tasks: OnceLock::new(),
            inbox: Mutex::new(Some(inbox)),
        });
        relay.join_cluster(cluster.clone());
        cluster.start(relay, events_rx);
        tracing::info!(relay = %cluster.me, bucket = %cluster.bucket, "cluster: joining over NATS");
        Ok(cluster)
    }

    fn start(
        self: &Arc<Self>,
        relay: &Arc<Relay>,
        events: mpsc::UnboundedReceiver<async_nats::Event>,
    ) {
        let inbox = lock(&self.inbox).take();
        let mut tasks = vec![
            tokio::spawn(self.clone().watch_events(events)),
            tokio::spawn(self.clone().heartbeats(relay.clone())),
            tokio::spawn(self.clone().read_heartbeats()),
            tokio::spawn(self.clone().read_traffic(relay.clone())),
            tokio::spawn(self.clone().presence(relay.clone())),
        ];
        if let Some(inbox) = inbox {
            tasks.push(tokio::spawn(self.clone().publish(inbox)));
        }
        let _ = self.tasks.set(tasks);
    }

    /// Ends the cluster's tasks, after giving what is queued for NATS (the last releases of
    /// a shutdown) up to `grace` to go out.
    pub async fn stop(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.is_connected() && self.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = tokio::time::timeout_at(deadline, self.client.flush()).await;
        for task in self.tasks.get().into_iter().flatten() {
            task.abort();
        }
    }

    /// What waits for NATS (traffic and releases).
    fn pending(&self) -> usize {
        self.queued.load(Ordering::Acquire) + self.releases_pending.load(Ordering::Acquire)
    }

    pub fn relay_ref(&self) -> &RelayRef {
        &self.me
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The other relays heard from within `relay_timeout_ms`, by name.
    pub fn relays(&self) -> Vec<String> {
        let mut names: Vec<String> = self.others().iter().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    /// The names of the other relays heard from, each once (a restarted relay may be heard
    /// under two instances for a while): what a broadcast and a claim notice go to.
    fn others(&self) -> Vec<Arc<str>> {
        let heard = lock(&self.heard);
        let mut names: Vec<Arc<str>> = Vec::with_capacity(heard.len());
        for relay in heard.keys() {
            if relay.name != self.me.name && !names.contains(&relay.name) {
                names.push(relay.name.clone());
            }
        }
        names
    }

    fn kv(&self) -> Option<kv::Store> {
        lock(&self.kv).clone()
    }

    /// The bucket; just after a (re)connection, once it is found (a claim waits for it rather
    /// than be held here only), for at most [`KV_TIMEOUT`].
    async fn bucket_when_ready(&self) -> Option<kv::Store> {
        let deadline = tokio::time::Instant::now() + KV_TIMEOUT;
        loop {
            if let Some(kv) = self.kv() {
                return Some(kv);
            }
            if !self.is_connected() || tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn holder(&self) -> Bytes {
        holder_bytes(&self.me)
    }

    /// Claims `id` network-wide for a local connection (see [`Claimed`]).
    pub async fn claim(&self, id: &PeerId) -> Claimed {
        let claimed = match (self.is_connected(), self.bucket_when_ready().await) {
            (true, Some(kv)) => self.create(&kv, id).await,
            _ => Claimed::Unconfirmed,
        };
        match claimed {
            Claimed::Won(claim) => {
                lock(&self.claims).insert(id.clone(), claim);
                self.tell_others(id, claim).await;
            }
            Claimed::Unconfirmed => {
                lock(&self.claims).insert(id.clone(), 0);
            }
            Claimed::Taken => {}
        }
        claimed
    }

    /// Tells every other relay known now of a claim won here, and waits (at most
    /// [`NOTICE_TIMEOUT`]) until each has it: then a peer welcomed here is one every relay can
    /// route to, as on one relay. The bucket tells them too; this only does not wait for it.
    /// The inbox is subscribed on the connection the notices go out on, so no answer can come
    /// before it.
    async fn tell_others(&self, id: &PeerId, claim: Claim) {
        let mut waiting = self.others();
        if waiting.is_empty() {
            return;
        }
        let inbox = self.client.new_inbox();
        let Ok(mut answers) = self.client.subscribe(inbox.clone()).await else {
            return;
        };
        let notice = Notice {
            relay: self.me.name.to_string(),
            instance: self.me.instance.to_string(),
            id: id.to_string(),
            claim,
        };
        let payload = Bytes::from(serde_json::to_vec(&notice).unwrap_or_default());
        for name in &waiting {
            let subject = self.subject(name, "c");
            let _ = self
                .client
                .publish_with_reply(subject, inbox.clone(), payload.clone())
                .await;
        }
        let deadline = tokio::time::Instant::now() + NOTICE_TIMEOUT;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(answer)) => {
                    let name = std::str::from_utf8(&answer.payload).unwrap_or_default();
                    waiting.retain(|waited| **waited != *name);
                }
                _ => break,
            }
        }
    }

    /// Creates `id`'s key. One of this relay's own that is still there (its release queued
    /// behind traffic, or left by a resynchronisation) is taken over: no connection here holds
    /// the id, since the core reserved it for this one.
    async fn create(&self, kv: &kv::Store, id: &PeerId) -> Claimed {
        let key = key_of(id);
        // Twice at most: a key deleted between the create and the read is created again.
        for _ in 0..2 {
            let error = match kv.create(&key, self.holder()).await {
                Ok(claim) => return Claimed::Won(claim),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => error,
                Err(error) => {
                    tracing::warn!(peer = %id, "cluster: cannot claim an id on NATS, held here only: {error}");
                    return Claimed::Unconfirmed;
                }
            };
            match kv.entry(&key).await {
                // Deleted meanwhile, this relay's own, or one of a relay given up on whose keys
                // are not all deleted yet: taken at the revision read (if another relay took it
                // meanwhile, the update fails and the claim is lost).
                Ok(Some(entry))
                    if entry.operation != kv::Operation::Put
                        || serde_json::from_slice::<Holder>(&entry.value)
                            .is_ok_and(|h| self.is_mine(&h) || self.is_lost(&h)) =>
                {
                    return match kv.update(&key, self.holder(), entry.revision).await {
                        Ok(claim) => Claimed::Won(claim),
                        Err(_) => Claimed::Taken,
                    };
                }
                Ok(Some(_)) => return Claimed::Taken,
                Ok(None) => continue,
                Err(read) => {
                    tracing::warn!(peer = %id, "cluster: cannot read a claim ({error}): {read}");
                    return Claimed::Unconfirmed;
                }
            }
        }
        Claimed::Taken
    }

    /// The holder is a relay this one gave up on.
    fn is_lost(&self, holder: &Holder) -> bool {
        lock(&self.lost).contains(&relay_ref(holder))
    }

    /// `from` was heard from: alive, whatever was thought before.
    fn heard_from(&self, from: RelayRef) {
        lock(&self.lost).remove(&from);
        lock(&self.heard).insert(from, Instant::now());
    }

    /// A local peer left (or its claim was lost): its key is deleted after what it sent.
    pub fn release(&self, id: &PeerId) {
        let claim = lock(&self.claims).remove(id);
        if let Some(claim) = claim.filter(|&c| c != 0) {
            self.releases_pending.fetch_add(1, Ordering::AcqRel);
            let _ = self.outbound.send(Outbound::Release {
                key: key_of(id),
                claim,
            });
        }
    }

    /// Drains the outbound queue to NATS, in order.
    async fn publish(self: Arc<Self>, mut inbox: mpsc::UnboundedReceiver<Outbound>) {
        while let Some(item) = inbox.recv().await {
            match item {
                Outbound::Traffic {
                    subject,
                    headers,
                    payload,
                } => {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    if let Err(error) = self
                        .client
                        .publish_with_headers(subject, headers, payload)
                        .await
                    {
                        self.stats.forward_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("cluster: publish failed: {error}");
                    }
                }
                Outbound::Release { key, claim } => {
                    if let (true, Some(kv)) = (self.is_connected(), self.kv()) {
                        // A failed release (NATS gone, or the key taken over since) is
                        // settled by the next resynchronisation or by the owner.
                        let _ = kv.delete_expect_revision(&key, Some(claim)).await;
                    }
                    self.releases_pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    fn queue_traffic(&self, subject: String, headers: &HeaderMap, payload: &Bytes) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.settings.forward_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let sent = self.outbound.send(Outbound::Traffic {
            subject: Subject::from(subject),
            headers: headers.clone(),
            payload: payload.clone(),
        });
        if sent.is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        sent.is_ok()
    }

    fn subject(&self, relay: &str, kind: &str) -> String {
        format!("{}.to.{relay}.{kind}", self.settings.subject_prefix)
    }

    /// Follows the NATS connection: up, down, and a lagging subscription.
    async fn watch_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<async_nats::Event>) {
        while let Some(event) = events.recv().await {
            match event {
                async_nats::Event::Connected => {
                    tracing::info!("cluster: connected to NATS");
                    self.connected.store(true, Ordering::Release);
                    self.reconnected.notify_one();
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!("cluster: NATS unreachable; serving this relay's peers only until it is back");
                    self.connected.store(false, Ordering::Release);
                }
                async_nats::Event::SlowConsumer(_) => {
                    self.stats.arrived_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cluster: messages from other relays dropped: this relay reads them too slowly");
                }
                other => tracing::debug!("cluster: NATS event: {other}"),
            }
        }
    }

    /// Says this relay is alive, and gives up on the relays that stopped saying so.
    async fn heartbeats(self: Arc<Self>, relay: Arc<Relay>) {
        let every = Duration::from_millis(self.settings.heartbeat_ms);
        let timeout = Duration::from_millis(self.settings.relay_timeout_ms);
        let subject = format!("{}.hb", self.settings.subject_prefix);
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if self.is_connected() {
                let _ = self.client.publish(subject.clone(), self.holder()).await;
            }
            let now = Instant::now();
            // Every relay this one knows a peer of is in `heard` (put there when the claim or a
            // message was seen), so a relay that died before its first heartbeat is caught too.
            let lost: Vec<RelayRef> = {
                let mut heard = lock(&self.heard);
                let lost: Vec<RelayRef> = heard
                    .iter()
                    .filter(|(_, at)| now.duration_since(**at) > timeout)
                    .map(|(relay, _)| relay.clone())
                    .collect();
                for relay in &lost {
                    heard.remove(relay);
                }
                lock(&self.lost).extend(lost.iter().cloned());
                lost
            };
            for lost in lost {
                let (gone, applied) = core::relay_gone(relay.table(), &lost);
                relay.apply_cluster(applied, "a relay lost");
                self.stats.relays_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(relay = %lost, peers = gone.len(), "cluster: relay silent for {} ms; its peers left", timeout.as_millis());
                if let (true, Some(kv)) = (self.is_connected(), self.kv()) {
                    // Every relay that notices deletes; the first delete at the claim wins.
                    tokio::spawn(async move {
                        for (id, claim) in gone {
                            let _ = kv.delete_expect_revision(key_of(&id), Some(claim)).await;
                        }
                    });
                }
            }
        }
    }

    async fn read_heartbeats(self: Arc<Self>) {
        let subject = format!("{}.hb", self.settings.subject_prefix);
        let Ok(mut beats) = self.client.subscribe(subject).await else {
            tracing::error!("cluster: cannot subscribe to heartbeats");
            return;
        };
        while let Some(beat) = beats.next().await {
            let Ok(holder) = serde_json::from_slice::<Holder>(&beat.payload) else {
                continue;
            };
            let from = relay_ref(&holder);
            if from != self.me {
                self.heard_from(from);
            }
        }
    }

    /// Delivers what other relays send this one.
    async fn read_traffic(self: Arc<Self>, relay: Arc<Relay>) {
        let subject = self.subject(&self.me.name, "*");
        let Ok(mut inbound) = self.client.subscribe(subject).await else {
            tracing::error!("cluster: cannot subscribe to this relay's subjects");
            return;
        };
        while let Some(message) = inbound.next().await {
            if message.subject.ends_with(".c") {
                self.noticed(&relay, &message).await;
                continue;
            }
            if message.subject.ends_with(".probe") {
                if let Ok(token) = std::str::from_utf8(&message.payload).unwrap_or("").parse() {
                    self.probe_seen.store(token, Ordering::Release);
                    self.probed.notify_waiters();
                }
                continue;
            }
            match self.decode(&message) {
                Some((from, claim, carried, decoded)) => {
                    self.heard_from(from.clone());
                    let applied = core::arrived(relay.table(), &from, claim, carried, &decoded);
                    let delivered = applied.counts.routed != 0;
                    relay.apply_cluster(applied, "a message from another relay");
                    let counter = if delivered {
                        &self.stats.arrived
                    } else {
                        &self.stats.arrived_dropped
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.stats.arrived_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Another relay's claim notice ([`Cluster::tell_others`]): taken as the bucket's report
    /// would be, then answered.
    async fn noticed(&self, relay: &Arc<Relay>, message: &async_nats::Message) {
        if let Ok(notice) = serde_json::from_slice::<Notice>(&message.payload) {
            if let Ok(id) = PeerId::parse(&notice.id) {
                let holder = Holder {
                    relay: notice.relay,
                    instance: notice.instance,
                };
                self.heard_from(relay_ref(&holder));
                self.displaced(relay, &id, &holder, notice.claim);
            }
        }
        if let Some(reply) = message.reply.clone() {
            let _ = self
                .client
                .publish(reply, Bytes::from(self.me.name.to_string()))
                .await;
        }
    }

    fn decode(
        &self,
        message: &async_nats::Message,
    ) -> Option<(RelayRef, Claim, Carried, Arc<Message>)> {
        let headers = message.headers.as_ref()?;
        let from = RelayRef {
            name: headers.get(RELAY_HEADER)?.as_str().into(),
            instance: headers.get(INSTANCE_HEADER)?.as_str().into(),
        };
        let claim: Claim = headers.get(CLAIM_HEADER)?.as_str().parse().ok()?;
        let carried = match message.subject.rsplit('.').next()? {
            "b" => Carried::Broadcast,
            "d" => Carried::Directed,
            _ => return None,
        };
        let text = ByteString::try_from(message.payload.clone()).ok()?;
        let (envelope, _) = Envelope::parse_shared(&text).ok()?;
        Some((
            from,
            claim,
            carried,
            Arc::new(Message::with_json(envelope, text)),
        ))
    }

    /// Keeps the core's picture of the other relays' peers in step with the bucket: a full
    /// read (resynchronisation) at start and after each reconnection, then every change.
    async fn presence(self: Arc<Self>, relay: Arc<Relay>) {
        loop {
            if !self.is_connected() {
                tokio::select! {
                    () = self.reconnected.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            match self.resync_and_watch(&relay).await {
                Ok(()) => tracing::info!("cluster: reconnected; reading the bucket again"),
                Err(error) => {
                    tracing::warn!("cluster: presence from NATS interrupted: {error}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn resync_and_watch(&self, relay: &Arc<Relay>) -> Result<(), String> {
        self.subscription_live().await?;
        let kv = self.open_bucket().await?;
        *lock(&self.kv) = Some(kv.clone());
        let info = kv
            .status()
            .await
            .map_err(|e| format!("bucket status: {e}"))?
            .info;
        let start = info.state.last_sequence;
        // A bucket created anew (NATS restarted without it) numbers claims from 1 again.
        let epoch = info.created.unix_timestamp_nanos();
        if lock(&self.epoch)
            .replace(epoch)
            .is_some_and(|old| old != epoch)
        {
            tracing::info!("cluster: the presence bucket was created anew; claims renumbered");
            core::new_epoch(relay.table());
        }
        // The bucket as it is: id → (holder, claim).
        let mut bucket: HashMap<PeerId, (Holder, Claim)> = HashMap::new();
        let mut keys = kv.keys().await.map_err(|e| format!("bucket keys: {e}"))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| format!("bucket keys: {e}"))?;
            let (Some(id), Ok(Some(entry))) = (id_of(&key), kv.entry(&key).await) else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            if let Ok(holder) = serde_json::from_slice::<Holder>(&entry.value) {
                bucket.insert(id, (holder, entry.revision));
            }
        }
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);

        // This relay's peers: asserted again where the bucket lost them.
        let local: Vec<PeerId> = Table::read(relay.table())
            .peers()
            .map(|(id, _)| id.clone())
            .collect();
        for id in &local {
            match bucket.remove(id) {
                Some((holder, claim)) if self.is_mine(&holder) => {
                    lock(&self.claims).insert(id.clone(), claim);
                }
                Some((holder, claim)) => self.displaced(relay, id, &holder, claim),
                None => self.assert(relay, &kv, id).await,
            }
        }
        // Its own keys for peers gone meanwhile; the others' peers as the bucket has them.
        let mut present: HashMap<PeerId, Claim> = HashMap::new();
        for (id, (holder, claim)) in bucket {
            if self.is_mine(&holder) {
                let _ = kv.delete_expect_revision(key_of(&id), Some(claim)).await;
                continue;
            }
            let (_, applied) =
                core::remote_joined(relay.table(), id.clone(), relay_ref(&holder), claim);
            relay.apply_cluster(applied, "presence from another relay");
            present.insert(id, claim);
        }
        // Peers known here that the bucket lacks: gone while NATS was away, or not asserted yet
        // by a relay still reconnecting. They are given until that relay must have asserted
        // them (or been given up on) before they are announced gone.
        let suspects: Vec<(PeerId, Claim)> = Table::read(relay.table())
            .remote_peers()
            .filter(|(id, _)| !present.contains_key(*id))
            .map(|(id, peer)| (id.clone(), peer.claim))
            .collect();
        if !suspects.is_empty() {
            let relay = relay.clone();
            let grace = self.resync_grace();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                for (id, claim) in suspects {
                    let unchanged = Table::read(relay.table())
                        .remote_peer(id.as_str())
                        .is_some_and(|peer| peer.claim == claim);
                    if unchanged {
                        let applied = core::remote_left(relay.table(), &id, claim + 1);
                        relay.apply_cluster(applied, "presence from another relay");
                    }
                }
            });
        }

        // Then every change after the read.
        let mut watch = kv
            .watch_all_from_revision(start + 1)
            .await
            .map_err(|e| format!("bucket watch: {e}"))?;
        tracing::info!(
            local = local.len(),
            remote = present.len(),
            "cluster: presence read from the bucket; following it"
        );
        loop {
            tokio::select! {
                () = self.reconnected.notified() => return Ok(()),
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => self.changed(relay, &kv, entry).await,
                    Some(Err(error)) => return Err(format!("bucket watch: {error}")),
                    None => return Err("bucket watch ended".into()),
                },
            }
        }
    }

    /// How long a peer missing from the bucket after a resynchronisation keeps its place: its
    /// relay reconnects within a second of NATS coming back (the client's backoff), then
    /// asserts its claims within a bucket request or two; a relay that does not is given up on
    /// by the heartbeats anyway.
    fn resync_grace(&self) -> Duration {
        let heartbeats = Duration::from_millis(2 * self.settings.heartbeat_ms);
        (Duration::from_secs(1) + 2 * KV_TIMEOUT + heartbeats)
            .min(Duration::from_millis(self.settings.relay_timeout_ms))
    }

    /// Waits until this relay's traffic subscription is live on the server: a subscription is
    /// a command the client writes, and NATS drops what is published to a subject before the
    /// server has it. A probe published to itself, read back by [`Cluster::read_traffic`],
    /// proves it (the claims wait for the bucket, which comes after this).
    async fn subscription_live(&self) -> Result<(), String> {
        let token = random_u64() | 1;
        let subject = self.subject(&self.me.name, "probe");
        let deadline = tokio::time::Instant::now() + KV_TIMEOUT;
        while self.probe_seen.load(Ordering::Acquire) != token {
            let seen = self.probed.notified();
            self.client
                .publish(subject.clone(), token.to_string().into())
                .await
                .map_err(|e| format!("probe: {e}"))?;
            let _ = self.client.flush().await;
            if tokio::time::timeout(Duration::from_millis(100), seen)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Err("this relay's subscription did not come live".into());
            }
        }
        Ok(())
    }

    /// The presence bucket, created if missing. Its stream is made here, as async-nats's
    /// `create_key_value` would make it (a key-value stream: one message per subject, rollups,
    /// deletes refused, direct get, new messages refused when full), because that call first
    /// reads account fields nats-server 2.9 (Debian's) does not send. In memory: NATS restarted
    /// without it, the relays build it again (see [`gsio_relay_core::cluster::new_epoch`]).
    async fn open_bucket(&self) -> Result<kv::Store, String> {
        let stream = jetstream::stream::Config {
            name: format!("KV_{}", self.bucket),
            subjects: vec![format!("$KV.{}.>", self.bucket)],
            max_messages_per_subject: 1,
            storage: jetstream::stream::StorageType::Memory,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(stream)
            .await
            .map_err(|e| format!("bucket {}: {e}", self.bucket))?;
        self.js
            .get_key_value(&self.bucket)
            .await
            .map_err(|e| format!("bucket {}: {e}", self.bucket))
    }

    fn is_mine(&self, holder: &Holder) -> bool {
        holder.relay == *self.me.name && holder.instance == *self.me.instance
    }

    /// One change in the bucket.
    async fn changed(&self, relay: &Arc<Relay>, kv: &kv::Store, entry: kv::Entry) {
        let Some(id) = id_of(&entry.key) else {
            return;
        };
        match entry.operation {
            kv::Operation::Put => {
                let Ok(holder) = serde_json::from_slice::<Holder>(&entry.value) else {
                    return;
                };
                if !self.is_mine(&holder) {
                    self.displaced(relay, &id, &holder, entry.revision);
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                let mine = lock(&self.claims).get(&id).copied();
                match mine {
                    // This relay's live claim was deleted by another (it was taken for dead):
                    // asserted again.
                    Some(claim) if claim < entry.revision => self.assert(relay, kv, &id).await,
                    Some(_) => {}
                    None => {
                        let applied = core::remote_left(relay.table(), &id, entry.revision);
                        relay.apply_cluster(applied, "presence from another relay");
                    }
                }
            }
        }
    }

    /// Reports another relay's claim; a local peer it displaces ends with `peer_id_in_use`.
    fn displaced(&self, relay: &Arc<Relay>, id: &PeerId, holder: &Holder, claim: Claim) {
        let from = relay_ref(holder);
        // A relay with a claim is one to send broadcasts to (it is given up on if silent).
        lock(&self.heard)
            .entry(from.clone())
            .or_insert_with(Instant::now);
        let (outcome, applied) = core::remote_joined(relay.table(), id.clone(), from, claim);
        relay.apply_cluster(applied, "presence from another relay");
        if outcome == RemoteJoin::Displaces {
            lock(&self.claims).remove(id);
            tracing::warn!(peer = %id, holder = %holder.relay, "cluster: another relay holds this id now; disconnecting the local peer");
            relay.kick(id.as_str(), RelayError::PeerIdInUse(id.to_string()));
        }
    }

    /// Claims a local peer's id again (after an outage, or after its key was deleted).
    async fn assert(&self, relay: &Arc<Relay>, kv: &kv::Store, id: &PeerId) {
        match self.create(kv, id).await {
            Claimed::Won(claim) => {
                lock(&self.claims).insert(id.clone(), claim);
            }
            Claimed::Unconfirmed => {}
            Claimed::Taken => {
                if let Ok(Some(entry)) = kv.entry(key_of(id)).await {
                    if let Ok(holder) = serde_json::from_slice::<Holder>(&entry.value) {
                        self.displaced(relay, id, &holder, entry.revision);
                    }
                }
            }
        }
    }
}

impl Uplink for Cluster {
    fn forward(&self, to: Forward<'_>, message: &Arc<Message>) -> Result<(), Refused> {
        let subjects: Vec<String> = match to {
            Forward::Nowhere => return Ok(()),
            Forward::To(relay) => vec![self.subject(&relay.name, "d")],
            Forward::Everywhere => self
                .others()
                .iter()
                .map(|name| self.subject(name, "b"))
                .collect(),
        };
        if subjects.is_empty() {
            // A broadcast, and no other relay is known: nobody elsewhere to miss it.
            return Ok(());
        }
        if !self.is_connected() {
            self.stats.forward_refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Gone);
        }
        let sender = &message.envelope().sender_id;
        let claim = lock(&self.claims).get(&**sender).copied().unwrap_or(0);
        let mut headers = HeaderMap::new();
        headers.insert(RELAY_HEADER, &*self.me.name);
        headers.insert(INSTANCE_HEADER, &*self.me.instance);
        headers.insert(CLAIM_HEADER, claim.to_string().as_str());
        let payload = Bytes::copy_from_slice(message.json_str().as_bytes());
        for subject in subjects {
            if !self.queue_traffic(subject, &headers, &payload) {
                self.stats.forward_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::SlowConsumer { newly: false });
            }
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn relay_ref(holder: &Holder) -> RelayRef {
    RelayRef {
        name: holder.relay.as_str().into(),
        instance: holder.instance.as_str().into(),
    }
}

fn holder_bytes(me: &RelayRef) -> Bytes {
    let holder = Holder {
        relay: me.name.to_string(),
        instance: me.instance.to_string(),
    };
    Bytes::from(serde_json::to_vec(&holder).unwrap_or_default())
}

/// An id's key in the bucket: its bytes in hex (ids may hold `:` and `@`, which keys may not).
fn key_of(id: &PeerId) -> String {
    id.as_str().bytes().map(|b| format!("{b:02x}")).collect()
}

fn id_of(key: &str) -> Option<PeerId> {
    if key.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(key.get(i..i + 2)?, 16).ok())
        .collect();
    PeerId::parse(std::str::from_utf8(&bytes?).ok()?).ok()
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A poisoned lock is still usable: every update under these locks is one map operation.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_every_id_character() {
        for raw in ["a", "node-1", "ed25519-ab:cd@x.y_z"] {
            let id = PeerId::parse(raw).unwrap();
            let key = key_of(&id);
            assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
            assert_eq!(id_of(&key), Some(id));
        }
        assert_eq!(id_of("zz"), None);
        assert_eq!(id_of("abc"), None);
    }
}
