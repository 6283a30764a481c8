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
    /// When the upstream's response head arrived, if one did.
    pub upstream_at: Option<Instant>,
    /// When the exchange ended.
    pub end_at: Instant,
}

impl Outcome {
    /// A record for a request whose head arrived at `head_at`, with nothing
    /// decided yet.
    pub fn new(head_at: Instant) -> Self {
        Outcome {
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
        self.error.is_none() && self.status.is_some_and(|s| s < 500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_is_the_cause() {
        let mut o = Outcome::new(Instant::now());
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
    fn the_endpoint_verdict_blames_only_the_upstream_side() {
        let t = Instant::now();
        let mut o = Outcome::new(t);
        assert_eq!(o.endpoint_verdict(FailureKind::Any5xx), None, "no endpoint");
        o.target = Some((0, 1));
        assert_eq!(
            o.endpoint_verdict(FailureKind::Any5xx),
            None,
            "no answer yet, no error"
        );
        o.fail("connect-refused", Side::Upstream);
        assert_eq!(o.endpoint_verdict(FailureKind::Any5xx), Some(false));
        let mut o = Outcome::new(t);
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
