//! weft-core: the decisions of the proxy, with no IO.
//!
//! The configuration model and its validation, the route table, the load
//! balancers, outlier ejection, health-check standing, the retry budget and the request-path error type. Nothing here opens a socket or
//! reads the clock: time and randomness come in as arguments, so every
//! behaviour is testable deterministically.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod balance;
pub mod budget;
pub mod config;
pub mod duration;
pub mod error;
pub mod health;
pub mod metrics;
pub mod outcome;
pub mod outlier;
pub mod peak_ewma;
pub mod rate;
pub mod route;
pub mod trace;

pub use balance::{least_loaded, least_loaded_among, Rng, RoundRobin};
pub use budget::{BudgetSettings, RetryBudget};
pub use config::{
    AccessLogSettings, BalancerKind, Cluster, ClusterLimits, ClusterTls, Config, ConfigError, Driver,
    Listener, ListenerKind, ListenerTls, LogLevel, LogPath, NoHealthy, RingSetup, RuntimeSettings,
};
pub use error::{ErrorKind, ProxyError, RetryClass, Side};
pub use health::{Health, HealthSettings};
pub use outcome::Outcome;
pub use outlier::{FailureKind, Outlier, OutlierSettings};
pub use peak_ewma::{PeakEwmaSettings, RttEstimate};
pub use rate::{RateLimit, TokenBucket};
pub use route::{HostMatch, PathMatch, Route, RouteMatch, RouteTable, Target};
