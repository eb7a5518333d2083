//! Rate limits per identity: token buckets, with the time passed in.
//!
//! A bucket is kept as GCRA (the generic cell rate algorithm, as in `governor` and ATM
//! networks): one number, the "theoretical arrival time" `tat` at which the bucket would be
//! full again. Taking `n` tokens at `now` is allowed when `tat + n/rate - burst/rate <= now`,
//! and then moves `tat` on by `n/rate`. `governor` itself is not used because it owns its clock
//! (the core takes `now` from the front, and has no clock on wasm32); the arithmetic is these
//! few lines, tested below.
//!
//! Time is the front's wall clock (milliseconds since the Unix epoch, what the Worker has). A
//! clock that steps back only makes the bucket stricter until it catches up; never looser.

use std::time::Duration;

/// A bucket that refills at `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// When the bucket will be full again (0: full now).
    tat: Duration,
}

impl Bucket {
    pub const fn new() -> Bucket {
        Bucket {
            tat: Duration::ZERO,
        }
    }

    /// A bucket that is full again at `at` (what [`Bucket::full_at`] said of another).
    pub const fn refilled_at(at: Duration) -> Bucket {
        Bucket { tat: at }
    }

    /// When the bucket is full again.
    pub fn full_at(&self) -> Duration {
        self.tat
    }

    /// Takes `n` tokens at `now` if the bucket holds them; `rate` 0 means no limit.
    pub fn take(&mut self, n: u64, rate: u64, burst: u64, now: Duration) -> bool {
        if rate == 0 {
            return true;
        }
        let per_token =
            |tokens: u64| Duration::from_nanos(tokens.saturating_mul(1_000_000_000) / rate);
        let tat = self.tat.max(now);
        let after = tat.saturating_add(per_token(n));
        // Full, the bucket lets `burst` tokens through at once: `after` may run ahead of `now`
        // by at most the time `burst` tokens take to refill.
        if after.saturating_sub(now) > per_token(burst) {
            return false;
        }
        self.tat = after;
        true
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn a_burst_passes_then_the_rate() {
        let mut b = Bucket::new();
        // 10 per second, burst 5: five at once, the sixth refused.
        for i in 0..5 {
            assert!(b.take(1, 10, 5, T0), "token {i}");
        }
        assert!(!b.take(1, 10, 5, T0));
        // 100 ms later, one more token is there, and only one.
        let later = T0 + Duration::from_millis(100);
        assert!(b.take(1, 10, 5, later));
        assert!(!b.take(1, 10, 5, later));
        // After a long pause the bucket is full again, never fuller.
        let much_later = T0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take(1, 10, 5, much_later));
        }
        assert!(!b.take(1, 10, 5, much_later));
    }

    #[test]
    fn weights_and_refusals() {
        let mut b = Bucket::new();
        // Bytes: 1000/s, burst 1500. A refusal takes nothing.
        assert!(b.take(1000, 1000, 1500, T0));
        assert!(!b.take(1000, 1000, 1500, T0));
        assert!(b.take(500, 1000, 1500, T0));
        assert!(!b.take(1, 1000, 1500, T0));
        // More than the burst never passes.
        let mut fresh = Bucket::new();
        assert!(!fresh.take(1501, 1000, 1500, T0));
        // Rate 0: no limit.
        assert!((0..100_000).all(|_| fresh.take(u64::MAX, 0, 0, T0)));
    }

    #[test]
    fn a_clock_that_steps_back_never_loosens_the_limit() {
        let mut b = Bucket::new();
        for _ in 0..5 {
            assert!(b.take(1, 10, 5, T0));
        }
        assert!(!b.take(1, 10, 5, T0 - Duration::from_secs(10)));
    }
}
