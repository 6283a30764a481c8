//! Strict parsing of an HTTP/1.x request head.

use crate::error::HeadError;
use crate::head::{scan, BodyFraming, ConnectionOptions, HeaderRange, Limits, MAX_HEADERS_CAP};
use bytes::{Bytes, BytesMut};
use std::ops::Range;

/// A parsed request head. It owns the head's bytes (split off the read
/// buffer without copying) and describes them with ranges.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The raw head, start line to the empty line included.
    pub raw: Bytes,
    /// Method token.
    pub method: Range<usize>,
    /// Request target as sent.
    pub target: Range<usize>,
    /// Path part of the target (without query), used for routing.
    pub path: Range<usize>,
    /// The authority used for routing: from an absolute-form target, else Host.
    pub authority: Option<Range<usize>>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header fields in order.
    pub headers: Vec<HeaderRange>,
    /// How the request body is delimited.
    pub framing: BodyFraming,
    /// What `Connection` says.
    pub connection: ConnectionOptions,
    /// The client wants to keep the connection open after this exchange.
    pub keep_alive: bool,
    /// The client asks to switch protocols (`Upgrade` + `Connection: upgrade`).
    pub upgrade: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
    /// How long the client waits, from its shortest well-formed deadline
    /// field (`grpc-timeout`, `weft-timeout-ms`).
    pub deadline: Option<std::time::Duration>,
    /// The path after normalisation ([`crate::path::normalize`]) when it
    /// differs from the raw one: routing and the upstream see this.
    pub normalized: Option<Box<[u8]>>,
}

impl RequestHead {
    /// The method as text.
    pub fn method(&self) -> &str {
        // The parser only accepts token bytes, which are ASCII.
        std::str::from_utf8(&self.raw[self.method.clone()]).unwrap_or("")
    }

    /// The request target as sent.
    pub fn target(&self) -> &[u8] {
        &self.raw[self.target.clone()]
    }

    /// True for an absolute-form target (`GET http://a.test/x`): the
    /// authority is in the target.
    pub fn is_absolute_form(&self) -> bool {
        self.authority
            .as_ref()
            .is_some_and(|a| self.target.start <= a.start && a.end <= self.target.end)
    }

    /// The target from the path on, as sent: path and query (`/x?y`). For
    /// an absolute-form target without a path this is empty or starts with `?`.
    pub fn path_and_query(&self) -> &[u8] {
        &self.raw[self.path.start..self.target.end]
    }

    /// The query with its `?`, as sent (empty without one).
    pub fn query(&self) -> &[u8] {
        &self.raw[self.path.end..self.target.end]
    }

    /// The target goes upstream rewritten: absolute form becomes origin form,
    /// or the path was normalised. Then it is `/` + [`Self::path`] + query.
    pub fn target_rewritten(&self) -> bool {
        self.normalized.is_some() || self.is_absolute_form()
    }

    /// The path as routed and forwarded (normalised), without the query.
    pub fn path_bytes(&self) -> &[u8] {
        match &self.normalized {
            Some(n) => n,
            None => &self.raw[self.path.clone()],
        }
    }

    /// Merges runs of slashes in the path (`//a///b` is `/a/b`), for
    /// listeners that ask for it.
    pub fn merge_slashes(&mut self) {
        let merged = match crate::path::normalize(self.path_bytes(), true) {
            Ok(std::borrow::Cow::Owned(m)) => m,
            _ => return,
        };
        self.normalized = Some(merged.into_boxed_slice());
    }

    /// The path (normalised), without the query.
    pub fn path(&self) -> &str {
        std::str::from_utf8(self.path_bytes()).unwrap_or("")
    }

    /// The authority (host and optional port) of the request, if any.
    pub fn authority(&self) -> Option<&str> {
        self.authority
            .clone()
            .and_then(|r| std::str::from_utf8(&self.raw[r]).ok())
    }

    /// The host of the request without port, for routing.
    pub fn host(&self) -> Option<&str> {
        self.authority().map(strip_port)
    }

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

    /// The value of field `name` when the head has exactly one field of
    /// that name (case-insensitive); `None` when it has none or several.
    pub fn single_header(&self, name: &str) -> Option<&[u8]> {
        let mut named = self
            .headers
            .iter()
            .filter(|h| self.raw[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()));
        let first = named.next()?;
        named.next().is_none().then(|| &self.raw[first.value.clone()])
    }

    /// True for methods whose response never has a body (HEAD).
    pub fn is_head(&self) -> bool {
        &self.raw[self.method.clone()] == b"HEAD"
    }
}

/// Removes a trailing `:port` from an authority (keeps IPv6 brackets intact).
pub fn strip_port(authority: &str) -> &str {
    // Byte searches: `:` and `]` are ASCII, so each cut is at a char
    // boundary (and far cheaper than a `char` pattern on every request).
    let b = authority.as_bytes();
    if b.first() == Some(&b'[') {
        return match b.iter().position(|&c| c == b']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match b.iter().rposition(|&c| c == b':') {
        Some(i) => &authority[..i],
        None => authority,
    }
}

/// The bytes an authority may hold (RFC 3986 `host [ ":" port ]`: unreserved,
/// sub-delims, `%`, `:` and the brackets of an IP literal), one flag per byte.
const AUTHORITY_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let extra = b"-._~:[]%!$&'()*+,;=";
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric();
        i += 1;
    }
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
};

fn valid_authority(a: &[u8]) -> bool {
    !a.is_empty() && a.iter().all(|&b| AUTHORITY_BYTES[usize::from(b)])
}

/// Finds the end of the request line; `None` while it is incomplete.
fn request_line_len(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|b| *b == b'\n')
}

/// Parses one request head from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. On success the head's bytes
/// are split off `buf` (what follows them, body or pipelined requests, stays).
/// Errors are final: the connection must answer with [`HeadError::status`] and close.
pub fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    parse_request_in(buf, limits, &mut Vec::new())
}

/// [`parse_request`], with the head's fields in `spare`'s memory: a
/// complete head takes the vector (`spare` is left empty), so that a
/// caller that hands the fields of finished heads back allocates nothing.
pub fn parse_request_in(
    buf: &mut BytesMut,
    limits: &Limits,
    spare: &mut Vec<HeaderRange>,
) -> Result<Option<RequestHead>, HeadError> {
    // Tolerate (and drop) empty lines before a request line (RFC 9112 §2.2).
    let blank = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
    if blank > 0 {
        let _ = buf.split_to(blank);
    }
    match request_line_len(buf) {
        Some(n) if n > limits.max_request_line => return Err(HeadError::RequestLineTooLong),
        None if buf.len() > limits.max_request_line => return Err(HeadError::RequestLineTooLong),
        _ => {}
    }
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    // Left uninitialised: httparse writes the fields it parses (filling
    // 256 empty ones first cost about 1,000 instructions per head).
    let mut fields = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CAP];
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, &mut fields[..max_headers]) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::UnsupportedVersion),
        Err(httparse::Error::Token) => return Err(HeadError::Malformed("invalid token")),
        Err(httparse::Error::HeaderName) => return Err(HeadError::Malformed("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(HeadError::ControlByteInValue),
        Err(httparse::Error::NewLine) => return Err(HeadError::Malformed("invalid line ending")),
        Err(_) => return Err(HeadError::Malformed("invalid request syntax")),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if buf.len() > limits.max_head_bytes {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(None);
        }
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::HeadTooLarge);
    }
    let base: &[u8] = buf;
    let minor = match req.version {
        Some(0) => 0,
        Some(1) => 1,
        _ => return Err(HeadError::UnsupportedVersion),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let offset = |s: &[u8]| {
        let start = s.as_ptr() as usize - base.as_ptr() as usize;
        start..start + s.len()
    };
    let method_r = offset(method.as_bytes());
    let target_r = offset(target.as_bytes());
    if method == "CONNECT" {
        return Err(HeadError::UnsupportedMethod);
    }
    // The fields httparse filled (no copy: a vector here was an allocation
    // per message).
    let filled = req.headers.iter().take_while(|h| !h.name.is_empty()).count();
    let s = scan(base, &req.headers[..filled], std::mem::take(spare))?;

    // Target forms (RFC 9112 §3.2).
    let t = target.as_bytes();
    let (path_r, uri_authority) = if t.first() == Some(&b'/') {
        let end = t.iter().position(|b| *b == b'?').unwrap_or(t.len());
        (target_r.start..target_r.start + end, None)
    } else if t == b"*" {
        if method != "OPTIONS" {
            return Err(HeadError::BadTarget);
        }
        (target_r.clone(), None)
    } else {
        let lower = target.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
        let skip = if lower.starts_with("http://") {
            7
        } else if lower.starts_with("https://") {
            8
        } else {
            return Err(HeadError::BadTarget);
        };
        let rest = &t[skip..];
        let auth_end = rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        let auth = &rest[..auth_end];
        if !valid_authority(auth) {
            return Err(HeadError::BadTarget);
        }
        let a_start = target_r.start + skip;
        let after = &rest[auth_end..];
        let p_end = after.iter().position(|b| *b == b'?').unwrap_or(after.len());
        let p_start = a_start + auth_end;
        (p_start..p_start + p_end, Some(a_start..a_start + auth_end))
    };

    if s.hosts > 1 {
        return Err(HeadError::BadHost("more than one Host header"));
    }
    if minor == 1 && s.hosts == 0 {
        return Err(HeadError::BadHost("HTTP/1.1 request without Host"));
    }
    if let Some(h) = &s.host {
        let v = &base[h.clone()];
        if !v.is_empty() && !valid_authority(v) {
            return Err(HeadError::BadHost("invalid characters"));
        }
    }
    let framing = if s.transfer_encoding {
        if minor == 0 {
            return Err(HeadError::BadTransferEncoding);
        }
        if s.content_length.is_some() {
            return Err(HeadError::ContentLengthWithTransferEncoding);
        }
        if !s.chunked_last || s.chunked_count != 1 {
            return Err(HeadError::BadTransferEncoding);
        }
        if s.other_coding {
            return Err(HeadError::UnsupportedTransferCoding);
        }
        BodyFraming::Chunked
    } else {
        match s.content_length {
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    };
    let keep_alive = !s.connection.close && (minor == 1 || s.connection.keep_alive);
    let upgrade = minor == 1 && s.upgrade && s.connection.upgrade;
    let expect_continue = minor == 1 && s.expect_continue;
    let authority = uri_authority.or_else(|| s.host.clone().filter(|r| !r.is_empty()));
    // A fragment never belongs in a request target (RFC 9112 §3.2), and
    // a path is routed and forwarded only in its normal form.
    if target.as_bytes().contains(&b'#') {
        return Err(HeadError::BadTarget);
    }
    let path = &base[path_r.clone()];
    let normalized = if path.starts_with(b"/") {
        match crate::path::normalize(path, false) {
            Ok(std::borrow::Cow::Borrowed(_)) => None,
            Ok(std::borrow::Cow::Owned(n)) => Some(n.into_boxed_slice()),
            Err(_) => return Err(HeadError::BadTarget),
        }
    } else {
        None
    };
    let raw = buf.split_to(len).freeze();
    Ok(Some(RequestHead {
        raw,
        method: method_r,
        target: target_r,
        path: path_r,
        authority,
        minor,
        headers: s.headers,
        framing,
        connection: s.connection,
        keep_alive,
        upgrade,
        expect_continue,
        deadline: s.deadline,
        normalized,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(s), &Limits::default())
    }

    fn err(s: &str) -> HeadError {
        parse(s).expect_err("must be rejected")
    }

    #[test]
    fn simple_get() {
        let mut b = BytesMut::from("GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\n\r\nGET /next");
        let h = parse_request(&mut b, &Limits::default()).unwrap().unwrap();
        assert_eq!(h.method(), "GET");
        assert_eq!(h.path(), "/a/b");
        assert_eq!(h.target(), b"/a/b?x=1");
        assert_eq!(h.host(), Some("Example.com"));
        assert_eq!(h.framing, BodyFraming::None);
        assert!(h.keep_alive);
        assert_eq!(&b[..], b"GET /next");
    }

    #[test]
    fn partial_needs_more() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn framing() {
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Length(5));
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Length(5));
    }

    #[test]
    fn rejects_ambiguous_framing() {
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::ContentLengthWithTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            HeadError::BadContentLength
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n"),
            HeadError::BadContentLength
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
            HeadError::BadTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            HeadError::BadTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            HeadError::UnsupportedTransferCoding
        );
        assert_eq!(
            err("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::BadTransferEncoding
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
            HeadError::BadTransferEncoding
        );
    }

    #[test]
    fn rejects_bad_syntax() {
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n").status(),
            400
        );
        assert_eq!(err("GET / HTTP/1.1\r\nHost : a\r\n\r\n").status(), 400);
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n").status(),
            400
        );
        // Control bytes in values, DEL and NUL among them, whatever their
        // place (httparse's vectorised scan of a long value included).
        for value in [
            "a\x7fb",
            "\x00",
            "b\x1f",
            &format!("{}\x0b{}", "v".repeat(40), "w".repeat(40)),
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {value}\r\n\r\n");
            assert_eq!(err(&head), HeadError::ControlByteInValue, "{value:?}");
        }
        assert_eq!(err("G(T / HTTP/1.1\r\nHost: a\r\n\r\n").status(), 400);
        assert_eq!(err("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n").status(), 400);
        assert_eq!(
            err("GET / HTTP/1.1\r\n\r\n"),
            HeadError::BadHost("HTTP/1.1 request without Host")
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            HeadError::BadHost("more than one Host header")
        );
        assert_eq!(err("GET / HTTP/2.0\r\nHost: a\r\n\r\n").status(), 505);
        assert_eq!(err("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").status(), 501);
        assert_eq!(err("GET foo HTTP/1.1\r\nHost: a\r\n\r\n"), HeadError::BadTarget);
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_request_line: 32,
            max_head_bytes: 128,
            max_headers: 3,
        };
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(40));
        assert_eq!(
            parse_request(&mut BytesMut::from(&long[..]), &l).unwrap_err(),
            HeadError::RequestLineTooLong
        );
        let long = format!("GET /{}", "a".repeat(40));
        assert_eq!(
            parse_request(&mut BytesMut::from(&long[..]), &l).unwrap_err(),
            HeadError::RequestLineTooLong
        );
        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\n\r\n";
        assert_eq!(
            parse_request(&mut BytesMut::from(many), &l).unwrap_err(),
            HeadError::TooManyHeaders
        );
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nA: {}\r\n", "x".repeat(200));
        assert_eq!(
            parse_request(&mut BytesMut::from(&big[..]), &l).unwrap_err(),
            HeadError::HeadTooLarge
        );
    }

    #[test]
    fn an_h2c_upgrade_offer_is_declined() {
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.upgrade);
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c, websocket\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade, "another protocol is offered too");
    }

    #[test]
    fn connection_and_upgrade() {
        let h = parse("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, x-foo\r\nUpgrade: websocket\r\nX-Foo: 1\r\n\r\n").unwrap().unwrap();
        assert!(h.upgrade);
        assert_eq!(h.connection.others.len(), 1);
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn absolute_form() {
        let h = parse("GET http://api.example.com:80/v1/x?q HTTP/1.1\r\nHost: other\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.host(), Some("api.example.com"));
        assert_eq!(h.path(), "/v1/x");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn ports_come_off_at_the_last_colon_outside_brackets() {
        assert_eq!(strip_port("a.test:8080"), "a.test");
        assert_eq!(strip_port("a.test"), "a.test");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("[::1"), "[::1");
        assert_eq!(strip_port("ü.test:1"), "ü.test");
        assert_eq!(strip_port(""), "");
    }

    #[test]
    fn authority_bytes_are_those_rfc_3986_allows() {
        for b in 0..=255u8 {
            let allowed = b.is_ascii_alphanumeric() || b"-._~:[]%!$&'()*+,;=".contains(&b);
            assert_eq!(valid_authority(&[b]), allowed, "byte {b:#04x}");
        }
        assert!(!valid_authority(b""));
        assert!(valid_authority(b"[fe80::1%25eth0]:443"));
        assert!(!valid_authority(b"a.test/x"));
        assert!(!valid_authority(b"a b"));
    }
}
