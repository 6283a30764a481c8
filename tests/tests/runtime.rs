//! The runtime itself: both IO drivers, several workers, graceful shutdown.

use std::time::Duration;
use weft::{IoSetup, Ring};
use weft_tests::*;

fn exercise(addr: std::net::SocketAddr) {
    let mut c = Client::connect(addr);
    for i in 0..20 {
        let body = format!("body {i}");
        c.send(
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(c.response(false).unwrap().text(), body);
    }
    let r = c.get("/", "x-chunked: 5\r\nx-response-bytes: 100000\r\n");
    assert_eq!(r.body, pattern(100_000, 100_000));
}

#[test]
fn epoll_driver() {
    let up = Upstream::echo("a");
    let server =
        start(&simple_config(&[up.addr], "", "").replace("driver = \"io-uring\"", "driver = \"epoll\""));
    assert_eq!(server.io(), IoSetup::Epoll);
    exercise(server.addr("in").unwrap());
    server.shutdown();
}

/// `driver = "io-uring"` runs io_uring with the tuned ring, or (only where
/// `WEFT_TEST_IO=epoll-only` says the host has no io_uring) refuses to start.
#[test]
fn io_uring_driver() {
    let up = Upstream::echo("a");
    let text = simple_config(&[up.addr], "", "").replace("driver = \"epoll\"", "driver = \"io-uring\"");
    if host_io() == HostIo::EpollOnly {
        match weft::Server::start(weft::load::parse(&text).unwrap()) {
            Err(weft::StartError::NoIoUring) => return,
            Err(e) => panic!("unexpected start error: {e}"),
            Ok(s) => panic!("WEFT_TEST_IO=epoll-only, but io_uring started: {}", s.io()),
        }
    }
    let server = start(&text);
    assert!(matches!(server.io(), IoSetup::IoUring { .. }), "{}", server.io());
    exercise(server.addr("in").unwrap());
    server.shutdown();
}

/// `idle_poll` (polling instead of sleeping after a request) serves as
/// well, on both drivers, and shuts down as usual.
#[test]
fn idle_poll_serves_on_both_drivers() {
    for driver in ["epoll", "io-uring"] {
        if driver == "io-uring" && host_io() == HostIo::EpollOnly {
            continue;
        }
        let up = Upstream::echo("a");
        let text = simple_config(&[up.addr], "", "")
            .replace(
                &format!("driver = \"{}\"", weft_tests::driver()),
                &format!("driver = \"{driver}\""),
            )
            .replace(
                "drain_timeout = \"5s\"",
                "drain_timeout = \"5s\"\nidle_poll = \"200us\"",
            );
        assert!(text.contains("idle_poll"), "{text}");
        let server = start(&text);
        // Twice, on two connections: the worker polls after each request
        // and parks between the client's turns.
        exercise(server.addr("in").unwrap());
        exercise(server.addr("in").unwrap());
        server.shutdown();
    }
}

/// Starts weft on io_uring with `ring_setup = setup`, checks the ring it
/// reports on a host with the tuned flags (`start` checks the rest), and
/// serves on two connections, timers and the drain included.
fn serves_on_ring(setup: &str, ring: Ring) {
    if host_io() == HostIo::EpollOnly {
        eprintln!("skipped: WEFT_TEST_IO=epoll-only");
        return;
    }
    let up = Upstream::echo("a");
    let text = simple_config(&[up.addr], "", "")
        .replace("driver = \"epoll\"", "driver = \"io-uring\"")
        .replace("[runtime]\n", &format!("[runtime]\nring_setup = \"{setup}\"\n"));
    let server = start(&text);
    if host_io() == HostIo::Tuned || ring == Ring::Plain {
        assert_eq!(server.io(), IoSetup::IoUring { ring });
    }
    exercise(server.addr("in").unwrap());
    exercise(server.addr("in").unwrap());
    server.shutdown();
}

/// `ring_setup = "plain"` gives a plain ring, and it serves as well.
#[test]
fn io_uring_plain_ring() {
    serves_on_ring("plain", Ring::Plain);
}

/// `ring_setup = "defer"` (DEFER_TASKRUN: completions run only when the
/// worker waits for them) serves as well.
#[test]
fn io_uring_deferred_ring() {
    serves_on_ring("defer", Ring::DeferTaskrun);
}

/// Every one of several workers serves: with SO_REUSEPORT the kernel spreads
/// 64 connections over 4 workers; one left without any has probability
/// at most 4 * (3/4)^64 < 1e-7 if the spread is uniform.
#[test]
fn several_workers_share_the_port() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "", "").replace("workers = 1", "workers = 4"));
    assert_eq!(server.workers().len(), 4);
    let addr = server.addr("in").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..8 {
                    let mut c = Client::connect(addr);
                    assert_eq!(c.get("/", "").status, 200);
                }
                exercise(addr)
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let per_worker: Vec<(u64, u64)> = server
        .workers()
        .iter()
        .map(|w| (w.connections(), w.requests()))
        .collect();
    assert_eq!(
        per_worker.iter().map(|w| w.0).sum::<u64>(),
        72,
        "connections per worker: {per_worker:?}"
    );
    assert!(
        per_worker.iter().all(|&(c, r)| c > 0 && r >= c),
        "a worker served nothing: (connections, requests) per worker {per_worker:?}"
    );
    server.shutdown();
}

/// `workers = 0` starts one worker per core, and each serves.
#[test]
fn zero_workers_means_one_per_core() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "", "").replace("workers = 1", "workers = 0"));
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(server.workers().len(), cores);
    let addr = server.addr("in").unwrap();
    // 64 connections: a worker left without any has probability at most
    // cores * (1 - 1/cores)^64 (2 cores: 1e-19).
    for _ in 0..64 {
        assert_eq!(get(addr, "/").status, 200);
    }
    let served: Vec<u64> = server.workers().iter().map(|w| w.requests()).collect();
    assert!(served.iter().all(|r| *r > 0), "requests per worker: {served:?}");
    server.shutdown();
}

#[test]
fn a_second_weft_on_the_same_port_fails_to_start() {
    let up = Upstream::echo("a");
    let first = start(&simple_config(&[up.addr], "", ""));
    let addr = first.addr("in").unwrap();
    let config =
        weft::load::parse(&simple_config(&[up.addr], "", "").replace("127.0.0.1:0", &addr.to_string()))
            .unwrap();
    match weft::Server::start(config) {
        Err(e @ weft::StartError::Bind { .. }) => assert!(e.to_string().contains("cannot bind")),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("two wefts bound the same port"),
    }
}

#[test]
fn graceful_shutdown_finishes_the_request_in_flight() {
    for driver in ["epoll", "io-uring"] {
        if driver == "io-uring" && host_io() == HostIo::EpollOnly {
            continue;
        }
        let up = Upstream::echo("a");
        let server = start(
            &simple_config(&[up.addr], "", "")
                .replace("driver = \"io-uring\"", &format!("driver = \"{driver}\"")),
        );
        let addr = server.addr("in").unwrap();
        let mut idle = Client::connect(addr);
        assert_eq!(idle.get("/", "").status, 200);
        let slow = std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            c.get("/slow", "x-delay-ms: 400\r\nx-response-bytes: 1000\r\n")
        });
        assert!(
            eventually(Duration::from_secs(5), || up.count() == 2),
            "slow request never arrived"
        );
        let handle = server.shutdown_handle();
        handle.fire();
        // New connections are refused once the listeners closed.
        assert!(
            eventually(Duration::from_secs(5), || std::net::TcpStream::connect(addr)
                .is_err()),
            "still accepting after shutdown"
        );
        let r = slow.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, pattern(1000, 1000));
        assert_eq!(r.header("connection"), Some("close"));
        server.join();
        // The idle keep-alive connection was closed, not left hanging until
        // the client's read timeout.
        let t = std::time::Instant::now();
        assert!(idle.is_closed());
        assert!(
            t.elapsed() < IO_TIMEOUT / 2,
            "idle connection left open after shutdown"
        );
    }
}
