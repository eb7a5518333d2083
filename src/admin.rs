//! The admin listener (`server.admin_listen`): plain HTTP/1.1 for the machine's operator and
//! monitoring, apart from the two fronts peers use.
//!
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text, which Prometheus scrapes natively),
//!   read at scrape time from [`crate::metrics`] and the peer table.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while the relay accepts peers; 503 from the moment shutdown begins, all
//!   through the drain, so that a load balancer stops sending new peers.
//! - `GET /`: the console, one static page (`console.html`, embedded) that polls
//!   `GET /api/state` every second.
//!
//! The listener keeps answering while the relay drains, and stops once the relay has stopped.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gsio_relay_core::{ErrorCode, RouteMode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::metrics::{Deadline, Front};
use crate::shutdown::{Phase, Shutdown};
use crate::state::Relay;

/// The console page: no build step, no network beyond this listener.
const CONSOLE: &str = include_str!("console.html");

/// At most this many peers are listed by `/api/state` (all are counted).
const CONSOLE_PEERS: usize = 500;

/// The content type of `/metrics` (what prometheus-client writes).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Admin {
    relay: Arc<Relay>,
    shutdown: Shutdown,
    registry: Registry,
}

/// Serves the admin endpoints on `listener` until `stop` resolves (the server resolves it once
/// the relay has stopped), then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: Shutdown,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RelayCollector(relay.clone())));
    let admin = Arc::new(Admin {
        relay,
        shutdown,
        registry,
    });
    let app = Router::new()
        .route("/", get(console))
        .route("/api/state", get(state))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(admin);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready while running. A clustered relay whose NATS is unreachable still serves its own
/// peers, so it stays ready, and says so (`ready; cluster: NATS unreachable`).
async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    match admin.shutdown.phase() {
        Phase::Running => match admin.relay.cluster() {
            Some(cluster) if !cluster.is_connected() => (
                StatusCode::OK,
                "ready; cluster: NATS unreachable, serving this relay's peers only\n",
            )
                .into_response(),
            Some(_) => (StatusCode::OK, "ready; cluster: connected\n").into_response(),
            None => (StatusCode::OK, "ready\n").into_response(),
        },
        Phase::StopReading | Phase::Close => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
        }
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &admin.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(error) => {
            tracing::error!("cannot encode the metrics: {error}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn console() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        CONSOLE,
    )
        .into_response()
}

async fn state(State(admin): State<Arc<Admin>>) -> Response {
    let body = state_json(&admin.relay, admin.shutdown.phase());
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// What the console shows: counters (the page turns them into rates), the peers, the rules in
/// force, and the last reload.
fn state_json(relay: &Relay, phase: Phase) -> Value {
    let totals = relay.metrics.totals();
    let (peers, peer_count) = relay.peers(CONSOLE_PEERS);
    let config = relay.config();
    let by_name = |names: &mut dyn Iterator<Item = &'static str>, values: &[u64]| -> Value {
        names
            .zip(values)
            .map(|(name, value)| (name.to_owned(), Value::from(*value)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": phase == Phase::Running,
        "peer_count": peer_count,
        "peers": peers.iter().map(|peer| json!({
            "id": peer.id,
            "front": peer.front.as_str(),
            "queued": peer.queued,
        })).collect::<Vec<_>>(),
        "counters": {
            "routed_by_mode": by_name(&mut RouteMode::ALL.iter().map(|m| m.as_str()), &totals.routed),
            "messages_by_type": totals.by_type.iter().map(|(label, n)| (label.clone(), Value::from(*n))).collect::<serde_json::Map<_, _>>(),
            "deliveries": totals.delivered,
            "errors_by_code": by_name(&mut ErrorCode::ALL.iter().map(|c| c.as_str()), &totals.errors),
            "slow_consumer_disconnects": relay.stats.slow_consumer_disconnects.load(std::sync::atomic::Ordering::Relaxed),
        },
        "config": {
            "routing": &config.routing,
            "limits": &config.limits,
            "discovery": &config.discovery,
            "max_connections": config.server.max_connections,
        },
        // The console's "Last reload" section shows this value's fields as they are.
        "last_reload": last_reload(relay),
    })
}

/// The reload record for the console: the generation and counts, and the latest reload (when,
/// whether it was put in force, and what it changed or why it was refused); `null` fields
/// before the first reload.
fn last_reload(relay: &Relay) -> Value {
    let reloads = relay.reloads();
    let last = reloads.last.as_ref();
    let at = last.map(|last| {
        last.at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64)
    });
    json!({
        "generation": reloads.generation,
        "succeeded": reloads.succeeded,
        "failed": reloads.failed,
        "at_unix_ms": at,
        "ok": last.map(|last| last.ok),
        "message": last.map(|last| last.message.as_str()),
    })
}

/// Reads the relay's counters into the exposition at each scrape.
struct RelayCollector(Arc<Relay>);

impl std::fmt::Debug for RelayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayCollector")
    }
}

/// One counter family: `name` (prometheus-client adds `_total`), one series per label value.
fn counters<'v>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'v str, u64)>,
) -> std::fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, count) in series {
        let labels = [(label, value)];
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    count: u64,
) -> std::fmt::Result {
    let counter = ConstCounter::new(count);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The cluster's metrics (`[cluster]` only).
fn encode_cluster(
    encoder: &mut DescriptorEncoder,
    relay: &Relay,
    cluster: &crate::cluster::Cluster,
) -> std::fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &cluster.stats;
    gauge(
        encoder,
        "gsio_relay_cluster_connected",
        "1 while this relay is connected to NATS, 0 while NATS is unreachable",
        i64::from(cluster.is_connected()),
    )?;
    gauge(
        encoder,
        "gsio_relay_cluster_relays",
        "Other relays heard from within cluster.relay_timeout_ms",
        to_i64(cluster.relays().len()),
    )?;
    gauge(
        encoder,
        "gsio_relay_cluster_remote_peers",
        "Peers connected to the other relays, as this relay knows them",
        to_i64(relay.remote_peer_count()),
    )?;
    let counts = [
        ("gsio_relay_cluster_forwarded", "Messages handed to NATS for other relays (one per relay)", &stats.forwarded),
        ("gsio_relay_cluster_forward_refused", "Messages for other relays refused: NATS unreachable or the queue to it full", &stats.forward_refused),
        ("gsio_relay_cluster_arrived", "Messages from other relays delivered here", &stats.arrived),
        ("gsio_relay_cluster_arrived_dropped", "Messages from other relays dropped: from a released claim, undecodable, or lost by a slow subscription", &stats.arrived_dropped),
        ("gsio_relay_cluster_relays_lost", "Relays given up on after cluster.relay_timeout_ms of silence", &stats.relays_lost),
        ("gsio_relay_cluster_resyncs", "Full reads of the presence bucket: at start and after each reconnection to NATS", &stats.resyncs),
    ];
    for (name, help, value) in counts {
        counter(encoder, name, help, value.load(Relaxed))?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let relay = &self.0;
        let totals = relay.metrics.totals();
        let depths = relay.queue_depths();

        let build = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "gsio_relay_build_info",
            "The relay's version; always 1",
            None,
            build.metric_type(),
        )?;
        build.encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;

        let mut family = encoder.encode_descriptor(
            "gsio_relay_connections",
            "Peer connections open now (WebSocket connections, gRPC Exchange streams), by front",
            None,
            build.metric_type(),
        )?;
        for front in Front::ALL {
            ConstGauge::new(totals.open[front as usize])
                .encode(family.encode_family(&[("front", front.as_str())])?)?;
        }
        counters(
            &mut encoder,
            "gsio_relay_connections_accepted",
            "Peer connections accepted since start, by front",
            "front",
            Front::ALL
                .iter()
                .map(|front| (front.as_str(), totals.accepted[*front as usize])),
        )?;
        counters(
            &mut encoder,
            "gsio_relay_connections_refused",
            "Connections refused by the per-address limits (too_many_connections_from_address), by front",
            "front",
            Front::ALL
                .iter()
                .map(|front| (front.as_str(), totals.refused[*front as usize])),
        )?;
        counters(
            &mut encoder,
            "gsio_relay_connections_timed_out",
            "WebSocket connections closed by a deadline: handshake (upgrade not completed) or idle (no answer to a ping)",
            "deadline",
            Deadline::ALL
                .iter()
                .map(|deadline| (deadline.as_str(), totals.timed_out[*deadline as usize])),
        )?;
        counters(
            &mut encoder,
            "gsio_relay_envelopes_routed",
            "Envelopes routed, by how they travelled (auto counts as directed or broadcast)",
            "mode",
            RouteMode::ALL
                .iter()
                .map(|mode| (mode.as_str(), totals.routed[*mode as usize])),
        )?;
        counters(
            &mut encoder,
            "gsio_relay_messages",
            "Envelopes routed, by message_type: the types [routing.rules] names, the rest as other",
            "message_type",
            totals
                .by_type
                .iter()
                .map(|(label, count)| (label.as_str(), *count)),
        )?;
        counter(
            &mut encoder,
            "gsio_relay_deliveries",
            "Routed envelopes handed to recipients' queues",
            totals.delivered,
        )?;
        counters(
            &mut encoder,
            "gsio_relay_errors",
            "Error envelopes sent to peers, by code",
            "code",
            ErrorCode::ALL
                .iter()
                .map(|code| (code.as_str(), totals.errors[*code as usize])),
        )?;
        counter(
            &mut encoder,
            "gsio_relay_slow_consumer_disconnects",
            "Peers disconnected because their queue was full",
            relay
                .stats
                .slow_consumer_disconnects
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "gsio_relay_peers",
            "Peers connected under an id now",
            to_i64(depths.peers),
        )?;
        gauge(
            &mut encoder,
            "gsio_relay_queue_depth_max",
            "The deepest peer queue now, in envelopes",
            to_i64(depths.max),
        )?;
        gauge(
            &mut encoder,
            "gsio_relay_queued_envelopes",
            "Envelopes waiting in all peer queues now",
            to_i64(depths.total),
        )?;
        let reloads = relay.reloads();
        counters(
            &mut encoder,
            "gsio_relay_reloads",
            "Reloads of relay.toml: ok (a valid file was read) or failed (the rules stayed)",
            "result",
            [("ok", reloads.succeeded), ("failed", reloads.failed)],
        )?;
        gauge(
            &mut encoder,
            "gsio_relay_config_generation",
            "Which rules are in force: 1 at start, +1 for each reload that changed them",
            i64::try_from(reloads.generation).unwrap_or(i64::MAX),
        )?;
        if let Some(cluster) = relay.cluster() {
            encode_cluster(&mut encoder, relay, cluster)?;
        }
        Ok(())
    }
}
