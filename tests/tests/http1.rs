//! HTTP/1.1 proxying through the real runtime on loopback sockets.

use std::time::Duration;
use weft_tests::*;

fn forwards_a_get_and_keeps_both_sides_alive() {
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    for _ in 0..5 {
        let r = c.get("/hello?x=1", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello from a");
        assert_eq!(r.header("x-upstream"), Some("a"));
    }
    assert_eq!(up.count(), 5);
    // One client connection, one upstream connection: both were reused.
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(up.request(0).head.starts_with("GET /hello?x=1 HTTP/1.1\r\n"));
    // Sequential requests on new client connections also reuse the pooled upstream connection.
    for _ in 0..3 {
        assert_eq!(get(addr, "/").status, 200);
    }
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(weft.failures(), 0, "a successful exchange recorded as a failure");
}

fn removes_hop_by_hop_headers_and_sets_forwarding_headers() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    let r = c.get(
        "/",
        "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\nX-End: 1\r\n",
    );
    assert_eq!(r.status, 200);
    let head = up.request(0).head.to_ascii_lowercase();
    for gone in [
        "connection:",
        "x-hop:",
        "keep-alive:",
        "\r\nte:",
        "proxy-connection:",
        "trailer:",
        "upgrade:",
    ] {
        assert!(!head.contains(gone), "{gone} was forwarded:\n{head}");
    }
    assert!(head.contains("\r\nhost: a\r\n"), "{head}");
    assert!(
        head.contains("x-forwarded-for: 192.0.2.1, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("x-forwarded-proto: http\r\n") && !head.contains("https"),
        "{head}"
    );
    assert!(head.contains("x-end: 1\r\n"), "{head}");
}

fn response_hop_by_hop_headers_are_removed() {
    let up = Upstream::scripted(|mut s, _, _| {
        let mut buf = bytes::BytesMut::new();
        while read_request(&mut s, &mut buf).is_some() {
            use std::io::Write;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let r = get(addr, "/");
    assert_eq!(r.text(), "ok");
    assert!(
        r.header("x-private").is_none() && r.header("keep-alive").is_none(),
        "{:?}",
        r.headers
    );
}

fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    let mut batch = String::new();
    for i in 0..10 {
        let body = format!("request-{i}");
        batch.push_str(&format!(
            "POST /{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    c.send(batch.as_bytes());
    for i in 0..10 {
        let r = c.response(false).expect("response");
        assert_eq!(r.text(), format!("request-{i}"));
    }
    assert_eq!(up.count(), 10);
}

fn head_204_304_have_no_body() {
    // An upstream that sends body bytes after every head, even where the
    // response has no body (HEAD, 204, 304): weft must send none of them.
    let up = Upstream::scripted(|mut s, _, _| {
        use std::io::Write;
        let mut buf = bytes::BytesMut::new();
        while let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            let status = match head.path() {
                "/204" => "204 No Content",
                "/304" => "304 Not Modified",
                _ => "200 OK",
            };
            let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 12\r\n\r\nSTRAY-BYTES!");
            if s.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response(true).unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("12")));
    for status in [204, 304] {
        let r = c.get(&format!("/{status}"), "");
        assert_eq!(r.status, status);
    }
    // Each head was followed directly by the next status line (the client
    // reads strictly), and a GET still gets its whole body.
    let r = c.get("/", "");
    assert_eq!((r.status, r.text().as_str()), (200, "STRAY-BYTES!"));
}

fn chunked_bodies_stream_both_ways() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nx-chunked: 3\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let r = c.response(false).unwrap();
    assert!(r.chunked);
    assert_eq!(r.text(), "hello world");
    let got = up.request(0);
    assert!(got.chunked && got.body == b"hello world");
    assert!(got
        .head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
}

fn close_delimited_response_closes_the_client_connection() {
    let up = Upstream::scripted(|mut s, _, _| {
        let mut buf = bytes::BytesMut::new();
        if read_request(&mut s, &mut buf).is_some() {
            use std::io::Write;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
        }
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), "until the end");
}

fn expect_100_continue() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.response(false).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"body");
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "body"));
    assert!(!up.request(0).head.to_ascii_lowercase().contains("expect"));
}

fn http10_client() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!(r.text(), "hello from a");
    assert!(c.is_closed());
    // The upstream still got a Host header (the endpoint's address).
    assert!(up.request(0).head.contains(&format!("host: {}\r\n", up.addr)));
    // HTTP/1.0 with keep-alive, and a chunked upstream answer de-chunked.
    let mut c = Client::connect(addr);
    for _ in 0..2 {
        c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c
            .response(false)
            .expect("an answer on the kept-alive HTTP/1.0 connection");
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.text(), "hello from a");
    }
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.0\r\nx-chunked: 4\r\nx-response-bytes: 10\r\n\r\n");
    let r = c.response(false).unwrap();
    assert!(!r.chunked);
    assert_eq!(r.body, pattern(10, 10));
}

fn websocket_upgrade_is_tunneled_after_101() {
    let up = Upstream::upgrade_echo(b"server-first");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let r = c.response(true).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(c.read_exact(12), b"server-first");
    c.send(b"not http at all\r\n\r\n");
    assert_eq!(c.read_exact(19), b"NOT HTTP AT ALL\r\n\r\n");
}

fn upgrade_refused_by_upstream_stays_http() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    // The second request would be smuggled if weft switched to a tunnel early.
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.response(false).unwrap().status, 200);
    assert_eq!(c.response(false).unwrap().status, 200);
    assert_eq!(up.count(), 2);
    assert!(up.request(1).head.starts_with("GET /second "));
    assert!(!up.request(1).head.to_ascii_lowercase().contains("upgrade"));
    assert!(up
        .request(0)
        .head
        .to_ascii_lowercase()
        .contains("upgrade: websocket"));
}

fn early_hints_103_is_forwarded_to_http11_clients_only() {
    let up = Upstream::scripted(|mut s, _, _| {
        use std::io::Write;
        let mut buf = bytes::BytesMut::new();
        while read_request(&mut s, &mut buf).is_some() {
            let reply = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if s.write_all(reply).is_err() {
                return;
            }
        }
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let hints = c.response(false).unwrap();
    assert_eq!(hints.status, 103);
    assert_eq!(hints.header("link"), Some("</style.css>; rel=preload"));
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // HTTP/1.0 has no interim responses: the client gets the 200 only.
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.response(false).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
}

fn switching_protocols_without_upgrade_is_502() {
    let up = Upstream::scripted(|mut s, _, _| {
        use std::io::Write;
        let mut buf = bytes::BytesMut::new();
        if read_request(&mut s, &mut buf).is_some() {
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw bytes of another protocol");
        }
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    // A plain GET, no Upgrade: a 101 to it is a broken upstream.
    let r = c.get("/", "");
    assert_weft_error(&r, 502, "upstream-malformed-response", "malformed response");
    assert!(c.is_closed(), "connection left open after the 502");
}

fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "idle_timeout = \"200ms\"", ""));
    let mut c = Client::connect(server.addr("in").unwrap());
    assert_eq!(c.get("/", "").status, 200);
    let t = std::time::Instant::now();
    assert!(c.is_closed());
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "closed after {:?}, before the 200 ms idle timeout",
        t.elapsed()
    );
}

/// A request body that stops arriving: the listener's idle timeout bounds
/// the wait for its next piece; the client gets 408 and a closed connection,
/// and the upstream connection carrying the partial request is closed.
fn stalled_request_body_gets_408_after_idle_timeout() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "idle_timeout = \"300ms\"", ""));
    let mut c = Client::connect(server.addr("in").unwrap());
    let t = std::time::Instant::now();
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello");
    // ... and never the other five bytes.
    let r = c.response(false).expect("an answer to the stalled request");
    let waited = t.elapsed();
    assert_weft_error(&r, 408, "body-timeout", "stalled");
    assert!(c.is_closed(), "connection left open after the 408");
    assert!(waited >= Duration::from_millis(250), "408 after only {waited:?}");
    assert!(
        eventually(Duration::from_secs(5), || up.closed() == 1),
        "the upstream connection with the partial request was not closed"
    );
    assert_eq!(up.count(), 0, "a partial request reached the upstream whole");
}

/// Full duplex over real sockets: an upstream that echoes a chunked upload
/// as it reads it. The echo of the first piece reaches the client before
/// the client sends the rest, so both bodies are moving at once.
fn a_streamed_echo_moves_both_bodies_at_once() {
    use std::io::Write;
    let up = Upstream::scripted(|mut s, _, _| {
        let mut seen = Vec::new();
        let mut b = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match std::io::Read::read(&mut s, &mut b) {
                Ok(n) if n > 0 => seen.extend_from_slice(&b[..n]),
                _ => return,
            }
        }
        let at = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = seen.split_off(at);
        if s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .is_err()
        {
            return;
        }
        // Echo the chunked upload as it comes, upper-cased, chunk framing
        // and all: a valid chunked response.
        loop {
            if !body.is_empty() && s.write_all(&body.to_ascii_uppercase()).is_err() {
                return;
            }
            if body.ends_with(b"0\r\n\r\n") {
                return;
            }
            body.clear();
            match std::io::Read::read(&mut s, &mut b) {
                Ok(n) if n > 0 => body.extend_from_slice(&b[..n]),
                _ => return,
            }
        }
    });
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n");
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(7).any(|w| w == b"FIRST\r\n") {
        let n = std::io::Read::read(c.stream(), &mut b)
            .expect("the echo of the first piece, before the rest is sent");
        assert!(
            n > 0,
            "weft closed before echoing: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&b[..n]);
    }
    c.send(b"6\r\nsecond\r\n0\r\n\r\n");
    got.extend(c.read_until_close());
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n5\r\nFIRST\r\n6\r\nSECOND\r\n0\r\n\r\n"),
        "{text}"
    );
    assert_eq!(weft.failures(), 0);
}

/// A client that pauses past weft's hot window (a posted read, cancelled
/// after 1 s without losing a byte) is read through a readiness wait: its
/// next requests on the same connection are whole, also when one arrives
/// while the cancelled read is still being reaped.
fn a_client_that_pauses_between_requests_keeps_its_connection() {
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/one", "").status, 200);
    // The scenario: a client idle for longer than the hot window.
    std::thread::sleep(Duration::from_millis(1_200));
    let r = c.get("/two", "");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from a"));
    // And right at the window's end, many times: a request racing the cancel.
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(995 + i));
        assert_eq!(c.get("/race", "").status, 200);
    }
    assert_eq!(up.count(), 7);
    assert_eq!(weft.failures(), 0);
}

on_both_drivers!(
    forwards_a_get_and_keeps_both_sides_alive,
    removes_hop_by_hop_headers_and_sets_forwarding_headers,
    response_hop_by_hop_headers_are_removed,
    pipelined_requests_are_answered_in_order,
    head_204_304_have_no_body,
    chunked_bodies_stream_both_ways,
    close_delimited_response_closes_the_client_connection,
    expect_100_continue,
    http10_client,
    websocket_upgrade_is_tunneled_after_101,
    upgrade_refused_by_upstream_stays_http,
    early_hints_103_is_forwarded_to_http11_clients_only,
    switching_protocols_without_upgrade_is_502,
    idle_keep_alive_connection_is_closed_after_idle_timeout,
    stalled_request_body_gets_408_after_idle_timeout,
    a_streamed_echo_moves_both_bodies_at_once,
    a_client_that_pauses_between_requests_keeps_its_connection,
);
