//! Proving who a connection is: the `[auth]` rules, the challenge, and checking the two kinds of
//! proof (pure functions: the front passes the challenge's random bytes and the time in).
//!
//! - **signed**: the relay sends a `Challenge` (a fresh 32-byte nonce, and its `audience`) before
//!   anything else. The node answers with an `Authenticate` envelope carrying its Ed25519 public
//!   key and a signature over [`signed_message`]: the audience, the nonce and the id it takes.
//!   The nonce makes a signature good for one connection only (a replay elsewhere fails), the
//!   audience for one relay only. The id is the key's own ([`derived_id`]), or one that
//!   `auth.keys` binds to that key.
//! - **token**: an HS256 JWT (RFC 7519) signed with the relay's secret, naming the id in `sub`,
//!   this relay in `aud`, and an expiry in `exp`. It comes with the connection (a WebSocket
//!   subprotocol, gRPC `authorization` metadata) or in an `Authenticate` envelope.
//!
//! Verification uses RustCrypto's `hmac`/`sha2` and `ed25519-dalek` (pure Rust, so the Worker's
//! wasm runs the very same checks). Tokens are checked here rather than by a JWT library because
//! the ones at hand read the system clock (there is none on wasm32, and the core takes `now`)
//! and bring a crypto backend the core does not need; the format is three base64url parts, and
//! every check is one line below.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::{Auth, AuthMode, InvalidConfig};
use crate::error::RelayError;
use crate::id::PeerId;

/// The `message_type` of the relay's challenge.
pub const CHALLENGE: &str = "Challenge";
/// The `message_type` of a connection's proof.
pub const AUTHENTICATE: &str = "Authenticate";
/// What a signature covers, first: the protocol and its version.
pub const SIGNED_CONTEXT: &str = "gsio-relay-auth-v1";
/// The prefix of an id derived from a key.
pub const DERIVED_ID_PREFIX: &str = "ed25519-";
/// The WebSocket subprotocol of the relay's JSON envelopes, named in the handshake's answer
/// when the client offers it.
pub const WS_PROTOCOL: &str = "gsio.v1";
/// A token offered as a WebSocket subprotocol: `gsio.token.<token>` (a JWT's characters are all
/// allowed in a subprotocol name).
pub const WS_TOKEN_PREFIX: &str = "gsio.token.";
/// The shortest token secret: HS256's key should be as long as its hash (RFC 7518, 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret (the tokens' HMAC key): its bytes never reach a log, an error or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// `bytes` as a secret, if long enough. Whitespace around it (a file's last newline) is not
    /// part of it.
    pub fn new(bytes: &[u8]) -> Result<Secret, String> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                trimmed.len()
            ));
        }
        Ok(Secret(trimmed.to_vec()))
    }

    fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The random bytes of one connection's challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; 32]);

impl Nonce {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Nonce> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Nonce(bytes))
    }
}

/// What a connection presents as proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// An Ed25519 public key and its signature over [`signed_message`].
    Signed {
        public_key: [u8; 32],
        signature: [u8; 64],
    },
    /// A token (compact JWS).
    Token(String),
}

/// The payload of an `Authenticate` envelope: `{"public_key": hex, "signature": hex}` or
/// `{"token": "..."}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofPayload {
    public_key: Option<String>,
    signature: Option<String>,
    token: Option<String>,
}

impl Proof {
    /// An `Authenticate` envelope's payload (JSON text).
    pub fn parse(payload: &str) -> Result<Proof, RelayError> {
        let bad = |why: &str| {
            RelayError::InvalidField {
            field: "payload",
            expected: match why {
                "hex" => "an Authenticate payload whose public_key is 64 and signature 128 hex digits",
                _ => "an Authenticate payload: {\"public_key\": hex, \"signature\": hex} or {\"token\": \"...\"}",
            },
        }
        };
        let payload: ProofPayload = serde_json::from_str(payload).map_err(|_| bad(""))?;
        match payload {
            ProofPayload {
                public_key: Some(key),
                signature: Some(signature),
                token: None,
            } => {
                let mut public_key = [0; 32];
                let mut sig = [0; 64];
                hex::decode_to_slice(key, &mut public_key).map_err(|_| bad("hex"))?;
                hex::decode_to_slice(signature, &mut sig).map_err(|_| bad("hex"))?;
                Ok(Proof::Signed {
                    public_key,
                    signature: sig,
                })
            }
            ProofPayload {
                public_key: None,
                signature: None,
                token: Some(token),
            } => Ok(Proof::Token(token)),
            _ => Err(bad("")),
        }
    }
}

/// The bytes a node signs to take `id` on the connection challenged with `nonce`, at the relay
/// named `audience`: `gsio-relay-auth-v1\n<audience>\n<nonce in hex>\n<id>`.
pub fn signed_message(audience: &str, nonce: Nonce, id: &str) -> Vec<u8> {
    format!("{SIGNED_CONTEXT}\n{audience}\n{}\n{id}", nonce.to_hex()).into_bytes()
}

/// The id a key may always take: `ed25519-` and the key in lowercase hex.
pub fn derived_id(public_key: &[u8; 32]) -> PeerId {
    PeerId::parse(&format!("{DERIVED_ID_PREFIX}{}", hex::encode(public_key)))
        .expect("72 ASCII letters, digits and '-' make a valid id")
}

/// Checks a signed proof: the key is a valid Ed25519 key, it may take the id (`claimed`, or its
/// derived id when none is claimed), and it signed this connection's challenge for that id.
/// Returns the id.
pub fn verify_signed(
    auth: &Auth,
    nonce: Nonce,
    claimed: Option<&str>,
    public_key: &[u8; 32],
    signature: &[u8; 64],
) -> Result<PeerId, RelayError> {
    let derived = derived_id(public_key);
    let id = match claimed {
        Some(claimed) => PeerId::parse(claimed)?,
        None => derived.clone(),
    };
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|_| RelayError::InvalidSignature("the public key is not an Ed25519 key".into()))?;
    let message = signed_message(&auth.audience, nonce, id.as_str());
    key.verify_strict(&message, &Signature::from_bytes(signature))
        .map_err(|_| {
            RelayError::InvalidSignature(format!(
                "not a signature of this connection's challenge for {:?} by this key",
                id.as_str()
            ))
        })?;
    let bound = auth
        .keys
        .get(id.as_str())
        .is_some_and(|allowed| allowed.eq_ignore_ascii_case(&hex::encode(public_key)));
    if id != derived && !bound {
        return Err(RelayError::KeyNotAllowed(format!(
            "this key may take only {:?} (its own id) or an id auth.keys binds to it, not {:?}",
            derived.as_str(),
            id.as_str()
        )));
    }
    Ok(id)
}

/// A token's claims that the relay reads.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    aud: Option<Audience>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Checks a token at `now` (seconds since the Unix epoch): HS256 with the relay's secret, `aud`
/// naming this relay, `exp` not past and `nbf` reached (give or take `auth.token_leeway_s`).
/// Returns the id it names (`sub`).
pub fn verify_token(auth: &Auth, token: &str, now: u64) -> Result<PeerId, RelayError> {
    let invalid = |why: &str| RelayError::InvalidToken(why.to_owned());
    let secret = auth
        .token_secret
        .as_ref()
        .ok_or_else(|| invalid("this relay takes no tokens"))?;
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("a token is three base64url parts joined by '.'"));
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| invalid("a part is not base64url"))
    };
    let header: Header = serde_json::from_slice(&decode(header)?)
        .map_err(|_| invalid("the header is not a JSON object with `alg`"))?;
    if header.alg != "HS256" {
        return Err(invalid("only HS256 tokens are accepted"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose()).expect("HMAC takes any key");
    mac.update(&token.as_bytes()[..token.len() - signature.len() - 1]);
    // Constant time: a forger learns nothing from how long the comparison took.
    mac.verify_slice(&decode(signature)?)
        .map_err(|_| invalid("the signature does not match (forged, or another secret)"))?;
    let claims: Claims = serde_json::from_slice(&decode(claims)?)
        .map_err(|_| invalid("the claims are not a JSON object of the expected types"))?;
    let audiences = match claims.aud {
        Some(Audience::One(one)) => vec![one],
        Some(Audience::Many(many)) => many,
        None => Vec::new(),
    };
    if !audiences.contains(&auth.audience) {
        return Err(RelayError::WrongAudience {
            got: if audiences.is_empty() {
                "no audience".to_owned()
            } else {
                format!("{audiences:?}")
            },
            expected: auth.audience.clone(),
        });
    }
    let leeway = auth.token_leeway_s;
    let exp = claims.exp.ok_or_else(|| invalid("`exp` is missing"))?;
    if now > exp.saturating_add(leeway) {
        return Err(RelayError::TokenExpired {
            expired_at: exp,
            now,
        });
    }
    if claims
        .nbf
        .is_some_and(|nbf| now.saturating_add(leeway) < nbf)
    {
        return Err(invalid("the token is not valid yet (`nbf`)"));
    }
    let sub = claims
        .sub
        .ok_or_else(|| invalid("`sub` (the peer id) is missing"))?;
    PeerId::parse(&sub)
}

/// The relay's `Challenge` payload.
pub fn challenge_payload(auth: &Auth, nonce: Nonce) -> serde_json::Value {
    let mut modes: Vec<&str> = Vec::new();
    if auth.modes().any(AuthMode::allows_signed) {
        modes.push("signed");
    }
    if auth.modes().any(AuthMode::allows_token) {
        modes.push("token");
    }
    serde_json::json!({
        "nonce": nonce.to_hex(),
        "audience": auth.audience,
        "methods": modes,
    })
}

/// The error for a connection that claims `id` with a proof its rule does not take (or none).
pub fn refuse_mode(auth: &Auth, id: &PeerId, presented: Option<&str>) -> RelayError {
    let mode = auth.mode_for(id.as_str());
    let needs = match mode {
        AuthMode::Open => "nothing",
        AuthMode::Signed => "a signed challenge",
        AuthMode::Token => "a token",
        AuthMode::SignedOrToken => "a signed challenge or a token",
    };
    let presented = presented.map_or("none was given".to_owned(), |p| format!("got {p}"));
    RelayError::AuthenticationRequired(format!(
        "peer id {:?} needs {needs} (auth mode {:?}); {presented}",
        id.as_str(),
        mode.as_str()
    ))
}

/// What the types alone cannot check in `[auth]`.
pub(crate) fn validate(auth: &Auth) -> Result<(), InvalidConfig> {
    let bad = |key: String, message: String| Err(InvalidConfig { key, message });
    if auth.audience.trim().is_empty() || auth.audience.contains('\n') {
        return bad(
            "auth.audience".into(),
            "must be a non-empty name on one line".into(),
        );
    }
    if let Some(prefix) = auth.prefixes.keys().find(|p| p.is_empty()) {
        return bad(
            "auth.prefixes".into(),
            format!("prefix {prefix:?} is empty; set auth.mode for every id instead"),
        );
    }
    for (id, key) in &auth.keys {
        let key_name = format!("auth.keys.{id}");
        if let Err(error) = PeerId::parse(id) {
            return bad(key_name, error.to_string());
        }
        let mut bytes = [0; 32];
        if hex::decode_to_slice(key, &mut bytes).is_err()
            || VerifyingKey::from_bytes(&bytes).is_err()
        {
            return bad(
                key_name,
                "must be an Ed25519 public key, 64 hex digits".into(),
            );
        }
    }
    if auth.token_leeway_s > crate::config::MAX_TOKEN_LEEWAY_S {
        return bad(
            "auth.token_leeway_s".into(),
            format!(
                "{} is out of range; use 0 to {}",
                auth.token_leeway_s,
                crate::config::MAX_TOKEN_LEEWAY_S
            ),
        );
    }
    let sources = [&auth.token_secret_env, &auth.token_secret_file];
    match (
        auth.uses_tokens(),
        sources.iter().filter(|s| s.is_some()).count(),
    ) {
        (true, 0) => bad(
            "auth.token_secret_env".into(),
            "a mode takes tokens: name the variable (or auth.token_secret_file) holding the secret"
                .into(),
        ),
        (_, 2) => bad(
            "auth.token_secret_file".into(),
            "set auth.token_secret_env or auth.token_secret_file, not both".into(),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use ed25519_dalek::{Signer, SigningKey};

    const NOW: u64 = 1_800_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth(toml: &str) -> Auth {
        let mut config = crate::RelayConfig::from_toml_str(toml, "t.toml").unwrap();
        config.auth.token_secret = Some(Secret::new(SECRET).unwrap());
        config.auth
    }

    fn token(secret: &[u8], alg: &str, claims: serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{header}.{claims}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{claims}.{sig}")
    }

    #[test]
    fn tokens_are_checked_for_signature_algorithm_audience_and_time() {
        let a = auth("[auth]\nmode = \"token\"\ntoken_secret_env = \"S\"\n");
        let good = serde_json::json!({"sub": "web-1", "aud": "gsio-relay", "exp": NOW + 60});
        assert_eq!(
            verify_token(&a, &token(SECRET, "HS256", good.clone()), NOW)
                .unwrap()
                .as_str(),
            "web-1"
        );
        let other_secret = b"ffffffffffffffffffffffffffffffff";
        let cases: &[(String, ErrorCode)] = &[
            (
                token(other_secret, "HS256", good.clone()),
                ErrorCode::InvalidToken,
            ),
            (token(SECRET, "none", good.clone()), ErrorCode::InvalidToken),
            (
                token(SECRET, "HS512", good.clone()),
                ErrorCode::InvalidToken,
            ),
            (
                token(
                    SECRET,
                    "HS256",
                    serde_json::json!({"sub": "w", "aud": "other", "exp": NOW + 60}),
                ),
                ErrorCode::WrongAudience,
            ),
            (
                token(
                    SECRET,
                    "HS256",
                    serde_json::json!({"sub": "w", "exp": NOW + 60}),
                ),
                ErrorCode::WrongAudience,
            ),
            (
                token(
                    SECRET,
                    "HS256",
                    serde_json::json!({"sub": "w", "aud": "gsio-relay", "exp": NOW - 31}),
                ),
                ErrorCode::TokenExpired,
            ),
            (
                token(
                    SECRET,
                    "HS256",
                    serde_json::json!({"sub": "w", "aud": "gsio-relay"}),
                ),
                ErrorCode::InvalidToken,
            ),
            (
                token(
                    SECRET,
                    "HS256",
                    serde_json::json!({"sub": "w", "aud": "gsio-relay", "exp": NOW + 60, "nbf": NOW + 100}),
                ),
                ErrorCode::InvalidToken,
            ),
            (
                token(
                    SECRET,
                    "HS256",
                    serde_json::json!({"aud": "gsio-relay", "exp": NOW + 60}),
                ),
                ErrorCode::InvalidToken,
            ),
            (
                token(
                    SECRET,
                    "HS256",
                    serde_json::json!({"sub": "relay", "aud": "gsio-relay", "exp": NOW + 60}),
                ),
                ErrorCode::ReservedPeerId,
            ),
            ("a.b".to_owned(), ErrorCode::InvalidToken),
            ("a.b.c.d".to_owned(), ErrorCode::InvalidToken),
            ("!!.!!.!!".to_owned(), ErrorCode::InvalidToken),
            (String::new(), ErrorCode::InvalidToken),
        ];
        for (token, code) in cases {
            let got = verify_token(&a, token, NOW).unwrap_err();
            assert_eq!(got.code(), *code, "{token}: {got}");
        }
        // Within the leeway, an expired token still passes; an audience list may name us.
        let late = serde_json::json!({"sub": "w", "aud": ["x", "gsio-relay"], "exp": NOW - 30});
        assert!(verify_token(&a, &token(SECRET, "HS256", late), NOW).is_ok());
        // A changed claim breaks the signature.
        let t = token(SECRET, "HS256", good);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(r#"{"sub":"admin","aud":"gsio-relay","exp":9999999999}"#);
        parts[1] = &forged;
        let err = verify_token(&a, &parts.join("."), NOW).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidToken);
    }

    #[test]
    fn signatures_bind_key_id_nonce_and_audience() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let other = SigningKey::from_bytes(&[8; 32]);
        let a = auth(&format!(
            "[auth]\nmode = \"signed\"\n[auth.keys]\nnode-1 = \"{}\"\n",
            hex::encode(public)
        ));
        let nonce = Nonce([1; 32]);
        let sign = |k: &SigningKey, audience: &str, nonce: Nonce, id: &str| {
            k.sign(&signed_message(audience, nonce, id)).to_bytes()
        };
        let derived = derived_id(&public);
        // Its own id, and an id bound to it.
        let sig = sign(&key, "gsio-relay", nonce, derived.as_str());
        assert_eq!(
            verify_signed(&a, nonce, None, &public, &sig).unwrap(),
            derived
        );
        let sig = sign(&key, "gsio-relay", nonce, "node-1");
        assert_eq!(
            verify_signed(&a, nonce, Some("node-1"), &public, &sig)
                .unwrap()
                .as_str(),
            "node-1"
        );
        /// (claimed id, public key, signature, the code it is refused with)
        type Case<'a> = (Option<&'a str>, [u8; 32], [u8; 64], ErrorCode);
        let refused: &[Case] = &[
            // Another connection's challenge: a replay.
            (
                Some("node-1"),
                public,
                sign(&key, "gsio-relay", Nonce([2; 32]), "node-1"),
                ErrorCode::InvalidSignature,
            ),
            // Made for another relay.
            (
                Some("node-1"),
                public,
                sign(&key, "elsewhere", nonce, "node-1"),
                ErrorCode::InvalidSignature,
            ),
            // Signed for another id.
            (
                Some("node-1"),
                public,
                sign(&key, "gsio-relay", nonce, "node-2"),
                ErrorCode::InvalidSignature,
            ),
            // Another key's signature.
            (
                Some("node-1"),
                public,
                sign(&other, "gsio-relay", nonce, "node-1"),
                ErrorCode::InvalidSignature,
            ),
            // A good signature by a key not bound to the id.
            (
                Some("node-1"),
                other.verifying_key().to_bytes(),
                sign(&other, "gsio-relay", nonce, "node-1"),
                ErrorCode::KeyNotAllowed,
            ),
            (
                Some("node-2"),
                public,
                sign(&key, "gsio-relay", nonce, "node-2"),
                ErrorCode::KeyNotAllowed,
            ),
            // Not a point on the curve.
            (None, [0xff; 32], [0; 64], ErrorCode::InvalidSignature),
        ];
        for (claimed, public, sig, code) in refused {
            let got = verify_signed(&a, nonce, *claimed, public, sig).unwrap_err();
            assert_eq!(got.code(), *code, "{claimed:?}: {got}");
        }
    }

    #[test]
    fn proofs_parse_from_either_payload_and_nothing_else() {
        let key = "ab".repeat(32);
        let sig = "cd".repeat(64);
        assert!(matches!(
            Proof::parse(&format!(r#"{{"public_key":"{key}","signature":"{sig}"}}"#)),
            Ok(Proof::Signed { .. })
        ));
        assert_eq!(
            Proof::parse(r#"{"token":"a.b.c"}"#).unwrap(),
            Proof::Token("a.b.c".into())
        );
        for bad in [
            "null".to_owned(),
            "{}".to_owned(),
            r#"{"token":1}"#.to_owned(),
            format!(r#"{{"public_key":"{key}"}}"#),
            format!(r#"{{"public_key":"{key}","signature":"{sig}","token":"t"}}"#),
            format!(r#"{{"public_key":"zz","signature":"{sig}"}}"#),
            format!(r#"{{"public_key":"{key}","signature":"{sig}","x":1}}"#),
        ] {
            assert_eq!(
                Proof::parse(&bad).unwrap_err().code(),
                ErrorCode::InvalidField,
                "{bad}"
            );
        }
    }

    #[test]
    fn the_longest_prefix_decides_and_secrets_never_print() {
        let a = auth("[auth]\nmode = \"open\"\ntoken_secret_env = \"S\"\n[auth.prefixes]\n\"node-\" = \"signed\"\n\"node-web-\" = \"token\"\n");
        assert_eq!(a.mode_for("x"), AuthMode::Open);
        assert_eq!(a.mode_for("node-1"), AuthMode::Signed);
        assert_eq!(a.mode_for("node-web-1"), AuthMode::Token);
        let shown = format!("{a:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("Secret(<redacted>)"), "{shown}");
        assert!(Secret::new(b"short").is_err());
    }

    #[test]
    fn bad_auth_sections_name_the_key() {
        let cases = [
            ("[auth]\nmode = \"token\"\n", "auth.token_secret_env"),
            (
                "[auth]\nmode = \"token\"\ntoken_secret_env = \"A\"\ntoken_secret_file = \"b\"\n",
                "auth.token_secret_file",
            ),
            ("[auth.keys]\nnode-1 = \"abcd\"\n", "auth.keys.node-1"),
            ("[auth.keys]\n\"bad id\" = \"abcd\"\n", "auth.keys.bad id"),
            ("[auth.prefixes]\n\"\" = \"signed\"\n", "auth.prefixes"),
            ("[auth]\naudience = \"\"\n", "auth.audience"),
            ("[auth]\ntoken_leeway_s = 601\n", "auth.token_leeway_s"),
        ];
        for (toml, key) in cases {
            let err = crate::RelayConfig::from_toml_str(toml, "t.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
        }
    }
}
