//! Shared by the client's integration tests: a real relay in this process (the shipped
//! `relay.toml`), on an address a test can restart it on, and a browser-like WebSocket peer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gsio_relay_client::{Backoff, Config, Event, Events};
use gsio_relay_core::RelayConfig;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen.
pub const ARRIVES: Duration = Duration::from_secs(10);
/// At most this many events are read while waiting for one (every wait loop is bounded).
pub const MAX_EVENTS: usize = 500;

/// A free port on 127.0.0.1, for a relay a test restarts on the same address.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A relay running in this process.
pub struct Relay {
    pub grpc_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), gsio_relay::server::ServerError>>>,
}

impl Relay {
    /// The shipped relay.toml, gRPC on `grpc` (port 0: any), WebSocket on any port.
    pub async fn start(grpc: SocketAddr) -> Relay {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../relay.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut config = RelayConfig::from_toml_str(&text, "relay.toml").unwrap();
        config.server.grpc_listen = grpc;
        config.server.ws_listen = "127.0.0.1:0".parse().unwrap();
        let server = gsio_relay::Server::bind(config).await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let grpc_addr = server.grpc_addr();
        let ws_addr = server.ws_addr();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Relay {
            grpc_addr,
            ws_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Graceful shutdown (as on SIGTERM); returns once the relay has stopped and its ports are
    /// free.
    pub async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(ARRIVES, task)
            .await
            .expect("relay stopped in time")
            .unwrap()
            .unwrap();
    }
}

/// A client configuration for tests: quick, bounded retries.
pub fn config(url: &str, node_id: &str) -> Config {
    let mut config = Config::new(url, node_id);
    config.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        ..Backoff::default()
    };
    config.connect_timeout = Duration::from_secs(5);
    config
}

/// The next event, within [`ARRIVES`].
pub async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(ARRIVES, events.next())
        .await
        .expect("an event in time")
        .expect("the client has not stopped")
}

/// Reads events until `want` picks one; panics after [`MAX_EVENTS`] others.
pub async fn wait_for<T>(events: &mut Events, mut want: impl FnMut(Event) -> Option<T>) -> T {
    for _ in 0..MAX_EVENTS {
        if let Some(found) = want(next_event(events).await) {
            return found;
        }
    }
    panic!("not found within {MAX_EVENTS} events")
}

/// A browser-like WebSocket peer (JSON text frames).
pub struct Browser {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Browser {
    pub async fn connect(relay: &Relay, id: &str) -> (Browser, Value) {
        let url = format!("ws://{}/?node_id={id}", relay.ws_addr);
        let (ws, _) = tokio::time::timeout(ARRIVES, tokio_tungstenite::connect_async(url))
            .await
            .expect("connected in time")
            .expect("connected");
        let mut browser = Browser { ws };
        let welcome = browser.recv_text().await;
        let welcome: Value = serde_json::from_str(&welcome).unwrap();
        assert_eq!(welcome["message_type"], "Welcome", "{welcome}");
        (browser, welcome)
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame, within [`ARRIVES`].
    pub async fn recv_text(&mut self) -> String {
        for _ in 0..MAX_EVENTS {
            match tokio::time::timeout(ARRIVES, self.ws.next()).await {
                Err(_) => panic!("nothing within {ARRIVES:?}"),
                Ok(Some(Ok(Message::Text(text)))) => return text.to_string(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
        panic!("only pings")
    }

    /// The next envelope of type `message_type` (others skipped, boundedly), as raw text.
    pub async fn recv_type(&mut self, message_type: &str) -> String {
        for _ in 0..MAX_EVENTS {
            let text = self.recv_text().await;
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["message_type"] == message_type {
                return text;
            }
        }
        panic!("no {message_type} within {MAX_EVENTS} envelopes")
    }
}
