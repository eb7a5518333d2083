//! The bench's clients and one traffic run: real WebSocket (tokio-tungstenite) and gRPC (the
//! generated tonic client) connections over loopback, and NATS ones (async-nats) straight to a
//! nats-server, senders, receivers, and the coordinator that starts them, stops them and adds up
//! what arrived.
//!
//! # Flow control
//! The relay disconnects a peer whose queue fills (its slow-consumer policy), so "as fast as
//! possible" must mean "as fast as it is delivered": each sender keeps at most `window` messages
//! in flight towards each of its receivers (sent minus that receiver's count). Receivers count
//! every stamped message and wake a waiting sender through its [`Gate`]. The window is below the
//! relay's queue capacity, so a consumer that keeps reading is never disconnected; at a fixed
//! rate the window only binds if the target cannot keep up (the achieved rate then shows it).
//!
//! # Bounds
//! A sender stops at its deadline or after `max_per_sender` messages, whichever is first; the
//! drain after it is bounded in time, and ends sooner once every receiver has its count or has
//! lost its connection (nothing more can arrive there); every connect and every wait has a
//! timeout.
//!
//! # Counting
//! Each receiver tallies the sequence numbers it gets ([`Tally`]): what its sender reported as
//! sent and never arrived is lost, and a duplicate is counted on its own, never in place of a
//! lost message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use gsio_relay::pb;
use gsio_relay::pb::relay_service_client::RelayServiceClient;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tonic::transport::{Channel, Endpoint};

use crate::proc::{LogWatch, Meter};
use crate::stats::{Latency, ProcUsage, Tally};
use crate::wire::{self, now_ns, Route, Stamp};

/// A connect (TCP, handshake, Welcome) must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages fed before one flush.
const SEND_BATCH: u64 = 32;
/// The relay's default `limits.max_message_bytes`; the client accepts frames that large.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Outbound queue of a gRPC client stream (as the integration tests use).
const GRPC_QUEUE: usize = 1024;

pub type Ws = WebSocketStream<TcpStream>;

/// `127.0.0.1:PORT` from `ws://127.0.0.1:PORT[/]`.
pub fn ws_host(url: &str) -> Result<&str> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("not a ws:// URL: {url}"))?;
    Ok(rest.trim_end_matches('/'))
}

/// A WebSocket peer with a fixed id; returns once its Welcome has arrived.
pub async fn ws_connect(url: &str, id: &str) -> Result<Ws> {
    Ok(ws_connect_welcomed(url, id).await?.0)
}

/// How many other peers the network has as seen from the relay at `url`: the `peer_count` of
/// the `Welcome` a fresh peer `id` gets there (exact, and counting the peers of every relay of
/// a cluster). The peer leaves again at once.
pub async fn welcome_peer_count(url: &str, id: &str) -> Result<u64> {
    let (mut ws, welcome) = ws_connect_welcomed(url, id).await?;
    let _ = ws.close(None).await;
    let welcome: serde_json::Value = serde_json::from_str(&welcome)?;
    welcome["payload"]["peer_count"]
        .as_u64()
        .ok_or_else(|| anyhow!("a Welcome without peer_count: {welcome}"))
}

/// [`ws_connect`], with the Welcome's text.
async fn ws_connect_welcomed(url: &str, id: &str) -> Result<(Ws, String)> {
    let host = ws_host(url)?;
    let connect = async {
        let tcp = TcpStream::connect(host).await?;
        tcp.set_nodelay(true)?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://{host}/?node_id={id}"),
            tcp,
            // The servers' settings (small buffers: the conns scenario holds thousands).
            Some(crate::floor::ws_config(MAX_MESSAGE_BYTES)),
        )
        .await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if wire::is_welcome_text(&text) => {
                    return Ok((ws, text.to_string()))
                }
                Some(Ok(Message::Text(text))) => bail!("expected a Welcome, got {text}"),
                Some(Ok(Message::Close(frame))) => bail!("closed at connect: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error.into()),
                None => bail!("connection ended before the Welcome"),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("{id}: no Welcome within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("WebSocket peer {id}"))
}

/// One HTTP/2 connection to the gRPC front.
pub async fn grpc_channel(url: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT);
    tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| anyhow!("gRPC connect to {url} timed out"))?
        .with_context(|| format!("gRPC connect to {url}"))
}

/// One open `Exchange` stream: what the client sends into, and what it reads.
pub type GrpcStream = (mpsc::Sender<pb::Envelope>, tonic::Streaming<pb::Envelope>);

/// One `Exchange` stream on `channel`, id fixed by metadata; returns once its Welcome arrived.
pub async fn grpc_open(channel: Channel, id: &str) -> Result<GrpcStream> {
    let open = async {
        let mut client = RelayServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(GRPC_QUEUE);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert("x-gsio-node-id", id.parse()?);
        let mut inbound = client.exchange(request).await?.into_inner();
        match inbound.message().await? {
            Some(envelope) if envelope.message_type == "Welcome" => Ok((tx, inbound)),
            Some(envelope) => bail!("expected a Welcome, got {envelope:?}"),
            None => bail!("stream ended before the Welcome"),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| anyhow!("{id}: no Welcome within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("gRPC peer {id}"))
}

/// A NATS connection of its own (each bench peer has one, as each WebSocket peer has its own
/// socket); returns once the server has accepted it.
pub async fn nats_connect(url: &str, name: &str) -> Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT);
    tokio::time::timeout(CONNECT_TIMEOUT, options.connect(url))
        .await
        .map_err(|_| anyhow!("{name}: NATS connect to {url} timed out"))?
        .with_context(|| format!("NATS peer {name}"))
}

/// Subscribes `client` to `subject` and returns once the server has the subscription.
/// async-nats's `flush` only writes the socket, so a publish from another connection could
/// still beat the SUB; a probe published on this connection to a second subscription comes back
/// only after the server has handled the SUB before it (one connection's commands are handled
/// in order).
pub async fn nats_subscribed(
    client: &async_nats::Client,
    subject: String,
) -> Result<async_nats::Subscriber> {
    let subscriber = client.subscribe(subject.clone()).await?;
    let probe_subject = client.new_inbox();
    let mut probe = client.subscribe(probe_subject.clone()).await?;
    client.publish(probe_subject, "probe".into()).await?;
    tokio::time::timeout(CONNECT_TIMEOUT, probe.next())
        .await
        .map_err(|_| anyhow!("subscribing to {subject}: no probe back within {CONNECT_TIMEOUT:?}"))?
        .ok_or_else(|| anyhow!("subscribing to {subject}: the probe subscription ended"))?;
    probe.unsubscribe().await?;
    Ok(subscriber)
}

/// The sending half of a peer.
pub enum Tx {
    Ws(SplitSink<Ws, Message>),
    Grpc(mpsc::Sender<pb::Envelope>),
    /// Publishes the very text a WebSocket peer sends, on its receiver's subject.
    Nats {
        client: async_nats::Client,
        subject: async_nats::Subject,
    },
}

impl Tx {
    async fn feed(&mut self, route: &Route, stamp: Stamp) -> Result<()> {
        match self {
            Tx::Ws(sink) => Ok(sink.feed(Message::text(route.ws_text(stamp))).await?),
            Tx::Grpc(tx) => tx
                .send(pb::Envelope {
                    message_type: route.message_type.to_owned(),
                    sender_id: route.sender.clone(),
                    recipient_id: route.recipient.clone(),
                    payload_json: wire::payload_json(stamp),
                    message_id: wire::message_id(&route.sender, stamp),
                })
                .await
                .map_err(|_| anyhow!("gRPC stream closed")),
            Tx::Nats { client, subject } => Ok(client
                .publish(subject.clone(), route.ws_text(stamp).into())
                .await?),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        match self {
            Tx::Ws(sink) => Ok(sink.flush().await?),
            Tx::Grpc(_) => Ok(()),
            Tx::Nats { client, .. } => Ok(client.flush().await?),
        }
    }
}

/// The receiving half of a peer.
pub enum Rx {
    Ws(SplitStream<Ws>),
    /// A receive-only peer: no split needed.
    WsOwned(Ws),
    Grpc(tonic::Streaming<pb::Envelope>),
    /// A subscription to the peer's own subject (it holds its connection open: the connection
    /// closes once its last client handle and subscriber are gone).
    Nats(async_nats::Subscriber),
}

/// One thing a receiver read.
#[derive(Debug)]
enum Incoming {
    Stamp(Stamp),
    Error(String),
    Other,
    Ended(String),
}

impl Rx {
    /// Cancel safe: each arm is a stream's `next`.
    async fn next(&mut self) -> Incoming {
        match self {
            Rx::Ws(stream) => ws_incoming(stream.next().await),
            Rx::WsOwned(ws) => ws_incoming(ws.next().await),
            Rx::Grpc(stream) => match stream.message().await {
                Ok(Some(envelope)) => match wire::scan(&envelope.payload_json) {
                    Some(stamp) => Incoming::Stamp(stamp),
                    None if envelope.message_type == "Error" => {
                        Incoming::Error(format!("gRPC Error envelope: {}", envelope.payload_json))
                    }
                    None => Incoming::Other,
                },
                Ok(None) => Incoming::Ended("gRPC stream ended".to_owned()),
                Err(status) => Incoming::Ended(format!("gRPC status: {status}")),
            },
            Rx::Nats(subscriber) => match subscriber.next().await {
                Some(message) => match std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(wire::scan)
                {
                    Some(stamp) => Incoming::Stamp(stamp),
                    None => Incoming::Other,
                },
                None => Incoming::Ended("NATS subscription ended".to_owned()),
            },
        }
    }
}

fn ws_incoming(frame: Option<Result<Message, tungstenite::Error>>) -> Incoming {
    match frame {
        Some(Ok(Message::Text(text))) => match wire::scan(&text) {
            Some(stamp) => Incoming::Stamp(stamp),
            None if wire::is_error_text(&text) => Incoming::Error(text.to_string()),
            None => Incoming::Other,
        },
        Some(Ok(Message::Close(frame))) => {
            Incoming::Ended(format!("closed by the server: {frame:?}"))
        }
        Some(Ok(_)) => Incoming::Other,
        Some(Err(error)) => Incoming::Ended(format!("WebSocket error: {error}")),
        None => Incoming::Ended("WebSocket ended".to_owned()),
    }
}

/// Where a sender waits for its window to open.
pub struct Gate {
    /// The count the sender waits for its receivers to reach (`u64::MAX`: not waiting).
    wake_at: AtomicU64,
    notify: Notify,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            wake_at: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
        }
    }
}

/// One sender → one receiver: how many of the sender's messages the receiver has counted, and
/// how many it should get.
pub struct Link {
    received: AtomicU64,
    expected: AtomicU64,
    /// Set when the receiver's connection ended: nothing more can arrive, so the drain stops
    /// waiting for it.
    ended: AtomicBool,
    gate: Arc<Gate>,
}

impl Link {
    pub fn new(gate: &Arc<Gate>) -> Arc<Link> {
        Arc::new(Link {
            received: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            gate: gate.clone(),
        })
    }

    /// Counts one message; the receiver that reaches the count its sender waits for wakes it
    /// (each receiver once per wait, so a fan-out publisher is not woken per message).
    fn delivered(&self) {
        // SeqCst pairs with the sender's store of `wake_at` then load of `received`: at least
        // one side sees the other's write, so a wake-up is never missed.
        let count = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if count == self.gate.wake_at.load(Ordering::SeqCst) {
            self.gate.notify.notify_one();
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Whether the drain should still wait for this link: short of its count, and its receiver
    /// still connected.
    fn awaited(&self) -> bool {
        !self.ended.load(Ordering::SeqCst) && self.received() < self.expected.load(Ordering::SeqCst)
    }
}

fn min_received(links: &[Arc<Link>]) -> u64 {
    links.iter().map(|l| l.received()).min().unwrap_or(u64::MAX)
}

/// How fast senders send.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// As fast as the window allows.
    Max,
    /// This many messages per second per sender, with burst catch-up after a late timer.
    PerSender(f64),
}

/// The bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub pacing: Pacing,
    pub duration: Duration,
    pub max_per_sender: u64,
    /// Messages in flight per (sender, receiver).
    pub window: u64,
    /// How long to wait for in-flight messages after sending stops.
    pub drain: Duration,
}

/// The receivers' count at which a sender with a full window (`sent` sent) resumes: half a
/// window behind.
pub fn resume_at(sent: u64, window: u64) -> u64 {
    sent.saturating_sub(window / 2)
}

/// How many messages a paced sender owes at `elapsed` after its start, having sent `sent`: the
/// first is due at once, then one every 1/rate seconds.
pub fn due(elapsed: Duration, rate: f64, sent: u64) -> u64 {
    let should = (elapsed.as_secs_f64() * rate).floor() as u64 + 1;
    should.saturating_sub(sent)
}

pub struct SenderSpec {
    pub tx: Tx,
    pub route: Route,
    pub links: Vec<Arc<Link>>,
    pub gate: Arc<Gate>,
}

pub struct ReceiverSpec {
    pub rx: Rx,
    /// The link it counts for; `None` for a peer that only watches for errors (the publisher).
    pub link: Option<Arc<Link>>,
}

/// Everything connected for one run.
#[derive(Default)]
pub struct Topology {
    pub senders: Vec<SenderSpec>,
    pub receivers: Vec<ReceiverSpec>,
}

struct SenderOutcome {
    failure: Option<String>,
    /// Held until the run ends: dropping a gRPC sender would end its stream, and with it the
    /// peer's receiving side.
    tx: Tx,
}

async fn run_sender(
    spec: SenderSpec,
    plan: Plan,
    start: Instant,
    sent_count: Arc<AtomicU64>,
) -> SenderOutcome {
    let SenderSpec {
        mut tx,
        route,
        links,
        gate,
    } = spec;
    let deadline = start + plan.duration;
    let mut sent = 0u64;
    // min(received) over the links, as last read.
    let mut acked = 0u64;
    let failure = loop {
        let now = Instant::now();
        if now >= deadline || sent >= plan.max_per_sender {
            break None;
        }
        let mut room = (acked + plan.window).saturating_sub(sent);
        if room == 0 {
            acked = min_received(&links);
            room = (acked + plan.window).saturating_sub(sent);
        }
        if room < (plan.window / 2).max(1) && room < plan.max_per_sender - sent {
            // The window is (nearly) full: resume once every receiver is within half a window,
            // so that sending restarts with room for many messages, not one per wake-up.
            let resume_at = resume_at(sent, plan.window);
            gate.wake_at.store(resume_at, Ordering::SeqCst);
            loop {
                acked = min_received(&links);
                if acked >= resume_at || Instant::now() >= deadline {
                    break;
                }
                let wake = deadline.min(Instant::now() + Duration::from_millis(10));
                let _ = tokio::time::timeout_at(wake.into(), gate.notify.notified()).await;
            }
            gate.wake_at.store(u64::MAX, Ordering::SeqCst);
            continue;
        }
        let owed = match plan.pacing {
            Pacing::Max => SEND_BATCH,
            Pacing::PerSender(rate) => {
                let owed = due(now - start, rate, sent);
                if owed == 0 {
                    let next = start + Duration::from_secs_f64(sent as f64 / rate);
                    tokio::time::sleep_until(next.min(deadline).into()).await;
                    continue;
                }
                owed
            }
        };
        let batch = room
            .min(owed)
            .min(SEND_BATCH)
            .min(plan.max_per_sender - sent);
        let mut failed = None;
        for _ in 0..batch {
            let stamp = Stamp {
                seq: sent,
                ts: now_ns(),
            };
            if let Err(error) = tx.feed(&route, stamp).await {
                failed = Some(format!("{}: send failed: {error:#}", route.sender));
                break;
            }
            sent += 1;
        }
        sent_count.store(sent, Ordering::SeqCst);
        if failed.is_some() {
            break failed;
        }
        if let Err(error) = tx.flush().await {
            break Some(format!("{}: flush failed: {error:#}", route.sender));
        }
    };
    let _ = tx.flush().await;
    SenderOutcome { failure, tx }
}

struct ReceiverOutcome {
    tally: Tally,
    latency: Latency,
    /// When the last stamped message arrived (bench clock), 0 if none.
    last_ns: u64,
    errors: u64,
    first_error: Option<String>,
    /// Why the connection ended before the run did.
    ended: Option<String>,
}

async fn run_receiver(spec: ReceiverSpec, mut stop: watch::Receiver<bool>) -> ReceiverOutcome {
    let ReceiverSpec { mut rx, link } = spec;
    let mut outcome = ReceiverOutcome {
        tally: Tally::default(),
        latency: Latency::default(),
        last_ns: 0,
        errors: 0,
        first_error: None,
        ended: None,
    };
    let stopped = stop.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            // Frames first: `stopped` is polled only when no frame is ready.
            biased;
            incoming = rx.next() => match incoming {
                Incoming::Stamp(stamp) => {
                    let now = now_ns();
                    outcome.tally.record(stamp.seq);
                    outcome.latency.record_ns(now.saturating_sub(stamp.ts));
                    outcome.last_ns = now;
                    if let Some(link) = &link {
                        link.delivered();
                    }
                }
                Incoming::Error(text) => {
                    outcome.errors += 1;
                    outcome.first_error.get_or_insert(text);
                }
                Incoming::Other => {}
                Incoming::Ended(reason) => {
                    outcome.ended = Some(reason);
                    if let Some(link) = &link {
                        link.ended.store(true, Ordering::SeqCst);
                    }
                    break;
                }
            },
            _ = &mut stopped => break,
        }
    }
    outcome
}

/// What one run measured.
pub struct TrafficOutcome {
    pub sent: u64,
    pub expected: u64,
    /// Stamped messages received, duplicates included.
    pub received: u64,
    /// Expected sequence numbers that never arrived (see [`Tally::lost`]).
    pub lost: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub gaps: u64,
    pub late: u64,
    pub elapsed_s: f64,
    pub latency: Latency,
    pub errors: u64,
    pub first_error: Option<String>,
    pub disconnects: u64,
    pub first_disconnect: Option<String>,
    pub server_warnings: u64,
    /// Each server process's usage, in the order of the PIDs given (`None`: not measured).
    pub servers: Vec<Option<ProcUsage>>,
    pub client: ProcUsage,
}

/// Runs `topology` under `plan`: receivers first, then senders until their bounds, then a
/// bounded drain, then everything is stopped and counted. The server's processes
/// (`server_pids`: one relay, or two relays and nats-server) are measured each; the warnings of
/// `server_logs` are counted.
pub async fn run_traffic(
    topology: Topology,
    plan: Plan,
    server_pids: &[u32],
    server_logs: &[&LogWatch],
) -> TrafficOutcome {
    let Topology { senders, receivers } = topology;
    let (stop_tx, stop_rx) = watch::channel(false);
    let receiver_links: Vec<Option<Arc<Link>>> = receivers.iter().map(|r| r.link.clone()).collect();
    let receiver_tasks: Vec<JoinHandle<ReceiverOutcome>> = receivers
        .into_iter()
        .map(|spec| tokio::spawn(run_receiver(spec, stop_rx.clone())))
        .collect();

    let warnings = || -> u64 { server_logs.iter().map(|log| log.warning_count()).sum() };
    let warnings_before = warnings();
    let meter = Meter::start(server_pids);
    let start = Instant::now();
    let start_ns = now_ns();
    let mut sender_links = Vec::new();
    let mut sent_counts = Vec::new();
    let mut sender_tasks = Vec::new();
    for spec in senders {
        let count = Arc::new(AtomicU64::new(0));
        sender_links.push(spec.links.clone());
        sent_counts.push(count.clone());
        sender_tasks.push(tokio::spawn(run_sender(spec, plan, start, count)));
    }

    // Senders stop by themselves at their deadline; this bound only catches a stuck write.
    let sender_bound = start + plan.duration + Duration::from_secs(30);
    let mut failures = Vec::new();
    let mut held = Vec::new();
    for task in sender_tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(sender_bound.into(), task).await {
            Ok(Ok(outcome)) => {
                failures.extend(outcome.failure);
                held.push(outcome.tx);
            }
            Ok(Err(join_error)) => failures.push(format!("sender task failed: {join_error}")),
            Err(_) => {
                abort.abort();
                failures.push("sender stuck past its deadline".to_owned());
            }
        }
    }
    let mut sent = 0;
    for (links, count) in sender_links.iter().zip(&sent_counts) {
        let count = count.load(Ordering::SeqCst);
        sent += count;
        for link in links {
            link.expected.fetch_add(count, Ordering::SeqCst);
        }
    }

    // Drain: until every link has what it expects or has lost its receiver, or the bound.
    let all_links: Vec<Arc<Link>> = sender_links.into_iter().flatten().collect();
    let drain_end = Instant::now() + plan.drain;
    while Instant::now() < drain_end && all_links.iter().any(|l| l.awaited()) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (servers, client) = meter.finish();
    let server_warnings = warnings() - warnings_before;
    let _ = stop_tx.send(true);

    let mut result = TrafficOutcome {
        sent,
        expected: 0,
        received: 0,
        lost: 0,
        duplicates: 0,
        unexpected: 0,
        gaps: 0,
        late: 0,
        elapsed_s: 0.0,
        latency: Latency::default(),
        errors: 0,
        first_error: None,
        disconnects: failures.len() as u64,
        first_disconnect: failures.first().cloned(),
        server_warnings,
        servers,
        client,
    };
    let mut last_ns = start_ns;
    for (task, link) in receiver_tasks.into_iter().zip(receiver_links) {
        let expected = link
            .as_ref()
            .map_or(0, |l| l.expected.load(Ordering::SeqCst));
        result.expected += expected;
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(outcome)) => {
                result.received += outcome.tally.received;
                result.lost += outcome.tally.lost(expected);
                result.duplicates += outcome.tally.duplicates;
                result.unexpected += outcome.tally.unexpected(expected);
                result.gaps += outcome.tally.gaps;
                result.late += outcome.tally.late;
                result.latency.merge(&outcome.latency);
                result.errors += outcome.errors;
                if result.first_error.is_none() {
                    result.first_error = outcome.first_error;
                }
                if let Some(reason) = outcome.ended {
                    result.disconnects += 1;
                    result.first_disconnect.get_or_insert(reason);
                }
                last_ns = last_ns.max(outcome.last_ns);
            }
            _ => {
                // Its count is unknown: all of it is counted lost.
                result.lost += expected;
                result.disconnects += 1;
                result
                    .first_disconnect
                    .get_or_insert_with(|| "receiver did not stop".to_owned());
            }
        }
    }
    drop(held);
    result.elapsed_s = if result.received > 0 {
        (last_ns - start_ns) as f64 / 1e9
    } else {
        start.elapsed().as_secs_f64()
    };
    result
}

/// [`open_many`] 64 at a time, where every one must open: the items in index order, or an
/// error naming how many of `count` `what` failed and the first failure.
pub async fn open_all<T, F, Fut>(count: usize, what: &str, open: F) -> Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let (opened, failures, first) = open_many(count, 64, open).await;
    if failures > 0 {
        bail!(
            "{failures} of {count} {what} failed to connect; first: {}",
            first.unwrap_or_default()
        );
    }
    Ok(opened.into_iter().map(|(_, item)| item).collect())
}

/// Opens `count` items with `open(i)`, at most `parallel` at once, in index order; failures are
/// counted and the first kept.
pub async fn open_many<T, F, Fut>(
    count: usize,
    parallel: usize,
    open: F,
) -> (Vec<(usize, T)>, usize, Option<String>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut opened: Vec<(usize, T)> = Vec::with_capacity(count);
    let mut failures = 0;
    let mut first_failure = None;
    let mut results = futures_util::stream::iter(0..count)
        .map(|i| {
            let fut = open(i);
            async move { (i, fut.await) }
        })
        .buffer_unordered(parallel.max(1));
    while let Some((i, result)) = results.next().await {
        match result {
            Ok(item) => opened.push((i, item)),
            Err(error) => {
                failures += 1;
                first_failure.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    opened.sort_by_key(|(i, _)| *i);
    (opened, failures, first_failure)
}

/// A number unique to each topology in this process, put in its peer ids: a new run never
/// asks for an id that a closing connection of the previous run may still hold.
pub fn next_tag() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Which front a peer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Ws,
    Grpc,
}

/// Where a peer connects: one front of one relay (the two relays of a cluster are two).
#[derive(Debug, Clone, Copy)]
pub struct Access<'u> {
    pub front: Front,
    pub ws_url: &'u str,
    /// The gRPC front's URL; only read for [`Front::Grpc`].
    pub grpc_url: &'u str,
}

impl<'u> Access<'u> {
    /// The WebSocket front at `ws_url`.
    pub fn ws(ws_url: &'u str) -> Access<'u> {
        Access {
            front: Front::Ws,
            ws_url,
            grpc_url: "",
        }
    }
}

/// A connected peer, both halves.
pub struct Peer {
    pub tx: Tx,
    pub rx: Rx,
}

/// Connects one peer through `access` (a gRPC peer gets its own HTTP/2 connection, as a node
/// would).
pub async fn connect_peer(access: Access<'_>, id: &str) -> Result<Peer> {
    match access.front {
        Front::Ws => {
            let (sink, stream) = ws_connect(access.ws_url, id).await?.split();
            Ok(Peer {
                tx: Tx::Ws(sink),
                rx: Rx::Ws(stream),
            })
        }
        Front::Grpc => {
            let channel = grpc_channel(access.grpc_url).await?;
            let (tx, inbound) = grpc_open(channel, id).await?;
            Ok(Peer {
                tx: Tx::Grpc(tx),
                rx: Rx::Grpc(inbound),
            })
        }
    }
}

/// `pairs` pairs `p<n>a` (through `a`) ↔ `p<n>b` (through `b`), each sending directed
/// messages to its partner (`n` is the pair's number plus a per-run offset; the floor pairs ids
/// by that shape).
pub async fn pairs_topology(pairs: usize, a: Access<'_>, b: Access<'_>) -> Result<Topology> {
    let base = next_tag() * 1_000_000;
    let peers = open_all(pairs * 2, "peers", |i| {
        let (access, side) = if i % 2 == 0 { (a, 'a') } else { (b, 'b') };
        let id = format!("p{}{side}", base + i / 2);
        async move { connect_peer(access, &id).await }
    })
    .await?;
    let mut topology = Topology::default();
    let mut peers = peers.into_iter();
    for i in 0..pairs {
        let (pa, pb) = (
            peers.next().expect("counted"),
            peers.next().expect("counted"),
        );
        let (ida, idb) = (format!("p{}a", base + i), format!("p{}b", base + i));
        let (gate_a, gate_b) = (Arc::new(Gate::default()), Arc::new(Gate::default()));
        let (a_to_b, b_to_a) = (Link::new(&gate_a), Link::new(&gate_b));
        topology.senders.push(SenderSpec {
            tx: pa.tx,
            route: Route::new(wire::DIRECTED_TYPE, &ida, &idb),
            links: vec![a_to_b.clone()],
            gate: gate_a,
        });
        topology.senders.push(SenderSpec {
            tx: pb.tx,
            route: Route::new(wire::DIRECTED_TYPE, &idb, &ida),
            links: vec![b_to_a.clone()],
            gate: gate_b,
        });
        topology.receivers.push(ReceiverSpec {
            rx: pb.rx,
            link: Some(a_to_b),
        });
        topology.receivers.push(ReceiverSpec {
            rx: pa.rx,
            link: Some(b_to_a),
        });
    }
    Ok(topology)
}

/// One WebSocket publisher `pub<tag>` (at `publisher_url`) broadcasting to `subscribers`
/// WebSocket subscribers `s<tag>_<i>` (at `subscribers_url`: the same relay, or another of its
/// cluster).
pub async fn fanout_topology(
    subscribers: usize,
    publisher_url: &str,
    subscribers_url: &str,
) -> Result<Topology> {
    let tag = next_tag();
    let subs = open_all(subscribers, "subscribers", |i| {
        let id = format!("s{tag}_{i}");
        async move { ws_connect(subscribers_url, &id).await }
    })
    .await?;
    let publisher = format!("pub{tag}");
    let (sink, stream) = ws_connect(publisher_url, &publisher).await?.split();
    let gate = Arc::new(Gate::default());
    let mut topology = Topology::default();
    let mut links = Vec::with_capacity(subscribers);
    for ws in subs {
        let link = Link::new(&gate);
        links.push(link.clone());
        topology.receivers.push(ReceiverSpec {
            rx: Rx::WsOwned(ws),
            link: Some(link),
        });
    }
    // The publisher's own inbound side: only errors could come (broadcast skips the sender).
    topology.receivers.push(ReceiverSpec {
        rx: Rx::Ws(stream),
        link: None,
    });
    topology.senders.push(SenderSpec {
        tx: Tx::Ws(sink),
        route: Route::new(wire::BROADCAST_TYPE, &publisher, ""),
        links,
        gate,
    });
    Ok(topology)
}

/// The subject a NATS bench peer `id` receives on, in run `tag`.
pub fn nats_subject(tag: usize, id: &str) -> String {
    format!("bench.{tag}.{id}")
}

/// The directed shape through nats-server alone: `pairs` pairs `p<n>a` ↔ `p<n>b`, each peer on
/// a connection of its own, subscribed to a subject of its own ([`nats_subject`]) and
/// publishing to its partner's. The messages are the directed scenario's envelopes, carried as
/// opaque payloads.
pub async fn nats_pairs_topology(pairs: usize, url: &str) -> Result<Topology> {
    let tag = next_tag();
    let peers = open_all(pairs * 2, "NATS peers", |i| {
        let side = if i % 2 == 0 { 'a' } else { 'b' };
        let id = format!("p{}{side}", i / 2);
        async move {
            let client = nats_connect(url, &id).await?;
            let subscriber = nats_subscribed(&client, nats_subject(tag, &id)).await?;
            Ok((client, subscriber))
        }
    })
    .await?;
    let mut topology = Topology::default();
    let mut peers = peers.into_iter();
    for i in 0..pairs {
        let ((client_a, sub_a), (client_b, sub_b)) = (
            peers.next().expect("counted"),
            peers.next().expect("counted"),
        );
        let (ida, idb) = (format!("p{i}a"), format!("p{i}b"));
        let (gate_a, gate_b) = (Arc::new(Gate::default()), Arc::new(Gate::default()));
        let (a_to_b, b_to_a) = (Link::new(&gate_a), Link::new(&gate_b));
        topology.senders.push(SenderSpec {
            tx: Tx::Nats {
                client: client_a,
                subject: nats_subject(tag, &idb).into(),
            },
            route: Route::new(wire::DIRECTED_TYPE, &ida, &idb),
            links: vec![a_to_b.clone()],
            gate: gate_a,
        });
        topology.senders.push(SenderSpec {
            tx: Tx::Nats {
                client: client_b,
                subject: nats_subject(tag, &ida).into(),
            },
            route: Route::new(wire::DIRECTED_TYPE, &idb, &ida),
            links: vec![b_to_a.clone()],
            gate: gate_b,
        });
        topology.receivers.push(ReceiverSpec {
            rx: Rx::Nats(sub_b),
            link: Some(a_to_b),
        });
        topology.receivers.push(ReceiverSpec {
            rx: Rx::Nats(sub_a),
            link: Some(b_to_a),
        });
    }
    Ok(topology)
}

/// The fan-out shape through nats-server alone: one publisher and `subscribers` subscribers,
/// each on a connection of its own, all on one shared subject.
pub async fn nats_fanout_topology(subscribers: usize, url: &str) -> Result<Topology> {
    let tag = next_tag();
    let subject = nats_subject(tag, "fanout");
    let subs = open_all(subscribers, "NATS subscribers", |i| {
        let id = format!("s{i}");
        let subject = subject.clone();
        async move {
            let client = nats_connect(url, &id).await?;
            let subscriber = nats_subscribed(&client, subject).await?;
            Ok((client, subscriber))
        }
    })
    .await?;
    let publisher = format!("pub{tag}");
    let client = nats_connect(url, &publisher).await?;
    let gate = Arc::new(Gate::default());
    let mut topology = Topology::default();
    let mut links = Vec::with_capacity(subscribers);
    for (_client, subscriber) in subs {
        let link = Link::new(&gate);
        links.push(link.clone());
        topology.receivers.push(ReceiverSpec {
            rx: Rx::Nats(subscriber),
            link: Some(link),
        });
    }
    topology.senders.push(SenderSpec {
        tx: Tx::Nats {
            client,
            subject: subject.into(),
        },
        route: Route::new(wire::BROADCAST_TYPE, &publisher, ""),
        links,
        gate,
    });
    Ok(topology)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_message_is_due_at_once_then_one_per_period() {
        let ms = Duration::from_millis;
        // 100 msgs/s: one every 10 ms.
        assert_eq!(due(ms(0), 100.0, 0), 1);
        assert_eq!(due(ms(0), 100.0, 1), 0);
        assert_eq!(due(ms(9), 100.0, 1), 0);
        assert_eq!(due(ms(10), 100.0, 1), 1);
        // A timer that fires late owes the backlog (burst catch-up).
        assert_eq!(due(ms(55), 100.0, 1), 5);
        // Ahead of schedule owes nothing.
        assert_eq!(due(ms(20), 100.0, 10), 0);
    }

    #[test]
    fn a_paced_sender_sends_rate_times_duration() {
        // Over 5 s at 250/s, the owed count at the deadline is 1250 (+ the one at t=0).
        assert_eq!(due(Duration::from_millis(4_999), 250.0, 0), 1250);
    }

    #[test]
    fn a_link_wakes_its_sender_once_when_reaching_the_resume_count() {
        let gate = Arc::new(Gate::default());
        let link = Link::new(&gate);
        link.delivered();
        assert_eq!(link.received(), 1);
        gate.wake_at.store(resume_at(1003, 1000), Ordering::SeqCst);
        assert_eq!(gate.wake_at.load(Ordering::SeqCst), 503);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 1..502 {
                link.delivered();
            }
            // Not there yet: no wake-up.
            let early =
                tokio::time::timeout(Duration::from_millis(20), gate.notify.notified()).await;
            assert!(early.is_err());
            link.delivered();
            link.delivered();
            // Reached once: one stored permit, so a sender that waits now returns at once.
            tokio::time::timeout(Duration::from_secs(5), gate.notify.notified())
                .await
                .expect("permit stored");
        });
        assert_eq!(resume_at(10, 1000), 0);
    }

    #[test]
    fn the_slowest_receiver_holds_the_window() {
        let gate = Arc::new(Gate::default());
        let links: Vec<_> = (0..3).map(|_| Link::new(&gate)).collect();
        for _ in 0..5 {
            links[0].delivered();
        }
        links[1].delivered();
        for _ in 0..3 {
            links[2].delivered();
        }
        assert_eq!(min_received(&links), 1);
        assert_eq!(min_received(&[]), u64::MAX);
    }

    #[test]
    fn ws_urls_give_their_host() {
        assert_eq!(ws_host("ws://127.0.0.1:8787").unwrap(), "127.0.0.1:8787");
        assert_eq!(ws_host("ws://127.0.0.1:8787/").unwrap(), "127.0.0.1:8787");
        assert!(ws_host("http://127.0.0.1:1").is_err());
    }

    /// A runtime for one test: two worker threads, as the bench itself runs on this machine.
    fn two_threads() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// The whole counting path, over real sockets to a real floor: every message sent is
    /// counted once and nothing is lost. (Loss: see [`a_lossy_target_shows_every_loss`].)
    #[test]
    fn a_run_against_the_floor_counts_everything() {
        two_threads().block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            tokio::spawn(crate::floor::run(addr, 4096, MAX_MESSAGE_BYTES));
            let url = format!("ws://{addr}");
            // Wait for the floor to listen (bounded).
            for _ in 0..100 {
                if TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let plan = Plan {
                pacing: Pacing::Max,
                duration: Duration::from_secs(30),
                max_per_sender: 500,
                window: 64,
                drain: Duration::from_secs(10),
            };
            let topology = fanout_topology(3, &url, &url).await.unwrap();
            let outcome = run_traffic(topology, plan, &[], &[]).await;
            assert_eq!(outcome.sent, 500);
            assert_eq!(outcome.expected, 1500);
            assert_eq!(outcome.received, 1500);
            assert_eq!((outcome.lost, outcome.gaps, outcome.late), (0, 0, 0));
            assert_eq!(outcome.latency.count(), 1500);
            assert_eq!(outcome.disconnects, 0);

            let topology = pairs_topology(2, Access::ws(&url), Access::ws(&url))
                .await
                .unwrap();
            let outcome = run_traffic(topology, plan, &[], &[]).await;
            assert_eq!(outcome.sent, 2000);
            assert_eq!(outcome.expected, 2000);
            assert_eq!(outcome.received, 2000);
            assert_eq!(outcome.lost, 0);
        });
    }

    /// The NATS clients over a real nats-server (the one `scripts/setup-nats.sh` installs):
    /// every message of both shapes is counted once, nothing is lost, and the server's PID is
    /// what the run measures.
    #[test]
    fn a_run_through_nats_server_counts_everything() {
        // Spawned from this thread, which outlives the runtime's (the death signal follows it).
        let nats = crate::proc::spawn_nats().expect("nats-server (run scripts/setup-nats.sh)");
        let pid = nats.child.pid();
        two_threads().block_on(async {
            let plan = Plan {
                pacing: Pacing::Max,
                duration: Duration::from_secs(30),
                max_per_sender: 500,
                window: 64,
                drain: Duration::from_secs(10),
            };
            let topology = nats_fanout_topology(3, &nats.url).await.unwrap();
            let outcome = run_traffic(topology, plan, &[pid], &[]).await;
            assert_eq!(outcome.sent, 500);
            assert_eq!((outcome.expected, outcome.received), (1500, 1500));
            assert_eq!((outcome.lost, outcome.gaps, outcome.late), (0, 0, 0));
            assert_eq!(outcome.latency.count(), 1500);
            assert_eq!(outcome.disconnects, 0);
            assert!(matches!(
                outcome.servers[..],
                [Some(server)] if server.rss_after_kib > 0
            ));

            let topology = nats_pairs_topology(2, &nats.url).await.unwrap();
            let outcome = run_traffic(topology, plan, &[pid], &[]).await;
            assert_eq!(outcome.sent, 2000);
            assert_eq!((outcome.expected, outcome.received), (2000, 2000));
            assert_eq!((outcome.lost, outcome.duplicates), (0, 0));
        });
        let status = nats.stop();
        assert!(status.contains("exit"), "{status}");
    }

    /// A stand-in target on `listener`: the receiver `p0b` and the sender `p0a` each get a
    /// Welcome once registered; every frame of `p0a` goes to `p0b` `copies(seq)` times (0: the
    /// message is lost, 2: duplicated), and right after the frame with sequence number `last`
    /// the target closes `p0b`'s connection. The receiver has then read everything forwarded
    /// to it, so the counts are exact and the run's drain need not wait for anything.
    async fn lossy_target(listener: tokio::net::TcpListener, copies: fn(u64) -> usize, last: u64) {
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        let (mut sender, mut receiver) = (None, None);
        while sender.is_none() {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut id = String::new();
            // The callback's error type is tungstenite's (a whole HTTP response).
            #[allow(clippy::result_large_err)]
            let handshake =
                tokio_tungstenite::accept_hdr_async(tcp, |request: &Request, response| {
                    id = request
                        .uri()
                        .query()
                        .unwrap_or_default()
                        .replace("node_id=", "");
                    Ok::<Response, _>(response)
                });
            let mut ws = handshake.await.unwrap();
            ws.send(Message::text(wire::floor_welcome(&id)))
                .await
                .unwrap();
            match id.as_str() {
                "p0b" => receiver = Some(ws),
                "p0a" => sender = Some(ws),
                other => panic!("unexpected peer {other}"),
            }
        }
        let mut sender = sender.expect("connected");
        // The test connects the receiver first.
        let mut receiver = receiver.expect("the receiver connects before the sender");
        while let Some(Ok(frame)) = sender.next().await {
            let Message::Text(text) = &frame else {
                continue;
            };
            let seq = wire::scan(text).expect("a stamped frame").seq;
            for _ in 0..copies(seq) {
                receiver.feed(frame.clone()).await.unwrap();
            }
            if seq == last {
                receiver.close(None).await.unwrap();
                return;
            }
            receiver.flush().await.unwrap();
        }
    }

    /// One sender `p0a` → one receiver `p0b` through [`lossy_target`]: 100 messages.
    fn lossy_run(copies: fn(u64) -> usize) -> TrafficOutcome {
        two_threads().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("ws://{}", listener.local_addr().unwrap());
            tokio::spawn(lossy_target(listener, copies, 99));
            let (_, receiving) = ws_connect(&url, "p0b").await.unwrap().split();
            let (sending, _) = ws_connect(&url, "p0a").await.unwrap().split();
            let gate = Arc::new(Gate::default());
            let link = Link::new(&gate);
            let topology = Topology {
                senders: vec![SenderSpec {
                    tx: Tx::Ws(sending),
                    route: Route::new(wire::DIRECTED_TYPE, "p0a", "p0b"),
                    links: vec![link.clone()],
                    gate,
                }],
                receivers: vec![ReceiverSpec {
                    rx: Rx::Ws(receiving),
                    link: Some(link),
                }],
            };
            let plan = Plan {
                pacing: Pacing::Max,
                duration: Duration::from_secs(30),
                max_per_sender: 100,
                // Never binding: the sender does not wait for messages that will not come.
                window: 1000,
                drain: Duration::from_secs(30),
            };
            run_traffic(topology, plan, &[], &[]).await
        })
    }

    /// Loss is counted by sequence number against what the sender reported as sent, over real
    /// sockets: messages dropped in the middle or at the end are lost, and duplicates are
    /// counted on their own, never standing in for a lost message.
    #[test]
    fn a_lossy_target_shows_every_loss() {
        // Every 10th message dropped (seq 3, 13, ...) and every 10th duplicated (7, 17, ...):
        // 100 arrivals for 100 sent, and still 10 lost.
        let outcome = lossy_run(|seq| match seq % 10 {
            3 => 0,
            7 => 2,
            _ => 1,
        });
        assert_eq!(
            (outcome.sent, outcome.expected, outcome.received),
            (100, 100, 100)
        );
        assert_eq!(
            (outcome.lost, outcome.duplicates, outcome.unexpected),
            (10, 10, 0)
        );
        assert_eq!((outcome.gaps, outcome.late), (10, 0));
        // The target closed the receiver's connection after the last message.
        assert_eq!(outcome.disconnects, 1);

        // The target stops forwarding at seq 60: the last 40 are lost, with no gap to show it.
        let outcome = lossy_run(|seq| usize::from(seq < 60));
        assert_eq!((outcome.sent, outcome.received), (100, 60));
        assert_eq!((outcome.lost, outcome.duplicates, outcome.gaps), (40, 0, 0));
    }
}
