//! Upstream side of one worker: per-endpoint state, the keep-alive pool,
//! connection establishment, and the HTTP/1.1 connection an exchange holds
//! (multiplexed HTTP/2 connections sit beside it, in `upstream_h2`).

use crate::io::{nodelay, read_more};
use crate::timer::{within, Timers};
use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weft_core::config::{Cluster, PoolSettings};
use weft_core::{ErrorKind, Outlier, PeakEwmaSettings, ProxyError, RttEstimate};

/// One endpoint of a cluster, as this worker sees it.
/// TLS to an endpoint: the client configuration and the server name to
/// verify.
pub(crate) type EndpointTls = (
    std::sync::Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    /// The endpoint as configured (`host:port`): the Host for HTTP/1.0 clients.
    pub authority: String,
    /// Requests in flight to this endpoint from this worker.
    pub in_flight: Cell<u32>,
    /// Its outlier record on this worker.
    pub outlier: RefCell<Outlier>,
    /// Its round-trip estimate on this worker (Peak-EWMA).
    pub rtt: Cell<RttEstimate>,
    /// TLS to it: this worker's client configuration and the server name
    /// to verify (a cluster with `tls`; a reload puts the certificates it
    /// read in, for connections opened after it).
    pub tls: RefCell<Option<EndpointTls>>,
    idle: RefCell<VecDeque<(UpIo, Instant)>>,
    /// HTTP/2 connections to it (a cluster of `protocol = "http2"`).
    pub h2: RefCell<Vec<crate::upstream_h2::H2Conn>>,
    /// An HTTP/2 connection to it being opened, that other requests wait
    /// for rather than open their own.
    pub h2_opening: RefCell<Option<std::rc::Rc<crate::upstream_h2::Opening>>>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, authority: String, ewma: &PeakEwmaSettings) -> Self {
        let now = Instant::now();
        Endpoint {
            addr,
            authority,
            rtt: Cell::new(RttEstimate::new(now, ewma)),
            in_flight: Cell::new(0),
            outlier: RefCell::new(Outlier::new(now)),
            idle: RefCell::new(VecDeque::new()),
            h2: RefCell::new(Vec::new()),
            h2_opening: RefCell::new(None),
            tls: RefCell::new(None),
        }
    }

    /// Idle connections in its pool.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }

    /// True when [`Endpoint::checkout`] would find an idle connection at
    /// `now` (one younger than the pool's idle timeout).
    pub fn has_fresh_idle(&self, pool: &PoolSettings, now: Instant) -> bool {
        self.idle
            .borrow()
            .back()
            .is_some_and(|(_, since)| now.duration_since(*since) < pool.idle_timeout)
    }

    /// Takes the most recently used idle connection that is not too old.
    pub fn checkout(&self, pool: &PoolSettings, now: Instant) -> Option<UpIo> {
        let mut idle = self.idle.borrow_mut();
        while let Some((stream, since)) = idle.pop_back() {
            if now.duration_since(since) < pool.idle_timeout {
                return Some(stream);
            }
            // Everything older is older still.
            idle.clear();
        }
        None
    }

    /// Closes the idle connections that have been idle for the pool's
    /// `idle_timeout` or longer.
    pub fn evict_expired(&self, pool: &PoolSettings, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        // Oldest first: stop at the first one still fresh.
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= pool.idle_timeout)
        {
            idle.pop_front();
        }
    }

    /// Returns a connection whose last response was read completely and on
    /// which no operation was cancelled.
    pub fn checkin(&self, stream: UpIo, pool: &PoolSettings, now: Instant) {
        if pool.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        idle.push_back((stream, now));
        while idle.len() > pool.max_idle {
            idle.pop_front();
        }
    }
}

/// The byte stream of one upstream connection: TCP (TLS will be another
/// kind), or an in-memory stream in the pipeline tests.
pub(crate) enum UpIo {
    Tcp(TcpStream),
    /// Boxed: most clusters speak plain TCP, and the stream is moved with
    /// every exchange.
    Tls(Box<crate::tls::TlsStream>),
    #[cfg(test)]
    Mem(crate::mem::MemStream),
}

impl AsyncReadRent for UpIo {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpIo::Tcp(s) => s.read(buf).await,
            UpIo::Tls(s) => s.read(buf).await,
            #[cfg(test)]
            UpIo::Mem(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpIo::Tcp(s) => s.readv(buf).await,
            UpIo::Tls(s) => s.readv(buf).await,
            #[cfg(test)]
            UpIo::Mem(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpIo {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpIo::Tcp(s) => s.write(buf).await,
            UpIo::Tls(s) => s.write(buf).await,
            #[cfg(test)]
            UpIo::Mem(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpIo::Tcp(s) => s.writev(buf).await,
            UpIo::Tls(s) => s.writev(buf).await,
            #[cfg(test)]
            UpIo::Mem(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpIo::Tcp(s) => s.flush().await,
            UpIo::Tls(s) => s.flush().await,
            #[cfg(test)]
            UpIo::Mem(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpIo::Tcp(s) => s.shutdown().await,
            UpIo::Tls(s) => s.shutdown().await,
            #[cfg(test)]
            UpIo::Mem(s) => s.shutdown().await,
        }
    }
}

// SAFETY: every kind of stream is itself `Split`.
unsafe impl Split for UpIo {}

impl crate::io::SendNow for UpIo {
    fn send_now(&self, bufs: [&[u8]; 2]) -> Option<io::Result<usize>> {
        match self {
            UpIo::Tcp(s) => s.send_now(bufs),
            _ => None,
        }
    }
}

/// How one worker opens upstream connections: its deadlines, and TCP (or,
/// in the pipeline tests, an in-memory network).
pub(crate) struct Dialer<'a> {
    pub timers: &'a std::rc::Rc<Timers>,
    /// Read buffers of finished exchanges, for the next ones.
    pub spare: &'a crate::state::Spares<BytesMut>,
    #[cfg(test)]
    pub net: Option<&'a crate::mem::Net>,
}

/// Most spare read buffers a worker keeps (16 KiB each once used, at
/// most 32 KiB): one per exchange of a burst of 64 at once, so that such a
/// burst takes no new buffer (each new one also costs an allocation for
/// its shared header at the first split). They go when the worker is
/// quiet ([`crate::state::Worker::clear_spares`]).
pub(crate) const SPARE_READS: usize = 64;

impl Dialer<'_> {
    /// A read buffer for an upstream answer: a spare one, whose memory
    /// is taken again in place once the bytes read into it are gone (no
    /// allocation), else a new one.
    pub fn read_buffer(&self) -> BytesMut {
        while let Some(mut buf) = self.spare.take() {
            // Its memory taken back now when nothing else holds it; one
            // that grew for a large head (more than two reads' room) is
            // let go instead of kept.
            if !buf.try_reclaim(crate::io::READ_CHUNK) || buf.capacity() <= 2 * crate::io::READ_CHUNK {
                return buf;
            }
        }
        BytesMut::new()
    }

    /// Keeps an empty read buffer for the next exchange (up to
    /// [`SPARE_READS`]).
    pub fn give_back(&self, buf: BytesMut) {
        if buf.is_empty() {
            self.spare.give(buf);
        }
    }
}

/// Opens a new connection to `ep` within `timeout`: TCP, and the TLS
/// handshake for an endpoint of a cluster with `tls`.
pub(crate) async fn connect(d: &Dialer<'_>, ep: &Endpoint, timeout: Duration) -> Result<UpIo, ProxyError> {
    let addr = ep.addr;
    let opened = async {
        #[cfg(test)]
        if let Some(net) = d.net {
            return net.connect(addr).await.map(UpIo::Mem);
        }
        let s = TcpStream::connect_addr(addr).await?;
        nodelay(&s);
        let tls = ep.tls.borrow().clone();
        match tls {
            None => Ok::<_, io::Error>(UpIo::Tcp(s)),
            Some((cfg, name)) => {
                let s = crate::tls::connect(s, cfg, name).await?;
                Ok(UpIo::Tls(Box::new(s)))
            }
        }
    };
    match within(d.timers.after(timeout), opened).await {
        Some(Ok(s)) => Ok(s),
        Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(ProxyError::new(ErrorKind::ConnectRefused).caused_by(&e))
        }
        // Out of descriptors, local ports or memory: weft's own trouble.
        Some(Err(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM)
            ) =>
        {
            Err(ProxyError::new(ErrorKind::LocalResources).caused_by(&e))
        }
        Some(Err(e)) => Err(ProxyError::new(ErrorKind::ConnectFailed).caused_by(&e)),
        None => Err(ProxyError::new(ErrorKind::ConnectTimeout)),
    }
}

/// One HTTP/1.1 connection to an endpoint, held by the exchange that uses
/// it: the stream, what was read from it and not used yet, and whether it
/// came from the pool (then a failure before any answer may only mean that
/// the upstream had closed it while it was idle).
pub(crate) struct Conn {
    pub io: UpIo,
    /// Read from the upstream, not yet parsed or forwarded.
    pub buf: BytesMut,
    /// Taken from the pool rather than newly opened.
    pub reused: bool,
}

impl Conn {
    /// A pooled connection to `ep` that is fresh enough, else a new one.
    /// `may_connect`: whether the cluster has room for one more connection
    /// (asked only when none is pooled); without it, `Overflow`.
    pub async fn open(
        d: &Dialer<'_>,
        ep: &Endpoint,
        cluster: &Cluster,
        may_connect: impl FnOnce() -> bool,
    ) -> Result<Conn, ProxyError> {
        match ep.checkout(&cluster.pool, Instant::now()) {
            Some(io) => Ok(Conn {
                io,
                buf: d.read_buffer(),
                reused: true,
            }),
            // Boxed: a pooled connection is the common case, and a
            // connect's state would otherwise grow every exchange.
            None if may_connect() => Box::pin(Conn::connect(d, ep, cluster)).await,
            None => Err(ProxyError::new(ErrorKind::Overflow)),
        }
    }

    /// A new connection to `ep`, within the cluster's connect timeout.
    pub async fn connect(d: &Dialer<'_>, ep: &Endpoint, cluster: &Cluster) -> Result<Conn, ProxyError> {
        if cluster.tls.is_some() && ep.tls.borrow().is_none() {
            // Never plain text to a TLS cluster (its setup was checked at
            // start, so this does not happen).
            return Err(ProxyError::new(ErrorKind::ConnectFailed));
        }
        Ok(Conn {
            io: connect(d, ep, cluster.connect_timeout).await?,
            buf: d.read_buffer(),
            reused: false,
        })
    }

    /// Reads more of the upstream's answer into `buf`; 0: end of stream.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        read_more(&mut self.io, &mut self.buf).await
    }

    /// Hands the connection back to `ep`'s pool. Only for a connection
    /// whose response was read whole with nothing left over, that may be
    /// kept alive, and on which no operation was cancelled.
    /// Its read buffer goes back to `d`'s spares. `now`: when it became
    /// idle.
    pub fn release(self, ep: &Endpoint, pool: &PoolSettings, d: &Dialer<'_>, now: Instant) {
        if self.buf.is_empty() {
            ep.checkin(self.io, pool, now);
            d.give_back(self.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_idle_connection_is_one_checkout_would_take() {
        let ep = Endpoint::new(
            "10.0.0.1:80".parse().expect("address"),
            "a".into(),
            &Default::default(),
        );
        let pool = PoolSettings {
            max_idle: 4,
            idle_timeout: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        assert!(!ep.has_fresh_idle(&pool, t0));
        let (io, _peer) = crate::mem::pair(16);
        ep.checkin(UpIo::Mem(io), &pool, t0);
        assert!(ep.has_fresh_idle(&pool, t0 + Duration::from_millis(999)));
        // Expired: still counted idle, but checkout would not take it.
        let later = t0 + Duration::from_secs(1);
        assert!(!ep.has_fresh_idle(&pool, later));
        assert_eq!(ep.idle_count(), 1);
        assert!(ep.checkout(&pool, later).is_none());
    }
}
