//! Configuration reload (SIGHUP, `POST /reload`): the file is read and
//! checked; a good one is compiled once and handed to every worker, which
//! takes it between requests (requests in flight finish on theirs); a bad
//! one changes nothing and is counted.
//!
//! A reload applies everything but `[runtime]` and `[admin]`:
//! - routes, as written;
//! - clusters: one equal to its running self (endpoints as resolved now)
//!   keeps its state whole (pools, balancer, outlier records, budgets); a
//!   changed one keeps the endpoints it still has, with their pools, when
//!   the way to reach them (protocol, TLS, pool settings) is the same;
//! - listeners: one at the same address keeps its socket and connections;
//!   a new address is bound before anything changes (a clash refuses the
//!   reload), and a listener removed stops accepting, its connections
//!   finishing what they serve;
//! - certificates and keys are read again.
//!
//! Health checks start again on the new clusters (an endpoint keeps its
//! standing). An access log file a reload names is opened before anything
//! changes (one that cannot be opened refuses the reload); files no longer
//! named stay open until weft stops. The first one starts the writer
//! thread, and workers start handing lines over.

use crate::access_log::AccessLogs;
use crate::admin::{Mailbox, Reloaded};
use crate::health::{self, HealthTable, Prober};
use crate::shutdown::Shutdown;
use crate::state::Material;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use weft_core::Config;

/// Binds `count` sockets on `addr` ([`crate::server::bind_all`]); an
/// address in use is tried again for up to [`BIND_WAIT`], so that a
/// listener a reload just removed (its socket closes once its accept loop
/// has seen the reload) can come back at the same address.
fn bind_soon(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let deadline = std::time::Instant::now() + BIND_WAIT;
    loop {
        match crate::server::bind_all(addr, count) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// How long a reload tries again to bind an address in use.
const BIND_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a reload waits for every worker to take it before it answers.
const TAKE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A handle that reloads the running configuration; cheap to clone.
#[derive(Clone)]
pub struct Reload {
    inner: Arc<Inner>,
}

struct Inner {
    /// What runs now (read by the admin thread).
    current: Mutex<Arc<Material>>,
    /// The addresses the listeners are bound to, by name.
    addrs: Mutex<Vec<(String, SocketAddr)>>,
    /// Puts reloads in a row; holds the health prober of the running
    /// clusters, if they have checks.
    applying: Mutex<Option<Prober>>,
    /// 1 at start, one more per reload applied.
    generation: AtomicU64,
    /// Reloads refused (a bad file, or a change a reload cannot apply).
    failures: AtomicU64,
    /// Per worker: where its reloads go.
    mailboxes: Vec<Arc<Mailbox>>,
    /// The file reloads read, when weft was started from one.
    source: Mutex<Option<PathBuf>>,
    /// The access log destinations and their writer.
    logs: Arc<AccessLogs>,
    /// weft's shutdown (health probers stop with it).
    shutdown: Shutdown,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reload {
    pub(crate) fn new(
        material: Arc<Material>,
        addrs: Vec<(String, SocketAddr)>,
        mailboxes: Vec<Arc<Mailbox>>,
        prober: Option<Prober>,
        shutdown: Shutdown,
        logs: Arc<AccessLogs>,
    ) -> Self {
        Reload {
            inner: Arc::new(Inner {
                current: Mutex::new(material),
                addrs: Mutex::new(addrs),
                applying: Mutex::new(prober),
                generation: AtomicU64::new(1),
                failures: AtomicU64::new(0),
                mailboxes,
                source: Mutex::new(None),
                logs,
                shutdown,
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        lock(&self.inner.current).config.clone()
    }

    /// The configuration in force with what goes with it (its health
    /// table), read together.
    pub(crate) fn material(&self) -> Arc<Material> {
        lock(&self.inner.current).clone()
    }

    /// Every listener's name and bound address, as of the last reload.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.inner.addrs).clone()
    }

    /// The generation in force: 1 at start, one more per reload applied.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Reloads refused so far.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::SeqCst)
    }

    /// Names the file [`Reload::from_source`] reads.
    pub fn set_source(&self, path: PathBuf) {
        *lock(&self.inner.source) = Some(path);
    }

    /// Applies `new`; its generation, or why not (the running
    /// configuration stays).
    pub fn apply(&self, new: Config) -> Result<u64, String> {
        let mut prober = lock(&self.inner.applying);
        self.apply_locked(&mut prober, new)
    }

    /// Applies what `change` makes of the running configuration, if it
    /// makes anything (in a row with other reloads: `change` sees the
    /// configuration as it runs).
    pub(crate) fn apply_with(
        &self,
        change: impl FnOnce(&Config) -> Option<Config>,
    ) -> Option<Result<u64, String>> {
        let mut prober = lock(&self.inner.applying);
        let running = self.config();
        let new = change(&running)?;
        Some(self.apply_locked(&mut prober, new))
    }

    fn apply_locked(&self, prober: &mut Option<Prober>, new: Config) -> Result<u64, String> {
        let old = lock(&self.inner.current).clone();
        if let Err(what) = old.config.reloadable(&new) {
            return Err(self.refused(format!(
                "{what}: {}",
                "[runtime] and [admin] are set up at start; restart weft to apply this one"
            )));
        }
        let logs = self.inner.logs.open_new(&new).map_err(|e| self.refused(e))?;
        // Everything that can fail, before anything changes.
        let tls = crate::tls::load(&new).map_err(|e| self.refused(e))?;
        let cluster_tls = crate::tls::load_clusters(&new).map_err(|e| self.refused(e))?;
        let workers = self.inner.mailboxes.len();
        let mut sockets: Vec<Vec<(usize, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        let running = lock(&self.inner.addrs).clone();
        for (li, l) in new.listeners.iter().enumerate() {
            let kept = old
                .config
                .listeners
                .iter()
                .position(|o| o.same_socket(l))
                .and_then(|i| running.iter().find(|(n, _)| *n == old.config.listeners[i].name));
            if let Some((_, addr)) = kept {
                addrs.push((l.name.clone(), *addr));
                continue;
            }
            let bound = bind_soon(l.addr, workers).map_err(|e| {
                self.refused(format!(
                    "listener `{}` cannot bind {}: {e} (is another process using it? change `listen`)",
                    l.name, l.addr
                ))
            })?;
            let at = bound[0].local_addr().map_err(|e| self.refused(e.to_string()))?;
            addrs.push((l.name.clone(), at));
            for (w, socket) in bound.into_iter().enumerate() {
                sockets[w].push((li, socket));
            }
        }
        let health = Arc::new(HealthTable::carried(&new, &old.config, &old.health));
        let new = Arc::new(new);
        let next_prober = health::start(&new, &health, cluster_tls.clone(), self.inner.shutdown.clone())
            .map_err(|e| self.refused(format!("health checks cannot run: {e}")))?;
        for w in new.warnings() {
            tracing::warn!("reload: {w}");
        }
        let material = Arc::new(Material {
            config: new,
            health,
            tls,
            cluster_tls,
            log_paths: logs.paths.clone(),
        });
        // From here on the reload happens. (A writer thread that cannot
        // start leaves the new files unwritten, and says so.)
        if let Err(e) = self.inner.logs.add(logs) {
            tracing::error!("reload: {e}; access log lines are not written");
        }
        let log_tx = self.inner.logs.sender();
        if let Some(old) = std::mem::replace(prober, next_prober) {
            old.stop();
        }
        *lock(&self.inner.current) = material.clone();
        *lock(&self.inner.addrs) = addrs;
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let (done, taken) = std::sync::mpsc::channel();
        for (m, sockets) in self.inner.mailboxes.iter().zip(sockets) {
            m.reload(Reloaded {
                material: material.clone(),
                sockets,
                done: done.clone(),
                log_tx: log_tx.clone(),
            });
        }
        drop(done);
        // Answered once every worker runs it (a worker that has stopped
        // has let go of its letter), within a bound.
        let deadline = std::time::Instant::now() + TAKE_WAIT;
        let mut waiting = workers;
        while waiting > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match taken.recv_timeout(left) {
                Ok(()) => waiting -= 1,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!("reload: {waiting} workers have not taken generation {generation} within {TAKE_WAIT:?}; they take it between requests");
                    break;
                }
            }
        }
        tracing::info!("configuration reloaded: generation {generation}");
        Ok(generation)
    }

    /// Reads and checks the file weft was started from, and applies it.
    pub fn from_source(&self) -> Result<u64, String> {
        let source = lock(&self.inner.source).clone();
        let Some(path) = source else {
            return Err(self.refused(
                "weft was not started from a file (`weft --config FILE`): there is nothing to reload from"
                    .into(),
            ));
        };
        // Read under the lock: two reloads in a row apply the files in the
        // order they were read (the last read wins).
        let mut prober = lock(&self.inner.applying);
        match crate::load::from_file(&path) {
            Ok(config) => self.apply_locked(&mut prober, config),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Stops the health prober (at weft's end) and waits for it.
    pub(crate) fn stop_prober(&self) {
        if let Some(p) = lock(&self.inner.applying).take() {
            p.stop();
        }
    }

    /// Counts a refused reload and says why, in the log and to the caller.
    fn refused(&self, why: String) -> String {
        self.inner.failures.fetch_add(1, Ordering::SeqCst);
        let msg = format!(
            "reload refused, still running generation {}: {why}",
            self.generation()
        );
        tracing::warn!("{msg}");
        msg
    }
}
