//! weft's own answers (404, 502, 504, 408, head refusals, ...): written
//! from one error type, recorded in the request's outcome, and followed by
//! a lingering close when the connection must end.

use crate::io::{write_one, Stream};
use crate::state::{Tracker, Worker};
use crate::upstream::UpIo;
use bytes::BytesMut;
use std::time::Instant;
use weft_core::{ProxyError, Side};
use weft_proto::encode::error_response;
use weft_proto::RequestHead;

/// What the connection does after one exchange.
pub(crate) enum Next {
    KeepAlive,
    Close,
    /// Close after a lingering read, so that the answer is not lost to a
    /// reset (the client may still be sending).
    Linger,
    Tunnel(UpIo, BytesMut),
}

/// Refuses a request whose head weft cannot take (a downstream error: a
/// refused head or the header timeout, `msg` naming the cause), and closes
/// the connection.
pub(crate) async fn refuse<S: Stream>(w: &Worker, client: &mut S, e: ProxyError, msg: &str) -> Next {
    let mut t = Tracker::new(w, Instant::now());
    answer(client, &mut t, Reply::of(&e, msg), true, false).await
}

/// Answers a request with weft's own error response for `e` (callers box
/// it: error paths must not grow the request's future); closes when
/// `close` (the request's body was not read whole) or when the client asked
/// for it (`Connection: close`, HTTP/1.0 without keep-alive).
pub(crate) async fn reply_error<S: Stream>(
    client: &mut S,
    t: &mut Tracker<'_>,
    e: ProxyError,
    close: bool,
    req: &RequestHead,
) -> Next {
    let close = close || !req.keep_alive;
    let msg = e.to_string();
    answer(client, t, Reply::of(&e, &msg), close, req.is_head()).await
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

/// Writes one of weft's own answers, and records it in the request's
/// outcome; when it closes the connection, it does so lingeringly
/// (`Next::Linger`) so that the client reads the answer.
async fn answer<S: Stream>(
    client: &mut S,
    t: &mut Tracker<'_>,
    r: Reply<'_>,
    close: bool,
    head_only: bool,
) -> Next {
    t.o.fail(r.code, r.side);
    let out = error_response(r.status, r.code, r.msg, close, head_only);
    let len = out.len() as u64;
    if write_one(client, out.freeze()).await.is_err() {
        t.o.fail("client-closed", Side::Downstream);
        return Next::Close;
    }
    t.o.status = Some(r.status);
    t.o.bytes_out += len;
    if close {
        return Next::Linger;
    }
    Next::KeepAlive
}
