//! Trace context end to end: a W3C `traceparent` goes upstream with weft's
//! own parent id (the trace id and flags kept, `tracestate` as it came), an
//! invalid one as it came; a request without `x-request-id` gets one, a
//! request with one keeps it; over HTTP/1.1 and from an HTTP/2 client.

use weft_tests::h2c::H2;
use weft_tests::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// The values of field `name` in a received head (lines `name: value`).
fn fields<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// A UUID version 4 in its text form.
fn is_uuid_v4(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// The parent id changes at weft, the rest of the trace goes on.
fn traceparent_gets_a_new_parent_id() {
    let up = Upstream::echo("up");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = c.get("/", &format!("traceparent: {tp}\r\ntracestate: vendor=x\r\n"));
    assert_eq!(r.status, 200);
    let head = up.request(0).head;
    let sent = fields(&head, "traceparent");
    assert_eq!(sent.len(), 1, "one traceparent upstream:\n{head}");
    let parts: Vec<&str> = sent[0].split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"), "{}", sent[0]);
    assert_ne!(parts[2], PARENT, "weft's own parent id");
    assert!(
        parts[2].len() == 16 && parts[2].bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        sent[0]
    );
    assert_eq!(fields(&head, "tracestate"), ["vendor=x"]);
    // A second request is another span of weft's.
    assert_eq!(c.get("/", &format!("traceparent: {tp}\r\n")).status, 200);
    let again = fields(&up.request(1).head, "traceparent")[0].to_string();
    assert_ne!(again, sent[0], "a new parent id per request");
    // An invalid traceparent goes on untouched: weft does not start traces.
    let bad = format!("00-{TRACE}-0000000000000000-01");
    assert_eq!(c.get("/", &format!("traceparent: {bad}\r\n")).status, 200);
    assert_eq!(fields(&up.request(2).head, "traceparent"), [bad.as_str()]);
    // Two traceparents make none (W3C trace context): both go on untouched.
    let other = format!("00-{TRACE}-1111111111111111-01");
    assert_eq!(
        c.get("/", &format!("traceparent: {tp}\r\ntraceparent: {other}\r\n"))
            .status,
        200
    );
    assert_eq!(
        fields(&up.request(3).head, "traceparent"),
        [tp.as_str(), other.as_str()]
    );
}

/// A request without an id gets a fresh one; one with an id keeps it.
fn request_ids_are_given_or_kept() {
    let up = Upstream::echo("up");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/", "").status, 200);
    assert_eq!(c.get("/", "").status, 200);
    assert_eq!(c.get("/", "x-request-id: mine-1\r\n").status, 200);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let head = up.request(i).head;
            let got = fields(&head, "x-request-id");
            assert_eq!(got.len(), 1, "one x-request-id:\n{head}");
            got[0].to_string()
        })
        .collect();
    assert!(is_uuid_v4(&ids[0]) && is_uuid_v4(&ids[1]), "{ids:?}");
    assert_ne!(ids[0], ids[1], "each request its own id");
    assert_eq!(ids[2], "mine-1");
}

/// `generate_request_id = false` adds none.
fn request_ids_can_be_left_alone() {
    let up = Upstream::echo("up");
    let weft = start(&simple_config(&[up.addr], "generate_request_id = false", ""));
    let addr = weft.addr("in").expect("listener");
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(fields(&up.request(0).head, "x-request-id"), Vec::<&str>::new());
}

/// From an HTTP/2 client to an HTTP/1.1 upstream, the same.
fn over_http2_too() {
    let up = Upstream::echo("up");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut h2 = H2::connect(addr);
    let tp = format!("00-{TRACE}-{PARENT}-00");
    let req = H2::head(addr, "GET", "/", &[("traceparent", tp.as_str())]);
    let r = h2.request(req, b"").expect("an answer");
    assert_eq!(r.status, 200);
    let head = up.request(0).head;
    let sent = fields(&head, "traceparent");
    assert_eq!(sent.len(), 1, "{head}");
    assert!(
        sent[0].starts_with(&format!("00-{TRACE}-")) && sent[0].ends_with("-00"),
        "{}",
        sent[0]
    );
    assert!(!sent[0].contains(PARENT), "{}", sent[0]);
    let ids = fields(&head, "x-request-id");
    assert!(ids.len() == 1 && is_uuid_v4(ids[0]), "{head}");
}

on_both_drivers!(
    traceparent_gets_a_new_parent_id,
    request_ids_are_given_or_kept,
    request_ids_can_be_left_alone,
    over_http2_too
);
