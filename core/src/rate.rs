//! Local rate limiting: a token bucket per route and core. `rps` tokens a
//! second flow in, at most `burst` wait; each request takes one, or is
//! refused (429 `rate-limited`). A state machine with no clock of its own:
//! every call takes the time.

use std::time::Instant;

/// A route's limit (`rate_limit = { rps, burst }`), for the whole
/// process: each worker gets its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests a second.
    pub rps: u32,
    /// Requests that may come at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    /// One worker's share of `workers` (at least one request a second and
    /// a burst of one).
    pub fn per_worker(&self, workers: usize) -> RateLimit {
        let share = |n: u32| n.div_ceil(workers.max(1) as u32).max(1);
        RateLimit {
            rps: share(self.rps),
            burst: share(self.burst),
        }
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket as of `now`.
    pub fn new(now: Instant, limit: RateLimit) -> Self {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    /// Takes a token for one request; false when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.rps)).min(f64::from(self.limit.burst));
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t = Instant::now();
        let mut b = TokenBucket::new(t, RateLimit { rps: 10, burst: 5 });
        assert_eq!((0..20).filter(|_| b.take(t)).count(), 5, "the burst");
        // 10 a second: one every 100 ms.
        assert!(!b.take(t + Duration::from_millis(50)));
        assert!(b.take(t + Duration::from_millis(100)));
        assert!(!b.take(t + Duration::from_millis(150)));
        // A quiet second refills to the burst, not beyond.
        let later = t + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| b.take(later)).count(), 5);
    }

    #[test]
    fn shares_per_worker() {
        let l = RateLimit { rps: 100, burst: 10 };
        assert_eq!(l.per_worker(4), RateLimit { rps: 25, burst: 3 });
        assert_eq!(
            RateLimit { rps: 1, burst: 1 }.per_worker(8),
            RateLimit { rps: 1, burst: 1 }
        );
    }
}
