//! weft's own answers (404, 502, 504, 408, head refusals, ...): written
//! from one error type, recorded in the request's outcome, and followed by
//! a lingering close when the connection must end.

use crate::io::write_one;
use crate::state::{Generation, Tracker, Worker};
use crate::timer::within;
use monoio::io::AsyncWriteRent;
use std::time::{Duration, Instant};
use weft_core::{Listener, ProxyError, Side};
use weft_proto::encode::error_response;
use weft_proto::Request;

/// What becomes of the client connection after one of weft's own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Read the next request.
    KeepAlive,
    /// Close now: nothing more can be written.
    Close,
    /// Close after a lingering read, so that the answer is not lost to a
    /// reset (the client may still be sending).
    Linger,
}

/// Refuses a request whose head weft cannot take (a downstream error: a
/// refused head or the header timeout, `msg` naming the cause), and closes
/// the connection.
/// `l`: the listener of `gen` it came in on.
pub(crate) async fn refuse<W: AsyncWriteRent>(
    w: &Worker,
    gen: &Generation,
    l: &Listener,
    client: &mut W,
    e: ProxyError,
    msg: &str,
) -> After {
    let mut t = Tracker::new(w, gen, l.index, Instant::now());
    answer(client, &mut t, Reply::of(&e, msg), (true, false), l.write_timeout).await
}

/// Answers a request with weft's own error response for `e` (callers box
/// it: error paths must not grow the request's future); closes when
/// `close` (the request's body was not read whole) or when the client asked
/// for it (`Connection: close`, HTTP/1.0 without keep-alive).
pub(crate) async fn reply_error<W: AsyncWriteRent>(
    client: &mut W,
    t: &mut Tracker<'_>,
    e: ProxyError,
    close: bool,
    req: &Request,
    write_timeout: Duration,
) -> After {
    let close = close || !req.keep_alive();
    let msg = e.to_string();
    answer(
        client,
        t,
        Reply::of(&e, &msg),
        (close, req.is_head()),
        write_timeout,
    )
    .await
}

/// One of weft's own answers.
struct Reply<'a> {
    status: u16,
    /// The `weft-error` code.
    code: &'static str,
    /// Which side caused it.
    side: Side,
    /// The one-line body naming the cause.
    msg: &'a str,
}

impl<'a> Reply<'a> {
    /// The answer for `e`, with `msg` naming the cause.
    fn of(e: &ProxyError, msg: &'a str) -> Self {
        Reply {
            status: e.status(),
            code: e.code(),
            side: e.side(),
            msg,
        }
    }
}

/// Writes one of weft's own answers (`close`: the connection closes after
/// it; `head_only`: the answer to a HEAD), within `write_timeout`, and
/// records it in the request's outcome; when it closes the connection, it
/// does so lingeringly (`After::Linger`) so that the client reads the
/// answer.
async fn answer<W: AsyncWriteRent>(
    client: &mut W,
    t: &mut Tracker<'_>,
    r: Reply<'_>,
    (close, head_only): (bool, bool),
    write_timeout: Duration,
) -> After {
    t.o.fail(r.code, r.side);
    let out = error_response(r.status, r.code, r.msg, close, head_only);
    let len = out.len() as u64;
    let timers = &t.worker().timers;
    match within(timers.after(write_timeout), write_one(client, out.freeze())).await {
        Some(Ok(())) => {}
        Some(Err(_)) => {
            t.o.fail("client-closed", Side::Downstream);
            return After::Close;
        }
        // A client that reads nothing does not hold the connection.
        None => {
            t.o.fail("client-write-timeout", Side::Downstream);
            return After::Close;
        }
    }
    t.o.status = Some(r.status);
    t.o.bytes_out += len;
    if close {
        return After::Linger;
    }
    After::KeepAlive
}
