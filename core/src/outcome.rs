//! The outcome record: what became of one request, written exactly once
//! when the request ends, whatever way it ends. Breakers, retries, metrics
//! and access logs read this and nothing else, so they never disagree.

use crate::error::Side;
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
}
