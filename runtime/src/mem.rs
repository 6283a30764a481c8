//! In-memory streams and a small in-memory network for the pipeline tests:
//! the session and the forward step run on these exactly as on TCP, with
//! no sockets, and a test decides every byte, pause and close each side
//! makes.
//!
//! A stream is two bounded pipes. Writing blocks while the peer's pipe is
//! full (a client that reads nothing), reading blocks while it is empty;
//! dropping a stream ends the peer's reads (end of stream) and fails its
//! writes (broken pipe), as closing a socket does.

use crate::io::{Peek, Stream};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::BufResult;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// One direction of a stream.
#[derive(Default)]
struct Pipe {
    data: VecDeque<u8>,
    /// Most bytes held before writes block.
    cap: usize,
    /// The writer shut down or went away: reads end once `data` is drained.
    ended: bool,
    /// The reader went away: writes fail.
    reader_gone: bool,
    /// Writes that put bytes in.
    writes: usize,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl Pipe {
    fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// One end of an in-memory connection.
pub(crate) struct MemStream {
    rx: Rc<RefCell<Pipe>>,
    tx: Rc<RefCell<Pipe>>,
}

/// Two connected ends; each direction holds at most `cap` bytes.
pub(crate) fn pair(cap: usize) -> (MemStream, MemStream) {
    pair_with(cap, cap)
}

/// Two connected ends; the first end's writes hold at most `first` bytes,
/// the second's at most `second`.
pub(crate) fn pair_with(first: usize, second: usize) -> (MemStream, MemStream) {
    let a = Rc::new(RefCell::new(Pipe {
        cap: second,
        ..Pipe::default()
    }));
    let b = Rc::new(RefCell::new(Pipe {
        cap: first,
        ..Pipe::default()
    }));
    (
        MemStream {
            rx: a.clone(),
            tx: b.clone(),
        },
        MemStream { rx: b, tx: a },
    )
}

impl MemStream {
    /// Waits until bytes or the end are there.
    async fn wait_readable(&self) {
        std::future::poll_fn(|cx| {
            let mut p = self.rx.borrow_mut();
            if !p.data.is_empty() || p.ended {
                Poll::Ready(())
            } else {
                p.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Takes up to `max` bytes into `dst` (0: end of stream).
    async fn take(&self, dst: *mut u8, max: usize) -> usize {
        self.wait_readable().await;
        let mut p = self.rx.borrow_mut();
        let n = p.data.len().min(max);
        for (i, b) in p.data.drain(..n).enumerate() {
            // SAFETY: `dst` has room for `max` bytes and `i < n <= max`.
            unsafe { dst.add(i).write(b) };
        }
        p.wake_writer();
        n
    }

    /// Puts bytes of `src` in the peer's pipe once it has room; the count
    /// put, or broken pipe when the peer is gone.
    async fn put(&self, src: &[&[u8]]) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            let mut p = self.tx.borrow_mut();
            if p.reader_gone || p.ended {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let room = p.cap.saturating_sub(p.data.len());
            let total: usize = src.iter().map(|s| s.len()).sum();
            if room == 0 && total > 0 {
                p.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut n = 0;
            for s in src {
                let k = s.len().min(room - n);
                p.data.extend(&s[..k]);
                n += k;
            }
            if n > 0 {
                p.writes += 1;
            }
            p.wake_reader();
            Poll::Ready(Ok(n))
        })
        .await
    }
}

impl MemStream {
    /// Bytes sent to this end and not read yet.
    pub fn unread(&self) -> usize {
        self.rx.borrow().data.len()
    }

    /// How many writes the peer made to this end (each that put bytes in).
    pub fn writes_received(&self) -> usize {
        self.rx.borrow().writes
    }
}

impl Drop for MemStream {
    fn drop(&mut self) {
        let mut tx = self.tx.borrow_mut();
        tx.ended = true;
        tx.wake_reader();
        drop(tx);
        let mut rx = self.rx.borrow_mut();
        rx.reader_gone = true;
        rx.wake_writer();
    }
}

impl AsyncReadRent for MemStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let n = self.take(buf.write_ptr(), buf.bytes_total()).await;
        // SAFETY: `take` wrote `n` bytes at the buffer's write pointer.
        unsafe { buf.set_init(n) };
        (Ok(n), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Into the first iovec only: a short read is a valid read.
        let n = if buf.write_iovec_len() == 0 {
            0
        } else {
            // SAFETY: the buffer holds at least one iovec.
            let first = unsafe { *buf.write_iovec_ptr() };
            self.take(first.iov_base.cast(), first.iov_len).await
        };
        // SAFETY: `n` bytes were written at the start of the first iovec.
        unsafe { buf.set_init(n) };
        (Ok(n), buf)
    }
}

impl AsyncWriteRent for MemStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's first `bytes_init` bytes are initialised.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = self.put(&[src]).await;
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let (ptr, len) = (buf.read_iovec_ptr(), buf.read_iovec_len());
        let iovs = if ptr.is_null() || len == 0 {
            &[][..]
        } else {
            // SAFETY: the iovecs describe initialised memory the buffer owns.
            unsafe { std::slice::from_raw_parts(ptr, len) }
        };
        let parts: Vec<&[u8]> = iovs
            .iter()
            .filter(|v| !v.iov_base.is_null() && v.iov_len > 0)
            // SAFETY: as above, each iovec is a valid initialised region.
            .map(|v| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) })
            .collect();
        let res = self.put(&parts).await;
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        let mut tx = self.tx.borrow_mut();
        tx.ended = true;
        tx.wake_reader();
        Ok(())
    }
}

// SAFETY: reads use only `rx` and writes only `tx`; the halves share no
// state that an operation of the other half changes.
unsafe impl Split for MemStream {}

impl crate::io::SendNow for MemStream {}

impl Stream for MemStream {
    async fn readable(&self, _relaxed: bool) -> io::Result<()> {
        self.wait_readable().await;
        Ok(())
    }

    async fn read_before(
        &mut self,
        buf: &mut bytes::BytesMut,
        until: &mut crate::timer::Deadline<'_>,
    ) -> Option<io::Result<usize>> {
        // An in-memory read takes bytes only when it completes: dropping
        // one in flight loses nothing.
        monoio::select! {
            r = crate::io::read_more(self, buf) => Some(r),
            _ = &mut *until => None,
        }
    }

    fn peek(&self) -> Peek {
        let p = self.rx.borrow();
        if !p.data.is_empty() {
            Peek::Data
        } else if p.ended {
            Peek::Closed
        } else {
            Peek::Nothing
        }
    }
}

/// Bytes each direction of an in-memory connection holds.
pub(crate) const PIPE_BYTES: usize = 64 * 1024;

/// The in-memory network: addresses that accept, and addresses whose
/// connects never complete.
#[derive(Default)]
pub(crate) struct Net {
    listeners: RefCell<HashMap<SocketAddr, Rc<Listener>>>,
    blackholes: RefCell<HashSet<SocketAddr>>,
}

/// Accepts in-memory connections to one address.
#[derive(Default)]
pub(crate) struct Listener {
    queue: RefCell<VecDeque<MemStream>>,
    waker: RefCell<Option<Waker>>,
}

impl Listener {
    /// The next connection made to this address.
    pub async fn accept(&self) -> MemStream {
        std::future::poll_fn(|cx| match self.queue.borrow_mut().pop_front() {
            Some(s) => Poll::Ready(s),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Connections made and not yet accepted.
    pub fn waiting(&self) -> usize {
        self.queue.borrow().len()
    }
}

impl Net {
    /// Starts accepting connections to `addr`.
    pub fn listen(&self, addr: SocketAddr) -> Rc<Listener> {
        let l = Rc::new(Listener::default());
        self.listeners.borrow_mut().insert(addr, l.clone());
        l
    }

    /// Stops accepting at `addr`: connects are refused from now on.
    pub fn close(&self, addr: SocketAddr) {
        self.listeners.borrow_mut().remove(&addr);
    }

    /// Makes connects to `addr` hang (a host that drops SYNs).
    pub fn blackhole(&self, addr: SocketAddr) {
        self.blackholes.borrow_mut().insert(addr);
    }

    /// Connects to `addr`: refused where nothing listens.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<MemStream> {
        if self.blackholes.borrow().contains(&addr) {
            std::future::pending::<()>().await;
        }
        let Some(l) = self.listeners.borrow().get(&addr).cloned() else {
            return Err(io::ErrorKind::ConnectionRefused.into());
        };
        let (near, far) = pair(PIPE_BYTES);
        l.queue.borrow_mut().push_back(far);
        if let Some(w) = l.waker.borrow_mut().take() {
            w.wake();
        }
        Ok(near)
    }
}
