//! HTTP/2's transport over weft's streams.
//!
//! The `h2` crate reads and writes through tokio's poll-style IO traits;
//! weft's streams (TCP, TLS, the in-memory streams of tests) do monoio's
//! owned-buffer IO. A [`Wire`] is what h2 holds: two buffers it shares with
//! [`carry`], which moves their bytes to and from the stream with at most
//! one read and one write in flight, in the connection's own task. So the
//! same HTTP/2 code runs over io_uring and epoll, over TCP and TLS, with
//! no readiness poll before a read and with every frame h2 produced in one
//! turn going out in one write. The price is one copy of each byte read,
//! from the read buffer into h2's own (h2 parses from a buffer of its own
//! whatever feeds it).

use crate::io::{read_more, write_one};
use crate::timer::{within, Timers};
use bytes::{Buf, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split, Splitable};
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes h2 may queue for the stream before its writes wait: h2 then
/// holds what it still has to send in its own bounded buffers.
const TX_LIMIT: usize = 64 * 1024;

/// Stores `cx`'s waker in `slot`, unless the same one is there already.
fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

/// What h2 and the pump share.
#[derive(Default)]
struct Shared {
    /// Read from the stream, not yet taken by h2.
    rx: BytesMut,
    /// The stream ended (or failed): h2 reads the end once `rx` is empty.
    rx_end: bool,
    /// h2 waits for bytes.
    rx_wait: Option<Waker>,
    /// The pump waits for h2 to take `rx` before it reads again.
    rx_room: Option<Waker>,
    /// Written by h2, not yet handed to the stream.
    tx: BytesMut,
    /// h2 waits for room in `tx`.
    tx_wait: Option<Waker>,
    /// The pump waits for bytes in `tx`.
    tx_ready: Option<Waker>,
    /// h2 is done writing: once `tx` is out, the stream's write side ends.
    tx_end: bool,
    /// Writing to the stream failed or timed out: h2's writes fail.
    broken: bool,
}

/// The transport h2 reads and writes: buffers that [`carry`] fills from
/// and empties into a stream.
pub(crate) struct Wire(Rc<RefCell<Shared>>);

/// The stream's side of a [`Wire`], for [`carry`].
pub(crate) struct Pump(Rc<RefCell<Shared>>);

/// A wire whose first bytes are `read` (what the session read before it
/// knew the protocol, such as HTTP/2's connection preface).
pub(crate) fn wire(read: BytesMut) -> (Wire, Pump) {
    let s = Rc::new(RefCell::new(Shared {
        rx: read,
        ..Shared::default()
    }));
    (Wire(s.clone()), Pump(s))
}

impl AsyncRead for Wire {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        if !s.rx.is_empty() {
            let n = s.rx.len().min(buf.remaining());
            buf.put_slice(&s.rx[..n]);
            s.rx.advance(n);
            if s.rx.is_empty() {
                wake(&mut s.rx_room);
            }
            return Poll::Ready(Ok(()));
        }
        if s.rx_end {
            // The end of stream: nothing put in `buf`.
            return Poll::Ready(Ok(()));
        }
        park(&mut s.rx_wait, cx);
        Poll::Pending
    }
}

impl Wire {
    /// Room for h2's next write, or why there will be none.
    fn room(&self, cx: &Context<'_>) -> Poll<io::Result<std::cell::RefMut<'_, Shared>>> {
        let mut s = self.0.borrow_mut();
        if s.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if s.tx.len() >= TX_LIMIT {
            park(&mut s.tx_wait, cx);
            return Poll::Pending;
        }
        Poll::Ready(Ok(s))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut s = match self.room(cx) {
            Poll::Ready(Ok(s)) => s,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        s.tx.extend_from_slice(buf);
        wake(&mut s.tx_ready);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = match self.room(cx) {
            Poll::Ready(Ok(s)) => s,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let mut n = 0;
        for b in bufs {
            s.tx.extend_from_slice(b);
            n += b.len();
        }
        wake(&mut s.tx_ready);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What is in `tx` goes out as soon as the write before it is done.
        if self.0.borrow().broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // `carry` writes what is left, then ends the stream's write side.
        let mut s = self.0.borrow_mut();
        s.tx_end = true;
        wake(&mut s.tx_ready);
        Poll::Ready(Ok(()))
    }
}

/// Runs `driver` (h2's connection, holding the [`Wire`] of `pump`) and moves
/// the wire's bytes to and from `stream` meanwhile, in this task: reads
/// when h2 has taken what came before, writes what h2 wrote as one write
/// once the previous write is done. A write that makes no progress within
/// `write_timeout` breaks the wire (a client that reads nothing). Returns
/// the driver's output once it has ended and its last bytes are written.
pub(crate) async fn carry<S: AsyncReadRent + AsyncWriteRent + Split, F: Future>(
    timers: &Timers,
    write_timeout: Duration,
    stream: S,
    pump: Pump,
    driver: F,
) -> F::Output {
    let (mut rd, mut wr) = stream.into_split();
    let shared = &pump.0;
    let reading = async {
        loop {
            poll_fn(|cx| {
                let mut s = shared.borrow_mut();
                if s.rx.is_empty() {
                    Poll::Ready(())
                } else {
                    park(&mut s.rx_room, cx);
                    Poll::Pending
                }
            })
            .await;
            let mut buf = std::mem::take(&mut shared.borrow_mut().rx);
            let read = read_more(&mut rd, &mut buf).await;
            let mut s = shared.borrow_mut();
            s.rx = buf;
            if !matches!(read, Ok(n) if n > 0) {
                s.rx_end = true;
            }
            wake(&mut s.rx_wait);
            if s.rx_end {
                return;
            }
        }
    };
    let writing = async {
        loop {
            let out = poll_fn(|cx| {
                let mut s = shared.borrow_mut();
                if !s.tx.is_empty() {
                    let out = s.tx.split().freeze();
                    wake(&mut s.tx_wait);
                    Poll::Ready(Some(out))
                } else if s.tx_end {
                    Poll::Ready(None)
                } else {
                    park(&mut s.tx_ready, cx);
                    Poll::Pending
                }
            })
            .await;
            let Some(out) = out else {
                let _ = within(timers.after(Duration::from_secs(1)), wr.shutdown()).await;
                return;
            };
            if !matches!(
                within(timers.after(write_timeout), write_one(&mut wr, out)).await,
                Some(Ok(()))
            ) {
                let mut s = shared.borrow_mut();
                s.broken = true;
                // h2 may wait on either side: both learn of it.
                wake(&mut s.tx_wait);
                wake(&mut s.rx_wait);
                return;
            }
        }
    };
    let mut reading = pin!(reading);
    let mut writing = pin!(writing);
    let mut driving = pin!(driver);
    let (mut out, mut read_done, mut write_done) = (None, false, false);
    poll_fn(|cx| {
        // The driver first: what it writes in this turn goes out in this turn.
        if out.is_none() {
            if let Poll::Ready(o) = driving.as_mut().poll(cx) {
                out = Some(o);
                let mut s = shared.borrow_mut();
                s.tx_end = true;
            }
        }
        if !write_done {
            write_done = writing.as_mut().poll(cx).is_ready();
        }
        if !read_done && out.is_none() {
            read_done = reading.as_mut().poll(cx).is_ready();
        }
        match out.take() {
            Some(o) if write_done => Poll::Ready(o),
            o => {
                out = o;
                Poll::Pending
            }
        }
    })
    .await
}
