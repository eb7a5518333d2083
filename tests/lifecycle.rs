//! Slow consumers and graceful shutdown.

mod common;

use std::time::Duration;

use common::{
    grpc_channel, shipped_config, Frame, GrpcPeer, Peer, TestRelay, WsPeer, ARRIVES, QUIET,
};
use gsio_relay::state::Stats;
use tonic::transport::Channel;

/// A payload large enough that the kernel's socket buffers fill after a few dozen messages.
fn chunk() -> String {
    format!("\"{}\"", "z".repeat(64 * 1024))
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_disconnected_and_senders_are_told() {
    let mut config = shipped_config();
    config.limits.queue_capacity = 8;
    let relay = TestRelay::start_with(config).await;
    let mut sender = relay.ws("sender").await;
    let mut fast = relay.ws("fast").await;
    let mut stalled = relay.ws("stalled").await; // never reads until the end
    for _ in 0..2 {
        assert_eq!(sender.recv().await.message_type, "PeerJoined");
    }
    assert_eq!(fast.recv().await.message_type, "PeerJoined");

    // A reader task keeps up with "fast" while the sender floods.
    let fast_reader = tokio::spawn(async move {
        let mut count = 0usize;
        loop {
            let got = fast.recv().await;
            if got.message_type == "PeerLeft" {
                assert_eq!(got.payload_json()["peer_id"], "stalled");
                return (count, fast); // still connected
            }
            assert_eq!(got.message_type, "NodeAnnounce");
            count += 1;
        }
    });

    let payload = chunk();
    let mut sent = 0usize;
    let mut told = None;
    for _ in 0..5000 {
        sender.send("NodeAnnounce", "sender", "", &payload).await;
        sent += 1;
        if let Some(got) = sender.try_recv(Duration::from_millis(1)).await {
            told = Some(got);
            break;
        }
    }
    let told = told.expect("the sender was never told about the stalled peer");
    assert_eq!(told.error_code(), "recipient_queue_full");
    assert!(told.payload_json()["message"]
        .as_str()
        .unwrap()
        .contains("stalled"));

    // It is out of the relay even though it never reads again (its writer was blocked on a
    // full socket when the queue overflowed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.relay.peer_ids().contains(&"stalled".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled peer was never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // When it finally reads, it finds what was queued and then the reason.
    let (code, reason) = stalled.expect_close().await;
    assert_eq!(code, 1008);
    assert!(reason.starts_with("slow_consumer"), "{reason}");

    // The reading peer got every message: one stalled peer did not stall the relay.
    let (delivered, _fast) = tokio::time::timeout(Duration::from_secs(30), fast_reader)
        .await
        .expect("fast reader stalled")
        .unwrap();
    assert_eq!(delivered, sent);
    assert_eq!(Stats::get(&relay.relay.stats.slow_consumer_disconnects), 1);
    assert_eq!(relay.relay.peer_ids(), ["fast", "sender"]);
}

#[tokio::test]
async fn a_stalled_grpc_peer_ends_with_resource_exhausted() {
    let mut config = shipped_config();
    config.limits.queue_capacity = 8;
    let relay = TestRelay::start_with(config).await;
    let mut sender = relay.ws("sender").await;
    let mut stalled = relay.grpc("g-stalled").await;
    assert_eq!(sender.recv().await.message_type, "PeerJoined");
    let payload = chunk();
    let mut told = false;
    for _ in 0..5000 {
        sender.send("NodeAnnounce", "sender", "", &payload).await;
        if let Some(got) = sender.try_recv(Duration::from_millis(1)).await {
            assert_eq!(got.error_code(), "recipient_queue_full");
            told = true;
            break;
        }
    }
    assert!(told, "the sender was never told");
    // Out of the relay at once, though it has not read (so has not seen the status) yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.relay.peer_ids().contains(&"g-stalled".to_owned()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled peer was never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = stalled.expect_status().await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("slow_consumer"), "{status:?}");
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued_and_tells_every_peer() {
    let mut relay_config = shipped_config();
    // Far longer than the test waits: finishing only because the grace period ran out (a
    // connection that never let go) fails the test.
    relay_config.server.shutdown_grace_ms = 120_000;
    let mut relay = TestRelay::start_with(relay_config).await;
    let mut ws_sender = relay.ws("ws-sender").await;
    let mut grpc_receiver = relay.grpc("grpc-receiver").await;
    let mut ws_receiver = relay.ws("ws-receiver").await;
    for _ in 0..2 {
        assert_eq!(ws_sender.recv().await.message_type, "PeerJoined");
    }
    assert_eq!(grpc_receiver.recv().await.message_type, "PeerJoined");

    const BURST: usize = 500;
    for seq in 0..BURST {
        futures_util::SinkExt::feed(
            &mut ws_sender.ws,
            Frame::text(common::envelope(
                "NodeAnnounce",
                "ws-sender",
                "",
                &seq.to_string(),
            )),
        )
        .await
        .unwrap();
    }
    futures_util::SinkExt::flush(&mut ws_sender.ws)
        .await
        .unwrap();
    // Let the relay read the burst (it is routed on arrival), then stop it.
    let first = ws_receiver.recv().await;
    assert_eq!(first.payload, "0");
    let server = relay.shut_down();

    for seq in 1..BURST {
        assert_eq!(ws_receiver.recv().await.payload, seq.to_string());
    }
    let (code, reason) = ws_receiver.expect_close().await;
    assert_eq!(code, 1001);
    assert!(reason.starts_with("shutting_down"), "{reason}");

    for seq in 0..BURST {
        assert_eq!(grpc_receiver.recv().await.payload, seq.to_string());
    }
    let status = grpc_receiver.expect_status().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    assert_eq!(ws_sender.expect_close().await.0, 1001);
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("server did not finish shutting down")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    let url = relay.ws_url.clone();
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_a_slot_frees() {
    let mut config = shipped_config();
    config.server.max_connections = 1;
    let relay = TestRelay::start_with(config).await;
    let first = relay.ws("one").await;
    let url = format!("{}/?node_id=two", relay.ws_url);
    let waiting = tokio::spawn(async move { WsPeer::connect(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "second connection was served past the limit"
    );
    assert_eq!(relay.relay.peer_ids(), ["one"]);
    drop(first);
    let mut second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("second connection never served")
        .unwrap();
    second.expect_welcome("two").await;
    // gRPC streams are refused instead of waiting: see
    // `websocket_peers_and_grpc_streams_share_the_limit`.
}

/// The answer to a stream opened past `server.max_connections`: refused at once with
/// `RESOURCE_EXHAUSTED`, naming the setting.
fn assert_refused_for_the_limit(opened: Result<GrpcPeer, tonic::Status>) {
    let Err(status) = opened else {
        panic!("a stream was admitted past server.max_connections");
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("server.max_connections"),
        "{status:?}"
    );
}

/// A stream on `channel` as `id`, once a slot is free. A slot comes back when the relay is done
/// with the stream that held it, which can be a moment after that stream's client saw it end.
async fn admitted_once_a_slot_frees(channel: &Channel, id: &str) -> GrpcPeer {
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        match GrpcPeer::over(channel.clone(), Some(id)).await {
            Ok(mut peer) => {
                peer.expect_welcome(id).await;
                return peer;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no slot freed within {ARRIVES:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn grpc_streams_on_one_connection_past_the_limit_are_refused() {
    const LIMIT: usize = 4;
    let mut config = shipped_config();
    config.server.max_connections = LIMIT;
    let relay = TestRelay::start_with(config).await;
    // One HTTP/2 connection for every stream.
    let channel = grpc_channel(&relay.grpc_url).await;
    let mut peers = Vec::new();
    for n in 0..LIMIT {
        let id = format!("g{n}");
        let mut peer = GrpcPeer::over(channel.clone(), Some(&id)).await.unwrap();
        peer.expect_welcome(&id).await;
        peers.push(peer);
    }
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("extra")).await);
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), None).await);
    assert_eq!(relay.relay.peer_ids().len(), LIMIT);

    peers.pop().unwrap().leave().await;
    let _again = admitted_once_a_slot_frees(&channel, "again").await;
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("extra")).await);
    // The channel itself is fine: calls other than Exchange take no slot.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        serving.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn websocket_peers_and_grpc_streams_share_the_limit() {
    let mut config = shipped_config();
    config.server.max_connections = 2;
    let relay = TestRelay::start_with(config).await;
    let first_ws = relay.ws("w1").await;
    // The gRPC connection is no peer: it takes none of the two slots.
    let channel = grpc_channel(&relay.grpc_url).await;
    let mut first_grpc = GrpcPeer::over(channel.clone(), Some("g1")).await.unwrap();
    first_grpc.expect_welcome("g1").await;
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("g2")).await);

    // A WebSocket client past the limit still waits, in the kernel's backlog...
    let url = format!("{}/?node_id=w2", relay.ws_url);
    let waiting = tokio::spawn(async move { WsPeer::connect(&url).await });
    tokio::time::sleep(QUIET).await;
    assert!(
        !waiting.is_finished(),
        "WebSocket connection served past the limit"
    );
    // ...until a gRPC stream gives its slot back.
    first_grpc.leave().await;
    let mut second_ws = tokio::time::timeout(ARRIVES, waiting)
        .await
        .expect("WebSocket connection never served")
        .unwrap();
    second_ws.expect_welcome("w2").await;

    // Two WebSocket peers fill the limit for gRPC too, until one leaves.
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("g3")).await);
    drop(first_ws);
    let _third_grpc = admitted_once_a_slot_frees(&channel, "g3").await;
    let mut peers = relay.relay.peer_ids();
    peers.sort();
    assert_eq!(peers, ["g3", "w2"]);
}

#[tokio::test]
async fn grpc_streams_refused_at_connect_give_their_slot_back() {
    let mut config = shipped_config();
    config.server.max_connections = 2;
    let relay = TestRelay::start_with(config).await;
    let channel = grpc_channel(&relay.grpc_url).await;
    let mut holder = GrpcPeer::over(channel.clone(), Some("a")).await.unwrap();
    holder.expect_welcome("a").await;
    // More refusals than there are slots: each gives its slot back as it is refused.
    for _ in 0..4 {
        let Err(status) = GrpcPeer::over(channel.clone(), Some("a")).await else {
            panic!("a second \"a\" was admitted");
        };
        assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
        let Err(status) = GrpcPeer::over(channel.clone(), Some("not valid")).await else {
            panic!("an invalid id was admitted");
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let mut second = GrpcPeer::over(channel.clone(), Some("b")).await.unwrap();
    second.expect_welcome("b").await;
    assert_refused_for_the_limit(GrpcPeer::over(channel.clone(), Some("c")).await);
}

/// The `host:port` of a `ws://` URL.
fn ws_addr(relay: &TestRelay) -> String {
    relay.ws_url.trim_start_matches("ws://").to_owned()
}

#[tokio::test]
async fn a_client_that_never_sends_its_handshake_does_not_delay_shutdown() {
    let mut config = shipped_config();
    // Far beyond the bound below: waiting out the grace period (or the 10 s handshake limit)
    // fails the test.
    config.server.shutdown_grace_ms = 30_000;
    let mut relay = TestRelay::start_with(config).await;
    // Connects and never sends the HTTP upgrade.
    let _half_open = tokio::net::TcpStream::connect(ws_addr(&relay))
        .await
        .unwrap();
    // Accepted after it (one accept loop, in order): so the half-open one is being served.
    let mut witness = relay.ws("witness").await;
    let witness = tokio::spawn(async move { witness.expect_close().await });

    let took = relay.shut_down_timed().await;
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}: it waited for a handshake that never came"
    );
    assert_eq!(witness.await.unwrap().0, 1001);
}

#[tokio::test]
async fn shutdown_waits_one_grace_period_in_all() {
    let mut config = shipped_config();
    config.server.shutdown_grace_ms = 3_000;
    let mut relay = TestRelay::start_with(config).await;
    let mut sender = relay.ws("sender").await;
    // Never reads: what is queued for it cannot be delivered, so only the grace period ends it.
    let _stalled = relay.grpc("g-stalled").await;
    assert_eq!(sender.recv().await.message_type, "PeerJoined");
    // Far more than the HTTP/2 windows and socket buffers hold, well under the queue capacity.
    let payload = chunk();
    for _ in 0..400 {
        sender.send("NodeAnnounce", "sender", "", &payload).await;
    }
    // Ping is echo: once it is back, every broadcast before it was routed.
    sender.send("Ping", "sender", "", "1").await;
    assert_eq!(sender.recv().await.message_type, "Ping");
    let sender = tokio::spawn(async move { sender.expect_close().await });

    let took = relay.shut_down_timed().await;
    // One grace period (3 s) plus slack; applying it twice takes at least 6 s.
    assert!(
        took < Duration::from_millis(5_500),
        "shutdown took {took:?}"
    );
    // And the stalled peer did hold the shutdown (the test is about the grace period).
    assert!(
        took >= Duration::from_millis(2_500),
        "shutdown took {took:?}"
    );
    assert_eq!(sender.await.unwrap().0, 1001);
}
