//! What the bench sends and how it reads it back: one envelope per message whose payload is
//! `{"seq":N,"ts":T}`, where `seq` counts the sender's messages from 0 and `ts` is the send time
//! in nanoseconds since the bench's own clock origin ([`now_ns`]).
//!
//! The relay and the floor get the very same text. The relay forwards a complete envelope as the
//! sender's text, and a gRPC recipient gets the payload as `payload_json`, so a receiver finds
//! the stamp with a plain text scan ([`scan`]) instead of a JSON parse: the bench's own cost per
//! delivery stays small and identical for both targets.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

/// The message type of fan-out traffic: no rule in relay.toml, so the default (broadcast).
pub const BROADCAST_TYPE: &str = "Bench";
/// The message type of directed traffic: `LedgerSync = "directed"` in relay.toml.
pub const DIRECTED_TYPE: &str = "LedgerSyncResponse";
/// Echoed by the relay (`Ping = "echo"`): the liveness check of idle connections.
pub const ECHO_TYPE: &str = "Ping";

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench's clock origin (the first call). Senders and receivers live in
/// this one process, so a receive time minus a send time is a latency on one clock.
pub fn now_ns() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    origin.elapsed().as_nanos() as u64
}

/// The stamp a receiver reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub ts: u64,
}

/// Where one sender's messages go: fixed for a run, so the text up to the payload is built once.
#[derive(Debug, Clone)]
pub struct Route {
    pub message_type: &'static str,
    pub sender: String,
    /// Empty for broadcast.
    pub recipient: String,
    /// The envelope's JSON text up to the `message_id` value (`<sender>-<seq>`).
    ws_head: String,
    /// From the end of the `message_id` value up to the payload's `seq` value.
    ws_prefix: String,
}

/// Whether the bench's envelopes carry a `message_id` (as gsio-net's do, so the relay forwards
/// them as sent), or leave it for the relay to assign (`--no-message-id`: what assigning costs).
static MESSAGE_IDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_message_ids(on: bool) {
    MESSAGE_IDS.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn message_ids() -> bool {
    MESSAGE_IDS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The `message_id` of one sender's message: unique per sender and sequence number.
pub fn message_id(sender: &str, stamp: Stamp) -> String {
    if message_ids() {
        format!("{sender}-{}", stamp.seq)
    } else {
        String::new()
    }
}

impl Route {
    pub fn new(message_type: &'static str, sender: &str, recipient: &str) -> Route {
        assert!(
            is_plain_id(sender) && is_plain_id(recipient),
            "bench ids need no JSON escaping"
        );
        let (ws_head, ws_prefix) = if message_ids() {
            (
                format!(r#"{{"message_type":"{message_type}","message_id":"{sender}-"#),
                format!(
                    r#"","sender_id":"{sender}","recipient_id":"{recipient}","payload":{{"seq":"#
                ),
            )
        } else {
            (
                String::new(),
                format!(
                    r#"{{"message_type":"{message_type}","sender_id":"{sender}","recipient_id":"{recipient}","payload":{{"seq":"#
                ),
            )
        };
        Route {
            message_type,
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            ws_head,
            ws_prefix,
        }
    }

    /// The WebSocket text frame: the whole envelope, payload last.
    pub fn ws_text(&self, stamp: Stamp) -> String {
        let mut text = String::with_capacity(self.ws_head.len() + self.ws_prefix.len() + 48);
        if !self.ws_head.is_empty() {
            text.push_str(&self.ws_head);
            let _ = write!(text, "{}", stamp.seq);
        }
        text.push_str(&self.ws_prefix);
        let _ = write!(text, "{},\"ts\":{}}}}}", stamp.seq, stamp.ts);
        text
    }
}

/// The payload alone (a gRPC envelope's `payload_json`).
pub fn payload_json(stamp: Stamp) -> String {
    format!(r#"{{"seq":{},"ts":{}}}"#, stamp.seq, stamp.ts)
}

fn is_plain_id(id: &str) -> bool {
    id.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The stamp in an envelope's text or in a payload, if it carries one. Only the bench's payload
/// shape is recognised (`{"seq":N,"ts":T`); anything else (Welcome, Error) is `None`.
pub fn scan(text: &str) -> Option<Stamp> {
    const SEQ: &str = "{\"seq\":";
    const TS: &str = ",\"ts\":";
    let at = text.rfind(SEQ)? + SEQ.len();
    let (seq, rest) = digits(&text[at..])?;
    let rest = rest.strip_prefix(TS)?;
    let (ts, _) = digits(rest)?;
    Some(Stamp { seq, ts })
}

/// A leading unsigned integer and what follows it.
fn digits(text: &str) -> Option<(u64, &str)> {
    let end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    if end == 0 {
        return None;
    }
    let value = text[..end].parse().ok()?;
    Some((value, &text[end..]))
}

/// True for the relay's `Error` envelopes (JSON text).
pub fn is_error_text(text: &str) -> bool {
    text.contains(r#""message_type":"Error""#)
}

/// True for a `Welcome` (the relay's, or the floor's stand-in).
pub fn is_welcome_text(text: &str) -> bool {
    text.contains(r#""message_type":"Welcome""#)
}

/// The floor's stand-in for the relay's `Welcome`, so that clients wait for the same thing.
pub fn floor_welcome(id: &str) -> String {
    format!(
        r#"{{"message_type":"Welcome","sender_id":"floor","recipient_id":{},"payload":null}}"#,
        serde_json::Value::from(id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_text_is_a_complete_envelope_with_the_stamp() {
        let route = Route::new(DIRECTED_TYPE, "p3a", "p3b");
        let text = route.ws_text(Stamp {
            seq: 7,
            ts: 123456789,
        });
        assert_eq!(
            text,
            r#"{"message_type":"LedgerSyncResponse","message_id":"p3a-7","sender_id":"p3a","recipient_id":"p3b","payload":{"seq":7,"ts":123456789}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["payload"]["seq"], 7);
        assert_eq!(parsed["payload"]["ts"], 123456789);
        // The relay's own parser accepts it as complete, so it forwards the text unchanged.
        let (envelope, completeness) =
            gsio_relay_core::Envelope::parse_json_checked(&text).unwrap();
        assert_eq!(
            completeness,
            gsio_relay_core::envelope::Completeness::Complete
        );
        assert_eq!(envelope.payload.get(), r#"{"seq":7,"ts":123456789}"#);
    }

    #[test]
    fn scan_reads_back_what_was_written() {
        let route = Route::new(BROADCAST_TYPE, "pub", "");
        for (seq, ts) in [(0, 0), (1, 42), (u64::MAX, u64::MAX), (999, 1 << 40)] {
            let stamp = Stamp { seq, ts };
            assert_eq!(scan(&route.ws_text(stamp)), Some(stamp));
            assert_eq!(scan(&payload_json(stamp)), Some(stamp));
        }
    }

    #[test]
    fn scan_ignores_what_is_not_a_bench_payload() {
        for text in [
            "",
            r#"{"message_type":"Welcome","sender_id":"relay","recipient_id":"a","payload":{"peer_id":"a"}}"#,
            r#"{"seq":,"ts":1}"#,
            r#"{"seq":1}"#,
            r#"{"seq":1,"ts":}"#,
            r#"{"seq":-1,"ts":5}"#,
            r#"{"seq":99999999999999999999999,"ts":5}"#,
        ] {
            assert_eq!(scan(text), None, "{text}");
        }
    }

    #[test]
    fn errors_and_welcomes_are_recognised() {
        let error = r#"{"message_type":"Error","sender_id":"relay","recipient_id":"pub","payload":{"code":"recipient_queue_full"}}"#;
        assert!(is_error_text(error));
        assert!(!is_welcome_text(error));
        assert!(is_welcome_text(&floor_welcome("s1")));
        assert!(!is_error_text(&floor_welcome("s1")));
        assert_eq!(scan(&floor_welcome("s1")), None);
    }

    #[test]
    #[should_panic(expected = "escaping")]
    fn ids_that_need_escaping_are_refused() {
        Route::new(DIRECTED_TYPE, "a\"b", "c");
    }

    /// A latency is a receive time minus a send time, read on different threads: both must
    /// come from one origin for the whole process, in nanoseconds. (A pause of at least 20 ms
    /// is measured as at least 20 ms; nothing is asserted about how much longer it took.)
    #[test]
    fn stamps_from_any_thread_share_one_clock_in_nanoseconds() {
        let sent = std::thread::spawn(now_ns).join().unwrap();
        let pause = std::time::Duration::from_millis(20);
        std::thread::sleep(pause);
        let received = std::thread::spawn(now_ns).join().unwrap();
        assert!(
            received >= sent + pause.as_nanos() as u64,
            "sent at {sent} ns, received at {received} ns"
        );
    }
}
