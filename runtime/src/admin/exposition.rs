//! The workers' snapshots as text: Prometheus's text exposition format
//! (version 0.0.4) for `/metrics`, and a line per endpoint fact for
//! `/clusters`. Linkerd's metric names where they fit, so that its
//! dashboards read weft.

use super::WorkerSnapshot;
use crate::health::HealthTable;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use weft_core::metrics::{Histogram, Metrics, ResponseSeries};
use weft_core::Config;

/// Every worker's metrics added up, shaped after `current`.
fn total(current: &Config, snaps: &[(usize, WorkerSnapshot)]) -> Metrics {
    let mut total = Metrics::new(current);
    for (_, s) in snaps {
        total.merge(&s.metrics);
    }
    total
}

/// The snapshots shaped after `current`: one taken before a reload (or a
/// worker's last answer) has its listeners, routes and clusters follow
/// their names, its endpoints their addresses.
pub(super) fn reshaped(
    current: &Arc<Config>,
    snaps: Vec<(usize, WorkerSnapshot)>,
) -> Vec<(usize, WorkerSnapshot)> {
    snaps
        .into_iter()
        .map(|(w, s)| {
            if Arc::ptr_eq(&s.config, current) {
                return (w, s);
            }
            let old = &*s.config;
            let mut metrics = s.metrics;
            metrics.reshape(old, current);
            let connections = current
                .listeners
                .iter()
                .map(|l| {
                    old.listeners
                        .iter()
                        .position(|o| o.name == l.name)
                        .and_then(|i| s.connections.get(i).copied())
                        .unwrap_or_default()
                })
                .collect();
            let endpoints = current
                .clusters
                .iter()
                .enumerate()
                .map(|(ci, c)| {
                    (0..c.endpoints.len())
                        .map(|ei| {
                            weft_core::metrics::same_endpoint(current, old, ci, ei)
                                .and_then(|(oc, oi)| s.endpoints.get(oc)?.get(oi).copied())
                                .unwrap_or_default()
                        })
                        .collect()
                })
                .collect();
            let s = WorkerSnapshot {
                metrics,
                connections,
                endpoints,
                log_dropped: s.log_dropped,
                config: current.clone(),
            };
            (w, s)
        })
        .collect()
}

/// `/metrics`: the sum of every worker's metrics (and the overhead
/// histogram per worker).
/// `snaps`: shaped after the configuration in force ([`reshaped`]).
pub(super) fn render(
    reload: &crate::reload::Reload,
    config: &Config,
    snaps: &[(usize, WorkerSnapshot)],
) -> String {
    let total = total(config, snaps);
    let mut out = String::with_capacity(4096);
    let o = &mut out;

    // Requests and responses, per listener and route.
    let route_label = |li: usize, ri: usize| -> (String, String) {
        let l = &config.listeners[li];
        let route = l.routes.routes().get(ri).map_or("", |r| r.name.as_str());
        (esc(&l.name), esc(route))
    };
    let cluster_label = |c: Option<usize>| {
        c.and_then(|c| config.clusters.get(c))
            .map_or(String::new(), |c| esc(&c.name))
    };
    let series = || {
        total.routes.iter().enumerate().flat_map(|(li, routes)| {
            routes
                .iter()
                .enumerate()
                .flat_map(move |(ri, slot)| slot.iter().map(move |s| (li, ri, s)))
        })
    };

    header(
        o,
        "request_total",
        "counter",
        "Requests that ended, per listener, route (empty: none took it) and cluster.",
    );
    let mut requests: BTreeMap<(usize, usize, Option<usize>), u64> = BTreeMap::new();
    for (li, ri, s) in series() {
        *requests.entry((li, ri, s.cluster)).or_default() += s.count;
    }
    for ((li, ri, c), n) in &requests {
        let (l, r) = route_label(*li, *ri);
        let _ = writeln!(
            o,
            "request_total{{listener=\"{l}\",route=\"{r}\",cluster=\"{}\"}} {n}",
            cluster_label(*c)
        );
    }

    header(
        o,
        "response_total",
        "counter",
        "Requests that ended, per status sent (empty: none), success or failure, and weft-error code.",
    );
    for (li, ri, s) in series() {
        let _ = writeln!(
            o,
            "response_total{{{}}} {}",
            response_labels(&route_label(li, ri), &cluster_label(s.cluster), s),
            s.count
        );
    }

    header(
        o,
        "response_latency_ms",
        "histogram",
        "Time from a request head's arrival to its response head (the upstream's, or weft's own answer), in milliseconds.",
    );
    for (li, ri, s) in series() {
        let labels = response_labels(&route_label(li, ri), &cluster_label(s.cluster), s);
        histogram(o, "response_latency_ms", &labels, &s.latency, 1_000);
    }

    header(
        o,
        "proxy_overhead_us",
        "histogram",
        "Time a request spent inside weft itself, per worker: from its head's arrival to its end, less the wait for the upstream's response head, in microseconds.",
    );
    for (worker, s) in snaps {
        histogram(
            o,
            "proxy_overhead_us",
            &format!("worker=\"{worker}\""),
            &s.metrics.overhead,
            1,
        );
    }

    // Connections and bytes, per listener.
    let per_listener = |f: &dyn Fn(&WorkerSnapshot, usize) -> u64| -> Vec<u64> {
        (0..config.listeners.len())
            .map(|li| snaps.iter().map(|(_, s)| f(s, li)).sum())
            .collect()
    };
    let opened = per_listener(&|s, li| s.connections.get(li).map_or(0, |c| c.0));
    let open = per_listener(&|s, li| s.connections.get(li).map_or(0, |c| c.1));
    let listener_rows = |o: &mut String, name: &str, kind: &str, help: &str, values: &[u64]| {
        header(o, name, kind, help);
        for (l, v) in config.listeners.iter().zip(values) {
            let _ = writeln!(o, "{name}{{listener=\"{}\"}} {v}", esc(&l.name));
        }
    };
    header(
        o,
        "config_generation",
        "gauge",
        "The configuration in force: 1 at start, one more per reload applied.",
    );
    let _ = writeln!(o, "config_generation {}", reload.generation());
    header(
        o,
        "config_reload_failures_total",
        "counter",
        "Reloads refused: a bad file, or a change a reload cannot apply (the running configuration stayed).",
    );
    let _ = writeln!(o, "config_reload_failures_total {}", reload.failures());
    header(
        o,
        "access_log_dropped_lines_total",
        "counter",
        "Access log lines dropped because the writer could not keep up.",
    );
    let dropped: u64 = snaps.iter().map(|(_, s)| s.log_dropped).sum();
    let _ = writeln!(o, "access_log_dropped_lines_total {dropped}");
    listener_rows(
        o,
        "tcp_open_total",
        "counter",
        "Client connections accepted.",
        &opened,
    );
    let closed: Vec<u64> = opened
        .iter()
        .zip(&open)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    listener_rows(
        o,
        "tcp_close_total",
        "counter",
        "Client connections closed.",
        &closed,
    );
    listener_rows(
        o,
        "tcp_open_connections",
        "gauge",
        "Client connections open now.",
        &open,
    );
    let read: Vec<u64> = total.listeners.iter().map(|l| l.read_bytes).collect();
    let written: Vec<u64> = total.listeners.iter().map(|l| l.write_bytes).collect();
    listener_rows(
        o,
        "tcp_read_bytes_total",
        "counter",
        "Request bytes read from clients (heads and bodies, after TLS), counted when each request ends.",
        &read,
    );
    listener_rows(
        o,
        "tcp_write_bytes_total",
        "counter",
        "Response bytes written to clients (heads and bodies, before TLS), counted when each request ends.",
        &written,
    );

    // Clusters and endpoints.
    header(
        o,
        "retry_total",
        "counter",
        "Attempts beyond each request's first, per cluster.",
    );
    for (c, stats) in config.clusters.iter().zip(&total.clusters) {
        let _ = writeln!(o, "retry_total{{cluster=\"{}\"}} {}", esc(&c.name), stats.retries);
    }
    let endpoint_rows =
        |o: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(usize, usize) -> u64| {
            header(o, name, kind, help);
            for (ci, c) in config.clusters.iter().enumerate() {
                for (ei, addr) in c.endpoints.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "{name}{{cluster=\"{}\",endpoint=\"{addr}\"}} {}",
                        esc(&c.name),
                        value(ci, ei)
                    );
                }
            }
        };
    let stat = |ci: usize, ei: usize| {
        total
            .clusters
            .get(ci)
            .and_then(|c| c.endpoints.get(ei))
            .cloned()
            .unwrap_or_default()
    };
    let now = |ci: usize, ei: usize, f: &dyn Fn(&super::EndpointNow) -> u64| -> u64 {
        snaps
            .iter()
            .filter_map(|(_, s)| s.endpoints.get(ci).and_then(|c| c.get(ei)))
            .map(f)
            .sum()
    };
    endpoint_rows(
        o,
        "endpoint_request_total",
        "counter",
        "Requests whose last attempt went to the endpoint.",
        &|c, e| stat(c, e).requests,
    );
    endpoint_rows(
        o,
        "endpoint_failure_total",
        "counter",
        "Attempts that counted against the endpoint (connect failure, reset, timeout, failing status).",
        &|c, e| stat(c, e).failures,
    );
    endpoint_rows(
        o,
        "endpoint_ejection_total",
        "counter",
        "Times outlier detection ejected the endpoint (each worker decides for itself).",
        &|c, e| stat(c, e).ejections,
    );
    endpoint_rows(
        o,
        "endpoint_ejected",
        "gauge",
        "Workers that have the endpoint ejected now.",
        &|c, e| now(c, e, &|n| u64::from(n.ejected)),
    );
    endpoint_rows(
        o,
        "endpoint_in_flight",
        "gauge",
        "Requests in flight to the endpoint.",
        &|c, e| now(c, e, &|n| u64::from(n.in_flight)),
    );
    endpoint_rows(
        o,
        "pool_idle_connections",
        "gauge",
        "Idle pooled HTTP/1.1 connections to the endpoint.",
        &|c, e| now(c, e, &|n| n.idle as u64),
    );
    endpoint_rows(
        o,
        "http2_connections",
        "gauge",
        "HTTP/2 connections to the endpoint.",
        &|c, e| now(c, e, &|n| n.h2 as u64),
    );
    endpoint_rows(
        o,
        "http2_streams",
        "gauge",
        "Streams open on HTTP/2 connections to the endpoint.",
        &|c, e| now(c, e, &|n| u64::from(n.h2_streams)),
    );
    out
}

/// `/clusters`: a line per endpoint fact, `cluster::endpoint::fact::value`
/// (Envoy's layout).
/// `snaps`: shaped after `config` ([`reshaped`]).
pub(super) fn clusters(config: &Config, snaps: &[(usize, WorkerSnapshot)], health: &HealthTable) -> String {
    let total = total(config, snaps);
    let mut out = String::new();
    for (ci, c) in config.clusters.iter().enumerate() {
        for (ei, addr) in c.endpoints.iter().enumerate() {
            let nows: Vec<_> = snaps
                .iter()
                .filter_map(|(_, s)| s.endpoints.get(ci).and_then(|c| c.get(ei)))
                .collect();
            let sum = |f: &dyn Fn(&super::EndpointNow) -> u64| -> u64 { nows.iter().map(|n| f(n)).sum() };
            let rtt = nows.iter().map(|n| n.rtt_us).max().unwrap_or(0);
            let stats = total
                .clusters
                .get(ci)
                .and_then(|c| c.endpoints.get(ei))
                .cloned()
                .unwrap_or_default();
            let name = &c.name;
            let facts: [(&str, String); 10] = [
                ("healthy", health.healthy(ci, ei).to_string()),
                ("ejected_workers", sum(&|n| u64::from(n.ejected)).to_string()),
                ("in_flight", sum(&|n| u64::from(n.in_flight)).to_string()),
                ("idle_connections", sum(&|n| n.idle as u64).to_string()),
                ("http2_connections", sum(&|n| n.h2 as u64).to_string()),
                ("http2_streams", sum(&|n| u64::from(n.h2_streams)).to_string()),
                ("rtt_estimate_us", rtt.to_string()),
                ("requests", stats.requests.to_string()),
                ("failures", stats.failures.to_string()),
                ("ejections", stats.ejections.to_string()),
            ];
            for (fact, value) in facts {
                let _ = writeln!(out, "{name}::{addr}::{fact}::{value}");
            }
        }
    }
    out
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The labels of a response series: listener, route, cluster, status,
/// classification and error.
fn response_labels(route: &(String, String), cluster: &str, s: &ResponseSeries) -> String {
    let status = s.status.map_or(String::new(), |s| s.to_string());
    let class = if s.success { "success" } else { "failure" };
    format!(
        "listener=\"{}\",route=\"{}\",cluster=\"{cluster}\",status_code=\"{status}\",classification=\"{class}\",error=\"{}\"",
        route.0,
        route.1,
        s.error.unwrap_or("")
    )
}

/// A histogram's cumulative buckets, sum and count; values and bounds are
/// in microseconds, shown divided by `unit`.
fn histogram(o: &mut String, name: &str, labels: &str, h: &Histogram, unit: u64) {
    let mut cumulative = 0;
    for (bound, n) in h.bounds().iter().zip(h.counts()) {
        cumulative += n;
        let _ = writeln!(
            o,
            "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
            bound / unit
        );
    }
    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count());
    let sum = h.sum() as f64 / unit as f64;
    let _ = writeln!(o, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(o, "{name}_count{{{labels}}} {}", h.count());
}

/// A label value escaped as the format asks: backslash, quote, newline.
fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(esc("plain"), "plain");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1_000, 2_000]);
        h.observe(500);
        h.observe(1_500);
        h.observe(9_000);
        let mut o = String::new();
        histogram(&mut o, "x", "a=\"1\"", &h, 1_000);
        assert_eq!(
            o,
            "x_bucket{a=\"1\",le=\"1\"} 1\nx_bucket{a=\"1\",le=\"2\"} 2\nx_bucket{a=\"1\",le=\"+Inf\"} 3\nx_sum{a=\"1\"} 11\nx_count{a=\"1\"} 3\n"
        );
    }
}
