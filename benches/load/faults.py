#!/usr/bin/env python3
"""Fault scenario: weft, nginx and haproxy in front of three upstreams, one
of which is killed and then another blackholed while a fixed-rate load runs.

Started by run.sh with SCENARIO=faults (which installs the tools and builds
weft first). Standard library only; shares bench.py's process helpers.

Layout: three nginx upstreams (`return 200`) and the load generator on
LOAD_CORE, the proxy (one worker) on PROXY_CORE. For each round and target,
fresh upstreams and a fresh proxy, then six phases of PHASE each, one oha run
per phase at RATE requests per second (LAT_CONNS connections, coordinated-
omission correction), back to back:

  1. before          all three upstreams answer;
  2. kill            upstream A is SIGKILLed FAULT_AT into the phase
                     (connections reset, later connects refused);
  3. after kill      A stays dead;
  4. blackhole       upstream B is SIGSTOPped FAULT_AT into the phase: the
                     kernel still accepts its connections, nothing answers;
  5. after blackhole A dead, B stopped;
  6. recovery        FAULT_AT into the phase A is started again and B
                     continued.

Each proxy is configured as close to the others as it allows: per-try (read)
and connect timeouts of PER_TRY, up to 3 attempts on connect failures,
resets, timeouts and 502/503/504, passive ejection, and an active health
check where the proxy has one (weft and haproxy; nginx's open-source build
has none):

  weft     retry = { attempts = 3, on = [connect-failure, reset, timeout,
           gateway-error], per_try_timeout }, breaker defaults but
           max_ejection_percent = 67 (two of three may be out),
           health_check every 1 s (timeout PER_TRY), least-loaded;
  nginx    proxy_next_upstream error timeout http_502 http_503 http_504,
           proxy_next_upstream_tries 3, max_fails=5 fail_timeout=30s,
           proxy_connect_timeout and proxy_read_timeout PER_TRY, least_conn;
  haproxy  retries 2, option redispatch 1, retry-on all-retryable-errors,
           timeout connect and server PER_TRY, check inter 1s fall 3 rise 2,
           observe layer7 error-limit 5 on-error mark-down, leastconn.

Per phase: requests, successes (2xx) in percent, p50, p99 and the slowest
request. Summary on stdout and in OUT/summary.md, every phase of every round
in OUT/results.jsonl, tool outputs in OUT/raw/.
"""

import json
import os
import shlex
import signal
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (process helpers; its settings are not used)

ROUNDS = int(os.environ.get("ROUNDS", "3"))
PHASE = os.environ.get("PHASE", "10s")
PHASE_S = bench.seconds(PHASE)
FAULT_AT = bench.seconds(os.environ.get("FAULT_AT", "2s"))
RATE = int(os.environ.get("RATE", "1000"))
CONNS = int(os.environ.get("LAT_CONNS", "50"))
PER_TRY = os.environ.get("PER_TRY", "200ms")
TARGETS = os.environ.get("FAULT_TARGETS", "weft nginx haproxy").split()
PROXY_CORE = bench.PROXY_CORE
LOAD_CORE = bench.LOAD_CORE
OUT = Path(os.environ.get("OUT", str(bench.ROOT / "bench-results" /
                                     ("faults-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")))))
bench.OUT = OUT

PHASES = ["before", "kill", "after kill", "blackhole", "after blackhole", "recovery"]
for t in TARGETS:
    if t not in ("weft", "nginx", "haproxy"):
        sys.exit(f"faults: unknown target `{t}` in FAULT_TARGETS (weft, nginx, haproxy)")
if FAULT_AT >= PHASE_S:
    sys.exit(f"faults: FAULT_AT ({FAULT_AT} s) must fall inside a phase ({PHASE})")

log = bench.log


# ---------------------------------------------------------------- upstreams


def upstream_conf(name, port):
    return bench.nginx_common(name, OUT) + f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "hello from {name}\\n";
        }}
    }}
}}
"""


def start_upstream(name, port):
    (OUT / f"{name}-tmp").mkdir(exist_ok=True)
    conf = OUT / f"{name}.conf"
    conf.write_text(upstream_conf(name, port))
    p = bench.start(name, ["nginx", "-p", str(OUT), "-c", str(conf)], LOAD_CORE)
    bench.wait_ready(p, port, f"upstream {name}")
    return p


def signal_group(p, sig):
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- proxies


def weft_conf(port, ups):
    eps = ", ".join(f'"127.0.0.1:{u}"' for u in ups)
    return f"""# weft under the fault scenario: one worker, three endpoints.
[runtime]
workers = 1
driver = "io-uring"

[[listener]]
name = "bench"
listen = "127.0.0.1:{port}"
idle_timeout = "300s"

[[route]]
cluster = "up"
retry = {{ attempts = 3, on = ["connect-failure", "reset", "timeout", "gateway-error"], per_try_timeout = "{PER_TRY}" }}

[[cluster]]
name = "up"
endpoints = [{eps}]
connect_timeout = "{PER_TRY}"
pool = {{ max_idle = 64, idle_timeout = "300s" }}
breaker = {{ max_ejection_percent = 67 }}
health_check = {{ path = "/health", interval = "1s", timeout = "{PER_TRY}" }}
"""


def nginx_conf(port, ups):
    servers = "\n".join(f"        server 127.0.0.1:{u} max_fails=5 fail_timeout=30s;" for u in ups)
    return bench.nginx_common("nginx", OUT) + f"""    upstream up {{
        least_conn;
{servers}
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
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout {PER_TRY};
            proxy_read_timeout {PER_TRY};
            proxy_send_timeout {PER_TRY};
        }}
    }}
}}
"""


def haproxy_conf(port, ups):
    servers = "\n".join(
        f"    server u{i} 127.0.0.1:{u} check inter 1s fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down"
        for i, u in enumerate(ups))
    return f"""global
    nbthread 1
    maxconn 30000
    no strict-limits

defaults
    mode http
    timeout connect {PER_TRY}
    timeout client 300s
    timeout server {PER_TRY}
    timeout http-keep-alive 300s
    http-reuse always
    retries 2
    option redispatch 1
    retry-on all-retryable-errors

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    balance leastconn
    option httpchk GET /health
{servers}
"""


def start_proxy(target, ups, rnd):
    port = bench.free_port()
    name = f"{target}-r{rnd}"
    if target == "weft":
        conf = OUT / f"{name}.toml"
        conf.write_text(weft_conf(port, ups))
        argv = [str(bench.WEFT_BIN), "--config", str(conf)]
    elif target == "nginx":
        (OUT / "nginx-tmp").mkdir(exist_ok=True)
        conf = OUT / f"{name}.conf"
        conf.write_text(nginx_conf(port, ups))
        argv = ["nginx", "-p", str(OUT), "-c", str(conf)]
    else:
        conf = OUT / f"{name}.cfg"
        conf.write_text(haproxy_conf(port, ups))
        argv = ["haproxy", "-db", "-f", str(conf)]
    p = bench.start(name, argv, PROXY_CORE)
    try:
        bench.wait_ready(p, port, target)
    except RuntimeError:
        bench.stop(p)
        raise
    return p, port


# ---------------------------------------------------------------- load


def oha(port, raw_name, duration=None):
    """One fixed-rate oha run: requests, successes, latency percentiles."""
    out = bench.run_tool(["oha", "--no-tui", "--output-format", "json", "--latency-correction", "-w",
                          "-q", str(RATE), "-z", duration or PHASE, "-c", str(CONNS), f"http://127.0.0.1:{port}/"],
                         raw_name, timeout=PHASE_S + 120)
    try:
        j = json.loads(out)
    except ValueError as e:
        raise RuntimeError(f"cannot read oha's output ({e!r}); see {OUT}/raw/{raw_name}")
    codes = j.get("statusCodeDistribution") or {}
    errors = sum((j.get("errorDistribution") or {}).values())
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    total = sum(codes.values()) + errors
    pct = j.get("latencyPercentiles") or {}

    def us(v):
        return None if v is None else v * 1e6

    return {
        "requests": total,
        "ok": ok,
        "success_pct": 100.0 * ok / total if total else 0.0,
        "statuses": codes,
        "error_kinds": j.get("errorDistribution") or {},
        "p50_us": us(pct.get("p50")),
        "p99_us": us(pct.get("p99")),
        "max_us": us((j.get("summary") or {}).get("slowest")),
    }


def at(delay, fn):
    """Runs fn `delay` seconds from now on a timer thread."""
    t = threading.Timer(delay, fn)
    t.daemon = True
    t.start()
    return t


def run_target(target, rnd, records):
    ports = [bench.free_port() for _ in range(3)]
    names = [f"up-{c}-r{rnd}-{target}" for c in "abc"]
    ups = [start_upstream(n, p) for n, p in zip(names, ports)]
    proxy, port = start_proxy(target, ports, rnd)
    a = {"p": ups[0]}
    try:
        # Warm the proxy's pools and checks before the first measured phase.
        oha(port, f"{target}-r{rnd}-warmup", duration="2s")

        def kill_a():
            signal_group(a["p"], signal.SIGKILL)

        def stop_b():
            signal_group(ups[1], signal.SIGSTOP)

        def recover():
            signal_group(ups[1], signal.SIGCONT)
            bench.stop(a["p"], timeout=1.0)
            a["p"] = start_upstream(names[0], ports[0])

        faults = {"kill": kill_a, "blackhole": stop_b, "recovery": recover}
        for phase in PHASES:
            timer = at(FAULT_AT, faults[phase]) if phase in faults else None
            res = oha(port, f"{target}-r{rnd}-{phase.replace(' ', '-')}")
            if timer:
                timer.join()
            if proxy.poll() is not None:
                raise RuntimeError(f"{target} exited during phase {phase}; see {OUT}/{proxy.bench_name}.log")
            rec = {"round": rnd, "target": target, "phase": phase, **res}
            records.append(rec)
            with open(OUT / "results.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            log(f"  {target} {phase}: {res['ok']}/{res['requests']} ok ({res['success_pct']:.2f} %), "
                f"p99 {fmt_ms(res['p99_us'])}, max {fmt_ms(res['max_us'])}")
    finally:
        signal_group(ups[1], signal.SIGCONT)
        bench.stop(proxy)
        for p in [a["p"], *ups[1:]]:
            bench.stop(p, timeout=3.0)


# ---------------------------------------------------------------- summary


def fmt_ms(us):
    return "–" if us is None else f"{us / 1000:.2f} ms"


def summary(records, command, machine):
    lines = ["# weft fault scenario", "", f"Command: `{command}`", ""]
    for k, v in machine.items():
        lines.append(f"- {k}: {v}")
    lines += ["", f"{RATE} GET/s for {PHASE} per phase ({CONNS} connections); fault {FAULT_AT:g} s into its phase; "
              f"per-try timeout {PER_TRY}. Medians over {ROUNDS} round(s), min–max in brackets.", ""]

    def cell(vals, f):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "–"
        m = statistics.median(vals)
        return f(m) if len(vals) == 1 else f"{f(m)} ({f(min(vals))}–{f(max(vals))})"

    header = "| phase | " + " | ".join(TARGETS) + " |"
    for title, key, f in [
        ("Successes (2xx) in percent", "success_pct", lambda v: f"{v:.2f}"),
        ("Failed requests (non-2xx and errors)", None, lambda v: f"{v:.0f}"),
        ("p99 latency, ms", "p99_us", lambda v: f"{v / 1000:.2f}"),
        ("Slowest request, ms", "max_us", lambda v: f"{v / 1000:.1f}"),
        ("p50 latency, ms", "p50_us", lambda v: f"{v / 1000:.2f}"),
    ]:
        lines += [f"## {title}", "", header, "|---|" + "--:|" * len(TARGETS)]
        for phase in PHASES:
            row = [phase]
            for t in TARGETS:
                rs = [r for r in records if r["target"] == t and r["phase"] == phase]
                vals = [(r["requests"] - r["ok"]) if key is None else r[key] for r in rs]
                row.append(cell(vals, f))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Over the whole run", "", "| | " + " | ".join(TARGETS) + " |", "|---|" + "--:|" * len(TARGETS)]
    row = ["successes (2xx), percent"]
    for t in TARGETS:
        per_round = []
        for rnd in range(1, ROUNDS + 1):
            rs = [r for r in records if r["target"] == t and r["round"] == rnd]
            total = sum(r["requests"] for r in rs)
            if total:
                per_round.append(100.0 * sum(r["ok"] for r in rs) / total)
        row.append(cell(per_round, lambda v: f"{v:.3f}"))
    lines.append("| " + " | ".join(row) + " |")
    kinds = {}
    for r in records:
        for k, v in list(r["statuses"].items()) + list(r["error_kinds"].items()):
            if not str(k).startswith("2"):
                kinds.setdefault((r["target"], str(k)), 0)
                kinds[(r["target"], str(k))] += v
    if kinds:
        lines += ["", "Failures by kind, all rounds: " +
                  "; ".join(f"{t}: {k} × {v}" for (t, k), v in sorted(kinds.items()))]
    return "\n".join(lines) + "\n"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw").mkdir(exist_ok=True)
    command = (f"SCENARIO=faults ROUNDS={ROUNDS} PHASE={PHASE} FAULT_AT={FAULT_AT:g}s RATE={RATE} "
               f"LAT_CONNS={CONNS} PER_TRY={PER_TRY} FAULT_TARGETS={shlex.quote(' '.join(TARGETS))} benches/load/run.sh")
    machine = {k: v for k, v in bench.machine_info().items() if k not in ("wrk", "upstream")}
    machine["upstreams"] = "three nginx, 1 worker each, `return 200`, on the load core"
    log(f"results in {OUT}")
    for k, v in machine.items():
        log(f"{k}: {v}")

    def on_term(signum, frame):
        raise SystemExit(f"faults: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    records = []
    try:
        for rnd in range(1, ROUNDS + 1):
            order = TARGETS[(rnd - 1) % len(TARGETS):] + TARGETS[:(rnd - 1) % len(TARGETS)]
            for target in order:
                log(f"round {rnd}/{ROUNDS}: {target}")
                run_target(target, rnd, records)
    finally:
        bench.stop_all()
    text = summary(records, command, machine)
    (OUT / "summary.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        bench.stop_all()
        sys.exit(f"faults: error: {e}")
    except KeyboardInterrupt:
        bench.stop_all()
        sys.exit("faults: interrupted")
