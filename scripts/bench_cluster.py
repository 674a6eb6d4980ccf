#!/usr/bin/env python3
"""Benchmark: three ``meshlimit node`` daemons end to end under redis-benchmark, beside redis-server.

    .venv/bin/python scripts/bench_cluster.py [--quick] [--presets lan,local] [--seconds T]
        [--phases saturation,half,overload] [--overload C,P] [--keys N] [--json FILE]
        [--log-dir DIR]

Needs ``redis-benchmark`` (Debian: ``apt-get install -y redis-tools``); ``redis-server``
(``redis-server``) for the peer, which is skipped with a message without it.

Method (the output header says it again):
  For each preset (--presets; lan and local by default), a fresh cluster: three
  `meshlimit node` daemons on 127.0.0.1 (--resp and --http on free ports, the second and
  third seeded through the first, default rule 1000000000/minute so that no check is
  refused by a limit, strict mode), started only once every node sees three members alive.
  Load: one redis-benchmark process per node, all at once, `ML.CHECK key:__rand_int__ -r
  100000` (random keys of 100,000: two thirds are owned by another node and forwarded).
  Phases, lightest first. Before each (and before the half-load search), up to 30 s for
  the cluster to be normal: a probe (below) every 0.5 s until every member is alive on
  every node and, after the moderate phase, the probe's p50 is within 2x the moderate p50;
  then an untimed warm-up run of the phase's setting (W s) that also sizes -n for a
  counted run:
    moderate    -c 2 -P 1 per node, a counted run of about T s: p50/p99 of every request
                (merged from the three processes' latency distributions, never below the
                true percentile)
    saturation  -c 50 -P 16 per node, timed: T s, then SIGTERM; checks/s from the last
                progress line of each process, summed
    half        no rate option in redis-benchmark: the -c/-P setting whose rate is nearest
                half the saturation rate (short tries of rising concurrency), then a
                counted run of about T s there: p50/p99 (closed loop: half the throughput)
    overload    -c 100 -P 16 per node (twice saturation's requests in flight; --overload
                C,P sets another), timed, O s
    recovery    from the overload's end, a probe every 0.5 s: `-c 1 -n 200` against one
                node, then every node's member list; the seconds until one is normal ("not
                recovered" after R s), and whether every probe in the H s after it was
                normal too ("held")
  Per phase, the deltas of every node's /metrics, summed: decisions by path (owner,
  forwarded = answered by the owner, counted at the asking node; degraded; overloaded),
  forward timeouts, late replies counted twice, SWIM suspicions; membership transitions are
  the "member X a -> b" lines the nodes logged during the phase (each node logs its own
  view, so one member's change is counted by each node that saw it). CPU of the daemons
  from /proc/PID/schedstat. Peer, same run, same redis-benchmark settings (three
  processes against one server): redis-server (--save '' --appendonly no) on a free port,
  `INCR key:__rand_int__ -r 100000`, moderate and saturation. Everything shares the
  machine's cores: the load generators too. Nothing asserted about speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from cluster_bench import redis_load
from cluster_bench.daemons import Cluster
from cluster_bench.daemons_report import (
    code_version,
    machine,
    print_goals,
    print_header,
    print_ratios,
    print_tables,
    ratios,
)
from cluster_bench.phases import Phases, Plan, redis_server_phases
from cluster_bench.redis_load import KEYSPACE
from harness.processes import Cleanup, free_port, interrupt_on_signals, start_redis
from harness.report import command_line, doc_section, write_json

FULL = Plan(seconds=10.0, overload_s=15.0, warm_s=1.5, recovery_limit_s=30.0, hold_s=5.0)
QUICK = Plan(seconds=3.0, overload_s=3.0, warm_s=0.7, recovery_limit_s=10.0, hold_s=2.0)
PRESETS = ("lan", "local")


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def method_text(plan: Plan) -> str:
    text = doc_section(__doc__, "Method (the output header says it again):\n")
    return text.rstrip() + (
        f"\n  Here: T = {plan.seconds:g} s, O = {plan.overload_s:g} s, "
        f"W = {plan.warm_s:g} s, R = {plan.recovery_limit_s:g} s, H = {plan.hold_s:g} s;"
        f" overload -c {plan.overload_clients} -P {plan.overload_pipeline};"
        f" keys -r {redis_load.KEYSPACE}."
    )


def run(presets: list[str], plan: Plan, log_dir: Path, phases: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"presets": {}}
    with Cleanup() as cleanup:
        if shutil.which("redis-server") and "saturation" in phases:
            port = free_port()
            redis = cleanup.add(start_redis(port))
            result["redis_server"] = redis_server_phases(cleanup, port, 3, plan, progress)
            cleanup.stop(redis)
        for preset in presets:
            progress(f"{preset}: starting three daemons (logs in {log_dir})")
            cluster = Cluster(preset, log_dir, cleanup)
            result.setdefault("code", {})[preset] = code_version()
            result["presets"][preset] = Phases(cluster, plan, cleanup, progress).all(phases)
            result.setdefault("nodes", {}).update(
                {n.name: {"pid": n.pid, "resp_port": n.resp_port} for n in cluster.nodes}
            )
            for node in cluster.nodes:
                cleanup.stop(node)
    result["ratios"] = ratios(result)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke run")
    parser.add_argument(
        "--presets", default=",".join(PRESETS), help="comma-separated: lan, local, wan"
    )
    parser.add_argument("--seconds", type=float, help="T: moderate, saturation, half load")
    parser.add_argument(
        "--phases",
        default="saturation,half,overload",
        help="comma-separated, besides moderate (always run): saturation, half (needs "
        "saturation), overload (and its recovery); the redis-server peer runs with saturation",
    )
    parser.add_argument(
        "--overload",
        metavar="C,P",
        help="the overload phase's -c and -P per process (default 100,16); e.g. 300,64",
    )
    parser.add_argument(
        "--keys", type=int, help=f"-r: random keys drawn from this many (default {KEYSPACE:,})"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    parser.add_argument("--log-dir", metavar="DIR", help="the daemons' logs (default: a temp dir)")
    args = parser.parse_args()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan = dataclasses.replace(plan, seconds=args.seconds)
    if args.overload:
        clients, _, pipeline = args.overload.partition(",")
        plan = dataclasses.replace(
            plan, overload_clients=int(clients), overload_pipeline=int(pipeline or 1)
        )
    if args.keys:
        redis_load.KEYSPACE = args.keys
    if not shutil.which("redis-benchmark"):
        print("redis-benchmark is not installed (Debian: apt-get install -y redis-tools)")
        return 2
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="bench_cluster_"))
    info = machine()
    print_header(info, method_text(plan))
    interrupt_on_signals()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    result = run(presets, plan, log_dir, phases)
    result.update(command=command_line("bench_cluster.py"), machine=info, plan=vars_of(plan))
    result["log_dir"] = str(log_dir)
    for preset, code in result.get("code", {}).items():
        if code != info["code"]:
            print(f"note: the {preset} daemons started on git {code}, not the code named above")
    print_tables(result)
    print_ratios(result)
    print_goals(result)
    print(f"daemon logs: {log_dir}")
    if args.json:
        write_json(args.json, result)
    return 0


def vars_of(plan: Plan) -> dict[str, float]:
    return dataclasses.asdict(plan)


if __name__ == "__main__":
    sys.exit(main())
