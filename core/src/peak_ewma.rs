//! Peak-EWMA: an endpoint's cost is its round-trip estimate times its
//! requests in flight plus one. The estimate jumps to a slower observation
//! at once (the peak), moves toward faster ones by an exponentially
//! weighted average with time constant `decay`, and between observations
//! decays toward zero, so that an endpoint that was slow is tried again in
//! time. linkerd2-proxy's default balancer (tower's, after Finagle's).
//!
//! No clock of its own: every call takes the time.

use std::time::{Duration, Instant};

/// A cluster's Peak-EWMA settings (`peak_ewma = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakEwmaSettings {
    /// The estimate of an endpoint never observed (linkerd2-proxy: 30 ms).
    pub default_rtt: Duration,
    /// The time constant of the average and of the decay (linkerd2-proxy:
    /// 10 s).
    pub decay: Duration,
}

impl Default for PeakEwmaSettings {
    fn default() -> Self {
        PeakEwmaSettings {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// One endpoint's round-trip estimate.
#[derive(Debug, Clone, Copy)]
pub struct RttEstimate {
    /// Nanoseconds, as of `at`.
    ns: f64,
    at: Instant,
}

impl RttEstimate {
    /// An endpoint never observed: the default estimate.
    pub fn new(now: Instant, s: &PeakEwmaSettings) -> Self {
        RttEstimate {
            ns: s.default_rtt.as_nanos() as f64,
            at: now,
        }
    }

    /// The weight the estimate of `at` keeps at `now`.
    fn keep(&self, now: Instant, s: &PeakEwmaSettings) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (-elapsed / s.decay.as_secs_f64().max(1e-9)).exp()
    }

    /// Takes one observed round trip.
    pub fn observe(&mut self, now: Instant, rtt: Duration, s: &PeakEwmaSettings) {
        let rtt = rtt.as_nanos() as f64;
        let decayed = self.ns * self.keep(now, s);
        self.ns = if rtt > decayed {
            // A peak counts at once.
            rtt
        } else {
            let w = self.keep(now, s);
            self.ns * w + rtt * (1.0 - w)
        };
        self.at = now;
    }

    /// The estimate at `now`, decayed since the last observation.
    pub fn estimate(&self, now: Instant, s: &PeakEwmaSettings) -> f64 {
        self.ns * self.keep(now, s)
    }

    /// The cost of sending one more request: the estimate times (requests
    /// in flight + 1).
    pub fn cost(&self, now: Instant, in_flight: u32, s: &PeakEwmaSettings) -> f64 {
        self.estimate(now, s) * (f64::from(in_flight) + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    #[test]
    fn a_slow_answer_counts_at_once_and_fast_ones_pull_it_down_slowly() {
        let s = PeakEwmaSettings::default();
        let t = Instant::now();
        let mut e = RttEstimate::new(t, &s);
        assert!((e.estimate(t, &s) - 30.0 * MS).abs() < 1.0, "the default");
        e.observe(t, Duration::from_millis(200), &s);
        assert!(
            (e.estimate(t, &s) - 200.0 * MS).abs() < 1.0,
            "a peak counts at once"
        );
        // Fast answers 1 s apart: the average moves toward 1 ms with the
        // 10 s time constant.
        let mut now = t;
        for _ in 0..10 {
            now += Duration::from_secs(1);
            e.observe(now, Duration::from_millis(1), &s);
        }
        let est = e.estimate(now, &s) / MS;
        assert!(
            est < 200.0 * (-1.0f64).exp() + 1.0 && est > 50.0,
            "{est} ms after 10 s of 1 ms answers"
        );
    }

    #[test]
    fn without_observations_the_estimate_decays_toward_zero() {
        let s = PeakEwmaSettings::default();
        let t = Instant::now();
        let mut e = RttEstimate::new(t, &s);
        e.observe(t, Duration::from_millis(100), &s);
        let later = e.estimate(t + Duration::from_secs(10), &s) / MS;
        assert!((later - 100.0 * (-1.0f64).exp()).abs() < 0.01, "{later}");
        assert!(e.estimate(t + Duration::from_secs(100), &s) < 0.01 * MS);
    }

    #[test]
    fn cost_grows_with_requests_in_flight() {
        let s = PeakEwmaSettings::default();
        let t = Instant::now();
        let e = RttEstimate::new(t, &s);
        assert!((e.cost(t, 3, &s) - 4.0 * e.cost(t, 0, &s)).abs() < 1.0);
    }
}
