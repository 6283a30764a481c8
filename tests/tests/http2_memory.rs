//! Memory under HTTP/2 flow control, in a test binary of its own: the
//! figure is this process's resident memory, which other tests running
//! beside it would disturb. Both drivers run one after the other.

use std::time::Duration;
use weft_tests::h2c::H2;
use weft_tests::*;

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A client that opens many streams of large downloads and reads none:
/// weft holds at most the client's windows and a read buffer per stream,
/// not the bodies (the upstreams wait on their sockets).
fn downloads_a_client_never_reads_do_not_grow_memory() {
    // An upstream that streams 8 MB from one small buffer (it holds no body).
    let up = Upstream::scripted(|mut stream, _, received| {
        use std::io::Write;
        let mut buf = bytes::BytesMut::new();
        while let Some((head, _, _)) = read_request(&mut stream, &mut buf) {
            received.lock().expect("lock").push(Received::head(&head));
            let total = 8_000_000usize;
            let out = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n\r\n");
            if stream.write_all(out.as_bytes()).is_err() {
                return;
            }
            let piece = [b'x'; 65536];
            let mut left = total;
            while left > 0 {
                let n = left.min(piece.len());
                if stream.write_all(&piece[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        }
    });
    let (weft, addr) = proxy(&[up.addr]);
    let before = rss_kib();
    let mut c = H2::connect(addr);
    let mut open = Vec::new();
    for _ in 0..100 {
        let req = H2::head(addr, "GET", "/", &[]);
        let (res, _) = c.start(req, true).expect("stream opened");
        open.push(res);
    }
    // Every stream reached its upstream, which is writing 8 MB into it.
    assert!(eventually(Duration::from_secs(10), || up.count() == 100));
    // Let the buffers fill: until the resident memory stops growing (two
    // readings 50 ms apart within 256 KiB), at most 5 s. Memory that kept
    // growing fails below at the bound.
    let mut last = (rss_kib(), std::time::Instant::now());
    eventually(Duration::from_secs(5), || {
        if last.1.elapsed() < Duration::from_millis(50) {
            return false;
        }
        let now = rss_kib();
        let settled = now.abs_diff(last.0) < 256;
        last = (now, std::time::Instant::now());
        settled
    });
    let grown = rss_kib().saturating_sub(before);
    eprintln!("100 streams x 8 MB unread: resident memory grew by {} KiB", grown);
    assert!(
        grown < 64 * 1024,
        "resident memory grew by {grown} KiB for 800 MB of unread downloads"
    );
    drop(open);
    drop(c);
    drop(weft);
}

/// On each driver in turn (the resident memory is the process's: one
/// measurement at a time).
#[test]
fn downloads_a_client_never_reads_do_not_grow_memory_on_either_driver() {
    with_driver("epoll", downloads_a_client_never_reads_do_not_grow_memory);
    with_driver("io-uring", downloads_a_client_never_reads_do_not_grow_memory);
}
