//! The Cloudflare Worker in real workerd (`wrangler dev`, from worker/node_modules): the
//! conformance table (one test per scenario, on one shared `wrangler dev`), networks chosen by
//! path, the plain-HTTP answer, routing after workerd really evicts a room, the test hooks off
//! by default, `[vars]` overrides, and an offline dry-run deploy with the bundle size the README
//! states. `scripts/test.sh` installs and builds what these need.

mod common;

use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;

use futures_util::StreamExt;

use common::conformance::{Network, WsNet};
use common::wrangler::WranglerDev;
use common::{nothing_else_from, repo_path, Peer, WsPeer};

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

/// The trust scenarios (keys, tokens, the identification deadline, rates) on a `wrangler dev`
/// of their own, with the conformance table's [`TRUSTING_VARS`] as `[vars]` and the tokens'
/// secret as one more var (what a Worker secret is under `wrangler dev`).
mod trust {
    use std::sync::LazyLock;

    use crate::common::auth::{SECRET, SECRET_VAR};
    use crate::common::conformance::{WsNet, TRUSTING_VARS};
    use crate::common::wrangler::WranglerDev;

    static TRUSTING: LazyLock<WranglerDev> = LazyLock::new(|| {
        let mut vars = TRUSTING_VARS.to_vec();
        vars.push((SECRET_VAR, SECRET));
        WranglerDev::start_with_vars(&vars)
    });

    fn network(scenario: &str) -> std::future::Ready<WsNet> {
        std::future::ready(WsNet::at(TRUSTING.url(&format!("/trust-{scenario}"))))
    }

    crate::trust_scenarios!(conformance_tests!(network =>));
}

/// Sends one raw HTTP request to the Worker and returns the whole answer (the request must ask
/// for `Connection: close`).
async fn http_exchange(port: u16, request: &str) -> String {
    let request = request.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // A bound, not a wait: waking an evicted room took over 10 s once on this 2-core machine
        // while it also ran four builds (the answer came back empty, and the test failed).
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        if let Err(error) = stream.read_to_end(&mut response) {
            panic!(
                "no complete answer from workerd on port {port} within 30 s ({error}); got {:?}",
                String::from_utf8_lossy(&response)
            );
        }
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .unwrap()
}

/// A plain `GET` of `target` (a path and query), without any upgrade header.
async fn http_get(port: u16, target: &str) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    http_exchange(port, &request).await
}

/// Held by the tests that use the default network `/` of [`SHARED`]: each checks exactly who
/// is on it, so they take turns.
static DEFAULT_NETWORK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_browser_snippet_works_unchanged() {
    let _default_network = DEFAULT_NETWORK.lock().await;
    let dev = &*SHARED;
    // The snippet's URL has no path: the default network, "/".
    let base = format!("ws://127.0.0.1:{}", dev.port);
    common::readme_snippet_works_against(&base, &dev.url("/?node_id=observer")).await;
}

/// README: "`wss://<worker>/` is the default network, `wss://<worker>/team-a` another one,
/// isolated from the first". The same two ids are held on both networks at once, and neither
/// network sees the other's presence (Welcome lists, `PeerJoined`) or broadcasts. Nothing is
/// proven by waiting: everything a network did was delivered (its own peers got it) before each
/// peer's last envelope, a directed sentinel from its partner on the same network, was sent;
/// one socket's frames arrive in order, so a leak would arrive before the sentinel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_chosen_by_path_are_isolated() {
    let _default_network = DEFAULT_NETWORK.lock().await;
    let dev = &*SHARED;
    let default = WsNet::at(dev.url("/"));
    let team = WsNet::at(dev.url("/team-a"));

    let mut root_a = default.connect_as("iso-a").await;
    // Peers a test before this one left on "/" may still be leaving: wait until they have.
    let welcome = root_a.expect_welcome("iso-a").await;
    let leaving: Vec<&str> = welcome["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    root_a.expect_presence(&[], &leaving).await;
    let mut root_b = default.peer("iso-b").await;
    let joined = root_a.recv().await;
    assert_eq!(joined.payload_json()["peer_id"], "iso-b", "{joined:?}");

    // The same ids again, on /team-a: accepted, and the Welcome knows nobody from "/".
    let mut team_a = team.connect_as("iso-a").await;
    let welcome = team_a.expect_welcome("iso-a").await;
    assert_eq!(
        (&welcome["peers"], &welcome["peer_count"]),
        (&serde_json::json!([]), &serde_json::json!(0)),
        "{welcome}"
    );
    let mut team_b = team.connect_as("iso-b").await;
    let welcome = team_b.expect_welcome("iso-b").await;
    assert_eq!(welcome["peers"], serde_json::json!(["iso-a"]), "{welcome}");
    let joined = team_a.recv().await;
    assert_eq!(joined.payload_json()["peer_id"], "iso-b", "{joined:?}");

    // A broadcast on each network reaches its own other peer.
    team_a.send("NodeAnnounce", "iso-a", "", "\"team-a\"").await;
    let got = team_b.recv().await;
    assert_eq!(
        (got.message_type.as_str(), got.payload.as_str()),
        ("NodeAnnounce", "\"team-a\"")
    );
    root_a
        .send("NodeAnnounce", "iso-a", "", "\"default\"")
        .await;
    let got = root_b.recv().await;
    assert_eq!(
        (got.message_type.as_str(), got.payload.as_str()),
        ("NodeAnnounce", "\"default\"")
    );

    // The sentinels: the next envelope of each peer is its partner's, nothing from the other
    // network before it.
    nothing_else_from(&mut root_b, "iso-b", &mut root_a, "iso-a").await;
    nothing_else_from(&mut team_b, "iso-b", &mut team_a, "iso-a").await;
    nothing_else_from(&mut root_a, "iso-a", &mut root_b, "iso-b").await;
    nothing_else_from(&mut team_a, "iso-a", &mut team_b, "iso-b").await;

    // Leave "/" empty for the next test that uses it: b's leave is announced to a, and a's
    // close is answered only by the room, after it has let a go.
    root_b.ws.close(None).await.unwrap();
    let left = root_a.recv().await;
    assert_eq!(
        (
            left.message_type.as_str(),
            left.payload_json()["peer_id"].as_str()
        ),
        ("PeerLeft", Some("iso-b"))
    );
    root_a.ws.close(None).await.unwrap();
    let closed = tokio::time::timeout(common::ARRIVES, async {
        while let Some(Ok(_)) = root_a.ws.next().await {}
    });
    closed.await.expect("the room answers the close");
}

/// README: "A plain HTTP request gets `426 Upgrade Required`", on the default network and any
/// other, whatever the method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_request_gets_426() {
    let dev = &*SHARED;
    for request in [
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        "GET /team-a?node_id=a HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        "POST /team-a HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    ] {
        let response = http_exchange(dev.port, request).await;
        assert!(response.starts_with("HTTP/1.1 426 "), "{request}\n{response}");
        assert!(response.contains("WebSocket endpoint"), "{response}");
    }
}

/// README: the test hook "never set it in production"; without `GSIO_RELAY_TEST_HOOKS` (the
/// shared instance has none) its query is an ordinary request. A plain `GET` with it gets the
/// plain-HTTP answer, 426, where the hook would answer 200; a WebSocket upgrade with it joins
/// the network as any other, where the hook would answer 200 and refuse the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_hooks_do_nothing_without_the_variable() {
    let dev = &*SHARED;
    let response = http_get(dev.port, "/hooks-off?__instance").await;
    assert!(response.starts_with("HTTP/1.1 426 "), "{response}");
    let mut peer = WsPeer::connect(&dev.url("/hooks-off?__instance&node_id=a")).await;
    peer.expect_welcome("a").await;
}

/// The name of the instance of the room now serving `network` (the `__instance` test hook). It
/// wakes the room, and does not touch its peer table.
async fn instance(dev: &WranglerDev, network: &str) -> String {
    let response = http_get(dev.port, &format!("{network}?__instance")).await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    response
        .lines()
        .find(|line| line.starts_with("instance "))
        .unwrap_or_else(|| panic!("no instance name in {response}"))
        .to_owned()
}

/// workerd evicts a Durable Object after 10 s without an event (workerd#1138); hibernatable
/// sockets stay open. Looking at the instance is itself an event, so looks are spaced further
/// apart than that; the wait is bounded.
const LOOKS_FOR_AN_EVICTION: [Duration; 4] = [
    Duration::from_secs(11),
    Duration::from_secs(15),
    Duration::from_secs(20),
    Duration::from_secs(30),
];

/// Waits until the runtime has evicted the room at `network` from memory (its instance is no
/// longer `before`), leaving it idle in between. Returns the new instance's name.
async fn wait_for_eviction(dev: &WranglerDev, network: &str, before: &str) -> String {
    for idle in LOOKS_FOR_AN_EVICTION {
        tokio::time::sleep(idle).await;
        let now = instance(dev, network).await;
        if now != before {
            return now;
        }
    }
    panic!(
        "{network}: still {before} after {:?} idle: workerd no longer evicts an idle room",
        LOOKS_FOR_AN_EVICTION.iter().sum::<Duration>()
    );
}

/// README "Hibernation": the in-memory peer table is a cache rebuilt from the sockets'
/// attachments when the room wakes up. Each network here is left idle until workerd really
/// evicts its room (its sockets stay open), then woken by a different first event: a message,
/// a connect, a close. Each step after it needs the peers the old instance knew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_survives_a_real_eviction() {
    let dev = WranglerDev::start_with_vars(&[("GSIO_RELAY_TEST_HOOKS", "1")]);
    tokio::join!(
        woken_by_a_message(&dev),
        woken_by_a_connect(&dev),
        woken_by_a_close(&dev),
    );
}

/// README "Announcements on the edge": joins waiting for the end of the window live in the
/// room's memory, and a room whose timer is pending is not hibernated, so they are not lost.
/// With a 15 s window (longer than the 10 s after which workerd evicts an idle room), `a`'s
/// join starts the window, `b` and `c` join at once and wait for it: 15 s without an event
/// later, `a` is told of both in one `PeersChanged`, by the same instance of the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_waiting_for_their_window_are_not_lost_to_hibernation() {
    let dev = WranglerDev::start_with_vars(&[
        ("GSIO_RELAY_TEST_HOOKS", "1"),
        ("GSIO_RELAY_DISCOVERY__ANNOUNCE_WINDOW_MS", "15000"),
    ]);
    let net = WsNet::at(dev.url("/pending"));
    let mut a = net.peer("a").await;
    let before = instance(&dev, "/pending").await;
    let _b = net.peer("b").await;
    let _c = net.peer("c").await;
    let got = a
        .try_recv(Duration::from_secs(30))
        .await
        .expect("the joins waiting for the window were never announced");
    assert_eq!(got.message_type, "PeersChanged", "{got:?}");
    assert_eq!(
        got.payload_json(),
        serde_json::json!({"left": [], "joined": ["b", "c"]})
    );
    assert_eq!(
        instance(&dev, "/pending").await,
        before,
        "the room was evicted while announcements waited"
    );
}

/// Two peers `a` and `b` on `network`, its room evicted since they joined.
async fn evicted_pair(dev: &WranglerDev, network: &str) -> (WsNet, WsPeer, WsPeer) {
    let net = WsNet::at(dev.url(network));
    let mut a = net.peer("a").await;
    let b = net.peer("b").await;
    assert_eq!(a.recv().await.message_type, "PeerJoined");
    let before = instance(dev, network).await;
    wait_for_eviction(dev, network, &before).await;
    (net, a, b)
}

async fn woken_by_a_message(dev: &WranglerDev) {
    let (net, mut a, mut b) = evicted_pair(dev, "/evicted-message").await;
    // Directed routing finds b from the sockets' attachments alone.
    a.send("LedgerSyncResponse", "a", "b", "1").await;
    assert_eq!(b.recv().await.payload, "1");
    // Identity is still enforced: a is still a.
    a.send("LedgerSyncResponse", "b", "a", "1").await;
    a.expect_error("spoofed_sender").await;
    // The id is still taken.
    let mut imposter = WsPeer::connect(&net.url("?node_id=b")).await;
    imposter.expect_error("peer_id_in_use").await;
}

async fn woken_by_a_connect(dev: &WranglerDev) {
    let (net, mut a, mut b) = evicted_pair(dev, "/evicted-connect").await;
    let mut c = net.connect_as("c").await;
    let welcome = c.expect_welcome("c").await;
    assert_eq!(welcome["peers"], serde_json::json!(["a", "b"]), "{welcome}");
    assert_eq!(a.recv().await.payload_json()["peer_id"], "c");
    assert_eq!(b.recv().await.payload_json()["peer_id"], "c");
}

async fn woken_by_a_close(dev: &WranglerDev) {
    let (net, mut a, mut b) = evicted_pair(dev, "/evicted-close").await;
    b.ws.close(None).await.unwrap();
    let left = a.recv().await;
    assert_eq!(
        (
            left.message_type.as_str(),
            left.payload_json()["peer_id"].as_str()
        ),
        ("PeerLeft", Some("b"))
    );
    // b is gone from the table, a is still in it.
    let mut c = net.connect_as("c").await;
    let welcome = c.expect_welcome("c").await;
    assert_eq!(welcome["peers"], serde_json::json!(["a"]), "{welcome}");
    c.send("NodeAnnounce", "c", "", "\"hi\"").await;
    assert_eq!(a.recv().await.payload_json()["peer_id"], "c");
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
    // README: "(a plain HTTP request still gets `426`)".
    let response = http_get(dev.port, "/bad-config").await;
    assert!(response.starts_with("HTTP/1.1 426 "), "{response}");
    drop(dev);

    // A mode that takes tokens, without the secret it names: refused the same way, naming the
    // key and the secret.
    let dev = WranglerDev::start_with_vars(&[
        ("GSIO_RELAY_AUTH__MODE", "token"),
        ("GSIO_RELAY_AUTH__TOKEN_SECRET_ENV", "NO_SUCH_SECRET"),
    ]);
    let response = http_exchange(dev.port, request).await;
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");
    assert!(
        response.contains("auth.token_secret_env") && response.contains("NO_SUCH_SECRET"),
        "{response}"
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

    // README: "the bundle is about N KiB, M KiB gzipped". "About" is taken as within 10 %, so
    // the README's figures stay true and a bundle that grows (a dependency, a feature) fails
    // here until someone looks and updates them.
    let measured = upload_kib(size).unwrap_or_else(|| panic!("cannot read the sizes in {size}"));
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let promised = readme_bundle_kib(&readme).expect("README states the bundle size");
    for (what, measured, promised) in [
        ("bundle", measured.0, promised.0),
        ("gzipped bundle", measured.1, promised.1),
    ] {
        assert!(
            (measured - promised).abs() <= promised * BUNDLE_TOLERANCE,
            "the {what} is {measured} KiB; README says about {promised} KiB: update README.md \
             (\"the bundle is about ... KiB, ... KiB gzipped\") or find what grew"
        );
    }
}

/// How far from the README's "about" figures the bundle may be.
const BUNDLE_TOLERANCE: f64 = 0.10;

/// `(total, gzipped)` in KiB, from wrangler's `Total Upload: 892.28 KiB / gzip: 340.53 KiB`.
fn upload_kib(line: &str) -> Option<(f64, f64)> {
    let (total, gzip) = line.split_once("Total Upload:")?.1.split_once("/ gzip:")?;
    let kib = |text: &str| text.trim().strip_suffix("KiB")?.trim().parse().ok();
    Some((kib(total)?, kib(gzip)?))
}

/// `(total, gzipped)` in KiB, from the README's "the bundle is about 800 KiB, 310 KiB gzipped"
/// (wherever its lines break).
fn readme_bundle_kib(readme: &str) -> Option<(f64, f64)> {
    let words: Vec<&str> = readme.split_whitespace().collect();
    let at = words
        .windows(3)
        .position(|w| w == ["the", "bundle", "is"])?;
    match words.get(at + 3..at + 8)? {
        ["about", total, "KiB,", gzip, "KiB"] => Some((total.parse().ok()?, gzip.parse().ok()?)),
        _ => None,
    }
}

#[test]
fn bundle_sizes_are_read_from_wrangler_and_the_readme() {
    assert_eq!(
        upload_kib("Total Upload: 892.28 KiB / gzip: 340.53 KiB"),
        Some((892.28, 340.53))
    );
    assert_eq!(upload_kib("Total Upload: 1.2 MiB / gzip: 340.53 KiB"), None);
    assert_eq!(
        readme_bundle_kib("offline; the bundle is about 800 KiB, 310 KiB\ngzipped (the core"),
        Some((800.0, 310.0))
    );
    assert_eq!(readme_bundle_kib("the bundle is small"), None);
}

/// `scripts/build-worker.sh` checks that the wasm-bindgen CLI is the version `Cargo.lock` pins;
/// when it cannot read that version it stops with a message saying so, instead of skipping the
/// check. Run on a copy of the script in a directory of its own, whose `Cargo.lock` is missing
/// or lists no wasm-bindgen (nothing there could be built: it has no worker/).
#[test]
fn the_worker_build_stops_without_the_locked_wasm_bindgen_version() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("build-worker-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    let script = root.join("scripts/build-worker.sh");
    std::fs::copy(repo_path("scripts/build-worker.sh"), &script).unwrap();
    for (lockfile, says) in [
        (None, "cannot read"),
        (
            Some("version = 4\n\n[[package]]\nname = \"wasm-bindgen-shared\"\nversion = \"0.2.130\"\n"),
            "no wasm-bindgen version in",
        ),
    ] {
        let lock = root.join("Cargo.lock");
        match lockfile {
            Some(text) => std::fs::write(&lock, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&lock);
            }
        }
        let output = Command::new("bash").arg(&script).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("Cargo.lock"),
            "expected \"{says}\" about Cargo.lock, got: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A folder of its own for a test's Worker build (relay.toml, wrangler.toml, build output).
fn edge_folder(test: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("edge-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The repository's relay.toml with `Ping` routed by `ping` (shipped: echo).
fn relay_toml_with_ping(ping: &str) -> String {
    let shipped = std::fs::read_to_string(repo_path("relay.toml")).unwrap();
    assert!(shipped.contains("Ping = \"echo\""));
    shipped.replace("Ping = \"echo\"", &format!("Ping = \"{ping}\""))
}

/// How long the edge test gives a build (a release build of the Worker crate, fat LTO, on
/// cores other tests share).
const EDGE_BUILD: Duration = Duration::from_secs(600);

/// The `Ping` rule a peer joining `url` now is told of in its Welcome; `None` while the Worker
/// does not answer (wrangler is reloading it).
async fn ping_rule_at(url: &str) -> Option<String> {
    let connect = tokio::time::timeout(common::ARRIVES, tokio_tungstenite::connect_async(url));
    let (ws, _) = connect.await.ok()?.ok()?;
    let mut peer = WsPeer { ws };
    let welcome = tokio::time::timeout(common::ARRIVES, peer.recv())
        .await
        .ok()?;
    let _ = peer.ws.close(None).await;
    Some(
        welcome.payload_json()["routing"]["rules"]["Ping"]
            .as_str()?
            .to_owned(),
    )
}

/// README "Reloading relay.toml", the edge: the Worker takes its rules from relay.toml when it
/// is built, and `wrangler dev` rebuilds it when relay.toml changes. The repository's
/// wrangler.toml watches relay.toml; a Worker of this test's own (its relay.toml named by
/// `GSIO_RELAY_CONFIG`, built into a folder of its own by the same build command, watched the
/// same way) starts with `Ping` echoed, and after an edit of its relay.toml, without a restart,
/// routes `Ping` to every other peer. The repository's relay.toml is never touched (other tests
/// read it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_relay_toml_reaches_wrangler_dev_on_its_rebuild() {
    let repo_config: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_path("wrangler.toml")).unwrap()).unwrap();
    let watched = repo_config["build"]["watch_dir"].as_array().unwrap();
    assert!(
        watched.iter().any(|dir| dir.as_str() == Some("relay.toml")),
        "wrangler.toml's [build] watch_dir must list relay.toml: {watched:?}"
    );
    assert_eq!(
        repo_config["build"]["command"].as_str(),
        Some("bash scripts/build-worker.sh")
    );

    let dir = edge_folder("edit");
    let relay_toml = dir.join("relay.toml");
    std::fs::write(&relay_toml, relay_toml_with_ping("echo")).unwrap();
    // The repository's wrangler.toml, building into this folder, watching this relay.toml.
    let mut config = repo_config.clone();
    config.insert("main".into(), "build/index.js".into());
    let build = config["build"].as_table_mut().unwrap();
    build.insert(
        "command".into(),
        format!("bash {}", repo_path("scripts/build-worker.sh").display()).into(),
    );
    build.insert(
        "watch_dir".into(),
        toml::Value::Array(vec!["relay.toml".into()]),
    );
    let wrangler_toml = dir.join("wrangler.toml");
    std::fs::write(&wrangler_toml, toml::to_string(&config).unwrap()).unwrap();
    let out = dir.join("build");
    let dev = WranglerDev::start_with(
        &wrangler_toml,
        &[
            ("GSIO_RELAY_CONFIG", relay_toml.to_str().unwrap()),
            ("GSIO_WORKER_OUT", out.to_str().unwrap()),
        ],
        &[],
        EDGE_BUILD,
    );

    let net = WsNet::at(dev.url("/edge-before"));
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    assert_eq!(a.recv().await.message_type, "PeerJoined");
    common::nothing_else_back(&mut a, "a").await;
    common::nothing_else_from(&mut a, "a", &mut b, "b").await;
    drop((a, b));

    std::fs::write(&relay_toml, relay_toml_with_ping("broadcast")).unwrap();
    // Polled (each look a fresh peer on a network of its own), bounded by one build.
    let deadline = tokio::time::Instant::now() + EDGE_BUILD;
    let mut look = 0;
    loop {
        look += 1;
        let rule = ping_rule_at(&dev.url(&format!("/edge-look-{look}?node_id=look"))).await;
        if rule.as_deref() == Some("broadcast") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Ping is still {rule:?} after {EDGE_BUILD:?}\n{}",
            dev.log_tail()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let net = WsNet::at(dev.url("/edge-after"));
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    assert_eq!(a.recv().await.message_type, "PeerJoined");
    a.send("Ping", "a", "", "\"loud\"").await;
    let got = b.recv().await;
    assert_eq!(
        (got.message_type.as_str(), got.payload.as_str()),
        ("Ping", "\"loud\"")
    );
    common::nothing_else_from(&mut b, "b", &mut a, "a").await;
}

/// README "Edge relay": a bad relay.toml fails the Worker's build (the build command wrangler
/// runs), with the native loader's error naming the file, the key and the line. Each file is
/// named by `GSIO_RELAY_CONFIG`; the repository's relay.toml is never touched.
#[test]
fn a_bad_relay_toml_fails_the_worker_build_naming_file_key_and_line() {
    let dir = edge_folder("bad");
    let shipped = relay_toml_with_ping("echo");
    let line_of = |text: &str, needle: &str| text[..text.find(needle).unwrap()].lines().count() + 1;
    let bad_value = relay_toml_with_ping("loud");
    let unknown = shipped.replace("default = \"auto\"", "defualt = \"auto\"");
    let cases = [
        (
            "bad-value.toml",
            &bad_value,
            "routing.rules.Ping",
            line_of(&bad_value, "Ping = \"loud\""),
        ),
        (
            "unknown-key.toml",
            &unknown,
            "defualt",
            line_of(&unknown, "defualt"),
        ),
    ];
    for (name, text, key, line) in cases {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let output = Command::new("bash")
            .arg(repo_path("scripts/build-worker.sh"))
            .current_dir(repo_path(""))
            .env("GSIO_RELAY_CONFIG", &file)
            .env("GSIO_WORKER_OUT", dir.join("build"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{name} built:\n{text}");
        let named = file.display().to_string();
        for wanted in [named.as_str(), key, &format!("line {line}")] {
            assert!(text.contains(wanted), "{name}: no {wanted:?} in\n{text}");
        }
        assert!(
            !dir.join("build/index_bg.wasm").exists(),
            "{name}: a Worker was built"
        );
    }
}

/// A refused WebSocket upgrade to `path` of the Worker on `port` from the client address `ip`,
/// read raw to its end: the whole answer (status line, headers, body).
async fn refused_upgrade_from(port: u16, path: &str, ip: &str) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         CF-Connecting-IP: {ip}\r\n\r\n"
    );
    let answer = http_exchange(port, &request).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    answer
}

/// A WebSocket upgrade to the Worker from the client address `ip` (`CF-Connecting-IP`, which
/// `wrangler dev` keeps when the client sets it, as Cloudflare's edge never would): the socket,
/// or the refusal's HTTP status and body.
async fn connect_from(url: &str, ip: &str) -> Result<WsPeer, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("CF-Connecting-IP", ip.parse().unwrap());
    match tokio::time::timeout(common::ARRIVES, tokio_tungstenite::connect_async(request))
        .await
        .expect("no answer to the upgrade")
    {
        Ok((ws, _)) => Ok(WsPeer { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        Err(other) => panic!("upgrade failed: {other}"),
    }
}

/// README ("Limits"): the Worker counts each network's connections per client address
/// (`CF-Connecting-IP`) and answers one past `limits.max_connections_per_ip` with `429`; other
/// addresses are not affected; a connection that ends gives its place back. Its `Welcome`
/// announces `ping_interval_ms: 0` (it sends no pings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_limits_connections_per_client_address() {
    let dev = WranglerDev::start_with_vars(&[
        ("GSIO_RELAY_LIMITS__MAX_CONNECTIONS_PER_IP", "2"),
        ("GSIO_RELAY_LIMITS__NEW_CONNECTIONS_PER_IP_PER_SECOND", "0"),
    ]);
    let url = |id: &str| dev.url(&format!("/per-ip?node_id={id}"));
    let mut a = connect_from(&url("a"), "203.0.113.7").await.unwrap();
    let welcome = a.expect_welcome("a").await;
    assert_eq!(welcome["limits"]["ping_interval_ms"], 0);
    let mut b = connect_from(&url("b"), "203.0.113.7").await.unwrap();
    b.expect_welcome("b").await;
    let (status, _) = connect_from(&url("c"), "203.0.113.7").await.err().unwrap();
    assert_eq!(status, 429);
    let answer = refused_upgrade_from(dev.port, "/per-ip?node_id=c", "203.0.113.7").await;
    assert!(
        answer.contains("\r\n\r\ntoo_many_connections_from_address: ")
            && answer.contains("limits.max_connections_per_ip"),
        "{answer}"
    );
    // Another address, and the same address in another network, are counted apart.
    let mut d = connect_from(&url("d"), "203.0.113.8").await.unwrap();
    d.expect_welcome("d").await;
    let other = dev.url("/per-ip-other?node_id=e");
    connect_from(&other, "203.0.113.7").await.unwrap();
    // One of the two closes: its place is free again.
    b.ws.close(None).await.unwrap();
    while let Some(Ok(_)) = b.ws.next().await {}
    let deadline = tokio::time::Instant::now() + common::ARRIVES;
    let mut c = loop {
        match connect_from(&url("c"), "203.0.113.7").await {
            Ok(c) => break c,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    c.expect_welcome("c").await;
    drop(a);
}

/// README ("Limits"): new connections per address faster than
/// `limits.new_connections_per_ip_per_second`, past the burst, are refused with `429` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_limits_new_connections_per_second_per_address() {
    let dev = WranglerDev::start_with_vars(&[
        ("GSIO_RELAY_LIMITS__NEW_CONNECTIONS_PER_IP_PER_SECOND", "1"),
        ("GSIO_RELAY_LIMITS__NEW_CONNECTIONS_PER_IP_BURST", "2"),
    ]);
    let url = dev.url("/per-ip-rate");
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from(&url, "198.51.100.1").await.unwrap());
    }
    let answer = refused_upgrade_from(dev.port, "/per-ip-rate", "198.51.100.1").await;
    assert!(
        answer.contains("\r\n\r\ntoo_many_connections_from_address: ")
            && answer.contains("limits.new_connections_per_ip_per_second"),
        "{answer}"
    );
    connect_from(&url, "198.51.100.2").await.unwrap();
}
