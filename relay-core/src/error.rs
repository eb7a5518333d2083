//! Every answer the relay gives to bad input or a failed delivery.
//!
//! Each [`RelayError`] has one stable, machine-readable [`ErrorCode`] (the `code` of the `Error`
//! envelope's payload, documented in the README) and a human message. The native gRPC front maps
//! the few errors that end a stream to a `tonic::Status`; everything else is answered with an
//! `Error` envelope and the connection stays open.

use std::fmt;

/// The stable codes carried in `Error` envelopes. Clients match on these; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    NotAnObject,
    MissingMessageType,
    InvalidField,
    UnknownField,
    MessageTooLarge,
    UnsupportedFrame,
    IdentityRequired,
    InvalidPeerId,
    InvalidMessageId,
    ReservedPeerId,
    PeerIdInUse,
    SpoofedSender,
    MissingRecipient,
    UnknownRecipient,
    RecipientQueueFull,
    SlowConsumer,
    ShuttingDown,
    TooManyPeers,
    AuthenticationRequired,
    InvalidSignature,
    KeyNotAllowed,
    InvalidToken,
    TokenExpired,
    WrongAudience,
    AlreadyIdentified,
    IdentificationTimeout,
    RateLimited,
    TooManyConnectionsFromAddress,
    IdleTimeout,
    MemoryBudgetExhausted,
    RelayUnreachable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 32] = [
        ErrorCode::InvalidJson,
        ErrorCode::NotAnObject,
        ErrorCode::MissingMessageType,
        ErrorCode::InvalidField,
        ErrorCode::UnknownField,
        ErrorCode::MessageTooLarge,
        ErrorCode::UnsupportedFrame,
        ErrorCode::IdentityRequired,
        ErrorCode::InvalidPeerId,
        ErrorCode::InvalidMessageId,
        ErrorCode::ReservedPeerId,
        ErrorCode::PeerIdInUse,
        ErrorCode::SpoofedSender,
        ErrorCode::MissingRecipient,
        ErrorCode::UnknownRecipient,
        ErrorCode::RecipientQueueFull,
        ErrorCode::SlowConsumer,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManyPeers,
        ErrorCode::AuthenticationRequired,
        ErrorCode::InvalidSignature,
        ErrorCode::KeyNotAllowed,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::WrongAudience,
        ErrorCode::AlreadyIdentified,
        ErrorCode::IdentificationTimeout,
        ErrorCode::RateLimited,
        ErrorCode::TooManyConnectionsFromAddress,
        ErrorCode::IdleTimeout,
        ErrorCode::MemoryBudgetExhausted,
        ErrorCode::RelayUnreachable,
    ];

    /// A proof of identity refused (README, "Authentication"): the connection ends with it.
    pub fn is_proof_refused(self) -> bool {
        matches!(
            self,
            ErrorCode::AuthenticationRequired
                | ErrorCode::InvalidSignature
                | ErrorCode::KeyNotAllowed
                | ErrorCode::InvalidToken
                | ErrorCode::TokenExpired
                | ErrorCode::WrongAudience
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::MissingMessageType => "missing_message_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::IdentityRequired => "identity_required",
            ErrorCode::InvalidPeerId => "invalid_peer_id",
            ErrorCode::InvalidMessageId => "invalid_message_id",
            ErrorCode::ReservedPeerId => "reserved_peer_id",
            ErrorCode::PeerIdInUse => "peer_id_in_use",
            ErrorCode::SpoofedSender => "spoofed_sender",
            ErrorCode::MissingRecipient => "missing_recipient",
            ErrorCode::UnknownRecipient => "unknown_recipient",
            ErrorCode::RecipientQueueFull => "recipient_queue_full",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::TooManyPeers => "too_many_peers",
            ErrorCode::AuthenticationRequired => "authentication_required",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::KeyNotAllowed => "key_not_allowed",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongAudience => "wrong_audience",
            ErrorCode::AlreadyIdentified => "already_identified",
            ErrorCode::IdentificationTimeout => "identification_timeout",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyConnectionsFromAddress => "too_many_connections_from_address",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::MemoryBudgetExhausted => "memory_budget_exhausted",
            ErrorCode::RelayUnreachable => "relay_unreachable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the relay sends (RFC 6455, section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// "Try Again Later": the relay is out of a shared resource, not refusing this peer.
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// The code to answer a peer's close frame with: its own code where one may be sent back,
    /// else [`NORMAL`] (1005, 1006 and 1015 only describe a closure, they are never sent).
    pub fn reply_to(code: u16) -> u16 {
        match code {
            1000..=1003 | 1007..=1014 | 3000..=4999 => code,
            _ => NORMAL,
        }
    }
}

/// gRPC status codes the relay ends streams with (`google.rpc.Code`).
pub mod grpc_code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Why an envelope was refused or could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("the frame is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("an envelope must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("`message_type` is missing or empty")]
    MissingMessageType,
    #[error("field `{field}` must be {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    #[error(
        "unknown field `{0}`; an envelope has message_type, message_id, sender_id, recipient_id and payload"
    )]
    UnknownField(String),
    #[error("the message is {size} bytes, over the limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    /// A frame so large that the relay will not read it at all; the connection ends.
    #[error("a frame over {limit} bytes ends the connection")]
    FrameTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedFrame(&'static str),
    #[error("this connection has no peer id yet: set `sender_id` (or connect with ?node_id=ID)")]
    IdentityRequired,
    #[error("peer id {id:?} is invalid: {reason}")]
    InvalidPeerId { id: String, reason: &'static str },
    #[error("message id {id:?} is invalid: {reason}")]
    InvalidMessageId { id: String, reason: &'static str },
    #[error("peer id \"relay\" is reserved for the relay itself")]
    ReservedPeerId,
    #[error("peer id {0:?} is already connected")]
    PeerIdInUse(String),
    #[error("this connection is {actual:?}; it cannot send as {claimed:?}")]
    SpoofedSender { claimed: String, actual: String },
    #[error("message type {0:?} is routed as directed, but `recipient_id` is empty")]
    MissingRecipient(String),
    #[error("no peer {0:?} is connected")]
    UnknownRecipient(String),
    #[error("peer {0:?} is not reading fast enough; it was disconnected and this message was not delivered to it")]
    RecipientQueueFull(String),
    #[error("outbound queue full ({0} messages): this peer did not read fast enough")]
    SlowConsumer(usize),
    #[error("the relay is shutting down")]
    ShuttingDown,
    /// A new peer past `server.max_connections` (native relay). Only a gRPC stream is refused
    /// with it: a WebSocket client past the limit is not accepted yet, it waits.
    #[error("the relay already holds its limit of {limit} peers (server.max_connections); try again later")]
    TooManyPeers { limit: usize },
    /// The id's `[auth]` rule asks for proof (a signed challenge or a token) and none was given.
    #[error("{0}")]
    AuthenticationRequired(String),
    /// A signed challenge that does not verify: a wrong key, a wrong id, or a signature made
    /// for another connection's challenge (a replay).
    #[error("the signature does not verify: {0}")]
    InvalidSignature(String),
    /// A valid signature by a key that may not take the id it claims.
    #[error("{0}")]
    KeyNotAllowed(String),
    /// A token that is malformed, not HS256, or not signed with the relay's secret.
    #[error("the token is not valid: {0}")]
    InvalidToken(String),
    #[error("the token expired at {expired_at} (unix seconds); it is now {now}")]
    TokenExpired { expired_at: u64, now: u64 },
    #[error("the token is for {got}, not for this relay ({expected:?})")]
    WrongAudience { got: String, expected: String },
    #[error("this connection is already {0:?}; `Authenticate` is only for a new connection")]
    AlreadyIdentified(String),
    /// A connection that did not identify (or authenticate) within `limits.identify_timeout_ms`.
    #[error("no peer id after {0} ms: a connection must identify itself (or authenticate) first")]
    IdentificationTimeout(u64),
    /// Over the sender's `limits` rate; `disconnect` when it kept going and is being cut off.
    #[error("{0}")]
    RateLimited(String),
    /// A new connection from an address past `limits.max_connections_per_ip` or
    /// `limits.new_connections_per_ip_per_second` (see [`crate::address`]). Refused before the
    /// connection is served: WebSocket with HTTP 429, gRPC with a `GOAWAY` `ENHANCE_YOUR_CALM`,
    /// each naming this code.
    #[error("{0}")]
    TooManyConnectionsFromAddress(crate::address::Refusal),
    /// A WebSocket peer sent nothing, not even a Pong, within `limits.pong_timeout_ms` of a
    /// ping: its connection is closed and its id freed.
    #[error("no frame from this peer within {pong_timeout_ms} ms of a ping")]
    IdleTimeout { pong_timeout_ms: u64 },
    /// A WebSocket message still being received would take the memory that every connection's
    /// unfinished messages share past `limits.partial_messages_budget_bytes` (native relay): the
    /// connection whose bytes would go over it ends, and may try again later.
    #[error("the relay's memory for messages still being received ({budget} bytes, limits.partial_messages_budget_bytes) is taken; try again later")]
    MemoryBudgetExhausted { budget: u64 },
    /// The link to the other relays of a cluster (`[cluster]`) cannot take the message now:
    /// NATS is unreachable, or the queue towards it is full. Peers on this relay still got it;
    /// those on the others did not.
    #[error("{0}; this message did not reach peers on other relays")]
    RelayUnreachable(String),
}

impl RelayError {
    /// A gRPC message that does not decode as a `gsio.relay.v1.Envelope`: it ends the stream
    /// (the decoder cannot find the next message after it).
    pub fn undecodable_envelope() -> RelayError {
        RelayError::InvalidField {
            field: "envelope",
            expected: "a protobuf gsio.relay.v1.Envelope",
        }
    }

    /// The reason of a WebSocket close frame for this error: the code, then the message, cut to
    /// the 123 bytes a close frame allows (on a character boundary).
    pub fn close_reason(&self) -> String {
        const MAX: usize = 123;
        let mut reason = format!("{}: {self}", self.code());
        if reason.len() > MAX {
            let mut end = MAX;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        reason
    }

    /// The WebSocket close code (RFC 6455, section 7.4.1) of a connection this error ends.
    pub fn ws_close_code(&self) -> u16 {
        match self {
            RelayError::ShuttingDown => close_code::GOING_AWAY,
            RelayError::FrameTooLarge { .. } => close_code::TOO_BIG,
            RelayError::MemoryBudgetExhausted { .. } => close_code::TRY_AGAIN_LATER,
            _ => close_code::POLICY,
        }
    }

    /// The gRPC status code (numeric, as in `google.rpc.Code`) that ends a stream for this
    /// error. Only errors that end a connection get here; the rest are `Error` envelopes.
    pub fn grpc_code(&self) -> i32 {
        match self.code() {
            // `invalid_field` ends a gRPC stream whose bytes are not an `Envelope` at all.
            ErrorCode::InvalidPeerId | ErrorCode::ReservedPeerId | ErrorCode::InvalidField => {
                grpc_code::INVALID_ARGUMENT
            }
            ErrorCode::PeerIdInUse => grpc_code::ALREADY_EXISTS,
            ErrorCode::KeyNotAllowed => grpc_code::PERMISSION_DENIED,
            code if code.is_proof_refused() => grpc_code::UNAUTHENTICATED,
            ErrorCode::IdentificationTimeout => grpc_code::UNAUTHENTICATED,
            ErrorCode::RateLimited => grpc_code::RESOURCE_EXHAUSTED,
            ErrorCode::SlowConsumer
            | ErrorCode::MessageTooLarge
            | ErrorCode::TooManyPeers
            | ErrorCode::TooManyConnectionsFromAddress
            | ErrorCode::MemoryBudgetExhausted => grpc_code::RESOURCE_EXHAUSTED,
            ErrorCode::ShuttingDown | ErrorCode::IdleTimeout => grpc_code::UNAVAILABLE,
            _ => grpc_code::INTERNAL,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            RelayError::InvalidJson(_) => ErrorCode::InvalidJson,
            RelayError::NotAnObject(_) => ErrorCode::NotAnObject,
            RelayError::MissingMessageType => ErrorCode::MissingMessageType,
            RelayError::InvalidField { .. } => ErrorCode::InvalidField,
            RelayError::UnknownField(_) => ErrorCode::UnknownField,
            RelayError::MessageTooLarge { .. } | RelayError::FrameTooLarge { .. } => {
                ErrorCode::MessageTooLarge
            }
            RelayError::UnsupportedFrame(_) => ErrorCode::UnsupportedFrame,
            RelayError::IdentityRequired => ErrorCode::IdentityRequired,
            RelayError::InvalidPeerId { .. } => ErrorCode::InvalidPeerId,
            RelayError::InvalidMessageId { .. } => ErrorCode::InvalidMessageId,
            RelayError::ReservedPeerId => ErrorCode::ReservedPeerId,
            RelayError::PeerIdInUse(_) => ErrorCode::PeerIdInUse,
            RelayError::SpoofedSender { .. } => ErrorCode::SpoofedSender,
            RelayError::MissingRecipient(_) => ErrorCode::MissingRecipient,
            RelayError::UnknownRecipient(_) => ErrorCode::UnknownRecipient,
            RelayError::RecipientQueueFull(_) => ErrorCode::RecipientQueueFull,
            RelayError::SlowConsumer(_) => ErrorCode::SlowConsumer,
            RelayError::ShuttingDown => ErrorCode::ShuttingDown,
            RelayError::TooManyPeers { .. } => ErrorCode::TooManyPeers,
            RelayError::RelayUnreachable(_) => ErrorCode::RelayUnreachable,
            RelayError::AuthenticationRequired(_) => ErrorCode::AuthenticationRequired,
            RelayError::InvalidSignature(_) => ErrorCode::InvalidSignature,
            RelayError::KeyNotAllowed(_) => ErrorCode::KeyNotAllowed,
            RelayError::InvalidToken(_) => ErrorCode::InvalidToken,
            RelayError::TokenExpired { .. } => ErrorCode::TokenExpired,
            RelayError::WrongAudience { .. } => ErrorCode::WrongAudience,
            RelayError::AlreadyIdentified(_) => ErrorCode::AlreadyIdentified,
            RelayError::IdentificationTimeout(_) => ErrorCode::IdentificationTimeout,
            RelayError::RateLimited(_) => ErrorCode::RateLimited,
            RelayError::TooManyConnectionsFromAddress(_) => {
                ErrorCode::TooManyConnectionsFromAddress
            }
            RelayError::IdleTimeout { .. } => ErrorCode::IdleTimeout,
            RelayError::MemoryBudgetExhausted { .. } => ErrorCode::MemoryBudgetExhausted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn close_reasons_start_with_the_code_and_fit_a_close_frame() {
        let long = RelayError::UnknownRecipient("é".repeat(200));
        let reason = long.close_reason();
        assert!(
            reason.len() <= 123 && reason.starts_with("unknown_recipient: "),
            "{reason}"
        );
        assert_eq!(
            RelayError::ShuttingDown.close_reason(),
            "shutting_down: the relay is shutting down"
        );
    }

    #[test]
    fn connection_ending_errors_map_to_one_close_code_and_one_status() {
        let table: &[(RelayError, u16, i32)] = &[
            (RelayError::ShuttingDown, 1001, 14),
            (RelayError::SlowConsumer(4), 1008, 8),
            (RelayError::PeerIdInUse("a".into()), 1008, 6),
            (RelayError::ReservedPeerId, 1008, 3),
            (RelayError::FrameTooLarge { limit: 9 }, 1009, 8),
            (RelayError::TooManyPeers { limit: 9 }, 1008, 8),
            (RelayError::IdleTimeout { pong_timeout_ms: 9 }, 1008, 14),
            (
                RelayError::TooManyConnectionsFromAddress(crate::address::Refusal::Connections {
                    limit: 9,
                }),
                1008,
                8,
            ),
            (RelayError::undecodable_envelope(), 1008, 3),
            (RelayError::InvalidSignature("x".into()), 1008, 16),
            (RelayError::InvalidToken("x".into()), 1008, 16),
            (
                RelayError::TokenExpired {
                    expired_at: 1,
                    now: 2,
                },
                1008,
                16,
            ),
            (RelayError::KeyNotAllowed("x".into()), 1008, 7),
            (RelayError::IdentificationTimeout(9), 1008, 16),
            (RelayError::RateLimited("x".into()), 1008, 8),
            (RelayError::MemoryBudgetExhausted { budget: 9 }, 1013, 8),
        ];
        for (error, ws, grpc) in table {
            assert_eq!(
                (error.ws_close_code(), error.grpc_code()),
                (*ws, *grpc),
                "{error}"
            );
        }
        assert_eq!(
            RelayError::FrameTooLarge { limit: 9 }.close_reason(),
            "message_too_large: a frame over 9 bytes ends the connection"
        );
        for (got, sent) in [
            (1000, 1000),
            (1001, 1001),
            (1005, 1000),
            (1006, 1000),
            (4000, 4000),
        ] {
            assert_eq!(close_code::reply_to(got), sent);
        }
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
        }
    }
}
