//! Trust, end to end on a real relay: keys and tokens on both fronts, the identification
//! deadline, per-identity rate limits, and the open-mode warning. Every attack is refused with
//! its documented code, and nothing from a refused connection reaches another peer.

mod common;

use std::process::Command;
use std::time::Duration;

use common::auth::{self as creds, authenticate, derived_id, good_token, key, SECRET};
use common::binary::RunningBinary;
use common::{
    grpc_channel, next_message_id, nothing_else_from, shipped_config, GrpcPeer, Peer, TestRelay,
    WsPeer,
};
use gsio_relay::pb;
use gsio_relay_core::auth::Secret;
use gsio_relay_core::RelayConfig;

/// The shipped config with `toml`'s `[auth]` and `[limits]` (on ephemeral ports), and the test
/// secret in place, as the loader puts it.
fn config_with(toml: &str) -> RelayConfig {
    let over = RelayConfig::from_toml_str(toml, "test.toml").unwrap();
    let mut config = shipped_config();
    config.auth = over.auth;
    config.limits = over.limits;
    config.auth.token_secret = Some(Secret::new(SECRET.as_bytes()).unwrap());
    config
}

/// Nodes by key (`node-1` bound to key 1), browsers by token (`web-`), and open ids (`open-`)
/// for the tests' observers.
fn mixed() -> String {
    format!(
        "[auth]\nmode = \"signed\"\ntoken_secret_env = \"{}\"\n[auth.prefixes]\n\"web-\" = \"token\"\n\"open-\" = \"open\"\n[auth.keys]\nnode-1 = \"{}\"\n",
        creds::SECRET_VAR,
        creds::public_hex(&key(1))
    )
}

#[tokio::test]
async fn signed_nodes_prove_their_keys_on_both_fronts() {
    let relay = TestRelay::start_with(config_with(&mixed())).await;
    let mut observer = relay.ws("open-observer").await;

    // WebSocket, the key's own id: the Challenge comes first, then the Welcome.
    let mut ws = WsPeer::connect(&format!("{}/", relay.ws_url)).await;
    let challenge = ws.recv().await;
    let own = derived_id(&key(2));
    ws.send_text(&authenticate(&key(2), &challenge, &own)).await;
    ws.expect_welcome(&own).await;
    observer.expect_presence(&[&own], &[]).await;

    // gRPC, an id bound to the key by auth.keys, named by x-gsio-node-id.
    let mut grpc = GrpcPeer::connect(&relay.grpc_url, Some("node-1"))
        .await
        .unwrap();
    let challenge = grpc.recv().await;
    let mut answer: serde_json::Value =
        serde_json::from_str(&authenticate(&key(1), &challenge, "node-1")).unwrap();
    grpc.send_pb(pb::Envelope {
        message_type: "Authenticate".into(),
        message_id: next_message_id(),
        sender_id: String::new(),
        recipient_id: String::new(),
        payload_json: answer["payload"].take().to_string(),
    })
    .await;
    grpc.expect_welcome("node-1").await;
    observer.expect_presence(&["node-1"], &[]).await;

    // Proven peers talk like any others, across fronts.
    grpc.send("NodeAnnounce", "node-1", "", "{\"n\":1}").await;
    let got = ws.recv_skipping_announcements().await;
    assert_eq!(
        (got.message_type.as_str(), got.sender_id.as_str()),
        ("NodeAnnounce", "node-1")
    );
}

#[tokio::test]
async fn a_replayed_signature_fails_on_another_connection() {
    let relay = TestRelay::start_with(config_with(&mixed())).await;
    let mut observer = relay.ws("open-observer").await;
    let own = derived_id(&key(3));

    // The signature made for the first connection's challenge...
    let mut first = WsPeer::connect(&format!("{}/", relay.ws_url)).await;
    let signed = authenticate(&key(3), &first.recv().await, &own);
    // ...sent on another connection (as a thief who saw it would).
    let mut thief = WsPeer::connect(&format!("{}/", relay.ws_url)).await;
    let _ = thief.recv().await;
    thief.send_text(&signed).await;
    thief.expect_error("invalid_signature").await;
    let (code, reason) = thief.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("invalid_signature"), "{reason}");

    // The same over gRPC.
    let mut grpc = GrpcPeer::connect(&relay.grpc_url, None).await.unwrap();
    let _ = grpc.recv().await;
    let answer: serde_json::Value = serde_json::from_str(&signed).unwrap();
    grpc.send_pb(pb::Envelope {
        message_type: "Authenticate".into(),
        message_id: next_message_id(),
        sender_id: own.clone(),
        recipient_id: String::new(),
        payload_json: answer["payload"].to_string(),
    })
    .await;
    grpc.expect_error("invalid_signature").await;
    let status = grpc.expect_status().await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("invalid_signature"),
        "{status:?}"
    );

    // The key holder's own connection still takes the id, and the observer heard of nobody
    // before it.
    first.send_text(&signed).await;
    first.expect_welcome(&own).await;
    observer.expect_presence(&[&own], &[]).await;
}

#[tokio::test]
async fn ids_that_need_proof_cannot_be_named_into() {
    let relay = TestRelay::start_with(config_with(&mixed())).await;
    let mut observer = relay.ws("open-observer").await;

    // By URL: challenged, not welcomed; an envelope naming the id is refused.
    let mut ws = WsPeer::connect(&format!("{}/?node_id=node-1", relay.ws_url)).await;
    assert_eq!(ws.recv().await.message_type, "Challenge");
    ws.send("NodeAnnounce", "node-1", "", "1").await;
    ws.expect_error("authentication_required").await;
    // A valid signature by another key for node-1.
    let challenge = {
        let mut c = WsPeer::connect(&format!("{}/", relay.ws_url)).await;
        let got = c.recv().await;
        c.send_text(&authenticate(&key(9), &got, "node-1")).await;
        c.expect_error("key_not_allowed").await;
        assert_eq!(c.expect_close().await.0, 1008);
        got
    };
    drop(challenge);
    // gRPC with a token for a key-only id.
    let status = GrpcPeer::with_metadata(
        grpc_channel(&relay.grpc_url).await,
        &[("authorization", format!("Bearer {}", good_token("node-1")))],
    )
    .await
    .err()
    .expect("refused at once");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().starts_with("authentication_required"),
        "{status:?}"
    );

    // No envelope from any of them reached the observer: the next thing it gets from an open
    // peer is the sentinel.
    let mut open = relay.ws("open-sender").await;
    observer.expect_presence(&["open-sender"], &[]).await;
    nothing_else_from(&mut open, "open-sender", &mut observer, "open-observer").await;
}

#[tokio::test]
async fn tokens_come_by_subprotocol_metadata_or_envelope() {
    let relay = TestRelay::start_with(config_with(&mixed())).await;

    // A browser: new WebSocket(url, ["gsio.v1", "gsio.token." + token]).
    let offer = format!("gsio.v1, gsio.token.{}", good_token("web-1"));
    let (mut browser, chosen) =
        WsPeer::connect_offering(&format!("{}/", relay.ws_url), &offer).await;
    assert_eq!(chosen.as_deref(), Some("gsio.v1"));
    browser.expect_welcome("web-1").await;

    // A service over gRPC: authorization metadata.
    let mut service = GrpcPeer::with_metadata(
        grpc_channel(&relay.grpc_url).await,
        &[("authorization", format!("Bearer {}", good_token("web-2")))],
    )
    .await
    .unwrap();
    service.expect_welcome("web-2").await;

    // In band, answering the challenge.
    let mut late = WsPeer::connect(&format!("{}/", relay.ws_url)).await;
    assert_eq!(late.recv().await.message_type, "Challenge");
    late.send_text(&format!(
        r#"{{"message_type":"Authenticate","payload":{{"token":"{}"}}}}"#,
        good_token("web-3")
    ))
    .await;
    late.expect_welcome("web-3").await;

    service.send("Ping", "web-2", "", "2").await;
    assert_eq!(service.recv_skipping_announcements().await.payload, "2");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_codes_on_both_fronts() {
    let relay = TestRelay::start_with(config_with(&mixed())).await;
    let mut observer = relay.ws("open-observer").await;
    let cases = [
        (
            creds::token(SECRET, "web-1", "gsio-relay", -3600),
            "token_expired",
        ),
        (
            creds::token(
                "another-secret-0123456789abcdef012",
                "web-1",
                "gsio-relay",
                300,
            ),
            "invalid_token",
        ),
        (
            creds::token(SECRET, "web-1", "another-relay", 300),
            "wrong_audience",
        ),
        ("not.a-token".to_owned(), "invalid_token"),
    ];
    for (token, code) in &cases {
        let offer = format!("gsio.v1, gsio.token.{token}");
        let (mut ws, _) = WsPeer::connect_offering(&format!("{}/", relay.ws_url), &offer).await;
        ws.expect_error(code).await;
        let (close, reason) = ws.expect_close().await;
        assert_eq!(close, 1008, "{code}");
        assert!(reason.starts_with(code), "{reason}");

        let status = GrpcPeer::with_metadata(
            grpc_channel(&relay.grpc_url).await,
            &[("authorization", format!("Bearer {token}"))],
        )
        .await
        .err()
        .expect("refused at once");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{code}");
        assert!(status.message().starts_with(code), "{status:?}");
        // The refusal never shows the secret.
        assert!(!status.message().contains(SECRET), "{status:?}");
    }
    let mut open = relay.ws("open-sender").await;
    observer.expect_presence(&["open-sender"], &[]).await;
    nothing_else_from(&mut open, "open-sender", &mut observer, "open-observer").await;
}

#[tokio::test]
async fn silent_anonymous_connections_are_closed_at_the_deadline() {
    let relay = TestRelay::start_with(config_with("[limits]\nidentify_timeout_ms = 300\n")).await;
    // Open mode: no challenge, but no id within 300 ms either.
    let mut ws = WsPeer::connect(&format!("{}/", relay.ws_url)).await;
    ws.expect_error("identification_timeout").await;
    let (code, reason) = ws.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("identification_timeout"), "{reason}");

    let mut grpc = GrpcPeer::connect(&relay.grpc_url, None).await.unwrap();
    grpc.expect_error("identification_timeout").await;
    let status = grpc.expect_status().await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // One that identifies in time stays past the deadline.
    let mut named = WsPeer::connect(&format!("{}/", relay.ws_url)).await;
    named.send("Ping", "in-time", "", "1").await;
    named.expect_welcome("in-time").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    named.send("Ping", "in-time", "", "2").await;
    assert_eq!(named.recv().await.payload, "1");
    assert_eq!(named.recv().await.payload, "2");
}

/// A flood over the rate: every envelope is either delivered or answered `rate_limited` by
/// name (nothing vanishes), and a sender that keeps going is disconnected with that code.
#[tokio::test]
async fn a_flood_over_the_rate_is_refused_then_cut_off_on_both_fronts() {
    let relay = TestRelay::start_with(config_with(
        "[limits]\nmessages_per_second = 1\nmessage_burst = 5\nrate_limited_max = 20\n",
    ))
    .await;
    for grpc_sender in [false, true] {
        let observer_id = format!("observer-{grpc_sender}");
        let sender_id = format!("flooder-{grpc_sender}");
        let mut observer = relay.ws(&observer_id).await;
        let (ids, errors, delivered, close) = if grpc_sender {
            let mut flooder = relay.grpc(&sender_id).await;
            observer.expect_presence(&[&sender_id], &[]).await;
            flood(&mut flooder, &sender_id, &observer_id, &mut observer).await
        } else {
            let mut flooder = relay.ws(&sender_id).await;
            observer.expect_presence(&[&sender_id], &[]).await;
            flood(&mut flooder, &sender_id, &observer_id, &mut observer).await
        };
        // Nothing lost silently: each id the relay read was delivered or refused by name, never
        // both; those it did not read (sent after it cut the sender off) are a tail.
        let read = ids
            .iter()
            .rposition(|id| delivered.contains(id) || errors.contains(id))
            .map_or(0, |last| last + 1);
        for id in &ids[..read] {
            assert!(
                delivered.contains(id) ^ errors.contains(id),
                "{id}: delivered {} refused {}",
                delivered.contains(id),
                errors.contains(id)
            );
        }
        assert_eq!(read, delivered.len() + errors.len());
        assert!(
            delivered.len() >= 5,
            "the burst passes: {}",
            delivered.len()
        );
        assert!(errors.len() >= 20, "refusals: {}", errors.len());
        assert!(close.starts_with("rate_limited"), "{close}");
    }
}

/// Sends 40 directed envelopes as fast as it can; returns their ids, those refused with
/// `rate_limited`, those the observer received, and how the sender's connection ended.
async fn flood<P: Peer + Closable>(
    flooder: &mut P,
    sender_id: &str,
    observer_id: &str,
    observer: &mut WsPeer,
) -> (Vec<String>, Vec<String>, Vec<String>, String) {
    let mut ids = Vec::new();
    for n in 0..40 {
        let id = next_message_id();
        flooder
            .send_with_id(
                "LedgerSyncResponse",
                sender_id,
                observer_id,
                &n.to_string(),
                &id,
            )
            .await;
        ids.push(id);
    }
    let mut errors = Vec::new();
    let close = loop {
        match flooder.next_or_end().await {
            Ok(got) => {
                assert_eq!(got.error_code(), "rate_limited", "{got:?}");
                let id = got.payload_json()["message_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                errors.push(id);
            }
            Err(end) => break end,
        }
    };
    let mut delivered = Vec::new();
    while let Some(got) = observer.try_recv(Duration::from_millis(500)).await {
        if got.message_type == "LedgerSyncResponse" {
            delivered.push(got.message_id);
        }
    }
    (ids, errors, delivered, close)
}

/// A test peer whose connection's end can be read as text: the close reason or the status.
trait Closable {
    async fn send_with_id(&mut self, ty: &str, from: &str, to: &str, payload: &str, id: &str);
    /// The next envelope, or how the connection ended.
    async fn next_or_end(&mut self) -> Result<common::Got, String>;
}

impl Closable for WsPeer {
    async fn send_with_id(&mut self, ty: &str, from: &str, to: &str, payload: &str, id: &str) {
        let text = serde_json::json!({"message_type": ty, "message_id": id, "sender_id": from,
            "recipient_id": to, "payload": serde_json::from_str::<serde_json::Value>(payload).unwrap()});
        // The relay may already have closed the socket: a failed send is not the test's concern.
        let _ = futures_util::SinkExt::send(&mut self.ws, text.to_string().into()).await;
    }

    async fn next_or_end(&mut self) -> Result<common::Got, String> {
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(common::ARRIVES, futures_util::StreamExt::next(&mut self.ws))
                .await
            {
                Err(_) => panic!("neither an envelope nor the end"),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Ok(serde_json::from_str(&text).unwrap())
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(frame.map(|f| f.reason.to_string()).unwrap_or_default())
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(format!("read failed: {e}")),
                Ok(None) => return Err("ended without a close frame".into()),
            }
        }
    }
}

impl Closable for GrpcPeer {
    async fn send_with_id(&mut self, ty: &str, from: &str, to: &str, payload: &str, id: &str) {
        let _ = self
            .tx
            .send(pb::Envelope {
                message_type: ty.into(),
                message_id: id.into(),
                sender_id: from.into(),
                recipient_id: to.into(),
                payload_json: payload.into(),
            })
            .await;
    }

    async fn next_or_end(&mut self) -> Result<common::Got, String> {
        match tokio::time::timeout(common::ARRIVES, self.inbound.message()).await {
            Err(_) => panic!("neither an envelope nor the end"),
            Ok(Ok(Some(e))) => Ok(common::Got {
                message_type: e.message_type,
                message_id: e.message_id,
                sender_id: e.sender_id,
                recipient_id: e.recipient_id,
                payload: e.payload_json,
            }),
            Ok(Ok(None)) => Err("OK".into()),
            Ok(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                Err(status.message().to_owned())
            }
        }
    }
}

/// In `open` mode on a non-loopback address the relay warns at start; on loopback it does not.
#[tokio::test]
async fn open_mode_beyond_loopback_is_warned_about_at_start() {
    for (host, warned) in [("0.0.0.0", true), ("127.0.0.1", false)] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gsio-relay"));
        command
            .arg("--config")
            .arg(common::repo_path("relay.toml"))
            .env("GSIO_RELAY_SERVER__WS_LISTEN", format!("{host}:0"))
            .env("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:0")
            .env("GSIO_RELAY_SERVER__ADMIN_LISTEN", "127.0.0.1:0");
        let relay = RunningBinary::start(&mut command);
        let (_, lines) = relay.terminate();
        let warning = lines
            .iter()
            .any(|line| line.contains("WARN") && line.contains("auth mode is \"open\""));
        assert_eq!(warning, warned, "{host}: {lines:#?}");
    }
}

/// The token secret comes from the variable or file relay.toml names, never from relay.toml,
/// and never shows in errors.
#[tokio::test]
async fn the_binary_reads_the_token_secret_from_the_environment() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("auth-{}", next_message_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n",
            common::shipped_relay_toml_on_ephemeral_ports().replace(
                "mode = \"open\"",
                &format!(
                    "mode = \"token\"\ntoken_secret_env = \"{}\"",
                    creds::SECRET_VAR
                )
            )
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gsio-relay"));
    command
        .arg("--config")
        .arg(&path)
        .env(creds::SECRET_VAR, SECRET);
    let relay = RunningBinary::start(&mut command);
    let offer = format!("gsio.v1, gsio.token.{}", good_token("web-9"));
    let (mut ws, _) = WsPeer::connect_offering(&format!("{}/", relay.url), &offer).await;
    ws.expect_welcome("web-9").await;
    let (_, lines) = relay.terminate();
    assert!(!lines.iter().any(|l| l.contains(SECRET)), "{lines:#?}");

    // Without the variable the relay does not start, and says which key and variable.
    let output = Command::new(env!("CARGO_BIN_EXE_gsio-relay"))
        .arg("--config")
        .arg(&path)
        .env_remove(creds::SECRET_VAR)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("auth.token_secret_env") && stderr.contains(creds::SECRET_VAR),
        "{stderr}"
    );
}
