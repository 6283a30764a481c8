//! The per-core state of one worker: its generations (a configuration
//! with per-cluster endpoint state and pools, listener gates and rate
//! limits), deadlines, and the outcome record each request leaves. Shared by the worker's tasks through `Rc`; nothing here
//! is shared with other workers, and nothing here runs the worker (that is
//! `worker`).

use crate::counters::WorkerCounters;
use crate::health::HealthTable;
use crate::timer::Timers;
use crate::upstream::{Dialer, Endpoint};
use bytes::{Bytes, BytesMut};
use monoio::io::{CancelHandle, Canceller};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use weft_core::balance::pick_weighted;
use weft_core::metrics::Metrics;
use weft_core::{
    least_loaded, least_loaded_among, BalancerKind, BudgetSettings, Cluster, ClusterLimits, Config,
    NoHealthy, Outcome, OutlierSettings, RetryBudget, Rng, RoundRobin, Target, TokenBucket,
};

/// A cluster as this worker sees it. Shared by the generations that keep
/// the cluster unchanged, so that a reload leaves its pools and balancer
/// state alone.
pub(crate) struct ClusterState {
    pub endpoints: Vec<Rc<Endpoint>>,
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

impl ClusterState {
    /// The state of cluster `c` on a worker of `workers`. `tls`: this
    /// worker's client configuration for it (a cluster with `tls`).
    /// `before`: the cluster's state in the generation before, whose
    /// endpoints with the same address and authority are kept (with their
    /// pools) when the way to reach them did not change.
    pub fn new(
        c: &Cluster,
        workers: usize,
        tls: Option<&Arc<rustls::ClientConfig>>,
        before: Option<(&Cluster, &ClusterState)>,
    ) -> Self {
        let sni = c.tls.as_ref().and_then(|t| t.sni.as_deref());
        let same_way = |old: &Cluster| old.protocol == c.protocol && old.tls == c.tls && old.pool == c.pool;
        let endpoints: Vec<Rc<Endpoint>> = c
            .endpoints
            .iter()
            .zip(&c.authorities)
            .map(|(a, auth)| {
                let kept = before.filter(|(old, _)| same_way(old)).and_then(|(_, state)| {
                    state
                        .endpoints
                        .iter()
                        .find(|e| e.addr == *a && e.authority == *auth)
                });
                let e = match kept {
                    Some(e) => e.clone(),
                    None => Rc::new(Endpoint::new(*a, auth.clone(), &c.peak_ewma)),
                };
                set_tls(&e, tls, sni);
                e
            })
            .collect();
        // Endpoints kept may be out still.
        let ejected_until = endpoints
            .iter()
            .filter_map(|e| e.outlier.borrow().ejected_until())
            .max();
        ClusterState {
            endpoints,
            rr: RefCell::new(RoundRobin::default()),
            ejected_until: Cell::new(ejected_until),
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
        }
    }

    /// An endpoint of the cluster is ejected until `until`: picks look at
    /// ejections until then.
    fn ejected_by(&self, until: Instant) {
        let later = self.ejected_until.get().map_or(until, |u| u.max(until));
        self.ejected_until.set(Some(later));
    }

    /// True when the cluster may open one more connection on this worker:
    /// its connections (one per request in flight, the one about to open
    /// included, and the pooled ones) stay within `max_connections`.
    pub fn may_connect(&self) -> bool {
        let open: usize = self
            .endpoints
            .iter()
            .map(|e| e.in_flight.get() as usize + e.idle_count())
            .sum();
        open <= self.limits.max_connections as usize
    }
}

/// Gives endpoint `e` TLS with client configuration `tls` (for a TLS
/// cluster; `sni`: the cluster's server name, else the endpoint's host).
fn set_tls(e: &Endpoint, tls: Option<&Arc<rustls::ClientConfig>>, sni: Option<&str>) {
    *e.tls.borrow_mut() =
        tls.and_then(|cfg| Some((cfg.clone(), crate::tls::server_name(sni, &e.authority).ok()?)));
}

/// A listener as one worker runs it: its connection gate and its requests
/// in flight. Kept across reloads that keep the listener's name and
/// address (its socket, accept loop and connections go on); connections
/// and the accept loop hold it.
pub(crate) struct ListenerState {
    pub gate: Gate,
    /// Requests in flight on this worker (`max_requests`).
    pub requests: Cell<u32>,
    /// This worker's share of the listener's `max_requests`.
    requests_cap: Cell<Option<u32>>,
    /// Its index in the worker's newest generation; `None` once a reload
    /// removed it.
    pub index: Cell<Option<usize>>,
    /// Ends its accept loop's wait for a connection.
    canceller: RefCell<Option<Canceller>>,
}

impl ListenerState {
    fn new(l: &weft_core::Listener, workers: usize) -> Self {
        let s = ListenerState {
            gate: Gate::new(1),
            requests: Cell::new(0),
            requests_cap: Cell::new(None),
            index: Cell::new(Some(l.index)),
            canceller: RefCell::new(Some(Canceller::new())),
        };
        s.configure(l, workers);
        s
    }

    /// What the accept loop's accept is cancelled with.
    pub fn cancel_handle(&self) -> CancelHandle {
        match &*self.canceller.borrow() {
            Some(c) => c.handle(),
            // Stopped already: a handle that is cancelled at once.
            None => Canceller::new().cancel().handle(),
        }
    }

    /// Stops its accept loop (at shutdown, or removed by a reload): the
    /// loop's wait ends and its socket closes.
    pub fn stop(&self) {
        if let Some(c) = self.canceller.borrow_mut().take() {
            let _ = c.cancel();
        }
        self.gate.close();
    }

    /// Takes `l`'s limits (at start, and when a reload changed them).
    fn configure(&self, l: &weft_core::Listener, workers: usize) {
        self.gate.set_limit(l.max_connections.div_ceil(workers.max(1)));
        let share = l.max_requests.map(|m| m.div_ceil(workers.max(1)).max(1) as u32);
        self.requests_cap.set(share);
        self.index.set(Some(l.index));
    }

    /// The counter of requests in flight, when the listener has a cap and
    /// room under it; `Err(())` when it is full; `Ok(None)` when it has no
    /// cap.
    pub fn slot(&self) -> Result<Option<&Cell<u32>>, ()> {
        match self.requests_cap.get() {
            None => Ok(None),
            Some(cap) if self.requests.get() >= cap => Err(()),
            Some(_) => Ok(Some(&self.requests)),
        }
    }
}

/// One configuration as a worker runs it: the configuration, and this
/// worker's state for its clusters, listeners and route rate limits. A
/// reload makes a new one; requests keep the one they began with, and
/// connections move to the newest between requests. Clusters and
/// listeners a reload left unchanged are shared with the generation
/// before (their `Rc`s).
pub(crate) struct Generation {
    /// The configuration (`clusters[c]` is `config.clusters[c]`'s state,
    /// `listeners[l]` is `config.listeners[l]`'s).
    pub config: Arc<Config>,
    /// Per cluster.
    pub clusters: Vec<Rc<ClusterState>>,
    /// Per listener.
    pub listeners: Vec<Rc<ListenerState>>,
    /// Per listener: this worker's own TLS configuration, for a TLS one.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Every endpoint's standing with the health prober (shared by all
    /// workers, written by the prober).
    pub health: Arc<HealthTable>,
    /// Per listener and route: this worker's share of the route's rate
    /// limit, if it has one.
    rate_limits: Vec<Vec<Option<RefCell<TokenBucket>>>>,
    /// How the configuration logs, when the worker has access logs.
    pub log: Option<crate::access_log::LogShape>,
}

/// What a worker needs to run a configuration that it cannot make itself
/// (made once for all workers, off the request path).
pub(crate) struct Material {
    pub config: Arc<Config>,
    pub health: Arc<HealthTable>,
    /// Per listener: its TLS material, for a TLS one.
    pub tls: Vec<Option<crate::tls::TlsMaterial>>,
    /// Per cluster: its TLS material, for a TLS one.
    pub cluster_tls: Vec<Option<crate::tls::ClientMaterial>>,
    /// The access log destinations open for this configuration, numbered
    /// as the writer numbers them (empty without access logs).
    pub log_paths: Vec<weft_core::LogPath>,
}

impl Generation {
    /// `m`'s configuration on a worker of `workers`, sharing what `before`
    /// has of it unchanged: clusters equal as configured keep their state
    /// whole, changed ones keep the endpoints they still have; listeners
    /// that keep their socket ([`weft_core::Listener::same_socket`]) keep
    /// their state; a route of the same name and
    /// limit keeps its rate-limit bucket (a reload is no reason to let a
    /// burst through).
    /// `log`: the worker's access logs, if it has them.
    pub fn new(
        m: &Material,
        workers: usize,
        before: Option<&Generation>,
        log: Option<&crate::access_log::WorkerLog>,
    ) -> Self {
        let config = m.config.clone();
        // Names of the generation before, looked up once each (a reload
        // of thousands of clusters and routes must not take quadratic time
        // on every worker).
        let old_clusters: HashMap<&str, usize> = before
            .map(|b| {
                b.config
                    .clusters
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name.as_str(), i))
                    .collect()
            })
            .unwrap_or_default();
        let clusters = config
            .clusters
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let old = before.and_then(|b| {
                    let j = *old_clusters.get(c.name.as_str())?;
                    Some((&b.config.clusters[j], &b.clusters[j]))
                });
                let tls = m.cluster_tls[ci].as_ref().and_then(|mat| {
                    crate::tls::client_config(mat)
                        .map_err(|e| tracing::error!("TLS setup of cluster `{}` failed: {e}", c.name))
                        .ok()
                });
                if let Some((o, state)) = old {
                    if o == c {
                        // Certificates as read now, for new connections.
                        let sni = c.tls.as_ref().and_then(|t| t.sni.as_deref());
                        for e in &state.endpoints {
                            set_tls(e, tls.as_ref(), sni);
                        }
                        return state.clone();
                    }
                }
                Rc::new(ClusterState::new(
                    c,
                    workers,
                    tls.as_ref(),
                    old.map(|(o, s)| (o, &**s)),
                ))
            })
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let kept = before.and_then(|b| {
                    let j = b.config.listeners.iter().position(|o| o.same_socket(l))?;
                    Some(b.listeners[j].clone())
                });
                match kept {
                    Some(state) => {
                        state.configure(l, workers);
                        state
                    }
                    None => {
                        let state = ListenerState::new(l, workers);
                        // At a new address under the same name: its count of
                        // connections goes on (a counter never goes down).
                        if let Some(b) = before {
                            if let Some(j) = b.config.listeners.iter().position(|o| o.name == l.name) {
                                state.gate.opened.set(b.listeners[j].gate.opened());
                            }
                        }
                        Rc::new(state)
                    }
                }
            })
            .collect();
        let tls = m
            .tls
            .iter()
            .map(|mat| {
                mat.as_ref().and_then(|mat| {
                    crate::tls::server_config(mat)
                        .map_err(|e| tracing::error!("TLS listener setup failed: {e}"))
                        .ok()
                })
            })
            .collect();
        // Rate-limited routes of the generation before, by listener and
        // route name: their buckets and limits.
        type Bucket<'b> = (&'b RefCell<TokenBucket>, Option<weft_core::RateLimit>);
        let old_limits: HashMap<(&str, &str), Bucket<'_>> = before
            .map(|b| {
                b.config
                    .listeners
                    .iter()
                    .zip(&b.rate_limits)
                    .flat_map(|(l, limits)| {
                        l.routes.routes().iter().zip(limits).filter_map(|(r, bucket)| {
                            Some((
                                (l.name.as_str(), r.name.as_str()),
                                (bucket.as_ref()?, r.rate_limit),
                            ))
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rate_limits = config
            .listeners
            .iter()
            .map(|l| {
                l.routes
                    .routes()
                    .iter()
                    .map(|r| {
                        let rl = r.rate_limit?;
                        let kept = old_limits
                            .get(&(l.name.as_str(), r.name.as_str()))
                            .filter(|(_, was)| *was == r.rate_limit)
                            .map(|(bucket, _)| *bucket.borrow());
                        Some(RefCell::new(kept.unwrap_or_else(|| {
                            TokenBucket::new(Instant::now(), rl.per_worker(workers))
                        })))
                    })
                    .collect()
            })
            .collect();
        Generation {
            config,
            clusters,
            listeners,
            tls,
            health: m.health.clone(),
            rate_limits,
            log: log.map(|l| l.shape(&m.config, &m.log_paths)),
        }
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

/// Per-worker state, shared by the worker's tasks through `Rc`.
pub(crate) struct Worker {
    rng: RefCell<Rng>,
    /// The usable endpoints of a pick while some are out (kept to reuse
    /// its memory).
    usable: RefCell<Vec<usize>>,
    /// Set when shutdown began: answer in flight, then close.
    pub draining: Cell<bool>,
    /// This worker's counters, readable from other threads.
    pub counters: Arc<WorkerCounters>,
    /// This worker's request metrics, kept when there is an admin listener
    /// to read them (shaped by the newest generation's configuration).
    pub metrics: Option<RefCell<Metrics>>,
    /// This worker's side of the access logs, once a listener has one (at
    /// start, or from the reload that names the first).
    pub access_log: std::cell::OnceCell<crate::access_log::WorkerLog>,
    /// Deadlines of this worker's waits.
    pub timers: Rc<Timers>,
    /// Polling instead of sleeping after activity (`runtime.idle_poll`),
    /// when on.
    pub idle_poll: Option<crate::spin::Spin>,
    /// The configuration in force (replaced by a reload; a request keeps
    /// the generation it began with).
    generation: RefCell<Rc<Generation>>,
    /// How many workers share the listeners (limits are split).
    workers: usize,
    /// Listeners a reload removed that still have connections.
    removed: RefCell<Vec<Rc<ListenerState>>>,
    /// Connections with a read posted in the hot window (at most
    /// [`HOT_READS`]).
    pub hot_reads: Cell<usize>,
    /// When the last request this worker recorded ended. A connection
    /// whose exchange has just returned (its record is written as the
    /// exchange returns, in the same poll) reads it as the time the
    /// exchange ended, instead of reading the clock again.
    pub last_end: Cell<Instant>,
    /// Requests in progress on this worker (their records are open).
    pub in_progress: Cell<u32>,
    /// Upstream read buffers given back by finished exchanges, for the
    /// next ones (emptied when the worker goes quiet).
    spare_reads: Spares<BytesMut>,
    /// Header field vectors of finished heads, for the next ones.
    spare_fields: Spares<Vec<weft_proto::HeaderRange>>,
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

/// Things of finished requests kept for the next ones, up to a number:
/// one worker's, taken and given back between its requests.
pub(crate) struct Spares<T> {
    kept: RefCell<Vec<T>>,
    most: usize,
}

impl<T> Spares<T> {
    /// None kept yet; at most `most`.
    pub const fn new(most: usize) -> Self {
        Spares {
            kept: RefCell::new(Vec::new()),
            most,
        }
    }

    /// The last one given back, if any.
    #[inline]
    pub fn take(&self) -> Option<T> {
        self.kept.borrow_mut().pop()
    }

    /// Keeps `t` for the next taker, unless as many as allowed are kept.
    #[inline]
    pub fn give(&self, t: T) {
        let mut kept = self.kept.borrow_mut();
        if kept.len() < self.most {
            kept.push(t);
        }
    }

    /// Lets every kept one go.
    pub fn clear(&self) {
        self.kept.borrow_mut().clear();
    }
}

/// Most field vectors a worker keeps for the next heads: two per exchange
/// (the request's and the response's) of a burst of 64 at once.
const SPARE_FIELDS: usize = 128;

/// Field vectors larger than this (a head with hundreds of fields) are not
/// kept.
const MAX_KEPT_FIELDS: usize = 64;

/// Size of the buffers heads are encoded into ([`Worker::encode_head`]).
const HEADS_BUFFER: usize = 8 * 1024;

/// Room a head usually needs: below it, the next head starts a new buffer
/// (a larger head grows the buffer itself).
const HEAD_ROOM: usize = 1024;

/// A listener's connection limit on one worker: the accept loop waits for
/// room before it accepts, a connection gives its place back when it ends.
pub(crate) struct Gate {
    open: Cell<usize>,
    /// Connections accepted through it, ever (`tcp_open_total`).
    opened: Cell<u64>,
    limit: Cell<usize>,
    waiter: RefCell<Option<Waker>>,
    closed: Cell<bool>,
}

impl Gate {
    fn new(limit: usize) -> Self {
        Gate {
            open: Cell::new(0),
            opened: Cell::new(0),
            limit: Cell::new(limit.max(1)),
            waiter: RefCell::new(None),
            closed: Cell::new(false),
        }
    }

    /// Resolves once a connection may be accepted (or the gate closed).
    pub fn room(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.open.get() < self.limit.get() || self.closed.get() {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Sets the most connections open at once (a reload may change it);
    /// a raised limit lets the accept loop go on at once.
    pub fn set_limit(&self, limit: usize) {
        self.limit.set(limit.max(1));
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
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
pub(crate) struct Admitted(pub Rc<ListenerState>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.gate.leave();
    }
}

impl Worker {
    /// A worker running `m`'s configuration. `workers`: how many workers
    /// share the listeners (their limits are split evenly). `access_log`:
    /// its side of the access logs, when a listener has one.
    pub fn new(
        m: &Material,
        seed: u64,
        counters: Arc<WorkerCounters>,
        workers: usize,
        access_log: Option<crate::access_log::WorkerLog>,
    ) -> Self {
        let config = &m.config;
        let metrics = config.admin.is_some().then(|| RefCell::new(Metrics::new(config)));
        let idle_poll = crate::spin::Spin::new(config.runtime.idle_poll);
        Worker {
            generation: RefCell::new(Rc::new(Generation::new(m, workers, None, access_log.as_ref()))),
            rng: RefCell::new(Rng::new(seed)),
            usable: RefCell::new(Vec::new()),
            draining: Cell::new(false),
            counters,
            metrics,
            access_log: access_log.map(std::cell::OnceCell::from).unwrap_or_default(),
            timers: Rc::new(Timers::default()),
            idle_poll,
            hot_reads: Cell::new(0),
            last_end: Cell::new(Instant::now()),
            in_progress: Cell::new(0),
            heads: RefCell::new(BytesMut::new()),
            spare_reads: Spares::new(crate::upstream::SPARE_READS),
            spare_fields: Spares::new(SPARE_FIELDS),
            workers,
            removed: RefCell::new(Vec::new()),
            #[cfg(test)]
            net: None,
            #[cfg(test)]
            outcomes: RefCell::new(Vec::new()),
        }
    }

    /// Client connections open on this worker, on every listener (those
    /// a reload removed included).
    pub fn open_connections(&self) -> usize {
        let mut removed = self.removed.borrow_mut();
        removed.retain(|l| l.gate.count() > 0);
        let gen = self.generation.borrow();
        let now: usize = gen.listeners.iter().map(|l| l.gate.count()).sum();
        now + removed.iter().map(|l| l.gate.count()).sum::<usize>()
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

    /// A vector for a head's header fields: one a finished head gave
    /// back, else a new (empty) one.
    #[inline]
    pub fn take_fields(&self) -> Vec<weft_proto::HeaderRange> {
        self.spare_fields.take().unwrap_or_default()
    }

    /// Keeps a head's field vector for the next head (up to
    /// [`SPARE_FIELDS`]; one that never held anything, or a very large
    /// one, is not kept).
    #[inline]
    pub fn give_fields(&self, fields: Vec<weft_proto::HeaderRange>) {
        if fields.capacity() > 0 && fields.capacity() <= MAX_KEPT_FIELDS {
            self.spare_fields.give(fields);
        }
    }

    /// Few requests are in progress ([`crate::io::DIRECT_SEND_MAX`] at
    /// most): sends go straight to the socket ([`crate::io::write_two_now`]).
    #[inline]
    pub fn quiet(&self) -> bool {
        self.in_progress.get() <= crate::io::DIRECT_SEND_MAX
    }

    /// Lets the kept read buffers, field vectors and read cancellers go
    /// (the worker went quiet).
    pub fn clear_spares(&self) {
        self.spare_reads.clear();
        self.spare_fields.clear();
        crate::io::clear_cancellers();
    }

    /// How this worker opens upstream connections.
    pub fn dialer(&self) -> Dialer<'_> {
        Dialer {
            timers: &self.timers,
            spare: &self.spare_reads,
            #[cfg(test)]
            net: self.net.as_deref(),
        }
    }

    /// Takes the outcome of one request: breaker and latency inputs, the
    /// counters, the metrics. `gen`: the generation the request ran on
    /// (its indices are that generation's).
    pub fn record(&self, o: &Outcome, gen: &Generation) {
        self.counters.outcome(o.success());
        let now = self.generation.borrow();
        let same = std::ptr::eq(gen, &**now);
        // An ejection, by the endpoint's place now: counted in the metrics,
        // and seen by the newest generation's state of its cluster (a
        // changed cluster keeps the endpoint, with its outlier record).
        let ejected = |c: usize, i: usize| {
            if same {
                if let Some(m) = &self.metrics {
                    m.borrow_mut().ejected(c, i);
                }
                return;
            }
            let Some((c2, i2)) = weft_core::metrics::same_endpoint(&gen.config, &now.config, c, i) else {
                return;
            };
            if let Some(until) = gen.clusters[c].endpoints[i].outlier.borrow().ejected_until() {
                now.clusters[c2].ejected_by(until);
            }
            if let Some(m) = &self.metrics {
                m.borrow_mut().ejected(c2, i2);
            }
        };
        let mut failed = false;
        if let Some((c, i)) = o.target {
            let cluster = &gen.config.clusters[c];
            let state = &gen.clusters[c];
            if let (BalancerKind::PeakEwma, Some(answered)) = (cluster.balancer, o.upstream_at) {
                // The time to the response head is the round trip weft saw.
                let ep = &state.endpoints[i];
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
                if endpoint_failed(state, settings, f, o.end_at) {
                    ejected(c, f);
                }
            }
            match o.endpoint_verdict(settings.failures) {
                Some(true) => state.endpoints[i]
                    .outlier
                    .borrow_mut()
                    .success(o.end_at, settings),
                Some(false) => {
                    failed = true;
                    if endpoint_failed(state, settings, i, o.end_at) {
                        ejected(c, i);
                    }
                }
                None => {}
            }
        }
        if let Some(m) = &self.metrics {
            if same {
                m.borrow_mut().record(o, o.route, failed);
            } else {
                // A request that began before a reload: its listener, route,
                // cluster and endpoints by name in the configuration now.
                let moved = weft_core::metrics::moved(o, &gen.config, &now.config);
                m.borrow_mut().record(&moved, moved.route, failed);
            }
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

    /// The generation in force now.
    pub fn generation(&self) -> Rc<Generation> {
        self.generation.borrow().clone()
    }

    /// The newest generation for `listener`, with its index there; `None`
    /// once a reload removed it.
    #[inline]
    pub fn newest_for(&self, listener: &ListenerState) -> Option<(Rc<Generation>, usize)> {
        let li = listener.index.get()?;
        Some((self.generation(), li))
    }

    /// Takes `m`'s configuration (a reload): requests from now on use it,
    /// requests in flight finish on theirs. What the new generation shares
    /// with the one before keeps its state; metrics series follow their
    /// listeners, routes, clusters and endpoints by name. Listeners it no
    /// longer has stop accepting, and their connections close once idle.
    pub fn install(&self, m: &Material) {
        let old = self.generation();
        let next = Rc::new(Generation::new(
            m,
            self.workers,
            Some(&old),
            self.access_log.get(),
        ));
        if let Some(metrics) = &self.metrics {
            metrics.borrow_mut().reshape(&old.config, &next.config);
        }
        let removed = old
            .listeners
            .iter()
            .filter(|l| !next.listeners.iter().any(|n| Rc::ptr_eq(l, n)))
            .cloned()
            .collect::<Vec<_>>();
        for l in &removed {
            l.index.set(None);
            l.stop();
        }
        self.removed.borrow_mut().extend(removed.iter().cloned());
        *self.generation.borrow_mut() = next;
        // Idle connections look again: those of a removed listener close.
        if !removed.is_empty() {
            self.timers.wake_idle_waits();
        }
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
    pub fn pick_other<'g>(
        &self,
        gen: &'g Generation,
        c: usize,
        tried: impl Fn(usize) -> bool,
    ) -> Option<(usize, &'g Endpoint)> {
        let now = Instant::now();
        let health = &gen.health;
        let down = health.any_down(c);
        gen.clusters[c]
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                !tried(*i) && !e.outlier.borrow().ejected(now) && (!down || health.healthy(c, *i))
            })
            .min_by_key(|(_, e)| e.in_flight.get())
            .map(|(i, e)| (i, &**e))
    }

    /// The endpoint of cluster `c` the next request goes to (its index and
    /// itself), if it has any. Ejected endpoints and those failing their
    /// health check are skipped while another is usable; when none is,
    /// the pick ignores both (fail open, as Envoy does past its panic
    /// threshold), or finds none (`no_healthy = "fail-fast"`).
    pub fn pick_endpoint<'g>(&self, gen: &'g Generation, c: usize) -> Option<(usize, &'g Endpoint)> {
        let state = &gen.clusters[c];
        let cluster = &gen.config.clusters[c];
        let health = &gen.health;
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
        let down = health.any_down(c);
        // While some endpoint is out, the draw is among the others only,
        // read once (the prober may change its table meanwhile).
        let degraded = ejections.is_some() || down;
        let mut usable = self.usable.borrow_mut();
        usable.clear();
        if degraded {
            usable.extend((0..n).filter(|&i| {
                !ejections.is_some_and(|now| state.endpoints[i].outlier.borrow().ejected(now))
                    && (!down || health.healthy(c, i))
            }));
            if usable.is_empty() && cluster.no_healthy == NoHealthy::FailFast {
                return None;
            }
        }
        let rng = &mut self.rng.borrow_mut();
        let i = match cluster.balancer {
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
                let s = &cluster.peak_ewma;
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
        state.endpoints.get(i).map(|e| (i, &**e))
    }
}

/// Counts a failure against endpoint `i` of `state`; ejects it when that
/// was one too many and the cluster has room. True when it was ejected.
fn endpoint_failed(state: &ClusterState, settings: &OutlierSettings, i: usize, now: Instant) -> bool {
    let out = state
        .endpoints
        .iter()
        .filter(|e| e.outlier.borrow().ejected(now))
        .count();
    let room = weft_core::outlier::may_eject(state.endpoints.len(), out, settings);
    let mut outlier = state.endpoints[i].outlier.borrow_mut();
    if !outlier.failure(now, settings, room) {
        return false;
    }
    state.ejected_by(outlier.ejected_until().unwrap_or(now));
    true
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
    /// The generation the request runs on (its indices are its).
    pub gen: &'w Generation,
    /// `o.end_at` is set ([`Tracker::end`]): no clock read at drop.
    ended: bool,
}

impl<'w> Tracker<'w> {
    /// Starts the record of a request on listener `listener` of `gen`
    /// whose head arrived at `head_at`.
    pub fn new(w: &'w Worker, gen: &'w Generation, listener: usize, head_at: Instant) -> Self {
        w.counters.request();
        w.in_progress.set(w.in_progress.get() + 1);
        if let Some(spin) = &w.idle_poll {
            spin.activity(head_at);
        }
        Tracker {
            w,
            o: Outcome::new(listener, head_at),
            req: None,
            peer: None,
            request_id: None,
            gen,
            ended: false,
        }
    }

    /// The request ends now (its response is out): the end time, read
    /// once for the record and for whatever else ends with it.
    pub fn end(&mut self) -> Instant {
        self.o.end_at = Instant::now();
        self.ended = true;
        self.o.end_at
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
        if !self.ended {
            self.o.end_at = Instant::now();
        }
        self.w.last_end.set(self.o.end_at);
        self.w.in_progress.set(self.w.in_progress.get().saturating_sub(1));
        self.w.record(&self.o, self.gen);
        if let Some(log) = self.w.access_log.get() {
            let id = self.request_id.as_ref().map(|id| &id[..]);
            if let Some(shape) = &self.gen.log {
                log.write((&self.gen.config, shape), &self.o, self.req, self.peer, id);
            }
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
