#!/usr/bin/env python3
"""Paired scenario: weft against its peers in many short runs, back to back.

    SCENARIO=pairs benches/load/run.sh

On a noisy host one proxy's throughput moves by two or three times from one
minute to the next, more than the gaps between the proxies; the load
scenario, whose rounds visit a target a minute or more apart, cannot resolve
a gap of a few percent. Here every target runs at once (one worker each,
pinned to PROXY_CORE, idle but for its turn) and each cycle gives every
target one short run, one after the other, in an order rotated by one per
cycle. A ratio between two targets is taken within a cycle, from runs
seconds apart, so that slow drift cancels. The summary gives, for the first
target against each other one, the median of the per-cycle ratios of
requests per proxy CPU-second, a distribution-free 95 % confidence interval
of that median, and in how many cycles the first target was ahead.

The proxy's CPU time is read from /proc/PID/task/*/schedstat (nanoseconds on
a CPU, whole process tree, steal excluded), not from the 10 ms ticks of
/proc/PID/stat: a 2 s run at a fixed rate uses only tens of ticks.

Settings: TARGETS ["weft nginx haproxy"] (any of the load scenario's HTTP/1
cleartext targets but direct), CYCLES [20], DURATION [2s] (each run), WARMUP
[2s] (each target once, before the first cycle), CONNS [64], RATE [0] (0:
closed loop, wrk with CONNS connections; above 0: oha at that fixed rate with
LAT_CONNS [50] connections and coordinated-omission correction, and the
latency percentiles are compared too), PROXY_CORE, LOAD_CORE, OUT.
Results in OUT/summary.md and OUT/results.jsonl.
"""

import json
import math
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TARGETS", "weft nginx haproxy")
os.environ.setdefault("DURATION", "2s")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (process helpers, proxy configurations, wrk and oha)

CYCLES = int(os.environ.get("CYCLES", "20"))
RATE = int(os.environ.get("RATE", "0"))
TARGETS = bench.TARGETS
OUT = Path(os.environ.get("OUT", str(bench.ROOT / "bench-results" /
                                     ("pairs-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")))))
bench.OUT = OUT
log = bench.log

for t in TARGETS:
    if t == "direct" or t in bench.TLS_TARGETS or t in bench.H2_TARGETS:
        sys.exit(f"pairs: target `{t}` is not for this scenario: use cleartext HTTP/1 proxies "
                 "(weft, weft-base, weft-epoll, nginx, haproxy, ...)")
if len(TARGETS) < 2:
    sys.exit("pairs: TARGETS needs two targets or more: the first is compared with each other one")
if CYCLES < 6:
    sys.exit(f"pairs: CYCLES={CYCLES} is too few for a 95 % interval of the median: use 6 or more")


def cpu_ns(pid):
    """Nanoseconds on a CPU of pid's process tree (every thread)."""
    total = 0
    for p in bench.descendants(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def one_run(target, pid, port, cycle):
    """One measured run of `target`: requests, its CPU, and the cores' steal."""
    raw = f"{target}-c{cycle}" + (".txt" if RATE == 0 else ".json")
    c0, cores0, t0 = cpu_ns(pid), bench.core_times(), time.monotonic()
    res = bench.wrk(port, bench.DURATION, raw) if RATE == 0 else bench.oha(port, RATE, raw)
    c1, cores1, t1 = cpu_ns(pid), bench.core_times(), time.monotonic()
    n = res.get("requests") or 0
    cpu = (c1 - c0) / 1e9
    res.update({
        "target": target,
        "cycle": cycle,
        "wall_s": round(t1 - t0, 3),
        "cpu_s": cpu,
        "req_per_cpu_s": n / cpu if cpu > 0 else None,
        "us_per_req": cpu / n * 1e6 if n else None,
        "steal_pct": max(st for _, st in bench.core_busy(cores0, cores1).values()),
    })
    return res


def median_ci(values):
    """(median, low, high): the median and a distribution-free interval that
    holds the true median with at least 95 % confidence (order statistics of
    the binomial with p = 1/2)."""
    xs = sorted(values)
    n = len(xs)
    # The largest k with P(B < k) <= 2.5 %, B ~ Binomial(n, 1/2).
    k, below = 0, 0.0
    while True:
        below_next = below + math.comb(n, k) / 2 ** n
        if below_next > 0.025:
            break
        below, k = below_next, k + 1
    k = max(k, 1)
    return statistics.median(xs), xs[k - 1], xs[n - k]


def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def summary(runs, command, machine):
    by = {t: [r for r in runs if r["target"] == t] for t in TARGETS}
    cycles = sorted({r["cycle"] for r in runs})
    kind = ("closed loop: wrk, {} connections".format(bench.CONNS) if RATE == 0 else
            f"fixed rate: oha -q {RATE} --latency-correction, {bench.LAT_CONNS} connections")
    L = [f"{len(cycles)} cycles; each cycle runs every target once for {bench.DURATION} ({kind}), back to back, "
         "in an order rotated by one per cycle. All targets run the whole time, each with one worker pinned to "
         f"core {bench.PROXY_CORE}; the load generator and the upstream nginx on core {bench.LOAD_CORE}. "
         "Proxy CPU is time on a CPU from schedstat (process tree, steal excluded).", ""]
    steal = [r["steal_pct"] for r in runs if r.get("steal_pct") is not None]
    bad = [r for r in runs if r.get("non2xx") or r.get("socket_errors") or r.get("errors")]
    L.append("### Flags: " + ("none" if not bad and (not steal or max(steal) <= bench.STEAL_FLAG) else ""))
    if steal and max(steal) > bench.STEAL_FLAG:
        L.append(f"- steal up to {max(steal):.0f} % on a core in some runs")
    for r in bad:
        L.append(f"- cycle {r['cycle']}, {r['target']}: {r.get('non2xx', 0)} non-2xx, "
                 f"{r.get('socket_errors', 0) + r.get('errors', 0)} errors")
    L += ["", "### Each target over the cycles: median (min–max)", ""]
    head = "| target | req/s | proxy µs/req | req per proxy CPU-s |"
    rule = "|---|--:|--:|--:|"
    if RATE:
        head += " p50 µs | p99 µs |"
        rule += "--:|--:|"
    L += [head, rule]
    for t in TARGETS:
        rs = by[t]

        def col(key, digits=0):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if not vals:
                return "–"
            return f"{fmt(statistics.median(vals), digits)} ({fmt(min(vals), digits)}–{fmt(max(vals), digits)})"

        setup = rs[0].get("setup") if rs else None
        row = f"| {t}{f' [{setup}]' if setup else ''} | {col('rps')} | {col('us_per_req', 1)} | {col('req_per_cpu_s')} |"
        if RATE:
            row += f" {col('p50_us')} | {col('p99_us')} |"
        L.append(row)
    first = TARGETS[0]
    L += ["", f"### {first} against each other target, cycle by cycle", "",
          "| | median | 95 % interval of the median | min–max | cycles where " + first + " is ahead |",
          "|---|--:|--:|--:|--:|"]

    def paired(other, key, op):
        mine = {r["cycle"]: r.get(key) for r in by[first]}
        theirs = {r["cycle"]: r.get(key) for r in by[other]}
        return [op(mine[c], theirs[c]) for c in cycles
                if mine.get(c) is not None and theirs.get(c) is not None]

    for other in TARGETS[1:]:
        ratios = paired(other, "req_per_cpu_s", lambda a, b: a / b if b else None)
        ratios = [x for x in ratios if x is not None]
        if len(ratios) >= 6:
            m, lo, hi = median_ci(ratios)
            L.append(f"| req per proxy CPU-s, {first} / {other} | **{m:.3f}** | {lo:.3f}–{hi:.3f} | "
                     f"{min(ratios):.3f}–{max(ratios):.3f} | {sum(x > 1 for x in ratios)} of {len(ratios)} |")
        if RATE:
            for key, name in (("p50_us", "p50"), ("p99_us", "p99")):
                d = paired(other, key, lambda a, b: a - b)
                if len(d) >= 6:
                    m, lo, hi = median_ci(d)
                    L.append(f"| {name} µs, {first} − {other} | **{m:+,.0f}** | {lo:+,.0f}–{hi:+,.0f} | "
                             f"{min(d):+,.0f}–{max(d):+,.0f} | {sum(x < 0 for x in d)} of {len(d)} |")
    L += ["", "A ratio above 1 (a latency difference below 0) is "
          f"{first} ahead. The interval holds the median of the per-cycle figure with at least 95 % confidence "
          "whatever their distribution (binomial order statistics); when it excludes 1 (or 0), the lead is more "
          "than this run's noise.", "", "### Setup", "", f"- command: `{command}`"]
    L += [f"- {k}: {v}" for k, v in machine.items()]
    L.append(f"- raw results: {OUT}")
    return "\n".join(L) + "\n"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw").mkdir(exist_ok=True)
    settings = {"TARGETS": " ".join(TARGETS), "CYCLES": str(CYCLES), "DURATION": bench.DURATION,
                "WARMUP": bench.WARMUP, "CONNS": str(bench.CONNS), "RATE": str(RATE),
                "LAT_CONNS": str(bench.LAT_CONNS), "PROXY_CORE": bench.PROXY_CORE, "LOAD_CORE": bench.LOAD_CORE}
    command = "SCENARIO=pairs " + " ".join(f"{k}={shlex.quote(v)}" for k, v in settings.items()) + \
        " benches/load/run.sh"
    machine = bench.machine_info()
    text, quiet = bench.wait_quiet(bench.WAIT_QUIET)
    machine["before start"] = text + ("" if quiet else " — NOT QUIET: other work skews these figures")
    log(f"results in {OUT}")
    log(f"command: {command}")
    runs = []
    try:
        upstream, up = bench.start_upstream()
        bench.UPSTREAM_PID = upstream.pid
        procs = {}
        for t in TARGETS:
            p, port = bench.start_proxy(t, up, 1)
            setup = bench.weft_setup(t, p)["setup"] if t in bench.WEFT_TARGETS else None
            procs[t] = (p, port, setup)
            if setup:
                machine[f"{t} setup"] = setup
        for t in TARGETS:
            bench.wrk(procs[t][1], bench.WARMUP, f"{t}-warmup.txt")
        for c in range(1, CYCLES + 1):
            first = (c - 1) % len(TARGETS)
            line = []
            for t in TARGETS[first:] + TARGETS[:first]:
                p, port, setup = procs[t]
                if p.poll() is not None:
                    raise RuntimeError(f"{t} exited with status {p.returncode}; see {OUT}/{p.bench_name}.log")
                r = one_run(t, p.pid, port, c)
                if setup:
                    r["setup"] = setup
                runs.append(r)
                with open(OUT / "results.jsonl", "a") as f:
                    f.write(json.dumps(r) + "\n")
                line.append(f"{t} {fmt(r['req_per_cpu_s'])}")
            log(f"cycle {c}/{CYCLES}, req per proxy CPU-s: " + ", ".join(line))
    except (RuntimeError, bench.Refused) as e:
        log(f"error: {e}")
        bench.stop_all()
        sys.exit(f"pairs: error: {e}")
    finally:
        bench.stop_all()
    text = summary(runs, command, machine)
    (OUT / "summary.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        bench.stop_all()
        sys.exit("pairs: interrupted")
