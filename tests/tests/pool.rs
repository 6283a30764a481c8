//! The upstream keep-alive pool: `max_idle` and `idle_timeout`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_tests::*;

/// An upstream that holds every answer until `n` requests have arrived
/// (bounded), so that `n` concurrent requests need `n` connections.
fn gathering(n: usize) -> Upstream {
    let arrived = Arc::new(AtomicUsize::new(0));
    Upstream::scripted(move |mut s, _, received| {
        use std::io::Write;
        let mut buf = bytes::BytesMut::new();
        while let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            received.lock().unwrap().push(Received::head(&head));
            arrived.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + IO_TIMEOUT;
            while arrived.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    })
}

/// With `max_idle = 1`, of three connections freed at once two are closed;
/// the one kept serves what follows.
fn max_idle_closes_the_surplus() {
    let up = gathering(3);
    let server = start(&simple_config(&[up.addr], "", "pool = { max_idle = 1 }"));
    let addr = server.addr("in").unwrap();
    let clients: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || get(addr, "/").status))
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    assert_eq!(up.accepted(), 3);
    assert!(
        eventually(Duration::from_secs(5), || up.closed() == 2),
        "{} of 3 upstream connections closed; max_idle = 1 keeps one",
        up.closed()
    );
    let mut c = Client::connect(addr);
    for _ in 0..3 {
        assert_eq!(c.get("/", "").status, 200);
    }
    assert_eq!(
        (up.accepted(), up.closed()),
        (3, 2),
        "the kept connection was not reused"
    );
}

/// A pooled connection is reused within the pool's `idle_timeout`, and
/// closed once it has been idle that long, with or without new traffic.
fn idle_timeout_closes_idle_connections() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "", "pool = { idle_timeout = \"1s\" }"));
    let addr = server.addr("in").unwrap();
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/", "").status, 200);
    assert_eq!(c.get("/", "").status, 200);
    let freed = Instant::now();
    assert_eq!(up.accepted(), 1, "not reused within the idle timeout");
    assert!(
        eventually(Duration::from_secs(5), || up.closed() == 1),
        "the idle upstream connection was not closed"
    );
    let idle = freed.elapsed();
    assert!(
        idle >= Duration::from_millis(900),
        "closed after only {idle:?} of a 1 s idle timeout"
    );
    assert_eq!(c.get("/", "").status, 200);
    assert_eq!(up.accepted(), 2);
}

on_both_drivers!(max_idle_closes_the_surplus, idle_timeout_closes_idle_connections);
