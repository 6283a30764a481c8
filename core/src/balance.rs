//! Endpoint selection: least-loaded (power of two random choices over
//! in-flight requests) and round-robin, plus weighted cluster splits.
//!
//! The balancers hold no endpoint state: the caller passes the number of
//! endpoints and a function reading each one's in-flight count on this core.

/// A small, fast, seedable pseudo-random generator (xorshift64*).
///
/// Not cryptographic: it only spreads load. Seeded per core in the runtime and
/// with a fixed seed in tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, zero included); different seeds
    /// give different sequences. The seed is mixed with SplitMix64's
    /// finalizer, a bijection, so no two seeds share a state.
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // xorshift needs a non-zero state; exactly one seed maps to zero.
        Rng(if z == 0 { 0x9E37_79B9_7F4A_7C15 } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`), without modulo bias worth noticing.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Picks among `n > 0` endpoints by power of two random choices: two distinct
/// endpoints at random, the one with the lower load (requests in flight, or
/// a Peak-EWMA cost) wins, ties are broken at random.
pub fn least_loaded<L: PartialOrd>(n: usize, load: impl Fn(usize) -> L, rng: &mut Rng) -> usize {
    if n <= 1 {
        return 0;
    }
    let a = rng.below(n);
    let mut b = rng.below(n - 1);
    if b >= a {
        b += 1;
    }
    let (la, lb) = (load(a), load(b));
    if la < lb {
        a
    } else if lb < la {
        b
    } else if rng.next_u64() & 1 == 0 {
        a
    } else {
        b
    }
}

/// Power of two random choices among the `usable` endpoints (indices; the
/// others are ejected or failing their health check): two distinct usable
/// endpoints at random, the lower load wins. None when none is usable. An
/// endpoint that is out never makes its partner in the draw win by
/// default: a slow endpoint beside an ejected one is still weighed against
/// the others.
pub fn least_loaded_among<L: PartialOrd>(
    usable: &[usize],
    load: impl Fn(usize) -> L,
    rng: &mut Rng,
) -> Option<usize> {
    match usable.len() {
        0 => None,
        1 => Some(usable[0]),
        m => Some(usable[least_loaded(m, |k| load(usable[k]), rng)]),
    }
}

/// Round-robin over the endpoints, per core.
#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// Picks the next of `n > 0` endpoints.
    pub fn pick(&mut self, n: usize) -> usize {
        let i = self.next % n.max(1);
        self.next = i + 1;
        i
    }
}

/// Picks an index from `weights` with probability proportional to the weight.
/// `total` is their sum and must be positive.
pub fn pick_weighted(weights: &[u32], total: u64, rng: &mut Rng) -> usize {
    let mut x = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
    for (i, w) in weights.iter().enumerate() {
        if x < u64::from(*w) {
            return i;
        }
        x -= u64::from(*w);
    }
    weights.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn among_the_usable_an_endpoint_beside_an_out_one_is_still_weighed() {
        let mut rng = Rng::new(3);
        // 0 is out; 1 is loaded (a hanging endpoint), 2 is idle.
        let loads = [0u32, 50, 0];
        let mut picks = [0usize; 3];
        for _ in 0..1000 {
            let i = least_loaded_among(&[1, 2], |i| loads[i], &mut rng).expect("usable");
            picks[i] += 1;
        }
        assert_eq!(picks, [0, 0, 1000], "the idle usable one wins every draw");
        assert_eq!(least_loaded_among(&[], |i| loads[i], &mut rng), None);
        assert_eq!(least_loaded_among(&[1], |i| loads[i], &mut rng), Some(1));
    }

    #[test]
    fn least_loaded_prefers_fewer_in_flight() {
        let mut rng = Rng::new(7);
        let loads = [5u32, 0, 5, 5];
        let mut wins = [0u32; 4];
        for _ in 0..10_000 {
            wins[least_loaded(4, |i| loads[i], &mut rng)] += 1;
        }
        // Endpoint 1 wins every draw it takes part in: 1 - (3/4 * 2/3) = 1/2.
        assert!((4_500..5_500).contains(&wins[1]), "{wins:?}");
    }

    #[test]
    fn least_loaded_ties_spread_evenly() {
        let mut rng = Rng::new(1);
        let mut wins = [0u32; 3];
        for _ in 0..30_000 {
            wins[least_loaded(3, |_| 0, &mut rng)] += 1;
        }
        for w in wins {
            assert!((9_000..11_000).contains(&w), "{wins:?}");
        }
    }

    #[test]
    fn single_endpoint() {
        assert_eq!(least_loaded(1, |_| 9, &mut Rng::new(0)), 0);
    }

    /// Picks depend on the seed and nothing else: two generators with one
    /// seed, drawn from in turn, agree (no shared or global state), and
    /// another seed gives another sequence.
    #[test]
    fn deterministic_for_a_seed() {
        // Equal loads: every pick is down to the random draw.
        let load = |_| 0;
        let (mut a, mut b, mut other) = (Rng::new(42), Rng::new(42), Rng::new(43));
        let mut same = Vec::new();
        let mut differ = 0;
        for _ in 0..64 {
            let x = least_loaded(10, load, &mut a);
            let y = least_loaded(10, load, &mut b);
            same.push((x, y));
            differ += usize::from(least_loaded(10, load, &mut other) != x);
        }
        assert!(same.iter().all(|(x, y)| x == y), "{same:?}");
        // Independent uniform picks of 10 agree 1 time in 10: about 6 of 64.
        assert!(
            differ > 32,
            "seeds 42 and 43 gave nearly the same picks ({differ} of 64 differ)"
        );
    }

    #[test]
    fn round_robin_cycles() {
        let mut rr = RoundRobin::default();
        let v: Vec<_> = (0..7).map(|_| rr.pick(3)).collect();
        assert_eq!(v, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn weighted_split_proportions() {
        let mut rng = Rng::new(3);
        let mut n = [0u32; 2];
        for _ in 0..100_000 {
            n[pick_weighted(&[1, 99], 100, &mut rng)] += 1;
        }
        assert!((800..1_200).contains(&n[0]), "{n:?}");
        assert_eq!(pick_weighted(&[0, 5], 5, &mut rng), 1);
    }

    /// A slow endpoint holds its requests longer, so its in-flight count is
    /// higher and it receives measurably less traffic. Simulated in discrete
    /// time with a fixed seed: endpoint 0 takes 1 tick, endpoint 1 takes 10.
    #[test]
    fn slow_endpoint_gets_less_traffic() {
        let mut rng = Rng::new(11);
        let service = [1u64, 10];
        let mut in_flight = [0u32; 2];
        let mut done_at: Vec<(u64, usize)> = Vec::new();
        let mut picks = [0u32; 2];
        for tick in 0..20_000u64 {
            done_at.retain(|&(t, e)| {
                if t <= tick {
                    in_flight[e] -= 1;
                    false
                } else {
                    true
                }
            });
            // Four requests arrive per tick.
            for _ in 0..4 {
                let e = least_loaded(2, |i| in_flight[i], &mut rng);
                in_flight[e] += 1;
                picks[e] += 1;
                done_at.push((tick + service[e], e));
            }
        }
        assert!(picks[0] > picks[1] * 2, "fast {} vs slow {}", picks[0], picks[1]);
    }
}
