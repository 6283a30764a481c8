//! What request and response heads share: limits, header classification,
//! framing headers and the hop-by-hop rules (RFC 9110 §7.6.1, RFC 9112 §6).

use crate::deadline::DeadlineField;
use crate::error::HeadError;
use std::ops::Range;
use std::time::Duration;

/// Size limits applied while parsing a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted request line, in bytes (414 beyond).
    pub max_request_line: usize,
    /// Largest accepted head (start line and all fields), in bytes (431 beyond).
    pub max_head_bytes: usize,
    /// Most header fields accepted (431 beyond). At most [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
}

/// The hard ceiling on header fields per head, whatever the configuration says.
pub const MAX_HEADERS_CAP: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body runs until the peer closes (responses only).
    UntilClose,
}

/// Header fields weft treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// `Host`.
    Host,
    /// `Content-Length` (re-emitted by weft, normalised).
    ContentLength,
    /// `Transfer-Encoding` (re-emitted by weft, normalised).
    TransferEncoding,
    /// `Connection` (hop-by-hop).
    Connection,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`: hop-by-hop.
    HopByHop,
    /// `Upgrade` (hop-by-hop; re-emitted only when upgrading).
    Upgrade,
    /// `Expect`.
    Expect,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// `grpc-timeout`: how long the caller waits (forwarded with the time
    /// left).
    GrpcTimeout,
    /// `weft-timeout-ms`: how long the caller waits (forwarded with the
    /// time left).
    WeftTimeout,
    /// `weft-client-identity`: the verified identity of a mutual-TLS
    /// client, which only weft writes (a client's own copy is dropped).
    ClientIdentity,
    /// Anything else: forwarded unless `Connection` names it.
    Other,
}

impl HeaderKind {
    /// The deadline field this kind is, if it is one.
    pub fn deadline(self) -> Option<DeadlineField> {
        match self {
            HeaderKind::GrpcTimeout => Some(DeadlineField::Grpc),
            HeaderKind::WeftTimeout => Some(DeadlineField::WeftMs),
            _ => None,
        }
    }

    /// Classifies a header field name (case-insensitive).
    pub fn of(name: &[u8]) -> HeaderKind {
        let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        match name.len() {
            4 if eq("host") => HeaderKind::Host,
            14 if eq("content-length") => HeaderKind::ContentLength,
            17 if eq("transfer-encoding") => HeaderKind::TransferEncoding,
            10 if eq("connection") => HeaderKind::Connection,
            10 if eq("keep-alive") => HeaderKind::HopByHop,
            16 if eq("proxy-connection") => HeaderKind::HopByHop,
            2 if eq("te") => HeaderKind::HopByHop,
            7 if eq("trailer") => HeaderKind::HopByHop,
            7 if eq("upgrade") => HeaderKind::Upgrade,
            6 if eq("expect") => HeaderKind::Expect,
            15 if eq("x-forwarded-for") => HeaderKind::XForwardedFor,
            17 if eq("x-forwarded-proto") => HeaderKind::XForwardedProto,
            // First bytes first: `accept-encoding` and `accept-language`
            // are as long and far more common.
            12 if name[0] | 0x20 == b'g' && eq("grpc-timeout") => HeaderKind::GrpcTimeout,
            15 if name[0] | 0x20 == b'w' && eq("weft-timeout-ms") => HeaderKind::WeftTimeout,
            // With `_` too: CGI-style servers read both as the same field.
            20 if eq("weft-client-identity") || eq("weft_client_identity") => HeaderKind::ClientIdentity,
            _ => HeaderKind::Other,
        }
    }
}

/// One header field as byte ranges into the head it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRange {
    /// Range of the field name.
    pub name: Range<usize>,
    /// Range of the field value (without surrounding whitespace).
    pub value: Range<usize>,
    /// What the field means to a proxy.
    pub kind: HeaderKind,
}

/// What the `Connection` header fields of a head say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `close` was listed.
    pub close: bool,
    /// `keep-alive` was listed.
    pub keep_alive: bool,
    /// `upgrade` was listed.
    pub upgrade: bool,
    /// Other field names listed: they are hop-by-hop for this message.
    pub others: Vec<Range<usize>>,
}

/// Framing-relevant facts collected from the header fields.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub headers: Vec<HeaderRange>,
    pub content_length: Option<u64>,
    pub transfer_encoding: bool,
    /// The last transfer coding is `chunked` and it appears exactly once.
    pub chunked_last: bool,
    /// A coding other than `chunked` appears.
    pub other_coding: bool,
    pub chunked_count: u32,
    pub hosts: u32,
    pub host: Option<Range<usize>>,
    pub connection: ConnectionOptions,
    pub upgrade: bool,
    pub expect_continue: bool,
    /// The shortest well-formed deadline field.
    pub deadline: Option<Duration>,
}

fn offset_in(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Iterates over the comma-separated elements of a list-valued field,
/// trimmed of optional whitespace, with their offsets inside `value`.
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = 0;
    value
        .split(|b| *b == b',')
        .map(move |item| {
            let start = pos;
            pos += item.len() + 1;
            let lead = item.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
            let trimmed = trim_ows(item);
            (start + lead, trimmed)
        })
        .filter(|(_, item)| !item.is_empty())
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let mut found: Option<u64> = None;
    let mut any = false;
    for item in value.split(|b| *b == b',') {
        let item = trim_ows(item);
        any = true;
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::BadContentLength);
        }
        let n = item.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        match found {
            Some(prev) if prev != n => return Err(HeadError::BadContentLength),
            _ => found = Some(n),
        }
    }
    match found {
        Some(n) if any => Ok(n),
        _ => Err(HeadError::BadContentLength),
    }
}

fn is_token_byte(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'#'
            | b'$'
            | b'%'
            | b'&'
            | b'\''
            | b'*'
            | b'+'
            | b'-'
            | b'.'
            | b'^'
            | b'_'
            | b'`'
            | b'|'
            | b'~'
    ) || b.is_ascii_alphanumeric()
}

/// Collects the framing facts of header fields httparse parsed (so values
/// hold no control bytes), rejecting malformed framing headers. The
/// fields' ranges go into `into` (cleared; its memory reused).
pub(crate) fn scan(
    base: &[u8],
    fields: &[httparse::Header<'_>],
    mut into: Vec<HeaderRange>,
) -> Result<Scan, HeadError> {
    into.clear();
    into.reserve(fields.len());
    let mut s = Scan {
        headers: into,
        ..Scan::default()
    };
    for h in fields {
        // httparse has refused control bytes in values already (its
        // `HeaderValue` error is weft's `ControlByteInValue`): HTAB,
        // visible bytes and obs-text only.
        let value = trim_ows(h.value);
        let kind = HeaderKind::of(h.name.as_bytes());
        let value_range = offset_in(base, value);
        match kind {
            HeaderKind::Host => {
                s.hosts += 1;
                s.host = Some(value_range.clone());
            }
            HeaderKind::ContentLength => {
                let n = parse_content_length(value)?;
                match s.content_length {
                    Some(prev) if prev != n => return Err(HeadError::BadContentLength),
                    _ => s.content_length = Some(n),
                }
            }
            HeaderKind::TransferEncoding => {
                s.transfer_encoding = true;
                let mut saw_item = false;
                for (_, coding) in list_items(value) {
                    saw_item = true;
                    // Parameters (`;q=...`) are not allowed on chunked; keep the name only.
                    let name = coding
                        .split(|b| *b == b';')
                        .next()
                        .map(trim_ows)
                        .unwrap_or(coding);
                    if !name.iter().all(|b| is_token_byte(*b)) {
                        return Err(HeadError::BadTransferEncoding);
                    }
                    if name.eq_ignore_ascii_case(b"chunked") {
                        if name.len() != coding.len() {
                            return Err(HeadError::BadTransferEncoding);
                        }
                        s.chunked_count += 1;
                        s.chunked_last = true;
                    } else {
                        s.other_coding = true;
                        s.chunked_last = false;
                    }
                }
                if !saw_item {
                    return Err(HeadError::BadTransferEncoding);
                }
            }
            HeaderKind::Connection => {
                for (at, token) in list_items(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        s.connection.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        s.connection.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        s.connection.upgrade = true;
                    } else if token.iter().all(|b| is_token_byte(*b)) {
                        let start = value_range.start + at;
                        s.connection.others.push(start..start + token.len());
                    } else {
                        return Err(HeadError::Malformed("invalid token in Connection"));
                    }
                }
            }
            // An offer of cleartext HTTP/2 (`h2c`, RFC 7540 §3.2; deprecated
            // by RFC 9113 §3.1) is declined: the request is served over
            // HTTP/1.1 and the offer, hop-by-hop, goes no further.
            HeaderKind::Upgrade if !offers_only_h2c(value) => s.upgrade = true,
            HeaderKind::Expect if value.eq_ignore_ascii_case(b"100-continue") => s.expect_continue = true,
            HeaderKind::GrpcTimeout | HeaderKind::WeftTimeout => {
                let field = kind.deadline().unwrap_or(DeadlineField::Grpc);
                if let Some(d) = field.parse(value) {
                    s.deadline = Some(s.deadline.map_or(d, |e| e.min(d)));
                }
            }
            _ => {}
        }
        s.headers.push(HeaderRange {
            name: offset_in(base, h.name.as_bytes()),
            value: value_range,
            kind,
        });
    }
    Ok(s)
}

/// True when an `Upgrade` value offers nothing but `h2c`.
pub fn offers_only_h2c(value: &[u8]) -> bool {
    let mut items = list_items(value).peekable();
    items.peek().is_some() && items.all(|(_, p)| p.eq_ignore_ascii_case(b"h2c"))
}

/// True when the header `h` must not be forwarded to the next hop: it is
/// hop-by-hop by definition or named by a `Connection` field of the message.
pub fn is_hop_by_hop(base: &[u8], h: &HeaderRange, connection: &ConnectionOptions) -> bool {
    match h.kind {
        HeaderKind::Connection | HeaderKind::HopByHop | HeaderKind::Upgrade => true,
        HeaderKind::Other | HeaderKind::GrpcTimeout | HeaderKind::WeftTimeout => {
            let name = &base[h.name.clone()];
            connection
                .others
                .iter()
                .any(|r| base[r.clone()].eq_ignore_ascii_case(name))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(b"42"), Ok(42));
        assert_eq!(parse_content_length(b"42, 42"), Ok(42));
        assert!(parse_content_length(b"42, 43").is_err());
        assert!(parse_content_length(b"+42").is_err());
        assert!(parse_content_length(b"-1").is_err());
        assert!(parse_content_length(b"").is_err());
        assert!(parse_content_length(b"4 2").is_err());
        assert!(parse_content_length(b"99999999999999999999").is_err());
        assert!(parse_content_length(b"0x10").is_err());
    }

    #[test]
    fn list_items_trim_and_skip_empty() {
        let v: Vec<_> = list_items(b" a , ,b,\tc ").collect();
        assert_eq!(v, vec![(1, &b"a"[..]), (6, &b"b"[..]), (9, &b"c"[..])]);
    }

    #[test]
    fn header_kinds() {
        assert_eq!(HeaderKind::of(b"HOST"), HeaderKind::Host);
        assert_eq!(HeaderKind::of(b"Transfer-Encoding"), HeaderKind::TransferEncoding);
        assert_eq!(HeaderKind::of(b"te"), HeaderKind::HopByHop);
        assert_eq!(HeaderKind::of(b"x-custom"), HeaderKind::Other);
    }
}
