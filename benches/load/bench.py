#!/usr/bin/env python3
"""End-to-end load benchmark of weft against nginx and haproxy (and no proxy).

Started by run.sh, which installs the tools and builds weft first; see run.sh
for the settings (environment variables). Standard library only.

Layout: an nginx "upstream" answering `200 hello` is pinned to LOAD_CORE with
the load generators; each proxy runs with one worker pinned to PROXY_CORE.
Each round runs every target once, in an order rotated from round to round
(round r starts at target (r - 1) mod n of TARGETS). For each target a fresh
proxy is started and measured:

  0. weft only: its start-up line `weft: N worker(s) on SETUP` is read from
     its stderr; a row whose SETUP is not the one the target asks for
     (weft: io_uring with the tuned ring, weft-plain-ring: io_uring with a
     plain ring, weft-epoll: epoll) is refused: not measured, not in any
     table, listed as an error, and the run exits non-zero;
  1. memory idle (PSS and RSS of the proxy's process tree), once the reading
     is stable (see settled_memory);
  2. warm-up (wrk, WARMUP): only the io_uring operations the proxy submits
     per request are recorded (`perf stat -e io_uring:io_uring_submit_req -p
     PID` meanwhile; the tracepoint costs CPU, so it stays out of the measured
     runs; 0 for epoll proxies; skipped where perf or the tracepoint is
     missing);
  3. throughput: wrk, CONNS connections, DURATION; the user and system CPU of
     the proxy's process tree and of the upstream's, from /proc/PID/stat,
     before and after;
  4. latency: oha at each fixed rate in RATES for DURATION with coordinated-
     omission correction (--latency-correction), with the same CPU figures;
  5. memory after the load;
  6. memory with IDLE_CONNS idle keep-alive client connections held open
     (idle_conns.py), then a check that every 100th still gets an answer;
  7. memory after those connections closed; the proxy is stopped.

Figures derived from several measurements (requests per CPU-second, CPU per
request, latency added over direct, weft's ratio to a peer) are computed
within one round, then the median over the rounds is taken. Every table cell
is a median followed by its spread over the rounds (min–max). Rankings mark a
tie where the min–max ranges overlap. Anything that can make a figure wrong
(non-2xx responses, errors, an achieved rate under RATE_FLAG of the asked
one, other processes' CPU, steal, a memory reading that never settled, a
proxy that exited) is listed under "Flags" at the top of the summary.

Summary on stdout and in OUT/summary.md; every figure of every round in
OUT/results.jsonl (in the order measured, with each row's position in its
round), per-round derived figures in OUT/derived.json, tool outputs in
OUT/raw/, configs and logs in OUT/.

`bench.py --summary DIR` prints the summary of an earlier (or interrupted)
run again from DIR/results.jsonl and DIR/machine.json, and rewrites
DIR/summary.md.
"""

import json
import math
import os
import resource
import platform
import re
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The open-file limit the proxies inherit (run.sh raises it as far as it can).
FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

# `--summary DIR`: no measurement; the settings are those saved in DIR.
RESUMMARIZE = None
if len(sys.argv) == 3 and sys.argv[1] == "--summary":
    RESUMMARIZE = Path(sys.argv[2])
elif len(sys.argv) > 1:
    sys.exit("usage: bench.py            (started by run.sh)\n"
             "       bench.py --summary DIR   (summary of an earlier run again)")


def env(name, default):
    return os.environ.get(name, default)


def seconds(text):
    """`10s`, `2s`, `1m`, `500ms` or a bare number of seconds."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|m)?\s*", text)
    if not m:
        sys.exit(f"bench: `{text}` is not a duration (write 10s, 1m or 500ms)")
    v = float(m.group(1))
    return v * {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


SETTINGS = {
    "ROUNDS": env("ROUNDS", "3"),
    "DURATION": env("DURATION", "10s"),
    "WARMUP": env("WARMUP", "2s"),
    "CONNS": env("CONNS", "64"),
    "RATES": env("RATES", "2000 10000"),
    "LAT_CONNS": env("LAT_CONNS", "50"),
    "IDLE_CONNS": env("IDLE_CONNS", "10000"),
    "IDLE_REQUEST": env("IDLE_REQUEST", "1"),
    "TARGETS": env("TARGETS", "direct weft nginx haproxy"),
    "PROXY_CORE": env("PROXY_CORE", "0"),
    "LOAD_CORE": env("LOAD_CORE", "1"),
    "WAIT_QUIET": env("WAIT_QUIET", "0"),
    "MEM_SETTLE": env("MEM_SETTLE", "5s"),
    "PIPELINE": env("PIPELINE", "0"),
}
if RESUMMARIZE:
    try:
        SETTINGS.update(json.loads((RESUMMARIZE / "machine.json").read_text())["settings"])
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"bench: cannot read {RESUMMARIZE}/machine.json: {e}")
ROUNDS = int(SETTINGS["ROUNDS"])
DURATION = SETTINGS["DURATION"]
DURATION_S = seconds(DURATION)
WARMUP = SETTINGS["WARMUP"]
CONNS = int(SETTINGS["CONNS"])
RATES = [int(r) for r in SETTINGS["RATES"].split()]
LAT_CONNS = int(SETTINGS["LAT_CONNS"])
IDLE_CONNS = int(SETTINGS["IDLE_CONNS"])
IDLE_REQUEST = SETTINGS["IDLE_REQUEST"] not in ("0", "", "no", "false")
TARGETS = SETTINGS["TARGETS"].split()
PROXY_CORE = SETTINGS["PROXY_CORE"]
LOAD_CORE = SETTINGS["LOAD_CORE"]
WAIT_QUIET = seconds(SETTINGS["WAIT_QUIET"])
MEM_SETTLE = seconds(SETTINGS["MEM_SETTLE"])
# Requests each wrk connection of the pipelined run sends at once (0: no
# pipelined run; HTTP/1 targets only).
PIPELINE = int(SETTINGS.get("PIPELINE", "0"))
WEFT_BIN = Path(env("WEFT_BIN", str(ROOT / "target/release/weft")))
# The `weft-base` target: another weft binary (an earlier commit, built by
# run.sh from BASE_REV) with `weft`'s configuration, for before/after runs.
WEFT_BASE_BIN = Path(env("WEFT_BASE_BIN", "")) if env("WEFT_BASE_BIN", "") else None
OUT = RESUMMARIZE or Path(env("OUT", str(ROOT / "bench-results" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))))

# Thresholds of the flags (see record_flags).
RATE_FLAG = 0.98  # oha achieved under 98 % of the asked rate
OTHER_CPU_FLAG = 10.0  # % of one core used by processes outside the benchmark
STEAL_FLAG = 10.0  # % steal on the proxy's or the load core

# What each weft target configures, and the setup weft must report for it (its
# start-up line `weft: N worker(s) on SETUP`). `driver` is never "auto": a
# weft target must not fall back silently.
TUNED = "io-uring (ring: coop-taskrun,single-issuer)"
# runtime.idle_poll of the weft-spin target.
IDLE_POLL = env("IDLE_POLL", "100us")
PLAIN = "io-uring (ring: plain)"
DEFER = "io-uring (ring: defer-taskrun,single-issuer)"
WEFT_TARGETS = {
    "weft": {"driver": "io-uring", "ring_setup": "tuned", "expect": TUNED},
    "weft-plain-ring": {"driver": "io-uring", "ring_setup": "plain", "expect": PLAIN},
    "weft-defer": {"driver": "io-uring", "ring_setup": "defer", "expect": DEFER},
    "weft-epoll": {"driver": "epoll", "ring_setup": None, "expect": "epoll"},
    # weft with its admin listener (metrics kept), scraped every SCRAPE_EVERY.
    "weft-metrics": {"driver": "io-uring", "ring_setup": "tuned", "expect": TUNED, "admin": True},
    # ... and a JSON access log to a file (OUT/weft-log-rN.access.json).
    "weft-log": {"driver": "io-uring", "ring_setup": "tuned", "expect": TUNED, "admin": True, "access_log": "json"},
    "weft-base": {"driver": "io-uring", "ring_setup": "tuned", "expect": TUNED},
    "weft-tls": {"driver": "io-uring", "ring_setup": "tuned", "expect": TUNED},
    "weft-h2": {"driver": "io-uring", "ring_setup": "tuned", "expect": TUNED},
    "weft-h2-tls": {"driver": "io-uring", "ring_setup": "tuned", "expect": TUNED},
    # idle_poll takes effect on epoll (and a plain ring), not on the tuned
    # ring: COOP_TASKRUN defers completions until the loop waits.
    "weft-spin": {"driver": "epoll", "ring_setup": None, "expect": "epoll", "idle_poll": IDLE_POLL},
}
KNOWN_TARGETS = ["direct", *WEFT_TARGETS, "nginx", "haproxy", "nginx-tls", "nginx-h2", "haproxy-h2", "nginx-h2-tls"]
# Targets the load generators speak cleartext HTTP/2 to (prior knowledge):
# h2load instead of wrk, oha with --http2; the upstream stays HTTP/1.1.
H2_TARGETS = ("weft-h2", "nginx-h2", "haproxy-h2", "weft-h2-tls", "nginx-h2-tls")
# How often the weft-metrics target's /metrics is scraped while it runs (a
# stock Prometheus scrapes every 15 s or 30 s: this is the harsher case).
SCRAPE_EVERY = float(env("SCRAPE_EVERY", "1"))
# Streams each h2load connection keeps open at once (1: as wrk, one request
# in flight per connection).
H2_STREAMS = int(env("H2_STREAMS", "1"))
# Targets that terminate TLS (the load generators speak https to them, with a
# test certificate made at the start of the run; no idle-connection phase).
TLS_TARGETS = ("weft-tls", "nginx-tls", "weft-h2-tls", "nginx-h2-tls")
# Connections of the handshake run of a TLS target (a handshake per request).
HANDSHAKE_CONNS = 16
PEERS = ("nginx", "haproxy")

for t in TARGETS:
    if t not in KNOWN_TARGETS:
        sys.exit(f"bench: unknown target `{t}` in TARGETS ({', '.join(KNOWN_TARGETS)})")
if "weft-base" in TARGETS and (WEFT_BASE_BIN is None or not WEFT_BASE_BIN.is_file()):
    sys.exit("bench: target weft-base needs WEFT_BASE_BIN (run.sh sets it from BASE_REV=<commit>)")
if len(set(TARGETS)) != len(TARGETS):
    sys.exit(f"bench: a target is named twice in TARGETS ({' '.join(TARGETS)})")

CHILDREN = []  # Popen objects, each the leader of its own session


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Refused(Exception):
    """A weft row that must not be reported: weft runs another setup than the
    one the target names."""

    def __init__(self, msg, setup=None):
        super().__init__(msg)
        self.setup = setup


# ---------------------------------------------------------------- processes


def start(name, argv, core, cwd=None):
    """Starts argv pinned to `core` in its own session; output to OUT/NAME.log."""
    logf = open(OUT / f"{name}.log", "ab")
    p = subprocess.Popen(
        ["taskset", "-c", core, *argv],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )
    p.bench_name = name
    CHILDREN.append(p)
    return p


def stop(p, timeout=10.0):
    """SIGTERM to the child's whole session, then SIGKILL after `timeout`."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all():
    for p in list(reversed(CHILDREN)):
        stop(p, timeout=3.0)


def descendants(pid):
    """pid and all its descendants (via /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_ticks(pid):
    """(user, system) CPU seconds of pid's process tree (all threads)."""
    user = system = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): utime is field 14, stime field 15.
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def core_times():
    """{core: (busy, idle, steal)} in jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *v = line.split()
                v = [int(x) for x in v] + [0] * 10
                user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
                out[name[3:]] = (user + nice + system + irq + softirq, idle + iowait, steal)
    return out


def core_busy(before, after):
    """{core: (busy %, steal %)} between two core_times() samples."""
    res = {}
    for c in after:
        b = after[c][0] - before[c][0]
        i = after[c][1] - before[c][1]
        st = after[c][2] - before[c][2]
        total = b + i + st
        res[c] = (100.0 * b / total if total else 0.0, 100.0 * st / total if total else 0.0)
    return res


def memory_kb(pid):
    """VmRSS and Pss (from smaps_rollup) in kB, summed over pid's process tree:
    {rss_kb, pss_kb, processes, pss_missing} (pss_missing: processes whose PSS
    could not be read; then pss_kb is None)."""
    rss = pss = n = missing = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
        except OSError:
            continue  # exited meanwhile
        n += 1
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
        except OSError:
            missing += 1
    return {"rss_kb": rss, "pss_kb": pss if not missing else None, "processes": n, "pss_missing": missing}


def settled_memory(pid, bound=None):
    """Memory of pid's tree once it is stable: sampled every 100 ms until three
    consecutive readings agree within 1 % (RSS and PSS) while the tree used
    under 10 % of a core (so a proxy still working through accepts or closes
    does not pass as settled), or until `bound` (MEM_SETTLE) seconds. The last
    reading, with `settled` (false: the bound passed first), `wait_s` and the
    number of `readings`."""
    bound = MEM_SETTLE if bound is None else bound
    t0 = time.monotonic()
    hist = []  # (time, cpu seconds, memory reading)
    while True:
        cpu = sum(cpu_ticks(pid))
        mem = memory_kb(pid)
        now = time.monotonic()
        hist.append((now, cpu, mem))
        settled = False
        if len(hist) >= 3:
            last = hist[-3:]
            agree = all(_within(1.01, [h[2][k] for h in last]) for k in ("rss_kb", "pss_kb"))
            span = last[-1][0] - last[0][0]
            quiet = span > 0 and (last[-1][1] - last[0][1]) <= 0.10 * span + 1.0 / CLK_TCK
            settled = agree and quiet
        if settled or now - t0 >= bound:
            return {**mem, "settled": settled, "wait_s": round(now - t0, 2), "readings": len(hist)}
        time.sleep(0.1)


def _within(ratio, values):
    values = [v for v in values if v is not None]
    if not values:
        return True
    lo, hi = min(values), max(values)
    return hi <= lo * ratio if lo > 0 else hi == lo


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_wrap(raw, alpn=None):
    """`raw` in a TLS client session that trusts any certificate (the
    harness's own test certificate), offering `alpn` when given."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def h2_ok(port, timeout=1.0):
    """True when 127.0.0.1:port answers HTTP/2's connection preface with a
    SETTINGS frame (over TLS with ALPN h2 on a TLS port)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            s = tls_wrap(raw, ["h2"]) if port in TLS_PORTS else raw
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            data = b""
            while len(data) < 9:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return len(data) >= 9 and data[3] == 4
    except OSError:
        return False


def http_ok(port, timeout=1.0):
    """True when GET / on 127.0.0.1:port answers 200 (for an HTTP/2-only
    port: when it answers the preface)."""
    if port in H2_PORTS:
        return h2_ok(port, timeout)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            s = tls_wrap(raw) if port in TLS_PORTS else raw
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_ready(p, port, what, bound=15.0):
    """Polls until port answers 200, at most `bound` seconds."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with status {p.returncode} at start; see {OUT}/{p.bench_name}.log:\n"
                               + tail(OUT / f"{p.bench_name}.log"))
        if http_ok(port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not answer 200 on 127.0.0.1:{port} within {bound:.0f} s; see {OUT}/{p.bench_name}.log:\n"
                       + tail(OUT / f"{p.bench_name}.log"))


def tail(path, n=15):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


SETUP_LINE = re.compile(r"^weft: (\d+) worker\(s\) on (.+?)\s*$", re.M)
LISTENER_LINE = re.compile(r"^weft: listener \S+ on \S+ \((.*)\)\s*$", re.M)


def weft_setup(target, proc, bound=5.0):
    """Reads weft's start-up line `weft: N worker(s) on SETUP` from its log
    (its stderr) and checks SETUP against what `target` asks for. Returns
    {setup, workers, listener}; raises Refused when the setup is another."""
    spec = WEFT_TARGETS[target]
    logfile = OUT / f"{proc.bench_name}.log"
    deadline = time.monotonic() + bound
    while True:
        text = logfile.read_text(errors="replace") if logfile.exists() else ""
        m = SETUP_LINE.search(text)
        if m or proc.poll() is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    asked = f"driver = \"{spec['driver']}\"" + (f", ring_setup = \"{spec['ring_setup']}\"" if spec["ring_setup"] else "")
    if not m:
        raise Refused(f"weft printed no line `weft: N worker(s) on SETUP` on stderr within {bound:.0f} s, so "
                      f"the driver it runs is unknown (a binary older than this harness? SKIP_BUILD=1 with a stale "
                      f"{WEFT_BIN}?); row refused. Log {logfile}:\n{tail(logfile)}")
    workers, setup = int(m.group(1)), m.group(2)
    lst = LISTENER_LINE.search(text)
    info = {"setup": setup, "workers": workers, "listener": lst.group(1) if lst else None}
    if setup != spec["expect"]:
        why = ""
        if spec["expect"] == TUNED and setup == PLAIN:
            why = (" The kernel refused COOP_TASKRUN/SINGLE_ISSUER (they need Linux 6.0 or later) and weft fell back "
                   "to a plain ring: these figures would not be the tuned ring's. Measure weft-plain-ring instead, or "
                   "run on a newer kernel.")
        raise Refused(f"weft reported `{setup}`, but target {target} ({asked}) must run `{spec['expect']}`; "
                      f"row refused.{why}", setup)
    if workers != 1:
        raise Refused(f"weft reported {workers} workers, target {target} configures 1; row refused.", setup)
    return info


# ---------------------------------------------------------------- configs


def nginx_common(name, workdir):
    return f"""worker_processes 1;
daemon off;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
worker_rlimit_nofile {FD_LIMIT};
events {{ worker_connections {min(30000, FD_LIMIT - 100)}; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/{name}-tmp/body;
    proxy_temp_path {workdir}/{name}-tmp/proxy;
    fastcgi_temp_path {workdir}/{name}-tmp/fastcgi;
    uwsgi_temp_path {workdir}/{name}-tmp/uwsgi;
    scgi_temp_path {workdir}/{name}-tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
"""


def upstream_conf(port):
    return nginx_common("upstream", OUT) + f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "hello\\n";
        }}
    }}
}}
"""


def nginx_proxy_conf(port, up, tls=False, h2=False):
    ssl = " http2" if h2 else ""
    if tls:
        cert, key = tls_files()
        ssl += (f" ssl;\n        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
               "        ssl_protocols TLSv1.2 TLSv1.3")
    return nginx_common("nginx", OUT) + f"""    upstream up {{
        server 127.0.0.1:{up};
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096{ssl};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_conf(port, up, h2=False):
    return f"""global
    nbthread 1
    maxconn {min(30000, FD_LIMIT - 100)}
    # haproxy wants 2 fds per connection; where the hard limit is lower, run
    # with what there is (a warning) rather than refuse to start.
    no strict-limits

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always

frontend fe
    bind 127.0.0.1:{port}{" proto h2" if h2 else ""}
    default_backend be

backend be
    server up 127.0.0.1:{up}
"""


def tls_files():
    """The test certificate and key of the TLS targets (ECDSA P-256, made
    with openssl once per run)."""
    cert, key = OUT / "tls-cert.pem", OUT / "tls-key.pem"
    if not cert.exists():
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "7", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl could not make the test certificate: {r.stderr}")
    return cert, key


def weft_conf(port, up, driver, ring_setup=None, tls=False, idle_poll=None, admin=None, access_log=None):
    ring = f'ring_setup = "{ring_setup}"\n' if ring_setup else ""
    if idle_poll:
        ring += f'idle_poll = "{idle_poll}"\n'
    if admin:
        ring += f'\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
    tls_line = 'tls = {{ cert = "{}", key = "{}" }}\n'.format(*tls_files()) if tls else ""
    if access_log:
        tls_line += f'access_log = {{ path = "{access_log[0]}", format = "{access_log[1]}" }}\n'
    return f"""# weft under benchmark: one worker (pinned by taskset), one route, one cluster.
[runtime]
workers = 1
driver = "{driver}"
{ring}
[[listener]]
name = "bench"
listen = "127.0.0.1:{port}"
idle_timeout = "300s"
{tls_line}
[[route]]
cluster = "up"

[[cluster]]
name = "up"
endpoints = ["127.0.0.1:{up}"]
pool = {{ max_idle = 64, idle_timeout = "300s" }}
"""


def start_upstream():
    port = free_port()
    (OUT / "upstream-tmp").mkdir(exist_ok=True)
    conf = OUT / "upstream.conf"
    conf.write_text(upstream_conf(port))
    p = start("upstream", ["nginx", "-p", str(OUT), "-c", str(conf)], LOAD_CORE)
    wait_ready(p, port, "the upstream nginx")
    return p, port


def start_proxy(target, up, rnd):
    """Starts a fresh `target` in front of the upstream: (Popen, port)."""
    port = free_port()
    name = f"{target}-r{rnd}"
    if target in WEFT_TARGETS:
        spec = WEFT_TARGETS[target]
        conf = OUT / f"{name}.toml"
        admin = free_port() if spec.get("admin") else None
        conf.write_text(weft_conf(port, up, spec["driver"], spec["ring_setup"], tls=target in TLS_TARGETS,
                                  idle_poll=spec.get("idle_poll"), admin=admin,
                                  access_log=(OUT / f"{name}.access.json", spec["access_log"]) if spec.get("access_log") else None))
        binary = WEFT_BASE_BIN if target == "weft-base" else WEFT_BIN
        argv = [str(binary), "--config", str(conf)]
    elif target in ("nginx", "nginx-tls", "nginx-h2", "nginx-h2-tls"):
        (OUT / "nginx-tmp").mkdir(exist_ok=True)
        conf = OUT / f"{name}.conf"
        conf.write_text(nginx_proxy_conf(port, up, tls=target in TLS_TARGETS, h2=target in H2_TARGETS))
        argv = ["nginx", "-p", str(OUT), "-c", str(conf)]
    elif target in ("haproxy", "haproxy-h2"):
        conf = OUT / f"{name}.cfg"
        conf.write_text(haproxy_conf(port, up, h2=target == "haproxy-h2"))
        argv = ["haproxy", "-db", "-f", str(conf)]
    else:
        raise ValueError(target)
    if target in TLS_TARGETS:
        TLS_PORTS.add(port)
    if target in H2_TARGETS:
        H2_PORTS.add(port)
    p = start(name, argv, PROXY_CORE)
    try:
        wait_ready(p, port, target)
    except RuntimeError:
        stop(p)
        raise
    if target in WEFT_TARGETS and WEFT_TARGETS[target].get("admin"):
        start_scraper(p, admin)
    return p, port


def start_scraper(p, admin_port):
    """Scrapes weft's /metrics every SCRAPE_EVERY seconds while `p` runs;
    the scrapes counted and any failure kept in OUT/scrapes.log."""
    import threading
    import urllib.request

    def scrape():
        url = f"http://127.0.0.1:{admin_port}/metrics"
        done = failed = 0
        while p.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    r.read()
                done += 1
            except OSError as e:
                if p.poll() is None:
                    failed += 1
                    with open(OUT / "scrapes.log", "a") as f:
                        f.write(f"{p.bench_name}: scrape failed: {e}\n")
            time.sleep(SCRAPE_EVERY)
        with open(OUT / "scrapes.log", "a") as f:
            f.write(f"{p.bench_name}: {done} scrapes, {failed} failed\n")

    threading.Thread(target=scrape, daemon=True).start()


# ---------------------------------------------------------------- load


def run_tool(argv, raw_name, timeout):
    """Runs a load generator pinned to LOAD_CORE; returns its stdout."""
    cmd = ["taskset", "-c", LOAD_CORE, *argv]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    (OUT / "raw" / raw_name).write_text(
        "$ " + shlex.join(cmd) + "\n" + r.stdout + ("\n--- stderr\n" + r.stderr if r.stderr else ""))
    if r.returncode != 0:
        raise RuntimeError(f"`{shlex.join(cmd)}` failed with status {r.returncode}:\n{r.stderr[-2000:]}")
    return r.stdout


def parse_wrk(out):
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    res = {"requests": int(m.group(1)), "seconds": float(m.group(2)) * scale, "rps": float(rps.group(1))}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in errs.groups()) if errs else 0
    return res


TLS_PORTS = set()  # ports of the TLS targets started in this run
H2_PORTS = set()  # ports of the HTTP/2 targets started in this run


def url(port):
    """The URL the load generators ask: https on a TLS target's port."""
    return f"{'https' if port in TLS_PORTS else 'http'}://127.0.0.1:{port}/"


def parse_h2load(out):
    m = re.search(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not req or not codes:
        raise RuntimeError(f"cannot read h2load's output:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]
    done = int(req.group(3))
    return {"requests": done, "seconds": float(m.group(1)) * scale, "rps": float(m.group(3)),
            "non2xx": done - int(codes.group(1)),
            "socket_errors": int(req.group(6)) + int(req.group(7))}


def h2load(port, duration, raw_name, conns=None):
    """h2load against port (cleartext HTTP/2, H2_STREAMS streams per connection)."""
    out = run_tool(["h2load", "-t1", f"-c{conns or CONNS}", f"-m{H2_STREAMS}", f"-D{seconds(duration):g}",
                    url(port)], raw_name, timeout=seconds(duration) + 60)
    return parse_h2load(out)


# wrk sends `depth` requests at once on each connection, and again when
# their answers are in.
PIPELINE_LUA = """
init = function(args)
   local r = {}
   for i = 1, tonumber(args[1]) do r[i] = wrk.format(nil, "/") end
   req = table.concat(r)
end
request = function() return req end
"""


def wrk(port, duration, raw_name, conns=None, close=False, depth=0):
    """wrk against port; `close`: a new connection (and TLS handshake) per
    request; `depth` > 0: that many requests pipelined on each connection.
    An HTTP/2 port gets h2load instead."""
    if port in H2_PORTS:
        return h2load(port, duration, raw_name, conns)
    extra = ["-H", "Connection: close"] if close else []
    if depth:
        script = OUT / "raw" / "pipeline.lua"
        script.write_text(PIPELINE_LUA)
        out = run_tool(["wrk", "-t1", f"-c{conns or CONNS}", f"-d{duration}", "-s", str(script), url(port),
                        "--", str(depth)], raw_name, timeout=seconds(duration) + 60)
        return parse_wrk(out)
    out = run_tool(["wrk", "-t1", f"-c{conns or CONNS}", f"-d{duration}", "--latency", *extra, url(port)],
                   raw_name, timeout=seconds(duration) + 60)
    return parse_wrk(out)


def oha(port, rate, raw_name):
    out = run_tool(["oha", "--no-tui", "--output-format", "json", "--latency-correction", "-w",
                    "-q", str(rate), "-z", DURATION, "-c", str(LAT_CONNS),
                    *(["--insecure"] if port in TLS_PORTS else []),
                    *(["--http2"] if port in H2_PORTS else []), url(port)],
                   raw_name, timeout=DURATION_S + 60)
    try:
        j = json.loads(out)
        pct = j["latencyPercentiles"]
        codes = j.get("statusCodeDistribution", {}) or {}
        ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
        total = sum(codes.values())
        errors = sum((j.get("errorDistribution") or {}).values())
        return {
            "rate": rate,
            "rps": j["summary"]["requestsPerSec"],
            "requests": total + errors,
            "p50_us": pct["p50"] * 1e6,
            "p99_us": pct["p99"] * 1e6,
            "p999_us": pct["p99.9"] * 1e6,
            "non2xx": total - ok,
            "errors": errors,
            "error_kinds": j.get("errorDistribution") or {},
        }
    except (ValueError, KeyError, TypeError) as e:
        # No response at all gives null percentiles: that is a failed run, not a zero.
        raise RuntimeError(f"cannot read oha's output ({e!r}); see {OUT}/raw/{raw_name}")


UPSTREAM_PID = None  # set once the upstream runs


def uring_ops(pid, fn, raw_name):
    """Runs fn() (a load generator run) while perf counts the io_uring
    operations pid submits (tracepoint io_uring:io_uring_submit_req), and adds
    `uring_ops` and `uring_ops_per_req` to its result; None where perf or the
    tracepoint is missing. Raw perf output: OUT/raw_name."""
    path = os.path.join(OUT, raw_name)
    perf = None
    if pid and shutil.which("perf"):
        try:
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "io_uring:io_uring_submit_req",
                                     "-p", str(pid), "-o", path],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.2)  # let perf attach before the load starts (no load meanwhile)
        except OSError:
            perf = None
    res = fn()
    count = None
    if perf:
        perf.send_signal(signal.SIGINT)
        try:
            perf.wait(timeout=10)
            with open(path) as f:
                for line in f:
                    fields = line.strip().split(",")
                    if len(fields) > 2 and fields[2].startswith("io_uring:io_uring_submit_req") \
                            and fields[0].isdigit():
                        count = int(fields[0])
        except (OSError, subprocess.TimeoutExpired):
            perf.kill()
    n = res.get("requests") or 0
    res["uring_ops"] = count
    res["uring_ops_per_req"] = count / n if count is not None and n else None
    return res


def user_sys_jiffies():
    """Process CPU (user + nice + system, without interrupts) of all cores, in seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2]) / CLK_TCK


def with_cpu(pid, fn):
    """Runs fn() (a load generator run) and adds: the user and system CPU
    seconds of pid's process tree (the proxy) and of the upstream's tree
    meanwhile, the same per request and as requests per CPU-second (proxy
    alone; proxy plus upstream, which for direct is the upstream alone), how
    busy and how stolen each core was, and `other_cpu_pct`: CPU used meanwhile
    by processes that are not part of the benchmark (not the proxy, the
    upstream or the load generator), in % of one core; a high value means
    another job on the machine skewed this measurement. `tree_changed` says a
    process of the proxy's or upstream's tree exited or appeared meanwhile
    (its CPU would be missing)."""
    tree0 = (sorted(descendants(pid)) if pid else [], sorted(descendants(UPSTREAM_PID)) if UPSTREAM_PID else [])
    t0, c0, j0 = time.monotonic(), core_times(), user_sys_jiffies()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    up0 = sum(cpu_ticks(UPSTREAM_PID)) if UPSTREAM_PID else 0.0
    u0, s0 = cpu_ticks(pid) if pid else (0.0, 0.0)
    res = fn()
    u1, s1 = cpu_ticks(pid) if pid else (0.0, 0.0)
    up1 = sum(cpu_ticks(UPSTREAM_PID)) if UPSTREAM_PID else 0.0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t1, c1, j1 = time.monotonic(), core_times(), user_sys_jiffies()
    tree1 = (sorted(descendants(pid)) if pid else [], sorted(descendants(UPSTREAM_PID)) if UPSTREAM_PID else [])
    busy = core_busy(c0, c1)
    res["wall_s"] = round(t1 - t0, 3)
    res["core_busy_pct"] = {c: round(b, 1) for c, (b, _) in busy.items()}
    res["core_steal_pct"] = {c: round(st, 1) for c, (_, st) in busy.items()}
    loadgen = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    upstream = up1 - up0
    ours = (u1 - u0) + (s1 - s0) + upstream + loadgen
    res["loadgen_cpu_s"] = round(loadgen, 3)
    res["upstream_cpu_s"] = round(upstream, 3)
    res["other_cpu_pct"] = round(max(0.0, (j1 - j0) - ours) / (t1 - t0) * 100, 1)
    res["tree_changed"] = tree0 != tree1
    n = res.get("requests") or 0
    res["upstream_us_per_req"] = upstream / n * 1e6 if n else None
    proxy = 0.0
    if pid:
        res["cpu_user_s"] = u1 - u0
        res["cpu_sys_s"] = s1 - s0
        proxy = res["cpu_user_s"] + res["cpu_sys_s"]
        res["proxy_busy_pct"] = 100.0 * proxy / (t1 - t0)
        res["user_us_per_req"] = res["cpu_user_s"] / n * 1e6 if n else None
        res["sys_us_per_req"] = res["cpu_sys_s"] / n * 1e6 if n else None
        res["proxy_us_per_req"] = proxy / n * 1e6 if n else None
        res["req_per_cpu_s"] = n / proxy if proxy > 0 else None
    res["req_per_total_cpu_s"] = n / (proxy + upstream) if proxy + upstream > 0 else None
    return res


def wait_quiet(bound):
    """Waits up to `bound` seconds for both cores to be idle (< 10 % busy over
    2 s): another job on this machine would skew the figures. Returns the last
    sample as text and whether it was quiet."""
    deadline = time.monotonic() + bound
    while True:
        c0 = core_times()
        time.sleep(2.0)
        busy = core_busy(c0, core_times())
        text = ", ".join(f"core {c} {b:.0f} % busy ({st:.0f} % steal)" for c, (b, st) in sorted(busy.items()))
        quiet = max(b for b, _ in busy.values()) < 10
        if quiet or time.monotonic() >= deadline:
            return text, quiet
        log(f"waiting for the machine to be quiet ({text})")
        time.sleep(5.0)


def idle_connections(pid, port):
    argv = [sys.executable, str(HERE / "idle_conns.py"), "127.0.0.1", str(port), str(IDLE_CONNS)]
    if IDLE_REQUEST:
        argv.append("--request")
    p = subprocess.Popen(["taskset", "-c", LOAD_CORE, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    p.bench_name = "idle_conns"
    CHILDREN.append(p)
    try:
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"idle_conns.py failed: {line}{p.stderr.read()}")
        _, opened, failed, *rest = line.split(maxsplit=3)
        mem = settled_memory(pid)  # the proxy may still be settling its last accepts
        p.stdin.write("check\n")
        p.stdin.flush()
        check = p.stdout.readline().split()
        p.stdin.close()
        p.wait(30)
        return {
            **mem,
            "opened": int(opened),
            "failed": int(failed),
            "first_error": rest[0].strip() if rest else "",
            "check_ok": int(check[1]) if len(check) == 3 else 0,
            "check_tried": int(check[2]) if len(check) == 3 else 0,
        }
    finally:
        stop(p, timeout=5)


def measure(target, up, rnd, pos):
    """All measurements of one target in one round (`pos`: its place in the round's order)."""
    rec = {"round": rnd, "position": pos, "target": target}
    proc, port = (None, up) if target == "direct" else start_proxy(target, up, rnd)
    pid = proc.pid if proc else None
    try:
        if target in WEFT_TARGETS:
            rec.update(weft_setup(target, proc))
        if pid:
            rec["mem_idle"] = settled_memory(pid)
        # The warm-up also counts io_uring operations: perf's tracepoint costs
        # the proxy CPU, so it stays out of the measured runs.
        rec["warmup"] = uring_ops(pid, lambda: wrk(port, WARMUP, f"{target}-r{rnd}-warmup.txt"),
                                  f"{target}-r{rnd}-perf.txt")
        rec["throughput"] = with_cpu(pid, lambda: wrk(port, DURATION, f"{target}-r{rnd}-wrk.txt"))
        rec["latency"] = {}
        for rate in RATES:
            rec["latency"][str(rate)] = with_cpu(pid, lambda: oha(port, rate, f"{target}-r{rnd}-oha-{rate}.json"))
        if PIPELINE and target not in H2_TARGETS:
            # The operations counted in a short run of their own (perf's
            # tracepoint costs CPU), then the measured one.
            ops = uring_ops(pid, lambda: wrk(port, WARMUP, f"{target}-r{rnd}-pipelined-warmup.txt", depth=PIPELINE),
                            f"{target}-r{rnd}-pipelined-perf.txt")
            rec["pipelined"] = with_cpu(pid, lambda: wrk(port, DURATION, f"{target}-r{rnd}-pipelined.txt",
                                                        depth=PIPELINE))
            rec["pipelined"]["uring_ops_per_req"] = ops.get("uring_ops_per_req")
        if target in TLS_TARGETS and target not in H2_TARGETS:
            rec["handshakes"] = with_cpu(pid, lambda: wrk(port, DURATION, f"{target}-r{rnd}-handshakes.txt",
                                                         conns=HANDSHAKE_CONNS, close=True))
        if pid:
            rec["mem_after_load"] = settled_memory(pid)
            if IDLE_CONNS > 0 and target not in TLS_TARGETS and target not in H2_TARGETS:
                rec["mem_idle_conns"] = idle_connections(pid, port)
                rec["mem_conns_closed"] = settled_memory(pid)  # the proxy sees the closes
            if proc.poll() is not None:
                rec["crashed"] = f"exited with status {proc.returncode}"
    finally:
        if proc:
            stop(proc)
            if "crashed" not in rec and proc.returncode not in (0, -signal.SIGTERM):
                rec["exit_status"] = proc.returncode
        # An access log of a loaded run is hundreds of MB: count its lines
        # and let it go.
        log = OUT / f"{target}-r{rnd}.access.json"
        if log.exists():
            with open(log, "rb") as f:
                rec["access_log_lines"] = sum(1 for _ in f)
            log.unlink()
    return rec


# ---------------------------------------------------------------- report


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}".replace("-", "−")  # a minus sign: `−5–−2` reads better than `-5–-2`


def get(rec, *path):
    for k in path:
        if not isinstance(rec, dict) or k not in rec:
            return None
        rec = rec[k]
    return rec


def cell(values, digits=0, unit=""):
    """`median (min–max)` of the values (None skipped); `–` when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = fmt(statistics.median(values), digits) + unit
    if len(values) == 1:
        return m
    return f"{m} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def rejected(r):
    return "refused" in r or "failed" in r


def record_flags(r):
    """What could make this row's figures wrong: [(phase, text)], phase being
    `throughput`, a rate as text, `memory` or `process`."""
    out = []
    phases = [("throughput", "throughput", r.get("throughput"), None),
              ("pipelined", "pipelined", r.get("pipelined"), None)] + [
        (k, f"{int(k):,} req/s", v, int(k)) for k, v in (r.get("latency") or {}).items()]
    for key, name, p, rate in phases:
        if not p:
            continue
        if p.get("non2xx"):
            out.append((key, f"{name}: {p['non2xx']:,} non-2xx responses"))
        if p.get("socket_errors"):
            out.append((key, f"{name}: {p['socket_errors']:,} socket errors (wrk)"))
        if p.get("errors"):
            out.append((key, f"{name}: {p['errors']:,} errors {p.get('error_kinds') or ''}"))
        if not p.get("requests"):
            out.append((key, f"{name}: no request completed"))
        if rate and p.get("rps") is not None and p["rps"] < RATE_FLAG * rate:
            share = math.floor(1000 * p["rps"] / rate) / 10  # rounded down: never `98.0 % (under 98 %)`
            out.append((key, f"{name}: achieved {p['rps']:,.0f} req/s, {share:.1f} % of the asked rate (under "
                             f"{100 * RATE_FLAG:.0f} %): the latencies include a growing backlog"))
        if (p.get("other_cpu_pct") or 0) > OTHER_CPU_FLAG:
            out.append((key, f"{name}: other processes used {p['other_cpu_pct']:.0f} % of a core"))
        steal = {c: get(p, "core_steal_pct", c) or 0 for c in (PROXY_CORE, LOAD_CORE)}
        if max(steal.values()) > STEAL_FLAG:
            out.append((key, f"{name}: steal " + ", ".join(f"core {c} {v:.0f} %" for c, v in steal.items())))
        if r["target"] != "direct" and (p.get("cpu_user_s") or 0) + (p.get("cpu_sys_s") or 0) <= 0:
            out.append((key, f"{name}: the proxy's CPU read as 0 (wrong process measured?)"))
        if not p.get("upstream_cpu_s"):
            out.append((key, f"{name}: the upstream's CPU read as 0 (wrong process measured?)"))
        if p.get("tree_changed"):
            out.append((key, f"{name}: a process of the proxy's or the upstream's tree exited or started during "
                             "the run (its CPU is missing from the figures)"))
    for key, what in (("mem_idle", "idle"), ("mem_after_load", "after the load"),
                      ("mem_idle_conns", "with idle connections"), ("mem_conns_closed", "after the closes")):
        m = r.get(key)
        if not m:
            continue
        if m.get("settled") is False:
            out.append(("memory", f"memory {what}: no stable reading within {MEM_SETTLE:g} s "
                                  f"({m.get('readings')} readings); the last one is reported"))
        if m.get("pss_missing"):
            out.append(("memory", f"memory {what}: PSS unreadable for {m['pss_missing']} process(es)"))
    ic = r.get("mem_idle_conns") or {}
    if ic:
        if ic.get("failed") or ic.get("opened", 0) < IDLE_CONNS:
            out.append(("memory", f"idle connections: {ic.get('opened', 0):,} of {IDLE_CONNS:,} opened "
                                  f"({ic.get('failed', 0):,} failed: {ic.get('first_error')})"))
        if ic.get("check_ok", 0) < ic.get("check_tried", 0) or not ic.get("check_tried"):
            out.append(("memory", f"idle connections: {ic.get('check_ok', 0)} of {ic.get('check_tried', 0)} "
                                  "sampled connections still answered"))
    for key in ("crashed", "exit_status"):
        if key in r:
            out.append(("process", f"the proxy {r[key] if key == 'crashed' else 'ended with status ' + str(r[key])}"))
    return out


def overlaps(a, b):
    return min(a) <= max(b) and min(b) <= max(a)


def ranking(title, entries, higher_better, digits=0):
    """One line: the entries best first (by median), each with its min–max
    range and the entries whose range overlaps it (a tie: the rounds do not
    tell them apart); then who leads: the best, if its range overlaps no
    other's."""
    es = [(t, [v for v in vs if v is not None]) for t, vs in entries]
    es = [(t, vs) for t, vs in es if vs]
    if len(es) < 2:
        return None
    es.sort(key=lambda e: statistics.median(e[1]), reverse=higher_better)
    parts = []
    for t, vs in es:
        ties = [o for o, ovs in es if o != t and overlaps(vs, ovs)]
        parts.append(f"{t} {cell(vs, digits)}" + (f" [tie with {', '.join(ties)}]" if ties else ""))
    best, others = es[0], es[1:]
    tied = [t for t, vs in others if overlaps(best[1], vs)]
    if min(len(vs) for _, vs in es) < 2:
        lead = "too few rounds to judge a lead (a spread needs 2 or more)"
    elif tied:
        lead = f"no clear lead: {best[0]} ties with {', '.join(tied)} (ranges overlap)"
    else:
        lead = f"lead: {best[0]}"
    better = "higher" if higher_better else "lower"
    return f"- **{title}** ({better} is better; best first): " + "; ".join(parts) + f". **{lead}**."


def summary(records, machine, command, fatal=None):
    ok = [r for r in records if not rejected(r)]
    by = {t: [r for r in ok if r["target"] == t] for t in TARGETS}
    rounds = {}
    for r in ok:
        rounds.setdefault(r["round"], {})[r["target"]] = r
    flags = {(r["round"], r["target"]): record_flags(r) for r in ok}
    # A target whose every row was refused or failed has no row in any table
    # (it is listed under Flags).
    shown = [t for t in TARGETS if by[t]]
    proxies = [t for t in shown if t != "direct"]
    n_rounds = max([r["round"] for r in records], default=0)

    def vals(t, *path):
        return [get(r, *path) for r in by[t]]

    def per_round(t, f):
        """f(record, {target: record of the same round}) over t's rounds."""
        return [f(r, rounds[r["round"]]) for r in by[t]]

    def added(k, p):
        def f(r, same):
            d = same.get("direct")
            a, b = get(r, "latency", k, p), get(d, "latency", k, p)
            return a - b if a is not None and b is not None else None
        return f

    def ratio(other, *path):
        def f(r, same):
            a, b = get(r, *path), get(same.get(other), *path)
            return a / b if a is not None and b else None
        return f

    def per_conn_kib(kind):
        def f(r, same):
            a, b = get(r, "mem_idle_conns", kind), get(r, "mem_after_load", kind)
            return (a - b) / IDLE_CONNS if a is not None and b is not None and IDLE_CONNS else None
        return f

    def mib(vs):
        return [v / 1024 if v is not None else None for v in vs]

    def label(t, phases):
        text = t
        setups = sorted({r.get("setup") for r in by[t] if r.get("setup")})
        if setups:
            text += f" [{' / '.join(setups)}]"
        if len(by[t]) < n_rounds:
            text += f" ({len(by[t])} of {n_rounds} rounds)"
        if any(ph in phases for r in by[t] for ph, _ in flags[(r["round"], t)]):
            text += " ⚠"
        return text

    L = []
    n = len(TARGETS)
    L.append(f"Medians over {n_rounds} round(s); next to each, in brackets, its spread over the rounds (min–max). "
             f"Each round runs every target once; round r starts at target (r − 1) mod {n} of TARGETS "
             "(rotated order). Per-request CPU, requests per CPU-second, added latency (proxy minus direct of the "
             "same round) and ratios between targets are computed within each round, then the median is taken. "
             "weft rows name the driver and ring setup weft itself reported at start. ⚠ marks a row with a flag.")

    # ---- flags first: nothing wrong may hide at the bottom
    bad = [r for r in records if rejected(r)]
    flagged = [(r, fl) for r in ok for fl in [flags[(r["round"], r["target"])]] if fl]
    L.append("")
    if fatal or bad or flagged:
        L.append(f"### Flags: check these before using any figure")
        L.append("")
        if fatal:
            L.append(f"- **RUN STOPPED EARLY**: {fatal}")
        for r in bad:
            kind = "REFUSED" if "refused" in r else "FAILED"
            msg = (r.get("refused") or r.get("failed")).strip().replace("\n", " ⏎ ")
            L.append(f"- **{kind}** round {r['round']}, {r['target']} (not in any table): {msg}")
        for r, fl in flagged:
            L.append(f"- round {r['round']}, {r['target']}: " + "; ".join(text for _, text in fl))
    else:
        L.append("### Flags: none")
        L.append("")
        L.append(f"Every target started and (weft) reported the setup it was asked for; every phase got only 2xx "
                 f"responses, no errors, at least {100 * RATE_FLAG:.0f} % of each asked rate, other CPU and steal "
                 f"at most {OTHER_CPU_FLAG:.0f} %; every memory reading settled; no proxy exited.")

    # ---- throughput
    L.append("")
    L.append(f"### Throughput: wrk, {CONNS} connections, {DURATION}, closed loop")
    L.append("")
    L.append("| target | req/s | proxy busy % | proxy user µs/req | proxy sys µs/req | upstream µs/req | "
             "req per proxy CPU-s | req per proxy+upstream CPU-s | io_uring ops/req | load core busy % | "
             "other CPU % | non-2xx | socket errors |")
    L.append("|---|" + "--:|" * 12)
    for t in shown:
        L.append(f"| {label(t, ('throughput', 'process'))} | {cell(vals(t, 'throughput', 'rps'))} | "
                 f"{cell(vals(t, 'throughput', 'proxy_busy_pct'))} | "
                 f"{cell(vals(t, 'throughput', 'user_us_per_req'), 1)} | "
                 f"{cell(vals(t, 'throughput', 'sys_us_per_req'), 1)} | "
                 f"{cell(vals(t, 'throughput', 'upstream_us_per_req'), 1)} | "
                 f"{cell(vals(t, 'throughput', 'req_per_cpu_s'))} | "
                 f"{cell(vals(t, 'throughput', 'req_per_total_cpu_s'))} | "
                 f"{cell(vals(t, 'warmup', 'uring_ops_per_req'), 2)} | "
                 f"{cell(vals(t, 'throughput', 'core_busy_pct', LOAD_CORE))} | "
                 f"{cell(vals(t, 'throughput', 'other_cpu_pct'))} | "
                 f"{fmt(sum(get(r, 'throughput', 'non2xx') or 0 for r in by[t]))} | "
                 f"{fmt(sum(get(r, 'throughput', 'socket_errors') or 0 for r in by[t]))} |")
    L.append("")
    L.append("non-2xx and socket errors are totals over all rounds. 'proxy busy' is the proxy's CPU time over the "
             "run's wall time (100 % = its core is saturated). 'upstream µs/req' is the upstream nginx's CPU (user + "
             "sys, whole process tree) per request: a proxy that makes the upstream work harder shows it there, and "
             "in 'req per proxy+upstream CPU-s' (for direct: the upstream alone). 'load core busy' is how busy core "
             f"{LOAD_CORE} (wrk and the upstream) was, from /proc/stat; 'other CPU' is CPU used meanwhile by "
             "processes outside the benchmark, in % of one core (should be near 0). 'io_uring ops/req': operations "
             "the proxy submitted to io_uring per request, counted during the warm-up run (perf, tracepoint "
             "io_uring:io_uring_submit_req; the tracepoint costs CPU, so not during the measured run; 0 for epoll "
             "proxies, – where perf is missing).")
    L.append("")
    for line in (ranking("ranking, req per proxy CPU-s", [(t, vals(t, "throughput", "req_per_cpu_s")) for t in proxies], True),
                 ranking("ranking, req per proxy+upstream CPU-s",
                         [(t, vals(t, "throughput", "req_per_total_cpu_s")) for t in proxies], True)):
        if line:
            L.append(line)

    pl = [t for t in shown if any(get(r, "pipelined", "rps") is not None for r in by[t])]
    if pl:
        L.append("")
        L.append(f"### Pipelined: wrk, {CONNS} connections, {PIPELINE} requests at once on each, {DURATION}")
        L.append("")
        L.append("| target | req/s | proxy busy % | proxy µs/req | req per proxy CPU-s | io_uring ops/req | "
                 "other CPU % | non-2xx | socket errors |")
        L.append("|---|" + "--:|" * 8)
        for t in pl:
            L.append(f"| {label(t, ('pipelined', 'process'))} | {cell(vals(t, 'pipelined', 'rps'))} | "
                     f"{cell(vals(t, 'pipelined', 'proxy_busy_pct'))} | "
                     f"{cell(vals(t, 'pipelined', 'proxy_us_per_req'), 1)} | "
                     f"{cell(vals(t, 'pipelined', 'req_per_cpu_s'))} | "
                     f"{cell(vals(t, 'pipelined', 'uring_ops_per_req'), 2)} | "
                     f"{cell(vals(t, 'pipelined', 'other_cpu_pct'))} | "
                     f"{fmt(sum(get(r, 'pipelined', 'non2xx') or 0 for r in by[t]))} | "
                     f"{fmt(sum(get(r, 'pipelined', 'socket_errors') or 0 for r in by[t]))} |")
        for peer in ("nginx", "haproxy", "weft-base"):
            if peer in pl and "weft" in pl:
                L.append("")
                L.append(f"weft req per proxy CPU-s / {peer}'s, pipelined, within each round: "
                         f"{cell(per_round('weft', ratio(peer, 'pipelined', 'req_per_cpu_s')), 2)}")
        L.append("")
        L.append("io_uring ops/req counted in a short pipelined run of its own before the measured one (perf's "
                 "tracepoint costs CPU).")
        L.append("")
    hs = [t for t in shown if any(get(r, "handshakes", "rps") is not None for r in by[t])]
    if hs:
        L.append("")
        L.append(f"### TLS handshakes: wrk, {HANDSHAKE_CONNS} connections, `Connection: close`, {DURATION}")
        L.append("")
        L.append("| target | handshakes (requests) /s | proxy busy % | proxy µs per handshake | "
                 "handshakes per proxy CPU-s | non-2xx | socket errors |")
        L.append("|---|" + "--:|" * 6)
        for t in hs:
            L.append(f"| {label(t, ('handshakes', 'process'))} | {cell(vals(t, 'handshakes', 'rps'))} | "
                     f"{cell(vals(t, 'handshakes', 'proxy_busy_pct'))} | "
                     f"{cell(vals(t, 'handshakes', 'proxy_us_per_req'), 1)} | "
                     f"{cell(vals(t, 'handshakes', 'req_per_cpu_s'))} | "
                     f"{fmt(sum(get(r, 'handshakes', 'non2xx') or 0 for r in by[t]))} | "
                     f"{fmt(sum(get(r, 'handshakes', 'socket_errors') or 0 for r in by[t]))} |")
        L.append("")
        L.append("Each request on a new connection: a TLS handshake, the request, the close. Both proxies allow "
                 "TLS 1.2 and 1.3 and serve the same ECDSA P-256 certificate; wrk (OpenSSL) negotiates TLS 1.3 "
                 "with X25519 with both.")
        L.append("")
    # ---- latency
    have_direct = bool(by.get("direct"))
    for rate in RATES:
        k = str(rate)
        L.append("")
        L.append(f"### Latency at a fixed {rate:,} req/s: oha --latency-correction, {LAT_CONNS} connections, {DURATION}")
        L.append("")
        L.append("| target | achieved req/s | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | "
                 "proxy µs/req | upstream µs/req | req per proxy CPU-s | req per proxy+upstream CPU-s | other CPU % | "
                 "non-2xx | errors |")
        L.append("|---|" + "--:|" * 14)
        for t in shown:
            add = {p: per_round(t, added(k, p)) if t != "direct" else [] for p in ("p50_us", "p99_us", "p999_us")}
            L.append(f"| {label(t, (k, 'process'))} | {cell(vals(t, 'latency', k, 'rps'))} | "
                     f"{cell(vals(t, 'latency', k, 'p50_us'))} | {cell(vals(t, 'latency', k, 'p99_us'))} | "
                     f"{cell(vals(t, 'latency', k, 'p999_us'))} | {cell(add['p50_us'])} | {cell(add['p99_us'])} | "
                     f"{cell(add['p999_us'])} | {cell(vals(t, 'latency', k, 'proxy_us_per_req'), 1)} | "
                     f"{cell(vals(t, 'latency', k, 'upstream_us_per_req'), 1)} | "
                     f"{cell(vals(t, 'latency', k, 'req_per_cpu_s'))} | "
                     f"{cell(vals(t, 'latency', k, 'req_per_total_cpu_s'))} | "
                     f"{cell(vals(t, 'latency', k, 'other_cpu_pct'))} | "
                     f"{fmt(sum(get(r, 'latency', k, 'non2xx') or 0 for r in by[t]))} | "
                     f"{fmt(sum(get(r, 'latency', k, 'errors') or 0 for r in by[t]))} |")
        L.append("")
        L.append("added = the proxy's percentile minus direct's in the same round, then the median over rounds."
                 + ("" if have_direct else " (No direct target ran: no added latency.)"))
        L.append("")
        for p, name in (("p50_us", "added p50"), ("p99_us", "added p99")):
            line = ranking(f"ranking, {name} at {rate:,} req/s (µs)",
                           [(t, per_round(t, added(k, p))) for t in proxies], False)
            if line:
                L.append(line)

    # ---- memory
    if proxies:
        for kind, title, note in (
                ("pss_kb", "Memory: PSS (MiB, summed over the proxy's process tree)",
                 "PSS splits shared pages between the processes that map them, so a tree's PSS is what it costs "
                 "together: the fair comparison of weft (one process) with nginx (master and worker) and haproxy."),
                ("rss_kb", "Memory: RSS (MiB, summed over the proxy's process tree)",
                 "RSS counts each shared page in every process that maps it: for a tree of several processes "
                 "the sum overstates; compare by PSS.")):
            L.append("")
            L.append(f"### {title}")
            L.append("")
            extra = " | connections opened / failed | still answering (sample) | readings settled |" \
                if kind == "pss_kb" else " |"
            L.append(f"| target | processes | idle (after start) | after the load | with {IDLE_CONNS:,} idle "
                     f"connections | after they closed | per idle connection KiB{extra}")
            L.append("|---|" + "--:|" * (6 + (3 if kind == "pss_kb" else 0)))
            for t in proxies:
                row = (f"| {label(t, ('memory', 'process'))} | {cell(vals(t, 'mem_idle', 'processes'))} | "
                       f"{cell(mib(vals(t, 'mem_idle', kind)), 1)} | {cell(mib(vals(t, 'mem_after_load', kind)), 1)} | "
                       f"{cell(mib(vals(t, 'mem_idle_conns', kind)), 1)} | "
                       f"{cell(mib(vals(t, 'mem_conns_closed', kind)), 1)} | "
                       f"{cell(per_round(t, per_conn_kib(kind)), 2)} |")
                if kind == "pss_kb":
                    opened = sum(get(r, "mem_idle_conns", "opened") or 0 for r in by[t])
                    failed = sum(get(r, "mem_idle_conns", "failed") or 0 for r in by[t])
                    okc = sum(get(r, "mem_idle_conns", "check_ok") or 0 for r in by[t])
                    tried = sum(get(r, "mem_idle_conns", "check_tried") or 0 for r in by[t])
                    readings = [get(r, key) for r in by[t] for key in
                                ("mem_idle", "mem_after_load", "mem_idle_conns", "mem_conns_closed")]
                    readings = [m for m in readings if m]
                    settled = sum(1 for m in readings if m.get("settled"))
                    row += f" {fmt(opened)} / {fmt(failed)} | {okc} / {tried} | {settled} / {len(readings)} |"
                L.append(row)
            L.append("")
            L.append(note)
        L.append("")
        L.append(("IDLE_CONNS=0: no idle-connection step. " if not IDLE_CONNS else
                  "'per idle connection' = (with the idle connections − after the load) / "
                  f"{IDLE_CONNS:,}, per round. Idle connections "
                  + ("each served one request first" if IDLE_REQUEST else "sent nothing")
                  + "; 'still answering' sends one more request on every 100th of them while all are held (totals "
                  "over rounds). ") + "Each reading is taken once stable: three readings 100 ms apart within 1 % while "
                 f"the proxy used under 10 % of a core, at most {MEM_SETTLE:g} s ('readings settled').")
        L.append("")
        for line in (ranking("ranking, idle PSS (MiB)", [(t, mib(vals(t, "mem_idle", "pss_kb"))) for t in proxies],
                             False, 1),
                     ranking("ranking, PSS per idle connection (KiB)",
                             [(t, per_round(t, per_conn_kib("pss_kb"))) for t in proxies], False, 2)):
            if line:
                L.append(line)

    # ---- weft against its peers, per round
    ratio_rows = []
    for w in [t for t in shown if t in WEFT_TARGETS]:
        others = [p for p in PEERS if p in shown]
        if w == "weft-tls":
            others = [p for p in ("nginx-tls",) if p in shown]
        if w == "weft-h2":
            others = [p for p in ("nginx-h2", "haproxy-h2") if p in shown]
        if w == "weft-h2-tls":
            others = [p for p in ("nginx-h2-tls",) if p in shown]
        if w == "weft":
            others += [t for t in ("weft-base", "weft-plain-ring", "weft-defer", "weft-epoll") if t in shown]
        if w == "weft-spin":
            others += [t for t in ("weft-epoll",) if t in shown]
        for o in others:
            for key, name in (("req_per_cpu_s", "req per proxy CPU-s"),
                              ("req_per_total_cpu_s", "req per proxy+upstream CPU-s")):
                cells = [cell(per_round(w, ratio(o, "throughput", key)), 2)]
                cells += [cell(per_round(w, ratio(o, "latency", str(rate), key)), 2) for rate in RATES]
                ratio_rows.append(f"| {w} {name} / {o}'s | " + " | ".join(cells) + " |")
    if ratio_rows:
        L.append("")
        L.append("### weft against its peers: ratios within each round, then the median (min–max) over rounds")
        L.append("")
        L.append("| ratio | throughput | " + " | ".join(f"at {r:,} req/s" for r in RATES) + " |")
        L.append("|---|" + "--:|" * (1 + len(RATES)))
        L.extend(ratio_rows)
        L.append("")
        L.append("Above 1: weft serves more requests per CPU-second than the other. weft / weft-plain-ring is the "
                 "ring-flag A/B (COOP_TASKRUN + SINGLE_ISSUER against no flags), weft / weft-defer COOP_TASKRUN against "
                 "DEFER_TASKRUN; weft / weft-base is this build "
                 "against the base build (before/after).")

    # ---- per round
    L.append("")
    L.append("### Per round (in the order measured)")
    L.append("")
    L.append("| round | position | target | setup | req/s | req per proxy CPU-s | req per proxy+upstream CPU-s | "
             + " | ".join(f"p99 µs at {r:,}/s | added p99 µs at {r:,}/s" for r in RATES)
             + " | PSS idle MiB | PSS idle conns MiB | RSS idle conns MiB | flags |")
    L.append("|--:|--:|---|---|" + "--:|" * (3 + 2 * len(RATES) + 3) + "---|")
    for r in records:
        if rejected(r):
            continue
        same = rounds[r["round"]]
        cells = [str(r["round"]), str(r.get("position", "?")), r["target"], r.get("setup", "–"),
                 fmt(get(r, "throughput", "rps")), fmt(get(r, "throughput", "req_per_cpu_s")),
                 fmt(get(r, "throughput", "req_per_total_cpu_s"))]
        for x in RATES:
            cells.append(fmt(get(r, "latency", str(x), "p99_us")))
            cells.append(fmt(added(str(x), "p99_us")(r, same)) if r["target"] != "direct" else "–")
        for key, kind in (("mem_idle", "pss_kb"), ("mem_idle_conns", "pss_kb"), ("mem_idle_conns", "rss_kb")):
            v = get(r, key, kind)
            cells.append(fmt(v / 1024, 1) if v is not None else "–")
        fl = flags[(r["round"], r["target"])]
        cells.append(f"⚠ {len(fl)}" if fl else "")
        L.append("| " + " | ".join(cells) + " |")

    # ---- setup
    L.append("")
    L.append("### Setup")
    L.append("")
    L.append(f"- command: `{command}`")
    for k, v in machine.items():
        L.append(f"- {k}: {v}")
    for t in [t for t in TARGETS if t in WEFT_TARGETS]:
        spec = WEFT_TARGETS[t]
        seen = ", ".join(f"round {r['round']}: {r.get('setup', 'not reported')}" for r in records
                         if r["target"] == t)
        L.append(f"- {t}: configured driver = \"{spec['driver']}\""
                 + (f", ring_setup = \"{spec['ring_setup']}\"" if spec["ring_setup"] else "")
                 + f"; must report `{spec['expect']}`; reported: {seen or 'no round ran'}")
    orders = {}
    for r in records:
        orders.setdefault(r["round"], []).append(r["target"])
    L.append("- order of the targets: " + "; ".join(f"round {k}: {' '.join(v)}" for k, v in sorted(orders.items())))
    L.append(f"- raw results: {OUT}")
    return "\n".join(L) + "\n"


def derived(records):
    """Per-round derived figures (what the summary takes medians of), for OUT/derived.json."""
    ok = [r for r in records if not rejected(r)]
    rounds = {}
    for r in ok:
        rounds.setdefault(r["round"], {})[r["target"]] = r
    out = []
    for rnd, same in sorted(rounds.items()):
        d = same.get("direct")
        for t, r in same.items():
            row = {"round": rnd, "target": t, "setup": r.get("setup"), "added_us": {}, "ratios": {}}
            for k in (r.get("latency") or {}):
                if d and t != "direct":
                    row["added_us"][k] = {p: get(r, "latency", k, p) - get(d, "latency", k, p)
                                          for p in ("p50_us", "p99_us", "p999_us")
                                          if get(r, "latency", k, p) is not None
                                          and get(d, "latency", k, p) is not None}
            if t in WEFT_TARGETS:
                for o in [x for x in KNOWN_TARGETS if x in same and x not in ("direct", t)]:
                    for phase in ["throughput"] + [f"latency.{k}" for k in (r.get("latency") or {})]:
                        path = phase.split(".")
                        for key in ("req_per_cpu_s", "req_per_total_cpu_s"):
                            a, b = get(r, *path, key), get(same[o], *path, key)
                            if a is not None and b:
                                row["ratios"][f"{phase}.{key}/{o}"] = a / b
            out.append(row)
    return out


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - machine description only
        return "?"


def machine_info():
    model = sh("lscpu | sed -n 's/^Model name: *//p' | head -1")
    dirty = sh(f"git -C {ROOT} status --porcelain --untracked-files=no | wc -l")
    return {
        "cpu": f"{model}, nproc {os.cpu_count()}, proxy on core {PROXY_CORE}, load generator and upstream on core {LOAD_CORE}",
        "kernel": platform.release(),
        "weft": f"{sh(f'{WEFT_BIN} --version')}, "
                + os.environ.get("WEFT_BUILD", f"binary {WEFT_BIN}; work tree at commit "
                                 f"{sh(f'git -C {ROOT} rev-parse --short HEAD')}"
                                 + (f" with {dirty} uncommitted tracked file(s)" if dirty not in ("", "0", "?") else "")),
        "nginx": sh("nginx -v 2>&1").replace("nginx version: ", ""),
        "haproxy": sh("haproxy -v | head -1"),
        "wrk": sh("wrk -v 2>&1 | head -1"),
        "oha": sh("oha --version"),
        "upstream": "nginx, 1 worker, `return 200 \"hello\\n\"`, keep-alive",
    }


def write_summary(records, machine, command, fatal=None):
    text = summary(records, machine, command, fatal)
    (OUT / "summary.md").write_text(text)
    (OUT / "derived.json").write_text(json.dumps(derived(records), indent=1))
    return text


def resummarize():
    try:
        saved = json.loads((OUT / "machine.json").read_text())
        records = [json.loads(line) for line in (OUT / "results.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        sys.exit(f"bench: cannot read {OUT}: {e}")
    text = write_summary(records, saved["machine"], saved["command"])
    print(text)
    return 1 if any(rejected(r) for r in records) else 0


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw").mkdir(exist_ok=True)
    command = " ".join(f"{k}={shlex.quote(v)}" for k, v in SETTINGS.items()) + " benches/load/run.sh"
    machine = machine_info()
    text, quiet = wait_quiet(WAIT_QUIET)
    machine["before start"] = text + ("" if quiet else " — NOT QUIET: other work skews these figures")
    if not quiet:
        log(f"warning: the machine is not quiet before the start: {text}")
    # Saved first, so that `bench.py --summary OUT` works on an interrupted run too.
    (OUT / "machine.json").write_text(json.dumps({"machine": machine, "command": command, "settings": SETTINGS}, indent=1))
    log(f"results in {OUT}")
    log(f"command: {command}")
    for k, v in machine.items():
        log(f"{k}: {v}")

    def on_term(signum, frame):
        raise SystemExit(f"bench: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    records, fatal = [], None
    try:
        upstream, up = start_upstream()
        global UPSTREAM_PID
        UPSTREAM_PID = upstream.pid
        log(f"upstream nginx on 127.0.0.1:{up}")
        for rnd in range(1, ROUNDS + 1):
            if rnd > 1 and WAIT_QUIET > 0:
                text, quiet = wait_quiet(WAIT_QUIET)
                if not quiet:
                    log(f"warning: the machine is not quiet before round {rnd}: {text}")
            first = (rnd - 1) % len(TARGETS)
            order = TARGETS[first:] + TARGETS[:first]
            log(f"round {rnd}/{ROUNDS}: {' '.join(order)}")
            for pos, target in enumerate(order, 1):
                log(f"round {rnd}/{ROUNDS}: {target}")
                try:
                    rec = measure(target, up, rnd, pos)
                except Refused as e:
                    rec = {"round": rnd, "position": pos, "target": target, "refused": str(e)}
                    if e.setup:
                        rec["setup"] = e.setup
                    log(f"  error: REFUSED: {e}")
                except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
                    rec = {"round": rnd, "position": pos, "target": target, "failed": f"{type(e).__name__}: {e}"
                           if not isinstance(e, RuntimeError) else str(e)}
                    log(f"  error: FAILED: {e}")
                records.append(rec)
                with open(OUT / "results.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if upstream.poll() is not None:
                    raise RuntimeError(f"the upstream nginx died (status {upstream.returncode}); see {OUT}/upstream.log")
                if rejected(rec):
                    continue
                th = rec["throughput"]
                lat = "  ".join(f"{k}/s p99 {v['p99_us']:.0f}us" for k, v in rec["latency"].items())
                log(f"  {th['rps']:,.0f} req/s  {lat}"
                    + (f"  [{rec['setup']}]" if "setup" in rec else "")
                    + (f"  pss idle {rec['mem_idle']['pss_kb'] / 1024:.1f} MiB"
                       if get(rec, "mem_idle", "pss_kb") is not None else "")
                    + (f"  idle-conns pss {rec['mem_idle_conns']['pss_kb'] / 1024:.1f} MiB"
                       if get(rec, "mem_idle_conns", "pss_kb") is not None else ""))
                for _, text in record_flags(rec):
                    log(f"  flag: {text}")
    except RuntimeError as e:
        fatal = str(e)
        log(f"error: {e}")
    finally:
        stop_all()
    text = write_summary(records, machine, command, fatal)
    print()
    print(text)
    bad = [r for r in records if rejected(r)]
    if fatal:
        sys.exit(f"bench: error: {fatal}")
    if bad:
        sys.exit(f"bench: error: {len(bad)} row(s) refused or failed (listed under Flags in {OUT}/summary.md):\n"
                 + "\n".join(f"  round {r['round']}, {r['target']}: " + (r.get('refused') or r.get('failed')).splitlines()[0]
                             for r in bad))


if __name__ == "__main__":
    try:
        if RESUMMARIZE:
            sys.exit(resummarize())
        main()
    except RuntimeError as e:
        stop_all()
        sys.exit(f"bench: error: {e}")
    except KeyboardInterrupt:
        stop_all()
        sys.exit("bench: interrupted")
