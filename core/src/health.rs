//! Active health checking: what one endpoint's probe results make of it.
//!
//! A prober asks each endpoint of a cluster with `health_check = { ... }`
//! for `path` every `interval`; an answer within `timeout` with a 2xx
//! status passes, anything else fails. `unhealthy` failures in a row take
//! an endpoint out of rotation, `healthy` passes in a row bring it back
//! (Envoy's thresholds). The first probe decides at once, so that an
//! endpoint that is down at start does not take traffic for
//! `unhealthy * interval`. Combined with passive ejection: an endpoint is
//! used only when both let it.
//!
//! A state machine with no IO and no clock: the prober feeds it results.

use std::time::Duration;

/// A cluster's active health check (`health_check = { ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// The path asked for with GET (default `/health`).
    pub path: String,
    /// Time between two probes of one endpoint (default 5 s).
    pub interval: Duration,
    /// Time a probe has to connect and answer with its head (default 1 s).
    pub timeout: Duration,
    /// Passes in a row that bring an unhealthy endpoint back (default 2).
    pub healthy: u32,
    /// Failures in a row that take a healthy endpoint out (default 3).
    pub unhealthy: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            path: "/health".to_string(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        }
    }
}

/// True when a probe's answer with `status` passes.
pub fn status_passes(status: u16) -> bool {
    (200..300).contains(&status)
}

/// One endpoint's standing with the prober.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
    /// No probe has answered yet: the first result decides.
    fresh: bool,
    /// Results in a row that disagree with `healthy`.
    streak: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// An endpoint not yet probed: taken as healthy until the first probe.
    pub fn new() -> Self {
        Health {
            healthy: true,
            fresh: true,
            streak: 0,
        }
    }

    /// An endpoint whose standing is already known (carried across a
    /// reload): the thresholds apply from the first probe on.
    pub fn known(healthy: bool) -> Self {
        Health {
            healthy,
            fresh: false,
            streak: 0,
        }
    }

    /// True when the endpoint may take requests.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Takes one probe's result. Returns the new standing when it changed.
    pub fn probed(&mut self, passed: bool, s: &HealthSettings) -> Option<bool> {
        if std::mem::take(&mut self.fresh) {
            self.streak = 0;
            let changed = self.healthy != passed;
            self.healthy = passed;
            return changed.then_some(passed);
        }
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { s.unhealthy } else { s.healthy };
        if self.streak < needed.max(1) {
            return None;
        }
        self.streak = 0;
        self.healthy = passed;
        Some(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_probe_decides_at_once() {
        let s = HealthSettings::default();
        let mut h = Health::new();
        assert!(h.healthy());
        assert_eq!(h.probed(false, &s), Some(false));
        assert!(!h.healthy());
        let mut h = Health::new();
        assert_eq!(h.probed(true, &s), None);
        assert!(h.healthy());
    }

    #[test]
    fn thresholds_take_out_and_bring_back() {
        let s = HealthSettings {
            healthy: 2,
            unhealthy: 3,
            ..HealthSettings::default()
        };
        let mut h = Health::new();
        assert_eq!(h.probed(true, &s), None);
        assert_eq!(h.probed(false, &s), None);
        assert_eq!(h.probed(false, &s), None);
        // A pass in between starts the count again.
        assert_eq!(h.probed(true, &s), None);
        assert_eq!(h.probed(false, &s), None);
        assert_eq!(h.probed(false, &s), None);
        assert!(h.healthy());
        assert_eq!(h.probed(false, &s), Some(false));
        assert!(!h.healthy());
        assert_eq!(h.probed(true, &s), None);
        assert_eq!(h.probed(false, &s), None);
        assert_eq!(h.probed(true, &s), None);
        assert!(!h.healthy());
        assert_eq!(h.probed(true, &s), Some(true));
        assert!(h.healthy());
    }

    #[test]
    fn statuses_that_pass() {
        assert!(status_passes(200));
        assert!(status_passes(204));
        assert!(!status_passes(301));
        assert!(!status_passes(503));
    }

    #[test]
    fn a_known_standing_changes_only_past_its_threshold() {
        let s = HealthSettings {
            healthy: 2,
            unhealthy: 3,
            ..HealthSettings::default()
        };
        let mut h = Health::known(false);
        assert_eq!(h.probed(true, &s), None, "one pass is not enough");
        assert_eq!(h.probed(true, &s), Some(true));
        let mut h = Health::known(true);
        assert_eq!(h.probed(false, &s), None, "one failure is not enough");
    }
}
