//! Binding both fronts and the admin listener, and running them until a shutdown signal (see
//! [`crate::shutdown`]). The admin listener ([`crate::admin`]) answers all through the drain
//! (`/readyz` 503) and stops last.
//!
//! # The connection limit
//! `server.max_connections` bounds *peers*: WebSocket connections and gRPC `Exchange` streams
//! draw from one pool of slots. A WebSocket client past it is not accepted until a slot frees (it
//! waits in the kernel's backlog); a gRPC stream past it is refused at once with
//! `RESOURCE_EXHAUSTED` ([`crate::grpc::service`]), since one HTTP/2 connection carries any
//! number of streams and a stream has no backlog to wait in. TCP connections to the gRPC port are
//! not peers (one may carry many, or only health checks), so they take no peer slot; they are
//! bounded separately by the same number, past which they wait in the backlog as well.
//!
//! # Per client address
//! Before either slot, right after `accept`, a connection's address is checked against the
//! per-address limits ([`crate::limits`], decided by `gsio_relay_core::address`): a refused one
//! takes no slot and no task of its own (WebSocket: a bounded 429; gRPC: closed).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use gsio_relay_core::address::Refusal;
use gsio_relay_core::RelayConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::grpc::server::relay_service_server::RelayServiceServer;
use crate::grpc::RelayGrpc;
use crate::limits::{AddressGuard, Addresses};
use crate::metrics::Front;
use crate::reload::{ConfigWatch, ReloadHandle};
use crate::shutdown::{Controller, Phase};
use crate::state::{Relay, Stats};
use crate::ws;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// `[cluster]` could not be set up (a credentials file unreadable, a URL NATS rejects).
    /// NATS being down is not this: the relay starts and joins when it comes up.
    #[error("[cluster]: {0}")]
    Cluster(String),
}

/// Both fronts and the admin listener, bound and ready to run.
pub struct Server {
    ws: TcpListener,
    grpc: TcpListener,
    /// Metrics, probes and the console ([`crate::admin`]).
    admin: TcpListener,
    relay: Arc<Relay>,
    /// The configuration the relay starts with: what only start-time code reads (the listeners,
    /// the connection limit).
    config: Arc<RelayConfig>,
    /// The file to reload when it changes, once [`Server::watch_config`] asked for it.
    watch: Option<ConfigWatch>,
}

async fn listen(addr: SocketAddr, key: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, key, source })
}

impl Server {
    /// Binds the WebSocket, gRPC and admin listeners (port 0 picks a free port).
    pub async fn bind(config: RelayConfig) -> Result<Server, ServerError> {
        let ws = listen(config.server.ws_listen, "server.ws_listen").await?;
        let grpc = listen(config.server.grpc_listen, "server.grpc_listen").await?;
        let admin = listen(config.server.admin_listen, "server.admin_listen").await?;
        let config = Arc::new(config);
        let relay = Relay::new(config.clone());
        if let Some(settings) = &config.cluster {
            crate::cluster::Cluster::connect(&relay, settings.clone())
                .await
                .map_err(ServerError::Cluster)?;
        }
        Ok(Server {
            ws,
            grpc,
            admin,
            relay,
            config,
            watch: None,
        })
    }

    /// Reloads `path` while the relay runs: when the file changes (its folder is watched), and
    /// whenever the returned handle asks (the binary does on `SIGHUP`). See [`crate::reload`].
    pub fn watch_config(&mut self, path: impl Into<PathBuf>) -> ReloadHandle {
        let (watch, handle) = ConfigWatch::new(path.into());
        self.watch = Some(watch);
        handle
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws.local_addr().expect("bound listener has an address")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn relay(&self) -> Arc<Relay> {
        self.relay.clone()
    }

    /// Serves until `signal` resolves, then shuts down gracefully: stop reading, deliver what is
    /// queued, tell every peer, and return once the last connection is done (or the grace
    /// period has passed).
    pub async fn run(self, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            ws,
            grpc,
            admin,
            relay,
            config,
            watch,
        } = self;
        warn_if_open_beyond_loopback(&config, [ws.local_addr().ok(), grpc.local_addr().ok()]);
        let controller = Controller::new();
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            relay.clone(),
            controller.subscribe(),
            async move {
                let _ = admin_stopped.await;
            },
        ));
        if let Some(watch) = watch {
            tokio::spawn(crate::reload::watch(
                watch,
                relay.clone(),
                controller.subscribe(),
            ));
        }
        let max_connections = config.server.max_connections;
        // Peers: WebSocket connections and gRPC streams (see the module's docs).
        let peer_slots = Arc::new(Semaphore::new(max_connections));
        // TCP connections to the gRPC port, which are not peers: separate, so that an idle
        // HTTP/2 connection never holds a slot a peer needs, and a connection carrying streams
        // does not count twice.
        let grpc_connection_slots = Arc::new(Semaphore::new(max_connections));
        // Fixed for the gRPC front's life (tonic takes it here); see `crate::reload`.
        let hard_limit = relay.grpc_frame_limit();

        // Aborted when `run` returns: pending announcements do not outlive the relay.
        let presence_timer = tokio::spawn(relay.clone().run_presence_timer());
        // Connections per client address, both fronts together (see `crate::limits`).
        let addresses = Addresses::new(relay.clone());
        let ws_task = tokio::spawn(ws::serve(
            ws,
            relay.clone(),
            peer_slots.clone(),
            controller.subscribe(),
            addresses.clone(),
        ));

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<RelayServiceServer<RelayGrpc>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let relay_service = RelayServiceServer::new(RelayGrpc::new(
            relay.clone(),
            controller.subscribe(),
            peer_slots,
        ))
        .max_decoding_message_size(hard_limit)
        // What a peer is sent was accepted under the limit in force when it was sent, which a
        // reload may have raised past the start's: the encoder must not refuse it.
        .max_encoding_message_size(
            gsio_relay_core::config::Limits {
                max_message_bytes: gsio_relay_core::config::MAX_MESSAGE_BYTES,
                ..Default::default()
            }
            .hard_frame_bytes(),
        );
        let grpc_shutdown = controller.subscribe();
        let limits = &config.limits;
        // HTTP/2 PINGs: a connection that answers none within the timeout is closed, and each
        // of its streams' peers leaves (ids freed, `PeerLeft` announced).
        let keepalive =
            (limits.ping_interval_ms != 0).then(|| Duration::from_millis(limits.ping_interval_ms));
        let grpc_server = tonic::transport::Server::builder()
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(Duration::from_millis(limits.pong_timeout_ms)))
            .max_concurrent_streams(max_concurrent_streams(
                max_connections,
                limits.grpc_max_concurrent_streams,
            ))
            .http2_max_header_list_size(Some(limits.grpc_max_header_list_bytes))
            // tonic 0.14 hands its own `None` to hyper here, which turns hyper's default (1024)
            // off: set it back. A client whose frames make the server reset this many streams
            // (CVE-2025-8671, "MadeYouReset") gets a GOAWAY `ENHANCE_YOUR_CALM`.
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(relay_service)
            .serve_with_incoming_shutdown(
                limited_incoming(
                    grpc,
                    grpc_connection_slots,
                    controller.subscribe(),
                    addresses,
                ),
                async move { grpc_shutdown.reached(Phase::Close).await },
            );
        let grpc_task = tokio::spawn(grpc_server);

        signal.await;
        tracing::info!("shutting down: no new connections, delivering what is queued");
        health
            .set_not_serving::<RelayServiceServer<RelayGrpc>>()
            .await;
        // One grace period for the whole shutdown: the connections and the gRPC server's own
        // graceful end share this deadline. Read now: a reload may have changed it.
        let grace = Duration::from_millis(relay.config().server.shutdown_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        if !controller.shut_down(deadline).await {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
        }
        // Every connection is done: nobody is left to announce anything to.
        presence_timer.abort();
        if let Some(cluster) = relay.cluster() {
            // Their releases go out, so the other relays free the ids now, not at a timeout.
            cluster.stop(ADMIN_LINGER).await;
        }
        let _ = ws_task.await;
        let mut grpc_task = grpc_task;
        match tokio::time::timeout_at(deadline, &mut grpc_task).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join_error)) => tracing::error!("gRPC server task failed: {join_error}"),
            Err(_) => {
                // Not left running (detached) after `run` returns.
                grpc_task.abort();
                tracing::warn!("gRPC connections still open after the grace period");
            }
        }
        // Last: it answered (`/readyz` 503) all through the drain. Requests in flight get a
        // moment to finish.
        let _ = stop_admin.send(());
        let mut admin_task = admin_task;
        match tokio::time::timeout(ADMIN_LINGER, &mut admin_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!("admin listener failed: {error}"),
            Ok(Err(join_error)) => tracing::error!("admin listener task failed: {join_error}"),
            Err(_) => admin_task.abort(),
        }
        let stats = &relay.stats;
        tracing::info!(
            connections = Stats::get(&stats.connections),
            messages_routed = Stats::get(&stats.messages_routed),
            deliveries = Stats::get(&stats.deliveries),
            errors_sent = Stats::get(&stats.errors_sent),
            slow_consumer_disconnects = Stats::get(&stats.slow_consumer_disconnects),
            "relay stopped"
        );
        Ok(())
    }
}

/// How long the admin listener may take, once the relay has stopped, to finish the requests in
/// flight.
const ADMIN_LINGER: Duration = Duration::from_secs(1);

/// Streams a client may have open at once on one HTTP/2 connection beyond the peer limit: room
/// for health checks (`Watch` is long-lived) and reflection next to a full set of `Exchange`
/// streams.
const NON_PEER_STREAMS: u32 = 100;

/// Locally reset streams (protocol errors of the client's) one gRPC connection may cause before
/// it is ended with `GOAWAY` `ENHANCE_YOUR_CALM`: hyper's own default, which tonic turns off.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` of every gRPC connection:
/// `limits.grpc_max_concurrent_streams`, and never more than the whole peer limit plus room for
/// the calls that are not peers (health checks, reflection). A client at this setting queues
/// further streams itself, where the relay never sees them; below the peer limit, that is the
/// price of bounding what one TCP connection can make the relay hold. (Never unset, which means
/// unbounded: refused streams are cheap, but not free.)
fn max_concurrent_streams(max_connections: usize, configured: u32) -> u32 {
    u32::try_from(max_connections)
        .unwrap_or(u32::MAX)
        .saturating_add(NON_PEER_STREAMS)
        .min(configured)
}

/// gRPC connections, each holding one of `slots` (the gRPC port's own, not the peer slots) for
/// its lifetime.
fn limited_incoming(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    shutdown: crate::shutdown::Shutdown,
    addresses: Arc<Addresses>,
) -> impl futures_util::Stream<Item = io::Result<Limited>> {
    futures_util::stream::unfold(listener, move |listener| {
        let slots = slots.clone();
        let shutdown = shutdown.clone();
        let addresses = addresses.clone();
        async move {
            // A refused gRPC connection gets a GOAWAY (see `crate::limits`).
            let accepted = accept_with_slot(
                &listener,
                &slots,
                &shutdown,
                &addresses,
                Front::Grpc,
                |stream, refusal| addresses.refuse_grpc(stream, refusal),
            )
            .await?;
            let limited = Limited {
                stream: accepted.stream,
                _permit: accepted.permit,
                _address: accepted.address,
                linger: None,
            };
            Some((Ok(limited), listener))
        }
    })
}

/// A connection a front accepted: the socket, its slot, and its place in the per-address table.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    pub permit: OwnedSemaphorePermit,
    pub address: AddressGuard,
}

/// The next connection of a front and one of `slots` for it (the peer slots on the WebSocket
/// front, the gRPC port's connection slots on the other); `None` once shutdown stops accepting.
/// Its address is checked first ([`Addresses::admit`]): a connection refused there takes no
/// slot and is handed to `refuse`. The slot is taken right after: while none is free the front
/// accepts nobody else, so past the limit new clients wait in the kernel's backlog, and an idle
/// front never holds a slot the other front needs.
pub(crate) async fn accept_with_slot(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &crate::shutdown::Shutdown,
    addresses: &Arc<Addresses>,
    front: Front,
    refuse: impl Fn(TcpStream, Refusal),
) -> Option<Accepted> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.reached(Phase::StopReading) => return None,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("{} accept failed: {error}", front.as_str());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let address = match addresses.admit(peer.ip(), front) {
            Ok(address) => address,
            Err(refusal) => {
                refuse(stream, refusal);
                continue;
            }
        };
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.reached(Phase::StopReading) => return None,
        };
        tune(&stream);
        return Some(Accepted {
            stream,
            permit,
            address,
        });
    }
}

/// No Nagle delay (envelopes are small and latency matters), and TCP keepalive so that a peer
/// whose machine vanished is noticed (and its id freed) in about a minute and a half, at no cost
/// to idle connections in the relay itself.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(45))
        .with_interval(Duration::from_secs(15))
        .with_retries(3);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// How long a gRPC connection the relay ends waits, after its last byte, for the client to close
/// its side (see [`Limited`]'s `poll_shutdown`).
const LINGER: Duration = Duration::from_secs(5);

/// A TCP connection to the gRPC port that frees its connection slot when dropped, and that ends
/// with a lingering close.
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Its client address's place in the per-address table, given back when it ends.
    _address: AddressGuard,
    /// Set once the relay has sent its last byte: how long it still waits for the client to
    /// close its side.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Called by HTTP/2 when it ends the connection (at shutdown, after the `GOAWAY` and the last
    /// stream's status): sends our FIN, then reads and drops whatever the client still sends
    /// until it closes its side, for at most [`LINGER`]. Closing the socket at once would lose
    /// the end of the last streams: a client still reading them sends window updates, and a
    /// socket closed with unread bytes (or receiving bytes after it is closed) answers with a
    /// reset, which discards what the client's kernel had not handed to it yet and what ours
    /// had not sent. The WebSocket front waits for the client's close frame for the same reason.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 1024];
        loop {
            if let Some(linger) = this.linger.as_mut() {
                if linger.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
            }
            let mut unread = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.stream).poll_read(cx, &mut unread)) {
                // The client closed its side (or the connection failed): nothing more to wait for.
                Ok(()) if unread.filled().is_empty() => return Poll::Ready(Ok(())),
                Err(_) => return Poll::Ready(Ok(())),
                Ok(()) => {}
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// `[auth]` lets some ids be taken by anyone (`open`), and a front listens beyond loopback: the
/// operator hears it at start, since any machine that reaches the port can then be anybody.
fn warn_if_open_beyond_loopback(config: &RelayConfig, listening: [Option<SocketAddr>; 2]) {
    let auth = &config.auth;
    let open: Vec<String> =
        std::iter::once(("every id not under a prefix rule".to_owned(), auth.mode))
            .chain(
                auth.prefixes
                    .iter()
                    .map(|(p, m)| (format!("ids starting with {p:?}"), *m)),
            )
            .filter(|(_, mode)| *mode == gsio_relay_core::config::AuthMode::Open)
            .map(|(which, _)| which)
            .collect();
    let exposed: Vec<String> = listening
        .into_iter()
        .flatten()
        .filter(|addr| !addr.ip().is_loopback())
        .map(|addr| addr.to_string())
        .collect();
    if !open.is_empty() && !exposed.is_empty() {
        tracing::warn!(
            listening = %exposed.join(", "),
            "auth mode is \"open\" for {} while listening beyond loopback: any client that reaches \
             the relay can take any free id; set [auth] mode = \"signed\" or \"token\" (README, \"Authentication\")",
            open.join(" and ")
        );
    }
}
