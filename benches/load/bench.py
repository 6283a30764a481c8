#!/usr/bin/env python3
"""End-to-end load benchmark of weft against nginx and haproxy (and no proxy).

Started by run.sh, which installs the tools and builds weft first; see run.sh
for the settings (environment variables). Standard library only.

Layout: an nginx "upstream" answering `200 hello` is pinned to LOAD_CORE with
the load generators; each proxy runs with one worker pinned to PROXY_CORE.
For each round, for each target in turn (direct, weft, nginx, haproxy), a
fresh proxy is started and measured:

  1. RSS idle, right after it answers its first request;
  2. warm-up (wrk, WARMUP), not recorded;
  3. throughput: wrk, CONNS connections, DURATION; the proxy's user and system
     CPU from /proc/PID/stat before and after;
  4. latency: oha at each fixed rate in RATES for DURATION with coordinated-
     omission correction (--latency-correction), with the proxy's CPU too;
  5. RSS after the load;
  6. RSS with IDLE_CONNS idle keep-alive client connections held open
     (idle_conns.py), then a check that every 100th still gets an answer;
  7. the proxy is stopped.

Medians over the rounds go to stdout and OUT/summary.md; every figure of every
round goes to OUT/results.jsonl, tool outputs to OUT/raw/, configs and logs to
OUT/.
"""

import json
import os
import resource
import platform
import re
import shlex
import signal
import socket
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
}
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
WEFT_BIN = Path(env("WEFT_BIN", str(ROOT / "target/release/weft")))
OUT = Path(env("OUT", str(ROOT / "bench-results" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))))

for t in TARGETS:
    if t not in ("direct", "weft", "weft-epoll", "nginx", "haproxy"):
        sys.exit(f"bench: unknown target `{t}` in TARGETS (direct, weft, weft-epoll, nginx, haproxy)")

CHILDREN = []  # Popen objects, each the leader of its own session


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
    """(VmRSS, Pss) in kB summed over pid's process tree, and the process count."""
    rss = pss = n = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
            n += 1
        except OSError:
            continue
    return rss, pss, n


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(port, timeout=1.0):
    """True when GET / on 127.0.0.1:port answers 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
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


def nginx_proxy_conf(port, up):
    return nginx_common("nginx", OUT) + f"""    upstream up {{
        server 127.0.0.1:{up};
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_conf(port, up):
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
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server up 127.0.0.1:{up}
"""


def weft_conf(port, up, driver="auto"):
    return f"""# weft under benchmark: one worker (pinned by taskset), one route, one cluster.
[runtime]
workers = 1
driver = "{driver}"

[[listener]]
name = "bench"
listen = "127.0.0.1:{port}"
idle_timeout = "300s"

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
    if target in ("weft", "weft-epoll"):
        conf = OUT / f"{name}.toml"
        conf.write_text(weft_conf(port, up, "epoll" if target == "weft-epoll" else "auto"))
        argv = [str(WEFT_BIN), "--config", str(conf)]
    elif target == "nginx":
        (OUT / "nginx-tmp").mkdir(exist_ok=True)
        conf = OUT / f"{name}.conf"
        conf.write_text(nginx_proxy_conf(port, up))
        argv = ["nginx", "-p", str(OUT), "-c", str(conf)]
    elif target == "haproxy":
        conf = OUT / f"{name}.cfg"
        conf.write_text(haproxy_conf(port, up))
        argv = ["haproxy", "-db", "-f", str(conf)]
    else:
        raise ValueError(target)
    p = start(name, argv, PROXY_CORE)
    wait_ready(p, port, target)
    return p, port


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
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    res = {"requests": int(m.group(1)), "seconds": float(m.group(2)) * scale}
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in errs.groups()) if errs else 0
    return res


def wrk(port, duration, raw_name):
    out = run_tool(["wrk", "-t1", f"-c{CONNS}", f"-d{duration}", "--latency", f"http://127.0.0.1:{port}/"],
                   raw_name, timeout=seconds(duration) + 60)
    return parse_wrk(out)


def oha(port, rate, raw_name):
    out = run_tool(["oha", "--no-tui", "--output-format", "json", "--latency-correction", "-w",
                    "-q", str(rate), "-z", DURATION, "-c", str(LAT_CONNS), f"http://127.0.0.1:{port}/"],
                   raw_name, timeout=DURATION_S + 60)
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


UPSTREAM_PID = None  # set once the upstream runs


def user_sys_jiffies():
    """Process CPU (user + nice + system, without interrupts) of all cores, in seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2]) / CLK_TCK


def with_cpu(pid, fn):
    """Runs fn() (a load generator run) and adds: the user and system CPU
    seconds pid used meanwhile, how busy each core was, and `other_cpu_pct`:
    CPU used meanwhile by processes that are not part of the benchmark (not the
    proxy, the upstream or the load generator), in % of one core; a high value
    means another job on the machine skewed this measurement."""
    t0, c0, j0 = time.monotonic(), core_times(), user_sys_jiffies()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    up0 = sum(cpu_ticks(UPSTREAM_PID)) if UPSTREAM_PID else 0.0
    u0, s0 = cpu_ticks(pid) if pid else (0.0, 0.0)
    res = fn()
    u1, s1 = cpu_ticks(pid) if pid else (0.0, 0.0)
    up1 = sum(cpu_ticks(UPSTREAM_PID)) if UPSTREAM_PID else 0.0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t1, c1, j1 = time.monotonic(), core_times(), user_sys_jiffies()
    busy = core_busy(c0, c1)
    res["core_busy_pct"] = {c: round(b, 1) for c, (b, _) in busy.items()}
    res["core_steal_pct"] = {c: round(st, 1) for c, (_, st) in busy.items()}
    loadgen = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    ours = (u1 - u0) + (s1 - s0) + (up1 - up0) + loadgen
    res["loadgen_cpu_s"] = round(loadgen, 3)
    res["upstream_cpu_s"] = round(up1 - up0, 3)
    res["other_cpu_pct"] = round(max(0.0, (j1 - j0) - ours) / (t1 - t0) * 100, 1)
    if pid:
        res["cpu_user_s"] = u1 - u0
        res["cpu_sys_s"] = s1 - s0
        cpu = res["cpu_user_s"] + res["cpu_sys_s"]
        res["req_per_cpu_s"] = res["requests"] / cpu if cpu > 0 else None
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
        time.sleep(0.5)  # let the proxy settle its last accepts
        rss, pss, nproc = memory_kb(pid)
        p.stdin.write("check\n")
        p.stdin.flush()
        check = p.stdout.readline().split()
        p.stdin.close()
        p.wait(30)
        return {
            "rss_kb": rss,
            "pss_kb": pss,
            "opened": int(opened),
            "failed": int(failed),
            "first_error": rest[0].strip() if rest else "",
            "check_ok": int(check[1]) if len(check) == 3 else 0,
            "check_tried": int(check[2]) if len(check) == 3 else 0,
        }
    finally:
        stop(p, timeout=5)


def measure(target, up, rnd):
    """All measurements of one target in one round."""
    rec = {"round": rnd, "target": target}
    proc, port = (None, up) if target == "direct" else start_proxy(target, up, rnd)
    pid = proc.pid if proc else None
    try:
        if pid:
            rss, pss, nproc = memory_kb(pid)
            rec["mem_idle"] = {"rss_kb": rss, "pss_kb": pss, "processes": nproc}
            if target.startswith("weft"):
                m = re.search(r"\((\w+) driver\)", tail(OUT / f"{proc.bench_name}.log"))
                rec["driver"] = m.group(1) if m else "?"
        wrk(port, WARMUP, f"{target}-r{rnd}-warmup.txt")
        rec["throughput"] = with_cpu(pid, lambda: wrk(port, DURATION, f"{target}-r{rnd}-wrk.txt"))
        rec["latency"] = {}
        for rate in RATES:
            rec["latency"][str(rate)] = with_cpu(pid, lambda: oha(port, rate, f"{target}-r{rnd}-oha-{rate}.json"))
        if pid:
            rss, pss, nproc = memory_kb(pid)
            rec["mem_after_load"] = {"rss_kb": rss, "pss_kb": pss, "processes": nproc}
            if IDLE_CONNS > 0:
                rec["mem_idle_conns"] = idle_connections(pid, port)
                time.sleep(1.0)  # the proxy sees the closes
                rss, pss, nproc = memory_kb(pid)
                rec["mem_conns_closed"] = {"rss_kb": rss, "pss_kb": pss, "processes": nproc}
            if proc.poll() is not None:
                rec["crashed"] = f"exited with status {proc.returncode}"
    finally:
        if proc:
            stop(proc)
            if "crashed" not in rec and proc.returncode not in (0, -signal.SIGTERM):
                rec["exit_status"] = proc.returncode
    return rec


# ---------------------------------------------------------------- report


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def get(rec, *path):
    for k in path:
        if not isinstance(rec, dict) or k not in rec:
            return None
        rec = rec[k]
    return rec


def summary(records, machine, command):
    by = {t: [r for r in records if r["target"] == t] for t in TARGETS}

    def m(t, *path):
        return med([get(r, *path) for r in by[t]])

    def spread(t, *path):
        vals = [get(r, *path) for r in by[t]]
        vals = [v for v in vals if v is not None]
        return f"{min(vals):,.0f}–{max(vals):,.0f}" if len(vals) > 1 else ""

    L = []
    L.append(f"Medians of {ROUNDS} round(s); each round runs the targets in turn (interleaved).")
    L.append("")
    L.append(f"### Throughput: wrk, {CONNS} connections, {DURATION}, closed loop")
    L.append("")
    L.append("| target | req/s | (min–max) | proxy user CPU s | proxy sys CPU s | sys share | proxy busy | "
             "req per proxy CPU-s | load core busy | other CPU | non-2xx | socket errors |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for t in TARGETS:
        u, s = m(t, "throughput", "cpu_user_s"), m(t, "throughput", "cpu_sys_s")
        secs = m(t, "throughput", "seconds")
        share = f"{100 * s / (u + s):.0f} %" if u is not None and (u + s) > 0 else "–"
        busy = f"{100 * (u + s) / secs:.0f} %" if u is not None and secs else "–"
        L.append(f"| {t} | {fmt(m(t, 'throughput', 'rps'))} | {spread(t, 'throughput', 'rps')} | {fmt(u, 2)} | "
                 f"{fmt(s, 2)} | {share} | {busy} | {fmt(m(t, 'throughput', 'req_per_cpu_s'))} | "
                 f"{fmt(m(t, 'throughput', 'core_busy_pct', LOAD_CORE))} % | "
                 f"{fmt(m(t, 'throughput', 'other_cpu_pct'))} % | "
                 f"{fmt(sum(get(r, 'throughput', 'non2xx') or 0 for r in by[t]))} | "
                 f"{fmt(sum(get(r, 'throughput', 'socket_errors') or 0 for r in by[t]))} |")
    L.append("")
    L.append("non-2xx and socket errors are totals over all rounds; 'proxy busy' is the proxy's CPU time over "
             "the run's wall time (100 % = its core is saturated); 'load core busy' is how busy core "
             f"{LOAD_CORE} (wrk and the upstream) was, from /proc/stat; 'other CPU' is CPU used meanwhile by "
             "processes outside the benchmark, in % of one core (should be near 0).")
    for rate in RATES:
        k = str(rate)
        L.append("")
        L.append(f"### Latency at a fixed {rate:,} req/s: oha --latency-correction, {LAT_CONNS} connections, {DURATION}")
        L.append("")
        L.append("| target | achieved req/s | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | "
                 "p99 (min–max) | proxy user CPU s | proxy sys CPU s | req per proxy CPU-s | other CPU | non-2xx | errors |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        base = {p: m("direct", "latency", k, p) if "direct" in by else None for p in ("p50_us", "p99_us", "p999_us")}
        for t in TARGETS:
            vals = {p: m(t, "latency", k, p) for p in ("p50_us", "p99_us", "p999_us")}
            added = {p: (vals[p] - base[p]) if t != "direct" and vals[p] is not None and base[p] is not None else None
                     for p in vals}
            L.append(f"| {t} | {fmt(m(t, 'latency', k, 'rps'))} | {fmt(vals['p50_us'])} | {fmt(vals['p99_us'])} | "
                     f"{fmt(vals['p999_us'])} | {fmt(added['p50_us'])} | {fmt(added['p99_us'])} | "
                     f"{fmt(added['p999_us'])} | {spread(t, 'latency', k, 'p99_us')} | "
                     f"{fmt(m(t, 'latency', k, 'cpu_user_s'), 2)} | {fmt(m(t, 'latency', k, 'cpu_sys_s'), 2)} | "
                     f"{fmt(m(t, 'latency', k, 'req_per_cpu_s'))} | "
                     f"{fmt(m(t, 'latency', k, 'other_cpu_pct'))} % | "
                     f"{fmt(sum(get(r, 'latency', k, 'non2xx') or 0 for r in by[t]))} | "
                     f"{fmt(sum(get(r, 'latency', k, 'errors') or 0 for r in by[t]))} |")
        L.append("")
        L.append("added = proxy minus direct at the same percentile (medians of each).")
    proxies = [t for t in TARGETS if t != "direct"]
    if proxies:
        L.append("")
        L.append(f"### Resident memory (VmRSS, MiB, summed over the proxy's processes)")
        L.append("")
        L.append(f"| target | processes | idle (after start) | after the load | with {IDLE_CONNS:,} idle connections | "
                 "PSS with idle connections | after they closed | connections opened / failed | still answering (sample) |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for t in proxies:
            mib = lambda v: fmt(v / 1024, 1) if v is not None else "–"
            opened = m(t, "mem_idle_conns", "opened")
            failed = sum(get(r, "mem_idle_conns", "failed") or 0 for r in by[t])
            ok = sum(get(r, "mem_idle_conns", "check_ok") or 0 for r in by[t])
            tried = sum(get(r, "mem_idle_conns", "check_tried") or 0 for r in by[t])
            L.append(f"| {t} | {fmt(m(t, 'mem_idle', 'processes'))} | {mib(m(t, 'mem_idle', 'rss_kb'))} | "
                     f"{mib(m(t, 'mem_after_load', 'rss_kb'))} | {mib(m(t, 'mem_idle_conns', 'rss_kb'))} | "
                     f"{mib(m(t, 'mem_idle_conns', 'pss_kb'))} | {mib(m(t, 'mem_conns_closed', 'rss_kb'))} | "
                     f"{fmt(opened)} / {failed} | {ok} / {tried} |")
        L.append("")
        L.append(("nginx runs a master and a worker process: its RSS is their sum (shared pages counted twice), its "
                  "PSS splits them. " if "nginx" in proxies else "") + "Idle connections " +
                 ("each served one request first" if IDLE_REQUEST else "sent nothing") + "; 'still answering' sends "
                 "one more request on every 100th of them while all are held.")
    problems = []
    for r in records:
        for key in ("crashed", "exit_status"):
            if key in r:
                problems.append(f"- round {r['round']}, {r['target']}: {key} {r[key]}")
        for k, v in (r.get("latency") or {}).items():
            if v.get("error_kinds"):
                problems.append(f"- round {r['round']}, {r['target']}, {k} req/s: errors {v['error_kinds']}")
        ic = r.get("mem_idle_conns") or {}
        if ic.get("failed"):
            problems.append(f"- round {r['round']}, {r['target']}: {ic['failed']} idle connections failed "
                            f"({ic.get('first_error')})")
    if problems:
        L.append("")
        L.append("### Problems seen")
        L.append("")
        L.extend(problems)
    noisy = []
    for r in records:
        phases = [("throughput", r.get("throughput") or {})] + [
            (f"{k} req/s", v) for k, v in (r.get("latency") or {}).items()]
        for name, ph in phases:
            if (ph.get("other_cpu_pct") or 0) > 10:
                noisy.append(f"round {r['round']} {r['target']} {name}: {ph['other_cpu_pct']:.0f} %")
    if noisy:
        L.append("")
        L.append("### Noise: other processes used over 10 % of a core during")
        L.append("")
        L.append("- " + "; ".join(noisy))
    L.append("")
    L.append("### Per round")
    L.append("")
    head = "| round | target | req/s | req per proxy CPU-s | " + " | ".join(
        f"p99 µs at {r:,}/s" for r in RATES) + " | RSS idle MiB | RSS idle conns MiB |"
    L.append(head)
    L.append("|" + "---|" * 2 + "--:|" * (4 + len(RATES)))
    for r in records:
        cells = [str(r["round"]), r["target"], fmt(get(r, "throughput", "rps")),
                 fmt(get(r, "throughput", "req_per_cpu_s"))]
        cells += [fmt(get(r, "latency", str(x), "p99_us")) for x in RATES]
        for key in ("mem_idle", "mem_idle_conns"):
            v = get(r, key, "rss_kb")
            cells.append(fmt(v / 1024, 1) if v is not None else "–")
        L.append("| " + " | ".join(cells) + " |")
    drivers = sorted({r["driver"] for r in records if "driver" in r})
    L.append("")
    L.append("### Setup")
    L.append("")
    L.append(f"- command: `{command}`")
    for k, v in machine.items():
        L.append(f"- {k}: {v}")
    if drivers:
        L.append(f"- weft IO driver: {', '.join(drivers)}")
    L.append(f"- raw results: {OUT}")
    return "\n".join(L) + "\n"


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


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw").mkdir(exist_ok=True)
    command = " ".join(f"{k}={shlex.quote(v)}" for k, v in SETTINGS.items()) + " benches/load/run.sh"
    machine = machine_info()
    text, quiet = wait_quiet(WAIT_QUIET)
    machine["before start"] = text + ("" if quiet else " — NOT QUIET: other work skews these figures")
    if not quiet:
        log(f"warning: the machine is not quiet before the start: {text}")
    log(f"results in {OUT}")
    log(f"command: {command}")
    for k, v in machine.items():
        log(f"{k}: {v}")

    def on_term(signum, frame):
        raise SystemExit(f"bench: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    records = []
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
            for target in TARGETS:
                log(f"round {rnd}/{ROUNDS}: {target}")
                rec = measure(target, up, rnd)
                records.append(rec)
                with open(OUT / "results.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
                th = rec["throughput"]
                lat = "  ".join(f"{k}/s p99 {v['p99_us']:.0f}us" for k, v in rec["latency"].items())
                log(f"  {th['rps']:,.0f} req/s  {lat}"
                    + (f"  rss idle {rec['mem_idle']['rss_kb'] / 1024:.1f} MiB" if "mem_idle" in rec else "")
                    + (f"  10k-conns {rec['mem_idle_conns']['rss_kb'] / 1024:.1f} MiB" if "mem_idle_conns" in rec else ""))
            if upstream.poll() is not None:
                raise RuntimeError("the upstream nginx died; see upstream.log")
    finally:
        stop_all()
    text = summary(records, machine, command)
    (OUT / "summary.md").write_text(text)
    (OUT / "machine.json").write_text(json.dumps({"machine": machine, "command": command, "settings": SETTINGS}, indent=1))
    print()
    print(text)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        stop_all()
        sys.exit(f"bench: error: {e}")
    except KeyboardInterrupt:
        stop_all()
        sys.exit("bench: interrupted")
