//! Errors: what the relay says ([`RelayError`], one variant per `code` of its `Error`
//! envelopes), why a connection ended ([`DisconnectReason`], with the relay's gRPC statuses
//! mapped to those codes), and what the local API refuses ([`ConnectError`], [`SendError`]).

use serde::Deserialize;

use crate::envelope::{Envelope, Payload};

/// What an `Error` envelope (or a status that ended the stream) says besides its code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detail {
    /// The relay's explanation, for humans.
    pub message: String,
    /// The `message_type` of the envelope this answers, when the relay could read it.
    pub message_type: Option<String>,
    /// The `message_id` of the envelope this answers: compare it with what
    /// [`Client::send`](crate::Client::send) returned to know which send failed.
    pub message_id: Option<String>,
}

macro_rules! relay_errors {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// What the relay refused, or could not deliver: one variant per `code` of its `Error`
        /// envelopes (README, "Errors"), each with the [`Detail`] of that answer, and
        /// [`RelayError::Other`] for a code this client does not know yet.
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[non_exhaustive]
        pub enum RelayError {
            $(
                $(#[$doc])*
                #[error("{}: {}", $code, .0.message)]
                $variant(Detail),
            )*
            /// A code this version of the client does not know.
            #[error("{code}: {}", detail.message)]
            Other { code: String, detail: Detail },
        }

        impl RelayError {
            /// The error from its wire `code`.
            pub fn from_code(code: &str, detail: Detail) -> RelayError {
                match code {
                    $($code => RelayError::$variant(detail),)*
                    _ => RelayError::Other { code: code.to_owned(), detail },
                }
            }

            /// The stable wire code (`unknown_recipient`, ...).
            pub fn code(&self) -> &str {
                match self {
                    $(RelayError::$variant(_) => $code,)*
                    RelayError::Other { code, .. } => code,
                }
            }

            pub fn detail(&self) -> &Detail {
                match self {
                    $(RelayError::$variant(detail))|* => detail,
                    RelayError::Other { detail, .. } => detail,
                }
            }

            /// Every code this client knows, in the README's order.
            pub const KNOWN_CODES: &'static [&'static str] = &[$($code),*];
        }
    };
}

relay_errors! {
    /// The frame is not valid JSON.
    InvalidJson => "invalid_json",
    /// The JSON is not an object.
    NotAnObject => "not_an_object",
    /// `message_type` missing or empty.
    MissingMessageType => "missing_message_type",
    /// A field of the wrong type, or a `payload_json` that is not one JSON value.
    InvalidField => "invalid_field",
    /// A field the envelope does not have.
    UnknownField => "unknown_field",
    /// Over the relay's `limits.max_message_bytes`.
    MessageTooLarge => "message_too_large",
    /// A binary WebSocket frame (never sent by this client).
    UnsupportedFrame => "unsupported_frame",
    /// An anonymous connection sent an envelope without `sender_id`.
    IdentityRequired => "identity_required",
    /// A peer id outside the relay's syntax (ends the stream: `INVALID_ARGUMENT`).
    InvalidPeerId => "invalid_peer_id",
    /// The id `relay` (ends the stream: `INVALID_ARGUMENT`).
    ReservedPeerId => "reserved_peer_id",
    /// The id belongs to another live connection (ends the stream: `ALREADY_EXISTS`).
    PeerIdInUse => "peer_id_in_use",
    /// `sender_id` is not this connection's id.
    SpoofedSender => "spoofed_sender",
    /// A directed envelope without `recipient_id`.
    MissingRecipient => "missing_recipient",
    /// A directed envelope to a peer that is not connected.
    UnknownRecipient => "unknown_recipient",
    /// A recipient was disconnected as a slow consumer and missed this envelope.
    RecipientQueueFull => "recipient_queue_full",
    /// This peer did not read fast enough (ends the stream: `RESOURCE_EXHAUSTED`).
    SlowConsumer => "slow_consumer",
    /// The relay is stopping (ends the stream: `UNAVAILABLE`).
    ShuttingDown => "shutting_down",
    /// A new stream while the relay holds `server.max_connections` peers (ends the stream at
    /// once: `RESOURCE_EXHAUSTED`; retried).
    TooManyPeers => "too_many_peers",
    /// The relay refused a connection from this address (`limits.max_connections_per_ip` or
    /// `limits.new_connections_per_ip_per_second`). A gRPC client sees its connection refused
    /// with an HTTP/2 `GOAWAY` (`RESOURCE_EXHAUSTED` from tonic, without the code in the
    /// message: a failed attempt that this client retries with its backoff); a WebSocket client
    /// gets it in a `429`'s body.
    TooManyConnectionsFromAddress => "too_many_connections_from_address",
    /// A WebSocket peer answered no ping in time (close reason; a gRPC connection that answers
    /// no HTTP/2 PING is simply closed).
    IdleTimeout => "idle_timeout",
    /// A `message_id` outside the relay's syntax.
    InvalidMessageId => "invalid_message_id",
    /// The id's `[auth]` rule asks for proof this client did not give (ends the stream:
    /// `UNAUTHENTICATED`).
    AuthenticationRequired => "authentication_required",
    /// The signed challenge did not verify (`UNAUTHENTICATED`).
    InvalidSignature => "invalid_signature",
    /// The key may not take this id (`PERMISSION_DENIED`).
    KeyNotAllowed => "key_not_allowed",
    /// A malformed or forged token (`UNAUTHENTICATED`).
    InvalidToken => "invalid_token",
    /// The token's `exp` has passed (`UNAUTHENTICATED`).
    TokenExpired => "token_expired",
    /// The token names another relay in `aud` (`UNAUTHENTICATED`).
    WrongAudience => "wrong_audience",
    /// `Authenticate` on a connection that already has its id.
    AlreadyIdentified => "already_identified",
    /// No id within the relay's `limits.identify_timeout_ms` (`UNAUTHENTICATED`).
    IdentificationTimeout => "identification_timeout",
    /// Over the relay's rate limits for this identity; the envelope went nowhere (and, kept up,
    /// the stream ends: `RESOURCE_EXHAUSTED`).
    RateLimited => "rate_limited",
    /// The native relay's memory for unfinished WebSocket messages is taken (a WebSocket close
    /// reason, 1013: try again later; never sent on gRPC).
    MemoryBudgetExhausted => "memory_budget_exhausted",
    /// (A cluster of relays) the envelope reached the relay's own peers but not those on other
    /// relays: NATS is unreachable, or the queue towards it is full.
    RelayUnreachable => "relay_unreachable",
}

impl RelayError {
    /// The `message_id` of the envelope this error answers, if the relay named one.
    pub fn message_id(&self) -> Option<&str> {
        self.detail().message_id.as_deref()
    }

    /// From an `Error` envelope's payload
    /// (`{"code": ..., "message": ..., "message_type": ..., "message_id": ...}`).
    pub fn from_payload(payload: &Payload) -> RelayError {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
            #[serde(default)]
            message_type: Option<String>,
            #[serde(default)]
            message_id: Option<String>,
        }
        match payload.deserialize::<Wire>() {
            Ok(wire) => RelayError::from_code(
                &wire.code,
                Detail {
                    message: wire.message,
                    message_type: wire.message_type,
                    message_id: wire.message_id,
                },
            ),
            Err(_) => RelayError::Other {
                code: String::new(),
                detail: Detail {
                    message: payload.as_json().to_owned(),
                    ..Detail::default()
                },
            },
        }
    }

    /// The relay's error behind a status that ended the stream, when the status is one the
    /// relay sends: its message starts with the code (`"peer_id_in_use: ..."`). Statuses without
    /// a known code are mapped by status only where nothing but the relay produces them
    /// (`INVALID_ARGUMENT`, `ALREADY_EXISTS`); an `UNAVAILABLE` without the relay's code is a
    /// transport failure, not a shutdown, and gets `None`.
    pub fn from_status(status: &tonic::Status) -> Option<RelayError> {
        let message = status.message();
        if let Some((code, _)) = message.split_once(": ") {
            if RelayError::KNOWN_CODES.contains(&code) {
                return Some(RelayError::from_code(code, detail_of(message)));
            }
        }
        match status.code() {
            tonic::Code::InvalidArgument => Some(RelayError::InvalidPeerId(detail_of(message))),
            tonic::Code::AlreadyExists => Some(RelayError::PeerIdInUse(detail_of(message))),
            _ => None,
        }
    }
}

fn detail_of(message: &str) -> Detail {
    Detail {
        message: message.to_owned(),
        ..Detail::default()
    }
}

/// Why a connection ended, or a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The relay ended the stream with this status, for this reason: `UNAVAILABLE` is
    /// [`RelayError::ShuttingDown`], `RESOURCE_EXHAUSTED` [`RelayError::SlowConsumer`] or
    /// [`RelayError::TooManyPeers`], `ALREADY_EXISTS` [`RelayError::PeerIdInUse`], `INVALID_ARGUMENT`
    /// [`RelayError::InvalidPeerId`] or [`RelayError::ReservedPeerId`].
    #[error("the relay ended the stream ({status:?}): {error}")]
    Relay {
        status: tonic::Code,
        error: RelayError,
    },
    /// Another status (from the transport, or from a server that is not this relay).
    #[error("the stream failed ({code:?}): {message}")]
    Status { code: tonic::Code, message: String },
    /// No connection (refused, timed out, broken).
    #[error("transport: {0}")]
    Transport(String),
    /// The stream ended with `OK` without this client leaving.
    #[error("the relay ended the stream")]
    Ended,
    /// The first envelope on the stream was not a `Welcome`.
    #[error("the relay did not start with a Welcome (got {0:?})")]
    NoWelcome(String),
    /// This client left ([`Client::close`](crate::Client::close), or every `Client` dropped).
    #[error("closed by this client")]
    Closed,
    /// The relay asks for proof of identity (a `Challenge`) and [`Config::credentials`] holds
    /// no key to answer it with: retrying cannot help.
    ///
    /// [`Config::credentials`]: crate::Config::credentials
    #[error("the relay asks for proof of identity (a Challenge): {0}")]
    CredentialsNeeded(String),
}

impl DisconnectReason {
    pub(crate) fn from_status(status: tonic::Status) -> DisconnectReason {
        match RelayError::from_status(&status) {
            Some(error) => DisconnectReason::Relay {
                status: status.code(),
                error,
            },
            None => DisconnectReason::Status {
                code: status.code(),
                message: error_chain(&status),
            },
        }
    }

    /// The relay refused this client's id: retrying cannot help, unless the id is in use by
    /// this client's own previous connection (see [`Config::retry_refused_id`](crate::Config)).
    pub fn is_refused_id(&self) -> bool {
        matches!(self, DisconnectReason::CredentialsNeeded(_))
            || matches!(
                self,
                DisconnectReason::Relay {
                    error: RelayError::InvalidPeerId(_)
                        | RelayError::ReservedPeerId(_)
                        | RelayError::PeerIdInUse(_)
                        | RelayError::AuthenticationRequired(_)
                        | RelayError::InvalidSignature(_)
                        | RelayError::KeyNotAllowed(_)
                        | RelayError::InvalidToken(_)
                        | RelayError::TokenExpired(_)
                        | RelayError::WrongAudience(_),
                    ..
                }
            )
    }
}

/// An error's message with its sources (tonic's transport errors say little on their own).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Why [`connect`](crate::connect) refused to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("invalid relay URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// gRPC metadata carries ASCII only (the relay's id syntax is a subset of it).
    #[error("node id {0:?} cannot be sent as gRPC metadata (printable ASCII only)")]
    InvalidNodeId(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
}

/// A send the client did not accept; the envelope is handed back, so nothing is lost unseen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The outbox holds `Config::outbox_capacity` envelopes already (only from
    /// [`Client::try_send`](crate::Client::try_send); `send` waits for room instead).
    #[error("the outbox is full")]
    Full(Box<Envelope>),
    /// The client has stopped (closed, a refused id, or out of reconnect attempts).
    #[error("the client has stopped")]
    Closed(Box<Envelope>),
}

impl SendError {
    /// The envelope that was not sent.
    pub fn into_envelope(self) -> Envelope {
        match self {
            SendError::Full(envelope) | SendError::Closed(envelope) => *envelope,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_code_round_trips_and_unknown_codes_fall_back() {
        assert_eq!(RelayError::KNOWN_CODES.len(), 32);
        for code in RelayError::KNOWN_CODES {
            let error = RelayError::from_code(code, Detail::default());
            assert_eq!(error.code(), *code);
            assert!(!matches!(error, RelayError::Other { .. }), "{code}");
        }
        let other = RelayError::from_code("brand_new", Detail::default());
        assert!(matches!(&other, RelayError::Other { code, .. } if code == "brand_new"));
        assert_eq!(other.code(), "brand_new");
    }

    /// One variant per code: exactly the codes the relay's core sends, and exactly the codes
    /// of the README's table (section "Errors"), none twice.
    #[test]
    fn one_variant_per_code_the_relay_sends_and_the_readme_lists() {
        use std::collections::BTreeSet;
        let client: BTreeSet<&str> = RelayError::KNOWN_CODES.iter().copied().collect();
        assert_eq!(client.len(), RelayError::KNOWN_CODES.len(), "a code twice");
        let relay: BTreeSet<&str> = gsio_relay_core::error::ErrorCode::ALL
            .iter()
            .map(|code| code.as_str())
            .collect();
        assert_eq!(client, relay);

        let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let section = readme
            .split("\n### Errors\n")
            .nth(1)
            .expect("an Errors section");
        let section = section.split("\n#").next().unwrap();
        let documented: BTreeSet<&str> = section
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split_once('`'))
            .map(|(code, _)| code)
            .collect();
        assert_eq!(client, documented);
    }

    #[test]
    fn error_payload_names_the_answered_message() {
        let payload = Payload::from(json!({
            "code": "unknown_recipient",
            "message": "no peer \"ghost\" is connected",
            "message_type": "LedgerSync",
            "message_id": "m-1",
        }));
        let error = RelayError::from_payload(&payload);
        assert!(matches!(error, RelayError::UnknownRecipient(_)));
        assert_eq!(error.message_id(), Some("m-1"));
        assert_eq!(error.detail().message_type.as_deref(), Some("LedgerSync"));
        assert_eq!(
            error.to_string(),
            "unknown_recipient: no peer \"ghost\" is connected"
        );
        // An older relay names no message_id.
        let old = RelayError::from_payload(&Payload::from(json!({"code": "spoofed_sender"})));
        assert_eq!(old.message_id(), None);
    }

    #[test]
    fn statuses_the_relay_ends_streams_with() {
        use tonic::{Code, Status};
        let table = [
            (
                Code::Unavailable,
                "shutting_down: the relay is shutting down",
                Some("shutting_down"),
            ),
            (
                Code::ResourceExhausted,
                "slow_consumer: outbound queue full",
                Some("slow_consumer"),
            ),
            (
                Code::ResourceExhausted,
                "too_many_peers: 9 peers",
                Some("too_many_peers"),
            ),
            (
                Code::AlreadyExists,
                "peer_id_in_use: peer id \"a\" is already connected",
                Some("peer_id_in_use"),
            ),
            (
                Code::InvalidArgument,
                "invalid_peer_id: bad",
                Some("invalid_peer_id"),
            ),
            (
                Code::InvalidArgument,
                "reserved_peer_id: relay",
                Some("reserved_peer_id"),
            ),
            (
                Code::InvalidArgument,
                "x-gsio-node-id must be ASCII",
                Some("invalid_peer_id"),
            ),
            (Code::Unavailable, "tcp connect error", None),
            (Code::Unknown, "h2 protocol error", None),
        ];
        for (code, message, expected) in table {
            let reason = DisconnectReason::from_status(Status::new(code, message));
            match (&reason, expected) {
                (DisconnectReason::Relay { status, error }, Some(expected)) => {
                    assert_eq!((*status, error.code()), (code, expected));
                }
                (DisconnectReason::Status { code: got, .. }, None) => assert_eq!(*got, code),
                _ => panic!("{message}: {reason:?}"),
            }
        }
        assert!(DisconnectReason::from_status(Status::already_exists("x")).is_refused_id());
        assert!(
            !DisconnectReason::from_status(Status::unavailable("shutting_down: x")).is_refused_id()
        );
    }
}
