//! gsio-net's own message shapes, mirrored as they are upstream (`seemueller-io/gsio-net`,
//! `crates/gsio-node/src/p2p.rs`): serde derive, no defaults, no renames. An envelope that parses
//! as [`P2PMessage`] is one a gsio-node can read; one missing a field (`message_id`, say) fails.

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

/// The types of messages sent between nodes (upstream `MessageType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageType {
    NodeAnnounce,
    NodeListRequest,
    NodeListResponse,
    EntryAnnounce,
    EntryRequest,
    EntryResponse,
    LedgerSyncRequest,
    LedgerSyncResponse,
}

/// A message sent between nodes (upstream `P2PMessage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct P2PMessage {
    pub message_type: MessageType,
    pub message_id: String,
    pub sender_id: String,
    pub recipient_id: String,
    pub payload: JsonValue,
}

impl MessageType {
    pub const ALL: [MessageType; 8] = [
        MessageType::NodeAnnounce,
        MessageType::NodeListRequest,
        MessageType::NodeListResponse,
        MessageType::EntryAnnounce,
        MessageType::EntryRequest,
        MessageType::EntryResponse,
        MessageType::LedgerSyncRequest,
        MessageType::LedgerSyncResponse,
    ];

    /// The name on the wire (serde's for a unit variant).
    pub fn name(self) -> &'static str {
        match self {
            MessageType::NodeAnnounce => "NodeAnnounce",
            MessageType::NodeListRequest => "NodeListRequest",
            MessageType::NodeListResponse => "NodeListResponse",
            MessageType::EntryAnnounce => "EntryAnnounce",
            MessageType::EntryRequest => "EntryRequest",
            MessageType::EntryResponse => "EntryResponse",
            MessageType::LedgerSyncRequest => "LedgerSyncRequest",
            MessageType::LedgerSyncResponse => "LedgerSyncResponse",
        }
    }

    /// Sent to every node (upstream `broadcast_message`).
    pub fn is_announcement(self) -> bool {
        matches!(self, MessageType::NodeAnnounce | MessageType::EntryAnnounce)
    }

    /// Sent to one node, or with an empty `recipient_id` to every node.
    pub fn is_request(self) -> bool {
        matches!(
            self,
            MessageType::NodeListRequest
                | MessageType::EntryRequest
                | MessageType::LedgerSyncRequest
        )
    }
}
