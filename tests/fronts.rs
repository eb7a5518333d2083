//! Both fronts together: every routing mode across WebSocket and gRPC in all four directions,
//! gRPC identity, errors and payload fidelity.

mod common;

use common::conformance::FIDELITY_PAYLOADS;
use common::{nothing_else_back, nothing_else_from, Front, GrpcPeer, Peer, TestRelay, WsPeer};
use gsio_relay::pb;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

const FRONT_PAIRS: [(Front, Front); 4] = [
    (Front::Ws, Front::Ws),
    (Front::Grpc, Front::Grpc),
    (Front::Ws, Front::Grpc),
    (Front::Grpc, Front::Ws),
];

#[tokio::test]
async fn every_mode_works_in_all_four_directions() {
    for (from, to) in FRONT_PAIRS {
        let relay = TestRelay::start().await;
        let mut s = relay.join(from, "sender").await;
        let mut r = relay.join(to, "receiver").await;
        let mut o = relay.join(to, "other").await;
        // Sender saw both joins, receiver saw "other" join.
        s.expect_presence(&["receiver", "other"], &[]).await;
        r.expect_presence(&["other"], &[]).await;
        let case = format!("{from:?} -> {to:?}");

        // broadcast: both others, never the sender.
        s.send("NodeAnnounce", "sender", "", r#"{"n":1}"#).await;
        for peer in [&mut r, &mut o] {
            let got = peer.recv().await;
            assert_eq!(
                (
                    got.message_type.as_str(),
                    got.sender_id.as_str(),
                    got.payload.as_str()
                ),
                ("NodeAnnounce", "sender", r#"{"n":1}"#),
                "{case}"
            );
        }
        // directed: only the recipient.
        s.send("LedgerSyncResponse", "sender", "receiver", "[7]")
            .await;
        let got = r.recv().await;
        assert_eq!(
            (got.recipient_id.as_str(), got.payload.as_str()),
            ("receiver", "[7]"),
            "{case}"
        );
        // echo: only the sender.
        s.send("Ping", "", "", "true").await;
        let got = s.recv().await;
        assert_eq!(
            (got.message_type.as_str(), got.sender_id.as_str()),
            ("Ping", "sender"),
            "{case}"
        );
        // Nothing else arrived anywhere.
        nothing_else_back(&mut s, "sender").await;
        nothing_else_from(&mut s, "sender", &mut r, "receiver").await;
        nothing_else_from(&mut s, "sender", &mut o, "other").await;
    }
}

#[tokio::test]
async fn payloads_cross_fronts_exactly() {
    for (from, to) in FRONT_PAIRS {
        let relay = TestRelay::start().await;
        let mut s = relay.join(from, "s").await;
        let mut r = relay.join(to, "r").await;
        let deep = format!("{}0{}", "[".repeat(5000), "]".repeat(5000));
        let mut payloads = FIDELITY_PAYLOADS.to_vec();
        payloads.push(&deep);
        for payload in payloads {
            s.send("LedgerSyncResponse", "s", "r", payload).await;
            let got = r.recv().await;
            assert_eq!(got.payload, payload, "{from:?} -> {to:?}");
        }
        let _ = s.recv().await; // PeerJoined r
        nothing_else_back(&mut s, "s").await;
        nothing_else_from(&mut s, "s", &mut r, "r").await;
    }
}

#[tokio::test]
async fn grpc_identity_from_metadata_or_first_envelope() {
    let relay = TestRelay::start().await;
    let mut ws = relay.ws("watcher").await;

    let mut named = relay.grpc("node-1").await;
    assert_eq!(ws.recv().await.payload_json()["peer_id"], "node-1");
    named.send("NodeAnnounce", "", "", "1").await; // empty sender is filled in
    assert_eq!(ws.recv().await.sender_id, "node-1");
    named.send("NodeAnnounce", "watcher", "", "1").await;
    named.expect_error("spoofed_sender").await;

    let mut anonymous = GrpcPeer::connect(&relay.grpc_url, None).await.unwrap();
    anonymous.send("NodeAnnounce", "", "", "1").await;
    anonymous.expect_error("identity_required").await;
    anonymous.send("NodeAnnounce", "node-2", "", "2").await;
    let welcome = anonymous.expect_welcome("node-2").await;
    // Sorted by the relay (watcher joined first).
    assert_eq!(welcome["peers"], serde_json::json!(["node-1", "watcher"]));
    assert_eq!(ws.recv().await.message_type, "PeerJoined");
    assert_eq!(ws.recv().await.payload, "2");
}

/// "Closing the sending side leaves the relay: what is already queued for the peer is
/// delivered, then the stream ends with `OK`." A gRPC peer with a backlog larger than HTTP/2's
/// flow-control windows (so most of it is still queued in the relay, not in flight) closes its
/// sending side without having read anything: it leaves at once (the others are told, the
/// relay no longer lists it), and still receives every envelope queued for it, in order, and
/// then the stream's `OK`.
#[tokio::test]
async fn grpc_half_close_delivers_what_is_queued_then_ends_ok() {
    const BACKLOG: usize = 200;
    let relay = TestRelay::start().await;
    let mut g = relay.grpc("g").await;
    let mut w = relay.ws("w").await;
    let filler = "q".repeat(32 * 1024);
    for seq in 0..BACKLOG {
        let payload = format!("\"{seq} {filler}\"");
        w.send("LedgerSyncResponse", "w", "g", &payload).await;
    }
    // w's echo is routed after w's envelopes: once it is back, all of them are queued for g.
    nothing_else_back(&mut w, "w").await;

    // Dropping the only sender ends the request stream: the client half-closes.
    drop(std::mem::replace(
        &mut g.tx,
        tokio::sync::mpsc::channel(1).0,
    ));
    let left = w.recv().await;
    assert_eq!(
        (
            left.message_type.as_str(),
            left.payload_json()["peer_id"].as_str()
        ),
        ("PeerLeft", Some("g"))
    );
    assert_eq!(relay.relay.peer_ids(), ["w"]);

    assert_eq!(g.recv().await.message_type, "PeerJoined"); // w
    for seq in 0..BACKLOG {
        let got = g.recv().await;
        let prefix = format!("\"{seq} ");
        assert!(
            got.payload.starts_with(&prefix),
            "envelope {seq} of {BACKLOG}: {}",
            &got.payload[..got.payload.len().min(20)]
        );
    }
    match tokio::time::timeout(common::ARRIVES, g.inbound.message()).await {
        Ok(Ok(None)) => {} // the end of the stream, with status OK
        Ok(Ok(Some(extra))) => panic!("more than was sent: {}", extra.message_type),
        Ok(Err(status)) => panic!("the stream ended with {status:?}, not OK"),
        Err(_) => panic!("the stream did not end"),
    }
}

#[tokio::test]
async fn grpc_stream_ending_errors_are_statuses() {
    let relay = TestRelay::start().await;
    let _first = relay.grpc("taken").await;
    let cases = [
        ("taken", tonic::Code::AlreadyExists, "peer_id_in_use"),
        ("bad id", tonic::Code::InvalidArgument, "invalid_peer_id"),
        ("relay", tonic::Code::InvalidArgument, "reserved_peer_id"),
    ];
    for (id, code, text) in cases {
        let status = match GrpcPeer::connect(&relay.grpc_url, Some(id)).await {
            Err(status) => status,
            Ok(mut peer) => peer.expect_status().await,
        };
        assert_eq!(status.code(), code, "{id}: {status:?}");
        assert!(status.message().contains(text), "{id}: {status:?}");
    }
    // The holder of "taken" was not disturbed.
    assert_eq!(relay.relay.peer_ids(), ["taken"]);
}

#[tokio::test]
async fn grpc_bad_envelopes_get_error_envelopes_and_the_stream_survives() {
    let relay = TestRelay::start().await;
    let mut g = relay.grpc("g").await;
    let bad = |message_type: &str, recipient: &str, payload: &str| pb::Envelope {
        message_type: message_type.into(),
        sender_id: "g".into(),
        recipient_id: recipient.into(),
        payload_json: payload.into(),
        message_id: String::new(),
    };
    let cases = [
        (bad("", "", "1"), "missing_message_type"),
        (bad("NodeAnnounce", "", "{not json"), "invalid_field"),
        (bad("NodeAnnounce", "", "1 2"), "invalid_field"),
        (bad("LedgerSyncResponse", "ghost", "1"), "unknown_recipient"),
        (bad("LedgerSyncResponse", "", "1"), "missing_recipient"),
        (
            bad("NodeAnnounce", "", &format!("\"{}\"", "y".repeat(1 << 20))),
            "message_too_large",
        ),
    ];
    for (envelope, code) in cases {
        g.send_pb(envelope).await;
        let error = g.recv().await;
        assert_eq!(error.error_code(), code);
        assert_eq!(
            (error.sender_id.as_str(), error.recipient_id.as_str()),
            ("relay", "g")
        );
    }
    g.send("Ping", "g", "", "\"alive\"").await;
    assert_eq!(g.recv().await.payload, "\"alive\"");
}

#[tokio::test]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let relay = TestRelay::start().await;
    let channel = tonic::transport::Endpoint::from_shared(relay.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "gsio.relay.v1.RelayService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["gsio.relay.v1.RelayService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == wanted), "{names:?}");
    }

    // v1alpha too (older grpcurl releases ask it).
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaReflectionRequest;
    let request = AlphaReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::FileContainingSymbol(
            "gsio.relay.v1.RelayService".into(),
        )),
    };
    let mut responses = AlphaClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(
        format!("{response:?}").contains("FileDescriptorResponse"),
        "{response:?}"
    );
}

/// A client refused at connect (`?node_id=` taken or invalid) that keeps sending, as a browser
/// that sends on `open` does: it reads the Error, then the close frame 1008 with the reason, and
/// then the connection ends in order. A relay that drops the socket right after its close frame
/// has the client's frames arrive at a closed socket, and the kernel answers with a reset: on a
/// real network that reset can discard the Error and the close frame on their way; on loopback
/// they are already delivered, so the test sees the reset itself (the client's close reply
/// fails). Repeated, alternating both refusals.
#[tokio::test]
async fn a_refused_node_id_gets_its_error_and_an_orderly_close() {
    use futures_util::{SinkExt, StreamExt};
    let relay = TestRelay::start().await;
    let _holder = relay.ws("taken").await;
    for round in 0..50 {
        let (id, code) = if round % 2 == 0 {
            ("taken", "peer_id_in_use")
        } else {
            ("bad%20id", "invalid_peer_id")
        };
        let peer = WsPeer::connect(&format!("{}/?node_id={id}", relay.ws_url)).await;
        let (mut sink, mut stream) = peer.ws.split();
        let sender = tokio::spawn(async move {
            let frame = tungstenite::Message::text(common::envelope("Ping", "", "", "1"));
            for _ in 0..10_000 {
                // Fails once the close handshake has started (or the connection is gone).
                if sink.send(frame.clone()).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        let got = match tokio::time::timeout(common::ARRIVES, stream.next()).await {
            Ok(Some(Ok(tungstenite::Message::Text(text)))) => text,
            other => panic!("round {round}: expected the Error, got {other:?}"),
        };
        let got: common::Got = serde_json::from_str(&got).unwrap();
        assert_eq!(got.error_code(), code, "round {round}: {got:?}");
        let frame = match tokio::time::timeout(common::ARRIVES, stream.next()).await {
            Ok(Some(Ok(tungstenite::Message::Close(Some(frame))))) => frame,
            other => panic!("round {round}: expected a close frame, got {other:?}"),
        };
        assert_eq!(u16::from(frame.code), 1008, "round {round}");
        assert!(frame.reason.starts_with(code), "round {round}: {frame:?}");
        // tungstenite sends the close reply; the relay then ends the TCP connection.
        match tokio::time::timeout(common::ARRIVES, stream.next()).await {
            Ok(None) => {}
            Ok(Some(Err(error))) => panic!("round {round}: no orderly close: {error}"),
            Ok(Some(Ok(frame))) => panic!("round {round}: unexpected {frame:?}"),
            Err(_) => panic!("round {round}: the connection never ended"),
        }
        sender.await.unwrap();
    }
}

/// A peer receiving a steady stream it cannot keep up with still has its own frames read: the
/// relay's connection loop must not serve the outbound queue first whenever it is non-empty.
#[tokio::test]
async fn a_flooded_peer_still_gets_its_frames_read() {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut config = common::shipped_config();
    config.limits.queue_capacity = 1_000_000; // the flood must not make "a" a slow consumer
    let relay = TestRelay::start_with(config).await;
    let mut c = relay.ws("c").await;
    // "a" with a small receive buffer, so that the relay's writes to it block soon.
    let addr = relay.ws_url.trim_start_matches("ws://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("{}/?node_id=a", relay.ws_url), stream)
        .await
        .unwrap();
    let (mut a_sink, mut a_stream) = ws.split();
    let mut b = relay.ws("b").await;
    c.expect_presence(&["a", "b"], &[]).await;

    let stop = Arc::new(AtomicBool::new(false));
    // "b" sends to "a" steadily (about 2,000 envelopes of 4 KiB a second, at most 20 s).
    let flood = {
        let stop = stop.clone();
        let payload = format!("\"{}\"", "f".repeat(4096));
        tokio::spawn(async move {
            for _ in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for _ in 0..20 {
                    let text = common::envelope("LedgerSyncResponse", "b", "a", &payload);
                    b.ws.feed(tungstenite::Message::text(text)).await.unwrap();
                }
                b.ws.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            b
        })
    };
    // "a" reads, slower than "b" sends (at most 500 envelopes a second, at most 30 s).
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            for _ in 0..3_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for _ in 0..5 {
                    match a_stream.next().await {
                        Some(Ok(_)) => {}
                        other => panic!("a's connection failed: {other:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Wait until envelopes wait in "a"'s queue (its socket is full): from then on the queue is
    // never empty while the flood lasts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while relay.relay.queued("a").unwrap_or(0) < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's queue never filled: {:?}",
            relay.relay.queued("a")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a_sink
        .send(tungstenite::Message::text(common::envelope(
            "LedgerSyncResponse",
            "a",
            "c",
            "\"from a\"",
        )))
        .await
        .unwrap();
    let got = c.try_recv(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let got = got.expect("a's envelope was not read while a was being flooded");
    assert_eq!(
        (got.sender_id.as_str(), got.payload.as_str()),
        ("a", "\"from a\"")
    );
    reader.await.unwrap();
    flood.await.unwrap();
}

/// The kernel's view of the relay's end of the TCP connection `relay_port` <- `client_port`:
/// `(timer, ticks)` from `/proc/net/tcp`, where timer 2 is the keepalive timer and ticks are
/// hundredths of a second until it fires (Linux's USER_HZ).
fn server_socket_timer(relay_port: u16, client_port: u16) -> Option<(u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    let local = format!("0100007F:{relay_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (timer, ticks) = fields.get(5)?.split_once(':')?;
        Some((timer.parse().ok()?, u64::from_str_radix(ticks, 16).ok()?))
    })
}

/// README: "TCP keepalive (native) notices a vanished machine in about 90 s". Every accepted
/// connection, on both ports, gets the keepalive timer armed with a 45 s idle time (then 3
/// probes 15 s apart, `server::tune`), before any byte is exchanged.
#[tokio::test]
async fn accepted_connections_have_tcp_keepalive_on_both_fronts() {
    let relay = TestRelay::start().await;
    for url in [&relay.ws_url, &relay.grpc_url] {
        let addr = url.split("://").nth(1).unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let relay_port = client.peer_addr().unwrap().port();
        let client_port = client.local_addr().unwrap().port();
        // Accepting and tuning happen on the relay's task: wait for it, bounded.
        let deadline = tokio::time::Instant::now() + common::ARRIVES;
        let (timer, ticks) = loop {
            match server_socket_timer(relay_port, client_port) {
                Some((2, ticks)) => break (2, ticks),
                seen => assert!(
                    tokio::time::Instant::now() < deadline,
                    "{url}: no keepalive timer on the relay's socket: {seen:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(timer, 2);
        // Armed for the idle time (45 s), less the moments since it was armed.
        assert!((3_000..=4_500).contains(&ticks), "{url}: {ticks} ticks");
        drop(client);
    }
}

/// The listening socket of `port`: `(state, accept queue length)` from `/proc/net/tcp`; a
/// listener's `rx_queue` column counts connections the kernel has completed and the relay has
/// not accepted yet.
fn listener_backlog(port: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // State 0A is LISTEN.
        if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"0A") {
            return None;
        }
        let (_, queued) = fields.get(4)?.split_once(':')?;
        usize::from_str_radix(queued, 16).ok()
    })
}

/// Polls `listener_backlog(port)` until it is `want`, within [`common::ARRIVES`].
async fn backlog_reaches(port: u16, want: usize) {
    let deadline = tokio::time::Instant::now() + common::ARRIVES;
    loop {
        let now = listener_backlog(port);
        if now == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "accept queue of port {port} is {now:?}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// README: TCP connections to the gRPC port "are not peers; they are bounded separately by the
/// same number" and wait past it: the relay accepts one more and holds it unserved (it waits for
/// a slot right after `accept`), and the rest wait in the kernel's accept queue (read from
/// `/proc/net/tcp`). With `max_connections = 1`, an HTTP/2 connection carrying a peer holds the
/// one slot; when it goes, the connection held is served.
#[tokio::test]
async fn grpc_tcp_connections_are_bounded_and_wait_in_the_backlog() {
    let mut config = common::shipped_config();
    config.server.max_connections = 1;
    let relay = TestRelay::start_with(config).await;
    let addr = relay.grpc_url.trim_start_matches("http://").to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();

    // The one connection slot: an HTTP/2 connection that carries a peer (so it is accepted).
    let channel = common::grpc_channel(&relay.grpc_url).await;
    let mut peer = GrpcPeer::over(channel.clone(), Some("g1")).await.unwrap();
    peer.expect_welcome("g1").await;

    // Two more TCP connections complete the TCP handshake (the kernel does that): the relay
    // takes the first, waiting for a slot, and accepts nothing else.
    let held = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _queued = tokio::net::TcpStream::connect(&addr).await.unwrap();
    backlog_reaches(port, 1).await;
    // Still there after the relay has had every chance to accept it: 20 looks, 10 ms apart.
    for _ in 0..20 {
        assert_eq!(listener_backlog(port), Some(1), "accepted past the limit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The first connection goes: the one held is served, and the queued one is taken in turn.
    drop(peer);
    drop(channel);
    let (h2, connection) = h2::client::handshake(held).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let response = tokio::time::timeout(common::ARRIVES, async {
        let mut h2 = h2.ready().await.unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        response.await.unwrap()
    })
    .await
    .expect("the held connection was never served");
    assert_eq!(response.status(), 200);
    backlog_reaches(port, 0).await;
}

/// README: "Each connection allows `max_connections` + 100 concurrent streams (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`)", read from the SETTINGS the relay sends a bare HTTP/2
/// client.
#[tokio::test]
async fn each_grpc_connection_allows_max_connections_plus_100_streams() {
    let mut config = common::shipped_config();
    config.server.max_connections = 7;
    let relay = TestRelay::start_with(config).await;
    let tcp = tokio::net::TcpStream::connect(relay.grpc_url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut connection = std::pin::pin!(connection);
    // A response proves the relay's SETTINGS (its first frame) have been read.
    let request = http::Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let exchange = async {
        let mut h2 = h2.ready().await.unwrap();
        let (response, _) = h2.send_request(request, true).unwrap();
        response.await.unwrap()
    };
    let response = tokio::time::timeout(common::ARRIVES, async {
        tokio::select! {
            response = exchange => response,
            ended = &mut connection => panic!("the connection ended: {ended:?}"),
        }
    })
    .await
    .expect("no response");
    assert_eq!(response.status(), 200);
    assert_eq!(connection.max_concurrent_send_streams(), 7 + 100);
}

/// README: the payload travels over gRPC "as JSON text (`payload_json`, empty means `null`)": a
/// gRPC envelope with an empty `payload_json` reaches a WebSocket peer with `"payload":null`.
#[tokio::test]
async fn an_empty_payload_json_arrives_as_null() {
    let relay = TestRelay::start().await;
    let mut w = relay.ws("w").await;
    let mut g = relay.grpc("g").await;
    assert_eq!(w.recv().await.message_type, "PeerJoined");
    g.send_pb(common::pb_envelope(
        "LedgerSyncResponse",
        "m-1",
        "g",
        "w",
        "",
    ))
    .await;
    let text = w.recv_text().await;
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["message_id"], "m-1", "{text}");
    assert!(got.get("payload").is_some_and(|p| p.is_null()), "{text}");
}

/// BENCHMARKS.md, conns: the relay's heap is not backed by transparent huge pages. With them,
/// mimalloc asks for huge pages on its arena (`madvise(MADV_HUGEPAGE)`), and on a kernel that
/// grants them (THP `madvise` or `always`) the untouched bulk of every large buffer becomes
/// resident: each HTTP/2 connection's 16 KiB write buffer, 8 KiB read buffer and 4 KiB HPACK
/// buffer (fixed in h2) are then paid in full, 49 KiB per one-stream connection against 29.
/// The `no_thp` feature of `mimalloc` keeps that `madvise` out; the kernel records it as the
/// `hg` flag of a mapping, so the real binary (the allocator is in `main.rs`) is read here.
#[cfg(target_os = "linux")]
#[test]
fn the_relay_binary_asks_for_no_transparent_huge_pages() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gsio-relay"))
        .args(["--config", "relay.toml"])
        .current_dir(common::repo_path(""))
        .env("GSIO_RELAY_SERVER__WS_LISTEN", "127.0.0.1:0")
        .env("GSIO_RELAY_SERVER__GRPC_LISTEN", "127.0.0.1:0")
        .env("GSIO_RELAY_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (listening_tx, listening_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening") {
                let _ = listening_tx.send(());
            }
        }
    });
    // Serving: its allocator has long made its arena.
    let listening = listening_rx.recv_timeout(Duration::from_secs(30));
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    listening.expect("the relay did not log that it is listening");
    let smaps = smaps.unwrap();
    let flags: Vec<&str> = smaps
        .lines()
        .filter(|line| line.starts_with("VmFlags:"))
        .collect();
    assert!(!flags.is_empty(), "no VmFlags in /proc/<pid>/smaps");
    let huge: Vec<&&str> = flags
        .iter()
        .filter(|line| line.split_whitespace().any(|flag| flag == "hg"))
        .collect();
    assert!(
        huge.is_empty(),
        "mappings advised for huge pages (mimalloc without no_thp?): {huge:?}"
    );
}

/// README "Welcome and discovery": changes within `discovery.announce_window_ms` of an
/// announcement go out together. With a 2 s window, the watcher's own join starts it; three
/// peers joining on both fronts within it are announced to the watcher in one `PeersChanged`
/// (ids sorted), and each of them hears only of those that joined after it.
#[tokio::test]
async fn joins_within_the_window_are_announced_in_one_peers_changed() {
    let mut config = common::shipped_config();
    config.discovery.announce_window_ms = 2_000;
    let relay = TestRelay::start_with(config).await;
    let mut watcher = relay.join(Front::Grpc, "watcher").await;
    let mut p1 = relay.join(Front::Ws, "p1").await;
    let mut p2 = relay.join(Front::Grpc, "p2").await;
    let mut p3 = relay.join(Front::Ws, "p3").await;
    let got = watcher.recv().await;
    assert_eq!(
        (got.message_type.as_str(), got.payload_json()),
        (
            "PeersChanged",
            serde_json::json!({"left": [], "joined": ["p1", "p2", "p3"]})
        )
    );
    let got = p1.recv().await;
    assert_eq!(
        (got.message_type.as_str(), got.payload_json()),
        (
            "PeersChanged",
            serde_json::json!({"left": [], "joined": ["p2", "p3"]})
        )
    );
    let got = p2.recv().await;
    assert_eq!(
        (
            got.message_type.as_str(),
            got.payload_json()["peer_id"].as_str()
        ),
        ("PeerJoined", Some("p3"))
    );
    nothing_else_from(&mut watcher, "watcher", &mut p3, "p3").await;
    nothing_else_from(&mut p3, "p3", &mut watcher, "watcher").await;
}
