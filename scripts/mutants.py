#!/usr/bin/env python3
"""Mutation check of the simulator: planted bugs that its checkers must catch.

    .venv/bin/python scripts/mutants.py [--list] [--only NAME ...] [--jobs N] [--fuzz N]

Each mutant is one small, realistic bug in the node, applied for one run without
editing a source file: either through the ``plant=`` hook of
:func:`meshlimit.sim.runner.run_scenario` (which hands over every node the world
creates; the mutant wraps or replaces a method on the node or one of its parts) or by
monkeypatching a module-level function where it is looked up, restored afterwards.

For each mutant the plan runs the shipped scenarios most likely to expose it, then
``--fuzz`` short fuzz seeds (``fuzz_seed(MUTANT_FUZZ_BASE, i)``), and stops at the first
run that reports a violation: the mutant is *caught* by that run. A mutant no run
flags is MISSED -- a checker to strengthen, not a mutant to drop. Before the mutants,
the same plan runs unmutated (the control): a control run with a violation makes the
check meaningless and fails it too.

Prints one row per mutant (name, area, caught by which run and the first violation's
kind, or MISSED) and the totals; exits 1 if any mutant is missed or the control fails.
Mutants run in a process pool (``--jobs``, default 2): a monkeypatch lives in the
worker process for one run only.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache

from mutation.adversary import ADVERSARY_MUTANTS
from mutation.adversary2 import SECOND_ADVERSARY_MUTANTS
from mutation.answers import ANSWERS_MUTANTS
from mutation.catalogue import DEFAULT_FUZZ_RUNS, MUTANT_FUZZ_BASE, Mutant, _patched
from mutation.catalogue import MUTANTS as FIRST_MUTANTS
from mutation.dataside import DATASIDE_MUTANTS
from mutation.lifeguard import LIFEGUARD_MUTANTS
from mutation.more import MORE_MUTANTS
from mutation.stale_state import STALE_STATE_MUTANTS

from meshlimit.sim.runner import SCENARIO_DIR, fuzz_scenario, fuzz_seed, run_scenario
from meshlimit.sim.scenario import Scenario, load_scenario

#: Every planted bug: the first catalogue, the ones added with the stricter verdicts, then
#: those written as an adversary would (``mutation/adversary.py``), then those that keep state
#: stale (``mutation/stale_state.py``), a second adversary's (``mutation/adversary2.py``),
#: those in what the client is told (``mutation/answers.py``), Lifeguard's and the
#: majority rule's around it (``mutation/lifeguard.py``) and the data side's
#: (``mutation/dataside.py``: burst carry, stranded checks, hand-over, resync, reports).
MUTANTS: tuple[Mutant, ...] = (
    FIRST_MUTANTS
    + MORE_MUTANTS
    + ADVERSARY_MUTANTS
    + STALE_STATE_MUTANTS
    + SECOND_ADVERSARY_MUTANTS
    + ANSWERS_MUTANTS
    + LIFEGUARD_MUTANTS
    + DATASIDE_MUTANTS
)

# --- running -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the plan said about one mutant (or the control, ``name == "control"``)."""

    name: str
    area: str
    runs: int
    caught_by: str | None
    """``scenario seed=N`` of the first failing run (None: no run failed)."""
    first_violation: str
    wall_s: float


@cache
def _shipped(name: str) -> Scenario:
    """A shipped scenario, by name."""
    return load_scenario(SCENARIO_DIR / f"{name}.toml")


def plan(mutant: Mutant | None, fuzz_runs: int) -> list[tuple[str, Scenario, int]]:
    """``(label, scenario, seed)`` of the runs tried for ``mutant``, in order."""
    runs = []
    for name in mutant.scenarios if mutant else _all_planned_scenarios():
        runs.append((name, _shipped(name), 1))
    for index in range(fuzz_runs):
        seed = fuzz_seed(MUTANT_FUZZ_BASE, index)
        runs.append(("fuzz", fuzz_scenario(seed), seed))
    return runs


def _all_planned_scenarios() -> list[str]:
    return sorted({name for m in MUTANTS for name in m.scenarios})


def _kind(violation: str) -> str:
    return violation.split(":", 1)[0]


def judge(name: str, fuzz_runs: int) -> Verdict:
    """Run the plan of mutant ``name`` (or the unmutated control, ``"control"``) until a
    run reports a violation; run in a worker process (monkeypatches stay there)."""
    started = time.perf_counter()
    mutant = None if name == "control" else _by_name(name)
    area = "-" if mutant is None else mutant.area
    patches = mutant.patches() if mutant and mutant.patches else []
    plant = mutant.plant if mutant else None
    tried = 0
    with _patched(patches):
        for label, scenario, seed in plan(mutant, fuzz_runs):
            tried += 1
            result = run_scenario(scenario, seed, plant=plant)
            if not result.ok and mutant is not None:
                return Verdict(
                    name,
                    area,
                    tried,
                    f"{label} seed={seed}",
                    _kind(result.violations[0]),
                    time.perf_counter() - started,
                )
            if not result.ok:  # the control: every failure is a finding
                return Verdict(
                    name,
                    area,
                    tried,
                    f"{label} seed={seed}",
                    result.violations[0][:200],
                    time.perf_counter() - started,
                )
    return Verdict(name, area, tried, None, "", time.perf_counter() - started)


def _by_name(name: str) -> Mutant:
    for mutant in MUTANTS:
        if mutant.name == name:
            return mutant
    raise SystemExit(f"unknown mutant {name!r} (see --list)")


def _row(verdict: Verdict) -> str:
    if verdict.name == "control":
        outcome = (
            f"clean ({verdict.runs} runs)"
            if verdict.caught_by is None
            else f"FAILED by {verdict.caught_by}: {verdict.first_violation}"
        )
    elif verdict.caught_by is None:
        outcome = f"MISSED ({verdict.runs} runs)"
    else:
        outcome = f"caught by {verdict.caught_by} ({verdict.first_violation})"
    return f"{verdict.name:<28} {verdict.area:<26} {outcome}  [{verdict.wall_s:.1f}s]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only these")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--fuzz", type=int, default=DEFAULT_FUZZ_RUNS, help="short fuzz runs per mutant"
    )
    parser.add_argument("--no-control", action="store_true", help="skip the unmutated run")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:<28} {m.area:<26} {m.description}")
        return 0
    names = [_by_name(n).name for n in args.only] if args.only else [m.name for m in MUTANTS]
    jobs = ([] if args.no_control else ["control"]) + names
    started = time.perf_counter()
    print(f"{'mutant':<28} {'area':<26} outcome", flush=True)
    verdicts = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for verdict in pool.map(judge, jobs, [args.fuzz] * len(jobs)):
            verdicts.append(verdict)
            print(_row(verdict), flush=True)
    mutants = [v for v in verdicts if v.name != "control"]
    caught = sum(v.caught_by is not None for v in mutants)
    control_ok = all(v.caught_by is None for v in verdicts if v.name == "control")
    print(
        f"\ncaught {caught}/{len(mutants)}; control "
        f"{'clean' if control_ok else 'FAILED'}; {time.perf_counter() - started:.0f} s wall"
    )
    return 0 if caught == len(mutants) and control_ok else 1


if __name__ == "__main__":
    sys.exit(main())
