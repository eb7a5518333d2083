//! A GSIO-Net node on the relay: joins with its id, announces itself to every node
//! (`NodeAnnounce`), and answers each `NodeListRequest` with a `NodeListResponse` to the
//! requester, listing the peers it knows from the relay (the `Welcome`, then `PeerJoined` and
//! `PeerLeft`). Browsers on the relay's WebSocket front are peers like any other.
//!
//! ```sh
//! cargo run --release                                   # the relay
//! cargo run -p gsio-relay-client --example node -- http://127.0.0.1:50051 node-1
//! ```
//!
//! The client reconnects by itself when the relay restarts; the node announces itself again on
//! every `Connected`, since a restarted relay's peers have not heard of it.

use std::collections::BTreeSet;

use gsio_relay_client::{connect, Client, Config, Disconnected, Envelope, Event, Events};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let node_id = args.next().unwrap_or_else(|| "node-1".into());
    let (client, events) = connect(Config::new(url, node_id))?;
    let last = run_node(client, events).await;
    eprintln!("stopped: {last:?}");
    Ok(())
}

/// The node's whole behaviour, until the client stops; returns its final event.
pub async fn run_node(client: Client, mut events: Events) -> Option<Disconnected> {
    // The other peers on the relay. The Welcome lists at most `discovery.welcome_peers_max`;
    // `PeerJoined` / `PeerLeft` keep the set current afterwards.
    let mut peers = BTreeSet::new();
    while let Some(event) = events.next().await {
        match event {
            Event::Connected(welcome) => {
                eprintln!(
                    "connected as {}; peers: {:?}",
                    welcome.peer_id, welcome.peers
                );
                peers = welcome.peers.into_iter().collect();
                let announce =
                    Envelope::new("NodeAnnounce", json!({ "node_id": client.node_id() }));
                if let Err(error) = client.send(announce).await {
                    eprintln!("announce not sent: {error}");
                }
            }
            Event::PeerJoined(id) => {
                peers.insert(id);
            }
            Event::PeerLeft(id) => {
                peers.remove(&id);
            }
            Event::Message(request) if request.message_type == "NodeListRequest" => {
                let response = request.reply("NodeListResponse", json!({ "nodes": peers }));
                if let Err(error) = client.send(response).await {
                    eprintln!(
                        "NodeListResponse to {} not sent: {error}",
                        request.sender_id
                    );
                }
            }
            Event::Message(_) => {}
            Event::Rejected(error) => {
                eprintln!("the relay refused {:?}: {error}", error.message_id());
            }
            Event::Disconnected(gone) => {
                eprintln!(
                    "disconnected: {} (retry in {:?})",
                    gone.reason, gone.reconnect_in
                );
                if gone.is_final() {
                    return Some(gone);
                }
            }
            _ => {}
        }
    }
    None
}
