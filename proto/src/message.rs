//! Protocol-neutral message heads: a request or response head as HTTP/1
//! and HTTP/2 both produce and consume it.
//!
//! Two representations behind one set of accessors. An HTTP/1 head stays
//! as parsed, zero-copy (the raw bytes and ranges into them), so that an
//! HTTP/1 to HTTP/1 hop re-encodes it cheaply and forwards its chunked
//! framing as received. A head that arrives field by field (HTTP/2,
//! through the `h2` crate's `http` types) is the other. Routing, the
//! forward step and the encoders read either through the same methods;
//! [`Request::encode_h1`] and [`Response::encode_h1`] write either as an
//! HTTP/1.1 head for the next hop.

use crate::deadline::DeadlineField;
use crate::encode::{
    encode_request, encode_response, put_field, put_length, reason, RequestOptions, ResponseOptions,
};
use crate::head::{is_hop_by_hop, BodyFraming, HeaderKind};
use crate::path::normalize;
use crate::request::{strip_port, RequestHead};
use crate::response::ResponseHead;
use bytes::{BufMut, BytesMut};
use std::fmt::Write as _;

/// How long a message's body is, as its head tells: what HTTP/1 framing and
/// HTTP/2's `END_STREAM` and `content-length` both come down to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Exact(u64),
    /// Until the sender ends it (chunked, close-delimited, or an HTTP/2
    /// stream without `content-length`).
    Unknown,
}

impl From<BodyFraming> for BodyLength {
    fn from(f: BodyFraming) -> Self {
        match f {
            BodyFraming::None | BodyFraming::Length(0) => BodyLength::Empty,
            BodyFraming::Length(n) => BodyLength::Exact(n),
            BodyFraming::Chunked | BodyFraming::UntilClose => BodyLength::Unknown,
        }
    }
}

/// The protocol version a message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    Http2,
}

/// Why a head that arrived field by field cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldsError {
    /// The path is not absolute, climbs above the root, or has a fragment.
    BadPath,
    /// Neither `:authority` nor `host`.
    NoAuthority,
    /// A field value holds a byte that cannot go on an HTTP/1 line (CR,
    /// LF, NUL).
    BadValue,
    /// A field name or status that HTTP/2 cannot carry.
    BadName,
}

/// A request head that arrived field by field.
#[derive(Debug)]
pub struct RequestFields {
    /// Method, URI (scheme, authority, path and query), version, fields.
    pub parts: http::request::Parts,
    /// The body's length as the head and stream tell.
    pub body: BodyLength,
    /// The path, normalised (as routing and the next hop see it).
    path: String,
}

/// A request head, from any protocol.
#[derive(Debug)]
// The HTTP/1 head inline (216 bytes): a request lives in its connection's
// reused place, and boxing it would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// HTTP/1.x as parsed: zero-copy.
    H1(RequestHead),
    /// Field by field (HTTP/2).
    Fields(Box<RequestFields>),
}

/// Fields that belong to one connection (RFC 9110 §7.6.1, RFC 9113
/// §8.2.2), or that weft writes itself for the next hop.
fn dropped_upstream(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "expect"
            | "x-forwarded-for"
            | "x-forwarded-proto"
    )
}

fn line_safe(v: &[u8]) -> bool {
    !v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

impl Request {
    /// A request from its fields (an HTTP/2 stream's head): the path is
    /// normalised as an HTTP/1 path is; a value that could not be written
    /// on an HTTP/1 line is refused.
    pub fn from_fields(parts: http::request::Parts, body: BodyLength) -> Result<Request, FieldsError> {
        let raw_path = parts.uri.path();
        let path = if raw_path == "*" && parts.method == http::Method::OPTIONS {
            raw_path.to_string()
        } else if !raw_path.starts_with('/') {
            return Err(FieldsError::BadPath);
        } else {
            let normal = normalize(raw_path.as_bytes(), false).map_err(|_| FieldsError::BadPath)?;
            String::from_utf8(normal.into_owned()).map_err(|_| FieldsError::BadPath)?
        };
        if parts.uri.authority().is_none() && !parts.headers.contains_key(http::header::HOST) {
            return Err(FieldsError::NoAuthority);
        }
        if !parts.headers.values().all(|v| line_safe(v.as_bytes())) {
            return Err(FieldsError::BadValue);
        }
        Ok(Request::Fields(Box::new(RequestFields { parts, body, path })))
    }

    /// The method.
    pub fn method(&self) -> &str {
        match self {
            Request::H1(h) => h.method(),
            Request::Fields(f) => f.parts.method.as_str(),
        }
    }

    /// The version the request came in.
    pub fn version(&self) -> Version {
        match self {
            Request::H1(h) if h.minor == 0 => Version::Http10,
            Request::H1(_) => Version::Http11,
            Request::Fields(_) => Version::Http2,
        }
    }

    /// The authority (host and optional port), from the target or `Host`
    /// (HTTP/1), `:authority` or `host` (HTTP/2).
    pub fn authority(&self) -> Option<&str> {
        match self {
            Request::H1(h) => h.authority(),
            // Without userinfo (`user:pass@`): it never names the host.
            Request::Fields(f) => f
                .parts
                .uri
                .authority()
                .map(|a| {
                    let a = a.as_str();
                    a.rsplit_once('@').map_or(a, |(_, host)| host)
                })
                .or_else(|| {
                    f.parts
                        .headers
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                }),
        }
    }

    /// The host without port, for routing.
    pub fn host(&self) -> Option<&str> {
        self.authority().map(strip_port)
    }

    /// The path as routed and forwarded (normalised), without the query.
    pub fn path(&self) -> &str {
        match self {
            Request::H1(h) if h.path.is_empty() && h.normalized.is_none() => "/",
            Request::H1(h) => h.path(),
            Request::Fields(f) => &f.path,
        }
    }

    /// The query with its `?` (empty without one).
    pub fn query(&self) -> &[u8] {
        match self {
            Request::H1(h) => h.query(),
            Request::Fields(f) => match f.parts.uri.query() {
                // The `?` sits right before the query in the URI's text.
                Some(q) => {
                    let s = f.parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
                    &s.as_bytes()[s.len() - q.len() - 1..]
                }
                None => b"",
            },
        }
    }

    /// The value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        match self {
            Request::H1(h) => h.header(name),
            Request::Fields(f) => f.parts.headers.get(name).map(|v| v.as_bytes()),
        }
    }

    /// The value of field `name` when the head has exactly one field of
    /// that name; `None` when it has none or several (W3C trace context
    /// treats a repeated `traceparent` as none).
    pub fn single_header(&self, name: &str) -> Option<&[u8]> {
        match self {
            Request::H1(h) => h.single_header(name),
            Request::Fields(f) => {
                let mut all = f.parts.headers.get_all(name).iter();
                let first = all.next()?;
                all.next().is_none().then(|| first.as_bytes())
            }
        }
    }

    /// The body's length as the head tells.
    pub fn body(&self) -> BodyLength {
        match self {
            Request::H1(h) => h.framing.into(),
            Request::Fields(f) => f.body,
        }
    }

    /// How the body is framed on an HTTP/1 wire: as received for an
    /// HTTP/1 head; a length, or chunked, for a head of fields.
    pub fn framing(&self) -> BodyFraming {
        match self {
            Request::H1(h) => h.framing,
            Request::Fields(f) => match f.body {
                BodyLength::Empty => BodyFraming::None,
                BodyLength::Exact(n) => BodyFraming::Length(n),
                BodyLength::Unknown => BodyFraming::Chunked,
            },
        }
    }

    /// The client keeps its connection after this exchange (HTTP/1's
    /// `Connection` rules; an HTTP/2 stream never ends its connection).
    pub fn keep_alive(&self) -> bool {
        match self {
            Request::H1(h) => h.keep_alive,
            Request::Fields(_) => true,
        }
    }

    /// The client asks to switch protocols (HTTP/1 only: HTTP/2 never
    /// carries `Upgrade`).
    pub fn upgrade(&self) -> bool {
        match self {
            Request::H1(h) => h.upgrade,
            Request::Fields(_) => false,
        }
    }

    /// True for HEAD: its response has no body, whatever its head says.
    pub fn is_head(&self) -> bool {
        match self {
            Request::H1(h) => h.is_head(),
            Request::Fields(f) => f.parts.method == http::Method::HEAD,
        }
    }

    /// The client waits for `100 Continue` before it sends the body.
    pub fn expect_continue(&self) -> bool {
        match self {
            Request::H1(h) => h.expect_continue,
            Request::Fields(f) => f
                .parts
                .headers
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
        }
    }

    /// How long the client waits, from its shortest well-formed deadline
    /// field (`grpc-timeout`, `weft-timeout-ms`).
    pub fn deadline(&self) -> Option<std::time::Duration> {
        match self {
            Request::H1(h) => h.deadline,
            Request::Fields(f) => f
                .parts
                .headers
                .iter()
                .filter_map(|(n, v)| DeadlineField::of(n.as_str().as_bytes())?.parse(v.as_bytes()))
                .min(),
        }
    }

    /// Bytes of the head as received (HTTP/1), or of its fields' names and
    /// values (HTTP/2, whose compressed size the codec keeps to itself).
    pub fn wire_len(&self) -> usize {
        match self {
            Request::H1(h) => h.raw.len(),
            Request::Fields(f) => f
                .parts
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum(),
        }
    }

    /// Appends the head as it goes to an HTTP/1.1 upstream. An HTTP/1 head
    /// keeps its framing (chunked forwarded as received); a head of fields
    /// gets `content-length` for a known length and chunked framing for an
    /// unknown one, `host` from its authority, and its `cookie` crumbs joined
    /// into one field (RFC 9113 §8.2.3).
    pub fn encode_h1(&self, opts: &RequestOptions<'_>, out: &mut BytesMut) {
        let f = match self {
            Request::H1(h) => return encode_request(h, opts, out),
            Request::Fields(f) => f,
        };
        out.reserve(256);
        out.put_slice(f.parts.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(f.path.as_bytes());
        out.put_slice(self.query());
        out.put_slice(b" HTTP/1.1\r\n");
        let host = self.authority().unwrap_or(opts.default_host);
        put_field(out, b"host", host.as_bytes());
        let mut cookies: Vec<&[u8]> = Vec::new();
        let mut xff = Vec::new();
        let mut deadlines_written = [false; 2];
        for (name, value) in &f.parts.headers {
            let n = name.as_str();
            if n == "cookie" {
                cookies.push(value.as_bytes());
                continue;
            }
            if n == "x-forwarded-for" {
                xff.push(value.as_bytes());
                continue;
            }
            // `te` may only say `trailers` (RFC 9113 §8.2.2); HTTP/1 needs
            // `connection: te` with it, and weft forwards trailers anyway.
            if dropped_upstream(n)
                || n == "te"
                || n == "weft-client-identity"
                || n == "weft_client_identity"
                || opts.replaces(n.as_bytes())
            {
                continue;
            }
            if let (Some(field), Some(left)) = (DeadlineField::of(n.as_bytes()), opts.deadline) {
                // Each field once, with the time left.
                let once = &mut deadlines_written[field as usize];
                if std::mem::replace(once, true) {
                    continue;
                }
                out.put_slice(n.as_bytes());
                out.put_slice(b": ");
                field.put(left, out);
                out.put_slice(b"\r\n");
                continue;
            }
            put_field(out, n.as_bytes(), value.as_bytes());
        }
        if !cookies.is_empty() {
            put_field(out, b"cookie", &cookies.join(&b"; "[..]));
        }
        xff.push(opts.client_ip.as_bytes());
        put_field(out, b"x-forwarded-for", &xff.join(&b", "[..]));
        put_field(out, b"x-forwarded-proto", opts.proto.as_bytes());
        if let Some(id) = opts.identity {
            put_field(out, b"weft-client-identity", id.as_bytes());
        }
        opts.put_trace(out);
        match f.body {
            BodyLength::Exact(n) => put_length(out, n),
            BodyLength::Unknown => out.put_slice(b"transfer-encoding: chunked\r\n"),
            // RFC 9110 §8.6: a request that usually has content says it has none.
            BodyLength::Empty if matches!(f.parts.method.as_str(), "POST" | "PUT" | "PATCH") => {
                put_length(out, 0)
            }
            BodyLength::Empty => {}
        }
        out.put_slice(b"\r\n");
    }
}

/// The head of an HTTP/1 response as it goes to an HTTP/2 client (RFC
/// 9113 §8.2.2): its status and fields, names in lower case, without the
/// fields that belong to the connection it came on (`connection` and what
/// it names, `keep-alive`, `transfer-encoding`, `upgrade`, ...).
pub fn h2_response(res: &ResponseHead) -> Result<http::Response<()>, FieldsError> {
    let mut out = http::Response::new(());
    *out.status_mut() = http::StatusCode::from_u16(res.status).map_err(|_| FieldsError::BadName)?;
    *out.version_mut() = http::Version::HTTP_2;
    let fields = out.headers_mut();
    fields.reserve(res.headers.len());
    for h in &res.headers {
        if h.kind == HeaderKind::TransferEncoding || is_hop_by_hop(&res.raw, h, &res.connection) {
            continue;
        }
        let name = http::HeaderName::from_bytes(res.name(h)).map_err(|_| FieldsError::BadName)?;
        // The value shares the head's memory (checked, not copied).
        let value = http::HeaderValue::from_maybe_shared(res.raw.slice(h.value.clone()))
            .map_err(|_| FieldsError::BadValue)?;
        fields.append(name, value);
    }
    Ok(out)
}

/// Builds the fields of a request as it goes to an HTTP/2 upstream.
struct H2Fields<'a> {
    out: http::HeaderMap,
    xff: Vec<&'a [u8]>,
    deadlines_written: [bool; 2],
}

impl<'a> H2Fields<'a> {
    fn put(&mut self, name: &[u8], value: &[u8]) -> Result<(), FieldsError> {
        let name = http::HeaderName::from_bytes(name).map_err(|_| FieldsError::BadName)?;
        let value = http::HeaderValue::from_bytes(value).map_err(|_| FieldsError::BadValue)?;
        self.out.append(name, value);
        Ok(())
    }

    /// Takes one field of the request; false when it is not forwarded as
    /// it is (weft writes it itself, or it is dropped).
    fn special(
        &mut self,
        name: &[u8],
        value: &'a [u8],
        opts: &RequestOptions<'_>,
    ) -> Result<bool, FieldsError> {
        match HeaderKind::of(name) {
            HeaderKind::Host
            | HeaderKind::ContentLength
            | HeaderKind::TransferEncoding
            | HeaderKind::XForwardedProto
            | HeaderKind::ClientIdentity
            | HeaderKind::Expect
            | HeaderKind::Connection
            | HeaderKind::Upgrade => Ok(true),
            HeaderKind::XForwardedFor => {
                self.xff.push(value);
                Ok(true)
            }
            // `te` goes on only as `trailers` (RFC 9113 §8.2.2).
            HeaderKind::HopByHop => {
                if name.eq_ignore_ascii_case(b"te")
                    && crate::head::list_items(value).any(|(_, v)| v.eq_ignore_ascii_case(b"trailers"))
                {
                    self.put(b"te", b"trailers")?;
                }
                Ok(true)
            }
            _ if opts.replaces(name) => Ok(true),
            kind => match (kind.deadline(), opts.deadline) {
                (Some(field), Some(left)) => {
                    // Each field once, with the time left.
                    if !std::mem::replace(&mut self.deadlines_written[field as usize], true) {
                        let mut v = BytesMut::new();
                        field.put(left, &mut v);
                        self.put(name, &v)?;
                    }
                    Ok(true)
                }
                _ => Ok(false),
            },
        }
    }
}

impl Request {
    /// The head as it goes to an HTTP/2 upstream (RFC 9113 §8.3):
    /// `:method`, `:scheme` (`scheme`), `:authority` (the request's, else
    /// the endpoint's), `:path` (normalised, with the query); field names
    /// in lower case, without the connection-specific ones; `te` only as
    /// `trailers`; `x-forwarded-for` extended and `x-forwarded-proto` set,
    /// the verified identity, deadlines with the time left, and the body's
    /// length when it is known.
    pub fn to_h2(&self, opts: &RequestOptions<'_>, scheme: &str) -> Result<http::Request<()>, FieldsError> {
        let mut path = String::with_capacity(self.path().len() + self.query().len());
        path.push_str(self.path());
        path.push_str(std::str::from_utf8(self.query()).map_err(|_| FieldsError::BadPath)?);
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(self.authority().unwrap_or(opts.default_host))
            .path_and_query(path)
            .build()
            .map_err(|_| FieldsError::BadPath)?;
        let mut req = http::Request::new(());
        *req.method_mut() =
            http::Method::from_bytes(self.method().as_bytes()).map_err(|_| FieldsError::BadName)?;
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        let mut f = H2Fields {
            out: http::HeaderMap::new(),
            xff: Vec::new(),
            deadlines_written: [false; 2],
        };
        match self {
            Request::H1(h) => {
                for r in &h.headers {
                    let (name, value) = (h.name(r), h.value(r));
                    if f.special(name, value, opts)? || is_hop_by_hop(&h.raw, r, &h.connection) {
                        continue;
                    }
                    f.put(name, value)?;
                }
            }
            Request::Fields(fields) => {
                for (name, value) in &fields.parts.headers {
                    let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
                    if f.special(name, value, opts)? {
                        continue;
                    }
                    f.put(name, value)?;
                }
            }
        }
        if let BodyLength::Exact(n) = self.body() {
            f.out
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
        }
        f.xff.push(opts.client_ip.as_bytes());
        let xff = f.xff.join(&b", "[..]);
        f.put(b"x-forwarded-for", &xff)?;
        f.put(b"x-forwarded-proto", opts.proto.as_bytes())?;
        if let Some(id) = opts.identity {
            f.put(b"weft-client-identity", id.as_bytes())?;
        }
        if let Some(tp) = opts.traceparent {
            f.put(b"traceparent", tp)?;
        }
        if let Some(id) = opts.request_id {
            f.put(b"x-request-id", id)?;
        }
        *req.headers_mut() = f.out;
        Ok(req)
    }
}

/// A response head that arrived field by field.
#[derive(Debug)]
pub struct ResponseFields {
    /// Status, version and fields.
    pub parts: http::response::Parts,
    /// The body's length as the head and stream tell.
    pub body: BodyLength,
}

/// A response head, from any protocol.
#[derive(Debug)]
pub enum Response {
    /// HTTP/1.x as parsed: zero-copy.
    H1(Box<ResponseHead>),
    /// Field by field (HTTP/2).
    Fields(Box<ResponseFields>),
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        match self {
            Response::H1(h) => h.status,
            Response::Fields(f) => f.parts.status.as_u16(),
        }
    }

    /// The value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        match self {
            Response::H1(h) => h
                .headers
                .iter()
                .find(|r| h.name(r).eq_ignore_ascii_case(name.as_bytes()))
                .map(|r| &h.raw[r.value.clone()]),
            Response::Fields(f) => f.parts.headers.get(name).map(|v| v.as_bytes()),
        }
    }

    /// The body's length as the head tells.
    pub fn body(&self) -> BodyLength {
        match self {
            Response::H1(h) => h.framing.into(),
            Response::Fields(f) => f.body,
        }
    }

    /// Appends the head as it goes to an HTTP/1.1 client, framed as `opts`
    /// says (the caller decides from [`Response::body`] and the client).
    pub fn encode_h1(&self, opts: &ResponseOptions, out: &mut BytesMut) {
        let f = match self {
            Response::H1(h) => return encode_response(h, opts, out),
            Response::Fields(f) => f,
        };
        let status = f.parts.status.as_u16();
        out.reserve(256);
        let _ = write!(out, "HTTP/1.1 {status} ");
        let phrase = f.parts.status.canonical_reason().unwrap_or(reason(status));
        out.put_slice(phrase.as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in &f.parts.headers {
            let n = name.as_str();
            if dropped_upstream(n) && n != "x-forwarded-for" && n != "x-forwarded-proto" {
                continue;
            }
            put_field(out, n.as_bytes(), value.as_bytes());
        }
        match opts.framing {
            BodyFraming::Length(n) => put_length(out, n),
            BodyFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
            // Keep a length the head gave (a HEAD's, a 304's); a final answer
            // without one says it has no body.
            BodyFraming::None if status >= 200 && status != 204 => {
                match f.parts.headers.get(http::header::CONTENT_LENGTH) {
                    Some(v) => put_field(out, b"content-length", v.as_bytes()),
                    None if status != 304 => put_length(out, 0),
                    None => {}
                }
            }
            BodyFraming::None | BodyFraming::UntilClose => {}
        }
        if opts.close {
            out.put_slice(b"connection: close\r\n");
        } else if opts.keep_alive_10 {
            out.put_slice(b"connection: keep-alive\r\n");
        }
        out.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_request, Limits};

    const LIMITS: Limits = Limits {
        max_request_line: 8192,
        max_head_bytes: 65536,
        max_headers: 100,
    };

    fn opts() -> RequestOptions<'static> {
        RequestOptions {
            deadline: None,
            identity: None,
            traceparent: None,
            request_id: None,
            client_ip: "10.0.0.9",
            proto: "http",
            default_host: "up.test:80",
        }
    }

    fn h2_request(
        method: &str,
        uri: &str,
        fields: &[(&str, &str)],
        body: BodyLength,
    ) -> Result<Request, FieldsError> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(http::Version::HTTP_2);
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        let (parts, ()) = b.body(()).expect("a request").into_parts();
        Request::from_fields(parts, body)
    }

    fn text(out: &BytesMut) -> &str {
        std::str::from_utf8(out).expect("ASCII head")
    }

    /// Towards an HTTP/2 upstream, a new `traceparent` replaces the
    /// request's and a request id is added, from an HTTP/1 head and from
    /// HTTP/2 fields alike.
    #[test]
    fn trace_fields_go_to_http2_upstreams() {
        let opts = RequestOptions {
            traceparent: Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-0123456789abcdef-01"),
            request_id: Some(b"id-7"),
            ..opts()
        };
        let mut buf =
            BytesMut::from("GET /p HTTP/1.1\r\nhost: a\r\ntraceparent: old\r\ntracestate: k=v\r\n\r\n");
        let h1 = Request::H1(parse_request(&mut buf, &LIMITS).unwrap().unwrap());
        let h2 = h2_request(
            "GET",
            "http://a/p",
            &[("traceparent", "old"), ("tracestate", "k=v")],
            BodyLength::Empty,
        )
        .unwrap();
        for req in [h1, h2] {
            let out = req.to_h2(&opts, "http").unwrap();
            let tp: Vec<_> = out.headers().get_all("traceparent").iter().collect();
            assert_eq!(tp, ["00-4bf92f3577b34da6a3ce929d0e0e4736-0123456789abcdef-01"]);
            assert_eq!(out.headers()["x-request-id"], "id-7");
            assert_eq!(out.headers()["tracestate"], "k=v");
            let mut h1_out = BytesMut::new();
            req.encode_h1(&opts, &mut h1_out);
            let text = String::from_utf8(h1_out.to_vec()).unwrap();
            assert!(
                !text.contains("old")
                    && text.contains("\r\ntraceparent: 00-4bf9")
                    && text.contains("\r\nx-request-id: id-7\r\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn both_representations_answer_the_same_questions() {
        let mut buf = BytesMut::from(
            &b"POST /a/./b/../c?x=1 HTTP/1.1\r\nHost: A.test:8080\r\nContent-Length: 3\r\nX-K: v\r\n\r\nabc"
                [..],
        );
        let h1 = Request::H1(parse_request(&mut buf, &LIMITS).unwrap().unwrap());
        let h2 = h2_request(
            "POST",
            "http://A.test:8080/a/./b/../c?x=1",
            &[("x-k", "v"), ("content-length", "3")],
            BodyLength::Exact(3),
        )
        .unwrap();
        for r in [&h1, &h2] {
            assert_eq!(r.method(), "POST");
            assert_eq!(r.authority(), Some("A.test:8080"));
            assert_eq!(r.host(), Some("A.test"));
            assert_eq!(r.path(), "/a/c");
            assert_eq!(r.query(), b"?x=1");
            assert_eq!(r.header("X-K"), Some(&b"v"[..]));
            assert_eq!(r.body(), BodyLength::Exact(3));
            assert!(!r.is_head() && !r.expect_continue());
        }
        assert_eq!((h1.version(), h2.version()), (Version::Http11, Version::Http2));
    }

    #[test]
    fn a_head_of_fields_goes_to_http1_with_host_framing_and_joined_cookies() {
        let r = h2_request(
            "GET",
            "https://a.test/x?q",
            &[
                ("cookie", "a=1"),
                ("te", "trailers"),
                ("cookie", "b=2"),
                ("accept", "*/*"),
                ("x-forwarded-for", "192.0.2.1"),
            ],
            BodyLength::Unknown,
        )
        .unwrap();
        let mut out = BytesMut::new();
        r.encode_h1(&opts(), &mut out);
        assert_eq!(
            text(&out),
            "GET /x?q HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\ncookie: a=1; b=2\r\n\
             x-forwarded-for: 192.0.2.1, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        // What weft wrote parses back as the same request.
        let mut again = out.clone();
        let back = parse_request(&mut again, &LIMITS).unwrap().unwrap();
        assert_eq!(
            (back.method(), back.path(), back.host()),
            ("GET", "/x", Some("a.test"))
        );
        assert_eq!(back.framing, BodyFraming::Chunked);
    }

    #[test]
    fn an_empty_post_says_so_and_a_known_length_is_kept() {
        let mut out = BytesMut::new();
        let r = h2_request("POST", "http://a.test/p", &[], BodyLength::Empty).unwrap();
        r.encode_h1(&opts(), &mut out);
        assert!(text(&out).contains("\r\ncontent-length: 0\r\n"), "{}", text(&out));
        out.clear();
        let r = h2_request(
            "PUT",
            "http://a.test/p",
            &[("content-length", "7")],
            BodyLength::Exact(7),
        )
        .unwrap();
        r.encode_h1(&opts(), &mut out);
        assert_eq!(text(&out).matches("content-length").count(), 1, "{}", text(&out));
        assert!(text(&out).contains("\r\ncontent-length: 7\r\n"));
    }

    #[test]
    fn userinfo_is_no_part_of_the_host_and_a_heads_length_is_kept() {
        let r = h2_request("GET", "http://u:p@a.test:8080/x", &[], BodyLength::Empty).unwrap();
        assert_eq!((r.authority(), r.host()), (Some("a.test:8080"), Some("a.test")));
        let (parts, ()) = http::Response::builder()
            .status(200)
            .header("content-length", "42")
            .body(())
            .unwrap()
            .into_parts();
        let res = Response::Fields(Box::new(ResponseFields {
            parts,
            body: BodyLength::Empty,
        }));
        let mut out = BytesMut::new();
        let opts = ResponseOptions {
            framing: BodyFraming::None,
            close: false,
            keep_alive_10: false,
            upgrade: false,
        };
        res.encode_h1(&opts, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n",
            "the answer to a HEAD"
        );
    }

    #[test]
    fn heads_of_fields_that_http1_cannot_carry_are_refused() {
        assert_eq!(
            h2_request("GET", "http://a.test/../etc", &[], BodyLength::Empty).err(),
            Some(FieldsError::BadPath)
        );
        assert_eq!(
            h2_request("GET", "/x", &[], BodyLength::Empty).err(),
            Some(FieldsError::NoAuthority)
        );
        assert!(h2_request("GET", "/x", &[("host", "a.test")], BodyLength::Empty).is_ok());
        assert!(h2_request("OPTIONS", "http://a.test/x", &[], BodyLength::Empty).is_ok());
    }

    #[test]
    fn a_response_of_fields_goes_to_http1_framed_as_told() {
        let (mut parts, ()) = http::Response::builder()
            .status(201)
            .header("grpc-status", "0")
            .header("connection", "keep-alive")
            .header("content-length", "5")
            .body(())
            .unwrap()
            .into_parts();
        parts.version = http::Version::HTTP_2;
        let res = Response::Fields(Box::new(ResponseFields {
            parts,
            body: BodyLength::Exact(5),
        }));
        assert_eq!((res.status(), res.body()), (201, BodyLength::Exact(5)));
        assert_eq!(res.header("GRPC-Status"), Some(&b"0"[..]));
        let mut out = BytesMut::new();
        let opts = ResponseOptions {
            framing: BodyFraming::Length(5),
            close: true,
            keep_alive_10: false,
            upgrade: false,
        };
        res.encode_h1(&opts, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 201 Created\r\ngrpc-status: 0\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn an_http1_response_goes_to_http2_without_its_connection_fields() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n\
               X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\
               Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nTrailer: grpc-status\r\n\r\n"[..],
        );
        let limits = crate::Limits {
            max_request_line: 1024,
            max_head_bytes: 4096,
            max_headers: 32,
        };
        let res = crate::parse_response(&mut buf, &limits, false)
            .expect("valid")
            .expect("whole");
        let out = h2_response(&res).expect("translatable");
        assert_eq!(out.status(), 200);
        let names: Vec<&str> = out.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(out.headers().get_all("set-cookie").iter().count(), 2);
    }
}
