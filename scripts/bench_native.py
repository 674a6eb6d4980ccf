#!/usr/bin/env python3
"""Benchmark: the in-process check's goal in one run, compiled and pure against ``limits``.

    .venv/bin/python scripts/bench_native.py [--keys N] [--rounds R] [--reps S]

The goal (issue 14): ``Limiter.check`` (real clock, sliding window) at 1,000,000
clients in <= 1 us and >= 10x ``limits``' sliding window (``MemoryStorage``),
measured in the same run. Four subjects:

- ``compiled+C``: meshlimit as installed (the native build, ``docs/design.md``: the
  mypyc modules and the C hot path); the child checks that both did load, and stops the
  run otherwise;
- ``compiled``: the same with ``MESHLIMIT_NO_HOTPATH=1`` (the mypyc modules, no C);
- ``pure``: the same with ``MESHLIMIT_PURE=1`` (every module from its ``.py`` file);
- ``limits``: ``SlidingWindowCounterRateLimiter`` over ``MemoryStorage``, its expiry
  thread running, as shipped.

Method: R rounds (5); each round runs each subject once, in a fresh subprocess, one
after another, the order rotating from round to round (A B C D, B C D A, ...) so
that each meets the machine's load alike; the child is ``bench_core.py``'s own timing
child (warm-up, then N ids checked once (inserts) and once more (hits), each pass timed
as S slices (5) of process CPU time, and a hot key on S fresh instances; the child's
figure is the median of its slices). A figure here is the median over rounds, with
min-max; a ratio is ``limits / meshlimit`` within each round, then its median over
rounds. CPU time, because the machine is shared (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from harness.processes import run_json_child
from harness.report import command_line
from harness.stats import median

MESHLIMIT = "limiter-real:sliding_window"
#: name -> (bench_core child spec, environment overrides)
SUBJECTS: dict[str, tuple[str, dict[str, str]]] = {
    "compiled+C": (MESHLIMIT, {}),
    "compiled": (MESHLIMIT, {"MESHLIMIT_NO_HOTPATH": "1"}),
    "pure": (MESHLIMIT, {"MESHLIMIT_PURE": "1"}),
    "limits": ("limits:sliding", {}),
}
#: The meshlimit subjects (each compared with ``limits``).
OURS = ("compiled+C", "compiled", "pure")
#: The environment switches of the subjects, cleared before a subject's own are set.
SWITCHES = ("MESHLIMIT_PURE", "MESHLIMIT_NO_HOTPATH")
PHASES = ("hit", "insert", "hot")
GOAL_NS = 1000
GOAL_RATIO = 10.0


def child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One subject's figures (ns per check, median of the child's slices) in a fresh process."""
    spec, overrides = SUBJECTS[name]
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_core.py")
    cmd = [sys.executable, script, "--child", f"time:{spec}"]
    cmd += ["--keys", str(args.keys), "--reps", str(args.reps), "--hot", str(args.hot)]
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES} | overrides
    t0 = time.monotonic()
    result = run_json_child(cmd, name, capture_stderr=True, env=env)
    if name.startswith("compiled") and result.get("native") != "native":
        raise SystemExit(f"no native build in use ({result.get('native')}): pip install -e .")
    if name == "compiled+C" and not result.get("hotpath_loaded"):
        raise SystemExit(f"the C hot path did not load ({result.get('hotpath')})")
    if name != "compiled+C" and result.get("hotpath_loaded"):
        raise SystemExit(f"{name} loaded the C hot path")
    if name == "pure" and result.get("compiled"):
        raise SystemExit(f"MESHLIMIT_PURE=1 still loaded {result['compiled']}")
    print(f"  {name:9} {time.monotonic() - t0:6.1f} s", file=sys.stderr, flush=True)
    return {phase: median(result[phase]) for phase in PHASES} | {
        key: result.get(key) for key in ("native", "hotpath")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="distinct clients")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three subjects")
    parser.add_argument("--reps", type=int, default=5, help="timed slices within each child")
    parser.add_argument("--hot", type=int, default=100_000, help="hot-key checks per slice")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    started = time.monotonic()
    names = list(SUBJECTS)
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}:", file=sys.stderr, flush=True)
        order = names[r % len(names) :] + names[: r % len(names)]
        rounds.append({name: child(name, args) for name in order})
    load_end = os.getloadavg()[0]

    print("meshlimit native build: the in-process check against limits, one run")
    print(command_line("bench_native.py"))
    print(
        f"Limiter.check (real clock, sliding window, 10,000,000/day: always admitted) vs limits\n"
        f"SlidingWindowCounter (MemoryStorage). {args.keys:,} clients; {args.rounds} rounds,"
        " subjects interleaved\n"
        f"(rotating order), each in a fresh process; CPU ns per check, median over rounds of"
        f" each\nchild's median of {args.reps} slices. Load average {load_start:.2f} at start,"
        f" {load_end:.2f} at end."
    )
    print()
    print(f"{'ns per check (CPU)':22}" + "".join(f"{p:>22}" for p in PHASES))
    figures: dict[str, dict[str, float]] = {}
    for name in names:
        cells = ""
        figures[name] = {}
        for phase in PHASES:
            values = [one[name][phase] for one in rounds]
            figures[name][phase] = median(values)
            cells += f"{median(values):>10.0f} {min(values):5.0f}-{max(values):<5.0f}"
        print(f"{name:22}{cells}")
    print()
    print(f"{'limits / meshlimit':22}" + "".join(f"{p:>22}" for p in PHASES))
    ratios: dict[str, dict[str, float]] = {}
    for name in OURS:
        cells = ""
        ratios[name] = {}
        for phase in PHASES:
            values = [one["limits"][phase] / one[name][phase] for one in rounds]
            ratios[name][phase] = median(values)
            cells += f"{median(values):>10.1f}x {min(values):4.1f}-{max(values):<4.1f}"
        print(f"{name:22}{cells}")
    print()
    for name in OURS:
        hit, ratio = figures[name]["hit"], ratios[name]["hit"]
        print(
            f"goal, {name:10}: hit {hit / 1000:.2f} us (<= {GOAL_NS / 1000:.0f} us:"
            f" {'met' if hit <= GOAL_NS else 'NOT met'}), {ratio:.1f}x limits"
            f" (>= {GOAL_RATIO:.0f}x: {'met' if ratio >= GOAL_RATIO else 'NOT met'})"
        )
    elapsed = time.monotonic() - started
    print(f"total {elapsed:.0f} s")
    summary = {
        "bench": "native",
        "keys": args.keys,
        "rounds": args.rounds,
        "reps": args.reps,
        "loadavg": [round(load_start, 2), round(load_end, 2)],
        "hotpath": rounds[0]["compiled+C"].get("hotpath"),
        "ns_cpu_median": figures,
        "ratio_median": ratios,
        "per_round": rounds,
        "seconds": round(elapsed),
    }
    print("JSON " + json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
