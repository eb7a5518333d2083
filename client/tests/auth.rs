//! The client proves its node's identity: it signs the relay's challenge with the key it was
//! given (the key's own id, or one the relay binds to it), or presents a token; without
//! credentials, or with a key the relay does not bind to the id, it is refused and stops.

mod common;

use common::{config, wait_for, Relay};
use gsio_relay_client::{
    connect, Config, Credentials, DisconnectReason, Event, RelayError, SigningKey,
};
use gsio_relay_core::auth::Secret;
use gsio_relay_core::config::AuthMode;

const SECRET: &str = "client-test-secret-0123456789abcdef";

/// Every id needs a key, but `web-` ids take tokens; `node-1` is bound to key 1.
async fn relay() -> Relay {
    Relay::start_with("127.0.0.1:0".parse().unwrap(), |config| {
        config.auth.mode = AuthMode::Signed;
        config.auth.prefixes.insert("web-".into(), AuthMode::Token);
        let key = SigningKey::from_bytes(&[1; 32]);
        config.auth.keys.insert(
            "node-1".into(),
            key.verifying_key()
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
        config.auth.token_secret_env = Some("UNUSED".into());
        config.auth.token_secret = Some(Secret::new(SECRET.as_bytes()).unwrap());
    })
    .await
}

async fn welcomed_as(config: Config) -> String {
    let (_client, mut events) = connect(config).unwrap();
    wait_for(&mut events, |event| match event {
        Event::Connected(welcome) => Some(welcome.peer_id),
        Event::Disconnected(gone) => panic!("not welcomed: {}", gone.reason),
        _ => None,
    })
    .await
}

async fn refused_with(config: Config) -> DisconnectReason {
    let (_client, mut events) = connect(config).unwrap();
    wait_for(&mut events, |event| match event {
        Event::Connected(welcome) => panic!("welcomed as {}", welcome.peer_id),
        Event::Disconnected(gone) => {
            assert_eq!(
                gone.reconnect_in, None,
                "a refused proof is final: {}",
                gone.reason
            );
            Some(gone.reason)
        }
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_node_signs_for_its_own_id_or_a_bound_one() {
    let relay = relay().await;
    let key = SigningKey::from_bytes(&[7; 32]);
    let own = gsio_relay_client::derived_id(&key.verifying_key());
    let mut signed = Config::signed(relay.grpc_url(), key);
    signed.backoff = config(&relay.grpc_url(), "x").backoff;
    assert_eq!(welcomed_as(signed).await, own);

    let mut bound = config(&relay.grpc_url(), "node-1");
    bound.credentials = Some(Credentials::Signed(SigningKey::from_bytes(&[1; 32])));
    assert_eq!(welcomed_as(bound).await, "node-1");

    // Debug output never shows the key.
    let shown = format!(
        "{:?}",
        Credentials::Signed(SigningKey::from_bytes(&[1; 32]))
    );
    assert!(!shown.contains(&"01".repeat(32)), "{shown}");
}

#[tokio::test]
async fn a_token_is_presented_as_metadata() {
    let relay = relay().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": "web-1", "aud": "gsio-relay", "exp": now + 300});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut with_token = config(&relay.grpc_url(), "web-1");
    with_token.credentials = Some(Credentials::Token(token));
    assert_eq!(welcomed_as(with_token).await, "web-1");
}

#[tokio::test]
async fn wrong_or_missing_proof_is_final() {
    let relay = relay().await;
    // Another key for node-1.
    let mut wrong = config(&relay.grpc_url(), "node-1");
    wrong.credentials = Some(Credentials::Signed(SigningKey::from_bytes(&[2; 32])));
    let reason = refused_with(wrong).await;
    assert!(
        matches!(
            &reason,
            DisconnectReason::Relay {
                error: RelayError::KeyNotAllowed(_),
                ..
            }
        ),
        "{reason:?}"
    );
    // No credentials: the relay's challenge cannot be answered.
    let reason = refused_with(config(&relay.grpc_url(), "node-1")).await;
    assert!(reason.to_string().contains("Challenge"), "{reason}");
}
