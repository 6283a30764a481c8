//! The streams weft serves and forwards on, and owned-buffer IO helpers on
//! top of monoio.

use crate::state::Spares;
use crate::timer::Deadline;
use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBufMut, IoVecBuf};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller, Split,
};
use monoio::net::TcpStream;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;

/// A byte stream weft serves or forwards on: monoio's owned-buffer reads
/// and writes, splittable into halves for full duplex, plus the two things
/// a session needs that those traits lack. TCP today; TLS streams and the
/// in-memory streams of the pipeline tests plug in here.
pub(crate) trait Stream: AsyncReadRent + AsyncWriteRent + SendNow + Split + 'static {
    /// Resolves once a read would not wait (bytes or the end of stream are
    /// there), taking nothing: the idle wait between requests. A stream
    /// that holds bytes itself (TLS's decrypted records) resolves at once
    /// when it has some, whatever the descriptor says. `relaxed`: a rare
    /// false wake is acceptable (the caller reads or peeks next).
    fn readable(&self, relaxed: bool) -> impl Future<Output = io::Result<()>>;

    /// What the stream holds, looked at without taking it.
    fn peek(&self) -> Peek;

    /// Reads into `buf`'s spare room (as [`read_more`]) until `until`
    /// passes. A read still in flight then is cancelled and its result
    /// awaited, so bytes that arrived meanwhile are kept: a dropped
    /// io_uring read may still complete, and its bytes would be lost.
    /// `None`: the deadline came first and nothing was read.
    fn read_before(
        &mut self,
        buf: &mut BytesMut,
        until: &mut Deadline<'_>,
    ) -> impl Future<Output = Option<io::Result<usize>>>;

    /// The client's verified identity (a mutual-TLS client certificate's
    /// URI name, such as a SPIFFE id, else its DNS name); none for plain
    /// TCP.
    fn identity(&self) -> Option<std::rc::Rc<str>> {
        None
    }

    /// Gives back buffers the stream holds while its connection idles
    /// (TLS's ciphertext buffers); nothing for plain TCP.
    fn shrink(&mut self) {}

    /// True for a stream that says goodbye before weft closes it on its
    /// own (TLS's close_notify); plain TCP just closes.
    const GOODBYE: bool = false;

    /// Says goodbye before weft closes the connection on its own (idle,
    /// draining); the caller bounds the time.
    fn goodbye(&mut self) -> impl Future<Output = ()> {
        async {}
    }
}

/// Sending at once, without the ring, on the streams that can.
pub(crate) trait SendNow {
    /// Sends what the socket takes at once of `bufs`, with a plain
    /// non-blocking `sendmsg` rather than a ring operation: a send that
    /// completes at once then costs no completion, no extra turn of the
    /// loop and no second ring entry. `None`: this stream has no such path
    /// (TLS, in-memory); `Err(WouldBlock)`: nothing went.
    fn send_now(&self, _bufs: [&[u8]; 2]) -> Option<io::Result<usize>> {
        None
    }
}

/// What a stream holds, looked at without taking it.
pub(crate) enum Peek {
    /// End of stream or an error: the peer is gone.
    Closed,
    /// Bytes wait.
    Data,
    /// Nothing yet.
    Nothing,
}

/// A write half of a split stream (full duplex) takes the ring path.
impl<T: AsyncWriteRent> SendNow for monoio::io::OwnedWriteHalf<T> {}

impl SendNow for TcpStream {
    fn send_now(&self, bufs: [&[u8]; 2]) -> Option<io::Result<usize>> {
        Some(send_now(self.as_raw_fd(), bufs))
    }
}

impl Stream for TcpStream {
    fn readable(&self, relaxed: bool) -> impl Future<Output = io::Result<()>> {
        TcpStream::readable(self, relaxed)
    }

    fn peek(&self) -> Peek {
        let mut b = [0u8; 1];
        // SAFETY: recv into a one-byte buffer owned here; MSG_PEEK leaves
        // the byte in the socket and MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => Peek::Closed,
            n if n > 0 => Peek::Data,
            _ => match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peek::Nothing,
                _ => Peek::Closed,
            },
        }
    }

    async fn read_before(
        &mut self,
        buf: &mut BytesMut,
        until: &mut Deadline<'_>,
    ) -> Option<io::Result<usize>> {
        if monoio::utils::is_legacy() {
            // epoll: a read takes bytes only when it returns; dropping one
            // that waits loses nothing.
            return monoio::select! {
                r = read_more(self, buf) => Some(r),
                _ = &mut *until => None,
            };
        }
        // io_uring: a cancelable read, whose cancellation is awaited. (Its
        // cost is monoio's: each cancelable operation is put in and taken out
        // of a SipHash set, about 800 instructions per request.)
        make_room(buf);
        let owned = std::mem::take(buf);
        let (len, cap) = (owned.len(), owned.capacity());
        let mut canceller = take_canceller();
        let mut read = std::pin::pin!(self.cancelable_read(owned.slice_mut(len..cap), canceller.handle()));
        let first = monoio::select! {
            r = &mut read => Some(r),
            _ = &mut *until => None,
        };
        let timed_out = first.is_none();
        let (res, slice) = match first {
            Some(r) => r,
            None => {
                canceller = canceller.cancel();
                read.await
            }
        };
        // The read is over: its handle is gone and the canceller holds
        // nothing, ready for the next read.
        give_canceller(canceller);
        *buf = slice.into_inner();
        match res {
            Err(_) if timed_out => None,
            r => Some(r),
        }
    }
}

thread_local! {
    /// This worker's cancellers of finished reads (a worker is a thread),
    /// one per read of a burst of 64 at once. monoio's `Canceller::new`
    /// allocates, and its set of operations allocates again at the first
    /// one; a canceller whose reads are over holds nothing and serves the
    /// next read as a new one would.
    static CANCELLERS: Spares<Canceller> = const { Spares::new(64) };
}

/// A canceller for one read: a kept one, else a new one.
fn take_canceller() -> Canceller {
    CANCELLERS.with(|c| c.take()).unwrap_or_default()
}

/// Keeps a canceller whose read is over for the next read.
fn give_canceller(canceller: Canceller) {
    CANCELLERS.with(|c| c.give(canceller));
}

/// Lets the kept cancellers go (the worker went quiet).
pub(crate) fn clear_cancellers() {
    CANCELLERS.with(|c| c.clear());
}

/// Makes room for a read: a buffer with less than 1 KiB to spare grows by
/// [`READ_CHUNK`].
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
}

/// Bytes asked of the kernel per read.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Size of the first read on a connection that was idle: enough for most
/// request heads, small enough that thousands of connections waking at once
/// (a mass close, a burst) do not allocate a full chunk each.
pub(crate) const FIRST_READ: usize = 2 * 1024;

/// Appends whatever the socket has to `buf`; `Ok(0)` means end of stream.
/// A buffer with less than 1 KiB to spare grows by [`READ_CHUNK`].
pub(crate) async fn read_more<S: AsyncReadRent>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    make_room(buf);
    let owned = std::mem::take(buf);
    let len = owned.len();
    let cap = owned.capacity();
    let (res, slice) = stream.read(owned.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    res
}

/// Two byte buffers written with one `writev`, without copying either.
/// Boxed where it is written: io_uring's kernel reads the iovec list when
/// the ring is entered, after the operation holding it has moved, so the
/// list must stay at one address.
struct Pair {
    bufs: [Bytes; 2],
    iov: [libc::iovec; 2],
}

// SAFETY: the iovecs point into the two `Bytes`, which `Pair` owns and never
// changes (heap memory of a `Bytes` does not move), and the list itself is
// in the box's heap memory, which does not move when the box does.
unsafe impl IoVecBuf for Box<Pair> {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        2
    }
}

/// Writes `head` then `body` completely, in one vectored write when both
/// are non-empty.
///
/// Not monoio's `write_vectored_all`: after a short write that ends inside
/// a buffer, monoio 0.2.4 sends that buffer's first bytes again in place of
/// its rest (its `IoVecMeta::consume` shortens the iovec without moving its
/// start), which corrupts a response to a client whose socket buffer is
/// nearly full. What one `writev` leaves goes here by plain writes.
pub(crate) async fn write_two<S: AsyncWriteRent>(stream: &mut S, head: Bytes, body: Bytes) -> io::Result<()> {
    if body.is_empty() {
        return write_one(stream, head).await;
    }
    if head.is_empty() {
        return write_one(stream, body).await;
    }
    let iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut _,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut _,
            iov_len: body.len(),
        },
    ];
    let pair = Box::new(Pair {
        bufs: [head, body],
        iov,
    });
    let (res, pair) = stream.writev(pair).await;
    let n = match res {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
        Err(e) => return Err(e),
    };
    let [head, body] = pair.bufs;
    write_rest(stream, head, body, n).await
}

/// Writes what a write of the first `n` bytes of `head` then `body` left.
async fn write_rest<S: AsyncWriteRent>(stream: &mut S, head: Bytes, body: Bytes, n: usize) -> io::Result<()> {
    if n < head.len() {
        write_one(stream, head.slice(n..)).await?;
        write_one(stream, body).await
    } else {
        write_one(stream, body.slice(n - head.len()..)).await
    }
}

/// A non-blocking `sendmsg` of `bufs` on `fd` (see [`SendNow::send_now`]).
pub(crate) fn send_now(fd: std::os::fd::RawFd, bufs: [&[u8]; 2]) -> io::Result<usize> {
    let iov = bufs.map(|b| libc::iovec {
        iov_base: b.as_ptr() as *mut _,
        iov_len: b.len(),
    });
    // SAFETY: a zeroed msghdr is valid; it points at `iov`, which lives
    // until the call returns, and each iovec at a live slice.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut _;
        msg.msg_iovlen = if bufs[1].is_empty() { 1 } else { 2 };
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Most requests in progress on a worker for which a send goes straight
/// to the socket ([`write_two_now`]). Past it the worker is busy, and sends
/// batched into the ring's one entry per loop turn cost less than a system
/// call each.
pub(crate) const DIRECT_SEND_MAX: u32 = 2;

/// Writes `head` then `body` completely, as [`write_two`]. On io_uring and
/// when `quiet` (few requests in progress), it first tries
/// [`SendNow::send_now`]: most sends complete at once, and one that does
/// costs no completion and no extra turn of the loop.
pub(crate) async fn write_two_now<S: AsyncWriteRent + SendNow>(
    stream: &mut S,
    head: Bytes,
    body: Bytes,
    quiet: bool,
) -> io::Result<()> {
    if !quiet || monoio::utils::is_legacy() {
        // epoll: monoio's write already tries the socket first.
        return write_two(stream, head, body).await;
    }
    match stream.send_now([&head, &body]) {
        None => write_two(stream, head, body).await,
        Some(Ok(n)) => write_rest(stream, head, body, n).await,
        Some(Err(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
            write_two(stream, head, body).await
        }
        Some(Err(e)) => Err(e),
    }
}

/// Writes `buf` completely.
pub(crate) async fn write_one<S: AsyncWriteRent>(stream: &mut S, buf: Bytes) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let (res, _) = stream.write_all(buf).await;
    res.map(|_| ())
}

/// Sets TCP_NODELAY: small writes must not wait for delayed ACKs.
pub(crate) fn nodelay(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A send the socket takes only in part goes on through the ring from
    /// where the direct send stopped: the peer gets every byte once, in
    /// order. (io_uring only: on epoll the direct send is not tried.)
    #[test]
    fn a_direct_send_taken_in_part_goes_on_through_the_ring() {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("an io_uring runtime (the test machine has io_uring)");
        rt.block_on(async {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
            let addr = listener.local_addr().expect("its address");
            let mut sender = TcpStream::connect(addr).await.expect("a connection");
            let (mut receiver, _) = listener.accept().await.expect("the accepted end");
            nodelay(&sender);
            // Small socket buffers: the direct send takes a few KiB only.
            let small: libc::c_int = 16 * 1024;
            for (fd, opt) in [
                (sender.as_raw_fd(), libc::SO_SNDBUF),
                (receiver.as_raw_fd(), libc::SO_RCVBUF),
            ] {
                // SAFETY: setsockopt with a valid descriptor and an int option.
                let rc = unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        opt,
                        (&small as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "setsockopt");
            }
            let head = Bytes::from(vec![b'h'; 1000]);
            let body: Bytes = (0..(1u32 << 17))
                .map(|i| (i % 251) as u8)
                .collect::<Vec<_>>()
                .into();
            let want = [&head[..], &body[..]].concat();
            let total = want.len();
            let direct = send_now(sender.as_raw_fd(), [b"", b""]);
            assert!(
                matches!(direct, Ok(0)),
                "an empty direct send sends nothing: {direct:?}"
            );
            let reader = monoio::spawn(async move {
                let mut got = BytesMut::with_capacity(total);
                while got.len() < total {
                    match read_more(&mut receiver, &mut got).await {
                        Ok(n) if n > 0 => {}
                        other => panic!("the stream ended early: {other:?}"),
                    }
                }
                got
            });
            write_two_now(&mut sender, head, body, true)
                .await
                .expect("the whole write");
            let got = monoio::time::timeout(std::time::Duration::from_secs(10), reader)
                .await
                .expect("the reader has every byte within 10 s");
            assert_eq!(got.len(), total, "every byte once");
            assert!(got[..] == want[..], "in order");
        });
    }
}
