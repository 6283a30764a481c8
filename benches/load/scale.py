#!/usr/bin/env python3
"""Scaling scenario: weft, nginx and haproxy with 1 and with 2 workers, unpinned.

    SCENARIO=scale benches/load/run.sh

Every process shares both cores (nothing pinned): the proxy with 1 or 2
workers (weft `workers`, nginx `worker_processes`, haproxy `nbthread`), the
upstream nginx (2 workers) and wrk (2 threads, SCALE_CONNS connections). Each
round runs every (proxy, workers) pair once, in an order rotated by one per
round; each run is a WARMUP wrk run, then a DURATION wrk run that counts.
Reported: the median requests per second of each pair, how much the second
worker adds, and weft's ratio to each peer with the same number of workers.
On a 2-core machine the load generator and the upstream compete with the
proxy for the same cores: this is the throughput of the whole box, not of
the proxy alone. Settings: ROUNDS [3], DURATION [6s], WARMUP [2s],
SCALE_CONNS [128], OUT. Results in OUT/summary.md and OUT/results.jsonl.
"""

import json
import os
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (process helpers; its settings are not used)

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = os.environ.get("DURATION", "6s")
WARMUP = os.environ.get("WARMUP", "2s")
CONNS = int(os.environ.get("SCALE_CONNS", "128"))
OUT = Path(os.environ.get("OUT", str(bench.ROOT / "bench-results" /
                                     ("scale-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")))))
bench.OUT = OUT
ALL_CORES = "0-1"
PAIRS = [(t, w) for w in (1, 2) for t in ("weft", "nginx", "haproxy")]
log = bench.log


def start_upstream():
    port = bench.free_port()
    (OUT / "upstream-tmp").mkdir(exist_ok=True)
    conf = OUT / "upstream.conf"
    conf.write_text(bench.upstream_conf(port).replace("worker_processes 1;", "worker_processes 2;"))
    p = bench.start("upstream", ["nginx", "-p", str(OUT), "-c", str(conf)], ALL_CORES)
    bench.wait_ready(p, port, "the upstream nginx")
    return p, port


def start_proxy(target, workers, up, rnd):
    port = bench.free_port()
    name = f"{target}-w{workers}-r{rnd}"
    if target == "weft":
        conf = OUT / f"{name}.toml"
        conf.write_text(bench.weft_conf(port, up, "io-uring", "tuned").replace("workers = 1", f"workers = {workers}"))
        argv = [str(bench.WEFT_BIN), "--config", str(conf)]
    elif target == "nginx":
        (OUT / "nginx-tmp").mkdir(exist_ok=True)
        conf = OUT / f"{name}.conf"
        conf.write_text(bench.nginx_proxy_conf(port, up).replace("worker_processes 1;",
                                                                f"worker_processes {workers};"))
        argv = ["nginx", "-p", str(OUT), "-c", str(conf)]
    else:
        conf = OUT / f"{name}.cfg"
        conf.write_text(bench.haproxy_conf(port, up).replace("nbthread 1", f"nbthread {workers}"))
        argv = ["haproxy", "-db", "-f", str(conf)]
    p = bench.start(name, argv, ALL_CORES)
    try:
        bench.wait_ready(p, port, name)
    except RuntimeError:
        bench.stop(p)
        raise
    return p, port


def wrk(port, duration, raw_name):
    out = bench.subprocess.run(
        ["wrk", "-t2", f"-c{CONNS}", f"-d{duration}", "--latency", bench.url(port)],
        capture_output=True, text=True, timeout=bench.seconds(duration) + 60)
    (OUT / "raw" / raw_name).write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr[-500:]}")
    return bench.parse_wrk(out.stdout)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw").mkdir(exist_ok=True)
    log(f"results in {OUT}")
    up_proc, up = start_upstream()
    records = []
    try:
        for rnd in range(1, ROUNDS + 1):
            k = (rnd - 1) % len(PAIRS)
            for target, workers in PAIRS[k:] + PAIRS[:k]:
                p, port = start_proxy(target, workers, up, rnd)
                try:
                    wrk(port, WARMUP, f"{target}-w{workers}-r{rnd}-warmup.txt")
                    r = wrk(port, DURATION, f"{target}-w{workers}-r{rnd}.txt")
                finally:
                    bench.stop(p)
                rec = {"round": rnd, "target": target, "workers": workers, **r}
                records.append(rec)
                with open(OUT / "results.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log(f"round {rnd}: {target} x{workers}: {r['rps']:,.0f} req/s"
                    f" (non-2xx {r['non2xx']}, socket errors {r['socket_errors']})")
    finally:
        bench.stop(up_proc)
    summary(records)


def summary(records):
    def rps(t, w, rnd=None):
        return [r["rps"] for r in records if r["target"] == t and r["workers"] == w
                and (rnd is None or r["round"] == rnd)]

    def med(v):
        return statistics.median(v) if v else None

    def span(v):
        return f"{med(v):,.0f} ({min(v):,.0f}–{max(v):,.0f})" if v else "–"

    rounds = sorted({r["round"] for r in records})

    def ratio(num, den):
        vs = [a[0] / b[0] for rnd in rounds for a, b in [(num(rnd), den(rnd))] if a and b]
        return f"{med(vs):.2f} ({min(vs):.2f}–{max(vs):.2f})" if vs else "–"

    L = [f"Medians over {len(rounds)} round(s), min–max in brackets; wrk -t2 -c{CONNS}, {DURATION}; "
         "nothing pinned (proxy, upstream nginx with 2 workers, and wrk share both cores).", "",
         "| proxy | req/s, 1 worker | req/s, 2 workers | 2 workers / 1 (same round) |", "|---|--:|--:|--:|"]
    for t in ("weft", "nginx", "haproxy"):
        L.append(f"| {t} | {span(rps(t, 1))} | {span(rps(t, 2))} | "
                 f"{ratio(lambda r, t=t: rps(t, 2, r), lambda r, t=t: rps(t, 1, r))} |")
    L += ["", "| ratio (same round) | 1 worker | 2 workers |", "|---|--:|--:|"]
    for peer in ("nginx", "haproxy"):
        L.append(f"| weft / {peer} | {ratio(lambda r: rps('weft', 1, r), lambda r, p=peer: rps(p, 1, r))} | "
                 f"{ratio(lambda r: rps('weft', 2, r), lambda r, p=peer: rps(p, 2, r))} |")
    bad = [r for r in records if r["non2xx"] or r["socket_errors"]]
    L += ["", "Flags: " + ("; ".join(f"round {r['round']} {r['target']} x{r['workers']}: non-2xx {r['non2xx']}, "
                                       f"socket errors {r['socket_errors']}" for r in bad) if bad else "none")]
    text = "\n".join(L) + "\n"
    (OUT / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        bench.stop_all()
