//! weft-proto: the HTTP/1.1 wire and protocol-neutral message heads, with
//! no IO.
//!
//! Strict head parsing on top of `httparse` (RFC 9112: ambiguous framing is
//! rejected, never guessed), the body framing decisions, an incremental chunked
//! decoder that validates while bytes stream through, the hop-by-hop rules and
//! the re-encoding of heads for the next hop. Everything here is a pure function
//! or state machine over bytes; sockets live in the `weft` runtime crate.

#![forbid(unsafe_code)]

pub mod body;
pub mod chunked;
pub mod deadline;
pub mod encode;
pub mod error;
pub mod head;
pub mod message;
pub mod path;
pub mod request;
pub mod response;

pub use body::BodyReader;
pub use chunked::{ChunkedDecoder, ChunkedError, Step};
pub use error::HeadError;
pub use head::{BodyFraming, HeaderRange, Limits};
pub use message::{BodyLength, Request, Response, Version};
pub use request::{parse_request, parse_request_in, RequestHead};
pub use response::{parse_response, parse_response_in, ResponseHead};
