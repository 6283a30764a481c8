//! Reload end to end: split weights flipped under load through
//! `POST /reload` (no request fails, traffic follows within a second,
//! upstream connections are kept), a bad file and a change a reload cannot
//! apply (nothing changes, the refusal is counted and says why).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_tests::*;

/// The configuration: a split between upstreams `a` and `b` with these
/// weights; `extra` goes into the listener.
fn text(a: SocketAddr, b: SocketAddr, weights: (u32, u32), extra: &str) -> String {
    format!(
        "{runtime}
[admin]
listen = \"127.0.0.1:0\"

[[listener]]
name = \"in\"
listen = \"127.0.0.1:0\"
{extra}

[[route]]
name = \"split\"
split = [ {{ cluster = \"a\", weight = {wa} }}, {{ cluster = \"b\", weight = {wb} }} ]

[[cluster]]
name = \"a\"
endpoints = [\"{a}\"]

[[cluster]]
name = \"b\"
endpoints = [\"{b}\"]
",
        runtime = runtime_section(2),
        wa = weights.0,
        wb = weights.1,
    )
}

/// weft started from a file that splits between upstreams `a` and `b`
/// (all to `a`), so that it reloads from that file.
struct Setup {
    a: Upstream,
    b: Upstream,
    path: PathBuf,
    server: weft::Server,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    fn start() -> Setup {
        let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
        let path = scratch_dir("reload").join("weft.toml");
        std::fs::write(&path, text(a.addr, b.addr, (1, 0), "")).expect("file written");
        let config = weft::load::from_file(&path).expect("a valid file");
        let server = weft::Server::start(config).expect("weft starts");
        server.reload_handle().set_source(path.clone());
        let addr = server.addr("in").expect("listener");
        let admin = server.admin_addr().expect("admin");
        Setup {
            a,
            b,
            path,
            server,
            addr,
            admin,
        }
    }
}

/// What the load saw: per response, when its request was sent and which
/// upstream answered; and the failures.
#[derive(Default)]
struct Seen {
    answers: Vec<(Instant, String)>,
    failures: Vec<String>,
}

/// Flips the split between two upstreams eight times under a steady load
/// of keep-alive clients: every request succeeds, requests sent 100 ms
/// after a reload all go where the new weights say (and one does within a
/// second), and the upstreams see no new connections for the reloads.
fn weights_flip_under_load_without_a_failure() {
    let s = Setup::start();
    let (addr, admin_addr) = (s.addr, s.admin);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    const CLIENTS: usize = 6;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    c.send(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n");
                    let answer = c.response(false);
                    let mut log = seen.lock().expect("lock");
                    match answer {
                        Some(r) if r.status == 200 => {
                            let up = r.header("x-upstream").unwrap_or("?").to_string();
                            log.answers.push((sent, up));
                        }
                        other => {
                            log.failures.push(format!("{other:?}"));
                            return;
                        }
                    }
                    drop(log);
                    // Pacing, not a wait: about 2,000 requests a second
                    // over the clients.
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        })
        .collect();
    let wait_for = |after: Instant, upstream: &str| {
        eventually(Duration::from_secs(1), || {
            seen.lock()
                .expect("lock")
                .answers
                .iter()
                .any(|(t, u)| *t > after && u == upstream)
        })
    };
    assert!(wait_for(Instant::now(), "a"), "no traffic to `a` at start");
    let mut flips = Vec::new();
    for i in 0..8u64 {
        let weights = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let expected = if weights.0 == 1 { "a" } else { "b" };
        std::fs::write(&s.path, text(s.a.addr, s.b.addr, weights, "")).expect("file written");
        let asked = Instant::now();
        let (status, body) = admin_request(admin_addr, "POST", "/reload");
        // Applied by the time the answer came (the workers take it at once).
        let at = Instant::now();
        assert_eq!((status, body), (200, format!("reloaded: generation {}\n", i + 2)));
        assert!(
            wait_for(at, expected),
            "reload {i}: no request reached `{expected}` within a second"
        );
        flips.push((asked, at, expected));
        // Traffic on the new routes before the next flip: 50 answers to
        // requests sent 100 ms after this reload.
        let settled = at + Duration::from_millis(100);
        let flowed = eventually(Duration::from_secs(5), || {
            seen.lock()
                .expect("lock")
                .answers
                .iter()
                .filter(|(t, _)| *t > settled)
                .count()
                >= 50
        });
        assert!(flowed, "reload {i}: the load stopped");
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("a client thread");
    }
    let seen = seen.lock().expect("lock");
    assert!(seen.failures.is_empty(), "failed requests: {:?}", seen.failures);
    // Requests sent well after a reload (100 ms: the workers take new
    // routes between requests) and before the next one went where it said.
    // (Until the next reload was asked for.)
    for (k, (_, at, expected)) in flips.iter().enumerate() {
        let until = flips.get(k + 1).map(|f| f.0);
        let wrong = seen
            .answers
            .iter()
            .filter(|(t, _)| *t > *at + Duration::from_millis(100) && until.is_none_or(|u| *t < u))
            .filter(|(_, u)| u != expected)
            .count();
        assert_eq!(
            wrong, 0,
            "after reload {k}, {wrong} requests did not go to `{expected}`"
        );
    }
    assert!(
        seen.answers.len() > 1_000,
        "too little load: {}",
        seen.answers.len()
    );
    // Pools survived: each upstream saw at most one connection per client
    // (and a little slack), where rebuilt pools would open new ones at
    // each of its four turns.
    for up in [&s.a, &s.b] {
        assert!(
            up.accepted() <= 6,
            "{} upstream connections for 4 clients",
            up.accepted()
        );
    }
    let (_, config) = admin_request(admin_addr, "GET", "/config");
    assert!(config.starts_with("generation: 9\n"), "{config}");
    s.server.shutdown();
}

/// A file that does not parse, and one that changes a listener, change
/// nothing: the answer says why, `/metrics` counts them, traffic goes on.
fn refused_reloads_change_nothing() {
    let s = Setup::start();
    let (addr, admin_addr) = (s.addr, s.admin);
    std::fs::write(&s.path, "[[listener]]\nname = \"in\"\nlisten = 7\n").expect("file written");
    let (status, why) = admin_request(admin_addr, "POST", "/reload");
    assert_eq!(status, 409, "{why}");
    assert!(
        why.contains("still running generation 1") && why.contains("line 3"),
        "{why}"
    );
    let changed = text(s.a.addr, s.b.addr, (0, 1), "idle_timeout = \"5s\"");
    std::fs::write(&s.path, changed).expect("file written");
    let (status, why) = admin_request(admin_addr, "POST", "/reload");
    assert_eq!(status, 409, "{why}");
    assert!(
        why.contains("listener `in` changed") && why.contains("restart"),
        "{why}"
    );
    assert_eq!(
        get(addr, "/").header("x-upstream"),
        Some("a"),
        "the old routes run"
    );
    let (_, metrics) = admin_request(admin_addr, "GET", "/metrics");
    assert!(metrics.contains("\nconfig_generation 1\n"), "{metrics}");
    assert!(
        metrics.contains("\nconfig_reload_failures_total 2\n"),
        "{metrics}"
    );
    s.server.shutdown();
}

/// Counters follow their route by name across a reload that puts a new
/// route before it, also for a request in flight during the reload.
fn metrics_follow_their_route_across_a_reload() {
    let s = Setup::start();
    let (addr, admin_addr) = (s.addr, s.admin);
    for _ in 0..3 {
        assert_eq!(get(addr, "/").status, 200);
    }
    // A request in flight across the reload (the upstream waits 300 ms).
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.get("/", "x-delay-ms: 300\r\n").status
    });
    assert!(
        eventually(Duration::from_secs(5), || s.a.count() == 4),
        "the slow request did not arrive"
    );
    let first = "[[route]]\nname = \"first\"\nmatch = { path = \"/first\" }\ncluster = \"b\"\n\n[[route]]\nname = \"split\"";
    std::fs::write(
        &s.path,
        text(s.a.addr, s.b.addr, (1, 0), "").replace("[[route]]\nname = \"split\"", first),
    )
    .expect("file written");
    assert_eq!(admin_request(admin_addr, "POST", "/reload").0, 200);
    assert_eq!(slow.join().expect("the slow request"), 200);
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(get(addr, "/first").header("x-upstream"), Some("b"));
    let count = |route: &str| -> Option<String> {
        let (_, metrics) = admin_request(admin_addr, "GET", "/metrics");
        let series = format!("request_total{{listener=\"in\",route=\"{route}\",cluster=\"a\"}}");
        metrics
            .lines()
            .find(|l| l.starts_with(&series))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    };
    // 3 before, the slow one, 1 after: all on `split`, none on `first`'s `a`.
    let counted = eventually(Duration::from_secs(5), || count("split").as_deref() == Some("5"));
    assert!(counted, "request_total on route split: {:?}", count("split"));
    assert_eq!(count("first"), None);
    s.server.shutdown();
}

on_both_drivers!(
    weights_flip_under_load_without_a_failure,
    refused_reloads_change_nothing,
    metrics_follow_their_route_across_a_reload
);

/// weft started from configuration text has no file to reload.
#[test]
fn no_file_no_reload() {
    let up = Upstream::echo("up");
    let (weft, _) = proxy(&[up.addr]);
    let e = weft.reload_handle().from_source().expect_err("nothing to reload");
    assert!(e.contains("not started from a file"), "{e}");
    assert_eq!(weft.reload_handle().failures(), 1);
}
