//! The admin listener against a real relay: `/metrics` parsed by a Prometheus text parser that
//! is not ours (prometheus-parse) and seen to move while peers stay connected, `/healthz`, and
//! `/readyz` turning 503 for the whole drain while the listener keeps answering.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{get, get_ok};
use common::{shipped_config, Peer, TestRelay, ARRIVES};
use prometheus_parse::{Scrape, Value};

/// One scrape of `/metrics`, parsed.
struct Metrics {
    text: String,
    scrape: Scrape,
}

impl Metrics {
    async fn scrape(relay: &TestRelay) -> Metrics {
        let response = get(&relay.admin_url, "/metrics").await.unwrap();
        assert_eq!(response.status, 200, "{response:?}");
        let content_type = response.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let text = response.body;
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
        // Every sample line became a sample: nothing the parser could not read was skipped.
        let sample_lines = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .count();
        assert_eq!(scrape.samples.len(), sample_lines, "{text}");
        assert!(sample_lines > 0);
        Metrics { text, scrape }
    }

    /// The series of `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.len() == labels.len())
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in\n{}", self.text);
        found[0]
    }

    /// Every value of the label `label` among `name`'s series.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| s.labels.get(label).map(str::to_owned))
            .collect();
        values.sort();
        values
    }

    /// The family's declared type (`# TYPE family type`).
    fn declared_type(&self, family: &str) -> &str {
        let prefix = format!("# TYPE {family} ");
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no TYPE for {family}:\n{}", self.text))
    }
}

/// Every family the README lists, with its type, and counters named `_total`.
#[tokio::test]
async fn every_documented_metric_is_exposed_with_its_type() {
    let relay = TestRelay::start().await;
    let metrics = Metrics::scrape(&relay).await;
    let counters = [
        "gsio_relay_connections_accepted",
        "gsio_relay_envelopes_routed",
        "gsio_relay_messages",
        "gsio_relay_deliveries",
        "gsio_relay_errors",
        "gsio_relay_slow_consumer_disconnects",
        "gsio_relay_reloads",
        "gsio_relay_connections_refused",
        "gsio_relay_connections_timed_out",
    ];
    let gauges = [
        "gsio_relay_build_info",
        "gsio_relay_config_generation",
        "gsio_relay_connections",
        "gsio_relay_peers",
        "gsio_relay_queue_depth_max",
        "gsio_relay_queued_envelopes",
    ];
    for family in counters {
        assert_eq!(metrics.declared_type(family), "counter", "{family}");
        let total = format!("{family}_total");
        assert!(
            metrics.scrape.samples.iter().any(|s| s.metric == total),
            "{total}:\n{}",
            metrics.text
        );
    }
    for family in gauges {
        assert_eq!(metrics.declared_type(family), "gauge", "{family}");
    }
    assert_eq!(
        metrics.value(
            "gsio_relay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        metrics.label_values("gsio_relay_envelopes_routed_total", "mode"),
        ["broadcast", "directed", "echo"]
    );
    assert_eq!(
        metrics.label_values("gsio_relay_connections", "front"),
        ["grpc", "ws"]
    );
    assert_eq!(
        metrics.label_values("gsio_relay_connections_refused_total", "front"),
        ["grpc", "ws"]
    );
    assert_eq!(
        metrics.label_values("gsio_relay_connections_timed_out_total", "deadline"),
        ["handshake", "idle"]
    );
    // From the start, at zero.
    for mode in ["echo", "broadcast", "directed"] {
        let routed = metrics.value("gsio_relay_envelopes_routed_total", &[("mode", mode)]);
        assert_eq!(routed, 0.0, "{mode}");
    }
    for code in gsio_relay_core::ErrorCode::ALL {
        let errors = metrics.value("gsio_relay_errors_total", &[("code", code.as_str())]);
        assert_eq!(errors, 0.0, "{code:?}");
    }
    let codes = metrics.label_values("gsio_relay_errors_total", "code");
    let mut all: Vec<String> = gsio_relay_core::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    all.sort();
    assert_eq!(codes, all);
}

/// README "Metrics": reloads are counted by result, and the generation moves only when a reload
/// changed the rules in force (a valid file that changes nothing is counted, and keeps it).
#[tokio::test]
async fn reloads_are_counted_by_result_and_the_generation_follows_the_rules() {
    let relay = TestRelay::reloading().await;
    let path = relay.relay_toml.clone().unwrap();
    let shipped = std::fs::read_to_string(&path).unwrap();
    let reloads = |metrics: &Metrics| {
        (
            metrics.value("gsio_relay_reloads_total", &[("result", "ok")]),
            metrics.value("gsio_relay_reloads_total", &[("result", "failed")]),
            metrics.value("gsio_relay_config_generation", &[]),
        )
    };
    assert_eq!(reloads(&Metrics::scrape(&relay).await), (0.0, 0.0, 1.0));
    // Polled until the reload has happened (the file is read once it has been quiet).
    let until = |want: (f64, f64, f64)| {
        let relay = &relay;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let now = reloads(&Metrics::scrape(relay).await);
                if now == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{now:?}, not {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let louder = shipped.replace("Ping = \"echo\"", "Ping = \"broadcast\"");
    assert_ne!(louder, shipped);
    std::fs::write(&path, &louder).unwrap();
    until((1.0, 0.0, 2.0)).await;
    std::fs::write(&path, "[routing\n").unwrap();
    until((1.0, 1.0, 2.0)).await;
    // Valid again and the same rules: counted, the generation kept.
    std::fs::write(&path, &louder).unwrap();
    until((2.0, 1.0, 2.0)).await;
}

/// README "Metrics": the `message_type` series are the types named at start; a type a reload
/// adds to the rules is routed by its new rule but counted as `other`, with no series of its own.
#[tokio::test]
async fn a_type_added_by_a_reload_counts_as_other_until_a_restart() {
    let relay = TestRelay::reloading().await;
    let path = relay.relay_toml.clone().unwrap();
    let mut peer = relay.ws("a").await;
    let edited = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[routing.rules]\n", "[routing.rules]\nFresh = \"echo\"\n");
    std::fs::write(&path, edited).unwrap();
    let notice = peer.recv().await;
    assert_eq!(notice.message_type, "ConfigChanged");
    let other = |metrics: &Metrics| {
        metrics.value("gsio_relay_messages_total", &[("message_type", "other")])
    };
    let before = other(&Metrics::scrape(&relay).await);
    peer.send("Fresh", "a", "", "1").await;
    assert_eq!(
        peer.recv().await.message_type,
        "Fresh",
        "routed by its new rule"
    );
    let after = Metrics::scrape(&relay).await;
    assert_eq!(other(&after), before + 1.0);
    assert!(
        !after
            .label_values("gsio_relay_messages_total", "message_type")
            .iter()
            .any(|t| t == "Fresh"),
        "{}",
        after.text
    );
}

/// Peers on both fronts stay connected while they send: between two scrapes, every counter
/// their traffic touches has moved by exactly what they sent, and the gauges show them.
#[tokio::test]
async fn metrics_move_while_peers_stay_connected() {
    let relay = TestRelay::start().await;
    let mut ws = relay.ws("ws-peer").await;
    let mut grpc = relay.grpc("grpc-peer").await;
    assert_eq!(ws.recv().await.message_type, "PeerJoined");

    let before = Metrics::scrape(&relay).await;
    assert_eq!(
        before.value("gsio_relay_connections", &[("front", "ws")]),
        1.0
    );
    assert_eq!(
        before.value("gsio_relay_connections", &[("front", "grpc")]),
        1.0
    );
    assert_eq!(before.value("gsio_relay_peers", &[]), 2.0);

    // Shipped rules: Ping echo, NodeAnnounce broadcast, LedgerSyncResponse directed,
    // NodeListRequest auto (addressed: directed); Unruled is no rule's (default auto, broadcast).
    ws.send("Ping", "ws-peer", "", "1").await;
    assert_eq!(ws.recv().await.message_type, "Ping");
    ws.send("NodeAnnounce", "ws-peer", "", "2").await;
    assert_eq!(grpc.recv().await.message_type, "NodeAnnounce");
    grpc.send("LedgerSyncResponse", "grpc-peer", "ws-peer", "3")
        .await;
    assert_eq!(ws.recv().await.message_type, "LedgerSyncResponse");
    grpc.send("NodeListRequest", "grpc-peer", "ws-peer", "4")
        .await;
    assert_eq!(ws.recv().await.message_type, "NodeListRequest");
    grpc.send("Unruled", "grpc-peer", "", "5").await;
    assert_eq!(ws.recv().await.message_type, "Unruled");

    let after = Metrics::scrape(&relay).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let routed = "gsio_relay_envelopes_routed_total";
    assert_eq!(moved(routed, &[("mode", "echo")]), 1.0);
    assert_eq!(moved(routed, &[("mode", "broadcast")]), 2.0);
    assert_eq!(moved(routed, &[("mode", "directed")]), 2.0);
    let messages = "gsio_relay_messages_total";
    for (ty, n) in [
        ("Ping", 1.0),
        ("NodeAnnounce", 1.0),
        ("LedgerSyncResponse", 1.0),
        ("NodeListRequest", 1.0),
        ("other", 1.0),
        ("EntryAnnounce", 0.0),
    ] {
        assert_eq!(moved(messages, &[("message_type", ty)]), n, "{ty}");
    }
    assert_eq!(moved("gsio_relay_deliveries_total", &[]), 5.0);
    // Still both connected: the counters moved without anyone leaving.
    assert_eq!(
        after.value("gsio_relay_connections", &[("front", "ws")]),
        1.0
    );
    assert_eq!(
        after.value("gsio_relay_connections", &[("front", "grpc")]),
        1.0
    );
    assert_eq!(
        after.value(
            "gsio_relay_connections_accepted_total",
            &[("front", "grpc")]
        ),
        1.0
    );

    // And the gauge follows a peer that leaves.
    grpc.leave().await;
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        let now = Metrics::scrape(&relay).await;
        if now.value("gsio_relay_connections", &[("front", "grpc")]) == 0.0 {
            assert_eq!(now.value("gsio_relay_connections", &[("front", "ws")]), 1.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", now.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bad envelope moves its code's counter; network-chosen types never become series: thirty
/// types no rule names all count as `other`.
#[tokio::test]
async fn errors_count_by_code_and_types_the_rules_do_not_name_are_other() {
    let relay = TestRelay::start().await;
    let mut ws = relay.ws("ws-peer").await;
    let before = Metrics::scrape(&relay).await;
    let errors = "gsio_relay_errors_total";

    ws.send_text("{").await;
    ws.expect_error("invalid_json").await;
    ws.send("LedgerSyncResponse", "ws-peer", "ghost", "1").await;
    ws.expect_error("unknown_recipient").await;
    for n in 0..30 {
        ws.send(&format!("Chosen-By-The-Network-{n}"), "ws-peer", "", "1")
            .await;
    }
    common::nothing_else_back(&mut ws, "ws-peer").await;

    let after = Metrics::scrape(&relay).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(moved(errors, &[("code", "invalid_json")]), 1.0);
    assert_eq!(moved(errors, &[("code", "unknown_recipient")]), 1.0);
    assert_eq!(moved(errors, &[("code", "spoofed_sender")]), 0.0);
    let messages = "gsio_relay_messages_total";
    assert_eq!(moved(messages, &[("message_type", "other")]), 30.0);
    let mut types = after.label_values(messages, "message_type");
    let mut expected: Vec<String> = shipped_config().routing.rules.into_keys().collect();
    expected.push("other".to_owned());
    expected.sort();
    types.dedup();
    assert_eq!(types, expected);
}

/// A peer that does not read: its queue shows in the depth gauges, and its slow-consumer cut
/// moves the counter.
#[tokio::test]
async fn queue_depth_and_slow_consumers_show_a_peer_that_does_not_read() {
    let mut config = shipped_config();
    config.limits.queue_capacity = 64;
    let relay = TestRelay::start_with(config).await;
    let mut sender = relay.ws("sender").await;
    let _stalled = relay.ws("stalled").await; // never reads
    assert_eq!(sender.recv().await.message_type, "PeerJoined");
    let pad = serde_json::Value::from("z".repeat(64 * 1024)).to_string();
    // Until the stalled peer's socket and then its queue are full: each envelope is either
    // delivered or answered recipient_queue_full, and the gauge is read on the way.
    let mut deepest = 0.0f64;
    for n in 0.. {
        assert!(n < 2_000, "the stalled peer was never cut off");
        sender
            .send("LedgerSyncResponse", "sender", "stalled", &pad)
            .await;
        if n % 8 == 0 {
            common::nothing_else_back(&mut sender, "sender").await;
            let metrics = Metrics::scrape(&relay).await;
            deepest = deepest.max(metrics.value("gsio_relay_queue_depth_max", &[]));
            if deepest > 0.0 {
                assert!(metrics.value("gsio_relay_queued_envelopes", &[]) >= deepest);
                break;
            }
        }
    }
    assert!(deepest > 0.0);
    let before = Metrics::scrape(&relay).await;
    let slow = "gsio_relay_slow_consumer_disconnects_total";
    assert_eq!(before.value(slow, &[]), 0.0);
    // Past what its queue (64) and socket take: it is cut off, and the sender told.
    for _ in 0..400 {
        sender
            .send("LedgerSyncResponse", "sender", "stalled", &pad)
            .await;
    }
    let sentinel = format!("\"{}\"", common::next_message_id());
    sender.send("Ping", "sender", "", &sentinel).await;
    let mut told = Vec::new();
    loop {
        let got = sender.recv().await;
        if got.message_type == "Ping" {
            break;
        }
        if got.message_type == "Error" {
            told.push(got.error_code());
        }
    }
    assert!(
        told.contains(&"recipient_queue_full".to_owned()),
        "{told:?}"
    );
    let after = Metrics::scrape(&relay).await;
    assert_eq!(after.value(slow, &[]), 1.0);
    assert!(
        after.value(
            "gsio_relay_errors_total",
            &[("code", "recipient_queue_full")]
        ) >= 1.0,
        "{}",
        after.text
    );
}

/// `/healthz` is 200; `/readyz` is 200 until shutdown begins, then 503 for the whole drain
/// (here held open by a peer that does not read what is queued for it) while the listener
/// keeps answering both; once the relay has stopped, the listener is gone.
#[tokio::test]
async fn readyz_turns_503_when_shutdown_begins_and_the_listener_answers_through_the_drain() {
    let mut config = shipped_config();
    config.server.shutdown_grace_ms = 3_000;
    let mut relay = TestRelay::start_with(config).await;
    assert_eq!(get_ok(&relay.admin_url, "/healthz").await, "ok\n");
    assert_eq!(get_ok(&relay.admin_url, "/readyz").await, "ready\n");

    // More queued for `stalled` than its socket buffers take: its drain lasts until the grace
    // period ends.
    let mut sender = relay.ws("sender").await;
    let _stalled = relay.ws("stalled").await;
    assert_eq!(sender.recv().await.message_type, "PeerJoined");
    let pad = serde_json::Value::from("z".repeat(64 * 1024)).to_string();
    for _ in 0..400 {
        sender
            .send("LedgerSyncResponse", "sender", "stalled", &pad)
            .await;
    }
    common::nothing_else_back(&mut sender, "sender").await;
    assert!(relay.relay.queued("stalled").unwrap() > 0);

    let started = std::time::Instant::now();
    let server = relay.shut_down();
    loop {
        assert!(
            !server.is_finished(),
            "the relay stopped before /readyz said 503"
        );
        let readyz = get(&relay.admin_url, "/readyz")
            .await
            .expect("the admin listener stopped before /readyz said 503");
        if readyz.status == 503 {
            assert_eq!(readyz.body, "draining\n");
            break;
        }
        assert_eq!(readyz.status, 200, "{readyz:?}");
        assert!(started.elapsed() < ARRIVES, "/readyz never said 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still draining, and still answering.
    assert_eq!(get_ok(&relay.admin_url, "/healthz").await, "ok\n");
    let metrics = get(&relay.admin_url, "/metrics").await.unwrap();
    assert_eq!(metrics.status, 200);
    assert_eq!(get(&relay.admin_url, "/readyz").await.unwrap().status, 503);
    assert!(!server.is_finished(), "the drain ended before the checks");

    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the relay did not stop")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the drain was not held open"
    );
    assert!(
        get(&relay.admin_url, "/healthz").await.is_err(),
        "the admin listener outlived the relay"
    );
}

/// The binary logs the admin listener's address in its "listening" line, where port 0 has
/// become the real one, and serves there.
#[tokio::test]
async fn the_binary_logs_the_admin_address_and_serves_it() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gsio-relay"))
        .env("GSIO_RELAY_CONFIG", common::repo_path("relay.toml"))
        .env("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:0")
        .env("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:0")
        .env("GSIO_RELAY_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("gsio-relay listening"))
    })
    .await
    .unwrap()
    .expect("no listening line");
    let at = line.find("admin=").expect("admin= in the line") + "admin=".len();
    let url = line[at..].split_whitespace().next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    assert!(!url.ends_with(":0"), "{line}");
    assert_eq!(get_ok(&url, "/healthz").await, "ok\n");
    assert!(get_ok(&url, "/metrics")
        .await
        .contains("gsio_relay_build_info"));
    drop(guard);
    let _ = child.wait();
}

/// Kills (SIGKILL) the process this test started, by its pid, however the test ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.0).unwrap();
        // SAFETY: kill(2) on the pid of a child this test started and has not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
