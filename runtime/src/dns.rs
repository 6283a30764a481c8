//! Endpoints given by host name, resolved again every `dns_refresh` of
//! their cluster (Envoy's `dns_refresh_rate`, LOGICAL_DNS: a host name
//! stands for its first address). A changed address is taken as a reload
//! of the running configuration with the new address: the cluster's
//! other endpoints keep their pools and state, requests in flight finish
//! where they are.
//!
//! One thread resolves, off every worker (the system resolver blocks).

use crate::reload::Reload;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weft_core::Config;

/// How often the thread looks at the running configuration.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The host names of `config` to resolve again: per cluster with a
/// `dns_refresh`, its endpoints written as a name (not an address).
fn hosts(config: &Config) -> Vec<(String, Duration, Vec<String>)> {
    config
        .clusters
        .iter()
        .filter_map(|c| {
            let every = c.dns_refresh?;
            let names: Vec<String> = c
                .authorities
                .iter()
                .filter(|a| a.parse::<SocketAddr>().is_err())
                .cloned()
                .collect();
            (!names.is_empty()).then(|| (c.name.clone(), every, names))
        })
        .collect()
}

/// `config` with the addresses of `resolved` (host name as written: its
/// first address now), and what changed, one line each; `None` when
/// nothing did. A cluster where two endpoints would now share an address
/// keeps its old ones (and says so).
pub fn refreshed(config: &Config, resolved: &HashMap<String, SocketAddr>) -> Option<(Config, Vec<String>)> {
    let mut next = config.clone();
    let mut changes = Vec::new();
    for c in next.clusters.iter_mut().filter(|c| c.dns_refresh.is_some()) {
        let mut endpoints = c.endpoints.clone();
        let mut what = Vec::new();
        for (i, name) in c.authorities.iter().enumerate() {
            match resolved.get(name) {
                Some(addr) if *addr != endpoints[i] => {
                    what.push(format!(
                        "cluster `{}`: `{name}` is {addr} now (was {})",
                        c.name, endpoints[i]
                    ));
                    endpoints[i] = *addr;
                }
                _ => {}
            }
        }
        if what.is_empty() {
            continue;
        }
        let mut seen = endpoints.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != endpoints.len() {
            tracing::warn!(
                "cluster `{}`: two endpoints resolve to one address now; keeping the addresses it has",
                c.name
            );
            continue;
        }
        c.endpoints = endpoints;
        changes.extend(what);
    }
    (!changes.is_empty()).then_some((next, changes))
}

/// What resolves `host:port` to its addresses (the system resolver is
/// [`crate::load::resolve`]).
pub type Resolver = std::sync::Arc<dyn Fn(&str) -> Result<Vec<SocketAddr>, String> + Send + Sync>;

/// Starts the resolving thread; it ends when `stop` is dropped or sent to.
/// It looks at the running configuration every second (a reload may add
/// host names) and resolves what is due.
pub(crate) fn start(
    reload: Reload,
    resolver: Resolver,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weft-dns".into())
        .spawn(move || run(&reload, &*resolver, &stop))
}

fn run(
    reload: &Reload,
    resolve: &(dyn Fn(&str) -> Result<Vec<SocketAddr>, String> + Send + Sync),
    stop: &Receiver<()>,
) {
    // When each cluster (by name) is due.
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        let now = Instant::now();
        let wanted = hosts(&reload.config());
        let mut names = Vec::new();
        let mut next = now + LOOK_EVERY;
        for (cluster, every, hosts) in &wanted {
            let at = *due.entry(cluster.clone()).or_insert(now + *every);
            if at <= now {
                names.extend(hosts.iter().cloned());
                due.insert(cluster.clone(), now + *every);
                next = next.min(now + *every);
            } else {
                next = next.min(at);
            }
        }
        due.retain(|name, _| wanted.iter().any(|(c, _, _)| c == name));
        if !names.is_empty() {
            let mut resolved = HashMap::new();
            for name in names {
                match resolve(&name) {
                    Ok(addrs) if !addrs.is_empty() => {
                        resolved.insert(name, addrs[0]);
                    }
                    // Kept as it is: a failing resolver is no reason to
                    // drop an endpoint.
                    Ok(_) => tracing::warn!("dns_refresh: `{name}` resolved to no address; keeping its last"),
                    Err(e) => {
                        tracing::warn!("dns_refresh: cannot resolve `{name}`: {e}; keeping its last address")
                    }
                }
            }
            let applied = reload.apply_with(|config| {
                let (next, changes) = refreshed(config, &resolved)?;
                for c in changes {
                    tracing::info!("dns_refresh: {c}");
                }
                Some(next)
            });
            if let Some(Err(e)) = applied {
                tracing::warn!("dns_refresh: {e}");
            }
        }
        match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(refresh: &str) -> Config {
        let src = format!(
            "[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n\
             [[cluster]]\nname = \"c\"\nendpoints = [\"one.test:80\", \"127.0.0.1:9\", \"two.test:80\"]\n{refresh}\n"
        );
        let resolve = |s: &str| -> Result<Vec<SocketAddr>, String> {
            Ok(vec![match s {
                "one.test:80" => "10.0.0.1:80".parse().expect("address"),
                "two.test:80" => "10.0.0.2:80".parse().expect("address"),
                other => other.parse().map_err(|_| "unknown".to_string())?,
            }])
        };
        Config::parse(&src, &resolve).expect("valid")
    }

    #[test]
    fn a_changed_address_is_taken_and_said() {
        let c = config("");
        assert_eq!(c.clusters[0].dns_refresh, Some(Duration::from_secs(5)));
        assert_eq!(
            hosts(&c)[0].2,
            vec!["one.test:80".to_string(), "two.test:80".to_string()]
        );
        let same: HashMap<_, _> =
            [("one.test:80".to_string(), "10.0.0.1:80".parse().expect("address"))].into();
        assert!(refreshed(&c, &same).is_none(), "nothing changed");
        let moved: HashMap<_, _> =
            [("two.test:80".to_string(), "10.0.0.3:80".parse().expect("address"))].into();
        let (next, changes) = refreshed(&c, &moved).expect("a change");
        assert_eq!(
            next.clusters[0].endpoints[2],
            "10.0.0.3:80".parse().expect("address")
        );
        assert_eq!(next.clusters[0].endpoints[0], c.clusters[0].endpoints[0]);
        assert_eq!(
            changes,
            vec!["cluster `c`: `two.test:80` is 10.0.0.3:80 now (was 10.0.0.2:80)".to_string()]
        );
        // Two endpoints on one address: the cluster keeps what it has.
        let clash: HashMap<_, _> =
            [("two.test:80".to_string(), "127.0.0.1:9".parse().expect("address"))].into();
        assert!(refreshed(&c, &clash).is_none());
    }

    #[test]
    fn off_means_never() {
        let c = config("dns_refresh = \"0s\"");
        assert_eq!(c.clusters[0].dns_refresh, None);
        assert!(hosts(&c).is_empty());
        let moved: HashMap<_, _> =
            [("two.test:80".to_string(), "10.0.0.3:80".parse().expect("address"))].into();
        assert!(refreshed(&c, &moved).is_none());
    }
}
