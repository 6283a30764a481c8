//! Route matching: `RouteTable::find` over 100 routes, each with an exact host
//! and a path prefix (the last three also with a method or a header
//! condition). Measures a hit on the last route (every route is tried) and a
//! miss (every route is tried, none matches). The miss's host has the length
//! of most routes' hosts, so no comparison stops at a length check.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use weft_core::{HostMatch, PathMatch, Route, RouteMatch, RouteTable, Target};

const ROUTES: usize = 100;

fn table() -> RouteTable {
    let routes = (0..ROUTES)
        .map(|i| Route {
            retry: weft_core::route::RetryPolicy::default(),
            rate_limit: None,
            matcher: RouteMatch {
                host: HostMatch::parse(&format!("svc{i}.example.com")),
                path: PathMatch::Prefix(format!("/api/v1/svc{i}/")),
                method: (i % 10 == 9).then(|| "GET".to_string()),
                headers: if i % 20 == 19 {
                    vec![("x-tenant".to_string(), "blue".to_string())]
                } else {
                    Vec::new()
                },
            },
            target: Target::Cluster(i % 8),
            timeout: std::time::Duration::from_secs(15),
            line: i + 1,
        })
        .collect();
    RouteTable { routes }
}

fn bench_route(c: &mut Criterion) {
    let t = table();
    let headers: [(&str, &[u8]); 3] = [
        ("x-tenant", b"blue"),
        ("accept", b"*/*"),
        ("user-agent", b"curl/7.88.1"),
    ];
    let lookup = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let last = format!("svc{}.example.com", ROUTES - 1);
    let last_path = format!("/api/v1/svc{}/users/42", ROUTES - 1);

    // Sanity checks, outside the measurement.
    let hit = t.find(Some(&last), &last_path, "GET", lookup).expect("hit");
    assert_eq!(hit.line, ROUTES);
    assert!(t
        .find(Some("zzz42.example.com"), "/api/v1/svc1/x", "GET", lookup)
        .is_none());

    let mut g = c.benchmark_group("route_find_100");
    g.bench_function("hit_last", |b| {
        b.iter(|| {
            t.find(
                black_box(Some(last.as_str())),
                black_box(last_path.as_str()),
                black_box("GET"),
                lookup,
            )
            .map(|r| r.line)
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            t.find(
                black_box(Some("zzz42.example.com")),
                black_box("/api/v1/svc1/x"),
                black_box("GET"),
                lookup,
            )
            .map(|r| r.line)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
