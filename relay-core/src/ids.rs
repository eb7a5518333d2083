//! Message ids: their syntax, and the ids the relay assigns.
//!
//! Every envelope a peer receives carries a `message_id` (gsio-net's `P2PMessage` cannot parse
//! one without it). A sender's id is delivered exactly as given, once checked against
//! [`check_message_id`]; when the sender gave none, the relay assigns one from its
//! [`MessageIds`] before routing, so every recipient sees the same id. The relay's own envelopes
//! (`Welcome`, `Error`, `PeerJoined`, `PeerLeft`) get theirs from the same source.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::RelayError;
use crate::id::{check_token, truncate_for_display};

/// The longest `message_id` accepted, in bytes.
pub const MAX_MESSAGE_ID_LEN: usize = crate::id::TOKEN_MAX_LEN;

/// A sender's `message_id` must be 1 to [`MAX_MESSAGE_ID_LEN`] bytes of ASCII letters, digits
/// and `- _ . : @` (the peer id alphabet; a UUID fits). Empty means "none given" and is checked
/// by the caller.
pub fn check_message_id(raw: &str) -> Result<(), RelayError> {
    check_token(raw).map_err(|reason| RelayError::InvalidMessageId {
        id: truncate_for_display(raw),
        reason,
    })
}

/// The relay's source of message ids: UUID v4 text, unique for the life of one relay.
///
/// The core reads no clock and no randomness, so the front seeds it with 128 random bits once.
/// Each id is a counter run through two bijective mixers keyed by the seed, so one generator never
/// repeats its 64-bit low half within 2^64 ids, and generators with different seeds do not share a
/// sequence. Taking an id is one atomic increment: routing needs only shared access.
#[derive(Debug)]
pub struct MessageIds {
    seed: [u64; 2],
    next: AtomicU64,
}

impl MessageIds {
    pub fn new(seed: u128) -> MessageIds {
        MessageIds {
            seed: [(seed >> 64) as u64, seed as u64],
            next: AtomicU64::new(0),
        }
    }

    /// A fresh id, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
    pub fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let high = mix(self.seed[0] ^ n);
        let low = mix(self.seed[1].wrapping_add(n));
        // Version 4 in the high half's 13th hex digit, the RFC 4122 variant in the low half's
        // first two bits.
        let high = (high & !0xf000) | 0x4000;
        let low = (low & !(0b11 << 62)) | (0b10 << 62);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xffff,
            low >> 48,
            low & 0xffff_ffff_ffff
        )
    }
}

/// splitmix64's finalizer: a bijection on u64 that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn assigned_ids_are_uuid_v4_text_and_do_not_repeat() {
        let ids = MessageIds::new(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = ids.next_id();
            let bytes = id.as_bytes();
            assert_eq!(id.len(), 36, "{id}");
            assert_eq!(
                (bytes[8], bytes[13], bytes[18], bytes[23]),
                (b'-', b'-', b'-', b'-')
            );
            assert_eq!(bytes[14], b'4', "{id}");
            assert!(matches!(bytes[19], b'8' | b'9' | b'a' | b'b'), "{id}");
            check_message_id(&id).unwrap();
            assert!(seen.insert(id));
        }
        let other = MessageIds::new(1);
        assert!(!seen.contains(&other.next_id()));
    }

    #[test]
    fn message_id_syntax() {
        for ok in [
            "4f9c2c1e-8b1a-4d3e-9f00-1234567890ab",
            "m1",
            &"x".repeat(128),
        ] {
            check_message_id(ok).unwrap();
        }
        for bad in ["", "has space", &"x".repeat(129), "é", "a/b"] {
            assert_eq!(
                check_message_id(bad).unwrap_err().code(),
                ErrorCode::InvalidMessageId,
                "{bad:?}"
            );
        }
    }
}
