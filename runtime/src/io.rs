//! Owned-buffer IO helpers on top of monoio.

use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBufMut, IoVecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::io;

/// Bytes asked of the kernel per read.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Size of the first read on a connection that was idle: enough for most
/// request heads, small enough that thousands of connections waking at once
/// (a mass close, a burst) do not allocate a full chunk each.
pub(crate) const FIRST_READ: usize = 2 * 1024;

/// Appends whatever the socket has to `buf`; `Ok(0)` means end of stream.
/// A buffer with less than 1 KiB to spare grows by [`READ_CHUNK`].
pub(crate) async fn read_more<S: AsyncReadRent>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    let owned = std::mem::take(buf);
    let len = owned.len();
    let cap = owned.capacity();
    let (res, slice) = stream.read(owned.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    res
}

/// Two byte buffers written with one `writev`, without copying either.
struct Pair {
    _bufs: [Bytes; 2],
    iov: [libc::iovec; 2],
}

// SAFETY: the iovecs point into the two `Bytes`, which `Pair` owns and never
// changes; heap memory of a `Bytes` does not move when the struct moves.
unsafe impl IoVecBuf for Pair {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        2
    }
}

/// Writes `head` then `body` completely, in one vectored write when both
/// are non-empty.
pub(crate) async fn write_two(stream: &mut TcpStream, head: Bytes, body: Bytes) -> io::Result<()> {
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
    let pair = Pair {
        _bufs: [head, body],
        iov,
    };
    let (res, _) = stream.write_vectored_all(pair).await;
    res.map(|_| ())
}

/// Writes `buf` completely.
pub(crate) async fn write_one<S: AsyncWriteRentExt>(stream: &mut S, buf: Bytes) -> io::Result<()> {
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
