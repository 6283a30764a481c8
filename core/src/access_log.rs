//! Access log lines: the format a listener's `access_log` names, and the
//! line one request leaves in it.
//!
//! A format is `"json"` (one object per line) or a pattern of text and
//! `%FIELD%` operators, Envoy's way (`"text"` is [`DEFAULT_PATTERN`]). It is
//! checked when the configuration loads; writing a line allocates nothing
//! beyond the output buffer. The start time comes in with the entry: this
//! module never reads the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The pattern `format = "text"` stands for (and the default): Envoy's
/// default format, with weft's error code where Envoy has its response
/// flags.
pub const DEFAULT_PATTERN: &str =
    "[%START_TIME%] \"%METHOD% %PATH% %PROTOCOL%\" %RESPONSE_CODE% %WEFT_ERROR% \
%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %UPSTREAM_TIME% \"%DOWNSTREAM_REMOTE_ADDRESS%\" \"%REQUEST_ID%\" \
\"%AUTHORITY%\" \"%UPSTREAM_HOST%\" %ATTEMPTS% %TRACE_ID%";

/// What a line shows of one request: one `%FIELD%` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// When the request head arrived (RFC 3339, UTC, milliseconds).
    StartTime,
    /// The method.
    Method,
    /// The path as routed (normalised, without the query).
    Path,
    /// The authority (`Host`, or `:authority`).
    Authority,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    Protocol,
    /// The status sent to the client.
    ResponseCode,
    /// The `weft-error` code.
    WeftError,
    /// Request bytes read (head and body).
    BytesReceived,
    /// Response bytes written (head and body).
    BytesSent,
    /// From the head's arrival to the end, in milliseconds.
    Duration,
    /// From the first attempt to the upstream's response head, in
    /// milliseconds.
    UpstreamTime,
    /// The endpoint of the last attempt.
    UpstreamHost,
    /// Attempts made upstream.
    Attempts,
    /// The request's `x-request-id`.
    RequestId,
    /// The trace id of its `traceparent` (or B3) field.
    TraceId,
    /// The client's address.
    DownstreamRemoteAddress,
    /// The listener's name.
    Listener,
    /// The route's name.
    Route,
    /// The cluster's name.
    Cluster,
}

/// Every field with its operator name (in a pattern) and JSON key (quoted,
/// with its colon: written in one piece).
const FIELDS: &[(Field, &str, &str)] = &[
    (Field::StartTime, "START_TIME", "\"start_time\":"),
    (Field::Method, "METHOD", "\"method\":"),
    (Field::Path, "PATH", "\"path\":"),
    (Field::Authority, "AUTHORITY", "\"authority\":"),
    (Field::Protocol, "PROTOCOL", "\"protocol\":"),
    (Field::ResponseCode, "RESPONSE_CODE", "\"response_code\":"),
    (Field::WeftError, "WEFT_ERROR", "\"weft_error\":"),
    (Field::BytesReceived, "BYTES_RECEIVED", "\"bytes_received\":"),
    (Field::BytesSent, "BYTES_SENT", "\"bytes_sent\":"),
    (Field::Duration, "DURATION", "\"duration_ms\":"),
    (Field::UpstreamTime, "UPSTREAM_TIME", "\"upstream_time_ms\":"),
    (Field::UpstreamHost, "UPSTREAM_HOST", "\"upstream_host\":"),
    (Field::Attempts, "ATTEMPTS", "\"attempts\":"),
    (Field::RequestId, "REQUEST_ID", "\"request_id\":"),
    (Field::TraceId, "TRACE_ID", "\"trace_id\":"),
    (
        Field::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS",
        "\"downstream_remote_address\":",
    ),
    (Field::Listener, "LISTENER", "\"listener\":"),
    (Field::Route, "ROUTE", "\"route\":"),
    (Field::Cluster, "CLUSTER", "\"cluster\":"),
];

/// A piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text as written.
    Text(String),
    /// A field's value (`-` when the request has none).
    Field(Field),
}

/// How a listener's access log writes a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, every field, `null` where there is none.
    Json,
    /// Text and fields.
    Pattern(Vec<Piece>),
}

impl Format {
    /// `"json"`, `"text"` (the default pattern), or a pattern: text with
    /// `%FIELD%` operators (`%%` is a `%`). An unknown operator, or a `%`
    /// left open, is an error that names it and lists the known ones.
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "json" => return Ok(Format::Json),
            "text" => return Format::parse(DEFAULT_PATTERN),
            _ => {}
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('%') {
            text.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let Some(end) = after.find('%') else {
                return Err(format!(
                    "a `%` opens an operator that never closes (after `{}`): write `%%` for a percent sign",
                    &s[..s.len() - rest.len() + at]
                ));
            };
            let name = &after[..end];
            if name.is_empty() {
                text.push('%');
            } else {
                let Some((field, _, _)) = FIELDS.iter().find(|(_, n, _)| *n == name) else {
                    let known: Vec<&str> = FIELDS.iter().map(|(_, n, _)| *n).collect();
                    return Err(format!(
                        "unknown operator `%{name}%`: use one of {}",
                        known.join(", ")
                    ));
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(*field));
            }
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Format::Pattern(pieces))
    }

    /// Appends the line of `e` (with its newline) to `out`.
    pub fn write(&self, e: &Entry<'_>, out: &mut Vec<u8>) {
        match self {
            Format::Json => {
                out.push(b'{');
                for (i, (field, _, key)) in FIELDS.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(key.as_bytes());
                    if !e.value(*field, out, true) {
                        out.extend_from_slice(b"null");
                    }
                }
                out.extend_from_slice(b"}\n");
            }
            Format::Pattern(pieces) => {
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                        Piece::Field(f) => {
                            if !e.value(*f, out, false) {
                                out.push(b'-');
                            }
                        }
                    }
                }
                out.push(b'\n');
            }
        }
    }
}

/// One request as its access log line shows it.
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    /// When its head arrived, as [`Stamp`] wrote it.
    pub start: Option<&'a str>,
    /// Method, path and authority, when a head was parsed.
    pub method: Option<&'a str>,
    /// The path as routed.
    pub path: Option<&'a str>,
    /// The authority.
    pub authority: Option<&'a str>,
    /// The protocol's name.
    pub protocol: Option<&'static str>,
    /// The status sent.
    pub status: Option<u16>,
    /// The `weft-error` code.
    pub error: Option<&'a str>,
    /// Request bytes read.
    pub bytes_in: u64,
    /// Response bytes written.
    pub bytes_out: u64,
    /// The whole exchange.
    pub duration: Duration,
    /// The wait for the upstream.
    pub upstream_time: Option<Duration>,
    /// The endpoint of the last attempt (`IP:port`).
    pub upstream_host: Option<&'a str>,
    /// Attempts made upstream.
    pub attempts: u32,
    /// `x-request-id`.
    pub request_id: Option<&'a [u8]>,
    /// The trace id.
    pub trace_id: Option<&'a str>,
    /// The client's address.
    pub peer: Option<&'a str>,
    /// Listener, route and cluster names.
    pub listener: &'a str,
    /// The route's name.
    pub route: Option<&'a str>,
    /// The cluster's name.
    pub cluster: Option<&'a str>,
}

impl Entry<'_> {
    /// Writes the value of `f` (quoted and escaped when `json` and it is a
    /// string); false, writing nothing, when there is none.
    fn value(&self, f: Field, out: &mut Vec<u8>, json: bool) -> bool {
        // Text known to be UTF-8 (a `&str`) skips the check.
        let text = |out: &mut Vec<u8>, s: &[u8]| {
            if json {
                json_utf8(out, s);
            } else {
                plain(out, s);
            }
        };
        // Text that never needs escaping (a method, which is a token; an
        // address; an error code; a time; hex): quoted as it is.
        let safe = |out: &mut Vec<u8>, s: &[u8]| {
            if json {
                out.push(b'"');
                out.extend_from_slice(s);
                out.push(b'"');
            } else {
                out.extend_from_slice(s);
            }
        };
        match f {
            Field::StartTime => return self.start.map(|v| safe(out, v.as_bytes())).is_some(),
            Field::Method => return self.method.map(|v| safe(out, v.as_bytes())).is_some(),
            Field::Path => return self.path.map(|v| text(out, v.as_bytes())).is_some(),
            Field::Authority => return self.authority.map(|v| text(out, v.as_bytes())).is_some(),
            Field::Protocol => return self.protocol.map(|v| safe(out, v.as_bytes())).is_some(),
            Field::ResponseCode => match self.status {
                Some(s) => number(out, u64::from(s)),
                None => return false,
            },
            Field::WeftError => return self.error.map(|v| safe(out, v.as_bytes())).is_some(),
            Field::BytesReceived => number(out, self.bytes_in),
            Field::BytesSent => number(out, self.bytes_out),
            Field::Duration => millis(out, self.duration),
            Field::UpstreamTime => match self.upstream_time {
                Some(d) => millis(out, d),
                None => return false,
            },
            Field::UpstreamHost => return self.upstream_host.map(|v| safe(out, v.as_bytes())).is_some(),
            Field::Attempts => number(out, u64::from(self.attempts)),
            Field::RequestId => {
                return self
                    .request_id
                    .map(|v| if json { json_string(out, v) } else { plain(out, v) })
                    .is_some()
            }
            Field::TraceId => return self.trace_id.map(|v| safe(out, v.as_bytes())).is_some(),
            Field::DownstreamRemoteAddress => return self.peer.map(|v| safe(out, v.as_bytes())).is_some(),
            Field::Listener => text(out, self.listener.as_bytes()),
            Field::Route => return self.route.map(|v| text(out, v.as_bytes())).is_some(),
            Field::Cluster => return self.cluster.map(|v| text(out, v.as_bytes())).is_some(),
        }
        true
    }
}

/// Start times as RFC 3339 text (UTC, milliseconds), formatted in full
/// once a second and only the milliseconds otherwise.
#[derive(Debug, Default)]
pub struct Stamp {
    second: u64,
    text: String,
}

impl Stamp {
    /// The text of `t`.
    pub fn format(&mut self, t: SystemTime) -> &str {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text =
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(second)).to_string();
        }
        // `YYYY-MM-DDTHH:MM:SS.mmmZ`: the milliseconds sit before the `Z`.
        let ms = since.subsec_millis();
        let n = self.text.len();
        if n >= 4 {
            let digits = [
                b'0' + (ms / 100) as u8,
                b'0' + (ms / 10 % 10) as u8,
                b'0' + (ms % 10) as u8,
            ];
            self.text
                .replace_range(n - 4..n - 1, std::str::from_utf8(&digits).unwrap_or("000"));
        }
        &self.text
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with three decimals (microseconds).
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    number(out, us / 1_000);
    let frac = us % 1_000;
    out.push(b'.');
    out.push(b'0' + (frac / 100) as u8);
    out.push(b'0' + (frac / 10 % 10) as u8);
    out.push(b'0' + (frac % 10) as u8);
}

/// A value in a text line: bytes outside printable ASCII (which a parsed
/// head never has, but a log must not carry raw), and `"` (which would
/// end a quoted field early), as `\xNN`.
fn plain(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in s {
        if (0x20..0x7f).contains(&b) && b != b'"' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
}

/// A JSON string: quotes, backslashes and control bytes escaped; bytes
/// that are not UTF-8 as U+FFFD.
fn json_string(out: &mut Vec<u8>, s: &[u8]) {
    match std::str::from_utf8(s) {
        Ok(_) => json_utf8(out, s),
        Err(_) => json_utf8(out, String::from_utf8_lossy(s).as_bytes()),
    }
}

/// Bytes a JSON string must escape: quote, backslash, control bytes.
const ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0x7f] = true;
    t
};

/// How many leading bytes of `s`, in whole 8-byte words, need no JSON
/// escaping: a word at a time (a byte below 0x20, or equal to `"`, `\\` or
/// DEL, stops it).
fn clean_words(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Has a zero byte (exact as to whether one exists).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut i = 0;
    for word in s.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(word);
        let x = u64::from_le_bytes(b);
        // A byte below 0x20 (bytes from 0x80 up never count: `!x` clears
        // their high bit).
        let low = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        if low | zero(x ^ (ONES * 0x22)) | zero(x ^ (ONES * 0x5c)) | zero(x ^ (ONES * 0x7f)) != 0 {
            break;
        }
        i += 8;
    }
    i
}

/// [`json_string`] of bytes known to be UTF-8: only ASCII bytes need
/// escaping (every byte of a multi-byte character is above 0x7f); runs
/// between them are copied whole.
fn json_utf8(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let mut from = 0;
    let start = clean_words(s);
    for (i, &b) in s.iter().enumerate().skip(start) {
        if ESCAPE[usize::from(b)] {
            out.extend_from_slice(&s[from..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
            }
            from = i + 1;
        }
    }
    out.extend_from_slice(&s[from..]);
    out.push(b'"');
}

/// A per-character JSON string writer: the model the tests hold
/// [`json_string`] to.
#[cfg(test)]
fn json_string_slow(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for ch in String::from_utf8_lossy(s).chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            start: Some("2026-11-18T11:06:40.123Z"),
            method: Some("GET"),
            path: Some("/v1/items"),
            authority: Some("api.example.com"),
            protocol: Some("HTTP/1.1"),
            status: Some(200),
            error: None,
            bytes_in: 78,
            bytes_out: 1_234,
            duration: Duration::from_micros(2_345),
            upstream_time: Some(Duration::from_micros(2_001)),
            upstream_host: Some("127.0.0.1:9001"),
            attempts: 1,
            request_id: Some(b"abc\"def"),
            trace_id: None,
            peer: Some("10.0.0.7"),
            listener: "ingress",
            route: Some("api"),
            cluster: Some("api-v1"),
        }
    }

    fn line(format: &str, e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        Format::parse(format).expect("a valid format").write(e, &mut out);
        String::from_utf8(out).expect("text")
    }

    #[test]
    fn the_default_text_line() {
        assert_eq!(
            line("text", &entry()),
            "[2026-11-18T11:06:40.123Z] \"GET /v1/items HTTP/1.1\" 200 - 78 1234 2.345 2.001 \"10.0.0.7\" \"abc\\x22def\" \"api.example.com\" \"127.0.0.1:9001\" 1 -\n"
        );
    }

    #[test]
    fn a_pattern_with_text_and_percent_signs() {
        assert_eq!(
            line("%METHOD% 100%% %ROUTE%/%CLUSTER%", &entry()),
            "GET 100% api/api-v1\n"
        );
        let e = Entry {
            listener: "in",
            ..Entry::default()
        };
        assert_eq!(
            line("%LISTENER% %RESPONSE_CODE% %UPSTREAM_TIME% %DURATION%", &e),
            "in - - 0.000\n"
        );
    }

    #[test]
    fn json_lines_escape_and_null_what_is_missing() {
        let mut e = entry();
        e.request_id = Some(b"a\\b\x01\xff");
        e.error = Some("upstream-timeout");
        let text = line("json", &e);
        assert!(text.ends_with("}\n"), "{text}");
        assert!(
            text.contains("\"request_id\":\"a\\\\b\\u0001\u{fffd}\""),
            "{text}"
        );
        assert!(text.contains("\"weft_error\":\"upstream-timeout\""), "{text}");
        assert!(text.contains("\"trace_id\":null"), "{text}");
        assert!(text.contains("\"duration_ms\":2.345,"), "{text}");
        assert!(
            text.contains("\"start_time\":\"2026-11-18T11:06:40.123Z\""),
            "{text}"
        );
    }

    #[test]
    fn mistakes_in_a_pattern_are_named() {
        let e = Format::parse("%METHOD% %STATUS%").expect_err("unknown");
        assert!(
            e.contains("unknown operator `%STATUS%`") && e.contains("RESPONSE_CODE"),
            "{e}"
        );
        let e = Format::parse("%METHOD% 50% off").expect_err("open");
        assert!(e.contains("never closes"), "{e}");
    }

    #[test]
    fn stamps_keep_the_second_and_change_the_milliseconds() {
        let mut s = Stamp::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(s.format(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(
            s.format(t + Duration::from_millis(870)),
            "2026-11-18T11:06:40.993Z"
        );
        assert_eq!(
            s.format(t + Duration::from_millis(877)),
            "2026-11-18T11:06:41.000Z"
        );
        assert_eq!(
            s.format(t + Duration::from_millis(3_600_005)),
            "2026-11-18T12:06:40.128Z"
        );
    }

    #[test]
    fn json_strings_match_the_slow_writer() {
        for v in [
            &b"plain"[..],
            b"",
            b"a\"b\\c",
            b"\x01\x1f\x7f",
            b"/a/long/path/with/a/\"quote\" late",
            b"0123456789abcde\\",
            b"\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9 x\x1f",
            "caf\u{e9} \u{1f600}".as_bytes(),
            b"\xff\xfe ok",
            b"x\ny",
        ] {
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            json_string(&mut fast, v);
            json_string_slow(&mut slow, v);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&slow),
                "{v:?}"
            );
        }
    }

    /// Random strings of quotes, backslashes, control bytes, DEL, ASCII and
    /// multi-byte characters: the word-at-a-time writer agrees with the
    /// per-character one.
    #[test]
    fn json_strings_of_random_text_match_the_slow_writer() {
        let alphabet = [
            "a",
            "/",
            "\"",
            "\\",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            " ",
            "~",
            "\u{e9}",
            "\u{20ac}",
            "\u{1f600}",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2_000 {
            let mut v = String::new();
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            for _ in 0..(seed >> 58) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                // Mostly plain letters, so that whole clean words occur.
                let pick = (seed >> 33) as usize % (alphabet.len() * 3);
                v.push_str(alphabet.get(pick).copied().unwrap_or("x"));
            }
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            json_string(&mut fast, v.as_bytes());
            json_string_slow(&mut slow, v.as_bytes());
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&slow),
                "{v:?}"
            );
        }
    }
}
