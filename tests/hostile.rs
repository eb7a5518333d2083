//! What the network may send that no well-behaved client does: a frame too large to buffer,
//! broken WebSocket framing, bytes that are not HTTP, mutated envelopes on both fronts. The
//! README's claims: a frame beyond twice the size limit ends the connection with close 1009
//! without being buffered, and nothing sent from the network can panic the relay.
//!
//! A panic inside a tokio task does not end the process: the task dies and the runtime goes on,
//! so "the relay still serves" alone would miss one. The tests about panics run the relay on a
//! runtime of its own whose threads carry a name, and a panic hook records every panic on a
//! thread of that name ([`WatchedRelay`]).

mod common;

use std::sync::{Mutex, Once};

use common::conformance::{self, WsNet};
use common::mutate::Mutator;
use common::{grpc_channel, Got, Peer, TestRelay, ARRIVES};
use gsio_relay::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The shipped `limits.max_message_bytes` (the README: 1 MiB), twice: a frame of this many
/// bytes is still read; one byte more is not.
const TWICE_THE_LIMIT: u64 = 2 * 1_048_576;

/// Panics seen on the threads of a [`WatchedRelay`]: (thread name, message).
static RELAY_PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
const RELAY_THREADS: &str = "relay-under-test";

/// A relay on a tokio runtime of its own, whose threads (named `relay-under-test-<test>`) run
/// every task of the relay: its accept loops, connections and streams. Any panic on them is
/// recorded (and printed as usual).
struct WatchedRelay {
    relay: Option<TestRelay>,
    runtime: Option<tokio::runtime::Runtime>,
    threads: String,
}

impl WatchedRelay {
    async fn start(test: &str) -> WatchedRelay {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let thread = std::thread::current();
                if let Some(name) = thread.name().filter(|n| n.starts_with(RELAY_THREADS)) {
                    RELAY_PANICS
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push((name.to_owned(), info.to_string()));
                }
                previous(info);
            }));
        });
        let threads = format!("{RELAY_THREADS}-{test}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(&threads)
            .enable_all()
            .build()
            .unwrap();
        // Started from a task of that runtime, so the relay's own tasks are spawned there.
        let relay = runtime.spawn(TestRelay::start()).await.unwrap();
        WatchedRelay {
            relay: Some(relay),
            runtime: Some(runtime),
            threads,
        }
    }

    fn relay(&self) -> &TestRelay {
        self.relay.as_ref().unwrap()
    }

    /// Runs `test` (the client side), then checks the relay's threads before anything else: a
    /// panic in the relay is the failure to report, whatever the clients saw because of it.
    async fn check(&self, test: impl std::future::Future<Output = ()> + Send + 'static) {
        let outcome = tokio::spawn(test).await;
        self.assert_no_panics();
        if let Err(failed) = outcome {
            std::panic::resume_unwind(failed.into_panic());
        }
        self.still_serves().await;
        self.assert_no_panics();
    }

    fn assert_no_panics(&self) {
        let panics: Vec<_> = RELAY_PANICS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|(thread, _)| *thread == self.threads)
            .cloned()
            .collect();
        assert!(panics.is_empty(), "the relay panicked: {panics:#?}");
    }

    /// The relay still routes, over both fronts, between peers that connect now (announcements
    /// of earlier peers leaving may still arrive, and are skipped).
    async fn still_serves(&self) {
        let relay = self.relay();
        let mut w = relay.ws("fresh-ws").await;
        let mut g = relay.grpc("fresh-grpc").await;
        w.send("LedgerSyncResponse", "fresh-ws", "fresh-grpc", "1")
            .await;
        let got = g.recv_skipping_announcements().await;
        assert_eq!(
            (got.sender_id.as_str(), got.payload.as_str()),
            ("fresh-ws", "1")
        );
        g.send("LedgerSyncResponse", "fresh-grpc", "fresh-ws", "2")
            .await;
        let got = w.recv_skipping_announcements().await;
        assert_eq!(
            (got.sender_id.as_str(), got.payload.as_str()),
            ("fresh-grpc", "2")
        );
    }
}

impl Drop for WatchedRelay {
    fn drop(&mut self) {
        drop(self.relay.take());
        // Not `drop`: dropping a runtime blocks until its tasks end, which tokio refuses inside
        // the test's own runtime.
        self.runtime.take().unwrap().shutdown_background();
    }
}

/// A WebSocket client that sends exactly the bytes it is given (frames no library would write)
/// and parses the relay's frames itself.
struct RawWs {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    /// Read but not yet taken.
    buffered: Vec<u8>,
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

impl RawWs {
    /// Connects to `ws_url` and completes the handshake for `target` (path and query).
    async fn connect(ws_url: &str, target: &str) -> RawWs {
        let mut raw = RawWs::tcp(ws_url).await;
        let request = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{UPGRADE}\r\n");
        raw.writer.write_all(request.as_bytes()).await.unwrap();
        let end = loop {
            if let Some(at) = raw.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(raw.read_more().await, "no handshake answer");
        };
        let head: Vec<u8> = raw.buffered.drain(..end).collect();
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw
    }

    /// A TCP connection to the address of `url` (`ws://host:port` or `http://host:port`).
    async fn tcp(url: &str) -> RawWs {
        let address = url.split("://").nth(1).unwrap().trim_end_matches('/');
        let stream = TcpStream::connect(address).await.unwrap();
        let (reader, writer) = stream.into_split();
        RawWs {
            reader,
            writer,
            buffered: Vec::new(),
        }
    }

    /// Reads what is there into the buffer, within [`ARRIVES`]; false at the end of the stream
    /// (or a reset).
    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout(ARRIVES, self.reader.read(&mut chunk)).await {
            Err(_) => panic!("nothing from the relay within {ARRIVES:?}"),
            Ok(Ok(0) | Err(_)) => false,
            Ok(Ok(n)) => {
                self.buffered.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Whether `n` bytes are buffered, reading as needed; false if the stream ends first.
    async fn fill(&mut self, n: usize) -> bool {
        while self.buffered.len() < n {
            if !self.read_more().await {
                return false;
            }
        }
        true
    }

    /// The relay's next frame (unmasked, as a server sends): its opcode and payload. `None` if
    /// the connection ends first.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2).await {
            return None;
        }
        let (first, second) = (self.buffered[0], self.buffered[1]);
        assert_eq!(second & 0x80, 0, "a server frame is never masked");
        let (header, len) = match second & 0x7f {
            126 => {
                self.fill(4).await.then_some(())?;
                (
                    4,
                    u16::from_be_bytes([self.buffered[2], self.buffered[3]]) as usize,
                )
            }
            127 => {
                self.fill(10).await.then_some(())?;
                let len = u64::from_be_bytes(self.buffered[2..10].try_into().unwrap());
                (10, usize::try_from(len).unwrap())
            }
            len => (2, len as usize),
        };
        self.fill(header + len).await.then_some(())?;
        let frame: Vec<u8> = self.buffered.drain(..header + len).collect();
        Some((first & 0x0f, frame[header..].to_vec()))
    }

    /// The next text frame, as an envelope.
    async fn next_envelope(&mut self) -> Got {
        match self.next_frame().await {
            Some((0x1, text)) => serde_json::from_slice(&text).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The close frame the relay sends next: its code and reason.
    async fn expect_close(&mut self) -> (u16, String) {
        match self.next_frame().await {
            Some((0x8, payload)) if payload.len() >= 2 => (
                u16::from_be_bytes([payload[0], payload[1]]),
                String::from_utf8_lossy(&payload[2..]).into_owned(),
            ),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Sends `bytes` (ignoring a connection the relay already ended), closes the sending side,
    /// and reads until the relay ends the connection: by then the relay has read everything.
    async fn send_last_and_wait_for_the_end(mut self, bytes: &[u8], case: &str) {
        let _ = self.writer.write_all(bytes).await;
        let _ = self.writer.shutdown().await;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(ARRIVES, self.reader.read(&mut chunk)).await {
                Err(_) => panic!("{case}: the relay kept the connection open"),
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// A client frame: `first` is the FIN/RSV/opcode byte; the length field says `announced`
/// whatever `body` holds; the body is masked with a fixed key.
fn client_frame(first: u8, announced: u64, body: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = common::client_frame_header(first, announced, KEY);
    frame.extend(body.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    frame
}

/// A complete, masked client text frame.
fn text_frame(text: &str) -> Vec<u8> {
    client_frame(0x81, text.len() as u64, text.as_bytes())
}

/// "A frame beyond twice the size limit: close 1009, the relay will not buffer it." Only the
/// frame's header is sent (or a sliver of its body): a relay that buffered the frame would wait
/// for the rest, and no close would come. The README says the Worker's platform refuses such
/// frames itself, before the relay sees them: this is native only.
#[tokio::test]
async fn a_frame_beyond_twice_the_limit_is_refused_with_1009_before_its_body() {
    let relay = TestRelay::start().await;
    let cases: [(u8, u64, usize); 4] = [
        (0x81, TWICE_THE_LIMIT + 1, 0),
        (0x81, 1 << 40, 1000),
        (0x82, TWICE_THE_LIMIT + 1, 0),
        (0x81, i64::MAX as u64, 0),
    ];
    for (n, (first, announced, sliver)) in cases.into_iter().enumerate() {
        let id = format!("big-{n}");
        let mut raw = RawWs::connect(&relay.ws_url, &format!("/?node_id={id}")).await;
        assert_eq!(raw.next_envelope().await.message_type, "Welcome");
        raw.send(&client_frame(first, announced, &vec![b'x'; sliver]))
            .await;
        let (code, reason) = raw.expect_close().await;
        assert_eq!(code, 1009, "{announced} bytes announced");
        assert!(reason.starts_with("message_too_large"), "{reason}");
    }
    assert!(relay.relay.peer_ids().is_empty());
}

/// The other side of "beyond twice": a frame of exactly twice the limit is read, refused with a
/// `message_too_large` Error, and the connection stays; and a message cut into fragments that
/// together go beyond twice the limit ends the connection with 1009 like one frame would.
#[tokio::test]
async fn twice_the_limit_is_read_and_fragments_do_not_get_around_it() {
    let relay = TestRelay::start().await;
    let mut raw = RawWs::connect(&relay.ws_url, "/?node_id=edge").await;
    assert_eq!(raw.next_envelope().await.message_type, "Welcome");
    let (head, tail) = (r#"{"message_type":"Ping","payload":""#, r#""}"#);
    let fill = "x".repeat(TWICE_THE_LIMIT as usize - head.len() - tail.len());
    let text = format!("{head}{fill}{tail}");
    assert_eq!(text.len() as u64, TWICE_THE_LIMIT);
    raw.send(&text_frame(&text)).await;
    let error = raw.next_envelope().await;
    assert_eq!(error.error_code(), "message_too_large", "{error:?}");
    raw.send(&text_frame(
        r#"{"message_type":"Ping","payload":"still here"}"#,
    ))
    .await;
    assert_eq!(raw.next_envelope().await.payload, r#""still here""#);

    // Two fragments of 1.5 MiB each: every frame is within the limit, the message is not.
    let fragment = vec![b' '; 3 * 1_048_576 / 2];
    raw.send(&client_frame(0x01, fragment.len() as u64, &fragment))
        .await;
    // The relay may end the connection before it has read all of the second fragment.
    let _ = raw
        .writer
        .write_all(&client_frame(0x80, fragment.len() as u64, &fragment))
        .await;
    let (code, reason) = raw.expect_close().await;
    assert_eq!(code, 1009);
    assert!(reason.starts_with("message_too_large"), "{reason}");
}

/// "Nothing sent from the network can panic the relay", WebSocket envelopes: the conformance
/// table's mutated frames (also run against the Worker), here on a watched relay.
#[tokio::test]
async fn mutated_websocket_frames_do_not_panic_the_relay() {
    let watched = WatchedRelay::start("ws-frames").await;
    let net = WsNet::at(format!("{}/", watched.relay().ws_url));
    watched
        .check(conformance::mutated_frames_never_break_the_relay(net))
        .await;
}

/// "Nothing sent from the network can panic the relay", below the envelopes: broken WebSocket
/// framing, bytes that are not an HTTP request, and bytes that are not HTTP/2 on the gRPC port.
/// Each connection's bytes are followed by the end of its sending side, and the test waits for
/// the relay to end the connection, so the relay has read them all before the check.
#[tokio::test]
async fn broken_framing_and_non_protocol_bytes_do_not_panic_the_relay() {
    let watched = WatchedRelay::start("framing").await;
    let ws_url = watched.relay().ws_url.clone();
    let grpc_url = watched.relay().grpc_url.clone();
    watched
        .check(send_broken_framing_and_noise(ws_url, grpc_url))
        .await;
}

async fn send_broken_framing_and_noise(ws_url: String, grpc_url: String) {
    let mut mutator = Mutator::new(0x0bad_f00d);

    // After the handshake: framing a conforming client never sends.
    let broken: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", vec![0x81, 0x02, b'h', b'i']),
        ("reserved bit", client_frame(0xc1, 2, b"hi")),
        ("unknown opcode", client_frame(0x83, 2, b"hi")),
        (
            "control frame over 125 bytes",
            client_frame(0x89, 126, &[0; 126]),
        ),
        ("fragmented control frame", client_frame(0x09, 2, b"hi")),
        ("continuation without a start", client_frame(0x80, 2, b"hi")),
        (
            "text that is not UTF-8",
            client_frame(0x81, 2, &[0xff, 0xfe]),
        ),
        ("close with one byte", client_frame(0x88, 1, &[0x03])),
        (
            "close code 999",
            client_frame(0x88, 2, &999u16.to_be_bytes()),
        ),
        ("length with its top bit set", {
            let mut f = vec![0x81, 0xff];
            f.extend_from_slice(&(1u64 << 63).to_be_bytes());
            f
        }),
        ("a new message inside a fragmented one", {
            let mut f = client_frame(0x01, 2, b"ab");
            f.extend(client_frame(0x81, 2, b"cd"));
            f
        }),
    ];
    for (case, bytes) in broken {
        let raw = RawWs::connect(&ws_url, "/?node_id=framing").await;
        raw.send_last_and_wait_for_the_end(&bytes, case).await;
    }
    let valid = [
        text_frame(r#"{"message_type":"Ping","payload":[1,"two",{"3":null}]}"#),
        client_frame(0x89, 4, b"ping"),
        client_frame(0x88, 2, &1000u16.to_be_bytes()),
    ];
    for n in 0..300 {
        let bytes = if n % 3 == 0 {
            mutator.noise(300)
        } else {
            let seed = mutator.pick(&valid).clone();
            mutator.mutate(
                &seed,
                &[0x00, 0x7e, 0x7f, 0x80, 0x81, 0x88, 0xff, b'{', b'"'],
            )
        };
        let raw = RawWs::connect(&ws_url, &format!("/?node_id=noise-{n}")).await;
        raw.send_last_and_wait_for_the_end(&bytes, &format!("noise {n}"))
            .await;
    }

    // Instead of a handshake: noise, and mutated upgrade requests.
    let request = format!("GET /?node_id=h HTTP/1.1\r\nHost: 127.0.0.1\r\n{UPGRADE}\r\n");
    for n in 0..100 {
        let bytes = if n % 2 == 0 {
            mutator.noise(600)
        } else {
            mutator.mutate(request.as_bytes(), b"\r\n: /?=%\x00\xff")
        };
        let raw = RawWs::tcp(&ws_url).await;
        raw.send_last_and_wait_for_the_end(&bytes, &format!("handshake {n}"))
            .await;
    }

    // The gRPC port: noise, and HTTP/2's preface followed by noise.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for n in 0..100 {
        let mut bytes = if n % 2 == 0 {
            PREFACE.to_vec()
        } else {
            Vec::new()
        };
        bytes.extend(mutator.noise(600));
        let raw = RawWs::tcp(&grpc_url).await;
        raw.send_last_and_wait_for_the_end(&bytes, &format!("gRPC port {n}"))
            .await;
    }
}

/// A well-formed protobuf `Envelope` whose fields are mutated: types, ids and JSON payloads
/// (cut, spliced, made invalid; the proto's strings stay UTF-8, as prost requires).
fn mutated_fields(mutator: &mut Mutator) -> Vec<u8> {
    const TYPES: &[&str] = &[
        "NodeAnnounce",
        "Ping",
        "LedgerSyncResponse",
        "NodeListRequest",
        "Welcome",
        "",
    ];
    const PAYLOADS: &[&str] = &[
        r#"{"node_id":"n1","k":[1,2.5,"x\u00e9",null,true]}"#,
        "123456789012345678901",
        r#"[[[{"a":"\ud83d\ude80"}]]]"#,
        r#""\"\\\/\b\f\n\r\t""#,
        "",
    ];
    const JSON: &[u8] = b"{}[]\":,.-+eE0123456789 \\/untrlfasx";
    let field = |mutator: &mut Mutator, seed: &str, alphabet: &[u8]| {
        if mutator.one_in(3) {
            seed.to_owned()
        } else {
            String::from_utf8_lossy(&mutator.mutate(seed.as_bytes(), alphabet)).into_owned()
        }
    };
    let message_type = *mutator.pick(TYPES);
    let payload = *mutator.pick(PAYLOADS);
    let envelope = pb::Envelope {
        message_type: field(mutator, message_type, b"ABCabc \x00"),
        message_id: field(mutator, "m-1", b"-_.:@ \x00"),
        sender_id: field(mutator, "n1", b"-_.:@ \x00"),
        recipient_id: field(mutator, "", b"-_.:@n1 \x00"),
        payload_json: field(mutator, payload, JSON),
    };
    prost::Message::encode_to_vec(&envelope)
}

/// Sends each message as it is given: bytes that need not be a valid protobuf `Envelope`.
struct RawEnvelopes;

impl tonic::codec::Encoder for RawEnvelopes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

/// Raw bytes out, the relay's envelopes in.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::Envelope;
    type Encoder = RawEnvelopes;
    type Decoder = tonic_prost::ProstDecoder<pb::Envelope>;

    fn encoder(&mut self) -> RawEnvelopes {
        RawEnvelopes
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::default())
    }
}

/// "Nothing sent from the network can panic the relay", gRPC: mutated protobuf `Envelope`s
/// (fields cut, repeated, retagged, lengths and UTF-8 broken), ten to a stream, some streams
/// with a mutated `x-gsio-node-id`. Each stream's request ends after its batch, so the relay has
/// read the batch when the stream ends.
#[tokio::test]
async fn mutated_protobuf_envelopes_do_not_panic_the_relay() {
    let watched = WatchedRelay::start("grpc-envelopes").await;
    let grpc_url = watched.relay().grpc_url.clone();
    watched.check(send_mutated_protobuf(grpc_url)).await;
}

async fn send_mutated_protobuf(grpc_url: String) {
    const STREAMS: usize = 250;
    const PER_STREAM: usize = 10;
    let channel = grpc_channel(&grpc_url).await;
    let seeds: Vec<Vec<u8>> = [
        common::pb_envelope(
            "NodeAnnounce",
            "m-1",
            "n1",
            "",
            r#"{"node_id":"n1","k":[1,2.5]}"#,
        ),
        common::pb_envelope("LedgerSyncResponse", "", "", "n1", "123456789012345678901"),
        common::pb_envelope("Ping", "", "", "", ""),
        common::pb_envelope("NodeListRequest", "m:2", "n2", "ghost", r#""\u00e9""#),
    ]
    .iter()
    .map(prost::Message::encode_to_vec)
    .collect();
    // Tags and wire types of the five fields and beyond, varint continuation bytes, UTF-8
    // lead bytes and a surrogate's.
    const ALPHABET: &[u8] = &[
        0x00, 0x01, 0x02, 0x05, 0x08, 0x0a, 0x0b, 0x12, 0x1a, 0x22, 0x2a, 0x2b, 0x32, 0x7f, 0x80,
        0xc3, 0xed, 0xa0, 0xff, b'{', b'"',
    ];
    let mut mutator = Mutator::new(0x7072_6f74_6f62_7566);
    let (mut decodable, mut undecodable) = (0usize, 0usize);
    let (mut answered_errors, mut refused_streams) = (0usize, 0usize);
    for n in 0..STREAMS {
        // Two kinds: the encoding itself mutated (prost's decoding, and what still decodes),
        // and well-formed protobuf whose fields are mutated text (the relay's conversion and
        // core). The first mutation that does not decode ends the stream's reading, so a batch
        // holds at most one, last (the client's own prost tells which is which).
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut last = None;
        for _ in 0..PER_STREAM {
            let bytes = if mutator.one_in(2) {
                mutated_fields(&mut mutator)
            } else {
                let seed = mutator.pick(&seeds).clone();
                mutator.mutate(&seed, ALPHABET)
            };
            if <pb::Envelope as prost::Message>::decode(bytes.as_slice()).is_ok() {
                decodable += 1;
                batch.push(bytes);
            } else if last.is_none() {
                undecodable += 1;
                last = Some(bytes);
            }
        }
        batch.extend(last);
        let mut request = tonic::Request::new(tokio_stream::iter(batch));
        if n % 4 == 0 {
            let id = mutator.mutate(format!("node-{n}").as_bytes(), b" @:.\x00\xff");
            if let Ok(value) = String::from_utf8_lossy(&id).parse() {
                request.metadata_mut().insert("x-gsio-node-id", value);
            }
        }
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/gsio.relay.v1.RelayService/Exchange",
        );
        let answer = tokio::time::timeout(ARRIVES, grpc.streaming(request, path, RawCodec))
            .await
            .unwrap_or_else(|_| panic!("stream {n}: no answer"));
        let mut inbound = match answer {
            Ok(response) => response.into_inner(),
            // A mutated x-gsio-node-id, refused at once.
            Err(_status) => {
                refused_streams += 1;
                continue;
            }
        };
        loop {
            match tokio::time::timeout(ARRIVES, inbound.message()).await {
                Err(_) => panic!("stream {n} did not end"),
                Ok(Ok(Some(envelope))) => {
                    answered_errors += usize::from(envelope.message_type == "Error");
                }
                Ok(Ok(None) | Err(_)) => break,
            }
        }
    }
    println!(
        "{decodable} decodable and {undecodable} undecodable mutations sent, \
         {answered_errors} Error envelopes back, {refused_streams} streams refused"
    );
    // The mutations reached both layers: bytes that are no Envelope (tonic's decoding) and
    // envelopes the relay refused with an Error (the core).
    assert!(
        decodable > 1000 && undecodable > 100 && answered_errors > 500,
        "{decodable} decodable and {undecodable} undecodable mutations sent, \
         {answered_errors} Error envelopes back, {refused_streams} streams refused"
    );
}

/// The watch itself can fail: a panic inside a task on a watched relay's runtime, which tokio
/// would swallow, is recorded against that relay.
#[tokio::test]
async fn the_watch_sees_a_panic_inside_a_relay_task() {
    let watched = WatchedRelay::start("self-check").await;
    let runtime = watched.runtime.as_ref().unwrap();
    let task = runtime.spawn(async { panic!("on purpose") }).await;
    assert!(task.unwrap_err().is_panic());
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| watched.assert_no_panics()));
    assert!(
        result.is_err(),
        "the watch missed a panic on the relay's threads"
    );
}

/// Opens an `Exchange` as `id` that sends `messages` as raw bytes and keeps its sending side
/// open; returns what comes back until the stream ends, and the status it ends with.
async fn raw_exchange(
    grpc_url: &str,
    id: &str,
    messages: Vec<Vec<u8>>,
) -> (Vec<pb::Envelope>, tonic::Status) {
    let channel = grpc_channel(grpc_url).await;
    let (tx, rx) = tokio::sync::mpsc::channel(messages.len().max(1));
    for message in messages {
        tx.send(message).await.unwrap();
    }
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("x-gsio-node-id", id.parse().unwrap());
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/gsio.relay.v1.RelayService/Exchange",
    );
    let mut inbound = grpc
        .streaming(request, path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(ARRIVES, inbound.message()).await {
            Err(_) => panic!("the stream did not end"),
            Ok(Ok(Some(envelope))) => got.push(envelope),
            Ok(Ok(None)) => panic!("the stream ended OK, without saying why: {got:?}"),
            Ok(Err(status)) => {
                drop(tx); // held open until here: the relay, not the client, ended the stream
                return (got, status);
            }
        }
    }
}

/// README: on gRPC, bytes that are not an `Envelope` end the stream with `INVALID_ARGUMENT`
/// (`invalid_field`), and a message over the hard frame limit with `RESOURCE_EXHAUSTED`
/// (`message_too_large`), each after what the stream had before it.
#[tokio::test]
async fn unreadable_grpc_messages_end_the_stream_with_a_status_that_says_why() {
    let relay = TestRelay::start().await;
    let ping = prost::Message::encode_to_vec(&common::pb_envelope("Ping", "p-1", "", "", "1"));

    // A field tag of 0 is no protobuf.
    let (got, status) = raw_exchange(
        &relay.grpc_url,
        "bad-bytes",
        vec![ping.clone(), vec![0x00, 0x01]],
    )
    .await;
    let types: Vec<&str> = got.iter().map(|e| e.message_type.as_str()).collect();
    assert_eq!(types, ["Welcome", "Ping"], "{got:?}");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("invalid_field"), "{status:?}");

    let limit = relay.relay.config().limits.hard_frame_bytes();
    let huge = prost::Message::encode_to_vec(&common::pb_envelope(
        "Ping",
        "p-2",
        "",
        "",
        &format!("\"{}\"", "h".repeat(limit)),
    ));
    let (got, status) = raw_exchange(&relay.grpc_url, "too-big", vec![ping, huge]).await;
    let types: Vec<&str> = got.iter().map(|e| e.message_type.as_str()).collect();
    assert_eq!(types, ["Welcome", "Ping"], "{got:?}");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("message_too_large"),
        "{status:?}"
    );
    // Both ids are free again: the relay left no peer behind.
    let deadline = tokio::time::Instant::now() + ARRIVES;
    while !relay.relay.peer_ids().is_empty() {
        let left = relay.relay.peer_ids();
        assert!(tokio::time::Instant::now() < deadline, "{left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
