//! The shutdown signal shared by the main thread and every worker.
//!
//! Not on the request path: workers wait on it once; the lock is taken only
//! when a worker starts waiting and when shutdown fires.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A one-shot, cross-thread "stop accepting and drain" signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    fired: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal: every waiting worker wakes up.
    pub fn fire(&self) {
        self.inner.fired.store(true, Ordering::SeqCst);
        let wakers = match self.inner.wakers.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for w in wakers {
            w.wake();
        }
    }

    /// True once fired.
    pub fn is_fired(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Resolves once the signal has fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            s: self,
            registered: false,
        }
    }
}

/// Future returned by [`Shutdown::wait`].
pub struct Wait<'a> {
    s: &'a Shutdown,
    registered: bool,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.s.is_fired() {
            return Poll::Ready(());
        }
        if !self.registered {
            if let Ok(mut w) = self.s.inner.wakers.lock() {
                w.push(cx.waker().clone());
            }
            self.registered = true;
            if self.s.is_fired() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
