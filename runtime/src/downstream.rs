//! The HTTP/1.1 downstream session: one client connection. Reads request
//! heads (bounded by the idle and header timeouts, ended by a drain),
//! refuses what it cannot take, hands each request to the forward step
//! (`forward`), keeps the connection alive, pipelines, and tunnels after
//! an upgrade.

use crate::forward::exchange;
use crate::forward::Next;
use crate::io::{read_more, Stream, FIRST_READ, READ_CHUNK};
use crate::reply::{refuse, After};
use crate::state::{Admitted, Worker};
use crate::timer::{within, Timers};
use crate::upstream::UpIo;
use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;
use weft_core::config::Listener;
use weft_core::{ErrorKind, ProxyError};
use weft_proto::{parse_request, HeadError, Limits, Request, RequestHead};

enum HeadRead {
    Head(Box<RequestHead>),
    /// Clean end: the client closed, or idled out, between requests.
    Closed,
    Reject(HeadError),
    Timeout,
}

/// Serves one accepted client connection until it closes.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// `async fn` keeps its arguments twice in its state (once as passed, once
/// as bound), and this future lives as long as the connection, idle or not.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<S: Stream>(
    w: Rc<Worker>,
    li: usize,
    mut client: S,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> {
    async move {
        let _admitted = Admitted(&w.gates[li]);
        let l = &w.config.listeners[li];
        let limits = Limits {
            max_request_line: l.max_request_line,
            max_head_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
        };
        let peer_ip = peer.ip().to_string();
        let mut buf = BytesMut::new();
        loop {
            let idle_until = Instant::now() + l.idle_timeout;
            if buf.is_empty() {
                // Idle between requests: wait for data here, with no buffer and a
                // small future, so that idle keep-alive connections cost little.
                buf = BytesMut::new();
                // An idle wait also ends when the worker starts draining: then
                // the connection closes.
                let ready = within(w.timers.idle_until(idle_until), client.readable(true)).await;
                if !matches!(ready, Some(Ok(()))) {
                    return;
                }
            }
            // Boxed: the head reader's state exists only while a head arrives.
            let head = match Box::pin(read_head(&w, &mut client, &mut buf, idle_until, l, &limits)).await {
                HeadRead::Head(mut h) => {
                    if l.merge_slashes {
                        h.merge_slashes();
                    }
                    Request::H1(h)
                }
                HeadRead::Closed => return,
                // Boxed, as the exchange below: what a request needs lives on
                // the heap while it is served, so an idle connection's task
                // stays small.
                HeadRead::Reject(e) => {
                    let kind = ErrorKind::BadRequest {
                        status: e.status(),
                        code: e.code(),
                    };
                    let msg = e.to_string();
                    if let After::Linger =
                        Box::pin(refuse(&w, &mut client, ProxyError::new(kind), &msg)).await
                    {
                        Box::pin(linger(&mut client, &w.timers)).await;
                    }
                    return;
                }
                HeadRead::Timeout => {
                    let e = ProxyError::new(ErrorKind::HeaderTimeout);
                    let msg = e.to_string();
                    if let After::Linger = Box::pin(refuse(&w, &mut client, e, &msg)).await {
                        Box::pin(linger(&mut client, &w.timers)).await;
                    }
                    return;
                }
            };
            let started = Instant::now();
            let next = Box::pin(exchange(&w, l, client, &mut buf, &head, &peer_ip, started)).await;
            client = match next {
                Next::KeepAlive(c) if !w.draining.get() => c,
                Next::KeepAlive(_) | Next::Close => return,
                // After the request's outcome is recorded: the lingering
                // read is no part of the exchange.
                Next::Linger(mut c) => {
                    Box::pin(linger(&mut c, &w.timers)).await;
                    return;
                }
                Next::Tunnel(t) => {
                    let (c, up, up_buf) = *t;
                    Box::pin(tunnel(c, buf, up, up_buf)).await;
                    return;
                }
            };
        }
    }
}

/// Reads one request head. Until its first byte arrives, `idle_until`
/// bounds the wait (and the worker's drain ends it); from the first byte
/// on, the whole head must arrive within the listener's header timeout.
async fn read_head<S: Stream>(
    w: &Worker,
    client: &mut S,
    buf: &mut BytesMut,
    idle_until: Instant,
    l: &Listener,
    limits: &Limits,
) -> HeadRead {
    let mut started = !buf.is_empty();
    let mut deadline = if started {
        Instant::now() + l.header_timeout
    } else {
        idle_until
    };
    loop {
        if !buf.is_empty() {
            match parse_request(buf, limits) {
                Ok(Some(h)) => return HeadRead::Head(Box::new(h)),
                Ok(None) => {}
                Err(e) => return HeadRead::Reject(e),
            }
        } else if buf.capacity() == 0 {
            *buf = BytesMut::with_capacity(FIRST_READ);
        }
        // Before the first byte the connection is idle: a drain closes it.
        let until = if started {
            w.timers.at(deadline)
        } else {
            w.timers.idle_until(deadline)
        };
        match within(until, read_more(client, buf)).await {
            Some(Ok(0)) | Some(Err(_)) => return HeadRead::Closed,
            Some(Ok(_)) => {
                if !started {
                    started = true;
                    deadline = Instant::now() + l.header_timeout;
                }
            }
            None if started => return HeadRead::Timeout,
            None => return HeadRead::Closed,
        }
    }
}

/// After `101 Switching Protocols`: copy raw bytes both ways until both
/// sides have closed.
async fn tunnel<S: Stream>(client: S, cbuf: BytesMut, up: UpIo, ubuf: BytesMut) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    if !cbuf.is_empty() && uw.write_all(cbuf.freeze()).await.0.is_err() {
        return;
    }
    if !ubuf.is_empty() && cw.write_all(ubuf.freeze()).await.0.is_err() {
        return;
    }
    monoio::join!(pipe(&mut cr, &mut uw), pipe(&mut ur, &mut cw));
}

async fn pipe<R: AsyncReadRent, W: AsyncWriteRent>(r: &mut R, w: &mut W) {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let (res, b) = r.read(buf).await;
        buf = b;
        match res {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        let (res, b) = w.write_all(buf).await;
        buf = b;
        buf.clear();
        if res.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// Most a lingering close reads and discards.
const LINGER_BYTES: usize = 1024 * 1024;

/// Closes after an error answer without losing it: sends FIN, then reads
/// and discards what the client still sends (bounded in time and bytes), so
/// that closing with unread data does not reset the connection before the
/// client has read the answer.
async fn linger<S: Stream>(client: &mut S, timers: &Timers) {
    let _ = client.shutdown().await;
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    let mut scratch = Vec::with_capacity(4096);
    let mut total = 0;
    while total < LINGER_BYTES {
        match within(timers.at(deadline), client.read(scratch)).await {
            Some((Ok(n), b)) if n > 0 => {
                total += n;
                scratch = b;
                scratch.clear();
            }
            _ => return,
        }
    }
}
