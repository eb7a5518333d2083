//! Relays of one cluster as test fixtures: the real binary, started with the shipped relay.toml
//! on ephemeral ports plus a `[cluster]` section on a test's nats-server ([`super::nats`]), and
//! stopped (or killed) by the pid the test started.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use super::binary::{RunningBinary, BIN};
use super::nats::NatsServer;
use super::{shipped_relay_toml_on_ephemeral_ports, GrpcPeer, Peer, WsPeer};

/// Heartbeats the cluster tests run with.
pub const HEARTBEAT_MS: u64 = 200;
/// The timeout of the tests about giving relays up: a killed relay's peers leave within about
/// 1.5 s ([`ClusterRelay::start_quick`]).
pub const RELAY_TIMEOUT_MS: u64 = 1_500;
/// The timeout of every other test: long enough that two test processes sharing two cores with
/// their relays and nats-servers never starve a relay into giving the other up.
pub const PATIENT_TIMEOUT_MS: u64 = 15_000;

/// One relay process of a test's cluster.
pub struct ClusterRelay {
    pub name: String,
    pub bin: RunningBinary,
    pub admin_url: String,
    pub config: PathBuf,
}

/// The `[cluster]` section for relay `name` on `nats_url`, giving relays up after `timeout_ms`.
pub fn cluster_section(nats_url: &str, name: &str, timeout_ms: u64) -> String {
    format!(
        "\n[cluster]\nnats_urls = [\"{nats_url}\"]\nrelay_name = \"{name}\"\nheartbeat_ms = {HEARTBEAT_MS}\nrelay_timeout_ms = {timeout_ms}\n"
    )
}

impl ClusterRelay {
    /// Starts relay `name` on `nats` and waits until it has read the cluster's presence.
    pub async fn start(nats: &NatsServer, name: &str) -> ClusterRelay {
        ClusterRelay::start_patient(nats, name, PATIENT_TIMEOUT_MS).await
    }

    /// [`ClusterRelay::start`], giving other relays up after [`RELAY_TIMEOUT_MS`].
    pub async fn start_quick(nats: &NatsServer, name: &str) -> ClusterRelay {
        ClusterRelay::start_patient(nats, name, RELAY_TIMEOUT_MS).await
    }

    /// [`ClusterRelay::start`], giving other relays up only after `timeout_ms` of silence.
    pub async fn start_patient(nats: &NatsServer, name: &str, timeout_ms: u64) -> ClusterRelay {
        let relay = ClusterRelay::start_with(nats, name, "", timeout_ms).await;
        relay.in_step(1).await;
        relay
    }

    /// Starts relay `name` with `extra` TOML appended to its relay.toml (before `[cluster]`),
    /// without waiting for NATS.
    pub async fn start_with(
        nats: &NatsServer,
        name: &str,
        extra: &str,
        timeout_ms: u64,
    ) -> ClusterRelay {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("cluster")
            .join(format!(
                "{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            "{}{extra}{}",
            shipped_relay_toml_on_ephemeral_ports(),
            cluster_section(&nats.url(), name, timeout_ms)
        );
        std::fs::write(&config, text).unwrap();
        let bin = RunningBinary::start(Command::new(BIN).arg("--config").arg(&config));
        let line = bin.entry("gsio-relay listening", 1).await;
        let at = line
            .find("http://")
            .expect("the admin address in the listening line");
        let admin_url: String = line[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
            .collect();
        ClusterRelay {
            name: name.to_owned(),
            bin,
            admin_url,
            config,
        }
    }

    /// Waits for its `n`th full read of the cluster's presence (1: at start; one more after each
    /// reconnection to NATS).
    pub async fn in_step(&self, n: usize) {
        self.bin
            .entry("cluster: presence read from the bucket", n)
            .await;
    }

    pub async fn ws(&self, id: &str) -> WsPeer {
        let mut peer = WsPeer::connect(&format!("{}/?node_id={id}", self.bin.url)).await;
        peer.expect_welcome(id).await;
        peer
    }

    pub async fn grpc(&self, id: &str) -> GrpcPeer {
        let mut peer = GrpcPeer::connect(&self.bin.grpc_url, Some(id))
            .await
            .unwrap();
        peer.expect_welcome(id).await;
        peer
    }

    /// SIGKILL: no goodbye to NATS or to its peers.
    pub fn kill(&self) {
        self.bin.signal(libc::SIGKILL);
    }

    /// The value of one metric on its `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = super::http::get_ok(&self.admin_url, "/metrics").await;
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0.0)
    }
}

/// The conformance table's network ([`super::conformance::Network`]) spread over two relays of
/// one cluster, which it runs (with their nats-server) for as long as it lives: each new
/// connection goes to the next relay in turn, so peers that talk to each other are on different
/// relays.
pub struct ClusterNet {
    relays: Vec<super::conformance::WsNet>,
    next: std::cell::Cell<usize>,
    _processes: (ClusterRelay, ClusterRelay, NatsServer),
}

impl ClusterNet {
    pub async fn start() -> ClusterNet {
        let nats = NatsServer::start();
        let a = ClusterRelay::start(&nats, "relay-a").await;
        let b = ClusterRelay::start(&nats, "relay-b").await;
        ClusterNet {
            relays: [&a, &b]
                .iter()
                .map(|r| super::conformance::WsNet::at(format!("{}/", r.bin.url)))
                .collect(),
            next: std::cell::Cell::new(0),
            _processes: (a, b, nats),
        }
    }

    fn turn(&self) -> &super::conformance::WsNet {
        let n = self.next.get();
        self.next.set(n + 1);
        &self.relays[n % self.relays.len()]
    }
}

impl super::conformance::Network for ClusterNet {
    type Peer = WsPeer;

    async fn connect_as(&self, id: &str) -> WsPeer {
        self.turn().connect_as(id).await
    }

    async fn anonymous(&self) -> WsPeer {
        self.turn().anonymous().await
    }

    async fn expect_refused(&self, id: &str, code: &str) {
        self.turn().expect_refused(id, code).await
    }
}
