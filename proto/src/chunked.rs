//! An incremental, strict decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1).
//!
//! It validates framing while bytes stream through: the proxy forwards the
//! consumed bytes unchanged between two HTTP/1 hops, or takes just the data
//! ranges when it must remove the chunking. Line endings must be CRLF, sizes
//! are bounded, extensions and trailers are size-limited.

use std::fmt;
use std::ops::Range;

/// Longest accepted chunk-size line (size, extensions), in bytes.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest accepted trailer section, in bytes.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { digits: u8 },
    // Whitespace after the size: only more of it, `;` or CR may follow.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// A chunk size that is empty, not hex, or too large.
    BadSize,
    /// A byte where CR or LF was required.
    BadLineEnding,
    /// A control byte inside a chunk extension or a trailer.
    BadByte,
    /// A chunk-size line or the trailers exceed their limits.
    TooLong,
}

impl fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkedError::BadSize => "invalid chunk size",
            ChunkedError::BadLineEnding => "chunk framing without CRLF",
            ChunkedError::BadByte => "control byte in chunk extension or trailer",
            ChunkedError::TooLong => "chunk line or trailers too long",
        })
    }
}

impl std::error::Error for ChunkedError {}

/// What one decoding step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input that were consumed by this step.
    pub consumed: usize,
    /// Payload bytes within the consumed part (empty for framing bytes).
    pub data: Range<usize>,
}

/// The state of one chunked body being decoded.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    line: usize,
    trailers: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: 0,
        }
    }

    /// True once the last chunk and the trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes from `input` until it is exhausted, a payload run ends,
    /// or the body is complete. Bytes after the end of the body are not consumed.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Data => {
                    let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step {
                        consumed: i + take,
                        data: i..i + take,
                    });
                }
                State::Size { digits } => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkedError::TooLong);
                    }
                    if let Some(d) = (b as char).to_digit(16) {
                        if digits >= 15 {
                            return Err(ChunkedError::BadSize);
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkedError::BadSize);
                    } else if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b';' {
                        self.state = State::Ext;
                    } else if b == b' ' || b == b'\t' {
                        self.state = State::SizeWs;
                    } else {
                        return Err(ChunkedError::BadSize);
                    }
                }
                State::SizeWs => {
                    // `5 6` is not a size 5 with an extension: other parsers read it otherwise.
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkedError::TooLong);
                    }
                    match b {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Ext,
                        b'\r' => self.state = State::SizeLf,
                        _ => return Err(ChunkedError::BadSize),
                    }
                }
                State::Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkedError::TooLong);
                    }
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkedError::BadByte);
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.line = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    self.trailers += 1;
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else if b < 0x20 || b == 0x7f || b == b' ' || b == b'\t' {
                        // Control bytes, or a leading space (obs-fold), are refused.
                        return Err(ChunkedError::BadByte);
                    } else {
                        self.state = State::TrailerLine;
                    }
                }
                State::TrailerLine => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(ChunkedError::TooLong);
                    }
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkedError::BadByte);
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnding);
                    }
                    self.state = State::Done;
                    i += 1;
                    break;
                }
            }
            i += 1;
        }
        Ok(Step {
            consumed: i,
            data: i..i,
        })
    }

    /// Validates as many bytes of `input` as belong to the body and returns
    /// how many that is (all of them unless the body ends inside `input`).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkedError> {
        let mut at = 0;
        while at < input.len() && !self.is_done() {
            let step = self.step(&input[at..])?;
            if step.consumed == 0 {
                break;
            }
            at += step.consumed;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; returns (payload, consumed).
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() && !d.is_done() {
            let end = (at + piece).min(input.len());
            let part = &input[at..end];
            let mut off = 0;
            while off < part.len() && !d.is_done() {
                let s = d.step(&part[off..])?;
                out.extend_from_slice(&part[off + s.data.start..off + s.data.end]);
                off += s.consumed;
                if s.consumed == 0 {
                    break;
                }
            }
            at += off;
            if off < part.len() {
                break;
            }
        }
        assert!(d.is_done(), "body incomplete");
        Ok((out, at))
    }

    #[test]
    fn decodes_in_any_piece_size() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (data, used) = decode(body, piece).unwrap();
            assert_eq!(data, b"hello 0123456789");
            assert_eq!(&body[used..], b"NEXT");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"x\r\n"), Err(ChunkedError::BadSize));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"\r\n"), Err(ChunkedError::BadSize));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"5\nhello"), Err(ChunkedError::BadSize));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"3\r\nabcX"), Err(ChunkedError::BadLineEnding));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"ffffffffffffffffff\r\n"), Err(ChunkedError::BadSize));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"0\r\n folded\r\n\r\n"), Err(ChunkedError::BadByte));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"-1\r\n"), Err(ChunkedError::BadSize));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"5 6\r\nhello\r\n"), Err(ChunkedError::BadSize));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"5 \t;a=1\r\nhello\r\n0\r\n\r\n"), Ok(21));
    }

    #[test]
    fn feed_stops_at_end() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"0\r\n\r\nGET /"), Ok(5));
        assert!(d.is_done());
    }
}
