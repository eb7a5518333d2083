//! The Cloudflare Worker in real workerd (`wrangler dev`, from worker/node_modules): the
//! conformance table (one test per scenario, on one shared `wrangler dev`), routing after the
//! room loses its memory, `[vars]` overrides, and an offline dry-run deploy. `scripts/test.sh`
//! installs and builds what these need.

mod common;

use std::process::Command;
use std::sync::LazyLock;

use common::conformance::{Network, WsNet};
use common::wrangler::WranglerDev;
use common::{repo_path, Peer, WsPeer};

/// The `wrangler dev` shared by every test here that needs no `[vars]` of its own: started by
/// the first test to ask, never dropped; the fixture's watchdog ends it when this process exits.
static SHARED: LazyLock<WranglerDev> = LazyLock::new(WranglerDev::start);

/// The conformance table, one test per scenario, each on a network of its own (a fresh Durable
/// Object at `/conformance-<scenario>`) of the shared `wrangler dev`.
mod conformance {
    use super::{WsNet, SHARED};

    fn network(scenario: &str) -> std::future::Ready<WsNet> {
        std::future::ready(WsNet::at(SHARED.url(&format!("/conformance-{scenario}"))))
    }

    crate::any_front_scenarios!(conformance_tests!(network =>));
    crate::websocket_scenarios!(conformance_tests!(network =>));
}

/// Drops the room's in-memory state as an eviction from memory would (the test hook is on only
/// where `GSIO_RELAY_TEST_HOOKS=1`).
async fn forget(dev: &WranglerDev, network: &str) {
    let request =
        format!("GET {network}?__forget HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let response = http_exchange(dev.port, &request).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// Sends one raw HTTP request to the Worker and returns the whole answer (the request must ask
/// for `Connection: close`).
async fn http_exchange(port: u16, request: &str) -> String {
    let request = request.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_browser_snippet_works_unchanged() {
    let dev = &*SHARED;
    // The snippet's URL has no path: the default network, "/".
    let base = format!("ws://127.0.0.1:{}", dev.port);
    common::readme_snippet_works_against(&base, &dev.url("/?node_id=observer")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_survives_a_room_that_lost_its_memory() {
    let dev = WranglerDev::start_with_vars(&[("GSIO_RELAY_TEST_HOOKS", "1")]);
    let net = WsNet::at(dev.url("/hibernation"));
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    assert_eq!(a.recv().await.message_type, "PeerJoined");

    forget(&dev, "/hibernation").await;
    // Directed routing finds b from the sockets' attachments alone.
    a.send("LedgerSyncResponse", "a", "b", "1").await;
    assert_eq!(b.recv().await.payload, "1");
    // Identity is still enforced: a is still a.
    a.send("LedgerSyncResponse", "b", "a", "1").await;
    a.expect_error("spoofed_sender").await;
    // The id is still taken.
    let mut imposter = WsPeer::connect(&net.url("?node_id=b")).await;
    imposter.expect_error("peer_id_in_use").await;

    forget(&dev, "/hibernation").await;
    let mut c = net.peer("c").await;
    assert_eq!(a.recv().await.payload_json()["peer_id"], "c");
    assert_eq!(b.recv().await.payload_json()["peer_id"], "c");
    forget(&dev, "/hibernation").await;
    b.ws.close(None).await.unwrap();
    let left = a.recv().await;
    assert_eq!(
        (
            left.message_type.as_str(),
            left.payload_json()["peer_id"].as_str()
        ),
        ("PeerLeft", Some("b"))
    );
    assert_eq!(c.recv().await.message_type, "PeerLeft");
    // Broadcast reaches exactly the peers still connected.
    c.send("NodeAnnounce", "c", "", "\"hi\"").await;
    assert_eq!(a.recv().await.payload, "\"hi\"");
    common::nothing_else_back(&mut c, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vars_override_relay_toml_and_bad_ones_are_reported() {
    let dev = WranglerDev::start_with_vars(&[
        ("GSIO_RELAY_ROUTING__DEFAULT", "echo"),
        ("GSIO_RELAY_LIMITS__MAX_MESSAGE_BYTES", "4096"),
    ]);
    let mut a = WsPeer::connect(&dev.url("/vars?node_id=a")).await;
    let welcome = a.expect_welcome("a").await;
    assert_eq!(welcome["limits"]["max_message_bytes"], 4096);
    assert_eq!(welcome["routing"]["default"], "echo");
    a.send("Unruled", "a", "", "1").await;
    assert_eq!(a.recv().await.message_type, "Unruled");
    a.send("Unruled", "a", "", &format!("\"{}\"", "x".repeat(5000)))
        .await;
    a.expect_error("message_too_large").await;
    drop(a);
    drop(dev);

    let dev = WranglerDev::start_with_vars(&[("GSIO_RELAY_ROUTING__DEFAULT", "sideways")]);
    // The WebSocket client fails on the 500 without reading its body: ask over raw HTTP, with
    // the upgrade headers a browser sends, and read the whole answer.
    let request =
        "GET /bad-config?node_id=a HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, close\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let response = http_exchange(dev.port, request).await;
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");
    assert!(
        response.contains("GSIO_RELAY_ROUTING__DEFAULT") && response.contains("sideways"),
        "the answer names the variable and its value: {response}"
    );
}

#[test]
fn dry_run_deploy_builds_the_bundle_offline() {
    let out = std::env::temp_dir().join(format!("gsio-relay-dry-run-{}", std::process::id()));
    let output = Command::new("node")
        .arg(repo_path("worker/node_modules/wrangler/bin/wrangler.js"))
        .args(["deploy", "--dry-run", "--outdir"])
        .arg(&out)
        .current_dir(repo_path(""))
        .env("WRANGLER_SEND_METRICS", "false")
        .env("WRANGLER_SEND_ERROR_REPORTS", "false")
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("WRANGLER_HIDE_BANNER", "true")
        .output()
        .expect("run wrangler (scripts/setup-worker.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    let size = text
        .lines()
        .find(|l| l.contains("Total Upload"))
        .unwrap_or_else(|| panic!("no bundle size in: {text}"));
    println!("dry-run deploy: {}", size.trim());
    assert!(
        text.contains("RELAY_ROOM") && text.contains("RelayRoom"),
        "{text}"
    );
    let bundle = std::fs::read_dir(&out).unwrap().count();
    assert!(bundle > 0, "nothing written to {}", out.display());
    let _ = std::fs::remove_dir_all(&out);
}
