//! Hostile and malformed requests: a clear status, a closed connection, and
//! nothing (or never two requests) upstream.

use std::time::{Duration, Instant};
use weft_tests::*;

/// Sends `raw` on a fresh connection; returns weft's answer and checks that
/// the connection is closed afterwards (end of stream or reset within
/// [`CLOSE_BOUND`]; a connection left open fails).
fn refused(addr: std::net::SocketAddr, raw: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw);
    let r = c
        .response(false)
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(raw)));
    assert!(
        c.is_closed(),
        "connection left open after {} to {:?}",
        r.status,
        String::from_utf8_lossy(raw)
    );
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "for {:?}",
        String::from_utf8_lossy(raw)
    );
    r
}

fn each_framing_rule_is_enforced() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let cases: &[(&str, u16, &str)] = &[
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "content-length-with-transfer-encoding",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            400,
            "bad-transfer-encoding",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            "unsupported-transfer-coding",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
            "bad-content-length",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3a\r\n\r\nabc",
            400,
            "bad-content-length",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            400,
            "bad-content-length",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n b\r\n\r\n",
            400,
            "malformed-head",
        ),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "malformed-head"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-Ctl: a\x01b\r\n\r\n",
            400,
            "control-byte-in-header",
        ),
        ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed-head"),
        (
            "GET / HTTP/1.1\r\nBad Name: a\r\nHost: a\r\n\r\n",
            400,
            "malformed-head",
        ),
        ("GET / HTTP/1.1\r\n\r\n", 400, "bad-host"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad-host"),
        ("GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505, "unsupported-version"),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
            "downstream-body-error",
        ),
    ];
    for (raw, status, code) in cases {
        let r = refused(addr, raw.as_bytes());
        assert_eq!(
            (r.status, r.header("weft-error")),
            (*status, Some(*code)),
            "for {raw:?}"
        );
        // The body is one line naming the cause, not empty.
        assert!(
            r.text().len() > 10 && r.text().ends_with('\n'),
            "{:?} for {raw:?}",
            r.text()
        );
    }
    // Only the bad-chunk-size request had a valid head; its head went
    // upstream, but no body and never a second request.
    assert!(up.count() <= 1, "{} requests reached the upstream", up.count());
}

fn smuggling_attempt_never_becomes_two_requests() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    // CL.TE: a front end honouring CL would forward the smuggled GET as a body.
    let r = refused(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(
        (r.status, r.header("weft-error")),
        (400, Some("content-length-with-transfer-encoding"))
    );
    // TE with a space before the colon is not a Transfer-Encoding header for
    // everyone: refused outright.
    let r = refused(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    );
    assert_eq!((r.status, r.header("weft-error")), (400, Some("malformed-head")));
    assert_eq!(up.count(), 0);
}

fn limits_give_414_and_431() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(
        &[up.addr],
        "max_request_line = 100\nmax_header_bytes = 1024\nmax_headers = 10",
        "",
    ));
    let addr = server.addr("in").unwrap();
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200));
    let r = refused(addr, long_line.as_bytes());
    assert_weft_error(&r, 414, "request-line-too-long", "request line");
    let big_head = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(2000));
    let r = refused(addr, big_head.as_bytes());
    assert_weft_error(&r, 431, "head-too-large", "head");
    let many: String = (0..12).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    let r = refused(addr, many.as_bytes());
    assert_weft_error(&r, 431, "too-many-headers", "header");
    // Within the limits all is well.
    assert_eq!(get(addr, "/ok").status, 200);
    assert_eq!(up.count(), 1);
}

fn slow_client_gets_408_and_is_closed() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "header_timeout = \"300ms\"", ""));
    let mut c = Client::connect(server.addr("in").unwrap());
    let started = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n");
    // ... and never the final empty line.
    let r = c.response(false).expect("a 408");
    assert_weft_error(&r, 408, "header-timeout", "header_timeout");
    assert!(c.is_closed());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "408 after {waited:?} with a 300 ms header timeout"
    );
    assert_eq!(up.count(), 0);
}

fn a_byte_at_a_time_still_works() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    for b in b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" {
        c.send(&[*b]);
    }
    let r = c.response(false).unwrap();
    assert_eq!(r.text(), "hello");
}

fn no_route_is_404_and_the_connection_survives() {
    let up = Upstream::echo("a");
    let config = format!(
        "{}[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nmatch = {{ host = \"api.example.com\", path_prefix = \"/v1\" }}\ncluster = \"up\"\n[[cluster]]\nname = \"up\"\nendpoints = [\"{}\"]\n",
        runtime_section(1),
        up.addr
    );
    let server = start(&config);
    let mut c = Client::connect(server.addr("in").unwrap());
    let r = c.get("/v2", "");
    assert_weft_error(&r, 404, "no-route", "no route");
    assert_eq!(r.header("connection"), None, "a 404 needs no close");
    c.send(b"GET /v1/x HTTP/1.1\r\nHost: API.example.com:8080\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 200);
    // A fully qualified name (trailing dot) is the same host.
    c.send(b"GET /v1/x HTTP/1.1\r\nHost: api.example.com.\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 200);
    // The client asked to close: weft's own answer closes too.
    c.send(b"GET /v2 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_weft_error(&r, 404, "no-route", "no route");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.is_closed(),
        "connection left open after a 404 to `Connection: close`"
    );
    // And so does an HTTP/1.0 client without keep-alive.
    let mut c = Client::connect(server.addr("in").unwrap());
    c.send(b"GET /v2 HTTP/1.0\r\nHost: api.example.com\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 404);
    assert!(
        c.is_closed(),
        "connection left open after a 404 to an HTTP/1.0 client"
    );
}

/// A refused request with a large body behind it: the client must still
/// read the 400 (closing with unread data would reset the connection first).
fn refusal_survives_a_large_unread_body() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    let mut w = c.stream().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        let _ = std::io::Write::write_all(&mut w, head);
        let junk = vec![b'x'; 64 * 1024];
        for _ in 0..8 {
            if std::io::Write::write_all(&mut w, &junk).is_err() {
                break;
            }
        }
    });
    let r = c.response(false).expect("the 400 must arrive");
    assert_weft_error(&r, 400, "bad-content-length", "Content-Length");
    assert_eq!(r.header("connection"), Some("close"));
    writer.join().unwrap();
    assert_eq!(up.count(), 0);
}

on_both_drivers!(
    refusal_survives_a_large_unread_body,
    each_framing_rule_is_enforced,
    smuggling_attempt_never_becomes_two_requests,
    limits_give_414_and_431,
    slow_client_gets_408_and_is_closed,
    a_byte_at_a_time_still_works,
    no_route_is_404_and_the_connection_survives,
);
