//! The example node (`examples/node.rs`, its very `run_node`) on a real relay, with a browser
//! peer on the WebSocket front; and envelopes between a client and a browser, exactly.

mod common;

#[allow(dead_code)]
#[path = "../examples/node.rs"]
mod node;

use common::{config, next_event, wait_for, Browser, Relay};
use gsio_relay_client::{connect, Envelope, Event, Events, Payload, RelayError};
use serde_json::{json, Value};

#[tokio::test]
async fn example_node_answers_a_browsers_node_list_request() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let (client, events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    let node = tokio::spawn(node::run_node(client.clone(), events));

    // The browser joins once the node has (its Welcome or a PeerJoined names it).
    let (mut browser, welcome) = Browser::connect(&relay, "browser").await;
    if welcome["payload"]["peers"] != json!(["node-1"]) {
        let joined = browser.recv_type("PeerJoined").await;
        assert!(joined.contains(r#""peer_id":"node-1""#), "{joined}");
    }

    // Unaddressed: "auto" in the shipped relay.toml takes it to every node.
    browser
        .send_text(r#"{"message_type":"NodeListRequest","message_id":"req-1","sender_id":"browser","recipient_id":"","payload":{}}"#)
        .await;
    let response: Value =
        serde_json::from_str(&browser.recv_type("NodeListResponse").await).unwrap();
    assert_eq!(
        (
            &response["sender_id"],
            &response["recipient_id"],
            &response["payload"]
        ),
        (
            &json!("node-1"),
            &json!("browser"),
            &json!({"nodes": ["browser"]})
        )
    );
    assert_eq!(
        response["message_id"].as_str().map(str::len),
        Some(36),
        "a UUID"
    );

    // Addressed to the node.
    browser
        .send_text(r#"{"message_type":"NodeListRequest","sender_id":"browser","recipient_id":"node-1","payload":{}}"#)
        .await;
    let response: Value =
        serde_json::from_str(&browser.recv_type("NodeListResponse").await).unwrap();
    assert_eq!(response["payload"], json!({"nodes": ["browser"]}));

    drop(browser);
    client.close();
    let last = tokio::time::timeout(common::ARRIVES, node)
        .await
        .unwrap()
        .unwrap();
    assert!(last.is_some_and(|d| d.is_final() && d.unsent.is_empty()));
    relay.shut_down().await;
}

#[tokio::test]
async fn the_example_node_announces_itself_to_a_browser() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let (mut browser, _) = Browser::connect(&relay, "browser").await;
    let (client, events) = connect(config(&relay.grpc_url(), "node-7")).unwrap();
    let node = tokio::spawn(node::run_node(client.clone(), events));
    let announce: Value = serde_json::from_str(&browser.recv_type("NodeAnnounce").await).unwrap();
    assert_eq!(
        (&announce["sender_id"], &announce["payload"]),
        (&json!("node-7"), &json!({"node_id": "node-7"}))
    );
    drop(browser);
    client.close();
    let _ = tokio::time::timeout(common::ARRIVES, node).await.unwrap();
    relay.shut_down().await;
}

#[tokio::test]
async fn payloads_cross_between_client_and_browser_exactly() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let (client, mut events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    wait_for(&mut events, |e| {
        matches!(e, Event::Connected(_)).then_some(())
    })
    .await;
    let (mut browser, _) = Browser::connect(&relay, "browser").await;

    let exact = r#"{"big":123456789012345678901234567890,"n":9007199254740993,"f":1.0,"s":"é\n"}"#;
    let id = client
        .send(Envelope::new(
            "EntryAnnounce",
            Payload::from_json(exact).unwrap(),
        ))
        .await
        .unwrap();
    // Read with the client's own Envelope, whose payload stays text (a `Value` would round).
    let got: Envelope = serde_json::from_str(&browser.recv_type("EntryAnnounce").await).unwrap();
    assert_eq!(
        (
            got.message_id.as_str(),
            got.sender_id.as_str(),
            got.payload.as_json()
        ),
        (id.as_str(), "node-1", exact)
    );

    browser
        .send_text(&format!(
            r#"{{"message_type":"EntryResponse","message_id":"r-1","sender_id":"browser","recipient_id":"node-1","payload":{exact}}}"#
        ))
        .await;
    let message = wait_for(&mut events, |e| match e {
        Event::Message(m) if m.message_type == "EntryResponse" => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (
            message.message_id.as_str(),
            message.sender_id.as_str(),
            message.payload.as_json()
        ),
        ("r-1", "browser", exact)
    );
    drop(browser);
    client.close();
    relay.shut_down().await;
}

#[tokio::test]
async fn relay_errors_name_the_message_id_of_the_send() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let (client, mut events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    wait_for(&mut events, |e| {
        matches!(e, Event::Connected(_)).then_some(())
    })
    .await;
    let id = client
        .send(Envelope::new("LedgerSyncResponse", json!([])).to("ghost"))
        .await
        .unwrap();
    let error = match next_event(&mut events).await {
        Event::Rejected(error) => error,
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert!(matches!(error, RelayError::UnknownRecipient(_)), "{error}");
    assert_eq!(error.message_id(), Some(id.as_str()));
    assert_eq!(
        error.detail().message_type.as_deref(),
        Some("LedgerSyncResponse")
    );
    client.close();
    relay.shut_down().await;
}

/// The `message_id` of the next message whose payload is `payload`.
async fn received(inbox: &mut Events, payload: &str) -> String {
    wait_for(inbox, |e| match e {
        Event::Message(m) if m.payload.as_json() == payload => Some(m.message_id),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn send_returns_the_message_id_the_recipient_receives() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let (recipient, mut inbox) = connect(config(&relay.grpc_url(), "node-2")).unwrap();
    wait_for(&mut inbox, |e| {
        matches!(e, Event::Connected(_)).then_some(())
    })
    .await;
    let (client, mut events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    wait_for(&mut events, |e| {
        matches!(e, Event::Connected(_)).then_some(())
    })
    .await;
    // Given: returned as is, and delivered as is.
    let given = Envelope::new("NodeAnnounce", json!(1)).with_message_id("node-1:announce@7");
    assert_eq!(client.send(given).await.unwrap(), "node-1:announce@7");
    assert_eq!(received(&mut inbox, "1").await, "node-1:announce@7");

    // Not given: a new UUID v4 for each send, the one the recipient gets.
    let mut generated = Vec::new();
    for payload in ["2", "3"] {
        let id = client
            .send(Envelope::new(
                "NodeAnnounce",
                Payload::from_json(payload).unwrap(),
            ))
            .await
            .unwrap();
        let uuid = uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
        assert_eq!(id, uuid.hyphenated().to_string(), "the usual text form");
        assert_eq!(received(&mut inbox, payload).await, id);
        generated.push(id);
    }
    assert_ne!(generated[0], generated[1]);
    client.close();
    recipient.close();
    relay.shut_down().await;
}
