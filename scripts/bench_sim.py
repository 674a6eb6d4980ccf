"""How fast does the simulator run the production node? Simulated seconds per wall second.

Method: one cluster of 5 nodes (strict mode, the ``sim`` preset, 1 ms links),
1,000 Zipf(1.1) clients offering 2,000 checks/s in all against ``100/s`` each,
no faults, 10 simulated seconds. One short warm-up run (imports, caches), then
``--repeat`` (default 3) measured runs with seeds 1, 2, 3; each figure printed is
the median over the runs. Wall time is ``time.perf_counter`` around
``run_scenario``, which includes building the world and the checkers.

    .venv/bin/python scripts/bench_sim.py [--seconds 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from harness.stats import Stopwatch, median

from meshlimit.sim.runner import run_scenario
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
    args = parser.parse_args()
    run_scenario(parse_scenario(SCENARIO.format(seconds=1)), 0)  # warm-up
    scenario = parse_scenario(SCENARIO.format(seconds=args.seconds))
    rows = []
    for seed in range(1, args.repeat + 1):
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
        f" ({args.seconds / cpu:.2f} per CPU s); {events / wall:,.0f} events/s;"
        f" {answers / wall:,.0f} checks/s; real time is {speed:.2f}x"
    )


if __name__ == "__main__":
    main()
