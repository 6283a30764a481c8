//! The runtime itself: both IO drivers, several workers, graceful shutdown.

use std::time::Duration;
use weft::DriverInUse;
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
    let server = start(&simple_config(&[up.addr], "", "").replace("driver = \"auto\"", "driver = \"epoll\""));
    assert_eq!(server.driver(), DriverInUse::Epoll);
    exercise(server.addr("in").unwrap());
    server.shutdown();
}

#[test]
fn io_uring_driver() {
    let up = Upstream::echo("a");
    let config = weft::load::parse(
        &simple_config(&[up.addr], "", "").replace("driver = \"auto\"", "driver = \"io-uring\""),
    )
    .unwrap();
    match weft::Server::start(config) {
        Ok(server) => {
            assert_eq!(server.driver(), DriverInUse::IoUring);
            exercise(server.addr("in").unwrap());
            server.shutdown();
        }
        // Kernels or sandboxes without io_uring must refuse with this error;
        // the epoll test above still covers the proxy there.
        Err(weft::StartError::NoIoUring) => {
            eprintln!("io_uring unavailable here: io-uring driver refused as expected")
        }
        Err(e) => panic!("unexpected start error: {e}"),
    }
}

#[test]
fn several_workers_share_the_port() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "", "").replace("workers = 1", "workers = 4"));
    let addr = server.addr("in").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || exercise(addr)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
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
    for driver in ["epoll", "auto"] {
        let up = Upstream::echo("a");
        let server = start(
            &simple_config(&[up.addr], "", "")
                .replace("driver = \"auto\"", &format!("driver = \"{driver}\"")),
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
