//! Property checks shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and the
//! corpus replay test (`tests/tests/fuzz_corpus.rs`), included by both with
//! `#[path]`. Every `check_*` function takes one raw fuzz input and panics when
//! a property does not hold, so a corpus file that passes here passes the
//! fuzzer and the other way round.
//!
//! Inputs:
//! - `check_request` / `check_response`: the whole input is the bytes read from
//!   the peer (a head, maybe followed by a body or the next message). A hash of
//!   the input picks the split points, a tight set of limits and (for
//!   responses) whether the request was HEAD and whether the client is an
//!   HTTP/1.0 one that asked for keep-alive, so every input replays the same.
//! - `check_chunked`: the first byte picks the piece sizes, the rest is the body.
//! - `check_config`: the input as UTF-8 configuration text (other inputs are skipped).
//! - `check_deadline`: the first byte picks the field (even: `grpc-timeout`,
//!   odd: `weft-timeout-ms`), the rest is its value.
//!
//! The `*_verdict` functions say what the parser makes of an input (accepted,
//! incomplete, refused and why); only the replay test uses them, to hold each
//! hand-written seed to the verdict its file name states.

use bytes::BytesMut;
use std::ops::Range;
use std::time::Duration;
use weft_core::config::{literal_only, Config};
use weft_core::Target;
use weft_proto::body::{chunk_head, last_chunk, BodyReader, CHUNK_END};
use weft_proto::chunked::{ChunkedDecoder, ChunkedError, Step};
use weft_proto::deadline::DeadlineField;
use weft_proto::encode::{encode_request, encode_response, RequestOptions, ResponseOptions};
use weft_proto::head::{
    is_hop_by_hop, BodyFraming, ConnectionOptions, HeaderKind, HeaderRange, Limits, MAX_HEADERS_CAP,
};
use weft_proto::{parse_request, parse_response, HeadError, RequestHead, ResponseHead};

/// FNV-1a: a stable hash of the input, used to derive the test parameters.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Limits for the first parse: the defaults, and small ones so that every
/// limit is hit by short inputs. At most 200 fields, so the re-encoded head
/// (which may add `x-forwarded-*`, `host` and framing fields) fits the cap.
fn limit_sets(h: u64) -> [Limits; 2] {
    [
        Limits::default(),
        Limits {
            max_request_line: 8 + (h >> 8) as usize % 120,
            max_head_bytes: 16 + (h >> 16) as usize % 500,
            max_headers: 1 + (h >> 32) as usize % 16,
        },
    ]
}

/// Limits for parsing what weft itself encoded: anything it writes must parse.
const GENEROUS: Limits = Limits {
    max_request_line: usize::MAX,
    max_head_bytes: usize::MAX,
    max_headers: MAX_HEADERS_CAP,
};

/// Two split points in `0..=len` derived from the hash.
fn splits(h: u64, len: usize) -> [usize; 2] {
    [(h >> 40) as usize % (len + 1), (h >> 20) as usize % (len + 1)]
}

/// Printable rendering of bytes for assertion messages.
fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

fn within(r: &Range<usize>, len: usize) -> bool {
    r.start <= r.end && r.end <= len
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_fields(raw: &[u8], headers: &[HeaderRange], others: &[Range<usize>]) {
    for h in headers {
        assert!(
            within(&h.name, raw.len()),
            "field name {:?} outside the head",
            h.name
        );
        assert!(
            within(&h.value, raw.len()),
            "field value {:?} outside the head",
            h.value
        );
        let name = &raw[h.name.clone()];
        let value = &raw[h.value.clone()];
        assert!(
            !name.is_empty() && name.iter().all(|b| is_token(*b)),
            "field name {} is not a token",
            show(name)
        );
        assert_eq!(HeaderKind::of(name), h.kind, "field {} misclassified", show(name));
        assert!(
            !value.iter().any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f),
            "control byte in field value {}",
            show(value)
        );
        assert!(
            !value.starts_with(b" ")
                && !value.starts_with(b"\t")
                && !value.ends_with(b" ")
                && !value.ends_with(b"\t"),
            "field value {} not trimmed",
            show(value)
        );
    }
    for r in others {
        assert!(within(r, raw.len()), "Connection option {r:?} outside the head");
    }
}

/// The single value every `Content-Length` field of a head gives, if any.
fn content_lengths(raw: &[u8], headers: &[HeaderRange]) -> Vec<u64> {
    let mut out = Vec::new();
    for h in headers.iter().filter(|h| h.kind == HeaderKind::ContentLength) {
        for item in raw[h.value.clone()].split(|b| *b == b',') {
            let item = std::str::from_utf8(item).expect("accepted Content-Length is ASCII");
            let item = item.trim_matches(|c| c == ' ' || c == '\t');
            assert!(
                !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()),
                "accepted a malformed Content-Length {item:?}"
            );
            out.push(item.parse().expect("accepted Content-Length fits u64"));
        }
    }
    out
}

/// Checks the framing facts shared by requests and responses.
fn check_framing(raw: &[u8], headers: &[HeaderRange], framing: BodyFraming, bodyless: bool) {
    let lengths = content_lengths(raw, headers);
    let te = headers.iter().any(|h| h.kind == HeaderKind::TransferEncoding);
    assert!(
        lengths.windows(2).all(|w| w[0] == w[1]),
        "accepted differing Content-Length values {lengths:?}"
    );
    if bodyless {
        assert_eq!(framing, BodyFraming::None, "a bodyless message got a body");
        return;
    }
    match framing {
        BodyFraming::Chunked => {
            assert!(te, "chunked framing without Transfer-Encoding");
            assert!(lengths.is_empty(), "chunked framing with Content-Length (CL.TE)");
        }
        BodyFraming::Length(n) => {
            assert!(!te, "length framing with Transfer-Encoding (TE.CL)");
            assert!(n > 0, "Length(0) must be None");
            assert!(
                !lengths.is_empty() && lengths.iter().all(|l| *l == n),
                "Length({n}) but Content-Length says {lengths:?}"
            );
        }
        BodyFraming::None => {
            assert!(!te, "no body but Transfer-Encoding");
            assert!(
                lengths.iter().all(|l| *l == 0),
                "no body but Content-Length {lengths:?}"
            );
        }
        BodyFraming::UntilClose => {
            assert!(
                lengths.is_empty(),
                "close-delimited with Content-Length {lengths:?}"
            );
        }
    }
}

/// Header fields as printable (name, value) pairs, for assertion messages.
fn shown(fields: &[(&[u8], &[u8])]) -> Vec<(String, String)> {
    fields.iter().map(|(n, v)| (show(n), show(v))).collect()
}

/// Fields that a proxy forwards unchanged, as (name, value), in order.
fn end_to_end<'a>(
    raw: &'a [u8],
    headers: &[HeaderRange],
    conn: &ConnectionOptions,
    kinds: &[HeaderKind],
) -> Vec<(&'a [u8], &'a [u8])> {
    headers
        .iter()
        .filter(|h| kinds.contains(&h.kind) && !is_hop_by_hop(raw, h, conn))
        .map(|h| (&raw[h.name.clone()], &raw[h.value.clone()]))
        .collect()
}

/// `s` without leading and trailing spaces and tabs (RFC 9110 §5.6.3 OWS).
fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Reads the `Connection` fields of a head without the parser's help (the
/// options, comma-separated, trimmed of spaces and tabs, empty ones skipped)
/// and checks that the parsed `conn` says the same: `close`, `keep-alive`
/// and `upgrade` are flags, every other option is listed, in order.
fn check_connection(raw: &[u8], headers: &[HeaderRange], conn: &ConnectionOptions) {
    let (mut close, mut keep_alive, mut upgrade) = (false, false, false);
    let mut others = Vec::new();
    for h in headers.iter().filter(|h| h.kind == HeaderKind::Connection) {
        for item in raw[h.value.clone()].split(|b| *b == b',') {
            let item = trim_ows(item);
            if item.is_empty() {
                continue;
            }
            if item.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if item.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            } else if item.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            } else {
                others.push(show(item));
            }
        }
    }
    assert_eq!(
        (conn.close, conn.keep_alive, conn.upgrade),
        (close, keep_alive, upgrade),
        "Connection options (close, keep-alive, upgrade) misread"
    );
    let parsed: Vec<String> = conn.others.iter().map(|r| show(&raw[r.clone()])).collect();
    assert_eq!(parsed, others, "Connection options misread");
}

/// RFC 9112 §9.3: whether the connection persists after this message, as its
/// version and `Connection` options say. `close` ends it; HTTP/1.1 persists by
/// default; HTTP/1.0 persists only with `keep-alive`.
fn persists(minor: u8, conn: &ConnectionOptions) -> bool {
    !conn.close && (minor >= 1 || conn.keep_alive)
}

/// The values of the `Connection` fields of a head, in order.
fn connection_values(raw: &[u8], headers: &[HeaderRange]) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Connection)
        .map(|h| show(&raw[h.value.clone()]))
        .collect()
}

// ---------------------------------------------------------------- verdicts

/// What a parser makes of a whole input. The corpus replay test compares it
/// with the verdict a hand-written seed's name states (`fuzz/README.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A complete head, a complete chunked body (maybe followed by more
    /// bytes) or a valid configuration.
    Accepted,
    /// Nothing wrong so far, but the input ends before the head or body does.
    Incomplete,
    /// Refused, because of: the [`HeadError::code`] of a head, the
    /// [`ChunkedError`] variant of a chunked body, the message of a
    /// configuration error (with its line and field).
    Refused(String),
}

fn head_verdict<T>(r: Result<Option<T>, HeadError>) -> Verdict {
    match r {
        Ok(Some(_)) => Verdict::Accepted,
        Ok(None) => Verdict::Incomplete,
        Err(e) => Verdict::Refused(e.code().to_string()),
    }
}

fn request_verdict_with(data: &[u8], limits: &Limits) -> Verdict {
    head_verdict(parse_request(&mut BytesMut::from(data), limits))
}

/// The verdict of `parse_request` with the default limits on a
/// `request_head` input.
pub fn request_verdict(data: &[u8]) -> Verdict {
    request_verdict_with(data, &Limits::default())
}

/// The verdict of `parse_response` with the default limits on a
/// `response_head` input, for a response to a HEAD request or not.
pub fn response_verdict(data: &[u8], head_request: bool) -> Verdict {
    head_verdict(parse_response(
        &mut BytesMut::from(data),
        &Limits::default(),
        head_request,
    ))
}

/// The verdict of `ChunkedDecoder::feed` on a `chunked` input (its first
/// byte, the piece-size seed, is not part of the body).
pub fn chunked_verdict(data: &[u8]) -> Verdict {
    let body = data.get(1..).unwrap_or_default();
    let mut d = ChunkedDecoder::new();
    match d.feed(body) {
        Ok(_) if d.is_done() => Verdict::Accepted,
        Ok(_) => Verdict::Incomplete,
        Err(e) => Verdict::Refused(format!("{e:?}")),
    }
}

/// The verdict of `Config::parse` on a `config` input (not UTF-8: refused,
/// as a configuration file that is not text is).
pub fn config_verdict(data: &[u8]) -> Verdict {
    match std::str::from_utf8(data) {
        Err(e) => Verdict::Refused(format!("not UTF-8: {e}")),
        Ok(src) => match Config::parse(src, &literal_only) {
            Ok(_) => Verdict::Accepted,
            Err(e) => Verdict::Refused(e.to_string()),
        },
    }
}

/// The verdict of `DeadlineField::parse` on a `deadline` input.
pub fn deadline_verdict(data: &[u8]) -> Verdict {
    let (field, value) = deadline_input(data);
    match field.parse(value) {
        Some(_) => Verdict::Accepted,
        None => Verdict::Refused("not a deadline".into()),
    }
}

// ---------------------------------------------------------------- deadlines

fn deadline_input(data: &[u8]) -> (DeadlineField, &[u8]) {
    match data.split_first() {
        Some((b, rest)) if b % 2 == 1 => (DeadlineField::WeftMs, rest),
        Some((_, rest)) => (DeadlineField::Grpc, rest),
        None => (DeadlineField::Grpc, data),
    }
}

fn put_deadline(field: DeadlineField, d: Duration) -> Vec<u8> {
    let mut out = BytesMut::new();
    field.put(d, &mut out);
    out.to_vec()
}

/// A deadline field's value parses without panicking; what parses is
/// written back exactly (at least the smallest unit) and parses again to
/// the same time. Any time written (the input's bytes read as one) parses
/// back to at most that time, and close to it.
pub fn check_deadline(data: &[u8]) {
    let (field, value) = deadline_input(data);
    let smallest = match field {
        DeadlineField::Grpc => Duration::from_nanos(1),
        DeadlineField::WeftMs => Duration::from_millis(1),
    };
    if let Some(d) = field.parse(value) {
        assert!(value.len() <= 11, "{} parsed", show(value));
        let again = put_deadline(field, d);
        let back = field.parse(&again);
        assert_eq!(
            back,
            Some(d.max(smallest)),
            "{} became {}",
            show(value),
            show(&again)
        );
    }
    // The input's bytes as a time: seconds from 8 bytes, nanoseconds from 4.
    let mut b = [0u8; 12];
    for (i, x) in data.iter().take(12).enumerate() {
        b[i] = *x;
    }
    let secs = u64::from_le_bytes(b[..8].try_into().unwrap_or_default()) >> (data.len() % 64);
    let nanos = u32::from_le_bytes(b[8..].try_into().unwrap_or_default()) % 1_000_000_000;
    let d = Duration::new(secs, nanos);
    let written = put_deadline(field, d);
    let back = field
        .parse(&written)
        .unwrap_or_else(|| panic!("{d:?} written as {} does not parse", show(&written)));
    let most = match field {
        DeadlineField::Grpc => Duration::from_secs(99_999_999 * 3600),
        DeadlineField::WeftMs => Duration::from_millis(9_999_999_999),
    };
    if d < most {
        assert!(
            back <= d.max(smallest),
            "{d:?} written as {} is longer",
            show(&written)
        );
        let lost = d.saturating_sub(back);
        let bound = match field {
            // The finest unit that fits 8 digits counts at least 100,000
            // of them (units are 1000 or 60 times apart): it loses under
            // a hundred-thousandth.
            DeadlineField::Grpc => d / 100_000 + smallest,
            DeadlineField::WeftMs => smallest,
        };
        assert!(lost <= bound, "{d:?} written as {} lost {lost:?}", show(&written));
    }
}

// ---------------------------------------------------------------- requests

type ReqOutcome = (Result<Option<RequestHead>, HeadError>, Vec<u8>);

fn parse_req(buf: &mut BytesMut, limits: &Limits) -> ReqOutcome {
    let r = parse_request(buf, limits);
    (r, buf.to_vec())
}

fn same_req(a: &Result<Option<RequestHead>, HeadError>, b: &Result<Option<RequestHead>, HeadError>) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Parses a request head from the input, whole and in two pieces, checks the
/// head and re-encodes it for the upstream.
pub fn check_request(data: &[u8]) {
    let h = fnv(data);
    for limits in limit_sets(h) {
        let whole = parse_req(&mut BytesMut::from(data), &limits);
        for k in splits(h, data.len()) {
            request_in_two_pieces(data, k, &limits, &whole);
        }
        if let (Ok(Some(head)), rest) = &whole {
            request_invariants(data, head, rest);
            reencode_request(head);
            // A listener that merges slashes: the path keeps no `//`.
            let mut merged = head.clone();
            merged.merge_slashes();
            if merged.path_bytes().starts_with(b"/") {
                assert!(
                    !merged.path_bytes().windows(2).any(|w| w == b"//"),
                    "slashes left after merging: {}",
                    show(merged.path_bytes())
                );
            }
            reencode_request(&merged);
        }
    }
}

/// Feeding `data[..k]` then the rest gives what parsing it whole gives.
fn request_in_two_pieces(data: &[u8], k: usize, limits: &Limits, whole: &ReqOutcome) {
    let mut buf = BytesMut::from(&data[..k]);
    match parse_request(&mut buf, limits) {
        Err(e) => assert!(
            whole.0.is_err(),
            "the first {k} bytes are refused ({e:?}) but the whole input parses: {:?}",
            whole.0
        ),
        Ok(Some(head)) => {
            assert!(
                same_req(&Ok(Some(head)), &whole.0),
                "a head complete in the first {k} bytes differs from the whole parse"
            );
            buf.extend_from_slice(&data[k..]);
            assert_eq!(buf.to_vec(), whole.1, "different bytes left after the head");
        }
        Ok(None) => {
            buf.extend_from_slice(&data[k..]);
            let second = parse_req(&mut buf, limits);
            assert!(
                same_req(&second.0, &whole.0),
                "split at {k}: {:?} after Partial, {:?} whole",
                second.0,
                whole.0
            );
            assert_eq!(second.1, whole.1, "split at {k}: different bytes left");
        }
    }
}

fn request_invariants(input: &[u8], head: &RequestHead, rest: &[u8]) {
    let raw = &head.raw[..];
    // The input is: dropped empty lines, the head, what stays in the buffer.
    assert!(raw.len() + rest.len() <= input.len());
    let blank = input.len() - raw.len() - rest.len();
    assert!(
        input[..blank].iter().all(|b| matches!(b, b'\r' | b'\n')),
        "dropped non-blank bytes"
    );
    assert_eq!(
        &input[blank..blank + raw.len()],
        raw,
        "raw is not the input's head"
    );
    assert_eq!(
        &input[blank + raw.len()..],
        rest,
        "the buffer does not keep what follows the head"
    );
    assert!(raw.ends_with(b"\n"), "head does not end with a line end");
    let deadline = head
        .headers
        .iter()
        .filter_map(|h| DeadlineField::of(&raw[h.name.clone()])?.parse(&raw[h.value.clone()]))
        .min();
    assert_eq!(
        head.deadline, deadline,
        "the deadline is not the shortest field's"
    );
    for r in [&head.method, &head.target, &head.path] {
        assert!(within(r, raw.len()), "range {r:?} outside the head");
    }
    if let Some(a) = &head.authority {
        assert!(within(a, raw.len()), "authority {a:?} outside the head");
    }
    check_fields(raw, &head.headers, &head.connection.others);
    assert!(
        head.target.start <= head.path.start && head.path.end <= head.target.end,
        "path outside the target"
    );
    let method = &raw[head.method.clone()];
    assert!(
        !method.is_empty() && method.iter().all(|b| is_token(*b)),
        "bad method"
    );
    assert_ne!(method, b"CONNECT", "CONNECT accepted");
    assert!(head.minor <= 1, "HTTP/1.{} accepted", head.minor);
    let target = head.target();
    assert!(
        target.starts_with(b"/")
            || (target == b"*" && method == b"OPTIONS")
            || target
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"http://"))
            || target
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"https://")),
        "bad target {} accepted",
        show(target)
    );
    let hosts = head.headers.iter().filter(|h| h.kind == HeaderKind::Host).count();
    assert!(hosts <= 1, "{hosts} Host fields accepted");
    if head.minor == 1 {
        assert_eq!(hosts, 1, "HTTP/1.1 request without Host accepted");
    }
    if head.framing == BodyFraming::Chunked {
        assert_eq!(head.minor, 1, "chunked HTTP/1.0 request accepted");
    }
    assert_ne!(
        head.framing,
        BodyFraming::UntilClose,
        "a request body never runs until close"
    );
    check_connection(raw, &head.headers, &head.connection);
    // RFC 9110 §7.8: an upgrade needs `Upgrade` and `Connection: upgrade`,
    // and an HTTP/1.0 request's `Upgrade` is ignored.
    // An offer of `h2c` alone is declined.
    let asks_upgrade = head.minor == 1
        && head.connection.upgrade
        && head.headers.iter().any(|h| {
            h.kind == HeaderKind::Upgrade && !weft_proto::head::offers_only_h2c(&raw[h.value.clone()])
        });
    assert_eq!(
        head.upgrade, asks_upgrade,
        "upgrade does not agree with Upgrade and Connection (HTTP/1.{})",
        head.minor
    );
    assert_eq!(
        head.keep_alive,
        persists(head.minor, &head.connection),
        "keep-alive does not agree with RFC 9112 §9.3 (HTTP/1.{}, Connection {:?})",
        head.minor,
        connection_values(raw, &head.headers)
    );
    if let Some(a) = head.authority() {
        let host = head.host().expect("a host when there is an authority");
        assert!(a.starts_with(host), "host {host:?} is not a prefix of {a:?}");
    }
    check_framing(raw, &head.headers, head.framing, false);
}

const REQ_OPTS: RequestOptions<'static> = RequestOptions {
    deadline: None,
    identity: None,
    traceparent: None,
    request_id: None,
    client_ip: "192.0.2.7",
    proto: "https",
    default_host: "upstream.test:8080",
};

/// Field kinds forwarded as they are (Host is checked on its own).
const REQ_FORWARDED: &[HeaderKind] = &[
    HeaderKind::Other,
    HeaderKind::Expect,
    HeaderKind::GrpcTimeout,
    HeaderKind::WeftTimeout,
];

/// What weft sends upstream is one well-formed request meaning the same thing.
/// With a time left to pass on, the re-encoded request has each deadline
/// field once, carrying that time, exactly when the original had it as an
/// end-to-end field.
fn reencode_request_with_deadline(head: &RequestHead, left: Duration) {
    let raw = &head.raw[..];
    let opts = RequestOptions {
        deadline: Some(left),
        ..REQ_OPTS
    };
    let mut out = BytesMut::new();
    encode_request(head, &opts, &mut out);
    let encoded = out.to_vec();
    let again = match parse_request(&mut out, &GENEROUS) {
        Ok(Some(again)) => again,
        other => panic!("re-encoded request does not parse: {other:?}\n{}", show(&encoded)),
    };
    for field in [DeadlineField::Grpc, DeadlineField::WeftMs] {
        let is = |r: &[u8], h: &HeaderRange| DeadlineField::of(&r[h.name.clone()]) == Some(field);
        let had = head
            .headers
            .iter()
            .any(|h| is(raw, h) && !is_hop_by_hop(raw, h, &head.connection));
        let sent: Vec<&[u8]> = again
            .headers
            .iter()
            .filter(|h| is(&again.raw, h))
            .map(|h| &again.raw[h.value.clone()])
            .collect();
        let mut want = BytesMut::new();
        field.put(left, &mut want);
        let want: Vec<&[u8]> = if had { vec![&want[..]] } else { vec![] };
        assert_eq!(sent, want, "{field:?} with {left:?} left: {}", show(&encoded));
    }
}

fn reencode_request(head: &RequestHead) {
    let left = Duration::from_micros(fnv(&head.raw) % 10_000_000_000);
    reencode_request_with_deadline(head, left);
    let raw = &head.raw[..];
    let mut out = BytesMut::new();
    encode_request(head, &REQ_OPTS, &mut out);
    let encoded = out.to_vec();
    let again = match parse_request(&mut out, &GENEROUS) {
        Ok(Some(again)) => again,
        other => panic!("re-encoded request does not parse: {other:?}\n{}", show(&encoded)),
    };
    let ctx = || show(&encoded);
    // One request in, exactly one request out.
    assert!(out.is_empty(), "bytes after the re-encoded head: {}", ctx());
    assert_eq!(again.raw.len(), encoded.len(), "{}", ctx());
    assert_eq!(again.method(), head.method(), "{}", ctx());
    // Absolute form goes upstream as origin form: path and query, with a
    // leading `/` (RFC 9112 §3.2.1); other forms as they came.
    let slash = |b: &[u8]| {
        if b.starts_with(b"/") {
            b.to_vec()
        } else {
            [&b"/"[..], b].concat()
        }
    };
    // A normalised path goes upstream normalised.
    let (target, path) = if head.target_rewritten() {
        let path = slash(head.path_bytes());
        ([&path[..], head.query()].concat(), path)
    } else {
        (head.target().to_vec(), head.path_bytes().to_vec())
    };
    assert_eq!(show(again.target()), show(&target), "target: {}", ctx());
    assert!(!again.is_absolute_form(), "absolute form upstream: {}", ctx());
    assert_eq!(show(again.path_bytes()), show(&path), "path: {}", ctx());
    assert!(
        again.normalized.is_none(),
        "the path weft forwards is not in normal form: {}",
        ctx()
    );
    assert_eq!(again.framing, head.framing, "framing changed: {}", ctx());
    assert_eq!(again.minor, 1, "{}", ctx());
    assert_eq!(again.upgrade, head.upgrade, "upgrade changed: {}", ctx());
    assert!(
        !again.expect_continue,
        "Expect: 100-continue forwarded: {}",
        ctx()
    );
    // The upstream sees the host weft routed by, in the one Host field (with
    // an absolute-form target, RFC 9112 3.2.2 has the proxy replace Host).
    let host = head.header("host");
    let expected_host = match (head.authority(), host) {
        (Some(a), _) => a.as_bytes(),
        (None, Some(empty)) => empty,
        (None, None) => REQ_OPTS.default_host.as_bytes(),
    };
    let hosts: Vec<String> = again
        .headers
        .iter()
        .filter(|h| h.kind == HeaderKind::Host)
        .map(|h| show(again.value(h)))
        .collect();
    assert_eq!(hosts, vec![show(expected_host)], "Host: {}", ctx());
    let expected_authority = std::str::from_utf8(expected_host).ok().filter(|a| !a.is_empty());
    assert_eq!(
        again.authority(),
        head.authority().or(expected_authority),
        "authority: {}",
        ctx()
    );
    let a = &again.raw[..];
    let mut proto = 0;
    for h in &again.headers {
        match h.kind {
            HeaderKind::HopByHop => panic!("hop-by-hop field forwarded: {}", ctx()),
            HeaderKind::ClientIdentity => panic!("a client's own weft-client-identity forwarded: {}", ctx()),
            HeaderKind::Connection | HeaderKind::Upgrade => {
                assert!(head.upgrade, "Connection/Upgrade forwarded: {}", ctx())
            }
            HeaderKind::XForwardedProto => {
                proto += 1;
                assert_eq!(&a[h.value.clone()], REQ_OPTS.proto.as_bytes(), "{}", ctx());
            }
            _ => {}
        }
    }
    assert_eq!(proto, 1, "x-forwarded-proto fields: {}", ctx());
    // The client's Connection field is hop-by-hop: the only one upstream is
    // weft's own `connection: upgrade` of an upgrade.
    let connection: &[&str] = if head.upgrade { &["upgrade"] } else { &[] };
    assert_eq!(
        connection_values(a, &again.headers),
        connection,
        "Connection fields: {}",
        ctx()
    );
    // End-to-end fields go through unchanged and in order.
    let mut expected = end_to_end(raw, &head.headers, &head.connection, REQ_FORWARDED);
    // weft answers 100-continue itself (HTTP/1.1) or ignores it (HTTP/1.0).
    expected.retain(|(n, v)| {
        HeaderKind::of(n) != HeaderKind::Expect
            || !(head.expect_continue || v.eq_ignore_ascii_case(b"100-continue"))
    });
    let got = end_to_end(a, &again.headers, &again.connection, REQ_FORWARDED);
    assert_eq!(
        shown(&got),
        shown(&expected),
        "end-to-end fields changed: {}",
        ctx()
    );
    // The x-forwarded-for list is the client's list with the client appended once.
    let xff = |raw: &[u8], hs: &[HeaderRange]| {
        hs.iter()
            .filter(|h| h.kind == HeaderKind::XForwardedFor)
            .map(|h| show(&raw[h.value.clone()]))
            .collect::<Vec<_>>()
    };
    let mut chain = xff(raw, &head.headers);
    chain.push(REQ_OPTS.client_ip.to_string());
    assert_eq!(
        xff(a, &again.headers).join(", "),
        chain.join(", "),
        "x-forwarded-for chain: {}",
        ctx()
    );
}

// --------------------------------------------------------------- responses

type ResOutcome = (Result<Option<ResponseHead>, HeadError>, Vec<u8>);

fn parse_res(buf: &mut BytesMut, limits: &Limits, head_request: bool) -> ResOutcome {
    let r = parse_response(buf, limits, head_request);
    (r, buf.to_vec())
}

fn same_res(
    a: &Result<Option<ResponseHead>, HeadError>,
    b: &Result<Option<ResponseHead>, HeadError>,
) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Parses a response head, whole and in two pieces, checks it and re-encodes
/// it for the client.
pub fn check_response(data: &[u8]) {
    let h = fnv(data);
    let head_request = h & 1 == 1;
    for limits in limit_sets(h) {
        let whole = parse_res(&mut BytesMut::from(data), &limits, head_request);
        for k in splits(h, data.len()) {
            let mut buf = BytesMut::from(&data[..k]);
            match parse_response(&mut buf, &limits, head_request) {
                Err(e) => assert!(
                    whole.0.is_err(),
                    "the first {k} bytes are refused ({e:?}) but the whole input parses: {:?}",
                    whole.0
                ),
                Ok(Some(res)) => {
                    assert!(same_res(&Ok(Some(res)), &whole.0), "split at {k}: different head");
                    buf.extend_from_slice(&data[k..]);
                    assert_eq!(buf.to_vec(), whole.1, "split at {k}: different bytes left");
                }
                Ok(None) => {
                    buf.extend_from_slice(&data[k..]);
                    let second = parse_res(&mut buf, &limits, head_request);
                    assert!(
                        same_res(&second.0, &whole.0),
                        "split at {k}: {:?} after Partial, {:?} whole",
                        second.0,
                        whole.0
                    );
                    assert_eq!(second.1, whole.1, "split at {k}: different bytes left");
                }
            }
        }
        if let (Ok(Some(res)), rest) = &whole {
            response_invariants(data, res, rest, head_request);
            reencode_response(res, head_request, h & 2 == 2);
        }
    }
}

fn response_invariants(input: &[u8], res: &ResponseHead, rest: &[u8], head_request: bool) {
    let raw = &res.raw[..];
    assert_eq!(raw.len() + rest.len(), input.len());
    assert_eq!(&input[..raw.len()], raw, "raw is not the input's head");
    assert!(raw.ends_with(b"\n"), "head does not end with a line end");
    assert!(within(&res.reason, raw.len()), "reason outside the head");
    check_fields(raw, &res.headers, &res.connection.others);
    assert!((100..=999).contains(&res.status), "status {}", res.status);
    assert!(res.minor <= 1, "HTTP/1.{} accepted", res.minor);
    let bodyless = head_request || res.is_informational() || res.status == 204 || res.status == 304;
    check_framing(raw, &res.headers, res.framing, bodyless);
    check_connection(raw, &res.headers, &res.connection);
    // RFC 9112 §9.3, and a close-delimited body ends only with the connection.
    assert_eq!(
        res.keep_alive,
        persists(res.minor, &res.connection) && res.framing != BodyFraming::UntilClose,
        "keep-alive does not agree with RFC 9112 §9.3 (HTTP/1.{}, Connection {:?}, {:?})",
        res.minor,
        connection_values(raw, &res.headers),
        res.framing
    );
}

const RES_FORWARDED: &[HeaderKind] = &[
    HeaderKind::ClientIdentity,
    HeaderKind::GrpcTimeout,
    HeaderKind::WeftTimeout,
    HeaderKind::Host,
    HeaderKind::Other,
    HeaderKind::Expect,
    HeaderKind::XForwardedFor,
    HeaderKind::XForwardedProto,
];

/// What weft sends the client is one well-formed response meaning the same
/// thing. `keep_alive_10`: the client is HTTP/1.0 and asked for keep-alive.
fn reencode_response(res: &ResponseHead, head_request: bool, keep_alive_10: bool) {
    let raw = &res.raw[..];
    let upgrade = res.status == 101;
    let opts = ResponseOptions {
        framing: res.framing,
        close: !res.keep_alive,
        keep_alive_10,
        upgrade,
    };
    let mut out = BytesMut::new();
    encode_response(res, &opts, &mut out);
    let encoded = out.to_vec();
    let again = match parse_response(&mut out, &GENEROUS, head_request) {
        Ok(Some(again)) => again,
        other => panic!(
            "re-encoded response does not parse: {other:?}\n{}",
            show(&encoded)
        ),
    };
    let ctx = || show(&encoded);
    assert!(out.is_empty(), "bytes after the re-encoded head: {}", ctx());
    assert_eq!(again.status, res.status, "{}", ctx());
    assert_eq!(
        &again.raw[again.reason.clone()],
        &raw[res.reason.clone()],
        "{}",
        ctx()
    );
    assert_eq!(again.framing, res.framing, "framing changed: {}", ctx());
    if !upgrade {
        assert_eq!(again.keep_alive, res.keep_alive, "keep-alive changed: {}", ctx());
    }
    let a = &again.raw[..];
    for h in &again.headers {
        match h.kind {
            HeaderKind::HopByHop => panic!("hop-by-hop field forwarded: {}", ctx()),
            HeaderKind::Upgrade => assert!(upgrade, "Upgrade forwarded: {}", ctx()),
            HeaderKind::TransferEncoding => assert!(
                matches!(res.framing, BodyFraming::Chunked | BodyFraming::UntilClose),
                "Transfer-Encoding on a {:?} body: {}",
                res.framing,
                ctx()
            ),
            _ => {}
        }
    }
    // A 1xx or 204 goes to the client without Content-Length (RFC 9110 §8.6).
    if res.is_informational() || res.status == 204 {
        assert!(
            !again.headers.iter().any(|h| h.kind == HeaderKind::ContentLength),
            "Content-Length on a {}: {}",
            res.status,
            ctx()
        );
    }
    // A body coded with something other than chunked keeps its coding: the
    // client cannot decode it without the field (RFC 9112 §6.3).
    if res.framing == BodyFraming::UntilClose {
        let codings = |raw: &[u8], hs: &[HeaderRange]| {
            hs.iter()
                .filter(|h| h.kind == HeaderKind::TransferEncoding)
                .map(|h| show(&raw[h.value.clone()]))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            codings(a, &again.headers),
            codings(raw, &res.headers),
            "transfer coding lost: {}",
            ctx()
        );
    }
    // The upstream's Connection field and the options it lists are hop-by-hop
    // (RFC 9110 §7.6.1): the only Connection field the client sees is weft's.
    let connection: &[&str] = if upgrade {
        &["upgrade"]
    } else if opts.close {
        &["close"]
    } else if keep_alive_10 {
        &["keep-alive"]
    } else {
        &[]
    };
    assert_eq!(
        connection_values(a, &again.headers),
        connection,
        "Connection fields: {}",
        ctx()
    );
    let got = end_to_end(a, &again.headers, &again.connection, RES_FORWARDED);
    let expected = end_to_end(raw, &res.headers, &res.connection, RES_FORWARDED);
    assert_eq!(
        shown(&got),
        shown(&expected),
        "end-to-end fields changed: {}",
        ctx()
    );
}

// ----------------------------------------------------------------- chunked

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    payload: Vec<u8>,
    consumed: usize,
    done: bool,
}

fn checked_step(d: &mut ChunkedDecoder, input: &[u8]) -> Result<Step, ChunkedError> {
    let s = d.step(input)?;
    assert!(
        s.data.start <= s.data.end && s.data.end <= s.consumed && s.consumed <= input.len(),
        "step {s:?} out of its input of {} bytes",
        input.len()
    );
    if s.data.start < s.data.end {
        assert_eq!(s.data.end, s.consumed, "payload run not at the end of the step");
    }
    assert!(
        s.consumed > 0 || input.is_empty() || d.is_done(),
        "step made no progress on {} bytes",
        input.len()
    );
    Ok(s)
}

fn decode_whole(body: &[u8]) -> Result<Decoded, ChunkedError> {
    let mut d = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut at = 0;
    while at < body.len() && !d.is_done() {
        let s = checked_step(&mut d, &body[at..])?;
        payload.extend_from_slice(&body[at + s.data.start..at + s.data.end]);
        at += s.consumed;
    }
    Ok(Decoded {
        payload,
        consumed: at,
        done: d.is_done(),
    })
}

/// Piece sizes from the seed byte: its low bits pick the largest piece.
fn pieces(seed: u8) -> impl FnMut() -> usize {
    let max = [1, 2, 3, 5, 8, 16, 64, 4096][usize::from(seed & 7)];
    let mut state = u32::from(seed).wrapping_mul(0x9e37_79b9) | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + state as usize % max
    }
}

fn decode_in_pieces(body: &[u8], seed: u8) -> Result<Decoded, ChunkedError> {
    let mut d = ChunkedDecoder::new();
    let mut next = pieces(seed);
    let mut payload = Vec::new();
    let mut at = 0;
    while at < body.len() && !d.is_done() {
        let piece = &body[at..(at + next()).min(body.len())];
        let mut off = 0;
        while off < piece.len() && !d.is_done() {
            let s = checked_step(&mut d, &piece[off..])?;
            payload.extend_from_slice(&piece[off + s.data.start..off + s.data.end]);
            off += s.consumed;
        }
        at += off;
    }
    if d.is_done() {
        assert_eq!(d.step(b"x").map(|s| s.consumed), Ok(0), "consumed after the end");
    }
    Ok(Decoded {
        payload,
        consumed: at,
        done: d.is_done(),
    })
}

/// A plain, non-incremental reading of a complete chunked body per RFC 9112
/// §7.1, for comparison. It insists that a chunk size is followed by nothing,
/// whitespace, or whitespace and `;` (a chunk extension): a size followed by
/// other bytes (`5 6`) is read differently by different parsers.
fn reference_decode(body: &[u8]) -> Result<Vec<u8>, String> {
    fn line(body: &[u8], at: usize) -> Result<usize, String> {
        body[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| at + p)
            .ok_or_else(|| format!("no CRLF after {at}"))
    }
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        let end = line(body, at)?;
        let l = &body[at..end];
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = std::str::from_utf8(&l[..digits])
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("bad chunk size in {}", show(l)))?;
        let after = &l[digits..];
        let ws = after.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
        if ws < after.len() && after[ws] != b';' {
            return Err(format!("chunk size followed by {}", show(after)));
        }
        if after.iter().any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f) {
            return Err(format!("control byte in chunk line {}", show(l)));
        }
        at = end + 2;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).map_err(|_| "huge chunk".to_string())?;
        let data = body.get(at..at + size).ok_or("short chunk")?;
        out.extend_from_slice(data);
        at += size;
        if body.get(at..at + 2) != Some(b"\r\n") {
            return Err("no CRLF after chunk data".into());
        }
        at += 2;
    }
    loop {
        let end = line(body, at)?;
        let l = &body[at..end];
        if l.iter().any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f) {
            return Err(format!("control byte in trailer {}", show(l)));
        }
        at = end + 2;
        if l.is_empty() {
            break;
        }
    }
    if at != body.len() {
        return Err(format!("body ends at {at}, decoder stopped at {}", body.len()));
    }
    Ok(out)
}

/// Decodes a chunked body whole and in pieces; both ways, and `feed`, must
/// agree, and a complete body must read the same with [`reference_decode`].
pub fn check_chunked(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let whole = decode_whole(body);
    let piecewise = decode_in_pieces(body, seed);
    assert_eq!(
        whole, piecewise,
        "whole and piecewise decoding differ (seed {seed})"
    );
    let mut d = ChunkedDecoder::new();
    let fed = d.feed(body);
    match &whole {
        Ok(w) => {
            assert_eq!(
                fed,
                Ok(w.consumed),
                "feed and step disagree on the consumed count"
            );
            assert_eq!(d.is_done(), w.done);
            if w.done {
                let reference = reference_decode(&body[..w.consumed]);
                assert_eq!(
                    reference.as_deref(),
                    Ok(&w.payload[..]),
                    "decoder accepted {} differently from RFC 9112",
                    show(&body[..w.consumed])
                );
            } else {
                assert_eq!(w.consumed, body.len(), "stopped early without an error");
            }
            body_reader_agrees(body, seed, w);
        }
        Err(e) => assert_eq!(fed, Err(*e), "feed and step disagree on the error"),
    }
}

/// `BodyReader` over the same bytes in pieces: keeping the framing it hands
/// on exactly the consumed bytes; de-chunking, exactly the payload; and the
/// payload re-encoded with the chunk encoder (pieces from the seed) reads
/// back as the same payload.
fn body_reader_agrees(body: &[u8], seed: u8, w: &Decoded) {
    let read = |mut r: BodyReader| {
        let mut next = pieces(seed);
        let (mut out, mut at) = (Vec::new(), 0);
        while at < body.len() && !r.done() {
            let end = (at + next()).min(body.len());
            let mut buf = BytesMut::from(&body[at..end]);
            let piece = r
                .take(&mut buf)
                .expect("BodyReader refused what the decoder took");
            out.extend_from_slice(&piece);
            at = end - buf.len();
            if !buf.is_empty() {
                break;
            }
        }
        (out, at, r.done())
    };
    let (kept, at, done) = read(BodyReader::new(BodyFraming::Chunked));
    assert_eq!(
        (at, done),
        (w.consumed, w.done),
        "BodyReader and the decoder disagree"
    );
    assert_eq!(kept, &body[..w.consumed], "framing not kept as received");
    let (payload, _, _) = read(BodyReader::dechunking());
    assert_eq!(payload, w.payload, "de-chunked payload differs");
    if w.done {
        let mut wire = Vec::new();
        let mut next = pieces(seed.wrapping_add(1));
        let mut at = 0;
        while at < w.payload.len() {
            let end = (at + next()).min(w.payload.len());
            wire.extend_from_slice(&chunk_head(end - at));
            wire.extend_from_slice(&w.payload[at..end]);
            wire.extend_from_slice(CHUNK_END);
            at = end;
        }
        wire.extend_from_slice(&last_chunk(&[(b"x-t", b"1")]));
        let mut r = BodyReader::dechunking();
        let mut buf = BytesMut::from(&wire[..]);
        let again = r.take(&mut buf).expect("weft's own chunked encoding is refused");
        assert!(r.done() && buf.is_empty(), "re-encoded body not read to its end");
        assert_eq!(&again[..], &w.payload[..], "re-encoded payload differs");
    }
}

// ------------------------------------------------------------------ limits

/// Limits up to this are probed with inputs of their size; larger ones (a
/// configuration may allow gigabytes) only with the inputs the smaller need.
const PROBE_MAX: usize = 1 << 17;

/// The shortest request line `parse_request` can accept, as it counts it: the
/// bytes before the `\n`, so `GET / HTTP/1.1\r`.
const MIN_LINE: usize = 15;

/// A request line as `parse_request` counts it (up to the `\n`, the `\r`
/// included) of `len` bytes, at least [`MIN_LINE`]: `GET /aaa HTTP/1.1\r`.
fn request_line(len: usize) -> Vec<u8> {
    let mut line = b"GET /".to_vec();
    line.resize(5 + len.saturating_sub(MIN_LINE), b'a');
    line.extend_from_slice(b" HTTP/1.1\r");
    line
}

/// `GET / HTTP/1.1` with `fields` header fields (the first `Host: a`), then
/// the empty line.
fn head_with_fields(fields: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for _ in 1..fields {
        head.extend_from_slice(b"x: 1\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// `GET / HTTP/1.1` with one field, `Host: aaa…`, of `len` bytes in all
/// (at least 27).
fn head_of_size(len: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nHost: ".to_vec();
    head.resize(len.max(27) - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// Each limit of a listener refuses exactly what exceeds it, with its own
/// error, and lets through what fits. `parse_request` counts the request line
/// up to its `\n` (checked first, also while the line is incomplete), the head
/// from the request line to its empty line (or what arrived of it), and the
/// header fields; more fields than the limit are refused while parsing, before
/// the size of the head is known.
fn check_limits(limits: &Limits) {
    let (line_max, head_max, fields_max) =
        (limits.max_request_line, limits.max_head_bytes, limits.max_headers);
    let verdict = |input: &[u8]| request_verdict_with(input, limits);
    let too_long = || Verdict::Refused(HeadError::RequestLineTooLong.code().to_string());
    let too_large = || Verdict::Refused(HeadError::HeadTooLarge.code().to_string());
    let too_many = || Verdict::Refused(HeadError::TooManyHeaders.code().to_string());
    // Accepted within every limit, else refused for the first one exceeded
    // (used on heads with no more fields than the limit).
    let fits = |head: &[u8], line: usize| {
        if line > line_max {
            too_long()
        } else if head.len() > head_max {
            too_large()
        } else {
            Verdict::Accepted
        }
    };
    let ctx = |what: &str| format!("{what} with {limits:?}");

    let minimal = head_with_fields(1);
    assert_eq!(verdict(&minimal), fits(&minimal, MIN_LINE), "{}", ctx("GET /"));

    // max_request_line
    if line_max < PROBE_MAX {
        let over = request_line(line_max + 1);
        let mut head = over.clone();
        head.extend_from_slice(b"\nHost: a\r\n\r\n");
        assert_eq!(verdict(&head), too_long(), "{}", ctx("a longer request line"));
        let partial = &over[..line_max + 1];
        assert_eq!(
            verdict(partial),
            too_long(),
            "{}",
            ctx("a longer incomplete request line")
        );
        if line_max >= MIN_LINE {
            let mut head = request_line(line_max);
            head.extend_from_slice(b"\nHost: a\r\n\r\n");
            assert_eq!(
                verdict(&head),
                fits(&head, line_max),
                "{}",
                ctx("a request line at the limit")
            );
        }
    }

    // max_headers (at most MAX_HEADERS_CAP, so the inputs stay small)
    if line_max >= MIN_LINE {
        let head = head_with_fields(fields_max);
        assert_eq!(
            verdict(&head),
            fits(&head, MIN_LINE),
            "{}",
            ctx("fields at the limit")
        );
        let head = head_with_fields(fields_max + 1);
        let got = verdict(&head);
        if head.len() <= head_max {
            assert_eq!(got, too_many(), "{}", ctx("one field more than the limit"));
        } else {
            // Over two limits, both answered with 431.
            assert!(
                got == too_many() || got == too_large(),
                "{got:?}: {}",
                ctx("one field more than the limit, over the size limit")
            );
        }
    }

    // max_head_bytes, complete and incomplete heads
    if line_max >= MIN_LINE && head_max < PROBE_MAX {
        let over = head_of_size(head_max + 1);
        assert_eq!(verdict(&over), too_large(), "{}", ctx("a larger head"));
        if head_max >= 27 {
            let at = head_of_size(head_max);
            assert_eq!(at.len(), head_max);
            assert_eq!(verdict(&at), Verdict::Accepted, "{}", ctx("a head at the limit"));
        }
        // What arrived of a head (no empty line yet) counts the same.
        let longer = head_of_size(head_max + 28);
        assert_eq!(
            verdict(&longer[..head_max + 1]),
            too_large(),
            "{}",
            ctx("a larger incomplete head")
        );
        assert_eq!(
            verdict(&longer[..head_max]),
            Verdict::Incomplete,
            "{}",
            ctx("an incomplete head at the limit")
        );
    }
}

// ------------------------------------------------------------------ config

/// Parses arbitrary UTF-8 as configuration; never panics, and what it accepts
/// is consistent.
pub fn check_config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let max_line = src.bytes().filter(|b| *b == b'\n').count() + 1;
    let config = match Config::parse(src, &literal_only) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if let Some(line) = e.line {
                assert!(
                    (1..=max_line).contains(&line),
                    "error on line {line} of {max_line}"
                );
            }
            return;
        }
    };
    let text = config.describe();
    assert!(
        !config.listeners.is_empty(),
        "accepted a configuration without listener"
    );
    for (i, l) in config.listeners.iter().enumerate() {
        assert!(
            !l.name.is_empty() && l.name.trim() == l.name,
            "listener name {:?}",
            l.name
        );
        assert!(text.contains(&format!("listener {} on {}", l.name, l.addr)));
        for m in &config.listeners[..i] {
            assert_ne!(m.name, l.name, "duplicate listener name");
            assert_ne!(m.addr, l.addr, "duplicate listener address");
        }
        assert!(
            (1..=256).contains(&l.max_headers),
            "max_headers {}",
            l.max_headers
        );
        for r in l.routes.routes() {
            assert!(
                (1..=max_line).contains(&r.line),
                "route on line {} of {max_line}",
                r.line
            );
            match &r.target {
                Target::Cluster(c) => assert!(*c < config.clusters.len(), "dangling cluster {c}"),
                Target::Split {
                    clusters,
                    weights,
                    total,
                } => {
                    assert!(!clusters.is_empty() && clusters.len() == weights.len());
                    assert!(clusters.iter().all(|c| *c < config.clusters.len()));
                    assert_eq!(*total, weights.iter().map(|w| u64::from(*w)).sum::<u64>());
                    assert!(*total > 0, "split with zero total weight");
                }
            }
        }
        // The listener's limits drive the head parser (as the runtime passes them).
        check_limits(&Limits {
            max_request_line: l.max_request_line,
            max_head_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
        });
    }
    for (i, c) in config.clusters.iter().enumerate() {
        assert!(
            !c.name.is_empty() && c.name.trim() == c.name,
            "cluster name {:?}",
            c.name
        );
        assert!(
            config.clusters[..i].iter().all(|o| o.name != c.name),
            "duplicate cluster"
        );
        assert_eq!(c.endpoints.len(), c.authorities.len());
        assert!(!c.pool.idle_timeout.is_zero());
        assert!(text.contains(&format!("cluster {} (", c.name)));
    }
    assert_eq!(
        Config::parse(src, &literal_only).as_ref(),
        Ok(&config),
        "parsing is not deterministic"
    );
}

// ---------------------------------------------------------------- HTTP/1 <-> HTTP/2

/// Fields that belong to an HTTP/1 connection and must never appear in an
/// HTTP/2 message (RFC 9113 §8.2.2), nor `host` beside `:authority`.
const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

fn translate_input(data: &[u8]) -> (bool, &[u8]) {
    match data.split_first() {
        Some((b, rest)) => (b % 2 == 1, rest),
        None => (false, data),
    }
}

/// The verdict of a `translate` input: the first byte picks a request
/// (even) or a response (odd) head, the rest is parsed with generous
/// limits and translated to HTTP/2; accepted when both succeed.
pub fn translate_verdict(data: &[u8]) -> Verdict {
    let (response, rest) = translate_input(data);
    if response {
        match parse_response(&mut BytesMut::from(rest), &GENEROUS, false) {
            Ok(Some(res)) => match weft_proto::message::h2_response(&res) {
                Ok(_) => Verdict::Accepted,
                Err(e) => Verdict::Refused(format!("{e:?}")),
            },
            other => head_verdict(other),
        }
    } else {
        match parse_request(&mut BytesMut::from(rest), &GENEROUS) {
            Ok(Some(h)) => match weft_proto::Request::H1(h).to_h2(&h2_opts(), "http") {
                Ok(_) => Verdict::Accepted,
                Err(e) => Verdict::Refused(format!("{e:?}")),
            },
            other => head_verdict(other),
        }
    }
}

fn h2_opts() -> RequestOptions<'static> {
    RequestOptions {
        client_ip: "10.0.0.1",
        proto: "http",
        default_host: "default.test:80",
        deadline: None,
        identity: None,
        traceparent: None,
        request_id: None,
    }
}

/// HTTP/1 heads translated to HTTP/2 and back. A request head that parses
/// either translates or is refused with an error, never a panic; what
/// translates carries no connection-specific field, `te` only as
/// `trailers`, the request's method, authority (its own, else the
/// endpoint's) and path; turned back into HTTP/1.1 (as the next weft does)
/// it parses again with the same method, path and host. A response head
/// that parses translates without connection-specific fields, and back to
/// HTTP/1.1 parses with the same status.
pub fn check_translate(data: &[u8]) {
    let (response, rest) = translate_input(data);
    if response {
        let Ok(Some(res)) = parse_response(&mut BytesMut::from(rest), &GENEROUS, false) else {
            return;
        };
        let Ok(h2) = weft_proto::message::h2_response(&res) else {
            return;
        };
        assert_eq!(h2.status().as_u16(), res.status);
        for name in h2.headers().keys() {
            // `host` means nothing in a response, but is no connection's.
            let forbidden = CONNECTION_SPECIFIC.contains(&name.as_str()) && name != "host";
            assert!(!forbidden, "{name} in {}", show(rest));
        }
        let (parts, ()) = h2.into_parts();
        let back = weft_proto::Response::Fields(Box::new(weft_proto::message::ResponseFields {
            parts,
            body: weft_proto::BodyLength::Unknown,
        }));
        let mut out = BytesMut::new();
        let opts = ResponseOptions {
            framing: BodyFraming::Chunked,
            close: false,
            keep_alive_10: false,
            upgrade: false,
        };
        back.encode_h1(&opts, &mut out);
        let again = parse_response(&mut out.clone(), &GENEROUS, false);
        match again {
            Ok(Some(r)) => assert_eq!(r.status, res.status, "{}", show(&out)),
            other => panic!(
                "the translated response does not parse back: {other:?}\n{}",
                show(&out)
            ),
        }
        return;
    }
    let Ok(Some(head)) = parse_request(&mut BytesMut::from(rest), &GENEROUS) else {
        return;
    };
    let req = weft_proto::Request::H1(head);
    let Ok(h2) = req.to_h2(&h2_opts(), "http") else {
        return;
    };
    assert_eq!(h2.method().as_str(), req.method());
    assert_eq!(
        h2.uri().authority().map(|a| a.as_str()),
        Some(req.authority().unwrap_or("default.test:80"))
    );
    assert_eq!(h2.uri().path(), req.path(), "{}", show(rest));
    for (name, value) in h2.headers() {
        assert!(
            !CONNECTION_SPECIFIC.contains(&name.as_str()),
            "{name} in {}",
            show(rest)
        );
        if name == "te" {
            assert_eq!(value, "trailers");
        }
    }
    let length = req.body();
    let (parts, ()) = h2.into_parts();
    let Ok(fields) = weft_proto::Request::from_fields(parts, length) else {
        return;
    };
    let mut out = BytesMut::new();
    fields.encode_h1(&h2_opts(), &mut out);
    match parse_request(&mut out.clone(), &GENEROUS) {
        Ok(Some(back)) => {
            assert_eq!(back.method(), req.method(), "{}", show(&out));
            assert_eq!(back.path(), req.path(), "{}", show(&out));
            let authority = req.authority().unwrap_or("default.test:80");
            assert_eq!(back.authority(), Some(authority), "{}", show(&out));
        }
        other => panic!(
            "the translated request does not parse back: {other:?}\n{}",
            show(&out)
        ),
    }
}
