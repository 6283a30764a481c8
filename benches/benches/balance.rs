//! Endpoint selection: least-loaded (power of two choices) and round-robin
//! over 10 and 1,000 endpoints.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use weft_core::{least_loaded, Rng, RoundRobin};

fn bench_balance(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer_pick");
    for n in [10usize, 1_000] {
        // In-flight counts as the runtime would hold them: a small spread.
        let loads: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % 5).collect();
        let mut rng = Rng::new(42);
        g.bench_with_input(BenchmarkId::new("least_loaded", n), &n, |b, &n| {
            b.iter(|| least_loaded(black_box(n), |i| loads[i], &mut rng))
        });
        let mut rr = RoundRobin::default();
        g.bench_with_input(BenchmarkId::new("round_robin", n), &n, |b, &n| {
            b.iter(|| rr.pick(black_box(n)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_balance);
criterion_main!(benches);
