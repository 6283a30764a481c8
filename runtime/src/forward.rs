//! The forward step of one request: route, cluster and endpoint, the
//! attempts on an upstream connection (pooled, retried when stale), the
//! full-duplex upload, and the response streamed back; every wait bounded.
//! The HTTP/1 session (`downstream`) hands it each request and takes back
//! what becomes of the connection ([`Next`]).

use crate::io::{read_more, write_one, write_two, Peek, Stream, READ_CHUNK};
use crate::reply::{reply_error, Next};
use crate::state::{Counted, Tracker, Worker};
use crate::timer::{within, Deadline};
use crate::upstream::{connect, Endpoint, UpIo};
use bytes::{Bytes, BytesMut};
use monoio::io::{OwnedReadHalf, Splitable};
use std::time::Instant;
use weft_core::config::Listener;
use weft_core::{ErrorKind, ProxyError, RetryClass, Side};
use weft_proto::body::BodyReader as Body;
use weft_proto::encode::{encode_request, encode_response, RequestOptions, ResponseOptions};
use weft_proto::{parse_response, BodyFraming, Limits, RequestHead, ResponseHead};
/// Limits on response heads from upstreams.
const RESPONSE_LIMITS: Limits = Limits {
    max_request_line: 8 * 1024,
    max_head_bytes: 64 * 1024,
    max_headers: 256,
};

/// Methods that may be repeated without changing the outcome (RFC 9110 §9.2.2).
fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// Why an attempt failed before a response head reached the client: the
/// error (with its retry class), and the client connection's fate.
struct Failed {
    error: ProxyError,
    /// The client connection must be closed (its body is half-read).
    close: bool,
}

impl Failed {
    /// The client's body broke off or was malformed (400), or stalled
    /// (`kind` DownstreamBodyTimeout, 408): answer and close.
    fn downstream_body(kind: ErrorKind) -> Self {
        Failed {
            error: ProxyError::new(kind),
            close: true,
        }
    }

    /// Connecting failed (refused, unreachable, timed out): nothing was sent.
    fn connect(error: ProxyError) -> Self {
        Failed { error, close: false }
    }

    /// The client went away before the response: nothing more to send.
    fn client_closed() -> Self {
        Failed {
            error: ProxyError::new(ErrorKind::DownstreamClosed),
            close: true,
        }
    }

    /// The upstream's response head cannot be taken; `close`: the client
    /// connection must close too (its body is half-read).
    fn malformed(close: bool) -> Self {
        Failed {
            error: ProxyError::new(ErrorKind::UpstreamMalformed),
            close,
        }
    }

    /// The upstream connection failed before a response head; `stale`:
    /// nothing of the request can have been used (it was whole, nothing came
    /// back), so it may go again on a fresh connection if it was a reused one.
    fn upstream_gone(stale: bool, close: bool) -> Self {
        let error = ProxyError::new(ErrorKind::UpstreamReset);
        Failed {
            error: if stale { error.on_stale_connection() } else { error },
            close,
        }
    }
}

/// Forwards one request and its response, and writes its outcome record
/// when it ends. `started`: when its head arrived (the route timeout counts
/// from there).
pub(crate) async fn exchange<S: Stream>(
    w: &Worker,
    l: &Listener,
    client: &mut S,
    cbuf: &mut BytesMut,
    req: &RequestHead,
    peer_ip: &str,
    started: Instant,
) -> Next {
    let t = &mut Tracker::new(w, started);
    t.o.bytes_in = req.raw.len() as u64;
    let has_body = req.framing != BodyFraming::None;
    let path = if req.path.is_empty() { "/" } else { req.path() };
    let picked = l
        .routes
        .find(req.host(), path, req.method(), |n| req.header(n))
        .ok_or(ErrorKind::NoRoute)
        .and_then(|route| {
            let c = w.pick_cluster(&route.target);
            let ep = w.pick_endpoint(c).ok_or(ErrorKind::NoEndpoint)?;
            Ok((route, &w.config.clusters[c], ep))
        });
    let (route, cluster, ep) = match picked {
        Ok(picked) => picked,
        Err(kind) => return Box::pin(reply_error(client, t, ProxyError::new(kind), has_body, req)).await,
    };
    t.o.endpoint = Some(ep.addr);
    let _in_flight = Counted::new(&ep.in_flight);
    let send_continue = req.expect_continue && has_body && cbuf.is_empty();
    let mut out = BytesMut::new();
    let opts = RequestOptions {
        client_ip: peer_ip,
        proto: "http",
        default_host: &ep.authority,
    };
    encode_request(req, &opts, &mut out);
    let head = out.freeze();
    let mut body = Body::new(req.framing);
    let first = match body.take(cbuf) {
        Ok(b) => b,
        Err(_) => {
            let e = ProxyError::new(ErrorKind::DownstreamBodyError);
            return Box::pin(reply_error(client, t, e, true, req)).await;
        }
    };
    t.o.bytes_in += first.len() as u64;

    let mut ubuf = BytesMut::new();
    // Everything up to the response head, within the route's timeout. On
    // timeout the upstream connection is dropped, never pooled.
    let deadline = started + route.timeout;
    let forwarded = within(w.timers.at(deadline), async {
        let (up, mut reused) = match ep.checkout(&cluster.pool, Instant::now()) {
            Some(s) => (s, true),
            None => (
                connect(w, ep.addr, cluster.connect_timeout)
                    .await
                    .map_err(Failed::connect)?,
                false,
            ),
        };
        const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        if send_continue {
            if write_one(client, Bytes::from_static(CONTINUE)).await.is_err() {
                return Err(Failed::client_closed());
            }
            t.o.bytes_out += CONTINUE.len() as u64;
        }
        let mut up = up;
        loop {
            t.o.attempts += 1;
            match attempt(
                l,
                client,
                cbuf,
                up,
                &mut ubuf,
                req,
                head.clone(),
                first.clone(),
                &mut body,
                t,
            )
            .await
            {
                Ok(answer) => {
                    t.o.upstream_at = Some(Instant::now());
                    return Ok(answer);
                }
                Err(f)
                    if reused
                        && f.error.retry == RetryClass::StaleConnection
                        && f.error.may_retry(idempotent(req.method())) =>
                {
                    // A pooled connection the upstream had already closed:
                    // the request got no answer, had no further body, and
                    // repeating it cannot do harm.
                    up = connect(w, ep.addr, cluster.connect_timeout)
                        .await
                        .map_err(Failed::connect)?;
                    reused = false;
                    ubuf.clear();
                }
                Err(f) => return Err(f),
            }
        }
    })
    .await;
    let (up, res) = match forwarded {
        Some(Ok(answer)) => answer,
        // Nobody to answer: close (the upstream connection is dropped).
        Some(Err(f)) if f.error.kind == ErrorKind::DownstreamClosed => {
            t.o.fail(f.error.code(), Side::Downstream);
            return Next::Close;
        }
        Some(Err(f)) => return Box::pin(reply_error(client, t, f.error, f.close || !body.done(), req)).await,
        None => {
            let e = ProxyError::new(ErrorKind::UpstreamTimeout);
            return Box::pin(reply_error(client, t, e, !body.done(), req)).await;
        }
    };
    respond(
        w,
        l,
        cluster.read_timeout,
        client,
        up,
        ubuf,
        req,
        res,
        ep,
        &cluster.pool,
        t,
    )
    .await
}

/// An upstream connection after the response head: whole (poolable once
/// the body is read), or only its read half when the upload was cut short
/// by an early answer.
pub(crate) enum UpConn {
    Whole(UpIo),
    ReadOnly(OwnedReadHalf<UpIo>),
}

impl UpConn {
    async fn read_more(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            UpConn::Whole(s) => read_more(s, buf).await,
            UpConn::ReadOnly(r) => read_more(r, buf).await,
        }
    }
}

/// Sends the request (head, body) and reads the final response head.
///
/// Full duplex: while a request body streams up, weft also reads what the
/// upstream sends. An upstream that answers before the upload ends (413,
/// or a reply it streams at once) gets its answer to the client; the
/// upload stops, the client connection closes after the response and the
/// upstream connection is not pooled.
#[allow(clippy::too_many_arguments)]
async fn attempt<S: Stream>(
    l: &Listener,
    client: &mut S,
    cbuf: &mut BytesMut,
    mut up: UpIo,
    ubuf: &mut BytesMut,
    req: &RequestHead,
    head: Bytes,
    first: Bytes,
    body: &mut Body,
    t: &mut Tracker<'_>,
) -> Result<(UpConn, ResponseHead), Failed> {
    let body_was_whole = body.done();
    if write_two(&mut up, head, first).await.is_err() {
        return Err(Failed::upstream_gone(body_was_whole, false));
    }
    if !body.done() {
        return Box::pin(duplex(l, client, cbuf, up, ubuf, req, body, t)).await;
    }
    let res = response_head(client, cbuf, &mut up, ubuf, req, t, body_was_whole).await?;
    Ok((UpConn::Whole(up), res))
}

/// The upload and the wait for the answer at once (see [`attempt`]).
#[allow(clippy::too_many_arguments)]
async fn duplex<S: Stream>(
    l: &Listener,
    client: &mut S,
    cbuf: &mut BytesMut,
    up: UpIo,
    ubuf: &mut BytesMut,
    req: &RequestHead,
    body: &mut Body,
    t: &mut Tracker<'_>,
) -> Result<(UpConn, ResponseHead), Failed> {
    let timers = &t.worker().timers;
    let (mut r, mut wr) = up.into_split();
    let mut sent = 0u64;
    let upload = async {
        while !body.done() {
            match within(timers.after(l.idle_timeout), read_more(client, cbuf)).await {
                Some(Ok(n)) if n > 0 => {}
                Some(_) => return Err(Failed::downstream_body(ErrorKind::DownstreamBodyError)),
                None => return Err(Failed::downstream_body(ErrorKind::DownstreamBodyTimeout)),
            }
            let piece = body
                .take(cbuf)
                .map_err(|_| Failed::downstream_body(ErrorKind::DownstreamBodyError))?;
            sent += piece.len() as u64;
            if write_one(&mut wr, piece).await.is_err() {
                // The upstream may have answered before it stopped reading.
                return Ok(false);
            }
        }
        Ok(true)
    };
    // Reads until a final response head is whole in `ubuf` (interim ones
    // are dropped: weft answered any 100-continue itself); never dropped
    // while a read is in flight unless the connection is given up.
    let answer = async {
        loop {
            match parse_response(ubuf, &RESPONSE_LIMITS, req.is_head()) {
                Ok(Some(res)) if res.is_informational() && res.status != 101 => continue,
                Ok(Some(res)) => return Ok(res),
                Ok(None) => {}
                Err(_) => return Err(Failed::malformed(true)),
            }
            match read_more(&mut r, ubuf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(Failed::upstream_gone(false, true)),
            }
        }
    };
    // Boxed so that it can end (and release the read half) before the
    // read half moves on.
    let mut answer = Box::pin(answer);
    let early = {
        // Dropped at the end of this block: the upload stops (its reads
        // and writes cancelled) when the answer came first.
        let mut upload = std::pin::pin!(upload);
        monoio::select! {
            done = &mut upload => match done {
                Ok(true) => None,
                // The upstream stopped reading: its answer, if it sent one.
                Ok(false) => Some(answer.as_mut().await),
                Err(f) => return Err(f),
            },
            res = answer.as_mut() => Some(res),
        }
    };
    t.o.bytes_in += sent;
    match early.transpose()? {
        // The upload was cut short: the rest of the response comes on the
        // read half; the client connection closes after it.
        Some(res) => {
            drop(answer);
            drop(wr);
            Ok((UpConn::ReadOnly(r), res))
        }
        None => {
            let res = answer.as_mut().await?;
            drop(answer);
            let up = r.reunite(wr).map_err(|_| Failed::upstream_gone(false, false))?;
            Ok((UpConn::Whole(up), res))
        }
    }
}

/// Reads the final response head, forwarding interim ones to an HTTP/1.1
/// client and watching the client for a close while the upstream takes
/// its time.
#[allow(clippy::too_many_arguments)]
async fn response_head<S: Stream>(
    client: &mut S,
    cbuf: &BytesMut,
    up: &mut UpIo,
    ubuf: &mut BytesMut,
    req: &RequestHead,
    t: &mut Tracker<'_>,
    body_was_whole: bool,
) -> Result<ResponseHead, Failed> {
    let mut informational = false;
    loop {
        match parse_response(ubuf, &RESPONSE_LIMITS, req.is_head()) {
            Ok(Some(res)) if res.is_informational() && res.status != 101 => {
                informational = true;
                // HTTP/1.0 clients do not get interim responses.
                if req.minor == 1 {
                    match write_interim(client, &res, false).await {
                        Ok(n) => t.o.bytes_out += n as u64,
                        Err(_) => return Err(Failed::client_closed()),
                    }
                }
                continue;
            }
            Ok(Some(res)) => return Ok(res),
            Ok(None) => {}
            Err(_) => return Err(Failed::malformed(false)),
        }
        // Watch the client only when no pipelined bytes of it are buffered:
        // its end of stream then means it gave up on this request.
        let watch = cbuf.is_empty();
        let grace = t.worker().timers.at(t.o.head_at + WATCH_AFTER);
        match read_upstream(up, ubuf, client, watch, grace).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                let retryable = body_was_whole && ubuf.is_empty() && !informational;
                return Err(Failed::upstream_gone(retryable, false));
            }
            Err(ClientGone) => return Err(Failed::client_closed()),
        }
    }
}

/// The client closed (or reset) its connection.
struct ClientGone;

/// How long after a request's head weft waits for the upstream's answer
/// before it also watches the client for a close: most answers come sooner,
/// and then the watch costs nothing (no poll operation, only a deadline).
const WATCH_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads more of the upstream's answer into `ubuf`. Meanwhile, when `watch`
/// is set, notices a client that closes its connection: the attempt is then
/// abandoned (the caller drops the upstream connection), as nginx does with
/// its 499.
async fn read_upstream<S: Stream>(
    up: &mut UpIo,
    ubuf: &mut BytesMut,
    client: &S,
    mut watch: bool,
    grace: Deadline<'_>,
) -> Result<std::io::Result<usize>, ClientGone> {
    let mut read = std::pin::pin!(read_more(up, ubuf));
    if watch {
        monoio::select! {
            r = &mut read => return Ok(r),
            _ = grace => {}
        }
    }
    loop {
        monoio::select! {
            r = &mut read => return Ok(r),
            ready = client.readable(false), if watch => match ready.map(|()| client.peek()) {
                Err(_) | Ok(Peek::Closed) => return Err(ClientGone),
                // The next request, pipelined: stop watching (its bytes stay
                // in the socket for the next exchange).
                Ok(Peek::Data) => watch = false,
                Ok(Peek::Nothing) => {}
            },
        }
    }
}

/// Writes an interim (1xx) response head to the client; `upgrade` for the
/// `101` that starts a tunnel.
/// Returns the bytes written.
async fn write_interim<S: Stream>(
    client: &mut S,
    res: &ResponseHead,
    upgrade: bool,
) -> std::io::Result<usize> {
    let mut out = BytesMut::new();
    let opts = ResponseOptions {
        framing: BodyFraming::None,
        close: false,
        keep_alive_10: false,
        upgrade,
    };
    encode_response(res, &opts, &mut out);
    let n = out.len();
    write_one(client, out.freeze()).await.map(|()| n)
}

/// Writes the response to the client, streaming its body, and pools the
/// upstream connection when it was read completely.
#[allow(clippy::too_many_arguments)]
async fn respond<S: Stream>(
    w: &Worker,
    l: &Listener,
    read_timeout: std::time::Duration,
    client: &mut S,
    mut up: UpConn,
    mut ubuf: BytesMut,
    req: &RequestHead,
    res: ResponseHead,
    ep: &Endpoint,
    pool: &weft_core::config::PoolSettings,
    t: &mut Tracker<'_>,
) -> Next {
    if res.status == 101 {
        if !req.upgrade {
            let e = ProxyError::new(ErrorKind::UpstreamMalformed);
            return Box::pin(reply_error(client, t, e, true, req)).await;
        }
        match write_interim(client, &res, true).await {
            Ok(n) => {
                t.o.status = Some(101);
                t.o.bytes_out += n as u64;
            }
            Err(_) => {
                t.o.fail("client-closed", Side::Downstream);
                return Next::Close;
            }
        }
        let UpConn::Whole(up) = up else {
            // A 101 to a request whose body was cut short: nothing to tunnel.
            return Next::Close;
        };
        return Next::Tunnel(up, ubuf);
    }
    let dechunk = req.minor == 0 && res.framing == BodyFraming::Chunked;
    let client_framing = if dechunk {
        BodyFraming::UntilClose
    } else {
        res.framing
    };
    // An upload cut short by an early answer leaves the client's body
    // unread: close after the response.
    let cut = matches!(up, UpConn::ReadOnly(_));
    let close = !req.keep_alive || client_framing == BodyFraming::UntilClose || w.draining.get() || cut;
    let opts = ResponseOptions {
        framing: client_framing,
        close,
        keep_alive_10: req.minor == 0 && !close,
        upgrade: false,
    };
    let mut out = BytesMut::with_capacity(res.raw.len() + 64);
    encode_response(&res, &opts, &mut out);
    let mut body = if dechunk {
        Body::dechunking()
    } else {
        Body::new(res.framing)
    };
    let Ok(first) = body.take(&mut ubuf) else {
        let e = ProxyError::new(ErrorKind::UpstreamMalformed);
        return Box::pin(reply_error(client, t, e, true, req)).await;
    };
    // Every wait below is bounded; after a timeout the upstream connection
    // is dropped (an operation was cancelled on it), never pooled.
    let timers = &t.worker().timers;
    // The client's write deadline counts from when the upstream answered.
    let answered = t.o.upstream_at.unwrap_or(t.o.head_at);
    let n = (out.len() + first.len()) as u64;
    let sent = within(
        timers.at(answered + l.write_timeout),
        write_two(client, out.freeze(), first),
    )
    .await;
    if !client_took(t, sent, n) {
        return Next::Close;
    }
    t.o.status = Some(res.status);
    let body_error = || ProxyError::new(ErrorKind::UpstreamBodyError).code();
    while !body.done() {
        match within(timers.after(read_timeout), up.read_more(&mut ubuf)).await {
            Some(Ok(n)) if n > 0 => {}
            // A close-delimited body ends here (and is never kept alive).
            Some(_) if body.until_close() => break,
            // The upstream broke off or went silent mid-body: close so
            // that the client cannot take the truncated body for whole.
            Some(_) => {
                t.o.fail(body_error(), Side::Upstream);
                return Next::Close;
            }
            None => {
                let e = ProxyError::new(ErrorKind::UpstreamReadTimeout);
                t.o.fail(e.code(), Side::Upstream);
                return Next::Close;
            }
        }
        let Ok(piece) = body.take(&mut ubuf) else {
            t.o.fail(body_error(), Side::Upstream);
            return Next::Close;
        };
        let n = piece.len() as u64;
        let sent = within(timers.after(l.write_timeout), write_one(client, piece)).await;
        if !client_took(t, sent, n) {
            // The client reads nothing (or left): close it and release
            // the upstream connection.
            return Next::Close;
        }
        if ubuf.is_empty() && ubuf.capacity() > 4 * READ_CHUNK {
            // Never let a slow stream grow the buffer: start a fresh one.
            ubuf = BytesMut::new();
        }
    }
    // `keep_alive` is false for close-delimited responses (weft-proto).
    if let (UpConn::Whole(up), true) = (up, res.keep_alive && ubuf.is_empty()) {
        ep.checkin(up, pool, Instant::now());
    }
    if cut {
        // The client may still be sending its body: read and drop it for a
        // while, so that closing does not reset the response away.
        Next::Linger
    } else if close {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// Accounts for a bounded write of `n` bytes to the client: true when it
/// went through; else the outcome says why (timeout, or the client left).
fn client_took(t: &mut Tracker<'_>, sent: Option<std::io::Result<()>>, n: u64) -> bool {
    let kind = match sent {
        Some(Ok(())) => {
            t.o.bytes_out += n;
            return true;
        }
        Some(Err(_)) => ErrorKind::DownstreamClosed,
        None => ErrorKind::DownstreamWriteTimeout,
    };
    t.o.fail(ProxyError::new(kind).code(), Side::Downstream);
    false
}
