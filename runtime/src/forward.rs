//! The forward step of one request: route, cluster and endpoint, the
//! attempts on an upstream connection (pooled, retried when stale), and
//! the response streamed back, with every wait bounded and one outcome
//! record per request.
//!
//! Two paths. A request that arrived whole (most of them) is sent, may be
//! retried on a fresh connection when a pooled one had gone stale, and its
//! response is streamed back. A request whose body is still arriving goes
//! full duplex: the upload and the response move at the same time, so an
//! upstream that answers before the upload ends (413, or a reply it streams
//! as it reads) gets its answer to the client while the body still flows.
//!
//! The HTTP/1 session (`downstream`) hands it each request with the client
//! connection and takes back what becomes of the connection ([`Next`]).

use crate::io::{read_more, write_one, write_two, write_two_now, Peek, Stream, READ_CHUNK};
use crate::reply::{reply_error, After};
use crate::state::{Counted, Generation, Tracker, Worker};
use crate::timer::{within, Deadline, Timers};
use crate::upstream::{Conn, Endpoint, UpIo};
use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};
use std::cell::Cell;
use std::pin::pin;
use std::time::{Duration, Instant};
use weft_core::config::{Cluster, Listener, Protocol};
use weft_core::route::{RetryPolicy, Route};
use weft_core::{ErrorKind, ProxyError, RetryClass, Side};
use weft_proto::body::BodyReader as Body;
use weft_proto::encode::{encode_response, RequestOptions, ResponseOptions};
use weft_proto::{parse_response_in, BodyFraming, BodyLength, Limits, Request, ResponseHead, Version};

mod http2;
mod to_h2;

pub(crate) use http2::{exchange as exchange_h2, Stream as H2Stream};

/// Limits on response heads from upstreams.
const RESPONSE_LIMITS: Limits = Limits {
    max_request_line: 8 * 1024,
    max_head_bytes: 64 * 1024,
    max_headers: 256,
};

/// What the session does with the client connection after one exchange.
pub(crate) enum Next<S> {
    /// Read the next request on it.
    KeepAlive(S),
    /// Close it now.
    Close,
    /// The response went whole and the connection ends with it (the
    /// client or weft said `close`): close it, saying goodbye first (TLS's
    /// close_notify, so that a body delimited by the close is seen whole).
    Done(S),
    /// Close it after a lingering read: the client may still be sending,
    /// and closing at once could reset the answer away.
    Linger(S),
    /// `101 Switching Protocols`: copy bytes both ways, starting with what
    /// was read from the upstream after its head. Boxed: every exchange
    /// returns a `Next`, few return this one.
    Tunnel(Box<(S, UpIo, BytesMut)>),
}

impl<S> Next<S> {
    fn after(after: After, client: S) -> Self {
        match after {
            After::KeepAlive => Next::KeepAlive(client),
            After::Close => Next::Close,
            After::Linger => Next::Linger(client),
        }
    }
}

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
    /// A write to the client was still going when a deadline passed: the
    /// client is slow, no fault of the endpoint's.
    fn client_slow() -> Self {
        Failed {
            error: ProxyError::new(ErrorKind::DownstreamWriteTimeout),
            close: true,
        }
    }

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

    /// The upstream's response head cannot be taken.
    fn malformed() -> Self {
        Failed {
            error: ProxyError::new(ErrorKind::UpstreamMalformed),
            close: false,
        }
    }

    /// The upstream connection failed before a response head; `stale`:
    /// nothing of the request can have been used (it was whole, nothing came
    /// back), so it may go again on a fresh connection if it was a reused one.
    fn upstream_gone(stale: bool) -> Self {
        let error = ProxyError::new(ErrorKind::UpstreamReset);
        Failed {
            error: if stale { error.on_stale_connection() } else { error },
            close: false,
        }
    }

    /// The route's timeout passed before the response head.
    fn timeout() -> Self {
        Failed {
            error: ProxyError::new(ErrorKind::UpstreamTimeout),
            close: false,
        }
    }
}

/// What every step of one exchange reads, and the outcome it writes.
struct Ctx<'a> {
    w: &'a Worker,
    l: &'a Listener,
    /// The generation in force when the request came (a reload does not
    /// change it under the request).
    gen: &'a Generation,
    req: &'a Request,
    /// The outcome record.
    t: Tracker<'a>,
    /// A response head started towards the client: weft can no longer
    /// answer with its own.
    head_started: bool,
    /// The client's address (for `x-forwarded-for`).
    peer_ip: &'a str,
    /// Counts the request in its endpoint's requests in flight.
    in_flight: Option<Counted<'a>>,
    /// Counts the request in its cluster's requests in flight.
    cluster_request: Option<Counted<'a>>,
    /// Counts the request in its listener's requests in flight (when the
    /// listener has a cap).
    listener_request: Option<Counted<'a>>,
    /// Counts the request in its cluster's retries in flight, once it
    /// retries.
    retrying: Option<Counted<'a>>,
    /// When the request carried a deadline (`grpc-timeout`,
    /// `weft-timeout-ms`): when it ends (or the route's timeout, if that is
    /// sooner). What is left of it goes upstream in the same fields.
    deadline: Option<Instant>,
    /// The deadline in force is the client's own (shorter than the
    /// route's timeout): passing it is no fault of the endpoint's.
    client_deadline: bool,
    /// The route's per-try timeout, when the request carried a deadline:
    /// an attempt is told at most this much.
    per_try: Option<Duration>,
    /// weft sent the client its own `100 Continue`: the upstream's is
    /// dropped.
    continued: bool,
    /// The client's verified identity (mutual TLS), sent upstream.
    identity: Option<std::rc::Rc<str>>,
    /// The request's `traceparent` with weft's parent id, sent upstream in
    /// place of the client's (none when it had no valid one).
    traceparent: Option<[u8; weft_core::trace::TRACEPARENT_LEN]>,
    /// Responses to earlier pipelined requests on this connection, held
    /// back to go out with this one's (HTTP/1 only): written before
    /// anything else reaches the client.
    held: Option<&'a mut BytesMut>,
    /// This response may be held back too: the request came whole and the
    /// next request's head is already buffered, so weft reads nothing from
    /// the client before the next response is written.
    may_hold: bool,
    /// A write to the client during the attempts (what was held, an
    /// interim response) did not finish: it failed, or a deadline cancelled
    /// it midway. The client may have part of it, so nothing more may be
    /// written; the connection closes.
    write_cut: bool,
}

/// The request body, read from the client's buffer and stream.
struct RequestBody<'a> {
    /// The session's read buffer: the body's next bytes, then pipelined
    /// requests.
    cbuf: &'a mut BytesMut,
    reader: Body,
}

impl RequestBody<'_> {
    /// Reads the body's next bytes from the client (what the next read
    /// brings, validated and framed as received), waiting at most `idle`
    /// for them: a body that broke off or is malformed is 400, one that
    /// stalled 408.
    async fn next<R: AsyncReadRent>(
        &mut self,
        client: &mut R,
        timers: &Timers,
        idle: Duration,
    ) -> Result<Bytes, Failed> {
        match within(timers.after(idle), read_more(client, self.cbuf)).await {
            Some(Ok(n)) if n > 0 => {}
            Some(_) => return Err(Failed::downstream_body(ErrorKind::DownstreamBodyError)),
            None => return Err(Failed::downstream_body(ErrorKind::DownstreamBodyTimeout)),
        }
        self.reader
            .take(self.cbuf)
            .map_err(|_| Failed::downstream_body(ErrorKind::DownstreamBodyError))
    }
}

impl<'a> Ctx<'a> {
    /// Makes `to` the request's endpoint: in the outcome, and in its
    /// requests in flight.
    #[inline]
    fn aim(&mut self, to: &Upstream<'a>) {
        self.t.o.endpoint = Some(to.ep.addr);
        self.t.o.target = Some((to.c, to.i));
        if self.t.o.sent_at.is_none() && (self.w.metrics.is_some() || self.w.access_log.get().is_some()) {
            self.t.o.sent_at = Some(Instant::now());
        }
        self.in_flight = Some(Counted::new(&to.ep.in_flight));
    }

    /// After an attempt that answered `status`, or failed: whether the
    /// request goes again, as the route's retry policy says, for an
    /// idempotent method (any method when the upstream refused the
    /// stream: it never processed it), within its attempts, the cluster's
    /// retries in flight and its budget; then `to` is another usable
    /// endpoint where there is one (else the same), and the attempt is
    /// counted against the one it leaves unless its status does not count.
    fn again(&mut self, to: &mut Upstream<'a>, retry: &RetryPolicy, answer: Result<u16, &Failed>) -> bool {
        // Whether this attempt counts against its endpoint, if it goes again.
        let mut failed = true;
        let mut any_method = false;
        let again = match answer {
            Ok(status) => {
                failed = to.cluster.breaker.failures.status_fails(status);
                retry.retries_status(status)
            }
            Err(f) => match f.error.kind {
                ErrorKind::UpstreamReset | ErrorKind::UpstreamMalformed => retry.reset,
                ErrorKind::UpstreamTimeout => retry.timeout,
                ErrorKind::UpstreamRefusedStream => {
                    // Never processed: no fault of the endpoint's (a
                    // draining upstream refuses streams above its GOAWAY).
                    any_method = true;
                    failed = false;
                    retry.refused_stream
                }
                _ => false,
            },
        };
        // Another endpoint where one is usable, else the same one.
        again
            && (any_method || idempotent(self.req.method()))
            && self.t.o.attempts < retry.attempts
            && self.may_retry()
            && self.next_endpoint(to, false, failed)
    }

    /// After connecting to `to` failed with `e` (the `tries`-th time): Ok
    /// when the request goes to another usable endpoint (a connect failure
    /// the route retries: the request never left, so any method may go
    /// again), else the failure to answer. A failed connect counts as an
    /// attempt (a successful one when the request goes out on it).
    fn connect_failed(
        &mut self,
        to: &mut Upstream<'a>,
        retry: &RetryPolicy,
        e: ProxyError,
        tries: &mut u32,
    ) -> Result<(), Failed> {
        self.t.o.attempts += 1;
        let connect_failure = matches!(
            e.kind,
            ErrorKind::ConnectRefused | ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout
        );
        let again = connect_failure
            && retry.connect_failure
            && *tries < retry.attempts
            && self.may_retry()
            && self.next_endpoint(to, true, true);
        if !again {
            return Err(Failed::connect(e));
        }
        *tries += 1;
        Ok(())
    }

    /// Waits the jittered backoff before retry number `retries`.
    async fn backoff(&self, retry: &RetryPolicy, retries: u32) {
        let wait = self.w.jitter(retry.backoff_cap(retries));
        if !wait.is_zero() {
            self.w.timers.after(wait).await;
        }
    }

    /// True when this request may retry: it already does, or its cluster
    /// has room for one more retry in flight (then it takes it).
    fn may_retry(&mut self) -> bool {
        if self.retrying.is_some() {
            return true;
        }
        let Some((c, _)) = self.t.o.target else {
            return false;
        };
        let state = &self.gen.clusters[c];
        if state.retries.get() >= state.limits.max_retries {
            return false;
        }
        self.retrying = Some(Counted::new(&state.retries));
        true
    }

    /// Re-encodes `head` for `to` when the endpoint changed since it was
    /// encoded (`at`: that endpoint's index) and the request names no host:
    /// then its Host is the endpoint's authority.
    /// A request with a deadline is re-encoded for every attempt: the time
    /// left goes with it.
    fn rehead(&self, to: &Upstream<'_>, head: &mut Bytes, at: &mut usize) {
        if (*at != to.i && self.req.authority().is_none()) || self.deadline.is_some() {
            *head = self.head_for(to);
        }
        *at = to.i;
    }

    /// Within the cluster's retry budget, points `to` at another usable
    /// endpoint (or, unless `other` is required, leaves it where it is when
    /// there is none), and counts the attempt on the one it leaves as
    /// failed unless `failed` is false (a status retried that outlier
    /// ejection does not count, like a 429). False, and nothing changed,
    /// when there is no retry to make.
    fn next_endpoint(&mut self, to: &mut Upstream<'a>, other: bool, failed: bool) -> bool {
        let tried = &self.t.o.failed_attempts;
        let current = to.i;
        let next = self
            .w
            .pick_other(self.gen, to.c, |j| j == current || tried.contains(&j));
        if other && next.is_none() {
            return false;
        }
        // Retries may add only so much to the cluster's traffic.
        if !self.gen.clusters[to.c]
            .budget
            .borrow_mut()
            .withdraw(Instant::now())
        {
            return false;
        }
        if failed {
            self.t.o.failed_attempts.push(current);
        }
        if let Some((i, ep)) = next {
            *to = Upstream { i, ep, ..*to };
            self.aim(to);
        }
        true
    }

    /// The failure when the deadline in force passed before the answer: the
    /// client's own (504 `deadline-exceeded`, not the endpoint's fault) or
    /// the route's timeout (504 `upstream-timeout`).
    fn timed_out(&self) -> Failed {
        if self.client_deadline {
            Failed {
                error: ProxyError::new(ErrorKind::DeadlineExceeded),
                close: false,
            }
        } else {
            Failed::timeout()
        }
    }

    /// The request's head as it goes to `to` (an HTTP/1.0 request without
    /// Host gets the endpoint's authority).
    fn head_for(&self, to: &Upstream<'_>) -> Bytes {
        let opts = self.options_for(to);
        self.w.encode_head(|out| self.req.encode_h1(&opts, out))
    }

    /// What the request's head takes on its way to `to`: the client's
    /// address and scheme, the endpoint's authority for a request without
    /// one, the verified identity, and the time left of its deadline (at
    /// most the per-try timeout).
    fn options_for<'o>(&'o self, to: &'o Upstream<'_>) -> RequestOptions<'o> {
        RequestOptions {
            client_ip: self.peer_ip,
            proto: if self.l.tls.is_some() { "https" } else { "http" },
            default_host: &to.ep.authority,
            identity: self.identity.as_deref(),
            traceparent: self.traceparent.as_ref().map(|tp| &tp[..]),
            request_id: self.t.request_id.as_ref().map(|id| &id[..]),
            deadline: self.deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                self.per_try.map_or(left, |t| t.min(left))
            }),
        }
    }

    /// The request's head as it goes to `to` over HTTP/2; a head HTTP/2
    /// cannot carry is the client's fault (400).
    fn h2_head_for(&self, to: &Upstream<'_>) -> Result<http::Request<()>, Failed> {
        let opts = self.options_for(to);
        let scheme = if to.cluster.tls.is_some() { "https" } else { "http" };
        self.req.to_h2(&opts, scheme).map_err(|_| Failed {
            error: ProxyError::new(ErrorKind::BadRequest {
                status: 400,
                code: "bad-request",
            }),
            close: true,
        })
    }

    /// Answers with weft's own error (callers box it: error paths must not
    /// grow the request's future); `close`: the client connection must close.
    async fn fail<W: AsyncWriteRent>(&mut self, client: &mut W, e: ProxyError, close: bool) -> After {
        if !self.flush_held(client).await {
            // A write to the client did not finish: nothing may follow it.
            let kind = match e.kind {
                ErrorKind::DownstreamWriteTimeout => e.kind,
                _ => ErrorKind::DownstreamClosed,
            };
            self.t.o.fail(ProxyError::new(kind).code(), Side::Downstream);
            return After::Close;
        }
        reply_error(client, &mut self.t, e, close, self.req, self.l.write_timeout).await
    }

    /// True when responses to earlier pipelined requests are held back.
    fn holds(&self) -> bool {
        self.held.as_deref().is_some_and(|h| !h.is_empty())
    }

    /// Writes the responses held back for earlier pipelined requests (see
    /// [`Ctx::held`]): false when the client did not take them all (gone,
    /// or slower than the write timeout).
    async fn flush_held<W: AsyncWriteRent>(&mut self, client: &mut W) -> bool {
        if self.write_cut {
            return false;
        }
        match self.held.as_deref_mut() {
            Some(held) if !held.is_empty() => {
                // Stays set if this write is cancelled midway.
                self.write_cut = true;
                let sent = write_held(self.w, self.l, client, held).await;
                self.write_cut = !sent;
                sent
            }
            _ => true,
        }
    }

    /// Answers a failed attempt, or closes when the client is gone.
    async fn failed<S: Stream>(&mut self, mut client: S, f: Failed, body_done: bool) -> Next<S> {
        if f.error.kind == ErrorKind::DownstreamClosed {
            // Nobody to answer (the upstream connection is dropped).
            self.t.o.fail(f.error.code(), Side::Downstream);
            return Next::Close;
        }
        let after = Box::pin(self.fail(&mut client, f.error, f.close || !body_done)).await;
        Next::after(after, client)
    }
}

impl<'a> Ctx<'a> {
    /// The context of a request whose head arrived at `started`.
    fn new(
        w: &'a Worker,
        l: &'a Listener,
        gen: &'a Generation,
        req: &'a Request,
        peer_ip: &'a str,
        started: Instant,
    ) -> Self {
        let mut t = Tracker::new(w, gen, l.index, started);
        t.req = Some(req);
        t.peer = Some(peer_ip);
        if l.generate_request_id && req.header("x-request-id").is_none() {
            t.request_id = Some(weft_core::trace::request_id(w.random(), w.random()));
        }
        // A repeated `traceparent` is invalid: it goes on as it came.
        let traceparent = req
            .single_header("traceparent")
            .and_then(|tp| weft_core::trace::next_hop(tp, w.random()));
        Ctx {
            w,
            l,
            gen,
            req,
            t,
            head_started: false,
            peer_ip,
            in_flight: None,
            cluster_request: None,
            listener_request: None,
            retrying: None,
            deadline: None,
            client_deadline: false,
            per_try: None,
            continued: false,
            identity: None,
            traceparent,
            held: None,
            may_hold: false,
            write_cut: false,
        }
    }

    /// Takes the request in and routes it: a place in the listener's
    /// requests in flight, the first matching route (within its rate
    /// limit), its cluster, and the deadline in force (the route's
    /// timeout counted from `started`, shortened to the client's own).
    /// The error is weft's answer.
    fn route(&mut self, started: Instant) -> Result<(&'a Route, usize, Instant), ErrorKind> {
        let (w, l, req) = (self.w, self.l, self.req);
        match self.gen.listeners[l.index].slot() {
            Ok(slot) => self.listener_request = slot.map(Counted::new),
            // The listener is full: shed the request at once.
            Err(()) => return Err(ErrorKind::Overflow),
        }
        let identity = self.identity.as_deref();
        let (ri, route) = self
            .gen
            .table(l.index)
            .ok_or(ErrorKind::NoRoute)?
            .find_indexed(req.host(), req.path(), req.method(), |n| {
                // Routes match `weft-client-identity` against the verified
                // identity only, never a client's own field of that name.
                if n.eq_ignore_ascii_case("weft-client-identity") {
                    identity.map(str::as_bytes)
                } else {
                    req.header(n)
                }
            })
            .ok_or(ErrorKind::NoRoute)?;
        self.t.o.route = Some(ri);
        if route.rate_limit.is_some() && !self.gen.admit(l.index, ri, started) {
            return Err(ErrorKind::RateLimited);
        }
        let c = w.pick_cluster(&route.target);
        self.t.o.cluster = Some(c);
        let mut deadline = started + route.timeout;
        if let Some(wait) = req.deadline() {
            if let Some(theirs) = started.checked_add(wait).filter(|d| *d < deadline) {
                deadline = theirs;
                self.client_deadline = true;
            }
            self.deadline = Some(deadline);
            self.per_try = route.retry.per_try_timeout;
        }
        Ok((route, c, deadline))
    }

    /// Picks the request's first endpoint in cluster `c` and takes a place
    /// in the cluster's requests in flight (503 `overflow` when it is full:
    /// weft answers at once rather than queue).
    fn first_endpoint(&mut self, c: usize) -> Result<Upstream<'a>, ErrorKind> {
        let w = self.w;
        let gen = self.gen;
        let (i, ep) = w.pick_endpoint(gen, c).ok_or(ErrorKind::NoEndpoint)?;
        let to = Upstream {
            c,
            i,
            ep,
            cluster: &gen.config.clusters[c],
        };
        self.aim(&to);
        let state = &gen.clusters[c];
        if state.requests.get() >= state.limits.max_requests {
            return Err(ErrorKind::Overflow);
        }
        self.cluster_request = Some(Counted::new(&state.requests));
        state.budget.borrow_mut().deposit(self.t.o.head_at);
        Ok(to)
    }
}

/// Forwards one request and its response, and writes its outcome record
/// when it ends, on listener `l` of generation `gen`. `started`: when its
/// head arrived (the route timeout counts from there).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange<S: Stream>(
    w: &Worker,
    gen: &Generation,
    l: &Listener,
    mut client: S,
    (cbuf, held): (&mut BytesMut, &mut BytesMut),
    req: &Request,
    peer_ip: &str,
    started: Instant,
) -> Next<S> {
    let mut x = Ctx::new(w, l, gen, req, peer_ip, started);
    x.identity = client.identity();
    x.held = Some(held);
    x.t.o.bytes_in = req.wire_len() as u64;
    let mut body = RequestBody {
        cbuf,
        reader: Body::new(req.framing()),
    };
    let (route, c, deadline) = match x.route(started) {
        Ok(routed) => routed,
        Err(kind) => {
            let close = !body.reader.done();
            let after = Box::pin(x.fail(&mut client, ProxyError::new(kind), close)).await;
            return Next::after(after, client);
        }
    };
    // A request with `Upgrade` is never carried over HTTP/2: to a
    // cleartext HTTP/2 cluster it goes over HTTP/1.1 to the same endpoint
    // (a weft there speaks both on one port), as linkerd2-proxy does.
    let cluster = &gen.config.clusters[c];
    let to_h2 = cluster.protocol == Protocol::Http2 && !(req.upgrade() && cluster.tls.is_none());
    if to_h2 && req.framing() == BodyFraming::Chunked {
        // The payload goes up as DATA: the chunked framing comes off.
        body.reader = Body::dechunking();
    }
    let first = match body.reader.take(body.cbuf) {
        Ok(b) => b,
        Err(_) => {
            let e = ProxyError::new(ErrorKind::DownstreamBodyError);
            let after = Box::pin(x.fail(&mut client, e, true)).await;
            return Next::after(after, client);
        }
    };
    x.t.o.bytes_in += first.len() as u64;
    if body.reader.done() && !to_h2 {
        // Whole, and answered on this path: with the next request's head
        // buffered, its response may wait to go out with the next one.
        x.may_hold = head_buffered(body.cbuf);
    } else if !x.flush_held(&mut client).await {
        // weft waits for the client's body, or answers from HTTP/2: what
        // is held goes first.
        return x.failed(client, Failed::client_closed(), false).await;
    }
    let mut send_continue = req.expect_continue() && !body.reader.done() && body.cbuf.is_empty();
    let mut first = first;
    if !body.reader.done() && replayable(req, &route.retry, to_h2) {
        // Kept whole for a retry, if it is small enough; no endpoint is
        // held meanwhile.
        let how = (send_continue, route.retry.max_replay_bytes);
        let gathered = within(
            w.timers.at(deadline),
            Box::pin(gather(&mut x, &mut client, &mut body, first, how)),
        )
        .await;
        match gathered {
            Some(Ok(kept)) => {
                first = kept;
                x.continued = send_continue;
                send_continue = false;
            }
            Some(Err(f)) => return x.failed(client, f, false).await,
            // Too slow an upload for the request's time.
            None => {
                let f = Failed::downstream_body(ErrorKind::DownstreamBodyTimeout);
                return x.failed(client, f, false).await;
            }
        }
    }
    let mut to = match x.first_endpoint(c) {
        Ok(to) => to,
        Err(kind) => {
            let close = !body.reader.done();
            let after = Box::pin(x.fail(&mut client, ProxyError::new(kind), close)).await;
            return Next::after(after, client);
        }
    };
    if to_h2 {
        let how = (to, &route.retry);
        return Box::pin(to_h2::from_h1(
            &mut x,
            client,
            &mut body,
            how,
            first,
            send_continue,
            deadline,
        ))
        .await;
    }
    let head = x.head_for(&to);
    if !body.reader.done() {
        return Box::pin(full_duplex(
            &mut x,
            client,
            &mut body,
            (to, &route.retry),
            (head, first),
            send_continue,
            deadline,
        ))
        .await;
    }
    // The whole request is here. Everything up to the response head, within
    // the route's timeout; on timeout the upstream connection is dropped,
    // never pooled.
    let forwarded = {
        // Pinned where it is made: moving a future this large costs copies.
        let mut waiting = H1Waiting {
            client: &mut client,
            watch: body.cbuf.is_empty(),
        };
        let tries = pin!(attempts(
            &mut x,
            &mut waiting,
            (&mut to, &route.retry),
            head,
            first,
        ));
        within(w.timers.at(deadline), tries).await
    };
    let (up, res) = match forwarded {
        Some(Ok(answer)) => answer,
        Some(Err(f)) => return x.failed(client, f, true).await,
        // Cut while writing to the client: the client is slow.
        None if x.write_cut => return x.failed(client, Failed::client_slow(), true).await,
        None => return x.failed(client, x.timed_out(), true).await,
    };
    respond(&mut x, client, up, res, to).await
}

/// True when a request whose body is still arriving may be read whole
/// first, so that an attempt that reached an endpoint can be repeated: an
/// idempotent one, on a route that retries such attempts, or any one to an
/// HTTP/2 cluster (`h2`) on a route that retries refused streams; with a
/// body that may fit `max_replay_bytes` (one of unknown length is tried).
fn replayable(req: &Request, retry: &RetryPolicy, h2: bool) -> bool {
    let fits = match req.body() {
        BodyLength::Exact(n) => n <= retry.max_replay_bytes as u64,
        BodyLength::Unknown => retry.max_replay_bytes > 0 && req.framing() != BodyFraming::UntilClose,
        BodyLength::Empty => false,
    };
    // Only a body of known length is held for a refused stream: one of
    // unknown length may be a stream of messages (gRPC), each of which the
    // upstream must see as it comes.
    let refused =
        h2 && retry.refused_stream && retry.attempts > 1 && matches!(req.body(), BodyLength::Exact(_));
    fits && (refused || (idempotent(req.method()) && retry.retries_after_sending()))
}

/// Most bytes of response body copied into the head's buffer to go out in
/// the same write.
const INLINE_BODY: usize = 1024;

/// Most bytes of responses to pipelined requests held back to go out in
/// one write; past it they go at once.
const HOLD_BYTES: usize = 16 * 1024;

/// Writes the responses to pipelined requests held back in `held`
/// (nothing when there are none), within the listener's write timeout:
/// false when the client did not take them all. Weft calls it before it
/// waits for the client, and before any write of its own.
pub(crate) async fn write_held<W: AsyncWriteRent>(
    w: &Worker,
    l: &Listener,
    client: &mut W,
    held: &mut BytesMut,
) -> bool {
    if held.is_empty() {
        return true;
    }
    let out = held.split().freeze();
    let sent = within(w.timers.after(l.write_timeout), write_one(client, out)).await;
    matches!(sent, Some(Ok(())))
}

/// True when `buf` holds a whole request head (a blank line ends it): the
/// next pipelined request, which weft reads without waiting for the client.
pub(crate) fn head_buffered(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n")
}

/// `100 Continue`, for a client that waits for it before its body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Reads the request body on from `first` until it is whole or longer than
/// the route's `max_replay_bytes` (what was read goes first then, and the
/// rest streams). Tells a waiting client to go on first. Each read waits at
/// most the listener's idle timeout (408 past it).
async fn gather<S: Stream>(
    x: &mut Ctx<'_>,
    client: &mut S,
    body: &mut RequestBody<'_>,
    first: Bytes,
    (send_continue, limit): (bool, usize),
) -> Result<Bytes, Failed> {
    if send_continue {
        let sent = within(
            x.w.timers.after(x.l.write_timeout),
            write_one(client, Bytes::from_static(CONTINUE)),
        )
        .await;
        if !matches!(sent, Some(Ok(()))) {
            return Err(Failed::client_closed());
        }
        x.t.o.bytes_out += CONTINUE.len() as u64;
    }
    let expected = match x.req.framing() {
        BodyFraming::Length(n) => n as usize,
        _ => 0,
    };
    let mut kept = BytesMut::with_capacity(expected.max(first.len()));
    kept.extend_from_slice(&first);
    while !body.reader.done() && kept.len() <= limit {
        let piece = body.next(client, &x.w.timers, x.l.idle_timeout).await?;
        x.t.o.bytes_in += piece.len() as u64;
        kept.extend_from_slice(&piece);
    }
    Ok(kept.freeze())
}

/// Where a request goes: the endpoint and its cluster, with their indices.
#[derive(Clone, Copy)]
struct Upstream<'a> {
    c: usize,
    i: usize,
    ep: &'a Endpoint,
    cluster: &'a Cluster,
}

/// Opens a connection for a request nothing of which was sent yet: to `to`,
/// or, when connecting fails and the route allows it, to another usable
/// endpoint of the cluster (the request never left, so any method may go
/// again). Afterwards `to` and the outcome name the endpoint used; the
/// endpoints that failed are in the outcome. `fresh`: a new connection,
/// never a pooled one (after a pooled one turned out stale).
async fn open<'a>(
    x: &mut Ctx<'a>,
    to: &mut Upstream<'a>,
    retry: &RetryPolicy,
    fresh: bool,
) -> Result<Conn, Failed> {
    let mut tries = 1;
    loop {
        let state = &x.gen.clusters[to.c];
        let opened = if fresh {
            Box::pin(Conn::connect(&x.w.dialer(), to.ep, to.cluster)).await
        } else {
            Conn::open(&x.w.dialer(), to.ep, to.cluster, || state.may_connect()).await
        };
        match opened {
            Ok(conn) => return Ok(conn),
            Err(e) => x.connect_failed(to, retry, e, &mut tries)?,
        }
    }
}

/// Sends a whole request and reads the final response head. A request that
/// met a pooled connection the upstream had closed goes again on a new one
/// when that is safe; one whose attempt failed in a way the route retries
/// (a reset, a per-try timeout, a status) goes again to another endpoint,
/// for idempotent methods, within the attempts and the cluster's budget,
/// after a jittered backoff.
async fn attempts<'a, C: Waiting>(
    x: &mut Ctx<'a>,
    client: &mut C,
    (to, retry): (&mut Upstream<'a>, &RetryPolicy),
    mut head: Bytes,
    first: Bytes,
) -> Result<(Conn, ResponseHead), Failed> {
    // The endpoint `head` was encoded for.
    let mut head_at = to.i;
    if x.holds() && !to.ep.has_fresh_idle(&to.cluster.pool, Instant::now()) {
        // A connect may take its time: what is held goes first.
        client.held_out(x).await?;
    }
    let mut up = open(x, to, retry, false).await?;
    let w: &Worker = x.w;
    let mut retries = 0;
    loop {
        x.rehead(to, &mut head, &mut head_at);
        x.t.o.attempts += 1;
        let exchange = async {
            match write_two_now(&mut up.io, head.clone(), first.clone(), w.quiet()).await {
                Ok(()) => response_head(x, client, &mut up).await,
                Err(_) => Err(Failed::upstream_gone(true)),
            }
        };
        let answer = match retry.per_try_timeout {
            Some(d) => match within(w.timers.after(d), exchange).await {
                Some(answer) => answer,
                // Cut while writing to the client: the client is slow.
                None if x.write_cut => Err(Failed::client_slow()),
                None => Err(Failed::timeout()),
            },
            None => exchange.await,
        };
        let again = match &answer {
            Err(f)
                if up.reused
                    && f.error.retry == RetryClass::StaleConnection
                    && f.error.may_retry(idempotent(x.req.method())) =>
            {
                // A pooled connection the upstream had already closed: the
                // request got no answer, and repeating it cannot do harm. On
                // a new connection, to another endpoint if this one now
                // refuses (it may have gone away for good).
                client.held_out(x).await?;
                up = open(x, to, retry, true).await?;
                continue;
            }
            answer => x.again(to, retry, answer.as_ref().map(|res| res.status)),
        };
        if !again {
            return answer.map(|res| {
                x.t.o.upstream_at = Some(Instant::now());
                (up, res)
            });
        }
        // This attempt's connection is dropped (its answer unread).
        retries += 1;
        client.held_out(x).await?;
        x.backoff(retry, retries).await;
        up = open(x, to, retry, false).await?;
    }
}

/// What the forward step asks of the client while an upstream takes its
/// time to answer: HTTP/1.1 and HTTP/2 sessions each have their own.
trait Waiting {
    /// Passes an interim (1xx) response on (or drops it, for a client that
    /// does not take them); fails when the client is gone.
    async fn interim(&mut self, x: &mut Ctx<'_>, res: &ResponseHead) -> Result<(), Failed>;

    /// Resolves once the client has given up on the request (closed its
    /// connection, reset its stream); never for a client weft does not
    /// watch.
    async fn gone(&mut self);

    /// The upstream takes its time (a connect, a retry, an answer past
    /// the watch's grace): responses held back for earlier pipelined
    /// requests go out now instead of waiting for this one's; fails when
    /// the client did not take them all.
    async fn held_out(&mut self, _x: &mut Ctx<'_>) -> Result<(), Failed> {
        Ok(())
    }
}

/// An HTTP/1 client waiting for its answer. `watch`: its end of stream
/// means it gave up (no pipelined bytes of it are buffered).
struct H1Waiting<'c, S> {
    client: &'c mut S,
    watch: bool,
}

impl<S: Stream> Waiting for H1Waiting<'_, S> {
    async fn interim(&mut self, x: &mut Ctx<'_>, res: &ResponseHead) -> Result<(), Failed> {
        forward_interim(x, self.client, res).await
    }

    async fn held_out(&mut self, x: &mut Ctx<'_>) -> Result<(), Failed> {
        if x.flush_held(self.client).await {
            Ok(())
        } else {
            Err(Failed::client_closed())
        }
    }

    async fn gone(&mut self) {
        while self.watch {
            match self.client.readable(false).await.map(|()| self.client.peek()) {
                Err(_) | Ok(Peek::Closed) => return,
                // The next request, pipelined: stop watching (its bytes
                // stay in the socket for the next exchange).
                Ok(Peek::Data) => self.watch = false,
                Ok(Peek::Nothing) => {}
            }
        }
        std::future::pending().await
    }
}

/// An HTTP/1 client's write half during a full-duplex exchange: it takes
/// interim responses; its reading side is busy with the upload.
struct H1Interim<'c, W>(&'c mut W);

impl<W: AsyncWriteRent> Waiting for H1Interim<'_, W> {
    async fn interim(&mut self, x: &mut Ctx<'_>, res: &ResponseHead) -> Result<(), Failed> {
        forward_interim(x, self.0, res).await
    }

    async fn gone(&mut self) {
        std::future::pending().await
    }
}

/// Reads the final response head, passing interim ones to the client and
/// watching it for a close while the upstream takes its time.
async fn response_head<C: Waiting>(
    x: &mut Ctx<'_>,
    client: &mut C,
    up: &mut Conn,
) -> Result<ResponseHead, Failed> {
    let mut informational = false;
    loop {
        let mut spare = x.w.take_fields();
        let parsed = parse_response_in(&mut up.buf, &RESPONSE_LIMITS, x.req.is_head(), &mut spare);
        x.w.give_fields(spare);
        match parsed {
            Ok(Some(res)) if res.is_informational() && res.status != 101 => {
                informational = true;
                if !(res.status == 100 && x.continued) {
                    client.interim(x, &res).await?;
                }
                continue;
            }
            Ok(Some(res)) => return Ok(res),
            Ok(None) => {}
            Err(_) => return Err(Failed::malformed()),
        }
        let grace = x.w.timers.at(x.t.o.head_at + WATCH_AFTER);
        match read_upstream(x, up, client, grace).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => {
                // Nothing of an answer came: on a reused connection, the
                // upstream had closed it.
                let stale = up.buf.is_empty() && !informational;
                return Err(Failed::upstream_gone(stale));
            }
            Err(ClientGone) => return Err(Failed::client_closed()),
        }
    }
}

/// Forwards an interim (1xx) response to an HTTP/1.1 client (HTTP/1.0
/// clients do not get them).
async fn forward_interim<W: AsyncWriteRent>(
    x: &mut Ctx<'_>,
    client: &mut W,
    res: &ResponseHead,
) -> Result<(), Failed> {
    if x.req.version() == Version::Http10 {
        return Ok(());
    }
    if !x.flush_held(client).await {
        return Err(Failed::client_closed());
    }
    // Stays set if this write is cancelled midway.
    x.write_cut = true;
    match write_interim(client, res, false).await {
        Ok(n) => {
            x.write_cut = false;
            x.t.o.bytes_out += n as u64;
            Ok(())
        }
        Err(_) => Err(Failed::client_closed()),
    }
}

/// The client closed (or reset) its connection.
struct ClientGone;

/// How long after a request's head weft waits for the upstream's answer
/// before it also watches the client for a close: most answers come sooner,
/// and then the watch costs nothing (no poll operation, only a deadline).
const WATCH_AFTER: Duration = Duration::from_millis(20);

/// Reads more of the upstream's answer. Meanwhile, after `grace`, notices
/// a client that gives up: the attempt is then abandoned (the caller drops
/// the upstream connection), as nginx does with its 499.
/// Responses held back for earlier pipelined requests go out at the end
/// of `grace` too: they wait for this one's only while it comes quickly.
async fn read_upstream<C: Waiting>(
    x: &mut Ctx<'_>,
    up: &mut Conn,
    client: &mut C,
    grace: Deadline<'_>,
) -> Result<std::io::Result<usize>, ClientGone> {
    let mut read = pin!(up.read_more());
    monoio::select! {
        r = &mut read => return Ok(r),
        _ = grace => {}
    }
    if client.held_out(x).await.is_err() {
        return Err(ClientGone);
    }
    monoio::select! {
        r = &mut read => Ok(r),
        () = client.gone() => Err(ClientGone),
    }
}

/// Writes an interim (1xx) response head to the client; `upgrade` for the
/// `101` that starts a tunnel. Returns the bytes written.
async fn write_interim<W: AsyncWriteRent>(
    client: &mut W,
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

/// Writes the response to a whole request back to the client, and pools
/// the upstream connection when it was read completely.
async fn respond<S: Stream>(
    x: &mut Ctx<'_>,
    mut client: S,
    mut up: Conn,
    res: ResponseHead,
    to: Upstream<'_>,
) -> Next<S> {
    if res.status == 101 {
        // Boxed: rare, and the response path stays small.
        return Box::pin(upgrade(x, client, up, res)).await;
    }
    let sent = send_response(
        x,
        &mut client,
        &mut up.io,
        &mut up.buf,
        &res,
        false,
        to.cluster.read_timeout,
    )
    .await;
    match sent {
        Sent::Whole { close } => {
            // `keep_alive` is false for close-delimited responses (weft-proto).
            if res.keep_alive {
                // One clock read for the request's end and the
                // connection's idle start.
                let end = x.t.end();
                up.release(to.ep, &to.cluster.pool, &x.w.dialer(), end);
            }
            x.w.give_fields(res.headers);
            if close {
                Next::Done(client)
            } else {
                Next::KeepAlive(client)
            }
        }
        Sent::Cut => Next::Close,
        Sent::Malformed => {
            let e = ProxyError::new(ErrorKind::UpstreamMalformed);
            let after = Box::pin(x.fail(&mut client, e, true)).await;
            Next::after(after, client)
        }
    }
}

/// Passes a `101 Switching Protocols` on and hands both connections to the
/// tunnel; refuses one the client did not ask for.
async fn upgrade<S: Stream>(x: &mut Ctx<'_>, mut client: S, up: Conn, res: ResponseHead) -> Next<S> {
    if !x.req.upgrade() {
        let e = ProxyError::new(ErrorKind::UpstreamMalformed);
        let after = Box::pin(x.fail(&mut client, e, true)).await;
        return Next::after(after, client);
    }
    if !x.flush_held(&mut client).await {
        x.t.o.fail("client-closed", Side::Downstream);
        return Next::Close;
    }
    let sent = within(
        x.w.timers.after(x.l.write_timeout),
        write_interim(&mut client, &res, true),
    )
    .await;
    match sent.unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into())) {
        Ok(n) => {
            x.t.o.status = Some(101);
            x.t.o.bytes_out += n as u64;
            Next::Tunnel(Box::new((client, up.io, up.buf)))
        }
        Err(_) => {
            x.t.o.fail("client-closed", Side::Downstream);
            Next::Close
        }
    }
}

/// How sending a response to the client ended.
enum Sent {
    /// Whole; `close`: the client connection closes after it.
    Whole { close: bool },
    /// Cut short (the upstream broke off or went silent, the client left
    /// or read nothing): the outcome says why; the client connection closes.
    Cut,
    /// The body could not be read from its first bytes on: nothing was
    /// sent, weft may still answer.
    Malformed,
}

/// Writes the response head and streams the body from the upstream to the
/// client. `cut`: the request body was not read whole (the client
/// connection closes after the response). Every wait is bounded; after a
/// timeout the upstream connection must be dropped (an operation was
/// cancelled on it), never pooled.
async fn send_response<W: AsyncWriteRent + crate::io::SendNow, R: AsyncReadRent>(
    x: &mut Ctx<'_>,
    client: &mut W,
    up: &mut R,
    ubuf: &mut BytesMut,
    res: &ResponseHead,
    cut: bool,
    read_timeout: Duration,
) -> Sent {
    let req = x.req;
    let http10 = req.version() == Version::Http10;
    let dechunk = http10 && res.framing == BodyFraming::Chunked;
    let client_framing = if dechunk {
        BodyFraming::UntilClose
    } else {
        res.framing
    };
    let close = !req.keep_alive() || client_framing == BodyFraming::UntilClose || x.w.draining.get() || cut;
    let opts = ResponseOptions {
        framing: client_framing,
        close,
        keep_alive_10: http10 && !close,
        upgrade: false,
    };
    let mut body = if dechunk {
        Body::dechunking()
    } else {
        Body::new(res.framing)
    };
    let Ok(first) = body.take(ubuf) else {
        return Sent::Malformed;
    };
    // A small first piece of body goes in the head's buffer: one plain
    // write, where two buffers would need a vectored one (whose iovec list
    // monoio allocates).
    if x.write_cut {
        // Part of an earlier write may have gone: nothing may follow it.
        x.t.o.fail(
            ProxyError::new(ErrorKind::DownstreamClosed).code(),
            Side::Downstream,
        );
        return Sent::Cut;
    }
    let inline = first.len() <= INLINE_BODY;
    if inline && body.done() && !close && x.may_hold {
        if let Some(held) = x.held.as_deref_mut() {
            // Whole, and the next request is buffered: this response goes
            // out with the next one's, in one write.
            if held.capacity() == 0 {
                *held = x.w.dialer().read_buffer();
            }
            let before = held.len();
            encode_response(res, &opts, held);
            held.extend_from_slice(&first);
            let (n, full) = (held.len() - before, held.len() >= HOLD_BYTES);
            x.head_started = true;
            x.t.o.bytes_out += n as u64;
            x.t.o.status = Some(res.status);
            // Past the bound, everything held goes now.
            if full && !x.flush_held(client).await {
                x.t.o.fail(
                    ProxyError::new(ErrorKind::DownstreamClosed).code(),
                    Side::Downstream,
                );
                return Sent::Cut;
            }
            return Sent::Whole { close };
        }
    }
    let out = x.w.encode_head(|out| {
        encode_response(res, &opts, out);
        if inline {
            out.extend_from_slice(&first);
        }
    });
    let first = if inline { Bytes::new() } else { first };
    // Responses held back for earlier pipelined requests go first, in the
    // same write when they can.
    let n = (out.len() + first.len()) as u64;
    let (out, first) = match x.held.as_deref_mut() {
        Some(held) if !held.is_empty() && first.is_empty() => (held.split().freeze(), out),
        Some(held) if !held.is_empty() => {
            held.extend_from_slice(&out);
            (held.split().freeze(), first)
        }
        _ => (out, first),
    };
    let timers = &x.w.timers;
    // The client's write deadline counts from when the upstream answered.
    let answered = x.t.o.upstream_at.unwrap_or(x.t.o.head_at);
    x.head_started = true;
    let sent = within(
        timers.at(answered + x.l.write_timeout),
        write_two_now(client, out, first, x.w.quiet()),
    )
    .await;
    if !client_took(&mut x.t, sent, n) {
        return Sent::Cut;
    }
    x.t.o.status = Some(res.status);
    let body_error = || ProxyError::new(ErrorKind::UpstreamBodyError).code();
    while !body.done() {
        match within(timers.after(read_timeout), read_more(up, ubuf)).await {
            Some(Ok(n)) if n > 0 => {}
            // A close-delimited body ends here (and is never kept alive).
            Some(_) if body.until_close() => break,
            // The upstream broke off or went silent mid-body: close so
            // that the client cannot take the truncated body for whole.
            Some(_) => {
                x.t.o.fail(body_error(), Side::Upstream);
                return Sent::Cut;
            }
            None => {
                let e = ProxyError::new(ErrorKind::UpstreamReadTimeout);
                x.t.o.fail(e.code(), Side::Upstream);
                return Sent::Cut;
            }
        }
        let Ok(piece) = body.take(ubuf) else {
            x.t.o.fail(body_error(), Side::Upstream);
            return Sent::Cut;
        };
        let n = piece.len() as u64;
        let sent = within(timers.after(x.l.write_timeout), write_one(client, piece)).await;
        if !client_took(&mut x.t, sent, n) {
            // The client reads nothing (or left): close it and release
            // the upstream connection.
            return Sent::Cut;
        }
        if ubuf.is_empty() && ubuf.capacity() > 4 * READ_CHUNK {
            // Never let a slow stream grow the buffer: start a fresh one.
            *ubuf = BytesMut::new();
        }
    }
    Sent::Whole { close }
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

/// How the response side of a full-duplex exchange ended.
enum Answer {
    /// Before a response head reached the client.
    Failed(Failed),
    /// The response was sent, or cut (see [`Sent`]).
    Sent(Sent, ResponseHead),
}

/// A request whose body is still arriving: the upload and the response
/// move at the same time on split connections. The upstream's answer
/// reaches the client whenever it comes; the upload goes on while the
/// response streams, and stops when the response has ended (the client
/// connection then closes, its body unread) or when the upstream stops
/// reading it. Both connections are kept only when both bodies went whole.
async fn full_duplex<'a, S: Stream>(
    x: &mut Ctx<'a>,
    mut client: S,
    body: &mut RequestBody<'_>,
    (mut to, retry): (Upstream<'a>, &RetryPolicy),
    (mut head, first): (Bytes, Bytes),
    send_continue: bool,
    deadline: Instant,
) -> Next<S> {
    let w: &Worker = x.w;
    let timers = &w.timers;
    // Connect, tell a waiting client to go on, send what is here.
    let opened = within(timers.at(deadline), async {
        let mut head_at = to.i;
        let mut up = open(x, &mut to, retry, false).await?;
        x.rehead(&to, &mut head, &mut head_at);
        if send_continue {
            if write_one(&mut client, Bytes::from_static(CONTINUE))
                .await
                .is_err()
            {
                return Err(Failed::client_closed());
            }
            x.t.o.bytes_out += CONTINUE.len() as u64;
        }
        send_start(x, &mut up, head, first).await.map(|()| up)
    })
    .await;
    let up = match opened {
        Some(Ok(up)) => up,
        Some(Err(f)) => return x.failed(client, f, false).await,
        None => return x.failed(client, x.timed_out(), false).await,
    };
    let Conn {
        io, buf: mut ubuf, ..
    } = up;
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = io.into_split();
    let progress = Progress::default();
    let (upload_result, answer) = {
        let mut upload = pin!(upload(
            timers,
            x.l.idle_timeout,
            &mut cr,
            body,
            &mut uw,
            &progress
        ));
        let mut response = pin!(async {
            let res = match within(
                timers.at(deadline),
                final_head(x, &mut H1Interim(&mut cw), &mut ur, &mut ubuf),
            )
            .await
            {
                Some(Ok(res)) => res,
                Some(Err(f)) => return Answer::Failed(f),
                None => return Answer::Failed(x.timed_out()),
            };
            x.t.o.upstream_at = Some(Instant::now());
            if res.status == 101 {
                // No tunnel for a request whose body is still coming.
                return Answer::Failed(Failed::malformed());
            }
            let read_timeout = to.cluster.read_timeout;
            // Unless the upload is whole by now, the client connection
            // closes after the response.
            let cut = !progress.whole.get();
            let sent = send_response(x, &mut cw, &mut ur, &mut ubuf, &res, cut, read_timeout).await;
            Answer::Sent(sent, res)
        });
        let mut uploaded = None;
        loop {
            monoio::select! {
                a = &mut response => break (uploaded, a),
                r = &mut upload, if uploaded.is_none() => match r {
                    // Whole, or the upstream stopped taking it: the answer
                    // decides the rest.
                    Ok(whole) => uploaded = Some(Ok(whole)),
                    // The client's body broke off or stalled: stop both.
                    Err(f) => break (Some(Err(f)), Answer::Failed(Failed::client_closed())),
                },
            }
        }
    };
    // Both sides have stopped (what was in flight is cancelled): count.
    x.t.o.bytes_in += progress.bytes.get();
    let upload_whole = matches!(upload_result, Some(Ok(true)));
    let Ok(client) = cr.reunite(cw) else {
        return Next::Close;
    };
    match (upload_result, answer) {
        (Some(Err(f)), _) if x.head_started => {
            // Too late for an answer of weft's own: cut the response.
            x.t.o.fail(f.error.code(), Side::Downstream);
            Next::Close
        }
        (Some(Err(f)), _) => x.failed(client, f, false).await,
        (_, Answer::Failed(f)) => x.failed(client, f, upload_whole).await,
        (_, Answer::Sent(Sent::Cut, _)) => Next::Close,
        (_, Answer::Sent(Sent::Malformed, _)) => {
            let f = Failed {
                error: ProxyError::new(ErrorKind::UpstreamMalformed),
                close: true,
            };
            x.failed(client, f, false).await
        }
        (_, Answer::Sent(Sent::Whole { close }, res)) => {
            if upload_whole && res.keep_alive {
                if let Ok(io) = ur.reunite(uw) {
                    let conn = Conn {
                        io,
                        buf: ubuf,
                        reused: false,
                    };
                    conn.release(to.ep, &to.cluster.pool, &x.w.dialer(), Instant::now());
                }
            }
            x.w.give_fields(res.headers);
            match (upload_whole, close) {
                (false, _) => Next::Linger(client),
                (true, true) => Next::Done(client),
                (true, false) => Next::KeepAlive(client),
            }
        }
    }
}

/// Sends the head and the body's first bytes of a request whose body is
/// still arriving on `up`: its one attempt (it cannot be repeated).
async fn send_start(x: &mut Ctx<'_>, up: &mut Conn, head: Bytes, first: Bytes) -> Result<(), Failed> {
    x.t.o.attempts += 1;
    write_two(&mut up.io, head, first)
        .await
        .map_err(|_| Failed::upstream_gone(false))
}

/// Reads the final response head of a full-duplex exchange: interim
/// responses other than `100 Continue` (which weft sent itself, or the
/// client did not wait for) go to an HTTP/1.1 client.
async fn final_head<C: Waiting, R: AsyncReadRent>(
    x: &mut Ctx<'_>,
    client: &mut C,
    up: &mut R,
    ubuf: &mut BytesMut,
) -> Result<ResponseHead, Failed> {
    loop {
        let mut spare = x.w.take_fields();
        let parsed = parse_response_in(ubuf, &RESPONSE_LIMITS, x.req.is_head(), &mut spare);
        x.w.give_fields(spare);
        match parsed {
            Ok(Some(res)) if res.status == 100 => continue,
            Ok(Some(res)) if res.is_informational() && res.status != 101 => {
                client.interim(x, &res).await?;
                continue;
            }
            Ok(Some(res)) => return Ok(res),
            Ok(None) => {}
            Err(_) => return Err(Failed::malformed()),
        }
        match read_more(up, ubuf).await {
            Ok(n) if n > 0 => {}
            _ => return Err(Failed::upstream_gone(false)),
        }
    }
}

/// How far an upload got, readable while it runs and after it stopped.
#[derive(Default)]
struct Progress {
    /// Body bytes read from the client.
    bytes: Cell<u64>,
    /// The body went up whole.
    whole: Cell<bool>,
}

/// Moves the request body from the client to the upstream until it ends.
/// `Ok(true)`: it went whole; `Ok(false)`: the upstream stopped taking it
/// (it may have answered); an error when the client's body broke off, was
/// malformed, or stalled for the listener's idle timeout.
async fn upload<R: AsyncReadRent, W: AsyncWriteRent>(
    timers: &Timers,
    idle: Duration,
    client: &mut R,
    body: &mut RequestBody<'_>,
    up: &mut W,
    progress: &Progress,
) -> Result<bool, Failed> {
    while !body.reader.done() {
        let piece = body.next(client, timers, idle).await?;
        progress.bytes.set(progress.bytes.get() + piece.len() as u64);
        if write_one(up, piece).await.is_err() {
            // The upstream may have answered before it stopped reading.
            return Ok(false);
        }
    }
    progress.whole.set(true);
    Ok(true)
}
