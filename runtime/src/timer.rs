//! Deadlines for one worker, without a timer entry per wait.
//!
//! monoio's timer entry is 512 bytes, aligned to 128, and every future that
//! holds one grows to a multiple of 128: an idle keep-alive connection
//! waiting with a timeout held about 2 KiB of future, and every request
//! moved kilobytes of future state. Here a wait holds a 40-byte
//! [`Deadline`]; the worker keeps the deadlines in a slab and a min-heap,
//! and one sweeper task (one monoio timer for the whole worker) sleeps
//! until the earliest deadline and wakes the waits that are due.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One registered deadline.
struct Entry {
    at: Instant,
    waker: Option<Waker>,
    /// Bumped each time the slot is freed: heap items of an older use are stale.
    generation: u32,
    fired: bool,
    /// An idle wait: it also ends when the worker drains.
    idle: bool,
}

/// Deadlines by slot, free slots, and the heap, under one borrow.
#[derive(Default)]
struct Inner {
    slots: Vec<Entry>,
    free: Vec<u32>,
    /// (deadline, slot, generation), earliest first; items of cancelled
    /// deadlines stay until they come up or the heap is rebuilt.
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    live: usize,
}

/// The deadlines of one worker.
#[derive(Default)]
pub(crate) struct Timers {
    inner: RefCell<Inner>,
    /// When the sweeper will next wake by itself (None: parked).
    sweeper_at: Cell<Option<Instant>>,
    sweeper: RefCell<Option<Waker>>,
    /// The worker drains: idle waits end at once.
    draining: Cell<bool>,
}

impl Timers {
    /// A wait that ends at `at`.
    pub fn at(&self, at: Instant) -> Deadline<'_> {
        Deadline {
            timers: self,
            at,
            slot: None,
            idle: false,
        }
    }

    /// An idle connection's wait for its next request: ends at `at`, or
    /// when the worker starts draining ([`Timers::end_idle_waits`]).
    pub fn idle_until(&self, at: Instant) -> Deadline<'_> {
        Deadline {
            idle: true,
            ..self.at(at)
        }
    }

    /// A wait that ends `d` from now.
    pub fn after(&self, d: Duration) -> Deadline<'_> {
        self.at(Instant::now() + d)
    }

    /// The worker drains: every idle wait ends now, and later ones at once,
    /// so that idle connections close themselves.
    pub fn end_idle_waits(&self) {
        self.draining.set(true);
        self.wake_idle_waits();
    }

    /// Ends every idle wait now (not later ones), so that idle
    /// connections look at their state again (a reload removed a
    /// listener). A wait that ends so before its time starts again.
    pub fn wake_idle_waits(&self) {
        let mut inner = self.inner.borrow_mut();
        for e in inner.slots.iter_mut().filter(|e| e.idle && !e.fired) {
            if let Some(w) = e.waker.take() {
                e.fired = true;
                w.wake();
            }
        }
    }

    fn register(&self, at: Instant, idle: bool, waker: Waker) -> (u32, u32) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let (slot, generation) = match inner.free.pop() {
            Some(i) => {
                let e = &mut inner.slots[i as usize];
                e.at = at;
                e.waker = Some(waker);
                e.fired = false;
                e.idle = idle;
                (i, e.generation)
            }
            None => {
                inner.slots.push(Entry {
                    at,
                    waker: Some(waker),
                    generation: 0,
                    fired: false,
                    idle,
                });
                ((inner.slots.len() - 1) as u32, 0)
            }
        };
        inner.live += 1;
        inner.heap.push(Reverse((at, slot, generation)));
        // Too many stale items (cancelled deadlines): keep the live ones.
        if inner.heap.len() > 2 * inner.live + 1024 {
            let slots = &inner.slots;
            inner.heap.retain(|Reverse((_, s, g))| {
                let e = &slots[*s as usize];
                e.generation == *g && e.waker.is_some()
            });
        }
        if self.sweeper_at.get().is_none_or(|t| at < t) {
            self.sweeper_at.set(Some(at));
            if let Some(w) = self.sweeper.borrow_mut().take() {
                w.wake();
            }
        }
        (slot, generation)
    }

    /// Frees the slot of a deadline dropped before or after it fired.
    fn cancel(&self, slot: u32, generation: u32) {
        let mut inner = self.inner.borrow_mut();
        let e = &mut inner.slots[slot as usize];
        if e.generation != generation {
            return;
        }
        e.waker = None;
        e.generation = e.generation.wrapping_add(1);
        inner.free.push(slot);
        inner.live = inner.live.saturating_sub(1);
    }

    /// Wakes every wait that is due at `now`; returns the next deadline.
    fn fire(&self, now: Instant) -> Option<Instant> {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        while let Some(Reverse((at, slot, generation))) = inner.heap.peek().copied() {
            let e = &mut inner.slots[slot as usize];
            if e.generation != generation || e.waker.is_none() {
                inner.heap.pop();
                continue;
            }
            if at > now {
                return Some(at);
            }
            inner.heap.pop();
            e.fired = true;
            if let Some(w) = e.waker.take() {
                w.wake();
            }
        }
        None
    }

    /// The sweeper: one task per worker, for as long as the worker runs.
    /// Sleeps until the earliest deadline, parked while there is none; a
    /// deadline earlier than the one it sleeps for wakes it.
    pub async fn run(&self) {
        let sleep = monoio::time::sleep(Duration::from_secs(3600));
        let mut sleep = std::pin::pin!(sleep);
        loop {
            let next = self.fire(Instant::now());
            self.sweeper_at.set(next);
            let Some(at) = next else {
                std::future::poll_fn(|cx| {
                    if self.sweeper_at.get().is_some() {
                        Poll::Ready(())
                    } else {
                        *self.sweeper.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    }
                })
                .await;
                continue;
            };
            sleep.as_mut().reset(at.into());
            std::future::poll_fn(|cx| {
                if sleep.as_mut().poll(cx).is_ready() || self.sweeper_at.get() != Some(at) {
                    return Poll::Ready(());
                }
                *self.sweeper.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
        }
    }
}

/// A wait that resolves at its deadline. Registers with the worker's
/// [`Timers`] when first polled before it is due; cancelled when dropped.
pub(crate) struct Deadline<'t> {
    timers: &'t Timers,
    at: Instant,
    slot: Option<(u32, u32)>,
    idle: bool,
}

impl Future for Deadline<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.slot {
            Some((slot, generation)) => {
                let mut inner = self.timers.inner.borrow_mut();
                let e = &mut inner.slots[slot as usize];
                if e.generation == generation && e.fired {
                    return Poll::Ready(());
                }
                if !e.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    e.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            None => {
                if self.idle && self.timers.draining.get() {
                    return Poll::Ready(());
                }
                // No clock read here: a deadline already past fires at the
                // sweeper's next turn.
                let registered = self.timers.register(self.at, self.idle, cx.waker().clone());
                self.slot = Some(registered);
                Poll::Pending
            }
        }
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        if let Some((slot, generation)) = self.slot {
            self.timers.cancel(slot, generation);
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`within`]: `f`, or `None` once the deadline passes first.
    pub(crate) struct Within<'t, F> {
        #[pin]
        f: F,
        deadline: Deadline<'t>,
    }
}

/// Runs `f` until it completes (`Some`) or `deadline` passes first (`None`;
/// `f` is then dropped, cancelling what it was doing). A plain struct, not
/// an `async fn`, so that `f` is stored once.
pub(crate) fn within<F: Future>(deadline: Deadline<'_>, f: F) -> Within<'_, F> {
    Within { f, deadline }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Some(v));
        }
        // `Deadline` is Unpin: it never moves its registration.
        if Pin::new(this.deadline).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}
