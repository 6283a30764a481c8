//! The admin listener (`[admin] listen`): `/metrics` in the Prometheus text
//! format, `/ready`, `/live`, `/config`, `/clusters` and `POST /drain`.
//!
//! It runs on a thread of its own, off every worker, and answers one
//! connection at a time (it is for a scraper and an operator, not for
//! traffic). A scrape asks each worker for a copy of its metrics through
//! the worker's [`Mailbox`]; the worker answers between requests, which
//! costs it the copy (a few microseconds), and never waits for the admin
//! thread. The listener has no authentication: it must not face the
//! outside (bind it to loopback or a private address).

mod exposition;

use crate::shutdown::Shutdown;
use crate::state::{Material, Worker};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weft_core::metrics::Metrics;
use weft_core::Config;

/// How long a scrape waits for each worker's copy.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// How long the admin thread waits on a client's request or its reading
/// of the answer.
const CLIENT_WAIT: Duration = Duration::from_secs(5);

/// Largest admin request head taken.
const MAX_HEAD: usize = 16 * 1024;

/// One worker's state as a scrape sees it: its metrics and its gauges.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSnapshot {
    /// Counters and histograms, from the outcome records.
    pub metrics: Metrics,
    /// Per listener: connections accepted ever, and open now.
    pub connections: Vec<(u64, u64)>,
    /// Per cluster, per endpoint: what it is doing now.
    pub endpoints: Vec<Vec<EndpointNow>>,
    /// Access log lines dropped because the writer could not keep up.
    pub log_dropped: u64,
    /// The configuration the metrics are shaped by (the worker's newest
    /// when it answered).
    pub config: Arc<Config>,
}

/// One endpoint as one worker sees it at a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EndpointNow {
    /// Requests in flight to it.
    pub in_flight: u32,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    /// Pooled idle HTTP/1.1 connections to it.
    pub idle: usize,
    /// HTTP/2 connections to it.
    pub h2: usize,
    /// Streams open on those connections.
    pub h2_streams: u32,
    /// Its round-trip estimate (Peak-EWMA), in microseconds.
    pub rtt_us: u64,
}

/// The copy of a worker's state that a scrape takes.
fn snapshot(w: &Worker) -> WorkerSnapshot {
    let now = Instant::now();
    let gen = w.generation();
    let metrics = match &w.metrics {
        Some(m) => m.borrow().clone(),
        None => Metrics::new(&gen.config),
    };
    WorkerSnapshot {
        config: gen.config.clone(),
        metrics,
        log_dropped: w.access_log.get().map_or(0, |l| l.dropped()),
        connections: gen
            .listeners
            .iter()
            .map(|l| (l.gate.opened(), l.gate.count() as u64))
            .collect(),
        endpoints: gen
            .clusters
            .iter()
            .zip(&gen.config.clusters)
            .map(|(state, cluster)| {
                state
                    .endpoints
                    .iter()
                    .map(|e| EndpointNow {
                        in_flight: e.in_flight.get(),
                        ejected: e.outlier.borrow().ejected(now),
                        idle: e.idle_count(),
                        h2: e.h2.borrow().len(),
                        h2_streams: e.h2.borrow().iter().map(|c| c.open_streams()).sum(),
                        rtt_us: (e.rtt.get().estimate(now, &cluster.peak_ewma) / 1_000.0) as u64,
                    })
                    .collect()
            })
            .collect(),
    }
}

/// Where other threads leave a worker its letters: requests for a snapshot
/// (scrapes) and new configurations (reloads). The lock is taken by the sender
/// and by the worker's mail task: never on the request path.
#[derive(Default)]
pub(crate) struct Mailbox {
    inner: Mutex<Letters>,
}

#[derive(Default)]
struct Letters {
    asks: Vec<mpsc::Sender<WorkerSnapshot>>,
    /// Reloads to take, in order.
    reloads: Vec<Reloaded>,
    waker: Option<Waker>,
    closed: bool,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Letters> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the worker for a snapshot: it arrives on the receiver (which
    /// is disconnected at once when the worker has stopped).
    fn ask(&self) -> mpsc::Receiver<WorkerSnapshot> {
        let (tx, rx) = mpsc::channel();
        let waker = {
            let mut l = self.lock();
            if l.closed {
                return rx;
            }
            l.asks.push(tx);
            l.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        rx
    }

    /// Hands the worker a reload's configuration.
    pub fn reload(&self, r: Reloaded) {
        let waker = {
            let mut l = self.lock();
            if l.closed {
                return;
            }
            l.reloads.push(r);
            l.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The worker's side: resolves with the letters waiting (reloads
    /// first, so that a scrape after a reload sees them).
    async fn next(&self) -> (Vec<Reloaded>, Vec<mpsc::Sender<WorkerSnapshot>>) {
        std::future::poll_fn(|cx| {
            let mut l = self.lock();
            if l.asks.is_empty() && l.reloads.is_empty() {
                l.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready((std::mem::take(&mut l.reloads), std::mem::take(&mut l.asks)))
            }
        })
        .await
    }
}

impl Mailbox {
    /// Closes the mailbox at the worker's end: a scrape then leaves the
    /// worker out at once instead of waiting for it.
    pub fn close(&self) {
        let mut l = self.lock();
        l.closed = true;
        l.asks.clear();
        l.reloads.clear();
    }
}

/// One reload, as one worker takes it.
pub(crate) struct Reloaded {
    /// The new configuration and what goes with it.
    pub material: Arc<Material>,
    /// This worker's sockets for the listeners the reload added (or
    /// moved to another address), by their index in the new
    /// configuration.
    pub sockets: Vec<(usize, std::net::TcpListener)>,
    /// Told once the worker runs the new configuration.
    pub done: mpsc::Sender<()>,
    /// Where access log lines go, once any listener has logged: a worker
    /// without access logs yet starts handing lines over.
    pub log_tx: Option<crossbeam_channel::Sender<crate::access_log::Batch>>,
}

/// A worker's task that takes its letters, for as long as the worker
/// runs: reloads, then snapshots. It runs between requests, so a request
/// sees one configuration from start to end.
pub(crate) async fn answer_mail(w: Rc<Worker>, mailbox: Arc<Mailbox>) {
    loop {
        let (reloads, asks) = mailbox.next().await;
        for r in reloads {
            if let Some(tx) = r.log_tx {
                crate::worker::log_to(&w, tx);
            }
            w.install(&r.material);
            let gen = w.generation();
            for (li, socket) in r.sockets {
                if let Some(state) = gen.listeners.get(li) {
                    crate::worker::start_accepting(&w, state.clone(), socket);
                }
            }
            let _ = r.done.send(());
        }
        for reply in asks {
            let _ = reply.send(snapshot(&w));
        }
    }
}

/// What the admin thread serves from.
pub(crate) struct Admin {
    /// The configuration in force, and reloads.
    pub reload: crate::reload::Reload,
    /// Per worker, in worker order.
    pub mailboxes: Vec<Arc<Mailbox>>,
    /// Per worker, its last snapshot: what a scrape shows of a worker
    /// that does not answer (counters must never seem to go down).
    pub last: Mutex<Vec<Option<WorkerSnapshot>>>,
    pub shutdown: Shutdown,
}

/// The running admin listener: its address and thread.
pub(crate) struct AdminThread {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl AdminThread {
    /// The address it answers on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread (after the workers are gone) and waits for it.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; a refused connection is fine too.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = self.thread.join();
    }
}

/// Binds the admin address (without SO_REUSEPORT: another process on it is
/// an error, not a silent share).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Starts the admin thread on `listener`.
pub(crate) fn start(listener: TcpListener, admin: Admin) -> std::io::Result<AdminThread> {
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("weft-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                match conn {
                    Ok(stream) => serve(stream, &admin),
                    Err(e) => {
                        tracing::error!("admin listener: cannot accept: {e}");
                        // Out of descriptors, say: give them time to free up.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(AdminThread { addr, stop, thread })
}

/// An answer of the admin listener.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    /// A `HEAD` request's answer: the head alone.
    head_only: bool,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            head_only: false,
        }
    }
}

/// Serves one admin connection: one request, one answer, closed.
fn serve(mut stream: TcpStream, admin: &Admin) {
    let _ = stream.set_read_timeout(Some(CLIENT_WAIT));
    let _ = stream.set_write_timeout(Some(CLIENT_WAIT));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (method, path) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                break (method, path);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return reply(stream, Answer::text(431, "request head too large\n"))
            }
            Err(e) => return reply(stream, Answer::text(400, format!("malformed request: {e}\n"))),
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut answer = route(admin, &method, &path);
    if method == "HEAD" {
        // The head says the body's length; the body stays home.
        answer.head_only = true;
    }
    reply(stream, answer);
}

/// How long the admin thread lingers after an answer for the client to
/// read it and close.
const LINGER: Duration = Duration::from_millis(200);

fn reply(mut stream: TcpStream, a: Answer) {
    let reason = match a.status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        a.status,
        a.content_type,
        a.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if !a.head_only {
        let _ = stream.write_all(a.body.as_bytes());
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Let the client read it all before the close (a close with unread
    // request bytes would reset the connection), briefly: the next
    // connection (a readiness probe) is waiting.
    let _ = stream.set_read_timeout(Some(LINGER));
    let _ = stream.read(&mut [0u8; 512]);
}

/// The answer to `method path`.
fn route(admin: &Admin, method: &str, path: &str) -> Answer {
    let path = path.split('?').next().unwrap_or("");
    let wants = |m: &str| method == m || (m == "GET" && method == "HEAD");
    match path {
        "/metrics" if wants("GET") => {
            let (current, snaps) = scrape(admin);
            Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: exposition::render(&admin.reload, &current.config, &snaps),
                head_only: false,
            }
        }
        "/live" if wants("GET") => Answer::text(200, "live\n"),
        "/ready" if wants("GET") => {
            if admin.shutdown.is_fired() {
                Answer::text(503, "draining\n")
            } else {
                Answer::text(200, "ready\n")
            }
        }
        "/config" if wants("GET") => Answer::text(
            200,
            format!(
                "generation: {}\n{}",
                admin.reload.generation(),
                admin.reload.config().describe()
            ),
        ),
        "/clusters" if wants("GET") => {
            let (current, snaps) = scrape(admin);
            Answer::text(
                200,
                exposition::clusters(&current.config, &snaps, &current.health),
            )
        }
        "/reload" if method == "POST" => match admin.reload.from_source() {
            Ok(generation) => Answer::text(200, format!("reloaded: generation {generation}\n")),
            Err(why) => Answer::text(409, format!("{why}\n")),
        },
        "/drain" if method == "POST" => {
            if !admin.shutdown.is_fired() {
                tracing::info!("admin: drain asked: no new connections, finishing requests in flight");
                admin.shutdown.fire();
            }
            Answer::text(202, "draining\n")
        }
        "/metrics" | "/live" | "/ready" | "/config" | "/clusters" | "/drain" | "/reload" => {
            Answer::text(405, format!("{method} is not served on {path}\n"))
        }
        _ => Answer::text(
            404,
            "not found: try /metrics, /ready, /live, /config, /clusters, POST /reload or POST /drain\n",
        ),
    }
}

/// Every worker's snapshot with its worker's number, shaped after the
/// configuration in force (returned with them): a worker that does not
/// answer within [`SCRAPE_WAIT`] (busy, or stopped) is shown as it last
/// answered.
fn scrape(admin: &Admin) -> (Arc<Material>, Vec<(usize, WorkerSnapshot)>) {
    let asked: Vec<_> = admin.mailboxes.iter().map(|m| m.ask()).collect();
    let deadline = Instant::now() + SCRAPE_WAIT;
    let mut last = admin.last.lock().unwrap_or_else(|p| p.into_inner());
    last.resize(asked.len(), None);
    let snaps = asked
        .into_iter()
        .enumerate()
        .filter_map(|(i, rx)| {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => {
                    last[i] = Some(s.clone());
                    Some((i, s))
                }
                Err(_) => last[i].clone().map(|s| (i, s)),
            }
        })
        .collect();
    let current = admin.reload.material();
    let snaps = exposition::reshaped(&current.config, snaps);
    (current, snaps)
}
