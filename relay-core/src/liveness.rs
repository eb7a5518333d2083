//! When to ping a connection, and when to give up on it: the idle deadline of
//! `limits.ping_interval_ms` and `limits.pong_timeout_ms`.
//!
//! A front tells [`Liveness`] whenever anything arrives from the peer ([`Liveness::heard`]) and
//! asks it what is due at its deadline ([`Liveness::due`]): a ping after `ping_interval_ms` of
//! silence from the peer, and the end of the connection when nothing at all (not even the
//! Pong) arrived within `pong_timeout_ms` of that ping. A peer that keeps talking is never
//! pinged. Like the rest of the core it reads no clock: `now` is passed in.

use std::time::Duration;

use crate::config::Limits;
use crate::RelayError;

/// What is due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Nothing before [`Liveness::deadline`].
    Nothing,
    /// Send a ping now.
    Ping,
    /// The peer answered nothing in time: end the connection for this reason.
    Dead(RelayError),
}

/// One connection's idle deadline.
#[derive(Debug, Clone)]
pub struct Liveness {
    interval: Duration,
    timeout: Duration,
    /// When something last arrived from the peer.
    heard: Duration,
    /// When the unanswered ping went out, if one did.
    pinged: Option<Duration>,
}

impl Liveness {
    /// The deadline of a connection opened at `now`, or `None` when pings are off
    /// (`ping_interval_ms = 0`).
    pub fn new(limits: &Limits, now: Duration) -> Option<Liveness> {
        (limits.ping_interval_ms != 0).then(|| Liveness {
            interval: Duration::from_millis(limits.ping_interval_ms),
            timeout: Duration::from_millis(limits.pong_timeout_ms),
            heard: now,
            pinged: None,
        })
    }

    /// Something arrived from the peer (any frame: an envelope, a Pong, a Ping).
    pub fn heard(&mut self, now: Duration) {
        self.heard = self.heard.max(now);
        self.pinged = None;
    }

    /// When to ask [`Liveness::due`] next.
    pub fn deadline(&self) -> Duration {
        match self.pinged {
            Some(pinged) => pinged + self.timeout,
            None => self.heard + self.interval,
        }
    }

    /// What is due at `now`.
    pub fn due(&mut self, now: Duration) -> Due {
        if now < self.deadline() {
            return Due::Nothing;
        }
        match self.pinged {
            Some(_) => Due::Dead(RelayError::IdleTimeout {
                pong_timeout_ms: self.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            }),
            None => {
                self.pinged = Some(now);
                Due::Ping
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn liveness(interval: u64, timeout: u64) -> Option<Liveness> {
        let limits = Limits {
            ping_interval_ms: interval,
            pong_timeout_ms: timeout,
            ..Limits::default()
        };
        Liveness::new(&limits, ms(0))
    }

    #[derive(Debug)]
    enum Step {
        Heard(u64),
        Due(u64, Due),
        Deadline(u64),
    }

    #[test]
    fn silence_gets_a_ping_then_the_end() {
        let dead = Due::Dead(RelayError::IdleTimeout {
            pong_timeout_ms: 50,
        });
        let table: &[Step] = &[
            Step::Deadline(100),
            Step::Due(99, Due::Nothing),
            Step::Due(100, Due::Ping),
            // Asked again before the timeout: nothing new.
            Step::Deadline(150),
            Step::Due(149, Due::Nothing),
            // The Pong (or anything) comes: the next ping is an interval after it.
            Step::Heard(120),
            Step::Deadline(220),
            Step::Due(219, Due::Nothing),
            Step::Due(220, Due::Ping),
            Step::Due(269, Due::Nothing),
            Step::Due(270, dead),
        ];
        let mut l = liveness(100, 50).unwrap();
        for (n, step) in table.iter().enumerate() {
            match step {
                Step::Heard(at) => l.heard(ms(*at)),
                Step::Due(at, due) => assert_eq!(&l.due(ms(*at)), due, "step {n}: {step:?}"),
                Step::Deadline(at) => assert_eq!(l.deadline(), ms(*at), "step {n}"),
            }
        }
    }

    #[test]
    fn a_talking_peer_is_never_pinged_and_zero_turns_pings_off() {
        let mut l = liveness(100, 50).unwrap();
        for at in (0..10_000).step_by(60) {
            l.heard(ms(at));
            assert_eq!(l.due(ms(at + 59)), Due::Nothing);
        }
        assert!(liveness(0, 50).is_none());
        assert_eq!(
            RelayError::IdleTimeout {
                pong_timeout_ms: 50
            }
            .close_reason(),
            "idle_timeout: no frame from this peer within 50 ms of a ping"
        );
    }
}
