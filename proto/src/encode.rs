//! Re-encoding of heads for the next hop, and weft's own short responses.
//!
//! Only heads are written here; body bytes are never copied by weft-proto.
//! Framing headers are always re-emitted from the parsed framing, never copied,
//! so the next hop sees exactly one unambiguous framing.

use crate::head::{is_hop_by_hop, BodyFraming, HeaderKind};
use crate::request::RequestHead;
use crate::response::ResponseHead;
use bytes::{BufMut, BytesMut};
use std::fmt::Write as _;
use std::time::Duration;

/// What the proxy adds to a request it forwards.
#[derive(Debug, Clone, Copy)]
pub struct RequestOptions<'a> {
    /// The client's IP address, appended to `x-forwarded-for`.
    pub client_ip: &'a str,
    /// `http` or `https`: becomes `x-forwarded-proto`.
    pub proto: &'a str,
    /// Host to send when the request has none (HTTP/1.0 clients).
    pub default_host: &'a str,
    /// The time the request has left, written into its deadline fields
    /// (`grpc-timeout`, `weft-timeout-ms`) in place of theirs; None keeps
    /// them as they came.
    pub deadline: Option<Duration>,
    /// The client's verified identity (mutual TLS): sent as
    /// `weft-client-identity`. A client's own field of that name is never
    /// forwarded.
    pub identity: Option<&'a str>,
    /// The `traceparent` of the next hop, in place of the request's own
    /// (`None`: the request's goes on as it came, if it had one).
    pub traceparent: Option<&'a [u8]>,
    /// An `x-request-id` to add (the request had none).
    pub request_id: Option<&'a [u8]>,
}

impl RequestOptions<'_> {
    /// Whether a field named `name` of the request is replaced by one weft
    /// writes (its `traceparent` when a new one goes on).
    #[inline]
    pub fn replaces(&self, name: &[u8]) -> bool {
        self.traceparent.is_some() && name.eq_ignore_ascii_case(b"traceparent")
    }

    /// Appends the trace fields weft writes.
    pub fn put_trace(&self, out: &mut BytesMut) {
        if let Some(tp) = self.traceparent {
            put_field(out, b"traceparent", tp);
        }
        if let Some(id) = self.request_id {
            put_field(out, b"x-request-id", id);
        }
    }
}

fn put_num(out: &mut BytesMut, n: u64) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends one header field line.
pub(crate) fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Kept fields of a parsed head, copied from its raw bytes: consecutive
/// lines already as [`put_field`] writes them (`name: value` and CRLF) go out
/// in one copy rather than field by field. Anything else written to `out`
/// between two kept fields must [`flush`](Self::flush) first, so that order
/// holds.
#[derive(Default)]
struct Kept {
    /// Raw bytes of the lines gathered so far (empty: none).
    run: std::ops::Range<usize>,
}

impl Kept {
    /// Appends field `h` of `raw`, exactly as `put_field` would.
    #[inline]
    fn field(&mut self, out: &mut BytesMut, raw: &[u8], h: &crate::head::HeaderRange) {
        let end = h.value.end + 2;
        let canonical =
            raw.get(h.name.end..h.value.start) == Some(b": ") && raw.get(h.value.end..end) == Some(b"\r\n");
        if !canonical {
            self.flush(out, raw);
            put_field(out, &raw[h.name.clone()], &raw[h.value.clone()]);
            return;
        }
        // The line is the name, `: ` and the value (the separator fills the
        // gap between them exactly), then CRLF: what `put_field` writes.
        if self.run.is_empty() || self.run.end != h.name.start {
            self.flush(out, raw);
            self.run.start = h.name.start;
        }
        self.run.end = end;
    }

    /// Writes the lines gathered so far.
    #[inline]
    fn flush(&mut self, out: &mut BytesMut, raw: &[u8]) {
        if !self.run.is_empty() {
            out.put_slice(&raw[self.run.clone()]);
            self.run = 0..0;
        }
    }
}

/// Appends `content-length: n`.
pub(crate) fn put_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    put_num(out, n);
    out.put_slice(b"\r\n");
}

/// Appends `connection: upgrade` and the message's `Upgrade` fields.
fn put_upgrade(out: &mut BytesMut, raw: &[u8], headers: &[crate::head::HeaderRange]) {
    out.put_slice(b"connection: upgrade\r\n");
    for h in headers.iter().filter(|h| h.kind == HeaderKind::Upgrade) {
        put_field(out, b"upgrade", &raw[h.value.clone()]);
    }
}

/// Appends the head of `req` as it goes upstream (always HTTP/1.1).
///
/// Hop-by-hop fields are removed, `Expect: 100-continue` is dropped (weft
/// answers it itself), `x-forwarded-for` is extended and `x-forwarded-proto`
/// set; `Connection: upgrade` and `Upgrade` are kept only for an upgrade.
pub fn encode_request(req: &RequestHead, opts: &RequestOptions<'_>, out: &mut BytesMut) {
    let raw = &req.raw[..];
    out.reserve(raw.len() + 128);
    out.put_slice(&raw[req.method.clone()]);
    out.put_u8(b' ');
    if req.target_rewritten() {
        // Origin form upstream (RFC 9112 §3.2.1), the authority in Host,
        // the path normalised.
        let path = req.path_bytes();
        if !path.starts_with(b"/") {
            out.put_u8(b'/');
        }
        out.put_slice(path);
        out.put_slice(req.query());
    } else {
        out.put_slice(&raw[req.target.clone()]);
    }
    out.put_slice(b" HTTP/1.1\r\n");
    let mut had_content_length = false;
    let mut xff_first = true;
    let mut saw_host = false;
    let mut deadlines_written = [false; 2];
    // RFC 9112 3.2.2: with an absolute-form target, Host is the target's authority.
    let uri_authority = req
        .authority
        .clone()
        .filter(|a| req.target.start <= a.start && a.end <= req.target.end)
        .map(|a| &raw[a]);
    let mut kept = Kept::default();
    for h in &req.headers {
        match h.kind {
            HeaderKind::ContentLength => {
                had_content_length = true;
                continue;
            }
            HeaderKind::TransferEncoding | HeaderKind::XForwardedProto | HeaderKind::ClientIdentity => {
                continue
            }
            // An HTTP/1.0 client's 100-continue is ignored (RFC 9110 10.1.1), not forwarded as 1.1.
            HeaderKind::Expect
                if req.expect_continue || raw[h.value.clone()].eq_ignore_ascii_case(b"100-continue") =>
            {
                continue
            }
            HeaderKind::XForwardedFor => {
                // One line, where the first field was: all the fields' values
                // in order, then the client, once.
                if xff_first {
                    kept.flush(out, raw);
                    out.put_slice(b"x-forwarded-for: ");
                    for x in req.headers.iter().filter(|x| x.kind == HeaderKind::XForwardedFor) {
                        out.put_slice(&raw[x.value.clone()]);
                        out.put_slice(b", ");
                    }
                    out.put_slice(opts.client_ip.as_bytes());
                    out.put_slice(b"\r\n");
                    xff_first = false;
                }
                continue;
            }
            HeaderKind::GrpcTimeout | HeaderKind::WeftTimeout => {
                if let (Some(left), Some(field)) = (opts.deadline, h.kind.deadline()) {
                    // Each field once, with the time left (unless the
                    // client's `Connection` made it hop-by-hop).
                    let once = &mut deadlines_written[field as usize];
                    if *once || is_hop_by_hop(raw, h, &req.connection) {
                        continue;
                    }
                    *once = true;
                    kept.flush(out, raw);
                    out.put_slice(&raw[h.name.clone()]);
                    out.put_slice(b": ");
                    field.put(left, out);
                    out.put_slice(b"\r\n");
                    continue;
                }
            }
            HeaderKind::Host => {
                saw_host = true;
                if let Some(authority) = uri_authority {
                    kept.flush(out, raw);
                    put_field(out, &raw[h.name.clone()], authority);
                    continue;
                }
            }
            _ => {}
        }
        if is_hop_by_hop(raw, h, &req.connection) || opts.replaces(&raw[h.name.clone()]) {
            continue;
        }
        kept.field(out, raw, h);
    }
    kept.flush(out, raw);
    opts.put_trace(out);
    if xff_first {
        put_field(out, b"x-forwarded-for", opts.client_ip.as_bytes());
    }
    put_field(out, b"x-forwarded-proto", opts.proto.as_bytes());
    if let Some(id) = opts.identity {
        put_field(out, b"weft-client-identity", id.as_bytes());
    }
    if !saw_host {
        put_field(
            out,
            b"host",
            uri_authority.unwrap_or(opts.default_host.as_bytes()),
        );
    }
    match req.framing {
        BodyFraming::Length(n) => put_length(out, n),
        BodyFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None if had_content_length => put_length(out, 0),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    if req.upgrade {
        put_upgrade(out, raw, &req.headers);
    }
    out.put_slice(b"\r\n");
}

/// How a response head is written to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseOptions {
    /// The framing the client will see (chunked becomes close-delimited for
    /// HTTP/1.0 clients, where the runtime removes the chunking).
    pub framing: BodyFraming,
    /// weft closes the client connection after this response.
    pub close: bool,
    /// The client is HTTP/1.0 and asked for keep-alive.
    pub keep_alive_10: bool,
    /// This is a `101 Switching Protocols` that starts a tunnel.
    pub upgrade: bool,
}

/// Appends the head of `res` as it goes to the client.
pub fn encode_response(res: &ResponseHead, opts: &ResponseOptions, out: &mut BytesMut) {
    let raw = &res.raw[..];
    out.reserve(raw.len() + 64);
    out.put_slice(b"HTTP/1.1 ");
    put_num(out, u64::from(res.status));
    out.put_u8(b' ');
    out.put_slice(&raw[res.reason.clone()]);
    out.put_slice(b"\r\n");
    let mut kept = Kept::default();
    for h in &res.headers {
        if matches!(h.kind, HeaderKind::ContentLength | HeaderKind::TransferEncoding)
            || is_hop_by_hop(raw, h, &res.connection)
        {
            continue;
        }
        kept.field(out, raw, h);
    }
    kept.flush(out, raw);
    match opts.framing {
        BodyFraming::Length(n) => put_length(out, n),
        BodyFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        // Keep an explicit zero length (and HEAD/304 lengths) as sent; a
        // 1xx or 204 never has one (RFC 9110 §8.6).
        BodyFraming::None if !res.is_informational() && res.status != 204 => {
            if let Some(h) = res.headers.iter().find(|h| h.kind == HeaderKind::ContentLength) {
                put_field(out, b"content-length", &raw[h.value.clone()]);
            }
        }
        BodyFraming::None => {}
        BodyFraming::UntilClose => {
            // A transfer coding other than chunked as the last (RFC 9112
            // §6.3): the body runs until close, still coded; the client
            // needs the field to decode it. (When weft de-chunks for an
            // HTTP/1.0 client, the upstream's framing was chunked: no field.)
            if res.framing == BodyFraming::UntilClose {
                for h in res
                    .headers
                    .iter()
                    .filter(|h| h.kind == HeaderKind::TransferEncoding)
                {
                    put_field(out, &raw[h.name.clone()], &raw[h.value.clone()]);
                }
            }
        }
    }
    if opts.upgrade {
        put_upgrade(out, raw, &res.headers);
    } else if opts.close {
        out.put_slice(b"connection: close\r\n");
    } else if opts.keep_alive_10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
}

/// The reason phrase weft uses for its own responses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A complete response written by weft itself: status, a `weft-error` header
/// with the stable `code`, and a one-line plain-text body naming the cause.
pub fn error_response(status: u16, code: &str, message: &str, close: bool, head_only: bool) -> BytesMut {
    let mut out = BytesMut::with_capacity(160 + message.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nweft-error: {code}\r\n",
        reason(status),
        message.len() + 1
    );
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    if !head_only {
        out.put_slice(message.as_bytes());
        out.put_u8(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Limits;
    use crate::{parse_request, parse_response};

    fn req(s: &str) -> RequestHead {
        parse_request(&mut BytesMut::from(s), &Limits::default())
            .unwrap()
            .unwrap()
    }

    const OPTS: RequestOptions<'static> = RequestOptions {
        deadline: None,
        identity: None,
        traceparent: None,
        request_id: None,
        client_ip: "10.0.0.9",
        proto: "http",
        default_host: "up:80",
    };

    /// A new `traceparent` replaces the request's (every field of that
    /// name, in any case); a request id is added; without them the head is
    /// as before.
    #[test]
    fn trace_fields_replace_and_add() {
        let r = req(
            "GET /x HTTP/1.1\r\nHost: a\r\nTraceparent: old\r\ntraceparent: older\r\ntracestate: k=v\r\n\r\n",
        );
        let opts = RequestOptions {
            traceparent: Some(b"new"),
            request_id: Some(b"id-1"),
            ..OPTS
        };
        let mut out = BytesMut::new();
        encode_request(&r, &opts, &mut out);
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(!out.contains("old"), "{out}");
        assert!(out.contains("\r\ntracestate: k=v\r\n"), "{out}");
        assert!(out.ends_with("traceparent: new\r\nx-request-id: id-1\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"), "{out}");
        let mut plain = BytesMut::new();
        encode_request(&r, &OPTS, &mut plain);
        assert_eq!(plain.iter().filter(|b| **b == b'\n').count(), 8, "{plain:?}");
    }

    fn enc(s: &str) -> String {
        let mut out = BytesMut::new();
        encode_request(&req(s), &OPTS, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// Kept fields go out as `name: value` lines whatever their spacing;
    /// runs of lines already in that form are copied whole, and what weft
    /// writes between kept fields stays in place.
    #[test]
    fn kept_fields_are_written_in_order_and_in_one_form() {
        let out = enc(
            "GET /x HTTP/1.1\r\nHost: a\r\nA: 1\r\nB:2\r\nC: 3 \r\nD: 4\r\nX-Forwarded-For: 9.9.9.9\r\nE: 5\r\nF:\t6\r\nKeep-Alive: x\r\nG: 7\r\nH: \r\nI:\r\nJ: 10\n\r\n",
        );
        assert_eq!(
            out,
            "GET /x HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nx-forwarded-for: 9.9.9.9, 10.0.0.9\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: \r\nI: \r\nJ: 10\r\nx-forwarded-proto: http\r\n\r\n"
        );
        let mut res = parse_response(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nServer: s\r\nDate: d\r\nConnection: keep-alive\r\nContent-Length: 2\r\nX-A:a\r\nX-B: b\r\n\r\n"),
            &Limits::default(),
            false,
        )
        .unwrap()
        .unwrap();
        res.framing = BodyFraming::Length(2);
        let opts = ResponseOptions {
            framing: res.framing,
            close: false,
            keep_alive_10: false,
            upgrade: false,
        };
        let mut out = BytesMut::new();
        encode_response(&res, &opts, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d\r\nX-A: a\r\nX-B: b\r\ncontent-length: 2\r\n\r\n"
        );
    }

    #[test]
    fn removes_hop_by_hop_and_adds_forwarding() {
        let out = enc(
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: 1\r\nTE: trailers\r\nTrailer: x\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nX-Keep: yes\r\nX-Forwarded-Proto: https\r\n\r\n",
        );
        assert_eq!(out, "GET /x HTTP/1.1\r\nHost: a\r\nX-Keep: yes\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n");
    }

    #[test]
    fn deadline_fields_carry_the_time_left_once_and_respect_connection() {
        let r = req("GET / HTTP/1.1\r\nHost: a\r\ngrpc-timeout: 5S\r\nConnection: weft-timeout-ms\r\nweft-timeout-ms: 9\r\nGRPC-Timeout: 7S\r\n\r\n");
        let opts = RequestOptions {
            deadline: Some(Duration::from_millis(250)),
            ..OPTS
        };
        let mut out = BytesMut::new();
        encode_request(&r, &opts, &mut out);
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(out.contains("\r\ngrpc-timeout: 250000u\r\n"), "{out}");
        assert_eq!(
            out.to_ascii_lowercase().matches("grpc-timeout").count(),
            1,
            "{out}"
        );
        assert!(
            !out.contains("weft-timeout-ms"),
            "hop-by-hop by Connection: {out}"
        );
        // Without a time left, the fields go as they came.
        let plain = enc("GET / HTTP/1.1\r\nHost: a\r\ngrpc-timeout: 5S\r\n\r\n");
        assert!(plain.contains("grpc-timeout: 5S\r\n"), "{plain}");
    }

    #[test]
    fn appends_to_existing_xff() {
        let out =
            enc("GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nHost: a\r\n\r\n");
        assert!(
            out.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nHost: a\r\n"),
            "{out}"
        );
        let out =
            enc("GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: a\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n");
        assert!(
            out.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nHost: a\r\nx-forwarded-proto"),
            "{out}"
        );
        let out = enc("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n");
        assert!(
            out.ends_with("x-forwarded-for: 1.1.1.1, 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"),
            "{out}"
        );
    }

    #[test]
    fn normalises_framing_and_upgrade() {
        let out = enc("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\nExpect: 100-continue\r\n\r\n");
        assert!(
            out.contains("content-length: 7\r\n") && !out.contains("Expect"),
            "{out}"
        );
        let out = enc("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
        let out = enc("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(
            out.ends_with("connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
            "{out}"
        );
        let out = enc("POST / HTTP/1.0\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!out.contains("Expect"), "{out}");
        let out = enc("GET / HTTP/1.0\r\n\r\n");
        assert!(out.contains("host: up:80\r\n"), "{out}");
        let out = enc("GET http://b.example:81/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n");
        assert!(
            out.starts_with("GET /x?q=1 HTTP/1.1\r\n")
                && out.contains("Host: b.example:81\r\n")
                && !out.contains("other"),
            "{out}"
        );
        let out = enc("GET http://b.example/x HTTP/1.0\r\n\r\n");
        assert!(
            out.starts_with("GET /x HTTP/1.1\r\n") && out.contains("host: b.example\r\n"),
            "{out}"
        );
        let out = enc("GET HTTP://b.example?q HTTP/1.1\r\nHost: b.example\r\n\r\n");
        assert!(out.starts_with("GET /?q HTTP/1.1\r\n"), "{out}");
    }

    #[test]
    fn response_head() {
        let res = parse_response(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nConnection: close, X-A\r\nX-A: 1\r\nServer: s\r\nContent-Length: 3\r\n\r\n"),
            &Limits::default(),
            false,
        )
        .unwrap()
        .unwrap();
        let mut out = BytesMut::new();
        let opts = ResponseOptions {
            framing: res.framing,
            close: false,
            keep_alive_10: false,
            upgrade: false,
        };
        encode_response(&res, &opts, &mut out);
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nServer: s\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn own_errors() {
        let r = error_response(503, "no-endpoint", "cluster has no endpoint", true, false);
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(
            s.contains("weft-error: no-endpoint\r\n") && s.ends_with("\r\n\r\ncluster has no endpoint\n")
        );
    }
}
