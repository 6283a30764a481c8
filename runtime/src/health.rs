//! Active health checks: one prober thread per process asks every endpoint
//! of every cluster with `health_check = { ... }` for its health path, and
//! publishes each endpoint's standing in a table every worker reads.
//!
//! One prober, not one per worker, so that probe traffic does not grow with
//! the number of cores. The table is written only by the prober; workers
//! read it with relaxed loads, and only for a cluster that has an endpoint
//! down (one load per pick otherwise).

use crate::io::read_more;
use crate::shutdown::Shutdown;
use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use weft_core::health::{status_passes, Health, HealthSettings};
use weft_core::Config;
use weft_proto::{parse_response, Limits};

/// Every endpoint's standing with the prober, per cluster: written by the
/// prober thread, read by every worker.
#[derive(Default)]
pub struct HealthTable {
    clusters: Vec<ClusterHealth>,
}

#[derive(Default)]
struct ClusterHealth {
    /// Endpoints failing their health check now.
    down: AtomicUsize,
    /// Per endpoint: passes its health check (or has none).
    up: Box<[AtomicBool]>,
    /// Per endpoint: its standing came from the configuration before a
    /// reload (its probes go on from it, not from scratch).
    carried: Box<[AtomicBool]>,
}

impl HealthTable {
    /// Every endpoint of `config` healthy.
    pub fn new(config: &Config) -> Self {
        HealthTable {
            clusters: config
                .clusters
                .iter()
                .map(|c| ClusterHealth {
                    down: AtomicUsize::new(0),
                    up: c.endpoints.iter().map(|_| AtomicBool::new(true)).collect(),
                    carried: c.endpoints.iter().map(|_| AtomicBool::new(false)).collect(),
                })
                .collect(),
        }
    }

    /// The table of `config` after a reload from `old`: an endpoint of a
    /// cluster of the same name at the same address keeps its standing
    /// (a reload is no reason to send traffic to one known down).
    pub fn carried(config: &Config, old: &Config, table: &HealthTable) -> Self {
        let t = HealthTable::new(config);
        let by_name: std::collections::HashMap<&str, usize> = old
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        for (c, cluster) in config.clusters.iter().enumerate() {
            let Some(&oc) = by_name.get(cluster.name.as_str()) else {
                continue;
            };
            if old.clusters[oc].health_check.is_none() || cluster.health_check.is_none() {
                continue;
            }
            for (i, addr) in cluster.endpoints.iter().enumerate() {
                if let Some(oi) = old.clusters[oc].endpoints.iter().position(|a| a == addr) {
                    t.set(c, i, table.healthy(oc, oi));
                    t.clusters[c].carried[i].store(true, Ordering::Relaxed);
                }
            }
        }
        t
    }

    /// True when some endpoint of cluster `c` fails its health check.
    pub fn any_down(&self, c: usize) -> bool {
        self.clusters
            .get(c)
            .is_some_and(|h| h.down.load(Ordering::Relaxed) > 0)
    }

    /// True unless endpoint `i` of cluster `c` fails its health check.
    pub fn healthy(&self, c: usize, i: usize) -> bool {
        self.clusters
            .get(c)
            .and_then(|h| h.up.get(i))
            .is_none_or(|u| u.load(Ordering::Relaxed))
    }

    /// Sets the standing of endpoint `i` of cluster `c` (the prober's
    /// write; tests call it too).
    pub fn set(&self, c: usize, i: usize, healthy: bool) {
        let Some(h) = self.clusters.get(c) else {
            return;
        };
        let Some(up) = h.up.get(i) else {
            return;
        };
        if up.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                h.down.fetch_sub(1, Ordering::Relaxed);
            } else {
                h.down.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The prober thread of one configuration's clusters.
pub(crate) struct Prober {
    thread: JoinHandle<()>,
    stop: Shutdown,
}

impl Prober {
    /// Stops the prober and waits for its thread.
    pub fn stop(self) {
        self.stop.fire();
        let _ = self.thread.join();
    }
}

/// Starts the prober thread when some cluster has a health check. It stops
/// when `shutdown` fires (weft's end) or [`Prober::stop`] is called (a
/// reload replaced it).
/// `tls`: per cluster, its TLS material (probes of a TLS cluster go over
/// TLS, as its requests do).
pub fn start(
    config: &Arc<Config>,
    table: &Arc<HealthTable>,
    tls: Vec<Option<crate::tls::ClientMaterial>>,
    shutdown: Shutdown,
) -> std::io::Result<Option<Prober>> {
    if config.clusters.iter().all(|c| c.health_check.is_none()) {
        return Ok(None);
    }
    let (config, table) = (config.clone(), table.clone());
    let stop = Shutdown::new();
    let stopped = stop.clone();
    // The thread says whether its runtime runs: without it, checks that
    // were asked for would silently be off.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("weft-health".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let mut rt = match rt {
                Ok(rt) => {
                    let _ = ready_tx.send(Ok(()));
                    rt
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                for (c, cluster) in config.clusters.iter().enumerate() {
                    let Some(s) = &cluster.health_check else {
                        continue;
                    };
                    // Checked at start: these do not fail here.
                    let client = tls
                        .get(c)
                        .and_then(Option::as_ref)
                        .and_then(|m| crate::tls::client_config(m).ok());
                    let sni = cluster.tls.as_ref().and_then(|t| t.sni.as_deref());
                    for (i, (addr, authority)) in
                        cluster.endpoints.iter().zip(&cluster.authorities).enumerate()
                    {
                        let tls = client.as_ref().and_then(|cfg| {
                            crate::tls::server_name(sni, authority)
                                .ok()
                                .map(|name| (cfg.clone(), name))
                        });
                        let target = Target {
                            cluster: cluster.name.clone(),
                            c,
                            i,
                            addr: *addr,
                            request: request(s, authority),
                            tls,
                        };
                        monoio::spawn(watch(target, s.clone(), table.clone()));
                    }
                }
                let (mut a, mut b) = (std::pin::pin!(stopped.wait()), std::pin::pin!(shutdown.wait()));
                std::future::poll_fn(|cx| {
                    if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await;
            });
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Some(Prober { thread: handle, stop })),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(std::io::Error::new(
                e.kind(),
                format!("the health-check prober cannot build its runtime: {e}"),
            ))
        }
        Err(_) => {
            let _ = handle.join();
            Err(std::io::Error::other("the health-check prober stopped at start"))
        }
    }
}

/// One endpoint the prober watches.
struct Target {
    cluster: String,
    c: usize,
    i: usize,
    addr: SocketAddr,
    request: Bytes,
    /// TLS to it, for an endpoint of a TLS cluster.
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
}

/// The probe request: a GET of the health path that closes the connection.
fn request(s: &HealthSettings, authority: &str) -> Bytes {
    Bytes::from(format!(
        "GET {} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: weft-health-check\r\nconnection: close\r\n\r\n",
        s.path
    ))
}

/// Probes one endpoint every interval, for as long as the prober runs.
async fn watch(t: Target, s: HealthSettings, table: Arc<HealthTable>) {
    // An endpoint carried across a reload goes on from its standing (a
    // recovered one is marked up again once its thresholds say so).
    let carried = table
        .clusters
        .get(t.c)
        .and_then(|h| h.carried.get(t.i))
        .is_some_and(|k| k.load(Ordering::Relaxed));
    let mut health = if carried {
        Health::known(table.healthy(t.c, t.i))
    } else {
        Health::new()
    };
    loop {
        let result = match monoio::time::timeout(s.timeout, probe(&t)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", s.timeout)),
        };
        let passed = matches!(result, Ok(status) if status_passes(status));
        if let Some(now) = health.probed(passed, &s) {
            table.set(t.c, t.i, now);
            let why = match &result {
                Ok(status) => format!("status {status}"),
                Err(e) => e.clone(),
            };
            let standing = if now { "healthy again" } else { "unhealthy" };
            tracing::warn!(
                "cluster `{}` endpoint {} is {standing} (health check {}: {why})",
                t.cluster,
                t.addr,
                s.path
            );
        }
        monoio::time::sleep(s.interval).await;
    }
}

/// Limits on a probe's response head.
const LIMITS: Limits = Limits {
    max_request_line: 8 * 1024,
    max_head_bytes: 16 * 1024,
    max_headers: 100,
};

/// One probe: the status of the endpoint's answer, or why there was none.
async fn probe(t: &Target) -> Result<u16, String> {
    let tcp = TcpStream::connect_addr(t.addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    match &t.tls {
        None => exchange(tcp, t.request.clone()).await,
        Some((cfg, name)) => {
            let s = crate::tls::connect(tcp, cfg.clone(), name.clone())
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            exchange(s, t.request.clone()).await
        }
    }
}

/// Sends the probe request on `s` and reads the answer's status.
async fn exchange<S: AsyncReadRent + AsyncWriteRent>(mut s: S, request: Bytes) -> Result<u16, String> {
    let (sent, _) = s.write_all(request).await;
    sent.map_err(|e| format!("cannot send the probe: {e}"))?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match parse_response(&mut buf, &LIMITS, false) {
            Ok(Some(res)) if res.is_informational() => continue,
            Ok(Some(res)) => return Ok(res.status),
            Ok(None) => {}
            Err(e) => return Err(format!("malformed answer: {e}")),
        }
        match read_more(&mut s, &mut buf).await {
            Ok(n) if n > 0 => {}
            Ok(_) => return Err("the connection closed before an answer".into()),
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_counts_endpoints_down() {
        let config = weft_core::config::Config::parse(
            "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\", \"127.0.0.1:3\"]\n",
            &weft_core::config::literal_only,
        )
        .expect("valid");
        let t = HealthTable::new(&config);
        assert!(!t.any_down(0));
        t.set(0, 1, false);
        t.set(0, 1, false);
        assert!(t.any_down(0));
        assert!(t.healthy(0, 0) && !t.healthy(0, 1));
        t.set(0, 1, true);
        assert!(!t.any_down(0), "a repeated write counts once");
        assert!(t.healthy(5, 5), "no such endpoint: no check");
    }

    #[test]
    fn an_endpoint_keeps_its_standing_across_a_reload() {
        let text = |eps: &str| {
            format!(
                "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n\
                 [[cluster]]\nname = \"n\"\nendpoints = [\"127.0.0.1:9\"]\nhealth_check = {{}}\n\
                 [[cluster]]\nname = \"c\"\nendpoints = [{eps}]\nhealth_check = {{}}\n"
            )
        };
        let parse = |src: &str| Config::parse(src, &weft_core::config::literal_only).expect("valid");
        let old = parse(&text("\"127.0.0.1:2\", \"127.0.0.1:3\""));
        let t = HealthTable::new(&old);
        t.set(1, 1, false);
        // 127.0.0.1:3 moved to the front, a new endpoint behind it.
        let new = parse(&text("\"127.0.0.1:3\", \"127.0.0.1:4\""));
        let carried = HealthTable::carried(&new, &old, &t);
        assert!(!carried.healthy(1, 0), "the endpoint down stays down");
        assert!(carried.healthy(1, 1), "a new endpoint starts healthy");
        assert!(carried.any_down(1) && !carried.any_down(0));
        // Its prober goes on from its standing; a new one starts afresh.
        assert!(carried.clusters[1].carried[0].load(Ordering::Relaxed));
        assert!(!carried.clusters[1].carried[1].load(Ordering::Relaxed));
    }
}
