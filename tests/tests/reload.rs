//! Reload end to end: split weights flipped under load through
//! `POST /reload` (no request fails, traffic follows within a second,
//! upstream connections are kept), listeners added and removed, clusters
//! changed, and a bad file or a change a reload cannot apply (nothing
//! changes, the refusal is counted and says why).

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

/// Reloads through the admin listener, which must take the file.
fn reload_ok(admin: SocketAddr) {
    let (status, body) = admin_request(admin, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
}

/// How long before the next reload a request may be sent and still be
/// counted against the one before it (its head may arrive after the next).
const SETTLE: Duration = Duration::from_millis(50);

/// What the load saw: per response, when its request was sent and which
/// upstream answered; and the failures.
#[derive(Default)]
struct Seen {
    answers: Vec<(Instant, String)>,
    failures: Vec<String>,
}

/// Flips the split between two upstreams eight times under a steady load
/// of keep-alive clients: every request succeeds, requests sent after a
/// reload's answer (every worker runs it by then) go where the new weights
/// say, and the upstreams see no new connections for the reloads.
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
        // requests sent 50 ms after this reload's answer (and so, at this
        // rate, about as many sent in those 50 ms: the window checked
        // below).
        let settled = at + SETTLE;
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
    // Requests sent after a reload's answer went where it said: every
    // worker runs it by then. Up to `SETTLE` before the next reload was
    // asked for: a request sent just before it may arrive after it.
    for (k, (_, at, expected)) in flips.iter().enumerate() {
        let until = flips.get(k + 1).map(|f| f.0);
        let window: Vec<_> = seen
            .answers
            .iter()
            .filter(|(t, _)| *t > *at && until.is_none_or(|u| *t + SETTLE < u))
            .collect();
        assert!(
            !window.is_empty(),
            "no request sent in the window after reload {k}"
        );
        let wrong = window.iter().filter(|(_, u)| u != expected).count();
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

/// A file that does not parse, one that changes `[runtime]`, and one with
/// a new listener on an address in use change nothing: the answer says
/// why, `/metrics` counts them, traffic goes on.
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
    let changed = text(s.a.addr, s.b.addr, (0, 1), "").replace("workers = 2", "workers = 3");
    std::fs::write(&s.path, changed).expect("file written");
    let (status, why) = admin_request(admin_addr, "POST", "/reload");
    assert_eq!(status, 409, "{why}");
    assert!(
        why.contains("[runtime] changed") && why.contains("restart"),
        "{why}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let busy = taken.local_addr().expect("address");
    let clash = two_listeners(s.a.addr, s.b.addr, &format!("{busy}"), "b");
    std::fs::write(&s.path, clash).expect("file written");
    let (status, why) = admin_request(admin_addr, "POST", "/reload");
    assert_eq!(status, 409, "{why}");
    assert!(
        why.contains(&format!("listener `extra` cannot bind {busy}")),
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
        metrics.contains("\nconfig_reload_failures_total 3\n"),
        "{metrics}"
    );
    s.server.shutdown();
}

/// [`text`] (all to `a`) with a second listener, `extra`, on `listen`, whose
/// one route goes to cluster `to`.
fn two_listeners(a: SocketAddr, b: SocketAddr, listen: &str, to: &str) -> String {
    text(a, b, (1, 0), "").replace("name = \"split\"", "name = \"split\"\nlistener = \"in\"")
        + &format!(
            "
[[listener]]
name = \"extra\"
listen = \"{listen}\"

[[route]]
listener = \"extra\"
cluster = \"{to}\"
"
        )
}

/// A reload adds a listener (it serves at once), then removes it: a request
/// in flight on it finishes, its idle connection is closed, its port stops
/// taking connections; the other listener's connections are untouched.
fn listeners_come_and_go() {
    let s = Setup::start();
    let admin_addr = s.admin;
    let mut kept = Client::connect(s.addr);
    assert_eq!(kept.get("/", "").status, 200);
    // A free port (two listeners cannot both ask for port 0).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    std::fs::write(&s.path, two_listeners(s.a.addr, s.b.addr, &free.to_string(), "b")).expect("file written");
    reload_ok(admin_addr);
    let extra = s.server.addr("extra").expect("the new listener's address");
    let r = get(extra, "/");
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("b")));
    // The first listener's connection goes on across the reload.
    assert_eq!(kept.get("/", "").header("x-upstream"), Some("a"));
    let mut idle = Client::connect(extra);
    assert_eq!(idle.get("/", "").status, 200);
    // A request in flight on `extra` (the upstream waits 300 ms) while a
    // reload removes it.
    let before = s.b.count();
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(extra);
        let r = c.get("/", "x-delay-ms: 300\r\n");
        (
            r.status,
            r.header("x-upstream").map(str::to_string),
            c.is_closed(),
        )
    });
    assert!(
        eventually(Duration::from_secs(5), || s.b.count() == before + 1),
        "the slow request did not arrive"
    );
    std::fs::write(&s.path, text(s.a.addr, s.b.addr, (1, 0), "")).expect("file written");
    reload_ok(admin_addr);
    let (status, upstream, closed) = slow.join().expect("the slow request");
    assert_eq!(
        (status, upstream.as_deref()),
        (200, Some("b")),
        "the request in flight finished"
    );
    assert!(closed, "its connection closed after it");
    assert!(
        idle.is_closed(),
        "the idle connection of the removed listener was closed"
    );
    assert!(
        eventually(Duration::from_secs(2), || std::net::TcpStream::connect(extra)
            .is_err()),
        "the removed listener still takes connections"
    );
    assert_eq!(s.server.addr("extra"), None);
    assert_eq!(kept.get("/", "").header("x-upstream"), Some("a"));
    assert_eq!(s.a.accepted(), 1, "the kept listener's upstream pool was kept");
    // And back at the same address.
    std::fs::write(&s.path, two_listeners(s.a.addr, s.b.addr, &free.to_string(), "b")).expect("file written");
    reload_ok(admin_addr);
    assert_eq!(s.server.addr("extra"), Some(extra));
    assert_eq!(get(extra, "/").header("x-upstream"), Some("b"));
    s.server.shutdown();
}

/// A cluster a reload removed lets go of its pooled upstream connections
/// once its requests are done, though client connections that used it
/// stay open (idle, over plain HTTP/1.1 and over HTTP/2): they hold no
/// configuration while they wait.
fn a_removed_cluster_closes_its_pool() {
    let s = Setup::start();
    let admin_addr = s.admin;
    // Everything to `b`, over a client connection that then idles, and
    // over an HTTP/2 one.
    std::fs::write(&s.path, text(s.a.addr, s.b.addr, (0, 1), "")).expect("file written");
    reload_ok(admin_addr);
    let mut idle = Client::connect(s.addr);
    assert_eq!(idle.get("/", "").header("x-upstream"), Some("b"));
    let mut h2 = weft_tests::h2c::H2::connect(s.addr);
    let h2_get = |h2: &mut weft_tests::h2c::H2| {
        let req = weft_tests::h2c::H2::head(s.addr, "GET", "/", &[]);
        h2.request(req, b"").expect("an HTTP/2 response")
    };
    let r = h2_get(&mut h2);
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("b")));
    assert!(s.b.accepted() >= 1);
    // Cluster `b` gone.
    let without_b = text(s.a.addr, s.b.addr, (1, 0), "").replace(
        "split = [ { cluster = \"a\", weight = 1 }, { cluster = \"b\", weight = 0 } ]",
        "cluster = \"a\"",
    );
    let without_b = without_b[..without_b.find("[[cluster]]\nname = \"b\"").expect("cluster b")].to_string();
    std::fs::write(&s.path, without_b).expect("file written");
    reload_ok(admin_addr);
    assert!(
        eventually(Duration::from_secs(5), || s.b.closed() == s.b.accepted()),
        "upstream `b` still has {} of {} connections open",
        s.b.accepted() - s.b.closed(),
        s.b.accepted()
    );
    // The client connections are still there, and go to `a` now.
    assert_eq!(idle.get("/", "").header("x-upstream"), Some("a"));
    assert_eq!(h2_get(&mut h2).header("x-upstream"), Some("a"));
    s.server.shutdown();
}

/// A reload that changes one cluster's endpoints and adds another: traffic
/// follows at once; the unchanged cluster keeps its pooled connections;
/// `/metrics` and `/clusters` show the endpoints now configured.
fn clusters_change_and_unchanged_ones_keep_their_pools() {
    let s = Setup::start();
    let admin_addr = s.admin;
    let c = Upstream::echo("c");
    let d = Upstream::echo("d");
    let mut client = Client::connect(s.addr);
    for _ in 0..3 {
        assert_eq!(client.get("/", "").header("x-upstream"), Some("a"));
    }
    // Cluster `b` now at `c`; a new cluster `d` behind a new route.
    let route_d =
        "[[route]]\nname = \"d\"\nmatch = { path = \"/d\" }\ncluster = \"d\"\n\n[[route]]\nname = \"split\"";
    let moved = |weights| {
        text(s.a.addr, c.addr, weights, "").replace("[[route]]\nname = \"split\"", route_d)
            + &format!("\n[[cluster]]\nname = \"d\"\nendpoints = [\"{}\"]\n", d.addr)
    };
    std::fs::write(&s.path, moved((1, 0))).expect("file written");
    reload_ok(admin_addr);
    for _ in 0..3 {
        assert_eq!(client.get("/", "").header("x-upstream"), Some("a"));
    }
    assert_eq!(client.get("/d", "").header("x-upstream"), Some("d"));
    assert_eq!(
        s.a.accepted(),
        1,
        "cluster `a` did not change: its pooled connection stays"
    );
    std::fs::write(&s.path, moved((0, 1))).expect("file written");
    reload_ok(admin_addr);
    assert_eq!(client.get("/", "").header("x-upstream"), Some("c"));
    assert_eq!(s.b.count(), 0, "nothing went to the endpoint `b` no longer has");
    let (_, metrics) = admin_request(admin_addr, "GET", "/metrics");
    let series = |cluster: &str, addr: SocketAddr| {
        format!("endpoint_request_total{{cluster=\"{cluster}\",endpoint=\"{addr}\"}} 1\n")
    };
    assert!(metrics.contains(&series("b", c.addr)), "{metrics}");
    assert!(metrics.contains(&series("d", d.addr)), "{metrics}");
    assert!(!metrics.contains(&s.b.addr.to_string()), "{metrics}");
    let (_, clusters) = admin_request(admin_addr, "GET", "/clusters");
    assert!(
        clusters.contains(&format!("d::{}::requests::1", d.addr)),
        "{clusters}"
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
    reload_ok(admin_addr);
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
    metrics_follow_their_route_across_a_reload,
    listeners_come_and_go,
    clusters_change_and_unchanged_ones_keep_their_pools,
    a_removed_cluster_closes_its_pool
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
