//! Outlier ejection: an endpoint that fails `consecutive_failures` times in
//! a row is taken out of its cluster's rotation for `base_ejection` times
//! the number of times it has been ejected (at most `max_ejection`), then
//! readmitted on probation, where one request decides: a success makes it
//! healthy, a failure ejects it again at once, for longer. At most
//! `max_ejection_percent` of a cluster is out at a time (at least one
//! endpoint may be). Envoy's outlier detection, per core: each worker
//! ejects on its own evidence.
//!
//! A state machine with no clock of its own: every call takes the time.

use std::time::{Duration, Instant};

/// A cluster's ejection policy (`breaker = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Failures in a row that eject an endpoint (Envoy's
    /// `consecutive_5xx`: 5). 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one adds as much (Envoy's
    /// `base_ejection_time`: 30 s).
    pub base_ejection: Duration,
    /// The longest ejection (Envoy's `max_ejection_time`: 300 s).
    pub max_ejection: Duration,
    /// Most of a cluster's endpoints out at once, in percent (Envoy's
    /// `max_ejection_percent`: 10); at least one endpoint may always be.
    pub max_ejection_percent: u8,
    /// What counts as a failure.
    pub failures: FailureKind,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
            failures: FailureKind::Any5xx,
        }
    }
}

/// Which answers count against an endpoint. Connection failures, resets,
/// malformed answers and timeouts always do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Any 5xx from the endpoint too (Envoy's `consecutive_5xx`).
    Any5xx,
    /// Only 502, 503 and 504 from the endpoint (Envoy's
    /// `consecutive_gateway_failure`).
    Gateway,
}

impl FailureKind {
    /// True when an answer with `status` from the endpoint is a failure.
    pub fn status_fails(self, status: u16) -> bool {
        match self {
            FailureKind::Any5xx => status >= 500,
            FailureKind::Gateway => matches!(status, 502..=504),
        }
    }
}

/// Where one endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In rotation; `since`: when it last became healthy.
    Healthy { since: Instant },
    /// Out of rotation until `until`, then on probation.
    Ejected { until: Instant },
}

/// One endpoint's record.
#[derive(Debug, Clone)]
pub struct Outlier {
    state: State,
    /// Failures in a row.
    failures: u32,
    /// Ejections so far (the next lasts one base longer); forgotten after
    /// `max_ejection` of health.
    times_ejected: u32,
    /// When the last failure was counted.
    last_failure: Option<Instant>,
}

/// How long failures in a row weigh as load for the balancers: long enough
/// that an endpoint failing fast is not preferred, short enough that an
/// endpoint that failed once is tried again soon, also when little traffic
/// would otherwise always find a less loaded one.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(1);

impl Outlier {
    /// A healthy endpoint, as of `now`.
    pub fn new(now: Instant) -> Self {
        Outlier {
            state: State::Healthy { since: now },
            failures: 0,
            times_ejected: 0,
            last_failure: None,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// What the failures in a row weigh as load for a balancer (so that an
    /// endpoint that fails fast, with nothing in flight, is not preferred):
    /// their number, for [`FAILURE_MEMORY`] after the last one. `now` is
    /// asked only when there are some.
    pub fn failure_load(&self, now: impl FnOnce() -> Instant) -> u32 {
        match self.last_failure {
            Some(at) if self.failures > 0 && now().saturating_duration_since(at) < FAILURE_MEMORY => {
                self.failures
            }
            _ => 0,
        }
    }

    /// True when the endpoint is out of rotation at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        matches!(self.state, State::Ejected { until } if now < until)
    }

    /// When its ejection ends, if it is (or was) ejected and not yet
    /// decided on probation.
    pub fn ejected_until(&self) -> Option<Instant> {
        match self.state {
            State::Ejected { until } => Some(until),
            State::Healthy { .. } => None,
        }
    }

    /// True when the endpoint is back from an ejection and its next answer
    /// decides.
    pub fn on_probation(&self, now: Instant) -> bool {
        matches!(self.state, State::Ejected { until } if now >= until)
    }

    /// An answer that counts for the endpoint. While it is ejected, an
    /// answer to a request sent before the ejection changes nothing: only
    /// probation readmits it.
    pub fn success(&mut self, now: Instant, s: &OutlierSettings) {
        match self.state {
            State::Ejected { until } if now < until => {}
            State::Ejected { .. } => {
                self.failures = 0;
                self.state = State::Healthy { since: now };
            }
            State::Healthy { since } => {
                self.failures = 0;
                if self.times_ejected > 0 && now.duration_since(since) >= s.max_ejection {
                    self.times_ejected = 0;
                }
            }
        }
    }

    /// An answer that counts against the endpoint. `room`: the cluster may
    /// take one more endpoint out ([`may_eject`]). Returns true when this
    /// failure ejected it.
    pub fn failure(&mut self, now: Instant, s: &OutlierSettings, room: bool) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(now);
        if s.consecutive_failures == 0 {
            // Ejection is off; the count still tells the balancers.
            return false;
        }
        let due = match self.state {
            // Probation: one failure decides.
            State::Ejected { until } => now >= until,
            State::Healthy { .. } => self.failures >= s.consecutive_failures,
        };
        if !due || !room {
            return false;
        }
        self.times_ejected = self.times_ejected.saturating_add(1);
        let length = s
            .base_ejection
            .saturating_mul(self.times_ejected)
            .min(s.max_ejection);
        self.state = State::Ejected { until: now + length };
        self.failures = 0;
        true
    }
}

/// True when a cluster of `endpoints`, `ejected` of them out now, may take
/// one more out: at most `max_ejection_percent` of it, and always at least
/// one.
pub fn may_eject(endpoints: usize, ejected: usize, s: &OutlierSettings) -> bool {
    let cap = (endpoints * usize::from(s.max_ejection_percent) / 100).max(1);
    ejected < cap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(100),
            max_ejection_percent: 50,
            failures: FailureKind::Any5xx,
        }
    }

    #[test]
    fn failures_weigh_as_load_for_a_second() {
        let s = settings();
        let t = Instant::now();
        let mut o = Outlier::new(t);
        assert_eq!(o.failure_load(|| unreachable!("no clock without failures")), 0);
        o.failure(t, &s, true);
        o.failure(t, &s, true);
        assert_eq!(o.failure_load(|| t + Duration::from_millis(999)), 2);
        assert_eq!(o.failure_load(|| t + FAILURE_MEMORY), 0);
        o.success(t, &s);
        assert_eq!(o.failure_load(|| t), 0);
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_in_between_resets_the_count() {
        let s = settings();
        let t = Instant::now();
        let mut o = Outlier::new(t);
        assert!(!o.failure(t, &s, true));
        assert!(!o.failure(t, &s, true));
        o.success(t, &s);
        assert!(!o.failure(t, &s, true));
        assert!(!o.failure(t, &s, true));
        assert!(!o.ejected(t));
        assert!(o.failure(t, &s, true), "the third failure in a row ejects");
        assert!(o.ejected(t) && o.ejected(t + Duration::from_secs(29)));
        assert!(
            !o.ejected(t + Duration::from_secs(30)),
            "back after base_ejection"
        );
        assert!(o.on_probation(t + Duration::from_secs(30)));
    }

    #[test]
    fn probation_is_decided_by_one_answer_and_ejections_grow_to_the_cap() {
        let s = settings();
        let t = Instant::now();
        let mut o = Outlier::new(t);
        for _ in 0..3 {
            o.failure(t, &s, true);
        }
        // Back at 30 s: one failure ejects again, for 2 × 30 s.
        let t1 = t + Duration::from_secs(30);
        assert!(o.failure(t1, &s, true));
        assert!(o.ejected(t1 + Duration::from_secs(59)) && !o.ejected(t1 + Duration::from_secs(60)));
        // Then 90 s, then the cap of 100 s.
        let t2 = t1 + Duration::from_secs(60);
        assert!(o.failure(t2, &s, true));
        assert!(!o.ejected(t2 + Duration::from_secs(90)));
        let t3 = t2 + Duration::from_secs(90);
        assert!(o.failure(t3, &s, true));
        assert!(o.ejected(t3 + Duration::from_secs(99)) && !o.ejected(t3 + Duration::from_secs(100)));
        // A success on probation makes it healthy: failures count from zero.
        let t4 = t3 + Duration::from_secs(100);
        o.success(t4, &s);
        assert!(!o.ejected(t4) && !o.on_probation(t4));
        assert!(!o.failure(t4, &s, true) && !o.failure(t4, &s, true));
    }

    #[test]
    fn a_long_healthy_stretch_forgets_past_ejections() {
        let s = settings();
        let t = Instant::now();
        let mut o = Outlier::new(t);
        for _ in 0..3 {
            o.failure(t, &s, true);
        }
        let back = t + Duration::from_secs(30);
        o.success(back, &s);
        // Healthy for max_ejection: the next ejection is a first one again.
        let later = back + Duration::from_secs(100);
        o.success(later, &s);
        for _ in 0..3 {
            o.failure(later, &s, true);
        }
        assert!(!o.ejected(later + Duration::from_secs(30)), "30 s, not 60 s");
    }

    #[test]
    fn a_late_success_does_not_end_an_ejection() {
        let s = settings();
        let t = Instant::now();
        let mut o = Outlier::new(t);
        for _ in 0..3 {
            o.failure(t, &s, true);
        }
        // An older request answers well a moment after the ejection.
        o.success(t + Duration::from_millis(50), &s);
        assert!(
            o.ejected(t + Duration::from_secs(29)),
            "still out until base_ejection"
        );
    }

    #[test]
    fn no_room_means_no_ejection_and_zero_turns_it_off() {
        let s = settings();
        let t = Instant::now();
        let mut o = Outlier::new(t);
        for _ in 0..5 {
            assert!(!o.failure(t, &s, false));
        }
        assert!(!o.ejected(t));
        // Room again: the next failure (still in a row) ejects.
        assert!(o.failure(t, &s, true));
        let off = OutlierSettings {
            consecutive_failures: 0,
            ..s
        };
        let mut o = Outlier::new(t);
        for _ in 0..100 {
            assert!(!o.failure(t, &off, true));
        }
    }

    #[test]
    fn the_cap_allows_a_share_of_the_cluster_and_at_least_one() {
        let s = OutlierSettings {
            max_ejection_percent: 10,
            ..settings()
        };
        assert!(may_eject(3, 0, &s), "at least one, even when 10 % of 3 is 0");
        assert!(!may_eject(3, 1, &s));
        assert!(may_eject(20, 1, &s) && !may_eject(20, 2, &s));
        let half = OutlierSettings {
            max_ejection_percent: 50,
            ..settings()
        };
        assert!(may_eject(4, 1, &half) && !may_eject(4, 2, &half));
    }

    #[test]
    fn failure_kinds() {
        assert!(FailureKind::Any5xx.status_fails(500) && FailureKind::Any5xx.status_fails(503));
        assert!(!FailureKind::Any5xx.status_fails(404));
        assert!(!FailureKind::Gateway.status_fails(500) && FailureKind::Gateway.status_fails(502));
    }
}
