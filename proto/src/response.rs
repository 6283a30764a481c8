//! Strict parsing of an HTTP/1.x response head.

use crate::error::HeadError;
use crate::head::{scan, BodyFraming, ConnectionOptions, HeaderRange, Limits, MAX_HEADERS_CAP};
use bytes::{Bytes, BytesMut};
use std::ops::Range;

/// A parsed response head owning its raw bytes.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The raw head, status line to the empty line included.
    pub raw: Bytes,
    /// Status code.
    pub status: u16,
    /// Reason phrase as sent.
    pub reason: Range<usize>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header fields in order.
    pub headers: Vec<HeaderRange>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// What `Connection` says.
    pub connection: ConnectionOptions,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// Name of header field `h`.
    pub fn name(&self, h: &HeaderRange) -> &[u8] {
        &self.raw[h.name.clone()]
    }

    /// Value of header field `h`.
    pub fn value(&self, h: &HeaderRange) -> &[u8] {
        &self.raw[h.value.clone()]
    }

    /// The value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| self.raw[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| &self.raw[h.value.clone()])
    }

    /// An interim (1xx) response: another head follows.
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parses one response head from the front of `buf`.
///
/// `head_request` says whether the request was HEAD (its response has no body
/// whatever the headers say). Returns `Ok(None)` when more bytes are needed; on
/// success the head is split off `buf`.
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &Limits,
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    parse_response_in(buf, limits, head_request, &mut Vec::new())
}

/// [`parse_response`], with the head's fields in `spare`'s memory (a
/// complete head takes the vector; see [`crate::parse_request_in`]).
pub fn parse_response_in(
    buf: &mut BytesMut,
    limits: &Limits,
    head_request: bool,
    spare: &mut Vec<HeaderRange>,
) -> Result<Option<ResponseHead>, HeadError> {
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    // Left uninitialised: httparse writes the fields it parses.
    let mut fields = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let mut res = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut res, buf, &mut fields[..max_headers]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::UnsupportedVersion),
        Err(httparse::Error::HeaderValue) => return Err(HeadError::ControlByteInValue),
        Err(_) => return Err(HeadError::Malformed("invalid response syntax")),
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::HeadTooLarge);
    }
    let base: &[u8] = buf;
    let minor = match res.version {
        Some(0) => 0,
        Some(1) => 1,
        _ => return Err(HeadError::UnsupportedVersion),
    };
    let status = res.code.ok_or(HeadError::Malformed("missing status"))?;
    if !(100..=999).contains(&status) {
        return Err(HeadError::Malformed("status out of range"));
    }
    let reason = res.reason.unwrap_or("").as_bytes();
    let reason_r = if reason.is_empty() {
        0..0
    } else {
        let start = reason.as_ptr() as usize - base.as_ptr() as usize;
        start..start + reason.len()
    };
    // The fields httparse filled (no copy: a vector here was an allocation
    // per message).
    let filled = res.headers.iter().take_while(|h| !h.name.is_empty()).count();
    let s = scan(base, &res.headers[..filled], std::mem::take(spare))?;
    let bodyless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodyless {
        BodyFraming::None
    } else if s.transfer_encoding {
        if s.content_length.is_some() {
            return Err(HeadError::ContentLengthWithTransferEncoding);
        }
        if s.chunked_count > 1 {
            return Err(HeadError::BadTransferEncoding);
        }
        if s.chunked_last && !s.other_coding {
            BodyFraming::Chunked
        } else if s.chunked_last {
            return Err(HeadError::UnsupportedTransferCoding);
        } else {
            // RFC 9112 §6.3: a response whose final coding is not chunked
            // runs until the connection closes.
            BodyFraming::UntilClose
        }
    } else {
        match s.content_length {
            Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    };
    let keep_alive =
        !s.connection.close && (minor == 1 || s.connection.keep_alive) && framing != BodyFraming::UntilClose;
    let raw = buf.split_to(len).freeze();
    Ok(Some(ResponseHead {
        raw,
        status,
        reason: reason_r,
        minor,
        headers: s.headers,
        framing,
        connection: s.connection,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, head: bool) -> Result<Option<ResponseHead>, HeadError> {
        parse_response(&mut BytesMut::from(s), &Limits::default(), head)
    }

    #[test]
    fn framings() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, BodyFraming::Length(3));
        assert!(r.keep_alive);
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, BodyFraming::None);
        let r = parse("HTTP/1.1 204 No Content\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(r.framing, BodyFraming::None);
        let r = parse("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, BodyFraming::None);
        let r = parse("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(r.framing, BodyFraming::UntilClose);
        assert!(!r.keep_alive);
        let r = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, BodyFraming::Chunked);
        let r = parse(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(r.is_informational());
        let r = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
    }

    #[test]
    fn rejects() {
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", false).is_err());
        assert!(parse("HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
        assert!(parse("garbage\r\n\r\n", false).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\n", false).unwrap().is_none());
    }
}
