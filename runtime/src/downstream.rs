//! The HTTP/1.1 downstream session: one client connection. Reads request
//! heads (bounded by the idle and header timeouts, ended by a drain),
//! refuses what it cannot take, hands each request to the forward step
//! (`forward`), keeps the connection alive, pipelines, and tunnels after
//! an upgrade.

use crate::forward::Next;
use crate::forward::{exchange, write_held};
use crate::io::{read_more, Peek, Stream, FIRST_READ, READ_CHUNK};
use crate::reply::{refuse, After};
use crate::state::{Admitted, Generation, HotRead, ListenerState, Worker};
use crate::timer::{within, Timers};
use crate::upstream::UpIo;
use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use weft_core::config::Listener;
use weft_core::{ErrorKind, ProxyError};
use weft_proto::{parse_request_in, HeadError, Limits, Request, RequestHead};

enum HeadRead {
    Head(RequestHead),
    /// Clean end: the client closed (or its connection failed) between
    /// requests.
    Closed,
    /// The idle timeout passed between requests, or the worker drains:
    /// weft closes.
    Idle,
    /// Nothing came within the hot window: wait for readiness instead.
    Quiet,
    Reject(HeadError),
    Timeout,
    /// HTTP/2's connection preface: the connection speaks HTTP/2 (its
    /// bytes stay in the buffer).
    Http2,
}

/// Serves one accepted client connection until it closes.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// `async fn` keeps its arguments twice in its state (once as passed, once
/// as bound), and this future lives as long as the connection, idle or not.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<S: Stream>(
    w: Rc<Worker>,
    gen: Rc<Generation>,
    li: usize,
    mut client: S,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> {
    // Made before the task: the task keeps the text, not the address too.
    let peer_ip = peer.ip().to_string();
    async move {
        let admitted = Admitted(gen.listeners[li].clone());
        let listener = &*admitted.0;
        // Hot: a read is posted at once (a new connection's first request,
        // and a busy client's next one, usually come within microseconds).
        let (mut idle_until, mut hot) = idle_and_hot(&gen.config.listeners[li], Instant::now());
        let on = On {
            gen: RefCell::new(Some(gen)),
            li: Cell::new(li),
        };
        let mut buf = BytesMut::new();
        // Where a request is served: on the heap, so that an idle
        // connection's task stays small, and kept while the connection is
        // busy, so that a keep-alive client's requests reuse one place
        // instead of allocating each its own.
        let mut place = None;
        loop {
            if hot.is_none() {
                // No generation held while idle.
                on.gen.replace(None);
                if listener.index.get().is_none() {
                    // A reload removed the listener: idle, weft closes.
                    return farewell(&w, client);
                }
                // Idle between requests: wait for data here, with no buffer and a
                // small future, so that idle keep-alive connections cost little.
                // An idle wait also ends when the worker starts draining: then
                // the connection closes.
                // Not relaxed: on epoll a relaxed wait returns at once while
                // the last read left the socket marked readable, and the
                // read after it would then wait holding a buffer.
                let ready = within(w.timers.idle_until(idle_until), client.readable(false)).await;
                match ready {
                    // The client closed while idle: gone, with nothing
                    // taken for it (when thousands close at once, a read
                    // buffer and a place each would be tens of MiB).
                    Some(Ok(())) if matches!(client.peek(), Peek::Closed) => return,
                    Some(Ok(())) => {}
                    // Woken to look again (a reload removed a listener).
                    None if !w.draining.get() && Instant::now() < idle_until => continue,
                    // Idle for too long, or draining: weft closes.
                    None => return farewell(&w, client),
                    Some(Err(_)) => return,
                }
            }
            let wait = (idle_until, hot);
            let step = request_owning(
                &w,
                (&on, listener),
                client,
                std::mem::take(&mut buf),
                wait,
                &peer_ip,
            );
            let served = place.get_or_insert_with(|| Box::pin(None));
            served.set(Some(step));
            let (step, b) = std::future::poll_fn(|cx| match served.as_mut().as_pin_mut() {
                Some(step) => std::future::Future::poll(step, cx),
                None => std::task::Poll::Pending,
            })
            .await;
            served.set(None);
            buf = b;
            match step {
                Step::Again(c, ended) => {
                    client = c;
                    let gen = on.gen.borrow();
                    if let Some(gen) = &*gen {
                        (idle_until, hot) = idle_and_hot(&gen.config.listeners[on.li.get()], ended);
                    }
                }
                Step::Quiet(c) => {
                    // Give the buffers, and the place, back while the
                    // connection idles.
                    client = c;
                    client.shrink();
                    buf = BytesMut::new();
                    place = None;
                    hot = None;
                }
                Step::Http2(c) => {
                    drop(place);
                    let Some((gen, li)) = on.current(&w, listener) else {
                        return;
                    };
                    // The HTTP/2 session takes the newest generation per stream.
                    on.gen.replace(None);
                    // Boxed: an HTTP/1 connection's task stays small.
                    let read = std::mem::take(&mut buf);
                    Box::pin(crate::downstream_h2::serve(&w, gen, li, c, read, peer_ip.into())).await;
                    return;
                }
                Step::Done => return,
            }
        }
    }
}

/// What the connection does after one request.
enum Step<S> {
    /// Serve the next one (a read is posted at once); the one before
    /// ended at the instant given.
    Again(S, Instant),
    /// No request came within the hot window: wait for readiness.
    Quiet(S),
    /// The connection is done.
    Done,
    /// The connection speaks HTTP/2 from here.
    Http2(S),
}

/// The generation a connection is on, and its listener's index there:
/// none while the connection idles, so that an idle connection holds no
/// configuration a reload replaced.
struct On {
    gen: RefCell<Option<Rc<Generation>>>,
    li: Cell<usize>,
}

impl On {
    /// The newest generation for the connection's `listener`, taken now;
    /// when a reload removed the listener, the one the connection was on
    /// (to serve what came, and close), or none (idle: it closes).
    fn current(&self, w: &Worker, listener: &ListenerState) -> Option<(Rc<Generation>, usize)> {
        let mut gen = self.gen.borrow_mut();
        if let Some((newest, li)) = w.newest_for(listener) {
            *gen = Some(newest);
            self.li.set(li);
        }
        gen.clone().map(|g| (g, self.li.get()))
    }
}

/// [`request`] with the connection's buffer moved in and handed back, so
/// that the future borrows nothing of the connection's own state and can
/// take the place of the one before it.
async fn request_owning<S: Stream>(
    w: &Rc<Worker>,
    at: (&On, &ListenerState),
    client: S,
    mut buf: BytesMut,
    wait: (Instant, Option<Instant>),
    peer_ip: &str,
) -> (Step<S>, BytesMut) {
    let step = request(w, at, client, &mut buf, wait, peer_ip).await;
    (step, buf)
}

/// Serves the next request, and the pipelined ones after it whose
/// responses are held back to go out together (see [`one_request`]).
async fn request<S: Stream>(
    w: &Rc<Worker>,
    at: (&On, &ListenerState),
    mut client: S,
    buf: &mut BytesMut,
    wait: (Instant, Option<Instant>),
    peer_ip: &str,
) -> Step<S> {
    // Responses held back: written before weft waits for the client, and
    // before any other write to it.
    let mut held = BytesMut::new();
    loop {
        match one_request(w, at, client, (buf, &mut held), wait, peer_ip).await {
            // The next request's head is buffered: it is read at once.
            Step::Again(c, _) if !held.is_empty() => client = c,
            step => {
                if held.capacity() > 0 {
                    w.dialer().give_back(held);
                }
                return step;
            }
        }
    }
}

/// Reads one request head and serves it: the exchange, or weft's refusal.
/// The newest generation is taken once the head is in (`on`, for the
/// connection's `listener`). `wait`: until when the connection may idle,
/// and until when a read stays posted (hot). `held`: responses to earlier
/// pipelined requests not yet written; this one's may join them.
async fn one_request<S: Stream>(
    w: &Rc<Worker>,
    (on, listener): (&On, &ListenerState),
    mut client: S,
    (buf, held): (&mut BytesMut, &mut BytesMut),
    (idle_until, hot): (Instant, Option<Instant>),
    peer_ip: &str,
) -> Step<S> {
    let Some((gen, li)) = on.current(w, listener) else {
        return Step::Done;
    };
    let l = &gen.config.listeners[li];
    // A posted read needs one of the worker's hot places; without one, the
    // connection waits for readiness with no buffer.
    let slot = match hot {
        Some(_) if buf.is_empty() => match HotRead::take(&w.hot_reads) {
            Some(slot) => Some(slot),
            None => {
                // Nothing is held while the buffer is empty.
                debug_assert!(held.is_empty());
                return Step::Quiet(client);
            }
        },
        _ => None,
    };
    let read = read_head(w, &mut client, (buf, &mut *held), idle_until, l, (hot, slot)).await;
    if !held.is_empty() && !matches!(read, HeadRead::Head(_)) && !write_held(w, l, &mut client, held).await {
        return Step::Done;
    }
    let refusal = match read {
        HeadRead::Head(mut h) => {
            if l.merge_slashes {
                h.merge_slashes();
            }
            let head = Request::H1(h);
            let started = Instant::now();
            drop(gen);
            // A reload while the head came in: the newest configuration.
            let Some((gen, li)) = on.current(w, listener) else {
                return Step::Done;
            };
            let l = &gen.config.listeners[li];
            // Not boxed: the request's future is kept from one request to
            // the next (`serve`'s place), and the states of read_head and of
            // the exchange, never alive together, share its memory.
            let next = exchange(w, &gen, l, client, (buf, &mut *held), &head, peer_ip, started).await;
            if let Request::H1(h) = head {
                w.give_fields(h.headers);
            }
            // A listener a reload removed serves what came, and closes.
            let open = gen.listeners[li].index.get().is_some();
            return match next {
                // The exchange's record was written as it returned: its end.
                Next::KeepAlive(c) if !w.draining.get() && open => Step::Again(c, w.last_end.get()),
                // After the request's outcome is recorded: a lingering
                // close or a tunnel is no part of the exchange.
                mut end => {
                    if let Next::KeepAlive(c) | Next::Done(c) | Next::Linger(c) = &mut end {
                        write_held(w, l, c, held).await;
                    }
                    // A tunnel may last for hours: it holds no generation.
                    drop(gen);
                    on.gen.replace(None);
                    Box::pin(finish(&w.timers, end, std::mem::take(buf))).await;
                    Step::Done
                }
            };
        }
        HeadRead::Closed => return Step::Done,
        HeadRead::Idle => {
            farewell(w, client);
            return Step::Done;
        }
        HeadRead::Quiet => return Step::Quiet(client),
        HeadRead::Http2 => return Step::Http2(client),
        // The refusal names the head's own fault.
        HeadRead::Reject(e) => {
            let kind = ErrorKind::BadRequest {
                status: e.status(),
                code: e.code(),
            };
            (ProxyError::new(kind), e.to_string())
        }
        HeadRead::Timeout => {
            let e = ProxyError::new(ErrorKind::HeaderTimeout);
            let msg = e.to_string();
            (e, msg)
        }
    };
    Box::pin(refuse_and_close(w, &gen, l, client, refusal)).await;
    Step::Done
}

/// Refuses a head weft cannot take and closes the connection.
async fn refuse_and_close<S: Stream>(
    w: &Worker,
    gen: &Generation,
    l: &Listener,
    mut client: S,
    e: (ProxyError, String),
) {
    let (e, msg) = e;
    if let After::Linger = refuse(w, gen, l, &mut client, e, &msg).await {
        linger(&mut client, &w.timers).await;
    }
}

/// Ends a connection after its last exchange: a lingering close, or the
/// tunnel after a `101`.
async fn finish<S: Stream>(timers: &Timers, end: Next<S>, buf: BytesMut) {
    match end {
        // Kept alive, but the worker drains: weft closes.
        Next::KeepAlive(mut c) if S::GOODBYE => goodbye(timers, &mut c).await,
        Next::KeepAlive(_) => {}
        Next::Close => {}
        Next::Done(mut c) if S::GOODBYE => goodbye(timers, &mut c).await,
        Next::Done(_) => {}
        Next::Linger(mut c) => linger(&mut c, timers).await,
        Next::Tunnel(t) => {
            let (c, up, up_buf) = *t;
            tunnel(c, buf, up, up_buf).await;
        }
    }
}

/// Closes a connection weft ends on its own (idle, draining): a stream
/// that says goodbye does so in a task of its own, so that the idle
/// connection's task holds no state for it.
fn farewell<S: Stream>(w: &Rc<Worker>, client: S) {
    if S::GOODBYE {
        let w = w.clone();
        let mut client = client;
        monoio::spawn(async move { goodbye(&w.timers, &mut client).await });
    }
}

/// Tells the client weft closes (TLS's close_notify), waiting at most a
/// second for the write.
async fn goodbye<S: Stream>(timers: &Timers, client: &mut S) {
    let _ = within(timers.after(Duration::from_secs(1)), client.goodbye()).await;
}

/// How long a connection keeps a read posted after a response (or after
/// it was accepted): a busy client's next request takes one read, with no
/// readiness poll before it. Past it the read is cancelled (no byte lost),
/// its buffer given back, and the connection waits for readiness with no
/// buffer, so that idle connections stay small.
pub(crate) const HOT_WINDOW: Duration = Duration::from_secs(1);

/// When a connection that became idle at `now` times out, and until when
/// its read stays posted.
fn idle_and_hot(l: &Listener, now: Instant) -> (Instant, Option<Instant>) {
    let idle_until = now + l.idle_timeout;
    (idle_until, Some((now + HOT_WINDOW).min(idle_until)))
}

/// Reads one request head. Until its first byte arrives, `idle_until`
/// bounds the wait (and the worker's drain ends it); from the first byte
/// on, the whole head must arrive within the listener's header timeout.
/// `hot`: the first read stays posted until then at most
/// ([`HeadRead::Quiet`] when nothing came).
async fn read_head<S: Stream>(
    w: &Worker,
    client: &mut S,
    (buf, held): (&mut BytesMut, &mut BytesMut),
    idle_until: Instant,
    l: &Listener,
    (hot, mut slot): (Option<Instant>, Option<HotRead<'_>>),
) -> HeadRead {
    let limits = Limits {
        max_request_line: l.max_request_line,
        max_head_bytes: l.max_header_bytes,
        max_headers: l.max_headers,
    };
    let mut started = !buf.is_empty();
    let mut hot_until = hot.filter(|_| !started);
    let mut deadline = if started {
        Instant::now() + l.header_timeout
    } else {
        idle_until
    };
    loop {
        if !buf.is_empty() {
            match crate::downstream_h2::preface(buf) {
                Some(true) => return HeadRead::Http2,
                // Maybe HTTP/2's preface: wait for the rest of it.
                None => {}
                Some(false) => {
                    let mut spare = w.take_fields();
                    let parsed = parse_request_in(buf, &limits, &mut spare);
                    w.give_fields(spare);
                    match parsed {
                        Ok(Some(h)) => return HeadRead::Head(h),
                        Ok(None) => {}
                        Err(e) => return HeadRead::Reject(e),
                    }
                }
            }
        } else if buf.capacity() == 0 {
            *buf = BytesMut::with_capacity(FIRST_READ);
        }
        // Nothing held back while weft waits for the client.
        if !held.is_empty() && !write_held(w, l, client, held).await {
            return HeadRead::Closed;
        }
        if let Some(until) = hot_until.take() {
            // A drain ends this wait too (an idle wait).
            let read = client.read_before(buf, &mut w.timers.idle_until(until)).await;
            // The hot place is for the posted read only.
            slot.take();
            match read {
                Some(Ok(0)) | Some(Err(_)) => return HeadRead::Closed,
                Some(Ok(_)) => {
                    started = true;
                    deadline = Instant::now() + l.header_timeout;
                    continue;
                }
                // The idle timeout itself passed, or the worker drains.
                None if until >= idle_until || w.draining.get() => return HeadRead::Idle,
                None => return HeadRead::Quiet,
            }
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
            // Woken to look again (a reload removed a listener).
            None if !w.draining.get() && Instant::now() < deadline => {}
            None => return HeadRead::Idle,
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
    // Bounded: TLS sends its close_notify here, to a client that may read
    // nothing.
    let _ = within(timers.after(std::time::Duration::from_secs(1)), client.shutdown()).await;
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
