//! The HTTP/2 downstream session: one client connection speaking HTTP/2,
//! found by its connection preface on a listener that also speaks
//! HTTP/1.1, or by ALPN `h2` on a TLS listener. The `h2` crate holds the
//! connection's state (frames, HPACK, flow control, stream limits) over a
//! [`wire`](crate::wire); each stream is a request, served in a task of
//! its own by the forward step. The session owns the connection's idle
//! timeout and its drain (GOAWAY, then the streams in flight finish).

use crate::forward::{exchange_h2, H2Stream};
use crate::io::Stream;
use crate::state::{Generation, ListenerState, Worker};
use crate::timer::within;
use crate::wire::{carry, wire};
use bytes::{Bytes, BytesMut};
use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use weft_core::config::Listener;

/// HTTP/2's connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `buf`, the first bytes of a connection, is HTTP/2's preface:
/// `Some(true)` when it starts with it, `None` when it may still (too few
/// bytes yet), `Some(false)` when it is not.
pub(crate) fn preface(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        Some(false)
    } else if n < PREFACE.len() {
        None
    } else {
        Some(true)
    }
}

/// Serves an HTTP/2 connection until it closes. `read`: its first bytes,
/// already read (the preface, when it was detected on a plain listener).
/// It serves on listener `li` of `gen` (each stream on the newest
/// generation when it comes; the connection holds none meanwhile).
pub(crate) async fn serve<S: Stream>(
    w: &Rc<Worker>,
    gen: Rc<Generation>,
    li: usize,
    client: S,
    read: BytesMut,
    peer_ip: Rc<str>,
) {
    // What the connection needs of its listener, copied: it holds no
    // generation while it waits (a reload's replaced clusters, and their
    // pools, go once their requests end).
    let l = Limits::of(&gen.config.listeners[li], gen.config.runtime.drain_timeout);
    let listener = gen.listeners[li].clone();
    drop(gen);
    let identity = client.identity();
    let (wire, pump) = wire(read);
    let driver = async {
        // The listener's `http2` settings bound what a client may open
        // and send; what weft sends waits for the client's windows.
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(l.http2.max_concurrent_streams)
            .initial_window_size(l.http2.stream_window)
            .initial_connection_window_size(l.http2.connection_window)
            .max_header_list_size(l.max_header_bytes as u32)
            .max_send_buffer_size(l.http2.stream_window as usize);
        let handshake = builder.handshake::<_, Bytes>(wire);
        let mut conn = match within(w.timers.after(l.header_timeout), handshake).await {
            Some(Ok(conn)) => conn,
            _ => return,
        };
        drive(w, &listener, &l, &mut conn, &peer_ip, identity).await;
    };
    carry(&w.timers, l.write_timeout, client, pump, driver).await;
}

/// A listener's settings an HTTP/2 connection reads, copied at its start.
struct Limits {
    http2: weft_core::config::Http2Settings,
    max_header_bytes: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    drain_timeout: Duration,
}

impl Limits {
    fn of(l: &Listener, drain_timeout: Duration) -> Self {
        Limits {
            http2: l.http2,
            max_header_bytes: l.max_header_bytes,
            header_timeout: l.header_timeout,
            idle_timeout: l.idle_timeout,
            write_timeout: l.write_timeout,
            drain_timeout,
        }
    }
}

/// Accepts the connection's streams, each into a task of its own, until
/// the connection ends; closes it with GOAWAY when it has been idle (no
/// stream open) for the listener's idle timeout, or when the worker drains.
async fn drive(
    w: &Rc<Worker>,
    listener: &ListenerState,
    l: &Limits,
    conn: &mut h2::server::Connection<crate::wire::Wire, Bytes>,
    peer_ip: &Rc<str>,
    identity: Option<Rc<str>>,
) {
    let mut idle_until = Instant::now() + l.idle_timeout;
    let mut closing: Option<Instant> = None;
    let live = Rc::new(Live::default());
    loop {
        let next = match closing {
            // After GOAWAY: the streams in flight finish, within the drain time.
            Some(by) => within(w.timers.at(by), conn.accept()).await,
            None => within(w.timers.idle_until(idle_until), conn.accept()).await,
        };
        match next {
            Some(Some(Ok((req, respond)))) => {
                idle_until = Instant::now() + l.idle_timeout;
                let s = H2Stream { req, respond };
                let place = Place::take(&live);
                // Each stream on the newest generation; on a listener a
                // reload removed, none is taken (REFUSED_STREAM: the client
                // may send it again elsewhere) and the connection closes.
                let Some((gen, li)) = w.newest_for(listener) else {
                    let mut respond = s.respond;
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    conn.graceful_shutdown();
                    closing = closing.or(Some(Instant::now() + l.drain_timeout));
                    continue;
                };
                let (w, peer_ip, identity) = (w.clone(), peer_ip.clone(), identity.clone());
                monoio::spawn(async move {
                    let _place = place;
                    exchange_h2(w, gen, li, s, peer_ip, identity).await
                });
                // A stream the client reset frees its place in h2 at once,
                // but its exchange may run on a while (it notices the reset
                // at its next wait): past the listener's stream limit, no
                // new stream is taken until an exchange ends, so a client
                // resetting streams as fast as it opens them (rapid reset)
                // never has more exchanges running than that.
                if live.count.get() >= l.http2.max_concurrent_streams {
                    let closed = poll_fn(|cx| {
                        if live.count.get() < l.http2.max_concurrent_streams {
                            return Poll::Ready(false);
                        }
                        live.waiting.set(Some(cx.waker().clone()));
                        // Meanwhile the connection runs (its streams go on).
                        conn.poll_closed(cx).map(|_| true)
                    })
                    .await;
                    if closed {
                        return;
                    }
                }
            }
            // The connection ended (or failed: h2 has told the client why).
            Some(Some(Err(_))) | Some(None) => return,
            None if closing.is_some() => {
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                // Let the GOAWAY out, briefly.
                let _ = within(w.timers.after(Duration::from_secs(1)), conn.accept()).await;
                return;
            }
            None => {
                let now = Instant::now();
                // A listener a reload removed closes as in a drain.
                let removed = listener.index.get().is_none();
                if !w.draining.get() && !removed && now < idle_until {
                    // Woken to look again (a reload removed a listener).
                    continue;
                }
                if w.draining.get() || removed || !conn.has_streams() {
                    conn.graceful_shutdown();
                    closing = Some(now + l.drain_timeout);
                } else {
                    idle_until = now + l.idle_timeout;
                }
            }
        }
    }
}

/// The exchanges of one connection's streams that are still running.
#[derive(Default)]
struct Live {
    count: Cell<u32>,
    /// The session waits for one to end.
    waiting: Cell<Option<Waker>>,
}

/// One running exchange's place in [`Live`], given back when dropped.
struct Place(Rc<Live>);

impl Place {
    fn take(live: &Rc<Live>) -> Place {
        live.count.set(live.count.get() + 1);
        Place(live.clone())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get().saturating_sub(1));
        if let Some(w) = self.0.waiting.take() {
            w.wake();
        }
    }
}
