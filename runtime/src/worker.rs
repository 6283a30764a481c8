//! One worker: a thread with its own monoio runtime, listeners, pools and
//! balancer state. Nothing here is shared with other workers.

use crate::downstream;
use crate::log::log;
use crate::server::{Ready, WorkerCounters};
use crate::shutdown::Shutdown;
use crate::upstream::Endpoint;
use monoio::io::Canceller;
use monoio::net::TcpListener;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
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
    /// Requests being served by this worker.
    pub active: Cell<u32>,
    /// Open client connections (their sockets), closed at the end of a drain.
    pub connections: RefCell<HashSet<RawFd>>,
    /// This worker's counters, readable from other threads.
    pub counters: Arc<WorkerCounters>,
}

impl Worker {
    pub fn new(config: Arc<Config>, seed: u64, counters: Arc<WorkerCounters>) -> Self {
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
            active: Cell::new(0),
            connections: RefCell::new(HashSet::new()),
            counters,
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

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        self.o.end_at = Instant::now();
        self.w.record(&self.o);
    }
}

/// Holds one unit of a counter (requests active on a worker, in flight to
/// an endpoint) for as long as it lives.
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
                match listener.cancelable_accept(handle.clone()).await {
                    Ok((stream, peer)) => {
                        if w.draining.get() {
                            break;
                        }
                        w.counters.connection();
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
    // Runs until the runtime ends with the worker.
    monoio::spawn(sweep_pools(worker.clone()));
    shutdown.wait().await;
    worker.draining.set(true);
    let _ = canceller.cancel();
    for task in accepting {
        task.await;
    }
    let deadline = Instant::now() + worker.config.runtime.drain_timeout;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    // What is left is idle (or past the deadline): shut those sockets down
    // so that their tasks see the end of stream and close them.
    for fd in worker.connections.borrow().iter() {
        // SAFETY: the fd belongs to a live connection task of this worker;
        // shutdown does not close or invalidate it.
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while !worker.connections.borrow().is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(1)).await;
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

/// Registers a client connection with its worker for as long as it lives.
pub(crate) struct Registered<'a>(&'a Worker, RawFd);

impl<'a> Registered<'a> {
    pub fn new(w: &'a Worker, fd: RawFd) -> Self {
        w.connections.borrow_mut().insert(fd);
        Registered(w, fd)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.connections.borrow_mut().remove(&self.1);
    }
}
