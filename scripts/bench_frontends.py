#!/usr/bin/env python3
"""Benchmark: the node daemon's front-ends, HTTP (wrk) and RESP (redis-benchmark), against redis-server.

    .venv/bin/python scripts/bench_frontends.py [--quick] [--reps R] [--profile DIR] [--json FILE]
    .venv/bin/python scripts/bench_frontends.py --report FILE   # the tables of a saved run

Needs ``wrk``, ``redis-benchmark`` and ``redis-server`` (Debian: ``apt-get install -y wrk
redis-server redis-tools``); a missing binary skips its part with a message. ``--profile``
needs ``py-spy`` (``.venv/bin/pip install py-spy``).

Method (the output header says it again):

- Subject: ONE ``meshlimit node`` process (``python -m meshlimit node``, uvloop, ``--preset
  local``, alone in its cluster so every check is owner-local) serving ``--http`` and
  ``--resp`` on free loopback ports, default rule 1,000,000,000/minute (nothing is refused).
  The script waits for its readiness line. A second phase starts a node per front-end setting
  with a rule of ``L/2s``, L = that setting's measured rate / 1,000 clients (resized once from
  its warm-up if that refused outside 35-65%), so that about half the checks are refused (the
  refused share is measured, from ``/metrics``); each of its runs follows a run of the open
  node, which stays up, for paired ratios.
- Peer, in the same run on the same machine: a ``redis-server --save '' --appendonly no`` on a
  free port, up for the whole run; its runs sit next to the node's (``RUN_ORDER``).
- Pinning (when ``taskset`` exists and there are 2+ CPUs): servers on CPU 1 (``taskset -c 1``),
  every load generator and this script on CPU 0. So "one core" means one core for the server.
- HTTP: ``wrk -t1 -c{16,64} -d10s --latency -s post.lua`` (keep-alive, wrk's default); the Lua
  script POSTs ``/v1/check`` with ``{"client":"client-<n mod 1000>","cost":1}``, n a counter.
- RESP: ``redis-benchmark -c 50 -n N -P {1,16} -r 1000 --csv ML.CHECK client:__rand_int__``
  (1,000 client ids), ``CL.THROTTLE key 15 30 60 1`` (one key, as redis-cell's README; after
  the burst nearly all are refused), and on redis-server ``-t incr`` (one key) and ``INCR
  key:__rand_int__ -r 1000`` with the settings of ML.CHECK. N is sized per setting from a
  warm-up run so that a run lasts about 5 s. ``--csv`` rather than ``-q``: same figures plus p99.
- Repetitions: R (3; 1 with ``--quick``), the settings interleaved within each repetition;
  median (min-max). Ratios: of the medians, the median of the per-repetition ratios of runs
  done back to back ("paired"), and of the CPU costs ("ceilings"). Warm-up: one untimed run
  per setting (2 s of wrk; the N-sizing run).
- Columns: rate (requests/s as the generator reports it), p50/p99 latency (the generator's),
  srv CPU% and gen CPU% (CPU time of the server / load generator over the run's wall time: 100%
  is a saturated core), srv runq% (the server runnable but waiting for its CPU: other work on the
  machine), other (cores busy with anything else: other work on the machine, and kernel work
  charged to neither process), refused% and checks counted by the node (``meshlimit_checks_total``
  delta / requests; 1.00 means every request became exactly one check), errors (wrk's non-2xx and
  socket errors, redis-benchmark's error replies), us/req (the server's CPU time per
  request), ceiling/s (1 / us/req: an estimate of the rate on a saturated core of its own) and
  the median rate of the quiet runs (other <= 0.1 cores).
- Shared machine: before each timed run the script waits (at most 30 s; 5 s quick) for a second
  in which the machine is at most 0.15 cores busy, and a run during which other work took more
  than 0.4 cores is redone (3 tries at most; none quick), until 25 minutes in all (30 s quick)
  went to waiting and redoing; "other" shows what ran anyway, a note counts the redone tries.
- Floors, in the same run: the same stacks with the check replaced by a constant answer, pinned
  like the node (``FLOOR_SRC``: an aiohttp app that parses the JSON body and returns a fixed
  ``json_response``; an asyncio Protocol on uvloop + hiredis answering every ML.CHECK with a
  fixed 6-element array). They say what the framework alone costs; they are not meshlimit.
- ``--profile DIR``: py-spy records the node (100 Hz, no idle samples) for 10 s (4 s quick) under
  wrk -c64 and under ML.CHECK -P16; collapsed stacks go to DIR, top functions are printed.

This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path

from frontend_bench.bench import Bench, Setting, settings
from frontend_bench.constants import N_CLIENTS, RULE_OPEN, RUN_ORDER
from frontend_bench.header import machine, print_header
from frontend_bench.profile import profile
from frontend_bench.report import cpu_per_request_us, med, report
from frontend_bench.runs import Run
from frontend_bench.servers import Pinning, start_floor
from harness.processes import Cleanup, free_port, interrupt_on_signals, start_redis
from harness.report import fmt_pct, fmt_rate, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, shorter runs")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 3, quick 1)")
    parser.add_argument("--profile", metavar="DIR", help="also profile the node with py-spy")
    parser.add_argument("--json", metavar="FILE", help="write every run's figures here")
    parser.add_argument(
        "--report", metavar="FILE", help="print the tables of a run saved with --json; run nothing"
    )
    args = parser.parse_args()
    if args.report:
        return report_saved(Path(args.report))
    # SIGTERM (and SIGINT, even where a shell started us with it ignored) unwinds through the
    # ``with`` below, which stops every server this script started.
    interrupt_on_signals()
    pinning = Pinning.detect()
    if pinning.load_cpu is not None:
        os.sched_setaffinity(0, {pinning.load_cpu})
    have = {
        tool: shutil.which(tool) is not None for tool in ("wrk", "redis-benchmark", "redis-server")
    }
    with tempfile.TemporaryDirectory(prefix="bench_frontends-") as tmp_name, Cleanup() as cleanup:
        b = Bench(args, Path(tmp_name), pinning, cleanup)
        print_header(machine(), b)
        for tool, ok in have.items():
            if not ok:
                part = {
                    "wrk": "the HTTP runs",
                    "redis-benchmark": "every RESP run",
                    "redis-server": "the redis-server reference and its ratios",
                }[tool]
                print(
                    f"!! {tool} not found: skipping {part} "
                    f"(apt-get install -y wrk redis-server redis-tools)"
                )
        sets = settings(have["wrk"], have["redis-benchmark"], have["redis-server"])
        if not sets:
            print("nothing to run")
            return 1
        refusal: dict[str, list[Run]] = {}
        paired_open: dict[str, list[Run]] = {}
        rules: dict[str, str] = {}
        try:
            run_all(b, sets, args, refusal, rules, paired_open)
        finally:
            cleanup.stop_all()
            print_node_logs(Path(tmp_name))

    report(sets, refusal, rules, paired_open)
    if args.json:
        write_json(
            args.json,
            {
                "settings": {s.key: [vars(r) for r in s.runs] for s in sets},
                "refusal": {k: [vars(r) for r in v] for k, v in refusal.items()},
                "refusal_rules": rules,
                "refusal_paired_open": {k: [vars(r) for r in v] for k, v in paired_open.items()},
            },
        )
    return 0


def run_all(
    b: Bench,
    sets: list[Setting],
    args: argparse.Namespace,
    refusal: dict[str, list[Run]],
    rules: dict[str, str],
    paired_open: dict[str, list[Run]],
) -> None:
    """Start the servers, warm every setting up, run the repetitions, profile, then the
    refusal phase."""
    node = b.node = b.start_node("bench-open", RULE_OPEN)
    for name in sorted({s.server for s in sets} - {"node"}):
        port = free_port(socket.SOCK_STREAM)
        if name == "redis":
            proc = start_redis(port, b.pinning.server_cpu)
        else:
            proc = start_floor(name.split("-")[1], port, b.pinning.server_cpu, b.floor_src)
        b.cleanup.add(proc)
        b.servers[name] = (proc, port)
    print(
        f"\nnode pid {node.pid} (http :{node.http_port}, resp :{node.resp_port}); "
        + "; ".join(f"{k} pid {p.pid} (:{port})" for k, (p, port) in b.servers.items())
    )
    order = sorted(sets, key=lambda s: RUN_ORDER.index(s.key))
    print("\nwarm-up (untimed; sizes N for redis-benchmark):")
    for s in order:
        run = b.warm(s, node)
        print(f"  {s.key:<10} {fmt_rate(run.rate):>10}/s" + (f"  -> N={s.n:,}" if s.n else ""))
    for rep in range(b.reps):
        print(f"\nrepetition {rep + 1}/{b.reps}:")
        for s in order:
            run = b.measure(s, node)
            s.runs.append(run)
            print(
                f"  {s.key:<10} {fmt_rate(run.rate):>10}/s  p50 {run.p50_ms:6.2f} ms  "
                f"p99 {run.p99_ms:6.2f} ms  srv CPU {fmt_pct(run.srv_cpu):>4}  gen CPU "
                f"{fmt_pct(run.gen_cpu):>4}  other {run.other:.2f}  busy before {run.busy_before:.2f}  "
                f"refused {fmt_pct(run.refused):>3}  errors {run.errors}",
                flush=True,
            )
    if args.profile:
        out_dir = Path(args.profile)
        out_dir.mkdir(parents=True, exist_ok=True)
        for key in ("http-c64", "ml-P16"):
            found = next((s for s in sets if s.key == key), None)
            if found is not None:
                profile(b, node, found, out_dir, 4.0 if args.quick else 10.0)
    # The open node stays up: the refusal phase alternates its runs with the refusing
    # node's, for paired ratios.

    # Refusal phase: a fresh node per setting, rule sized to refuse about half.
    for s in sets:
        if s.server != "node" or not s.key.startswith(("http", "ml")):
            continue
        run_refusal(b, s, refusal, rules, paired_open)


def print_node_logs(log_dir: Path) -> None:
    """The nodes' warnings and errors, each distinct message once, with its count."""
    messages: Counter[str] = Counter()
    for log in sorted(log_dir.glob("*.log")):
        for ln in log.read_text().splitlines():
            if "level=warning" in ln or "level=error" in ln:
                m = re.search(r'level=(\w+) .*?msg=("[^"]*"|\S+)', ln)
                messages[f"{m[1]} {m[2]}" if m else ln[:160]] += 1
    if messages:
        print(f"\nnode logs ({sum(messages.values())} warning/error lines):")
        for text, count in messages.most_common(8):
            print(f"  {count:4d} x {text[:160]}")


def run_refusal(
    b: Bench,
    s: Setting,
    refusal: dict[str, list[Run]],
    rules: dict[str, str],
    paired_open: dict[str, list[Run]],
) -> None:
    """Rule ``L/2s`` with L = rate / clients admits half of 2 s of checks. The rate under
    refusals is not the rate without (a refusal costs less), so L is sized from the open
    run's median first, then resized once if the warm-up under the rule refused a share
    outside 35-65%: by the admitted share when some were refused, else from its rate."""
    limit = max(1, round(med([r.rate for r in s.runs]) / N_CLIENTS))
    for attempt in (1, 2):
        rules[s.key] = f"{limit}/2s"
        node = b.start_node(f"bench-refuse-{s.key}", rules[s.key])
        try:
            # Warm-up: wrk for 2 s, or half a run of redis-benchmark.
            warm = b.warm(s, node) if s.kind == "http" else b.once(s, node, n=s.n // 2)
            admitted = 1 - warm.refused
            if attempt == 1 and not 0.35 <= warm.refused <= 0.65:
                if admitted < 0.98:
                    better = max(1, round(limit * 0.5 / admitted))
                else:
                    better = max(1, min(round(warm.rate / N_CLIENTS), limit // 2))
                print(
                    f"\nrefusal phase, {s.key}: rule {rules[s.key]} refused "
                    f"{fmt_pct(warm.refused)} at {fmt_rate(warm.rate)}/s; resized to {better}/2s"
                )
                limit = better
                continue
            runs = refusal.setdefault(s.key, [])
            opens = paired_open.setdefault(s.key, [])
            print(f"\nrefusal phase, {s.key}, rule {rules[s.key]} (each after an open-node run):")
            for _ in range(b.reps):
                for which, target, into in (("open", b.node, opens), ("refusing", node, runs)):
                    run = b.measure(s, target)
                    into.append(run)
                    print(
                        f"  {s.key:<10} {which:<9} {fmt_rate(run.rate):>10}/s  refused "
                        f"{fmt_pct(run.refused):>3}  srv CPU {fmt_pct(run.srv_cpu):>4}  other "
                        f"{run.other:.2f}  us/req {cpu_per_request_us(run):.1f}",
                        flush=True,
                    )
            return
        finally:
            b.cleanup.stop(node)


def report_saved(path: Path) -> int:
    """The tables, ratios and targets of a run saved with ``--json``."""
    saved = json.loads(path.read_text())
    sets = [s for s in settings(True, True, True) if s.key in saved["settings"]]
    for s in sets:
        s.runs = [Run(**r) for r in saved["settings"][s.key]]

    def runs(name: str) -> dict[str, list[Run]]:
        return {k: [Run(**r) for r in v] for k, v in saved.get(name, {}).items()}

    print(f"saved run: {path}")
    report(sets, runs("refusal"), saved["refusal_rules"], runs("refusal_paired_open"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
