//! Resilience on real sockets: endpoints that refuse, hang or fail are taken
//! out of rotation, and the traffic goes to the ones that answer.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
/// never answers, one answers 503. A failure makes an endpoint weigh as
/// loaded, and two in a row eject it, so every request after the first few
/// is answered by the good one. A refused connection never reaches the
/// client (the request goes to another endpoint); without retries on
/// timeouts and 5xx (not configured here), the hanging and the failing
/// endpoint's first answers do, as the cost of learning.
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
    // After its first 503 the failing endpoint weighs as loaded for a
    // second, so it may not be tried again before the end.
    assert!(
        (1..=2).contains(&sick.count()),
        "the 503 endpoint got {} requests",
        sick.count()
    );
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

/// An upstream named `name` whose `/health` answers 200 while `healthy`
/// holds and 503 otherwise; every other request gets 200 `hello from NAME`.
fn health_switched(name: &str, healthy: Arc<AtomicBool>) -> Upstream {
    let name = name.to_string();
    Upstream::scripted(move |mut s, _, received| {
        let mut buf = bytes::BytesMut::new();
        while let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            received.lock().unwrap().push(Received::head(&head));
            let (status, body) = if head.path() == "/health" {
                let up = healthy.load(Ordering::SeqCst);
                (if up { 200 } else { 503 }, String::new())
            } else {
                (200, format!("hello from {name}"))
            };
            let out = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(out.as_bytes()).is_err() || !head.keep_alive {
                return;
            }
        }
    })
}

fn is_probe(r: &Received) -> bool {
    r.head.starts_with("GET /health ")
}

/// The names of the upstreams that answer `n` GETs.
fn answered_by(c: &mut Client, n: usize) -> Vec<String> {
    (0..n).map(|_| c.get("/x", "").text()).collect()
}

/// An endpoint whose health check fails is taken out of rotation (its
/// requests would still succeed: only the check says so), and comes back
/// once it passes again. The probes come from one prober, not one per
/// worker: with two workers, each endpoint gets one probe per interval.
fn a_failing_health_check_takes_an_endpoint_out_and_a_passing_one_brings_it_back() {
    let b_up = Arc::new(AtomicBool::new(false));
    let a = health_switched("a", Arc::new(AtomicBool::new(true)));
    let b = health_switched("b", b_up.clone());
    let mut config = simple_config(
        &[a.addr, b.addr],
        "",
        "health_check = { interval = \"100ms\", timeout = \"100ms\", healthy = 2, unhealthy = 2 }\n",
    );
    config = config.replace("workers = 1", "workers = 2");
    let started = std::time::Instant::now();
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener `in`");
    // The first probe decides: b is out as soon as it has answered one.
    assert!(
        eventually(Duration::from_secs(5), || b.count_where(is_probe) > 0),
        "b was never probed"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            answered_by(&mut Client::connect(addr), 10)
                .iter()
                .all(|t| t == "hello from a")
        }),
        "b still takes requests"
    );
    let mut c = Client::connect(addr);
    let texts = answered_by(&mut c, 40);
    assert!(texts.iter().all(|t| t == "hello from a"), "{texts:?}");
    // b passes again: after two passes in a row it is back.
    b_up.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || answered_by(
            &mut Client::connect(addr),
            10
        )
        .iter()
        .any(|t| t == "hello from b")),
        "b never came back"
    );
    // One prober for the process: at most one probe per interval and
    // endpoint (one per worker would make about twice as many).
    let elapsed = started.elapsed();
    let most = (elapsed.as_millis() / 100) as usize + 2;
    let probes = a.count_where(is_probe);
    assert!(
        probes <= most,
        "{probes} probes of a in {elapsed:?} with an interval of 100 ms"
    );
    let probe = (0..a.count())
        .map(|i| a.request(i))
        .find(is_probe)
        .expect("a probe");
    assert!(
        probe
            .head
            .to_ascii_lowercase()
            .contains("user-agent: weft-health-check"),
        "{}",
        probe.head
    );
    assert_eq!(weft.failures(), 0);
}

/// When every endpoint fails its health check, requests still go to one
/// of them by default (fail open: the check may be wrong); with
/// `no_healthy = "fail-fast"` they get 503 `no-endpoint` at once.
fn when_no_endpoint_is_healthy_requests_fail_open_or_fast() {
    let a = health_switched("a", Arc::new(AtomicBool::new(false)));
    let check = "health_check = { interval = \"50ms\", timeout = \"50ms\" }\n";
    let weft = start(&simple_config(&[a.addr], "", check));
    let addr = weft.addr("in").expect("listener `in`");
    // The prober records a result before it sends the next probe: once a
    // second one arrived, weft holds the endpoint for unhealthy.
    assert!(eventually(Duration::from_secs(5), || a.count_where(is_probe) >= 2));
    for _ in 0..5 {
        assert_eq!(get(addr, "/x").text(), "hello from a", "fail open");
    }
    drop(weft);
    let fast = format!("{check}no_healthy = \"fail-fast\"\n");
    let weft = start(&simple_config(&[a.addr], "", &fast));
    let addr = weft.addr("in").expect("listener `in`");
    assert!(
        eventually(Duration::from_secs(5), || get(addr, "/x").status == 503),
        "never failed fast"
    );
    let r = get(addr, "/x");
    assert_eq!((r.status, r.header("weft-error")), (503, Some("no-endpoint")));
}

/// An upstream named `name` that answers `hello from NAME` while `hang` is
/// false, and reads requests without ever answering while it is true.
fn hang_switched(name: &str, hang: Arc<AtomicBool>) -> Upstream {
    let name = name.to_string();
    Upstream::scripted(move |mut s, _, received| {
        let mut buf = bytes::BytesMut::new();
        while let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            received.lock().unwrap().push(Received::head(&head));
            if hang.load(Ordering::SeqCst) {
                let mut b = [0u8; 64];
                while matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0) {}
                return;
            }
            let body = format!("hello from {name}");
            let out = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// An endpoint that accepts and never answers costs no request (the
/// per-try timeout sends each one on), is ejected, and takes traffic again
/// once it answers: after its ejection, the request on probation decides.
fn a_hanging_endpoint_is_ejected_and_back_once_it_answers() {
    let hang = Arc::new(AtomicBool::new(true));
    let good = Upstream::echo("good");
    let flaky = hang_switched("flaky", hang.clone());
    let config = simple_config(
        &[good.addr, flaky.addr],
        "",
        "breaker = { consecutive_failures = 2, base_ejection = \"200ms\", max_ejection = \"200ms\", max_ejection_percent = 50 }\n",
    )
    .replace(
        "[[route]]\ncluster = \"up\"\n",
        "[[route]]\ncluster = \"up\"\nretry = { attempts = 2, on = [\"timeout\"], per_try_timeout = \"100ms\" }\n",
    );
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener `in`");
    let mut c = Client::connect(addr);
    for i in 0..30 {
        let r = c.get("/x", "");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello from good"),
            "request {i}"
        );
    }
    let hung = flaky.count();
    // One hang, and the endpoint weighs as loaded for a second; once it is
    // tried again (and hangs again) it is ejected.
    assert!((1..=6).contains(&hung), "flaky got {hung} requests while it hung");
    hang.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || c.get("/x", "").text()
            == "hello from flaky"),
        "the endpoint never came back"
    );
    assert_eq!(weft.failures(), 0);
}

/// An endpoint that goes away and comes back every 150 ms (connections
/// refused, and those it had accepted closed): with the defaults (retry on
/// connect failure, stale connections retried for GETs, ejection), every
/// GET is answered.
fn a_flapping_endpoint_costs_no_get() {
    let stable = Upstream::echo("stable");
    let addr = dead_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let stop = stop.clone();
        // The sleeps here are the fault's schedule (150 ms up, 150 ms
        // down) and the pace of a non-blocking accept loop, not waits for
        // readiness.
        std::thread::spawn(move || {
            let mut flaps = 0;
            while !stop.load(Ordering::SeqCst) {
                let Ok(l) = std::net::TcpListener::bind(addr) else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                l.set_nonblocking(true).expect("nonblocking");
                let up = Arc::new(AtomicBool::new(true));
                let until = std::time::Instant::now() + Duration::from_millis(150);
                let mut served = Vec::new();
                while std::time::Instant::now() < until {
                    match l.accept() {
                        Ok((s, _)) => {
                            let up = up.clone();
                            served.push(std::thread::spawn(move || serve_while(s, &up)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                // Down: refuse new connections, close the accepted ones.
                drop(l);
                up.store(false, Ordering::SeqCst);
                for t in served {
                    let _ = t.join();
                }
                flaps += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            flaps
        })
    };
    let weft = start(&simple_config(&[stable.addr, addr], "", ""));
    let proxy = weft.addr("in").expect("listener `in`");
    let mut c = Client::connect(proxy);
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let r = c.get("/x", "");
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
        n += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let flaps = flapper.join().expect("flapper");
    assert!(flaps >= 3, "the endpoint flapped {flaps} times");
    assert!(n > 100, "{n} requests");
    assert_eq!(weft.failures(), 0);
}

/// Serves `hello` on `s` while `up` holds; closes it once `up` is false.
fn serve_while(mut s: std::net::TcpStream, up: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while up.load(Ordering::SeqCst) {
        match std::io::Read::read(&mut s, &mut b) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .is_err()
            {
                return;
            }
        }
    }
}

on_both_drivers!(
    a_hanging_endpoint_is_ejected_and_back_once_it_answers,
    a_flapping_endpoint_costs_no_get,
    a_failing_health_check_takes_an_endpoint_out_and_a_passing_one_brings_it_back,
    when_no_endpoint_is_healthy_requests_fail_open_or_fast,
    bad_endpoints_are_ejected_and_the_rest_answer_everything,
    a_refusing_endpoint_costs_no_request,
    retries_hide_a_hanging_and_a_failing_endpoint
);
