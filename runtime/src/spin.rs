//! Polling instead of sleeping (`runtime.idle_poll`, off by default).
//!
//! Under a moderate load most of a request's added latency is the wake-up
//! of an idle core: the worker sleeps in the kernel between requests, and
//! each completion (the request, the upstream's answer) has to wake it
//! (under a hypervisor, an inter-processor interrupt to a halted vCPU).
//! With a window set, a worker that has just seen a request keeps its loop
//! turning for that long: a task that yields at once keeps the runtime
//! from parking, and each turn enters the kernel without waiting, which
//! reaps whatever completed. Past the window without a new request, the
//! task waits for the next one and the worker sleeps as before. Seastar's
//! reactor does the same (`idle-poll-time-us`). The price is the CPU spent
//! spinning, which the benchmark reports beside the latency it saves.
//!
//! Not on the tuned io_uring ring: with COOP_TASKRUN the kernel posts
//! completions only when the ring is entered asking for events, which
//! monoio does only when it waits, so a turning loop would see none and
//! delay every completion by the window (measured: +150 µs at p50). The
//! server turns it off there and says so.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A worker's polling window and what the spinning task needs to know.
pub(crate) struct Spin {
    window: Duration,
    /// When the last request came in.
    last: Cell<Instant>,
    /// The spinning task, waiting for activity.
    parked: Cell<Option<Waker>>,
}

impl Spin {
    /// `None` for a zero window (off).
    pub fn new(window: Duration) -> Option<Spin> {
        (!window.is_zero()).then(|| Spin {
            window,
            last: Cell::new(Instant::now()),
            parked: Cell::new(None),
        })
    }

    /// A request came in at `at`: poll for the window from there.
    pub fn activity(&self, at: Instant) {
        self.last.set(at);
        if let Some(w) = self.parked.take() {
            w.wake();
        }
    }
}

/// Ready on the second poll, having woken itself on the first: lets the
/// runtime turn once (enter the kernel without waiting, reap completions,
/// run what became ready) before this task goes on.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The spinning task of a worker: waits for a request, then keeps the
/// runtime turning until the window has passed since the last one.
pub(crate) async fn run(worker: Rc<crate::state::Worker>) {
    let Some(spin) = &worker.idle_poll else {
        return;
    };
    loop {
        let mut woken = false;
        poll_fn(|cx| {
            if std::mem::replace(&mut woken, true) {
                return Poll::Ready(());
            }
            spin.parked.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        while spin.last.get().elapsed() < spin.window {
            YieldNow(false).await;
        }
    }
}
