//! Test support for weft's black-box tests: real upstream servers on
//! loopback (recording what they receive, or scripted to misbehave), a raw
//! HTTP/1.1 client, and helpers to start weft from a configuration.
//!
//! Everything uses real sockets; readiness is polled with a bound.

pub mod h2c;

use bytes::BytesMut;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft::{IoSetup, Ring, Server};
use weft_proto::{parse_request, BodyFraming, ChunkedDecoder, Limits, RequestHead};

/// How long any single socket operation in a test may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long weft has to close a connection it must close.
pub const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// A read that ended because its timeout passed (the peer kept the
/// connection open and silent).
pub fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The status of an HTTP/1.x status line (`HTTP/1.1 200 OK\r\n`), if it is one.
pub fn parse_status_line(line: &str) -> Option<u16> {
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || !matches!(rest.as_bytes().get(3), Some(b' ' | b'\r')) {
        return None;
    }
    code.parse().ok()
}

/// The IO setup this test run expects, from `WEFT_TEST_IO`:
/// unset or `io-uring`: io_uring with the tuned rings (COOP_TASKRUN or
/// DEFER_TASKRUN, with SINGLE_ISSUER: kernel 6.1 and later); `io-uring-plain`: io_uring on a kernel that refuses the
/// ring flags; `epoll-only`: a host without io_uring, where the io_uring
/// variants of the suites are skipped (and say so) instead of failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIo {
    /// io_uring with COOP_TASKRUN or DEFER_TASKRUN, and SINGLE_ISSUER.
    Tuned,
    /// io_uring with a plain ring.
    Plain,
    /// No io_uring here.
    EpollOnly,
}

/// What `WEFT_TEST_IO` says about this host (see [`HostIo`]).
pub fn host_io() -> HostIo {
    match std::env::var("WEFT_TEST_IO").as_deref() {
        Err(_) | Ok("") | Ok("io-uring") => HostIo::Tuned,
        Ok("io-uring-plain") => HostIo::Plain,
        Ok("epoll-only") => HostIo::EpollOnly,
        Ok(other) => panic!("WEFT_TEST_IO={other:?}: expected io-uring, io-uring-plain or epoll-only"),
    }
}

/// The IO setup weft must report for a configuration, on this host.
pub fn expected_io(config: &weft::Config) -> IoSetup {
    use weft_core::{Driver, RingSetup};
    let ring = match (config.runtime.ring_setup, host_io()) {
        (RingSetup::Tuned, HostIo::Tuned) => Ring::CoopTaskrun,
        (RingSetup::Defer, HostIo::Tuned) => Ring::DeferTaskrun,
        _ => Ring::Plain,
    };
    let uring = IoSetup::IoUring { ring };
    match config.runtime.driver {
        Driver::Epoll => IoSetup::Epoll,
        Driver::IoUring => uring,
        Driver::Auto if host_io() == HostIo::EpollOnly => IoSetup::Epoll,
        Driver::Auto => uring,
    }
}

/// Starts weft from configuration text (listeners should use port 0), and
/// checks that it runs on the IO setup the configuration asks for on this
/// host: a fallback from io_uring to epoll, or a ring without its flags,
/// fails the test.
pub fn start(config: &str) -> Weft {
    let config = weft::load::parse(config).unwrap_or_else(|e| panic!("test config refused: {e}\n{config}"));
    let expected = expected_io(&config);
    let server = Server::start(config).unwrap_or_else(|e| panic!("weft did not start: {e}"));
    assert_eq!(
        server.io(),
        expected,
        "weft runs on {} where {expected} was expected (set WEFT_TEST_IO on a host without io_uring or ring flags)",
        server.io()
    );
    Weft(Some(server))
}

/// weft as a test started it. When the test is done with it (dropped, shut
/// down or joined), every request it received must have exactly one outcome
/// record: checked once requests in flight have ended (within a bound), so
/// every black-box test checks it.
pub struct Weft(Option<Server>);

impl std::ops::Deref for Weft {
    type Target = Server;
    fn deref(&self) -> &Server {
        self.0.as_ref().expect("a running server")
    }
}

impl Weft {
    /// Requests whose outcome was not a success (an error, a 5xx, or no
    /// response), over all workers, once requests in flight have ended.
    pub fn failures(&self) -> u64 {
        one_outcome_per_request(self);
        self.workers().iter().map(|w| w.failures()).sum()
    }

    /// Checks the outcomes, then stops weft and waits for its workers.
    pub fn shutdown(mut self) {
        let server = self.0.take().expect("a running server");
        one_outcome_per_request(&server);
        server.shutdown();
    }

    /// Checks the outcomes, then waits for the workers (after the shutdown
    /// handle fired).
    pub fn join(mut self) {
        let server = self.0.take().expect("a running server");
        one_outcome_per_request(&server);
        server.join();
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        if let Some(server) = &self.0 {
            if !std::thread::panicking() {
                one_outcome_per_request(server);
            }
        }
    }
}

/// Requests and outcome records over all of `server`'s workers agree
/// (requests still in flight get 5 s to end).
pub fn one_outcome_per_request(server: &Server) {
    let totals = || {
        server
            .workers()
            .iter()
            .fold((0, 0), |(r, o), w| (r + w.requests(), o + w.outcomes()))
    };
    eventually(Duration::from_secs(5), || {
        let (r, o) = totals();
        r == o
    });
    let (requests, outcomes) = totals();
    assert_eq!(
        outcomes, requests,
        "{requests} requests but {outcomes} outcome records: every request must end in exactly one"
    );
}

thread_local! {
    static DRIVER: std::cell::Cell<&'static str> = const { std::cell::Cell::new("") };
}

/// The driver tests on this thread configure: the one [`with_driver`] set,
/// else io_uring (epoll on an epoll-only host).
pub fn driver() -> &'static str {
    match DRIVER.with(|d| d.get()) {
        "" if host_io() == HostIo::EpollOnly => "epoll",
        "" => "io-uring",
        d => d,
    }
}

/// Runs test body `f` with weft on IO driver `driver` (`io-uring` or
/// `epoll`) wherever it starts weft through [`simple_config`] or
/// [`runtime_section`]. On an epoll-only host (`WEFT_TEST_IO=epoll-only`)
/// the io_uring runs are skipped, and say so.
pub fn with_driver(driver: &'static str, f: fn()) {
    if driver == "io-uring" && host_io() == HostIo::EpollOnly {
        eprintln!("skipped: WEFT_TEST_IO=epoll-only says this host has no io_uring");
        return;
    }
    DRIVER.with(|d| d.set(driver));
    f()
}

/// Declares each listed test function (a plain `fn()`) as two tests: one on
/// the epoll driver, one on io_uring (which fails where io_uring is missing,
/// unless `WEFT_TEST_IO=epoll-only`).
#[macro_export]
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { $crate::with_driver("epoll", super::$name) } )*
        }
        mod io_uring {
            $( #[test] fn $name() { $crate::with_driver("io-uring", super::$name) } )*
        }
    };
}

/// A `[runtime]` section with `workers` workers on the driver chosen by
/// [`with_driver`], and a 5 s drain timeout.
pub fn runtime_section(workers: usize) -> String {
    format!(
        "[runtime]\nworkers = {workers}\ndriver = \"{}\"\ndrain_timeout = \"5s\"\n",
        driver()
    )
}

/// A one-listener, one-cluster configuration in front of `endpoints`, on
/// the driver chosen by [`with_driver`].
pub fn simple_config(endpoints: &[SocketAddr], extra_listener: &str, extra_cluster: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "{}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n{extra_listener}\n\n[[route]]\ncluster = \"up\"\n\n[[cluster]]\nname = \"up\"\nendpoints = [{}]\n{extra_cluster}\n",
        runtime_section(1),
        eps.join(", ")
    )
}

/// Starts weft in front of `endpoints` with one worker and returns it with its address.
pub fn proxy(endpoints: &[SocketAddr]) -> (Weft, SocketAddr) {
    let server = start(&simple_config(endpoints, "", ""));
    let addr = server.addr("in").expect("listener `in`");
    (server, addr)
}

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The raw head as sent by weft.
    pub head: String,
    /// The decoded body.
    pub body: Vec<u8>,
    /// The body was chunked on the wire.
    pub chunked: bool,
    /// Index of the upstream connection it came on.
    pub connection: usize,
}

impl Received {
    /// A request as received, by its head alone (no body).
    pub fn head(head: &RequestHead) -> Self {
        Received {
            head: String::from_utf8_lossy(&head.raw).to_string(),
            body: vec![],
            chunked: false,
            connection: 0,
        }
    }
}

/// A real HTTP/1.1 upstream on loopback, one thread per connection.
///
/// A panic in a connection thread (a failed assertion about what weft
/// sent) is recorded, and fails the test when the `Upstream` is dropped or
/// [`Upstream::check`]ed: a failure on the upstream side is never lost.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request received, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Connections whose handler has returned (the peer closed, or the
    /// script ended).
    pub finished: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
}

/// Locks `m`, also after a connection thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Deterministic pseudo-random bytes for integrity tests.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn header<'a>(head: &'a RequestHead, name: &str) -> Option<&'a str> {
    head.header(name).and_then(|v| std::str::from_utf8(v).ok())
}

/// Reads one request (head and body) with weft-proto's strict parser.
/// `None` when the connection ends (or idles out) before a whole request:
/// weft closes an upstream connection whose request body broke off on the
/// client side. A request that does not parse, or a malformed chunked body,
/// panics (and fails the test through [`Upstream`]).
pub fn read_request(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<(RequestHead, Vec<u8>, bool)> {
    let head = loop {
        match parse_request(buf, &Limits::default()) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => panic!("upstream received a request it cannot parse: {e}"),
        }
        if !fill(stream, buf) {
            return None;
        }
    };
    let mut body = Vec::new();
    let chunked = head.framing == BodyFraming::Chunked;
    match head.framing {
        BodyFraming::Length(n) => {
            while (buf.len() as u64) < n {
                if !fill(stream, buf) {
                    return None;
                }
            }
            body.extend_from_slice(&buf.split_to(n as usize));
        }
        BodyFraming::Chunked => {
            let mut d = ChunkedDecoder::new();
            loop {
                while !buf.is_empty() && !d.is_done() {
                    let s = d
                        .step(buf)
                        .unwrap_or_else(|e| panic!("upstream received a malformed chunked body: {e:?}"));
                    body.extend_from_slice(&buf[s.data.clone()]);
                    let _ = buf.split_to(s.consumed);
                }
                if d.is_done() {
                    break;
                }
                if !fill(stream, buf) {
                    return None;
                }
            }
        }
        _ => {}
    }
    Some((head, body, chunked))
}

fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> bool {
    let mut tmp = [0u8; 64 * 1024];
    match stream.read(&mut tmp) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

impl Upstream {
    /// A well-behaved upstream named `name`. It answers 200 with header
    /// `x-upstream: NAME`; the body is the request body if there was one,
    /// else `hello from NAME`. Request headers steer it:
    /// `x-response-bytes: N` answers N pattern bytes; `x-chunked: N` answers
    /// chunked in N-byte chunks; `x-status: S` answers status S;
    /// `x-delay-ms: D` waits before answering; `x-close: 1` closes after.
    pub fn echo(name: &str) -> Upstream {
        let name = name.to_string();
        Upstream::scripted(move |mut stream, conn, received| {
            let mut buf = BytesMut::new();
            while let Some((head, body, chunked)) = read_request(&mut stream, &mut buf) {
                let raw = String::from_utf8_lossy(&head.raw).to_string();
                lock(&received).push(Received {
                    head: raw,
                    body: body.clone(),
                    chunked,
                    connection: conn,
                });
                if let Some(d) = header(&head, "x-delay-ms").and_then(|v| v.parse().ok()) {
                    std::thread::sleep(Duration::from_millis(d));
                }
                let status: u16 = header(&head, "x-status")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(200);
                let payload = match header(&head, "x-response-bytes").and_then(|v| v.parse().ok()) {
                    Some(n) => pattern(n, n as u64),
                    None if !body.is_empty() => body,
                    None => format!("hello from {name}").into_bytes(),
                };
                let bodyless = head.is_head() || status == 204 || status == 304;
                let close = header(&head, "x-close").is_some() || !head.keep_alive;
                let mut out = format!("HTTP/1.1 {status} X\r\nx-upstream: {name}\r\n");
                if close {
                    out.push_str("connection: close\r\n");
                }
                let chunk: Option<usize> = header(&head, "x-chunked").and_then(|v| v.parse().ok());
                let mut wire = Vec::new();
                match chunk {
                    Some(size) if !bodyless => {
                        out.push_str("transfer-encoding: chunked\r\n\r\n");
                        wire.extend_from_slice(out.as_bytes());
                        for part in payload.chunks(size.max(1)) {
                            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                            wire.extend_from_slice(part);
                            wire.extend_from_slice(b"\r\n");
                        }
                        wire.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
                    }
                    _ => {
                        if status != 204 && status != 304 {
                            out.push_str(&format!("content-length: {}\r\n", payload.len()));
                        }
                        out.push_str("\r\n");
                        wire.extend_from_slice(out.as_bytes());
                        if !bodyless {
                            wire.extend_from_slice(&payload);
                        }
                    }
                }
                if stream.write_all(&wire).is_err() || close {
                    return;
                }
            }
        })
    }

    /// An upstream that answers a request with `101 Switching Protocols`
    /// (`Upgrade: websocket`), sends `first` right after it, then echoes
    /// every byte upper-cased until the client closes.
    pub fn upgrade_echo(first: &'static [u8]) -> Upstream {
        Upstream::scripted(move |mut s, _, _| {
            use std::io::{Read, Write};
            let mut buf = bytes::BytesMut::new();
            if read_request(&mut s, &mut buf).is_none() {
                return;
            }
            // The 101 and the first bytes in one write, as a server that
            // speaks first sends them.
            let mut out =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                    .to_vec();
            out.extend_from_slice(first);
            if s.write_all(&out).is_err() {
                return;
            }
            let mut b = [0u8; 1024];
            loop {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let _ = s.write_all(&b[..n].to_ascii_uppercase());
                    }
                }
            }
        })
    }

    /// An upstream whose every connection runs `f(stream, index, received)`
    /// in its own thread.
    pub fn scripted<F>(f: F) -> Upstream
    where
        F: Fn(TcpStream, usize, Arc<Mutex<Vec<Received>>>) + Send + Sync + 'static,
    {
        // A deep accept queue: bursts of a thousand connects must not drop SYNs.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind upstream");
        sock.listen(4096).expect("listen");
        let listener: TcpListener = sock.into();
        let addr = listener.local_addr().expect("upstream addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let f = Arc::new(f);
        let (r, c, d, fl) = (
            received.clone(),
            connections.clone(),
            finished.clone(),
            failures.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let index = c.fetch_add(1, Ordering::SeqCst);
                let (f, r, d, fl) = (f.clone(), r.clone(), d.clone(), fl.clone());
                std::thread::spawn(move || {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(stream, index, r)));
                    if let Err(p) = run {
                        lock(&fl).push(format!("upstream connection {index}: {}", panic_message(&*p)));
                    }
                    d.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            received,
            connections,
            finished,
            failures,
        }
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        lock(&self.received).len()
    }

    /// Requests received so far for which `f` holds.
    pub fn count_where(&self, f: impl Fn(&Received) -> bool) -> usize {
        lock(&self.received).iter().filter(|r| f(r)).count()
    }

    /// The `i`-th request received.
    pub fn request(&self, i: usize) -> Received {
        lock(&self.received)[i].clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections whose handler has returned so far.
    pub fn closed(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    /// Fails the test if any connection thread failed so far.
    pub fn check(&self) {
        let failures = std::mem::take(&mut *lock(&self.failures));
        assert!(
            failures.is_empty(),
            "the upstream failed:\n{}",
            failures.join("\n")
        );
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.check();
        }
    }
}

/// A response as a client read it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked when it was chunked).
    pub body: Vec<u8>,
    /// The body was chunked on the wire.
    pub chunked: bool,
}

impl Response {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// Checks one of weft's own error answers: the status, the `weft-error`
/// code, and a body that names the cause (contains `cause`).
pub fn assert_weft_error(r: &Response, status: u16, code: &str, cause: &str) {
    assert_eq!(
        (r.status, r.header("weft-error")),
        (status, Some(code)),
        "body: {}",
        r.text()
    );
    assert!(
        r.text().contains(cause),
        "the {status} body does not name the cause `{cause}`: {:?}",
        r.text()
    );
    assert_eq!(
        r.header("content-length").and_then(|v| v.parse().ok()),
        Some(r.body.len()),
        "error answer framing"
    );
}

/// A raw HTTP/1.1 client connection.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(s),
        }
    }

    /// Wraps an already connected socket.
    pub fn from_stream(s: TcpStream) -> Client {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(s),
        }
    }

    /// The underlying socket.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("client write");
    }

    /// Sends a GET for `path` with Host `a` and extra header lines.
    pub fn get(&mut self, path: &str, extra: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes());
        self.response(false).expect("a response")
    }

    /// Reads one response (`head_request`: it answers a HEAD). `None` if the
    /// connection closed before a status line.
    pub fn response(&mut self, head_request: bool) -> Option<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        // Strict: the status line is the very first thing, so that stray
        // bytes before it (a body weft should not have sent) fail the test.
        let status = parse_status_line(&line).unwrap_or_else(|| panic!("not a status line: {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':')?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut r = Response {
            status,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        if (100..200).contains(&status) || head_request || status == 204 || status == 304 {
            return Some(r);
        }
        if r.header("transfer-encoding").is_some() {
            r.chunked = true;
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).ok()?;
                let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
                if n == 0 {
                    // Trailers until the empty line.
                    loop {
                        let mut t = String::new();
                        self.reader.read_line(&mut t).ok()?;
                        if t.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).ok()?;
                r.body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = r.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let mut body = vec![0; n];
            self.reader.read_exact(&mut body).ok()?;
            r.body = body;
        } else {
            // Close-delimited: weft must close, within the IO timeout.
            if let Err(e) = self.reader.read_to_end(&mut r.body) {
                assert!(!timed_out(&e), "a close-delimited response was left open: {e}");
                return None;
            }
        }
        Some(r)
    }

    /// True when the peer closes the connection within [`CLOSE_BOUND`]:
    /// end of stream, or a reset. False when a byte arrives instead, or when
    /// the connection is still open at the bound.
    pub fn is_closed(&mut self) -> bool {
        let s = self.reader.get_ref();
        s.set_read_timeout(Some(CLOSE_BOUND)).expect("set a read timeout");
        let mut b = [0u8; 1];
        let closed = loop {
            match self.reader.read(&mut b) {
                Ok(0) => break true,
                Ok(_) => break false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break !timed_out(&e),
            }
        };
        let _ = self.reader.get_ref().set_read_timeout(Some(IO_TIMEOUT));
        closed
    }

    /// Reads until weft closes the connection (end of stream or reset) and
    /// returns every byte received; panics if it is still open after
    /// [`CLOSE_BOUND`] without a byte.
    pub fn read_until_close(&mut self) -> Vec<u8> {
        let _ = self.reader.get_ref().set_read_timeout(Some(CLOSE_BOUND));
        let mut all = Vec::new();
        if let Err(e) = self.reader.read_to_end(&mut all) {
            assert!(
                !timed_out(&e),
                "weft left the connection open ({e}) after sending {:?}",
                String::from_utf8_lossy(&all)
            );
        }
        all
    }

    /// Reads exactly `n` raw bytes (after any buffered ones).
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        self.reader.read_exact(&mut out).expect("read_exact");
        out
    }

    /// Half-closes the sending side.
    pub fn shutdown_write(&mut self) {
        let _ = self.reader.get_mut().shutdown(Shutdown::Write);
    }
}

/// One GET on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).get(path, "")
}

/// Polls `cond` every few milliseconds until it holds, for at most `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// A fresh, empty directory of this test process for `what` (files a
/// test writes: configurations, logs, certificates).
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("weft-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("a test directory");
    d
}

/// One request to weft's admin listener (`method path`, connection
/// closed after it): the status and body of the answer.
pub fn admin_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("admin listener accepts");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout set");
    write!(s, "{method} {path} HTTP/1.1\r\nhost: admin\r\n\r\n").expect("request sent");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("answer read to its close");
    let text = String::from_utf8(raw).expect("a text answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = parse_status_line(head.lines().next().unwrap_or("")).expect("a status line");
    (status, body.to_string())
}

/// An address on which nothing listens (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// SHA-256 of `data`, hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
