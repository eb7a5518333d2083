//! The checks the fuzz targets (`fuzz/`) run on each input, here so that the regression test
//! (`tests/fuzz_corpus.rs`, on stable, in the normal test run) runs the very same checks on the
//! checked-in corpora. Not part of the API: hidden from the docs, and called by nothing in the
//! relay or the Worker (so none of it reaches their binaries).
//!
//! Each check panics when an invariant fails; a panic of the relay's own code is a failure too.
//! - [`envelope_json`]: a WebSocket text frame, admitted as the relay admits it.
//! - [`connection`]: what one connection is sent for one input (both fronts' checks end here).
//! - [`config_toml`]: `relay.toml`'s text with override variables.
//! - [`auth`]: a proof (an `Authenticate` payload, or a token at connect) on a network whose ids
//!   need one.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock, RwLock};

use bytestring::ByteString;

use std::time::Duration;

use crate::auth::{Nonce, Proof, Secret};
use crate::config::{AuthMode, RelayConfig};
use crate::connection::{Connection, Handshake, Input, Link, Refused, Step};
use crate::envelope::{scan, Envelope, Message};
use crate::error::ErrorCode;
use crate::hub::{kinds, Hub};
use crate::id::RELAY_ID;

/// The id the second connection of each check claims at connect.
pub const CLAIMED_ID: &str = "fuzz-peer";
/// Every connection's challenge: fixed, so that seeds can hold signatures for it.
pub const NONCE: Nonce = Nonce([7; 32]);
/// The clock of every check (tokens in the seeds expire long after it).
pub const NOW: Duration = Duration::from_secs(1_800_000_000);
/// The tokens' secret on the [`auth`] check's network.
pub const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef-0123";
/// What a failed `Authenticate` ends a connection with: a refused proof, or the id or payload
/// it names being unusable.
fn ends_authentication(code: ErrorCode) -> bool {
    code.is_proof_refused()
        || matches!(
            code,
            ErrorCode::InvalidField
                | ErrorCode::InvalidPeerId
                | ErrorCode::ReservedPeerId
                | ErrorCode::SpoofedSender
                | ErrorCode::PeerIdInUse
        )
}
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
        let handshake = Handshake {
            node_id: claim,
            token: None,
            nonce: NONCE,
            now: NOW,
        };
        assert_eq!(conn.begin(&table, handshake), Step::Continue);
        let step = conn.input(&table, make(), NOW);
        // Only a failed proof ends a connection: an anonymous `Authenticate` that does not
        // verify (there is no secret or key on this network to verify it with).
        let authenticating = claim.is_none()
            && parsed.is_some_and(|e| &*e.message_type == crate::auth::AUTHENTICATE);
        match &step {
            Step::Continue => {}
            Step::Close(error) if authenticating => {
                assert!(ends_authentication(error.code()), "{error}");
            }
            Step::Close(error) => panic!("an envelope never ends the connection: {error}"),
            Step::Reserve(id) => panic!("a relay without a cluster reserved {id}"),
        }
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

/// One proof, `data`, on a network where `key-` ids need a key, `web-` ids a token, the rest
/// either (`node-1` bound to the key of 32 bytes of 1s), tried as a token (`verify_token`), as
/// an `Authenticate` payload parsed alone, and through a connection: as a token presented at
/// connect, as the payload of an `Authenticate` answering the challenge (without `sender_id`,
/// and as `node-1`), and as the token of such a payload. Checks:
/// - a token accepted is signed with the network's secret (the HMAC recomputed here, apart from
///   the relay's check) and names the id it is accepted for;
/// - a connection joins only under an id whose rule allows the proof, backed by a proof that
///   verifies here independently (the HMAC again, or the Ed25519 signature over this
///   connection's challenge with `verify_strict`); it gets its `Welcome`, and nothing else;
/// - a refused proof gets one `Error` with an auth code and ends the connection.
pub fn auth(data: &[u8]) {
    use ed25519_dalek::{Signature, VerifyingKey};

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = auth_config();
    let auth = &config.auth;
    let _ = Proof::parse(text);
    let signed_by_secret = |token: &str| -> bool {
        use base64::Engine as _;
        use hmac::Mac as _;
        let Some((signed, signature)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(signature) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature)
        else {
            return false;
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).expect("any key");
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature).is_ok()
    };
    if let Ok(id) = crate::auth::verify_token(auth, text, NOW.as_secs()) {
        assert!(
            signed_by_secret(text),
            "a token not signed with the secret passed: {text:?}"
        );
        assert!(!id.as_str().is_empty());
    }
    let payload = serde_json::to_string(&serde_json::json!({"token": text})).expect("a string");
    // (token at connect, Authenticate payload, its sender_id): node-1 is the id bound to a key.
    for (token, answer, sender) in [
        (Some(text), None, ""),
        (None, Some(text.to_owned()), ""),
        (None, Some(text.to_owned()), "node-1"),
        (None, Some(payload), ""),
    ] {
        let table = RwLock::new(Hub::new(config.clone(), 7));
        let log = Log::default();
        let mut conn = Connection::open(1, log.clone(), &table);
        let handshake = Handshake {
            node_id: None,
            token,
            nonce: NONCE,
            now: NOW,
        };
        let mut step = conn.begin(&table, handshake);
        if let Some(payload) = &answer {
            let got = log.0.take();
            assert_eq!(got.len(), 1, "the challenge first: {got:?}");
            assert_eq!(&*got[0].envelope().message_type, crate::auth::CHALLENGE);
            let envelope = format!(
                r#"{{"message_type":"Authenticate","sender_id":"{sender}","payload":{payload}}}"#
            );
            step = conn.input(&table, Input::Text(ByteString::from(envelope)), NOW);
        }
        let got = log.0.take();
        let [only] = got.as_slice() else {
            panic!("one answer expected, got {got:?}");
        };
        let only = only.envelope();
        match (conn.id(), &step) {
            (Some(id), Step::Continue) => {
                assert_eq!(&*only.message_type, kinds::WELCOME);
                let mode = auth.mode_for(id.as_str());
                // Which proof let it in, checked here apart from the relay.
                let proof = match (token, answer.as_deref()) {
                    (Some(token), _) => Proof::Token(token.to_owned()),
                    (None, Some(answer)) => Proof::parse(answer).expect("a join by a proof"),
                    (None, None) => unreachable!("every try gives a token or an answer"),
                };
                match proof {
                    Proof::Signed {
                        public_key,
                        signature,
                    } => {
                        assert!(mode.allows_signed(), "{id} joined by key under {mode:?}");
                        let key =
                            VerifyingKey::from_bytes(&public_key).expect("a key that verified");
                        let message =
                            crate::auth::signed_message(&auth.audience, NONCE, id.as_str());
                        key.verify_strict(&message, &Signature::from_bytes(&signature))
                            .expect("the signature verifies");
                    }
                    Proof::Token(token) => {
                        assert!(mode.allows_token(), "{id} joined by token under {mode:?}");
                        assert!(signed_by_secret(&token), "{token:?}");
                    }
                }
            }
            (None, Step::Close(error)) => {
                assert!(
                    ends_authentication(error.code())
                        || error.code() == ErrorCode::InvalidJson
                        || error.code() == ErrorCode::NotAnObject,
                    "{error}"
                );
                assert_eq!(&*only.message_type, kinds::ERROR);
            }
            (None, Step::Continue) => {
                // An input that is not an envelope at all: answered, still anonymous.
                assert_eq!(&*only.message_type, kinds::ERROR);
            }
            (id, step) => panic!("joined as {id:?} but {step:?}"),
        }
    }
}

/// The [`auth`] check's network.
fn auth_config() -> &'static Arc<RelayConfig> {
    static CONFIG: OnceLock<Arc<RelayConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut config = RelayConfig::default();
        config.auth.mode = AuthMode::SignedOrToken;
        config.auth.prefixes.insert("key-".into(), AuthMode::Signed);
        config.auth.prefixes.insert("web-".into(), AuthMode::Token);
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        config
            .auth
            .keys
            .insert("node-1".into(), hex::encode(key.verifying_key().as_bytes()));
        config.auth.token_secret_env = Some("FUZZ".into());
        let mut config = config.validate().expect("the auth config is valid");
        config.auth.token_secret = Some(Secret::new(SECRET).expect("long enough"));
        Arc::new(config)
    })
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
