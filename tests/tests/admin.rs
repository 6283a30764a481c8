//! The admin listener end to end: `/metrics` read by the Prometheus client
//! library's own parser (Python `prometheus_client`), counters equal to
//! the requests sent by status and error code, the proxy-overhead
//! histogram, `/ready` `/live` `/config` `/clusters`, `POST /drain`, and
//! an admin address already in use.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;

use std::process::{Command, Stdio};
use std::time::Duration;
use weft_tests::*;

/// A sample: metric name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// `/metrics` as Prometheus's client library parses it: a malformed
/// exposition fails the test.
fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, text) = admin_request(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{text}");
    let script = "
import sys
from prometheus_client.parser import text_string_to_metric_families
seen = set()
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key in seen:
            sys.exit('duplicate series: %r' % (key,))
        seen.add(key)
        labels = ''.join('\\t%s=%s' % kv for kv in sorted(s.labels.items()))
        print('%s\\t%r%s' % (s.name, s.value, labels))
";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "python3 runs (the test parses /metrics with prometheus_client: pip install prometheus_client)",
        );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("exposition written to the parser");
    let out = child.wait_with_output().expect("parser ran");
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition (or is missing: pip install prometheus_client): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A line per sample: name, value, then `label=value` fields, by tabs.
    let text = String::from_utf8(out.stdout).expect("the parser's text");
    text.lines()
        .map(|line| {
            let mut fields = line.split('\t');
            let name = fields.next().expect("a name").to_string();
            let value = fields.next().and_then(|v| v.parse().ok()).expect("a value");
            let labels = fields
                .map(|f| {
                    let (k, v) = f.split_once('=').expect("label=value");
                    (k.to_string(), v.to_string())
                })
                .collect();
            (name, labels, value)
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn config(up: SocketAddr, extra: &str) -> String {
    format!(
        "{runtime}
[admin]
listen = \"127.0.0.1:0\"
{extra}
[[listener]]
name = \"in\"
listen = \"127.0.0.1:0\"

[[route]]
name = \"dead\"
match = {{ path_prefix = \"/dead\" }}
cluster = \"gone\"

[[route]]
match = {{ path_prefix = \"/ok\" }}
cluster = \"up\"

[[cluster]]
name = \"up\"
endpoints = [\"{up}\"]

[[cluster]]
name = \"gone\"
endpoints = [\"{dead}\"]
breaker = {{ consecutive_failures = 0 }}
",
        runtime = runtime_section(2),
        dead = dead_addr(),
    )
}

/// Every request sent shows in the counters, by route, status and error
/// code, in a form Prometheus's own parser reads; every request has its
/// overhead observed once.
fn metrics_count_every_request_by_status_and_error() {
    let up = Upstream::echo("up");
    let weft = start(&config(up.addr, ""));
    let addr = weft.addr("in").expect("listener");
    let admin_addr = weft.admin_addr().expect("admin listener");
    for _ in 0..7 {
        assert_eq!(get(addr, "/ok").status, 200);
    }
    let mut c = Client::connect(addr);
    for _ in 0..3 {
        assert_eq!(c.get("/ok", "x-status: 503\r\n").status, 503);
    }
    for _ in 0..2 {
        assert_weft_error(&get(addr, "/dead"), 503, "connect-refused", "");
    }
    assert_weft_error(&get(addr, "/nowhere"), 404, "no-route", "");
    let mut bad = Client::connect(addr);
    bad.send(b"GET /ok HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n");
    assert_eq!(bad.response(false).expect("an answer").status, 400);

    let total = 7.0 + 3.0 + 2.0 + 1.0 + 1.0;
    let mut samples = Vec::new();
    // Outcomes are recorded as each request ends, just after its answer.
    let counted = eventually(Duration::from_secs(5), || {
        samples = scrape(admin_addr);
        sum(&samples, "request_total", &[]) == total
    });
    assert!(counted, "request_total is not {total}: {samples:?}");
    let ok = [("route", "1"), ("cluster", "up")];
    assert_eq!(sum(&samples, "request_total", &ok), 10.0);
    let ok_200 = [
        ("route", "1"),
        ("status_code", "200"),
        ("classification", "success"),
        ("error", ""),
    ];
    assert_eq!(sum(&samples, "response_total", &ok_200), 7.0);
    let ok_503 = [
        ("route", "1"),
        ("status_code", "503"),
        ("classification", "failure"),
    ];
    assert_eq!(sum(&samples, "response_total", &ok_503), 3.0);
    let dead = [
        ("route", "dead"),
        ("cluster", "gone"),
        ("status_code", "503"),
        ("error", "connect-refused"),
    ];
    assert_eq!(sum(&samples, "response_total", &dead), 2.0);
    let unrouted = [
        ("route", ""),
        ("cluster", ""),
        ("status_code", "404"),
        ("error", "no-route"),
    ];
    assert_eq!(sum(&samples, "response_total", &unrouted), 1.0);
    let refused = [
        ("route", ""),
        ("status_code", "400"),
        ("classification", "failure"),
    ];
    assert_eq!(sum(&samples, "response_total", &refused), 1.0);
    assert_eq!(sum(&samples, "response_latency_ms_count", &[]), total);
    assert_eq!(
        sum(&samples, "response_latency_ms_bucket", &[("le", "+Inf")]),
        total
    );
    // Per worker; both workers report.
    assert_eq!(sum(&samples, "proxy_overhead_us_count", &[]), total);
    for worker in ["0", "1"] {
        assert!(
            samples.iter().any(|(n, l, _)| n == "proxy_overhead_us_count"
                && l.get("worker").map(String::as_str) == Some(worker)),
            "worker {worker} is missing from proxy_overhead_us"
        );
    }
    // Endpoints: the live one took 10 requests; the dead one failed twice.
    let live = up.addr.to_string();
    assert_eq!(
        sum(&samples, "endpoint_request_total", &[("endpoint", &live)]),
        10.0
    );
    assert_eq!(
        sum(&samples, "endpoint_failure_total", &[("cluster", "gone")]),
        2.0
    );
    // Connections: one per `get` (7 + 2 + 1) and the two clients; each
    // is open or closed.
    assert_eq!(sum(&samples, "tcp_open_total", &[("listener", "in")]), 12.0);
    assert_eq!(
        sum(&samples, "tcp_close_total", &[]) + sum(&samples, "tcp_open_connections", &[]),
        12.0
    );
    let read = sum(&samples, "tcp_read_bytes_total", &[]);
    let written = sum(&samples, "tcp_write_bytes_total", &[]);
    assert!(
        read > 0.0 && written > 0.0,
        "bytes counted: {read} in, {written} out"
    );
    drop((c, bad));
    weft.shutdown();
}

/// Readiness, liveness, the running configuration, the endpoints, and a
/// drain asked over the admin listener.
fn ready_live_config_clusters_and_drain() {
    let up = Upstream::echo("up");
    let weft = start(&config(up.addr, ""));
    let addr = weft.addr("in").expect("listener");
    let admin_addr = weft.admin_addr().expect("admin listener");
    assert_eq!(get(addr, "/ok").status, 200);
    assert_eq!(admin_request(admin_addr, "GET", "/live"), (200, "live\n".into()));
    assert_eq!(
        admin_request(admin_addr, "GET", "/ready"),
        (200, "ready\n".into())
    );
    let (status, config) = admin_request(admin_addr, "GET", "/config");
    assert_eq!(status, 200);
    assert!(config.starts_with("generation: 1\n"), "{config}");
    assert!(config.contains("cluster up"), "{config}");
    let (status, clusters) = admin_request(admin_addr, "GET", "/clusters");
    assert_eq!(status, 200);
    let fact = format!("up::{}::requests::1\n", up.addr);
    assert!(clusters.contains(&fact), "no `{fact}` in:\n{clusters}");
    assert!(
        clusters.contains(&format!("up::{}::healthy::true\n", up.addr)),
        "{clusters}"
    );
    assert_eq!(admin_request(admin_addr, "GET", "/nothing").0, 404);
    assert_eq!(
        admin_request(admin_addr, "HEAD", "/live"),
        (200, String::new()),
        "HEAD: no body"
    );
    assert_eq!(admin_request(admin_addr, "GET", "/drain").0, 405);
    assert_eq!(
        admin_request(admin_addr, "POST", "/drain"),
        (202, "draining\n".into())
    );
    assert_eq!(
        admin_request(admin_addr, "GET", "/ready"),
        (503, "draining\n".into())
    );
    // The drain ends weft: the workers finish and exit on their own.
    weft.join();
}

/// An HTTP/2 cluster's endpoint shows its connections and the streams
/// open on them: one while a request's body is still coming, none after.
fn http2_streams_and_connections_per_endpoint() {
    let up = weft_tests::h2c::H2Upstream::start();
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[route]]\ncluster = \"h2\"\n\n[[cluster]]\nname = \"h2\"\nendpoints = [\"{}\"]\nprotocol = \"http2\"\n",
        runtime_section(1),
        up.addr
    );
    let weft = start(&text);
    let (addr, admin) = (
        weft.addr("in").expect("listener"),
        weft.admin_addr().expect("admin"),
    );
    let endpoint = up.addr.to_string();
    let gauge = |name: &str| {
        sum(
            &scrape(admin),
            name,
            &[("cluster", "h2"), ("endpoint", &endpoint)],
        )
    };
    let mut c = Client::connect(addr);
    // `/stream` answers at once and echoes the body as it comes.
    c.send(b"POST /stream HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
    assert!(
        eventually(Duration::from_secs(5), || gauge("http2_streams") == 1.0),
        "http2_streams: {}",
        gauge("http2_streams")
    );
    assert_eq!(gauge("http2_connections"), 1.0);
    c.send(b"0\r\n\r\n");
    let r = c.response(false).expect("a response");
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || gauge("http2_streams") == 0.0),
        "http2_streams after the request: {}",
        gauge("http2_streams")
    );
    assert_eq!(
        gauge("http2_connections"),
        1.0,
        "the connection stays for the next request"
    );
    let (_, clusters) = admin_request(admin, "GET", "/clusters");
    assert!(
        clusters.contains(&format!("h2::{endpoint}::http2_streams::0")),
        "{clusters}"
    );
    weft.shutdown();
}

on_both_drivers!(
    http2_streams_and_connections_per_endpoint,
    metrics_count_every_request_by_status_and_error,
    ready_live_config_clusters_and_drain
);

/// An admin address another process holds fails the start, naming it.
#[test]
fn an_admin_address_in_use_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let at = taken.local_addr().expect("its address");
    let up = Upstream::echo("up");
    let text = config(up.addr, "").replacen("listen = \"127.0.0.1:0\"\n", &format!("listen = \"{at}\"\n"), 1);
    // Only the admin listener's line changed: it comes first.
    let config = weft::load::parse(&text).expect("valid config");
    assert_eq!(config.admin.as_ref().map(|a| a.addr), Some(at));
    match weft::Server::start(config) {
        Ok(_) => panic!("weft started on an admin address in use"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("admin") && msg.contains(&at.to_string()), "{msg}");
        }
    }
}

/// Without `[admin]` nothing listens and no metrics are kept.
#[test]
fn no_admin_section_no_admin_listener() {
    let up = Upstream::echo("up");
    let (weft, addr) = proxy(&[up.addr]);
    assert_eq!(get(addr, "/").status, 200);
    assert_eq!(weft.admin_addr(), None);
}
