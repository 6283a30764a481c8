//! Message bodies on the HTTP/1 wire: a reader that takes one body out of a
//! read buffer as it arrives (validating chunked framing, keeping it or
//! removing it), and an encoder that writes chunked framing around payload
//! pieces. Neither copies payload bytes: pieces are split off the read
//! buffer, and the encoder only makes the small framing pieces that go
//! around them in a vectored write.

use crate::chunked::{ChunkedDecoder, ChunkedError};
use crate::head::BodyFraming;
use bytes::{BufMut, Bytes, BytesMut};

/// Takes one message body out of a read buffer as it arrives.
#[derive(Debug, Clone)]
pub enum BodyReader {
    /// The body is complete (or there was none).
    Done,
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked, forwarded as received (framing kept, validated).
    Chunked(ChunkedDecoder),
    /// Chunked, payload only (framing dropped): for an HTTP/1.0 client, or
    /// a hop that frames the payload itself. The framing read since the
    /// last payload is kept (bounded by the decoder's limits), so that the
    /// trailers can be read once the body is done.
    Dechunk(ChunkedDecoder, BytesMut),
    /// A de-chunked body that has ended with these trailer fields.
    Ended(Vec<(Bytes, Bytes)>),
    /// Until the connection closes.
    UntilClose,
}

impl BodyReader {
    /// A reader for a body framed as `framing`, framing kept.
    pub fn new(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::None | BodyFraming::Length(0) => BodyReader::Done,
            BodyFraming::Length(n) => BodyReader::Length(n),
            BodyFraming::Chunked => BodyReader::Chunked(ChunkedDecoder::new()),
            BodyFraming::UntilClose => BodyReader::UntilClose,
        }
    }

    /// A reader for a chunked body that yields the payload only.
    pub fn dechunking() -> Self {
        BodyReader::Dechunk(ChunkedDecoder::new(), BytesMut::new())
    }

    /// True once the whole body has been taken.
    pub fn done(&self) -> bool {
        matches!(self, BodyReader::Done | BodyReader::Ended(_))
    }

    /// The trailer fields of a de-chunked body that has ended (name and
    /// value pairs, as received); none otherwise.
    pub fn trailers(&self) -> &[(Bytes, Bytes)] {
        match self {
            BodyReader::Ended(t) => t,
            _ => &[],
        }
    }

    /// True for a body that ends only when the connection does.
    pub fn until_close(&self) -> bool {
        matches!(self, BodyReader::UntilClose)
    }

    /// Splits off the bytes of `buf` that belong to the body (validated;
    /// for [`BodyReader::Dechunk`], the payload only) and leaves the rest,
    /// such as a next message, in `buf`. Payload is not copied, except that
    /// de-chunking joins the payload runs of several chunks read at once.
    pub fn take(&mut self, buf: &mut BytesMut) -> Result<Bytes, ChunkedError> {
        match self {
            BodyReader::Done => Ok(Bytes::new()),
            BodyReader::Length(n) => {
                let k = (*n).min(buf.len() as u64);
                *n -= k;
                if *n == 0 {
                    *self = BodyReader::Done;
                }
                Ok(buf.split_to(k as usize).freeze())
            }
            BodyReader::Chunked(d) => {
                let k = d.feed(buf)?;
                if d.is_done() {
                    *self = BodyReader::Done;
                }
                Ok(buf.split_to(k).freeze())
            }
            BodyReader::Dechunk(d, tail) => {
                let mut out = BytesMut::new();
                while !buf.is_empty() && !d.is_done() {
                    let step = d.step(buf)?;
                    let mut consumed = buf.split_to(step.consumed);
                    let mut data = consumed.split_off(step.data.start);
                    let after = data.split_off(step.data.len());
                    if data.is_empty() {
                        tail.extend_from_slice(&consumed);
                    } else {
                        // Only the framing after the last payload matters
                        // (not this chunk's size line).
                        tail.clear();
                    }
                    tail.extend_from_slice(&after);
                    if out.is_empty() {
                        out = data;
                    } else {
                        out.extend_from_slice(&data);
                    }
                    if step.consumed == 0 {
                        break;
                    }
                }
                if d.is_done() {
                    *self = BodyReader::Ended(trailer_fields(tail));
                }
                Ok(out.freeze())
            }
            BodyReader::Ended(_) => Ok(Bytes::new()),
            BodyReader::UntilClose => Ok(buf.split().freeze()),
        }
    }
}

/// The trailer fields in the framing that ended a chunked body: after the
/// last payload's line end and the last-chunk line, `name: value` lines up
/// to the empty line (already validated by the decoder).
fn trailer_fields(tail: &[u8]) -> Vec<(Bytes, Bytes)> {
    // Skip up to and through the last-chunk line (`0[;ext]\r\n`).
    let Some(zero) = tail.iter().position(|&b| b == b'0') else {
        return Vec::new();
    };
    let Some(eol) = tail[zero..].iter().position(|&b| b == b'\n') else {
        return Vec::new();
    };
    let section = &tail[zero + eol + 1..];
    let mut fields = [httparse::EMPTY_HEADER; 64];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields
            .iter()
            .map(|f| {
                (
                    Bytes::copy_from_slice(f.name.as_bytes()),
                    Bytes::copy_from_slice(f.value),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Writes chunked framing around payload pieces (RFC 9112 §7.1): for each
/// piece, [`chunk_head`] before it and [`CHUNK_END`] after it, then
/// [`last_chunk`]. The payload itself is never copied.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The size line that goes before a payload piece of `len` bytes (`len` > 0:
/// an empty chunk would end the body).
pub fn chunk_head(len: usize) -> Bytes {
    debug_assert!(len > 0, "an empty chunk ends a chunked body");
    let mut out = BytesMut::with_capacity(18);
    let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{len:x}\r\n"));
    out.freeze()
}

/// The last chunk with trailer fields (`name`, `value` pairs, each already
/// valid field bytes), ending the body.
pub fn last_chunk(trailers: &[(&[u8], &[u8])]) -> Bytes {
    let mut out =
        BytesMut::with_capacity(5 + trailers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>());
    out.put_slice(b"0\r\n");
    for (name, value) in trailers {
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pieces: &[&[u8]], trailers: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces.iter().filter(|p| !p.is_empty()) {
            out.extend_from_slice(&chunk_head(p.len()));
            out.extend_from_slice(p);
            out.extend_from_slice(CHUNK_END);
        }
        out.extend_from_slice(&last_chunk(trailers));
        out
    }

    #[test]
    fn length_leaves_the_next_message() {
        let mut r = BodyReader::new(BodyFraming::Length(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(&r.take(&mut buf).unwrap()[..], b"hel");
        assert!(!r.done());
        buf.extend_from_slice(b"loGET /");
        assert_eq!(&r.take(&mut buf).unwrap()[..], b"lo");
        assert!(r.done());
        assert_eq!(&buf[..], b"GET /");
    }

    #[test]
    fn encoded_chunks_read_back_both_ways() {
        let wire = encode(&[b"hello", b"", b" world"], &[(b"grpc-status", b"0")]);
        assert_eq!(
            wire,
            b"5\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n".to_vec()
        );
        // Framing kept: the reader hands on the wire bytes as they came.
        let mut r = BodyReader::new(BodyFraming::Chunked);
        let mut buf = BytesMut::from(&wire[..]);
        buf.extend_from_slice(b"next");
        assert_eq!(&r.take(&mut buf).unwrap()[..], &wire[..]);
        assert!(r.done());
        assert_eq!(&buf[..], b"next");
        // De-chunked, a byte at a time: the payload only.
        let mut r = BodyReader::dechunking();
        let mut payload = Vec::new();
        for b in &wire {
            let mut one = BytesMut::from(&[*b][..]);
            payload.extend_from_slice(&r.take(&mut one).unwrap());
            assert!(one.is_empty());
        }
        assert!(r.done());
        assert_eq!(payload, b"hello world");
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        let mut r = BodyReader::new(BodyFraming::Chunked);
        assert!(r.take(&mut BytesMut::from(&b"zz\r\n"[..])).is_err());
    }

    #[test]
    fn sizes_in_hex() {
        assert_eq!(&chunk_head(255)[..], b"ff\r\n");
        assert_eq!(&chunk_head(1)[..], b"1\r\n");
        assert_eq!(&last_chunk(&[])[..], b"0\r\n\r\n");
    }

    #[test]
    fn a_dechunked_body_gives_its_trailers() {
        let mut r = BodyReader::dechunking();
        let mut buf =
            BytesMut::from(&b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\nNEXT"[..]);
        let mut payload = Vec::new();
        while !r.done() {
            payload.extend_from_slice(&r.take(&mut buf).expect("valid"));
        }
        assert_eq!(payload, b"hello");
        assert_eq!(&buf[..], b"NEXT");
        let t: Vec<(&[u8], &[u8])> = r.trailers().iter().map(|(n, v)| (&n[..], &v[..])).collect();
        assert_eq!(
            t,
            [
                (&b"grpc-status"[..], &b"0"[..]),
                (&b"grpc-message"[..], &b"ok"[..])
            ]
        );
        // In pieces, byte by byte, after a chunk whose size line holds a 0.
        let wire = b"10\r\n0123456789abcdef\r\n3\r\nabc\r\n0;x=1\r\nx-t: 1\r\n\r\n";
        let mut r = BodyReader::dechunking();
        let mut buf = BytesMut::new();
        let mut payload = Vec::new();
        for b in wire {
            buf.extend_from_slice(&[*b]);
            payload.extend_from_slice(&r.take(&mut buf).expect("valid"));
        }
        assert!(r.done());
        assert_eq!(payload, b"0123456789abcdefabc");
        assert_eq!(r.trailers().len(), 1);
        assert_eq!(&r.trailers()[0].0[..], b"x-t");
    }
}
