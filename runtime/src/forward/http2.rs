//! The forward step for a request that came on an HTTP/2 stream.
//!
//! The policy is HTTP/1's, shared with it: route, endpoint, attempts and
//! retries, deadline, one outcome record per stream. What differs is the
//! client's side, spoken as HTTP/2: the request body comes in DATA frames
//! (framed for the HTTP/1.1 upstream on the way: chunked when the client
//! gave no length, trailers in the last chunk), the response head goes out
//! translated (RFC 9113 §8.2.2), its body as DATA within the client's
//! flow-control window, weft's own answers as HTTP/2 responses, and a
//! client's RST_STREAM is a client that gave up (the attempt is dropped).
//! A stream failure ends that stream only.

use super::{attempts, final_head, open, replayable, send_start, within, Ctx, Failed, Upstream, Waiting};
use crate::io::{read_more, write_one};
use crate::state::{Generation, Worker};
use crate::timer::Timers;
use crate::upstream::Conn;
use ::h2::server::SendResponse;
use ::h2::{Reason, RecvStream, SendStream};
use bytes::{BufMut, Bytes, BytesMut};
use monoio::io::Splitable;
use std::cell::Cell;
use std::future::poll_fn;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};
use weft_core::config::Protocol;
use weft_core::route::RetryPolicy;
use weft_core::{ErrorKind, ProxyError, Side};
use weft_proto::body::{chunk_head, last_chunk, BodyReader as Body, CHUNK_END};
use weft_proto::message::h2_response;
use weft_proto::{BodyFraming, BodyLength, Request, ResponseHead};

/// One HTTP/2 request as the session hands it over.
pub(crate) struct Stream {
    pub req: http::Request<RecvStream>,
    pub respond: SendResponse<Bytes>,
}

/// The client's side of one stream: where the response goes, and where
/// the request body comes from.
pub(super) struct Client {
    pub respond: SendResponse<Bytes>,
    pub body: Source,
}

/// The request body of a stream.
pub(super) struct Source {
    recv: RecvStream,
    /// The body has no length: it goes up chunked.
    chunked: bool,
}

impl Waiting for SendResponse<Bytes> {
    async fn interim(&mut self, x: &mut Ctx<'_>, res: &ResponseHead) -> Result<(), Failed> {
        // An interim response HTTP/2 cannot carry is dropped.
        if let Ok(head) = h2_response(res) {
            self.send_informational(head)
                .map_err(|_| Failed::client_closed())?;
            x.t.o.bytes_out += res.raw.len() as u64;
        }
        Ok(())
    }

    async fn gone(&mut self) {
        // A reset (or the connection's failure) ends the wait.
        let _ = poll_fn(|cx| self.poll_reset(cx)).await;
    }
}

/// The body's length as the stream's head tells it: none when the HEADERS
/// frame ended the stream, else its `content-length` (h2 holds the DATA to
/// it), else unknown.
fn body_length(parts: &http::request::Parts, recv: &RecvStream) -> BodyLength {
    if recv.is_end_stream() {
        return BodyLength::Empty;
    }
    parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map_or(BodyLength::Unknown, BodyLength::Exact)
}

/// Serves one HTTP/2 stream: forwards its request to an HTTP/1.1 upstream
/// and its response back, and writes its outcome record.
pub(crate) async fn exchange(
    w: Rc<Worker>,
    gen: Rc<Generation>,
    li: usize,
    s: Stream,
    peer_ip: Rc<str>,
    identity: Option<Rc<str>>,
) {
    let (w, gen) = (&*w, &*gen);
    let l = &gen.config.listeners[li];
    let started = Instant::now();
    let (parts, recv) = s.req.into_parts();
    let length = body_length(&parts, &recv);
    let mut client = Client {
        respond: s.respond,
        body: Source {
            recv,
            chunked: length == BodyLength::Unknown,
        },
    };
    let req = match Request::from_fields(parts, length) {
        Ok(req) => req,
        Err(e) => {
            let kind = ErrorKind::BadRequest {
                status: 400,
                code: "bad-request",
            };
            let mut t = crate::state::Tracker::new(w, gen, li, started);
            let msg = format!("the request head was refused: {e:?}");
            reply(&mut t, &mut client.respond, ProxyError::new(kind), &msg, false);
            return;
        }
    };
    let mut x = Ctx::new(w, l, gen, &req, &peer_ip, started);
    x.identity = identity;
    x.t.o.bytes_in = req.wire_len() as u64;
    let (route, c, deadline) = match x.route(started) {
        Ok(routed) => routed,
        Err(kind) => return fail(&mut x, &mut client.respond, ProxyError::new(kind)),
    };
    let whole = client.body.recv.is_end_stream();
    let to_h2 = gen.config.clusters[c].protocol == Protocol::Http2;
    if to_h2 {
        // The payload goes up as DATA: no HTTP/1 framing.
        client.body.chunked = false;
    }
    let mut gathered = Gathered {
        data: Bytes::new(),
        trailers: None,
        whole,
    };
    if !whole && x.req.expect_continue() {
        // weft answers the client's `expect` itself (it does not go up).
        let mut go_on = http::Response::new(());
        *go_on.status_mut() = http::StatusCode::CONTINUE;
        if client.respond.send_informational(go_on).is_err() {
            return fail(
                &mut x,
                &mut client.respond,
                ProxyError::new(ErrorKind::DownstreamClosed),
            );
        }
        x.continued = true;
    }
    if !whole && replayable(&req, &route.retry, to_h2) {
        // Kept whole for a retry, if it is small enough; no endpoint is
        // held meanwhile.
        let limit = route.retry.max_replay_bytes;
        match within(w.timers.at(deadline), client.body.gather(&mut x, limit)).await {
            Some(Ok(g)) => gathered = g,
            Some(Err(f)) => return failed(&mut x, &mut client.respond, f),
            None => {
                let f = Failed::downstream_body(ErrorKind::DownstreamBodyTimeout);
                return failed(&mut x, &mut client.respond, f);
            }
        }
    }
    let mut to = match x.first_endpoint(c) {
        Ok(to) => to,
        Err(kind) => return fail(&mut x, &mut client.respond, ProxyError::new(kind)),
    };
    if to_h2 {
        let sent = pin!(super::to_h2::from_h2(
            &mut x,
            &mut client,
            (to, &route.retry),
            gathered,
            deadline
        ));
        return sent.await;
    }
    let head = x.head_for(&to);
    let rest = !gathered.whole;
    let first = client.body.framed_whole(&gathered);
    if rest {
        let sent = pin!(full_duplex(
            &mut x,
            &mut client,
            (to, &route.retry),
            (head, first),
            deadline
        ));
        return sent.await;
    }
    let forwarded = {
        let tries = pin!(attempts(
            &mut x,
            &mut client.respond,
            (&mut to, &route.retry),
            head,
            first
        ));
        within(w.timers.at(deadline), tries).await
    };
    match forwarded {
        Some(Ok((mut up, res))) => {
            if let Whole::Yes =
                respond_to(&mut x, &mut client.respond, &mut up.io, &mut up.buf, &res, to).await
            {
                if res.keep_alive {
                    up.release(to.ep, &to.cluster.pool, &x.w.dialer(), Instant::now());
                }
            }
        }
        Some(Err(f)) => failed(&mut x, &mut client.respond, f),
        None => {
            let f = x.timed_out();
            failed(&mut x, &mut client.respond, f)
        }
    }
}

impl Source {
    /// The next DATA of the request body, its flow-control window given
    /// back; `None` at its end. A stream the client reset or that broke the
    /// protocol is a broken-off body.
    pub(super) async fn data(&mut self) -> Result<Option<Bytes>, Failed> {
        match self.recv.data().await {
            Some(Ok(d)) => {
                let _ = self.recv.flow_control().release_capacity(d.len());
                Ok(Some(d))
            }
            Some(Err(_)) => Err(Failed::downstream_body(ErrorKind::DownstreamBodyError)),
            None => Ok(None),
        }
    }

    /// The trailers after the body's last DATA, if the client sent any.
    pub(super) async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, Failed> {
        self.recv
            .trailers()
            .await
            .map_err(|_| Failed::downstream_body(ErrorKind::DownstreamBodyError))
    }

    /// The end of the body for an HTTP/1.1 upstream: the last chunk, with
    /// the client's trailers, when it goes chunked; nothing else.
    async fn end(&mut self) -> Result<Bytes, Failed> {
        if !self.chunked {
            return Ok(Bytes::new());
        }
        let trailers = self.trailers().await?;
        Ok(last_chunk_of(trailers.as_ref()))
    }

    /// `piece` as it goes to an HTTP/1.1 upstream: in a chunk when the body
    /// has no length.
    fn framed(&self, piece: Bytes) -> Bytes {
        if !self.chunked || piece.is_empty() {
            return piece;
        }
        let head = chunk_head(piece.len());
        let mut out = BytesMut::with_capacity(head.len() + piece.len() + CHUNK_END.len());
        out.put_slice(&head);
        out.put_slice(&piece);
        out.put_slice(CHUNK_END);
        out.freeze()
    }

    /// Reads the body on until it is whole or longer than `limit`.
    async fn gather(&mut self, x: &mut Ctx<'_>, limit: usize) -> Result<Gathered, Failed> {
        let mut kept = BytesMut::new();
        while kept.len() <= limit {
            let Some(d) = self.data().await? else {
                let trailers = self.trailers().await?;
                return Ok(Gathered {
                    data: kept.freeze(),
                    trailers,
                    whole: true,
                });
            };
            x.t.o.bytes_in += d.len() as u64;
            kept.put_slice(&d);
        }
        Ok(Gathered {
            data: kept.freeze(),
            trailers: None,
            whole: false,
        })
    }

    /// What was gathered, as it goes to an HTTP/1.1 upstream.
    fn framed_whole(&self, g: &Gathered) -> Bytes {
        let data = self.framed(g.data.clone());
        if !(self.chunked && g.whole) {
            return data;
        }
        let mut out = BytesMut::from(data);
        out.put_slice(&last_chunk_of(g.trailers.as_ref()));
        out.freeze()
    }
}

/// Trailer fields read from an HTTP/1 chunked body, as HTTP/2 trailers
/// (names in lower case; fields HTTP/2 cannot carry, or that belong to a
/// connection, are left out); none when there are none.
pub(super) fn trailer_map(fields: &[(Bytes, Bytes)]) -> Option<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for (n, v) in fields {
        let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(n), http::HeaderValue::from_bytes(v))
        else {
            continue;
        };
        if !matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "te"
                | "host"
        ) {
            map.append(name, value);
        }
    }
    (!map.is_empty()).then_some(map)
}

/// The last chunk of a chunked body, with `trailers`.
fn last_chunk_of(trailers: Option<&http::HeaderMap>) -> Bytes {
    let fields: Vec<(&[u8], &[u8])> = trailers
        .into_iter()
        .flatten()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect();
    last_chunk(&fields)
}

/// The start of a request body, read before an endpoint is picked.
pub(super) struct Gathered {
    /// The payload read.
    pub data: Bytes,
    /// The trailers, once it is whole.
    pub trailers: Option<http::HeaderMap>,
    /// The body is whole.
    pub whole: bool,
}

/// Answers with weft's own error for `e`.
pub(super) fn fail(x: &mut Ctx<'_>, client: &mut SendResponse<Bytes>, e: ProxyError) {
    if e.kind == ErrorKind::DownstreamClosed {
        x.t.o.fail(e.code(), Side::Downstream);
        return;
    }
    let msg = e.to_string();
    let head_only = x.req.is_head();
    reply(&mut x.t, client, e, &msg, head_only);
}

/// Answers a failed attempt (nobody to answer when the client is gone).
pub(super) fn failed(x: &mut Ctx<'_>, client: &mut SendResponse<Bytes>, f: Failed) {
    fail(x, client, f.error)
}

/// Writes one of weft's own answers on the stream and records it. The
/// body is a line: it goes out with the head, within any window.
fn reply(
    t: &mut crate::state::Tracker<'_>,
    client: &mut SendResponse<Bytes>,
    e: ProxyError,
    msg: &str,
    head_only: bool,
) {
    t.o.fail(e.code(), e.side());
    let status = e.status();
    let mut head = http::Response::new(());
    *head.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let h = head.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(msg.len() + 1),
    );
    if let Ok(code) = http::HeaderValue::from_str(e.code()) {
        h.insert("weft-error", code);
    }
    let Ok(mut send) = client.send_response(head, head_only) else {
        t.o.fail("client-closed", Side::Downstream);
        return;
    };
    t.o.status = Some(status);
    if !head_only {
        let mut body = BytesMut::with_capacity(msg.len() + 1);
        body.put_slice(msg.as_bytes());
        body.put_u8(b'\n');
        t.o.bytes_out += body.len() as u64;
        // Small: h2 sends it as the window allows; a stream reset drops it.
        let _ = send.send_data(body.freeze(), true);
    }
    // A request body still coming is refused when its RecvStream is
    // dropped: h2 resets the stream (CANCEL) after the answer.
}

/// Whether the response body went whole (the upstream connection may be
/// pooled) or was cut.
enum Whole {
    Yes,
    No,
}

/// How sending DATA on a stream ended.
pub(super) enum Sent {
    /// Handed to h2 whole.
    Yes,
    /// The peer gave no window for the time allowed.
    Stalled,
    /// The stream was reset (or the connection failed).
    Reset,
}

impl Sent {
    /// The error when the peer is the client.
    pub(super) fn client_error(&self) -> ProxyError {
        ProxyError::new(match self {
            Sent::Stalled => ErrorKind::DownstreamWriteTimeout,
            _ => ErrorKind::DownstreamClosed,
        })
    }
}

/// Sends `data` on a stream as the peer's window allows (`end`: it ends
/// the stream), waiting at most `wait` for each part of the window, so
/// that h2 never holds more of it than the window.
pub(super) async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    timers: &Timers,
    wait: Duration,
) -> Sent {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        // Usually the window has room at once: no wait, no timer.
        let mut n = send.capacity();
        if n == 0 {
            let granted = within(timers.after(wait), poll_fn(|cx| send.poll_capacity(cx))).await;
            n = match granted {
                Some(Some(Ok(n))) => n,
                Some(_) => return Sent::Reset,
                None => return Sent::Stalled,
            };
            if n == 0 {
                continue;
            }
        }
        let part = data.split_to(n.min(data.len()));
        if send.send_data(part, end && data.is_empty()).is_err() {
            return Sent::Reset;
        }
        if end && data.is_empty() {
            return Sent::Yes;
        }
    }
    if end && send.send_data(Bytes::new(), true).is_err() {
        return Sent::Reset;
    }
    Sent::Yes
}

/// Sends the upstream's response on the stream: the head translated, the
/// body de-framed into DATA within the client's window. Every wait is
/// bounded; after one timed out the upstream connection must be dropped.
async fn respond_to<R: monoio::io::AsyncReadRent>(
    x: &mut Ctx<'_>,
    client: &mut SendResponse<Bytes>,
    up: &mut R,
    ubuf: &mut BytesMut,
    res: &ResponseHead,
    to: Upstream<'_>,
) -> Whole {
    if res.status == 101 {
        // No upgrade over HTTP/2.
        failed(x, client, Failed::malformed());
        return Whole::No;
    }
    let Ok(head) = h2_response(res) else {
        failed(x, client, Failed::malformed());
        return Whole::No;
    };
    let mut body = if res.framing == BodyFraming::Chunked {
        Body::dechunking()
    } else {
        Body::new(res.framing)
    };
    let Ok(mut piece) = body.take(ubuf) else {
        failed(x, client, Failed::malformed());
        return Whole::No;
    };
    let timers = &x.w.timers;
    let write_timeout = x.l.write_timeout;
    x.head_started = true;
    let end = body.done() && piece.is_empty();
    let mut send = match client.send_response(head, end) {
        Ok(send) => send,
        Err(_) => {
            x.t.o.fail("client-closed", Side::Downstream);
            return Whole::No;
        }
    };
    x.t.o.status = Some(res.status);
    x.t.o.bytes_out += res.raw.len() as u64;
    if end {
        return Whole::Yes;
    }
    loop {
        let n = piece.len() as u64;
        // A chunked body's trailers (gRPC's status) follow its last DATA.
        let trailers = trailer_map(body.trailers());
        let end = body.done() && trailers.is_none();
        let mut sent = send_data(&mut send, piece, end, timers, write_timeout).await;
        if let (Sent::Yes, Some(t)) = (&sent, trailers) {
            if send.send_trailers(t).is_err() {
                sent = Sent::Reset;
            }
        }
        if !matches!(sent, Sent::Yes) {
            x.t.o.fail(sent.client_error().code(), Side::Downstream);
            send.send_reset(Reason::CANCEL);
            return Whole::No;
        }
        x.t.o.bytes_out += n;
        if body.done() {
            return Whole::Yes;
        }
        let cut = match within(timers.after(to.cluster.read_timeout), read_more(up, ubuf)).await {
            Some(Ok(n)) if n > 0 => None,
            // A close-delimited body ends here.
            Some(_) if body.until_close() => {
                let _ = send.send_data(Bytes::new(), true);
                return Whole::No;
            }
            Some(_) => Some(ErrorKind::UpstreamBodyError),
            None => Some(ErrorKind::UpstreamReadTimeout),
        };
        piece = match (cut, body.take(ubuf)) {
            (None, Ok(p)) => p,
            (cut, _) => {
                // The upstream broke off, went silent, or sent a malformed
                // body: the client must not take what it got for whole.
                let kind = cut.unwrap_or(ErrorKind::UpstreamBodyError);
                x.t.o.fail(ProxyError::new(kind).code(), Side::Upstream);
                send.send_reset(Reason::INTERNAL_ERROR);
                return Whole::No;
            }
        };
        if ubuf.is_empty() && ubuf.capacity() > 4 * crate::io::READ_CHUNK {
            *ubuf = BytesMut::new();
        }
    }
}

/// A request whose body is still arriving: the upload and the response
/// move at the same time. The upload stops when the body ends, when the
/// upstream stops taking it, or when the response has ended; the upstream
/// connection is pooled only when both went whole.
async fn full_duplex<'a>(
    x: &mut Ctx<'a>,
    client: &mut Client,
    (mut to, retry): (Upstream<'a>, &RetryPolicy),
    (mut head, first): (Bytes, Bytes),
    deadline: Instant,
) {
    let w: &Worker = x.w;
    let timers = &w.timers;
    let respond = &mut client.respond;
    let opened = within(timers.at(deadline), async {
        let mut head_at = to.i;
        let mut up = open(x, &mut to, retry, false).await?;
        x.rehead(&to, &mut head, &mut head_at);
        send_start(x, &mut up, head, first).await.map(|()| up)
    })
    .await;
    let up = match opened {
        Some(Ok(up)) => up,
        Some(Err(f)) => return failed(x, respond, f),
        None => {
            let f = x.timed_out();
            return failed(x, respond, f);
        }
    };
    let Conn {
        io, buf: mut ubuf, ..
    } = up;
    let (mut ur, mut uw) = io.into_split();
    let Client { respond, body } = client;
    let uploaded = Cell::new(0u64);
    let idle = x.l.idle_timeout;
    let (upload_result, answer) = {
        let mut upload = pin!(async {
            loop {
                let piece = match within(timers.after(idle), body.data()).await {
                    Some(Ok(Some(d))) => d,
                    Some(Ok(None)) => break,
                    Some(Err(f)) => return Err(f),
                    None => return Err(Failed::downstream_body(ErrorKind::DownstreamBodyTimeout)),
                };
                uploaded.set(uploaded.get() + piece.len() as u64);
                if write_one(&mut uw, body.framed(piece)).await.is_err() {
                    // The upstream may have answered before it stopped reading.
                    return Ok(false);
                }
            }
            let end = body.end().await?;
            if !end.is_empty() && write_one(&mut uw, end).await.is_err() {
                return Ok(false);
            }
            Ok(true)
        });
        let mut response = pin!(async {
            let res = match within(
                timers.at(deadline),
                final_head(x, &mut *respond, &mut ur, &mut ubuf),
            )
            .await
            {
                Some(Ok(res)) => res,
                Some(Err(f)) => return Err(f),
                None => return Err(x.timed_out()),
            };
            x.t.o.upstream_at = Some(Instant::now());
            let whole = respond_to(x, &mut *respond, &mut ur, &mut ubuf, &res, to).await;
            Ok((whole, res.keep_alive))
        });
        let mut uploaded_whole = None;
        loop {
            monoio::select! {
                a = &mut response => break (uploaded_whole, a),
                r = &mut upload, if uploaded_whole.is_none() => match r {
                    Ok(whole) => uploaded_whole = Some(Ok(whole)),
                    // The client's body broke off or stalled: stop both.
                    Err(f) => break (Some(Err(f)), Err(Failed::client_closed())),
                },
            }
        }
    };
    x.t.o.bytes_in += uploaded.get();
    match (upload_result, answer) {
        (Some(Err(f)), _) if x.head_started => x.t.o.fail(f.error.code(), Side::Downstream),
        (Some(Err(f)), _) => failed(x, respond, f),
        (_, Err(f)) => failed(x, respond, f),
        (Some(Ok(true)), Ok((Whole::Yes, true))) => {
            if let Ok(io) = ur.reunite(uw) {
                let conn = Conn {
                    io,
                    buf: ubuf,
                    reused: false,
                };
                conn.release(to.ep, &to.cluster.pool, &x.w.dialer(), Instant::now());
            }
        }
        _ => {}
    }
}
