//! Request-head parsing: `weft_proto::parse_request` on a typical browser GET
//! head (~400 bytes, 10 fields) and on a small curl-like head.
//!
//! For scale, `httparse_only` runs the bare `httparse` tokenizer weft's parser
//! builds on (no framing checks, no ranges, no allocation) on the same bytes.
//!
//! Each iteration appends the head to a reused read buffer (as a receive
//! would) and parses it; the parsed head, which owns its bytes, is dropped at
//! the end of the iteration so the buffer's allocation is reused, like in the
//! proxy's connection loop.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use weft_proto::{parse_request, Limits};

/// A browser-like GET: 11 header fields, 400-odd bytes.
const BROWSER: &[u8] = b"GET /static/app/main.3f9a1c.js?v=20240611 HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://www.example.com/dashboard\r\n\
Connection: keep-alive\r\n\
Cookie: session=8c1d2e3f4a5b6c7d; theme=dark\r\n\
Sec-Fetch-Dest: script\r\n\
Sec-Fetch-Mode: no-cors\r\n\
If-None-Match: \"5f2b-18c3a\"\r\n\
\r\n";

/// What `curl http://127.0.0.1:8080/` sends.
const CURL: &[u8] =
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse_request");
    for (name, head) in [("browser", BROWSER), ("curl", CURL)] {
        // Sanity: the head parses completely and consumes everything.
        let mut buf = BytesMut::from(head);
        let h = parse_request(&mut buf, &limits).unwrap().expect("complete head");
        assert!(buf.is_empty() && h.raw.len() == head.len());

        g.throughput(Throughput::Bytes(head.len() as u64));
        let mut buf = BytesMut::with_capacity(4096);
        g.bench_function(format!("{name}_{}B", head.len()), |b| {
            b.iter(|| {
                buf.extend_from_slice(black_box(head));
                let h = parse_request(&mut buf, &limits);
                black_box(h)
            })
        });
    }
    for (name, head) in [("browser", BROWSER), ("curl", CURL)] {
        g.throughput(Throughput::Bytes(head.len() as u64));
        g.bench_function(format!("httparse_only_{name}_{}B", head.len()), |b| {
            b.iter(|| {
                let mut fields = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut fields);
                let n = req.parse(black_box(head));
                black_box(n.map(|s| s.is_complete()).ok())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
