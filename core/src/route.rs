//! The route table: ordered routes, first match wins.

use crate::outlier::FailureKind;
use std::collections::HashMap;
use std::time::Duration;

/// How a route matches the request host (compared without port, ignoring case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Any host.
    Any,
    /// Exactly this host (stored lower-case).
    Exact(String),
    /// `*.suffix`: any host ending in `.suffix` (stored as `.suffix`, lower-case).
    Suffix(String),
}

impl HostMatch {
    /// Parses `example.com`, `*.example.com` or `*` (a trailing dot, the
    /// root of a fully qualified name, is dropped).
    pub fn parse(s: &str) -> Self {
        let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if s == "*" {
            HostMatch::Any
        } else if let Some(rest) = s.strip_prefix('*') {
            HostMatch::Suffix(rest.to_string())
        } else {
            HostMatch::Exact(s)
        }
    }

    /// True when `host` matches; `a.test.` (fully qualified) is `a.test`.
    pub fn matches(&self, host: Option<&str>) -> bool {
        let host = host.map(|h| h.strip_suffix('.').unwrap_or(h));
        match (self, host) {
            (HostMatch::Any, _) => true,
            (_, None) => false,
            (HostMatch::Exact(e), Some(h)) => h.eq_ignore_ascii_case(e),
            (HostMatch::Suffix(s), Some(h)) => {
                h.len() > s.len() && h.as_bytes()[h.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

impl HostMatch {
    /// True when every host `other` matches, this matches too.
    fn covers(&self, other: &HostMatch) -> bool {
        match (self, other) {
            (HostMatch::Any, _) => true,
            (_, HostMatch::Any) => false,
            (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
            (HostMatch::Exact(_), HostMatch::Suffix(_)) => false,
            (HostMatch::Suffix(s), HostMatch::Exact(h)) => h.len() > s.len() && h.ends_with(s.as_str()),
            (HostMatch::Suffix(s), HostMatch::Suffix(t)) => t.ends_with(s.as_str()),
        }
    }
}

impl PathMatch {
    /// True when every path `other` matches, this matches too.
    fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Any, _) => true,
            (_, PathMatch::Any) => false,
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
            (PathMatch::Prefix(p), PathMatch::Exact(q) | PathMatch::Prefix(q)) => q.starts_with(p.as_str()),
        }
    }
}

impl RouteMatch {
    /// True when this matches every request `other` matches (so a route
    /// with `other` placed after one with this can never match).
    pub fn covers(&self, other: &RouteMatch) -> bool {
        self.host.covers(&other.host)
            && self.path.covers(&other.path)
            && self
                .method
                .as_ref()
                .is_none_or(|m| other.method.as_ref() == Some(m))
            && self.headers.iter().all(|h| other.headers.contains(h))
    }
}

/// How a route matches the request path (without query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// Paths starting with this string.
    Prefix(String),
}

/// Everything a route requires of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Host condition.
    pub host: HostMatch,
    /// Path condition.
    pub path: PathMatch,
    /// Method condition (exact, case-sensitive as methods are).
    pub method: Option<String>,
    /// Header equality conditions: lower-case name, exact value.
    pub headers: Vec<(String, String)>,
}

impl RouteMatch {
    /// True when a request with this host, path (without query) and
    /// method, and whose header fields `header` looks up by lower-case
    /// name, meets every condition.
    pub fn matches<'h>(
        &self,
        host: Option<&str>,
        path: &str,
        method: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> bool {
        self.host.matches(host)
            && match &self.path {
                PathMatch::Any => true,
                PathMatch::Exact(p) => path == p,
                PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            }
            && self.method.as_deref().is_none_or(|x| x == method)
            && self.headers.iter().all(|(n, v)| header(n) == Some(v.as_bytes()))
    }

    /// The conditions in words, for `weft check`.
    pub fn describe(&self) -> String {
        let mut parts = vec![match &self.host {
            HostMatch::Any => "any host".to_string(),
            HostMatch::Exact(h) => format!("host {h}"),
            HostMatch::Suffix(s) => format!("host *{s}"),
        }];
        parts.push(match &self.path {
            PathMatch::Any => "any path".to_string(),
            PathMatch::Exact(p) => format!("path {p}"),
            PathMatch::Prefix(p) => format!("path prefix {p}"),
        });
        if let Some(m) = &self.method {
            parts.push(format!("method {m}"));
        }
        for (n, v) in &self.headers {
            parts.push(format!("header {n} = {v}"));
        }
        parts.join(", ")
    }
}

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One cluster, by index into [`crate::Config::clusters`].
    Cluster(usize),
    /// A weighted split: cluster indices, their weights and the weights' sum.
    Split {
        /// Cluster indices.
        clusters: Vec<usize>,
        /// Weight of each cluster.
        weights: Vec<u32>,
        /// Sum of the weights (positive).
        total: u64,
    },
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its name (`name`; by default its position in its listener, from
    /// 0): the `route` label of its metrics, unique within its listener.
    pub name: String,
    /// Conditions.
    pub matcher: RouteMatch,
    /// Destination.
    pub target: Target,
    /// From the request head's arrival to the response head's departure:
    /// past it, 504 `upstream-timeout`.
    pub timeout: Duration,
    /// When a request goes again, to another endpoint.
    pub retry: RetryPolicy,
    /// Requests a second it takes (`rate_limit = { rps, burst }`); past it,
    /// 429 `rate-limited`.
    pub rate_limit: Option<crate::rate::RateLimit>,
    /// Line of the route in the configuration file, for messages.
    pub line: usize,
}

/// A route's retries (`retry = { attempts, on, per_try_timeout, ... }`,
/// Envoy's names). Each retry goes to another endpoint where one is usable,
/// and only within the cluster's retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts in all, the first included (1: no retry).
    pub attempts: u32,
    /// `connect-failure`: connecting failed (refused, unreachable, timed
    /// out). Nothing was sent, so any method may go again.
    pub connect_failure: bool,
    /// `reset`: the endpoint closed or broke the connection before a
    /// complete response head (idempotent methods only).
    pub reset: bool,
    /// `timeout`: an attempt took longer than `per_try_timeout`
    /// (idempotent methods only).
    pub timeout: bool,
    /// `5xx` or `gateway-error`: statuses that go again (idempotent methods
    /// only; the classes outlier ejection counts as failures); the answer
    /// is dropped unseen.
    pub status: Option<FailureKind>,
    /// `statuses = [...]`: more statuses that go again (400 to 599,
    /// idempotent methods only), Envoy's `retriable_status_codes`.
    pub statuses: StatusSet,
    /// `refused-stream`: an HTTP/2 endpoint refused the stream
    /// (REFUSED_STREAM: nothing was processed, so any method).
    pub refused_stream: bool,
    /// Largest request body kept for a retry (linkerd2-proxy's 64 KiB): an
    /// idempotent request with a body up to this size is read whole before
    /// it goes, so that a retry can send it again; a larger one streams and
    /// is never retried after it was sent.
    pub max_replay_bytes: usize,
    /// Bound of one attempt, below the route's `timeout` (which bounds all
    /// attempts together); none by default.
    pub per_try_timeout: Option<Duration>,
    /// The first retry waits up to this long (full jitter), each further one
    /// up to twice as long as the one before (Envoy: 25 ms).
    pub backoff_base: Duration,
    /// The longest wait before a retry (Envoy: 250 ms).
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// True when a response with `status` goes again.
    pub fn retries_status(&self, status: u16) -> bool {
        self.status.is_some_and(|kind| kind.status_fails(status)) || self.statuses.contains(status)
    }

    /// True when an attempt that reached the endpoint may go again (for an
    /// idempotent request): on a reset, a timeout or a status.
    pub fn retries_after_sending(&self) -> bool {
        self.attempts > 1
            && (self.reset || self.timeout || self.status.is_some() || !self.statuses.is_empty())
    }

    /// The most to wait before retry number `n` (1 for the first): the
    /// base doubled `n - 1` times, at most the maximum. The wait itself is
    /// drawn between zero and this (full jitter).
    pub fn backoff_cap(&self, n: u32) -> Duration {
        let doubled = self
            .backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20));
        doubled.min(self.backoff_max)
    }
}

impl Default for RetryPolicy {
    /// Two attempts on a connect failure only, as nginx's default
    /// `proxy_next_upstream error` does; other conditions are asked for.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            connect_failure: true,
            reset: false,
            timeout: false,
            status: None,
            statuses: StatusSet::default(),
            refused_stream: false,
            max_replay_bytes: 64 * 1024,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }
}

/// A set of statuses from 400 to 599 (a bit each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 4]);

impl StatusSet {
    /// Adds `status` (ignored outside 400..=599).
    pub fn insert(&mut self, status: u16) {
        if let Some(i) = status.checked_sub(400).filter(|i| *i < 200) {
            self.0[usize::from(i / 64)] |= 1 << (i % 64);
        }
    }

    /// True when `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        status
            .checked_sub(400)
            .filter(|i| *i < 200)
            .is_some_and(|i| self.0[usize::from(i / 64)] & (1 << (i % 64)) != 0)
    }

    /// True when no status is in the set.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// The ordered routes of one listener, indexed by host.
///
/// The first route (in configuration order) that matches a request wins.
/// Only the routes that can match the request's host are tried: those for
/// exactly that name (a hash map), those for a `*.suffix` of it (a hash map
/// probed once per dot in the name) and those for any host; among them the
/// lowest index that matches is the answer, as a linear scan would give. A
/// lookup therefore costs the same for 10 hosts as for 10,000 (Envoy's
/// virtual hosts work the same way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Routes in configuration order.
    routes: Vec<Route>,
    /// Indices of the routes for each exact host (lower-case, no trailing
    /// dot), ascending.
    exact: HashMap<Box<str>, Vec<u32>>,
    /// Indices of the routes for each `*.suffix` (key `.suffix`), ascending.
    suffix: HashMap<Box<str>, Vec<u32>>,
    /// Indices of the routes tried for every host, ascending: any host, and
    /// suffixes that do not start at a dot (`*foo.test`).
    rest: Vec<u32>,
}

impl RouteTable {
    /// A table of `routes`, in this order.
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Self {
        let mut t = RouteTable::default();
        for r in routes {
            t.push(r);
        }
        t
    }

    /// Adds `route` after the others.
    pub fn push(&mut self, route: Route) {
        let i = u32::try_from(self.routes.len()).expect("fewer than 2^32 routes");
        // Keys lower-case, as lookups are (`HostMatch::parse` stores them
        // so; a route built otherwise still lands where it matches).
        match &route.matcher.host {
            HostMatch::Exact(h) => self
                .exact
                .entry(h.to_ascii_lowercase().into())
                .or_default()
                .push(i),
            HostMatch::Suffix(s) if s.starts_with('.') => self
                .suffix
                .entry(s.to_ascii_lowercase().into())
                .or_default()
                .push(i),
            HostMatch::Suffix(_) | HostMatch::Any => self.rest.push(i),
        }
        self.routes.push(route);
    }

    /// The routes, in configuration order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when the table has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first route matching the request, if any. `header` looks up a
    /// request header by lower-case name.
    pub fn find<'h>(
        &self,
        host: Option<&str>,
        path: &str,
        method: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Option<&Route> {
        self.find_indexed(host, path, method, header).map(|(_, r)| r)
    }

    /// As [`RouteTable::find`], with the route's index in the table.
    pub fn find_indexed<'h>(
        &self,
        host: Option<&str>,
        path: &str,
        method: &str,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Option<(usize, &Route)> {
        let mut best = usize::MAX;
        let mut first_in = |list: &[u32]| {
            for &i in list {
                let i = i as usize;
                if i >= best {
                    return;
                }
                if self.routes[i].matcher.matches(host, path, method, &header) {
                    best = i;
                    return;
                }
            }
        };
        if let Some(host) = host {
            let mut buf = [0u8; 256];
            let owned;
            let name = host.strip_suffix('.').unwrap_or(host);
            let lower: &str = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                if name.len() <= buf.len() {
                    let b = &mut buf[..name.len()];
                    b.copy_from_slice(name.as_bytes());
                    b.make_ascii_lowercase();
                    // ASCII case changes keep UTF-8 valid.
                    std::str::from_utf8(b).unwrap_or(name)
                } else {
                    owned = name.to_ascii_lowercase();
                    &owned
                }
            } else {
                name
            };
            self.for_each_list(lower, &mut first_in);
        }
        first_in(&self.rest);
        self.routes.get(best).map(|r| (best, r))
    }

    /// Calls `f` with each indexed list of routes for `host` (lower-case,
    /// without a trailing dot): its exact routes, then those of each
    /// `*.suffix` it has. The routes for any host are not included.
    fn for_each_list(&self, host: &str, f: &mut impl FnMut(&[u32])) {
        if let Some(list) = self.exact.get(host) {
            f(list);
        }
        if self.suffix.is_empty() {
            return;
        }
        // `*.b.test` matches `a.b.test` but not `.b.test`: a suffix starts
        // at a dot that is not the first byte.
        for (i, b) in host.bytes().enumerate().skip(1) {
            if b == b'.' {
                if let Some(list) = self.suffix.get(&host[i..]) {
                    f(list);
                }
            }
        }
    }

    /// The earlier routes that may cover route `j` (match every request it
    /// does): those an index lookup of its host would try. For the
    /// unreachable-route warnings, without comparing every pair of routes.
    pub fn may_cover(&self, j: usize) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        let mut add = |list: &[u32]| out.extend(list.iter().map(|&i| i as usize).take_while(|&i| i < j));
        match self.routes.get(j).map(|r| &r.matcher.host) {
            Some(HostMatch::Exact(h)) => self.for_each_list(&h.to_ascii_lowercase(), &mut add),
            // A suffix is covered by itself or a shorter suffix of it that
            // starts at a dot.
            Some(HostMatch::Suffix(s)) => {
                let s = s.to_ascii_lowercase();
                for (i, b) in s.bytes().enumerate() {
                    if b == b'.' {
                        if let Some(list) = self.suffix.get(&s[i..]) {
                            add(list);
                        }
                    }
                }
            }
            _ => {}
        }
        add(&self.rest);
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_matchers() {
        let m = |host: &str, path: PathMatch, method: Option<&str>, headers: &[(&str, &str)]| {
            route(host, path, method, headers, 0).matcher
        };
        let any = m("*", PathMatch::Any, None, &[]);
        let v1 = m("api.test", PathMatch::Prefix("/v1".into()), None, &[]);
        let v1x = m(
            "api.test",
            PathMatch::Exact("/v1/x".into()),
            Some("GET"),
            &[("x-a", "1")],
        );
        assert!(any.covers(&v1) && v1.covers(&v1x));
        assert!(!v1.covers(&any) && !v1x.covers(&v1));
        // A header or method condition narrows: it covers only what has it.
        let canary = m("api.test", PathMatch::Prefix("/v1".into()), None, &[("x-a", "1")]);
        assert!(!canary.covers(&v1) && canary.covers(&v1x));
        assert!(m("*.test", PathMatch::Any, None, &[]).covers(&v1));
        assert!(!m("*.test", PathMatch::Any, None, &[]).covers(&m("test", PathMatch::Any, None, &[])));
        assert!(!m("*", PathMatch::Any, Some("POST"), &[]).covers(&v1x));
    }

    #[test]
    fn a_fully_qualified_host_matches_its_name() {
        let exact = HostMatch::parse("a.test");
        assert!(exact.matches(Some("a.test.")) && exact.matches(Some("A.Test")));
        assert!(!exact.matches(Some("a.test..")) && !exact.matches(Some("a.tes")));
        assert!(HostMatch::parse("*.test").matches(Some("a.test.")));
        assert!(HostMatch::parse("a.test.").matches(Some("a.test")));
    }

    fn route(host: &str, path: PathMatch, method: Option<&str>, headers: &[(&str, &str)], c: usize) -> Route {
        Route {
            name: String::new(),
            matcher: RouteMatch {
                host: HostMatch::parse(host),
                path,
                method: method.map(str::to_string),
                headers: headers
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            },
            target: Target::Cluster(c),
            retry: RetryPolicy::default(),
            rate_limit: None,
            timeout: Duration::from_secs(15),
            line: 0,
        }
    }

    /// A request's header lookup over `(name, value)` pairs.
    fn fields<'a>(hdrs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        |n| hdrs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_bytes())
    }

    fn pick(
        t: &RouteTable,
        host: Option<&str>,
        path: &str,
        method: &str,
        hdrs: &[(&str, &str)],
    ) -> Option<usize> {
        t.find(host, path, method, fields(hdrs)).map(|r| match r.target {
            Target::Cluster(c) => c,
            _ => usize::MAX,
        })
    }

    #[test]
    fn first_match_wins() {
        let t = RouteTable::new(vec![
            route(
                "api.example.com",
                PathMatch::Prefix("/v1".into()),
                None,
                &[("x-canary", "1")],
                0,
            ),
            route("api.example.com", PathMatch::Prefix("/v1".into()), None, &[], 1),
            route(
                "*.example.com",
                PathMatch::Exact("/health".into()),
                Some("GET"),
                &[],
                2,
            ),
            route("*", PathMatch::Any, None, &[], 3),
        ]);
        assert_eq!(
            pick(&t, Some("API.example.com"), "/v1/x", "GET", &[("x-canary", "1")]),
            Some(0)
        );
        assert_eq!(
            pick(&t, Some("api.example.com"), "/v1/x", "GET", &[("x-canary", "2")]),
            Some(1)
        );
        assert_eq!(pick(&t, Some("a.example.com"), "/health", "GET", &[]), Some(2));
        assert_eq!(pick(&t, Some("a.example.com"), "/health", "POST", &[]), Some(3));
        assert_eq!(pick(&t, Some("example.com"), "/health", "GET", &[]), Some(3));
        assert_eq!(pick(&t, None, "/", "GET", &[]), Some(3));
    }

    #[test]
    fn no_match() {
        let t = RouteTable::new(vec![route("a", PathMatch::Exact("/x".into()), None, &[], 0)]);
        assert_eq!(pick(&t, Some("a"), "/y", "GET", &[]), None);
        assert_eq!(pick(&t, Some("b"), "/x", "GET", &[]), None);
    }

    /// The first matching route by trying every route in order: what the
    /// index must answer.
    fn scan(
        t: &RouteTable,
        host: Option<&str>,
        path: &str,
        method: &str,
        hdrs: &[(&str, &str)],
    ) -> Option<usize> {
        t.routes()
            .iter()
            .position(|r| r.matcher.matches(host, path, method, fields(hdrs)))
    }

    #[test]
    fn the_index_answers_as_a_scan_of_every_route() {
        let mut rng = crate::balance::Rng::new(7);
        let names = [
            "a.test",
            "b.a.test",
            "x.b.a.test",
            "test",
            "a.other",
            "ab.test",
            "A.Test.",
        ];
        let hosts = [
            "a.test",
            "*.a.test",
            "*.test",
            "*test",
            "*",
            "b.a.test",
            "*.b.a.test",
            "ab.test",
            "test",
        ];
        let paths = [
            PathMatch::Any,
            PathMatch::Prefix("/v".into()),
            PathMatch::Exact("/v1".into()),
        ];
        for _ in 0..300 {
            let n = 1 + rng.below(12);
            let t = RouteTable::new((0..n).map(|c| {
                let mut r = route(
                    hosts[rng.below(hosts.len())],
                    paths[rng.below(paths.len())].clone(),
                    (rng.below(4) == 0).then_some("POST"),
                    if rng.below(4) == 0 { &[("x-a", "1")] } else { &[] },
                    c,
                );
                r.line = c;
                // Some built without `HostMatch::parse`, in upper case.
                if rng.below(3) == 0 {
                    r.matcher.host = match r.matcher.host {
                        HostMatch::Exact(h) => HostMatch::Exact(h.to_ascii_uppercase()),
                        HostMatch::Suffix(s) => HostMatch::Suffix(s.to_ascii_uppercase()),
                        HostMatch::Any => HostMatch::Any,
                    };
                }
                r
            }));
            for host in names.iter().map(Some).chain([None]) {
                for path in ["/", "/v1", "/v2"] {
                    for method in ["GET", "POST"] {
                        for hdrs in [&[][..], &[("x-a", "1")][..]] {
                            let found = t.find(host.copied(), path, method, |n| {
                                hdrs.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_bytes())
                            });
                            assert_eq!(
                                found.map(|r| r.line),
                                scan(&t, host.copied(), path, method, hdrs),
                                "{host:?} {path} {method} {hdrs:?} in {:#?}",
                                t.routes()
                                    .iter()
                                    .map(|r| r.matcher.describe())
                                    .collect::<Vec<_>>()
                            );
                        }
                    }
                }
            }
            // The candidates for the unreachable-route warnings include
            // every earlier route that covers a later one.
            for j in 0..n {
                let may = t.may_cover(j);
                for i in 0..j {
                    if t.routes()[i].matcher.covers(&t.routes()[j].matcher) {
                        assert!(may.contains(&i), "{i} covers {j} but is not a candidate");
                    }
                }
            }
        }
    }
}
