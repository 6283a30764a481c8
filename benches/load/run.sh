#!/usr/bin/env bash
# End-to-end load benchmark: weft against nginx and haproxy, and no proxy.
#
#   benches/load/run.sh
#
# One command: installs what is missing (nginx, haproxy, wrk, h2load, linux-perf from Debian;
# oha from crates.io), builds weft in release, then runs bench.py, which
# starts an nginx upstream and each target in turn, measures them and prints
# Markdown tables (also written to bench-results/<time>/summary.md).
#
# Settings (environment variables, defaults in brackets):
#   ROUNDS [3]            rounds; each round runs every target once, in an order
#                         rotated by one per round (round r starts at target
#                         (r - 1) mod n of TARGETS); ROUNDS >= the number of
#                         targets gives each target every position once
#   DURATION [10s]        length of each measured wrk and oha run
#   WARMUP [2s]           unrecorded wrk run before each target's measurements
#   CONNS [64]            wrk connections (throughput)
#   RATES ["2000 10000"]  fixed request rates for the latency runs (oha)
#   LAT_CONNS [50]        oha connections
#   IDLE_CONNS [10000]    idle keep-alive client connections for the memory figure
#   IDLE_REQUEST [1]      send one request on each idle connection first (0: none)
#   PIPELINE [0]          when above 0, a pipelined run after the latency runs: wrk
#                         sending that many requests at once on each connection
#                         (HTTP/1 targets), with its own io_uring operation count
#   TARGETS ["direct weft nginx haproxy"]  any of:
#       direct            no proxy: the load generators talk to the upstream
#       weft              weft, driver = "io-uring", ring_setup = "tuned"; must
#                         report `io-uring (ring: coop-taskrun,single-issuer)`
#       weft-plain-ring   weft, driver = "io-uring", ring_setup = "plain"; must
#                         report `io-uring (ring: plain)` (with weft: the
#                         ring-flag A/B)
#       weft-defer        weft, driver = "io-uring", ring_setup = "defer"; must
#                         report `io-uring (ring: defer-taskrun,single-issuer)`
#       weft-epoll        weft, driver = "epoll"; must report `epoll`
#       weft-metrics      weft with `[admin]` (metrics kept), its /metrics scraped
#                         every SCRAPE_EVERY [1] seconds while it runs (with weft:
#                         the cost of metrics)
#       weft-log          weft-metrics with a JSON access log to a file
#                         (OUT/weft-log-rN.access.json)
#       weft-base         weft built from BASE_REV (or the binary WEFT_BASE_BIN)
#                         with weft's configuration: before/after in one run
#       weft-tls          weft with `tls = { cert, key }` on its listener: the load
#                         generators speak https (a test certificate is made with
#                         openssl); no idle-connection phase; a handshake run
#                         (a new connection per request) is added
#       nginx-tls         nginx with `listen ... ssl` and the same certificate
#       weft-h2           weft as `weft`, the load generators speaking cleartext
#                         HTTP/2 to it (prior knowledge): h2load instead of wrk
#                         (H2_STREAMS [1] streams per connection), oha --http2;
#                         no idle-connection phase; the upstream stays HTTP/1.1
#       nginx-h2, haproxy-h2  the peers with `listen ... http2` / `bind ... proto h2`
#       weft-h2-tls, nginx-h2-tls  HTTP/2 over TLS (ALPN h2), the test certificate
#       weft-spin         weft as `weft-epoll` with runtime.idle_poll = IDLE_POLL [100us]:
#                         the latency the polling saves against the CPU it spends
#                         (idle_poll has no effect on the tuned io_uring ring)
#       nginx, haproxy    the peers, one worker each
#                         A weft row whose start-up line (`weft: N worker(s) on
#                         SETUP`, on its stderr) names another setup is refused:
#                         not measured, in no table, listed under Flags, and the
#                         run exits non-zero. So is a target that fails.
#   PROXY_CORE [0]        core of the proxy under test (one worker)
#   LOAD_CORE [1]         core of the upstream and of the load generators
#   WAIT_QUIET [0]        wait up to this long (e.g. 10m) for both cores to be idle
#                         before the start and before each round; the summary
#                         flags phases where other processes used CPU anyway
#   MEM_SETTLE [5s]       bound of each wait for a stable memory reading (every
#                         100 ms until 3 readings agree within 1 % while the
#                         proxy is idle; a reading that never settles is flagged)
#   SKIP_BUILD [0]        1: use target/release/weft as it is
#   BASE_REV []           with target weft-base: the commit to build it from (in a
#                         git worktree under target/base/, its own target dir)
#   OUT [bench-results/<UTC time>]
#   OHA_VERSION [1.16.0]  the oha version installed when oha is missing
#
# SCENARIO [load]: `faults` runs the fault scenario instead (faults.py: weft,
#   nginx and haproxy in front of three upstreams, one killed and then one
#   blackholed under a fixed-rate load; success rate and latency per phase).
#   Its settings: ROUNDS [3], PHASE [10s] (each of its six phases), FAULT_AT
#   [2s] (into the phase), RATE [1000], LAT_CONNS [50], PER_TRY [200ms]
#   (per-try and connect timeouts of every proxy), FAULT_TARGETS
#   ["weft nginx haproxy"], PROXY_CORE, LOAD_CORE, SKIP_BUILD, OUT.
#
# SCENARIO=scale runs scale.py instead: weft, nginx and haproxy with 1 and 2
#   workers, nothing pinned (whole-box throughput on a 2-core machine); settings
#   ROUNDS [3], DURATION [6s], WARMUP [2s], SCALE_CONNS [128], SKIP_BUILD, OUT.
#
# SCENARIO=reload runs reload.py instead: weft splitting between two nginx
#   upstreams at RATE [2000] requests a second over LAT_CONNS [16] keep-alive
#   connections for DURATION [20s], reloaded every RELOAD_EVERY [1.0] seconds
#   with the split flipped (one reload with a broken file); checks that no
#   request fails, that requests after each reload go where it says, and that
#   upstream connections do not grow; settings PROXY_CORE, LOAD_CORE,
#   SKIP_BUILD, OUT.
#
# SCENARIO=pairs runs pairs.py instead: every target at once, each given one
#   short run per cycle, back to back (order rotated per cycle), so that a
#   ratio between two proxies comes from runs seconds apart; the summary gives
#   the first target's median ratio to each other one with a 95 % interval of
#   that median. The way to resolve a gap of a few percent on a noisy host.
#   Settings: TARGETS ["weft nginx haproxy"], CYCLES [20], DURATION [2s],
#   WARMUP [2s], CONNS [64], RATE [0] (0: closed loop with wrk; above 0: oha at
#   that rate, LAT_CONNS [50], latency compared too), PROXY_CORE, LOAD_CORE,
#   BASE_REV, SKIP_BUILD, OUT.
#
# Quick check while developing: ROUNDS=1 DURATION=2s WARMUP=1s IDLE_CONNS=1000 benches/load/run.sh
# Summary of an earlier or interrupted run again: python3 benches/load/bench.py --summary bench-results/<time>
#
# The summary starts with "Flags": refused or failed rows, and any phase with
# non-2xx responses, errors, an achieved rate under 98 % of the asked one,
# other processes' or steal CPU over 10 %, a memory reading that did not
# settle, or a proxy that exited. Exit status: 0 when no row was refused or
# failed, 1 otherwise.
#
# Needs: Linux with 2 or more cores, taskset, python3 (3.8+), cargo, and root
# for apt-get (or nginx, haproxy and wrk installed already). Exits non-zero
# with a message when a prerequisite is missing and cannot be installed.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OHA_VERSION=${OHA_VERSION:-1.16.0}

die() {
    echo "run.sh: error: $*" >&2
    exit 1
}
say() { echo "run.sh: $*" >&2; }

BENCH_PID=
cleanup() {
    # bench.py stops its own children; this covers a kill of run.sh itself.
    if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ prerequisites

[[ "$(uname -s)" == Linux ]] || die "Linux is needed (io_uring, /proc, taskset)"
command -v taskset >/dev/null || die "taskset is missing: install util-linux"
command -v python3 >/dev/null || die "python3 (3.8 or later) is missing"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' || die "python3 is older than 3.8"
cores=$(nproc --all)
for c in "${PROXY_CORE:-0}" "${LOAD_CORE:-1}"; do
    (( c < cores )) || die "core $c does not exist (nproc --all: $cores): the proxy and the load need 2 cores; set PROXY_CORE and LOAD_CORE"
done

missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]} with apt-get"
        apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    else
        die "missing ${missing[*]}: install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) or run as root"
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"
# perf counts the io_uring operations per request (optional: without it
# that column stays empty).
if ! command -v perf >/dev/null && [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing linux-perf with apt-get (io_uring operations per request)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null \
        || say "linux-perf could not be installed: no io_uring operation counts"
fi

command -v cargo >/dev/null || die "cargo is missing (rustup.rs)"
if ! command -v oha >/dev/null; then
    say "installing oha $OHA_VERSION (fixed-rate load with coordinated-omission correction) with cargo; takes ~10 min on 2 cores"
    cargo install oha --version "$OHA_VERSION" --locked \
        || die "cargo install oha failed: oha is the fixed-rate, coordinated-omission-corrected generator the latency figures need"
fi
oha --help | grep -q -- --latency-correction || die "this oha has no --latency-correction: install oha $OHA_VERSION or later"
oha --help | grep -q -- --output-format || die "this oha has no --output-format json: install oha $OHA_VERSION or later"

# Stop any nginx started by the package install, so it does not hold ports or CPU.
# (Only the system service; bench.py's own instances use their own pid files.)
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
    say "note: the system nginx service is running; it is left alone but takes no load"
fi

# File descriptors: 10,000 idle client connections plus the proxy's own.
want_fds=$(( ${IDLE_CONNS:-10000} + 4096 ))
if (( $(ulimit -Hn) < want_fds )); then
    ulimit -Hn 65536 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( $(ulimit -n) >= want_fds )) \
    || die "the open-file limit is $(ulimit -n); $want_fds are needed for IDLE_CONNS=${IDLE_CONNS:-10000}: raise it (ulimit -n) or lower IDLE_CONNS"

# Ephemeral ports: the idle connections and the proxies' upstream connections.
read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
(( hi - lo > ${IDLE_CONNS:-10000} + 2000 )) \
    || die "ip_local_port_range is $lo-$hi: too few ports for IDLE_CONNS=${IDLE_CONNS:-10000}; widen it (sysctl net.ipv4.ip_local_port_range='1024 65000') or lower IDLE_CONNS"

# ------------------------------------------------------------ build

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    say "building weft (cargo build --release -p weft)"
    (cd "$ROOT" && cargo build --release -p weft) || die "cargo build --release -p weft failed"
    dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no -- core proto runtime Cargo.lock 2>/dev/null | wc -l)
    WEFT_BUILD="built from commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    ((dirty == 0)) || WEFT_BUILD+=" with $dirty uncommitted file(s) in core/ proto/ runtime/"
else
    WEFT_BUILD="SKIP_BUILD=1: binary as found (modified $(date -u -r "${WEFT_BIN:-$ROOT/target/release/weft}" '+%F %T UTC' 2>/dev/null || echo '?'))"
fi
export WEFT_BUILD
WEFT_BIN=${WEFT_BIN:-$ROOT/target/release/weft}
[[ -x "$WEFT_BIN" ]] || die "$WEFT_BIN is missing: build it (cargo build --release -p weft)"
export WEFT_BIN

if [[ " ${TARGETS:-} " == *" weft-base "* && -z "${WEFT_BASE_BIN:-}" ]]; then
    [[ -n "${BASE_REV:-}" ]] || die "target weft-base needs BASE_REV=<commit> (or WEFT_BASE_BIN=<binary>)"
    rev=$(git -C "$ROOT" rev-parse --short "$BASE_REV") || die "BASE_REV=$BASE_REV is not a commit"
    tree="$ROOT/target/base/src-$rev"
    if [[ ! -d "$tree" ]]; then
        git -C "$ROOT" worktree add --detach "$tree" "$rev" >/dev/null || die "cannot check out $rev into $tree"
    fi
    say "building the base weft from commit $rev (cargo build --release -p weft in $tree)"
    (cd "$tree" && CARGO_TARGET_DIR="$ROOT/target/base/target" cargo build --release -p weft) \
        || die "building weft at $rev failed"
    WEFT_BASE_BIN="$ROOT/target/base/target/release/weft"
    WEFT_BUILD+="; weft-base built from commit $rev"
    export WEFT_BUILD
fi
[[ -z "${WEFT_BASE_BIN:-}" ]] || export WEFT_BASE_BIN

# ------------------------------------------------------------ run

case "${SCENARIO:-load}" in
    load) script=bench.py ;;
    faults) script=faults.py ;;
    scale) script=scale.py ;;
    reload) script=reload.py ;;
    pairs) script=pairs.py ;;
    *) die "SCENARIO=${SCENARIO} is unknown: use load (the default), faults, scale, reload or pairs" ;;
esac
python3 "$HERE/$script" &
BENCH_PID=$!
set +e
wait "$BENCH_PID"
status=$?
set -e
BENCH_PID=
exit "$status"
