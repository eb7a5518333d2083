//! Credentials for the auth tests: Ed25519 keys that answer a relay's `Challenge`, and tokens
//! minted by `jsonwebtoken` (a JWT implementation that is not the relay's).

use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;

use super::Got;

/// The secret the test relays check tokens with (32 bytes).
pub const SECRET: &str = "test-secret-0123456789abcdef0123";
/// The environment variable (natively) or Worker var that holds [`SECRET`] in the tests.
pub const SECRET_VAR: &str = "GSIO_RELAY_TEST_TOKEN_SECRET";

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn public_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

/// The id a key may always take.
pub fn derived_id(key: &SigningKey) -> String {
    format!("ed25519-{}", public_hex(key))
}

/// The `nonce` and `audience` of a relay's `Challenge`.
pub fn challenge_of(got: &Got) -> (String, String) {
    assert_eq!(
        (got.message_type.as_str(), got.sender_id.as_str()),
        ("Challenge", "relay"),
        "{got:?}"
    );
    let payload = got.payload_json();
    (
        payload["nonce"].as_str().unwrap().to_owned(),
        payload["audience"].as_str().unwrap().to_owned(),
    )
}

/// The `Authenticate` envelope (JSON text) answering `challenge` with `key`'s signature for
/// `id`, as the README says to write it.
pub fn authenticate(key: &SigningKey, challenge: &Got, id: &str) -> String {
    let (nonce, audience) = challenge_of(challenge);
    let message = format!("gsio-relay-auth-v1\n{audience}\n{nonce}\n{id}");
    let signature = key.sign(message.as_bytes());
    json!({
        "message_type": "Authenticate",
        "message_id": super::next_message_id(),
        "sender_id": id,
        "recipient_id": "",
        "payload": {"public_key": public_hex(key), "signature": hex::encode(signature.to_bytes())},
    })
    .to_string()
}

/// An HS256 token for `sub`, for `aud`, expiring `expires_in` seconds from now (negative: in the
/// past), signed with `secret`.
pub fn token(secret: &str, sub: &str, aud: &str, expires_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": sub, "aud": aud, "exp": now + expires_in, "iat": now});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A good token for `sub` on a test relay.
pub fn good_token(sub: &str) -> String {
    token(SECRET, sub, "gsio-relay", 300)
}
