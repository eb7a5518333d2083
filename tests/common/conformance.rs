//! The conformance table: the WebSocket protocol's behaviour, written once and run against
//! every runtime (the native relay, and the Worker under `wrangler dev`). Each scenario gets a
//! network of its own (a fresh native relay, or a fresh Worker path) configured by the shipped
//! `relay.toml`: `Ping` is echo, `LedgerSync` directed, everything else broadcast.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use super::{binary, envelope, Frame, Peer, WsPeer};

/// One isolated network: every URL built from it reaches the same set of peers.
pub struct Net {
    /// `ws://host:port/path`, without a query.
    pub base: String,
}

impl Net {
    pub fn url(&self, query: &str) -> String {
        format!("{}{query}", self.base)
    }

    /// A peer with its id fixed on the URL, its Welcome already read.
    pub async fn peer(&self, id: &str) -> WsPeer {
        let mut peer = WsPeer::connect(&self.url(&format!("?node_id={id}"))).await;
        peer.expect_welcome(id).await;
        peer
    }

    /// A peer with no id yet.
    pub async fn anonymous(&self) -> WsPeer {
        WsPeer::connect(&self.url("")).await
    }
}

pub type Scenario = fn(Net) -> Pin<Box<dyn Future<Output = ()>>>;

macro_rules! table {
    ($($name:ident),* $(,)?) => {
        pub const SCENARIOS: &[(&str, Scenario)] = &[
            $((stringify!($name), |net| Box::pin($name(net)))),*
        ];
    };
}

table![
    welcome_announces_id_peers_and_limits,
    identity_from_first_envelope,
    identity_required_before_any_routing,
    echo_returns_to_sender_only,
    broadcast_reaches_every_other_peer_with_the_senders_text,
    directed_reaches_only_the_recipient,
    directed_to_unknown_or_empty_recipient_is_an_error,
    spoofed_sender_is_refused,
    empty_sender_is_filled_in,
    peers_learn_of_joins_and_leaves,
    second_connection_with_a_live_id_is_refused,
    malformed_frames_get_errors_and_the_connection_survives,
    invalid_ids_are_refused,
    oversized_frame_is_refused_and_the_connection_survives,
    payloads_arrive_exactly,
    messages_from_one_sender_arrive_in_order,
    a_burst_of_a_thousand_reaches_a_reading_peer,
];

async fn welcome_announces_id_peers_and_limits(net: Net) {
    let _a = net.peer("alpha").await;
    let mut b = WsPeer::connect(&net.url("?node_id=beta")).await;
    let welcome = b.expect_welcome("beta").await;
    assert_eq!(welcome["peers"], serde_json::json!(["alpha"]));
    assert_eq!(welcome["peer_count"], 1);
    assert_eq!(welcome["limits"]["max_message_bytes"], 1_048_576);
    assert!(welcome["limits"]["queue_capacity"].as_u64().unwrap() > 0);
}

async fn identity_from_first_envelope(net: Net) {
    let mut a = net.anonymous().await;
    a.send("Ping", "n1", "", r#"{"seq":1}"#).await;
    a.expect_welcome("n1").await;
    let echo = a.recv().await;
    assert_eq!(
        (echo.message_type.as_str(), echo.sender_id.as_str()),
        ("Ping", "n1")
    );
    // The id is now fixed: another one is spoofing.
    a.send("Ping", "n2", "", "1").await;
    a.expect_error("spoofed_sender").await;
}

async fn identity_required_before_any_routing(net: Net) {
    let mut watcher = net.peer("watcher").await;
    let mut a = net.anonymous().await;
    a.send("NodeAnnounce", "", "", "1").await;
    let error = a.expect_error("identity_required").await;
    assert_eq!(error.recipient_id, "");
    assert_eq!(error.payload_json()["message_type"], "NodeAnnounce");
    watcher.expect_silence().await;
    // Still open, and can still name itself.
    a.send("NodeAnnounce", "late", "", "2").await;
    a.expect_welcome("late").await;
}

async fn echo_returns_to_sender_only(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    a.recv().await; // PeerJoined b
    a.send("Ping", "a", "", r#"{"t":1}"#).await;
    let got = a.recv().await;
    assert_eq!(
        (
            got.message_type.as_str(),
            got.sender_id.as_str(),
            got.payload.as_str()
        ),
        ("Ping", "a", r#"{"t":1}"#)
    );
    b.expect_silence().await;
}

async fn broadcast_reaches_every_other_peer_with_the_senders_text(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let mut c = net.peer("c").await;
    // Unusual spacing and key order: a relay that re-encodes would change it.
    let text = r#"{ "payload" : {"n": 1.50, "big": 12345678901234567890123},"message_type":"NodeAnnounce", "sender_id":"a","recipient_id":"" }"#;
    a.send_text(text).await;
    for peer in [&mut b, &mut c] {
        let mut got = peer.recv_text().await;
        while got.contains("\"PeerJoined\"") {
            got = peer.recv_text().await;
        }
        assert_eq!(got, text);
    }
    // a saw b and c join, then nothing: never its own broadcast.
    assert_eq!(a.recv().await.message_type, "PeerJoined");
    assert_eq!(a.recv().await.message_type, "PeerJoined");
    a.expect_silence().await;
}

async fn directed_reaches_only_the_recipient(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let mut c = net.peer("c").await;
    a.send("LedgerSync", "a", "c", r#"{"block":7}"#).await;
    let got = c.recv_skipping_announcements().await;
    assert_eq!(
        (
            got.message_type.as_str(),
            got.sender_id.as_str(),
            got.recipient_id.as_str()
        ),
        ("LedgerSync", "a", "c")
    );
    assert_eq!(got.payload, r#"{"block":7}"#);
    b.recv().await; // PeerJoined c
    b.expect_silence().await;
    a.recv().await;
    a.recv().await; // PeerJoined b, c
    a.expect_silence().await;
}

async fn directed_to_unknown_or_empty_recipient_is_an_error(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    a.send("LedgerSync", "a", "nobody", "1").await;
    let error = a.expect_error("unknown_recipient").await;
    assert_eq!(error.payload_json()["message_type"], "LedgerSync");
    assert_eq!(error.recipient_id, "a");
    a.send("LedgerSync", "a", "", "1").await;
    a.expect_error("missing_recipient").await;
    b.expect_silence().await;
}

async fn spoofed_sender_is_refused(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    a.send("NodeAnnounce", "b", "", "1").await;
    let error = a.expect_error("spoofed_sender").await;
    assert_eq!(error.payload_json()["message_type"], "NodeAnnounce");
    a.send("NodeAnnounce", "relay", "", "1").await;
    a.expect_error("spoofed_sender").await;
    b.expect_silence().await;
}

async fn empty_sender_is_filled_in(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    a.send_text(r#"{"message_type":"NodeAnnounce","payload":[1,2]}"#)
        .await;
    let got = b.recv().await;
    assert_eq!(
        (got.sender_id.as_str(), got.recipient_id.as_str()),
        ("a", "")
    );
    assert_eq!(got.payload, "[1,2]");
    let _ = a.recv().await; // PeerJoined b
}

async fn peers_learn_of_joins_and_leaves(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let joined = a.recv().await;
    assert_eq!(
        (joined.message_type.as_str(), joined.sender_id.as_str()),
        ("PeerJoined", "relay")
    );
    assert_eq!(joined.payload_json()["peer_id"], "b");
    b.ws.close(None).await.unwrap();
    let left = a.recv().await;
    assert_eq!(left.message_type, "PeerLeft");
    assert_eq!(left.payload_json()["peer_id"], "b");
}

async fn second_connection_with_a_live_id_is_refused(net: Net) {
    let mut a = net.peer("a").await;
    let mut imposter = WsPeer::connect(&net.url("?node_id=a")).await;
    imposter.expect_error("peer_id_in_use").await;
    let (code, reason) = imposter.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("peer_id_in_use"), "{reason}");
    // The first connection keeps its id and works.
    a.send("Ping", "a", "", "1").await;
    assert_eq!(a.recv().await.message_type, "Ping");
    // Claiming it through the first envelope is refused too, and that connection stays open.
    let mut second = net.anonymous().await;
    second.send("Ping", "a", "", "1").await;
    second.expect_error("peer_id_in_use").await;
    second.send("Ping", "other", "", "1").await;
    second.expect_welcome("other").await;
}

async fn malformed_frames_get_errors_and_the_connection_survives(net: Net) {
    let mut a = net.peer("a").await;
    let cases: &[(&str, &str)] = &[
        ("this is not json", "invalid_json"),
        (r#"{"message_type":"Ping""#, "invalid_json"),
        ("[1,2,3]", "not_an_object"),
        ("42", "not_an_object"),
        ("{}", "missing_message_type"),
        (
            r#"{"message_type":"","sender_id":"a"}"#,
            "missing_message_type",
        ),
        (r#"{"message_type":5,"sender_id":"a"}"#, "invalid_field"),
        (
            r#"{"message_type":"Ping","sender_id":["a"]}"#,
            "invalid_field",
        ),
        (
            r#"{"message_type":"Ping","recipient_id":7}"#,
            "invalid_field",
        ),
        (
            r#"{"message_type":"Ping","sender_id":"a","colour":"red"}"#,
            "unknown_field",
        ),
    ];
    for (text, code) in cases {
        a.send_text(text).await;
        let error = a.recv().await;
        assert_eq!(error.error_code(), *code, "{text}");
        assert_eq!(error.recipient_id, "a");
        assert!(!error.payload_json()["message"].as_str().unwrap().is_empty());
    }
    a.send_frame(binary(&[1, 2, 3])).await;
    a.expect_error("unsupported_frame").await;
    a.send("Ping", "a", "", "\"still here\"").await;
    assert_eq!(a.recv().await.payload, "\"still here\"");
}

async fn invalid_ids_are_refused(net: Net) {
    for (id, code) in [
        ("bad%20id", "invalid_peer_id"),
        ("relay", "reserved_peer_id"),
    ] {
        let mut peer = WsPeer::connect(&net.url(&format!("?node_id={id}"))).await;
        peer.expect_error(code).await;
        let (close, _) = peer.expect_close().await;
        assert_eq!(close, 1008, "{id}");
    }
    let mut anon = net.anonymous().await;
    let long = "x".repeat(129);
    anon.send("Ping", &long, "", "1").await;
    anon.expect_error("invalid_peer_id").await;
    anon.send("Ping", "relay", "", "1").await;
    anon.expect_error("reserved_peer_id").await;
}

async fn oversized_frame_is_refused_and_the_connection_survives(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let _ = a.recv().await; // PeerJoined b
    let big = format!("\"{}\"", "x".repeat(1_048_576));
    a.send("NodeAnnounce", "a", "", &big).await;
    let error = a.expect_error("message_too_large").await;
    assert!(error.payload_json()["message"]
        .as_str()
        .unwrap()
        .contains("1048576"));
    b.expect_silence().await;
    a.send("Ping", "a", "", "1").await;
    assert_eq!(a.recv().await.message_type, "Ping");
}

/// Payloads that a JSON-tree or float-based relay would damage.
pub const FIDELITY_PAYLOADS: &[&str] = &[
    "42",
    "-7",
    "0",
    "9007199254740993",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1.5",
    "1.0",
    "6.02214076e23",
    "null",
    "true",
    r#""""#,
    r#""ünïcödé ✓ 日本語 🚀""#,
    r#""escapes: \" \\ \/ \b \f \n \r \t \u0000 \ud83d\ude80""#,
    r#"{"nested":{"deeper":[1,[2,[3,[4,{"x":null}]]]]},"empty":{},"list":[]}"#,
    r#"[{"a":1},{"a":1}]"#,
];

async fn payloads_arrive_exactly(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let _ = a.recv().await;
    let deep = format!("{}1{}", "[".repeat(2000), "]".repeat(2000));
    let mut payloads: Vec<&str> = FIDELITY_PAYLOADS.to_vec();
    payloads.push(&deep);
    for payload in payloads {
        let text = envelope("NodeAnnounce", "a", "", payload);
        a.send_text(&text).await;
        assert_eq!(
            b.recv_text().await,
            text,
            "payload {}",
            &payload[..payload.len().min(40)]
        );
    }
    // Absent payload means null.
    a.send_text(r#"{"message_type":"Ping","sender_id":"a"}"#)
        .await;
    let echo = a.recv().await;
    assert_eq!(echo.payload_json(), Value::Null);
}

async fn messages_from_one_sender_arrive_in_order(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    for seq in 0..300 {
        a.send("LedgerSync", "a", "b", &seq.to_string()).await;
    }
    for seq in 0..300 {
        assert_eq!(b.recv().await.payload, seq.to_string());
    }
}

async fn a_burst_of_a_thousand_reaches_a_reading_peer(net: Net) {
    let mut a = net.peer("a").await;
    let mut b = net.peer("b").await;
    let frames: Vec<String> = (0..1000)
        .map(|seq| envelope("NodeAnnounce", "a", "", &seq.to_string()))
        .collect();
    // All sent at once, without waiting for any delivery.
    for frame in &frames {
        futures_util::SinkExt::feed(&mut a.ws, Frame::text(frame.as_str()))
            .await
            .unwrap();
    }
    futures_util::SinkExt::flush(&mut a.ws).await.unwrap();
    for seq in 0..1000 {
        assert_eq!(b.recv().await.payload, seq.to_string());
    }
    let _ = a.recv().await; // PeerJoined b
    a.expect_silence().await;
}
