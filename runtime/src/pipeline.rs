//! Pipeline tests: the HTTP/1 session and the forward step, run on
//! in-memory streams (`mem`), with a test playing both the client and the
//! upstream byte by byte. No sockets and no kernel: each test decides
//! every byte, pause and close, so 1xx, 100-continue, stale-pool retries,
//! early answers and every timeout are exercised deterministically and in
//! milliseconds. The loopback tests in `tests/` cover the same behaviour
//! over real sockets.

use crate::counters::WorkerCounters;
use crate::downstream::serve;
use crate::mem::{self, MemStream, Net, PIPE_BYTES};
use crate::state::Worker;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use weft_core::config::literal_only;
use weft_core::{Config, Outcome, Side};

/// The one endpoint of the test cluster.
const UP: &str = "10.0.0.1:80";
/// The client's address as the session sees it.
const PEER: &str = "10.0.0.9:5555";
/// Bound on a whole pipeline test: past it the test fails.
const TEST_BOUND: Duration = Duration::from_secs(10);

/// A configuration with one listener, one route and one cluster (`UP`);
/// the extra lines go into each section.
fn config(listener: &str, route: &str, cluster: &str) -> Config {
    configured(listener, route, cluster, &[UP])
}

/// As [`config`], with the cluster's `endpoints`.
fn configured(listener: &str, route: &str, cluster: &str, endpoints: &[&str]) -> Config {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let src = format!(
        "[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n{listener}\n\n\
         [[route]]\ncluster = \"up\"\n{route}\n\n\
         [[cluster]]\nname = \"up\"\nendpoints = [{endpoints}]\n{cluster}\n"
    );
    Config::parse(&src, &literal_only).expect("the test configuration is valid")
}

/// One worker on the in-memory network.
struct Kit {
    w: Rc<Worker>,
    net: Rc<Net>,
}

impl Kit {
    fn new(config: Config) -> Kit {
        let net = Rc::new(Net::default());
        let config = Arc::new(config);
        let health = Arc::new(crate::health::HealthTable::new(&config));
        let material = crate::state::Material {
            tls: vec![None; config.listeners.len()],
            cluster_tls: vec![None; config.clusters.len()],
            config,
            health,
            log_paths: Vec::new(),
        };
        let mut w = Worker::new(&material, 7, Arc::new(WorkerCounters::default()), 1, None);
        w.net = Some(net.clone());
        let w = Rc::new(w);
        let sweeper = w.clone();
        monoio::spawn(async move { sweeper.timers.run().await });
        Kit { w, net }
    }

    /// A client connection served by the session.
    fn client(&self) -> MemStream {
        self.client_with(PIPE_BYTES)
    }

    /// A client connection whose directions hold `cap` bytes each.
    fn client_with(&self, cap: usize) -> MemStream {
        self.client_with_caps(cap, cap)
    }

    /// A client connection whose requests' direction holds `up` bytes and
    /// whose answers' direction holds `down`.
    fn client_with_caps(&self, up: usize, down: usize) -> MemStream {
        let (near, far) = mem::pair_with(up, down);
        let peer: SocketAddr = PEER.parse().expect("address");
        monoio::spawn(serve(self.w.clone(), self.w.generation(), 0, far, peer));
        near
    }

    /// The upstream endpoint, accepting.
    fn upstream(&self) -> Rc<mem::Listener> {
        self.upstream_at(UP)
    }

    /// An endpoint at `addr`, accepting.
    fn upstream_at(&self, addr: &str) -> Rc<mem::Listener> {
        self.net.listen(addr.parse().expect("address"))
    }

    /// The outcome records, once there are `n` of them (and no more).
    async fn outcomes(&self, n: usize) -> Vec<Outcome> {
        loop {
            let got = self.w.outcomes.borrow().clone();
            assert!(got.len() <= n, "more outcomes than requests: {got:#?}");
            if got.len() == n {
                return got;
            }
            // Bounded by the test's own bound.
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Runs one pipeline test on a fresh runtime, failing it past `TEST_BOUND`.
fn pipeline<F: Future<Output = ()>>(config: Config, test: impl FnOnce(Kit) -> F) {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let kit = Kit::new(config);
        if monoio::time::timeout(TEST_BOUND, test(kit)).await.is_err() {
            panic!("the pipeline test did not finish within {TEST_BOUND:?}");
        }
    });
}

async fn send(s: &mut MemStream, text: &str) {
    let (res, _) = s.write_all(text.as_bytes().to_vec()).await;
    res.expect("the peer takes the bytes");
}

/// Reads more into `buf`; 0 at the end of stream or on an error.
async fn read_some(s: &mut MemStream, buf: &mut Vec<u8>) -> usize {
    let (res, chunk) = s.read(Vec::with_capacity(8192)).await;
    let n = res.unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// Reads one HTTP/1 message (head, then a Content-Length or chunked body;
/// none for 1xx, 204 and 304) out of `buf` and the stream; what follows
/// it stays in `buf`. Panics when the stream ends first.
async fn read_message(s: &mut MemStream, buf: &mut Vec<u8>) -> String {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = read_some(s, buf).await;
        assert!(
            n > 0,
            "the stream ended inside a head: {:?}",
            String::from_utf8_lossy(buf)
        );
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let no_body = head.starts_with("http/1.1 1") || head.contains(" 204 ") || head.contains(" 304 ");
    let end = if no_body {
        head_end
    } else if let Some(len) = header(&head, "content-length") {
        head_end + len.parse::<usize>().expect("a Content-Length")
    } else if header(&head, "transfer-encoding").is_some() {
        loop {
            if let Some(i) = find(&buf[head_end..], b"0\r\n\r\n") {
                break head_end + i + 5;
            }
            let n = read_some(s, buf).await;
            assert!(n > 0, "the stream ended inside a chunked body");
        }
    } else {
        head_end
    };
    while buf.len() < end {
        let n = read_some(s, buf).await;
        assert!(
            n > 0,
            "the stream ended inside a body: {:?}",
            String::from_utf8_lossy(buf)
        );
    }
    let msg: Vec<u8> = buf.drain(..end).collect();
    String::from_utf8_lossy(&msg).into_owned()
}

/// Reads until the end of stream; what came.
async fn read_to_end(s: &mut MemStream, buf: &mut Vec<u8>) -> String {
    while read_some(s, buf).await > 0 {}
    String::from_utf8_lossy(&std::mem::take(buf)).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A header's value in a lower-cased head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        (n.trim() == name).then(|| v.trim())
    })
}

const GET: &str = "GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n";

fn ok(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

#[test]
fn interim_responses_reach_an_http11_client_before_the_final_one() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(&mut c, GET).await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        read_message(&mut u, &mut ub).await;
        send(&mut u, "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n").await;
        send(&mut u, &ok("done")).await;
        let mut cb = Vec::new();
        let first = read_message(&mut c, &mut cb).await;
        assert!(first.starts_with("HTTP/1.1 103 "), "{first}");
        assert!(first.contains("Link: </s.css>"), "{first}");
        let last = read_message(&mut c, &mut cb).await;
        assert!(
            last.starts_with("HTTP/1.1 200 ") && last.ends_with("done"),
            "{last}"
        );
        let o = &k.outcomes(1).await[0];
        assert_eq!((o.status, o.error, o.attempts), (Some(200), None, 1));
        assert!(o.upstream_at.is_some());
    });
}

#[test]
fn expect_continue_is_answered_by_weft_and_the_upstreams_own_100_is_dropped() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        let head = "PUT /f HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        send(&mut c, head).await;
        let mut cb = Vec::new();
        let cont = read_message(&mut c, &mut cb).await;
        assert_eq!(cont, "HTTP/1.1 100 Continue\r\n\r\n");
        send(&mut c, "hello").await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        let req = read_message(&mut u, &mut ub).await;
        assert!(
            req.starts_with("PUT /f HTTP/1.1\r\n") && req.ends_with("\r\n\r\nhello"),
            "{req}"
        );
        send(
            &mut u,
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        let res = read_message(&mut c, &mut cb).await;
        assert!(
            res.starts_with("HTTP/1.1 201 "),
            "a second 100 reached the client: {res}"
        );
        let o = &k.outcomes(1).await[0];
        assert_eq!((o.status, o.error), (Some(201), None));
        assert_eq!(
            o.bytes_in,
            (head.len() + 5) as u64,
            "head and body read from the client"
        );
    });
}

/// Serves one request on a fresh upstream connection and keeps it open;
/// returns the connection.
async fn answer_one(up: &mem::Listener, body: &str) -> MemStream {
    let mut u = up.accept().await;
    let mut ub = Vec::new();
    read_message(&mut u, &mut ub).await;
    send(&mut u, &ok(body)).await;
    u
}

#[test]
fn a_response_the_client_takes_in_small_pieces_arrives_whole() {
    // The head and the first body bytes go in one write (a small body
    // copied after the head, a larger one by a vectored write); a client
    // that takes 16 or 90 bytes at a time cuts it inside the head, or
    // inside the body, and the rest must follow in order.
    for (cap, len) in [(16, 200), (90, 200), (16, 3000), (90, 3000)] {
        pipeline(config("", "", ""), move |k| async move {
            let up = k.upstream();
            let mut c = k.client_with(cap);
            let mut cb = Vec::new();
            send(&mut c, GET).await;
            let body = "0123456789".repeat(len / 10);
            let _u = answer_one(&up, &body).await;
            let res = read_message(&mut c, &mut cb).await;
            assert!(
                res.starts_with("HTTP/1.1 200 OK\r\n") && res.ends_with(&body),
                "{cap}: {res}"
            );
            let o = k.outcomes(1).await;
            assert_eq!(
                (o[0].status, o[0].bytes_out),
                (Some(200), res.len() as u64),
                "{cap}"
            );
        });
    }
}

/// Allocations made on this thread (the pipeline runs on one thread).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    /// The system allocator, counting each allocation and reallocation of
    /// the calling thread.
    pub struct Counting;

    // SAFETY: every call goes to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            // SAFETY: the caller's contract, passed on.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Allocations of this thread so far.
    pub fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }
}

/// Reads into `buf` (kept, cleared by the caller) until it ends with
/// `end`; false when the stream ends first. Allocates nothing once `buf`
/// has room.
async fn read_until_end(s: &mut MemStream, buf: &mut Vec<u8>, end: &[u8]) -> bool {
    while !buf.ends_with(end) {
        let (res, b) = s.read(std::mem::take(buf)).await;
        *buf = b;
        if !matches!(res, Ok(n) if n > 0) {
            return false;
        }
    }
    true
}

#[test]
fn a_keep_alive_request_allocates_nothing() {
    // The HTTP/1 keep-alive path's allocations per proxied request, counted
    // (the client and the upstream here allocate nothing per request):
    // none. Heads take their field vectors from those of finished heads,
    // and upstream answers are read into buffers of finished exchanges.
    const MOST: u64 = 0;
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        monoio::spawn(async move { answer_ok(up.accept().await).await });
        let mut c = k.client();
        let mut buf = Vec::with_capacity(8192);
        let mut round = async |n: usize| {
            for _ in 0..n {
                let (res, _) = c.write_all(&b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"[..]).await;
                res.expect("weft takes the request");
                assert!(
                    read_until_end(&mut c, &mut buf, b"\r\n\r\nok").await,
                    "a whole answer"
                );
                buf.clear();
            }
        };
        // Warm: the pooled connection, buffers and outcome records settle.
        round(50).await;
        let before = counting::allocations();
        round(200).await;
        let per_request = (counting::allocations() - before) as f64 / 200.0;
        // Half an allocation of slack: a buffer grows now and then.
        assert!(
            per_request < MOST as f64 + 0.5,
            "{per_request} allocations per request (at most {MOST})"
        );
    });
}

/// Answers every request on `u` with `200 ok`, allocating nothing per
/// request, until the connection ends.
async fn answer_ok(mut u: MemStream) {
    let mut buf = Vec::with_capacity(8192);
    while read_until_end(&mut u, &mut buf, b"\r\n\r\n").await {
        buf.clear();
        let (res, _) = u
            .write_all(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..])
            .await;
        if res.is_err() {
            return;
        }
    }
}

#[test]
fn a_burst_of_concurrent_requests_allocates_nothing() {
    // 64 clients with a request each in flight at once: every exchange
    // holds a field vector for each head and an upstream read buffer, and
    // the worker's spares must cover a burst of that size (they covered 16
    // read buffers before). Counted once the 64 upstream connections are
    // open and pooled.
    const CLIENTS: usize = 64;
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        monoio::spawn(async move {
            loop {
                let u = up.accept().await;
                monoio::spawn(answer_ok(u));
            }
        });
        let mut clients: Vec<MemStream> = (0..CLIENTS).map(|_| k.client()).collect();
        let mut buf = Vec::with_capacity(8192);
        let mut round = async || {
            // Every request is in before any answer is read.
            for c in clients.iter_mut() {
                let (res, _) = c.write_all(&b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"[..]).await;
                res.expect("weft takes the request");
            }
            for c in clients.iter_mut() {
                assert!(read_until_end(c, &mut buf, b"\r\n\r\nok").await, "a whole answer");
                buf.clear();
            }
        };
        for _ in 0..5 {
            round().await;
        }
        let before = counting::allocations();
        for _ in 0..10 {
            round().await;
        }
        let per_request = (counting::allocations() - before) as f64 / (10 * CLIENTS) as f64;
        assert!(
            per_request < 0.5,
            "{per_request} allocations per request (at most 0)"
        );
    });
}

/// An upstream that answers each request on its one connection with the
/// request's path as the body.
fn echo_paths(up: Rc<mem::Listener>) {
    monoio::spawn(echo(up, None));
}

/// As [`echo_paths`], except `/slow`: that one once a byte comes on `gate`
/// (never, when the gate's other end is dropped first).
fn echo_paths_gated(up: Rc<mem::Listener>, gate: MemStream) {
    monoio::spawn(echo(up, Some(gate)));
}

async fn echo(up: Rc<mem::Listener>, mut gate: Option<MemStream>) {
    let mut u = up.accept().await;
    let mut ub = Vec::new();
    loop {
        let req = read_message(&mut u, &mut ub).await;
        let path = req.split(' ').nth(1).unwrap_or("?").to_string();
        if let (Some(gate), "/slow") = (&mut gate, path.as_str()) {
            if read_some(gate, &mut Vec::new()).await == 0 {
                return;
            }
        }
        let (res, _) = u.write_all(ok(&path).into_bytes()).await;
        if res.is_err() {
            return;
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n")
}

#[test]
fn pipelined_responses_go_out_in_one_write() {
    pipeline(config("", "", ""), |k| async move {
        echo_paths(k.upstream());
        let mut c = k.client();
        let mut cb = Vec::new();
        send(
            &mut c,
            &(1..=4).map(|i| get(&format!("/{i}"))).collect::<String>(),
        )
        .await;
        for i in 1..=4 {
            let res = read_message(&mut c, &mut cb).await;
            assert!(
                res.starts_with("HTTP/1.1 200 ") && res.ends_with(&format!("/{i}")),
                "{i}: {res}"
            );
        }
        // All four answers came in one write (each its own without holding).
        assert_eq!(c.writes_received(), 1);
        let o = k.outcomes(4).await;
        assert!(
            o.iter().all(|o| o.status == Some(200) && o.error.is_none()),
            "{o:#?}"
        );
        // A request whose head is still coming: the answers before it are
        // not held while weft waits for the rest of it.
        let third = get("/7");
        let (start, rest) = third.split_at(10);
        send(&mut c, &format!("{}{}{start}", get("/5"), get("/6"))).await;
        for i in 5..=6 {
            let res = read_message(&mut c, &mut cb).await;
            assert!(res.ends_with(&format!("/{i}")), "{i}: {res}");
        }
        assert_eq!(c.writes_received(), 2);
        send(&mut c, rest).await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/7"));
        assert_eq!(c.writes_received(), 3);
        // Blank lines before the next head look like a whole head: weft
        // still writes what it held before it waits for the rest.
        send(&mut c, &format!("{}\r\n\r\n{start}", get("/8"))).await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/8"));
        send(&mut c, rest).await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/7"));
        // A bad head after a good one: the good one's answer comes first,
        // then weft's 400, and the connection closes.
        send(
            &mut c,
            &format!("{}GET /x HTTP/1.1\r\nBad Header\r\n\r\n", get("/8")),
        )
        .await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/8"));
        let rest = read_to_end(&mut c, &mut cb).await;
        assert!(rest.starts_with("HTTP/1.1 400 "), "{rest}");
    });
}

#[test]
fn held_answers_do_not_wait_for_a_slow_upstream() {
    // The answer to /1 is held while /slow's head is read; the upstream
    // answers /slow only once the client has /1's answer (past the watch's
    // grace, what is held goes out).
    pipeline(config("", "", ""), |k| async move {
        let (mut release, gate) = mem::pair(16);
        echo_paths_gated(k.upstream(), gate);
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, &format!("{}{}", get("/1"), get("/slow"))).await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/1"));
        send(&mut release, "go").await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/slow"));
    });
}

#[test]
fn held_answers_do_not_wait_for_a_connect() {
    // The upstream answers /1 and closes; /2 needs a new connection, and
    // the connect never completes: /1's answer, held, goes out first.
    pipeline(config("", "", "connect_timeout = \"1h\""), |k| async move {
        let up = k.upstream();
        let net = k.net.clone();
        monoio::spawn(async move {
            let mut u = up.accept().await;
            read_message(&mut u, &mut Vec::new()).await;
            net.blackhole(UP.parse().expect("address"));
            send(
                &mut u,
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n/1",
            )
            .await;
        });
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, &format!("{}{}", get("/1"), get("/2"))).await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/1"));
    });
}

#[test]
fn a_held_answer_cut_by_the_route_timeout_is_followed_by_nothing() {
    // /1's answer is held; /slow's upstream never answers, so it goes out
    // at the watch's grace, to a client that takes 16 bytes and then reads
    // nothing; the route's timeout cancels that write midway. The client
    // may have part of /1's answer: weft writes nothing more (no 504 after
    // it) and closes.
    let config = config("write_timeout = \"1h\"", "timeout = \"100ms\"", "");
    pipeline(config, |k| async move {
        let (_release, gate) = mem::pair(16);
        echo_paths_gated(k.upstream(), gate);
        let mut c = k.client_with_caps(PIPE_BYTES, 16);
        let mut cb = Vec::new();
        send(&mut c, &format!("{}{}", get("/1"), get("/slow"))).await;
        let o = k.outcomes(2).await;
        // The client's fault, not the endpoint's.
        assert_eq!(
            (o[1].status, o[1].error),
            (None, Some("client-write-timeout")),
            "{o:#?}"
        );
        let got = read_to_end(&mut c, &mut cb).await;
        assert!(
            ok("/1").starts_with(&got) && got.len() < ok("/1").len(),
            "{got:?}"
        );
    });
}

#[test]
fn an_interim_answer_cut_by_the_route_timeout_is_followed_by_nothing() {
    // The upstream sends 103 and nothing more; the client takes 16 bytes
    // of it and then reads nothing. The route's timeout cancels the 103's
    // write midway: no 504 may follow the part the client has.
    const EARLY: &str = "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n";
    let config = config("write_timeout = \"1h\"", "timeout = \"100ms\"", "");
    pipeline(config, |k| async move {
        let up = k.upstream();
        monoio::spawn(async move {
            let mut u = up.accept().await;
            read_message(&mut u, &mut Vec::new()).await;
            send(&mut u, EARLY).await;
            // Silent from here; the connection stays open.
            read_some(&mut u, &mut Vec::new()).await;
        });
        let mut c = k.client_with_caps(PIPE_BYTES, 16);
        let mut cb = Vec::new();
        send(&mut c, GET).await;
        let o = k.outcomes(1).await;
        assert_eq!(
            (o[0].status, o[0].error),
            (None, Some("client-write-timeout")),
            "{o:#?}"
        );
        let got = read_to_end(&mut c, &mut cb).await;
        assert!(EARLY.starts_with(&got) && got.len() < EARLY.len(), "{got:?}");
    });
}

#[test]
fn a_client_that_half_closes_after_its_batch_gets_the_answers_that_came() {
    // The client sends two requests and shuts its side down; the upstream
    // never answers the second. The first answer, held, still arrives;
    // then weft gives the second up (the client left) and closes.
    pipeline(config("", "", ""), |k| async move {
        let (_release, gate) = mem::pair(16);
        echo_paths_gated(k.upstream(), gate);
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, &format!("{}{}", get("/1"), get("/slow"))).await;
        AsyncWriteRent::shutdown(&mut c).await.expect("a shutdown");
        assert!(read_message(&mut c, &mut cb).await.ends_with("/1"));
        assert_eq!(read_to_end(&mut c, &mut cb).await, "");
        let o = k.outcomes(2).await;
        assert_eq!((o[0].status, o[1].status), (Some(200), None), "{o:#?}");
    });
}

#[test]
fn a_request_with_a_body_after_pipelined_ones_gets_the_answers_before_it_first() {
    // weft waits for the body: what was held goes out before.
    pipeline(config("", "", ""), |k| async move {
        echo_paths(k.upstream());
        let mut c = k.client();
        let mut cb = Vec::new();
        let post = "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\n";
        send(&mut c, &format!("{}{post}", get("/1"))).await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/1"));
        send(&mut c, "body").await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("/p"));
    });
}

#[test]
fn a_pooled_connection_the_upstream_closed_is_retried_on_a_new_one() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, GET).await;
        let first = answer_one(&up, "one").await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("one"));
        // The upstream closes its idle keep-alive connection: the pooled
        // connection is stale, and weft finds out only when it uses it.
        drop(first);
        send(&mut c, GET).await;
        let _second = answer_one(&up, "two").await;
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.starts_with("HTTP/1.1 200 ") && res.ends_with("two"), "{res}");
        let o = k.outcomes(2).await;
        assert_eq!((o[1].status, o[1].error, o[1].attempts), (Some(200), None, 2));
    });
}

#[test]
fn a_pooled_connection_that_closes_without_answering_is_retried_for_a_get_only() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, GET).await;
        let mut first = answer_one(&up, "one").await;
        read_message(&mut c, &mut cb).await;
        // The upstream reads the next request and closes without a byte of
        // answer (the keep-alive race): a GET goes again on a new connection.
        send(&mut c, GET).await;
        let mut ub = Vec::new();
        read_message(&mut first, &mut ub).await;
        drop(first);
        let mut second = answer_one(&up, "two").await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("two"));
        // A POST in the same race is not repeated: it may have been acted on.
        send(
            &mut c,
            "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\nx",
        )
        .await;
        read_message(&mut second, &mut ub).await;
        drop(second);
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.starts_with("HTTP/1.1 502 "), "{res}");
        assert_eq!(up.waiting(), 0, "no second attempt for the POST");
        let o = k.outcomes(3).await;
        assert_eq!((o[1].status, o[1].attempts), (Some(200), 2));
        assert_eq!(
            (o[2].status, o[2].error, o[2].attempts),
            (Some(502), Some("upstream-reset"), 1)
        );
    });
}

#[test]
fn an_answer_before_the_upload_ends_reaches_the_client_and_the_connection_closes() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(
            &mut c,
            "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100000\r\n\r\n0123456789",
        )
        .await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        while find(&ub, b"\r\n\r\n").is_none() {
            assert!(read_some(&mut u, &mut ub).await > 0);
        }
        send(
            &mut u,
            "HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
        )
        .await;
        drop(u);
        let mut cb = Vec::new();
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.starts_with("HTTP/1.1 413 ") && res.ends_with("big!"), "{res}");
        assert!(res.to_ascii_lowercase().contains("connection: close"), "{res}");
        // The rest of the upload is never read: the connection ends.
        assert_eq!(read_to_end(&mut c, &mut cb).await, "");
        let o = &k.outcomes(1).await[0];
        assert_eq!((o.status, o.error), (Some(413), None));
    });
}

#[test]
fn a_head_that_stalls_gets_408_at_the_header_timeout_and_a_close() {
    pipeline(config("header_timeout = \"50ms\"", "", ""), |k| async move {
        let mut c = k.client();
        send(&mut c, "GET / HTTP/1.1\r\nHost: a").await;
        let mut cb = Vec::new();
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.starts_with("HTTP/1.1 408 "), "{res}");
        assert!(res.contains("weft-error: header-timeout"), "{res}");
        assert_eq!(read_to_end(&mut c, &mut cb).await, "");
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.status, o.error, o.side),
            (Some(408), Some("header-timeout"), Some(Side::Downstream))
        );
    });
}

#[test]
fn an_idle_connection_closes_at_the_idle_timeout_without_an_outcome() {
    pipeline(config("idle_timeout = \"50ms\"", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(&mut c, GET).await;
        let _u = answer_one(&up, "one").await;
        let mut cb = Vec::new();
        read_message(&mut c, &mut cb).await;
        // Then nothing: the connection closes by itself.
        assert_eq!(read_to_end(&mut c, &mut cb).await, "");
        assert_eq!(k.outcomes(1).await.len(), 1, "an idle close is no request");
    });
}

#[test]
fn draining_closes_an_idle_connection_at_once() {
    pipeline(config("idle_timeout = \"1h\"", "", ""), |k| async move {
        let mut c = k.client();
        k.w.draining.set(true);
        k.w.timers.end_idle_waits();
        let mut cb = Vec::new();
        assert_eq!(read_to_end(&mut c, &mut cb).await, "");
        assert_eq!(k.outcomes(0).await.len(), 0);
    });
}

#[test]
fn an_upstream_that_never_answers_gets_504_at_the_route_timeout_and_is_not_pooled() {
    pipeline(config("", "timeout = \"50ms\"", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(&mut c, GET).await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        read_message(&mut u, &mut ub).await;
        let mut cb = Vec::new();
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.starts_with("HTTP/1.1 504 "), "{res}");
        assert!(res.contains("weft-error: upstream-timeout"), "{res}");
        // weft gave the connection up: the upstream sees it close.
        assert_eq!(read_to_end(&mut u, &mut ub).await, "");
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.status, o.error, o.side),
            (Some(504), Some("upstream-timeout"), Some(Side::Upstream))
        );
    });
}

#[test]
fn a_connect_that_hangs_fails_at_the_connect_timeout() {
    pipeline(config("", "", "connect_timeout = \"50ms\""), |k| async move {
        k.net.blackhole(UP.parse().expect("address"));
        let mut c = k.client();
        send(&mut c, GET).await;
        let mut cb = Vec::new();
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.contains("weft-error: connect-timeout"), "{res}");
        let o = &k.outcomes(1).await[0];
        assert_eq!((o.error, o.side), (Some("connect-timeout"), Some(Side::Upstream)));
    });
}

#[test]
fn a_response_body_that_stalls_cuts_the_client_at_the_read_timeout() {
    pipeline(config("", "", "read_timeout = \"50ms\""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(&mut c, GET).await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        read_message(&mut u, &mut ub).await;
        send(&mut u, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
        // Then silence, the connection open.
        let mut cb = Vec::new();
        let got = read_to_end(&mut c, &mut cb).await;
        assert!(
            got.starts_with("HTTP/1.1 200 ") && got.ends_with("\r\n\r\n0123456789"),
            "{got}"
        );
        assert_eq!(
            read_to_end(&mut u, &mut ub).await,
            "",
            "the upstream connection is dropped"
        );
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.status, o.error, o.side),
            (Some(200), Some("upstream-read-timeout"), Some(Side::Upstream))
        );
    });
}

#[test]
fn a_client_that_reads_nothing_is_closed_at_the_write_timeout_and_its_upstream_released() {
    pipeline(config("write_timeout = \"50ms\"", "", ""), |k| async move {
        let up = k.upstream();
        // The client's direction holds 4 KiB: a client that reads nothing
        // stops weft's writes once it is full.
        let mut c = k.client_with(4096);
        send(&mut c, GET).await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        read_message(&mut u, &mut ub).await;
        send(&mut u, "HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n").await;
        // The head reaches the client before the body starts.
        while c.unread() == 0 {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        // The upstream streams until weft lets its connection go.
        let piece = vec![b'x'; 16 * 1024];
        loop {
            let (res, _) = u.write_all(piece.clone()).await;
            if res.is_err() {
                break;
            }
        }
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.status, o.error, o.side),
            (Some(200), Some("client-write-timeout"), Some(Side::Downstream))
        );
        drop(c);
    });
}

#[test]
fn a_request_body_that_stalls_gets_408() {
    pipeline(config("idle_timeout = \"50ms\"", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(
            &mut c,
            "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\nab",
        )
        .await;
        let mut u = up.accept().await;
        let mut cb = Vec::new();
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.starts_with("HTTP/1.1 408 "), "{res}");
        assert!(res.contains("weft-error: body-timeout"), "{res}");
        assert_eq!(
            read_to_end(&mut c, &mut cb).await,
            "",
            "the client connection closes"
        );
        let mut ub = Vec::new();
        let got = read_to_end(&mut u, &mut ub).await;
        assert!(
            got.ends_with("\r\n\r\nab"),
            "the upstream saw the head and the part sent, then a close: {got}"
        );
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.status, o.error, o.side),
            (Some(408), Some("body-timeout"), Some(Side::Downstream))
        );
    });
}

#[test]
fn the_response_streams_while_the_upload_goes_on() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(
            &mut c,
            "POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        )
        .await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        while find(&ub, b"first\r\n").is_none() {
            assert!(read_some(&mut u, &mut ub).await > 0);
        }
        // The upstream answers at once and echoes what it has so far.
        send(
            &mut u,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nFIRST\r\n",
        )
        .await;
        let mut cb = Vec::new();
        while find(&cb, b"FIRST\r\n").is_none() {
            assert!(
                read_some(&mut c, &mut cb).await > 0,
                "the echo of the first piece"
            );
        }
        // Only now does the client send the rest: both bodies are moving.
        send(&mut c, "6\r\nsecond\r\n0\r\n\r\n").await;
        ub.clear();
        while find(&ub, b"0\r\n\r\n").is_none() {
            assert!(read_some(&mut u, &mut ub).await > 0);
        }
        assert_eq!(ub, b"6\r\nsecond\r\n0\r\n\r\n");
        send(&mut u, "6\r\nSECOND\r\n0\r\n\r\n").await;
        let rest = read_to_end(&mut c, &mut cb).await;
        assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
        assert!(
            rest.ends_with("\r\n5\r\nFIRST\r\n6\r\nSECOND\r\n0\r\n\r\n"),
            "{rest}"
        );
        // The upload was not whole when the head went out: the connection
        // closes after the response.
        assert!(rest.to_ascii_lowercase().contains("connection: close"), "{rest}");
        let o = &k.outcomes(1).await[0];
        assert_eq!((o.status, o.error), (Some(200), None));
    });
}

#[test]
fn an_upload_whole_before_the_answer_keeps_both_connections() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        let head = "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n";
        send(&mut c, &format!("{head}hello")).await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        while find(&ub, b"hello").is_none() {
            assert!(read_some(&mut u, &mut ub).await > 0);
        }
        send(&mut c, "world").await;
        while find(&ub, b"helloworld").is_none() {
            assert!(read_some(&mut u, &mut ub).await > 0);
        }
        send(&mut u, &ok("got it")).await;
        let mut cb = Vec::new();
        let res = read_message(&mut c, &mut cb).await;
        assert!(
            res.ends_with("got it") && !res.to_ascii_lowercase().contains("connection: close"),
            "{res}"
        );
        // The next request goes on the same client connection and on the
        // pooled upstream connection.
        send(&mut c, GET).await;
        ub.clear();
        let req = read_message(&mut u, &mut ub).await;
        assert!(req.starts_with("GET /x HTTP/1.1\r\n"), "{req}");
        send(&mut u, &ok("again")).await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("again"));
        assert_eq!(up.waiting(), 0, "no second upstream connection");
        let o = k.outcomes(2).await;
        assert_eq!((o[0].status, o[0].bytes_in), (Some(200), head.len() as u64 + 10));
    });
}

#[test]
fn a_request_body_that_breaks_off_after_the_answer_began_cuts_the_response() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(
            &mut c,
            "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nabc",
        )
        .await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        while find(&ub, b"abc").is_none() {
            assert!(read_some(&mut u, &mut ub).await > 0);
        }
        send(&mut u, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npart").await;
        let mut cb = Vec::new();
        while find(&cb, b"part").is_none() {
            assert!(read_some(&mut c, &mut cb).await > 0);
        }
        // The client stops sending, 97 bytes short.
        monoio::io::AsyncWriteRent::shutdown(&mut c)
            .await
            .expect("shutdown");
        let rest = read_to_end(&mut c, &mut cb).await;
        assert!(
            rest.ends_with("\r\n\r\npart"),
            "the response is cut, not completed: {rest}"
        );
        ub.clear();
        assert_eq!(
            read_to_end(&mut u, &mut ub).await,
            "",
            "the upstream connection is dropped"
        );
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.status, o.error, o.side),
            (Some(200), Some("downstream-body-error"), Some(Side::Downstream))
        );
    });
}

#[test]
fn a_client_that_pauses_past_the_hot_window_is_still_served() {
    pipeline(config("idle_timeout = \"10s\"", "", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, GET).await;
        let mut u = answer_one(&up, "one").await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("one"));
        // The client pauses: weft gives its posted read up and waits for
        // readiness with no buffer; the next request must still be whole.
        monoio::time::sleep(crate::downstream::HOT_WINDOW + Duration::from_millis(100)).await;
        send(&mut c, "GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
        let mut ub = Vec::new();
        let req = read_message(&mut u, &mut ub).await;
        assert!(req.starts_with("GET /after HTTP/1.1\r\n"), "{req}");
        send(&mut u, &ok("two")).await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("two"));
        assert_eq!(k.outcomes(2).await.len(), 2);
    });
}

#[test]
fn at_most_hot_reads_connections_keep_a_read_posted_and_the_rest_are_served_too() {
    pipeline(config("", "", ""), |k| async move {
        let up = k.upstream();
        let n = crate::state::HOT_READS + 44;
        let mut clients: Vec<MemStream> = (0..n).map(|_| k.client()).collect();
        // Every session has started and waits for its first request.
        while k.w.hot_reads.get() < crate::state::HOT_READS {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(k.w.hot_reads.get(), crate::state::HOT_READS, "the budget holds");
        for c in &mut clients {
            send(c, GET).await;
        }
        // One upstream connection per request in flight: answer them all.
        let answering = monoio::spawn(async move {
            for _ in 0..n {
                let mut u = up.accept().await;
                monoio::spawn(async move {
                    let mut ub = Vec::new();
                    read_message(&mut u, &mut ub).await;
                    send(&mut u, &ok("x")).await;
                    // Keep the connection until the test ends.
                    let _ = read_to_end(&mut u, &mut ub).await;
                });
            }
        });
        let mut cb = Vec::new();
        for c in &mut clients {
            let res = read_message(c, &mut cb).await;
            assert!(res.starts_with("HTTP/1.1 200 "), "{res}");
        }
        answering.await;
        assert_eq!(k.outcomes(n).await.len(), n);
        assert!(k.w.hot_reads.get() <= crate::state::HOT_READS);
    });
}

#[test]
fn an_endpoint_that_keeps_failing_is_ejected_and_traffic_goes_to_the_others() {
    // Two endpoints, round robin: UP answers, DOWN refuses every connection.
    // No retries, so that each failure reaches the client.
    const DOWN: &str = "10.0.0.2:80";
    let config = configured(
        "",
        "retry = { attempts = 1 }",
        "balancer = \"round-robin\"\n\
         breaker = { consecutive_failures = 2, base_ejection = \"1h\", max_ejection = \"1h\", max_ejection_percent = 50 }",
        &[UP, DOWN],
    );
    pipeline(config, |k| async move {
        serve_up(&k);
        let mut c = k.client();
        let mut cb = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..12 {
            send(&mut c, GET).await;
            let res = read_message(&mut c, &mut cb).await;
            statuses.push(res[9..12].to_string());
        }
        // DOWN fails twice (its turns in the rotation), then is out.
        let failed: Vec<usize> = (0..12).filter(|&i| statuses[i] != "200").collect();
        assert_eq!(failed.len(), 2, "{statuses:?}");
        assert!(failed[1] <= 3, "the two failures come first: {statuses:?}");
        let o = k.outcomes(12).await;
        let down_index = 1;
        assert!(o.iter().filter(|o| o.target == Some((0, down_index))).count() == 2);
        assert!(o[4..]
            .iter()
            .all(|o| o.status == Some(200) && o.target == Some((0, 0))));
    });
}

/// Two endpoints, round robin, ejection off: UP answers, DOWN refuses.
fn two_endpoints(route: &str) -> Config {
    let cluster = "balancer = \"round-robin\"\nbreaker = { consecutive_failures = 0 }";
    configured("", route, cluster, &[UP, "10.0.0.2:80"])
}

/// Serves every request on every connection to UP with 200 `up`.
fn serve_up(k: &Kit) {
    serve_at(k, UP, "up", Duration::ZERO);
}

#[test]
fn a_refused_connection_goes_to_another_endpoint_for_any_method() {
    pipeline(two_endpoints(""), |k| async move {
        serve_up(&k);
        let mut c = k.client();
        let mut cb = Vec::new();
        for i in 0..4 {
            let req = if i % 2 == 0 {
                GET.to_string()
            } else {
                "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi".to_string()
            };
            send(&mut c, &req).await;
            let res = read_message(&mut c, &mut cb).await;
            assert!(res.starts_with("HTTP/1.1 200 ") && res.ends_with("up"), "{res}");
        }
        let o = k.outcomes(4).await;
        // Round robin sends every second request to DOWN first.
        let retried: Vec<&Outcome> = o.iter().filter(|o| !o.failed_attempts.is_empty()).collect();
        assert_eq!(retried.len(), 2, "{o:#?}");
        for r in retried {
            assert_eq!(
                (r.failed_attempts.as_slice(), r.target, r.attempts),
                (&[1][..], Some((0, 0)), 2)
            );
        }
    });
}

#[test]
fn without_retries_a_refused_connection_is_answered_503() {
    pipeline(two_endpoints("retry = { attempts = 1 }"), |k| async move {
        serve_up(&k);
        let mut c = k.client();
        let mut cb = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            send(&mut c, GET).await;
            statuses.push(read_message(&mut c, &mut cb).await[9..12].to_string());
        }
        assert_eq!(statuses.iter().filter(|s| *s == "503").count(), 2, "{statuses:?}");
    });
}

#[test]
fn during_a_total_outage_retries_stay_within_the_budget() {
    // Both endpoints refuse; 20 % of the requests may be retried, no floor.
    let config = configured(
        "",
        "",
        "breaker = { consecutive_failures = 0 }\nretry_budget = { ratio = 0.2, min_per_second = 0 }",
        &["10.0.0.2:80", "10.0.0.3:80"],
    );
    pipeline(config, |k| async move {
        let mut c = k.client();
        let mut cb = Vec::new();
        for _ in 0..100 {
            send(&mut c, GET).await;
            let res = read_message(&mut c, &mut cb).await;
            assert!(res.starts_with("HTTP/1.1 503 "), "{res}");
        }
        let o = k.outcomes(100).await;
        let retried = o.iter().filter(|o| !o.failed_attempts.is_empty()).count();
        // 20 % of the requests seen so far, checked before each retry.
        assert!((15..=20).contains(&retried), "{retried} requests were retried");
        let connects: usize = o.iter().map(|o| 1 + o.failed_attempts.len()).sum();
        assert_eq!(
            connects,
            100 + retried,
            "one connect per request, one more per retry"
        );
    });
}

/// Two endpoints, UP then UP2, round robin (the first request goes to UP),
/// ejection off, with `retry` on the route.
fn retrying(retry: &str) -> Config {
    let cluster = "balancer = \"round-robin\"\nbreaker = { consecutive_failures = 0 }";
    configured("", &format!("retry = {retry}"), cluster, &[UP, UP2])
}

const UP2: &str = "10.0.0.5:80";

#[test]
fn a_5xx_goes_again_to_the_other_endpoint_for_a_get_but_not_for_a_post() {
    let retry = "{ attempts = 2, on = [\"5xx\"], backoff_base = \"1ms\", backoff_max = \"2ms\" }";
    pipeline(retrying(retry), |k| async move {
        let (sick, well) = (k.upstream(), k.upstream_at(UP2));
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, GET).await;
        let mut s = sick.accept().await;
        let mut sb = Vec::new();
        read_message(&mut s, &mut sb).await;
        send(
            &mut s,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick",
        )
        .await;
        let _w = answer_one(&well, "well").await;
        let res = read_message(&mut c, &mut cb).await;
        assert!(
            res.starts_with("HTTP/1.1 200 ") && res.ends_with("well"),
            "the client never sees the 503: {res}"
        );
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.attempts, o.failed_attempts.as_slice(), o.target),
            (2, &[0][..], Some((0, 1)))
        );
        // The sick endpoint's connection was dropped, its answer unread.
        sb.clear();
        assert_eq!(read_to_end(&mut s, &mut sb).await, "");
    });
}

#[test]
fn a_post_is_not_repeated_after_a_5xx() {
    let retry = "{ attempts = 2, on = [\"5xx\"], backoff_base = \"1ms\", backoff_max = \"2ms\" }";
    pipeline(retrying(retry), |k| async move {
        let (sick, well) = (k.upstream(), k.upstream_at(UP2));
        let mut c = k.client();
        let mut cb = Vec::new();
        send(
            &mut c,
            "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\nx",
        )
        .await;
        let mut s = sick.accept().await;
        let mut sb = Vec::new();
        read_message(&mut s, &mut sb).await;
        send(
            &mut s,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick",
        )
        .await;
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.starts_with("HTTP/1.1 503 ") && res.ends_with("sick"), "{res}");
        assert_eq!(well.waiting(), 0, "no second attempt for the POST");
        assert_eq!(k.outcomes(1).await[0].attempts, 1);
    });
}

#[test]
fn an_attempt_past_the_per_try_timeout_goes_to_the_other_endpoint() {
    let retry = "{ attempts = 2, on = [\"timeout\"], per_try_timeout = \"50ms\", backoff_base = \"1ms\", backoff_max = \"1ms\" }";
    pipeline(retrying(retry), |k| async move {
        let (slow, quick) = (k.upstream(), k.upstream_at(UP2));
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, GET).await;
        let mut s = slow.accept().await;
        let mut sb = Vec::new();
        read_message(&mut s, &mut sb).await;
        // It never answers; weft gives the attempt up after 50 ms.
        let _q = answer_one(&quick, "quick").await;
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.ends_with("quick"), "{res}");
        sb.clear();
        assert_eq!(
            read_to_end(&mut s, &mut sb).await,
            "",
            "the slow attempt's connection is dropped"
        );
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.status, o.attempts, o.failed_attempts.as_slice()),
            (Some(200), 2, &[0][..])
        );
    });
}

#[test]
fn a_reset_before_the_answer_goes_to_the_other_endpoint() {
    let retry = "{ attempts = 2, on = [\"reset\"], backoff_base = \"1ms\", backoff_max = \"1ms\" }";
    pipeline(retrying(retry), |k| async move {
        let (broken, fine) = (k.upstream(), k.upstream_at(UP2));
        let mut c = k.client();
        let mut cb = Vec::new();
        send(&mut c, GET).await;
        let mut b = broken.accept().await;
        let mut bb = Vec::new();
        read_message(&mut b, &mut bb).await;
        drop(b);
        let _f = answer_one(&fine, "fine").await;
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.ends_with("fine"), "{res}");
        assert_eq!(k.outcomes(1).await[0].attempts, 2);
    });
}

#[test]
fn weft_s_own_answer_to_a_client_that_reads_nothing_is_bounded_too() {
    // No endpoint listens: every request gets weft's 503. The client's
    // direction holds 64 bytes and it never reads: the answer cannot go out.
    pipeline(config("write_timeout = \"50ms\"", "", ""), |k| async move {
        let mut c = k.client_with(64);
        send(&mut c, GET).await;
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.status, o.error),
            (None, Some("connect-refused")),
            "recorded, the answer not sent"
        );
        // And the connection is closed: what came is at most the 64 bytes.
        let mut cb = Vec::new();
        let got = read_to_end(&mut c, &mut cb).await;
        assert!(got.len() <= 64, "{got}");
    });
}

/// Serves every request to `addr` with 200 `name`, after `delay`.
fn serve_at(k: &Kit, addr: &str, name: &'static str, delay: Duration) {
    let l = k.upstream_at(addr);
    monoio::spawn(async move {
        loop {
            let mut u = l.accept().await;
            monoio::spawn(async move {
                let mut ub = Vec::new();
                loop {
                    while find(&ub, b"\r\n\r\n").is_none() {
                        if read_some(&mut u, &mut ub).await == 0 {
                            return;
                        }
                    }
                    read_message(&mut u, &mut ub).await;
                    if !delay.is_zero() {
                        monoio::time::sleep(delay).await;
                    }
                    send(&mut u, &ok(name)).await;
                }
            });
        }
    });
}

/// How many of 30 sequential requests the slow endpoint answers under
/// `balancer`.
fn slow_share(balancer: &str) -> usize {
    let config = configured("", "", &format!("balancer = \"{balancer}\""), &[UP, UP2]);
    let slow = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = slow.clone();
    pipeline(config, |k| async move {
        serve_at(&k, UP, "slow", Duration::from_millis(80));
        serve_at(&k, UP2, "fast", Duration::ZERO);
        let mut c = k.client();
        let mut cb = Vec::new();
        for _ in 0..30 {
            send(&mut c, GET).await;
            if read_message(&mut c, &mut cb).await.ends_with("slow") {
                counted.set(counted.get() + 1);
            }
        }
    });
    slow.get()
}

#[test]
fn peak_ewma_moves_traffic_off_a_slow_endpoint_where_least_loaded_does_not() {
    // One request at a time: both endpoints have nothing in flight, so
    // least-loaded picks at random; Peak-EWMA remembers the slow answers.
    let ewma = slow_share("peak-ewma");
    let least = slow_share("least-loaded");
    assert!(ewma <= 2, "peak-ewma sent {ewma} of 30 to the slow endpoint");
    assert!(least >= 8, "least-loaded sent {least} of 30 to the slow endpoint");
}

#[test]
fn past_a_cluster_threshold_a_request_is_answered_503_overflow_at_once() {
    let cases = [
        ("", "limits = { max_requests = 1 }"),
        ("", "limits = { max_connections = 1 }"),
        // The listener's cap on requests in flight sheds the same way.
        ("max_requests = 1", ""),
    ];
    for (listener, cluster) in cases {
        let config = config(listener, "", cluster);
        pipeline(config, |k| async move {
            let up = k.upstream();
            // The first request holds the cluster's one place.
            let mut a = k.client();
            send(&mut a, GET).await;
            let mut u = up.accept().await;
            let mut ub = Vec::new();
            read_message(&mut u, &mut ub).await;
            // The second is refused at once, without waiting for the first.
            let mut b = k.client();
            send(&mut b, GET).await;
            let mut bb = Vec::new();
            let res = read_message(&mut b, &mut bb).await;
            assert!(
                res.starts_with("HTTP/1.1 503 ") && res.contains("weft-error: overflow"),
                "{res}"
            );
            assert_eq!(up.waiting(), 0, "no connection opened for it");
            send(&mut u, &ok("first")).await;
            let mut ab = Vec::new();
            assert!(read_message(&mut a, &mut ab).await.ends_with("first"));
            let o = k.outcomes(2).await;
            let refused = o
                .iter()
                .find(|o| o.error == Some("overflow"))
                .expect("an overflow");
            assert_eq!(refused.side, Some(Side::Proxy), "no endpoint is blamed");
        });
    }
}

#[test]
fn past_a_route_s_rate_limit_requests_get_429() {
    pipeline(
        config("", "rate_limit = { rps = 1, burst = 3 }", ""),
        |k| async move {
            serve_up(&k);
            let mut c = k.client();
            let mut cb = Vec::new();
            let mut statuses = Vec::new();
            for _ in 0..5 {
                send(&mut c, GET).await;
                let res = read_message(&mut c, &mut cb).await;
                statuses.push(res[9..12].to_string());
                if res.starts_with("HTTP/1.1 429 ") {
                    assert!(res.contains("weft-error: rate-limited"), "{res}");
                }
            }
            assert_eq!(
                statuses,
                ["200", "200", "200", "429", "429"],
                "the burst, then the rate"
            );
            let o = k.outcomes(5).await;
            assert_eq!(o[4].side, Some(Side::Proxy));
        },
    );
}

#[test]
fn past_max_retries_a_request_that_could_retry_is_answered_as_it_failed() {
    // R1 and R2 refuse, H accepts and holds; round robin; one retry in
    // flight at most.
    let config = configured(
        "",
        "retry = { attempts = 3 }",
        "balancer = \"round-robin\"\nbreaker = { consecutive_failures = 0 }\nlimits = { max_retries = 1 }",
        &["10.0.0.2:80", "10.0.0.3:80", UP],
    );
    pipeline(config, |k| async move {
        let hold = k.upstream();
        // The first request: R1 refuses, it retries (taking the one retry
        // place), R2 refuses, and H holds it.
        let mut a = k.client();
        send(&mut a, GET).await;
        let mut h = hold.accept().await;
        let mut hb = Vec::new();
        read_message(&mut h, &mut hb).await;
        // The second goes to R2 first: refused, and no retry place is free.
        let mut b = k.client();
        send(&mut b, GET).await;
        let mut bb = Vec::new();
        let res = read_message(&mut b, &mut bb).await;
        assert!(
            res.starts_with("HTTP/1.1 503 ") && res.contains("connect-refused"),
            "{res}"
        );
        assert_eq!(hold.waiting(), 0, "the second request did not go on to H");
        send(&mut h, &ok("held")).await;
        let mut ab = Vec::new();
        assert!(read_message(&mut a, &mut ab).await.ends_with("held"));
    });
}

#[test]
fn least_loaded_does_not_prefer_an_endpoint_that_fails_fast() {
    // UP answers, DOWN refuses; no retries, no ejection: only the
    // balancer's own signal keeps requests off DOWN.
    let config = configured(
        "",
        "retry = { attempts = 1 }",
        "breaker = { consecutive_failures = 0 }",
        &[UP, "10.0.0.2:80"],
    );
    pipeline(config, |k| async move {
        serve_up(&k);
        let mut c = k.client();
        let mut cb = Vec::new();
        let mut failed = 0;
        for _ in 0..20 {
            send(&mut c, GET).await;
            if !read_message(&mut c, &mut cb).await.starts_with("HTTP/1.1 200 ") {
                failed += 1;
            }
        }
        assert!(failed <= 1, "{failed} of 20 went to the endpoint that refuses");
    });
}

#[test]
fn a_stale_pooled_connection_to_an_endpoint_that_went_away_fails_over() {
    pipeline(retrying("{ attempts = 2 }"), |k| async move {
        let (gone, other) = (k.upstream(), k.upstream_at(UP2));
        let mut c = k.client();
        let mut cb = Vec::new();
        // The first request goes to UP and leaves a pooled connection.
        send(&mut c, GET).await;
        let first = answer_one(&gone, "up").await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("up"));
        // The second goes to UP2 (round robin).
        send(&mut c, GET).await;
        let second = answer_one(&other, "up2").await;
        assert!(read_message(&mut c, &mut cb).await.ends_with("up2"));
        // UP goes away for good: its pooled connection is stale, and a new
        // one is refused. The third request, UP's turn, goes to UP2.
        drop(first);
        k.net.close(UP.parse().expect("address"));
        send(&mut c, GET).await;
        // (On a new connection: after a stale one, weft connects afresh.)
        let _third = answer_one(&other, "up2 again").await;
        drop(second);
        let res = read_message(&mut c, &mut cb).await;
        assert!(
            res.starts_with("HTTP/1.1 200 ") && res.ends_with("up2 again"),
            "{res}"
        );
        let o = k.outcomes(3).await;
        assert_eq!(
            (o[2].failed_attempts.as_slice(), o[2].target),
            (&[0][..], Some((0, 1)))
        );
    });
}

/// The value of deadline field `name` in a request head weft sent upstream.
fn deadline_in(head: &str, name: &str) -> Duration {
    let field = weft_proto::deadline::DeadlineField::of(name.as_bytes()).expect("a deadline field");
    let value = header(head, name).unwrap_or_else(|| panic!("no {name} in {head}"));
    field
        .parse(value.as_bytes())
        .unwrap_or_else(|| panic!("{name}: {value} is not a deadline"))
}

#[test]
fn a_client_deadline_shortens_the_route_timeout_and_goes_upstream_less_the_time_spent() {
    pipeline(config("", "timeout = \"1h\"", ""), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(
            &mut c,
            "GET /x HTTP/1.1\r\nHost: a.test\r\ngrpc-timeout: 100m\r\nweft-timeout-ms: 5000\r\n\r\n",
        )
        .await;
        let mut u = up.accept().await;
        let mut ub = Vec::new();
        let head = read_message(&mut u, &mut ub).await;
        // The shorter of the two decides, and both fields carry what is left.
        for name in ["grpc-timeout", "weft-timeout-ms"] {
            let left = deadline_in(&head, name);
            assert!(
                left <= Duration::from_millis(100) && left >= Duration::from_millis(50),
                "{name}: {left:?} in {head}"
            );
        }
        // The upstream never answers: 504 at the client's deadline, not the
        // route's hour, and the endpoint is not blamed for the client's
        // choice.
        let mut cb = Vec::new();
        let res = read_message(&mut c, &mut cb).await;
        assert!(res.starts_with("HTTP/1.1 504 "), "{res}");
        assert!(res.contains("weft-error: deadline-exceeded"), "{res}");
        let o = &k.outcomes(1).await[0];
        assert_eq!((o.status, o.error), (Some(504), Some("deadline-exceeded")));
        assert_eq!(o.endpoint_verdict(weft_core::FailureKind::Any5xx), None);
    });
}

#[test]
fn each_attempt_carries_the_deadline_left_at_its_start() {
    let retry = "{ attempts = 2, on = [\"5xx\"], backoff_base = \"1ms\", backoff_max = \"1ms\" }";
    pipeline(retrying(retry), |k| async move {
        let (slow, quick) = (k.upstream(), k.upstream_at(UP2));
        let mut c = k.client();
        send(
            &mut c,
            "GET /x HTTP/1.1\r\nHost: a.test\r\ngrpc-timeout: 2S\r\n\r\n",
        )
        .await;
        let mut s = slow.accept().await;
        let mut sb = Vec::new();
        let first = deadline_in(&read_message(&mut s, &mut sb).await, "grpc-timeout");
        // A slow 503: the retry has 60 ms less.
        monoio::time::sleep(Duration::from_millis(60)).await;
        send(&mut s, "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").await;
        let mut q = quick.accept().await;
        let mut qb = Vec::new();
        let second = deadline_in(&read_message(&mut q, &mut qb).await, "grpc-timeout");
        assert!(first <= Duration::from_secs(2), "{first:?}");
        assert!(
            second + Duration::from_millis(60) <= first,
            "the retry after 60 ms has less left: {first:?} then {second:?}"
        );
        send(&mut q, &ok("quick")).await;
        let res = read_message(&mut c, &mut Vec::new()).await;
        assert!(res.ends_with("quick"), "{res}");
        assert_eq!(k.outcomes(1).await[0].attempts, 2);
    });
}

#[test]
fn an_attempt_is_told_no_more_than_its_per_try_timeout() {
    let retry = "{ attempts = 2, on = [\"timeout\"], per_try_timeout = \"50ms\" }";
    pipeline(retrying(retry), |k| async move {
        let up = k.upstream();
        let mut c = k.client();
        send(
            &mut c,
            "GET /x HTTP/1.1\r\nHost: a.test\r\nweft-timeout-ms: 2000\r\n\r\n",
        )
        .await;
        let mut u = up.accept().await;
        let told = deadline_in(&read_message(&mut u, &mut Vec::new()).await, "weft-timeout-ms");
        assert_eq!(told, Duration::from_millis(50));
        send(&mut u, &ok("in time")).await;
        let res = read_message(&mut c, &mut Vec::new()).await;
        assert!(res.ends_with("in time"), "{res}");
    });
}

/// A PUT whose body comes after weft's `100 Continue`, to a sick endpoint
/// and then (when it is retried) a well one; returns what the client got
/// and what each endpoint received.
async fn put_after_continue(k: &Kit, body: &str, retried: bool) -> (String, String, Option<String>) {
    let (sick, well) = (k.upstream(), k.upstream_at(UP2));
    let mut c = k.client();
    let mut cb = Vec::new();
    let head = format!(
        "PUT /p HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    send(&mut c, &head).await;
    let interim = read_message(&mut c, &mut cb).await;
    assert!(interim.starts_with("HTTP/1.1 100 "), "{interim}");
    send(&mut c, body).await;
    let mut s = sick.accept().await;
    let mut sb = Vec::new();
    let to_sick = read_message(&mut s, &mut sb).await;
    send(
        &mut s,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick",
    )
    .await;
    let to_well = if retried {
        let mut w = well.accept().await;
        let mut wb = Vec::new();
        let got = read_message(&mut w, &mut wb).await;
        // Its own 100 is dropped: the client had weft's.
        send(&mut w, &format!("HTTP/1.1 100 Continue\r\n\r\n{}", ok("well"))).await;
        Some(got)
    } else {
        None
    };
    (read_message(&mut c, &mut cb).await, to_sick, to_well)
}

#[test]
fn an_idempotent_request_body_that_came_later_is_kept_and_replayed_on_a_retry() {
    let retry = "{ attempts = 2, on = [\"5xx\"], backoff_base = \"1ms\", backoff_max = \"2ms\" }";
    pipeline(retrying(retry), |k| async move {
        let (res, to_sick, to_well) = put_after_continue(&k, "twelve bytes", true).await;
        assert!(res.starts_with("HTTP/1.1 200 ") && res.ends_with("well"), "{res}");
        let to_well = to_well.expect("a retry");
        assert!(to_sick.ends_with("\r\n\r\ntwelve bytes"), "{to_sick}");
        assert!(
            to_well.ends_with("\r\n\r\ntwelve bytes"),
            "the retry carries the body: {to_well}"
        );
        assert!(!to_well.to_ascii_lowercase().contains("expect"), "{to_well}");
        let o = &k.outcomes(1).await[0];
        assert_eq!((o.status, o.attempts), (Some(200), 2));
    });
}

#[test]
fn a_body_over_max_replay_bytes_streams_and_is_not_retried() {
    let retry = "{ attempts = 2, on = [\"5xx\"], max_replay_bytes = 4 }";
    pipeline(retrying(retry), |k| async move {
        let (res, to_sick, _) = put_after_continue(&k, "twelve bytes", false).await;
        assert!(res.starts_with("HTTP/1.1 503 ") && res.ends_with("sick"), "{res}");
        assert!(to_sick.ends_with("twelve bytes"), "{to_sick}");
        assert_eq!(k.outcomes(1).await[0].attempts, 1);
    });
}

#[test]
fn a_listed_status_goes_again_without_counting_against_the_endpoint() {
    let retry = "{ attempts = 2, on = [], statuses = [429], backoff_base = \"1ms\", backoff_max = \"2ms\" }";
    pipeline(retrying(retry), |k| async move {
        let (busy, well) = (k.upstream(), k.upstream_at(UP2));
        let mut c = k.client();
        send(&mut c, GET).await;
        let mut b = busy.accept().await;
        read_message(&mut b, &mut Vec::new()).await;
        send(
            &mut b,
            "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n\r\nbusy",
        )
        .await;
        let _w = answer_one(&well, "well").await;
        let res = read_message(&mut c, &mut Vec::new()).await;
        assert!(res.ends_with("well"), "{res}");
        let o = &k.outcomes(1).await[0];
        assert_eq!(
            (o.attempts, o.failed_attempts.as_slice(), o.target),
            (2, &[][..], Some((0, 1))),
            "a 429 is no failure of its endpoint"
        );
    });
}
