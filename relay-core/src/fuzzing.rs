//! The checks the fuzz targets (`fuzz/`) run on each input, here so that the regression test
//! (`tests/fuzz_corpus.rs`, on stable, in the normal test run) runs the very same checks on the
//! checked-in corpora. Not part of the API: hidden from the docs, and called by nothing in the
//! relay or the Worker (so none of it reaches their binaries).
//!
//! Each check panics when an invariant fails; a panic of the relay's own code is a failure too.
//! - [`envelope_json`]: a WebSocket text frame, admitted as the relay admits it.
//! - [`connection`]: what one connection is sent for one input (both fronts' checks end here).
//! - [`config_toml`]: `relay.toml`'s text with override variables.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock, RwLock};

use bytestring::ByteString;

use crate::config::RelayConfig;
use crate::connection::{Connection, Input, Link, Refused, Step};
use crate::envelope::{scan, Envelope, Message};
use crate::hub::{kinds, Hub};
use crate::id::RELAY_ID;

/// The id the second connection of each check claims at connect.
pub const CLAIMED_ID: &str = "fuzz-peer";

/// One WebSocket text frame, `data` (the front only hands the core valid UTF-8; other bytes end
/// in tungstenite): the fast scanner agrees with the full parser, and the frame goes through a
/// connection as [`connection`] checks, with the envelope the parser read, if any.
pub fn envelope_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert!(
        scan::agrees(text),
        "the fast scanner and the full parser disagree on {text:?}"
    );
    let text = ByteString::from(text);
    let parsed = Envelope::parse_shared(&text)
        .ok()
        .map(|(envelope, _)| envelope);
    if let Some(envelope) = &parsed {
        let again = Envelope::parse_json(&envelope.to_json());
        assert_eq!(again.as_ref(), Ok(envelope), "re-encoding {text:?}");
    }
    connection(|| Input::Text(text.clone()), parsed.as_ref());
}

/// Runs the input `make` makes through two fresh connections on an echo network: an anonymous
/// one, and one that claimed [`CLAIMED_ID`] at connect. `parsed` is the envelope the front read
/// from the input, if it read one. For each connection:
/// - the input never ends it (only a frame the front did not read does);
/// - it is sent exactly one answer (besides its `Welcome`): its envelope echoed, or an `Error`,
///   always an `Error` when the front read no envelope;
/// - the echo is the envelope sent, with the relay's `message_id` when it had none and the
///   connection's id when its `sender_id` was empty;
/// - every message's JSON text (what WebSocket recipients get, the sender's own frame when the
///   relay forwards it as is) parses back to that message's envelope.
pub fn connection(make: impl Fn() -> Input, parsed: Option<&Envelope>) {
    for claim in [None, Some(CLAIMED_ID)] {
        let table = RwLock::new(Hub::new(echo_config().clone(), 7));
        let log = Log::default();
        let mut conn = Connection::open(1, log.clone(), &table);
        if let Some(id) = claim {
            assert_eq!(conn.claim(&table, id), Step::Continue);
        }
        let step = conn.input(&table, make());
        assert_eq!(
            step,
            Step::Continue,
            "an envelope never ends the connection"
        );
        let got = log.0.take();
        for message in &got {
            let json = message.json_str();
            let again = Envelope::parse_json(json);
            assert_eq!(
                again.as_ref(),
                Ok(message.envelope()),
                "the JSON sent, {json:?}, is not the envelope"
            );
        }
        let relays = |kind: &str, e: &Envelope| e.sender_id == RELAY_ID && e.message_type == kind;
        let answers: Vec<&Arc<Message>> = got
            .iter()
            .filter(|m| !relays(kinds::WELCOME, m.envelope()))
            .collect();
        let [answer] = answers.as_slice() else {
            panic!("one answer expected, got {got:?}");
        };
        let answer = answer.envelope();
        if relays(kinds::ERROR, answer) {
            continue;
        }
        let sent = parsed.expect("an echo, only of an envelope the front read");
        let bound = conn.id().expect("an echo comes after a join");
        let expected_sender = match &*sent.sender_id {
            "" => bound.as_str(),
            given => given,
        };
        assert_eq!(answer.sender_id, expected_sender);
        assert_eq!(answer.message_type, sent.message_type);
        assert_eq!(answer.recipient_id, sent.recipient_id);
        assert_eq!(answer.payload.get(), sent.payload.get());
        assert!(!answer.message_id.is_empty());
        if !sent.message_id.is_empty() {
            assert_eq!(answer.message_id, sent.message_id);
        }
    }
}

/// `relay.toml`'s text and override variables, from one input: the text is everything before
/// the first NUL byte, then each NUL-separated part is one variable, `NAME=VALUE` (neither TOML
/// text nor an environment variable can hold a NUL, and a name no `=`). Readable, so a fixture
/// is a seed as it is. Checks that loading never panics and that:
/// - a config it accepts is valid ([`RelayConfig::validate`] keeps it) and within every
///   documented bound;
/// - the Worker's way (the file alone, then [`RelayConfig::with_overrides`]) accepts exactly
///   what the native relay's [`RelayConfig::load`] accepts, into the same config.
#[cfg(feature = "parse-toml")]
pub fn config_toml(data: &[u8]) {
    use crate::config::{
        MAX_ANNOUNCE_WINDOW_MS, MAX_MESSAGE_BYTES, MAX_QUEUE_CAPACITY, MIN_MESSAGE_BYTES,
    };

    let Ok(input) = std::str::from_utf8(data) else {
        // The native relay reads the file as UTF-8 first and refuses other bytes itself.
        return;
    };
    let mut parts = input.split('\0');
    let text = parts.next().unwrap_or_default();
    let vars: Vec<(&str, &str)> = parts
        .map(|var| var.split_once('=').unwrap_or((var, "")))
        .collect();
    let loaded = RelayConfig::load(text, "fuzz.toml", vars.iter().copied());
    if let Ok(config) = &loaded {
        assert_eq!(config.clone().validate().as_ref(), Ok(config));
        let limits = &config.limits;
        assert!((MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&limits.max_message_bytes));
        assert!(limits.hard_frame_bytes() > limits.max_message_bytes);
        assert!((1..=MAX_QUEUE_CAPACITY).contains(&limits.queue_capacity));
        assert!(config.discovery.announce_window_ms <= MAX_ANNOUNCE_WINDOW_MS);
        assert!(config.server.max_connections >= 1);
        assert!(config.routing.rules.keys().all(|k| !k.trim().is_empty()));
        assert_eq!(config.changed_keys(config), Vec::<String>::new());
    }
    if vars.is_empty() {
        // `load` with no variables is the file alone, the Worker's way too.
        return;
    }
    let file = RelayConfig::from_toml_str(text, "fuzz.toml");
    match file {
        Err(error) => assert_eq!(loaded, Err(error), "a bad file fails alike with overrides"),
        Ok(file) => {
            let worker = file.with_overrides(vars.iter().copied());
            assert_eq!(
                worker.as_ref().ok(),
                loaded.as_ref().ok(),
                "the Worker's way and the native relay's disagree: {worker:?}, {loaded:?}"
            );
        }
    }
}

/// Echo for every type, each join announced at once: a connection is sent the answer to its
/// own envelope and nothing else.
fn echo_config() -> &'static Arc<RelayConfig> {
    static CONFIG: OnceLock<Arc<RelayConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut config = RelayConfig::default();
        config.routing.default = crate::Mode::Echo;
        config.discovery.announce_window_ms = 0;
        Arc::new(config.validate().expect("the echo config is valid"))
    })
}

/// A link that keeps what it is handed.
#[derive(Clone, Default)]
struct Log(Rc<RefCell<Vec<Arc<Message>>>>);

impl Link for Log {
    fn send(&self, message: &Arc<Message>) -> Result<(), Refused> {
        self.0.borrow_mut().push(message.clone());
        Ok(())
    }
}
