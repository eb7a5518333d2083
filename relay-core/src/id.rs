//! Peer identities.
//!
//! A [`PeerId`] is what `sender_id` and `recipient_id` name. Its syntax is deliberately narrow so
//! that ids are safe in logs, URLs and metadata: 1 to [`PeerId::MAX_LEN`] bytes of ASCII letters,
//! digits and `- _ . : @`. The id [`RELAY_ID`] belongs to the relay itself (it signs `Welcome`,
//! `Error`, `PeerJoined` and `PeerLeft`) and no peer may take it.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::error::RelayError;

/// The `sender_id` of every envelope the relay itself writes.
pub const RELAY_ID: &str = "relay";

/// A validated peer id, cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(Arc<str>);

impl PeerId {
    /// The longest id accepted, in bytes.
    pub const MAX_LEN: usize = TOKEN_MAX_LEN;

    /// Validates `raw` as a peer id.
    pub fn parse(raw: &str) -> Result<Self, RelayError> {
        let invalid = |reason: &'static str| RelayError::InvalidPeerId {
            id: truncate_for_display(raw),
            reason,
        };
        check_token(raw).map_err(invalid)?;
        if raw == RELAY_ID {
            return Err(RelayError::ReservedPeerId);
        }
        Ok(PeerId(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The longest peer id or message id, in bytes.
pub(crate) const TOKEN_MAX_LEN: usize = 128;

/// The syntax shared by peer ids and message ids: 1 to [`TOKEN_MAX_LEN`] bytes of ASCII letters,
/// digits and `- _ . : @`, safe in logs, URLs and metadata. The error says what is wrong.
pub(crate) fn check_token(raw: &str) -> Result<(), &'static str> {
    if raw.is_empty() {
        return Err("it is empty");
    }
    if raw.len() > TOKEN_MAX_LEN {
        return Err("it is longer than 128 bytes");
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
    {
        return Err("only ASCII letters, digits and - _ . : @ are allowed");
    }
    Ok(())
}

/// Keeps error messages short when a client sends a megabyte-long "id".
pub(crate) fn truncate_for_display(raw: &str) -> String {
    const SHOWN: usize = 64;
    if raw.len() <= SHOWN {
        return raw.to_owned();
    }
    let mut end = SHOWN;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &raw[..end])
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({:?})", &*self.0)
    }
}

impl Borrow<str> for PeerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn accepts_documented_syntax() {
        for ok in ["node-id", "a", "Node_1.eu:7@x", &"x".repeat(128)] {
            assert_eq!(PeerId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else_with_a_code() {
        let cases: &[(&str, ErrorCode)] = &[
            ("", ErrorCode::InvalidPeerId),
            (&"x".repeat(129), ErrorCode::InvalidPeerId),
            ("has space", ErrorCode::InvalidPeerId),
            ("ünïcode", ErrorCode::InvalidPeerId),
            ("a/b", ErrorCode::InvalidPeerId),
            ("relay", ErrorCode::ReservedPeerId),
        ];
        for (raw, code) in cases {
            assert_eq!(PeerId::parse(raw).unwrap_err().code(), *code, "{raw:?}");
        }
    }

    #[test]
    fn long_ids_are_truncated_in_messages_on_char_boundaries() {
        let shown = truncate_for_display(&"é".repeat(100));
        assert!(shown.len() <= 64 + '…'.len_utf8());
        assert!(shown.ends_with('…'));
    }
}
