//! The envelope parser's fast path: one pass over the bytes of a *plain* envelope, finding its
//! five fields without building any value.
//!
//! Plain means what nodes and browsers send: one object with `message_type`, `sender_id`,
//! `recipient_id` and `payload` (and `message_id`, or not), each key once, the four ids and type
//! as strings without escapes, the type not empty. Anything else, valid or not (escapes, `null`s,
//! a missing or repeated or unknown key, a syntax error anywhere), makes [`plain`] return `None`
//! and the caller falls back to the full parser, which decodes every valid form and names every
//! error. So this path never decides an error and never accepts a text the full parser refuses:
//! a test compares the two on every sample and on seeded mutations of them.
//!
//! The payload is checked to be one JSON value exactly as the full parser checks it (its
//! `serde_json` skips a raw value with the same grammar: strings with valid escapes and no
//! control characters, numbers without leading zeros, no depth limit), without recursion. Only
//! nesting deeper than [`MAX_DEPTH`] goes to the full parser.

use super::Envelope;

/// The five fields of a plain envelope, as slices of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plain<'t> {
    pub message_type: &'t str,
    /// `None` when the key is absent.
    pub message_id: Option<&'t str>,
    pub sender_id: &'t str,
    pub recipient_id: &'t str,
    /// The payload's JSON text, from its first to its last byte.
    pub payload: &'t str,
}

/// Nesting of the payload this path follows (one bit per level); deeper goes to the full parser.
const MAX_DEPTH: u32 = 64;

const TYPE: u8 = 1;
const ID: u8 = 2;
const SENDER: u8 = 4;
const RECIPIENT: u8 = 8;
const PAYLOAD: u8 = 16;

/// The fields of `text` if it is a plain envelope (see the module's docs); `None` otherwise.
pub(super) fn plain(text: &str) -> Option<Plain<'_>> {
    let b = text.as_bytes();
    let mut at = whitespace(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut seen = 0u8;
    let mut fields = Plain {
        message_type: "",
        message_id: None,
        sender_id: "",
        recipient_id: "",
        payload: "",
    };
    loop {
        at = whitespace(b, at);
        let (field, after) = key(b, at)?;
        if seen & field != 0 {
            return None;
        }
        seen |= field;
        at = whitespace(b, after);
        if b.get(at) != Some(&b':') {
            return None;
        }
        at = whitespace(b, at + 1);
        if field == PAYLOAD {
            let end = value_end(b, at)?;
            fields.payload = text.get(at..end)?;
            at = end;
        } else {
            let (value, after) = simple_string(text, at)?;
            match field {
                TYPE => fields.message_type = value,
                ID => fields.message_id = Some(value),
                SENDER => fields.sender_id = value,
                _ => fields.recipient_id = value,
            }
            at = after;
        }
        at = whitespace(b, at);
        match b.get(at) {
            Some(b',') => at += 1,
            Some(b'}') => break,
            _ => return None,
        }
    }
    let required = TYPE | SENDER | RECIPIENT | PAYLOAD;
    let rest = whitespace(b, at + 1);
    (seen & required == required && !fields.message_type.is_empty() && rest == b.len())
        .then_some(fields)
}

/// The field named by the key at `at` (its quotes included, so a longer key never matches), and
/// the index after it; `None` for any other key, or one written with escapes.
fn key(b: &[u8], at: usize) -> Option<(u8, usize)> {
    let (field, quoted): (u8, &[u8]) = match b.get(at + 1)? {
        b'm' if b.get(at + 9) == Some(&b't') => (TYPE, b"\"message_type\""),
        b'm' => (ID, b"\"message_id\""),
        b's' => (SENDER, b"\"sender_id\""),
        b'r' => (RECIPIENT, b"\"recipient_id\""),
        b'p' => (PAYLOAD, b"\"payload\""),
        _ => return None,
    };
    let end = at + quoted.len();
    (b.get(at..end)? == quoted).then_some((field, end))
}

fn whitespace(b: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(at) {
        at += 1;
    }
    at
}

/// The index of the first byte at or after `at` that is not an ASCII digit.
fn digits(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// A string at `at` with no escapes (and, as JSON requires, no control characters): its contents
/// and the index after its closing quote.
fn simple_string(text: &str, at: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let start = at + 1;
    let end = special(b, start)?;
    if b[end] != b'"' {
        return None;
    }
    Some((text.get(start..end)?, end + 1))
}

/// The index of the first byte at or after `at` that ends a plain run of string contents: a
/// quote, a backslash or a control character. Eight bytes at a time (safe, portable SWAR: the
/// lowest flagged byte of each word is exact, which is the one taken).
fn special(b: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let equal = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGH
    };
    while let Some(chunk) = b.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let found = equal(word, b'"')
            | equal(word, b'\\')
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGH);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = b.get(at..)?;
    Some(
        at + rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?,
    )
}

/// The index after the string whose opening quote is just before `at`, escapes checked.
fn string_end(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = special(b, at)?;
        match b[at] {
            b'"' => return Some(at + 1),
            b'\\' => {
                at += 1;
                match b.get(at)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 1,
                    b'u' => {
                        let hex = b.get(at + 1..at + 5)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        at += 5;
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
}

/// The index after the number starting at `at`: `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)?
/// ([eE] [+-]? [0-9]+)?
fn number_end(b: &[u8], mut at: usize) -> Option<usize> {
    if b.get(at) == Some(&b'-') {
        at += 1;
    }
    match b.get(at)? {
        b'0' => {
            at += 1;
            if b.get(at).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        }
        b'1'..=b'9' => at = digits(b, at + 1),
        _ => return None,
    }
    if b.get(at) == Some(&b'.') {
        let end = digits(b, at + 1);
        if end == at + 1 {
            return None;
        }
        at = end;
    }
    if let Some(b'e' | b'E') = b.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = b.get(at) {
            at += 1;
        }
        let end = digits(b, at);
        if end == at {
            return None;
        }
        at = end;
    }
    Some(at)
}

/// The index after the one JSON value starting at `at` (no leading whitespace), without
/// recursion: open containers are a stack of bits (1 = object), at most [`MAX_DEPTH`] deep.
fn value_end(b: &[u8], mut at: usize) -> Option<usize> {
    let mut objects = 0u64;
    let mut depth = 0u32;
    loop {
        // A value starts at `at`.
        let mut complete = true;
        match b.get(at)? {
            b'"' => at = string_end(b, at + 1)?,
            b'-' | b'0'..=b'9' => at = number_end(b, at)?,
            b't' => at = literal(b, at, b"true")?,
            b'f' => at = literal(b, at, b"false")?,
            b'n' => at = literal(b, at, b"null")?,
            &open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                let inner = whitespace(b, at + 1);
                if b.get(inner) == Some(&close) {
                    at = inner + 1;
                } else {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    objects = (objects << 1) | u64::from(open == b'{');
                    depth += 1;
                    at = if open == b'{' {
                        member_value(b, inner)?
                    } else {
                        inner
                    };
                    complete = false;
                }
            }
            _ => return None,
        }
        // After a complete value: close containers, or move to the next element.
        while complete {
            if depth == 0 {
                return Some(at);
            }
            at = whitespace(b, at);
            let in_object = objects & 1 == 1;
            match b.get(at)? {
                b',' => {
                    let next = whitespace(b, at + 1);
                    at = if in_object {
                        member_value(b, next)?
                    } else {
                        next
                    };
                    complete = false;
                }
                b'}' if in_object => {}
                b']' if !in_object => {}
                _ => return None,
            }
            if complete {
                at += 1;
                objects >>= 1;
                depth -= 1;
            }
        }
    }
}

/// After `"key":` at `at` (whitespace skipped), the index of the member's value.
fn member_value(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let at = whitespace(b, string_end(b, at + 1)?);
    (b.get(at) == Some(&b':')).then(|| whitespace(b, at + 1))
}

fn literal(b: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    (b.get(at..at + word.len())? == word).then_some(at + word.len())
}

/// Whether the scanner agrees with the full parser on `text`: it declines, or it finds exactly
/// the envelope (and [`Completeness`](super::Completeness)) the full parser reads, whether the fields are copied or
/// share the text's bytes. The unit tests below and the fuzz checks
/// ([`crate::fuzzing::envelope_json`]) both ask it.
pub(crate) fn agrees(text: &str) -> bool {
    match plain(text) {
        None => true,
        Some(found) => {
            let shared = bytestring::ByteString::from(text);
            let fast = Envelope::from_plain(found, None);
            let fast_shared = Envelope::from_plain(found, Some(&shared));
            let full = Envelope::parse_json_fully(text, None).ok();
            full.as_ref() == Some(&fast) && full == Some(fast_shared)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[&str] = &[
        r#"{"message_type":"LedgerSyncResponse","message_id":"p3a-7","sender_id":"p3a","recipient_id":"p3b","payload":{"seq":7,"ts":123456789}}"#,
        r#" { "message_type" : "NodeAnnounce" , "sender_id" : "n1" , "recipient_id" : "" , "payload" : null } "#,
        r#"{"payload":[1,-2.5e+3,0,0.25,1E9,true,false,null,"s\u00e9\n\"",{},[],{"a":[{"b":{}}]}],"message_type":"T","message_id":"","sender_id":"é","recipient_id":"r"}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":"x"}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":-0}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":[[[[[[[[[[[[1]]]]]]]]]]]]}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":{"k\"":"v\\","":[ ]}}"#,
        // Not plain (the full parser decides): escapes, nulls, absent or repeated or unknown keys.
        r#"{"message_type":"T\u0041","sender_id":"a","recipient_id":"b","payload":1}"#,
        r#"{"message_type":"T","sender_id":null,"recipient_id":"b","payload":1}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b"}"#,
        r#"{"message_type":"T","message_type":"U","sender_id":"a","recipient_id":"b","payload":1}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":1,"extra":2}"#,
        r#"{"message_type":"","sender_id":"a","recipient_id":"b","payload":1}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":01}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":[1,]}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":{"a":1,}}"#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":"\x"} "#,
        r#"{"message_type":"T","sender_id":"a","recipient_id":"b","payload":1} x"#,
        r#"[1]"#,
        "",
    ];

    #[test]
    fn plain_envelopes_take_the_fast_path_and_others_do_not() {
        let plain_count = SAMPLES.iter().filter(|t| plain(t).is_some()).count();
        assert_eq!(plain_count, 7, "the first seven samples are plain");
        for text in &SAMPLES[7..] {
            assert_eq!(plain(text), None, "{text}");
        }
        let found = plain(SAMPLES[0]).unwrap();
        assert_eq!(found.message_id, Some("p3a-7"));
        assert_eq!(found.payload, r#"{"seq":7,"ts":123456789}"#);
        assert_eq!(plain(SAMPLES[1]).unwrap().message_id, None);
    }

    #[test]
    fn the_scanner_never_disagrees_with_the_full_parser() {
        for text in SAMPLES {
            assert!(agrees(text), "{text}");
        }
        // Seeded mutations of every sample: bytes replaced, inserted and removed, with the
        // characters that matter to JSON most likely.
        let alphabet = b"{}[]\":,\\ -+.0123456789eEtrufalsn\x01\tux";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut taken = 0;
        for round in 0..60_000 {
            let mut bytes = SAMPLES[round % SAMPLES.len()].as_bytes().to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % (bytes.len() + 1);
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            taken += usize::from(plain(&text).is_some());
            assert!(agrees(&text), "scanner and parser disagree on {text}");
        }
        assert!(taken > 1_000, "the mutations reach the fast path ({taken})");
    }
}
