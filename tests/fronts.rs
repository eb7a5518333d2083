//! Both fronts together: every routing mode across WebSocket and gRPC in all four directions,
//! gRPC identity, errors and payload fidelity.

mod common;

use common::conformance::FIDELITY_PAYLOADS;
use common::{AnyPeer, GrpcPeer, Peer, TestRelay};
use gsio_relay::pb;

#[derive(Clone, Copy, Debug)]
enum Front {
    Ws,
    Grpc,
}

async fn join(relay: &TestRelay, front: Front, id: &str) -> AnyPeer {
    match front {
        Front::Ws => AnyPeer::Ws(relay.ws(id).await),
        Front::Grpc => AnyPeer::Grpc(relay.grpc(id).await),
    }
}

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
        let mut s = join(&relay, from, "sender").await;
        let mut r = join(&relay, to, "receiver").await;
        let mut o = join(&relay, to, "other").await;
        // Sender saw both joins, receiver saw "other" join.
        for _ in 0..2 {
            assert_eq!(s.recv().await.message_type, "PeerJoined");
        }
        assert_eq!(r.recv().await.message_type, "PeerJoined");
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
        s.send("LedgerSync", "sender", "receiver", "[7]").await;
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
        s.expect_silence().await;
        r.expect_silence().await;
        o.expect_silence().await;
    }
}

#[tokio::test]
async fn payloads_cross_fronts_exactly() {
    for (from, to) in FRONT_PAIRS {
        let relay = TestRelay::start().await;
        let mut s = join(&relay, from, "s").await;
        let mut r = join(&relay, to, "r").await;
        let deep = format!("{}0{}", "[".repeat(5000), "]".repeat(5000));
        let mut payloads = FIDELITY_PAYLOADS.to_vec();
        payloads.push(&deep);
        for payload in payloads {
            s.send("LedgerSync", "s", "r", payload).await;
            let got = r.recv().await;
            assert_eq!(got.payload, payload, "{from:?} -> {to:?}");
        }
        let _ = s.recv().await; // PeerJoined r
        s.expect_silence().await;
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
    let mut peers: Vec<String> = serde_json::from_value(welcome["peers"].clone()).unwrap();
    peers.sort();
    assert_eq!(peers, ["node-1", "watcher"]);
    assert_eq!(ws.recv().await.message_type, "PeerJoined");
    assert_eq!(ws.recv().await.payload, "2");
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
    };
    let cases = [
        (bad("", "", "1"), "missing_message_type"),
        (bad("NodeAnnounce", "", "{not json"), "invalid_field"),
        (bad("NodeAnnounce", "", "1 2"), "invalid_field"),
        (bad("LedgerSync", "ghost", "1"), "unknown_recipient"),
        (bad("LedgerSync", "", "1"), "missing_recipient"),
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
