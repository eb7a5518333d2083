//! The limits per client address, the deadlines and the gRPC front's HTTP/2 bounds (README,
//! "Limits"), against a real relay on 127.0.0.1. Every client here is on 127.0.0.1, one address,
//! so each test sets the limits it checks in its own config.

mod common;

use std::time::Duration;

use common::{Peer, TestRelay, WsPeer, ARRIVES};
use futures_util::StreamExt;
use gsio_relay_core::RelayConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

fn config(limits: &str) -> RelayConfig {
    let mut config = common::shipped_config();
    let text = format!("[limits]\n{limits}\n");
    config.limits = RelayConfig::from_toml_str(&text, "test.toml")
        .unwrap()
        .limits;
    config
}

fn addr(url: &str) -> String {
    url.trim_start_matches("ws://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// A WebSocket upgrade refused by the per-address limits, read raw to the end (the relay
/// closes the connection after its answer): the HTTP status and body. `Retry-After: 1` is
/// checked here.
async fn refused_upgrade(url: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr(url)).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(ARRIVES, tcp.read_to_end(&mut answer))
        .await
        .expect("no complete answer to the upgrade")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    if status == 429 {
        assert!(head.contains("\r\nRetry-After: 1\r\n"), "{head}");
    }
    (status, body.to_owned())
}

fn refused(relay: &TestRelay) -> [u64; 2] {
    relay.relay.metrics.totals().refused
}

/// README: a WebSocket client past `limits.max_connections_per_ip` gets `429` with a body
/// naming `too_many_connections_from_address`; once one of its connections ends, it may open
/// another; the refusal is counted by front.
#[tokio::test]
async fn websocket_connections_past_the_per_address_limit_get_429() {
    let relay = TestRelay::start_with(config(
        "max_connections_per_ip = 2\nnew_connections_per_ip_per_second = 0",
    ))
    .await;
    let mut a = WsPeer::connect(&format!("{}/?node_id=a", relay.ws_url)).await;
    a.recv().await; // Welcome
    let mut b = WsPeer::connect(&format!("{}/?node_id=b", relay.ws_url)).await;
    b.recv().await;
    let (status, body) = refused_upgrade(&relay.ws_url).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.starts_with("too_many_connections_from_address: ")
            && body.contains("limits.max_connections_per_ip"),
        "{body}"
    );
    assert_eq!(refused(&relay), [1, 0]);
    // The connected peers are untouched.
    a.send("Ping", "", "", "1").await;
    assert_eq!(a.recv().await.message_type, "Ping");
    // One leaves: its place is free again.
    drop(b);
    let deadline = tokio::time::Instant::now() + ARRIVES;
    loop {
        match tokio_tungstenite::connect_async(&relay.ws_url).await {
            Ok(_) => break,
            Err(tungstenite::Error::Http(r)) if r.status() == 429 => {
                assert!(tokio::time::Instant::now() < deadline, "never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }
}

/// README: a connection past the per-address limit is refused "before it takes a slot": with
/// every peer slot taken, it is still answered at once (were it checked after the slot, it
/// would wait in the backlog for one).
#[tokio::test]
async fn a_refused_connection_is_answered_before_it_waits_for_a_slot() {
    let mut config = config("max_connections_per_ip = 1\nnew_connections_per_ip_per_second = 0");
    config.server.max_connections = 1;
    let relay = TestRelay::start_with(config).await;
    let mut a = WsPeer::connect(&format!("{}/?node_id=a", relay.ws_url)).await;
    a.recv().await;
    let (status, body) = refused_upgrade(&relay.ws_url).await;
    assert_eq!(status, 429, "{body}");
}

/// README: new connections per address past the burst, faster than
/// `limits.new_connections_per_ip_per_second`, are refused the same way.
#[tokio::test]
async fn websocket_connections_opened_too_fast_get_429() {
    let relay = TestRelay::start_with(config(
        "max_connections_per_ip = 0\nnew_connections_per_ip_per_second = 1\nnew_connections_per_ip_burst = 3",
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(WsPeer::connect(&relay.ws_url).await);
    }
    let (status, body) = refused_upgrade(&relay.ws_url).await;
    assert_eq!(status, 429);
    assert!(
        body.starts_with("too_many_connections_from_address: ")
            && body.contains("limits.new_connections_per_ip_per_second"),
        "{body}"
    );
    // Closing one gives no token back: the rate counts openings, not connections.
    drop(held.pop());
    let (status, _) = refused_upgrade(&relay.ws_url).await;
    assert_eq!(status, 429);
    assert_eq!(refused(&relay)[0], 2);
}

/// README: the per-address limit counts WebSocket connections and TCP connections to the gRPC
/// port together; a gRPC connection past it gets a `GOAWAY` `ENHANCE_YOUR_CALM` naming
/// `too_many_connections_from_address` (tonic: `RESOURCE_EXHAUSTED`), and no request is served.
#[tokio::test]
async fn grpc_connections_count_with_websocket_ones_and_are_closed_at_accept() {
    let relay = TestRelay::start_with(config(
        "max_connections_per_ip = 2\nnew_connections_per_ip_per_second = 0",
    ))
    .await;
    let mut ws = WsPeer::connect(&format!("{}/?node_id=w", relay.ws_url)).await;
    ws.recv().await;
    // One gRPC connection fits, with any number of streams on it.
    let channel = common::grpc_channel(&relay.grpc_url).await;
    let mut g1 = common::GrpcPeer::over(channel.clone(), Some("g1"))
        .await
        .unwrap();
    let mut g2 = common::GrpcPeer::over(channel, Some("g2")).await.unwrap();
    g1.recv().await;
    g2.recv().await;
    // A second connection is one too many for this address.
    let channel = tonic::transport::Channel::from_shared(relay.grpc_url.clone())
        .unwrap()
        .connect_lazy();
    let mut client = gsio_relay::pb::relay_service_client::RelayServiceClient::new(channel);
    let (_tx, rx) = tokio::sync::mpsc::channel::<gsio_relay::pb::Envelope>(1);
    let second = client.exchange(tokio_stream::wrappers::ReceiverStream::new(rx));
    let status = tokio::time::timeout(ARRIVES, second)
        .await
        .expect("no answer")
        .expect_err("a third connection from one address was served");
    // tonic reports the GOAWAY ENHANCE_YOUR_CALM as RESOURCE_EXHAUSTED; its debug data (the
    // status's source) names the code.
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        format!("{status:?}").contains("too_many_connections_from_address: ")
            && format!("{status:?}").contains("limits.max_connections_per_ip"),
        "{status:?}"
    );
    assert!(refused(&relay)[1] >= 1, "{:?}", refused(&relay));
    // And so is a third WebSocket connection.
    let (status, _) = refused_upgrade(&relay.ws_url).await;
    assert_eq!(status, 429);
}

/// README: a TCP connection that does not complete the WebSocket upgrade within
/// `limits.handshake_timeout_ms` is closed (here: half a request, then silence).
#[tokio::test]
async fn a_handshake_not_completed_in_time_is_closed() {
    let relay = TestRelay::start_with(config("handshake_timeout_ms = 300")).await;
    let mut tcp = TcpStream::connect(addr(&relay.ws_url)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let mut scratch = [0u8; 256];
    // A generous bound over the 300 ms deadline, well under the 10 s default.
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut scratch))
        .await
        .expect("the half-open handshake was never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let timed_out = relay.relay.metrics.totals().timed_out;
    assert_eq!(timed_out, [1, 0]);
}

/// README: a WebSocket peer that answers no ping within `limits.pong_timeout_ms` is closed,
/// its id freed and `PeerLeft` announced, in well under TCP's ~90 s. The silent peer here
/// completed its handshake and then never read (so never answered a Ping); the observer reads,
/// so answers them, and stays.
#[tokio::test]
async fn a_websocket_peer_that_answers_no_ping_leaves() {
    let relay = TestRelay::start_with(config(
        "ping_interval_ms = 200\npong_timeout_ms = 300\nhandshake_timeout_ms = 10000",
    ))
    .await;
    let mut observer = WsPeer::connect(&format!("{}/?node_id=observer", relay.ws_url)).await;
    let welcome = observer.recv().await;
    assert_eq!(welcome.payload_json()["limits"]["ping_interval_ms"], 200);
    assert_eq!(welcome.payload_json()["limits"]["pong_timeout_ms"], 300);
    let (silent, _) = tokio_tungstenite::connect_async(format!("{}/?node_id=silent", relay.ws_url))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut joined = false;
    loop {
        let got = observer.recv().await;
        if let Some((left, arrived)) = common::announced(&got) {
            joined |= arrived.iter().any(|id| id == "silent");
            if left.iter().any(|id| id == "silent") {
                break;
            }
        }
    }
    assert!(joined);
    // Its id is free: a new connection takes it.
    let mut again = WsPeer::connect(&format!("{}/?node_id=silent", relay.ws_url)).await;
    assert_eq!(again.recv().await.message_type, "Welcome");
    // Sanity, not a measurement: the leave came from the deadline, far below ARRIVES.
    assert!(started.elapsed() < ARRIVES);
    assert!(relay.relay.metrics.totals().timed_out[1] >= 1);
    // The observer, which reads (so answers pings), is still there after several intervals
    // (`recv_frame` fails the test if its connection ends).
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Some(frame) = observer
        .recv_frame(quiet_until - tokio::time::Instant::now())
        .await
    {
        assert!(frame.is_text(), "{frame:?}");
    }
    observer.send("Ping", "", "", "2").await;
    loop {
        let got = observer.recv().await;
        if got.message_type == "Ping" {
            break;
        }
    }
    drop(silent);
}

/// README: the close a peer that answers no ping gets, seen by a raw client that completes the
/// upgrade, then reads but never writes (so never sends the Pong): a Ping, then close 1008 with
/// a reason starting `idle_timeout: `.
#[tokio::test]
async fn a_peer_that_reads_but_never_answers_gets_close_1008_idle_timeout() {
    let relay =
        TestRelay::start_with(config("ping_interval_ms = 100\npong_timeout_ms = 200")).await;
    let mut tcp = TcpStream::connect(addr(&relay.ws_url)).await.unwrap();
    tcp.write_all(
        b"GET /?node_id=mute HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    // Everything the relay sends until it closes the connection.
    let mut bytes = Vec::new();
    tokio::time::timeout(ARRIVES, tcp.read_to_end(&mut bytes))
        .await
        .expect("the mute peer was never closed")
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    // Unmasked server frames, payloads under 64 KiB: (opcode, payload).
    let mut frames = Vec::new();
    let mut rest = &bytes[head_end..];
    while rest.len() >= 2 {
        let (opcode, short) = (rest[0] & 0x0f, usize::from(rest[1] & 0x7f));
        let (len, header) = match short {
            126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 => panic!("a frame over 64 KiB"),
            n => (n, 2),
        };
        frames.push((opcode, rest[header..header + len].to_vec()));
        rest = &rest[header + len..];
    }
    let opcodes: Vec<u8> = frames.iter().map(|(opcode, _)| *opcode).collect();
    // The Welcome, a Ping (no Pong came), and the close.
    assert_eq!(opcodes, [0x1, 0x9, 0x8]);
    let close = &frames.last().unwrap().1;
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1008);
    let reason = String::from_utf8_lossy(&close[2..]);
    assert!(reason.starts_with("idle_timeout: "), "{reason}");
}

/// A socket that, once frozen, neither reads nor writes again (a peer whose machine vanished:
/// nothing it was sent is answered).
struct Freezable {
    tcp: TcpStream,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for Freezable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Freezable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A bare HTTP/2 `Exchange` request with `x-gsio-node-id: id`.
fn exchange_request(id: &str) -> http::Request<()> {
    http::Request::post("/gsio.relay.v1.RelayService/Exchange")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-gsio-node-id", id)
        .body(())
        .unwrap()
}

/// README: gRPC connections are pinged (HTTP/2 PING, `limits.ping_interval_ms`); one that
/// answers none within `limits.pong_timeout_ms` is closed and its streams' peers leave. The
/// client here opens its stream, then stops answering anything.
#[tokio::test]
async fn a_grpc_connection_that_answers_no_ping_ends_and_its_peers_leave() {
    let relay =
        TestRelay::start_with(config("ping_interval_ms = 200\npong_timeout_ms = 300")).await;
    let mut observer = WsPeer::connect(&format!("{}/?node_id=observer", relay.ws_url)).await;
    observer.recv().await;
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tcp = TcpStream::connect(addr(&relay.grpc_url)).await.unwrap();
    let io = Freezable {
        tcp,
        frozen: frozen.clone(),
    };
    let (h2, connection) = h2::client::handshake(io).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let (response, _body) = h2.send_request(exchange_request("frozen"), false).unwrap();
    let response = tokio::time::timeout(ARRIVES, response)
        .await
        .expect("no response headers")
        .unwrap();
    assert_eq!(response.status(), 200);
    // The peer is in: the observer hears of it.
    loop {
        let got = observer.recv().await;
        if common::announced(&got).is_some_and(|(_, joined)| joined.iter().any(|id| id == "frozen"))
        {
            break;
        }
    }
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        let got = observer.recv().await;
        if common::announced(&got).is_some_and(|(left, _)| left.iter().any(|id| id == "frozen")) {
            break;
        }
    }
    assert!(!relay.relay.peer_ids().contains(&"frozen".to_owned()));
    connection.abort();
}

/// README: `limits.grpc_max_concurrent_streams` is each gRPC connection's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`: a client at it cannot open another stream on that
/// connection (h2 holds it) until one ends.
#[tokio::test]
async fn grpc_streams_past_the_concurrent_limit_wait_for_one_to_end() {
    let relay = TestRelay::start_with(config("grpc_max_concurrent_streams = 2")).await;
    let tcp = TcpStream::connect(addr(&relay.grpc_url)).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut streams = Vec::new();
    let mut h2 = h2;
    for id in ["s1", "s2"] {
        h2 = h2.ready().await.unwrap();
        let (response, sending) = h2.send_request(exchange_request(id), false).unwrap();
        let response = tokio::time::timeout(ARRIVES, response)
            .await
            .expect("no response")
            .unwrap();
        assert_eq!(response.status(), 200);
        streams.push((sending, response));
    }
    // A third waits in the client: the relay said two.
    h2 = h2.ready().await.unwrap();
    let (third, _sending) = h2.send_request(exchange_request("s3"), false).unwrap();
    let mut third = std::pin::pin!(third);
    let early = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(early.is_err(), "a third stream was served: {early:?}");
    let mut ids = relay.relay.peer_ids();
    ids.sort();
    assert_eq!(ids, ["s1", "s2"]);
    // One ends: the third goes.
    let (mut sending, _response) = streams.pop().unwrap();
    sending.send_reset(h2::Reason::CANCEL);
    let response = tokio::time::timeout(ARRIVES, third)
        .await
        .expect("the held stream never went")
        .unwrap();
    assert_eq!(response.status(), 200);
    connection.abort();
}

/// README: request metadata larger than `limits.grpc_max_header_list_bytes` is refused (h2
/// answers the stream `431` and the connection goes on); a header block over four times the
/// limit ends the connection (`GOAWAY` `ENHANCE_YOUR_CALM`, h2's abuse bound).
#[tokio::test]
async fn grpc_metadata_over_the_header_limit_is_refused() {
    let relay = TestRelay::start_with(config("grpc_max_header_list_bytes = 2048")).await;
    let tcp = TcpStream::connect(addr(&relay.grpc_url)).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = |id: &str, padding: usize| {
        let mut request = exchange_request(id);
        request
            .headers_mut()
            .insert("x-padding", "p".repeat(padding).parse().unwrap());
        request
    };
    let mut answers = Vec::new();
    // The request bodies stay open (streams half-open, as an `Exchange` is).
    let mut open = Vec::new();
    // Within the limit first: h2 applies a connection's limit once the client has acknowledged
    // the relay's SETTINGS, which an answered request proves.
    for (id, padding) in [
        ("small", 10),
        ("big", 4096),
        ("small-2", 10),
        ("huge", 100_000),
    ] {
        let mut client = h2.clone().ready().await.unwrap();
        let (response, sending) = client.send_request(request(id, padding), false).unwrap();
        let answer = tokio::time::timeout(ARRIVES, response)
            .await
            .expect("no answer");
        answers.push((
            id,
            answer.map(|r| r.status().as_u16()).map_err(|e| e.reason()),
        ));
        open.push(sending);
    }
    assert_eq!(
        answers,
        [
            ("small", Ok(200)),
            ("big", Ok(431)),
            ("small-2", Ok(200)),
            ("huge", Err(Some(h2::Reason::ENHANCE_YOUR_CALM))),
        ]
    );
    assert!(!relay.relay.peer_ids().contains(&"big".to_owned()));
    connection.abort();
    // The relay serves new connections as before.
    let mut peer = common::GrpcPeer::connect(&relay.grpc_url, Some("after"))
        .await
        .unwrap();
    assert_eq!(peer.recv().await.message_type, "Welcome");
}

/// The deadlines and address limits never hold up an ordinary session: a peer that reads
/// (so answers pings) and sends keeps its connection across many ping intervals.
#[tokio::test]
async fn a_peer_that_reads_outlives_many_ping_intervals() {
    let relay =
        TestRelay::start_with(config("ping_interval_ms = 100\npong_timeout_ms = 200")).await;
    let mut peer = WsPeer::connect(&format!("{}/?node_id=alive", relay.ws_url)).await;
    peer.recv().await;
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, peer.ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(tungstenite::Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("{other:?}"),
        }
    }
    assert!(pings >= 2, "{pings} pings");
    peer.send("Ping", "", "", "3").await;
    assert_eq!(peer.recv().await.message_type, "Ping");
}
