//! Scale-out (README "Scaling out"): two or three real relay processes on one real nats-server,
//! with real WebSocket and gRPC clients, behave for every client like one relay, also after a
//! relay is killed and after NATS restarts. Every process is stopped by the id its test started.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{ClusterRelay, RELAY_TIMEOUT_MS};
use common::nats::NatsServer;
use common::{envelope, Peer, WsPeer, ARRIVES};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Waits (polling, up to `within`) until `check` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every routing mode across relays, global presence, payload fidelity and per-sender order,
/// between WebSocket and gRPC clients on two relays.
#[tokio::test]
async fn two_relays_are_one_network() {
    let nats = NatsServer::start();
    let a = ClusterRelay::start(&nats, "relay-a").await;
    let b = ClusterRelay::start(&nats, "relay-b").await;

    let mut x = a.ws("x").await;
    // The Welcome on the other relay lists and counts the whole network.
    let mut y = b.grpc("y").await;
    x.expect_presence(&["y"], &[]).await;
    let mut z = WsPeer::connect(&format!("{}/?node_id=z", b.bin.url)).await;
    let welcome = z.expect_welcome("z").await;
    assert_eq!(welcome["peers"], serde_json::json!(["x", "y"]));
    assert_eq!(welcome["peer_count"], 2);
    x.expect_presence(&["z"], &[]).await;
    y.expect_presence(&["z"], &[]).await;

    // Broadcast (auto with no recipient): every peer on every relay but the sender, with the
    // payload to the byte and the sender's message_id.
    let payload =
        r#"{"node_id":"x","addresses":["/ip4/1.2.3.4"],"n":1.50,"nested":{"k":[true,null]}}"#;
    let sent = envelope("NodeAnnounce", "x", "", payload);
    x.send_text(&sent).await;
    let sent_id = serde_json::from_str::<serde_json::Value>(&sent).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for got in [y.recv().await, z.recv().await] {
        assert_eq!(
            (got.message_type.as_str(), got.sender_id.as_str()),
            ("NodeAnnounce", "x")
        );
        assert_eq!(got.payload, payload);
        assert_eq!(got.message_id, sent_id);
    }

    // Directed across relays, both ways and across fronts.
    y.send("LedgerSyncResponse", "y", "x", r#"{"from":"y"}"#)
        .await;
    let got = x.recv().await;
    assert_eq!(
        (got.sender_id.as_str(), got.payload.as_str()),
        ("y", r#"{"from":"y"}"#)
    );
    x.send("LedgerSyncResponse", "x", "y", r#"{"from":"x"}"#)
        .await;
    let got = y.recv().await;
    assert_eq!(
        (got.sender_id.as_str(), got.payload.as_str()),
        ("x", r#"{"from":"x"}"#)
    );
    // Only the recipient: z got nothing of it (a sentinel from x to z comes next).
    common::nothing_else_from(&mut x, "x", &mut z, "z").await;

    // Echo stays with the sender.
    x.send("Ping", "x", "", r#""p""#).await;
    assert_eq!(x.recv().await.message_type, "Ping");

    // unknown_recipient is decided against the whole network: y (elsewhere) is known, nobody
    // is not.
    x.send("LedgerSyncResponse", "x", "nobody", "{}").await;
    x.expect_error("unknown_recipient").await;

    // Per sender→recipient order holds across relays, mixing broadcast and directed.
    for n in 0..200 {
        let (kind, to) = if n % 2 == 0 {
            ("NodeAnnounce", "")
        } else {
            ("LedgerSyncResponse", "z")
        };
        x.send(kind, "x", to, &n.to_string()).await;
    }
    for n in 0..200 {
        let got = z.recv().await;
        assert_eq!(got.payload, n.to_string(), "out of order: {got:?}");
    }
    for n in (0..200).step_by(2) {
        assert_eq!(y.recv().await.payload, n.to_string());
    }

    // A leave on one relay is announced on the other.
    drop(x);
    y.expect_presence(&[], &["x"]).await;
    z.expect_presence(&[], &["x"]).await;
    assert!(a.metric("gsio_relay_cluster_forwarded_total").await > 0.0);
    assert!(b.metric("gsio_relay_cluster_arrived_total").await > 0.0);
    assert_eq!(b.metric("gsio_relay_cluster_connected").await, 1.0);
}

/// An id is unique network-wide: a second claim on another relay gets `peer_id_in_use`,
/// whichever front and however it claims; of many claims at once on two relays exactly one
/// wins; a released id can be taken elsewhere.
#[tokio::test]
async fn an_id_is_unique_across_relays() {
    let nats = NatsServer::start();
    let a = ClusterRelay::start(&nats, "relay-a").await;
    let b = ClusterRelay::start(&nats, "relay-b").await;
    let x = a.ws("x").await;
    let mut watcher = b.ws("w").await;

    // At connect on WebSocket: refused, and the connection closes.
    let mut again = WsPeer::connect(&format!("{}/?node_id=x", b.bin.url)).await;
    again.expect_error("peer_id_in_use").await;
    let (code, _) = again.expect_close().await;
    assert_eq!(code, 1008);
    // At connect on gRPC: ALREADY_EXISTS.
    let refused = common::GrpcPeer::connect(&b.bin.grpc_url, Some("x")).await;
    let status = refused.err().expect("a second claim of x is refused");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("peer_id_in_use"), "{status:?}");
    // In band: refused, the connection stays open and can take another id.
    let mut anon = WsPeer::connect(&b.bin.url).await;
    anon.send_text(&envelope("NodeAnnounce", "x", "", "{}"))
        .await;
    anon.expect_error("peer_id_in_use").await;
    anon.send_text(&envelope("NodeAnnounce", "x2", "", "{}"))
        .await;
    anon.expect_welcome("x2").await;
    watcher.expect_presence(&["x2"], &[]).await;
    assert_eq!(watcher.recv().await.sender_id, "x2");

    // Many claims of one id at once on both relays: exactly one is welcomed. The connections
    // are open first, then each names the id in band, all within microseconds: neither relay
    // can have heard of the other's claim, so the bucket settles it.
    let mut claimants = Vec::new();
    for n in 0..8 {
        let url = if n % 2 == 0 { &a.bin.url } else { &b.bin.url };
        claimants.push(WsPeer::connect(url).await);
    }
    let claim = envelope("NodeAnnounce", "race", "", "{}");
    for claimant in &mut claimants {
        claimant.send_text(&claim).await;
    }
    let mut winners = 0;
    for claimant in &mut claimants {
        let got = claimant.recv().await;
        match got.message_type.as_str() {
            "Welcome" => winners += 1,
            _ => assert_eq!(got.error_code(), "peer_id_in_use", "{got:?}"),
        }
    }
    assert_eq!(winners, 1, "exactly one claim of `race` wins");
    // Announced, then its claiming envelope (routed once the claim won): once each.
    watcher.expect_presence(&["race"], &[]).await;
    assert_eq!(watcher.recv().await.sender_id, "race");

    // Released on A, the id can be taken on B.
    drop(x);
    watcher.expect_presence(&[], &["x"]).await;
    let _x_on_b = b.ws("x").await;
}

/// A relay killed with SIGKILL: its peers are announced gone on the other relays within about
/// `relay_timeout_ms`, and their ids are free again.
#[tokio::test]
async fn a_killed_relay_leaves_the_network() {
    let nats = NatsServer::start();
    let a = ClusterRelay::start_quick(&nats, "relay-a").await;
    let b = ClusterRelay::start_quick(&nats, "relay-b").await;
    let _x = a.ws("x").await;
    let _v = a.grpc("v").await;
    let mut y = WsPeer::connect(&format!("{}/?node_id=y", b.bin.url)).await;
    let welcome = y.expect_welcome("y").await;
    assert_eq!(welcome["peers"], serde_json::json!(["v", "x"]));

    let killed = Instant::now();
    a.kill();
    y.expect_presence(&[], &["v", "x"]).await;
    let took = killed.elapsed();
    println!("the killed relay's peers were announced gone after {took:?} (timeout {RELAY_TIMEOUT_MS} ms)");
    // Free again: taken on B.
    let _x = b.ws("x").await;
    // And B counts the loss.
    assert_eq!(b.metric("gsio_relay_cluster_relays_lost_total").await, 1.0);
}

/// NATS stopped: each relay keeps serving its own peers and says NATS is unreachable (log,
/// `/readyz`, `/metrics`); messages for elsewhere are refused by name. NATS back: the relays
/// reconnect by themselves and the presence is in step again, with no ghost and no one missing.
#[tokio::test]
async fn nats_stopped_and_started_again() {
    let mut nats = NatsServer::start();
    let a = ClusterRelay::start_quick(&nats, "relay-a").await;
    let b = ClusterRelay::start_quick(&nats, "relay-b").await;
    let mut x = a.ws("x").await;
    let mut x2 = a.ws("x2").await;
    let mut y = b.ws("y").await;
    let gone = b.ws("gone").await;
    x.expect_presence(&["x2", "y", "gone"], &[]).await;
    x2.expect_presence(&["y", "gone"], &[]).await;
    y.expect_presence(&["gone"], &[]).await;

    nats.stop();
    a.bin.entry("NATS unreachable", 1).await;
    b.bin.entry("NATS unreachable", 1).await;
    let ready = common::http::get_ok(&a.admin_url, "/readyz").await;
    assert!(ready.contains("NATS unreachable"), "{ready}");
    assert_eq!(a.metric("gsio_relay_cluster_connected").await, 0.0);
    // The other relay's peers are given up on; local traffic goes on.
    x.expect_presence(&[], &["y", "gone"]).await;
    x2.expect_presence(&[], &["y", "gone"]).await;
    x.send("NodeAnnounce", "x", "", r#""local""#).await;
    assert_eq!(x2.recv().await.payload, r#""local""#);
    x.send("LedgerSyncResponse", "x", "y", "{}").await;
    x.expect_error("unknown_recipient").await;
    // Changes during the outage: one leaves B, one joins A.
    drop(gone);
    y.expect_presence(&[], &["x", "x2", "gone"]).await;
    let mut late = a.ws("late").await;
    x.expect_presence(&["late"], &[]).await;
    x2.expect_presence(&["late"], &[]).await;

    nats.restart();
    a.in_step(2).await;
    b.in_step(2).await;
    // In step again: the peers of the other relay as they are now, nobody who left.
    x.expect_presence(&["y"], &[]).await;
    x2.expect_presence(&["y"], &[]).await;
    late.expect_presence(&["y"], &[]).await;
    y.expect_presence(&["late", "x", "x2"], &[]).await;
    eventually(ARRIVES, "y joined on A after the resync", || async {
        a.metric("gsio_relay_cluster_remote_peers").await == 1.0
    })
    .await;
    eventually(ARRIVES, "x, x2 and late known on B", || async {
        b.metric("gsio_relay_cluster_remote_peers").await == 3.0
    })
    .await;
    let mut fresh = WsPeer::connect(&format!("{}/?node_id=fresh", b.bin.url)).await;
    let welcome = fresh.expect_welcome("fresh").await;
    assert_eq!(
        welcome["peers"],
        serde_json::json!(["late", "x", "x2", "y"])
    );
    late.expect_presence(&["fresh"], &[]).await;
    // Traffic crosses again, both ways.
    y.send("LedgerSyncResponse", "y", "late", r#""back""#).await;
    assert_eq!(
        late.recv_skipping_announcements().await.payload,
        r#""back""#
    );
    x.send("LedgerSyncResponse", "x", "y", r#""too""#).await;
    assert_eq!(y.recv_skipping_announcements().await.payload, r#""too""#);
}

/// A stuck relay (SIGSTOP) cannot stall another: its local peers go on being served while
/// messages for the stuck relay's peers are handed to NATS, and once it runs again it is back in
/// the network.
#[tokio::test]
async fn a_stuck_relay_does_not_stall_the_others() {
    let nats = NatsServer::start();
    let a = ClusterRelay::start_quick(&nats, "relay-a").await;
    let b = ClusterRelay::start_quick(&nats, "relay-b").await;
    let mut x = a.ws("x").await;
    let mut x2 = a.ws("x2").await;
    let mut y = b.ws("y").await;
    x.expect_presence(&["x2", "y"], &[]).await;
    x2.expect_presence(&["y"], &[]).await;

    b.bin.signal(libc::SIGSTOP);
    // 2000 broadcasts of 1 KiB: x2 (local) gets every one while B reads nothing.
    let body = format!("\"{}\"", "b".repeat(1024));
    for n in 0..2000 {
        x.send_text(&envelope(
            "NodeAnnounce",
            "x",
            "",
            &format!("{{\"n\":{n},\"b\":{body}}}"),
        ))
        .await;
    }
    for n in 0..2000 {
        let got = x2.recv_skipping_announcements().await;
        assert_eq!(got.payload_json()["n"], n);
    }
    // B is given up on meanwhile.
    x2.expect_presence(&[], &["y"]).await;
    b.bin.signal(libc::SIGCONT);
    // Running again, it is back: y is announced again on A once B is heard from and has
    // asserted its claim again.
    x2.expect_presence(&["y"], &[]).await;
    y.send("LedgerSyncResponse", "y", "x2", r#""again""#).await;
    loop {
        let got = x2.recv_skipping_announcements().await;
        if got.sender_id == "y" {
            assert_eq!(got.payload, r#""again""#);
            break;
        }
    }
}

/// A credentials file NATS cannot use stops the relay at start, naming the key (a file that
/// does not exist is caught earlier, by the config loader: tests/fixtures/config/invalid).
#[test]
fn unusable_nats_credentials_stop_the_relay_naming_the_key() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-creds");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.creds"), "not a creds file\n").unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[cluster]\nnats_urls = [\"nats://127.0.0.1:1\"]\nrelay_name = \"a\"\ncredentials_file = \"bad.creds\"\n",
            common::shipped_relay_toml_on_ephemeral_ports()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(common::binary::BIN)
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cluster.credentials_file"), "{stderr}");
}

/// Without `[cluster]` the relay is the single process it always was: no NATS, nothing about a
/// cluster on `/readyz` or `/metrics` (every other test file runs relays without it).
#[tokio::test]
async fn a_relay_without_cluster_needs_no_nats() {
    let relay = common::TestRelay::start().await;
    assert!(relay.relay.cluster().is_none());
    let base = &relay.admin_url;
    assert_eq!(common::http::get_ok(base, "/readyz").await, "ready\n");
    let metrics = common::http::get_ok(base, "/metrics").await;
    assert!(!metrics.contains("gsio_relay_cluster_"), "{metrics}");
}

/// README "Scaling out": the shipped relay.toml with `[cluster]` given by the environment
/// (`GSIO_RELAY_CLUSTER__NATS_URLS`, `GSIO_RELAY_CLUSTER__RELAY_NAME`), as its commands start
/// two relays, makes them one network.
#[tokio::test]
async fn the_readme_cluster_commands_make_one_network() {
    let nats = NatsServer::start();
    let start = |name: &str| {
        let mut command = std::process::Command::new(common::binary::BIN);
        command
            .arg("--config")
            .arg(common::repo_path("relay.toml"))
            .env(
                "GSIO_RELAY_CLUSTER__NATS_URLS",
                format!("[\"{}\"]", nats.url()),
            )
            .env("GSIO_RELAY_CLUSTER__RELAY_NAME", name)
            .env("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:0")
            .env("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:0")
            .env("GSIO_RELAY_SERVER__ADMIN_LISTEN", "127.0.0.1:0");
        common::binary::RunningBinary::start(&mut command)
    };
    let one = start("relay-1");
    let two = start("relay-2");
    one.entry("cluster: presence read from the bucket", 1).await;
    two.entry("cluster: presence read from the bucket", 1).await;
    let mut a = WsPeer::connect(&format!("{}/?node_id=a", one.url)).await;
    a.expect_welcome("a").await;
    let mut b = WsPeer::connect(&format!("{}/?node_id=b", two.url)).await;
    let welcome = b.expect_welcome("b").await;
    assert_eq!(welcome["peers"], serde_json::json!(["a"]));
    a.expect_presence(&["b"], &[]).await;
    b.send("LedgerSyncResponse", "b", "a", r#""hi""#).await;
    assert_eq!(a.recv().await.payload, r#""hi""#);
}

/// README's metrics table: each `gsio_relay_cluster_*` row is exposed by a clustered relay with
/// the type the table gives (counters as `<name>_total`).
#[tokio::test]
async fn every_documented_cluster_metric_is_exposed_with_its_type() {
    let readme = std::fs::read_to_string(common::repo_path("README.md")).unwrap();
    let rows: Vec<(String, String)> = readme
        .lines()
        .filter(|line| line.starts_with("| `gsio_relay_cluster_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect();
    assert_eq!(rows.len(), 9, "the README's cluster metrics: {rows:?}");
    let nats = NatsServer::start();
    let relay = ClusterRelay::start(&nats, "relay-a").await;
    let text = common::http::get_ok(&relay.admin_url, "/metrics").await;
    for (name, kind) in rows {
        let family = name.strip_suffix("_total").unwrap_or(&name);
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} {kind}:\n{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}:\n{text}"
        );
    }
}

/// A NATS outage shorter than `relay_timeout_ms`: nobody is given up on, and what changed
/// meanwhile is caught up when the relays read the bucket again: a peer that left during it is
/// announced gone (no ghost), the others stay, unannounced.
#[tokio::test]
async fn a_short_nats_outage_leaves_no_ghost() {
    let mut nats = NatsServer::start();
    let a = ClusterRelay::start_patient(&nats, "relay-a", 30_000).await;
    let b = ClusterRelay::start_patient(&nats, "relay-b", 30_000).await;
    let mut x = a.ws("x").await;
    let mut y = b.ws("y").await;
    let gone = b.ws("gone").await;
    x.expect_presence(&["y", "gone"], &[]).await;
    y.expect_presence(&["gone"], &[]).await;

    nats.stop();
    a.bin.entry("NATS unreachable", 1).await;
    b.bin.entry("NATS unreachable", 1).await;
    drop(gone);
    y.expect_presence(&[], &["gone"]).await;
    nats.restart();
    a.in_step(2).await;
    b.in_step(2).await;
    x.expect_presence(&[], &["gone"]).await;
    // y stayed: still known on A, with nothing announced about it (a sentinel from y comes
    // next), and reachable.
    eventually(ARRIVES, "only y known on A", || async {
        a.metric("gsio_relay_cluster_remote_peers").await == 1.0
    })
    .await;
    assert_eq!(a.metric("gsio_relay_cluster_relays_lost_total").await, 0.0);
    common::nothing_else_from(&mut y, "y", &mut x, "x").await;
}

/// One id claimed on two relays while NATS is away (each could only hold it locally): when NATS
/// is back, the claim the bucket records first keeps it, and the other connection is closed with
/// `peer_id_in_use`; afterwards the network knows one `x`, reachable from both relays.
#[tokio::test]
async fn an_id_claimed_twice_during_an_outage_is_settled_when_nats_returns() {
    let mut nats = NatsServer::start();
    let a = ClusterRelay::start_patient(&nats, "relay-a", 30_000).await;
    let b = ClusterRelay::start_patient(&nats, "relay-b", 30_000).await;
    let mut watcher = a.ws("w").await;
    nats.stop();
    a.bin.entry("NATS unreachable", 1).await;
    b.bin.entry("NATS unreachable", 1).await;
    let mut on_a = a.ws("x").await;
    let mut on_b = b.ws("x").await;
    watcher.expect_presence(&["x"], &[]).await;
    nats.restart();
    a.in_step(2).await;
    b.in_step(2).await;
    // Exactly one of the two is closed, the reason naming the code (a kick, as a slow
    // consumer's: the close frame says why).
    let (first, winner) = tokio::select! {
        got = on_a.recv_frame(ARRIVES) => (got, "b"),
        got = on_b.recv_frame(ARRIVES) => (got, "a"),
    };
    let Some(WsMessage::Close(Some(close))) = first else {
        panic!("expected one of the two closed, got {first:?}");
    };
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.starts_with("peer_id_in_use"), "{close:?}");
    let mut kept = if winner == "a" { on_a } else { on_b };
    // The one left is reachable from the watcher on relay A, wherever it is.
    watcher
        .send("LedgerSyncResponse", "w", "x", r#""which""#)
        .await;
    assert_eq!(
        kept.recv_skipping_announcements().await.payload,
        r#""which""#
    );
}

/// The conformance table's scenarios, each on two relays of one NATS with consecutive peers on
/// different relays: what a client sees is what it sees on one relay (gsio-net's own
/// `P2PMessage`s included).
mod as_one_relay {
    use crate::common::cluster::ClusterNet;
    crate::any_front_scenarios!(conformance_tests!(|_| ClusterNet::start() =>));
}
