//! The configuration file: its TOML model, validation, and the compiled
//! snapshot every worker runs from.
//!
//! Errors name the line and the field and say what was expected. Endpoint
//! host names are resolved through a function the caller passes in, so this
//! module stays free of IO.

use crate::budget::BudgetSettings;
use crate::duration;
use crate::health::HealthSettings;
use crate::outlier::{FailureKind, OutlierSettings};
use crate::peak_ewma::PeakEwmaSettings;
use crate::rate::RateLimit;
use crate::route::{HostMatch, PathMatch, RetryPolicy, Route, RouteMatch, RouteTable, Target};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

/// A configuration mistake: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// The field at fault, like `route[2].split`.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.field.is_empty()) {
            (Some(l), false) => write!(f, "line {l}, field `{}`: {}", self.field, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "field `{}`: {}", self.field, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which IO driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// io_uring where the kernel allows it, else epoll (said once in the log).
    #[default]
    Auto,
    /// io_uring only: fail to start without it.
    IoUring,
    /// epoll only.
    Epoll,
}

/// How an io_uring worker sets up its ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RingSetup {
    /// COOP_TASKRUN and SINGLE_ISSUER (fewer interrupts, one issuing
    /// thread); a plain ring on kernels that refuse them (before 6.0).
    #[default]
    Tuned,
    /// A ring with no setup flags (for comparisons and odd kernels).
    Plain,
    /// DEFER_TASKRUN and SINGLE_ISSUER: completions are run only when the
    /// worker asks for them (monoio does when it waits), never by an
    /// interrupt; `tuned`'s flags on kernels that refuse it (before 6.1).
    Defer,
}

/// How a cluster picks an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BalancerKind {
    /// Power of two random choices over in-flight requests.
    #[default]
    LeastLoaded,
    /// In turn.
    RoundRobin,
    /// Power of two random choices over Peak-EWMA costs: round-trip
    /// estimate times (requests in flight + 1).
    PeakEwma,
}

/// The protocol weft speaks to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2: cleartext with prior knowledge, or TLS with ALPN `h2`;
    /// few connections per endpoint and worker, multiplexed.
    Http2,
}

/// How much of weft's own diagnostics is written (`runtime.log_level`;
/// the `WEFT_LOG` environment variable wins over it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// What failed.
    Error,
    /// And what works less well than configured.
    Warn,
    /// And what happened (start, drain, a failed TLS handshake).
    #[default]
    Info,
    /// And detail for finding a fault.
    Debug,
    /// Everything.
    Trace,
}

/// `[runtime]`: threads and drivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// IO driver.
    pub driver: Driver,
    /// Setup flags of the io_uring ring (ignored on epoll).
    pub ring_setup: RingSetup,
    /// Pin worker `i` to core `i` (modulo the core count).
    pub pin_cores: bool,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// How long a worker keeps polling for IO without sleeping after a
    /// request came in (`idle_poll`, off by default): the next completion
    /// is then seen at once instead of after the wake-up of an idle core,
    /// at the price of the CPU spent polling. Seastar's `idle-poll-time-us`.
    pub idle_poll: Duration,
    /// weft's own diagnostics: the least severe level written.
    pub log_level: LogLevel,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Proxies HTTP requests to clusters by its routes (every
    /// `[[listener]]`).
    Proxy,
}

/// One `[[listener]]`, with its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// Its position in [`Config::listeners`] (per-listener state is kept
    /// in that order).
    pub index: usize,
    /// What it serves.
    pub kind: ListenerKind,
    /// Address to bind on every worker.
    pub addr: SocketAddr,
    /// Longest request line (414 beyond).
    pub max_request_line: usize,
    /// Largest request head in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Most header fields (431 beyond).
    pub max_headers: usize,
    /// Time a client has to send a complete head once it started (408).
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Most client connections open at once on this listener (over all
    /// workers, spread evenly); past it weft stops accepting and the rest
    /// wait in the kernel's queue.
    pub max_connections: usize,
    /// Most requests in flight on this listener (over all workers, split
    /// evenly); past it, 503 `overflow` at once. None: no cap.
    pub max_requests: Option<usize>,
    /// Merge runs of slashes in request paths before routing and forwarding
    /// (`//a///b` is `/a/b`).
    pub merge_slashes: bool,
    /// Give a request without an `x-request-id` one (a random UUID), sent
    /// upstream and logged (`generate_request_id`, Envoy's name; default
    /// on).
    pub generate_request_id: bool,
    /// Time a client may take to read: a write to it that makes no progress
    /// for this long closes the connection (nginx's send_timeout).
    pub write_timeout: Duration,
    /// TLS termination (`tls = { ... }`): none by default (plain HTTP).
    pub tls: Option<ListenerTls>,
    /// HTTP/2 from clients (`http2 = { ... }`).
    pub http2: Http2Settings,
    /// Its access log (`access_log = { path, format }`): none by default.
    pub access_log: Option<AccessLogSettings>,
    /// The listener's routes, in order.
    pub routes: RouteTable,
}

impl Listener {
    /// Whether `new` (of a reloaded configuration) keeps this listener's
    /// socket: the same address, and for an address with port 0 (any free
    /// port) also the same name.
    pub fn same_socket(&self, new: &Listener) -> bool {
        self.addr == new.addr && (self.addr.port() != 0 || self.name == new.name)
    }
}

/// `access_log = { path, format }` on a listener: a line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    /// Where lines go.
    pub path: LogPath,
    /// How a line looks (`"text"` by default).
    pub format: crate::access_log::Format,
}

/// Where an access log's lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogPath {
    /// Standard output (`path = "-"`).
    Stdout,
    /// A file, appended to (relative paths are relative to the
    /// configuration file's directory).
    File(std::path::PathBuf),
}

/// `http2 = { max_concurrent_streams, stream_window, connection_window }`
/// on a listener (what an HTTP/2 client may open and send) or a cluster
/// (what an HTTP/2 upstream may send). Defaults: 100 streams (nginx 128;
/// RFC 9113 asks for no fewer than 100), a 256 KiB window per stream and
/// 1 MiB per connection: what a peer may send before weft has forwarded
/// it, so that buffering per stream and per connection stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Streams a client may have open at once on one connection (a
    /// listener's; on a cluster weft keeps to the upstream's own limit).
    pub max_concurrent_streams: u32,
    /// Each stream's flow-control window, in bytes.
    pub stream_window: u32,
    /// The connection's flow-control window, in bytes.
    pub connection_window: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: 100,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
        }
    }
}

/// `tls = { cert, key, sni, handshake_timeout, client_ca }` on a listener:
/// TLS 1.2 and 1.3, ALPN `http/1.1`, certificates chosen by SNI, and
/// mutual TLS when `client_ca` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// PEM file with the certificate chain, leaf first (relative paths are
    /// resolved against the configuration file's directory at load).
    pub cert: std::path::PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// More certificate chains and keys (`sni = [{ cert, key }, ...]`),
    /// each chosen for the server names (SNI) its certificate carries;
    /// `cert`/`key` serve the names none of them carries.
    pub sni: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// Time a client has to complete its handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// PEM file of the CAs whose client certificates are accepted: when
    /// set, every client must present one (mutual TLS), and its identity
    /// goes upstream in `weft-client-identity`.
    pub client_ca: Option<std::path::PathBuf>,
}

/// Keep-alive pool settings of a cluster, per worker and endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most idle connections kept per endpoint.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

/// One `[[cluster]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Unique name.
    pub name: String,
    /// Upstream protocol.
    pub protocol: Protocol,
    /// Balancer.
    pub balancer: BalancerKind,
    /// Endpoint addresses, resolved at load.
    pub endpoints: Vec<SocketAddr>,
    /// Endpoints as written (`host:port`), used as the default Host.
    pub authorities: Vec<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence from an endpoint while its response body is read
    /// (nginx's proxy_read_timeout): past it, the client connection is cut.
    pub read_timeout: Duration,
    /// Keep-alive pool.
    pub pool: PoolSettings,
    /// Outlier ejection (`breaker = { ... }`).
    pub breaker: OutlierSettings,
    /// Thresholds (`limits = { ... }`), for the whole process: each worker
    /// gets its share.
    pub limits: ClusterLimits,
    /// Peak-EWMA settings (`peak_ewma = { ... }`), for
    /// `balancer = "peak-ewma"`.
    pub peak_ewma: PeakEwmaSettings,
    /// How many retries requests to this cluster may add
    /// (`retry_budget = { ... }`), for the whole process: each worker gets
    /// its share of `min_per_second`.
    pub retry_budget: BudgetSettings,
    /// Active health check (`health_check = { ... }`); none by default.
    pub health_check: Option<HealthSettings>,
    /// HTTP/2 to the endpoints (`http2 = { ... }`, with `protocol = "http2"`).
    pub http2: Http2Settings,
    /// What a request does when every endpoint is ejected or unhealthy
    /// (`no_healthy`).
    pub no_healthy: NoHealthy,
    /// How often endpoints given by host name are resolved again
    /// (`dns_refresh`, default 5 s as Envoy's `dns_refresh_rate`; `"0s"`:
    /// never). Each host name stands for its first address.
    pub dns_refresh: Option<Duration>,
    /// TLS to the endpoints (`tls = { ... }`); none by default.
    pub tls: Option<ClusterTls>,
}

/// `tls = { ca, sni, cert, key }` on a cluster: weft speaks TLS to its
/// endpoints, verifying them against `ca`, and presents `cert` when given
/// (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// PEM file of the CAs an endpoint's certificate must chain to.
    pub ca: std::path::PathBuf,
    /// The server name asked for and verified; by default each endpoint's
    /// host as written.
    pub sni: Option<String>,
    /// weft's client certificate chain and key (PEM), for endpoints that
    /// require one.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// `no_healthy`: what a request does when every endpoint of its cluster is
/// ejected or failing its health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NoHealthy {
    /// Go to one of them anyway (Envoy's panic mode): health checks and
    /// ejection can be wrong, and an answer may still come.
    #[default]
    FailOpen,
    /// Answer 503 `no-endpoint` at once.
    FailFast,
}

/// A validated configuration: what every worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[runtime]`.
    pub runtime: RuntimeSettings,
    /// Listeners, each with its routes.
    pub listeners: Vec<Listener>,
    /// Clusters, referenced by index from routes.
    pub clusters: Vec<Cluster>,
    /// `[admin]`: the admin listener, when configured (metrics are kept
    /// only then: nobody could read them otherwise).
    pub admin: Option<AdminSettings>,
}

/// `[admin]`: where the admin endpoint (`/metrics`, `/ready`, `/live`,
/// `/config`, `/clusters`, `POST /drain`) answers. It must not face the
/// outside: it has no authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Address the admin listener binds (once, without SO_REUSEPORT: a
    /// clash is an error).
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        duration::parse(&s).map(Dur).map_err(de::Error::custom)
    }
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default, rename = "listener")]
    listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "route")]
    routes: Vec<Spanned<RawRoute>>,
    #[serde(default, rename = "cluster")]
    clusters: Vec<Spanned<RawCluster>>,
    admin: Option<RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    #[serde(default = "default_workers")]
    workers: Spanned<usize>,
    #[serde(default)]
    driver: Driver,
    #[serde(default)]
    ring_setup: RingSetup,
    #[serde(default)]
    pin_cores: bool,
    #[serde(default = "default_drain")]
    drain_timeout: Dur,
    #[serde(default = "default_idle_poll")]
    idle_poll: Spanned<Dur>,
    #[serde(default)]
    log_level: LogLevel,
}

impl Default for RawRuntime {
    fn default() -> Self {
        RawRuntime {
            workers: default_workers(),
            driver: Driver::Auto,
            ring_setup: RingSetup::Tuned,
            pin_cores: false,
            drain_timeout: default_drain(),
            idle_poll: default_idle_poll(),
            log_level: LogLevel::Info,
        }
    }
}

fn default_idle_poll() -> Spanned<Dur> {
    dflt(Dur(Duration::ZERO))
}

/// The path of a PEM file a `tls` table names (resolved against the
/// file's folder later): refused when empty.
fn pem_path(p: &Spanned<String>, lines: &Lines, field: String) -> Result<std::path::PathBuf, ConfigError> {
    if p.get_ref().trim().is_empty() {
        return Err(err(
            lines.at(p.span().start),
            field,
            "is empty: give the path of a PEM file",
        ));
    }
    Ok(std::path::PathBuf::from(p.get_ref()))
}

/// The longest `runtime.idle_poll`: past it, spinning costs a core for
/// nothing a sleep would not do as well.
const MAX_IDLE_POLL: Duration = Duration::from_millis(10);

fn yes() -> bool {
    true
}

fn default_drain() -> Dur {
    secs(10)
}
/// A default value, with no place in the file (defaults are always valid,
/// so their span is never reported).
fn dflt<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_workers() -> Spanned<usize> {
    dflt(0)
}
fn default_max_connections() -> Spanned<usize> {
    dflt(10_000)
}
fn default_request_line() -> Spanned<usize> {
    dflt(8 * 1024)
}
fn default_header_bytes() -> Spanned<usize> {
    dflt(64 * 1024)
}
fn default_headers() -> Spanned<usize> {
    dflt(100)
}
fn default_header_timeout() -> Spanned<Dur> {
    dflt(secs(10))
}
fn default_idle_spanned() -> Spanned<Dur> {
    dflt(secs(60))
}
fn default_route_timeout() -> Spanned<Dur> {
    dflt(secs(15))
}
fn default_connect() -> Spanned<Dur> {
    dflt(secs(1))
}
fn default_dns_refresh() -> Spanned<Dur> {
    dflt(secs(5))
}
fn default_max_idle() -> usize {
    64
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    listen: Spanned<String>,
    #[serde(default = "default_request_line")]
    max_request_line: Spanned<usize>,
    #[serde(default = "default_header_bytes")]
    max_header_bytes: Spanned<usize>,
    #[serde(default = "default_headers")]
    max_headers: Spanned<usize>,
    #[serde(default = "default_header_timeout")]
    header_timeout: Spanned<Dur>,
    #[serde(default = "default_idle_spanned")]
    idle_timeout: Spanned<Dur>,
    #[serde(default = "default_idle_spanned")]
    write_timeout: Spanned<Dur>,
    #[serde(default)]
    merge_slashes: bool,
    #[serde(default = "yes")]
    generate_request_id: bool,
    #[serde(default = "default_max_connections")]
    max_connections: Spanned<usize>,
    max_requests: Option<Spanned<usize>>,
    tls: Option<Spanned<RawListenerTls>>,
    http2: Option<RawHttp2>,
    access_log: Option<RawAccessLog>,
}

/// `access_log = { path, format }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    path: Spanned<String>,
    format: Option<Spanned<String>>,
}

/// `http2 = { max_concurrent_streams, stream_window, connection_window }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp2 {
    max_concurrent_streams: Option<Spanned<usize>>,
    stream_window: Option<Spanned<usize>>,
    connection_window: Option<Spanned<usize>>,
}

impl RawHttp2 {
    /// The settings, each within its range (a window: 64 KiB - 1, HTTP/2's
    /// initial one, to 2^31 - 1, its largest).
    /// `listener`: on a listener (on a cluster, the stream limit is the
    /// upstream's to set).
    fn settings(
        raw: Option<&RawHttp2>,
        listener: bool,
        lines: &Lines,
        field: impl Fn(&str) -> String,
    ) -> Result<Http2Settings, ConfigError> {
        let mut s = Http2Settings::default();
        let Some(r) = raw else {
            return Ok(s);
        };
        if let (Some(n), false) = (&r.max_concurrent_streams, listener) {
            return Err(err(
                lines.at(n.span().start),
                field("http2.max_concurrent_streams"),
                "an upstream sets its own stream limit (weft keeps to it, opening another \
                 connection when it is reached): leave this out of a cluster",
            ));
        }
        if let Some(n) = &r.max_concurrent_streams {
            s.max_concurrent_streams =
                within(n, 1..=100_000, lines, field("http2.max_concurrent_streams"))? as u32;
        }
        let windows = 65_535..=(i32::MAX as usize);
        if let Some(n) = &r.stream_window {
            s.stream_window = within(n, windows.clone(), lines, field("http2.stream_window"))? as u32;
        }
        if let Some(n) = &r.connection_window {
            s.connection_window = within(n, windows, lines, field("http2.connection_window"))? as u32;
        }
        Ok(s)
    }
}

/// `tls = { cert, key, handshake_timeout }` on a listener.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenerTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    #[serde(default = "default_handshake_timeout")]
    handshake_timeout: Spanned<Dur>,
    client_ca: Option<Spanned<String>>,
    #[serde(default)]
    sni: Vec<RawCertPair>,
}

/// One entry of `tls.sni`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertPair {
    cert: Spanned<String>,
    key: Spanned<String>,
}

fn default_handshake_timeout() -> Spanned<Dur> {
    dflt(secs(10))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    host: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    cluster: Spanned<String>,
    weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<Spanned<String>>,
    listener: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    matcher: Option<Spanned<RawMatch>>,
    cluster: Option<Spanned<String>>,
    split: Option<Spanned<Vec<RawSplit>>>,
    #[serde(default = "default_route_timeout")]
    timeout: Spanned<Dur>,
    retry: Option<Spanned<RawRetry>>,
    rate_limit: Option<RawRateLimit>,
}

/// `rate_limit = { rps, burst }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    rps: Spanned<usize>,
    burst: Option<Spanned<usize>>,
}

/// `retry = { attempts, on, per_try_timeout, backoff_base, backoff_max,
/// statuses, max_replay_bytes }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default = "default_attempts")]
    attempts: Spanned<usize>,
    #[serde(default = "default_retry_on")]
    on: Vec<Spanned<String>>,
    per_try_timeout: Option<Spanned<Dur>>,
    backoff_base: Option<Spanned<Dur>>,
    backoff_max: Option<Spanned<Dur>>,
    #[serde(default)]
    statuses: Vec<Spanned<usize>>,
    max_replay_bytes: Option<Spanned<usize>>,
}

fn default_attempts() -> Spanned<usize> {
    Spanned::new(0..0, 2)
}
fn default_retry_on() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "connect-failure".to_string())]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default = "default_max_idle")]
    max_idle: usize,
    #[serde(default = "default_idle_spanned")]
    idle_timeout: Spanned<Dur>,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            max_idle: default_max_idle(),
            idle_timeout: default_idle_spanned(),
        }
    }
}

/// A cluster's thresholds (Envoy's circuit-breaker thresholds and
/// defaults). weft never queues a request for a connection: past a
/// threshold it answers 503 `overflow` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterLimits {
    /// Connections open to the cluster's endpoints, in use or pooled (1024).
    pub max_connections: u32,
    /// Requests in flight to the cluster (1024).
    pub max_requests: u32,
    /// Retries in flight to the cluster (3).
    pub max_retries: u32,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            max_connections: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

impl ClusterLimits {
    /// One worker's share of each threshold, of `workers` (at least 1).
    pub fn per_worker(&self, workers: usize) -> ClusterLimits {
        let share = |n: u32| n.div_ceil(workers.max(1) as u32).max(1);
        ClusterLimits {
            max_connections: share(self.max_connections),
            max_requests: share(self.max_requests),
            max_retries: share(self.max_retries),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<usize>>,
    max_requests: Option<Spanned<usize>>,
    max_retries: Option<Spanned<usize>>,
}

/// `peak_ewma = { ... }`: linkerd2-proxy's defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeakEwma {
    #[serde(default = "default_rtt")]
    default_rtt: Spanned<Dur>,
    #[serde(default = "default_decay")]
    decay: Spanned<Dur>,
}

fn default_rtt() -> Spanned<Dur> {
    dflt(Dur(Duration::from_millis(30)))
}
fn default_decay() -> Spanned<Dur> {
    dflt(secs(10))
}

impl Default for RawPeakEwma {
    fn default() -> Self {
        RawPeakEwma {
            default_rtt: default_rtt(),
            decay: default_decay(),
        }
    }
}

/// `retry_budget = { ... }`: linkerd2-proxy's defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    #[serde(default = "default_ratio")]
    ratio: Spanned<f64>,
    #[serde(default = "default_min_per_second")]
    min_per_second: Spanned<usize>,
    #[serde(default = "default_budget_window")]
    window: Spanned<Dur>,
}

fn default_ratio() -> Spanned<f64> {
    Spanned::new(0..0, 0.2)
}
fn default_min_per_second() -> Spanned<usize> {
    Spanned::new(0..0, 10)
}
fn default_budget_window() -> Spanned<Dur> {
    dflt(secs(10))
}

impl Default for RawBudget {
    fn default() -> Self {
        RawBudget {
            ratio: default_ratio(),
            min_per_second: default_min_per_second(),
            window: default_budget_window(),
        }
    }
}

/// `breaker = { ... }`: outlier ejection, Envoy's defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default = "default_consecutive_failures")]
    consecutive_failures: Spanned<usize>,
    #[serde(default = "default_base_ejection")]
    base_ejection: Spanned<Dur>,
    #[serde(default = "default_max_ejection")]
    max_ejection: Spanned<Dur>,
    #[serde(default = "default_max_ejection_percent")]
    max_ejection_percent: Spanned<usize>,
    #[serde(default)]
    failures: RawFailures,
}

fn default_consecutive_failures() -> Spanned<usize> {
    Spanned::new(0..0, 5)
}
fn default_base_ejection() -> Spanned<Dur> {
    dflt(secs(30))
}
fn default_max_ejection() -> Spanned<Dur> {
    dflt(secs(300))
}
fn default_max_ejection_percent() -> Spanned<usize> {
    Spanned::new(0..0, 10)
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
            failures: RawFailures::default(),
        }
    }
}

/// `breaker.failures`: which answers count against an endpoint.
#[derive(Deserialize, Default, Clone, Copy)]
enum RawFailures {
    /// Any 5xx (and every connection failure).
    #[default]
    #[serde(rename = "5xx")]
    Any5xx,
    /// 502, 503, 504 (and every connection failure).
    #[serde(rename = "gateway")]
    Gateway,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    protocol: Option<Spanned<Protocol>>,
    #[serde(default)]
    balancer: BalancerKind,
    endpoints: Spanned<Vec<String>>,
    #[serde(default = "default_connect")]
    connect_timeout: Spanned<Dur>,
    #[serde(default = "default_idle_spanned")]
    read_timeout: Spanned<Dur>,
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    retry_budget: RawBudget,
    #[serde(default)]
    peak_ewma: RawPeakEwma,
    limits: Option<RawLimits>,
    health_check: Option<Spanned<RawHealth>>,
    http2: Option<RawHttp2>,
    #[serde(default)]
    no_healthy: NoHealthy,
    tls: Option<Spanned<RawClusterTls>>,
    #[serde(default = "default_dns_refresh")]
    dns_refresh: Spanned<Dur>,
}

/// `tls = { ca, sni, cert, key }` on a cluster.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterTls {
    ca: Spanned<String>,
    sni: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

/// `health_check = { ... }`: Envoy's usual thresholds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default = "default_health_path")]
    path: Spanned<String>,
    #[serde(default = "default_health_interval")]
    interval: Spanned<Dur>,
    #[serde(default = "default_health_timeout")]
    timeout: Spanned<Dur>,
    #[serde(default = "default_health_healthy")]
    healthy: Spanned<usize>,
    #[serde(default = "default_health_unhealthy")]
    unhealthy: Spanned<usize>,
}

fn default_health_path() -> Spanned<String> {
    dflt(HealthSettings::default().path)
}
fn default_health_interval() -> Spanned<Dur> {
    dflt(Dur(HealthSettings::default().interval))
}
fn default_health_timeout() -> Spanned<Dur> {
    dflt(Dur(HealthSettings::default().timeout))
}
fn default_health_healthy() -> Spanned<usize> {
    dflt(HealthSettings::default().healthy as usize)
}
fn default_health_unhealthy() -> Spanned<usize> {
    dflt(HealthSettings::default().unhealthy as usize)
}

/// Resolves `host:port` to addresses; passed in by the runtime (DNS is IO).
pub type Resolver<'a> = &'a dyn Fn(&str) -> Result<Vec<SocketAddr>, String>;

/// A resolver that only accepts literal `IP:port` addresses.
pub fn literal_only(s: &str) -> Result<Vec<SocketAddr>, String> {
    s.parse::<SocketAddr>()
        .map(|a| vec![a])
        .map_err(|_| format!("`{s}` is not an IP:port address"))
}

/// Line numbers of byte offsets in the source, for messages: the offset
/// of each line's start, found once, then a binary search per lookup (a
/// count of newlines per lookup made loading a large file quadratic).
struct Lines(Vec<usize>);

impl Lines {
    fn new(src: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(
                src.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Lines(starts)
    }

    /// The 1-based line of byte `offset`.
    fn at(&self, offset: usize) -> usize {
        self.0
            .partition_point(|start| {
                #[cfg(test)]
                probes::count();
                *start <= offset
            })
            .max(1)
    }
}

/// How many line starts the lookups of this thread compared (tests: the
/// work of loading a file stays in proportion to its size).
#[cfg(test)]
mod probes {
    use std::cell::Cell;

    thread_local!(static PROBES: Cell<u64> = const { Cell::new(0) });

    pub fn count() {
        PROBES.with(|p| p.set(p.get() + 1));
    }

    /// The count so far, and from zero again.
    pub fn take() -> u64 {
        PROBES.with(|p| p.replace(0))
    }
}

/// Checks that the `i`-th `kind` (cluster, listener) has a non-empty name
/// not used before, records it in `index` and returns it trimmed.
fn unique_name(
    kind: &str,
    name: &Spanned<String>,
    i: usize,
    index: &mut HashMap<String, usize>,
    lines: &Lines,
) -> Result<String, ConfigError> {
    let line = lines.at(name.span().start);
    let field = format!("{kind}[{i}].name");
    let trimmed = name.get_ref().trim().to_string();
    if trimmed.is_empty() {
        return Err(err(line, field, format!("a {kind} needs a non-empty name")));
    }
    if index.insert(trimmed.clone(), i).is_some() {
        return Err(err(line, field, format!("duplicate {kind} name `{trimmed}`")));
    }
    Ok(trimmed)
}

/// Most worker threads a configuration may ask for (0 is one per core).
const MAX_WORKERS: usize = 1024;

/// A duration that must be longer than zero, or the error naming its line.
fn positive(d: &Spanned<Dur>, lines: &Lines, field: String) -> Result<Duration, ConfigError> {
    if d.get_ref().0.is_zero() {
        return Err(err(lines.at(d.span().start), field, "must be longer than zero"));
    }
    Ok(d.get_ref().0)
}

/// A number that must lie in `range`, or the error naming its line.
fn within(
    n: &Spanned<usize>,
    range: std::ops::RangeInclusive<usize>,
    lines: &Lines,
    field: String,
) -> Result<usize, ConfigError> {
    let v = *n.get_ref();
    if !range.contains(&v) {
        return Err(err(
            lines.at(n.span().start),
            field,
            format!(
                "{v} is out of range: must be between {} and {}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(v)
}

fn err(line: usize, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        line: Some(line),
        field: field.into(),
        message: message.into(),
    }
}

impl Config {
    /// Parses and validates a configuration, resolving endpoint names with `resolve`.
    pub fn parse(src: &str, resolve: Resolver<'_>) -> Result<Config, ConfigError> {
        let lines = Lines::new(src);
        let raw: RawConfig = toml::from_str(src).map_err(|e| ConfigError {
            line: e.span().map(|s| lines.at(s.start)),
            field: String::new(),
            message: e.message().trim().to_string(),
        })?;

        let runtime = RuntimeSettings {
            workers: within(
                &raw.runtime.workers,
                0..=MAX_WORKERS,
                &lines,
                "runtime.workers".into(),
            )?,
            driver: raw.runtime.driver,
            ring_setup: raw.runtime.ring_setup,
            pin_cores: raw.runtime.pin_cores,
            drain_timeout: raw.runtime.drain_timeout.0,
            idle_poll: {
                let d = raw.runtime.idle_poll.get_ref().0;
                if d > MAX_IDLE_POLL {
                    return Err(err(
                        lines.at(raw.runtime.idle_poll.span().start),
                        "runtime.idle_poll",
                        format!("{d:?} is too long: at most {MAX_IDLE_POLL:?} (0 turns it off)"),
                    ));
                }
                d
            },
            log_level: raw.runtime.log_level,
        };

        // Clusters first: routes refer to them by name.
        let mut clusters = Vec::new();
        let mut cluster_index = HashMap::new();
        for (i, c) in raw.clusters.iter().enumerate() {
            let line = lines.at(c.span().start);
            let c = c.get_ref();
            let field = |f: &str| format!("cluster[{i}].{f}");
            let name = unique_name("cluster", &c.name, i, &mut cluster_index, &lines)?;
            let protocol = c.protocol.as_ref().map(|p| *p.get_ref()).unwrap_or_default();
            let eline = lines.at(c.endpoints.span().start);
            if c.endpoints.get_ref().is_empty() {
                return Err(err(
                    eline,
                    field("endpoints"),
                    "no endpoints: every request would get 503; list at least one \"IP:port\" or \"host:port\"",
                ));
            }
            let mut endpoints = Vec::new();
            let mut authorities = Vec::new();
            for e in c.endpoints.get_ref() {
                let addrs = resolve(e)
                    .map_err(|m| err(eline, field("endpoints"), format!("cannot resolve `{e}`: {m}")))?;
                let Some(addr) = addrs.first() else {
                    return Err(err(
                        eline,
                        field("endpoints"),
                        format!("`{e}` resolved to no address"),
                    ));
                };
                if let Some(first) = endpoints.iter().position(|a| a == addr) {
                    return Err(err(
                        eline,
                        field("endpoints"),
                        format!(
                            "`{e}` is {addr}, which `{}` already gives: list each endpoint once (weight a split instead)",
                            authorities[first]
                        ),
                    ));
                }
                endpoints.push(*addr);
                authorities.push(e.clone());
            }
            let connect_timeout = positive(&c.connect_timeout, &lines, field("connect_timeout"))?;
            let read_timeout = positive(&c.read_timeout, &lines, field("read_timeout"))?;
            let pool_idle = positive(&c.pool.idle_timeout, &lines, field("pool.idle_timeout"))?;
            let b = &c.breaker;
            let breaker = OutlierSettings {
                consecutive_failures: within(
                    &b.consecutive_failures,
                    0..=1_000_000,
                    &lines,
                    field("breaker.consecutive_failures"),
                )? as u32,
                base_ejection: positive(&b.base_ejection, &lines, field("breaker.base_ejection"))?,
                max_ejection: positive(&b.max_ejection, &lines, field("breaker.max_ejection"))?,
                max_ejection_percent: within(
                    &b.max_ejection_percent,
                    0..=100,
                    &lines,
                    field("breaker.max_ejection_percent"),
                )? as u8,
                failures: match b.failures {
                    RawFailures::Any5xx => FailureKind::Any5xx,
                    RawFailures::Gateway => FailureKind::Gateway,
                },
            };
            let peak_ewma = PeakEwmaSettings {
                default_rtt: positive(&c.peak_ewma.default_rtt, &lines, field("peak_ewma.default_rtt"))?,
                decay: positive(&c.peak_ewma.decay, &lines, field("peak_ewma.decay"))?,
            };
            let mut limits = ClusterLimits::default();
            if let Some(rl) = &c.limits {
                let set =
                    |v: &Option<Spanned<usize>>, name: &str, dst: &mut u32| -> Result<(), ConfigError> {
                        if let Some(v) = v {
                            *dst =
                                within(v, 1..=10_000_000, &lines, field(&format!("limits.{name}")))? as u32;
                        }
                        Ok(())
                    };
                set(
                    &rl.max_connections,
                    "max_connections",
                    &mut limits.max_connections,
                )?;
                set(&rl.max_requests, "max_requests", &mut limits.max_requests)?;
                set(&rl.max_retries, "max_retries", &mut limits.max_retries)?;
            }
            let rb = &c.retry_budget;
            let ratio = *rb.ratio.get_ref();
            if !(0.0..=10.0).contains(&ratio) {
                return Err(err(
                    lines.at(rb.ratio.span().start),
                    field("retry_budget.ratio"),
                    format!("{ratio} is out of range: retries per request must be between 0 and 10"),
                ));
            }
            let retry_budget = BudgetSettings {
                ratio,
                min_per_second: within(
                    &rb.min_per_second,
                    0..=1_000_000,
                    &lines,
                    field("retry_budget.min_per_second"),
                )? as u32,
                window: positive(&rb.window, &lines, field("retry_budget.window"))?,
            };
            if breaker.max_ejection < breaker.base_ejection {
                return Err(err(
                    lines.at(b.max_ejection.span().start),
                    field("breaker.max_ejection"),
                    "is shorter than base_ejection: make it at least as long",
                ));
            }
            let health_check = match &c.health_check {
                None => None,
                Some(h) if protocol == Protocol::Http2 => {
                    return Err(err(
                        lines.at(h.span().start),
                        field("health_check"),
                        "health checks speak HTTP/1.1, and this cluster's endpoints speak HTTP/2: \
                         leave health_check out (passive outlier detection still applies)",
                    ));
                }
                Some(h) => {
                    let h = h.get_ref();
                    let path = h.path.get_ref();
                    let fine = path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic());
                    if !fine {
                        return Err(err(
                            lines.at(h.path.span().start),
                            field("health_check.path"),
                            format!("`{path}` is not a request path: start it with `/`, with no spaces or control characters"),
                        ));
                    }
                    let interval = positive(&h.interval, &lines, field("health_check.interval"))?;
                    if interval < Duration::from_millis(10) {
                        return Err(err(
                            lines.at(h.interval.span().start),
                            field("health_check.interval"),
                            "is shorter than 10ms: probes that often would load every endpoint; make it longer",
                        ));
                    }
                    let timeout = positive(&h.timeout, &lines, field("health_check.timeout"))?;
                    if timeout > interval {
                        return Err(err(
                            lines.at(h.timeout.span().start),
                            field("health_check.timeout"),
                            "is longer than the interval: make it at most as long",
                        ));
                    }
                    Some(HealthSettings {
                        path: path.clone(),
                        interval,
                        timeout,
                        healthy: within(&h.healthy, 1..=100, &lines, field("health_check.healthy"))? as u32,
                        unhealthy: within(&h.unhealthy, 1..=100, &lines, field("health_check.unhealthy"))?
                            as u32,
                    })
                }
            };
            let _ = line;
            clusters.push(Cluster {
                name,
                protocol,
                balancer: c.balancer,
                endpoints,
                authorities,
                connect_timeout,
                read_timeout,
                pool: PoolSettings {
                    max_idle: c.pool.max_idle,
                    idle_timeout: pool_idle,
                },
                breaker,
                retry_budget,
                peak_ewma,
                limits,
                health_check,
                http2: RawHttp2::settings(c.http2.as_ref(), false, &lines, field)?,
                no_healthy: c.no_healthy,
                dns_refresh: Some(c.dns_refresh.get_ref().0).filter(|d| !d.is_zero()),
                tls: match &c.tls {
                    None => None,
                    Some(t) => {
                        let t = t.get_ref();
                        let path = |p: &Spanned<String>, name: &str| {
                            pem_path(p, &lines, field(&format!("tls.{name}")))
                        };
                        let client_cert = match (&t.cert, &t.key) {
                            (None, None) => None,
                            (Some(c), Some(k)) => Some((path(c, "cert")?, path(k, "key")?)),
                            (Some(c), None) | (None, Some(c)) => {
                                return Err(err(
                                    lines.at(c.span().start),
                                    field("tls"),
                                    "give both `cert` and `key` (weft's client certificate), or neither",
                                ))
                            }
                        };
                        Some(ClusterTls {
                            ca: path(&t.ca, "ca")?,
                            sni: t.sni.as_ref().map(|s| s.get_ref().clone()),
                            client_cert,
                        })
                    }
                },
            });
        }

        let mut listeners = Vec::new();
        let mut listener_index = HashMap::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let l = l.get_ref();
            let field = |f: &str| format!("listener[{i}].{f}");
            let name = unique_name("listener", &l.name, i, &mut listener_index, &lines)?;
            let addr: SocketAddr = l.listen.get_ref().parse().map_err(|_| {
                err(
                    lines.at(l.listen.span().start),
                    field("listen"),
                    format!(
                        "`{}` is not an IP:port address, like \"0.0.0.0:8080\"",
                        l.listen.get_ref()
                    ),
                )
            })?;
            if listeners.iter().any(|x: &Listener| x.addr == addr) {
                return Err(err(
                    lines.at(l.listen.span().start),
                    field("listen"),
                    format!("address {addr} is used by two listeners"),
                ));
            }
            let max_headers = within(&l.max_headers, 1..=256, &lines, field("max_headers"))?;
            // The shortest request line, `GET / HTTP/1.1`, is 14 bytes.
            let max_request_line = within(
                &l.max_request_line,
                16..=1 << 20,
                &lines,
                field("max_request_line"),
            )?;
            let max_header_bytes = within(
                &l.max_header_bytes,
                64..=1 << 24,
                &lines,
                field("max_header_bytes"),
            )?;
            listeners.push(Listener {
                index: i,
                name,
                kind: ListenerKind::Proxy,
                addr,
                max_request_line,
                max_header_bytes,
                max_headers,
                header_timeout: positive(&l.header_timeout, &lines, field("header_timeout"))?,
                idle_timeout: positive(&l.idle_timeout, &lines, field("idle_timeout"))?,
                write_timeout: positive(&l.write_timeout, &lines, field("write_timeout"))?,
                merge_slashes: l.merge_slashes,
                generate_request_id: l.generate_request_id,
                http2: RawHttp2::settings(l.http2.as_ref(), true, &lines, field)?,
                access_log: match &l.access_log {
                    None => None,
                    Some(a) => {
                        let p = a.path.get_ref().trim();
                        let path = match p {
                            "" => {
                                return Err(err(
                                    lines.at(a.path.span().start),
                                    field("access_log.path"),
                                    "is empty: give a file, or \"-\" for standard output",
                                ))
                            }
                            "-" => LogPath::Stdout,
                            p => LogPath::File(p.into()),
                        };
                        let format = match &a.format {
                            None => crate::access_log::Format::parse("text"),
                            Some(f) => crate::access_log::Format::parse(f.get_ref()),
                        }
                        .map_err(|m| {
                            let line = a
                                .format
                                .as_ref()
                                .map_or(lines.at(a.path.span().start), |f| lines.at(f.span().start));
                            err(line, field("access_log.format"), m)
                        })?;
                        Some(AccessLogSettings { path, format })
                    }
                },
                max_connections: within(
                    &l.max_connections,
                    1..=10_000_000,
                    &lines,
                    field("max_connections"),
                )?,
                max_requests: l
                    .max_requests
                    .as_ref()
                    .map(|m| within(m, 1..=10_000_000, &lines, field("max_requests")))
                    .transpose()?,
                tls: match &l.tls {
                    None => None,
                    Some(t) => {
                        let t = t.get_ref();
                        let path = |p: &Spanned<String>, name: &str| {
                            pem_path(p, &lines, field(&format!("tls.{name}")))
                        };
                        Some(ListenerTls {
                            cert: path(&t.cert, "cert")?,
                            key: path(&t.key, "key")?,
                            handshake_timeout: positive(
                                &t.handshake_timeout,
                                &lines,
                                field("tls.handshake_timeout"),
                            )?,
                            client_ca: t.client_ca.as_ref().map(|c| path(c, "client_ca")).transpose()?,
                            sni: t
                                .sni
                                .iter()
                                .map(|p| Ok((path(&p.cert, "sni.cert")?, path(&p.key, "sni.key")?)))
                                .collect::<Result<_, ConfigError>>()?,
                        })
                    }
                },
                routes: RouteTable::default(),
            });
        }
        if listeners.is_empty() {
            return Err(ConfigError {
                line: None,
                field: "listener".into(),
                message: "no [[listener]]: add one with a name and a listen address".into(),
            });
        }

        let admin = match &raw.admin {
            None => None,
            Some(a) => {
                let addr: SocketAddr = a.listen.get_ref().parse().map_err(|_| {
                    err(
                        lines.at(a.listen.span().start),
                        "admin.listen",
                        format!(
                            "`{}` is not an IP:port address, like \"127.0.0.1:9901\"",
                            a.listen.get_ref()
                        ),
                    )
                })?;
                if addr.port() != 0 && listeners.iter().any(|x: &Listener| x.addr == addr) {
                    return Err(err(
                        lines.at(a.listen.span().start),
                        "admin.listen",
                        format!("{addr} is also a listener's address: give the admin listener its own port"),
                    ));
                }
                Some(AdminSettings { addr })
            }
        };

        // Per listener: its routes' names (labels in metrics), unique.
        let mut route_names: Vec<HashMap<String, usize>> = vec![HashMap::new(); listeners.len()];
        for (i, r) in raw.routes.iter().enumerate() {
            let line = lines.at(r.span().start);
            let r = r.get_ref();
            let field = |f: &str| format!("route[{i}].{f}");
            let li = match &r.listener {
                Some(n) => *listener_index.get(n.get_ref().as_str()).ok_or_else(|| {
                    err(
                        lines.at(n.span().start),
                        field("listener"),
                        format!("no listener named `{}`", n.get_ref()),
                    )
                })?,
                None if listeners.len() == 1 => 0,
                None => {
                    return Err(err(
                        line,
                        field("listener"),
                        "several listeners exist: name the route's listener",
                    ))
                }
            };
            let lookup = |n: &Spanned<String>| {
                cluster_index.get(n.get_ref().as_str()).copied().ok_or_else(|| {
                    err(
                        lines.at(n.span().start),
                        field("cluster"),
                        format!("no cluster named `{}`", n.get_ref()),
                    )
                })
            };
            let target = match (&r.cluster, &r.split) {
                (Some(c), None) => Target::Cluster(lookup(c)?),
                (None, Some(split)) => {
                    let sline = lines.at(split.span().start);
                    if split.get_ref().is_empty() {
                        return Err(err(sline, field("split"), "a split needs at least one cluster"));
                    }
                    let mut cs = Vec::new();
                    let mut ws = Vec::new();
                    for s in split.get_ref() {
                        cs.push(lookup(&s.cluster).map_err(|mut e| {
                            e.field = field("split.cluster");
                            e
                        })?);
                        ws.push(s.weight);
                    }
                    let total: u64 = ws.iter().map(|w| u64::from(*w)).sum();
                    if total == 0 {
                        return Err(err(
                            sline,
                            field("split"),
                            "the weights add up to zero; give at least one cluster a positive weight",
                        ));
                    }
                    Target::Split {
                        clusters: cs,
                        weights: ws,
                        total,
                    }
                }
                (Some(c), Some(_)) => {
                    return Err(err(
                        lines.at(c.span().start),
                        field("cluster"),
                        "give either `cluster` or `split`, not both",
                    ))
                }
                (None, None) => {
                    return Err(err(
                        line,
                        field("cluster"),
                        "a route needs `cluster = \"name\"` or a `split`",
                    ))
                }
            };
            let m = r.matcher.as_ref().map(|m| m.get_ref());
            let path = match m {
                Some(RawMatch {
                    path: Some(_),
                    path_prefix: Some(_),
                    ..
                }) => {
                    return Err(err(
                        line,
                        field("match"),
                        "give either `path` or `path_prefix`, not both",
                    ))
                }
                Some(RawMatch { path: Some(p), .. }) => PathMatch::Exact(p.clone()),
                Some(RawMatch {
                    path_prefix: Some(p), ..
                }) => PathMatch::Prefix(p.clone()),
                _ => PathMatch::Any,
            };
            for p in [&path] {
                if let PathMatch::Exact(p) | PathMatch::Prefix(p) = p {
                    if !p.starts_with('/') {
                        return Err(err(
                            line,
                            field("match.path"),
                            format!("`{p}` must start with `/`"),
                        ));
                    }
                }
            }
            let matcher = RouteMatch {
                host: m
                    .and_then(|m| m.host.as_deref())
                    .map(HostMatch::parse)
                    .unwrap_or(HostMatch::Any),
                path,
                method: m.and_then(|m| m.method.clone()),
                headers: m
                    .map(|m| {
                        m.headers
                            .iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let timeout = r.timeout.get_ref().0;
            if timeout.is_zero() {
                return Err(err(
                    lines.at(r.timeout.span().start),
                    field("timeout"),
                    "a route timeout must be more than 0 (it bounds the wait for the upstream's answer)",
                ));
            }
            let retry = match &r.retry {
                None => RetryPolicy::default(),
                Some(rr) => {
                    let rr = rr.get_ref();
                    let attempts = within(&rr.attempts, 1..=10, &lines, field("retry.attempts"))? as u32;
                    let mut p = RetryPolicy {
                        attempts,
                        connect_failure: false,
                        ..RetryPolicy::default()
                    };
                    for on in &rr.on {
                        match on.get_ref().as_str() {
                            "connect-failure" => p.connect_failure = true,
                            "reset" => p.reset = true,
                            "timeout" => p.timeout = true,
                            "refused-stream" => p.refused_stream = true,
                            "5xx" => p.status = Some(FailureKind::Any5xx),
                            "gateway-error" if p.status != Some(FailureKind::Any5xx) => {
                                p.status = Some(FailureKind::Gateway)
                            }
                            "gateway-error" => {}
                            other => {
                                return Err(err(
                                    lines.at(on.span().start),
                                    field("retry.on"),
                                    format!(
                                        "unknown retry condition `{other}`: use connect-failure, refused-stream, reset, timeout, 5xx or gateway-error (list status codes in `statuses`)"
                                    ),
                                ))
                            }
                        }
                    }
                    for code in &rr.statuses {
                        let code = within(code, 400..=599, &lines, field("retry.statuses"))?;
                        p.statuses.insert(code as u16);
                    }
                    if let Some(n) = &rr.max_replay_bytes {
                        p.max_replay_bytes =
                            within(n, 0..=16 * 1024 * 1024, &lines, field("retry.max_replay_bytes"))?;
                    }
                    if let Some(d) = &rr.per_try_timeout {
                        p.per_try_timeout = Some(positive(d, &lines, field("retry.per_try_timeout"))?);
                    }
                    if let Some(d) = &rr.backoff_base {
                        p.backoff_base = d.get_ref().0;
                    }
                    if let Some(d) = &rr.backoff_max {
                        p.backoff_max = d.get_ref().0;
                    }
                    if p.backoff_max < p.backoff_base {
                        return Err(err(
                            line,
                            field("retry.backoff_max"),
                            "is shorter than backoff_base: make it at least as long",
                        ));
                    }
                    if p.timeout && p.per_try_timeout.is_none() {
                        return Err(err(
                            line,
                            field("retry.on"),
                            "retrying on `timeout` needs a per_try_timeout (the route timeout bounds all attempts together)",
                        ));
                    }
                    p
                }
            };
            let rate_limit = match &r.rate_limit {
                None => None,
                Some(rl) => {
                    let rps = within(&rl.rps, 1..=100_000_000, &lines, field("rate_limit.rps"))? as u32;
                    let burst = match &rl.burst {
                        Some(b) => within(b, 1..=100_000_000, &lines, field("rate_limit.burst"))? as u32,
                        // A second's worth, as a default burst.
                        None => rps,
                    };
                    Some(RateLimit { rps, burst })
                }
            };
            let position = listeners[li].routes.len();
            let name = match &r.name {
                Some(n) => unique_name("route", n, i, &mut route_names[li], &lines)?,
                None => {
                    let name = position.to_string();
                    if route_names[li].insert(name.clone(), i).is_some() {
                        return Err(err(
                            line,
                            field("name"),
                            format!("a route of this listener is named `{name}`, this route's default name (its position): rename that one"),
                        ));
                    }
                    name
                }
            };
            listeners[li].routes.push(Route {
                name,
                matcher,
                target,
                timeout,
                retry,
                rate_limit,
                line,
            });
        }
        for (i, l) in listeners.iter().enumerate() {
            if l.routes.is_empty() {
                let line = raw.listeners.get(i).map(|r| lines.at(r.span().start));
                return Err(ConfigError {
                    line,
                    field: format!("listener[{i}]"),
                    message: format!(
                        "listener `{}` has no route: every request would get 404; add a [[route]] (with listener = \"{}\" when there are several listeners)",
                        l.name, l.name
                    ),
                });
            }
        }
        Ok(Config {
            runtime,
            listeners,
            clusters,
            admin,
        })
    }

    /// Whether a running weft can take `new` in place of this
    /// configuration (a reload): everything but `[runtime]` (workers,
    /// driver, ring) and `[admin]`, which are set up once at start. The
    /// error names what changed.
    pub fn reloadable(&self, new: &Config) -> Result<(), String> {
        if self.runtime != new.runtime {
            return Err("[runtime] changed".into());
        }
        if self.admin != new.admin {
            return Err("[admin] changed".into());
        }
        Ok(())
    }

    /// Routes that can never match because an earlier route of the same
    /// listener matches every request they would: one message each, for
    /// `weft check` and the log. Not an error: the configuration works.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.listeners {
            let routes = l.routes.routes();
            for (j, later) in routes.iter().enumerate() {
                let earlier = l.routes.may_cover(j).into_iter().map(|i| &routes[i]);
                if let Some(earlier) = earlier.into_iter().find(|e| e.matcher.covers(&later.matcher)) {
                    out.push(format!(
                        "line {}: this route of listener `{}` never matches: the route on line {} matches every request it would (the first match wins)",
                        later.line, l.name, earlier.line
                    ));
                }
            }
        }
        out
    }

    /// A human summary of what this configuration runs, for `weft check`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        use std::fmt::Write;
        let workers = if self.runtime.workers == 0 {
            "one per core".to_string()
        } else {
            self.runtime.workers.to_string()
        };
        let _ = writeln!(
            s,
            "workers: {workers}, driver: {:?}, pin cores: {}",
            self.runtime.driver, self.runtime.pin_cores
        );
        if let Some(a) = &self.admin {
            let _ = writeln!(s, "admin on {}", a.addr);
        }
        for l in &self.listeners {
            let _ = writeln!(
                s,
                "listener {} on {} ({} routes{})",
                l.name,
                l.addr,
                l.routes.len(),
                if l.tls.is_some() { ", TLS" } else { "" }
            );
            for r in l.routes.routes() {
                let target = match &r.target {
                    Target::Cluster(c) => self.clusters[*c].name.clone(),
                    Target::Split {
                        clusters, weights, ..
                    } => clusters
                        .iter()
                        .zip(weights)
                        .map(|(c, w)| format!("{}={w}", self.clusters[*c].name))
                        .collect::<Vec<_>>()
                        .join(" "),
                };
                let _ = writeln!(
                    s,
                    "  route {} (line {}): {} -> {target}",
                    r.name,
                    r.line,
                    r.matcher.describe()
                );
            }
        }
        for c in &self.clusters {
            // A host name with the address it stands for now.
            let eps: Vec<String> = c
                .endpoints
                .iter()
                .zip(&c.authorities)
                .map(|(e, a)| match a.parse::<SocketAddr>() {
                    Ok(_) => e.to_string(),
                    Err(_) => format!("{a}={e}"),
                })
                .collect();
            let named = c.authorities.iter().any(|a| a.parse::<SocketAddr>().is_err());
            let refresh = match c.dns_refresh {
                Some(every) if named => format!(" (names resolved again every {every:?})"),
                _ => String::new(),
            };
            let proto = match (c.protocol, c.tls.is_some()) {
                (Protocol::Http1, false) => "HTTP/1.1",
                (Protocol::Http1, true) => "HTTP/1.1 over TLS",
                (Protocol::Http2, false) => "HTTP/2",
                (Protocol::Http2, true) => "HTTP/2 over TLS",
            };
            let _ = writeln!(
                s,
                "cluster {} ({:?}, {proto}): {}{refresh}",
                c.name,
                c.balancer,
                eps.join(", ")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generated file of `routes` routes (one per host) and `clusters`
    /// clusters of five endpoints each.
    fn large(routes: usize, clusters: usize) -> String {
        let mut src = String::from("[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:1\"\n");
        for r in 0..routes {
            src.push_str(&format!(
                "[[route]]\nmatch = {{ host = \"h{r}.example\" }}\ncluster = \"c{}\"\n",
                r % clusters
            ));
        }
        for c in 0..clusters {
            let eps: Vec<String> = (0..5)
                .map(|e| format!("\"10.{}.{}.{e}:80\"", c / 250, c % 250))
                .collect();
            src.push_str(&format!(
                "[[cluster]]\nname = \"c{c}\"\nendpoints = [{}]\n",
                eps.join(", ")
            ));
        }
        src
    }

    #[test]
    fn loading_grows_in_proportion_to_the_file() {
        // 10,000 routes and 2,000 clusters (about 870 KB) against an
        // eighth of it: the work of finding line numbers (the part that once
        // counted newlines for every field) grows by about eight, not by
        // sixty-four; binary search makes it a little more than eight.
        let mut work = Vec::new();
        for (routes, clusters) in [(1_250, 250), (10_000, 2_000)] {
            let src = large(routes, clusters);
            probes::take();
            let c = Config::parse(&src, &literal_only).expect("valid");
            assert_eq!(
                (c.listeners[0].routes.len(), c.clusters.len()),
                (routes, clusters)
            );
            work.push(probes::take() as f64);
        }
        let ratio = work[1] / work[0];
        assert!(
            ratio > 4.0 && ratio < 12.0,
            "line lookups grew {ratio:.1} times for 8 times the file: {work:?}"
        );
    }

    #[test]
    fn line_numbers_match_a_count_of_newlines() {
        for src in ["", "a", "\n", "a\nb", "a\n\nbc\n", "\n\nx\n\n"] {
            let lines = Lines::new(src);
            for offset in 0..=src.len() + 2 {
                let naive = src.as_bytes()[..offset.min(src.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1;
                assert_eq!(lines.at(offset), naive, "{src:?} at {offset}");
            }
        }
    }

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, &literal_only)
    }

    const GOOD: &str = r#"
[runtime]
workers = 2

[[listener]]
name = "ingress"
listen = "127.0.0.1:8080"

[[route]]
match = { host = "api.example.com", path_prefix = "/v1", headers = { X-Canary = "1" } }
split = [ { cluster = "b", weight = 1 }, { cluster = "a", weight = 99 } ]

[[route]]
cluster = "a"

[[cluster]]
name = "a"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]
connect_timeout = "250ms"

[[cluster]]
name = "b"
balancer = "round-robin"
endpoints = ["127.0.0.1:9003"]
pool = { max_idle = 4, idle_timeout = "5s" }
"#;

    #[test]
    fn parses_the_sketch() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.runtime.workers, 2);
        assert_eq!(c.listeners[0].routes.len(), 2);
        assert_eq!(
            c.listeners[0].routes.routes()[0].matcher.headers,
            vec![("x-canary".into(), "1".into())]
        );
        assert_eq!(c.listeners[0].routes.routes()[0].line, 9);
        assert_eq!(c.clusters[0].connect_timeout, Duration::from_millis(250));
        assert_eq!(c.clusters[1].pool.max_idle, 4);
        assert!(c.describe().contains("b=1 a=99"));
    }

    fn error_of(src: &str) -> ConfigError {
        parse(src).expect_err("must be refused")
    }

    #[test]
    fn unknown_field_names_line() {
        let e = error_of("[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("unknown field `lisen`"), "{e}");
    }

    #[test]
    fn breaker_defaults_and_mistakes() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        let c = parse(base).expect("valid");
        assert_eq!(
            c.clusters[0].breaker,
            OutlierSettings::default(),
            "Envoy's defaults"
        );
        let c = parse(&format!(
            "{base}breaker = {{ consecutive_failures = 3, base_ejection = \"10s\", failures = \"gateway\" }}\n"
        ))
        .expect("valid");
        let b = c.clusters[0].breaker;
        assert_eq!(
            (b.consecutive_failures, b.base_ejection),
            (3, Duration::from_secs(10))
        );
        assert_eq!((b.max_ejection_percent, b.failures), (10, FailureKind::Gateway));
        let e = error_of(&format!("{base}breaker = {{ max_ejection_percent = 101 }}\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(9), "cluster[0].breaker.max_ejection_percent"),
            "{e}"
        );
        let e = error_of(&format!(
            "{base}breaker = {{ base_ejection = \"60s\", max_ejection = \"30s\" }}\n"
        ));
        assert!(e.message.contains("shorter than base_ejection"), "{e}");
        let e = error_of(&format!("{base}breaker = {{ failures = \"4xx\" }}\n"));
        assert_eq!(e.line, Some(9), "{e}");
    }

    #[test]
    fn retry_defaults_and_mistakes() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n[[route]]\ncluster = \"c\"\n";
        let c = parse(base).expect("valid");
        let r = c.listeners[0].routes.routes()[0].retry;
        assert_eq!(
            (r.attempts, r.connect_failure),
            (2, true),
            "nginx's proxy_next_upstream error"
        );
        let c = parse(&format!("{base}retry = {{ attempts = 3 }}\n")).expect("valid");
        assert_eq!(c.listeners[0].routes.routes()[0].retry.attempts, 3);
        let c = parse(&format!("{base}retry = {{ on = [] }}\n")).expect("valid");
        assert!(!c.listeners[0].routes.routes()[0].retry.connect_failure);
        let e = error_of(&format!("{base}retry = {{ attempts = 0 }}\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(9), "route[0].retry.attempts"),
            "{e}"
        );
        let c = parse(&format!(
            "{base}retry = {{ on = [\"refused-stream\"], statuses = [429, 409], max_replay_bytes = 1024 }}\n"
        ))
        .expect("valid");
        let r = c.listeners[0].routes.routes()[0].retry;
        assert!(r.refused_stream && !r.connect_failure);
        assert!(r.retries_status(429) && r.retries_status(409) && !r.retries_status(503));
        assert_eq!(r.max_replay_bytes, 1024);
        assert_eq!(RetryPolicy::default().max_replay_bytes, 64 * 1024);
        let e = error_of(&format!("{base}retry = {{ statuses = [200] }}\n"));
        assert_eq!(e.field, "route[0].retry.statuses", "{e}");
        let e = error_of(&format!("{base}retry = {{ on = [\"sometimes\"] }}\n"));
        assert!(e.message.contains("unknown retry condition `sometimes`"), "{e}");
        let e = error_of(&format!("{base}retry = {{ on = [\"timeout\"] }}\n"));
        assert!(e.message.contains("needs a per_try_timeout"), "{e}");
        let c = parse(&format!(
            "{base}retry = {{ attempts = 3, on = [\"reset\", \"gateway-error\", \"timeout\"], per_try_timeout = \"1s\" }}\n"
        ))
        .expect("valid");
        let r = c.listeners[0].routes.routes()[0].retry;
        assert!(r.reset && r.timeout && !r.connect_failure);
        assert!(r.retries_status(503) && !r.retries_status(500));
        assert_eq!(r.per_try_timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn retry_budget_defaults_and_mistakes() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        let c = parse(base).expect("valid");
        assert_eq!(
            c.clusters[0].retry_budget,
            BudgetSettings::default(),
            "linkerd2-proxy's defaults"
        );
        let c = parse(&format!(
            "{base}retry_budget = {{ ratio = 0.5, window = \"1m\" }}\n"
        ))
        .expect("valid");
        let b = c.clusters[0].retry_budget;
        assert_eq!(
            (b.ratio, b.min_per_second, b.window),
            (0.5, 10, Duration::from_secs(60))
        );
        let e = error_of(&format!("{base}retry_budget = {{ ratio = -1.0 }}\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(9), "cluster[0].retry_budget.ratio"),
            "{e}"
        );
        let e = error_of(&format!("{base}retry_budget = {{ window = \"0s\" }}\n"));
        assert_eq!(e.field, "cluster[0].retry_budget.window", "{e}");
    }

    #[test]
    fn idle_poll_is_off_unless_asked_and_bounded() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        assert_eq!(parse(base).expect("valid").runtime.idle_poll, Duration::ZERO);
        let c = parse(&format!("[runtime]\nidle_poll = \"50us\"\n{base}")).expect("valid");
        assert_eq!(c.runtime.idle_poll, Duration::from_micros(50));
        let e = error_of(&format!("[runtime]\nidle_poll = \"1s\"\n{base}"));
        assert_eq!((e.line, e.field.as_str()), (Some(2), "runtime.idle_poll"), "{e}");
    }

    #[test]
    fn http2_settings_defaults_and_mistakes() {
        let listener = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n";
        let rest = "[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\nprotocol = \"http2\"\n";
        let c = parse(&format!("{listener}{rest}")).expect("valid");
        assert_eq!(c.listeners[0].http2, Http2Settings::default());
        assert_eq!(c.clusters[0].http2, Http2Settings::default());
        assert_eq!(c.clusters[0].protocol, Protocol::Http2);
        let c = parse(&format!(
            "{listener}http2 = {{ max_concurrent_streams = 8, stream_window = 65535 }}\n{rest}http2 = {{ connection_window = 2000000 }}\n"
        ))
        .expect("valid");
        assert_eq!(
            (
                c.listeners[0].http2.max_concurrent_streams,
                c.listeners[0].http2.stream_window
            ),
            (8, 65535)
        );
        assert_eq!(c.clusters[0].http2.connection_window, 2_000_000);
        let e = error_of(&format!("{listener}http2 = {{ stream_window = 1000 }}\n{rest}"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(4), "listener[0].http2.stream_window"),
            "{e}"
        );
        let e = error_of(&format!(
            "{listener}http2 = {{ max_concurrent_streams = 0 }}\n{rest}"
        ));
        assert_eq!(e.field, "listener[0].http2.max_concurrent_streams", "{e}");
        let e = error_of(&format!(
            "{listener}{rest}http2 = {{ max_concurrent_streams = 10 }}\n"
        ));
        assert_eq!(e.field, "cluster[0].http2.max_concurrent_streams", "{e}");
        assert!(e.to_string().contains("upstream sets its own"), "{e}");
        let e = error_of(&format!("{listener}{rest}health_check = {{}}\n"));
        assert_eq!(e.field, "cluster[0].health_check", "{e}");
    }

    #[test]
    fn health_check_defaults_and_mistakes() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        let c = parse(base).expect("valid");
        assert_eq!(c.clusters[0].health_check, None, "off unless asked for");
        assert_eq!(c.clusters[0].no_healthy, NoHealthy::FailOpen);
        let c = parse(&format!(
            "{base}health_check = {{}}\nno_healthy = \"fail-fast\"\n"
        ))
        .expect("valid");
        assert_eq!(c.clusters[0].health_check, Some(HealthSettings::default()));
        assert_eq!(c.clusters[0].no_healthy, NoHealthy::FailFast);
        let c = parse(&format!(
            "{base}health_check = {{ path = \"/ready\", interval = \"2s\", timeout = \"500ms\", healthy = 1, unhealthy = 2 }}\n"
        ))
        .expect("valid");
        let h = c.clusters[0].health_check.clone().expect("set");
        assert_eq!(
            (h.path.as_str(), h.interval, h.timeout, h.healthy, h.unhealthy),
            ("/ready", Duration::from_secs(2), Duration::from_millis(500), 1, 2)
        );
        let e = error_of(&format!("{base}health_check = {{ path = \"ready now\" }}\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(9), "cluster[0].health_check.path"),
            "{e}"
        );
        let e = error_of(&format!("{base}health_check = {{ timeout = \"10s\" }}\n"));
        assert_eq!(e.field, "cluster[0].health_check.timeout", "{e}");
        let e = error_of(&format!(
            "{base}health_check = {{ interval = \"1us\", timeout = \"1us\" }}\n"
        ));
        assert_eq!(e.field, "cluster[0].health_check.interval", "{e}");
        let e = error_of(&format!("{base}health_check = {{ unhealthy = 0 }}\n"));
        assert_eq!(e.field, "cluster[0].health_check.unhealthy", "{e}");
        let e = error_of(&format!("{base}health_check = {{ every = \"1s\" }}\n"));
        assert!(e.message.contains("unknown field `every`"), "{e}");
    }

    #[test]
    fn limits_defaults_shares_and_mistakes() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        let c = parse(base).expect("valid");
        assert_eq!(c.clusters[0].limits, ClusterLimits::default(), "Envoy's defaults");
        let c = parse(&format!("{base}limits = {{ max_requests = 10 }}\n")).expect("valid");
        let l = c.clusters[0].limits;
        assert_eq!((l.max_requests, l.max_connections, l.max_retries), (10, 1024, 3));
        let share = l.per_worker(4);
        assert_eq!(
            (share.max_requests, share.max_connections, share.max_retries),
            (3, 256, 1)
        );
        let e = error_of(&format!("{base}limits = {{ max_retries = 0 }}\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(9), "cluster[0].limits.max_retries"),
            "{e}"
        );
    }

    #[test]
    fn rate_limits() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n[[route]]\ncluster = \"c\"\n";
        assert_eq!(
            parse(base).expect("valid").listeners[0].routes.routes()[0].rate_limit,
            None
        );
        let c = parse(&format!("{base}rate_limit = {{ rps = 100 }}\n")).expect("valid");
        assert_eq!(
            c.listeners[0].routes.routes()[0].rate_limit,
            Some(RateLimit { rps: 100, burst: 100 })
        );
        let e = error_of(&format!("{base}rate_limit = {{ rps = 0 }}\n"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(9), "route[0].rate_limit.rps"),
            "{e}"
        );
    }

    #[test]
    fn dangling_cluster() {
        let e =
            error_of("[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"nope\"\n");
        assert_eq!((e.line, e.field.as_str()), (Some(5), "route[0].cluster"), "{e}");
        assert!(e.to_string().contains("no cluster named `nope`"));
    }

    #[test]
    fn zero_weight_and_duplicates() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        let e = error_of(&format!(
            "{base}[[route]]\nsplit = [{{ cluster = \"c\", weight = 0 }}]\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (Some(8), "route[0].split"), "{e}");
        let e = error_of(&format!("{base}[[cluster]]\nname = \"c\"\nendpoints = []\n"));
        assert_eq!((e.line, e.field.as_str()), (Some(8), "cluster[1].name"), "{e}");
        let e = error_of(&format!(
            "{base}[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:3\"\n"
        ));
        assert!(e.message.contains("duplicate listener"), "{e}");
    }

    #[test]
    fn an_endpoint_listed_twice_is_refused() {
        let src = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:2\"]\n";
        let e = error_of(src);
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(8), "cluster[0].endpoints"),
            "{e}"
        );
        assert!(e.message.contains("already gives"), "{e}");
    }

    #[test]
    fn a_reload_takes_all_but_runtime_and_admin() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        let one = parse(base).expect("valid");
        let other = parse(
            &base
                .replace("127.0.0.1:2", "127.0.0.1:3")
                .replace("127.0.0.1:1", "127.0.0.1:4"),
        )
        .expect("valid");
        assert_eq!(one.reloadable(&other), Ok(()));
        let runtime = parse(&format!("[runtime]\nworkers = 3\n{base}")).expect("valid");
        assert_eq!(one.reloadable(&runtime), Err("[runtime] changed".into()));
        let admin = parse(&format!("[admin]\nlisten = \"127.0.0.1:9\"\n{base}")).expect("valid");
        assert_eq!(one.reloadable(&admin), Err("[admin] changed".into()));
        // A listener keeps its socket at the same address; one on port 0
        // only under the same name.
        let (a, b) = (&one.listeners[0], &other.listeners[0]);
        assert!(a.same_socket(a) && !a.same_socket(b));
        let zero = parse(&base.replace("127.0.0.1:1", "127.0.0.1:0")).expect("valid");
        let renamed = parse(
            &base
                .replace("127.0.0.1:1", "127.0.0.1:0")
                .replace("name = \"a\"", "name = \"b\""),
        )
        .expect("valid");
        assert!(zero.listeners[0].same_socket(&zero.listeners[0]));
        assert!(!zero.listeners[0].same_socket(&renamed.listeners[0]));
    }

    #[test]
    fn log_level_defaults_to_info() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        assert_eq!(parse(base).expect("valid").runtime.log_level, LogLevel::Info);
        let c = parse(&format!("[runtime]\nlog_level = \"debug\"\n{base}")).expect("valid");
        assert_eq!(c.runtime.log_level, LogLevel::Debug);
        let e = error_of(&format!("[runtime]\nlog_level = \"loud\"\n{base}"));
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("unknown variant `loud`"), "{e}");
    }

    #[test]
    fn admin_listener_and_route_names() {
        let base = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        let routes = "[[route]]\ncluster = \"c\"\n[[route]]\nname = \"api\"\ncluster = \"c\"\n";
        let c = parse(&format!("{base}{routes}")).expect("valid");
        assert_eq!(c.admin, None, "off when absent");
        let names: Vec<&str> = c.listeners[0]
            .routes
            .routes()
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["0", "api"], "by default a route is named by its position");
        let c = parse(&format!("{base}{routes}[admin]\nlisten = \"127.0.0.1:9901\"\n")).expect("valid");
        assert_eq!(c.admin.map(|a| a.addr.port()), Some(9901));
        let e = error_of(&format!("{base}{routes}[admin]\nlisten = \"127.0.0.1:1\"\n"));
        assert_eq!((e.line, e.field.as_str()), (Some(13), "admin.listen"), "{e}");
        assert!(e.message.contains("own port"), "{e}");
        let e = error_of(&format!("{base}{routes}[admin]\nlisten = \"localhost\"\n"));
        assert!(e.message.contains("not an IP:port"), "{e}");
        let e = error_of(&format!(
            "{base}{routes}[admin]\nlisten = \"127.0.0.1:9\"\nport = 1\n"
        ));
        assert!(e.message.contains("unknown field `port`"), "{e}");
        let e = error_of(&format!(
            "{base}{routes}[[route]]\nname = \"api\"\ncluster = \"c\"\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (Some(13), "route[2].name"), "{e}");
        assert!(e.message.contains("duplicate route name `api`"), "{e}");
        let e = error_of(&format!(
            "{base}[[route]]\nname = \"1\"\ncluster = \"c\"\n{routes}"
        ));
        assert!(e.message.contains("default name"), "{e}");
    }

    #[test]
    fn bad_values() {
        let e = error_of("[[listener]]\nname = \"a\"\nlisten = \"nowhere\"\n");
        assert_eq!(e.line, Some(3));
        let e = error_of(
            "[runtime]\ndrain_timeout = \"5\"\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n",
        );
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("no unit"), "{e}");
        let e = error_of("[runtime]\ndriver = \"kqueue\"\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(error_of("").message.contains("no [[listener]]"));
        let e = error_of("[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"db:5\"]\n");
        assert!(e.message.contains("cannot resolve `db:5`"), "{e}");
    }

    /// What cannot work is refused, each error on the line of its own field.
    #[test]
    fn refuses_what_cannot_work() {
        let listener = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n";
        let rest = "[[route]]\ncluster = \"c\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n";
        assert!(parse(&format!("{listener}{rest}")).is_ok());
        for (extra, field) in [
            ("max_headers = 0\n", "listener[0].max_headers"),
            ("max_headers = 257\n", "listener[0].max_headers"),
            ("max_request_line = 0\n", "listener[0].max_request_line"),
            ("max_header_bytes = 10\n", "listener[0].max_header_bytes"),
            ("header_timeout = \"0s\"\n", "listener[0].header_timeout"),
            ("idle_timeout = \"0ms\"\n", "listener[0].idle_timeout"),
        ] {
            let e = error_of(&format!("{listener}{extra}{rest}"));
            assert_eq!((e.line, e.field.as_str()), (Some(4), field), "{extra}: {e}");
        }
        for (extra, field) in [
            ("connect_timeout = \"0s\"\n", "cluster[0].connect_timeout"),
            (
                "pool = { idle_timeout = \"0s\" }\n",
                "cluster[0].pool.idle_timeout",
            ),
        ] {
            let e = error_of(&format!("{listener}{rest}{extra}"));
            assert_eq!((e.line, e.field.as_str()), (Some(9), field), "{extra}: {e}");
        }
        let e = error_of(&format!("{listener}{}", rest.replace("[\"127.0.0.1:2\"]", "[]")));
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(8), "cluster[0].endpoints"),
            "{e}"
        );
        let e = error_of(&format!(
            "{listener}{}",
            rest.replace("cluster = \"c\"\n", "cluster = \"c\"\ntimeout = \"0s\"\n")
        ));
        assert_eq!((e.line, e.field.as_str()), (Some(6), "route[0].timeout"), "{e}");
        let e = error_of(&format!("[runtime]\nworkers = 5000\n{listener}{rest}"));
        assert_eq!((e.line, e.field.as_str()), (Some(2), "runtime.workers"), "{e}");
        // A listener without a route would answer every request 404.
        let e = error_of(&format!(
            "{listener}[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (Some(1), "listener[0]"), "{e}");
        assert!(e.message.contains("has no route"), "{e}");
    }

    #[test]
    fn warns_about_shadowed_routes() {
        let c = parse(&GOOD.replace(
            "[[route]]\ncluster = \"a\"\n",
            "[[route]]\ncluster = \"a\"\n\n[[route]]\nmatch = { path = \"/x\" }\ncluster = \"b\"\n",
        ))
        .unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("line 16: ") && w[0].contains("the route on line 13"),
            "{w:?}"
        );
        assert!(parse(GOOD).unwrap().warnings().is_empty());
    }
}
