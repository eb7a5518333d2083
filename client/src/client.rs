//! The handles a caller holds: [`Client`] to send, [`Events`] to receive, and [`connect`],
//! which makes both and starts the connection's task.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, watch};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

use crate::config::Config;
use crate::driver::Driver;
use crate::envelope::Envelope;
use crate::error::{ConnectError, SendError};
use crate::event::Event;

/// Starts a client: checks the configuration, then spawns the task that connects, identifies
/// with `node_id`, and reconnects as [`Config::backoff`] says. Returns at once; the first event
/// is [`Event::Connected`] or [`Event::Disconnected`] (the relay may not be up yet: the client
/// keeps trying).
///
/// Must be called from within a Tokio runtime. The connection lives until
/// [`Client::close`], until every [`Client`] clone is dropped, or until the client gives up
/// (a refused id, or [`Backoff::max_attempts`](crate::Backoff::max_attempts)).
pub fn connect(config: Config) -> Result<(Client, Events), ConnectError> {
    config.validate()?;
    let endpoint = Endpoint::from_shared(config.url.clone())
        .map_err(|e| ConnectError::InvalidUrl {
            url: config.url.clone(),
            reason: crate::error::error_chain(&e),
        })?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        // As the relay's server: a vanished relay is noticed within about 50 s.
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true);
    // gRPC's ASCII metadata is printable ASCII; `MetadataValue` alone would also pass tabs and
    // bytes 128-255 (the UTF-8 of "é"), which the relay then refuses as not ASCII.
    let printable = |b: u8| (0x20..=0x7e).contains(&b);
    let node_id = Some(config.node_id.as_str())
        .filter(|id| id.bytes().all(printable))
        .and_then(|id| MetadataValue::<Ascii>::try_from(id).ok())
        .ok_or_else(|| ConnectError::InvalidNodeId(config.node_id.clone()))?;
    let (outbox_tx, outbox_rx) = mpsc::channel(config.outbox_capacity);
    let (events_tx, events_rx) = mpsc::channel(config.events_capacity);
    let (closing_tx, closing_rx) = watch::channel(false);
    let client = Client {
        outbox: outbox_tx,
        node_id: Arc::from(config.node_id.as_str()),
        closing: Arc::new(closing_tx),
    };
    let driver = Driver::new(config, endpoint, node_id, outbox_rx, closing_rx, events_tx);
    tokio::spawn(driver.run());
    Ok((client, Events { events: events_rx }))
}

/// Sends envelopes through the relay. Cheap to clone; every clone feeds the same outbox.
///
/// # What happens to a send
/// An accepted envelope goes into the outbox (bounded by [`Config::outbox_capacity`]), which
/// the connection's task empties into the stream, in send order, while connected. While
/// disconnected, envelopes wait there and are written after the next `Welcome` (once this node
/// is identified again). An envelope is never silently dropped by the client:
/// - the outbox is full: [`Client::send`] waits for room, [`Client::try_send`] returns
///   [`SendError::Full`] with the envelope;
/// - the client has stopped: [`SendError::Closed`] with the envelope, and the envelopes still in
///   the outbox come back in the final [`Disconnected::unsent`](crate::Disconnected::unsent).
///
/// What the client cannot know: whether the envelopes written just before a connection broke
/// reached the relay (gRPC has no per-message acknowledgement). Those few (already in the
/// transport's write buffer) are not written again, so nothing is duplicated; the
/// [`Event::Disconnected`] that follows is the signal that some may be lost, and their
/// `message_id`s let a peer that wants exactly-once ask again and drop duplicates.
#[derive(Debug, Clone)]
pub struct Client {
    outbox: mpsc::Sender<Envelope>,
    /// Filled into `sender_id` when a caller leaves it empty.
    node_id: Arc<str>,
    /// Raised by [`Client::close`]; dropped with the last clone, which closes too.
    closing: Arc<watch::Sender<bool>>,
}

impl Client {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Queues `envelope`, waiting for room in the outbox, and returns its `message_id` (the one
    /// given, or a new UUID v4). An empty `sender_id` becomes this node's id.
    ///
    /// Cancel safety: cancelled while waiting for room, nothing was queued.
    pub async fn send(&self, envelope: Envelope) -> Result<String, SendError> {
        let envelope = self.complete(envelope);
        let message_id = envelope.message_id.clone();
        match self.outbox.reserve().await {
            Ok(permit) => {
                permit.send(envelope);
                Ok(message_id)
            }
            Err(_) => Err(SendError::Closed(Box::new(envelope))),
        }
    }

    /// As [`Client::send`], without waiting: a full outbox is [`SendError::Full`].
    pub fn try_send(&self, envelope: Envelope) -> Result<String, SendError> {
        let envelope = self.complete(envelope);
        let message_id = envelope.message_id.clone();
        match self.outbox.try_send(envelope) {
            Ok(()) => Ok(message_id),
            Err(mpsc::error::TrySendError::Full(envelope)) => {
                Err(SendError::Full(Box::new(envelope)))
            }
            Err(mpsc::error::TrySendError::Closed(envelope)) => {
                Err(SendError::Closed(Box::new(envelope)))
            }
        }
    }

    /// Leaves the relay: no more sends are accepted; if connected, what is in the outbox is
    /// written, the stream is closed, and the relay's last envelopes for this node are still
    /// delivered as events; if disconnected, the client stops at once. Either way the last event
    /// is a final [`Event::Disconnected`] (with the unwritten envelopes, if any).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    fn complete(&self, mut envelope: Envelope) -> Envelope {
        if envelope.message_id.is_empty() {
            envelope.message_id = uuid::Uuid::new_v4().to_string();
        }
        if envelope.sender_id.is_empty() {
            envelope.sender_id = self.node_id.to_string();
        }
        envelope
    }
}

/// The events of one client, in order. Ends (`None`) after the final
/// [`Event::Disconnected`].
///
/// Backpressure: the client holds at most [`Config::events_capacity`] events that were not
/// taken; past that it stops reading from the relay. Dropping `Events` is fine: events are then
/// discarded and the client goes on sending.
#[derive(Debug)]
pub struct Events {
    events: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the client has stopped. Cancel safe.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl tokio_stream::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}
