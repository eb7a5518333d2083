//! Reconnecting: across a relay restart on the same address, to a relay that is not up yet,
//! after a transport failure (a proxy that the test cuts), a slow-consumer cut or a full relay,
//! and at the pace of the backoff; which refused ids stop the client and which are retried; and
//! what the client does with sends while disconnected and when it gives up.

mod common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{config, free_addr, next_event, wait_for, Browser, Cut, Proxy, Relay, ARRIVES};
use gsio_relay_client::{
    connect, ConnectError, DisconnectReason, Disconnected, Envelope, Event, Events, Payload,
    RelayError, SendError,
};
use serde_json::json;

fn connected(event: Event) -> Option<String> {
    match event {
        Event::Connected(welcome) => Some(welcome.peer_id),
        _ => None,
    }
}

fn a_disconnect(event: Event) -> Option<Disconnected> {
    match event {
        Event::Disconnected(d) => Some(d),
        _ => None,
    }
}

fn echoed(text: &'static str) -> impl FnMut(Event) -> Option<()> {
    move |event| match event {
        Event::Message(m) if m.message_type == "Ping" && m.payload.as_json() == text => Some(()),
        _ => None,
    }
}

#[tokio::test]
async fn reconnects_across_a_relay_restart_and_delivers_what_was_sent_meanwhile() {
    let addr = free_addr();
    let relay = Relay::start(addr).await;
    let (client, mut events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    assert_eq!(wait_for(&mut events, connected).await, "node-1");
    client.send(Envelope::new("Ping", json!(1))).await.unwrap();
    wait_for(&mut events, echoed("1")).await;

    relay.shut_down().await;
    let gone = wait_for(&mut events, a_disconnect).await;
    assert!(
        matches!(
            gone.reason,
            DisconnectReason::Relay {
                status: tonic::Code::Unavailable,
                error: RelayError::ShuttingDown(_)
            }
        ),
        "{gone:?}"
    );
    assert!(gone.reconnect_in.is_some() && gone.unsent.is_empty());

    // Sent while no relay runs: waits in the outbox.
    let queued = client.send(Envelope::new("Ping", json!(2))).await.unwrap();
    // Attempts fail (connection refused) and are reported, each with the next delay.
    let refused = wait_for(&mut events, |e| match e {
        Event::Disconnected(d) => Some(d),
        other => panic!("expected only Disconnected while the relay is down, got {other:?}"),
    })
    .await;
    assert!(
        matches!(refused.reason, DisconnectReason::Transport(_)),
        "{refused:?}"
    );
    assert!(refused.attempt >= 2 && refused.reconnect_in.is_some());

    let relay = Relay::start(addr).await;
    assert_eq!(wait_for(&mut events, connected).await, "node-1");
    // The envelope sent while disconnected goes out after the Welcome, with its id.
    let echo = wait_for(&mut events, |e| match e {
        Event::Message(m) if m.message_type == "Ping" => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (echo.payload.as_json(), echo.message_id.as_str()),
        ("2", queued.as_str())
    );
    client.send(Envelope::new("Ping", json!(3))).await.unwrap();
    wait_for(&mut events, echoed("3")).await;

    client.close();
    let last = wait_for(&mut events, a_disconnect).await;
    assert_eq!(
        (last.reason, last.reconnect_in),
        (DisconnectReason::Closed, None)
    );
    assert!(events.next().await.is_none(), "the final event is the last");
    relay.shut_down().await;
}

#[tokio::test]
async fn waits_for_a_relay_that_is_not_up_yet() {
    let addr = free_addr();
    let (client, mut events) = connect(config(&format!("http://{addr}"), "node-1")).unwrap();
    match next_event(&mut events).await {
        Event::Disconnected(Disconnected {
            reason: DisconnectReason::Transport(_),
            attempt: 1,
            reconnect_in: Some(_),
            ..
        }) => {}
        other => panic!("expected a failed attempt, got {other:?}"),
    }
    let relay = Relay::start(addr).await;
    assert_eq!(wait_for(&mut events, connected).await, "node-1");
    client.close();
    relay.shut_down().await;
}

#[tokio::test]
async fn an_id_in_use_is_final_and_queued_sends_come_back() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let (holder, mut holder_events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    wait_for(&mut holder_events, connected).await;

    let (client, mut events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    let envelope = Envelope::new("NodeAnnounce", json!({"node_id": "node-1"}));
    let id = client.send(envelope).await.unwrap();
    let last = match next_event(&mut events).await {
        Event::Disconnected(d) => d,
        other => panic!("expected the refusal, got {other:?}"),
    };
    assert!(
        matches!(
            &last.reason,
            DisconnectReason::Relay {
                status: tonic::Code::AlreadyExists,
                error: RelayError::PeerIdInUse(_)
            }
        ),
        "{last:?}"
    );
    assert!(last.is_final());
    assert_eq!(last.unsent.len(), 1);
    assert_eq!(last.unsent[0].message_id, id);
    assert!(events.next().await.is_none());
    let refused = client.send(Envelope::new("Ping", json!(1))).await;
    assert!(matches!(refused, Err(SendError::Closed(_))), "{refused:?}");
    assert!(matches!(
        client.try_send(Envelope::new("Ping", json!(1))),
        Err(SendError::Closed(_))
    ));

    holder.close();
    relay.shut_down().await;
}

#[tokio::test]
async fn gives_up_after_max_attempts_and_hands_back_the_outbox() {
    let addr = free_addr();
    let mut config = config(&format!("http://{addr}"), "node-1");
    config.backoff.max_attempts = Some(2);
    config.outbox_capacity = 2;
    config.events_capacity = 1;
    let (client, mut events) = connect(config).unwrap();
    let first = client.try_send(Envelope::new("Ping", json!(1))).unwrap();
    let second = client.try_send(Envelope::new("Ping", json!(2))).unwrap();
    let full = client.try_send(Envelope::new("Ping", json!(3)));
    assert!(
        matches!(&full, Err(SendError::Full(envelope)) if envelope.payload.as_json() == "3"),
        "{full:?}"
    );
    // `send` waits for room instead, and is refused when the client stops, envelope and all.
    // Events holds one, so the client stops with its final event not yet taken: a send that
    // slipped into the outbox while it emptied it would complete, and be lost.
    let refused = tokio::time::timeout(ARRIVES, client.send(Envelope::new("Ping", json!(4))))
        .await
        .expect("refused once the client stops");
    assert!(
        matches!(&refused, Err(SendError::Closed(envelope)) if envelope.payload.as_json() == "4"),
        "{refused:?}"
    );
    let mut attempts = Vec::new();
    let last = loop {
        match next_event(&mut events).await {
            Event::Disconnected(d) if d.is_final() => break d,
            Event::Disconnected(d) => attempts.push(d.attempt),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((attempts, last.attempt), (vec![1], 2));
    let ids: Vec<_> = last.unsent.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(ids, [first, second]);
    assert!(tokio::time::timeout(ARRIVES, events.next())
        .await
        .unwrap()
        .is_none());
}

/// The next `Disconnected`; any other event is a failure.
async fn disconnected(events: &mut Events) -> Disconnected {
    match next_event(events).await {
        Event::Disconnected(d) => d,
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test]
async fn reconnects_with_the_same_id_after_the_transport_fails() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let proxy = Proxy::start(relay.grpc_addr).await;
    let (client, mut events) = connect(config(&proxy.url(), "node-1")).unwrap();
    assert_eq!(wait_for(&mut events, connected).await, "node-1");
    client.send(Envelope::new("Ping", json!(1))).await.unwrap();
    wait_for(&mut events, echoed("1")).await;

    // Mid-stream, both sockets reset: no status from the relay, just a broken transport.
    assert_eq!(proxy.cut(Cut::Both), 1);
    let gone = disconnected(&mut events).await;
    assert!(
        !matches!(
            gone.reason,
            DisconnectReason::Relay { .. } | DisconnectReason::Closed
        ),
        "a transport failure, not the relay's answer: {gone:?}"
    );
    assert_eq!((gone.attempt, gone.unsent.len()), (1, 0), "{gone:?}");
    assert!(gone.reconnect_in.is_some(), "{gone:?}");

    // Back through the proxy (a new connection), welcomed under the same id.
    assert_eq!(wait_for(&mut events, connected).await, "node-1");
    assert!(proxy.accepted() >= 2, "{} connections", proxy.accepted());
    client.send(Envelope::new("Ping", json!(2))).await.unwrap();
    wait_for(&mut events, echoed("2")).await;
    client.close();
    relay.shut_down().await;
}

fn in_use(reason: &DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::Relay {
            status: tonic::Code::AlreadyExists,
            error: RelayError::PeerIdInUse(_)
        }
    )
}

#[tokio::test]
async fn retries_while_its_own_old_connection_still_holds_the_id() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let proxy = Proxy::start(relay.grpc_addr).await;
    // Refused ids are final by default; this is the one exception.
    let config = config(&proxy.url(), "node-1");
    assert!(!config.retry_refused_id);
    let (client, mut events) = connect(config).unwrap();
    assert_eq!(wait_for(&mut events, connected).await, "node-1");

    // The client's side is reset; the relay's side stays open, so the relay still holds node-1.
    assert_eq!(proxy.cut(Cut::ClientSide), 1);
    let gone = disconnected(&mut events).await;
    assert!(!in_use(&gone.reason) && !gone.is_final(), "{gone:?}");
    // Its reconnect meets its own stale connection: ALREADY_EXISTS, and it tries again.
    let refused = disconnected(&mut events).await;
    assert!(
        in_use(&refused.reason) && !refused.is_final(),
        "{refused:?}"
    );
    let queued = client.send(Envelope::new("Ping", json!(7))).await.unwrap();
    let again = disconnected(&mut events).await;
    assert!(
        in_use(&again.reason) && !again.is_final() && again.attempt > refused.attempt,
        "{again:?}"
    );

    // The relay drops the stale connection once its socket goes; the next try is welcomed.
    assert_eq!(proxy.release_held(), 1);
    let welcome = wait_for(&mut events, |e| match e {
        Event::Connected(welcome) => Some(welcome),
        Event::Disconnected(d) if !d.is_final() => None,
        other => panic!("expected retries, then Connected: {other:?}"),
    })
    .await;
    assert_eq!(welcome.peer_id, "node-1");
    // What was sent while refused goes out after the Welcome.
    let echo = wait_for(&mut events, |e| match e {
        Event::Message(m) if m.message_type == "Ping" => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (echo.payload.as_json(), echo.message_id.as_str()),
        ("7", queued.as_str())
    );
    client.close();
    relay.shut_down().await;
}

#[tokio::test]
async fn an_id_outside_the_relays_syntax_is_final() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let too_long = "x".repeat(129);
    // Printable ASCII, so the client sends them; the relay's syntax is narrower.
    let refused = [
        ("node 1", "invalid_peer_id"),
        ("node/1", "invalid_peer_id"),
        (too_long.as_str(), "invalid_peer_id"),
        ("relay", "reserved_peer_id"),
    ];
    for (id, code) in refused {
        let (client, mut events) = connect(config(&relay.grpc_url(), id)).unwrap();
        let queued = client.send(Envelope::new("Ping", json!(1))).await.unwrap();
        let last = disconnected(&mut events).await;
        match &last.reason {
            DisconnectReason::Relay {
                status: tonic::Code::InvalidArgument,
                error,
            } => assert_eq!(error.code(), code, "{id}"),
            other => panic!("{id}: expected INVALID_ARGUMENT, got {other:?}"),
        }
        assert!(last.is_final(), "{id}: {last:?}");
        assert_eq!(last.unsent.len(), 1, "{id}");
        assert_eq!(last.unsent[0].message_id, queued);
        assert!(
            events.next().await.is_none(),
            "{id}: the final event is the last"
        );
        let after = client.send(Envelope::new("Ping", json!(2))).await;
        assert!(matches!(after, Err(SendError::Closed(_))), "{after:?}");
    }
    // What gRPC metadata cannot carry is refused by `connect` itself, before any connection.
    for id in ["nœud-1", "node\t1", "node\n1"] {
        let refused = connect(config(&relay.grpc_url(), id)).map(|_| ());
        assert_eq!(
            refused,
            Err(ConnectError::InvalidNodeId(id.to_owned())),
            "{id:?}"
        );
    }
    relay.shut_down().await;
}

#[tokio::test]
async fn retry_refused_id_retries_an_id_in_use_until_its_holder_leaves() {
    let relay = Relay::start("127.0.0.1:0".parse().unwrap()).await;
    let (holder, mut holder_events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    wait_for(&mut holder_events, connected).await;

    let mut config = config(&relay.grpc_url(), "node-1");
    config.retry_refused_id = true;
    let (client, mut events) = connect(config).unwrap();
    for attempt in 1..=3 {
        let refused = disconnected(&mut events).await;
        assert!(
            in_use(&refused.reason) && !refused.is_final() && refused.attempt == attempt,
            "{refused:?}"
        );
    }
    let queued = client.send(Envelope::new("Ping", json!(1))).await.unwrap();

    holder.close();
    wait_for(&mut holder_events, |e| match e {
        Event::Disconnected(d) if d.is_final() => Some(()),
        _ => None,
    })
    .await;
    let welcome = wait_for(&mut events, |e| match e {
        Event::Connected(welcome) => Some(welcome),
        Event::Disconnected(d) if in_use(&d.reason) && !d.is_final() => None,
        other => panic!("expected refusals, then Connected: {other:?}"),
    })
    .await;
    assert_eq!(welcome.peer_id, "node-1");
    let echo = wait_for(&mut events, |e| match e {
        Event::Message(m) if m.message_type == "Ping" => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(echo.message_id, queued);
    client.close();
    relay.shut_down().await;
}

/// Polls `future` once, without waiting.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

#[tokio::test]
async fn send_waits_for_room_until_the_welcomed_client_drains_the_outbox() {
    let addr = free_addr();
    let mut config = config(&format!("http://{addr}"), "node-1");
    config.outbox_capacity = 1;
    let (client, mut events) = connect(config).unwrap();
    let first = client.try_send(Envelope::new("Ping", json!(1))).unwrap();
    let full = client.try_send(Envelope::new("Ping", json!(9)));
    assert!(matches!(full, Err(SendError::Full(_))), "{full:?}");

    // No relay: `send` waits, through failed attempts.
    let mut second = pin!(client.send(Envelope::new("Ping", json!(2))));
    for _ in 0..2 {
        assert!(poll_once(&mut second).await.is_pending());
        let failed = disconnected(&mut events).await;
        assert!(!failed.is_final(), "{failed:?}");
    }
    assert!(poll_once(&mut second).await.is_pending());

    let relay = Relay::start(addr).await;
    let second = tokio::time::timeout(ARRIVES, second)
        .await
        .expect("room once connected")
        .unwrap();
    // It completed only after the Welcome: the client takes from the outbox once welcomed, so
    // Connected is already queued in Events (after any failed attempts).
    let welcomed = loop {
        match poll_once(&mut pin!(events.next())).await {
            Poll::Ready(Some(Event::Connected(welcome))) => break Some(welcome.peer_id),
            Poll::Ready(Some(Event::Disconnected(d))) if !d.is_final() => continue,
            Poll::Ready(other) => panic!("{other:?}"),
            Poll::Pending => break None,
        }
    };
    assert_eq!(welcomed.as_deref(), Some("node-1"));
    // Both go out, in send order.
    for (payload, id) in [("1", first), ("2", second)] {
        let echo = wait_for(&mut events, |e| match e {
            Event::Message(m) if m.message_type == "Ping" => Some(m),
            _ => None,
        })
        .await;
        assert_eq!(
            (echo.payload.as_json(), echo.message_id.as_str()),
            (payload, id.as_str())
        );
    }
    client.close();
    relay.shut_down().await;
}

#[tokio::test]
async fn failed_attempts_wait_as_the_default_backoff_says() {
    // A "relay" that accepts each connection and resets it at once, noting when.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (accepts_tx, mut accepts) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // Noted before the reset, so before the client can see the attempt fail.
            let _ = accepts_tx.send(Instant::now());
            socket.set_zero_linger().unwrap();
        }
    });
    let (client, mut events) = connect(gsio_relay_client::Config::new(url, "node-1")).unwrap();
    let mut tried_at = tokio::time::timeout(ARRIVES, accepts.recv())
        .await
        .expect("a first try")
        .unwrap();
    // 250 ms doubling, each less up to half at random.
    for (attempt, full_ms) in [(1, 250), (2, 500), (3, 1000)] {
        let failed = disconnected(&mut events).await;
        assert!(
            matches!(failed.reason, DisconnectReason::Transport(_)) && failed.attempt == attempt,
            "{failed:?}"
        );
        let wait = failed.reconnect_in.expect("it retries");
        let full = Duration::from_millis(full_ms);
        assert!(wait <= full && wait >= full / 2, "{attempt}: {wait:?}");
        // The next try comes no sooner than announced.
        let next = tokio::time::timeout(ARRIVES, accepts.recv())
            .await
            .expect("another try")
            .unwrap();
        assert!(
            next - tried_at >= wait,
            "{attempt}: {:?} < {wait:?}",
            next - tried_at
        );
        tried_at = next;
    }
    client.close();
    acceptor.abort();
}

#[tokio::test]
async fn reconnects_after_being_cut_as_a_slow_consumer() {
    // A short queue per peer, so that a peer that stops reading is cut soon.
    let relay = Relay::start_with("127.0.0.1:0".parse().unwrap(), |config| {
        config.limits.queue_capacity = 32;
    })
    .await;
    let mut slow = config(&relay.grpc_url(), "node-1");
    slow.events_capacity = 1;
    let (client, mut events) = connect(slow).unwrap();
    assert_eq!(wait_for(&mut events, connected).await, "node-1");
    let mut sender = config(&relay.grpc_url(), "node-2");
    // Sends go out about as fast as `send` returns.
    sender.outbox_capacity = 1;
    let (sender, mut sent) = connect(sender).unwrap();
    wait_for(&mut sent, connected).await;

    // node-1 takes no event meanwhile: its client stops reading the stream, HTTP/2 flow
    // control stops the relay's writes to it, and its queue fills. The relay then cuts it and
    // tells the sender that node-1 missed its envelope.
    let big = Payload::from(json!("x".repeat(64 * 1024)));
    let mut missed = false;
    for _ in 0..2048 {
        let envelope = Envelope::new("LedgerSyncResponse", big.clone()).to("node-1");
        sender.send(envelope).await.unwrap();
        while let Poll::Ready(Some(event)) = poll_once(&mut pin!(sent.next())).await {
            missed |= matches!(event, Event::Rejected(RelayError::RecipientQueueFull(_)));
        }
        if missed {
            break;
        }
    }
    assert!(missed, "node-1 was never cut");

    let cut = wait_for(&mut events, a_disconnect).await;
    assert!(
        matches!(
            cut.reason,
            DisconnectReason::Relay {
                status: tonic::Code::ResourceExhausted,
                error: RelayError::SlowConsumer(_)
            }
        ) && !cut.is_final(),
        "{cut:?}"
    );
    assert_eq!(wait_for(&mut events, connected).await, "node-1");
    client.close();
    sender.close();
    relay.shut_down().await;
}

#[tokio::test]
async fn retries_a_relay_that_holds_too_many_peers() {
    let relay = Relay::start_with("127.0.0.1:0".parse().unwrap(), |config| {
        config.server.max_connections = 1;
    })
    .await;
    // A browser takes the only peer slot (the WebSocket port's TCP connections are not the
    // gRPC port's, so the client's connection is served and its stream refused).
    let (browser, _) = Browser::connect(&relay, "browser").await;
    let (client, mut events) = connect(config(&relay.grpc_url(), "node-1")).unwrap();
    for attempt in 1..=2 {
        let refused = disconnected(&mut events).await;
        assert!(
            matches!(
                refused.reason,
                DisconnectReason::Relay {
                    status: tonic::Code::ResourceExhausted,
                    error: RelayError::TooManyPeers(_)
                }
            ) && refused.attempt == attempt
                && !refused.is_final(),
            "{refused:?}"
        );
    }
    drop(browser);
    let welcome = wait_for(&mut events, |e| match e {
        Event::Connected(welcome) => Some(welcome),
        Event::Disconnected(d) if !d.is_final() => None,
        other => panic!("expected retries, then Connected: {other:?}"),
    })
    .await;
    assert_eq!(welcome.peer_id, "node-1");
    client.close();
    relay.shut_down().await;
}
