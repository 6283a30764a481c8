//! The per-core state of one worker: configuration, per-cluster endpoint
//! state and pools, listener gates, deadlines, and the outcome record each
//! request leaves. Shared by the worker's tasks through `Rc`; nothing here
//! is shared with other workers, and nothing here runs the worker (that is
//! `worker`).

use crate::counters::WorkerCounters;
use crate::health::HealthTable;
use crate::timer::Timers;
use crate::upstream::{Dialer, Endpoint};
use bytes::{Bytes, BytesMut};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use weft_core::balance::pick_weighted;
use weft_core::metrics::Metrics;
use weft_core::{
    least_loaded, least_loaded_among, BalancerKind, BudgetSettings, ClusterLimits, Config, NoHealthy,
    Outcome, RetryBudget, Rng, RoundRobin, Target, TokenBucket,
};

/// A cluster as this worker sees it.
pub(crate) struct ClusterState {
    pub endpoints: Vec<Endpoint>,
    /// When the last ejection in force ends (None: no endpoint is out), so
    /// that a pick looks at ejections only while there are some.
    ejected_until: Cell<Option<Instant>>,
    /// This worker's share of the cluster's retry budget.
    pub budget: RefCell<RetryBudget>,
    /// This worker's share of the cluster's thresholds.
    pub limits: ClusterLimits,
    /// Requests in flight to the cluster from this worker.
    pub requests: Cell<u32>,
    /// Retries in flight to the cluster from this worker.
    pub retries: Cell<u32>,
    rr: RefCell<RoundRobin>,
}

/// Per-worker state, shared by the worker's tasks through `Rc`.
pub(crate) struct Worker {
    pub config: Arc<Config>,
    pub clusters: Vec<ClusterState>,
    /// Every endpoint's standing with the health prober (shared by all
    /// workers, written by the prober).
    pub health: Arc<HealthTable>,
    /// Per listener: this worker's own TLS configuration, for a TLS one.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    rng: RefCell<Rng>,
    /// The usable endpoints of a pick while some are out (kept to reuse
    /// its memory).
    usable: RefCell<Vec<usize>>,
    /// Set when shutdown began: answer in flight, then close.
    pub draining: Cell<bool>,
    /// This worker's counters, readable from other threads.
    pub counters: Arc<WorkerCounters>,
    /// This worker's request metrics, kept when there is an admin listener
    /// to read them.
    pub metrics: Option<RefCell<Metrics>>,
    /// This worker's side of the access logs, when a listener has one.
    pub access_log: Option<crate::access_log::WorkerLog>,
    /// Per listener: this worker's share of its `max_connections`.
    pub gates: Vec<Gate>,
    /// Deadlines of this worker's waits.
    pub timers: Rc<Timers>,
    /// Polling instead of sleeping after activity (`runtime.idle_poll`),
    /// when on.
    pub idle_poll: Option<crate::spin::Spin>,
    /// Per listener: requests in flight on this worker, and its share of
    /// the listener's `max_requests`.
    pub listener_requests: Vec<(Cell<u32>, Option<u32>)>,
    /// The routes in force (replaced by a reload; a request keeps the ones
    /// it began with).
    routes: RefCell<Rc<Routes>>,
    /// How many workers share the listeners (rate limits are split).
    workers: usize,
    /// Connections with a read posted in the hot window (at most
    /// [`HOT_READS`]).
    pub hot_reads: Cell<usize>,
    /// Where HTTP/1 heads going out are encoded: each takes its bytes out
    /// of one shared buffer ([`Worker::encode_head`]), so that a head costs
    /// no allocation of its own.
    heads: RefCell<BytesMut>,
    /// The pipeline tests' in-memory network: upstream connections are
    /// made on it instead of TCP.
    #[cfg(test)]
    pub net: Option<Rc<crate::mem::Net>>,
    /// The pipeline tests read every outcome record here.
    #[cfg(test)]
    pub outcomes: RefCell<Vec<Outcome>>,
}

/// Size of the buffers heads are encoded into ([`Worker::encode_head`]).
const HEADS_BUFFER: usize = 8 * 1024;

/// Room a head usually needs: below it, the next head starts a new buffer
/// (a larger head grows the buffer itself).
const HEAD_ROOM: usize = 1024;

/// The routes a worker runs: a configuration's route tables (the rest of
/// it is the worker's own, which a reload does not change), with this
/// worker's share of each route's rate limit.
pub(crate) struct Routes {
    /// The configuration the routes are read from (`listeners[i].routes`).
    pub config: Arc<Config>,
    /// Per listener and route: this worker's share of the route's rate
    /// limit, if it has one.
    rate_limits: Vec<Vec<Option<RefCell<TokenBucket>>>>,
}

impl Routes {
    /// The routes of `config`; a route of `before` with the same name and
    /// limit keeps its bucket's state (a reload is no reason to let a
    /// burst through).
    fn new(config: Arc<Config>, workers: usize, before: Option<&Routes>) -> Self {
        let rate_limits = config
            .listeners
            .iter()
            .enumerate()
            .map(|(li, l)| {
                l.routes
                    .routes()
                    .iter()
                    .map(|r| {
                        let rl = r.rate_limit?;
                        let kept = before.and_then(|b| {
                            let old = b.config.listeners.get(li)?.routes.routes();
                            let j = old
                                .iter()
                                .position(|o| o.name == r.name && o.rate_limit == r.rate_limit)?;
                            let bucket = b.rate_limits.get(li)?.get(j)?.as_ref()?;
                            Some(*bucket.borrow())
                        });
                        Some(RefCell::new(kept.unwrap_or_else(|| {
                            TokenBucket::new(Instant::now(), rl.per_worker(workers))
                        })))
                    })
                    .collect()
            })
            .collect();
        Routes { config, rate_limits }
    }

    /// The route table of listener `li`.
    pub fn table(&self, li: usize) -> Option<&weft_core::RouteTable> {
        self.config.listeners.get(li).map(|l| &l.routes)
    }

    /// Takes a token from the rate limit of route `ri` of listener `li`, if
    /// it has one; false when the limit is spent.
    pub fn admit(&self, li: usize, ri: usize, now: Instant) -> bool {
        match self.rate_limits.get(li).and_then(|r| r.get(ri)) {
            Some(Some(bucket)) => bucket.borrow_mut().take(now),
            _ => true,
        }
    }
}

/// A listener's connection limit on one worker: the accept loop waits for
/// room before it accepts, a connection gives its place back when it ends.
pub(crate) struct Gate {
    open: Cell<usize>,
    /// Connections accepted through it, ever (`tcp_open_total`).
    opened: Cell<u64>,
    limit: usize,
    waiter: RefCell<Option<Waker>>,
    closed: Cell<bool>,
}

impl Gate {
    fn new(limit: usize) -> Self {
        Gate {
            open: Cell::new(0),
            opened: Cell::new(0),
            limit: limit.max(1),
            waiter: RefCell::new(None),
            closed: Cell::new(false),
        }
    }

    /// Resolves once a connection may be accepted (or the gate closed).
    pub fn room(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.open.get() < self.limit || self.closed.get() {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Connections open through this gate.
    pub fn count(&self) -> usize {
        self.open.get()
    }

    /// Counts an accepted connection; [`Gate::leave`] when it ends.
    pub fn enter(&self) {
        self.open.set(self.open.get() + 1);
        self.opened.set(self.opened.get() + 1);
    }

    /// Connections accepted through this gate, ever.
    pub fn opened(&self) -> u64 {
        self.opened.get()
    }

    /// A connection ended: its place is free again.
    pub fn leave(&self) {
        self.open.set(self.open.get().saturating_sub(1));
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Wakes the accept loop for good (at shutdown).
    pub fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Most connections of one worker that keep a read posted after a response
/// (the session's hot window). A posted read holds a buffer (2 KiB) and
/// the place a request is served in (about 3.5 KiB); this bounds what recently
/// active connections hold to about 1.4 MiB per worker, so that thousands of
/// connections going idle at once cost little, while a busy worker's
/// connections (up to this many) take each request with one read.
pub(crate) const HOT_READS: usize = 256;

/// One of the worker's [`HOT_READS`] places, given back when dropped.
pub(crate) struct HotRead<'a>(&'a Cell<usize>);

impl<'a> HotRead<'a> {
    /// Takes a place, if one is free.
    pub fn take(count: &'a Cell<usize>) -> Option<Self> {
        let n = count.get();
        (n < HOT_READS).then(|| {
            count.set(n + 1);
            HotRead(count)
        })
    }
}

impl Drop for HotRead<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Gives a connection's place at its listener's gate back when dropped.
pub(crate) struct Admitted<'a>(pub &'a Gate);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Worker {
    /// `workers`: how many workers share the listeners (their connection
    /// limits are split evenly).
    pub fn new(
        config: Arc<Config>,
        health: Arc<HealthTable>,
        seed: u64,
        counters: Arc<WorkerCounters>,
        workers: usize,
    ) -> Self {
        let metrics = config
            .admin
            .is_some()
            .then(|| RefCell::new(Metrics::new(&config)));
        let gates = config
            .listeners
            .iter()
            .map(|l| Gate::new(l.max_connections.div_ceil(workers.max(1))))
            .collect();
        let clusters = config
            .clusters
            .iter()
            .map(|c| ClusterState {
                endpoints: c
                    .endpoints
                    .iter()
                    .zip(&c.authorities)
                    .map(|(a, auth)| Endpoint::new(*a, auth.clone(), &c.peak_ewma))
                    .collect(),
                rr: RefCell::new(RoundRobin::default()),
                ejected_until: Cell::new(None),
                limits: c.limits.per_worker(workers),
                requests: Cell::new(0),
                retries: Cell::new(0),
                budget: RefCell::new(RetryBudget::new(
                    Instant::now(),
                    BudgetSettings {
                        // Each worker gets its share of the floor.
                        min_per_second: c.retry_budget.min_per_second.div_ceil(workers.max(1) as u32),
                        ..c.retry_budget
                    },
                )),
            })
            .collect();
        let listener_requests = config
            .listeners
            .iter()
            .map(|l| {
                let share = l.max_requests.map(|m| m.div_ceil(workers.max(1)).max(1) as u32);
                (Cell::new(0), share)
            })
            .collect();
        let routes = RefCell::new(Rc::new(Routes::new(config.clone(), workers, None)));
        let idle_poll = crate::spin::Spin::new(config.runtime.idle_poll);
        Worker {
            config,
            clusters,
            health,
            tls: Vec::new(),
            rng: RefCell::new(Rng::new(seed)),
            usable: RefCell::new(Vec::new()),
            draining: Cell::new(false),
            counters,
            metrics,
            access_log: None,
            gates,
            timers: Rc::new(Timers::default()),
            idle_poll,
            hot_reads: Cell::new(0),
            heads: RefCell::new(BytesMut::new()),
            routes,
            workers,
            listener_requests,
            #[cfg(test)]
            net: None,
            #[cfg(test)]
            outcomes: RefCell::new(Vec::new()),
        }
    }

    /// Encodes a head with `encode` and returns its bytes. Heads are
    /// carved one after another out of a shared 8 KiB buffer, as a bump
    /// allocator would: a new buffer is taken only when one is used up (or
    /// reused in place once every head carved from it is gone). A head
    /// kept long (a request waiting on a slow upload) holds at most its
    /// buffer.
    pub fn encode_head(&self, encode: impl FnOnce(&mut BytesMut)) -> Bytes {
        let mut heads = self.heads.borrow_mut();
        if heads.capacity() < HEAD_ROOM {
            heads.reserve(HEADS_BUFFER);
        }
        encode(&mut heads);
        heads.split().freeze()
    }

    /// How this worker opens upstream connections.
    pub fn dialer(&self) -> Dialer<'_> {
        Dialer {
            timers: &self.timers,
            #[cfg(test)]
            net: self.net.as_deref(),
        }
    }

    /// Takes the outcome of one request. Today it feeds the counters;
    /// breakers, metrics and access logs will read it here.
    /// `routes`: the routes the request was routed by, when it was.
    pub fn record(&self, o: &Outcome, routes: Option<&Routes>) {
        self.counters.outcome(o.success());
        let mut failed = false;
        if let Some((c, i)) = o.target {
            let cluster = &self.config.clusters[c];
            if let (BalancerKind::PeakEwma, Some(answered)) = (cluster.balancer, o.upstream_at) {
                // The time to the response head is the round trip weft saw.
                let ep = &self.clusters[c].endpoints[i];
                let mut rtt = ep.rtt.get();
                rtt.observe(
                    answered,
                    answered.saturating_duration_since(o.head_at),
                    &cluster.peak_ewma,
                );
                ep.rtt.set(rtt);
            }
            let settings = &cluster.breaker;
            for &f in &o.failed_attempts {
                self.endpoint_failed(c, f, o.end_at);
            }
            match o.endpoint_verdict(settings.failures) {
                Some(true) => self.clusters[c].endpoints[i]
                    .outlier
                    .borrow_mut()
                    .success(o.end_at, settings),
                Some(false) => {
                    failed = true;
                    self.endpoint_failed(c, i, o.end_at)
                }
                None => {}
            }
        }
        if let Some(m) = &self.metrics {
            // A request routed before a reload: its route by name now.
            let now = self.routes.borrow();
            let route = match (o.route, routes) {
                (Some(r), Some(was)) if !std::ptr::eq(was, &**now) => {
                    Metrics::same_route(&was.config, &now.config, o.listener, r)
                }
                (route, _) => route,
            };
            m.borrow_mut().record(o, route, failed);
        }
        #[cfg(test)]
        self.outcomes.borrow_mut().push(o.clone());
    }

    /// The cluster a routed request goes to (weighted pick for splits).
    pub fn pick_cluster(&self, target: &Target) -> usize {
        match target {
            Target::Cluster(c) => *c,
            Target::Split {
                clusters,
                weights,
                total,
            } => clusters[pick_weighted(weights, *total, &mut self.rng.borrow_mut())],
        }
    }

    /// Counts a failure against endpoint `i` of cluster `c`; ejects it
    /// when that was one too many and the cluster has room.
    fn endpoint_failed(&self, c: usize, i: usize, now: Instant) {
        let state = &self.clusters[c];
        let settings = &self.config.clusters[c].breaker;
        let out = state
            .endpoints
            .iter()
            .filter(|e| e.outlier.borrow().ejected(now))
            .count();
        let room = weft_core::outlier::may_eject(state.endpoints.len(), out, settings);
        let mut outlier = state.endpoints[i].outlier.borrow_mut();
        if outlier.failure(now, settings, room) {
            if let Some(m) = &self.metrics {
                m.borrow_mut().ejected(c, i);
            }
            let until = outlier.ejected_until().unwrap_or(now);
            let later = state.ejected_until.get().map_or(until, |u| u.max(until));
            state.ejected_until.set(Some(later));
        }
    }

    /// The counter of requests in flight on listener `l`, when it has a
    /// cap and room under it; `Err(())` when it is full; `Ok(None)` when it
    /// has no cap.
    pub fn listener_slot(&self, l: &weft_core::Listener) -> Result<Option<&Cell<u32>>, ()> {
        if l.max_requests.is_none() {
            return Ok(None);
        }
        let Some((count, cap)) = self.listener_requests.get(l.index) else {
            return Ok(None);
        };
        match cap {
            Some(cap) if count.get() >= *cap => Err(()),
            _ => Ok(Some(count)),
        }
    }

    /// The routes in force now.
    pub fn routes(&self) -> Rc<Routes> {
        self.routes.borrow().clone()
    }

    /// Takes the routes of `new` (a reload that changed routes only):
    /// requests from now on use them; requests in flight finish on theirs.
    /// Series in the metrics follow their routes by name.
    pub fn swap_routes(&self, new: Arc<Config>) {
        let old = self.routes();
        if let Some(m) = &self.metrics {
            m.borrow_mut().reroute(&old.config, &new);
        }
        let next = Rc::new(Routes::new(new, self.workers, Some(&old)));
        *self.routes.borrow_mut() = next;
    }

    /// True when cluster `c` may open one more connection on this worker:
    /// its connections (one per request in flight, the one about to open
    /// included, and the pooled ones) stay within `max_connections`.
    pub fn may_connect(&self, c: usize) -> bool {
        let state = &self.clusters[c];
        let open: usize = state
            .endpoints
            .iter()
            .map(|e| e.in_flight.get() as usize + e.idle_count())
            .sum();
        open <= state.limits.max_connections as usize
    }

    /// 64 random bits (trace parent ids, request ids).
    pub fn random(&self) -> u64 {
        self.rng.borrow_mut().next_u64()
    }

    /// A wait drawn evenly between zero and `cap` (full jitter).
    pub fn jitter(&self, cap: Duration) -> Duration {
        let nanos = cap.as_nanos().min(u128::from(u64::MAX)) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.borrow_mut().next_u64() % nanos)
    }

    /// Another endpoint of cluster `c` for a retry: not one that `tried`
    /// names, not ejected, passing its health check, and the least loaded
    /// of those.
    pub fn pick_other(&self, c: usize, tried: impl Fn(usize) -> bool) -> Option<(usize, &Endpoint)> {
        let now = Instant::now();
        let down = self.health.any_down(c);
        self.clusters[c]
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                !tried(*i) && !e.outlier.borrow().ejected(now) && (!down || self.health.healthy(c, *i))
            })
            .min_by_key(|(_, e)| e.in_flight.get())
    }

    /// The endpoint of cluster `c` the next request goes to (its index and
    /// itself), if it has any. Ejected endpoints and those failing their
    /// health check are skipped while another is usable; when none is,
    /// the pick ignores both (fail open, as Envoy does past its panic
    /// threshold), or finds none (`no_healthy = "fail-fast"`).
    pub fn pick_endpoint(&self, c: usize) -> Option<(usize, &Endpoint)> {
        let state = &self.clusters[c];
        let n = state.endpoints.len();
        if n == 0 {
            return None;
        }
        let ejections = state.ejected_until.get().and_then(|until| {
            let now = Instant::now();
            if now < until {
                Some(now)
            } else {
                // Every ejection is over.
                state.ejected_until.set(None);
                None
            }
        });
        let down = self.health.any_down(c);
        // While some endpoint is out, the draw is among the others only,
        // read once (the prober may change its table meanwhile).
        let degraded = ejections.is_some() || down;
        let mut usable = self.usable.borrow_mut();
        usable.clear();
        if degraded {
            usable.extend((0..n).filter(|&i| {
                !ejections.is_some_and(|now| state.endpoints[i].outlier.borrow().ejected(now))
                    && (!down || self.health.healthy(c, i))
            }));
            if usable.is_empty() && self.config.clusters[c].no_healthy == NoHealthy::FailFast {
                return None;
            }
        }
        let rng = &mut self.rng.borrow_mut();
        let i = match self.config.clusters[c].balancer {
            BalancerKind::LeastLoaded => {
                // Failures in a row count as load: an endpoint that fails
                // fast has nothing in flight, and would otherwise win.
                let load = |i: usize| {
                    let e = &state.endpoints[i];
                    e.in_flight
                        .get()
                        .saturating_add(e.outlier.borrow().failure_load(Instant::now))
                };
                // None usable: fail open, over all of them.
                least_loaded_among(&usable, load, rng).unwrap_or_else(|| least_loaded(n, load, rng))
            }
            BalancerKind::PeakEwma => {
                let s = &self.config.clusters[c].peak_ewma;
                let now = ejections.unwrap_or_else(Instant::now);
                let cost = |i: usize| {
                    let e = &state.endpoints[i];
                    e.rtt.get().cost(now, e.in_flight.get(), s)
                };
                least_loaded_among(&usable, cost, rng).unwrap_or_else(|| least_loaded(n, cost, rng))
            }
            BalancerKind::RoundRobin => {
                let mut rr = state.rr.borrow_mut();
                let first = rr.pick(n);
                let mut i = first;
                if !usable.is_empty() {
                    while !usable.contains(&i) {
                        i = rr.pick(n);
                    }
                }
                i
            }
        };
        state.endpoints.get(i).map(|e| (i, e))
    }
}

/// The outcome of one request, recorded when it is dropped: whatever way
/// the request ends (an answer, an error, a cancelled task), exactly one
/// record is written.
pub(crate) struct Tracker<'w> {
    w: &'w Worker,
    /// The record being filled in.
    pub o: Outcome,
    /// The request, once its head was taken (for the access log).
    pub req: Option<&'w weft_proto::Request>,
    /// The client's address (for the access log).
    pub peer: Option<&'w str>,
    /// The `x-request-id` weft gave the request (it came without one).
    pub request_id: Option<[u8; weft_core::trace::REQUEST_ID_LEN]>,
    /// The routes the request was routed by (its route index is theirs).
    pub routes: Option<&'w Routes>,
}

impl<'w> Tracker<'w> {
    /// Starts the record of a request on listener `listener` whose head
    /// arrived at `head_at`.
    pub fn new(w: &'w Worker, listener: usize, head_at: Instant) -> Self {
        w.counters.request();
        if let Some(spin) = &w.idle_poll {
            spin.activity(head_at);
        }
        Tracker {
            w,
            o: Outcome::new(listener, head_at),
            req: None,
            peer: None,
            request_id: None,
            routes: None,
        }
    }
}

impl<'w> Tracker<'w> {
    /// The worker serving the request.
    pub fn worker(&self) -> &'w Worker {
        self.w
    }
}

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        self.o.end_at = Instant::now();
        self.w.record(&self.o, self.routes);
        if let Some(log) = &self.w.access_log {
            let id = self.request_id.as_ref().map(|id| &id[..]);
            let config = self.routes.map_or(&*self.w.config, |r| &*r.config);
            log.write(config, &self.o, self.req, self.peer, id);
        }
    }
}

/// Holds one unit of a counter (requests in flight to an endpoint) for as
/// long as it lives.
pub(crate) struct Counted<'a>(&'a Cell<u32>);

impl<'a> Counted<'a> {
    pub fn new(count: &'a Cell<u32>) -> Self {
        count.set(count.get() + 1);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
