//! The task behind a client: it opens the `Exchange` stream, identifies, moves envelopes both
//! ways, and reconnects with backoff until it is told to stop or retrying cannot help.

use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tonic::Streaming;

use ed25519_dalek::Signer;

use crate::config::{Config, Credentials};
use crate::envelope::Envelope;
use crate::error::{error_chain, DisconnectReason, RelayError};
use crate::event::{events_for, Disconnected, Event, Welcome};
use crate::pb;
use crate::pb::relay_service_client::RelayServiceClient;
use crate::{NODE_ID_METADATA, RELAY_ID};

/// The largest envelope the client accepts or writes: twice the relay's largest
/// `limits.max_message_bytes` (64 MiB), its own hard frame limit. The relay enforces its
/// configured limit; this only keeps tonic's default (4 MiB) from cutting the stream first.
const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// Envelopes handed to the stream that tonic has not taken yet. One, so that almost everything
/// waiting stays in the outbox, which survives a reconnect.
const TO_STREAM_CAPACITY: usize = 1;

pub(crate) struct Driver {
    config: Config,
    endpoint: Endpoint,
    node_id: MetadataValue<Ascii>,
    outbox: mpsc::Receiver<Envelope>,
    /// Taken from the outbox but not yet handed to a stream when it ended: written first on
    /// the next one, so reconnecting never reorders or loses it.
    pending: Option<Envelope>,
    closing: watch::Receiver<bool>,
    events: mpsc::Sender<Event>,
}

struct SessionEnd {
    reason: DisconnectReason,
    /// The relay welcomed this node on this connection.
    welcomed: bool,
}

impl SessionEnd {
    fn before_welcome(reason: DisconnectReason) -> SessionEnd {
        SessionEnd {
            reason,
            welcomed: false,
        }
    }
}

/// Resolves once the client is closing: [`Client::close`](crate::Client::close), or every
/// `Client` dropped (the watch sender with it).
async fn closing(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

impl Driver {
    pub(crate) fn new(
        config: Config,
        endpoint: Endpoint,
        node_id: MetadataValue<Ascii>,
        outbox: mpsc::Receiver<Envelope>,
        closing: watch::Receiver<bool>,
        events: mpsc::Sender<Event>,
    ) -> Driver {
        Driver {
            config,
            endpoint,
            node_id,
            outbox,
            pending: None,
            closing,
            events,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut failures = 0u32;
        let mut welcomed_before = false;
        loop {
            let end = self.session().await;
            if end.welcomed {
                failures = 0;
                welcomed_before = true;
            }
            failures = failures.saturating_add(1);
            let reason = end.reason;
            // Our own old connection may still hold the id after a transport failure.
            let stale_self = welcomed_before
                && matches!(
                    reason,
                    DisconnectReason::Relay {
                        error: RelayError::PeerIdInUse(_),
                        ..
                    }
                );
            let give_up = reason == DisconnectReason::Closed
                || self.is_closing()
                || (reason.is_refused_id() && !self.config.retry_refused_id && !stale_self)
                || self.config.backoff.exhausted(failures);
            if give_up {
                return self.stop(reason, failures).await;
            }
            let delay = self.config.backoff.delay(failures, fastrand::f64());
            self.emit(Event::Disconnected(Disconnected {
                reason,
                attempt: failures,
                reconnect_in: Some(delay),
                unsent: Vec::new(),
            }))
            .await;
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = closing(&mut self.closing) => {
                    return self.stop(DisconnectReason::Closed, failures).await;
                }
            }
        }
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow() || self.closing.has_changed().is_err()
    }

    async fn emit(&self, event: Event) {
        // Nobody listening (Events dropped) is allowed: the client goes on sending.
        let _ = self.events.send(event).await;
    }

    /// The last event: no more sends, and what never reached a stream goes back to the caller.
    async fn stop(mut self, reason: DisconnectReason, attempt: u32) {
        self.outbox.close();
        let mut unsent: Vec<Envelope> = self.pending.take().into_iter().collect();
        while let Ok(envelope) = self.outbox.try_recv() {
            unsent.push(envelope);
        }
        self.emit(Event::Disconnected(Disconnected {
            reason,
            attempt,
            reconnect_in: None,
            unsent,
        }))
        .await;
    }

    /// One connection: connect, open the stream with this node's id, wait for the Welcome,
    /// then exchange envelopes until the stream ends.
    async fn session(&mut self) -> SessionEnd {
        let limit = self.config.connect_timeout;
        let channel = match timeout(limit, self.endpoint.connect()).await {
            Err(_) => {
                return SessionEnd::before_welcome(DisconnectReason::Transport(format!(
                    "no connection within {limit:?}"
                )))
            }
            Ok(Err(error)) => {
                return SessionEnd::before_welcome(DisconnectReason::Transport(error_chain(&error)))
            }
            Ok(Ok(channel)) => channel,
        };
        let mut grpc = RelayServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (to_stream, request_stream) = mpsc::channel(TO_STREAM_CAPACITY);
        let mut request = tonic::Request::new(ReceiverStream::new(request_stream));
        request
            .metadata_mut()
            .insert(NODE_ID_METADATA, self.node_id.clone());
        if let Some(Credentials::Token(token)) = &self.config.credentials {
            match MetadataValue::try_from(format!("Bearer {token}")) {
                Ok(value) => {
                    request.metadata_mut().insert("authorization", value);
                }
                Err(_) => {
                    return SessionEnd::before_welcome(DisconnectReason::Transport(
                        "the token cannot be sent as gRPC metadata (printable ASCII only)".into(),
                    ))
                }
            }
        }
        let mut inbound = match timeout(limit, grpc.exchange(request)).await {
            Err(_) => {
                return SessionEnd::before_welcome(DisconnectReason::Transport(format!(
                    "the relay did not open the stream within {limit:?}"
                )))
            }
            Ok(Err(status)) => {
                return SessionEnd::before_welcome(DisconnectReason::from_status(status))
            }
            Ok(Ok(response)) => response.into_inner(),
        };
        let first = match timeout(limit, inbound.message()).await {
            Err(_) => Err(DisconnectReason::Transport(format!(
                "no Welcome within {limit:?}"
            ))),
            Ok(Ok(None)) => Err(DisconnectReason::Ended),
            Ok(Err(status)) => Err(DisconnectReason::from_status(status)),
            Ok(Ok(Some(envelope))) => {
                let mut envelope = Envelope::from_pb(envelope);
                if envelope.sender_id == RELAY_ID && envelope.message_type == "Challenge" {
                    // The relay asks for proof: answer, then the Welcome follows.
                    match self.answer(&envelope, &to_stream).await {
                        Err(reason) => return SessionEnd::before_welcome(reason),
                        Ok(()) => match timeout(limit, inbound.message()).await {
                            Ok(Ok(Some(next))) => {
                                envelope = Envelope::from_pb(next);
                                if envelope.sender_id == RELAY_ID
                                    && envelope.message_type == "Error"
                                {
                                    // The proof was refused: the stream ends with its status.
                                    return SessionEnd::before_welcome(
                                        match timeout(limit, inbound.message()).await {
                                            Ok(Err(status)) => {
                                                DisconnectReason::from_status(status)
                                            }
                                            _ => DisconnectReason::NoWelcome(envelope.message_type),
                                        },
                                    );
                                }
                            }
                            Err(_) => {
                                return SessionEnd::before_welcome(DisconnectReason::Transport(
                                    format!("no Welcome within {limit:?} of authenticating"),
                                ))
                            }
                            Ok(Ok(None)) => {
                                return SessionEnd::before_welcome(DisconnectReason::Ended)
                            }
                            Ok(Err(status)) => {
                                return SessionEnd::before_welcome(DisconnectReason::from_status(
                                    status,
                                ))
                            }
                        },
                    }
                }
                if envelope.sender_id == RELAY_ID && envelope.message_type == "Welcome" {
                    Ok(Welcome::from_envelope(envelope))
                } else {
                    Err(DisconnectReason::NoWelcome(envelope.message_type))
                }
            }
        };
        match first {
            Ok(welcome) => self.emit(Event::Connected(welcome)).await,
            Err(reason) => return SessionEnd::before_welcome(reason),
        }
        SessionEnd {
            reason: self.exchange(inbound, to_stream).await,
            welcomed: true,
        }
    }

    /// Answers the relay's `Challenge` with this node's signature; without a key to sign with,
    /// the relay's rule cannot be met.
    async fn answer(
        &self,
        challenge: &Envelope,
        to_stream: &mpsc::Sender<pb::Envelope>,
    ) -> Result<(), DisconnectReason> {
        #[derive(serde::Deserialize)]
        struct Challenge {
            nonce: String,
            audience: String,
        }
        let Some(Credentials::Signed(key)) = &self.config.credentials else {
            return Err(DisconnectReason::CredentialsNeeded(
                "set Config::credentials to a key this relay accepts for the id".into(),
            ));
        };
        let challenge: Challenge = challenge.payload.deserialize().map_err(|error| {
            DisconnectReason::Transport(format!("the relay's Challenge is unreadable: {error}"))
        })?;
        let id = &self.config.node_id;
        let signature = key.sign(&crate::signed_message(
            &challenge.audience,
            &challenge.nonce,
            id,
        ));
        let payload = serde_json::json!({
            "public_key": crate::hex(key.verifying_key().as_bytes()),
            "signature": crate::hex(&signature.to_bytes()),
        });
        let mut envelope = Envelope::new("Authenticate", payload);
        envelope.sender_id = id.clone();
        envelope.message_id = uuid::Uuid::new_v4().to_string();
        to_stream
            .send(envelope.into_pb())
            .await
            .map_err(|_| DisconnectReason::Ended)
    }

    /// Moves envelopes both ways on a welcomed stream until it ends; returns why.
    ///
    /// Order: the outbox is written in send order ([`Driver::pending`] first). Backpressure:
    /// an event waits for room in `Events`, and meanwhile the stream is not read.
    async fn exchange(
        &mut self,
        mut inbound: Streaming<pb::Envelope>,
        to_stream: mpsc::Sender<pb::Envelope>,
    ) -> DisconnectReason {
        let mut to_stream = Some(to_stream);
        let mut leaving = self.is_closing();
        if leaving {
            self.outbox.close();
        }
        let mut outbox_done = false;
        // The call is over (tonic dropped the request stream); `inbound` is about to say why.
        let mut call_over = false;
        loop {
            if call_over || (leaving && outbox_done && self.pending.is_none()) {
                // Everything is written: end our side; the relay delivers what it holds for
                // this node, then ends the stream with OK.
                to_stream = None;
            }
            tokio::select! {
                next = inbound.message() => match next {
                    Ok(Some(envelope)) => {
                        for event in events_for(Envelope::from_pb(envelope)) {
                            self.emit(event).await;
                        }
                    }
                    Ok(None) if leaving => return DisconnectReason::Closed,
                    Ok(None) => return DisconnectReason::Ended,
                    Err(status) => return DisconnectReason::from_status(status),
                },
                _ = closing(&mut self.closing), if !leaving => {
                    leaving = true;
                    self.outbox.close();
                }
                next = self.outbox.recv(), if self.pending.is_none() && !outbox_done => {
                    match next {
                        Some(envelope) => self.pending = Some(envelope),
                        None => outbox_done = true,
                    }
                }
                permit = async { to_stream.as_ref().expect("guarded").reserve().await },
                    if self.pending.is_some() && to_stream.is_some() =>
                {
                    match permit {
                        Ok(permit) => {
                            let envelope = self.pending.take().expect("guarded");
                            permit.send(envelope.into_pb());
                        }
                        Err(_) => call_over = true,
                    }
                }
            }
        }
    }
}
