//! Real upstream faults: refused, reset, malformed, closed early, stalled
//! connects, and stale pooled connections.

use std::io::Write;
use std::time::Duration;
use weft_tests::*;

fn one_shot(reply: &'static [u8]) -> Upstream {
    Upstream::scripted(move |mut s, _, _| {
        let mut buf = bytes::BytesMut::new();
        if read_request(&mut s, &mut buf).is_some() {
            let _ = s.write_all(reply);
        }
    })
}

fn refused_connection_is_503() {
    let (_weft, addr) = proxy(&[dead_addr()]);
    let r = get(addr, "/");
    assert_weft_error(&r, 503, "connect-refused", "refused");
}

fn reset_before_head_is_502() {
    let up = Upstream::scripted(|mut s, _, _| {
        let mut buf = bytes::BytesMut::new();
        if read_request(&mut s, &mut buf).is_some() {
            // RST instead of FIN.
            let sock = socket2::SockRef::from(&s);
            let _ = sock.set_linger(Some(Duration::ZERO));
        }
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let r = get(addr, "/");
    assert_weft_error(&r, 502, "upstream-reset", "closed the connection");
}

fn malformed_response_head_is_502() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
    ] {
        let up = one_shot(reply);
        let (_weft, addr) = proxy(&[up.addr]);
        let r = get(addr, "/");
        assert_weft_error(&r, 502, "upstream-malformed-response", "malformed response");
    }
}

/// Sends a GET and returns every byte received until weft closes; fails
/// if weft leaves the connection open.
fn get_until_close(addr: std::net::SocketAddr) -> String {
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    String::from_utf8_lossy(&c.read_until_close()).to_string()
}

fn closed_before_any_byte_is_502() {
    let up = Upstream::scripted(|mut s, _, _| {
        let mut buf = bytes::BytesMut::new();
        let _ = read_request(&mut s, &mut buf);
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let r = get(addr, "/");
    assert_weft_error(&r, 502, "upstream-reset", "closed the connection");
}

fn body_cut_short_closes_the_client_connection() {
    let up = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it");
    let (_weft, addr) = proxy(&[up.addr]);
    // The head arrives, then the connection closes before 100 bytes: the
    // client sees an incomplete body, never a whole one.
    let text = get_until_close(addr);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("only part of it"), "{text}");
}

fn chunked_body_cut_short_closes_the_client_connection() {
    let up = one_shot(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    let (_weft, addr) = proxy(&[up.addr]);
    let text = get_until_close(addr);
    assert!(text.ends_with("5\r\nhello\r\n"), "{text}");
    assert!(
        !text.contains("0\r\n\r\n"),
        "a truncated body looked complete: {text}"
    );
}

fn connect_timeout_is_504() {
    // A listener whose accept queue is full: the kernel drops further SYNs,
    // so connecting hangs until weft's connect timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    // 100 ms, far from the 1 s default: the elapsed time tells which applied.
    let server = start(&simple_config(&[addr], "", "connect_timeout = \"100ms\""));
    let started = std::time::Instant::now();
    let r = get(server.addr("in").unwrap(), "/");
    let elapsed = started.elapsed();
    assert_eq!((r.status, r.header("weft-error")), (504, Some("connect-timeout")));
    assert!(r.text().contains("timed out"), "{}", r.text());
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(800),
        "504 after {elapsed:?}: the configured 100 ms connect timeout did not apply"
    );
    drop(sock);
}

fn stale_pooled_connection_is_retried_for_bodyless_requests() {
    // The upstream answers one request per connection, keeping the
    // connection open without saying so, then closes it shortly after.
    let up = Upstream::scripted(|mut s, _, received| {
        let mut buf = bytes::BytesMut::new();
        if let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            received.lock().unwrap().push(Received::head(&head));
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    for _ in 0..5 {
        // Each pooled connection is dead by the next request: weft must
        // notice and resend on a fresh one, never answer 502.
        assert_eq!(c.get("/", "").status, 200);
    }
    assert_eq!(up.count(), 5);
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 5);
}

fn stale_pooled_connection_is_not_retried_for_a_post() {
    // One request per connection, then the upstream closes without saying so.
    let up = Upstream::scripted(|mut s, _, _| {
        let mut buf = bytes::BytesMut::new();
        if read_request(&mut s, &mut buf).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    let post = b"POST /pay HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
    c.send(post);
    assert_eq!(c.response(false).unwrap().status, 200);
    // The pooled connection is dead: a POST may have been processed, so weft
    // answers 502 rather than send it twice.
    let mut c = Client::connect(addr);
    c.send(post);
    let r = c.response(false).unwrap();
    assert_weft_error(&r, 502, "upstream-reset", "closed the connection");
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// An upstream that answers `/fast` at once and never answers anything
/// else: it reads on until weft closes the connection.
fn hanging() -> Upstream {
    Upstream::scripted(|mut s, _, received| {
        let mut buf = bytes::BytesMut::new();
        while let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            received.lock().unwrap().push(Received::head(&head));
            if head.path() != "/fast" {
                // Hang: wait for weft to close (or the read timeout).
                let mut b = [0u8; 64];
                while matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0) {}
                return;
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast")
                .is_err()
            {
                return;
            }
        }
    })
}

/// A client that gives up while weft waits for the upstream's answer: weft
/// notices, abandons the attempt and closes the upstream connection, instead
/// of holding both sockets for good.
fn client_that_leaves_releases_the_upstream_connection() {
    let up = hanging();
    let (weft, addr) = proxy(&[up.addr]);
    for _ in 0..3 {
        let n = up.count();
        let mut c = Client::connect(addr);
        c.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            eventually(Duration::from_secs(5), || up.count() > n),
            "the request never arrived"
        );
        drop(c);
    }
    assert!(
        eventually(Duration::from_secs(5), || up.closed() == 3),
        "{} of 3 upstream connections released after their clients left",
        up.closed()
    );
    assert_eq!(
        weft.failures(),
        3,
        "each abandoned request is a failure (client-closed)"
    );
}

/// Pipelined requests are not mistaken for a client that left, also when
/// the upstream takes its time.
fn pipelined_requests_wait_for_a_slow_upstream() {
    let up = Upstream::echo("a");
    let (_weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    // Once weft waits on the upstream for the first request, the second
    // arrives: bytes from the client, not its end.
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\nx-delay-ms: 300\r\n\r\n");
    assert!(eventually(Duration::from_secs(5), || up.count() == 1));
    // Not a readiness wait: time for weft's 20 ms grace to pass, after which
    // it watches the client while the upstream takes its time.
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    for _ in 0..2 {
        assert_eq!(c.response(false).expect("both answers").text(), "hello from a");
    }
    assert_eq!(up.count(), 2);
}

/// The route's `timeout` bounds the wait for the upstream's answer: 504
/// `upstream-timeout`, the upstream connection dropped, the client's kept.
fn route_timeout_is_504() {
    let up = hanging();
    let config = simple_config(&[up.addr], "", "").replace(
        "cluster = \"up\"\n\n[[cluster]]",
        "cluster = \"up\"\ntimeout = \"300ms\"\n\n[[cluster]]",
    );
    assert!(config.contains("timeout = \"300ms\""), "{config}");
    let server = start(&config);
    let mut c = Client::connect(server.addr("in").unwrap());
    let t = std::time::Instant::now();
    let r = c.get("/hang", "");
    let waited = t.elapsed();
    assert_weft_error(&r, 504, "upstream-timeout", "route's timeout");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "504 after {waited:?} with a 300 ms route timeout"
    );
    assert!(
        eventually(Duration::from_secs(5), || up.closed() == 1),
        "the timed-out upstream connection was not closed"
    );
    assert_eq!(
        c.get("/fast", "").text(),
        "fast",
        "the client connection was not kept"
    );
}

/// An upstream that goes silent in the middle of a body: the cluster's
/// `read_timeout` cuts the client connection (its head was sent), and the
/// upstream connection is closed.
fn silent_upstream_mid_body_cuts_the_client() {
    let up = Upstream::scripted(|mut s, _, _| {
        let mut buf = bytes::BytesMut::new();
        if read_request(&mut s, &mut buf).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes.");
            // Silent, until weft closes.
            let mut b = [0u8; 64];
            while matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0) {}
        }
    });
    let server = start(&simple_config(&[up.addr], "", "read_timeout = \"300ms\""));
    let mut c = Client::connect(server.addr("in").unwrap());
    let t = std::time::Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let got = String::from_utf8_lossy(&c.read_until_close()).to_string();
    let waited = t.elapsed();
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("ten bytes."),
        "{got}"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "cut after {waited:?}, before the 300 ms read timeout"
    );
    assert!(
        eventually(Duration::from_secs(5), || up.closed() == 1),
        "the silent upstream connection was not closed"
    );
    assert_eq!(
        server.failures(),
        1,
        "a body cut short is a failure, though its 200 went out"
    );
}

/// A client that reads nothing of a large response: the listener's
/// `write_timeout` closes it and releases the upstream connection, instead
/// of holding both for good.
fn client_that_never_reads_is_closed_after_write_timeout() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "write_timeout = \"300ms\"", ""));
    let mut c = Client::connect(server.addr("in").unwrap());
    // 64 MiB: far more than the loopback socket buffers hold.
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nx-response-bytes: 67108864\r\n\r\n");
    assert!(
        eventually(Duration::from_secs(10), || up.closed() == 1),
        "the upstream connection is still held for a client that reads nothing"
    );
    drop(c);
}

/// An upstream that answers before the upload ends, and stops reading:
/// its answer reaches the client (full duplex), the upload stops, and the
/// client connection closes after the answer.
fn early_answer_during_an_upload_reaches_the_client() {
    // Holds the upstream's socket open (and unread) until the test is done.
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let wait_done = std::sync::Mutex::new(wait_done);
    let up = Upstream::scripted(move |mut s, _, _| {
        // Read the head only, answer, and read nothing more until weft closes.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if !matches!(std::io::Read::read(&mut s, &mut b), Ok(1)) {
                return;
            }
            head.push(b[0]);
        }
        let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big\n");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = wait_done.lock().unwrap().recv_timeout(IO_TIMEOUT);
    });
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 67108864\r\n\r\n");
    // 64 MiB that nobody reads to the end: written from another thread
    // until weft closes the connection.
    let mut writer = c.stream().try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let r = c.response(false).expect("the upstream's early answer");
    assert_eq!((r.status, r.text().as_str()), (413, "too big\n"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.is_closed(),
        "the connection stayed open after an answer that cut the upload short"
    );
    drop(c);
    feeder.join().unwrap();
    assert_eq!(
        weft.failures(),
        0,
        "the 413 was forwarded: not a failure of weft's"
    );
    drop(done);
}

on_both_drivers!(
    early_answer_during_an_upload_reaches_the_client,
    silent_upstream_mid_body_cuts_the_client,
    client_that_never_reads_is_closed_after_write_timeout,
    client_that_leaves_releases_the_upstream_connection,
    pipelined_requests_wait_for_a_slow_upstream,
    route_timeout_is_504,
    refused_connection_is_503,
    reset_before_head_is_502,
    malformed_response_head_is_502,
    closed_before_any_byte_is_502,
    body_cut_short_closes_the_client_connection,
    chunked_body_cut_short_closes_the_client_connection,
    connect_timeout_is_504,
    stale_pooled_connection_is_retried_for_bodyless_requests,
    stale_pooled_connection_is_not_retried_for_a_post,
);
