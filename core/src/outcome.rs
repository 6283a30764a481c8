//! The outcome record: what became of one request, written exactly once
//! when the request ends, whatever way it ends. Breakers, retries, metrics
//! and access logs read this and nothing else, so they never disagree.

use crate::error::Side;
use crate::outlier::FailureKind;
use std::net::SocketAddr;
use std::time::Instant;

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The listener the request came in on (index into the configuration).
    pub listener: usize,
    /// The route it took (index within its listener), once routed.
    pub route: Option<usize>,
    /// The cluster it was sent to (index), once chosen: also when no
    /// endpoint could be picked.
    pub cluster: Option<usize>,
    /// The status of the response head sent to the client; `None` when
    /// none was sent (the client left, or the connection was cut first).
    pub status: Option<u16>,
    /// The `weft-error` code of what went wrong, if anything did (also when
    /// the error came after the head was sent, and for a client that left:
    /// `client-closed`).
    pub error: Option<&'static str>,
    /// Which side caused the error.
    pub side: Option<Side>,
    /// The endpoint the request was sent to (the last one tried).
    pub endpoint: Option<SocketAddr>,
    /// That endpoint as indices into the configuration: cluster, and
    /// endpoint within it (what outlier ejection keys on).
    pub target: Option<(usize, usize)>,
    /// Endpoints of the same cluster (indices) of the attempts that failed
    /// before the last one (a refused connection, a reset, a timeout, a
    /// status that went again): each counts against its endpoint.
    pub failed_attempts: Vec<usize>,
    /// Attempts made upstream (0 when the request never left weft).
    pub attempts: u32,
    /// Bytes of the request read from the client: head and body.
    pub bytes_in: u64,
    /// Bytes of the response written to the client: heads and body.
    pub bytes_out: u64,
    /// When the request head had arrived.
    pub head_at: Instant,
    /// When weft began its first attempt upstream (picked the endpoint),
    /// if it did and metrics are kept (a clock read is saved otherwise).
    pub sent_at: Option<Instant>,
    /// When the upstream's response head arrived, if one did.
    pub upstream_at: Option<Instant>,
    /// When the exchange ended.
    pub end_at: Instant,
}

impl Outcome {
    /// A record for a request on listener `listener` whose head arrived at
    /// `head_at`, with nothing decided yet.
    pub fn new(listener: usize, head_at: Instant) -> Self {
        Outcome {
            listener,
            route: None,
            cluster: None,
            sent_at: None,
            status: None,
            error: None,
            side: None,
            endpoint: None,
            target: None,
            failed_attempts: Vec::new(),
            attempts: 0,
            bytes_in: 0,
            bytes_out: 0,
            head_at,
            upstream_at: None,
            end_at: head_at,
        }
    }

    /// Records an error (the first one stays: it is the cause).
    pub fn fail(&mut self, code: &'static str, side: Side) {
        if self.error.is_none() {
            self.error = Some(code);
            self.side = Some(side);
        }
    }

    /// What the request says about its endpoint's health: `Some(true)` for
    /// an answer that counts for it, `Some(false)` for one that counts
    /// against it (a failure on the upstream side: connecting, a reset, a
    /// malformed answer, a timeout; or a status `kind` calls a failure),
    /// `None` when it says nothing (no endpoint, or the client's doing).
    pub fn endpoint_verdict(&self, kind: FailureKind) -> Option<bool> {
        self.target?;
        if self.side == Some(Side::Upstream) {
            return Some(false);
        }
        self.upstream_at?;
        // The endpoint answered; its status decides. (An error after it,
        // on the client's side, is not the endpoint's.)
        self.status.map(|status| !kind.status_fails(status))
    }

    /// True when the request succeeded: a response head was sent, no error,
    /// and the status is not a 5xx.
    pub fn success(&self) -> bool {
        classify(self.status, self.error)
    }

    /// The time weft itself spent on the request: from its head's arrival
    /// to its end, less the wait for the upstream (from the first attempt
    /// to the response head: connecting, the upstream's work, retries and
    /// their backoff). A body that streams after the response head counts
    /// in (its pace is set by both peers and by weft alike).
    pub fn overhead(&self) -> std::time::Duration {
        let total = self.end_at.saturating_duration_since(self.head_at);
        match (self.sent_at, self.upstream_at) {
            (Some(sent), Some(answered)) => total.saturating_sub(answered.saturating_duration_since(sent)),
            // No answer came: counted up to the first attempt only (when
            // the attempts failed is not recorded).
            (Some(sent), None) => sent.saturating_duration_since(self.head_at),
            _ => total,
        }
    }
}

/// The success rule of [`Outcome::success`], for a status and error kept
/// apart from their record (metrics' series): a response head sent, no
/// error, and not a 5xx.
pub fn classify(status: Option<u16>, error: Option<&str>) -> bool {
    error.is_none() && status.is_some_and(|s| s < 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_is_the_cause() {
        let mut o = Outcome::new(0, Instant::now());
        assert!(!o.success(), "no response sent yet");
        o.status = Some(200);
        assert!(o.success());
        o.fail("upstream-body-error", Side::Upstream);
        o.fail("client-closed", Side::Downstream);
        assert_eq!(
            (o.error, o.side),
            (Some("upstream-body-error"), Some(Side::Upstream))
        );
        assert!(!o.success());
    }

    #[test]
    fn overhead_is_the_time_not_spent_waiting_on_the_upstream() {
        let t = Instant::now();
        let us = |n| t + std::time::Duration::from_micros(n);
        let mut o = Outcome::new(0, t);
        o.end_at = us(50);
        assert_eq!(o.overhead().as_micros(), 50, "answered by weft: all of it");
        o.sent_at = Some(us(10));
        o.end_at = us(900);
        assert_eq!(o.overhead().as_micros(), 10, "no answer: up to the first attempt");
        o.upstream_at = Some(us(880));
        assert_eq!(
            o.overhead().as_micros(),
            30,
            "before the attempt and after the answer"
        );
    }

    #[test]
    fn the_endpoint_verdict_blames_only_the_upstream_side() {
        let t = Instant::now();
        let mut o = Outcome::new(0, t);
        assert_eq!(o.endpoint_verdict(FailureKind::Any5xx), None, "no endpoint");
        o.target = Some((0, 1));
        assert_eq!(
            o.endpoint_verdict(FailureKind::Any5xx),
            None,
            "no answer yet, no error"
        );
        o.fail("connect-refused", Side::Upstream);
        assert_eq!(o.endpoint_verdict(FailureKind::Any5xx), Some(false));
        let mut o = Outcome::new(0, t);
        o.target = Some((0, 1));
        o.upstream_at = Some(t);
        o.status = Some(503);
        assert_eq!(o.endpoint_verdict(FailureKind::Any5xx), Some(false));
        o.status = Some(500);
        assert_eq!(o.endpoint_verdict(FailureKind::Gateway), Some(true));
        o.status = Some(200);
        o.fail("client-closed", Side::Downstream);
        assert_eq!(
            o.endpoint_verdict(FailureKind::Any5xx),
            Some(true),
            "the client left: not the endpoint's fault"
        );
    }
}
