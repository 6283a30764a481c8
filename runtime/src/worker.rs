//! One worker: a thread with its own monoio runtime, listeners, pools and
//! balancer state. Nothing here is shared with other workers.

use crate::downstream;
use crate::log::log;
use crate::server::{Ready, WorkerCounters};
use crate::shutdown::Shutdown;
use crate::timer::Timers;
use crate::upstream::Endpoint;
use monoio::io::Canceller;
use monoio::net::TcpListener;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use weft_core::balance::pick_weighted;
use weft_core::{least_loaded, BalancerKind, Config, Outcome, Rng, RoundRobin, Target};

/// A cluster as this worker sees it.
pub(crate) struct ClusterState {
    pub endpoints: Vec<Endpoint>,
    rr: RefCell<RoundRobin>,
}

/// Per-worker state, shared by the worker's tasks through `Rc`.
pub(crate) struct Worker {
    pub config: Arc<Config>,
    pub clusters: Vec<ClusterState>,
    rng: RefCell<Rng>,
    /// Set when shutdown began: answer in flight, then close.
    pub draining: Cell<bool>,
    /// This worker's counters, readable from other threads.
    pub counters: Arc<WorkerCounters>,
    /// Per listener: this worker's share of its `max_connections`.
    pub gates: Vec<Gate>,
    /// Deadlines of this worker's waits.
    pub timers: Timers,
}

/// A listener's connection limit on one worker: the accept loop waits for
/// room before it accepts, a connection gives its place back when it ends.
pub(crate) struct Gate {
    open: Cell<usize>,
    limit: usize,
    waiter: RefCell<Option<Waker>>,
    closed: Cell<bool>,
}

impl Gate {
    fn new(limit: usize) -> Self {
        Gate {
            open: Cell::new(0),
            limit: limit.max(1),
            waiter: RefCell::new(None),
            closed: Cell::new(false),
        }
    }

    /// Resolves once a connection may be accepted (or the gate closed).
    fn room(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.open.get() < self.limit || self.closed.get() {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Counts an accepted connection; [`Gate::leave`] when it ends.
    fn enter(&self) {
        self.open.set(self.open.get() + 1);
    }

    /// A connection ended: its place is free again.
    pub fn leave(&self) {
        self.open.set(self.open.get().saturating_sub(1));
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Wakes the accept loop for good (at shutdown).
    fn close(&self) {
        self.closed.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
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
    pub fn new(config: Arc<Config>, seed: u64, counters: Arc<WorkerCounters>, workers: usize) -> Self {
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
                    .map(|(a, auth)| Endpoint::new(*a, auth.clone()))
                    .collect(),
                rr: RefCell::new(RoundRobin::default()),
            })
            .collect();
        Worker {
            config,
            clusters,
            rng: RefCell::new(Rng::new(seed)),
            draining: Cell::new(false),
            counters,
            gates,
            timers: Timers::default(),
        }
    }

    /// Takes the outcome of one request. Today it feeds the counters;
    /// breakers, metrics and access logs will read it here.
    pub fn record(&self, o: &Outcome) {
        self.counters.outcome(o.success());
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

    /// The endpoint of cluster `c` the next request goes to, if it has any.
    pub fn pick_endpoint(&self, c: usize) -> Option<&Endpoint> {
        let state = &self.clusters[c];
        let n = state.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = match self.config.clusters[c].balancer {
            BalancerKind::LeastLoaded => least_loaded(
                n,
                |i| state.endpoints[i].in_flight.get(),
                &mut self.rng.borrow_mut(),
            ),
            BalancerKind::RoundRobin => state.rr.borrow_mut().pick(n),
        };
        state.endpoints.get(i)
    }
}

/// The outcome of one request, recorded when it is dropped: whatever way
/// the request ends (an answer, an error, a cancelled task), exactly one
/// record is written.
pub(crate) struct Tracker<'w> {
    w: &'w Worker,
    /// The record being filled in.
    pub o: Outcome,
}

impl<'w> Tracker<'w> {
    /// Starts the record of a request whose head arrived at `head_at`.
    pub fn new(w: &'w Worker, head_at: Instant) -> Self {
        w.counters.request();
        Tracker {
            w,
            o: Outcome::new(head_at),
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
        self.w.record(&self.o);
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

/// The body of a worker thread: accept on every listener until shutdown,
/// then let in-flight requests finish within the drain timeout.
/// Reports to `ready` once every listener is registered, or why one cannot be.
pub(crate) async fn run(
    worker: Rc<Worker>,
    listeners: Vec<std::net::TcpListener>,
    shutdown: Shutdown,
    ready: Ready,
) {
    let canceller = Canceller::new();
    let mut registered = Vec::new();
    for (li, std_listener) in listeners.into_iter().enumerate() {
        match TcpListener::from_std(std_listener) {
            Ok(l) => registered.push(l),
            Err(e) => {
                let name = &worker.config.listeners[li].name;
                ready.report(Err(format!(
                    "listener `{name}` cannot be registered with the runtime: {e}"
                )));
                return;
            }
        }
    }
    ready.report(Ok(()));
    let mut accepting = Vec::new();
    for (li, listener) in registered.into_iter().enumerate() {
        let handle = canceller.handle();
        let w = worker.clone();
        accepting.push(monoio::spawn(async move {
            let mut last_log: Option<Instant> = None;
            loop {
                // At the listener's limit, stop accepting: the kernel's
                // queue holds the rest until a connection ends.
                w.gates[li].room().await;
                if w.draining.get() {
                    break;
                }
                match listener.cancelable_accept(handle.clone()).await {
                    Ok((stream, peer)) => {
                        if w.draining.get() {
                            break;
                        }
                        w.counters.connection();
                        w.gates[li].enter();
                        monoio::spawn(downstream::serve(w.clone(), li, stream, peer));
                    }
                    Err(e) => {
                        if w.draining.get() {
                            break;
                        }
                        // Out of file descriptors and the like: back off
                        // briefly, and say so at most once a second.
                        if last_log.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                            log!("accept on {}: {e}", w.config.listeners[li].addr);
                            last_log = Some(Instant::now());
                        }
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    // These run until the runtime ends with the worker.
    monoio::spawn(sweep_pools(worker.clone()));
    monoio::spawn(return_memory(worker.clone()));
    let w = worker.clone();
    monoio::spawn(async move { w.timers.run().await });
    shutdown.wait().await;
    worker.draining.set(true);
    let _ = canceller.cancel();
    for gate in &worker.gates {
        gate.close();
    }
    for task in accepting {
        task.await;
    }
    // Idle connections close themselves; busy ones finish their request
    // and close, within the drain timeout. What is left after it ends with
    // the runtime (its sockets are closed).
    worker.timers.end_idle_waits();
    let deadline = Instant::now() + worker.config.runtime.drain_timeout;
    let open = || worker.gates.iter().map(|g| g.open.get()).sum::<usize>();
    while open() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Hands memory the allocator keeps for later back to the system once the
/// worker goes quiet: mimalloc frees its unused pages lazily, when the heap
/// is used again, so a worker that served a burst (or saw thousands of
/// connections close at once) and then idles would keep it. Once a second
/// it compares the worker's activity with the last look; the first quiet
/// second after activity collects, once.
async fn return_memory(worker: Rc<Worker>) {
    let activity = || {
        let open: usize = worker.gates.iter().map(|g| g.open.get()).sum();
        (worker.counters.requests(), worker.counters.connections(), open)
    };
    let mut last = activity();
    let mut dirty = false;
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        let now = activity();
        if now != last {
            dirty = true;
            last = now;
        } else if dirty {
            dirty = false;
            // SAFETY: collects this thread's own heap; no pointers are handed
            // over and nothing allocated is touched.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    }
}

/// Closes pooled upstream connections once they have been idle for their
/// cluster's pool `idle_timeout`, so that idle connections do not outlive it
/// when traffic stops. Wakes every quarter of the shortest idle timeout
/// (between 10 ms and 15 s): a connection closes within 1.25 times its
/// timeout.
async fn sweep_pools(worker: Rc<Worker>) {
    let Some(shortest) = worker.config.clusters.iter().map(|c| c.pool.idle_timeout).min() else {
        return;
    };
    let every = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(15));
    loop {
        monoio::time::sleep(every).await;
        let now = Instant::now();
        for (state, cluster) in worker.clusters.iter().zip(&worker.config.clusters) {
            for ep in &state.endpoints {
                ep.evict_expired(&cluster.pool, now);
            }
        }
    }
}
