//! Resilience on real sockets: endpoints that refuse, hang or fail are taken
//! out of rotation, and the traffic goes to the ones that answer.

use std::io::Write;
use weft_tests::*;

/// An upstream that accepts, reads the request and never answers.
fn hanging() -> Upstream {
    Upstream::scripted(|mut s, _, received| {
        let mut buf = bytes::BytesMut::new();
        if let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            received.lock().unwrap().push(Received::head(&head));
            let mut b = [0u8; 64];
            while matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0) {}
        }
    })
}

/// An upstream that answers every request with 503.
fn failing() -> Upstream {
    Upstream::scripted(|mut s, _, received| {
        let mut buf = bytes::BytesMut::new();
        while let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            received.lock().unwrap().push(Received::head(&head));
            if s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick")
                .is_err()
            {
                return;
            }
        }
    })
}

/// Three of four endpoints are bad: one refuses connections, one accepts and
/// never answers, one answers 503. After two failures in a row each is
/// ejected, and every request after that is answered by the good one. A
/// refused connection never reaches the client (the request goes to another
/// endpoint); the hanging and the failing endpoint's first answers do, as
/// the cost of learning (retries on timeouts and 5xx are not there yet).
fn bad_endpoints_are_ejected_and_the_rest_answer_everything() {
    let good = Upstream::echo("good");
    let (hang, sick) = (hanging(), failing());
    let config = format!(
        "{}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\ncluster = \"up\"\ntimeout = \"200ms\"\n\n\
         [[cluster]]\nname = \"up\"\nendpoints = [\"{}\", \"{}\", \"{}\", \"{}\"]\n\
         breaker = {{ consecutive_failures = 2, max_ejection_percent = 75 }}\n",
        runtime_section(1),
        good.addr,
        dead_addr(),
        hang.addr,
        sick.addr
    );
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener `in`");
    let mut c = Client::connect(addr);
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(c.get("/x", "").status);
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert!(
        (1..=4).contains(&failed),
        "at most two failures from the hanging and the failing endpoint before they are out: {statuses:?}"
    );
    assert!(
        statuses[30..].iter().all(|s| *s == 200),
        "all answered once the bad ones are out: {statuses:?}"
    );
    assert_eq!(sick.count(), 2, "the 503 endpoint got two requests");
    assert!(
        hang.count() <= 2,
        "the hanging endpoint got {} requests",
        hang.count()
    );
    assert_eq!(weft.failures(), failed as u64);
}

/// One endpoint of three refuses connections: with the defaults (retry on
/// connect failure, ejection), every request succeeds, POSTs included,
/// and weft counts no failure.
fn a_refusing_endpoint_costs_no_request() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let config = simple_config(&[a.addr, dead_addr(), b.addr], "", "");
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener `in`");
    let mut c = Client::connect(addr);
    for i in 0..200 {
        let r = if i % 2 == 0 {
            c.get("/x", "")
        } else {
            c.send(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
            c.response(false).expect("a response")
        };
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(a.count() + b.count(), 200);
    assert_eq!(weft.failures(), 0);
}

/// With retries on timeouts and 5xx (a per-try timeout of 100 ms), a
/// hanging endpoint and a failing one cost the clients nothing at all: each
/// bad answer goes again to another endpoint, and ejection soon keeps the
/// bad ones out of the first attempts too.
fn retries_hide_a_hanging_and_a_failing_endpoint() {
    let good = Upstream::echo("good");
    let (hang, sick) = (hanging(), failing());
    let config = format!(
        "{}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\ncluster = \"up\"\n\
         retry = {{ attempts = 3, on = [\"connect-failure\", \"timeout\", \"5xx\"], per_try_timeout = \"100ms\" }}\n\n\
         [[cluster]]\nname = \"up\"\nendpoints = [\"{}\", \"{}\", \"{}\"]\n\
         breaker = {{ consecutive_failures = 2, max_ejection_percent = 67 }}\n",
        runtime_section(1),
        good.addr,
        hang.addr,
        sick.addr
    );
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener `in`");
    let mut c = Client::connect(addr);
    for i in 0..60 {
        let r = c.get("/x", "");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello from good"),
            "request {i}"
        );
    }
    assert_eq!(good.count(), 60);
    assert!(
        hang.count() <= 2 && sick.count() <= 2,
        "ejected after two failures each"
    );
    assert_eq!(weft.failures(), 0);
}

on_both_drivers!(
    bad_endpoints_are_ejected_and_the_rest_answer_everything,
    a_refusing_endpoint_costs_no_request,
    retries_hide_a_hanging_and_a_failing_endpoint
);
