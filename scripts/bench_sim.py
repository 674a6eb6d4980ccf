"""How fast does the simulator run the production node? Simulated seconds per wall second.

Method: one cluster of 5 nodes (strict mode, the ``sim`` preset, 1 ms links),
1,000 Zipf(1.1) clients offering 2,000 checks/s in all against ``100/s`` each,
no faults, 10 simulated seconds. One short warm-up run (imports, caches), then
``--repeat`` (default 3) measured runs with seeds 1, 2, 3; each figure printed is
the median over the runs. Wall time is ``time.perf_counter`` around
``run_scenario``, which includes building the world and the checkers; CPU time
(``time.process_time``, the whole process) is printed beside it, since on a
shared machine the wall clock also counts other people's work.

``--fuzz N`` also times N runs of the default fuzz batch (``meshlimit sim --fuzz
--runs N --seed 1``: 6 simulated seconds each, generated faults, the checkers on)
after one warm-up run, and prints fuzz runs per minute, per wall and per CPU minute;
``--long-fuzz N`` the same for N runs of the long lane (``--fuzz --long``: 60-300
simulated seconds each).

    .venv/bin/python scripts/bench_sim.py [--seconds 10] [--repeat 3] [--fuzz 50] [--long-fuzz 4]
"""

from __future__ import annotations

import argparse
import time

from harness.stats import Stopwatch, median

from meshlimit.sim.runner import run_fuzz, run_scenario
from meshlimit.sim.scenario import parse_scenario

SCENARIO = """
name = "bench"
description = "5 nodes, 1,000 clients, 2,000 checks/s, no faults"
duration = "{seconds}s"
nodes = 5
mode = "strict"
[limits]
default = "100/s"
[workload]
clients = 1000
rate = 2000.0
zipf = 1.1
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="simulated seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs (median)")
    parser.add_argument(
        "--fuzz", type=int, default=0, metavar="N", help="also time N default fuzz runs"
    )
    parser.add_argument(
        "--long-fuzz", type=int, default=0, metavar="N", help="also time N long-lane fuzz runs"
    )
    args = parser.parse_args()
    if args.repeat > 0:
        bench_cluster(args.seconds, args.repeat)
    if args.fuzz > 0:
        bench_fuzz(args.fuzz)
    if args.long_fuzz > 0:
        bench_fuzz(args.long_fuzz, long=True)


def bench_cluster(seconds: int, repeat: int) -> None:
    """The 5-node, 2,000 checks/s run, ``repeat`` times: simulated s per wall and CPU s."""
    run_scenario(parse_scenario(SCENARIO.format(seconds=1)), 0)  # warm-up
    scenario = parse_scenario(SCENARIO.format(seconds=seconds))
    rows = []
    for seed in range(1, repeat + 1):
        watch = Stopwatch()
        result = run_scenario(scenario, seed, stopwatch=time.perf_counter)
        cpu = watch.stop().cpu_s
        answers = result.summary["admitted"] + result.summary["refused"]
        rows.append(
            (result.simulated_s / result.wall_s, result.wall_s, cpu, result.events, answers)
        )
        print(
            f"seed={seed}: {result.simulated_s:g} simulated s in {result.wall_s:.2f} wall s"
            f" ({cpu:.2f} CPU s) = {rows[-1][0]:.2f} sim s/s; {result.events} events,"
            f" {answers} checks answered"
        )
    speed, wall, cpu, events, answers = (median(col) for col in zip(*rows, strict=True))
    print(
        f"median of {len(rows)}: {speed:.2f} simulated s per wall s"
        f" ({seconds / cpu:.2f} per CPU s); {events / wall:,.0f} events/s;"
        f" {answers / wall:,.0f} checks/s; real time is {speed:.2f}x"
    )


def bench_fuzz(runs: int, *, long: bool = False) -> None:
    """``runs`` fuzz runs (base seed 1; ``long``: the long lane) after one warm-up: fuzz
    runs per minute."""
    run_fuzz(1, 0, long=long)  # warm-up
    watch = Stopwatch()
    results = run_fuzz(runs, 1, long=long)
    span = watch.stop()
    simulated = sum(r.simulated_s for r in results)
    failed = sum(not r.ok for r in results)
    lane = "long fuzz" if long else "fuzz"
    print(
        f"{lane}: {runs} runs ({simulated:g} simulated s, {failed} with violations) in"
        f" {span.wall_s:.2f} wall s ({span.cpu_s:.2f} CPU s) ="
        f" {runs * 60 / span.wall_s:,.0f} runs/min ({runs * 60 / span.cpu_s:,.0f} per CPU min)"
    )


if __name__ == "__main__":
    main()
