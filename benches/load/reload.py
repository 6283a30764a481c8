#!/usr/bin/env python3
"""Reload under load: weft splitting between two upstreams at a fixed rate,
reloaded every second with the split's weights flipped.

    SCENARIO=reload benches/load/run.sh

Two nginx upstreams (`a` and `b`, each logging its connection serial per
request) on LOAD_CORE; weft (one worker, io_uring, tuned ring) on PROXY_CORE
with an admin listener and a JSON access log; oha at RATE [2000] requests a
second over LAT_CONNS [16] keep-alive connections for DURATION [20s]. Every
second the file is rewritten with the split all to `a`, then all to `b`, and
reloaded with `POST /reload` (which answers once every worker runs it); one
reload in the middle gets a file that does not parse, and must be refused.

Reported (and checked; a failed check fails the run):
- every request answered 200, none failed;
- every request whose head arrived after a reload's answer went where that
  reload's weights say (from the access log's start times and upstream
  hosts): the new weights are in the traffic at once, not within a second;
- the refused reload changed nothing;
- upstream connections: how many each upstream saw in all (at most one per
  client connection, and the readiness probe; a reload that dropped pools
  would open a burst at each), and how many were new once both had had
  their turn (the pools growing to the load's peak concurrency).
(oha cancels the requests in flight when its time is up: those are
reported, not counted as failures.)
Results in OUT/summary.md and OUT/results.json (the logs are removed once
counted). Settings: RATE [2000],
LAT_CONNS [16], DURATION [20s], RELOAD_EVERY [1.0], PROXY_CORE, LOAD_CORE, OUT.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (process helpers)

RATE = int(os.environ.get("RATE", "2000"))
CONNS = int(os.environ.get("LAT_CONNS", "16"))
DURATION = os.environ.get("DURATION", "20s")
EVERY = float(os.environ.get("RELOAD_EVERY", "1.0"))
OUT = Path(os.environ.get("OUT", str(bench.ROOT / "bench-results" /
                                     ("reload-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")))))
bench.OUT = OUT
log = bench.log


def upstream(name):
    """An nginx upstream answering `name`, logging `$msec $connection`."""
    port = bench.free_port()
    (OUT / f"{name}-tmp").mkdir(parents=True, exist_ok=True)
    conf = OUT / f"{name}.conf"
    conf.write_text(bench.nginx_common(name, OUT).replace("    access_log off;\n", "") + f"""    log_format conn '$msec $connection';
    access_log {OUT}/{name}.access conn buffer=64k flush=1s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{name}\\n";
        }}
    }}
}}
""")
    p = bench.start(name, ["nginx", "-p", str(OUT), "-c", str(conf)], bench.LOAD_CORE)
    bench.wait_ready(p, port, f"upstream {name}")
    return p, port


def weft_text(port, admin, a, b, weights, access_log):
    return f"""[runtime]
workers = 1
driver = "io-uring"
ring_setup = "tuned"

[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "bench"
listen = "127.0.0.1:{port}"
idle_timeout = "300s"
access_log = {{ path = "{access_log}", format = "json" }}

[[route]]
name = "split"
split = [ {{ cluster = "a", weight = {weights[0]} }}, {{ cluster = "b", weight = {weights[1]} }} ]

[[cluster]]
name = "a"
endpoints = ["127.0.0.1:{a}"]
pool = {{ max_idle = 64, idle_timeout = "300s" }}

[[cluster]]
name = "b"
endpoints = ["127.0.0.1:{b}"]
pool = {{ max_idle = 64, idle_timeout = "300s" }}
"""


def post_reload(admin):
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def connections(name, after):
    """Distinct connections upstream `name` saw: in all, and first seen after `after`."""
    first = {}
    for line in (OUT / f"{name}.access").read_text().splitlines():
        msec, conn = line.split()
        first.setdefault(conn, float(msec))
    return len(first), sum(1 for t in first.values() if t > after)


def start_seconds(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "raw").mkdir(exist_ok=True)
    pa, a = upstream("a")
    pb, b = upstream("b")
    port, admin = bench.free_port(), bench.free_port()
    access_log = OUT / "weft.access.json"
    conf = OUT / "weft.toml"
    conf.write_text(weft_text(port, admin, a, b, (1, 0), access_log))
    weft = bench.start("weft", [str(bench.WEFT_BIN), "--config", str(conf)], bench.PROXY_CORE)
    bench.wait_ready(weft, port, "weft")
    hosts = {f"127.0.0.1:{a}": "a", f"127.0.0.1:{b}": "b"}
    load = bench.subprocess.Popen(
        ["taskset", "-c", str(bench.LOAD_CORE), "oha", "--no-tui", "--output-format", "json",
         "-q", str(RATE), "-z", DURATION, "-c", str(CONNS), bench.url(port)],
        stdout=open(OUT / "raw" / "oha.json", "w"), stderr=bench.subprocess.STDOUT)
    started = time.time()
    reloads = []  # (asked, answered, status, expected upstream or None when refused)
    expected = "a"
    end = started + bench.seconds(DURATION) - 0.5
    i = 0
    while time.time() + EVERY < end:
        time.sleep(max(0.0, started + (i + 1) * EVERY - time.time()))
        i += 1
        broken = i == 10
        if broken:
            conf.write_text("[[listener]]\nname = \"bench\"\nlisten = 7\n")
        else:
            expected = "b" if expected == "a" else "a"
            conf.write_text(weft_text(port, admin, a, b, (1, 0) if expected == "a" else (0, 1), access_log))
        asked = time.time()
        status, body = post_reload(admin)
        answered = time.time()
        reloads.append((asked, answered, status, None if broken else expected, body.strip()))
        log(f"reload {i}: {status} {body.strip()} in {1000 * (answered - asked):.1f} ms")
        if broken:
            # Put the last good file back for the next reload to flip from.
            expected = "b" if expected == "a" else "a"
    load.wait(timeout=bench.seconds(DURATION) + 60)
    # The access log is written every 100 ms: let the last lines out.
    time.sleep(0.5)
    bench.stop(weft)
    bench.stop(pa)
    bench.stop(pb)
    oha = json.loads((OUT / "raw" / "oha.json").read_text())
    codes = oha.get("statusCodeDistribution", {}) or {}
    errors = oha.get("errorDistribution", {}) or {}
    total = sum(codes.values()) + sum(errors.values())
    ok = sum(v for k, v in codes.items() if str(k) == "200")
    # oha cancels the requests in flight when its time is up: not failures.
    cut = errors.pop("aborted due to deadline", 0)
    total -= cut
    # Which reload was in force when each request's head came: the last one
    # answered before it (refused ones change nothing).
    applied = [(ans, exp) for (_, ans, st, exp, _) in reloads if st == 200]
    wrong, checked, lines = 0, 0, 0
    for line in access_log.read_text().splitlines():
        rec = json.loads(line)
        lines += 1
        t = start_seconds(rec["start_time"])
        up = hosts.get(rec.get("upstream_host"), "?")
        # Millisecond start times: a head within 2 ms of an answer is not counted.
        before = [exp for (ans, exp) in applied if ans + 0.002 <= t]
        if not before or any(abs(t - ans) < 0.002 for (ans, _) in applied):
            continue
        checked += 1
        wrong += up != before[-1]
    # By then each upstream has had its turn (the first flip is at 1 s).
    settled = started + 2.5 * EVERY
    conn_a, late_a = connections("a", settled)
    conn_b, late_b = connections("b", settled)
    refused = [r for r in reloads if r[3] is None]
    good = [r for r in reloads if r[3] is not None]
    answer_ms = sorted(1000 * (r[1] - r[0]) for r in good)
    result = {
        "rate": RATE, "conns": CONNS, "duration": DURATION, "requests": total, "ok_200": ok,
        "errors": errors, "cancelled_at_end": cut, "status_codes": codes, "reloads": len(good),
        "reloads_ok": sum(1 for r in good if r[2] == 200),
        "refused": [(r[2], r[4]) for r in refused],
        "access_log_lines": lines, "checked": checked, "wrong_upstream": wrong,
        "reload_answer_ms_median": answer_ms[len(answer_ms) // 2] if answer_ms else None,
        "reload_answer_ms_max": answer_ms[-1] if answer_ms else None,
        "upstream_connections": {"a": conn_a, "b": conn_b},
        "upstream_connections_after_1s": {"a": late_a, "b": late_b},
        "achieved_rps": oha["summary"]["requestsPerSec"],
    }
    (OUT / "results.json").write_text(json.dumps(result, indent=2))
    # Counted: the logs (about 18 MB a run) go.
    for f in (access_log, OUT / "a.access", OUT / "b.access"):
        f.unlink(missing_ok=True)
    checks = [
        ("every request answered 200", ok == total and total > 0),
        ("every good reload applied (200)", result["reloads_ok"] == len(good) and len(good) >= 10),
        ("the broken file refused (409)", len(refused) == 1 and refused[0][2] == 409),
        ("every request after a reload's answer went where it said", wrong == 0 and checked > total // 2),
        # Pools dropped at each reload would open up to CONNS new ones at
        # each of the 18 reloads.
        (f"each upstream saw at most {CONNS} + 1 connections (the client connections, and the readiness probe)",
         conn_a <= CONNS + 1 and conn_b <= CONNS + 1),
    ]
    md = [f"# Reload under load ({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')})", "",
          f"`SCENARIO=reload benches/load/run.sh`: weft (1 worker, io_uring) on core {bench.PROXY_CORE}, "
          f"two nginx upstreams and oha on core {bench.LOAD_CORE}; {RATE} requests/s over {CONNS} "
          f"keep-alive connections for {DURATION}; a reload every {EVERY} s flipping the split "
          "between `a` and `b` (100/0, 0/100), the tenth with a file that does not parse.", "",
          "| figure | value |", "|---|--:|",
          f"| requests sent | {total} |", f"| answered 200 | {ok} |",
          f"| failed (oha errors) | {sum(errors.values())} |",
          f"| cancelled by oha at its end (not counted) | {cut} |",
          f"| achieved requests/s | {result['achieved_rps']:.0f} |",
          f"| reloads applied / refused | {result['reloads_ok']} / {len(refused)} |",
          f"| reload answered in (median / max, ms) | {result['reload_answer_ms_median']:.1f} / "
          f"{result['reload_answer_ms_max']:.1f} |",
          f"| requests checked against the weights in force | {checked} |",
          f"| of those, to the wrong upstream | {wrong} |",
          f"| upstream connections a / b (in all) | {conn_a} / {conn_b} |",
          f"| of those first seen after {2.5 * EVERY:.1f} s (both had had their turn) | {late_a} / {late_b} |", "",
          "Checks:", ""] + [f"- {'PASS' if passed else 'FAIL'}: {what}" for what, passed in checks]
    (OUT / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        bench.stop_all()
