//! Editing relay.toml under a running native relay: the real binary (file watch, SIGHUP, logs)
//! and a relay in this process (the reload record, the notice envelope), each with real peers on
//! both fronts that stay connected throughout. Nothing here waits a fixed time for a reload: each
//! test polls for its effect (an envelope, a log entry, the record) within a bound, and proves
//! that something did *not* happen with a sentinel sent after the reload.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::binary::{RunningBinary, BIN};
use common::{
    expect_config_changed, nothing_else_back, nothing_else_from,
    shipped_relay_toml_on_ephemeral_ports, GrpcPeer, Peer, TestRelay, WsPeer,
};

/// A fresh folder for one test's relay.toml.
fn folder(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reload-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shipped relay.toml on ephemeral ports, with `Ping` routed by `ping` (shipped: echo).
fn rules(ping: &str) -> String {
    let text = shipped_relay_toml_on_ephemeral_ports();
    // `log.format` is present too, so that the tests that edit it edit something.
    for present in ["Ping = \"echo\"", "format = \"text\""] {
        assert!(
            text.contains(present),
            "the shipped relay.toml lost {present}"
        );
    }
    text.replace("Ping = \"echo\"", &format!("Ping = \"{ping}\""))
}

/// The three ways editors save.
#[derive(Debug, Clone, Copy)]
enum Save {
    /// Truncate, then write.
    InPlace,
    /// Write a temporary file beside it, then rename it over the file.
    Rename,
    /// Delete the file, then create it anew.
    DeleteCreate,
}

fn save(path: &Path, text: &str, how: Save) {
    match how {
        Save::InPlace => std::fs::write(path, text).unwrap(),
        Save::Rename => {
            let temp = path.with_extension("toml.swp");
            std::fs::write(&temp, text).unwrap();
            std::fs::rename(&temp, path).unwrap();
        }
        Save::DeleteCreate => {
            std::fs::remove_file(path).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }
}

/// Starts the binary on `path`, with `overrides` as its only `GSIO_RELAY_*` variables.
fn start_with(path: &Path, overrides: &[(&str, &str)]) -> RunningBinary {
    let mut command = Command::new(BIN);
    command.arg("--config").arg(path);
    for (name, _) in std::env::vars() {
        if name.to_ascii_uppercase().starts_with("GSIO_RELAY_") {
            command.env_remove(name);
        }
    }
    command.envs(overrides.iter().copied());
    RunningBinary::start(&mut command)
}

fn start(path: &Path) -> RunningBinary {
    start_with(path, &[])
}

/// A WebSocket peer `w` and a gRPC peer `g` on the binary, welcomed, `w` told of `g`.
async fn two_fronts(relay: &RunningBinary) -> (WsPeer, GrpcPeer) {
    let mut w = WsPeer::connect(&format!("{}/?node_id=w", relay.url)).await;
    w.expect_welcome("w").await;
    let mut g = GrpcPeer::connect(&relay.grpc_url, Some("g")).await.unwrap();
    g.expect_welcome("g").await;
    assert_eq!(w.recv().await.message_type, "PeerJoined");
    (w, g)
}

/// `Ping` from `from` reaches `to` (broadcast), and not `from` itself: `to` answers with a
/// directed sentinel, which is the next thing `from` receives.
async fn ping_is_broadcast<P: Peer, Q: Peer>(from: &mut P, from_id: &str, to: &mut Q, to_id: &str) {
    from.send("Ping", from_id, "", "\"loud\"").await;
    let got = to.recv().await;
    assert_eq!(
        (got.message_type.as_str(), got.sender_id.as_str()),
        ("Ping", from_id),
        "{got:?}"
    );
    nothing_else_from(to, to_id, from, from_id).await;
}

/// `Ping` from `from` comes back to it (echo) and does not reach `to`.
async fn ping_is_echo<P: Peer, Q: Peer>(from: &mut P, from_id: &str, to: &mut Q, to_id: &str) {
    nothing_else_back(from, from_id).await;
    nothing_else_from(from, from_id, to, to_id).await;
}

/// README "Reloading relay.toml": an edit applies to the next envelope, with no connection
/// dropped, however the editor saves: in place, by renaming a temporary file over it, or by
/// deleting and recreating it. The file is read with the environment's overrides over it (the
/// queue capacity here), as at start. Each reload is logged with its generation.
#[tokio::test]
async fn an_edit_reaches_routing_while_peers_on_both_fronts_stay_connected() {
    let dir = folder("edit");
    let path = dir.join("relay.toml");
    std::fs::write(&path, rules("echo")).unwrap();
    let relay = start_with(&path, &[("GSIO_RELAY_LIMITS__QUEUE_CAPACITY", "77")]);
    let (mut w, mut g) = two_fronts(&relay).await;
    ping_is_echo(&mut w, "w", &mut g, "g").await;

    let steps = [
        ("broadcast", Save::InPlace),
        ("echo", Save::Rename),
        ("broadcast", Save::DeleteCreate),
    ];
    for (n, (ping, how)) in steps.into_iter().enumerate() {
        save(&path, &rules(ping), how);
        let told = expect_config_changed(&mut w, ping).await;
        assert_eq!(
            told["limits"]["queue_capacity"], 77,
            "the override still applies"
        );
        expect_config_changed(&mut g, ping).await;
        if ping == "broadcast" {
            ping_is_broadcast(&mut w, "w", &mut g, "g").await;
            ping_is_broadcast(&mut g, "g", &mut w, "w").await;
        } else {
            ping_is_echo(&mut w, "w", &mut g, "g").await;
            ping_is_echo(&mut g, "g", &mut w, "w").await;
        }
        let entry = relay.entry("relay.toml reloaded", n + 1).await;
        assert!(
            entry.contains(&format!("generation={}", n + 2))
                && entry.contains("routing.rules.Ping"),
            "{how:?}: {entry}"
        );
    }
    let (status, lines) = relay.terminate();
    assert!(status.success(), "{lines:#?}");
}

/// README "Reloading relay.toml": a file that does not load changes nothing. Each bad file
/// would also make `Ping` broadcast were any of it applied; the relay keeps running on the old
/// rules (`Ping` still echoes), logs the loader's error naming the file, the key and the line,
/// and counts the failure. A good file afterwards is applied.
#[tokio::test]
async fn a_bad_file_changes_nothing_is_logged_with_file_key_and_line_and_counted() {
    let dir = folder("bad");
    let path = dir.join("relay.toml");
    std::fs::write(&path, rules("echo")).unwrap();
    let relay = start(&path);
    let (mut w, mut g) = two_fronts(&relay).await;
    let file = path.display().to_string();

    let loud = rules("broadcast");
    let line_of = |text: &str, needle: &str| text[..text.find(needle).unwrap()].lines().count() + 1;
    let syntax = format!("{loud}\n[limits\n");
    let syntax_line = syntax.lines().count();
    let unknown = loud.replace("default = \"auto\"", "defualt = \"auto\"");
    let unknown_line = line_of(&unknown, "defualt");
    let bad_value = rules("loud");
    let bad_value_line = line_of(&bad_value, "Ping = \"loud\"");
    let out_of_range = loud.replace("queue_capacity = 4096", "queue_capacity = 0");
    // (what is wrong, the file's bytes or None to delete it, what the error names)
    type Case<'a> = (&'a str, Option<Vec<u8>>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "syntax",
            Some(syntax.into_bytes()),
            vec![format!("line {syntax_line}")],
        ),
        (
            "unknown key",
            Some(unknown.into_bytes()),
            vec!["defualt".into(), format!("line {unknown_line}")],
        ),
        (
            "bad value",
            Some(bad_value.into_bytes()),
            vec![
                "routing.rules.Ping".into(),
                format!("line {bad_value_line}"),
                "loud".into(),
            ],
        ),
        (
            "value out of range",
            Some(out_of_range.into_bytes()),
            vec!["limits.queue_capacity".into(), "out of range".into()],
        ),
        (
            "unreadable",
            Some([loud.as_bytes(), b"# \xff\xfe not UTF-8\n"].concat()),
            vec!["UTF-8".into()],
        ),
        ("deleted", None, vec!["not found".into()]),
    ];
    for (n, (what, bytes, names)) in cases.into_iter().enumerate() {
        match bytes {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        let entry = relay.entry("relay.toml not reloaded", n + 1).await;
        assert!(entry.contains(&file), "{what}: {entry}");
        for name in names {
            assert!(entry.contains(&name), "{what}: no {name:?} in {entry}");
        }
        assert!(
            entry.contains(&format!("failed={}", n + 1)),
            "{what}: not counted: {entry}"
        );
        // The old rules, on both fronts; and no ConfigChanged came before these sentinels.
        ping_is_echo(&mut w, "w", &mut g, "g").await;
        ping_is_echo(&mut g, "g", &mut w, "w").await;
    }
    assert_eq!(relay.count("relay.toml reloaded"), 0);

    std::fs::write(&path, rules("broadcast")).unwrap();
    expect_config_changed(&mut w, "broadcast").await;
    expect_config_changed(&mut g, "broadcast").await;
    ping_is_broadcast(&mut w, "w", &mut g, "g").await;
    let (status, lines) = relay.terminate();
    assert!(status.success(), "{lines:#?}");
}

/// README "Reloading relay.toml": SIGHUP reloads the file at once. The file here is a symlink
/// to a file in another folder, whose edits the folder watch does not see (as README says), so
/// only the signal can have reloaded it.
#[tokio::test]
async fn sighup_reloads_the_file() {
    let dir = folder("sighup");
    let elsewhere = folder("sighup-target");
    let target = elsewhere.join("real.toml");
    std::fs::write(&target, rules("echo")).unwrap();
    let path = dir.join("relay.toml");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let relay = start(&path);
    let (mut w, mut g) = two_fronts(&relay).await;

    std::fs::write(&target, rules("broadcast")).unwrap();
    // Not seen: Ping still echoes (a sentinel sent after the edit, with a margin for a watch
    // that would have seen it).
    tokio::time::sleep(common::QUIET).await;
    ping_is_echo(&mut w, "w", &mut g, "g").await;
    assert_eq!(relay.count("relay.toml reloaded"), 0);

    relay.signal(libc::SIGHUP);
    expect_config_changed(&mut w, "broadcast").await;
    expect_config_changed(&mut g, "broadcast").await;
    ping_is_broadcast(&mut w, "w", &mut g, "g").await;
    relay.entry("SIGHUP: reloading relay.toml", 1).await;
    let (status, lines) = relay.terminate();
    assert!(status.success(), "{lines:#?}");
}

/// README "Reloading relay.toml": keys used only at start are named in a warning and keep their
/// old values: the relay still listens where it did, and still logs text. Nothing peers are told
/// about changed, so no `ConfigChanged` is sent.
#[tokio::test]
async fn a_restart_only_key_warns_and_keeps_its_old_value() {
    let dir = folder("restart-only");
    let path = dir.join("relay.toml");
    std::fs::write(&path, rules("echo")).unwrap();
    let relay = start(&path);
    let (mut w, mut g) = two_fronts(&relay).await;

    let edited = rules("echo")
        .replace("ws_listen = \"127.0.0.1:0\"", "ws_listen = \"127.0.0.1:1\"")
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            "admin_listen = \"127.0.0.1:2\"",
        )
        .replace("max_connections = 20000", "max_connections = 7")
        .replace("format = \"text\"", "format = \"json\"");
    std::fs::write(&path, edited).unwrap();
    let warning = relay.entry("apply only when the relay starts", 1).await;
    for key in [
        "server.ws_listen",
        "server.admin_listen",
        "server.max_connections",
        "log.format",
    ] {
        assert!(warning.contains(key), "{key}: {warning}");
    }
    assert!(!warning.contains("grpc_listen"), "{warning}");
    // Still logging text: the reload's own line is one.
    let done = relay.entry("relay.toml reloaded", 1).await;
    assert!(!done.starts_with('{'), "{done}");
    assert!(
        done.contains("nothing changed") && done.contains("generation=1"),
        "{done}"
    );
    nothing_else_back(&mut w, "w").await;
    nothing_else_back(&mut g, "g").await;

    // Still listening where it was.
    let mut late = WsPeer::connect(&format!("{}/?node_id=late", relay.url)).await;
    late.expect_welcome("late").await;
    let (status, lines) = relay.terminate();
    assert!(status.success(), "{lines:#?}");
}

/// Waits until the relay in this process has recorded `succeeded` valid and `failed` refused
/// reloads (polled, bounded).
async fn reloads_reach(
    relay: &TestRelay,
    succeeded: u64,
    failed: u64,
) -> gsio_relay::state::ReloadStatus {
    let deadline = tokio::time::Instant::now() + common::ARRIVES;
    loop {
        let status = relay.relay.reloads();
        if (status.succeeded, status.failed) == (succeeded, failed) {
            return status;
        }
        assert!(
            status.succeeded <= succeeded && status.failed <= failed,
            "{status:?}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {status:?}, waiting for {succeeded} valid and {failed} refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// README "Reloading relay.toml": every connected peer, on both fronts, receives `ConfigChanged`
/// with the Welcome's new `limits` and `routing` block, only when that block changed. A smaller
/// `max_message_bytes` applies to the next envelope of connected peers. The reload record counts
/// each reload and the generation of the rules in force.
#[tokio::test]
async fn the_notice_reaches_both_fronts_only_when_what_welcome_announces_changed() {
    let dir = folder("notice");
    let path = dir.join("relay.toml");
    std::fs::write(&path, rules("echo")).unwrap();
    let relay = TestRelay::watching(&path).await;
    assert_eq!(relay.relay.reloads().generation, 1);
    let mut w = relay.ws("w").await;
    let mut g = relay.grpc("g").await;
    assert_eq!(w.recv().await.message_type, "PeerJoined");

    // Not announced: nobody is told (the sentinel is the next thing each receives).
    let quiet = rules("echo").replace("welcome_peers_max = 100", "welcome_peers_max = 5");
    std::fs::write(&path, &quiet).unwrap();
    let status = reloads_reach(&relay, 1, 0).await;
    assert_eq!(status.generation, 2);
    assert_eq!(relay.relay.config().discovery.welcome_peers_max, 5);
    nothing_else_back(&mut w, "w").await;
    nothing_else_back(&mut g, "g").await;

    // Announced: both fronts are told, with what a newcomer's Welcome now says.
    let smaller = quiet
        .replace("max_message_bytes = 1048576", "max_message_bytes = 1000")
        .replace("queue_capacity = 4096", "queue_capacity = 100");
    std::fs::write(&path, &smaller).unwrap();
    let to_w = expect_config_changed(&mut w, "echo").await;
    let to_g = expect_config_changed(&mut g, "echo").await;
    assert_eq!(to_w, to_g);
    assert_eq!(to_w["limits"]["max_message_bytes"], 1000);
    assert_eq!(to_w["limits"]["queue_capacity"], 100);
    let mut late = WsPeer::connect(&format!("{}/?node_id=late", relay.ws_url)).await;
    let welcome = late.expect_welcome("late").await;
    let block = serde_json::json!({"limits": welcome["limits"], "routing": welcome["routing"]});
    assert_eq!(to_w, block);
    let status = reloads_reach(&relay, 2, 0).await;
    assert_eq!(status.generation, 3);
    let last = status.last.unwrap();
    assert!(
        last.ok && last.message.contains("limits.max_message_bytes"),
        "{last:?}"
    );

    // The smaller limit applies to the next envelope; the connections stay.
    let big = format!("\"{}\"", "x".repeat(1200));
    w.send("Ping", "w", "", &big).await;
    w.expect_error("message_too_large").await;
    g.send("Ping", "g", "", &big).await;
    g.expect_error("message_too_large").await;
    nothing_else_back(&mut w, "w").await;
    nothing_else_back(&mut g, "g").await;
}

/// README "Reloading relay.toml": a half-saved file fails to load, and the finished save is
/// then applied (the folder is still watched after a failure).
#[tokio::test]
async fn a_half_saved_file_fails_then_the_finished_save_is_applied() {
    let dir = folder("half");
    let path = dir.join("relay.toml");
    std::fs::write(&path, rules("echo")).unwrap();
    let relay = TestRelay::watching(&path).await;
    let mut w = relay.ws("w").await;

    let full = rules("broadcast");
    let cut = full.find("Ping = \"broad").unwrap() + "Ping = \"broad".len();
    std::fs::write(&path, &full[..cut]).unwrap();
    let status = reloads_reach(&relay, 0, 1).await;
    assert!(!status.last.unwrap().ok);
    nothing_else_back(&mut w, "w").await;

    std::fs::write(&path, &full).unwrap();
    expect_config_changed(&mut w, "broadcast").await;
    let status = reloads_reach(&relay, 1, 1).await;
    assert_eq!(status.generation, 2);
}

/// README "Reloading relay.toml": the keys used only at start keep their old values in the rules
/// in force; `server.shutdown_grace_ms` is not one of them.
#[tokio::test]
async fn restart_only_keys_keep_their_values_in_the_config_in_force() {
    let dir = folder("kept");
    let path = dir.join("relay.toml");
    std::fs::write(&path, rules("echo")).unwrap();
    let relay = TestRelay::watching(&path).await;
    let before = relay.relay.config();

    let edited = rules("echo")
        .replace("ws_listen = \"127.0.0.1:0\"", "ws_listen = \"127.0.0.1:1\"")
        .replace(
            "grpc_listen = \"127.0.0.1:0\"",
            "grpc_listen = \"127.0.0.1:2\"",
        )
        .replace("max_connections = 20000", "max_connections = 7")
        .replace("shutdown_grace_ms = 5000", "shutdown_grace_ms = 250")
        .replace("format = \"text\"", "format = \"json\"");
    std::fs::write(&path, edited).unwrap();
    let status = reloads_reach(&relay, 1, 0).await;
    assert_eq!(status.generation, 2);
    assert_eq!(
        status.last.unwrap().message,
        "changed server.shutdown_grace_ms"
    );
    let now = relay.relay.config();
    assert_eq!(now.server.shutdown_grace_ms, 250);
    assert_eq!(
        (
            now.server.ws_listen,
            now.server.grpc_listen,
            now.server.max_connections,
            &now.log
        ),
        (
            before.server.ws_listen,
            before.server.grpc_listen,
            before.server.max_connections,
            &before.log
        )
    );
}

/// README "Reloading relay.toml": a larger `max_message_bytes` reaches frames only as far as the
/// transports' hard limit allows: a WebSocket connection opened after the reload reads a frame
/// over the old hard limit; one opened before, and the gRPC front (until a restart), end the
/// connection at it, as for any frame over the hard limit.
#[tokio::test]
async fn a_raised_limit_reaches_frames_only_as_far_as_the_transports_allow() {
    let dir = folder("raised");
    let path = dir.join("relay.toml");
    let limited = |max: usize| {
        rules("echo").replace(
            "max_message_bytes = 1048576",
            &format!("max_message_bytes = {max}"),
        )
    };
    // Hard limit at start: 1000 + 64 KiB.
    std::fs::write(&path, limited(1000)).unwrap();
    let relay = TestRelay::watching(&path).await;
    let mut old = relay.ws("old").await;
    let mut g = relay.grpc("g").await;
    assert_eq!(old.recv().await.message_type, "PeerJoined");

    std::fs::write(&path, limited(200_000)).unwrap();
    let told = expect_config_changed(&mut old, "echo").await;
    assert_eq!(told["limits"]["max_message_bytes"], 200_000);
    expect_config_changed(&mut g, "echo").await;

    let big = format!("\"{}\"", "x".repeat(100_000));
    let mut new = relay.ws("new").await;
    new.send("Ping", "new", "", &big).await;
    let got = new.recv_skipping_announcements().await;
    assert_eq!(
        (got.message_type.as_str(), got.payload.len()),
        ("Ping", big.len())
    );

    old.send("Ping", "old", "", &big).await;
    let (code, reason) = old.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    g.send("Ping", "g", "", &big).await;
    let status = g.expect_status().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("message_too_large"),
        "{status:?}"
    );
}

/// README "Reloading relay.toml": a smaller `queue_capacity` reaches the queues of peers already
/// connected. A peer that reads nothing (`s`) is sent far more than its connection holds, by
/// broadcast: under the new capacity its queue fills and it is cut as a slow consumer, which its
/// sender is told of; under the capacity it had when it connected (4096, more than is sent) it
/// would not be.
#[tokio::test]
async fn a_smaller_queue_capacity_reaches_connected_peers() {
    let dir = folder("queue");
    let path = dir.join("relay.toml");
    std::fs::write(&path, rules("echo")).unwrap();
    let relay = TestRelay::watching(&path).await;
    let mut w = relay.ws("w").await;
    let _s = relay.ws("s").await; // reads nothing from here on
    assert_eq!(w.recv().await.message_type, "PeerJoined");

    std::fs::write(
        &path,
        rules("echo").replace("queue_capacity = 4096", "queue_capacity = 64"),
    )
    .unwrap();
    let told = expect_config_changed(&mut w, "echo").await;
    assert_eq!(told["limits"]["queue_capacity"], 64);

    // 1000 envelopes of 32 KiB: 32 MiB, far beyond what two sockets' buffers hold, and far
    // below the 4096 the queue had before.
    let payloads: Vec<String> = (0..1000)
        .map(|n| format!("\"{n} {}\"", "x".repeat(32 * 1024)))
        .collect();
    common::conformance::FrontPeer::send_burst(&mut w, "NodeAnnounce", "w", &payloads).await;
    let sentinel = format!("\"sentinel {}\"", common::next_message_id());
    w.send("Ping", "w", "", &sentinel).await;
    let mut codes = Vec::new();
    loop {
        let got = w.recv_skipping_announcements().await;
        if got.message_type == "Ping" {
            assert_eq!(got.payload, sentinel);
            break;
        }
        codes.push(got.error_code());
    }
    assert!(
        codes.iter().any(|code| code == "recipient_queue_full"),
        "s was not cut under the new capacity: {codes:?}"
    );
}
