//! How a client connects: the relay, the node id, the reconnect policy and the bounds of its
//! queues.

use std::time::Duration;

use crate::error::ConnectError;

/// Everything [`connect`](crate::connect) needs. Start from [`Config::new`] and change fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The relay's gRPC address, e.g. `http://127.0.0.1:50051`.
    pub url: String,
    /// This node's peer id, sent as `x-gsio-node-id` metadata on every (re)connection.
    pub node_id: String,
    /// When to try again after a connection ends or an attempt fails.
    pub backoff: Backoff,
    /// Reconnect even when the relay refused the id (`ALREADY_EXISTS`, `INVALID_ARGUMENT`).
    /// Off by default: another live node holds the id, or the id is malformed, and retrying
    /// changes neither. One case is retried regardless: `ALREADY_EXISTS` on a *reconnect* after
    /// this client had been welcomed with the id, since then the holder may be this client's own
    /// old connection, which the relay drops once it notices it is gone (TCP keepalive, about
    /// 90 s).
    pub retry_refused_id: bool,
    /// Envelopes accepted by `send` and not yet handed to a stream, across reconnects. Bounds
    /// the memory a long outage can take; past it `send` waits and `try_send` refuses.
    pub outbox_capacity: usize,
    /// Events not yet taken from [`Events`](crate::Events). When it is full the client stops
    /// reading the stream, and a relay that cannot deliver to it disconnects it as a slow
    /// consumer (a [`Disconnected`](crate::Event::Disconnected) event, then a reconnect).
    pub events_capacity: usize,
    /// Bound on each step of a connection attempt: TCP+HTTP/2 connect, opening the stream,
    /// and the `Welcome`.
    pub connect_timeout: Duration,
    /// How this node proves its id, on a relay whose `[auth]` asks for proof; `None` for an
    /// `open` relay.
    pub credentials: Option<Credentials>,
}

/// A node's proof of identity (README, "Authentication").
#[derive(Clone)]
pub enum Credentials {
    /// Its Ed25519 key: the client answers the relay's `Challenge` by signing it. The id is
    /// [`Config::node_id`]: the key's own ([`derived_id`](crate::derived_id)), or one the relay's
    /// `auth.keys` binds to the key.
    Signed(ed25519_dalek::SigningKey),
    /// A token from the relay's operator, sent as `authorization: Bearer` metadata.
    Token(String),
}

/// Never shows the key or the token.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Signed(key) => write!(
                f,
                "Signed(public key {})",
                crate::hex(key.verifying_key().as_bytes())
            ),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

impl Config {
    /// Defaults: [`Backoff::default`], ids refused by the relay are final, an outbox of 1024
    /// envelopes, 1024 events, 10 s per connection step.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Config {
        Config {
            url: url.into(),
            node_id: node_id.into(),
            backoff: Backoff::default(),
            retry_refused_id: false,
            outbox_capacity: 1024,
            events_capacity: 1024,
            connect_timeout: Duration::from_secs(10),
            credentials: None,
        }
    }

    /// A node that proves `key`, under the id derived from it (`ed25519-<public key in hex>`).
    pub fn signed(url: impl Into<String>, key: ed25519_dalek::SigningKey) -> Config {
        let id = crate::derived_id(&key.verifying_key());
        let mut config = Config::new(url, id);
        config.credentials = Some(Credentials::Signed(key));
        config
    }

    pub(crate) fn validate(&self) -> Result<(), ConnectError> {
        let b = &self.backoff;
        let invalid = |what| Err(ConnectError::InvalidConfig(what));
        if self.outbox_capacity == 0 {
            return invalid("outbox_capacity must be at least 1");
        }
        if self.events_capacity == 0 {
            return invalid("events_capacity must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be above zero");
        }
        if b.initial > b.max {
            return invalid("backoff.initial must not exceed backoff.max");
        }
        if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
            return invalid("backoff.multiplier must be 1 or more");
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return invalid("backoff.jitter must be within 0 to 1");
        }
        Ok(())
    }
}

/// Bounded exponential backoff with jitter.
///
/// Attempt `n` (1 for the first failure since the last `Welcome`) waits
/// `min(initial * multiplier^(n-1), max)`, less a random share of up to `jitter` of it, so
/// nodes cut off together by a relay restart do not all come back at the same instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// 0 (no jitter) to 1 (anywhere between 0 and the full delay).
    pub jitter: f64,
    /// Failed attempts in a row after which the client stops; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 250 ms doubling up to 30 s, up to half of each delay taken off at random, forever.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The wait before retrying after failure number `attempt` (1-based), given a random draw
    /// `random` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1000) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let base = base.min(self.max.as_secs_f64());
        Duration::from_secs_f64(base * (1.0 - self.jitter * random.clamp(0.0, 1.0)))
    }

    /// Whether failure number `attempt` is the last one allowed.
    pub fn exhausted(&self, attempt: u32) -> bool {
        self.max_attempts.is_some_and(|max| attempt >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_bound_and_jitter_only_shortens() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: Some(3),
        };
        let ms = |attempt, random| backoff.delay(attempt, random).as_millis();
        assert_eq!(
            [1, 2, 3, 4, 5, 1000, u32::MAX].map(|a| ms(a, 0.0)),
            [100, 200, 400, 800, 1000, 1000, 1000]
        );
        assert_eq!(ms(1, 0.999_999), 50);
        assert_eq!(ms(9, 1.0), 500);
        assert!(!backoff.exhausted(2) && backoff.exhausted(3));
        assert!(!Backoff::default().exhausted(u32::MAX));
    }

    /// The README's numbers, written out rather than read back from `Default`: 250 ms doubling
    /// to 30 s, forever, and the jitter only ever takes time off.
    #[test]
    fn the_default_backoff_is_250_ms_doubling_to_30_s_forever() {
        let backoff = Config::new("http://127.0.0.1:1", "n").backoff;
        assert_eq!(
            (backoff.initial, backoff.max, backoff.max_attempts),
            (Duration::from_millis(250), Duration::from_secs(30), None)
        );
        let ms = |attempt, random| backoff.delay(attempt, random).as_millis();
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 100, u32::MAX].map(|a| ms(a, 0.0)),
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        // Jitter shortens a delay (by at most half of it), never lengthens it.
        for attempt in [1, 4, 8, 50] {
            let full = ms(attempt, 0.0);
            for random in [0.0, 0.1, 0.5, 0.9, 0.999_999] {
                let delay = ms(attempt, random);
                assert!(
                    delay <= full && delay >= full / 2,
                    "{attempt} {random}: {delay}"
                );
            }
            assert!(ms(attempt, 0.9) < full, "the draw takes time off");
        }
        // Forever: no number of failures in a row is the last.
        assert!([1, 1000, u32::MAX].iter().all(|&n| !backoff.exhausted(n)));
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = Config::new("http://127.0.0.1:1", "n");
        assert!(ok.validate().is_ok());
        let cases: [fn(&mut Config); 5] = [
            |c| c.outbox_capacity = 0,
            |c| c.events_capacity = 0,
            |c| c.backoff.multiplier = 0.5,
            |c| c.backoff.jitter = 1.5,
            |c| c.backoff.initial = Duration::from_secs(60),
        ];
        for change in cases {
            let mut config = ok.clone();
            change(&mut config);
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
