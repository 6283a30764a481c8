//! One worker's life: its listeners' accept loops, the background tasks
//! (deadline sweeper, pool eviction, memory return), and the drain at
//! shutdown. The per-core state it runs on is `state::Worker`.

use crate::downstream;
use crate::io::nodelay;
use crate::shutdown::Shutdown;
use crate::state::{Admitted, Generation, ListenerState, Worker};
use crate::timer::within;
use crate::tls;
use bytes::BytesMut;
use monoio::net::{TcpListener, TcpStream};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_core::ListenerKind;

/// Serves a connection of a TLS listener: the handshake within the
/// listener's `handshake_timeout`, then HTTP/2 when ALPN chose it, else
/// HTTP/1.1 as on any other. A failed
/// handshake ends only this connection, with one line in the log.
async fn serve_tls(
    w: Rc<Worker>,
    (gen, li): (Rc<Generation>, usize),
    tcp: TcpStream,
    peer: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
) {
    let l = &gen.config.listeners[li];
    let timeout = l
        .tls
        .as_ref()
        .map_or(Duration::from_secs(10), |t| t.handshake_timeout);
    // The connection's place at the gate, until `serve` takes it over.
    let admitted = Admitted(gen.listeners[li].clone());
    match within(w.timers.after(timeout), tls::accept(tcp, cfg)).await {
        Some(Ok(stream)) if stream.is_h2() => {
            let peer_ip: Rc<str> = peer.ip().to_string().into();
            crate::downstream_h2::serve(&w, gen, li, stream, BytesMut::new(), peer_ip).await
        }
        Some(Ok(stream)) => {
            std::mem::forget(admitted);
            downstream::serve(w.clone(), gen, li, stream, peer).await
        }
        Some(Err(e)) => tracing::info!("listener `{}`: TLS handshake with {peer} failed: {e}", l.name),
        None => tracing::info!(
            "listener `{}`: {peer} did not complete its TLS handshake within {timeout:?}",
            l.name
        ),
    }
}

/// A worker's one report to `Server::start`: ready (with the flags its
/// ring took), or why it cannot run.
pub(crate) struct Ready {
    pub tx: mpsc::Sender<(usize, Result<crate::server::Ring, String>)>,
    pub worker: usize,
    pub ring: crate::server::Ring,
}

impl Ready {
    /// Reports the worker ready (`Ok`) or failed.
    pub(crate) fn report(self, result: Result<(), String>) {
        let _ = self.tx.send((self.worker, result.map(|()| self.ring)));
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
    mailbox: Arc<crate::admin::Mailbox>,
) {
    let _at_end = AtEnd {
        mailbox: &mailbox,
        worker: &worker,
    };
    let gen = worker.generation();
    let mut registered = Vec::new();
    for (li, std_listener) in listeners.into_iter().enumerate() {
        match TcpListener::from_std(std_listener) {
            Ok(l) => registered.push(l),
            Err(e) => {
                let name = &gen.config.listeners[li].name;
                ready.report(Err(format!(
                    "listener `{name}` cannot be registered with the runtime: {e}"
                )));
                return;
            }
        }
    }
    ready.report(Ok(()));
    // Scrapes and reloads.
    monoio::spawn(crate::admin::answer_mail(worker.clone(), mailbox.clone()));
    for (li, listener) in registered.into_iter().enumerate() {
        monoio::spawn(accept(worker.clone(), gen.listeners[li].clone(), listener));
    }
    drop(gen);
    // These run until the runtime ends with the worker.
    monoio::spawn(sweep_pools(worker.clone()));
    if worker.idle_poll.is_some() {
        monoio::spawn(crate::spin::run(worker.clone()));
    }
    monoio::spawn(return_memory(worker.clone()));
    if worker.access_log.get().is_some() {
        monoio::spawn(flush_access_log(worker.clone()));
    }
    let w = worker.clone();
    monoio::spawn(async move { w.timers.run().await });
    shutdown.wait().await;
    worker.draining.set(true);
    let gen = worker.generation();
    for l in &gen.listeners {
        l.stop();
    }
    // Idle connections close themselves; busy ones finish their request
    // and close, within the drain timeout. What is left after it ends with
    // the runtime (its sockets are closed).
    worker.timers.end_idle_waits();
    let deadline = Instant::now() + gen.config.runtime.drain_timeout;
    drop(gen);
    while worker.open_connections() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Registers `listener` (a new listener of a reload) with the runtime and
/// accepts on it.
pub(crate) fn start_accepting(w: &Rc<Worker>, state: Rc<ListenerState>, listener: std::net::TcpListener) {
    match TcpListener::from_std(listener) {
        Ok(l) => {
            monoio::spawn(accept(w.clone(), state, l));
        }
        Err(e) => tracing::error!("a new listener cannot be registered with the runtime: {e}"),
    }
}

/// Accepts the connections of one listener, until the worker drains or a
/// reload removes the listener (then its socket closes; its connections
/// go on until they end).
async fn accept(w: Rc<Worker>, state: Rc<ListenerState>, listener: TcpListener) {
    let handle = state.cancel_handle();
    let mut last_log: Option<Instant> = None;
    loop {
        // At the listener's limit, stop accepting: the kernel's
        // queue holds the rest until a connection ends.
        state.gate.room().await;
        if w.draining.get() || state.index.get().is_none() {
            break;
        }
        match listener.cancelable_accept(handle.clone()).await {
            Ok((stream, peer)) => {
                if w.draining.get() {
                    break;
                }
                let Some((gen, li)) = w.newest_for(&state) else {
                    break;
                };
                w.counters.connection();
                state.gate.enter();
                let l = &gen.config.listeners[li];
                match l.kind {
                    ListenerKind::Proxy => {
                        nodelay(&stream);
                        if l.tls.is_none() {
                            monoio::spawn(downstream::serve(w.clone(), gen.clone(), li, stream, peer));
                        } else if let Some(cfg) = gen.tls.get(li).cloned().flatten() {
                            monoio::spawn(serve_tls(w.clone(), (gen.clone(), li), stream, peer, cfg));
                        } else {
                            // Never plain text on a TLS listener (its
                            // configuration was checked before it was
                            // taken, so this does not happen).
                            state.gate.leave();
                        }
                    }
                }
            }
            Err(e) => {
                if w.draining.get() || state.index.get().is_none() {
                    break;
                }
                // Out of file descriptors and the like: back off
                // briefly, and say so at most once a second.
                if last_log.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::error!("accept on {addr}: {e}");
                    last_log = Some(Instant::now());
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Lets go of what other threads wait on when the worker ends, whichever
/// way (its tasks, and the state they hold, may outlive its runtime): the
/// admin mailbox is closed, the access log's last lines handed over.
struct AtEnd<'a> {
    mailbox: &'a crate::admin::Mailbox,
    worker: &'a Worker,
}

impl Drop for AtEnd<'_> {
    fn drop(&mut self) {
        self.mailbox.close();
        if let Some(log) = self.worker.access_log.get() {
            log.close();
        }
    }
}

/// Hands the access log lines the worker buffered to the writer thread
/// every [`crate::access_log::FLUSH_EVERY`].
async fn flush_access_log(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(crate::access_log::FLUSH_EVERY).await;
        if let Some(log) = worker.access_log.get() {
            log.flush();
        }
    }
}

/// Starts handing access log lines to the writer through `tx`, when the
/// worker does not yet (a reload named the first access log).
pub(crate) fn log_to(worker: &Rc<Worker>, tx: crossbeam_channel::Sender<crate::access_log::Batch>) {
    if worker.access_log.get().is_none() {
        let _ = worker.access_log.set(crate::access_log::WorkerLog::new(tx));
        monoio::spawn(flush_access_log(worker.clone()));
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
        let open = worker.open_connections();
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
            // The spare read buffers and field vectors go too.
            worker.clear_spares();
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
    loop {
        let gen = worker.generation();
        let shortest = gen.config.clusters.iter().map(|c| c.pool.idle_timeout).min();
        let every = shortest.map_or(Duration::from_secs(15), |s| {
            (s / 4).clamp(Duration::from_millis(10), Duration::from_secs(15))
        });
        drop(gen);
        monoio::time::sleep(every).await;
        let now = Instant::now();
        let gen = worker.generation();
        for (state, cluster) in gen.clusters.iter().zip(&gen.config.clusters) {
            for ep in &state.endpoints {
                ep.evict_expired(&cluster.pool, now);
                crate::upstream_h2::evict_idle(ep, &cluster.pool, now);
            }
        }
    }
}
