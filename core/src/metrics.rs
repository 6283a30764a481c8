//! Request metrics: what a worker counts from its outcome records, and the
//! merge of several workers' counts when they are scraped.
//!
//! A worker owns its [`Metrics`] alone (plain integers, no atomics) and
//! feeds it one [`Outcome`] per request; a scrape asks each worker for a
//! copy and adds the copies up. Every series is keyed by what the
//! configuration bounds (listener, route, cluster, endpoint) and by status
//! and error code, whose number per route is capped: no label comes from a
//! request's own values.

use crate::config::Config;
use crate::outcome::{classify, Outcome};
use std::collections::HashMap;
use std::time::Duration;

/// Bucket bounds of `response_latency_ms`, in microseconds: Linkerd's
/// bounds (1 ms to 50 s), so that its dashboards read weft's figures.
pub const LATENCY_BOUNDS_US: &[u64] = &[
    1_000, 2_000, 3_000, 4_000, 5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 100_000, 200_000, 300_000,
    400_000, 500_000, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000, 10_000_000, 20_000_000,
    30_000_000, 40_000_000, 50_000_000,
];

/// Bucket bounds of `proxy_overhead_us`, in microseconds: fine below a
/// millisecond, where weft's own time is expected to lie.
pub const OVERHEAD_BOUNDS_US: &[u64] = &[
    5, 10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 50_000, 100_000,
];

/// Most response series (status, error code and cluster) kept per route
/// and worker; the rest add up in one series with no status and the error
/// [`OVERFLOW`].
pub const MAX_SERIES_PER_ROUTE: usize = 64;

/// The error label of the series that takes what is past
/// [`MAX_SERIES_PER_ROUTE`].
pub const OVERFLOW: &str = "other";

/// A histogram with fixed bucket bounds: a count per bucket (the last one
/// above every bound), the sum and the count of the values observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    bounds: &'static [u64],
    counts: Box<[u64]>,
    sum: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0,
        }
    }

    /// Counts `v` in the first bucket whose bound is at least `v`.
    #[inline]
    pub fn observe(&mut self, v: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(v);
    }

    /// Adds another histogram's counts (over the same bounds) to this one.
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// The bucket bounds.
    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }

    /// The count of each bucket alone (not cumulative); one more than the
    /// bounds: the last is above every bound.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The sum of the values observed.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// How many values were observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Responses of one route with one status, error code and cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSeries {
    /// The cluster the requests went to (index), if one was chosen.
    pub cluster: Option<usize>,
    /// The status sent to the client; `None` when no response head was.
    pub status: Option<u16>,
    /// The `weft-error` code, if any.
    pub error: Option<&'static str>,
    /// Whether these requests succeeded ([`crate::outcome::classify`]; the
    /// overflow series keeps one per class).
    pub success: bool,
    /// Requests that ended so.
    pub count: u64,
    /// Their time to the response head (Linkerd's `response_latency_ms`).
    pub latency: Histogram,
}

impl ResponseSeries {
    fn new(cluster: Option<usize>, status: Option<u16>, error: Option<&'static str>, success: bool) -> Self {
        ResponseSeries {
            cluster,
            status,
            error,
            success,
            count: 0,
            latency: Histogram::new(LATENCY_BOUNDS_US),
        }
    }

    fn is(&self, cluster: Option<usize>, status: Option<u16>, error: Option<&str>, success: bool) -> bool {
        self.status == status && self.cluster == cluster && self.error == error && self.success == success
    }
}

/// Bytes of one listener's requests and responses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Request bytes read from clients: heads and bodies (after TLS).
    pub read_bytes: u64,
    /// Response bytes written to clients: heads and bodies (before TLS).
    pub write_bytes: u64,
}

/// What one endpoint was asked and answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Requests whose last attempt went to it.
    pub requests: u64,
    /// Attempts that counted against it (breaker input: a failure to
    /// connect, a reset, a timeout, a failing status).
    pub failures: u64,
    /// Times it was ejected.
    pub ejections: u64,
}

/// One cluster's retries and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Attempts beyond each request's first.
    pub retries: u64,
    /// Per endpoint, in configuration order.
    pub endpoints: Vec<EndpointStats>,
}

/// One worker's request metrics, or the sum of several workers'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// Per listener.
    pub listeners: Vec<ListenerStats>,
    /// Per listener, per route: its response series. Each listener has one
    /// more than its routes: the last holds requests no route took (refused
    /// heads, no route matched).
    pub routes: Vec<Vec<Vec<ResponseSeries>>>,
    /// Per cluster.
    pub clusters: Vec<ClusterStats>,
    /// Time spent inside weft per request ([`Outcome::overhead`]).
    pub overhead: Histogram,
}

impl Metrics {
    /// Empty metrics shaped after `config`.
    pub fn new(config: &Config) -> Self {
        Metrics {
            listeners: vec![ListenerStats::default(); config.listeners.len()],
            routes: config
                .listeners
                .iter()
                .map(|l| vec![Vec::new(); l.routes.len() + 1])
                .collect(),
            clusters: config
                .clusters
                .iter()
                .map(|c| ClusterStats {
                    retries: 0,
                    endpoints: vec![EndpointStats::default(); c.endpoints.len()],
                })
                .collect(),
            overhead: Histogram::new(OVERHEAD_BOUNDS_US),
        }
    }

    /// Counts one request's outcome, on route `route` (its own, or the same
    /// route after a reload; `None` for a routed request: its route is
    /// gone, and only the listener, cluster and overhead count it).
    /// `failed`: whether it counted against its endpoint (the breaker's
    /// verdict).
    pub fn record(&mut self, o: &Outcome, route: Option<usize>, failed: bool) {
        if let Some(l) = self.listeners.get_mut(o.listener) {
            l.read_bytes += o.bytes_in;
            l.write_bytes += o.bytes_out;
        }
        // A route removed by a reload while the request ran: its series
        // are gone; the request is not one that no route took.
        let gone = o.route.is_some() && route.is_none();
        if let Some(routes) = self.routes.get_mut(o.listener).filter(|_| !gone) {
            let unrouted = routes.len() - 1;
            let slot = &mut routes[route.map_or(unrouted, |r| r.min(unrouted))];
            let latency = o
                .upstream_at
                .unwrap_or(o.end_at)
                .saturating_duration_since(o.head_at);
            series(slot, o.cluster, o.status, o.error).observe(latency);
        }
        if let Some(c) = o.cluster.and_then(|c| self.clusters.get_mut(c)) {
            c.retries += u64::from(o.attempts.saturating_sub(1));
            for &i in &o.failed_attempts {
                if let Some(e) = c.endpoints.get_mut(i) {
                    e.failures += 1;
                }
            }
            // A request shed before its first attempt never reached it.
            if let Some(e) = o
                .target
                .filter(|_| o.attempts > 0)
                .and_then(|(_, i)| c.endpoints.get_mut(i))
            {
                e.requests += 1;
                e.failures += u64::from(failed);
            }
        }
        self.overhead.observe(micros(o.overhead()));
    }

    /// Reshapes these metrics for `new` (a reload): listeners, routes and
    /// clusters follow their names, endpoints their addresses; what `new`
    /// no longer has takes its counts with it (those series end), and what
    /// it adds starts at zero. Requests no route took stay with their
    /// listener.
    pub fn reshape(&mut self, old: &Config, new: &Config) {
        let mut next = Metrics::new(new);
        // Names looked up once each: a reload of thousands of routes and
        // clusters stays linear.
        let new_clusters: HashMap<&str, usize> = new
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let cluster_now: Vec<Option<usize>> = old
            .clusters
            .iter()
            .map(|c| new_clusters.get(c.name.as_str()).copied())
            .collect();
        let clusters = |c: Option<usize>| c.and_then(|c| *cluster_now.get(c)?);
        for (li, was) in old.listeners.iter().enumerate() {
            let Some(lj) = new.listeners.iter().position(|l| l.name == was.name) else {
                continue;
            };
            if let Some(stats) = self.listeners.get(li) {
                next.listeners[lj] = stats.clone();
            }
            let Some(routes) = self.routes.get_mut(li) else {
                continue;
            };
            let now = &new.listeners[lj];
            let new_routes: HashMap<&str, usize> = now
                .routes
                .routes()
                .iter()
                .enumerate()
                .map(|(i, r)| (r.name.as_str(), i))
                .collect();
            let mut taken = std::mem::take(routes);
            let unrouted = taken.pop().unwrap_or_default();
            let mut moved = |slot: Vec<ResponseSeries>, to: usize| {
                next.routes[lj][to] = slot
                    .into_iter()
                    .filter_map(|mut s| {
                        if s.cluster.is_some() {
                            s.cluster = Some(clusters(s.cluster)?);
                        }
                        Some(s)
                    })
                    .collect();
            };
            moved(unrouted, now.routes.len());
            for (route, slot) in was.routes.routes().iter().zip(taken) {
                if let Some(&j) = new_routes.get(route.name.as_str()) {
                    moved(slot, j);
                }
            }
        }
        for (ci, stats) in self.clusters.iter().enumerate() {
            let Some(cj) = clusters(Some(ci)) else {
                continue;
            };
            let to = &mut next.clusters[cj];
            to.retries = stats.retries;
            let eps = &new.clusters[cj].endpoints;
            for (addr, e) in old.clusters[ci].endpoints.iter().zip(&stats.endpoints) {
                if let Some(j) = eps.iter().position(|a| a == addr) {
                    to.endpoints[j] = e.clone();
                }
            }
        }
        next.overhead = std::mem::replace(&mut self.overhead, Histogram::new(OVERHEAD_BOUNDS_US));
        *self = next;
    }

    /// Counts an ejection of endpoint `i` of cluster `c`.
    pub fn ejected(&mut self, c: usize, i: usize) {
        if let Some(e) = self.clusters.get_mut(c).and_then(|c| c.endpoints.get_mut(i)) {
            e.ejections += 1;
        }
    }

    /// Adds another worker's metrics (of the same configuration) to these.
    pub fn merge(&mut self, other: &Metrics) {
        for (a, b) in self.listeners.iter_mut().zip(&other.listeners) {
            a.read_bytes += b.read_bytes;
            a.write_bytes += b.write_bytes;
        }
        for (mine, theirs) in self.routes.iter_mut().zip(&other.routes) {
            for (slot, from) in mine.iter_mut().zip(theirs) {
                for s in from {
                    let to = match slot
                        .iter_mut()
                        .position(|x| x.is(s.cluster, s.status, s.error, s.success))
                    {
                        Some(i) => &mut slot[i],
                        None => {
                            slot.push(ResponseSeries::new(s.cluster, s.status, s.error, s.success));
                            slot.last_mut().expect("just pushed")
                        }
                    };
                    to.count += s.count;
                    to.latency.merge(&s.latency);
                }
            }
        }
        for (a, b) in self.clusters.iter_mut().zip(&other.clusters) {
            a.retries += b.retries;
            for (x, y) in a.endpoints.iter_mut().zip(&b.endpoints) {
                x.requests += y.requests;
                x.failures += y.failures;
                x.ejections += y.ejections;
            }
        }
        self.overhead.merge(&other.overhead);
    }

    /// Requests that ended on route `r` of listener `l` (`r` = the route
    /// count: requests no route took).
    pub fn requests(&self, l: usize, r: usize) -> u64 {
        self.routes
            .get(l)
            .and_then(|routes| routes.get(r))
            .map_or(0, |slot| slot.iter().map(|s| s.count).sum())
    }
}

/// The index in `new` of cluster `c` of `old`, by name.
pub fn same_cluster(old: &Config, new: &Config, c: usize) -> Option<usize> {
    let name = &old.clusters.get(c)?.name;
    new.clusters.iter().position(|x| &x.name == name)
}

/// The place in `new` of endpoint `i` of cluster `c` of `old`: the
/// cluster by name, the endpoint by address.
pub fn same_endpoint(old: &Config, new: &Config, c: usize, i: usize) -> Option<(usize, usize)> {
    let addr = old.clusters.get(c)?.endpoints.get(i)?;
    let cj = same_cluster(old, new, c)?;
    let j = new.clusters[cj].endpoints.iter().position(|a| a == addr)?;
    Some((cj, j))
}

/// The record of a request that ran on `old` with its indices moved into
/// `new` (a request in flight across a reload): listener, route and
/// cluster by name, endpoints by address. What `new` no longer has is
/// left out (a listener gone: an index no series has).
pub fn moved(o: &Outcome, old: &Config, new: &Config) -> Outcome {
    let listener = old
        .listeners
        .get(o.listener)
        .and_then(|l| new.listeners.iter().position(|x| x.name == l.name));
    let route = o.route.and_then(|r| {
        let name = &old.listeners.get(o.listener)?.routes.routes().get(r)?.name;
        new.listeners
            .get(listener?)?
            .routes
            .routes()
            .iter()
            .position(|x| &x.name == name)
    });
    let mut moved = o.clone();
    moved.listener = listener.unwrap_or(usize::MAX);
    moved.route = route;
    moved.cluster = o.cluster.and_then(|c| same_cluster(old, new, c));
    moved.target = o.target.and_then(|(c, i)| same_endpoint(old, new, c, i));
    moved.failed_attempts = match o.target {
        Some((c, _)) => o
            .failed_attempts
            .iter()
            .filter_map(|&i| Some(same_endpoint(old, new, c, i)?.1))
            .collect(),
        None => Vec::new(),
    };
    moved
}

impl ResponseSeries {
    #[inline]
    fn observe(&mut self, latency: Duration) {
        self.count += 1;
        self.latency.observe(micros(latency));
    }
}

/// The series of `slot` for this cluster, status and error, added when new
/// (up to [`MAX_SERIES_PER_ROUTE`], then the overflow series of the
/// cluster and class: no status, the error [`OVERFLOW`]).
#[inline]
fn series<'a>(
    slot: &'a mut Vec<ResponseSeries>,
    cluster: Option<usize>,
    status: Option<u16>,
    error: Option<&'static str>,
) -> &'a mut ResponseSeries {
    let success = classify(status, error);
    let (status, error) = match slot.iter().position(|s| s.is(cluster, status, error, success)) {
        Some(i) => return &mut slot[i],
        None if slot.len() < MAX_SERIES_PER_ROUTE => (status, error),
        None => (None, Some(OVERFLOW)),
    };
    match slot.iter().position(|s| s.is(cluster, status, error, success)) {
        Some(i) => &mut slot[i],
        None => {
            slot.push(ResponseSeries::new(cluster, status, error, success));
            slot.last_mut().expect("just pushed")
        }
    }
}

/// Whole microseconds of `d` (without `as_micros`'s 128-bit arithmetic:
/// this runs for every request).
#[inline]
fn micros(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Instant;

    fn config() -> Config {
        let src = r#"
[[listener]]
name = "in"
listen = "127.0.0.1:1"
[[route]]
match = { path_prefix = "/a" }
cluster = "a"
[[route]]
split = [ { cluster = "a", weight = 1 }, { cluster = "b", weight = 1 } ]
"#;
        Config::parse(&[src, CLUSTERS].concat(), &crate::config::literal_only).expect("valid")
    }

    /// The clusters of the test configurations.
    const CLUSTERS: &str = r#"
[[cluster]]
name = "a"
endpoints = ["127.0.0.1:2", "127.0.0.1:3"]
[[cluster]]
name = "b"
endpoints = ["127.0.0.1:4"]
"#;

    fn outcome(route: Option<usize>, status: Option<u16>, error: Option<&'static str>) -> Outcome {
        let t = Instant::now();
        let mut o = Outcome::new(0, t);
        o.route = route;
        o.cluster = route.map(|_| 0);
        o.target = route.map(|_| (0, 1));
        o.status = status;
        o.error = error;
        o.attempts = 2;
        o.bytes_in = 10;
        o.bytes_out = 20;
        o.sent_at = Some(t + Duration::from_micros(30));
        o.upstream_at = Some(t + Duration::from_micros(2_530));
        o.end_at = t + Duration::from_micros(2_560);
        o
    }

    fn record(m: &mut Metrics, o: &Outcome, failed: bool) {
        m.record(o, o.route, failed);
    }

    #[test]
    fn a_histogram_counts_each_value_in_the_first_bucket_at_or_above_it() {
        let mut h = Histogram::new(&[10, 20]);
        for v in [0, 10, 11, 20, 21, 1_000] {
            h.observe(v);
        }
        assert_eq!(h.counts(), &[2, 2, 2]);
        assert_eq!((h.sum(), h.count()), (1_062, 6));
        let mut g = h.clone();
        g.merge(&h);
        assert_eq!((g.counts(), g.sum()), (&[4, 4, 4][..], 2_124));
    }

    #[test]
    fn outcomes_land_in_their_route_status_and_error_series() {
        let c = config();
        let mut m = Metrics::new(&c);
        record(&mut m, &outcome(Some(0), Some(200), None), false);
        record(&mut m, &outcome(Some(0), Some(200), None), false);
        record(
            &mut m,
            &outcome(Some(0), Some(502), Some("connect-refused")),
            true,
        );
        record(&mut m, &outcome(None, Some(404), Some("no-route")), false);
        assert_eq!(m.requests(0, 0), 3);
        assert_eq!(m.requests(0, 1), 0);
        assert_eq!(m.requests(0, 2), 1, "the unrouted slot");
        let ok = &m.routes[0][0][0];
        assert_eq!((ok.status, ok.error, ok.count), (Some(200), None, 2));
        // 2.5 ms to the response head: the 3 ms bucket (index 2).
        assert_eq!(ok.latency.counts()[2], 2);
        assert_eq!(
            m.listeners[0],
            ListenerStats {
                read_bytes: 40,
                write_bytes: 80
            }
        );
        let a = &m.clusters[0];
        assert_eq!(a.retries, 3);
        assert_eq!(
            a.endpoints[1],
            EndpointStats {
                requests: 3,
                failures: 1,
                ejections: 0
            }
        );
        // 30 µs before the first attempt and 30 µs after the answer.
        assert_eq!(m.overhead.count(), 4);
        assert_eq!(m.overhead.sum(), 4 * 60);
    }

    #[test]
    fn series_per_route_are_capped() {
        let c = config();
        let mut m = Metrics::new(&c);
        for status in 100..400u16 {
            record(&mut m, &outcome(Some(1), Some(status), None), false);
        }
        // Past the cap, a 5xx and a 2xx each land in their class's
        // overflow series, with their cluster.
        record(&mut m, &outcome(Some(1), Some(503), None), false);
        record(&mut m, &outcome(Some(1), Some(299), None), false);
        let slot = &m.routes[0][1];
        assert_eq!(slot.len(), MAX_SERIES_PER_ROUTE + 2);
        let over = &slot[MAX_SERIES_PER_ROUTE];
        assert_eq!(
            (over.status, over.error, over.success, over.cluster),
            (None, Some(OVERFLOW), true, Some(0))
        );
        assert_eq!(over.count, 300 - MAX_SERIES_PER_ROUTE as u64 + 1);
        let failed = &slot[MAX_SERIES_PER_ROUTE + 1];
        assert_eq!(
            (failed.error, failed.success, failed.count),
            (Some(OVERFLOW), false, 1)
        );
        assert_eq!(m.requests(0, 1), 302);
    }

    #[test]
    fn series_follow_their_route_by_name_across_a_reload() {
        let c = config();
        let mut m = Metrics::new(&c);
        record(&mut m, &outcome(Some(0), Some(200), None), false);
        record(&mut m, &outcome(Some(1), Some(201), None), false);
        record(&mut m, &outcome(None, Some(404), Some("no-route")), false);
        // The two routes swapped places, and a new one came first.
        let src = r#"
[[listener]]
name = "in"
listen = "127.0.0.1:1"
[[route]]
name = "new"
match = { path = "/n" }
cluster = "b"
[[route]]
name = "1"
split = [ { cluster = "a", weight = 1 }, { cluster = "b", weight = 1 } ]
[[route]]
name = "0"
match = { path_prefix = "/a" }
cluster = "a"
"#;
        let new = Config::parse(&[src, CLUSTERS].concat(), &crate::config::literal_only).expect("valid");
        m.reshape(&c, &new);
        assert_eq!(
            (
                m.requests(0, 0),
                m.requests(0, 1),
                m.requests(0, 2),
                m.requests(0, 3)
            ),
            (0, 1, 1, 1)
        );
        assert_eq!(m.routes[0][2][0].status, Some(200));
        // A request that began before the reload lands on its route by name.
        let o = outcome(Some(0), Some(200), None);
        assert_eq!(moved(&o, &c, &new).route, Some(2));
        assert_eq!(moved(&outcome(Some(0), Some(200), None), &new, &c).route, None);
    }

    #[test]
    fn listeners_clusters_and_endpoints_follow_their_names_and_addresses_across_a_reload() {
        let c = config();
        let mut m = Metrics::new(&c);
        let mut o = outcome(Some(0), Some(200), None);
        o.failed_attempts = vec![0];
        record(&mut m, &o, false);
        m.ejected(0, 0);
        // A listener first, cluster `a` moved behind a new cluster and
        // given another endpoint before its own two, which swapped places;
        // cluster `b` gone.
        let src = r#"
[[listener]]
name = "other"
listen = "127.0.0.1:5"
[[route]]
listener = "other"
cluster = "n"
[[listener]]
name = "in"
listen = "127.0.0.1:1"
[[route]]
listener = "in"
match = { path_prefix = "/a" }
cluster = "a"
[[cluster]]
name = "n"
endpoints = ["127.0.0.1:6"]
[[cluster]]
name = "a"
endpoints = ["127.0.0.1:7", "127.0.0.1:3", "127.0.0.1:2"]
"#;
        let new = Config::parse(src, &crate::config::literal_only).expect("valid");
        m.reshape(&c, &new);
        assert_eq!(m.listeners[0], ListenerStats::default());
        assert_eq!(m.listeners[1].read_bytes, 10);
        assert_eq!(m.requests(1, 0), 1);
        // The series' cluster label follows the cluster.
        assert_eq!(m.routes[1][0][0].cluster, Some(1));
        assert_eq!(
            m.clusters[0],
            ClusterStats {
                retries: 0,
                endpoints: vec![EndpointStats::default()]
            }
        );
        assert_eq!(m.clusters[1].retries, 1);
        let e = &m.clusters[1].endpoints;
        // 127.0.0.1:3 had the request, 127.0.0.1:2 the failure and ejection.
        assert_eq!((e[0].requests, e[1].requests, e[2].requests), (0, 1, 0));
        assert_eq!((e[2].failures, e[2].ejections), (1, 1));
        assert_eq!(same_endpoint(&c, &new, 0, 1), Some((1, 1)));
        assert_eq!(same_endpoint(&c, &new, 1, 0), None);
        // A request in flight across the reload: all its indices move.
        let later = moved(&o, &c, &new);
        assert_eq!(
            (later.listener, later.route, later.cluster, later.target),
            (1, Some(0), Some(1), Some((1, 1)))
        );
        assert_eq!(later.failed_attempts, vec![2]);
        record(&mut m, &later, false);
        assert_eq!(m.requests(1, 0), 2);
        assert_eq!(m.clusters[1].endpoints[2].failures, 2);
    }

    #[test]
    fn merged_workers_add_up() {
        let c = config();
        let mut a = Metrics::new(&c);
        let mut b = Metrics::new(&c);
        record(&mut a, &outcome(Some(0), Some(200), None), false);
        record(&mut b, &outcome(Some(0), Some(200), None), false);
        record(&mut b, &outcome(Some(0), Some(503), Some("no-endpoint")), false);
        b.ejected(0, 1);
        a.merge(&b);
        assert_eq!(a.requests(0, 0), 3);
        assert_eq!(a.routes[0][0].len(), 2);
        assert_eq!(a.routes[0][0][0].count, 2);
        assert_eq!(a.clusters[0].endpoints[1].ejections, 1);
        assert_eq!(a.overhead.count(), 3);
    }
}
