//! An HTTP/2 test client: the `h2` crate on a tokio runtime of its own
//! (one thread, so that the connection makes progress between calls), behind blocking calls, over plain TCP (prior
//! knowledge) or TLS (ALPN `h2`). Every call is bounded by
//! [`IO_TIMEOUT`](crate::IO_TIMEOUT): a hang fails the test.

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::runtime::Runtime;

/// A response as the HTTP/2 client read it.
#[derive(Debug)]
pub struct H2Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl H2Response {
    /// The value of field `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// One HTTP/2 connection to weft.
pub struct H2 {
    rt: Runtime,
    send: SendRequest<Bytes>,
    /// The connection's task: done once the connection has ended.
    conn: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

/// Builds the client's runtime.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `f` on `rt`, failing the test when it takes longer than the bound.
fn bounded<F: Future>(rt: &Runtime, f: F) -> F::Output {
    rt.block_on(async { tokio::time::timeout(crate::IO_TIMEOUT, f).await })
        .expect("the HTTP/2 exchange did not finish within the bound")
}

impl H2 {
    /// Connects with prior knowledge (cleartext HTTP/2).
    pub fn connect(addr: SocketAddr) -> H2 {
        Self::connect_with(addr, &h2::client::Builder::new())
    }

    /// Connects with prior knowledge and the client settings of `builder`.
    pub fn connect_with(addr: SocketAddr, builder: &h2::client::Builder) -> H2 {
        let rt = runtime();
        let (send, conn) = bounded(&rt, async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect to weft");
            tcp.set_nodelay(true).expect("nodelay");
            let (send, conn) = builder.handshake(tcp).await.expect("HTTP/2 handshake");
            (send, tokio::spawn(conn))
        });
        H2 { rt, send, conn }
    }

    /// Connects over TLS, offering only ALPN `h2`.
    pub fn connect_tls(addr: SocketAddr, mut cfg: rustls::ClientConfig, name: &str) -> H2 {
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let rt = runtime();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("server name");
        let (send, conn) = bounded(&rt, async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect to weft");
            tcp.set_nodelay(true).expect("nodelay");
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .expect("TLS handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
            let (send, conn) = h2::client::handshake(tls).await.expect("HTTP/2 handshake");
            (send, tokio::spawn(conn))
        });
        H2 { rt, send, conn }
    }

    /// A request for `path` with `fields`, to be completed with a body.
    pub fn head(addr: SocketAddr, method: &str, path: &str, fields: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        b.body(()).expect("a request")
    }

    /// Sends `req` with `body` (none when empty) and reads the whole
    /// response, its trailers included. Err: the stream or connection
    /// failed (a reset, say).
    pub fn request(&mut self, req: http::Request<()>, body: &[u8]) -> Result<H2Response, h2::Error> {
        let (res, mut up) = self.start(req, body.is_empty())?;
        if !body.is_empty() {
            up.send_data(Bytes::copy_from_slice(body), true)?;
        }
        self.finish(res)
    }

    /// Opens a stream: sends `req`'s head (`end`: with END_STREAM).
    pub fn start(
        &mut self,
        req: http::Request<()>,
        end: bool,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), h2::Error> {
        let send = &mut self.send;
        bounded(&self.rt, async {
            let mut ready = send.clone().ready().await?;
            ready.send_request(req, end)
        })
    }

    /// Reads a response whole: head, body (giving the window back as it
    /// goes), trailers.
    pub fn finish(&mut self, res: ResponseFuture) -> Result<H2Response, h2::Error> {
        bounded(&self.rt, read_response(res))
    }

    /// Reads the responses of several streams at once (each stream's data
    /// is read as it comes, so that none holds the connection's window).
    pub fn finish_all(&mut self, pending: Vec<ResponseFuture>) -> Vec<Result<H2Response, h2::Error>> {
        bounded(&self.rt, async {
            let tasks: Vec<_> = pending
                .into_iter()
                .map(|res| tokio::spawn(read_response(res)))
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("a reading task"));
            }
            out
        })
    }

    /// The most streams the server lets this client open at once (its
    /// SETTINGS_MAX_CONCURRENT_STREAMS, once received).
    pub fn max_send_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// Runs `f` on this client's runtime (bounded).
    pub fn run<F: Future>(&self, f: F) -> F::Output {
        bounded(&self.rt, f)
    }

    /// True once the connection has ended (weft closed it), waiting at
    /// most the bound.
    pub fn closed(&mut self) -> bool {
        let conn = &mut self.conn;
        self.rt
            .block_on(async { tokio::time::timeout(crate::CLOSE_BOUND, conn).await })
            .is_ok()
    }
}

/// Reads a response whole: head, body, trailers.
async fn read_response(res: ResponseFuture) -> Result<H2Response, h2::Error> {
    let res = res.await?;
    let status = res.status().as_u16();
    let (parts, body) = res.into_parts();
    let (body, trailers) = read_body(body).await?;
    Ok(H2Response {
        status,
        headers: parts.headers,
        body,
        trailers,
    })
}

/// Reads a body whole and then its trailers.
pub async fn read_body(mut body: RecvStream) -> Result<(Vec<u8>, Option<http::HeaderMap>), h2::Error> {
    let mut out = Vec::new();
    while let Some(d) = body.data().await {
        let d = d?;
        let _ = body.flow_control().release_capacity(d.len());
        out.extend_from_slice(&d);
    }
    let trailers = body.trailers().await?;
    Ok((out, trailers))
}

/// A request as the HTTP/2 upstream received it.
#[derive(Debug, Clone)]
pub struct H2Received {
    pub method: String,
    /// `:path` with the query.
    pub path: String,
    pub authority: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

/// A real HTTP/2 upstream (cleartext, prior knowledge) on loopback: the
/// `h2` crate on a tokio runtime of its own thread. By path:
/// - `/stream`: answers at once and echoes each DATA as it comes (a
///   bidirectional stream), then trailers `grpc-status: 0`;
/// - `/refuse-once`: refuses the first such stream (RST_STREAM
///   REFUSED_STREAM), answers the next ones as the default;
/// - `/reset`: resets the stream (RST_STREAM INTERNAL_ERROR);
/// - `/goaway`: answered as the default, and its connection starts a
///   graceful shutdown (GOAWAY; the streams it carries finish);
/// - anything else: reads the request whole, answers 200 (or `x-status`)
///   with the request body (or `hello from h2`), `x-upstream: h2`, and
///   trailers `grpc-status: 0` when the request said `te: trailers`.
///
/// Every request is recorded.
pub struct H2Upstream {
    pub addr: SocketAddr,
    pub received: Arc<std::sync::Mutex<Vec<H2Received>>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl H2Upstream {
    pub fn start() -> H2Upstream {
        Self::start_with(None)
    }

    /// Started with `SETTINGS_MAX_CONCURRENT_STREAMS` of `max_streams`
    /// (none: h2's default, no limit).
    pub fn start_with(max_streams: Option<u32>) -> H2Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the HTTP/2 upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, c) = (received.clone(), connections.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (r, refused) = (r.clone(), refused.clone());
                    tokio::spawn(async move {
                        let mut b = h2::server::Builder::new();
                        if let Some(n) = max_streams {
                            b.max_concurrent_streams(n);
                        }
                        let Ok(mut conn) = b.handshake(tcp).await else {
                            return;
                        };
                        let goaway = Arc::new(tokio::sync::Notify::new());
                        loop {
                            tokio::select! {
                                next = conn.accept() => match next {
                                    Some(Ok((req, respond))) => {
                                        if req.uri().path() == "/goaway" {
                                            goaway.notify_one();
                                        }
                                        tokio::spawn(serve_h2(req, respond, r.clone(), refused.clone()));
                                    }
                                    _ => break,
                                },
                                () = goaway.notified() => conn.graceful_shutdown(),
                            }
                        }
                    });
                }
            });
        });
        H2Upstream {
            addr,
            received,
            connections,
        }
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The `i`-th request received.
    pub fn request(&self, i: usize) -> H2Received {
        self.received.lock().unwrap_or_else(|p| p.into_inner())[i].clone()
    }
}

async fn serve_h2(
    req: http::Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    received: Arc<std::sync::Mutex<Vec<H2Received>>>,
    refused: Arc<std::sync::atomic::AtomicBool>,
) {
    let (parts, mut body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut record = H2Received {
        method: parts.method.to_string(),
        path: path.clone(),
        authority: parts.uri.authority().map(|a| a.to_string()).unwrap_or_default(),
        headers: parts.headers.clone(),
        body: Vec::new(),
        trailers: None,
    };
    if path == "/reset" {
        received.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        return;
    }
    if path == "/refuse-once" && !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
        received.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    if path == "/stream" {
        let head = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .expect("a response");
        let Ok(mut send) = respond.send_response(head, false) else {
            return;
        };
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
            record.body.extend_from_slice(&d);
            if send.send_data(d, false).is_err() {
                return;
            }
        }
        record.trailers = body.trailers().await.ok().flatten();
        received.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        let _ = send.send_trailers(trailers);
        return;
    }
    let Ok((data, t)) = read_body(body).await else {
        return;
    };
    record.body = data.clone();
    record.trailers = t;
    let te_trailers = parts.headers.get("te").is_some_and(|v| v == "trailers");
    let status: u16 = parts
        .headers
        .get("x-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(200);
    received.lock().unwrap_or_else(|p| p.into_inner()).push(record);
    let payload = if data.is_empty() {
        Bytes::from_static(b"hello from h2")
    } else {
        Bytes::from(data)
    };
    let mut head = http::Response::builder()
        .status(status)
        .header("x-upstream", "h2");
    if !te_trailers {
        head = head.header("content-length", payload.len());
    }
    let Ok(mut send) = respond.send_response(head.body(()).expect("a response"), false) else {
        return;
    };
    if te_trailers {
        let _ = send.send_data(payload, false);
        let _ = send.send_trailers(trailers);
    } else {
        let _ = send.send_data(payload, true);
    }
}

/// A raw HTTP/2 client that writes frames by hand (header blocks as HPACK
/// literals, names as given: upper case, connection-specific fields, bytes
/// HTTP/2 forbids), to see what weft does with what a well-behaved client
/// library would never send.
pub struct RawH2 {
    s: std::net::TcpStream,
}

/// A frame as read: type, flags, stream id, payload.
pub type Frame = (u8, u8, u32, Vec<u8>);

/// The frame types the raw client looks at.
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut n: usize) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of literal fields without indexing (no Huffman).
pub fn header_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, n.len());
        out.extend_from_slice(n);
        hpack_int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v);
    }
    out
}

impl RawH2 {
    /// Connects with prior knowledge: preface, empty SETTINGS, and the
    /// server's SETTINGS acknowledged.
    pub fn connect(addr: SocketAddr) -> RawH2 {
        let s = std::net::TcpStream::connect(addr).expect("connect to weft");
        s.set_read_timeout(Some(crate::IO_TIMEOUT)).expect("timeout");
        // A flood that weft stops reading must not hang the test.
        s.set_write_timeout(Some(crate::IO_TIMEOUT)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        let mut c = RawH2 { s };
        c.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        c.frame(SETTINGS, 0, 0, &[]);
        c
    }

    fn write(&mut self, b: &[u8]) {
        use std::io::Write;
        let _ = self.s.write_all(b);
    }

    /// Writes one frame.
    pub fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.write(&f);
    }

    /// A HEADERS frame with END_HEADERS (and END_STREAM when `end`).
    pub fn headers(&mut self, stream: u32, fields: &[(&[u8], &[u8])], end: bool) {
        self.frame(
            HEADERS,
            0x4 | if end { 0x1 } else { 0 },
            stream,
            &header_block(fields),
        );
    }

    /// A DATA frame.
    pub fn data(&mut self, stream: u32, payload: &[u8], end: bool) {
        self.frame(0, if end { 0x1 } else { 0 }, stream, payload);
    }

    /// Reads the next frame, acknowledging SETTINGS on the way; `None`
    /// when the connection ended (or nothing came within the bound).
    pub fn read_frame(&mut self) -> Option<Frame> {
        use std::io::Read;
        loop {
            let mut head = [0u8; 9];
            self.s.read_exact(&mut head).ok()?;
            let n = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let mut payload = vec![0u8; n];
            self.s.read_exact(&mut payload).ok()?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if head[3] == SETTINGS && head[4] & 1 == 0 {
                self.frame(SETTINGS, 1, 0, &[]);
                continue;
            }
            return Some((head[3], head[4], stream, payload));
        }
    }

    /// Reads frames until one on `stream` of a kind in `kinds` (or a
    /// GOAWAY); returns it.
    pub fn until(&mut self, stream: u32, kinds: &[u8]) -> Option<Frame> {
        loop {
            let f = self.read_frame()?;
            if f.0 == GOAWAY || (f.2 == stream && kinds.contains(&f.0)) {
                return Some(f);
            }
        }
    }

    /// True once weft closed the connection (reading to its end).
    pub fn closed(&mut self) -> bool {
        use std::io::Read;
        let mut sink = [0u8; 4096];
        loop {
            match self.s.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
