//! weft: the runtime of the weft data plane.
//!
//! The only crate that touches sockets, threads and the clock. It starts one
//! worker thread per core, each with its own monoio runtime (io_uring, or epoll
//! where io_uring is unavailable), its own listeners, upstream pools and
//! balancer state, and runs the proxy pipeline that calls `weft-core` for
//! decisions and `weft-proto` for the wire.

mod access_log;
mod admin;
pub mod alloc;
mod counters;
pub mod demo;
pub mod dns;
mod downstream;
mod downstream_h2;
mod forward;
mod health;
mod io;
pub mod load;
pub mod log;
#[cfg(test)]
mod mem;
#[cfg(test)]
mod pipeline;
mod reload;
mod reply;
mod server;
mod shutdown;
mod spin;
mod state;
mod timer;
pub mod tls;
mod upstream;
mod upstream_h2;
mod wire;
mod worker;

pub use reload::Reload;
pub use server::{IoSetup, ReopenLogs, Ring, Server, StartError, WorkerCounters};
pub use shutdown::Shutdown;
pub use weft_core::Config;
