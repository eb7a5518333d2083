//! Shared by the client's integration tests: a real relay in this process (the shipped
//! `relay.toml`), on an address a test can restart it on, a TCP proxy a test can cut like a
//! failing network, and a browser-like WebSocket peer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gsio_relay_client::{Backoff, Config, Event, Events};
use gsio_relay_core::RelayConfig;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};
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
        Relay::start_with(grpc, |_| {}).await
    }

    /// As [`Relay::start`], with `change` made to the shipped relay.toml.
    pub async fn start_with(grpc: SocketAddr, change: impl FnOnce(&mut RelayConfig)) -> Relay {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../relay.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut config = RelayConfig::from_toml_str(&text, "relay.toml").unwrap();
        change(&mut config);
        config.server.grpc_listen = grpc;
        config.server.ws_listen = "127.0.0.1:0".parse().unwrap();
        config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
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

/// How [`Proxy::cut`] breaks the connections it carries.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Both sockets reset: the client and the relay both see the connection fail.
    Both,
    /// The client's socket reset, the relay's kept open and silent (as when the client's
    /// machine vanishes): the relay goes on holding the peer until [`Proxy::release_held`].
    ClientSide,
}

/// A TCP proxy between clients and the relay, which a test cuts like a failing network. It
/// accepts for as long as it lives, each connection forwarded to `target` both ways.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Every connection being forwarded holds a receiver.
    cuts: broadcast::Sender<Cut>,
    /// Relay-side sockets of [`Cut::ClientSide`] connections. A sync lock: only pushed to and
    /// drained, never held across an `.await`.
    held: Arc<Mutex<Vec<TcpStream>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cuts, _) = broadcast::channel(4);
        let held = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (accepted, cuts, held) = (accepted.clone(), cuts.clone(), held.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    // Subscribed before a byte is forwarded: a connection that carried a
                    // Welcome is one that a later cut reaches.
                    let cut = cuts.subscribe();
                    tokio::spawn(forward(client, target, cut, held.clone()));
                }
            }
        });
        Proxy {
            addr,
            accepted,
            cuts,
            held,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Breaks every connection being forwarded now; returns how many. Later ones are not cut.
    pub fn cut(&self, how: Cut) -> usize {
        self.cuts.send(how).unwrap_or(0)
    }

    /// Resets the relay-side sockets kept by [`Cut::ClientSide`]; returns how many.
    pub fn release_held(&self) -> usize {
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        for socket in &held {
            socket.set_zero_linger().unwrap();
        }
        held.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    mut cut: broadcast::Receiver<Cut>,
    held: Arc<Mutex<Vec<TcpStream>>>,
) {
    let Ok(mut relay) = TcpStream::connect(target).await else {
        return;
    };
    let how = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut relay) => return,
        how = cut.recv() => how,
    };
    // A zero linger makes the close a reset: no orderly end of stream, as when a network fails.
    client.set_zero_linger().unwrap();
    match how {
        Ok(Cut::ClientSide) => held.lock().unwrap().push(relay),
        _ => relay.set_zero_linger().unwrap(),
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
