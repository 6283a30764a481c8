//! Starting and stopping the workers.

use crate::access_log::{AccessLogs, WorkerLog};
use crate::admin::{self, Admin, AdminThread, Mailbox};
pub use crate::counters::WorkerCounters;
use crate::health::{self, HealthTable};
use crate::reload::Reload;
use crate::shutdown::Shutdown;
use crate::state::{Material, Worker};
use crate::tls;
use crate::worker::{self, Ready};
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tracing_subscriber::filter::LevelFilter;
use weft_core::{Config, Driver, LogLevel, RingSetup};

/// The IO driver the workers are started on (what they report is [`IoSetup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DriverInUse {
    /// io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// How the workers' IO actually runs, as the workers report it once their
/// runtimes are built (not as configured: `auto` may fall back, and a
/// kernel may refuse the ring flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoSetup {
    /// epoll (monoio's legacy driver).
    Epoll,
    /// io_uring, with the setup flags every worker's ring took.
    IoUring {
        /// The flags (the fewest any worker got).
        ring: Ring,
    },
}

/// The setup flags an io_uring ring took, fewest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ring {
    /// No setup flags.
    Plain,
    /// COOP_TASKRUN and SINGLE_ISSUER.
    CoopTaskrun,
    /// DEFER_TASKRUN and SINGLE_ISSUER.
    DeferTaskrun,
}

impl fmt::Display for IoSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoSetup::Epoll => f.write_str("epoll"),
            IoSetup::IoUring { ring: Ring::Plain } => f.write_str("io-uring (ring: plain)"),
            IoSetup::IoUring {
                ring: Ring::CoopTaskrun,
            } => f.write_str("io-uring (ring: coop-taskrun,single-issuer)"),
            IoSetup::IoUring {
                ring: Ring::DeferTaskrun,
            } => f.write_str("io-uring (ring: defer-taskrun,single-issuer)"),
        }
    }
}

/// Why weft could not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener address could not be bound.
    Bind {
        listener: String,
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// io_uring was required by the configuration but is unavailable.
    NoIoUring,
    /// A worker thread could not be created.
    Worker(std::io::Error),
    /// The health-check prober could not start.
    HealthChecks(std::io::Error),
    /// A TLS listener's certificate or key cannot be used.
    Tls(String),
    /// An access log cannot be opened, or its writer started.
    AccessLog(String),
    /// A worker could not build its runtime or register its listeners.
    WorkerSetup {
        /// The worker's index.
        worker: usize,
        /// What failed.
        error: String,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { listener, addr, error } => write!(
                f,
                "listener `{listener}` cannot bind {addr}: {error} (is another process using it? change `listen`)"
            ),
            StartError::NoIoUring => f.write_str(
                "runtime.driver = \"io-uring\" but io_uring is unavailable here (old kernel, sysctl or seccomp); use driver = \"auto\" or \"epoll\"",
            ),
            StartError::Worker(e) => write!(f, "cannot start a worker thread: {e}"),
            StartError::Tls(e) => write!(f, "{e}"),
            StartError::AccessLog(e) => write!(f, "{e}"),
            StartError::HealthChecks(e) => write!(
                f,
                "health checks are configured but cannot run: {e} (check the open-file and thread limits, or remove `health_check`)"
            ),
            StartError::WorkerSetup { worker, error } => write!(
                f,
                "worker {worker} cannot start: {error} (check the open-file limit, `ulimit -n`; with io_uring also `ulimit -l` and the kernel's io_uring settings, or use driver = \"epoll\")"
            ),
        }
    }
}

impl std::error::Error for StartError {}

/// A running weft: its workers and the addresses they listen on.
pub struct Server {
    workers: Vec<JoinHandle<()>>,
    shutdown: Shutdown,
    io: IoSetup,
    counters: Vec<Arc<WorkerCounters>>,
    admin: Option<AdminThread>,
    access_log: Arc<AccessLogs>,
    reload: Reload,
    /// The thread that resolves endpoint host names again, and what ends it.
    dns: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// Asks the access log writer to reopen its files (SIGUSR1, after log
/// rotation moved them).
#[derive(Clone)]
pub struct ReopenLogs(Arc<AtomicBool>);

impl ReopenLogs {
    /// Reopens the files before the next write (nothing without access logs).
    pub fn fire(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

fn choose_driver(want: Driver) -> Result<DriverInUse, StartError> {
    match want {
        Driver::Epoll => Ok(DriverInUse::Epoll),
        Driver::IoUring if monoio::utils::detect_uring() => Ok(DriverInUse::IoUring),
        Driver::IoUring => Err(StartError::NoIoUring),
        Driver::Auto if monoio::utils::detect_uring() => Ok(DriverInUse::IoUring),
        Driver::Auto => {
            if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!("io_uring is unavailable here (old kernel, sysctl or seccomp): using epoll");
            }
            Ok(DriverInUse::Epoll)
        }
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Binds `count` SO_REUSEPORT sockets on `addr`. Fails if another process
/// already listens there: the kernel would otherwise share the port silently.
pub(crate) fn bind_all(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_one(bound)?);
    }
    Ok(all)
}

/// A worker's io_uring runtime, and the setup flags its ring took. `Tuned`
/// sets the ring up for one thread: COOP_TASKRUN (no interrupt to run
/// completions; the worker picks them up when it enters the kernel anyway)
/// and SINGLE_ISSUER; on this project's benchmark about a tenth more
/// requests per CPU-second than a plain ring. `Defer` goes further with
/// DEFER_TASKRUN: completions run only when the worker waits for them.
/// Kernels refuse what they lack (COOP_TASKRUN before 6.0, DEFER_TASKRUN
/// before 6.1): then the next setup down, down to a plain ring.
type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

fn uring_runtime(setup: RingSetup) -> std::io::Result<(UringRuntime, Ring)> {
    let tries: &[Ring] = match setup {
        RingSetup::Defer => &[Ring::DeferTaskrun, Ring::CoopTaskrun],
        RingSetup::Tuned => &[Ring::CoopTaskrun],
        RingSetup::Plain => &[],
    };
    for &ring in tries {
        let mut builder = io_uring::IoUring::builder();
        match ring {
            Ring::DeferTaskrun => builder.setup_defer_taskrun().setup_single_issuer(),
            Ring::CoopTaskrun => builder.setup_coop_taskrun().setup_single_issuer(),
            Ring::Plain => &mut builder,
        };
        if let Ok(rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(builder)
            .enable_timer()
            .build()
        {
            return Ok((rt, ring));
        }
    }
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()?;
    Ok((rt, Ring::Plain))
}

/// How long `Server::start` waits for every worker to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Raises the soft limit on open files to the hard limit: every client and
/// upstream connection is a descriptor, and soft limits are often 1,024.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit on a plain struct owned here.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(
                    "cannot raise the open-file limit from {} to {}: {}",
                    lim.rlim_cur,
                    lim.rlim_max,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(
                "cannot pin a worker to core {core}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Server {
    /// Binds every listener on every worker and starts the workers. Returns
    /// once every worker has built its runtime and registered its listeners,
    /// so the addresses accept connections; a worker that cannot start fails
    /// the start (and the others stop again). Endpoint host names are
    /// resolved again (`dns_refresh`) with the system resolver.
    pub fn start(config: Config) -> Result<Server, StartError> {
        Server::start_with_resolver(config, Arc::new(crate::load::resolve))
    }

    /// [`Server::start`], with endpoint host names resolved again
    /// (`dns_refresh`) by `resolver` (`host:port` to its addresses): for a
    /// program that embeds weft and knows its endpoints' addresses itself.
    pub fn start_with_resolver(config: Config, resolver: crate::dns::Resolver) -> Result<Server, StartError> {
        crate::log::init(match config.runtime.log_level {
            LogLevel::Off => LevelFilter::OFF,
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        });
        raise_open_file_limit();
        let config = Arc::new(config);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let count = if config.runtime.workers == 0 {
            cores
        } else {
            config.runtime.workers
        };
        let driver = choose_driver(config.runtime.driver)?;
        let tls = tls::load(&config).map_err(StartError::Tls)?;
        let cluster_tls = tls::load_clusters(&config).map_err(StartError::Tls)?;

        // sockets[listener][worker]
        let mut sockets = Vec::new();
        let mut addrs = Vec::new();
        for l in &config.listeners {
            let socks = bind_all(l.addr, count).map_err(|error| StartError::Bind {
                listener: l.name.clone(),
                addr: l.addr,
                error,
            })?;
            let bound = socks[0].local_addr().map_err(StartError::Worker)?;
            addrs.push((l.name.clone(), bound));
            sockets.push(socks);
        }
        let admin_listener = match &config.admin {
            Some(a) => Some(admin::bind(a.addr).map_err(|error| StartError::Bind {
                listener: "admin".into(),
                addr: a.addr,
                error,
            })?),
            None => None,
        };
        let logs = AccessLogs::start(&config).map_err(StartError::AccessLog)?;
        let log_tx = logs.sender();
        let shutdown = Shutdown::new();
        let health = Arc::new(HealthTable::new(&config));
        let material = Arc::new(Material {
            config: config.clone(),
            health: health.clone(),
            tls,
            cluster_tls,
            log_paths: logs.paths(),
        });
        let mut mailboxes = Vec::new();
        let mut workers = Vec::new();
        let mut counters = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        // On any failure below, the workers already started stop again.
        let abort = |workers: Vec<JoinHandle<()>>, shutdown: &Shutdown, e: StartError| {
            shutdown.fire();
            for w in workers {
                let _ = w.join();
            }
            Err(e)
        };
        for i in (0..count).rev() {
            let mine: Vec<_> = sockets.iter_mut().map(|s| s.remove(i)).collect();
            let material = material.clone();
            let stop = shutdown.clone();
            let pin = config.runtime.pin_cores.then_some(i % cores);
            let ring_setup = config.runtime.ring_setup;
            let mine_counters = Arc::new(WorkerCounters::default());
            counters.push(mine_counters.clone());
            let mailbox = Arc::new(Mailbox::default());
            mailboxes.push(mailbox.clone());
            let log_tx = log_tx.clone();
            let ready = Ready {
                tx: ready_tx.clone(),
                worker: i,
                ring: Ring::Plain,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("weft-worker-{i}"))
                .spawn(move || {
                    if let Some(core) = pin {
                        pin_to_core(core);
                    }
                    let seed = (i as u64 + 1).wrapping_mul(0x9E37_79B9) ^ std::process::id() as u64;
                    let log = log_tx.map(WorkerLog::new);
                    let worker = Worker::new(&material, seed, mine_counters, count, log);
                    let mut worker = worker;
                    match driver {
                        DriverInUse::IoUring => match uring_runtime(ring_setup) {
                            Ok((mut rt, ring)) => {
                                if ring != Ring::Plain && worker.idle_poll.take().is_some() && i == 0 {
                                    // COOP_TASKRUN and DEFER_TASKRUN defer
                                    // completions to an io_uring_enter that
                                    // asks for events, which monoio makes
                                    // only when it waits: a polling loop
                                    // would see none.
                                    tracing::warn!(
                                        "runtime.idle_poll has no effect on the tuned io_uring ring \
                                         (COOP_TASKRUN or DEFER_TASKRUN); use ring_setup = \"plain\" or driver = \"epoll\" for it"
                                    );
                                }
                                let worker = Rc::new(worker);
                                let ready = Ready { ring, ..ready };
                                rt.block_on(worker::run(worker, mine, stop, ready, mailbox))
                            }
                            Err(e) => ready.report(Err(format!("cannot build its io_uring runtime: {e}"))),
                        },
                        DriverInUse::Epoll => match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                            .enable_timer()
                            .build()
                        {
                            Ok(mut rt) => rt.block_on(worker::run(Rc::new(worker), mine, stop, ready, mailbox)),
                            Err(e) => ready.report(Err(format!("cannot build its epoll runtime: {e}"))),
                        },
                    }
                });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => return abort(workers, &shutdown, StartError::Worker(e)),
            }
        }
        drop(ready_tx);
        counters.reverse();
        mailboxes.reverse();
        let mut ring = Ring::DeferTaskrun;
        for _ in 0..count {
            match ready_rx.recv_timeout(READY_TIMEOUT) {
                Ok((_, Ok(r))) => ring = ring.min(r),
                Ok((worker, Err(error))) => {
                    return abort(workers, &shutdown, StartError::WorkerSetup { worker, error })
                }
                Err(_) => {
                    let error = format!("no word from a worker within {READY_TIMEOUT:?}");
                    return abort(workers, &shutdown, StartError::WorkerSetup { worker: 0, error });
                }
            }
        }
        // Probes start once the workers run (and stop with them).
        let prober = match health::start(&config, &health, material.cluster_tls.clone(), shutdown.clone()) {
            Ok(prober) => prober,
            Err(e) => return abort(workers, &shutdown, StartError::HealthChecks(e)),
        };
        let reload = Reload::new(
            material,
            addrs,
            mailboxes.clone(),
            prober,
            shutdown.clone(),
            logs.clone(),
        );
        let (dns_stop, stopped) = mpsc::channel();
        let dns = match crate::dns::start(reload.clone(), resolver, stopped) {
            Ok(thread) => Some((dns_stop, thread)),
            Err(e) => {
                reload.stop_prober();
                return abort(workers, &shutdown, StartError::Worker(e));
            }
        };
        let admin = match admin_listener {
            Some(listener) => {
                let state = Admin {
                    reload: reload.clone(),
                    last: std::sync::Mutex::new(vec![None; mailboxes.len()]),
                    mailboxes,
                    shutdown: shutdown.clone(),
                };
                match admin::start(listener, state) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        if let Some((stop, thread)) = dns {
                            drop(stop);
                            let _ = thread.join();
                        }
                        reload.stop_prober();
                        return abort(workers, &shutdown, StartError::Worker(e));
                    }
                }
            }
            None => None,
        };
        let io = match driver {
            DriverInUse::Epoll => IoSetup::Epoll,
            DriverInUse::IoUring => IoSetup::IoUring { ring },
        };
        Ok(Server {
            workers,
            shutdown,
            io,
            counters,
            admin,
            access_log: logs,
            reload,
            dns,
        })
    }

    /// The address listener `name` is bound to (the real port when 0 was
    /// configured), as of the last reload.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.reload
            .addrs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Every listener's name and bound address, as of the last reload.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.reload.addrs()
    }

    /// What reloads the running configuration (SIGHUP, `POST /reload`).
    pub fn reload_handle(&self) -> Reload {
        self.reload.clone()
    }

    /// What makes the access log writer reopen its files.
    pub fn reopen_logs(&self) -> ReopenLogs {
        ReopenLogs(self.access_log.reopen_flag())
    }

    /// The address the admin listener answers on, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminThread::addr)
    }

    /// How the workers' IO runs, as they reported it.
    pub fn io(&self) -> IoSetup {
        self.io
    }

    /// Each worker's counters, in worker order.
    pub fn workers(&self) -> &[Arc<WorkerCounters>] {
        &self.counters
    }

    /// A handle that starts the graceful shutdown when fired.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Stops accepting, lets in-flight requests finish (bounded by the drain
    /// timeout), and waits for every worker to exit.
    pub fn shutdown(self) {
        self.shutdown.fire();
        self.join();
    }

    /// Waits for every worker to exit (after the shutdown handle fired).
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
        if let Some((stop, thread)) = self.dns {
            drop(stop);
            let _ = thread.join();
        }
        self.reload.stop_prober();
        // The admin listener answers (`/ready`: draining) until the end.
        if let Some(admin) = self.admin {
            admin.stop();
        }
        // Every worker handed its last lines over: write them.
        self.access_log.join();
    }
}
