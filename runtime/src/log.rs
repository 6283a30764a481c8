//! The process log: weft's own diagnostics, one line per event on stderr,
//! `weft: ` first.
//!
//! Events are `tracing` events (`error!`, `warn!`, `info!`, `debug!`): an
//! event below the level in force (`runtime.log_level`, or the `WEFT_LOG`
//! environment variable, which wins) is never formatted. Logging never
//! stops or blocks a worker. Lines go to one writer thread through a
//! bounded queue; when the queue is full the line is dropped (and counted),
//! and write errors (stderr closed: EPIPE) are ignored, where the standard
//! printing macros would panic and the release profile would abort. A line
//! repeated within a second is written once, then counted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tracing_subscriber::filter::LevelFilter;

/// Lines waiting for the writer thread; beyond this, lines are dropped.
const QUEUE: usize = 1024;

/// Identical lines within this window are written once and then counted.
const REPEAT_WINDOW: Duration = Duration::from_secs(1);

struct Queue {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<()>),
}

static QUEUE_TX: OnceLock<Queue> = OnceLock::new();

fn queue() -> &'static Queue {
    QUEUE_TX.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("weft-log".into())
            .spawn(move || writer(rx));
        if spawned.is_err() {
            // No thread: lines are dropped at `try_send` (the receiver is gone).
            write_now("cannot start the log thread: log lines are dropped");
        }
        Queue {
            tx,
            dropped: AtomicU64::new(0),
        }
    })
}

/// Queues one line for stderr; drops it when the queue is full.
fn line(text: String) {
    let q = queue();
    match q.tx.try_send(Msg::Line(text)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            q.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The level `WEFT_LOG` asks for (`error`, `warn`, `info`, `debug`,
/// `trace` or `off`), if it is set to one.
fn env_level() -> Option<LevelFilter> {
    std::env::var("WEFT_LOG").ok()?.trim().parse().ok()
}

/// Installs weft's diagnostics for the process: events at `level` and
/// above (or at `WEFT_LOG`'s, when set) go to stderr through the queue.
/// The first call wins (a process has one log); later ones change nothing.
pub fn init(level: LevelFilter) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let level = env_level().unwrap_or(level);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(MakeLine)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_max_level(level)
            .finish();
        // Another subscriber already installed (a program embedding weft)
        // keeps its place.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Where the formatter writes one event: its bytes, queued as one line
/// when it is done.
struct LineWriter(Vec<u8>);

impl std::io::Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.trim();
        if !text.is_empty() {
            line(text.to_string());
        }
    }
}

/// Makes a [`LineWriter`] per event.
struct MakeLine;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeLine {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter(Vec::with_capacity(128))
    }
}

/// Waits (at most `bound`) until every line queued so far is written.
pub fn flush(bound: Duration) {
    let (tx, rx) = mpsc::channel();
    if queue().tx.send(Msg::Flush(tx)).is_ok() {
        let _ = rx.recv_timeout(bound);
    }
}

/// Writes one line to stderr now, from the calling thread; errors ignored.
/// For the binary's own messages at start and exit.
pub fn write_now(msg: &str) {
    // One `write` of the whole line, under stderr's own lock.
    let _ = writeln!(std::io::stderr().lock(), "weft: {msg}");
}

fn writer(rx: Receiver<Msg>) {
    let mut last: Option<(String, Instant)> = None;
    let mut repeats = 0u64;
    let mut reported_drops = 0;
    while let Ok(msg) = rx.recv() {
        let line = match msg {
            Msg::Line(l) => l,
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let now = Instant::now();
        if let Some((prev, since)) = &last {
            if *prev == line && now.duration_since(*since) < REPEAT_WINDOW {
                repeats += 1;
                continue;
            }
        }
        if repeats > 0 {
            write_now(&format!("(the line before was repeated {repeats} more times)"));
            repeats = 0;
        }
        let dropped = QUEUE_TX.get().map_or(0, |q| q.dropped.load(Ordering::Relaxed));
        if dropped > reported_drops {
            write_now(&format!(
                "({} log lines dropped: the log could not keep up)",
                dropped - reported_drops
            ));
            reported_drops = dropped;
        }
        write_now(&line);
        last = Some((line, now));
    }
}
