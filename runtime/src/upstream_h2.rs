//! HTTP/2 connections to an endpoint (a cluster with `protocol =
//! "http2"`): few per endpoint and worker, each shared by the worker's
//! requests as streams. A request takes a stream on a connection that has
//! room under the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`, else a new
//! connection is opened. Each connection runs in a task of its own (h2's
//! connection state over a [`wire`](crate::wire)); once it ends (GOAWAY,
//! an error, a close) it takes no new streams and leaves the endpoint's
//! list, while the streams it already carries finish. A connection with no
//! stream for the pool's idle timeout is closed.

use crate::timer::Timers;
use crate::upstream::{connect, Dialer, Endpoint};
use crate::wire::{carry, wire};
use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;
use weft_core::config::{Cluster, PoolSettings};
use weft_core::{ErrorKind, ProxyError};

/// What a connection's task and the requests on it share.
struct Shared {
    /// Streams open on it.
    open: Cell<u32>,
    /// Since when it has had no stream open.
    idle_since: Cell<Instant>,
    /// The connection has ended: no new streams.
    ended: Cell<bool>,
    /// The upstream's SETTINGS have come (its stream limit is known).
    settled: Cell<bool>,
}

/// Streams a connection takes before the upstream's SETTINGS tell its
/// limit (h2 sends one at first and holds the rest until the limit is
/// known: they queue, and are never refused for it).
const UNSETTLED_STREAMS: usize = 100;

/// One HTTP/2 connection to an endpoint, in the endpoint's list.
pub(crate) struct H2Conn {
    send: SendRequest<Bytes>,
    shared: Rc<Shared>,
}

/// A stream's place on a connection: the handle to send the request on,
/// counted as open until dropped.
pub(crate) struct H2Stream {
    pub send: SendRequest<Bytes>,
    shared: Rc<Shared>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let open = self.shared.open.get().saturating_sub(1);
        self.shared.open.set(open);
        if open == 0 {
            self.shared.idle_since.set(Instant::now());
        }
    }
}

impl H2Stream {
    /// An answer came on this stream: the upstream's SETTINGS, which come
    /// before any answer, are known on its connection.
    pub(crate) fn answered(&self) {
        self.shared.settled.set(true);
    }

    /// The connection refused a new stream (GOAWAY, an error, its stream
    /// ids spent): it takes no more, and leaves the endpoint's list.
    pub(crate) fn connection_ended(&self) {
        self.shared.ended.set(true);
    }
}

/// The largest response head weft takes from an HTTP/2 upstream (as from
/// an HTTP/1 one).
const RESPONSE_HEAD_LIMIT: u32 = 64 * 1024;

impl H2Conn {
    /// Streams open on this connection now.
    pub(crate) fn open_streams(&self) -> u32 {
        self.shared.open.get()
    }

    fn stream(&self) -> H2Stream {
        self.shared.open.set(self.shared.open.get() + 1);
        H2Stream {
            send: self.send.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Whether it may carry one more stream now: it has not ended, has not
    /// been told GOAWAY (h2 then refuses new streams: asked without
    /// waiting), and is under the upstream's stream limit.
    fn has_room(&mut self) -> bool {
        if self.shared.ended.get() {
            return false;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(Err(_)) = self.send.poll_ready(&mut cx) {
            self.shared.ended.set(true);
            return false;
        }
        let limit = self.send.current_max_send_streams();
        if limit != 1 {
            // Only the upstream's SETTINGS move it from the initial one.
            self.shared.settled.set(true);
        }
        let limit = if self.shared.settled.get() {
            limit
        } else {
            UNSETTLED_STREAMS
        };
        (self.shared.open.get() as usize) < limit
    }
}

/// A connection being opened to an endpoint: the requests that found no
/// room wait for it instead of each opening one (a burst of first requests
/// then shares one connection, as HTTP/2 means).
#[derive(Default)]
pub(crate) struct Opening {
    done: Cell<bool>,
    waiters: std::cell::RefCell<Vec<std::task::Waker>>,
    /// The connection, once open.
    conn: std::cell::RefCell<Option<(SendRequest<Bytes>, Rc<Shared>)>>,
}

/// Ends an [`Opening`] however its opener ends (done, failed, or dropped
/// by a timeout): the endpoint forgets it and its waiters look again.
struct Opened<'a>(&'a Endpoint, Rc<Opening>);

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        self.0.h2_opening.borrow_mut().take();
        self.1.done.set(true);
        for w in self.1.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// A stream on a connection to `ep` with room; else, when another request
/// is opening a connection, on that one once it is open (if it has room);
/// else on a new connection (within the cluster's connect timeout;
/// `may_connect`: whether the cluster has room for one more connection,
/// else `Overflow`).
pub(crate) async fn stream(
    d: &Dialer<'_>,
    ep: &Endpoint,
    cluster: &Cluster,
    may_connect: impl FnOnce() -> bool,
) -> Result<H2Stream, ProxyError> {
    let mut waited = false;
    loop {
        {
            let mut conns = ep.h2.borrow_mut();
            conns.retain(|c| !c.shared.ended.get());
            if let Some(i) = conns.iter_mut().position(|c| c.has_room()) {
                return Ok(conns[i].stream());
            }
        }
        let opening = ep.h2_opening.borrow().clone();
        match opening {
            Some(op) if !waited => {
                waited = true;
                std::future::poll_fn(|cx| {
                    if op.done.get() {
                        return std::task::Poll::Ready(());
                    }
                    op.waiters.borrow_mut().push(cx.waker().clone());
                    std::task::Poll::Pending
                })
                .await;
                // The connection waited for takes this stream whatever its
                // provisional limit: before its SETTINGS h2 allows one
                // stream, and holds the others until the upstream's own
                // limit (then known) has room.
                let opened = op.conn.borrow().clone();
                if let Some((send, shared)) = opened.filter(|(_, sh)| !sh.ended.get()) {
                    let c = H2Conn { send, shared };
                    return Ok(c.stream());
                }
            }
            _ => break,
        }
    }
    if !may_connect() {
        return Err(ProxyError::new(ErrorKind::Overflow));
    }
    let op = Rc::new(Opening::default());
    *ep.h2_opening.borrow_mut() = Some(op.clone());
    let opened = Opened(ep, op);
    let c = Box::pin(open(d, ep, cluster)).await?;
    let s = c.stream();
    *opened.1.conn.borrow_mut() = Some((c.send.clone(), c.shared.clone()));
    ep.h2.borrow_mut().push(c);
    drop(opened);
    Ok(s)
}

/// Opens a connection to `ep` and starts its task.
async fn open(d: &Dialer<'_>, ep: &Endpoint, cluster: &Cluster) -> Result<H2Conn, ProxyError> {
    if cluster.tls.is_some() && ep.tls.borrow().is_none() {
        return Err(ProxyError::new(ErrorKind::ConnectFailed));
    }
    let io = connect(d, ep, cluster.connect_timeout).await?;
    if let crate::upstream::UpIo::Tls(t) = &io {
        if !t.is_h2() {
            // The endpoint did not take ALPN `h2`.
            let e = std::io::Error::other("the upstream did not agree to HTTP/2 (ALPN h2)");
            return Err(ProxyError::new(ErrorKind::ConnectFailed).caused_by(&e));
        }
    }
    let (wire, pump) = wire(BytesMut::new());
    // The handshake only queues the preface and SETTINGS on the wire: the
    // task below sends them.
    let handshake = h2::client::Builder::new()
        // No server push (weft never asks for it), and a bound on the
        // response heads it takes, as on HTTP/1.
        .enable_push(false)
        // One stream until the upstream's SETTINGS give its limit: a burst
        // that waited for this connection queues in h2 rather than have
        // streams over that limit refused.
        .initial_max_send_streams(1)
        .max_header_list_size(RESPONSE_HEAD_LIMIT)
        .initial_window_size(cluster.http2.stream_window)
        .initial_connection_window_size(cluster.http2.connection_window)
        .max_send_buffer_size(cluster.http2.stream_window as usize)
        .handshake::<_, Bytes>(wire)
        .await;
    let (send, conn) = handshake.map_err(|e| {
        ProxyError::new(ErrorKind::ConnectFailed).caused_by(&std::io::Error::other(e.to_string()))
    })?;
    let shared = Rc::new(Shared {
        open: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
        ended: Cell::new(false),
        settled: Cell::new(false),
    });
    let timers: Rc<Timers> = d.timers.clone();
    let write_timeout = cluster.read_timeout;
    let ended = shared.clone();
    monoio::spawn(async move {
        // Ended as soon as h2's connection is (GOAWAY done, an error, a
        // close), not only once its last bytes are out.
        let driver = async {
            let _ = conn.await;
            ended.ended.set(true);
        };
        carry(&timers, write_timeout, io, pump, driver).await;
        ended.ended.set(true);
    });
    Ok(H2Conn { send, shared })
}

/// Closes the connections of `ep` that have had no stream for the pool's
/// idle timeout (dropping the last handle lets h2 say GOAWAY and close).
pub(crate) fn evict_idle(ep: &Endpoint, pool: &PoolSettings, now: Instant) {
    ep.h2.borrow_mut().retain(|c| {
        let s = &c.shared;
        !s.ended.get() && (s.open.get() > 0 || now.duration_since(s.idle_since.get()) < pool.idle_timeout)
    });
}
