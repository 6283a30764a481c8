//! HTTP/2 clients on real sockets: prior knowledge on the same listener as
//! HTTP/1.1, streams forwarded to HTTP/1.1 upstreams and their answers
//! translated back, bodies both ways, weft's own answers, resets, and the
//! connection's idle close.

use bytes::Bytes;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_tests::h2c::{H2Response, H2Upstream, H2};
use weft_tests::*;

fn get(c: &mut H2, addr: std::net::SocketAddr, path: &str, fields: &[(&str, &str)]) -> H2Response {
    c.request(H2::head(addr, "GET", path, fields), b"")
        .expect("a response")
}

fn a_get_reaches_an_http1_upstream_translated_and_comes_back() {
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = H2::connect(addr);
    let r = get(
        &mut c,
        addr,
        "/x/../p?q=1",
        &[("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello from a");
    assert_eq!(r.header("x-upstream"), Some("a"));
    assert_eq!(r.header("content-length"), Some("12"));
    let seen = up.request(0).head;
    assert!(seen.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{seen}");
    let lower = seen.to_ascii_lowercase();
    assert!(lower.contains(&format!("host: {addr}\r\n")), "{seen}");
    assert!(lower.contains("cookie: a=1; b=2\r\n"), "crumbs joined: {seen}");
    assert!(lower.contains("x-forwarded-proto: http\r\n"), "{seen}");
    assert!(!lower.contains("\r\nte:"), "te is not for HTTP/1: {seen}");
    // HTTP/1.1 still works on the same listener.
    assert_eq!(get_h1(addr).status, 200);
    assert_eq!(weft.failures(), 0);
}

fn get_h1(addr: std::net::SocketAddr) -> Response {
    weft_tests::get(addr, "/")
}

fn many_streams_on_one_connection_each_get_their_own_answer() {
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = H2::connect(addr);
    let sizes: Vec<usize> = (0..40).map(|i| 1000 + i * 3001).collect();
    let mut pending = Vec::new();
    for n in &sizes {
        let len = n.to_string();
        let req = H2::head(addr, "GET", "/", &[("x-response-bytes", &len)]);
        let (res, _) = c.start(req, true).expect("stream opened");
        pending.push(res);
    }
    for (r, n) in c.finish_all(pending).into_iter().zip(&sizes) {
        let r = r.expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), *n);
        assert_eq!(sha256(&r.body), sha256(&pattern(*n, *n as u64)));
    }
    assert_eq!(up.count(), sizes.len());
    assert_eq!(weft.failures(), 0);
}

fn request_bodies_go_up_with_their_length_or_chunked() {
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = H2::connect(addr);
    let body = pattern(300_000, 7);
    // With a length: it goes up with it.
    let len = body.len().to_string();
    let r = c
        .request(H2::head(addr, "POST", "/", &[("content-length", &len)]), &body)
        .expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), sha256(&body));
    let seen = up.request(0);
    assert!(!seen.chunked);
    assert!(seen
        .head
        .to_ascii_lowercase()
        .contains(&format!("content-length: {len}\r\n")));
    assert_eq!(seen.body, body);
    // Without one, in pieces, then trailers: chunked, trailers in the last chunk.
    let (res, mut send) = c
        .start(H2::head(addr, "POST", "/", &[]), false)
        .expect("stream opened");
    for part in body.chunks(70_000) {
        send.send_data(Bytes::copy_from_slice(part), false).expect("data");
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", http::HeaderValue::from_static("abc"));
    send.send_trailers(trailers).expect("trailers");
    let r = c.finish(res).expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), sha256(&body));
    let seen = up.request(1);
    assert!(seen.chunked, "{}", seen.head);
    assert_eq!(seen.body, body);
    assert_eq!(weft.failures(), 0);
}

fn a_chunked_response_arrives_as_data_and_a_large_one_within_the_window() {
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    // A client with a small window: weft sends as the window allows.
    let mut b = h2::client::Builder::new();
    b.initial_window_size(16 * 1024);
    let mut c = H2::connect_with(addr, &b);
    let n = 2_000_000usize;
    let len = n.to_string();
    let r = get(
        &mut c,
        addr,
        "/",
        &[("x-response-bytes", &len), ("x-chunked", "10000")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    let trailers = r.trailers.as_ref().expect("the chunked body's trailers");
    assert_eq!(trailers.get("x-trailer").map(|v| v.as_bytes()), Some(&b"t"[..]));
    assert_eq!(r.body.len(), n);
    assert_eq!(sha256(&r.body), sha256(&pattern(n, n as u64)));
    assert_eq!(weft.failures(), 0);
}

fn weft_s_own_answers_go_out_as_http2_responses() {
    let config = format!(
        "{}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nmatch = {{ path_prefix = \"/dead\" }}\ncluster = \"dead\"\n\n[[cluster]]\nname = \"dead\"\nendpoints = [\"{}\"]\n",
        runtime_section(1),
        dead_addr()
    );
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener");
    let mut c = H2::connect(addr);
    let r = get(&mut c, addr, "/nowhere", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("weft-error"), Some("no-route"));
    assert!(r.text().contains("no route"), "{}", r.text());
    let r = get(&mut c, addr, "/dead", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("weft-error"), Some("connect-refused"));
    // The connection serves on after weft's own answers.
    let r = get(&mut c, addr, "/nowhere", &[]);
    assert_eq!(r.status, 404);
    drop(weft);
}

fn a_stream_the_client_resets_drops_its_attempt_and_spares_the_others() {
    // An upstream that never answers, and notes when weft closes on it.
    let closed = Arc::new(AtomicBool::new(false));
    let seen = closed.clone();
    let up = Upstream::scripted(move |mut stream, _, received| {
        let mut buf = bytes::BytesMut::new();
        if let Some((head, _, _)) = read_request(&mut stream, &mut buf) {
            received.lock().expect("lock").push(Received::head(&head));
            let mut byte = [0u8; 1];
            if matches!(stream.read(&mut byte), Ok(0)) {
                seen.store(true, Ordering::SeqCst);
            }
        }
    });
    let other = Upstream::echo("b");
    let config = format!(
        "{}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nmatch = {{ path_prefix = \"/stuck\" }}\ncluster = \"stuck\"\n\n[[route]]\ncluster = \"b\"\n\n[[cluster]]\nname = \"stuck\"\nendpoints = [\"{}\"]\n\n[[cluster]]\nname = \"b\"\nendpoints = [\"{}\"]\n",
        runtime_section(1),
        up.addr,
        other.addr
    );
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener");
    let mut c = H2::connect(addr);
    let (stuck, _) = c
        .start(H2::head(addr, "GET", "/stuck", &[]), true)
        .expect("stream opened");
    assert!(eventually(Duration::from_secs(5), || up.count() == 1));
    // The client resets the stream (dropping its response future does).
    drop(stuck);
    // weft gives up on the upstream at once (the upstream's read would
    // time out only after ten seconds).
    assert!(
        eventually(Duration::from_secs(5), || closed.load(Ordering::SeqCst)),
        "the reset stream's upstream connection was kept"
    );
    // The connection serves on.
    assert_eq!(get(&mut c, addr, "/", &[]).status, 200);
    // One outcome each: the reset one says the client left.
    assert_eq!(weft.failures(), 1);
}

fn an_idle_connection_is_closed_with_goaway_at_the_idle_timeout() {
    let up = Upstream::echo("a");
    let weft = start(&simple_config(&[up.addr], "idle_timeout = \"300ms\"", ""));
    let addr = weft.addr("in").expect("listener");
    let mut c = H2::connect(addr);
    assert_eq!(get(&mut c, addr, "/", &[]).status, 200);
    assert!(c.closed(), "weft did not close the idle HTTP/2 connection");
    assert_eq!(weft.failures(), 0);
}

/// weft in front of an HTTP/2 upstream, with `extra` in its cluster.
fn h2_proxy(up: &H2Upstream, route_extra: &str) -> (Weft, std::net::SocketAddr) {
    let config = format!(
        "{}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\ncluster = \"up\"\n{route_extra}\n\n[[cluster]]\nname = \"up\"\nendpoints = [\"{}\"]\nprotocol = \"http2\"\n",
        runtime_section(1),
        up.addr
    );
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener");
    (weft, addr)
}

/// A gRPC-style unary call: HTTP/2 on both hops, the body and the
/// `grpc-status` trailers through unchanged, many calls on one upstream
/// connection.
fn a_unary_grpc_call_passes_through_http2_on_both_hops() {
    let up = H2Upstream::start();
    let (weft, addr) = h2_proxy(&up, "");
    let mut c = H2::connect(addr);
    let msg = pattern(5000, 3);
    for i in 0..5 {
        let req = H2::head(
            addr,
            "POST",
            "/pkg.Svc/Call?x=1",
            &[
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-timeout", "5S"),
            ],
        );
        let r = c.request(req, &msg).expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, msg);
        let trailers = r.trailers.expect("trailers");
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        let seen = up.request(i);
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/pkg.Svc/Call?x=1")
        );
        assert_eq!(seen.authority, addr.to_string());
        assert_eq!(
            seen.headers.get("te").map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert_eq!(
            seen.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
        assert!(seen.headers.get("x-forwarded-for").is_some());
        assert!(seen.headers.get("grpc-timeout").is_some(), "the deadline goes on");
        assert_eq!(seen.body, msg);
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one shared upstream connection"
    );
    assert_eq!(weft.failures(), 0);
}

/// A bidirectional stream: each message comes back before the next one is
/// sent (the request and the response move at the same time), and the
/// trailers end it.
fn a_bidirectional_stream_moves_both_ways_at_once() {
    let up = H2Upstream::start();
    let (weft, addr) = h2_proxy(&up, "");
    let mut c = H2::connect(addr);
    let req = H2::head(
        addr,
        "POST",
        "/stream",
        &[("content-type", "application/grpc"), ("te", "trailers")],
    );
    let (res, mut send) = c.start(req, false).expect("stream opened");
    let (mut body, head_status) = c.run(async {
        let res = res.await.expect("a response head");
        let status = res.status().as_u16();
        (res.into_body(), status)
    });
    assert_eq!(head_status, 200);
    for i in 0..5u8 {
        let msg = vec![i; 1000 + i as usize];
        send.send_data(Bytes::from(msg.clone()), false).expect("data");
        // The echo of this message arrives while the request is still open.
        let mut got = Vec::new();
        while got.len() < msg.len() {
            let d = c.run(body.data()).expect("more data").expect("data");
            let _ = body.flow_control().release_capacity(d.len());
            got.extend_from_slice(&d);
        }
        assert_eq!(got, msg);
    }
    send.send_data(Bytes::new(), true).expect("end");
    let (rest, trailers) = c.run(weft_tests::h2c::read_body(body)).expect("the end");
    assert!(rest.is_empty());
    assert_eq!(
        trailers
            .expect("trailers")
            .get("grpc-status")
            .map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(weft.failures(), 0);
}

/// An HTTP/1.1 client reaches an HTTP/2 upstream: its request goes as
/// HTTP/2 (a chunked body de-chunked into DATA, its trailers as HTTP/2
/// trailers), the answer comes back as HTTP/1.1, chunked with the trailers
/// in the last chunk.
fn an_http1_client_reaches_an_http2_upstream() {
    let up = H2Upstream::start();
    let (weft, addr) = h2_proxy(&up, "");
    let mut c = Client::connect(addr);
    let r = c.get("/a?b=c", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello from h2");
    assert_eq!(r.header("x-upstream"), Some("h2"));
    let seen = up.request(0);
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/a?b=c"));
    assert!(seen.headers.get("connection").is_none());
    // A chunked upload, and an answer with trailers (te: trailers).
    c.send(b"POST /up HTTP/1.1\r\nHost: svc\r\nTE: trailers\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 9\r\n\r\n");
    let raw = String::from_utf8_lossy(&c.read_until_close()).to_ascii_lowercase();
    assert!(raw.starts_with("http/1.1 200 "), "{raw}");
    assert!(raw.contains("transfer-encoding: chunked\r\n"), "{raw}");
    assert!(
        raw.ends_with("\r\n\r\nb\r\nhello world\r\n0\r\ngrpc-status: 0\r\n\r\n"),
        "the body chunked, the trailers in the last chunk: {raw}"
    );
    let seen = up.request(1);
    assert_eq!(seen.body, b"hello world");
    let t = seen.trailers.expect("the chunked request's trailers");
    assert_eq!(t.get("x-sum").map(|v| v.as_bytes()), Some(&b"9"[..]));
    assert_eq!(seen.authority, "svc");
    assert_eq!(weft.failures(), 0);
}

/// A stream the upstream refuses never reached it: it goes again, even
/// for a POST (its body, of known length, kept for it), when the route
/// retries `refused-stream`.
fn a_refused_stream_goes_again_for_any_method() {
    let up = H2Upstream::start();
    let (weft, addr) = h2_proxy(
        &up,
        "retry = { attempts = 2, on = [\"refused-stream\"], backoff_base = \"1ms\" }",
    );
    let mut c = H2::connect(addr);
    let r = c
        .request(
            H2::head(addr, "POST", "/refuse-once", &[("content-length", "7")]),
            b"payload",
        )
        .expect("a response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"payload");
    assert_eq!(up.count(), 2, "refused once, then served");
    assert_eq!(weft.failures(), 0);
}

/// On shutdown an HTTP/2 connection gets GOAWAY: the stream in flight
/// finishes, then the connection closes.
fn draining_sends_goaway_and_lets_the_stream_in_flight_finish() {
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = H2::connect(addr);
    let req = H2::head(
        addr,
        "GET",
        "/",
        &[("x-delay-ms", "500"), ("x-response-bytes", "100000")],
    );
    let (slow, _) = c.start(req, true).expect("stream opened");
    assert!(eventually(Duration::from_secs(5), || up.count() == 1));
    weft.shutdown_handle().fire();
    let r = c.finish(slow).expect("the stream in flight finishes");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, pattern(100_000, 100_000));
    assert!(c.closed(), "the connection did not close after the drain");
    weft.join();
}

/// The pseudo-fields of a plain GET, for the raw frame client.
const GET: [(&[u8], &[u8]); 4] = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"svc"),
];

/// A header list, name and value pairs.
type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Malformed requests (RFC 9113 §8.1.1) are never forwarded: most are
/// refused on their own stream (RST_STREAM PROTOCOL_ERROR) and the
/// connection serves on; a field the h2 crate cannot decode at all (an
/// upper-case name, CR, LF or NUL in a value) ends the connection with
/// GOAWAY PROTOCOL_ERROR, and other connections are untouched.
fn malformed_requests_are_refused_and_never_forwarded() {
    use weft_tests::h2c::{RawH2, GOAWAY, HEADERS, RST_STREAM};
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let base = GET;
    let with = |extra: &[(&'static [u8], &'static [u8])]| {
        let mut f: Vec<(&[u8], &[u8])> = base.to_vec();
        f.extend_from_slice(extra);
        f
    };
    // Refused on their stream.
    let stream_errors: Vec<(&str, Fields)> = vec![
        (
            "a connection-specific field",
            with(&[(b"connection", b"keep-alive")]),
        ),
        ("transfer-encoding", with(&[(b"transfer-encoding", b"chunked")])),
        ("upgrade", with(&[(b"upgrade", b"websocket")])),
        ("te other than trailers", with(&[(b"te", b"gzip")])),
        (
            "no :path",
            base.iter().copied().filter(|(n, _)| *n != b":path").collect(),
        ),
        (
            "no :method",
            base.iter().copied().filter(|(n, _)| *n != b":method").collect(),
        ),
        ("a pseudo-field after a field", {
            let mut f: Vec<(&[u8], &[u8])> = vec![(b"x-a", b"1")];
            f.extend_from_slice(&base);
            f
        }),
    ];
    let mut c = RawH2::connect(addr);
    let mut stream = 1;
    for (what, fields) in &stream_errors {
        c.headers(stream, fields, true);
        let f = c
            .until(stream, &[HEADERS, RST_STREAM])
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(
            (f.0, f.2),
            (RST_STREAM, stream),
            "{what}: {:?}",
            String::from_utf8_lossy(&f.3)
        );
        assert_eq!(f.3, 1u32.to_be_bytes(), "{what}: PROTOCOL_ERROR");
        stream += 2;
    }
    // A body longer than its content-length.
    c.headers(stream, &with(&[(b"content-length", b"3")]), false);
    c.data(stream, b"too long", true);
    let f = c.until(stream, &[HEADERS, RST_STREAM]).expect("an answer");
    assert_eq!(f.0, RST_STREAM, "content-length disagreeing with the DATA");
    stream += 2;
    // The connection still serves.
    c.headers(stream, &base, true);
    let f = c.until(stream, &[HEADERS, RST_STREAM]).expect("an answer");
    assert_eq!(f.0, HEADERS, "a good request after the bad ones");
    assert_eq!(f.3.first(), Some(&0x88), ":status 200 (indexed)");
    // Undecodable fields end their connection only.
    let connection_errors: Vec<(&str, Fields)> = vec![
        ("an upper-case name", with(&[(b"X-Upper", b"1")])),
        ("a line feed in a value", with(&[(b"x-a", b"1\r\nx-b: 2")])),
        ("a NUL in a value", with(&[(b"x-a", b"1\x002")])),
    ];
    for (what, fields) in &connection_errors {
        let mut bad = RawH2::connect(addr);
        bad.headers(1, fields, true);
        let f = bad
            .until(1, &[HEADERS, RST_STREAM])
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert!(f.0 == GOAWAY || f.0 == RST_STREAM, "{what}: frame type {}", f.0);
        if f.0 == GOAWAY {
            assert_eq!(&f.3[4..8], &1u32.to_be_bytes(), "{what}: PROTOCOL_ERROR");
            assert!(bad.closed(), "{what}: the connection stays open");
        }
    }
    stream += 2;
    c.headers(stream, &base, true);
    let f = c.until(stream, &[HEADERS, RST_STREAM]).expect("an answer");
    assert_eq!(f.0, HEADERS, "the other connection serves on");
    assert_eq!(up.count(), 2, "only the good requests reached the upstream");
    drop(weft);
}

/// Rapid reset (CVE-2023-44487): thousands of streams opened and reset
/// at once. weft ends the offender's connection (GOAWAY) before the
/// upstream sees more than a bounded share of them, and serves everyone
/// else meanwhile.
fn rapid_reset_ends_the_offenders_connection() {
    use weft_tests::h2c::{RawH2, GOAWAY};
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let base = GET;
    let mut bad = RawH2::connect(addr);
    let mut stream = 1u32;
    for _ in 0..5000 {
        bad.headers(stream, &base, true);
        bad.frame(weft_tests::h2c::RST_STREAM, 0, stream, &8u32.to_be_bytes());
        stream += 2;
    }
    let mut goaway = None;
    while let Some(f) = bad.read_frame() {
        if f.0 == GOAWAY {
            goaway = Some(f);
            break;
        }
    }
    let f = goaway.expect("no GOAWAY: the resets went on unbounded");
    assert_eq!(&f.3[4..8], &11u32.to_be_bytes(), "ENHANCE_YOUR_CALM");
    let mut c = H2::connect(addr);
    assert_eq!(get(&mut c, addr, "/", &[]).status, 200);
    assert!(
        up.count() < 200,
        "the upstream saw {} of the reset requests",
        up.count()
    );
    drop(weft);
}

/// A header block that never ends (CONTINUATION flood) or grows past the
/// limit ends the offender's connection; SETTINGS and PING floods from
/// clients that read nothing are bounded too; others are served meanwhile.
fn header_and_control_floods_end_only_the_offender() {
    use weft_tests::h2c::{header_block, RawH2, GOAWAY, PING};
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let base = GET;
    let mut bad = RawH2::connect(addr);
    // HEADERS without END_HEADERS, then CONTINUATION after CONTINUATION.
    bad.frame(1, 0x1, 1, &header_block(&base));
    let filler = vec![b'a'; 1000];
    for i in 0..2000u32 {
        let name = format!("x-f{i}");
        bad.frame(9, 0, 1, &header_block(&[(name.as_bytes(), &filler)]));
    }
    let mut ended = false;
    while let Some(f) = bad.read_frame() {
        if f.0 == GOAWAY {
            ended = true;
            break;
        }
    }
    assert!(ended || bad.closed(), "the header flood went on");
    // SETTINGS frames, never reading their acknowledgements.
    let mut settings = RawH2::connect(addr);
    for _ in 0..100_000u32 {
        settings.frame(weft_tests::h2c::SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]);
    }
    // PINGs, never reading the answers.
    let mut pings = RawH2::connect(addr);
    for i in 0..100_000u64 {
        pings.frame(PING, 0, 0, &i.to_be_bytes());
    }
    let mut c = H2::connect(addr);
    assert_eq!(get(&mut c, addr, "/", &[]).status, 200);
    assert_eq!(up.count(), 1);
    drop(weft);
}

/// A listener's `http2` settings are what its clients are told: at most
/// so many streams at once, and a window that bounds an upload in flight.
fn a_listener_s_http2_settings_reach_its_clients() {
    let up = Upstream::echo("a");
    let weft = start(&simple_config(
        &[up.addr],
        "http2 = { max_concurrent_streams = 3, stream_window = 65535 }",
        "",
    ));
    let addr = weft.addr("in").expect("listener");
    let mut c = H2::connect(addr);
    assert_eq!(get(&mut c, addr, "/", &[]).status, 200);
    assert_eq!(c.max_send_streams(), 3);
    // A body larger than the window still goes whole (weft gives the
    // window back as it forwards).
    let body = pattern(1_000_000, 5);
    let len = body.len().to_string();
    let r = c
        .request(H2::head(addr, "POST", "/", &[("content-length", &len)]), &body)
        .expect("a response");
    assert_eq!(sha256(&r.body), sha256(&body));
    assert_eq!(weft.failures(), 0);
}

/// An HTTP/1.1 request offering `Upgrade: h2c` (RFC 7540 §3.2, as curl
/// --http2 sends in cleartext) is served over HTTP/1.1, the offer going no
/// further.
fn an_h2c_upgrade_offer_is_served_over_http1() {
    let up = Upstream::echo("a");
    let (weft, addr) = proxy(&[up.addr]);
    let mut c = Client::connect(addr);
    let r = c.get(
        "/",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = up.request(0).head.to_ascii_lowercase();
    assert!(!seen.contains("upgrade"), "{seen}");
    assert!(!seen.contains("http2-settings"), "{seen}");
    // The connection goes on as HTTP/1.1.
    assert_eq!(c.get("/", "").status, 200);
    assert_eq!(weft.failures(), 0);
}

/// An upstream connection that got GOAWAY takes no new stream: the
/// streams it carries finish on it (a bidirectional stream goes on), new
/// requests go on a new connection, and none fails.
fn after_an_upstream_goaway_new_streams_go_on_a_new_connection() {
    let up = H2Upstream::start();
    let (weft, addr) = h2_proxy(&up, "");
    let mut c = H2::connect(addr);
    // A long stream on the first connection.
    let req = H2::head(addr, "POST", "/stream", &[("te", "trailers")]);
    let (res, mut send) = c.start(req, false).expect("stream opened");
    let body = c.run(async { res.await.expect("a response head").into_body() });
    // The upstream says GOAWAY on that connection.
    assert_eq!(get(&mut c, addr, "/goaway", &[]).status, 200);
    for _ in 0..3 {
        assert_eq!(get(&mut c, addr, "/after", &[]).status, 200);
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        2,
        "new streams on a new connection"
    );
    // The long stream still works, on the old one.
    send.send_data(Bytes::from_static(b"still here"), true)
        .expect("data");
    let (echo, trailers) = c.run(weft_tests::h2c::read_body(body)).expect("the end");
    assert_eq!(echo, b"still here");
    assert!(trailers.is_some());
    assert_eq!(weft.failures(), 0);
}

/// An upstream that allows 2 streams per connection: weft keeps to it,
/// opening another connection for the streams beyond (or queueing on one
/// being opened until a place frees), and never has a stream refused.
fn the_upstream_s_stream_limit_is_kept_with_more_connections() {
    let up = H2Upstream::start_with(Some(2));
    let (weft, addr) = h2_proxy(&up, "");
    let mut c = H2::connect(addr);
    // Make sure weft has the upstream's SETTINGS before the burst.
    assert_eq!(get(&mut c, addr, "/", &[]).status, 200);
    let mut open = Vec::new();
    for _ in 0..5 {
        let req = H2::head(addr, "POST", "/stream", &[]);
        open.push(c.start(req, false).expect("stream opened"));
    }
    // Beyond the first connection's 2, the streams go on another one
    // (or wait there for a place): the upstream, which refuses streams
    // over its limit, answers every one.
    assert!(
        eventually(Duration::from_secs(5), || up.connections.load(Ordering::SeqCst)
            >= 2),
        "5 streams at 2 per connection need more connections, got {}",
        up.connections.load(Ordering::SeqCst)
    );
    for (res, mut send) in open {
        send.send_data(Bytes::from_static(b"x"), true).expect("end");
        let r = c.finish(res).expect("a response");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"x"[..]));
    }
    assert_eq!(weft.failures(), 0);
}

/// An upstream that resets a stream fails that stream only: 502 for it,
/// the connection and the other streams go on.
fn an_upstream_stream_reset_fails_that_stream_only() {
    let up = H2Upstream::start();
    let (weft, addr) = h2_proxy(&up, "");
    let mut h1 = Client::connect(addr);
    let r = h1.get("/reset", "");
    assert_eq!((r.status, r.header("weft-error")), (502, Some("upstream-reset")));
    assert_eq!(h1.get("/fine", "").status, 200);
    let mut c = H2::connect(addr);
    assert_eq!(get(&mut c, addr, "/reset", &[]).status, 502);
    assert_eq!(get(&mut c, addr, "/fine", &[]).status, 200);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "the upstream connection survived"
    );
    assert_eq!(weft.failures(), 2);
}

/// The mesh hop with an upgrade: weft A's cluster speaks HTTP/2 to weft B,
/// but a request with `Upgrade` goes over HTTP/1.1 (never carried over
/// HTTP/2), and the tunnel after the 101 works end to end.
fn an_upgrade_to_an_http2_cluster_goes_over_http1() {
    let app = Upstream::upgrade_echo(b"");
    let (b, b_addr) = proxy(&[app.addr]);
    let a = start(&simple_config(&[b_addr], "", "protocol = \"http2\""));
    let a_addr = a.addr("in").expect("listener");
    let mut c = Client::connect(a_addr);
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let r = c.response(true).expect("a response");
    assert_eq!(r.status, 101);
    c.send(b"hello tunnel");
    assert_eq!(c.read_exact(12), b"HELLO TUNNEL");
    drop(c);
    assert_eq!(a.failures() + b.failures(), 0);
}

/// A burst of first requests to an HTTP/2 upstream shares one new
/// connection instead of opening one each.
fn a_burst_of_first_requests_shares_one_upstream_connection() {
    let up = H2Upstream::start();
    let (weft, addr) = h2_proxy(&up, "");
    let mut c = H2::connect(addr);
    let mut pending = Vec::new();
    for i in 0..30 {
        let path = format!("/burst/{i}");
        let (res, _) = c
            .start(H2::head(addr, "GET", &path, &[]), true)
            .expect("stream opened");
        pending.push(res);
    }
    for r in c.finish_all(pending) {
        assert_eq!(r.expect("a response").status, 200);
    }
    assert_eq!(up.count(), 30);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one upstream connection for the burst"
    );
    assert_eq!(weft.failures(), 0);
}

on_both_drivers!(
    a_burst_of_first_requests_shares_one_upstream_connection,
    an_upgrade_to_an_http2_cluster_goes_over_http1,
    the_upstream_s_stream_limit_is_kept_with_more_connections,
    an_upstream_stream_reset_fails_that_stream_only,
    after_an_upstream_goaway_new_streams_go_on_a_new_connection,
    an_h2c_upgrade_offer_is_served_over_http1,
    a_listener_s_http2_settings_reach_its_clients,
    rapid_reset_ends_the_offenders_connection,
    header_and_control_floods_end_only_the_offender,
    malformed_requests_are_refused_and_never_forwarded,
    draining_sends_goaway_and_lets_the_stream_in_flight_finish,
    a_unary_grpc_call_passes_through_http2_on_both_hops,
    a_bidirectional_stream_moves_both_ways_at_once,
    an_http1_client_reaches_an_http2_upstream,
    a_refused_stream_goes_again_for_any_method,
    a_get_reaches_an_http1_upstream_translated_and_comes_back,
    many_streams_on_one_connection_each_get_their_own_answer,
    request_bodies_go_up_with_their_length_or_chunked,
    a_chunked_response_arrives_as_data_and_a_large_one_within_the_window,
    weft_s_own_answers_go_out_as_http2_responses,
    a_stream_the_client_resets_drops_its_attempt_and_spares_the_others,
    an_idle_connection_is_closed_with_goaway_at_the_idle_timeout,
);
