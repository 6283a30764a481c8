//! Test support for weft's black-box tests: real upstream servers on
//! loopback (recording what they receive, or scripted to misbehave), a raw
//! HTTP/1.1 client, and helpers to start weft from a configuration.
//!
//! Everything uses real sockets; readiness is polled with a bound.

use bytes::BytesMut;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft::Server;
use weft_proto::{parse_request, BodyFraming, ChunkedDecoder, Limits, RequestHead};

/// How long any single socket operation in a test may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts weft from configuration text (listeners should use port 0).
pub fn start(config: &str) -> Server {
    let config = weft::load::parse(config).unwrap_or_else(|e| panic!("test config refused: {e}\n{config}"));
    Server::start(config).unwrap_or_else(|e| panic!("weft did not start: {e}"))
}

thread_local! {
    static DRIVER: std::cell::Cell<&'static str> = const { std::cell::Cell::new("auto") };
}

/// Runs test body `f` with weft on IO driver `driver` (`auto`, `io-uring` or
/// `epoll`) wherever it starts weft through [`simple_config`].
pub fn with_driver(driver: &'static str, f: fn()) {
    DRIVER.with(|d| d.set(driver));
    f()
}

/// Declares each listed test function (a plain `fn()`) as two tests: one on
/// the epoll driver, one on the default driver (io_uring where available).
#[macro_export]
macro_rules! on_both_drivers {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { $crate::with_driver("epoll", super::$name) } )*
        }
        mod io_uring {
            $( #[test] fn $name() { $crate::with_driver("auto", super::$name) } )*
        }
    };
}

/// A one-listener, one-cluster configuration in front of `endpoints`, on
/// the driver chosen by [`with_driver`].
pub fn simple_config(endpoints: &[SocketAddr], extra_listener: &str, extra_cluster: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let driver = DRIVER.with(|d| d.get());
    format!(
        "[runtime]\nworkers = 1\ndriver = \"{driver}\"\ndrain_timeout = \"5s\"\n\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n{extra_listener}\n\n[[route]]\ncluster = \"up\"\n\n[[cluster]]\nname = \"up\"\nendpoints = [{}]\n{extra_cluster}\n",
        eps.join(", ")
    )
}

/// Starts weft in front of `endpoints` with one worker and returns it with its address.
pub fn proxy(endpoints: &[SocketAddr]) -> (Server, SocketAddr) {
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

/// A real HTTP/1.1 upstream on loopback, one thread per connection.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request received, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
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
/// `None` at a clean end of stream.
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
                assert!(fill(stream, buf), "request body broke off");
            }
            body.extend_from_slice(&buf.split_to(n as usize));
        }
        BodyFraming::Chunked => {
            let mut d = ChunkedDecoder::new();
            loop {
                while !buf.is_empty() && !d.is_done() {
                    let s = d.step(buf).expect("valid chunked body");
                    body.extend_from_slice(&buf[s.data.clone()]);
                    let _ = buf.split_to(s.consumed);
                }
                if d.is_done() {
                    break;
                }
                assert!(fill(stream, buf), "chunked request body broke off");
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
                received.lock().unwrap().push(Received {
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
        let f = Arc::new(f);
        let (r, c) = (received.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let index = c.fetch_add(1, Ordering::SeqCst);
                let (f, r) = (f.clone(), r.clone());
                std::thread::spawn(move || f(stream, index, r));
            }
        });
        Upstream {
            addr,
            received,
            connections,
        }
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The `i`-th request received.
    pub fn request(&self, i: usize) -> Received {
        self.received.lock().unwrap()[i].clone()
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
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
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
            self.reader.read_to_end(&mut r.body).ok()?;
        }
        Some(r)
    }

    /// True when the peer has closed the connection (reads end of stream
    /// or a reset within the IO timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
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
