//! Starting and stopping the workers.

use crate::log::log;
use crate::shutdown::Shutdown;
use crate::worker::{self, Worker};
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use weft_core::{Config, Driver};

/// The IO driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverInUse {
    /// io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
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
    /// A worker thread or runtime could not be created.
    Worker(std::io::Error),
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
        }
    }
}

impl std::error::Error for StartError {}

/// A running weft: its workers and the addresses they listen on.
pub struct Server {
    workers: Vec<JoinHandle<()>>,
    shutdown: Shutdown,
    addrs: Vec<(String, SocketAddr)>,
    driver: DriverInUse,
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
                log!("io_uring is unavailable here (old kernel, sysctl or seccomp): using epoll");
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
fn bind_all(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
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

/// A worker's io_uring runtime. The ring is set up for one thread:
/// COOP_TASKRUN (no interrupt to run completions; the worker picks them up
/// when it enters the kernel anyway) and SINGLE_ISSUER. On this project's
/// benchmark that is about a quarter more requests per CPU-second than a
/// default ring. Kernels before 6.0 refuse these flags: then a default ring.
fn uring_runtime() -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun().setup_single_issuer();
    match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(ring)
        .enable_timer()
        .build()
    {
        Ok(rt) => Ok(rt),
        Err(_) => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build(),
    }
}

fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            log!(
                "cannot pin a worker to core {core}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Server {
    /// Binds every listener on every worker and starts the workers. Returns
    /// once all sockets are bound, so the addresses accept connections.
    pub fn start(config: Config) -> Result<Server, StartError> {
        let config = Arc::new(config);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let count = if config.runtime.workers == 0 {
            cores
        } else {
            config.runtime.workers
        };
        let driver = choose_driver(config.runtime.driver)?;

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
        let shutdown = Shutdown::new();
        let mut workers = Vec::new();
        for i in (0..count).rev() {
            let mine: Vec<_> = sockets.iter_mut().map(|s| s.remove(i)).collect();
            let config = config.clone();
            let shutdown = shutdown.clone();
            let pin = config.runtime.pin_cores.then_some(i % cores);
            let handle = std::thread::Builder::new()
                .name(format!("weft-worker-{i}"))
                .spawn(move || {
                    if let Some(core) = pin {
                        pin_to_core(core);
                    }
                    let seed = (i as u64 + 1).wrapping_mul(0x9E37_79B9) ^ std::process::id() as u64;
                    let worker = Rc::new(Worker::new(config, seed));
                    let result = match driver {
                        DriverInUse::IoUring => {
                            uring_runtime().map(|mut rt| rt.block_on(worker::run(worker, mine, shutdown)))
                        }
                        DriverInUse::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                            .enable_timer()
                            .build()
                            .map(|mut rt| rt.block_on(worker::run(worker, mine, shutdown))),
                    };
                    if let Err(e) = result {
                        log!("worker {i}: cannot build its runtime: {e}");
                    }
                })
                .map_err(StartError::Worker)?;
            workers.push(handle);
        }
        Ok(Server {
            workers,
            shutdown,
            addrs,
            driver,
        })
    }

    /// The address listener `name` is bound to (the real port when 0 was configured).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Every listener's name and bound address.
    pub fn addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// The IO driver in use.
    pub fn driver(&self) -> DriverInUse {
        self.driver
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
    }
}
