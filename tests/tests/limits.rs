//! Connection limits: `max_connections` per listener.

use std::time::Duration;
use weft_tests::*;

/// At `max_connections`, weft stops accepting: a further client waits in
/// the kernel's queue, unanswered, until a connection ends.
fn max_connections_holds_the_rest_in_the_queue() {
    let up = Upstream::echo("a");
    let server = start(&simple_config(&[up.addr], "max_connections = 2", ""));
    let addr = server.addr("in").unwrap();
    let mut first = Client::connect(addr);
    let mut second = Client::connect(addr);
    assert_eq!(first.get("/", "").status, 200);
    assert_eq!(second.get("/", "").status, 200);
    // The third connects (the kernel completes the handshake) but is not
    // accepted: its request gets no answer while the first two are open.
    let mut third = Client::connect(addr);
    third.send(b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n");
    third
        .stream()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    loop {
        match std::io::Read::read(third.stream(), &mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if timed_out(&e) => break,
            other => panic!("a third connection was served past max_connections = 2: {other:?}"),
        }
    }
    third.stream().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // One ends: the third is accepted and answered.
    drop(first);
    let r = third
        .response(false)
        .expect("the queued connection is served once one ends");
    assert_eq!(r.status, 200);
    assert_eq!(second.get("/", "").status, 200);
}

on_both_drivers!(max_connections_holds_the_rest_in_the_queue);
