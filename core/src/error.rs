//! The one error type of the request path.
//!
//! It records what went wrong, which side caused it and whether a retry is
//! safe; the status, the `weft-error` header and (later) retries, breakers and
//! metrics all read from it, so they never disagree.

use std::fmt;

/// Which side of the proxy caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (downstream).
    Downstream,
    /// The upstream endpoint.
    Upstream,
    /// weft itself (configuration, limits).
    Proxy,
}

/// What went wrong while proxying one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches the request.
    NoRoute,
    /// The cluster has no endpoint to send to.
    NoEndpoint,
    /// The endpoint refused the connection.
    ConnectRefused,
    /// Connecting to the endpoint failed otherwise (unreachable, reset...).
    ConnectFailed,
    /// Connecting took longer than the cluster's `connect_timeout`.
    ConnectTimeout,
    /// The route's `rate_limit` is spent for now.
    RateLimited,
    /// A cluster threshold (`limits`: requests in flight, connections,
    /// concurrent retries) is full: answered at once instead of queued.
    Overflow,
    /// weft could not open a connection for want of its own resources (no
    /// file descriptor, no local port, no memory): no fault of the
    /// endpoint's, which is neither blamed nor avoided.
    LocalResources,
    /// The upstream reset or closed the connection before a complete response head.
    UpstreamReset,
    /// The upstream sent a response head weft cannot accept.
    UpstreamMalformed,
    /// An HTTP/2 upstream refused the stream (RST_STREAM or GOAWAY with
    /// REFUSED_STREAM, or a stream above a GOAWAY's last id): it did not
    /// process the request, which may go again for any method.
    UpstreamRefusedStream,
    /// The upstream body broke off or was malformed after the head was forwarded.
    UpstreamBodyError,
    /// The client's body broke off or was malformed.
    DownstreamBodyError,
    /// The client sent nothing of its body within the listener's idle timeout.
    DownstreamBodyTimeout,
    /// The upstream did not answer within the route's timeout.
    UpstreamTimeout,
    /// The request's own deadline (`grpc-timeout`, `weft-timeout-ms`),
    /// shorter than the route's timeout, passed before the upstream's
    /// answer: the client's choice, not counted against the endpoint.
    DeadlineExceeded,
    /// The client closed its connection before the response (nothing is
    /// sent; logs say 499, as nginx does).
    DownstreamClosed,
    /// The upstream went silent for the cluster's `read_timeout` while its
    /// response body was read (after the head was sent: the client
    /// connection is cut).
    UpstreamReadTimeout,
    /// The client read nothing of the response for the listener's
    /// `write_timeout` (its connection is closed).
    DownstreamWriteTimeout,
    /// The client's request head did not arrive whole within the
    /// listener's `header_timeout`.
    HeaderTimeout,
    /// The client's request head was refused (malformed, too large, an
    /// unsupported version or coding...): the status and `weft-error` code
    /// come from the parser's verdict.
    BadRequest {
        /// 400, 414, 431, 501 or 505.
        status: u16,
        /// The `weft-error` code.
        code: &'static str,
    },
}

/// Whether a failed attempt may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// The request never reached the upstream: safe on any connection.
    Safe,
    /// It went out on a reused (pooled) connection that the upstream had
    /// already closed, and nothing came back: safe on a fresh connection
    /// for an idempotent method.
    StaleConnection,
    /// The upstream may have processed it: never sent again.
    Never,
}

/// The one error type of the request path, for every answer weft writes
/// itself and every failure after: what went wrong, which side caused it
/// ([`ProxyError::side`]), the status and `weft-error` code, whether a retry
/// is safe, and the IO error behind it (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Whether the attempt may be sent again.
    pub retry: RetryClass,
    /// The IO error behind it, if one was.
    pub cause: Option<std::io::ErrorKind>,
}

impl ProxyError {
    /// An error of `kind`; the retry class follows from the kind (the
    /// request never left weft when connecting failed).
    pub fn new(kind: ErrorKind) -> Self {
        let retry = match kind {
            ErrorKind::NoRoute
            | ErrorKind::NoEndpoint
            | ErrorKind::ConnectRefused
            | ErrorKind::ConnectFailed
            | ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamRefusedStream => RetryClass::Safe,
            _ => RetryClass::Never,
        };
        ProxyError {
            kind,
            retry,
            cause: None,
        }
    }

    /// The same error, sent on a reused connection the upstream had closed
    /// before answering anything.
    pub fn on_stale_connection(self) -> Self {
        ProxyError {
            retry: RetryClass::StaleConnection,
            ..self
        }
    }

    /// The same error, caused by IO error `e`.
    pub fn caused_by(self, e: &std::io::Error) -> Self {
        ProxyError {
            cause: Some(e.kind()),
            ..self
        }
    }

    /// True when the request may be sent again (on a fresh connection for
    /// [`RetryClass::StaleConnection`]); `idempotent`: its method is.
    pub fn may_retry(&self, idempotent: bool) -> bool {
        match self.retry {
            RetryClass::Safe => true,
            RetryClass::StaleConnection => idempotent,
            RetryClass::Never => false,
        }
    }

    /// Which side caused the error.
    pub fn side(&self) -> Side {
        match self.kind {
            ErrorKind::NoRoute
            | ErrorKind::NoEndpoint
            | ErrorKind::LocalResources
            | ErrorKind::Overflow
            | ErrorKind::RateLimited => Side::Proxy,
            ErrorKind::DownstreamBodyError
            | ErrorKind::DownstreamBodyTimeout
            | ErrorKind::DownstreamClosed
            | ErrorKind::DownstreamWriteTimeout
            | ErrorKind::HeaderTimeout
            | ErrorKind::DeadlineExceeded
            | ErrorKind::BadRequest { .. } => Side::Downstream,
            _ => Side::Upstream,
        }
    }

    /// The status a client receives when no response head was sent yet.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::NoRoute => 404,
            ErrorKind::RateLimited => 429,
            ErrorKind::NoEndpoint
            | ErrorKind::ConnectRefused
            | ErrorKind::ConnectFailed
            | ErrorKind::LocalResources
            | ErrorKind::Overflow => 503,
            ErrorKind::ConnectTimeout
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamReadTimeout
            | ErrorKind::DeadlineExceeded => 504,
            ErrorKind::DownstreamWriteTimeout | ErrorKind::HeaderTimeout => 408,
            ErrorKind::BadRequest { status, .. } => status,
            ErrorKind::DownstreamClosed => 499,
            ErrorKind::UpstreamReset
            | ErrorKind::UpstreamMalformed
            | ErrorKind::UpstreamBodyError
            | ErrorKind::UpstreamRefusedStream => 502,
            ErrorKind::DownstreamBodyError => 400,
            ErrorKind::DownstreamBodyTimeout => 408,
        }
    }

    /// A stable short code: the value of the `weft-error` header.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::NoRoute => "no-route",
            ErrorKind::NoEndpoint => "no-endpoint",
            ErrorKind::ConnectRefused => "connect-refused",
            ErrorKind::ConnectFailed => "connect-failed",
            ErrorKind::ConnectTimeout => "connect-timeout",
            ErrorKind::LocalResources => "local-resources",
            ErrorKind::Overflow => "overflow",
            ErrorKind::RateLimited => "rate-limited",
            ErrorKind::UpstreamReset => "upstream-reset",
            ErrorKind::UpstreamMalformed => "upstream-malformed-response",
            ErrorKind::UpstreamRefusedStream => "upstream-refused-stream",
            ErrorKind::UpstreamBodyError => "upstream-body-error",
            ErrorKind::DownstreamBodyError => "downstream-body-error",
            ErrorKind::DownstreamBodyTimeout => "body-timeout",
            ErrorKind::UpstreamTimeout => "upstream-timeout",
            ErrorKind::DeadlineExceeded => "deadline-exceeded",
            ErrorKind::DownstreamClosed => "client-closed",
            ErrorKind::UpstreamReadTimeout => "upstream-read-timeout",
            ErrorKind::DownstreamWriteTimeout => "client-write-timeout",
            ErrorKind::HeaderTimeout => "header-timeout",
            ErrorKind::BadRequest { code, .. } => code,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ErrorKind::NoRoute => "no route matches this request",
            ErrorKind::NoEndpoint => "the cluster has no endpoint available",
            ErrorKind::ConnectRefused => "the upstream refused the connection",
            ErrorKind::ConnectFailed => "connecting to the upstream failed",
            ErrorKind::ConnectTimeout => "connecting to the upstream timed out",
            ErrorKind::Overflow => "the cluster is at its limit of requests, connections or retries",
            ErrorKind::RateLimited => "the route's rate limit is spent for now: retry later",
            ErrorKind::LocalResources => {
                "weft is out of file descriptors, local ports or memory: raise the limit or lower the load"
            }
            ErrorKind::UpstreamReset => "the upstream closed the connection before a complete response",
            ErrorKind::UpstreamMalformed => "the upstream sent a malformed response head",
            ErrorKind::UpstreamRefusedStream => "the upstream refused the request's HTTP/2 stream",
            ErrorKind::UpstreamBodyError => "the upstream response body broke off",
            ErrorKind::DownstreamBodyError => "the request body was malformed or broke off",
            ErrorKind::DownstreamBodyTimeout => {
                "the request body stalled: nothing arrived within the listener's idle_timeout"
            }
            ErrorKind::UpstreamTimeout => "the upstream did not answer within the route's timeout",
            ErrorKind::DeadlineExceeded => {
                "the upstream did not answer within the request's own deadline (grpc-timeout or weft-timeout-ms)"
            }
            ErrorKind::DownstreamClosed => "the client closed the connection before the response",
            ErrorKind::UpstreamReadTimeout => "the upstream went silent in the middle of the response body",
            ErrorKind::DownstreamWriteTimeout => {
                "the client read nothing of the response within the write_timeout"
            }
            ErrorKind::HeaderTimeout => {
                "the request head did not arrive within the listener's header_timeout"
            }
            ErrorKind::BadRequest { .. } => "the request head was refused",
        })
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_sides_agree() {
        assert_eq!(ProxyError::new(ErrorKind::NoRoute).status(), 404);
        assert_eq!(ProxyError::new(ErrorKind::ConnectRefused).status(), 503);
        assert_eq!(ProxyError::new(ErrorKind::ConnectTimeout).status(), 504);
        assert_eq!(ProxyError::new(ErrorKind::UpstreamReset).status(), 502);
        assert!(ProxyError::new(ErrorKind::ConnectRefused).may_retry(false));
        let reset = ProxyError::new(ErrorKind::UpstreamReset);
        assert!(
            !reset.may_retry(true),
            "a reset after the request went out is never retried"
        );
        assert!(reset.on_stale_connection().may_retry(true));
        assert!(
            !reset.on_stale_connection().may_retry(false),
            "a POST is never sent twice"
        );
        let refused = ProxyError::new(ErrorKind::BadRequest {
            status: 431,
            code: "too-many-headers",
        });
        assert_eq!(
            (refused.status(), refused.code(), refused.side()),
            (431, "too-many-headers", Side::Downstream)
        );
        assert_eq!(ProxyError::new(ErrorKind::UpstreamReset).side(), Side::Upstream);
        let local = ProxyError::new(ErrorKind::LocalResources);
        assert_eq!(
            (local.status(), local.code(), local.side()),
            (503, "local-resources", Side::Proxy),
            "weft's own shortage blames no endpoint"
        );
        let late = ProxyError::new(ErrorKind::DeadlineExceeded);
        assert_eq!(
            (late.status(), late.code(), late.side()),
            (504, "deadline-exceeded", Side::Downstream),
            "a client's own deadline blames no endpoint"
        );
        let stalled = ProxyError::new(ErrorKind::DownstreamBodyTimeout);
        assert_eq!(
            (stalled.status(), stalled.code(), stalled.side()),
            (408, "body-timeout", Side::Downstream)
        );
    }
}
