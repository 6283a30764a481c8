//! Access logs (`access_log = { path, format }` on a listener): a line per
//! request, written from its outcome record.
//!
//! A worker never waits on the disk. Each worker appends lines to a buffer
//! of its own per destination and hands a buffer to the one writer thread
//! when it is full, and every [`FLUSH_EVERY`] otherwise, through a bounded
//! channel. When the channel is full the buffer is dropped and its lines
//! counted (`access_log_dropped_lines_total` in `/metrics`). SIGUSR1 makes
//! the writer reopen its files, for log rotation.
//!
//! Destinations are numbered in the order they were opened: at start, then
//! by reloads that name new ones ([`AccessLogs`]). A generation carries
//! the list it writes to, so a worker and the writer agree on the numbers.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};
use weft_core::access_log::{Entry, Format, Stamp};
use weft_core::trace::trace_id;
use weft_core::{Config, LogPath, Outcome};
use weft_proto::{Request, Version};

/// How often a worker hands over what it has buffered.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A worker's buffer is handed over once it holds this much.
const FLUSH_AT: usize = 32 * 1024;

/// Buffers waiting for the writer thread; beyond this, they are dropped.
const QUEUE: usize = 256;

/// Lines of one destination, from one worker.
pub(crate) struct Batch {
    sink: usize,
    bytes: Vec<u8>,
}

/// The destinations of a configuration: each distinct path once, and
/// which one each listener writes to.
pub(crate) fn sinks(config: &Config) -> (Vec<LogPath>, Vec<Option<usize>>) {
    let mut paths: Vec<LogPath> = Vec::new();
    let of_listener = config
        .listeners
        .iter()
        .map(|l| {
            let a = l.access_log.as_ref()?;
            Some(match paths.iter().position(|p| *p == a.path) {
                Some(i) => i,
                None => {
                    paths.push(a.path.clone());
                    paths.len() - 1
                }
            })
        })
        .collect();
    (paths, of_listener)
}

/// One worker's side of the access logs.
pub(crate) struct WorkerLog {
    /// Taken at the worker's end ([`WorkerLog::close`]): the writer ends
    /// once every worker's side is gone.
    tx: RefCell<Option<Sender<Batch>>>,
    /// Per destination (numbered as the writer numbers them): the lines
    /// buffered and how many. Grows when a generation names a destination
    /// a reload opened.
    buffers: RefCell<Vec<(Vec<u8>, u64)>>,
    /// Lines dropped because the writer could not keep up.
    dropped: Cell<u64>,
    /// Start times as text.
    stamp: RefCell<Stamp>,
}

/// How one configuration logs, made once per generation: per listener
/// its format and destination, per endpoint its address as text.
pub(crate) struct LogShape {
    listeners: Vec<Option<(Format, usize)>>,
    endpoints: Vec<Vec<String>>,
}

impl WorkerLog {
    /// This worker's access logs, sending to the writer through `tx`.
    pub fn new(tx: Sender<Batch>) -> Self {
        WorkerLog {
            tx: RefCell::new(Some(tx)),
            buffers: RefCell::new(Vec::new()),
            dropped: Cell::new(0),
            stamp: RefCell::new(Stamp::default()),
        }
    }

    /// How `config` logs, writing to `paths` (the destinations opened for
    /// its generation, numbered as the writer numbers them). A destination
    /// missing from `paths` is not written to (a reload cannot name one:
    /// it opens it first, or is refused).
    pub fn shape(&self, config: &Config, paths: &[LogPath]) -> LogShape {
        {
            let mut buffers = self.buffers.borrow_mut();
            if buffers.len() < paths.len() {
                buffers.resize_with(paths.len(), Default::default);
            }
        }
        LogShape {
            listeners: config
                .listeners
                .iter()
                .map(|l| {
                    let a = l.access_log.as_ref()?;
                    let sink = paths.iter().position(|p| *p == a.path)?;
                    Some((a.format.clone(), sink))
                })
                .collect(),
            endpoints: config
                .clusters
                .iter()
                .map(|c| c.endpoints.iter().map(|a| a.to_string()).collect())
                .collect(),
        }
    }

    /// Writes the line of a request that ended, when its listener logs.
    /// `config` and `shape`: the generation it ran on. `generated_id`: the
    /// `x-request-id` weft gave it, if it had none.
    pub fn write(
        &self,
        (config, shape): (&Config, &LogShape),
        o: &Outcome,
        req: Option<&Request>,
        peer: Option<&str>,
        generated_id: Option<&[u8]>,
    ) {
        let Some(Some((format, sink))) = shape.listeners.get(o.listener) else {
            return;
        };
        if self.tx.borrow().is_none() {
            // The worker has ended (a request outlived the drain): nothing
            // will hand the line over any more.
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        let listener = &config.listeners[o.listener];
        let duration = o.end_at.saturating_duration_since(o.head_at);
        let mut stamp = self.stamp.borrow_mut();
        let entry = Entry {
            start: SystemTime::now().checked_sub(duration).map(|t| stamp.format(t)),
            method: req.map(Request::method),
            path: req.map(Request::path),
            authority: req.and_then(Request::authority),
            protocol: req.map(|r| match r.version() {
                Version::Http10 => "HTTP/1.0",
                Version::Http11 => "HTTP/1.1",
                Version::Http2 => "HTTP/2",
            }),
            status: o.status,
            error: o.error,
            bytes_in: o.bytes_in,
            bytes_out: o.bytes_out,
            duration,
            upstream_time: match (o.sent_at, o.upstream_at) {
                (Some(sent), Some(answered)) => Some(answered.saturating_duration_since(sent)),
                _ => None,
            },
            upstream_host: o
                .target
                .and_then(|(c, i)| shape.endpoints.get(c)?.get(i))
                .map(String::as_str),
            attempts: o.attempts,
            request_id: generated_id.or_else(|| req.and_then(|r| r.header("x-request-id"))),
            trace_id: req.and_then(|r| trace_id(r.single_header("traceparent"), r.header("b3"))),
            peer,
            listener: &listener.name,
            route: o
                .route
                .and_then(|r| listener.routes.routes().get(r))
                .map(|r| r.name.as_str()),
            cluster: o
                .cluster
                .and_then(|c| config.clusters.get(c))
                .map(|c| c.name.as_str()),
        };
        let full = {
            let mut buffers = self.buffers.borrow_mut();
            let Some(b) = buffers.get_mut(*sink) else {
                return;
            };
            format.write(&entry, &mut b.0);
            b.1 += 1;
            b.0.len() >= FLUSH_AT
        };
        if full {
            self.hand_over(*sink);
        }
    }

    /// Hands every buffer with lines to the writer.
    pub fn flush(&self) {
        let count = self.buffers.borrow().len();
        for sink in 0..count {
            self.hand_over(sink);
        }
    }

    fn hand_over(&self, sink: usize) {
        let (bytes, lines) = {
            let mut buffers = self.buffers.borrow_mut();
            let Some(b) = buffers.get_mut(sink) else {
                return;
            };
            if b.1 == 0 {
                return;
            }
            let lines = std::mem::take(&mut b.1);
            (
                std::mem::replace(&mut b.0, Vec::with_capacity(FLUSH_AT + 1024)),
                lines,
            )
        };
        let sent = match &*self.tx.borrow() {
            Some(tx) => tx.try_send(Batch { sink, bytes }),
            None => Err(TrySendError::Disconnected(Batch { sink, bytes })),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sent {
            self.dropped.set(self.dropped.get() + lines);
        }
    }

    /// Hands the last lines over (waiting up to a second for room) and
    /// lets go of the writer (at the worker's end: its tasks, and this, may
    /// outlive the runtime).
    pub fn close(&self) {
        let Some(tx) = self.tx.borrow_mut().take() else {
            return;
        };
        let buffers = std::mem::take(&mut *self.buffers.borrow_mut());
        for (sink, (bytes, lines)) in buffers.into_iter().enumerate() {
            if lines > 0
                && tx
                    .send_timeout(Batch { sink, bytes }, Duration::from_secs(1))
                    .is_err()
            {
                self.dropped.set(self.dropped.get() + lines);
            }
        }
    }

    /// Lines this worker dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// A destination the writer holds open.
enum Sink {
    Stdout,
    File(std::path::PathBuf, File),
}

fn open(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Opens `path` for the writer; the error names the file and the fix.
fn open_sink(path: &LogPath) -> Result<Sink, String> {
    match path {
        LogPath::Stdout => Ok(Sink::Stdout),
        LogPath::File(path) => open(path).map(|f| Sink::File(path.clone(), f)).map_err(|e| {
            format!(
                "cannot open the access log {}: {e} (check the directory exists and weft may write there)",
                path.display()
            )
        }),
    }
}

/// The access logs of a running weft, shared by its start, its reloads and
/// the writer thread (never on a worker's request path): every destination
/// opened so far, numbered in the order they were opened; those a reload
/// opened that the writer has not taken yet; the writer thread, started
/// with the first destination (at start, or by the reload that names the
/// first one); and the flag that asks it to reopen its files.
pub(crate) struct AccessLogs {
    paths: Mutex<Vec<LogPath>>,
    /// Shared with the writer thread (as is `reopen`); the thread holds
    /// nothing else of this, so it ends once every sending side is gone.
    waiting: Arc<Mutex<Vec<Sink>>>,
    writer: Mutex<Option<(Sender<Batch>, JoinHandle<()>)>>,
    reopen: Arc<AtomicBool>,
}

/// Destinations a reload opened, added by [`AccessLogs::add`] once the
/// reload can no longer fail.
pub(crate) struct Opened {
    /// Every destination, the new ones last: the list the new generation
    /// writes to.
    pub paths: Vec<LogPath>,
    sinks: Vec<Sink>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AccessLogs {
    /// Opens every access log file of `config` and starts the writer
    /// thread when there is one. A file that cannot be opened fails the
    /// start, naming it.
    pub fn start(config: &Config) -> Result<Arc<AccessLogs>, String> {
        let logs = Arc::new(AccessLogs {
            paths: Mutex::new(Vec::new()),
            waiting: Arc::new(Mutex::new(Vec::new())),
            writer: Mutex::new(None),
            reopen: Arc::new(AtomicBool::new(false)),
        });
        let opened = logs.open_new(config)?;
        logs.add(opened)?;
        Ok(logs)
    }

    /// The flag that asks the writer to reopen its files (after log
    /// rotation moved them).
    pub fn reopen_flag(&self) -> Arc<AtomicBool> {
        self.reopen.clone()
    }

    /// Where a worker hands its lines over; none before the first
    /// destination.
    pub fn sender(&self) -> Option<Sender<Batch>> {
        locked(&self.writer).as_ref().map(|(tx, _)| tx.clone())
    }

    /// The destinations opened so far, in the writer's numbering.
    pub fn paths(&self) -> Vec<LogPath> {
        locked(&self.paths).clone()
    }

    /// Opens the destinations `config` names that are not open yet (a
    /// file is created if missing). Nothing is added until
    /// [`AccessLogs::add`]; an error names the file that cannot be opened.
    pub fn open_new(&self, config: &Config) -> Result<Opened, String> {
        let mut paths = self.paths();
        let mut sinks = Vec::new();
        for p in self::sinks(config).0 {
            if !paths.contains(&p) {
                sinks.push(open_sink(&p)?);
                paths.push(p);
            }
        }
        Ok(Opened { paths, sinks })
    }

    /// Adds what [`AccessLogs::open_new`] opened: a running writer takes
    /// the new files before it writes a line of theirs; the first ones
    /// start it. Fails only when the writer thread cannot start.
    pub fn add(&self, opened: Opened) -> Result<(), String> {
        if opened.sinks.is_empty() {
            return Ok(());
        }
        let mut writer = locked(&self.writer);
        let mut paths = locked(&self.paths);
        if writer.is_some() {
            locked(&self.waiting).extend(opened.sinks);
        } else {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE);
            let (sinks, reopen, waiting) = (opened.sinks, self.reopen.clone(), self.waiting.clone());
            let thread = std::thread::Builder::new()
                .name("weft-access-log".into())
                .spawn(move || write_batches(rx, sinks, &reopen, &waiting))
                .map_err(|e| format!("cannot start the access log thread: {e}"))?;
            *writer = Some((tx, thread));
        }
        *paths = opened.paths;
        Ok(())
    }

    /// Waits until every line handed over is written (once every worker,
    /// and with it every other sending side, is gone).
    pub fn join(&self) {
        let taken = locked(&self.writer).take();
        if let Some((tx, thread)) = taken {
            drop(tx);
            let _ = thread.join();
        }
    }
}

fn write_batches(rx: Receiver<Batch>, mut sinks: Vec<Sink>, reopen: &AtomicBool, waiting: &Mutex<Vec<Sink>>) {
    loop {
        let batch = rx.recv_timeout(Duration::from_millis(500));
        if reopen.swap(false, Ordering::SeqCst) {
            for s in &mut sinks {
                if let Sink::File(path, f) = s {
                    match open(path) {
                        Ok(new) => *f = new,
                        Err(e) => tracing::error!(
                            "cannot reopen the access log {}: {e}; still writing to the old file",
                            path.display()
                        ),
                    }
                }
            }
        }
        match batch {
            Ok(b) => {
                if b.sink >= sinks.len() {
                    // A destination a reload opened: its lines come only
                    // after the reload added it.
                    sinks.append(&mut locked(waiting));
                }
                let written = match sinks.get_mut(b.sink) {
                    Some(Sink::Stdout) => std::io::stdout().lock().write_all(&b.bytes),
                    Some(Sink::File(_, f)) => f.write_all(&b.bytes),
                    None => Ok(()),
                };
                if let Err(e) = written {
                    tracing::error!("access log: a write failed: {e}");
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}
