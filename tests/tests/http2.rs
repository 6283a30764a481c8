//! HTTP/2 clients on real sockets: prior knowledge on the same listener as
//! HTTP/1.1, streams forwarded to HTTP/1.1 upstreams and their answers
//! translated back, bodies both ways, weft's own answers, resets, and the
//! connection's idle close.

use bytes::Bytes;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_tests::h2c::{H2Response, H2};
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

on_both_drivers!(
    a_get_reaches_an_http1_upstream_translated_and_comes_back,
    many_streams_on_one_connection_each_get_their_own_answer,
    request_bodies_go_up_with_their_length_or_chunked,
    a_chunked_response_arrives_as_data_and_a_large_one_within_the_window,
    weft_s_own_answers_go_out_as_http2_responses,
    a_stream_the_client_resets_drops_its_attempt_and_spares_the_others,
    an_idle_connection_is_closed_with_goaway_at_the_idle_timeout,
);
