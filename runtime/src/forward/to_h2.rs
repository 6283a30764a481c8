//! The attempts on an HTTP/2 upstream (a cluster of `protocol = "http2"`)
//! and its response back to either kind of client.
//!
//! The policy is the HTTP/1 path's (`Ctx::again`, `Ctx::connect_failed`,
//! the backoff); what differs is the wire: the request goes on a stream of
//! a shared connection (`upstream_h2`) as a head of fields and DATA within
//! the upstream's window, trailers included; the response is a head of
//! fields, DATA and trailers. A stream the upstream refused (REFUSED_STREAM,
//! or above a GOAWAY's last id) never reached it, and may go again for any
//! method. To an HTTP/1.1 client the response goes chunked unless its
//! length is known, its trailers in the last chunk; to an HTTP/2 client,
//! DATA and trailers as they come.

use super::http2::{failed, send_data, Client, Gathered, Sent as DataSent, Source};
use super::{
    within, Ctx, Failed, H1Interim, H1Waiting, Next, RequestBody, Upstream, Waiting, CONTINUE, WATCH_AFTER,
};
use crate::io::Stream;
use crate::io::{write_one, write_two};
use crate::state::Worker;
use crate::timer::Timers;
use crate::upstream_h2::{self, H2Stream};
use ::h2::client::ResponseFuture;
use ::h2::{Reason, RecvStream, SendStream};
use bytes::{BufMut, Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};
use std::cell::Cell;
use std::future::poll_fn;
use std::pin::pin;
use std::time::{Duration, Instant};
use weft_core::route::RetryPolicy;
use weft_core::{ErrorKind, ProxyError, Side};
use weft_proto::body::{chunk_head, last_chunk, CHUNK_END};
use weft_proto::encode::ResponseOptions;
use weft_proto::message::ResponseFields;
use weft_proto::{BodyFraming, BodyLength, Response, Version};

/// A request body that is here whole: its payload and trailers.
pub(super) struct WholeBody {
    pub data: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

/// The answer of an HTTP/2 upstream: the stream (counted open until the
/// body is read) and the response.
pub(super) type Answer = (H2Stream, http::Response<RecvStream>);

/// What a failed HTTP/2 exchange with the upstream means for the attempt.
fn upstream_failed(e: h2::Error) -> Failed {
    let refused = e.reason() == Some(Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote());
    let kind = if refused {
        ErrorKind::UpstreamRefusedStream
    } else {
        ErrorKind::UpstreamReset
    };
    Failed {
        error: ProxyError::new(kind),
        close: false,
    }
}

/// Why the upstream reset a stream weft was sending on.
async fn reset(up: &mut SendStream<Bytes>) -> Failed {
    match poll_fn(|cx| up.poll_reset(cx)).await {
        Ok(Reason::REFUSED_STREAM) => Failed {
            error: ProxyError::new(ErrorKind::UpstreamRefusedStream),
            close: false,
        },
        Ok(_) => Failed::upstream_gone(false),
        Err(e) => upstream_failed(e),
    }
}

/// A stream to `to` (on a connection with room, else a new one); when
/// connecting fails and the route allows it, to another usable endpoint.
async fn open_stream<'a>(
    x: &mut Ctx<'a>,
    to: &mut Upstream<'a>,
    retry: &RetryPolicy,
) -> Result<H2Stream, Failed> {
    let mut tries = 1;
    loop {
        let state = &x.gen.clusters[to.c];
        match upstream_h2::stream(&x.w.dialer(), to.ep, to.cluster, || state.may_connect()).await {
            Ok(s) => return Ok(s),
            Err(e) => x.connect_failed(to, retry, e, &mut tries)?,
        }
    }
}

/// Sends a whole request on a stream to `to` and reads the response head;
/// goes again as the route allows (another endpoint, after a backoff).
pub(super) async fn attempts<'a, C: Waiting>(
    x: &mut Ctx<'a>,
    client: &mut C,
    (to, retry): (&mut Upstream<'a>, &RetryPolicy),
    body: &WholeBody,
) -> Result<Answer, Failed> {
    let mut retries = 0;
    loop {
        let mut s = open_stream(x, to, retry).await?;
        x.t.o.attempts += 1;
        let w: &Worker = x.w;
        let one = attempt(x, client, &mut s, to, body);
        let answer = match retry.per_try_timeout {
            Some(d) => within(w.timers.after(d), one)
                .await
                .unwrap_or_else(|| Err(Failed::timeout())),
            None => one.await,
        };
        if answer.is_ok() {
            s.answered();
        }
        if !x.again(to, retry, answer.as_ref().map(|res| res.status().as_u16())) {
            return answer.map(|res| {
                x.t.o.upstream_at = Some(Instant::now());
                (s, res)
            });
        }
        // This attempt's stream is dropped (h2 resets it), and no longer
        // counted open during the backoff.
        drop(s);
        retries += 1;
        x.backoff(retry, retries).await;
    }
}

/// One attempt: the head, the body within the upstream's window, then the
/// response head, watching the client after a grace.
async fn attempt<C: Waiting>(
    x: &mut Ctx<'_>,
    client: &mut C,
    s: &mut H2Stream,
    to: &Upstream<'_>,
    body: &WholeBody,
) -> Result<http::Response<RecvStream>, Failed> {
    let end = body.data.is_empty() && body.trailers.is_none();
    let (res, mut up) = request(x, s, to, end).await?;
    let mut res = pin!(res);
    if !end {
        let timers = &x.w.timers;
        let wait = to.cluster.read_timeout;
        let sending = async {
            let data_end = body.trailers.is_none();
            match send_data(&mut up, body.data.clone(), data_end, timers, wait).await {
                DataSent::Yes => {}
                DataSent::Stalled => return Err(Failed::timeout()),
                DataSent::Reset => return Err(reset(&mut up).await),
            }
            if let Some(t) = &body.trailers {
                if up.send_trailers(t.clone()).is_err() {
                    return Err(reset(&mut up).await);
                }
            }
            Ok(())
        };
        // An upstream may answer before it has read the body (a 413, say,
        // then a reset with NO_ERROR, RFC 9113 §8.1): its answer counts.
        monoio::select! {
            r = &mut res => return r.map_err(upstream_failed),
            sent = sending => sent?,
        }
    }
    answer(x, client, res).await
}

/// Sends the request's head on stream `s` (`end`: no body follows).
async fn request(
    x: &Ctx<'_>,
    s: &mut H2Stream,
    to: &Upstream<'_>,
    end: bool,
) -> Result<(ResponseFuture, SendStream<Bytes>), Failed> {
    let head = x.h2_head_for(to)?;
    let sent = match poll_fn(|cx| s.send.poll_ready(cx)).await {
        Ok(()) => s.send.send_request(head, end),
        Err(e) => Err(e),
    };
    sent.map_err(|e| {
        // A connection that takes no new stream is done for new requests:
        // the next attempt opens another.
        s.connection_ended();
        upstream_failed(e)
    })
}

/// Waits for the response head, watching the client after a grace.
async fn answer<C: Waiting>(
    x: &mut Ctx<'_>,
    client: &mut C,
    mut res: std::pin::Pin<&mut ResponseFuture>,
) -> Result<http::Response<RecvStream>, Failed> {
    let grace = x.w.timers.at(x.t.o.head_at + WATCH_AFTER);
    monoio::select! {
        r = &mut res => return r.map_err(upstream_failed),
        _ = grace => {}
    }
    monoio::select! {
        r = &mut res => r.map_err(upstream_failed),
        () = client.gone() => Err(Failed::client_closed()),
    }
}

/// Opens a stream for a request whose body is still arriving and sends
/// its head and `first` (what arrived already).
async fn start<'a>(
    x: &mut Ctx<'a>,
    to: &mut Upstream<'a>,
    retry: &RetryPolicy,
    first: Bytes,
) -> Result<(H2Stream, ResponseFuture, SendStream<Bytes>), Failed> {
    let mut s = open_stream(x, to, retry).await?;
    x.t.o.attempts += 1;
    let (res, mut up) = request(x, &mut s, to, false).await?;
    if !first.is_empty() {
        match send_data(&mut up, first, false, &x.w.timers, to.cluster.read_timeout).await {
            DataSent::Yes => {}
            DataSent::Stalled => return Err(Failed::timeout()),
            DataSent::Reset => return Err(reset(&mut up).await),
        }
    }
    Ok((s, res, up))
}

/// Where the rest of a request body comes from, as payload pieces.
pub(super) trait Upload {
    /// The next piece; `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>, Failed>;
    /// The trailers after the last piece.
    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, Failed>;
}

/// An HTTP/2 client's body, each DATA within the listener's idle timeout.
struct FromH2<'s> {
    src: &'s mut Source,
    timers: &'s Timers,
    idle: Duration,
}

impl Upload for FromH2<'_> {
    async fn next(&mut self) -> Result<Option<Bytes>, Failed> {
        within(self.timers.after(self.idle), self.src.data())
            .await
            .unwrap_or_else(|| Err(Failed::downstream_body(ErrorKind::DownstreamBodyTimeout)))
    }

    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, Failed> {
        self.src.trailers().await
    }
}

/// An HTTP/1 client's body (de-chunked), read from its read half.
struct FromH1<'s, 'b, R> {
    client: &'s mut R,
    body: &'s mut RequestBody<'b>,
    timers: &'s Timers,
    idle: Duration,
}

impl<R: AsyncReadRent> Upload for FromH1<'_, '_, R> {
    async fn next(&mut self) -> Result<Option<Bytes>, Failed> {
        while !self.body.reader.done() {
            let piece = self.body.next(self.client, self.timers, self.idle).await?;
            if !piece.is_empty() {
                return Ok(Some(piece));
            }
        }
        Ok(None)
    }

    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, Failed> {
        Ok(super::http2::trailer_map(self.body.reader.trailers()))
    }
}

/// Sends the rest of a request body on `up` as it comes, then its
/// trailers; stops when the upstream does. Ok(true): it went whole;
/// Ok(false): the upstream stopped taking it (it may have answered).
async fn upload<U: Upload>(
    up: &mut SendStream<Bytes>,
    timers: &Timers,
    wait: Duration,
    from: &mut U,
    moved: &Cell<u64>,
) -> Result<bool, Failed> {
    while let Some(piece) = from.next().await? {
        moved.set(moved.get() + piece.len() as u64);
        if !matches!(send_data(up, piece, false, timers, wait).await, DataSent::Yes) {
            return Ok(false);
        }
    }
    match from.trailers().await? {
        Some(t) => Ok(up.send_trailers(t).is_ok()),
        None => Ok(matches!(
            send_data(up, Bytes::new(), true, timers, wait).await,
            DataSent::Yes
        )),
    }
}

/// A request from an HTTP/2 client to an HTTP/2 upstream: whole (retried
/// as the route allows), or still arriving (its body and the response
/// move at the same time).
pub(super) async fn from_h2<'a>(
    x: &mut Ctx<'a>,
    client: &mut Client,
    (mut to, retry): (Upstream<'a>, &RetryPolicy),
    g: Gathered,
    deadline: Instant,
) {
    let w: &Worker = x.w;
    let read_timeout = to.cluster.read_timeout;
    if g.whole {
        let body = WholeBody {
            data: g.data,
            trailers: g.trailers,
        };
        let answered = {
            let tries = pin!(attempts(x, &mut client.respond, (&mut to, retry), &body));
            within(w.timers.at(deadline), tries).await
        };
        match answered {
            Some(Ok((_stream, res))) => {
                to_h2_client(x, &mut client.respond, res, read_timeout).await;
            }
            Some(Err(f)) => failed(x, &mut client.respond, f),
            None => {
                let f = x.timed_out();
                failed(x, &mut client.respond, f)
            }
        }
        return;
    }
    let started = within(w.timers.at(deadline), start(x, &mut to, retry, g.data)).await;
    let (_stream, res, mut up) = match started {
        Some(Ok(started)) => started,
        Some(Err(f)) => return failed(x, &mut client.respond, f),
        None => {
            let f = x.timed_out();
            return failed(x, &mut client.respond, f);
        }
    };
    let Client { respond, body } = client;
    let moved = Cell::new(0);
    let mut from = FromH2 {
        src: body,
        timers: &w.timers,
        idle: x.l.idle_timeout,
    };
    let (uploaded, answered) = {
        let mut sending = pin!(upload(&mut up, &w.timers, read_timeout, &mut from, &moved));
        let mut response = pin!(async {
            let res = match within(w.timers.at(deadline), answer(x, &mut *respond, pin!(res))).await {
                Some(Ok(res)) => res,
                Some(Err(f)) => return Err(f),
                None => return Err(x.timed_out()),
            };
            x.t.o.upstream_at = Some(Instant::now());
            Ok(to_h2_client(x, &mut *respond, res, read_timeout).await)
        });
        both(&mut sending, &mut response).await
    };
    x.t.o.bytes_in += moved.get();
    match (uploaded, answered) {
        (Some(Err(f)), _) if x.head_started => x.t.o.fail(f.error.code(), Side::Downstream),
        (Some(Err(f)), _) | (_, Err(f)) => failed(x, respond, f),
        _ => {}
    }
}

/// Runs an upload and the response beside it until the response has
/// ended, or the upload failed (then both stop). The upload's result, if it
/// ended, and the response's (a client whose body broke off stops it as
/// gone).
async fn both<A, B, T>(
    upload: &mut std::pin::Pin<&mut A>,
    response: &mut std::pin::Pin<&mut B>,
) -> (Option<Result<bool, Failed>>, Result<T, Failed>)
where
    A: std::future::Future<Output = Result<bool, Failed>>,
    B: std::future::Future<Output = Result<T, Failed>>,
{
    let mut uploaded = None;
    loop {
        monoio::select! {
            a = response.as_mut() => return (uploaded, a),
            r = upload.as_mut(), if uploaded.is_none() => match r {
                Ok(whole) => uploaded = Some(Ok(whole)),
                Err(f) => return (Some(Err(f)), Err(Failed::client_closed())),
            },
        }
    }
}

/// A request from an HTTP/1 client to an HTTP/2 upstream: whole (retried
/// as the route allows), or still arriving (its body, de-chunked, and the
/// response move at the same time on the split connection).
pub(super) async fn from_h1<'a, S: Stream>(
    x: &mut Ctx<'a>,
    mut client: S,
    body: &mut RequestBody<'_>,
    (mut to, retry): (Upstream<'a>, &RetryPolicy),
    first: Bytes,
    send_continue: bool,
    deadline: Instant,
) -> Next<S> {
    let w: &Worker = x.w;
    let read_timeout = to.cluster.read_timeout;
    if body.reader.done() {
        let whole = WholeBody {
            data: first,
            trailers: super::http2::trailer_map(body.reader.trailers()),
        };
        let answered = {
            let mut waiting = H1Waiting {
                client: &mut client,
                watch: body.cbuf.is_empty(),
            };
            let tries = pin!(attempts(x, &mut waiting, (&mut to, retry), &whole));
            within(w.timers.at(deadline), tries).await
        };
        let (_stream, res) = match answered {
            Some(Ok(answer)) => answer,
            Some(Err(f)) => return x.failed(client, f, true).await,
            None => return x.failed(client, x.timed_out(), true).await,
        };
        return match to_h1_client(x, &mut client, res, read_timeout, false).await {
            H1Sent::Whole { close: false } => Next::KeepAlive(client),
            H1Sent::Whole { close: true } => Next::Done(client),
            H1Sent::Cut => Next::Close,
        };
    }
    let started = within(w.timers.at(deadline), async {
        if send_continue {
            if write_one(&mut client, Bytes::from_static(CONTINUE))
                .await
                .is_err()
            {
                return Err(Failed::client_closed());
            }
            x.t.o.bytes_out += CONTINUE.len() as u64;
        }
        start(x, &mut to, retry, first).await
    })
    .await;
    let (_stream, res, mut up) = match started {
        Some(Ok(started)) => started,
        Some(Err(f)) => return x.failed(client, f, false).await,
        None => return x.failed(client, x.timed_out(), false).await,
    };
    let (mut cr, mut cw) = client.into_split();
    let moved = Cell::new(0);
    let whole = Cell::new(false);
    let (uploaded, answered) = {
        let mut from = FromH1 {
            client: &mut cr,
            body,
            timers: &w.timers,
            idle: x.l.idle_timeout,
        };
        let mut sending = pin!(async {
            let r = upload(&mut up, &w.timers, read_timeout, &mut from, &moved).await;
            whole.set(matches!(r, Ok(true)));
            r
        });
        let mut response = pin!(async {
            let res = match within(
                w.timers.at(deadline),
                answer(x, &mut H1Interim(&mut cw), pin!(res)),
            )
            .await
            {
                Some(Ok(res)) => res,
                Some(Err(f)) => return Err(f),
                None => return Err(x.timed_out()),
            };
            x.t.o.upstream_at = Some(Instant::now());
            // Unless the upload is whole by now, the connection closes after.
            let cut = !whole.get();
            Ok(to_h1_client(x, &mut cw, res, read_timeout, cut).await)
        });
        both(&mut sending, &mut response).await
    };
    x.t.o.bytes_in += moved.get();
    let upload_whole = matches!(uploaded, Some(Ok(true)));
    let Ok(client) = cr.reunite(cw) else {
        return Next::Close;
    };
    match (uploaded, answered) {
        (Some(Err(f)), _) if x.head_started => {
            x.t.o.fail(f.error.code(), Side::Downstream);
            Next::Close
        }
        (Some(Err(f)), _) => x.failed(client, f, false).await,
        (_, Err(f)) => x.failed(client, f, upload_whole).await,
        (_, Ok(H1Sent::Cut)) => Next::Close,
        (_, Ok(H1Sent::Whole { close })) => match (upload_whole, close) {
            (false, _) => Next::Linger(client),
            (true, true) => Next::Done(client),
            (true, false) => Next::KeepAlive(client),
        },
    }
}

/// The length of a response body as its head and stream tell.
fn body_length(res: &http::Response<RecvStream>) -> BodyLength {
    if res.body().is_end_stream() {
        return BodyLength::Empty;
    }
    res.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map_or(BodyLength::Unknown, BodyLength::Exact)
}

/// The next DATA of a response body within `wait`, its window given back
/// (the client took what came before); `None` at the end.
async fn next_data(
    body: &mut RecvStream,
    timers: &Timers,
    wait: Duration,
) -> Result<Option<Bytes>, ErrorKind> {
    match within(timers.after(wait), body.data()).await {
        Some(Some(Ok(d))) => {
            let _ = body.flow_control().release_capacity(d.len());
            Ok(Some(d))
        }
        Some(Some(Err(_))) => Err(ErrorKind::UpstreamBodyError),
        Some(None) => Ok(None),
        None => Err(ErrorKind::UpstreamReadTimeout),
    }
}

/// Relays an HTTP/2 upstream's response to an HTTP/2 client: the head,
/// DATA within the client's window, trailers. True when it went whole.
pub(super) async fn to_h2_client(
    x: &mut Ctx<'_>,
    respond: &mut h2::server::SendResponse<Bytes>,
    res: http::Response<RecvStream>,
    read_timeout: Duration,
) -> bool {
    let (parts, mut body) = res.into_parts();
    let head = http::Response::from_parts(parts, ());
    let end = body.is_end_stream();
    x.head_started = true;
    let status = head.status().as_u16();
    let mut send = match respond.send_response(head, end) {
        Ok(send) => send,
        Err(_) => {
            x.t.o.fail("client-closed", Side::Downstream);
            return false;
        }
    };
    x.t.o.status = Some(status);
    if end {
        return true;
    }
    let (w, l): (&Worker, _) = (x.w, x.l);
    loop {
        match next_data(&mut body, &w.timers, read_timeout).await {
            Ok(Some(d)) => {
                let n = d.len() as u64;
                match send_data(&mut send, d, false, &w.timers, l.write_timeout).await {
                    DataSent::Yes => x.t.o.bytes_out += n,
                    cut => {
                        x.t.o.fail(cut.client_error().code(), Side::Downstream);
                        send.send_reset(Reason::CANCEL);
                        return false;
                    }
                }
            }
            Ok(None) => break,
            Err(kind) => {
                x.t.o.fail(ProxyError::new(kind).code(), Side::Upstream);
                send.send_reset(Reason::INTERNAL_ERROR);
                return false;
            }
        }
    }
    let ended = match within(w.timers.after(read_timeout), body.trailers()).await {
        Some(Ok(Some(t))) => send.send_trailers(t).is_ok(),
        Some(Ok(None)) => matches!(
            send_data(&mut send, Bytes::new(), true, &w.timers, l.write_timeout).await,
            DataSent::Yes
        ),
        _ => {
            x.t.o.fail(
                ProxyError::new(ErrorKind::UpstreamBodyError).code(),
                Side::Upstream,
            );
            send.send_reset(Reason::INTERNAL_ERROR);
            return false;
        }
    };
    if !ended {
        // The client reset the stream before its end (and its trailers).
        x.t.o.fail(
            ProxyError::new(ErrorKind::DownstreamClosed).code(),
            Side::Downstream,
        );
    }
    ended
}

/// How sending a response to an HTTP/1 client ended.
pub(super) enum H1Sent {
    /// Whole; `close`: the client connection closes after it.
    Whole { close: bool },
    /// Cut short: the outcome says why; the client connection closes.
    Cut,
}

/// Relays an HTTP/2 upstream's response to an HTTP/1 client: the head as
/// HTTP/1.1 (chunked unless the length is known; until the close for an
/// HTTP/1.0 client), the DATA, the trailers in the last chunk. `cut`: the
/// request body was not read whole (the connection closes after).
pub(super) async fn to_h1_client<W: AsyncWriteRent>(
    x: &mut Ctx<'_>,
    client: &mut W,
    res: http::Response<RecvStream>,
    read_timeout: Duration,
    cut: bool,
) -> H1Sent {
    let length = if x.req.is_head() {
        BodyLength::Empty
    } else {
        body_length(&res)
    };
    let (parts, mut body) = res.into_parts();
    let status = parts.status.as_u16();
    let http10 = x.req.version() == Version::Http10;
    let framing = match length {
        BodyLength::Empty => BodyFraming::None,
        BodyLength::Exact(n) => BodyFraming::Length(n),
        BodyLength::Unknown if http10 => BodyFraming::UntilClose,
        BodyLength::Unknown => BodyFraming::Chunked,
    };
    let close = !x.req.keep_alive() || framing == BodyFraming::UntilClose || x.w.draining.get() || cut;
    let opts = ResponseOptions {
        framing,
        close,
        keep_alive_10: http10 && !close,
        upgrade: false,
    };
    let head = Response::Fields(Box::new(ResponseFields { parts, body: length }));
    let mut out = BytesMut::with_capacity(256);
    head.encode_h1(&opts, &mut out);
    let (w, l): (&Worker, _) = (x.w, x.l);
    let timers = &w.timers;
    x.head_started = true;
    let n = out.len() as u64;
    let answered = x.t.o.upstream_at.unwrap_or(x.t.o.head_at);
    let sent = within(
        timers.at(answered + l.write_timeout),
        write_one(client, out.freeze()),
    )
    .await;
    if !super::client_took(&mut x.t, sent, n) {
        return H1Sent::Cut;
    }
    x.t.o.status = Some(status);
    if framing == BodyFraming::None {
        return H1Sent::Whole { close };
    }
    let chunked = framing == BodyFraming::Chunked;
    // Each chunk's size line carries the line end of the chunk before it:
    // the payload goes out as it came, in one write with its framing.
    let mut open_chunk = false;
    loop {
        let piece = match next_data(&mut body, timers, read_timeout).await {
            Ok(Some(d)) if d.is_empty() => continue,
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(kind) => {
                x.t.o.fail(ProxyError::new(kind).code(), Side::Upstream);
                return H1Sent::Cut;
            }
        };
        let n = piece.len() as u64;
        let write = async {
            if chunked {
                let size = chunk_head(piece.len());
                let prefix = if std::mem::replace(&mut open_chunk, true) {
                    let mut p = BytesMut::with_capacity(CHUNK_END.len() + size.len());
                    p.put_slice(CHUNK_END);
                    p.put_slice(&size);
                    p.freeze()
                } else {
                    size
                };
                write_two(client, prefix, piece).await
            } else {
                write_one(client, piece).await
            }
        };
        let sent = within(timers.after(l.write_timeout), write).await;
        if !super::client_took(&mut x.t, sent, n) {
            return H1Sent::Cut;
        }
    }
    if chunked {
        let trailers = match within(timers.after(read_timeout), body.trailers()).await {
            Some(Ok(t)) => t,
            _ => {
                x.t.o.fail(
                    ProxyError::new(ErrorKind::UpstreamBodyError).code(),
                    Side::Upstream,
                );
                return H1Sent::Cut;
            }
        };
        let fields: Vec<(&[u8], &[u8])> = trailers
            .iter()
            .flatten()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        let mut last = BytesMut::new();
        if open_chunk {
            last.put_slice(CHUNK_END);
        }
        last.put_slice(&last_chunk(&fields));
        let sent = within(timers.after(l.write_timeout), write_one(client, last.freeze())).await;
        if !matches!(sent, Some(Ok(()))) {
            x.t.o.fail(
                ProxyError::new(ErrorKind::DownstreamClosed).code(),
                Side::Downstream,
            );
            return H1Sent::Cut;
        }
    }
    H1Sent::Whole { close }
}
