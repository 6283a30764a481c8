//! Route matching: `RouteTable::find` over tables of 10 to 10,000 hosts, one
//! route per host (an exact host and a path prefix; every tenth also with a
//! method, every twentieth with a header condition), then a `*.example.com`
//! route and a catch-all. Measures a hit on the first and on the last host,
//! a host that only the wildcard matches, and a miss that falls through to
//! the catch-all; and, for scale, the same last-host lookup as a linear scan
//! of every route (how the table worked before it was indexed by host).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use weft_core::{HostMatch, PathMatch, Route, RouteMatch, RouteTable, Target};

fn route(
    host: &str,
    path: PathMatch,
    method: Option<&str>,
    headers: Vec<(String, String)>,
    line: usize,
) -> Route {
    Route {
        name: String::new(),
        retry: weft_core::route::RetryPolicy::default(),
        rate_limit: None,
        matcher: RouteMatch {
            host: HostMatch::parse(host),
            path,
            method: method.map(str::to_string),
            headers,
        },
        target: Target::Cluster(line % 8),
        timeout: std::time::Duration::from_secs(15),
        line,
    }
}

/// `hosts` routes of one host each, then `*.example.com`, then `*`.
fn routes(hosts: usize) -> Vec<Route> {
    let mut v: Vec<Route> = (0..hosts)
        .map(|i| {
            route(
                &format!("svc{i}.example.com"),
                PathMatch::Prefix(format!("/api/v1/svc{i}/")),
                (i % 10 == 9).then_some("GET"),
                if i % 20 == 19 {
                    vec![("x-tenant".to_string(), "blue".to_string())]
                } else {
                    Vec::new()
                },
                i + 1,
            )
        })
        .collect();
    v.push(route(
        "*.example.com",
        PathMatch::Any,
        None,
        Vec::new(),
        hosts + 1,
    ));
    v.push(route("*", PathMatch::Any, None, Vec::new(), hosts + 2));
    v
}

/// The table as it was before the index: every route tried in order.
fn linear<'r>(
    routes: &'r [Route],
    host: &str,
    path: &str,
    method: &str,
    header: impl Fn(&str) -> Option<&'static [u8]>,
) -> Option<&'r Route> {
    routes
        .iter()
        .find(|r| r.matcher.matches(Some(host), path, method, &header))
}

const HEADERS: [(&str, &[u8]); 3] = [
    ("x-tenant", b"blue"),
    ("accept", b"*/*"),
    ("user-agent", b"curl/7.88.1"),
];

fn lookup(name: &str) -> Option<&'static [u8]> {
    HEADERS.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_find");
    for hosts in [10usize, 100, 1_000, 10_000] {
        let list = routes(hosts);
        let t = RouteTable::new(list.clone());
        let last = format!("svc{}.example.com", hosts - 1);
        let last_path = format!("/api/v1/svc{}/users/42", hosts - 1);
        let cases: [(&str, &str, &str, usize); 4] = [
            ("hit_first", "svc0.example.com", "/api/v1/svc0/users/42", 1),
            ("hit_last", &last, &last_path, hosts),
            ("wildcard", "other.example.com", "/api/v1/svc1/x", hosts + 1),
            ("catch_all", "zzz42.example.org", "/api/v1/svc1/x", hosts + 2),
        ];
        for (name, host, path, line) in cases {
            // Sanity checks, outside the measurement: the index answers as
            // the linear scan does.
            assert_eq!(
                t.find(Some(host), path, "GET", lookup).map(|r| r.line),
                Some(line)
            );
            assert_eq!(
                linear(&list, host, path, "GET", lookup).map(|r| r.line),
                Some(line)
            );
            g.bench_with_input(BenchmarkId::new(name, hosts), &hosts, |b, _| {
                b.iter(|| {
                    t.find(black_box(Some(host)), black_box(path), black_box("GET"), lookup)
                        .map(|r| r.line)
                })
            });
        }
        if hosts >= 1_000 {
            g.bench_with_input(BenchmarkId::new("hit_last_linear_scan", hosts), &hosts, |b, _| {
                b.iter(|| {
                    linear(
                        &list,
                        black_box(&last),
                        black_box(&last_path),
                        black_box("GET"),
                        lookup,
                    )
                    .map(|r| r.line)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
