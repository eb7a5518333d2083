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

/// Counter values one connection took at once ([`MessageIds::next_in`]), so that assigning ids
/// does not bounce one shared counter between cores on every message.
#[derive(Debug, Default)]
pub struct IdBlock {
    next: u64,
    end: u64,
}

/// How many ids a connection takes at once.
const BLOCK: u64 = 256;

impl MessageIds {
    pub fn new(seed: u128) -> MessageIds {
        MessageIds {
            seed: [(seed >> 64) as u64, seed as u64],
            next: AtomicU64::new(0),
        }
    }

    /// A fresh id, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`.
    pub fn next_id(&self) -> String {
        self.format(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh id from `block`, which takes the next [`BLOCK`] counter values from the shared
    /// counter when it runs out. Blocks never overlap, so ids stay unique.
    pub fn next_in(&self, block: &mut IdBlock) -> String {
        if block.next == block.end {
            block.next = self.next.fetch_add(BLOCK, Ordering::Relaxed);
            block.end = block.next + BLOCK;
        }
        let n = block.next;
        block.next += 1;
        self.format(n)
    }

    fn format(&self, n: u64) -> String {
        let high = mix(self.seed[0] ^ n);
        let low = mix(self.seed[1].wrapping_add(n));
        // Version 4 in the high half's 13th hex digit, the RFC 4122 variant in the low half's
        // first two bits.
        let high = (high & !0xf000) | 0x4000;
        let low = (low & !(0b11 << 62)) | (0b10 << 62);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(36);
        for (half, dashes) in [(high, [8, 12].as_slice()), (low, [4].as_slice())] {
            for digit in 0..16 {
                if dashes.contains(&digit) {
                    id.push('-');
                }
                let nibble = (half >> (60 - 4 * digit)) & 0xf;
                id.push(char::from(HEX[nibble as usize]));
            }
            if dashes.len() == 2 {
                id.push('-');
            }
        }
        id
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
        // Blocks taken by two connections at once never overlap, and mix with single ids.
        let (mut one, mut two) = (IdBlock::default(), IdBlock::default());
        for _ in 0..1000 {
            assert!(seen.insert(ids.next_in(&mut one)));
            assert!(seen.insert(ids.next_in(&mut two)));
            assert!(seen.insert(ids.next_id()));
        }
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
