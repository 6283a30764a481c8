//! Why a message head was refused.

use std::fmt;

/// A message head that weft refuses to forward, with the reason.
///
/// Each variant maps to the status a client receives (see [`HeadError::status`]);
/// for a response head the runtime answers 502 instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// The head is not valid HTTP/1.x syntax (bad token, bare CR, obs-fold, ...).
    Malformed(&'static str),
    /// The request line is longer than the configured limit.
    RequestLineTooLong,
    /// The head is larger than the configured byte limit.
    HeadTooLarge,
    /// More header fields than the configured limit.
    TooManyHeaders,
    /// A header value holds a control byte.
    ControlByteInValue,
    /// HTTP/1.1 request without exactly one Host header.
    BadHost(&'static str),
    /// Content-Length is malformed, or several values differ.
    BadContentLength,
    /// Both Content-Length and Transfer-Encoding are present.
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding does not end in `chunked`, or repeats it.
    BadTransferEncoding,
    /// A transfer coding weft does not implement (only `chunked` is).
    UnsupportedTransferCoding,
    /// An HTTP version other than 1.0 and 1.1.
    UnsupportedVersion,
    /// A method weft does not proxy (CONNECT).
    UnsupportedMethod,
    /// A request target that is neither origin-form, absolute-form nor `*`.
    BadTarget,
}

impl HeadError {
    /// The status code a client gets for this request head.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::RequestLineTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::UnsupportedTransferCoding | HeadError::UnsupportedMethod => 501,
            HeadError::UnsupportedVersion => 505,
            _ => 400,
        }
    }

    /// A short stable code for the `weft-error` header and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            HeadError::Malformed(_) => "malformed-head",
            HeadError::RequestLineTooLong => "request-line-too-long",
            HeadError::HeadTooLarge => "head-too-large",
            HeadError::TooManyHeaders => "too-many-headers",
            HeadError::ControlByteInValue => "control-byte-in-header",
            HeadError::BadHost(_) => "bad-host",
            HeadError::BadContentLength => "bad-content-length",
            HeadError::ContentLengthWithTransferEncoding => "content-length-with-transfer-encoding",
            HeadError::BadTransferEncoding => "bad-transfer-encoding",
            HeadError::UnsupportedTransferCoding => "unsupported-transfer-coding",
            HeadError::UnsupportedVersion => "unsupported-version",
            HeadError::UnsupportedMethod => "unsupported-method",
            HeadError::BadTarget => "bad-request-target",
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(why) => write!(f, "malformed message head: {why}"),
            HeadError::RequestLineTooLong => f.write_str("request line is longer than the limit"),
            HeadError::HeadTooLarge => f.write_str("message head is larger than the limit"),
            HeadError::TooManyHeaders => f.write_str("more header fields than the limit"),
            HeadError::ControlByteInValue => f.write_str("control byte in a header value"),
            HeadError::BadHost(why) => write!(f, "bad Host header: {why}"),
            HeadError::BadContentLength => f.write_str("Content-Length is malformed or has differing values"),
            HeadError::ContentLengthWithTransferEncoding => {
                f.write_str("both Content-Length and Transfer-Encoding are present")
            }
            HeadError::BadTransferEncoding => {
                f.write_str("Transfer-Encoding must end with a single `chunked`")
            }
            HeadError::UnsupportedTransferCoding => {
                f.write_str("unsupported transfer coding (only chunked is implemented)")
            }
            HeadError::UnsupportedVersion => f.write_str("unsupported HTTP version"),
            HeadError::UnsupportedMethod => f.write_str("CONNECT is not supported"),
            HeadError::BadTarget => f.write_str("request target must be a path, an absolute URI or *"),
        }
    }
}

impl std::error::Error for HeadError {}
