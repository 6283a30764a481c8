//! Weighted splits and least-loaded balancing, measured on real traffic.

use std::collections::HashMap;
use weft_tests::*;

#[test]
fn weighted_split_follows_the_weights() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let config = format!(
        "{}[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n[[route]]\nsplit = [ {{ cluster = \"a\", weight = 1 }}, {{ cluster = \"b\", weight = 3 }} ]\n[[cluster]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[cluster]]\nname = \"b\"\nendpoints = [\"{}\"]\n",
        runtime_section(1),
        a.addr,
        b.addr
    );
    let server = start(&config);
    let mut c = Client::connect(server.addr("in").unwrap());
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..2000 {
        *seen.entry(c.get("/", "").text()).or_default() += 1;
    }
    let (na, nb) = (seen["hello from a"], seen["hello from b"]);
    // a is Binomial(2000, 1/4): mean 500, sd 19.4. The bounds are 6.2 sd
    // wide (a correct split fails 1 run in 10^9); an even split (mean 1000)
    // or the reversed 3:1 (mean 1500) never lands inside (< 1e-90).
    assert!((380..620).contains(&na), "a={na} b={nb}");
    assert_eq!(na + nb, 2000);
}

#[test]
fn round_robin_alternates() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let server = start(&simple_config(
        &[a.addr, b.addr],
        "",
        "balancer = \"round-robin\"",
    ));
    let mut c = Client::connect(server.addr("in").unwrap());
    let names: Vec<String> = (0..64).map(|_| c.get("/", "").text()).collect();
    // Strict alternation over 64 picks: a random picker passes with
    // probability 2^-63.
    for pair in names.windows(2) {
        assert_ne!(pair[0], pair[1], "{names:?}");
    }
    assert!(names.iter().all(|n| n == "hello from a" || n == "hello from b"));
}

#[test]
fn least_loaded_prefers_the_fast_endpoint() {
    // Endpoint `slow` holds every request for 200 ms; `fast` answers at once.
    let (fast, slow) = (Upstream::echo("fast"), Upstream::echo("slow"));
    let slow_addr = slow.addr;
    let delayed = Upstream::scripted(move |mut s, _, _| {
        // A front for `slow` that adds the delay header to every request.
        let mut buf = bytes::BytesMut::new();
        let mut up = std::net::TcpStream::connect(slow_addr).unwrap();
        while let Some((head, _, _)) = read_request(&mut s, &mut buf) {
            let raw = String::from_utf8_lossy(&head.raw).replacen("\r\n", "\r\nx-delay-ms: 200\r\n", 1);
            std::io::Write::write_all(&mut up, raw.as_bytes()).unwrap();
            let mut c = Client::from_stream(up.try_clone().unwrap());
            let r = c.response(false).unwrap();
            let out = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
                r.body.len(),
                r.text()
            );
            std::io::Write::write_all(&mut s, out.as_bytes()).unwrap();
        }
    });
    let server = start(&simple_config(&[fast.addr, delayed.addr], "", ""));
    let addr = server.addr("in").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                (0..20).map(|_| c.get("/", "").text()).collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let n_fast = answers.iter().filter(|a| *a == "hello from fast").count();
    let n_slow = answers.iter().filter(|a| *a == "hello from slow").count();
    assert_eq!(n_fast + n_slow, 160);
    // With 8 concurrent clients, the slow endpoint's in-flight count stays
    // high, so the two-choice comparison sends it far fewer requests.
    assert!(n_fast > 3 * n_slow, "fast={n_fast} slow={n_slow}");
    assert!(n_slow > 0, "the slow endpoint was never tried");
}
