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
        bounded(&self.rt, async {
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
        })
    }

    /// Reads the responses of several streams at once (each stream's data
    /// is read as it comes, so that none holds the connection's window).
    pub fn finish_all(&mut self, pending: Vec<ResponseFuture>) -> Vec<Result<H2Response, h2::Error>> {
        bounded(&self.rt, async {
            let tasks: Vec<_> = pending
                .into_iter()
                .map(|res| {
                    tokio::spawn(async move {
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
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("a reading task"));
            }
            out
        })
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
