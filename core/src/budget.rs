//! A retry budget: retries may add at most `ratio` of the requests seen,
//! plus `min_per_second` a second, over a sliding `window`, so that retries
//! cannot multiply an outage (linkerd2-proxy's budget, after Finagle's).
//!
//! The window is ten slots; each counts the requests and the retries of its
//! tenth. A state machine with no clock of its own: every call takes the
//! time.

use std::time::{Duration, Instant};

/// A cluster's retry budget (`retry_budget = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Retries allowed per original request (linkerd2-proxy: 0.2).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic (linkerd2-proxy: 10).
    pub min_per_second: u32,
    /// How far back requests and retries count (linkerd2-proxy: 10 s).
    pub window: Duration,
}

// Validated at load: the ratio is a finite number, never NaN.
impl Eq for BudgetSettings {}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

const SLOTS: usize = 10;

/// Requests and retries of one tenth of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    requests: u32,
    retries: u32,
}

/// One budget (per core and cluster).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    settings: BudgetSettings,
    slots: [Slot; SLOTS],
    /// Time zero of the slot numbering.
    epoch: Instant,
    /// The slot number (since `epoch`) that `slots` were last moved to.
    current: u64,
    /// When that slot ends: until then a call needs no arithmetic.
    current_end: Instant,
}

impl RetryBudget {
    /// An empty budget as of `now`.
    pub fn new(now: Instant, settings: BudgetSettings) -> Self {
        let mut b = RetryBudget {
            settings,
            slots: [Slot::default(); SLOTS],
            epoch: now,
            current: 0,
            current_end: now,
        };
        b.current_end = now + b.slot_len();
        b
    }

    fn slot_len(&self) -> Duration {
        (self.settings.window / SLOTS as u32).max(Duration::from_millis(1))
    }

    /// Moves the window to `now`, emptying the slots it left behind; the
    /// slot of `now`.
    fn advance(&mut self, now: Instant) -> usize {
        if now < self.current_end {
            return (self.current % SLOTS as u64) as usize;
        }
        let len = self.slot_len();
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        let n = (elapsed / len.as_nanos()) as u64;
        let into = Duration::from_nanos((elapsed % len.as_nanos()) as u64);
        self.current_end = now + (len - into);
        if n > self.current {
            let gone = (n - self.current).min(SLOTS as u64);
            for k in 1..=gone {
                self.slots[((self.current + k) % SLOTS as u64) as usize] = Slot::default();
            }
            self.current = n;
        }
        (self.current % SLOTS as u64) as usize
    }

    /// Counts an original request.
    pub fn deposit(&mut self, now: Instant) {
        let i = self.advance(now);
        self.slots[i].requests = self.slots[i].requests.saturating_add(1);
    }

    /// Takes one retry from the budget if it has one; false when retrying
    /// now would exceed it.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        let i = self.advance(now);
        let (requests, retries) = self.slots.iter().fold((0u64, 0u64), |(q, r), s| {
            (q + u64::from(s.requests), r + u64::from(s.retries))
        });
        let floor = f64::from(self.settings.min_per_second) * self.settings.window.as_secs_f64();
        let allowed = floor + self.settings.ratio * requests as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.slots[i].retries = self.slots[i].retries.saturating_add(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_floor() -> BudgetSettings {
        BudgetSettings {
            ratio: 0.2,
            min_per_second: 0,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn retries_are_a_share_of_the_requests() {
        let t = Instant::now();
        let mut b = RetryBudget::new(t, no_floor());
        assert!(!b.withdraw(t), "no requests, no floor: no retry");
        for _ in 0..100 {
            b.deposit(t);
        }
        let granted = (0..100).filter(|_| b.withdraw(t)).count();
        assert_eq!(granted, 20, "20 % of 100 requests");
    }

    #[test]
    fn the_floor_allows_a_few_retries_a_second_without_traffic() {
        let t = Instant::now();
        let s = BudgetSettings {
            min_per_second: 10,
            ..no_floor()
        };
        let mut b = RetryBudget::new(t, s);
        let granted = (0..1000).filter(|_| b.withdraw(t)).count();
        assert_eq!(granted, 100, "10 a second over a 10 s window");
    }

    #[test]
    fn old_requests_and_retries_leave_the_window() {
        let t = Instant::now();
        let mut b = RetryBudget::new(t, no_floor());
        for _ in 0..50 {
            b.deposit(t);
        }
        assert_eq!((0..100).filter(|_| b.withdraw(t)).count(), 10);
        // Half a window later the old slot still counts: nothing more.
        let half = t + Duration::from_secs(5);
        assert!(!b.withdraw(half));
        // A whole window later it is gone: no requests, no retries.
        let later = t + Duration::from_secs(10);
        assert!(!b.withdraw(later));
        for _ in 0..10 {
            b.deposit(later);
        }
        assert_eq!((0..100).filter(|_| b.withdraw(later)).count(), 2);
        // Long after, everything is forgotten, even across many windows.
        let much_later = t + Duration::from_secs(3600);
        for _ in 0..5 {
            b.deposit(much_later);
        }
        assert_eq!((0..100).filter(|_| b.withdraw(much_later)).count(), 1);
    }

    #[test]
    fn the_window_slides_slot_by_slot() {
        let t = Instant::now();
        let mut b = RetryBudget::new(t, no_floor());
        for s in 0..10 {
            for _ in 0..10 {
                b.deposit(t + Duration::from_secs(s));
            }
        }
        // 100 requests in the window: 20 retries.
        let end = t + Duration::from_millis(9_999);
        assert_eq!((0..100).filter(|_| b.withdraw(end)).count(), 20);
        // One slot later the first 10 requests have left: 18 allowed, 20 spent.
        assert!(!b.withdraw(t + Duration::from_secs(10)));
    }
}
